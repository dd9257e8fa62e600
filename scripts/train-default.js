#!/usr/bin/env node
// `npm run train:default`: trains the embedded default model family (target, draft, Medusa heads,
// tokenizer) into models/default/ with the project's own trainer. Uses the compiled dist/ code
// (run `npx tsc -p tsconfig.json` first) and the native addon (`npm run build:native`).
// Options: --out DIR (default models/default), --threads N (default 2; the run is reproducible for
// a given thread count), --scale X (multiply every step count, e.g. 0.05 for a smoke run),
// --only draft | medusa | eagle | eagle3 (train that part alone on the family already in --out; the
// draft and the Medusa heads learn from the saved target's own continuations too).
'use strict';
const path = require('path');

const root = path.resolve(__dirname, '..');
function flag(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

let train;
try {
  train = require(path.join(root, 'dist', 'lib', 'train', 'index.js'));
} catch (e) {
  process.stderr.write(`train-default: cannot load dist/lib/train (run \`npx tsc -p tsconfig.json\` first): ${e.message.split('\n')[0]}\n`);
  process.exit(1);
}

const outDir = path.resolve(flag('--out', path.join(root, 'models', 'default')));
const threads = Number(flag('--threads', '2'));
const stepScale = Number(flag('--scale', '1'));
if (!Number.isInteger(threads) || threads < 1 || !(stepScale > 0)) {
  process.stderr.write('train-default: --threads must be a positive integer and --scale a positive number\n');
  process.exit(2);
}

const only = flag('--only', undefined);
if (only !== undefined && !['draft', 'medusa', 'eagle', 'eagle3'].includes(only)) {
  process.stderr.write(`train-default: --only takes 'draft', 'medusa', 'eagle' or 'eagle3', got '${only}'\n`);
  process.exit(2);
}
const log = (line) => process.stderr.write(`[train] ${line}\n`);
const job =
  only !== undefined
    ? train
        .trainDefaultHeadsOnly({ outDir, threads, stepScale, log, part: only })
        .then((r) => `wrote ${path.join(outDir, only)} (${r.distill ? `held-out corpus loss ${r.heldoutLoss.toFixed(4)}, after the distilled stream ${r.distill.heldoutLoss.toFixed(4)}` : r.headAccuracy ? `last batch top-1 per head ${r.headAccuracy.map((x) => x.toFixed(3)).join(', ')}` : `held-out top-1 agreement ${[].concat(r.heldoutAgreement).map((x) => x.toFixed(3)).join(', ')}`})`)
    : train
        .trainDefaultFamily({ outDir, threads, stepScale, log })
        .then((r) => `wrote ${outDir} (target held-out loss ${r.target.heldoutLoss.toFixed(4)}, draft ${r.draft.heldoutLoss.toFixed(4)})`);
job
  .then((line) => process.stderr.write(`train-default: ${line}\n`))
  .catch((e) => {
    process.stderr.write(`train-default: ${e && e.message ? e.message : String(e)}${e && e.code ? ` [${e.code}]` : ''}\n`);
    process.exit(1);
  });

#!/usr/bin/env node
// `npm run train:default`: trains the embedded default model family (target, draft, Medusa heads,
// tokenizer) into models/default/ with the project's own trainer. Uses the compiled dist/ code
// (run `npx tsc -p tsconfig.json` first) and the native addon (`npm run build:native`).
// Options: --out DIR (default models/default), --threads N (default 2; the run is reproducible for
// a given thread count), --scale X (multiply every step count, e.g. 0.05 for a smoke run).
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

train
  .trainDefaultFamily({ outDir, threads, stepScale, log: (line) => process.stderr.write(`[train] ${line}\n`) })
  .then((r) => {
    process.stderr.write(`train-default: wrote ${outDir} (target held-out loss ${r.target.heldoutLoss.toFixed(4)}, draft ${r.draft.heldoutLoss.toFixed(4)})\n`);
  })
  .catch((e) => {
    process.stderr.write(`train-default: ${e && e.message ? e.message : String(e)}${e && e.code ? ` [${e.code}]` : ''}\n`);
    process.exit(1);
  });

#!/usr/bin/env node
// The one list of native sources, read by CMakeLists.txt and binding.gyp alike.
// Usage: node scripts/sources.js cpu|cuda [--sep=;]
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const groups = {
  // Everything C++: core types and dispatch, the CPU reference backend, the model runner, the N-API glue.
  cpu: [['cpp/core', '.cc'], ['cpp/cpu', '.cc'], ['cpp/model', '.cc'], ['cpp/train', '.cc'], ['cpp/napi', '.cc']],
  // CUDA translation units; only compiled when the CUDA backend is enabled.
  cuda: [['cuda', '.cu']],
};

function list(group) {
  const out = [];
  for (const [dir, ext] of groups[group]) {
    const abs = path.join(root, dir);
    if (!fs.existsSync(abs)) continue;
    for (const f of fs.readdirSync(abs).sort()) if (f.endsWith(ext)) out.push(`${dir}/${f}`);
  }
  return out;
}

if (require.main === module) {
  const group = process.argv[2];
  if (!(group in groups)) {
    process.stderr.write(`usage: sources.js ${Object.keys(groups).join('|')}\n`);
    process.exit(2);
  }
  const sep = (process.argv.find((a) => a.startsWith('--sep=')) || '--sep=\n').slice(6);
  process.stdout.write(list(group).join(sep));
}
module.exports = { list };

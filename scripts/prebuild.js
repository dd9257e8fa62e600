#!/usr/bin/env node
// Builds the prebuilt binaries shipped in the npm package: the CPU-only addon and, when nvcc is
// present, a CUDA variant named after the CUDA version (specdec.cuda<major>.<minor>.node). The
// loader (lib/native.ts) tries CUDA variants first and keeps one only if its runtime finds a usable
// GPU, else the CPU one. Usage: node scripts/prebuild.js [--cpu-only]
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const dest = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
fs.mkdirSync(dest, { recursive: true });

function build(cuda, dir) {
  const env = { ...process.env, SPECDEC_CUDA: cuda, SPECDEC_BUILD_DIR: dir };
  const r = spawnSync(process.execPath, [path.join(__dirname, 'build-native.js'), '--force'], { cwd: root, env, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status || 1);
  return path.join(root, dir, 'Release', 'specdec.node');
}

fs.copyFileSync(build('OFF', 'build-prebuild-cpu'), path.join(dest, 'specdec.node'));
console.error(`prebuild: ${path.relative(root, path.join(dest, 'specdec.node'))}`);
if (!process.argv.includes('--cpu-only')) {
  const nvcc = spawnSync('nvcc', ['--version'], { encoding: 'utf8' });
  const m = nvcc.status === 0 ? /release (\d+)\.(\d+)/.exec(nvcc.stdout) : null;
  if (!m) {
    console.error('prebuild: nvcc not found, no CUDA variant');
  } else {
    const file = path.join(dest, `specdec.cuda${m[1]}.${m[2]}.node`);
    fs.copyFileSync(build('ON', 'build-prebuild-cuda'), file);
    console.error(`prebuild: ${path.relative(root, file)}`);
  }
}

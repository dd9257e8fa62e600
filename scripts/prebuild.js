#!/usr/bin/env node
// `npm run prebuilds`: the prebuilt binaries shipped in the npm package, in
// prebuilds/<platform>-<arch>/:
//   specdec.node                       the CPU addon, built by prebuildify (node-gyp, binding.gyp)
//   specdec.cuda<major>.<minor>.node   one per CUDA toolkit found, built by cmake-js (CMakeLists.txt)
// all stripped. The loader (lib/native.ts) loads the newest CUDA variant the driver can run, else
// the CPU one. Toolkits: nvcc on the PATH, /usr/local/cuda*/bin/nvcc, and SPECDEC_NVCC (a
// ':'-separated list of nvcc paths). Nothing is downloaded: node-gyp uses the installed Node
// headers (--nodedir). Usage: node scripts/prebuild.js [--cpu-only] [--cuda-only]
//   --check  (npm's prepack) fails unless this platform's CPU prebuild exists, so that a tarball
//            without prebuilds (every install compiling for minutes) is not packed by accident;
//            SPECDEC_PACK_WITHOUT_PREBUILDS=1 packs anyway.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const dest = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
const cpuOnly = process.argv.includes('--cpu-only');
const cudaOnly = process.argv.includes('--cuda-only');

function fail(msg) {
  console.error(`prebuild: ${msg}`);
  process.exit(1);
}

function run(cmd, args, opts) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', ...opts });
  if (r.status !== 0) fail(`${path.basename(cmd)} ${args.slice(0, 2).join(' ')} ... failed (exit ${r.status}${r.error ? `, ${r.error.message}` : ''})`);
}

function strip(file) {
  if (process.platform !== 'linux') return;
  const r = spawnSync('strip', ['--strip-unneeded', file], { stdio: 'inherit' });
  if (r.status !== 0) console.error(`prebuild: strip ${file} failed; shipping it unstripped`);
}

/** A directory holding include/node/common.gypi (node-gyp's --nodedir), so node-gyp downloads nothing. */
function nodeDir() {
  const candidates = [process.env.npm_config_nodedir, path.resolve(process.execPath, '..', '..'), '/usr', '/usr/local'];
  const dir = candidates.find((d) => d && fs.existsSync(path.join(d, 'include', 'node', 'common.gypi')));
  if (!dir) fail(`no Node headers (include/node/common.gypi) under ${candidates.filter(Boolean).join(', ')}; set npm_config_nodedir`);
  return dir;
}

/** npm's bundled node-gyp (npm sets npm_config_node_gyp for scripts), else the one beside node. */
function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    path.resolve(process.execPath, '..', '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  const found = candidates.find((c) => c && fs.existsSync(c));
  if (!found) fail('node-gyp not found (it comes with npm); set PREBUILD_NODE_GYP');
  return found;
}

/** The CPU addon through prebuildify, built in a scratch copy so the checkout's build/ is left alone. */
function buildCpu() {
  const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-prebuild-'));
  try {
    for (const f of ['binding.gyp', 'package.json', 'cpp', path.join('scripts', 'sources.js')]) {
      fs.cpSync(path.join(root, f), path.join(stage, f), { recursive: true });
    }
    fs.symlinkSync(path.join(root, 'node_modules'), path.join(stage, 'node_modules'), 'dir');
    const gyp = nodeGyp();
    const env = { ...process.env, PREBUILD_NODE_GYP: gyp, npm_config_nodedir: nodeDir(), JOBS: 'max' };
    const prebuildify = require.resolve('prebuildify/bin.js', { paths: [root] });
    // --target: this Node's headers (the N-API binary runs on every later Node anyway).
    run(process.execPath, [prebuildify, '--napi', '--strip', `--target=${process.versions.node}`, `--out=${root}`, stage], { cwd: stage, env });
  } finally {
    fs.rmSync(stage, { recursive: true, force: true });
  }
  const file = path.join(dest, 'specdec.node');
  if (!fs.existsSync(file)) fail(`prebuildify finished but ${file} is missing`);
  console.error(`prebuild: ${path.relative(root, file)} (${(fs.statSync(file).size / 1e6).toFixed(1)} MB)`);
}

/** Every CUDA toolkit on this machine: nvcc path -> "major.minor". */
function toolkits() {
  const paths = new Set();
  if (process.env.SPECDEC_NVCC) for (const p of process.env.SPECDEC_NVCC.split(':')) if (p) paths.add(p);
  const which = spawnSync('sh', ['-c', 'command -v nvcc'], { encoding: 'utf8' });
  if (which.status === 0 && which.stdout.trim()) paths.add(fs.realpathSync(which.stdout.trim()));
  for (const d of fs.existsSync('/usr/local') ? fs.readdirSync('/usr/local') : []) {
    const p = path.join('/usr/local', d, 'bin', 'nvcc');
    if (/^cuda/.test(d) && fs.existsSync(p)) paths.add(fs.realpathSync(p));
  }
  const found = new Map();
  for (const nvcc of paths) {
    const r = spawnSync(nvcc, ['--version'], { encoding: 'utf8' });
    const m = r.status === 0 ? /release (\d+)\.(\d+)/.exec(r.stdout) : null;
    if (m && ![...found.values()].includes(`${m[1]}.${m[2]}`)) found.set(nvcc, `${m[1]}.${m[2]}`);
  }
  return found;
}

function buildCuda(nvcc, version) {
  const dir = `build-prebuild-cuda${version}`;
  const env = { ...process.env, SPECDEC_CUDA: 'ON', SPECDEC_BUILD_DIR: dir, CUDACXX: nvcc, SPECDEC_KEEP_BUILD: '1' };
  run(process.execPath, [path.join(__dirname, 'build-native.js'), '--force'], { cwd: root, env });
  const file = path.join(dest, `specdec.cuda${version}.node`);
  fs.copyFileSync(path.join(root, dir, 'Release', 'specdec.node'), file);
  strip(file);
  console.error(`prebuild: ${path.relative(root, file)} (${(fs.statSync(file).size / 1e6).toFixed(1)} MB, ${nvcc})`);
}

if (process.argv.includes('--check')) {
  const have = fs.existsSync(dest) ? fs.readdirSync(dest).filter((f) => f.endsWith('.node')) : [];
  // Only `npm pack`/`npm publish` stop; a git dependency (npm install runs prepack) builds from source.
  const packing = ['pack', 'publish'].includes(process.env.npm_command || 'pack');
  if (!have.includes('specdec.node') && packing && process.env.SPECDEC_PACK_WITHOUT_PREBUILDS !== '1') {
    fail(`${path.relative(root, dest)}/specdec.node is missing: run 'npm run prebuilds' before packing (SPECDEC_PACK_WITHOUT_PREBUILDS=1 packs without)`);
  }
  console.error(`prebuild: packing ${have.join(', ') || 'no prebuilds'}`);
  process.exit(0);
}

fs.mkdirSync(dest, { recursive: true });
if (!cudaOnly) buildCpu();
if (!cpuOnly) {
  const kits = toolkits();
  if (kits.size === 0) console.error('prebuild: no nvcc found, no CUDA variant');
  for (const [nvcc, version] of kits) buildCuda(nvcc, version);
}

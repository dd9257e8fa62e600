#!/usr/bin/env node
// `npm install` hook: builds the addon from source with cmake-js (CPU always, CUDA when nvcc
// is found). Nothing is downloaded: Node-API headers come from the node-api-headers package.
//   SPECDEC_CUDA=ON|OFF|AUTO   force the CUDA backend on/off (default AUTO)
//   SPECDEC_BUILD_DIR=dir      build directory (default build)
//   SPECDEC_SKIP_BUILD=1       skip (use a prebuilt binary or SPECDEC_BINARY)
//   SPECDEC_BUILD_FROM_SOURCE=1  build even when prebuilds/ has a binary for this platform
//   SPECDEC_KEEP_BUILD=1       keep the build intermediates of an install as a dependency
//   --force                    build even when SPECDEC_SKIP_BUILD is set or a prebuild exists
// The binary is stripped. Installed as a dependency (npm's install hook, outside this checkout),
// only the binary is kept: cmake/object files would be dead weight in the app's node_modules.
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');
const fs = require('fs');
const os = require('os');

const root = path.resolve(__dirname, '..');
const force = process.argv.includes('--force');
if (process.env.SPECDEC_SKIP_BUILD === '1' && !force) {
  console.error('specdec: SPECDEC_SKIP_BUILD=1, not building the native addon');
  process.exit(0);
}

// A packaged install with a loadable prebuilt binary for this platform needs no compiler.
const prebuilds = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
if (!force && process.env.SPECDEC_BUILD_FROM_SOURCE !== '1' && fs.existsSync(prebuilds)) {
  for (const f of fs.readdirSync(prebuilds).filter((x) => x.endsWith('.node'))) {
    try {
      require(path.join(prebuilds, f));
      console.error(`specdec: using the prebuilt ${path.join('prebuilds', path.basename(prebuilds), f)} (SPECDEC_BUILD_FROM_SOURCE=1 to compile)`);
      process.exit(0);
    } catch (e) {
      console.error(`specdec: prebuilt ${f} does not load (${e.message.split('\n')[0]}); building from source`);
    }
  }
}

const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
const out = process.env.SPECDEC_BUILD_DIR || 'build';
const cuda = (process.env.SPECDEC_CUDA || 'AUTO').toUpperCase();
const jobs = String(Math.max(1, Math.min(os.cpus().length, 8)));
const args = [cmakeJs, 'build', '--out', out, '--parallel', jobs, `--CDSPECDEC_CUDA=${cuda}`];
if (process.env.SPECDEC_CUDA_ARCHITECTURES) args.push(`--CDSPECDEC_CUDA_ARCHITECTURES=${process.env.SPECDEC_CUDA_ARCHITECTURES}`);

const t0 = Date.now();
console.error(`specdec: building the native addon (cmake-js, SPECDEC_CUDA=${cuda}, ${jobs} jobs) ...`);
const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
if (r.status !== 0) {
  console.error(
    `specdec: native build failed (exit ${r.status}). Needs cmake >= 3.18 and a C++17 compiler` +
      ` (apt-get install cmake g++). Set SPECDEC_CUDA=OFF to skip the CUDA backend.`,
  );
  process.exit(r.status || 1);
}
const bin = path.resolve(root, out, 'Release', 'specdec.node');
if (!fs.existsSync(bin)) {
  console.error(`specdec: build finished but ${bin} is missing`);
  process.exit(1);
}
if (process.platform === 'linux') {
  const s = spawnSync('strip', ['--strip-unneeded', bin], { stdio: 'inherit' });
  if (s.status !== 0) console.error('specdec: strip failed; the binary is unstripped');
}
const asDependency = process.env.npm_lifecycle_event === 'install' && path.resolve(process.env.INIT_CWD || root) !== root;
if (asDependency && process.env.SPECDEC_KEEP_BUILD !== '1') {
  const keep = `${path.resolve(root, out)}.specdec.node`;
  fs.renameSync(bin, keep);
  fs.rmSync(path.resolve(root, out), { recursive: true, force: true });
  fs.mkdirSync(path.dirname(bin), { recursive: true });
  fs.renameSync(keep, bin);
}
console.error(`specdec: built ${path.relative(root, bin)} (${(fs.statSync(bin).size / 1e6).toFixed(1)} MB) in ${((Date.now() - t0) / 1000).toFixed(0)} s`);

#!/usr/bin/env node
// The package as a user gets it: packs the tarball (with a CPU prebuild), installs it into a
// scratch app with cmake and nvcc off the PATH (so a source build could not even start), checks
// that the prebuilt binary is what loads and nothing was compiled, compiles the README's
// TypeScript example as a CommonJS and as an ES module program with `tsc --strict` (no
// skipLibCheck: the shipped .d.ts files are checked), and runs both.
// The prebuild: prebuilds/<platform>-<arch>/specdec.node when `npm run prebuilds` made one, else
// the checkout's built addon (the same N-API binary) in its place.
// Usage: node scripts/tarball-test.js [--keep] [--json]; exits non-zero with the failing step.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const keep = process.argv.includes('--keep');
const platformDir = `${process.platform}-${process.arch}`;
const timings = {};

function fail(step, msg) {
  process.stderr.write(`tarball-test: ${step}: ${msg}\n`);
  process.exit(1);
}

function run(step, cmd, args, opts = {}) {
  const t0 = Date.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20, ...opts });
  timings[step] = (Date.now() - t0) / 1000;
  if (r.status !== 0) fail(step, `${path.basename(cmd)} ${args.join(' ')} exited ${r.status}${r.error ? ` (${r.error.message})` : ''}\n${r.stdout}\n${r.stderr}`);
  return r;
}

function npmCli() {
  const candidates = [process.env.npm_execpath, path.resolve(process.execPath, '..', '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js')];
  const found = candidates.find((c) => c && /npm-cli\.js$/.test(c) && fs.existsSync(c));
  if (!found) fail('setup', 'npm-cli.js not found (set npm_execpath)');
  return found;
}

/** The README's first ```ts block, split into its import and the rest. */
function readmeExample() {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const m = /```ts\n([\s\S]*?)```/.exec(readme);
  if (!m) fail('readme', 'no ```ts block in README.md');
  const code = m[1];
  const imp = /^import[\s\S]*?from 'specdec';\n/m.exec(code);
  if (!imp) fail('readme', "the example has no `import ... from 'specdec'`");
  return { imports: imp[0], body: code.slice(imp.index + imp[0].length) };
}

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-tarball-'));
try {
  // 1. Stage the package's files with the prebuild and pack them (no lifecycle scripts: dist/ is built).
  const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
  const stage = path.join(work, 'stage');
  fs.mkdirSync(stage);
  for (const f of [...pkg.files, 'package.json', 'README.md', 'LICENSE', 'CHANGELOG.md']) {
    if (fs.existsSync(path.join(root, f))) fs.cpSync(path.join(root, f), path.join(stage, f), { recursive: true });
  }
  const prebuild = path.join(stage, 'prebuilds', platformDir, 'specdec.node');
  if (!fs.existsSync(prebuild)) {
    const local = path.join(root, 'build', 'Release', 'specdec.node');
    if (!fs.existsSync(local)) fail('stage', `no prebuild and no ${local}: run npm run prebuilds or npm run build:native`);
    fs.mkdirSync(path.dirname(prebuild), { recursive: true });
    fs.copyFileSync(local, prebuild);
  }
  const npm = npmCli();
  const packed = run('pack', process.execPath, [npm, 'pack', '--ignore-scripts', '--json', '--pack-destination', work], { cwd: stage });
  const info = JSON.parse(packed.stdout)[0];
  const tarball = path.join(work, info.filename);
  const shipped = info.files.map((f) => f.path);
  for (const want of ['dist/lib/index.d.ts', 'dist/examples/strategies.js', 'examples/strategies.ts', 'typings/native.d.ts', `prebuilds/${platformDir}/specdec.node`, 'models/default/target/config.json', 'LICENSE', 'CHANGELOG.md', 'bin/specdec.js']) {
    if (!shipped.includes(want)) fail('pack', `${want} is not in the tarball`);
  }
  const stray = shipped.filter((f) => /^(build|dist\/test|test|node_modules)\//.test(f));
  if (stray.length > 0) fail('pack', `the tarball holds ${stray.slice(0, 3).join(', ')}${stray.length > 3 ? ', ...' : ''}`);

  // 2. Install into a scratch app with only node and sh on the PATH: no cmake, nvcc, compiler.
  const app = path.join(work, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'scratch-app', version: '1.0.0', private: true }));
  const bin = path.join(work, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync('/bin/sh', path.join(bin, 'sh'));
  const env = { ...process.env, PATH: bin, SPECDEC_BACKEND: 'cpu' };
  for (const k of Object.keys(env)) if (/^(npm_|SPECDEC_BINARY|SPECDEC_BUILD|SPECDEC_SKIP)/.test(k)) delete env[k];
  const install = run('install', process.execPath, [npm, 'install', tarball, '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts'], { cwd: app, env });
  const installed = path.join(app, 'node_modules', 'specdec');
  if (!/using the prebuilt/.test(install.stderr + install.stdout)) fail('install', `the install hook did not use the prebuild:\n${install.stderr}`);
  if (fs.existsSync(path.join(installed, 'build'))) fail('install', 'a build/ directory appeared: something was compiled');

  // 3. The README example, compiled strictly against the installed typings, as CommonJS and as ESM.
  const { imports, body } = readmeExample();
  // One tsc run checks both: under module nodenext a .cts file is CommonJS (require) and a .mts
  // file an ES module (import), each resolving 'specdec' through the package's exports.
  fs.writeFileSync(path.join(app, 'cjs.cts'), `${imports}\nasync function main(): Promise<void> {\n${body}}\nvoid main();\n`);
  fs.writeFileSync(path.join(app, 'esm.mts'), `${imports}\n${body}`);
  const tsconfig = {
    compilerOptions: {
      strict: true,
      skipLibCheck: false,
      target: 'ES2022',
      lib: ['ES2022', 'ESNext.Disposable'],
      module: 'nodenext',
      moduleResolution: 'nodenext',
      typeRoots: [path.join(root, 'node_modules', '@types')],
      types: ['node'],
      outDir: 'out',
    },
    files: ['cjs.cts', 'esm.mts'],
  };
  fs.writeFileSync(path.join(app, 'tsconfig.json'), JSON.stringify(tsconfig, null, 2));
  run('tsc', process.execPath, [path.join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], { cwd: app, env });
  const outputs = {};
  for (const [kind, js] of [['cjs', 'cjs.cjs'], ['esm', 'esm.mjs']]) {
    const src = fs.readFileSync(path.join(app, 'out', js), 'utf8');
    if (kind === 'cjs' ? !/require\("specdec"\)/.test(src) : !/from 'specdec'/.test(src)) fail('tsc', `out/${js} is not a ${kind} module`);
    const r = run(`run-${kind}`, process.execPath, [path.join(app, 'out', js)], { cwd: app, env });
    if (r.stdout.trim().length < 20) fail(`run-${kind}`, `printed too little: '${r.stdout}'`);
    outputs[kind] = r.stdout;
  }
  if (outputs.cjs !== outputs.esm) fail('run', `CommonJS and ESM programs printed different texts:\n${outputs.cjs}\n${outputs.esm}`);
  // The shipped example (compiled) runs from the installed package too.
  const example = run('run-example', process.execPath, [path.join(installed, 'dist', 'examples', 'strategies.js')], { cwd: app, env });
  if (!/plain/.test(example.stdout)) fail('run-example', `unexpected output: ${example.stdout}`);

  // 4. The installed CLI loads the prebuilt binary.
  const infoRun = run('cli-info', process.execPath, [path.join(installed, 'bin', 'specdec.js'), 'info', '--json'], { cwd: app, env });
  const binary = JSON.parse(infoRun.stdout).binary;
  if (binary !== fs.realpathSync(path.join(installed, 'prebuilds', platformDir, 'specdec.node')) && binary !== path.join(installed, 'prebuilds', platformDir, 'specdec.node')) {
    fail('cli-info', `loaded ${binary}, not the prebuild`);
  }
  const summary = { ok: true, tarball: info.filename, tarballBytes: info.size, files: shipped.length, binary, text: outputs.esm.trim(), seconds: timings };
  process.stdout.write(process.argv.includes('--json') ? JSON.stringify(summary) + '\n' : `tarball-test: ok (${JSON.stringify(timings)})\n`);
} finally {
  if (keep) process.stderr.write(`tarball-test: kept ${work}\n`);
  else fs.rmSync(work, { recursive: true, force: true });
}

#!/usr/bin/env node
// Builds and runs the fuzz targets of fuzz/ (see fuzz/README.md).
//   npm run fuzz -- --seconds N [--target T] [--jobs J]  libFuzzer (clang, ASan + UBSan), N s per target
//   npm run fuzz -- --runs N [--target T]                 libFuzzer, N executions per target
//   node scripts/fuzz.js replay [--mutate N --seed S] [--target T]
//                                    the plain driver (any C++ compiler, ASan + UBSan): replays
//                                    fuzz/corpus/T and fuzz/regressions/T, then N seeded mutants
//   node scripts/fuzz.js seeds       regenerates fuzz/corpus/T/seed-* from each target's seed_inputs()
// Builds go to build-fuzz/ (objects reused while their sources and headers are unchanged).
'use strict';
const { spawn, spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const TARGETS = ['safetensors', 'llama_load', 'forward', 'attention', 'verify', 'kv_cache', 'tree', 'penalize'];
const LIB_DIRS = ['cpp/core', 'cpp/cpu', 'cpp/model'];
const SAN = ['-fsanitize=address,undefined', '-fno-sanitize-recover=all'];

function listFiles(dir, ext) {
  const abs = path.join(root, dir);
  return fs.existsSync(abs) ? fs.readdirSync(abs).filter((f) => f.endsWith(ext)).sort().map((f) => path.join(abs, f)) : [];
}

/** The replay build (gcc or any c++) and the libFuzzer build (clang) differ in compiler and flags. */
function flavour(kind) {
  if (kind === 'replay') {
    const cxx = process.env.CXX || 'c++';
    // -O0: CI compiles everything from scratch and replays a few thousand small inputs.
    return { kind, cxx, lib: ['-O0', ...SAN], target: ['-O0', ...SAN], link: SAN, main: path.join(root, 'fuzz', 'replay_main.cc') };
  }
  const cxx = process.env.FUZZ_CXX || 'clang++';
  // SPECDEC_CPU_NO_SIMD: clang 14 rejects __builtin_cpu_supports("f16c") in cpp/cpu/simd.h, so the
  // libFuzzer build runs the portable CPU kernels (the replay build keeps the AVX2 ones).
  return { kind, cxx, lib: ['-O1', '-DSPECDEC_CPU_NO_SIMD=1', '-fsanitize=fuzzer-no-link', ...SAN], target: ['-O1', '-DSPECDEC_LIBFUZZER=1', '-fsanitize=fuzzer', ...SAN],
    link: ['-fsanitize=fuzzer', ...SAN] };
}

/** Why the libFuzzer build cannot run here, or undefined when it can. */
function libFuzzerReason() {
  const cxx = process.env.FUZZ_CXX || 'clang++';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-fuzz-probe-'));
  const src = path.join(dir, 'p.cc');
  fs.writeFileSync(src, 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n');
  const r = spawnSync(cxx, ['-fsanitize=fuzzer,address', src, '-o', path.join(dir, 'p')], { encoding: 'utf8' });
  fs.rmSync(dir, { recursive: true, force: true });
  if (r.error) return `${cxx} not found`;
  if (r.status !== 0) return `${cxx} cannot link libFuzzer: ${r.stderr.split('\n').find((l) => /error/.test(l)) || r.stderr.slice(0, 200)}`;
  return undefined;
}

function newestHeader(dirs) {
  let t = 0;
  for (const d of dirs) for (const f of listFiles(d, '.h')) t = Math.max(t, fs.statSync(f).mtimeMs);
  return t;
}

function runCompiler(cxx, args) {
  return new Promise((resolve) => {
    const child = spawn(cxx, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr += d.toString(); });
    child.on('error', (e) => resolve({ status: -1, stderr: e.message }));
    child.on('close', (status) => resolve({ status, stderr }));
  });
}

/**
 * Compiles the library sources and the targets (at most `jobs` compilers at once) and links one
 * executable per target. Returns { dir, exes: { target: path } }; throws with the compiler's
 * message on failure.
 */
async function build(kind, { targets = TARGETS, jobs = Math.max(1, Math.min(os.cpus().length, 4)), log = () => {} } = {}) {
  const fl = flavour(kind);
  const dir = path.join(root, 'build-fuzz', kind);
  fs.mkdirSync(path.join(dir, 'obj'), { recursive: true });
  // An object is rebuilt when its source or a header it may include changed (library sources
  // include cpp/ headers only; the targets include fuzz/ ones too).
  const libHeaders = newestHeader(LIB_DIRS), fuzzHeaders = Math.max(libHeaders, newestHeader(['fuzz']));
  const common = ['-std=c++17', '-g', '-pthread', '-fno-strict-aliasing', '-Wno-unknown-pragmas'];
  const compileJobs = [];
  const object = (src, flags, headers) => {
    const obj = path.join(dir, 'obj', path.relative(root, src).replace(/[\\/]/g, '_') + '.o');
    const stale = !fs.existsSync(obj) || fs.statSync(obj).mtimeMs < Math.max(headers, fs.statSync(src).mtimeMs);
    if (stale) compileJobs.push({ src, obj, args: [...common, ...flags, '-c', src, '-o', obj] });
    return obj;
  };
  // The CPU kernels (cpp/cpu) keep edge coverage but not comparison tracing under libFuzzer: their
  // loops would spend most of each run in it, and the checks worth solving are in core/ and model/.
  const libFlags = (src) => (fl.kind === 'libfuzzer' && src.includes(`${path.sep}cpu${path.sep}`) ? [...fl.lib, '-fno-sanitize-coverage=trace-cmp'] : fl.lib);
  const libObjs = LIB_DIRS.flatMap((d) => listFiles(d, '.cc')).map((s) => object(s, libFlags(s), libHeaders));
  const mainObj = fl.main ? object(fl.main, fl.target, fuzzHeaders) : undefined;
  const targetObjs = Object.fromEntries(targets.map((t) => [t, object(path.join(root, 'fuzz', `${t}_fuzz.cc`), fl.target, fuzzHeaders)]));
  if (compileJobs.length) log(`compiling ${compileJobs.length} files with ${fl.cxx} (${kind})`);
  const failures = [];
  const worker = async () => {
    for (let job = compileJobs.shift(); job; job = compileJobs.shift()) {
      const r = await runCompiler(fl.cxx, job.args);
      if (r.status !== 0) failures.push(`${path.relative(root, job.src)}:\n${r.stderr.slice(-4000)}`);
    }
  };
  await Promise.all(Array.from({ length: jobs }, worker));
  if (failures.length) throw new Error(`fuzz build (${kind}) failed:\n${failures.join('\n')}`);
  const exes = {};
  const links = targets.map((t) => async () => {
    const exe = path.join(dir, kind === 'replay' ? `replay_${t}` : `fuzz_${t}`);
    const r = await runCompiler(fl.cxx, [...common, ...fl.link, targetObjs[t], ...(mainObj ? [mainObj] : []), ...libObjs, '-o', exe]);
    if (r.status !== 0) failures.push(`linking ${t}:\n${r.stderr.slice(-4000)}`);
    exes[t] = exe;
  });
  const linkWorker = async () => { for (let l = links.shift(); l; l = links.shift()) await l(); };
  await Promise.all(Array.from({ length: jobs }, linkWorker));
  if (failures.length) throw new Error(`fuzz build (${kind}) failed:\n${failures.join('\n')}`);
  return { dir, exes };
}

const corpusDirs = (t) => [path.join(root, 'fuzz', 'corpus', t), path.join(root, 'fuzz', 'regressions', t)].filter((d) => fs.existsSync(d));
const SAN_ENV = { ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=1', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' };

/** Arguments of the replay driver for target t: its corpus and regressions, then `mutants` mutants. */
function replayArgs(t, mutants = 0, seed = 1) {
  return [...(mutants > 0 ? ['--mutate', String(mutants), String(seed)] : []), ...corpusDirs(t)];
}

function parseArgs(argv) {
  const o = { mode: 'fuzz', seconds: 0, runs: 0, targets: TARGETS, jobs: undefined, mutate: 0, seed: 1 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === 'replay' || a === 'seeds') o.mode = a;
    else if (a === '--seconds') o.seconds = Number(val());
    else if (a === '--runs') o.runs = Number(val());
    else if (a === '--target') o.targets = val().split(',');
    else if (a === '--jobs') o.jobs = Number(val());
    else if (a === '--mutate') o.mutate = Number(val());
    else if (a === '--seed') o.seed = Number(val());
    else throw new Error(`unknown argument ${a}`);
  }
  for (const t of o.targets) if (!TARGETS.includes(t)) throw new Error(`unknown target ${t} (targets: ${TARGETS.join(', ')})`);
  return o;
}

/** libFuzzer's final figures: executions, coverage (cov: edges, ft: features), corpus size. */
function stats(out) {
  const num = (re) => { const m = re.exec(out); return m ? Number(m[1]) : undefined; };
  const lines = out.split('\n').filter((l) => /cov: \d+ ft: \d+/.test(l));
  const last = lines.filter((l) => /DONE/.test(l)).pop() || lines.pop() || '';
  return {
    execs: num(/stat::number_of_executed_units: (\d+)/),
    execsPerSec: num(/stat::average_exec_per_sec: (\d+)/),
    cov: Number((/cov: (\d+)/.exec(last) || [])[1]),
    ft: Number((/ft: (\d+)/.exec(last) || [])[1]),
    corpus: Number((/corp: (\d+)/.exec(last) || [])[1]),
    peakRssMb: num(/stat::peak_rss_mb: (\d+)/),
  };
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const log = (m) => process.stderr.write(`fuzz: ${m}\n`);
  if (o.mode === 'seeds') {
    const { exes } = await build('replay', { targets: o.targets, log });
    for (const t of o.targets) {
      const out = path.join(root, 'fuzz', 'corpus', t);
      fs.mkdirSync(out, { recursive: true });
      const r = spawnSync(exes[t], ['--write-seeds', out], { stdio: 'inherit', env: { ...process.env, ...SAN_ENV } });
      if (r.status !== 0) process.exit(1);
    }
    return;
  }
  if (o.mode === 'replay') {
    const { exes } = await build('replay', { targets: o.targets, log });
    let bad = 0;
    for (const t of o.targets) {
      const r = spawnSync(exes[t], replayArgs(t, o.mutate, o.seed), { encoding: 'utf8', env: { ...process.env, ...SAN_ENV } });
      process.stdout.write(`${t}: ${r.status === 0 ? r.stdout.trim() : `FAILED (exit ${r.status})\n${r.stdout}${r.stderr}`}\n`);
      if (r.status !== 0) bad++;
    }
    process.exit(bad ? 1 : 0);
  }
  const reason = libFuzzerReason();
  if (reason) {
    log(`libFuzzer is not available (${reason}).`);
    log('On Debian/Ubuntu: apt-get install -y clang libclang-rt-14-dev (or the libclang-rt-NN-dev of your clang);');
    log('or set FUZZ_CXX to a clang++ with libFuzzer. Without it, `node scripts/fuzz.js replay --mutate N`');
    log('replays the corpus and N mutants with the plain driver (any C++ compiler).');
    process.exit(2);
  }
  if (!(o.seconds > 0) && !(o.runs > 0)) throw new Error('give --seconds N or --runs N');
  const { exes } = await build('libfuzzer', { targets: o.targets, jobs: o.jobs, log });
  const results = {};
  let found = 0;
  for (const t of o.targets) {
    const work = path.join(root, 'build-fuzz', 'work', t);
    const artifacts = path.join(root, 'build-fuzz', 'artifacts', t);
    fs.mkdirSync(work, { recursive: true });
    fs.mkdirSync(artifacts, { recursive: true });
    const args = [`-artifact_prefix=${artifacts}/`, '-print_final_stats=1', '-timeout=10', '-rss_limit_mb=2048', '-max_len=8192',
      ...(o.seconds > 0 ? [`-max_total_time=${o.seconds}`] : []), ...(o.runs > 0 ? [`-runs=${o.runs}`] : []),
      ...(o.jobs > 1 ? [`-fork=${o.jobs}`, '-ignore_crashes=0'] : []), work, ...corpusDirs(t)];
    // libFuzzer's progress goes to a log file (follow it with tail -f), read back at the end.
    const logFile = path.join(root, 'build-fuzz', `${t}.log`);
    log(`${t}: ${path.relative(root, exes[t])} ${args.join(' ')} (progress: ${path.relative(root, logFile)})`);
    const fd = fs.openSync(logFile, 'w');
    // No allocation stacks in long runs (about twice the speed here); a crash input replays with them.
    const env = { ...process.env, ...SAN_ENV, ASAN_OPTIONS: `${SAN_ENV.ASAN_OPTIONS}:malloc_context_size=0` };
    const r = spawnSync(exes[t], args, { stdio: ['ignore', fd, fd], env });
    fs.closeSync(fd);
    const out = fs.readFileSync(logFile, 'utf8');
    results[t] = { ...stats(out), status: r.status };
    if (r.status === 72) results[t].interrupted = true;  // SIGINT: libFuzzer's -interrupted_exitcode
    else if (r.status !== 0) {
      found++;
      process.stderr.write(out.split('\n').slice(-60).join('\n'));
      log(`${t}: FINDING (exit ${r.status}); the input is in ${path.relative(root, artifacts)}/ — add it to fuzz/regressions/${t}/ once fixed`);
    }
    log(`${t}: ${JSON.stringify(results[t])}`);
  }
  process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
  process.exit(found ? 1 : 0);
}

module.exports = { TARGETS, build, replayArgs, corpusDirs, SAN_ENV };

if (require.main === module) {
  main().catch((e) => {
    process.stderr.write(`fuzz: ${e.message}\n`);
    process.exit(1);
  });
}

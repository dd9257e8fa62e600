// The CUDA kernels checked on the host, where CI has no GPU: test/emu/ compiles the kernel headers
// (cuda/gemm_tc.cuh; cuda/graph_cache.h; cuda/attention.cuh with its launch plan; cuda/attention_tc.cuh; cuda/sampling.cuh and verify.cuh with
// their block primitives; cuda/layers.cuh; cuda/kv.cuh) against stand-ins for threads, barriers, shuffles, atomics, bf16/f16 and
// wmma, runs them on random and adversarial inputs and checks them against float64 references or
// the CPU backend (exact agreement where the design promises it), plus batch invariance and the
// kernels' own bit-identity claims. Each program is built twice: AddressSanitizer + UBSan (an
// out-of-bounds read or write fails) and ThreadSanitizer (a missing __syncwarp/__syncthreads is a
// data race between emulated lanes: they are fibers whose switches carry no happens-before edge, only
// the barriers do). The emulator's own program checks that both kinds of bug are seen. On a GPU, the
// [cuda] suites run the real kernels.
import * as assert from 'assert';
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { testSeed } from './helpers';

const root = path.resolve(__dirname, '..', '..');
const cxx = process.env['CXX'] ?? 'c++';

function compilerReason(): string | undefined {
  const r = spawnSync(cxx, ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? undefined : `no C++ compiler (${cxx}): ${r.error?.message ?? r.stderr}`;
}

interface Program {
  source: string;
  extra: string[]; // CPU backend sources it compares against
  kernel: string;
  minChecks: number;
  args: string[];
  tsanArgs: string[]; // the ThreadSanitizer build is 2-7x slower: a reduced battery where the full one costs over a minute
  tsanMinChecks: number;
}

const programs: Program[] = [
  { source: 'emulator_emu.cc', extra: [], kernel: 'the emulator (test/emu/cuda_emu.h): barriers, warp collectives, cp.async, grid walks', minChecks: 6,
    args: [], tsanArgs: [], tsanMinChecks: 6 },
  { source: 'gemm_tc_emu.cc', extra: [], kernel: 'tensor-core matmul, and the streaming kernel == it bit for bit (cuda/gemm_tc.cuh, cuda/gemm_tc_stream.cuh)', minChecks: 130, args: [],
    tsanArgs: [], tsanMinChecks: 130 },
  { source: 'attention_emu.cc', extra: [], kernel: 'tree attention + split-KV merge + planner, tree = path, cp.async K/V staging with 1-4 buffers, sliding windows, soft-capped scores (cuda/attention.cuh)', minChecks: 68,
    args: [], tsanArgs: [], tsanMinChecks: 68 },
  { source: 'attention_tc_emu.cc', extra: [], kernel: 'tensor-core tree attention + split-KV merge, tree = path, decode rows, cp.async double buffering (cuda/attention_tc.cuh); the mma.sync kernel == it bit for bit, gathered tree tiles included (cuda/attention_mma.cuh)', minChecks: 67,
    args: [], tsanArgs: ['4', '2'], tsanMinChecks: 30 },
  { source: 'sampling_emu.cc', extra: ['cpp/core/tensor.cc', 'cpp/core/transfers.cc', 'cpp/core/backend.cc', 'cpp/cpu/thread_pool.cc', 'cpp/cpu/sampling.cc', 'cpp/cpu/verify.cc'],
    kernel: 'sampling + verification incl. processLogits, argmax and sample by vocabulary slices, vocabulary-parallel greedy, rejection (one-hot, and draft rows on chains and on trees with sibling candidates) and typical, penalties with a logit bias and stop bans, token log-probabilities (and of a chain\'s own picks), with the CPU backend\'s AVX2 / AVX-512 entropy and mass passes == their plain code (cuda/sampling.cuh, cuda/process_slices.cuh, cuda/argmax_slices.cuh, cuda/verify.cuh) vs the CPU backend',
    minChecks: 184, args: ['2'], tsanArgs: ['0'], tsanMinChecks: 28 },
  { source: 'graphs_emu.cc', extra: [], kernel: 'CUDA graphs of the layer stack: launch records, the body arena, replay == eager, no stale replay, fallbacks (cuda/graph_cache.h)', minChecks: 13,
    args: [], tsanArgs: ['20'], tsanMinChecks: 13 },
  { source: 'layers_kv_emu.cc', extra: [], kernel: 'model layers (the fused residual add + norm and the q+k rotation, and the rotation with the K/V append, with and without the Qwen3 q/k norms, whole and partial rotations, == the separate ops; GeGLU, logit soft-capping, scaled embeddings, Granite\'s scale) + paged KV movement incl. commit from a verification result (cuda/layers.cuh, cuda/kv.cuh)', minChecks: 94,
    args: [], tsanArgs: [], tsanMinChecks: 94 },
  { source: 'tree_emu.cc', extra: ['cpp/core/tensor.cc', 'cpp/core/transfers.cc', 'cpp/core/backend.cc', 'cpp/cpu/thread_pool.cc', 'cpp/cpu/tree.cc', 'cpp/core/ops_tree.cc'],
    kernel: 'dynamic tree expansion (EAGLE-2 on the device): a level\'s choice of nodes with ties, -inf and NaN, its page gather, the children\'s log probabilities bit for bit, the rows\' paths (cycles, hostile parents, a target -> draft map), row gathers with clamped indices (cuda/tree.cuh) vs a sorted reference and the CPU backend', minChecks: 68,
    args: [], tsanArgs: ['quick'], tsanMinChecks: 14 },
];
const sanitizers = ['address,undefined', 'thread'];

interface Built { exe: string; status: number | null; stderr: string }

function compile(prog: Program, sanitizer: string, dir: string): Promise<Built> {
  const exe = path.join(dir, `${path.basename(prog.source, '.cc')}_${sanitizer.replace(/,/g, '_')}`);
  const args = ['-std=c++20', '-O1', '-g', '-fno-strict-aliasing', '-Wno-unknown-pragmas', '-pthread',
    `-fsanitize=${sanitizer}`, '-fno-sanitize-recover=all', path.join(root, 'test', 'emu', prog.source),
    ...prog.extra.map((f) => path.join(root, f)), '-o', exe];
  return new Promise((resolve) => {
    const child = spawn(cxx, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', (e) => resolve({ exe, status: -1, stderr: e.message }));
    child.on('close', (status) => resolve({ exe, status, stderr }));
  });
}

describe(`CUDA kernels on the host emulation (seed ${testSeed})`, function () {
  this.timeout(960000);
  const reason = compilerReason();
  let dir = '';
  const builds = new Map<string, Built>();
  before(async function () {
    if (reason) this.skip();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-emu-'));
    // Two compilers at a time (CI has 2 cores).
    const jobs = programs.flatMap((p) => sanitizers.map((s) => ({ p, s })));
    const next = async (): Promise<void> => {
      const job = jobs.shift();
      if (!job) return;
      builds.set(`${job.p.source} ${job.s}`, await compile(job.p, job.s, dir));
      return next();
    };
    await Promise.all([next(), next()]);
  });
  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const prog of programs)
    for (const sanitizer of sanitizers) {
      it(`${prog.kernel}: every check passes under -fsanitize=${sanitizer}`, function () {
        const build = builds.get(`${prog.source} ${sanitizer}`)!;
        if (build.status !== 0 && /lib[at]san|cannot find -l|unsupported/i.test(build.stderr)) {
          this.skip(); // this sanitizer's runtime is not installed; the other build still runs
        }
        assert.strictEqual(build.status, 0, `compiling ${prog.source} failed:\n${build.stderr.slice(-6000)}`);
        const tsan = sanitizer === 'thread';
        const run = spawnSync(build.exe, [String(testSeed), ...(tsan ? prog.tsanArgs : prog.args)], {
          encoding: 'utf8',
          // Generous: a loaded 2-core machine once ran these 5x slower than a quiet one. (A lane missing at
          // a barrier no longer hangs: the emulator reports the deadlock.) With the lanes as fibers the
          // slowest program takes ~50 s quiet, against ~190 s with one OS thread per lane.
          timeout: 900000,
          env: { ...process.env, TSAN_OPTIONS: 'halt_on_error=1', ASAN_OPTIONS: 'detect_leaks=0' },
        });
        const out = `${run.stdout}\n${run.stderr}`;
        assert.ok(!run.error, `emulation did not finish: ${run.error?.message}\n${out.slice(-4000)}`);
        assert.strictEqual(run.status, 0, `emulation failed (exit ${run.status}):\n${out.slice(-6000)}`);
        assert.doesNotMatch(out, /FAIL|Sanitizer/, out.slice(-6000));
        const summary = /(\d+) checks, 0 failed/.exec(run.stdout);
        const min = tsan ? prog.tsanMinChecks : prog.minChecks;
        assert.ok(summary && Number(summary[1]) >= min, `expected at least ${min} checks:\n${run.stdout.slice(-2000)}`);
      });
    }

  // The emulator must see the bugs it exists to catch, or every check above proves less than it says.
  for (const sanitizer of sanitizers)
    it(`the emulator catches a missing __syncthreads (${sanitizer === 'thread' ? 'a data race' : 'wrong values'}) and a divergent one (a deadlock, reported) under -fsanitize=${sanitizer}`, function () {
      const build = builds.get(`emulator_emu.cc ${sanitizer}`)!;
      if (build.status !== 0 && /lib[at]san|cannot find -l|unsupported/i.test(build.stderr)) this.skip();
      assert.strictEqual(build.status, 0, build.stderr.slice(-6000));
      const run = (mode: string): { status: number | null; out: string } => {
        const r = spawnSync(build.exe, [String(testSeed), mode], {
          encoding: 'utf8', timeout: 120000, env: { ...process.env, TSAN_OPTIONS: 'halt_on_error=1', ASAN_OPTIONS: 'detect_leaks=0' },
        });
        assert.ok(!r.error, `${mode}: ${r.error?.message}`);
        return { status: r.status, out: `${r.stdout}\n${r.stderr}` };
      };
      const race = run('race');
      assert.notStrictEqual(race.status, 0, race.out.slice(-3000));
      assert.match(race.out, sanitizer === 'thread' ? /ThreadSanitizer: data race/ : /FAIL race: [1-9]\d* cells wrong/, race.out.slice(-3000));
      const deadlock = run('deadlock');
      assert.notStrictEqual(deadlock.status, 0, deadlock.out.slice(-3000));
      assert.match(deadlock.out, sanitizer === 'thread' ? /ThreadSanitizer: data race|emulation: deadlock/ : /emulation: deadlock: every unfinished thread waits at a barrier/, deadlock.out.slice(-3000));
    });
});

// The CUDA kernels checked on the host, where CI has no GPU: test/emu/ compiles kernel headers
// (cuda/gemm_tc.cuh, cuda/attention.cuh with its launch plan) against stand-ins for threads,
// barriers, shuffles, bf16/f16 and wmma, runs them on random inputs and checks values against
// float64, batch invariance and the kernels' own bit-identity claims. Two builds each:
// AddressSanitizer + UBSan (out-of-bounds reads or writes) and ThreadSanitizer (a missing
// __syncwarp/__syncthreads is a data race between emulated lanes). On a GPU, the [cuda] suites
// run the real kernels.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
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
  kernel: string;
  minChecks: number;
  tsanArgs: string[]; // extra arguments for the (slower) ThreadSanitizer build
}

const programs: Program[] = [
  { source: 'gemm_tc_emu.cc', kernel: 'tensor-core matmul (cuda/gemm_tc.cuh)', minChecks: 100, tsanArgs: [] },
  { source: 'attention_emu.cc', kernel: 'tree attention + split-KV merge (cuda/attention.cuh)', minChecks: 25, tsanArgs: ['2'] },
];

describe(`CUDA kernels on the host emulation (seed ${testSeed})`, function () {
  this.timeout(300000);
  const reason = compilerReason();
  let dir = '';
  before(function () {
    if (reason) this.skip();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-emu-'));
  });
  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const prog of programs)
    for (const sanitizer of ['address,undefined', 'thread']) {
      it(`${prog.kernel}: every check passes under -fsanitize=${sanitizer}`, function () {
        const source = path.join(root, 'test', 'emu', prog.source);
        const exe = path.join(dir, `${path.basename(prog.source, '.cc')}_${sanitizer.replace(/,/g, '_')}`);
        const flags = ['-std=c++20', '-O1', '-g', '-fno-strict-aliasing', '-Wno-unknown-pragmas', '-pthread',
          `-fsanitize=${sanitizer}`, '-fno-sanitize-recover=all'];
        const build = spawnSync(cxx, [...flags, source, '-o', exe], { encoding: 'utf8' });
        if (build.status !== 0 && /lib[at]san|cannot find -l|unsupported/i.test(build.stderr)) {
          this.skip(); // this sanitizer's runtime is not installed; the other build still runs
        }
        assert.strictEqual(build.status, 0, `compiling ${source} failed:\n${build.stderr}`);
        const tsan = sanitizer === 'thread';
        const run = spawnSync(exe, [String(testSeed), ...(tsan ? prog.tsanArgs : [])], {
          encoding: 'utf8',
          timeout: 240000, // a missing lane at a barrier would hang: fail instead
          env: { ...process.env, TSAN_OPTIONS: 'halt_on_error=1', ASAN_OPTIONS: 'detect_leaks=0' },
        });
        const out = `${run.stdout}\n${run.stderr}`;
        assert.ok(!run.error, `emulation did not finish: ${run.error?.message}\n${out.slice(-4000)}`);
        assert.strictEqual(run.status, 0, `emulation failed (exit ${run.status}):\n${out.slice(-6000)}`);
        assert.doesNotMatch(out, /FAIL|Sanitizer/, out.slice(-6000));
        const summary = /(\d+) checks, 0 failed/.exec(run.stdout);
        const min = tsan && prog.tsanArgs.length ? 1 : prog.minChecks;
        assert.ok(summary && Number(summary[1]) >= min, `expected at least ${min} checks:\n${run.stdout.slice(-2000)}`);
      });
    }
});

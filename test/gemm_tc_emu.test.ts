// The CUDA tensor-core matmul (cuda/gemm_tc.cuh) checked on the host: test/emu/ compiles the kernel
// header against stand-ins for threads, barriers, bf16/f16 and wmma, and runs it on random inputs
// (values vs float64, exactness of the f32 split, batch invariance, load paths, writes only into
// `out`). Two builds: AddressSanitizer + UBSan (out-of-bounds reads or writes) and ThreadSanitizer
// (a missing __syncwarp/__syncthreads is a data race between emulated lanes). This is what CI can
// check of the kernel without a GPU; on a GPU, test/layers.test.ts runs the real thing.
import * as assert from 'assert';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { testSeed } from './helpers';

const root = path.resolve(__dirname, '..', '..');
const source = path.join(root, 'test', 'emu', 'gemm_tc_emu.cc');
const cxx = process.env['CXX'] ?? 'c++';

function compilerReason(): string | undefined {
  const r = spawnSync(cxx, ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? undefined : `no C++ compiler (${cxx}): ${r.error?.message ?? r.stderr}`;
}

describe(`CUDA tensor-core matmul on the host emulation (seed ${testSeed})`, function () {
  this.timeout(240000);
  const reason = compilerReason();
  let dir = '';
  before(function () {
    if (reason) this.skip();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-emu-'));
  });
  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  for (const sanitizer of ['address,undefined', 'thread']) {
    it(`passes every check under -fsanitize=${sanitizer}`, function () {
      const exe = path.join(dir, `gemm_tc_emu_${sanitizer.replace(/,/g, '_')}`);
      const flags = ['-std=c++20', '-O1', '-g', '-fno-strict-aliasing', '-Wno-unknown-pragmas', '-pthread',
        `-fsanitize=${sanitizer}`, '-fno-sanitize-recover=all'];
      const build = spawnSync(cxx, [...flags, source, '-o', exe], { encoding: 'utf8' });
      if (build.status !== 0 && /lib[at]san|cannot find -l|unsupported/i.test(build.stderr)) {
        this.skip(); // the sanitizer runtime is not installed; the other build still runs
      }
      assert.strictEqual(build.status, 0, `compiling ${source} failed:\n${build.stderr}`);
      const run = spawnSync(exe, [String(testSeed)], {
        encoding: 'utf8',
        env: { ...process.env, TSAN_OPTIONS: 'halt_on_error=1', ASAN_OPTIONS: 'detect_leaks=0' },
      });
      const out = `${run.stdout}\n${run.stderr}`;
      assert.strictEqual(run.status, 0, `emulation failed (exit ${run.status}):\n${out.slice(-6000)}`);
      assert.doesNotMatch(out, /FAIL|Sanitizer/, out.slice(-6000));
      const summary = /(\d+) checks, 0 failed/.exec(run.stdout);
      assert.ok(summary && Number(summary[1]) >= 100, `expected the full battery of checks:\n${run.stdout.slice(-2000)}`);
    });
  }
});

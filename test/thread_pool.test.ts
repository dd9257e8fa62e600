// The CPU backend's thread pool (cpp/cpu/thread_pool.cc): a parallel job smaller than a wakeup is
// worth (kWakeWork, ~1M multiply-adds) runs on its caller while every worker sleeps, a large one
// wakes them; either way the bits are those of one thread (each output computed once, by one
// thread, in the same order).
import * as assert from 'assert';
import { matmul } from '../lib/layers';
import { native } from '../lib/native';
import { Tensor } from '../lib/tensor';
import { randomArray, rng, testSeed } from './helpers';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function poolCounts(): { jobs: number; smallInline: number } {
  const c = native().cpuInfo();
  return { jobs: c.poolJobs, smallInline: c.poolSmallInline };
}

describe('CPU thread pool: small jobs do not wake sleeping workers', function () {
  this.timeout(60_000);
  const r = rng(testSeed);
  const make = (N: number, K: number, M: number): { x: Tensor; w: Tensor } => ({
    x: Tensor.fromArray(randomArray(N * K, r), 'f32', [N, K]),
    w: Tensor.fromArray(randomArray(M * K, r), 'bf16', [M, K]),
  });

  before(function () {
    if (native().cpuInfo().threads < 2) this.skip();
  });

  it('a 0.4M multiply-add matmul after the workers went to sleep runs inline; a 16M one wakes them; the same bits either way', async () => {
    // 4 x 256 x 384: three pool tasks of >= 128k multiply-adds, under kWakeWork.
    const small = make(4, 256, 384);
    // 16 x 1024 x 1024: 16.8M multiply-adds.
    const big = make(16, 1024, 1024);
    try {
      const smallRef = matmul(small.x, small.w).toFloat32();
      let inline = false;
      // The workers sleep after ~100 us without work; on a loaded machine a worker may not even have
      // been scheduled yet, so the wait grows until one try saw them asleep.
      for (const ms of [20, 50, 100, 200, 400]) {
        await sleep(ms);
        const before = poolCounts();
        const out = matmul(small.x, small.w).toFloat32();
        const after = poolCounts();
        assert.deepStrictEqual(out, smallRef, 'the same bits inline and on the pool');
        if (after.smallInline > before.smallInline) {
          assert.strictEqual(after.jobs, before.jobs, 'the small job was not also handed to the workers');
          inline = true;
          break;
        }
      }
      assert.ok(inline, 'the small matmul ran inline in one of the tries (workers asleep)');

      await sleep(20);
      const before = poolCounts();
      const out = matmul(big.x, big.w);
      const after = poolCounts();
      assert.ok(after.jobs > before.jobs, `the 16M multiply-add matmul was handed to the workers (${JSON.stringify({ before, after })})`);
      assert.strictEqual(after.smallInline, before.smallInline);
      // One row alone (a job under kWakeWork: inline or on a spinning worker) gives the same bits.
      const row = big.x.rows(0, 1);
      const one = matmul(row, big.w).toFloat32();
      assert.deepStrictEqual(one, out.toFloat32().subarray(0, 1024));
      row.dispose();
      out.dispose();
    } finally {
      for (const t of [small.x, small.w, big.x, big.w]) t.dispose();
    }
  });
});

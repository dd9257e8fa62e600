// Plain (non-speculative) decode throughput of a ~100M-parameter random Llama model (bf16, hidden
// 768, 12 layers, vocab 32000, tied embeddings), batch 1 and batch 8: the baseline the speculative
// benches divide by (bench/speculative.bench.ts measures its own plain runs in the same process).
// The checkpoint is generated on the fly into a temp dir.
// Run: node dist/bench/plain_decode.bench.js [--device cpu|cuda|auto] [--quick]   (or specdec bench --only plain_decode)
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { cudaKernelProfile, transferCounters, type KernelProfile } from '../lib/transfers';
import { LLAMA_1B } from './memory.bench';
import { LLAMA_100M, median, round, standalone, tempDir, writeRandomLlama, type BenchModule, type BenchOptions, type BenchResult, type BenchRow, type RandomLlamaSpec } from './common';

const QUICK_MODEL: RandomLlamaSpec = { vocab: 512, hidden: 64, intermediate: 128, layers: 2, heads: 4, kvHeads: 2 };

export const plainDecodeBench: BenchModule = {
  name: 'plain_decode',
  description: 'plain greedy decoding tokens/s of a random ~100M Llama (bf16), batch 1 and 8',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const t0 = performance.now();
    // SPECDEC_BENCH_PLAIN_MODEL=1b: the random ~1B Llama, batch 1 only (scripts/gpu-check.sh's
    // graphs step measures a decode step of it with and without CUDA graphs).
    const big = !opts.quick && process.env['SPECDEC_BENCH_PLAIN_MODEL'] === '1b';
    const spec = opts.quick ? QUICK_MODEL : big ? LLAMA_1B : LLAMA_100M;
    const promptLen = opts.quick ? 8 : 32;
    const cases = opts.quick ? [{ batch: 1, newTokens: 4 }] : big ? [{ batch: 1, newTokens: 48 }] : [{ batch: 1, newTokens: 32 }, { batch: 8, newTokens: 16 }];
    const repeats = opts.quick ? 1 : 3;
    const tmp = tempDir('plain');
    try {
      opts.log(`plain_decode: writing a random ${spec.hidden}x${spec.layers} model`);
      const params = writeRandomLlama(tmp.dir, spec, 0x9e3779b9);
      const maxBatch = Math.max(...cases.map((c) => c.batch));
      const model = await LlamaModel.load(tmp.dir, { device: opts.device, maxSequences: maxBatch });
      const rows: BenchRow[] = [];
      const profiling = cudaKernelProfile().enabled;
      const profileNotes: string[] = [];
      try {
        for (const { batch, newTokens } of cases) {
          const prompts = Array.from({ length: batch }, (_, b) => Int32Array.from({ length: promptLen }, (_, i) => (i * 7919 + b * 104729) % spec.vocab));
          // Warm-up (allocator, thread pool, CUDA context), then the timed runs; the prefill is
          // part of every run, as it is of every speculative run.
          await plainGenerate(model, prompts, { maxNewTokens: 2, stopTokens: [] });
          const tps: number[] = [];
          const msStep: number[] = [];
          let forwards = 0;
          let lastForwards = 0;
          const c0 = transferCounters();
          for (let r = 0; r < repeats; r++) {
            opts.log(`plain_decode: batch ${batch}, run ${r + 1}/${repeats}`);
            // SPECDEC_CUDA_PROFILE=1: the last run's kernels are timed (the others' dropped).
            if (profiling && r === repeats - 1) cudaKernelProfile({ reset: true });
            const res = await plainGenerate(model, prompts, { maxNewTokens: newTokens, stopTokens: [] });
            lastForwards = res.stats.targetForwards;
            tps.push(res.stats.tokensPerSecond);
            msStep.push((1000 * res.stats.seconds) / res.stats.targetForwards);
            forwards += res.stats.targetForwards;
          }
          // Launches per forward (a CUDA graph launch counts one) and graphs replayed per forward.
          const c1 = transferCounters();
          const opsPerForward = (c1.deviceOps - c0.deviceOps) / forwards;
          const graphsPerForward = (c1.graphLaunches - c0.graphLaunches) / forwards;
          if (profiling) profileNotes.push(...profileLines(`batch ${batch}`, cudaKernelProfile({ reset: true }), lastForwards));
          rows.push({
            name: `batch ${batch}`,
            value: round(median(tps), 2),
            unit: 'tok/s',
            note: `${round(median(msStep), 3)} ms/step, ${round(opsPerForward, 1)} device ops/forward, ${round(graphsPerForward, 2)} graph launches/forward`,
            metrics: {
              batch, promptTokens: promptLen, newTokensPerSequence: newTokens, tokensPerSecond: median(tps), msPerStep: median(msStep), runs: tps,
              deviceOpsPerForward: opsPerForward, graphLaunchesPerForward: graphsPerForward, cudaGraphs: process.env['SPECDEC_CUDA_GRAPHS'] === '1',
            },
          });
        }
      } finally {
        model.dispose();
      }
      return {
        bench: 'plain_decode',
        device: opts.device,
        quick: opts.quick,
        setup: { model: { params, dtype: 'bf16', ...spec }, weights: 'random', decoding: 'greedy', repeats, cudaGraphs: process.env['SPECDEC_CUDA_GRAPHS'] === '1' },
        rows,
        notes: profileNotes,
        checks: {},
        seconds: (performance.now() - t0) / 1000,
      };
    } finally {
      tmp.remove();
    }
  },
};

/** The profile of one run as note lines: per step, the GPU's busy and idle time and the top kernels. */
function profileLines(label: string, p: KernelProfile, forwards: number): string[] {
  const f = Math.max(1, forwards);
  const lines = [
    `profile (${label}, SPECDEC_CUDA_PROFILE=1, per forward of the last run): span ${round(p.spanUs / f, 1)} us, kernels ${round(p.busyUs / f, 1)} us, idle ${round((p.spanUs - p.busyUs) / f, 1)} us, ${round(p.launches / f, 1)} launches${p.truncated ? ' (truncated)' : ''}`,
  ];
  for (const r of p.rows.slice(0, 12)) lines.push(`  ${round(r.totalUs / f, 1)} us  ${round(r.calls / f, 1)}x  ${r.name}`);
  return lines;
}

if (require.main === module) void standalone(plainDecodeBench);

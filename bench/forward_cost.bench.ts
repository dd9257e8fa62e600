// The cost curve of a target forward, c(k) for k new tokens over a committed context, on a random
// ~300M bf16 Llama (hidden 1024, 24 layers, vocab 32000): what a speculative tree of k nodes costs
// relative to a plain decode step (k = 1). Also the prefill of the context itself (512 tokens in
// one forward). The ratio c(16) / c(1) is what decides whether verification can pay on a device.
// Besides wall time, each row has the CPU time of the process per call (min over samples, all
// threads): on a machine shared with other processes that is the stabler figure, and with
// SPECDEC_CPU_THREADS=1 (no pool, no spinning) it is the work itself.
// The checkpoint is generated into a temp dir and removed afterwards.
// Run: node dist/bench/forward_cost.bench.js [--device cpu|cuda|auto] [--quick]   (or specdec bench --only forward_cost)
import { LlamaModel } from '../lib/models/llama';
import { cpuMs, measure, round, standalone, tempDir, writeRandomLlama, type BenchModule, type BenchOptions, type BenchResult, type BenchRow, type RandomLlamaSpec } from './common';

/** ~304M parameters: 24 x 11.3M per layer + a tied 32.8M embedding. */
export const LLAMA_300M: RandomLlamaSpec = { vocab: 32000, hidden: 1024, intermediate: 2816, layers: 24, heads: 16, kvHeads: 4, maxPositions: 1024 };
const QUICK_MODEL: RandomLlamaSpec = { vocab: 512, hidden: 64, intermediate: 128, layers: 2, heads: 4, kvHeads: 2, maxPositions: 128 };

export const forwardCostBench: BenchModule = {
  name: 'forward_cost',
  description: 'forward of k tokens over a 512-token context relative to k = 1 (random ~300M bf16 Llama), and the 512-token prefill',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const t0 = performance.now();
    const spec = opts.quick ? QUICK_MODEL : LLAMA_300M;
    const context = opts.quick ? 32 : 512;
    const widths = opts.quick ? [1, 4] : [1, 4, 8, 16, 64];
    const samples = opts.quick ? 2 : 5;
    const tmp = tempDir('fwdcost');
    try {
      opts.log(`forward_cost: writing a random ${spec.hidden}x${spec.layers} model`);
      const params = writeRandomLlama(tmp.dir, spec, 0x3005eed);
      // Every forward on the pool (as a big model's would be), one sequence.
      const model = await LlamaModel.load(tmp.dir, { device: opts.device, maxSequences: 1, syncForwardMaxMacs: 0 });
      const rows: BenchRow[] = [];
      try {
        const seq = model.createSequence();
        const prompt = Int32Array.from({ length: context }, (_, i) => (i * 7919 + 13) % spec.vocab);
        // Prefill: the whole context in one forward, from an empty sequence each time.
        opts.log(`forward_cost: prefill of ${context} tokens`);
        const prefillCall = async (): Promise<void> => {
          model.truncate(seq, 0);
          const r = await model.forward([{ seq, tokens: prompt }]);
          r.logits.dispose();
        };
        const prefill = await measure(prefillCall, { warmup: 1, samples: opts.quick ? 2 : 3 });
        const prefillCpu = await cpuMs(prefillCall, opts.quick ? 1 : 2);
        rows.push({
          name: `prefill ${context} tokens`,
          value: round(prefill.medianMs, 2),
          unit: 'ms',
          note: `${round((context * 1000) / prefill.medianMs, 1)} tok/s; CPU ${round(prefillCpu, 1)} ms`,
          metrics: { ...prefill, cpuMs: prefillCpu, tokens: context, tokensPerSecond: (context * 1000) / prefill.medianMs },
        });
        // The prefill as decoding runs it: logits of the last row only (ForwardOptions.lastLogitsOnly).
        const lastCall = async (): Promise<void> => {
          model.truncate(seq, 0);
          const r = await model.forward([{ seq, tokens: prompt }], { lastLogitsOnly: true });
          r.logits.dispose();
        };
        const prefillLast = await measure(lastCall, { warmup: 1, samples: opts.quick ? 2 : 3 });
        rows.push({
          name: `prefill ${context} tokens, last logits only`,
          value: round(prefillLast.medianMs, 2),
          unit: 'ms',
          note: `${round((context * 1000) / prefillLast.medianMs, 1)} tok/s; ${round(prefill.medianMs / prefillLast.medianMs, 2)}x the full prefill above`,
          metrics: { ...prefillLast, tokens: context, tokensPerSecond: (context * 1000) / prefillLast.medianMs, speedupOverFull: prefill.medianMs / prefillLast.medianMs },
        });
        // The context stays committed; each k-token forward is speculative (never committed), so
        // every sample sees the same context.
        const r0 = await model.forward([{ seq, tokens: prompt }]);
        r0.logits.dispose();
        model.commit([seq], [Int32Array.from({ length: context }, (_, i) => i)]);
        let oneMs = NaN;
        let oneCpu = NaN;
        for (const k of widths) {
          opts.log(`forward_cost: k = ${k}`);
          const tokens = Int32Array.from({ length: k }, (_, i) => (i * 31 + 5) % spec.vocab);
          const call = async (): Promise<void> => {
            const r = await model.forward([{ seq, tokens }]);
            r.logits.dispose();
          };
          const t = await measure(call, { warmup: 1, samples, calls: k === 1 ? 4 : 2 });
          const cpu = await cpuMs(call, samples);
          if (k === 1) {
            oneMs = t.medianMs;
            oneCpu = cpu;
          }
          const ratio = t.medianMs / oneMs;
          rows.push({
            name: `forward k=${k} over ${context}`,
            value: round(t.medianMs, 3),
            unit: 'ms',
            note: `${round(ratio, 2)}x k=1 (best ${round(t.minMs, 1)} ms); CPU ${round(cpu, 1)} ms = ${round(cpu / oneCpu, 2)}x k=1`,
            metrics: { ...t, k, context, relativeToOne: ratio, cpuMs: cpu, cpuRelativeToOne: cpu / oneCpu },
          });
        }
      } finally {
        model.dispose();
      }
      return {
        bench: 'forward_cost',
        device: opts.device,
        quick: opts.quick,
        setup: { model: { params, dtype: 'bf16', ...spec }, context, widths, weights: 'random', cpuSimd: process.env['SPECDEC_CPU_SIMD'] ?? 'auto', cpuThreads: process.env['SPECDEC_CPU_THREADS'] ?? 'all' },
        rows,
        notes: ['k-token forwards are chains over the committed context, never committed (each sample sees the same context)'],
        checks: {},
        seconds: (performance.now() - t0) / 1000,
      };
    } finally {
      tmp.remove();
    }
  },
};

if (require.main === module) void standalone(forwardCostBench);

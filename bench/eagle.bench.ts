// EAGLE heads on a random ~100M bf16 Llama (hidden 768, 12 layers, vocab 32000, untied LM head) whose
// blocks add nothing (o_proj, down_proj zero: the next token is a function of the last one), so that
// an "echo" head (bench/common.ts writeRandomEagle) predicts it exactly: the pipeline's ceiling --
// the draft's and the wide verification's costs against a perfect head -- beside a random head (the
// cost model should decode plainly) and plain decoding, alternating in one run. The target still
// costs a full forward (dense matmuls of zeros cost what any weights cost). Not a trained head:
// acceptance here says nothing about real EAGLE heads.
//
// Then the trained head: the embedded family's EAGLE head (models/default/eagle, trained by
// specdec's trainer) on its target widened K times and deepened to L layers with identity layers
// (bench/wide_family.ts: the same function, so every head keeps its acceptance, at the cost of a
// memory-bound ~75M target whose single-layer EAGLE head weighs what it weighs beside a deep
// model), against plain decoding, the draft model and the Medusa heads (runScenario of the
// speculative bench: runs bracketed by plain runs, median ratios).
// Run: node dist/bench/eagle.bench.js [--device cpu|cuda|auto] [--quick]   (or specdec bench --only eagle)
import * as fs from 'fs';
import * as path from 'path';

import { SpeculativeDecoder } from '../lib/decoder';
import { LlamaModel } from '../lib/models/llama';
import { EagleHead, EagleSpeculator, type EagleOptions } from '../lib/strategies/eagle';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { TextTokenizer } from '../lib/tokenizer';
import { DEFAULT_MODELS, DEFAULT_PROMPT, ENGINE_ONLY, runScenario, type Variant } from './speculative.bench';
import { widenFamily } from './wide_family';
import { LLAMA_100M, median, round, standalone, tempDir, writeRandomEagle, writeRandomEagle3, writeRandomLlama, type BenchModule, type BenchOptions, type BenchResult, type BenchRow, type RandomLlamaSpec } from './common';

/** The trained-head family: widened K times, the target deepened to L layers (SPECDEC_BENCH_EAGLE_FAMILY=K,L). */
const TRAINED_FAMILY = (process.env['SPECDEC_BENCH_EAGLE_FAMILY'] ?? '4,24').split(',').map(Number) as [number, number];

/** The embedded EAGLE head on the widened, deepened family against plain, draft and Medusa. */
async function trainedHead(opts: BenchOptions, checks: Record<string, boolean>, notes: string[]): Promise<BenchRow[]> {
  if (!fs.existsSync(path.join(DEFAULT_MODELS, 'eagle', 'config.json'))) {
    notes.push(`no embedded EAGLE head at ${DEFAULT_MODELS}/eagle: the trained-head scenario was skipped`);
    return [];
  }
  const [K, L] = opts.quick ? [2, 6] : TRAINED_FAMILY;
  const tmp = tempDir('eagle-family');
  const owned: { dispose(): void }[] = [];
  try {
    opts.log(`eagle: widening the embedded family ${K}x, target deepened to ${L} layers`);
    const dirs = widenFamily(DEFAULT_MODELS, tmp.dir, K, { targetLayers: L });
    const target = await LlamaModel.load(dirs.target!, { device: opts.device, maxSequences: 2 });
    owned.push(target);
    const draft = await LlamaModel.load(dirs.draft!, { device: opts.device, maxSequences: 2 });
    owned.push(draft);
    const heads = MedusaHeads.load(dirs.medusa!, { device: target.device });
    owned.push(heads);
    const head = EagleHead.load(dirs.eagle!, { device: target.device });
    owned.push(head);
    const head3 = dirs.eagle3 ? EagleHead.load(dirs.eagle3, { device: target.device }) : undefined;
    if (head3) owned.push(head3);
    const tok = TextTokenizer.load(path.join(DEFAULT_MODELS, 'target'));
    if (!tok) throw new Error(`eagle: no tokenizer in ${DEFAULT_MODELS}/target`);
    const variants: Variant[] = [
      ENGINE_ONLY,
      { name: 'draft model, cost model', setup: { k: 'cost' }, make: () => new DraftModelSpeculator({ draft }) },
      { name: 'medusa, cost model', setup: { choices: 'sized mc_sim_7b_63' }, make: () => new MedusaSpeculator({ heads }) },
      { name: 'eagle, cost model', setup: { topK: 8, depth: 5, totalTokens: 'cost' }, make: () => new EagleSpeculator({ head }) },
      { name: 'eagle, fixed chain 1,4,5', setup: { topK: 1, depth: 4, totalTokens: 5 }, make: () => new EagleSpeculator({ head, topK: 1, depth: 4, totalTokens: 5 }) },
      { name: 'eagle, fixed 4,4,12', setup: { topK: 4, depth: 4, totalTokens: 12 }, make: () => new EagleSpeculator({ head, topK: 4, depth: 4, totalTokens: 12 }) },
      { name: 'eagle, EAGLE-2 fixed 8,5,59', setup: { topK: 8, depth: 5, totalTokens: 59 }, make: () => new EagleSpeculator({ head, topK: 8, depth: 5, totalTokens: 59 }) },
    ];
    // The embedded EAGLE-3 head (training-time test: its deeper steps agree with the target as often as its first).
    if (head3) {
      variants.push(
        { name: 'eagle-3, cost model', setup: { topK: 8, depth: 5, totalTokens: 'cost' }, make: () => new EagleSpeculator({ head: head3 }) },
        { name: 'eagle-3, fixed chain 1,4,5', setup: { topK: 1, depth: 4, totalTokens: 5 }, make: () => new EagleSpeculator({ head: head3, topK: 1, depth: 4, totalTokens: 5 }) },
        { name: 'eagle-3, fixed chain 1,6,7', setup: { topK: 1, depth: 6, totalTokens: 7 }, make: () => new EagleSpeculator({ head: head3, topK: 1, depth: 6, totalTokens: 7 }) },
        { name: 'eagle, fixed chain 1,6,7', setup: { topK: 1, depth: 6, totalTokens: 7 }, make: () => new EagleSpeculator({ head, topK: 1, depth: 6, totalTokens: 7 }) },
      );
    }
    notes.push(`trained heads: models/default/eagle (and eagle3, EAGLE-3) on the embedded target widened ${K}x and deepened to ${L} layers (identity layers appended: the same function); draft and Medusa heads widened alike`);
    return await runScenario(
      { name: `trained head, widened ${K}x, ${L} layers`, target, prompt: tok.encode(DEFAULT_PROMPT), promptDescription: JSON.stringify(DEFAULT_PROMPT), newTokens: opts.quick ? 8 : 64, variants },
      opts.quick ? 1 : 3,
      opts,
      checks,
    );
  } finally {
    for (const o of owned.reverse()) o.dispose();
    tmp.remove();
  }
}

// Eight layers: EAGLE-3 reads the inputs of layers 2, L / 2 and L - 3, which must differ (L >= 7).
const QUICK_MODEL: RandomLlamaSpec = { vocab: 512, hidden: 64, intermediate: 128, layers: 8, heads: 4, kvHeads: 2 };

export const eagleBench: BenchModule = {
  name: 'eagle',
  description: 'EAGLE-2 trees over plain decoding: a perfect (echo) head and a random one on a random ~100M Llama; the embedded trained head on its family widened and deepened, beside draft and Medusa',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const t0 = performance.now();
    const spec = opts.quick ? QUICK_MODEL : LLAMA_100M;
    const promptLen = opts.quick ? 8 : 32;
    const newTokens = opts.quick ? 8 : 96;
    const repeats = opts.quick ? 1 : 3;
    const tmp = tempDir('eagle');
    const rows: BenchRow[] = [];
    const checks: Record<string, boolean> = {};
    try {
      opts.log(`eagle: writing a random ${spec.hidden}x${spec.layers} model and two heads`);
      const params = writeRandomLlama(path.join(tmp.dir, 'target'), spec, 0x51f15e, { zeroBlockOutputs: true, untied: true });
      writeRandomEagle(path.join(tmp.dir, 'echo'), spec, 7, true);
      writeRandomEagle(path.join(tmp.dir, 'random'), spec, 7, false);
      // EAGLE-3's draft vocabulary: the draft's LM head reads 1/8 of the target's.
      const draftVocab = Math.max(16, Math.floor(spec.vocab / 8));
      writeRandomEagle3(path.join(tmp.dir, 'eagle3'), spec, 7, draftVocab);
      const target = await LlamaModel.load(path.join(tmp.dir, 'target'), { device: opts.device, maxSequences: 1 });
      const echo = EagleHead.load(path.join(tmp.dir, 'echo'), { device: opts.device });
      const random = EagleHead.load(path.join(tmp.dir, 'random'), { device: opts.device });
      const eagle3 = EagleHead.load(path.join(tmp.dir, 'eagle3'), { device: opts.device });
      try {
        const prompt = Int32Array.from({ length: promptLen }, (_, i) => (i * 7919 + 13) % spec.vocab);
        const cases: { name: string; make?: () => EagleSpeculator }[] = [
          { name: 'plain' },
          { name: 'echo head, sized', make: () => new EagleSpeculator({ head: echo }) },
          { name: 'echo head, fixed 8,5,59', make: () => new EagleSpeculator({ head: echo, topK: 8, depth: 5, totalTokens: 59 }) },
          { name: 'random head, sized', make: () => new EagleSpeculator({ head: random }) },
          // The draft's cost of a fixed 5-deep chain: the full vocabulary against EAGLE-3's draft vocabulary.
          { name: 'random head, fixed chain 1,4,5', make: () => new EagleSpeculator({ head: random, topK: 1, depth: 4, totalTokens: 5 }) },
          { name: `random EAGLE-3 head (draft vocabulary ${draftVocab}), fixed chain 1,4,5`, make: () => new EagleSpeculator({ head: eagle3, topK: 1, depth: 4, totalTokens: 5 }) },
        ];
        const tps = new Map<string, number[]>();
        const tau = new Map<string, number[]>();
        const draftMs = new Map<string, number[]>();
        const targetMs = new Map<string, number[]>();
        let plainTokens: number[] | undefined;
        for (let r = 0; r < repeats + 1; r++) {
          for (const c of cases) {
            const speculator = c.make?.();
            try {
              const dec = new SpeculativeDecoder({ target, ...(speculator ? { speculator } : {}) });
              // Run 0 warms up (the cost model's calibration, allocators) and is not counted.
              const res = (await dec.generateBatch([prompt], { maxNewTokens: newTokens }))[0]!;
              if (c.name === 'plain') plainTokens ??= Array.from(res.tokens);
              else checks[`${c.name}: output == plain`] = (checks[`${c.name}: output == plain`] ?? true) && JSON.stringify(Array.from(res.tokens)) === JSON.stringify(plainTokens);
              if (r > 0) {
                opts.log(`eagle: ${c.name}, run ${r}/${repeats}: ${round(res.stats.tokensPerSecond, 1)} tok/s, tau ${round(res.stats.tokensPerForward, 2)}`);
                tps.set(c.name, [...(tps.get(c.name) ?? []), res.stats.tokensPerSecond]);
                tau.set(c.name, [...(tau.get(c.name) ?? []), res.stats.tokensPerForward]);
                const steps = Math.max(1, res.stats.targetForwards - 1);
                draftMs.set(c.name, [...(draftMs.get(c.name) ?? []), (1000 * (res.stats.phases.draft + res.stats.phases.update)) / steps]);
                targetMs.set(c.name, [...(targetMs.get(c.name) ?? []), (1000 * res.stats.phases.target) / steps]);
              }
            } finally {
              speculator?.dispose();
            }
          }
        }
        const plain = median(tps.get('plain') ?? [NaN]);
        for (const c of cases) {
          const v = median(tps.get(c.name) ?? [NaN]);
          const t = median(tau.get(c.name) ?? [NaN]);
          rows.push({
            name: c.name,
            value: round(v, 2),
            unit: 'tok/s',
            note: c.name === 'plain' ? 'the baseline' : `x${round(v / plain, 2)} vs plain, tau ${round(t, 2)}, draft ${round(median(draftMs.get(c.name) ?? [NaN]), 2)} ms + target ${round(median(targetMs.get(c.name) ?? [NaN]), 2)} ms a step`,
            metrics: { tokensPerSecond: v, overPlain: v / plain, tokensPerForward: t, runs: tps.get(c.name), draftAndUpdateMsPerStep: draftMs.get(c.name), targetForwardMsPerStep: targetMs.get(c.name) },
          });
        }
      } finally {
        echo.dispose();
        random.dispose();
        eagle3.dispose();
        target.dispose();
      }
      const notes = ['The echo head is perfect by construction (the ceiling of the pipeline on this device); the random head shows what the cost model does with a useless one. Neither is a trained EAGLE head.'];
      rows.push(...(await trainedHead(opts, checks, notes)));
      return {
        bench: 'eagle',
        device: opts.device,
        quick: opts.quick,
        setup: { model: { params, dtype: 'bf16', ...spec, blocks: 'o_proj and down_proj zero', lmHead: 'untied' }, promptTokens: promptLen, newTokens, repeats, decoding: 'greedy, batch 1' },
        rows,
        notes,
        checks,
        seconds: (performance.now() - t0) / 1000,
      };
    } finally {
      tmp.remove();
    }
  },
};

if (require.main === module) void standalone(eagleBench);

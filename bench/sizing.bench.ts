// Hardware-aware tree sizing before and after, on the embedded family and on the same family
// widened K times (bench/wide_family.ts: a memory-bound target that computes the same function,
// with its draft, Medusa and EAGLE heads widened alike). Per family, plain decoding against each
// strategy twice: with the settings the CLI used before the cost model (draft k = 4, the 63-node
// Medusa tree, lookahead W=7 N=4 G=7, prompt lookup of 10 drafts; EAGLE-2's own 8,5,59) and with
// today's defaults (sized per step by the cost model; lookahead's W, N, G and prompt lookup's
// n-gram length as before).
// Both families run a sampled pass too (T 0.8): "before" there is also what a sampled run used until
// deterministic drafts were sized when sampling (the fixed shapes; a draft model's k as it was).
// Runs are bracketed by plain runs as in the speculative bench (its runScenario). A last pass pins
// a linear cost curve on the embedded target (c(n) = n c(1): no tree can pay), so every sized
// strategy decodes plainly: its ratio to the decoder without a speculator is what deciding costs.
// Run: node dist/bench/sizing.bench.js [--quick]   (or specdec bench --only sizing)
import * as fs from 'fs';
import * as path from 'path';
import { ForwardCost, forwardCost, setForwardCost } from '../lib/cost_model';
import type { DecoderSampling } from '../lib/decoder';
import type { CausalLM } from '../lib/models/causal_lm';
import { LlamaModel } from '../lib/models/llama';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import { TextTokenizer } from '../lib/tokenizer';
import { standalone, tempDir, type BenchModule, type BenchOptions, type BenchResult, type BenchRow } from './common';
import { DEFAULT_MODELS, DEFAULT_PROMPT, ENGINE_ONLY, runScenario, type Variant } from './speculative.bench';
import { widenFamily } from './wide_family';

/** Widening factor of the memory-bound family (0.87M -> 51M target at 8). */
const WIDEN = Number(process.env['SPECDEC_BENCH_WIDEN'] ?? 8);
const LOOKAHEAD: [number, number, number] = [7, 4, 7];
/** The sampled passes' settings. */
const SAMPLING: DecoderSampling = { temperature: 0.8, seed: 1 };

function variants(draft: CausalLM, heads: MedusaHeads, eagle: EagleHead | undefined): Variant[] {
  const [W, N, G] = LOOKAHEAD;
  const eagleVariants: Variant[] = eagle
    ? [
        { name: 'eagle, EAGLE-2 fixed (8,5,59)', setup: { topK: 8, depth: 5, totalTokens: 59 }, make: () => new EagleSpeculator({ head: eagle, topK: 8, depth: 5, totalTokens: 59 }) },
        { name: 'eagle, cost model', setup: { topK: 8, depth: 5, totalTokens: 'cost' }, make: () => new EagleSpeculator({ head: eagle }) },
      ]
    : [];
  return [
    // The engine's own per-step cost: what every sized strategy pays on a step it decodes plainly.
    ENGINE_ONLY,
    { name: 'draft model, before (k=4)', setup: { k: 4 }, make: () => new DraftModelSpeculator({ draft, k: 4 }) },
    { name: 'draft model, cost model', setup: { k: 'cost' }, make: () => new DraftModelSpeculator({ draft }) },
    { name: 'medusa, before (mc_sim_7b_63)', setup: { choices: 'mc_sim_7b_63' }, make: () => new MedusaSpeculator({ heads, choices: 'mc_sim_7b_63' }) },
    { name: 'medusa, cost model', setup: { choices: 'sized mc_sim_7b_63' }, make: () => new MedusaSpeculator({ heads }) },
    { name: `lookahead ${W},${N},${G}, before (fixed)`, setup: { W, N, G, sizing: 'fixed' }, make: () => new LookaheadSpeculator({ W, N, G, sizing: 'fixed' }) },
    { name: `lookahead ${W},${N},${G}, cost model`, setup: { W, N, G, sizing: 'cost' }, make: () => new LookaheadSpeculator({ W, N, G }) },
    { name: 'prompt lookup 3, before (10 drafts)', setup: { maxNgram: 3, numDraft: 10 }, make: () => new PromptLookupSpeculator({ maxNgram: 3, minNgram: 1, numDraft: 10 }) },
    { name: 'prompt lookup 3, cost model', setup: { maxNgram: 3, numDraft: 'cost' }, make: () => new PromptLookupSpeculator({ maxNgram: 3, minNgram: 1 }) },
    ...eagleVariants,
  ];
}

/** The sized strategies only (and the engine alone): the pass where nothing pays. */
function sizedOnly(all: Variant[]): Variant[] {
  return all.filter((v) => v === ENGINE_ONLY || v.name.endsWith('cost model'));
}

async function family(
  name: string,
  dir: string,
  newTokens: number,
  rounds: number,
  opts: BenchOptions,
  checks: Record<string, boolean>,
  nothingPays = false,
  sampling?: DecoderSampling,
): Promise<BenchRow[]> {
  const owned: { dispose(): void }[] = [];
  try {
    const load = async (d: string): Promise<LlamaModel> => {
      const m = await LlamaModel.load(d, { device: opts.device, maxSequences: 2 });
      owned.push(m);
      return m;
    };
    const target = await load(path.join(dir, 'target'));
    const draft = await load(path.join(dir, 'draft'));
    const heads = MedusaHeads.load(path.join(dir, 'medusa'), { device: target.device });
    owned.push(heads);
    // The EAGLE head (models/default/eagle) when the family has one.
    const eagle = fs.existsSync(path.join(dir, 'eagle', 'config.json')) ? EagleHead.load(path.join(dir, 'eagle'), { device: target.device }) : undefined;
    if (eagle) owned.push(eagle);
    const tok = TextTokenizer.load(path.join(DEFAULT_MODELS, 'target'));
    if (!tok) throw new Error(`sizing: no tokenizer in ${DEFAULT_MODELS}/target`);
    const prompt = tok.encode(DEFAULT_PROMPT);
    let vs = variants(draft, heads, eagle);
    if (nothingPays) {
      // c(n) = n c(1), with c(1) as measured: any tree costs as many plain steps as it has nodes.
      const c1 = (await forwardCost(target)).predict(1);
      setForwardCost(target, ForwardCost.fromFunction((n) => n * c1, { frozen: true }));
      vs = sizedOnly(vs);
    }
    // Sampled: a draft model samples its drafts (its tokens are not plain sampling's; no token check).
    if (sampling) vs = vs.map((v) => (v.name.startsWith('draft model') ? { ...v, sampledDrafts: true } : v));
    const rows = await runScenario({ name, target, prompt, promptDescription: JSON.stringify(DEFAULT_PROMPT), newTokens, variants: vs, ...(sampling ? { sampling } : {}) }, rounds, opts, checks);
    return rows;
  } finally {
    for (const o of owned.reverse()) o.dispose();
  }
}

export const sizingBench: BenchModule = {
  name: 'sizing',
  description: `tree sizing by the cost model vs the former fixed settings: every strategy against plain decoding on the embedded family and on it widened ${WIDEN}x (memory-bound)`,
  async run(opts: BenchOptions): Promise<BenchResult> {
    const t0 = performance.now();
    const checks: Record<string, boolean> = {};
    const notes: string[] = [];
    const rows: BenchRow[] = [];
    if (!fs.existsSync(path.join(DEFAULT_MODELS, 'target', 'config.json'))) {
      notes.push(`no embedded family at ${DEFAULT_MODELS}: skipped`);
    } else {
      const K = opts.quick ? 2 : WIDEN;
      rows.push(...(await family('embedded', DEFAULT_MODELS, opts.quick ? 16 : 128, opts.quick ? 1 : 3, opts, checks)));
      const tmp = tempDir('wide');
      try {
        opts.log(`sizing: widening the embedded family ${K}x`);
        widenFamily(DEFAULT_MODELS, tmp.dir, K);
        rows.push(...(await family(`widened ${K}x`, tmp.dir, opts.quick ? 8 : 64, opts.quick ? 1 : 3, opts, checks)));
        if (!opts.quick) rows.push(...(await family(`widened ${K}x, sampled (T ${SAMPLING.temperature})`, tmp.dir, 64, 3, opts, checks, false, SAMPLING)));
      } finally {
        tmp.remove();
      }
      notes.push(`widened ${K}x: hidden, heads, KV heads and MLP tiled ${K} times, weights reading a tiled vector divided by ${K} (the same function, ${K * K}x the matmul weights)`);
      rows.push(...(await family(`embedded, sampled (T ${SAMPLING.temperature})`, DEFAULT_MODELS, opts.quick ? 16 : 128, opts.quick ? 1 : 3, opts, checks, false, SAMPLING)));
      notes.push(`sampled (T ${SAMPLING.temperature}, seed ${SAMPLING.seed}): plain decoding samples with the same settings (plainGenerate); deterministic drafts (Medusa, lookahead, prompt lookup, EAGLE) must give the tokens of the decoder without a speculator, a draft model's sampled drafts are not checked`);
      rows.push(...(await family('embedded, nothing pays', DEFAULT_MODELS, opts.quick ? 16 : 128, opts.quick ? 1 : 5, opts, checks, true)));
      notes.push('embedded, nothing pays: a linear cost curve (c(n) = n c(1), c(1) measured) pinned on the target, so the sized strategies decode plainly; their ratios against the decoder without a speculator are the cost of deciding so');
    }
    return {
      bench: 'sizing',
      device: opts.device,
      quick: opts.quick,
      setup: { decoding: 'greedy', widen: opts.quick ? 2 : WIDEN, lookahead: LOOKAHEAD, method: 'runScenario of the speculative bench: each run bracketed by plain runs, median ratio over rounds' },
      rows,
      notes,
      checks,
      seconds: (performance.now() - t0) / 1000,
    };
  },
};

if (require.main === module) void standalone(sizingBench);

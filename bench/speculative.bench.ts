// End-to-end speculative vs plain greedy decoding on the SAME target in one process: tokens/s of
// plain decoding and of each strategy (draft model, Medusa, lookahead, prompt lookup), the speedup,
// tokens per target forward (tau), acceptance rate, per-phase times, and a losslessness check
// (speculative tokens == plain tokens, recorded per run; a mismatch fails `specdec bench`).
//
// Noise control on a shared machine: in every round each strategy's run is bracketed by plain runs
// (plain, s1, plain, s2, plain, ...; the strategy order rotates per round), and its speedup is its
// tokens/s over the mean of the two neighbouring plain runs; the reported speedup is the median
// over rounds. tokens/s counts the prefill, as plainGenerate's and the decoder's stats do; the
// decode-only speedup leaves the prompt's forward out on both sides.
//
// Scenarios:
//  - default/*: the embedded default family (models/default/{target,draft,medusa}) when present,
//    on a prompt in its corpus style and on a repeated passage.
//  - random-100m/*: a random ~100M target with (a) a random ~10M draft (acceptance near 0: what an
//    unrelated draft costs), (b) the target as its own draft (acceptance 1: the upper bound on tau;
//    the draft costs as much as the target, so this measures overhead, speedup < 1 by design),
//    (c) random Medusa heads, (d) lookahead, (e) prompt lookup; and a repeated-passage prompt.
//  - In both families, 'decoder, no speculator' (the engine proposing only the root) measures the
//    decoder's own overhead over plainGenerate.
// Run: node dist/bench/speculative.bench.js [--device cpu|cuda|auto] [--quick]   (or specdec bench --only speculative)
import * as fs from 'fs';
import * as path from 'path';
import { SpeculativeDecoder, type DecodeStats, type DecoderSampling } from '../lib/decoder';
import type { CausalLM } from '../lib/models/causal_lm';
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { argmax } from '../lib/sampling';
import { verify } from '../lib/verify';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import type { Device } from '../lib/tensor';
import { TextTokenizer } from '../lib/tokenizer';
import {
  LLAMA_100M,
  measure,
  median,
  round,
  standalone,
  tempDir,
  writeRandomLlama,
  writeRandomMedusa,
  xorshift,
  type BenchModule,
  type BenchOptions,
  type BenchResult,
  type BenchRow,
  type RandomLlamaSpec,
} from './common';

/**
 * Where the embedded default family lives (source tree and package alike: dist/bench/../../models);
 * SPECDEC_BENCH_DEFAULT_MODELS points elsewhere (e.g. a freshly trained family).
 */
export const DEFAULT_MODELS = process.env['SPECDEC_BENCH_DEFAULT_MODELS'] ?? path.resolve(__dirname, '..', '..', 'models', 'default');

const RANDOM_DRAFT: RandomLlamaSpec = { vocab: 32000, hidden: 256, intermediate: 512, layers: 2, heads: 4, kvHeads: 2 };
const QUICK_TARGET: RandomLlamaSpec = { vocab: 512, hidden: 64, intermediate: 128, layers: 2, heads: 4, kvHeads: 2 };
const QUICK_DRAFT: RandomLlamaSpec = { vocab: 512, hidden: 32, intermediate: 64, layers: 1, heads: 2, kvHeads: 1 };

/** A strategy to compare with plain decoding; `make` runs once per scenario. */
export interface Variant {
  readonly name: string;
  readonly setup: Record<string, unknown>;
  /** undefined: the decoder without a speculator (its per-step overhead over plainGenerate). */
  readonly make: () => Speculator | undefined;
  /**
   * Sampled scenarios: the variant samples its drafts (a draft model), so its tokens follow the
   * target's distribution without being plain sampling's (no token check). Deterministic drafts
   * give plain sampling's tokens (checked against the decoder without a speculator).
   */
  readonly sampledDrafts?: boolean;
}

/** SpeculativeDecoder with no speculator: one token per step through the speculative engine. */
export const ENGINE_ONLY: Variant = { name: 'decoder, no speculator', setup: { speculator: null }, make: () => undefined };

export interface Scenario {
  readonly name: string;
  readonly target: CausalLM;
  readonly prompt: Int32Array;
  readonly promptDescription: string;
  readonly newTokens: number;
  readonly variants: readonly Variant[];
  /** Sampled decoding (plain decoding samples with the same settings); omitted: greedy. */
  readonly sampling?: DecoderSampling;
}

interface Run {
  readonly tokens: Int32Array;
  readonly tokensPerSecond: number;
  readonly seconds: number;
  readonly stats?: DecodeStats;
}

function sameTokens(a: Int32Array, b: Int32Array): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

/** Runs one scenario: warm-up, then `rounds` rounds of plain-bracketed strategy runs. */
export async function runScenario(sc: Scenario, roundsWanted: number, opts: BenchOptions, checks: Record<string, boolean>): Promise<BenchRow[]> {
  let rounds = roundsWanted;
  const decoders = sc.variants.map((v) => {
    const speculator = v.make();
    return { v, dec: new SpeculativeDecoder({ target: sc.target, ...(speculator ? { speculator } : {}), ...(sc.sampling ? { sampling: sc.sampling } : {}) }) };
  });
  const sampled = sc.sampling ? { temperature: sc.sampling.temperature, topK: sc.sampling.topK ?? 0, topP: sc.sampling.topP ?? 1, seed: Number(sc.sampling.seed ?? 0) } : {};
  try {
    const plain = async (n: number): Promise<Run> => {
      const r = await plainGenerate(sc.target, [sc.prompt], { maxNewTokens: n, ...sampled });
      return { tokens: r.tokens[0] as Int32Array, tokensPerSecond: r.stats.tokensPerSecond, seconds: r.stats.seconds };
    };
    const spec = async (dec: SpeculativeDecoder, n: number): Promise<Run> => {
      const [r] = await dec.generateBatch([sc.prompt], { maxNewTokens: n });
      if (!r) throw new Error('internal: no result');
      return { tokens: r.tokens, tokensPerSecond: r.stats.tokensPerSecond, seconds: r.stats.seconds, stats: r.stats };
    };
    // Warm-up: first-call costs (allocations, page faults of the weights, JIT) out of the timings.
    opts.log(`speculative ${sc.name}: warm-up`);
    await plain(4);
    for (const { dec } of decoders) await spec(dec, 4);

    // The prompt's forward alone (plain decoding of one token): subtracted to get decode-only rates.
    const prefillMs: number[] = [];
    const plainRuns: Run[] = [];
    // Runs of a tiny model take tens of ms, where a shared machine's jitter is as large as the
    // effect: more rounds there (the median needs them), the requested count otherwise.
    const probe = await plain(sc.newTokens);
    if (!opts.quick && probe.seconds < 0.3) rounds = Math.max(rounds, 9);
    // SPECDEC_BENCH_ROUNDS=n: exactly n rounds (a time-boxed GPU step; fewer rounds, wider medians).
    const fixed = Number(process.env['SPECDEC_BENCH_ROUNDS']);
    if (Number.isInteger(fixed) && fixed > 0) rounds = fixed;
    const perVariant = new Map<string, { runs: Run[]; ratios: number[]; plainAround: number[] }>(sc.variants.map((v) => [v.name, { runs: [], ratios: [], plainAround: [] }]));
    for (let r = 0; r < rounds; r++) {
      prefillMs.push((await plain(1)).seconds * 1000);
      let before = await plain(sc.newTokens);
      plainRuns.push(before);
      for (let k = 0; k < decoders.length; k++) {
        const { v, dec } = decoders[(k + r) % decoders.length] as (typeof decoders)[number];
        opts.log(`speculative ${sc.name}: round ${r + 1}/${rounds}, ${v.name}`);
        const run = await spec(dec, sc.newTokens);
        const after = await plain(sc.newTokens);
        plainRuns.push(after);
        const around = (before.tokensPerSecond + after.tokensPerSecond) / 2;
        const acc = perVariant.get(v.name) as { runs: Run[]; ratios: number[]; plainAround: number[] };
        acc.runs.push(run);
        acc.ratios.push(run.tokensPerSecond / around);
        acc.plainAround.push(around);
        before = after;
      }
    }

    // Sampled: plain sampling's tokens are the decoder's without a speculator (plainGenerate draws
    // its own stream: the same distribution, other tokens).
    const plainReference = (plainRuns[0] as Run).tokens;
    checks[`${sc.name}: plain decoding is deterministic`] = plainRuns.every((p) => sameTokens(p.tokens, plainReference));
    const engineRuns = perVariant.get(ENGINE_ONLY.name)?.runs;
    const reference = sc.sampling ? engineRuns?.[0]?.tokens : plainReference;
    const rows: BenchRow[] = [];
    const plainTps = median(plainRuns.map((p) => p.tokensPerSecond));
    const plainPrefill = median(prefillMs);
    // Tokens/s after the first token (the prefill yields it), for plain and a speculative run.
    const decodeRate = (n: number, seconds: number, prefill: number): number => (n > 1 && seconds > prefill ? (n - 1) / (seconds - prefill) : NaN);
    const plainDecodeTps = median(plainRuns.map((p) => decodeRate(p.tokens.length, p.seconds, plainPrefill / 1000)));
    rows.push({
      name: `${sc.name}: plain`,
      value: round(plainTps, 2),
      unit: 'tok/s',
      note: `${plainReference.length} tokens, ${round(1000 / plainTps, 1)} ms/token`,
      metrics: {
        rounds,
        tokensPerSecond: plainTps,
        decodeTokensPerSecond: plainDecodeTps,
        prefillMs: plainPrefill,
        runs: plainRuns.map((p) => round(p.tokensPerSecond, 3)),
        newTokens: plainReference.length,
        prompt: sc.promptDescription,
        promptTokens: sc.prompt.length,
      },
    });
    for (const v of sc.variants) {
      const acc = perVariant.get(v.name) as { runs: Run[]; ratios: number[]; plainAround: number[] };
      const lossless = reference === undefined || (sc.sampling && v.sampledDrafts) ? true : acc.runs.every((run) => sameTokens(run.tokens, reference));
      if (reference && !(sc.sampling && v.sampledDrafts)) checks[`${sc.name}: ${v.name} output == plain output`] = lossless;
      const speedup = median(acc.ratios);
      const tps = median(acc.runs.map((x) => x.tokensPerSecond));
      // Greedy runs are deterministic: tau and acceptance are the same every round; phases from the
      // run whose speedup is the median one.
      const mid = acc.ratios.indexOf([...acc.ratios].sort((a, b) => a - b)[(acc.ratios.length - 1) >> 1] as number);
      const st = (acc.runs[mid] as Run).stats as DecodeStats;
      const steps = Math.max(1, st.targetForwards - 1);
      const decodeTps = median(acc.runs.map((x) => decodeRate(x.tokens.length, x.seconds, ((x.stats as DecodeStats).phases.prefill))));
      const phaseMsPerStep = Object.fromEntries(
        Object.entries(st.phases).map(([k, s]) => [k, k === 'prefill' ? round(s * 1000, 2) : round((s * 1000) / steps, 3)]),
      );
      rows.push({
        name: `${sc.name}: ${v.name}`,
        value: round(speedup, 3),
        unit: 'x plain',
        note: `${round(tps, 1)} tok/s, decode-only x${round(decodeTps / plainDecodeTps, 2)}, tau ${round(st.tokensPerForward, 2)}, accept ${round(100 * st.acceptanceRate, 1)}%, ${round((st.transfers.deviceOps ?? 0) / st.targetForwards, 0)} device ops and ${round(st.transfers.blockingWaits / st.targetForwards, 2)} waits per step${lossless ? '' : ', OUTPUT != PLAIN'}`,
        metrics: {
          strategy: v.name,
          ...v.setup,
          speedupVsPlain: speedup,
          speedupPerRound: acc.ratios.map((x) => round(x, 4)),
          tokensPerSecond: tps,
          /** Without the prompt's forward on either side (plain: its median prefill time). */
          decodeSpeedupVsPlain: decodeTps / plainDecodeTps,
          decodeTokensPerSecond: decodeTps,
          plainTokensPerSecondAround: acc.plainAround.map((x) => round(x, 3)),
          tokensPerForward: st.tokensPerForward,
          targetForwards: st.targetForwards,
          newTokens: st.newTokens,
          acceptanceRate: st.acceptanceRate,
          proposedDraftTokens: st.proposedDraftTokens,
          acceptedDraftTokens: st.acceptedDraftTokens,
          acceptedPerPosition: st.acceptedPerPosition,
          proposedPerPosition: st.proposedPerPosition,
          /** Nodes verified per step -> steps (the sizes a cost-model speculator chose). */
          nodesPerStep: st.nodesPerStep,
          /** prefill: ms for the whole prompt; the others: ms per speculative step. */
          phaseMs: phaseMsPerStep,
          /**
           * Per target forward (the prefill's included): device ops (kernel launches on CUDA),
           * blocking waits, uploads, calls into the addon, CUDA graph launches; host ms per step = the step's wall time less the
           * prefill, per step (on the CPU all of it is host time; on CUDA, what the host spends
           * between a step's first launch and its result).
           */
          perStep: {
            deviceOps: round((st.transfers.deviceOps ?? 0) / st.targetForwards, 1),
            blockingWaits: round(st.transfers.blockingWaits / st.targetForwards, 2),
            uploads: round(st.transfers.uploads / st.targetForwards, 2),
            napiCalls: round(st.transfers.napiCalls / st.targetForwards, 1),
            graphLaunches: round((st.transfers.graphLaunches ?? 0) / st.targetForwards, 2),
            hostMs: round(((st.seconds - st.phases.prefill) * 1000) / steps, 3),
          },
          seconds: st.seconds,
          lossless,
        },
      });
    }
    return rows;
  } finally {
    for (const { dec } of decoders) dec.dispose();
  }
}

/** Prompt ids of a text through the model's tokenizer (target dir, then the family dir). */
function tokenizerFor(dirs: readonly string[]): TextTokenizer | undefined {
  for (const d of dirs) {
    const t = TextTokenizer.load(d);
    if (t) return t;
  }
  return undefined;
}

/** The strategies' settings per device: wide trees only pay off where a wide forward is cheap. */
function strategySettings(device: Device, wideTree: boolean): { medusa: string; lookahead: [number, number, number]; pld: number; k: number } {
  if (device === 'cuda') return { medusa: 'mc_sim_7b_63', lookahead: [7, 4, 7], pld: 10, k: 4 };
  return { medusa: wideTree ? 'small_16' : 'small_8', lookahead: [4, 3, 4], pld: 6, k: 4 };
}

function commonVariants(device: Device, wideTree: boolean, draft: CausalLM | undefined, heads: MedusaHeads | undefined, draftLabel: string): Variant[] {
  const s = strategySettings(device, wideTree);
  const out: Variant[] = [ENGINE_ONLY];
  if (draft) out.push({ name: `draft model (${draftLabel}, k=${s.k})`, setup: { k: s.k, draftLayers: draft.config.numLayers, draftHidden: draft.config.hiddenSize }, make: () => new DraftModelSpeculator({ draft, k: s.k }) });
  if (heads) out.push({ name: `medusa (${heads.config.numHeads} heads, ${s.medusa})`, setup: { heads: heads.config.numHeads, choices: s.medusa }, make: () => new MedusaSpeculator({ heads, choices: s.medusa }) });
  const [W, N, G] = s.lookahead;
  out.push({ name: `lookahead (W=${W}, N=${N}, G=${G})`, setup: { W, N, G }, make: () => new LookaheadSpeculator({ W, N, G }) });
  out.push({ name: `prompt lookup (n<=3, ${s.pld} drafts)`, setup: { maxNgram: 3, numDraft: s.pld }, make: () => new PromptLookupSpeculator({ maxNgram: 3, minNgram: 1, numDraft: s.pld }) });
  return out;
}

/** A passage of `len` ids repeated `times` times, then its first `tail` ids again (the model should go on copying). */
function repeatedIds(vocab: number, len: number, times: number, tail: number, seed: number): Int32Array {
  const rand = xorshift(seed);
  const passage = Array.from({ length: len }, () => 3 + Math.floor(rand() * (vocab - 3)));
  const out: number[] = [];
  for (let t = 0; t < times; t++) out.push(...passage);
  out.push(...passage.slice(0, tail));
  return Int32Array.from(out);
}

/** The opening of a story in the style of the default family's corpus (lib/train/corpus.ts). */
export const DEFAULT_PROMPT = 'once upon a time , there was a little cat';
/** A corpus-style passage, repeated in the prompt (a copy task: prompt lookup's home ground). */
const DEFAULT_PASSAGE = 'one day , tom went to the park to fly a kite . on the way , he saw a shiny ball under a tree . tom was very happy . ';

/**
 * What one speculative step is made of on a small model, in microseconds per call: a target
 * forward on the libuv pool and on the calling thread (syncForwardMaxMacs), a 5-token forward,
 * k = 4 greedy draft steps one by one and as one greedyChain call, and greedy verification of a
 * chain of 5 next to the argmax of one row. Each forward is committed and cut back, so the
 * context stays at the prompt plus the measured tokens.
 */
async function stepCosts(family: string, dirs: { target: string; draft?: string }, prompt: Int32Array, opts: BenchOptions): Promise<BenchRow[]> {
  const owned: LlamaModel[] = [];
  const load = async (dir: string, syncForwardMaxMacs?: number): Promise<LlamaModel> => {
    const m = await LlamaModel.load(dir, { device: opts.device, maxSequences: 1, ...(syncForwardMaxMacs !== undefined ? { syncForwardMaxMacs } : {}) });
    owned.push(m);
    return m;
  };
  const rows: BenchRow[] = [];
  const timing = { warmup: 20, samples: 9, calls: 200 };
  const row = (name: string, us: number, note: string): void => {
    rows.push({ name: `${family}: step cost: ${name}`, value: round(us, 2), unit: 'us/call', note, metrics: { microseconds: us, device: opts.device } });
  };
  try {
    const prefixed = async (m: LlamaModel): Promise<number> => {
      const seq = m.createSequence();
      const out = await m.forward([{ seq, tokens: prompt }]);
      out.logits.dispose();
      m.commit([seq], [Int32Array.from(prompt, (_, j) => j)]);
      return seq;
    };
    const one = Int32Array.of(prompt[prompt.length - 1] as number);
    const five = Int32Array.from({ length: 5 }, (_, i) => prompt[i % prompt.length] as number);
    const forwardCommit = (m: LlamaModel, seq: number, toks: Int32Array) => async (): Promise<void> => {
      const out = await m.forward([{ seq, tokens: toks }]);
      out.logits.dispose();
      m.commit([seq], [Int32Array.of(0)]);
      m.truncate(seq, prompt.length);
    };
    const pool = await load(dirs.target, 0);
    const here = await load(dirs.target);
    const ps = await prefixed(pool);
    const hs = await prefixed(here);
    const tPool = (await measure(forwardCommit(pool, ps, one), timing)).medianMs * 1000;
    const tHere = (await measure(forwardCommit(here, hs, one), timing)).medianMs * 1000;
    const tFive = (await measure(forwardCommit(here, hs, five), timing)).medianMs * 1000;
    row('target forward, 1 token, libuv pool', tPool, 'forward + commit, as before syncForwardMaxMacs');
    row('target forward, 1 token, calling thread', tHere, `forward + commit; x${round(tPool / tHere, 2)} faster than through the pool`);
    row('target forward, 5-token chain, calling thread', tFive, `${round(tFive / tHere, 2)}x a 1-token forward`);
    // Verification of a 5-node chain vs the argmax a plain step takes (logits of the 5-token forward).
    const fw = await here.forward([{ seq: hs, tokens: five }]);
    try {
      const chain = { nodeIndptr: Int32Array.of(0, 5), parents: Int32Array.of(-1, 0, 1, 2, 3), tokens: five };
      const tVerify = (await measure(() => verify({ mode: 'greedy', ...chain, target: fw.logits }), timing)).medianMs * 1000;
      const lastRow = fw.logits.rows(4, 5);
      const tArgmax = (
        await measure(() => {
          const ids = argmax(lastRow);
          ids.toInt32();
          ids.dispose();
        }, timing)
      ).medianMs * 1000;
      lastRow.dispose();
      row('verify greedy, chain of 5', tVerify, 'the native verify call');
      row('argmax of 1 row', tArgmax, 'what a plain step (and a root-only greedy step) takes instead of verify');
    } finally {
      fw.logits.dispose();
      here.truncate(hs, prompt.length);
    }
    if (dirs.draft) {
      const draft = await load(dirs.draft);
      const ds = await prefixed(draft);
      const k = 4;
      const single = async (): Promise<void> => {
        let tok = one;
        for (let i = 0; i < k; i++) {
          const out = await draft.forward([{ seq: ds, tokens: tok }]);
          const ids = argmax(out.logits);
          const t = ids.toInt32()[0] as number;
          ids.dispose();
          out.logits.dispose();
          draft.commit([ds], [Int32Array.of(0)]);
          tok = Int32Array.of(t);
        }
        draft.truncate(ds, prompt.length);
      };
      const chained = async (): Promise<void> => {
        await draft.greedyChain([{ seq: ds, tokens: one }], [k]);
        draft.truncate(ds, prompt.length);
      };
      const tSingle = (await measure(single, timing)).medianMs * 1000;
      const tChain = (await measure(chained, timing)).medianMs * 1000;
      row(`draft, ${k} greedy steps one by one`, tSingle, 'forward + argmax + commit per step (calling thread)');
      row(`draft, ${k} greedy steps in one greedyChain call`, tChain, `x${round(tSingle / tChain, 2)} faster`);
    }
    return rows;
  } finally {
    for (const m of owned.reverse()) m.dispose();
  }
}

async function defaultFamily(opts: BenchOptions, rounds: number, checks: Record<string, boolean>, notes: string[]): Promise<BenchRow[]> {
  const targetDir = path.join(DEFAULT_MODELS, 'target');
  if (!fs.existsSync(path.join(targetDir, 'config.json'))) {
    notes.push(`default family: ${targetDir} not found; default/* scenarios skipped`);
    return [];
  }
  const owned: { dispose(): void }[] = [];
  try {
    const target = await LlamaModel.load(targetDir, { device: opts.device, maxSequences: 2 });
    owned.push(target);
    const draftDir = path.join(DEFAULT_MODELS, 'draft');
    const medusaDir = path.join(DEFAULT_MODELS, 'medusa');
    let draft: LlamaModel | undefined;
    if (fs.existsSync(path.join(draftDir, 'config.json'))) {
      draft = await LlamaModel.load(draftDir, { device: opts.device, maxSequences: 2 });
      owned.push(draft);
    } else notes.push(`default family: no draft at ${draftDir}`);
    let heads: MedusaHeads | undefined;
    if (fs.existsSync(path.join(medusaDir, 'config.json'))) {
      heads = MedusaHeads.load(medusaDir, { device: target.device });
      owned.push(heads);
    } else notes.push(`default family: no Medusa heads at ${medusaDir}`);
    const tok = tokenizerFor([targetDir, DEFAULT_MODELS]);
    if (!tok) {
      notes.push('default family: no tokenizer.json; default/* scenarios skipped');
      return [];
    }
    const newTokens = 128;
    const weights = path.join(targetDir, 'model.safetensors');
    notes.push(
      `default family: ${DEFAULT_MODELS} (target ${target.config.hiddenSize}x${target.config.numLayers}, vocab ${target.config.vocabSize}` +
        `${fs.existsSync(weights) ? `, weights of ${fs.statSync(weights).mtime.toISOString()}` : ''}${draft ? ', draft' : ''}${heads ? `, ${heads.config.numHeads} Medusa heads` : ''})`,
    );
    const variants = commonVariants(opts.device, true, draft, heads, 'default draft');
    // The default target is tiny, so on the CPU a 64-node tree costs little more than a chain:
    // the standard Medusa tree is worth measuring next to the small one there too.
    if (heads && opts.device === 'cpu') {
      const h = heads;
      variants.splice(3, 0, { name: `medusa (${h.config.numHeads} heads, mc_sim_7b_63)`, setup: { heads: h.config.numHeads, choices: 'mc_sim_7b_63' }, make: () => new MedusaSpeculator({ heads: h, choices: 'mc_sim_7b_63' }) });
    }
    const prompt = tok.encode(DEFAULT_PROMPT);
    opts.log('speculative default: step costs');
    const costs = await stepCosts('default', { target: targetDir, ...(draft ? { draft: draftDir } : {}) }, prompt, opts);
    const rows = await runScenario({ name: 'default', target, prompt, promptDescription: JSON.stringify(DEFAULT_PROMPT), newTokens, variants }, rounds, opts, checks);
    const passage = tok.encode(DEFAULT_PASSAGE + DEFAULT_PASSAGE + 'one day , tom went');
    // Every strategy on the copy task too: the small model makes that cheap.
    rows.push(...(await runScenario({ name: 'default-repeated', target, prompt: passage, promptDescription: `passage x2 + its start: ${JSON.stringify(DEFAULT_PASSAGE)}`, newTokens, variants }, rounds, opts, checks)));
    rows.push(...costs);
    return rows;
  } finally {
    for (const o of owned.reverse()) o.dispose();
  }
}

async function randomFamily(opts: BenchOptions, rounds: number, checks: Record<string, boolean>, notes: string[]): Promise<{ rows: BenchRow[]; setup: Record<string, unknown> }> {
  const tSpec = opts.quick ? QUICK_TARGET : LLAMA_100M;
  const dSpec = opts.quick ? QUICK_DRAFT : RANDOM_DRAFT;
  const tmp = tempDir('spec');
  const owned: { dispose(): void }[] = [];
  try {
    opts.log('speculative: writing random target, draft and Medusa heads');
    const targetDir = path.join(tmp.dir, 'target');
    const draftDir = path.join(tmp.dir, 'draft');
    const medusaDir = path.join(tmp.dir, 'medusa');
    const targetParams = writeRandomLlama(targetDir, tSpec, 0x1234567);
    const draftParams = writeRandomLlama(draftDir, dSpec, 0x7654321);
    writeRandomMedusa(medusaDir, 4, 1, tSpec.hidden, tSpec.vocab, 0x4242);
    const load = async (dir: string): Promise<LlamaModel> => {
      const m = await LlamaModel.load(dir, { device: opts.device, maxSequences: 2 });
      owned.push(m);
      return m;
    };
    const target = await load(targetDir);
    const draft = await load(draftDir);
    const self = await load(targetDir); // same weights, its own KV cache: the perfect draft
    const heads = MedusaHeads.load(medusaDir, { device: target.device });
    owned.push(heads);
    const s = strategySettings(opts.device, false);
    const variants: Variant[] = [
      ...commonVariants(opts.device, false, draft, heads, 'random small'),
      { name: `draft model (target itself, k=${s.k})`, setup: { k: s.k, selfDraft: true }, make: () => new DraftModelSpeculator({ draft: self, k: s.k }) },
    ];
    const newTokens = opts.quick ? 6 : opts.device === 'cuda' ? 128 : 32;
    const rand = xorshift(0xabcdef);
    const prompt = Int32Array.from({ length: opts.quick ? 8 : 32 }, () => 3 + Math.floor(rand() * (tSpec.vocab - 3)));
    const family = opts.quick ? 'random-tiny' : 'random-100m';
    const rows = await runScenario({ name: family, target, prompt, promptDescription: 'random ids', newTokens, variants }, rounds, opts, checks);
    const selfRow = rows.find((r) => r.name.includes('target itself'));
    // The target as its own draft must accept everything (greedy, same backend, batch invariance).
    if (selfRow) checks[`${family}: self-draft accepts every draft token`] = selfRow.metrics['acceptanceRate'] === 1;
    const repeated = repeatedIds(tSpec.vocab, opts.quick ? 6 : 24, 2, 4, 0x5151);
    const pl = variants.filter((v) => v.name.startsWith('prompt lookup') || v.name.startsWith('lookahead'));
    rows.push(...(await runScenario({ name: `${family}-repeated`, target, prompt: repeated, promptDescription: `a random ${opts.quick ? 6 : 24}-id passage x2 + its first 4 ids`, newTokens, variants: pl }, rounds, opts, checks)));
    notes.push(
      'random-100m: random weights, so an unrelated random draft and random Medusa heads are (almost) never accepted: their rows measure the cost of speculating for nothing. ' +
        'The target as its own draft accepts everything (the upper bound on tau = k + 1), but its draft costs as much as the target, so its speedup cannot exceed 1: it measures the overhead.',
    );
    return { rows, setup: { randomTarget: { params: targetParams, ...tSpec, dtype: 'bf16' }, randomDraft: { params: draftParams, ...dSpec, dtype: 'bf16' }, randomMedusa: { heads: 4, layers: 1 } } };
  } finally {
    for (const o of owned.reverse()) o.dispose();
    tmp.remove();
  }
}

export const speculativeBench: BenchModule = {
  name: 'speculative',
  description: 'end-to-end greedy speculative vs plain decoding on the same target (draft, Medusa, lookahead, prompt lookup): speedup, tau, acceptance, phases, lossless check',
  async run(opts: BenchOptions): Promise<BenchResult> {
    const t0 = performance.now();
    const rounds = opts.quick ? 1 : 3;
    const checks: Record<string, boolean> = {};
    const notes: string[] = [];
    const rows: BenchRow[] = [];
    if (opts.quick) notes.push('quick: the default family is skipped and the random models are tiny');
    else rows.push(...(await defaultFamily(opts, rounds, checks, notes)));
    const random = await randomFamily(opts, rounds, checks, notes);
    rows.push(...random.rows);
    const s = strategySettings(opts.device, false);
    return {
      bench: 'speculative',
      device: opts.device,
      quick: opts.quick,
      setup: {
        decoding: 'greedy',
        rounds: `${rounds} (at least 9 where a plain run takes < 0.3 s)`,
        method: 'each strategy run bracketed by plain runs; speedup = median over rounds of tok/s / mean(neighbouring plain tok/s); tok/s includes the prefill',
        strategies: { draftK: s.k, medusaChoices: { default: strategySettings(opts.device, true).medusa, random: s.medusa }, lookahead: s.lookahead, promptLookupDrafts: s.pld },
        ...random.setup,
      },
      rows,
      notes,
      checks,
      seconds: (performance.now() - t0) / 1000,
    };
  },
};

if (require.main === module) void standalone(speculativeBench);

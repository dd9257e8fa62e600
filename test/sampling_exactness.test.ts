// Exactness of speculative sampling: the 2nd and 3rd new tokens (they go through verification)
// follow the target's own distribution, for every strategy. Many sequences with the same prompt
// run in one generateBatch call (sequence i samples from its own stream (seed, i)); the counts are
// chi-square tested against a float64 reference built from the toy model's conditionals.
import * as assert from 'assert';

import { SpeculativeDecoder } from '../lib/decoder';
import { Engine } from '../lib/engine/engine';
import { plainGenerate } from '../lib/plain';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import type { TokenGrammar } from '../lib/grammar';
import { resolvePenalties, type ResolvedPenalties } from '../lib/sampling';
import { Tensor } from '../lib/tensor';
import { writeEagle3Head, writeEagleHead } from './fixtures/eagle_head';
import { writeMedusaHeads } from './fixtures/medusa_heads';
import { ToyLM } from './fixtures/toy_lm';
import { assertChiSquareFits, redrawOnce, refPenalize, testSeed } from './helpers';

const V = 6;
const SEQS = 3000;

/** float64 softmax(logits / T) restricted to the top-k logits (k = 0: all). */
function refProbs(logits: Float32Array, T: number, topK: number): Float64Array {
  const order = Array.from(logits.keys()).sort((a, b) => (logits[b] as number) - (logits[a] as number) || a - b);
  const keep = new Set(topK > 0 ? order.slice(0, topK) : order);
  const p = new Float64Array(logits.length);
  const m = (logits[order[0] as number] as number) / T;
  let s = 0;
  for (const v of keep) {
    p[v] = Math.exp((logits[v] as number) / T - m);
    s += p[v] as number;
  }
  for (let v = 0; v < p.length; v++) p[v] = (p[v] as number) / s;
  return p;
}

/**
 * A grammar over the toy's ids that bans what the target likes (adversarial: drafts of banned ids
 * must all be rejected): the first token may not be 0 or 5; after token a, (a + 1) % V and
 * (a + 3) % V may not follow.
 */
function toyAllowed(key: string): number[] {
  const all = Array.from({ length: V }, (_, t) => t);
  if (key === 'start') return all.filter((t) => t !== 0 && t !== 5);
  const a = Number(key);
  return all.filter((t) => t !== (a + 1) % V && t !== (a + 3) % V);
}
const TOY_GRAMMAR: TokenGrammar = {
  vocabSize: V,
  name: 'toy grammar',
  start: () => ({ key: 'start' }),
  next: (s, t) => (toyAllowed(s.key).includes(t) ? { key: String(t) } : undefined),
  accepts: () => false,
  allowed: (s) => Uint32Array.of(toyAllowed(s.key).reduce((w, t) => w | (1 << t), 0)),
};

/** Joint reference distribution of the first three new tokens (with penalties: on each row's logits, after the prompt; with the toy grammar: its banned ids at -inf last). */
function reference(model: ToyLM, prompt: number[], T: number, topK: number, pen?: ResolvedPenalties, grammar?: boolean): Float64Array {
  const joint = new Float64Array(V * V * V);
  const L = prompt.length;
  const logits = (ctx: number[]): Float32Array => {
    const raw = model.logitsFor(ctx, ctx.length - 1);
    const l = pen ? refPenalize(raw, V, pen, [{ tokens: ctx, promptLength: L }], Int32Array.of(0), []) : raw;
    if (grammar) {
      const ok = toyAllowed(ctx.length === L ? 'start' : String(ctx[ctx.length - 1]));
      for (let t = 0; t < V; t++) if (!ok.includes(t)) l[t] = -Infinity;
    }
    return l;
  };
  const p1 = refProbs(logits(prompt), T, topK);
  for (let a = 0; a < V; a++) {
    const p2 = refProbs(logits([...prompt, a]), T, topK);
    for (let b = 0; b < V; b++) {
      const p3 = refProbs(logits([...prompt, a, b]), T, topK);
      for (let c = 0; c < V; c++) joint[(a * V + b) * V + c] = (p1[a] as number) * (p2[b] as number) * (p3[c] as number);
    }
  }
  return joint;
}

/** The first three tokens of each run against the joint distribution of the target's three: (t1, t2), (t2, t3) and t3 fit it. */
function assertFitsJoint(runs: readonly ArrayLike<number>[], joint: Float64Array): void {
  const c12 = new Array<number>(V * V).fill(0);
  const c23 = new Array<number>(V * V).fill(0);
  const c3 = new Array<number>(V).fill(0);
  for (const t of runs) {
    const [a, b, d] = [t[0] as number, t[1] as number, t[2] as number];
    c12[a * V + b]!++;
    c23[b * V + d]!++;
    c3[d]!++;
  }
  const p12 = new Array<number>(V * V).fill(0);
  const p23 = new Array<number>(V * V).fill(0);
  const p3 = new Array<number>(V).fill(0);
  for (let a = 0; a < V; a++)
    for (let b = 0; b < V; b++)
      for (let d = 0; d < V; d++) {
        const p = joint[(a * V + b) * V + d] as number;
        p12[a * V + b]! += p;
        p23[b * V + d]! += p;
        p3[d]! += p;
      }
  assertChiSquareFits('(t1, t2)', c12, p12, runs.length);
  assertChiSquareFits('(t2, t3)', c23, p23, runs.length);
  assertChiSquareFits('t3', c3, p3, runs.length);
}

describe('speculative sampling is exact (toy model, chi-square)', function () {
  this.timeout(60000);
  const seed = testSeed;
  const T = 0.9;
  // Every token occurs in the prompt, so n-gram strategies always find a candidate.
  const prompt = [0, 1, 2, 3, 4, 5, 2, 3, 1, 2];
  // Eight "layers": an EAGLE-3 head reads the inputs of three of them (ToyLM makes them up).
  const target = new ToyLM({ vocabSize: V, seed, scale: 0.7, hiddenSize: 8, layers: 8 });
  const partial = (): ToyLM => new ToyLM({ vocabSize: V, seed, scale: 0.7, mix: { seed: seed + 50, weight: 0.7 } });
  // A draft whose vocabulary is a prefix of the target's (ids 4 and 5 missing, as a padded target
  // vocabulary): q is zero there, so the target's mass on them comes only from the residual; the
  // prompt holds them, so the draft is fed their stand-in.
  const shorter = (): ToyLM => new ToyLM({ vocabSize: V - 2, seed, scale: 0.7, mix: { seed: seed + 50, weight: 0.3 } });
  let heads: MedusaHeads;
  before(() => {
    heads = MedusaHeads.load(writeMedusaHeads({ numHeads: 2, numLayers: 1, hiddenSize: 8, vocabSize: V, seed }), { device: 'cpu' });
  });
  let eagle: EagleHead;
  let eagle3: EagleHead;
  before(() => {
    eagle = EagleHead.load(writeEagleHead({ hidden: 8, heads: 2, kvHeads: 1, intermediate: 12, vocab: V, seed }), { device: 'cpu' });
    // A draft vocabulary of 4 of the 6 ids (d2t): the target's mass on the other two comes from the residual only.
    eagle3 = EagleHead.load(writeEagle3Head({ hidden: 8, heads: 2, kvHeads: 1, intermediate: 12, vocab: V, draftVocab: 4, seed }), { device: 'cpu' });
  });
  after(() => {
    heads.dispose();
    eagle.dispose();
    eagle3.dispose();
  });

  // Penalties that move the distribution: every token is in the prompt (repetition), and the
  // output's tokens lose presence + frequency per occurrence.
  const PEN: ResolvedPenalties = { repetition: 1.6, presence: 0.5, frequency: 0.3 };
  // A logit bias alone and with them: a token banned, one the shorter draft and the EAGLE-3 head
  // lack raised (their drafts keep only the ids they have), one lowered.
  const BIAS = resolvePenalties({ logitBias: { 1: -Infinity, 5: 2, 3: -0.7 } })!;
  const PEN_BIAS = resolvePenalties({ ...PEN, logitBias: { 2: -Infinity, 4: 1.5, 0: -1 } })!;
  const cases: { name: string; make: () => Speculator | undefined; topK?: number; minAccept?: number; penalties?: ResolvedPenalties; grammar?: boolean }[] = [
    { name: 'plain (no speculator)', make: () => undefined },
    { name: 'draft model chain k=3 (sampled drafts, q passed)', make: () => new DraftModelSpeculator({ draft: partial(), k: 3 }) },
    { name: 'draft model chain, top-k 4 on p and q', make: () => new DraftModelSpeculator({ draft: partial(), k: 2 }), topK: 4 },
    {
      name: 'draft model identical to the target (p = q: everything accepted)',
      make: () => new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V, seed, scale: 0.7 }), k: 2 }),
      minAccept: 0.999,
    },
    { name: 'draft model with a shorter vocabulary, chain k=3', make: () => new DraftModelSpeculator({ draft: shorter(), k: 3 }) },
    { name: 'draft model with a shorter vocabulary, tree [3,2]', make: () => new DraftModelSpeculator({ draft: shorter(), treeBranching: [3, 2] }) },
    { name: 'hybrid with a shorter-vocabulary draft (+ prompt lookup)', make: () => new HybridSpeculator({ draft: shorter(), draftSpeculator: new PromptLookupSpeculator(), k: 3 }) },
    { name: 'draft model, heuristic k', make: () => new DraftModelSpeculator({ draft: partial(), adaptive: 'heuristic', k: 2 }) },
    { name: 'draft model tree [3,2] (deterministic, one-hot)', make: () => new DraftModelSpeculator({ draft: partial(), treeBranching: [3, 2] }) },
    { name: 'Medusa exact (tree rejection)', make: () => new MedusaSpeculator({ heads, choices: [[0], [1], [2], [0, 0], [0, 1], [1, 0]] }) },
    { name: 'EAGLE-2 tree (deterministic, one-hot; top-3, depth 2, 6 nodes)', make: () => new EagleSpeculator({ head: eagle, topK: 3, depth: 2, totalTokens: 6 }) },
    { name: 'EAGLE-2 tree, top-k 4 on p', make: () => new EagleSpeculator({ head: eagle, topK: 2, depth: 3, totalTokens: 5 }), topK: 4 },
    { name: 'EAGLE-3 head with a draft vocabulary of 4 ids (d2t), tree top-2, depth 2, 5 nodes', make: () => new EagleSpeculator({ head: eagle3, topK: 2, depth: 2, totalTokens: 5 }) },
    { name: 'lookahead W=3 N=3 G=3 (fixed: the sized one decodes this toy plainly)', make: () => new LookaheadSpeculator({ W: 3, N: 3, G: 3, sizing: 'fixed' }) },
    { name: 'prompt lookup', make: () => new PromptLookupSpeculator({ maxNgram: 2, numDraft: 3 }) },
    { name: 'hybrid (draft + prompt lookup)', make: () => new HybridSpeculator({ draft: partial(), draftSpeculator: new PromptLookupSpeculator(), k: 3 }) },
    { name: 'penalties: plain (no speculator)', make: () => undefined, penalties: PEN },
    { name: 'penalties: draft model chain k=3, the draft drafting with them (q penalized)', make: () => new DraftModelSpeculator({ draft: partial(), k: 3 }), penalties: PEN },
    { name: 'penalties: draft model chain k=3, the draft drafting without them', make: () => new DraftModelSpeculator({ draft: partial(), k: 3, draftPenalties: false }), penalties: PEN },
    {
      name: 'penalties: a draft identical to the target drafting with them (p = q: everything accepted)',
      make: () => new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V, seed, scale: 0.7 }), k: 2 }),
      penalties: PEN,
      minAccept: 0.999,
    },
    { name: 'penalties: a shorter-vocabulary draft (the ids it lacks out of its histories), chain k=3', make: () => new DraftModelSpeculator({ draft: shorter(), k: 3 }), penalties: PEN },
    { name: 'penalties: draft model tree [3,2] (penalized one-hot drafts)', make: () => new DraftModelSpeculator({ draft: partial(), treeBranching: [3, 2] }), penalties: PEN },
    { name: 'penalties: Medusa exact (tree rejection), top-k 4 on p', make: () => new MedusaSpeculator({ heads, choices: [[0], [1], [2], [0, 0], [0, 1], [1, 0]] }), topK: 4, penalties: PEN },
    { name: 'logit bias: plain (no speculator)', make: () => undefined, penalties: BIAS },
    { name: 'logit bias: draft model chain k=3 (q biased)', make: () => new DraftModelSpeculator({ draft: partial(), k: 3 }), penalties: BIAS },
    { name: 'logit bias + penalties: a shorter-vocabulary draft, chain k=3 (its bias without the ids it lacks)', make: () => new DraftModelSpeculator({ draft: shorter(), k: 3 }), penalties: PEN_BIAS },
    { name: 'logit bias + penalties: hybrid with a shorter-vocabulary draft (+ prompt lookup)', make: () => new HybridSpeculator({ draft: shorter(), draftSpeculator: new PromptLookupSpeculator(), k: 3 }), penalties: PEN_BIAS },
    { name: 'logit bias + penalties: Medusa exact (tree rejection)', make: () => new MedusaSpeculator({ heads, choices: [[0], [1], [2], [0, 0], [0, 1], [1, 0]] }), penalties: PEN_BIAS },
    { name: 'logit bias + penalties: EAGLE-3 head (its bias in its draft ids)', make: () => new EagleSpeculator({ head: eagle3, topK: 2, depth: 2, totalTokens: 5 }), penalties: PEN_BIAS },
    { name: 'grammar: plain (no speculator)', make: () => undefined, grammar: true },
    { name: 'grammar: draft model chain k=3 (sampled drafts of banned ids)', make: () => new DraftModelSpeculator({ draft: partial(), k: 3 }), grammar: true },
    { name: 'grammar: draft model tree [3,2]', make: () => new DraftModelSpeculator({ draft: partial(), treeBranching: [3, 2] }), grammar: true },
    { name: 'grammar: Medusa exact (tree rejection), top-k 4 on p', make: () => new MedusaSpeculator({ heads, choices: [[0], [1], [2], [0, 0], [0, 1], [1, 0]] }), topK: 4, grammar: true },
    { name: 'grammar: EAGLE-2 tree', make: () => new EagleSpeculator({ head: eagle, topK: 3, depth: 2, totalTokens: 6 }), grammar: true },
    { name: 'grammar: lookahead W=3 N=3 G=3', make: () => new LookaheadSpeculator({ W: 3, N: 3, G: 3, sizing: 'fixed' }), grammar: true },
    { name: 'grammar: prompt lookup', make: () => new PromptLookupSpeculator({ maxNgram: 2, numDraft: 3 }), grammar: true },
    { name: 'grammar: hybrid (draft + prompt lookup)', make: () => new HybridSpeculator({ draft: partial(), draftSpeculator: new PromptLookupSpeculator(), k: 3 }), grammar: true },
    { name: 'grammar + penalties + logit bias: a shorter-vocabulary draft, chain k=3', make: () => new DraftModelSpeculator({ draft: shorter(), k: 3 }), penalties: PEN_BIAS, grammar: true },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const topK = c.topK ?? 0;
      await redrawOnce(async (attempt) => {
        const spec = c.make();
        const dec = new SpeculativeDecoder({
          target,
          ...(spec ? { speculator: spec } : {}),
          sampling: { temperature: T, ...(topK ? { topK } : {}), seed: seed + c.name.length + attempt * 1000003 },
          ...(c.penalties ? { penalties: c.penalties } : {}),
        });
        const res = await dec.generateBatch(
          Array.from({ length: SEQS }, () => prompt),
          { maxNewTokens: 3, ...(c.grammar ? { grammar: TOY_GRAMMAR } : {}) },
        );
        let proposed = 0;
        let accepted = 0;
        for (const r of res) {
          assert.strictEqual(r.tokens.length, 3);
          proposed += r.stats.proposedDraftTokens;
          accepted += r.stats.acceptedDraftTokens;
        }
        assert.strictEqual(target.liveSequences(), 0);
        if (spec) assert.ok(proposed > SEQS / 4, `only ${proposed} draft tokens proposed`);
        if (c.minAccept !== undefined) assert.ok(accepted / proposed >= c.minAccept, `acceptance ${accepted / proposed}`);
        assertFitsJoint(res.map((r) => r.tokens), reference(target, prompt, T, topK, c.penalties, c.grammar));
        // Power: the penalties move the distribution far enough for these counts to tell.
        if (c.penalties) assert.throws(() => assertFitsJoint(res.map((r) => r.tokens), reference(target, prompt, T, topK, undefined, c.grammar)), /chi-square|zero probability/);
        if (c.grammar) assert.throws(() => assertFitsJoint(res.map((r) => r.tokens), reference(target, prompt, T, topK, c.penalties)), /chi-square|zero probability/);
      });
    });
  }

  it('detects a biased run: drafts accepted as if q were the target (negative control)', async () => {
    // Claiming q = p makes every sampled draft accepted, so the output follows the draft's q,
    // not p. The same statistics must flag it (this shows the test has power). A negative control
    // needs a draft known to differ enough from the target, so its models and RNG are pinned
    // (seed 12345: a TV distance of the (t2, t3) law far above what 3000 draws resolve), not fresh.
    const nseed = 12345;
    const target = new ToyLM({ vocabSize: V, seed: nseed, scale: 0.7, hiddenSize: 8 });
    const inner = new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V, seed: nseed, scale: 0.7, mix: { seed: nseed + 50, weight: 0.7 } }), k: 3 });
    const broken: Speculator = {
      name: 'broken',
      wantsHidden: false,
      attach: (m) => inner.attach(m),
      prefill: async () => undefined,
      propose: async (seqs, ctx) => {
        const b = await inner.propose(seqs, ctx);
        b.draftProbs?.dispose();
        const rows: number[] = [];
        b.proposals.forEach((p, i) => {
          const s = seqs[i]!;
          const ctxTokens = s.history.slice();
          for (let n = 0; n < p.tokens.length; n++) {
            if (n > 0) ctxTokens.push(p.tokens[n]!);
            rows.push(...refProbs(target.logitsFor(ctxTokens, s.committed + n), T, 0));
          }
        });
        return { proposals: b.proposals, draftProbs: Tensor.fromArray(Float32Array.from(rows), 'f32', [rows.length / V, V]) };
      },
      update: (seqs, rep) => inner.update(seqs, rep),
      release: (s) => inner.release(s),
      dispose: () => inner.dispose(),
    };
    const dec = new SpeculativeDecoder({ target, speculator: broken, sampling: { temperature: T, seed: nseed } });
    const res = await dec.generateBatch(Array.from({ length: SEQS }, () => prompt), { maxNewTokens: 3 });
    assert.ok(res.every((r) => r.stats.acceptanceRate === 1), 'q = p: every draft accepted');
    const joint = reference(target, prompt, T, 0);
    const c23 = new Array<number>(V * V).fill(0);
    const p23 = new Array<number>(V * V).fill(0);
    for (const r of res) c23[r.tokens[1]! * V + r.tokens[2]!]!++;
    joint.forEach((p, i) => (p23[(Math.floor(i / V) % V) * V + (i % V)]! += p));
    assert.throws(() => assertChiSquareFits('(t2, t3)', c23, p23, SEQS), /chi-square/);
  });

  /** Speculators whose drafts are deterministic (one-hot): their sampled runs emit plain sampling's tokens. */
  const deterministicDrafts: [string, () => Speculator][] = [
    ['Medusa exact', () => new MedusaSpeculator({ heads, choices: [[0], [1], [2], [0, 0], [0, 1], [1, 0]] })],
    ['EAGLE-2 tree', () => new EagleSpeculator({ head: eagle, topK: 3, depth: 2, totalTokens: 6 })],
    ['EAGLE-3 tree', () => new EagleSpeculator({ head: eagle3, topK: 2, depth: 2, totalTokens: 5 })],
    ['lookahead', () => new LookaheadSpeculator({ W: 3, N: 3, G: 3, sizing: 'fixed' })],
    ['prompt lookup', () => new PromptLookupSpeculator({ maxNgram: 2, numDraft: 3 })],
    ['one-hot draft tree [3,2]', () => new DraftModelSpeculator({ draft: partial(), treeBranching: [3, 2] })],
  ];

  it('deterministic drafts emit plain sampling\'s tokens, token for token, whatever the trees (Medusa, EAGLE, lookahead, prompt lookup, one-hot draft trees)', async () => {
    // spec_math.h: each emitted token is the sample op's draw at its own counter, so a tree only
    // saves forwards: the tokens are plainGenerate's (sequence i of a batch: stream (seed, i)).
    const prompts = Array.from({ length: 24 }, (_, i) => Int32Array.from(i % 3 === 0 ? prompt : prompt.slice(i % 5)));
    for (const sampling of [{ temperature: T, seed: seed + 1 }, { temperature: 0.6, topK: 3, seed: seed + 2 }, { temperature: 1.3, topP: 0.8, seed: seed + 3 }]) {
      const plain = (await plainGenerate(target, prompts, { maxNewTokens: 16, ...sampling })).tokens.map((tokens) => ({ tokens }));
      const speculators: [string, () => Speculator | undefined][] = [['no speculator', () => undefined], ...deterministicDrafts];
      for (const [name, make] of speculators) {
        const speculator = make();
        const res = await new SpeculativeDecoder({ target, ...(speculator ? { speculator } : {}), sampling }).generateBatch(prompts, { maxNewTokens: 16 });
        res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain[i]!.tokens), `${name}, ${JSON.stringify(sampling)}: sequence ${i}`));
        const accepted = res.reduce((a, r) => a + r.stats.acceptedDraftTokens, 0);
        if (speculator) assert.ok(accepted > 10, `${name}: ${accepted} drafts accepted (the trees must be exercised)`);
      }
    }
    // Drafts with distributions (a sampled draft chain) are verified by recursive rejection: their
    // tokens depend on the drafts (the negative control of this equality).
    const sampling = { temperature: T, seed: seed + 1 };
    const plain = await new SpeculativeDecoder({ target, sampling }).generateBatch(prompts, { maxNewTokens: 16 });
    const drafted = await new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: partial(), k: 3 }), sampling }).generateBatch(prompts, { maxNewTokens: 16 });
    assert.ok(drafted.some((r, i) => r.tokens.join() !== plain[i]!.tokens.join()));
  });

  it('trees cut to a 3-token KV reserve: deterministic drafts still emit plain sampling\'s tokens; a sampled draft chain cut from k = 6 to 2 still samples the target', async () => {
    // The engine gives every sequence maxNodes = treeReserveTokens = 3 nodes: each speculator
    // proposes more (5- and 6-node trees, a 7-node lookahead step, 4-node chains) and cuts its own.
    const reserve = 3;
    const prompts = Array.from({ length: 24 }, (_, i) => Int32Array.from(i % 3 === 0 ? prompt : prompt.slice(i % 5)));
    const sampling = { temperature: T, seed: seed + 4 };
    const plain = (await plainGenerate(target, prompts, { maxNewTokens: 16, ...sampling })).tokens;
    for (const [name, make] of deterministicDrafts) {
      const speculator = make();
      let most = 0;
      const update = speculator.update.bind(speculator);
      speculator.update = (seqs, report, ctx) => {
        for (const q of report.proposals) most = Math.max(most, q.tokens.length);
        return update(seqs, report, ctx);
      };
      const engine = new Engine({ model: target, speculator, treeReserveTokens: reserve });
      const res = await Promise.all(prompts.map((q, i) => engine.submit(q, { maxNewTokens: 16, sampling: { temperature: T }, seed: sampling.seed, stream: i })));
      res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain[i]!), `${name}: sequence ${i}`));
      assert.ok(most > 1 && most <= reserve, `${name}: trees of up to ${most} nodes`);
      assert.ok(res.reduce((a, r) => a + r.stats.acceptedDraftTokens, 0) > 10, `${name}: drafts accepted`);
      speculator.dispose();
    }
    // A sampled chain (q passed): k = 6 cut to 2 drafts a step, the emitted distribution the target's.
    const engine = new Engine({ model: target, speculator: new DraftModelSpeculator({ draft: partial(), k: 6 }), treeReserveTokens: reserve });
    await redrawOnce(async (attempt) => {
      // (Six tokens, of which the first three are counted: the first step may draft 4 past the root.)
      const res = await Promise.all(Array.from({ length: SEQS }, (_, i) => engine.submit(prompt, { maxNewTokens: 6, sampling: { temperature: T }, seed: seed + 5 + attempt * 1000003, stream: i })));
      let proposed = 0;
      let forwards = 0;
      for (const r of res) {
        proposed += r.stats.proposedDraftTokens;
        forwards += r.stats.targetForwards - 1;
        // Two drafts a verifying step at most (k = 6 would draft 4 in the first).
        assert.ok(r.stats.proposedDraftTokens <= 2 * (r.stats.targetForwards - 1), JSON.stringify(r.stats));
      }
      assert.ok(proposed > forwards, `${proposed} drafts in ${forwards} verifying steps: chains of two`);
      assert.strictEqual(target.liveSequences(), 0);
      assertFitsJoint(res.map((r) => r.tokens), reference(target, prompt, T, 0));
    });
  });

  it("a third-party sampled tree larger than maxNodes and deeper than maxDepth: the engine cuts it with its draft rows, and it still samples the target", async () => {
    // Each proposal is an 11-node depth-3 tree listed depth first (root; a child; its two children,
    // each with one; the second child likewise), every node's children drawn in order without
    // replacement from a row that depends on the node (sharply different rows, so a row given to
    // the wrong node biases the output). The engine prunes it to the sequence's maxDepth (2 at the
    // first step of 4 tokens: interleaved nodes go, 7 stay) and cuts it to maxNodes = 6, and must hand
    // verification the kept nodes' rows, proposal by proposal (kept: nodes 0, 1, 2, 4, 6, 7, so node
    // 6's row is the batch's fifth of the proposal, not its seventh).
    const reserve = 6;
    let rngState = (seed ^ 0x5bd1e995) >>> 0;
    const rand = (): number => {
      rngState = (rngState + 0x6d2b79f5) >>> 0;
      let t = rngState;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    const rowFor = (depth: number, token: number): Float64Array => {
      // A fixed, peaked distribution per (depth, token): mass 0.7 on (token + depth + 1) mod V.
      const q = new Float64Array(V).fill(0.3 / (V - 1));
      q[(token + depth + 1) % V] = 0.7;
      return q;
    };
    const draw = (q: Float64Array, without: readonly number[]): number => {
      let mass = 0;
      for (let t = 0; t < V; t++) if (!without.includes(t)) mass += q[t] as number;
      let u = rand() * mass;
      for (let t = 0; t < V; t++) {
        if (without.includes(t)) continue;
        u -= q[t] as number;
        if (u < 0) return t;
      }
      for (let t = V - 1; t >= 0; t--) if (!without.includes(t)) return t;
      return 0;
    };
    let biggest = 0;
    let cut = 0;
    let pruned = 0;
    const thirdParty: Speculator = {
      name: 'third-party sampled tree',
      wantsHidden: false,
      attach() {},
      async prefill() {},
      propose(seqs) {
        const rows: number[] = [];
        const proposals = seqs.map((sq) => {
          const tokens: number[] = [sq.history[sq.history.length - 1] as number];
          const parents: number[] = [-1];
          const depths: number[] = [0];
          // Depth first: a node's children, each followed by its subtree.
          const grow = (node: number, fanout: readonly number[]): void => {
            if (fanout.length === 0) return;
            const q = rowFor(depths[node] as number, tokens[node] as number);
            const drawn: number[] = [];
            for (let c = 0; c < (fanout[0] as number); c++) {
              const t = draw(q, drawn);
              drawn.push(t);
              tokens.push(t);
              parents.push(node);
              depths.push((depths[node] as number) + 1);
              grow(tokens.length - 1, fanout.slice(1));
            }
          };
          grow(0, [2, 2, 1]);
          for (let i = 0; i < tokens.length; i++) rows.push(...rowFor(depths[i] as number, tokens[i] as number));
          biggest = Math.max(biggest, tokens.length);
          if (tokens.length > sq.maxNodes) cut++;
          if (sq.maxDepth === 2) pruned++;
          return { tokens: Int32Array.from(tokens), parents: Int32Array.from(parents) };
        });
        return { proposals, draftProbs: Tensor.fromArray(Float32Array.from(rows), 'f32', [rows.length / V, V]) };
      },
      update() {},
      release() {},
      dispose() {},
    };
    const engine = new Engine({ model: target, speculator: thirdParty, treeReserveTokens: reserve });
    await redrawOnce(async (attempt) => {
      cut = pruned = 0;
      const res = await Promise.all(Array.from({ length: SEQS }, (_, i) => engine.submit(prompt, { maxNewTokens: 4, sampling: { temperature: T }, seed: seed + 6 + attempt * 1000003, stream: i })));
      assert.strictEqual(biggest, 11);
      assert.ok(cut > SEQS / 2 && pruned > SEQS / 2, `${cut} trees cut, ${pruned} pruned to depth 2`);
      let accepted = 0;
      for (const r of res) accepted += r.stats.acceptedDraftTokens;
      assert.ok(accepted > SEQS / 2, `${accepted} drafts accepted`);
      assert.strictEqual(target.liveSequences(), 0);
      assertFitsJoint(res.map((r) => r.tokens), reference(target, prompt, T, 0));
    });
  });

  it('the same seed reproduces the same samples; another seed differs', async () => {
    const run = async (s: number): Promise<string> => {
      const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: partial(), k: 3 }), sampling: { temperature: T, seed: s } });
      const r = await dec.generateBatch(Array.from({ length: 20 }, () => prompt), { maxNewTokens: 12 });
      return r.map((x) => x.tokens.join(',')).join('|');
    };
    const a = await run(seed);
    assert.strictEqual(await run(seed), a);
    assert.notStrictEqual(await run(seed + 1), a);
  });
});

// The continuous-batching engine (lib/engine/engine.ts): a request's tokens are the same alone and
// in any batch (greedy and sampled, with arrivals mid-run and preemption under a small KV cache),
// aborted requests leave at once, KV pages all come back, concurrent decoder.generate() calls on one
// model share a batch, and bad requests get coded errors.
import * as assert from 'assert';
import { SpeculativeDecoder } from '../lib/decoder';
import { Engine, MAX_GROUPS, type RequestOptions } from '../lib/engine/engine';
import { LlamaModel } from '../lib/models/llama';
import { native } from '../lib/native';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import { ancestorMask, treeDepths } from '../lib/tree';
import type { Speculator } from '../lib/strategies/speculator';
import { makeCheckpoint, specByName, type CheckpointSpec } from './fixtures/checkpoints';
import { writeEagleHead } from './fixtures/eagle_head';
import { writeMedusaHeads } from './fixtures/medusa_heads';
import { rng, testSeed } from './helpers';

const targetSpec: CheckpointSpec = specByName('llama-gqa-f32');
const draftSpec: CheckpointSpec = { ...targetSpec, name: 'draft-small', layers: 1, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1 };
// The target without an EOS, for tests whose point needs every run to make all its tokens: a random
// target's first token may be its EOS (seed 617716997: token 2), and a run that stops there
// speculates nothing and fills no cache.
const { eos: _eos, ...noEos } = targetSpec;
const eosFree: CheckpointSpec = { ...noEos, name: 'llama-gqa-f32-no-eos' };
const V = targetSpec.vocab;

interface Job {
  readonly prompt: Int32Array;
  readonly opts: RequestOptions;
}

/** Mixed prompt lengths, output lengths and sampling settings (a third greedy). */
function jobs(seed: number, n: number): Job[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => {
    const prompt = Int32Array.from({ length: 1 + Math.floor(r() * 12) }, () => Math.floor(r() * V));
    const maxNewTokens = 4 + Math.floor(r() * 30);
    const kind = i % 3;
    const sampling = kind === 0 ? undefined : kind === 1 ? { temperature: 0.9 } : { temperature: 0.7, topP: 0.9, topK: 20 };
    const opts: RequestOptions = sampling ? { maxNewTokens, sampling, seed: 1000 + i } : { maxNewTokens };
    return { prompt, opts };
  });
}

async function alone(engine: Engine, js: readonly Job[]): Promise<number[][]> {
  const out: number[][] = [];
  for (const j of js) out.push(Array.from((await engine.submit(j.prompt, j.opts)).tokens));
  return out;
}

/** All jobs: the first six at once (two per sampling setting), the rest a few at a time while earlier ones run. */
async function together(engine: Engine, js: readonly Job[]): Promise<number[][]> {
  const pending: Promise<number[]>[] = [];
  for (let i = 0; i < js.length; i++) {
    const j = js[i] as Job;
    pending.push(engine.submit(j.prompt, j.opts).then((r) => Array.from(r.tokens)));
    if (i >= 5 && i % 3 === 2) await new Promise((r) => setTimeout(r, 1));
  }
  return Promise.all(pending);
}

describe('engine: continuous batching', function () {
  this.timeout(120000);
  let target: LlamaModel;
  let draft: LlamaModel;
  let small: LlamaModel;
  before(async () => {
    const dir = makeCheckpoint(targetSpec, testSeed);
    target = await LlamaModel.load(dir, { device: 'cpu', maxSequences: 16 });
    draft = await LlamaModel.load(makeCheckpoint(draftSpec, testSeed + 1), { device: 'cpu', maxSequences: 16 });
    // Room for about three sequences of the jobs below: the batch must preempt (no EOS: with one,
    // seed 3333's sequences stopped early enough to fit).
    small = await LlamaModel.load(makeCheckpoint(eosFree, testSeed), { device: 'cpu', pageSize: 4, kvPages: 24 });
  });
  after(() => {
    target?.dispose();
    draft?.dispose();
    small?.dispose();
  });

  const speculators: [string, () => Speculator | undefined][] = [
    ['no speculator', () => undefined],
    ['draft model k=3', () => new DraftModelSpeculator({ draft, k: 3 })],
    // Medusa verifies on gathered hidden rows and lookahead reads every row's argmax: both go
    // through a mixed step's per-setting rows of the shared forward.
    ['Medusa, fixed 2-head tree', () => new MedusaSpeculator({ heads: MedusaHeads.load(writeMedusaHeads({ numHeads: 2, numLayers: 1, hiddenSize: targetSpec.hidden, vocabSize: V, seed: testSeed }), { device: 'cpu' }), choices: [[0], [1], [0, 0], [0, 1], [1, 0]] })],
    ['lookahead W=3 N=3 G=3', () => new LookaheadSpeculator({ W: 3, N: 3, G: 3, sizing: 'fixed' })],
    // EAGLE keeps per-sequence features and a draft cache of its own across the joins and leaves.
    ['EAGLE-1/2, fixed 3,2,6', () => new EagleSpeculator({ head: EagleHead.load(writeEagleHead({ hidden: targetSpec.hidden, heads: 4, kvHeads: 2, intermediate: 48, vocab: V, seed: testSeed }), { device: 'cpu' }), topK: 3, depth: 2, totalTokens: 6 })],
  ];
  for (const [name, make] of speculators) {
    it(`${name}: each request's tokens are the same alone and in a batch (greedy and sampled)`, async () => {
      const js = jobs(testSeed + 7, 12);
      const spec = make();
      const ref = await alone(new Engine(spec ? { model: target, speculator: spec } : { model: target }), js);
      const engine = new Engine(spec ? { model: target, speculator: spec, maxBatch: 5 } : { model: target, maxBatch: 5 });
      const got = await together(engine, js);
      got.forEach((t, i) => assert.deepStrictEqual(t, ref[i], `request ${i}`));
      // More sequence forwards than batched forwards: sequences shared forwards.
      assert.ok(engine.metrics.sequenceForwards > engine.metrics.forwards, 'requests were batched');
      assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages, 'target pages leaked');
      assert.strictEqual(draft.kvInfo().freePages, draft.kvInfo().totalPages, 'draft pages leaked');
      const own = (spec as { cache?: { freePages: number; totalPages: number } } | undefined)?.cache;
      if (own) assert.strictEqual(own.freePages, own.totalPages, "the speculator's own cache leaked pages");
    });
  }

  it('requests with different sampling settings share one target forward per step', async () => {
    // Three settings, one request each, admitted together; no EOS stop, so each takes exactly
    // maxNewTokens - 1 steps after its prefill (one prefill forward per setting at admission).
    // (A request may still stop early at the model's EOS: the steps are read from its statistics.)
    const N = 12;
    const js = jobs(testSeed + 23, 3).map((j) => ({ ...j, opts: { ...j.opts, maxNewTokens: N, stopTokens: [] } }));
    const ref = await alone(new Engine({ model: target }), js);
    const engine = new Engine({ model: target });
    const res = await Promise.all(js.map((j) => engine.submit(j.prompt, j.opts)));
    res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), ref[i], `request ${i}`));
    const steps = res.map((r) => r.stats.targetForwards - 1);
    assert.ok(steps.filter((n) => n > 0).length >= 2, `at least two settings stepped together (steps ${steps})`);
    assert.strictEqual(engine.metrics.forwards, 3 + Math.max(...steps), `three prefills, then one forward per step for all three settings (steps ${steps})`);
    assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages);
  });

  it('a sampling setting per request keeps at most MAX_GROUPS settings (those no request holds go, least recently used first); outputs unchanged', async () => {
    const engine = new Engine({ model: target, maxBatch: 4 });
    const groups = (): Map<string, unknown> => (engine as unknown as { groups: Map<string, unknown> }).groups;
    const temps = Array.from({ length: MAX_GROUPS + 20 }, (_, i) => 0.5 + i / 100);
    const opts = (t: number) => ({ maxNewTokens: 3, sampling: { temperature: t }, seed: 9, stopTokens: [] });
    // Held settings stay: 4 at a time in flight, every setting new.
    for (let i = 0; i < temps.length; i += 4) {
      const batch = temps.slice(i, i + 4);
      await Promise.all(batch.map((t) => engine.submit([1, 2, 3], opts(t))));
      assert.ok(groups().size <= MAX_GROUPS, `${groups().size} settings kept after ${i + batch.length} requests`);
    }
    // The most recent ones are kept; an evicted one comes back as new, with the same tokens as alone.
    assert.ok(groups().has(`t${temps[temps.length - 1]} k${undefined} p${undefined} m${undefined}`), 'the newest setting kept');
    const again = await engine.submit([1, 2, 3], opts(temps[0]!));
    const alone = await new Engine({ model: target }).submit([1, 2, 3], opts(temps[0]!));
    assert.deepStrictEqual(Array.from(again.tokens), Array.from(alone.tokens));
    // Requests hold their setting: MAX_GROUPS + 4 settings in flight at once are all kept until they finish.
    const wide = new Engine({ model: target, maxBatch: 8 });
    const wg = (): Map<string, unknown> => (wide as unknown as { groups: Map<string, unknown> }).groups;
    const runs = temps.slice(0, MAX_GROUPS + 4).map((t) => wide.submit([4, 5], opts(t)));
    assert.strictEqual(wg().size, MAX_GROUPS + 4, 'every setting a queued request holds is kept');
    const out = await Promise.all(runs);
    assert.strictEqual(out.length, MAX_GROUPS + 4);
    await wide.submit([4, 5], opts(9));
    assert.ok(wg().size <= MAX_GROUPS, `${wg().size} settings kept once they finished`);
    assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages);
  });

  it("a request's phase times cover its own lifetime, not the engine's earlier requests", async () => {
    const engine = new Engine({ model: target });
    const first = await engine.submit([1, 2, 3], { maxNewTokens: 40, stopTokens: [] });
    const second = await engine.submit([4, 5], { maxNewTokens: 2, stopTokens: [] });
    const sum = (p: object): number => (Object.values(p) as number[]).reduce((a, b) => a + b, 0);
    assert.ok(sum(first.stats.phases) > 0);
    // Cumulative phases would hold the first request's 40 steps inside the second's lifetime. (No
    // comparison of the two requests' times: a GC pause or a compile can land in either.)
    assert.ok(sum(second.stats.phases) <= second.stats.seconds, `phases ${sum(second.stats.phases)} s in a request of ${second.stats.seconds} s`);
  });

  it('a small KV cache preempts the youngest and recomputes it: same tokens, all pages free', async () => {
    // Nine sequences of up to 42 tokens, all admitted at once, need far more than the cache's 96
    // tokens; each alone fits.
    const js = jobs(testSeed + 11, 9).map((j) => ({ ...j, opts: { ...j.opts, maxNewTokens: 30, stopTokens: [] } }));
    const ref = await alone(new Engine({ model: small }), js);
    const engine = new Engine({ model: small, treeReserveTokens: 4 });
    const got = await Promise.all(js.map((j) => engine.submit(j.prompt, j.opts).then((r) => Array.from(r.tokens))));
    got.forEach((t, i) => assert.deepStrictEqual(t, ref[i], `request ${i}`));
    assert.ok(engine.metrics.preemptions > 0, 'the cache was small enough to preempt');
    assert.strictEqual(small.kvInfo().freePages, small.kvInfo().totalPages);
    // A request that can never fit is refused, not queued forever.
    const wide = new Engine({ model: small, treeReserveTokens: 64 });
    await assert.rejects(wide.submit(new Int32Array(100).fill(1), { maxNewTokens: 4 }), (e: Error & { code?: string }) => e.code === 'E_KV_FULL' && /24 pages/.test(e.message));
  });

  for (const [name, make] of speculators.slice(1)) {
    it(`${name}: preempted by a small KV cache and recomputed, each request's tokens are its tokens alone`, async () => {
      // The preemption test's jobs (greedy and sampled) with a speculator: a preempted sequence's
      // speculator state (a draft's cache, EAGLE's features, lookahead's window) starts over with it.
      const js = jobs(testSeed + 11, 9).map((j) => ({ ...j, opts: { ...j.opts, maxNewTokens: 30, stopTokens: [] } }));
      const spec = make() as Speculator;
      const ref = await alone(new Engine({ model: small, speculator: spec, treeReserveTokens: 8 }), js);
      const engine = new Engine({ model: small, speculator: spec, treeReserveTokens: 8 });
      const got = await Promise.all(js.map((j) => engine.submit(j.prompt, j.opts).then((r) => Array.from(r.tokens))));
      got.forEach((t, i) => assert.deepStrictEqual(t, ref[i], `request ${i}`));
      assert.ok(engine.metrics.preemptions > 0, 'the cache was small enough to preempt');
      assert.strictEqual(small.kvInfo().freePages, small.kvInfo().totalPages, 'target pages leaked');
      assert.strictEqual(draft.kvInfo().freePages, draft.kvInfo().totalPages, 'draft pages leaked');
      const own = (spec as { cache?: { freePages: number; totalPages: number } } | undefined)?.cache;
      if (own) assert.strictEqual(own.freePages, own.totalPages, "the speculator's own cache leaked pages");
    });
  }

  describe('trees larger than treeReserveTokens (the KV room kept per sequence)', () => {
    const R = 6;
    // Every run here makes all its tokens (eosFree).
    let target: LlamaModel;
    before(async () => {
      target = await LlamaModel.load(makeCheckpoint(eosFree, testSeed), { device: 'cpu', maxSequences: 2 });
    });
    after(() => target?.dispose());
    // A prompt that repeats (prompt lookup finds matches), 40 new tokens, and a cache of exactly
    // prompt + output + R tokens (pages of one token): a tree of more than R nodes near the end has
    // no room.
    const prompt = Int32Array.of(5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 5, 6, 7);
    const maxNewTokens = 40;
    /** The most nodes the speculator proposed in a step (native chains propose lone roots). */
    function recording(spec: Speculator): { spec: Speculator; most: () => number } {
      let most = 0;
      const wrapped = new Proxy(spec, {
        get(t, key) {
          const v = Reflect.get(t, key, t) as unknown;
          if (key !== 'propose' || typeof v !== 'function') return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
          return (...args: unknown[]) => {
            const seen = (b: { proposals: readonly { tokens: Int32Array }[] }) => {
              for (const p of b.proposals) most = Math.max(most, p.tokens.length);
              return b;
            };
            const r = (v as (...a: unknown[]) => unknown).apply(t, args) as { proposals: readonly { tokens: Int32Array }[] } | Promise<{ proposals: readonly { tokens: Int32Array }[] }>;
            return r instanceof Promise ? r.then(seen) : seen(r);
          };
        },
      });
      return { spec: wrapped, most: () => most };
    }
    // A draft with the target's weights (another instance: a model is never its own draft) agrees
    // with it, so every step drafts as far as the room allows.
    let twin: LlamaModel;
    before(async () => {
      twin = await LlamaModel.load(makeCheckpoint(eosFree, testSeed), { device: 'cpu', maxSequences: 2 });
    });
    after(() => twin?.dispose());
    const heads = (): MedusaHeads => MedusaHeads.load(writeMedusaHeads({ numHeads: 2, numLayers: 1, hiddenSize: targetSpec.hidden, vocabSize: V, seed: testSeed }), { device: 'cpu' });
    const wide: [string, (d: LlamaModel) => Speculator][] = [
      ['Medusa, a fixed 21-node tree', () => new MedusaSpeculator({ heads: heads(), choices: [[0], [1], [2], [3], ...[0, 1, 2, 3].flatMap((a) => [0, 1, 2, 3].map((b) => [a, b]))] })],
      ['draft model, a 13-node tree (3, 3)', (d) => new DraftModelSpeculator({ draft: d, treeBranching: [3, 3] })],
      ['draft model, chains of k = 20', (d) => new DraftModelSpeculator({ draft: d, k: 20 })],
      ['EAGLE-1/2, fixed 4,3,30', () => new EagleSpeculator({ head: EagleHead.load(writeEagleHead({ hidden: targetSpec.hidden, heads: 4, kvHeads: 2, intermediate: 48, vocab: V, seed: testSeed }), { device: 'cpu' }), topK: 4, depth: 3, totalTokens: 30 })],
      ['lookahead W=5 N=3 G=4 (fixed: 11 window and candidate nodes at least)', () => new LookaheadSpeculator({ W: 5, N: 3, G: 4, sizing: 'fixed' })],
      ['prompt lookup, 20 drafts', () => new PromptLookupSpeculator({ numDraft: 20 })],
      ['hybrid (draft model + prompt lookup), k = 20', (d) => new HybridSpeculator({ draft: d, draftSpeculator: new PromptLookupSpeculator({ numDraft: 20 }), k: 20 })],
    ];
    for (const [name, make] of wide) {
      it(`${name}: greedy = plain on a cache with room for R = ${R} tree tokens, and on one with less; no proposal above R nodes`, async () => {
        // Room for R more tokens than the output, then for 1 (the last trees get what is left).
        for (const spare of [R, 1]) await once(spare);
      });
      const once = async (spare: number): Promise<void> => {
        const tight = await LlamaModel.load(makeCheckpoint(eosFree, testSeed), { device: 'cpu', pageSize: 1, kvPages: prompt.length + maxNewTokens + spare });
        try {
          const ref = await new Engine({ model: target }).submit(prompt, { maxNewTokens, stopTokens: [] });
          const { spec, most } = recording(make(twin));
          const engine = new Engine({ model: tight, speculator: spec, treeReserveTokens: R });
          const got = await engine.submit(prompt, { maxNewTokens, stopTokens: [] });
          assert.deepStrictEqual(Array.from(got.tokens), Array.from(ref.tokens));
          assert.ok(most() <= R, `a ${most()}-node proposal`);
          // It proposed trees (random heads accept little), or drafted in native chains (lone roots proposed).
          assert.ok(most() > 1 || got.stats.targetForwards < maxNewTokens, `it speculated (${got.stats.targetForwards} forwards for ${maxNewTokens} tokens)`);
          assert.strictEqual(tight.kvInfo().freePages, tight.kvInfo().totalPages);
          spec.dispose();
        } finally {
          tight.dispose();
        }
      };
    }

    it('SpeculativeDecoder takes the reserve (treeReserveTokens) and LlamaModel.load sizes its cache for it (treeTokens)', async () => {
      const { spec, most } = recording(new MedusaSpeculator({ heads: heads(), choices: [[0], [1], [2], [3], [0, 0], [0, 1], [1, 0], [1, 1]] }));
      const ref = await new Engine({ model: target }).submit(prompt, { maxNewTokens, stopTokens: [] });
      const got = await new SpeculativeDecoder({ target, speculator: spec, treeReserveTokens: 4 }).generate(prompt, { maxNewTokens, stopTokens: [] }).result;
      assert.deepStrictEqual(Array.from(got.tokens), Array.from(ref.tokens));
      assert.strictEqual(most(), 4);
      for (const bad of [0, -1, 1.5, Number.NaN, '8']) {
        assert.throws(() => new SpeculativeDecoder({ target, speculator: spec, treeReserveTokens: bad as number }), (e: Error & { code?: string }) => e.code === 'E_ARG' && /treeReserveTokens/.test(e.message));
      }
      spec.dispose();
      const sized = await LlamaModel.load(makeCheckpoint(eosFree, testSeed), { device: 'cpu', maxSequences: 2, pageSize: 4, treeTokens: 100 });
      try {
        assert.strictEqual(sized.kvInfo().totalPages, 2 * Math.ceil((sized.config.maxPositions + 100) / 4));
      } finally {
        sized.dispose();
      }
      await assert.rejects(LlamaModel.load(makeCheckpoint(eosFree, testSeed), { device: 'cpu', treeTokens: 0 }), (e: Error & { code?: string }) => e.code === 'E_ARG' && /treeTokens/.test(e.message));
    });

    it("a speculator that ignores maxNodes: a plain tree is cut to its first R nodes, one with its own mask is refused", async () => {
      // The target's own greedy continuation as a chain, with a sibling under every node: 2k + 1 nodes.
      const ref = await new Engine({ model: target }).submit(prompt, { maxNewTokens, stopTokens: [] });
      const full = [...prompt, ...ref.tokens];
      let most = 0;
      const oracle = (withMask: boolean): Speculator => ({
        name: 'oracle',
        wantsHidden: false,
        attach() {},
        async prefill() {},
        propose(seqs) {
          return {
            proposals: seqs.map((s) => {
              const tokens: number[] = [s.history[s.history.length - 1] as number];
              const parents: number[] = [-1];
              for (let d = 1, at = 0; d <= Math.min(10, s.maxDepth); d++) {
                parents.push(at, at);
                tokens.push(((full[s.history.length - 1 + d] as number) + 1) % V, full[s.history.length - 1 + d] as number);
                at = tokens.length - 1;
              }
              const tree = { tokens: Int32Array.from(tokens), parents: Int32Array.from(parents) };
              if (!withMask) return tree;
              return { ...tree, positions: Int32Array.from(treeDepths(tree.parents), (d) => s.committed + d), mask: ancestorMask(tree.parents) };
            }),
          };
        },
        update(_seqs, report) {
          for (const p of report.proposals) most = Math.max(most, p.tokens.length);
        },
        release() {},
        dispose() {},
      });
      const tight = await LlamaModel.load(makeCheckpoint(eosFree, testSeed), { device: 'cpu', pageSize: 1, kvPages: prompt.length + maxNewTokens + R });
      try {
        const got = await new Engine({ model: tight, speculator: oracle(false), treeReserveTokens: R }).submit(prompt, { maxNewTokens, stopTokens: [] });
        assert.deepStrictEqual(Array.from(got.tokens), Array.from(ref.tokens));
        assert.strictEqual(most, R, 'the engine verified cut trees of R nodes');
        // Its first R nodes hold (R - 1) / 2 of the chain's drafts: all accepted, plus the bonus.
        assert.ok(got.stats.targetForwards <= 1 + Math.ceil((maxNewTokens - 1) / ((R - 1) >> 1) + 1), `${got.stats.targetForwards} forwards`);
        await assert.rejects(
          new Engine({ model: tight, speculator: oracle(true), treeReserveTokens: R }).submit(prompt, { maxNewTokens, stopTokens: [] }),
          (e: Error & { code?: string }) => e.code === 'E_ARG' && /nodes > maxNodes 6/.test(e.message),
        );
        assert.strictEqual(tight.kvInfo().freePages, tight.kvInfo().totalPages);
      } finally {
        tight.dispose();
      }
    });
  });

  it("a draft model's cache running out mid-step recomputes the batch, smaller: same tokens, all pages free", async () => {
    // Room in the draft for one sequence of these jobs (<= 12 + 30 tokens + 3 drafts), not for six
    // prompts with their drafts at once.
    const tight = await LlamaModel.load(makeCheckpoint(draftSpec, testSeed + 1), { device: 'cpu', pageSize: 4, kvPages: 12 });
    try {
      const js = jobs(testSeed + 19, 6).map((j) => ({ ...j, opts: { ...j.opts, maxNewTokens: 30 } }));
      const ref = await alone(new Engine({ model: target, speculator: new DraftModelSpeculator({ draft: tight, k: 3 }) }), js);
      const engine = new Engine({ model: target, speculator: new DraftModelSpeculator({ draft: tight, k: 3 }) });
      const got = await Promise.all(js.map((j) => engine.submit(j.prompt, j.opts).then((r) => Array.from(r.tokens))));
      got.forEach((t, i) => assert.deepStrictEqual(t, ref[i], `request ${i}`));
      assert.ok(engine.metrics.preemptions > 0, 'the draft cache ran out');
      assert.strictEqual(tight.kvInfo().freePages, tight.kvInfo().totalPages);
      assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages);
    } finally {
      tight.dispose();
    }
  });

  it("a draft model's cache too small for one request alone: it is decoded without drafts (the same tokens, stats.speculationOff says why), the others still draft; a target cache too small still fails", async () => {
    // 8 pages of 4: 32 tokens of draft cache; the long request needs ~60.
    const tiny = await LlamaModel.load(makeCheckpoint(draftSpec, testSeed + 1), { device: 'cpu', pageSize: 4, kvPages: 8 });
    try {
      const r = rng(testSeed + 23);
      const long = Array.from({ length: 40 }, () => Math.floor(r() * V));
      const short = Array.from({ length: 4 }, () => Math.floor(r() * V));
      for (const [name, make] of [
        ['draft model', () => new DraftModelSpeculator({ draft: tiny, k: 3 })],
        ['hybrid', () => new HybridSpeculator({ draft: tiny, draftSpeculator: new PromptLookupSpeculator(), k: 3 })],
      ] as const) {
        for (const sampling of [undefined, { temperature: 0.9 }]) {
          const opts: RequestOptions = { maxNewTokens: 20, ignoreEos: true, ...(sampling ? { sampling, seed: 5 } : {}) };
          const plain = await new Engine({ model: target }).submit(long, opts);
          const engine = new Engine({ model: target, speculator: make() });
          const got = await engine.submit(long, opts);
          assert.deepStrictEqual(Array.from(got.tokens), Array.from(plain.tokens), `${name}: the long request's tokens`);
          assert.match(got.stats.speculationOff ?? '', /out of KV pages with drafts, alone .*KV cache full/, `${name}: why`);
          assert.strictEqual(engine.metrics.speculationOff, 1, `${name}: counted`);
          const fine = await engine.submit(short, { maxNewTokens: 8, ignoreEos: true });
          assert.ok(fine.stats.proposedDraftTokens > 0 && fine.stats.speculationOff === undefined, `${name}: a request that fits still drafts`);
          assert.strictEqual(tiny.kvInfo().freePages, tiny.kvInfo().totalPages, `${name}: draft pages back`);
        }
      }
    } finally {
      tiny.dispose();
    }
    // The target's own cache too small for the request: still E_KV_FULL (after the one retry).
    const tightTarget = await LlamaModel.load(makeCheckpoint(eosFree, testSeed), { device: 'cpu', pageSize: 4, kvPages: 12 });
    try {
      const engine = new Engine({ model: tightTarget, speculator: new DraftModelSpeculator({ draft, k: 3 }), treeReserveTokens: 4 });
      await assert.rejects(engine.submit([1, 2, 3, 4, 5, 6, 7, 8], { maxNewTokens: 60, ignoreEos: true }), (e: Error & { code?: string }) => e.code === 'E_KV_FULL');
      assert.strictEqual(tightTarget.kvInfo().freePages, tightTarget.kvInfo().totalPages);
    } finally {
      tightTarget.dispose();
    }
  });

  for (const [name, make] of speculators) {
    it(`${name}: an aborted request leaves at once (queued or running), its speculator state freed; the others are unaffected`, async () => {
      // The running request to abort never stops at EOS and outlasts two deliveries of the longest
      // chains: one that ended within its first two would be fulfilled before its abort (a CI seed
      // did that, every speculator).
      const js = jobs(testSeed + 13, 6).map((j, i) => ({ ...j, opts: { ...j.opts, ...(i === 1 ? { maxNewTokens: 96, ignoreEos: true } : { maxNewTokens: 40 }) } }));
      const spec = make();
      const ref = await alone(new Engine(spec ? { model: target, speculator: spec } : { model: target }), js);
      const engine = new Engine(spec ? { model: target, speculator: spec, maxBatch: 3 } : { model: target, maxBatch: 3 });
      const running = new AbortController();
      const queued = new AbortController();
      let seen = 0;
      const runs = js.map((j, i) =>
        engine.submit(j.prompt, {
          ...j.opts,
          ...(i === 1 ? { signal: running.signal, onTokens: () => ++seen === 2 && running.abort() } : {}),
          ...(i === 5 ? { signal: queued.signal } : {}),
        }),
      );
      queued.abort();
      const settled = await Promise.allSettled(runs);
      settled.forEach((s, i) => {
        if (i === 1 || i === 5) assert.ok(s.status === 'rejected' && (s.reason as Error).name === 'AbortError', `request ${i} aborted`);
        else assert.deepStrictEqual(s.status === 'fulfilled' ? Array.from(s.value.tokens) : s.reason, ref[i], `request ${i}`);
      });
      assert.strictEqual(engine.metrics.aborted, 2);
      assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages, 'target pages leaked');
      assert.strictEqual(draft.kvInfo().freePages, draft.kvInfo().totalPages, 'draft pages leaked');
      const own = (spec as { cache?: { freePages: number; totalPages: number } } | undefined)?.cache;
      if (own) assert.strictEqual(own.freePages, own.totalPages, "the speculator's own cache leaked pages");
    });
  }

  it("a step's tokens reach onTokens while the next forward runs (consumers overlap the compute); a throwing onTokens fails only its request", async () => {
    const js = jobs(testSeed + 19, 4).map((j) => ({ ...j, opts: { ...j.opts, maxNewTokens: 12, stopTokens: [] } }));
    const ref = await alone(new Engine({ model: target }), js);
    // Every forward through the libuv pool (a real model's case), each one observed.
    const pooled = await LlamaModel.load(makeCheckpoint(targetSpec, testSeed), { device: 'cpu', maxSequences: 16, syncForwardMaxMacs: 0 });
    try {
      let inFlight = 0;
      // The model call, counted in inFlight while it runs.
      const inFlightWhile =
        <A extends unknown[], R>(call: (...a: A) => Promise<R>) =>
        async (...a: A): Promise<R> => {
          inFlight++;
          try {
            return await call(...a);
          } finally {
            inFlight--;
          }
        };
      pooled.forward = inFlightWhile(pooled.forward.bind(pooled));
      // One forward per step (plain chains, lib/plain_chain.ts, would make the number of steps, and
      // so of deliveries, depend on the machine's speed); the chained engine is checked below.
      const chain = pooled.greedyChain.bind(pooled);
      (pooled as { greedyChain?: unknown }).greedyChain = undefined;
      const engine = new Engine({ model: pooled, maxBatch: 4 });
      let during = 0;
      let calls = 0;
      let shared = 0;
      const boom = new Error('consumer failed');
      const runs = js.map((j, i) =>
        engine.submit(j.prompt, {
          ...j.opts,
          onTokens: (chunk) => {
            calls++;
            // A chunk is its own buffer: never a view into a batch result holding others' tokens.
            if (chunk.byteOffset !== 0 || chunk.byteLength !== chunk.buffer.byteLength) shared++;
            if (inFlight > 0) during++;
            if (i === 2) throw boom;
          },
        }),
      );
      const settled = await Promise.allSettled(runs);
      settled.forEach((s, i) => {
        if (i === 2) assert.ok(s.status === 'rejected' && s.reason === boom, 'the request whose onTokens threw fails with that error');
        else assert.deepStrictEqual(s.status === 'fulfilled' ? Array.from(s.value.tokens) : s.reason, ref[i], `request ${i}`);
      });
      // Chunks delivered at a request's end (or after the last forward) see no forward running;
      // all the others must. Delivering right after each forward (no overlap) gives 0.
      // One chunk per step for each request (the model's EOS may end one early: seed 356035579);
      // request 2 fails at its first.
      const steps = ref.reduce((n, t, i) => n + (i === 2 ? 0 : t.length), 0);
      assert.ok(calls >= steps && steps > 2 * js.length, `${calls} deliveries for ${steps} steps`);
      assert.strictEqual(shared, 0, `${shared} chunks were views into a shared buffer`);
      assert.ok(during >= calls - 2 * js.length, `${during} of ${calls} deliveries overlapped a forward`);
      assert.strictEqual(engine.metrics.failed, 1);
      assert.strictEqual(pooled.kvInfo().freePages, pooled.kvInfo().totalPages);
      // Plain chains: the same tokens, and a chain counts as the next forward the deliveries overlap.
      pooled.greedyChain = inFlightWhile(chain);
      const chained = new Engine({ model: pooled, maxBatch: 4 });
      calls = during = 0;
      const got = await Promise.all(
        js.map((j) =>
          chained.submit(j.prompt, {
            ...j.opts,
            onTokens: () => {
              calls++;
              if (inFlight > 0) during++;
            },
          }),
        ),
      );
      got.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), ref[i], `chained: request ${i}`));
      assert.ok(during >= calls - 2 * js.length, `chained: ${during} of ${calls} deliveries overlapped a forward or a chain`);
      assert.strictEqual(pooled.kvInfo().freePages, pooled.kvInfo().totalPages);
    } finally {
      pooled.dispose();
    }
  });

  it('busy consumers get a core lent while they work (lendCore), and no output changes', async () => {
    const js = jobs(testSeed + 23, 4).map((j) => ({ ...j, opts: { ...j.opts, maxNewTokens: 10, stopTokens: [] } }));
    const ref = await alone(new Engine({ model: target }), js);
    const pooled = await LlamaModel.load(makeCheckpoint(targetSpec, testSeed), { device: 'cpu', maxSequences: 16, syncForwardMaxMacs: 0 });
    // One forward per step, so that every request has several steps' deliveries whatever the
    // machine's speed (plain chains would make a few long ones).
    (pooled as { greedyChain?: unknown }).greedyChain = undefined;
    const cpu = (): SpecdecNative.CpuInfo => native().cpuInfo();
    try {
      for (const lendCore of [true, false]) {
        const engine = new Engine({ model: pooled, maxBatch: 4, lendCore });
        let lentSeen = 0;
        let calls = 0;
        const runs = js.map((j) =>
          engine.submit(j.prompt, {
            ...j.opts,
            onTokens: () => {
              calls++;
              if (cpu().coreLent) lentSeen++;
              const until = performance.now() + 0.3;  // a consumer that keeps this thread busy
              while (performance.now() < until);
            },
          }),
        );
        const res = await Promise.all(runs);
        res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), ref[i], `lendCore ${lendCore}: request ${i}`));
        // The first step's consumers are measured, later ones run with a core lent (from the second step on).
        if (lendCore) assert.ok(lentSeen >= calls / 2, `${lentSeen} of ${calls} deliveries ran with a core lent`);
        else assert.strictEqual(lentSeen, 0);
        await new Promise((r) => setImmediate(() => setImmediate(r)));
        assert.strictEqual(cpu().coreLent, false, 'the core is back once the consumers are done');
      }
      assert.strictEqual(pooled.kvInfo().freePages, pooled.kvInfo().totalPages);
      // Lending is a store into the pool's word, not a call into the addon.
      const flag = native().cpuLendFlag();
      assert.strictEqual(flag.length, 1);
      Atomics.store(flag, 0, 1);
      assert.strictEqual(cpu().coreLent, true);
      Atomics.store(flag, 0, 0);
      assert.strictEqual(cpu().coreLent, false);
    } finally {
      pooled.dispose();
    }
  });

  it('concurrent decoder.generate() calls on one model share a batch (no E_BUSY), as do generateBatch calls', async () => {
    const js = jobs(testSeed + 17, 6).map((j) => j.prompt);
    const spec = new DraftModelSpeculator({ draft, k: 2 });
    const dec = new SpeculativeDecoder({ target, speculator: spec });
    const ref: number[][] = [];
    for (const p of js) ref.push(Array.from((await dec.generate(p, { maxNewTokens: 20 }).result).tokens));
    const other = new SpeculativeDecoder({ target });
    const [a, b, c] = await Promise.all([
      Promise.all(js.map((p) => dec.generate(p, { maxNewTokens: 20 }).result)),
      other.generateBatch(js, { maxNewTokens: 20 }),
      Promise.all(js.map((p) => other.generate(p, { maxNewTokens: 20 }).result)),
    ]);
    for (const res of [a, b, c]) res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), ref[i], `prompt ${i}`));
    assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages);
  });

  it('bad requests are coded errors naming the problem', async () => {
    const engine = new Engine({ model: target });
    const bad: [Int32Array | number[], RequestOptions, RegExp][] = [
      [[], { maxNewTokens: 3 }, /prompt is empty/],
      [[1, V], { maxNewTokens: 3 }, /prompt\[1\] = 96 is outside the vocabulary/],
      [[1], { maxNewTokens: -1 }, /maxNewTokens/],
      [[1], { maxNewTokens: 3, sampling: { temperature: 1, topP: 1.5 } }, /topP/],
      [[1], { maxNewTokens: 3, seed: -2 }, /seed/],
      [new Array<number>(targetSpec.maxPositions).fill(1), { maxNewTokens: 3 }, /no room to generate/],
    ];
    for (const [p, o, msg] of bad) await assert.rejects(engine.submit(p, o), (e: Error & { code?: string }) => e.code === 'E_ARG' && msg.test(e.message));
    engine.close();
    await assert.rejects(engine.submit([1], { maxNewTokens: 1 }), (e: Error & { code?: string }) => e.code === 'E_CLOSED');
  });
});

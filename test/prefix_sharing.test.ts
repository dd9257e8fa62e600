// Prefix sharing (EngineOptions.prefixSharing): a request whose prompt begins with a live sequence's
// tokens starts from a fork of its KV cache. Its output must be the output without sharing, token
// for token and log-probability for log-probability, greedy and sampled, with every strategy (whose
// state starts from the source's: the same drafts accepted), and the pages must all come back.
import * as assert from 'assert';
import { Engine, MIN_SHARED_PREFIX, type EngineOptions, type RequestOptions } from '../lib/engine/engine';
import { defaultModelPaths } from '../lib/default_models';
import { LlamaModel } from '../lib/models/llama';
import type { GenerateResult } from '../lib/decoder';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import { loadEmbeddedFamily, type EmbeddedFamily } from './fixtures/embedded_family';
import { describeCuda, rng, testSeed } from './helpers';

/**
 * fn with engine a (no sharing) and engine b (sharing, and bOpts), each with its own speculator from
 * make(); then both closed, b's kept sequences dropped (idle), and every page of the model back.
 */
async function withEngines(model: LlamaModel, make: () => Speculator | undefined, bOpts: Partial<EngineOptions>, what: string, fn: (a: Engine, b: Engine) => Promise<void>): Promise<void> {
  const spec = (): { speculator?: Speculator } => {
    const s = make();
    return s ? { speculator: s } : {};
  };
  const a = new Engine({ model, ...spec(), prefixSharing: false });
  const b = new Engine({ model, ...spec(), ...bOpts });
  try {
    await fn(a, b);
  } finally {
    a.close();
    b.close();
  }
  await Promise.all([a.idle(), b.idle()]);
  assert.strictEqual(b.prefixCached, 0, `${what}: closed and idle, nothing kept`);
  const kv = model.kvInfo();
  assert.strictEqual(kv.freePages, kv.totalPages, `${what}: KV pages free`);
}

describe('prefix sharing (the engine)', function () {
  this.timeout(300000);
  let family: EmbeddedFamily;
  before(async () => {
    family = await loadEmbeddedFamily(16);
  });
  after(() => family.dispose());

  // A 24-token "system prompt", then requests: three choices of one prompt (sampled streams 0..2),
  // two other suffixes, a prompt that is the system prompt and one more token, one that is a prefix
  // of another, and one that shares nothing.
  const r = rng(testSeed + 7);
  const ids = (n: number): number[] => Array.from({ length: n }, () => 3 + Math.floor(r() * 290));
  const system = ids(24);
  const longer = [...system, ...ids(12)];
  const prompts: { prompt: number[]; opts: Partial<RequestOptions> }[] = [
    { prompt: longer, opts: { stream: 0 } },
    { prompt: longer, opts: { stream: 1 } },
    { prompt: longer, opts: { stream: 2, maxNewTokens: 3 } },
    { prompt: [...system, ...ids(5)], opts: {} },
    { prompt: [...system, ...ids(9)], opts: { logprobs: 2 } },
    { prompt: [...system, 7], opts: {} },
    { prompt: longer.slice(0, 30), opts: {} },
    { prompt: ids(20), opts: {} },
    { prompt: longer, opts: { promptLogprobs: 1 } },
  ];

  const run = async (engine: Engine, sampled: boolean): Promise<GenerateResult[]> =>
    Promise.all(prompts.map(({ prompt, opts }) => engine.submit(prompt, { maxNewTokens: 20, ignoreEos: true, seed: 5, ...(sampled ? { sampling: { temperature: 0.9, topP: 0.95 } } : {}), ...opts })));

  const cases = (): [string, () => Speculator | undefined][] => [
    ['plain', () => undefined],
    ['draft model k=4', () => new DraftModelSpeculator({ draft: family.draft, k: 4 })],
    ['Medusa small_8', () => new MedusaSpeculator({ heads: family.heads, choices: 'small_8' })],
    ['lookahead 4,3,4', () => new LookaheadSpeculator({ W: 4, N: 3, G: 4, sizing: 'fixed' })],
    ['prompt lookup', () => new PromptLookupSpeculator({ maxNgram: 3 })],
    ['hybrid (draft + prompt lookup)', () => new HybridSpeculator({ draft: family.draft, draftSpeculator: new PromptLookupSpeculator({ maxNgram: 2 }), k: 4 })],
    ['EAGLE top-4 depth 3', () => new EagleSpeculator({ head: family.eagle, topK: 4, depth: 3, totalTokens: 12 })],
  ];

  it('every strategy, greedy and sampled: the output (tokens, log-probabilities) without sharing; prompt tokens taken from the cache; all pages back', async () => {
    const { target } = family;
    assert.ok(system.length >= MIN_SHARED_PREFIX);
    for (const [name, make] of cases()) {
      for (const sampled of [false, true]) {
        // (Sampled drafts too: a sequence's draws are keyed by its seed and stream, and the draft's
        // state is the same bits, so the tokens are the same, not only their distribution.)
        const what = `${name}${sampled ? ', sampled' : ''}`;
        await withEngines(target, make, {}, what, async (a, b) => {
          const want = await run(a, sampled);
          // Each new sequence's first feed (its prompt, or what a shared prefix leaves of it).
          let firstFeeds = 0;
          const fresh = new Set<number>();
          const { forward, createSequence, forkSequence } = target;
          target.createSequence = () => {
            const q = createSequence.call(target);
            fresh.add(q);
            return q;
          };
          target.forkSequence = (q0: number) => {
            const q = forkSequence.call(target, q0);
            fresh.add(q);
            return q;
          };
          target.forward = async (inputs, o) => {
            for (const i of inputs) if (fresh.delete(i.seq)) firstFeeds += i.tokens.length;
            return forward.call(target, inputs, o);
          };
          // The draft model's own cache is forked too (Speculator.shareFrom).
          let draftForks = 0;
          const draftFork = family.draft.forkSequence;
          family.draft.forkSequence = (q0: number) => {
            draftForks++;
            return draftFork.call(family.draft, q0);
          };
          let got: GenerateResult[];
          try {
            got = await run(b, sampled);
          } finally {
            target.forward = forward;
            target.createSequence = createSequence;
            target.forkSequence = forkSequence;
            family.draft.forkSequence = draftFork;
          }
          if (name.startsWith('draft') || name.startsWith('hybrid')) assert.ok(draftForks > 0, `${what}: the draft's cache forked`);
          got.forEach((g, i) => {
            assert.deepStrictEqual(Array.from(g.tokens), Array.from(want[i]!.tokens), `${what}, request ${i}: tokens`);
            // The speculator's state started from the source's (Speculator.shareFrom): the same drafts.
            assert.strictEqual(g.stats.acceptedDraftTokens, want[i]!.stats.acceptedDraftTokens, `${what}, request ${i}: drafts accepted`);
            if (want[i]!.logprobs) {
              assert.deepStrictEqual(Array.from(g.logprobs!.token), Array.from(want[i]!.logprobs!.token), `${what}, request ${i}: log-probabilities`);
              assert.deepStrictEqual(Array.from(g.logprobs!.topIds), Array.from(want[i]!.logprobs!.topIds), `${what}, request ${i}: top ids`);
            }
            if (want[i]!.promptLogprobs) assert.deepStrictEqual(Array.from(g.promptLogprobs!.token), Array.from(want[i]!.promptLogprobs!.token), `${what}, request ${i}: prompt log-probabilities`);
          });
          assert.strictEqual(a.metrics.sharedPromptTokens, 0, `${what}: prefixSharing false shares nothing`);
          // Each request's stats say what it took (DecodeStats.cachedPromptTokens).
          assert.ok(want.every((w) => w.stats.cachedPromptTokens === 0));
          assert.strictEqual(got.reduce((n, g) => n + g.stats.cachedPromptTokens, 0), b.metrics.sharedPromptTokens, `${what}: per-request cached tokens`);
          assert.ok(got[1]!.stats.cachedPromptTokens >= longer.length - 2 && got[7]!.stats.cachedPromptTokens === 0, `${what}: request 1 shares request 0's prompt, 7 nothing`);
          // Requests 1, 2, 3, 4, 5 and 6 share (the choices of request 0's prompt: 35 tokens; the
          // others the system prompt or more; EAGLE one token fewer each, shareNeedsNextToken); 7
          // shares nothing, 8 reads its prompt's rows.
          const shared = b.metrics.sharedPromptTokens;
          const less = name.startsWith('EAGLE') ? 5 : 0;
          assert.ok(shared >= 2 * (longer.length - 1) + 3 * system.length - less, `${what}: ${shared} prompt tokens shared`);
          // The new sequences' first forwards fed the prompts less what they shared (request 8's
          // last prompt token comes after its prompt's rows: one token less).
          const promptTokens = prompts.reduce((n, p) => n + p.prompt.length, 0);
          assert.strictEqual(firstFeeds, promptTokens - shared - 1, `${what}: prompt tokens fed`);
        });
        const dkv = family.draft.kvInfo();
        assert.strictEqual(dkv.freePages, dkv.totalPages, `${what}: draft KV pages free`);
      }
    }
  });

  it('prompt log-probabilities (lm-eval\'s loglikelihood: one context, several continuations): the shared prefix\'s entries are the source\'s, the rest computed; the same as without sharing', async () => {
    const { target } = family;
    const context = [...system, ...ids(10)];
    // (First tokens distinct, and not the later request's 7: the context is all any two have in common.)
    const conts = [ids(3), ids(5), ids(1), ids(4)];
    conts.forEach((c, i) => (c[0] = 10 + 7 * i));
    for (const maxNewTokens of [0, 1]) {
      await withEngines(target, () => undefined, { prefixCache: 2 }, `maxNewTokens ${maxNewTokens}`, async (a, b) => {
        // k 2 on the first (the source), then k 1 and 2 (they share), and one with k 3 (more
        // alternatives than the source recorded: it reads its prompt whole).
        const ks = [2, 1, 2, 3];
        const run = (e: Engine): Promise<GenerateResult[]> => Promise.all(conts.map((c, i) => e.submit([...context, ...c], { maxNewTokens, promptLogprobs: ks[i]! })));
        const want = await run(a);
        const got = await run(b);
        got.forEach((g, i) => {
          const w = want[i]!;
          assert.strictEqual(g.promptLogprobs!.token.length, context.length + conts[i]!.length - 1);
          assert.deepStrictEqual(Array.from(g.promptLogprobs!.token), Array.from(w.promptLogprobs!.token), `${maxNewTokens}: request ${i}: entries`);
          assert.deepStrictEqual(Array.from(g.promptLogprobs!.topIds), Array.from(w.promptLogprobs!.topIds), `${maxNewTokens}: request ${i}: top ids`);
          assert.deepStrictEqual(Array.from(g.promptLogprobs!.topLogprobs), Array.from(w.promptLogprobs!.topLogprobs), `${maxNewTokens}: request ${i}: top log-probabilities`);
          assert.deepStrictEqual(Array.from(g.tokens), Array.from(w.tokens));
        });
        // Requests 1 and 2 shared all of the context but its last token.
        assert.strictEqual(b.metrics.sharedPromptTokens, 2 * (context.length - 1), `${maxNewTokens}: shared`);
        // A later request shares from a kept one.
        const later = await b.submit([...context, 7, 8], { maxNewTokens, promptLogprobs: 1 });
        const laterWant = await a.submit([...context, 7, 8], { maxNewTokens, promptLogprobs: 1 });
        assert.deepStrictEqual(Array.from(later.promptLogprobs!.token), Array.from(laterWant.promptLogprobs!.token), `${maxNewTokens}: a later request`);
        assert.strictEqual(b.metrics.sharedPromptTokens, 3 * (context.length - 1), `${maxNewTokens}: shared from a kept one`);
      });
    }
  });

  it('prefixCache: finished sequences kept for later requests (a chat\'s next turn starts after the last one\'s tokens); the output without it; closed and idle, the pages come back', async () => {
    const { target } = family;
    for (const [name, make] of cases()) {
      await withEngines(target, make, { prefixCache: 4 }, name, async (a, b) => {
        // Turn 1, then turn 2 = turn 1's prompt + its answer + a new question, then a turn 2 of
        // another conversation sharing only the system prompt.
        const turn1 = [...system, ...ids(6)];
        const o1 = await a.submit(turn1, { maxNewTokens: 12, ignoreEos: true });
        const g1 = await b.submit(turn1, { maxNewTokens: 12, ignoreEos: true });
        assert.deepStrictEqual(Array.from(g1.tokens), Array.from(o1.tokens), `${name}: turn 1`);
        assert.strictEqual(b.prefixCached, 1, `${name}: turn 1 kept`);
        const turn2 = [...turn1, ...o1.tokens, ...ids(5)];
        const before = b.metrics.sharedPromptTokens;
        // The draft model's forwards count the tokens it reads (a kept draft cache: the new ones only).
        let draftTokens = 0;
        const draftForward = family.draft.forward;
        family.draft.forward = async (inputs, o) => {
          for (const i of inputs) draftTokens += i.tokens.length;
          return draftForward.call(family.draft, inputs, o);
        };
        let o2: GenerateResult, g2: GenerateResult, aDraft: number;
        try {
          o2 = await a.submit(turn2, { maxNewTokens: 12, ignoreEos: true, sampling: { temperature: 0.8 }, seed: 9 });
          aDraft = draftTokens;
          draftTokens = 0;
          g2 = await b.submit(turn2, { maxNewTokens: 12, ignoreEos: true, sampling: { temperature: 0.8 }, seed: 9 });
        } finally {
          family.draft.forward = draftForward;
        }
        assert.deepStrictEqual(Array.from(g2.tokens), Array.from(o2.tokens), `${name}: turn 2`);
        // The speculator's state kept with turn 1 (Speculator.keep): the same drafts, and a draft
        // model reads only what turn 1 did not.
        assert.strictEqual(g2.stats.acceptedDraftTokens, o2.stats.acceptedDraftTokens, `${name}: turn 2's drafts accepted`);
        if (name.startsWith('draft') || name.startsWith('hybrid')) {
          assert.ok(draftTokens <= aDraft - (turn1.length + o1.tokens.length - 8), `${name}: the draft read ${draftTokens} tokens for turn 2 with turn 1 kept, ${aDraft} without`);
        }
        // (Turn 1's cache holds its prompt and all its answer but the last token, which was never fed.)
        assert.strictEqual(b.metrics.sharedPromptTokens - before, turn1.length + o1.tokens.length - 1, `${name}: turn 2 started after turn 1`);
        // (Its first token after the system prompt other than turn 1's: the system prompt is all it shares.)
        const other = [...system, ...ids(4)];
        if (other[system.length] === turn1[system.length]) other[system.length] = other[system.length] === 3 ? 4 : 3;
        const before2 = b.metrics.sharedPromptTokens;
        assert.deepStrictEqual(Array.from((await b.submit(other, { maxNewTokens: 4 })).tokens), Array.from((await a.submit(other, { maxNewTokens: 4 })).tokens), `${name}: another conversation`);
        // (EAGLE shares one token fewer than in common: Speculator.shareNeedsNextToken.)
        assert.strictEqual(b.metrics.sharedPromptTokens - before2, system.length - (name.startsWith('EAGLE') ? 1 : 0), `${name}: the system prompt shared`);
        assert.ok(b.prefixCached >= 2 && b.prefixCached <= 4);
        const kv = target.kvInfo();
        assert.ok(kv.freePages < kv.totalPages, `${name}: kept sequences hold pages`);
      });
    }
    assert.throws(() => new Engine({ model: target, prefixCache: -1 }), /prefixCache: expected an integer >= 0/);
  });

  it('prefixCache on a small KV cache: kept sequences give way to new requests and steps (none fails, no live sequence is preempted for them); the output without it', async () => {
    const small = await LlamaModel.load(defaultModelPaths().target, { device: 'cpu', maxSequences: 16, kvPages: 24 });
    try {
      await withEngines(small, () => undefined, { prefixCache: 16, maxBatch: 4 }, 'small cache', async (a, b) => {
        const kv = small.kvInfo();
        // Distinct prompts of ~4 pages each: kept, they would need far more pages than the cache has.
        const reqs = Array.from({ length: 12 }, (_, i) => [...ids(2 * kv.pageSize + 5), i]);
        const wave = reqs.slice(-4).map((p, i) => [...p.slice(0, -1), 100 + i]);
        // The reference first (engine a, sharing nothing), then b alone: its kept sequences make
        // room for its own requests.
        const want: GenerateResult[] = [];
        for (const p of reqs) want.push(await a.submit(p, { maxNewTokens: 10, ignoreEos: true }));
        const wantWave = await Promise.all(wave.map((p) => a.submit(p, { maxNewTokens: 20, ignoreEos: true })));
        for (const [i, p] of reqs.entries()) {
          const got = await b.submit(p, { maxNewTokens: 10, ignoreEos: true });
          assert.deepStrictEqual(Array.from(got.tokens), Array.from(want[i]!.tokens), `request ${i}`);
        }
        // Then several at once, sharing a prefix with a kept one where it still is.
        const shared0 = b.metrics.sharedPromptTokens;
        const got = await Promise.all(wave.map((p) => b.submit(p, { maxNewTokens: 20, ignoreEos: true })));
        got.forEach((g, i) => assert.deepStrictEqual(Array.from(g.tokens), Array.from(wantWave[i]!.tokens), `wave ${i}`));
        assert.ok(b.metrics.sharedPromptTokens > shared0, 'the wave shared kept prefixes');
        assert.ok(b.prefixCached < 16, `${b.prefixCached} kept: the others gave way`);
        // Sequences that grow past what their admission took: kept prefixes give way to their
        // steps too (short prompts admitted at once, long outputs).
        for (const p of reqs.slice(0, 6)) await b.submit(p, { maxNewTokens: 2 });
        assert.ok(small.kvInfo().freePages < 6 && b.prefixCached >= 4, 'kept sequences hold most pages');
        const growers = [0, 1, 2].map((i) => [...ids(3), 200 + i]);
        // Each grows to ~7 pages: together nearly the whole cache.
        const long = Math.floor(((kv.totalPages - 3) * kv.pageSize) / growers.length) - 6;
        const wantLong = await Promise.all(growers.map((p) => a.submit(p, { maxNewTokens: long, ignoreEos: true })));
        const gotLong = await Promise.all(growers.map((p) => b.submit(p, { maxNewTokens: long, ignoreEos: true })));
        gotLong.forEach((g, i) => assert.deepStrictEqual(Array.from(g.tokens), Array.from(wantLong[i]!.tokens), `grower ${i}`));
        assert.strictEqual(b.metrics.failed, 0);
        assert.strictEqual(b.metrics.preemptions, 0, 'no live sequence preempted');
      });
    } finally {
      small.dispose();
    }
  });

  it('preempted requests coming back share too (n choices on a cache too small for them all): the output without sharing', async () => {
    const small = await LlamaModel.load(defaultModelPaths().target, { device: 'cpu', maxSequences: 16, kvPages: 14 });
    try {
      await withEngines(small, () => undefined, {}, 'preempted', async (a, b) => {
        const prompt = ids(40);
        const run = (e: Engine): Promise<GenerateResult[]> => Promise.all([0, 1, 2, 3].map((s) => e.submit(prompt, { maxNewTokens: 70, ignoreEos: true, sampling: { temperature: 0.9 }, seed: 4, stream: s })));
        const want = await run(a);
        const got = await run(b);
        got.forEach((g, i) => assert.deepStrictEqual(Array.from(g.tokens), Array.from(want[i]!.tokens), `choice ${i}`));
        assert.ok(b.metrics.preemptions > 0, 'preempted');
        // More than the first admission's three forks of the prompt.
        assert.ok(b.metrics.sharedPromptTokens > 3 * (prompt.length - 1), `${b.metrics.sharedPromptTokens} tokens shared`);
      });
    } finally {
      small.dispose();
    }
  });

  it('a speculator without room to fork its own cache starts fresh: the request still shares the target\'s, and its output is the same', async () => {
    const { target, draft } = family;
    await withEngines(target, () => new DraftModelSpeculator({ draft, k: 4 }), {}, 'no draft room', async (a, b) => {
      const want = await run(a, false);
      const fork = draft.forkSequence;
      let refused = 0;
      draft.forkSequence = () => {
        refused++;
        throw Object.assign(new Error('draft KV cache full'), { code: 'E_KV_FULL' });
      };
      let got: GenerateResult[];
      try {
        got = await run(b, false);
      } finally {
        draft.forkSequence = fork;
      }
      assert.ok(refused > 0 && b.metrics.sharedPromptTokens > 0, `${refused} forks refused, ${b.metrics.sharedPromptTokens} target tokens shared`);
      got.forEach((g, i) => assert.deepStrictEqual(Array.from(g.tokens), Array.from(want[i]!.tokens), `request ${i}`));
    });
    const dkv = draft.kvInfo();
    assert.strictEqual(dkv.freePages, dkv.totalPages, 'draft KV pages free');
  });

  it('randomized: waves of requests over a few shared prefixes and chat follow-ups, every strategy, small caches, a prefix cache or none: the output without sharing, all pages back', async () => {
    const { target: big, heads, eagle } = family;
    const paths = defaultModelPaths();
    const bigDraft = family.draft;
    const r = rng(testSeed + 77);
    const int = (a: number, b: number): number => a + Math.floor(r() * (b - a + 1));
    type Q = { p: number[]; o: RequestOptions & { maxNewTokens: number }; out?: number[] };
    for (let it = 0; it < 24; it++) {
      const pageSize = int(0, 1) === 0 ? 4 : 16;
      // (A draft cache that holds any one sequence: a draft short of room for a lone sequence fails it.)
      const draft = await LlamaModel.load(paths.draft, { device: 'cpu', maxSequences: 16, pageSize, kvPages: int(Math.ceil(300 / pageSize), Math.ceil(900 / pageSize)) });
      const kvPages = int(Math.ceil(80 / pageSize), Math.ceil(400 / pageSize));
      const tight = await LlamaModel.load(paths.target, { device: 'cpu', maxSequences: 16, pageSize, kvPages });
      const k = int(1, 5);
      const eagleShape = { topK: int(1, 4), depth: int(1, 4), totalTokens: int(2, 16) };
      const strategies: [string, (d: LlamaModel) => Speculator | undefined][] = [
        ['plain', () => undefined],
        ['draft model', (d) => new DraftModelSpeculator({ draft: d, k })],
        ['hybrid', (d) => new HybridSpeculator({ draft: d, draftSpeculator: new PromptLookupSpeculator({ maxNgram: 2 }), k })],
        ['EAGLE', () => new EagleSpeculator({ head: eagle, ...eagleShape })],
        ['Medusa', () => new MedusaSpeculator({ heads, choices: 'small_8' })],
        ['lookahead', () => new LookaheadSpeculator({ W: 3, N: 3, G: 3, sizing: 'fixed' })],
      ];
      const [name, make] = strategies[it % strategies.length]!;
      const bases = Array.from({ length: int(1, 3) }, () => Array.from({ length: int(16, 40) }, () => int(3, 290)));
      const mk = (i: number): Q => {
        const b = bases[int(0, bases.length - 1)]!;
        const sampled = r() < 0.5;
        return {
          p: [...b.slice(0, int(10, b.length)), ...Array.from({ length: int(0, 10) }, () => int(3, 290))],
          o: { maxNewTokens: int(1, 30), ignoreEos: true, ...(sampled ? { sampling: { temperature: 0.9 }, seed: int(0, 99), stream: i } : {}), ...(r() < 0.15 ? { logprobs: 2 } : {}), ...(r() < 0.1 ? { promptLogprobs: 1 } : {}) },
        };
      };
      const prefixCache = int(0, 4);
      const spec = make(draft);
      const refSpec = make(bigDraft);
      const what = `${name}, pages ${kvPages} of ${pageSize}, prefixCache ${prefixCache}`;
      const engine = new Engine({ model: tight, ...(spec ? { speculator: spec } : {}), prefixCache, maxBatch: int(1, 8) });
      const ref = new Engine({ model: big, ...(refSpec ? { speculator: refSpec } : {}), prefixSharing: false });
      const done: Q[] = [];
      try {
        for (let w = int(1, 4); w > 0; w--) {
          const wave = Array.from({ length: int(1, 5) }, (_, i) => mk(i));
          // Chat follow-ups: an earlier request's prompt and output and a few tokens more.
          for (const q of wave) {
            if (done.length > 0 && r() < 0.4) {
              const x = done[int(0, done.length - 1)]!;
              q.p = [...x.p, ...x.out!, ...Array.from({ length: int(1, 5) }, () => int(3, 290))];
            }
            q.o.maxNewTokens = Math.max(1, Math.min(q.o.maxNewTokens, 250 - q.p.length));
          }
          const want = await Promise.all(wave.map((q) => ref.submit(q.p, q.o)));
          const preempted = engine.metrics.preemptions;
          const got = await Promise.allSettled(wave.map((q) => engine.submit(q.p, q.o)));
          // Without preemptions (a recomputed sequence's speculator starts over), the same drafts.
          const sameDrafts = engine.metrics.preemptions === preempted;
          got.forEach((g, i) => {
            const q = wave[i]!, wt = want[i]!;
            if (g.status === 'rejected') {
              // Only a request that never fits the small cache, with its output and a tree.
              const fits = Math.ceil((q.p.length + q.o.maxNewTokens + engine.treeReserveTokens) / pageSize) <= kvPages;
              assert.ok((g.reason as { code?: string }).code === 'E_KV_FULL' && !fits, `${what}: request ${i}: ${(g.reason as Error).stack}`);
              return;
            }
            assert.deepStrictEqual(Array.from(g.value.tokens), Array.from(wt.tokens), `${what}: request ${i}: tokens`);
            if (sameDrafts) assert.strictEqual(g.value.stats.acceptedDraftTokens, wt.stats.acceptedDraftTokens, `${what}: request ${i}: drafts accepted`);
            if (wt.logprobs) assert.deepStrictEqual(Array.from(g.value.logprobs!.token), Array.from(wt.logprobs.token), `${what}: request ${i}: log-probabilities`);
            if (wt.promptLogprobs) assert.deepStrictEqual(Array.from(g.value.promptLogprobs!.token), Array.from(wt.promptLogprobs.token), `${what}: request ${i}: prompt log-probabilities`);
            done.push({ ...q, out: Array.from(g.value.tokens) });
          });
        }
      } finally {
        engine.close();
        ref.close();
        await Promise.all([engine.idle(), ref.idle()]);
        spec?.dispose();
        refSpec?.dispose();
      }
      const kv = tight.kvInfo(), dkv = draft.kvInfo();
      assert.strictEqual(kv.freePages, kv.totalPages, `${what}: target pages back`);
      assert.strictEqual(dkv.freePages, dkv.totalPages, `${what}: draft pages back`);
      tight.dispose();
      draft.dispose();
    }
  });

  it('sources that finish, or are preempted, first leave their forks whole; a speculator that reads every prompt row (readsPromptRows) shares nothing', async () => {
    const { target } = family;
    // A short-lived source (2 tokens) and long forks of it.
    const a = new Engine({ model: target, prefixSharing: false });
    const b = new Engine({ model: target });
    try {
      const reqs = [
        { p: longer, n: 2 },
        { p: [...longer, 11], n: 40 },
        { p: [...longer, 12, 13], n: 40 },
      ];
      const want = await Promise.all(reqs.map((x) => a.submit(x.p, { maxNewTokens: x.n, ignoreEos: true })));
      const got = await Promise.all(reqs.map((x) => b.submit(x.p, { maxNewTokens: x.n, ignoreEos: true })));
      got.forEach((g, i) => assert.deepStrictEqual(Array.from(g.tokens), Array.from(want[i]!.tokens), `request ${i}`));
      assert.ok(b.metrics.sharedPromptTokens >= 2 * longer.length);
    } finally {
      a.close();
      b.close();
    }
    let rowsRead = 0;
    const readsRows: Speculator = {
      name: 'reads every prompt row',
      wantsHidden: false,
      readsPromptRows: true,
      attach() {},
      async prefill(seqs, output) {
        rowsRead += output.indptr[seqs.length] as number;
      },
      propose: (seqs) => ({ proposals: seqs.map((q) => ({ tokens: Int32Array.of(q.history[q.history.length - 1] as number), parents: Int32Array.of(-1) })) }),
      update() {},
      release() {},
      dispose() {},
    };
    const e = new Engine({ model: target, speculator: readsRows });
    try {
      await Promise.all([e.submit(longer, { maxNewTokens: 8 }), e.submit(longer, { maxNewTokens: 8 })]);
      assert.strictEqual(e.metrics.sharedPromptTokens, 0);
      assert.strictEqual(rowsRead, 2 * longer.length, 'every prompt row read');
    } finally {
      e.close();
    }
    assert.throws(() => new Engine({ model: target, prefixSharing: 1 as unknown as boolean }), /prefixSharing: expected a boolean/);
    const kv = target.kvInfo();
    assert.strictEqual(kv.freePages, kv.totalPages, 'KV pages free');
  });
});

describeCuda('prefix sharing (the engine)', () => {
  it('on CUDA: n choices and a shared system prompt give the output without sharing (greedy and sampled), prompt log-probabilities within f32 rounding; all pages back', async function () {
    this.timeout(300000);
    const target = await LlamaModel.load(defaultModelPaths().target, { device: 'cuda', maxSequences: 16 });
    try {
      const r = rng(testSeed + 8);
      const ids = (n: number): number[] => Array.from({ length: n }, () => 3 + Math.floor(r() * 290));
      const system = ids(40);
      const prompts = [[...system, ...ids(6)], [...system, ...ids(6)], [...system, ...ids(9)]];
      for (const sampled of [false, true]) {
        await withEngines(target, () => undefined, { prefixCache: 4 }, sampled ? 'sampled' : 'greedy', async (a, b) => {
          const run = (e: Engine): Promise<GenerateResult[]> =>
            Promise.all([0, 1, 2].flatMap((s) => prompts.map((p) => e.submit(p, { maxNewTokens: 24, ignoreEos: true, seed: 3, stream: s, ...(sampled ? { sampling: { temperature: 0.8 } } : {}) }))));
          const want = await run(a);
          const got = await run(b);
          got.forEach((g, i) => assert.deepStrictEqual(Array.from(g.tokens), Array.from(want[i]!.tokens), `${sampled ? 'sampled' : 'greedy'}: request ${i}`));
          assert.ok(b.metrics.sharedPromptTokens > 0);
          const lp = await Promise.all(prompts.map((p) => b.submit(p, { maxNewTokens: 0, promptLogprobs: 1 })));
          const lpWant = await Promise.all(prompts.map((p) => a.submit(p, { maxNewTokens: 0, promptLogprobs: 1 })));
          lp.forEach((g, i) => g.promptLogprobs!.token.forEach((v, j) => assert.ok(Math.abs(v - lpWant[i]!.promptLogprobs!.token[j]!) <= 1e-4 * Math.max(1, Math.abs(v)), `prompt ${i}, entry ${j}`)));
        });
      }
      // EAGLE (its head's cache and features forked, Speculator.shareFrom), greedy: the output and
      // the drafts accepted without sharing.
      const eagle = EagleHead.load(defaultModelPaths().eagle, { device: 'cuda' });
      try {
        await withEngines(target, () => new EagleSpeculator({ head: eagle, topK: 4, depth: 3, totalTokens: 12 }), { prefixCache: 4 }, 'EAGLE', async (a, b) => {
          const run = (e: Engine): Promise<GenerateResult[]> => Promise.all(prompts.map((p) => e.submit(p, { maxNewTokens: 24, ignoreEos: true })));
          const want = await run(a);
          const got = await run(b);
          const again = await run(b);
          [...got, ...again].forEach((g, i) => {
            const w = want[i % prompts.length]!;
            assert.deepStrictEqual(Array.from(g.tokens), Array.from(w.tokens), `EAGLE: request ${i}: tokens`);
            assert.strictEqual(g.stats.acceptedDraftTokens, w.stats.acceptedDraftTokens, `EAGLE: request ${i}: drafts accepted`);
          });
          assert.ok(b.metrics.sharedPromptTokens > 0);
        });
      } finally {
        eagle.dispose();
      }
    } finally {
      target.dispose();
    }
  });
});

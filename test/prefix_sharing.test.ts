// Prefix sharing (EngineOptions.prefixSharing): a request whose prompt begins with a live sequence's
// tokens starts from a fork of its KV cache. Its output must be the output without sharing, token
// for token and log-probability for log-probability, greedy and sampled, with every strategy that
// shares (EAGLE reads every prompt row and does not), and the pages must all come back.
import * as assert from 'assert';
import { Engine, MIN_SHARED_PREFIX, type RequestOptions } from '../lib/engine/engine';
import type { GenerateResult } from '../lib/decoder';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleSpeculator } from '../lib/strategies/eagle';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import { loadEmbeddedFamily, type EmbeddedFamily } from './fixtures/embedded_family';
import { rng, testSeed } from './helpers';

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
  ];

  it('every strategy, greedy and sampled: the output (tokens, log-probabilities) without sharing; prompt tokens taken from the cache; all pages back', async () => {
    const { target } = family;
    assert.ok(system.length >= MIN_SHARED_PREFIX);
    for (const [name, make] of cases()) {
      for (const sampled of [false, true]) {
        if (sampled && name === 'draft model k=4') continue;  // sampled drafts: other draws, the same distribution (not comparable token for token)
        const what = `${name}${sampled ? ', sampled' : ''}`;
        const a = new Engine({ model: target, ...(make() ? { speculator: make() as Speculator } : {}), prefixSharing: false });
        const b = new Engine({ model: target, ...(make() ? { speculator: make() as Speculator } : {}) });
        try {
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
          let got: GenerateResult[];
          try {
            got = await run(b, sampled);
          } finally {
            target.forward = forward;
            target.createSequence = createSequence;
            target.forkSequence = forkSequence;
          }
          got.forEach((g, i) => {
            assert.deepStrictEqual(Array.from(g.tokens), Array.from(want[i]!.tokens), `${what}, request ${i}: tokens`);
            if (want[i]!.logprobs) {
              assert.deepStrictEqual(Array.from(g.logprobs!.token), Array.from(want[i]!.logprobs!.token), `${what}, request ${i}: log-probabilities`);
              assert.deepStrictEqual(Array.from(g.logprobs!.topIds), Array.from(want[i]!.logprobs!.topIds), `${what}, request ${i}: top ids`);
            }
            if (want[i]!.promptLogprobs) assert.deepStrictEqual(Array.from(g.promptLogprobs!.token), Array.from(want[i]!.promptLogprobs!.token), `${what}, request ${i}: prompt log-probabilities`);
          });
          assert.strictEqual(a.metrics.sharedPromptTokens, 0, `${what}: prefixSharing false shares nothing`);
          // Requests 1, 2, 3, 4, 5 and 6 share (the choices of request 0's prompt: 35 tokens; the
          // others the system prompt or more); 7 shares nothing, 8 reads its prompt's rows.
          const shared = b.metrics.sharedPromptTokens;
          assert.ok(shared >= 2 * (longer.length - 1) + 3 * system.length, `${what}: ${shared} prompt tokens shared`);
          // The new sequences' first forwards fed the prompts less what they shared (request 8's
          // last prompt token comes after its prompt's rows: one token less).
          const promptTokens = prompts.reduce((n, p) => n + p.prompt.length, 0);
          assert.strictEqual(firstFeeds, promptTokens - shared - 1, `${what}: prompt tokens fed`);
        } finally {
          a.close();
          b.close();
        }
        await a.idle();
        await b.idle();
        const kv = target.kvInfo();
        assert.strictEqual(kv.freePages, kv.totalPages, `${what}: KV pages free`);
      }
    }
  });

  it('sources that finish, or are preempted, first leave their forks whole; EAGLE (reads every prompt row) shares nothing', async () => {
    const { target, eagle } = family;
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
    const e = new Engine({ model: target, speculator: new EagleSpeculator({ head: eagle, topK: 4, depth: 3, totalTokens: 12 }) });
    try {
      await Promise.all([e.submit(longer, { maxNewTokens: 8 }), e.submit(longer, { maxNewTokens: 8 })]);
      assert.strictEqual(e.metrics.sharedPromptTokens, 0);
    } finally {
      e.close();
    }
    assert.throws(() => new Engine({ model: target, prefixSharing: 1 as unknown as boolean }), /prefixSharing: expected a boolean/);
    const kv = target.kvInfo();
    assert.strictEqual(kv.freePages, kv.totalPages, 'KV pages free');
  });
});

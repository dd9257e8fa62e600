// Plain steps as native chains (lib/plain_chain.ts): plainGenerate and the engine's plain steps run
// several greedy steps per greedyChain call. Checked against the same model with greedyChain hidden
// (one forward per step from JavaScript): the same tokens, finish reasons and forward counts, with
// stop tokens, maxNewTokens and a full context inside a chain; and for every sized speculator that
// decides to decode plainly, the same tokens and the same per-step statistics and choices as when
// every step goes through propose() and update().
import * as assert from 'assert';

import { ForwardCost, setForwardCost } from '../lib/cost_model';
import { SpeculativeDecoder } from '../lib/decoder';
import type { CausalLM } from '../lib/models/causal_lm';
import { LlamaModel } from '../lib/models/llama';
import { observeChainStep, wholeChains } from '../lib/plain_chain';
import { defaultModelPaths } from '../lib/default_models';
import { plainGenerate } from '../lib/plain';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import { TextTokenizer } from '../lib/tokenizer';
import { rng, testSeed } from './helpers';

/** The model with its chains hidden: every plain step is a forward from JavaScript. */
function withoutChains(model: LlamaModel): CausalLM {
  return new Proxy(model, {
    get(t, k) {
      if (k === 'greedyChain' || k === 'sampledChain') return undefined;
      const v: unknown = Reflect.get(t, k, t);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  }) as unknown as CausalLM;
}

/** Counts the model's greedyChain calls (an own property over the prototype's method). */
function countChains(model: LlamaModel): { calls: number; steps: number } {
  const n = { calls: 0, steps: 0 };
  const orig = model.greedyChain.bind(model);
  (model as { greedyChain: LlamaModel['greedyChain'] }).greedyChain = (inputs, steps, opts) => {
    n.calls++;
    n.steps += Math.max(...steps);
    return orig(inputs, steps, opts);
  };
  return n;
}

/** Forwards that cost next to nothing: no tree pays (linear), and weighing a proposal is dear. */
const nothingPays = (): ForwardCost => ForwardCost.fromFunction((n) => n * 1e-7, { frozen: true });

describe('plain steps as native chains', function () {
  this.timeout(120_000);
  const paths = defaultModelPaths();
  let target: LlamaModel;
  let draft: LlamaModel;
  let heads: MedusaHeads;
  let eagle: EagleHead;
  let chains: { calls: number; steps: number };
  const r = rng(testSeed);
  // Random prompts, and a text prompt whose greedy output runs past 120 tokens (random ones often
  // end at EOS within a few dozen, before a sized speculator's first probe).
  const prompts: Int32Array[] = [3, 9, 5].map((n) => Int32Array.from({ length: n }, () => 4 + Math.floor(r() * 200)));

  before(async () => {
    target = await LlamaModel.load(paths.target, { device: 'cpu', maxSequences: 16 });
    draft = await LlamaModel.load(paths.draft, { device: 'cpu', maxSequences: 16 });
    heads = MedusaHeads.load(paths.medusa, { device: 'cpu' });
    eagle = EagleHead.load(paths.eagle, { device: 'cpu' });
    chains = countChains(target);
    prompts.push(TextTokenizer.load(paths.target)!.encode('once upon a time'));
  });
  after(() => {
    heads?.dispose();
    eagle?.dispose();
    draft?.dispose();
    target?.dispose();
  });
  beforeEach(() => {
    chains.calls = 0;
    chains.steps = 0;
  });

  it('plainGenerate: the tokens, finish reasons and forwards of one step at a time; stop tokens cut a chain', async () => {
    const plain = withoutChains(target);
    const ref = await plainGenerate(plain, prompts, { maxNewTokens: 40 });
    const got = await plainGenerate(target, prompts, { maxNewTokens: 40 });
    assert.deepStrictEqual(got.tokens.map((t) => Array.from(t)), ref.tokens.map((t) => Array.from(t)));
    assert.deepStrictEqual(got.finishReasons, ref.finishReasons);
    assert.deepStrictEqual(got.stats.sequenceForwards, ref.stats.sequenceForwards);
    assert.strictEqual(got.stats.targetForwards, ref.stats.targetForwards);
    assert.ok(chains.calls > 0 && chains.calls < 40, `${chains.calls} chain calls for 40 tokens`);
    // A stop token in the middle of a chain: the tokens after it are dropped.
    // (A random prompt may end at EOS early: the stop token comes from the longest output.)
    const long = ref.tokens.reduce((a, t, i) => (t.length > ref.tokens[a]!.length ? i : a), 0);
    const stop = ref.tokens[long]![ref.tokens[long]!.length >> 1]!;
    const streamed: number[][] = prompts.map(() => []);
    const opts = { maxNewTokens: 40, stopTokens: [stop], onTokens: (i: number, t: Int32Array) => streamed[i]!.push(...t) };
    const refStop = await plainGenerate(plain, prompts, { maxNewTokens: 40, stopTokens: [stop] });
    const gotStop = await plainGenerate(target, prompts, opts);
    assert.deepStrictEqual(gotStop.tokens.map((t) => Array.from(t)), refStop.tokens.map((t) => Array.from(t)));
    assert.deepStrictEqual(gotStop.finishReasons, refStop.finishReasons);
    assert.deepStrictEqual(gotStop.stats.sequenceForwards, refStop.stats.sequenceForwards);
    assert.strictEqual(gotStop.stats.targetForwards, refStop.stats.targetForwards, 'forwards past the stop are not counted');
    assert.strictEqual(gotStop.finishReasons[long], 'stop');
    assert.deepStrictEqual(streamed, gotStop.tokens.map((t) => Array.from(t)), 'onTokens saw exactly the kept tokens');
  });

  it('plainGenerate: a context that fills inside a chain ends as one step at a time does', async () => {
    const small = await LlamaModel.load(paths.target, { device: 'cpu', maxSequences: 4, maxContext: 23 });
    try {
      const ref = await plainGenerate(withoutChains(small), prompts, { maxNewTokens: 40 });
      const got = await plainGenerate(small, prompts, { maxNewTokens: 40 });
      assert.deepStrictEqual(got.tokens.map((t) => Array.from(t)), ref.tokens.map((t) => Array.from(t)));
      assert.deepStrictEqual(got.finishReasons, ref.finishReasons);
      assert.ok(got.finishReasons.includes('context'), `finish reasons ${got.finishReasons}`);
      assert.strictEqual(small.kvInfo().freePages, small.kvInfo().totalPages, 'every sequence freed');
    } finally {
      small.dispose();
    }
  });

  it('the decoder without a speculator: plain steps in chains, the tokens and statistics of plain decoding', async () => {
    const ref = await plainGenerate(withoutChains(target), prompts, { maxNewTokens: 33 });
    const dec = new SpeculativeDecoder({ target });
    const res = await dec.generateBatch(prompts, { maxNewTokens: 33 });
    res.forEach((x, i) => {
      assert.deepStrictEqual(Array.from(x.tokens), Array.from(ref.tokens[i]!), `sequence ${i}`);
      const n = x.tokens.length;
      assert.strictEqual(x.stats.targetForwards, n, 'the prefill and one forward per further token');
      assert.strictEqual(x.stats.newTokens, n);
      assert.deepStrictEqual(x.stats.nodesPerStep, { 1: n - 1 });
    });
    assert.ok(chains.calls > 0 && chains.calls < 32, `${chains.calls} chain calls for 32 steps`);
    // Stop tokens and shouldStop inside a chain.
    const long = ref.tokens.reduce((a, t, i) => (t.length > ref.tokens[a]!.length ? i : a), 0);
    const out = ref.tokens[long]!;
    const stop = out[out.length >> 1]!;
    const one = await dec.generate(prompts[long]!, { maxNewTokens: 33, stopTokens: [stop] }).result;
    assert.deepStrictEqual(Array.from(one.tokens), Array.from(out.subarray(0, out.indexOf(stop) + 1)));
    assert.strictEqual(one.finishReason, 'stop');
    const cut = await dec.generate(prompts[long]!, { maxNewTokens: 33, shouldStop: (t) => t.length === 7 }).result;
    assert.deepStrictEqual(Array.from(cut.tokens), Array.from(out.subarray(0, 7)));
    assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages, 'every sequence freed');
  });

  it('a chain that runs out of KV pages falls back to one step: the same tokens and the same E_KV_FULL as one step at a time', async () => {
    // 3 pages of 16 tokens: room for 48 tokens; the prompt and 60 new ones are asked for.
    const small = await LlamaModel.load(paths.target, { device: 'cpu', maxSequences: 2, kvPages: 3, pageSize: 16 });
    try {
      const run = async (model: CausalLM): Promise<{ tokens: number[]; error: string }> => {
        const tokens: number[] = [];
        let error = '';
        // The text prompt: its greedy output runs past the cache without an EOS.
        const g = new SpeculativeDecoder({ target: model }).generate(prompts[3]!, { maxNewTokens: 60 });
        try {
          for await (const chunk of g) tokens.push(...chunk);
          await g.result;
        } catch (e) {
          error = (e as { code?: string }).code ?? String(e);
        }
        return { tokens, error };
      };
      const ref = await run(withoutChains(small));
      const n0 = chains.calls;
      const got = await run(small);
      assert.strictEqual(ref.error, 'E_KV_FULL');
      assert.deepStrictEqual(got, ref);
      assert.strictEqual(chains.calls, n0, 'the counted model is another one');
      assert.strictEqual(small.kvInfo().freePages, small.kvInfo().totalPages, 'every sequence freed');
    } finally {
      small.dispose();
    }
  });

  it('sampled plainGenerate and the sampled decoder chain, with the draws of one step at a time: the same tokens', async () => {
    const opts = { maxNewTokens: 40, temperature: 0.9, topK: 20, seed: testSeed % 1000 };
    const ref = await plainGenerate(withoutChains(target), prompts, opts);
    let sampledChains = 0;
    const orig = target.sampledChain.bind(target);
    (target as { sampledChain: LlamaModel['sampledChain'] }).sampledChain = (...args) => {
      sampledChains++;
      return orig(...args);
    };
    try {
      const got = await plainGenerate(target, prompts, opts);
      assert.deepStrictEqual(got.tokens.map((t) => Array.from(t)), ref.tokens.map((t) => Array.from(t)));
      assert.deepStrictEqual(got.finishReasons, ref.finishReasons);
      assert.ok(sampledChains > 0 && sampledChains < 40, `${sampledChains} sampled chains`);
      // The decoder's sampled plain steps draw as the sample op does at each token's counter
      // (spec_math.h): chained or one at a time, and with deterministic drafts verified in between,
      // plainGenerate's tokens (sequence i of a batch: stream (seed, i)).
      const sampling = { temperature: opts.temperature, topK: opts.topK, seed: opts.seed };
      sampledChains = 0;
      const dec = await new SpeculativeDecoder({ target, sampling }).generateBatch(prompts, { maxNewTokens: 40 });
      dec.forEach((x, i) => assert.deepStrictEqual(Array.from(x.tokens), Array.from(ref.tokens[i]!), `decoder, sequence ${i}`));
      assert.ok(sampledChains > 0 && chains.calls === 0, `${sampledChains} sampled chains, ${chains.calls} greedy ones`);
      const unchained = await new SpeculativeDecoder({ target: withoutChains(target), sampling }).generateBatch(prompts, { maxNewTokens: 40 });
      unchained.forEach((x, i) => assert.deepStrictEqual(Array.from(x.tokens), Array.from(ref.tokens[i]!), `decoder one step at a time, sequence ${i}`));
      for (const [name, speculator] of [
        ['sized Medusa', new MedusaSpeculator({ heads })],
        ['Medusa mc_sim_7b_63', new MedusaSpeculator({ heads, choices: 'mc_sim_7b_63' })],
        ['sized lookahead', new LookaheadSpeculator({ W: 5, N: 3, G: 5 })],
        ['sized prompt lookup', new PromptLookupSpeculator({ maxNgram: 2 })],
      ] as const) {
        const got = await new SpeculativeDecoder({ target, speculator, sampling }).generateBatch(prompts, { maxNewTokens: 40 });
        got.forEach((x, i) => assert.deepStrictEqual(Array.from(x.tokens), Array.from(ref.tokens[i]!), `${name}, sequence ${i}`));
        if (name.startsWith('Medusa')) assert.ok(got.some((x) => x.stats.acceptedDraftTokens > 0), `${name}: drafts accepted`);
      }
    } finally {
      delete (target as { sampledChain?: unknown }).sampledChain;
    }
  });

  const makers: [string, () => Speculator, (s: Speculator) => unknown][] = [
    ['draft model', () => new DraftModelSpeculator({ draft }), (s) => [...(s as DraftModelSpeculator).kHistory.values()]],
    ['Medusa', () => new MedusaSpeculator({ heads }), () => undefined],
    ['lookahead', () => new LookaheadSpeculator({ W: 5, N: 3, G: 5 }), () => undefined],
    ['prompt lookup', () => new PromptLookupSpeculator({ maxNgram: 2 }), () => undefined],
  ];
  for (const [name, make, trace] of makers) {
    it(`${name}, sized, deciding to decode plainly: chains, and every step's choice as without them`, async () => {
      const plain = withoutChains(target);
      const run = async (model: CausalLM): Promise<{ tokens: number[][]; stats: unknown[]; trace: unknown }> => {
        setForwardCost(model, nothingPays());
        const spec = make();
        const dec = new SpeculativeDecoder({ target: model, speculator: spec });
        try {
          const res = await dec.generateBatch(prompts, { maxNewTokens: 120 });
          return {
            tokens: res.map((x) => Array.from(x.tokens)),
            // The per-step record: steps by size, drafts proposed and accepted per depth.
            stats: res.map((x) => [x.stats.targetForwards, x.stats.nodesPerStep, x.stats.proposedPerPosition, x.stats.acceptedPerPosition]),
            trace: trace(spec),
          };
        } finally {
          dec.dispose();
        }
      };
      const ref = await run(plain);
      assert.strictEqual(chains.calls, 0);
      // Plain steps taken one at a time with chains at hand: every sequence's root alone, no hidden
      // states asked for (a step whose heads run after it needs them, and a chain returns none).
      const lone: number[] = [];
      const forward = target.forward.bind(target);
      (target as { forward: LlamaModel['forward'] }).forward = (inputs, opts) => {
        if (opts?.hidden !== true && inputs.every((x) => x.tokens.length === 1)) lone.push(inputs.length);
        return forward(inputs, opts);
      };
      let got: Awaited<ReturnType<typeof run>>;
      try {
        got = await run(target);
      } finally {
        delete (target as { forward?: unknown }).forward;
      }
      assert.deepStrictEqual(lone, [], 'plain steps outside the chains (batch sizes)');
      assert.deepStrictEqual(got.tokens, ref.tokens);
      assert.deepStrictEqual(got.stats, ref.stats, 'the same choices step by step');
      if (Array.isArray(ref.trace)) {
        // The draft's per-step lengths; a chain that ran past a stop token adds plain steps (0) at the end.
        (ref.trace as number[][]).forEach((ks, i) => {
          const g = (got.trace as number[][])[i] as number[];
          assert.deepStrictEqual(g.slice(0, ks.length), ks, `sequence ${i}: draft lengths`);
          assert.ok(g.slice(ks.length).every((k) => k === 0), `sequence ${i}: ${g.slice(ks.length)} after the output`);
        });
      }
      assert.ok(chains.calls > 0, 'plain steps ran as chains');
      // Probes (a step that proposes) still happen between the chains (lookahead has none: it
      // only weighs again, to a plain step on this curve).
      if (name === 'lookahead') return;
      const proposed = (ref.stats as [number, Record<number, number>][]).some(([, sizes]) => Object.keys(sizes).length > 1);
      assert.ok(proposed, `some step proposed a tree (sizes ${JSON.stringify(ref.stats)})`);
      assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages, 'every sequence freed');
    });
  }
  // (EAGLE is not in the list above: its plain steps one at a time return the features its draft
  // reads, a chain's return none, so its probes draft from other context and may choose otherwise.)
  it("EAGLE, sized, choosing plain at a new sequence's first step: that step opens a native chain", async () => {
    setForwardCost(target, nothingPays());
    const prompt = prompts[prompts.length - 1] as Int32Array;
    const ref = await plainGenerate(withoutChains(target), [prompt], { maxNewTokens: 60 });
    const log: string[] = [];
    const forward = target.forward.bind(target);
    (target as { forward: LlamaModel['forward'] }).forward = (inputs, opts) => {
      log.push(`forward ${inputs.map((x) => x.tokens.length).join(',')}`);
      return forward(inputs, opts);
    };
    const chain = target.greedyChain.bind(target);
    (target as { greedyChain: LlamaModel['greedyChain'] }).greedyChain = (inputs, steps, opts) => {
      log.push('chain');
      return chain(inputs, steps, opts);
    };
    const dec = new SpeculativeDecoder({ target, speculator: new EagleSpeculator({ head: eagle }) });
    try {
      const [got] = await dec.generateBatch([prompt], { maxNewTokens: 60 });
      assert.deepStrictEqual(Array.from(got!.tokens), Array.from(ref.tokens[0]!));
      // The prefill, then the chain (until 2026-12-06 a lone root's forward of its own came first).
      assert.deepStrictEqual(log.slice(0, 2), [`forward ${prompt.length}`, 'chain'], log.join(' | '));
      // (60 tokens in chains of up to 16 steps, a probe and the step before it: ~8 calls.)
      assert.ok(log.length <= 14, `${log.length} calls: ${log.join(' | ')}`);
    } finally {
      dec.dispose();
      delete (target as { forward?: unknown }).forward;
      delete (target as { greedyChain?: unknown }).greedyChain;
      chains = countChains(target);
    }
  });
  it('re-check intervals after a plain choice end where a chain ends (wholeChains)', () => {
    const model = {} as CausalLM;
    assert.strictEqual(wholeChains(model, 1, 56), 56, 'no cost model: one step a chain');
    setForwardCost(model, ForwardCost.fromFunction(() => 1e-4));  // 2 ms chains: CHAIN_MAX_STEPS (16) steps
    assert.deepStrictEqual([0, 7, 15, 16, 56].map((n) => wholeChains(model, 1, n)), [15, 15, 15, 31, 63]);
    observeChainStep(model, 2, 1e-3);  // chains of two sequences timed: 2 steps a chain
    assert.deepStrictEqual([7, 56].map((n) => wholeChains(model, 2, n)), [7, 57]);
    observeChainStep(model, 1, 3e-3);  // a step longer than a chain's time: one step a chain
    assert.strictEqual(wholeChains(model, 1, 56), 56);
    assert.strictEqual(wholeChains(undefined, 1, 56), 56);
  });
});

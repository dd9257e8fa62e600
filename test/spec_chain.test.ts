// Greedy draft-model speculation as native chains (CausalLM.speculativeChain, cpp/model/spec_chain.cc):
// several speculative steps per call. Checked against plain greedy decoding (the tokens), against
// the same decoder with speculativeChain hidden (every step through propose/forward/verify/commit/
// update in JavaScript: the same tokens, statistics and draft lengths step by step, stop tokens and
// maxNewTokens inside a chain included), and for the call's own contract: budgets, maxSteps, both
// caches' lengths, and its errors.
import * as assert from 'assert';

import { ForwardCost, setForwardCost } from '../lib/cost_model';
import { SpeculativeDecoder } from '../lib/decoder';
import { defaultModelPaths } from '../lib/default_models';
import type { CausalLM, SpecChainSequence } from '../lib/models/causal_lm';
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { penalize, topK, type Penalties } from '../lib/sampling';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import type { SamplingConfig, Speculator } from '../lib/strategies/speculator';
import { Tensor } from '../lib/tensor';
import { TextTokenizer } from '../lib/tokenizer';
import { describeCuda, rng, testSeed } from './helpers';

/** The model with speculativeChain and medusaChain hidden: the engine steps from JavaScript. */
function withoutSpecChains(model: LlamaModel): CausalLM {
  return new Proxy(model, {
    get(t, k) {
      if (k === 'speculativeChain' || k === 'medusaChain') return undefined;
      const v: unknown = Reflect.get(t, k, t);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  }) as unknown as CausalLM;
}

/** A batch decoded with penalties (greedy, or sampled): per sequence its tokens and step statistics, to compare two paths. */
async function penalizedRun(model: CausalLM, spec: Speculator, prompts: readonly Int32Array[], penalties: Penalties, sampling: SamplingConfig | undefined, maxNewTokens: number): Promise<unknown[][]> {
  try {
    const dec = new SpeculativeDecoder({ target: model, speculator: spec, penalties, ...(sampling ? { sampling } : {}) });
    const out = await dec.generateBatch(prompts, { maxNewTokens });
    return out.map((x) => [Array.from(x.tokens), x.stats.targetForwards, x.stats.acceptedDraftTokens, x.stats.nodesPerStep, x.stats.acceptedPerPosition]);
  } finally {
    spec.dispose?.();
  }
}

/** Counts the model's medusaChain calls (an own property over the prototype's method: delete it after). */
function countMedusaChains(model: LlamaModel): { calls: number } {
  const n = { calls: 0 };
  const orig = model.medusaChain.bind(model);
  (model as { medusaChain: LlamaModel['medusaChain'] }).medusaChain = (...a) => {
    n.calls++;
    return orig(...a);
  };
  return n;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
  return 'no error';
}

describe('greedy draft-model speculation as native chains', function () {
  this.timeout(120_000);
  const paths = defaultModelPaths();
  let target: LlamaModel;
  let draft: LlamaModel;
  let calls = { n: 0, steps: 0 };
  const r = rng(testSeed);
  const prompts: Int32Array[] = [4, 11, 6].map((n) => Int32Array.from({ length: n }, () => 4 + Math.floor(r() * 300)));

  before(async () => {
    target = await LlamaModel.load(paths.target, { device: 'cpu', maxSequences: 16 });
    draft = await LlamaModel.load(paths.draft, { device: 'cpu', maxSequences: 16 });
    prompts.push(TextTokenizer.load(paths.target)!.encode('once upon a time'));
    const orig = target.speculativeChain.bind(target);
    (target as { speculativeChain: LlamaModel['speculativeChain'] }).speculativeChain = async (d, seqs, opts) => {
      const res = await orig(d, seqs, opts);
      calls.n++;
      calls.steps += res.steps;
      return res;
    };
  });
  after(() => {
    draft?.dispose();
    target?.dispose();
  });
  beforeEach(() => {
    calls = { n: 0, steps: 0 };
  });

  /** A sequence in each model. */
  function open(): { seq: number; draftSeq: number } {
    return { seq: target.createSequence(), draftSeq: draft.createSequence() };
  }

  it('the tokens of plain greedy decoding; budgets, maxSteps and both caches as the result says', async () => {
    const ref = await plainGenerate(target, prompts, { maxNewTokens: 60 });
    for (const k of [1, 3, 6]) {
      // All sequences in one batch (one of them lone roots only), chains of at most 5 steps.
      const ks = prompts.map((_, b) => (b === 1 ? 0 : k));
      const st = prompts.map((p) => ({ ...open(), hist: Array.from(p), cached: 0 }));
      // The target caches all but the root: the plain reference's first token is then the root.
      const pre = await target.forward(st.map((s) => ({ seq: s.seq, tokens: Int32Array.from(s.hist.slice(0, -1)) })));
      pre.logits.dispose();
      target.commit(st.map((s) => s.seq), st.map((s) => Int32Array.from({ length: s.hist.length - 1 }, (_, i) => i)));
      const want = 40;
      let loops = 0;
      while (st.some((s, b) => s.hist.length - prompts[b]!.length < want) && loops++ < 200) {
        const live = st.map((_, b) => b).filter((b) => st[b]!.hist.length - prompts[b]!.length < want);
        const seqs: SpecChainSequence[] = live.map((b) => {
          const s = st[b]!;
          return { seq: s.seq, draftSeq: s.draftSeq, draftFeed: Int32Array.from(s.hist.slice(s.cached)), k: ks[b]!, budget: want - (s.hist.length - prompts[b]!.length) };
        });
        const res = await target.speculativeChain(draft, seqs, { maxSteps: 5, maxSeconds: 1 });
        assert.ok(res.steps >= 1 && res.steps <= 5, `${res.steps} steps`);
        assert.strictEqual(res.drafted.length, res.steps * live.length);
        live.forEach((b, i) => {
          const s = st[b]!;
          const em = res.emitted[i]!;
          let n = 0;
          for (let j = 0; j < res.steps; j++) {
            const d = res.drafted[j * live.length + i]!;
            const a = res.accepted[j * live.length + i]!;
            assert.ok(d <= ks[b]! && a >= 0 && a <= d, `step ${j}: drafted ${d}, accepted ${a}, k ${ks[b]}`);
            n += a + 1;
          }
          assert.strictEqual(em.length, n, 'one bonus token per step beside the accepted drafts');
          assert.ok(em.length <= seqs[i]!.budget, `${em.length} tokens for a budget of ${seqs[i]!.budget}`);
          s.hist.push(...em);
          s.cached = res.draftCached[i]!;
          assert.strictEqual(target.sequenceLength(s.seq), s.hist.length - 1, 'the target holds the history but the root');
          assert.strictEqual(draft.sequenceLength(s.draftSeq), s.cached, 'the draft holds what draftCached says');
          assert.ok(s.cached <= s.hist.length - 1);
        });
      }
      st.forEach((s, b) => {
        const got = s.hist.slice(prompts[b]!.length);
        // (Plain decoding may stop at EOS; speculation here ignores stops: compare the common part.)
        const exp = Array.from(ref.tokens[b]!);
        const cmp = Math.min(exp.length, got.length);
        assert.ok(cmp >= Math.min(20, exp.length));
        assert.deepStrictEqual(got.slice(0, cmp), exp.slice(0, cmp), `k ${k}, sequence ${b}`);
        target.freeSequence(s.seq);
        draft.freeSequence(s.draftSeq);
      });
    }
  });

  it('no step follows one that emitted a stop token', async () => {
    const ref = await plainGenerate(target, [prompts[3]!], { maxNewTokens: 60 });
    const out = Array.from(ref.tokens[0]!);
    const at = Math.floor(out.length / 2);
    const stop = out[at]!;
    const first = out.indexOf(stop);
    const s = open();
    try {
      const p = prompts[3]!;
      const pre = await target.forward([{ seq: s.seq, tokens: p.subarray(0, -1) }]);
      pre.logits.dispose();
      target.commit([s.seq], [Int32Array.from({ length: p.length - 1 }, (_, i) => i)]);
      const k = 3;
      const res = await target.speculativeChain(draft, [{ seq: s.seq, draftSeq: s.draftSeq, draftFeed: Int32Array.from(p), k, budget: 100, stop: Int32Array.of(999, stop) }], { maxSteps: 100, maxSeconds: 10 });
      const em = Array.from(res.emitted[0]!);
      assert.deepStrictEqual(em, out.slice(0, em.length));
      // The step that emitted the first stop token is the last one.
      const lastStep = (res.accepted[res.steps - 1] as number) + 1;
      assert.ok(em.length - lastStep <= first && first < em.length, `stop at ${first}, ${em.length} tokens, the last step ${lastStep}`);
    } finally {
      target.freeSequence(s.seq);
      draft.freeSequence(s.draftSeq);
    }
  });

  it('bad arguments are E_ARG naming the problem, and leave both caches alone', async () => {
    const s = open();
    try {
      const one = (o: Partial<SpecChainSequence>): SpecChainSequence[] => [{ seq: s.seq, draftSeq: s.draftSeq, draftFeed: Int32Array.of(5, 6), k: 2, budget: 8, ...o }];
      const chain = (seqs: SpecChainSequence[], d: CausalLM = draft, maxSteps = 4): Promise<unknown> => target.speculativeChain(d, seqs, { maxSteps, maxSeconds: 1 });
      assert.strictEqual(await codeOf(chain(one({ draftFeed: Int32Array.of(5, 99999) }))), 'E_ARG');
      assert.strictEqual(await codeOf(chain(one({ draftFeed: new Int32Array(0) }))), 'E_ARG');
      assert.strictEqual(await codeOf(chain(one({ budget: 0 }))), 'E_ARG');
      assert.strictEqual(await codeOf(chain(one({ k: -1 }))), 'E_ARG');
      assert.strictEqual(await codeOf(chain(one({}), draft, 0)), 'E_ARG');
      assert.strictEqual(await codeOf(chain([...one({}), ...one({})])), 'E_ARG');
      assert.strictEqual(await codeOf(chain(one({}), target)), 'E_ARG');
      assert.strictEqual(await codeOf(chain(one({ seq: 9999 }))), 'E_ARG');
      assert.strictEqual(target.sequenceLength(s.seq), 0);
      assert.strictEqual(draft.sequenceLength(s.draftSeq), 0);
      await assert.rejects(target.speculativeChain({} as CausalLM, one({}), { maxSteps: 1, maxSeconds: 1 }), /LlamaModel/);
    } finally {
      target.freeSequence(s.seq);
      draft.freeSequence(s.draftSeq);
    }
  });

  it('out of KV pages: E_KV_FULL at the first step leaves both models as they were; later, the steps before it', async () => {
    // 2 pages of 16 tokens: 32 tokens in the target.
    const small = await LlamaModel.load(paths.target, { device: 'cpu', maxSequences: 1, kvPages: 2, pageSize: 16 });
    try {
      const seq = small.createSequence();
      const dseq = draft.createSequence();
      const prompt = prompts[3]!;
      const pre = await small.forward([{ seq, tokens: prompt.subarray(0, -1) }]);
      pre.logits.dispose();
      small.commit([seq], [Int32Array.from({ length: prompt.length - 1 }, (_, i) => i)]);
      const hist = Array.from(prompt);
      let cached = 0;
      let error = '';
      for (let i = 0; i < 40 && !error; i++) {
        const t0 = small.sequenceLength(seq);
        const d0 = draft.sequenceLength(dseq);
        try {
          const res = await small.speculativeChain(draft, [{ seq, draftSeq: dseq, draftFeed: Int32Array.from(hist.slice(cached)), k: 6, budget: 100 }], { maxSteps: 16, maxSeconds: 1 });
          hist.push(...res.emitted[0]!);
          cached = res.draftCached[0]!;
          assert.strictEqual(small.sequenceLength(seq), hist.length - 1);
          assert.strictEqual(draft.sequenceLength(dseq), cached);
        } catch (e) {
          error = (e as { code?: string }).code ?? String(e);
          assert.strictEqual(small.sequenceLength(seq), t0, 'the target as it was');
          assert.strictEqual(draft.sequenceLength(dseq), d0, 'the draft as it was');
        }
      }
      assert.strictEqual(error, 'E_KV_FULL');
      assert.ok(hist.length - 1 > 16 && hist.length - 1 <= 32, `${hist.length - 1} tokens cached before the cache was full`);
      small.freeSequence(seq);
      draft.freeSequence(dseq);
    } finally {
      small.dispose();
    }
  });

  for (const [name, opts] of [
    ['k = 4 (fixed)', { k: 4 }],
    ['cost model', {}],
  ] as const) {
    it(`the decoder (${name}): the tokens, statistics and draft lengths of the step-by-step engine; stops inside a chain`, async () => {
      const run = async (model: CausalLM, extra: object = {}): Promise<{ tokens: number[][]; stats: unknown[]; ks: number[][]; finish: string[] }> => {
        const spec = new DraftModelSpeculator({ draft, ...opts });
        const dec = new SpeculativeDecoder({ target: model, speculator: spec });
        const res = [];
        for (const p of prompts) res.push(await dec.generate(p, { maxNewTokens: 48, ...extra }).result);
        const ks = [...spec.kHistory.values()];
        spec.dispose();
        return {
          tokens: res.map((x) => Array.from(x.tokens)),
          stats: res.map((x) => [x.stats.newTokens, x.stats.targetForwards, x.stats.nodesPerStep, x.stats.proposedDraftTokens, x.stats.acceptedDraftTokens, x.stats.acceptedPerPosition]),
          ks,
          finish: res.map((x) => x.finishReason),
        };
      };
      const hidden = withoutSpecChains(target);
      // The cost model's choices on a pinned curve where drafting pays (a flat one): the same on
      // any machine, and the same for both paths.
      for (const m of [target, hidden]) setForwardCost(m, ForwardCost.fromFunction(() => 1e-3, { frozen: true }));
      const plain = await plainGenerate(target, prompts, { maxNewTokens: 48 });
      const ref = await run(hidden);
      assert.strictEqual(calls.n, 0);
      const got = await run(target);
      assert.deepStrictEqual(got.tokens, plain.tokens.map((t) => Array.from(t)), 'plain greedy tokens');
      assert.deepStrictEqual(got.tokens, ref.tokens);
      assert.deepStrictEqual(got.finish, ref.finish);
      assert.ok(calls.n > 0 && calls.steps > calls.n, `${calls.n} chain calls, ${calls.steps} steps`);
      // A fixed k: the same steps one by one, the same draft lengths (a chain may go on past an EOS
      // the engine then cuts). (The cost model weighs k once per chain, not once per step.)
      if (opts.k !== undefined) {
        assert.deepStrictEqual(got.stats, ref.stats);
        got.ks.forEach((k, i) => assert.deepStrictEqual(k.slice(0, ref.ks[i]!.length), ref.ks[i], `sequence ${i}`));
      }
      // A stop token and maxNewTokens inside a chain: the tokens after the cut go, and the steps made
      // entirely of them are not counted as forwards.
      const long = plain.tokens.reduce((a, t, i) => (t.length > plain.tokens[a]!.length ? i : a), 0);
      const out = plain.tokens[long]!;
      const stop = out[Math.floor(out.length * 0.6)]!;
      for (const extra of [{ stopTokens: [stop] }, { maxNewTokens: 29 }]) {
        const a = await run(hidden, extra);
        calls.n = 0;
        const b = await run(target, extra);
        assert.ok(calls.n > 0);
        assert.deepStrictEqual(b.tokens, a.tokens);
        assert.deepStrictEqual(b.finish, a.finish);
        if (opts.k !== undefined) assert.deepStrictEqual(b.stats, a.stats, JSON.stringify(extra));
      }
      assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages, 'every sequence freed');
    });
  }

  for (const choices of ['chain_4', 'mc_sim_7b_63', undefined] as const) {
    it(`Medusa (${choices ?? 'sized'}): the tokens of plain greedy decoding${choices ? ', and the statistics of the step-by-step engine' : ''}; stops inside a chain`, async () => {
      const heads = MedusaHeads.load(paths.medusa, { device: 'cpu' });
      const medusa = countMedusaChains(target);
      try {
        const hidden = withoutSpecChains(target);
        // A sized Medusa on a pinned flat curve: its trees pay, on any machine.
        for (const m of [target, hidden]) setForwardCost(m, ForwardCost.fromFunction(() => 1e-3, { frozen: true }));
        const run = async (model: CausalLM, extra: object = {}): Promise<{ tokens: number[][]; stats: unknown[]; finish: string[] }> => {
          const spec = new MedusaSpeculator(choices ? { heads, choices } : { heads });
          const dec = new SpeculativeDecoder({ target: model, speculator: spec });
          const res = [];
          for (const p of prompts) res.push(await dec.generate(p, { maxNewTokens: 48, ...extra }).result);
          spec.dispose();
          return {
            tokens: res.map((x) => Array.from(x.tokens)),
            stats: res.map((x) => [x.stats.newTokens, x.stats.targetForwards, x.stats.nodesPerStep, x.stats.proposedDraftTokens, x.stats.acceptedDraftTokens, x.stats.acceptedPerPosition, x.stats.proposedPerPosition]),
            finish: res.map((x) => x.finishReason),
          };
        };
        const plain = await plainGenerate(target, prompts, { maxNewTokens: 48 });
        const ref = await run(hidden);
        assert.strictEqual(medusa.calls, 0);
        const got = await run(target);
        assert.ok(medusa.calls > 0, 'native chains ran');
        assert.deepStrictEqual(got.tokens, plain.tokens.map((t) => Array.from(t)), 'plain greedy tokens');
        assert.deepStrictEqual(got.finish, ref.finish);
        // Fixed choices: the same trees step by step. (A sized plan is weighed once per chain.)
        if (choices) assert.deepStrictEqual(got.stats, ref.stats);
        const long = plain.tokens.reduce((a, t, i) => (t.length > plain.tokens[a]!.length ? i : a), 0);
        const out = plain.tokens[long]!;
        for (const extra of [{ stopTokens: [out[Math.floor(out.length * 0.6)]!] }, { maxNewTokens: 29 }]) {
          const a = await run(hidden, extra);
          const b = await run(target, extra);
          assert.deepStrictEqual(b.tokens, a.tokens);
          assert.deepStrictEqual(b.finish, a.finish);
          if (choices) assert.deepStrictEqual(b.stats, a.stats, JSON.stringify(extra));
        }
        assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages, 'every sequence freed');
      } finally {
        delete (target as { medusaChain?: unknown }).medusaChain;
        heads.dispose();
      }
    });
  }

  it('Medusa with penalties (greedy and sampled): chains give the step-by-step engine\'s tokens and statistics, their heads penalized alike; the candidates are the penalized heads\' top-k', async () => {
    const heads = MedusaHeads.load(paths.medusa, { device: 'cpu' });
    const medusa = countMedusaChains(target);
    const penalties = { repetition: 1.3, presence: 0.5, frequency: 0.3 };
    try {
      // The op: topKIds with penalties == topK over the penalized logits of apply(), head by head.
      const r = rng(testSeed + 41);
      const H = heads.config.hiddenSize, V = heads.config.vocabSize, R = 2, K = 4;
      const x = Tensor.fromArray(Float32Array.from({ length: R * H }, () => 2 * r() - 1), 'f32', [R, H]);
      // Histories holding each row's unpenalized first candidates in the output (penalties strong
      // enough to move them), and random tokens in the prompt and the output.
      const bare = heads.topKIds(x, K);
      const nh = heads.config.numHeads;
      const hist = [0, 1].map((row) => ({
        tokens: [...Array.from({ length: 10 }, () => Math.floor(r() * V)), ...Array.from({ length: nh }, (_, h) => bare[(h * R + row) * K] as number), ...Array.from({ length: 20 }, () => Math.floor(r() * V))],
        promptLength: 10,
      }));
      const strong = { repetition: 3, presence: 5, frequency: 1 };
      const ids = heads.topKIds(x, K, nh, { penalties: strong, histories: hist });
      assert.notDeepStrictEqual(Array.from(ids), Array.from(bare), 'the penalties change some candidates');
      heads.apply(x).forEach((l, h) => {
        penalize(l, strong, hist, Int32Array.of(0, 1));
        const t = topK(l, K);
        assert.deepStrictEqual(Array.from(ids.subarray(h * R * K, (h + 1) * R * K)), Array.from(t.ids.toInt32()), `head ${h}`);
        for (const y of [t.ids, t.values, l]) y.dispose();
      });
      x.dispose();
      // Decoding: the chains' heads and the verification's (headsOnAccepted) read the same histories.
      const hidden = withoutSpecChains(target);
      for (const sampling of [undefined, { temperature: 0.8, seed: 9 }]) {
        const run = (model: CausalLM): Promise<unknown[][]> => penalizedRun(model, new MedusaSpeculator({ heads, choices: 'small_8' }), prompts, penalties, sampling, 48);
        const ref = await run(hidden);
        medusa.calls = 0;
        const got = await run(target);
        assert.ok(medusa.calls > 0, 'native chains ran');
        assert.deepStrictEqual(got, ref, sampling ? 'sampled' : 'greedy');
        if (!sampling) {
          const plain = await plainGenerate(target, prompts, { maxNewTokens: 48, penalties });
          assert.deepStrictEqual(got.map((g) => g[0]), plain.tokens.map((t) => Array.from(t)));
        }
      }
    } finally {
      delete (target as { medusaChain?: unknown }).medusaChain;
      heads.dispose();
    }
  });

  it('medusaChain: a template that is no Medusa subtree, or candidates that do not fit, are E_ARG', async () => {
    const heads = MedusaHeads.load(paths.medusa, { device: 'cpu' });
    const seq = target.createSequence();
    try {
      const set = heads.weights();
      const K = 2;
      const H = heads.config.numHeads;
      const ok = { parents: Int32Array.of(-1, 0, 1), head: Int32Array.of(-1, 0, 1), rank: Int32Array.of(0, 0, 1) };
      const one = { seq, root: 5, cands: new Int32Array(H * K).fill(7), headsKnown: H, budget: 8 };
      const chain = (tpl: typeof ok, s: typeof one = one): Promise<unknown> => target.medusaChain(set, [s], tpl, { topK: K, maxSteps: 2, maxSeconds: 1 });
      assert.strictEqual(await codeOf(chain({ ...ok, head: Int32Array.of(-1, 1, 1) })), 'E_ARG', 'a root child reads head 0');
      assert.strictEqual(await codeOf(chain({ ...ok, rank: Int32Array.of(0, 0, K) })), 'E_ARG', 'a rank past topK');
      assert.strictEqual(await codeOf(chain({ ...ok, parents: Int32Array.of(-1, 2, 0) })), 'E_ARG', 'a parent after its child');
      assert.strictEqual(await codeOf(chain({ ...ok, head: Int32Array.of(-1, 0, H) })), 'E_ARG', 'a head that does not run');
      assert.strictEqual(await codeOf(chain(ok, { ...one, cands: new Int32Array(3) })), 'E_ARG', 'candidates for the heads known');
      assert.strictEqual(await codeOf(chain(ok, { ...one, cands: new Int32Array(H * K).fill(99999) })), 'E_ARG', 'a candidate outside the vocabulary');
      assert.strictEqual(await codeOf(chain(ok, { ...one, root: -1 })), 'E_ARG', 'a root outside the vocabulary');
      assert.strictEqual(target.sequenceLength(seq), 0);
      // A valid one runs (its first step over an empty cache: the root's tree).
      const r = await target.medusaChain(set, [one], ok, { topK: K, maxSteps: 3, maxSeconds: 1 });
      assert.ok(r.steps >= 1 && r.cands[0]!.length === H * K && target.sequenceLength(seq) === r.emitted[0]!.length);
    } finally {
      target.freeSequence(seq);
      heads.dispose();
    }
  });

  it('sampled draft chains: the tokens, statistics and random streams of the step-by-step engine for the same seeds, several sequences a batch', async () => {
    // The native chain draws each sequence's counters in the engine's order (the picks', then the
    // verification's), so its output is the step-by-step engine's draw for draw: the exactness
    // tests of that path (test/sampling_exactness.test.ts) carry over.
    const hidden = withoutSpecChains(target);
    for (const sampling of [
      { temperature: 0.8, seed: 5 },
      { temperature: 1, topP: 0.9, seed: 11 },
      { temperature: 0.6, topK: 20, seed: 3 },
    ]) {
      const run = async (model: CausalLM): Promise<unknown[]> => {
        const spec = new DraftModelSpeculator({ draft, k: 4 });
        const dec = new SpeculativeDecoder({ target: model, speculator: spec, sampling });
        const out = await dec.generateBatch(prompts, { maxNewTokens: 60 });
        // A second request on the same decoder: its stream follows from where the first left it.
        const again = await dec.generate(prompts[0]!, { maxNewTokens: 30 }).result;
        spec.dispose();
        return [...out, again].map((x) => [Array.from(x.tokens), x.stats.targetForwards, x.stats.acceptedDraftTokens, x.stats.nodesPerStep]);
      };
      const ref = await run(hidden);
      calls.n = 0;
      const got = await run(target);
      assert.ok(calls.n > 0, 'native chains ran');
      assert.deepStrictEqual(got, ref, JSON.stringify(sampling));
    }
  });

  it('draft chains with penalties, the draft drafting with them or not (greedy and sampled): the step-by-step engine\'s tokens, statistics and streams', async () => {
    // The native chain builds the draft's histories per step as DraftModelSpeculator does per call.
    const hidden = withoutSpecChains(target);
    const penalties = { repetition: 1.3, presence: 0.5, frequency: 0.3 };
    for (const sampling of [undefined, { temperature: 0.8, seed: 5 }]) {
      for (const draftPenalties of [true, false]) {
        const run = (model: CausalLM): Promise<unknown[][]> => penalizedRun(model, new DraftModelSpeculator({ draft, k: 4, draftPenalties }), prompts, penalties, sampling, 60);
        const ref = await run(hidden);
        calls.n = 0;
        const got = await run(target);
        assert.ok(calls.n > 0, 'native chains ran');
        assert.deepStrictEqual(got, ref, `${sampling ? 'sampled' : 'greedy'}, draftPenalties ${draftPenalties}`);
      }
    }
  });

  it('sampled Medusa chains: plainGenerate\'s sampled tokens (so the step-by-step engine\'s), and its statistics for fixed choices; a second request continues the stream', async () => {
    // Exact rejection of deterministic candidates draws each emitted token as plain sampling does
    // (spec_math.h), and the chain moves the counters by the tokens emitted, as the engine does.
    const heads = MedusaHeads.load(paths.medusa, { device: 'cpu' });
    const medusa = countMedusaChains(target);
    try {
      const hidden = withoutSpecChains(target);
      for (const m of [target, hidden]) setForwardCost(m, ForwardCost.fromFunction(() => 1e-3, { frozen: true }));
      for (const [choices, sampling] of [
        ['chain_4', { temperature: 0.8, seed: 5 }],
        ['mc_sim_7b_63', { temperature: 1, topP: 0.9, seed: 11 }],
        [undefined, { temperature: 0.6, topK: 20, seed: 3 }],
      ] as const) {
        const run = async (model: CausalLM): Promise<unknown[]> => {
          const spec = new MedusaSpeculator(choices ? { heads, choices } : { heads });
          const dec = new SpeculativeDecoder({ target: model, speculator: spec, sampling });
          const out = await dec.generateBatch(prompts, { maxNewTokens: 48 });
          const again = await dec.generate(prompts[0]!, { maxNewTokens: 30 }).result;
          spec.dispose();
          return [...out, again].map((x) => [Array.from(x.tokens), ...(choices ? [x.stats.targetForwards, x.stats.acceptedDraftTokens, x.stats.nodesPerStep] : [])]);
        };
        const plain = await plainGenerate(target, prompts, { maxNewTokens: 48, ...sampling });
        medusa.calls = 0;
        const ref = await run(hidden);
        assert.strictEqual(medusa.calls, 0);
        const got = await run(target);
        assert.ok(medusa.calls > 0, 'native chains ran');
        assert.deepStrictEqual(got, ref, `${choices ?? 'sized'} ${JSON.stringify(sampling)}`);
        got.slice(0, prompts.length).forEach((g, i) => assert.deepStrictEqual((g as number[][])[0], Array.from(plain.tokens[i]!), `sequence ${i}`));
      }
      assert.strictEqual(target.kvInfo().freePages, target.kvInfo().totalPages, 'every sequence freed');
    } finally {
      delete (target as { medusaChain?: unknown }).medusaChain;
      heads.dispose();
    }
  });

  it('heuristic k and draft trees keep the step-by-step path', async () => {
    for (const spec of [new DraftModelSpeculator({ draft, k: 3, adaptive: 'heuristic' }), new DraftModelSpeculator({ draft, treeBranching: [2, 1] })]) {
      await new SpeculativeDecoder({ target, speculator: spec }).generate(prompts[3]!, { maxNewTokens: 20 }).result;
      spec.dispose();
    }
    assert.strictEqual(calls.n, 0);
  });
});

describeCuda('greedy speculation as native chains on CUDA', function () {
  this.timeout(300_000);
  it('draft model (k = 4) and Medusa (chain_4): the tokens of CUDA plain greedy and of the step-by-step engine; one wait a step', async () => {
    const paths = defaultModelPaths();
    const target = await LlamaModel.load(paths.target, { device: 'cuda', maxSequences: 8 });
    const draft = await LlamaModel.load(paths.draft, { device: 'cuda', maxSequences: 8 });
    const heads = MedusaHeads.load(paths.medusa, { device: 'cuda' });
    try {
      const prompt = TextTokenizer.load(paths.target)!.encode('once upon a time');
      const plain = await plainGenerate(target, [prompt], { maxNewTokens: 64 });
      for (const make of [() => new DraftModelSpeculator({ draft, k: 4 }), () => new MedusaSpeculator({ heads, choices: 'chain_4' })]) {
        const out = [];
        for (const model of [withoutSpecChains(target), target]) {
          const spec = make();
          const r = await new SpeculativeDecoder({ target: model, speculator: spec }).generate(prompt, { maxNewTokens: 64 }).result;
          spec.dispose();
          out.push(r);
        }
        const [ref, got] = out as [(typeof out)[0], (typeof out)[0]];
        assert.deepStrictEqual(Array.from(got.tokens), Array.from(plain.tokens[0]!), `${make().name}: CUDA plain greedy tokens`);
        assert.deepStrictEqual(Array.from(got.tokens), Array.from(ref.tokens));
        assert.strictEqual(got.stats.targetForwards, ref.stats.targetForwards);
        // The prefill's token, then each step's verification result: one wait a forward.
        assert.ok(got.stats.transfers.blockingWaits <= got.stats.targetForwards + 1, JSON.stringify(got.stats.transfers));
      }
    } finally {
      heads.dispose();
      draft.dispose();
      target.dispose();
    }
  });

  it('sampled: draft chains give the step-by-step engine\'s tokens, Medusa chains (chain_4 and sized) CUDA plain sampling\'s, seed for seed', async () => {
    // The CUDA side of the sampled chains (sampled_chain on the device, walk_onehot and the exact
    // rejection in the verify kernels, the counters moved by the tokens emitted) as the CPU tests
    // above check them: the same draws in the chain and in the engine's steps.
    await sampledChains('cuda');
  });
});

/**
 * Sampled native chains on `device`: draft chains give the step-by-step engine's tokens, Medusa
 * chains plain sampling's (the CUDA test above; the CPU's are checked by the tests of the first block).
 */
async function sampledChains(device: 'cpu' | 'cuda'): Promise<void> {
  const paths = defaultModelPaths();
  const target = await LlamaModel.load(paths.target, { device, maxSequences: 8 });
  const draft = await LlamaModel.load(paths.draft, { device, maxSequences: 8 });
  const heads = MedusaHeads.load(paths.medusa, { device });
  const medusa = countMedusaChains(target);
  const spec = { calls: 0 };
  const orig = target.speculativeChain.bind(target);
  (target as { speculativeChain: LlamaModel['speculativeChain'] }).speculativeChain = (...a) => {
    spec.calls++;
    return orig(...a);
  };
  try {
    const tok = TextTokenizer.load(paths.target)!;
    const prompts = [tok.encode('once upon a time'), tok.encode('the little dog')];
    const hidden = withoutSpecChains(target);
    const sampling = { temperature: 0.8, seed: 5 };
    const plain = await plainGenerate(target, prompts, { maxNewTokens: 40, ...sampling });
    const run = async (model: CausalLM, make: () => Speculator): Promise<number[][]> => {
      const s = make();
      const out = await new SpeculativeDecoder({ target: model, speculator: s, sampling }).generateBatch(prompts, { maxNewTokens: 40 });
      s.dispose();
      return out.map((x) => Array.from(x.tokens));
    };
    const draftSpec = (): Speculator => new DraftModelSpeculator({ draft, k: 4 });
    const steps = await run(hidden, draftSpec);
    assert.strictEqual(spec.calls, 0);
    assert.deepStrictEqual(await run(target, draftSpec), steps, 'draft model: the chains give the steps\' tokens');
    assert.ok(spec.calls > 0, 'native draft chains ran');
    // The fixed tree always chains; the sized one may choose plain steps on some device.
    for (const [name, make, fixed] of [
      ['chain_4', (): Speculator => new MedusaSpeculator({ heads, choices: 'chain_4' }), true],
      ['sized', (): Speculator => new MedusaSpeculator({ heads }), false],
    ] as const) {
      medusa.calls = 0;
      const got = await run(target, make);
      if (fixed) assert.ok(medusa.calls > 0, 'native Medusa chains ran');
      got.forEach((g, i) => assert.deepStrictEqual(g, Array.from(plain.tokens[i]!), `Medusa ${name}, sequence ${i}: plain sampling's tokens`));
    }
  } finally {
    delete (target as { medusaChain?: unknown }).medusaChain;
    delete (target as { speculativeChain?: unknown }).speculativeChain;
    heads.dispose();
    draft.dispose();
    target.dispose();
  }
}

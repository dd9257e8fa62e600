// Hardware-aware tree sizing: the cost curve, the choice functions (deterministic given synthetic
// cost curves and acceptance rates: plain when trees cannot pay, the full tree when they are
// free, the brute-force optimum in between), greedy losslessness whatever size the strategies
// pick, lookahead's candidate trie (the loss of separate chains shown), and the widened
// benchmark family (same greedy tokens, close logits).
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { widenFamily } from '../bench/wide_family';
import { ChainCost, chainTokenCost, ForwardCost, calibrateForwardCost, forwardCost, forwardCostIfRoom, knownForwardCost, RecentTimes, setForwardCost } from '../lib/cost_model';
import { SpeculativeDecoder, type GenerateResult } from '../lib/decoder';
import { defaultModelPaths } from '../lib/default_models';
import { Engine } from '../lib/engine/engine';
import { LlamaModel } from '../lib/models/llama';
import { plainGenerate } from '../lib/plain';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleHead, EagleSpeculator } from '../lib/strategies/eagle';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { candidateTrie, LookaheadSpeculator } from '../lib/strategies/lookahead';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import { Tensor } from '../lib/tensor';
import { TextTokenizer } from '../lib/tokenizer';
import { chainTree, flattenTrees, MC_SIM_7B_63, medusaTreeShape } from '../lib/tree';
import { chooseChainLength, choosePlanSize, chooseSubtree, ConfidenceCalibration, EXPLORE_SHARE, PlanOutcomes, RankRates, RowsCost, stepCost, treeProbabilities } from '../lib/tree_sizing';
import { verify } from '../lib/verify';
import { writeMedusaHeads } from './fixtures/medusa_heads';
import { ToyLM } from './fixtures/toy_lm';
import { rng, testSeed } from './helpers';

const V = 16;
// Seconds per forward: large, so that the toy draft's real (measured) cost is negligible beside them.
const flat = (): ForwardCost => ForwardCost.fromFunction(() => 1, { frozen: true });
/** Every token costs a full forward: nothing with acceptance < 1 can pay. */
const linear = (): ForwardCost => ForwardCost.fromFunction((n) => n, { frozen: true });
/** Flat up to 8 tokens, then linear (a GPU-like knee). */
const knee = (): ForwardCost => ForwardCost.fromFunction((n) => Math.max(1, n / 8), { frozen: true });

describe('cost model: the curve', () => {
  it('interpolates, stays non-decreasing (a point above a wider one is noise), extrapolates by the last slope', () => {
    const c = new ForwardCost([
      [1, 1],
      [4, 2],
      [8, 1.5], // noise: a wider forward measured cheaper
      [16, 4],
    ]);
    // The 4-token point above the wider 8-token one is taken as noise: capped at 1.5.
    assert.strictEqual(c.predict(1), 1);
    assert.strictEqual(c.predict(2.5), 1.25);
    assert.strictEqual(c.predict(6), 1.5, 'never above a wider point');
    assert.strictEqual(c.predict(12), 2.75);
    assert.strictEqual(c.predict(24), 4 + (8 * 2.5) / 8);
    assert.throws(() => new ForwardCost([]), /no points/);
    assert.throws(() => new ForwardCost([[0, 1]]), /integers >= 1/);
    assert.throws(() => new ForwardCost([[2, -1]]), /positive number/);
  });

  it('follows the low side of recent observations (outliers ignored), and a frozen curve does not', () => {
    const c = ForwardCost.fromFunction((n) => n, { sizes: [1, 2, 4, 8] });
    for (let i = 0; i < 16; i++) c.observe(4, 3);
    assert.strictEqual(c.predict(4), 3);
    assert.strictEqual(c.predict(1), 1, 'other points untouched');
    for (let i = 0; i < 3; i++) c.observe(4, 1e6); // a burst of interference
    assert.strictEqual(c.predict(4), 3);
    c.observe(7, 14); // off the grid: a sample of the nearest point, scaled (14 * 8 / 7)
    for (let i = 0; i < 15; i++) c.observe(8, 16);
    assert.strictEqual(c.predict(8), 16);
    for (let i = 0; i < 16; i++) c.observe(1, 0.5);
    assert.strictEqual(c.predict(1), 0.5);
    const f = flat();
    f.observe(1, 5);
    f.observeOverhead(1);
    assert.strictEqual(f.predict(1), 1);
    assert.strictEqual(f.stepOverhead, 0);
  });

  it('a recent time is the lower quartile of the last WINDOW samples (kept sorted incrementally; brute force over random streams)', () => {
    const r = rng(testSeed);
    for (let trial = 0; trial < 20; trial++) {
      const t = new RecentTimes();
      const all: number[] = [];
      assert.strictEqual(t.value(), 0, 'no samples');
      const n = 1 + Math.floor(r() * 60);
      for (let i = 0; i < n; i++) {
        // Repeated values too (equal samples must leave one copy each).
        const x = r() < 0.3 ? Math.floor(r() * 4) : r() * 10;
        t.add(x);
        all.push(x);
        t.add(Number.NaN); // ignored
        const recent = all.slice(-RecentTimes.WINDOW).sort((a, b) => a - b);
        assert.strictEqual(t.value(), recent[Math.floor((recent.length - 1) / 4)], `trial ${trial}, sample ${i}`);
        assert.strictEqual(t.count, recent.length);
      }
    }
  });

  it('calibrates a model on a scratch sequence it frees', async () => {
    const m = new ToyLM({ vocabSize: V, seed: 1, maxPositions: 64 });
    const c = await calibrateForwardCost(m, { reps: 1, maxRatio: 1e9 });
    const ns = c.points().map((p) => p[0]);
    assert.deepStrictEqual(ns, [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48], 'the sizes that fit after the 16-token prefix');
    // The sizes stop at the first that costs more than maxRatio 1-token forwards (kept as the last
    // point): with a ratio below 1, the very first.
    const short = await calibrateForwardCost(m, { reps: 1, sizes: [1, 2, 48], maxRatio: 1e-9 });
    assert.deepStrictEqual(short.points().map((p) => p[0]), [1]);
    assert.ok(c.points().every(([, t]) => t > 0));
    assert.strictEqual(m.liveSequences(), 0);
  });

  it('calibrates within the KV room the cache has free, and says so when there is none', async () => {
    const m = await LlamaModel.load(defaultModelPaths().target, { device: 'cpu', pageSize: 1, kvPages: 40 });
    try {
      // A request holding 30 of the 40 tokens.
      const held = m.createSequence();
      const out = await m.forward([{ seq: held, tokens: Int32Array.from({ length: 30 }, (_, i) => i + 1) }]);
      out.logits.dispose();
      m.commit([held], [Int32Array.from({ length: 30 }, (_, i) => i)]);
      const c = await calibrateForwardCost(m, { reps: 1, maxRatio: 1e9 });
      // A 5-token prefix (half the room) and the sizes that fit beside it.
      assert.deepStrictEqual(c.points().map((p) => p[0]), [1, 2, 3, 4], 'sizes within the 10 free tokens');
      assert.strictEqual(m.kvInfo().freePages, 10, 'scratch sequences freed');
      // One free token: nothing to measure.
      const more = m.createSequence();
      const out2 = await m.forward([{ seq: more, tokens: Int32Array.from({ length: 9 }, (_, i) => i + 1) }]);
      out2.logits.dispose();
      m.commit([more], [Int32Array.from({ length: 9 }, (_, i) => i)]);
      await assert.rejects(calibrateForwardCost(m), (e: Error & { code?: string }) => e.code === 'E_KV_FULL' && /1 free tokens/.test(e.message));
      assert.strictEqual(await forwardCostIfRoom(m), undefined, 'a sized speculator goes on unsized');
      m.freeSequence(more);
      assert.ok((await forwardCostIfRoom(m)) instanceof ForwardCost, 'measured once there is room');
      m.freeSequence(held);
    } finally {
      m.dispose();
    }
  });

  it("a step's overhead is its time after the forward plus the engine loop's around it; only speculative steps are samples", async () => {
    const c = ForwardCost.fromFunction((n) => n * 1e-3);
    assert.strictEqual(c.stepOverhead, 0);
    // The first OVERHEAD_WARMUP samples of each are cold steps' (skipped); then it counts once
    // OVERHEAD_MIN_SAMPLES are in.
    for (let i = 0; i < ForwardCost.OVERHEAD_WARMUP; i++) {
      c.observeOverhead(1);
      c.observeLoopOverhead(1);
    }
    for (let i = 0; i < ForwardCost.OVERHEAD_MIN_SAMPLES; i++) {
      assert.strictEqual(c.stepOverhead, 0, 'too few warm samples yet');
      c.observeOverhead(2e-5);
      c.observeLoopOverhead(3e-5);
    }
    assert.ok(Math.abs(c.stepOverhead - 5e-5) < 1e-12, String(c.stepOverhead));
    const frozen = ForwardCost.fromFunction((n) => n * 1e-3, { frozen: true, stepOverhead: 1e-5 });
    frozen.observeLoopOverhead(1);
    assert.strictEqual(frozen.stepOverhead, 1e-5);

    // The engine's samples: after every speculative step of a fixed draft; none for plain chains.
    const target = new ToyLM({ vocabSize: V, seed: 3, maxPositions: 128 });
    const curve = ForwardCost.fromFunction((n) => n * 1e-3);
    setForwardCost(target, curve);
    const loop: number[] = [];
    const inStep: number[] = [];
    const observeLoop = curve.observeLoopOverhead.bind(curve);
    const observe = curve.observeOverhead.bind(curve);
    curve.observeLoopOverhead = (s) => {
      loop.push(s);
      observeLoop(s);
    };
    curve.observeOverhead = (s) => {
      inStep.push(s);
      observe(s);
    };
    const prompt = Int32Array.from([1, 2, 3]);
    const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V, seed: 4, maxPositions: 128 }), k: 2 }) });
    const [r] = await dec.generateBatch([prompt], { maxNewTokens: 24 });
    // Steps that verified a tree (a lone root near the end, where no draft fits, is no sample).
    const steps = r!.stats.targetForwards - 1 - (r!.stats.nodesPerStep[1] ?? 0);
    assert.ok(steps >= 8, `${steps} tree steps`);
    assert.strictEqual(inStep.length, steps, 'one in-step sample per speculative step');
    // Not the first (it admitted the request) nor the last (no iteration follows it).
    assert.ok(loop.length >= steps - 2 && loop.length <= steps, `${loop.length} loop samples for ${steps} steps`);
    assert.ok(loop.every((x) => x >= 0 && x < 1) && inStep.every((x) => x >= 0 && x < 1));
    assert.ok(curve.stepOverhead > 0);
    dec.dispose();
    // Plain steps in native chains (a model with greedyChain) are priced by the chains' own times.
    const llama = await LlamaModel.load(defaultModelPaths().target, { device: 'cpu' });
    try {
      const chained = ForwardCost.fromFunction((n) => n * 1e-3);
      let samples = 0;
      chained.observeLoopOverhead = () => void samples++;
      chained.observeOverhead = () => void samples++;
      setForwardCost(llama, chained);
      const [p] = await new SpeculativeDecoder({ target: llama }).generateBatch([prompt], { maxNewTokens: 24 });
      assert.strictEqual(p!.tokens.length, 24);
      assert.strictEqual(samples, 0, 'plain chains make no overhead sample');
      assert.ok(chained.chainStep(1)! > 0, 'they time their steps instead');
    } finally {
      llama.dispose();
    }
  });

  it("the loop's turns to the event loop are not priced in a step's loop overhead", async () => {
    // A target whose forward takes ~0.5 ms (spun, so the loop's yields every LOOP_SLICE_MS are the
    // only turns), and a task that holds the thread 5 ms in every turn it gets. What runs in the
    // loop's turns (other engines' requests, I/O, the caller) is no cost of the speculative step:
    // priced in (2026-12-06), such samples made the sized Medusa decode plainly for good.
    const spin = (ms: number): void => {
      const end = performance.now() + ms;
      while (performance.now() < end);
    };
    const target = new ToyLM({ vocabSize: V, seed: 3, maxPositions: 256 });
    const forward = target.forward.bind(target);
    target.forward = (...a: Parameters<ToyLM['forward']>) => {
      spin(0.5);
      return forward(...a);
    };
    const curve = ForwardCost.fromFunction((n) => n * 1e-3);
    setForwardCost(target, curve);
    const loop: number[] = [];
    const observeLoop = curve.observeLoopOverhead.bind(curve);
    curve.observeLoopOverhead = (s, owner) => {
      loop.push(s);
      observeLoop(s, owner);
    };
    let hogging = true;
    let turns = 0;
    const hog = (): void => {
      if (!hogging) return;
      spin(5);
      turns++;
      setImmediate(hog);
    };
    const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V, seed: 4, maxPositions: 256 }), k: 2 }) });
    try {
      setImmediate(hog);
      const [r] = await dec.generateBatch([Int32Array.from([1, 2, 3])], { maxNewTokens: 96 });
      assert.strictEqual(r!.tokens.length, 96);
    } finally {
      hogging = false;
      dec.dispose();
    }
    assert.ok(turns >= 2, `the task had ${turns} turns during the request`);
    assert.ok(loop.length >= 8, `${loop.length} loop samples`);
    const most = Math.max(...loop);
    assert.ok(most < 2.5e-3, `a loop sample of ${(most * 1e3).toFixed(2)} ms: the other task's turn was priced in`);
  });

  it('an overhead estimate without samples for a while expires, each time after twice as long', () => {
    const clock = ForwardCost.clock;
    let now = 1000;
    ForwardCost.clock = () => now;
    try {
      const c = ForwardCost.fromFunction((n) => n * 1e-3);
      const a = {};
      const fill = (s: number): void => {
        for (let i = 0; i < ForwardCost.OVERHEAD_WARMUP + ForwardCost.OVERHEAD_MIN_SAMPLES; i++) c.observeOverhead(s, a);
      };
      fill(5e-3);
      assert.ok(c.overheadMeasuredOf(a) && Math.abs(c.stepOverheadOf(a) - 5e-3) < 1e-12);
      const T = ForwardCost.OVERHEAD_STALE_SECONDS * 1000;
      now += T;
      assert.ok(Math.abs(c.stepOverheadOf(a) - 5e-3) < 1e-12, 'not yet');
      now += 1;
      assert.strictEqual(c.stepOverheadOf(a), 0, 'expired: 0 again, as before any sample (the choice explores)');
      assert.ok(!c.overheadMeasuredOf(a) && !c.overheadMeasured);
      // Samples again, after a new warm-up (its first steps are cold ones again).
      c.observeOverhead(1, a, ForwardCost.OVERHEAD_WARMUP);
      for (let i = 0; i < ForwardCost.OVERHEAD_MIN_SAMPLES; i++) c.observeOverhead(2e-5, a);
      assert.ok(Math.abs(c.stepOverheadOf(a) - 2e-5) < 1e-12, String(c.stepOverheadOf(a)));
      // Plain again: the next expiry comes after twice the quiet time.
      now += T + 1;
      assert.ok(c.overheadMeasuredOf(a), 'the quiet time doubled');
      now += T;
      assert.ok(!c.overheadMeasuredOf(a));
      // A full window (steady speculation) brings the quiet time back to its start.
      fill(2e-5);
      for (let i = 0; i < RecentTimes.WINDOW; i++) c.observeOverhead(2e-5, a);
      now += T + 1;
      assert.ok(!c.overheadMeasuredOf(a));
      // Frozen curves take no samples, so nothing expires.
      const frozen = ForwardCost.fromFunction((n) => n * 1e-3, { frozen: true, stepOverhead: 1e-5 });
      now += 100 * T;
      assert.strictEqual(frozen.stepOverheadOf(a), 1e-5);
    } finally {
      ForwardCost.clock = clock;
    }
  });

  it('a sized Medusa whose overhead was priced too high decodes plainly, and speculates again once the estimate expires', async () => {
    const clock = ForwardCost.clock;
    let now = 1000;
    ForwardCost.clock = () => now;
    const m = defaultModelPaths();
    const target = await LlamaModel.load(m.target, { device: 'cpu' });
    const heads = MedusaHeads.load(m.medusa, { device: 'cpu' });
    try {
      // A flat curve (a forward of up to 16 tokens costs 40 us: the heads pay whatever the machine's
      // load; with the measured curve a busy CI machine put them near break-even, and the test
      // failed there once), and the speculator's overhead measured at 50 ms a step (what a burst of
      // slow steps would leave): no tree pays until that estimate goes.
      const speculator = new MedusaSpeculator({ heads });
      const dec = new SpeculativeDecoder({ target, speculator });
      await dec.prepare();
      setForwardCost(target, ForwardCost.fromFunction((n) => 40e-6 * Math.max(1, n / 16)));
      const cost = knownForwardCost(target)!;
      for (let i = 0; i < ForwardCost.OVERHEAD_WARMUP + RecentTimes.WINDOW; i++) cost.observeOverhead(50e-3, speculator);
      const prompt = TextTokenizer.load(m.target)!.encode('once upon a time');
      const plain = await plainGenerate(target, [prompt], { maxNewTokens: 48 });
      for (let i = 0; i < 3; i++) {
        const [r] = await dec.generateBatch([prompt], { maxNewTokens: 48 });
        assert.deepStrictEqual(Array.from(r!.tokens), Array.from(plain.tokens[0]!));
        // Plain steps, but for a probe now and then (its sample alone does not move the estimate).
        assert.ok(r!.stats.targetForwards >= 46, `request ${i}: plain steps (${JSON.stringify(r!.stats.nodesPerStep)})`);
      }
      now += ForwardCost.OVERHEAD_STALE_SECONDS * 1000 + 1;
      // (The plain plan in use runs out first; the new estimate needs a few calls of samples.)
      const taus: number[] = [];
      for (let i = 0; i < 5; i++) {
        const [r] = await dec.generateBatch([prompt], { maxNewTokens: 48 });
        assert.deepStrictEqual(Array.from(r!.tokens), Array.from(plain.tokens[0]!));
        taus.push(r!.stats.tokensPerForward);
      }
      assert.ok(Math.max(...taus) > 2, `tau ${taus.join(', ')}: speculating again`);
      dec.dispose();
    } finally {
      ForwardCost.clock = clock;
      heads.dispose();
      target.dispose();
    }
  });

  it("each speculator's steps make its own step overhead; all steps' make the shared one", () => {
    const c = ForwardCost.fromFunction((n) => n * 1e-3);
    const a = {}, b = {};
    for (let i = 0; i < ForwardCost.OVERHEAD_WARMUP; i++) {
      c.observeOverhead(1, a);
      c.observeOverhead(1, b);
    }
    assert.strictEqual(c.stepOverheadOf(a), 0, 'cold samples are skipped per speculator too');
    for (let i = 0; i < ForwardCost.OVERHEAD_MIN_SAMPLES; i++) {
      assert.ok(!c.overheadMeasuredOf(a));
      c.observeOverhead(3e-5, a);
      c.observeOverhead(2e-4, b);
    }
    assert.ok(c.overheadMeasuredOf(a) && c.overheadMeasuredOf(b) && c.overheadMeasured);
    assert.ok(Math.abs(c.stepOverheadOf(a) - 3e-5) < 1e-12, String(c.stepOverheadOf(a)));
    assert.ok(Math.abs(c.stepOverheadOf(b) - 2e-4) < 1e-12, String(c.stepOverheadOf(b)));
    assert.strictEqual(c.stepOverheadOf(undefined), c.stepOverhead);
    assert.strictEqual(c.stepOverheadOf({}), 0, 'a speculator with no steps yet: 0 (it explores)');
    // stepCost prices a step with its speculator's overhead.
    assert.ok(Math.abs(stepCost(c, 1, undefined, a)(3) - (3e-3 + 3e-5)) < 1e-12);
    assert.ok(Math.abs(stepCost(c, 1, undefined, b)(3) - (3e-3 + 2e-4)) < 1e-12);
  });

  it('a native chain call is one overhead sample standing for its steps: one slow call does not fill the window', () => {
    const c = ForwardCost.fromFunction((n) => n * 1e-3);
    const owner = {};
    // The first call's 16 steps are the warm-up (cold), counted as steps.
    c.observeOverhead(1, owner, 16);
    assert.strictEqual(c.stepOverheadOf(owner), 0);
    for (let i = 0; i < ForwardCost.OVERHEAD_MIN_SAMPLES; i++) c.observeOverhead(2e-5, owner, 16);
    assert.ok(c.overheadMeasuredOf(owner));
    // A slow call (a collection, a preemption) is one sample among the window's: the lower quartile
    // stays. (Sixteen per-step samples of it would have been the whole window.)
    c.observeOverhead(5e-4, owner, 16);
    assert.ok(Math.abs(c.stepOverheadOf(owner) - 2e-5) < 1e-12, String(c.stepOverheadOf(owner)));
  });

  it("measures a chained draft token on a scratch sequence it frees (none without a chain call)", async () => {
    assert.strictEqual(await chainTokenCost(new ToyLM({ vocabSize: V, seed: 1, maxPositions: 64 })), undefined);
    const m = await LlamaModel.load(path.join(__dirname, '..', '..', 'models', 'default', 'draft'), { device: 'cpu' });
    try {
      const t = await chainTokenCost(m);
      assert.ok(t === undefined || (t > 0 && Number.isFinite(t)), String(t));
      assert.strictEqual(await chainTokenCost(m), t, 'once per model');
      assert.strictEqual(m.kvInfo().freePages, m.kvInfo().totalPages, 'the scratch sequence is freed');
    } finally {
      m.dispose();
    }
  });
});

describe('tree sizing: the choice', () => {
  it('chain: plain when drafts cannot pay, the longest chain when they are free, deterministic', () => {
    const half = (): number => 0.5;
    assert.strictEqual(chooseChainLength(half, 8, stepCost(linear())).size, 0);
    assert.strictEqual(chooseChainLength(() => 0.9, 8, stepCost(flat())).size, 8);
    assert.strictEqual(chooseChainLength(() => 0, 8, stepCost(flat())).size, 0, 'a useless draft never pays');
    // Knee at 8 tokens, acceptance 0.9: beyond 7 drafts each token costs a forward's 1/8 more.
    const a = chooseChainLength(() => 0.9, 16, stepCost(knee()));
    assert.strictEqual(a.size, 7);
    assert.deepStrictEqual(chooseChainLength(() => 0.9, 16, stepCost(knee())), a);
    // The draft's own cost counts: 0.3 forwards per draft token makes long chains lose.
    const withDraft = chooseChainLength(() => 0.9, 16, stepCost(knee(), 1, (nodes) => (nodes - 1) * 0.3));
    assert.ok(withDraft.size > 0 && withDraft.size < 7, `${withDraft.size}`);
  });

  it("drafting's cost is fixed + per token: recovered from mixed chain lengths, and the fixed part charged once", () => {
    // Truth: 30 us per step + 20 us per drafted token, with some noise above it (interference only adds).
    const r = rng(testSeed + 41);
    const c = new ChainCost(50e-6);
    assert.ok(Math.abs(c.cost(3) - 150e-6) < 1e-12, 'no samples: the one-token forward per token, nothing fixed');
    for (let i = 0; i < 40; i++) {
      const k = 1 + (i % 5);
      c.add(k, 30e-6 + 20e-6 * k + (r() < 0.3 ? r() * 20e-6 : 0));
    }
    const p = c.parts();
    assert.ok(Math.abs(p.perToken - 20e-6) < 4e-6 && Math.abs(p.fixed - 30e-6) < 8e-6, JSON.stringify(p));
    assert.strictEqual(c.cost(0), 0);
    // Only one chain length seen: the slope is the prior; the rest of the time is the fixed part.
    const one = new ChainCost(20e-6);
    for (let i = 0; i < 8; i++) one.add(1, 50e-6);
    assert.ok(Math.abs(one.parts().fixed - 30e-6) < 1e-9 && one.parts().perToken === 20e-6, JSON.stringify(one.parts()));
    // What the split changes: a costly fixed part, charged per token, made long chains look dear.
    const rates = (): number => 0.8;
    const target = stepCost(ForwardCost.fromFunction(() => 100e-6, { frozen: true }));
    const split = chooseChainLength(rates, 8, (n) => target(n) + c.cost(n - 1));
    const perTokenOnly = chooseChainLength(rates, 8, (n) => target(n) + (n - 1) * c.cost(1));
    assert.ok(split.size > perTokenOnly.size, `${split.size} vs ${perTokenOnly.size}`);
  });

  it("the draft model's acceptance at a depth it has not tried yet is the depth before it's", () => {
    const d = new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V, seed: testSeed }) });
    for (let i = 0; i < 20; i++) d.rates.record(0, i < 18 ? 0 : -1);
    assert.ok(Math.abs(d.rates.rate(0) - (18 + 2 * 0.6) / 22) < 1e-12);
    assert.strictEqual(d.rates.rate(3), d.rates.rate(0), 'untried depths lean on depth 0');
    for (let i = 0; i < 20; i++) d.rates.record(1, -1);
    assert.ok(d.rates.rate(1) < 0.1 && d.rates.rate(2) < 0.1, 'and on a depth that was tried and failed');
  });

  it('tree: plain on a linear curve, the full tree when free, and the brute-force optimum in between', () => {
    const shape = medusaTreeShape(MC_SIM_7B_63);
    const r = new RankRates((_d, k) => 0.6 / (k + 1) ** 2);
    const prob = treeProbabilities(shape.parents, (i) => r.rate(shape.head[i]!, shape.rank[i]!));
    assert.deepStrictEqual(Array.from(chooseSubtree(shape.parents, prob, stepCost(linear())).keep), [0]);
    const free = chooseSubtree(shape.parents, prob, stepCost(flat()));
    assert.strictEqual(free.keep.length, shape.parents.length, 'every node when the forward is free');

    // A small tree: every prefix-closed subtree enumerated.
    const parents = Int32Array.from([-1, 0, 0, 1, 1, 2, 3]);
    const p = Float64Array.from([1, 0.7, 0.2, 0.5, 0.1, 0.15, 0.3]);
    for (const cost of [knee(), ForwardCost.fromFunction((n) => 1 + 0.3 * n, { frozen: true }), ForwardCost.fromFunction((n) => 1 + 0.05 * n * n, { frozen: true })]) {
      const f = stepCost(cost);
      let best = 0;
      for (let mask = 1; mask < 1 << parents.length; mask += 2) {
        let ok = true;
        let e = 0;
        let n = 0;
        for (let i = 0; i < parents.length; i++) {
          if (!(mask & (1 << i))) continue;
          if (i > 0 && !(mask & (1 << parents[i]!))) ok = false;
          e += i === 0 ? 1 : p[i]!;
          n++;
        }
        if (ok) best = Math.max(best, e / f(n));
      }
      const got = chooseSubtree(parents, p, f);
      assert.ok(Math.abs(got.tokensPerSecond - best) < 1e-12 * best, `${got.tokensPerSecond} vs ${best}`);
      for (const i of got.keep) assert.ok(i === 0 || got.keep.includes(parents[i]!), 'prefix-closed');
    }
  });

  it('rank rates: the prior first, then the counts', () => {
    const r = new RankRates(() => 0.5, 2);
    assert.strictEqual(r.rate(0, 0), 0.5);
    for (let i = 0; i < 8; i++) r.record(0, 0);
    r.record(0, -1);
    r.record(0, 1);
    assert.strictEqual(r.rate(0, 0), (8 + 1) / (10 + 2));
    assert.strictEqual(r.rate(0, 1), (1 + 1) / (10 + 2));
    assert.strictEqual(r.rate(3, 0), 0.5, 'no trials at that depth yet');
  });

  it('rank rates, optimistic: one standard error above the rate, at most 1, closing in on it as trials accumulate', () => {
    const r = new RankRates(() => 0.5, 2);
    const se = (p: number, n: number): number => Math.sqrt((p * (1 - p)) / n);
    assert.ok(Math.abs(r.upper(0) - (0.5 + se(0.5, 2))) < 1e-12, 'the prior alone: its weight is all the evidence');
    const gaps: number[] = [];
    for (let i = 1; i <= 400; i++) {
      r.record(0, i % 4 === 0 ? -1 : 0);
      if (i === 4 || i === 40 || i === 400) gaps.push(r.upper(0) - r.rate(0));
    }
    assert.ok(Math.abs(gaps[2]! - se(r.rate(0), 402)) < 1e-12, `${gaps}`);
    assert.ok(gaps[0]! > gaps[1]! && gaps[1]! > gaps[2]! && gaps[2]! < 0.025, `the bonus shrinks with the trials: ${gaps}`);
    assert.strictEqual(new RankRates(() => 1, 2).upper(0), 1, 'never above 1');
    assert.strictEqual(new RankRates(() => 0, 2).upper(0), 0, 'a rate of 0 has no spread');
  });

  it('draft model (sized): a miss early on is weighed optimistically, so one unlucky first step does not mean plain decoding until a probe', () => {
    const sp = new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V, seed: testSeed }) });
    const weighK = (sp as unknown as { weighK: (cost: ForwardCost, draft: ChainCost, batch: number) => number }).weighK.bind(sp);
    // Each verified token beyond the first costs 0.8 of a forward, a drafted one 0.05.
    const curve = ForwardCost.fromFunction((n) => 1 + 0.8 * (n - 1), { frozen: true });
    const draft = new ChainCost(0.05);
    const onRates = (): number => chooseChainLength((i) => sp.rates.rate(i), 8, stepCost(curve, 1, (n) => draft.cost(n - 1), sp)).size;
    // The first step: its first draft accepted, its second not (the embedded family's first step on
    // "once upon a time" in some runs, after which the CLI decoded 32 steps plainly).
    sp.rates.record(0, 0);
    sp.rates.record(1, -1);
    assert.strictEqual(onRates(), 0, 'on the estimates alone the choice is plain (and plain steps record nothing)');
    assert.ok(weighK(curve, draft, 1) >= 1, 'weighed optimistically it drafts, and learns');
    // Evidence accumulates: the choice follows the estimates. Depth 1 always misses: one draft a step.
    for (let i = 0; i < 400; i++) {
      sp.rates.record(0, 0);
      sp.rates.record(1, -1);
    }
    assert.strictEqual(weighK(curve, draft, 1), onRates());
    assert.strictEqual(onRates(), 1);
    // A draft that always misses: plain, whichever way it is weighed.
    const bad = new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V, seed: testSeed }) });
    for (let i = 0; i < 100; i++) bad.rates.record(0, -1);
    assert.strictEqual((bad as unknown as { weighK: (cost: ForwardCost, draft: ChainCost, batch: number) => number }).weighK(curve, draft, 1), 0);
    // Nothing pays on a linear curve, however good the draft looks.
    assert.strictEqual(weighK(linear(), draft, 1), 0);
  });

  it("Medusa (sized): its tree's node probabilities lean optimistic while a head's evidence is thin, and come to the estimates", () => {
    const heads = MedusaHeads.load(writeMedusaHeads({ numHeads: 4, numLayers: 1, hiddenSize: 16, vocabSize: V, seed: testSeed }), { device: 'cpu' });
    try {
      const sp = new MedusaSpeculator({ heads });
      const self = sp as unknown as { nodeProbabilities(): Float64Array; shape: { parents: Int32Array; head: Int32Array; rank: Int32Array } };
      const onEstimates = (): Float64Array => treeProbabilities(self.shape.parents, (i) => sp.rates.rate(self.shape.head[i]!, self.shape.rank[i]!));
      // One step's outcome: head 0's top guess accepted, head 1's missed (its rank-0 rate falls to 1/6).
      sp.rates.record(0, 0);
      sp.rates.record(1, -1);
      const thin = self.nodeProbabilities();
      const est = onEstimates();
      assert.ok(thin.every((p, i) => p >= est[i]!) && thin.some((p, i) => p > 1.5 * est[i]!), 'above the estimates, well above somewhere');
      for (let i = 0; i < 400; i++) {
        sp.rates.record(0, 0);
        sp.rates.record(1, i % 2 === 0 ? 0 : -1);
      }
      const thick = self.nodeProbabilities();
      const est2 = onEstimates();
      // Depths 0 and 1 have 401 trials each: their nodes' probabilities within a few hundredths.
      for (let i = 1; i < thick.length; i++) if (self.shape.head[i]! <= 1) assert.ok(Math.abs(thick[i]! - est2[i]!) < 0.03, `node ${i}: ${thick[i]} vs ${est2[i]}`);
      sp.dispose();
    } finally {
      heads.dispose();
    }
  });

  it('confidence calibration: the raw confidence first, then what was accepted, per bin and sibling rank', () => {
    const c = new ConfidenceCalibration(4);
    assert.strictEqual(c.estimate(0.35, 0), 0.35);
    // A top choice at 0.35 that the target always takes (its argmax under a spread distribution).
    for (let i = 0; i < 36; i++) c.record(0.31 + i / 1000, 0, true);
    assert.ok(Math.abs(c.estimate(0.35, 0) - (36 + 4 * 0.35) / 40) < 1e-12);
    // A second choice at the same confidence that it never takes.
    for (let i = 0; i < 36; i++) c.record(0.35, 1, false);
    assert.ok(Math.abs(c.estimate(0.35, 1) - (4 * 0.35) / 40) < 1e-12);
    assert.strictEqual(c.estimate(0.75, 0), 0.75, 'another bin keeps its prior');
    assert.strictEqual(c.estimate(0.35, 2), 0.35, 'rank 2 and beyond share a bin of their own');
    assert.strictEqual(c.estimate(1.5, 0), 1, 'clamped');
  });

  it('plan outcomes: realized over predicted tokens (per second where timed) per size once a size has MIN_WEIGHT recent steps; older steps fade', () => {
    const o = new PlanOutcomes();
    for (let i = 0; i < PlanOutcomes.MIN_WEIGHT; i++) o.record(5, 4, 4.8);
    assert.strictEqual(o.correction(5), undefined, 'too few steps (each one ages the others)');
    o.record(5, 4, 4.8);
    assert.ok(Math.abs((o.correction(5) as number) - 1.2) < 1e-12);
    o.record(4, 3.5, 3.5);
    assert.strictEqual(o.correction(4), undefined);
    // Steps of other sizes age size 5's: after a few half-lives it counts as untried again.
    for (let i = 0; i < 3 * PlanOutcomes.HALF_LIFE; i++) o.record(4, 3.5, 3.15);
    assert.ok(Math.abs((o.correction(4) as number) - 0.9) < 1e-3);
    assert.strictEqual(o.correction(5), undefined, 'faded');
    o.record(3, 0, 1);
    assert.strictEqual(o.correction(3), undefined, 'a step with no prediction is not taken in');
    // Timed steps: tokens per second. Size 6 gives the tokens predicted in 1.25x the time predicted.
    const t = new PlanOutcomes();
    for (let i = 0; i <= PlanOutcomes.MIN_WEIGHT; i++) t.record(6, 4, 4, { predicted: 1e-4, realized: 1.25e-4 });
    assert.ok(Math.abs((t.correction(6) as number) - 0.8) < 1e-12);
    t.record(7, 4, 5, { predicted: 0, realized: 1e-4 });
    for (let i = 0; i < PlanOutcomes.MIN_WEIGHT; i++) t.record(7, 4, 5);
    assert.ok(Math.abs((t.correction(7) as number) - 1.25) < 1e-12, 'untimed steps: tokens per step');
  });

  it('plan size: the prediction until outcomes exist, then corrected; a near tie without outcomes is explored once the best has some', () => {
    // A chain whose nodes are each 0.8 likely (expected 1, 1.8, 2.44, ...) under a cost of 1 + 0.25 n:
    // 5 nodes best, 4 and 6 within 2% of it.
    const parents = Int32Array.from({ length: 8 }, (_, i) => i - 1);
    const prob = treeProbabilities(parents, () => 0.8);
    const cost = (n: number): number => 1 + 0.25 * n;
    const choice = chooseSubtree(parents, prob, cost);
    const value = (c: number): number => (choice.expectedByCount[c - 1] as number) / cost(c);
    assert.strictEqual(choice.size + 1, 5);
    assert.deepStrictEqual(Array.from(choice.order), [0, 1, 2, 3, 4, 5, 6, 7]);
    assert.ok(value(4) >= EXPLORE_SHARE * value(5) && value(6) >= EXPLORE_SHARE * value(5), 'near ties on both sides');
    const o = new PlanOutcomes();
    assert.deepStrictEqual(choosePlanSize(choice, cost, o), { count: 5, explore: false }, 'nothing measured: the prediction');
    for (let i = 0; i <= PlanOutcomes.MIN_WEIGHT; i++) o.record(5, choice.expectedByCount[4] as number, choice.expectedByCount[4] as number);
    const next = choosePlanSize(choice, cost, o);
    assert.ok(next.explore && (next.count === 4 || next.count === 6), `the best measured: a near tie explored (${JSON.stringify(next)})`);
    // Size 4 gives a fifth more than predicted (the rates were measured under 5-node steps): taken.
    for (let i = 0; i <= PlanOutcomes.MIN_WEIGHT; i++) o.record(4, choice.expectedByCount[3] as number, 1.2 * (choice.expectedByCount[3] as number));
    for (let i = 0; i <= PlanOutcomes.MIN_WEIGHT; i++) o.record(6, choice.expectedByCount[5] as number, 0.8 * (choice.expectedByCount[5] as number));
    // 3 nodes, unmeasured, borrow the 1.2 of 4: a near tie of the corrected best, tried once.
    assert.deepStrictEqual(choosePlanSize(choice, cost, o), { count: 3, explore: true });
    for (let i = 0; i <= PlanOutcomes.MIN_WEIGHT; i++) o.record(3, choice.expectedByCount[2] as number, choice.expectedByCount[2] as number);
    assert.deepStrictEqual(choosePlanSize(choice, cost, o), { count: 4, explore: false });
    // A measured size's correction stands for its unmeasured neighbours: 6 nodes measured at 1.3x
    // their prediction (a curve priced by other steps), 5 -- the best by prediction -- is tried next,
    // not left behind the corrected 6.
    const o3 = new PlanOutcomes();
    for (let i = 0; i <= PlanOutcomes.MIN_WEIGHT; i++) o3.record(6, 1, 1.3);
    assert.deepStrictEqual(choosePlanSize(choice, cost, o3), { count: 5, explore: true });
    // A size far below the best (2 nodes) is not explored.
    assert.ok(value(2) < EXPLORE_SHARE * value(5));
    const o2 = new PlanOutcomes();
    for (let i = 0; i < 2 * PlanOutcomes.MIN_WEIGHT; i++) for (const c of [3, 4, 5, 6, 7, 8]) o2.record(c, 1, 1);
    assert.deepStrictEqual(choosePlanSize(choice, cost, o2), { count: 5, explore: false });
  });

  it('rows cost: per power-of-two bucket, interpolated between, proportional above, flat below', () => {
    const c = new RowsCost();
    assert.strictEqual(c.predict(4), 0);
    c.add(8, 6e-4);
    assert.strictEqual(c.predict(8), 6e-4);
    assert.strictEqual(c.predict(16), 12e-4);
    assert.strictEqual(c.predict(1), 6e-4);
    c.add(1, 3e-4);
    assert.strictEqual(c.predict(1), 3e-4);
    assert.ok(Math.abs(c.predict(4) - (3e-4 + (3e-4 * 3) / 7)) < 1e-15);
    assert.ok(c.predict(6) > c.predict(4) && c.predict(6) < c.predict(8));
  });
});

describe('prepare(): the cost model calibrated before the first request', function () {
  this.timeout(120000);
  const paths = defaultModelPaths();
  const owned: { dispose(): void }[] = [];
  after(() => {
    for (const o of owned.splice(0).reverse()) o.dispose();
  });
  /** A fresh model (its cost curve unknown) that counts the sequences created on it (calibration makes scratch ones). */
  const load = async (dir: string): Promise<{ model: LlamaModel; created: () => number }> => {
    const model = await LlamaModel.load(dir, { device: 'cpu' });
    owned.push(model);
    const create = model.createSequence.bind(model);
    let n = 0;
    model.createSequence = () => {
      n++;
      return create();
    };
    return { model, created: () => n };
  };
  const prompt = Int32Array.from([5, 17, 40, 9, 22]);
  const cases: [string, (draft: LlamaModel) => Speculator, 'target' | 'draft'][] = [
    ['draft model', (draft) => new DraftModelSpeculator({ draft }), 'target'],
    ['Medusa', () => new MedusaSpeculator({ heads: own(MedusaHeads.load(paths.medusa, { device: 'cpu' })) }), 'target'],
    ['EAGLE', () => new EagleSpeculator({ head: own(EagleHead.load(paths.eagle, { device: 'cpu' })) }), 'target'],
    ['lookahead', () => new LookaheadSpeculator({ W: 4, N: 3, G: 4 }), 'target'],
    ['prompt lookup', () => new PromptLookupSpeculator({ maxNgram: 2 }), 'target'],
    // The inner strategy sizes itself on the draft model it speeds up.
    ['hybrid (lookahead on the draft)', (draft) => new HybridSpeculator({ draft, draftSpeculator: new LookaheadSpeculator({ W: 4, N: 3, G: 4 }), k: 4 }), 'draft'],
  ];
  function own<T extends { dispose(): void }>(x: T): T {
    owned.push(x);
    return x;
  }
  for (const [name, make, calibrated] of cases) {
    it(`${name}: prepare() calibrates once; the first request then makes no scratch sequence; tokens as plain`, async () => {
      const t = await load(paths.target);
      const d = await load(paths.draft);
      const plain = await plainGenerate(t.model, [prompt], { maxNewTokens: 12 });
      const dec = new SpeculativeDecoder({ target: t.model, speculator: make(d.model) });
      const measured = calibrated === 'target' ? t.model : d.model;
      assert.strictEqual(knownForwardCost(measured), undefined);
      const before = [t.created(), d.created()];
      const { seconds } = await dec.prepare();
      assert.ok(seconds > 0, String(seconds));
      assert.ok(knownForwardCost(measured), 'the cost curve is known after prepare()');
      assert.ok(t.created() + d.created() > before[0]! + before[1]!, 'calibration ran on scratch sequences');
      const again = [t.created(), d.created()];
      await dec.prepare();
      assert.deepStrictEqual([t.created(), d.created()], again, 'a second prepare() measures nothing');
      const [r] = await dec.generateBatch([prompt], { maxNewTokens: 12 });
      assert.deepStrictEqual(Array.from(r!.tokens), Array.from(plain.tokens[0]!));
      assert.strictEqual(t.created() - again[0]!, 1, 'the request made its own target sequence and no scratch one');
      assert.ok(d.created() - again[1]! <= 1, `draft sequences made by the request: ${d.created() - again[1]!}`);
      dec.dispose();
    });
  }

  it('without prepare() the first request calibrates (scratch sequences); a fixed setting measures nothing', async () => {
    const t = await load(paths.target);
    const d = await load(paths.draft);
    const dec = new SpeculativeDecoder({ target: t.model, speculator: new DraftModelSpeculator({ draft: d.model }) });
    await dec.generateBatch([prompt], { maxNewTokens: 4 });
    assert.ok(t.created() >= 2 && d.created() >= 2, `target ${t.created()}, draft ${d.created()} sequences`);
    dec.dispose();
    const t2 = await load(paths.target);
    const fixed = new SpeculativeDecoder({ target: t2.model, speculator: new DraftModelSpeculator({ draft: d.model, k: 3 }) });
    const made = d.created();
    await fixed.prepare();
    assert.strictEqual(t2.created(), 0);
    assert.strictEqual(d.created(), made);
    assert.strictEqual(knownForwardCost(t2.model), undefined);
    fixed.dispose();
  });

  it('Engine.prepare() while requests run: between steps (no E_BUSY), their tokens as plain', async () => {
    const t = await load(paths.target);
    const d = await load(paths.draft);
    const plain = await plainGenerate(t.model, [prompt], { maxNewTokens: 48 });
    const engine = new Engine({ model: t.model, speculator: new DraftModelSpeculator({ draft: d.model, k: 3 }) });
    const sized = new Engine({ model: t.model, speculator: new DraftModelSpeculator({ draft: d.model }) });
    const running = engine.submit(prompt, { maxNewTokens: 48 });
    const [res] = await Promise.all([running, sized.prepare()]);
    assert.deepStrictEqual(Array.from(res.tokens), Array.from(plain.tokens[0]!));
    assert.ok(knownForwardCost(t.model));
  });
});

describe('tree sizing: greedy output equals plain greedy whatever size is picked', () => {
  const seed = testSeed;
  const target = new ToyLM({ vocabSize: V, seed, positional: false, hidden: 'state' });
  let heads: MedusaHeads;
  before(() => {
    heads = MedusaHeads.load(writeMedusaHeads({ numHeads: 4, numLayers: 1, hiddenSize: V * V, vocabSize: V, seed }), { device: 'cpu' });
  });
  after(() => heads.dispose());

  const partial = (): ToyLM => new ToyLM({ vocabSize: V, seed, positional: false, hidden: 'state', mix: { seed: seed + 9, weight: 0.4 } });
  const makers: [string, () => Speculator][] = [
    ['draft model (cost k)', () => new DraftModelSpeculator({ draft: partial() })],
    ['Medusa (sized mc_sim_7b_63)', () => new MedusaSpeculator({ heads })],
    ['lookahead W=5 N=3 G=5 (sized)', () => new LookaheadSpeculator({ W: 5, N: 3, G: 5 })],
    ['prompt lookup (sized)', () => new PromptLookupSpeculator({ maxNgram: 2 })],
  ];
  const curves: [string, () => ForwardCost][] = [
    ['linear', linear],
    ['flat', flat],
    ['knee', knee],
    // Forwards of a nanosecond a token: weighing a proposal costs more than WEIGH_SHARE of a step,
    // so lookahead and prompt lookup skip weighing after plain choices.
    ['linear, weighing dear', () => ForwardCost.fromFunction((n) => n * 1e-9, { frozen: true })],
  ];
  for (const [curveName, curve] of curves) {
    for (const [name, make] of makers) {
      it(`${name}, ${curveName} cost curve`, async () => {
        setForwardCost(target, curve());
        const ps = Array.from({ length: 3 }, (_, i) => {
          const r = rng(seed + i);
          return Int32Array.from({ length: 3 + 4 * i }, () => Math.floor(r() * V));
        });
        const plain = await plainGenerate(target, ps, { maxNewTokens: 30 });
        const dec = new SpeculativeDecoder({ target, speculator: make() });
        const res = await dec.generateBatch(ps, { maxNewTokens: 30 });
        res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain.tokens[i]!), `sequence ${i}`));
        const sizes = new Set<number>();
        for (const r of res) for (const k of Object.keys(r.stats.nodesPerStep)) sizes.add(Number(k));
        if (curveName.startsWith('linear')) assert.deepStrictEqual([...sizes], [1], `a linear curve decodes plainly (sizes ${[...sizes]})`);
        if (curveName === 'flat' && name.startsWith('Medusa')) assert.ok(sizes.has(64), `the full 63-node tree when forwards are free (sizes ${[...sizes]})`);
        if (curveName === 'flat' && name.startsWith('draft')) assert.ok(sizes.has(9), `k = maxK = 8 when forwards are free (sizes ${[...sizes]})`);
        dec.dispose();
        assert.strictEqual(target.liveSequences(), 0);
      });
    }
  }

  it('a sampled draft model keeps its k under the cost model (its tokens depend on the drafts): the tokens of a fixed k', async () => {
    setForwardCost(target, flat());
    const ps = [Int32Array.from([1, 2, 3, 4]), Int32Array.from([5, 1, 5])];
    const sampling = { temperature: 0.8, seed: seed + 5 };
    const fixed = await new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: partial(), k: 4, adaptive: 'fixed' }), sampling }).generateBatch(ps, { maxNewTokens: 24 });
    const sized = await new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: partial() }), sampling }).generateBatch(ps, { maxNewTokens: 24 });
    sized.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(fixed[i]!.tokens), `sequence ${i}`));
  });

  // Sampled steps are sized too where the drafts are deterministic: their tokens do not depend on
  // the trees (spec_math.h), so whatever the choice, the tokens are plain sampling's.
  for (const [curveName, curve] of curves.slice(0, 3)) {
    for (const [name, make] of makers.slice(1)) {
      it(`${name}, ${curveName} cost curve, sampled: plain sampling's tokens`, async () => {
        setForwardCost(target, curve());
        const ps = Array.from({ length: 3 }, (_, i) => {
          const r = rng(seed + i);
          return Int32Array.from({ length: 3 + 4 * i }, () => Math.floor(r() * V));
        });
        const sampling = { temperature: 0.7, topK: 5, seed: seed + 11 };
        const plain = await new SpeculativeDecoder({ target, sampling }).generateBatch(ps, { maxNewTokens: 30 });
        const dec = new SpeculativeDecoder({ target, speculator: make(), sampling });
        const res = await dec.generateBatch(ps, { maxNewTokens: 30 });
        res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain[i]!.tokens), `sequence ${i}`));
        const sizes = new Set<number>();
        for (const r of res) for (const k of Object.keys(r.stats.nodesPerStep)) sizes.add(Number(k));
        if (curveName === 'linear') assert.deepStrictEqual([...sizes], [1], `a linear curve decodes plainly (sizes ${[...sizes]})`);
        if (curveName === 'flat' && name.startsWith('Medusa')) assert.ok(sizes.has(64), `the full 63-node tree when forwards are free (sizes ${[...sizes]})`);
        if (curveName === 'flat') assert.ok([...sizes].some((n) => n > 1), `trees when forwards are free (sizes ${[...sizes]})`);
        dec.dispose();
        assert.strictEqual(target.liveSequences(), 0);
      });
    }
  }
});

/** Counts a prompt lookup speculator's weighings (each adds a sample to its weighing time). */
function countWeighings(sp: PromptLookupSpeculator): { n: number } {
  const counted = { n: 0 };
  const ws = (sp as unknown as { weighSeconds: { add: (s: number) => void } }).weighSeconds;
  const add = ws.add.bind(ws);
  ws.add = (x: number): void => {
    counted.n++;
    add(x);
  };
  return counted;
}

describe('sized n-gram speculators: weighing skipped after plain choices when it is dear', () => {
  const seed = testSeed;
  const target = new ToyLM({ vocabSize: V, seed, positional: false, hidden: 'state' });
  const prompts = Array.from({ length: 3 }, (_, i) => {
    const r = rng(seed + 50 + i);
    // A repetitive prompt: the n-gram pools have candidates at most steps.
    const unit = Array.from({ length: 3 + i }, () => Math.floor(r() * V));
    return Int32Array.from({ length: 24 }, (_, j) => unit[j % unit.length] as number);
  });
  const weighings = async (curve: ForwardCost): Promise<{ weighed: number; steps: number }> => {
    setForwardCost(target, curve);
    const sp = new LookaheadSpeculator({ W: 5, N: 3, G: 5 });
    const self = sp as unknown as { size: (...a: unknown[]) => unknown };
    const size = self.size.bind(sp);
    let weighed = 0;
    self.size = (...a: unknown[]): unknown => {
      weighed++;
      return size(...a);
    };
    const dec = new SpeculativeDecoder({ target, speculator: sp });
    const plain = await plainGenerate(target, prompts, { maxNewTokens: 60 });
    const res = await dec.generateBatch(prompts, { maxNewTokens: 60 });
    res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain.tokens[i]!), `sequence ${i}`));
    dec.dispose();
    return { weighed, steps: res.reduce((n, r) => n + r.stats.targetForwards, 0) };
  };

  // n greedy tokens of prompts[0] with `sp` under `curve`: the output of plain decoding, and at least
  // minTokens of them (an early EOS leaves too few steps to count).
  const runAsPlain = async (curve: ForwardCost, sp: Speculator, n: number, minTokens = 0): Promise<GenerateResult> => {
    setForwardCost(target, curve);
    const dec = new SpeculativeDecoder({ target, speculator: sp });
    try {
      const plain = await plainGenerate(target, [prompts[0]!], { maxNewTokens: n });
      const res = await dec.generate(prompts[0]!, { maxNewTokens: n }).result;
      assert.deepStrictEqual(Array.from(res.tokens), Array.from(plain.tokens[0]!));
      assert.ok(res.tokens.length >= minTokens, `${res.tokens.length} tokens (an early EOS leaves too few steps to count)`);
      return res;
    } finally {
      dec.dispose();
    }
  };

  it('Medusa decoding plainly runs its heads for probes only (a probe that proposed nothing had them run after every step)', async () => {
    const heads = MedusaHeads.load(writeMedusaHeads({ numHeads: 4, numLayers: 1, hiddenSize: V * V, vocabSize: V, seed }), { device: 'cpu' });
    try {
      let calls = 0;
      const topKIds = heads.topKIds.bind(heads);
      heads.topKIds = (...a: Parameters<MedusaHeads['topKIds']>): Int32Array => {
        calls++;
        return topKIds(...a);
      };
      const res = await runAsPlain(linear(), new MedusaSpeculator({ heads }), 150);
      // The prefill, then a probe after 32 plain steps, the next after 64 more (the plan still plain).
      assert.ok(calls <= 4, `the heads ran ${calls} times in ${res.stats.targetForwards} steps`);
      assert.ok(res.stats.proposedDraftTokens >= 1, 'a probe proposes a node');
    } finally {
      heads.dispose();
    }
  });

  it('Medusa (sized) runs only the heads its subtree reads, all of them on the plan\'s last use; greedy output as plain', async () => {
    const heads = MedusaHeads.load(writeMedusaHeads({ numHeads: 4, numLayers: 1, hiddenSize: V * V, vocabSize: V, seed }), { device: 'cpu' });
    try {
      const sp = new MedusaSpeculator({ heads });
      const getter = Object.getOwnPropertyDescriptor(MedusaSpeculator.prototype, 'headsOnAccepted')?.get as () => unknown;
      const ran: number[] = [];
      Object.defineProperty(sp, 'headsOnAccepted', {
        get(): unknown {
          // (The heads come as a native set per count: MedusaHeads.weights(d) for the first d.)
          const h = getter.call(sp) as { heads: unknown } | undefined;
          if (h) ran.push([1, 2, 3, 4].find((d) => heads.weights(d) === h.heads) ?? -1);
          return h;
        },
      });
      // Free up to 3 tokens, dear beyond: one sequence's subtree of at most 3 nodes (<= 2 heads deep).
      const res = await runAsPlain(ForwardCost.fromFunction((n) => (n <= 3 ? 1 : 100 * n), { frozen: true }), sp, 80);
      const nodes = Object.keys(res.stats.nodesPerStep).map(Number);
      assert.ok(nodes.some((n) => n > 1) && Math.max(...nodes) <= 3, `small trees on this curve (sizes ${nodes})`);
      assert.ok(ran.some((d) => d < 4), `fewer heads than the four while the plan is shallow (${ran})`);
      assert.ok(ran.includes(4), `all four heads on a plan's last use (${ran})`);
      assert.ok(ran.filter((d) => d === 4).length <= Math.ceil(ran.length / 4), `all heads on about one step in eight (${ran})`);
    } finally {
      heads.dispose();
    }
  });

  it('lookahead: weighs nearly every step when weighing is cheap beside a step, a fraction of them when it is dear', async () => {
    const cheap = await weighings(linear());
    const dear = await weighings(ForwardCost.fromFunction((n) => n * 1e-9, { frozen: true }));
    assert.ok(cheap.weighed >= cheap.steps / 2, `cheap: ${cheap.weighed} weighings in ${cheap.steps} steps`);
    assert.ok(dear.weighed * 3 <= cheap.weighed, `dear: ${dear.weighed} weighings, cheap: ${cheap.weighed}`);
  });

  it('prompt lookup: plain choices in a row space its weighings out (7, 14, 28, 56 steps) and back its probes off', async () => {
    const sp = new PromptLookupSpeculator({ maxNgram: 2 });
    const counted = countWeighings(sp);
    const res = await runAsPlain(ForwardCost.fromFunction((n) => n * 1e-9, { frozen: true }), sp, 200, 150);
    const weighed = counted.n;
    const tokens = res.tokens.length;
    const probes = res.stats.proposedDraftTokens;
    // Weighed at steps 1, 9, 24, at a probe after 32 unproposed matches and the step after it, then
    // 64 matches later, and so on: 9 at most in 200 steps, where a skip that stayed at 7 weighed
    // every 8th step and probed every 33rd (29 weighings, 6 probes).
    assert.ok(weighed >= 4 && weighed <= 9, `${weighed} weighings in ${tokens} steps`);
    assert.ok(probes >= 1 && probes <= 3, `${probes} probes`);
  });

  it('draft model: plain choices in a row keep the choice longer (8, 16, 32, 64 steps), so plain chains run long; a probe is weighed at once', async () => {
    const draft = new ToyLM({ vocabSize: V, seed, positional: false, hidden: 'state', mix: { seed: seed + 9, weight: 0.4 } });
    const sp = new DraftModelSpeculator({ draft });
    const self = sp as unknown as { weighK: (...a: unknown[]) => number };
    const weighK = self.weighK.bind(sp);
    const sizes: number[] = [];
    self.weighK = (...a: unknown[]): number => {
      const k = weighK(...a);
      sizes.push(k);
      return k;
    };
    const res = await runAsPlain(linear(), sp, 300, 250);
    const tokens = res.tokens.length;
    // A linear curve never pays: every weighing chooses plain. Kept 8, 16, 32, 64, 64, ... steps,
    // plus one weighing after each probe (every 33, 65, 129, 257 plain steps): about 10 in 300
    // steps, where a choice kept 8 steps weighed 37 times.
    assert.ok(sizes.every((k) => k === 0), `sizes weighed: ${sizes}`);
    assert.ok(sizes.length >= 4 && sizes.length <= 12, `${sizes.length} weighings in ${tokens} steps`);
    assert.ok(res.stats.proposedDraftTokens >= 1, 'probes still run');
  });

  it('EAGLE decoding plainly backs its forced probes off (33, then 65, 129 steps), as the draft model does', async () => {
    const paths = defaultModelPaths();
    const llama = await LlamaModel.load(paths.target, { device: 'cpu' });
    const head = EagleHead.load(paths.eagle, { device: 'cpu' });
    try {
      const c1 = (await forwardCost(llama)).predict(1);
      setForwardCost(llama, ForwardCost.fromFunction((n) => n * c1, { frozen: true }));
      // A prompt whose greedy continuation runs long (154 tokens before its EOS).
      const prompt = TextTokenizer.load(paths.target)!.encode('once upon a time');
      const plain = await plainGenerate(llama, [prompt], { maxNewTokens: 220 });
      assert.ok(plain.tokens[0]!.length >= 140, `${plain.tokens[0]!.length} tokens: too few steps to count probes`);
      const dec = new SpeculativeDecoder({ target: llama, speculator: new EagleSpeculator({ head }) });
      const [r] = await dec.generateBatch([prompt], { maxNewTokens: 220 });
      dec.dispose();
      assert.deepStrictEqual(Array.from(r!.tokens), Array.from(plain.tokens[0]!));
      // Each forced probe proposes one node: 2 here (after 33 and 65 more plain steps); reset to every
      // 33 steps they were 4.
      assert.ok(r!.stats.proposedDraftTokens >= 1 && r!.stats.proposedDraftTokens <= 3, `${r!.stats.proposedDraftTokens} probe nodes in ${r!.tokens.length} steps`);
    } finally {
      head.dispose();
      llama.dispose();
    }
  });

  it('prompt lookup: while weighing is cheap beside a step, plain choices skip lookups too and back probes off (33, 65, 129 steps)', async () => {
    const sp = new PromptLookupSpeculator({ maxNgram: 2 });
    const counted = countWeighings(sp);
    const res = await runAsPlain(linear(), sp, 200, 150);
    const weighed = counted.n;
    const tokens = res.tokens.length;
    const probes = res.stats.proposedDraftTokens;
    // A linear curve: no draft pays, so each plain choice skips the next lookups (7, 14, 28, 56
    // steps) though a lookup costs little beside a step; probes after 33 and 65 more unproposed
    // matches. (Weighing every match and probing every 33 steps broke the plain chains ~10 times as
    // often.)
    assert.ok(probes >= 1 && probes <= 3, `${probes} probes in ${tokens} steps`);
    assert.ok(weighed >= 3 && weighed <= 12, `${weighed} weighings in ${tokens} steps`);
  });

  it('prompt lookup: a probe that leaves no draft paying backs the next off at once, though its request ends before another weighing', async () => {
    const sp = new PromptLookupSpeculator({ maxNgram: 2 });
    // Requests of 45 tokens: the first probe comes after 33 plain steps, and the request ends before
    // the sequence weighs again. Until 2026-12-06 only that next weighing backed the probes off, so
    // every request probed at the same place.
    const probes: number[] = [];
    for (let i = 0; i < 4; i++) probes.push((await runAsPlain(linear(), sp, 45, 45)).stats.proposedDraftTokens);
    assert.ok((probes[0] as number) >= 1, `probes per request: ${probes}`);
    assert.deepStrictEqual(probes.slice(1), [0, 0, 0], `probes per request: ${probes}`);
  });
});

describe('lookahead: candidates as a trie', () => {
  it('merges shared prefixes, best rank kept', () => {
    const t = candidateTrie(9, [
      [1, 2],
      [1, 3, 4],
      [5, 6],
      [1, 3, 7],
    ]);
    assert.deepStrictEqual(Array.from(t.tokens), [9, 1, 2, 3, 4, 5, 6, 7]);
    assert.deepStrictEqual(Array.from(t.parents), [-1, 0, 1, 1, 3, 0, 5, 3]);
    assert.deepStrictEqual(Array.from(t.depth), [0, 1, 2, 2, 3, 1, 2, 3]);
    assert.deepStrictEqual(Array.from(t.rank), [-1, 0, 0, 1, 1, 2, 2, 3]);
  });

  it('greedy verification keeps the longer match of a later chain that separate chains lose', () => {
    // The target continues root 9 with 1, 3, 4, then 8. Chains [1, 2] and [1, 3, 4]: the walk takes
    // the first child with token 1 (chain A) and stops at its 2, losing chain B's 3, 4.
    const chains = [
      [1, 2],
      [1, 3, 4],
    ];
    const next = new Map<string, number>([
      ['9', 1],
      ['9,1', 3],
      ['9,1,3', 4],
      ['9,1,3,4', 8],
    ]);
    const run = (tree: { tokens: Int32Array; parents: Int32Array }): number[] => {
      const n = tree.tokens.length;
      const logits = new Float32Array(n * V);
      for (let i = 0; i < n; i++) {
        const pathTokens: number[] = [];
        for (let k = i; k >= 0; k = tree.parents[k]!) pathTokens.unshift(tree.tokens[k]!);
        logits[i * V + (next.get(pathTokens.join(',')) ?? 0)] = 1;
      }
      const target = Tensor.fromArray(logits, 'f32', [n, V]);
      try {
        const { nodeIndptr, parents, tokens } = flattenTrees([tree]);
        return Array.from(verify({ mode: 'greedy', nodeIndptr, parents, tokens, target }).emitted[0]!);
      } finally {
        target.dispose();
      }
    };
    const separate = { tokens: Int32Array.from([9, 1, 2, 1, 3, 4]), parents: Int32Array.from([-1, 0, 1, 0, 3, 4]) };
    assert.deepStrictEqual(run(separate), [1, 3], 'separate chains: the longer match is lost');
    assert.deepStrictEqual(run(candidateTrie(9, chains)), [1, 3, 4, 8], 'the trie keeps it');
    assert.deepStrictEqual(run(chainTree(9, [1, 3, 4])), [1, 3, 4, 8]);
  });
});

describe('widened benchmark family (bench/wide_family.ts)', function () {
  const src = path.resolve(__dirname, '..', '..', 'models', 'default');
  let dir: string;
  before(function () {
    if (!fs.existsSync(path.join(src, 'target', 'config.json'))) this.skip();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-wide-'));
  });
  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('K = 4: the wide target gives the same greedy tokens and close logits; Medusa heads and draft alike', async () => {
    const K = 4;
    const wide = widenFamily(src, dir, K);
    const cfg = JSON.parse(fs.readFileSync(path.join(wide.target!, 'config.json'), 'utf8')) as Record<string, number | boolean>;
    assert.strictEqual(cfg['hidden_size'], 128 * K);
    assert.strictEqual(cfg['num_key_value_heads'], 2 * K);
    assert.strictEqual(cfg['head_dim'], 32);
    const draftCfg = JSON.parse(fs.readFileSync(path.join(wide.draft!, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.strictEqual(draftCfg['tie_word_embeddings'], false, 'the tied draft head is untied');
    const models = {
      a: await LlamaModel.load(path.join(src, 'target'), { device: 'cpu' }),
      b: await LlamaModel.load(wide.target!, { device: 'cpu' }),
      da: await LlamaModel.load(path.join(src, 'draft'), { device: 'cpu' }),
      db: await LlamaModel.load(wide.draft!, { device: 'cpu' }),
    };
    const ha = MedusaHeads.load(path.join(src, 'medusa'), { device: 'cpu' });
    const hb = MedusaHeads.load(wide.medusa!, { device: 'cpu' });
    try {
      const prompt = Int32Array.from([1, 4, 276, 306, 7, 322]);
      for (const [x, y] of [
        [models.a, models.b],
        [models.da, models.db],
      ] as const) {
        const ra = await plainGenerate(x, [prompt], { maxNewTokens: 40 });
        const rb = await plainGenerate(y, [prompt], { maxNewTokens: 40 });
        assert.deepStrictEqual(Array.from(rb.tokens[0]!), Array.from(ra.tokens[0]!));
      }
      const forward = async (m: LlamaModel): Promise<{ logits: Float32Array; hidden: Tensor }> => {
        const seq = m.createSequence();
        try {
          const out = await m.forward([{ seq, tokens: prompt }], { hidden: true });
          const logits = out.logits.toFloat32();
          out.logits.dispose();
          return { logits, hidden: out.hidden! };
        } finally {
          m.freeSequence(seq);
        }
      };
      const fa = await forward(models.a);
      const fb = await forward(models.b);
      let scale = 0;
      let diff = 0;
      fa.logits.forEach((v, i) => {
        scale = Math.max(scale, Math.abs(v));
        diff = Math.max(diff, Math.abs(v - fb.logits[i]!));
      });
      assert.ok(diff <= 1e-4 * scale, `logits differ by ${diff} (max |logit| ${scale})`);
      // The heads on the wide hidden state (K copies of the original) give the original heads' logits.
      const la = ha.apply(fa.hidden);
      const lb = hb.apply(fb.hidden);
      try {
        la.forEach((t, h) => {
          const x = t.toFloat32();
          const y = lb[h]!.toFloat32();
          let d = 0;
          let s = 0;
          x.forEach((v, i) => {
            s = Math.max(s, Math.abs(v));
            d = Math.max(d, Math.abs(v - y[i]!));
          });
          assert.ok(d <= 1e-4 * s, `head ${h}: ${d} of ${s}`);
        });
      } finally {
        for (const t of [...la, ...lb, fa.hidden, fb.hidden]) t.dispose();
      }
    } finally {
      for (const m of Object.values(models)) m.dispose();
      ha.dispose();
      hb.dispose();
    }
  });

  for (const part of ['eagle', 'eagle3'] as const) {
    it(`K = 2, target deepened to 8 layers: same tokens; the widened ${part === 'eagle' ? 'EAGLE-1/2' : 'EAGLE-3'} head drafts as the original does`, async function () {
      if (!fs.existsSync(path.join(src, part, 'config.json'))) this.skip();
      const K = 2;
      const wide = widenFamily(src, path.join(dir, `k2-${part}`), K, { targetLayers: 8 });
      const cfg = JSON.parse(fs.readFileSync(path.join(wide[part]!, 'config.json'), 'utf8')) as Record<string, number>;
      assert.strictEqual(cfg['hidden_size'], 128 * K);
      const targetCfg = JSON.parse(fs.readFileSync(path.join(wide.target!, 'config.json'), 'utf8')) as Record<string, number>;
      assert.strictEqual(targetCfg['num_hidden_layers'], 8);
      const runs: { tokens: number[]; tpf: number }[] = [];
      for (const [t, e] of [
        [path.join(src, 'target'), path.join(src, part)],
        [wide.target!, wide[part]!],
      ] as const) {
        const target = await LlamaModel.load(t, { device: 'cpu' });
        const head = EagleHead.load(e, { device: 'cpu' });
        // EAGLE-3's features are the inputs of layers 1-3, which the appended identity layers leave alone.
        if (part === 'eagle3') assert.strictEqual(head.config.version, 3);
        const sp = new EagleSpeculator({ head, topK: 4, depth: 4, totalTokens: 16 });
        try {
          const prompt = Int32Array.from([1, 4, 276, 306, 7, 322]);
          const plain = await plainGenerate(target, [prompt], { maxNewTokens: 48 });
          const [r] = await new SpeculativeDecoder({ target, speculator: sp }).generateBatch([prompt], { maxNewTokens: 48 });
          assert.deepStrictEqual(Array.from(r!.tokens), Array.from(plain.tokens[0]!));
          runs.push({ tokens: Array.from(r!.tokens), tpf: r!.stats.tokensPerForward });
        } finally {
          sp.dispose();
          head.dispose();
          target.dispose();
        }
      }
      assert.deepStrictEqual(runs[1]!.tokens, runs[0]!.tokens);
      // The trained head accepts deep trees; widened, it computes the same draft (up to summation order).
      assert.ok(runs[0]!.tpf > 3, `tokens per forward ${runs[0]!.tpf}`);
      assert.ok(Math.abs(runs[1]!.tpf - runs[0]!.tpf) <= 0.1 * runs[0]!.tpf, `tokens per forward ${runs[0]!.tpf} -> ${runs[1]!.tpf} widened`);
    });
  }
});

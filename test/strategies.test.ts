// Strategies: greedy losslessness (token for token the plain greedy output) for every strategy,
// single and batched, with perfect and useless drafts; lookahead's mask; Medusa heads loading;
// adaptive draft lengths; and the same checks on real random Llama checkpoints. Speculators get fixed
// shapes here (sizing: 'fixed', numDraft, k): the cost-model default may decode plainly on a busy
// machine, and these tests assert what the speculators propose (sizing has test/tree_sizing.test.ts).
import * as assert from 'assert';
import * as fs from 'fs';

import { parseStrategyFlags, speculatorFactory, strategyHook, treeRoomFor } from '../lib/cli/strategy_flags';
import { SpeculativeDecoder } from '../lib/decoder';
import type { CausalLM } from '../lib/models/causal_lm';
import { addInplace, matmul, siluInplace } from '../lib/layers';
import { LlamaModel } from '../lib/models/llama';
import { native } from '../lib/native';
import { plainGenerate } from '../lib/plain';
import { DraftModelSpeculator, KEPT_TRACES } from '../lib/strategies/draft_model';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { LookaheadSpeculator, lookaheadLayout, lookaheadMask, NgramPool } from '../lib/strategies/lookahead';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator, promptLookup } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import { openSafetensors } from '../lib/safetensors';
import { topK } from '../lib/sampling';
import { Tensor } from '../lib/tensor';
import { maskBit, medusaChain } from '../lib/tree';
import { makeCheckpoint, makePaddedVocabPair, specByName, type CheckpointSpec } from './fixtures/checkpoints';
import { writeMedusaHeads } from './fixtures/medusa_heads';
import { ToyLM } from './fixtures/toy_lm';
import { assertThrowsCode, describeCuda, rng, testSeed } from './helpers';

const V = 16;

function prompts(seed: number, lens: number[], vocab = V): Int32Array[] {
  const r = rng(seed);
  return lens.map((n) => Int32Array.from({ length: n }, () => Math.floor(r() * vocab)));
}

/** Greedy argmax of the toy's own function 2 steps ahead etc.: the perfect Medusa LM heads. */
function perfectMedusaHeads(model: ToyLM, numHeads: number): string {
  const greedy = (a: number, b: number): number => {
    const l = model.logitsFor([a, b], 0);
    let best = 0;
    for (let v = 1; v < l.length; v++) if ((l[v] as number) > (l[best] as number)) best = v;
    return best;
  };
  const H = V * V;
  return writeMedusaHeads({
    numHeads,
    numLayers: 1,
    hiddenSize: H,
    vocabSize: V,
    blockScale: 0, // ResBlock = identity: the head reads the one-hot state directly
    lmHead: (h) => {
      const w = new Float32Array(V * H);
      for (let a = 0; a < V; a++) {
        for (let b = 0; b < V; b++) {
          // From state (a, b) the greedy text continues c, d, e...; head h predicts token h + 2 ahead.
          let x = a;
          let y = b;
          for (let s = 0; s < h + 2; s++) [x, y] = [y, greedy(x, y)];
          w[y * H + a * V + b] = 1;
        }
      }
      return w;
    },
  });
}

interface Case {
  readonly name: string;
  /** Fresh speculator for a target (toy models of the case are built inside). */
  readonly make: () => Speculator;
  /** Expected acceptance: 'high' (> 0.8), 'low' (< 0.15), or undefined (only lossless). */
  readonly acceptance?: 'high' | 'low';
}

describe('strategies: greedy output equals plain greedy decoding (toy model)', function () {
  const seed = testSeed;
  const target = new ToyLM({ vocabSize: V, seed, positional: false, hidden: 'state' });
  const same = (extra: Partial<ConstructorParameters<typeof ToyLM>[0]> = {}): ToyLM =>
    new ToyLM({ vocabSize: V, seed, positional: false, hidden: 'state', ...extra });
  // Always proposes the target's argmax + 1: useless by construction, whatever the seed.
  const useless = (): ToyLM => new ToyLM({ vocabSize: V, seed, positional: false, roll: 1 });
  let perfectHeads: MedusaHeads;
  let randomHeads: MedusaHeads;
  before(() => {
    perfectHeads = MedusaHeads.load(perfectMedusaHeads(target, 4), { device: 'cpu' });
    randomHeads = MedusaHeads.load(writeMedusaHeads({ numHeads: 4, numLayers: 1, hiddenSize: V * V, vocabSize: V, seed }), { device: 'cpu' });
  });
  after(() => {
    perfectHeads.dispose();
    randomHeads.dispose();
  });

  const cases: Case[] = [
    { name: 'draft model, fixed k=4, perfect draft', make: () => new DraftModelSpeculator({ draft: same(), k: 4 }), acceptance: 'high' },
    { name: 'draft model, fixed k=4, useless draft', make: () => new DraftModelSpeculator({ draft: useless(), k: 4 }), acceptance: 'low' },
    { name: 'draft model, heuristic k, perfect', make: () => new DraftModelSpeculator({ draft: same(), adaptive: 'heuristic' }), acceptance: 'high' },
    { name: 'draft model, heuristic k, useless', make: () => new DraftModelSpeculator({ draft: useless(), adaptive: 'heuristic' }), acceptance: 'low' },
    { name: 'draft model, confidence-stopped, perfect', make: () => new DraftModelSpeculator({ draft: same(), adaptive: 'confidence', confidenceThreshold: 0.3 }), acceptance: 'high' },
    { name: 'draft model, tree [3,2,1], perfect', make: () => new DraftModelSpeculator({ draft: same(), treeBranching: [3, 2, 1] }) },
    { name: 'draft model, tree [2,2], useless', make: () => new DraftModelSpeculator({ draft: useless(), treeBranching: [2, 2] }), acceptance: 'low' },
    // The target's ids 12-15 missing in the draft (a padded target vocabulary): it drafts the
    // target's choice whenever that is one of its ids; the others reach it as id 0.
    { name: 'draft model with a prefix of the target\'s vocabulary, k=4', make: () => new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V - 4, seed, positional: false }), k: 4 }) },
    { name: 'draft model with a prefix of the target\'s vocabulary, tree [2,2]', make: () => new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V - 4, seed, positional: false }), treeBranching: [2, 2] }) },
    { name: 'hybrid with a prefix of the target\'s vocabulary + lookahead', make: () => new HybridSpeculator({ draft: new ToyLM({ vocabSize: V - 4, seed, positional: false }), draftSpeculator: new LookaheadSpeculator({ W: 4, N: 3, G: 3, sizing: 'fixed' }), k: 4 }) },
    { name: 'draft model, partially right draft', make: () => new DraftModelSpeculator({ draft: same({ mix: { seed: 77, weight: 0.5 } }), k: 3 }) },
    { name: 'Medusa, perfect heads, chain', make: () => new MedusaSpeculator({ heads: perfectHeads, choices: medusaChain(4) }), acceptance: 'high' },
    { name: 'Medusa, perfect heads, mc_sim_7b_63', make: () => new MedusaSpeculator({ heads: perfectHeads, choices: 'mc_sim_7b_63' }) },
    { name: 'Medusa, random heads, small_16', make: () => new MedusaSpeculator({ heads: randomHeads, choices: 'small_16' }) },
    { name: 'lookahead W=4 N=3 G=4', make: () => new LookaheadSpeculator({ W: 4, N: 3, G: 4, sizing: 'fixed' }) },
    { name: 'lookahead W=6 N=4 G=2', make: () => new LookaheadSpeculator({ W: 6, N: 4, G: 2, sizing: 'fixed' }) },
    { name: 'prompt lookup', make: () => new PromptLookupSpeculator({ maxNgram: 3, numDraft: 6 }) },
    { name: 'hybrid: perfect draft + lookahead', make: () => new HybridSpeculator({ draft: same(), draftSpeculator: new LookaheadSpeculator({ W: 4, N: 3, G: 3, sizing: 'fixed' }), k: 5 }), acceptance: 'high' },
    {
      name: 'hybrid: perfect draft sped up by its perfect Medusa heads',
      make: () => new HybridSpeculator({ draft: same(), draftSpeculator: new MedusaSpeculator({ heads: perfectHeads, choices: medusaChain(3) }), k: 6 }),
      acceptance: 'high',
    },
    { name: 'hybrid: useless draft + prompt lookup', make: () => new HybridSpeculator({ draft: useless(), draftSpeculator: new PromptLookupSpeculator({ numDraft: 10 }), k: 4 }), acceptance: 'low' },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const ps = prompts(seed + c.name.length, [7, 2, 12]);
      const maxNew = 40;
      const plain = await plainGenerate(target, ps, { maxNewTokens: maxNew });
      const spec = c.make();
      const dec = new SpeculativeDecoder({ target, speculator: spec });
      const batch = await dec.generateBatch(ps, { maxNewTokens: maxNew });
      const single = await dec.generate(ps[0]!, { maxNewTokens: maxNew }).result;
      for (let i = 0; i < ps.length; i++) assert.deepStrictEqual(Array.from(batch[i]!.tokens), Array.from(plain.tokens[i]!), `sequence ${i}`);
      assert.deepStrictEqual(Array.from(single.tokens), Array.from(plain.tokens[0]!));
      let proposed = 0;
      let accepted = 0;
      for (const r of batch) {
        proposed += r.stats.proposedDraftTokens;
        accepted += r.stats.acceptedDraftTokens;
        assert.strictEqual(r.stats.newTokens, maxNew);
      }
      assert.ok(proposed > 0, 'the speculator proposed drafts');
      const rate = accepted / proposed;
      if (c.acceptance === 'high') assert.ok(rate > 0.8, `acceptance ${rate}`);
      if (c.acceptance === 'low') assert.ok(rate < 0.15, `acceptance ${rate}`);
      if (c.acceptance === 'high') {
        const tau = batch.reduce((a, r) => a + r.stats.newTokens, 0) / batch.reduce((a, r) => a + r.stats.targetForwards, 0);
        assert.ok(tau > 2, `tau ${tau}`);
      }
      assert.strictEqual(target.liveSequences(), 0);
      dec.dispose();
    });
  }

  it('Medusa typical acceptance (LOSSY) runs when sampling and accepts the heads\' confident guesses', async () => {
    const spec = new MedusaSpeculator({ heads: perfectHeads, choices: medusaChain(3), sampling: 'typical' });
    assert.strictEqual(spec.samplingVerifyMode, 'typical');
    assert.strictEqual(spec.typicalThreshold, 0.09);
    assert.strictEqual(spec.typicalAlpha, 0.3);
    const dec = new SpeculativeDecoder({ target, speculator: spec, sampling: { temperature: 0.3, seed } });
    const res = await dec.generateBatch(prompts(seed + 8, [5, 3]), { maxNewTokens: 30 });
    for (const r of res) {
      assert.strictEqual(r.tokens.length, 30);
      assert.ok(r.tokens.every((t) => t >= 0 && t < V));
    }
    const rate = res.reduce((a, r) => a + r.stats.acceptedDraftTokens, 0) / res.reduce((a, r) => a + r.stats.proposedDraftTokens, 0);
    assert.ok(rate > 0.3, `typical acceptance ${rate}`);
    assert.strictEqual(target.liveSequences(), 0);
  });

  it('n-gram strategies accept tokens once the greedy text repeats', async () => {
    // An order-2 model over 16 tokens is periodic after at most 256 greedy steps: a 300-token
    // greedy prefix as the prompt puts the text inside its cycle, where n-grams repeat.
    const start = prompts(seed + 5, [3])[0]!;
    const prefix = (await plainGenerate(target, [start], { maxNewTokens: 300 })).tokens[0]!;
    const prompt = Int32Array.from([...start, ...prefix]);
    const ref = (await plainGenerate(target, [prompt], { maxNewTokens: 100 })).tokens[0]!;
    for (const spec of [new PromptLookupSpeculator({ numDraft: 10 }), new LookaheadSpeculator({ W: 5, N: 3, G: 5, sizing: 'fixed' })]) {
      const dec = new SpeculativeDecoder({ target, speculator: spec });
      const r = await dec.generate(prompt, { maxNewTokens: 100 }).result;
      assert.deepStrictEqual(Array.from(r.tokens), Array.from(ref));
      assert.ok(r.stats.acceptedDraftTokens > 20, `${spec.name}: ${r.stats.acceptedDraftTokens} accepted`);
      assert.ok(r.stats.targetForwards < 80, `${spec.name}: ${r.stats.targetForwards} forwards`);
    }
  });
});

describe('draft model adaptivity', () => {
  const seed = testSeed + 17;

  it(`keeps the per-step records of live sequences and of the ${KEPT_TRACES} last released ones only (a server's speculator sees every request)`, async () => {
    const target = new ToyLM({ vocabSize: V, seed, positional: false });
    const spec = new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V, seed, positional: false }), k: 2 });
    const dec = new SpeculativeDecoder({ target, speculator: spec });
    const p = prompts(seed, [3])[0]!;
    const n = KEPT_TRACES + 20;
    for (let i = 0; i < n; i++) await dec.generate(p, { maxNewTokens: 3 }).result;
    assert.strictEqual(spec.kHistory.size, KEPT_TRACES);
    assert.strictEqual(spec.trace.size, KEPT_TRACES);
    // The most recent runs' records are the ones kept, whole.
    const last = [...spec.trace.values()].at(-1)!;
    assert.ok(last.length >= 1 && last.every((t) => t.k === 2), JSON.stringify(last));
    assert.strictEqual([...spec.kHistory.values()].at(-1)!.length, last.length);
    dec.dispose();
  });

  it("heuristic k follows HF's rule: +2 after a full accept, -1 otherwise, within bounds", async () => {
    const target = new ToyLM({ vocabSize: V, seed, positional: false });
    for (const [draft, dir] of [
      [new ToyLM({ vocabSize: V, seed, positional: false }), 'up'],
      // Always the target's argmax + 1: never accepted, whatever the seed (another seed's draft
      // agreed with the target often enough, in a repeating text, to climb back: seed 54712055).
      [new ToyLM({ vocabSize: V, seed, positional: false, roll: 1 }), 'down'],
    ] as const) {
      const spec = new DraftModelSpeculator({ draft, k: 4, adaptive: 'heuristic', minK: 1, maxK: 10 });
      const dec = new SpeculativeDecoder({ target, speculator: spec });
      await dec.generate(prompts(seed, [5])[0]!, { maxNewTokens: 80 }).result;
      const trace = [...spec.trace.values()][0]!;
      assert.ok(trace.length > 3);
      for (let i = 0; i + 1 < trace.length; i++) {
        const t = trace[i]!;
        const want = t.accepted >= t.drafted ? Math.min(10, t.k + 2) : Math.max(1, t.k - 1);
        assert.strictEqual(trace[i + 1]!.k, want, `step ${i}: ${JSON.stringify(t)}`);
      }
      const ks = trace.map((t) => t.k);
      if (dir === 'up') assert.deepStrictEqual(ks.slice(0, 4), [4, 6, 8, 10]);
      else assert.deepStrictEqual(ks.slice(0, 6), [4, 3, 2, 1, 1, 1], `k ${ks}`);
    }
  });

  it('confidence mode drafts while the draft is sure: every step\'s length replayed from the draft\'s own probabilities', async () => {
    // The rule: draft greedily up to maxK tokens; the first is always drafted, and drafting stops
    // before a later token whose max probability is below the threshold (or after a first one that
    // is). The replay recomputes each step's length from the draft's logits on the text so far, so
    // it holds for any seed; a peaked draft's near-ties stop it early, and that is checked too.
    const target = new ToyLM({ vocabSize: V, seed, positional: false });
    const maxK = 6;
    const threshold = 0.4;
    const softmaxMax = (l: Float32Array): { p: number; arg: number } => {
      let arg = 0;
      for (let v = 1; v < l.length; v++) if ((l[v] as number) > (l[arg] as number)) arg = v;
      let z = 0;
      for (let v = 0; v < l.length; v++) z += Math.exp((l[v] as number) - (l[arg] as number));
      return { p: 1 / z, arg };
    };
    const means: number[] = [];
    // Scale 3 (the toy's default) gives middling confidences: stops at every depth.
    for (const scale of [30, 0.05, 3]) {
      const draft = new ToyLM({ vocabSize: V, seed, positional: false, scale });
      const spec = new DraftModelSpeculator({ draft, adaptive: 'confidence', maxK, confidenceThreshold: threshold });
      const dec = new SpeculativeDecoder({ target, speculator: spec });
      const p = prompts(seed + 3, [4])[0]!;
      const r = await dec.generate(p, { maxNewTokens: 60 }).result;
      const ref = await plainGenerate(target, [p], { maxNewTokens: 60 });
      assert.deepStrictEqual(Array.from(r.tokens), Array.from(ref.tokens[0]!));
      const ks = [...spec.kHistory.values()][0]!;
      const trace = [...spec.trace.values()][0]!;
      assert.strictEqual(trace.length, ks.length);
      let emitted = 1; // the prefill's token: the first step's root
      let checked = 0;
      for (let i = 0; i < ks.length; i++) {
        const ctx = [...p, ...Array.from(r.tokens.subarray(0, emitted))];
        let want = 0;
        let nearTie = false;
        for (let d = 0; d < maxK; d++) {
          const { p: conf, arg } = softmaxMax(draft.logitsFor(ctx, ctx.length));
          nearTie ||= Math.abs(conf - threshold) < 1e-5;
          if (d > 0 && conf < threshold) break;
          want++;
          ctx.push(arg);
          if (conf < threshold) break;
        }
        // The last step may be cut by the tokens left to generate; near-threshold rows may round
        // either way in float32.
        if (i + 1 < ks.length && !nearTie) {
          assert.strictEqual(ks[i], want, `scale ${scale}, step ${i}: drafted ${ks[i]}, the rule gives ${want} (all: ${ks})`);
          checked++;
        } else assert.ok(ks[i]! <= want, `scale ${scale}, last step: drafted ${ks[i]} > ${want}`);
        emitted += trace[i]!.accepted + 1;
      }
      assert.ok(checked >= ks.length / 2, `scale ${scale}: only ${checked} of ${ks.length} steps checked`);
      means.push(ks.slice(0, -1).reduce((a, k) => a + k, 0) / (ks.length - 1));
    }
    // A flat draft (max probability ~1/16) drafts single tokens; a peaked one drafts several.
    assert.strictEqual(means[1], 1, `flat draft: mean length ${means[1]}`);
    assert.ok(means[0]! > 2, `peaked draft: mean length ${means[0]}`);
  });
});

describe('lookahead', () => {
  it('its mask matches a hand-built one (W=2, N=3, G=2)', () => {
    // Nodes: 0 root | 1-2 chain A | 3-4 chain B | 5,6 level 0 | 7,8 level 1.
    const sees: number[][] = [[0], [0, 1], [0, 1, 2], [0, 3], [0, 3, 4], [0, 5], [0, 5, 6], [0, 5, 7], [0, 5, 6, 8]];
    const m = lookaheadMask(2, 3, 2);
    assert.strictEqual(m.words, 1);
    assert.strictEqual(m.bits.length, 9);
    for (let i = 0; i < 9; i++) for (let j = 0; j < 9; j++) assert.strictEqual(maskBit(m, i, j), sees[i]!.includes(j), `row ${i} col ${j}`);
    const l = lookaheadLayout(2, 3, [2, 2]);
    assert.deepStrictEqual(Array.from(l.parents), [-1, 0, 1, 0, 3, -2, -2, -2, -2]);
    assert.deepStrictEqual(Array.from(l.relPositions), [0, 1, 2, 1, 2, 1, 2, 2, 3]);
    assert.strictEqual(l.windowStart, 5);
    // Bigger layouts: each window token's visible set has contiguous positions 0..its own.
    const big = lookaheadLayout(7, 5, [4, 1, 3]);
    for (let i = big.windowStart; i < big.parents.length; i++) {
      const pos: number[] = [];
      for (let j = 0; j < big.parents.length; j++) if (maskBit(big.mask, i, j)) pos.push(big.relPositions[j]!);
      pos.sort((a, b) => a - b);
      assert.deepStrictEqual(pos, Array.from({ length: big.relPositions[i]! + 1 }, (_, k) => k), `node ${i}`);
    }
  });

  it('the n-gram pool keeps at most G per first token, least recently used dropped', () => {
    const p = new NgramPool(2);
    p.add([1, 2, 3]);
    p.add([1, 4, 5]);
    p.add([1, 2, 3]); // refresh
    p.add([1, 6, 7]); // evicts [4, 5]
    p.add([2, 9, 9]);
    assert.deepStrictEqual(p.get(1), [[6, 7], [2, 3]]);
    assert.deepStrictEqual(p.get(2), [[9, 9]]);
    assert.deepStrictEqual(p.get(3), []);
    assert.strictEqual(p.size, 3);
    assertThrowsCode(() => new LookaheadSpeculator({ W: 0, N: 3, G: 1, sizing: 'fixed' }), 'E_ARG', /W >= 1/);
  });
});

describe('prompt lookup', () => {
  it('matches the longest suffix n-gram, most recent occurrence first', () => {
    //          0  1  2  3  4  5  6  7  8  9
    const h = [5, 1, 2, 3, 9, 1, 2, 4, 7, 1, 2];
    assert.deepStrictEqual(promptLookup(h, 3, 1, 10), [4, 7, 1, 2]); // "1 2" at 5 (most recent), then 4 7 1 2
    assert.deepStrictEqual(promptLookup(h, 3, 1, 2), [4, 7]);
    assert.deepStrictEqual(promptLookup([9, 5, 1, 2, 3, 8, 1, 2, 3], 3, 1, 3), [8, 1, 2]); // trigram
    assert.deepStrictEqual(promptLookup([1, 2, 3], 3, 1, 5), []);
    assert.deepStrictEqual(promptLookup([4, 4], 3, 2, 5), []); // only unigram matches, below minNgram
    assert.deepStrictEqual(promptLookup([4, 4], 3, 1, 5), [4]);
  });
});

describe('Medusa heads (FasterDecoding layout)', () => {
  it('load, report their sizes, and reject mismatched or broken heads', () => {
    const dir = writeMedusaHeads({ numHeads: 3, numLayers: 2, hiddenSize: 8, vocabSize: 12, seed: 4, dtype: 'BF16', baseModel: 'base/x' });
    const heads = MedusaHeads.load(dir, { device: 'cpu' });
    assert.deepStrictEqual(heads.config, { numHeads: 3, numLayers: 2, baseModel: 'base/x', hiddenSize: 8, vocabSize: 12 });
    const target = new ToyLM({ vocabSize: 12, seed: 1, hiddenSize: 8 });
    const ok = new MedusaSpeculator({ heads, choices: [[0], [1], [0, 0], [0, 0, 0]] });
    assert.strictEqual(new MedusaSpeculator({ heads }).shape.depth, 3, 'the default preset is cut to the heads');
    ok.attach(target);
    assertThrowsCode(() => new MedusaSpeculator({ heads, choices: 'mc_sim_7b_63' }), 'E_ARG', /4 deep but there are only 3 heads/);
    assertThrowsCode(() => new MedusaSpeculator({ heads, choices: 'nope' }), 'E_ARG', /unknown choices preset/);
    assertThrowsCode(
      () => new SpeculativeDecoder({ target: new ToyLM({ vocabSize: 12, seed: 1, hiddenSize: 9 }), speculator: ok }),
      'E_ARG',
      /hidden size 8 but the target has 9/,
    );
    assertThrowsCode(() => ok.attach(new ToyLM({ vocabSize: 13, seed: 1, hiddenSize: 8 })), 'E_ARG', /vocabulary 12 but the target has 13/);
    heads.dispose();
    assertThrowsCode(() => MedusaHeads.load(writeMedusaHeads({ numHeads: 2, numLayers: 1, hiddenSize: 8, vocabSize: 12, omit: '1.0.linear.bias' }), { device: 'cpu' }), 'E_FORMAT', /no tensor '1.0.linear.bias'/);
    assertThrowsCode(() => MedusaHeads.load('/nonexistent/medusa', { device: 'cpu' }), 'E_IO', /config.json/);
    const bad = writeMedusaHeads({ numHeads: 2, numLayers: 1, hiddenSize: 8, vocabSize: 12 });
    fs.writeFileSync(`${bad}/config.json`, JSON.stringify({ medusa_num_heads: 0, medusa_num_layers: 1 }));
    assertThrowsCode(() => MedusaHeads.load(bad, { device: 'cpu' }), 'E_FORMAT', /medusa_num_heads/);
  });

  it('are held natively: one set per head count, small weights packed once for the k-serial kernel, released on dispose', () => {
    const dir = writeMedusaHeads({ numHeads: 3, numLayers: 1, hiddenSize: 16, vocabSize: 20, seed: testSeed });
    const heads = MedusaHeads.load(dir, { device: 'cpu' });
    const b = native();
    const set = heads.weights();
    assert.strictEqual(heads.weights(3), set);
    assert.strictEqual(heads.weights(2), heads.weights(2), 'one set per count');
    assert.notStrictEqual(heads.weights(2), set);
    assertThrowsCode(() => heads.weights(0), 'E_ARG', /numHeads must be an integer in 1\.\.3/);
    assertThrowsCode(() => heads.weights(4), 'E_ARG', /numHeads/);
    // Packed unless SPECDEC_CPU_SERIAL=0 (the model runner's rule: small CPU weights).
    const packed = process.env['SPECDEC_CPU_SERIAL'] !== '0';
    const packs = b.medusaHeadSetPacks(set);
    assert.strictEqual(packs.length, 3);
    assert.ok(packs.every((p) => p.ws.length === 1 && (p.ws[0] !== null) === packed && (p.lmHead !== null) === packed), 'every weight packed, or none');
    // apply() runs the packs too: its logits' top-k are the set's candidates; the unpacked weights
    // (the array form, the lane kernel) give the same logits up to rounding.
    const r = rng(testSeed + 5);
    const x = Tensor.fromArray(Float32Array.from({ length: 2 * 16 }, () => 2 * r() - 1), 'f32', [2, 16]);
    const ids = heads.topKIds(x, 3);
    assert.deepStrictEqual(Array.from(b.medusaTopK(x, set, 3)), Array.from(ids));
    const f = openSafetensors(`${dir}/medusa_lm_head.safetensors`);
    const logits = heads.apply(x);
    for (let h = 0; h < 3; h++) {
      const top = topK(logits[h]!, 3);
      assert.deepStrictEqual(Array.from(top.ids.toInt32()), Array.from(ids.subarray(h * 6, (h + 1) * 6)), `head ${h}`);
      const [w, bias, lm] = [f.load(`${h}.0.linear.weight`), f.load(`${h}.0.linear.bias`), f.load(`${h}.1.weight`)];
      const y = matmul(x, w, bias);
      siluInplace(y);
      addInplace(y, x);
      const unpacked = matmul(y, lm).toFloat32();
      const got = logits[h]!.toFloat32();
      assert.ok(got.every((v, i) => Math.abs(v - unpacked[i]!) <= 1e-5 * (1 + Math.abs(v))), `head ${h}: packed and unpacked logits agree`);
      for (const t of [top.ids, top.values, w, bias, lm, y, logits[h]!]) t.dispose();
    }
    f.close();
    heads.dispose();
    assertThrowsCode(() => b.medusaTopK(x, set, 3), 'E_DISPOSED', /Medusa heads were disposed/);
    assertThrowsCode(() => b.medusaTopK(x, b.layerPackSerial(x)! as unknown as SpecdecNative.NativeMedusaHeadSet, 3), 'E_ARG', /heads/);
    x.dispose();
  });

  it('compute x + SiLU(W x + b) per layer, then the head LM head (float64 reference)', () => {
    const H = 6;
    const Vh = 5;
    const dir = writeMedusaHeads({ numHeads: 2, numLayers: 2, hiddenSize: H, vocabSize: Vh, seed: testSeed });
    const heads = MedusaHeads.load(dir, { device: 'cpu' });
    const { openSafetensors } = require('../lib/safetensors') as typeof import('../lib/safetensors');
    const f = openSafetensors(`${dir}/medusa_lm_head.safetensors`);
    const w = (n: string): Float32Array => {
      const t = f.load(n);
      const a = t.toFloat32();
      t.dispose();
      return a;
    };
    const r = rng(testSeed + 1);
    const x = Float32Array.from({ length: 3 * H }, () => 2 * r() - 1);
    const { Tensor } = require('../lib/tensor') as typeof import('../lib/tensor');
    const xt = Tensor.fromArray(x, 'f32', [3, H]);
    const outs = heads.apply(xt);
    for (let h = 0; h < 2; h++) {
      const got = outs[h]!.toFloat32();
      for (let n = 0; n < 3; n++) {
        let cur = Array.from(x.subarray(n * H, (n + 1) * H));
        for (let l = 0; l < 2; l++) {
          const W = w(`${h}.${l}.linear.weight`);
          const b = w(`${h}.${l}.linear.bias`);
          cur = cur.map((c, i) => {
            let z = b[i]!;
            for (let k = 0; k < H; k++) z += W[i * H + k]! * cur[k]!;
            return c + z / (1 + Math.exp(-z));
          });
        }
        const L = w(`${h}.2.weight`);
        for (let v = 0; v < Vh; v++) {
          let z = 0;
          for (let k = 0; k < H; k++) z += L[v * H + k]! * cur[k]!;
          assert.ok(Math.abs(z - got[n * Vh + v]!) < 1e-4, `head ${h} row ${n} v ${v}: ${got[n * Vh + v]} vs ${z}`);
        }
      }
      outs[h]!.dispose();
    }
    assert.ok(Array.from(x).every((v, i) => xt.toFloat32()[i] === v), 'the input is not modified');
    xt.dispose();
    f.close();
    heads.dispose();
  });
});

describe('strategy flags (CLI)', () => {
  it('parse --draft/--medusa/--lookahead/--prompt-lookup and reject bad values', () => {
    const { flags, rest } = parseStrategyFlags(['--model', 'm', '--lookahead', '5,3,4', '--json']);
    assert.deepStrictEqual(flags, { lookahead: [5, 3, 4] });
    assert.deepStrictEqual(rest, ['--model', 'm', '--json']);
    assert.deepStrictEqual(parseStrategyFlags(['--draft=d', '--draft-k', '3', '--prompt-lookup', '2']).flags, { draft: 'd', draftK: 3, promptLookup: 2 });
    assertThrowsCode(() => parseStrategyFlags(['--lookahead', '5,3']), 'E_ARG', /W,N,G/);
    assertThrowsCode(() => parseStrategyFlags(['--lookahead', '5,1,2']), 'E_ARG', /--lookahead N: expected an integer >= 2/);
    assertThrowsCode(() => parseStrategyFlags(['--prompt-lookup', 'x']), 'E_ARG', /--prompt-lookup/);
    assertThrowsCode(() => parseStrategyFlags(['--medusa', 'a', '--lookahead', '1,2,3']), 'E_ARG', /exclusive/);
    assertThrowsCode(() => parseStrategyFlags(['--draft']), 'E_ARG', /missing value/);
    assertThrowsCode(() => parseStrategyFlags(['--draft-k', '2']), 'E_ARG', /needs --draft/);
    assert.deepStrictEqual(parseStrategyFlags(['--eagle', 'e', '--eagle-tree', '4,3']).flags, { eagle: 'e', eagleTree: [4, 3, undefined] });
    assert.deepStrictEqual(parseStrategyFlags(['--eagle=e', '--eagle-tree=10,5,59']).flags, { eagle: 'e', eagleTree: [10, 5, 59] });
    assertThrowsCode(() => parseStrategyFlags(['--eagle-tree', '4,3']), 'E_ARG', /needs --eagle/);
    assertThrowsCode(() => parseStrategyFlags(['--eagle', 'e', '--eagle-tree', '4']), 'E_ARG', /K,D/);
    assertThrowsCode(() => parseStrategyFlags(['--eagle', 'e', '--eagle-tree', '0,3']), 'E_ARG', /--eagle-tree K: expected an integer >= 1/);
    assertThrowsCode(() => parseStrategyFlags(['--eagle', 'e', '--draft', 'd']), 'E_ARG', /does not combine with --draft/);
    assertThrowsCode(() => parseStrategyFlags(['--eagle', 'e', '--medusa', 'm']), 'E_ARG', /exclusive/);
  });

  it('a draft whose tokenizer.json maps ids to other tokens than the target\'s is named in a warning (not refused: lossless anyway)', async () => {
    const { tokenizerJson } = await import('./fixtures/checkpoints');
    const { tokenizerMismatch } = await import('../lib/tokenizer');
    const os = await import('os');
    const path = await import('path');
    const dirOf = (json: unknown): string => {
      const d = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-tok-'));
      fs.writeFileSync(path.join(d, 'tokenizer.json'), JSON.stringify(json));
      return d;
    };
    const base = tokenizerJson(40);
    const same = dirOf(base);
    const target = dirOf(base);
    // The draft's ids 3 and 4 ('the', 'cat') swapped; the target's vocabulary padded further.
    const swapped = JSON.parse(JSON.stringify(base)) as { model: { vocab: Record<string, number> } };
    swapped.model.vocab['the'] = 4;
    swapped.model.vocab['cat'] = 3;
    const other = dirOf(swapped);
    assert.strictEqual(tokenizerMismatch(target, same, 40), undefined);
    assert.strictEqual(tokenizerMismatch(target, other, 40), `the draft's tokenizer differs from the target's at 2 of 40 ids (id 3 is "cat" for the draft, "the" for the target)`);
    // Only the draft's ids count (a draft over a prefix), and a missing tokenizer.json says nothing.
    assert.strictEqual(tokenizerMismatch(target, other, 3), undefined);
    assert.strictEqual(tokenizerMismatch(target, fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-tok-')), 40), undefined);
    // Unigram vocabularies are lists of [token, score]: the id is the index.
    const uni = (toks: string[]): string => dirOf({ model: { type: 'Unigram', vocab: toks.map((t) => [t, -1]) } });
    assert.match(tokenizerMismatch(uni(['a', 'b', 'c']), uni(['a', 'c', 'b']), 3) ?? '', /at 2 of 3 ids \(id 1 is "c" for the draft, "b" for the target\)/);
    // A SentencePiece tokenizer.model (no tokenizer.json) is compared as the vocabulary it reads as:
    // the same model agrees with itself, and differs from a tokenizer.json that does not match it.
    const spmDir = (): string => {
      const d = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-tok-'));
      fs.copyFileSync(path.join(__dirname, '..', '..', 'test', 'fixtures', 'spm', 'bpe', 'tokenizer.model'), path.join(d, 'tokenizer.model'));
      return d;
    };
    assert.strictEqual(tokenizerMismatch(spmDir(), spmDir(), 600), undefined);
    assert.strictEqual(tokenizerMismatch(spmDir(), target, 40), `the draft's tokenizer differs from the target's at 38 of 40 ids (id 0 is "[UNK]" for the draft, "<unk>" for the target)`);
    // Through the CLI factory: a warning naming the flag, and the speculator still built.
    const warnings: string[] = [];
    const toy = Object.assign(new ToyLM({ vocabSize: 40, seed: 3 }), { dir: target });
    const loadModel = async (): Promise<CausalLM> => new ToyLM({ vocabSize: 40, seed: 3 });
    for (const d of [same, other]) {
      const built = await speculatorFactory(parseStrategyFlags(['--draft', d]).flags, { loadModel, warn: (m) => warnings.push(m) })(toy);
      assert.strictEqual(built.speculator?.name, 'draft-model');
      built.dispose();
    }
    assert.deepStrictEqual(warnings, [`--draft ${other}: the draft's tokenizer differs from the target's at 2 of 40 ids (id 3 is "cat" for the draft, "the" for the target); its drafts will rarely be accepted (the output is unaffected)`]);
  });

  it('the flags size the KV room kept per sequence for their fixed trees (up to the context); the factory says what the room still cuts', async () => {
    const room = (argv: string[], context = 4096): number => treeRoomFor(parseStrategyFlags(argv).flags, context);
    assert.strictEqual(room([]), 64);
    assert.strictEqual(room(['--draft', 'x', '--draft-k', '63']), 64);
    assert.strictEqual(room(['--draft', 'x', '--draft-k', '100']), 101);
    assert.strictEqual(room(['--eagle', 'e', '--eagle-tree', '10,6,80']), 81);
    assert.strictEqual(room(['--eagle', 'e', '--eagle-tree', '10,6']), 64, 'a sized tree: the default');
    // A lookahead step: the window's W (N - 1) tokens and G n-grams of N - 1.
    assert.strictEqual(room(['--lookahead', '22,4,2']), 1 + 24 * 3);
    assert.strictEqual(room(['--eagle', 'e', '--eagle-tree', '64,32,1023'], 155), 155, 'at most the context');
    assert.strictEqual(room(['--draft', 'x', '--draft-k', '100'], 40), 64, 'never below the default');
    const target = new ToyLM({ vocabSize: V, seed: 3, positional: false });
    const loadModel = async (): Promise<CausalLM> => new ToyLM({ vocabSize: V, seed: 3, positional: false });
    const said = async (argv: string[], treeTokens: number): Promise<string[]> => {
      const warnings: string[] = [];
      const built = await speculatorFactory(parseStrategyFlags(argv).flags, { loadModel, treeTokens, warn: (m) => warnings.push(m) })(target);
      assert.ok(built.speculator, argv.join(' '));
      built.dispose();
      return warnings;
    };
    assert.deepStrictEqual(await said(['--draft', 'x', '--draft-k', '100'], 101), []);
    assert.deepStrictEqual(await said(['--draft', 'x', '--draft-k', '100'], 40), ['101-node trees (--draft-k 100) are cut to 40 nodes: the KV room kept per sequence, at most its context']);
  });

  it('the factory builds draft, hybrid and n-gram speculators; the hook decodes losslessly', async () => {
    const target = new ToyLM({ vocabSize: V, seed: 3, positional: false });
    const loadModel = async (): Promise<CausalLM> => new ToyLM({ vocabSize: V, seed: 3, positional: false });
    const names: string[] = [];
    for (const argv of [['--draft', 'x'], ['--draft', 'x', '--lookahead', '3,3,2'], ['--prompt-lookup', '3'], ['--lookahead', '4,3,2'], []]) {
      const built = await speculatorFactory(parseStrategyFlags(argv).flags, { loadModel })(target);
      names.push(built.speculator?.name ?? 'plain');
      built.dispose();
    }
    assert.deepStrictEqual(names, ['draft-model', 'hybrid(lookahead)', 'prompt-lookup', 'lookahead', 'plain']);
    await assert.rejects(speculatorFactory({ draft: 'default' })(target), /no embedded draft/);
    const ps = prompts(testSeed + 40, [4, 6]);
    const plain = await plainGenerate(target, ps, { maxNewTokens: 20 });
    const hook = strategyHook({ loadModel });
    const recs = await hook({
      flags: { strategy: { draft: 'x', draftK: 4 }, maxNewTokens: 20, temperature: 0, topK: 0, topP: 1, seed: 0, device: 'cpu', json: true },
      target,
      prompts: ps,
      decode: (ids) => Array.from(ids).join(' '),
    });
    recs.forEach((r, i) => {
      assert.deepStrictEqual(r.tokens, Array.from(plain.tokens[i]!));
      assert.strictEqual(r.text, r.tokens.join(' '));
      assert.ok(r.stats.tokensPerForward > 1 && r.stats.acceptanceRate === 1);
    });
    assert.strictEqual(target.liveSequences(), 0);
  });
});

/** A draft over a prefix of a padded target's vocabulary, on `device`. */
async function paddedVocabCase(device: 'cpu' | 'cuda'): Promise<void> {
  const targetSpec = specByName('llama-gqa-f32');
  // The target's last 24 ids are padding (zero LM head rows); the draft is the target cut to the
  // other 72, so it drafts exactly the target's greedy choices. The last prompt holds padding ids,
  // which reach the draft as a stand-in: that sequence's drafts go astray, its output must not.
  const Vd = targetSpec.vocab - 24;
  const pair = makePaddedVocabPair(targetSpec, testSeed + 30, Vd);
  const padded = await LlamaModel.load(pair.target, { device, maxSequences: 8 });
  const short = await LlamaModel.load(pair.draft, { device, maxSequences: 8 });
  try {
    const ps = prompts(testSeed + 31, [6, 10, 3], Vd);
    ps[2] = Int32Array.from([...ps[2]!, Vd + 5, Vd, ...ps[0]!]);
    const maxNew = 24;
    const plain = await plainGenerate(padded, ps, { maxNewTokens: maxNew });
    for (const [name, spec] of [
      ['chain k=4', new DraftModelSpeculator({ draft: short, k: 4 })],
      ['tree [2,2,1]', new DraftModelSpeculator({ draft: short, treeBranching: [2, 2, 1] })],
      ['hybrid + prompt lookup', new HybridSpeculator({ draft: short, draftSpeculator: new PromptLookupSpeculator({ numDraft: 10 }), k: 4 })],
    ] as const) {
      const res = await new SpeculativeDecoder({ target: padded, speculator: spec }).generateBatch(ps, { maxNewTokens: maxNew });
      res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain.tokens[i]!), `${name}: sequence ${i}`));
      // Sequences 0 and 1 never show the draft a padding id: every draft is the target's choice.
      if (name !== 'tree [2,2,1]') {
        for (const i of [0, 1]) {
          const st = res[i]!.stats;
          if (st.proposedDraftTokens > 0) assert.ok(st.acceptedDraftTokens / st.proposedDraftTokens >= 0.99, `${name}, sequence ${i}: ${st.acceptedDraftTokens}/${st.proposedDraftTokens} accepted`);
        }
      }
      spec.dispose?.();
    }
    // Penalties: the draft drafts with them over its histories without the ids it lacks (the last
    // prompt's padding ids), in the native chain (chain k=4) and per step (tree). A logit bias too,
    // without the ids it lacks (one padding id lowered, the plain output's first token banned).
    // Past EOS: a random checkpoint's penalized (or banned) rows may make EOS the first token, and a
    // sequence that ends there drafts nothing (seed 667020163: sequence 0).
    const pens = [
      { repetition: 1.3, presence: 0.5, frequency: 0.3 },
      { presence: 0.5, logitBias: { [Vd + 3]: -2, [plain.tokens[0]![0]!]: -Infinity } },
    ];
    for (const pen of pens) {
      const ignoreEos = true;
      const plainPen = await plainGenerate(padded, ps, { maxNewTokens: maxNew, penalties: pen, ignoreEos });
      for (const [name, spec] of [
        ['chain k=4', new DraftModelSpeculator({ draft: short, k: 4 })],
        ['tree [2,2,1]', new DraftModelSpeculator({ draft: short, treeBranching: [2, 2, 1] })],
      ] as const) {
        const res = await new SpeculativeDecoder({ target: padded, speculator: spec, penalties: pen }).generateBatch(ps, { maxNewTokens: maxNew, ignoreEos });
        res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(plainPen.tokens[i]!), `${name} with ${JSON.stringify(pen)}: sequence ${i}`));
        if (name === 'chain k=4') {
          for (const i of [0, 1]) {
            const st = res[i]!.stats;
            assert.ok(st.proposedDraftTokens > 0 && st.acceptedDraftTokens / st.proposedDraftTokens >= 0.99, `${name} with ${JSON.stringify(pen)}, sequence ${i}: ${st.acceptedDraftTokens}/${st.proposedDraftTokens} accepted`);
          }
        }
        spec.dispose?.();
      }
    }
    // Sampling: the draft's q rows are zero-padded to the target's width for the verifier.
    const sampled = await new SpeculativeDecoder({ target: padded, speculator: new DraftModelSpeculator({ draft: short, k: 3 }), sampling: { temperature: 1, seed: 5 } }).generateBatch(ps, { maxNewTokens: maxNew });
    let proposed = 0;
    for (const r of sampled) {
      assert.ok(r.tokens.length === maxNew || (r.finishReason === 'stop' && r.tokens[r.tokens.length - 1] === 2), `${r.tokens.length} tokens, ${r.finishReason}`);
      assert.ok(Array.from(r.tokens).every((t) => t >= 0 && t < targetSpec.vocab));
      proposed += r.stats.proposedDraftTokens;
    }
    assert.ok(proposed > 0, 'the draft proposed');
    assertThrowsCode(() => new SpeculativeDecoder({ target: short, speculator: new DraftModelSpeculator({ draft: padded, k: 2 }) }), 'E_ARG', /draft's vocabulary \(96 ids\) is larger than the target's \(72\)/);
    assert.strictEqual(short.kvInfo().freePages, short.kvInfo().totalPages, 'draft KV pages leaked');
  } finally {
    short.dispose();
    padded.dispose();
  }
}

describe('strategies on random Llama checkpoints (CPU)', function () {
  this.timeout(120000);
  const targetSpec = specByName('llama-gqa-f32');
  const draftSpec: CheckpointSpec = { ...targetSpec, name: 'draft-small', layers: 1, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1 };
  let target: LlamaModel;
  let draft: LlamaModel;
  before(async () => {
    target = await LlamaModel.load(makeCheckpoint(targetSpec, testSeed), { device: 'cpu', maxSequences: 8 });
    draft = await LlamaModel.load(makeCheckpoint(draftSpec, testSeed + 1), { device: 'cpu', maxSequences: 8 });
  });
  after(() => {
    target?.dispose();
    draft?.dispose();
  });

  it('draft model (smaller draft; the target as its own draft), tree, lookahead, prompt lookup, Medusa, hybrid: greedy equals plain', async () => {
    const ps = prompts(testSeed + 3, [5, 11, 2], targetSpec.vocab);
    const maxNew = 24;
    const plain = await plainGenerate(target, ps, { maxNewTokens: maxNew });
    const free0 = target.kvInfo().freePages;
    const heads = MedusaHeads.load(writeMedusaHeads({ numHeads: 3, numLayers: 1, hiddenSize: targetSpec.hidden, vocabSize: targetSpec.vocab, seed: 3 }), { device: 'cpu' });
    const self = await LlamaModel.load(target.dir, { device: 'cpu', maxSequences: 8 });
    const specs: [string, Speculator, number?][] = [
      ['smaller draft k=4', new DraftModelSpeculator({ draft, k: 4 })],
      ['target as its own draft', new DraftModelSpeculator({ draft: self, k: 5 }), 0.99],
      ['tree draft', new DraftModelSpeculator({ draft, treeBranching: [2, 2, 1] })],
      ['lookahead', new LookaheadSpeculator({ W: 4, N: 3, G: 3, sizing: 'fixed' })],
      ['prompt lookup', new PromptLookupSpeculator({ numDraft: 10 })],
      ['medusa', new MedusaSpeculator({ heads })],
      ['hybrid', new HybridSpeculator({ draft: self, draftSpeculator: new PromptLookupSpeculator({ numDraft: 10 }), k: 4 }), 0.99],
    ];
    try {
      for (const [name, spec, minRate] of specs) {
        const dec = new SpeculativeDecoder({ target, speculator: spec });
        const res = await dec.generateBatch(ps, { maxNewTokens: maxNew });
        res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain.tokens[i]!), `${name}: sequence ${i}`));
        if (minRate !== undefined) {
          const rate = res.reduce((a, r) => a + r.stats.acceptedDraftTokens, 0) / res.reduce((a, r) => a + r.stats.proposedDraftTokens, 0);
          assert.ok(rate >= minRate, `${name}: acceptance ${rate}`);
        }
        assert.strictEqual(target.kvInfo().freePages, free0, `${name}: target KV pages leaked`);
      }
      assert.strictEqual(draft.kvInfo().freePages, draft.kvInfo().totalPages, 'draft KV pages leaked');
    } finally {
      heads.dispose();
      self.dispose();
    }
  });

  it('a draft over a prefix of the target\'s vocabulary (a padded target): greedy equals plain, sampling runs, a wider draft is refused', () => paddedVocabCase('cpu'));

  const families: [string, CheckpointSpec, CheckpointSpec][] = [
    ['Qwen3 (q/k norms per head)', specByName('qwen3-qknorm-bf16'), { ...specByName('qwen3-qknorm-bf16'), name: 'qwen3-draft', layers: 1, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1, headDim: 8 }],
    // The draft keeps head_dim 16 so that LongRoPE's 6 factors fit its 12 rotated values too.
    ['Phi-4-mini (fused projections, partial rotation, LongRoPE)', specByName('phi4mini-partial-f32'), { ...specByName('phi4mini-partial-f32'), name: 'phi4mini-draft', layers: 1, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1 }],
    // Trees deeper than the draft's window and paths longer than the target's: the window is a rule on
    // positions, so every node still sees what its path decoded token by token sees.
    ['Mistral v0.1 (sliding-window attention)', specByName('mistral-swa-bf16'), { ...specByName('mistral-swa-bf16'), name: 'mistral-swa-draft', layers: 1, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1, slidingWindow: 3 }],
    ['Gemma 3 (sandwich norms, GeGLU, local and global RoPE, sliding layers)', specByName('gemma3-bf16'), { ...specByName('gemma3-bf16'), name: 'gemma3-draft', layers: 2, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1, slidingWindow: 4 }],
    ['Gemma 2 (soft-capped attention and logits, sliding even layers)', specByName('gemma2-f32'), { ...specByName('gemma2-f32'), name: 'gemma2-draft', layers: 2, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1, slidingWindow: 3 }],
    ['OLMo 2 (post-norms, q/k norms over whole projections)', specByName('olmo2-bf16'), { ...specByName('olmo2-bf16'), name: 'olmo2-draft', layers: 1, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1 }],
    ['EXAONE 4 (post-norms, per-head q/k norms, sliding layers, global layers without RoPE)', specByName('exaone4-bf16'), { ...specByName('exaone4-bf16'), name: 'exaone4-draft', layers: 2, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1, slidingWindow: 3 }],
    ['Granite (embedding, residual and logit multipliers)', specByName('granite-bf16'), { ...specByName('granite-bf16'), name: 'granite-draft', layers: 1, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1 }],
    ['SmolLM3 (layers without RoPE)', specByName('smollm3-nope-bf16'), { ...specByName('smollm3-nope-bf16'), name: 'smollm3-draft', layers: 2, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1, noRopeLayers: [0, 1] }],
  ];
  for (const [family, tSpec, dSpec] of families) {
    it(`${family}: a draft of the family, its tree, the target as its own draft, Medusa and lookahead give plain greedy output`, async () => {
      const tgt = await LlamaModel.load(makeCheckpoint(tSpec, testSeed + 21), { device: 'cpu', maxSequences: 8 });
      const small = await LlamaModel.load(makeCheckpoint(dSpec, testSeed + 22), { device: 'cpu', maxSequences: 8 });
      const self = await LlamaModel.load(tgt.dir, { device: 'cpu', maxSequences: 8 });
      const heads = MedusaHeads.load(writeMedusaHeads({ numHeads: 4, numLayers: 1, hiddenSize: tSpec.hidden, vocabSize: tSpec.vocab, seed: 4 }), { device: 'cpu' });
      try {
        const ps = prompts(testSeed + 23, [4, 9], tSpec.vocab);
        const plain = await plainGenerate(tgt, ps, { maxNewTokens: 20 });
        const specs: [string, Speculator, number?][] = [
          ['draft k=4', new DraftModelSpeculator({ draft: small, k: 4 })],
          ['tree draft', new DraftModelSpeculator({ draft: small, treeBranching: [2, 2, 1] })],
          ['target as its own draft', new DraftModelSpeculator({ draft: self, k: 5 }), 0.99],
          ['medusa, 63 nodes', new MedusaSpeculator({ heads, choices: 'mc_sim_7b_63' })],
          ['lookahead', new LookaheadSpeculator({ W: 4, N: 3, G: 3, sizing: 'fixed' })],
        ];
        for (const [name, spec, minRate] of specs) {
          const res = await new SpeculativeDecoder({ target: tgt, speculator: spec }).generateBatch(ps, { maxNewTokens: 20 });
          res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain.tokens[i]!), `${family}, ${name}: sequence ${i}`));
          if (minRate !== undefined) {
            const rate = res.reduce((a, r) => a + r.stats.acceptedDraftTokens, 0) / res.reduce((a, r) => a + r.stats.proposedDraftTokens, 0);
            assert.ok(rate >= minRate, `${family}, ${name}: acceptance ${rate}`);
          }
        }
      } finally {
        for (const x of [heads, self, small, tgt]) x.dispose();
      }
    });
  }

  it('abort frees the KV pages of target and draft', async () => {
    const free0 = target.kvInfo().freePages;
    const dfree0 = draft.kvInfo().freePages;
    const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft, k: 3 }) });
    const ac = new AbortController();
    let n = 0;
    await assert.rejects(
      dec.generateBatch(prompts(testSeed + 9, [6, 3], targetSpec.vocab), {
        maxNewTokens: 60,
        // Never done before the third delivery (a sequence could stop at its EOS by then).
        ignoreEos: true,
        signal: ac.signal,
        onTokens: () => {
          if (++n === 3) ac.abort();
        },
      }),
      (e: Error) => e.name === 'AbortError',
    );
    assert.strictEqual(target.kvInfo().freePages, free0);
    assert.strictEqual(draft.kvInfo().freePages, dfree0);
  });
});

describeCuda('strategies on random Llama checkpoints', function () {
  this.timeout(120000);
  const targetSpec = specByName('llama-gqa-f32');
  const draftSpec: CheckpointSpec = { ...targetSpec, name: 'draft-small-cuda', layers: 1, hidden: 16, intermediate: 32, heads: 2, kvHeads: 1 };

  it('greedy output equals plain greedy decoding on the GPU (draft, tree, Medusa, lookahead, hybrid); sampling runs', async () => {
    const target = await LlamaModel.load(makeCheckpoint(targetSpec, testSeed), { device: 'cuda', maxSequences: 8 });
    const draft = await LlamaModel.load(makeCheckpoint(draftSpec, testSeed + 1), { device: 'cuda', maxSequences: 8 });
    const heads = MedusaHeads.load(writeMedusaHeads({ numHeads: 3, numLayers: 1, hiddenSize: targetSpec.hidden, vocabSize: targetSpec.vocab, seed: 3 }), { device: 'cuda' });
    try {
      const ps = prompts(testSeed + 3, [5, 11, 2], targetSpec.vocab);
      const plain = await plainGenerate(target, ps, { maxNewTokens: 24 });
      const free0 = target.kvInfo().freePages;
      const specs: [string, Speculator][] = [
        ['draft k=4', new DraftModelSpeculator({ draft, k: 4 })],
        ['tree draft', new DraftModelSpeculator({ draft, treeBranching: [2, 2, 1] })],
        ['medusa', new MedusaSpeculator({ heads })],
        ['lookahead', new LookaheadSpeculator({ W: 4, N: 3, G: 3, sizing: 'fixed' })],
        ['hybrid', new HybridSpeculator({ draft, draftSpeculator: new PromptLookupSpeculator({ numDraft: 10 }), k: 4 })],
      ];
      for (const [name, spec] of specs) {
        const dec = new SpeculativeDecoder({ target, speculator: spec });
        const res = await dec.generateBatch(ps, { maxNewTokens: 24 });
        res.forEach((r, i) => assert.deepStrictEqual(Array.from(r.tokens), Array.from(plain.tokens[i]!), `${name}: sequence ${i}`));
        assert.strictEqual(target.kvInfo().freePages, free0, `${name}: target KV pages leaked`);
      }
      const sdec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft, k: 3 }), sampling: { temperature: 0.8, topP: 0.9, seed: 1 } });
      const sres = await sdec.generateBatch(ps, { maxNewTokens: 16 });
      // A sampled run may draw the checkpoint's EOS (then it ends there, EOS included): 'length' means
      // all 16 tokens, 'stop' means an EOS last and nowhere before it.
      const eos = new Set(target.config.eosTokenIds);
      for (const r of sres) {
        const t = Array.from(r.tokens);
        assert.ok(t.every((x) => x >= 0 && x < targetSpec.vocab), `sampled ids outside the vocabulary: ${t}`);
        if (r.finishReason === 'length') assert.strictEqual(t.length, 16);
        else {
          assert.strictEqual(r.finishReason, 'stop');
          assert.ok(t.length <= 16 && eos.has(t[t.length - 1] as number) && !t.slice(0, -1).some((x) => eos.has(x)), `stop without EOS last: ${t}`);
        }
      }
      assert.strictEqual(draft.kvInfo().freePages, draft.kvInfo().totalPages, 'draft KV pages leaked');
    } finally {
      heads.dispose();
      draft.dispose();
      target.dispose();
    }
  });

  it('a draft over a prefix of the target\'s vocabulary (a padded target) on the GPU: greedy equals plain, sampled q rows padded on the device', () => paddedVocabCase('cuda'));
});

// Keep the CausalLM import used for type-only checks of the fixtures.
export type _Check = CausalLM;

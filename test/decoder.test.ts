// SpeculativeDecoder: plain decoding parity, streaming, stop/length handling, statistics, abort
// and leaks, tree utilities. Strategies are covered in strategies.test.ts.
import * as assert from 'assert';

import { SpeculativeDecoder } from '../lib/decoder';
import { plainGenerate } from '../lib/plain';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Tensor } from '../lib/tensor';
import { ancestorMask, chainTree, maskBit, medusaTreeShape, MC_SIM_7B_63, pruneTree, treeDepths, treePositions, validateTree } from '../lib/tree';
import { ToyLM, toyGreedy } from './fixtures/toy_lm';
import { assertThrowsCode, rng, testSeed } from './helpers';

function randomPrompt(r: () => number, len: number, vocab: number): Int32Array {
  return Int32Array.from({ length: len }, () => Math.floor(r() * vocab));
}

/** A ToyLM that remembers every tensor it returned (to check the decoder disposes them). */
class TrackingToy extends ToyLM {
  readonly made: Tensor[] = [];
  override async forward(...args: Parameters<ToyLM['forward']>): ReturnType<ToyLM['forward']> {
    const out = await super.forward(...args);
    this.made.push(out.logits);
    if (out.hidden) this.made.push(out.hidden);
    return out;
  }
}

describe('SpeculativeDecoder (toy model)', () => {
  const V = 40;
  const seed = testSeed;

  it('without a speculator equals plain greedy decoding, single and batched (ragged prompts)', async () => {
    const r = rng(seed);
    const target = new ToyLM({ vocabSize: V, seed: seed + 1 });
    const prompts = [randomPrompt(r, 5, V), randomPrompt(r, 1, V), randomPrompt(r, 9, V)];
    const plain = await plainGenerate(target, prompts, { maxNewTokens: 17 });
    const dec = new SpeculativeDecoder({ target });
    const batch = await dec.generateBatch(prompts, { maxNewTokens: 17 });
    for (let i = 0; i < prompts.length; i++) {
      assert.deepStrictEqual(Array.from(batch[i]!.tokens), Array.from(plain.tokens[i]!));
      // The toy's own float reference agrees too (the plain baseline is not trivially wrong).
      assert.deepStrictEqual(Array.from(batch[i]!.tokens), toyGreedy(target, Array.from(prompts[i]!), 17));
      assert.strictEqual(batch[i]!.stats.targetForwards, 17, 'plain: one forward per token (prefill included)');
      assert.strictEqual(batch[i]!.stats.tokensPerForward, 1);
      assert.strictEqual(batch[i]!.stats.proposedDraftTokens, 0);
    }
    const single = await dec.generate(prompts[2]!, { maxNewTokens: 17 }).result;
    assert.deepStrictEqual(Array.from(single.tokens), Array.from(plain.tokens[2]!));
    assert.strictEqual(target.liveSequences(), 0);
  });

  it('generate() streams each step as a chunk and resolves to the same tokens', async () => {
    const r = rng(seed + 2);
    const target = new ToyLM({ vocabSize: V, seed: seed + 3, positional: false });
    const draft = new ToyLM({ vocabSize: V, seed: seed + 3, positional: false });
    const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft, k: 3 }) });
    const prompt = randomPrompt(r, 6, V);
    const gen = dec.generate(prompt, { maxNewTokens: 25 });
    const chunks: number[][] = [];
    for await (const c of gen) chunks.push(Array.from(c));
    const res = await gen.result;
    assert.deepStrictEqual(chunks.flat(), Array.from(res.tokens));
    assert.deepStrictEqual(Array.from(res.tokens), toyGreedy(target, Array.from(prompt), 25));
    // First chunk: the prefill's token; a perfect k=3 draft then gives 4 tokens per step.
    assert.strictEqual(chunks[0]!.length, 1);
    assert.ok(chunks.slice(1, -1).every((c) => c.length === 4), `chunk sizes ${chunks.map((c) => c.length)}`);
    assert.strictEqual(chunks.length, res.stats.targetForwards);
    assert.strictEqual(res.stats.newTokens, 25);
    assert.strictEqual(res.stats.acceptanceRate, 1);
    assert.deepStrictEqual(res.stats.acceptedPerPosition, res.stats.proposedPerPosition);
    assert.ok(res.stats.tokensPerForward > 3, `tau ${res.stats.tokensPerForward}`);
    for (const k of ['prefill', 'draft', 'target', 'verify', 'commit'] as const) assert.ok(res.stats.phases[k] >= 0);
    assert.ok(res.stats.seconds > 0);
  });

  it('stops at a stop token (emitted) and at the model EOS, never overshoots maxNewTokens', async () => {
    const r = rng(seed + 4);
    const target = new ToyLM({ vocabSize: V, seed: seed + 5, positional: false });
    const prompt = randomPrompt(r, 4, V);
    const ref = toyGreedy(target, Array.from(prompt), 30);
    const stopTok = ref[7]!;
    const firstStop = ref.indexOf(stopTok);
    const draft = new ToyLM({ vocabSize: V, seed: seed + 5, positional: false });
    const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft, k: 5 }) });
    const res = await dec.generate(prompt, { maxNewTokens: 30, stopTokens: [stopTok] }).result;
    assert.deepStrictEqual(Array.from(res.tokens), ref.slice(0, firstStop + 1));
    assert.strictEqual(res.finishReason, 'stop');
    for (const n of [0, 1, 2, 7]) {
      const rn = await dec.generate(prompt, { maxNewTokens: n }).result;
      assert.deepStrictEqual(Array.from(rn.tokens), ref.slice(0, n));
    }
    // The model's EOS ids stop it too, as in plainGenerate.
    const eosModel = new ToyLM({ vocabSize: V, seed: seed + 5, positional: false, eos: [stopTok] });
    const eosDec = new SpeculativeDecoder({ target: eosModel, speculator: new DraftModelSpeculator({ draft, k: 5 }) });
    const re = await eosDec.generate(prompt, { maxNewTokens: 30 }).result;
    assert.deepStrictEqual(Array.from(re.tokens), Array.from((await plainGenerate(eosModel, [prompt], { maxNewTokens: 30 })).tokens[0]!));
    assert.deepStrictEqual(Array.from(re.tokens), ref.slice(0, firstStop + 1));
    assert.strictEqual(target.liveSequences(), 0);
    assert.strictEqual(draft.liveSequences(), 0);
  });

  it('matches plain decoding up to the context limit', async () => {
    const r = rng(seed + 6);
    const target = new ToyLM({ vocabSize: V, seed: seed + 7, maxPositions: 24, positional: false });
    const draft = new ToyLM({ vocabSize: V, seed: seed + 7, maxPositions: 24, positional: false });
    const prompts = [randomPrompt(r, 10, V), randomPrompt(r, 21, V)];
    const plain = await plainGenerate(target, prompts, { maxNewTokens: 100 });
    const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft, k: 4 }) });
    const res = await dec.generateBatch(prompts, { maxNewTokens: 100 });
    for (let i = 0; i < 2; i++) {
      assert.deepStrictEqual(Array.from(res[i]!.tokens), Array.from(plain.tokens[i]!));
      assert.strictEqual(res[i]!.finishReason, 'context');
    }
    await assert.rejects(dec.generate(randomPrompt(r, 24, V), { maxNewTokens: 3 }).result, (e: Error & { code?: string }) => e.code === 'E_ARG');
  });

  it('rejects bad input with coded errors and frees what it allocated', async () => {
    const target = new ToyLM({ vocabSize: V, seed: 1 });
    const dec = new SpeculativeDecoder({ target });
    await assert.rejects(dec.generate([1, V], { maxNewTokens: 3 }).result, /prompt\[1\] = 40 is outside the vocabulary/);
    await assert.rejects(dec.generate([], { maxNewTokens: 3 }).result, /empty/);
    await assert.rejects(dec.generate([1], { maxNewTokens: -1 }).result, /maxNewTokens/);
    assert.strictEqual(target.liveSequences(), 0);
    assertThrowsCode(
      () => new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: new ToyLM({ vocabSize: V + 1, seed: 1 }) }) }),
      'E_ARG',
      /draft's vocabulary \(41 ids\) is larger than the target's \(40\)/,
    );
    assertThrowsCode(
      () => new SpeculativeDecoder({ target, speculator: new HybridSpeculator({ draft: new ToyLM({ vocabSize: V + 3, seed: 1 }), draftSpeculator: new PromptLookupSpeculator() }) }),
      'E_ARG',
      /hybrid: the draft's vocabulary \(43 ids\) is larger than the target's \(40\)/,
    );
    assertThrowsCode(() => new DraftModelSpeculator({ draft: target, k: 0 }), 'E_ARG', /k must be/);
  });

  it('abort mid-generation rejects with AbortError and frees target and draft sequences', async () => {
    const r = rng(seed + 8);
    const target = new TrackingToy({ vocabSize: V, seed: seed + 9 });
    const draft = new TrackingToy({ vocabSize: V, seed: seed + 10 });
    const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft, k: 3 }) });
    const ac = new AbortController();
    let steps = 0;
    await assert.rejects(
      dec.generateBatch([randomPrompt(r, 5, V), randomPrompt(r, 3, V)], {
        maxNewTokens: 200,
        signal: ac.signal,
        onTokens: () => {
          if (++steps === 5) ac.abort();
        },
      }),
      (e: Error) => e.name === 'AbortError',
    );
    assert.ok(steps >= 5 && steps < 20);
    assert.strictEqual(target.liveSequences(), 0);
    assert.strictEqual(draft.liveSequences(), 0);
    assert.ok([...target.made, ...draft.made].every((t) => t.disposed), 'every forward output disposed');
    // The iterator form rejects too.
    const ac2 = new AbortController();
    const gen = dec.generate(randomPrompt(r, 4, V), { maxNewTokens: 200, signal: ac2.signal });
    await assert.rejects(
      (async () => {
        for await (const _ of gen) ac2.abort();
      })(),
      (e: Error) => e.name === 'AbortError',
    );
    assert.strictEqual(target.liveSequences(), 0);
    assert.strictEqual(draft.liveSequences(), 0);
    // Leaving the loop early stops the run and frees its sequences.
    const gen3 = dec.generate(randomPrompt(r, 4, V), { maxNewTokens: 200 });
    let seen = 0;
    for await (const _ of gen3) if (++seen === 3) break;
    await assert.rejects(gen3.result, (e: Error) => e.name === 'AbortError');
    assert.strictEqual(target.liveSequences(), 0);
    assert.strictEqual(draft.liveSequences(), 0);
  });

  it('concurrent runs on one decoder keep their sequences apart', async () => {
    const r = rng(seed + 13);
    const target = new ToyLM({ vocabSize: V, seed: seed + 14, positional: false });
    const draft = new ToyLM({ vocabSize: V, seed: seed + 14, positional: false, mix: { seed: 3, weight: 0.2 } });
    const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft, k: 3 }) });
    const ps = [randomPrompt(r, 5, V), randomPrompt(r, 7, V), randomPrompt(r, 2, V)];
    const res = await Promise.all([dec.generate(ps[0]!, { maxNewTokens: 30 }).result, dec.generateBatch([ps[1]!, ps[2]!], { maxNewTokens: 25 })]);
    assert.deepStrictEqual(Array.from(res[0].tokens), toyGreedy(target, Array.from(ps[0]!), 30));
    assert.deepStrictEqual(Array.from(res[1][0]!.tokens), toyGreedy(target, Array.from(ps[1]!), 25));
    assert.deepStrictEqual(Array.from(res[1][1]!.tokens), toyGreedy(target, Array.from(ps[2]!), 25));
    assert.strictEqual(draft.liveSequences(), 0);
  });

  it('a long batched generation frees every sequence and disposes every tensor', async () => {
    const r = rng(seed + 11);
    const target = new TrackingToy({ vocabSize: V, seed: seed + 12, positional: false });
    const draft = new TrackingToy({ vocabSize: V, seed: seed + 12, positional: false, mix: { seed: 5, weight: 0.3 } });
    const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft, k: 4, adaptive: 'heuristic' }) });
    const prompts = [randomPrompt(r, 3, V), randomPrompt(r, 8, V), randomPrompt(r, 5, V)];
    const res = await dec.generateBatch(prompts, { maxNewTokens: 400 });
    for (let i = 0; i < prompts.length; i++) assert.deepStrictEqual(Array.from(res[i]!.tokens), toyGreedy(target, Array.from(prompts[i]!), 400));
    assert.strictEqual(target.liveSequences(), 0);
    assert.strictEqual(draft.liveSequences(), 0);
    assert.ok(target.made.length > 10 && [...target.made, ...draft.made].every((t) => t.disposed));
  });
});

describe('token trees', () => {
  it('chains, depths, positions, ancestor masks and pruning', () => {
    const c = chainTree(7, [1, 2, 3]);
    assert.deepStrictEqual(Array.from(c.parents), [-1, 0, 1, 2]);
    const parents = Int32Array.from([-1, 0, 0, 1, 3, 2, -2]);
    assert.deepStrictEqual(Array.from(treeDepths(parents)), [0, 1, 1, 2, 3, 2, -1]);
    assert.deepStrictEqual(Array.from(treePositions(parents.slice(0, 6), 10)), [10, 11, 11, 12, 13, 12]);
    const m = ancestorMask(parents.slice(0, 6));
    const want = [[0], [0, 1], [0, 2], [0, 1, 3], [0, 1, 3, 4], [0, 2, 5]];
    for (let i = 0; i < 6; i++) for (let j = 0; j < 6; j++) assert.strictEqual(maskBit(m, i, j), want[i]!.includes(j), `bit ${i},${j}`);
    const p = pruneTree({ tokens: Int32Array.from([9, 8, 7, 6, 5, 4]), parents: parents.slice(0, 6) }, 1);
    assert.deepStrictEqual(Array.from(p.tree.tokens), [9, 8, 7]);
    assert.deepStrictEqual(Array.from(p.tree.parents), [-1, 0, 0]);
    // A 70-node chain needs two mask words per row.
    const long = ancestorMask(chainTree(0, new Array<number>(69).fill(1)).parents);
    assert.strictEqual(long.words, 2);
    assert.ok(maskBit(long, 69, 0) && maskBit(long, 69, 64) && maskBit(long, 69, 69) && !maskBit(long, 64, 65));
    assertThrowsCode(() => validateTree({ tokens: Int32Array.of(1, 2), parents: Int32Array.of(-1, 1) }), 'E_ARG', /parents\[1\] = 1/);
    assertThrowsCode(() => validateTree({ tokens: Int32Array.of(1, 2), parents: Int32Array.of(0, -1) }), 'E_ARG', /root/);
  });

  it('the mc_sim_7b_63 Medusa preset is a valid 64-node tree, 4 heads deep, top-10', () => {
    const s = medusaTreeShape(MC_SIM_7B_63);
    assert.strictEqual(s.parents.length, 64);
    assert.strictEqual(s.depth, 4);
    assert.strictEqual(s.topK, 10);
    const d = treeDepths(s.parents);
    for (let i = 1; i < 64; i++) assert.strictEqual(d[i], (s.head[i] as number) + 1);
    assertThrowsCode(() => medusaTreeShape([[0, 1]]), 'E_ARG', /no parent choice \[0\]/);
    assertThrowsCode(() => medusaTreeShape([[0], [0]]), 'E_ARG', /duplicate/);
  });
});

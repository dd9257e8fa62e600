// Prompt lookup across requests: LookupCorpus against a plain scan of the live documents (random
// token streams, eviction and rebuilds), and PromptLookupSpeculator with a corpus on the embedded
// family: plain greedy decoding's tokens for a run of requests, a repeated request drafted from the
// first one's tokens, and the flags. Predicted outputs: the same tokens whatever the prediction,
// few forwards with a right one.
import * as assert from 'assert';
import { parseStrategyFlags } from '../lib/cli/strategy_flags';
import { Engine } from '../lib/engine/engine';
import { plainGenerate } from '../lib/plain';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { LookupCorpus } from '../lib/strategies/lookup_corpus';
import { predictionLookup, PromptLookupSpeculator, promptLookup } from '../lib/strategies/prompt_lookup';
import { loadEmbeddedFamily, type EmbeddedFamily } from './fixtures/embedded_family';
import { assertThrowsCode, rng, testSeed } from './helpers';

/** The reference: the longest n-gram (maxN .. minN) ending `history` whose most recent occurrence in `docs` (oldest first) something follows; its next k tokens. */
function scan(docs: readonly number[][], history: readonly number[], maxN: number, minN: number, k: number): { n: number; drafts: number[] } | undefined {
  const L = history.length;
  for (let n = Math.min(maxN, L); n >= minN; n--) {
    for (let d = docs.length - 1; d >= 0; d--) {
      const doc = docs[d] as number[];
      for (let at = doc.length - n - 1; at >= 0; at--) {
        let same = true;
        for (let i = 0; i < n && same; i++) same = doc[at + i] === history[L - n + i];
        if (same) return { n, drafts: doc.slice(at + n, at + n + k) };
      }
    }
  }
  return undefined;
}

describe('prompt lookup across requests: LookupCorpus', () => {
  it('the most recent occurrence of the longest n-gram among the live documents, as a plain scan finds it, through eviction and rebuilds', () => {
    const r = rng(testSeed + 81);
    let hits = 0, misses = 0;
    for (const [maxTokens, maxN, vocab] of [[400, 3, 6], [5000, 4, 12], [60, 2, 4]] as const) {
      const corpus = new LookupCorpus(maxTokens, maxN);
      const live: number[][] = [];
      let liveTokens = 0;
      for (let step = 0; step < 400; step++) {
        if (r() < 0.3) {
          const doc = Array.from({ length: 1 + Math.floor(r() * 80) }, () => Math.floor(r() * vocab));
          corpus.add(doc);
          // The reference's eviction: oldest first, a document longer than the corpus keeping its end.
          const kept = doc.slice(Math.max(0, doc.length - maxTokens));
          if (kept.length >= 2) {
            while (liveTokens + kept.length > maxTokens) liveTokens -= (live.shift() as number[]).length;
            live.push(kept);
            liveTokens += kept.length;
          }
          assert.strictEqual(corpus.size, liveTokens);
        }
        const history = Array.from({ length: 1 + Math.floor(r() * 10) }, () => Math.floor(r() * vocab));
        const k = 1 + Math.floor(r() * 6);
        const minN = 1 + Math.floor(r() * maxN);
        const want = scan(live, history, maxN, minN, k);
        assert.deepStrictEqual(corpus.lookup(history, minN, k), want, `history ${history.join(',')}`);
        if (want) hits++;
        else misses++;
      }
    }
    assert.ok(hits > 300 && misses > 50, `${hits} hits, ${misses} misses`);
    assertThrowsCode(() => new LookupCorpus(0, 3), 'E_ARG', /maxTokens must be an integer >= 1/);
    assertThrowsCode(() => new PromptLookupSpeculator({ corpusTokens: -1 }), 'E_ARG', /corpusTokens must be an integer >= 0/);
  });

  it('flags: --lookup-corpus T with --prompt-lookup', () => {
    assert.strictEqual(parseStrategyFlags(['--prompt-lookup', '3', '--lookup-corpus', '65536']).flags.lookupCorpus, 65536);
    assertThrowsCode(() => parseStrategyFlags(['--lookup-corpus', '100']), 'E_ARG', /--lookup-corpus needs --prompt-lookup/);
    assertThrowsCode(() => parseStrategyFlags(['--prompt-lookup', '3', '--lookup-corpus', '0']), 'E_ARG', /--lookup-corpus: expected an integer >= 1/);
  });
});

describe('prompt lookup across requests: decoding (embedded family)', function () {
  this.timeout(300000);
  let family: EmbeddedFamily;
  before(async () => {
    family = await loadEmbeddedFamily(8);
  });
  after(() => family.dispose());

  it("requests one after another: plain greedy decoding's tokens, and sampled plain sampling's; a repeated request is drafted from the first one's tokens (fewer forwards than without the corpus)", async () => {
    const { target, tokenizer } = family;
    const prompts = ['once upon a time', 'there was a dog', 'once upon a time', 'lily liked to play', 'there was a dog'].map((p) => tokenizer.encode(p));
    const plain = await plainGenerate(target, prompts, { maxNewTokens: 40, ignoreEos: true });
    const forwards: Record<string, number[]> = {};
    for (const corpusTokens of [0, 4096]) {
      const spec = new PromptLookupSpeculator({ maxNgram: 3, numDraft: 6, corpusTokens });
      const engine = new Engine({ model: target, speculator: spec });
      try {
        const fw: number[] = [];
        for (let i = 0; i < prompts.length; i++) {
          const res = await engine.submit(prompts[i] as Int32Array, { maxNewTokens: 40, ignoreEos: true });
          assert.deepStrictEqual(Array.from(res.tokens), Array.from(plain.tokens[i] as Int32Array), `corpus ${corpusTokens}: request ${i}`);
          fw.push(res.stats.targetForwards);
        }
        forwards[corpusTokens] = fw;
        if (corpusTokens > 0) assert.ok((spec.corpus?.size ?? 0) >= prompts.reduce((n, p) => n + p.length + 40, 0) - prompts.length, 'every finished request in the corpus');
      } finally {
        engine.close();
      }
    }
    const [own, shared] = [forwards[0] as number[], forwards[4096] as number[]];
    // The first of each prompt: the same lookups (the corpus holds other texts, which may help a little).
    // A repeat (requests 2 and 4): its whole output was written before, so each step drafts 6 tokens that are all accepted.
    for (const i of [2, 4]) {
      assert.ok((shared[i] as number) <= Math.ceil(40 / 7) + 2, `request ${i}: ${shared[i]} forwards with the corpus (${own[i]} without)`);
      assert.ok((shared[i] as number) < (own[i] as number), `request ${i}: ${shared[i]} forwards with the corpus, ${own[i]} without`);
    }
    // Sampled: the drafts are deterministic, so each request emits plain sampling's tokens for its
    // (seed, stream) whatever the corpus drafted (sized, the corpus's rates apart).
    const sampling = { temperature: 0.8, seed: 21 };
    const sampled = await plainGenerate(target, prompts, { maxNewTokens: 40, ignoreEos: true, ...sampling });
    const spec = new PromptLookupSpeculator({ maxNgram: 3, corpusTokens: 4096 });
    const engine = new Engine({ model: target, speculator: spec });
    try {
      for (let i = 0; i < prompts.length; i++) {
        const res = await engine.submit(prompts[i] as Int32Array, { maxNewTokens: 40, ignoreEos: true, sampling: { temperature: sampling.temperature }, seed: sampling.seed, stream: i });
        assert.deepStrictEqual(Array.from(res.tokens), Array.from(sampled.tokens[i] as Int32Array), `sampled: request ${i}`);
      }
    } finally {
      engine.close();
    }
    // promptLookup itself is unchanged by the corpus option.
    assert.deepStrictEqual(promptLookup([1, 2, 3, 1, 2], 3, 1, 4), [3, 1, 2]);
  });
});

describe('predicted outputs (GenerateOptions.prediction): prompt lookup drafts from them', function () {
  this.timeout(300000);

  it('predictionLookup: the longest n-gram with a token after it; of its occurrences the first at or after the alignment, else the first', () => {
    //                 0  1  2  3  4  5  6  7  8  9
    const prediction = [5, 6, 7, 8, 5, 6, 9, 1, 2, 3];
    assert.deepStrictEqual(predictionLookup(prediction, [4, 5, 6], 3, 1, 3), { n: 2, at: 2, drafts: [7, 8, 5] });
    // Aligned past the first "5 6": the second one.
    assert.deepStrictEqual(predictionLookup(prediction, [4, 5, 6], 3, 1, 3, 5), { n: 2, at: 6, drafts: [9, 1, 2] });
    // Where the output has got to (a 2-gram ending at 6) comes before a longer match elsewhere and an earlier occurrence.
    assert.deepStrictEqual(predictionLookup(prediction, [7, 5, 6], 3, 1, 3, 6), { n: 2, at: 6, drafts: [9, 1, 2] });
    assert.deepStrictEqual(predictionLookup(prediction, [6, 7, 8, 5, 6], 3, 1, 3, 6), { n: 3, at: 6, drafts: [9, 1, 2] });
    // A single token there is not enough: the longest match elsewhere.
    assert.deepStrictEqual(predictionLookup(prediction, [8, 9], 3, 1, 2, 7), { n: 1, at: 7, drafts: [1, 2] });
    assert.deepStrictEqual(predictionLookup(prediction, [4, 5, 6], 3, 1, 3, 2), { n: 2, at: 2, drafts: [7, 8, 5] });
    assert.deepStrictEqual(predictionLookup(prediction, [8, 5, 6], 3, 1, 2), { n: 3, at: 6, drafts: [9, 1] });
    assert.deepStrictEqual(predictionLookup(prediction, [2, 3], 3, 1, 4), undefined);  // nothing follows "2 3"
    assert.deepStrictEqual(predictionLookup(prediction, [0, 4], 3, 1, 4), undefined);
    assert.deepStrictEqual(predictionLookup(prediction, [1], 3, 1, 4), { n: 1, at: 8, drafts: [2, 3] });
  });

  describe('decoding (embedded family)', () => {
    let family: EmbeddedFamily;
    before(async () => {
      family = await loadEmbeddedFamily(8);
    });
    after(() => family.dispose());

    it("the output is the same with any prediction (right, edited, unrelated), greedy and sampled; a right one drafts it in few forwards", async () => {
      const { target, tokenizer } = family;
      const prompts = ['once upon a time', 'there was a dog', 'lily liked to play'].map((p) => tokenizer.encode(p));
      const plain = await plainGenerate(target, prompts, { maxNewTokens: 48, ignoreEos: true });
      const sampling = { temperature: 0.8, seed: 5 };
      const sampled = await plainGenerate(target, prompts, { maxNewTokens: 48, ignoreEos: true, ...sampling });
      const r = rng(testSeed + 91);
      for (const spec of [new PromptLookupSpeculator({ maxNgram: 3, numDraft: 8 }), new PromptLookupSpeculator({ maxNgram: 3 })]) {
        const engine = new Engine({ model: target, speculator: spec });
        try {
          for (let i = 0; i < prompts.length; i++) {
            const want = Array.from(plain.tokens[i] as Int32Array);
            // An edited prediction: a stretch replaced, one removed.
            const edited = [...want.slice(0, 10), ...Array.from({ length: 5 }, () => 3 + Math.floor(r() * 300)), ...want.slice(15, 30), ...want.slice(36)];
            const predictions: [string, number[]][] = [['right', want], ['edited', edited], ['unrelated', Array.from({ length: 40 }, () => 3 + Math.floor(r() * 300))]];
            for (const [what, prediction] of predictions) {
              const res = await engine.submit(prompts[i] as Int32Array, { maxNewTokens: 48, ignoreEos: true, prediction });
              assert.deepStrictEqual(Array.from(res.tokens), want, `${spec.sized ? 'sized' : 'fixed'}, request ${i}, ${what} prediction`);
              if (what === 'right' && !spec.sized) assert.ok(res.stats.targetForwards <= Math.ceil(48 / 9) + 2, `request ${i}: ${res.stats.targetForwards} forwards with the right prediction`);
              const s = await engine.submit(prompts[i] as Int32Array, { maxNewTokens: 48, ignoreEos: true, prediction, sampling: { temperature: sampling.temperature }, seed: sampling.seed, stream: i });
              assert.deepStrictEqual(Array.from(s.tokens), Array.from(sampled.tokens[i] as Int32Array), `sampled, request ${i}, ${what} prediction`);
            }
          }
        } finally {
          engine.close();
        }
      }
      // A hybrid: the prediction reaches its inner prompt lookup (in the draft's ids); the output stays.
      const hybrid = new Engine({ model: target, speculator: new HybridSpeculator({ draft: family.draft, draftSpeculator: new PromptLookupSpeculator({ maxNgram: 3, numDraft: 6 }), k: 6 }) });
      try {
        for (let i = 0; i < prompts.length; i++) {
          const want = Array.from(plain.tokens[i] as Int32Array);
          for (const prediction of [want, want.slice(5, 40)]) {
            const res = await hybrid.submit(prompts[i] as Int32Array, { maxNewTokens: 48, ignoreEos: true, prediction });
            assert.deepStrictEqual(Array.from(res.tokens), want, `hybrid, request ${i}`);
          }
        }
      } finally {
        hybrid.close();
      }
      const engine = new Engine({ model: target, speculator: new PromptLookupSpeculator() });
      try {
        await assert.rejects(engine.submit(prompts[0] as Int32Array, { maxNewTokens: 4, prediction: [1, target.config.vocabSize] }), /prediction\[1\] = \d+ is not a token id in \[0, \d+\)/);
        await assert.rejects(engine.submit(prompts[0] as Int32Array, { maxNewTokens: 4, prediction: 'abc' as never }), /prediction must be an array of token ids/);
      } finally {
        engine.close();
      }
    });
  });
});

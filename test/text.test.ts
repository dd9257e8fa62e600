// generateText: streaming text chunks and stop strings over the speculative decoder.
import * as assert from 'assert';
import * as path from 'path';

import { SpeculativeDecoder } from '../lib/decoder';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { streamGeneration } from '../lib/engine/generation';
import { cleanUpTokenizationSpaces, generateText, IncrementalText, SettledText, settledText, type TextCodec, type TokenGenerator } from '../lib/text';
import { TextStream } from '../lib/cli/generate';
import { TextTokenizer } from '../lib/tokenizer';
import { byteLevelTokenizer, metaspaceTokenizer, tokenizerFrom } from './fixtures/tokenizers';
import { ToyLM, toyGreedy } from './fixtures/toy_lm';
import { assertThrowsCode, rng, testSeed } from './helpers';

// Token i <-> a two-letter word ("ab ", "ac ", ...): decoding is plain concatenation.
const V = 26;
const word = (i: number): string => `${String.fromCharCode(97 + (i % 26))}${String.fromCharCode(97 + ((i * 7) % 26))} `;
const codec: TextCodec = {
  encode: (text) => Int32Array.from(text.trim().split(/\s+/).map((w) => (w.charCodeAt(0) - 97 + 26) % 26)),
  decode: (ids) => Array.from(ids, word).join(''),
};

describe('generateText', () => {
  it('streams the decoded text of each step and ends with the whole text and stats', async () => {
    const target = new ToyLM({ vocabSize: V, seed: testSeed });
    const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: target, k: 3 }) });
    const prompt = Int32Array.from([1, 2, 3]);
    const expected = toyGreedy(target, Array.from(prompt), 20);
    const gen = generateText(dec, codec, prompt, { maxNewTokens: 20 });
    let streamed = '';
    const toks: number[] = [];
    for await (const c of gen) {
      streamed += c.text;
      toks.push(...c.tokens);
    }
    const r = await gen.result;
    assert.deepStrictEqual(toks, expected);
    assert.deepStrictEqual(Array.from(r.tokens), expected);
    assert.strictEqual(r.text, codec.decode(expected));
    assert.strictEqual(streamed, r.text);
    assert.ok(r.stats.tokensPerForward > 1);
  });

  it('stops at a stop string, which is not part of the text; the tokens stop right after it', async () => {
    const target = new ToyLM({ vocabSize: V, seed: testSeed + 1 });
    const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: target, k: 4 }) });
    const prompt = [4, 5];
    const full = toyGreedy(target, prompt, 30);
    // Pick the 2-word text at output tokens 6..7 as the stop string.
    const stop = word(full[6]!) + word(full[7]!).trim();
    const text = codec.decode(full);
    const at = text.indexOf(stop);
    const gen = generateText(dec, codec, Int32Array.from(prompt), { maxNewTokens: 30, stopStrings: [stop] });
    let streamed = '';
    for await (const c of gen) streamed += c.text;
    const r = await gen.result;
    assert.strictEqual(r.finishReason, 'stop');
    assert.strictEqual(r.stopString, stop);
    assert.strictEqual(r.text, text.slice(0, at));
    assert.strictEqual(streamed, r.text);
    // The run stopped at the token completing the stop string, not at maxNewTokens.
    assert.ok(r.tokens.length < 30);
    assert.ok(codec.decode(Array.from(r.tokens)).includes(stop));
    assert.ok(!codec.decode(Array.from(r.tokens).slice(0, -1)).includes(stop));
    assertThrowsCode(() => generateText(dec, codec, 'ab', { maxNewTokens: 1, stopStrings: [''] }), 'E_ARG', /stopStrings/);
  });

  it('never streams text a stop string may still begin with, and releases it when none completes', async () => {
    // A seed drew a stop string that also matched the output's first two words: the first chunk
    // streamed the first word, which then turned out to be part of the stop string.
    const target = new ToyLM({ vocabSize: V, seed: testSeed + 2 });
    const prompt = Int32Array.of(4, 5);
    const full = toyGreedy(target, Array.from(prompt), 12);
    const run = async (stop: string): Promise<{ chunks: string[]; text: string; tokens: number }> => {
      const dec = new SpeculativeDecoder({ target, speculator: new DraftModelSpeculator({ draft: target, k: 4 }) });
      const gen = generateText(dec, codec, prompt, { maxNewTokens: 12, stopStrings: [stop] });
      const chunks: string[] = [];
      for await (const c of gen) chunks.push(c.text);
      const r = await gen.result;
      return { chunks, text: r.text, tokens: r.tokens.length };
    };
    // The stop string is the output's first two words: nothing is ever shown.
    const first = await run(word(full[0]!) + word(full[1]!).trim());
    assert.strictEqual(first.text, '');
    assert.deepStrictEqual(first.chunks.filter((c) => c !== ''), []);
    assert.strictEqual(first.tokens, 2);
    // A stop string that starts like the first word but never completes ('{' is no word's letter):
    // the word is held back while it might, and every chunk adds up to the whole text at the end.
    const never = await run(word(full[0]!) + '{');
    assert.strictEqual(never.text, codec.decode(full));
    assert.strictEqual(never.chunks.join(''), never.text);
    assert.strictEqual(never.tokens, 12);
  });
});

// Two more tokenizer.json kinds beside the embedded models' WordPiece: GPT-2 style byte-level BPE
// (a character split over byte tokens) and Llama style Metaspace + byte fallback (a stripped
// leading space, fused bytes).
/** A generator that emits `ids` in chunks of 1..maxChunk tokens (sizes drawn from r), a loop turn apart. */
function replaySource(ids: readonly number[], r: () => number, maxChunk: number): TokenGenerator {
  return {
    generate: () =>
      streamGeneration(async (onTokens) => {
        for (let at = 0; at < ids.length; ) {
          const n = Math.min(ids.length - at, 1 + Math.floor(r() * maxChunk));
          onTokens(Int32Array.from(ids.slice(at, at + n)));
          at += n;
          await new Promise((res) => setImmediate(res));
        }
        return { tokens: Int32Array.from(ids), finishReason: 'length' as const, stats: undefined as never };
      }),
  };
}

describe('generateText: incremental decoding', () => {
  const tokenizers: [string, () => TextTokenizer, number][] = [
    ['embedded WordPiece', () => TextTokenizer.load(path.join(__dirname, '..', '..', 'models', 'default', 'target')) as TextTokenizer, 0],
    ['byte-level BPE', () => tokenizerFrom(byteLevelTokenizer()), 0],
    ['Metaspace + byte fallback', () => tokenizerFrom(metaspaceTokenizer()), 0],
  ];
  for (const [name, load] of tokenizers) {
    it(`${name}: the text of every prefix equals decoding the whole prefix`, () => {
      const tok = load();
      const decode = (ids: readonly number[]): string => tok.decode(ids, { skipSpecialTokens: true });
      const V = Math.max(...Array.from(tok.encode('the cat ing, é 日本 café.'))) + 1;
      const r = rng(testSeed + 31);
      let checked = 0;
      for (let run = 0; run < 6; run++) {
        // Runs 0-2 draw any id (bytes that break characters, special tokens); 3-5 the ids of text.
        const pool = run < 3 ? Array.from({ length: V }, (_, i) => i) : Array.from(tok.encode(' the cat 日本 café, ing. é'));
        const all: number[] = [];
        const inc = new IncrementalText(decode);
        while (all.length < 160) {
          const n = 1 + Math.floor(r() * 5);
          for (let k = 0; k < n; k++) all.push(pool[Math.floor(r() * pool.length)] as number);
          assert.strictEqual(inc.of(all), decode(all), `${name}, run ${run}, ${all.length} tokens: ${JSON.stringify(all)}`);
          checked++;
        }
      }
      assert.ok(checked > 100);
    });
  }

  it("with the clean-up of tokenization spaces (\" '.\" stays, \" ' \" becomes \"'\"), the streamed chunks add up to the result's text", async () => {
    // A Metaspace tokenizer whose pieces make the clean-up's patterns across token boundaries.
    const json = metaspaceTokenizer() as { model: { vocab: Record<string, number> } };
    const vocab = json.model.vocab;
    for (const w of ["'", "\u2581'", '\u2581n', "n't", "'t", "'s", '\u2581s', 's', 'm', 've', 're', '\u2581?', '!', '\u2581!', '\u2581,', '\u2581\u2581', 'x']) vocab[w] ??= Object.keys(vocab).length;
    const tok = tokenizerFrom(json);
    assert.strictEqual(tok.cleansUpSpaces, true, 'no config: the library default (on)');
    assert.strictEqual(tok.decode([vocab['\u2581cat'] as number, vocab['\u2581.'] as number]), 'cat.');
    assert.strictEqual(tok.decode([vocab['\u2581cat'] as number, vocab['\u2581.'] as number], { cleanUpSpaces: false }), 'cat .');
    const pool = Object.values(vocab).filter((id) => id > 2 + 256);
    const r = rng(testSeed + 41);
    let differs = 0;
    for (let run = 0; run < 40; run++) {
      const ids = Array.from({ length: 60 }, () => pool[Math.floor(r() * pool.length)] as number);
      // The clean-up is what the library does to the whole text.
      assert.strictEqual(cleanUpTokenizationSpaces(tok.decode(ids, { cleanUpSpaces: false })), tok.decode(ids));
      const gen = generateText(replaySource(ids, r, 3), tok, Int32Array.of(1), { maxNewTokens: ids.length });
      let streamed = '';
      for await (const c of gen) streamed += c.text;
      const text = (await gen.result).text;
      assert.strictEqual(text, tok.decode(ids, { skipSpecialTokens: true }));
      assert.strictEqual(streamed, text, `run ${run}: ${JSON.stringify(ids)}`);
      if (text !== tok.decode(ids, { skipSpecialTokens: true, cleanUpSpaces: false })) differs++;
    }
    assert.ok(differs > 30, `the clean-up changed ${differs} of 40 texts`);
    // The CLI's stream (specdec generate without --json) holds back the same text.
    for (let run = 0; run < 20; run++) {
      const ids = Array.from({ length: 60 }, () => pool[Math.floor(r() * pool.length)] as number);
      const writes: string[] = [];
      const stream = new TextStream((x) => tok.decode(x, { skipSpecialTokens: true, cleanUpSpaces: false }), tok.cleansUpSpaces, (t) => writes.push(t));
      for (let at = 0; at < ids.length; ) {
        const n = Math.min(ids.length - at, 1 + Math.floor(r() * 3));
        stream.push(ids.slice(at, at + n), at + n === ids.length);
        at += n;
      }
      assert.strictEqual(writes.join(''), tok.decode(ids, { skipSpecialTokens: true }), `CLI stream, run ${run}: ${JSON.stringify(ids)}`);
    }
    // settledText: for random texts over the patterns' characters, what it settles of each start of
    // a text is the start of the whole text's clean-up, and grows with it.
    const chars = " '.?!,ntsmvrex\uFFFD";
    for (let k = 0; k < 20000; k++) {
      let t = '';
      for (let n = 1 + Math.floor(r() * 14); n > 0; n--) t += chars[Math.floor(r() * chars.length)];
      const whole = cleanUpTokenizationSpaces(t);
      let prev = '';
      const incremental = new SettledText(true);
      for (let i = 0; i <= t.length; i++) {
        const s = settledText(t.slice(0, i), true);
        assert.ok(whole.startsWith(s) && s.startsWith(prev), `${JSON.stringify(t)} at ${i}: ${JSON.stringify(s)} of ${JSON.stringify(whole)}`);
        // The incremental form (the streams'): the same settled text, and the whole clean-up.
        const inc = incremental.of(t.slice(0, i));
        assert.deepStrictEqual(inc, { settled: s, full: cleanUpTokenizationSpaces(t.slice(0, i)) }, `${JSON.stringify(t)} at ${i}, incrementally`);
        prev = s;
      }
      // A text that does not extend the last one: started over.
      const other = t.split('').reverse().join('');
      assert.deepStrictEqual(incremental.of(other), { settled: settledText(other, true), full: cleanUpTokenizationSpaces(other) }, `${JSON.stringify(other)} after ${JSON.stringify(t)}`);
    }
  });

  it('a long stream decodes a bounded window per step, not the whole output (was quadratic)', async () => {
    const tok = TextTokenizer.load(path.join(__dirname, '..', '..', 'models', 'default', 'target')) as TextTokenizer;
    const ids = Array.from(tok.encode('once upon a time there was a little girl who liked to play in the park with her friends. '.repeat(20)));
    let decoded = 0;
    const counting: TextCodec = {
      encode: (t) => tok.encode(t),
      decode: (x, o) => ((decoded += x.length), tok.decode(x, o)),
    };
    const r = rng(testSeed + 37);
    const gen = generateText(replaySource(ids, r, 5), counting, Int32Array.of(1), { maxNewTokens: ids.length });
    let streamed = '';
    let steps = 0;
    for await (const c of gen) {
      streamed += c.text;
      steps++;
    }
    const whole = (await gen.result).text;
    assert.strictEqual(streamed, whole);
    const final = ids.length; // the result's one decode of everything
    const perStep = (decoded - final) / steps;
    assert.ok(perStep <= 2 * (IncrementalText.CONTEXT + 5) + 1, `${perStep.toFixed(1)} ids decoded per step over ${steps} steps of ${ids.length} tokens`);
    // A codec with no text at all (the server without a tokenizer): still a bounded window.
    let silent = 0;
    const none = new IncrementalText((x) => ((silent += x.length), ''));
    const all: number[] = [];
    for (let i = 0; i < 1000; i++) {
      all.push(i % 7);
      assert.strictEqual(none.of(all), '');
    }
    assert.ok(silent <= 1000 * (2 * IncrementalText.CONTEXT + 1), `${silent} ids decoded for 1000 one-token steps`);
  });
});

// generateText: streaming text chunks and stop strings over the speculative decoder.
import * as assert from 'assert';

import { SpeculativeDecoder } from '../lib/decoder';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { generateText, type TextCodec } from '../lib/text';
import { ToyLM, toyGreedy } from './fixtures/toy_lm';
import { assertThrowsCode, testSeed } from './helpers';

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
});

// A checkpoint with only a SentencePiece tokenizer.model (Llama 1/2, Vicuna) gets a tokenizer
// (lib/sentencepiece.ts -> TextTokenizer): checked against the sentencepiece library's own encodings
// and decodings of a model it trained as Llama's was (test/fixtures/spm/, scripts/spm_fixtures.py).
import * as assert from 'assert';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { SpeculativeDecoder } from '../lib/decoder';
import { LlamaModel } from '../lib/models/llama';
import { generateText } from '../lib/text';
import { TextTokenizer } from '../lib/tokenizer';
import { assertThrowsCode, rng, testSeed } from './helpers';

const fixtures = path.resolve(__dirname, '..', '..', 'test', 'fixtures', 'spm');
const bpeDir = path.join(fixtures, 'bpe');

interface Expected {
  vocab_size: number;
  cases: { text: string; ids: number[]; decoded: string }[];
}

/** A model directory holding `model` (bytes) as tokenizer.model and the given tokenizer_config.json. */
function dirWith(model: Buffer, config: Record<string, unknown>): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-spm-'));
  fs.writeFileSync(path.join(dir, 'tokenizer.model'), model);
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return dir;
}

describe('SentencePiece tokenizer.model (no tokenizer.json)', () => {
  const expected = JSON.parse(fs.readFileSync(path.join(bpeDir, 'expected.json'), 'utf8')) as Expected;

  it("encodes and decodes as the sentencepiece library does (spaces, tabs, newlines, digits, byte fallback for unseen characters)", () => {
    const t = TextTokenizer.load(bpeDir) as TextTokenizer;
    assert.ok(t, 'a tokenizer from tokenizer.model');
    for (const c of expected.cases) {
      assert.deepStrictEqual(Array.from(t.encode(c.text, { addSpecialTokens: false })), c.ids, `encode ${JSON.stringify(c.text)}`);
      assert.strictEqual(t.decode(c.ids), c.decoded, `decode ${JSON.stringify(c.text)}`);
    }
    // Byte fallback was exercised: some expected ids are byte pieces (<0xNN>).
    const bytePieces = new Set(Array.from({ length: 256 }, (_, b) => t.tokenToId(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)));
    assert.strictEqual(bytePieces.size, 256, 'the model has its 256 byte pieces');
    assert.ok(expected.cases.some((c) => c.ids.some((id) => bytePieces.has(id))), 'byte pieces among the expected ids');
  });

  it("adds BOS / EOS as tokenizer_config.json says (LlamaTokenizer's defaults: BOS only); special tokens written in the text are special (as transformers reads them)", () => {
    const model = fs.readFileSync(path.join(bpeDir, 'tokenizer.model'));
    const x = (expected.cases.find((c) => c.text === 'x') as Expected['cases'][number]).ids;
    const cases: [Record<string, unknown>, number[]][] = [
      [{}, [1, ...x]],
      [{ add_bos_token: true, add_eos_token: true }, [1, ...x, 2]],
      [{ add_bos_token: false }, x],
    ];
    for (const [config, want] of cases) {
      const dir = dirWith(model, config);
      try {
        assert.deepStrictEqual(Array.from((TextTokenizer.load(dir) as TextTokenizer).encode('x')), want, JSON.stringify(config));
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
    const t = TextTokenizer.load(bpeDir) as TextTokenizer;
    assert.ok(Array.from(t.encode('a</s>b', { addSpecialTokens: false })).includes(2), '</s> in the text is the EOS id');
    assert.strictEqual(t.tokenToId('</s>'), 2);
    assert.strictEqual(t.decode([1, ...x, 2], { skipSpecialTokens: true }), 'x');
  });

  it("legacy: false and add_prefix_space: false as transformers' converter reads them (no word start after a special token; no dummy prefix)", () => {
    const model = fs.readFileSync(path.join(bpeDir, 'tokenizer.model'));
    const load = (config: Record<string, unknown>): TextTokenizer => {
      const dir = dirWith(model, config);
      try {
        return TextTokenizer.load(dir) as TextTokenizer;
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    };
    const legacy = load({ legacy: true }), modern = load({ legacy: false }), bare = load({ add_prefix_space: false });
    const id = (piece: string): number => {
      const v = legacy.tokenToId(piece);
      assert.ok(v !== undefined, `piece ${piece} in the fixture's vocabulary`);
      return v as number;
    };
    const enc = (t: TextTokenizer, text: string): number[] => Array.from(t.encode(text, { addSpecialTokens: false }));
    // Text that neither starts with a space nor holds a special token: both read it as sentencepiece does.
    let compared = 0;
    for (const c of expected.cases) {
      if (c.text === '' || c.text.startsWith(' ') || c.text.startsWith('▁')) continue;
      assert.deepStrictEqual(enc(modern, c.text), c.ids, `legacy: false, ${JSON.stringify(c.text)}`);
      assert.strictEqual(modern.decode(c.ids), c.decoded);
      compared++;
    }
    assert.ok(compared >= 7, `${compared} cases compared`);
    // After a special token written in the text: legacy starts a word ("▁b"), non-legacy does not ("b").
    const a = enc(legacy, 'a');
    assert.deepStrictEqual(enc(legacy, 'a</s>b'), [...a, 2, ...enc(legacy, 'b')]);
    assert.deepStrictEqual(enc(legacy, 'b'), [id('▁b')]);
    assert.deepStrictEqual(enc(modern, 'a</s>b'), [...a, 2, id('b')]);
    // A text that starts with a space: legacy prepends another ("▁▁"), the Metaspace pre-tokenizer does not.
    assert.deepStrictEqual(enc(modern, ' b'), [id('▁b')]);
    assert.notDeepStrictEqual(enc(legacy, ' b'), [id('▁b')]);
    // No dummy prefix: "b" is the piece "b", and decoding strips no space.
    assert.deepStrictEqual(enc(bare, 'b'), [id('b')]);
    assert.strictEqual(bare.decode([id('▁b')]), ' b');
    assert.strictEqual(legacy.decode([id('▁b')]), 'b');
    assert.deepStrictEqual(Array.from(bare.encode('b')), [1, id('b')], 'BOS still added');
  });

  it('refuses models it does not convert, naming why and the fix; damaged files give coded errors, never another exception', () => {
    const uni = dirWith(fs.readFileSync(path.join(fixtures, 'unigram.model')), {});
    try {
      assertThrowsCode(() => TextTokenizer.load(uni), 'E_UNSUPPORTED', /tokenizer\.model: a Unigram model \(only BPE models, as Llama's, are read\).*save_pretrained/);
    } finally {
      fs.rmSync(uni, { recursive: true, force: true });
    }
    const model = fs.readFileSync(path.join(bpeDir, 'tokenizer.model'));
    const r = rng(testSeed);
    let loaded = 0, refused = 0;
    for (let k = 0; k < 150; k++) {
      let b = Buffer.from(model);
      if (k % 3 === 0) b = b.subarray(0, Math.floor(r() * b.length));
      else for (let j = 1 + Math.floor(r() * 3); j > 0; j--) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
      const dir = dirWith(b, {});
      try {
        const t = TextTokenizer.load(dir);
        if (t) {
          for (const c of expected.cases.slice(0, 4)) t.decode(t.encode(c.text));
          loaded++;
        }
      } catch (e) {
        assert.ok(['E_FORMAT', 'E_UNSUPPORTED'].includes((e as { code?: string }).code ?? ''), `mutant ${k}: ${(e as Error).stack}`);
        refused++;
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    }
    assert.ok(loaded > 10 && refused > 10, `loaded ${loaded}, refused ${refused}`);
  });
  it("streamed text (windows of ids, byte pieces split across steps, the dummy prefix's strip) adds up to the whole decode", async () => {
    // The fixture model in test/fixtures/torch has this tokenizer's 600 ids; sampled hot, its
    // outputs are full of byte pieces.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'specdec-spm-model-'));
    const twin = path.resolve(fixtures, '..', 'torch', 'llama-safetensors');
    for (const f of fs.readdirSync(twin)) fs.copyFileSync(path.join(twin, f), path.join(dir, f));
    for (const f of ['tokenizer.model', 'tokenizer_config.json']) fs.copyFileSync(path.join(bpeDir, f), path.join(dir, f));
    const model = await LlamaModel.load(dir, { device: 'cpu' });
    try {
      const tok = TextTokenizer.load(dir) as TextTokenizer;
      const bytePieces = new Set(Array.from({ length: 256 }, (_, b) => tok.tokenToId(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`)));
      let withBytes = 0;
      for (let s = 0; s < 12; s++) {
        const decoder = new SpeculativeDecoder({ target: model, sampling: { temperature: 1 + s / 8, seed: testSeed + s } });
        const g = generateText(decoder, tok, s % 2 ? 'once upon a time 日本' : 'tabs\tand 🚀', { maxNewTokens: 48, stopTokens: [] });
        let streamed = '';
        for await (const chunk of g) streamed += chunk.text;
        const r = await g.result;
        const ids = Array.from(r.tokens);
        if (ids.some((id) => bytePieces.has(id))) withBytes++;
        assert.strictEqual(r.text, tok.decode(ids, { skipSpecialTokens: true }), `seed ${s}: the result's text`);
        assert.strictEqual(streamed, r.text, `seed ${s}: the streamed chunks`);
      }
      assert.ok(withBytes > 0, 'some outputs hold byte pieces');
    } finally {
      model.dispose();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

// Constrained output (lib/grammar.ts): the JSON automaton against JSON.parse, its token masks against
// a token-by-token check, the tokenizers' token bytes, the mask op, and decoding with a grammar: every
// strategy emits plain constrained decoding's tokens (greedy; sampled with deterministic drafts), and
// an output that ends with a stop token is a JSON object.
import * as assert from 'assert';
import { Engine } from '../lib/engine/engine';
import type { GenerateResult } from '../lib/decoder';
import { GrammarCursor, JsonGrammar, TokenVocabulary, type GrammarState, type TokenGrammar } from '../lib/grammar';
import { plainGenerate } from '../lib/plain';
import { maskTokens } from '../lib/sampling';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleSpeculator } from '../lib/strategies/eagle';
import { HybridSpeculator } from '../lib/strategies/hybrid';
import { LookaheadSpeculator } from '../lib/strategies/lookahead';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { ProposalBatch, SpecSequence, Speculator } from '../lib/strategies/speculator';
import { Tensor } from '../lib/tensor';
import { TextTokenizer } from '../lib/tokenizer';
import { defaultModelPaths } from '../lib/default_models';
import { loadEmbeddedFamily, type EmbeddedFamily } from './fixtures/embedded_family';
import { byteLevelJsonTokenizer, byteLevelTokenizer, metaspaceTokenizer, tokenizerFrom } from './fixtures/tokenizers';
import { assertThrowsCode, describeCuda, rng, testSeed } from './helpers';
import { LlamaModel } from '../lib/models/llama';
import { MedusaHeads, MedusaSpeculator } from '../lib/strategies/medusa';

/** One token per byte: the automaton byte by byte. */
const BYTES = new TokenVocabulary(Array.from({ length: 256 }, (_, b) => Uint8Array.of(b)));

/** 'complete', 'prefix' (every byte accepted, not complete) or 'reject' for a text read byte by byte. */
function read(g: JsonGrammar, text: string | Uint8Array): 'complete' | 'prefix' | 'reject' {
  let s: GrammarState | undefined = g.start();
  for (const b of typeof text === 'string' ? Buffer.from(text, 'utf8') : text) {
    s = g.next(s, b);
    if (!s) return 'reject';
  }
  return g.accepts(s) ? 'complete' : 'prefix';
}

/** A random JSON value (nested up to `depth`): strings with escapes, control characters and non-ASCII, numbers of every form. */
function randomValue(r: () => number, depth: number): unknown {
  const k = Math.floor(r() * (depth > 0 ? 8 : 5));
  const str = (): string => {
    const alphabet = ['a', 'b', ' ', '"', '\\', '/', '\n', '\t', '\u0001', 'é', '日', '😀', '\u2028', 'x'];
    return Array.from({ length: Math.floor(r() * 6) }, () => alphabet[Math.floor(r() * alphabet.length)]).join('');
  };
  switch (k) {
    case 0:
      return str();
    case 1:
      return [0, -0.5, 12, 3.25e-7, -1e21, 1234567, 0.1][Math.floor(r() * 7)];
    case 2:
      return r() < 0.5;
    case 3:
      return null;
    case 4:
      return Math.floor(r() * 1000) - 500;
    case 5:
    case 6: {
      const o: Record<string, unknown> = {};
      for (let i = Math.floor(r() * 4); i > 0; i--) o[str()] = randomValue(r, depth - 1);
      return o;
    }
    default:
      return Array.from({ length: Math.floor(r() * 4) }, () => randomValue(r, depth - 1));
  }
}

/** A random JSON object as text: compact, or indented by 1-4 spaces or a tab. */
function randomObjectText(r: () => number): string {
  const v: Record<string, unknown> = {};
  for (let i = Math.floor(r() * 4); i > 0; i--) v[`k${i}`] = randomValue(r, 3);
  const indent = [0, 1, 2, 4, '\t'][Math.floor(r() * 5)] as number | string;
  return JSON.stringify(v, null, indent);
}

/** Whether JSON.parse reads `text` as an object (not an array or null). */
function parsesAsObject(text: string): boolean {
  try {
    const v: unknown = JSON.parse(text);
    return typeof v === 'object' && v !== null && !Array.isArray(v);
  } catch {
    return false;
  }
}

describe('JsonGrammar: the automaton', () => {
  it('reads JSON objects (random values, compact and indented) to the end, and no prefix of one is complete', () => {
    const r = rng(testSeed + 1);
    const g = new JsonGrammar(BYTES);
    for (let n = 0; n < 300; n++) {
      const text = randomObjectText(r);
      assert.strictEqual(read(g, text), 'complete', text);
      assert.strictEqual(read(g, `\n ${text} \n`), 'complete', 'whitespace around');
      // (The last byte closes the object: a proper prefix is never complete.)
      const bytes = Buffer.from(text, 'utf8');
      const cut = Math.floor(r() * bytes.length);
      assert.strictEqual(read(g, bytes.subarray(0, cut)), 'prefix', `${text} cut at byte ${cut}`);
    }
  });

  it('== JSON.parse on mutated texts (a byte deleted, inserted or replaced): complete exactly when it parses as an object', () => {
    const r = rng(testSeed + 2);
    const g = new JsonGrammar(BYTES);
    const alphabet = '{}[]":,.-+eE0123456789 \n\\tfnrua"';
    let parsed = 0, refused = 0;
    for (let n = 0; n < 3000; n++) {
      const base = randomObjectText(r);
      let t = base;
      for (let m = 1 + Math.floor(r() * 2); m > 0; m--) {
        const at = Math.floor(r() * (t.length + 1));
        const c = alphabet[Math.floor(r() * alphabet.length)] as string;
        const op = Math.floor(r() * 3);
        t = op === 0 ? t.slice(0, at) + t.slice(at + 1) : op === 1 ? t.slice(0, at) + c + t.slice(at) : t.slice(0, at) + c + t.slice(at + 1);
      }
      const want = parsesAsObject(t);
      const got = read(g, t);
      assert.strictEqual(got === 'complete', want, `${JSON.stringify(t)}: automaton ${got}, JSON.parse ${want ? 'an object' : 'fails'}`);
      if (want) parsed++;
      else refused++;
    }
    // Both sides exercised.
    assert.ok(parsed > 300 && refused > 300, `${parsed} parsed, ${refused} refused`);
  });

  it('bytes: UTF-8 in strings only, well formed; control characters only escaped', () => {
    const g = new JsonGrammar(BYTES);
    const u = (...b: number[]): Uint8Array => Uint8Array.from(b);
    const cat = (...parts: (string | Uint8Array)[]): Uint8Array => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : Buffer.from(p))));
    assert.strictEqual(read(g, '{"é日😀": "\\u00E9\\n\\/"}'), 'complete');
    assert.strictEqual(read(g, cat('{"a', u(0xc3), '"}')), 'reject', 'a truncated 2-byte sequence');
    assert.strictEqual(read(g, cat('{"a', u(0x80))), 'reject', 'a lone continuation byte');
    assert.strictEqual(read(g, cat('{"a', u(0xc0, 0x80))), 'reject', 'an overlong lead byte');
    assert.strictEqual(read(g, cat('{"a', u(0xff))), 'reject', '0xff');
    assert.strictEqual(read(g, cat('{', u(0xc3, 0xa9))), 'reject', 'non-ASCII outside a string');
    assert.strictEqual(read(g, cat('{"a', u(0x0a))), 'reject', 'a raw newline in a string');
    assert.strictEqual(read(g, '{"a": "\\x"}'), 'reject', 'an unknown escape');
    assert.strictEqual(read(g, '{"a": "\\u12G4"}'), 'reject', 'a bad hex digit');
  });

  it('limits: whitespace runs inside the text (not after it), nesting depth; root: value', () => {
    const g = new JsonGrammar(BYTES, { maxWhitespace: 4, maxDepth: 3 });
    assert.strictEqual(read(g, '{    "a":1}'), 'complete');
    assert.strictEqual(read(g, '{     "a":1}'), 'reject', '5 spaces');
    assert.strictEqual(read(g, `{"a":1}${' '.repeat(50)}`), 'complete', 'after the text');
    assert.strictEqual(read(g, '{"a":[{"b":1}]}'), 'complete');
    assert.strictEqual(read(g, '{"a":[{"b":[]}]}'), 'reject', 'depth 4');
    assert.strictEqual(read(g, '[1]'), 'reject', 'json_object: an object');
    const v = new JsonGrammar(BYTES, { root: 'value' });
    assert.strictEqual(read(v, '12'), 'complete', 'a number at the root ends where the output does');
    assert.strictEqual(read(v, '-'), 'prefix');
    assert.strictEqual(read(v, '[true, null]'), 'complete');
    assert.strictEqual(read(v, '"x" '), 'complete');
    assert.throws(() => new JsonGrammar(BYTES, { root: 'array' as 'value' }), /root/);
    assert.throws(() => new JsonGrammar(BYTES, { maxDepth: 0 }), /maxDepth/);
  });

  it('allowed() == the tokens next() accepts, state by state (multi-byte tokens, specials, stop tokens where complete; a 3-entry cache)', () => {
    const r = rng(testSeed + 3);
    const pieces = ['{', '}', '[', ']', '"', ':', ',', ' ', '\n', '{"', '":', '": "', '", "', '"}', '},', '}]', 'true', 'tr', 'ue}', 'null', 'false', '1', '0', '12', '.5', 'e-', '-', 'a', 'bc', '\\', '\\n', '\\u00', 'e9', 'é', '\u00e9"}', '\t\t'];
    const bytes: (Uint8Array | null)[] = [null, null];
    for (const p of pieces) bytes.push(Buffer.from(p, 'utf8'));
    bytes.push(Uint8Array.of(0xc3), Uint8Array.of(0xa9), new Uint8Array(0));
    // Every printable ASCII byte alone, as real vocabularies have them (no dead ends: 'tr' goes on as 'u', 'e').
    for (let c = 0x20; c < 0x7f; c++) bytes.push(Uint8Array.of(c));
    while (bytes.length < 200) bytes.push(Buffer.from(pieces[Math.floor(r() * pieces.length)]! + pieces[Math.floor(r() * pieces.length)]!, 'utf8'));
    const vocab = new TokenVocabulary(bytes);
    const g = new JsonGrammar(vocab, { cacheEntries: 3 });
    const stops = Int32Array.of(1);
    let checked = 0, completes = 0;
    for (let run = 0; run < 40; run++) {
      let s: GrammarState = g.start();
      for (let step = 0; step < 30; step++) {
        const allowed = g.allowed(s, stops);
        const ok: number[] = [];
        for (let t = 0; t < vocab.size; t++) {
          const bit = ((allowed[t >>> 5] as number) >>> (t & 31)) & 1;
          // (A complete text takes its stop token alone.)
          const want = g.complete(s) ? t === 1 : g.next(s, t) !== undefined || (t === 1 && g.accepts(s));
          assert.strictEqual(bit === 1, want, `state ${s.key}, token ${t} (${JSON.stringify(Buffer.from(bytes[t] ?? []).toString())})`);
          if (want && t !== 1) ok.push(t);
          checked++;
        }
        assert.strictEqual((allowed[0] as number) & 1, 0, 'a token without bytes is never allowed');
        if (g.accepts(s)) completes++;
        if (ok.length === 0) break;
        s = g.next(s, ok[Math.floor(r() * ok.length)] as number) as GrammarState;
      }
    }
    assert.ok(checked > 100000 && completes > 0, `${checked} checks, ${completes} complete states`);
  });

  it('a complete text takes its stop tokens alone (not the whitespace JSON allows after it); without stops, whitespace', () => {
    const g = new JsonGrammar(BYTES);
    let s = g.start();
    for (const b of Buffer.from('{"a": 1}')) s = g.next(s, b) as GrammarState;
    assert.ok(g.complete(s) && g.accepts(s));
    const withStops = g.allowed(s, Int32Array.of(7, 300));
    assert.deepStrictEqual(Array.from(withStops.keys()).filter((w) => withStops[w] !== 0), [0], 'token 7 alone (300 is outside the vocabulary)');
    assert.strictEqual(withStops[0], 1 << 7);
    const free = g.allowed(s);
    for (let t = 0; t < 256; t++) assert.strictEqual((((free[t >>> 5] as number) >>> (t & 31)) & 1) === 1, [0x20, 0x09, 0x0a, 0x0d].includes(t), `byte ${t}`);
    // Not complete: the stop tokens are not added.
    const open = g.next(g.start(), 0x7b) as GrammarState;
    assert.ok(!g.complete(open) && !g.accepts(open));
    assert.strictEqual(((g.allowed(open, Int32Array.of(7))[0] as number) >>> 7) & 1, 0);
  });

  it('GrammarCursor: states along a growing output, recomputed when the output changed', () => {
    const g = new JsonGrammar(BYTES);
    const c = new GrammarCursor(g);
    const out = Array.from(Buffer.from('{"a": 1}'));
    const prompt = [7, 7];
    const hist = [...prompt, ...out];
    assert.strictEqual(c.at(hist, 2, 2 + 3)?.key, (g.next(g.next(g.next(g.start(), 0x7b)!, 0x22)!, 0x61) as GrammarState).key);
    assert.ok(g.accepts(c.at(hist, 2, hist.length)!));
    // Another output of the same length: not the cached states.
    const other = [...prompt, ...Buffer.from('{"a": [')];
    assert.strictEqual(g.accepts(c.at(other, 2, other.length)!), false);
    assert.strictEqual(c.at([...prompt, 0x5b], 2, 3), undefined, "'[' is not an object");
  });
});

describe('TokenVocabulary.fromTokenizer: token bytes', () => {
  it('byte-level and SentencePiece tokenizers: the bytes of an encoding are the text; specials are not text; WordPiece is refused', () => {
    const texts = ['{"the cat": "日本é"}', ' the  cat\n\tmore ing'];
    const bl = tokenizerFrom(byteLevelTokenizer());
    const blBytes = TokenVocabulary.fromTokenizer(bl, 300);
    for (const t of texts) {
      const ids = bl.encode(t, { addSpecialTokens: false });
      assert.ok(ids.length < Buffer.byteLength(t), 'merges used');
      assert.strictEqual(Buffer.concat(Array.from(ids, (id) => blBytes.bytesOf(id) as Uint8Array)).toString('utf8'), t);
    }
    assert.strictEqual(blBytes.bytesOf(bl.tokenToId('<|end|>') as number), null, 'the special token');
    assert.strictEqual(blBytes.bytesOf(299), null, 'past the tokenizer');
    const sp = tokenizerFrom(metaspaceTokenizer());
    const spBytes = TokenVocabulary.fromTokenizer(sp, 300);
    for (const t of texts) {
      const ids = sp.encode(t, { addSpecialTokens: false });
      // (The normalizer prepends a space; decoding strips it.)
      assert.strictEqual(Buffer.concat(Array.from(ids, (id) => spBytes.bytesOf(id) as Uint8Array)).toString('utf8'), ` ${t.replace(/ /g, ' ')}`);
    }
    assert.strictEqual(spBytes.bytesOf(2), null, '</s>');
    const wp = TextTokenizer.load(defaultModelPaths().target) as TextTokenizer;
    assertThrowsCode(() => TokenVocabulary.fromTokenizer(wp, 325), 'E_UNSUPPORTED', /WordPiece.*joins tokens with spaces/);
  });
});

describe('maskTokens (samplingMaskTokens)', () => {
  it('keeps the allowed tokens of the listed rows, -inf elsewhere; other rows untouched; bad masks named', () => {
    const r = rng(testSeed + 4);
    const N = 4, V = 70, W = 3;
    const x = Float32Array.from({ length: N * V }, () => r() * 8 - 4);
    const t = Tensor.fromArray(x, 'f32', [N, V]);
    try {
      const m0 = Uint32Array.from({ length: W }, () => Math.floor(r() * 2 ** 32));
      const m1 = Uint32Array.of(1 << 5, 0, 1 << 5);  // tokens 5 and 69
      maskTokens(t, [2, 0], [m0, m1]);
      const y = t.toFloat32();
      for (let row = 0; row < N; row++)
        for (let v = 0; v < V; v++) {
          const m = row === 2 ? m0 : row === 0 ? m1 : undefined;
          const keep = !m || (((m[v >>> 5] as number) >>> (v & 31)) & 1) === 1;
          assert.strictEqual(y[row * V + v], keep ? x[row * V + v] : -Infinity, `row ${row} token ${v}`);
        }
      assertThrowsCode(() => maskTokens(t, [1], [Uint32Array.of(0, 0, 0xffffff00)]), 'E_ARG', /row 1 .*allows no token/);
      assertThrowsCode(() => maskTokens(t, [1], [Uint32Array.of(1, 0)]), 'E_ARG', /2 words for a vocabulary of 70/);
      assertThrowsCode(() => maskTokens(t, [4], [Uint32Array.of(1, 0, 0)]), 'E_ARG', /row 4 .*outside the 4 logits rows/);
    } finally {
      t.dispose();
    }
  });
});

describe('decoding with a grammar (embedded family, a byte-level JSON vocabulary over its ids)', function () {
  this.timeout(300000);
  let family: EmbeddedFamily;
  let grammar: JsonGrammar;
  let tokenizer: TextTokenizer;
  before(async () => {
    family = await loadEmbeddedFamily(16);
    tokenizer = tokenizerFrom(byteLevelJsonTokenizer(325));
    grammar = new JsonGrammar(TokenVocabulary.fromTokenizer(tokenizer, 325));
    closing = { logitBias: { [3 + 0x22]: 3, [3 + 0x7d]: 4, [tokenizer.tokenToId('"}') as number]: 4, 2: 30 } };
  });
  after(() => family.dispose());

  // Four fixed prompts (how many outputs complete depends on them: the sanity checks below count
  // on some) and two new each run (the equalities hold for any).
  const fixed = rng(7), r = rng(testSeed + 5);
  const prompts = Array.from({ length: 6 }, (_, i) => Int32Array.from({ length: 6 + i * 3 }, () => 3 + Math.floor((i < 4 ? fixed : r)() * 290)));
  // '"', '}' and '"}' raised: strings and objects close; '</s>' raised: a complete object ends there
  // (when the grammar lets it).
  let closing: { logitBias: Record<number, number> };

  const cases = (): [string, () => Speculator | undefined, boolean][] => [
    // [name, speculator, deterministic drafts (sampled: plain sampling's tokens)]
    ['plain', () => undefined, true],
    ['draft model k=4', () => new DraftModelSpeculator({ draft: family.draft, k: 4 }), false],
    ['draft model tree [3,2]', () => new DraftModelSpeculator({ draft: family.draft, treeBranching: [3, 2] }), true],
    ['Medusa small_8', () => new MedusaSpeculator({ heads: family.heads, choices: 'small_8' }), true],
    ['lookahead 4,3,4', () => new LookaheadSpeculator({ W: 4, N: 3, G: 4, sizing: 'fixed' }), true],
    ['prompt lookup', () => new PromptLookupSpeculator({ maxNgram: 3 }), true],
    ['hybrid (draft + prompt lookup)', () => new HybridSpeculator({ draft: family.draft, draftSpeculator: new PromptLookupSpeculator({ maxNgram: 2 }), k: 4 }), false],
    ['EAGLE top-4 depth 3', () => new EagleSpeculator({ head: family.eagle, topK: 4, depth: 3, totalTokens: 12 }), true],
  ];

  /** Every output token allowed where it was emitted; a 'stop' output a JSON object (its text before the EOS). */
  const checkOutputs = (res: readonly { tokens: Int32Array; finishReason: string }[], what: string): number => {
    let parsed = 0;
    res.forEach((o, i) => {
      let s: GrammarState | undefined = grammar.start();
      const toks = Array.from(o.tokens);
      toks.forEach((t, k) => {
        const last = k === toks.length - 1;
        if (last && t === 2) {
          assert.ok(grammar.accepts(s as GrammarState), `${what} #${i}: EOS before the JSON was complete`);
          return;
        }
        s = grammar.next(s as GrammarState, t);
        assert.ok(s, `${what} #${i}: token ${k} (${t}) not allowed`);
      });
      if (o.finishReason === 'stop') {
        const text = tokenizer.decode(toks, { skipSpecialTokens: true });
        assert.ok(parsesAsObject(text), `${what} #${i}: ${JSON.stringify(text)} is not a JSON object`);
        parsed++;
      }
    });
    return parsed;
  };

  it('plainGenerate: every token allowed, outputs that stop are JSON objects; without the grammar they are not', async () => {
    const { target } = family;
    const free = await plainGenerate(target, prompts, { maxNewTokens: 40 });
    assert.ok(free.tokens.some((t) => t.some((id) => id < 3 + 0x20 || id > 3 + 0x7e)), 'unconstrained: other tokens');
    let parsed = 0;
    for (const sampled of [false, true]) {
      const opts = { maxNewTokens: 60, grammar, penalties: closing, ...(sampled ? { temperature: 1, seed: 3 } : {}) };
      const res = await plainGenerate(target, prompts, opts);
      parsed += checkOutputs(res.tokens.map((tokens, i) => ({ tokens, finishReason: res.finishReasons[i]! })), `plain${sampled ? ', sampled' : ''}`);
    }
    assert.ok(parsed >= 3, `${parsed} outputs ended as JSON objects`);
  });

  it('every strategy, greedy and sampled: plain constrained decoding\'s tokens (sampled: with deterministic drafts); drafts are accepted', async () => {
    const { target } = family;
    const run = async (engine: Engine, sampled: boolean, pen: boolean): Promise<GenerateResult[]> =>
      Promise.all(prompts.map((p, i) => engine.submit(p, { maxNewTokens: 40, grammar, seed: 11, stream: i, ...(pen ? { penalties: closing } : {}), ...(sampled ? { sampling: { temperature: 0.8 } } : {}) })));
    for (const pen of [false, true]) {
      const want = { greedy: await run(new Engine({ model: target }), false, pen), sampled: await run(new Engine({ model: target }), true, pen) };
      for (const [name, make, deterministic] of cases()) {
        for (const sampled of [false, true]) {
          const what = `${name}${sampled ? ', sampled' : ''}${pen ? ', closing bias' : ''}`;
          const s = make();
          const engine = new Engine({ model: target, ...(s ? { speculator: s } : {}) });
          try {
            const got = await run(engine, sampled, pen);
            checkOutputs(got, what);
            if (!sampled || deterministic) {
              got.forEach((g, i) => assert.deepStrictEqual(Array.from(g.tokens), Array.from((sampled ? want.sampled : want.greedy)[i]!.tokens), `${what}: request ${i}`));
            }
            // (With the closing bias outputs end within a few tokens.)
            // (n-gram drafts find little to copy in these outputs.)
            if (s && !sampled && !pen && !/lookup|lookahead/.test(name)) {
              const accepted = got.reduce((a, g) => a + g.stats.acceptedDraftTokens, 0);
              assert.ok(accepted > 0, `${what}: no draft accepted`);
            }
          } finally {
            engine.close();
          }
        }
      }
      if (pen) assert.ok(want.greedy.some((g) => g.finishReason === 'stop'), 'some greedy outputs complete');
    }
    // The engine's plain decoding with the grammar is plainGenerate's.
    const plain = await plainGenerate(target, prompts, { maxNewTokens: 40, grammar });
    const engine = new Engine({ model: target });
    try {
      const got = await run(engine, false, false);
      got.forEach((g, i) => assert.deepStrictEqual(Array.from(g.tokens), Array.from(plain.tokens[i]!), `engine vs plainGenerate: request ${i}`));
    } finally {
      engine.close();
    }
    const kv = target.kvInfo();
    assert.strictEqual(kv.freePages, kv.totalPages);
  });

  it('a draft model drafts within the grammar (its rows masked as the target\'s): a chain\'s drafts all follow it, a tree\'s first children do', async () => {
    const { target, draft } = family;
    for (const [name, make, tree] of [
      ['chain k=4', () => new DraftModelSpeculator({ draft, k: 4 }), false],
      ['chain k=3, sampled', () => new DraftModelSpeculator({ draft, k: 3 }), false],
      ['tree [3,2]', () => new DraftModelSpeculator({ draft, treeBranching: [3, 2] }), true],
    ] as const) {
      const spec = make();
      let checked = 0;
      const propose = spec.propose.bind(spec);
      const check = (seqs: readonly SpecSequence[], batch: ProposalBatch): ProposalBatch => {
        batch.proposals.forEach((p, b) => {
          const s = seqs[b]!;
          // (A stop token where the JSON is complete ends the path: 'end'.)
          const states: (GrammarState | 'end' | undefined)[] = [s.grammar!.at(s.history, s.promptLength, s.history.length)];
          for (let i = 1; i < p.tokens.length; i++) {
            const up = states[p.parents[i]!];
            const t = p.tokens[i]!;
            if (up === 'end') {
              states.push('end');
              continue;
            }
            states.push(up && (grammar.next(up, t) ?? (s.stopTokens?.includes(t) && grammar.accepts(up) ? 'end' : undefined)));
            // (A tree's row may allow fewer tokens than its width: its other children are -inf picks, and their subtrees unchecked.)
            const first = p.parents.indexOf(p.parents[i]!) === i;
            if (up !== undefined && (!tree || first)) assert.ok(states[i], `${name}: draft node ${i} (token ${t}) leaves the grammar`);
            checked++;
          }
        });
        return batch;
      };
      spec.propose = (seqs, ctx) => {
        const r = propose(seqs, ctx);
        return r instanceof Promise ? r.then((x) => check(seqs, x)) : check(seqs, r as ProposalBatch);
      };
      const engine = new Engine({ model: target, speculator: spec });
      try {
        await Promise.all(prompts.map((p, i) => engine.submit(p, { maxNewTokens: 30, grammar, seed: 2, stream: i, ...(name.includes('sampled') ? { sampling: { temperature: 0.8 } } : {}) })));
      } finally {
        engine.close();
      }
      assert.ok(checked > 50, `${name}: ${checked} draft nodes checked`);
    }
  });

  it('logprobs with a grammar: the constrained distribution\'s (forbidden alternatives -inf), speculative equal to plain', async () => {
    const { target, draft } = family;
    const K = 4;
    const plain = await plainGenerate(target, prompts.slice(0, 3), { maxNewTokens: 20, grammar, logprobs: K });
    const engine = new Engine({ model: target, speculator: new DraftModelSpeculator({ draft, k: 3 }) });
    try {
      const got = await Promise.all(prompts.slice(0, 3).map((p) => engine.submit(p, { maxNewTokens: 20, grammar, logprobs: K })));
      got.forEach((g, i) => {
        const want = plain.logprobs![i]!;
        assert.deepStrictEqual(Array.from(g.tokens), Array.from(plain.tokens[i]!));
        assert.deepStrictEqual(Array.from(g.logprobs!.token), Array.from(want.token), `request ${i}: the tokens' log-probabilities`);
        assert.deepStrictEqual(Array.from(g.logprobs!.topIds), Array.from(want.topIds));
        // Each alternative with a finite log-probability is a token the grammar allows there.
        const cursor = new GrammarCursor(grammar);
        const toks = Array.from(g.tokens);
        for (let k = 0; k < toks.length; k++) {
          const st = cursor.at(toks, 0, k) as GrammarState;
          for (let j = 0; j < K; j++) {
            const id = g.logprobs!.topIds[k * K + j]!, lp = g.logprobs!.topLogprobs[k * K + j]!;
            const allowed = grammar.complete(st) ? id === 2 : grammar.next(st, id) !== undefined || (id === 2 && grammar.accepts(st));
            assert.strictEqual(Number.isFinite(lp), allowed, `request ${i}, token ${k}: alternative ${id} (log p ${lp})`);
          }
        }
      });
    } finally {
      engine.close();
    }
  });

  it('min_tokens with a grammar: whitespace after a complete object until min_tokens (the stop banned), then the stop; speculative == plain', async () => {
    const { target, draft } = family;
    const opts = { maxNewTokens: 48, grammar, penalties: closing, minTokens: 30 };
    const plain = await plainGenerate(target, prompts, opts);
    let padded = 0;
    plain.tokens.forEach((t, i) => {
      assert.ok(t.length >= 30 || plain.finishReasons[i] !== 'stop', `request ${i}: stopped at ${t.length} < min_tokens`);
      if (plain.finishReasons[i] !== 'stop') return;
      const text = tokenizer.decode(t, { skipSpecialTokens: true });
      assert.ok(parsesAsObject(text), text);
      if (/\s$/.test(text)) padded++;
    });
    assert.ok(padded > 0, 'some object completed before min_tokens and was padded with whitespace');
    const engine = new Engine({ model: target, speculator: new DraftModelSpeculator({ draft, k: 4 }) });
    try {
      const got = await Promise.all(prompts.map((p) => engine.submit(p, opts)));
      got.forEach((g, i) => assert.deepStrictEqual(Array.from(g.tokens), Array.from(plain.tokens[i]!), `request ${i}`));
    } finally {
      engine.close();
    }
  });

  it('a grammar over another vocabulary, or not a grammar, is refused at submit; one that allows nothing fails its request only', async () => {
    const { target } = family;
    const engine = new Engine({ model: target });
    try {
      await assert.rejects(engine.submit(prompts[0]!, { maxNewTokens: 4, grammar: new JsonGrammar(BYTES) }), /grammar: its vocabulary has 256 ids, the model's 325/);
      await assert.rejects(engine.submit(prompts[0]!, { maxNewTokens: 4, grammar: {} as TokenGrammar }), /expected a TokenGrammar/);
      // A vocabulary of 'a' only: nothing can begin an object.
      const noBrace = new JsonGrammar(new TokenVocabulary(Array.from({ length: 325 }, () => Uint8Array.of(0x61))));
      const bad = engine.submit(prompts[0]!, { maxNewTokens: 4, grammar: noBrace });
      const good = engine.submit(prompts[1]!, { maxNewTokens: 4, grammar });
      await assert.rejects(bad, /JSON object: no token of the vocabulary continues the output here/);
      assert.strictEqual((await good).tokens.length, 4);
      // A grammar whose allowed() and next() disagree: its request fails, saying so.
      const liar: TokenGrammar = { vocabSize: 325, name: 'liar', start: () => ({ key: 's' }), next: () => undefined, accepts: () => false, allowed: () => new Uint32Array(11).fill(0xffffffff) };
      await assert.rejects(engine.submit(prompts[0]!, { maxNewTokens: 4, grammar: liar }), /liar: the output left the grammar/);
    } finally {
      engine.close();
    }
  });
});

describeCuda('grammars', () => {
  it('on CUDA: maskTokens == the CPU op bit for bit; decoding with a JSON grammar: every token allowed, a draft model and Medusa emit plain constrained decoding\'s tokens', async function () {
    this.timeout(300000);
    const r = rng(testSeed + 6);
    const N = 5, V = 1000, W = (V + 31) >>> 5;
    const x = Float32Array.from({ length: N * V }, () => r() * 10 - 5);
    const masks = [Uint32Array.from({ length: W }, () => Math.floor(r() * 2 ** 32)), Uint32Array.from({ length: W }, (_, w) => (w === 7 ? 1 : 0))];
    const c = Tensor.fromArray(x, 'f32', [N, V]);
    const g = Tensor.fromArray(x, 'f32', [N, V], 'cuda');
    try {
      maskTokens(c, [3, 0], masks);
      maskTokens(g, [3, 0], masks);
      assert.deepStrictEqual(Array.from(g.toFloat32()), Array.from(c.toFloat32()));
    } finally {
      c.dispose();
      g.dispose();
    }
    const P = defaultModelPaths();
    const target = await LlamaModel.load(P.target, { device: 'cuda', maxSequences: 8 });
    const draft = await LlamaModel.load(P.draft, { device: 'cuda', maxSequences: 8 });
    const heads = MedusaHeads.load(P.medusa, { device: 'cuda' });
    try {
      const tokenizer = tokenizerFrom(byteLevelJsonTokenizer(325));
      const grammar = new JsonGrammar(TokenVocabulary.fromTokenizer(tokenizer, 325));
      const prompts = Array.from({ length: 4 }, (_, i) => Int32Array.from({ length: 5 + i * 3 }, () => 3 + Math.floor(r() * 290)));
      const run = async (s?: Speculator): Promise<GenerateResult[]> => {
        const engine = new Engine({ model: target, ...(s ? { speculator: s } : {}) });
        try {
          return await Promise.all(prompts.map((p) => engine.submit(p, { maxNewTokens: 32, grammar })));
        } finally {
          engine.close();
        }
      };
      const want = await run();
      for (const w of want) {
        const ids = Array.from(w.tokens).filter((t) => t !== 2);
        assert.ok(new GrammarCursor(grammar).at(ids, 0, ids.length), 'every token allowed');
      }
      for (const [name, s] of [['draft model k=4', new DraftModelSpeculator({ draft, k: 4 })], ['Medusa small_8', new MedusaSpeculator({ heads, choices: 'small_8' })]] as const) {
        const got = await run(s);
        got.forEach((g2, i) => assert.deepStrictEqual(Array.from(g2.tokens), Array.from(want[i]!.tokens), `${name}: request ${i}`));
      }
    } finally {
      heads.dispose();
      draft.dispose();
      target.dispose();
    }
  });
});

// JSON Schema as a grammar (lib/json_schema.ts): random schemas of the supported subset, their
// instances read to the end; random walks of the automaton (through its masks) end in texts that
// JSON.parse reads and a plain validator accepts; masks == next() token by token; unsupported
// keywords named with their path; decoding with a schema: plain constrained decoding's tokens with
// every strategy, outputs that stop valid for the schema.
import * as assert from 'assert';
import { Engine } from '../lib/engine/engine';
import { TokenVocabulary, type GrammarState } from '../lib/grammar';
import { JsonSchemaGrammar } from '../lib/json_schema';
import { plainGenerate } from '../lib/plain';
import { DraftModelSpeculator } from '../lib/strategies/draft_model';
import { EagleSpeculator } from '../lib/strategies/eagle';
import { MedusaSpeculator } from '../lib/strategies/medusa';
import { PromptLookupSpeculator } from '../lib/strategies/prompt_lookup';
import type { Speculator } from '../lib/strategies/speculator';
import { loadEmbeddedFamily, type EmbeddedFamily } from './fixtures/embedded_family';
import { byteLevelJsonTokenizer, tokenizerFrom } from './fixtures/tokenizers';
import { deref, valid, walkMasks, type Schema } from './fixtures/grammar_checks';
import { assertThrowsCode, rng, testSeed } from './helpers';

const BYTES = new TokenVocabulary(Array.from({ length: 256 }, (_, b) => Uint8Array.of(b)));

/** A random schema of the supported subset, nested up to `depth`. */
function randomSchema(r: () => number, depth: number): Schema {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const k = Math.floor(r() * (depth > 0 ? 12 : 6));
  switch (k) {
    case 11: {
      // A tagged union (tool calls' shape): objects told apart by their first property's value, maybe or null.
      const tagged = (tag: Schema): Schema => {
        const o = randomObject(r, depth - 1);
        const props = Object.fromEntries(Object.entries(o['properties'] as Record<string, Schema>).filter(([n]) => n !== 'kind'));
        return { ...o, properties: { kind: tag, ...props }, required: ['kind', ...(o['required'] as string[]).filter((n) => n !== 'kind')] };
      };
      const alts = [tagged({ const: 'a' }), tagged({ enum: ['b', 'ab'] }), ...(r() < 0.5 ? [tagged({ const: 'c', description: 'the third' })] : []), ...(r() < 0.5 ? [{ type: 'null' }] : [])];
      return { [r() < 0.5 ? 'anyOf' : 'oneOf']: alts };
    }
    case 9:
      // Pydantic's Optional: anyOf [X, null] (X not beginning with 'n').
      return { anyOf: [pick<Schema>([{ type: 'string' }, { type: 'integer' }, { type: 'array', items: { type: 'boolean' } }, randomObject(r, depth - 1)]), { type: 'null' }] };
    case 10:
      return { $ref: '#/$defs/Item' };
    case 0:
      return { type: 'string', description: 'a string' };
    case 1:
      return { type: pick(['number', 'integer']) };
    case 2:
      return { type: pick(['boolean', 'null', ['boolean', 'null'], ['string', 'null'], ['integer', 'string']]) };
    case 3:
      // (Values written as JSON.stringify writes them: no objects here, whose instances get indented.)
      return { enum: pick([['a', 'ab', 'b'], [1, 10, 2.5, -3], [true, null, 'x'], ['日本', 'é\n"q"']]) };
    case 4:
      return { const: pick(['fixed', 0, false]) };
    case 5:
      return { type: 'string' };
    case 6:
    case 7:
      return randomObject(r, depth - 1);
    default: {
      const minItems = Math.floor(r() * 2), maxItems = r() < 0.5 ? minItems + Math.floor(r() * 3) : undefined;
      return { type: 'array', items: randomSchema(r, depth - 1), minItems, ...(maxItems !== undefined ? { maxItems } : {}) };
    }
  }
}

function randomObject(r: () => number, depth: number): Schema {
  const props: Record<string, Schema> = {};
  const names = ['id', 'name', 'list', 'x_y', 'nested', 'é'];
  for (let n = Math.floor(r() * 4) + 1; n > 0; n--) props[names[Math.floor(r() * names.length)] as string] = randomSchema(r, depth);
  const required = Object.keys(props).filter(() => r() < 0.6);
  return { type: 'object', properties: props, required, ...(r() < 0.5 ? { additionalProperties: false } : {}) };
}

/** A random schema with a definition ($defs.Item, itself without references) that $refs in it name. */
function randomRootSchema(r: () => number, depth: number): Schema {
  // (Depth 0: the definition refers to nothing.)
  return { ...randomSchema(r, depth), $defs: { Item: r() < 0.5 ? randomSchema(r, 0) : { type: 'object', properties: { v: randomSchema(r, 0) }, required: ['v'] } } };
}

/** A random instance of `s` (properties in the schema's order, optional ones sometimes left out). */
function randomInstance(r: () => number, s0: Schema, root: Schema = s0): unknown {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const s = deref(s0, root);
  if (s['anyOf'] || s['oneOf']) return randomInstance(r, pick((s['anyOf'] ?? s['oneOf']) as Schema[]), root);
  if (s['const'] !== undefined) return s['const'];
  if (s['enum']) return pick(s['enum'] as unknown[]);
  const t = pick(Array.isArray(s['type']) ? (s['type'] as string[]) : [s['type'] as string]);
  switch (t) {
    case 'string':
      return pick(['', 'abc', 'a "quote"', 'tab\there', '日本', '\\', '\u0001']);
    case 'number':
      return pick([0, -1.5, 3e-7, 42, 1e21]);
    case 'integer':
      return pick([0, -7, 123456]);
    case 'boolean':
      return r() < 0.5;
    case 'null':
      return null;
    case 'object': {
      const o: Record<string, unknown> = {};
      const req = (s['required'] as string[] | undefined) ?? [];
      for (const [name, ps] of Object.entries(s['properties'] as Record<string, Schema>)) if (req.includes(name) || r() < 0.5) o[name] = randomInstance(r, ps, root);
      return o;
    }
    default: {
      const min = (s['minItems'] as number | undefined) ?? 0, max = (s['maxItems'] as number | undefined) ?? min + 3;
      return Array.from({ length: min + Math.floor(r() * (max - min + 1)) }, () => randomInstance(r, s['items'] as Schema, root));
    }
  }
}

function read(g: JsonSchemaGrammar, text: string): 'complete' | 'prefix' | 'reject' {
  let s: GrammarState | undefined = g.start();
  for (const b of Buffer.from(text, 'utf8')) {
    s = g.next(s, b);
    if (!s) return 'reject';
  }
  return g.accepts(s) ? 'complete' : 'prefix';
}

describe('JsonSchemaGrammar: the automaton', () => {
  it('random schemas: their instances (schema order, any indentation) are read to the end, no proper prefix of a container or string rejected', () => {
    const r = rng(testSeed + 11);
    let n = 0;
    for (let k = 0; k < 150; k++) {
      const schema = randomRootSchema(r, 3);
      const g = new JsonSchemaGrammar(BYTES, schema);
      for (let m = 0; m < 8; m++) {
        const v = randomInstance(r, schema);
        assert.ok(valid(v, schema), 'the generator');
        const text = JSON.stringify(v, null, [0, 2, '\t'][m % 3] as number | string);
        assert.strictEqual(read(g, text), 'complete', `${JSON.stringify(schema)}: ${text}`);
        const bytes = Buffer.from(text, 'utf8');
        const cut = Math.floor(r() * bytes.length);
        let s: GrammarState | undefined = g.start();
        for (let i = 0; i < cut && s; i++) s = g.next(s, bytes[i] as number);
        assert.ok(s, `${text}: a prefix of ${cut} bytes rejected`);
        n++;
      }
    }
    assert.ok(n === 1200);
  });

  it('random walks through the masks end in JSON that the schema validates; texts against the schema are refused', () => {
    const r = rng(testSeed + 12);
    let completed = 0;
    for (let k = 0; k < 150; k++) {
      const schema = randomRootSchema(r, 3);
      const g = new JsonSchemaGrammar(BYTES, schema, { maxWhitespace: 2 });
      for (let walk = 0; walk < 4; walk++) {
        const { text, complete } = walkMasks(g, r, 0.3, 300);
        if (!complete) continue;
        let v: unknown;
        assert.doesNotThrow(() => (v = JSON.parse(text)), `${JSON.stringify(schema)}: ${JSON.stringify(text)} does not parse`);
        assert.ok(valid(v, schema), `${JSON.stringify(schema)}: ${text} is not valid for it`);
        completed++;
      }
    }
    assert.ok(completed > 200, `${completed} walks completed`);
    const g = new JsonSchemaGrammar(BYTES, { type: 'object', properties: { a: { type: 'integer' }, b: { enum: ['x', 'xy'] }, c: { type: 'array', items: { type: 'boolean' }, minItems: 1, maxItems: 2 }, e: { enum: [{ k: [1, 2] }, [null], 10] } }, required: ['b'] });
    for (const [t, want] of [
      ['{"a": 1, "b": "xy", "c": [true]}', 'complete'],
      ['{"b": "x"}', 'complete'],
      ['{"b": "x", "a": 1}', 'reject'],  // the schema's order
      ['{"a": 1}', 'reject'],  // b required
      ['{"a": 1.5, "b": "x"}', 'reject'],  // integer
      ['{"b": "xyz"}', 'reject'],
      ['{"b": "x", "c": []}', 'reject'],  // minItems
      ['{"b": "x", "c": [true, false, true]}', 'reject'],  // maxItems
      ['{"b": "x", "d": 1}', 'reject'],  // not a property
      ['{"a": 1, "b": "x"} ', 'complete'],
      ['{"b": "x", "e": {"k":[1,2]}}', 'complete'],  // an object enum: as JSON.stringify writes it
      ['{"b": "x", "e": {"k": [1, 2]}}', 'reject'],
      ['{"b": "x", "e": [null]}', 'complete'],
      ['{"b": "x", "e": 10}', 'complete'],
      ['{"b": "x", "e": 1}', 'reject'],
    ] as const) assert.strictEqual(read(g, t), want, t);
    // A tagged union: the first property's value picks the alternative whose properties follow.
    const pet = { type: 'object', properties: { kind: { const: 'cat' }, lives: { type: 'integer' } }, required: ['kind', 'lives'] };
    const car = { type: 'object', properties: { kind: { enum: ['car', 'cart'] }, wheels: { type: 'integer' }, ev: { type: 'boolean' } }, required: ['kind'] };
    const u = new JsonSchemaGrammar(BYTES, { type: 'array', items: { anyOf: [pet, car, { type: 'string' }] } });
    for (const [t, want] of [
      ['[{"kind": "cat", "lives": 9}, {"kind": "car"}, {"kind": "cart", "wheels": 2, "ev": true}, "x"]', 'complete'],
      ['[{"kind": "cat"}]', 'reject'],  // the cat's lives are required
      ['[{"kind": "car", "lives": 9}]', 'reject'],  // a cat's property on a car
      ['[{"kind": "cat", "wheels": 4}]', 'reject'],
      ['[{"kind": "dog"}]', 'reject'],
      ['[{"lives": 9}]', 'reject'],  // the tag comes first
      ['[{"kind": "ca', 'prefix'],
    ] as const) assert.strictEqual(read(u, t), want, t);
    // Pydantic's discriminated union (Field(discriminator='pet_type')): oneOf of $refs, a discriminator hint, tags typed and const.
    const pydantic = {
      $defs: {
        Cat: { properties: { pet_type: { const: 'cat', title: 'Pet Type', type: 'string' }, meows: { title: 'Meows', type: 'integer' } }, required: ['pet_type', 'meows'], title: 'Cat', type: 'object' },
        Dog: { properties: { pet_type: { const: 'dog', title: 'Pet Type', type: 'string' }, barks: { title: 'Barks', type: 'number' } }, required: ['pet_type', 'barks'], title: 'Dog', type: 'object' },
      },
      properties: { pet: { discriminator: { mapping: { cat: '#/$defs/Cat', dog: '#/$defs/Dog' }, propertyName: 'pet_type' }, oneOf: [{ $ref: '#/$defs/Cat' }, { $ref: '#/$defs/Dog' }], title: 'Pet' } },
      required: ['pet'],
      title: 'Model',
      type: 'object',
    };
    const p = new JsonSchemaGrammar(BYTES, pydantic);
    assert.strictEqual(read(p, '{"pet": {"pet_type": "dog", "barks": 1.5}}'), 'complete');
    assert.strictEqual(read(p, '{"pet": {"pet_type": "cat", "meows": 3}}'), 'complete');
    assert.strictEqual(read(p, '{"pet": {"pet_type": "cat", "barks": 1.5}}'), 'reject');
    // Pydantic's shape: nested models in $defs, Optional fields as anyOf [X, null].
    const pyd = new JsonSchemaGrammar(BYTES, {
      $defs: { Pet: { type: 'object', properties: { kind: { enum: ['cat', 'dog'] }, age: { anyOf: [{ type: 'integer' }, { type: 'null' }], default: null } }, required: ['kind', 'age'], title: 'Pet' } },
      type: 'object',
      properties: { name: { type: 'string' }, pets: { type: 'array', items: { $ref: '#/$defs/Pet' } }, best: { anyOf: [{ $ref: '#/$defs/Pet' }, { type: 'null' }] } },
      required: ['name', 'pets', 'best'],
      title: 'Owner',
    });
    for (const [t, want] of [
      ['{"name": "A", "pets": [{"kind": "cat", "age": 3}, {"kind": "dog", "age": null}], "best": null}', 'complete'],
      ['{"name": "A", "pets": [], "best": {"kind": "dog", "age": 1}}', 'complete'],
      ['{"name": "A", "pets": [{"kind": "cow", "age": 3}], "best": null}', 'reject'],
      ['{"name": "A", "pets": [], "best": "dog"}', 'reject'],
      ['{"name": "A", "pets": [{"kind": "cat", "age": 1.5}], "best": null}', 'reject'],
    ] as const) assert.strictEqual(read(pyd, t), want, t);
  });

  it('allowed() == the tokens next() accepts, state by state (multi-byte tokens, stop tokens where complete)', () => {
    const r = rng(testSeed + 13);
    const pieces = ['{', '}', '[', ']', '"', ':', ',', ' ', '{"', '":', '": "', '", "', '"}', 'true', 'tr', 'ue', 'null', 'false', '1', '0', '12', '.5', 'e-', '-', 'a', 'ab', 'id', '"id"', 'name', '\\', '\\n', 'é', '日本', 'x"', '"x'];
    const bytes: (Uint8Array | null)[] = [null, null];
    for (const p of pieces) bytes.push(Buffer.from(p, 'utf8'));
    for (let c = 0x20; c < 0x7f; c++) bytes.push(Uint8Array.of(c));
    while (bytes.length < 220) bytes.push(Buffer.from(pieces[Math.floor(r() * pieces.length)]! + pieces[Math.floor(r() * pieces.length)]!, 'utf8'));
    const vocab = new TokenVocabulary(bytes);
    let checked = 0;
    for (let k = 0; k < 12; k++) {
      const schema = randomRootSchema(r, 2);
      const g = new JsonSchemaGrammar(vocab, schema, { cacheEntries: 4 });
      let s: GrammarState = g.start();
      for (let step = 0; step < 25; step++) {
        const allowed = g.allowed(s, Int32Array.of(1));
        const ok: number[] = [];
        for (let t = 0; t < vocab.size; t++) {
          const want = g.complete(s) ? t === 1 : g.next(s, t) !== undefined || (t === 1 && g.accepts(s));
          assert.strictEqual((((allowed[t >>> 5] as number) >>> (t & 31)) & 1) === 1, want, `${JSON.stringify(schema)} state ${s.key} token ${t}`);
          if (want && t !== 1) ok.push(t);
          checked++;
        }
        if (ok.length === 0) break;
        s = g.next(s, ok[Math.floor(r() * ok.length)] as number) as GrammarState;
      }
    }
    assert.ok(checked > 8000, `${checked} checks`);
  });

  it('unsupported schemas are refused with the keyword and its path', () => {
    const bad: [unknown, RegExp][] = [
      [{ type: 'string', pattern: '^a' }, /#: the keyword 'pattern' is not supported/],
      [{ type: 'object', properties: { a: { type: 'number', minimum: 0 } } }, /#\/properties\/a: the keyword 'minimum'/],
      [{ anyOf: [{ type: 'string' }, { enum: ['a', 1] }] }, /#\/anyOf: alternatives 0 and 1 can both begin with '"'/],
      [{ oneOf: [{ type: 'number' }, { type: 'integer' }] }, /#\/oneOf: alternatives 0 and 1 can both begin with '-'/],
      [{ anyOf: [{ type: 'string' }, { type: 'null' }], type: 'string' }, /'type' beside 'anyOf' is not supported/],
      [{ $ref: '#/$defs/x' }, /#\/\$ref: '#\/\$defs\/x' names nothing/],
      [{ $ref: 'https://example.com/s.json' }, /only references into this schema/],
      [{ $ref: '#/$defs/A', $defs: { A: { type: 'object', properties: { next: { $ref: '#/$defs/A' } } } } }, /#\/\$defs\/A\/properties\/next: a recursive \$ref \('#\/\$defs\/A'\) is not supported/],
      [{ $ref: '#/$defs/A', minLength: 2, $defs: { A: { type: 'string' } } }, /'minLength' beside '\$ref'/],
      [{ not: { type: 'string' } }, /'not' is not supported/],
      [{}, /accepting anything is not supported/],
      [true, /expected a schema object/],
      [{ type: 'object', additionalProperties: true }, /additionalProperties: only false/],
      [{ type: 'array' }, /an array without items/],
      [{ type: 'date' }, /#\/type: "date" is not one of/],
      [{ type: 'object', properties: { a: { type: 'string' } }, required: ['b'] }, /'b' is not among the properties/],
      [{ type: 'array', items: { type: 'string' }, minItems: 3, maxItems: 2 }, /minItems 3 > maxItems 2/],
      [{ enum: [] }, /enum: expected a non-empty array/],
      // Object alternatives that their first property's value does not tell apart.
      [{ anyOf: [{ type: 'object', properties: { k: { const: 'a' } }, required: ['k'] }, { type: 'object', properties: { k: { enum: ['b', 'a'] } }, required: ['k'] }] }, /#\/anyOf: 2 alternatives can begin with '\{' and two of them take the value "a"/],
      [{ anyOf: [{ type: 'object', properties: { k: { const: 'a' } } }, { type: 'object', properties: { k: { const: 'b' } }, required: ['k'] }] }, /their first properties are not one required key/],
      [{ anyOf: [{ type: 'object', properties: { k: { const: 'a' } }, required: ['k'] }, { type: 'object', properties: { j: { const: 'b' } }, required: ['j'] }] }, /their first properties are not one required key/],
      [{ anyOf: [{ type: 'object', properties: { k: { const: 1 } }, required: ['k'] }, { type: 'object', properties: { k: { const: 2 } }, required: ['k'] }] }, /the first property "k" is not a const or enum of strings in each/],
      [{ anyOf: [{ type: 'object', properties: { k: { const: 'a' } }, required: ['k'] }, { type: ['object', 'null'], properties: { k: { const: 'b' } }, required: ['k'] }] }, /one of them is not only an object/],
    ];
    for (const [schema, msg] of bad) assertThrowsCode(() => new JsonSchemaGrammar(BYTES, schema), 'E_ARG', msg);
  });
});

describe('decoding with a JSON schema (embedded family, a byte-level JSON vocabulary over its ids)', function () {
  this.timeout(300000);
  let family: EmbeddedFamily;
  let grammar: JsonSchemaGrammar;
  const schema = {
    type: 'object',
    properties: { name: { type: 'string' }, age: { type: 'integer' }, tags: { type: 'array', items: { enum: ['a', 'b', 'cd'] }, maxItems: 3 }, ok: { type: ['boolean', 'null'] } },
    required: ['name', 'ok'],
    additionalProperties: false,
  };
  let tokenizer: ReturnType<typeof tokenizerFrom>;
  before(async () => {
    family = await loadEmbeddedFamily(16);
    tokenizer = tokenizerFrom(byteLevelJsonTokenizer(325));
    grammar = new JsonSchemaGrammar(TokenVocabulary.fromTokenizer(tokenizer, 325), schema);
  });
  after(() => family.dispose());

  it('every strategy, greedy and sampled (deterministic drafts): plain constrained decoding\'s tokens; outputs that stop are valid for the schema', async () => {
    const { target } = family;
    // (Fixed prompts: how many outputs complete depends on them; the equalities hold for any.)
    const r = rng(25);
    const prompts = Array.from({ length: 5 }, (_, i) => Int32Array.from({ length: 5 + i * 2 }, () => 3 + Math.floor(r() * 290)));
    // '"' raised: strings close; EOS raised: a complete value ends there.
    const penalties = { logitBias: { [3 + 0x22]: 3, [3 + 0x2c]: 3, [3 + 0x7d]: 3, 2: 30 } };
    const plain = await plainGenerate(target, prompts, { maxNewTokens: 60, grammar, penalties });
    const cases: [string, () => Speculator | undefined, boolean][] = [
      ['engine, no speculator', () => undefined, true],
      ['draft model k=4', () => new DraftModelSpeculator({ draft: family.draft, k: 4 }), false],
      ['Medusa small_8', () => new MedusaSpeculator({ heads: family.heads, choices: 'small_8' }), true],
      ['prompt lookup', () => new PromptLookupSpeculator({ maxNgram: 3 }), true],
      ['EAGLE top-4 depth 3', () => new EagleSpeculator({ head: family.eagle, topK: 4, depth: 3, totalTokens: 12 }), true],
    ];
    let stopped = 0;
    for (const sampled of [false, true]) {
      let want: Int32Array[] | undefined = sampled ? undefined : plain.tokens;
      for (const [name, make, deterministic] of cases) {
        const s = make();
        const engine = new Engine({ model: target, ...(s ? { speculator: s } : {}) });
        try {
          const got = await Promise.all(prompts.map((p, i) => engine.submit(p, { maxNewTokens: 60, grammar, penalties, seed: 9, stream: i, ...(sampled ? { sampling: { temperature: 0.8 } } : {}) })));
          want ??= got.map((g) => g.tokens);
          got.forEach((g, i) => {
            if (!sampled || deterministic) assert.deepStrictEqual(Array.from(g.tokens), Array.from(want![i]!), `${name}${sampled ? ', sampled' : ''}: request ${i}`);
            if (g.finishReason === 'stop') {
              const text = tokenizer.decode(g.tokens, { skipSpecialTokens: true });
              assert.ok(valid(JSON.parse(text), schema), `${name}: ${text}`);
              stopped++;
            }
          });
        } finally {
          engine.close();
        }
      }
    }
    assert.ok(stopped >= 4, `${stopped} outputs ended valid`);
  });
});

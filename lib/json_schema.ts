// A JSON Schema as a grammar (OpenAI's response_format json_schema): the output is a JSON value
// that validates against the schema. A subset, compiled up front, every other keyword refused with
// its path (never silently ignored):
//   type (one or several of string, number, integer, boolean, null, object, array), enum, const,
//   properties, required, additionalProperties (false, or absent: only the listed properties are
//   written), items, minItems, maxItems; $ref into the schema ($defs, definitions: expanded, not
//   recursive); anyOf / oneOf whose alternatives begin differently (another type each: Pydantic's
//   Optional is anyOf [X, null]) or are objects told apart by their first property's const / enum
//   (tagged unions: tool calls); title, description, $schema and default are annotations.
// An object's properties are written in the schema's order (OpenAI's structured outputs write them
// so), each optional one may be left out, every required one is there; an enum or const value is
// written as JSON.stringify writes it. Every output is valid for the schema; not every valid text is
// an output (other key orders, other spellings of an enum's number).
//
// The automaton reads bytes as JsonGrammar's does (the same whitespace cap and string rules); its
// state is a stack of frames (the object or array being written, the next property it may take) and
// the value expected. Masks are a walk of the vocabulary's trie from a state, cached per state.
import {
  automatonMask, N_DOT, N_E, N_ESIGN, N_EXP, N_FRAC, N_INT, N_ZERO, NUMBER_END, numberByte, numberComplete, S_ESC, S_HEX, S_TEXT, S_UTF8, STRING_END, stringByte, TokenVocabulary,
  type GrammarState, type TokenGrammar, type TokenTrie,
} from './grammar';
import { codedError } from './models/config';

type JsonType = 'string' | 'number' | 'integer' | 'boolean' | 'null' | 'object' | 'array';
const TYPES: readonly JsonType[] = ['string', 'number', 'integer', 'boolean', 'null', 'object', 'array'];
// Annotations, and where definitions live ($ref reads them from the root).
// (discriminator: OpenAPI's hint beside a oneOf, as Pydantic writes discriminated unions; validity does not depend on it.)
const ANNOTATIONS = new Set(['title', 'description', '$schema', 'default', '$comment', 'examples', '$defs', 'definitions', '$id', 'discriminator']);
const KEYWORDS = ['type', 'enum', 'const', 'properties', 'required', 'additionalProperties', 'items', 'minItems', 'maxItems'];
const SUPPORTED = 'type, enum, const, properties, required, additionalProperties: false, items, minItems, maxItems, $ref (not recursive), anyOf / oneOf (alternatives that begin differently, or objects tagged by their first property)';

interface Prop {
  /** The key as written: JSON.stringify(name), quotes included (UTF-8). */
  readonly key: Uint8Array;
  readonly node: SchemaNode;
  readonly required: boolean;
}

interface SchemaNode {
  readonly id: number;
  readonly types: ReadonlySet<JsonType>;
  /** enum / const: the values as JSON.stringify writes them (UTF-8); the value is one of them. */
  readonly literals?: readonly Uint8Array[];
  readonly props: readonly Prop[];
  readonly items?: SchemaNode;
  readonly minItems: number;
  readonly maxItems: number;
  /** anyOf / oneOf: the alternatives, and for each first byte the one it begins (index + 1; 0: none). */
  readonly alts?: readonly SchemaNode[];
  readonly altOf?: Uint8Array;
  /** A tagged union (taggedUnion): the alternative each value of the first property picks (its JSON text). */
  readonly tags?: ReadonlyMap<string, SchemaNode>;
}

/** Where compile() is: the root (that $ref reads) and the references being expanded (no recursion). */
interface CompileContext {
  readonly root: unknown;
  readonly refs: readonly string[];
}

/** The bytes a value of n can begin with. */
function firstBytes(n: SchemaNode): Set<number> {
  const out = new Set<number>();
  if (n.alts) for (const a of n.alts) for (const b of firstBytes(a)) out.add(b);
  if (n.literals) for (const l of n.literals) out.add(l[0] as number);
  const add = (s: string): void => {
    for (const c of s) out.add(c.charCodeAt(0));
  };
  if (n.types.has('string')) add('"');
  if (n.types.has('number') || n.types.has('integer')) add('-0123456789');
  if (n.types.has('boolean')) add('tf');
  if (n.types.has('null')) add('n');
  if (n.types.has('object')) add('{');
  if (n.types.has('array')) add('[');
  return out;
}

/** The schema a local $ref ('#', '#/$defs/Name', any JSON pointer into the root) names. */
function resolveRef(root: unknown, ref: string, path: string): unknown {
  if (ref !== '#' && !ref.startsWith('#/')) throw codedError('E_ARG', `json schema ${path}/$ref: only references into this schema ('#/...') are supported, got '${ref}'`);
  let at: unknown = root;
  for (const raw of ref === '#' ? [] : ref.slice(2).split('/')) {
    const key = decodeURIComponent(raw).replace(/~1/g, '/').replace(/~0/g, '~');
    if (typeof at !== 'object' || at === null || !Object.prototype.hasOwnProperty.call(at, key)) throw codedError('E_ARG', `json schema ${path}/$ref: '${ref}' names nothing in the schema`);
    at = (at as Record<string, unknown>)[key];
  }
  return at;
}

const enc = new TextEncoder();
const TRUE_FALSE = [enc.encode('true'), enc.encode('false')];
const NULL = [enc.encode('null')];

/**
 * Object alternatives of an anyOf as one object (a tagged union, as OpenAI's tool calls and
 * Pydantic's discriminated unions write them): each alternative's first property is required, has
 * the same key in all, and string values (const / enum) no other alternative has; that value, once
 * written, picks the alternative whose other properties follow. E_ARG naming what does not fit.
 */
function taggedUnion(objects: readonly SchemaNode[], path: string, nodes: SchemaNode[]): SchemaNode {
  const why = (msg: string): Error => codedError('E_ARG', `json schema ${path}: ${objects.length} alternatives can begin with '{' and ${msg} (object alternatives must be told apart by their first property's const or enum of strings)`);
  const tags = new Map<string, SchemaNode>();
  const key = objects[0]?.props[0]?.key;
  for (const o of objects) {
    if (o.alts || o.literals || o.types.size !== 1) throw why('one of them is not only an object');
    const first = o.props[0];
    if (!first || !key || !first.required || Buffer.compare(first.key, key) !== 0) throw why('their first properties are not one required key');
    const lits = first.node.literals;
    if (!lits || first.node.alts || !lits.every((l) => l[0] === 0x22)) throw why(`the first property ${new TextDecoder().decode(key)} is not a const or enum of strings in each`);
    for (const l of lits) {
      const t = new TextDecoder().decode(l);
      if (tags.has(t)) throw why(`two of them take the value ${t}`);
      tags.set(t, o);
    }
  }
  const values: SchemaNode = { id: nodes.length, types: new Set(), literals: [...tags.keys()].map((t) => enc.encode(t)), props: [], minItems: 0, maxItems: Infinity };
  nodes.push(values);
  const node: SchemaNode = { id: nodes.length, types: new Set(['object']), props: [{ key: key as Uint8Array, node: values, required: true }], minItems: 0, maxItems: Infinity, tags };
  nodes.push(node);
  return node;
}

/** Compiles `schema` (JSON Schema, the subset above); E_ARG naming the path of anything else. */
function compile(schema: unknown, path: string, nodes: SchemaNode[], ctx: CompileContext): SchemaNode {
  if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) {
    throw codedError('E_ARG', `json schema ${path}: expected a schema object, got ${JSON.stringify(schema)} (a schema accepting anything is not supported: give its type)`);
  }
  const o = schema as Record<string, unknown>;
  const alone = (k: string): void => {
    for (const other of Object.keys(o)) if (other !== k && !ANNOTATIONS.has(other)) throw codedError('E_ARG', `json schema ${path}: '${other}' beside '${k}' is not supported`);
  };
  if (o['$ref'] !== undefined) {
    // A reference: the schema it names, expanded here (a reference to itself, directly or not, is refused).
    alone('$ref');
    const ref = o['$ref'];
    if (typeof ref !== 'string') throw codedError('E_ARG', `json schema ${path}/$ref: expected a string`);
    if (ctx.refs.includes(ref)) throw codedError('E_ARG', `json schema ${path}: a recursive $ref ('${ref}') is not supported`);
    return compile(resolveRef(ctx.root, ref, path), ref, nodes, { root: ctx.root, refs: [...ctx.refs, ref] });
  }
  for (const k of ['anyOf', 'oneOf'] as const) {
    if (o[k] === undefined) continue;
    alone(k);
    const list = o[k];
    if (!Array.isArray(list) || list.length === 0) throw codedError('E_ARG', `json schema ${path}/${k}: expected a non-empty array of schemas`);
    let alts = list.map((a, i) => compile(a, `${path}/${k}/${i}`, nodes, ctx));
    if (alts.length === 1) return alts[0] as SchemaNode;
    // Objects told apart by their first property's value (a tag) are one object whose tag picks the rest.
    const objects = alts.filter((a) => firstBytes(a).has(0x7b));
    if (objects.length > 1) {
      const tagged = taggedUnion(objects, `${path}/${k}`, nodes);
      alts = [...alts.filter((a) => !objects.includes(a)), tagged];
    }
    // The first byte of a value picks its alternative (so anyOf and oneOf mean the same here).
    const altOf = new Uint8Array(256);
    alts.forEach((a, i) => {
      for (const b of firstBytes(a)) {
        if ((altOf[b] as number) !== 0) throw codedError('E_ARG', `json schema ${path}/${k}: alternatives ${(altOf[b] as number) - 1} and ${i} can both begin with '${String.fromCharCode(b)}' (alternatives must begin differently: another type each, or objects told apart by their first property's const)`);
        altOf[b] = i + 1;
      }
    });
    const node: SchemaNode = { id: nodes.length, types: new Set(), props: [], minItems: 0, maxItems: Infinity, alts, altOf };
    nodes.push(node);
    return node;
  }
  for (const k of Object.keys(o)) {
    if (!ANNOTATIONS.has(k) && !KEYWORDS.includes(k)) throw codedError('E_ARG', `json schema ${path}: the keyword '${k}' is not supported (supported: ${SUPPORTED})`);
  }
  const id = nodes.length;
  let literals: Uint8Array[] | undefined;
  if (o['enum'] !== undefined || o['const'] !== undefined) {
    if (o['enum'] !== undefined && o['const'] !== undefined) throw codedError('E_ARG', `json schema ${path}: both enum and const`);
    const values = o['const'] !== undefined ? [o['const']] : o['enum'];
    if (!Array.isArray(values) || values.length === 0) throw codedError('E_ARG', `json schema ${path}/enum: expected a non-empty array of values`);
    literals = [...new Set(values.map((v) => JSON.stringify(v)))].map((s) => enc.encode(s));
  }
  const t = o['type'];
  const types = new Set<JsonType>();
  if (t === undefined) {
    if (!literals) throw codedError('E_ARG', `json schema ${path}: no type (nor enum or const): a schema accepting anything is not supported`);
  } else {
    for (const x of Array.isArray(t) ? t : [t]) {
      if (!TYPES.includes(x as JsonType)) throw codedError('E_ARG', `json schema ${path}/type: ${JSON.stringify(x)} is not one of ${TYPES.join(', ')}`);
      types.add(x as JsonType);
    }
    if (types.size === 0) throw codedError('E_ARG', `json schema ${path}/type: an empty list`);
  }
  const ap = o['additionalProperties'];
  if (ap !== undefined && ap !== false) throw codedError('E_ARG', `json schema ${path}/additionalProperties: only false is supported (the listed properties are the ones written)`);
  const count = (k: string): number | undefined => {
    const v = o[k];
    if (v === undefined) return undefined;
    if (!Number.isSafeInteger(v) || (v as number) < 0) throw codedError('E_ARG', `json schema ${path}/${k}: expected an integer >= 0, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const node: { -readonly [K in keyof SchemaNode]: SchemaNode[K] } = { id, types, props: [], minItems: count('minItems') ?? 0, maxItems: count('maxItems') ?? Infinity };
  if (literals) node.literals = literals;
  nodes.push(node);
  if (node.minItems > node.maxItems) throw codedError('E_ARG', `json schema ${path}: minItems ${node.minItems} > maxItems ${node.maxItems}`);
  const props = o['properties'];
  const required = o['required'] ?? [];
  if (!Array.isArray(required) || !required.every((r) => typeof r === 'string')) throw codedError('E_ARG', `json schema ${path}/required: expected an array of property names`);
  if (props !== undefined) {
    if (typeof props !== 'object' || props === null || Array.isArray(props)) throw codedError('E_ARG', `json schema ${path}/properties: expected an object`);
    node.props = Object.entries(props as Record<string, unknown>).map(([name, s]) => ({
      key: enc.encode(JSON.stringify(name)),
      node: compile(s, `${path}/properties/${name}`, nodes, ctx),
      required: required.includes(name),
    }));
  }
  for (const r of required as string[]) if (typeof props !== 'object' || props === null || !Object.prototype.hasOwnProperty.call(props, r)) throw codedError('E_ARG', `json schema ${path}/required: '${r}' is not among the properties`);
  if (types.has('array')) {
    if (o['items'] === undefined) throw codedError('E_ARG', `json schema ${path}: an array without items (a schema for its elements) is not supported`);
    node.items = compile(o['items'], `${path}/items`, nodes, ctx);
  } else if (o['items'] !== undefined) throw codedError('E_ARG', `json schema ${path}/items: only for type array`);
  return node;
}

/** The object or array being written: its schema, and (object) the index of the next property it may take / (array) its elements so far. */
class Frame {
  private k: string | undefined;
  constructor(
    readonly obj: boolean,
    readonly node: SchemaNode,
    readonly i: number,
    readonly parent: Frame | null,
  ) {}
  get key(): string {
    return (this.k ??= `${this.parent ? this.parent.key : ''}/${this.obj ? 'o' : 'a'}${this.node.id}.${this.i}`);
  }
}

// Modes (structural ones, <= M_DONE, take whitespace).
const M_VALUE = 0, M_OBJ_OPEN = 1, M_OBJ_NEXT = 2, M_COLON = 3, M_AFTER = 4, M_ARR_OPEN = 5, M_DONE = 6;
// A string: M_STR + a string sub-state (stringByte; aux its count). A number: M_MINUS + a number sub-state (numberByte).
const M_KEY = 7, M_LIT = 8, M_STR = 9, M_ESC = M_STR + S_ESC, M_HEX = M_STR + S_HEX, M_UTF8 = M_STR + S_UTF8;
const M_MINUS = 13, M_ZERO = M_MINUS + N_ZERO, M_INT = M_MINUS + N_INT, M_DOT = M_MINUS + N_DOT, M_FRAC = M_MINUS + N_FRAC, M_E = M_MINUS + N_E, M_ESIGN = M_MINUS + N_ESIGN, M_EXP = M_MINUS + N_EXP;

class SchemaState implements GrammarState {
  private k: string | undefined;
  constructor(
    readonly mode: number,
    /** Strings: hex digits / UTF-8 bytes still due; numbers: 1 = integer only. */
    readonly aux: number,
    readonly ws: number,
    readonly frame: Frame | null,
    /** The schema of the value expected (M_VALUE, M_COLON) or being read (M_STR .. M_EXP, M_KEY: the object's). */
    readonly cur: SchemaNode | null,
    /** M_KEY, M_LIT: the candidates still matching (their bytes) and the bytes matched. */
    readonly cands: readonly Uint8Array[] | null = null,
    readonly pos = 0,
  ) {}
  get key(): string {
    if (this.k === undefined) {
      const c = this.cands ? this.cands.map((x) => new TextDecoder().decode(x)).join('\u0000') : '';
      this.k = `${this.mode}:${this.aux}:${this.ws}:${this.cur ? this.cur.id : -1}:${this.pos}:${c}:${this.frame ? this.frame.key : ''}`;
    }
    return this.k;
  }
}

export interface JsonSchemaGrammarOptions {
  /** As JsonGrammarOptions.maxWhitespace. Default 32. */
  readonly maxWhitespace?: number;
  /** As JsonGrammarOptions.cacheEntries (a schema visits fewer states than free JSON). Default 512. */
  readonly cacheEntries?: number;
}

/** A JSON value valid for a JSON Schema (the subset in this file's comment), over a vocabulary. */
export class JsonSchemaGrammar implements TokenGrammar {
  readonly vocabSize: number;
  readonly name = 'JSON schema';
  private readonly root: SchemaNode;
  private readonly maxWs: number;
  /** @internal Masks kept (automatonMask). */
  readonly cacheEntries: number;
  private readonly cache = new Map<string, Uint32Array>();

  constructor(
    readonly vocabulary: TokenVocabulary,
    schema: unknown,
    options: JsonSchemaGrammarOptions = {},
  ) {
    if (!(vocabulary instanceof TokenVocabulary)) throw codedError('E_ARG', 'JsonSchemaGrammar: expected a TokenVocabulary');
    this.root = compile(schema, '#', [], { root: schema, refs: [] });
    const int = (v: number | undefined, name: string, dflt: number, min: number): number => {
      if (v === undefined) return dflt;
      if (!Number.isSafeInteger(v) || v < min) throw codedError('E_ARG', `JsonSchemaGrammar ${name}: expected an integer >= ${min}, got ${String(v)}`);
      return v;
    };
    this.maxWs = int(options.maxWhitespace, 'maxWhitespace', 32, 0);
    this.cacheEntries = int(options.cacheEntries, 'cacheEntries', 512, 1);
    this.vocabSize = vocabulary.size;
  }

  start(): GrammarState {
    return new SchemaState(M_VALUE, 0, 0, null, this.root);
  }

  next(state: GrammarState, token: number): GrammarState | undefined {
    const b = Number.isInteger(token) && token >= 0 && token < this.vocabSize ? this.vocabulary.bytesOf(token) : null;
    if (!b) return undefined;
    let s: SchemaState | undefined = state as SchemaState;
    for (let i = 0; i < b.length && s; i++) s = this.step(s, b[i] as number);
    return s;
  }

  complete(state: GrammarState): boolean {
    return (state as SchemaState).mode === M_DONE;
  }

  accepts(state: GrammarState): boolean {
    const s = state as SchemaState;
    if (s.mode === M_DONE) return true;
    if (s.frame !== null) return false;
    // A number or a literal at the root ends where the output does.
    if (s.mode >= M_MINUS && s.mode <= M_EXP && numberComplete(s.mode - M_MINUS)) return true;
    return s.mode === M_LIT && (s.cands as readonly Uint8Array[]).some((c) => c.length === s.pos);
  }

  allowed(state: GrammarState, stops?: ArrayLike<number>): Uint32Array {
    const s = state as SchemaState;
    return automatonMask(this, this.cache, s.key, s.mode === M_STR, (trie, out) => this.fill(0, s, out, trie), this.accepts(s), this.complete(s), stops);
  }

  private fill(node: number, s: SchemaState, out: Uint32Array, trie: TokenTrie): void {
    const { first, next, byte, tokHead, tokNext } = trie;
    for (let c = first[node] as number; c >= 0; c = next[c] as number) {
      const n = this.step(s, byte[c] as number);
      if (!n) continue;
      for (let t = tokHead[c] as number; t >= 0; t = tokNext[t] as number) out[t >>> 5] = (out[t >>> 5] as number) | (1 << (t & 31));
      if ((first[c] as number) >= 0) this.fill(c, n, out, trie);
    }
  }

  /** A value of `frame` is complete: what follows it. */
  private done(frame: Frame | null): SchemaState {
    if (frame === null) return new SchemaState(M_DONE, 0, 0, null, null);
    return new SchemaState(M_AFTER, 0, 0, frame.obj ? frame : new Frame(false, frame.node, frame.i + 1, frame.parent), null);
  }

  /** The keys an object may take next: from property i up to the first required one. */
  private keys(f: Frame): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let j = f.i; j < f.node.props.length; j++) {
      const p = f.node.props[j] as Prop;
      out.push(p.key);
      if (p.required) break;
    }
    return out;
  }

  /** Whether object frame f may close (no required property left). */
  private mayClose(f: Frame): boolean {
    for (let j = f.i; j < f.node.props.length; j++) if ((f.node.props[j] as Prop).required) return false;
    return true;
  }

  /** The first byte of a value of schema n inside `frame`. */
  private value(b: number, n: SchemaNode, frame: Frame | null): SchemaState | undefined {
    if (n.altOf) {
      const i = n.altOf[b] as number;
      return i > 0 ? this.value(b, (n.alts as readonly SchemaNode[])[i - 1] as SchemaNode, frame) : undefined;
    }
    const lits = n.literals ?? (b === 0x74 || b === 0x66 ? (n.types.has('boolean') ? TRUE_FALSE : undefined) : b === 0x6e && n.types.has('null') ? NULL : undefined);
    if (lits) {
      const c = lits.filter((x) => x[0] === b);
      if (c.length === 0) return undefined;
      return this.literalStep(new SchemaState(M_LIT, 0, 0, frame, n, c, 1), frame);
    }
    if (b === 0x7b && n.types.has('object')) return new SchemaState(M_OBJ_OPEN, 0, 0, new Frame(true, n, 0, frame), null);
    if (b === 0x5b && n.types.has('array')) return new SchemaState(M_ARR_OPEN, 0, 0, new Frame(false, n, 0, frame), null);
    if (b === 0x22 && n.types.has('string')) return new SchemaState(M_STR, 0, 0, frame, n);
    if (n.types.has('number') || n.types.has('integer')) {
      const int = n.types.has('number') ? 0 : 1;
      if (b === 0x2d) return new SchemaState(M_MINUS, int, 0, frame, n);
      if (b === 0x30) return new SchemaState(M_ZERO, int, 0, frame, n);
      if (b >= 0x31 && b <= 0x39) return new SchemaState(M_INT, int, 0, frame, n);
    }
    return undefined;
  }

  /** A literal whose candidates all matched `pos` bytes and one is complete with no other longer: done at once (a string enum's closing quote). */
  private literalStep(s: SchemaState, frame: Frame | null): SchemaState {
    const c = s.cands as readonly Uint8Array[];
    const whole = c[0] as Uint8Array;
    if (c.length !== 1 || whole.length !== s.pos || whole[0] !== 0x22) return s;
    // A tagged union's tag: the object goes on as the alternative it names.
    const alt = frame?.obj && frame.i === 1 ? frame.node.tags?.get(new TextDecoder().decode(whole)) : undefined;
    return this.done(alt ? new Frame(true, alt, 1, (frame as Frame).parent) : frame);
  }

  private step(s: SchemaState, b: number): SchemaState | undefined {
    const ws = b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
    if (s.mode <= M_DONE && ws) {
      if (s.mode !== M_DONE && s.ws >= this.maxWs) return undefined;
      return new SchemaState(s.mode, s.aux, s.ws + 1, s.frame, s.cur);
    }
    const f = s.frame;
    switch (s.mode) {
      case M_VALUE:
        return this.value(b, s.cur as SchemaNode, f);
      case M_ARR_OPEN: {
        const fr = f as Frame;
        if (b === 0x5d) return fr.node.minItems === 0 ? this.done(fr.parent) : undefined;
        return fr.node.maxItems > 0 ? this.value(b, fr.node.items as SchemaNode, fr) : undefined;
      }
      case M_OBJ_OPEN:
      case M_OBJ_NEXT: {
        if (b === 0x7d && s.mode === M_OBJ_OPEN) return this.mayClose(f as Frame) ? this.done((f as Frame).parent) : undefined;
        if (b !== 0x22) return undefined;
        const c = this.keys(f as Frame);
        return c.length > 0 ? new SchemaState(M_KEY, 0, 0, f, null, c, 1) : undefined;
      }
      case M_KEY: {
        const c = (s.cands as readonly Uint8Array[]).filter((x) => x[s.pos] === b);
        if (c.length === 0) return undefined;
        const whole = c.find((x) => x.length === s.pos + 1);
        if (!whole) return new SchemaState(M_KEY, 0, 0, f, null, c, s.pos + 1);
        // (Keys end with their quote: prefix-free, so the one complete is the key.)
        const fr = f as Frame;
        const j = fr.node.props.findIndex((p, k) => k >= fr.i && p.key === whole);
        return new SchemaState(M_COLON, 0, 0, new Frame(true, fr.node, j + 1, fr.parent), (fr.node.props[j] as Prop).node);
      }
      case M_COLON:
        return b === 0x3a ? new SchemaState(M_VALUE, 0, 0, f, s.cur) : undefined;
      case M_AFTER: {
        const fr = f as Frame;
        if (fr.obj) {
          if (b === 0x2c) return fr.i < fr.node.props.length ? new SchemaState(M_OBJ_NEXT, 0, 0, fr, null) : undefined;
          if (b === 0x7d) return this.mayClose(fr) ? this.done(fr.parent) : undefined;
          return undefined;
        }
        if (b === 0x2c) return fr.i < fr.node.maxItems ? new SchemaState(M_VALUE, 0, 0, fr, fr.node.items as SchemaNode) : undefined;
        if (b === 0x5d) return fr.i >= fr.node.minItems ? this.done(fr.parent) : undefined;
        return undefined;
      }
      case M_DONE:
        return undefined;
      case M_LIT: {
        const cands = s.cands as readonly Uint8Array[];
        const c = cands.filter((x) => x[s.pos] === b);
        if (c.length > 0) return this.literalStep(new SchemaState(M_LIT, 0, 0, f, s.cur, c, s.pos + 1), f);
        // A complete candidate (a number or a word) ends before this byte.
        return cands.some((x) => x.length === s.pos) ? this.after(f, b) : undefined;
      }
      case M_STR:
      case M_ESC:
      case M_HEX:
      case M_UTF8: {
        const r = stringByte(s.mode - M_STR, s.aux, b);
        if (r === STRING_END) return this.done(f);
        if (r === -1) return undefined;
        // (Text in text: the same state, no allocation for a string's bytes.)
        if (r === S_TEXT && s.mode === M_STR) return s;
        return new SchemaState(M_STR + (r & 3), r >> 2, 0, f, s.cur);
      }
      case M_MINUS:
      case M_ZERO:
      case M_INT:
      case M_DOT:
      case M_FRAC:
      case M_E:
      case M_ESIGN:
      case M_EXP: {
        // (aux 1: an integer.)
        const r = numberByte(s.mode - M_MINUS, b, s.aux === 1);
        if (r === NUMBER_END) return this.after(f, b);
        if (r === -1) return undefined;
        return r === s.mode - M_MINUS ? s : new SchemaState(M_MINUS + r, s.aux, 0, f, s.cur);
      }
      default:
        return undefined;
    }
  }

  /** A number or literal ended before byte b: b read as what follows the value. */
  private after(f: Frame | null, b: number): SchemaState | undefined {
    return this.step(this.done(f), b);
  }
}

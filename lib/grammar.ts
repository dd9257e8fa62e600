// Constrained output: a grammar over token ids says which tokens may follow an output so far, and
// every row the target picks or verifies from gets the others at -inf (samplingMaskTokens) before
// its penalties-aware pick. Speculation stays lossless: a draft token the grammar forbids has target
// probability 0, so verification rejects it (greedy: never the argmax; sampled: accepted with
// probability p / q = 0), and the output is plain constrained decoding's, token for token.
//
// JsonGrammar (OpenAI's response_format json_object) is a byte-level pushdown automaton for RFC 8259
// JSON, walked over a trie of the vocabulary's byte strings: a state's mask costs one walk of the
// branches the automaton accepts, and masks are cached per state (a JSON output revisits few states:
// "inside a string at depth 2 in an object" is one).
import type { TextTokenizer } from './tokenizer';
import { codedError } from './models/config';

/** A grammar's state after some output (opaque; equal keys: equal states). */
export interface GrammarState {
  readonly key: string;
}

/** What the engine asks of a constraint (JsonGrammar is one). */
export interface TokenGrammar {
  /** Ids 0 .. vocabSize - 1 (the model's vocabulary; ids past the tokenizer's are never allowed). */
  readonly vocabSize: number;
  /** For messages: e.g. 'JSON object'. */
  readonly name: string;
  /** The state before any output. */
  start(): GrammarState;
  /** The state after `token`, or undefined when the grammar does not allow it at `state`. */
  next(state: GrammarState, token: number): GrammarState | undefined;
  /** Whether the output may end at `state` (stop tokens are allowed there). */
  accepts(state: GrammarState): boolean;
  /**
   * Whether the text is complete at `state`: nothing but whitespace may follow, so that given stop
   * tokens allowed() allows them alone (the output ends there rather than pad to its budget).
   * Optional: a grammar without it has no such states.
   */
  complete?(state: GrammarState): boolean;
  /**
   * The tokens allowed at `state`: bit t % 32 of word t / 32 (ceil(vocabSize / 32) words), `stops`
   * added where the state accepts. Never empty (E_UNSUPPORTED when the vocabulary cannot continue).
   * The array may be shared: do not write it. The engine passes no stops to a row where they are
   * banned (min_tokens).
   */
  allowed(state: GrammarState, stops?: ArrayLike<number>): Uint32Array;
}

/** The byte strings of a vocabulary's tokens as they decode inside text (null: not text, e.g. a special token). */
export class TokenVocabulary {
  readonly size: number;
  private readonly bytes: readonly (Uint8Array | null)[];
  // The trie of the byte strings (node 0 the root): children as first-child / next-sibling lists,
  // and per node the tokens that end there (tokHead, tokNext chained by token id).
  private trie?: TokenTrie;
  private strings?: { plain: Uint32Array; rest: TokenTrie };

  /** `bytes[id]`: token id's bytes; null, undefined or empty: never allowed by a grammar. */
  constructor(bytes: readonly (Uint8Array | null | undefined)[]) {
    if (!Array.isArray(bytes)) throw codedError('E_ARG', 'TokenVocabulary: expected an array of Uint8Array | null, one per token id');
    this.bytes = bytes.map((b, i) => {
      if (b === null || b === undefined) return null;
      if (!(b instanceof Uint8Array)) throw codedError('E_ARG', `TokenVocabulary: entry ${i} is not a Uint8Array or null`);
      return b.length > 0 ? b : null;
    });
    this.size = bytes.length;
  }

  /** Token id's bytes (null: not text). */
  bytesOf(id: number): Uint8Array | null {
    return this.bytes[id] ?? null;
  }

  /**
   * The vocabulary of a tokenizer, `vocabSize` ids (the model's: ids past the tokenizer's are not
   * text). Byte-level (GPT-2, Llama 3, Qwen) and SentencePiece (Llama 2, Mistral: ▁ and <0xNN>
   * pieces) tokenizers; E_UNSUPPORTED for others (WordPiece and word-level decoders join tokens with
   * spaces: a token has no bytes of its own).
   */
  static fromTokenizer(tokenizer: TextTokenizer, vocabSize: number): TokenVocabulary {
    return new TokenVocabulary(tokenizer.tokenBytes(vocabSize));
  }

  /** @internal The trie of every token, built on first use. */
  get tree(): TokenTrie {
    return (this.trie ??= this.build(() => true));
  }

  /**
   * @internal Inside a JSON string (no escape or UTF-8 sequence pending) most tokens are plain text
   * that leaves the string as it is: printable ASCII but '"' and '\\', and whole UTF-8 sequences.
   * Their bits (`plain`), and a trie of the others (`rest`): a string state's mask is plain | a
   * walk of rest, a fraction of the whole trie.
   */
  get stringTokens(): { plain: Uint32Array; rest: TokenTrie } {
    if (this.strings) return this.strings;
    const plain = new Uint32Array((this.size + 31) >>> 5);
    this.bytes.forEach((b, id) => {
      if (b && plainInString(b)) plain[id >>> 5] = (plain[id >>> 5] as number) | (1 << (id & 31));
    });
    return (this.strings = { plain, rest: this.build((id) => (((plain[id >>> 5] as number) >>> (id & 31)) & 1) === 0) });
  }

  /** The trie of the tokens `keep` says (with bytes). */
  private build(keep: (id: number) => boolean): TokenTrie {
    // Build with maps, then flatten (children in byte order).
    const kids: Map<number, number>[] = [new Map()];
    const ends: number[][] = [[]];
    this.bytes.forEach((b, id) => {
      if (!b || !keep(id)) return;
      let n = 0;
      for (const c of b) {
        const m = kids[n] as Map<number, number>;
        let k = m.get(c);
        if (k === undefined) {
          k = kids.length;
          m.set(c, k);
          kids.push(new Map());
          ends.push([]);
        }
        n = k;
      }
      (ends[n] as number[]).push(id);
    });
    const N = kids.length;
    const first = new Int32Array(N).fill(-1), next = new Int32Array(N).fill(-1), byte = new Uint8Array(N), tokHead = new Int32Array(N).fill(-1);
    const tokNext = new Int32Array(this.size).fill(-1);
    for (let n = 0; n < N; n++) {
      const ch = [...(kids[n] as Map<number, number>).entries()].sort((a, b) => a[0] - b[0]);
      for (let i = ch.length - 1; i >= 0; i--) {
        const [c, k] = ch[i] as [number, number];
        byte[k] = c;
        next[k] = first[n] as number;
        first[n] = k;
      }
      const e = ends[n] as number[];
      for (let i = e.length - 1; i >= 0; i--) {
        tokNext[e[i] as number] = tokHead[n] as number;
        tokHead[n] = e[i] as number;
      }
    }
    return { first, next, byte, tokHead, tokNext };
  }
}

/** @internal A vocabulary's trie (TokenVocabulary.tree). */
export interface TokenTrie {
  readonly first: Int32Array;
  readonly next: Int32Array;
  readonly byte: Uint8Array;
  readonly tokHead: Int32Array;
  readonly tokNext: Int32Array;
}

// The inside of a JSON string and a JSON number, as both automata (JsonGrammar, JsonSchemaGrammar)
// read them: sub-states numbered in this order after each automaton's own first one.
/** @internal String sub-states: text, after '\\', in a \\u escape's hex digits, in a UTF-8 sequence. */
export const S_TEXT = 0, S_ESC = 1, S_HEX = 2, S_UTF8 = 3;
/** @internal stringByte(): the closing quote (the string ends); -1: the byte is refused. */
export const STRING_END = -2;

/**
 * @internal One byte inside a JSON string, from sub-state `kind` with `count` hex digits or UTF-8
 * continuation bytes still due: the next (kind | count << 2), STRING_END, or -1. Control bytes are
 * refused, escapes are JSON's, UTF-8 is well formed (no overlong two-byte leads, nothing past U+10FFFF).
 */
export function stringByte(kind: number, count: number, b: number): number {
  switch (kind) {
    case S_TEXT: {
      if (b === 0x22) return STRING_END;
      if (b === 0x5c) return S_ESC;
      if (b < 0x20) return -1;
      if (b < 0x80) return S_TEXT;
      const need = b >= 0xc2 && b <= 0xdf ? 1 : b >= 0xe0 && b <= 0xef ? 2 : b >= 0xf0 && b <= 0xf4 ? 3 : 0;
      return need > 0 ? S_UTF8 | (need << 2) : -1;
    }
    case S_UTF8:
      if ((b & 0xc0) !== 0x80) return -1;
      return count > 1 ? S_UTF8 | ((count - 1) << 2) : S_TEXT;
    case S_ESC:
      if (b === 0x75) return S_HEX | (4 << 2);
      return b === 0x22 || b === 0x5c || b === 0x2f || b === 0x62 || b === 0x66 || b === 0x6e || b === 0x72 || b === 0x74 ? S_TEXT : -1;
    case S_HEX:
      if (!((b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66))) return -1;
      return count > 1 ? S_HEX | ((count - 1) << 2) : S_TEXT;
    default:
      return -1;
  }
}

/** @internal Number sub-states: '-', '0', integer digits, '.', fraction digits, 'e', exponent sign, exponent digits. */
export const N_MINUS = 0, N_ZERO = 1, N_INT = 2, N_DOT = 3, N_FRAC = 4, N_E = 5, N_ESIGN = 6, N_EXP = 7;
/** @internal numberByte(): the number ended before this byte (read it as what follows a value). */
export const NUMBER_END = -2;

/** @internal One byte of a JSON number from sub-state `kind` (`integer`: no fraction or exponent): the next sub-state, NUMBER_END, or -1. */
export function numberByte(kind: number, b: number, integer: boolean): number {
  const digit = b >= 0x30 && b <= 0x39;
  switch (kind) {
    case N_MINUS:
      return b === 0x30 ? N_ZERO : digit ? N_INT : -1;
    case N_DOT:
      return digit ? N_FRAC : -1;
    case N_E:
      return b === 0x2b || b === 0x2d ? N_ESIGN : digit ? N_EXP : -1;
    case N_ESIGN:
      return digit ? N_EXP : -1;
    default:
      // N_ZERO, N_INT, N_FRAC, N_EXP: complete so far.
      if (digit && kind !== N_ZERO) return kind;
      if (b === 0x2e && !integer && (kind === N_ZERO || kind === N_INT)) return N_DOT;
      if ((b === 0x65 || b === 0x45) && !integer && kind !== N_EXP) return N_E;
      return NUMBER_END;
  }
}

/** @internal Whether number sub-state `kind` is a complete number. */
export function numberComplete(kind: number): boolean {
  return kind === N_ZERO || kind === N_INT || kind === N_FRAC || kind === N_EXP;
}

/** Whether bytes b, read inside a JSON string with nothing pending, leave it so (escapes and UTF-8 sequences whole). */
function plainInString(b: Uint8Array): boolean {
  let st = S_TEXT;
  for (const c of b) {
    st = stringByte(st & 3, st >> 2, c);
    if (st < 0) return false;
  }
  return st === S_TEXT;
}

export interface JsonGrammarOptions {
  /** What the output is: 'object' (OpenAI's json_object: a JSON object) or 'value' (any JSON value). Default 'object'. */
  readonly root?: 'object' | 'value';
  /**
   * The longest run of whitespace between tokens of the JSON text (not after it): a model that
   * would pad forever cannot. Default 32.
   */
  readonly maxWhitespace?: number;
  /** The deepest nesting of objects and arrays. Default 64. */
  readonly maxDepth?: number;
  /** Masks kept (LRU), each ceil(vocabSize / 32) words (16 KB at a 128k vocabulary: 32 MB at the default). Default 2048. */
  readonly cacheEntries?: number;
}

// Automaton modes. Structural: whitespace allowed (counted in ws).
const M_TOP = 0, M_VALUE = 1, M_ARR_FIRST = 2, M_OBJ_FIRST = 3, M_OBJ_KEY = 4, M_COLON = 5, M_AFTER = 6, M_DONE = 7;
// In a string: M_STR + a string sub-state (stringByte; aux bit 0: a key; aux >> 1: its count).
const M_STR = 8, M_ESC = M_STR + S_ESC, M_HEX = M_STR + S_HEX, M_UTF8 = M_STR + S_UTF8;
// Numbers: M_MINUS + a number sub-state (numberByte).
const M_MINUS = 12, M_ZERO = M_MINUS + N_ZERO, M_INT = M_MINUS + N_INT, M_DOT = M_MINUS + N_DOT, M_FRAC = M_MINUS + N_FRAC, M_E = M_MINUS + N_E, M_ESIGN = M_MINUS + N_ESIGN, M_EXP = M_MINUS + N_EXP;
// true / false / null (aux: literal * 8 + bytes matched).
const M_LIT = 20;
const LITERALS = ['true', 'false', 'null'].map((s) => Array.from(s, (c) => c.charCodeAt(0)));

class JsonState implements GrammarState {
  readonly key: string;
  constructor(
    readonly mode: number,
    readonly aux: number,
    readonly ws: number,
    readonly stack: string,
  ) {
    this.key = `${mode}:${aux}:${ws}:${stack}`;
  }
}

/**
 * @internal TokenGrammar.allowed of a byte automaton over g's vocabulary: state `key`'s mask from
 * `cache` (LRU, g.cacheEntries) or walked (`walk(trie, out)` sets the bits of the trie's tokens it
 * accepts; a state inside a string (`inString`: nothing pending) starts from the plain-text tokens
 * and walks only the others), then `stops` added where the state `accepts`. A `final` state (the
 * text is complete: only whitespace may follow) allows the stop tokens alone when there are any,
 * so that the output ends there rather than pad to its budget. Never empty.
 */
export function automatonMask(
  g: { readonly vocabulary: TokenVocabulary; readonly vocabSize: number; readonly cacheEntries: number; readonly name: string },
  cache: Map<string, Uint32Array>,
  key: string,
  inString: boolean,
  walk: (trie: TokenTrie, out: Uint32Array) => void,
  accepts: boolean,
  final: boolean,
  stops: ArrayLike<number> | undefined,
): Uint32Array {
  // m with the stop tokens' bits set (those in the vocabulary).
  const withStops = (m: Uint32Array, stops: ArrayLike<number>): Uint32Array => {
    for (let i = 0; i < stops.length; i++) {
      const t = stops[i] as number;
      if (t >= 0 && t < g.vocabSize) m[t >>> 5] = (m[t >>> 5] as number) | (1 << (t & 31));
    }
    return m;
  };
  if (final && stops !== undefined && stops.length > 0) {
    const only = withStops(new Uint32Array((g.vocabSize + 31) >>> 5), stops);
    if (only.some((w) => w !== 0)) return only;
  }
  let m = cache.get(key);
  if (m) {
    // Most recently used last.
    cache.delete(key);
    cache.set(key, m);
  } else {
    if (inString) {
      const { plain, rest } = g.vocabulary.stringTokens;
      m = Uint32Array.from(plain);
      walk(rest, m);
    } else {
      m = new Uint32Array((g.vocabSize + 31) >>> 5);
      walk(g.vocabulary.tree, m);
    }
    cache.set(key, m);
    if (cache.size > g.cacheEntries) cache.delete(cache.keys().next().value as string);
  }
  // (A copy: the cached mask stays without them.)
  if (accepts && stops !== undefined && stops.length > 0) m = withStops(Uint32Array.from(m), stops);
  if (!m.some((w) => w !== 0)) {
    throw codedError('E_UNSUPPORTED', `${g.name}: no token of the vocabulary continues the output here${accepts ? ' (the output is complete, and no stop token may end it)' : ''}`);
  }
  return m;
}

/** A JSON text over a vocabulary (response_format json_object; `root: 'value'` for any JSON value). */
export class JsonGrammar implements TokenGrammar {
  readonly vocabSize: number;
  readonly name: string;
  private readonly rootAny: boolean;
  private readonly maxWs: number;
  private readonly maxDepth: number;
  /** @internal Masks kept (automatonMask). */
  readonly cacheEntries: number;
  private readonly cache = new Map<string, Uint32Array>();
  // The result of one step() (scalars: no state object allocated per byte of a trie walk).
  private rMode = 0;
  private rAux = 0;
  private rWs = 0;
  private rStack = '';

  constructor(
    readonly vocabulary: TokenVocabulary,
    options: JsonGrammarOptions = {},
  ) {
    if (!(vocabulary instanceof TokenVocabulary)) throw codedError('E_ARG', 'JsonGrammar: expected a TokenVocabulary');
    if (typeof options !== 'object' || options === null) throw codedError('E_ARG', 'JsonGrammar options: expected an object');
    const root = options.root ?? 'object';
    if (root !== 'object' && root !== 'value') throw codedError('E_ARG', `JsonGrammar root: expected 'object' or 'value', got ${String(root)}`);
    const int = (v: number | undefined, name: string, dflt: number, min: number): number => {
      if (v === undefined) return dflt;
      if (!Number.isSafeInteger(v) || v < min) throw codedError('E_ARG', `JsonGrammar ${name}: expected an integer >= ${min}, got ${String(v)}`);
      return v;
    };
    this.rootAny = root === 'value';
    this.maxWs = int(options.maxWhitespace, 'maxWhitespace', 32, 0);
    this.maxDepth = int(options.maxDepth, 'maxDepth', 64, 1);
    this.cacheEntries = int(options.cacheEntries, 'cacheEntries', 2048, 1);
    this.vocabSize = vocabulary.size;
    this.name = this.rootAny ? 'JSON value' : 'JSON object';
  }

  start(): GrammarState {
    return new JsonState(M_TOP, 0, 0, '');
  }

  next(state: GrammarState, token: number): GrammarState | undefined {
    const b = Number.isInteger(token) && token >= 0 && token < this.vocabSize ? this.vocabulary.bytesOf(token) : null;
    if (!b) return undefined;
    const s = state as JsonState;
    let mode = s.mode, aux = s.aux, ws = s.ws, stack = s.stack;
    for (const c of b) {
      if (!this.step(mode, aux, ws, stack, c)) return undefined;
      mode = this.rMode;
      aux = this.rAux;
      ws = this.rWs;
      stack = this.rStack;
    }
    return new JsonState(mode, aux, ws, stack);
  }

  complete(state: GrammarState): boolean {
    return (state as JsonState).mode === M_DONE;
  }

  accepts(state: GrammarState): boolean {
    const s = state as JsonState;
    // (A number at the root ends where the output does.)
    return s.mode === M_DONE || (s.stack === '' && s.mode >= M_MINUS && s.mode <= M_EXP && numberComplete(s.mode - M_MINUS));
  }

  allowed(state: GrammarState, stops?: ArrayLike<number>): Uint32Array {
    const s = state as JsonState;
    return automatonMask(this, this.cache, s.key, s.mode === M_STR, (trie, out) => this.fill(0, s.mode, s.aux, s.ws, s.stack, out, trie), this.accepts(s), this.complete(s), stops);
  }

  /** Sets the bits of the tokens below trie node `node` that the automaton accepts from (mode, aux, ws, stack). */
  private fill(node: number, mode: number, aux: number, ws: number, stack: string, out: Uint32Array, trie: TokenTrie): void {
    const { first, next, byte, tokHead, tokNext } = trie;
    for (let c = first[node] as number; c >= 0; c = next[c] as number) {
      if (!this.step(mode, aux, ws, stack, byte[c] as number)) continue;
      const m = this.rMode, a = this.rAux, w = this.rWs, s = this.rStack;
      for (let t = tokHead[c] as number; t >= 0; t = tokNext[t] as number) out[t >>> 5] = (out[t >>> 5] as number) | (1 << (t & 31));
      if ((first[c] as number) >= 0) this.fill(c, m, a, w, s, out, trie);
    }
  }

  private set(mode: number, aux: number, ws: number, stack: string): true {
    this.rMode = mode;
    this.rAux = aux;
    this.rWs = ws;
    this.rStack = stack;
    return true;
  }

  /** After a value: the container's continuation, or done at the root. */
  private after(stack: string): number {
    return stack.length === 0 ? M_DONE : M_AFTER;
  }

  private open(stack: string, c: string, mode: number): boolean {
    return stack.length < this.maxDepth && this.set(mode, 0, 0, stack + c);
  }

  private close(stack: string): true {
    const s = stack.slice(0, -1);
    return this.set(this.after(s), 0, 0, s);
  }

  /** The first byte of a value. */
  private value(b: number, stack: string): boolean {
    if (b === 0x7b) return this.open(stack, '{', M_OBJ_FIRST);
    if (b === 0x5b) return this.open(stack, '[', M_ARR_FIRST);
    if (b === 0x22) return this.set(M_STR, 0, 0, stack);
    if (b === 0x2d) return this.set(M_MINUS, 0, 0, stack);
    if (b === 0x30) return this.set(M_ZERO, 0, 0, stack);
    if (b >= 0x31 && b <= 0x39) return this.set(M_INT, 0, 0, stack);
    if (b === 0x74) return this.set(M_LIT, 0 * 8 + 1, 0, stack);
    if (b === 0x66) return this.set(M_LIT, 1 * 8 + 1, 0, stack);
    if (b === 0x6e) return this.set(M_LIT, 2 * 8 + 1, 0, stack);
    return false;
  }

  /** One byte from (mode, aux, ws, stack): false when the automaton rejects it, else the new state in r*. */
  private step(mode: number, aux: number, ws: number, stack: string, b: number): boolean {
    for (;;) {
      if (mode <= M_DONE && (b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09)) {
        // (After the JSON text, whitespace is not capped: nothing else may follow but a stop token.)
        if (mode !== M_DONE && ws >= this.maxWs) return false;
        return this.set(mode, aux, ws + 1, stack);
      }
      switch (mode) {
        case M_TOP:
          return this.rootAny ? this.value(b, stack) : b === 0x7b && this.open(stack, '{', M_OBJ_FIRST);
        case M_ARR_FIRST:
          if (b === 0x5d) return this.close(stack);
          return this.value(b, stack);
        case M_VALUE:
          return this.value(b, stack);
        case M_OBJ_FIRST:
          if (b === 0x7d) return this.close(stack);
          return b === 0x22 && this.set(M_STR, 1, 0, stack);
        case M_OBJ_KEY:
          return b === 0x22 && this.set(M_STR, 1, 0, stack);
        case M_COLON:
          return b === 0x3a && this.set(M_VALUE, 0, 0, stack);
        case M_AFTER: {
          const top = stack.charCodeAt(stack.length - 1);
          if (b === 0x2c) return this.set(top === 0x7b ? M_OBJ_KEY : M_VALUE, 0, 0, stack);
          if ((b === 0x7d && top === 0x7b) || (b === 0x5d && top === 0x5b)) return this.close(stack);
          return false;
        }
        case M_DONE:
          return false;
        case M_STR:
        case M_ESC:
        case M_HEX:
        case M_UTF8: {
          const r = stringByte(mode - M_STR, aux >> 1, b);
          if (r === -1) return false;
          if (r === STRING_END) return this.set(aux & 1 ? M_COLON : this.after(stack), 0, 0, stack);
          return this.set(M_STR + (r & 3), (aux & 1) | ((r >> 2) << 1), 0, stack);
        }
        case M_MINUS:
        case M_ZERO:
        case M_INT:
        case M_DOT:
        case M_FRAC:
        case M_E:
        case M_ESIGN:
        case M_EXP: {
          const r = numberByte(mode - M_MINUS, b, false);
          if (r === -1) return false;
          if (r !== NUMBER_END) return this.set(M_MINUS + r, 0, 0, stack);
          // The number ends before this byte: read it as what follows a value.
          mode = this.after(stack);
          aux = 0;
          ws = 0;
          continue;
        }
        case M_LIT: {
          const lit = LITERALS[aux >> 3] as number[];
          const at = aux & 7;
          if (b !== lit[at]) return false;
          return at + 1 === lit.length ? this.set(this.after(stack), 0, 0, stack) : this.set(M_LIT, aux + 1, 0, stack);
        }
        default:
          return false;
      }
    }
  }
}

/**
 * A sequence's grammar state, kept along its output: the state after the output so far, extended
 * as the output grows by the new tokens only (recomputed from the start if the output changed
 * under it: another output, or an earlier length asked for).
 */
export class GrammarCursor {
  private state: GrammarState | undefined;
  private length = 0;
  private last = -1;

  constructor(readonly grammar: TokenGrammar) {
    this.state = grammar.start();
  }

  /** The state after `output[from .. length)` (undefined: the grammar rejected a token of it). */
  at(output: ArrayLike<number>, from: number, length: number): GrammarState | undefined {
    const n = length - from;
    // The output known so far unchanged? (Checked at its last token: outputs only grow, except a restarted request's.)
    if (n < this.length || (this.length > 0 && output[from + this.length - 1] !== this.last)) {
      this.state = this.grammar.start();
      this.length = 0;
    }
    for (let i = this.length; i < n; i++) {
      const t = output[from + i] as number;
      if (this.state !== undefined) this.state = this.grammar.next(this.state, t);
      this.last = t;
    }
    this.length = n;
    return this.state;
  }
}

/** A GenerateOptions.grammar: undefined, or a TokenGrammar over the model's `vocabSize` ids (E_ARG otherwise). */
export function checkGrammar(g: unknown, vocabSize: number): void {
  if (g === undefined) return;
  const o = g as Partial<TokenGrammar> | null;
  if (typeof o !== 'object' || o === null || typeof o.start !== 'function' || typeof o.next !== 'function' || typeof o.allowed !== 'function' || typeof o.accepts !== 'function') {
    throw codedError('E_ARG', 'grammar: expected a TokenGrammar (start, next, accepts, allowed), e.g. new JsonGrammar(TokenVocabulary.fromTokenizer(tokenizer, vocabSize))');
  }
  if (o.vocabSize !== vocabSize) throw codedError('E_ARG', `grammar: its vocabulary has ${String(o.vocabSize)} ids, the model's ${vocabSize}`);
}

/** What a draft's masks read of a sequence (an engine sequence has them; SpecSequence.grammar). */
export interface GrammarSequence {
  readonly history: readonly number[];
  readonly promptLength: number;
  readonly grammar?: GrammarCursor | undefined;
  readonly stopTokens?: Int32Array | undefined;
}

/**
 * A draft's mask for a row that continues seq's output with `path` (the tokens drafted below the
 * root), over the draft's first `vocab` ids: drafts that follow the grammar are drafts the target
 * can accept. Undefined where there is no grammar, the path leaves it, or it allows none of the
 * draft's ids (the row then drafts unmasked: such drafts are rejected, never emitted).
 */
export function draftMask(seq: GrammarSequence, path: readonly number[], vocab: number): Uint32Array | undefined {
  const c = seq.grammar;
  if (!c) return undefined;
  let s = c.at(seq.history, seq.promptLength, seq.history.length);
  for (let i = 0; i < path.length && s; i++) s = c.grammar.next(s, path[i] as number);
  if (!s) return undefined;
  let m: Uint32Array;
  try {
    m = c.grammar.allowed(s, seq.stopTokens);
  } catch {
    return undefined;  // (the target's rows say so: the engine fails the request)
  }
  const W = (vocab + 31) >>> 5;
  if (m.length === W && vocab % 32 === 0) return m;
  const out = new Uint32Array(W);
  out.set(m.subarray(0, W));
  if (vocab % 32 !== 0 && m.length >= W) out[W - 1] = (out[W - 1] as number) & ((1 << (vocab % 32)) - 1);
  return out.some((w) => w !== 0) ? out : undefined;
}

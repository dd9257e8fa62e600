// A corpus of finished requests' tokens for prompt lookup across requests (SuffixDecoding's idea:
// agents, tool calls and templated answers repeat what earlier requests wrote). For each n-gram
// length n in [1, maxNgram] an index maps an n-gram's hash to its most recent occurrence; a lookup
// finds the longest n-gram ending a history that occurred in the corpus and returns the tokens
// that followed it. Bounded: the oldest requests leave first (their index entries are dropped when
// found stale, and the index is rebuilt when stale ones could outnumber live tokens).
import { codedError } from '../errors';

/** A match: the n-gram length and the tokens that followed its most recent occurrence. */
export interface CorpusMatch {
  readonly n: number;
  readonly drafts: number[];
}

// Positions: document sequence number * 2^26 + offset (documents up to 64M tokens, 2^27 of them).
const OFFSET_BITS = 2 ** 26;

/** Hash of tokens[from, from + n) (two 32-bit FNV-style lanes into a safe integer; lookups verify the tokens). */
function ngramHash(tokens: ArrayLike<number>, from: number, n: number): number {
  let a = 0x811c9dc5 ^ n, b = 0x01000193 + n;
  for (let i = from; i < from + n; i++) {
    const t = tokens[i] as number;
    a = Math.imul(a ^ t, 16777619) >>> 0;
    b = Math.imul(b ^ (t + 0x9e3779b9), 2246822519) >>> 0;
  }
  return a * 2 ** 21 + (b >>> 11);
}

export class LookupCorpus {
  /** index[n - 1]: n-gram hash -> position of its most recent occurrence (its first token). */
  private readonly index: Map<number, number>[];
  private readonly docs = new Map<number, Int32Array>();
  private nextDoc = 0;
  private liveTokens = 0;
  /** Tokens of documents dropped since the index was last built (their entries may remain). */
  private droppedTokens = 0;

  constructor(
    /** Most tokens kept (the oldest documents leave first). */
    readonly maxTokens: number,
    readonly maxNgram: number,
  ) {
    if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) throw codedError('E_ARG', `lookup corpus: maxTokens must be an integer >= 1, got ${String(maxTokens)}`);
    if (!Number.isSafeInteger(maxNgram) || maxNgram < 1) throw codedError('E_ARG', `lookup corpus: maxNgram must be an integer >= 1, got ${String(maxNgram)}`);
    this.index = Array.from({ length: maxNgram }, () => new Map<number, number>());
  }

  /** Tokens held. */
  get size(): number {
    return this.liveTokens;
  }

  /** Adds a finished request's tokens (its prompt and output), the oldest documents leaving as needed. */
  add(tokens: ArrayLike<number>): void {
    const n = Math.min(tokens.length, this.maxTokens, OFFSET_BITS);
    if (n < 2) return;
    // (A document longer than the corpus keeps its end: what follows in later requests is likelier to repeat it.)
    const doc = Int32Array.from(Array.prototype.slice.call(tokens, tokens.length - n) as number[]);
    while (this.liveTokens + n > this.maxTokens) this.dropOldest();
    const id = this.nextDoc++;
    this.docs.set(id, doc);
    this.liveTokens += n;
    this.indexDoc(id, doc);
  }

  /**
   * The longest n-gram (maxNgram down to minNgram) ending `history` that occurred in the corpus,
   * and up to `k` tokens that followed its most recent occurrence that something follows;
   * undefined when none did.
   */
  lookup(history: ArrayLike<number>, minNgram: number, k: number): CorpusMatch | undefined {
    const L = history.length;
    for (let n = Math.min(this.maxNgram, L); n >= minNgram; n--) {
      const map = this.index[n - 1] as Map<number, number>;
      const h = ngramHash(history, L - n, n);
      const pos = map.get(h);
      if (pos === undefined) continue;
      const doc = this.docs.get(Math.floor(pos / OFFSET_BITS));
      const at = pos % OFFSET_BITS;
      if (!doc) {
        map.delete(h);
        continue;
      }
      let same = true;
      for (let i = 0; i < n && same; i++) same = doc[at + i] === history[L - n + i];
      if (!same) continue;
      return { n, drafts: Array.from(doc.subarray(at + n, Math.min(at + n + k, doc.length))) };
    }
    return undefined;
  }

  private indexDoc(id: number, doc: Int32Array): void {
    const base = id * OFFSET_BITS;
    // In order, so that a later occurrence overwrites an earlier one (the most recent is kept);
    // only occurrences that something follows.
    for (let at = 0; at < doc.length; at++) {
      for (let n = 1; n <= this.maxNgram && at + n < doc.length; n++) (this.index[n - 1] as Map<number, number>).set(ngramHash(doc, at, n), base + at);
    }
  }

  private dropOldest(): void {
    const first = this.docs.keys().next();
    if (first.done) return;
    const doc = this.docs.get(first.value) as Int32Array;
    this.docs.delete(first.value);
    this.liveTokens -= doc.length;
    this.droppedTokens += doc.length;
    // Stale entries could outnumber live ones: rebuild from the documents left.
    if (this.droppedTokens > Math.max(this.liveTokens, 4096)) {
      for (const m of this.index) m.clear();
      for (const [id, d] of this.docs) this.indexDoc(id, d);
      this.droppedTokens = 0;
    }
  }
}

// Log-probabilities of output tokens (OpenAI's `logprobs`): what a run records per emitted token,
// and the native op that computes them from the target's rows (ops::token_logprobs).
import { codedError } from './errors';
import { native } from './native';
import type { Tensor } from './tensor';

/** Most alternatives per token the `logprobs` option may ask for (OpenAI's top_logprobs limit). */
export const MAX_LOGPROBS = 20;

/**
 * Log-probabilities of output tokens: of each token under the target's distribution at its
 * position (the softmax of that row's logits after penalties and logit bias, at temperature 1,
 * before top-k / top-p / min-p), and the k most probable tokens there.
 */
export interface TokenLogprobs {
  /** Alternatives per token (the `logprobs` option). */
  readonly k: number;
  /** [n]: log p of each token. */
  readonly token: Float32Array;
  /** [n * k]: the k most probable tokens at each position, most probable first (lower id first on ties). */
  readonly topIds: Int32Array;
  /** [n * k]: their log p. */
  readonly topLogprobs: Float32Array;
}

/** Checks the `logprobs` option: undefined (none), or the alternatives per token, 0 .. MAX_LOGPROBS. */
export function checkLogprobs(k: unknown, name = 'logprobs'): number | undefined {
  if (k === undefined) return undefined;
  if (typeof k !== 'number' || !Number.isInteger(k) || k < 0 || k > MAX_LOGPROBS) throw codedError('E_ARG', `${name}: expected an integer in [0, ${MAX_LOGPROBS}], got ${String(k)}`);
  return k;
}

/**
 * The log-probabilities of tokens[m] on rows[m] of logits f32 [N, V] (a step's rows as penalized),
 * with each row's k most probable tokens: one native call, read back at once.
 */
export function tokenLogprobs(logits: Tensor, rows: Int32Array, tokens: Int32Array, k: number): TokenLogprobs {
  const b = native();
  if (!b.samplingTokenLogprobs) throw codedError('E_ARG', 'logprobs: this build of the addon has no tokenLogprobs op (rebuild it)');
  const r = b.samplingTokenLogprobs(logits, rows, tokens, k);
  return { k, token: r.token, topIds: r.topIds, topLogprobs: r.topLogprobs };
}

/** A run's log-probabilities, appended step by step in the order the tokens were emitted. */
export class LogprobsSink {
  private n = 0;
  private token = new Float32Array(16);
  private ids: Int32Array;
  private lps: Float32Array;

  constructor(readonly k: number) {
    this.ids = new Int32Array(16 * k);
    this.lps = new Float32Array(16 * k);
  }

  get length(): number {
    return this.n;
  }

  /** Appends entries [from, to) of `src` (computed with at least this sink's k alternatives). */
  push(src: TokenLogprobs, from = 0, to = src.token.length): void {
    const add = to - from, k = this.k;
    if (this.n + add > this.token.length) {
      const cap = Math.max(this.n + add, this.token.length * 2);
      this.token = grown(this.token, cap, this.n);
      this.ids = grown(this.ids, cap * k, this.n * k);
      this.lps = grown(this.lps, cap * k, this.n * k);
    }
    this.token.set(src.token.subarray(from, to), this.n);
    for (let m = from; m < to; m++, this.n++) {
      this.ids.set(src.topIds.subarray(m * src.k, m * src.k + k), this.n * k);
      this.lps.set(src.topLogprobs.subarray(m * src.k, m * src.k + k), this.n * k);
    }
  }

  /** Entries [from, to) as a copy. */
  slice(from: number, to: number): TokenLogprobs {
    const k = this.k;
    const t = Math.min(to, this.n), f = Math.min(from, t);
    return { k, token: this.token.slice(f, t), topIds: this.ids.slice(f * k, t * k), topLogprobs: this.lps.slice(f * k, t * k) };
  }
}

function grown<T extends Float32Array | Int32Array>(a: T, cap: number, keep: number): T {
  const b = new (a.constructor as new (n: number) => T)(cap);
  b.set(a.subarray(0, keep));
  return b;
}

/**
 * Most bytes of logits that one forward feeding prompt rows for their log-probabilities returns:
 * a long prompt is fed in as many forwards as that takes (2,048 rows of a 32k vocabulary; 523 of
 * Llama 3's 128,256). Mutable for tests.
 */
export const promptLogitsBudget = { bytes: 256 * 2 ** 20 };

/** A sequence recording its prompt's log-probabilities: its tokens, how many the model has, and where they go. */
export interface PromptRows {
  readonly tokens: ArrayLike<number>;
  readonly promptLength: number;
  /** Tokens the model has cached (the next forward's first position). */
  readonly committed: number;
  readonly sink: LogprobsSink;
}

/**
 * How many tokens the next forward feeds of each sequence still lacking prompt log-probabilities
 * (entry j is token j + 1's, read on the row of position j: rows 0 .. promptLength - 2), within
 * promptLogitsBudget in all; undefined entries take no part. Undefined when none lacks any.
 */
export function planPromptRows(items: readonly (PromptRows | undefined)[], vocabSize: number): Int32Array | undefined {
  const cap = Math.max(1, Math.floor(promptLogitsBudget.bytes / (4 * vocabSize)));
  const counts = new Int32Array(items.length);
  let rows = 0;
  items.forEach((it, i) => {
    if (!it || rows >= cap) return;
    const end = it.promptLength - 1;
    if (it.sink.length >= end) return;
    // (Rows cached before recording began would be missing: sequences record from position 0.)
    if (it.committed > it.sink.length) throw codedError('E_INTERNAL', `prompt log-probabilities: the model has ${it.committed} of the prompt's tokens but ${it.sink.length} were recorded`);
    const n = Math.min(end - it.committed, cap - rows);
    counts[i] = n;
    rows += n;
  });
  return rows > 0 ? counts : undefined;
}

/**
 * Records the prompt log-probabilities of a forward that fed counts[i] tokens of items[i] (from its
 * `committed`, as planned) with every row's logits (the raw ones: no penalties, at temperature 1),
 * item i's rows starting at firstRows[i]: one native call. Rows already recorded are skipped.
 */
export function recordPromptRows(logits: Tensor, firstRows: ArrayLike<number>, items: readonly (PromptRows | undefined)[], counts: Int32Array): void {
  const rows: number[] = [];
  const tokens: number[] = [];
  const took: number[] = [];
  let k = 0;
  items.forEach((it, i) => {
    const n = counts[i] as number;
    let t = 0;
    if (it && n > 0) {
      for (let r = 0; r < n; r++) {
        const p = it.committed + r;
        if (p < it.sink.length) continue;
        rows.push((firstRows[i] as number) + r);
        tokens.push(it.tokens[p + 1] as number);
        t++;
      }
      k = Math.max(k, it.sink.k);
    }
    took.push(t);
  });
  if (rows.length === 0) return;
  const lp = tokenLogprobs(logits, Int32Array.from(rows), Int32Array.from(tokens), k);
  let at = 0;
  items.forEach((it, i) => {
    const t = took[i] as number;
    if (it && t > 0) it.sink.push(lp, at, at + t);
    at += t;
  });
}

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

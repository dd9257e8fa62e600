// A run's log-probabilities as `specdec generate --json --logprobs N` writes them (its own module:
// generate.ts and strategy_flags.ts both write records, and import each other's types only).
import type { TokenLogprobs } from '../logprobs';

/** Per token: its id, its log-probability, and the N most probable tokens (JSON writes -infinity as null). */
export type LogprobsRecord = { id: number; logprob: number; top: { id: number; logprob: number }[] }[];

export function logprobsRecord(lp: TokenLogprobs, tokens: ArrayLike<number>): LogprobsRecord {
  return Array.from({ length: lp.token.length }, (_, i) => ({
    id: tokens[i] as number,
    logprob: lp.token[i] as number,
    top: Array.from({ length: lp.k }, (_, j) => ({ id: lp.topIds[i * lp.k + j] as number, logprob: lp.topLogprobs[i * lp.k + j] as number })),
  }));
}

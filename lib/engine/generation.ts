// A run's token chunks as an async iterable plus its final result (the shape of
// SpeculativeDecoder.generate and Engine.generate): chunks are queued as the run emits them, and
// leaving the for-await loop early aborts the run.
import type { GenerateResult, Generation } from '../decoder';
import { LogprobsSink, type TokenLogprobs } from '../logprobs';

/**
 * Starts `run(onTokens, signal)` and exposes it as a Generation. `signal` aborts when the caller's
 * `userSignal` does or when the iteration is left early; `.result` then rejects with AbortError.
 */
export function streamGeneration(
  run: (onTokens: (tokens: Int32Array, logprobs?: TokenLogprobs) => void, signal: AbortSignal) => Promise<GenerateResult>,
  userSignal?: AbortSignal,
): Generation {
  const queue: Int32Array[] = [];
  // The chunks' log-probabilities, in order (logprobsOf reads them).
  let logprobs: LogprobsSink | undefined;
  let wake: (() => void) | undefined;
  let finished = false;
  let failure: unknown;
  const stopper = new AbortController();
  if (userSignal) {
    if (userSignal.aborted) stopper.abort(userSignal.reason);
    else userSignal.addEventListener('abort', () => stopper.abort(userSignal.reason), { once: true });
  }
  const result = run((toks, lp) => {
    if (lp) (logprobs ??= new LogprobsSink(lp.k)).push(lp);
    queue.push(toks);
    wake?.();
  }, stopper.signal).then(
    (r) => {
      finished = true;
      wake?.();
      return r;
    },
    (e: unknown) => {
      finished = true;
      failure = e;
      wake?.();
      throw e;
    },
  );
  result.catch(() => undefined); // the iterator or the caller observes it
  return {
    result,
    logprobsOf: (from, to) => logprobs?.slice(from, to),
    async *[Symbol.asyncIterator](): AsyncGenerator<Int32Array> {
      try {
        for (;;) {
          const chunk = queue.shift();
          if (chunk) {
            yield chunk;
            continue;
          }
          if (finished) {
            if (failure !== undefined) throw failure;
            return;
          }
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
        }
      } finally {
        if (!finished) stopper.abort();
      }
    },
  };
}

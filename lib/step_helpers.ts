// Per-sequence helpers shared by the decoder, the engine and the strategies: RNG streams, the
// sampling config's logits processing, token picking after a prefill, and row gathering.
import { argmax, processLogits, sample, type SamplingOptions } from './sampling';
import type { SamplingConfig, SeqRng } from './strategies/speculator';
import type { Tensor } from './tensor';
import { Tensor as TensorFactory } from './tensor';

// ---- RNG streams -------------------------------------------------------------------------------
// As in lib/plain.ts: sequence i of a batch uses Philox key = seed and counter offsets
// (i << 32) | c, c = 0, 1, ... one per native sample/verify call (each call separates its own
// draws by node and purpose, so one offset step per call never reuses a counter).

export function makeRng(seed: number | bigint, index: number): SeqRng {
  let counter = 0n;
  const base = BigInt(index) << 32n;
  return {
    seed: BigInt(seed),
    next(): bigint {
      return base | counter++;
    },
  };
}

export function abortError(signal?: AbortSignal): Error {
  const reason: unknown = signal?.reason;
  if (reason instanceof Error && reason.name === 'AbortError') return reason;
  const e = new Error('the generation was aborted') as Error & { code: string };
  e.name = 'AbortError';
  e.code = 'ABORT_ERR';
  return e;
}

export function throwIfAborted(signal?: AbortSignal): void {
  if (signal?.aborted) throw abortError(signal);
}

/** The logits processing of a sampling config (applied alike to target p and draft q). */
export function samplingOptions(s: SamplingConfig): SamplingOptions {
  const o: { temperature: number; topK?: number; topP?: number; minP?: number } = { temperature: s.temperature };
  if (s.topK !== undefined) o.topK = s.topK;
  if (s.topP !== undefined) o.topP = s.topP;
  if (s.minP !== undefined) o.minP = s.minP;
  return o;
}

/** Greedy when undefined or temperature 0. */
export function isSampling(s: SamplingConfig | undefined): s is SamplingConfig {
  return s !== undefined && s.temperature > 0;
}

/**
 * Picks one token per row `rows[b]` of `logits`: argmax when greedy, else a draw from the processed
 * distribution with seqs[b]'s stream. Used for the token that follows a prefill.
 */
export function pickTokens(logits: Tensor, rows: Int32Array, sampling: SamplingConfig | undefined, rngs: readonly SeqRng[]): number[] {
  const out: number[] = [];
  for (let b = 0; b < rows.length; b++) {
    const r = rows[b] as number;
    const row = logits.rows(r, r + 1);
    try {
      if (!isSampling(sampling)) {
        const ids = argmax(row);
        out.push((ids.toInt32()[0] as number));
        ids.dispose();
      } else {
        const rng = rngs[b] as SeqRng;
        const probs = processLogits(row, samplingOptions(sampling));
        try {
          out.push(sample(probs, BigUint64Array.of(rng.seed), BigUint64Array.of(rng.next()))[0] as number);
        } finally {
          probs.dispose();
        }
      }
    } finally {
      row.dispose();
    }
  }
  return out;
}

/**
 * Row i of the result = row parts[i].row of parts[i].tensor ([*, width], one dtype), gathered on the
 * tensors' device without a trip through JavaScript (one native call); moved to `device` in one copy
 * when that differs (a draft model on another device than its target).
 */
export function gatherRows(parts: readonly { tensor: Tensor; row: number }[], width: number, device: Tensor['device']): Tensor {
  return TensorFactory.gatherRows(parts.map((p) => p.tensor), parts.map((p) => p.row), width, device);
}

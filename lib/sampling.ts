// Logits processing and sampling on the native backends (CPU reference or CUDA), with the
// semantics of cpp/core/spec_math.h: temperature -> top-k -> top-p -> min-p -> renormalise, and
// inverse-CDF sampling from a seeded counter-based RNG (Philox4x32-10).
import { argError, optionsArg } from './errors';
import { native } from './native';
import { asTensor, type Tensor } from './tensor';

export interface SamplingOptions {
  /** Softmax temperature, >= 0 (default 1). 0 = greedy: one-hot at the argmax (lowest index on ties). */
  temperature?: number;
  /** Keep the k most likely tokens (ties: lower index first); 0 = off (default). */
  topK?: number;
  /** Nucleus: keep the smallest most-likely set with mass >= topP (of what top-k kept); 1 = off (default). */
  topP?: number;
  /** Drop tokens with p < minP * max(p); 0 = off (default). */
  minP?: number;
}


/** Checks options and fills the defaults (throws E_ARG naming the bad option). */
export function resolveSamplingOptions(options: SamplingOptions = {}): Required<SamplingOptions> {
  optionsArg(options, 'sampling options', true);
  const { temperature = 1, topK = 0, topP = 1, minP = 0 } = options;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0)
    throw argError(`temperature: expected a finite number >= 0, got ${String(temperature)}`);
  if (typeof topK !== 'number' || !Number.isInteger(topK) || topK < 0 || topK > 2147483647)
    throw argError(`topK: expected an integer >= 0, got ${String(topK)}`);
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) throw argError(`topP: expected 0 < topP <= 1, got ${String(topP)}`);
  if (typeof minP !== 'number' || !(minP >= 0 && minP < 1)) throw argError(`minP: expected 0 <= minP < 1, got ${String(minP)}`);
  return { temperature, topK, topP, minP };
}

/** logits [N, V] f32|f16|bf16 -> probs f32 [N, V] on the same device (caller disposes). */
export function processLogits(logits: Tensor, options?: SamplingOptions): Tensor {
  return asTensor(native().samplingProcessLogits(logits, resolveSamplingOptions(options)));
}

/** Row-wise argmax (lowest index on ties; NaN never wins): logits [N, V] -> i32 [N]. */
export function argmax(logits: Tensor): Tensor {
  return asTensor(native().samplingArgmax(logits));
}

/** argmax(logits) read back as an Int32Array, in one call into the addon where it can. */
export function argmaxIds(logits: Tensor): Int32Array {
  const b = native();
  if (b.samplingArgmaxIds) return b.samplingArgmaxIds(logits);
  const ids = argmax(logits);
  try {
    return ids.toInt32();
  } finally {
    ids.dispose();
  }
}

/**
 * One token per row of probs f32 [N, V]: probabilities in [0, 1] (larger entries count as 1); a row
 * need not sum to 1 (e.g. a residual), it is renormalised exactly.
 * Row r draws from Philox(key = seeds[r], counter = offsets[r]): reproducible, independent of the
 * other rows. Advance a row's offset by 1 per call. A zero-probability token is never returned; a
 * row with no positive mass gives -1.
 */
export function sample(probs: Tensor, seeds: BigUint64Array, offsets: BigUint64Array): Int32Array {
  return native().samplingSample(probs, seeds, offsets);
}

/** The k largest entries per row, descending (ties: lower index first): values f32 [N, k], ids i32 [N, k]. */
export function topK(x: Tensor, k: number): { values: Tensor; ids: Tensor } {
  if (!Number.isInteger(k) || k < 1) throw argError(`k: expected an integer >= 1, got ${String(k)}`);
  const r = native().samplingTopK(x, k);
  return { values: asTensor(r.values), ids: asTensor(r.ids) };
}

/** Philox4x32-10 of one block (exposed for known-answer tests). */
export function philox4x32(counter: Uint32Array, key: Uint32Array): Uint32Array {
  return native().samplingPhilox4x32(counter, key);
}

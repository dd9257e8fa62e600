// Plain decoding as native chains: a greedy model with greedyChain runs several plain steps (forward
// of the last token, argmax, commit) in one call, the same tokens and cache as one step at a time
// without a return to JavaScript between them. On a small model that return is a sizeable part of
// a step (about 17 us of 97 on the embedded target, measured: bench/README.md). Used by
// plainGenerate and by the engine's plain steps (lib/spec_engine.ts).
import type { CausalLM } from './models/causal_lm';
import { knownForwardCost } from './cost_model';

/**
 * A plain chain runs for at most about this long, so that an abort, a new request or a consumer
 * waits little longer than for one step; a model whose forward takes longer than this runs chains
 * of one step (where the return to JavaScript costs little beside the forward).
 */
export const CHAIN_SECONDS = 0.002;
export const CHAIN_MAX_STEPS = 16;
/** Per model and batch size: seconds per step of its last plain chain. */
const chainStepSeconds = new WeakMap<CausalLM, Map<number, number>>();

/** A chain's seconds per step: the next chain's length, and the cost model's price of a plain step. */
export function observeChainStep(model: CausalLM, batch: number, seconds: number): void {
  let m = chainStepSeconds.get(model);
  if (!m) chainStepSeconds.set(model, (m = new Map()));
  m.set(batch, seconds);
  knownForwardCost(model)?.observeChainStep(batch, seconds);
}

/**
 * Steps of a plain chain for this batch size: CHAIN_SECONDS' worth (1 before anything is known). The
 * cost model's chained step comes first, as in wholeChains, so that a speculator's re-check after a
 * plain choice falls where a chain ends; the last chain's time where the curve has none (a pinned
 * curve). (From the last chain's time alone, the chains of a batch of 8 on the embedded family ran
 * 12-16 steps while the re-checks counted in the curve's, and cut chains of 1-5 steps between them.)
 */
export function chainLength(model: CausalLM, batch: number): number {
  const cost = knownForwardCost(model);
  const step = cost?.chainStep(batch) ?? chainStepSeconds.get(model)?.get(batch) ?? cost?.predict(batch);
  return step === undefined ? 1 : stepsPerChain(step);
}

/** Steps of `step` seconds a chain holds: CHAIN_SECONDS' worth, 1 to CHAIN_MAX_STEPS. */
function stepsPerChain(step: number): number {
  return Math.max(1, Math.min(CHAIN_MAX_STEPS, Math.floor(CHAIN_SECONDS / Math.max(step, 1e-9))));
}

/**
 * A speculator's re-check interval after a plain choice (`steps` plain steps after this one, which
 * is plain too) stretched to end where a plain chain of this batch ends: a chain cut short to
 * re-check costs a native call besides the re-check (on the embedded family a 56-step interval cut
 * every 57th token's chain, ~1% of a request). Never shorter (0: the chain this step opens);
 * unchanged where chains are one step.
 */
export function wholeChains(model: CausalLM | undefined, batch: number, steps: number): number {
  // The chain's length as the cost model sees it, as chainLength reads it first (never the last
  // chain's time, chainLength's fallback under a pinned curve): a choice then depends on the curve
  // alone, and a pinned curve gives the same choices whether the steps chain or not.
  const cost = model ? knownForwardCost(model) : undefined;
  const step = cost ? (cost.chainStep(batch) ?? cost.predict(batch)) : undefined;
  const len = step === undefined ? 1 : stepsPerChain(step);
  return len <= 1 || !(steps >= 0) ? steps : Math.ceil((steps + 1) / len) * len - 1;
}

// Batched verification of speculated token trees: one native launch per batch (CPU reference or
// CUDA), semantics in cpp/core/spec_math.h.
import { argError, optionsArg } from './errors';
import { native } from './native';
import type { DeviceTail, StagedVerify, VerifiedPaths } from './models/causal_lm';
import { nativeRowPenalties, type HistoryPenalties } from './sampling';
import type { HeadsOnAccepted } from './strategies/speculator';
import type { Tensor } from './tensor';

/**
 * - 'greedy': follow the target argmax down the tree (target = logits). Lossless for greedy decoding.
 * - 'rejection': exact speculative sampling (target = processed probs). With `draft` (the draft
 *   distribution each node's children were drawn from, in child order, without replacement):
 *   recursive rejection sampling (a chain is Leviathan/Chen). Without `draft`: deterministic drafts
 *   (q one-hot per child: Medusa top-k, lookahead, prompt lookup, EAGLE): each emitted token is
 *   drawn from its node's row at its own counter and the walk moves to the child holding it, so the
 *   tokens do not depend on the tree. The emitted tokens are distributed exactly as the target.
 * - 'typical': Medusa typical acceptance, p(x) > min(typicalThreshold, typicalAlpha * exp(-H(p))),
 *   longest accepted path. LOSSY: the output is NOT distributed as the target.
 */
export type VerifyMode = 'greedy' | 'rejection' | 'typical';

export interface VerifyInput {
  mode: VerifyMode;
  /** i32 [B + 1]: nodes of sequence b are nodeIndptr[b] .. nodeIndptr[b + 1]. */
  nodeIndptr: Int32Array;
  /**
   * i32 [N], local to each sequence: node 0 is the root (the last emitted token, not yet in the KV
   * cache) with parent -1; other nodes have a parent in [0, i); -2 marks a non-candidate node.
   */
  parents: Int32Array;
  /** i32 [N]: each node's token. */
  tokens: Int32Array;
  /** [N, V]: the target's distribution of each node's child. greedy: logits; otherwise processed probs f32. */
  target: Tensor;
  /** rejection only: f32 [N, V], the draft distribution node i's children were drawn from. */
  draft?: Tensor;
  /** u64 [B]: Philox key per sequence (rejection, typical). */
  seeds?: BigUint64Array;
  /**
   * u64 [B]: Philox counter per sequence; advance it by 1 per verify call -- by the emitted count
   * for rejection with deterministic drafts (no `draft`), whose k-th emitted token is drawn at
   * offset + k (so its tokens are those of lone-root calls at successive offsets, whatever the tree).
   */
  offsets?: BigUint64Array;
  /** Medusa posterior_threshold (epsilon), default 0.09. */
  typicalThreshold?: number;
  /** Medusa posterior_alpha (delta), default 0.3. */
  typicalAlpha?: number;
  /** Length of depthAccepts; default: the largest node count of a sequence minus 1. */
  maxDepth?: number;
  /**
   * Logits [R, V] on the target's device whose row argmaxes (lowest index on ties) come back with
   * the result, in the same read (lookahead's window update: one wait per step instead of two).
   */
  argmaxOf?: Tensor;
  /**
   * Per sequence: nodes 1.. take their tokens from a device chain's picks (DeviceTail; `tokens` holds
   * placeholders there, and the emitted tokens tell what they were).
   */
  tails?: readonly (DeviceTail | undefined)[];
  /**
   * Heads to run at each sequence's last accepted node, on `hidden` (the forward's final hidden
   * states [N, H]); their top-k ids come back in `headsTopK`, read with the result.
   */
  headsOnAccepted?: HeadsOnAccepted & {
    readonly hidden: Tensor;
    /** Penalties on the heads' logits before their top-k, sequence b's row continuing histories[b]. */
    readonly penalties?: HistoryPenalties;
  };
  /**
   * The forward's staged copy of these trees (ForwardOutput.staged, from ForwardOptions.stage): the
   * index arrays, seeds and offsets are not uploaded again. They must equal the arrays given here
   * (E_ARG otherwise). Device tails were applied by that forward: `tails` goes with `staged` never.
   */
  staged?: StagedVerify;
  /** With `staged` from a forward that staged parts (VerifyStaging.parts): which part this is. */
  stagedPart?: number;
}

export interface VerifyOutput {
  /** Per sequence: accepted node indices (local), root first. */
  acceptedNodes: Int32Array[];
  /** Per sequence: accepted draft tokens, then one correction/bonus token (same length as acceptedNodes). */
  emitted: Int32Array[];
  /** i32 [B]: accepted nodes including the root = tokens emitted. */
  acceptCount: Int32Array;
  /** depthAccepts[d]: sequences whose accepted path reaches depth d + 1. */
  depthAccepts: Int32Array;
  /** The row argmaxes of `argmaxOf`, when given. */
  argmax?: Int32Array;
  /** ids[(h * B + b) * k + j] for headsOnAccepted. */
  headsTopK?: Int32Array;
  /** The accepted paths where they lie on the device: the target's commit() can read them there. */
  paths?: VerifiedPaths;
}

/** Verifies a ragged batch of trees in one native launch (index arrays go to target's device). */
export function verify(input: VerifyInput): VerifyOutput {
  optionsArg(input, 'verify input');
  return toOutput(input, native().verifyTree(nativeInput(input)));
}

/**
 * Several verifications (e.g. parts of one forward's batch with different settings) in one native
 * call: their results come back in ONE read from the device (one wait on CUDA instead of one each).
 */
export function verifyMany(inputs: readonly VerifyInput[]): VerifyOutput[] {
  const rs = native().verifyTree(inputs.map(nativeInput));
  return inputs.map((input, i) => toOutput(input, rs[i] as SpecdecNative.NativeVerifyOutput));
}

function nativeInput(input: VerifyInput): SpecdecNative.NativeVerifyInput {
  const { nodeIndptr } = input;
  // The native call checks every array; the depth computed here reads nodeIndptr first.
  const indptr: unknown = nodeIndptr;
  if (!(indptr instanceof Int32Array || Array.isArray(indptr))) throw argError(`verify: nodeIndptr: expected an Int32Array, got ${indptr === null ? 'null' : typeof indptr}`);
  let maxDepth = input.maxDepth;
  if (maxDepth === undefined) {
    maxDepth = 0;
    for (let b = 0; b + 1 < nodeIndptr.length; b++)
      maxDepth = Math.max(maxDepth, (nodeIndptr[b + 1] ?? 0) - (nodeIndptr[b] ?? 0) - 1);
  }
  const args: SpecdecNative.NativeVerifyInput = {
    mode: input.mode,
    nodeIndptr,
    parents: input.parents,
    tokens: input.tokens,
    target: input.target,
    maxDepth,
  };
  if (input.draft !== undefined) args.draft = input.draft;
  if (input.seeds !== undefined) args.seeds = input.seeds;
  if (input.offsets !== undefined) args.offsets = input.offsets;
  if (input.typicalThreshold !== undefined) args.typicalThreshold = input.typicalThreshold;
  if (input.typicalAlpha !== undefined) args.typicalAlpha = input.typicalAlpha;
  if (input.argmaxOf !== undefined) args.argmaxOf = input.argmaxOf;
  if (input.headsOnAccepted !== undefined) {
    const h = input.headsOnAccepted;
    const heads = Array.isArray(h.heads) ? h.heads.map((x) => ({ w: x.w, b: x.b, lmHead: x.lmHead })) : h.heads;
    args.medusa = { hidden: h.hidden, heads, k: h.k, ...(h.penalties ? { penalties: nativeRowPenalties(h.penalties.penalties, h.penalties.histories) } : {}) };
  }
  if (input.staged !== undefined) args.staged = input.staged as unknown as SpecdecNative.StagedVerifyHandle;
  if (input.stagedPart !== undefined) args.stagedPart = input.stagedPart;
  if (input.tails !== undefined) args.tails = input.tails.map((t) => (t ? { ids: t.ids, offset: t.offset } : undefined));
  return args;
}

function toOutput(input: VerifyInput, r: SpecdecNative.NativeVerifyOutput): VerifyOutput {
  const { nodeIndptr } = input;
  const acceptedNodes: Int32Array[] = [];
  const emitted: Int32Array[] = [];
  for (let b = 0; b < r.acceptCount.length; b++) {
    const s = nodeIndptr[b] ?? 0;
    const n = r.acceptCount[b] ?? 0;
    acceptedNodes.push(r.acceptedNodes.subarray(s, s + n));
    emitted.push(r.emitted.subarray(s, s + n));
  }
  const out: VerifyOutput = { acceptedNodes, emitted, acceptCount: r.acceptCount, depthAccepts: r.depthAccepts };
  if (r.argmax !== undefined) out.argmax = r.argmax;
  if (r.medusa !== undefined) out.headsTopK = r.medusa;
  if (r.paths !== undefined) out.paths = r.paths as unknown as VerifiedPaths;
  return out;
}

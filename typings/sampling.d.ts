// Native binding of sampling and verification (cpp/napi/sampling_napi.cc). Wrapped by lib/sampling.ts
// and lib/verify.ts; use those.
declare namespace SpecdecNative {
  interface NativeSamplingOptions {
    temperature?: number;
    topK?: number;
    topP?: number;
    minP?: number;
  }

  interface NativeVerifyInput {
    mode: 'greedy' | 'rejection' | 'typical';
    nodeIndptr: Int32Array;
    parents: Int32Array;
    tokens: Int32Array;
    target: Tensor;
    draft?: Tensor;
    seeds?: BigUint64Array;
    offsets?: BigUint64Array;
    typicalThreshold?: number;
    typicalAlpha?: number;
    maxDepth: number;
    argmaxOf?: Tensor;
    tails?: ({ ids: Tensor; offset: number } | undefined)[];
    medusa?: { hidden: Tensor; heads: readonly NativeMedusaHead[] | NativeMedusaHeadSet; k: number; penalties?: NativePenalties };
    /** The forward's staged copy of nodeIndptr/parents/tokens (and seeds/offsets): no upload. */
    staged?: StagedVerifyHandle;
    stagedPart?: number;
  }

  /** Opaque: verification inputs a forward sent with its own upload (cpp/core/ops_sampling.h StagedTree). */
  interface StagedVerifyHandle {
    readonly __stagedVerify: never;
  }
  /** Opaque: a verification's accepted paths on the device (VerifiedPaths), for the KV commit. */
  interface VerifiedPathsHandle {
    readonly __verifiedPaths: never;
  }

  /** Flat results: acceptedNodes/emitted are ragged by nodeIndptr. */
  interface NativeVerifyOutput {
    acceptedNodes: Int32Array;
    emitted: Int32Array;
    acceptCount: Int32Array;
    depthAccepts: Int32Array;
    argmax?: Int32Array;
    medusa?: Int32Array;
    paths: VerifiedPathsHandle;
  }

  interface NativeBinding {
    samplingProcessLogits(logits: Tensor, options: NativeSamplingOptions): Tensor;
    samplingArgmax(logits: Tensor): Tensor;
    /** samplingArgmax's ids as an Int32Array (one call; optional: older builds lack it). */
    samplingArgmaxIds?(logits: Tensor): Int32Array;
    samplingSample(probs: Tensor, seeds: BigUint64Array, offsets: BigUint64Array): Int32Array;
    samplingTopK(x: Tensor, k: number): { values: Tensor; ids: Tensor };
    verifyTree(input: NativeVerifyInput): NativeVerifyOutput;
    /** Several inputs, their results read back together. */
    verifyTree(inputs: NativeVerifyInput[]): NativeVerifyOutput[];
    /** Philox4x32-10 of one counter block (known-answer tests). */
    samplingPhilox4x32(counter: Uint32Array, key: Uint32Array): Uint32Array;
    /** Penalties on logits rows in place (lib/sampling.ts penalize; optional: older builds lack it). */
    samplingPenalize?(logits: Tensor, penalties: NativePenalties): void;
    /** A constraint's allowed tokens (bit t of row m's ceil(V / 32) words) on rows[m] of logits f32 [N, V], -inf elsewhere, in place (lib/grammar.ts). */
    samplingMaskTokens?(logits: Tensor, rows: Int32Array, allowed: Uint32Array): void;
    /** Log-probabilities of tokens[m] on rows[m] of logits f32 [N, V], and each row's k most probable tokens (read back at once). */
    samplingTokenLogprobs?(logits: Tensor, rows: Int32Array, tokens: Int32Array, k: number): { token: Float32Array; topIds: Int32Array; topLogprobs: Float32Array };
  }

  interface NativePenalties {
    repetition?: number;
    presence?: number;
    frequency?: number;
    rowSeq: Int32Array;
    histIndptr: Int32Array;
    histTokens: Int32Array;
    histCounts: Int32Array;
    pathIndptr: Int32Array;
    pathTokens: Int32Array;
    /** The logit bias, added before the penalties: distinct ascending tokens and their biases. */
    biasTokens?: Int32Array;
    biasValues?: Float32Array;
    /** Stop tokens banned before min_tokens: history s's list banTokens[banIndptr[s] .. banIndptr[s + 1]), on its rows whose path is shorter than banBefore[s]. */
    banIndptr?: Int32Array;
    banTokens?: Int32Array;
    banBefore?: Int32Array;
  }
}

// Native binding of the Llama-family runner (cpp/napi/model_napi.cc). Wrapped by lib/models/llama.ts.

declare namespace SpecdecNative {
  /** Validated model config as the runner takes it (lib/models/config.ts builds it from config.json). */
  interface LlamaNativeConfig {
    architecture: string;
    vocabSize: number;
    hiddenSize: number;
    intermediateSize: number;
    numLayers: number;
    numHeads: number;
    numKvHeads: number;
    headDim: number;
    maxPositions: number;
    rmsNormEps: number;
    ropeTheta: number;
    /** Values of each head that rotate (default headDim; fewer for a partial rotation). */
    ropeDim?: number;
    /** Per layer: rotate q and k (SmolLM3's no_rope_layers). Default: every layer. */
    ropeLayers?: boolean[];
    /** Per layer: its sliding attention window (the keys at positions > the query's - window), 0 = all. Default: none. */
    attentionWindows?: number[];
    /** Gemma 3: layers that rotate with ropeLocalTheta (unscaled) instead of ropeTheta. */
    ropeLocalLayers?: boolean[];
    ropeLocalTheta?: number;
    /** Softmax scale of q.k (default 1 / sqrt(headDim)). */
    attnScale?: number;
    /** Gemma: GeGLU (gelu_pytorch_tanh), RMSNorm weights as normOffset + w, sandwich norms, embeddings times sqrt(hidden). */
    geluMlp?: boolean;
    normOffset?: number;
    sandwichNorms?: boolean;
    /** OLMo 2: no pre-norms; post_attention_layernorm / post_feedforward_layernorm on block outputs; q_norm / k_norm over whole projections. */
    postNorms?: boolean;
    /** Granite: embedding, residual and logit multipliers (default 1: none). */
    embeddingMultiplier?: number;
    residualMultiplier?: number;
    logitsScaling?: number;
    scaleEmbeddings?: boolean;
    /** Gemma 2: soft-capping of the attention scores and of the logits (0 / absent: none). */
    attnSoftcap?: number;
    finalSoftcap?: number;
    ropeScaling?:
      | {
          type: 'linear' | 'llama3';
          factor: number;
          lowFreqFactor?: number;
          highFreqFactor?: number;
          originalMaxPositions?: number;
        }
      | {
          /** YaRN: frequencies blended between factor-interpolated and unscaled by a ramp; cos and sin times attentionFactor. */
          type: 'yarn';
          factor: number;
          originalMaxPositions: number;
          attentionFactor: number;
          betaFast: number;
          betaSlow: number;
          truncate: boolean;
        }
      | {
          /** Phi-3: frequency i divided by shortFactor[i]; rotated q and k scaled by attentionFactor. */
          type: 'longrope';
          shortFactor: number[];
          attentionFactor: number;
        };
    qkvBias: boolean;
    oBias: boolean;
    /** q and k RMS-normalized per head before RoPE (Qwen3). Default false. */
    qkNorm?: boolean;
    /** q/k/v as one qkv_proj and gate/up as one gate_up_proj (Phi-3). Default false. */
    fusedProjections?: boolean;
    tieWordEmbeddings: boolean;
  }

  /** Where the weights are: one file, or a weight map (tensor name -> shard file), relative to dir. */
  interface LlamaNativeSource {
    dir: string;
    file?: string;
    weightMap?: Record<string, string>;
    /** [prefix of embed_tokens / layers / norm, LM head name], tried in order; default [['model.', 'lm_head.weight']]. */
    layouts?: [string, string][];
  }

  interface LlamaNativeOptions {
    device: Device;
    pageSize: number;
    kvPages: number;
    kvDtype: 'f32' | 'f16' | 'bf16';
  }

  interface LlamaNativeInput {
    seq: number;
    tokens: Int32Array;
    parents?: Int32Array;
    positions?: Int32Array;
    mask?: { bits: BigUint64Array; words: number };
    tail?: { ids: Tensor; offset: number };
  }

  interface LlamaNativeForward {
    logits: Tensor;
    hidden?: Tensor;
    /** f32 [A, N, hidden]: the residual stream entering each of auxLayers. */
    aux?: Tensor;
    indptr: Int32Array;
    staged?: StagedVerifyHandle;
    /** Seconds of the forward itself on the native side (not the call's crossing or queueing). */
    seconds: number;
  }

  /** What the verification of a forward's own trees needs, sent with the forward's upload. */
  interface LlamaNativeStage {
    parents: Int32Array;
    seeds?: BigUint64Array;
    offsets?: BigUint64Array;
    parts?: Int32Array;
  }

  interface LlamaNativeKvInfo {
    pageSize: number;
    totalPages: number;
    freePages: number;
    dtype: DType;
    bytes: number;
  }

  /** The arguments of sampledChain and sampledChainOnDevice (offsets: [sum steps], input by input). */
  type NativeSampledChainArgs = [
    inputs: readonly LlamaNativeInput[],
    steps: Int32Array,
    sampling: NativeSamplingOptions,
    seeds: BigUint64Array,
    offsets: BigUint64Array,
    syncMaxMacs?: number,
    penalties?: NativeChainPenalties,
    logprobs?: NativeChainLogprobsArg,
  ];

  /** A chain's log-probabilities: k alternatives, and which inputs want them (0/1 per input). */
  interface NativeChainLogprobsArg {
    k: number;
    want: Int32Array;
  }

  /** A chain's log-probabilities, per input (empty arrays where not wanted): one entry per pick, k per pick in topLp / topIds. */
  interface NativeChainLogprobs {
    lp: Float32Array[];
    topLp: Float32Array[];
    topIds: Int32Array[];
  }

  /** A chain's penalties: one history per input (NativePenalties without rows; the chain makes them). */
  interface NativeChainPenalties {
    repetition?: number;
    presence?: number;
    frequency?: number;
    histIndptr: Int32Array;
    histTokens: Int32Array;
    histCounts: Int32Array;
    /** The logit bias, added before the penalties: distinct ascending tokens and their biases. */
    biasTokens?: Int32Array;
    biasValues?: Float32Array;
    /** Stop tokens banned before min_tokens: history s's list banTokens[banIndptr[s] .. banIndptr[s + 1]), on its rows whose path is shorter than banBefore[s]. */
    banIndptr?: Int32Array;
    banTokens?: Int32Array;
    banBefore?: Int32Array;
  }

  /** One sequence of speculativeChain. */
  interface NativeSpecChainSeq {
    seq: number;
    draftSeq: number;
    draftFeed: Int32Array;
    k: number;
    budget: number;
    stop?: Int32Array;
    seed?: bigint;
    firstOffset?: bigint;
  }

  interface NativeSpecChainResult {
    steps: number;
    /** [steps * B], step-major. */
    drafted: Int32Array;
    accepted: Int32Array;
    emitted: Int32Array[];
    draftCached: Int32Array;
    draws: Int32Array;
    draftSeconds: Float64Array;
    targetSeconds: Float64Array;
    stepSeconds: Float64Array;
  }

  interface NativeMedusaChainSeq {
    seq: number;
    root: number;
    cands: Int32Array;
    headsKnown: number;
    budget: number;
    stop?: Int32Array;
    seed?: bigint;
    firstOffset?: bigint;
  }

  interface NativeMedusaChainResult {
    steps: number;
    depth: number;
    nodes: Int32Array;
    depths: Int32Array;
    accepted: Int32Array;
    ranks: Int32Array;
    emitted: Int32Array[];
    cands: Int32Array[];
    draws: Int32Array;
    targetSeconds: Float64Array;
    stepSeconds: Float64Array;
  }

  interface LlamaNativeModel {
    /**
     * Runs on the libuv pool, or on the calling thread (the promise is then already settled) when
     * the estimated work is at most `syncMaxMacs` multiply-adds (absent or 0: always the pool).
     */
    /** lastOnly: logits of each input's last row only ([B, vocab]). */
    forward(inputs: readonly LlamaNativeInput[], hidden: boolean, syncMaxMacs?: number, stage?: LlamaNativeStage, lastOnly?: boolean, auxLayers?: Int32Array): Promise<LlamaNativeForward>;
    /**
     * Greedy chain drafting in one call: feeds and commits inputs[b].tokens, then steps[b] times
     * takes the argmax of the last row, feeding and committing it while steps remain. Resolves with
     * the picked tokens per input (steps[b] each). On an error nothing of the call stays committed.
     * Runs where forward would (syncMaxMacs against the work of all steps).
     */
    greedyChain(inputs: readonly LlamaNativeInput[], steps: Int32Array, syncMaxMacs?: number, penalties?: NativeChainPenalties): Promise<Int32Array[]>;
    greedyChain(inputs: readonly LlamaNativeInput[], steps: Int32Array, syncMaxMacs: number | undefined, penalties: NativeChainPenalties | undefined, logprobs: NativeChainLogprobsArg): Promise<{ picks: Int32Array[] } & NativeChainLogprobs>;
    greedyChainOnDevice(inputs: readonly LlamaNativeInput[], steps: Int32Array, syncMaxMacs?: number, penalties?: NativeChainPenalties): Promise<Tensor>;
    sampledChain(...args: NativeSampledChainArgs): Promise<{ picks: Int32Array[]; q: Tensor } & Partial<NativeChainLogprobs>>;
    sampledChainOnDevice(...args: NativeSampledChainArgs): Promise<{ ids: Tensor; q: Tensor }>;
    /** Draft-model steps in one call, greedy or sampled (cpp/model/spec_chain.h); draftPenalties (default true): the draft drafts with the penalties too. */
    speculativeChain(
      draft: LlamaNativeModel,
      seqs: readonly NativeSpecChainSeq[],
      maxSteps: number,
      maxSeconds: number,
      syncMaxMacs?: number,
      sampling?: NativeSamplingOptions,
      penalties?: NativeChainPenalties,
      draftPenalties?: boolean,
      logprobs?: NativeChainLogprobsArg,
    ): Promise<NativeSpecChainResult & Partial<NativeChainLogprobs>>;
    /** Medusa steps in one call, greedy or sampled (cpp/model/spec_chain.h). */
    medusaChain(
      heads: NativeMedusaHeadSet,
      seqs: readonly NativeMedusaChainSeq[],
      template: { parents: Int32Array; head: Int32Array; rank: Int32Array },
      topK: number,
      maxSteps: number,
      maxSeconds: number,
      syncMaxMacs?: number,
      sampling?: NativeSamplingOptions,
      penalties?: NativeChainPenalties,
      logprobs?: NativeChainLogprobsArg,
    ): Promise<NativeMedusaChainResult & Partial<NativeChainLogprobs>>;
    commit(seqs: Int32Array, accepted: readonly Int32Array[], paths?: VerifiedPathsHandle | readonly VerifiedPathsHandle[]): void;
    createSequence(): number;
    forkSequence(seq: number): number;
    freeSequence(seq: number): void;
    truncate(seq: number, length: number): void;
    sequenceLength(seq: number): number;
    kvInfo(): LlamaNativeKvInfo;
    weightDtype(): DType;
    /** The embedding table and LM head, sharing the model's storage (EAGLE heads read them). */
    sharedWeights(): { embedTokens: Tensor; lmHead: Tensor };
    dispose(): void;
  }

  interface NativeBinding {
    /** Loads (memory-maps, validates, copies to the device) on the libuv pool. */
    llamaLoad(config: LlamaNativeConfig, source: LlamaNativeSource, options: LlamaNativeOptions): Promise<LlamaNativeModel>;
    /** The rotary inverse frequencies the runner computes for a config (theta and rope_scaling). */
    llamaRopeInvFreq?(config: LlamaNativeConfig): Float32Array;
  }
}

// Native binding of the trainer (cpp/napi/train_napi.cc, cpp/train/).
// Augments SpecdecNative.NativeBinding (typings/native.d.ts) by interface merging.

declare namespace SpecdecNative {
  type TrainPrecision = 'f32' | 'f64';

  interface TrainLlamaConfig {
    vocabSize: number;
    hiddenSize: number;
    intermediateSize: number;
    numLayers: number;
    numHeads: number;
    numKvHeads: number;
    /** Default hiddenSize / numHeads. */
    headDim?: number;
    rmsNormEps?: number;
    ropeTheta?: number;
    tieWordEmbeddings?: boolean;
  }

  interface TrainMedusaConfig {
    numHeads: number;
    numLayers: number;
    hiddenSize: number;
    vocabSize: number;
  }

  interface AdamWNativeOptions {
    lr: number;
    beta1?: number;
    beta2?: number;
    eps?: number;
    weightDecay?: number;
    /** Max global gradient norm (<= 0: no clipping). Default 1. */
    clip?: number;
  }

  interface TrainParamInfo {
    name: string;
    shape: number[];
  }

  /** Values of an f32 trainer come as Float32Array, of an f64 trainer as Float64Array. */
  type TrainValues = Float32Array | Float64Array;

  /** Parameters of a trainer, flat in paramInfo() order, under their checkpoint tensor names. */
  interface TrainParams {
    paramInfo(): TrainParamInfo[];
    getParam(name: string): TrainValues;
    setParam(name: string, values: Float32Array | Float64Array): void;
    getParams(): TrainValues;
    setParams(values: Float32Array | Float64Array): void;
    /** Gradients of the last lossAndGrad()/trainStep(), flat like getParams(). */
    getGrads(): TrainValues;
    dispose(): void;
  }

  interface TrainLlama extends TrainParams {
    /** tokens [batch, seqLen + 1] (targets are the next ids): mean cross-entropy; sets the gradients. */
    lossAndGrad(tokens: Int32Array, batch: number, seqLen: number): number;
    /** tokens [batch, seqLen]: logits [batch*seqLen, V] and final-norm hidden states [batch*seqLen, H]. */
    /** auxLayers: also `aux` [batch*seqLen, A*H], the residual streams entering those layers (EAGLE-3's features). */
    forward(tokens: Int32Array, batch: number, seqLen: number, auxLayers?: Int32Array): { logits: TrainValues; hidden: TrainValues; aux?: TrainValues };
    /** One AdamW step on tokens [batch, seqLen + 1] (libuv pool). */
    trainStep(tokens: Int32Array, batch: number, seqLen: number, options: AdamWNativeOptions): Promise<{ loss: number; gradNorm: number }>;
    evalLoss(tokens: Int32Array, batch: number, seqLen: number): Promise<number>;
  }

  interface MedusaLossNative {
    /** Sum over heads of each head's mean cross-entropy. */
    loss: number;
    headLoss: number[];
    /** Top-1 accuracy of each head on the positions it has a target for. */
    headAccuracy: number[];
  }

  interface TrainMedusa extends TrainParams {
    /** hidden [batch*seqLen, H], tokens [batch, seqLen]: head h's target at t is tokens[t + h + 2]. */
    lossAndGrad(hidden: Float32Array | Float64Array, tokens: Int32Array, batch: number, seqLen: number): MedusaLossNative;
    /** Logits [numHeads, N, V] for hidden [N, H]. */
    forward(hidden: Float32Array | Float64Array): TrainValues;
    /** One AdamW step on the hidden states the (frozen, f32) target computes for tokens [batch, seqLen]. */
    trainStep(
      target: TrainLlama,
      tokens: Int32Array,
      batch: number,
      seqLen: number,
      options: AdamWNativeOptions,
    ): Promise<MedusaLossNative & { gradNorm: number }>;
  }

  interface TrainEagleConfig {
    vocabSize: number;
    hiddenSize: number;
    intermediateSize: number;
    numLayers: number;
    numHeads: number;
    numKvHeads: number;
    /** Default hiddenSize / numHeads. */
    headDim?: number;
    rmsNormEps?: number;
    ropeTheta?: number;
    /** fc.bias (SafeAILab's `bias`); default true. */
    fcBias?: boolean;
  }

  /** EAGLE-1/2 loss weights (SafeAILab's v_w, p_w) and the input features' uniform noise width. */
  interface EagleLossNativeOptions {
    /** SmoothL1 on the next feature; default 1. */
    vWeight?: number;
    /** Cross-entropy against the target's next distribution; default 0.1. */
    pWeight?: number;
    /** Features get + (u - 1/2) * noise, u uniform in (0, 1); default 0. */
    noise?: number;
    noiseSeed?: number;
  }

  interface EagleLossNative {
    loss: number;
    vLoss: number;
    pLoss: number;
    /** Rows whose argmax equals the target's next argmax. */
    accuracy: number;
  }

  interface TrainEagle extends TrainParams {
    /**
     * tokens [batch, seqLen + 1], the target's features [batch, seqLen + 1, H] and logits
     * [batch, seqLen + 1, V] at those positions, its embedding table and LM head [V, H]: the loss
     * over the batch * seqLen rows; sets the gradients.
     */
    lossAndGrad(
      tokens: Int32Array,
      features: Float32Array | Float64Array,
      targetLogits: Float32Array | Float64Array,
      embed: Float32Array | Float64Array,
      lmHead: Float32Array | Float64Array,
      batch: number,
      seqLen: number,
      options?: EagleLossNativeOptions,
    ): EagleLossNative;
    /** The head's output h [batch*seqLen, H] and its logits [batch*seqLen, V] (no noise). */
    forward(
      tokens: Int32Array,
      features: Float32Array | Float64Array,
      embed: Float32Array | Float64Array,
      lmHead: Float32Array | Float64Array,
      batch: number,
      seqLen: number,
    ): { h: TrainValues; logits: TrainValues };
    /** One AdamW step on what the (frozen, f32) target computes for tokens [batch, seqLen + 1]. */
    trainStep(
      target: TrainLlama,
      tokens: Int32Array,
      batch: number,
      seqLen: number,
      options: AdamWNativeOptions & EagleLossNativeOptions,
    ): Promise<EagleLossNative & { gradNorm: number }>;
  }


  interface TrainEagle3Config {
    vocabSize: number;
    hiddenSize: number;
    intermediateSize: number;
    /** Must be 1 (the midlayer). */
    numLayers: number;
    numHeads: number;
    numKvHeads: number;
    headDim?: number;
    rmsNormEps?: number;
    ropeTheta?: number;
    /** The head's LM head rows: the target ids it can draft (draftIds). */
    draftVocabSize: number;
  }

  /** Training-time test (SafeAILab's traineagle3): unrolled steps and their loss weights decay^s. */
  interface Eagle3LossNativeOptions {
    /** Default 7. */
    steps?: number;
    /** Default 0.8. */
    decay?: number;
  }

  interface Eagle3LossNative {
    /** sum over steps s of decay^s * stepLoss[s]. */
    loss: number;
    /** Soft cross-entropy per step over the draft vocabulary, summed over rows whose target argmax is draftable, / (batch * seqLen). */
    stepLoss: number[];
    /** Per step: rows whose argmax (mapped to target ids) is the target's argmax, over the rows with a target. */
    stepAccuracy: number[];
  }

  interface TrainEagle3 extends TrainParams {
    /**
     * tokens [batch, seqLen + 1], the target's three residual streams per position side by side
     * [batch, seqLen + 1, 3H], its logits [batch, seqLen + 1, V], its embedding table [V, H], the
     * draft vocabulary (ascending target ids): the training-time-test loss; sets the gradients.
     */
    lossAndGrad(
      tokens: Int32Array,
      features: Float32Array | Float64Array,
      targetLogits: Float32Array | Float64Array,
      embed: Float32Array | Float64Array,
      draftIds: Int32Array,
      batch: number,
      seqLen: number,
      options?: Eagle3LossNativeOptions,
    ): Eagle3LossNative;
    /** Each step's h [batch, steps, seqLen, H] and logits [batch, steps, seqLen, Vd]; rows j >= seqLen - s of step s are zeros. */
    forward(
      tokens: Int32Array,
      features: Float32Array | Float64Array,
      embed: Float32Array | Float64Array,
      batch: number,
      seqLen: number,
      steps: number,
    ): { h: TrainValues; logits: TrainValues };
    /** One AdamW step on what the (frozen, f32) target computes for tokens [batch, seqLen + 1]. */
    trainStep(
      target: TrainLlama,
      tokens: Int32Array,
      batch: number,
      seqLen: number,
      auxLayers: Int32Array,
      draftIds: Int32Array,
      options: AdamWNativeOptions & Eagle3LossNativeOptions,
    ): Promise<Eagle3LossNative & { gradNorm: number }>;
  }

  interface NativeBinding {
    trainLlamaCreate(config: TrainLlamaConfig, seed: number, precision?: TrainPrecision, threads?: number): TrainLlama;
    trainMedusaCreate(config: TrainMedusaConfig, seed: number, precision?: TrainPrecision, threads?: number): TrainMedusa;
    trainEagleCreate(config: TrainEagleConfig, seed: number, precision?: TrainPrecision, threads?: number): TrainEagle;
    trainEagle3Create(config: TrainEagle3Config, seed: number, precision?: TrainPrecision, threads?: number): TrainEagle3;
  }
}

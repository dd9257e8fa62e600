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
    forward(tokens: Int32Array, batch: number, seqLen: number): { logits: TrainValues; hidden: TrainValues };
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

  interface NativeBinding {
    trainLlamaCreate(config: TrainLlamaConfig, seed: number, precision?: TrainPrecision, threads?: number): TrainLlama;
    trainMedusaCreate(config: TrainMedusaConfig, seed: number, precision?: TrainPrecision, threads?: number): TrainMedusa;
    trainEagleCreate(config: TrainEagleConfig, seed: number, precision?: TrainPrecision, threads?: number): TrainEagle;
  }
}

/// <reference path="../../typings/train.d.ts" />
// The training driver: typed wrappers of the native trainer (cpp/train/), the learning-rate
// schedule, batch sampling from a token stream, and checkpoint writers in the layouts the runner
// loads (HF LlamaForCausalLM; FasterDecoding Medusa heads; SafeAILab EAGLE-1/2 heads). All math
// runs natively.
import * as fs from 'fs';
import * as path from 'path';

import type { LlamaConfig } from '../models/config';
import { findWeights } from '../models/llama';
import { native } from '../native';
import { openSafetensors, writeSafetensors, type SafetensorsEntry } from '../safetensors';
import { seededRandom } from './corpus';

export type TrainPrecision = SpecdecNative.TrainPrecision;
export type AdamWOptions = SpecdecNative.AdamWNativeOptions;
export type SaveDType = 'F32' | 'BF16';

export interface LlamaTrainConfig {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim?: number;
  readonly rmsNormEps: number;
  readonly ropeTheta: number;
  readonly tieWordEmbeddings: boolean;
  /** Written as max_position_embeddings (the context the model was trained for). */
  readonly maxPositions: number;
  readonly bosTokenId?: number;
  readonly eosTokenId?: number;
}

export interface TrainerOptions {
  readonly seed: number;
  /** 'f32' (default) trains; 'f64' is for gradient checks. */
  readonly precision?: TrainPrecision;
  /** Threads over the batch (default 1). */
  readonly threads?: number;
}

export interface ParamInfo {
  readonly name: string;
  readonly shape: readonly number[];
}

export function codedError(code: string, message: string): Error & { code: string } {
  const e = new Error(message) as Error & { code: string };
  e.code = code;
  return e;
}

function binding(): SpecdecNative.NativeBinding {
  const b = native();
  if (typeof b.trainLlamaCreate !== 'function') {
    throw codedError('E_UNSUPPORTED', 'the loaded native addon has no trainer (an older build?): run `npm run build:native`');
  }
  return b;
}

/** The native trainers' Llama-layer sizes of a config (the fields they share). */
function layerShape(c: Omit<LlamaTrainConfig, 'tieWordEmbeddings'>): Omit<SpecdecNative.TrainLlamaConfig, 'tieWordEmbeddings'> {
  return {
    vocabSize: c.vocabSize,
    hiddenSize: c.hiddenSize,
    intermediateSize: c.intermediateSize,
    numLayers: c.numLayers,
    numHeads: c.numHeads,
    numKvHeads: c.numKvHeads,
    rmsNormEps: c.rmsNormEps,
    ropeTheta: c.ropeTheta,
    ...(c.headDim !== undefined ? { headDim: c.headDim } : {}),
  };
}

/** Shared parameter access of the trainers. */
abstract class ParamOwner<N extends SpecdecNative.TrainParams> {
  protected handle: N | undefined;
  constructor(handle: N) {
    this.handle = handle;
  }
  protected get h(): N {
    if (this.handle === undefined) throw codedError('E_DISPOSED', 'trainer was disposed');
    return this.handle;
  }
  /** The native handle (e.g. to pass a target to MedusaTrainer.trainStep). */
  get native(): N {
    return this.h;
  }
  paramInfo(): ParamInfo[] {
    return this.h.paramInfo();
  }
  numParams(): number {
    return this.h.paramInfo().reduce((n, p) => n + p.shape.reduce((a, b) => a * b, 1), 0);
  }
  getParam(name: string): SpecdecNative.TrainValues {
    return this.h.getParam(name);
  }
  setParam(name: string, values: Float32Array | Float64Array): void {
    this.h.setParam(name, values);
  }
  getParams(): SpecdecNative.TrainValues {
    return this.h.getParams();
  }
  setParams(values: Float32Array | Float64Array): void {
    this.h.setParams(values);
  }
  getGrads(): SpecdecNative.TrainValues {
    return this.h.getGrads();
  }
  /** name -> safetensors entry (values rounded to `dtype` by the writer). */
  protected tensors(dtype: SaveDType): Record<string, SafetensorsEntry> {
    const out: Record<string, SafetensorsEntry> = {};
    for (const p of this.paramInfo()) out[p.name] = { dtype, shape: [...p.shape], data: Float32Array.from(this.getParam(p.name)) };
    return out;
  }
  dispose(): void {
    this.handle?.dispose();
    this.handle = undefined;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** A Llama-family model under training. */
export class LlamaTrainer extends ParamOwner<SpecdecNative.TrainLlama> {
  private constructor(
    readonly config: LlamaTrainConfig,
    handle: SpecdecNative.TrainLlama,
  ) {
    super(handle);
  }

  static create(config: LlamaTrainConfig, options: TrainerOptions): LlamaTrainer {
    const c: SpecdecNative.TrainLlamaConfig = { ...layerShape(config), tieWordEmbeddings: config.tieWordEmbeddings };
    return new LlamaTrainer(config, binding().trainLlamaCreate(c, options.seed, options.precision ?? 'f32', options.threads ?? 1));
  }

  /**
   * A checkpoint's weights (any dtype, sharded or not) in an f32 trainer, e.g. the frozen base
   * model of train-medusa / train-eagle. The trainer's layer is plain Llama: checkpoints with
   * biases, q/k norms, fused projections, RoPE scaling and the like are refused by name.
   */
  static fromCheckpoint(dir: string, config: LlamaConfig, options: TrainerOptions): LlamaTrainer {
    if (config.qkvBias || config.oBias || config.qkNorm || config.fusedProjections || config.ropeScaling !== undefined || config.ropeDim !== config.headDim || config.ropeLayers !== undefined || config.gemma === true || config.postNorms === true || config.residualMultiplier !== undefined) {
      throw codedError('E_UNSUPPORTED', `${dir}: the trainer covers Llama without attention biases, q/k norms (Qwen3), fused projections (Phi-3), rope_scaling, a partial rotation, layers without RoPE (SmolLM3), Gemma's layer, post-norms (OLMo 2, EXAONE 4) or Granite's multipliers`);
    }
    // A LlamaConfig is a LlamaTrainConfig (same field names; the extra ones are ignored).
    const trainer = LlamaTrainer.create(config, options);
    try {
      const source = findWeights(dir);
      const fileOf = (name: string): string => path.join(dir, source.file ?? source.weightMap?.[name] ?? '');
      const readers = new Map<string, ReturnType<typeof openSafetensors>>();
      try {
        for (const p of trainer.paramInfo()) {
          const file = fileOf(p.name);
          let r = readers.get(file);
          if (!r) readers.set(file, (r = openSafetensors(file)));
          if (!r.has(p.name)) throw codedError('E_FORMAT', `${file}: missing tensor '${p.name}'`);
          const t = r.load(p.name);
          try {
            if (t.shape.join(',') !== p.shape.join(',')) throw codedError('E_FORMAT', `${file}: '${p.name}' is [${t.shape}], expected [${p.shape}]`);
            trainer.setParam(p.name, t.toFloat32());
          } finally {
            t.dispose();
          }
        }
      } finally {
        for (const r of readers.values()) r.close();
      }
      return trainer;
    } catch (e) {
      trainer.dispose();
      throw e;
    }
  }

  /** Mean next-token cross-entropy of tokens [batch, seqLen + 1]; gradients via getGrads(). */
  lossAndGrad(tokens: Int32Array, batch: number, seqLen: number): number {
    return this.h.lossAndGrad(tokens, batch, seqLen);
  }
  /** Logits [batch*seqLen, V] and final hidden states [batch*seqLen, H] of tokens [batch, seqLen]. */
  /** auxLayers: also `aux`, the residual streams entering those layers side by side [batch*seqLen, A*H]. */
  forward(tokens: Int32Array, batch: number, seqLen: number, auxLayers?: readonly number[]): { logits: SpecdecNative.TrainValues; hidden: SpecdecNative.TrainValues; aux?: SpecdecNative.TrainValues } {
    return auxLayers ? this.h.forward(tokens, batch, seqLen, Int32Array.from(auxLayers)) : this.h.forward(tokens, batch, seqLen);
  }
  trainStep(tokens: Int32Array, batch: number, seqLen: number, options: AdamWOptions): Promise<{ loss: number; gradNorm: number }> {
    return this.h.trainStep(tokens, batch, seqLen, options);
  }
  evalLoss(tokens: Int32Array, batch: number, seqLen: number): Promise<number> {
    return this.h.evalLoss(tokens, batch, seqLen);
  }

  /** The HF config.json of this model (LlamaForCausalLM). */
  configJson(dtype: SaveDType): Record<string, unknown> {
    const c = this.config;
    return {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      vocab_size: c.vocabSize,
      hidden_size: c.hiddenSize,
      intermediate_size: c.intermediateSize,
      num_hidden_layers: c.numLayers,
      num_attention_heads: c.numHeads,
      num_key_value_heads: c.numKvHeads,
      head_dim: c.headDim ?? c.hiddenSize / c.numHeads,
      max_position_embeddings: c.maxPositions,
      rms_norm_eps: c.rmsNormEps,
      rope_theta: c.ropeTheta,
      hidden_act: 'silu',
      attention_bias: false,
      mlp_bias: false,
      tie_word_embeddings: c.tieWordEmbeddings,
      torch_dtype: dtype === 'BF16' ? 'bfloat16' : 'float32',
      ...(c.bosTokenId !== undefined ? { bos_token_id: c.bosTokenId } : {}),
      ...(c.eosTokenId !== undefined ? { eos_token_id: c.eosTokenId } : {}),
    };
  }

  /** Writes config.json and model.safetensors (HF layout) into dir. */
  save(dir: string, options: { dtype?: SaveDType; metadata?: Record<string, string> } = {}): void {
    const dtype = options.dtype ?? 'F32';
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(this.configJson(dtype), null, 2) + '\n');
    writeSafetensors(path.join(dir, 'model.safetensors'), this.tensors(dtype), { format: 'pt', ...(options.metadata ?? {}) });
  }
}

export interface MedusaTrainConfig {
  readonly numHeads: number;
  readonly numLayers: number;
  readonly hiddenSize: number;
  readonly vocabSize: number;
}

export type MedusaStepResult = SpecdecNative.MedusaLossNative & { gradNorm: number };

/** Medusa heads under training (FasterDecoding layout). */
export class MedusaTrainer extends ParamOwner<SpecdecNative.TrainMedusa> {
  private constructor(
    readonly config: MedusaTrainConfig,
    handle: SpecdecNative.TrainMedusa,
  ) {
    super(handle);
  }

  static create(config: MedusaTrainConfig, options: TrainerOptions): MedusaTrainer {
    const c: SpecdecNative.TrainMedusaConfig = { ...config };
    return new MedusaTrainer(config, binding().trainMedusaCreate(c, options.seed, options.precision ?? 'f32', options.threads ?? 1));
  }

  /** FasterDecoding's initialisation: every head's LM head is the target's, ResBlocks are zero
   *  (so each head starts out predicting what the target predicts next). */
  initFromTarget(target: LlamaTrainer): void {
    const lm = target.getParam(target.config.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight');
    const L = this.config.numLayers;
    for (let h = 0; h < this.config.numHeads; h++) {
      this.setParam(`${h}.${L}.weight`, lm);
      for (let l = 0; l < L; l++) {
        this.setParam(`${h}.${l}.linear.weight`, new Float32Array(this.config.hiddenSize * this.config.hiddenSize));
        this.setParam(`${h}.${l}.linear.bias`, new Float32Array(this.config.hiddenSize));
      }
    }
  }

  lossAndGrad(hidden: Float32Array | Float64Array, tokens: Int32Array, batch: number, seqLen: number): SpecdecNative.MedusaLossNative {
    return this.h.lossAndGrad(hidden, tokens, batch, seqLen);
  }
  /** Logits [numHeads, N, V] of hidden states [N, H]. */
  forward(hidden: Float32Array | Float64Array): SpecdecNative.TrainValues {
    return this.h.forward(hidden);
  }
  /** One step on the hidden states the frozen target computes for tokens [batch, seqLen]. */
  trainStep(target: LlamaTrainer, tokens: Int32Array, batch: number, seqLen: number, options: AdamWOptions): Promise<MedusaStepResult> {
    return this.h.trainStep(target.native, tokens, batch, seqLen, options);
  }

  /** Writes config.json and medusa_lm_head.safetensors into dir. */
  save(dir: string, options: { dtype?: SaveDType; baseModel: string }): void {
    fs.mkdirSync(dir, { recursive: true });
    const cfg = {
      medusa_num_heads: this.config.numHeads,
      medusa_num_layers: this.config.numLayers,
      base_model_name_or_path: options.baseModel,
      hidden_size: this.config.hiddenSize,
      vocab_size: this.config.vocabSize,
    };
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg, null, 2) + '\n');
    writeSafetensors(path.join(dir, 'medusa_lm_head.safetensors'), this.tensors(options.dtype ?? 'F32'), { format: 'pt' });
  }
}

export interface EagleTrainConfig {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim?: number;
  readonly rmsNormEps: number;
  readonly ropeTheta: number;
  /** Written as max_position_embeddings. */
  readonly maxPositions: number;
  /** fc.bias (default true, as SafeAILab's heads). */
  readonly fcBias?: boolean;
}

export type EagleLossOptions = SpecdecNative.EagleLossNativeOptions;
export type EagleStepResult = SpecdecNative.EagleLossNative & { gradNorm: number };

/**
 * An EAGLE-1/2 head under training on a frozen target (SafeAILab's layout and losses): row j reads
 * token t[j + 1] with the target's final hidden state f[j] and learns f[j + 1] (SmoothL1) and the
 * target's next distribution (cross-entropy through the target's LM head). Loads with --eagle.
 */
export class EagleTrainer extends ParamOwner<SpecdecNative.TrainEagle> {
  private constructor(
    readonly config: EagleTrainConfig,
    handle: SpecdecNative.TrainEagle,
  ) {
    super(handle);
  }

  static create(config: EagleTrainConfig, options: TrainerOptions): EagleTrainer {
    const c: SpecdecNative.TrainEagleConfig = { ...layerShape(config), fcBias: config.fcBias ?? true };
    return new EagleTrainer(config, binding().trainEagleCreate(c, options.seed, options.precision ?? 'f32', options.threads ?? 1));
  }

  /** A head shaped like one layer of `target` (SafeAILab's choice: the target's layer sizes). */
  static configFor(target: LlamaTrainConfig, numLayers = 1): EagleTrainConfig {
    const { vocabSize, hiddenSize, intermediateSize, numHeads, numKvHeads, headDim, rmsNormEps, ropeTheta, maxPositions } = target;
    return { vocabSize, hiddenSize, intermediateSize, numLayers, numHeads, numKvHeads, rmsNormEps, ropeTheta, maxPositions, ...(headDim !== undefined ? { headDim } : {}) };
  }

  lossAndGrad(
    tokens: Int32Array,
    features: Float32Array | Float64Array,
    targetLogits: Float32Array | Float64Array,
    embed: Float32Array | Float64Array,
    lmHead: Float32Array | Float64Array,
    batch: number,
    seqLen: number,
    options?: EagleLossOptions,
  ): SpecdecNative.EagleLossNative {
    return this.h.lossAndGrad(tokens, features, targetLogits, embed, lmHead, batch, seqLen, options);
  }
  /** h [batch*seqLen, H] and its logits through lmHead, for tokens [batch, seqLen + 1] and features [batch, seqLen + 1, H]. */
  forward(
    tokens: Int32Array,
    features: Float32Array | Float64Array,
    embed: Float32Array | Float64Array,
    lmHead: Float32Array | Float64Array,
    batch: number,
    seqLen: number,
  ): { h: SpecdecNative.TrainValues; logits: SpecdecNative.TrainValues } {
    return this.h.forward(tokens, features, embed, lmHead, batch, seqLen);
  }
  /** One step on what the frozen target computes for tokens [batch, seqLen + 1]. */
  trainStep(target: LlamaTrainer, tokens: Int32Array, batch: number, seqLen: number, options: AdamWOptions & EagleLossOptions): Promise<EagleStepResult> {
    return this.h.trainStep(target.native, tokens, batch, seqLen, options);
  }

  /** SafeAILab's EAGLE-1 config.json (a Llama config of the head's layers, plus `bias`). */
  configJson(dtype: SaveDType): Record<string, unknown> {
    const c = this.config;
    return {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      vocab_size: c.vocabSize,
      hidden_size: c.hiddenSize,
      intermediate_size: c.intermediateSize,
      num_hidden_layers: c.numLayers,
      num_attention_heads: c.numHeads,
      num_key_value_heads: c.numKvHeads,
      head_dim: c.headDim ?? c.hiddenSize / c.numHeads,
      max_position_embeddings: c.maxPositions,
      rms_norm_eps: c.rmsNormEps,
      rope_theta: c.ropeTheta,
      hidden_act: 'silu',
      bias: c.fcBias ?? true,
      torch_dtype: dtype === 'BF16' ? 'bfloat16' : 'float32',
    };
  }

  /** Writes config.json and model.safetensors (SafeAILab's key names) into dir. */
  save(dir: string, options: { dtype?: SaveDType; metadata?: Record<string, string> } = {}): void {
    const dtype = options.dtype ?? 'F32';
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(this.configJson(dtype), null, 2) + '\n');
    writeSafetensors(path.join(dir, 'model.safetensors'), this.tensors(dtype), { format: 'pt', ...(options.metadata ?? {}) });
  }
}

export interface Eagle3TrainConfig {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim?: number;
  readonly rmsNormEps: number;
  readonly ropeTheta: number;
  /** Written as max_position_embeddings. */
  readonly maxPositions: number;
  /** The target ids the head drafts (its LM head's rows), ascending; saved as d2t / t2d. */
  readonly draftIds: Int32Array;
  /** The target layers whose input residual streams are the features (three, ascending). */
  readonly auxLayers: readonly [number, number, number];
}

export type Eagle3LossOptions = SpecdecNative.Eagle3LossNativeOptions;
export type Eagle3StepResult = SpecdecNative.Eagle3LossNative & { gradNorm: number };

/**
 * The three target layers an EAGLE-3 head reads when none are given: SafeAILab's (the inputs of
 * layers 2, L / 2 and L - 3, which the runtime also assumes) where they differ, else the last three.
 */
export function defaultAuxLayers(numLayers: number): [number, number, number] {
  if (numLayers < 3) throw codedError('E_ARG', `an EAGLE-3 head reads three distinct layers of its target; a ${numLayers}-layer target has fewer`);
  const safe = [2, Math.floor(numLayers / 2), numLayers - 3];
  if (new Set(safe).size === 3) return safe as [number, number, number];
  return [numLayers - 3, numLayers - 2, numLayers - 1];
}

/** The `n` most frequent ids of a token stream (ties: lower id first), ascending: an EAGLE-3 draft vocabulary. */
export function frequentIds(tokens: Int32Array, vocabSize: number, n: number): Int32Array {
  if (!Number.isInteger(n) || n < 1 || n > vocabSize) throw codedError('E_ARG', `draft vocabulary: expected 1..${vocabSize} ids, got ${n}`);
  const counts = new Float64Array(vocabSize);
  for (const t of tokens) counts[t] = (counts[t] as number) + 1;
  const order = Array.from({ length: vocabSize }, (_, i) => i).sort((a, b) => (counts[b] as number) - (counts[a] as number) || a - b);
  return Int32Array.from(order.slice(0, n)).sort();
}

/**
 * An EAGLE-3 head under training on a frozen target (SafeAILab's traineagle3 layout and
 * training-time test): fc over three of the target's residual streams, one midlayer reading
 * [norm(embed(token)); norm(x)], its own norm and LM head over a draft vocabulary; `steps` unrolled
 * steps feed each step's output to the next, as drafting does. Loads with --eagle.
 */
export class Eagle3Trainer extends ParamOwner<SpecdecNative.TrainEagle3> {
  private constructor(
    readonly config: Eagle3TrainConfig,
    handle: SpecdecNative.TrainEagle3,
  ) {
    super(handle);
  }

  static create(config: Eagle3TrainConfig, options: TrainerOptions): Eagle3Trainer {
    const b = binding();
    if (typeof b.trainEagle3Create !== 'function') throw codedError('E_UNSUPPORTED', 'the loaded native addon has no EAGLE-3 trainer (an older build?): run `npm run build:native`');
    const aux = config.auxLayers;
    if (aux.length !== 3 || !(aux[0] < aux[1] && aux[1] < aux[2]) || aux[0] < 0) throw codedError('E_ARG', `auxLayers: expected three ascending layer indices, got [${aux.join(', ')}]`);
    const c: SpecdecNative.TrainEagle3Config = { ...layerShape({ ...config, numLayers: 1 }), draftVocabSize: config.draftIds.length };
    return new Eagle3Trainer(config, b.trainEagle3Create(c, options.seed, options.precision ?? 'f32', options.threads ?? 1));
  }

  /** A head shaped like one layer of `target` (SafeAILab's choice), drafting `draftIds`, reading `auxLayers` (default: defaultAuxLayers). */
  static configFor(target: LlamaTrainConfig, draftIds: Int32Array, auxLayers?: readonly [number, number, number]): Eagle3TrainConfig {
    const { vocabSize, hiddenSize, intermediateSize, numHeads, numKvHeads, headDim, rmsNormEps, ropeTheta, maxPositions } = target;
    return {
      vocabSize, hiddenSize, intermediateSize, numHeads, numKvHeads, rmsNormEps, ropeTheta, maxPositions, draftIds,
      auxLayers: auxLayers ?? defaultAuxLayers(target.numLayers),
      ...(headDim !== undefined ? { headDim } : {}),
    };
  }

  lossAndGrad(
    tokens: Int32Array,
    features: Float32Array | Float64Array,
    targetLogits: Float32Array | Float64Array,
    embed: Float32Array | Float64Array,
    batch: number,
    seqLen: number,
    options?: Eagle3LossOptions,
  ): SpecdecNative.Eagle3LossNative {
    return this.h.lossAndGrad(tokens, features, targetLogits, embed, this.config.draftIds, batch, seqLen, options);
  }
  /** Each step's h [batch, steps, seqLen, H] and logits [batch, steps, seqLen, Vd] (rows past the window: zeros). */
  forward(
    tokens: Int32Array,
    features: Float32Array | Float64Array,
    embed: Float32Array | Float64Array,
    batch: number,
    seqLen: number,
    steps: number,
  ): { h: SpecdecNative.TrainValues; logits: SpecdecNative.TrainValues } {
    return this.h.forward(tokens, features, embed, batch, seqLen, steps);
  }
  /** One step on what the frozen target computes for tokens [batch, seqLen + 1]. */
  trainStep(target: LlamaTrainer, tokens: Int32Array, batch: number, seqLen: number, options: AdamWOptions & Eagle3LossOptions): Promise<Eagle3StepResult> {
    return this.h.trainStep(target.native, tokens, batch, seqLen, Int32Array.from(this.config.auxLayers), this.config.draftIds, options);
  }

  /** SafeAILab's EAGLE-3 config.json, with the features' layers as vLLM / SGLang name them. */
  configJson(dtype: SaveDType): Record<string, unknown> {
    const c = this.config;
    return {
      architectures: ['LlamaForCausalLMEagle3'],
      model_type: 'llama',
      vocab_size: c.vocabSize,
      draft_vocab_size: c.draftIds.length,
      target_hidden_size: c.hiddenSize,
      hidden_size: c.hiddenSize,
      intermediate_size: c.intermediateSize,
      num_hidden_layers: 1,
      num_attention_heads: c.numHeads,
      num_key_value_heads: c.numKvHeads,
      head_dim: c.headDim ?? c.hiddenSize / c.numHeads,
      max_position_embeddings: c.maxPositions,
      rms_norm_eps: c.rmsNormEps,
      rope_theta: c.ropeTheta,
      hidden_act: 'silu',
      tie_word_embeddings: false,
      eagle_config: { eagle_aux_hidden_state_layer_ids: [...c.auxLayers] },
      torch_dtype: dtype === 'BF16' ? 'bfloat16' : 'float32',
    };
  }

  /** Writes config.json and model.safetensors (SafeAILab's key names, d2t and t2d included) into dir. */
  save(dir: string, options: { dtype?: SaveDType; metadata?: Record<string, string> } = {}): void {
    const dtype = options.dtype ?? 'F32';
    const ids = this.config.draftIds;
    const d2t = BigInt64Array.from(ids, (t, d) => BigInt(t - d));
    const t2d = new Uint8Array(this.config.vocabSize);
    for (const t of ids) t2d[t] = 1;
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(this.configJson(dtype), null, 2) + '\n');
    writeSafetensors(
      path.join(dir, 'model.safetensors'),
      { ...this.tensors(dtype), d2t: { dtype: 'I64', shape: [ids.length], data: d2t }, t2d: { dtype: 'BOOL', shape: [t2d.length], data: t2d } },
      { format: 'pt', ...(options.metadata ?? {}) },
    );
  }
}

// ---- Schedule and data ------------------------------------------------------------------------

export interface LrSchedule {
  readonly lr: number;
  readonly minLr: number;
  readonly warmupSteps: number;
  readonly totalSteps: number;
}

/** Linear warmup to lr, then cosine decay to minLr at totalSteps. */
export function learningRate(step: number, s: LrSchedule): number {
  if (step < s.warmupSteps) return (s.lr * (step + 1)) / s.warmupSteps;
  const t = Math.min(1, (step - s.warmupSteps) / Math.max(1, s.totalSteps - s.warmupSteps));
  return s.minLr + 0.5 * (s.lr - s.minLr) * (1 + Math.cos(Math.PI * t));
}

/** Random windows of `window` consecutive tokens of a stream, `batch` per call, seeded. */
export class BatchSampler {
  private readonly rand: () => number;
  constructor(
    private readonly ids: Int32Array,
    readonly window: number,
    readonly batch: number,
    seed: number,
  ) {
    if (ids.length < window) throw codedError('E_ARG', `corpus: ${ids.length} tokens are fewer than one window of ${window}`);
    this.rand = seededRandom(seed);
  }
  /** tokens [batch, window] (copies of stream windows). */
  next(): Int32Array {
    const out = new Int32Array(this.batch * this.window);
    for (let b = 0; b < this.batch; b++) {
      const start = Math.floor(this.rand() * (this.ids.length - this.window + 1));
      out.set(this.ids.subarray(start, start + this.window), b * this.window);
    }
    return out;
  }
}

/** Consecutive non-overlapping windows (for a held-out loss): tokens [n, window]. */
export function evalWindows(ids: Int32Array, window: number, n: number): Int32Array {
  const count = Math.min(n, Math.floor(ids.length / window));
  return ids.slice(0, count * window);
}

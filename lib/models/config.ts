// config.json of Llama-family checkpoints (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
// Qwen3ForCausalLM, Phi3ForCausalLM, SmolLM3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM,
// Olmo2ForCausalLM, Exaone4ForCausalLM, GraniteForCausalLM; the text model of
// Gemma3ForConditionalGeneration):
// parsing, defaults as in the HF config classes, and validation with errors that name the file and field.
import * as fs from 'fs';
import * as path from 'path';
import type { ModelConfig } from './causal_lm';

import { codedError } from '../errors';

export { codedError } from '../errors';

export type RopeScaling =
  | { readonly type: 'linear'; readonly factor: number }
  | {
      /**
       * Phi-3's LongRoPE: frequency i divided by shortFactor[i], and rotated q and k scaled by
       * attentionFactor. transformers switches to longFactor once a forward's positions pass
       * originalMaxPositions (and keeps the cache rotated the short way); specdec caps the context at
       * originalMaxPositions instead, where the short factors are exact.
       */
      readonly type: 'longrope';
      readonly shortFactor: readonly number[];
      readonly longFactor: readonly number[];
      readonly originalMaxPositions: number;
      readonly attentionFactor: number;
    }
  | {
      readonly type: 'llama3';
      readonly factor: number;
      readonly lowFreqFactor: number;
      readonly highFreqFactor: number;
      readonly originalMaxPositions: number;
    }
  | {
      /**
       * YaRN (transformers' _compute_yarn_parameters): each frequency between f / factor and f by a
       * linear ramp over the dimensions that turn betaFast to betaSlow times in originalMaxPositions
       * (truncate: the ramp's ends rounded out); rotated q and k scaled by attentionFactor.
       */
      readonly type: 'yarn';
      readonly factor: number;
      readonly originalMaxPositions: number;
      readonly attentionFactor: number;
      readonly betaFast: number;
      readonly betaSlow: number;
      readonly truncate: boolean;
    };

export interface LlamaConfig extends ModelConfig {
  /**
   * The multimodal architecture whose text model this is (Gemma3ForConditionalGeneration: its
   * `text_config`, weights under TEXT_MODEL_LAYOUTS); undefined for a text checkpoint.
   */
  readonly textOf?: string;
  readonly intermediateSize: number;
  readonly rmsNormEps: number;
  readonly ropeTheta: number;
  readonly ropeScaling?: RopeScaling;
  /** Values of each head that rotate (head_dim x partial_rotary_factor; head_dim by default). */
  readonly ropeDim: number;
  /**
   * Per layer, whether q and k rotate (SmolLM3's `no_rope_layers`: 1 = RoPE, 0 = none, "NoPE");
   * undefined when every layer does.
   */
  readonly ropeLayers?: readonly boolean[];
  /**
   * Per layer, its sliding attention window: a token attends to the keys at positions > its own -
   * window (transformers' rule), 0 = the whole context; undefined when no layer slides. Mistral v0.1
   * and Phi-3 (`sliding_window`): every layer; Qwen2 / Qwen3 / SmolLM3 with `use_sliding_window`: the
   * layers `layer_types` marks `sliding_attention`, else those from `max_window_layers` on; Gemma 2:
   * the even layers, Gemma 3: all but every `sliding_window_pattern`-th (or as `layer_types` says).
   * Windows no shorter than the context are dropped (the same function).
   */
  readonly attentionWindows?: readonly number[];
  /**
   * Gemma 3: the layers that rotate with `ropeLocalTheta` (rope_local_base_freq, unscaled: its
   * sliding layers) instead of ropeTheta and ropeScaling.
   */
  readonly ropeLocalLayers?: readonly boolean[];
  readonly ropeLocalTheta?: number;
  /** Softmax scale of q.k when not 1 / sqrt(head_dim) (Gemma: query_pre_attn_scalar^-1/2). */
  readonly attnScale?: number;
  /**
   * Gemma: GeGLU with gelu_pytorch_tanh, every RMSNorm times (1 + w), the attention output and the
   * MLP output normalized before their residual adds (post_attention_layernorm,
   * post_feedforward_layernorm; pre_feedforward_layernorm before the MLP), embeddings times
   * sqrt(hidden_size).
   */
  readonly gemma?: boolean;
  /**
   * OLMo 2 and EXAONE 4: no norm before the attention or the MLP; post_attention_layernorm and
   * post_feedforward_layernorm normalize their outputs before the residual adds. q_norm / k_norm
   * normalize the whole q and k projections (weights [heads x head_dim], OLMo 2), or each head
   * (qkNorm, EXAONE 4), before RoPE.
   */
  readonly postNorms?: boolean;
  /**
   * Granite: embeddings times embeddingMultiplier, each attention / MLP output times
   * residualMultiplier before its residual add, logits divided by logitsScaling (softmax scale
   * attention_multiplier: attnScale). Absent: 1.
   */
  readonly embeddingMultiplier?: number;
  readonly residualMultiplier?: number;
  readonly logitsScaling?: number;
  /** Gemma 2: attention scores and logits soft-capped, c tanh(x / c) (absent: none). */
  readonly attnSoftcap?: number;
  readonly finalSoftcap?: number;
  /** q/k/v projections have biases (Qwen2, or Llama / Qwen3 with attention_bias). */
  readonly qkvBias: boolean;
  /** o_proj has a bias (Llama, Qwen3, SmolLM3 or Gemma with attention_bias). */
  readonly oBias: boolean;
  /**
   * q and k are RMS-normalized per head (weights [head_dim], `self_attn.q_norm` / `k_norm`) after
   * their projections and before RoPE (Qwen3).
   */
  readonly qkNorm: boolean;
  /**
   * q, k, v in one `self_attn.qkv_proj` and gate, up in one `mlp.gate_up_proj` (Phi-3: rows in that
   * order); the runner reads them as row ranges of the fused weights, without a copy.
   */
  readonly fusedProjections: boolean;
  readonly tieWordEmbeddings: boolean;
  /** torch_dtype as written in config.json (informational; the weights' own dtype is used). */
  readonly torchDtype?: string;
}

export const SUPPORTED_ARCHITECTURES = ['LlamaForCausalLM', 'MistralForCausalLM', 'Qwen2ForCausalLM', 'Qwen3ForCausalLM', 'Phi3ForCausalLM', 'SmolLM3ForCausalLM', 'Gemma2ForCausalLM', 'Gemma3ForCausalLM', 'Olmo2ForCausalLM', 'Exaone4ForCausalLM', 'GraniteForCausalLM'] as const;
const MODEL_TYPES: Record<string, string> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
  phi3: 'Phi3ForCausalLM',
  smollm3: 'SmolLM3ForCausalLM',
  gemma2: 'Gemma2ForCausalLM',
  gemma3_text: 'Gemma3ForCausalLM',
  olmo2: 'Olmo2ForCausalLM',
  exaone4: 'Exaone4ForCausalLM',
  granite: 'GraniteForCausalLM',
};
/** More decoder layers than any checkpoint has (the largest have ~130). */
const MAX_LAYERS = 4096;

/** Architectures users will try that are refused with the reason, rather than run approximately. */
const REFUSED: Record<string, string> = {
  Mistral3ForConditionalGeneration: "the text model of multimodal Mistral 3 checkpoints is not wired up (text-only MistralForCausalLM checkpoints and Gemma3ForConditionalGeneration's text model are)",
  LlavaForConditionalGeneration: 'the text model of LLaVA checkpoints is not wired up (its text-only base checkpoint loads)',
};

/**
 * Multimodal checkpoints whose text model runs (text in, text out: the vision tower is not loaded).
 * transformers writes their `text_config` as a diff against the text config class's defaults (the
 * gemma-3-4b config gives 6 fields), so those defaults are here; the weights are found under either
 * of the layouts in TEXT_MODEL_LAYOUTS.
 */
const TEXT_OF: Record<string, { readonly text: string; readonly modelType: string; readonly defaults: Readonly<Record<string, unknown>> }> = {
  Gemma3ForConditionalGeneration: {
    text: 'Gemma3ForCausalLM',
    modelType: 'gemma3_text',
    // transformers' Gemma3TextConfig.__init__ defaults (those this parser reads).
    defaults: {
      vocab_size: 262208,
      hidden_size: 2304,
      intermediate_size: 9216,
      num_hidden_layers: 26,
      num_attention_heads: 8,
      num_key_value_heads: 4,
      head_dim: 256,
      hidden_activation: 'gelu_pytorch_tanh',
      max_position_embeddings: 131072,
      rms_norm_eps: 1e-6,
      eos_token_id: 1,
      bos_token_id: 2,
      tie_word_embeddings: true,
      rope_theta: 1000000,
      attention_bias: false,
      query_pre_attn_scalar: 256,
      sliding_window: 4096,
      rope_local_base_freq: 10000,
      sliding_window_pattern: 6,
    },
  },
};
const WRAPPER_MODEL_TYPES: Record<string, string> = { gemma3: 'Gemma3ForConditionalGeneration' };

/**
 * Where a multimodal checkpoint keeps its text model: [prefix of embed_tokens / layers / norm, name
 * of the LM head], tried in order. The checkpoints as published (transformers < 4.52) use the first;
 * transformers >= 4.52 saves the second.
 */
export const TEXT_MODEL_LAYOUTS: readonly (readonly [string, string])[] = [
  ['language_model.model.', 'language_model.lm_head.weight'],
  ['model.language_model.', 'lm_head.weight'],
];

/** A value as an error message shows it (JSON when it has a JSON form: a BigInt has none). */
function show(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return String(v);
  }
}

/** Parses and validates a config.json object. `file` names the source in errors. */
export function parseLlamaConfig(json: unknown, file = 'config.json'): LlamaConfig {
  let within = '';
  const bad = (msg: string): never => {
    throw codedError('E_FORMAT', `${file}: ${within}${msg}`);
  };
  if (typeof json !== 'object' || json === null || Array.isArray(json)) bad('expected a JSON object');
  let o = json as Record<string, unknown>;
  // Quantized checkpoints (GPTQ, AWQ, bitsandbytes, FP8, compressed-tensors...) store packed weights
  // under other names and dtypes: refused here by their method, not later as a missing tensor.
  const quant = o['quantization_config'];
  if (quant !== undefined && quant !== null) {
    const method = typeof quant === 'object' && !Array.isArray(quant) ? (quant as Record<string, unknown>)['quant_method'] : undefined;
    bad(`quantized checkpoint (quantization_config${typeof method === 'string' ? `, quant_method '${method}'` : ''}): specdec runs f32 / f16 / bf16 weights; use the unquantized checkpoint`);
  }
  // A multimodal wrapper of a supported text model (and no text architecture listed beside it): its
  // text_config, over the text config class's defaults; eos / bos as the wrapper's top level gives
  // them (what generation uses: gemma-3-4b-it ends turns with 106), the dtype from either.
  const archs0 = o['architectures'];
  const listed = Array.isArray(archs0) ? archs0.filter((a): a is string => typeof a === 'string') : [];
  const textOf = listed.some((a) => (SUPPORTED_ARCHITECTURES as readonly string[]).includes(a))
    ? undefined
    : (listed.find((a) => TEXT_OF[a] !== undefined) ?? (archs0 === undefined && typeof o['model_type'] === 'string' ? WRAPPER_MODEL_TYPES[o['model_type']] : undefined));
  if (textOf !== undefined) {
    const w = TEXT_OF[textOf]!;
    const tc = o['text_config'] ?? {};
    if (typeof tc !== 'object' || tc === null || Array.isArray(tc)) bad(`${textOf}: field 'text_config' must be an object, got ${show(tc)}`);
    const t = tc as Record<string, unknown>;
    if (t['model_type'] !== undefined && t['model_type'] !== w.modelType) bad(`${textOf}: text_config.model_type is ${show(t['model_type'])}, expected '${w.modelType}'`);
    const top = (keys: string[]): Record<string, unknown> => Object.fromEntries(keys.filter((k) => o[k] !== undefined && o[k] !== null).map((k) => [k, o[k]]));
    o = { ...w.defaults, ...top(['torch_dtype', 'dtype']), ...t, ...top(['eos_token_id', 'bos_token_id']), architectures: [w.text] };
    within = 'text_config: ';
  }
  const has = (k: string): boolean => o[k] !== undefined && o[k] !== null;
  const int = (k: string, min = 1, fallback?: number): number => {
    if (!has(k)) {
      if (fallback !== undefined) return fallback;
      return bad(`missing field '${k}'`);
    }
    const v = o[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) bad(`field '${k}' must be an integer >= ${min}, got ${show(v)}`);
    return v as number;
  };
  const num = (k: string, fallback: number, positive = true): number => {
    if (!has(k)) return fallback;
    const v = o[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || (positive && v <= 0)) bad(`field '${k}' must be a positive number, got ${show(v)}`);
    return v as number;
  };
  const bool = (k: string, fallback: boolean): boolean => {
    if (!has(k)) return fallback;
    if (typeof o[k] !== 'boolean') bad(`field '${k}' must be a boolean, got ${show(o[k])}`);
    return o[k] as boolean;
  };

  // Architecture: the first supported entry of `architectures`, else from model_type.
  let architecture: string | undefined;
  if (has('architectures')) {
    const archs = o['architectures'];
    if (!Array.isArray(archs) || archs.some((a) => typeof a !== 'string')) bad("field 'architectures' must be an array of strings");
    architecture = (archs as string[]).find((a) => (SUPPORTED_ARCHITECTURES as readonly string[]).includes(a));
    const refused = (archs as string[]).find((a) => REFUSED[a] !== undefined);
    if (architecture === undefined && refused !== undefined) bad(`unsupported architecture ${refused}: ${REFUSED[refused]}`);
    if (architecture === undefined) {
      bad(`unsupported architecture ${show(archs)} (supported: ${SUPPORTED_ARCHITECTURES.join(', ')})`);
    }
  } else if (typeof o['model_type'] === 'string') {
    architecture = MODEL_TYPES[o['model_type']];
    if (architecture === undefined) bad(`unsupported model_type '${o['model_type']}' (supported: ${Object.keys(MODEL_TYPES).join(', ')})`);
  } else {
    bad("missing field 'architectures'");
  }
  const arch = architecture as string;
  const gemma3 = arch === 'Gemma3ForCausalLM';
  const gemma2 = arch === 'Gemma2ForCausalLM';
  const gemma = gemma2 || gemma3;
  const olmo2 = arch === 'Olmo2ForCausalLM';
  const exaone4 = arch === 'Exaone4ForCausalLM';
  const granite = arch === 'GraniteForCausalLM';
  // transformers 5 writes Gemma 3's rotary settings per layer type: the global ones are read as
  // rope_parameters, the sliding layers' base as rope_local_base_freq.
  const rp0 = o['rope_parameters'];
  if (gemma3 && typeof rp0 === 'object' && rp0 !== null && 'full_attention' in rp0) {
    const byType = rp0 as Record<string, unknown>;
    const local = byType['sliding_attention'];
    o = {
      ...o,
      rope_parameters: byType['full_attention'],
      ...(typeof local === 'object' && local !== null && (local as Record<string, unknown>)['rope_theta'] !== undefined
        ? { rope_local_base_freq: (local as Record<string, unknown>)['rope_theta'] }
        : {}),
    };
  }

  const vocabSize = int('vocab_size');
  const hiddenSize = int('hidden_size');
  const intermediateSize = int('intermediate_size');
  const numLayers = int('num_hidden_layers');
  // Per-layer lists (windows, RoPE flags) are built from it: an absurd count must not exhaust memory.
  if (numLayers > MAX_LAYERS) bad(`field 'num_hidden_layers' is ${numLayers}; no checkpoint has more than ${MAX_LAYERS} layers`);
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', 1, numHeads);
  if (numHeads % numKvHeads !== 0) bad(`num_attention_heads (${numHeads}) is not a multiple of num_key_value_heads (${numKvHeads})`);
  if (!has('head_dim') && hiddenSize % numHeads !== 0) bad(`hidden_size (${hiddenSize}) is not a multiple of num_attention_heads (${numHeads}) and head_dim is not given`);
  const headDim = int('head_dim', 1, hiddenSize / numHeads);
  if (headDim % 2 !== 0) bad(`head_dim (${headDim}) must be even (rotary embeddings rotate pairs)`);
  let maxPositions = int('max_position_embeddings');
  const declaredMaxPositions = maxPositions;
  // Sliding-window attention, per layer (as transformers' attention classes read it): Mistral and
  // Phi-3 slide every layer by sliding_window; Qwen2, Qwen3 and SmolLM3 write a sliding_window that
  // applies only with use_sliding_window, and then only to the layers layer_types marks (by default
  // those from max_window_layers on). Llama's config class has no window.
  // Gemma 3 slides every layer but each sliding_window_pattern-th (default 6) by sliding_window
  // (default 4096), Gemma 2 every other layer from layer 0, or as layer_types says. EXAONE 4 slides by
  // sliding_window (default 4096; null: no layer) as layer_types or sliding_window_pattern say.
  const gated = arch === 'Qwen2ForCausalLM' || arch === 'Qwen3ForCausalLM' || arch === 'SmolLM3ForCausalLM';
  const slides = arch === 'MistralForCausalLM' || arch === 'Phi3ForCausalLM' || gemma || (gated && bool('use_sliding_window', false)) || (exaone4 && o['sliding_window'] !== null);
  const window = slides ? int('sliding_window', 1, gemma || exaone4 ? 4096 : 0) : 0;
  // The sliding layers (Gemma 3's also rotate with the local base, whatever the window).
  let sliding: boolean[] | undefined;
  if (window > 0) {
    if ((gated || gemma || exaone4) && has('layer_types')) {
      const v = o['layer_types'];
      if (!Array.isArray(v) || v.length !== numLayers || !v.every((x) => x === 'sliding_attention' || x === 'full_attention')) {
        bad(`field 'layer_types' must give 'sliding_attention' or 'full_attention' for each of the ${numLayers} layers, got ${show(v)}`);
      }
      sliding = (v as string[]).map((x) => x === 'sliding_attention');
    } else if (gated) {
      const first = int('max_window_layers', 0, 28);
      sliding = Array.from({ length: numLayers }, (_, l) => l >= first);
    } else if (gemma) {
      const pattern = gemma2 ? 2 : int('sliding_window_pattern', 1, 6);
      sliding = Array.from({ length: numLayers }, (_, l) => (l + 1) % pattern !== 0);
    } else if (exaone4) {
      // Exaone4Config: an integer p slides all but every p-th layer (default 4); a string of L (local)
      // and G (global) repeats from layer 0, the last layer global whatever it says.
      const p = o['sliding_window_pattern'] ?? 4;
      if (typeof p === 'string' && /^[LG]+$/.test(p)) {
        sliding = Array.from({ length: numLayers }, (_, l) => l < numLayers - 1 && p[l % p.length] === 'L');
      } else {
        const every = int('sliding_window_pattern', 1, 4);
        sliding = Array.from({ length: numLayers }, (_, l) => (l + 1) % every !== 0);
      }
    } else {
      sliding = Array.from({ length: numLayers }, () => true);
    }
  }
  let attentionWindows = sliding?.map((s) => (s ? window : 0));

  let attnSoftcap: number | undefined;
  let finalSoftcap: number | undefined;
  if (gemma) {
    // Gemma2MLP / Gemma3MLP: ACT2FN[hidden_activation]; the config classes default to gelu_pytorch_tanh.
    const act = o['hidden_activation'] ?? o['hidden_act'] ?? 'gelu_pytorch_tanh';
    if (act !== 'gelu_pytorch_tanh') bad(`hidden_activation ${show(act)} is not supported for ${gemma2 ? 'Gemma 2' : 'Gemma 3'} (only 'gelu_pytorch_tanh')`);
    // Soft-capping: Gemma 2 (defaults 50 and 30; null turns one off); Gemma 3 has none.
    if (gemma2) {
      const cap = (k: string, fallback: number): number | undefined => (o[k] === null ? undefined : num(k, fallback));
      attnSoftcap = cap('attn_logit_softcapping', 50);
      finalSoftcap = cap('final_logit_softcapping', 30);
    } else {
      for (const k of ['attn_logit_softcapping', 'final_logit_softcapping']) if (has(k)) bad(`${k} = ${show(o[k])}: Gemma 3 has no logit soft-capping`);
    }
  } else if (has('hidden_act') && o['hidden_act'] !== 'silu') {
    bad(`hidden_act '${String(o['hidden_act'])}' is not supported (only 'silu')`);
  }
  if (bool('mlp_bias', false)) bad("mlp_bias = true is not supported");
  // Phi-3's projections carry no biases whatever the config says (transformers' Phi3Attention).
  const attentionBias = arch !== 'Phi3ForCausalLM' && bool('attention_bias', false);
  // Rotation of the first part of each head only (Phi-4-mini: 0.75): transformers rotates
  // int(head_dim x factor) values, with frequencies computed over that width. transformers 4 writes
  // the factor at the top level, 5 may write it inside rope_parameters.
  let ropeDim = headDim;
  const rp = o['rope_parameters'];
  const inRope = typeof rp === 'object' && rp !== null && !Array.isArray(rp) ? (rp as Record<string, unknown>)['partial_rotary_factor'] : undefined;
  if (has('partial_rotary_factor') && inRope !== undefined && inRope !== o['partial_rotary_factor']) {
    bad(`partial_rotary_factor ${show(o['partial_rotary_factor'])} and rope_parameters.partial_rotary_factor ${show(inRope)} disagree`);
  }
  if (has('partial_rotary_factor') || (inRope !== undefined && inRope !== null)) {
    const f = has('partial_rotary_factor') ? o['partial_rotary_factor'] : inRope;
    if (typeof f !== 'number' || !(f > 0 && f <= 1)) bad(`field 'partial_rotary_factor' must be a number in (0, 1], got ${show(f)}`);
    ropeDim = Math.floor(headDim * (f as number));
    if (ropeDim < 2 || ropeDim % 2 !== 0) bad(`partial_rotary_factor ${show(f)} rotates ${ropeDim} of head_dim ${headDim} values: must be an even number >= 2`);
  }

  // Rotary settings: transformers 4 writes rope_theta and rope_scaling at the top level; transformers
  // 5 writes one rope_parameters object (rope_type, rope_theta and the scaling fields).
  const ropeKey = has('rope_parameters') ? 'rope_parameters' : 'rope_scaling';
  let ropeScaling: RopeScaling | undefined;
  let ropeParamsTheta: number | undefined;
  if (has(ropeKey)) {
    const rs = o[ropeKey];
    if (typeof rs !== 'object' || rs === null || Array.isArray(rs)) bad(`field '${ropeKey}' must be an object or null`);
    const r = rs as Record<string, unknown>;
    const type = r['rope_type'] ?? r['type'] ?? (ropeKey === 'rope_parameters' ? 'default' : undefined);
    const rnum = (k: string): number => {
      const v = r[k];
      if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) bad(`${ropeKey}.${k} must be a positive number, got ${show(v)}`);
      return v as number;
    };
    if (r['rope_theta'] !== undefined) ropeParamsTheta = rnum('rope_theta');
    if (type === 'linear') {
      ropeScaling = { type: 'linear', factor: rnum('factor') };
    } else if (type === 'llama3') {
      ropeScaling = {
        type: 'llama3',
        factor: rnum('factor'),
        lowFreqFactor: rnum('low_freq_factor'),
        highFreqFactor: rnum('high_freq_factor'),
        originalMaxPositions: rnum('original_max_position_embeddings'),
      };
      if (ropeScaling.highFreqFactor <= ropeScaling.lowFreqFactor) bad(`${ropeKey}.high_freq_factor must exceed low_freq_factor`);
    } else if (type === 'longrope') {
      const factors = (k: string): number[] => {
        const v = r[k];
        if (!Array.isArray(v) || v.length !== ropeDim / 2 || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && x > 0)) {
          bad(`${ropeKey}.${k} must be ${ropeDim / 2} positive numbers (one per rotated pair: ${ropeDim} rotary dims), got ${show(v)}`);
        }
        return v as number[];
      };
      // transformers (_compute_longrope_parameters): with original_max_position_embeddings (Phi-3
      // writes it at the top level), factor = max_position_embeddings / it; else the scaling's factor.
      const origField = r['original_max_position_embeddings'] !== undefined ? rnum('original_max_position_embeddings') : has('original_max_position_embeddings') ? int('original_max_position_embeddings') : undefined;
      const originalMaxPositions = origField ?? declaredMaxPositions;
      const factor = origField !== undefined ? declaredMaxPositions / origField : r['factor'] !== undefined ? rnum('factor') : 1;
      const attentionFactor = r['attention_factor'] !== undefined ? rnum('attention_factor') : factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(originalMaxPositions));
      ropeScaling = { type: 'longrope', shortFactor: factors('short_factor'), longFactor: factors('long_factor'), originalMaxPositions, attentionFactor };
      // Only the short factors are exact for every position transformers gives them to.
      if (originalMaxPositions < maxPositions) maxPositions = originalMaxPositions;
    } else if (type === 'yarn') {
      const factor = rnum('factor');
      // With original_max_position_embeddings, recent transformers scale by max_position_embeddings /
      // it (DeepSeek-V3's convention) and older ones by `factor`: run only where both agree.
      const origWritten = r['original_max_position_embeddings'] !== undefined && r['original_max_position_embeddings'] !== null ? rnum('original_max_position_embeddings') : undefined;
      if (origWritten !== undefined && Math.abs(declaredMaxPositions / origWritten - factor) > 1e-9 * factor) {
        bad(
          `${ropeKey}: yarn factor ${factor} disagrees with max_position_embeddings / original_max_position_embeddings = ${declaredMaxPositions} / ${origWritten}: ` +
            `recent transformers versions scale by the ratio, older ones by factor; set max_position_embeddings to ${factor * origWritten} (factor x original) so that both agree`,
        );
      }
      const opt = (k: string): number | undefined => (r[k] === undefined || r[k] === null ? undefined : rnum(k));
      // get_mscale of transformers: 0.1 m ln(s) + 1 above a scale of 1.
      const mscale = (s: number, m = 1): number => (s <= 1 ? 1 : 0.1 * m * Math.log(s) + 1);
      const ms = opt('mscale');
      const msAll = opt('mscale_all_dim');
      const attentionFactor = opt('attention_factor') ?? (ms && msAll ? mscale(factor, ms) / mscale(factor, msAll) : mscale(factor));
      const truncate = r['truncate'] ?? true;
      if (typeof truncate !== 'boolean') bad(`${ropeKey}.truncate must be a boolean, got ${show(truncate)}`);
      // HF: beta_fast / beta_slow `or` their defaults (a 0 is the default too).
      ropeScaling = { type: 'yarn', factor, originalMaxPositions: origWritten ?? declaredMaxPositions, attentionFactor, betaFast: opt('beta_fast') || 32, betaSlow: opt('beta_slow') || 1, truncate: truncate as boolean };
    } else if (type !== 'default') {
      bad(`${ropeKey} type ${show(type)} is not supported (supported: default, linear, llama3, longrope, yarn)`);
    }
  }
  const topTheta = has('rope_theta') ? num('rope_theta', 10000) : undefined;
  if (ropeParamsTheta !== undefined && topTheta !== undefined && ropeParamsTheta !== topTheta) {
    bad(`rope_theta ${topTheta} and rope_parameters.rope_theta ${ropeParamsTheta} disagree`);
  }
  const ropeTheta = ropeParamsTheta ?? topTheta ?? (gemma3 ? 1000000 : 10000);
  // Gemma: query_pre_attn_scalar (default 256) sets the softmax scale; Gemma 3's sliding layers rotate
  // with rope_local_base_freq (default 10000) and no scaling.
  // Granite: attention_multiplier is the softmax scale itself (GraniteConfig's default 1).
  const attnScale = gemma ? 1 / Math.sqrt(num('query_pre_attn_scalar', 256)) : granite ? num('attention_multiplier', 1) : undefined;
  // Granite's other multipliers (GraniteConfig's defaults 1).
  const graniteScales = granite
    ? { embeddingMultiplier: num('embedding_multiplier', 1), residualMultiplier: num('residual_multiplier', 1), logitsScaling: num('logits_scaling', 1) }
    : undefined;
  const ropeLocalTheta = gemma3 ? num('rope_local_base_freq', 10000) : undefined;
  // SmolLM3: no_rope_layers[l] = 1 where layer l rotates q and k; written out by transformers, else
  // (its config class) every no_rope_layer_interval-th layer (default 4) goes without.
  let ropeLayers: boolean[] | undefined;
  // Exaone4Attention: with a sliding window the global layers go without RoPE ("global NoPE").
  if (exaone4 && sliding !== undefined) ropeLayers = sliding.slice();
  if (arch === 'SmolLM3ForCausalLM') {
    if (has('no_rope_layers')) {
      const v = o['no_rope_layers'];
      if (!Array.isArray(v) || v.length !== numLayers || !v.every((x) => x === 0 || x === 1)) {
        bad(`field 'no_rope_layers' must list 0 or 1 for each of the ${numLayers} layers, got ${show(v)}`);
      }
      ropeLayers = (v as number[]).map((x) => x === 1);
    } else {
      const every = int('no_rope_layer_interval', 1, 4);
      ropeLayers = Array.from({ length: numLayers }, (_, l) => (l + 1) % every !== 0);
    }
  }
  // A window as long as the context changes nothing: dropped, so those layers keep every fast path.
  if (attentionWindows !== undefined) {
    attentionWindows = attentionWindows.map((w) => (w >= maxPositions ? 0 : w));
    if (attentionWindows.every((w) => w === 0)) attentionWindows = undefined;
  }
  // The checkpoint's precision: torch_dtype (transformers 4) or dtype (transformers 5).
  const dtypeName = typeof o['torch_dtype'] === 'string' ? o['torch_dtype'] : typeof o['dtype'] === 'string' ? o['dtype'] : undefined;

  const eos = o['eos_token_id'];
  let eosTokenIds: number[] = [];
  if (typeof eos === 'number') eosTokenIds = [eos];
  else if (Array.isArray(eos) && eos.every((x) => typeof x === 'number')) eosTokenIds = eos as number[];
  else if (eos !== undefined && eos !== null) bad(`field 'eos_token_id' must be an integer or an array of integers, got ${show(eos)}`);
  for (const id of eosTokenIds) if (!Number.isSafeInteger(id) || id < 0 || id >= vocabSize) bad(`eos_token_id ${id} is outside the vocabulary`);
  const bos = has('bos_token_id') ? int('bos_token_id', 0) : undefined;
  if (bos !== undefined && bos >= vocabSize) bad(`bos_token_id ${bos} is outside the vocabulary [0, ${vocabSize})`);

  const cfg: LlamaConfig = {
    architecture: arch,
    vocabSize,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    maxPositions,
    eosTokenIds,
    ...(bos !== undefined ? { bosTokenId: bos } : {}),
    rmsNormEps: num('rms_norm_eps', olmo2 || exaone4 ? 1e-5 : 1e-6),
    ropeTheta,
    ...(ropeScaling !== undefined ? { ropeScaling } : {}),
    ropeDim,
    ...(ropeLayers !== undefined ? { ropeLayers } : {}),
    ...(attentionWindows !== undefined ? { attentionWindows } : {}),
    ...(gemma3 ? { ropeLocalLayers: sliding as boolean[], ropeLocalTheta: ropeLocalTheta as number } : {}),
    ...(gemma ? { attnScale: attnScale as number, gemma: true } : {}),
    ...(granite ? { attnScale: attnScale as number, ...graniteScales } : {}),
    ...(attnSoftcap !== undefined ? { attnSoftcap } : {}),
    ...(finalSoftcap !== undefined ? { finalSoftcap } : {}),
    // HF: Qwen2 always has q/k/v biases and none on o_proj; Llama, Qwen3, Gemma and OLMo 2 put attention_bias on all four.
    qkvBias: arch === 'Qwen2ForCausalLM' || attentionBias,
    oBias: (arch === 'LlamaForCausalLM' || arch === 'Qwen3ForCausalLM' || arch === 'SmolLM3ForCausalLM' || gemma || olmo2 || granite) && attentionBias,
    qkNorm: arch === 'Qwen3ForCausalLM' || gemma3 || exaone4,
    ...(olmo2 || exaone4 ? { postNorms: true } : {}),
    fusedProjections: arch === 'Phi3ForCausalLM',
    tieWordEmbeddings: bool('tie_word_embeddings', gemma),
    ...(dtypeName !== undefined ? { torchDtype: dtypeName } : {}),
    ...(textOf !== undefined ? { textOf } : {}),
  };
  return cfg;
}

/**
 * Reads `dir/config.json` (E_FORMAT when missing or malformed). The stop tokens also take
 * generation_config.json's eos_token_id where there is one (what transformers' generate stops at:
 * Llama-3-8B-Instruct's config.json names only <|end_of_text|>, its generation_config.json
 * <|eot_id|> too).
 */
export function readLlamaConfig(dir: string): LlamaConfig {
  const config = readConfigJson(dir);
  const gen = readGenerationEos(dir, config.vocabSize);
  const eos = [...config.eosTokenIds, ...gen.filter((id) => !config.eosTokenIds.includes(id))];
  return eos.length === config.eosTokenIds.length ? config : { ...config, eosTokenIds: eos };
}

/** eos_token_id of `dir/generation_config.json` ([] without the file or the field). */
function readGenerationEos(dir: string, vocabSize: number): number[] {
  const file = path.join(dir, 'generation_config.json');
  if (!fs.existsSync(file)) return [];
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw codedError('E_FORMAT', `${file}: invalid JSON (${(e as Error).message})`);
  }
  const eos = typeof json === 'object' && json !== null ? (json as Record<string, unknown>)['eos_token_id'] : undefined;
  if (eos === undefined || eos === null) return [];
  const ids = typeof eos === 'number' ? [eos] : Array.isArray(eos) ? eos : undefined;
  if (!ids || !ids.every((id) => Number.isSafeInteger(id) && (id as number) >= 0 && (id as number) < vocabSize)) {
    throw codedError('E_FORMAT', `${file}: field 'eos_token_id' must be a token id or a list of token ids in [0, ${vocabSize}), got ${show(eos)}`);
  }
  return ids as number[];
}

function readConfigJson(dir: string): LlamaConfig {
  const file = path.join(dir, 'config.json');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as { code?: string }).code;
    throw codedError('E_FORMAT', code === 'ENOENT' ? `${file}: not found (a model directory needs config.json)` : `${file}: cannot read (${(e as Error).message})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw codedError('E_FORMAT', `${file}: invalid JSON (${(e as Error).message})`);
  }
  return parseLlamaConfig(json, file);
}

/** The native runner's view of the config. */
export function toNativeConfig(c: LlamaConfig): SpecdecNative.LlamaNativeConfig {
  return {
    architecture: c.architecture,
    vocabSize: c.vocabSize,
    hiddenSize: c.hiddenSize,
    intermediateSize: c.intermediateSize,
    numLayers: c.numLayers,
    numHeads: c.numHeads,
    numKvHeads: c.numKvHeads,
    headDim: c.headDim,
    maxPositions: c.maxPositions,
    rmsNormEps: c.rmsNormEps,
    ropeTheta: c.ropeTheta,
    ropeDim: c.ropeDim,
    ...(c.ropeLayers !== undefined ? { ropeLayers: [...c.ropeLayers] } : {}),
    ...(c.attentionWindows !== undefined ? { attentionWindows: [...c.attentionWindows] } : {}),
    ...(c.ropeLocalLayers !== undefined ? { ropeLocalLayers: [...c.ropeLocalLayers], ropeLocalTheta: c.ropeLocalTheta ?? 10000 } : {}),
    ...(c.attnScale !== undefined ? { attnScale: c.attnScale } : {}),
    ...(c.gemma ? { geluMlp: true, normOffset: 1, sandwichNorms: true, scaleEmbeddings: true } : {}),
    ...(c.postNorms ? { postNorms: true } : {}),
    ...(c.embeddingMultiplier !== undefined ? { embeddingMultiplier: c.embeddingMultiplier } : {}),
    ...(c.residualMultiplier !== undefined ? { residualMultiplier: c.residualMultiplier } : {}),
    ...(c.logitsScaling !== undefined ? { logitsScaling: c.logitsScaling } : {}),
    ...(c.attnSoftcap !== undefined ? { attnSoftcap: c.attnSoftcap } : {}),
    ...(c.finalSoftcap !== undefined ? { finalSoftcap: c.finalSoftcap } : {}),
    ...(c.ropeScaling === undefined
      ? {}
      : c.ropeScaling.type === 'longrope'
        ? { ropeScaling: { type: 'longrope' as const, shortFactor: [...c.ropeScaling.shortFactor], attentionFactor: c.ropeScaling.attentionFactor } }
        : { ropeScaling: { ...c.ropeScaling } }),
    qkvBias: c.qkvBias,
    oBias: c.oBias,
    qkNorm: c.qkNorm,
    fusedProjections: c.fusedProjections,
    tieWordEmbeddings: c.tieWordEmbeddings,
  };
}

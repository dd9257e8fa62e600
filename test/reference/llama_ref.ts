// Float64 reference of the Llama-family forward, written from the HF modeling code (LlamaModel,
// Qwen2Model, Qwen3Model, MistralModel, Phi3Model, SmolLM3Model, Gemma2Model, Gemma3TextModel): causal attention over the whole
// token list (sliding where the config says), no KV cache. It reads config.json and the safetensors
// files itself (its own parser), so it shares no code with the runner.
import * as fs from 'fs';
import * as path from 'path';

type Mat = { data: Float64Array; shape: number[] };

function bf16(h: number): number {
  const b = new ArrayBuffer(4);
  new DataView(b).setUint32(0, h << 16, true);
  return new DataView(b).getFloat32(0, true);
}
function f16(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Every tensor of a safetensors file, decoded to float64. */
export function readSafetensorsF64(file: string): Map<string, Mat> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const base = 8 + n;
  const out = new Map<string, Mat>();
  for (const [name, h] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [b0] = h.data_offsets;
    const numel = h.shape.reduce((a, b) => a * b, 1);
    const data = new Float64Array(numel);
    for (let i = 0; i < numel; i++) {
      const at = base + b0;
      switch (h.dtype) {
        case 'F32': data[i] = buf.readFloatLE(at + 4 * i); break;
        case 'BF16': data[i] = bf16(buf.readUInt16LE(at + 2 * i)); break;
        case 'F16': data[i] = f16(buf.readUInt16LE(at + 2 * i)); break;
        default: throw new Error(`reference: unsupported dtype ${h.dtype}`);
      }
    }
    out.set(name, { data, shape: h.shape });
  }
  return out;
}

export interface RefOptions {
  /** Round K (after RoPE) and V to this format before attention, as a KV cache of that dtype stores them. */
  readonly kvRound?: 'f16' | 'bf16';
}

export class LlamaReference {
  readonly cfg: Record<string, unknown>;
  readonly V: number;
  readonly H: number;
  readonly I: number;
  readonly L: number;
  readonly NH: number;
  readonly NKV: number;
  readonly D: number;
  readonly eps: number;
  /** Qwen3: per-head RMSNorm of q and k (from the architecture, not from which tensors exist). */
  readonly qkNorm: boolean;
  readonly invFreq: Float64Array;
  /** Whether layer l applies RoPE (SmolLM3Config: no_rope_layers, default from no_rope_layer_interval). */
  private ropeAt(l: number): boolean {
    // Exaone4Attention: RoPE where there is no sliding window at all, or in the sliding layers.
    if (this.exaone4) return this.cfg['sliding_window'] === null || this.exaoneSliding(l);
    const archs = (this.cfg['architectures'] as string[] | undefined) ?? [];
    if (!archs.includes('SmolLM3ForCausalLM') && this.cfg['model_type'] !== 'smollm3') return true;
    const list = this.cfg['no_rope_layers'] as number[] | undefined;
    if (list) return list[l] === 1;
    const every = (this.cfg['no_rope_layer_interval'] as number | undefined) ?? 4;
    return (l + 1) % every !== 0;
  }

  /**
   * Layer l's sliding window, or 0 (full attention), as transformers' attention classes set it:
   * MistralAttention / Phi3Attention take config.sliding_window in every layer; Qwen2, Qwen3 and
   * SmolLM3 only with use_sliding_window, and only in the layers layer_types marks
   * "sliding_attention" (by default from max_window_layers on, 28 unless given); Llama has none.
   */
  private windowAt(l: number): number {
    const c = this.cfg;
    if (this.exaone4) return c['sliding_window'] !== null && this.exaoneSliding(l) ? ((c['sliding_window'] as number | undefined) ?? 4096) : 0;
    const arch = ((c['architectures'] as string[] | undefined) ?? [])[0] ?? '';
    if (this.gemma) return this.gemmaSliding(l) ? ((c['sliding_window'] as number | undefined) ?? 4096) : 0;
    const w = (c['sliding_window'] as number | null | undefined) ?? 0;
    if (arch === 'MistralForCausalLM' || arch === 'Phi3ForCausalLM') return w;
    if (!['Qwen2ForCausalLM', 'Qwen3ForCausalLM', 'SmolLM3ForCausalLM'].includes(arch) || c['use_sliding_window'] !== true) return 0;
    const types = c['layer_types'] as string[] | undefined;
    const sliding = types ? types[l] === 'sliding_attention' : l >= ((c['max_window_layers'] as number | undefined) ?? 28);
    return sliding ? w : 0;
  }

  /**
   * Gemma3TextConfig: layer_types, else every layer but each sliding_window_pattern-th (6) slides;
   * Gemma2Config: layer_types, else the even layers.
   */
  private gemmaSliding(l: number): boolean {
    const types = this.cfg['layer_types'] as string[] | undefined;
    if (types) return types[l] === 'sliding_attention';
    return (l + 1) % (this.gemma2 ? 2 : (this.cfg['sliding_window_pattern'] as number | undefined) ?? 6) !== 0;
  }

  /**
   * Exaone4Config: layer_types, else sliding_window_pattern: an integer p (default 4) makes every
   * p-th layer global; a string of L / G repeats from layer 0, the last layer global.
   */
  private exaoneSliding(l: number): boolean {
    const types = this.cfg['layer_types'] as string[] | undefined;
    if (types) return types[l] === 'sliding_attention';
    const p = (this.cfg['sliding_window_pattern'] as number | string | undefined) ?? 4;
    if (typeof p === 'string') return l < this.L - 1 && p[l % p.length] === 'L';
    return (l + 1) % p !== 0;
  }

  /** Gemma2Config's soft-capping (defaults 50 and 30; null: none); 0 = none. */
  private softcap(key: string, fallback: number): number {
    if (!this.gemma2) return 0;
    const v = this.cfg[key];
    return v === null ? 0 : ((v as number | undefined) ?? fallback);
  }

  /** Rotated values per head: head_dim x partial_rotary_factor (HF Phi3), else head_dim. */
  get R(): number {
    return Math.floor(this.D * ((this.cfg['partial_rotary_factor'] as number | undefined) ?? 1));
  }
  /** LongRoPE's attention factor: cos and sin are multiplied by it (1 otherwise). */
  private ropeScale = 1;
  /** Gemma 3 (Gemma3TextModel): see forward(). */
  private gemma = false;
  private gemma2 = false;
  private gemma3 = false;
  /** OLMo 2 (Olmo2Model): norms on the block outputs only, q/k norms over whole projections. */
  private olmo2 = false;
  /** EXAONE 4 (Exaone4Model): OLMo 2's post-norms, per-head q/k norms, global layers without RoPE. */
  private exaone4 = false;
  /** Norms on the block outputs only (OLMo 2, EXAONE 4). */
  private get postNorms(): boolean {
    return this.olmo2 || this.exaone4;
  }
  /** Granite (GraniteModel): embedding, residual and logit multipliers; attention_multiplier as the scale. */
  private granite = false;
  private mult(k: string): number {
    return this.granite ? ((this.cfg[k] as number | undefined) ?? 1) : 1;
  }
  private invFreqLocal = new Float64Array(0);
  private readonly w: Map<string, Mat>;

  constructor(dir: string) {
    this.cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    const c = this.cfg;
    this.V = c['vocab_size'] as number;
    this.H = c['hidden_size'] as number;
    this.I = c['intermediate_size'] as number;
    this.L = c['num_hidden_layers'] as number;
    this.NH = c['num_attention_heads'] as number;
    this.NKV = (c['num_key_value_heads'] as number | undefined) ?? this.NH;
    this.D = (c['head_dim'] as number | undefined) ?? this.H / this.NH;
    const archs = (c['architectures'] as string[] | undefined) ?? [];
    this.olmo2 = archs.includes('Olmo2ForCausalLM') || c['model_type'] === 'olmo2';
    this.exaone4 = archs.includes('Exaone4ForCausalLM') || c['model_type'] === 'exaone4';
    this.granite = archs.includes('GraniteForCausalLM') || c['model_type'] === 'granite';
    this.eps = (c['rms_norm_eps'] as number | undefined) ?? (this.postNorms ? 1e-5 : 1e-6);
    this.gemma3 = archs.includes('Gemma3ForCausalLM') || c['model_type'] === 'gemma3_text';
    this.gemma2 = archs.includes('Gemma2ForCausalLM') || c['model_type'] === 'gemma2';
    this.gemma = this.gemma2 || this.gemma3;
    this.qkNorm = archs.includes('Qwen3ForCausalLM') || c['model_type'] === 'qwen3' || this.gemma3 || this.exaone4;
    this.w = new Map();
    const index = path.join(dir, 'model.safetensors.index.json');
    const files = fs.existsSync(index)
      ? [...new Set(Object.values((JSON.parse(fs.readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map))]
      : ['model.safetensors'];
    for (const f of files) for (const [k, v] of readSafetensorsF64(path.join(dir, f))) this.w.set(k, v);
    if (archs.includes('Phi3ForCausalLM') || c['model_type'] === 'phi3') this.splitPhi3();
    this.invFreq = this.ropeInvFreq();
    if (this.gemma3) {
      // Gemma3RotaryEmbedding of the sliding layers: rope_local_base_freq, default rope (no scaling).
      const base = (c['rope_local_base_freq'] as number | undefined) ?? 10000;
      this.invFreqLocal = Float64Array.from({ length: this.R / 2 }, (_, i) => 1 / Math.pow(base, (2 * i) / this.R));
    }
  }

  /** HF _compute_default / _linear / _llama3 rope parameters, in float64. */
  private ropeInvFreq(): Float64Array {
    const theta = (this.cfg['rope_theta'] as number | undefined) ?? (this.gemma3 ? 1000000 : 10000);
    // HF: a partial rotation rotates int(head_dim x partial_rotary_factor) values, frequencies over that width.
    const R = this.R;
    const inv = new Float64Array(R / 2);
    for (let i = 0; i < R / 2; i++) inv[i] = 1 / Math.pow(theta, (2 * i) / R);
    const rs = this.cfg['rope_scaling'] as Record<string, number | string> | null | undefined;
    const type = rs ? (rs['rope_type'] ?? rs['type']) : undefined;
    if (rs && type === 'longrope') {
      // HF _compute_longrope_parameters for sequences within original_max_position_embeddings: the
      // short factors; cos and sin scaled by the attention factor (applied in rope()).
      const short = rs['short_factor'] as unknown as number[];
      for (let i = 0; i < inv.length; i++) inv[i] = 1 / (short[i]! * Math.pow(theta, (2 * i) / R));
      const orig = this.cfg['original_max_position_embeddings'] as number;
      const factor = (this.cfg['max_position_embeddings'] as number) / orig;
      this.ropeScale = factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(orig));
    } else if (rs && type === 'linear') {
      for (let i = 0; i < inv.length; i++) inv[i] = inv[i]! / (rs['factor'] as number);
    } else if (rs && type === 'yarn') {
      // HF _compute_yarn_parameters (original_max_position_embeddings, where given, agreeing with
      // max_position_embeddings / factor: both of transformers' conventions).
      const factor = rs['factor'] as number;
      const orig = (rs['original_max_position_embeddings'] as number | undefined) ?? (this.cfg['max_position_embeddings'] as number);
      const betaFast = (rs['beta_fast'] as number | undefined) || 32;
      const betaSlow = (rs['beta_slow'] as number | undefined) || 1;
      const dimOf = (rot: number): number => (R * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(theta));
      let lo = dimOf(betaFast);
      let hi = dimOf(betaSlow);
      if ((rs['truncate'] as unknown) !== false) {
        lo = Math.floor(lo);
        hi = Math.ceil(hi);
      }
      lo = Math.max(lo, 0);
      hi = Math.min(hi, R - 1);
      if (lo === hi) hi += 0.001;
      for (let i = 0; i < inv.length; i++) {
        const extrapolation = 1 - Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
        inv[i] = (inv[i]! / factor) * (1 - extrapolation) + inv[i]! * extrapolation;
      }
      const att = rs['attention_factor'] as number | undefined;
      this.ropeScale = att ?? (factor <= 1 ? 1 : 0.1 * Math.log(factor) + 1);
    } else if (rs && type === 'llama3') {
      const factor = rs['factor'] as number;
      const lo = rs['low_freq_factor'] as number;
      const hi = rs['high_freq_factor'] as number;
      const old = rs['original_max_position_embeddings'] as number;
      const lowWavelen = old / lo;
      const highWavelen = old / hi;
      for (let i = 0; i < inv.length; i++) {
        const f = inv[i]!;
        const wavelen = (2 * Math.PI) / f;
        let g = wavelen > lowWavelen ? f / factor : f;
        const smooth = (old / wavelen - lo) / (hi - lo);
        const smoothed = ((1 - smooth) * g) / factor + smooth * g;
        const medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen);
        if (medium) g = smoothed;
        inv[i] = g;
      }
    }
    return inv;
  }

  /**
   * Phi3Attention / Phi3MLP: q, k, v are the rows of qkv_proj in that order (query_pos = heads x
   * head_dim, then the KV heads' k, then v); gate_up_proj's first half is the gate.
   */
  private splitPhi3(): void {
    const rows = (m: Mat, from: number, to: number): Mat => {
      const K = m.shape[1]!;
      return { data: m.data.slice(from * K, to * K), shape: [to - from, K] };
    };
    const QD = this.NH * this.D;
    const KD = this.NKV * this.D;
    for (let l = 0; l < this.L; l++) {
      const p = `model.layers.${l}.`;
      const qkv = this.get(p + 'self_attn.qkv_proj.weight');
      this.w.set(p + 'self_attn.q_proj.weight', rows(qkv, 0, QD));
      this.w.set(p + 'self_attn.k_proj.weight', rows(qkv, QD, QD + KD));
      this.w.set(p + 'self_attn.v_proj.weight', rows(qkv, QD + KD, QD + 2 * KD));
      const gu = this.get(p + 'mlp.gate_up_proj.weight');
      this.w.set(p + 'mlp.gate_proj.weight', rows(gu, 0, this.I));
      this.w.set(p + 'mlp.up_proj.weight', rows(gu, this.I, 2 * this.I));
    }
  }

  private get(name: string): Mat {
    const m = this.w.get(name);
    if (!m) throw new Error(`reference: missing ${name}`);
    return m;
  }
  private opt(name: string): Mat | undefined {
    return this.w.get(name);
  }

  /** y[n, m] = sum_k x[n, k] w[m, k] (+ b[m]). */
  private linear(x: Float64Array, N: number, K: number, w: Mat, b?: Mat): Float64Array {
    const M = w.shape[0]!;
    const y = new Float64Array(N * M);
    for (let n = 0; n < N; n++)
      for (let m = 0; m < M; m++) {
        let s = b ? b.data[m]! : 0;
        for (let k = 0; k < K; k++) s += x[n * K + k]! * w.data[m * K + k]!;
        y[n * M + m] = s;
      }
    return y;
  }

  /** RMSNorm of N rows of width H (default hidden_size; head_dim for Qwen3's q_norm / k_norm). */
  private rmsnorm(x: Float64Array, N: number, w: Mat, H = this.H): Float64Array {
    const y = new Float64Array(N * H);
    for (let n = 0; n < N; n++) {
      let ss = 0;
      for (let i = 0; i < H; i++) ss += x[n * H + i]! ** 2;
      const r = 1 / Math.sqrt(ss / H + this.eps);
      // Gemma3RMSNorm: times (1 + w).
      for (let i = 0; i < H; i++) y[n * H + i] = x[n * H + i]! * r * (this.gemma ? 1 + w.data[i]! : w.data[i]!);
    }
    return y;
  }

  /** rotate_half RoPE in place on [N, heads, D], over each head's first R values (the rest pass through). */
  private rope(x: Float64Array, N: number, heads: number, positions: readonly number[], invFreq = this.invFreq): void {
    const D = this.D;
    const half = this.R / 2;
    for (let n = 0; n < N; n++)
      for (let h = 0; h < heads; h++) {
        const o = (n * heads + h) * D;
        for (let i = 0; i < half; i++) {
          const a = positions[n]! * invFreq[i]!;
          const x1 = x[o + i]!;
          const x2 = x[o + i + half]!;
          const c = Math.cos(a) * this.ropeScale;
          const s = Math.sin(a) * this.ropeScale;
          x[o + i] = x1 * c - x2 * s;
          x[o + i + half] = x2 * c + x1 * s;
        }
      }
  }

  /**
   * Logits [N, V] (and final hidden [N, H]) of a token list with causal attention (token n sees
   * tokens 0..n, or the last `window` of them in a sliding layer). positions default to 0..N-1.
   */
  /** layerInputs[l]: the residual stream entering layer l, [N, H] (EAGLE-3's features read three of them). */
  forward(tokens: readonly number[], options: RefOptions & { positions?: readonly number[] } = {}): { logits: Float64Array; hidden: Float64Array; layerInputs: Float64Array[] } {
    const { H, I, NH, NKV, D, V } = this;
    const N = tokens.length;
    const positions = options.positions ?? tokens.map((_, i) => i);
    const emb = this.get('model.embed_tokens.weight');
    let x: Float64Array = new Float64Array(N * H);
    tokens.forEach((t, n) => {
      if (t < 0 || t >= V) throw new Error(`reference: token ${t} outside vocab`);
      for (let i = 0; i < H; i++) x[n * H + i] = emb.data[t * H + i]!;
    });
    if (this.gemma) {
      // Gemma3TextScaledWordEmbedding: times sqrt(hidden_size) as a tensor of the weights' dtype.
      const dt = this.cfg['torch_dtype'];
      const norm = dt === 'bfloat16' ? bf16(bf16Bits(Math.sqrt(H))) : dt === 'float16' ? f16(f16Bits(Math.sqrt(H))) : Math.fround(Math.sqrt(H));
      for (let i = 0; i < x.length; i++) x[i] = x[i]! * norm;
    }
    // GraniteModel: inputs_embeds * embedding_multiplier.
    const em = this.mult('embedding_multiplier');
    if (em !== 1) for (let i = 0; i < x.length; i++) x[i] = x[i]! * em;
    const rm = this.mult('residual_multiplier');
    const round = options.kvRound === 'f16' ? (v: number) => f16(f16Bits(v)) : options.kvRound === 'bf16' ? (v: number) => bf16(bf16Bits(v)) : undefined;
    const group = NH / NKV;
    const layerInputs: Float64Array[] = [];
    for (let l = 0; l < this.L; l++) {
      const p = `model.layers.${l}.`;
      layerInputs.push(x.slice());
      // Olmo2DecoderLayer: no input_layernorm (the block reads the residual stream).
      const h = this.postNorms ? x.slice() : this.rmsnorm(x, N, this.get(p + 'input_layernorm.weight'));
      const q = this.linear(h, N, H, this.get(p + 'self_attn.q_proj.weight'), this.opt(p + 'self_attn.q_proj.bias'));
      const k = this.linear(h, N, H, this.get(p + 'self_attn.k_proj.weight'), this.opt(p + 'self_attn.k_proj.bias'));
      const v = this.linear(h, N, H, this.get(p + 'self_attn.v_proj.weight'), this.opt(p + 'self_attn.v_proj.bias'));
      if (this.olmo2) {
        // Olmo2Attention: q_norm / k_norm over the whole projections, before RoPE.
        q.set(this.rmsnorm(q, N, this.get(p + 'self_attn.q_norm.weight'), NH * D));
        k.set(this.rmsnorm(k, N, this.get(p + 'self_attn.k_norm.weight'), NKV * D));
      } else if (this.qkNorm) {
        // Qwen3Attention: q_norm / k_norm over each head's head_dim values, before RoPE.
        q.set(this.rmsnorm(q, N * NH, this.get(p + 'self_attn.q_norm.weight'), D));
        k.set(this.rmsnorm(k, N * NKV, this.get(p + 'self_attn.k_norm.weight'), D));
      }
      // SmolLM3Attention: q and k rotate only where no_rope_layers[layer] is 1.
      if (this.ropeAt(l)) {
        // Gemma 3: the sliding layers use the local rotary embedding.
        const inv = this.gemma3 && this.gemmaSliding(l) ? this.invFreqLocal : this.invFreq;
        this.rope(q, N, NH, positions, inv);
        this.rope(k, N, NKV, positions, inv);
      }
      if (round) {
        for (let i = 0; i < k.length; i++) k[i] = round(Math.fround(k[i]!));
        for (let i = 0; i < v.length; i++) v[i] = round(Math.fround(v[i]!));
      }
      const att = new Float64Array(N * NH * D);
      // Gemma3Attention: scaling = query_pre_attn_scalar ** -0.5.
      // GraniteAttention: scaling = attention_multiplier.
      const scale = this.gemma ? Math.pow((this.cfg['query_pre_attn_scalar'] as number | undefined) ?? 256, -0.5) : this.granite ? this.mult('attention_multiplier') : 1 / Math.sqrt(D);
      // transformers' sliding mask: key j visible to query n when j > n - window.
      const window = this.windowAt(l);
      // Gemma2Attention: scores soft-capped, c tanh(s / c), after the scaling.
      const cap = this.softcap('attn_logit_softcapping', 50);
      for (let n = 0; n < N; n++)
        for (let hh = 0; hh < NH; hh++) {
          const kh = Math.floor(hh / group);
          const s = new Float64Array(n + 1);
          const j0 = window > 0 ? Math.max(0, n - window + 1) : 0;
          let mx = -Infinity;
          for (let j = j0; j <= n; j++) {
            let d = 0;
            for (let i = 0; i < D; i++) d += q[(n * NH + hh) * D + i]! * k[(j * NKV + kh) * D + i]!;
            s[j] = cap > 0 ? cap * Math.tanh((d * scale) / cap) : d * scale;
            mx = Math.max(mx, s[j]!);
          }
          let z = 0;
          for (let j = j0; j <= n; j++) z += s[j] = Math.exp(s[j]! - mx);
          for (let i = 0; i < D; i++) {
            let acc = 0;
            for (let j = j0; j <= n; j++) acc += s[j]! * v[(j * NKV + kh) * D + i]!;
            att[(n * NH + hh) * D + i] = acc / z;
          }
        }
      let o = this.linear(att, N, NH * D, this.get(p + 'self_attn.o_proj.weight'), this.opt(p + 'self_attn.o_proj.bias'));
      // Gemma3DecoderLayer: post_attention_layernorm on the attention output, then the residual;
      // pre_feedforward_layernorm before the MLP, post_feedforward_layernorm after it.
      // Olmo2DecoderLayer: the same post-norms, and no norm before the MLP.
      if (this.gemma || this.postNorms) o = this.rmsnorm(o, N, this.get(p + 'post_attention_layernorm.weight'));
      // GraniteDecoderLayer: residual + hidden * residual_multiplier.
      for (let i = 0; i < x.length; i++) x[i] = x[i]! + o[i]! * rm;
      const h2 = this.postNorms ? x.slice() : this.rmsnorm(x, N, this.get(p + (this.gemma ? 'pre_feedforward_layernorm.weight' : 'post_attention_layernorm.weight')));
      const g = this.linear(h2, N, H, this.get(p + 'mlp.gate_proj.weight'));
      const u = this.linear(h2, N, H, this.get(p + 'mlp.up_proj.weight'));
      for (let i = 0; i < g.length; i++) {
        const a = g[i]!;
        // Gemma: gelu_pytorch_tanh; else SiLU.
        const act = this.gemma ? 0.5 * a * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (a + 0.044715 * a ** 3))) : a / (1 + Math.exp(-a));
        g[i] = act * u[i]!;
      }
      let dn = this.linear(g, N, I, this.get(p + 'mlp.down_proj.weight'));
      if (this.gemma || this.postNorms) dn = this.rmsnorm(dn, N, this.get(p + 'post_feedforward_layernorm.weight'));
      for (let i = 0; i < x.length; i++) x[i] = x[i]! + dn[i]! * rm;
    }
    x = this.rmsnorm(x, N, this.get('model.norm.weight'));
    const tied = this.cfg['tie_word_embeddings'] === true || !this.w.has('lm_head.weight');
    const logits = this.linear(x, N, H, tied ? emb : this.get('lm_head.weight'));
    // Gemma2ForCausalLM: final_logit_softcapping.
    const fcap = this.softcap('final_logit_softcapping', 30);
    if (fcap > 0) for (let i = 0; i < logits.length; i++) logits[i] = fcap * Math.tanh(logits[i]! / fcap);
    // GraniteForCausalLM: logits / logits_scaling.
    const ls = this.mult('logits_scaling');
    if (ls !== 1) for (let i = 0; i < logits.length; i++) logits[i] = logits[i]! / ls;
    return { logits, hidden: x, layerInputs };
  }

  /** Greedy continuation (argmax, lowest index on ties) and the top-2 logit gap at each step. */
  greedy(prompt: readonly number[], steps: number, stop: readonly number[] = []): { tokens: number[]; gaps: number[] } {
    const seq = [...prompt];
    const tokens: number[] = [];
    const gaps: number[] = [];
    for (let s = 0; s < steps && seq.length < this.maxPositions(); s++) {
      const { logits } = this.forward(seq);
      const row = logits.subarray((seq.length - 1) * this.V, seq.length * this.V);
      let best = 0;
      for (let i = 1; i < this.V; i++) if (row[i]! > row[best]!) best = i;
      let second = -Infinity;
      for (let i = 0; i < this.V; i++) if (i !== best) second = Math.max(second, row[i]!);
      tokens.push(best);
      gaps.push(row[best]! - second);
      seq.push(best);
      if (stop.includes(best)) break;
    }
    return { tokens, gaps };
  }

  maxPositions(): number {
    return this.cfg['max_position_embeddings'] as number;
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
function bf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0]!;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
function f16Bits(x: number): number {
  // Round-to-nearest-even through the exact arithmetic of the format (normal range is enough here).
  if (x === 0) return 0;
  const sign = x < 0 ? 0x8000 : 0;
  const a = Math.abs(x);
  let e = Math.floor(Math.log2(a));
  if (a / 2 ** e >= 2) e++;
  if (a / 2 ** e < 1) e--;
  if (e < -14) {
    const q = roundEven(a / 2 ** -24);
    return sign | q;
  }
  let m = roundEven((a / 2 ** e - 1) * 1024);
  if (m === 1024) {
    m = 0;
    e++;
  }
  if (e > 15) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | m;
}
function roundEven(v: number): number {
  const f = Math.floor(v);
  const d = v - f;
  return d > 0.5 || (d === 0.5 && f % 2 === 1) ? f + 1 : f;
}

// A memory-bound benchmark family built from the embedded one by a function-preserving widening:
// hidden size, attention heads, KV heads and the MLP are tiled K times, and every weight that
// reads a tiled vector is divided by K, so each layer computes K copies of the original
// activations and the LM head sums them back (exact in bf16 for K a power of two: the division
// only moves the exponent). RMSNorm of K copies equals RMSNorm of one; attention per head is
// unchanged (head_dim is kept, query head i*nH + h groups with KV head i*nKV + h/g). A tied LM
// head is untied (the embedding is tiled as is, the head divided by K).
//
// The wide target computes the same function (up to f32 summation order), so the draft, the
// Medusa heads and the EAGLE head — widened alike — keep their acceptance while the target costs what a model of
// its size costs: the embedded family at K = 8 is a 51M bf16 target, a 3.5M draft.
import * as fs from 'fs';
import * as path from 'path';
import { argError } from '../lib/errors';
import { bf16BitsToF32, f16BitsToF32, writeSafetensors, type SafetensorsEntry } from '../lib/safetensors';

/** Tensors that are not weights (EAGLE-3's d2t / t2d), copied as stored. */
interface OtherTensor {
  readonly dtype: 'I64' | 'BOOL';
  readonly shape: number[];
  readonly bytes: Buffer;
}

interface RawTensor {
  readonly dtype: 'F32' | 'F16' | 'BF16';
  readonly shape: number[];
  /** Values as f32 (bf16/f16 widen exactly). */
  readonly data: Float32Array;
}

/** Reads a .safetensors file's f32/f16/bf16 tensors (a small file: it is read whole); I64 / BOOL ones go to `others` when given. */
function readTensors(file: string, others?: Map<string, OtherTensor>): Map<string, RawTensor> {
  const buf = fs.readFileSync(file);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const base = 8 + headerLen;
  const out = new Map<string, RawTensor>();
  for (const [name, e] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const bytes = buf.subarray(base + e.data_offsets[0], base + e.data_offsets[1]);
    const n = e.shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    if (e.dtype === 'F32') for (let i = 0; i < n; i++) data[i] = bytes.readFloatLE(4 * i);
    else if (e.dtype === 'BF16') for (let i = 0; i < n; i++) data[i] = bf16BitsToF32(bytes.readUInt16LE(2 * i));
    else if (e.dtype === 'F16') for (let i = 0; i < n; i++) data[i] = f16BitsToF32(bytes.readUInt16LE(2 * i));
    else if (others && (e.dtype === 'I64' || e.dtype === 'BOOL')) {
      others.set(name, { dtype: e.dtype, shape: e.shape, bytes: Buffer.from(bytes) });
      continue;
    } else throw argError(`${file}: tensor '${name}' has dtype ${e.dtype}; widening handles F32, F16 and BF16`);
    out.set(name, { dtype: e.dtype, shape: e.shape, data });
  }
  return out;
}

/**
 * Tiles a tensor K times: `rows` tiles the first dimension (a 2-D weight's outputs, or a 1-D
 * vector), `cols` the second (a weight's inputs: it then reads K copies, so it is divided by K;
 * the embedding, a lookup, is tiled along its hidden dimension undivided: `divide` false).
 */
function tile(t: RawTensor, K: number, rows: boolean, cols: boolean, divide = cols): RawTensor {
  const [O, I] = t.shape.length === 2 ? (t.shape as [number, number]) : [t.shape[0] as number, 1];
  const kr = rows ? K : 1;
  const kc = cols ? K : 1;
  const scale = divide ? 1 / K : 1;
  const data = new Float32Array(O * kr * I * kc);
  const width = I * kc;
  for (let br = 0; br < kr; br++) {
    for (let o = 0; o < O; o++) {
      for (let bc = 0; bc < kc; bc++) {
        const dst = (br * O + o) * width + bc * I;
        for (let i = 0; i < I; i++) data[dst + i] = (t.data[o * I + i] as number) * scale;
      }
    }
  }
  const shape = t.shape.length === 2 ? [O * kr, I * kc] : [O * kr];
  return { dtype: t.dtype, shape, data };
}

function entry(t: RawTensor): SafetensorsEntry {
  return { dtype: t.dtype, shape: t.shape, data: t.data };
}

function checkK(K: number): void {
  if (!Number.isInteger(K) || K < 1 || (K & (K - 1)) !== 0) throw argError(`widening factor K must be a power of two >= 1 (exact in bf16), got ${K}`);
}

/** A Llama config.json widened K times: hidden size, MLP, heads and KV heads; head_dim kept. */
function widenedConfig(cfg: Record<string, unknown>, K: number, src: string): Record<string, unknown> {
  const num = (k: string): number => {
    const v = cfg[k];
    if (typeof v !== 'number') throw argError(`${src}/config.json: '${k}' must be a number to widen`);
    return v;
  };
  const H = num('hidden_size');
  const heads = num('num_attention_heads');
  return {
    ...cfg,
    hidden_size: H * K,
    intermediate_size: num('intermediate_size') * K,
    num_attention_heads: heads * K,
    num_key_value_heads: (typeof cfg['num_key_value_heads'] === 'number' ? (cfg['num_key_value_heads'] as number) : heads) * K,
    head_dim: typeof cfg['head_dim'] === 'number' ? (cfg['head_dim'] as number) : H / heads,
  };
}

/** Widens a Llama checkpoint directory (config.json + model.safetensors) K times into `dst`. */
export function widenLlama(src: string, dst: string, K: number): void {
  checkK(K);
  const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  const tensors = readTensors(path.join(src, 'model.safetensors'));
  const out: Record<string, SafetensorsEntry> = {};
  for (const [name, t] of tensors) {
    if (name === 'model.embed_tokens.weight') out[name] = entry(tile(t, K, false, true, false));
    else if (name === 'lm_head.weight') out[name] = entry(tile(t, K, false, true));
    else if (t.shape.length === 1) out[name] = entry(tile(t, K, true, false));
    else out[name] = entry(tile(t, K, true, true));
  }
  if (cfg['tie_word_embeddings'] === true || !tensors.has('lm_head.weight')) {
    const e = tensors.get('model.embed_tokens.weight');
    if (!e) throw argError(`${src}: no model.embed_tokens.weight`);
    out['lm_head.weight'] = entry(tile(e, K, false, true));
  }
  const wide = { ...widenedConfig(cfg, K, src), tie_word_embeddings: false };
  fs.mkdirSync(dst, { recursive: true });
  fs.writeFileSync(path.join(dst, 'config.json'), JSON.stringify(wide, null, 2));
  writeSafetensors(path.join(dst, 'model.safetensors'), out);
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
    if (fs.existsSync(path.join(src, f))) fs.copyFileSync(path.join(src, f), path.join(dst, f));
  }
}

/** Widens FasterDecoding-layout Medusa heads K times into `dst` (ResBlocks tiled, head LM heads divided). */
export function widenMedusa(src: string, dst: string, K: number): void {
  checkK(K);
  const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  const tensors = readTensors(path.join(src, 'medusa_lm_head.safetensors'));
  const out: Record<string, SafetensorsEntry> = {};
  for (const [name, t] of tensors) {
    if (/\.linear\.(weight|bias)$/.test(name)) out[name] = entry(tile(t, K, true, t.shape.length === 2));
    else out[name] = entry(tile(t, K, false, true)); // `{h}.{L}.weight`: the head's LM head [V, H]
  }
  fs.mkdirSync(dst, { recursive: true });
  const wide: Record<string, unknown> = { ...cfg };
  if (typeof cfg['hidden_size'] === 'number') wide['hidden_size'] = (cfg['hidden_size'] as number) * K;
  fs.writeFileSync(path.join(dst, 'config.json'), JSON.stringify(wide, null, 2));
  writeSafetensors(path.join(dst, 'medusa_lm_head.safetensors'), out);
}

/**
 * A weight whose inputs are `blocks` vectors side by side, each tiled: each block is tiled (and its
 * outputs too when `rows`) and divided by K on its own, and the blocks stay side by side.
 */
function tileBlocks(t: RawTensor, K: number, blocks: number, rows = true): RawTensor {
  const [O, In] = t.shape as [number, number];
  const w = In / blocks;
  const parts = Array.from({ length: blocks }, (_, b) =>
    tile({ dtype: t.dtype, shape: [O, w], data: Float32Array.from({ length: O * w }, (_, i) => t.data[Math.floor(i / w) * In + b * w + (i % w)] as number) }, K, rows, true),
  );
  const rowsOut = rows ? O * K : O;
  const W = w * K;
  const data = new Float32Array(rowsOut * W * blocks);
  for (let o = 0; o < rowsOut; o++) parts.forEach((p, b) => data.set(p.data.subarray(o * W, (o + 1) * W), (o * blocks + b) * W));
  return { dtype: t.dtype, shape: [rowsOut, W * blocks], data };
}

/**
 * Widens an EAGLE head (SafeAILab layouts) K times into `dst`: its layers as a Llama layer's. The
 * weights that read vectors side by side are tiled per block (EAGLE-1/2's fc over [embedding;
 * feature]; EAGLE-3's fc over three residual streams and its q/k/v over [norm(embedding); norm(x)]);
 * EAGLE-3's own LM head keeps its draft-vocabulary rows; d2t / t2d are copied.
 */
export function widenEagle(src: string, dst: string, K: number): void {
  checkK(K);
  const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  const others = new Map<string, OtherTensor>();
  const tensors = readTensors(path.join(src, 'model.safetensors'), others);
  const v3 = tensors.has('midlayer.self_attn.q_proj.weight');
  const out: Record<string, SafetensorsEntry> = {};
  for (const [name, t] of tensors) {
    if (name === 'fc.weight') out[name] = entry(tileBlocks(t, K, v3 ? 3 : 2));
    else if (v3 && /^midlayer\.self_attn\.[qkv]_proj\.weight$/.test(name)) out[name] = entry(tileBlocks(t, K, 2));
    else if (v3 && name === 'lm_head.weight') out[name] = entry(tile(t, K, false, true));
    else if (t.shape.length === 1) out[name] = entry(tile(t, K, true, false));
    else out[name] = entry(tile(t, K, true, true));
  }
  for (const [name, t] of others) {
    out[name] = t.dtype === 'I64'
      ? { dtype: 'I64', shape: t.shape, data: new BigInt64Array(t.bytes.buffer, t.bytes.byteOffset, t.bytes.length / 8).slice() }
      : { dtype: 'BOOL', shape: t.shape, data: Uint8Array.from(t.bytes) };
  }
  const wide = widenedConfig(cfg, K, src);
  if (typeof cfg['target_hidden_size'] === 'number') wide['target_hidden_size'] = (cfg['target_hidden_size'] as number) * K;
  fs.mkdirSync(dst, { recursive: true });
  fs.writeFileSync(path.join(dst, 'config.json'), JSON.stringify(wide, null, 2));
  writeSafetensors(path.join(dst, 'model.safetensors'), out);
}

/**
 * Deepens a Llama checkpoint to `layers` layers by appending identity layers: every weight zero and
 * every norm one, so each adds exactly nothing to the residual stream (x + 0) while its forward
 * costs what a layer of that size costs. The model computes the same function bit for bit; its
 * draft, Medusa and EAGLE heads keep their acceptance, and their cost beside the target's becomes
 * that of a deep model's (an EAGLE head is one layer of the target's sizes).
 */
export function deepenLlama(src: string, dst: string, layers: number): void {
  const cfg = JSON.parse(fs.readFileSync(path.join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  const L = cfg['num_hidden_layers'];
  if (typeof L !== 'number' || !Number.isInteger(layers) || layers < L) throw argError(`deepen: ${src} has ${String(L)} layers; asked for ${layers}`);
  const tensors = readTensors(path.join(src, 'model.safetensors'));
  const out: Record<string, SafetensorsEntry> = {};
  for (const [name, t] of tensors) out[name] = entry(t);
  const prefix = 'model.layers.0.';
  for (let l = L; l < layers; l++) {
    for (const [name, t] of tensors) {
      if (!name.startsWith(prefix)) continue;
      const n = t.data.length;
      out[`model.layers.${l}.${name.slice(prefix.length)}`] = { dtype: t.dtype, shape: [...t.shape], data: new Float32Array(n).fill(t.shape.length === 1 && name.endsWith('norm.weight') ? 1 : 0) };
    }
  }
  fs.mkdirSync(dst, { recursive: true });
  fs.writeFileSync(path.join(dst, 'config.json'), JSON.stringify({ ...cfg, num_hidden_layers: layers }, null, 2));
  writeSafetensors(path.join(dst, 'model.safetensors'), out);
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
    if (fs.existsSync(path.join(src, f))) fs.copyFileSync(path.join(src, f), path.join(dst, f));
  }
}

/**
 * The embedded family (a directory with target/, draft/, medusa/, eagle/ and eagle3/) widened K times into
 * dst/{target,draft,medusa,eagle,eagle3}; parts that are missing are skipped; `targetLayers` also deepens
 * the target (deepenLlama). Returns the directories written.
 */
export function widenFamily(src: string, dst: string, K: number, opts: { readonly targetLayers?: number } = {}): { target?: string; draft?: string; medusa?: string; eagle?: string; eagle3?: string } {
  const out: { target?: string; draft?: string; medusa?: string; eagle?: string; eagle3?: string } = {};
  for (const part of ['target', 'draft'] as const) {
    if (!fs.existsSync(path.join(src, part, 'config.json'))) continue;
    let from = path.join(src, part);
    if (part === 'target' && opts.targetLayers !== undefined) {
      // Deepened first (small), then widened: identity layers tile to identity layers.
      from = path.join(dst, 'target-deep');
      deepenLlama(path.join(src, part), from, opts.targetLayers);
    }
    widenLlama(from, path.join(dst, part), K);
    if (from !== path.join(src, part)) fs.rmSync(from, { recursive: true, force: true });
    out[part] = path.join(dst, part);
  }
  if (fs.existsSync(path.join(src, 'medusa', 'config.json'))) {
    widenMedusa(path.join(src, 'medusa'), path.join(dst, 'medusa'), K);
    out.medusa = path.join(dst, 'medusa');
  }
  for (const part of ['eagle', 'eagle3'] as const) {
    if (!fs.existsSync(path.join(src, part, 'config.json'))) continue;
    widenEagle(path.join(src, part), path.join(dst, part), K);
    out[part] = path.join(dst, part);
  }
  return out;
}

// Model layer ops on tensors (embedding, RMSNorm, matmul, RoPE, SwiGLU, residual add, SiLU).
// Thin typed wrappers over the native ops: CPU or CUDA is chosen by the tensors' device.
import { native } from './native';
import { asTensor, type Tensor } from './tensor';

/// <reference path="../typings/layers.d.ts" />

/** Gathers rows: out[n] = table[ids[n]] as f32 [N, H]. table f32|f16|bf16 [V, H], ids i32 [N]. */
export function embedding(table: Tensor, ids: Tensor, out?: Tensor): Tensor {
  return asTensor(native().layerEmbedding(table, ids, out));
}

/** out = x / sqrt(mean(x^2) + eps) * w. x f32 [N, H], w [H]; pass `out = x` to normalise in place. */
export function rmsnorm(x: Tensor, w: Tensor, eps: number, out?: Tensor): Tensor {
  return asTensor(native().layerRmsnorm(x, w, eps, out));
}

/**
 * x += y, then out = rmsnorm(x, w, eps): a residual add and the next norm as one op (one launch on
 * CUDA), the same bits as addInplace then rmsnorm. Pass `out = x` to normalise in place.
 */
export function addRmsnorm(x: Tensor, y: Tensor, w: Tensor, eps: number, out?: Tensor): Tensor {
  const b = native();
  if (!b.layerAddRmsnorm) {
    addInplace(x, y);
    return rmsnorm(x, w, eps, out);
  }
  return asTensor(b.layerAddRmsnorm(x, y, w, eps, out));
}

/** A CPU weight packed for the k-serial matmul (packSerialWeight). */
export type SerialWeight = SpecdecNative.SerialWeight;

/** out = x @ w^T (+ bias). x f32 [N, K], w f32|f16|bf16 [M, K], bias [M]; out f32 [N, M].
 *  A row's result does not depend on N (batch invariance). With `serial` (w's pack from
 *  packSerialWeight), the CPU runs the k-serial kernel: another summation order, the one the model
 *  runner uses for tiny models' weights. */
export function matmul(x: Tensor, w: Tensor, bias?: Tensor, out?: Tensor, serial?: SerialWeight): Tensor {
  return asTensor(serial ? native().layerMatmul(x, w, bias ?? null, out, serial) : native().layerMatmul(x, w, bias ?? null, out));
}

/**
 * w packed for the CPU's k-serial matmul (cpp/cpu/matmul_serial.h: each output one fma chain in
 * increasing k, the same bits on every instruction set; ~2x the default kernel at a few rows of a
 * small K), or undefined when w does not qualify: a 2-D CPU f32/f16/bf16 weight with K <= 512 and at
 * most 4M elements. The pack is a copy; w must not change after.
 */
export function packSerialWeight(w: Tensor): SerialWeight | undefined {
  return native().layerPackSerial(w) ?? undefined;
}

/**
 * Several matmuls of one x as one op: outs[i] = x @ ws[i]^T (+ biases[i]), the same bits as
 * matmul() each (the CPU splits all their weight blocks over its threads at once). 1 to 3 parts.
 */
export function matmulGroup(x: Tensor, ws: readonly Tensor[], biases: readonly (Tensor | undefined)[]): Tensor[] {
  const b = native();
  if (!b.layerMatmulGroup) return ws.map((w, i) => matmul(x, w, biases[i]));
  return b.layerMatmulGroup(x, [...ws], biases.map((t) => t ?? null)).map(asTensor);
}

/**
 * Rotary embedding in place (HF rotate_half): x f32 [N, heads, D], positions i32 [N], invFreq f32
 * [R/2] with R <= D: the pairs (i, i + R/2) of each head's first R values rotate (R < D: a partial
 * rotation, the rest unchanged).
 */
export function rope(x: Tensor, positions: Tensor, invFreq: Tensor): void {
  native().layerRope(x, positions, invFreq);
}

/** out = silu(gate) * up (SwiGLU). gate, up f32 [N, I]; pass `out = gate` to reuse it. */
export function siluMul(gate: Tensor, up: Tensor, out?: Tensor): Tensor {
  return asTensor(native().layerSiluMul(gate, up, out));
}

/** out = gelu_tanh(gate) * up (GeGLU with transformers' gelu_pytorch_tanh: Gemma). gate, up f32 [N, I]. */
export function geluTanhMul(gate: Tensor, up: Tensor, out?: Tensor): Tensor {
  return asTensor(native().layerGeluTanhMul(gate, up, out));
}

/** x += y (f32, same shape). */
export function addInplace(x: Tensor, y: Tensor): void {
  native().layerAddInplace(x, y);
}

/** x = silu(x) in place (f32). */
export function siluInplace(x: Tensor): void {
  native().layerSiluInplace(x);
}

/** HF inverse frequencies for RoPE: inv_freq[i] = theta^(-2i/D), as f32 (small host array). */
export function ropeInvFreq(headDim: number, theta: number): Float32Array {
  const half = headDim / 2;
  const f = new Float32Array(half);
  for (let i = 0; i < half; i++) f[i] = 1 / Math.pow(theta, (2 * i) / headDim);
  return f;
}

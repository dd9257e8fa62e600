// CUDA kernels of the model layers (embedding, RMSNorm, the CUDA-core matmul, RoPE, SwiGLU, residual
// add, SiLU); the launchers are in layers.cu, the tensor-core matmul in gemm_tc.cuh. A header so that
// test/emu/ can run them on the host.
//
// matmul. bf16 and f16 weights (what checkpoints ship) run on tensor cores (gemm_tc.cuh: f32
// activations split into bf16 pieces, so results stay within f32 rounding); f32 weights, and every
// dtype when SPECDEC_CUDA_MATMUL=simt, run on the CUDA-core kernel below. The choice depends only on
// the weight's dtype, never on N, so both paths are batch invariant.
//
// The CUDA-core kernel serves every N (decode N=1, verification of a tree, prefill): a warp owns
// one output column m (one weight row) and a small group of x rows, and reduces over K in a fixed
// order that depends only on K:
//   lane l accumulates, in this order, k = c*256 + l*8 + j for chunks c = 0, 1, ... and j = 0..7
//   (one f32 accumulator per row), then the 32 lane sums are combined by a fixed xor butterfly.
// Nothing in that order depends on N, on the row's position in the batch or on the grid, so a
// row's result is bit-identical whether it is computed alone or with 63 others. Decode is bound by
// reading the weights, which this kernel does with coalesced 16-byte loads; larger N re-reads a
// weight row once per group of kRows rows (mostly from L2).
#pragma once
#include <cmath>
#include <cstdint>

#include "../cpp/core/spec_math.h"
#include "device.cuh"
#include "kv.cuh"

namespace specdec {
namespace cuda {
namespace layer_kernels {

constexpr int kWarp = 32;
constexpr int kVec = 8;                 // elements per lane per chunk
constexpr int kChunk = kWarp * kVec;    // 256 elements of K per warp step
constexpr int kRows = 8;                // x rows per warp (registers: one accumulator each)
constexpr int kWarpsPerBlock = 8;       // output columns per block

// 8 consecutive weights as f32. `aligned` means a 16-byte (f16/bf16) or 2x16-byte (f32) load is legal.
__device__ __forceinline__ void load8(const float* p, bool aligned, float* v) {
  if (aligned) {
    float4 a = reinterpret_cast<const float4*>(p)[0];
    float4 b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] = p[j];
  }
}
template <typename T>
__device__ __forceinline__ void load8(const T* p, bool aligned, float* v) {
  if (aligned) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] = to_f32(h[j]);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] = to_f32(p[j]);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
  // Fixed butterfly: every lane ends with the same, order-defined sum.
#pragma unroll
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// out[n, m] = sum_k x[n, k] * w[m, k] (+ bias[m]). grid = (ceil(M / kWarpsPerBlock), ceil(N / kRows)).
// bias (any float dtype, may be null). `vec_ok`: K % 8 == 0 and x, w 16-byte aligned, so full chunks may use vector loads. The
// summation order is the same either way (see the file comment).
template <typename W, typename B>
__global__ void matmul_kernel(const float* __restrict__ x, const W* __restrict__ w, const B* __restrict__ bias,
                              float* __restrict__ out, int64_t N, int64_t K, int64_t M, bool vec_ok) {
  const int lane = threadIdx.x % kWarp;
  const int64_t m = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kRows;
  if (m >= M) return;  // whole warps exit together: no partial-warp shuffles
  const int rows = N - n0 < kRows ? static_cast<int>(N - n0) : kRows;
  const W* wrow = w + m * K;
  const float* xbase = x + n0 * K;

  float acc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) acc[r] = 0.f;

  for (int64_t c = 0; c < K; c += kChunk) {
    const int64_t k = c + static_cast<int64_t>(lane) * kVec;
    if (k + kVec <= K) {
      float wv[kVec];
      load8(wrow + k, vec_ok, wv);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        if (r < rows) {
          float xv[kVec];
          load8(xbase + r * K + k, vec_ok, xv);
#pragma unroll
          for (int j = 0; j < kVec; ++j) acc[r] += xv[j] * wv[j];
        }
      }
    } else if (k < K) {
      // The ragged end of K: the same j order, fewer terms.
      const int valid = static_cast<int>(K - k);
      for (int j = 0; j < valid; ++j) {
        const float wj = to_f32(wrow[k + j]);
#pragma unroll
        for (int r = 0; r < kRows; ++r)
          if (r < rows) acc[r] += xbase[r * K + k + j] * wj;
      }
    }
  }

  const float b = bias ? to_f32(bias[m]) : 0.f;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float s = warp_sum(acc[r]);  // every lane takes part, so the loop bound is warp-uniform
    if (lane == 0 && r < rows) out[(n0 + r) * M + m] = bias ? s + b : s;
  }
}

// One block per token: out[n, :] = table[ids[n], :] (times scale unless it is 1: Gemma's sqrt(hidden)).
template <typename T>
__global__ void embedding_kernel(const T* __restrict__ table, const int32_t* __restrict__ ids, float* __restrict__ out,
                                 int64_t V, int64_t H, float scale) {
  const int64_t n = blockIdx.x;
  const int32_t id = ids[n];
  if (id < 0 || id >= V) return;  // validated on the host; never read out of bounds regardless
  const T* row = table + static_cast<int64_t>(id) * H;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    const float v = to_f32_exact(row[h]);
    out[n * H + h] = scale == 1.f ? v : v * scale;
  }
}

// Block-wide sum (blockDim.x a multiple of 32, <= 1024), fixed order; result broadcast to all threads.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  v = warp_sum(v);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  const int warps = blockDim.x / kWarp;
  float t = lane < warps ? partial[lane] : 0.f;
  t = warp_sum(t);
  __syncthreads();  // partial[] may be reused by a later call
  return t;
}

// One row of H values normalized by the whole block (out may be xr: each thread reads x[h] before
// writing out[h] for the same h). rmsnorm_kernel's body, and Qwen3's per-head norms inside
// rope_qk_append_kernel: the same bits for the same row and block size.
template <typename T>
__device__ __forceinline__ void rmsnorm_row(const float* xr, const T* __restrict__ w, float eps, float* orow, int64_t H) {
  float ss = 0.f;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) ss += xr[h] * xr[h];
  ss = block_sum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(H) + eps);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) orow[h] = xr[h] * inv * to_f32(w[h]);
}

template <typename T>
__global__ void rmsnorm_kernel(const float* x, const T* __restrict__ w, float eps, float* out, int64_t H) {
  rmsnorm_row(x + static_cast<int64_t>(blockIdx.x) * H, w, eps, out + static_cast<int64_t>(blockIdx.x) * H, H);
}

// x += y, then out = rmsnorm(x) (the residual add and the next block's norm in one launch): the same
// bits as add_kernel then rmsnorm_kernel, since every thread sums the squares of the same elements in
// the same order (each thread reads back only what it wrote). out may alias x, not y.
template <typename T>
__global__ void add_rmsnorm_kernel(float* x, const float* y, const T* __restrict__ w, float eps, float* out, int64_t H) {
  float* xr = x + static_cast<int64_t>(blockIdx.x) * H;
  const float* yr = y + static_cast<int64_t>(blockIdx.x) * H;
  float* orow = out + static_cast<int64_t>(blockIdx.x) * H;
  float ss = 0.f;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    xr[h] += yr[h];
    ss += xr[h] * xr[h];
  }
  ss = block_sum(ss);
  const float inv = rsqrtf(ss / static_cast<float>(H) + eps);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) orow[h] = xr[h] * inv * to_f32(w[h]);
}

// Rotates the pair (i, i + half) of one head's vector v of token position p.
__device__ __forceinline__ void rope_pair(float* __restrict__ v, int32_t p, const float* __restrict__ inv_freq, int64_t half,
                                          int64_t i, float scale) {
  const float angle = static_cast<float>(p) * inv_freq[i];  // f32, as HF
  float s, c;
  sincosf(angle, &s, &c);  // full-precision range reduction (positions reach 1e5+)
  c = __fmul_rn(c, scale);  // HF: cos and sin times LongRoPE's attention factor (1: exact)
  s = __fmul_rn(s, scale);
  const float a = v[i], b = v[i + half];
  // Each product rounded, then the sum (as the CPU computes it): _rn stops nvcc from contracting
  // either side into an FMA, which it might do differently in each kernel that inlines this.
  v[i] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  v[i + half] = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

// Rotates one head's vector v of token position p: the pairs (i, i + half), i < half, one per thread
// in turn (half = rotary dims / 2: head dim / 2, or fewer for a partial rotation, whose other values
// stay as they are).
__device__ __forceinline__ void rope_head(float* __restrict__ v, int32_t p, const float* __restrict__ inv_freq, int64_t half,
                                          float scale) {
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) rope_pair(v, p, inv_freq, half, i, scale);
}

// One block per (token, head); half = inv_freq's length.
__global__ void rope_kernel(float* __restrict__ x, const int32_t* __restrict__ pos, const float* __restrict__ inv_freq,
                            int64_t heads, int64_t D, int64_t half, float scale) {
  rope_head(x + static_cast<int64_t>(blockIdx.x) * D, pos[blockIdx.x / heads], inv_freq, half, scale);
}

// q [N, hq, D] and k [N, hk, D] in one launch (a layer's two rotations): blocks 0 .. N hq - 1 take q's
// heads, the rest k's; each head exactly as rope_kernel rotates it.
__global__ void rope_qk_kernel(float* __restrict__ q, float* __restrict__ k, const int32_t* __restrict__ pos,
                               const float* __restrict__ inv_freq, int64_t N, int64_t hq, int64_t hk, int64_t D,
                               int64_t half, float scale) {
  const int64_t b = blockIdx.x;
  if (b < N * hq) rope_head(q + b * D, pos[b / hq], inv_freq, half, scale);
  else rope_head(k + (b - N * hq) * D, pos[(b - N * hq) / hk], inv_freq, half, scale);
}

// A layer's q and k rotations and its K/V append in one launch (the bits of rope_qk_kernel, then
// kv_kernels::kv_append_kernel): blocks 0 .. N hq - 1 rotate q's heads; block N hq + n rotates token
// n's k heads (every pair by rope_pair, as rope_head does) and then, after a barrier, writes its
// rotated K row and its V row to the token's slot.
template <typename KVT>
__global__ void rope_qk_append_kernel(float* __restrict__ q, float* __restrict__ k, const void* v, int v_dtype,
                                      const int32_t* __restrict__ pos, const float* __restrict__ inv_freq,
                                      const float* __restrict__ q_norm, const float* __restrict__ k_norm, float eps,
                                      int64_t N, int64_t hq, int64_t hk, int64_t D, int64_t half, float rope_scale, KVT* kv,
                                      const int32_t* qo_indptr,
                                      const int32_t* page_indptr, const int32_t* page_indices, const int32_t* prefix_len,
                                      int B, int page_size) {
  const int64_t b = blockIdx.x;
  if (b < N * hq) {
    if (q_norm) {
      rmsnorm_row(q + b * D, q_norm, eps, q + b * D, D);
      __syncthreads();  // a rotation pairs values that other threads normalized
    }
    rope_head(q + b * D, pos[b / hq], inv_freq, half, rope_scale);
    return;
  }
  const int64_t n = b - N * hq;
  float* kn = k + n * hk * D;
  const int32_t p = pos[n];
  if (k_norm) {
    for (int64_t h = 0; h < hk; ++h) rmsnorm_row(kn + h * D, k_norm, eps, kn + h * D, D);
    __syncthreads();
  }
  for (int64_t t = threadIdx.x; t < hk * half; t += blockDim.x) rope_pair(kn + (t / half) * D, p, inv_freq, half, t % half, rope_scale);
  __syncthreads();  // the rotated row, written by the block's threads, is what the append reads
  kv_kernels::append_token(static_cast<int>(n), kv, k, static_cast<int>(DType::f32), v, v_dtype, qo_indptr, page_indptr,
                           page_indices, prefix_len, B, page_size, static_cast<int>(hk * D));
}

__device__ __forceinline__ float silu(float v) { return v / (1.f + expf(-v)); }

__global__ void silu_mul_kernel(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = silu(gate[i]) * up[i];
}

// transformers' gelu_pytorch_tanh (Gemma's GeGLU), as the CPU computes it.
__global__ void gelu_tanh_mul_kernel(const float* gate, const float* up, float* out, int64_t n) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = 0.5f * g * (1.f + tanhf(kSqrt2OverPi * (g + 0.044715f * g * g * g))) * up[i];
  }
}

// Gemma 2's final-logit soft-capping, in place.
__global__ void softcap_kernel(float* x, float cap, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = cap * tanhf(x[i] / cap);
}

// x *= s in place (Granite's residual and logit multipliers).
__global__ void scale_kernel(float* x, float s, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] *= s;
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] += y[i];
}

__global__ void silu_kernel(float* x, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = silu(x[i]);
}

// One block per sequence: out[b] = x[last accepted row of b] (sm::last_accepted_row; zeros for -1).
__global__ void gather_last_accepted_kernel(const float* __restrict__ x, const int32_t* __restrict__ indptr,
                                            const int32_t* __restrict__ acc_nodes, const int32_t* __restrict__ acc_count,
                                            float* __restrict__ out, int64_t H) {
  const int64_t b = blockIdx.x;
  const int64_t row = sm::last_accepted_row(indptr, acc_nodes, acc_count, b);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) out[b * H + h] = row < 0 ? 0.f : x[row * H + h];
}

}  // namespace layer_kernels
}  // namespace cuda
}  // namespace specdec

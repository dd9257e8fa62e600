// Tensor-core matmul for the model runner: out[n, m] = sum_k x[n, k] * w[m, k] (+ bias[m]), x f32,
// w bf16 or f16, on 16x16x16 bf16 wmma tiles with f32 accumulation (sm_80+). This file defines the
// arithmetic (the split, the order); gemm_tc_stream.cuh computes the same bits faster where its
// conditions hold (aligned data, K % 8 == 0, enough shared memory), and this kernel runs the rest.
//
// f32 activations on bf16 tensor cores. Each x is split into three bf16 pieces, each the bf16
// rounding of what the previous ones left: x = x0 + x1 + x2 + r with |x1| <= 2^-9 |x|,
// |x2| <= 2^-18 |x|, |r| <= 2^-27 |x| (both differences are exact in f32). An f16 weight splits
// exactly into two bf16 pieces w = w0 + w1 (11 significant bits into 8 + 3, and bf16 has f32's
// exponent range); a bf16 weight is one piece. Every product piece larger than 2^-24 of the leading
// one is kept: x0w0 | x1w0, x2w0 (bf16: 3 mma per tile) | + x0w1, x1w1 (f16: 5 mma). The leading
// product accumulates apart from the small ones, so the result is within f32 rounding of the f32
// product, like the CUDA-core kernel in layers.cu and the CPU backend. Decode reads each weight
// once, which bounds it whatever the mma count; prefill and wide trees get the tensor cores.
//
// Batch invariance. A block computes 16 output columns (w rows) for 16*NT x rows. Its 4 warps
// split K in interleaved 32-wide steps (warp j takes steps j, j + 4, j + 8, ...), each warp sums
// its steps in increasing k, and the 4 partials are added in warp order. Nothing in that order
// depends on N or NT, and an mma's output element depends only on its own x row and w row, so a
// row's result is bit-identical alone or in any batch (test/layers.test.ts checks it on a GPU;
// test/emu/ checks this file's indexing on the host, where no GPU is needed).
//
// The file only needs CUDA's bf16/f16 types and nvcuda::wmma, so the host emulation in test/emu/
// can compile it with its own stand-ins for them.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

namespace specdec {
namespace cuda {
namespace gemm_tc {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;              // warps per block; they split K
constexpr int kThreads = kWarps * 32;
constexpr int kTileM = 16;             // w rows (output columns) per block
constexpr int kKStep = 32;             // K per warp step: two 16-deep mma
constexpr int kLd = kKStep + 8;        // staged row stride in elements: a multiple of 8 (wmma), padded against bank conflicts
constexpr int kXPieces = 3;

// How many exact bf16 pieces a weight splits into.
template <typename W> struct WeightPieces;
template <> struct WeightPieces<bf16> { static constexpr int value = 1; };
template <> struct WeightPieces<__half> { static constexpr int value = 2; };

// Shared memory, bytes. The staging area (per warp: x pieces, then w pieces) is reused for the
// cross-warp reduction after the K loop. Every region starts on a 128-byte boundary (wmma needs 32).
template <int NT, int WP> struct Layout {
  static constexpr int kXBytes = kXPieces * NT * 16 * kLd * 2;
  static constexpr int kWBytes = WP * kTileM * kLd * 2;
  static constexpr int kWarpBytes = kXBytes + kWBytes;
  static constexpr int kReduceBytes = kWarps * NT * 16 * kTileM * 4;
  static constexpr int kBytes = kWarps * kWarpBytes > kReduceBytes ? kWarps * kWarpBytes : kReduceBytes;
  static_assert(kXBytes % 128 == 0 && kWBytes % 128 == 0, "staging regions must stay 128-byte aligned");
  static_assert(kBytes <= 48 * 1024, "static shared memory is limited to 48 KiB");
};

__device__ __forceinline__ void split_x(float v, bf16* p0, bf16* p1, bf16* p2) {
  const bf16 a = __float2bfloat16_rn(v);
  const float r1 = v - __bfloat162float(a);  // exact: the low bits of v
  const bf16 b = __float2bfloat16_rn(r1);
  const float r2 = r1 - __bfloat162float(b);  // exact
  *p0 = a;
  *p1 = b;
  *p2 = __float2bfloat16_rn(r2);
}

__device__ __forceinline__ void split_w(bf16 v, bf16* pieces) { pieces[0] = v; }
__device__ __forceinline__ void split_w(__half v, bf16* pieces) {
  const float f = __half2float(v);
  const bf16 hi = __float2bfloat16_rn(f);
  pieces[0] = hi;
  pieces[1] = __float2bfloat16_rn(f - __bfloat162float(hi));  // exact (at most 3 significant bits)
}

template <typename T> __device__ __forceinline__ float bias_f32(T v);
template <> __device__ __forceinline__ float bias_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float bias_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float bias_f32<bf16>(bf16 v) { return __bfloat162float(v); }

// Steps of w a warp loads ahead (a step: 16 rows x 32 k, 1 KiB in bf16): 8 for NT = 1 (decode and
// small trees, where M / 16 blocks are all the parallelism there is); 4 for NT = 2 (wide batches
// have N / 32 times the blocks to hide latency with, and registers bound their occupancy).
template <int NT> constexpr int kDepth = NT == 1 ? 8 : 4;
// Steps of x loaded ahead (x comes from L2, a shorter latency; NT = 2 holds twice the items).
template <int NT> constexpr int kXDepth = NT == 1 ? 2 : 1;
static_assert(kDepth<1> % kXDepth<1> == 0 && kDepth<2> % kXDepth<2> == 0, "a step's x slot is its index mod kXDepth");

// One step of w: 16 rows x 32 k, lane -> row lane / 2; group g of 8 at k = g * 16 + (lane % 2) * 8
// (raw, 16 bytes each; zeros outside the matrix). So each load instruction (one g) reads whole 32-byte
// sectors, a lane pair one sector of its row, and the two instructions the row's other sector:
// no sector is fetched half-used by one instruction and again by the next.
template <typename W>
__device__ __forceinline__ void load_w(const W* __restrict__ w, uint4 (&raw)[2], int64_t m0, int64_t kb, int64_t K,
                                       int64_t M, bool vec_w, int lane) {
  const int64_t m = m0 + (lane >> 1);
#pragma unroll
  for (int g = 0; g < 2; ++g) {
    const int64_t k = kb + g * 16 + (lane & 1) * 8;
    if (m < M && vec_w && k + 8 <= K) {
      raw[g] = *reinterpret_cast<const uint4*>(w + m * K + k);
    } else {
      W v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = (m < M && k + j < K) ? w[m * K + k + j] : W(0.f);
      static_assert(sizeof(v) == sizeof(uint4), "8 weights are 16 bytes");
      memcpy(&raw[g], v, sizeof v);
    }
  }
}

// 8 bf16 as one 16-byte word (element 0 in the low bits, as in memory).
__device__ __forceinline__ uint4 pack8(const bf16 (&h)[8]) {
  unsigned u[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    u[i] = static_cast<unsigned>(__bfloat16_as_ushort(h[2 * i])) | (static_cast<unsigned>(__bfloat16_as_ushort(h[2 * i + 1])) << 16);
  return uint4{u[0], u[1], u[2], u[3]};
}

// Splits a step of w (as load_w left it) into the warp's staging. Each group of 8 lands on a
// 16-byte boundary (row stride kLd * 2 = 80 bytes, groups at 16-byte offsets): one store per group.
template <typename W>
__device__ __forceinline__ void stage_w(const uint4 (&raw)[2], bf16* sw, int lane) {
  constexpr int WP = WeightPieces<W>::value, kWPiece = kTileM * kLd;
  const int r = lane >> 1;
#pragma unroll
  for (int g = 0; g < 2; ++g) {
    const int c = g * 16 + (lane & 1) * 8;
    if constexpr (WP == 1) {  // bf16 weights are their own piece
      *reinterpret_cast<uint4*>(sw + r * kLd + c) = raw[g];
      continue;
    }
    W v[8];
    memcpy(v, &raw[g], sizeof v);
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      bf16 pieces[WP];
      split_w(v[j], pieces);
#pragma unroll
      for (int p = 0; p < WP; ++p) sw[p * kWPiece + r * kLd + c + j] = pieces[p];
    }
  }
}

// x: 16 NT rows x 32 k as (row, group of 8) items, item = lane + 32 i; only rows < rows_valid.
template <int NT> constexpr int kXItemsFor = NT * 16 * 4 / 32;
constexpr int kXItems = 4;  // the most items a lane holds (NT = 2)

template <int NT>
__device__ __forceinline__ void load_x(const float* __restrict__ x, float4 (&raw)[kXItems][2], int64_t n0, int64_t kb,
                                       int64_t N, int64_t K, bool vec_x, int rows_valid, int lane) {
#pragma unroll
  for (int i = 0; i < kXItemsFor<NT>; ++i) {
    const int item = lane + 32 * i, r = item >> 2;
    if (r >= rows_valid) continue;
    const int64_t n = n0 + r, k = kb + (item & 3) * 8;
    if (vec_x && k + 8 <= K) {
      raw[i][0] = reinterpret_cast<const float4*>(x + n * K + k)[0];
      raw[i][1] = reinterpret_cast<const float4*>(x + n * K + k)[1];
    } else {
      float v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) v[j] = k + j < K ? x[n * K + k + j] : 0.f;
      raw[i][0] = make_float4(v[0], v[1], v[2], v[3]);
      raw[i][1] = make_float4(v[4], v[5], v[6], v[7]);
    }
  }
}

// One item (row item / 4, 8 columns from (item % 4) * 8) split into its three pieces; kXPiece elements per piece.
__device__ __forceinline__ void stage_x_item(const float4 (&raw)[2], bf16* sx, int item, int kXPiece) {
  const float v[8] = {raw[0].x, raw[0].y, raw[0].z, raw[0].w, raw[1].x, raw[1].y, raw[1].z, raw[1].w};
  bf16 p0[8], p1[8], p2[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) split_x(v[j], &p0[j], &p1[j], &p2[j]);
  const int at = (item >> 2) * kLd + (item & 3) * 8;  // a 16-byte boundary, as in stage_w
  *reinterpret_cast<uint4*>(sx + at) = pack8(p0);
  *reinterpret_cast<uint4*>(sx + kXPiece + at) = pack8(p1);
  *reinterpret_cast<uint4*>(sx + 2 * kXPiece + at) = pack8(p2);
}

template <int NT>
__device__ __forceinline__ void stage_x(const float4 (&raw)[kXItems][2], bf16* sx, int rows_valid, int lane) {
#pragma unroll
  for (int i = 0; i < kXItemsFor<NT>; ++i) {
    const int item = lane + 32 * i;
    if ((item >> 2) < rows_valid) stage_x_item(raw[i], sx, item, NT * 16 * kLd);
  }
}

// grid = (ceil(M / 16), ceil(N / (16 NT))), block = kThreads. `vec_w`: K % 8 == 0 and w 16-byte
// aligned (8-element vector loads); `vec_x`: K % 4 == 0 and x 16-byte aligned. The loads change
// nothing in the arithmetic, only how the same values arrive.
template <typename W, typename B, int NT>
__global__ void __launch_bounds__(kThreads)
    matmul_tc_kernel(const float* __restrict__ x, const W* __restrict__ w, const B* __restrict__ bias,
                     float* __restrict__ out, int64_t N, int64_t K, int64_t M, bool vec_w, bool vec_x) {
  constexpr int WP = WeightPieces<W>::value;
  using L = Layout<NT, WP>;
  __shared__ __align__(128) unsigned char smem[L::kBytes];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kTileM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * (16 * NT);
  // This warp's staging: sx[p][row][k] then sw[p][row][k], row stride kLd.
  bf16* sx = reinterpret_cast<bf16*>(smem + warp * L::kWarpBytes);
  bf16* sw = reinterpret_cast<bf16*>(smem + warp * L::kWarpBytes + L::kXBytes);
  constexpr int kXPiece = NT * 16 * kLd, kWPiece = kTileM * kLd;  // elements per piece

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> lead[NT], small[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    wmma::fill_fragment(lead[t], 0.f);
    wmma::fill_fragment(small[t], 0.f);
  }

  // This warp's K steps: s = 0, 1, ... at k = (warp + s * kWarps) * kKStep.
  const int64_t kstride = static_cast<int64_t>(kWarps) * kKStep;
  const int64_t kfirst = static_cast<int64_t>(warp) * kKStep;
  const int64_t nsteps = kfirst < K ? (K - kfirst + kstride - 1) / kstride : 0;
  const int rows_valid = static_cast<int>(N - n0 < 16 * NT ? N - n0 : 16 * NT);

  // x rows past the batch (all but one in decode) stay zero: staged once here, never rewritten, so
  // each step splits only the rows that exist.
  static_assert((kXPieces * kXPiece) % 8 == 0, "the x staging is whole 16-byte words");
  for (int i = lane; i < kXPieces * kXPiece / 8; i += 32) reinterpret_cast<uint4*>(sx)[i] = uint4{0u, 0u, 0u, 0u};

  // The loads run ahead of the arithmetic: a ring of D steps of w and XD of x in
  // registers, refilled as each step is staged, so a warp keeps ~D KiB of weights in flight
  // instead of waiting a memory latency per 32-wide step (decode is a chain of such steps: the
  // first GPU run measured ~6% of the H200's bandwidth without this). The staged values, and so
  // the arithmetic, are exactly those of loading each step when it is used.
  constexpr int D = kDepth<NT>, XD = kXDepth<NT>;
  uint4 wr[D][2];
  float4 xr[XD][kXItems][2];
#pragma unroll
  for (int d = 0; d < D; ++d)
    if (d < nsteps) load_w(w, wr[d], m0, kfirst + d * kstride, K, M, vec_w, lane);
#pragma unroll
  for (int d = 0; d < XD; ++d)
    if (d < nsteps) load_x<NT>(x, xr[d], n0, kfirst + d * kstride, N, K, vec_x, rows_valid, lane);

  for (int64_t s0 = 0; s0 < nsteps; s0 += D) {
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int64_t s = s0 + d;
      if (s >= nsteps) break;  // warp-uniform
      __syncwarp();  // the previous step's fragment loads are done before the staging is overwritten
      stage_w<W>(wr[d], sw, lane);
      if (s + D < nsteps) load_w(w, wr[d], m0, kfirst + (s + D) * kstride, K, M, vec_w, lane);
      const int xd = d % XD;  // D is a multiple of XD: step s's x is in slot s % XD
      stage_x<NT>(xr[xd], sx, rows_valid, lane);
      if (s + XD < nsteps) load_x<NT>(x, xr[xd], n0, kfirst + (s + XD) * kstride, N, K, vec_x, rows_valid, lane);
      __syncwarp();  // staging visible to the whole warp

#pragma unroll
      for (int kk = 0; kk < kKStep; kk += 16) {
        // B = w^T as a col-major K x 16 tile: element (k, j) is sw[j * kLd + k].
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b[WP];
#pragma unroll
        for (int p = 0; p < WP; ++p) wmma::load_matrix_sync(b[p], sw + p * kWPiece + kk, kLd);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
          const bf16* rows = sx + t * 16 * kLd + kk;
          wmma::load_matrix_sync(a, rows, kLd);  // x0
          wmma::mma_sync(lead[t], a, b[0], lead[t]);
          if (WP > 1) wmma::mma_sync(small[t], a, b[WP - 1], small[t]);
          wmma::load_matrix_sync(a, rows + kXPiece, kLd);  // x1
          wmma::mma_sync(small[t], a, b[0], small[t]);
          if (WP > 1) wmma::mma_sync(small[t], a, b[WP - 1], small[t]);
          wmma::load_matrix_sync(a, rows + 2 * kXPiece, kLd);  // x2
          wmma::mma_sync(small[t], a, b[0], small[t]);
        }
      }
    }
  }

  // Cross-warp reduction in warp order, through the (now free) staging memory.
  __syncthreads();
  float* red = reinterpret_cast<float*>(smem);  // [warp][16 NT rows][16 cols]
#pragma unroll
  for (int t = 0; t < NT; ++t) {
#pragma unroll
    for (int i = 0; i < lead[t].num_elements; ++i) lead[t].x[i] += small[t].x[i];
    wmma::store_matrix_sync(red + (warp * NT + t) * 16 * kTileM, lead[t], kTileM, wmma::mem_row_major);
  }
  __syncthreads();
  constexpr int kTile = NT * 16 * kTileM;
  for (int e = threadIdx.x; e < kTile; e += kThreads) {
    const int64_t n = n0 + e / kTileM, m = m0 + e % kTileM;
    if (n >= N || m >= M) continue;
    float s = red[e];
#pragma unroll
    for (int j = 1; j < kWarps; ++j) s += red[j * kTile + e];
    out[n * M + m] = bias ? s + bias_f32(bias[m]) : s;
  }
}

}  // namespace gemm_tc
}  // namespace cuda
}  // namespace specdec

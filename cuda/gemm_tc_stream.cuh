// Tensor-core matmul for up to 64 x rows (decode, chains, trees, small batches) that streams the
// weights: out_p[n, m] = sum_k x[n, k] * w_p[m, k] (+ bias_p[m]) for up to kStreamMaxParts weights
// sharing one x (a layer's q/k/v, its gate/up) in one launch.
//
// The same arithmetic as matmul_tc_kernel (gemm_tc.cuh), bit for bit: every output element is made by
// the same wmma calls on the same operands in the same order (warp j takes the 32-wide K steps j,
// j + 4, j + 8, ... in increasing k, into its lead and small accumulators; the 4 partials are added in
// warp order), so a row's result does not depend on which kernel ran it or on N. What differs is how
// the weights arrive. matmul_tc_kernel's warps each load their own 16 x 32 steps: one load instruction
// touches 16 weight rows, 32 bytes of each, and the first H200 run read decode weights at 0.8-1.0 TB/s
// (17-22% of the bandwidth). Here the block stages 256-wide K slices of its 16 weight rows with
// cp.async, each warp instruction one row's 512 contiguous bytes, `stages - 1` slices in flight
// (40 KiB at 6 stages), and the warps take their B fragments straight from the staged slice (f16
// weights are split into their two bf16 pieces first, as before). x (at most 64 rows, read from L2)
// rides in the same slices; each warp holds NT = 1, 2 or 4 tiles of 16 rows (N <= 16, 32, 64), and the
// ring has as many stages as the shared memory holds (6 at 16 rows, 2 at 64 on sm_90).
//
// Performance model (H200: 4.8 TB/s, 132 SMs, ~1 us loaded DRAM latency): a block keeps 40 KiB of
// weights in flight, so one block per SM (the 1B model's o and down projections: 128 blocks) can pull
// ~40 GB/s, and the 132 SMs ~5 TB/s: bound by HBM, not by the kernel. The arithmetic per 8 KiB slice
// (per warp: two steps of 6 mma and one split of x's rows) takes ~300 cycles against ~450 cycles for
// the slice's bytes at an SM's share of the bandwidth. Grouping q/k/v (M = 2048 + 512 + 512 for the
// 1B model) gives the k and v projections all SMs instead of 32 of them, and saves launches. Past 16
// rows each block still reads all of x (N x K f32 from L2) for its 16 weight rows, N / 8 times the
// weight bytes: at 64 rows L2 carries 8x the weights, which bounds this kernel there (matmul_tc_kernel
// reads the same x and its weights twice); a larger weight tile would need more accumulators than the
// 4-chain order leaves registers for.
#pragma once
#include <cstdint>

#include "device.cuh"
#include "gemm_tc.cuh"

#ifdef __CUDACC__
#include <cuda_pipeline.h>
#endif

namespace specdec {
namespace cuda {
namespace gemm_tc {

constexpr int kStreamMaxRows = 64;               // x rows: up to four wmma tiles (NT = 4)
constexpr int kStreamMaxParts = 3;
constexpr int kStreamMaxStages = 6;
constexpr int kSliceK = 2 * kWarps * kKStep;      // 256: two steps per warp per slice
constexpr int kLdS = kSliceK + 8;                 // staged weight row (elements): 528 bytes, 16 mod 128: ldmatrix rows spread over the banks
constexpr int kLdSX = kSliceK + 4;                // staged x row (floats): 1040 bytes

template <typename W, typename B>
struct StreamPart {
  const W* w;      // [M, K]
  const B* bias;   // [M] or null
  float* out;      // [N, M]
  int64_t M;
  int64_t tile0;   // the part's first block (16 weight rows each)
};

template <typename W, typename B>
struct StreamParams {
  const float* x;  // [N, K]
  int64_t N, K;
  int parts, stages;
  StreamPart<W, B> part[kStreamMaxParts];
};

__host__ __device__ constexpr int64_t round_up128(int64_t bytes) { return (bytes + 127) / 128 * 128; }
// Row tiles of 16 per warp for N rows: 1, 2 or 4.
__host__ __device__ constexpr int stream_nt(int64_t N) { return N <= 16 ? 1 : N <= 32 ? 2 : 4; }

// Dynamic shared memory: `stages` slices (weights [16][kLdS], then x [N][kLdSX] f32), then each warp's
// staging (x pieces [3][16 NT][kLd] bf16; f16 weights also their pieces [2][16][kLd]). The final
// cross-warp reduction (4 x 16 NT x 16 f32) reuses the first slices.
template <typename W>
__host__ __device__ constexpr int64_t stream_w_bytes() {
  return round_up128(static_cast<int64_t>(kTileM) * kLdS * static_cast<int64_t>(sizeof(W)));
}
template <typename W>
__host__ __device__ constexpr int64_t stream_slice_bytes(int64_t N) {
  return stream_w_bytes<W>() + round_up128(N * kLdSX * 4);
}
template <typename W>
__host__ __device__ constexpr int64_t stream_warp_bytes(int nt) {
  return static_cast<int64_t>(kXPieces) * 16 * nt * kLd * 2 +
         (WeightPieces<W>::value > 1 ? static_cast<int64_t>(WeightPieces<W>::value) * kTileM * kLd * 2 : 0);
}
template <typename W>
__host__ __device__ constexpr int64_t stream_smem_bytes(int64_t N, int stages) {
  return stages * stream_slice_bytes<W>(N) + kWarps * stream_warp_bytes<W>(stream_nt(N));
}
// The reduction (kWarps x 16 NT x 16 f32) fits in the slices: NT = 1 in one slice's weights, NT = 2
// and 4 in two slices (N > 16 rows of x each).
static_assert(stream_w_bytes<bf16>() >= kWarps * 16 * kTileM * 4, "the reduction fits in the first slice");
static_assert(2 * (stream_w_bytes<bf16>() + 17 * kLdSX * 4) >= kWarps * 64 * kTileM * 4, "the reduction fits in two slices");

// The most stages (2..kStreamMaxStages) whose shared memory fits `optin_bytes`, or 0: then this kernel
// does not apply. Also 0 unless 1 <= N <= 64, K % 8 == 0 (whole 16-byte weight chunks) and x and every
// w are 16-byte aligned (cp.async's sources).
template <typename W>
inline int stream_stages(int64_t N, int64_t K, int64_t optin_bytes, bool aligned) {
  if (N < 1 || N > kStreamMaxRows || K < 1 || K % 8 != 0 || !aligned) return 0;
  for (int s = kStreamMaxStages; s >= 2; --s)
    if (stream_smem_bytes<W>(N, s) <= optin_bytes) return s;
  return 0;
}

// grid = (total tiles of the parts), block = kThreads, dynamic smem = stream_smem_bytes<W>(N, stages),
// NT = stream_nt(N).
template <typename W, typename B, int NT>
__global__ void __launch_bounds__(kThreads) matmul_tc_stream_kernel(const StreamParams<W, B> p) {
  constexpr int WP = WeightPieces<W>::value;
  constexpr int kXPiece = NT * 16 * kLd, kWPiece = kTileM * kLd;  // elements per staged piece
#ifdef __CUDACC__
  extern __shared__ __align__(128) unsigned char stream_smem[];
  unsigned char* base = stream_smem;
#else
  unsigned char* base = ::emu::dynamic_smem<unsigned char>();
#endif
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // This block's part: the last one starting at or before it (no dynamic indexing of the parameters).
  StreamPart<W, B> part = p.part[0];
#pragma unroll
  for (int i = 1; i < kStreamMaxParts; ++i)
    if (i < p.parts && static_cast<int64_t>(blockIdx.x) >= p.part[i].tile0) part = p.part[i];
  const int64_t N = p.N, K = p.K, M = part.M;
  const int64_t m0 = (static_cast<int64_t>(blockIdx.x) - part.tile0) * kTileM;
  const W* __restrict__ w = part.w;
  const float* __restrict__ x = p.x;
  const int rows_valid = static_cast<int>(N);
  const int stages = p.stages;
  const int64_t slice_bytes = stream_slice_bytes<W>(N);
  unsigned char* ring = base;
  bf16* sx = reinterpret_cast<bf16*>(base + stages * slice_bytes + warp * stream_warp_bytes<W>(NT));
  bf16* sw = sx + kXPieces * kXPiece;  // f16 weights' pieces

  // x rows past N stay zero: written once, never again (as in matmul_tc_kernel).
  for (int i = lane; i < kXPieces * kXPiece / 8; i += 32) reinterpret_cast<uint4*>(sx)[i] = uint4{0u, 0u, 0u, 0u};

  // Slice s (k in [256 s, 256 s + 256)) into its ring slot: weight chunk c of 8 (row c / 32, so each
  // warp instruction is one row's 512 bytes) and x chunk c of 4; past M or K, zeros by plain stores
  // (visible after the barrier that precedes the slice's use, like the copies).
  auto load_slice = [&](int64_t s) {
    unsigned char* slot = ring + (s % stages) * slice_bytes;
    W* dw = reinterpret_cast<W*>(slot);
    float* dx = reinterpret_cast<float*>(slot + stream_w_bytes<W>());
    const int64_t k0 = s * kSliceK;
    constexpr int kWChunks = kSliceK / 8, kXChunks = kSliceK / 4;
    for (int c = tid; c < kTileM * kWChunks; c += kThreads) {
      const int r = c / kWChunks, ch = c % kWChunks;
      const int64_t m = m0 + r, k = k0 + ch * 8;
      W* dst = dw + r * kLdS + ch * 8;
      if (m < M && k < K) __pipeline_memcpy_async(dst, w + m * K + k, 16);
      else *reinterpret_cast<uint4*>(dst) = uint4{0u, 0u, 0u, 0u};
    }
    for (int c = tid; c < rows_valid * kXChunks; c += kThreads) {
      const int r = c / kXChunks, ch = c % kXChunks;
      const int64_t k = k0 + ch * 4;
      float* dst = dx + r * kLdSX + ch * 4;
      if (k < K) __pipeline_memcpy_async(dst, x + r * K + k, 16);
      else *reinterpret_cast<float4*>(dst) = make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> lead[NT], small[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    wmma::fill_fragment(lead[t], 0.f);
    wmma::fill_fragment(small[t], 0.f);
  }

  const int64_t nslices = (K + kSliceK - 1) / kSliceK;
  // One commit per slot and per iteration, empty or not, so that "slice s has landed" is always
  // "all but the newest stages - 2 groups".
  for (int s = 0; s < stages - 1; ++s) {
    if (s < nslices) load_slice(s);
    __pipeline_commit();
  }
  for (int64_t s = 0; s < nslices; ++s) {
    __pipeline_wait_prior(stages - 2);
    // Slice s (every thread's copies) has landed, and everyone is done with slice s - 1, whose slot
    // the refill below takes.
    __syncthreads();
    if (s + stages - 1 < nslices) load_slice(s + stages - 1);
    __pipeline_commit();

    const unsigned char* slot = ring + (s % stages) * slice_bytes;
    const W* rw = reinterpret_cast<const W*>(slot);
    const float* rx = reinterpret_cast<const float*>(slot + stream_w_bytes<W>());
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int kl = (h * kWarps + warp) * kKStep;  // this warp's step in the slice
      if (s * kSliceK + kl >= K) break;             // warp-uniform: matmul_tc_kernel's warp has no such step
      __syncwarp();  // the previous step's fragment loads are done before the staging is rewritten
      // x's rows of this step, split into 3 bf16 pieces (stage_x's items: row item / 4, 8 columns each).
#pragma unroll
      for (int i = 0; i < kXItemsFor<NT>; ++i) {
        const int item = lane + 32 * i, r = item >> 2;
        if (r >= rows_valid) continue;
        const float* src = rx + r * kLdSX + kl + (item & 3) * 8;
        const float4 raw[2] = {make_float4(src[0], src[1], src[2], src[3]), make_float4(src[4], src[5], src[6], src[7])};
        stage_x_item(raw, sx, item, kXPiece);
      }
      if constexpr (WP > 1) {  // f16 weights: their two pieces into the warp's staging (load_w's items)
        uint4 wraw[2];
#pragma unroll
        for (int g = 0; g < 2; ++g)
          wraw[g] = *reinterpret_cast<const uint4*>(rw + (lane >> 1) * kLdS + kl + g * 16 + (lane & 1) * 8);
        stage_w<W>(wraw, sw, lane);
      }
      __syncwarp();  // staging visible to the whole warp

#pragma unroll
      for (int kk = 0; kk < kKStep; kk += 16) {
        // B = w^T as a col-major K x 16 tile: element (k, j) at row j, column k of the slice (or staging).
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b[WP];
        if constexpr (WP == 1) {
          wmma::load_matrix_sync(b[0], reinterpret_cast<const bf16*>(rw) + kl + kk, kLdS);
        } else {
#pragma unroll
          for (int q = 0; q < WP; ++q) wmma::load_matrix_sync(b[q], sw + q * kWPiece + kk, kLd);
        }
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
  __pipeline_wait_prior(0);  // only empty groups are left; the emulation wants every group waited for

  // Cross-warp reduction in warp order, as matmul_tc_kernel's, through the first slice.
  __syncthreads();
  float* red = reinterpret_cast<float*>(ring);  // [warp][16 NT rows][16 cols]
#pragma unroll
  for (int t = 0; t < NT; ++t) {
#pragma unroll
    for (int i = 0; i < lead[t].num_elements; ++i) lead[t].x[i] += small[t].x[i];
    wmma::store_matrix_sync(red + (warp * NT + t) * 16 * kTileM, lead[t], kTileM, wmma::mem_row_major);
  }
  __syncthreads();
  constexpr int kTile = NT * 16 * kTileM;
  for (int e = tid; e < kTile; e += kThreads) {
    const int64_t n = e / kTileM, m = m0 + e % kTileM;
    if (n >= N || m >= M) continue;
    float s = red[e];
#pragma unroll
    for (int j = 1; j < kWarps; ++j) s += red[j * kTile + e];
    part.out[n * M + m] = part.bias ? s + bias_f32(part.bias[m]) : s;
  }
}

}  // namespace gemm_tc
}  // namespace cuda
}  // namespace specdec

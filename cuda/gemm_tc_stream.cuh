// Tensor-core matmul that streams the weights through shared memory, for every row count (decode,
// chains, trees, batches, prefill): out_p[n, m] = sum_k x[n, k] * w_p[m, k] (+ bias_p[m]) for up to
// kStreamMaxParts weights sharing one x (a layer's q/k/v, its gate/up) in one launch.
//
// The same arithmetic as matmul_tc_kernel (gemm_tc.cuh), bit for bit: every output element is made by
// the same wmma calls on the same operands in the same order (warp j takes the 32-wide K steps j,
// j + 4, j + 8, ... in increasing k, into its lead and small accumulators; the 4 partials are added in
// warp order), so a row's result does not depend on which kernel ran it or on N. What differs is how
// the data arrive. matmul_tc_kernel's warps each load their own 16 x 32 steps: one load instruction
// touches 16 weight rows, 32 bytes of each, and the first H200 run read decode weights at 0.8-1.0 TB/s
// (17-22% of the bandwidth). Here the block stages 256-wide K slices of its weight rows with cp.async,
// each warp instruction one row's 512 contiguous bytes, `stages - 1` slices in flight (40 KiB at 6
// stages), and the warps take their B fragments straight from the staged slice (f16 weights are split
// into their two bf16 pieces first, as before). The block's x rows (up to 64, from L2) ride in the same
// slices; each warp splits one 16-row tile at a time into bf16 pieces. A block is NT row tiles (1, 2, 4:
// up to 16, 32, 64 rows) by MT weight tiles (1 up to 64 rows, 2 past them, with N / 64 row groups in
// the grid); the ring has as many stages as the shared memory holds (sm_90: 6 up to 16 rows, 5 at 32,
// 2 at 64 and past). matmul_tc_kernel remains for what this does not take (K % 8 != 0, unaligned
// data, too little shared memory, e.g. past 64 rows on an A100).
//
// Performance model (H200: 4.8 TB/s, 132 SMs, ~1 us loaded DRAM latency): a block keeps 40 KiB of
// weights in flight, so one block per SM (the 1B model's o and down projections: 128 blocks) can pull
// ~40 GB/s, and the 132 SMs ~5 TB/s: bound by HBM, not by the kernel. The arithmetic per 8 KiB slice
// (per warp: two steps of 6 mma and one split of x's rows) takes ~300 cycles against ~450 cycles for
// the slice's bytes at an SM's share of the bandwidth. Grouping q/k/v (M = 2048 + 512 + 512 for the
// 1B model) gives the k and v projections all SMs instead of 32 of them, and saves launches. With more
// rows every block reads its rows of x (f32, from L2) for its 16 MT weight rows: N / (8 MT) times the
// weight bytes per row group, so at 64 rows L2 carries 8x the weights, and prefill is bound by L2 and
// the x splits, not by the tensor cores (a larger weight tile needs more accumulators than the 4-chain
// order leaves registers for: 128 per lane at 64 x 32 already).
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

constexpr int kStreamMaxRows = 64;               // x rows per block: up to four wmma tiles (NT = 4)
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
  int64_t tile0;   // the part's first block column (16 MT weight rows each)
};

template <typename W, typename B>
struct StreamParams {
  const float* x;  // [N, K]
  int64_t N, K;
  int parts, stages;
  StreamPart<W, B> part[kStreamMaxParts];
};

__host__ __device__ constexpr int64_t round_up128(int64_t bytes) { return (bytes + 127) / 128 * 128; }

// A block's shape for N rows: up to 64 x rows (NT row tiles of 16, a row group per grid row) and MT
// weight tiles of 16. Up to 64 rows one weight tile (M / 16 blocks: decode's parallelism); past 64 rows
// two, which halves how often x is read (every block reads its rows of x for its weight rows).
struct StreamShape {
  int nt, mt;
  int64_t rows;  // x rows a slice holds: min(N, 64)
  __host__ __device__ constexpr explicit StreamShape(int64_t N)
      : nt(N <= 16 ? 1 : N <= 32 ? 2 : 4), mt(N > kStreamMaxRows ? 2 : 1), rows(N < kStreamMaxRows ? N : kStreamMaxRows) {}
};

// Dynamic shared memory: `stages` slices (weights [16 MT][kLdS], then x [min(N, 64)][kLdSX] f32), then each
// warp's staging (one row tile's x pieces [3][16][kLd] bf16; f16 weights also their pieces
// [MT][2][16][kLd]). The cross-warp reduction (4 x 16 NT x 16 MT f32) reuses the slices.
template <typename W>
__host__ __device__ constexpr int64_t stream_w_bytes(int mt) {
  return round_up128(static_cast<int64_t>(kTileM) * mt * kLdS * static_cast<int64_t>(sizeof(W)));
}
template <typename W>
__host__ __device__ constexpr int64_t stream_slice_bytes(const StreamShape& sh) {
  return stream_w_bytes<W>(sh.mt) + round_up128(sh.rows * kLdSX * 4);
}
template <typename W>
__host__ __device__ constexpr int64_t stream_warp_bytes(int mt) {
  return static_cast<int64_t>(kXPieces) * 16 * kLd * 2 +
         (WeightPieces<W>::value > 1 ? static_cast<int64_t>(WeightPieces<W>::value) * kTileM * mt * kLd * 2 : 0);
}
template <typename W>
__host__ __device__ constexpr int64_t stream_smem_bytes(int64_t N, int stages) {
  return stages * stream_slice_bytes<W>(StreamShape(N)) + kWarps * stream_warp_bytes<W>(StreamShape(N).mt);
}
__host__ __device__ constexpr int64_t stream_reduce_bytes(const StreamShape& sh) { return int64_t{kWarps} * 16 * sh.nt * 16 * sh.mt * 4; }

// The most stages (2..kStreamMaxStages) whose shared memory fits `optin_bytes`, or 0: then this kernel
// does not apply. Also 0 unless N >= 1, K % 8 == 0 (whole 16-byte weight chunks) and x and every w are
// 16-byte aligned (cp.async's sources). Stages past K's slices + 1 would stay empty, so a short K takes
// fewer (less shared memory, more blocks per SM).
template <typename W>
inline int stream_stages(int64_t N, int64_t K, int64_t optin_bytes, bool aligned) {
  if (N < 1 || K < 1 || K % 8 != 0 || !aligned) return 0;
  const StreamShape sh(N);
  const int64_t useful = (K + kSliceK - 1) / kSliceK + 1;  // >= 2
  for (int s = static_cast<int>(useful < kStreamMaxStages ? useful : kStreamMaxStages); s >= 2; --s)
    if (stream_smem_bytes<W>(N, s) <= optin_bytes && s * stream_slice_bytes<W>(sh) >= stream_reduce_bytes(sh)) return s;
  return 0;
}

// grid = (total block columns of the parts, ceil(N / 64)), block = kThreads, dynamic smem =
// stream_smem_bytes<W>(N, stages), NT and MT = StreamShape(N)'s.
template <typename W, typename B, int NT, int MT>
__global__ void __launch_bounds__(kThreads) matmul_tc_stream_kernel(const StreamParams<W, B> p) {
  constexpr int WP = WeightPieces<W>::value;
  constexpr int kXPiece = 16 * kLd, kWPiece = kTileM * kLd;  // elements per staged piece
  constexpr int kCols = 16 * MT, kRows = 16 * NT;           // the block's outputs: kRows x kCols
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
  const int64_t m0 = (static_cast<int64_t>(blockIdx.x) - part.tile0) * kCols;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const W* __restrict__ w = part.w;
  const float* __restrict__ x = p.x + n0 * K;
  const int rows_valid = static_cast<int>(N - n0 < kRows ? N - n0 : kRows);
  const int stages = p.stages;
  const StreamShape shape(N);
  const int64_t slice_bytes = stream_slice_bytes<W>(shape), w_bytes = stream_w_bytes<W>(MT);
  unsigned char* ring = base;
  bf16* sx = reinterpret_cast<bf16*>(base + stages * slice_bytes + warp * stream_warp_bytes<W>(MT));
  bf16* sw = sx + kXPieces * kXPiece;  // f16 weights' pieces, [MT][WP][16][kLd]

  // Staged x rows past N are never written: they hold these zeros, or (NT > 1) an earlier tile's rows.
  // Either way harmless: an mma output row depends only on its own A row, and rows past N are not stored.
  for (int i = lane; i < kXPieces * kXPiece / 8; i += 32) reinterpret_cast<uint4*>(sx)[i] = uint4{0u, 0u, 0u, 0u};

  // Slice s (k in [256 s, 256 s + 256)) into its ring slot: weight chunk c of 8 (row c / 32, so each
  // warp instruction is one row's 512 bytes) and x chunk c of 4 (the block's rows only); past M or K,
  // zeros by plain stores (visible after the barrier that precedes the slice's use, like the copies).
  auto load_slice = [&](int64_t s) {
    unsigned char* slot = ring + (s % stages) * slice_bytes;
    W* dw = reinterpret_cast<W*>(slot);
    float* dx = reinterpret_cast<float*>(slot + w_bytes);
    const int64_t k0 = s * kSliceK;
    constexpr int kWChunks = kSliceK / 8, kXChunks = kSliceK / 4;
    for (int c = tid; c < kCols * kWChunks; c += kThreads) {
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

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> lead[NT][MT], small[NT][MT];
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int u = 0; u < MT; ++u) {
      wmma::fill_fragment(lead[t][u], 0.f);
      wmma::fill_fragment(small[t][u], 0.f);
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
    const float* rx = reinterpret_cast<const float*>(slot + w_bytes);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int kl = (h * kWarps + warp) * kKStep;  // this warp's step in the slice
      if (s * kSliceK + kl >= K) break;             // warp-uniform: matmul_tc_kernel's warp has no such step
      // B = w^T as col-major K x 16 tiles, both 16-deep halves of the step: element (k, j) at row j,
      // column k of the slice (bf16), or of the warp's staging (f16 weights, split into two pieces).
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b[2][MT][WP];
      if constexpr (WP == 1) {
#pragma unroll
        for (int kk = 0; kk < 2; ++kk)
#pragma unroll
          for (int u = 0; u < MT; ++u)
            wmma::load_matrix_sync(b[kk][u][0], reinterpret_cast<const bf16*>(rw) + u * 16 * kLdS + kl + kk * 16, kLdS);
      } else {
        __syncwarp();  // the previous step's fragment loads are done before the staging is rewritten
#pragma unroll
        for (int u = 0; u < MT; ++u) {  // load_w's items of weight tile u, split as stage_w does
          uint4 wraw[2];
#pragma unroll
          for (int g = 0; g < 2; ++g)
            wraw[g] = *reinterpret_cast<const uint4*>(rw + (u * 16 + (lane >> 1)) * kLdS + kl + g * 16 + (lane & 1) * 8);
          stage_w<W>(wraw, sw + u * WP * kWPiece, lane);
        }
        __syncwarp();
#pragma unroll
        for (int kk = 0; kk < 2; ++kk)
#pragma unroll
          for (int u = 0; u < MT; ++u)
#pragma unroll
            for (int q = 0; q < WP; ++q) wmma::load_matrix_sync(b[kk][u][q], sw + (u * WP + q) * kWPiece + kk * 16, kLd);
      }
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (t * 16 >= rows_valid) break;  // warp-uniform: rows past N, whose outputs are not stored
        __syncwarp();  // the previous tile's fragment loads are done before the staging is rewritten
        // Row tile t of this step, split into 3 bf16 pieces (stage_x's items: row item / 4, 8 columns
        // each); only the rows that exist (decode: one of 16).
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int item = lane + 32 * i, r = t * 16 + (item >> 2);
          if (r >= rows_valid) continue;
          const float4* src = reinterpret_cast<const float4*>(rx + r * kLdSX + kl + (item & 3) * 8);  // 16-byte aligned
          const float4 raw[2] = {src[0], src[1]};
          stage_x_item(raw, sx, item, kXPiece);
        }
        __syncwarp();  // staging visible to the whole warp
        // Per output element the mma order of matmul_tc_kernel: per 16-deep half, lead += x0 w0,
        // (f16: small += x0 w1), small += x1 w0, (f16: small += x1 w1), small += x2 w0.
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
          wmma::load_matrix_sync(a, sx + kk * 16, kLd);  // x0
#pragma unroll
          for (int u = 0; u < MT; ++u) {
            wmma::mma_sync(lead[t][u], a, b[kk][u][0], lead[t][u]);
            if (WP > 1) wmma::mma_sync(small[t][u], a, b[kk][u][WP - 1], small[t][u]);
          }
          wmma::load_matrix_sync(a, sx + kXPiece + kk * 16, kLd);  // x1
#pragma unroll
          for (int u = 0; u < MT; ++u) {
            wmma::mma_sync(small[t][u], a, b[kk][u][0], small[t][u]);
            if (WP > 1) wmma::mma_sync(small[t][u], a, b[kk][u][WP - 1], small[t][u]);
          }
          wmma::load_matrix_sync(a, sx + 2 * kXPiece + kk * 16, kLd);  // x2
#pragma unroll
          for (int u = 0; u < MT; ++u) wmma::mma_sync(small[t][u], a, b[kk][u][0], small[t][u]);
        }
      }
    }
  }
  __pipeline_wait_prior(0);  // only empty groups are left; the emulation wants every group waited for

  // Cross-warp reduction in warp order, as matmul_tc_kernel's, through the slices (stream_stages
  // checked that they hold it).
  __syncthreads();
  float* red = reinterpret_cast<float*>(ring);  // [warp][kRows][kCols]
#pragma unroll
  for (int t = 0; t < NT; ++t)
#pragma unroll
    for (int u = 0; u < MT; ++u) {
#pragma unroll
      for (int i = 0; i < lead[t][u].num_elements; ++i) lead[t][u].x[i] += small[t][u].x[i];
      wmma::store_matrix_sync(red + (warp * kRows + t * 16) * kCols + u * 16, lead[t][u], kCols, wmma::mem_row_major);
    }
  __syncthreads();
  constexpr int kTile = kRows * kCols;
  for (int e = tid; e < kTile; e += kThreads) {
    const int64_t n = n0 + e / kCols, m = m0 + e % kCols;
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

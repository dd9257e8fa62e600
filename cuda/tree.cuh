// CUDA kernels of the tree-expansion ops (cpp/core/ops_tree.h); the launchers are in tree.cu. A
// header so that test/emu/ can run them on the host. The choices follow spec_math.h's rules, so the
// rows chosen and the log probabilities made are the CPU backend's (cpp/cpu/tree.cc), except where
// the device's log differs from the host's in the last bit of a double (rounded to f32 after).
#pragma once
#include <cmath>
#include <cstdint>

#include "../cpp/core/spec_math.h"
#include "device.cuh"

namespace specdec {
namespace cuda {
namespace tree_kernels {

constexpr int kThreads = 256;

__device__ __forceinline__ int32_t clamp_index(int64_t i, int64_t n) {
  return static_cast<int32_t>(i < 0 ? 0 : (i >= n ? n - 1 : i));
}

// One block per sequence b: each open entry's rank among b's open entries (how many are better, a
// strict total order), and the entries ranked below `take` become rows r0 + rank. Then, with
// pages, each row's source pages. Quadratic in the open entries (a level's top-k children of at
// most a few dozen rows: a few thousand at most), but one launch and no sort.
__global__ void tree_select_kernel(const double* __restrict__ lp, const int32_t* __restrict__ ptok,
                                   const int32_t* __restrict__ prow, const int32_t* __restrict__ open_start,
                                   const int32_t* __restrict__ open_count, const int32_t* __restrict__ row_indptr,
                                   int32_t* __restrict__ node, int32_t* __restrict__ token, int32_t* __restrict__ src_row,
                                   const int32_t* __restrict__ prev_tail, const int32_t* __restrict__ prev_tail_indptr,
                                   int32_t prev_rows, const int32_t* __restrict__ tail_indptr, int32_t* __restrict__ src_pages) {
  const int b = blockIdx.x;
  const int32_t s = open_start[b], n = open_count[b], r0 = row_indptr[b], take = row_indptr[b + 1] - r0;
  for (int32_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int32_t e = s + i;
    const double v = lp[e];
    int32_t rank = 0;
    for (int32_t j = 0; j < n && rank < take; ++j) rank += sm::expand_better(lp[s + j], s + j, v, e) ? 1 : 0;
    if (rank < take) {
      node[r0 + rank] = e;
      token[r0 + rank] = ptok[e];
      src_row[r0 + rank] = prow[e];
    }
  }
  if (src_pages == nullptr) return;
  __syncthreads();  // this block's rows are written
  for (int32_t r = r0; r < r0 + take; ++r) {
    const int32_t src = clamp_index(src_row[r], prev_rows), at = prev_tail_indptr[src];
    const int32_t have = prev_tail_indptr[src + 1] - at, t0 = tail_indptr[r], want = tail_indptr[r + 1] - t0;
    for (int32_t k = threadIdx.x; k < want; k += blockDim.x) src_pages[t0 + k] = prev_tail[at + (k < have ? k : have - 1)];
  }
}

// One thread per child (r, j).
__global__ void tree_grow_kernel(const float* __restrict__ vals, const int32_t* __restrict__ ids,
                                 const int32_t* __restrict__ node, const int32_t* __restrict__ out_start,
                                 const int32_t* __restrict__ map, int32_t map_size, int32_t* __restrict__ token,
                                 int32_t* __restrict__ parent, double* __restrict__ lp, int32_t* __restrict__ row,
                                 int64_t R, int64_t K, int64_t P) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= R * K) return;
  const int64_t r = i / K, j = i % K;
  const int32_t p = node[r] < 0 ? -1 : clamp_index(node[r], P);
  const int64_t e = out_start[r] + j;
  token[e] = map ? map[clamp_index(ids[i], map_size)] : ids[i];
  parent[e] = p;
  lp[e] = sm::child_log_prob(p < 0 ? 0.0 : lp[p], vals[i]);
  row[e] = static_cast<int32_t>(r);
}

// One thread per row: its walk up the pool (at most L entries).
__global__ void tree_paths_kernel(const int32_t* __restrict__ ptok, const int32_t* __restrict__ ppar, int64_t P,
                                  const int32_t* __restrict__ node, const int32_t* __restrict__ map, int32_t map_size,
                                  int32_t* __restrict__ out, int64_t R, int64_t L) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= R) return;
  int64_t e = node[r] < 0 ? -1 : clamp_index(node[r], P);
  for (int64_t j = 0; j < L; ++j) {
    out[r * L + j] = e < 0 ? -1 : sm::path_token(map, map_size, ptok[e]);
    if (e >= 0) e = ppar[e] < 0 ? -1 : clamp_index(ppar[e], P);
  }
}

// One block per output row, 4-byte words.
__global__ void rows_at_kernel(const uint32_t* __restrict__ x, const int32_t* __restrict__ idx, uint32_t* __restrict__ out,
                               int64_t n, int64_t w) {
  const int64_t i = blockIdx.x;
  const uint32_t* src = x + static_cast<int64_t>(clamp_index(idx[i], n)) * w;
  for (int64_t k = threadIdx.x; k < w; k += blockDim.x) out[i * w + k] = src[k];
}

}  // namespace tree_kernels
}  // namespace cuda
}  // namespace specdec

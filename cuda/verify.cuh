// CUDA kernel of batched tree verification (a thread block per sequence) and its block-cooperative
// Ops for the walks of spec_math.h; the launcher is in verify.cu. A header so that test/emu/ can
// run it on the host.
#pragma once
#include "../cpp/core/ops_sampling.h"
#include "sampling_block.cuh"

namespace specdec {
namespace cuda {
namespace verify_kernels {

using blk::kBlock;

// The Ops of spec_math.h's walks, block-cooperative. Scalar writes that the walk reads back go
// through thread 0 between barriers, so no thread can see a stale or early value.
template <typename T>
struct BlockOps {
  const T* target;      // [N, V] of the whole batch
  const float* draft;   // null: deterministic drafts
  int V;
  int64_t row0;         // global row of the sequence's node 0
  uint64_t* P;          // [V] residual target (quantised)
  uint64_t* Q;          // [V] residual draft (quantised)
  float* thr;           // [n] typical thresholds
  int* depth;           // [n] typical depths
  int32_t* acc_nodes;   // [n]
  int32_t* emitted;     // [n]
  blk::Smem* s;

  __device__ const T* trow(int node) const { return target + (row0 + node) * V; }

  __device__ int argmax(int node) {
    const T* r = trow(node);
    return blk::block_argmax(V, [&](int i) { return to_f32(r[i]); }, s);
  }
  __device__ float prob(int node, int tok) {
    __syncthreads();
    return to_f32(trow(node)[tok]);
  }
  __device__ double entropy(int node) {  // the order of sm::entropy_host, lane = thread
    static_assert(kBlock == sm::kEntropyLanes, "the entropy order is defined for 512 lanes");
    const T* r = trow(node);
    double h = 0.0;
    for (int i = threadIdx.x; i < V; i += kBlock) h = sm::entropy_add(h, to_f32(r[i]));
    return blk::block_reduce(h, blk::SumF64(), s->f64);
  }
  __device__ uint64_t load(const float* src, uint64_t* dst) {
    __syncthreads();
    uint64_t m = 0;
    for (int i = threadIdx.x; i < V; i += kBlock) {
      const uint64_t w = sm::quantize_prob(src[i]);
      dst[i] = w;
      m += w;
    }
    return blk::block_reduce(m, blk::SumU64(), s->u64);
  }
  __device__ uint64_t load_p(int node) {
    // Only the f32 instantiation reaches here (the dispatcher requires f32 probs outside greedy).
    return load(reinterpret_cast<const float*>(trow(node)), P);
  }
  __device__ uint64_t load_q(int node) { return load(draft + (row0 + node) * V, Q); }
  __device__ uint64_t p_at(int tok) {
    __syncthreads();
    return P[tok];
  }
  __device__ uint64_t q_at(int tok) {
    __syncthreads();
    return Q[tok];
  }
  __device__ void set_p(int tok, uint64_t v) {
    __syncthreads();
    if (threadIdx.x == 0) P[tok] = v;
    __syncthreads();
  }
  __device__ void set_q(int tok, uint64_t v) {
    __syncthreads();
    if (threadIdx.x == 0) Q[tok] = v;
    __syncthreads();
  }
  __device__ uint64_t residual_mass(uint64_t mp, uint64_t mq) {
    __syncthreads();
    const double ratio = static_cast<double>(mp) / static_cast<double>(mq);
    uint64_t m = 0;
    for (int i = threadIdx.x; i < V; i += kBlock) m += sm::residual_entry(P[i], Q[i], ratio);
    return blk::block_reduce(m, blk::SumU64(), s->u64);
  }
  __device__ void apply_residual(uint64_t mp, uint64_t mq) {
    __syncthreads();
    const double ratio = static_cast<double>(mp) / static_cast<double>(mq);
    for (int i = threadIdx.x; i < V; i += kBlock) P[i] = sm::residual_entry(P[i], Q[i], ratio);
    __syncthreads();
  }
  __device__ int sample_p(uint64_t t) {
    return blk::sample_select(V, t, [&](int i) { return P[i]; }, s);
  }
  __device__ void put(int k, int node, int token) {
    if (threadIdx.x != 0) return;
    if (node >= 0) acc_nodes[k] = node;
    else emitted[k] = token;
  }
  __device__ void set_thr(int v, float t) {
    __syncthreads();
    if (threadIdx.x == 0) thr[v] = t;
    __syncthreads();
  }
  __device__ float get_thr(int v) { return thr[v]; }
  __device__ void set_depth(int v, int d) {
    __syncthreads();
    if (threadIdx.x == 0) depth[v] = d;
    __syncthreads();
  }
  __device__ int get_depth(int v) { return depth[v]; }
};

template <typename T>
__global__ void __launch_bounds__(kBlock) verify_kernel(VerifyMode mode, const int32_t* __restrict__ indptr,
                                                        const int32_t* __restrict__ parents, const int32_t* __restrict__ tokens,
                                                        const T* target, const float* draft, const uint64_t* seeds,
                                                        const uint64_t* offsets, float eps, float alpha, int V,
                                                        uint64_t* P, uint64_t* Q, float* thr, int* depth,
                                                        int32_t* acc_nodes, int32_t* emitted, int32_t* counts,
                                                        int32_t* depth_acc, int D) {
  __shared__ blk::Smem s;
  const int b = blockIdx.x;
  const int start = indptr[b], n = indptr[b + 1] - start;
  BlockOps<T> ops;
  ops.target = target;
  ops.draft = draft;
  ops.V = V;
  ops.row0 = start;
  ops.P = P ? P + static_cast<int64_t>(b) * V : nullptr;
  ops.Q = Q ? Q + static_cast<int64_t>(b) * V : nullptr;
  ops.thr = thr + start;
  ops.depth = depth + start;
  ops.acc_nodes = acc_nodes + start;
  ops.emitted = emitted + start;
  ops.s = &s;
  for (int i = threadIdx.x; i < n; i += kBlock) ops.acc_nodes[i] = ops.emitted[i] = -1;
  __syncthreads();
  sm::WalkParams w;
  if (seeds) {
    w.seed = seeds[b];
    w.offset = offsets[b];
  }
  w.has_draft = draft != nullptr;
  w.eps = eps;
  w.alpha = alpha;
  int count;
  if (mode == VerifyMode::greedy) count = sm::walk_greedy(ops, parents + start, tokens + start, n);
  else if (mode == VerifyMode::rejection) count = sm::walk_rejection(ops, parents + start, tokens + start, n, w);
  else count = sm::walk_typical(ops, parents + start, tokens + start, n, w);
  if (threadIdx.x == 0) {
    counts[b] = count;
    for (int d = 0; d < D && d < count - 1; ++d) atomicAdd(&depth_acc[d], 1);
  }
}

// ---- greedy verification, vocabulary-parallel: a fused argmax-compare -----------------------------
// Greedy needs only the argmax of the rows on the accepted path. Instead of one block walking the
// tree and scanning each visited row alone (1 SM per sequence), every row's argmax is computed by
// several blocks at once -- one per kSliceCols-wide slice of the vocabulary, a partial (value, index)
// each -- and one warp per sequence then folds a node's partials and walks the tree. argmax_better is
// a total order (value, then lower index; NaN never wins), so any reduction order gives the CPU's
// token: the result is exact whatever the slicing.
constexpr int kSliceCols = 4096;
constexpr int kSliceThreads = 256;
__host__ __device__ inline int argmax_slices(int V) { return (V + kSliceCols - 1) / kSliceCols; }

template <typename T>
__global__ void __launch_bounds__(kSliceThreads) argmax_slices_kernel(const T* __restrict__ target, int V,
                                                                      float* __restrict__ part_v,
                                                                      int32_t* __restrict__ part_i) {
  __shared__ float sv[kSliceThreads / 32];
  __shared__ int32_t si[kSliceThreads / 32];
  const int S = argmax_slices(V), slice = blockIdx.y;
  const int64_t row = blockIdx.x;
  const T* x = target + row * V;
  const int end = min(V, (slice + 1) * kSliceCols);
  float bv = NAN;
  int32_t bi = 0x7fffffff;
  for (int i = slice * kSliceCols + static_cast<int>(threadIdx.x); i < end; i += kSliceThreads) {
    const float v = to_f32(x[i]);
    if (sm::argmax_better(v, i, bv, bi)) bv = v, bi = i;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(blk::kFull, bv, o);
    const int32_t oi = __shfl_xor_sync(blk::kFull, bi, o);
    if (sm::argmax_better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = bv, si[warp] = bi;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kSliceThreads / 32; ++w)
      if (sm::argmax_better(sv[w], si[w], bv, bi)) bv = sv[w], bi = si[w];
    part_v[row * S + slice] = bv;
    part_i[row * S + slice] = bi;
  }
}

// The walk's Ops over the partials, one warp per sequence (every lane holds the same values).
struct SliceOps {
  const float* part_v;
  const int32_t* part_i;
  int S;
  int64_t row0;
  int32_t* acc_nodes;
  int32_t* emitted;
  __device__ int argmax(int node) {
    const int64_t r = (row0 + node) * S;
    float bv = NAN;
    int32_t bi = 0x7fffffff;
    for (int s = threadIdx.x & 31; s < S; s += 32)
      if (sm::argmax_better(part_v[r + s], part_i[r + s], bv, bi)) bv = part_v[r + s], bi = part_i[r + s];
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(blk::kFull, bv, o);
      const int32_t oi = __shfl_xor_sync(blk::kFull, bi, o);
      if (sm::argmax_better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    return bi == 0x7fffffff ? 0 : bi;  // all NaN: index 0, as on the CPU
  }
  __device__ void put(int k, int node, int token) {
    if ((threadIdx.x & 31) != 0) return;
    if (node >= 0) acc_nodes[k] = node;
    else emitted[k] = token;
  }
};

__global__ void __launch_bounds__(32) greedy_walk_kernel(const int32_t* __restrict__ indptr, const int32_t* __restrict__ parents,
                                                         const int32_t* __restrict__ tokens, const float* part_v,
                                                         const int32_t* part_i, int S, int32_t* acc_nodes, int32_t* emitted,
                                                         int32_t* counts, int32_t* depth_acc, int D) {
  const int b = blockIdx.x;
  const int start = indptr[b], n = indptr[b + 1] - start;
  SliceOps ops{part_v, part_i, S, start, acc_nodes + start, emitted + start};
  for (int i = threadIdx.x; i < n; i += 32) ops.acc_nodes[i] = ops.emitted[i] = -1;
  __syncwarp();
  const int count = sm::walk_greedy(ops, parents + start, tokens + start, n);
  if (threadIdx.x == 0) {
    counts[b] = count;
    for (int d = 0; d < D && d < count - 1; ++d) atomicAdd(&depth_acc[d], 1);
  }
}

}  // namespace verify_kernels
}  // namespace cuda
}  // namespace specdec

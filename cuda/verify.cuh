// CUDA kernel of batched tree verification (a thread block per sequence) and its block-cooperative
// Ops for the walks of spec_math.h; the launcher is in verify.cu. A header so that test/emu/ can
// run it on the host.
#pragma once
#include "../cpp/core/ops_sampling.h"
#include "argmax_slices.cuh"

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
// Greedy needs only the argmax of the rows on the accepted path. Every row's argmax is computed by
// several blocks at once (argmax_slices.cuh: a partial per kSliceCols-wide slice of
// the vocabulary), and one warp per sequence then folds a node's partials and walks the tree.
using sampling_kernels::argmax_slices;
using sampling_kernels::argmax_slices_kernel;
using sampling_kernels::kSliceCols;
using sampling_kernels::kSliceThreads;

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

// ---- sampled verification with deterministic drafts, vocabulary-parallel -------------------------
// Rejection without draft rows (one-hot q: Medusa, lookahead, prompt lookup, tree drafts) and typical
// acceptance read each visited row for a few numbers -- its quantised mass, its entropy, a token's
// probability -- and sample once at the end. Those numbers come from one pass over every row by
// several blocks each (row_stats_kernel), and one warp per sequence walks the tree on them
// (sampled_walk_kernel): no block per sequence scanning whole rows in turn, no [B, V] scratch rows.
// The results are the CPU's exactly: quantised masses are integers (any summation order), the
// entropy keeps sm::entropy_host's order (lane t of 512 sums i = t, t + 512, ... in order, which one
// thread of row_stats does; the walk combines the lanes with the same butterfly and warp order), and
// the final draw finds sm::sample_hit's token through exact integer prefix sums.
//
// Rejection WITH draft rows (the draft model's sampled chains) also runs here when no node has two
// candidate children (sm::one_child_each; the dispatcher checks it on the host). A walk then needs
// at most one residual max(0, p/mp - q/mq), of the fresh row where it rejected, and the walk runs
// twice: pass 1 only records where it rejected (row and masses), residual_slices_kernel sums that
// one row's residual by slices, and pass 2 walks again, now with the residual's slice masses, and
// draws. Both passes make the same decisions: they read the same numbers up to the rejection.
constexpr int kStatGroups = 8;                                 // blocks per row
constexpr int kStatThreads = sm::kEntropyLanes / kStatGroups;  // 64: one entropy lane each
constexpr int kMassSlice = 4096;                               // columns per mass slice (a multiple of 512)
static_assert(kMassSlice % sm::kEntropyLanes == 0, "a slice is whole 512-column stripes");
__host__ __device__ inline int mass_slices(int V) { return (V + kMassSlice - 1) / kMassSlice; }

// Row blockIdx.x, lanes [64 blockIdx.y, 64 blockIdx.y + 64): the 512 entropy lanes (when `lanes`
// is given) and the quantised mass of each kMassSlice-column slice, added into slice_mass (zeroed
// by the caller). Every thread runs the same iterations (columns past V count as p = 0, which adds
// nothing), so the slice is block-uniform and a warp adds one partial per slice.
// With a tree (indptr [B+1], local parents), rows without a candidate child are skipped (their slice
// masses stay 0): a draft row is read only where a child was drawn from it, so leaves cost nothing.
template <typename T>
__global__ void __launch_bounds__(kStatThreads) row_stats_kernel(const T* __restrict__ target, int V, double* __restrict__ lanes,
                                                                 unsigned long long* __restrict__ slice_mass,
                                                                 const int32_t* indptr = nullptr, int B = 0,
                                                                 const int32_t* parents = nullptr) {
  const int64_t row = blockIdx.x;
  if (parents) {
    __shared__ int s_parent;
    if (threadIdx.x == 0) {
      const int lo = find_seq(indptr, B, static_cast<int>(row));
      const int64_t local = row - indptr[lo];
      int has = 0;
      for (int64_t k = row + 1; k < indptr[lo + 1] && !has; ++k) has = parents[k] == local;
      s_parent = has;
    }
    __syncthreads();
    if (!s_parent) return;
  }
  const int t = static_cast<int>(blockIdx.y) * kStatThreads + static_cast<int>(threadIdx.x);
  const T* p = target + row * V;
  const int S = mass_slices(V);
  constexpr int kStripes = kMassSlice / sm::kEntropyLanes;  // 512-column stripes per slice
  double h = 0.0;
  unsigned long long m = 0;
  const int stripes = (V + sm::kEntropyLanes - 1) / sm::kEntropyLanes;
  for (int j = 0; j < stripes; ++j) {
    const int i = t + j * sm::kEntropyLanes;
    const float v = i < V ? to_f32(p[i]) : 0.0f;
    if (lanes) h = sm::entropy_add(h, v);
    m += sm::quantize_prob(v);
    if (j % kStripes == kStripes - 1 || j == stripes - 1) {
      for (int o = 16; o > 0; o >>= 1) m += __shfl_xor_sync(blk::kFull, m, o);
      if ((threadIdx.x & 31) == 0 && m > 0) atomicAdd(&slice_mass[row * S + j / kStripes], m);
      m = 0;
    }
  }
  if (lanes) lanes[row * sm::kEntropyLanes + t] = h;
}

// Rejection with draft rows on the vocabulary-parallel path (see above). pass 0: no draft rows;
// 1 and 2: chains; 3: trees whose nodes have several candidate children (see "Sibling candidates").
struct DraftRowsArgs {
  const float* draft = nullptr;                      // [N, V] draft probabilities
  const unsigned long long* qslice_mass = nullptr;   // [N, S] row_stats of the draft rows
  const unsigned long long* rslice_mass = nullptr;   // chains: [B, S] residual_slices_kernel's sums;
                                                     // trees: [N, S] sibling_residual_kernel's, by child
  int32_t* rej_row = nullptr;                        // [B] global row of the rejection; -1 none, -2 unsupported
  unsigned long long* rej_mp = nullptr;              // [B] the masses the residual is taken with
  unsigned long long* rej_mq = nullptr;
  unsigned long long* pre = nullptr;                 // trees: [3, N] per child: mp, mq, live before its test
  int pass = 0;
};

// The residual max(0, P - Q mp/mq) of the row each sequence rejected at (pass 1's record), summed
// by mass slices into rslice_mass (zeroed by the caller); grid (B, kStatGroups), row_stats' lanes.
__global__ void __launch_bounds__(kStatThreads) residual_slices_kernel(const float* __restrict__ target, DraftRowsArgs dr, int V,
                                                                       unsigned long long* __restrict__ rslice_mass) {
  const int b = blockIdx.x;
  const int64_t row = dr.rej_row[b];
  if (row < 0) return;
  const double ratio = static_cast<double>(dr.rej_mp[b]) / static_cast<double>(dr.rej_mq[b]);
  const int t = static_cast<int>(blockIdx.y) * kStatThreads + static_cast<int>(threadIdx.x);
  const float* p = target + row * V;
  const float* q = dr.draft + row * V;
  const int S = mass_slices(V);
  constexpr int kStripes = kMassSlice / sm::kEntropyLanes;
  unsigned long long m = 0;
  const int stripes = (V + sm::kEntropyLanes - 1) / sm::kEntropyLanes;
  for (int j = 0; j < stripes; ++j) {
    const int i = t + j * sm::kEntropyLanes;
    if (i < V) m += sm::residual_entry(sm::quantize_prob(p[i]), sm::quantize_prob(q[i]), ratio);
    if (j % kStripes == kStripes - 1 || j == stripes - 1) {
      for (int o = 16; o > 0; o >>= 1) m += __shfl_xor_sync(blk::kFull, m, o);
      if ((threadIdx.x & 31) == 0 && m > 0) atomicAdd(&rslice_mass[static_cast<int64_t>(b) * S + j / kStripes], m);
      m = 0;
    }
  }
}

// ---- Sibling candidates: rejection with draft rows on trees --------------------------------------
// Where a node has several candidate children (a draft model's sampled tree), walk_rejection tests
// them in order, and each rejection takes the residual P <- max(0, P - Q mp/mq) of the P and Q the
// earlier rejections left (Q loses each rejected token after its residual). That chain depends on
// the node's rows and its children's tokens only, never on a draw, so the residual of rejecting
// each child can be computed before the walk: one launch per sibling rank r (the r-th candidate
// child of every node at once, sibling_residual_kernel), since rank r needs the masses of ranks
// below it. The walk (pass 3) then reads the numbers it needs: no block per sequence, no [B, V]
// scratch rows. Each child costs one pass over its parent's two rows; a walk reads the same rows
// once per child it rejects.
constexpr int kMaxSiblings = 64;  // candidate children per node on this path (more: verify_kernel)

// P and Q at column i of a node's rows (p, q) after the walk rejected k of its candidate children,
// with tokens xs[0..k) and residual ratios rs[0..k) (< 0: that rejection left P as it was).
__host__ __device__ inline void rejected_pq(float p, float q, int i, const int32_t* xs, const double* rs, int k, uint64_t& P,
                                            uint64_t& Q) {
  uint64_t pv = sm::quantize_prob(p);
  const uint64_t q0 = sm::quantize_prob(q);
  bool zero = false;
  for (int j = 0; j < k; ++j) {
    if (rs[j] >= 0.0) pv = sm::residual_entry(pv, zero ? 0 : q0, rs[j]);
    zero = zero || xs[j] == i;
  }
  P = pv;
  Q = zero ? 0 : q0;
}

__device__ inline unsigned long long slice_sum(const unsigned long long* slices, int64_t row, int S) {
  unsigned long long m = 0;
  for (int s = 0; s < S; ++s) m += slices[row * S + s];
  return m;
}

// Round `rank`: for every child c that is its parent's rank-th candidate child, the walk's masses just
// before it tests c (dr.pre: mp, mq, and live = 0 when an earlier sibling was no token, so the walk
// never gets here), and the residual of rejecting c by mass slices (dr.rslice_mass, row c, zeroed by
// the caller; rslice_out is dr.rslice_mass, written). Grid (N, kStatGroups), row_stats' lanes.
__global__ void __launch_bounds__(kStatThreads) sibling_residual_kernel(const float* __restrict__ target, DraftRowsArgs dr,
                                                                        const int32_t* __restrict__ indptr, int B,
                                                                        const int32_t* __restrict__ parents,
                                                                        const int32_t* __restrict__ tokens,
                                                                        const unsigned long long* __restrict__ slice_mass, int V,
                                                                        int rank, unsigned long long* rslice_out) {
  __shared__ int32_t sib[kMaxSiblings], xs[kMaxSiblings];
  __shared__ double rs[kMaxSiblings];
  __shared__ int s_go, s_live;
  __shared__ int64_t s_par;
  __shared__ unsigned long long s_mp, s_mq;
  const int64_t c = blockIdx.x;
  const int64_t N = indptr[B];
  unsigned long long* pre_mp = dr.pre;
  unsigned long long* pre_mq = dr.pre + N;
  unsigned long long* pre_live = dr.pre + 2 * N;
  const int S = mass_slices(V);
  if (threadIdx.x == 0) {
    const int64_t start = indptr[find_seq(indptr, B, static_cast<int>(c))];
    const int v = parents[c];
    int r = 0;
    if (v >= 0)
      for (int64_t k = start + v + 1; k < c && r <= rank; ++k)
        if (parents[k] == v) {
          if (r < kMaxSiblings) sib[r] = static_cast<int32_t>(k), xs[r] = tokens[k];
          ++r;
        }
    s_go = v >= 0 && r == rank && rank < kMaxSiblings;
    s_par = start + v;
  }
  __syncthreads();
  if (!s_go) return;
  const int64_t par = s_par;
  const float* p = target + par * V;
  const float* q = dr.draft + par * V;
  if (threadIdx.x < rank) {  // the earlier siblings' residual ratios, from their rounds
    const int32_t s = sib[threadIdx.x];
    rs[threadIdx.x] = pre_mq[s] > 0 && slice_sum(dr.rslice_mass, s, S) > 0
                          ? static_cast<double>(pre_mp[s]) / static_cast<double>(pre_mq[s])
                          : -1.0;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long mp, mq;
    int live = 1;
    if (rank == 0) {
      mp = slice_sum(slice_mass, par, S);
      mq = slice_sum(dr.qslice_mass, par, S);
    } else {  // walk_rejection's update for the previous sibling's rejection
      const int32_t s = sib[rank - 1], x = xs[rank - 1];
      live = pre_live[s] != 0 && x >= 0 && x < V;
      mp = rs[rank - 1] >= 0.0 ? slice_sum(dr.rslice_mass, s, S) : pre_mp[s];
      mq = pre_mq[s];
      if (live) {
        uint64_t px, qx;
        rejected_pq(p[x], q[x], x, xs, rs, rank - 1, px, qx);
        mq -= qx;
      }
    }
    s_mp = mp, s_mq = mq, s_live = live;
    if (blockIdx.y == 0) pre_mp[c] = mp, pre_mq[c] = mq, pre_live[c] = static_cast<unsigned long long>(live);
  }
  __syncthreads();
  if (!s_live || s_mq == 0) return;  // the walk takes no residual here
  const double ratio = static_cast<double>(s_mp) / static_cast<double>(s_mq);
  const int t = static_cast<int>(blockIdx.y) * kStatThreads + static_cast<int>(threadIdx.x);
  constexpr int kStripes = kMassSlice / sm::kEntropyLanes;
  unsigned long long m = 0;
  const int stripes = (V + sm::kEntropyLanes - 1) / sm::kEntropyLanes;
  for (int j = 0; j < stripes; ++j) {
    const int i = t + j * sm::kEntropyLanes;
    if (i < V) {
      uint64_t P, Q;
      rejected_pq(p[i], q[i], i, xs, rs, rank, P, Q);
      m += sm::residual_entry(P, Q, ratio);
    }
    if (j % kStripes == kStripes - 1 || j == stripes - 1) {
      for (int o = 16; o > 0; o >>= 1) m += __shfl_xor_sync(blk::kFull, m, o);
      if ((threadIdx.x & 31) == 0 && m > 0) atomicAdd(&rslice_out[c * S + j / kStripes], m);
      m = 0;
    }
  }
}

// The walks' Ops over row_stats' numbers, one warp per sequence (every lane holds the same values).
// P is a row with the tokens set_p zeroed (the walk's rejected one-hot drafts at the current node),
// kept as a list of those tokens (ragged scratch by indptr, at most a node's children).
struct SampledSliceOps {
  const float* target;  // [N, V] probabilities
  int V, S;
  int64_t row0;         // global row of the sequence's node 0
  const double* lanes;  // [N, 512] entropy lanes (typical)
  const unsigned long long* slice_mass;  // [N, S]
  int32_t* edits;       // this sequence's zeroed tokens
  int n_edits;
  int cur;              // node whose row P is
  float* thr;
  int* depth;
  int32_t* acc_nodes;
  int32_t* emitted;

  __device__ const float* row(int node) const { return target + (row0 + node) * V; }
  __device__ bool zeroed(int tok) const {
    for (int e = 0; e < n_edits; ++e)
      if (edits[e] == tok) return true;
    return false;
  }
  __device__ float prob(int node, int tok) { return row(node)[tok]; }
  __device__ double entropy(int node) {  // sm::entropy_host's combination of the 512 lanes
    const double* l = lanes + (row0 + node) * sm::kEntropyLanes;
    double h = 0.0;
    for (int w = 0; w < sm::kEntropyLanes / sm::kEntropyWarp; ++w) {
      double v = l[w * sm::kEntropyWarp + (threadIdx.x & 31)];
      for (int o = sm::kEntropyWarp / 2; o > 0; o >>= 1) v = v + __shfl_xor_sync(blk::kFull, v, o);
      h = w == 0 ? v : h + v;
    }
    return h;
  }
  __device__ uint64_t load_p(int node) {
    __syncwarp();
    cur = node;
    n_edits = 0;
    resid = false;
    n_residuals = 0;
    nrej = 0;
    pending = -1.0;
    last_rs = -1;
    uint64_t m = 0;
    for (int s = 0; s < S; ++s) m += slice_mass[(row0 + node) * S + s];
    return m;
  }
  __device__ uint64_t p_at(int tok) {
    if (dr.pass == 3) return tree_pq(tok, true);
    if (resid) return resid_at(tok);
    return zeroed(tok) ? 0 : sm::quantize_prob(row(cur)[tok]);
  }
  __device__ void set_p(int tok, uint64_t v) {  // the walk without draft rows only zeroes
    __syncwarp();
    if (v == 0 && !zeroed(tok)) {
      if ((threadIdx.x & 31) == 0) edits[n_edits] = tok;
      ++n_edits;
    }
    __syncwarp();
  }
  // Draft rows (rejection with a draft model; dr.draft null otherwise). Q is the fresh draft row of
  // `cur`: the walk zeroes a rejected token in Q only after its last read of this node's Q when no
  // node has two candidate children, so set_q has nothing to keep (a second child would find the
  // guard in residual_mass). After apply_residual, P is the residual of the fresh rows (resid): its
  // entries are computed from p and q on the fly, its slice masses are residual_slices_kernel's.
  DraftRowsArgs dr;
  int b;                // this sequence
  bool resid;
  double ratio;
  int n_residuals;      // residual_mass calls at this node

  __device__ const float* qrow(int node) const { return dr.draft + (row0 + node) * V; }
  __device__ uint64_t load_q(int node) {
    uint64_t m = 0;
    for (int s = 0; s < S; ++s) m += dr.qslice_mass[(row0 + node) * S + s];
    return m;
  }
  __device__ uint64_t q_at(int tok) {
    if (dr.pass == 3) return tree_pq(tok, false);
    return sm::quantize_prob(qrow(cur)[tok]);
  }
  __device__ void set_q(int tok, uint64_t) {  // the walk only zeroes
    if (dr.pass != 3) return;
    __syncwarp();
    if ((threadIdx.x & 31) == 0) t_xs[nrej] = tok, t_rs[nrej] = pending;
    __syncwarp();
    ++nrej;
    pending = -1.0;
  }
  // Trees (pass 3): P and Q of `cur` after nrej rejected candidate children (t_xs, t_rs in shared
  // memory, at most kMaxSiblings: the dispatcher's bound); the residual of rejecting the next child
  // is sibling_residual_kernel's, and the last one applied gives the slice masses of the draw.
  const int32_t* parents;  // this sequence's, local
  int n;
  int32_t* t_xs;
  double* t_rs;
  int nrej;
  double pending;    // the ratio apply_residual took for the child under test; -1: none
  int64_t last_rs;   // global row of the child whose residual P is; -1: P is cur's row
  int64_t testing;   // global row of the child residual_mass was asked for
  __device__ uint64_t tree_pq(int tok, bool want_p) const {
    uint64_t P, Q;
    rejected_pq(row(cur)[tok], qrow(cur)[tok], tok, t_xs, t_rs, nrej, P, Q);
    return want_p ? P : Q;
  }
  __device__ uint64_t tree_residual_mass(uint64_t mp, uint64_t mq) {
    int c = cur;  // the nrej-th candidate child of cur (counting from 0)
    for (int k = 0; k <= nrej && c >= 0; ++k) c = sm::next_child(parents, n, cur, c);
    const int64_t N = dr_n;
    if (c < 0 || dr.pre[row0 + c] != mp || dr.pre[N + row0 + c] != mq || dr.pre[2 * N + row0 + c] == 0) {
      broken = true;  // numbers nobody computed: no mass (E_NUMERIC), never a wrong token
      return 0;
    }
    testing = row0 + c;
    return slice_sum(dr.rslice_mass, testing, S);
  }
  int64_t dr_n;      // N, the rows of the batch (dr.pre's stride)
  __device__ uint64_t resid_at(int tok) const {
    return sm::residual_entry(sm::quantize_prob(row(cur)[tok]), sm::quantize_prob(qrow(cur)[tok]), ratio);
  }
  // Pass 1 records the rejection and reports no residual (its draw is not made); pass 2 reads the
  // residual of the recorded rejection. With one candidate child per node (the dispatcher's
  // condition) the walk asks once, for the fresh rows of the same node with the same masses; any
  // other call would need a residual nobody computed: it reads as no mass left anywhere (kNoMass,
  // E_NUMERIC in the binding), never as a wrong token.
  __device__ uint64_t residual_mass(uint64_t mp, uint64_t mq) {
    __syncwarp();
    if (dr.pass == 3) return tree_residual_mass(mp, mq);
    const bool first = n_residuals++ == 0;
    const bool fresh = first && !resid && n_edits == 0;
    if (dr.pass == 1) {
      if ((threadIdx.x & 31) == 0) {
        if (fresh && dr.rej_row[b] == -1) {
          dr.rej_row[b] = static_cast<int32_t>(row0 + cur);
          dr.rej_mp[b] = mp;
          dr.rej_mq[b] = mq;
        } else {
          dr.rej_row[b] = -2;
        }
      }
      __syncwarp();
      return 0;
    }
    if (!fresh || dr.rej_row[b] != row0 + cur || dr.rej_mp[b] != mp || dr.rej_mq[b] != mq) {
      broken = true;
      return 0;
    }
    uint64_t m = 0;
    for (int s = 0; s < S; ++s) m += dr.rslice_mass[static_cast<int64_t>(b) * S + s];
    return m;
  }
  __device__ void apply_residual(uint64_t mp, uint64_t mq) {
    __syncwarp();
    if (dr.pass == 3) {
      pending = static_cast<double>(mp) / static_cast<double>(mq);  // sibling_residual_kernel's ratio
      last_rs = testing;
      return;
    }
    resid = true;
    ratio = static_cast<double>(mp) / static_cast<double>(mq);  // BlockOps' and the CPU's ratio
  }
  bool broken;  // pass 2 met a residual it has no numbers for

  __device__ uint64_t weight(const float* r, int i) const {
    if (dr.pass == 3) return tree_pq(i, true);
    if (resid) return resid_at(i);
    return zeroed(i) ? 0 : sm::quantize_prob(r[i]);
  }
  // The first token whose prefix sum of P passes t: the slice from the slice masses (less the zeroed
  // tokens in it), then the lane from the lanes' chunk sums, then the column within that lane's chunk.
  __device__ int sample_p(uint64_t t) {
    if (dr.pass == 1 || broken) return sm::kNoMass;  // pass 1 draws nothing
    const float* r = row(cur);
    const int lane = threadIdx.x & 31;
    uint64_t before = 0;
    for (int s = 0; s < S; ++s) {
      uint64_t ms = resid            ? dr.rslice_mass[static_cast<int64_t>(b) * S + s]
                    : last_rs >= 0 ? dr.rslice_mass[last_rs * S + s]
                                   : slice_mass[(row0 + cur) * S + s];
      for (int e = 0; e < n_edits; ++e)
        if (edits[e] / kMassSlice == s) ms -= sm::quantize_prob(r[edits[e]]);
      if (ms == 0 || t - before >= ms) {
        before += ms;
        continue;
      }
      // Slice s holds the draw: lane l takes columns [c0, c0 + kChunk).
      constexpr int kChunk = kMassSlice / 32;
      const int c0 = s * kMassSlice + lane * kChunk, c1 = min(V, c0 + kChunk);
      uint64_t mine = 0;
      for (int i = c0; i < c1; ++i) mine += weight(r, i);
      uint64_t incl = mine;  // inclusive scan over the lanes
      for (int o = 1; o < 32; o <<= 1) {
        const uint64_t n = __shfl_up_sync(blk::kFull, incl, o);
        if (lane >= o) incl += n;
      }
      uint64_t b = before + incl - mine;
      int found = 0x7fffffff;
      if (mine > 0 && b <= t && t - b < mine)
        for (int i = c0; i < c1; ++i) {
          const uint64_t w = weight(r, i);
          if (sm::sample_hit(b, w, t)) {
            found = i;
            break;
          }
          b += w;
        }
      for (int o = 16; o > 0; o >>= 1) found = min(found, __shfl_xor_sync(blk::kFull, found, o));
      return found == 0x7fffffff ? sm::kNoMass : found;
    }
    return sm::kNoMass;
  }
  __device__ void put(int k, int node, int token) {
    if ((threadIdx.x & 31) != 0 || dr.pass == 1) return;
    if (node >= 0) acc_nodes[k] = node;
    else emitted[k] = token;
  }
  __device__ void set_thr(int v, float x) {
    __syncwarp();
    if ((threadIdx.x & 31) == 0) thr[v] = x;
    __syncwarp();
  }
  __device__ float get_thr(int v) { return thr[v]; }
  __device__ void set_depth(int v, int d) {
    __syncwarp();
    if ((threadIdx.x & 31) == 0) depth[v] = d;
    __syncwarp();
  }
  __device__ int get_depth(int v) { return depth[v]; }
};

// One warp per sequence: rejection (draft rows: pass 1 or 2, see above), or typical acceptance, on
// row_stats' numbers.
__global__ void __launch_bounds__(32) sampled_walk_kernel(VerifyMode mode, const int32_t* __restrict__ indptr,
                                                          const int32_t* __restrict__ parents, const int32_t* __restrict__ tokens,
                                                          const float* target, const double* lanes,
                                                          const unsigned long long* slice_mass, const uint64_t* seeds,
                                                          const uint64_t* offsets, float eps, float alpha, int V, int32_t* edits,
                                                          float* thr, int* depth, int32_t* acc_nodes, int32_t* emitted,
                                                          int32_t* counts, int32_t* depth_acc, int D, DraftRowsArgs dr) {
  const int b = blockIdx.x;
  const int start = indptr[b], n = indptr[b + 1] - start;
  __shared__ int32_t t_xs[kMaxSiblings];
  __shared__ double t_rs[kMaxSiblings];
  SampledSliceOps ops{target, V, mass_slices(V), start, lanes, slice_mass, edits + start, 0, 0, thr + start, depth + start,
                      acc_nodes + start, emitted + start};
  ops.parents = parents + start;
  ops.n = n;
  ops.t_xs = t_xs;
  ops.t_rs = t_rs;
  ops.nrej = 0;
  ops.pending = -1.0;
  ops.last_rs = ops.testing = -1;
  ops.dr_n = indptr[gridDim.x];
  ops.dr = dr;
  ops.b = b;
  ops.resid = false;
  ops.n_residuals = 0;
  ops.ratio = 0.0;
  ops.broken = false;
  if (dr.pass == 1) {
    if (threadIdx.x == 0) dr.rej_row[b] = -1;
  } else {
    for (int i = threadIdx.x; i < n; i += 32) ops.acc_nodes[i] = ops.emitted[i] = -1;
  }
  __syncwarp();
  sm::WalkParams w;
  w.seed = seeds[b];
  w.offset = offsets[b];
  w.has_draft = dr.draft != nullptr;
  w.eps = eps;
  w.alpha = alpha;
  const int count = mode == VerifyMode::typical ? sm::walk_typical(ops, parents + start, tokens + start, n, w)
                                                : sm::walk_rejection(ops, parents + start, tokens + start, n, w);
  if (threadIdx.x == 0 && dr.pass != 1) {
    counts[b] = count;
    for (int d = 0; d < D && d < count - 1; ++d) atomicAdd(&depth_acc[d], 1);
  }
}

}  // namespace verify_kernels
}  // namespace cuda
}  // namespace specdec

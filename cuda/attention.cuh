// Fused tree attention over a paged KV cache (CUDA cores, f32 accumulation).
//
// A CTA owns one (sequence, KV head, tile of 16 query rows); a row is a (new token, query head of
// the GQA group) pair, so MQA/GQA rows share every K/V tile loaded into shared memory.
//
// Reduction order (tree = path): a row reduces over the ORDERED LIST of the slots it sees -- the
// committed prefix, then its visible new tokens in index order (packed mask bit, or j <= i when
// there is no mask) -- as the CPU kernel does. List position c decides everything: the 32-key tile
// (c / 32), the lane (c % 32) of the score and of the softmax butterfly, the 256-key chunk, and the
// P.V order. So a tree node gives the bits of the same token decoded after its path is committed
// (the ancestors then form the tail of the prefix), and a row's bits never depend on the rest of
// the batch. For the prefix and for causal rows, list position = slot, read from the shared tile; a
// masked row's new tokens are gathered from their own slots (a few per row).
//
// Keys are processed in chunks of kChunk list positions: each chunk gets its own online-softmax
// state (m, l, acc) over 32-key tiles (one key per lane for the scores, dims per lane for the P.V
// product), and chunk states are folded in chunk order with one fixed formula. A launch either
// folds all chunks inside the CTA, or (flash-decoding style split-KV, sized by the planner in
// plan_launch) gives each CTA a group of consecutive chunks, stores every chunk's partial, and folds
// them in a merge kernel with the same formula. Both produce the same bits.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "device.cuh"

namespace specdec {
namespace cuda {
namespace attn {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kRowsPerCta = kWarps * kRowsPerWarp;
constexpr int kKeyTile = 32;     // one key per lane
constexpr int kChunk = 256;      // slots per chunk; fixed so that the reduction order is a property of the row
constexpr int kMaxHeadDim = 256; // largest head dim of the generic path (registers: 8 dims per lane)

struct Params {
  const void* q;    // [N, Hq, D]
  const void* kv;   // [P, 2, S, Hkv, D]
  void* out;        // [N, Hq, D]
  float* part_acc;  // split: [N * Hq, max_chunks, D]
  float* part_ml;   // split: [N * Hq, max_chunks, 2] (m, l); m = -inf marks an empty partial
  const int32_t* qo_indptr;
  const int32_t* page_indptr;
  const int32_t* page_indices;
  const int32_t* prefix_len;
  const uint64_t* mask;  // [N, mask_words] or null (causal among the new tokens)
  int mask_words;
  int Hq, Hkv, G, D, page_size;
  float scale_log2;  // sm_scale * log2(e): scores live in the exp2 domain
  int max_chunks;    // chunks of the longest sequence
  int split;
  int chunks_per_cta;  // split: consecutive chunks per CTA (grid.x = tiles * ceil(max_chunks / chunks_per_cta))
};

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
// Butterfly sum: IEEE addition is commutative, so every lane ends with the same bits.
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = __fadd_rn(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// Fold a chunk's partial state (m, l, acc) into the running (M, L, ACC). Shared verbatim by the
// in-CTA path and the merge kernel; explicit _rn intrinsics stop the compiler from contracting
// the two paths differently. Callers skip partials with m == -inf (nothing visible there).
template <int DPL>
__device__ __forceinline__ void fold(float& M, float& L, float (&ACC)[DPL], float m, float l, const float (&acc)[DPL]) {
  const float mn = fmaxf(M, m);
  const float sa = M == mn ? 1.f : M == -INFINITY ? 0.f : exp2f(__fsub_rn(M, mn));
  const float sb = m == mn ? 1.f : exp2f(__fsub_rn(m, mn));
  L = __fadd_rn(__fmul_rn(L, sa), __fmul_rn(l, sb));
#pragma unroll
  for (int k = 0; k < DPL; ++k) ACC[k] = __fadd_rn(__fmul_rn(ACC[k], sa), __fmul_rn(acc[k], sb));
  M = mn;
}

// Output of a row: ACC / L, or zeros for a row that saw nothing (empty mask row, no prefix).
__device__ __forceinline__ float finalize(float acc, float L) { return L > 0.f ? __fdiv_rn(acc, L) : 0.f; }

// A masked row's visible new tokens: how many (bits j < qo), and the index of the n-th (n < count).
__device__ __forceinline__ int mask_count(const uint64_t* row, int words, int qo) {
  int c = 0;
  for (int w = 0; w < words && w * 64 < qo; ++w) {
    const int bits = qo - w * 64;
    c += popc64(bits >= 64 ? row[w] : row[w] & ((1ull << bits) - 1));
  }
  return c;
}
__device__ __forceinline__ int mask_nth(const uint64_t* row, int n) {
  for (int w = 0;; ++w) {
    uint64_t x = row[w];
    const int c = popc64(x);
    if (n < c) {
      for (; n > 0; --n) x &= x - 1;
      return w * 64 + ctz64(x);
    }
    n -= c;
  }
}

// DT = 64 or 128: specialised (compile-time head dim); DT = 0: generic, runtime D <= kMaxHeadDim.
template <typename QT, typename KVT, int DT>
__global__ void __launch_bounds__(kWarps * 32, 2) tree_attention_kernel(const Params p) {
  constexpr int DPL = DT > 0 ? DT / 32 : kMaxHeadDim / 32;  // output dims per lane: d = lane + 32 k
  constexpr int R = kRowsPerWarp;
  const int D = DT > 0 ? DT : p.D;
  const int KS = D + 1;  // padded K rows: lane l reading key l, dim d hits bank (l + d) % 32

  SPECDEC_DYNAMIC_SMEM(float, smem);
  float* Ks = smem;                 // [kKeyTile][D + 1]
  float* Vs = Ks + kKeyTile * KS;   // [kKeyTile][D]
  float* Qs = Vs + kKeyTile * D;    // [kRowsPerCta][D], pre-scaled by scale_log2

  const int b = blockIdx.z, h_kv = blockIdx.y;
  const int per_tile = p.split ? (p.max_chunks + p.chunks_per_cta - 1) / p.chunks_per_cta : 1;
  const int tile = blockIdx.x / per_tile, group = blockIdx.x % per_tile;
  const int q0 = p.qo_indptr[b], qo = p.qo_indptr[b + 1] - q0, prefix = p.prefix_len[b];
  const int rows = qo * p.G;
  const int row0 = tile * kRowsPerCta;
  if (row0 >= rows) return;
  const int row_end = min(row0 + kRowsPerCta, rows);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // Each row's list length; the CTA walks list positions up to the longest.
  auto list_len = [&](int i) {
    return prefix + (p.mask ? mask_count(p.mask + static_cast<size_t>(q0 + i) * p.mask_words, p.mask_words, qo) : i + 1);
  };
  int kv_end = 0;
  for (int i = row0 / p.G; i <= (row_end - 1) / p.G; ++i) kv_end = max(kv_end, list_len(i));
  const int n_chunks = (kv_end + kChunk - 1) / kChunk;
  // Split: this CTA owns the partial slots of chunks c_begin .. c_end-1 (written even when empty).
  const int c_begin = p.split ? group * p.chunks_per_cta : 0;
  const int c_end = p.split ? min(c_begin + p.chunks_per_cta, p.max_chunks) : n_chunks;

  const QT* Q = static_cast<const QT*>(p.q);
  const KVT* KV = static_cast<const KVT*>(p.kv);
  const int32_t* pages = p.page_indices + p.page_indptr[b];
  const size_t v_off = static_cast<size_t>(p.page_size) * p.Hkv * D;  // K -> V of the same page row

  for (int idx = threadIdx.x; idx < kRowsPerCta * D; idx += blockDim.x) {
    const int r = idx / D, d = idx % D, row = row0 + r;
    float x = 0.f;
    if (row < row_end) {
      const int i = row / p.G, h = h_kv * p.G + row % p.G;
      x = to_f32(Q[(static_cast<size_t>(q0 + i) * p.Hq + h) * D + d]) * p.scale_log2;
    }
    Qs[idx] = x;
  }

  // Where slot t's K row of this KV head sits (V: + v_off).
  auto kv_at = [&](int t) {
    return ((static_cast<size_t>(pages[t / p.page_size]) * 2 * p.page_size + t % p.page_size) * p.Hkv + h_kv) * D;
  };
  int len[R];  // this warp's rows' list lengths
#pragma unroll
  for (int k = 0; k < R; ++k) {
    const int row = row0 + warp + k * kWarps;
    len[k] = row < row_end ? list_len(row / p.G) : 0;
  }

  float M[R], L[R], ACC[R][DPL];  // folded over chunks (in-CTA path)
  float m[R], l[R], acc[R][DPL];  // the current chunk
#pragma unroll
  for (int k = 0; k < R; ++k) {
    M[k] = -INFINITY, L[k] = 0.f, m[k] = -INFINITY, l[k] = 0.f;
#pragma unroll
    for (int e = 0; e < DPL; ++e) ACC[k][e] = 0.f, acc[k][e] = 0.f;
  }

  for (int c = c_begin; c < c_end; ++c) {
#pragma unroll
    for (int k = 0; k < R; ++k) {
      m[k] = -INFINITY, l[k] = 0.f;
#pragma unroll
      for (int e = 0; e < DPL; ++e) acc[k][e] = 0.f;
    }
    const int t_end = min((c + 1) * kChunk, kv_end);  // <= c * kChunk past the CTA's chunks: no tiles
    for (int t0 = c * kChunk; t0 < t_end; t0 += kKeyTile) {
      __syncthreads();  // the previous tile is consumed (and Qs is written before the first)
      for (int idx = threadIdx.x; idx < kKeyTile * D; idx += blockDim.x) {
        const int kk = idx / D, d = idx % D, t = t0 + kk;
        float kx = 0.f, vx = 0.f;  // slots past the end are zeros, never garbage (0 * NaN)
        if (t < t_end) {
          const size_t off = kv_at(t) + d;
          kx = to_f32(KV[off]);
          vx = to_f32(KV[off + v_off]);
        }
        Ks[kk * KS + d] = kx;
        Vs[kk * D + d] = vx;
      }
      __syncthreads();

      const int pos = t0 + lane;  // this lane's list position
#pragma unroll
      for (int k = 0; k < R; ++k) {
        const int r = warp + k * kWarps, row = row0 + r;
        if (row >= row_end) continue;  // warp-uniform
        const int n_vis = min(kKeyTile, min(t_end, len[k]) - t0);  // the visible lanes: 0 .. n_vis-1
        // A tile with nothing visible for this row is skipped outright (warp-uniform), so extra
        // tiles or chunks past a row's list can never perturb its bits.
        if (n_vis <= 0) continue;
        const bool vis = lane < n_vis;
        // The slot at list position pos: the staged one (prefix, causal rows), or a masked row's
        // n-th visible new token, gathered (-1: staged).
        int slot = -1;
        if (vis && p.mask && pos >= prefix) {
          const int t = prefix + mask_nth(p.mask + static_cast<size_t>(q0 + row / p.G) * p.mask_words, pos - prefix);
          if (t != pos) slot = t;
        }
        const bool gather = __any_sync(0xffffffffu, slot >= 0);
        float s = -INFINITY;
        if (vis) {
          const float* qr = Qs + r * D;
          float dot = 0.f;
          if (slot >= 0) {
            const KVT* kg = KV + kv_at(slot);
            for (int d = 0; d < D; ++d) dot = fmaf(qr[d], to_f32(kg[d]), dot);
          } else {
            const float* kr = Ks + lane * KS;
            if (DT > 0) {
#pragma unroll 16
              for (int d = 0; d < (DT > 0 ? DT : 1); ++d) dot = fmaf(qr[d], kr[d], dot);
            } else {
              for (int d = 0; d < D; ++d) dot = fmaf(qr[d], kr[d], dot);
            }
          }
          s = dot;
        }
        const float mt = warp_max(s);
        if (mt == -INFINITY) continue;  // nothing finite to add (warp-uniform)
        const float mn = fmaxf(m[k], mt);
        const float alpha = m[k] == mn ? 1.f : m[k] == -INFINITY ? 0.f : exp2f(m[k] - mn);
        const float pr = vis ? exp2f(s - mn) : 0.f;
        l[k] = fmaf(l[k], alpha, warp_sum(pr));
#pragma unroll
        for (int e = 0; e < DPL; ++e) acc[k][e] *= alpha;
        if (!gather) {
#pragma unroll 8
          for (int kk = 0; kk < n_vis; ++kk) {
            const float pk = __shfl_sync(0xffffffffu, pr, kk);
            const float* vr = Vs + kk * D;
#pragma unroll
            for (int e = 0; e < DPL; ++e) {
              const int d = lane + 32 * e;
              if (DT > 0 || d < D) acc[k][e] = fmaf(pk, vr[d], acc[k][e]);
            }
          }
        } else {
          for (int kk = 0; kk < n_vis; ++kk) {
            const float pk = __shfl_sync(0xffffffffu, pr, kk);
            const int sk = __shfl_sync(0xffffffffu, slot, kk);
#pragma unroll
            for (int e = 0; e < DPL; ++e) {
              const int d = lane + 32 * e;
              if (DT > 0 || d < D)
                acc[k][e] = fmaf(pk, sk >= 0 ? to_f32(KV[kv_at(sk) + v_off + d]) : Vs[kk * D + d], acc[k][e]);
            }
          }
        }
        m[k] = mn;
      }
    }
#pragma unroll
    for (int k = 0; k < R; ++k) {
      if (!p.split) {
        if (m[k] != -INFINITY) fold<DPL>(M[k], L[k], ACC[k], m[k], l[k], acc[k]);
        continue;
      }
      const int row = row0 + warp + k * kWarps;
      if (row >= row_end) continue;
      // Every chunk's partial is stored on its own (an empty one has m = -inf): the merge folds
      // them in chunk order, so the bits do not depend on how chunks were grouped into CTAs.
      const size_t slot = (static_cast<size_t>(q0 + row / p.G) * p.Hq + h_kv * p.G + row % p.G) * p.max_chunks + c;
      if (lane == 0) p.part_ml[slot * 2] = m[k], p.part_ml[slot * 2 + 1] = l[k];
#pragma unroll
      for (int e = 0; e < DPL; ++e) {
        const int d = lane + 32 * e;
        if (DT > 0 || d < D) p.part_acc[slot * D + d] = acc[k][e];
      }
    }
  }
  if (p.split) return;

#pragma unroll
  for (int k = 0; k < R; ++k) {
    const int r = warp + k * kWarps, row = row0 + r;
    if (row >= row_end) continue;
    const int i = row / p.G, h = h_kv * p.G + row % p.G;
    const size_t orow = static_cast<size_t>(q0 + i) * p.Hq + h;
    QT* O = static_cast<QT*>(p.out) + orow * D;
#pragma unroll
    for (int e = 0; e < DPL; ++e) {
      const int d = lane + 32 * e;
      if (DT > 0 || d < D) O[d] = from_f32<QT>(finalize(ACC[k][e], L[k]));
    }
  }
}

// Split-KV merge: one warp per output row folds its chunk partials in chunk order.
template <typename QT>
__global__ void tree_attention_merge_kernel(const float* part_acc, const float* part_ml, void* out, int64_t num_rows,
                                            int max_chunks, int D) {
  constexpr int DPL = kMaxHeadDim / 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= num_rows) return;
  float M = -INFINITY, L = 0.f, ACC[DPL], acc[DPL];
#pragma unroll
  for (int e = 0; e < DPL; ++e) ACC[e] = 0.f;
  for (int c = 0; c < max_chunks; ++c) {
    const size_t slot = static_cast<size_t>(row) * max_chunks + c;
    const float m = part_ml[slot * 2];
    if (m == -INFINITY) continue;
    const float l = part_ml[slot * 2 + 1];
#pragma unroll
    for (int e = 0; e < DPL; ++e) {
      const int d = lane + 32 * e;
      acc[e] = d < D ? part_acc[slot * D + d] : 0.f;
    }
    fold<DPL>(M, L, ACC, m, l, acc);
  }
  QT* O = static_cast<QT*>(out) + static_cast<size_t>(row) * D;
#pragma unroll
  for (int e = 0; e < DPL; ++e) {
    const int d = lane + 32 * e;
    if (d < D) O[d] = from_f32<QT>(finalize(ACC[e], L));
  }
}

// The launch, decided on the host from the batch's host-side lengths; shared by attention.cu and
// the host emulation (test/emu/) so both run exactly the same grid. Sets p.max_chunks, p.split and
// p.chunks_per_cta (p.G, p.Hkv, p.Hq, p.D must be set).
//
// Split-KV planner: the work is counted in chunks over the ragged batch (each sequence's KV heads x
// row tiles x its own chunks). A CTA takes chunks_per_cta consecutive chunks, as many as keep the
// longest CTA within half the average work per SM: a long sequence in a batch of short ones is
// spread over many CTAs, a batch that fills the GPU by itself is not split. The partials must stay
// under 512 MiB. sm_count <= 0: never split.
struct Plan {
  int64_t grid_x = 0, grid_y = 0, grid_z = 0;
  size_t smem = 0;  // dynamic shared memory, bytes
};
inline Plan plan_launch(Params& p, int64_t B, const int32_t* h_qo_indptr, const int32_t* h_prefix_len, int64_t max_qo_len,
                        int64_t max_kv_len, int64_t sm_count) {
  const int64_t N = h_qo_indptr[B] - h_qo_indptr[0];
  p.max_chunks = static_cast<int>(std::max<int64_t>(1, (max_kv_len + kChunk - 1) / kChunk));
  const int64_t max_tiles = (max_qo_len * p.G + kRowsPerCta - 1) / kRowsPerCta;
  int64_t work = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t qo = h_qo_indptr[b + 1] - h_qo_indptr[b];
    const int64_t chunks = std::max<int64_t>(1, (h_prefix_len[b] + qo + kChunk - 1) / kChunk);
    work += int64_t(p.Hkv) * ((qo * p.G + kRowsPerCta - 1) / kRowsPerCta) * chunks;
  }
  const int64_t cpc = sm_count > 0 ? std::min<int64_t>(p.max_chunks, std::max<int64_t>(1, work / (2 * sm_count))) : p.max_chunks;
  const int64_t part_floats = N * p.Hq * p.max_chunks * (p.D + 2);
  p.split = cpc < p.max_chunks && part_floats * 4 <= (int64_t(512) << 20);
  p.chunks_per_cta = static_cast<int>(p.split ? cpc : p.max_chunks);
  Plan plan;
  plan.grid_x = max_tiles * (p.split ? (p.max_chunks + cpc - 1) / cpc : 1);
  plan.grid_y = p.Hkv;
  plan.grid_z = B;
  plan.smem = sizeof(float) * static_cast<size_t>(kKeyTile * (p.D + 1) + kKeyTile * p.D + kRowsPerCta * p.D);
  return plan;
}

// Merge launch (split only): one warp per output row.
constexpr int kMergeWarps = 4;

}  // namespace attn
}  // namespace cuda
}  // namespace specdec

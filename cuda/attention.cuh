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
// Sliding window (p.window = W > 0): a row sees only the last W positions of its list, lo = len - W
// .. len - 1. With a tree mask (ancestors and self) list position = token position, so that is
// transformers' rule (key position > query position - W). The positions below lo take no part at all
// (no lane, no term of the P.V sums), and lo is a function of the list, so tree = path still holds;
// tiles entirely below every row's lo are neither loaded nor visited.
//
// Soft-capping (p.softcap = c > 0, Gemma 2): a score s (q.k times sm_scale) becomes c tanh(s / c),
// per score, before the softmax; computed from the exp2-domain score and back, the same for every row.
//
// K/V staging (bandwidth): a tile's K and V rows are copied as they are stored (f32, f16 or bf16) into
// shared memory, 16 bytes a thread at a time with one page lookup per key row and vector, by
// cp.async; with kStages buffers (2 or 4 for the specialised head dims, stages_for) the next
// kStages - 1 tiles are in flight while this one computes. Scores read a K row 16 bytes at a time (the row stride is padded by one
// vector, so the 8 lanes of a 16-byte phase hit 32 distinct banks). The conversion to f32 is exact
// and the sums run in the order above, so staging changes no bit. Caches whose rows are not whole
// 16-byte vectors, or a layer not 16-byte aligned, are staged element by element into the same
// buffers (same bits).
//
// Keys are processed in chunks of kChunk list positions: each chunk gets its own online-softmax
// state (m, l, acc) over 32-key tiles (one key per lane for the scores, dims per lane for the P.V
// product), and chunk states are folded in chunk order with one fixed formula. A launch either
// folds all chunks inside the CTA, or (flash-decoding style split-KV, sized by the planner in
// plan_launch) gives each CTA a group of consecutive chunks, stores every chunk's partial, and folds
// them in a merge kernel with the same formula. Both produce the same bits.
#pragma once
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>

#include "device.cuh"

#ifdef __CUDACC__
#include <cuda_pipeline.h>
#endif

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
  int kv_aligned16;    // the layer's base is 16-byte aligned: K/V rows may be staged 16 bytes at a time
  int window;          // > 0: a row sees only the last `window` positions of its list (sliding window); 0: all
  float softcap;       // > 0: scores become softcap * tanh(score / softcap) before the softmax (Gemma 2)
  int reserved;        // 0: no tail padding, so equal launches have equal argument bytes (cuda/graph_cache.h)
};

// Shared memory of the CUDA-core kernel: Qs [kRowsPerCta][D] f32, then kStages K and V tiles
// [kKeyTile][kv_ld] in the cache's dtype.
__host__ __device__ inline int kv_ld(int D, int kv_bytes) {
  return (D * kv_bytes) % 16 == 0 ? D + 16 / kv_bytes : D + 1;  // one vector of padding; scalar rows: odd
}
inline size_t smem_bytes(int D, int kv_bytes, int stages) {
  return sizeof(float) * static_cast<size_t>(kRowsPerCta) * D +
         static_cast<size_t>(stages) * 2 * kKeyTile * kv_ld(D, kv_bytes) * kv_bytes;
}

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

// Gemma 2's soft-capping of an exp2-domain score t = s log2(e): c tanh(s / c) log2(e).
__device__ __forceinline__ float softcap_log2(float t, float c) {
  constexpr float kLn2 = 0.6931471805599453f, kLog2e = 1.4426950408889634f;
  return c * tanhf(t * kLn2 / c) * kLog2e;
}

// One 16-byte vector of K or V (cp.async: complete after the thread's wait and a barrier).
__device__ __forceinline__ void copy16_async(void* dst, const void* src) {
  __pipeline_memcpy_async(dst, src, 16);
}

// q . k over d = 0 .. D-1 in order (the order is part of the bits): q in f32 shared memory, k a
// staged row in the cache's dtype, read 16 bytes at a time when rows are whole vectors.
template <typename KVT, int DT>
__device__ __forceinline__ float dot_row(const float* qr, const KVT* kr, int D, bool vec_rows) {
  constexpr int n = 16 / sizeof(KVT);
  float dot = 0.f;
  if (vec_rows) {
    const int nv = (DT > 0 ? DT : D) / n;
#pragma unroll 4
    for (int v = 0; v < nv; ++v) {
      const uint4 raw = reinterpret_cast<const uint4*>(kr)[v];
      const KVT* e = reinterpret_cast<const KVT*>(&raw);
#pragma unroll
      for (int j = 0; j < n; ++j) dot = fmaf(qr[v * n + j], to_f32(e[j]), dot);
    }
  } else {
    for (int d = 0; d < D; ++d) dot = fmaf(qr[d], to_f32(kr[d]), dot);
  }
  return dot;
}

// DT = 64 or 128: specialised (compile-time head dim); DT = 0: generic, runtime D <= kMaxHeadDim.
// kStages: K/V tile buffers (2: the next tile loads while this one computes).
template <typename QT, typename KVT, int DT, int kStages>
__global__ void __launch_bounds__(kWarps * 32, 2) tree_attention_kernel(const Params p) {
  static_assert(kStages >= 1 && kStages <= 4, "one to four K/V buffers");
  constexpr int DPL = DT > 0 ? DT / 32 : kMaxHeadDim / 32;  // output dims per lane: d = lane + 32 k
  constexpr int R = kRowsPerWarp;
  constexpr int kVecN = 16 / static_cast<int>(sizeof(KVT));  // cache elements per 16-byte vector
  const int D = DT > 0 ? DT : p.D;
  const bool vec_rows = (D * static_cast<int>(sizeof(KVT))) % 16 == 0;  // staged rows are whole vectors
  const bool vec_copy = vec_rows && p.kv_aligned16;                      // ... and so are the cache's
  const int ld = kv_ld(D, static_cast<int>(sizeof(KVT)));                // staged row stride, elements

  SPECDEC_DYNAMIC_SMEM(float, smem);
  float* Qs = smem;                                   // [kRowsPerCta][D], pre-scaled by scale_log2
  KVT* Kbuf = reinterpret_cast<KVT*>(Qs + kRowsPerCta * D);  // [kStages][kKeyTile][ld]
  KVT* Vbuf = Kbuf + kStages * kKeyTile * ld;                // [kStages][kKeyTile][ld]

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
  int kv_end = 0, kv_lo = INT_MAX;  // the CTA's rows' longest list, and their lowest visible position
  for (int i = row0 / p.G; i <= (row_end - 1) / p.G; ++i) {
    const int n = list_len(i);
    kv_end = max(kv_end, n);
    kv_lo = min(kv_lo, p.window > 0 ? max(0, n - p.window) : 0);
  }
  const int n_chunks = (kv_end + kChunk - 1) / kChunk;
  // Split: this CTA owns the partial slots of chunks c_begin .. c_end-1 (written even when empty).
  const int c_begin = p.split ? group * p.chunks_per_cta : 0;
  const int c_end = p.split ? min(c_begin + p.chunks_per_cta, p.max_chunks) : n_chunks;
  // Its 32-key tiles: j covers list positions 32 j .. 32 j + 31 (a chunk is 8 whole tiles).
  constexpr int kTilesPerChunk = kChunk / kKeyTile;
  // (Tiles wholly below kv_lo hold nothing any row sees: they are not loaded.)
  const int j_begin = max(c_begin * kTilesPerChunk, kv_lo / kKeyTile);
  const int j_end = min(c_end * kTilesPerChunk, (kv_end + kKeyTile - 1) / kKeyTile);

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
  // Stage tile j's K and V rows into buffer j % kStages (list position = slot here: the prefix and
  // causal rows; a masked row's other new tokens are gathered below). Vectors: async, complete after
  // the thread's wait; element by element: plain stores. Slots past the end are zeros, never garbage.
  auto stage_tile = [&](int j) {
    KVT* kb = Kbuf + (j % kStages) * kKeyTile * ld;
    KVT* vb = Vbuf + (j % kStages) * kKeyTile * ld;
    const int t0 = j * kKeyTile;
    if (vec_copy) {
      const int vpr = D / kVecN;  // vectors per row
      for (int idx = threadIdx.x; idx < kKeyTile * vpr; idx += blockDim.x) {
        const int kk = idx / vpr, e = (idx % vpr) * kVecN, t = t0 + kk;
        KVT* kd = kb + kk * ld + e;
        KVT* vd = vb + kk * ld + e;
        if (t < kv_end) {
          const KVT* src = KV + kv_at(t) + e;
          copy16_async(kd, src);
          copy16_async(vd, src + v_off);
        } else {
          *reinterpret_cast<uint4*>(kd) = uint4{0u, 0u, 0u, 0u};
          *reinterpret_cast<uint4*>(vd) = uint4{0u, 0u, 0u, 0u};
        }
      }
    } else {
      for (int idx = threadIdx.x; idx < kKeyTile * D; idx += blockDim.x) {
        const int kk = idx / D, d = idx % D, t = t0 + kk;
        KVT kx = from_f32<KVT>(0.f), vx = from_f32<KVT>(0.f);
        if (t < kv_end) {
          const size_t off = kv_at(t) + d;
          kx = KV[off];
          vx = KV[off + v_off];
        }
        kb[kk * ld + d] = kx;
        vb[kk * ld + d] = vx;
      }
    }
    __pipeline_commit();  // one group per tile in every thread (empty when staged by plain stores)
  };
  int len[R], lo[R];  // this warp's rows' list lengths and first visible positions (the window)
#pragma unroll
  for (int k = 0; k < R; ++k) {
    const int row = row0 + warp + k * kWarps;
    len[k] = row < row_end ? list_len(row / p.G) : 0;
    lo[k] = p.window > 0 ? max(0, len[k] - p.window) : 0;
  }

  float M[R], L[R], ACC[R][DPL];  // folded over chunks (in-CTA path)
  float m[R], l[R], acc[R][DPL];  // the current chunk
#pragma unroll
  for (int k = 0; k < R; ++k) {
    M[k] = -INFINITY, L[k] = 0.f, m[k] = -INFINITY, l[k] = 0.f;
#pragma unroll
    for (int e = 0; e < DPL; ++e) ACC[k][e] = 0.f, acc[k][e] = 0.f;
  }

  // The first kStages - 1 tiles are in flight at once. Every thread commits one group per tile slot
  // (an empty one past the CTA's last tile), so "all but the newest kStages - 1 groups" is always
  // tile j's group and those before it.
  if (kStages > 1)
    for (int s = 0; s < kStages - 1; ++s) {
      if (j_begin + s < j_end) stage_tile(j_begin + s);
      else __pipeline_commit();
    }
  for (int c = c_begin; c < c_end; ++c) {
#pragma unroll
    for (int k = 0; k < R; ++k) {
      m[k] = -INFINITY, l[k] = 0.f;
#pragma unroll
      for (int e = 0; e < DPL; ++e) acc[k][e] = 0.f;
    }
    const int t_end = min((c + 1) * kChunk, kv_end);  // <= c * kChunk past the CTA's chunks: no tiles
    for (int j = max(c * kTilesPerChunk, j_begin); j < min((c + 1) * kTilesPerChunk, j_end); ++j) {
      const int t0 = j * kKeyTile;
      // Everyone is done with tile j - 1, whose buffer the next tile reuses (and Qs is written).
      __syncthreads();
      if (kStages > 1) {
        // Into tile j - 1's buffer; in flight while tiles j .. j + kStages - 2 compute.
        if (j + kStages - 1 < j_end) stage_tile(j + kStages - 1);
        else __pipeline_commit();
        __pipeline_wait_prior(kStages - 1);
      } else {
        stage_tile(j);
        __pipeline_wait_prior(0);
      }
      __syncthreads();  // tile j's copies, every thread's, have landed
      const KVT* Ks = Kbuf + (j % kStages) * kKeyTile * ld;
      const KVT* Vs = Vbuf + (j % kStages) * kKeyTile * ld;

      const int pos = t0 + lane;  // this lane's list position
#pragma unroll
      for (int k = 0; k < R; ++k) {
        const int r = warp + k * kWarps, row = row0 + r;
        if (row >= row_end) continue;  // warp-uniform
        const int n_vis = min(kKeyTile, min(t_end, len[k]) - t0);  // the visible lanes: v0 .. n_vis-1
        const int v0 = max(0, lo[k] - t0);                          // (lanes below v0: outside the window)
        // A tile with nothing visible for this row is skipped outright (warp-uniform), so extra
        // tiles or chunks past (or before) a row's visible list can never perturb its bits.
        if (n_vis <= v0) continue;
        const bool vis = lane >= v0 && lane < n_vis;
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
          if (slot >= 0) {
            const KVT* kg = KV + kv_at(slot);
            float dot = 0.f;
            for (int d = 0; d < D; ++d) dot = fmaf(qr[d], to_f32(kg[d]), dot);
            s = dot;
          } else {
            s = dot_row<KVT, DT>(qr, Ks + lane * ld, D, vec_rows);
          }
          if (p.softcap > 0.f) s = softcap_log2(s, p.softcap);
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
          for (int kk = v0; kk < n_vis; ++kk) {
            const float pk = __shfl_sync(0xffffffffu, pr, kk);
            const KVT* vr = Vs + kk * ld;
#pragma unroll
            for (int e = 0; e < DPL; ++e) {
              const int d = lane + 32 * e;
              if (DT > 0 || d < D) acc[k][e] = fmaf(pk, to_f32(vr[d]), acc[k][e]);
            }
          }
        } else {
          for (int kk = v0; kk < n_vis; ++kk) {
            const float pk = __shfl_sync(0xffffffffu, pr, kk);
            const int sk = __shfl_sync(0xffffffffu, slot, kk);
#pragma unroll
            for (int e = 0; e < DPL; ++e) {
              const int d = lane + 32 * e;
              if (DT > 0 || d < D)
                acc[k][e] = fmaf(pk, to_f32(sk >= 0 ? KV[kv_at(sk) + v_off + d] : Vs[kk * ld + d]), acc[k][e]);
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
      if (m[k] == -INFINITY) continue;  // the merge reads no acc of an empty partial
#pragma unroll
      for (int e = 0; e < DPL; ++e) {
        const int d = lane + 32 * e;
        if (DT > 0 || d < D) p.part_acc[slot * D + d] = acc[k][e];
      }
    }
  }
  if (kStages > 1) __pipeline_wait_prior(0);  // the empty groups past the last tile: none left pending
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
// Split-KV planner. Work is counted in chunk-units: one CTA's pass over one 256-position chunk for
// one KV head and one tile of query rows (16, or rows_per_cta for attention_mma.cuh's wider CTAs),
// W = sum over sequences of Hkv x tiles x chunks. With S = resident_per_sm x sm_count resident CTAs
// (2 for attention.cuh's and attention_tc.cuh's kernels; attention_mma.cuh's launcher asks the
// occupancy calculator), no schedule ends before max(longest CTA, W / S).
// Unsplit, the longest CTA is the longest sequence's max_chunks (with a sliding window: the most
// chunks a sequence's window spans, its `span`; chunks below it are skipped). Split, a CTA takes cpc consecutive
// chunks: as few groups as bring cpc down to W / S (at least 1 chunk), then as equal as that count
// (ceil(max_chunks / groups)), so the longest sequence's CTAs finish together instead of, say,
// 15 chunks and 1. A split pays for its partials (each row's max_chunks partials written and read
// back, against the K/V bytes the CTAs read) and a merge launch (~1/4 chunk-unit: ~3 us against
// ~10 us per chunk-unit at an H100 CTA's share of HBM bandwidth; a model, not a measurement); it is
// taken only when its estimate is lower. So a batch that fills the GPU by itself is not split, a
// long sequence among short ones is spread evenly. The partials stay under 512 MiB. sm_count <= 0:
// never split.
struct Plan {
  int64_t grid_x = 0, grid_y = 0, grid_z = 0;
  size_t smem = 0;  // dynamic shared memory, bytes (set by the kernel's launcher)
};
// K/V buffers of the CUDA-core kernel for a head dim: at least two for the specialised head dims (the
// next tile loads while this one computes; at most ~75 KB, within every sm_80+ opt-in), one for the
// generic kernel (up to D = 256 with an f32 cache).
constexpr int stages_for_dim(int DT) { return DT > 0 ? 2 : 1; }
// As launched: four buffers for the specialised head dims where two CTAs still fit an SM's shared
// memory (bf16/f16 caches on sm_80 / sm_90: 41 KB at d 64, 78 KB at d 128), else stages_for_dim.
// Why: a decode CTA's 256-slot chunk is 8 tiles of 17 KB (d 128, bf16); with one tile ahead it
// waits out most of each tile's load (at batch 1 there is ~one CTA per SM), with three ahead the
// loads overlap. The buffer count changes no bit (test/emu/attention_emu.cc compares 1, 2 and 4).
inline int stages_for(int DT, int D, int kv_bytes, size_t smem_per_sm, size_t optin) {
  if (DT == 0) return stages_for_dim(DT);
  const size_t four = smem_bytes(D, kv_bytes, 4);
  return four <= optin && 2 * (four + 1024) <= smem_per_sm ? 4 : stages_for_dim(DT);  // 1 KB: the SM's reserve per CTA
}
constexpr double kMergeLaunchUnits = 0.25;
inline Plan plan_launch(Params& p, int64_t B, const int32_t* h_qo_indptr, const int32_t* h_prefix_len, int64_t max_qo_len,
                        int64_t max_kv_len, int64_t sm_count, int kv_bytes, int rows_per_cta = kRowsPerCta,
                        int resident_per_sm = 2) {
  const int64_t N = h_qo_indptr[B] - h_qo_indptr[0];
  const int64_t mc = std::max<int64_t>(1, (max_kv_len + kChunk - 1) / kChunk);
  p.max_chunks = static_cast<int>(mc);
  const int64_t max_tiles = (max_qo_len * p.G + rows_per_cta - 1) / rows_per_cta;
  int64_t work = 0, span = 1;  // span: most chunks one sequence's rows see (all of them without a window)
  for (int64_t b = 0; b < B; ++b) {
    const int64_t qo = h_qo_indptr[b + 1] - h_qo_indptr[b];
    const int64_t chunks = std::max<int64_t>(1, (h_prefix_len[b] + qo + kChunk - 1) / kChunk);
    // A sliding window: chunks wholly below the shortest row's window (prefix + 1 - window) are skipped.
    const int64_t first = p.window > 0 ? std::min(chunks - 1, std::max<int64_t>(0, h_prefix_len[b] + 1 - p.window) / kChunk) : 0;
    work += int64_t(p.Hkv) * ((qo * p.G + rows_per_cta - 1) / rows_per_cta) * (chunks - first);
    span = std::max(span, chunks - first);
  }
  int64_t cpc = mc;
  if (sm_count > 0 && span > 1) {
    const double slots = static_cast<double>(resident_per_sm) * static_cast<double>(sm_count);  // S
    const double per_slot = static_cast<double>(work) / slots;  // W / S
    const int64_t target = std::max<int64_t>(1, static_cast<int64_t>(per_slot));
    const int64_t groups = (span + target - 1) / target;
    const int64_t balanced = (span + groups - 1) / groups;
    const double kv_unit_bytes = static_cast<double>(kChunk) * 2 * p.D * kv_bytes;
    const double part_bytes = 2.0 * 4 * static_cast<double>(N) * p.Hq * mc * (p.D + 2);  // written + read back
    const double merge = part_bytes / (kv_unit_bytes * slots) + kMergeLaunchUnits;
    const double unsplit = std::max(static_cast<double>(span), per_slot);
    const double split = std::max(static_cast<double>(balanced), per_slot) + merge;
    if (balanced < span && split < unsplit && part_bytes / 2 <= static_cast<double>(int64_t(512) << 20)) cpc = balanced;
  }
  p.split = cpc < mc;
  p.chunks_per_cta = static_cast<int>(cpc);
  Plan plan;
  plan.grid_x = max_tiles * ((mc + cpc - 1) / cpc);
  plan.grid_y = p.Hkv;
  plan.grid_z = B;
  plan.smem = 0;  // the launcher's: smem_bytes(D, cache element bytes, its kStages)
  return plan;
}

// Merge launch (split only): one warp per output row.
constexpr int kMergeWarps = 4;

}  // namespace attn
}  // namespace cuda
}  // namespace specdec

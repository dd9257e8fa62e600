// Tree attention over a paged KV cache on tensor cores (nvcuda::wmma 16x16x16 bf16, f32 accumulation,
// sm_80+), for bf16 and f16 caches and head dims that are multiples of 16 (up to 256).
//
// A CTA owns one (sequence, KV head, tile of 16 query rows); a row is a (new token, query head of the
// GQA group) pair numbered token * G + head, as in attention.cuh, so all heads of a GQA group share each
// K/V tile staged in shared memory. Same Params as attention.cuh (q and out of type QT, f32/f16/bf16).
//
// Arithmetic. q is f32 (or f16/bf16) in memory; it is split into two bf16 pieces q = qh + ql (ql is the
// bf16 rounding of the exact f32 difference), so |q - qh - ql| <= 2^-17 |q|: f32-level scores, not bf16
// ones. A bf16 cache value is one bf16 piece; an f16 one splits exactly into two (11 significant bits
// into 8 + 3, as in gemm_tc.cuh). S = Q K^T is one f32 accumulator chain per 16x16 block over the head
// dim in 16-wide steps, each step adding qh.k0, qh.k1, ql.k0, ql.k1 in that order. S is stored to shared
// memory, scaled by sm_scale * log2(e) in f32, and a warp per row runs the online softmax over the
// tile's 64 scores (max, exp2, then the sum in a fixed tree: lane pairs, xor butterfly). P is split
// into two bf16 pieces the same way; the tile's P V is a fresh f32 accumulator chain (key blocks 0..3, pieces
// ph.v0, ph.v1, pl.v0, pl.v1) stored to shared memory and folded into the row's running accumulator
// as acc = acc * alpha + pv with explicitly rounded operations. Output = acc / l (zeros for a row that
// sees nothing), stored as QT. The measured error against an f64 reference is in
// test/emu/attention_tc_emu.cc (f32 outputs: <= 3e-6 absolute on unit-scale inputs; q rounded to one
// bf16 piece instead would give 2e-4 .. 1e-3).
//
// Reduction order (tree = path). A row reduces over the ORDERED LIST of slots it sees: the committed
// prefix, then its visible new tokens in index order (mask bits, or j <= i without a mask). List
// positions are cut into 64-key tiles at multiples of 64 from the list start; tile t's result for a
// row depends only on the row's q and the K/V of the slots at list positions 64t .. 64t+63 that the row
// sees, and tiles are folded in order. An mma output element depends only on its own A row and B
// column, so it does not matter which other rows share the mma. Each tile is computed for a row in one
// of two passes, which give the same bits:
//   - the shared pass stages slots 64t .. 64t+63 directly (list position = slot) for all 16 rows, and
//     serves every row whose positions in this tile are all identity-mapped: the prefix, causal rows
//     (no mask), and a masked row's leading run of visible new tokens 0, 1, ..., k-1. Columns past the
//     row's list end are masked (p = 0, so the staged values there contribute exact zeros);
//   - a per-token pass gathers, for one token whose tile holds non-identity positions (a tree node
//     below a branch), the slots at its list positions into the tile (zeros past its list end), and
//     serves that token's G rows.
// Either way a row's tile t sees the same q row, the same K/V columns at its visible positions and the
// same zeros elsewhere of P, so: a tree node's row == the same token decoded after its path is committed
// (one new token, or the path as a causal chain), and a row alone == the row in any batch, bit for bit.
// Rows with nothing visible in a tile skip it.
//
// Split-KV, as in attention.cuh: list positions are grouped in chunks of attn::kChunk (4 tiles), each
// chunk reduced from a fresh state, and chunk states folded in chunk order with attn::fold's formula,
// either inside the CTA or (planner's choice, attn::plan_launch) by the merge kernel
// attn::tree_attention_merge_kernel over per-chunk partials. Both give the same bits.
//
// K/V staging: 16-byte loads, one page lookup per key per pass. A bf16 cache is copied by cp.async
// into two buffers, so the next pass's tile (the next tile's shared pass, or a token's own pass)
// loads while this pass computes; an f16 cache is split into pieces as it is stored, one buffer. The
// staged bits are the same either way, so the results are too (checked in the emulation, where a
// cp.async lands only at its wait).
// The header only needs CUDA's bf16/f16 types and nvcuda::wmma, so test/emu/ compiles it on the host.
#pragma once
#include <cstddef>
#include <cstdint>

#include "attention.cuh"

#ifdef __CUDACC__
#include <cuda_pipeline.h>
#include <mma.h>
#endif

namespace specdec {
namespace cuda {
namespace attn_tc {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;
using attn::Params;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 16;      // query rows per CTA (one mma M)
constexpr int kKeys = 64;      // list positions per tile
constexpr int kMaxHeadDim = 256;
constexpr int kLdP = kKeys + 8;  // P (bf16) and S (f32) row strides

template <typename KVT> struct KvPieces;
template <> struct KvPieces<bf16> { static constexpr int value = 1; };
template <> struct KvPieces<__half> { static constexpr int value = 2; };
// K/V tile buffers ("stages"): a bf16 cache is copied into shared memory as it is (cp.async), so with
// two buffers the next pass's tile loads while this one computes; an f16 cache is split into pieces
// as it is stored (through registers), with one buffer. One or two buffers give the same bits.

__device__ __forceinline__ void split2(float v, bf16* hi, bf16* lo) {
  const bf16 h = __float2bfloat16_rn(v);
  *hi = h;
  *lo = __float2bfloat16_rn(__fsub_rn(v, __bfloat162float(h)));
}
__device__ __forceinline__ void split_kv(bf16 v, bf16* pieces) { pieces[0] = v; }
__device__ __forceinline__ void split_kv(__half v, bf16* pieces) {
  const float f = __half2float(v);
  const bf16 hi = __float2bfloat16_rn(f);
  pieces[0] = hi;
  pieces[1] = __float2bfloat16_rn(__fsub_rn(f, __bfloat162float(hi)));  // exact (at most 3 significant bits)
}

// Shared memory layout, bytes from the (128-byte aligned) dynamic base; every region 128-byte aligned.
struct Layout {
  int ld = 0;  // Q/K/V (bf16) and O (f32) row stride, elements: D + 8 (a multiple of 8, as wmma needs)
  size_t q = 0, k = 0, v = 0, p = 0, s = 0, o = 0, acc = 0, acc_fold = 0, rowstate = 0, offs = 0, bytes = 0;
  __host__ __device__ Layout(int D, int kv_pieces, int stages = 1) {
    ld = D + 8;
    auto take = [this](size_t& at, size_t n) {
      at = bytes;
      bytes += (n + 127) / 128 * 128;
    };
    take(q, 2ull * kRows * ld * 2);
    take(k, static_cast<size_t>(stages) * kv_pieces * kKeys * ld * 2);
    take(v, static_cast<size_t>(stages) * kv_pieces * kKeys * ld * 2);
    take(p, 2ull * kRows * kLdP * 2);
    take(s, static_cast<size_t>(kRows) * kLdP * 4);
    take(o, static_cast<size_t>(kRows) * ld * 4);
    take(acc, static_cast<size_t>(kRows) * D * 4);
    take(acc_fold, static_cast<size_t>(kRows) * D * 4);
    take(rowstate, 9ull * kRows * 4);  // m, l, alpha, M, L, sa, sb (f32); len, ident (int)
    take(offs, 2ull * kKeys * 8);
  }
};

// K/V are staged 16 bytes at a time: 8 elements of a 2-byte cache. Head dims are multiples of 16,
// so a key's row is whole vectors, 16-byte aligned in global memory (its offset is a multiple of D
// elements from a 16-byte aligned layer; the launcher checks the base) and in shared memory (the
// row stride ld * 2 bytes is a multiple of 16).
constexpr int kVec = 8;
constexpr size_t kNoKey = ~size_t{0};

// One 16-byte vector of cache values (src; null: zeros) into its bf16 pieces (piece c at dst + c *
// piece_stride): a bf16 cache's bits as they are, by cp.async (complete after async_wait); an f16
// cache split element by element exactly as split_kv does, stored at once.
__device__ __forceinline__ void stage_key(const bf16* src, bf16* dst, size_t) {
  if (src) __pipeline_memcpy_async(dst, src, 16);
  else *reinterpret_cast<uint4*>(dst) = uint4{0u, 0u, 0u, 0u};
}
__device__ __forceinline__ void stage_key(const __half* src, bf16* dst, size_t piece_stride) {
  const uint4 raw = src ? *reinterpret_cast<const uint4*>(src) : uint4{0u, 0u, 0u, 0u};
  const __half* h = reinterpret_cast<const __half*>(&raw);
  alignas(16) bf16 pieces[2][kVec];
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    bf16 two[2];
    split_kv(h[e], two);
    pieces[0][e] = two[0];
    pieces[1][e] = two[1];
  }
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(pieces[0]);
  *reinterpret_cast<uint4*>(dst + piece_stride) = *reinterpret_cast<const uint4*>(pieces[1]);
}
// The copies issued since the last commit form a group; async_wait returns once every group but
// the newest (leave_newest) or every group has landed, in this thread (a barrier then makes them
// everyone's). (cp.async.wait_group takes its count as an immediate: hence the two calls.)
template <typename KVT> __device__ __forceinline__ void async_commit() {
  if (KvPieces<KVT>::value == 1) __pipeline_commit();
}
template <typename KVT> __device__ __forceinline__ void async_wait(bool leave_newest) {
  if (KvPieces<KVT>::value == 1) {
    if (leave_newest) __pipeline_wait_prior(1);
    else __pipeline_wait_prior(0);
  }
}

// One pass of a CTA over a tile (see the kernel).
struct PassDesc {
  int t0;          // first list position of the tile
  int tok;         // -1: the shared pass; else the token whose own positions it gathers
  unsigned rmask;  // the rows it serves
};

// Length of a masked row's leading run of visible new tokens 0, 1, ..., k-1 (bits j < qo).
__device__ __forceinline__ int mask_lead(const uint64_t* row, int words, int qo) {
  int c = 0;
  for (int w = 0; w < words && w * 64 < qo; ++w) {
    const int bits = min(64, qo - w * 64);
    const uint64_t x = row[w];
    const uint64_t want = bits == 64 ? ~0ull : (1ull << bits) - 1;
    if ((x & want) == want) {
      c += bits;
      continue;
    }
    return c + ctz64(~x);
  }
  return c;
}

template <typename QT, typename KVT, int kStages>
__global__ void __launch_bounds__(kThreads) tree_attention_tc_kernel(const Params p) {
  constexpr int KP = KvPieces<KVT>::value;
  static_assert(kStages == 1 || (kStages == 2 && KP == 1), "two K/V buffers are for bf16 caches (cp.async)");
  const int D = p.D;
  const Layout lay(D, KP, kStages);
  const int ld = lay.ld;
#ifdef __CUDACC__
  extern __shared__ __align__(128) unsigned char tc_smem[];
  unsigned char* base = tc_smem;
#else
  unsigned char* base = ::emu::dynamic_smem<unsigned char>();
#endif
  bf16* Qs = reinterpret_cast<bf16*>(base + lay.q);   // [2][16][ld]: qh, ql
  bf16* Ks = reinterpret_cast<bf16*>(base + lay.k);   // [kStages][KP][64][ld]
  bf16* Vs = reinterpret_cast<bf16*>(base + lay.v);   // [kStages][KP][64][ld]
  bf16* Ps = reinterpret_cast<bf16*>(base + lay.p);   // [2][16][kLdP]: ph, pl
  float* Ss = reinterpret_cast<float*>(base + lay.s);  // [16][kLdP]
  float* Os = reinterpret_cast<float*>(base + lay.o);  // [16][ld]
  float* Acc = reinterpret_cast<float*>(base + lay.acc);  // [16][D]: the current chunk
  float* AccF = reinterpret_cast<float*>(base + lay.acc_fold);  // [16][D]: chunks folded so far
  float* Ms = reinterpret_cast<float*>(base + lay.rowstate);
  float* Ls = Ms + kRows;
  float* Alpha = Ls + kRows;
  float* MF = Alpha + kRows;
  float* LF = MF + kRows;
  float* Sa = LF + kRows;
  float* Sb = Sa + kRows;
  int* Len = reinterpret_cast<int*>(Sb + kRows);
  int* Ident = Len + kRows;
  size_t* Offs = reinterpret_cast<size_t*>(base + lay.offs);  // [2][64]: per staged key, its K's element offset, or kNoKey

  const int b = blockIdx.z, h_kv = blockIdx.y, tid = threadIdx.x, warp = tid / 32;
  const int q0 = p.qo_indptr[b], qo = p.qo_indptr[b + 1] - q0, prefix = p.prefix_len[b];
  const int per_tile = p.split ? (p.max_chunks + p.chunks_per_cta - 1) / p.chunks_per_cta : 1;
  const int tile = blockIdx.x / per_tile, group = blockIdx.x % per_tile;
  const int G = p.G, rows = qo * G, row0 = tile * kRows;
  if (row0 >= rows) return;
  const int nrows = min(kRows, rows - row0);
  const int total = prefix + qo;  // slots of the sequence
  const QT* Q = static_cast<const QT*>(p.q);
  const KVT* KV = static_cast<const KVT*>(p.kv);
  const int32_t* pages = p.page_indices + p.page_indptr[b];
  const size_t v_off = static_cast<size_t>(p.page_size) * p.Hkv * D;
  auto kv_at = [&](int t) {
    return ((static_cast<size_t>(pages[t / p.page_size]) * 2 * p.page_size + t % p.page_size) * p.Hkv + h_kv) * D;
  };
  auto mask_row = [&](int i) { return p.mask + static_cast<size_t>(q0 + i) * p.mask_words; };

  // Rows' list lengths and identity-mapped lengths; q pieces; zeroed state.
  if (tid < kRows) {
    const int r = tid, i = (row0 + r) / G;
    int len = 0, ident = 0;
    if (r < nrows) {
      len = prefix + (p.mask ? attn::mask_count(mask_row(i), p.mask_words, qo) : i + 1);
      ident = p.mask ? prefix + mask_lead(mask_row(i), p.mask_words, qo) : len;
    }
    Len[r] = len, Ident[r] = ident < len ? ident : len;
    MF[r] = -INFINITY, LF[r] = 0.f;
  }
  for (int idx = tid; idx < kRows * D; idx += kThreads) {
    const int r = idx / D, d = idx % D;
    float x = 0.f;
    if (r < nrows) {
      const int row = row0 + r, i = row / G, h = h_kv * G + row % G;
      x = to_f32(Q[(static_cast<size_t>(q0 + i) * p.Hq + h) * D + d]);
    }
    split2(x, Qs + r * ld + d, Qs + kRows * ld + r * ld + d);
    AccF[idx] = 0.f;
  }
  __syncthreads();
  int kv_end = 0;
  for (int r = 0; r < nrows; ++r) kv_end = max(kv_end, Len[r]);

  // The first pass at or after (tile t0, step k) of a chunk ending at t_end: per tile, step -1 is the
  // shared pass (rows whose positions in the tile are all identity-mapped), steps tok_first ..
  // tok_last those tokens' own passes; a pass without rows is skipped. None left: rmask 0. (Returned
  // by value: an out-pointer would put the descriptors on the stack.)
  const int tok_first = row0 / G, tok_last = (row0 + nrows - 1) / G;
  auto next_pass = [&](int t0, int k, int t_end) {
    for (; t0 < t_end; t0 += kKeys, k = -1) {
      for (; k <= tok_last; k = k < 0 ? tok_first : k + 1) {
        unsigned rm = 0;
        if (k < 0) {
          for (int r = 0; r < nrows; ++r)
            if (Len[r] > t0 && min(t0 + kKeys, Len[r]) <= Ident[r]) rm |= 1u << r;
        } else {
          for (int r = max(0, k * G - row0); r < nrows && (row0 + r) / G == k; ++r)
            if (Len[r] > t0 && min(t0 + kKeys, Len[r]) > Ident[r]) rm |= 1u << r;
        }
        if (rm) return PassDesc{t0, k, rm};
      }
    }
    return PassDesc{t_end, -1, 0u};
  };

  // A pass serves the rows in `rmask` over tile t0: tok < 0 stages slots t0.. directly (shared
  // pass), tok >= 0 gathers that token's slots at list positions t0.. (per-token pass). It runs in
  // three steps, so that a bf16 cache's next pass loads while this one computes (kStages buffers):
  //   prepare: each key's K element offset (the page lookup, once per key and pass) into Offs[buf];
  //   issue:   after a barrier, the 16-byte vectors into Ks/Vs[buf] (cp.async for bf16; f16 splits
  //            into pieces as it stores), zeros (+0 in every piece) for keys the rows do not see;
  //   compute: after the copies are waited for and a barrier, S, the softmax, P V and the update.
  auto prepare = [&](const PassDesc& ps, int buf) {
    if (tid < kKeys) {
      const int pos = ps.t0 + tid;
      int slot = -1;
      if (ps.tok < 0) {
        slot = pos < total ? pos : -1;
      } else {
        const int len = prefix + attn::mask_count(mask_row(ps.tok), p.mask_words, qo);
        if (pos < len) slot = pos < prefix ? pos : prefix + attn::mask_nth(mask_row(ps.tok), pos - prefix);
      }
      Offs[buf * kKeys + tid] = slot >= 0 ? kv_at(slot) : kNoKey;
    }
  };
  auto issue = [&](int buf) {
    const int dv = D / kVec;
    bf16* Kb = Ks + static_cast<size_t>(buf) * KP * kKeys * ld;
    bf16* Vb = Vs + static_cast<size_t>(buf) * KP * kKeys * ld;
    for (int idx = tid; idx < kKeys * dv; idx += kThreads) {
      const int kk = idx / dv, d = (idx % dv) * kVec;
      const size_t off = Offs[buf * kKeys + kk];
      stage_key(off == kNoKey ? nullptr : KV + off + d, Kb + kk * ld + d, static_cast<size_t>(kKeys) * ld);
      stage_key(off == kNoKey ? nullptr : KV + off + v_off + d, Vb + kk * ld + d, static_cast<size_t>(kKeys) * ld);
    }
    async_commit<KVT>();
  };
  auto compute = [&](const PassDesc& ps, int buf) {
    const int t0 = ps.t0;
    const unsigned rmask = ps.rmask;
    const bf16* Kb = Ks + static_cast<size_t>(buf) * KP * kKeys * ld;
    const bf16* Vb = Vs + static_cast<size_t>(buf) * KP * kKeys * ld;
    // S = Q K^T: warp w owns keys 16w .. 16w+15.
    {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
      wmma::fill_fragment(s, 0.f);
      for (int kd = 0; kd < D; kd += 16) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> kb[KP];
#pragma unroll
        for (int c = 0; c < KP; ++c) wmma::load_matrix_sync(kb[c], Kb + (c * kKeys + 16 * warp) * ld + kd, ld);
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
#pragma unroll
        for (int piece = 0; piece < 2; ++piece) {
          wmma::load_matrix_sync(a, Qs + piece * kRows * ld + kd, ld);
#pragma unroll
          for (int c = 0; c < KP; ++c) wmma::mma_sync(s, a, kb[c], s);
        }
      }
      wmma::store_matrix_sync(Ss + 16 * warp, s, kLdP, wmma::mem_row_major);
    }
    __syncthreads();
    // Online softmax, a warp per row (rows w, w + 4, ...), lane l on columns l and l + 32. The max
    // is exact in any order; the row sum is a fixed tree (each lane's two columns, then a xor
    // butterfly, which leaves every lane the same bits), the same for every row whatever shares it.
    for (int r = warp; r < kRows; r += kWarps) {
      const int lane = tid & 31;
      bf16* ph = Ps + r * kLdP;
      bf16* pl = Ps + kRows * kLdP + r * kLdP;
      if ((rmask >> r) & 1u) {
        const int n = min(kKeys, Len[r] - t0);  // visible columns 0 .. n-1 (n >= 1)
        const float* sr = Ss + r * kLdP;
        const float s0 = lane < n ? __fmul_rn(sr[lane], p.scale_log2) : -INFINITY;
        const float s1 = lane + 32 < n ? __fmul_rn(sr[lane + 32], p.scale_log2) : -INFINITY;
        float mt = fmaxf(s0, s1);
        for (int o = 16; o > 0; o >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
        const float m = Ms[r], mn = fmaxf(m, mt);
        const float alpha = m == mn ? 1.f : m == -INFINITY ? 0.f : exp2f(__fsub_rn(m, mn));
        const float p0 = lane < n ? exp2f(__fsub_rn(s0, mn)) : 0.f;
        const float p1 = lane + 32 < n ? exp2f(__fsub_rn(s1, mn)) : 0.f;
        split2(p0, ph + lane, pl + lane);
        split2(p1, ph + lane + 32, pl + lane + 32);
        float sum = __fadd_rn(p0, p1);
        for (int o = 16; o > 0; o >>= 1) sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, o));
        __syncwarp();  // every lane has read Ms[r] before lane 0 rewrites it
        if (lane == 0) {
          Ls[r] = __fadd_rn(__fmul_rn(Ls[r], alpha), sum);
          Ms[r] = mn;
          Alpha[r] = alpha;
        }
      } else {
        ph[lane] = pl[lane] = ph[lane + 32] = pl[lane + 32] = __float2bfloat16_rn(0.f);
      }
    }
    __syncthreads();
    // O = P V: warp w owns head-dim blocks w, w + 4, ...
    for (int c0 = 16 * warp; c0 < D; c0 += 16 * kWarps) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o;
      wmma::fill_fragment(o, 0.f);
      for (int kb = 0; kb < kKeys; kb += 16) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> vb[KP];
#pragma unroll
        for (int c = 0; c < KP; ++c) wmma::load_matrix_sync(vb[c], Vb + (c * kKeys + kb) * ld + c0, ld);
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
#pragma unroll
        for (int piece = 0; piece < 2; ++piece) {
          wmma::load_matrix_sync(a, Ps + piece * kRows * kLdP + kb, kLdP);
#pragma unroll
          for (int c = 0; c < KP; ++c) wmma::mma_sync(o, a, vb[c], o);
        }
      }
      wmma::store_matrix_sync(Os + c0, o, ld, wmma::mem_row_major);
    }
    __syncthreads();
    for (int idx = tid; idx < kRows * D; idx += kThreads) {
      const int r = idx / D;
      if ((rmask >> r) & 1u) Acc[idx] = __fadd_rn(__fmul_rn(Acc[idx], Alpha[r]), Os[r * ld + idx % D]);
    }
    // The next pass's writes (Offs, K/V) touch nothing read here, and its softmax (which rewrites
    // Alpha) comes after two more barriers.
  };

  const int n_chunks = (kv_end + attn::kChunk - 1) / attn::kChunk;
  // Split: this CTA owns the partials of chunks c_begin .. c_end-1 (written even when empty).
  const int c_begin = p.split ? group * p.chunks_per_cta : 0;
  const int c_end = p.split ? min(c_begin + p.chunks_per_cta, p.max_chunks) : n_chunks;
  for (int c = c_begin; c < c_end; ++c) {
    __syncthreads();  // the previous chunk's fold has read Ms/Ls/Acc
    if (tid < kRows) Ms[tid] = -INFINITY, Ls[tid] = 0.f;
    for (int idx = tid; idx < kRows * D; idx += kThreads) Acc[idx] = 0.f;
    // (the first pass's barriers order these writes before the softmax and the accumulator update)
    const int t_end = min((c + 1) * attn::kChunk, kv_end);
    // The chunk's passes in order: per tile, the shared pass, then the tokens' own passes.
    PassDesc cur = next_pass(c * attn::kChunk, -1, t_end);
    bool more = cur.rmask != 0;
    if (more) {
      prepare(cur, 0);
      __syncthreads();
      issue(0);
    }
    for (int buf = 0; more;) {
      const PassDesc nxt = next_pass(cur.t0, cur.tok < 0 ? tok_first : cur.tok + 1, t_end);
      more = nxt.rmask != 0;
      const bool ahead = kStages == 2 && more;  // the next pass loads while this one computes
      if (ahead) {
        prepare(nxt, buf ^ 1);
        __syncthreads();
        issue(buf ^ 1);
        async_wait<KVT>(true);
      } else {
        async_wait<KVT>(false);
      }
      __syncthreads();
      compute(cur, buf);
      if (!more) break;
      if (ahead) {
        buf ^= 1;
      } else {
        prepare(nxt, buf);
        __syncthreads();
        issue(buf);
      }
      cur = nxt;
    }
    __syncthreads();
    if (p.split) {
      // Every chunk's partial is stored on its own (m = -inf: empty); the merge kernel
      // (attn::tree_attention_merge_kernel) folds them in chunk order with attn::fold.
      for (int idx = tid; idx < nrows * D; idx += kThreads) {
        const int r = idx / D, row = row0 + r;
        const size_t slot = (static_cast<size_t>(q0 + row / G) * p.Hq + h_kv * G + row % G) * p.max_chunks + c;
        p.part_acc[slot * D + idx % D] = Acc[idx];
        if (idx % D == 0) p.part_ml[slot * 2] = Ms[r], p.part_ml[slot * 2 + 1] = Ls[r];
      }
      continue;
    }
    // In-CTA fold of this chunk: attn::fold's formula, operation for operation.
    if (tid < kRows) {
      const int r = tid;
      const float M = MF[r], m = Ms[r];
      if (m != -INFINITY) {
        const float mn = fmaxf(M, m);
        const float sa = M == mn ? 1.f : M == -INFINITY ? 0.f : exp2f(__fsub_rn(M, mn));
        const float sb = m == mn ? 1.f : exp2f(__fsub_rn(m, mn));
        LF[r] = __fadd_rn(__fmul_rn(LF[r], sa), __fmul_rn(Ls[r], sb));
        MF[r] = mn;
        Sa[r] = sa, Sb[r] = sb;
      }
    }
    __syncthreads();
    for (int idx = tid; idx < kRows * D; idx += kThreads) {
      const int r = idx / D;
      if (Ms[r] != -INFINITY) AccF[idx] = __fadd_rn(__fmul_rn(AccF[idx], Sa[r]), __fmul_rn(Acc[idx], Sb[r]));
    }
  }
  if (p.split) return;
  __syncthreads();
  for (int idx = tid; idx < nrows * D; idx += kThreads) {
    const int r = idx / D, d = idx % D, row = row0 + r, i = row / G, h = h_kv * G + row % G;
    QT* O = static_cast<QT*>(p.out) + (static_cast<size_t>(q0 + i) * p.Hq + h) * D;
    O[d] = from_f32<QT>(attn::finalize(AccF[idx], LF[r]));
  }
}

// The launch, decided on the host; shared by attention.cu and the host emulation. The grid and the
// split-KV decision are attention.cuh's plan_launch (same 16-row tiles, same 256-position chunks, same
// partial layout and merge kernel); only the shared memory differs. Sets p.max_chunks, p.split and
// p.chunks_per_cta (p.G, p.Hkv, p.Hq, p.D must be set). grid = (grid_x, Hkv, B), block = kThreads.
using attn::Plan;
inline Plan plan_launch(Params& p, int64_t B, const int32_t* h_qo_indptr, const int32_t* h_prefix_len, int64_t max_qo_len,
                        int64_t max_kv_len, int64_t sm_count, int kv_pieces, int stages) {
  static_assert(kRows == attn::kRowsPerCta && attn::kChunk % kKeys == 0, "tiles and chunks must match attention.cuh's planner");
  Plan plan = attn::plan_launch(p, B, h_qo_indptr, h_prefix_len, max_qo_len, max_kv_len, sm_count, 2);  // bf16/f16 cache
  plan.smem = Layout(p.D, kv_pieces, stages).bytes;
  return plan;
}
// K/V buffers for this head dim and opt-in shared memory: two (loads overlap the tile's math) for a
// bf16 cache when they fit, else one.
inline int stages_for(int D, int kv_pieces, size_t max_smem) {
  return kv_pieces == 1 && Layout(D, 1, 2).bytes <= max_smem ? 2 : 1;
}
// Whether the kernel serves this head dim with this much opt-in shared memory per block.
inline bool supported(int D, int kv_pieces, size_t max_smem) {
  return D > 0 && D % 16 == 0 && D <= kMaxHeadDim && Layout(D, kv_pieces).bytes <= max_smem;
}

}  // namespace attn_tc
}  // namespace cuda
}  // namespace specdec

// Tree attention over a paged bf16 KV cache on tensor cores, in registers (mma.sync m16n8k16, sm_80+),
// head dims 64 and 128: the fast path of attention_tc.cuh, with the same bits.
//
// attention_tc.cuh defines the arithmetic (q and P split into two bf16 pieces, 64-key tiles of each
// row's ordered list of visible slots, the shared and per-token passes, the fixed softmax sum tree,
// 256-position chunks folded in order, split-KV partials) and keeps S, P and O in shared memory with
// a CTA barrier between each step, 16 query rows per CTA. This kernel runs the same operations in the
// same order per output element, FlashAttention-2 style:
//   - a warp owns 16 query rows; S, P, the chunk's O and the folded state live in its registers (mma
//     fragment layouts, cuda/mma.cuh); the softmax max and sum run across the 4 lanes of a row's quad
//     in the tree attention_tc.cuh uses (column bit 5, 4, 3 inside a lane, bits 2 and 1 across the
//     quad, bit 0 inside the lane: the pairs of its lane-pair-then-butterfly order), so every partial
//     sum is the same pair of the same values;
//   - a CTA of kW warps (16 kW rows: the tokens of a tree or a prefill, all query heads of a GQA group)
//     shares each K/V tile: staged by cp.async into two buffers (the next pass's tile loads while this
//     one computes), read by ldmatrix; the only CTA barriers are the two per pass around the staging;
//   - one warp per CTA when a sequence has at most 16 query rows (decode), so many small CTAs stream
//     the cache; chunk closes (fold, or split-KV partials) are warp-local, and the next chunk's first
//     tile is already in flight;
//   - a tree's tile (rows below a branch read their own gathered list) is one pass, not one per token:
//     each warp runs its tokens' rows on keys addressed row by row through ldmatrix (see `gather`).
// An m16n8k16 output element depends only on its A row and B column, and its k-sum is the same 16
// products as wmma's 16x16x16 (which is two such mma), so a row's result equals attention_tc.cuh's bit
// for bit (test/emu/attention_tc_emu.cc checks it, with the tree = path and batch checks).
//
// Performance model (H100/H200, per KV head and 64-key tile: 32 KB of K/V at D = 128; per warp 256
// mma of 4096 flops): streaming is bound by HBM (each CTA keeps one tile in flight while it computes,
// 2-3 CTAs per SM: 64-96 KB in flight per SM, above the ~40 KB that bandwidth x latency needs), the
// math by the mma rate only above ~64 rows per KV head. Predictions, not measurements.
#pragma once
#include <cstddef>
#include <cstdint>

#include "attention_tc.cuh"
#include "mma.cuh"

namespace specdec {
namespace cuda {
namespace attn_mma {

using bf16 = __nv_bfloat16;
using attn::Params;
constexpr int kKeys = attn_tc::kKeys;  // 64: list positions per tile, as attention_tc.cuh
static_assert(kKeys == 64, "the softmax sum tree below is written for 64-key tiles");

// Shared memory, bytes from the (128-byte aligned) dynamic base; every region 128-byte aligned. Row
// stride D + 8 elements: 16-byte aligned rows whose 8 ldmatrix rows fall in distinct bank groups.
struct Layout {
  int ld = 0;
  size_t q = 0, k = 0, v = 0, zero = 0, offs = 0, len = 0, bytes = 0;
  __host__ __device__ Layout(int D, int warps) {
    ld = D + 8;
    const size_t rows = 16 * static_cast<size_t>(warps);
    auto take = [this](size_t& at, size_t n) {
      at = bytes;
      bytes += (n + 127) / 128 * 128;
    };
    take(q, 2 * rows * ld * 2);         // qh, ql
    take(k, 2ull * kKeys * ld * 2);     // two buffers
    take(v, 2ull * kKeys * ld * 2);
    take(zero, static_cast<size_t>(ld) * 2);  // a row of zeros: K and V past a gathered list's end
    take(offs, 2ull * kKeys * 8);
    take(len, 2 * rows * 4);            // list length, identity-mapped length
  }
};

// One pass over a tile (attention_tc.cuh's PassDesc, with up to 64 rows). mixed: some rows gather
// their keys (see the kernel).
struct Pass {
  int t0;
  int tok;
  uint64_t rmask;
  bool mixed;
};

// Zeroes an array of mma accumulator fragments.
template <int N>
__device__ __forceinline__ void zero_frags(float (&f)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) f[i][e] = 0.f;
}

// Index of the n-th set bit of x (x has more than n set bits).
__device__ __forceinline__ int select64(uint64_t x, int n) {
  int pos = 0;
#pragma unroll
  for (int w = 32; w >= 1; w >>= 1) {
    const int c = popc64(x & ((1ull << w) - 1));
    if (n >= c) {
      n -= c;
      x >>= w;
      pos += w;
    }
  }
  return pos;
}

template <typename QT, int DT, int kW>
__global__ void __launch_bounds__(kW * 32) tree_attention_mma_kernel(const Params p) {
  constexpr int R = 16 * kW, T = kW * 32, ND = DT / 8, KD = DT / 16, LD = DT + 8;
  static_assert(DT % 16 == 0 && (kW == 1 || kW == 2 || kW == 4), "head dim a multiple of 16; 1, 2 or 4 warps");
  const Layout lay(DT, kW);
#ifdef __CUDACC__
  extern __shared__ __align__(128) unsigned char mma_smem[];
  unsigned char* base = mma_smem;
#else
  unsigned char* base = ::emu::dynamic_smem<unsigned char>();
#endif
  bf16* Qs = reinterpret_cast<bf16*>(base + lay.q);  // [2][R][LD]
  bf16* Ks = reinterpret_cast<bf16*>(base + lay.k);  // [2][64][LD]
  bf16* Vs = reinterpret_cast<bf16*>(base + lay.v);  // [2][64][LD]
  const bf16* Zero = reinterpret_cast<const bf16*>(base + lay.zero);  // [LD] zeros
  size_t* Offs = reinterpret_cast<size_t*>(base + lay.offs);  // [2][64]
  int* Len = reinterpret_cast<int*>(base + lay.len);          // [R]
  int* Ident = Len + R;                                       // [R]

  const int b = blockIdx.z, h_kv = blockIdx.y, tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, q4 = lane % 4;
  const int q0 = p.qo_indptr[b], qo = p.qo_indptr[b + 1] - q0, prefix = p.prefix_len[b];
  const int per_tile = p.split ? (p.max_chunks + p.chunks_per_cta - 1) / p.chunks_per_cta : 1;
  const int tile = blockIdx.x / per_tile, group = blockIdx.x % per_tile;
  const int G = p.G, rows = qo * G, row0 = tile * R;
  if (row0 >= rows) return;
  const int nrows = min(R, rows - row0);
  const int total = prefix + qo;
  const QT* Q = static_cast<const QT*>(p.q);
  const bf16* KV = static_cast<const bf16*>(p.kv);
  const int32_t* pages = p.page_indices + p.page_indptr[b];
  const size_t v_off = static_cast<size_t>(p.page_size) * p.Hkv * DT;
  auto kv_at = [&](int t) {
    return ((static_cast<size_t>(pages[t / p.page_size]) * 2 * p.page_size + t % p.page_size) * p.Hkv + h_kv) * DT;
  };
  auto mask_row = [&](int i) { return p.mask + static_cast<size_t>(q0 + i) * p.mask_words; };

  for (int r = tid; r < R; r += T) {
    const int i = (row0 + r) / G;
    int len = 0, ident = 0;
    if (r < nrows) {
      len = prefix + (p.mask ? attn::mask_count(mask_row(i), p.mask_words, qo) : i + 1);
      ident = p.mask ? prefix + attn_tc::mask_lead(mask_row(i), p.mask_words, qo) : len;
    }
    Len[r] = len, Ident[r] = ident < len ? ident : len;
  }
  for (int idx = tid; idx < R * DT; idx += T) {
    const int r = idx / DT, d = idx % DT;
    float x = 0.f;
    if (r < nrows) {
      const int row = row0 + r, i = row / G, h = h_kv * G + row % G;
      x = to_f32(Q[(static_cast<size_t>(q0 + i) * p.Hq + h) * DT + d]);
    }
    attn_tc::split2(x, Qs + r * LD + d, Qs + R * LD + r * LD + d);
  }
  for (int d = tid; d < LD; d += T) reinterpret_cast<bf16*>(base + lay.zero)[d] = __float2bfloat16_rn(0.f);
  __syncthreads();
  int kv_end = 0;
  for (int r = 0; r < nrows; ++r) kv_end = max(kv_end, Len[r]);

  // The passes. attention_tc.cuh runs, per tile, the shared pass (rows whose positions in the tile are
  // all identity-mapped) and then each token's own pass, which stages that token's gathered keys with
  // CTA barriers around it: 16 passes in a 4-warp CTA's tree tile. Here, when the sequence has at most
  // 64 new tokens (a tree, a lookahead window: `gather`), a tile is ONE pass: the shared tile in one
  // buffer, all the new tokens in the other (a "mixed" pass, loaded without prefetch), and each warp
  // runs its rows in sets -- the identity-mapped rows on the shared tile, then per token its rows on
  // that token's keys, addressed row by row through ldmatrix: list position t0 + kk is shared row kk
  // below the prefix, new-token row select64(mask, ...) above it, the zero row past the list. The
  // operands, and so the bits, are those of the token's own pass. Otherwise the per-token passes.
  const int tok_first = row0 / G, tok_last = (row0 + nrows - 1) / G;
  const bool gather = p.mask != nullptr && qo <= kKeys;  // every visible new token in mask word 0 and a region row
  auto next_pass = [&](int t0, int k, int t_end) {
    for (; t0 < t_end; t0 += kKeys, k = -1) {
      if (gather) {
        uint64_t rm = 0;
        bool mixed = false;
        for (int r = 0; r < nrows; ++r)
          if (Len[r] > t0) {
            rm |= 1ull << r;
            mixed = mixed || min(t0 + kKeys, Len[r]) > Ident[r];
          }
        if (rm) return Pass{t0, -1, rm, mixed};
        continue;
      }
      for (; k <= tok_last; k = k < 0 ? tok_first : k + 1) {
        uint64_t rm = 0;
        if (k < 0) {
          for (int r = 0; r < nrows; ++r)
            if (Len[r] > t0 && min(t0 + kKeys, Len[r]) <= Ident[r]) rm |= 1ull << r;
        } else {
          for (int r = max(0, k * G - row0); r < nrows && (row0 + r) / G == k; ++r)
            if (Len[r] > t0 && min(t0 + kKeys, Len[r]) > Ident[r]) rm |= 1ull << r;
        }
        if (rm) return Pass{t0, k, rm, false};
      }
    }
    return Pass{t_end, -1, 0ull, false};
  };
  auto prepare = [&](const Pass& ps, int buf) {
    for (int kk = tid; kk < kKeys; kk += T) {
      const int pos = ps.t0 + kk;
      int slot = -1;
      if (ps.tok < 0) {
        slot = pos < total ? pos : -1;
      } else {
        const int len = prefix + attn::mask_count(mask_row(ps.tok), p.mask_words, qo);
        if (pos < len) slot = pos < prefix ? pos : prefix + attn::mask_nth(mask_row(ps.tok), pos - prefix);
      }
      Offs[buf * kKeys + kk] = slot >= 0 ? kv_at(slot) : attn_tc::kNoKey;
    }
  };
  // Rows 0 .. n-1 of buffer buf by cp.async, row i from the K element offset off_of(i) (kNoKey: zeros),
  // as one group.
  auto issue_rows = [&](int buf, int n, auto off_of) {
    constexpr int dv = DT / attn_tc::kVec;
    bf16* Kb = Ks + buf * kKeys * LD;
    bf16* Vb = Vs + buf * kKeys * LD;
    for (int idx = tid; idx < n * dv; idx += T) {
      const int i = idx / dv, d = (idx % dv) * attn_tc::kVec;
      const size_t off = off_of(i);
      attn_tc::stage_key(off == attn_tc::kNoKey ? nullptr : KV + off + d, Kb + i * LD + d, 0);
      attn_tc::stage_key(off == attn_tc::kNoKey ? nullptr : KV + off + v_off + d, Vb + i * LD + d, 0);
    }
    __pipeline_commit();
  };
  // A pass's keys, as prepare() located them.
  auto issue = [&](int buf) { issue_rows(buf, kKeys, [&](int kk) { return Offs[buf * kKeys + kk]; }); };
  // The new tokens 0 .. qo-1 (slots prefix + i) into rows i of buffer buf (a mixed pass's other buffer).
  auto issue_region = [&](int buf) { issue_rows(buf, qo, [&](int i) { return kv_at(prefix + i); }); };

  // This lane's two rows (CTA rows 16 warp + g and + 8): the chunk's state (m, l, acc) and the folded
  // state (M, L, accf), in the mma accumulator layout: acc[nd][e] is dim 8 nd + 2 q4 + e % 2 of row
  // g + 8 (e / 2).
  const int ra = 16 * warp + g, rb = ra + 8;
  const int len_a = Len[ra], len_b = Len[rb];
  float m[2], l[2], acc[ND][4];
  float M[2] = {-INFINITY, -INFINITY}, L[2] = {0.f, 0.f}, accf[ND][4];
  zero_frags(accf);
  auto reset = [&] {
    m[0] = m[1] = -INFINITY, l[0] = l[1] = 0.f;
    zero_frags(acc);
  };

  // The warp's rows in `smask` (bit r: CTA row 16 warp + r) over tile t0, their keys at list positions
  // t0 .. t0+63 read from: tok < 0, rows 0..63 of buffer buf (staged for these rows); tok >= 0, token
  // tok's gathered list (shared rows of buf below the prefix, new-token rows of buf ^ 1 above it).
  auto run_set = [&](int t0, unsigned smask, int tok, int buf) {
    const bool serve[2] = {((smask >> g) & 1u) != 0, ((smask >> (g + 8)) & 1u) != 0};
    const int n[2] = {serve[0] ? min(kKeys, len_a - t0) : 0, serve[1] ? min(kKeys, len_b - t0) : 0};
    const bf16* Kb = Ks + buf * kKeys * LD;
    const bf16* Vb = Vs + buf * kKeys * LD;
    // Where key kk's K row sits (its V row: the same offset in Vs; the zero row serves both).
    const uint64_t* mrow = tok >= 0 ? mask_row(tok) : nullptr;
    const int len_t = tok >= 0 ? Len[16 * warp + __ffs(static_cast<int>(smask)) - 1] : 0;
    auto key_row = [&](int kk, const bf16* Sb, int region_buf_off) -> const bf16* {
      if (tok < 0) return Sb + kk * LD;
      const int pos = t0 + kk;
      if (pos >= len_t) return Zero;
      if (pos < prefix) return Sb + kk * LD;
      return Sb + region_buf_off + select64(mrow[0], pos - prefix) * LD;
    };
    const int region_off = ((buf ^ 1) - buf) * kKeys * LD;  // from buffer buf to buffer buf ^ 1
    // S = Q K^T: per 8-key block nb, one chain over the head dim, qh then ql at each 16-wide step.
    float s[8][4];
    zero_frags(s);
#pragma unroll
    for (int kd = 0; kd < KD; ++kd) {
      uint32_t qa[2][4];
      const bf16* qrow = Qs + (16 * warp + (lane & 15)) * LD + kd * 16 + 8 * (lane >> 4);
      mma::ldmatrix_x4(qa[0], qrow);
      mma::ldmatrix_x4(qa[1], qrow + R * LD);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t kf[4];  // b0, b1 of key blocks 2j and 2j + 1
        mma::ldmatrix_x4(kf, key_row(16 * j + (lane & 7) + 8 * (lane >> 4), Kb, region_off) + kd * 16 + 8 * ((lane >> 3) & 1));
        mma::mma_bf16(s[2 * j], qa[0], kf[0], kf[1]);
        mma::mma_bf16(s[2 * j], qa[1], kf[0], kf[1]);
        mma::mma_bf16(s[2 * j + 1], qa[0], kf[2], kf[3]);
        mma::mma_bf16(s[2 * j + 1], qa[1], kf[2], kf[3]);
      }
    }
    // Online softmax per row (h = 0: row g, h = 1: row g + 8); column c = 8 nb + 2 q4 + e. s becomes P.
    float alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mt = -INFINITY;
#pragma unroll
      for (int nb = 0; nb < 8; ++nb)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = 8 * nb + 2 * q4 + e;
          const float x = c < n[h] ? __fmul_rn(s[nb][2 * h + e], p.scale_log2) : -INFINITY;
          s[nb][2 * h + e] = x;
          mt = fmaxf(mt, x);
        }
      mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
      mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
      const float mo = m[h], mn = fmaxf(mo, mt);
      alpha[h] = mo == mn ? 1.f : mo == -INFINITY ? 0.f : exp2f(__fsub_rn(mo, mn));
#pragma unroll
      for (int nb = 0; nb < 8; ++nb)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = 8 * nb + 2 * q4 + e;
          float& x = s[nb][2 * h + e];
          x = c < n[h] ? exp2f(__fsub_rn(x, mn)) : 0.f;
        }
      // The sum: column bit 5 (nb + 4), bit 4 (nb + 2), bit 3 (nb + 1), bit 2 (lane ^ 2), bit 1
      // (lane ^ 1), bit 0 (e).
      float w2[2][2];
#pragma unroll
      for (int nb = 0; nb < 2; ++nb)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          w2[nb][e] = __fadd_rn(__fadd_rn(s[nb][2 * h + e], s[nb + 4][2 * h + e]), __fadd_rn(s[nb + 2][2 * h + e], s[nb + 6][2 * h + e]));
      float w3[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        w3[e] = __fadd_rn(w2[0][e], w2[1][e]);
        w3[e] = __fadd_rn(w3[e], __shfl_xor_sync(0xffffffffu, w3[e], 2));
        w3[e] = __fadd_rn(w3[e], __shfl_xor_sync(0xffffffffu, w3[e], 1));
      }
      const float sum = __fadd_rn(w3[0], w3[1]);
      if (serve[h]) {  // (a row not served has n = 0: its P is all zeros, as attention_tc.cuh stages it)
        l[h] = __fadd_rn(__fmul_rn(l[h], alpha[h]), sum);
        m[h] = mn;
      }
    }
    // P in two bf16 pieces as mma A fragments: key block kb is 8-key blocks 2 kb and 2 kb + 1.
    uint32_t ph[4][4], pl[4][4];
#pragma unroll
    for (int kb = 0; kb < 4; ++kb)
#pragma unroll
      for (int f = 0; f < 4; ++f) {
        // a0: row g, a1: row g + 8, a2 / a3: the same rows' next 8 keys
        bf16 h0, l0, h1, l1;
        attn_tc::split2(s[2 * kb + f / 2][2 * (f % 2)], &h0, &l0);
        attn_tc::split2(s[2 * kb + f / 2][2 * (f % 2) + 1], &h1, &l1);
        ph[kb][f] = mma::pack_bf16(h0, h1);
        pl[kb][f] = mma::pack_bf16(l0, l1);
      }
    // O = P V per 16 dims (8-dim blocks 2 j, 2 j + 1): a fresh chain over key blocks 0..3, ph then pl,
    // then acc = acc * alpha + O for the served rows.
#pragma unroll
    for (int j = 0; j < ND / 2; ++j) {
      float o[2][4];
      zero_frags(o);
#pragma unroll
      for (int kb = 0; kb < 4; ++kb) {
        uint32_t vf[4];  // b0, b1 of dim blocks 2j and 2j + 1
        mma::ldmatrix_x4_trans(vf, key_row(16 * kb + (lane & 7) + 8 * ((lane >> 3) & 1), Vb, region_off) + 16 * j + 8 * (lane >> 4));
        mma::mma_bf16(o[0], ph[kb], vf[0], vf[1]);
        mma::mma_bf16(o[0], pl[kb], vf[0], vf[1]);
        mma::mma_bf16(o[1], ph[kb], vf[2], vf[3]);
        mma::mma_bf16(o[1], pl[kb], vf[2], vf[3]);
      }
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (serve[e / 2]) acc[2 * j + t][e] = __fadd_rn(__fmul_rn(acc[2 * j + t][e], alpha[e / 2]), o[t][e]);
    }
  };
  auto compute = [&](const Pass& ps, int buf) {
    const unsigned wmask = static_cast<unsigned>(ps.rmask >> (16 * warp)) & 0xffffu;
    if (wmask == 0) return;  // warp-uniform: none of this warp's rows in this pass
    unsigned gathered = 0;   // rows whose positions in this tile are not all identity-mapped
    if (ps.mixed)
      for (int r = 0; r < 16; ++r) {
        const int cr = 16 * warp + r;
        if (((wmask >> r) & 1u) && min(ps.t0 + kKeys, Len[cr]) > Ident[cr]) gathered |= 1u << r;
      }
    // The sets: the identity-mapped rows (tok = -1), then each of the warp's tokens with gathered rows
    // (one call site, so the set's code is emitted once).
    const int k_first = (row0 + 16 * warp) / G, k_last = gathered ? min(tok_last, (row0 + 16 * warp + 15) / G) : k_first - 1;
    for (int k = k_first - 1; k <= k_last; ++k) {
      unsigned smask = wmask & ~gathered;
      if (k >= k_first) {
        smask = 0;  // the token's gathered rows in this warp
        for (int r = 0; r < 16; ++r)
          if ((row0 + 16 * warp + r) / G == k) smask |= 1u << r;
        smask &= gathered;
      }
      if (smask) run_set(ps.t0, smask, k >= k_first ? k : -1, buf);
    }
  };

  // Close chunk c: its partials (split), or fold it into the row's state (attn::fold's formula).
  auto close_chunk = [&](int c) {
    if (p.split) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = ra + 8 * h, row = row0 + r;
        if (r >= nrows) continue;
        const size_t slot = (static_cast<size_t>(q0 + row / G) * p.Hq + h_kv * G + row % G) * p.max_chunks + c;
        float* dst = p.part_acc + slot * DT + 2 * q4;
#pragma unroll
        for (int nd = 0; nd < ND; ++nd) dst[8 * nd] = acc[nd][2 * h], dst[8 * nd + 1] = acc[nd][2 * h + 1];
        if (q4 == 0) p.part_ml[slot * 2] = m[h], p.part_ml[slot * 2 + 1] = l[h];
      }
      return;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (m[h] == -INFINITY) continue;
      const float mn = fmaxf(M[h], m[h]);
      const float sa = M[h] == mn ? 1.f : M[h] == -INFINITY ? 0.f : exp2f(__fsub_rn(M[h], mn));
      const float sb = m[h] == mn ? 1.f : exp2f(__fsub_rn(m[h], mn));
      L[h] = __fadd_rn(__fmul_rn(L[h], sa), __fmul_rn(l[h], sb));
      M[h] = mn;
#pragma unroll
      for (int nd = 0; nd < ND; ++nd)
#pragma unroll
        for (int e = 0; e < 2; ++e)
          accf[nd][2 * h + e] = __fadd_rn(__fmul_rn(accf[nd][2 * h + e], sa), __fmul_rn(acc[nd][2 * h + e], sb));
    }
  };

  // The CTA's chunks c_begin .. c_end-1 (split: their partials, written even when empty). Passes run
  // back to back across chunk boundaries, so the next chunk's first tile loads while this one's last
  // computes; a warp closes a chunk when its first pass past it comes up.
  const int n_chunks = (kv_end + attn::kChunk - 1) / attn::kChunk;
  const int c_begin = p.split ? group * p.chunks_per_cta : 0;
  const int c_end = p.split ? min(c_begin + p.chunks_per_cta, p.max_chunks) : n_chunks;
  const int t_stop = min(c_end * attn::kChunk, kv_end);
  reset();
  int c = c_begin;
  // A pass stages into buffer buf (a mixed pass also into buf ^ 1, its new tokens); the next pass loads
  // into the other buffer while this one computes unless either is mixed.
  auto stage = [&](const Pass& ps, int buf) {
    prepare(ps, buf);
    __syncthreads();  // every warp is done with both buffers' previous contents
    issue(buf);
    if (ps.mixed) issue_region(buf ^ 1);
  };
  Pass cur = next_pass(c_begin * attn::kChunk, -1, t_stop);
  bool more = cur.rmask != 0;
  if (more) stage(cur, 0);
  for (int buf = 0; more;) {
    const Pass nxt = gather ? next_pass(cur.t0 + kKeys, -1, t_stop) : next_pass(cur.t0, cur.tok < 0 ? tok_first : cur.tok + 1, t_stop);
    more = nxt.rmask != 0;
    const bool ahead = more && !cur.mixed && !nxt.mixed;
    if (ahead) {
      stage(nxt, buf ^ 1);
      __pipeline_wait_prior(1);
    } else {
      __pipeline_wait_prior(0);
    }
    __syncthreads();  // cur's tile, every thread's copies, has landed
    for (; c < cur.t0 / attn::kChunk; ++c) {
      close_chunk(c);
      reset();
    }
    compute(cur, buf);
    if (!more) break;
    if (ahead) {
      buf ^= 1;
    } else {
      buf = 0;
      stage(nxt, 0);
    }
    cur = nxt;
  }
  for (; c < c_end; ++c) {
    close_chunk(c);
    reset();
  }
  if (p.split) return;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = ra + 8 * h, row = row0 + r;
    if (r >= nrows) continue;
    const int i = row / G, hq = h_kv * G + row % G;
    QT* O = static_cast<QT*>(p.out) + (static_cast<size_t>(q0 + i) * p.Hq + hq) * DT + 2 * q4;
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) {
      O[8 * nd] = from_f32<QT>(attn::finalize(accf[nd][2 * h], L[h]));
      O[8 * nd + 1] = from_f32<QT>(attn::finalize(accf[nd][2 * h + 1], L[h]));
    }
  }
}

// Warps per CTA: one when every sequence has at most 16 query rows (decode: many small CTAs stream
// the cache), else four (the rows of a tree or a prefill share each K/V tile).
inline int warps_for(int64_t max_qo_len, int G) { return max_qo_len * G > 16 ? 4 : 1; }
// Whether this kernel serves the problem: a bf16 cache (checked by the caller), head dim 64 or 128,
// its shared memory within the opt-in limit.
inline bool supported(int D, int warps, size_t max_smem) { return (D == 64 || D == 128) && Layout(D, warps).bytes <= max_smem; }

// The launch, decided on the host (attention.cu and the host emulation): attention.cuh's planner over
// CTAs of 16 * warps rows, resident_per_sm of them per SM (the occupancy calculator's answer on a
// GPU: small decode CTAs fit several to an SM). grid = (grid_x, Hkv, B), block = 32 * warps.
inline attn::Plan plan_launch(Params& p, int64_t B, const int32_t* h_qo_indptr, const int32_t* h_prefix_len, int64_t max_qo_len,
                              int64_t max_kv_len, int64_t sm_count, int warps, int resident_per_sm = 2) {
  attn::Plan plan = attn::plan_launch(p, B, h_qo_indptr, h_prefix_len, max_qo_len, max_kv_len, sm_count, 2, 16 * warps, resident_per_sm);
  plan.smem = Layout(p.D, warps).bytes;
  return plan;
}

}  // namespace attn_mma
}  // namespace cuda
}  // namespace specdec

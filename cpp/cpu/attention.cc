// CPU reference of fused tree attention over a paged prefix plus the new tokens.
//
// Work items are (sequence, KV head, block of up to kRowBlock query rows); a sequence's rows are
// (new token i, query head g of the KV head's group). K and V are read in place from the pages
// (f16/bf16 converted on load, exactly) and every per-call buffer is reused thread-local scratch,
// so a call allocates nothing once warm. Per block: the rows' scores against the prefix, tiled so
// a tile of K stays in L1 across the rows, then against each row's visible new tokens; a two-pass
// softmax per row; then P.V, tiled the same way. Up to four rows that read the same slots (any rows
// for the prefix; the query heads of one new token for the new tokens) go through the kernels
// together, sharing every K and V load: 1.5-2.3x on GQA trees and decode at d >= 64 (bench/README.md,
// 2026-12-04), the bits unchanged.
//
// Batch invariance: a row's arithmetic depends only on the ORDERED LIST of the slots it sees (the
// prefix, then its visible new tokens in index order), never on other rows, on the block, on the
// thread or on where a slot sits in the cache. Position c of that list decides everything: the
// slot's dot product is one fixed-order reduction over the head dim, the softmax sums lane c % 8,
// and P.V accumulates in list order. So a tree node equals the same path committed and decoded one
// token at a time (its ancestors then form the tail of the prefix), and a row alone equals itself
// in any batch. Implementations of that order, as for matmul (cpu/layers.cc): AVX-512F and
// AVX2+FMA+F16C (chosen at run time; the same bits) and a portable one; a process uses one for every
// call (SPECDEC_CPU_SIMD caps the choice).
//
// A sliding window (window > 0) keeps a row's last `window` list positions, lo .. len - 1: its
// softmax runs over the list from lo rounded down to a lane boundary, the positions below lo scored
// -inf there (weight exactly 0), and the P.V terms below lo are exact zeros. So a row's bits are
// still a function of its list and the window alone; tiles below every row's lo are skipped.
// Soft-capping (softcap = c > 0, Gemma 2) replaces each score s by c tanh(s / c) before the softmax.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../core/ops_attention.h"
#include "simd.h"
#include "thread_pool.h"

namespace specdec {
namespace cpu {

namespace {

constexpr int64_t kRowBlock = 16;  // query rows per work item (they share each K/V tile)
constexpr int64_t kTile = 64;      // prefix slots per tile
constexpr int64_t kLanes = 8;

inline int64_t pad8(int64_t n) { return (n + kLanes - 1) & ~(kLanes - 1); }

using simd::load1;

void to_f32(float* dst, const void* src, DType t, int64_t n) {
  switch (t) {
    case DType::f32: std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float)); break;
    case DType::f16: for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
    default: for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
  }
}

// Kernels over a list of slots given as row pointers (K or V of one KV head, head dim D; q and
// acc are f32 rows padded with zeros to pad8(D)):
//   scores: out[t] = (q . k[t]) * scale, each dot 8 lane sums over d, then
//           ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7));
//   softmax: in place over s[0, n) (s padded with room up to pad8(n)): m = max, p = exp(s - m),
//           returns l = sum of p by lane c % 8 then the same tree; 0 when nothing is visible;
//   axpy: acc[d] += p[t] * v[t][d] for t in order.
// The _rows forms do the same for R <= kRowsMax rows that read the same slots (row r: q + r ldq,
// out + r ldo; acc + r lda, p + r ldp), each row exactly as the one-row kernel: they share each K / V
// load (and its conversion) between the rows, and change no bits.
constexpr int kRowsMax = 4;
struct Kernels {
  void (*scores)(const float* q, const char* const* k, int64_t n, int64_t D, float scale, float* out);
  float (*softmax)(float* s, int64_t n);
  void (*axpy)(float* acc, const float* p, const char* const* v, int64_t n, int64_t D);
  void (*scores_rows)(const float* q, int64_t ldq, int R, const char* const* k, int64_t n, int64_t D, float scale,
                      float* out, int64_t ldo);
  void (*axpy_rows)(float* acc, int64_t lda, const float* p, int64_t ldp, int R, const char* const* v, int64_t n,
                    int64_t D);
};

// The _rows forms as a loop over the one-row kernel (the portable kernels: the reference).
template <auto kScores>
void scores_rows_each(const float* q, int64_t ldq, int R, const char* const* k, int64_t n, int64_t D, float scale,
                      float* out, int64_t ldo) {
  for (int r = 0; r < R; ++r) kScores(q + r * ldq, k, n, D, scale, out + r * ldo);
}
template <auto kAxpy>
void axpy_rows_each(float* acc, int64_t lda, const float* p, int64_t ldp, int R, const char* const* v, int64_t n,
                    int64_t D) {
  for (int r = 0; r < R; ++r) kAxpy(acc + r * lda, p + r * ldp, v, n, D);
}

// ---- portable ------------------------------------------------------------------------------

template <DType KT>
void scores_portable(const float* q, const char* const* k, int64_t n, int64_t D, float scale, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    float s[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t d = 0; d < D; ++d) s[d & 7] += q[d] * load1<KT>(k[t], d);
    out[t] = (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) * scale;
  }
}

float softmax_portable(float* s, int64_t n) {
  float m = -INFINITY;
  for (int64_t c = 0; c < n; ++c) m = std::max(m, s[c]);
  if (m == -INFINITY) return 0.f;
  float l[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t c = 0; c < n; ++c) {
    s[c] = std::exp(s[c] - m);
    l[c & 7] += s[c];
  }
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

template <DType KT>
void axpy_portable(float* acc, const float* p, const char* const* v, int64_t n, int64_t D) {
  for (int64_t t = 0; t < n; ++t) {
    const float pt = p[t];
    for (int64_t d = 0; d < D; ++d) acc[d] += pt * load1<KT>(v[t], d);
  }
}

template <DType KT>
Kernels portable_kernels() {
  return {&scores_portable<KT>, &softmax_portable, &axpy_portable<KT>, &scores_rows_each<&scores_portable<KT>>,
          &axpy_rows_each<&axpy_portable<KT>>};
}

// ---- AVX2 + FMA + F16C -----------------------------------------------------------------------

#ifdef SPECDEC_CPU_X86_SIMD
using simd::load8;

// load8 of the last `rem` (< 8) elements from d on, lanes >= rem zero.
template <DType KT>
SPECDEC_AVX2 inline __m256 load8_tail(const char* p, int64_t d, int64_t rem) {
  alignas(32) float t[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < rem; ++i) t[i] = load1<KT>(p, d + i);
  return _mm256_load_ps(t);
}

using simd::hsum4;

// a[r][i] += q_r[d..d+8) * k[i] for RB rows (q + r ldq) and four slots: one d step.
template <int RB>
SPECDEC_AVX2 inline __attribute__((always_inline)) void fma_rows4(__m256 (&a)[RB][4], const float* q, int64_t ldq,
                                                                 int64_t d, const __m256 (&k)[4]) {
  for (int r = 0; r < RB; ++r) {
    const __m256 qv = _mm256_loadu_ps(q + r * ldq + d);
    for (int i = 0; i < 4; ++i) a[r][i] = _mm256_fmadd_ps(qv, k[i], a[r][i]);
  }
}

// RB rows (q + r ldq, out + r ldo) against the same slots: four slots at a time for ILP, their K
// loads shared by the rows, then the rest one slot at a time; each slot's lanes see exactly the
// operations of the one-slot loop.
template <DType KT, int RB>
SPECDEC_AVX2 void scores_rb_avx2(const float* q, int64_t ldq, const char* const* k, int64_t n, int64_t D, float scale,
                                 float* out, int64_t ldo) {
  const int64_t D8 = D & ~(kLanes - 1), rem = D - D8;
  const __m128 sc = _mm_set1_ps(scale);
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) {
    __m256 a[RB][4];
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < 4; ++i) a[r][i] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D8; d += kLanes) {
      const __m256 kv[4] = {load8<KT>(k[t], d), load8<KT>(k[t + 1], d), load8<KT>(k[t + 2], d), load8<KT>(k[t + 3], d)};
      fma_rows4<RB>(a, q, ldq, d, kv);
    }
    if (rem) {
      const __m256 kv[4] = {load8_tail<KT>(k[t], D8, rem), load8_tail<KT>(k[t + 1], D8, rem),
                            load8_tail<KT>(k[t + 2], D8, rem), load8_tail<KT>(k[t + 3], D8, rem)};
      fma_rows4<RB>(a, q, ldq, D8, kv);
    }
    for (int r = 0; r < RB; ++r) _mm_storeu_ps(out + r * ldo + t, _mm_mul_ps(hsum4(a[r][0], a[r][1], a[r][2], a[r][3]), sc));
  }
  for (int r = 0; r < RB; ++r) {
    const float* qr = q + r * ldq;
    for (int64_t u = t; u < n; ++u) {
      __m256 a0 = _mm256_setzero_ps();
      for (int64_t d = 0; d < D8; d += kLanes) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + d), load8<KT>(k[u], d), a0);
      if (rem) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qr + D8), load8_tail<KT>(k[u], D8, rem), a0);
      out[r * ldo + u] = _mm_cvtss_f32(_mm_mul_ps(hsum4(a0, a0, a0, a0), sc));
    }
  }
}

template <DType KT>
SPECDEC_AVX2 void scores_avx2(const float* q, const char* const* k, int64_t n, int64_t D, float scale, float* out) {
  scores_rb_avx2<KT, 1>(q, 0, k, n, D, scale, out, 0);
}

template <DType KT>
SPECDEC_AVX2 void scores_rows_avx2(const float* q, int64_t ldq, int R, const char* const* k, int64_t n, int64_t D,
                                   float scale, float* out, int64_t ldo) {
  int r = 0;
  for (; r + 2 <= R; r += 2) scores_rb_avx2<KT, 2>(q + r * ldq, ldq, k, n, D, scale, out + r * ldo, ldo);
  if (r < R) scores_avx2<KT>(q + r * ldq, k, n, D, scale, out + r * ldo);
}

using simd::exp_nonpos;

SPECDEC_AVX2 inline float hmax8(__m256 v) {
  alignas(32) float a[kLanes];
  _mm256_store_ps(a, v);
  float m = a[0];
  for (int i = 1; i < kLanes; ++i) m = std::max(m, a[i]);
  return m;
}

SPECDEC_AVX2 float softmax_avx2(float* s, int64_t n) {
  const int64_t np = pad8(n);
  for (int64_t c = n; c < np; ++c) s[c] = -INFINITY;  // the padding lanes: exp -> 0
  __m256 vm = _mm256_set1_ps(-INFINITY);
  for (int64_t c = 0; c < np; c += kLanes) vm = _mm256_max_ps(_mm256_loadu_ps(s + c), vm);  // NaN scores ignored
  const float m = hmax8(vm);
  if (m == -INFINITY) return 0.f;
  const __m256 mv = _mm256_set1_ps(m);
  __m256 l = _mm256_setzero_ps();
  for (int64_t c = 0; c < np; c += kLanes) {
    const __m256 p = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(s + c), mv));
    _mm256_storeu_ps(s + c, p);
    l = _mm256_add_ps(l, p);
  }
  return _mm_cvtss_f32(hsum4(l, l, l, l));
}

// axpy over dims [d0, D) eight at a time (d0 a multiple of 8): the dims past the wide chunks.
template <DType KT>
SPECDEC_AVX2 void axpy_avx2_from(float* acc, const float* p, const char* const* v, int64_t n, int64_t D, int64_t d0) {
  const int64_t D8 = D & ~(kLanes - 1), rem = D - D8;
  for (; d0 < D8; d0 += kLanes) {
    __m256 a0 = _mm256_loadu_ps(acc + d0);
    for (int64_t t = 0; t < n; ++t) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + t), load8<KT>(v[t], d0), a0);
    _mm256_storeu_ps(acc + d0, a0);
  }
  if (rem) {
    __m256 a0 = _mm256_loadu_ps(acc + D8);
    for (int64_t t = 0; t < n; ++t) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(p + t), load8_tail<KT>(v[t], D8, rem), a0);
    _mm256_storeu_ps(acc + D8, a0);
  }
}

// RB rows (acc + r lda, p + r ldp) against the same slots: 32-dim chunks whose accumulators stay in
// registers over all n slots, each V load shared by the rows; then each row's remaining dims (each
// dim's sum is independent of the others).
template <DType KT, int RB>
SPECDEC_AVX2 void axpy_rb_avx2(float* acc, int64_t lda, const float* p, int64_t ldp, const char* const* v, int64_t n,
                               int64_t D) {
  const int64_t D32 = (D & ~(kLanes - 1)) / (4 * kLanes) * (4 * kLanes);
  for (int64_t d0 = 0; d0 < D32; d0 += 4 * kLanes) {
    __m256 a[RB][4];
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < 4; ++i) a[r][i] = _mm256_loadu_ps(acc + r * lda + d0 + i * kLanes);
    for (int64_t t = 0; t < n; ++t) {
      __m256 vv[4];
      for (int i = 0; i < 4; ++i) vv[i] = load8<KT>(v[t], d0 + i * kLanes);
      for (int r = 0; r < RB; ++r) {
        const __m256 pv = _mm256_broadcast_ss(p + r * ldp + t);
        for (int i = 0; i < 4; ++i) a[r][i] = _mm256_fmadd_ps(pv, vv[i], a[r][i]);
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < 4; ++i) _mm256_storeu_ps(acc + r * lda + d0 + i * kLanes, a[r][i]);
  }
  if (D32 < D)
    for (int r = 0; r < RB; ++r) axpy_avx2_from<KT>(acc + r * lda, p + r * ldp, v, n, D, D32);
}

template <DType KT>
SPECDEC_AVX2 void axpy_avx2(float* acc, const float* p, const char* const* v, int64_t n, int64_t D) {
  axpy_rb_avx2<KT, 1>(acc, 0, p, 0, v, n, D);
}

template <DType KT>
SPECDEC_AVX2 void axpy_rows_avx2(float* acc, int64_t lda, const float* p, int64_t ldp, int R, const char* const* v,
                                 int64_t n, int64_t D) {
  int r = 0;
  for (; r + 2 <= R; r += 2) axpy_rb_avx2<KT, 2>(acc + r * lda, lda, p + r * ldp, ldp, v, n, D);
  if (r < R) axpy_avx2<KT>(acc + r * lda, p + r * ldp, v, n, D);
}

template <DType KT>
Kernels avx2_kernels() {
  return {&scores_avx2<KT>, &softmax_avx2, &axpy_avx2<KT>, &scores_rows_avx2<KT>, &axpy_rows_avx2<KT>};
}

// ---- AVX-512F: the AVX2 kernels' arithmetic, twice as wide ------------------------------------
// The same bits as the AVX2 kernels (so as the order above): scores put two slots in one register,
// one per 256-bit half, each half doing exactly the AVX2 lanes' FMAs, and reduce each half with the
// same hsum4; axpy's lanes are independent elementwise FMAs in slot order, 16 at a time. The
// softmax keeps the AVX2 kernel (its lane c % 8 sums would change order at 16 lanes; ~1% of the
// time). Worth it where 512-bit FMAs are full width (Zen 5: 2x the AVX2 rate), not on double-pumped
// ones.

// [lo | hi]: two 8-float halves in one register.
SPECDEC_AVX512 inline __m512 join8(__m256 lo, __m256 hi) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
}
SPECDEC_AVX512 inline __m256 half_lo(__m512 v) { return _mm512_castps512_ps256(v); }
SPECDEC_AVX512 inline __m256 half_hi(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

// [q8 | q8] from memory: a row's q operand against two slots, one load, no shuffle.
SPECDEC_AVX512 inline __m512 dup8(const float* q) {
  return _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(_mm256_loadu_ps(q))));
}

// a[r][i] += [q_r | q_r] * k[i] for RB rows (q + r ldq, dims [d, d + 8)) and four slot pairs.
template <int RB>
SPECDEC_AVX512 inline __attribute__((always_inline)) void fma_rows4_512(__m512 (&a)[RB][4], const float* q, int64_t ldq,
                                                                       int64_t d, const __m512 (&k)[4]) {
  for (int r = 0; r < RB; ++r) {
    const __m512 qv = dup8(q + r * ldq + d);
    for (int i = 0; i < 4; ++i) a[r][i] = _mm512_fmadd_ps(qv, k[i], a[r][i]);
  }
}

// RB rows against the same slots, eight at a time: register i holds slots t + 2i (low half) and
// t + 2i + 1 (high half), each joined K register serving every row; the rest through the AVX2 kernel.
template <DType KT, int RB>
SPECDEC_AVX512 void scores_rb_avx512(const float* q, int64_t ldq, const char* const* k, int64_t n, int64_t D,
                                     float scale, float* out, int64_t ldo) {
  const int64_t D8 = D & ~(kLanes - 1), rem = D - D8;
  const __m128 sc = _mm_set1_ps(scale);
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) {
    __m512 a[RB][4];
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < 4; ++i) a[r][i] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D8; d += kLanes) {
      __m512 kv[4];
      for (int i = 0; i < 4; ++i) kv[i] = join8(load8<KT>(k[t + 2 * i], d), load8<KT>(k[t + 2 * i + 1], d));
      fma_rows4_512<RB>(a, q, ldq, d, kv);
    }
    if (rem) {
      __m512 kv[4];
      for (int i = 0; i < 4; ++i)
        kv[i] = join8(load8_tail<KT>(k[t + 2 * i], D8, rem), load8_tail<KT>(k[t + 2 * i + 1], D8, rem));
      fma_rows4_512<RB>(a, q, ldq, D8, kv);
    }
    for (int r = 0; r < RB; ++r) {
      float* o = out + r * ldo + t;
      _mm_storeu_ps(o, _mm_mul_ps(hsum4(half_lo(a[r][0]), half_hi(a[r][0]), half_lo(a[r][1]), half_hi(a[r][1])), sc));
      _mm_storeu_ps(o + 4, _mm_mul_ps(hsum4(half_lo(a[r][2]), half_hi(a[r][2]), half_lo(a[r][3]), half_hi(a[r][3])), sc));
    }
  }
  // (Row by row: four rows' AVX2 accumulators would not fit the 16 ymm registers.)
  if (t < n)
    for (int r = 0; r < RB; ++r) scores_avx2<KT>(q + r * ldq, k + t, n - t, D, scale, out + r * ldo + t);
}

template <DType KT>
SPECDEC_AVX512 void scores_avx512(const float* q, const char* const* k, int64_t n, int64_t D, float scale, float* out) {
  scores_rb_avx512<KT, 1>(q, 0, k, n, D, scale, out, 0);
}

template <DType KT>
SPECDEC_AVX512 void scores_rows_avx512(const float* q, int64_t ldq, int R, const char* const* k, int64_t n, int64_t D,
                                       float scale, float* out, int64_t ldo) {
  switch (R) {
    case 4: return scores_rb_avx512<KT, 4>(q, ldq, k, n, D, scale, out, ldo);
    case 3: return scores_rb_avx512<KT, 3>(q, ldq, k, n, D, scale, out, ldo);
    case 2: return scores_rb_avx512<KT, 2>(q, ldq, k, n, D, scale, out, ldo);
    default:
      for (int r = 0; r < R; ++r) scores_avx512<KT>(q + r * ldq, k, n, D, scale, out + r * ldo);
  }
}

// RB rows against the same slots: 64-dim chunks whose accumulators stay in registers over all n
// slots, each V load shared by the rows; then each row's remaining dims 16 at a time, and the
// last 8-lane rest through the AVX2 kernel.
template <DType KT, int RB>
SPECDEC_AVX512 void axpy_rb_avx512(float* acc, int64_t lda, const float* p, int64_t ldp, const char* const* v,
                                   int64_t n, int64_t D) {
  constexpr int64_t W = 16;
  const int64_t D16 = D & ~(W - 1), D64 = D16 / (4 * W) * (4 * W);
  for (int64_t d0 = 0; d0 < D64; d0 += 4 * W) {
    __m512 a[RB][4];
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < 4; ++i) a[r][i] = _mm512_loadu_ps(acc + r * lda + d0 + i * W);
    for (int64_t t = 0; t < n; ++t) {
      __m512 vv[4];
      for (int i = 0; i < 4; ++i) vv[i] = simd::load16<KT>(v[t], d0 + i * W);
      for (int r = 0; r < RB; ++r) {
        const __m512 pv = _mm512_set1_ps(p[r * ldp + t]);
        for (int i = 0; i < 4; ++i) a[r][i] = _mm512_fmadd_ps(pv, vv[i], a[r][i]);
      }
    }
    for (int r = 0; r < RB; ++r)
      for (int i = 0; i < 4; ++i) _mm512_storeu_ps(acc + r * lda + d0 + i * W, a[r][i]);
  }
  for (int r = 0; r < RB; ++r) {
    float* ar = acc + r * lda;
    const float* pr = p + r * ldp;
    for (int64_t d0 = D64; d0 < D16; d0 += W) {
      __m512 a0 = _mm512_loadu_ps(ar + d0);
      for (int64_t t = 0; t < n; ++t) a0 = _mm512_fmadd_ps(_mm512_set1_ps(pr[t]), simd::load16<KT>(v[t], d0), a0);
      _mm512_storeu_ps(ar + d0, a0);
    }
    if (D16 < D) axpy_avx2_from<KT>(ar, pr, v, n, D, D16);
  }
}

template <DType KT>
SPECDEC_AVX512 void axpy_avx512(float* acc, const float* p, const char* const* v, int64_t n, int64_t D) {
  axpy_rb_avx512<KT, 1>(acc, 0, p, 0, v, n, D);
}

template <DType KT>
SPECDEC_AVX512 void axpy_rows_avx512(float* acc, int64_t lda, const float* p, int64_t ldp, int R, const char* const* v,
                                     int64_t n, int64_t D) {
  switch (R) {
    case 4: return axpy_rb_avx512<KT, 4>(acc, lda, p, ldp, v, n, D);
    case 3: return axpy_rb_avx512<KT, 3>(acc, lda, p, ldp, v, n, D);
    case 2: return axpy_rb_avx512<KT, 2>(acc, lda, p, ldp, v, n, D);
    default:
      for (int r = 0; r < R; ++r) axpy_avx512<KT>(acc + r * lda, p + r * ldp, v, n, D);
  }
}

template <DType KT>
Kernels avx512_kernels() {
  return {&scores_avx512<KT>, &softmax_avx2, &axpy_avx512<KT>, &scores_rows_avx512<KT>, &axpy_rows_avx512<KT>};
}

using simd::use_avx2;
#endif  // SPECDEC_CPU_X86_SIMD

// D: the head dim. The AVX-512 kernels give the AVX2 kernels' bits, so the choice may follow the
// shape: below 64 dims their register joins cost more than the wider FMAs save (measured on the
// Zen 5: the default target's d = 32 ran 12-18% slower, d = 64 2-4% faster, d = 128 1.2-1.3x).
Kernels kernels_for(DType kv_t, int64_t D) {
#ifdef SPECDEC_CPU_X86_SIMD
  if (simd::isa() == simd::Isa::avx512 && D >= 64) {
    switch (kv_t) {
      case DType::f32: return avx512_kernels<DType::f32>();
      case DType::f16: return avx512_kernels<DType::f16>();
      default: return avx512_kernels<DType::bf16>();
    }
  }
  if (use_avx2()) {
    switch (kv_t) {
      case DType::f32: return avx2_kernels<DType::f32>();
      case DType::f16: return avx2_kernels<DType::f16>();
      default: return avx2_kernels<DType::bf16>();
    }
  }
#endif
  switch (kv_t) {
    case DType::f32: return portable_kernels<DType::f32>();
    case DType::f16: return portable_kernels<DType::f16>();
    default: return portable_kernels<DType::bf16>();
  }
}

// Per-thread buffers, grown on demand and kept: after the first calls of a shape nothing is
// allocated. Each pool worker (and each calling thread) has its own.
struct Scratch {
  std::vector<const char*> k, v;          // slot -> K / V row of the item's KV head
  std::vector<const char*> nk, nv;        // per row: its visible new tokens' K / V rows
  std::vector<int64_t> nn;                // per row: how many new tokens it sees
  std::vector<float> q, acc, s;           // rows of pad8(D), pad8(D), score stride
  template <class T>
  static T* at_least(std::vector<T>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
    return v.data();
  }
};

thread_local Scratch t_scratch;

}  // namespace

void tree_attention(const Tensor& q, const Tensor& kv_layer, const PagedBatch& batch, const Tensor& mask,
                    float sm_scale, Tensor& out, int window, float softcap) {
  const int64_t S = kv_layer.size(2), Hkv = kv_layer.size(3), D = kv_layer.size(4);
  const int64_t Hq = q.size(1), G = Hq / Hkv, B = batch.batch_size();
  const int64_t W = mask.defined() ? mask.size(1) : 0;
  const uint64_t* bits = mask.defined() ? mask.ptr<uint64_t>() : nullptr;
  const DType kv_t = kv_layer.dtype(), q_t = q.dtype();
  const size_t esz = dtype_size(kv_t), qsz = dtype_size(q_t);
  const char* kv = static_cast<const char*>(kv_layer.data());
  const char* qp = static_cast<const char*>(q.data());
  char* op = static_cast<char*>(out.data());
  const Kernels kern = kernels_for(kv_t, D);
  const int64_t DP = pad8(D);
  const size_t slot_bytes = static_cast<size_t>(Hkv * D) * esz;  // next slot of a page, same head

  // Items: (sequence, KV head, row block). Threads only pay off for real work (a decode step over a
  // long prefix, a tree, a prefill), so small jobs stay on the calling thread.
  int64_t items = 0;
  double flops = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t qo = batch.h_qo_indptr[b + 1] - batch.h_qo_indptr[b];
    items += Hkv * ((qo * G + kRowBlock - 1) / kRowBlock);
    const int64_t seen = batch.h_prefix_len[b] + qo;  // (a window: at most window + qo of them per block)
    flops += static_cast<double>(qo) * (window > 0 ? std::min<int64_t>(seen, window + qo) : seen) * Hq * D * 4.0;
  }
  const int64_t grain = grain_for(items > 0 ? flops / static_cast<double>(items) : 0.0, 1e6);

  auto run_item = [&](int64_t item) {
    // Find the item's sequence (B is small; items are claimed in order, so this is cheap).
    int64_t b = 0, rest = item, blocks = 0, qo = 0;
    for (;; ++b) {
      qo = batch.h_qo_indptr[b + 1] - batch.h_qo_indptr[b];
      blocks = (qo * G + kRowBlock - 1) / kRowBlock;
      if (rest < Hkv * blocks) break;
      rest -= Hkv * blocks;
    }
    const int64_t h_kv = rest / blocks, r0 = (rest % blocks) * kRowBlock, r1 = std::min(qo * G, r0 + kRowBlock);
    const int64_t R = r1 - r0, q0 = batch.h_qo_indptr[b], P = batch.h_prefix_len[b], kv_len = P + qo;
    const int64_t SS = pad8(kv_len);  // score row stride

    Scratch& sc = t_scratch;
    const char** K = Scratch::at_least(sc.k, kv_len);
    const char** V = Scratch::at_least(sc.v, kv_len);
    const char** NK = Scratch::at_least(sc.nk, R * qo);
    const char** NV = Scratch::at_least(sc.nv, R * qo);
    int64_t* nn = Scratch::at_least(sc.nn, R);
    float* qb = Scratch::at_least(sc.q, R * DP);
    float* acc = Scratch::at_least(sc.acc, R * DP);
    float* s = Scratch::at_least(sc.s, R * SS);

    // Row pointers of every slot (in place in the pages).
    const int32_t* pages = &batch.h_page_indices[static_cast<size_t>(batch.h_page_indptr[b])];
    for (int64_t t0 = 0; t0 < kv_len; t0 += S) {
      const char* kp = kv + (static_cast<size_t>(pages[t0 / S]) * 2 * S * Hkv + h_kv) * D * esz;
      const char* vp = kp + static_cast<size_t>(S) * slot_bytes;
      const int64_t n = std::min(S, kv_len - t0);
      for (int64_t r = 0; r < n; ++r) {
        K[t0 + r] = kp + r * slot_bytes;
        V[t0 + r] = vp + r * slot_bytes;
      }
    }
    // Rows: q as f32 (zero-padded), the visible new tokens (prefix always; mask bit, else causal).
    for (int64_t r = 0; r < R; ++r) {
      const int64_t i = (r0 + r) / G, g = (r0 + r) % G, n = q0 + i, h = h_kv * G + g;
      float* qr = qb + r * DP;
      to_f32(qr, qp + static_cast<size_t>((n * Hq + h) * D) * qsz, q_t, D);
      std::fill(qr + D, qr + DP, 0.f);
      const uint64_t* row_bits = bits ? bits + n * W : nullptr;
      int64_t c = 0;
      for (int64_t j = 0; j < qo; ++j)
        if (row_bits ? ((row_bits[j >> 6] >> (j & 63)) & 1u) != 0 : j <= i) {
          NK[r * qo + c] = K[P + j];
          NV[r * qo + c] = V[P + j];
          ++c;
        }
      nn[r] = c;
    }
    // The window: row r sees list positions lo(r) .. P + nn[r] - 1; no row of the block sees a slot
    // below t_lo (a multiple of kTile, so the prefix tiles stay where they are without a window).
    auto lo_of = [&](int64_t r) { return window > 0 ? std::max<int64_t>(0, P + nn[r] - window) : int64_t(0); };
    int64_t t_lo = P;
    for (int64_t r = 0; r < R; ++r) t_lo = std::min(t_lo, lo_of(r));
    t_lo -= t_lo % kTile;
    // Rows go through the kernels kRowsMax at a time where they read the same slots: any rows for
    // the prefix, the rows of one new token (its query heads) for the new tokens.
    auto same_token_end = [&](int64_t r) {
      int64_t e = r + 1;
      while (e < R && e - r < kRowsMax && (r0 + e) / G == (r0 + r) / G) ++e;
      return e;
    };
    // Scores: the prefix tile by tile (a tile of K serves every row), then each row's new tokens.
    for (int64_t t0 = t_lo; t0 < P; t0 += kTile) {
      const int64_t n = std::min(kTile, P - t0);
      for (int64_t r = 0; r < R; r += kRowsMax)
        kern.scores_rows(qb + r * DP, DP, static_cast<int>(std::min<int64_t>(kRowsMax, R - r)), K + t0, n, D, sm_scale,
                         s + r * SS + t0, SS);
    }
    for (int64_t r = 0, e; r < R; r = e) {
      e = same_token_end(r);
      kern.scores_rows(qb + r * DP, DP, static_cast<int>(e - r), NK + r * qo, nn[r], D, sm_scale, s + r * SS + P, SS);
    }
    float l[kRowBlock];  // per row: the softmax denominator, 0 when the row sees nothing
    if (softcap > 0.f)
      for (int64_t r = 0; r < R; ++r) {
        float* sr = s + r * SS;
        for (int64_t c = std::min(t_lo, P); c < P + nn[r]; ++c) sr[c] = softcap * std::tanh(sr[c] / softcap);
      }
    for (int64_t r = 0; r < R; ++r) {
      if (window == 0) {
        l[r] = kern.softmax(s + r * SS, P + nn[r]);
        continue;
      }
      // From lo8 (lanes keep their list positions, rows their alignment); lo8 .. lo - 1 weigh 0, and
      // so do the entries from the first tile read below up to lo8.
      float* sr = s + r * SS;
      const int64_t lo = lo_of(r), lo8 = lo & ~(kLanes - 1);
      std::fill(sr + lo8, sr + lo, -INFINITY);
      l[r] = kern.softmax(sr + lo8, P + nn[r] - lo8);
      std::fill(sr + std::min(t_lo, P), sr + lo8, 0.f);
    }
    // P.V in the same slot order (rows that see nothing take no part).
    std::fill(acc, acc + R * DP, 0.f);
    auto seeing_end = [&](int64_t r, int64_t limit) {
      int64_t e = r + 1;
      while (e < limit && l[e] != 0.f) ++e;
      return e;
    };
    for (int64_t t0 = t_lo; t0 < P; t0 += kTile) {
      const int64_t n = std::min(kTile, P - t0);
      for (int64_t r = 0, e; r < R; r = e) {
        if (l[r] == 0.f) {
          e = r + 1;
          continue;
        }
        e = seeing_end(r, std::min<int64_t>(R, r + kRowsMax));
        kern.axpy_rows(acc + r * DP, DP, s + r * SS + t0, SS, static_cast<int>(e - r), V + t0, n, D);
      }
    }
    for (int64_t r = 0, e; r < R; r = e) {
      if (l[r] == 0.f) {
        e = r + 1;
        continue;
      }
      e = seeing_end(r, same_token_end(r));
      kern.axpy_rows(acc + r * DP, DP, s + r * SS + P, SS, static_cast<int>(e - r), NV + r * qo, nn[r], D);
    }
    for (int64_t r = 0; r < R; ++r) {
      float* ar = acc + r * DP;
      if (l[r] != 0.f)
        for (int64_t d = 0; d < D; ++d) ar[d] /= l[r];
      // A row that sees nothing at all (empty mask row, empty prefix) is defined as zeros.
      const int64_t i = (r0 + r) / G, g = (r0 + r) % G, n = q0 + i, h = h_kv * G + g;
      char* o = op + static_cast<size_t>((n * Hq + h) * D) * qsz;
      switch (q_t) {
        case DType::f32: std::memcpy(o, ar, static_cast<size_t>(D) * sizeof(float)); break;
        case DType::f16: for (int64_t d = 0; d < D; ++d) reinterpret_cast<uint16_t*>(o)[d] = f32_to_f16(ar[d]); break;
        default: for (int64_t d = 0; d < D; ++d) reinterpret_cast<uint16_t*>(o)[d] = f32_to_bf16(ar[d]); break;
      }
    }
  };
  // (work in multiply-adds: half the flops)
  parallel_for(
      items, grain, [&](int64_t i0, int64_t i1) {
        for (int64_t item = i0; item < i1; ++item) run_item(item);
      },
      flops / 2);
}

}  // namespace cpu
}  // namespace specdec

// The row passes of CPU verification (cpp/cpu/verify.cc) on AVX2 and AVX-512, bit for bit the plain
// code of spec_math.h that CUDA also follows:
// - the entropy of a probability row (Medusa's typical acceptance): element i goes to lane i % 512,
//   each lane adds -p ln p with ln = sm::log_det, then sm::entropy_combine. A vector takes 4 (8)
//   consecutive elements, i.e. 4 (8) consecutive lanes, and runs log_det's operations lane by lane:
//   frexp from the bits (every positive float is a normal double), the same IEEE divisions,
//   products and fused multiply-adds in the same order, so every lane's sum has the scalar's bits;
// - the quantised masses of exact rejection (sm::quantize_prob, sm::residual_entry) and the draw
//   (sm::sample_hit): integers, summed exactly in any order; a float or double that holds an integer
//   below 2^52 becomes a uint64 (and back) through the bits of x + 2^52, exactly.
// Why: the scalar loops cost ~25 ns an element for the entropy (frexp, two divisions, twelve fmas,
// serially) and several ns for the masses (a store per product keeps it unfused), i.e. ~3 ms and
// ~0.5-1 ms per 128k-entry row, and a step reads several rows.
#pragma once
#include <cstdint>

#include "../core/spec_math.h"
#include "simd.h"

namespace specdec {
namespace cpu {
namespace simd {

#ifdef SPECDEC_CPU_X86_SIMD
namespace entropy_detail {
constexpr double kSqrtHalf = 0.70710678118654752;
constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;  // as sm::log_det
constexpr double kTwo52 = 4503599627370496.0;  // 2^52: (2^52 + n) - 2^52 = n exactly for 0 <= n < 2^52
}  // namespace entropy_detail

// sm::log_det on 4 lanes (x > 0; +inf gives NaN as the scalar does).
SPECDEC_AVX2 inline __m256d log_det_avx2(__m256d x) {
  using namespace entropy_detail;
  const __m256i bits = _mm256_castpd_si256(x);
  const __m256i biased = _mm256_srli_epi64(_mm256_and_si256(bits, _mm256_set1_epi64x(0x7ff0000000000000LL)), 52);
  // frexp: x = m 2^e with m in [0.5, 1): e = biased - 1022 (exact in a double).
  __m256d e = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(biased, _mm256_castpd_si256(_mm256_set1_pd(kTwo52)))),
                            _mm256_set1_pd(kTwo52 + 1022.0));
  __m256d m = _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000fffffffffffffLL)),
                                                  _mm256_set1_epi64x(0x3fe0000000000000LL)));
  const __m256d one = _mm256_set1_pd(1.0);
  const __m256d low = _mm256_cmp_pd(m, _mm256_set1_pd(kSqrtHalf), _CMP_LT_OQ);
  m = _mm256_blendv_pd(m, _mm256_mul_pd(m, _mm256_set1_pd(2.0)), low);
  e = _mm256_blendv_pd(e, _mm256_sub_pd(e, one), low);
  const __m256d f = _mm256_div_pd(_mm256_sub_pd(m, one), _mm256_add_pd(m, one));
  const __m256d s = _mm256_mul_pd(f, f);
  __m256d t = _mm256_set1_pd(1.0 / 23.0);
  for (int k = 21; k >= 3; k -= 2) t = _mm256_fmadd_pd(t, s, _mm256_set1_pd(1.0 / k));
  const __m256d f2 = _mm256_mul_pd(_mm256_set1_pd(2.0), f);
  const __m256d ln_m = _mm256_fmadd_pd(f2, _mm256_mul_pd(s, t), f2);
  const __m256d ln = _mm256_fmadd_pd(e, _mm256_set1_pd(kLn2Hi), _mm256_fmadd_pd(e, _mm256_set1_pd(kLn2Lo), ln_m));
  const __m256d inf = _mm256_cmp_pd(x, _mm256_set1_pd(HUGE_VAL), _CMP_EQ_OQ);
  return _mm256_blendv_pd(ln, _mm256_set1_pd(NAN), inf);
}

SPECDEC_AVX2 inline double entropy_avx2(const float* p, int64_t V) {
  alignas(64) double lane[sm::kEntropyLanes] = {};
  int64_t i = 0;
  for (; i + 4 <= V; i += 4) {  // lanes i % 512 .. + 3 (512 is a multiple of 4)
    double* l = lane + (i % sm::kEntropyLanes);
    const __m256d pd = _mm256_cvtps_pd(_mm_loadu_ps(p + i));
    const __m256d h = _mm256_load_pd(l);
    const __m256d add = _mm256_fmadd_pd(_mm256_sub_pd(_mm256_setzero_pd(), pd), log_det_avx2(pd), h);
    const __m256d pos = _mm256_cmp_pd(pd, _mm256_setzero_pd(), _CMP_GT_OQ);  // p <= 0 or NaN adds nothing
    _mm256_store_pd(l, _mm256_blendv_pd(h, add, pos));
  }
  for (; i < V; ++i) lane[i % sm::kEntropyLanes] = sm::entropy_add(lane[i % sm::kEntropyLanes], p[i]);
  return sm::entropy_combine(lane);
}

// sm::log_det on 8 lanes.
SPECDEC_AVX512 inline __m512d log_det_avx512(__m512d x) {
  using namespace entropy_detail;
  const __m512i bits = _mm512_castpd_si512(x);
  const __m512i biased = _mm512_srli_epi64(_mm512_and_si512(bits, _mm512_set1_epi64(0x7ff0000000000000LL)), 52);
  __m512d e = _mm512_sub_pd(_mm512_castsi512_pd(_mm512_or_si512(biased, _mm512_castpd_si512(_mm512_set1_pd(kTwo52)))),
                            _mm512_set1_pd(kTwo52 + 1022.0));
  __m512d m = _mm512_castsi512_pd(_mm512_or_si512(_mm512_and_si512(bits, _mm512_set1_epi64(0x000fffffffffffffLL)),
                                                  _mm512_set1_epi64(0x3fe0000000000000LL)));
  const __m512d one = _mm512_set1_pd(1.0);
  const __mmask8 low = _mm512_cmp_pd_mask(m, _mm512_set1_pd(kSqrtHalf), _CMP_LT_OQ);
  m = _mm512_mask_mul_pd(m, low, m, _mm512_set1_pd(2.0));
  e = _mm512_mask_sub_pd(e, low, e, one);
  const __m512d f = _mm512_div_pd(_mm512_sub_pd(m, one), _mm512_add_pd(m, one));
  const __m512d s = _mm512_mul_pd(f, f);
  __m512d t = _mm512_set1_pd(1.0 / 23.0);
  for (int k = 21; k >= 3; k -= 2) t = _mm512_fmadd_pd(t, s, _mm512_set1_pd(1.0 / k));
  const __m512d f2 = _mm512_mul_pd(_mm512_set1_pd(2.0), f);
  const __m512d ln_m = _mm512_fmadd_pd(f2, _mm512_mul_pd(s, t), f2);
  const __m512d ln = _mm512_fmadd_pd(e, _mm512_set1_pd(kLn2Hi), _mm512_fmadd_pd(e, _mm512_set1_pd(kLn2Lo), ln_m));
  const __mmask8 inf = _mm512_cmp_pd_mask(x, _mm512_set1_pd(HUGE_VAL), _CMP_EQ_OQ);
  return _mm512_mask_mov_pd(ln, inf, _mm512_set1_pd(NAN));
}

SPECDEC_AVX512 inline double entropy_avx512(const float* p, int64_t V) {
  alignas(64) double lane[sm::kEntropyLanes] = {};
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {  // lanes i % 512 .. + 7
    double* l = lane + (i % sm::kEntropyLanes);
    const __m512d pd = _mm512_cvtps_pd(_mm256_loadu_ps(p + i));
    const __m512d h = _mm512_load_pd(l);
    const __mmask8 pos = _mm512_cmp_pd_mask(pd, _mm512_setzero_pd(), _CMP_GT_OQ);
    const __m512d add = _mm512_fmadd_pd(_mm512_sub_pd(_mm512_setzero_pd(), pd), log_det_avx512(pd), h);
    _mm512_store_pd(l, _mm512_mask_mov_pd(h, pos, add));
  }
  for (; i < V; ++i) lane[i % sm::kEntropyLanes] = sm::entropy_add(lane[i % sm::kEntropyLanes], p[i]);
  return sm::entropy_combine(lane);
}
#endif

// ---- quantised masses (exact rejection) -------------------------------------------------------------
// Plain: what spec_math.h's functions do element by element (the reference of the SIMD paths).
// quantize_row*: dst may be null (the mass only).
inline uint64_t quantize_row_plain(const float* src, int64_t V, uint64_t* dst) {
  uint64_t m = 0;
  for (int64_t i = 0; i < V; ++i) {
    const uint64_t w = sm::quantize_prob(src[i]);
    if (dst) dst[i] = w;
    m += w;
  }
  return m;
}
inline uint64_t residual_mass_plain(const uint64_t* P, const uint64_t* Q, int64_t V, double ratio) {
  uint64_t m = 0;
  for (int64_t i = 0; i < V; ++i) m += sm::residual_entry(P[i], Q[i], ratio);
  return m;
}
inline void apply_residual_plain(uint64_t* P, const uint64_t* Q, int64_t V, double ratio) {
  for (int64_t i = 0; i < V; ++i) P[i] = sm::residual_entry(P[i], Q[i], ratio);
}

// The token sample() draws with threshold t from weights P (mass = their sum): the i with
// prefix(i) <= t < prefix(i) + P[i], kNoMass when t is past the mass. Blocks of 64 whose sum ends at or
// before t are skipped whole (no element in them can hit), then the hit's block is scanned as
// sm::sample_hit does: the same token as the element-by-element scan, in any instruction set.
inline int sample_index(const uint64_t* P, int64_t V, uint64_t t) {
  constexpr int64_t kBlock = 64;
  uint64_t before = 0;
  int64_t i = 0;
  for (; i + kBlock <= V; i += kBlock) {
    uint64_t s = 0;
    for (int64_t j = 0; j < kBlock; ++j) s += P[i + j];  // vectorised by the compiler; exact in any order
    if (t >= before + s) before += s;
    else break;
  }
  for (; i < V; ++i) {
    if (sm::sample_hit(before, P[i], t)) return static_cast<int>(i);
    before += P[i];
  }
  return sm::kNoMass;
}

#ifdef SPECDEC_CPU_X86_SIMD
namespace mass_detail {
constexpr double kTwo52 = 4503599627370496.0;
constexpr int64_t kTwo52Bits = 0x4330000000000000LL;  // the bits of 2^52
constexpr double kScale = 1099511627776.0;             // 2^40 = sm::quantize_prob's scale
}  // namespace mass_detail

// Integral doubles in [0, 2^52) <-> uint64, exactly.
SPECDEC_AVX2 inline __m256i u64_from_f64_avx2(__m256d d) {
  using namespace mass_detail;
  return _mm256_sub_epi64(_mm256_castpd_si256(_mm256_add_pd(d, _mm256_set1_pd(kTwo52))), _mm256_set1_epi64x(kTwo52Bits));
}
SPECDEC_AVX2 inline __m256d f64_from_u64_avx2(__m256i u) {
  using namespace mass_detail;
  return _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(u, _mm256_set1_epi64x(kTwo52Bits))), _mm256_set1_pd(kTwo52));
}
SPECDEC_AVX2 inline uint64_t hsum_avx2(__m256i v) {
  alignas(32) uint64_t a[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(a), v);
  return a[0] + a[1] + a[2] + a[3];
}
// sm::quantize_prob on 4 floats, as doubles holding the integers.
SPECDEC_AVX2 inline __m256d quantize4_avx2(__m128 x) {
  const __m128 q = _mm_ceil_ps(_mm_mul_ps(x, _mm_set1_ps(static_cast<float>(mass_detail::kScale))));  // exact scaling
  const __m128 one = _mm_cmpge_ps(x, _mm_set1_ps(1.0f));
  const __m128 pos = _mm_cmp_ps(x, _mm_setzero_ps(), _CMP_GT_OQ);  // p <= 0 or NaN: 0
  const __m128 w = _mm_and_ps(pos, _mm_blendv_ps(q, _mm_set1_ps(static_cast<float>(mass_detail::kScale)), one));
  return _mm256_cvtps_pd(w);
}

SPECDEC_AVX2 inline uint64_t quantize_row_avx2(const float* src, int64_t V, uint64_t* dst) {
  __m256i m = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 4 <= V; i += 4) {
    const __m256i w = u64_from_f64_avx2(quantize4_avx2(_mm_loadu_ps(src + i)));
    if (dst) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), w);
    m = _mm256_add_epi64(m, w);
  }
  return hsum_avx2(m) + quantize_row_plain(src + i, V - i, dst ? dst + i : nullptr);
}

// sm::residual_entry on 4 weights: r = p - (q * ratio) (two roundings, never fused), ceil(r) if r > 0.
SPECDEC_AVX2 inline __m256i residual4_avx2(__m256i p, __m256i q, __m256d ratio) {
  const __m256d r = _mm256_sub_pd(f64_from_u64_avx2(p), _mm256_mul_pd(f64_from_u64_avx2(q), ratio));
  const __m256d pos = _mm256_cmp_pd(r, _mm256_setzero_pd(), _CMP_GT_OQ);
  return u64_from_f64_avx2(_mm256_and_pd(pos, _mm256_ceil_pd(r)));
}

SPECDEC_AVX2 inline uint64_t residual_mass_avx2(const uint64_t* P, const uint64_t* Q, int64_t V, double ratio) {
  const __m256d rv = _mm256_set1_pd(ratio);
  __m256i m = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 4 <= V; i += 4)
    m = _mm256_add_epi64(m, residual4_avx2(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(P + i)),
                                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Q + i)), rv));
  uint64_t mass = hsum_avx2(m);
  for (; i < V; ++i) mass += sm::residual_entry(P[i], Q[i], ratio);
  return mass;
}

SPECDEC_AVX2 inline void apply_residual_avx2(uint64_t* P, const uint64_t* Q, int64_t V, double ratio) {
  const __m256d rv = _mm256_set1_pd(ratio);
  int64_t i = 0;
  for (; i + 4 <= V; i += 4)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(P + i),
                        residual4_avx2(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(P + i)),
                                       _mm256_loadu_si256(reinterpret_cast<const __m256i*>(Q + i)), rv));
  for (; i < V; ++i) P[i] = sm::residual_entry(P[i], Q[i], ratio);
}

SPECDEC_AVX512 inline __m512i u64_from_f64_avx512(__m512d d) {
  using namespace mass_detail;
  return _mm512_sub_epi64(_mm512_castpd_si512(_mm512_add_pd(d, _mm512_set1_pd(kTwo52))), _mm512_set1_epi64(kTwo52Bits));
}
SPECDEC_AVX512 inline __m512d f64_from_u64_avx512(__m512i u) {
  using namespace mass_detail;
  return _mm512_sub_pd(_mm512_castsi512_pd(_mm512_or_si512(u, _mm512_set1_epi64(kTwo52Bits))), _mm512_set1_pd(kTwo52));
}

SPECDEC_AVX512 inline uint64_t quantize_row_avx512(const float* src, int64_t V, uint64_t* dst) {
  const __m256 scale = _mm256_set1_ps(static_cast<float>(mass_detail::kScale));
  __m512i m = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    const __m256 x = _mm256_loadu_ps(src + i);
    const __m256 q = _mm256_ceil_ps(_mm256_mul_ps(x, scale));
    const __m256 one = _mm256_cmp_ps(x, _mm256_set1_ps(1.0f), _CMP_GE_OQ);
    const __m256 pos = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ);
    const __m256 w = _mm256_and_ps(pos, _mm256_blendv_ps(q, scale, one));
    const __m512i u = u64_from_f64_avx512(_mm512_cvtps_pd(w));
    if (dst) _mm512_storeu_si512(dst + i, u);
    m = _mm512_add_epi64(m, u);
  }
  return static_cast<uint64_t>(_mm512_reduce_add_epi64(m)) + quantize_row_plain(src + i, V - i, dst ? dst + i : nullptr);
}

SPECDEC_AVX512 inline __m512i residual8_avx512(__m512i p, __m512i q, __m512d ratio) {
  const __m512d r = _mm512_sub_pd(f64_from_u64_avx512(p), _mm512_mul_pd(f64_from_u64_avx512(q), ratio));
  const __mmask8 pos = _mm512_cmp_pd_mask(r, _mm512_setzero_pd(), _CMP_GT_OQ);
  return u64_from_f64_avx512(_mm512_maskz_roundscale_pd(pos, r, _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC));
}

SPECDEC_AVX512 inline uint64_t residual_mass_avx512(const uint64_t* P, const uint64_t* Q, int64_t V, double ratio) {
  const __m512d rv = _mm512_set1_pd(ratio);
  __m512i m = _mm512_setzero_si512();
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) m = _mm512_add_epi64(m, residual8_avx512(_mm512_loadu_si512(P + i), _mm512_loadu_si512(Q + i), rv));
  uint64_t mass = static_cast<uint64_t>(_mm512_reduce_add_epi64(m));
  for (; i < V; ++i) mass += sm::residual_entry(P[i], Q[i], ratio);
  return mass;
}

SPECDEC_AVX512 inline void apply_residual_avx512(uint64_t* P, const uint64_t* Q, int64_t V, double ratio) {
  const __m512d rv = _mm512_set1_pd(ratio);
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) _mm512_storeu_si512(P + i, residual8_avx512(_mm512_loadu_si512(P + i), _mm512_loadu_si512(Q + i), rv));
  for (; i < V; ++i) P[i] = sm::residual_entry(P[i], Q[i], ratio);
}
#endif

// The passes on the instruction set the kernels use (isa(); SPECDEC_CPU_SIMD caps it).
inline uint64_t quantize_row(const float* src, int64_t V, uint64_t* dst) {
#ifdef SPECDEC_CPU_X86_SIMD
  if (isa() == Isa::avx512) return quantize_row_avx512(src, V, dst);
  if (isa() == Isa::avx2) return quantize_row_avx2(src, V, dst);
#endif
  return quantize_row_plain(src, V, dst);
}
inline uint64_t residual_mass(const uint64_t* P, const uint64_t* Q, int64_t V, double ratio) {
#ifdef SPECDEC_CPU_X86_SIMD
  if (isa() == Isa::avx512) return residual_mass_avx512(P, Q, V, ratio);
  if (isa() == Isa::avx2) return residual_mass_avx2(P, Q, V, ratio);
#endif
  return residual_mass_plain(P, Q, V, ratio);
}
inline void apply_residual(uint64_t* P, const uint64_t* Q, int64_t V, double ratio) {
#ifdef SPECDEC_CPU_X86_SIMD
  if (isa() == Isa::avx512) return apply_residual_avx512(P, Q, V, ratio);
  if (isa() == Isa::avx2) return apply_residual_avx2(P, Q, V, ratio);
#endif
  apply_residual_plain(P, Q, V, ratio);
}

// The row's entropy on the instruction set the kernels use (isa(); SPECDEC_CPU_SIMD caps it).
inline double entropy(const float* p, int64_t V) {
#ifdef SPECDEC_CPU_X86_SIMD
  if (isa() == Isa::avx512) return entropy_avx512(p, V);
  if (isa() == Isa::avx2) return entropy_avx2(p, V);
#endif
  return sm::entropy_host(p, V);
}

}  // namespace simd
}  // namespace cpu
}  // namespace specdec

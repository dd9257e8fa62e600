// The entropy of a probability row for Medusa's typical acceptance on AVX2 and AVX-512, bit for bit
// the plain order of spec_math.h (sm::entropy_host, which the CUDA reduction also follows): element i
// goes to lane i % 512, each lane adds -p ln p with ln = sm::log_det, then sm::entropy_combine. A
// vector takes 4 (8) consecutive elements, i.e. 4 (8) consecutive lanes, and runs log_det's
// operations lane by lane: frexp from the bits (every positive float is a normal double), the same
// IEEE divisions, products and fused multiply-adds in the same order, so every lane's sum has the
// scalar's bits. Why: the scalar loop costs ~25 ns an element (frexp, two divisions, twelve fmas,
// serially), i.e. ~3 ms per 128k-entry row, and a typical-acceptance step reads several rows.
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

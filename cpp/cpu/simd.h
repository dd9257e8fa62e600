// What the CPU kernels (layers.cc, attention.cc) share for their x86 fast paths: the build switch,
// the target attribute, element loads of any float dtype as f32 (one, or eight with AVX2/F16C; all
// conversions are exact), and the runtime choice. SPECDEC_CPU_NO_SIMD builds the portable kernels
// only (what other architectures compile); SPECDEC_CPU_SIMD=portable selects them at run time, so
// that path is tested on this machine too.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "../core/dtype.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(SPECDEC_CPU_NO_SIMD)
#define SPECDEC_CPU_X86_SIMD 1
#include <immintrin.h>
#define SPECDEC_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace specdec {
namespace cpu {
namespace simd {

// Element i of a row of dtype T, as f32.
template <DType T>
inline float load1(const void* p, int64_t i) {
  if (T == DType::f32) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  return T == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
}

#ifdef SPECDEC_CPU_X86_SIMD
// Elements i .. i+7 of a row of dtype T, as f32 lanes.
template <DType T>
SPECDEC_AVX2 inline __m256 load8(const void* p, int64_t i) {
  if (T == DType::f32) return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
  if (T == DType::f16) return _mm256_cvtph_ps(h);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));  // bf16 = high half of f32
}

// ((v0+v1)+(v2+v3))+((v4+v5)+(v6+v7)) of four vectors at once: the two hadd levels form exactly the
// inner pairs of that tree, the add of the two halves its root; lane j is vector j's sum.
SPECDEC_AVX2 inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);     // a0+a1 a2+a3 b0+b1 b2+b3 | a4+a5 a6+a7 b4+b5 b6+b7
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);  // (a01)+(a23) (b..) (c..) (d..) | (a45)+(a67) ...
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// exp(x) for x <= 0 (Cephes expf: x = k ln2 + r, |r| <= ln2/2, degree-6 polynomial, then 2^k;
// ~1 ulp), 0 below -87 (e^-87 ~ 1.6e-38: negligible next to 1), NaN stays NaN. Each
// lane depends only on its own input.
SPECDEC_AVX2 inline __m256 exp_nonpos(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.0f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(lo, x);  // NaN passes (max returns its second operand then)
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, y);
}

// AVX2+FMA+F16C present, unless SPECDEC_CPU_SIMD=portable asks for the portable kernels. Read once.
inline bool use_avx2() {
  static const bool yes = [] {
    const char* env = std::getenv("SPECDEC_CPU_SIMD");
    if (env && std::strcmp(env, "portable") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return yes;
}
#else
inline bool use_avx2() { return false; }
#endif

}  // namespace simd
}  // namespace cpu
}  // namespace specdec

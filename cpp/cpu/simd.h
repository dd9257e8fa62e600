// What the CPU kernels (layers.cc, matmul.cc, attention.cc) share for their x86 fast paths: the
// build switch, the target attributes, element loads of any float dtype as f32 (one, eight with
// AVX2/F16C, sixteen with AVX-512F; all conversions are exact), and the run-time choice of the
// instruction set. SPECDEC_CPU_NO_SIMD builds the portable kernels only (what other architectures
// compile). SPECDEC_CPU_SIMD=portable|avx2|avx512|amx caps the choice at run time (the best the CPU has
// at or below it), so every path the binary ships is tested on one machine.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../core/dtype.h"
#include "../core/error.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(SPECDEC_CPU_NO_SIMD)
#define SPECDEC_CPU_X86_SIMD 1
// GCC 12's AVX-512 headers make "undefined" vectors by self-initialisation, which -Wall reports at
// every inlined use (GCC bug 105593, fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#define SPECDEC_AVX2 __attribute__((target("avx2,fma,f16c")))
#define SPECDEC_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))
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

// Element i of a float tensor's storage (f32|f16|bf16), as f32.
inline float elem_f32(DType dt, const void* p, int64_t i) {
  if (dt == DType::f16) return load1<DType::f16>(p, i);
  if (dt == DType::bf16) return load1<DType::bf16>(p, i);
  return load1<DType::f32>(p, i);
}

// f16 bits -> f32 without branches (so the loop vectorizes): the exponent/mantissa bits shifted
// into f32 position and scaled by 2^112 give every normal and subnormal value exactly; inf/NaN
// get the all-ones exponent. Bit-identical to f16_to_f32 in dtype.h.
inline float f16_bits_to_f32_fast(uint16_t h) {
  const uint32_t em = static_cast<uint32_t>(h & 0x7fffu) << 13;
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t scaled = f32_bits(bits_f32(em) * 5.192296858534828e+33f);  // 2^112
  const uint32_t special = 0x7f800000u | em;                                // inf / NaN
  return bits_f32(sign | ((h & 0x7c00u) == 0x7c00u ? special : scaled));
}

// Converts n elements of a float tensor's storage (f32|f16|bf16), from element `offset`, to f32.
inline void to_f32_row(DType dt, const void* src, int64_t offset, int64_t n, float* dst) {
  switch (dt) {
    case DType::f32:
      std::memcpy(dst, static_cast<const float*>(src) + offset, static_cast<size_t>(n) * sizeof(float));
      break;
    case DType::f16: {
      const uint16_t* s = static_cast<const uint16_t*>(src) + offset;
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_bits_to_f32_fast(s[i]);
      break;
    }
    case DType::bf16: {
      const uint16_t* s = static_cast<const uint16_t*>(src) + offset;
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
      break;
    }
    default: fail("E_UNSUPPORTED", "cpu kernels: dtype ", dtype_name(dt), " is not a float type");
  }
}

// Row argmax with spec_math.h's order (largest value, lowest index on ties, NaN never wins; an
// all-NaN row gives 0) in two passes: the largest non-NaN value (max is exact in any order), then
// the first element equal to it. The one-pass scalar loop cannot vectorise (its tie and NaN rule
// branch per element) and ran at 1.7 ns per element. SSE2 is part of x86-64, so no dispatch.
inline int32_t row_argmax(const float* x, int64_t V) {
  int64_t i = 0;
  float m = -INFINITY;  // stays -inf when every element is NaN or -inf
#if defined(SPECDEC_CPU_X86_SIMD) && defined(__SSE2__)
  // _mm_max_ps(v, m) is (v > m ? v : m): a NaN v keeps m.
  __m128 a0 = _mm_set1_ps(-INFINITY), a1 = a0, a2 = a0, a3 = a0;
  for (; i + 16 <= V; i += 16) {
    a0 = _mm_max_ps(_mm_loadu_ps(x + i), a0);
    a1 = _mm_max_ps(_mm_loadu_ps(x + i + 4), a1);
    a2 = _mm_max_ps(_mm_loadu_ps(x + i + 8), a2);
    a3 = _mm_max_ps(_mm_loadu_ps(x + i + 12), a3);
  }
  alignas(16) float lanes[4];
  _mm_store_ps(lanes, _mm_max_ps(_mm_max_ps(a0, a1), _mm_max_ps(a2, a3)));
  for (float l : lanes) m = l > m ? l : m;
#endif
  for (; i < V; ++i) m = x[i] > m ? x[i] : m;
  int64_t j = 0;
#if defined(SPECDEC_CPU_X86_SIMD) && defined(__SSE2__)
  const __m128 mv = _mm_set1_ps(m);
  for (; j + 16 <= V; j += 16) {
    const int hit = _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + j), mv)) |
                    _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + j + 4), mv)) << 4 |
                    _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + j + 8), mv)) << 8 |
                    _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + j + 12), mv)) << 12;
    if (hit) return static_cast<int32_t>(j + __builtin_ctz(static_cast<unsigned>(hit)));
  }
#endif
  for (; j < V; ++j)
    if (x[j] == m) return static_cast<int32_t>(j);
  return 0;  // every element NaN
}

// row_argmax of elements [offset, offset + V) of a float tensor's storage: f32 rows are read in
// place, f16/bf16 ones converted into `scratch` first.
inline int32_t row_argmax(DType dt, const void* src, int64_t offset, int64_t V, std::vector<float>& scratch) {
  if (dt == DType::f32) return row_argmax(static_cast<const float*>(src) + offset, V);
  scratch.resize(static_cast<size_t>(V));
  to_f32_row(dt, src, offset, V, scratch.data());
  return row_argmax(scratch.data(), V);
}

// exp_nonpos's steps on one float (below), operation for operation: the same bits as a lane of it
// wherever fma is IEEE fused multiply-add (std::fma is). For kernels whose portable path must equal
// their vector one (process_logits).
inline float exp_nonpos_scalar(float x) {
  if (x != x) return x;  // NaN stays NaN
  const float lo = -87.0f;
  const bool under = x < lo;
  x = lo > x ? lo : x;
  const float k = std::nearbyint(x * 1.44269504088896341f);  // the default rounding: to nearest even
  float r = std::fma(-k, 0.693359375f, x);
  r = std::fma(-k, -2.12194440e-4f, r);
  float y = 1.9875691500e-4f;
  y = std::fma(y, r, 1.3981999507e-3f);
  y = std::fma(y, r, 8.3334519073e-3f);
  y = std::fma(y, r, 4.1665795894e-2f);
  y = std::fma(y, r, 1.6666665459e-1f);
  y = std::fma(y, r, 5.0000001201e-1f);
  y = std::fma(y, r * r, r + 1.0f);
  const uint32_t e = static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23;
  float two_k;
  std::memcpy(&two_k, &e, sizeof two_k);
  return under ? 0.0f : y * two_k;
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

// Elements i .. i+15 of a row of dtype T, as f32 lanes.
template <DType T>
SPECDEC_AVX512 inline __m512 load16(const void* p, int64_t i) {
  if (T == DType::f32) return _mm512_loadu_ps(static_cast<const float*>(p) + i);
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(p) + i));
  if (T == DType::f16) return _mm512_cvtph_ps(h);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));  // bf16 = high half of f32
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

#endif  // SPECDEC_CPU_X86_SIMD

// The vector instruction sets the kernels have paths for, in order of preference. The AMX-BF16
// matmul (matmul_amx.h) sits above avx512: SPECDEC_CPU_SIMD=amx (or unset) allows it, any lower
// cap rules it out; it has its own check, OS permission request and switch (SPECDEC_CPU_AMX).
enum class Isa : int { portable = 0, avx2 = 1, avx512 = 2 };

inline const char* isa_name(Isa i) { return i == Isa::avx512 ? "avx512" : i == Isa::avx2 ? "avx2" : "portable"; }

// The best instruction set this CPU runs, ignoring SPECDEC_CPU_SIMD.
inline Isa detect_isa() {
#ifdef SPECDEC_CPU_X86_SIMD
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (avx2 && __builtin_cpu_supports("avx512f")) return Isa::avx512;
  if (avx2) return Isa::avx2;
#endif
  return Isa::portable;
}

// The instruction set the kernels use: detect_isa(), capped by SPECDEC_CPU_SIMD when set. Read once
// per process, so every call (every row count) takes the same path. An unknown value is E_ARG.
inline Isa isa() {
  static const Isa chosen = [] {
    const Isa best = detect_isa();
    const char* env = std::getenv("SPECDEC_CPU_SIMD");
    if (!env || !*env) return best;
    Isa cap;
    if (std::strcmp(env, "portable") == 0) cap = Isa::portable;
    else if (std::strcmp(env, "avx2") == 0) cap = Isa::avx2;
    else if (std::strcmp(env, "avx512") == 0 || std::strcmp(env, "amx") == 0) cap = Isa::avx512;
    else fail("E_ARG", "SPECDEC_CPU_SIMD='", env, "': expected portable, avx2, avx512 or amx");
    return static_cast<int>(cap) < static_cast<int>(best) ? cap : best;
  }();
  return chosen;
}

// AVX2+FMA+F16C kernels are usable (also true when AVX-512 is chosen: those CPUs have AVX2).
inline bool use_avx2() { return isa() != Isa::portable; }

}  // namespace simd
}  // namespace cpu
}  // namespace specdec

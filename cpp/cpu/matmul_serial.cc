// The k-serial matmul for small weights: see matmul_serial.h for the order and why.
#include "matmul_serial.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "simd.h"

namespace specdec {
namespace cpu {

namespace {

constexpr int64_t P = SerialWeight::kPanel;


// Element (k, j) of a panel.
template <bool kF32>
inline float weight(const void* panel, int64_t k, int64_t j) {
  if constexpr (kF32) return static_cast<const float*>(panel)[k * P + j];
  else return bf16_to_f32(static_cast<const uint16_t*>(panel)[k * P + j]);
}

template <bool kF32>
void block_portable(const float* x, int64_t N, int64_t K, const SerialWeight& w, int64_t m0, int64_t m1, float* out,
                    int64_t ldo) {
  for (int64_t m = m0; m < m1; ++m) {
    const void* panel = w.panel(m / P);
    const int64_t j = m % P;
    for (int64_t n = 0; n < N; ++n) {
      const float* xr = x + n * K;
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s = std::fma(xr[k], weight<kF32>(panel, k, j), s);
      out[n * ldo + m] = s;
    }
  }
}

#ifdef SPECDEC_CPU_X86_SIMD
// R rows of x against one panel's first `valid` outputs (all 64 computed; zero rows past the weight).
template <int R, bool kF32>
SPECDEC_AVX512 void panel_avx512(const float* x, int64_t K, const void* panel, float* out, int64_t ldo, int valid) {
  __m512 acc[R * 4];
#pragma GCC unroll 24
  for (int i = 0; i < R * 4; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 wv[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      if constexpr (kF32) {
        wv[v] = _mm512_loadu_ps(static_cast<const float*>(panel) + k * P + 16 * v);
      } else {
        const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(panel) + k * P + 16 * v));
        wv[v] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m512 xb = _mm512_set1_ps(x[r * K + k]);
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) acc[r * 4 + v] = _mm512_fmadd_ps(xb, wv[v], acc[r * 4 + v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const int left = valid - 16 * v;
      if (left >= 16) _mm512_storeu_ps(out + r * ldo + 16 * v, acc[r * 4 + v]);
      else if (left > 0) _mm512_mask_storeu_ps(out + r * ldo + 16 * v, static_cast<__mmask16>((1u << left) - 1), acc[r * 4 + v]);
    }
}

// R rows of x against 16 outputs of a panel (columns [16 s, 16 s + 16)), the first `valid` stored.
template <int R, bool kF32>
SPECDEC_AVX2 void sub_avx2(const float* x, int64_t K, const void* panel, int s, float* out, int64_t ldo, int valid) {
  __m256 acc[R * 2];
#pragma GCC unroll 12
  for (int i = 0; i < R * 2; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m256 w0, w1;
    if constexpr (kF32) {
      const float* p = static_cast<const float*>(panel) + k * P + 16 * s;
      w0 = _mm256_loadu_ps(p);
      w1 = _mm256_loadu_ps(p + 8);
    } else {
      const uint16_t* p = static_cast<const uint16_t*>(panel) + k * P + 16 * s;
      w0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
      w1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8))), 16));
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 xb = _mm256_broadcast_ss(x + r * K + k);
      acc[2 * r] = _mm256_fmadd_ps(xb, w0, acc[2 * r]);
      acc[2 * r + 1] = _mm256_fmadd_ps(xb, w1, acc[2 * r + 1]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    float* o = out + r * ldo + 16 * s;
    if (valid >= 16) {
      _mm256_storeu_ps(o, acc[2 * r]);
      _mm256_storeu_ps(o + 8, acc[2 * r + 1]);
    } else {
      alignas(32) float t[16];
      _mm256_store_ps(t, acc[2 * r]);
      _mm256_store_ps(t + 8, acc[2 * r + 1]);
      std::memcpy(o, t, sizeof(float) * static_cast<size_t>(valid));
    }
  }
}

// All N rows against one panel, in groups of up to 6 rows (24 + 4 + 1 of the 32 zmm registers;
// 12 + 2 + 1 of the 16 ymm). Rows are independent, so the grouping changes no bits.
template <bool kAvx512, bool kF32>
void panel_rows(const float* x, int64_t N, int64_t K, const void* panel, float* out, int64_t ldo, int valid) {
  for (int64_t n = 0; n < N; n += 6) {
    const float* xr = x + n * K;
    float* o = out + n * ldo;
    const int64_t R = std::min<int64_t>(6, N - n);
    if constexpr (kAvx512) {
      switch (R) {
        case 1: panel_avx512<1, kF32>(xr, K, panel, o, ldo, valid); break;
        case 2: panel_avx512<2, kF32>(xr, K, panel, o, ldo, valid); break;
        case 3: panel_avx512<3, kF32>(xr, K, panel, o, ldo, valid); break;
        case 4: panel_avx512<4, kF32>(xr, K, panel, o, ldo, valid); break;
        case 5: panel_avx512<5, kF32>(xr, K, panel, o, ldo, valid); break;
        default: panel_avx512<6, kF32>(xr, K, panel, o, ldo, valid); break;
      }
    } else {
      for (int s = 0; s * 16 < valid; ++s) {
        const int v = std::min(16, valid - 16 * s);
        switch (R) {
          case 1: sub_avx2<1, kF32>(xr, K, panel, s, o, ldo, v); break;
          case 2: sub_avx2<2, kF32>(xr, K, panel, s, o, ldo, v); break;
          case 3: sub_avx2<3, kF32>(xr, K, panel, s, o, ldo, v); break;
          case 4: sub_avx2<4, kF32>(xr, K, panel, s, o, ldo, v); break;
          case 5: sub_avx2<5, kF32>(xr, K, panel, s, o, ldo, v); break;
          default: sub_avx2<6, kF32>(xr, K, panel, s, o, ldo, v); break;
        }
      }
    }
  }
}

template <bool kAvx512, bool kF32>
void block_simd(const float* x, int64_t N, int64_t K, const SerialWeight& w, int64_t m0, int64_t m1, float* out,
                int64_t ldo) {
  for (int64_t m = m0; m < m1; m += P) {
    const int valid = static_cast<int>(std::min(P, m1 - m));
    panel_rows<kAvx512, kF32>(x, N, K, w.panel(m / P), out + m, ldo, valid);
  }
}
#endif  // SPECDEC_CPU_X86_SIMD

}  // namespace

bool SerialWeight::enabled() {
  static const bool on = [] {
    const char* env = std::getenv("SPECDEC_CPU_SERIAL");
    return !(env && std::strcmp(env, "0") == 0);
  }();
  return on;
}

bool SerialWeight::eligible(const Tensor& w) {
  if (!w.defined() || w.device() != Device::cpu || w.dim() != 2) return false;
  const DType dt = w.dtype();
  if (dt != DType::f32 && dt != DType::f16 && dt != DType::bf16) return false;
  const int64_t M = w.size(0), K = w.size(1);
  return M > 0 && K > 0 && K <= kMaxK && M * K <= kMaxElems;
}

std::shared_ptr<const SerialWeight> SerialWeight::pack(const Tensor& w) {
  SPECDEC_CHECK(eligible(w), "E_ARG", "w: a k-serial pack takes a 2-D CPU f32/f16/bf16 weight with K <= ", kMaxK,
                " and at most ", kMaxElems, " elements, got ", w.describe());
  auto s = std::make_shared<SerialWeight>();
  const int64_t M = w.size(0), K = w.size(1), panels = (M + P - 1) / P;
  s->M_ = M;
  s->K_ = K;
  s->f32_ = w.dtype() != DType::bf16;
  s->source_ = w;
  const size_t n = static_cast<size_t>(panels * K * P);
  const void* src = w.data();
  if (s->f32_) {
    s->f32s_.assign(n, 0.f);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k)
        s->f32s_[static_cast<size_t>((m / P) * K * P + k * P + m % P)] = simd::elem_f32(w.dtype(), src, m * K + k);
  } else {
    s->bf16s_.assign(n, 0);
    const uint16_t* h = static_cast<const uint16_t*>(src);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) s->bf16s_[static_cast<size_t>((m / P) * K * P + k * P + m % P)] = h[m * K + k];
  }
  return s;
}

std::shared_ptr<const SerialWeight> SerialWeight::pack_if_eligible(const Tensor& w) {
  return eligible(w) ? pack(w) : nullptr;
}

bool SerialWeight::packed_from(const Tensor& w) const {
  return w.defined() && w.device() == Device::cpu && w.data() == source_.data() && w.dtype() == source_.dtype() &&
         w.dim() == 2 && w.size(0) == M_ && w.size(1) == K_;
}

const void* SerialWeight::panel(int64_t p) const {
  const size_t at = static_cast<size_t>(p * K_ * P);
  return f32_ ? static_cast<const void*>(f32s_.data() + at) : static_cast<const void*>(bf16s_.data() + at);
}

void serial_block(const float* x, int64_t N, const SerialWeight& w, int64_t m0, int64_t m1, float* out, int64_t ldo) {
  const int64_t K = w.cols();
  const bool f32 = w.packed_f32();
#ifdef SPECDEC_CPU_X86_SIMD
  const simd::Isa isa = simd::isa();
  if (isa == simd::Isa::avx512) return f32 ? block_simd<true, true>(x, N, K, w, m0, m1, out, ldo) : block_simd<true, false>(x, N, K, w, m0, m1, out, ldo);
  if (isa == simd::Isa::avx2) return f32 ? block_simd<false, true>(x, N, K, w, m0, m1, out, ldo) : block_simd<false, false>(x, N, K, w, m0, m1, out, ldo);
#endif
  if (f32) block_portable<true>(x, N, K, w, m0, m1, out, ldo);
  else block_portable<false>(x, N, K, w, m0, m1, out, ldo);
}

}  // namespace cpu
}  // namespace specdec

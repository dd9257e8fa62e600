// Peak multiply-add rate (see peak.h). Twelve chains per thread hide the FMA latency (4-5 cycles)
// at two FMAs per cycle; the multiplier is just below 1 and the addend small, so the values stay
// normal and finite however long it runs.
#include "peak.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>

#include "thread_pool.h"

namespace specdec {
namespace cpu {

namespace {

constexpr int kChains = 12;
constexpr int64_t kIters = 1 << 14;  // per chunk: ~0.1-1 ms

// Adds to *sink a value the compiler must compute.
void chains_portable(float* sink) {
  float a[kChains];
  for (int i = 0; i < kChains; ++i) a[i] = 1.0f + i;
  for (int64_t t = 0; t < kIters; ++t)
    for (int i = 0; i < kChains; ++i) a[i] = std::fma(a[i], 0.999999f, 1e-3f);
  float s = 0;
  for (float v : a) s += v;
  *sink += s;
}

#ifdef SPECDEC_CPU_X86_SIMD
SPECDEC_AVX2 void chains_avx2(float* sink) {
  __m256 a[kChains];
  for (int i = 0; i < kChains; ++i) a[i] = _mm256_set1_ps(1.0f + i);
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-3f);
  for (int64_t t = 0; t < kIters; ++t)
    for (int i = 0; i < kChains; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  alignas(32) float out[8];
  __m256 s = a[0];
  for (int i = 1; i < kChains; ++i) s = _mm256_add_ps(s, a[i]);
  _mm256_store_ps(out, s);
  *sink += out[0];
}

SPECDEC_AVX512 void chains_avx512(float* sink) {
  __m512 a[kChains];
  for (int i = 0; i < kChains; ++i) a[i] = _mm512_set1_ps(1.0f + i);
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-3f);
  for (int64_t t = 0; t < kIters; ++t)
    for (int i = 0; i < kChains; ++i) a[i] = _mm512_fmadd_ps(a[i], m, c);
  alignas(64) float out[16];
  __m512 s = a[0];
  for (int i = 1; i < kChains; ++i) s = _mm512_add_ps(s, a[i]);
  _mm512_store_ps(out, s);
  *sink += out[0];
}
#endif

double flops_per_chunk(simd::Isa isa) {
  const int lanes = isa == simd::Isa::avx512 ? 16 : isa == simd::Isa::avx2 ? 8 : 1;
  return 2.0 * lanes * kChains * kIters;
}

void chains(simd::Isa isa, float* sink) {
#ifdef SPECDEC_CPU_X86_SIMD
  if (isa == simd::Isa::avx512) return chains_avx512(sink);
  if (isa == simd::Isa::avx2) return chains_avx2(sink);
#endif
  return chains_portable(sink);
}

}  // namespace

double fma_peak_gflops(simd::Isa isa, double seconds) {
  SPECDEC_CHECK(static_cast<int>(isa) <= static_cast<int>(simd::detect_isa()), "E_UNSUPPORTED", "this CPU has no ",
                simd::isa_name(isa), " (best: ", simd::isa_name(simd::detect_isa()), ")");
  SPECDEC_CHECK(seconds > 0 && seconds <= 10, "E_ARG", "seconds: expected (0, 10], got ", seconds);
  using clock = std::chrono::steady_clock;
  const int threads = pool_threads();
  volatile float sink = 0;
  // Short rounds, one chunk per thread each; the best round counts, so a machine shared with
  // other processes still shows what the hardware does when this process has the cores.
  auto round = [&] {
    const auto t0 = clock::now();
    std::atomic<int64_t> chunks{0};
    parallel_for(threads, 1, [&](int64_t b, int64_t e) {
      float s = 0;
      for (int64_t i = b; i < e; ++i) chains(isa, &s);
      chunks.fetch_add(e - b);
      sink = sink + s;
    });
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    return static_cast<double>(chunks.load()) * flops_per_chunk(isa) / dt;
  };
  round();  // warm-up: clocks, the pool's workers
  double best = 0;
  const auto end = clock::now() + std::chrono::duration<double>(seconds);
  do best = std::max(best, round());
  while (clock::now() < end);
  return best / 1e9;
}

}  // namespace cpu
}  // namespace specdec

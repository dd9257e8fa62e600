// CPU reference backend for the model layer ops (cpp/core/ops_layers.h). Arguments were
// validated by the dispatcher (cpp/core/ops_layers.cc); these functions only compute.
//
// Batch invariance of matmul: every output element is one call-independent dot product with a
// fixed summation order (8 interleaved f32 partial sums over k, combined in a fixed tree, then the
// tail in order). Row blocking and threading only decide WHO computes an element, never HOW, so
// a row's result is bit-identical whether it is computed alone or inside a batch of any size.
// Two implementations of that order exist: the portable one (separate multiply and add) and, when
// the CPU has AVX2+FMA+F16C (checked at run time; the build targets baseline x86-64), a register-
// blocked one with fused multiply-adds. A process uses one of them for every call, so within a
// process results never depend on N; the two differ from each other only in rounding.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../core/ops_layers.h"
#include "../core/spec_math.h"
#include "simd.h"
#include "thread_pool.h"

namespace specdec {
namespace cpu {

namespace {

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

// Converts n elements of a float tensor's storage (f32|f16|bf16) to f32.
void to_f32_row(DType dt, const void* src, int64_t offset, int64_t n, float* dst) {
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
    default: fail("E_UNSUPPORTED", "cpu layers: dtype ", dtype_name(dt), " is not a float type");
  }
}

constexpr int kLanes = 8;

// R rows of x against one row of w, each row with the fixed summation order described above
// (identical for every R, so blocking does not change results).
template <int R>
inline void dot_rows(const float* const* x, const float* w, int64_t K, float* out) {
  float acc[R][kLanes];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < kLanes; ++j) acc[r][j] = 0.f;
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < kLanes; ++j) acc[r][j] += x[r][k + j] * w[k + j];
  }
  for (int r = 0; r < R; ++r) {
    const float* a = acc[r];
    float s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (int64_t t = k; t < K; ++t) s += x[r][t] * w[t];
    out[r] = s;
  }
}

#ifdef SPECDEC_CPU_X86_SIMD
using simd::load8;

using simd::load1;

using simd::hsum4;

// R rows of x (row stride K) against WR consecutive rows of w (row stride K):
// out[r * ldo + j] = x[r] . w[j]. Each weight vector is loaded and converted once and reused for
// the R rows. Per output the order is always: 8-lane FMA accumulators over k in steps of 8, a
// fixed pairwise sum of the lanes, then the k % 8 tail with scalar FMAs -- independent of R and WR.
template <int R, int WR, DType WT>
SPECDEC_AVX2 void tile_avx2(const float* x, const void* w, int64_t K, float* out, int64_t ldo) {
  __m256 acc[R][WR];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < WR; ++j) acc[r][j] = _mm256_setzero_ps();
  // Weights stream from memory once per tile, and a tile reads only WR rows at a time: too few
  // streams to keep DRAM busy. So each row of this tile also prefetches, a cache line at a time,
  // the row kPrefetchRows further on (a later tile's), which doubled small-N throughput on a
  // 56 MB bf16 matrix (2-core EPYC).
  constexpr int64_t kPrefetchRows = 16;
  constexpr int64_t esz = WT == DType::f32 ? 4 : 2, kLine = 64 / esz;
  const char* ahead = static_cast<const char*>(w) + kPrefetchRows * K * esz;
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    if (k % kLine == 0)
      for (int j = 0; j < WR; ++j) _mm_prefetch(ahead + (j * K + k) * esz, _MM_HINT_T0);
    __m256 wv[WR];
    for (int j = 0; j < WR; ++j) wv[j] = load8<WT>(w, j * K + k);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(x + r * K + k);
      for (int j = 0; j < WR; ++j) acc[r][j] = _mm256_fmadd_ps(xv, wv[j], acc[r][j]);
    }
  }
  // Lane sums, four accumulators at a time where possible (same tree, so the same bits).
  constexpr int T = R * WR;
  alignas(16) float sums[(T + 3) / 4 * 4];
  const __m256* flat = &acc[0][0];
  int i = 0;
  for (; i + 4 <= T; i += 4) _mm_store_ps(sums + i, hsum4(flat[i], flat[i + 1], flat[i + 2], flat[i + 3]));
  for (; i < T; ++i) {
    alignas(32) float a[kLanes];
    _mm256_store_ps(a, flat[i]);
    sums[i] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < WR; ++j) {
      float s = sums[r * WR + j];
      for (int64_t t = k; t < K; ++t) s = std::fma(x[r * K + t], load1<WT>(w, j * K + t), s);
      out[r * ldo + j] = s;
    }
  }
}

// R rows of x against weight rows [m0, m1): blocks of WR weight rows, then the rest one by one.
// WR is as large as the 16 ymm registers allow (R*WR accumulators + WR weights + 1 x vector).
template <int R, DType WT>
SPECDEC_AVX2 void rows_avx2(const float* x, const void* w, int64_t K, int64_t m0, int64_t m1, float* out,
                            int64_t M) {
  constexpr int WR = R == 1 ? 8 : R == 2 ? 4 : R <= 4 ? 3 : 2;  // all divide kBlockM = 24
  const size_t esz = WT == DType::f32 ? 4 : 2;
  const char* wb = static_cast<const char*>(w);
  int64_t m = m0;
  for (; m + WR <= m1; m += WR) tile_avx2<R, WR, WT>(x, wb + static_cast<size_t>(m * K) * esz, K, out + m, M);
  for (; m < m1; ++m) tile_avx2<R, 1, WT>(x, wb + static_cast<size_t>(m * K) * esz, K, out + m, M);
}

// out[:, m0:m1] = x w[m0:m1]^T for all N rows. Rows go in groups of 4, and the last 1..6 rows as
// one group, so that a small N (a decode step, a short draft chain) streams the weights once.
template <DType WT>
SPECDEC_AVX2 void matmul_cols_avx2(const float* x, const void* w, int64_t N, int64_t K, int64_t M, int64_t m0,
                                   int64_t m1, float* out) {
  int64_t n = 0;
  for (; N - n > 6; n += 4) rows_avx2<4, WT>(x + n * K, w, K, m0, m1, out + n * M, M);
  const float* xr = x + n * K;
  float* o = out + n * M;
  switch (N - n) {
    case 6: rows_avx2<6, WT>(xr, w, K, m0, m1, o, M); break;
    case 5: rows_avx2<5, WT>(xr, w, K, m0, m1, o, M); break;
    case 4: rows_avx2<4, WT>(xr, w, K, m0, m1, o, M); break;
    case 3: rows_avx2<3, WT>(xr, w, K, m0, m1, o, M); break;
    case 2: rows_avx2<2, WT>(xr, w, K, m0, m1, o, M); break;
    case 1: rows_avx2<1, WT>(xr, w, K, m0, m1, o, M); break;
    default: break;
  }
}
#endif  // SPECDEC_CPU_X86_SIMD

inline float silu(float v) { return v / (1.f + std::exp(-v)); }

#ifdef SPECDEC_CPU_X86_SIMD
// silu(v) = v / (1 + e^-v) through e = exp(-|v|) <= 1, so exp_nonpos serves both signs:
// v >= 0: v / (1 + e); v < 0: v e / (1 + e). Lane by lane (no dependence on the batch).
SPECDEC_AVX2 inline __m256 silu8(__m256 v) {
  const __m256 e = simd::exp_nonpos(_mm256_or_ps(v, _mm256_set1_ps(-0.0f)));  // -|v|
  const __m256 num = _mm256_blendv_ps(v, _mm256_mul_ps(v, e), v);              // by v's sign bit
  return _mm256_div_ps(num, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

// o = silu(g) * u (u null: o = silu(g)) over [0, n); the tail through the scalar formula.
SPECDEC_AVX2 void silu_avx2(const float* g, const float* u, float* o, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const __m256 s = silu8(_mm256_loadu_ps(g + i));
    _mm256_storeu_ps(o + i, u ? _mm256_mul_ps(s, _mm256_loadu_ps(u + i)) : s);
  }
  for (; i < n; ++i) o[i] = u ? silu(g[i]) * u[i] : silu(g[i]);
}
#endif  // SPECDEC_CPU_X86_SIMD
using simd::use_avx2;

// o = silu(g) * u, or silu(g) when u is null (o may be g), on the thread pool; element-wise, so
// the result does not depend on the split.
void silu_rows(const float* g, const float* u, float* o, int64_t n) {
  parallel_for(n, grain_for(24.0), [&](int64_t b, int64_t e) {
#ifdef SPECDEC_CPU_X86_SIMD
    if (use_avx2()) return silu_avx2(g + b, u ? u + b : nullptr, o + b, e - b);
#endif
    for (int64_t i = b; i < e; ++i) o[i] = u ? silu(g[i]) * u[i] : silu(g[i]);
  });
}

}  // namespace

void embedding(const Tensor& table, const Tensor& ids, Tensor& out) {
  const int64_t N = ids.size(0), H = table.size(1);
  const int32_t* id = ids.ptr<int32_t>();
  float* o = out.ptr<float>();
  const int64_t V = table.size(0);
  for (int64_t n = 0; n < N; ++n)  // validated by the dispatcher; never read out of bounds regardless
    if (id[n] >= 0 && id[n] < V) to_f32_row(table.dtype(), table.data(), int64_t{id[n]} * H, H, o + n * H);
}

void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  const int64_t N = x.size(0), H = x.size(1);
  std::vector<float> wf(static_cast<size_t>(H));
  to_f32_row(w.dtype(), w.data(), 0, H, wf.data());
  const float* xp = x.ptr<float>();
  float* op = out.ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = xp + n * H;
    float* orow = op + n * H;
    // Mean of squares in double: cheap here and makes the CPU reference the accurate side.
    double ss = 0.0;
    for (int64_t h = 0; h < H; ++h) ss += static_cast<double>(xr[h]) * xr[h];
    float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(H) + static_cast<double>(eps)));
    for (int64_t h = 0; h < H; ++h) orow[h] = xr[h] * inv * wf[static_cast<size_t>(h)];
  }
}

void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out) {
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  if (N == 0 || M == 0) return;
  std::vector<float> bf;
  if (bias.defined()) {
    bf.resize(static_cast<size_t>(M));
    to_f32_row(bias.dtype(), bias.data(), 0, M, bf.data());
  }
  const float* xp = x.ptr<float>();
  float* op = out.ptr<float>();
  const DType wdt = w.dtype();
  // Threads split the output columns (rows of w) in blocks: each weight row is read by one thread
  // only, and a block's weights stay in cache while every row of x passes over them.
  constexpr int64_t kBlockM = 24;  // a multiple of every tile width used by rows_avx2
  const int64_t blocks = (M + kBlockM - 1) / kBlockM;
  const bool avx2 = use_avx2();
  // A task of >= 32k multiply-adds (a few microseconds) outweighs handing it to a spinning worker;
  // measured on the default model's 5-token forward (2 cores), smaller or larger was no better.
  const int64_t grain = grain_for(static_cast<double>(N) * static_cast<double>(K) * kBlockM, 32768.0);
  parallel_for(blocks, grain, [&](int64_t b0, int64_t b1) {
    std::vector<float> wbuf(avx2 || wdt == DType::f32 ? 0 : static_cast<size_t>(kBlockM * K));
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t m0 = blk * kBlockM, m1 = std::min(M, m0 + kBlockM);
      if (avx2) {
#ifdef SPECDEC_CPU_X86_SIMD
        switch (wdt) {
          case DType::f32: matmul_cols_avx2<DType::f32>(xp, w.data(), N, K, M, m0, m1, op); break;
          case DType::f16: matmul_cols_avx2<DType::f16>(xp, w.data(), N, K, M, m0, m1, op); break;
          case DType::bf16: matmul_cols_avx2<DType::bf16>(xp, w.data(), N, K, M, m0, m1, op); break;
          default: fail("E_UNSUPPORTED", "cpu matmul: w dtype ", dtype_name(wdt), " is not a float type");
        }
#endif
      } else {
        // Portable: weights of the block as f32 (exact conversion), reused by every row of x.
        const float* wblk;
        if (wdt == DType::f32) {
          wblk = w.ptr<float>() + m0 * K;
        } else {
          to_f32_row(wdt, w.data(), m0 * K, (m1 - m0) * K, wbuf.data());
          wblk = wbuf.data();
        }
        int64_t n = 0;
        for (; n + 4 <= N; n += 4) {
          const float* xr[4] = {xp + n * K, xp + (n + 1) * K, xp + (n + 2) * K, xp + (n + 3) * K};
          for (int64_t m = m0; m < m1; ++m) {
            float r[4];
            dot_rows<4>(xr, wblk + (m - m0) * K, K, r);
            for (int i = 0; i < 4; ++i) op[(n + i) * M + m] = r[i];
          }
        }
        for (; n < N; ++n) {
          const float* xr[1] = {xp + n * K};
          for (int64_t m = m0; m < m1; ++m) dot_rows<1>(xr, wblk + (m - m0) * K, K, op + n * M + m);
        }
      }
      if (!bf.empty())
        for (int64_t nn = 0; nn < N; ++nn)
          for (int64_t m = m0; m < m1; ++m) op[nn * M + m] += bf[static_cast<size_t>(m)];
    }
  });
}

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  const int64_t N = x.size(0), heads = x.size(1), D = x.size(2), half = D / 2;
  const int32_t* pos = positions.ptr<int32_t>();
  const float* f = inv_freq.ptr<float>();
  float* xp = x.ptr<float>();
  std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t i = 0; i < half; ++i) {
      float angle = static_cast<float>(pos[n]) * f[i];  // in f32, as HF does
      c[static_cast<size_t>(i)] = std::cos(angle);
      s[static_cast<size_t>(i)] = std::sin(angle);
    }
    for (int64_t h = 0; h < heads; ++h) {
      float* v = xp + (n * heads + h) * D;
      for (int64_t i = 0; i < half; ++i) {
        float a = v[i], b = v[i + half];
        float ci = c[static_cast<size_t>(i)], si = s[static_cast<size_t>(i)];
        v[i] = a * ci - b * si;         // x * cos + rotate_half(x) * sin, rotate_half = (-b, a)
        v[i + half] = b * ci + a * si;
      }
    }
  }
}

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  const int64_t n = gate.numel();
  const float* g = gate.ptr<float>();
  const float* u = up.ptr<float>();
  silu_rows(g, u, out.ptr<float>(), n);
}

void add_inplace(Tensor& x, const Tensor& y) {
  const int64_t n = x.numel();
  float* a = x.ptr<float>();
  const float* b = y.ptr<float>();
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

void silu_inplace(Tensor& x) {
  const int64_t n = x.numel();
  silu_rows(x.ptr<float>(), nullptr, x.ptr<float>(), n);
}

void gather_last_accepted(const Tensor& x, const Tensor& indptr, const Tensor& acc_nodes, const Tensor& acc_count, Tensor& out) {
  const int64_t B = out.size(0), H = out.size(1);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t row = sm::last_accepted_row(indptr.ptr<int32_t>(), acc_nodes.ptr<int32_t>(), acc_count.ptr<int32_t>(), b);
    float* o = out.ptr<float>() + b * H;
    if (row < 0) std::fill(o, o + H, 0.f);
    else std::copy(x.ptr<float>() + row * H, x.ptr<float>() + (row + 1) * H, o);
  }
}

}  // namespace cpu
}  // namespace specdec

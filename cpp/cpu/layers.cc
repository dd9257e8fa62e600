// CPU reference backend for the model layer ops (cpp/core/ops_layers.h) other than matmul (in
// matmul.cc). Arguments were validated by the dispatcher (cpp/core/ops_layers.cc); these functions
// only compute.
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

// A per-thread scratch row for the norm weights as f32: grown once, so a forward allocates nothing
// here in the steady state. (RoPE keeps its own table: RopeTable below.)
float* scratch_floats(int64_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

inline float silu(float v) { return v / (1.f + std::exp(-v)); }

#ifdef SPECDEC_CPU_X86_SIMD
// silu(v) = v / (1 + e^-v) through e = exp(-|v|) <= 1, so exp_nonpos serves both signs:
// v >= 0: v / (1 + e); v < 0: v e / (1 + e). Lane by lane (no dependence on the batch).
SPECDEC_AVX2 inline __m256 silu8(__m256 v) {
  const __m256 e = simd::exp_nonpos(_mm256_or_ps(v, _mm256_set1_ps(-0.0f)));  // -|v|
  const __m256 num = _mm256_blendv_ps(v, _mm256_mul_ps(v, e), v);              // by v's sign bit
  return _mm256_div_ps(num, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

// o = silu(g) * u (u null: o = silu(g)) over [0, n); the tail through silu8 too, on a padded copy:
// an element's bits must not depend on where a thread's range starts (the scalar formula's std::exp
// is not exp_nonpos, and the ranges follow the batch's size and the pool's split: found as
// identical prompts in one batch getting different logits).
SPECDEC_AVX2 void silu_avx2(const float* g, const float* u, float* o, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 s = silu8(_mm256_loadu_ps(g + i));
    _mm256_storeu_ps(o + i, u ? _mm256_mul_ps(s, _mm256_loadu_ps(u + i)) : s);
  }
  if (i == n) return;
  const size_t rest = static_cast<size_t>(n - i) * sizeof(float);
  alignas(32) float gb[8] = {0, 0, 0, 0, 0, 0, 0, 0}, ub[8] = {0, 0, 0, 0, 0, 0, 0, 0}, ob[8];
  std::memcpy(gb, g + i, rest);
  if (u) std::memcpy(ub, u + i, rest);
  const __m256 s = silu8(_mm256_load_ps(gb));
  _mm256_store_ps(ob, u ? _mm256_mul_ps(s, _mm256_load_ps(ub)) : s);
  std::memcpy(o + i, ob, rest);
}
#endif  // SPECDEC_CPU_X86_SIMD
using simd::to_f32_row;
using simd::use_avx2;

// o = silu(g) * u, or silu(g) when u is null (o may be g), on the thread pool; element-wise, so
// the result does not depend on the split.
void silu_rows(const float* g, const float* u, float* o, int64_t n) {
  constexpr double kPerItem = 24.0;
  parallel_for(
      n, grain_for(kPerItem),
      [&](int64_t b, int64_t e) {
#ifdef SPECDEC_CPU_X86_SIMD
        if (use_avx2()) return silu_avx2(g + b, u ? u + b : nullptr, o + b, e - b);
#endif
        for (int64_t i = b; i < e; ++i) o[i] = u ? silu(g[i]) * u[i] : silu(g[i]);
      },
      kPerItem * static_cast<double>(n));
}

}  // namespace

void embedding(const Tensor& table, const Tensor& ids, Tensor& out, float scale) {
  const int64_t N = ids.size(0), H = table.size(1);
  const int32_t* id = ids.ptr<int32_t>();
  float* o = out.ptr<float>();
  const int64_t V = table.size(0);
  for (int64_t n = 0; n < N; ++n) {  // validated by the dispatcher; never read out of bounds regardless
    if (id[n] < 0 || id[n] >= V) continue;
    to_f32_row(table.dtype(), table.data(), int64_t{id[n]} * H, H, o + n * H);
    if (scale != 1.f)
      for (int64_t h = 0; h < H; ++h) o[n * H + h] *= scale;
  }
}

void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  const int64_t N = x.size(0), H = x.size(1);
  float* wf = scratch_floats(H);
  to_f32_row(w.dtype(), w.data(), 0, H, wf);
  const float* xp = x.ptr<float>();
  float* op = out.ptr<float>();
  // Mean of squares in double, each row one sum in h order: cheap here and makes the CPU reference
  // the accurate side. Four rows' sums run side by side (a double add's latency bounds one sum;
  // four independent chains hide it), each row's arithmetic unchanged.
  constexpr int64_t kRows = 4;
  for (int64_t n0 = 0; n0 < N; n0 += kRows) {
    const int64_t R = std::min(kRows, N - n0);
    double ss[kRows] = {0.0, 0.0, 0.0, 0.0};
    if (R == kRows) {
      const float* x0 = xp + n0 * H;
      for (int64_t h = 0; h < H; ++h)
        for (int64_t r = 0; r < kRows; ++r) ss[r] += static_cast<double>(x0[r * H + h]) * x0[r * H + h];
    } else {
      for (int64_t r = 0; r < R; ++r) {
        const float* xr = xp + (n0 + r) * H;
        for (int64_t h = 0; h < H; ++h) ss[r] += static_cast<double>(xr[h]) * xr[h];
      }
    }
    for (int64_t r = 0; r < R; ++r) {
      const float* xr = xp + (n0 + r) * H;
      float* orow = op + (n0 + r) * H;
      const float inv = static_cast<float>(1.0 / std::sqrt(ss[r] / static_cast<double>(H) + static_cast<double>(eps)));
      for (int64_t h = 0; h < H; ++h) orow[h] = xr[h] * inv * wf[h];
    }
  }
}

// cos and sin (times scale) of every (position, frequency) of a forward: [N][half] each. A forward
// rotates q and k in every layer at the same positions, so the table of the last call is kept (per
// thread) and reused while positions, frequencies and scale are the same values: the same
// std::cos / std::sin of the same angles, so the same bits, computed once a forward instead of twice
// a layer (~2% of a small model's token).
struct RopeTable {
  std::vector<int32_t> pos;
  std::vector<float> freq;
  float scale = 0.f;
  std::vector<float> c, s;

  const RopeTable& get(const int32_t* p, int64_t n, const float* f, int64_t half, float sc) {
    const bool same = static_cast<int64_t>(pos.size()) == n && static_cast<int64_t>(freq.size()) == half &&
                      std::memcmp(&scale, &sc, sizeof sc) == 0 &&
                      (n == 0 || std::memcmp(pos.data(), p, static_cast<size_t>(n) * sizeof *p) == 0) &&
                      (half == 0 || std::memcmp(freq.data(), f, static_cast<size_t>(half) * sizeof *f) == 0);
    if (same) return *this;
    pos.assign(p, p + n);
    freq.assign(f, f + half);
    scale = sc;
    c.resize(static_cast<size_t>(n * half));
    s.resize(static_cast<size_t>(n * half));
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(p[r]) * f[i];  // in f32, as HF does
        c[r * half + i] = std::cos(angle) * sc;  // HF: cos and sin times the attention factor (exact for 1)
        s[r * half + i] = std::sin(angle) * sc;
      }
    }
    return *this;
  }
};

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scale) {
  // The first 2 x half values of each head rotate (partial rotary: half < D / 2), the rest stay.
  const int64_t N = x.size(0), heads = x.size(1), D = x.size(2), half = inv_freq.size(0);
  thread_local RopeTable table;
  const RopeTable& t = table.get(positions.ptr<int32_t>(), N, inv_freq.ptr<float>(), half, scale);
  float* xp = x.ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    const float* c = t.c.data() + n * half;
    const float* s = t.s.data() + n * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* v = xp + (n * heads + h) * D;
      for (int64_t i = 0; i < half; ++i) {
        float a = v[i], b = v[i + half];
        float ci = c[i], si = s[i];
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

// transformers' gelu_pytorch_tanh, in f32.
inline float gelu_tanh(float g) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  return 0.5f * g * (1.f + std::tanh(kSqrt2OverPi * (g + 0.044715f * g * g * g)));
}

void gelu_tanh_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  const int64_t n = gate.numel();
  const float* g = gate.ptr<float>();
  const float* u = up.ptr<float>();
  float* o = out.ptr<float>();
  constexpr double kPerItem = 30.0;
  parallel_for(
      n, grain_for(kPerItem),
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) o[i] = gelu_tanh(g[i]) * u[i];
      },
      kPerItem * static_cast<double>(n));
}

void softcap(Tensor& x, float cap) {
  const int64_t n = x.numel();
  float* a = x.ptr<float>();
  constexpr double kPerItem = 20.0;
  parallel_for(
      n, grain_for(kPerItem),
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) a[i] = cap * std::tanh(a[i] / cap);
      },
      kPerItem * static_cast<double>(n));
}

void scale(Tensor& x, float s) {
  const int64_t n = x.numel();
  float* a = x.ptr<float>();
  constexpr double kPerItem = 1.0;
  parallel_for(
      n, grain_for(kPerItem),
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) a[i] *= s;
      },
      kPerItem * static_cast<double>(n));
}

void add_inplace(Tensor& x, const Tensor& y) {
  const int64_t n = x.numel();
  float* a = x.ptr<float>();
  const float* b = y.ptr<float>();
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

// q's rotation, then k's (one op for the caller; one kernel on CUDA).
void rope_qk(Tensor& q, Tensor& k, const Tensor& positions, const Tensor& inv_freq, float scale) {
  rope(q, positions, inv_freq, scale);
  rope(k, positions, inv_freq, scale);
}

// The residual add, then the norm: exactly the two ops' arithmetic (one op for the caller, who
// counts launches on CUDA, where it is one kernel).
void add_rmsnorm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out) {
  add_inplace(x, y);
  rmsnorm(x, w, eps, out);
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

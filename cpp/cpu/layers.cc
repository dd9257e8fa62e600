// CPU reference backend for the model layer ops (cpp/core/ops_layers.h). Arguments were
// validated by the dispatcher (cpp/core/ops_layers.cc); these functions only compute.
//
// Batch invariance of matmul: every output element is one call-independent dot product with a
// fixed summation order (8 interleaved f32 partial sums over k, combined in a fixed tree, then the
// tail in order). Row blocking and threading only decide WHO computes an element, never HOW, so
// a row's result is bit-identical whether it is computed alone or inside a batch of any size.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "../core/ops_layers.h"

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

// Runs fn(begin, end) over [0, n) split into contiguous chunks on up to hardware_concurrency
// threads; small jobs (work < ~256k multiply-adds) stay on the calling thread.
template <typename F>
void parallel_for(int64_t n, double work, F&& fn) {
  unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  int64_t threads = std::min<int64_t>(static_cast<int64_t>(std::min(hw, 16u)), n);
  if (work < 262144.0 || threads <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  int64_t chunk = (n + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t) {
    int64_t b = t * chunk, e = std::min(n, b + chunk);
    if (b < e) pool.emplace_back([&fn, b, e] { fn(b, e); });
  }
  fn(int64_t{0}, std::min(n, chunk));
  for (auto& th : pool) th.join();
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

inline float silu(float v) { return v / (1.f + std::exp(-v)); }

}  // namespace

void embedding(const Tensor& table, const Tensor& ids, Tensor& out) {
  const int64_t N = ids.size(0), H = table.size(1);
  const int32_t* id = ids.ptr<int32_t>();
  float* o = out.ptr<float>();
  for (int64_t n = 0; n < N; ++n) to_f32_row(table.dtype(), table.data(), int64_t{id[n]} * H, H, o + n * H);
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
  // Threads split the output columns (rows of w): each weight row is read by one thread only.
  constexpr int64_t kBlockM = 16;
  const int64_t blocks = (M + kBlockM - 1) / kBlockM;
  parallel_for(blocks, static_cast<double>(N) * static_cast<double>(M) * static_cast<double>(K), [&](int64_t b0, int64_t b1) {
    std::vector<float> wbuf(wdt == DType::f32 ? 0 : static_cast<size_t>(kBlockM * K));
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t m0 = blk * kBlockM, m1 = std::min(M, m0 + kBlockM);
      // Weights of the block as f32 (exact conversion), reused by every row of x.
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
  float* o = out.ptr<float>();
  for (int64_t i = 0; i < n; ++i) o[i] = silu(g[i]) * u[i];
}

void add_inplace(Tensor& x, const Tensor& y) {
  const int64_t n = x.numel();
  float* a = x.ptr<float>();
  const float* b = y.ptr<float>();
  for (int64_t i = 0; i < n; ++i) a[i] += b[i];
}

void silu_inplace(Tensor& x) {
  const int64_t n = x.numel();
  float* a = x.ptr<float>();
  for (int64_t i = 0; i < n; ++i) a[i] = silu(a[i]);
}

}  // namespace cpu
}  // namespace specdec

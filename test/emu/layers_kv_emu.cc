// Runs the CUDA model-layer kernels (cuda/layers.cuh: embedding, RMSNorm, the CUDA-core matmul,
// RoPE, SwiGLU, residual add, SiLU) and the paged-KV kernels (cuda/kv.cuh: append, commit of
// accepted tree nodes, page copy) on the host emulation, with the launch shapes of layers.cu and
// kv.cu, and checks them against float64 references (layers) or an independent host model of the
// cache with the CPU's own f32 -> f16/bf16 rounding (kv: exact). The matmul is also checked for
// batch invariance (a row alone == in a batch, bit for bit) and vector == scalar loads.
// Usage: layers_kv_emu SEED [quick]: `quick` (the ThreadSanitizer build) runs one shape of each.
// One line per check; exit status 1 if any failed.
#include "cuda_emu.h"
#include "emu_check.h"
// clang-format off: the stand-ins must come first
#include "../../cuda/kv.cuh"
#include "../../cuda/layers.cuh"

#include <random>
#include <string>

namespace lk = specdec::cuda::layer_kernels;
namespace kk = specdec::cuda::kv_kernels;
using bf16 = __nv_bfloat16;
using emu::from_float;
using emu::report;
using emu::to_float;
using specdec::DType;

namespace {

unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }
bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
unsigned elementwise_grid(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 65535 * 8)); }

template <typename T>
std::vector<T> random_vec(std::mt19937_64& rng, size_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<T> v(n);
  for (auto& e : v) e = from_float<T>(u(rng));
  return v;
}

// ---- layers ---------------------------------------------------------------------------------

// The CUDA-core matmul as layers.cu launches it (misalign_x: x starts one float past a 16-byte boundary).
template <typename W>
std::vector<float> simt_matmul(const std::vector<float>& x, const std::vector<W>& w, const std::vector<float>* bias, int64_t N,
                               int64_t K, int64_t M, bool misalign_x) {
  std::vector<float> xs(x.size() + 4);
  float* xp = xs.data() + (misalign_x ? 1 : 0);
  std::copy(x.begin(), x.end(), xp);
  std::vector<float> out(static_cast<size_t>(N * M), NAN);
  const bool vec_ok = K % lk::kVec == 0 && aligned16(xp) && aligned16(w.data());
  const Dim3 grid{ceil_div(M, lk::kWarpsPerBlock), ceil_div(N, lk::kRows), 1};
  const float* bp = bias ? bias->data() : nullptr;
  emu::launch(grid, lk::kWarpsPerBlock * lk::kWarp, [&] {
    lk::matmul_kernel<W, float>(xp, w.data(), bp, out.data(), N, K, M, vec_ok);
  });
  return out;
}

template <typename W>
void check_matmul(std::mt19937_64& rng, int64_t N, int64_t K, int64_t M) {
  const auto x = random_vec<float>(rng, static_cast<size_t>(N * K));
  const auto w = random_vec<W>(rng, static_cast<size_t>(M * K));
  const auto b = random_vec<float>(rng, static_cast<size_t>(M));
  const auto out = simt_matmul(x, w, &b, N, K, M, false);
  double worst = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) {
      double s = b[m], mag = std::fabs(b[m]);
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(x[n * K + k]) * to_float(w[m * K + k]);
        s += p, mag += std::fabs(p);
      }
      worst = std::max(worst, std::fabs(out[n * M + m] - s) / mag);
    }
  char what[160];
  std::snprintf(what, sizeof what, "CUDA-core matmul %s N=%lld K=%lld M=%lld: max error %.1e of sum|xw|", emu::type_name<W>(),
                static_cast<long long>(N), static_cast<long long>(K), static_cast<long long>(M), worst);
  report(worst < 1e-6, what);
  const auto scalar = simt_matmul(x, w, &b, N, K, M, true);
  report(std::memcmp(out.data(), scalar.data(), out.size() * 4) == 0, std::string(what) + ": vector == scalar loads, bit for bit");
  bool inv = true;
  for (int64_t n : {int64_t(0), N / 2, N - 1}) {
    std::vector<float> row(x.begin() + n * K, x.begin() + (n + 1) * K);
    const auto one = simt_matmul(row, w, &b, 1, K, M, false);
    inv = inv && std::memcmp(one.data(), out.data() + n * M, static_cast<size_t>(M) * 4) == 0;
  }
  report(inv, std::string(what) + ": a row alone == in the batch, bit for bit");
}

template <typename T>
void check_norm_embed(std::mt19937_64& rng, int64_t N, int64_t H) {
  const std::string tag = std::string(emu::type_name<T>()) + " N=" + std::to_string(N) + " H=" + std::to_string(H);
  // RMSNorm, in place (out aliases x) as the runner calls it.
  const auto x = random_vec<float>(rng, static_cast<size_t>(N * H), -3.f, 3.f);
  const auto w = random_vec<T>(rng, static_cast<size_t>(H));
  std::vector<float> y = x;
  const float eps = 1e-5f;
  emu::launch(Dim3{static_cast<unsigned>(N), 1, 1}, 256, [&] { lk::rmsnorm_kernel<T>(y.data(), w.data(), eps, y.data(), H); });
  double worst = 0;
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t h = 0; h < H; ++h) ss += static_cast<double>(x[n * H + h]) * x[n * H + h];
    const double inv = 1.0 / std::sqrt(ss / H + eps);
    for (int64_t h = 0; h < H; ++h) {
      const double want = x[n * H + h] * inv * to_float(w[h]);
      worst = std::max(worst, std::fabs(y[n * H + h] - want) / (std::fabs(want) + 1e-3));
    }
  }
  char buf[80];
  std::snprintf(buf, sizeof buf, ": max relative error %.1e", worst);
  report(worst < 2e-6, "rmsnorm in place " + tag + buf);
  // The residual add and the norm as one kernel == add_kernel then rmsnorm_kernel, bit for bit; into
  // another buffer and in place.
  {
    const auto r = random_vec<float>(rng, static_cast<size_t>(N * H), -3.f, 3.f);
    std::vector<float> xs = x, ys(static_cast<size_t>(N * H), NAN), xf = x, yf(static_cast<size_t>(N * H), NAN), xi = x;
    const int64_t n = N * H;
    emu::launch(Dim3{static_cast<unsigned>((n + 255) / 256), 1, 1}, 256, [&] { lk::add_kernel(xs.data(), r.data(), n); });
    emu::launch(Dim3{static_cast<unsigned>(N), 1, 1}, 256, [&] { lk::rmsnorm_kernel<T>(xs.data(), w.data(), eps, ys.data(), H); });
    emu::launch(Dim3{static_cast<unsigned>(N), 1, 1}, 256, [&] { lk::add_rmsnorm_kernel<T>(xf.data(), r.data(), w.data(), eps, yf.data(), H); });
    emu::launch(Dim3{static_cast<unsigned>(N), 1, 1}, 256, [&] { lk::add_rmsnorm_kernel<T>(xi.data(), r.data(), w.data(), eps, xi.data(), H); });
    const size_t bytes = static_cast<size_t>(n) * 4;
    report(std::memcmp(xs.data(), xf.data(), bytes) == 0 && std::memcmp(ys.data(), yf.data(), bytes) == 0 &&
               std::memcmp(ys.data(), xi.data(), bytes) == 0,
           "add_rmsnorm " + tag + ": == add then rmsnorm bit for bit (x and out; in place)");
  }
  // Embedding: exact gathers, ids anywhere in the table.
  const int64_t V = 97;
  const auto table = random_vec<T>(rng, static_cast<size_t>(V * H));
  std::vector<int32_t> ids(static_cast<size_t>(N));
  for (auto& id : ids) id = static_cast<int32_t>(rng() % V);
  std::vector<float> e(static_cast<size_t>(N * H), NAN);
  emu::launch(Dim3{static_cast<unsigned>(N), 1, 1}, 256, [&] { lk::embedding_kernel<T>(table.data(), ids.data(), e.data(), V, H, 1.f); });
  bool ok = true;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) ok = ok && e[n * H + h] == to_float(table[ids[n] * H + h]);
  report(ok, "embedding " + tag + ": exact rows of the table");
  // Gemma's scaled embedding: each value times the scale, one f32 product.
  const float scale = 33.9411255f;
  emu::launch(Dim3{static_cast<unsigned>(N), 1, 1}, 256, [&] { lk::embedding_kernel<T>(table.data(), ids.data(), e.data(), V, H, scale); });
  ok = true;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) ok = ok && e[n * H + h] == to_float(table[ids[n] * H + h]) * scale;
  report(ok, "embedding " + tag + ", scaled (Gemma): rows times the scale, one f32 product each");
}

// Every f16 bit pattern through the embedding: the output is the table's value bit for bit, NaN
// payloads and signs included (the device's own f16 conversion gives one canonical NaN).
void check_embed_f16_bits() {
  const int64_t V = 4096, H = 16;
  std::vector<__half> table(static_cast<size_t>(V * H));
  for (size_t i = 0; i < table.size(); ++i) table[i] = __half::from_bits(static_cast<uint16_t>(i));
  std::vector<int32_t> ids(static_cast<size_t>(V));
  for (int64_t n = 0; n < V; ++n) ids[n] = static_cast<int32_t>(V - 1 - n);
  std::vector<float> e(static_cast<size_t>(V * H));
  emu::launch(Dim3{static_cast<unsigned>(V), 1, 1}, 256, [&] { lk::embedding_kernel<__half>(table.data(), ids.data(), e.data(), V, H, 1.f); });
  bool ok = true;
  for (int64_t n = 0; n < V; ++n)
    for (int64_t h = 0; h < H; ++h) {
      const uint32_t b = table[ids[n] * H + h].bits, sign = (b & 0x8000u) << 16, exp = (b >> 10) & 0x1fu, man = b & 0x3ffu;
      uint32_t want;
      if (exp == 0x1f) want = sign | 0x7f800000u | (man << 13);  // inf, NaN with its payload
      else want = emu::f32_bits(__half2float(table[ids[n] * H + h]));  // normal, subnormal, zero: exact
      ok = ok && emu::f32_bits(e[n * H + h]) == want;
    }
  report(ok, "embedding f16: all 65536 bit patterns exact (subnormals, inf, NaN payloads)");
}

void check_rope_elementwise(std::mt19937_64& rng) {
  const int64_t N = 7, heads = 3;
  for (int64_t D : {64, 128, 80, 256}) {
    auto x = random_vec<float>(rng, static_cast<size_t>(N * heads * D));
    const auto x0 = x;
    std::vector<int32_t> pos(static_cast<size_t>(N));
    for (auto& p : pos) p = static_cast<int32_t>(rng() % 200000);  // long contexts: range reduction matters
    std::vector<float> inv_freq(static_cast<size_t>(D / 2));
    for (int64_t i = 0; i < D / 2; ++i) inv_freq[i] = static_cast<float>(1.0 / std::pow(500000.0, 2.0 * i / D));
    const int threads = static_cast<int>(std::min<int64_t>(256, ((D / 2 + 31) / 32) * 32));
    emu::launch(Dim3{static_cast<unsigned>(N * heads), 1, 1}, static_cast<unsigned>(threads),
                [&] { lk::rope_kernel(x.data(), pos.data(), inv_freq.data(), heads, D, D / 2, 1.f); });
    double worst = 0;
    for (int64_t r = 0; r < N * heads; ++r) {
      const int64_t n = r / heads;
      for (int64_t i = 0; i < D / 2; ++i) {
        const float angle = static_cast<float>(pos[n]) * inv_freq[i];  // the contract: the angle in f32
        const double c = std::cos(static_cast<double>(angle)), s = std::sin(static_cast<double>(angle));
        const double a = x0[r * D + i], b = x0[r * D + i + D / 2];
        worst = std::max({worst, std::fabs(x[r * D + i] - (a * c - b * s)), std::fabs(x[r * D + i + D / 2] - (b * c + a * s))});
      }
    }
    char buf[100];
    std::snprintf(buf, sizeof buf, "rope D=%lld, positions up to 2e5: max abs error %.1e", static_cast<long long>(D), worst);
    report(worst < 1e-6, buf);
    // q and k in one launch (rope_qk_kernel) == rope_kernel on each, bit for bit (GQA: fewer k heads).
    const int64_t hk = 2;
    auto k = random_vec<float>(rng, static_cast<size_t>(N * hk * D));
    std::vector<float> q2 = x0, k2 = k;
    emu::launch(Dim3{static_cast<unsigned>(N * hk), 1, 1}, static_cast<unsigned>(threads),
                [&] { lk::rope_kernel(k.data(), pos.data(), inv_freq.data(), hk, D, D / 2, 1.f); });
    emu::launch(Dim3{static_cast<unsigned>(N * (heads + hk)), 1, 1}, static_cast<unsigned>(threads),
                [&] { lk::rope_qk_kernel(q2.data(), k2.data(), pos.data(), inv_freq.data(), N, heads, hk, D, D / 2, 1.f); });
    std::snprintf(buf, sizeof buf, "rope_qk D=%lld: q and k in one launch == rope_kernel on each, bit for bit", static_cast<long long>(D));
    report(std::memcmp(q2.data(), x.data(), x.size() * 4) == 0 && std::memcmp(k2.data(), k.data(), k.size() * 4) == 0, buf);
  }
  // A partial rotation (Phi-4-mini: 0.75 of a 128-wide head): the first 2 x 48 values rotate in pairs
  // (i, i + 48), the last 32 pass through untouched; rope_qk_kernel == rope_kernel on each.
  {
    // With LongRoPE's attention factor (cos and sin times 1.19: Phi-4-mini's), the rotated values only.
    const int64_t D = 128, half = 48;
    const float scale = 1.19f;
    auto x = random_vec<float>(rng, static_cast<size_t>(N * heads * D));
    const auto x0 = x;
    std::vector<int32_t> pos(static_cast<size_t>(N));
    for (auto& p : pos) p = static_cast<int32_t>(rng() % 200000);
    std::vector<float> inv_freq(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) inv_freq[i] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / (2 * half)));
    emu::launch(Dim3{static_cast<unsigned>(N * heads), 1, 1}, 64u, [&] { lk::rope_kernel(x.data(), pos.data(), inv_freq.data(), heads, D, half, scale); });
    double worst = 0;
    bool pass_through = true;
    for (int64_t r = 0; r < N * heads; ++r) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(pos[r / heads]) * inv_freq[i];
        const double c = std::cos(static_cast<double>(angle)) * scale, sn = std::sin(static_cast<double>(angle)) * scale;
        const double a = x0[r * D + i], b = x0[r * D + i + half];
        worst = std::max({worst, std::fabs(x[r * D + i] - (a * c - b * sn)), std::fabs(x[r * D + i + half] - (b * c + a * sn))});
      }
      for (int64_t i = 2 * half; i < D; ++i) pass_through = pass_through && emu::f32_bits(x[r * D + i]) == emu::f32_bits(x0[r * D + i]);
    }
    const int64_t hk = 1;
    auto k = random_vec<float>(rng, static_cast<size_t>(N * hk * D));
    std::vector<float> q2 = x0, k2 = k;
    emu::launch(Dim3{static_cast<unsigned>(N * hk), 1, 1}, 64u, [&] { lk::rope_kernel(k.data(), pos.data(), inv_freq.data(), hk, D, half, scale); });
    emu::launch(Dim3{static_cast<unsigned>(N * (heads + hk)), 1, 1}, 64u,
                [&] { lk::rope_qk_kernel(q2.data(), k2.data(), pos.data(), inv_freq.data(), N, heads, hk, D, half, scale); });
    char buf[140];
    std::snprintf(buf, sizeof buf, "rope, partial (96 of 128 rotated), scaled 1.19: max abs error %.1e, the last 32 values untouched, rope_qk == rope on each", worst);
    report(worst < 1e-6 && pass_through && std::memcmp(q2.data(), x.data(), x.size() * 4) == 0 && std::memcmp(k2.data(), k.data(), k.size() * 4) == 0, buf);
  }
  const int64_t n = 3000;
  const auto g = random_vec<float>(rng, n, -8.f, 8.f), u = random_vec<float>(rng, n);
  std::vector<float> o(n, NAN), a = g, s = g;
  emu::launch(Dim3{elementwise_grid(n), 1, 1}, 256, [&] { lk::silu_mul_kernel(g.data(), u.data(), o.data(), n); });
  emu::launch(Dim3{elementwise_grid(n), 1, 1}, 256, [&] { lk::add_kernel(a.data(), u.data(), n); });
  emu::launch(Dim3{elementwise_grid(n), 1, 1}, 256, [&] { lk::silu_kernel(s.data(), n); });
  double worst = 0;
  bool add_ok = true;
  for (int64_t i = 0; i < n; ++i) {
    const double si = g[i] / (1.0 + std::exp(-static_cast<double>(g[i])));
    worst = std::max({worst, std::fabs(o[i] - si * u[i]) / (std::fabs(si * u[i]) + 1e-6), std::fabs(s[i] - si) / (std::fabs(si) + 1e-6)});
    add_ok = add_ok && a[i] == g[i] + u[i];
  }
  char buf[100];
  std::snprintf(buf, sizeof buf, "silu_mul, silu: max relative error %.1e; add exact", worst);
  report(worst < 1e-6 && add_ok, buf);
  // GeGLU (Gemma): gelu_pytorch_tanh(g) * u against float64. Where tanh nears -1, 1 + tanh cancels (as
  // in torch's f32 kernel): an error up to ~ulp(1) |g u| there, so that term joins the bound.
  std::vector<float> gl(n, NAN);
  emu::launch(Dim3{elementwise_grid(n), 1, 1}, 256, [&] { lk::gelu_tanh_mul_kernel(g.data(), u.data(), gl.data(), n); });
  double gworst = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = g[i], want = 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))) * u[i];
    gworst = std::max(gworst, std::fabs(gl[i] - want) / (2e-6 * std::fabs(want) + 2e-7 * std::fabs(x * u[i]) + 1e-30));
  }
  std::snprintf(buf, sizeof buf, "gelu_tanh_mul: max error %.2f of the bound 2e-6 |want| + 2e-7 |g u|", gworst);
  report(gworst <= 1, buf);
  // Gemma 2's logit soft-capping: cap tanh(x / cap), in place, against float64.
  std::vector<float> sc(g.begin(), g.end());
  emu::launch(Dim3{elementwise_grid(n), 1, 1}, 256, [&] { lk::softcap_kernel(sc.data(), 3.f, n); });
  double cworst = 0;
  for (int64_t i = 0; i < n; ++i) cworst = std::max(cworst, std::fabs(sc[i] - 3.0 * std::tanh(g[i] / 3.0)));
  std::snprintf(buf, sizeof buf, "softcap (cap 3): max abs error %.1e", cworst);
  report(cworst < 1e-6, buf);
  // Granite's multipliers: x * s in place, the f32 product exactly (one rounding of the exact product).
  std::vector<float> sx(g.begin(), g.end());
  emu::launch(Dim3{elementwise_grid(n), 1, 1}, 256, [&] { lk::scale_kernel(sx.data(), 0.22f, n); });
  int64_t sbad = 0;
  for (int64_t i = 0; i < n; ++i) sbad += sx[i] != static_cast<float>(static_cast<double>(g[i]) * 0.22f);
  std::snprintf(buf, sizeof buf, "scale (0.22): %lld of %lld values differ from the rounded exact product", static_cast<long long>(sbad), static_cast<long long>(n));
  report(sbad == 0, buf);
}

// gather_last_accepted: the row of each sequence's last accepted node; counts or nodes verification
// never makes (0, past the sequence, a node outside it) give a zero row, never an out-of-bounds read.
void check_gather_last_accepted(std::mt19937_64& rng) {
  const int64_t H = 70;
  const std::vector<int32_t> indptr = {0, 5, 6, 10, 13, 16, 20};
  const int64_t B = 6, N = 20;
  std::vector<int32_t> nodes(N, 0), count(B, 0);
  std::vector<int64_t> want(B, -1);
  // b=0: path 0,2,4 (3 accepted); b=1: root only; b=2: 0,1; b=3: count 0; b=4: count 4 > 3 nodes;
  // b=5: last node 7, outside its 4 nodes.
  nodes[0] = 0, nodes[1] = 2, nodes[2] = 4, count[0] = 3, want[0] = 0 + 4;
  nodes[5] = 0, count[1] = 1, want[1] = 5;
  nodes[6] = 0, nodes[7] = 1, count[2] = 2, want[2] = 6 + 1;
  count[3] = 0;
  count[4] = 4;
  nodes[16] = 0, nodes[17] = 7, count[5] = 2;
  const auto x = random_vec<float>(rng, N * H);
  std::vector<float> out(B * H, NAN);
  emu::launch(Dim3{static_cast<unsigned>(B), 1, 1}, 256, [&] {
    lk::gather_last_accepted_kernel(x.data(), indptr.data(), nodes.data(), count.data(), out.data(), H);
  });
  bool ok = true;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) ok = ok && out[b * H + h] == (want[b] < 0 ? 0.f : x[want[b] * H + h]);
  report(ok, "gather_last_accepted: last accepted rows exact; invalid counts/nodes give zero rows");
}

// ---- paged KV -------------------------------------------------------------------------------------

// The CPU's rounding (cpp/core/dtype.h) as the independent reference for stores into the cache.
template <typename T> uint16_t ref_bits(float f);
template <> uint16_t ref_bits<bf16>(float f) { return specdec::f32_to_bf16(f); }
template <> uint16_t ref_bits<__half>(float f) { return specdec::f32_to_f16(f); }
template <typename T> bool same_value(T a, float want) {
  uint16_t bits;
  std::memcpy(&bits, &a, 2);
  return bits == ref_bits<T>(want);
}
template <> bool same_value<float>(float a, float want) { return std::memcmp(&a, &want, 4) == 0; }
template <typename T> DType dtype_of();
template <> DType dtype_of<float>() { return DType::f32; }
template <> DType dtype_of<__half>() { return DType::f16; }
template <> DType dtype_of<bf16>() { return DType::bf16; }

// B sequences with prefixes and new tokens over a scattered page pool: append new K/V (of dtype IT)
// into a cache of dtype KVT, then commit a random accepted path per sequence over L layers, then
// copy pages; each step checked element for element against a host model of the cache.
template <typename KVT, typename IT>
void check_kv(std::mt19937_64& rng) {
  const int page_size = 4, Hkv = 2, D = 8, row = Hkv * D, L = 3;
  const std::vector<std::pair<int, int>> seqs = {{5, 7}, {0, 3}, {9, 1}};  // prefix, new tokens
  const int B = static_cast<int>(seqs.size());
  std::vector<int32_t> qo{0}, pind{0}, pages, prefix;
  int used = 0;
  for (auto [p, q] : seqs) {
    qo.push_back(qo.back() + q);
    const int np = (p + q + page_size - 1) / page_size;
    pind.push_back(pind.back() + np);
    prefix.push_back(p);
    used += np;
  }
  const int pool = used + 4;
  std::vector<int32_t> perm(static_cast<size_t>(pool));
  for (int i = 0; i < pool; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  pages.assign(perm.begin(), perm.begin() + used);
  const size_t layer_elems = static_cast<size_t>(pool) * 2 * page_size * row;
  std::vector<std::vector<KVT>> layers(L);
  for (auto& l : layers) l = random_vec<KVT>(rng, layer_elems);
  const int N = qo.back();
  const auto k = random_vec<IT>(rng, static_cast<size_t>(N) * row, -4.f, 4.f);
  const auto v = random_vec<IT>(rng, static_cast<size_t>(N) * row, -4.f, 4.f);
  auto slot_at = [&](int b, int slot, int kv, int e) {
    return (static_cast<size_t>(pages[pind[b] + slot / page_size]) * 2 * page_size + kv * page_size + slot % page_size) * row + e;
  };
  const std::string tag = std::string("cache ") + emu::type_name<KVT>() + " <- " + emu::type_name<IT>();

  // Append into layer 0.
  auto before = layers[0];
  emu::launch(Dim3{static_cast<unsigned>(N), 1, 1}, kk::kThreads, [&] {
    kk::kv_append_kernel<KVT>(layers[0].data(), k.data(), static_cast<int>(dtype_of<IT>()), v.data(),
                              static_cast<int>(dtype_of<IT>()), qo.data(), pind.data(), pages.data(), prefix.data(), B, page_size, row);
  });
  bool ok = true;
  std::vector<char> touched(layer_elems, 0);
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < seqs[b].second; ++j)
      for (int e = 0; e < row; ++e) {
        const int n = qo[b] + j, slot = prefix[b] + j;
        ok = ok && same_value(layers[0][slot_at(b, slot, 0, e)], to_float(k[n * row + e])) &&
             same_value(layers[0][slot_at(b, slot, 1, e)], to_float(v[n * row + e]));
        touched[slot_at(b, slot, 0, e)] = touched[slot_at(b, slot, 1, e)] = 1;
      }
  for (size_t i = 0; i < layer_elems; ++i)
    if (!touched[i]) ok = ok && std::memcmp(&layers[0][i], &before[i], sizeof(KVT)) == 0;
  report(ok, "kv append " + tag + ": new tokens at their slots (rounded as the CPU rounds), nothing else written");

  // A layer's rotations and its append in one launch (rope_qk_append_kernel) == rope_qk_kernel then
  // kv_append_kernel: q, k and the whole layer bit for bit (k is f32: the rotation writes it).
  if constexpr (std::is_same_v<IT, float>) {
    const int hq = 2 * Hkv;
    const auto q0 = random_vec<float>(rng, static_cast<size_t>(N) * hq * D, -4.f, 4.f);
    std::vector<int32_t> pos(static_cast<size_t>(N));
    for (auto& p : pos) p = static_cast<int32_t>(rng() % 200000);
    std::vector<float> inv_freq(D / 2);
    for (int i = 0; i < D / 2; ++i) inv_freq[i] = static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / D));
    std::vector<float> qr = q0, kr = k, qf = q0, kf = k;
    auto lr = before, lf = before;
    emu::launch(Dim3{static_cast<unsigned>(N * (hq + Hkv)), 1, 1}, 32,
                [&] { lk::rope_qk_kernel(qr.data(), kr.data(), pos.data(), inv_freq.data(), N, hq, Hkv, D, D / 2, 1.f); });
    emu::launch(Dim3{static_cast<unsigned>(N), 1, 1}, kk::kThreads, [&] {
      kk::kv_append_kernel<KVT>(lr.data(), kr.data(), static_cast<int>(DType::f32), v.data(), static_cast<int>(DType::f32),
                                qo.data(), pind.data(), pages.data(), prefix.data(), B, page_size, row);
    });
    emu::launch(Dim3{static_cast<unsigned>(N * (hq + 1)), 1, 1}, 32, [&] {
      lk::rope_qk_append_kernel<KVT>(qf.data(), kf.data(), v.data(), static_cast<int>(DType::f32), pos.data(), inv_freq.data(),
                                     nullptr, nullptr, 0.f, N, hq, Hkv, D, D / 2, 1.f, lf.data(), qo.data(), pind.data(), pages.data(),
                                     prefix.data(), B, page_size);
    });
    report(std::memcmp(qf.data(), qr.data(), qf.size() * 4) == 0 && std::memcmp(kf.data(), kr.data(), kf.size() * 4) == 0 && std::memcmp(lf.data(), lr.data(), lf.size() * sizeof(KVT)) == 0,
           "rope_qk_append " + tag + ": q, k and the layer == rope_qk then kv_append, bit for bit");

    // With Qwen3's per-head norms: == rmsnorm_kernel over each head's row (at the fused kernel's
    // block size) then the kernels above, bit for bit; and the norm itself within float64's bound.
    // Here the rotation is also partial (ph pairs of D / 2; the fused kernel's k loop strides by D).
    const int64_t ph = D / 2 - 1;
    const auto qw = random_vec<float>(rng, static_cast<size_t>(D), 0.25f, 2.f), kw = random_vec<float>(rng, static_cast<size_t>(D), 0.25f, 2.f);
    const float eps = 1e-6f;
    std::vector<float> qn = q0, kn = k, qg = q0, kg = k;
    auto ln = before, lg = before;
    emu::launch(Dim3{static_cast<unsigned>(N * hq), 1, 1}, 32, [&] { lk::rmsnorm_kernel<float>(qn.data(), qw.data(), eps, qn.data(), D); });
    emu::launch(Dim3{static_cast<unsigned>(N * Hkv), 1, 1}, 32, [&] { lk::rmsnorm_kernel<float>(kn.data(), kw.data(), eps, kn.data(), D); });
    double worst = 0;
    for (int64_t r = 0; r < N * hq; ++r) {
      double ss = 0;
      for (int i = 0; i < D; ++i) ss += static_cast<double>(q0[r * D + i]) * q0[r * D + i];
      const double inv = 1.0 / std::sqrt(ss / D + eps);
      for (int i = 0; i < D; ++i) {
        const double want = q0[r * D + i] * inv * qw[i];
        worst = std::max(worst, std::fabs(qn[r * D + i] - want) / (std::fabs(want) + 1e-3));
      }
    }
    emu::launch(Dim3{static_cast<unsigned>(N * (hq + Hkv)), 1, 1}, 32,
                [&] { lk::rope_qk_kernel(qn.data(), kn.data(), pos.data(), inv_freq.data(), N, hq, Hkv, D, ph, 1.19f); });
    emu::launch(Dim3{static_cast<unsigned>(N), 1, 1}, kk::kThreads, [&] {
      kk::kv_append_kernel<KVT>(ln.data(), kn.data(), static_cast<int>(DType::f32), v.data(), static_cast<int>(DType::f32),
                                qo.data(), pind.data(), pages.data(), prefix.data(), B, page_size, row);
    });
    emu::launch(Dim3{static_cast<unsigned>(N * (hq + 1)), 1, 1}, 32, [&] {
      lk::rope_qk_append_kernel<KVT>(qg.data(), kg.data(), v.data(), static_cast<int>(DType::f32), pos.data(), inv_freq.data(),
                                     qw.data(), kw.data(), eps, N, hq, Hkv, D, ph, 1.19f, lg.data(), qo.data(), pind.data(), pages.data(),
                                     prefix.data(), B, page_size);
    });
    char buf[96];
    std::snprintf(buf, sizeof buf, " (the q norm's max relative error vs float64 %.1e)", worst);
    report(worst < 2e-6 && std::memcmp(qg.data(), qn.data(), qg.size() * 4) == 0 && std::memcmp(kg.data(), kn.data(), kg.size() * 4) == 0 &&
               std::memcmp(lg.data(), ln.data(), lg.size() * sizeof(KVT)) == 0 && std::memcmp(qg.data(), qf.data(), qg.size() * 4) != 0,
           "rope_qk_append " + tag + " with q/k norms, rotation partial and scaled: == rmsnorm per head, rope_qk, kv_append, bit for bit" + buf);
  }

  // Commit: per sequence an accepted path = node 0 then strictly increasing nodes (a tree path).
  std::vector<int32_t> acc_ptr{0}, acc;
  for (int b = 0; b < B; ++b) {
    acc.push_back(0);
    for (int j = 1; j < seqs[b].second; ++j)
      if (rng() % 2) acc.push_back(j);
    acc_ptr.push_back(static_cast<int32_t>(acc.size()));
  }
  const auto snapshot = layers;
  std::vector<KVT*> table;
  for (auto& l : layers) table.push_back(l.data());
  using E = std::conditional_t<sizeof(KVT) == 4, uint32_t, uint16_t>;  // kv.cu moves raw words
  std::vector<E*> etable;
  for (auto* p : table) etable.push_back(reinterpret_cast<E*>(p));
  emu::launch(Dim3{static_cast<unsigned>(B), static_cast<unsigned>(L), 1}, kk::kThreads, [&] {
    kk::kv_commit_kernel<E>(kk::LayerBases<E>{etable.data(), nullptr, 0}, pind.data(), pages.data(), prefix.data(), acc_ptr.data(), acc.data(), nullptr,
                            page_size, row);
  });
  ok = true;
  for (int l = 0; l < L; ++l) {
    auto want = snapshot[l];
    for (int b = 0; b < B; ++b)
      for (int j = 0; j < acc_ptr[b + 1] - acc_ptr[b]; ++j)
        for (int kv = 0; kv < 2; ++kv)
          for (int e = 0; e < row; ++e)
            want[slot_at(b, prefix[b] + j, kv, e)] = snapshot[l][slot_at(b, prefix[b] + acc[acc_ptr[b] + j], kv, e)];
    ok = ok && std::memcmp(want.data(), layers[l].data(), layer_elems * sizeof(KVT)) == 0;
  }
  report(ok, "kv commit " + tag + ": accepted nodes compacted to prefix + j in every layer, in place");

  // The same paths as a verification leaves them (LlamaModel::commit with VerifiedPaths): sequence
  // b's nodes at qo[b] (the verified trees are the batch's new tokens), acc_count[b] of them, stale
  // entries after them. The cache must come out the same.
  const auto compacted = layers;
  for (int l = 0; l < L; ++l) std::copy(snapshot[l].begin(), snapshot[l].end(), layers[l].begin());  // in place: etable stays valid
  std::vector<int32_t> ragged(static_cast<size_t>(N)), count(static_cast<size_t>(B));
  for (auto& x : ragged) x = static_cast<int32_t>(rng() % 1000);
  for (int b = 0; b < B; ++b) {
    count[b] = acc_ptr[b + 1] - acc_ptr[b];
    for (int j = 0; j < count[b]; ++j) ragged[qo[b] + j] = acc[acc_ptr[b] + j];
  }
  emu::launch(Dim3{static_cast<unsigned>(B), static_cast<unsigned>(L), 1}, kk::kThreads, [&] {
    kk::kv_commit_kernel<E>(kk::LayerBases<E>{etable.data(), nullptr, 0}, pind.data(), pages.data(), prefix.data(), qo.data(), ragged.data(), count.data(),
                            page_size, row);
  });
  ok = true;
  for (int l = 0; l < L; ++l) ok = ok && std::memcmp(compacted[l].data(), layers[l].data(), layer_elems * sizeof(KVT)) == 0;
  report(ok, "kv commit " + tag + ": from a verification's ragged result (offsets + counts), the same cache");

  // The same commit with the layers as one allocation, addressed by base + stride (no device table:
  // how kv.cu sees a KV cache's layers).
  {
    std::vector<KVT> whole(static_cast<size_t>(L) * layer_elems);
    for (int l = 0; l < L; ++l) std::copy(snapshot[l].begin(), snapshot[l].end(), whole.begin() + static_cast<ptrdiff_t>(l) * layer_elems);
    const kk::LayerBases<E> strided{nullptr, reinterpret_cast<unsigned char*>(whole.data()), layer_elems * sizeof(KVT)};
    emu::launch(Dim3{static_cast<unsigned>(B), static_cast<unsigned>(L), 1}, kk::kThreads, [&] {
      kk::kv_commit_kernel<E>(strided, pind.data(), pages.data(), prefix.data(), qo.data(), ragged.data(), count.data(), page_size, row);
    });
    ok = true;
    for (int l = 0; l < L; ++l)
      ok = ok && std::memcmp(compacted[l].data(), whole.data() + static_cast<size_t>(l) * layer_elems, layer_elems * sizeof(KVT)) == 0;
    report(ok, "kv commit " + tag + ": layers as one allocation (base + stride, no table), the same cache");
  }

  // Copy pages (copy-on-write after fork), in the widest word kv.cu would pick here.
  const std::vector<int32_t> src = {pages[0], pages[2]}, dst = {perm[used], perm[used + 1]};
  const auto snap2 = layers;
  const size_t page_bytes = layer_elems * sizeof(KVT) / pool;
  auto go = [&](auto tag_word) {
    using Wd = decltype(tag_word);
    std::vector<Wd*> wt;
    for (auto* p : table) wt.push_back(reinterpret_cast<Wd*>(p));
    emu::launch(Dim3{2, static_cast<unsigned>(L), 1}, kk::kThreads,
                [&] { kk::kv_copy_pages_kernel<Wd>(kk::LayerBases<Wd>{wt.data(), nullptr, 0}, src.data(), dst.data(), page_bytes / sizeof(Wd)); });
  };
  if (page_bytes % 16 == 0) go(uint4{});
  else go(uint32_t{});
  ok = true;
  const size_t page_elems = layer_elems / pool;
  for (int l = 0; l < L; ++l) {
    auto want = snap2[l];
    for (size_t i = 0; i < src.size(); ++i)
      std::copy(snap2[l].begin() + src[i] * page_elems, snap2[l].begin() + (src[i] + 1) * page_elems, want.begin() + dst[i] * page_elems);
    ok = ok && std::memcmp(want.data(), layers[l].data(), layer_elems * sizeof(KVT)) == 0;
  }
  report(ok, "kv copy pages " + tag + ": whole pages copied in every layer, nothing else written");
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  const bool quick = argc > 2 && std::string(argv[2]) == "quick";
  std::mt19937_64 rng(seed);
  if (quick) {
    check_matmul<bf16>(rng, 9, 256, 45);
    check_norm_embed<float>(rng, 3, 300);
    check_rope_elementwise(rng);
    check_gather_last_accepted(rng);
    check_kv<bf16, float>(rng);
    return emu::summary(seed);
  }
  for (auto [N, K, M] : {std::tuple<int64_t, int64_t, int64_t>{1, 67, 33}, {17, 200, 45}, {9, 256, 70}, {3, 515, 301}}) {
    check_matmul<float>(rng, N, K, M);
    check_matmul<bf16>(rng, N, K, M);
    check_matmul<__half>(rng, N, K, M);
  }
  check_norm_embed<float>(rng, 5, 64);
  check_norm_embed<bf16>(rng, 3, 1000);
  check_norm_embed<__half>(rng, 2, 4099);
  check_embed_f16_bits();
  check_rope_elementwise(rng);
  check_gather_last_accepted(rng);
  check_kv<float, float>(rng);
  check_kv<bf16, float>(rng);
  check_kv<__half, float>(rng);
  check_kv<__half, bf16>(rng);
  check_kv<bf16, __half>(rng);
  return emu::summary(seed);
}

// Runs the tensor-core matmul kernels (cuda/gemm_tc.cuh, cuda/gemm_tc_stream.cuh) on the host emulation
// (cuda_emu.h) and checks
//   - values against a float64 reference (random inputs, every weight dtype, ragged M, N and K),
//   - exactness of the f32 activation split (one-hot weights: each output is a single product),
//   - batch invariance (rows alone, in small and large batches, at both tile heights NT = 1 and 2),
//   - that vector and scalar load paths give identical bits, and nothing is written outside `out`,
//   - the streaming kernel (any row count: 1, 2 or 4 row tiles a warp, two weight tiles a block past 64
//     rows; up to 3 weights in one launch; 2-6 cp.async stages) gives
//     matmul_tc_kernel's bits for every part, and when it applies.
// Built with AddressSanitizer by test/gemm_tc_emu.test.ts, so an out-of-bounds read also fails.
// Usage: gemm_tc_emu SEED. Prints one line per check; exit status 1 if any failed.
#include "cuda_emu.h"
#include "emu_check.h"
// clang-format off: the stand-ins must come first
#include "../../cuda/gemm_tc.cuh"
#include "../../cuda/gemm_tc_stream.cuh"

#include <cinttypes>
#include <random>
#include <string>

namespace tc = specdec::cuda::gemm_tc;
using bf16 = __nv_bfloat16;

namespace {

using emu::from_float;
using emu::report;
using emu::to_float;



constexpr int kGuard = 64;
const float kPoison = -1234.5f;

// Runs the kernel for x [N, K] f32, w [M, K], optional f32 bias; returns out [N, M].
template <typename W, int NT>
std::vector<float> run(const std::vector<float>& x, const std::vector<W>& w, const std::vector<float>* bias, int64_t N,
                       int64_t K, int64_t M, bool misalign_x, bool misalign_w, bool* guard_ok) {
  // Copies at the requested alignment; sized exactly so reads past the end are caught by ASan.
  std::vector<float> xs(x.size() + (misalign_x ? 1 : 0));
  std::memcpy(xs.data() + (misalign_x ? 1 : 0), x.data(), x.size() * sizeof(float));
  std::vector<W> ws(w.size() + (misalign_w ? 1 : 0));
  std::memcpy(static_cast<void*>(ws.data() + (misalign_w ? 1 : 0)), w.data(), w.size() * sizeof(W));
  const float* xp = xs.data() + (misalign_x ? 1 : 0);
  const W* wp = ws.data() + (misalign_w ? 1 : 0);
  std::vector<float> out(static_cast<size_t>(N * M) + 2 * kGuard, kPoison);
  float* op = out.data() + kGuard;
  auto aligned16 = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  const bool vec_w = K % 8 == 0 && aligned16(wp);
  const bool vec_x = K % 4 == 0 && aligned16(xp);
  const Dim3 grid{static_cast<unsigned>((M + tc::kTileM - 1) / tc::kTileM), static_cast<unsigned>((N + 16 * NT - 1) / (16 * NT)), 1};
  const float* bp = bias ? bias->data() : nullptr;
  emu::launch(grid, tc::kThreads, [&] {
    tc::matmul_tc_kernel<W, float, NT>(xp, wp, bp, op, N, K, M, vec_w, vec_x);
  });
  bool ok = true;
  for (int i = 0; i < kGuard; ++i)
    ok = ok && out[static_cast<size_t>(i)] == kPoison && out[out.size() - 1 - static_cast<size_t>(i)] == kPoison;
  for (int64_t i = 0; i < N * M; ++i) ok = ok && op[i] != kPoison;  // every output written
  *guard_ok = ok;
  return std::vector<float>(op, op + N * M);
}

bool bits_equal(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

template <typename W>
W random_weight(std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  return W(u(rng));
}

template <typename W>
void check_values(std::mt19937_64& rng, int64_t N, int64_t K, int64_t M, bool with_bias) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(static_cast<size_t>(N * K)), b(static_cast<size_t>(M));
  std::vector<W> w(static_cast<size_t>(M * K));
  for (auto& v : x) v = u(rng);
  for (auto& v : w) v = random_weight<W>(rng);
  for (auto& v : b) v = u(rng);
  bool guard1 = false, guard2 = false;
  const auto out = run<W, 1>(x, w, with_bias ? &b : nullptr, N, K, M, false, false, &guard1);
  const auto out2 = run<W, 2>(x, w, with_bias ? &b : nullptr, N, K, M, false, false, &guard2);
  double worst = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) {
      double s = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(x[n * K + k]) * to_float(w[m * K + k]);
        s += p;
        mag += std::fabs(p);
      }
      if (with_bias) { s += b[m]; mag += std::fabs(b[m]); }
      // f32 accumulation: well within 1e-6 of sum |x w| at these K; a lost activation piece is
      // >= 2^-9 of a term and a lost term ~1/K of the sum.
      worst = std::max(worst, std::fabs(out[n * M + m] - s) / (mag + 1e-30));
    }
  char what[200];
  std::snprintf(what, sizeof what, "%s N=%" PRId64 " K=%" PRId64 " M=%" PRId64 "%s: max error %.2e of sum|xw|", emu::type_name<W>(), N, K, M,
                with_bias ? " +bias" : "", worst);
  report(worst < 1e-6, what);
  report(guard1 && guard2, std::string(what) + ": writes exactly out");
  report(bits_equal(out.data(), out2.data(), out.size()), std::string(what) + ": NT=1 and NT=2 bit-identical");
}

// One-hot weights: out[n, m] = x[n, perm[m]] * c[m], a single product, so the split of x must be
// complete to f32 precision (dropping the third piece would show at 2^-18).
template <typename W>
void check_split_exactness(std::mt19937_64& rng) {
  const int64_t N = 20, K = 80, M = 48;
  std::uniform_real_distribution<float> mant(1.f, 2.f);
  std::uniform_int_distribution<int> expo(-20, 20);
  std::vector<float> x(static_cast<size_t>(N * K));
  for (auto& v : x) v = std::ldexp(mant(rng), expo(rng)) * (rng() & 1 ? 1.f : -1.f);
  std::vector<W> w(static_cast<size_t>(M * K), W(0.f));
  std::vector<int64_t> perm(static_cast<size_t>(M));
  for (int64_t m = 0; m < M; ++m) {
    perm[m] = static_cast<int64_t>(rng() % static_cast<uint64_t>(K));
    // A weight with every significant bit of its type set somewhere.
    w[m * K + perm[m]] = W(std::ldexp(mant(rng), expo(rng) / 4));
  }
  bool guard = false;
  const auto out = run<W, 2>(x, w, nullptr, N, K, M, false, false, &guard);
  double worst = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) {
      const double exact = static_cast<double>(x[n * K + perm[m]]) * to_float(w[m * K + perm[m]]);
      worst = std::max(worst, std::fabs(out[n * M + m] - exact) / std::fabs(exact));
    }
  char what[160];
  std::snprintf(what, sizeof what, "%s one-hot weights: max relative error %.2e (f32 rounding is 6.0e-08)", emu::type_name<W>(), worst);
  report(worst <= std::ldexp(1.0, -23), what);
}

template <typename W>
void check_batch_invariance(std::mt19937_64& rng) {
  const int64_t N = 40, K = 301, M = 70;
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(static_cast<size_t>(N * K)), b(static_cast<size_t>(M));
  std::vector<W> w(static_cast<size_t>(M * K));
  for (auto& v : x) v = u(rng);
  for (auto& v : w) v = random_weight<W>(rng);
  for (auto& v : b) v = u(rng);
  bool guard = false;
  const auto all = run<W, 2>(x, w, &b, N, K, M, false, false, &guard);
  bool ok = guard;
  for (int64_t n : {0, 1, 15, 16, 17, 33, 39}) {
    std::vector<float> row(x.begin() + n * K, x.begin() + (n + 1) * K);
    const auto one = run<W, 1>(row, w, &b, 1, K, M, false, false, &guard);
    ok = ok && guard && bits_equal(one.data(), all.data() + n * M, static_cast<size_t>(M));
    const int64_t lo = std::max<int64_t>(0, n - 5);
    std::vector<float> some(x.begin() + lo * K, x.begin() + (n + 1) * K);
    const auto few = run<W, 1>(some, w, &b, n + 1 - lo, K, M, false, false, &guard);
    ok = ok && guard && bits_equal(few.data() + (n - lo) * M, all.data() + n * M, static_cast<size_t>(M));
  }
  report(ok, std::string(emu::type_name<W>()) + " batch invariance: rows of N=40 (NT=2) equal N=1 and N<=6 (NT=1) bit for bit");
}

// Same values through the vector loads (aligned, K % 8 == 0) and the scalar ones (misaligned).
template <typename W>
void check_load_paths(std::mt19937_64& rng) {
  const int64_t N = 9, K = 264, M = 37;
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(static_cast<size_t>(N * K));
  std::vector<W> w(static_cast<size_t>(M * K));
  for (auto& v : x) v = u(rng);
  for (auto& v : w) v = random_weight<W>(rng);
  bool g1 = false, g2 = false, g3 = false;
  const auto vec = run<W, 1>(x, w, nullptr, N, K, M, false, false, &g1);
  const auto sx = run<W, 1>(x, w, nullptr, N, K, M, true, false, &g2);
  const auto sw = run<W, 1>(x, w, nullptr, N, K, M, false, true, &g3);
  report(g1 && g2 && g3 && bits_equal(vec.data(), sx.data(), vec.size()) && bits_equal(vec.data(), sw.data(), vec.size()),
         std::string(emu::type_name<W>()) + " vector and scalar loads give identical bits");
}

// The streaming kernel over parts (w_i [M_i, K], optional bias_i) sharing x [N, K], `stages` slices.
// Each part's out has guards on both sides; returns the outs.
template <typename W>
std::vector<std::vector<float>> run_stream(const std::vector<float>& x, const std::vector<std::vector<W>>& ws,
                                          const std::vector<const std::vector<float>*>& biases, int64_t N, int64_t K,
                                          int stages, bool* guard_ok) {
  const size_t parts = ws.size();
  std::vector<std::vector<float>> outs(parts);
  const tc::StreamShape sh(N);
  tc::StreamParams<W, float> p{};
  p.x = x.data();
  p.N = N;
  p.K = K;
  p.stages = stages;
  int64_t tiles = 0;
  for (size_t i = 0; i < parts; ++i) {
    const int64_t M = static_cast<int64_t>(ws[i].size()) / K;
    outs[i].assign(static_cast<size_t>(N * M) + 2 * kGuard, kPoison);
    auto& q = p.part[p.parts++];
    q.w = ws[i].data();
    q.bias = biases[i] ? biases[i]->data() : nullptr;
    q.out = outs[i].data() + kGuard;
    q.M = M;
    q.tile0 = tiles;
    tiles += (M + tc::kTileM * sh.mt - 1) / (tc::kTileM * sh.mt);
  }
  const unsigned groups = static_cast<unsigned>((N + tc::kStreamMaxRows - 1) / tc::kStreamMaxRows);
  emu::launch(Dim3{static_cast<unsigned>(tiles), groups, 1}, tc::kThreads, static_cast<size_t>(tc::stream_smem_bytes<W>(N, stages)), [&] {
    if (sh.mt == 2) tc::matmul_tc_stream_kernel<W, float, 4, 2>(p);
    else if (sh.nt == 1) tc::matmul_tc_stream_kernel<W, float, 1, 1>(p);
    else if (sh.nt == 2) tc::matmul_tc_stream_kernel<W, float, 2, 1>(p);
    else tc::matmul_tc_stream_kernel<W, float, 4, 1>(p);
  });
  bool ok = true;
  std::vector<std::vector<float>> res(parts);
  for (size_t i = 0; i < parts; ++i) {
    const auto& o = outs[i];
    for (int g = 0; g < kGuard; ++g) ok = ok && o[static_cast<size_t>(g)] == kPoison && o[o.size() - 1 - static_cast<size_t>(g)] == kPoison;
    res[i].assign(o.begin() + kGuard, o.end() - kGuard);
    for (float v : res[i]) ok = ok && v != kPoison;
  }
  *guard_ok = ok;
  return res;
}

// Up to three parts through the streaming kernel == each part alone through matmul_tc_kernel (NT = 1),
// bit for bit, at several stage counts.
template <typename W>
void check_stream(std::mt19937_64& rng, int64_t N, int64_t K, std::vector<int64_t> Ms, std::vector<bool> with_bias,
                  std::vector<int> stage_counts) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(static_cast<size_t>(N * K));
  for (auto& v : x) v = u(rng);
  std::vector<std::vector<W>> ws;
  std::vector<std::vector<float>> bs;
  for (int64_t M : Ms) {
    ws.emplace_back(static_cast<size_t>(M * K));
    for (auto& v : ws.back()) v = random_weight<W>(rng);
    bs.emplace_back(static_cast<size_t>(M));
    for (auto& v : bs.back()) v = u(rng);
  }
  std::vector<const std::vector<float>*> biases;
  std::vector<std::vector<float>> want;
  bool ok = true, guard = false;
  for (size_t i = 0; i < Ms.size(); ++i) {
    biases.push_back(with_bias[i] ? &bs[i] : nullptr);
    want.push_back(run<W, 1>(x, ws[i], biases.back(), N, K, Ms[i], false, false, &guard));
    ok = ok && guard;
  }
  std::string what = std::string(emu::type_name<W>()) + " streaming N=" + std::to_string(N) + " K=" + std::to_string(K) + " M=";
  for (size_t i = 0; i < Ms.size(); ++i) what += (i ? "+" : "") + std::to_string(Ms[i]) + (with_bias[i] ? "(bias)" : "");
  what += " stages";
  for (int st : stage_counts) {
    const auto got = run_stream<W>(x, ws, biases, N, K, st, &guard);
    ok = ok && guard;
    for (size_t i = 0; i < Ms.size(); ++i) ok = ok && bits_equal(got[i].data(), want[i].data(), want[i].size());
    what += " " + std::to_string(st);
  }
  report(ok, what + ": == matmul_tc_kernel bit for bit, writes exactly out");
}

// When the streaming kernel applies (the dispatcher in cuda/layers.cu asks stream_stages).
template <typename W>
void check_stream_applies() {
  const int64_t h200 = 232448;  // sm_90's opt-in per block
  const int64_t a100 = 166912, ampere_86 = 101376;
  bool ok = tc::stream_stages<W>(1, 2048, h200, true) == tc::kStreamMaxStages &&
            tc::stream_stages<W>(16, 8192, h200, true) == tc::kStreamMaxStages &&
            tc::stream_stages<W>(64, 8192, h200, true) == 2 && tc::stream_stages<W>(32, 8192, h200, true) >= 3 &&
            tc::stream_stages<W>(16, 4096, h200, true) == tc::kStreamMaxStages && tc::stream_stages<W>(65, 2048, h200, true) == 2 &&
            tc::stream_stages<W>(4096, 2048, h200, true) == 2 && tc::stream_stages<W>(65, 2048, a100, true) == 0 &&
            tc::stream_stages<W>(0, 2048, h200, true) == 0 && tc::stream_stages<W>(1, 64, h200, true) == 2 &&
            tc::stream_stages<W>(1, 512, h200, true) == 3 && tc::stream_stages<W>(1, 1280, h200, true) == 6 &&
            tc::stream_stages<W>(1, 2044, h200, true) == 0 && tc::stream_stages<W>(1, 2048, h200, false) == 0 &&
            tc::stream_stages<W>(1, 2048, 1024, true) == 0;
  for (int64_t optin : {a100, ampere_86, int64_t{48 * 1024}})
    for (int64_t n : {1, 8, 16, 17, 32, 33, 64, 65, 1000}) {
      const int st = tc::stream_stages<W>(n, 4096, optin, true);
      const tc::StreamShape sh(n);
      ok = ok && (st == 0 || (st >= 2 && tc::stream_smem_bytes<W>(n, st) <= optin &&
                              st * tc::stream_slice_bytes<W>(sh) >= tc::stream_reduce_bytes(sh) &&
                              (st == tc::kStreamMaxStages || tc::stream_smem_bytes<W>(n, st + 1) > optin)));
    }
  ok = ok && tc::stream_stages<W>(16, 4096, ampere_86, true) >= 2;
  report(ok, std::string(emu::type_name<W>()) + " streaming applies to K % 8 == 0, aligned, with the most stages that fit (none past 64 rows on an A100)");
}

template <typename W>
void suite(std::mt19937_64& rng) {
  const int64_t sizes[][3] = {{1, 67, 33}, {3, 129, 70}, {17, 200, 45}, {5, 515, 301}, {1, 1, 1}, {16, 16, 16},
                              {33, 96, 17}, {2, 1000, 20}};
  for (const auto& s : sizes)
    for (bool with_bias : {false, true}) check_values<W>(rng, s[0], s[1], s[2], with_bias);
  check_split_exactness<W>(rng);
  check_batch_invariance<W>(rng);
  check_load_paths<W>(rng);
  // Streaming: K below, at and past one 256-wide slice and not a multiple of it; more slices than
  // stages; rows 1-150 (one, two and four row tiles a warp; past 64 rows two weight tiles a block and
  // several row groups); ragged M; grouped parts with and without bias.
  check_stream<W>(rng, 1, 8, {1}, {false}, {2, 6});
  check_stream<W>(rng, 1, 64, {33}, {true}, {2, 3});
  check_stream<W>(rng, 3, 256, {16, 70}, {false, true}, {2, 6});
  check_stream<W>(rng, 16, 264, {45}, {true}, {2, 4});
  check_stream<W>(rng, 5, 1000, {20, 17, 3}, {true, false, true}, {2, 3, 6});
  check_stream<W>(rng, 2, 2048, {48}, {false}, {6});
  check_stream<W>(rng, 9, 520, {64, 16, 16}, {false, false, false}, {3, 6});
  check_stream<W>(rng, 17, 264, {45}, {true}, {2, 3});
  check_stream<W>(rng, 32, 520, {20, 17}, {false, true}, {2});
  check_stream<W>(rng, 33, 256, {16}, {true}, {2});
  check_stream<W>(rng, 64, 1000, {33}, {true}, {2, 3});
  check_stream<W>(rng, 65, 264, {40, 17}, {true, false}, {2});
  check_stream<W>(rng, 150, 520, {70}, {true}, {2, 3});
  check_stream_applies<W>();
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  std::mt19937_64 rng(seed);
  suite<bf16>(rng);
  suite<__half>(rng);
  return emu::summary(seed);
}

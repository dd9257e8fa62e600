// Runs the CUDA sampling and verification kernels (cuda/sampling.cuh, cuda/verify.cuh, with the
// block primitives of cuda/sampling_block.cuh) on the host emulation (cuda_emu.h) and compares them
// with the CPU backend (cpp/cpu/sampling.cc, verify.cc, thread_pool.cc, linked in) on the same inputs:
//   - argmax, top-k, sample and verify must agree exactly (the same tokens, nodes, counts: the two
//     backends share spec_math.h's decisions and integer masses);
//   - process_logits: the same kept set, values within f32 rounding (softmax sums differ in order);
//   - typical acceptance's entropy: the same bits (one summation order, a shared ln);
//   - a row without mass: kNoMass on both;
//   - greedy verification's vocabulary-parallel path (argmax slices + a warp walk): == CPU;
//   - argmax by vocabulary slices + a warp per row, and sample by slice masses + a block per row (the
//     launchers' paths for a few rows): == CPU;
//   - the vocabulary-parallel sampled path without draft rows (row statistics by slices + a warp
//     walk: one-hot rejection and typical acceptance, rows over several slices): == CPU, and its
//     entropy the same bits;
//   - rejection with draft rows vocabulary-parallel: on chains (walk, one residual, walk) and on
//     trees with sibling candidates (the residual of rejecting every child, one launch per sibling
//     rank, then one walk): == CPU, and every child's precomputed masses and residual == the walk's
//     chain run on whole rows (stars whose children all get rejected, repeated sibling tokens).
// Inputs are adversarial: tied logits, NaN, zero and one-hot rows, tiny masses, rows longer than one
// block tile, trees with non-candidate nodes and repeated sibling tokens.
// Usage: sampling_emu SEED [ROUNDS]. ROUNDS = 0: one reduced round over every kernel at small sizes
// (for the ThreadSanitizer build, ~5x slower). Exit status 1 if any check failed.
#include "cuda_emu.h"
#include "emu_check.h"
// clang-format off: the stand-ins must come first
#include "../../cuda/sampling.cuh"
#include "../../cuda/verify.cuh"
#include "../../cpp/cpu/verify_simd.h"

#include <algorithm>
#include <cinttypes>
#include <cstring>
#include <random>
#include <string>

using namespace specdec;
namespace sk = specdec::cuda::sampling_kernels;
namespace vk = specdec::cuda::verify_kernels;
using bf16 = __nv_bfloat16;

namespace {

using emu::from_float;
using emu::report;
using emu::to_float;

constexpr unsigned kBlock = static_cast<unsigned>(cuda::blk::kBlock);

template <typename T> DType dtype_of();
template <> DType dtype_of<float>() { return DType::f32; }
template <> DType dtype_of<__half>() { return DType::f16; }
template <> DType dtype_of<bf16>() { return DType::bf16; }

template <typename T>
Tensor tensor(const std::vector<T>& v, std::vector<int64_t> shape, DType dt) {
  return Tensor::from_host(dt, std::move(shape), v.data());
}
template <typename T>
std::vector<T> host(const Tensor& t) {
  std::vector<T> v(static_cast<size_t>(t.numel()));
  t.copy_to_host(v.data(), v.size() * sizeof(T));
  return v;
}

// Logits with the hard cases: values on a coarse grid (many exact ties), a row with NaNs, a row that
// is constant, a row with one huge value (one-hot after softmax), a row of -inf but one.
std::vector<float> adversarial_logits(std::mt19937_64& rng, int rows, int V) {
  std::uniform_real_distribution<float> u(-6.f, 6.f);
  std::vector<float> x(static_cast<size_t>(rows) * V);
  for (int r = 0; r < rows; ++r) {
    float* row = &x[static_cast<size_t>(r) * V];
    const int kind = r % 6;
    for (int i = 0; i < V; ++i) {
      float v = u(rng);
      if (kind == 1) v = std::round(v * 2.f) / 2.f;  // ties
      if (kind == 3) v = 1.5f;                       // constant
      row[i] = v;
    }
    if (kind == 2) row[rng() % V] = NAN, row[rng() % V] = NAN;
    if (kind == 4) row[rng() % V] = 80.f;
    if (kind == 5) {
      for (int i = 0; i < V; ++i) row[i] = -INFINITY;
      row[rng() % V] = 0.f;
    }
  }
  return x;
}

template <typename T>
void check_argmax_topk(std::mt19937_64& rng, int rows, int V, int k) {
  const auto xf = adversarial_logits(rng, rows, V);
  std::vector<T> x(xf.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = from_float<T>(xf[i]);
  const Tensor xt = tensor(x, {rows, V}, dtype_of<T>());
  Tensor cpu_am = Tensor::empty(DType::i32, {rows});
  cpu::argmax(xt, cpu_am);
  std::vector<int32_t> gpu_am(static_cast<size_t>(rows), -1);
  emu::launch(Dim3{static_cast<unsigned>(rows), 1, 1}, kBlock, [&] { sk::argmax_kernel<T>(x.data(), gpu_am.data(), V); });
  const std::string what = std::string(emu::type_name<T>()) + " rows=" + std::to_string(rows) + " V=" + std::to_string(V);
  report(host<int32_t>(cpu_am) == gpu_am, what + ": argmax == CPU (ties -> lowest index, NaN never wins)");
  // The sliced path (a few rows of a large vocabulary): a block per 4096-column slice, a warp per row.
  const int S = sk::argmax_slices(V);
  std::vector<float> part_v(static_cast<size_t>(rows) * S, -1.f);
  std::vector<int32_t> part_i(static_cast<size_t>(rows) * S, -1), sliced(static_cast<size_t>(rows), -1);
  emu::launch(Dim3{static_cast<unsigned>(rows), static_cast<unsigned>(S), 1}, sk::kSliceThreads,
              [&] { sk::argmax_slices_kernel<T>(x.data(), V, part_v.data(), part_i.data()); });
  emu::launch(Dim3{static_cast<unsigned>((rows + sk::kCombineWarps - 1) / sk::kCombineWarps), 1, 1}, sk::kCombineWarps * 32,
              [&] { sk::argmax_combine_kernel(part_v.data(), part_i.data(), S, rows, sliced.data()); });
  report(host<int32_t>(cpu_am) == sliced, what + ": argmax by " + std::to_string(S) + " vocabulary slice(s) == CPU");
  {
    // All NaN (index 0 on every path), and NaN but for one entry in the last slice.
    std::vector<T> nan_rows(static_cast<size_t>(2) * V, from_float<T>(NAN));
    nan_rows[static_cast<size_t>(2) * V - 1 - rng() % std::min(V, 100)] = from_float<T>(-3.f);
    const Tensor nt = tensor(nan_rows, {2, V}, dtype_of<T>());
    Tensor cpu_n = Tensor::empty(DType::i32, {2});
    cpu::argmax(nt, cpu_n);
    std::vector<float> pv(static_cast<size_t>(2) * S);
    std::vector<int32_t> pi(static_cast<size_t>(2) * S), blockwise(2, -1), bysl(2, -1);
    emu::launch(Dim3{2, 1, 1}, kBlock, [&] { sk::argmax_kernel<T>(nan_rows.data(), blockwise.data(), V); });
    emu::launch(Dim3{2, static_cast<unsigned>(S), 1}, sk::kSliceThreads, [&] { sk::argmax_slices_kernel<T>(nan_rows.data(), V, pv.data(), pi.data()); });
    emu::launch(Dim3{1, 1, 1}, sk::kCombineWarps * 32, [&] { sk::argmax_combine_kernel(pv.data(), pi.data(), S, 2, bysl.data()); });
    const auto c = host<int32_t>(cpu_n);
    report(c[0] == 0 && c == blockwise && c == bysl, what + ": argmax of NaN rows == CPU, block and sliced");
  }

  if (k > V) return;
  Tensor cv = Tensor::empty(DType::f32, {rows, k}), ci = Tensor::empty(DType::i32, {rows, k});
  cpu::top_k(xt, k, cv, ci);
  std::vector<float> cand_v(static_cast<size_t>(rows) * k), vals(static_cast<size_t>(rows) * k, -1.f);
  std::vector<int32_t> cand_i(static_cast<size_t>(rows) * k), ids(static_cast<size_t>(rows) * k, -1);
  emu::launch(Dim3{static_cast<unsigned>(rows), 1, 1}, kBlock, [&] {
    sk::top_k_kernel<T>(x.data(), V, k, cand_v.data(), cand_i.data(), vals.data(), ids.data());
  });
  const auto hv = host<float>(cv);
  const bool same_vals = std::memcmp(hv.data(), vals.data(), vals.size() * sizeof(float)) == 0;
  report(same_vals && host<int32_t>(ci) == ids, what + " k=" + std::to_string(k) + ": top_k values and ids == CPU");
}

std::string params_str(const SamplingParams& sp) {
  char b[120];
  std::snprintf(b, sizeof b, "T=%g top_k=%d top_p=%g min_p=%g", sp.temperature, sp.top_k, sp.top_p, sp.min_p);
  return b;
}

// process_logits on both, then sample from the CPU's probs on both (the same f32 input).
template <typename T>
void check_process_and_sample(std::mt19937_64& rng, int rows, int V, const SamplingParams& sp) {
  const auto xf = adversarial_logits(rng, rows, V);
  std::vector<T> x(xf.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = from_float<T>(xf[i]);
  const Tensor xt = tensor(x, {rows, V}, dtype_of<T>());
  Tensor cp = Tensor::empty(DType::f32, {rows, V});
  cpu::process_logits(xt, sp, cp);
  const auto cpu_p = host<float>(cp);
  std::vector<float> gpu_p(cpu_p.size(), -1.f);
  emu::launch(Dim3{static_cast<unsigned>(rows), 1, 1}, kBlock, [&] { sk::process_logits_kernel<T>(x.data(), gpu_p.data(), V, sp); });
  const std::string what = std::string(emu::type_name<T>()) + " V=" + std::to_string(V) + " " + params_str(sp);
  int support = 0;
  double worst = 0;
  for (size_t i = 0; i < cpu_p.size(); ++i) {
    // NaN rows: both must agree on NaN-ness too.
    if ((cpu_p[i] > 0) != (gpu_p[i] > 0) || std::isnan(cpu_p[i]) != std::isnan(gpu_p[i])) ++support;
    else if (cpu_p[i] > 0) worst = std::max(worst, std::fabs(static_cast<double>(gpu_p[i]) - cpu_p[i]) / cpu_p[i]);
  }
  char buf[120];
  std::snprintf(buf, sizeof buf, ": process_logits kept set == CPU (%d differ), max relative difference %.1e", support, worst);
  report(support == 0 && worst < 2e-5, what + buf);

  std::vector<uint64_t> seeds(static_cast<size_t>(rows)), offsets(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) seeds[r] = rng(), offsets[r] = rng() % 1000;
  Tensor ct = Tensor::empty(DType::i32, {rows});
  cpu::sample(cp, tensor(seeds, {rows}, DType::u64), tensor(offsets, {rows}, DType::u64), ct);
  std::vector<int32_t> tok(static_cast<size_t>(rows), -7);
  emu::launch(Dim3{static_cast<unsigned>(rows), 1, 1}, kBlock, [&] {
    sk::sample_kernel(cpu_p.data(), seeds.data(), offsets.data(), tok.data(), V);
  });
  report(host<int32_t>(ct) == tok, what + ": sample == CPU, token for token");
}

// processLogits by vocabulary slices (the launcher's path for a few rows) == the block kernel, bit for
// bit (batch invariance: the launcher picks the path by row count), and == the CPU's kept set. The
// launches are the launcher's own sequence (process_logits_slices). Rows with ties across slice
// boundaries (a coarse grid, a constant row: top-k and top-p boundaries whose ties span slices),
// NaN, one-hot and all-but-one -inf rows; V with a short last slice.
template <typename T>
void check_process_slices(std::mt19937_64& rng, int rows, int V, const SamplingParams& sp) {
  auto xf = adversarial_logits(rng, rows, V);
  // The random rows spread over [-42, 42]: exp terms of every size, whose double sum is inexact (over
  // a narrow range the sum of a few thousand floats is exact in double, and no order would show).
  for (int r = 0; r < rows; r += 6)
    for (int i = 0; i < V; ++i) xf[static_cast<size_t>(r) * V + i] *= 7.f;
  std::vector<T> x(xf.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = from_float<T>(xf[i]);
  Tensor cp = Tensor::empty(DType::f32, {rows, V});
  cpu::process_logits(tensor(x, {rows, V}, dtype_of<T>()), sp, cp);
  const auto cpu_p = host<float>(cp);
  std::vector<float> blockwise(cpu_p.size(), -1.f), sliced(cpu_p.size(), -2.f);
  emu::launch(Dim3{static_cast<unsigned>(rows), 1, 1}, kBlock, [&] { sk::process_logits_kernel<T>(x.data(), blockwise.data(), V, sp); });
  const int S = sk::argmax_slices(V);
  const size_t NS = static_cast<size_t>(rows) * S;
  std::vector<unsigned long long> hist(static_cast<size_t>(rows) * 2 * 4 * 256), state(static_cast<size_t>(rows) * 2 * 5 * 2, ~0ull),
      total(rows), wt(rows), part_mass(NS, ~0ull), ties(NS, ~0ull);
  std::vector<float> part_max(NS, NAN), part_pmax(NS, NAN);
  std::vector<double> part_z(NS, NAN);
  std::vector<int32_t> part_i(NS, -9), am(rows, -9);
  const sk::SliceScratch sc{part_max.data(), part_pmax.data(), part_z.data(), part_mass.data(), ties.data(), hist.data(),
                            state.data(),    total.data(),     wt.data(),     part_i.data(),    am.data()};
  int launches = 0;
  auto go = [&](auto kernel, unsigned gx, unsigned gy, unsigned threads, auto... args) {
    ++launches;
    emu::launch(Dim3{gx, gy, 1}, threads, [&] { kernel(args...); });
  };
  sk::process_logits_slices<T>(go, x.data(), sliced.data(), rows, V, sp, sc);
  // The denominator's slice sums in the documented order (process_slices.cuh), computed here lane
  // by lane: every lane's double sum, the xor butterfly as each lane sees it, the warps in order.
  // (The block kernel's probabilities equal the sliced ones above; the order itself barely shows in
  // them: a double sum's last bit rarely moves float(1 / z).)
  bool z_order = true;
  for (int r = 0; r < rows && sp.temperature != 0.0f; ++r) {
    const T* xr = x.data() + static_cast<size_t>(r) * V;
    float m = -INFINITY;
    for (int i = 0; i < V; ++i) m = std::fmax(m, to_float(xr[i]) / sp.temperature);
    for (int sl = 0; sl < S; ++sl) {
      double lane[sk::kSliceThreads];
      for (int t = 0; t < sk::kSliceThreads; ++t) {
        lane[t] = 0.0;
        for (int i = sk::slice_begin(sl) + t; i < sk::slice_end(V, sl); i += sk::kSliceThreads)
          lane[t] += static_cast<double>(expf(to_float(xr[i]) / sp.temperature - m));
      }
      for (int o = 16; o > 0; o >>= 1) {
        double next[sk::kSliceThreads];
        for (int t = 0; t < sk::kSliceThreads; ++t) next[t] = lane[t] + lane[t ^ o];
        std::copy(next, next + sk::kSliceThreads, lane);
      }
      double z = lane[0];
      for (int w = 1; w < sk::kSliceWarps; ++w) z += lane[32 * w];
      z_order = z_order && std::memcmp(&z, &part_z[static_cast<size_t>(r) * S + sl], sizeof z) == 0;
    }
  }
  const bool same = std::memcmp(blockwise.data(), sliced.data(), sliced.size() * sizeof(float)) == 0;
  int differ = 0, support = 0;
  for (size_t i = 0; i < sliced.size(); ++i) {
    if (std::memcmp(&blockwise[i], &sliced[i], sizeof(float)) != 0) ++differ;
    if ((cpu_p[i] > 0) != (sliced[i] > 0) || std::isnan(cpu_p[i]) != std::isnan(sliced[i])) ++support;
  }
  char buf[200];
  std::snprintf(buf, sizeof buf, " rows=%d V=%d (%d slices, %d launches) %s: sliced == block kernel bit for bit (%d differ), kept set == CPU (%d differ)",
                rows, V, S, launches, params_str(sp).c_str(), differ, support);
  report(same && support == 0 && z_order, std::string("processLogits by slices, ") + emu::type_name<T>() + buf +
                                                 (z_order ? ", denominator in the documented order" : ", denominator NOT in the documented order"));
}

// sample by vocabulary slices == the block kernel == the CPU: random rows with zeros, a row without
// mass (kNoMass), a row whose mass sits in its last slice, a one-hot row.
void check_sample_slices(std::mt19937_64& rng, int rows, int V) {
  std::uniform_real_distribution<float> u(0.f, 1.f);
  std::vector<float> p(static_cast<size_t>(rows) * V);
  for (int r = 0; r < rows; ++r) {
    float* row = &p[static_cast<size_t>(r) * V];
    const int kind = r % 5;
    double z = 0;
    for (int i = 0; i < V; ++i) z += (row[i] = (kind == 0 && rng() % 3 == 0) ? 0.f : u(rng));
    for (int i = 0; i < V; ++i) row[i] = static_cast<float>(row[i] / z);
    if (kind == 1) std::fill(row, row + V, 0.f);
    if (kind == 2) std::fill(row, row + std::max(0, V - 50), 0.f);
    if (kind == 3) std::fill(row, row + V, 0.f), row[rng() % V] = 1.f;
  }
  std::vector<uint64_t> seeds(static_cast<size_t>(rows)), offsets(static_cast<size_t>(rows));
  for (int r = 0; r < rows; ++r) seeds[r] = rng(), offsets[r] = rng() % 1000;
  Tensor ct = Tensor::empty(DType::i32, {rows});
  cpu::sample(tensor(p, {rows, V}, DType::f32), tensor(seeds, {rows}, DType::u64), tensor(offsets, {rows}, DType::u64), ct);
  const int S = sk::argmax_slices(V);
  std::vector<uint64_t> mass(static_cast<size_t>(rows) * S, ~uint64_t{0});
  std::vector<int32_t> sliced(static_cast<size_t>(rows), -7), blockwise(static_cast<size_t>(rows), -7);
  emu::launch(Dim3{static_cast<unsigned>(rows), static_cast<unsigned>(S), 1}, sk::kSliceThreads,
              [&] { sk::slice_mass_kernel(p.data(), V, mass.data()); });
  emu::launch(Dim3{static_cast<unsigned>(rows), 1, 1}, kBlock,
              [&] { sk::sample_slices_kernel(p.data(), mass.data(), seeds.data(), offsets.data(), sliced.data(), V); });
  emu::launch(Dim3{static_cast<unsigned>(rows), 1, 1}, kBlock,
              [&] { sk::sample_kernel(p.data(), seeds.data(), offsets.data(), blockwise.data(), V); });
  const auto c = host<int32_t>(ct);
  report(c == sliced && c == blockwise && c[1] == sm::kNoMass,
         "sample by " + std::to_string(S) + " vocabulary slices, rows=" + std::to_string(rows) + " V=" + std::to_string(V) +
             ": == block kernel == CPU (zeros, no mass -> kNoMass, mass in the last slice, one-hot)");
}

// A batch of B random trees; draft tokens mostly drawn from the target (long accepted paths),
// sometimes repeated among siblings, sometimes marked -2 (not a candidate).
struct Trees {
  std::vector<int32_t> indptr{0}, parents, tokens;
};
// one_child: no node gets two candidate children (chains, and forests of chains hanging off
// earlier nodes: sm::one_child_each), the draft model's sampled shape.
// star: every node is a candidate child of the root (wide sibling chains).
Trees make_trees(std::mt19937_64& rng, int B, int max_nodes, int V, bool one_child = false, bool star = false) {
  Trees t;
  for (int b = 0; b < B; ++b) {
    const int n = 1 + static_cast<int>(rng() % static_cast<uint64_t>(max_nodes));
    std::vector<int> free_nodes;  // nodes without a candidate child yet
    for (int i = 0; i < n; ++i) {
      int32_t par = i == 0 ? -1 : star ? 0 : (rng() % 7 == 0 ? -2 : static_cast<int32_t>(rng() % static_cast<uint64_t>(i)));
      if (one_child && par >= 0) {
        if (free_nodes.empty()) par = -2;
        else {
          // Mostly the latest free node (a chain), sometimes an earlier one.
          const size_t k = rng() % 3 ? free_nodes.size() - 1 : rng() % free_nodes.size();
          par = free_nodes[k];
          free_nodes.erase(free_nodes.begin() + static_cast<long>(k));
        }
      }
      if (one_child && (i == 0 || par >= 0)) free_nodes.push_back(i);
      t.parents.push_back(par);
      t.tokens.push_back(static_cast<int32_t>(rng() % static_cast<uint64_t>(V)));
    }
    t.indptr.push_back(t.indptr.back() + n);
  }
  if (one_child)
    for (int b = 0; b < B; ++b)
      if (!sm::one_child_each(t.parents.data() + t.indptr[b], t.indptr[b + 1] - t.indptr[b])) std::abort();
  return t;
}

// bad_tokens: sequence 0's first-level draft tokens are no tokens (kNoMass, as a device chain's draw
// from a row without mass, or V): the sampled walks report kNoMass there on both backends and read
// no row outside [0, V) (the emulation runs under AddressSanitizer).
void check_verify(std::mt19937_64& rng, VerifyMode mode, bool with_draft, int B, int max_nodes, int V, float temperature,
                  bool bad_tokens = false, bool one_child = false, bool star = false) {
  Trees tr = make_trees(rng, B, max_nodes, V, one_child, star);
  while (bad_tokens && (tr.indptr[1] < 2 || tr.parents[1] != 0)) tr = make_trees(rng, B, max_nodes, V, one_child, star);
  const int N = tr.indptr.back();
  // Peaked target distributions so that paths get long; drafts are other peaked distributions.
  const auto lt = adversarial_logits(rng, N, V);
  const Tensor logits = tensor(lt, {N, V}, DType::f32);
  SamplingParams sp;
  sp.temperature = temperature;
  Tensor probs = Tensor::empty(DType::f32, {N, V});
  cpu::process_logits(logits, sp, probs);
  auto target_p = host<float>(probs);
  // Make children's tokens the parent's argmax or a likely token often, so acceptance happens.
  Tensor am = Tensor::empty(DType::i32, {N});
  cpu::argmax(logits, am);
  const auto amh = host<int32_t>(am);
  for (int b = 0; b < B; ++b)
    for (int i = tr.indptr[b] + 1; i < tr.indptr[b + 1]; ++i) {
      const int par = tr.parents[i];
      if (par >= 0 && rng() % 3 != 0) tr.tokens[i] = amh[tr.indptr[b] + par];
    }
  if (bad_tokens)
    for (int i = 1; i < tr.indptr[1]; ++i)
      if (tr.parents[i] == 0) tr.tokens[i] = i % 2 ? sm::kNoMass : V;
  std::vector<float> draft;
  if (with_draft) {
    const auto ld = adversarial_logits(rng, N, V);
    Tensor dp = Tensor::empty(DType::f32, {N, V});
    cpu::process_logits(tensor(ld, {N, V}, DType::f32), sp, dp);
    draft = host<float>(dp);
    // Some draft rows are the target's (p = q: always accepted), some are the target's moved by one
    // token of mass (a residual that is one token), some are all zero (q(x) = 0: accepted).
    for (int r = 0; r < N; ++r) {
      float* q = &draft[static_cast<size_t>(r) * V];
      const float* p = &target_p[static_cast<size_t>(r) * V];
      const int kind = static_cast<int>(rng() % 8);
      if (kind == 0) std::copy(p, p + V, q);
      if (kind == 1) {
        std::copy(p, p + V, q);
        const int from = static_cast<int>(rng() % V), to = static_cast<int>(rng() % V);
        const float moved = q[from] * 0.5f;
        q[from] -= moved, q[to] += moved;
      }
      if (kind == 2) std::fill(q, q + V, 0.0f);
    }
    // Two thirds of the children take the draft's favourites (likely under q, often unlikely under
    // p: rejections with a residual to draw from): on chains the favourite, on trees the k-th
    // candidate child the k-th favourite (drawn without replacement), now and then a repeat.
    std::vector<int> rank(static_cast<size_t>(N), 0);
    for (int i = 0; i < N; ++i) {
      const int b = static_cast<int>(std::upper_bound(tr.indptr.begin(), tr.indptr.end(), i) - tr.indptr.begin()) - 1;
      const int par = tr.parents[i];
      if (par < 0) continue;
      const int k = rank[static_cast<size_t>(tr.indptr[b] + par)]++;
      if (rng() % 3 == 0 || (bad_tokens && b == 0 && par == 0)) continue;
      const float* q = &draft[static_cast<size_t>(tr.indptr[b] + par) * V];
      std::vector<int> order(static_cast<size_t>(V));
      for (int j = 0; j < V; ++j) order[static_cast<size_t>(j)] = j;
      const int kth = std::min(rng() % 5 == 0 ? 0 : k, V - 1);
      std::nth_element(order.begin(), order.begin() + kth, order.end(), [&](int x, int y) { return q[x] > q[y] || (q[x] == q[y] && x < y); });
      tr.tokens[i] = order[static_cast<size_t>(kth)];
      // A repeat of an earlier sibling's token: its q is gone (drawn without replacement), and the
      // walk's mq loses nothing more when it is rejected again.
      if (k > 0 && rng() % 4 == 0)
        for (int j = i - 1; j > tr.indptr[b] + par; --j)
          if (tr.parents[j] == par && rng() % 2 == 0) {
            tr.tokens[i] = tr.tokens[j];
            break;
          }
    }
    // Stars: the root's draft row puts most of its mass on its children's tokens, so that every
    // rejection moves mq and the residual's ratio a long way (a repeat included: it must move nothing).
    if (star)
      for (int b = 0; b < B; ++b) {
        float* q = &draft[static_cast<size_t>(tr.indptr[b]) * V];
        for (int c = tr.indptr[b] + 1; c < tr.indptr[b + 1]; ++c) q[tr.tokens[c]] += 1.0f;
        float sum = 0.0f;
        for (int i = 0; i < V; ++i) sum += q[i];
        for (int i = 0; i < V; ++i) q[i] /= sum;
      }
    // On half the nodes with sibling candidates the target gives none of them any mass: every one is
    // rejected, and the draw comes from the residual that the whole chain of rejections left.
    if (!one_child) {
      for (int b = 0; b < B; ++b)
        for (int v = tr.indptr[b]; v < tr.indptr[b + 1]; ++v) {
          if (rank[static_cast<size_t>(v)] < 2 || rng() % 2) continue;
          float* p = &target_p[static_cast<size_t>(v) * V];
          for (int c = v + 1; c < tr.indptr[b + 1]; ++c)
            if (tr.parents[c] == v - tr.indptr[b] && tr.tokens[c] >= 0 && tr.tokens[c] < V) p[tr.tokens[c]] = 0.0f;
        }
      probs = tensor(target_p, {N, V}, DType::f32);
    }
  }
  std::vector<uint64_t> seeds(static_cast<size_t>(B)), offsets(static_cast<size_t>(B));
  for (int b = 0; b < B; ++b) seeds[b] = rng(), offsets[b] = rng() % 100;
  const int D = max_nodes;

  VerifyArgs a;
  a.mode = mode;
  a.node_indptr = tensor(tr.indptr, {B + 1}, DType::i32);
  a.parents = tensor(tr.parents, {N}, DType::i32);
  a.tokens = tensor(tr.tokens, {N}, DType::i32);
  a.target = mode == VerifyMode::greedy ? logits : probs;
  if (with_draft) a.draft = tensor(draft, {N, V}, DType::f32);
  a.seeds = tensor(seeds, {B}, DType::u64);
  a.offsets = tensor(offsets, {B}, DType::u64);
  VerifyResult r;
  r.accepted_nodes = Tensor::empty(DType::i32, {N});
  r.emitted = Tensor::empty(DType::i32, {N});
  r.accept_count = Tensor::empty(DType::i32, {B});
  r.depth_accepts = Tensor::zeros(DType::i32, {D});
  cpu::verify(a, r);

  std::vector<int32_t> acc(static_cast<size_t>(N), -9), emitted(static_cast<size_t>(N), -9), counts(static_cast<size_t>(B), -9),
      depth_acc(static_cast<size_t>(D), 0), depth(static_cast<size_t>(N));
  std::vector<uint64_t> P(static_cast<size_t>(B) * V), Q(with_draft ? static_cast<size_t>(B) * V : 0);
  std::vector<float> thr(static_cast<size_t>(N));
  const float* target = mode == VerifyMode::greedy ? lt.data() : target_p.data();
  emu::launch(Dim3{static_cast<unsigned>(B), 1, 1}, kBlock, [&] {
    vk::verify_kernel<float>(mode, tr.indptr.data(), tr.parents.data(), tr.tokens.data(), target,
                             with_draft ? draft.data() : nullptr, seeds.data(), offsets.data(), a.typical_threshold,
                             a.typical_alpha, V, P.data(), with_draft ? Q.data() : nullptr, thr.data(), depth.data(),
                             acc.data(), emitted.data(), counts.data(), depth_acc.data(), D);
  });
  // Entries past accept_count are unspecified: compare the accepted prefix of each sequence.
  const auto cc = host<int32_t>(r.accept_count), ca = host<int32_t>(r.accepted_nodes), ce = host<int32_t>(r.emitted);
  const auto cd = host<int32_t>(r.depth_accepts);
  auto same_as_cpu = [&](const std::vector<int32_t>& g_acc, const std::vector<int32_t>& g_em, const std::vector<int32_t>& g_cnt,
                         const std::vector<int32_t>& g_depth, int* total) {
    bool same = cc == g_cnt && cd == g_depth;
    *total = 0;
    for (int b = 0; b < B && same; ++b) {
      *total += g_cnt[b];
      for (int k = 0; k < g_cnt[b]; ++k) {
        const int i = tr.indptr[b] + k;
        same = same && ca[i] == g_acc[i] && ce[i] == g_em[i];
      }
    }
    return same;
  };
  int total = 0;
  const bool same = same_as_cpu(acc, emitted, counts, depth_acc, &total);
  const char* mname = mode == VerifyMode::greedy ? "greedy" : mode == VerifyMode::rejection ? "rejection" : "typical";
  char what[200];
  std::snprintf(what, sizeof what, "verify %s%s%s B=%d N=%d V=%d T=%g: accepted nodes, emitted tokens, counts == CPU (%d tokens)",
                mname, with_draft ? " with draft" : "", bad_tokens ? ", no-token drafts" : "", B, N, V, temperature, total);
  report(same, what);
  if (bad_tokens) {
    // Emitted tokens are tokens or kNoMass, never a draft's out-of-range id; sequence 0's walk met a
    // no-token draft at its root and stopped there with kNoMass.
    bool in_range = true;
    for (int b = 0; b < B; ++b)
      for (int k = 0; k < counts[b]; ++k) {
        const int32_t t = emitted[tr.indptr[b] + k];
        in_range = in_range && (t == sm::kNoMass || (t >= 0 && t < V));
      }
    report(in_range && counts[0] == 1 && emitted[0] == sm::kNoMass,
           std::string("verify ") + mname + ": a no-token draft at the root is kNoMass (E_NUMERIC in the binding), nothing emitted out of range");
  }
  if (mode != VerifyMode::greedy) {
    // The vocabulary-parallel sampled path (row statistics by slices, then a warp per sequence walks;
    // with draft rows on chains: walk pass 1, the residual by slices, walk pass 2; on trees: the
    // residuals one sibling rank per launch, then walk pass 3; as cuda/verify.cu runs them).
    int max_children = 0;
    for (int b = 0; b < B; ++b)
      max_children = std::max(max_children, sm::max_candidate_children(tr.parents.data() + tr.indptr[b], tr.indptr[b + 1] - tr.indptr[b]));
    const bool tree = with_draft && max_children > 1;
    if (one_child && max_children > 1) std::abort();
    const int S = vk::mass_slices(V);
    std::vector<double> lanes(mode == VerifyMode::typical ? static_cast<size_t>(N) * sm::kEntropyLanes : 0, -1.0);
    std::vector<unsigned long long> mass(static_cast<size_t>(N) * S, 0), qmass(mass.size(), 0),
        rmass(static_cast<size_t>(tree ? N : B) * S, 0), rej_m(2 * static_cast<size_t>(B), 7), pre(3 * static_cast<size_t>(N), 7);
    std::vector<int32_t> acc2(static_cast<size_t>(N), -9), em2(static_cast<size_t>(N), -9), cnt2(static_cast<size_t>(B), -9),
        depth2(static_cast<size_t>(D), 0), edits(static_cast<size_t>(N), -9), dep(static_cast<size_t>(N), -9),
        rej_row(static_cast<size_t>(B), 7);
    std::vector<float> thr2(static_cast<size_t>(N), -9.f);
    double* lp = lanes.empty() ? nullptr : lanes.data();
    emu::launch(Dim3{static_cast<unsigned>(N), vk::kStatGroups, 1}, vk::kStatThreads,
                [&] { vk::row_stats_kernel<float>(target_p.data(), V, lp, mass.data()); });
    vk::DraftRowsArgs dr;
    if (with_draft) {
      emu::launch(Dim3{static_cast<unsigned>(N), vk::kStatGroups, 1}, vk::kStatThreads,
                  [&] { vk::row_stats_kernel<float>(draft.data(), V, nullptr, qmass.data(), tr.indptr.data(), B, tr.parents.data()); });
      dr.draft = draft.data();
      dr.qslice_mass = qmass.data();
      dr.rslice_mass = rmass.data();
      dr.rej_row = rej_row.data();
      dr.rej_mp = rej_m.data();
      dr.rej_mq = rej_m.data() + B;
      if (tree) dr.pre = pre.data();
    }
    auto walk = [&](int pass) {
      dr.pass = pass;
      emu::launch(Dim3{static_cast<unsigned>(B), 1, 1}, 32, [&] {
        vk::sampled_walk_kernel(mode, tr.indptr.data(), tr.parents.data(), tr.tokens.data(), target_p.data(), lp, mass.data(),
                                seeds.data(), offsets.data(), a.typical_threshold, a.typical_alpha, V, edits.data(), thr2.data(),
                                dep.data(), acc2.data(), em2.data(), cnt2.data(), depth2.data(), D, dr);
      });
    };
    int rejected = 0;
    if (tree) {
      for (int k = 0; k < max_children; ++k)
        emu::launch(Dim3{static_cast<unsigned>(N), vk::kStatGroups, 1}, vk::kStatThreads, [&] {
          vk::sibling_residual_kernel(target_p.data(), dr, tr.indptr.data(), B, tr.parents.data(), tr.tokens.data(), mass.data(), V,
                                      k, rmass.data());
        });
      for (int i = 0; i < N; ++i) rejected += tr.parents[i] >= 0 && pre[2 * static_cast<size_t>(N) + i] == 1 && pre[N + i] > 0;
      // The rounds' numbers against walk_rejection's chain on whole rows (as the CPU runs it): at
      // every node, for each candidate child in turn until a no-token, the masses before its test
      // and the residual mass of rejecting it -- every child, not only those a walk reaches.
      bool rounds_ok = true;
      for (int b = 0; b < B && rounds_ok; ++b)
        for (int v = tr.indptr[b]; v < tr.indptr[b + 1] && rounds_ok; ++v) {
          std::vector<uint64_t> P(static_cast<size_t>(V)), Q(static_cast<size_t>(V));
          uint64_t mp = 0, mq = 0;
          for (int i = 0; i < V; ++i) {
            mp += P[i] = sm::quantize_prob(target_p[static_cast<size_t>(v) * V + i]);
            mq += Q[i] = sm::quantize_prob(draft[static_cast<size_t>(v) * V + i]);
          }
          for (int c = v + 1; c < tr.indptr[b + 1] && rounds_ok; ++c) {
            if (tr.parents[c] != v - tr.indptr[b]) continue;
            rounds_ok = pre[2 * static_cast<size_t>(N) + c] == 1 && pre[c] == mp && pre[N + c] == mq;
            const int x = tr.tokens[c];
            if (x < 0 || x >= V) break;
            uint64_t rsum = 0, r = 0;
            for (int s2 = 0; s2 < S; ++s2) rsum += rmass[static_cast<size_t>(c) * S + s2];
            if (mq > 0) {
              const double ratio = static_cast<double>(mp) / static_cast<double>(mq);
              for (int i = 0; i < V; ++i) r += sm::residual_entry(P[i], Q[i], ratio);
              if (r > 0) {
                for (int i = 0; i < V; ++i) P[i] = sm::residual_entry(P[i], Q[i], ratio);
                mp = r;
              }
            }
            rounds_ok = rounds_ok && rsum == r;
            mq -= Q[x];
            Q[x] = 0;
          }
        }
      std::snprintf(what, sizeof what, "sibling rounds B=%d N=%d V=%d: every child's masses and residual == the walk's chain on whole rows",
                    B, N, V);
      report(rounds_ok, what);
      walk(3);
    } else if (with_draft) {
      walk(1);
      for (int b = 0; b < B; ++b) rejected += rej_row[b] >= 0;
      emu::launch(Dim3{static_cast<unsigned>(B), vk::kStatGroups, 1}, vk::kStatThreads,
                  [&] { vk::residual_slices_kernel(target_p.data(), dr, V, rmass.data()); });
      walk(2);
    } else {
      walk(0);
    }
    std::snprintf(what, sizeof what,
                  "verify %s%s%s, vocabulary-parallel (%d mass slices per row) B=%d N=%d V=%d T=%g: == CPU (%d tokens, %d residuals)",
                  mname, tree ? " with draft trees" : with_draft ? " with draft chains" : "", bad_tokens ? ", no-token drafts" : "", S, B,
                  N, V, temperature, total, rejected);
    report(same_as_cpu(acc2, em2, cnt2, depth2, &total), what);
    return;
  }
  // The vocabulary-parallel greedy path (argmax slices, then a warp per sequence walks).
  const int S = vk::argmax_slices(V);
  std::vector<float> part_v(static_cast<size_t>(N) * S, -1.f);
  std::vector<int32_t> part_i(static_cast<size_t>(N) * S, -1), acc2(static_cast<size_t>(N), -9), em2(static_cast<size_t>(N), -9),
      cnt2(static_cast<size_t>(B), -9), depth2(static_cast<size_t>(D), 0);
  emu::launch(Dim3{static_cast<unsigned>(N), static_cast<unsigned>(S), 1}, vk::kSliceThreads,
              [&] { vk::argmax_slices_kernel<float>(lt.data(), V, part_v.data(), part_i.data()); });
  emu::launch(Dim3{static_cast<unsigned>(B), 1, 1}, 32, [&] {
    vk::greedy_walk_kernel(tr.indptr.data(), tr.parents.data(), tr.tokens.data(), part_v.data(), part_i.data(), S, acc2.data(),
                           em2.data(), cnt2.data(), depth2.data(), D);
  });
  std::snprintf(what, sizeof what, "verify greedy, vocabulary-parallel (%d slices per row) B=%d N=%d V=%d: == CPU (%d tokens)", S, B,
                N, V, total);
  report(same_as_cpu(acc2, em2, cnt2, depth2, &total), what);
}

// Typical acceptance's entropy: the emulated CUDA block reduction gives exactly the CPU's bits
// (sm::entropy_host), and both are the float64 entropy to ~1e-15; ln (sm::log_det) against libm.
void check_entropy(std::mt19937_64& rng, int rows, int V) {
  const auto lt = adversarial_logits(rng, rows, V);
  Tensor probs = Tensor::empty(DType::f32, {rows, V});
  cpu::process_logits(tensor(lt, {rows, V}, DType::f32), SamplingParams{}, probs);
  const auto p = host<float>(probs);
  std::vector<double> gpu(static_cast<size_t>(rows), -1.0);
  emu::launch(Dim3{static_cast<unsigned>(rows), 1, 1}, kBlock, [&] {
    __shared__ cuda::blk::Smem sm;
    vk::BlockOps<float> ops{};
    ops.target = p.data();
    ops.V = V;
    ops.row0 = blockIdx.x;
    ops.s = &sm;
    const double h = ops.entropy(0);
    if (threadIdx.x == 0) gpu[blockIdx.x] = h;
  });
  // The vocabulary-parallel path: row_stats' 512 lanes, combined by a warp (SampledSliceOps).
  std::vector<double> lanes(static_cast<size_t>(rows) * sm::kEntropyLanes, -1.0), warp(static_cast<size_t>(rows), -1.0);
  std::vector<unsigned long long> mass(static_cast<size_t>(rows) * vk::mass_slices(V), 0);
  emu::launch(Dim3{static_cast<unsigned>(rows), vk::kStatGroups, 1}, vk::kStatThreads,
              [&] { vk::row_stats_kernel<float>(p.data(), V, lanes.data(), mass.data()); });
  emu::launch(Dim3{static_cast<unsigned>(rows), 1, 1}, 32, [&] {
    vk::SampledSliceOps ops{};
    ops.lanes = lanes.data();
    ops.row0 = blockIdx.x;
    const double h = ops.entropy(0);
    if (threadIdx.x == 0) warp[blockIdx.x] = h;
  });
  bool same = true, same_warp = true;
  double worst = 0;
  for (int r = 0; r < rows; ++r) {
    const float* row = &p[static_cast<size_t>(r) * V];
    const double cpu_h = sm::entropy_host(row, V);
    same = same && std::memcmp(&cpu_h, &gpu[r], sizeof(double)) == 0;
    same_warp = same_warp && std::memcmp(&cpu_h, &warp[r], sizeof(double)) == 0;
    double ref = 0;
    for (int i = 0; i < V; ++i)
      if (row[i] > 0) ref -= static_cast<double>(row[i]) * std::log(static_cast<double>(row[i]));
    if (ref > 0) worst = std::max(worst, std::fabs(cpu_h - ref) / ref);
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, "entropy rows=%d V=%d: CUDA block order == CPU bit for bit; relative error vs float64 %.1e", rows, V, worst);
  report(same && worst < 1e-13, buf);
  std::snprintf(buf, sizeof buf, "entropy rows=%d V=%d: vocabulary-parallel lanes + warp combination == CPU bit for bit", rows, V);
  report(same_warp, buf);
  double ln_worst = 0;
  std::uniform_real_distribution<double> e(-300.0, 0.0);
  for (int i = 0; i < 20000; ++i) {
    const double x = std::pow(2.0, e(rng)) * (1.0 + static_cast<double>(rng() % 1000) / 1000.0);
    ln_worst = std::max(ln_worst, std::fabs(sm::log_det(x) - std::log(x)) / std::max(1e-300, std::fabs(std::log(x))));
  }
  std::snprintf(buf, sizeof buf, "log_det (fma + division only) vs libm log: max relative error %.1e", ln_worst);
  report(ln_worst < 1e-15, buf);
}

// The CPU's vectorized entropy (cpp/cpu/verify_simd.h, what cpu/verify.cc runs) == the plain order
// (sm::entropy_host, which the CUDA reduction above matches), bit for bit, on every path this CPU
// has: random rows of many lengths (tails past the last whole vector, rows shorter than one) and
// rows with zeros, NaN, subnormal floats, ones and +inf (NaN in both).
void check_entropy_simd(std::mt19937_64& rng) {
#ifdef SPECDEC_CPU_X86_SIMD
  const cpu::simd::Isa best = cpu::simd::detect_isa();
  auto same = [](double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0 || (std::isnan(a) && std::isnan(b)); };
  std::vector<std::vector<float>> rows;
  for (int V : {1, 3, 4, 7, 8, 9, 511, 512, 513, 700, 3000, 4500}) {
    const auto lt = adversarial_logits(rng, 2, V);
    Tensor probs = Tensor::empty(DType::f32, {2, V});
    cpu::process_logits(tensor(lt, {2, V}, DType::f32), SamplingParams{}, probs);
    const auto p = host<float>(probs);
    rows.emplace_back(p.begin(), p.begin() + V);
    rows.emplace_back(p.begin() + V, p.end());
  }
  std::vector<float> odd(1037);
  for (size_t i = 0; i < odd.size(); ++i) {
    const float u = static_cast<float>(rng() % 1000000) / 1e6f;
    const int kind = static_cast<int>(rng() % 8);
    odd[i] = kind == 0 ? 0.f : kind == 1 ? NAN : kind == 2 ? 1e-45f * static_cast<float>(1 + rng() % 100) : kind == 3 ? 1.f : kind == 4 ? -u : u;
  }
  rows.push_back(odd);
  odd[17] = INFINITY;
  rows.push_back(odd);
  int bad2 = 0, bad512 = 0;
  for (const auto& r : rows) {
    const double ref = sm::entropy_host(r.data(), static_cast<int64_t>(r.size()));
    if (best >= cpu::simd::Isa::avx2) bad2 += !same(ref, cpu::simd::entropy_avx2(r.data(), static_cast<int64_t>(r.size())));
    if (best >= cpu::simd::Isa::avx512) bad512 += !same(ref, cpu::simd::entropy_avx512(r.data(), static_cast<int64_t>(r.size())));
  }
  const std::string n = std::to_string(rows.size());
  if (best >= cpu::simd::Isa::avx2) report(bad2 == 0, "entropy on AVX2 == the plain order, bit for bit: " + std::to_string(bad2) + " of " + n + " rows differ");
  else std::printf("skip entropy on AVX2: this CPU lacks it\n");
  if (best >= cpu::simd::Isa::avx512) report(bad512 == 0, "entropy on AVX-512 == the plain order, bit for bit: " + std::to_string(bad512) + " of " + n + " rows differ");
  else std::printf("skip entropy on AVX-512: this CPU lacks it\n");
#else
  (void)rng;
  std::printf("skip entropy SIMD paths: not an x86 build\n");
#endif
}

// The CPU's vectorized mass passes of exact rejection and sampling (cpp/cpu/verify_simd.h: quantise a
// row, the residual's mass and the residual itself, the draw) == spec_math.h's element-by-element
// code, bit for bit, on every path this CPU has: rows of many lengths with zeros, NaN, negatives,
// values >= 1, +inf and subnormals, ratios either side of 1, thresholds at every edge.
void check_mass_simd(std::mt19937_64& rng) {
  using namespace cpu::simd;
  std::vector<std::pair<std::vector<float>, std::vector<float>>> rows;
  for (int V : {1, 5, 8, 13, 64, 65, 127, 700, 3000, 4500}) {
    const auto lt = adversarial_logits(rng, 2, V);
    Tensor probs = Tensor::empty(DType::f32, {2, V});
    cpu::process_logits(tensor(lt, {2, V}, DType::f32), SamplingParams{}, probs);
    const auto p = host<float>(probs);
    rows.emplace_back(std::vector<float>(p.begin(), p.begin() + V), std::vector<float>(p.begin() + V, p.end()));
  }
  std::vector<float> a(1029), b(1029);
  for (size_t i = 0; i < a.size(); ++i) {
    auto odd = [&] {
      const float u = static_cast<float>(rng() % 1000000) / 1e6f;
      const int kind = static_cast<int>(rng() % 10);
      return kind == 0 ? 0.f : kind == 1 ? NAN : kind == 2 ? 1e-45f * static_cast<float>(1 + rng() % 100) : kind == 3 ? 1.f
           : kind == 4 ? -u : kind == 5 ? 1.5f : kind == 6 ? INFINITY : kind == 7 ? 1e-9f * u : u;
    };
    a[i] = odd(), b[i] = odd();
  }
  rows.emplace_back(a, b);
  // Small integer weights (k 2^-40 quantises to k) with ratios like 1/3: where q * ratio rounds onto
  // p, a fused p - q * ratio would leave a tiny remainder and ceil it to 1.
  std::vector<float> c(515), d(515);
  for (size_t i = 0; i < c.size(); ++i)
    c[i] = std::ldexp(static_cast<float>(1 + rng() % 3), -40), d[i] = std::ldexp(static_cast<float>(1 + rng() % 9), -40);
  rows.emplace_back(c, d);
  int bad[3] = {0, 0, 0}, checked[3] = {0, 0, 0};
  const Isa best = detect_isa();
  for (const auto& [pr, qr] : rows) {
    const int64_t V = static_cast<int64_t>(pr.size());
    std::vector<uint64_t> P0(V), Q0(V);
    const uint64_t mp = quantize_row_plain(pr.data(), V, P0.data()), mq = quantize_row_plain(qr.data(), V, Q0.data());
    std::vector<uint64_t> thresholds{0, mp / 3, mp / 2};
    if (mp > 0) thresholds.push_back(mp - 1);
    thresholds.push_back(mp);  // past the mass: kNoMass
    for (int k = 0; k < 6; ++k) thresholds.push_back(mp > 0 ? rng() % mp : 0);
    for (int path = 0; path < 3; ++path) {
#ifdef SPECDEC_CPU_X86_SIMD
      if (path == 1 && best < Isa::avx2) continue;
      if (path == 2 && best < Isa::avx512) continue;
#else
      if (path > 0) continue;
#endif
      ++checked[path];
      std::vector<uint64_t> P(V), Q(V);
      uint64_t m1 = 0, m2 = 0;
#ifdef SPECDEC_CPU_X86_SIMD
      m1 = path == 2 ? quantize_row_avx512(pr.data(), V, P.data()) : path == 1 ? quantize_row_avx2(pr.data(), V, P.data()) : quantize_row_plain(pr.data(), V, P.data());
      m2 = path == 2 ? quantize_row_avx512(qr.data(), V, Q.data()) : path == 1 ? quantize_row_avx2(qr.data(), V, Q.data()) : quantize_row_plain(qr.data(), V, Q.data());
#else
      m1 = quantize_row_plain(pr.data(), V, P.data()), m2 = quantize_row_plain(qr.data(), V, Q.data());
#endif
      bool ok = m1 == mp && m2 == mq && P == P0 && Q == Q0;
      // The mass alone (no row written), as processLogits normalises.
#ifdef SPECDEC_CPU_X86_SIMD
      ok = ok && (path == 2 ? quantize_row_avx512(pr.data(), V, nullptr) : path == 1 ? quantize_row_avx2(pr.data(), V, nullptr) : quantize_row_plain(pr.data(), V, nullptr)) == mp;
#else
      ok = ok && quantize_row_plain(pr.data(), V, nullptr) == mp;
#endif
      // The draw: the block-skipping scan == the element-by-element one (any path: plain C++).
      for (uint64_t t : thresholds) {
        int tok = sm::kNoMass;
        uint64_t before = 0;
        for (int64_t i = 0; i < V; ++i) {
          if (sm::sample_hit(before, P0[i], t)) { tok = static_cast<int>(i); break; }
          before += P0[i];
        }
        ok = ok && sample_index(P.data(), V, t) == tok;
      }
      if (mq > 0) {
        for (double ratio : {static_cast<double>(mp) / static_cast<double>(mq), 0.37, 1.0, 3.1, 1.0 / 3.0, 2.0 / 3.0, 0.1, 1.0 / 7.0}) {
          std::vector<uint64_t> R0 = P0, R = P;
          const uint64_t r0 = residual_mass_plain(P0.data(), Q0.data(), V, ratio);
          apply_residual_plain(R0.data(), Q0.data(), V, ratio);
          uint64_t r1 = 0;
#ifdef SPECDEC_CPU_X86_SIMD
          if (path == 2) r1 = residual_mass_avx512(P.data(), Q.data(), V, ratio), apply_residual_avx512(R.data(), Q.data(), V, ratio);
          else if (path == 1) r1 = residual_mass_avx2(P.data(), Q.data(), V, ratio), apply_residual_avx2(R.data(), Q.data(), V, ratio);
          else
#endif
            r1 = residual_mass_plain(P.data(), Q.data(), V, ratio), apply_residual_plain(R.data(), Q.data(), V, ratio);
          ok = ok && r1 == r0 && R == R0;
        }
      }
      bad[path] += !ok;
    }
  }
  const char* names[3] = {"plain C++ (the draw's block scan)", "AVX2", "AVX-512"};
  for (int path = 0; path < 3; ++path) {
    if (checked[path] == 0) { std::printf("skip mass passes on %s: this CPU lacks it\n", names[path]); continue; }
    report(bad[path] == 0, std::string("quantise, residual mass, residual and draw on ") + names[path] +
                               " == spec_math.h element by element: " + std::to_string(bad[path]) + " of " + std::to_string(checked[path]) + " rows differ");
  }
}

// A row without probability mass samples to kNoMass on both backends (the binding makes it E_NUMERIC).
void check_no_mass(int V) {
  std::vector<float> p(static_cast<size_t>(2) * V, 0.f);
  for (int i = 0; i < V; ++i) p[static_cast<size_t>(V) + i] = i % 2 ? NAN : 0.f;
  std::vector<uint64_t> seeds{1, 2}, offsets{3, 4};
  Tensor ct = Tensor::empty(DType::i32, {2});
  cpu::sample(tensor(p, {2, V}, DType::f32), tensor(seeds, {2}, DType::u64), tensor(offsets, {2}, DType::u64), ct);
  std::vector<int32_t> tok(2, 7);
  emu::launch(Dim3{2, 1, 1}, kBlock, [&] { sk::sample_kernel(p.data(), seeds.data(), offsets.data(), tok.data(), V); });
  const auto c = host<int32_t>(ct);
  report(c[0] == sm::kNoMass && c[1] == sm::kNoMass && tok[0] == sm::kNoMass && tok[1] == sm::kNoMass,
         "sample of an all-zero and an all-NaN row: kNoMass on both backends");
}

// Penalties: the kernel (a block per row, threads over the logit bias, then the history's entries
// and the path's tokens) == cpu::penalize bit for bit, on histories with prompt-only and output
// tokens, paths that repeat tokens and share them with the history, zero / negative / NaN logits,
// every penalty alone and together, a logit bias on history, path and other tokens (-inf, tiny and
// large biases; longer than a block's threads when V is), stop bans by path length (min_tokens),
// rows longer than a block's threads.
void check_penalize(std::mt19937_64& rng, int V, int max_hist, bool indexed = false) {
  std::uniform_real_distribution<float> u(-8.f, 8.f);
  const int S = 1 + static_cast<int>(rng() % 3);
  PenaltyArgs a;
  const float kinds[][3] = {{1.3f, 0.f, 0.f}, {0.6f, 0.f, 0.f}, {1.f, 0.5f, 0.f}, {1.f, 0.f, 0.25f}, {1.7f, -1.25f, 0.75f}};
  const auto& k = kinds[rng() % 5];
  a.repetition = k[0];
  a.presence = k[1];
  a.frequency = k[2];
  a.hist_indptr.push_back(0);
  for (int s = 0; s < S; ++s) {
    const int n = static_cast<int>(rng() % static_cast<uint64_t>(max_hist + 1));
    std::vector<int32_t> toks;
    for (int i = 0; i < n; ++i) toks.push_back(static_cast<int32_t>(rng() % static_cast<uint64_t>(V)));
    std::sort(toks.begin(), toks.end());
    toks.erase(std::unique(toks.begin(), toks.end()), toks.end());
    for (int32_t t : toks) {
      a.hist_tokens.push_back(t);
      a.hist_counts.push_back(static_cast<int32_t>(rng() % 4));
    }
    a.hist_indptr.push_back(static_cast<int32_t>(a.hist_tokens.size()));
  }
  a.path_indptr.push_back(0);
  const int N = 2 + static_cast<int>(rng() % 6);
  for (int r = 0; r < N; ++r) {
    const int32_t s = static_cast<int32_t>(rng() % static_cast<uint64_t>(S));
    a.row_seq.push_back(s);
    const int len = static_cast<int>(rng() % 7);
    for (int j = 0; j < len; ++j) {
      // Half from the history (shared tokens), half anywhere (repeats within the path too).
      const int32_t h0 = a.hist_indptr[static_cast<size_t>(s)], hn = a.hist_indptr[static_cast<size_t>(s) + 1] - h0;
      a.path_tokens.push_back(hn > 0 && rng() % 2 ? a.hist_tokens[static_cast<size_t>(h0 + static_cast<int32_t>(rng() % static_cast<uint64_t>(hn)))]
                                                  : static_cast<int32_t>(rng() % static_cast<uint64_t>(std::min(V, 12))));
    }
    a.path_indptr.push_back(static_cast<int32_t>(a.path_tokens.size()));
  }
  // A logit bias on two calls in three (always for a large V: more tokens than a block's threads):
  // distinct ascending tokens (history ones among them).
  if (V >= 1000 || rng() % 3 != 0) {
    std::vector<int32_t> bt;
    const int q = V >= 1000 ? 1200 : 1 + static_cast<int>(rng() % static_cast<uint64_t>(std::max(1, V / 4)));
    for (int i = 0; i < q; ++i) bt.push_back(i % 2 && !a.hist_tokens.empty() ? a.hist_tokens[rng() % a.hist_tokens.size()] : static_cast<int32_t>(rng() % static_cast<uint64_t>(V)));
    std::sort(bt.begin(), bt.end());
    bt.erase(std::unique(bt.begin(), bt.end()), bt.end());
    for (int32_t t : bt) {
      a.bias_tokens.push_back(t);
      const uint64_t kind = rng() % 4;
      a.bias_values.push_back(kind == 0 ? -INFINITY : kind == 1 ? 1e-7f : kind == 2 ? 100.f : u(rng));
    }
  }
  // Stop bans (min_tokens) on half the calls: per sequence a few distinct tokens (history and path
  // ones among them), on its rows whose path is shorter than ban_before.
  if (rng() % 2) {
    a.ban_indptr.push_back(0);
    for (int s = 0; s < S; ++s) {
      std::vector<int32_t> bt;
      for (int i = static_cast<int>(rng() % 4); i > 0; --i) bt.push_back(!a.path_tokens.empty() && rng() % 2 ? a.path_tokens[rng() % a.path_tokens.size()] : static_cast<int32_t>(rng() % static_cast<uint64_t>(V)));
      std::sort(bt.begin(), bt.end());
      bt.erase(std::unique(bt.begin(), bt.end()), bt.end());
      a.ban_tokens.insert(a.ban_tokens.end(), bt.begin(), bt.end());
      a.ban_indptr.push_back(static_cast<int32_t>(a.ban_tokens.size()));
      a.ban_before.push_back(static_cast<int32_t>(rng() % 5));
    }
  }
  // Indexed: the path tokens are read through indices from a buffer of picks (a native chain's),
  // which may hold a draw without mass (-1): skipped.
  std::vector<int32_t> source;
  Tensor src_t;
  if (indexed) {
    source = a.path_tokens;
    source.push_back(sm::kNoMass);
    std::shuffle(source.begin(), source.end(), rng);
    for (int32_t& t : a.path_tokens) t = static_cast<int32_t>(std::find(source.begin(), source.end(), t) - source.begin());
    if (!a.path_tokens.empty() && rng() % 2) a.path_tokens.back() = static_cast<int32_t>(std::find(source.begin(), source.end(), sm::kNoMass) - source.begin());
    src_t = tensor(source, {static_cast<int64_t>(source.size())}, DType::i32);
    a.path_source = &src_t;
  }
  std::vector<float> x(static_cast<size_t>(N) * V);
  for (size_t i = 0; i < x.size(); ++i) x[i] = i % 17 == 0 ? 0.f : i % 29 == 0 ? NAN : u(rng);
  Tensor ct = tensor(x, {N, V}, DType::f32);
  cpu::penalize(ct, a);
  std::vector<float> g = x;
  emu::launch(Dim3{static_cast<unsigned>(N), 1, 1}, kBlock, [&] {
    sk::penalize_kernel(g.data(), V, a.row_seq.data(), a.hist_indptr.data(), a.hist_tokens.data(), a.hist_counts.data(), a.path_indptr.data(),
                        a.path_tokens.data(), indexed ? source.data() : nullptr, a.bias_tokens.data(), a.bias_values.data(),
                        static_cast<int32_t>(a.bias_tokens.size()), a.ban_indptr.empty() ? nullptr : a.ban_indptr.data(), a.ban_tokens.data(),
                        a.ban_before.data(), a.repetition, a.presence, a.frequency);
  });
  const auto c = host<float>(ct);
  int changed = 0;
  for (size_t i = 0; i < x.size(); ++i) changed += std::memcmp(&c[i], &x[i], 4) != 0;
  report(std::memcmp(c.data(), g.data(), g.size() * 4) == 0 && (changed > 0 || a.hist_tokens.empty()),
         std::string(indexed ? "penalize, paths read through indices," : "penalize") + " V=" + std::to_string(V) + " rows=" + std::to_string(N) + " history " + std::to_string(a.hist_tokens.size()) + " bias " + std::to_string(a.bias_tokens.size()) + " bans " + std::to_string(a.ban_tokens.size()) + ": == CPU bit for bit (" +
             std::to_string(changed) + " logits changed)");
}

// A constraint's mask: the kernel == cpu::mask_tokens bit for bit (random bits, V not a multiple of
// 32, a row listed twice, rows left out untouched), and == a plain per-token reference.
void check_mask_tokens(std::mt19937_64& rng, int V) {
  std::uniform_real_distribution<float> u(-4.f, 4.f);
  const int N = 1 + static_cast<int>(rng() % 5), M = 1 + static_cast<int>(rng() % 6), W = (V + 31) / 32;
  std::vector<float> x(static_cast<size_t>(N) * V);
  for (float& v : x) v = u(rng);
  std::vector<int32_t> rows(static_cast<size_t>(M));
  std::vector<uint32_t> allowed(static_cast<size_t>(M) * W);
  for (int m = 0; m < M; ++m) {
    rows[static_cast<size_t>(m)] = static_cast<int32_t>(rng() % static_cast<uint64_t>(N));
    const uint64_t density = rng() % 3;  // sparse, half, dense
    for (int w = 0; w < W; ++w) {
      uint32_t b = static_cast<uint32_t>(rng());
      if (density == 0) b &= static_cast<uint32_t>(rng()) & static_cast<uint32_t>(rng());
      if (density == 2) b |= static_cast<uint32_t>(rng());
      allowed[static_cast<size_t>(m) * W + w] = b;
    }
    allowed[static_cast<size_t>(m) * W] |= 1u;  // at least token 0
  }
  std::vector<float> want = x;
  for (int m = 0; m < M; ++m)
    for (int t = 0; t < V; ++t)
      if (!((allowed[static_cast<size_t>(m) * W + t / 32] >> (t % 32)) & 1u)) want[static_cast<size_t>(rows[static_cast<size_t>(m)]) * V + t] = -INFINITY;
  Tensor ct = tensor(x, {N, V}, DType::f32);
  cpu::mask_tokens(ct, rows, allowed);
  std::vector<float> g = x;
  emu::launch(Dim3{static_cast<unsigned>(M), 1, 1}, kBlock, [&] { sk::mask_tokens_kernel(g.data(), V, rows.data(), allowed.data(), W); });
  const auto c = host<float>(ct);
  report(std::memcmp(c.data(), g.data(), g.size() * 4) == 0 && std::memcmp(c.data(), want.data(), want.size() * 4) == 0,
         "mask tokens V=" + std::to_string(V) + " rows=" + std::to_string(N) + " entries=" + std::to_string(M) + ": == CPU == reference bit for bit");
}

// Log-probabilities: the kernel (a block per entry: max, double lanes of exp, k rounds of the
// largest rank below the last) == cpu::token_logprobs: the same top ids, and log-probabilities
// within 2 ulps (the lanes sum in another order than the CPU's one pass), on rows with ties,
// -inf entries, a row of -inf, large spreads, k from 0 to 20.
void check_token_logprobs(std::mt19937_64& rng, int V, int k) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int N = 1 + static_cast<int>(rng() % 4), M = 1 + static_cast<int>(rng() % 6);
  const float spread = rng() % 2 ? 100.f : 8.f;
  std::vector<float> x(static_cast<size_t>(N) * V);
  for (float& v : x) {
    const uint64_t c = rng() % 20;
    v = c == 0 ? -INFINITY : c == 1 ? 1.5f : spread * u(rng);
  }
  if (rng() % 4 == 0) std::fill(x.begin(), x.begin() + V, -INFINITY);
  std::vector<int32_t> rows(static_cast<size_t>(M)), tokens(static_cast<size_t>(M));
  for (int m = 0; m < M; ++m) {
    rows[static_cast<size_t>(m)] = static_cast<int32_t>(rng() % static_cast<uint64_t>(N));
    tokens[static_cast<size_t>(m)] = static_cast<int32_t>(rng() % static_cast<uint64_t>(V));
  }
  Tensor xt = tensor(x, {N, V}, DType::f32);
  Tensor lp = Tensor::empty(DType::f32, {M}), tl = Tensor::empty(DType::f32, {M, k}), ti = Tensor::empty(DType::i32, {M, k});
  cpu::token_logprobs(xt, rows, tokens, k, lp, tl, ti);
  std::vector<float> glp(static_cast<size_t>(M)), gtl(static_cast<size_t>(M) * k);
  std::vector<int32_t> gti(static_cast<size_t>(M) * k);
  emu::launch(Dim3{static_cast<unsigned>(M), 1, 1}, kBlock, [&] {
    sk::token_logprobs_kernel(x.data(), V, rows.data(), tokens.data(), k, glp.data(), gtl.data(), gti.data(), false);
  });
  const auto near = [](float a, float b) {
    if (a == b) return true;  // -inf == -inf
    return std::fabs(a - b) <= 2.4e-7f * 2 * std::max(1.f, std::fabs(b));
  };
  bool ok = gti.empty() || std::memcmp(host<int32_t>(ti).data(), gti.data(), gti.size() * 4) == 0;
  const auto clp = host<float>(lp), ctl = host<float>(tl);
  for (int m = 0; m < M; ++m) ok = ok && near(glp[static_cast<size_t>(m)], clp[static_cast<size_t>(m)]);
  for (size_t i = 0; i < gtl.size(); ++i) ok = ok && near(gtl[i], ctl[i]);
  report(ok, "token logprobs V=" + std::to_string(V) + " entries=" + std::to_string(M) + " k=" + std::to_string(k) + ": == CPU (ids exact, log-probabilities within 2 ulps)");
}


// A chain's logprobs of its own picks (by_row): the kernel == cpu::pick_logprobs on a subset of the
// rows (outputs at the row's index, the others untouched), a pick of kNoMass NaN on both.
void check_pick_logprobs(std::mt19937_64& rng, int V, int k) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const int N = 2 + static_cast<int>(rng() % 5);
  std::vector<float> x(static_cast<size_t>(N) * V);
  for (float& v : x) v = rng() % 20 == 0 ? -INFINITY : 6.f * u(rng);
  std::vector<int32_t> picks(static_cast<size_t>(N)), rows;
  for (int r = 0; r < N; ++r) {
    picks[static_cast<size_t>(r)] = rng() % 6 == 0 ? sm::kNoMass : static_cast<int32_t>(rng() % static_cast<uint64_t>(V));
    if (rng() % 3 != 0) rows.push_back(r);
  }
  if (rows.empty()) rows.push_back(N - 1);
  Tensor xt = tensor(x, {N, V}, DType::f32), pt = tensor(picks, {N}, DType::i32);
  // Poisoned outputs: the rows not asked for must keep the poison.
  const float poison = 12345.f;
  std::vector<float> flp(static_cast<size_t>(N), poison), ftl(static_cast<size_t>(N) * k, poison);
  std::vector<int32_t> fti(static_cast<size_t>(N) * k, -7);
  Tensor lp = tensor(flp, {N}, DType::f32), tl = tensor(ftl, {N, k}, DType::f32), ti = tensor(fti, {N, k}, DType::i32);
  cpu::pick_logprobs(xt, pt, rows, k, lp, tl, ti);
  std::vector<float> glp = flp, gtl = ftl;
  std::vector<int32_t> gti = fti;
  emu::launch(Dim3{static_cast<unsigned>(rows.size()), 1, 1}, kBlock, [&] {
    sk::token_logprobs_kernel(x.data(), V, rows.data(), picks.data(), k, glp.data(), gtl.data(), gti.data(), true);
  });
  const auto near = [](float a, float b) {
    if (a == b || (std::isnan(a) && std::isnan(b))) return true;
    return std::fabs(a - b) <= 2.4e-7f * 2 * std::max(1.f, std::fabs(b));
  };
  const auto clp = host<float>(lp), ctl = host<float>(tl);
  const auto cti = host<int32_t>(ti);
  bool ok = gti.empty() || std::memcmp(cti.data(), gti.data(), gti.size() * 4) == 0;
  for (int r = 0; r < N; ++r) {
    const bool asked = std::find(rows.begin(), rows.end(), r) != rows.end();
    ok = ok && near(glp[static_cast<size_t>(r)], clp[static_cast<size_t>(r)]);
    ok = ok && (asked ? clp[static_cast<size_t>(r)] != poison : clp[static_cast<size_t>(r)] == poison);
    ok = ok && (!asked || (picks[static_cast<size_t>(r)] == sm::kNoMass) == std::isnan(clp[static_cast<size_t>(r)]));
  }
  for (size_t i = 0; i < gtl.size(); ++i) ok = ok && near(gtl[i], ctl[i]);
  report(ok, "pick logprobs V=" + std::to_string(V) + " rows=" + std::to_string(N) + " asked " + std::to_string(rows.size()) + " k=" + std::to_string(k) +
                 ": == CPU at the rows asked (others untouched; a draw without mass NaN)");
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 2;
  std::mt19937_64 rng(seed);
  if (rounds == 0) {
    check_process_slices<float>(rng, 3, 4500, SamplingParams{0.8f, 50, 0.8f, 0.05f});
    check_argmax_topk<float>(rng, 3, 600, 7);
    check_sample_slices(rng, 5, 4500);
    check_process_and_sample<float>(rng, 3, 600, SamplingParams{0.8f, 50, 0.8f, 0.f});
    check_verify(rng, VerifyMode::greedy, false, 2, 8, 300, 1.f);
    check_verify(rng, VerifyMode::rejection, true, 2, 8, 300, 0.5f);
    check_verify(rng, VerifyMode::typical, false, 2, 8, 300, 0.5f);
    check_verify(rng, VerifyMode::rejection, true, 6, 5, 4500, 1.f, false, true);
    check_verify(rng, VerifyMode::rejection, true, 2, 10, 4500, 1.f);
    check_entropy(rng, 2, 700);
    check_entropy_simd(rng);
    check_mass_simd(rng);
    check_penalize(rng, 300, 40);
    check_penalize(rng, 300, 40, true);
    check_token_logprobs(rng, 300, 5);
    check_pick_logprobs(rng, 300, 3);
    check_mask_tokens(rng, 300);
  }
  for (int round = 0; round < rounds; ++round) {
    check_sample_slices(rng, 10, 9000 + static_cast<int>(rng() % 4000));
    check_sample_slices(rng, 5, 300);
    check_argmax_topk<float>(rng, 6, 1000, 7);
    check_argmax_topk<bf16>(rng, 6, 4700, 64);
    check_argmax_topk<__half>(rng, 6, 37, 37);
    SamplingParams sp;
    check_process_and_sample<float>(rng, 6, 1000, sp);
    sp.temperature = 0.f;
    check_process_and_sample<bf16>(rng, 6, 700, sp);
    sp = SamplingParams{0.7f, 5, 1.f, 0.f};
    check_process_and_sample<float>(rng, 6, 1000, sp);
    sp = SamplingParams{1.f, 0, 0.9f, 0.f};
    check_process_and_sample<__half>(rng, 6, 5000, sp);
    sp = SamplingParams{0.8f, 50, 0.8f, 0.f};
    check_process_and_sample<float>(rng, 6, 1000, sp);
    sp = SamplingParams{1.3f, 0, 1.f, 0.05f};
    check_process_and_sample<float>(rng, 6, 800, sp);
    check_verify(rng, VerifyMode::greedy, false, 3, 12, 500, 1.f);
    check_verify(rng, VerifyMode::greedy, false, 3, 12, 9000, 1.f);
    check_verify(rng, VerifyMode::rejection, false, 3, 12, 500, 0.5f);
    check_verify(rng, VerifyMode::rejection, true, 3, 12, 500, 0.5f);
    check_verify(rng, VerifyMode::rejection, true, 2, 6, 4500, 1.f);
    check_verify(rng, VerifyMode::typical, false, 3, 12, 500, 0.5f);
    check_verify(rng, VerifyMode::rejection, true, 3, 12, 500, 0.5f, true);
    check_verify(rng, VerifyMode::rejection, false, 3, 12, 500, 0.5f, true);
    check_verify(rng, VerifyMode::typical, false, 3, 12, 500, 0.5f, true);
    // Rows over several mass slices (and not whole 512-column stripes).
    check_verify(rng, VerifyMode::rejection, false, 3, 12, 9000, 1.f);
    check_verify(rng, VerifyMode::typical, false, 3, 12, 9000, 1.f);
    // Draft rows on chains (one candidate child per node): the vocabulary-parallel rejection.
    check_verify(rng, VerifyMode::rejection, true, 6, 10, 500, 0.5f, false, true);
    check_verify(rng, VerifyMode::rejection, true, 3, 8, 9000, 1.f, false, true);
    check_verify(rng, VerifyMode::rejection, true, 3, 8, 300, 2.f, true, true);
    check_verify(rng, VerifyMode::rejection, true, 16, 5, 5000, 1.f, false, true);
    check_verify(rng, VerifyMode::rejection, true, 32, 6, 20000, 1.f, false, true);
    // Draft rows on trees (sibling candidates: a residual of a residual): the sibling rounds + walk 3.
    check_verify(rng, VerifyMode::rejection, true, 3, 12, 9000, 1.f);
    check_verify(rng, VerifyMode::rejection, true, 4, 24, 300, 0.7f);
    check_verify(rng, VerifyMode::rejection, true, 2, 16, 40, 1.5f);
    check_verify(rng, VerifyMode::rejection, true, 3, 12, 5000, 1.f, true);
    check_verify(rng, VerifyMode::rejection, true, 6, 9, 200, 1.f, false, false, true);
    check_entropy(rng, 6, 3000);
    check_entropy_simd(rng);
    check_mass_simd(rng);
    check_penalize(rng, 50, 30);
    check_penalize(rng, 3000, 1500);  // histories longer than a block's threads
    check_mask_tokens(rng, 33 + static_cast<int>(rng() % 3000));
    check_penalize(rng, 50, 30, true);
    check_token_logprobs(rng, 7, 7);
    check_token_logprobs(rng, 700, 0);
    check_token_logprobs(rng, 3000, 20);
    check_pick_logprobs(rng, 50, 0);
    check_pick_logprobs(rng, 3000, 20);
    // processLogits by slices: every filter, each alone and together, slices cut short, 2-byte logits.
    // (The first round only: an emulated launch spawns a thread per CUDA thread, and these make ~1400
    // blocks of 256; the seed changes every run.)
    if (round > 0) continue;
    check_process_slices<float>(rng, 6, 9000 + static_cast<int>(rng() % 4000), SamplingParams{0.8f, 50, 0.8f, 0.05f});
    check_process_slices<float>(rng, 6, 8193, SamplingParams{});
    check_process_slices<bf16>(rng, 6, 12288, SamplingParams{0.f, 0, 1.f, 0.f});
    check_process_slices<float>(rng, 6, 9000, SamplingParams{0.7f, 5000, 1.f, 0.f});  // top-k past a slice
    check_process_slices<__half>(rng, 6, 10000, SamplingParams{1.f, 0, 0.9f, 0.f});
    check_process_slices<float>(rng, 6, 4097, SamplingParams{1.3f, 0, 1.f, 0.05f});
    check_process_slices<float>(rng, 6, 12289, SamplingParams{1.f, 3, 0.5f, 0.f});
  }
  if (rounds > 0) check_no_mass(1500);
  return emu::summary(seed);
}

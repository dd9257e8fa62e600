// Fuzz target: batched tree verification (ops::verify, cpp/core/ops_sampling.cc, and the CPU walk of
// cpp/core/spec_math.h) on structured inputs decoded from the bytes: a ragged batch of trees
// (indptr, parents with -1/-2, tokens), target rows (logits, or probabilities with NaN, Inf,
// negatives, zero rows), draft rows, seeds, typical parameters, and now and then one argument
// damaged (a wrong shape, dtype or index). A run must either be rejected with E_ARG or return a
// result that keeps the contract: every sequence accepts a root-first path of its tree, the
// emitted tokens are the accepted children's tokens and then one token in the vocabulary that the
// target row allows (p > 0; greedy: the argmax), and depthAccepts counts the paths' depths.
#include <cmath>

#include "../cpp/core/ops_sampling.h"
#include "../cpp/core/spec_math.h"
#include "fuzz_common.h"

using namespace specdec;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_process();
  return 0;
}

namespace {

Tensor i32_tensor(const std::vector<int32_t>& v) {
  return Tensor::from_host(DType::i32, {static_cast<int64_t>(v.size())}, v.data());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader r(data, size);
  VerifyArgs a;
  a.mode = static_cast<VerifyMode>(r.range(0, 2));
  const int B = static_cast<int>(r.range(0, 4));
  const int V = static_cast<int>(r.range(1, 12));
  std::vector<int32_t> indptr{0}, parents, tokens;
  for (int b = 0; b < B; ++b) {
    const int n = static_cast<int>(r.range(1, 9));
    for (int i = 0; i < n; ++i) {
      const uint8_t k = r.u8();
      parents.push_back(i == 0 ? -1 : k < 40 ? -2 : static_cast<int32_t>(k % i));
      tokens.push_back(static_cast<int32_t>(r.range(0, V - 1)));
    }
    indptr.push_back(indptr.back() + n);
  }
  const int N = static_cast<int>(parents.size());
  const bool normalise = r.flag();  // rows that are distributions, or raw hostile values
  auto rows = [&](int n) {
    std::vector<float> x(static_cast<size_t>(n) * V);
    for (float& v : x) v = r.f32_hostile();
    if (normalise)
      for (int i = 0; i < n; ++i) {
        double s = 0;
        for (int j = 0; j < V; ++j) s += std::isfinite(x[i * V + j]) && x[i * V + j] > 0 ? x[i * V + j] : 0;
        for (int j = 0; j < V; ++j) {
          float& v = x[i * V + j];
          v = (std::isfinite(v) && v > 0 && s > 0) ? static_cast<float>(v / s) : 0.0f;
        }
      }
    return x;
  };
  std::vector<float> target = rows(N);
  a.target = Tensor::from_host(DType::f32, {N, V}, target.data());
  const bool with_draft = a.mode == VerifyMode::rejection && r.flag();
  std::vector<float> draft;
  if (with_draft) {
    draft = rows(N);
    a.draft = Tensor::from_host(DType::f32, {N, V}, draft.data());
  }
  std::vector<uint64_t> seeds(B), offsets(B);
  for (int b = 0; b < B; ++b) seeds[b] = r.u64(), offsets[b] = r.u64();
  if (a.mode != VerifyMode::greedy || r.flag()) {
    a.seeds = Tensor::from_host(DType::u64, {B}, seeds.data());
    a.offsets = Tensor::from_host(DType::u64, {B}, offsets.data());
  }
  a.typical_threshold = r.flag() ? r.f32_hostile() : 0.09f;
  a.typical_alpha = r.flag() ? r.f32_hostile() : 0.3f;
  const int D = static_cast<int>(r.range(0, 10));

  // Now and then one argument is damaged: the validation must name it.
  const uint8_t damage = r.u8();
  const bool damaged = damage >= 192;
  if (damaged) {
    switch (damage % 9) {
      case 0: if (!indptr.empty()) indptr[r.range(0, static_cast<int64_t>(indptr.size()) - 1)] = r.i32_hostile(N); break;
      case 1: if (N) parents[r.range(0, N - 1)] = r.i32_hostile(N); break;
      case 2: if (N) tokens[r.range(0, N - 1)] = r.i32_hostile(V); break;
      case 3: a.target = Tensor::zeros(DType::f32, {N + 1, V}); break;
      case 4:  // f16 logits are valid in greedy mode only
        a.target = Tensor::zeros(r.flag() ? DType::f16 : DType::i32, {N, V});
        target.assign(target.size(), 0.0f);
        break;
      case 5: a.draft = Tensor::zeros(DType::f32, {N, V + 1}); break;
      case 6: a.seeds = Tensor::zeros(DType::u64, {B + 1}); break;
      case 7: a.mode = static_cast<VerifyMode>(r.range(3, 100)); break;
      default: indptr.push_back(indptr.back()); break;
    }
  }
  a.node_indptr = i32_tensor(indptr);
  a.parents = i32_tensor(parents);
  a.tokens = i32_tensor(tokens);

  VerifyResult out;
  out.accepted_nodes = Tensor::zeros(DType::i32, {N});
  out.emitted = Tensor::zeros(DType::i32, {N});
  out.accept_count = Tensor::zeros(DType::i32, {B});
  out.depth_accepts = Tensor::zeros(DType::i32, {D});
  if (!fuzz::expect_ok_or({"E_ARG", "E_NUMERIC"}, [&] { ops::verify(a, out); })) return 0;
  FUZZ_ASSERT(!damaged || damage % 9 == 4 || damage % 9 == 0 || damage % 9 == 1 || damage % 9 == 2, "damage kind ",
              damage % 9, " was accepted");

  const int32_t* acc = out.accepted_nodes.ptr<int32_t>();
  const int32_t* emitted = out.emitted.ptr<int32_t>();
  const int32_t* count = out.accept_count.ptr<int32_t>();
  std::vector<int32_t> reach(D, 0);
  for (int b = 0; b < B; ++b) {
    const int s = indptr[b], n = indptr[b + 1] - s, c = count[b];
    FUZZ_ASSERT(c >= 1 && c <= n, "sequence ", b, " accepts ", c, " of ", n, " nodes");
    FUZZ_ASSERT(acc[s] == 0, "sequence ", b, ": the path starts at node ", acc[s]);
    for (int k = 1; k < c; ++k) {
      const int node = acc[s + k];
      FUZZ_ASSERT(node > 0 && node < n && parents[s + node] == acc[s + k - 1], "sequence ", b, ": accepted node ", node,
                  " is not a child of ", acc[s + k - 1]);
      FUZZ_ASSERT(emitted[s + k - 1] == tokens[s + node], "sequence ", b, ": emitted ", emitted[s + k - 1],
                  " for accepted node ", node, " with token ", tokens[s + node]);
    }
    const int last = acc[s + c - 1], tok = emitted[s + c - 1];
    FUZZ_ASSERT(tok >= 0 && tok < V, "sequence ", b, ": emitted token ", tok, " outside the vocabulary of ", V);
    const float* row = &target[static_cast<size_t>(s + last) * V];
    if (a.mode == VerifyMode::greedy) {
      int best = 0;
      for (int j = 1; j < V; ++j)
        if (sm::argmax_better(row[j], j, row[best], best)) best = j;
      FUZZ_ASSERT(tok == best, "sequence ", b, ": greedy emitted ", tok, " but the argmax is ", best);
    } else {
      FUZZ_ASSERT(sm::quantize_prob(row[tok]) > 0, "sequence ", b, ": emitted token ", tok,
                  " has probability ", row[tok], " at node ", last);
    }
    for (int d = 0; d < D && d < c - 1; ++d) reach[d]++;
  }
  for (int d = 0; d < D; ++d)
    FUZZ_ASSERT(out.depth_accepts.ptr<int32_t>()[d] == reach[d], "depthAccepts[", d, "] = ",
                out.depth_accepts.ptr<int32_t>()[d], ", expected ", reach[d]);
  return 0;
}

void fuzz::seed_inputs(std::vector<std::string>& out) {
  // Deterministic byte patterns: each decodes to a valid batch of the mode in its first byte.
  for (int mode = 0; mode < 3; ++mode)
    for (int variant = 0; variant < 3; ++variant) {
      std::string s;
      s += static_cast<char>(mode);
      s += static_cast<char>(1 + variant);  // B
      s += static_cast<char>(5 + variant);  // V
      for (int i = 0; i < 400; ++i) s += static_cast<char>((i * 37 + variant * 11 + mode * 5) & 0xff);
      out.push_back(s);
    }
}

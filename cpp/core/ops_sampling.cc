// Validating dispatchers for sampling and verification: every check happens here, so the CPU and
// CUDA backends report the same E_ARG errors, naming the argument.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops_sampling.h"
#include "spec_math.h"
#include "transfers.h"

namespace specdec {
namespace ops {

namespace {

#ifdef SPECDEC_WITH_CUDA
#define SPECDEC_SAMPLING_DISPATCH(dev, call) \
  do {                                       \
    note_op();                               \
    if ((dev) == Device::cpu) cpu::call;     \
    else cuda::call;                         \
  } while (0)
#else
#define SPECDEC_SAMPLING_DISPATCH(dev, call)                                                    \
  do {                                                                                          \
    note_op();                                                                                  \
    if ((dev) == Device::cpu) cpu::call;                                                        \
    else fail("E_UNSUPPORTED", "sampling ops: this build has no CUDA backend");                 \
  } while (0)
#endif

void check_params(const SamplingParams& p) {
  SPECDEC_CHECK(std::isfinite(p.temperature) && p.temperature >= 0.0f, "E_ARG",
                "temperature: expected a finite number >= 0, got ", p.temperature);
  SPECDEC_CHECK(p.top_k >= 0, "E_ARG", "topK: expected an integer >= 0, got ", p.top_k);
  SPECDEC_CHECK(p.top_p > 0.0f && p.top_p <= 1.0f, "E_ARG", "topP: expected 0 < topP <= 1, got ", p.top_p);
  SPECDEC_CHECK(p.min_p >= 0.0f && p.min_p < 1.0f, "E_ARG", "minP: expected 0 <= minP < 1, got ", p.min_p);
}

// Host copy of a small i32 tensor (index arrays live on the target's device).
std::vector<int32_t> host_i32(const Tensor& t) {
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  t.copy_to_host(v.data(), v.size() * 4);
  return v;
}

}  // namespace

void process_logits(const Tensor& logits, const SamplingParams& params, Tensor& probs) {
  check_arg(logits, "logits", {DType::f32, DType::f16, DType::bf16}, {-1, -1});
  SPECDEC_CHECK(logits.size(1) >= 1, "E_ARG", "logits: the vocabulary is empty (", logits.describe(), ")");
  check_arg(probs, "probs", {DType::f32}, {logits.size(0), logits.size(1)});
  check_same_device({&logits, &probs}, "process_logits");
  check_params(params);
  SPECDEC_SAMPLING_DISPATCH(logits.device(), process_logits(logits, params, probs));
}

void argmax(const Tensor& logits, Tensor& out) {
  check_arg(logits, "logits", {DType::f32, DType::f16, DType::bf16}, {-1, -1});
  SPECDEC_CHECK(logits.size(1) >= 1, "E_ARG", "logits: the vocabulary is empty (", logits.describe(), ")");
  check_arg(out, "out", {DType::i32}, {logits.size(0)});
  check_same_device({&logits, &out}, "argmax");
  SPECDEC_SAMPLING_DISPATCH(logits.device(), argmax(logits, out));
}

void sample(const Tensor& probs, const Tensor& seeds, const Tensor& offsets, Tensor& out) {
  check_arg(probs, "probs", {DType::f32}, {-1, -1});
  SPECDEC_CHECK(probs.size(1) >= 1, "E_ARG", "probs: the vocabulary is empty (", probs.describe(), ")");
  const int64_t N = probs.size(0);
  check_arg(seeds, "seeds", {DType::u64}, {N});
  check_arg(offsets, "offsets", {DType::u64}, {N});
  check_arg(out, "out", {DType::i32}, {N});
  check_same_device({&probs, &seeds, &offsets, &out}, "sample");
  SPECDEC_SAMPLING_DISPATCH(probs.device(), sample(probs, seeds, offsets, out));
}

void top_k(const Tensor& x, int32_t k, Tensor& vals, Tensor& ids) {
  check_arg(x, "x", {DType::f32, DType::f16, DType::bf16}, {-1, -1});
  SPECDEC_CHECK(k >= 1 && k <= x.size(1), "E_ARG", "k: expected 1 <= k <= ", x.size(1), " (the row length), got ", k);
  check_arg(vals, "vals", {DType::f32}, {x.size(0), k});
  check_arg(ids, "ids", {DType::i32}, {x.size(0), k});
  check_same_device({&x, &vals, &ids}, "top_k");
  SPECDEC_SAMPLING_DISPATCH(x.device(), top_k(x, k, vals, ids));
}

void verify(const VerifyArgs& a, VerifyResult& out) {
  SPECDEC_CHECK(a.mode == VerifyMode::greedy || a.mode == VerifyMode::rejection || a.mode == VerifyMode::typical,
                "E_ARG", "mode: unknown verify mode ", static_cast<int>(a.mode));
  check_arg_dim(a.node_indptr, "nodeIndptr", {DType::i32}, 1);
  SPECDEC_CHECK(a.node_indptr.size(0) >= 1, "E_ARG", "nodeIndptr: expected B + 1 >= 1 entries");
  const int64_t B = a.node_indptr.size(0) - 1;
  check_arg_dim(a.parents, "parents", {DType::i32}, 1);
  const int64_t N = a.parents.size(0);
  check_arg(a.tokens, "tokens", {DType::i32}, {N});
  if (a.mode == VerifyMode::greedy) check_arg(a.target, "target", {DType::f32, DType::f16, DType::bf16}, {N, -1});
  else check_arg(a.target, "target", {DType::f32}, {N, -1});
  const int64_t V = a.target.size(1);
  SPECDEC_CHECK(V >= 1, "E_ARG", "target: the vocabulary is empty (", a.target.describe(), ")");
  if (a.draft.defined()) {
    SPECDEC_CHECK(a.mode == VerifyMode::rejection, "E_ARG", "draft: only the rejection mode takes draft distributions");
    check_arg(a.draft, "draft", {DType::f32}, {N, V});
  }
  if (a.mode != VerifyMode::greedy) {
    SPECDEC_CHECK(a.seeds.defined(), "E_ARG", "seeds: required by the ", a.mode == VerifyMode::typical ? "typical" : "rejection", " mode");
    SPECDEC_CHECK(a.offsets.defined(), "E_ARG", "offsets: required by the ", a.mode == VerifyMode::typical ? "typical" : "rejection", " mode");
  }
  if (a.seeds.defined() || a.offsets.defined()) {
    check_arg(a.seeds, "seeds", {DType::u64}, {B});
    check_arg(a.offsets, "offsets", {DType::u64}, {B});
  }
  if (a.mode == VerifyMode::typical) {
    SPECDEC_CHECK(std::isfinite(a.typical_threshold) && a.typical_threshold >= 0.0f, "E_ARG",
                  "typicalThreshold: expected a finite number >= 0, got ", a.typical_threshold);
    SPECDEC_CHECK(std::isfinite(a.typical_alpha) && a.typical_alpha >= 0.0f, "E_ARG",
                  "typicalAlpha: expected a finite number >= 0, got ", a.typical_alpha);
  }
  check_arg(out.accepted_nodes, "acceptedNodes", {DType::i32}, {N});
  check_arg(out.emitted, "emitted", {DType::i32}, {N});
  check_arg(out.accept_count, "acceptCount", {DType::i32}, {B});
  check_arg_dim(out.depth_accepts, "depthAccepts", {DType::i32}, 1);
  check_same_device({&a.target, &a.node_indptr, &a.parents, &a.tokens, &a.draft, &a.seeds, &a.offsets,
                     &out.accepted_nodes, &out.emitted, &out.accept_count, &out.depth_accepts},
                    "verify");

  // The tree structure is checked on the host (small arrays) so that kernels can trust it.
  SPECDEC_CHECK((a.h_node_indptr == nullptr) == (a.h_parents == nullptr) && (a.h_parents == nullptr) == (a.h_tokens == nullptr),
                "E_ARG", "verify: give all three host copies (nodeIndptr, parents, tokens) or none");
  const std::vector<int32_t> indptr = a.h_node_indptr ? std::vector<int32_t>(a.h_node_indptr, a.h_node_indptr + B + 1)
                                                      : host_i32(a.node_indptr);
  const std::vector<int32_t> parents = a.h_parents ? std::vector<int32_t>(a.h_parents, a.h_parents + N) : host_i32(a.parents);
  const std::vector<int32_t> tokens = a.h_tokens ? std::vector<int32_t>(a.h_tokens, a.h_tokens + N) : host_i32(a.tokens);
  SPECDEC_CHECK(indptr[0] == 0, "E_ARG", "nodeIndptr: must start at 0, got ", indptr[0]);
  SPECDEC_CHECK(indptr[B] == N, "E_ARG", "nodeIndptr: last entry ", indptr[B], " does not match the ", N,
                " nodes in parents/tokens");
  for (int64_t b = 0; b < B; ++b)  // strictly increasing from 0 to N: every row index below is in range
    SPECDEC_CHECK(indptr[b + 1] > indptr[b], "E_ARG", "nodeIndptr: sequence ", b,
                  " has no nodes (each needs its root; entries ", indptr[b], ", ", indptr[b + 1], ")");
  for (int64_t b = 0; b < B; ++b) {
    const int32_t s = indptr[b], e = indptr[b + 1];
    SPECDEC_CHECK(parents[s] == -1, "E_ARG", "parents: node 0 of sequence ", b, " is the root and must have parent -1, got ",
                  parents[s]);
    for (int32_t i = s + 1; i < e; ++i) {
      const int32_t p = parents[i];
      SPECDEC_CHECK(p == -2 || (p >= 0 && p < i - s), "E_ARG", "parents: node ", i - s, " of sequence ", b, " has parent ", p,
                    " (expected a node index in [0, ", i - s, ") local to the sequence, or -2 for a non-candidate)");
    }
  }
  for (int64_t i = 0; i < N; ++i)
    SPECDEC_CHECK(tokens[i] >= 0 && tokens[i] < V, "E_ARG", "tokens: token ", tokens[i], " at node ", i,
                  " is outside the vocabulary [0, ", V, ")");
  if (a.draft.defined()) {
    // The tree's shape picks CUDA's path for draft rows; it is found here, never taken from the caller.
    VerifyArgs shaped = a;
    shaped.max_children = 0;
    for (int64_t b = 0; b < B; ++b)
      shaped.max_children = std::max(shaped.max_children,
                                     sm::max_candidate_children(parents.data() + indptr[b], indptr[b + 1] - indptr[b]));
    SPECDEC_SAMPLING_DISPATCH(a.target.device(), verify(shaped, out));
  } else {
    SPECDEC_SAMPLING_DISPATCH(a.target.device(), verify(a, out));
  }
  // A target row with no positive mass (all zero, negative or NaN) has nothing to draw from: the
  // walk leaves sm::kNoMass as the last emitted token. CPU results are on the host here; the N-API
  // glue checks CUDA results once they are read back (reading them here would add a wait per step).
  if (a.target.device() == Device::cpu)
    for (int64_t b = 0; b < B; ++b) {
      const int32_t k = out.accept_count.ptr<int32_t>()[b] - 1;
      check_mass(out.emitted.ptr<int32_t>()[indptr[b] + k], "verify: sequence ", b, ", emitted token ", k);
    }
}

void check_penalty_histories(const PenaltyArgs& a, int64_t V) {
  SPECDEC_CHECK(std::isfinite(a.repetition) && a.repetition > 0.0f, "E_ARG", "repetitionPenalty: expected a finite number > 0, got ", a.repetition);
  SPECDEC_CHECK(std::isfinite(a.presence), "E_ARG", "presencePenalty: expected a finite number, got ", a.presence);
  SPECDEC_CHECK(std::isfinite(a.frequency), "E_ARG", "frequencyPenalty: expected a finite number, got ", a.frequency);
  SPECDEC_CHECK(!a.hist_indptr.empty() && a.hist_indptr[0] == 0, "E_ARG", "histIndptr: expected S + 1 >= 1 offsets from 0");
  const int64_t S = static_cast<int64_t>(a.hist_indptr.size()) - 1;
  const int64_t H = static_cast<int64_t>(a.hist_tokens.size());
  SPECDEC_CHECK(static_cast<int64_t>(a.hist_counts.size()) == H, "E_ARG", "histCounts: ", a.hist_counts.size(), " entries for ", H, " tokens");
  SPECDEC_CHECK(a.hist_indptr[S] == H, "E_ARG", "histIndptr: ends at ", a.hist_indptr[S], ", expected ", H, " (the tokens' count)");
  for (int64_t s = 0; s < S; ++s) {
    const int32_t b = a.hist_indptr[s], e = a.hist_indptr[s + 1];
    // (e <= H before the tokens are read: an offset past them that a later one undercuts.)
    SPECDEC_CHECK(b <= e && e <= H, "E_ARG", "histIndptr: ", b <= e ? "passes the tokens' end" : "decreases", " at sequence ", s);
    for (int32_t j = b; j < e; ++j) {
      const int32_t t = a.hist_tokens[j];
      SPECDEC_CHECK(t >= 0 && t < V, "E_ARG", "histTokens: token ", t, " of sequence ", s, " is outside the vocabulary [0, ", V, ")");
      SPECDEC_CHECK(j == b || t > a.hist_tokens[j - 1], "E_ARG", "histTokens: sequence ", s, "'s tokens must be distinct and ascending (", a.hist_tokens[j - 1], " then ", t, ")");
      SPECDEC_CHECK(a.hist_counts[j] >= 0 && a.hist_counts[j] < (1 << 28), "E_ARG", "histCounts: ", a.hist_counts[j], " for token ", t, " (expected 0 <= count < 2^28)");
    }
  }
  SPECDEC_CHECK(a.bias_values.size() == a.bias_tokens.size(), "E_ARG", "logitBias: ", a.bias_values.size(), " values for ", a.bias_tokens.size(), " tokens");
  for (size_t i = 0; i < a.bias_tokens.size(); ++i) {
    const int32_t t = a.bias_tokens[i];
    const float b = a.bias_values[i];
    SPECDEC_CHECK(t >= 0 && t < V, "E_ARG", "logitBias: token ", t, " is outside the vocabulary [0, ", V, ")");
    SPECDEC_CHECK(i == 0 || t > a.bias_tokens[i - 1], "E_ARG", "logitBias: the tokens must be distinct and ascending (", i == 0 ? 0 : a.bias_tokens[i - 1], " then ", t, ")");
    // (-inf bans the token; +inf or NaN would leave its row without a distribution.)
    SPECDEC_CHECK(std::isfinite(b) || (std::isinf(b) && b < 0.0f), "E_ARG", "logitBias: token ", t, "'s bias is ", b, " (expected a finite number or -Infinity)");
  }
  if (a.ban_indptr.empty()) {
    SPECDEC_CHECK(a.ban_tokens.empty() && a.ban_before.empty(), "E_ARG", "banIndptr: missing beside banTokens / banBefore");
    return;
  }
  SPECDEC_CHECK(static_cast<int64_t>(a.ban_indptr.size()) == S + 1 && a.ban_indptr[0] == 0, "E_ARG", "banIndptr: expected ", S + 1, " offsets from 0 (one list per history)");
  SPECDEC_CHECK(static_cast<int64_t>(a.ban_before.size()) == S, "E_ARG", "banBefore: ", a.ban_before.size(), " entries for ", S, " histories");
  const int64_t B = static_cast<int64_t>(a.ban_tokens.size());
  SPECDEC_CHECK(a.ban_indptr[S] == B, "E_ARG", "banIndptr: ends at ", a.ban_indptr[S], ", expected ", B, " (the banned tokens' count)");
  for (int64_t s = 0; s < S; ++s) {
    const int32_t b = a.ban_indptr[s], e = a.ban_indptr[s + 1];
    SPECDEC_CHECK(b <= e && e <= B, "E_ARG", "banIndptr: ", b <= e ? "passes the tokens' end" : "decreases", " at sequence ", s);
    SPECDEC_CHECK(a.ban_before[s] >= 0, "E_ARG", "banBefore: ", a.ban_before[s], " for sequence ", s, " (expected >= 0)");
    for (int32_t j = b; j < e; ++j) {
      const int32_t t = a.ban_tokens[j];
      SPECDEC_CHECK(t >= 0 && t < V, "E_ARG", "banTokens: token ", t, " of sequence ", s, " is outside the vocabulary [0, ", V, ")");
      SPECDEC_CHECK(j == b || t > a.ban_tokens[j - 1], "E_ARG", "banTokens: sequence ", s, "'s tokens must be distinct and ascending (", a.ban_tokens[j - 1], " then ", t, ")");
    }
  }
}

void penalize(Tensor& logits, const PenaltyArgs& a) {
  check_arg(logits, "logits", {DType::f32}, {-1, -1});
  const int64_t N = logits.size(0), V = logits.size(1);
  SPECDEC_CHECK(static_cast<int64_t>(a.row_seq.size()) == N, "E_ARG", "rowSeq: ", a.row_seq.size(), " entries for ", N, " logits rows");
  check_penalty_histories(a, V);
  const int64_t S = static_cast<int64_t>(a.hist_indptr.size()) - 1;
  for (int64_t r = 0; r < N; ++r)
    SPECDEC_CHECK(a.row_seq[r] >= 0 && a.row_seq[r] < S, "E_ARG", "rowSeq: row ", r, " names sequence ", a.row_seq[r], " of ", S);
  SPECDEC_CHECK(static_cast<int64_t>(a.path_indptr.size()) == N + 1 && a.path_indptr[0] == 0, "E_ARG", "pathIndptr: expected ", N + 1, " offsets from 0");
  const int64_t P = static_cast<int64_t>(a.path_tokens.size());
  SPECDEC_CHECK(a.path_indptr[N] == P, "E_ARG", "pathIndptr: ends at ", a.path_indptr[N], ", expected ", P, " (the path tokens' count)");
  for (int64_t r = 0; r < N; ++r) {
    SPECDEC_CHECK(a.path_indptr[r] <= a.path_indptr[r + 1], "E_ARG", "pathIndptr: decreases at row ", r);
    // Counts stay below 2^29 (penalized_logit's exact product): a path adds at most its length.
    SPECDEC_CHECK(a.path_indptr[r + 1] - a.path_indptr[r] <= (1 << 20), "E_ARG", "pathIndptr: row ", r, "'s path is longer than 2^20 tokens");
  }
  if (a.path_source) {
    check_arg(*a.path_source, "pathSource", {DType::i32}, {-1});
    check_same_device({&logits, a.path_source}, "penalize");
    const int64_t n = a.path_source->numel();
    for (int64_t j = 0; j < P; ++j)
      SPECDEC_CHECK(a.path_tokens[j] >= 0 && a.path_tokens[j] < n, "E_ARG", "pathTokens: index ", a.path_tokens[j], " is outside the path source's ", n, " entries");
  } else {
    for (int64_t j = 0; j < P; ++j)
      SPECDEC_CHECK(a.path_tokens[j] >= 0 && a.path_tokens[j] < V, "E_ARG", "pathTokens: token ", a.path_tokens[j], " is outside the vocabulary [0, ", V, ")");
  }
  if (a.staged) {
    const PenaltyArgs::Staged& d = *a.staged;
    check_arg(d.row_seq, "staged.rowSeq", {DType::i32}, {N});
    check_arg(d.hist_indptr, "staged.histIndptr", {DType::i32}, {static_cast<int64_t>(a.hist_indptr.size())});
    check_arg(d.hist_tokens, "staged.histTokens", {DType::i32}, {static_cast<int64_t>(a.hist_tokens.size())});
    check_arg(d.hist_counts, "staged.histCounts", {DType::i32}, {static_cast<int64_t>(a.hist_counts.size())});
    check_arg(d.path_indptr, "staged.pathIndptr", {DType::i32}, {N + 1});
    check_arg(d.path_tokens, "staged.pathTokens", {DType::i32}, {P});
    check_arg(d.bias_tokens, "staged.biasTokens", {DType::i32}, {static_cast<int64_t>(a.bias_tokens.size())});
    check_arg(d.bias_values, "staged.biasValues", {DType::f32}, {static_cast<int64_t>(a.bias_values.size())});
    check_arg(d.ban_indptr, "staged.banIndptr", {DType::i32}, {static_cast<int64_t>(a.ban_indptr.size())});
    check_arg(d.ban_tokens, "staged.banTokens", {DType::i32}, {static_cast<int64_t>(a.ban_tokens.size())});
    check_arg(d.ban_before, "staged.banBefore", {DType::i32}, {static_cast<int64_t>(a.ban_before.size())});
    check_same_device({&logits, &d.row_seq, &d.hist_indptr, &d.hist_tokens, &d.hist_counts, &d.path_indptr, &d.path_tokens, &d.bias_tokens, &d.bias_values,
                       &d.ban_indptr, &d.ban_tokens, &d.ban_before},
                      "penalize");
  }
  if (N == 0) return;
  SPECDEC_SAMPLING_DISPATCH(logits.device(), penalize(logits, a));
}

void mask_tokens(Tensor& logits, const std::vector<int32_t>& rows, const std::vector<uint32_t>& allowed) {
  check_arg(logits, "logits", {DType::f32}, {-1, -1});
  const int64_t N = logits.size(0), V = logits.size(1), M = static_cast<int64_t>(rows.size()), W = (V + 31) / 32;
  SPECDEC_CHECK(static_cast<int64_t>(allowed.size()) == M * W, "E_ARG", "allowed: ", allowed.size(), " words for ", M, " rows of ", W,
                " words (ceil(", V, " / 32))");
  for (int64_t m = 0; m < M; ++m) {
    SPECDEC_CHECK(rows[m] >= 0 && rows[m] < N, "E_ARG", "rows: row ", rows[m], " (entry ", m, ") is outside the ", N, " logits rows");
    bool any = false;
    for (int64_t w = 0; w < W && !any; ++w) {
      // (Bits past V in the last word do not count.)
      const uint32_t valid = w == W - 1 && V % 32 != 0 ? (1u << (V % 32)) - 1u : ~0u;
      any = (allowed[m * W + w] & valid) != 0;
    }
    SPECDEC_CHECK(any, "E_ARG", "allowed: row ", rows[m], " (entry ", m, ") allows no token of the vocabulary");
  }
  if (M == 0) return;
  SPECDEC_SAMPLING_DISPATCH(logits.device(), mask_tokens(logits, rows, allowed));
}

void token_logprobs(const Tensor& logits, const std::vector<int32_t>& rows, const std::vector<int32_t>& tokens, int32_t k, Tensor& lp,
                    Tensor& top_lp, Tensor& top_ids) {
  check_arg(logits, "logits", {DType::f32}, {-1, -1});
  const int64_t N = logits.size(0), V = logits.size(1), M = static_cast<int64_t>(rows.size());
  SPECDEC_CHECK(static_cast<int64_t>(tokens.size()) == M, "E_ARG", "tokens: ", tokens.size(), " entries for ", M, " rows");
  SPECDEC_CHECK(k >= 0 && k <= V && k <= 1024, "E_ARG", "k: expected 0 <= k <= min(1024, ", V, "), got ", k);
  for (int64_t m = 0; m < M; ++m) {
    SPECDEC_CHECK(rows[m] >= 0 && rows[m] < N, "E_ARG", "rows: row ", rows[m], " (entry ", m, ") is outside the ", N, " logits rows");
    SPECDEC_CHECK(tokens[m] >= 0 && tokens[m] < V, "E_ARG", "tokens: token ", tokens[m], " (entry ", m, ") is outside the vocabulary [0, ", V, ")");
  }
  check_arg(lp, "lp", {DType::f32}, {M});
  check_arg(top_lp, "topLogprobs", {DType::f32}, {M, k});
  check_arg(top_ids, "topIds", {DType::i32}, {M, k});
  check_same_device({&logits, &lp, &top_lp, &top_ids}, "token_logprobs");
  if (M == 0) return;
  SPECDEC_SAMPLING_DISPATCH(logits.device(), token_logprobs(logits, rows, tokens, k, lp, top_lp, top_ids));
}

void pick_logprobs(const Tensor& logits, const Tensor& picks, const std::vector<int32_t>& rows, int32_t k, Tensor& lp, Tensor& top_lp,
                   Tensor& top_ids) {
  check_arg(logits, "logits", {DType::f32}, {-1, -1});
  const int64_t N = logits.size(0), V = logits.size(1);
  SPECDEC_CHECK(k >= 0 && k <= V && k <= 1024, "E_ARG", "k: expected 0 <= k <= min(1024, ", V, "), got ", k);
  for (size_t m = 0; m < rows.size(); ++m)
    SPECDEC_CHECK(rows[m] >= 0 && rows[m] < N, "E_ARG", "rows: row ", rows[m], " (entry ", m, ") is outside the ", N, " logits rows");
  check_arg(picks, "picks", {DType::i32}, {N});
  check_arg(lp, "lp", {DType::f32}, {N});
  check_arg(top_lp, "topLogprobs", {DType::f32}, {N, k});
  check_arg(top_ids, "topIds", {DType::i32}, {N, k});
  check_same_device({&logits, &picks, &lp, &top_lp, &top_ids}, "pick_logprobs");
  if (rows.empty()) return;
  SPECDEC_SAMPLING_DISPATCH(logits.device(), pick_logprobs(logits, picks, rows, k, lp, top_lp, top_ids));
}

}  // namespace ops
}  // namespace specdec

// Op contract: logits processing, sampling and batched verification of token trees.
// The scalar algorithmic cores (Philox, the acceptance tests, the tree walk) live once in
// spec_math.h as __host__ __device__ functions compiled by both backends.
#pragma once
#include <cstdint>
#include <vector>

#include "error.h"
#include "spec_math.h"
#include "tensor.h"

namespace specdec {

struct SamplingParams {
  float temperature = 1.0f;  // 0 = greedy: probs become one-hot at the argmax (lowest index on ties)
  int32_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // 1 = off; keep the smallest prefix (by descending prob) with mass >= top_p
  float min_p = 0.0f;        // 0 = off; drop tokens with p < min_p * max p
};

enum class VerifyMode : int32_t {
  greedy = 0,     // accept a child iff its token is the target argmax at its parent (longest path)
  rejection = 1,  // exact: recursive rejection over siblings (chain = one child per node)
  typical = 2,    // Medusa typical acceptance: p(x) > min(eps, delta * exp(-H(p))). LOSSY.
};

struct VerifyArgs {
  VerifyMode mode = VerifyMode::greedy;
  // Ragged batch of trees. Node 0 of each sequence is its root: the last emitted token, not yet
  // in the KV cache (parents = -1). Other nodes have parents[i] in [0, i) (indices local to the
  // sequence); -2 marks a node that is not a candidate (e.g. lookahead's own branch).
  Tensor node_indptr;  // i32 [B+1]
  Tensor parents;      // i32 [N]
  Tensor tokens;       // i32 [N]
  // Target output at every node (the distribution of that node's child):
  //   greedy: logits [N, V] f32|f16|bf16;  rejection/typical: processed probs f32 [N, V].
  Tensor target;
  // rejection only: f32 [N, V], the draft distribution node i's children were drawn from
  // (without replacement, in child order). Undefined = deterministic drafts (q one-hot per child).
  Tensor draft;
  Tensor seeds;    // u64 [B]  (rejection/typical; Philox key)
  Tensor offsets;  // u64 [B]  (Philox counter offset; the caller advances it per call)
  float typical_threshold = 0.09f;  // epsilon (Medusa posterior_threshold)
  float typical_alpha = 0.3f;       // delta (Medusa posterior_alpha)
  // The same values as node_indptr / parents / tokens on the host, when the caller has them: the
  // tree is validated from these (no wait). Null: read back from the device (a counted wait).
  const int32_t* h_node_indptr = nullptr;
  const int32_t* h_parents = nullptr;
  const int32_t* h_tokens = nullptr;
  // Set by ops::verify from the validated tree when there are draft rows: the most candidate children
  // any node has (sm::max_candidate_children; -1 = not known). CUDA's rejection with draft rows runs
  // vocabulary-parallel when it is known and at most verify_kernels::kMaxSiblings.
  int max_children = -1;
};

struct VerifyResult {
  Tensor accepted_nodes;  // i32 [N] ragged by node_indptr: first accept_count[b] entries = accepted nodes, root first
  Tensor emitted;         // i32 [N] ragged by node_indptr: first accept_count[b] entries = emitted tokens
                          //   (accepted draft tokens, then one correction/bonus token)
  Tensor accept_count;    // i32 [B]: accepted nodes incl. the root = tokens emitted
  Tensor depth_accepts;   // i32 [D]: += 1 for each sequence whose accepted path reaches depth d+1 (not cleared)
};

// Verification inputs that went to the device with a forward's one upload (LlamaModel::forward with
// a stage request): views of that upload, and the host copies the tree is validated from. A step
// that verifies its forward's tree then uploads nothing more.
struct StagedTree {
  Tensor node_indptr, parents, tokens;  // i32 [B+1], [N], [N] (tokens with any device tails applied)
  Tensor seeds, offsets;                // u64 [B] each, or undefined
  std::vector<int32_t> h_node_indptr, h_parents, h_tokens;  // tokens: placeholders where tails are
  std::vector<uint64_t> h_seeds, h_offsets;
  // Parts verified separately (sequences s0 .. s1-1 each, e.g. an engine's sampling groups): their
  // node offsets counted from the part's first node, staged too. Empty: the batch is one part.
  struct Part {
    int32_t s0 = 0, s1 = 0;
    Tensor node_indptr;                   // i32 [s1 - s0 + 1], from 0
    std::vector<int32_t> h_node_indptr;
  };
  std::vector<Part> parts;
};

// A verification's accepted paths, on the device where it ran and on the host (the same values:
// the host copies are the read-back of the device ones). The KV commit of those paths reads the
// device copy instead of uploading the indices again (LlamaModel::commit).
struct VerifiedPaths {
  Tensor node_indptr, accepted_nodes, accept_count;  // device: i32 [B+1] from 0, [N] ragged by node_indptr, [B]
  std::vector<int32_t> h_node_indptr, h_accepted_nodes, h_accept_count;
  int32_t seq0 = 0;  // its first sequence in the forward it verified (a staged part's s0)
};

// Repetition (transformers) and presence / frequency (OpenAI) penalties on rows of logits, before
// they are processed, sampled or verified: a speculative step's rows each see their own history
// (the sequence's, plus the tokens of the row's tree path), as the plain step at that node would.
// Row r's history is its sequence's entries hist[hist_indptr[s] .. hist_indptr[s + 1]) with
// s = row_seq[r] (distinct tokens, ascending, each with its count in the OUTPUT so far; 0 = only in
// the prompt), plus the output tokens path[path_indptr[r] .. path_indptr[r + 1]) (repeats count).
// Every token of the history gets sm::penalized_logit with its output count (history's + path's).
// A logit bias (OpenAI's logit_bias) comes first: bias_values[i] added to every row's logit of
// bias_tokens[i] (distinct, ascending; a finite bias or -inf), then the penalties read the sums
// (vLLM's order).
// Host arrays (the caller has them; validated here, sent with one upload on CUDA).
struct PenaltyArgs {
  float repetition = 1.0f;  // > 0; 1 = off
  float presence = 0.0f;    // finite; 0 = off
  float frequency = 0.0f;   // finite; 0 = off
  std::vector<int32_t> row_seq;                            // [N]
  std::vector<int32_t> hist_indptr, hist_tokens, hist_counts;  // [S + 1], [H], [H]
  std::vector<int32_t> path_indptr, path_tokens;           // [N + 1], [P]
  std::vector<int32_t> bias_tokens;                        // [Q]
  std::vector<float> bias_values;                          // [Q]
  // A sequence's stop tokens banned before its min_tokens (vLLM's min_tokens): row r of sequence s
  // gets ban_tokens[ban_indptr[s] .. ban_indptr[s + 1]) at -inf, last, when its path is shorter
  // than ban_before[s] (the row predicts output position (the sequence's so far) + (its path's
  // length); ban_before[s] = min_tokens - the output so far). All three empty: no bans.
  std::vector<int32_t> ban_indptr, ban_tokens, ban_before;  // [S + 1], [B], [S]
  // When set: path_tokens are indices into this i32 tensor on the logits' device (a native chain's
  // picks), read there; a token read outside the vocabulary (a draw without mass) is skipped.
  const Tensor* path_source = nullptr;
  // When set: the eleven arrays above already on the logits' device (bias_values f32, the others
  // i32), each as long as its host array (checked), sent with the caller's own upload (eagle_expand stages a whole expansion's);
  // the CUDA backend reads these instead of uploading its own. The host arrays stay the reference
  // the checks read.
  struct Staged {
    Tensor row_seq, hist_indptr, hist_tokens, hist_counts, path_indptr, path_tokens, bias_tokens, bias_values, ban_indptr, ban_tokens, ban_before;
  };
  const Staged* staged = nullptr;
};

// A token the kernels could not draw (sm::kNoMass: its row had no probability mass) is an error,
// not a token: E_NUMERIC, `where` naming it.
template <class... A>
void check_mass(int32_t token, const A&... where) {
  SPECDEC_CHECK(token != sm::kNoMass, "E_NUMERIC", where...,
                ": no probability mass to sample from (every probability is 0 or NaN: NaN or infinite logits?)");
}
namespace ops {
// logits [N, V] f32|f16|bf16 -> probs f32 [N, V]: softmax(logits / T), then top-k, top-p, min-p,
// renormalised. Each row independent (batch invariant).
void process_logits(const Tensor& logits, const SamplingParams& params, Tensor& probs);
// argmax per row (lowest index on ties): logits [N, V] -> i32 [N].
void argmax(const Tensor& logits, Tensor& out);
// One draw per row from probs f32 [N, V] with Philox(seeds[row], offsets[row]) -> i32 [N].
void sample(const Tensor& probs, const Tensor& seeds, const Tensor& offsets, Tensor& out);
// The k largest entries of each row, descending (lowest index first on ties): vals f32 [N, k], ids i32 [N, k].
void top_k(const Tensor& x, int32_t k, Tensor& vals, Tensor& ids);
// Verify a ragged batch of token trees, one launch. Outputs are allocated by the caller (VerifyResult shapes).
void verify(const VerifyArgs& args, VerifyResult& out);
// PenaltyArgs' penalties on logits f32 [N, V], in place (one launch).
void penalize(Tensor& logits, const PenaltyArgs& args);
// The checks penalize makes of the penalties and histories alone (rows aside), for a vocabulary of
// V: what a native chain runs before it reads the histories (E_ARG naming the field).
void check_penalty_histories(const PenaltyArgs& args, int64_t V);
// Log-probabilities of output tokens (OpenAI's logprobs): for m < M, with row = logits[rows[m]]
// (f32 [N, V]) and lse its log-sum-exp (in double), lp[m] = row[tokens[m]] - lse, and the k
// largest entries of the row (float order descending, lower index first; NaN last) as top_ids
// [M, k] with top_lp = entry - lse. A row whose largest entry is -inf has every log-probability
// -inf. Host arrays rows / tokens (checked; one upload on CUDA); outputs on the logits' device.
void token_logprobs(const Tensor& logits, const std::vector<int32_t>& rows, const std::vector<int32_t>& tokens, int32_t k, Tensor& lp,
                    Tensor& top_lp, Tensor& top_ids);
// token_logprobs of a step's own picks, for a native chain that keeps them on the device: for each
// r in rows (host, checked), lp[r] = log p of picks[r] (i32 [N], on the logits' device) on logits
// row r, and row r's k largest entries at top_lp[r] / top_ids[r] (lp f32 [N], top_* [N, k]); other
// entries are not written. A pick outside the vocabulary (sm::kNoMass: a draw without mass, which
// the chain reports) gets a NaN log-probability. The same per-row arithmetic as token_logprobs.
void pick_logprobs(const Tensor& logits, const Tensor& picks, const std::vector<int32_t>& rows, int32_t k, Tensor& lp, Tensor& top_lp,
                   Tensor& top_ids);
// A constraint's allowed tokens (a grammar's, lib/grammar.ts) on rows of logits f32 [N, V], in place:
// for m < M, row rows[m] keeps token t where bit t % 32 of allowed[m * W + t / 32] is set
// (W = ceil(V / 32)) and gets -inf elsewhere; other rows are untouched. Host arrays (checked; one
// upload on CUDA). Every listed row must keep at least one token (E_ARG otherwise: a constraint
// that leaves nothing to pick is the caller's error, not a draw without mass).
void mask_tokens(Tensor& logits, const std::vector<int32_t>& rows, const std::vector<uint32_t>& allowed);
}  // namespace ops

#define SPECDEC_SAMPLING_OPS(NS)                                                           \
  namespace NS {                                                                           \
  void process_logits(const Tensor& logits, const SamplingParams& params, Tensor& probs);  \
  void argmax(const Tensor& logits, Tensor& out);                                          \
  void sample(const Tensor& probs, const Tensor& seeds, const Tensor& offsets, Tensor& out); \
  void top_k(const Tensor& x, int32_t k, Tensor& vals, Tensor& ids);                       \
  void verify(const VerifyArgs& args, VerifyResult& out);                                  \
  void penalize(Tensor& logits, const PenaltyArgs& args);                                  \
  void token_logprobs(const Tensor& logits, const std::vector<int32_t>& rows, const std::vector<int32_t>& tokens, int32_t k, \
                      Tensor& lp, Tensor& top_lp, Tensor& top_ids);                         \
  void pick_logprobs(const Tensor& logits, const Tensor& picks, const std::vector<int32_t>& rows, int32_t k, Tensor& lp, \
                     Tensor& top_lp, Tensor& top_ids);                                       \
  void mask_tokens(Tensor& logits, const std::vector<int32_t>& rows, const std::vector<uint32_t>& allowed); \
  }
SPECDEC_SAMPLING_OPS(cpu)
SPECDEC_SAMPLING_OPS(cuda)
#undef SPECDEC_SAMPLING_OPS

}  // namespace specdec

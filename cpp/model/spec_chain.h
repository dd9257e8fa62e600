// Draft-model speculation (greedy or sampled) as one native loop: several speculative steps (the
// draft's chain, the target's forward over it, verification, the KV commit of the accepted path, the
// draft's truncation to it) in one call, with no return to JavaScript between them. Each step is
// made of the same calls, with the same arguments, as the JavaScript step of a DraftModelSpeculator
// (greedy_chain_on_device or sampled_chain, forward with the verification staged, process_logits and
// ops::verify, commit with the verified paths, truncate), so the tokens, the draws and both caches
// are those of that many such steps.
//
// Why: on a small model a speculative step's JavaScript (its objects, the N-API crossings, the
// collections) costs about as much as the target's forward (bench/README.md, "thirty-second
// session": ~50 of a 187 us step); a plain chain already avoided it (greedy_chain), so speculation
// paid it against plain decoding that did not. On a GPU the loop is the host side of a step that
// waits once: the verification's small result.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "../core/ops_sampling.h"
#include "llama.h"
#include "medusa.h"

namespace specdec {

struct SpecChainSeq {
  int target_seq = -1;
  int draft_seq = -1;
  // The history tokens the draft has not cached, the root (the last emitted token, cached by neither
  // model) last; target ids (ids outside the draft's vocabulary reach it as id 0, as draftInput does).
  std::vector<int32_t> draft_feed;
  // Draft tokens per step (0: this sequence's steps are plain, a lone root).
  int k = 0;
  // Tokens this call may emit for the sequence at most (>= 1): a step drafts at most budget - 1 -
  // (tokens emitted so far) tokens, and the loop ends before a step that could emit none.
  int budget = 1;
  // Tokens that end the sequence (EOS, a request's stop tokens): no step follows one that emitted any.
  std::vector<int32_t> stop;
  // Sampling: the sequence's Philox key, and the counter of its next draw. Each step draws its
  // drafts' counters in order, then its verification's (as the engine's sampled step draws them:
  // offset, offset + 1, ...); the result says how many were drawn.
  uint64_t seed = 0, first_offset = 0;
};

struct SpecChainArgs {
  std::vector<SpecChainSeq> seqs;
  int max_steps = 1;         // >= 1
  double max_seconds = 0;    // > 0: no step starts once the loop has run this long (the first always runs)
  // Sampled: the draft samples its chains (sampled_chain) and verification is exact rejection over
  // the processed target rows with the draft's rows (DraftModelSpeculator's sampled step).
  bool sampled = false;
  SamplingParams params;
  // Penalties on the target's rows (verification sees penalized logits): hist_* holds each
  // sequence's history when the call starts (its draft_feed included); each step adds what the
  // steps before it emitted, and a row's path is the drafted tokens above it (read on the device).
  // Null: none.
  std::shared_ptr<const PenaltyArgs> penalties;
  // With penalties: the draft drafts with them too (its picks penalized by the same histories and
  // the picks above them, ids outside its vocabulary dropped), so it predicts the penalized target;
  // false drafts from its raw rows. Either way the output is the target's.
  bool draft_penalties = true;
  // Log-probabilities of the emitted tokens (OpenAI's logprobs) for the sequences with
  // logprobs_want[b], with logprobs_k alternatives: each token's on the target row it was verified
  // on, as penalized (ops::token_logprobs), kept on the device and read once at the end. k < 0: none.
  int32_t logprobs_k = -1;
  std::vector<uint8_t> logprobs_want;
};

struct SpecChainResult {
  int steps = 0;
  // Per step and sequence (step-major, [steps * B]): drafts proposed, drafts accepted.
  std::vector<int32_t> drafted, accepted;
  // Per sequence: every emitted token, in order (per step: the accepted drafts, then the bonus).
  std::vector<std::vector<int32_t>> emitted;
  // Per sequence: the draft's cached length at the end (the history minus its uncached tail).
  std::vector<int32_t> draft_cached;
  // Sampled, per sequence: counters drawn (first_offset .. first_offset + draws - 1).
  std::vector<int32_t> draws;
  // Per step: seconds of the draft's chain, of the target's forward, and of the whole step.
  std::vector<double> draft_seconds, target_seconds, step_seconds;
  // With logprobs_k >= 0, per sequence (empty where not wanted): one entry per emitted token, and
  // logprobs_k per token.
  std::vector<std::vector<float>> lp, top_lp;
  std::vector<std::vector<int32_t>> top_ids;
};

// Runs the loop. Both models on one device; the draft's vocabulary at most the target's. Errors of
// the first step leave both models as they were (the draft truncated back) and are rethrown; an
// error in a later step ends the loop after the steps before it (their results returned, both
// caches consistent with them), so the caller's next step meets the error itself.
SpecChainResult speculative_chain(LlamaModel& target, LlamaModel& draft, const SpecChainArgs& args);

// Medusa speculation (greedy, or sampled with exact rejection) as one native loop, the same way:
// each step the candidate tree of a fixed template (a subtree of the choice tree: node i > 0 is
// rank[i] of head[i]'s top-k at the last accepted node, under parents[i]), cut to the sequence's
// budget, the target's forward over it with hidden states, verification with the heads' top-k at
// each last accepted node (one read), and the commit -- what MedusaSpeculator and the engine do
// step by step with headsOnAccepted.
struct MedusaChainSeq {
  int target_seq = -1;
  int32_t root = 0;                // the last emitted token (not cached)
  std::vector<int32_t> cands;      // [heads_known * top_k]: each head's top-k at the root's parent node
  int heads_known = 0;             // heads with candidates (nodes of deeper heads are left out)
  int budget = 1;                  // as SpecChainSeq::budget
  std::vector<int32_t> stop;       // as SpecChainSeq::stop
  // Sampling: the Philox key and the counter of the next draw. A step's verification draws emitted
  // token k at its counter + k (deterministic drafts, spec_math.h), so the counters move by the
  // tokens emitted; the result says how many were drawn.
  uint64_t seed = 0, first_offset = 0;
};

struct MedusaChainArgs {
  std::vector<MedusaChainSeq> seqs;
  std::vector<MedusaHead> heads;           // run after each verification (their count: heads_run)
  int32_t top_k = 1;
  std::vector<int32_t> parents, head, rank;  // the template: node 0 the root (head -1)
  int max_steps = 1;
  double max_seconds = 0;
  // Sampled: exact rejection of the deterministic candidates against the processed target rows
  // (its tokens are plain sampling's: spec_math.h); greedy otherwise.
  bool sampled = false;
  SamplingParams params;
  // Penalties on the target's rows, as SpecChainArgs' (a row's path: its tree ancestors' tokens).
  std::shared_ptr<const PenaltyArgs> penalties;
  // Log-probabilities of the emitted tokens (OpenAI's logprobs) for the sequences with
  // logprobs_want[b], with logprobs_k alternatives: each token's on the target row it was verified
  // on, as penalized (ops::token_logprobs), kept on the device and read once at the end. k < 0: none.
  int32_t logprobs_k = -1;
  std::vector<uint8_t> logprobs_want;
};

struct MedusaChainResult {
  int steps = 0;
  // Per step and sequence (step-major): nodes verified, the tree's depth, drafts accepted.
  std::vector<int32_t> nodes, depths, accepted;
  // Per step, sequence and depth d < heads known ([steps * B * D], D = the template's depth): the
  // rank of the emitted token at depth d among head d's candidates, -1 when it is none of them, -2
  // where nothing was recorded (past the emitted tokens or the heads known).
  std::vector<int32_t> ranks;
  int depth = 0;
  std::vector<std::vector<int32_t>> emitted;
  // Per sequence: every head's top-k at the last accepted node ([heads.size() * top_k]).
  std::vector<std::vector<int32_t>> cands;
  // Sampled, per sequence: the counters drawn (first_offset onwards: the tokens emitted).
  std::vector<int32_t> draws;
  std::vector<double> target_seconds, step_seconds;
  // With logprobs_k >= 0, per sequence (empty where not wanted): one entry per emitted token, and
  // logprobs_k per token.
  std::vector<std::vector<float>> lp, top_lp;
  std::vector<std::vector<int32_t>> top_ids;
};

MedusaChainResult medusa_chain(LlamaModel& target, const MedusaChainArgs& args);

}  // namespace specdec

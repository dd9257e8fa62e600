// The native loops of draft-model and Medusa speculation: see spec_chain.h.
#include "spec_chain.h"

#include <algorithm>
#include <chrono>

#include "../core/error.h"
#include "../core/ops_sampling.h"

namespace specdec {

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// A step's penalties without rows: base's histories with each sequence's tokens emitted so far
// (by the steps before, in this call) counted as output. A merge: base's tokens are distinct and
// ascending (the call's arguments are checked so), the emitted ones few (a std::map of the whole
// history per step cost ~10 ms at 32 sequences of 4k tokens).
PenaltyArgs histories_after(const PenaltyArgs& base, const std::vector<std::vector<int32_t>>& emitted) {
  PenaltyArgs a;
  a.repetition = base.repetition;
  a.presence = base.presence;
  a.frequency = base.frequency;
  a.bias_tokens = base.bias_tokens;
  a.bias_values = base.bias_values;
  // The bans move on by what each sequence emitted (a row's path then counts from the new root).
  a.ban_indptr = base.ban_indptr;
  a.ban_tokens = base.ban_tokens;
  a.ban_before = base.ban_before;
  for (size_t s = 0; s < a.ban_before.size(); ++s) a.ban_before[s] = std::max<int32_t>(0, a.ban_before[s] - static_cast<int32_t>(emitted[s].size()));
  a.hist_indptr.assign(1, 0);
  a.hist_tokens.reserve(base.hist_tokens.size());
  a.hist_counts.reserve(base.hist_counts.size());
  const auto copy = [&](size_t from, size_t to) {
    a.hist_tokens.insert(a.hist_tokens.end(), base.hist_tokens.begin() + static_cast<std::ptrdiff_t>(from), base.hist_tokens.begin() + static_cast<std::ptrdiff_t>(to));
    a.hist_counts.insert(a.hist_counts.end(), base.hist_counts.begin() + static_cast<std::ptrdiff_t>(from), base.hist_counts.begin() + static_cast<std::ptrdiff_t>(to));
  };
  std::vector<int32_t> em;
  for (size_t s = 0; s + 1 < base.hist_indptr.size(); ++s) {
    em = emitted[s];
    std::sort(em.begin(), em.end());
    size_t i = static_cast<size_t>(base.hist_indptr[s]);
    const size_t end = static_cast<size_t>(base.hist_indptr[s + 1]);
    // Per distinct emitted token: the base's run below it copied whole, then the token counted.
    for (size_t j = 0; j < em.size();) {
      const int32_t t = em[j];
      int32_t c = 0;
      while (j < em.size() && em[j] == t) ++c, ++j;
      const size_t at = static_cast<size_t>(std::lower_bound(base.hist_tokens.begin() + static_cast<std::ptrdiff_t>(i),
                                                             base.hist_tokens.begin() + static_cast<std::ptrdiff_t>(end), t) -
                                            base.hist_tokens.begin());
      copy(i, at);
      i = at;
      if (i < end && base.hist_tokens[i] == t) c += base.hist_counts[i++];
      a.hist_tokens.push_back(t);
      a.hist_counts.push_back(c);
    }
    copy(i, end);
    a.hist_indptr.push_back(static_cast<int32_t>(a.hist_tokens.size()));
  }
  a.path_indptr.assign(1, 0);
  return a;
}

// The draft's penalties for a step's chains (the sequences with ks[b] > 0, in order): their
// histories this step (histories_after), without the ids of the target's vocabulary the draft
// lacks (it reads them as id 0 and never picks them), and the logit bias and the stop bans without
// them too (the draft's pick j predicts the target's output position j past the root, as the
// target's row j does: the same ban_before); the chain adds each input's picks as its rows' paths.
PenaltyArgs draft_step_penalties(const PenaltyArgs& all, const std::vector<int>& ks, int64_t draft_vocab) {
  PenaltyArgs a;
  a.repetition = all.repetition;
  a.presence = all.presence;
  a.frequency = all.frequency;
  for (size_t i = 0; i < all.bias_tokens.size() && all.bias_tokens[i] < draft_vocab; ++i) {
    a.bias_tokens.push_back(all.bias_tokens[i]);
    a.bias_values.push_back(all.bias_values[i]);
  }
  if (!all.ban_indptr.empty()) {
    a.ban_indptr.assign(1, 0);
    for (size_t b = 0; b < ks.size(); ++b) {
      if (ks[b] == 0) continue;
      for (int32_t j = all.ban_indptr[b]; j < all.ban_indptr[b + 1] && all.ban_tokens[static_cast<size_t>(j)] < draft_vocab; ++j)
        a.ban_tokens.push_back(all.ban_tokens[static_cast<size_t>(j)]);
      a.ban_indptr.push_back(static_cast<int32_t>(a.ban_tokens.size()));
      a.ban_before.push_back(all.ban_before[b]);
    }
  }
  a.hist_indptr.assign(1, 0);
  a.path_indptr.assign(1, 0);
  for (size_t b = 0; b < ks.size(); ++b) {
    if (ks[b] == 0) continue;
    for (int32_t j = all.hist_indptr[b]; j < all.hist_indptr[b + 1]; ++j)
      if (all.hist_tokens[static_cast<size_t>(j)] < draft_vocab) {
        a.hist_tokens.push_back(all.hist_tokens[static_cast<size_t>(j)]);
        a.hist_counts.push_back(all.hist_counts[static_cast<size_t>(j)]);
      }
    a.hist_indptr.push_back(static_cast<int32_t>(a.hist_tokens.size()));
  }
  return a;
}

// Rows of a draft-model step: sequence b's root, then its ks[b] drafts; row j's path is the drafts
// above it, picks[tail_at[b] .. tail_at[b] + j) on the device.
PenaltyArgs chain_step_penalties(PenaltyArgs a, const std::vector<int>& ks, const std::vector<int64_t>& tail_at, const Tensor* picks) {
  for (size_t b = 0; b < ks.size(); ++b)
    for (int j = 0; j <= ks[b]; ++j) {
      a.row_seq.push_back(static_cast<int32_t>(b));
      for (int i = 0; i < j; ++i) a.path_tokens.push_back(static_cast<int32_t>(tail_at[b] + i));
      a.path_indptr.push_back(static_cast<int32_t>(a.path_tokens.size()));
    }
  if (picks && picks->defined()) a.path_source = picks;
  return a;
}

// Rows of a tree step: each sequence's nodes in order; a node's path is its ancestors' tokens below
// the root (the tokens are on the host: a Medusa step's candidates).
PenaltyArgs tree_step_penalties(PenaltyArgs a, const std::vector<LlamaSeqInput>& trees) {
  for (size_t b = 0; b < trees.size(); ++b) {
    const LlamaSeqInput& t = trees[b];
    for (size_t i = 0; i < t.tokens.size(); ++i) {
      a.row_seq.push_back(static_cast<int32_t>(b));
      for (int32_t v = static_cast<int32_t>(i); v > 0; v = t.parents[static_cast<size_t>(v)]) a.path_tokens.push_back(t.tokens[static_cast<size_t>(v)]);
      a.path_indptr.push_back(static_cast<int32_t>(a.path_tokens.size()));
    }
  }
  return a;
}

// Verification of a forward's staged trees -- greedy, or with `sampling` exact rejection against the
// processed target rows and the draft's rows -- (and, with heads, their top-k at each sequence's
// last accepted node, from the verification's outputs on the device), then the commit of the
// accepted paths, their K/V moved from the verification's result. One read: the host copy of
// [accepted nodes N | emitted N | accept counts B | depth accepts D | heads' ids heads * B * top_k].
struct Verdict {
  std::vector<int32_t> host;
  int64_t N = 0, B = 0, D = 0;
  std::vector<int32_t> node_indptr;
  int32_t count(size_t b) const { return host[static_cast<size_t>(2 * N) + b]; }
  const int32_t* emitted(size_t b) const { return host.data() + N + node_indptr[b]; }
  const int32_t* heads_ids() const { return host.data() + 2 * N + B + D; }
};

Verdict verify_commit(LlamaModel& target, const LlamaForwardResult& fr, const std::vector<int>& tseqs,
                      const std::vector<MedusaHead>* heads, int32_t top_k, const SamplingParams* sampling = nullptr,
                      const Tensor& draft_rows = Tensor(), const PenaltyArgs* head_penalties = nullptr) {
  const StagedTree& st = *fr.staged;
  Verdict v;
  v.node_indptr = st.h_node_indptr;
  v.B = static_cast<int64_t>(tseqs.size());
  v.N = static_cast<int64_t>(st.h_parents.size());
  for (int64_t b = 0; b < v.B; ++b) v.D = std::max<int64_t>(v.D, st.h_node_indptr[b + 1] - st.h_node_indptr[b] - 1);
  const int64_t N = v.N, B = v.B, D = v.D;
  const int64_t M = heads ? static_cast<int64_t>(heads->size()) * B * top_k : 0;
  const int64_t total = 2 * N + B + D + M;
  VerifyArgs va;
  va.mode = VerifyMode::greedy;
  va.target = fr.logits;
  if (sampling) {
    // Exact rejection over the processed target rows (the staged Philox keys and counters).
    Tensor probs = Tensor::empty(DType::f32, {fr.logits.size(0), fr.logits.size(1)}, fr.logits.device());
    ops::process_logits(fr.logits, *sampling, probs);
    va.mode = VerifyMode::rejection;
    va.target = probs;
    va.seeds = st.seeds;
    va.offsets = st.offsets;
    va.draft = draft_rows;
  }
  va.node_indptr = st.node_indptr;
  va.parents = st.parents;
  va.tokens = st.tokens;
  va.h_node_indptr = st.h_node_indptr.data();
  va.h_parents = st.h_parents.data();
  va.h_tokens = st.h_tokens.data();
  Tensor res = Tensor::zeros(DType::i32, {total}, target.device());
  VerifyResult vr;
  vr.accepted_nodes = res.rows(0, N);
  vr.emitted = res.rows(N, 2 * N);
  vr.accept_count = res.rows(2 * N, 2 * N + B);
  vr.depth_accepts = res.rows(2 * N + B, 2 * N + B + D);
  ops::verify(va, vr);
  if (M > 0) {
    Tensor ids = res.rows(total - M, total).view({static_cast<int64_t>(heads->size()) * B, top_k});
    medusa_top_k_after_verify(*heads, fr.hidden, va.node_indptr, vr.accepted_nodes, vr.accept_count, top_k, ids, head_penalties);
  }
  v.host.resize(static_cast<size_t>(total));
  res.copy_to_host(v.host.data(), v.host.size() * sizeof(int32_t));
  // (ops::verify checks CPU results itself; a device's are checked here, once read.)
  for (int64_t b = 0; b < B; ++b) {
    const int32_t k = v.count(static_cast<size_t>(b)) - 1;
    check_mass(v.emitted(static_cast<size_t>(b))[k], "verify: sequence ", b, ", emitted token ", k);
  }

  VerifiedPaths paths;
  paths.node_indptr = va.node_indptr;
  paths.accepted_nodes = vr.accepted_nodes;
  paths.accept_count = vr.accept_count;
  paths.h_node_indptr = st.h_node_indptr;
  paths.h_accepted_nodes.assign(v.host.begin(), v.host.begin() + N);
  paths.h_accept_count.assign(v.host.begin() + 2 * N, v.host.begin() + 2 * N + B);
  std::vector<std::vector<int32_t>> acc(static_cast<size_t>(B));
  for (size_t b = 0; b < acc.size(); ++b) {
    const int32_t s0 = st.h_node_indptr[b], n = paths.h_accept_count[b], nodes = st.h_node_indptr[b + 1] - s0;
    SPECDEC_CHECK(n >= 1 && n <= nodes, "E_INTERNAL", "verification accepted ", n, " nodes of ", nodes);
    acc[b].assign(v.host.begin() + s0, v.host.begin() + s0 + n);
  }
  target.commit(tseqs, acc, {&paths});
  return v;
}


// A chain's log-probabilities of its emitted tokens (SpecChainArgs::logprobs_k): each step's, on the
// rows of the nodes it accepted (the target's rows as penalized: what a step's ops::token_logprobs
// reads), into one device buffer sized by the budgets; one read when the chain is done.
class EmittedLogprobs {
 public:
  template <typename Seq>
  EmittedLogprobs(int32_t k, const std::vector<uint8_t>& want, const std::vector<Seq>& seqs, int64_t V, Device dev) : k_(k), want_(want) {
    if (k < 0) return;
    SPECDEC_CHECK(want.size() == seqs.size(), "E_ARG", "logprobs: ", want.size(), " wants for ", seqs.size(), " sequences");
    SPECDEC_CHECK(k <= 1024 && k <= V, "E_ARG", "logprobs: k = ", k, " outside [0, min(1024, vocabulary)]");
    for (size_t b = 0; b < seqs.size(); ++b)
      if (want[b]) cap_ += seqs[b].budget;
    buf_ = Tensor::empty(DType::u32, {std::max<int64_t>(1, cap_ * (1 + 2 * int64_t{k}))}, dev);
  }

  // After a step's verification (and commit): its emitted tokens' entries, from `logits`.
  void record(const Tensor& logits, const Verdict& v) {
    if (k_ < 0) return;
    std::vector<int32_t> rows, tokens;
    for (size_t b = 0; b < want_.size(); ++b) {
      if (!want_[b]) continue;
      const int32_t n = v.count(b), s0 = v.node_indptr[b];
      for (int32_t j = 0; j < n; ++j) {
        rows.push_back(s0 + v.host[static_cast<size_t>(s0 + j)]);
        tokens.push_back(v.emitted(b)[j]);
      }
      order_.emplace_back(b, n);
    }
    const int64_t M = static_cast<int64_t>(rows.size());
    SPECDEC_CHECK(at_ + M <= cap_, "E_INTERNAL", "chain logprobs: ", at_ + M, " entries past the budgets' ", cap_);
    if (M == 0) return;
    Tensor lp = buf_.reinterpret(0, DType::f32, {cap_}).rows(at_, at_ + M);
    Tensor tl = buf_.reinterpret(static_cast<size_t>(cap_) * 4, DType::f32, {cap_, k_}).rows(at_, at_ + M);
    Tensor ti = buf_.reinterpret(static_cast<size_t>(cap_ * (1 + k_)) * 4, DType::i32, {cap_, k_}).rows(at_, at_ + M);
    ops::token_logprobs(logits, rows, tokens, k_, lp, tl, ti);
    at_ += M;
  }

  // The entries, sequence by sequence (one read of the buffer).
  void finish(std::vector<std::vector<float>>& lp, std::vector<std::vector<float>>& top_lp, std::vector<std::vector<int32_t>>& top_ids) {
    if (k_ < 0) return;
    const size_t B = want_.size(), K = static_cast<size_t>(k_);
    lp.assign(B, {});
    top_lp.assign(B, {});
    top_ids.assign(B, {});
    if (at_ == 0) return;
    std::vector<uint32_t> words(buf_.numel());
    buf_.copy_to_host(words.data(), words.size() * 4);
    const float* hl = reinterpret_cast<const float*>(words.data());
    const float* htl = hl + cap_;
    const int32_t* hti = reinterpret_cast<const int32_t*>(htl + cap_ * k_);
    size_t at = 0;
    for (const auto& [b, n] : order_) {
      lp[b].insert(lp[b].end(), hl + at, hl + at + n);
      top_lp[b].insert(top_lp[b].end(), htl + at * K, htl + (at + n) * K);
      top_ids[b].insert(top_ids[b].end(), hti + at * K, hti + (at + n) * K);
      at += static_cast<size_t>(n);
    }
  }

 private:
  int32_t k_;
  std::vector<uint8_t> want_;
  int64_t cap_ = 0, at_ = 0;
  Tensor buf_;
  // Per step, the sequences recorded and their entries, in buffer order.
  std::vector<std::pair<size_t, int32_t>> order_;
};

// Whether the loop ends after a step: a sequence's budget is spent, or the step's tokens of a
// sequence (the last accepted[end - B + b] + 1 of its emitted ones) hold one of its stop tokens.
template <typename Seq>
bool chain_ends(const std::vector<Seq>& seqs, const std::vector<int>& left, const std::vector<std::vector<int32_t>>& emitted,
                const std::vector<int32_t>& accepted) {
  const size_t B = seqs.size();
  for (size_t b = 0; b < B; ++b) {
    if (left[b] < 1) return true;
    const std::vector<int32_t>& em = emitted[b];
    const std::vector<int32_t>& stop = seqs[b].stop;
    for (size_t i = em.size() - static_cast<size_t>(accepted[accepted.size() - B + b]) - 1; i < em.size(); ++i)
      if (std::find(stop.begin(), stop.end(), em[i]) != stop.end()) return true;
  }
  return false;
}

}  // namespace

SpecChainResult speculative_chain(LlamaModel& target, LlamaModel& draft, const SpecChainArgs& args) {
  const size_t B = args.seqs.size();
  SPECDEC_CHECK(B > 0, "E_ARG", "speculativeChain: no sequences");
  SPECDEC_CHECK(args.max_steps >= 1, "E_ARG", "speculativeChain: maxSteps must be >= 1, got ", args.max_steps);
  SPECDEC_CHECK(target.device() == draft.device(), "E_ARG", "speculativeChain: the draft is on ", device_name(draft.device()),
                ", the target on ", device_name(target.device()), " (one device for both)");
  const int64_t Vt = target.config().vocab_size, Vd = draft.config().vocab_size;
  SPECDEC_CHECK(Vd <= Vt, "E_ARG", "speculativeChain: the draft's vocabulary (", Vd, ") is larger than the target's (", Vt, ")");
  const int draft_max = draft.config().max_positions;
  SPECDEC_CHECK(!args.penalties || args.penalties->hist_indptr.size() == B + 1, "E_ARG", "speculativeChain: penalties for ",
                args.penalties ? args.penalties->hist_indptr.size() - 1 : 0, " histories, expected ", B);
  if (args.penalties) ops::check_penalty_histories(*args.penalties, Vt);  // before histories_after reads them

  // Per sequence: the history tokens past the draft's cache (root last), the draft's cached length,
  // and what is left of the budget.
  std::vector<std::vector<int32_t>> pending(B);
  std::vector<int> cached(B), left(B);
  for (size_t b = 0; b < B; ++b) {
    const SpecChainSeq& s = args.seqs[b];
    SPECDEC_CHECK(!s.draft_feed.empty(), "E_ARG", "seqs[", b, "].draftFeed: empty (it ends with the root)");
    SPECDEC_CHECK(s.k >= 0 && s.budget >= 1, "E_ARG", "seqs[", b, "]: k must be >= 0 and budget >= 1, got ", s.k, " and ", s.budget);
    for (size_t i = 0; i < s.draft_feed.size(); ++i)
      SPECDEC_CHECK(s.draft_feed[i] >= 0 && s.draft_feed[i] < Vt, "E_ARG", "seqs[", b, "].draftFeed[", i, "] = ", s.draft_feed[i],
                    " is outside the vocabulary [0, ", Vt, ")");
    for (size_t c = 0; c < b; ++c)
      SPECDEC_CHECK(args.seqs[c].target_seq != s.target_seq && args.seqs[c].draft_seq != s.draft_seq, "E_ARG", "seqs[", b,
                    "]: a sequence listed twice");
    pending[b] = s.draft_feed;
    cached[b] = draft.sequence_length(s.draft_seq);
    left[b] = s.budget;
  }

  SpecChainResult r;
  r.emitted.resize(B);
  EmittedLogprobs logprobs(args.logprobs_k, args.logprobs_want, args.seqs, Vt, target.device());
  std::vector<int> draws(B, 0);
  const auto t_loop = std::chrono::steady_clock::now();
  for (int step = 0; step < args.max_steps; ++step) {
    // This step's draft length per sequence: its k, within the budget and the draft's context (as
    // DraftModelSpeculator.budget computes it: history length = cached + pending).
    std::vector<int> ks(B);
    bool any = false;
    for (size_t b = 0; b < B; ++b) {
      const int hist = cached[b] + static_cast<int>(pending[b].size());
      ks[b] = std::max(0, std::min({args.seqs[b].k, left[b] - 1, draft_max - hist}));
      any = any || ks[b] > 0;
    }
    if (step > 0 && (!any || (args.max_seconds > 0 && seconds_since(t_loop) >= args.max_seconds))) break;
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<int> cached0 = cached, draws0 = draws;
    double t_draft = 0, t_target = 0;
    Verdict v;
    // (Outside the try: the log-probabilities are read from its rows once the step is final.)
    LlamaForwardResult fr;
    try {
      // 1. The draft's chains (sequences that draft), their picks left on the device.
      std::vector<LlamaSeqInput> din;
      std::vector<int> dsteps;
      std::vector<int64_t> tail_at(B, -1);
      int64_t picks_total = 0;
      for (size_t b = 0; b < B; ++b) {
        if (ks[b] == 0) continue;
        LlamaSeqInput in;
        in.seq = args.seqs[b].draft_seq;
        in.tokens.resize(pending[b].size());
        for (size_t i = 0; i < pending[b].size(); ++i) in.tokens[i] = pending[b][i] < Vd ? pending[b][i] : 0;
        din.push_back(std::move(in));
        dsteps.push_back(ks[b]);
        tail_at[b] = picks_total;
        picks_total += ks[b];
      }
      Tensor picks, q;
      // The step's histories (the call's, and what the steps before emitted).
      PenaltyArgs hist, dpen;
      if (args.penalties) hist = histories_after(*args.penalties, r.emitted);
      const bool penalize_draft = args.penalties && args.draft_penalties && !din.empty();
      if (penalize_draft) dpen = draft_step_penalties(hist, ks, Vd);
      if (!din.empty() && args.sampled) {
        // Each drafting sequence's counters for its picks, then (below) its verification's.
        std::vector<uint64_t> seeds;
        std::vector<std::vector<uint64_t>> offsets;
        for (size_t b = 0; b < B; ++b) {
          if (ks[b] == 0) continue;
          seeds.push_back(args.seqs[b].seed);
          std::vector<uint64_t> o(static_cast<size_t>(ks[b]));
          for (int j = 0; j < ks[b]; ++j) o[static_cast<size_t>(j)] = args.seqs[b].first_offset + static_cast<uint64_t>(draws[b]++);
          offsets.push_back(std::move(o));
        }
        LlamaModel::SampledChain sc = draft.sampled_chain(din, dsteps, args.params, seeds, offsets, true, penalize_draft ? &dpen : nullptr);
        picks = sc.picks_on_device;
        q = sc.q;
        for (size_t b = 0; b < B; ++b)
          if (ks[b] > 0) cached[b] += static_cast<int>(pending[b].size()) + ks[b] - 1;
      } else if (!din.empty()) {
        picks = draft.greedy_chain_on_device(din, dsteps, penalize_draft ? &dpen : nullptr);
        // The draft fed its pending tokens and every pick but the last.
        for (size_t b = 0; b < B; ++b)
          if (ks[b] > 0) cached[b] += static_cast<int>(pending[b].size()) + ks[b] - 1;
      }
      t_draft = seconds_since(t0);

      // 2. The target's forward over each root and its chain, the verification's inputs staged.
      const auto t1 = std::chrono::steady_clock::now();
      std::vector<LlamaSeqInput> tin(B);
      VerifyStaging stage;
      for (size_t b = 0; b < B; ++b) {
        if (args.sampled) {
          stage.seeds.push_back(args.seqs[b].seed);
          stage.offsets.push_back(args.seqs[b].first_offset + static_cast<uint64_t>(draws[b]++));
        }
        LlamaSeqInput& in = tin[b];
        in.seq = args.seqs[b].target_seq;
        const int n = ks[b] + 1;
        in.tokens.assign(static_cast<size_t>(n), 0);  // placeholders past the root: the tail's ids
        in.tokens[0] = pending[b].back();
        in.parents.resize(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) in.parents[static_cast<size_t>(i)] = i - 1;
        if (ks[b] > 0) {
          in.tail = picks;
          in.tail_offset = tail_at[b];
        }
        stage.parents.insert(stage.parents.end(), in.parents.begin(), in.parents.end());
      }
      fr = target.forward(tin, false, &stage);
      t_target = seconds_since(t1);
      if (args.penalties) {
        PenaltyArgs pa = chain_step_penalties(std::move(hist), ks, tail_at, &picks);
        ops::penalize(fr.logits, pa);
      }

      // 3. Greedy verification of the staged trees (the step's one read), and the commit.
      std::vector<int> tseqs(B);
      for (size_t b = 0; b < B; ++b) tseqs[b] = args.seqs[b].target_seq;
      // Sampled: node j's children were drawn from the draft's row of pick j (its chain's rows start at
      // tail_at); a leaf repeats its parent's row and a lone root borrows any (neither is read), each
      // zero-padded to the target's vocabulary.
      Tensor rows;
      if (args.sampled && q.defined()) {
        std::vector<Tensor> srcs;
        std::vector<int64_t> at;
        for (size_t b = 0; b < B; ++b)
          for (int j = 0; j <= ks[b]; ++j) {
            srcs.push_back(q);
            at.push_back(ks[b] > 0 ? tail_at[b] + std::min(j, ks[b] - 1) : 0);
          }
        rows = gather_rows(srcs, at, Vt);
      }
      v = verify_commit(target, fr, tseqs, nullptr, 0, args.sampled ? &args.params : nullptr, rows);
    } catch (...) {
      // The failed step's draft tokens go; its target forward, if any, stays uncommitted (the next
      // forward replaces it).
      for (size_t b = 0; b < B; ++b)
        if (cached[b] > cached0[b]) {
          draft.truncate(args.seqs[b].draft_seq, cached0[b]);
          cached[b] = cached0[b];
        }
      draws = draws0;
      if (step == 0) throw;
      break;
    }
    {
      // 4. Emitted tokens; the draft keeps only what the history holds (all but the new root).
      logprobs.record(fr.logits, v);
      r.drafted.insert(r.drafted.end(), ks.begin(), ks.end());
      for (size_t b = 0; b < B; ++b) {
        const int32_t n = v.count(b);
        const int32_t* em = v.emitted(b);
        r.accepted.push_back(n - 1);
        r.emitted[b].insert(r.emitted[b].end(), em, em + n);
        left[b] -= n;
        // History before the step: cached0 + pending; now n more tokens, the last the new root.
        const int valid = cached0[b] + static_cast<int>(pending[b].size()) + n - 1;
        if (cached[b] > valid) {
          draft.truncate(args.seqs[b].draft_seq, valid);
          cached[b] = valid;
        }
        std::vector<int32_t> all = std::move(pending[b]);
        all.insert(all.end(), em, em + n);
        pending[b].assign(all.begin() + (cached[b] - cached0[b]), all.end());
      }
      r.draft_seconds.push_back(t_draft);
      r.target_seconds.push_back(t_target);
      r.step_seconds.push_back(seconds_since(t0));
      ++r.steps;
    }
    if (chain_ends(args.seqs, left, r.emitted, r.accepted)) break;
  }
  r.draft_cached = std::vector<int32_t>(cached.begin(), cached.end());
  r.draws = std::vector<int32_t>(draws.begin(), draws.end());
  logprobs.finish(r.lp, r.top_lp, r.top_ids);
  return r;
}

MedusaChainResult medusa_chain(LlamaModel& target, const MedusaChainArgs& args) {
  const size_t B = args.seqs.size();
  const int32_t K = args.top_k;
  const size_t T = args.parents.size();
  const int64_t V = target.config().vocab_size;
  SPECDEC_CHECK(B > 0, "E_ARG", "medusaChain: no sequences");
  SPECDEC_CHECK(args.max_steps >= 1, "E_ARG", "medusaChain: maxSteps must be >= 1, got ", args.max_steps);
  SPECDEC_CHECK(!args.heads.empty() && K >= 1, "E_ARG", "medusaChain: expected at least one head and topK >= 1");
  const int H = static_cast<int>(args.heads.size());
  SPECDEC_CHECK(T >= 1 && args.head.size() == T && args.rank.size() == T && args.parents[0] == -1, "E_ARG",
                "medusaChain: the template needs parents, head and rank per node, node 0 the root (parent -1)");
  int depth = 0;
  for (size_t i = 1; i < T; ++i) {
    const int32_t p = args.parents[i], h = args.head[i], rk = args.rank[i];
    SPECDEC_CHECK(p >= 0 && p < static_cast<int32_t>(i) && h >= 0 && h < H && rk >= 0 && rk < K &&
                      h == (p == 0 ? 0 : args.head[static_cast<size_t>(p)] + 1),
                  "E_ARG", "medusaChain: template node ", i, " (parent ", p, ", head ", h, ", rank ", rk,
                  "): a node is rank < topK of head (its parent's head + 1) < the heads run, after its parent");
    depth = std::max(depth, h + 1);
  }
  for (size_t b = 0; b < B; ++b) {
    const MedusaChainSeq& s = args.seqs[b];
    SPECDEC_CHECK(s.budget >= 1 && s.heads_known >= 0 && s.heads_known <= H &&
                      s.cands.size() == static_cast<size_t>(s.heads_known) * static_cast<size_t>(K),
                  "E_ARG", "seqs[", b, "]: budget >= 1 and headsKnown * topK candidates (headsKnown <= ", H, ") expected, got budget ",
                  s.budget, ", ", s.cands.size(), " candidates for ", s.heads_known, " heads");
    SPECDEC_CHECK(s.root >= 0 && s.root < V, "E_ARG", "seqs[", b, "].root = ", s.root, " is outside the vocabulary [0, ", V, ")");
    for (size_t i = 0; i < s.cands.size(); ++i)
      SPECDEC_CHECK(s.cands[i] >= 0 && s.cands[i] < V, "E_ARG", "seqs[", b, "].cands[", i, "] = ", s.cands[i], " is outside the vocabulary");
    for (size_t c = 0; c < b; ++c)
      SPECDEC_CHECK(args.seqs[c].target_seq != s.target_seq, "E_ARG", "seqs[", b, "]: a sequence listed twice");
  }

  SPECDEC_CHECK(!args.penalties || args.penalties->hist_indptr.size() == B + 1, "E_ARG", "medusaChain: penalties for ",
                args.penalties ? args.penalties->hist_indptr.size() - 1 : 0, " histories, expected ", B);
  if (args.penalties) ops::check_penalty_histories(*args.penalties, target.config().vocab_size);  // before histories_after reads them
  std::vector<int32_t> root(B);
  std::vector<std::vector<int32_t>> cands(B);
  std::vector<int> known(B), left(B);
  for (size_t b = 0; b < B; ++b) {
    root[b] = args.seqs[b].root;
    cands[b] = args.seqs[b].cands;
    known[b] = args.seqs[b].heads_known;
    left[b] = args.seqs[b].budget;
  }
  MedusaChainResult r;
  // Ranks are recorded through the bonus token's depth (a head past the tree's, when it ran).
  r.depth = std::min(H, depth + 1);
  r.emitted.resize(B);
  std::vector<int> tseqs(B);
  for (size_t b = 0; b < B; ++b) tseqs[b] = args.seqs[b].target_seq;
  std::vector<int32_t> draws(B, 0);
  EmittedLogprobs logprobs(args.logprobs_k, args.logprobs_want, args.seqs, V, target.device());
  const auto t_loop = std::chrono::steady_clock::now();
  for (int step = 0; step < args.max_steps; ++step) {
    // Each sequence's tree: the template's nodes whose candidates are known and whose depth
    // (head + 1) is within the budget, in template order (MedusaSpeculator: selectNodes, then
    // pruneTree to maxDepth = budget left - 1).
    std::vector<LlamaSeqInput> tin(B);
    std::vector<int32_t> tree_depth(B, 0);
    VerifyStaging stage;
    bool any = false;
    for (size_t b = 0; b < B; ++b) {
      LlamaSeqInput& in = tin[b];
      in.seq = tseqs[b];
      std::vector<int32_t> at(T, -1);
      for (size_t i = 0; i < T; ++i) {
        const int32_t h = args.head[i];
        if (i > 0 && (h >= known[b] || h + 1 > left[b] - 1 || at[static_cast<size_t>(args.parents[i])] < 0)) continue;
        if (i > 0) tree_depth[b] = std::max(tree_depth[b], h + 1);
        at[i] = static_cast<int32_t>(in.tokens.size());
        in.tokens.push_back(i == 0 ? root[b] : cands[b][static_cast<size_t>(h) * static_cast<size_t>(K) + static_cast<size_t>(args.rank[i])]);
        in.parents.push_back(i == 0 ? -1 : at[static_cast<size_t>(args.parents[i])]);
      }
      any = any || in.tokens.size() > 1;
      stage.parents.insert(stage.parents.end(), in.parents.begin(), in.parents.end());
      if (args.sampled) {
        stage.seeds.push_back(args.seqs[b].seed);
        stage.offsets.push_back(args.seqs[b].first_offset + static_cast<uint64_t>(draws[b]));
      }
    }
    if (step > 0 && (!any || (args.max_seconds > 0 && seconds_since(t_loop) >= args.max_seconds))) break;
    const auto t0 = std::chrono::steady_clock::now();
    double t_target = 0;
    Verdict v;
    // (Outside the try: the log-probabilities are read from its rows once the step is final.)
    LlamaForwardResult fr;
    try {
      fr = target.forward(tin, true, &stage);
      t_target = seconds_since(t0);
      // The heads' candidates are penalized by each sequence's history before this step too (the
      // tokens it accepts are known on the device only, until the step's one read).
      PenaltyArgs hp;
      if (args.penalties) {
        hp = histories_after(*args.penalties, r.emitted);
        ops::penalize(fr.logits, tree_step_penalties(hp, tin));
        for (size_t b = 0; b < B; ++b) {
          hp.row_seq.push_back(static_cast<int32_t>(b));
          hp.path_indptr.push_back(0);
        }
      }
      v = verify_commit(target, fr, tseqs, &args.heads, K, args.sampled ? &args.params : nullptr, Tensor(), args.penalties ? &hp : nullptr);
    } catch (...) {
      if (step == 0) throw;
      break;
    }
    logprobs.record(fr.logits, v);
    for (size_t b = 0; b < B; ++b) {
      const int32_t n = v.count(b);
      const int32_t* em = v.emitted(b);
      r.nodes.push_back(static_cast<int32_t>(tin[b].tokens.size()));
      r.depths.push_back(tree_depth[b]);
      r.accepted.push_back(n - 1);
      // Head d's candidates against the emitted token at depth d (MedusaSpeculator.record).
      for (int d = 0; d < r.depth; ++d) {
        int32_t rank = -2;
        if (d < known[b] && d < n) {
          const int32_t* c = cands[b].data() + static_cast<size_t>(d) * static_cast<size_t>(K);
          rank = static_cast<int32_t>(std::find(c, c + K, em[d]) - c);
          if (rank == K) rank = -1;
        }
        r.ranks.push_back(rank);
      }
      r.emitted[b].insert(r.emitted[b].end(), em, em + n);
      left[b] -= n;
      if (args.sampled) draws[b] += n;  // one counter per emitted token
      root[b] = em[n - 1];
      cands[b].resize(static_cast<size_t>(H) * static_cast<size_t>(K));
      for (int h = 0; h < H; ++h)
        std::copy(v.heads_ids() + (static_cast<size_t>(h) * B + b) * static_cast<size_t>(K),
                  v.heads_ids() + (static_cast<size_t>(h) * B + b + 1) * static_cast<size_t>(K),
                  cands[b].begin() + static_cast<int64_t>(h) * K);
      known[b] = H;
    }
    r.target_seconds.push_back(t_target);
    r.step_seconds.push_back(seconds_since(t0));
    ++r.steps;
    if (chain_ends(args.seqs, left, r.emitted, r.accepted)) break;
  }
  r.cands = std::move(cands);
  if (args.sampled) r.draws = std::move(draws);
  logprobs.finish(r.lp, r.top_lp, r.top_ids);
  return r;
}

}  // namespace specdec

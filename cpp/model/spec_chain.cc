// The native loop of greedy draft-model speculation: see spec_chain.h.
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

  // Per sequence: the history tokens past the draft's cache (root last), the draft's cached length,
  // the target's committed length, and what is left of the budget.
  std::vector<std::vector<int32_t>> pending(B);
  std::vector<int> cached(B), committed(B), left(B);
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
    committed[b] = target.sequence_length(s.target_seq);
    left[b] = s.budget;
  }

  SpecChainResult r;
  r.emitted.resize(B);
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
    std::vector<int> cached0 = cached;
    double t_draft = 0, t_target = 0;
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
      Tensor picks;
      if (!din.empty()) {
        picks = draft.greedy_chain_on_device(din, dsteps);
        // The draft fed its pending tokens and every pick but the last.
        for (size_t b = 0; b < B; ++b)
          if (ks[b] > 0) cached[b] += static_cast<int>(pending[b].size()) + ks[b] - 1;
      }
      t_draft = seconds_since(t0);

      // 2. The target's forward over each root and its chain, the verification's inputs staged.
      const auto t1 = std::chrono::steady_clock::now();
      std::vector<LlamaSeqInput> tin(B);
      VerifyStaging stage;
      int max_nodes = 1;
      for (size_t b = 0; b < B; ++b) {
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
        max_nodes = std::max(max_nodes, n);
      }
      LlamaForwardResult fr = target.forward(tin, false, &stage);
      t_target = seconds_since(t1);

      // 3. Greedy verification of the staged trees; its result is the step's one read.
      const StagedTree& st = *fr.staged;
      VerifyArgs va;
      va.mode = VerifyMode::greedy;
      va.target = fr.logits;
      va.node_indptr = st.node_indptr;
      va.parents = st.parents;
      va.tokens = st.tokens;
      va.h_node_indptr = st.h_node_indptr.data();
      va.h_parents = st.h_parents.data();
      va.h_tokens = st.h_tokens.data();
      const int64_t N = static_cast<int64_t>(st.h_parents.size()), D = max_nodes - 1;
      const int64_t total = 2 * N + static_cast<int64_t>(B) + D;
      Tensor res = Tensor::zeros(DType::i32, {total}, target.device());
      VerifyResult vr;
      vr.accepted_nodes = res.rows(0, N);
      vr.emitted = res.rows(N, 2 * N);
      vr.accept_count = res.rows(2 * N, 2 * N + static_cast<int64_t>(B));
      vr.depth_accepts = res.rows(2 * N + static_cast<int64_t>(B), total);
      ops::verify(va, vr);
      std::vector<int32_t> host(static_cast<size_t>(total));
      res.copy_to_host(host.data(), host.size() * sizeof(int32_t));

      // 4. The accepted paths become the target's committed K/V (moved from the verification's result).
      VerifiedPaths paths;
      paths.node_indptr = va.node_indptr;
      paths.accepted_nodes = vr.accepted_nodes;
      paths.accept_count = vr.accept_count;
      paths.h_node_indptr = st.h_node_indptr;
      paths.h_accepted_nodes.assign(host.begin(), host.begin() + N);
      paths.h_accept_count.assign(host.begin() + 2 * N, host.begin() + 2 * N + static_cast<int64_t>(B));
      std::vector<int> tseqs(B);
      std::vector<std::vector<int32_t>> acc(B);
      for (size_t b = 0; b < B; ++b) {
        tseqs[b] = args.seqs[b].target_seq;
        const int32_t s0 = st.h_node_indptr[b], n = paths.h_accept_count[b];
        SPECDEC_CHECK(n >= 1 && n <= ks[b] + 1, "E_INTERNAL", "speculativeChain: verification accepted ", n, " nodes of ", ks[b] + 1);
        acc[b].assign(host.begin() + s0, host.begin() + s0 + n);
      }
      target.commit(tseqs, acc, {&paths});

      // 5. Emitted tokens; the draft keeps only what the history holds (all but the new root).
      r.drafted.insert(r.drafted.end(), ks.begin(), ks.end());
      for (size_t b = 0; b < B; ++b) {
        const int32_t s0 = st.h_node_indptr[b], n = paths.h_accept_count[b];
        const int32_t* em = host.data() + N + s0;
        r.accepted.push_back(n - 1);
        r.emitted[b].insert(r.emitted[b].end(), em, em + n);
        committed[b] += n;
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
    } catch (...) {
      // The failed step's draft tokens go; its target forward, if any, stays uncommitted (the next
      // forward replaces it).
      for (size_t b = 0; b < B; ++b)
        if (cached[b] > cached0[b]) {
          draft.truncate(args.seqs[b].draft_seq, cached0[b]);
          cached[b] = cached0[b];
        }
      if (step == 0) throw;
      break;
    }
    bool spent = false;
    for (size_t b = 0; b < B; ++b) {
      spent = spent || left[b] < 1;
      const std::vector<int32_t>& stop = args.seqs[b].stop;
      const std::vector<int32_t>& em = r.emitted[b];
      const size_t n = static_cast<size_t>(r.accepted[r.accepted.size() - B + b]) + 1;
      for (size_t i = em.size() - n; i < em.size() && !spent; ++i) spent = std::find(stop.begin(), stop.end(), em[i]) != stop.end();
    }
    if (spent) break;
  }
  r.draft_cached = std::vector<int32_t>(cached.begin(), cached.end());
  return r;
}

}  // namespace specdec

// EAGLE draft layers as one call (cpp/model/eagle.h): the composition lib/strategies/eagle.ts
// made of op calls, op for op.
#include "eagle.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "../core/error.h"
#include "../core/host_pack.h"
#include "../core/ops_layers.h"
#include "../core/ops_sampling.h"

namespace specdec {

namespace {

Tensor mm(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor()) {
  Tensor out = Tensor::empty(DType::f32, {x.size(0), w.size(0)}, x.device());
  ops::matmul(x, w, bias, out);
  return out;
}

Tensor norm(const Tensor& x, const Tensor& w, float eps) {
  Tensor out = Tensor::empty(DType::f32, x.shape(), x.device());
  ops::rmsnorm(x, w, eps, out);
  return out;
}

}  // namespace

Tensor eagle_forward(const EagleWeights& w, const Tensor& embed, const std::vector<Tensor>& kv_layers,
                     const PagedBatch& batch, const Tensor& ids, const int32_t* host_ids, const Tensor& positions,
                     const std::vector<Tensor>& features, bool from_target) {
  SPECDEC_CHECK(kv_layers.size() == w.layers.size(), "E_ARG", "eagle: ", kv_layers.size(), " cache layers for ",
                w.layers.size(), " draft layers");
  const bool v3 = w.version == 3;
  SPECDEC_CHECK(!features.empty() && (!v3 || !from_target || features.size() == 3), "E_ARG", "EAGLE", v3 ? "-3" : "-1/2",
                " head: ", features.size(), " feature blocks, expected ", v3 && from_target ? 3 : 1);
  const int64_t N = ids.size(0);
  const Tensor& table = w.embed.defined() ? w.embed : embed;
  Tensor e = Tensor::empty(DType::f32, {N, table.size(1)}, table.device());
  ops::embedding(table, ids, e, host_ids, false);
  Tensor x;
  if (!v3) {
    // x = fc([e; f]) as its two column blocks.
    x = mm(e, w.fc_embed);
    ops::add_inplace(x, mm(features[0], w.fc_feature[0], w.fc_bias));
  } else if (from_target) {
    x = mm(features[0], w.fc_feature[0]);
    for (size_t k = 1; k < 3; ++k) ops::add_inplace(x, mm(features[k], w.fc_feature[k]));
  } else {
    x = Tensor::empty(DType::f32, features[0].shape(), features[0].device());
    x.copy_from(features[0]);
  }
  const int64_t D = w.head_dim;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));  // as the JS composition passed it
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const EagleLayer& L = w.layers[l];
    Tensor q, k, v;
    if (v3) {
      // EAGLE-3's midlayer: attention over [input_layernorm(e); hidden_norm(x)], as column blocks.
      const Tensor en = norm(e, L.in_norm, w.eps), hn = norm(x, L.hidden_norm, w.eps);
      q = mm(en, L.q, L.qb);
      ops::add_inplace(q, mm(hn, L.q_h));
      k = mm(en, L.k, L.kb);
      ops::add_inplace(k, mm(hn, L.k_h));
      v = mm(en, L.v, L.vb);
      ops::add_inplace(v, mm(hn, L.v_h));
    } else {
      const Tensor h = L.in_norm.defined() ? norm(x, L.in_norm, w.eps) : x;
      q = mm(h, L.q, L.qb);
      k = mm(h, L.k, L.kb);
      v = mm(h, L.v, L.vb);
    }
    Tensor q3 = q.view({N, w.heads, D}), k3 = k.view({N, w.kv_heads, D}), v3t = v.view({N, w.kv_heads, D});
    ops::rope(q3, positions, w.inv_freq);
    ops::rope(k3, positions, w.inv_freq);
    Tensor layer = kv_layers[l];
    ops::kv_append(layer, k3, v3t, batch);
    Tensor att = Tensor::empty(q3.dtype(), q3.shape(), q3.device());
    ops::tree_attention(q3, layer, batch, Tensor(), scale, att, 0, 0.f);
    ops::add_inplace(x, mm(att.view({N, w.heads * D}), L.o));
    const Tensor h2 = norm(x, L.post_norm, w.eps);
    Tensor g = mm(h2, L.gate);
    ops::silu_mul(g, mm(h2, L.up), g);
    ops::add_inplace(x, mm(g, L.down));
  }
  return x;
}

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Each row's top_k children under the head's logits at temperature 1, read back in one copy: what
// EagleSpeculator.children does (processLogits, topK, log of the values as f32, d2t).
struct Children {
  std::vector<int32_t> ids;
  std::vector<float> logp;
};

Children children(const EagleWeights& w, const Tensor& lm_head, const Tensor& h, int top_k) {
  const bool v3 = w.version == 3;
  const Tensor logits = v3 ? mm(norm(h, w.norm, w.eps), w.lm_head) : mm(h, lm_head);
  Tensor probs = Tensor::empty(DType::f32, logits.shape(), logits.device());
  ops::process_logits(logits, SamplingParams{}, probs);
  const int64_t R = h.size(0), n = R * top_k;
  // Values and ids in one buffer, one read.
  Tensor both = Tensor::empty(DType::f32, {2 * n}, h.device());
  Tensor vals = both.reinterpret(0, DType::f32, {R, top_k}), ids = both.reinterpret(static_cast<size_t>(n) * 4, DType::i32, {R, top_k});
  ops::top_k(probs, top_k, vals, ids);
  std::vector<float> host(static_cast<size_t>(2 * n));
  both.copy_to_host(host.data(), host.size() * sizeof(float));
  Children c;
  c.ids.resize(static_cast<size_t>(n));
  c.logp.resize(static_cast<size_t>(n));
  std::memcpy(c.ids.data(), host.data() + n, static_cast<size_t>(n) * sizeof(int32_t));
  const int64_t dv = static_cast<int64_t>(w.draft_to_target.size());
  for (int64_t i = 0; i < n; ++i) {
    // JavaScript's Math.log of the f32 value, stored as f32.
    c.logp[static_cast<size_t>(i)] = static_cast<float>(std::log(static_cast<double>(host[static_cast<size_t>(i)])));
    int32_t& id = c.ids[static_cast<size_t>(i)];
    if (dv > 0) {
      SPECDEC_CHECK(id >= 0 && id < dv, "E_INTERNAL", "eagle: draft id ", id, " outside d2t's ", dv, " entries");
      id = w.draft_to_target[static_cast<size_t>(id)];
    }
  }
  return c;
}

}  // namespace

Tensor eagle_catch_up(const EagleWeights& w, const Tensor& embed, KvCache& cache, const std::vector<int>& seqs,
                      const std::vector<int>& counts, const std::vector<int32_t>& tokens,
                      const std::vector<int32_t>& positions, const std::vector<std::vector<Tensor>>& feat_srcs,
                      const std::vector<int64_t>& feat_rows, int64_t feat_width) {
  const size_t N = tokens.size();
  SPECDEC_CHECK(!seqs.empty() && counts.size() == seqs.size(), "E_ARG", "eagleCatchUp: ", counts.size(), " counts for ",
                seqs.size(), " sequences (one each, at least one sequence)");
  size_t total = 0;
  for (int n : counts) {
    SPECDEC_CHECK(n >= 1, "E_ARG", "eagleCatchUp: counts: expected >= 1 row per sequence, got ", n);
    total += static_cast<size_t>(n);
  }
  SPECDEC_CHECK(total == N && positions.size() == N && feat_rows.size() == N, "E_ARG", "eagleCatchUp: ", total,
                " rows counted, ", N, " tokens, ", positions.size(), " positions, ", feat_rows.size(), " feature rows");
  SPECDEC_CHECK(feat_srcs.size() == (w.version == 3 ? 3u : 1u), "E_ARG", "eagleCatchUp: ", feat_srcs.size(),
                " feature blocks, expected ", w.version == 3 ? 3 : 1);
  std::vector<Tensor> feats;
  for (const auto& srcs : feat_srcs) {
    SPECDEC_CHECK(srcs.size() == N, "E_ARG", "eagleCatchUp: ", srcs.size(), " feature tensors for ", N, " rows");
    feats.push_back(gather_rows(srcs, feat_rows, feat_width));
  }
  // Ids, positions and the batch's page tables in one upload.
  HostPack pack;
  const int seg_ids = pack.add(DType::i32, tokens), seg_pos = pack.add(DType::i32, positions);
  PagedBatch batch = cache.plan(seqs, counts, &pack);
  const Tensor h = eagle_forward(w, embed, cache.layers(), batch, pack.view(seg_ids), tokens.data(), pack.view(seg_pos), feats, true);
  std::vector<int32_t> acc_indptr{0}, acc_nodes;
  std::vector<Tensor> srcs;
  std::vector<int64_t> last;
  for (int n : counts) {
    for (int r = 0; r < n; ++r) acc_nodes.push_back(r);
    acc_indptr.push_back(static_cast<int32_t>(acc_nodes.size()));
    srcs.push_back(h);
    last.push_back(static_cast<int64_t>(acc_nodes.size()) - 1);
  }
  cache.commit(batch, seqs, acc_indptr, acc_nodes);
  return gather_rows(srcs, last, h.size(1));
}

EagleExpandResult eagle_expand(const EagleWeights& w, const Tensor& embed, const Tensor& lm_head, KvCache& cache,
                               const Tensor& h_root, const std::vector<EagleExpandSeq>& seqs, int levels, int width,
                               int top_k) {
  const int64_t B = static_cast<int64_t>(seqs.size());
  SPECDEC_CHECK(B > 0 && h_root.defined() && h_root.dim() == 2 && h_root.size(0) == B, "E_ARG", "eagleExpand: hRoot ",
                h_root.defined() ? h_root.describe() : std::string("undefined"), " for ", B, " sequences");
  SPECDEC_CHECK(levels >= 0 && width >= 1 && top_k >= 1, "E_ARG", "eagleExpand: levels ", levels, ", width ", width,
                ", topK ", top_k, " (expected levels >= 0, width >= 1, topK >= 1)");
  SPECDEC_CHECK(w.version == 3 ? w.norm.defined() && w.lm_head.defined() : lm_head.defined(), "E_ARG",
                "eagleExpand: an EAGLE-3 head needs its norm and LM head, an EAGLE-1/2 head the target's LM head");
  const int64_t H = h_root.size(1);
  using clock = std::chrono::steady_clock;
  EagleExpandResult res;
  res.pools.resize(static_cast<size_t>(B));
  auto t0 = clock::now();
  const Children first = children(w, lm_head, h_root, top_k);
  res.first_seconds = seconds_since(t0);
  // Each sequence's newest nodes: pool index, the draft sequence of its parent row, its h row.
  struct Open {
    int32_t node;
    int parent_seq;
    int64_t h_row;  // row of `h` (the level that made the node)
  };
  std::vector<std::vector<Open>> open(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    auto& pool = res.pools[static_cast<size_t>(b)];
    for (int r = 0; r < top_k; ++r) {
      const size_t i = static_cast<size_t>(b * top_k + r);
      pool.push_back({first.ids[i], -1, 1, static_cast<double>(first.logp[i])});
      open[static_cast<size_t>(b)].push_back({r, seqs[static_cast<size_t>(b)].draft_seq, b});
    }
  }
  int depth = 0;
  for (const auto& s : seqs) depth = std::max(depth, s.max_level);
  depth = std::min(depth, levels);
  std::vector<int> forks;
  Tensor h = h_root;
  try {
    for (int level = 1; level <= depth; ++level) {
      // The best `width` newest nodes of each sequence (by log probability, then pool index).
      struct Row {
        int64_t b;
        Open o;
      };
      std::vector<Row> rows;
      for (int64_t b = 0; b < B; ++b) {
        if (level > seqs[static_cast<size_t>(b)].max_level) continue;
        const auto& pool = res.pools[static_cast<size_t>(b)];
        std::vector<Open> best = open[static_cast<size_t>(b)];
        std::sort(best.begin(), best.end(), [&](const Open& x, const Open& y) {
          const double px = pool[static_cast<size_t>(x.node)].log_prob, py = pool[static_cast<size_t>(y.node)].log_prob;
          return px > py || (!(px < py) && x.node < y.node);
        });
        for (size_t j = 0; j < best.size() && j < static_cast<size_t>(width); ++j) rows.push_back({b, best[j]});
      }
      if (rows.empty()) break;
      t0 = clock::now();
      const int64_t R = static_cast<int64_t>(rows.size());
      std::vector<int> seq_ids;
      std::vector<int32_t> tokens, positions;
      std::vector<Tensor> srcs;
      std::vector<int64_t> src_rows;
      for (const Row& r : rows) {
        seq_ids.push_back(cache.fork(r.o.parent_seq));
        forks.push_back(seq_ids.back());
        tokens.push_back(res.pools[static_cast<size_t>(r.b)][static_cast<size_t>(r.o.node)].token);
        positions.push_back(seqs[static_cast<size_t>(r.b)].position + level);
        srcs.push_back(h);
        src_rows.push_back(r.o.h_row);
      }
      const Tensor feats = gather_rows(srcs, src_rows, H);
      // Ids, positions and the batch's page tables in one upload.
      HostPack pack;
      const int seg_ids = pack.add(DType::i32, tokens), seg_pos = pack.add(DType::i32, positions);
      PagedBatch batch = cache.plan(seq_ids, std::vector<int>(static_cast<size_t>(R), 1), &pack);
      const Tensor next = eagle_forward(w, embed, cache.layers(), batch, pack.view(seg_ids), tokens.data(), pack.view(seg_pos),
                                        {feats}, false);
      std::vector<int32_t> acc_indptr(static_cast<size_t>(R) + 1), acc_nodes(static_cast<size_t>(R), 0);
      for (int64_t i = 0; i <= R; ++i) acc_indptr[static_cast<size_t>(i)] = static_cast<int32_t>(i);
      cache.commit(batch, seq_ids, acc_indptr, acc_nodes);
      h = next;
      const Children kids = children(w, lm_head, h, top_k);
      res.level_rows.push_back(static_cast<int32_t>(R));
      res.level_seconds.push_back(seconds_since(t0));
      std::vector<std::vector<Open>> grown(static_cast<size_t>(B));
      for (int64_t i = 0; i < R; ++i) {
        const Row& r = rows[static_cast<size_t>(i)];
        auto& pool = res.pools[static_cast<size_t>(r.b)];
        const double parent_lp = pool[static_cast<size_t>(r.o.node)].log_prob;
        for (int j = 0; j < top_k; ++j) {
          const size_t k = static_cast<size_t>(i * top_k + j);
          pool.push_back({kids.ids[k], r.o.node, level + 1, parent_lp + static_cast<double>(kids.logp[k])});
          grown[static_cast<size_t>(r.b)].push_back({static_cast<int32_t>(pool.size()) - 1, seq_ids[static_cast<size_t>(i)], i});
        }
      }
      open = std::move(grown);
    }
  } catch (...) {
    for (int f : forks) cache.free(f);
    throw;
  }
  for (int f : forks) cache.free(f);
  return res;
}

}  // namespace specdec

// EAGLE draft layers as one call (cpp/model/eagle.h): the composition lib/strategies/eagle.ts
// made of op calls, op for op.
#include "eagle.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>

#include "../core/error.h"
#include "../core/host_pack.h"
#include "../core/ops_layers.h"
#include "../core/ops_sampling.h"
#include "../core/ops_tree.h"

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
  ops::embedding(table, ids, e, host_ids, host_ids == nullptr);
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

// Each row's top_k children under the head's logits at temperature 1, left on the device: what
// EagleSpeculator.children computes (processLogits, topK) before its read.
struct TopChildren {
  Tensor vals, ids;  // f32 [R, top_k] (descending), i32 [R, top_k] (draft ids)
};

// With penalties, each row's logits are penalized first (its sequence's history and its path).
TopChildren top_children(const EagleWeights& w, const Tensor& lm_head, const Tensor& h, int top_k,
                         const PenaltyArgs* penalties = nullptr) {
  const bool v3 = w.version == 3;
  Tensor logits = v3 ? mm(norm(h, w.norm, w.eps), w.lm_head) : mm(h, lm_head);
  if (penalties) ops::penalize(logits, *penalties);
  Tensor probs = Tensor::empty(DType::f32, logits.shape(), logits.device());
  ops::process_logits(logits, SamplingParams{}, probs);
  const int64_t R = h.size(0);
  TopChildren c{Tensor::empty(DType::f32, {R, top_k}, h.device()), Tensor::empty(DType::i32, {R, top_k}, h.device())};
  ops::top_k(probs, top_k, c.vals, c.ids);
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
                               int top_k, const PenaltyArgs* penalties) {
  const int64_t B = static_cast<int64_t>(seqs.size());
  SPECDEC_CHECK(B > 0 && h_root.defined() && h_root.dim() == 2 && h_root.size(0) == B, "E_ARG", "eagleExpand: hRoot ",
                h_root.defined() ? h_root.describe() : std::string("undefined"), " for ", B, " sequences");
  SPECDEC_CHECK(levels >= 0 && width >= 1 && top_k >= 1, "E_ARG", "eagleExpand: levels ", levels, ", width ", width,
                ", topK ", top_k, " (expected levels >= 0, width >= 1, topK >= 1)");
  SPECDEC_CHECK(w.version == 3 ? w.norm.defined() && w.lm_head.defined() : lm_head.defined(), "E_ARG",
                "eagleExpand: an EAGLE-3 head needs its norm and LM head, an EAGLE-1/2 head the target's LM head");
  const Tensor& table = w.embed.defined() ? w.embed : embed;
  SPECDEC_CHECK(w.d2t_max < table.size(0), "E_ARG", "eagleExpand: d2t maps to target id ", w.d2t_max,
                ", outside the embedding table of ", table.size(0), " rows");
  SPECDEC_CHECK(w.draft_to_target.empty() || (w.d2t.defined() && w.t2d.defined()), "E_INTERNAL",
                "eagleExpand: d2t is not on the device");
  // The histories before anything runs (penalize would find a bad one only after the first level).
  if (penalties) {
    SPECDEC_CHECK(static_cast<int64_t>(penalties->hist_indptr.size()) == B + 1, "E_ARG", "eagleExpand: penalties for ",
                  static_cast<int64_t>(penalties->hist_indptr.size()) - 1, " sequences, expected ", B);
    ops::check_penalty_histories(*penalties, w.version == 3 ? w.lm_head.size(0) : lm_head.size(0));
  }
  const int64_t K = top_k;
  const int ps = cache.config().page_size;
  const Device dev = h_root.device();
  using clock = std::chrono::steady_clock;

  // The shape of the whole expansion is known here: sequence b expands min(width, its open nodes)
  // rows a level up to its own depth. Only which nodes, and so the tokens and the KV each row
  // extends, is chosen on the device; the pool is read once at the end.
  int depth = 0;
  for (const auto& s : seqs) depth = std::max(depth, s.max_level);
  depth = std::min(depth, levels);
  std::vector<std::vector<int32_t>> rows;  // rows[L - 1][b]: rows of level L
  std::vector<int64_t> pool_size(static_cast<size_t>(B), K);
  {
    std::vector<int64_t> open(static_cast<size_t>(B), K);
    for (int level = 1; level <= depth; ++level) {
      std::vector<int32_t> r(static_cast<size_t>(B), 0);
      int64_t total = 0;
      for (int64_t b = 0; b < B; ++b) {
        if (level <= seqs[static_cast<size_t>(b)].max_level) r[static_cast<size_t>(b)] = static_cast<int32_t>(std::min<int64_t>(width, open[static_cast<size_t>(b)]));
        open[static_cast<size_t>(b)] = r[static_cast<size_t>(b)] * K;
        pool_size[static_cast<size_t>(b)] += open[static_cast<size_t>(b)];
        total += r[static_cast<size_t>(b)];
      }
      if (total == 0) break;
      rows.push_back(std::move(r));
    }
  }
  std::vector<int64_t> pool_off(static_cast<size_t>(B) + 1, 0);
  for (int64_t b = 0; b < B; ++b) pool_off[static_cast<size_t>(b) + 1] = pool_off[static_cast<size_t>(b)] + pool_size[static_cast<size_t>(b)];
  const int64_t P = pool_off[static_cast<size_t>(B)];
  SPECDEC_CHECK(P <= INT32_MAX / 4, "E_ARG", "eagleExpand: ", P, " candidate nodes is too many");
  // The pool in one buffer: log probabilities, tokens, parents (read back together), rows.
  const Tensor buf = Tensor::empty(DType::u32, {5 * P}, dev);
  TreePool pool{buf.reinterpret(static_cast<size_t>(8 * P), DType::i32, {P}), buf.reinterpret(static_cast<size_t>(12 * P), DType::i32, {P}),
                buf.reinterpret(0, DType::f64, {P}), buf.reinterpret(static_cast<size_t>(16 * P), DType::i32, {P})};

  EagleExpandResult res;
  std::vector<int32_t> draft_len(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) draft_len[static_cast<size_t>(b)] = cache.length(seqs[static_cast<size_t>(b)].draft_seq);

  // Every level's index arrays on the host first, all of them sent in one upload.
  struct Level {
    TreeLevel sel;
    int64_t rows = 0;
    PagedBatch batch;
    std::vector<int32_t> out_start, prev_tail, prev_tail_indptr, copy_indptr, copy_dst;
    std::vector<int32_t> row_seq;  // each row's sequence
    // With penalties: the level's rows (row_seq above, paths of `level` tokens each, read from
    // `paths` on the device), staged in the expansion's one upload.
    std::vector<int32_t> path_indptr, path_tokens;
    PenaltyArgs::Staged staged;
    int seg_prs = -1, seg_ppi = -1, seg_ppt = -1;
    KvCache::PageCopies unshared;  // level 1: the sequences' partial pages into the rows' copies
    int seg_os = -1, seg_oc = -1, seg_ri = -1, seg_pos = -1, seg_out = -1, seg_pt = -1, seg_pti = -1, seg_ci = -1,
        seg_cd = -1, seg_us = -1, seg_ud = -1;
  };
  HostPack pack;
  std::vector<int32_t> root_node(static_cast<size_t>(B), -1), root_out(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) root_out[static_cast<size_t>(b)] = static_cast<int32_t>(pool_off[static_cast<size_t>(b)]);
  const int seg_root_node = pack.add(DType::i32, root_node), seg_root_out = pack.add(DType::i32, root_out);
  // Penalties: the histories once, the root's rows (one per sequence, empty paths), in the same
  // upload. One PenaltyArgs for every level (the histories copied once); each level sets its rows.
  std::unique_ptr<PenaltyArgs> pen;
  PenaltyArgs::Staged root_staged;
  int seg_hi = -1, seg_ht = -1, seg_hc = -1, seg_rrs = -1, seg_rpi = -1, seg_rpt = -1, seg_bt = -1, seg_bv = -1, seg_ni = -1, seg_nt = -1, seg_nb = -1;
  if (penalties) {
    pen = std::make_unique<PenaltyArgs>(*penalties);
    pen->row_seq.resize(static_cast<size_t>(B));
    std::iota(pen->row_seq.begin(), pen->row_seq.end(), 0);
    pen->path_indptr.assign(static_cast<size_t>(B) + 1, 0);
    pen->path_tokens.clear();
    pen->path_source = nullptr;
    seg_hi = pack.add(DType::i32, penalties->hist_indptr);
    seg_ht = pack.add(DType::i32, penalties->hist_tokens);
    seg_hc = pack.add(DType::i32, penalties->hist_counts);
    seg_bt = pack.add(DType::i32, penalties->bias_tokens);
    seg_bv = pack.add(DType::f32, penalties->bias_values);
    seg_ni = pack.add(DType::i32, penalties->ban_indptr);
    seg_nt = pack.add(DType::i32, penalties->ban_tokens);
    seg_nb = pack.add(DType::i32, penalties->ban_before);
    seg_rrs = pack.add(DType::i32, pen->row_seq);
    seg_rpi = pack.add(DType::i32, pen->path_indptr);
    seg_rpt = pack.add(DType::i32, pen->path_tokens);
  }
  std::vector<int64_t> filled(static_cast<size_t>(B), K);  // entries of b made so far (the root's children first)
  std::vector<Level> plan(rows.size());
  std::vector<int> forks;
  try {
    // The previous level's rows: their draft-KV tail pages (the pages a child row copies).
    std::vector<int32_t> prev_tail, prev_tail_indptr;
    for (size_t li = 0; li < rows.size(); ++li) {
      const int level = static_cast<int>(li) + 1;
      Level& lv = plan[li];
      lv.sel.row_indptr.push_back(0);
      std::vector<int32_t>& row_seq = lv.row_seq;  // the sequence of each row
      for (int64_t b = 0; b < B; ++b) {
        const int32_t n = rows[li][static_cast<size_t>(b)];
        // b's open nodes: the children its previous level made (the root's for level 1).
        const int64_t open = level == 1 ? K : static_cast<int64_t>(rows[li - 1][static_cast<size_t>(b)]) * K;
        lv.sel.open_start.push_back(static_cast<int32_t>(pool_off[static_cast<size_t>(b)] + filled[static_cast<size_t>(b)] - open));
        lv.sel.open_count.push_back(static_cast<int32_t>(open));
        lv.sel.row_indptr.push_back(lv.sel.row_indptr.back() + n);
        for (int32_t r = 0; r < n; ++r) row_seq.push_back(static_cast<int32_t>(b));
      }
      const int64_t R = lv.rows = lv.sel.row_indptr.back();
      // Each row's KV: a fork of its sequence's draft cache with `level` new slots; the last is the
      // row's own, the ones before hold its ancestors, copied on the device from its parent row's
      // tail pages (which row that is, only the device knows).
      std::vector<int> seq_ids;
      for (int64_t r = 0; r < R; ++r) {
        seq_ids.push_back(cache.fork(seqs[static_cast<size_t>(row_seq[static_cast<size_t>(r)])].draft_seq));
        forks.push_back(seq_ids.back());
      }
      const KvCache::HostBatch hb = cache.plan_host(seq_ids, std::vector<int>(static_cast<size_t>(R), level), &lv.unshared);
      std::vector<int32_t> qo(static_cast<size_t>(R) + 1), prefix(static_cast<size_t>(R)), positions(static_cast<size_t>(R));
      std::vector<int32_t> tail, tail_indptr{0};
      lv.copy_indptr.push_back(0);
      for (int64_t r = 0; r < R; ++r) {
        const int64_t b = row_seq[static_cast<size_t>(r)];
        const int32_t dl = draft_len[static_cast<size_t>(b)];
        qo[static_cast<size_t>(r) + 1] = static_cast<int32_t>(r + 1);
        prefix[static_cast<size_t>(r)] = dl + level - 1;
        positions[static_cast<size_t>(r)] = seqs[static_cast<size_t>(b)].position + level;
        const int32_t t = hb.page_indptr[static_cast<size_t>(r)] + dl / ps;  // the first page the row's path touches
        tail.insert(tail.end(), hb.page_indices.begin() + t, hb.page_indices.begin() + hb.page_indptr[static_cast<size_t>(r) + 1]);
        tail_indptr.push_back(static_cast<int32_t>(tail.size()));
        if (level > 1) {
          // As many pages as its parent's tail (the parent is a row of the same sequence).
          const int32_t have = (dl + level - 2) / ps - dl / ps + 1;
          lv.copy_dst.insert(lv.copy_dst.end(), hb.page_indices.begin() + t, hb.page_indices.begin() + t + have);
          lv.copy_indptr.push_back(static_cast<int32_t>(lv.copy_dst.size()));
        }
        lv.out_start.push_back(static_cast<int32_t>(pool_off[static_cast<size_t>(b)] + filled[static_cast<size_t>(b)]));
        filled[static_cast<size_t>(b)] += K;
      }
      lv.seg_os = pack.add(DType::i32, lv.sel.open_start);
      lv.seg_oc = pack.add(DType::i32, lv.sel.open_count);
      lv.seg_ri = pack.add(DType::i32, lv.sel.row_indptr);
      lv.seg_pos = pack.add(DType::i32, positions);
      lv.seg_out = pack.add(DType::i32, lv.out_start);
      if (level == 1 && !lv.unshared.src.empty()) {
        lv.seg_us = pack.add(DType::i32, lv.unshared.src);
        lv.seg_ud = pack.add(DType::i32, lv.unshared.dst);
      }
      // Deeper, a row's un-shared page is among those its parent's tail fills.
      if (level > 1) {
        lv.prev_tail = std::move(prev_tail);
        lv.prev_tail_indptr = std::move(prev_tail_indptr);
        lv.seg_pt = pack.add(DType::i32, lv.prev_tail);
        lv.seg_pti = pack.add(DType::i32, lv.prev_tail_indptr);
        lv.seg_ci = pack.add(DType::i32, lv.copy_indptr);
        lv.seg_cd = pack.add(DType::i32, lv.copy_dst);
      }
      lv.batch = PagedBatch::stage(qo, hb.page_indptr, hb.page_indices, prefix, ps, cache.config().num_pages, pack);
      if (penalties) {
        lv.path_indptr.resize(static_cast<size_t>(R) + 1);
        for (int64_t r = 0; r <= R; ++r) lv.path_indptr[static_cast<size_t>(r)] = static_cast<int32_t>(r * level);
        lv.path_tokens.resize(static_cast<size_t>(R * level));
        std::iota(lv.path_tokens.begin(), lv.path_tokens.end(), 0);
        lv.seg_prs = pack.add(DType::i32, lv.row_seq);
        lv.seg_ppi = pack.add(DType::i32, lv.path_indptr);
        lv.seg_ppt = pack.add(DType::i32, lv.path_tokens);
      }
      prev_tail = std::move(tail);
      prev_tail_indptr = std::move(tail_indptr);
    }
    pack.upload(dev);
    if (penalties) {
      root_staged = {pack.view(seg_rrs), pack.view(seg_hi), pack.view(seg_ht), pack.view(seg_hc), pack.view(seg_rpi), pack.view(seg_rpt),
                     pack.view(seg_bt), pack.view(seg_bv), pack.view(seg_ni), pack.view(seg_nt), pack.view(seg_nb)};
      pen->staged = &root_staged;
      for (Level& lv : plan)
        lv.staged = {pack.view(lv.seg_prs), pack.view(seg_hi), pack.view(seg_ht), pack.view(seg_hc), pack.view(lv.seg_ppi), pack.view(lv.seg_ppt),
                     pack.view(seg_bt), pack.view(seg_bv), pack.view(seg_ni), pack.view(seg_nt), pack.view(seg_nb)};
    }

    auto t0 = clock::now();
    {
      // The root's children: row b of h_root, no parent (an empty path).
      const TopChildren first = top_children(w, lm_head, h_root, top_k, pen.get());
      ops::tree_grow(pool, first.vals, first.ids, pack.view(seg_root_node), pack.view(seg_root_out), root_out, w.d2t);
    }
    res.first_seconds = seconds_since(t0);
    Tensor h = h_root;
    for (size_t li = 0; li < plan.size(); ++li) {
      Level& lv = plan[li];
      t0 = clock::now();
      const int64_t R = lv.rows;
      lv.batch.bind(pack);
      lv.sel.d_open_start = pack.view(lv.seg_os);
      lv.sel.d_open_count = pack.view(lv.seg_oc);
      lv.sel.d_row_indptr = pack.view(lv.seg_ri);
      Tensor node = Tensor::empty(DType::i32, {R}, dev), token = Tensor::empty(DType::i32, {R}, dev),
             src_row = Tensor::empty(DType::i32, {R}, dev);
      TailGather gather;
      if (lv.seg_pt >= 0) {
        gather.prev_tail_indptr = lv.prev_tail_indptr;
        gather.tail_indptr = lv.copy_indptr;
        gather.d_prev_tail = pack.view(lv.seg_pt);
        gather.d_prev_tail_indptr = pack.view(lv.seg_pti);
        gather.d_tail_indptr = pack.view(lv.seg_ci);
        gather.src_pages = Tensor::empty(DType::i32, {static_cast<int64_t>(lv.copy_dst.size())}, dev);
      }
      ops::tree_select(pool, lv.sel, node, token, src_row, lv.seg_pt >= 0 ? &gather : nullptr);
      Tensor feats = Tensor::empty(DType::f32, {R, h.size(1)}, dev);
      ops::rows_at(h, src_row, feats);
      if (lv.seg_us >= 0)
        ops::kv_copy_pages(cache.layers(), pack.view(lv.seg_us), pack.view(lv.seg_ud), &lv.unshared.src, &lv.unshared.dst);
      if (lv.seg_pt >= 0) ops::kv_copy_pages_among(cache.layers(), gather.src_pages, pack.view(lv.seg_cd), lv.prev_tail, lv.copy_dst);
      h = eagle_forward(w, embed, cache.layers(), lv.batch, token, nullptr, pack.view(lv.seg_pos), {feats}, false);
      // A row's path: the node it expands and the nodes above it (`level` tokens, in the draft's
      // vocabulary), read from the pool on the device.
      Tensor paths;
      if (pen) {
        const int64_t L = static_cast<int64_t>(li) + 1;
        paths = Tensor::empty(DType::i32, {R * L}, dev);  // flat: the penalties read it by index
        Tensor rows_paths = paths.reinterpret(0, DType::i32, {R, L});
        ops::tree_paths(pool, node, w.t2d, rows_paths);
        std::swap(pen->row_seq, lv.row_seq);
        std::swap(pen->path_indptr, lv.path_indptr);
        std::swap(pen->path_tokens, lv.path_tokens);
        pen->path_source = &paths;
        pen->staged = &lv.staged;
      }
      const TopChildren kids = top_children(w, lm_head, h, top_k, pen.get());
      ops::tree_grow(pool, kids.vals, kids.ids, node, pack.view(lv.seg_out), lv.out_start, w.d2t);
      res.level_rows.push_back(static_cast<int32_t>(R));
      res.level_seconds.push_back(seconds_since(t0));
    }
  } catch (...) {
    for (int f : forks) cache.free(f);
    throw;
  }
  for (int f : forks) cache.free(f);
  // The one read: log probabilities, tokens and parents.
  const auto t_read = clock::now();
  std::vector<unsigned char> host(static_cast<size_t>(16 * P));
  buf.reinterpret(0, DType::u32, {4 * P}).copy_to_host(host.data(), host.size());
  // On a GPU the levels above only queued their work: the read waited for it. Its time goes to the
  // levels in proportion to what each measured (on the CPU, where ops finish as they are called, ~0).
  const double wait = seconds_since(t_read);
  double measured = res.first_seconds;
  for (double x : res.level_seconds) measured += x;
  if (measured > 0) {
    for (double& x : res.level_seconds) x += wait * x / measured;
    res.first_seconds += wait * res.first_seconds / measured;
  }
  const double* lp = reinterpret_cast<const double*>(host.data());
  const int32_t* tok = reinterpret_cast<const int32_t*>(host.data() + 8 * P);
  const int32_t* par = reinterpret_cast<const int32_t*>(host.data() + 12 * P);
  res.pools.resize(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    auto& out = res.pools[static_cast<size_t>(b)];
    const int64_t o = pool_off[static_cast<size_t>(b)];
    out.reserve(static_cast<size_t>(filled[static_cast<size_t>(b)]));
    // Entries in the order they were made: level 1 (the root's children), then each level's children.
    int32_t level = 1;
    int64_t level_end = K;
    for (int64_t e = 0; e < filled[static_cast<size_t>(b)]; ++e) {
      while (e >= level_end) level_end += static_cast<int64_t>(rows[static_cast<size_t>(level++ - 1)][static_cast<size_t>(b)]) * K;
      const int32_t p = par[o + e];
      SPECDEC_CHECK(p < 0 || (p >= o && p < o + e), "E_INTERNAL", "eagleExpand: entry ", e, " of sequence ", b,
                    " has parent ", p, " outside its pool");
      out.push_back({tok[o + e], p < 0 ? -1 : static_cast<int32_t>(p - o), level, lp[o + e]});
    }
  }
  return res;
}

}  // namespace specdec

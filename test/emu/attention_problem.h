// The batch both tree-attention emulations draw (test/emu/attention_emu.cc, attention_tc_emu.cc):
// paged KV, queries, indptrs, causal or random tree masks, from a seed; and a tree's path batch. Include after cuda_emu.h and
// the kernel header (it fills attn::Params); it lives in the includer's anonymous namespace.
#pragma once

struct SeqSpec {
  int prefix, qo;
  bool masked;      // random tree mask over the new tokens (ancestors + self); else causal
  int empty_row;    // with prefix 0 and a mask: this row's mask is cleared (sees nothing), -1 none
};

// One batch: paged KV [pages, 2, page_size, Hkv, D], queries [N, Hq, D], indptrs, masks.
template <typename QT, typename KVT>
struct Problem {
  int Hq = 0, Hkv = 0, D = 0, page_size = 16;
  std::vector<SeqSpec> seqs;
  std::vector<QT> q;
  std::vector<KVT> kv;
  std::vector<int32_t> qo_indptr{0}, page_indptr{0}, page_indices, prefix;
  std::vector<uint64_t> mask;  // [N, mask_words]; empty = no mask
  int mask_words = 0;
  float sm_scale = 0.f;
  int window = 0;  // sliding window (attn::Params::window): a row sees the last `window` of its list
  float softcap = 0.f;  // scores softcap tanh(s / softcap) (attn::Params::softcap), 0: none
  int64_t N() const { return qo_indptr.back(); }

  size_t kv_index(int page, int kvsel, int r, int h, int d) const {
    return ((((static_cast<size_t>(page) * 2 + kvsel) * page_size + r) * Hkv + h) * D) + d;
  }
  int slot_page(int b, int t) const { return page_indices[page_indptr[b] + t / page_size]; }

  // The sub-batch of sequence b alone (same pages, same values).
  Problem alone(int b) const {
    Problem p = *this;
    p.seqs = {seqs[b]};
    p.qo_indptr = {0, qo_indptr[b + 1] - qo_indptr[b]};
    p.page_indptr = {0, page_indptr[b + 1] - page_indptr[b]};
    p.page_indices.assign(page_indices.begin() + page_indptr[b], page_indices.begin() + page_indptr[b + 1]);
    p.prefix = {prefix[b]};
    p.q.assign(q.begin() + static_cast<size_t>(qo_indptr[b]) * Hq * D, q.begin() + static_cast<size_t>(qo_indptr[b + 1]) * Hq * D);
    if (!mask.empty())
      p.mask.assign(mask.begin() + static_cast<size_t>(qo_indptr[b]) * mask_words, mask.begin() + static_cast<size_t>(qo_indptr[b + 1]) * mask_words);
    return p;
  }
};

template <typename QT, typename KVT>
Problem<QT, KVT> make_problem(std::mt19937_64& rng, int Hq, int Hkv, int D, const std::vector<SeqSpec>& seqs) {
  Problem<QT, KVT> p;
  p.Hq = Hq, p.Hkv = Hkv, p.D = D, p.seqs = seqs;
  p.sm_scale = 1.f / std::sqrt(static_cast<float>(D));
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  int max_qo = 0;
  int total_pages = 0;
  for (const auto& s : seqs) {
    p.qo_indptr.push_back(p.qo_indptr.back() + s.qo);
    const int pages = (s.prefix + s.qo + p.page_size - 1) / p.page_size;
    p.page_indptr.push_back(p.page_indptr.back() + pages);
    p.prefix.push_back(s.prefix);
    total_pages += pages;
    max_qo = std::max(max_qo, s.qo);
  }
  // Pages scattered over a pool with spare pages (never referenced: their values must not matter).
  const int pool = total_pages + 5;
  std::vector<int32_t> perm(static_cast<size_t>(pool));
  for (int i = 0; i < pool; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  p.page_indices.assign(perm.begin(), perm.begin() + total_pages);
  p.kv.resize(static_cast<size_t>(pool) * 2 * p.page_size * Hkv * D);
  for (auto& v : p.kv) v = from_float<KVT>(u(rng));
  p.q.resize(static_cast<size_t>(p.N()) * Hq * D);
  for (auto& v : p.q) v = from_float<QT>(u(rng));
  bool any_mask = false;
  for (const auto& s : seqs) any_mask = any_mask || s.masked;
  if (any_mask) {
    p.mask_words = (max_qo + 63) / 64;
    p.mask.assign(static_cast<size_t>(p.N()) * p.mask_words, 0);
    for (size_t b = 0; b < seqs.size(); ++b) {
      const auto& s = seqs[b];
      std::vector<int> parent(static_cast<size_t>(s.qo), -1);
      for (int i = 0; i < s.qo; ++i) {
        if (s.masked && i > 0) parent[i] = static_cast<int>(rng() % static_cast<uint64_t>(i));
        else if (!s.masked) parent[i] = i - 1;  // causal chain, written as a mask
        uint64_t* row = &p.mask[static_cast<size_t>(p.qo_indptr[b] + i) * p.mask_words];
        for (int j = i; j >= 0; j = parent[j]) row[j >> 6] |= 1ull << (j & 63);
        if (i == s.empty_row) std::fill(row, row + p.mask_words, 0);
      }
    }
  }
  return p;
}

// Tree = path: for a tree batch (one masked sequence of `nodes` new tokens over `prefix` slots), the
// batch of its paths as they would be after commit: each node decoded alone (the prefix, then its
// ancestors' K/V copied right after it, then the node as one new token), then a few leaves' whole
// paths as causal chains; fresh pages in reverse order (a different physical layout). rows_node maps
// each path row to its tree node, whose row must carry the same bits.
template <typename QT, typename KVT>
struct PathBatch {
  Problem<QT, KVT> path;
  std::vector<int> rows_node;
};

template <typename QT, typename KVT>
PathBatch<QT, KVT> make_path_batch(const Problem<QT, KVT>& tree, int prefix, int nodes) {
  const int Hq = tree.Hq, Hkv = tree.Hkv, D = tree.D;
  std::vector<std::vector<int>> anc(static_cast<size_t>(nodes));  // ancestors in index order (= depth order)
  std::vector<bool> leaf(static_cast<size_t>(nodes), true);
  for (int i = 0; i < nodes; ++i)
    for (int j = 0; j < i; ++j)
      if ((tree.mask[static_cast<size_t>(i) * tree.mask_words + (j >> 6)] >> (j & 63)) & 1ull) {
        anc[i].push_back(j);
        leaf[j] = false;
      }
  // The path batch: node i decoded alone (prefix + ancestors, then i), then each leaf as a chain.
  PathBatch<QT, KVT> out;
  Problem<QT, KVT>& path = out.path;
  path.Hq = Hq, path.Hkv = Hkv, path.D = D, path.page_size = tree.page_size, path.sm_scale = tree.sm_scale;
  path.window = tree.window;
  path.softcap = tree.softcap;
  const size_t row = static_cast<size_t>(Hkv) * D, page_elems = 2 * static_cast<size_t>(tree.page_size) * row;
  std::vector<int>& rows_node = out.rows_node;
  auto add_seq = [&](const std::vector<int>& slots_from_tree, int new_tokens) {
    const int len = static_cast<int>(slots_from_tree.size());
    const int pages = (len + path.page_size - 1) / path.page_size;
    path.seqs.push_back({len - new_tokens, new_tokens, false, -1});
    path.prefix.push_back(len - new_tokens);
    path.qo_indptr.push_back(path.qo_indptr.back() + new_tokens);
    // Fresh pages at the end of the pool, in reverse order (a different physical layout).
    const int first = static_cast<int>(path.kv.size() / page_elems);
    path.kv.resize(path.kv.size() + static_cast<size_t>(pages) * page_elems, from_float<KVT>(0.f));
    for (int pg = pages - 1; pg >= 0; --pg) path.page_indices.push_back(first + pg);
    path.page_indptr.push_back(static_cast<int32_t>(path.page_indices.size()));
    const int b = static_cast<int>(path.seqs.size()) - 1;
    for (int t = 0; t < len; ++t)
      for (int sel = 0; sel < 2; ++sel)
        for (int h = 0; h < Hkv; ++h)
          for (int d = 0; d < D; ++d)
            path.kv[path.kv_index(path.slot_page(b, t), sel, t % path.page_size, h, d)] =
                tree.kv[tree.kv_index(tree.slot_page(0, slots_from_tree[t]), sel, slots_from_tree[t] % tree.page_size, h, d)];
  };
  auto q_of = [&](int node) {
    const auto* q = &tree.q[static_cast<size_t>(node) * Hq * D];
    path.q.insert(path.q.end(), q, q + static_cast<size_t>(Hq) * D);
    rows_node.push_back(node);
  };
  std::vector<int> pre(static_cast<size_t>(prefix));
  for (int t = 0; t < prefix; ++t) pre[t] = t;
  for (int i = 0; i < nodes; ++i) {
    std::vector<int> slots = pre;
    for (int a : anc[i]) slots.push_back(prefix + a);
    slots.push_back(prefix + i);
    add_seq(slots, 1);
    q_of(i);
  }
  for (int i = 0; i < nodes; ++i) {
    if (!leaf[i] || anc[i].empty()) continue;
    std::vector<int> slots = pre, chain = anc[i];
    chain.push_back(i);
    for (int a : chain) slots.push_back(prefix + a);
    add_seq(slots, static_cast<int>(chain.size()));
    for (int a : chain) q_of(a);
    if (path.seqs.size() >= static_cast<size_t>(nodes) + 3) break;  // a few chains are enough
  }
  return out;
}

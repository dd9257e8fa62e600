// The batch both tree-attention emulations draw (test/emu/attention_emu.cc, attention_tc_emu.cc):
// paged KV, queries, indptrs, causal or random tree masks, from a seed. Include after cuda_emu.h and
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

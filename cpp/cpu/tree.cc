// CPU backend of the tree-expansion ops (cpp/core/ops_tree.h). Arguments were validated by the
// dispatcher (cpp/core/ops_tree.cc); these functions only compute, with the rules of spec_math.h.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "../core/ops_tree.h"
#include "../core/spec_math.h"

namespace specdec {
namespace cpu {

namespace {

int64_t clamp_index(int64_t i, int64_t n) { return i < 0 ? 0 : (i >= n ? n - 1 : i); }

}  // namespace

void tree_select(const TreePool& pool, const TreeLevel& level, Tensor& node, Tensor& token, Tensor& src_row,
                 TailGather* pages) {
  const double* lp = pool.log_prob.ptr<double>();
  const int32_t* ptok = pool.token.ptr<int32_t>();
  const int32_t* prow = pool.row.ptr<int32_t>();
  int32_t *out_node = node.ptr<int32_t>(), *out_tok = token.ptr<int32_t>(), *out_src = src_row.ptr<int32_t>();
  std::vector<int32_t> order;
  for (size_t b = 0; b < level.open_start.size(); ++b) {
    const int32_t s = level.open_start[b], n = level.open_count[b], r0 = level.row_indptr[b];
    const int32_t take = level.row_indptr[b + 1] - r0;
    if (take == 0) continue;
    order.resize(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), s);
    // A strict total order (ties broken by index), so partial_sort gives the same rows as the kernel's ranks.
    std::partial_sort(order.begin(), order.begin() + take, order.end(),
                      [&](int32_t x, int32_t y) { return sm::expand_better(lp[x], x, lp[y], y); });
    for (int32_t k = 0; k < take; ++k) {
      const int32_t e = order[static_cast<size_t>(k)];
      out_node[r0 + k] = e;
      out_tok[r0 + k] = ptok[e];
      out_src[r0 + k] = prow[e];
    }
  }
  if (!pages) return;
  const auto& pi = pages->prev_tail_indptr;
  const auto& ti = pages->tail_indptr;
  const int64_t R_prev = static_cast<int64_t>(pi.size()) - 1;
  const int32_t* prev = pages->d_prev_tail.ptr<int32_t>();
  int32_t* out = pages->src_pages.ptr<int32_t>();
  for (size_t r = 0; r + 1 < ti.size(); ++r) {
    const int64_t s = clamp_index(out_src[r], R_prev), n = pi[static_cast<size_t>(s) + 1] - pi[static_cast<size_t>(s)];
    for (int32_t k = 0; k < ti[r + 1] - ti[r]; ++k) out[ti[r] + k] = prev[pi[static_cast<size_t>(s)] + std::min<int64_t>(k, n - 1)];
  }
}

void tree_grow(TreePool& pool, const Tensor& vals, const Tensor& ids, const Tensor& node, const Tensor& out_start,
               const Tensor& map) {
  const int64_t R = vals.size(0), K = vals.size(1), P = pool.size(), V = map.defined() ? map.size(0) : 0;
  const float* v = vals.ptr<float>();
  const int32_t *id = ids.ptr<int32_t>(), *nd = node.ptr<int32_t>(), *start = out_start.ptr<int32_t>();
  const int32_t* m = map.defined() ? map.ptr<int32_t>() : nullptr;
  int32_t *tok = pool.token.ptr<int32_t>(), *par = pool.parent.ptr<int32_t>(), *row = pool.row.ptr<int32_t>();
  double* lp = pool.log_prob.ptr<double>();
  for (int64_t r = 0; r < R; ++r) {
    const int32_t parent = nd[r] < 0 ? -1 : static_cast<int32_t>(clamp_index(nd[r], P));
    // Read before the writes: a row's parent is never among the entries it writes (those are new).
    const double base = parent < 0 ? 0.0 : lp[parent];
    for (int64_t j = 0; j < K; ++j) {
      const int64_t e = start[r] + j, i = r * K + j;
      tok[e] = m ? m[clamp_index(id[i], V)] : id[i];
      par[e] = parent;
      lp[e] = sm::child_log_prob(base, v[i]);
      row[e] = static_cast<int32_t>(r);
    }
  }
}

void tree_paths(const TreePool& pool, const Tensor& node, const Tensor& map, Tensor& out) {
  const int64_t R = node.size(0), L = out.size(1), P = pool.size();
  const int32_t *nd = node.ptr<int32_t>(), *tok = pool.token.ptr<int32_t>(), *par = pool.parent.ptr<int32_t>();
  const int32_t* m = map.defined() ? map.ptr<int32_t>() : nullptr;
  const int32_t ms = map.defined() ? static_cast<int32_t>(map.size(0)) : 0;
  int32_t* o = out.ptr<int32_t>();
  for (int64_t r = 0; r < R; ++r) {
    int64_t e = nd[r] < 0 ? -1 : clamp_index(nd[r], P);
    for (int64_t j = 0; j < L; ++j) {
      o[r * L + j] = e < 0 ? -1 : sm::path_token(m, ms, tok[e]);
      if (e >= 0) e = par[e] < 0 ? -1 : clamp_index(par[e], P);
    }
  }
}

void rows_at(const Tensor& x, const Tensor& idx, Tensor& out) {
  const int64_t n = x.size(0), w = x.size(1), m = idx.size(0);
  const int32_t* ix = idx.ptr<int32_t>();
  const char* src = static_cast<const char*>(x.data());
  char* dst = static_cast<char*>(out.data());
  for (int64_t i = 0; i < m; ++i) std::memcpy(dst + i * w * 4, src + clamp_index(ix[i], n) * w * 4, static_cast<size_t>(w) * 4);
}

}  // namespace cpu
}  // namespace specdec

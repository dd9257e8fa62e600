// Op contract: the device side of a dynamic draft tree's expansion (EAGLE-2, cpp/model/eagle.cc).
// The candidate nodes live in a pool on the device; each level chooses the nodes it expands
// (tree_select), gathers their rows (rows_at), and appends their children (tree_grow), so the
// expansion reads nothing back until its pool is complete: one wait for a whole tree instead of
// one per level. One declaration per op in specdec::ops (validates from host copies, then
// dispatches) and the implementations in specdec::cpu and specdec::cuda; the scalar rules are
// sm::expand_better and sm::child_log_prob (spec_math.h), shared by both.
#pragma once
#include <cstdint>
#include <vector>

#include "tensor.h"

namespace specdec {

// Pool entry e: its token (a target id), parent (pool index, -1: a child of the root), path log
// probability, and the row of the level that made it (whose hidden state and draft KV it extends).
struct TreePool {
  Tensor token;     // i32 [P]
  Tensor parent;    // i32 [P]
  Tensor log_prob;  // f64 [P]
  Tensor row;       // i32 [P]
  int64_t size() const { return token.defined() ? token.size(0) : 0; }
};

// A level's rows: sequence b's rows are row_indptr[b] .. row_indptr[b + 1] (as many as it expands),
// chosen among pool entries open_start[b] .. open_start[b] + open_count[b] (its newest nodes).
struct TreeLevel {
  std::vector<int32_t> open_start, open_count, row_indptr;  // [B], [B], [B + 1], on the host
  Tensor d_open_start, d_open_count, d_row_indptr;         // the same on the pool's device
};

// Optional page gather of tree_select: row r copies its source row's draft-KV tail pages,
// src_pages[tail_indptr[r] + k] = prev_tail[prev_tail_indptr[s] + min(k, n_s - 1)] for
// k < tail_indptr[r + 1] - tail_indptr[r], s = src_row[r] (clamped to the previous level's rows),
// n_s its page count (>= 1 each).
struct TailGather {
  std::vector<int32_t> prev_tail_indptr, tail_indptr;  // host copies: [R_prev + 1], [R + 1]
  Tensor d_prev_tail, d_prev_tail_indptr, d_tail_indptr;  // i32 on the device (prev_tail: [nnz_prev])
  Tensor src_pages;  // out: i32 [tail_indptr[R]]
};

namespace ops {

// For each sequence b, its take = row_indptr[b + 1] - row_indptr[b] best open entries in the order
// sm::expand_better: row row_indptr[b] + rank gets node (the entry's pool index), token (its token)
// and src_row (its row). node, token, src_row: i32 [R]. Host checks: open ranges inside the pool,
// take <= open_count, row_indptr monotone from 0.
void tree_select(const TreePool& pool, const TreeLevel& level, Tensor& node, Tensor& token, Tensor& src_row,
                 TailGather* pages = nullptr);

// The children of a level's R rows: for r < R and j < K, entry out_start[r] + j gets token =
// map[ids[r, j]] (map undefined: ids[r, j]), parent = node[r], log_prob = sm::child_log_prob(
// node[r] < 0 ? 0 : log_prob[node[r]], vals[r, j]), row = r. vals f32 [R, K], ids i32 [R, K] (top_k's),
// node i32 [R] (tree_select's, or -1 for the root's children), map i32 [V'] (EAGLE-3's d2t).
// h_out_start: out_start's host copy, validated: increasing by at least K, inside the pool. Indices
// the device chose (node, ids) are clamped to their tables, never read outside them; a node that
// clamps into this call's own output entries reads an unspecified (old or new) log_prob there
// (EAGLE's nodes always precede out_start).
void tree_grow(TreePool& pool, const Tensor& vals, const Tensor& ids, const Tensor& node, const Tensor& out_start,
               const std::vector<int32_t>& h_out_start, const Tensor& map);

// Each row's path of tokens: out[r, j] = lookup(token of the j-th ancestor-or-self of node[r]) for
// j < L (the node itself first, then its parent, ...), -1 past the root (a parent of -1); L =
// out.size(1). lookup(t) = map[t] where map is defined (i32 [V']: EAGLE-3's target -> draft ids, -1
// for ids the draft lacks) and t in [0, V'), else -1; the token itself where map is undefined.
// node i32 [R] (tree_select's); indices the device chose are clamped into the pool, and the walk
// stops after L steps whatever the parents are. What EAGLE's penalized expansion reads as each
// row's path (PenaltyArgs::path_source), so its drafts see the tokens above them.
void tree_paths(const TreePool& pool, const Tensor& node, const Tensor& map, Tensor& out);

// out[i, :] = x[idx[i], :] for rows chosen on the device (idx clamped to x's rows). x [n, w] of a
// 4-byte dtype (f32, i32), idx i32 [m], out [m, w] of x's dtype; n >= 1; out must not overlap x
// (the same tensor is E_ARG; a view into x's storage is the caller's error).
void rows_at(const Tensor& x, const Tensor& idx, Tensor& out);

}  // namespace ops

#define SPECDEC_TREE_OPS(NS)                                                                              \
  namespace NS {                                                                                          \
  void tree_select(const TreePool& pool, const TreeLevel& level, Tensor& node, Tensor& token, Tensor& src_row, \
                   TailGather* pages);                                                                    \
  void tree_grow(TreePool& pool, const Tensor& vals, const Tensor& ids, const Tensor& node, const Tensor& out_start, \
                 const Tensor& map);                                                                      \
  void tree_paths(const TreePool& pool, const Tensor& node, const Tensor& map, Tensor& out);              \
  void rows_at(const Tensor& x, const Tensor& idx, Tensor& out);                                          \
  }
SPECDEC_TREE_OPS(cpu)
SPECDEC_TREE_OPS(cuda)
#undef SPECDEC_TREE_OPS

}  // namespace specdec

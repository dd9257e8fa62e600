// The validating dispatchers of the tree-expansion ops (ops_tree.h): every check reads host copies,
// so a level's ops make no wait; what only the device knows (the nodes chosen) is clamped there.
#include "ops_tree.h"

#include "backend.h"
#include "transfers.h"

namespace specdec {

namespace {

void check_pool(const TreePool& pool, const char* op) {
  SPECDEC_CHECK(pool.token.defined(), "E_ARG", op, ": pool: undefined");
  const int64_t P = pool.size();
  check_arg(pool.token, "pool.token", {DType::i32}, {P});
  check_arg(pool.parent, "pool.parent", {DType::i32}, {P});
  check_arg(pool.log_prob, "pool.log_prob", {DType::f64}, {P});
  check_arg(pool.row, "pool.row", {DType::i32}, {P});
  check_same_device({&pool.token, &pool.parent, &pool.log_prob, &pool.row}, op);
}

void check_host_copy(const Tensor& t, const std::vector<int32_t>& h, const char* name) {
  check_arg(t, name, {DType::i32}, {static_cast<int64_t>(h.size())});
}

[[noreturn]] void no_cuda(const char* op) {
  fail("E_UNSUPPORTED", op, ": the CUDA backend is not available (", backend_info().cuda_reason, ")");
}

}  // namespace

namespace ops {

void tree_select(const TreePool& pool, const TreeLevel& level, Tensor& node, Tensor& token, Tensor& src_row,
                 TailGather* pages) {
  check_pool(pool, "tree_select");
  const int64_t P = pool.size(), B = static_cast<int64_t>(level.open_start.size());
  SPECDEC_CHECK(static_cast<int64_t>(level.open_count.size()) == B && static_cast<int64_t>(level.row_indptr.size()) == B + 1 &&
                    level.row_indptr[0] == 0,
                "E_ARG", "tree_select: ", B, " open starts, ", level.open_count.size(), " open counts and ",
                level.row_indptr.size(), " row_indptr entries (expected B, B and B + 1 from 0)");
  check_host_copy(level.d_open_start, level.open_start, "level.d_open_start");
  check_host_copy(level.d_open_count, level.open_count, "level.d_open_count");
  check_host_copy(level.d_row_indptr, level.row_indptr, "level.d_row_indptr");
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s = level.open_start[b], n = level.open_count[b], take = int64_t{level.row_indptr[b + 1]} - level.row_indptr[b];
    SPECDEC_CHECK(s >= 0 && n >= 0 && s + n <= P, "E_ARG", "tree_select: sequence ", b, ": open entries ", s, " .. ", s + n,
                  " outside the pool of ", P);
    SPECDEC_CHECK(take >= 0 && take <= n, "E_ARG", "tree_select: sequence ", b, ": ", take, " rows from ", n, " open entries");
  }
  const int64_t R = level.row_indptr[B];
  check_arg(node, "node", {DType::i32}, {R});
  check_arg(token, "token", {DType::i32}, {R});
  check_arg(src_row, "src_row", {DType::i32}, {R});
  check_same_device({&pool.token, &level.d_open_start, &level.d_open_count, &level.d_row_indptr, &node, &token, &src_row},
                    "tree_select");
  if (pages) {
    const auto& pi = pages->prev_tail_indptr;
    const auto& ti = pages->tail_indptr;
    // Rows read a previous row's tail (clamped into them): there must be one (fuzz finding: {0} read pi[1]).
    SPECDEC_CHECK((pi.size() >= 2 || (R == 0 && pi.size() == 1)) && pi[0] == 0 && static_cast<int64_t>(ti.size()) == R + 1 && ti[0] == 0, "E_ARG",
                  "tree_select: pages: ", pi.size(), " prev_tail_indptr and ", ti.size(), " tail_indptr entries (expected >= 2 and ",
                  R + 1, ", from 0)");
    for (size_t i = 1; i < pi.size(); ++i)
      SPECDEC_CHECK(pi[i] > pi[i - 1], "E_ARG", "tree_select: pages: previous row ", i - 1, " has no tail page");
    for (size_t i = 1; i < ti.size(); ++i)
      SPECDEC_CHECK(ti[i] >= ti[i - 1], "E_ARG", "tree_select: pages: tail_indptr not monotone at ", i);
    check_arg(pages->d_prev_tail, "pages.d_prev_tail", {DType::i32}, {pi.back()});
    check_host_copy(pages->d_prev_tail_indptr, pi, "pages.d_prev_tail_indptr");
    check_host_copy(pages->d_tail_indptr, ti, "pages.d_tail_indptr");
    check_arg(pages->src_pages, "pages.src_pages", {DType::i32}, {ti.back()});
    check_same_device({&pool.token, &pages->d_prev_tail, &pages->d_prev_tail_indptr, &pages->d_tail_indptr, &pages->src_pages},
                      "tree_select");
  }
  if (R == 0) return;
  note_op();  // one launch on CUDA
  if (pool.token.device() == Device::cpu) return cpu::tree_select(pool, level, node, token, src_row, pages);
#ifdef SPECDEC_WITH_CUDA
  cuda::tree_select(pool, level, node, token, src_row, pages);
#else
  no_cuda("tree_select");
#endif
}

void tree_grow(TreePool& pool, const Tensor& vals, const Tensor& ids, const Tensor& node, const Tensor& out_start,
               const std::vector<int32_t>& h_out_start, const Tensor& map) {
  check_pool(pool, "tree_grow");
  check_arg_dim(vals, "vals", {DType::f32}, 2);
  const int64_t R = vals.size(0), K = vals.size(1), P = pool.size();
  check_arg(ids, "ids", {DType::i32}, {R, K});
  check_arg(node, "node", {DType::i32}, {R});
  check_arg(out_start, "out_start", {DType::i32}, {R});
  SPECDEC_CHECK(static_cast<int64_t>(h_out_start.size()) == R, "E_ARG", "tree_grow: ", h_out_start.size(),
                " host out_start entries for ", R, " rows");
  for (int64_t r = 0; r < R; ++r) {
    const int64_t s = h_out_start[static_cast<size_t>(r)];
    SPECDEC_CHECK(s >= 0 && s + K <= P, "E_ARG", "tree_grow: row ", r, ": entries ", s, " .. ", s + K, " outside the pool of ", P);
    SPECDEC_CHECK(r == 0 || s >= h_out_start[static_cast<size_t>(r - 1)] + K, "E_ARG", "tree_grow: row ", r,
                  ": entries from ", s, " overlap row ", r - 1, "'s");
  }
  if (map.defined()) {
    check_arg_dim(map, "map", {DType::i32}, 1);
    SPECDEC_CHECK(map.size(0) >= 1, "E_ARG", "tree_grow: map: empty");
    check_same_device({&pool.token, &map}, "tree_grow");
  }
  check_same_device({&pool.token, &vals, &ids, &node, &out_start}, "tree_grow");
  if (R == 0 || K == 0) return;
  note_op();  // one launch on CUDA
  if (pool.token.device() == Device::cpu) return cpu::tree_grow(pool, vals, ids, node, out_start, map);
#ifdef SPECDEC_WITH_CUDA
  cuda::tree_grow(pool, vals, ids, node, out_start, map);
#else
  no_cuda("tree_grow");
#endif
}

void tree_paths(const TreePool& pool, const Tensor& node, const Tensor& map, Tensor& out) {
  check_pool(pool, "tree_paths");
  SPECDEC_CHECK(pool.size() >= 1, "E_ARG", "tree_paths: the pool is empty");
  check_arg_dim(node, "node", {DType::i32}, 1);
  const int64_t R = node.size(0);
  check_arg_dim(out, "out", {DType::i32}, 2);
  check_arg(out, "out", {DType::i32}, {R, out.size(1)});
  SPECDEC_CHECK(out.size(1) <= (1 << 20), "E_ARG", "tree_paths: paths of ", out.size(1), " tokens (at most 2^20)");
  if (map.defined()) {
    check_arg_dim(map, "map", {DType::i32}, 1);
    check_same_device({&pool.token, &map}, "tree_paths");
  }
  check_same_device({&pool.token, &node, &out}, "tree_paths");
  if (R == 0 || out.size(1) == 0) return;
  note_op();  // one launch on CUDA
  if (pool.token.device() == Device::cpu) return cpu::tree_paths(pool, node, map, out);
#ifdef SPECDEC_WITH_CUDA
  cuda::tree_paths(pool, node, map, out);
#else
  no_cuda("tree_paths");
#endif
}

void rows_at(const Tensor& x, const Tensor& idx, Tensor& out) {
  check_arg_dim(x, "x", {DType::f32, DType::i32}, 2);
  SPECDEC_CHECK(x.size(0) >= 1, "E_ARG", "rows_at: x has no rows");
  check_arg_dim(idx, "idx", {DType::i32}, 1);
  check_arg(out, "out", {x.dtype()}, {idx.size(0), x.size(1)});
  check_same_device({&x, &idx, &out}, "rows_at");
  SPECDEC_CHECK(out.data() != x.data(), "E_ARG", "rows_at: out must not alias x");
  if (idx.size(0) == 0 || x.size(1) == 0) return;
  note_op();  // one launch on CUDA
  if (x.device() == Device::cpu) return cpu::rows_at(x, idx, out);
#ifdef SPECDEC_WITH_CUDA
  cuda::rows_at(x, idx, out);
#else
  no_cuda("rows_at");
#endif
}

}  // namespace ops
}  // namespace specdec

// CUDA backend of the tree-expansion ops (cpp/core/ops_tree.h): launchers only (kernels in
// tree.cuh). Arguments were validated by the dispatcher (cpp/core/ops_tree.cc).
#include "../cpp/core/ops_tree.h"
#include "common.cuh"
#include "tree.cuh"

namespace specdec {
namespace cuda {

using namespace tree_kernels;

void tree_select(const TreePool& pool, const TreeLevel& level, Tensor& node, Tensor& token, Tensor& src_row,
                 TailGather* pages) {
  const int64_t B = static_cast<int64_t>(level.open_start.size());
  SPECDEC_CHECK(B <= INT32_MAX, "E_UNSUPPORTED", "tree_select: ", B, " sequences exceed the CUDA grid");
  const bool gather = pages != nullptr && pages->tail_indptr.back() > 0;
  launch_kernel(tree_select_kernel, static_cast<unsigned>(B), kThreads, 0, pool.log_prob.ptr<double>(),
                pool.token.ptr<int32_t>(), pool.row.ptr<int32_t>(), level.d_open_start.ptr<int32_t>(),
                level.d_open_count.ptr<int32_t>(), level.d_row_indptr.ptr<int32_t>(), node.ptr<int32_t>(),
                token.ptr<int32_t>(), src_row.ptr<int32_t>(), gather ? pages->d_prev_tail.ptr<int32_t>() : nullptr,
                gather ? pages->d_prev_tail_indptr.ptr<int32_t>() : nullptr,
                gather ? static_cast<int32_t>(pages->prev_tail_indptr.size() - 1) : 0,
                gather ? pages->d_tail_indptr.ptr<int32_t>() : nullptr, gather ? pages->src_pages.ptr<int32_t>() : nullptr);
  SPECDEC_CUDA_LAUNCH_CHECK("tree_select_kernel");
}

void tree_grow(TreePool& pool, const Tensor& vals, const Tensor& ids, const Tensor& node, const Tensor& out_start,
               const Tensor& map) {
  const int64_t R = vals.size(0), K = vals.size(1), n = R * K;
  launch_kernel(tree_grow_kernel, static_cast<unsigned>(ceil_div(n, kThreads)), kThreads, 0, vals.ptr<float>(),
                ids.ptr<int32_t>(), node.ptr<int32_t>(), out_start.ptr<int32_t>(),
                map.defined() ? map.ptr<int32_t>() : nullptr, map.defined() ? static_cast<int32_t>(map.size(0)) : 0,
                pool.token.ptr<int32_t>(), pool.parent.ptr<int32_t>(), pool.log_prob.ptr<double>(), pool.row.ptr<int32_t>(),
                R, K, pool.size());
  SPECDEC_CUDA_LAUNCH_CHECK("tree_grow_kernel");
}

void tree_paths(const TreePool& pool, const Tensor& node, const Tensor& map, Tensor& out) {
  const int64_t R = node.size(0);
  launch_kernel(tree_paths_kernel, static_cast<unsigned>(ceil_div(R, kThreads)), kThreads, 0, pool.token.ptr<int32_t>(),
                pool.parent.ptr<int32_t>(), pool.size(), node.ptr<int32_t>(), map.defined() ? map.ptr<int32_t>() : nullptr,
                map.defined() ? static_cast<int32_t>(map.size(0)) : 0, out.ptr<int32_t>(), R, out.size(1));
  SPECDEC_CUDA_LAUNCH_CHECK("tree_paths_kernel");
}

void rows_at(const Tensor& x, const Tensor& idx, Tensor& out) {
  const int64_t m = idx.size(0);
  SPECDEC_CHECK(m <= INT32_MAX, "E_UNSUPPORTED", "rows_at: ", m, " rows exceed the CUDA grid");
  launch_kernel(rows_at_kernel, static_cast<unsigned>(m), kThreads, 0, static_cast<const uint32_t*>(x.data()),
                idx.ptr<int32_t>(), static_cast<uint32_t*>(out.data()), x.size(0), x.size(1));
  SPECDEC_CUDA_LAUNCH_CHECK("rows_at_kernel");
}

}  // namespace cuda
}  // namespace specdec

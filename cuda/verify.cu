// CUDA: batched tree verification. Greedy and sampled verification run vocabulary-parallel (several
// blocks per row, then a warp per sequence walks). The fallback -- rejection with draft rows where a
// node has more than verify_kernels::kMaxSiblings candidate children, or a caller that did not count
// them -- is one launch, a block per sequence, whose threads run the walk of spec_math.h in lockstep
// (its decisions depend only on block-uniform values) and share the row-wise work.
#include "../cpp/core/ops_sampling.h"
#include "common.cuh"
#include "verify.cuh"

namespace specdec {
namespace cuda {

using blk::kBlock;
using namespace verify_kernels;

namespace {

// Greedy: the argmax of every row, vocabulary slices in parallel, then a warp per sequence walks.
void verify_greedy(const VerifyArgs& a, VerifyResult& out) {
  const int64_t B = a.node_indptr.size(0) - 1, N = a.parents.size(0), V = a.target.size(1);
  const int S = argmax_slices(static_cast<int>(V));
  Tensor part_v = Tensor::empty(DType::f32, {N, S}, Device::cuda);
  Tensor part_i = Tensor::empty(DType::i32, {N, S}, Device::cuda);
  if (N > 0) {
    SPECDEC_DISPATCH_FLOAT(a.target.dtype(), "target", [&] {
      launch_kernel(argmax_slices_kernel<scalar_t>, dim3(static_cast<unsigned>(N), S), kSliceThreads, 0,
          a.target.ptr<scalar_t>(), static_cast<int>(V), part_v.ptr<float>(), part_i.ptr<int32_t>());
      SPECDEC_CUDA_LAUNCH_CHECK("argmax_slices_kernel");
    });
  }
  launch_kernel(greedy_walk_kernel, static_cast<unsigned>(B), 32, 0,
      a.node_indptr.ptr<int32_t>(), a.parents.ptr<int32_t>(), a.tokens.ptr<int32_t>(), part_v.ptr<float>(),
      part_i.ptr<int32_t>(), S, out.accepted_nodes.ptr<int32_t>(), out.emitted.ptr<int32_t>(), out.accept_count.ptr<int32_t>(),
      out.depth_accepts.ptr<int32_t>(), static_cast<int>(out.depth_accepts.numel()));
  SPECDEC_CUDA_LAUNCH_CHECK("greedy_walk_kernel");
}

unsigned long long* u64p(Tensor& t) { return reinterpret_cast<unsigned long long*>(t.ptr<uint64_t>()); }

// Sampled verification over f32 probabilities: row statistics over vocabulary slices, then a warp per
// sequence walks (verify.cuh, "vocabulary-parallel"). With draft rows on chains (no node has two
// candidate children) the walk runs twice around the one residual it needs (4 launches in all, each
// reading what it needs once); on trees the residuals of rejecting each child come first, one launch
// per sibling rank ("Sibling candidates"), then one walk (3 + max_children launches).
void verify_sampled_slices(const VerifyArgs& a, VerifyResult& out) {
  const int64_t B = a.node_indptr.size(0) - 1, N = a.parents.size(0), V = a.target.size(1);
  const int S = mass_slices(static_cast<int>(V));
  const bool typical = a.mode == VerifyMode::typical, has_draft = a.draft.defined();
  const bool tree = has_draft && a.max_children > 1;
  Tensor lanes = typical ? Tensor::empty(DType::f64, {N, sm::kEntropyLanes}, Device::cuda) : Tensor();
  Tensor mass = Tensor::zeros(DType::u64, {N, S}, Device::cuda);
  Tensor edits = Tensor::empty(DType::i32, {N}, Device::cuda);
  Tensor thr = Tensor::empty(DType::f32, {N}, Device::cuda);
  Tensor depth = Tensor::empty(DType::i32, {N}, Device::cuda);
  Tensor qmass, rmass, rej_row, rej_m, pre;
  DraftRowsArgs dr;
  if (has_draft) {
    qmass = Tensor::zeros(DType::u64, {N, S}, Device::cuda);
    rmass = Tensor::zeros(DType::u64, {tree ? N : B, S}, Device::cuda);
    if (tree) {
      pre = Tensor::empty(DType::u64, {3, N}, Device::cuda);
      dr.pre = u64p(pre);
    }
    rej_row = Tensor::empty(DType::i32, {B}, Device::cuda);
    rej_m = Tensor::empty(DType::u64, {2, B}, Device::cuda);
    dr.draft = a.draft.ptr<float>();
    dr.qslice_mass = u64p(qmass);
    dr.rslice_mass = u64p(rmass);
    dr.rej_row = rej_row.ptr<int32_t>();
    dr.rej_mp = u64p(rej_m);
    dr.rej_mq = u64p(rej_m) + B;
  }
  const dim3 stats_grid(static_cast<unsigned>(N), kStatGroups);
  if (N > 0) {
    launch_kernel(row_stats_kernel<float>, stats_grid, kStatThreads, 0, a.target.ptr<float>(), static_cast<int>(V),
                                                                       typical ? lanes.ptr<double>() : nullptr, u64p(mass),
                  nullptr, 0, nullptr);
    SPECDEC_CUDA_LAUNCH_CHECK("row_stats_kernel");
    if (has_draft) {
      launch_kernel(row_stats_kernel<float>, stats_grid, kStatThreads, 0, dr.draft, static_cast<int>(V), nullptr, u64p(qmass),
                    a.node_indptr.ptr<int32_t>(), static_cast<int>(B), a.parents.ptr<int32_t>());
      SPECDEC_CUDA_LAUNCH_CHECK("row_stats_kernel (draft)");
    }
  }
  auto walk = [&](int pass) {
    dr.pass = pass;
    launch_kernel(sampled_walk_kernel, static_cast<unsigned>(B), 32, 0,
        a.mode, a.node_indptr.ptr<int32_t>(), a.parents.ptr<int32_t>(), a.tokens.ptr<int32_t>(), a.target.ptr<float>(),
        typical ? lanes.ptr<double>() : nullptr, u64p(mass), a.seeds.ptr<uint64_t>(), a.offsets.ptr<uint64_t>(),
        a.typical_threshold, a.typical_alpha, static_cast<int>(V), edits.ptr<int32_t>(), thr.ptr<float>(), depth.ptr<int>(),
        out.accepted_nodes.ptr<int32_t>(), out.emitted.ptr<int32_t>(), out.accept_count.ptr<int32_t>(),
        out.depth_accepts.ptr<int32_t>(), static_cast<int>(out.depth_accepts.numel()), dr);
    SPECDEC_CUDA_LAUNCH_CHECK("sampled_walk_kernel");
  };
  if (!has_draft) return walk(0);
  if (tree) {
    for (int rank = 0; rank < a.max_children; ++rank) {
      launch_kernel(sibling_residual_kernel, dim3(static_cast<unsigned>(N), kStatGroups), kStatThreads, 0, a.target.ptr<float>(), dr,
                    a.node_indptr.ptr<int32_t>(), static_cast<int>(B), a.parents.ptr<int32_t>(), a.tokens.ptr<int32_t>(), u64p(mass),
                    static_cast<int>(V), rank, u64p(rmass));
      SPECDEC_CUDA_LAUNCH_CHECK("sibling_residual_kernel");
    }
    return walk(3);
  }
  walk(1);
  launch_kernel(residual_slices_kernel, dim3(static_cast<unsigned>(B), kStatGroups), kStatThreads, 0,
      a.target.ptr<float>(), dr, static_cast<int>(V), u64p(rmass));
  SPECDEC_CUDA_LAUNCH_CHECK("residual_slices_kernel");
  walk(2);
}

}  // namespace

void verify(const VerifyArgs& a, VerifyResult& out) {
  const int64_t B = a.node_indptr.size(0) - 1, N = a.parents.size(0), V = a.target.size(1);
  if (B == 0) return;
  SPECDEC_CHECK(V <= INT32_MAX, "E_ARG", "target: rows longer than 2^31 are not supported");
  if (a.mode == VerifyMode::greedy) return verify_greedy(a, out);
  const bool slices_draft = !a.draft.defined() || (a.max_children >= 0 && a.max_children <= kMaxSiblings);
  if (slices_draft && a.target.dtype() == DType::f32 && a.seeds.defined() && a.offsets.defined())
    return verify_sampled_slices(a, out);
  // Per-sequence scratch: residual rows (rejection, and typical's bonus draw) and per-node values.
  const bool need_p = a.mode != VerifyMode::greedy;
  Tensor P = need_p ? Tensor::empty(DType::u64, {B, V}, Device::cuda) : Tensor();
  Tensor Q = a.draft.defined() ? Tensor::empty(DType::u64, {B, V}, Device::cuda) : Tensor();
  Tensor thr = Tensor::empty(DType::f32, {N}, Device::cuda);
  Tensor depth = Tensor::empty(DType::i32, {N}, Device::cuda);
  auto launch = [&](auto* target) {
    using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(target)>>;
    launch_kernel(verify_kernel<scalar_t>, static_cast<unsigned>(B), kBlock, 0,
        a.mode, a.node_indptr.ptr<int32_t>(), a.parents.ptr<int32_t>(), a.tokens.ptr<int32_t>(), target,
        a.draft.defined() ? a.draft.ptr<float>() : nullptr, a.seeds.defined() ? a.seeds.ptr<uint64_t>() : nullptr,
        a.offsets.defined() ? a.offsets.ptr<uint64_t>() : nullptr, a.typical_threshold, a.typical_alpha,
        static_cast<int>(V), need_p ? P.ptr<uint64_t>() : nullptr, Q.defined() ? Q.ptr<uint64_t>() : nullptr,
        thr.ptr<float>(), depth.ptr<int>(), out.accepted_nodes.ptr<int32_t>(), out.emitted.ptr<int32_t>(),
        out.accept_count.ptr<int32_t>(), out.depth_accepts.ptr<int32_t>(), static_cast<int>(out.depth_accepts.numel()));
    SPECDEC_CUDA_LAUNCH_CHECK("verify_kernel");
  };
  switch (a.target.dtype()) {
    case DType::f32: launch(a.target.ptr<float>()); break;
    case DType::f16: launch(a.target.ptr<__half>()); break;
    case DType::bf16: launch(a.target.ptr<__nv_bfloat16>()); break;
    default: fail("E_ARG", "target: unsupported dtype ", dtype_name(a.target.dtype()));
  }
}

}  // namespace cuda
}  // namespace specdec

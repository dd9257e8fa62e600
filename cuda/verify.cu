// CUDA: batched tree verification in one launch, a thread block per sequence. All threads run the
// walk of spec_math.h in lockstep (its decisions depend only on block-uniform values); the
// row-wise work (argmax, quantised loads, residuals, entropy, sampling) is shared over the block.
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
      argmax_slices_kernel<scalar_t><<<dim3(static_cast<unsigned>(N), S), kSliceThreads, 0, stream()>>>(
          a.target.ptr<scalar_t>(), static_cast<int>(V), part_v.ptr<float>(), part_i.ptr<int32_t>());
      SPECDEC_CUDA_LAUNCH_CHECK("argmax_slices_kernel");
    });
  }
  greedy_walk_kernel<<<static_cast<unsigned>(B), 32, 0, stream()>>>(
      a.node_indptr.ptr<int32_t>(), a.parents.ptr<int32_t>(), a.tokens.ptr<int32_t>(), part_v.ptr<float>(),
      part_i.ptr<int32_t>(), S, out.accepted_nodes.ptr<int32_t>(), out.emitted.ptr<int32_t>(), out.accept_count.ptr<int32_t>(),
      out.depth_accepts.ptr<int32_t>(), static_cast<int>(out.depth_accepts.numel()));
  SPECDEC_CUDA_LAUNCH_CHECK("greedy_walk_kernel");
}

// Sampled, deterministic drafts (no draft rows), f32 probabilities: row statistics over vocabulary
// slices, then a warp per sequence walks (verify.cuh, "vocabulary-parallel").
void verify_sampled_slices(const VerifyArgs& a, VerifyResult& out) {
  const int64_t B = a.node_indptr.size(0) - 1, N = a.parents.size(0), V = a.target.size(1);
  const int S = mass_slices(static_cast<int>(V));
  const bool typical = a.mode == VerifyMode::typical;
  Tensor lanes = typical ? Tensor::empty(DType::f64, {N, sm::kEntropyLanes}, Device::cuda) : Tensor();
  Tensor mass = Tensor::zeros(DType::u64, {N, S}, Device::cuda);
  Tensor edits = Tensor::empty(DType::i32, {N}, Device::cuda);
  Tensor thr = Tensor::empty(DType::f32, {N}, Device::cuda);
  Tensor depth = Tensor::empty(DType::i32, {N}, Device::cuda);
  if (N > 0) {
    row_stats_kernel<float><<<dim3(static_cast<unsigned>(N), kStatGroups), kStatThreads, 0, stream()>>>(
        a.target.ptr<float>(), static_cast<int>(V), typical ? lanes.ptr<double>() : nullptr,
        reinterpret_cast<unsigned long long*>(mass.ptr<uint64_t>()));
    SPECDEC_CUDA_LAUNCH_CHECK("row_stats_kernel");
  }
  sampled_walk_kernel<<<static_cast<unsigned>(B), 32, 0, stream()>>>(
      a.mode, a.node_indptr.ptr<int32_t>(), a.parents.ptr<int32_t>(), a.tokens.ptr<int32_t>(), a.target.ptr<float>(),
      typical ? lanes.ptr<double>() : nullptr, reinterpret_cast<const unsigned long long*>(mass.ptr<uint64_t>()),
      a.seeds.ptr<uint64_t>(), a.offsets.ptr<uint64_t>(), a.typical_threshold, a.typical_alpha, static_cast<int>(V),
      edits.ptr<int32_t>(), thr.ptr<float>(), depth.ptr<int>(), out.accepted_nodes.ptr<int32_t>(), out.emitted.ptr<int32_t>(),
      out.accept_count.ptr<int32_t>(), out.depth_accepts.ptr<int32_t>(), static_cast<int>(out.depth_accepts.numel()));
  SPECDEC_CUDA_LAUNCH_CHECK("sampled_walk_kernel");
}

}  // namespace

void verify(const VerifyArgs& a, VerifyResult& out) {
  const int64_t B = a.node_indptr.size(0) - 1, N = a.parents.size(0), V = a.target.size(1);
  if (B == 0) return;
  SPECDEC_CHECK(V <= INT32_MAX, "E_ARG", "target: rows longer than 2^31 are not supported");
  if (a.mode == VerifyMode::greedy) return verify_greedy(a, out);
  if (!a.draft.defined() && a.target.dtype() == DType::f32 && a.seeds.defined() && a.offsets.defined())
    return verify_sampled_slices(a, out);
  // Per-sequence scratch: residual rows (rejection, and typical's bonus draw) and per-node values.
  const bool need_p = a.mode != VerifyMode::greedy;
  Tensor P = need_p ? Tensor::empty(DType::u64, {B, V}, Device::cuda) : Tensor();
  Tensor Q = a.draft.defined() ? Tensor::empty(DType::u64, {B, V}, Device::cuda) : Tensor();
  Tensor thr = Tensor::empty(DType::f32, {N}, Device::cuda);
  Tensor depth = Tensor::empty(DType::i32, {N}, Device::cuda);
  auto launch = [&](auto* target) {
    using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(target)>>;
    verify_kernel<scalar_t><<<static_cast<unsigned>(B), kBlock, 0, stream()>>>(
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

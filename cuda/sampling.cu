// CUDA: logits processing, argmax, sampling and top-k, one thread block per row. No sort: top-k and
// top-p thresholds come from a radix select over order-preserving float keys, ties are resolved by
// index with a block scan, sampling is a block prefix scan over exact integer weights.
// Semantics (identical to the CPU reference) in cpp/core/spec_math.h.
#include "../cpp/core/ops_sampling.h"
#include "common.cuh"
#include "sampling.cuh"

namespace specdec {
namespace cuda {

using blk::kBlock;
using namespace sampling_kernels;

void process_logits(const Tensor& logits, const SamplingParams& params, Tensor& probs) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0) return;
  SPECDEC_CHECK(V <= INT32_MAX, "E_ARG", "logits: rows longer than 2^31 are not supported");
  SPECDEC_DISPATCH_FLOAT(logits.dtype(), "logits", [&] {
    process_logits_kernel<scalar_t><<<static_cast<unsigned>(N), kBlock, 0, stream()>>>(
        logits.ptr<scalar_t>(), probs.ptr<float>(), static_cast<int>(V), params);
    SPECDEC_CUDA_LAUNCH_CHECK("process_logits_kernel");
  });
}

void argmax(const Tensor& logits, Tensor& out) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0) return;
  SPECDEC_DISPATCH_FLOAT(logits.dtype(), "logits", [&] {
    argmax_kernel<scalar_t><<<static_cast<unsigned>(N), kBlock, 0, stream()>>>(logits.ptr<scalar_t>(), out.ptr<int32_t>(),
                                                                               static_cast<int>(V));
    SPECDEC_CUDA_LAUNCH_CHECK("argmax_kernel");
  });
}

void sample(const Tensor& probs, const Tensor& seeds, const Tensor& offsets, Tensor& out) {
  const int64_t N = probs.size(0), V = probs.size(1);
  if (N == 0) return;
  sample_kernel<<<static_cast<unsigned>(N), kBlock, 0, stream()>>>(probs.ptr<float>(), seeds.ptr<uint64_t>(),
                                                                   offsets.ptr<uint64_t>(), out.ptr<int32_t>(),
                                                                   static_cast<int>(V));
  SPECDEC_CUDA_LAUNCH_CHECK("sample_kernel");
}

void top_k(const Tensor& x, int32_t k, Tensor& vals, Tensor& ids) {
  const int64_t N = x.size(0), V = x.size(1);
  if (N == 0) return;
  Tensor cand_v = Tensor::empty(DType::f32, {N, k}, Device::cuda);
  Tensor cand_i = Tensor::empty(DType::i32, {N, k}, Device::cuda);
  SPECDEC_DISPATCH_FLOAT(x.dtype(), "x", [&] {
    top_k_kernel<scalar_t><<<static_cast<unsigned>(N), kBlock, 0, stream()>>>(
        x.ptr<scalar_t>(), static_cast<int>(V), k, cand_v.ptr<float>(), cand_i.ptr<int32_t>(), vals.ptr<float>(),
        ids.ptr<int32_t>());
    SPECDEC_CUDA_LAUNCH_CHECK("top_k_kernel");
  });
  // The scratch goes back to the caching allocator when this returns; the stream orders its reuse.
}

}  // namespace cuda
}  // namespace specdec

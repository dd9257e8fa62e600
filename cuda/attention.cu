// Host side of the CUDA tree attention: picks the head-dim specialisation and whether to split
// the keys over CTAs (flash-decoding) or fold all chunks inside each CTA; both give the same bits.
#include <algorithm>

#include "../cpp/core/ops_attention.h"
#include "attention.cuh"
#include "common.cuh"

namespace specdec {
namespace cuda {

namespace {

int sm_count() {
  static int n = [] {
    int dev = 0, sms = 0;
    SPECDEC_CUDA_CHECK(cudaGetDevice(&dev));
    SPECDEC_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return std::max(sms, 1);
  }();
  return n;
}

template <typename QT, typename KVT, int DT>
void launch(const attn::Params& p, dim3 grid, size_t smem) {
  auto kernel = attn::tree_attention_kernel<QT, KVT, DT>;
  // Large head dims need more than the default 48 KiB of dynamic shared memory (opt-in).
  if (smem > 48 * 1024)
    SPECDEC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid, attn::kWarps * 32, smem, stream()>>>(p);
  SPECDEC_CUDA_LAUNCH_CHECK("tree_attention_kernel");
}

template <typename QT, typename KVT>
void launch_dim(const attn::Params& p, dim3 grid, size_t smem) {
  if (p.D == 64) return launch<QT, KVT, 64>(p, grid, smem);
  if (p.D == 128) return launch<QT, KVT, 128>(p, grid, smem);
  launch<QT, KVT, 0>(p, grid, smem);
}

template <typename QT>
void launch_kv(DType kv, const attn::Params& p, dim3 grid, size_t smem) {
  switch (kv) {
    case DType::f32: return launch_dim<QT, float>(p, grid, smem);
    case DType::f16: return launch_dim<QT, __half>(p, grid, smem);
    case DType::bf16: return launch_dim<QT, __nv_bfloat16>(p, grid, smem);
    default: fail("E_ARG", "kv_layer: unsupported dtype ", dtype_name(kv));
  }
}

}  // namespace

void tree_attention(const Tensor& q, const Tensor& kv_layer, const PagedBatch& batch, const Tensor& mask,
                    float sm_scale, Tensor& out) {
  const int64_t B = batch.batch_size(), N = batch.total_new();
  const int64_t Hkv = kv_layer.size(3), D = kv_layer.size(4), Hq = q.size(1), G = Hq / Hkv;
  SPECDEC_CHECK(D <= attn::kMaxHeadDim, "E_UNSUPPORTED", "tree_attention: head dim ", D,
                " is larger than the CUDA kernel's maximum ", attn::kMaxHeadDim);
  SPECDEC_CHECK(B <= 65535 && Hkv <= 65535, "E_UNSUPPORTED", "tree_attention: batch of ", B, " sequences with ", Hkv,
                " KV heads exceeds the CUDA grid (65535)");

  attn::Params p{};
  p.q = q.data();
  p.kv = kv_layer.data();
  p.out = out.data();
  p.qo_indptr = batch.qo_indptr.ptr<int32_t>();
  p.page_indptr = batch.page_indptr.ptr<int32_t>();
  p.page_indices = batch.page_indices.numel() ? batch.page_indices.ptr<int32_t>() : nullptr;
  p.prefix_len = batch.prefix_len.ptr<int32_t>();
  p.mask = mask.defined() ? mask.ptr<uint64_t>() : nullptr;
  p.mask_words = mask.defined() ? static_cast<int>(mask.size(1)) : 0;
  p.Hq = static_cast<int>(Hq);
  p.Hkv = static_cast<int>(Hkv);
  p.G = static_cast<int>(G);
  p.D = static_cast<int>(D);
  p.page_size = static_cast<int>(kv_layer.size(2));
  p.scale_log2 = sm_scale * 1.4426950408889634f;
  const attn::Plan plan = attn::plan_launch(p, B, batch.h_qo_indptr.data(), batch.h_prefix_len.data(), batch.max_qo_len, batch.max_kv_len,
                                           sm_count());
  SPECDEC_CHECK(plan.grid_x < (int64_t(1) << 31), "E_UNSUPPORTED", "tree_attention: grid too large");

  Tensor part_acc, part_ml;
  if (p.split) {
    part_acc = Tensor::empty(DType::f32, {N * Hq, p.max_chunks, D}, Device::cuda);
    part_ml = Tensor::empty(DType::f32, {N * Hq, p.max_chunks, 2}, Device::cuda);
    p.part_acc = part_acc.ptr<float>();
    p.part_ml = part_ml.ptr<float>();
  }
  const size_t smem = plan.smem;
  dim3 grid(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y), static_cast<unsigned>(plan.grid_z));
  switch (q.dtype()) {
    case DType::f32: launch_kv<float>(kv_layer.dtype(), p, grid, smem); break;
    case DType::f16: launch_kv<__half>(kv_layer.dtype(), p, grid, smem); break;
    case DType::bf16: launch_kv<__nv_bfloat16>(kv_layer.dtype(), p, grid, smem); break;
    default: fail("E_ARG", "q: unsupported dtype ", dtype_name(q.dtype()));
  }
  if (p.split) {
    const int64_t rows = N * Hq;
    const unsigned blocks = ceil_div(rows, attn::kMergeWarps);
    auto merge = [&](auto tag) {
      using QT = decltype(tag);
      attn::tree_attention_merge_kernel<QT><<<blocks, attn::kMergeWarps * 32, 0, stream()>>>(
          p.part_acc, p.part_ml, p.out, rows, p.max_chunks, p.D);
      SPECDEC_CUDA_LAUNCH_CHECK("tree_attention_merge_kernel");
    };
    switch (q.dtype()) {
      case DType::f32: merge(float{}); break;
      case DType::f16: merge(__half{}); break;
      default: merge(__nv_bfloat16{}); break;
    }
  }
  // part_acc/part_ml go back to the caching allocator here; later users are ordered on our stream.
}

}  // namespace cuda
}  // namespace specdec

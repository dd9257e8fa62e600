// Host side of the CUDA tree attention: with SPECDEC_CUDA_ATTENTION=tc, the tensor-core kernels for
// bf16/f16 caches whose head dim is a multiple of 16 (attention_mma.cuh for bf16 caches with head dims
// 64 / 128, attention_tc.cuh for the rest; the same bits); else the CUDA-core kernel (attention.cuh)
// with its head-dim specialisation. Either splits the keys over CTAs (flash-decoding)
// or folds all chunks inside each CTA, as the shared planner decides; both give the same bits.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "../cpp/core/ops_attention.h"
#include "attention.cuh"
#include "attention_mma.cuh"
#include "attention_tc.cuh"
#include "common.cuh"

namespace specdec {
namespace cuda {

namespace {

// The CUDA-core kernel's K/V buffer count: attn::stages_for, or SPECDEC_CUDA_ATTENTION_STAGES=2 (the
// former two, for an A/B of the deeper pipeline in one process; read once). No bit depends on it.
int core_stages(int DT, int D, int kv_bytes) {
  static const bool two = env_is("SPECDEC_CUDA_ATTENTION_STAGES", "2");
  const int s = attn::stages_for(DT, D, kv_bytes, static_cast<size_t>(smem_per_sm()), static_cast<size_t>(max_optin_smem()));
  return two ? std::min(s, 2) : s;
}

template <typename QT, typename KVT, int DT, int kStages>
void launch_staged(const attn::Params& p, dim3 grid) {
  auto kernel = attn::tree_attention_kernel<QT, KVT, DT, kStages>;
  const size_t smem = attn::smem_bytes(p.D, static_cast<int>(sizeof(KVT)), kStages);
  SPECDEC_CHECK(smem <= static_cast<size_t>(max_optin_smem()), "E_UNSUPPORTED", "tree_attention: head dim ", p.D, " needs ",
                smem, " bytes of shared memory per block; this device allows ", max_optin_smem());
  // Large head dims and deep pipelines need more than the default 48 KiB of dynamic shared memory:
  // the opt-in, set once per instantiation to the device's limit (not a host call per launch).
  static const bool opted_in = [&] {
    SPECDEC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_optin_smem()));
    return true;
  }();
  (void)opted_in;
  launch_kernel(kernel, grid, attn::kWarps * 32, smem, p);
  SPECDEC_CUDA_LAUNCH_CHECK("tree_attention_kernel");
}

template <typename QT, typename KVT, int DT>
void launch(const attn::Params& p, dim3 grid) {
  if constexpr (DT == 0) {
    launch_staged<QT, KVT, 0, attn::stages_for_dim(0)>(p, grid);
  } else {
    if (core_stages(DT, p.D, static_cast<int>(sizeof(KVT))) == 4) launch_staged<QT, KVT, DT, 4>(p, grid);
    else launch_staged<QT, KVT, DT, attn::stages_for_dim(DT)>(p, grid);
  }
}

template <typename QT, typename KVT>
void launch_dim(const attn::Params& p, dim3 grid) {
  if (p.D == 64) return launch<QT, KVT, 64>(p, grid);
  if (p.D == 128) return launch<QT, KVT, 128>(p, grid);
  launch<QT, KVT, 0>(p, grid);
}

template <typename QT>
void launch_kv(DType kv, const attn::Params& p, dim3 grid) {
  switch (kv) {
    case DType::f32: return launch_dim<QT, float>(p, grid);
    case DType::f16: return launch_dim<QT, __half>(p, grid);
    case DType::bf16: return launch_dim<QT, __nv_bfloat16>(p, grid);
    default: fail("E_ARG", "kv_layer: unsupported dtype ", dtype_name(kv));
  }
}

attn::Params make_params(const Tensor& q, const Tensor& kv_layer, const PagedBatch& batch, const Tensor& mask,
                         float sm_scale, Tensor& out) {
  const int64_t Hkv = kv_layer.size(3), D = kv_layer.size(4), Hq = q.size(1), G = Hq / Hkv;
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
  p.kv_aligned16 = reinterpret_cast<uintptr_t>(kv_layer.data()) % 16 == 0;
  return p;
}

// SPECDEC_CUDA_ATTENTION=tc runs bf16/f16 caches on the tensor-core kernels. Opt-in: attention_tc.cuh
// passed its tests on an H200 but was slower than the CUDA-core kernel there (2026-12-04, f16 cache);
// attention_mma.cuh (bf16, head dims 64 / 128) is checked on the host emulation only, its speed unmeasured. Read once: decode and verification must run the
// same kernel for the whole process, or a tree node's row would not match its path decoded token by
// token.
bool tc_attention_enabled() {
  static const bool enabled = env_is("SPECDEC_CUDA_ATTENTION", "tc");
  return enabled;
}

// Split-KV partials (either kernel's) for `rows` output rows, pointed to by p.
void alloc_partials(attn::Params& p, int64_t rows, int64_t D, Tensor& part_acc, Tensor& part_ml) {
  part_acc = Tensor::empty(DType::f32, {rows, p.max_chunks, D}, Device::cuda);
  part_ml = Tensor::empty(DType::f32, {rows, p.max_chunks, 2}, Device::cuda);
  p.part_acc = part_acc.ptr<float>();
  p.part_ml = part_ml.ptr<float>();
}

// Split-KV merge (either kernel's partials): one warp per output row folds its chunks in order.
void launch_merge(DType qdt, const attn::Params& p, int64_t rows) {
  const unsigned blocks = ceil_div(rows, attn::kMergeWarps);
  auto merge = [&](auto tag) {
    using QT = decltype(tag);
    launch_kernel(attn::tree_attention_merge_kernel<QT>, blocks, attn::kMergeWarps * 32, 0, p.part_acc, p.part_ml, p.out, rows,
                                                                                         p.max_chunks, p.D);
    SPECDEC_CUDA_LAUNCH_CHECK("tree_attention_merge_kernel");
  };
  switch (qdt) {
    case DType::f32: merge(float{}); break;
    case DType::f16: merge(__half{}); break;
    default: merge(__nv_bfloat16{}); break;
  }
}

template <typename QT, typename KVT, int Stages>
void launch_tc(const attn::Params& p, dim3 grid, size_t smem) {
  auto kernel = attn_tc::tree_attention_tc_kernel<QT, KVT, Stages>;
  if (smem > 48 * 1024)
    SPECDEC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  launch_kernel(kernel, grid, attn_tc::kThreads, smem, p);
  SPECDEC_CUDA_LAUNCH_CHECK("tree_attention_tc_kernel");
}

// One instantiation of attention_mma.cuh's kernel: its shared-memory opt-in (set once) and how many
// of its CTAs an SM holds (the occupancy calculator, once), which the split planner counts on.
template <typename QT, int DT, int W>
int mma_kernel_resident() {
  static const int resident = [] {
    auto kernel = attn_mma::tree_attention_mma_kernel<QT, DT, W>;
    const size_t smem = attn_mma::Layout(DT, W).bytes;
    if (smem > 48 * 1024)
      SPECDEC_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    int n = 0;
    SPECDEC_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, W * 32, smem));
    return n > 0 ? n : 1;
  }();
  return resident;
}

template <typename QT, int DT, int W>
void launch_mma(const Tensor& q, const PagedBatch& batch, attn::Params& p, int64_t B, int64_t N) {
  const int resident = mma_kernel_resident<QT, DT, W>();
  const attn::Plan plan = attn_mma::plan_launch(p, B, batch.h_qo_indptr.data(), batch.h_prefix_len.data(), batch.max_qo_len,
                                                batch.max_kv_len, sm_count(), W, resident);
  SPECDEC_CHECK(plan.grid_x < (int64_t(1) << 31), "E_UNSUPPORTED", "tree_attention: grid too large");
  Tensor part_acc, part_ml;  // split: held until the merge is queued
  if (p.split) alloc_partials(p, N * p.Hq, p.D, part_acc, part_ml);
  const dim3 grid(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y), static_cast<unsigned>(plan.grid_z));
  launch_kernel(attn_mma::tree_attention_mma_kernel<QT, DT, W>, grid, W * 32, plan.smem, p);
  SPECDEC_CUDA_LAUNCH_CHECK("tree_attention_mma_kernel");
  if (p.split) launch_merge(q.dtype(), p, N * p.Hq);
}

// attention_mma.cuh: the same bits as attention_tc.cuh, on mma.sync with S, P and O in registers, for
// bf16 caches with head dims 64 / 128. Returns false, launching nothing, when it does not serve the problem.
bool launch_tree_attention_mma(const Tensor& q, const PagedBatch& batch, attn::Params& p, int64_t B, int64_t N) {
  const int warps = attn_mma::warps_for(batch.max_qo_len, p.G);
  if (!attn_mma::supported(p.D, warps, static_cast<size_t>(max_optin_smem()))) return false;
  auto go = [&](auto qtag) {
    using QT = decltype(qtag);
    if (p.D == 64) warps == 1 ? launch_mma<QT, 64, 1>(q, batch, p, B, N) : launch_mma<QT, 64, 4>(q, batch, p, B, N);
    else warps == 1 ? launch_mma<QT, 128, 1>(q, batch, p, B, N) : launch_mma<QT, 128, 4>(q, batch, p, B, N);
  };
  with_float_type(q.dtype(), "q", go);
  return true;
}

}  // namespace

// The tensor-core kernels: attention_mma.cuh for bf16 caches with head dims 64 / 128, else
// attention_tc.cuh (bf16/f16 caches): bf16/f16 caches, head dims that are multiples of 16 whose
// tiles fit the opt-in shared memory, sm_80+. Returns false, launching nothing, when it does not serve
// the problem. tree_attention below tries it first when SPECDEC_CUDA_ATTENTION=tc.
bool launch_tree_attention_tc(const Tensor& q, const Tensor& kv_layer, const PagedBatch& batch, const Tensor& mask,
                              float sm_scale, Tensor& out) {
  const DType kv = kv_layer.dtype();
  if (kv != DType::bf16 && kv != DType::f16) return false;
  const int pieces = kv == DType::f16 ? 2 : 1;
  const int64_t B = batch.batch_size(), N = batch.total_new(), Hkv = kv_layer.size(3), D = kv_layer.size(4), Hq = q.size(1);
  if (!attn_tc::supported(static_cast<int>(D), pieces, static_cast<size_t>(max_optin_smem()))) return false;
  if (B > 65535 || Hkv > 65535) return false;
  if (reinterpret_cast<uintptr_t>(kv_layer.data()) % 16 != 0) return false;  // K/V are staged in 16-byte loads
  attn::Params p = make_params(q, kv_layer, batch, mask, sm_scale, out);
  if (kv == DType::bf16 && launch_tree_attention_mma(q, batch, p, B, N)) return true;
  const int stages = attn_tc::stages_for(static_cast<int>(D), pieces, static_cast<size_t>(max_optin_smem()));
  const attn_tc::Plan plan = attn_tc::plan_launch(p, B, batch.h_qo_indptr.data(), batch.h_prefix_len.data(), batch.max_qo_len,
                                                  batch.max_kv_len, sm_count(), pieces, stages);
  if (plan.grid_x >= (int64_t(1) << 31)) return false;
  Tensor part_acc, part_ml;  // split: held until the merge is queued
  if (p.split) alloc_partials(p, N * Hq, D, part_acc, part_ml);
  const dim3 grid(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y), static_cast<unsigned>(plan.grid_z));
  auto go = [&](auto qtag) {
    using QT = decltype(qtag);
    if (kv == DType::f16) launch_tc<QT, __half, 1>(p, grid, plan.smem);
    else if (stages == 2) launch_tc<QT, __nv_bfloat16, 2>(p, grid, plan.smem);
    else launch_tc<QT, __nv_bfloat16, 1>(p, grid, plan.smem);
  };
  with_float_type(q.dtype(), "q", go);
  if (p.split) launch_merge(q.dtype(), p, N * Hq);
  return true;
}

void tree_attention(const Tensor& q, const Tensor& kv_layer, const PagedBatch& batch, const Tensor& mask,
                    float sm_scale, Tensor& out, int window, float softcap) {
  const int64_t B = batch.batch_size(), N = batch.total_new();
  const int64_t Hkv = kv_layer.size(3), D = kv_layer.size(4), Hq = q.size(1);
  SPECDEC_CHECK(D <= attn::kMaxHeadDim, "E_UNSUPPORTED", "tree_attention: head dim ", D,
                " is larger than the CUDA kernel's maximum ", attn::kMaxHeadDim);
  SPECDEC_CHECK(B <= 65535 && Hkv <= 65535, "E_UNSUPPORTED", "tree_attention: batch of ", B, " sequences with ", Hkv,
                " KV heads exceeds the CUDA grid (65535)");
  // Opted in: bf16/f16 caches with head dims that are multiples of 16 run on tensor cores; prefill,
  // decode and tree verification alike (the choice depends only on the cache dtype, head dim, device
  // and window). Sliding-window and soft-capped layers stay on the CUDA-core kernel, the one that
  // implements them.
  if (window == 0 && softcap == 0.f && tc_attention_enabled() && launch_tree_attention_tc(q, kv_layer, batch, mask, sm_scale, out)) return;

  attn::Params p = make_params(q, kv_layer, batch, mask, sm_scale, out);
  p.window = window;
  p.softcap = softcap;
  const attn::Plan plan = attn::plan_launch(p, B, batch.h_qo_indptr.data(), batch.h_prefix_len.data(), batch.max_qo_len, batch.max_kv_len,
                                           sm_count(), static_cast<int>(dtype_size(kv_layer.dtype())));
  SPECDEC_CHECK(plan.grid_x < (int64_t(1) << 31), "E_UNSUPPORTED", "tree_attention: grid too large");

  Tensor part_acc, part_ml;  // split: held until the merge is queued
  if (p.split) alloc_partials(p, N * Hq, D, part_acc, part_ml);
  dim3 grid(static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y), static_cast<unsigned>(plan.grid_z));
  switch (q.dtype()) {
    case DType::f32: launch_kv<float>(kv_layer.dtype(), p, grid); break;
    case DType::f16: launch_kv<__half>(kv_layer.dtype(), p, grid); break;
    case DType::bf16: launch_kv<__nv_bfloat16>(kv_layer.dtype(), p, grid); break;
    default: fail("E_ARG", "q: unsupported dtype ", dtype_name(q.dtype()));
  }
  if (p.split) launch_merge(q.dtype(), p, N * Hq);
  // part_acc/part_ml go back to the caching allocator here; later users are ordered on our stream.
}

}  // namespace cuda
}  // namespace specdec

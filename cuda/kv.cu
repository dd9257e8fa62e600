// CUDA paged KV data movement: append new tokens at their slots, commit accepted tree nodes (all
// layers and sequences in one launch), copy whole pages (copy-on-write after fork).
// Layout per layer: [numPages, 2, pageSize, numKvHeads, headDim], K at index 0, V at 1.
#include <list>
#include <mutex>
#include <utility>

#include "../cpp/core/ops_attention.h"
#include "common.cuh"
#include "kv.cuh"

namespace specdec {
namespace cuda {

namespace {

using namespace kv_kernels;

// Device table of the layers' base pointers (layers are separate tensors, possibly views). A KV
// cache's layers never move, so the table is uploaded once per distinct set of pointers and kept
// (a few recent sets, keyed by value: a table stays correct for whatever owns those pointers).
Tensor layer_table(const std::vector<Tensor>& layers) {
  static std::mutex mu;
  // Never destroyed: its tensors must not go back to the allocator during static destruction.
  static auto& recent = *new std::list<std::pair<std::vector<uint64_t>, Tensor>>();  // most recent first
  std::vector<uint64_t> ptrs;
  for (const Tensor& t : layers) ptrs.push_back(reinterpret_cast<uint64_t>(t.data()));
  std::lock_guard<std::mutex> lock(mu);
  for (auto it = recent.begin(); it != recent.end(); ++it)
    if (it->first == ptrs) {
      recent.splice(recent.begin(), recent, it);
      return it->second;
    }
  Tensor t = Tensor::from_host(DType::u64, {static_cast<int64_t>(ptrs.size())}, ptrs.data(), Device::cuda);
  recent.emplace_front(std::move(ptrs), t);
  if (recent.size() > 8) recent.pop_back();
  return t;
}

// The kernels' view of the layers: strided (no device table) when each layer starts a fixed
// distance after the one before, as a KV cache's do; else the uploaded-once table.
template <typename E>
LayerBases<E> layer_bases(const std::vector<Tensor>& layers, Tensor* table_keep) {
  auto* base = static_cast<unsigned char*>(layers[0].data());
  const ptrdiff_t stride = layers.size() > 1 ? static_cast<unsigned char*>(layers[1].data()) - base : 0;
  bool strided = stride >= 0;
  for (size_t l = 1; strided && l < layers.size(); ++l)
    strided = static_cast<unsigned char*>(layers[l].data()) == base + static_cast<ptrdiff_t>(l) * stride;
  if (strided) return LayerBases<E>{nullptr, base, static_cast<size_t>(stride)};
  *table_keep = layer_table(layers);
  return LayerBases<E>{table_keep->ptr<E* const>(), nullptr, 0};
}

}  // namespace

void kv_append(Tensor& kv_layer, const Tensor& k, const Tensor& v, const PagedBatch& batch) {
  const int64_t N = batch.total_new();
  const int row_elems = static_cast<int>(kv_layer.size(3) * kv_layer.size(4));
  auto go = [&](auto tag) {
    using KVT = decltype(tag);
    launch_kernel(kv_append_kernel<KVT>, static_cast<unsigned>(N), kThreads, 0,
        kv_layer.ptr<KVT>(), k.data(), static_cast<int>(k.dtype()), v.data(), static_cast<int>(v.dtype()),
        batch.qo_indptr.ptr<int32_t>(), batch.page_indptr.ptr<int32_t>(), batch.page_indices.ptr<int32_t>(),
        batch.prefix_len.ptr<int32_t>(), static_cast<int>(batch.batch_size()), static_cast<int>(kv_layer.size(2)),
        row_elems);
    SPECDEC_CUDA_LAUNCH_CHECK("kv_append_kernel");
  };
  with_float_type(kv_layer.dtype(), "kv_layer", go);
}

void kv_commit(const std::vector<Tensor>& layers, const PagedBatch& batch, const Tensor& acc_indptr,
               const Tensor& acc_nodes, const Tensor& acc_count) {
  const int64_t B = batch.batch_size(), L = static_cast<int64_t>(layers.size());
  SPECDEC_CHECK(B <= INT32_MAX && L <= 65535, "E_UNSUPPORTED", "kv_commit: ", L, " layers exceed the CUDA grid");
  Tensor table;
  const int row_elems = static_cast<int>(layers[0].size(3) * layers[0].size(4));
  const int page_size = static_cast<int>(layers[0].size(2));
  dim3 grid(static_cast<unsigned>(B), static_cast<unsigned>(L));
  auto go = [&](auto tag) {
    using E = decltype(tag);
    launch_kernel(kv_commit_kernel<E>, grid, kThreads, 0,
        layer_bases<E>(layers, &table), batch.page_indptr.ptr<int32_t>(), batch.page_indices.ptr<int32_t>(),
        batch.prefix_len.ptr<int32_t>(), acc_indptr.ptr<int32_t>(), acc_nodes.ptr<int32_t>(),
        acc_count.defined() ? acc_count.ptr<int32_t>() : nullptr, page_size, row_elems);
    SPECDEC_CUDA_LAUNCH_CHECK("kv_commit_kernel");
  };
  // A pure move: only the element width matters.
  if (dtype_size(layers[0].dtype()) == 4) go(uint32_t{});
  else go(uint16_t{});
}

void kv_copy_pages(const std::vector<Tensor>& layers, const Tensor& src_pages, const Tensor& dst_pages) {
  const int64_t n = src_pages.numel(), L = static_cast<int64_t>(layers.size());
  SPECDEC_CHECK(n <= INT32_MAX && L <= 65535, "E_UNSUPPORTED", "kv_copy_pages: ", L, " layers exceed the CUDA grid");
  Tensor table;
  const size_t page_bytes = layers[0].nbytes() / static_cast<size_t>(layers[0].size(0));
  dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(L));
  auto go = [&](auto tag) {
    using W = decltype(tag);
    launch_kernel(kv_copy_pages_kernel<W>, grid, kThreads, 0, layer_bases<W>(layers, &table), src_pages.ptr<int32_t>(),
                                                             dst_pages.ptr<int32_t>(), page_bytes / sizeof(W));
    SPECDEC_CUDA_LAUNCH_CHECK("kv_copy_pages_kernel");
  };
  // Widest word that divides a page; layer bases are 64-byte aligned allocations or whole-layer views.
  bool aligned16 = page_bytes % 16 == 0, aligned4 = page_bytes % 4 == 0;
  for (const Tensor& t : layers) {
    aligned16 = aligned16 && reinterpret_cast<uintptr_t>(t.data()) % 16 == 0;
    aligned4 = aligned4 && reinterpret_cast<uintptr_t>(t.data()) % 4 == 0;
  }
  if (aligned16) go(uint4{});
  else if (aligned4) go(uint32_t{});
  else go(uint16_t{});
}

}  // namespace cuda
}  // namespace specdec

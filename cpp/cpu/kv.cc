// CPU reference of the paged KV data movement: append new tokens, commit accepted nodes, copy pages.
// Layout per layer: [numPages, 2, pageSize, numKvHeads, headDim], K at index 0, V at 1.
#include <cstring>

#include "../core/ops_attention.h"

namespace specdec {
namespace cpu {

namespace {

// Converts n floats between the storage formats (f32/f16/bf16) through f32.
void convert(void* dst, DType dt, const void* src, DType st, int64_t n) {
  if (dt == st) {
    std::memcpy(dst, src, static_cast<size_t>(n) * dtype_size(dt));
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    float x;
    switch (st) {
      case DType::f32: x = static_cast<const float*>(src)[i]; break;
      case DType::f16: x = f16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
      default: x = bf16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
    }
    switch (dt) {
      case DType::f32: static_cast<float*>(dst)[i] = x; break;
      case DType::f16: static_cast<uint16_t*>(dst)[i] = f32_to_f16(x); break;
      default: static_cast<uint16_t*>(dst)[i] = f32_to_bf16(x); break;
    }
  }
}

// Byte offset of (page, kv = 0|1, row) in a layer.
struct Layout {
  int64_t page_size, row_elems, esize;
  size_t offset(int64_t page, int kv, int64_t row) const {
    return static_cast<size_t>(((page * 2 + kv) * page_size + row) * row_elems * esize);
  }
};

Layout layout_of(const Tensor& kv_layer) {
  return {kv_layer.size(2), kv_layer.size(3) * kv_layer.size(4), static_cast<int64_t>(dtype_size(kv_layer.dtype()))};
}

// The physical (page, row) of logical slot `slot` of sequence b.
inline void locate(const PagedBatch& batch, int64_t b, int64_t slot, int64_t page_size, int64_t* page, int64_t* row) {
  *page = batch.h_page_indices[static_cast<size_t>(batch.h_page_indptr[b] + slot / page_size)];
  *row = slot % page_size;
}

}  // namespace

void kv_append(Tensor& kv_layer, const Tensor& k, const Tensor& v, const PagedBatch& batch) {
  const Layout L = layout_of(kv_layer);
  char* base = static_cast<char*>(kv_layer.data());
  const int64_t ksz = static_cast<int64_t>(dtype_size(k.dtype())), vsz = static_cast<int64_t>(dtype_size(v.dtype()));
  for (int64_t b = 0; b < batch.batch_size(); ++b) {
    const int64_t q0 = batch.h_qo_indptr[b], q1 = batch.h_qo_indptr[b + 1], prefix = batch.h_prefix_len[b];
    for (int64_t n = q0; n < q1; ++n) {
      int64_t page, row;
      locate(batch, b, prefix + (n - q0), L.page_size, &page, &row);
      convert(base + L.offset(page, 0, row), kv_layer.dtype(), static_cast<const char*>(k.data()) + n * L.row_elems * ksz,
              k.dtype(), L.row_elems);
      convert(base + L.offset(page, 1, row), kv_layer.dtype(), static_cast<const char*>(v.data()) + n * L.row_elems * vsz,
              v.dtype(), L.row_elems);
    }
  }
}

void kv_commit(const std::vector<Tensor>& layers, const PagedBatch& batch, const Tensor& acc_indptr,
               const Tensor& acc_nodes, const Tensor& acc_count) {
  const Layout L = layout_of(layers[0]);
  const int32_t* ip = acc_indptr.ptr<int32_t>();
  const int32_t* nodes = acc_nodes.ptr<int32_t>();
  const int32_t* counts = acc_count.defined() ? acc_count.ptr<int32_t>() : nullptr;
  const size_t row_bytes = static_cast<size_t>(L.row_elems * L.esize);
  for (const Tensor& layer : layers) {
    char* base = static_cast<char*>(layer.data());
    for (int64_t b = 0; b < batch.batch_size(); ++b) {
      const int64_t prefix = batch.h_prefix_len[b];
      // In order: the source slot of move j is never below its destination, nor below any earlier
      // destination, so moving in place front to back never overwrites a token still to be moved.
      const int32_t n = counts ? counts[b] : ip[b + 1] - ip[b];
      for (int32_t j = 0; j < n; ++j) {
        const int64_t src = prefix + nodes[ip[b] + j], dst = prefix + j;
        if (src == dst) continue;
        int64_t sp, sr, dp, dr;
        locate(batch, b, src, L.page_size, &sp, &sr);
        locate(batch, b, dst, L.page_size, &dp, &dr);
        for (int kv = 0; kv < 2; ++kv) std::memcpy(base + L.offset(dp, kv, dr), base + L.offset(sp, kv, sr), row_bytes);
      }
    }
  }
}

void kv_copy_pages(const std::vector<Tensor>& layers, const Tensor& src_pages, const Tensor& dst_pages) {
  const Layout L = layout_of(layers[0]);
  const size_t page_bytes = L.offset(1, 0, 0);
  const int32_t* src = src_pages.ptr<int32_t>();
  const int32_t* dst = dst_pages.ptr<int32_t>();
  for (const Tensor& layer : layers) {
    char* base = static_cast<char*>(layer.data());
    for (int64_t i = 0; i < src_pages.numel(); ++i)
      std::memcpy(base + static_cast<size_t>(dst[i]) * page_bytes, base + static_cast<size_t>(src[i]) * page_bytes, page_bytes);
  }
}

}  // namespace cpu
}  // namespace specdec

// CUDA kernels of paged KV data movement (append, commit of accepted tree nodes, page copy); the
// launchers are in kv.cu. A header so that test/emu/ can run them on the host.
// Layout per layer: [numPages, 2, pageSize, numKvHeads, headDim], K at index 0, V at 1.
#pragma once
#include <cstddef>
#include <cstdint>

#include "../cpp/core/dtype.h"
#include "device.cuh"

namespace specdec {
namespace cuda {
namespace kv_kernels {

constexpr int kThreads = 256;

// The k/v inputs may have another float dtype than the cache: read any of them as f32.
__device__ __forceinline__ float load_f32(const void* p, int dtype, size_t i) {
  switch (dtype) {
    case static_cast<int>(DType::f32): return static_cast<const float*>(p)[i];
    case static_cast<int>(DType::f16): return __half2float(static_cast<const __half*>(p)[i]);
    default: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
  }
}

// New token n's K and V rows (numKvHeads * headDim elements) to its slot, by the block's threads.
template <typename KVT>
__device__ __forceinline__ void append_token(int n, KVT* kv, const void* k, int k_dtype, const void* v, int v_dtype,
                                             const int32_t* qo_indptr, const int32_t* page_indptr,
                                             const int32_t* page_indices, const int32_t* prefix_len, int B, int page_size,
                                             int row_elems) {
  const int b = find_seq(qo_indptr, B, n);
  const int slot = prefix_len[b] + (n - qo_indptr[b]);
  const int page = page_indices[page_indptr[b] + slot / page_size];
  KVT* dst_k = kv + (static_cast<size_t>(page) * 2 * page_size + slot % page_size) * row_elems;
  KVT* dst_v = dst_k + static_cast<size_t>(page_size) * row_elems;
  const size_t src = static_cast<size_t>(n) * row_elems;
  for (int e = threadIdx.x; e < row_elems; e += blockDim.x) {
    dst_k[e] = from_f32<KVT>(load_f32(k, k_dtype, src + e));
    dst_v[e] = from_f32<KVT>(load_f32(v, v_dtype, src + e));
  }
}

// One block per new token.
template <typename KVT>
__global__ void kv_append_kernel(KVT* kv, const void* k, int k_dtype, const void* v, int v_dtype,
                                 const int32_t* qo_indptr, const int32_t* page_indptr, const int32_t* page_indices,
                                 const int32_t* prefix_len, int B, int page_size, int row_elems) {
  append_token(static_cast<int>(blockIdx.x), kv, k, k_dtype, v, v_dtype, qo_indptr, page_indptr, page_indices, prefix_len,
               B, page_size, row_elems);
}

// The layers' base pointers: a device table, or (a KV cache's layers, views of one allocation)
// base + l * stride_bytes, which needs no table on the device and so no upload.
template <typename E>
struct LayerBases {
  E* const* table;  // null: strided
  unsigned char* base;
  size_t stride_bytes;
  __device__ __forceinline__ E* operator[](int l) const {
    return table ? table[l] : reinterpret_cast<E*>(base + static_cast<size_t>(l) * stride_bytes);
  }
};

// grid (sequence, layer); threads over heads x dims. Each thread moves its own elements for
// j = 0, 1, ... in order: source slot prefix + node_j >= prefix + j and > every earlier
// destination, so the in-place moves never clobber a token that is still to be moved.
template <typename E>
__global__ void kv_commit_kernel(LayerBases<E> layers, const int32_t* page_indptr, const int32_t* page_indices,
                                 const int32_t* prefix_len, const int32_t* acc_indptr, const int32_t* acc_nodes,
                                 const int32_t* acc_count, int page_size, int row_elems) {
  const int b = blockIdx.x;
  E* kv = layers[blockIdx.y];
  const int32_t* pages = page_indices + page_indptr[b];
  // acc_count: a verification's ragged result (sequence b's nodes start at acc_indptr[b]).
  const int prefix = prefix_len[b], a0 = acc_indptr[b], count = acc_count ? acc_count[b] : acc_indptr[b + 1] - a0;
  const size_t v_off = static_cast<size_t>(page_size) * row_elems;
  for (int j = 0; j < count; ++j) {
    const int src = prefix + acc_nodes[a0 + j], dst = prefix + j;
    if (src == dst) continue;
    const E* s = kv + (static_cast<size_t>(pages[src / page_size]) * 2 * page_size + src % page_size) * row_elems;
    E* d = kv + (static_cast<size_t>(pages[dst / page_size]) * 2 * page_size + dst % page_size) * row_elems;
    for (int e = threadIdx.x; e < row_elems; e += blockDim.x) {
      d[e] = s[e];
      d[e + v_off] = s[e + v_off];
    }
  }
}

// grid (pair, layer): page src[i] -> dst[i], copied in words of W bytes.
template <typename W>
__global__ void kv_copy_pages_kernel(LayerBases<W> layers, const int32_t* src, const int32_t* dst, size_t page_words) {
  W* base = layers[blockIdx.y];
  const W* s = base + static_cast<size_t>(src[blockIdx.x]) * page_words;
  W* d = base + static_cast<size_t>(dst[blockIdx.x]) * page_words;
  for (size_t e = threadIdx.x; e < page_words; e += blockDim.x) d[e] = s[e];
}

}  // namespace kv_kernels
}  // namespace cuda
}  // namespace specdec

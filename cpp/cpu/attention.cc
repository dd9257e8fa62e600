// CPU reference of fused tree attention over a paged prefix plus the new tokens.
// Per (sequence, KV head): gather the visible K/V rows once as f32, then for every query row of
// the group a two-pass softmax over the slots in order (f32 accumulation). Each row's arithmetic
// depends only on its own inputs (never on the batch), so results are deterministic and batch
// invariant; work items are spread over threads without changing any row's order of operations.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../core/ops_attention.h"
#include "thread_pool.h"

namespace specdec {
namespace cpu {

namespace {

// n floats of any storage format -> f32.
void to_f32(float* dst, const void* src, DType t, int64_t n) {
  switch (t) {
    case DType::f32: std::copy_n(static_cast<const float*>(src), n, dst); break;
    case DType::f16: for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
    default: for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(static_cast<const uint16_t*>(src)[i]); break;
  }
}

void from_f32(void* dst, const float* src, DType t, int64_t n) {
  switch (t) {
    case DType::f32: std::copy_n(src, n, static_cast<float*>(dst)); break;
    case DType::f16: for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = f32_to_f16(src[i]); break;
    default: for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(dst)[i] = f32_to_bf16(src[i]); break;
  }
}

// Dot product with a fixed summation order (8 interleaved partial sums, then a fixed tree).
inline float dot(const float* a, const float* b, int64_t n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) s[k] += a[i + k] * b[i + k];
  for (; i < n; ++i) s[i & 7] += a[i] * b[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

}  // namespace

void tree_attention(const Tensor& q, const Tensor& kv_layer, const PagedBatch& batch, const Tensor& mask,
                    float sm_scale, Tensor& out) {
  const int64_t S = kv_layer.size(2), Hkv = kv_layer.size(3), D = kv_layer.size(4);
  const int64_t Hq = q.size(1), G = Hq / Hkv, B = batch.batch_size();
  const int64_t W = mask.defined() ? mask.size(1) : 0;
  const uint64_t* bits = mask.defined() ? mask.ptr<uint64_t>() : nullptr;
  const DType kv_t = kv_layer.dtype(), q_t = q.dtype();
  const size_t esz = dtype_size(kv_t), qsz = dtype_size(q_t);
  const char* kv = static_cast<const char*>(kv_layer.data());
  const char* qp = static_cast<const char*>(q.data());
  char* op = static_cast<char*>(out.data());

  // Work items are (sequence, KV head) pairs; threads only pay off for real work (a decode step
  // over a long prefix, a tree, a prefill), so small jobs stay on the calling thread.
  double flops = 0;
  for (int64_t b = 0; b < B; ++b) {
    double qo = batch.h_qo_indptr[b + 1] - batch.h_qo_indptr[b];
    flops += qo * (batch.h_prefix_len[b] + qo) * Hq * D * 4.0;
  }
  const int64_t items = B * Hkv;
  const int64_t grain = grain_for(items > 0 ? flops / static_cast<double>(items) : 0.0, 1e6);

  auto run_item = [&](int64_t item) {
    const int64_t b = item / Hkv, h_kv = item % Hkv;
    const int64_t q0 = batch.h_qo_indptr[b], qo = batch.h_qo_indptr[b + 1] - q0, prefix = batch.h_prefix_len[b];
    const int64_t kv_len = prefix + qo;
    if (qo == 0) return;
    // Gather this head's K and V for every slot of the sequence, in slot order, as f32.
    std::vector<float> K(static_cast<size_t>(kv_len * D)), V(static_cast<size_t>(kv_len * D));
    for (int64_t t = 0; t < kv_len; ++t) {
      const int64_t page = batch.h_page_indices[static_cast<size_t>(batch.h_page_indptr[b] + t / S)], row = t % S;
      const size_t k_off = static_cast<size_t>((((page * 2 + 0) * S + row) * Hkv + h_kv) * D) * esz;
      const size_t v_off = static_cast<size_t>((((page * 2 + 1) * S + row) * Hkv + h_kv) * D) * esz;
      to_f32(&K[static_cast<size_t>(t * D)], kv + k_off, kv_t, D);
      to_f32(&V[static_cast<size_t>(t * D)], kv + v_off, kv_t, D);
    }
    std::vector<float> qrow(static_cast<size_t>(D)), acc(static_cast<size_t>(D)), score(static_cast<size_t>(kv_len));
    for (int64_t i = 0; i < qo; ++i) {
      const uint64_t* row_bits = bits ? bits + (q0 + i) * W : nullptr;
      // The prefix is always visible; new token j is visible by the mask bit, or causally (j <= i).
      auto visible = [&](int64_t t) -> bool {
        if (t < prefix) return true;
        const int64_t j = t - prefix;
        return row_bits ? ((row_bits[j >> 6] >> (j & 63)) & 1u) != 0 : j <= i;
      };
      for (int64_t g = 0; g < G; ++g) {
        const int64_t h = h_kv * G + g, n = q0 + i;
        to_f32(qrow.data(), qp + static_cast<size_t>((n * Hq + h) * D) * qsz, q_t, D);
        float m = -INFINITY;
        for (int64_t t = 0; t < kv_len; ++t) {
          if (!visible(t)) continue;
          score[t] = dot(qrow.data(), &K[static_cast<size_t>(t * D)], D) * sm_scale;
          m = std::max(m, score[t]);
        }
        std::fill(acc.begin(), acc.end(), 0.0f);
        float l = 0;
        if (m != -INFINITY) {
          for (int64_t t = 0; t < kv_len; ++t) {
            if (!visible(t)) continue;
            const float p = std::exp(score[t] - m);
            l += p;
            const float* v = &V[static_cast<size_t>(t * D)];
            for (int64_t d = 0; d < D; ++d) acc[d] += p * v[d];
          }
          // A row that sees nothing at all (empty mask row, empty prefix) is defined as zeros.
          for (int64_t d = 0; d < D; ++d) acc[d] /= l;
        }
        from_f32(op + static_cast<size_t>((n * Hq + h) * D) * qsz, acc.data(), q_t, D);
      }
    }
  };
  parallel_for(items, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) run_item(item);
  });
}

}  // namespace cpu
}  // namespace specdec

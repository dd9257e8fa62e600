// CPU reference: logits processing, argmax, sampling, top-k. Semantics in cpp/core/spec_math.h.
// Rows are independent and processed in a fixed order (batch invariant).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "../core/ops_sampling.h"
#include "../core/spec_math.h"

namespace specdec {
namespace cpu {

namespace {

// Row r of a float tensor [N, V] as f32.
void load_row(const Tensor& t, int64_t r, int64_t V, float* out) {
  switch (t.dtype()) {
    case DType::f32: {
      const float* p = t.ptr<float>() + r * V;
      std::copy(p, p + V, out);
      break;
    }
    case DType::f16: {
      const uint16_t* p = t.ptr<uint16_t>() + r * V;
      for (int64_t i = 0; i < V; ++i) out[i] = f16_to_f32(p[i]);
      break;
    }
    case DType::bf16: {
      const uint16_t* p = t.ptr<uint16_t>() + r * V;
      for (int64_t i = 0; i < V; ++i) out[i] = bf16_to_f32(p[i]);
      break;
    }
    default: fail("E_ARG", "expected a float tensor, got ", t.describe());
  }
}

int32_t row_argmax(const float* x, int64_t V) {
  float bv = x[0];
  int32_t bi = 0;
  for (int64_t i = 1; i < V; ++i)
    if (sm::argmax_better(x[i], static_cast<int32_t>(i), bv, bi)) { bv = x[i]; bi = static_cast<int32_t>(i); }
  return bi;
}

// The first `count` indices in (key desc, index asc) order: the order in which top-k / top-p keep
// tokens (top-k alone only needs its k, so that is a partial sort).
void sort_by_key_desc(const float* x, int64_t V, int64_t count, std::vector<int32_t>& order) {
  order.resize(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + count, order.end(), [&](int32_t a, int32_t b) {
    uint32_t ka = sm::float_key(x[a]), kb = sm::float_key(x[b]);
    return ka != kb ? ka > kb : a < b;
  });
}

void process_row(const float* logits, int64_t V, const SamplingParams& sp, float* out, std::vector<float>& x,
                 std::vector<int32_t>& order) {
  if (sp.temperature == 0.0f) {
    int32_t a = row_argmax(logits, V);
    std::fill(out, out + V, 0.0f);
    out[a] = 1.0f;
    return;
  }
  x.resize(static_cast<size_t>(V));
  float m = -INFINITY;
  for (int64_t i = 0; i < V; ++i) {
    x[i] = logits[i] / sp.temperature;
    if (x[i] > m) m = x[i];
  }
  double z = 0.0;
  for (int64_t i = 0; i < V; ++i) {
    out[i] = std::exp(x[i] - m);
    z += out[i];
  }
  const float inv_z = static_cast<float>(1.0 / z);
  float pmax = 0.0f;
  for (int64_t i = 0; i < V; ++i) {
    out[i] *= inv_z;
    pmax = std::max(pmax, out[i]);
  }
  const bool use_k = sp.top_k > 0 && sp.top_k < V;
  const bool use_p = sp.top_p < 1.0f;
  if (use_k || use_p) {
    int64_t keep = use_k ? sp.top_k : V;
    sort_by_key_desc(x.data(), V, keep, order);
    if (use_p) {
      uint64_t total = 0;
      for (int64_t j = 0; j < keep; ++j) total += sm::quantize_prob(out[order[j]]);
      const uint64_t need = static_cast<uint64_t>(std::ceil(static_cast<double>(total) * static_cast<double>(sp.top_p)));
      uint64_t cum = 0;
      int64_t j = 0;
      while (j < keep) {
        cum += sm::quantize_prob(out[order[j]]);
        ++j;
        if (cum >= need) break;
      }
      keep = std::max<int64_t>(j, 1);
    }
    for (int64_t j = keep; j < V; ++j) out[order[j]] = 0.0f;
  }
  if (sp.min_p > 0.0f) {
    const float thr = sp.min_p * pmax;
    for (int64_t i = 0; i < V; ++i)
      if (out[i] < thr) out[i] = 0.0f;
  }
  uint64_t mass = 0;
  for (int64_t i = 0; i < V; ++i) mass += sm::quantize_prob(out[i]);
  const double scale = sm::kMassOne / static_cast<double>(mass);
  for (int64_t i = 0; i < V; ++i) out[i] = static_cast<float>(static_cast<double>(out[i]) * scale);
}

}  // namespace

void process_logits(const Tensor& logits, const SamplingParams& params, Tensor& probs) {
  const int64_t N = logits.size(0), V = logits.size(1);
  std::vector<float> row(static_cast<size_t>(V)), x;
  std::vector<int32_t> order;
  float* out = probs.ptr<float>();
  for (int64_t r = 0; r < N; ++r) {
    load_row(logits, r, V, row.data());
    process_row(row.data(), V, params, out + r * V, x, order);
  }
}

void argmax(const Tensor& logits, Tensor& out) {
  const int64_t N = logits.size(0), V = logits.size(1);
  std::vector<float> row(static_cast<size_t>(V));
  for (int64_t r = 0; r < N; ++r) {
    load_row(logits, r, V, row.data());
    out.ptr<int32_t>()[r] = row_argmax(row.data(), V);
  }
}

void sample(const Tensor& probs, const Tensor& seeds, const Tensor& offsets, Tensor& out) {
  const int64_t N = probs.size(0), V = probs.size(1);
  std::vector<uint64_t> w(static_cast<size_t>(V));
  for (int64_t r = 0; r < N; ++r) {
    const float* p = probs.ptr<float>() + r * V;
    uint64_t mass = 0;
    for (int64_t i = 0; i < V; ++i) mass += (w[i] = sm::quantize_prob(p[i]));
    const uint64_t bits = sm::random_u64(seeds.ptr<uint64_t>()[r], offsets.ptr<uint64_t>()[r], 0, sm::kDrawSampleOp);
    const uint64_t t = sm::sample_threshold(bits, mass);
    int32_t tok = -1;  // a row without positive mass
    uint64_t before = 0;
    for (int64_t i = 0; i < V; ++i) {
      if (sm::sample_hit(before, w[i], t)) { tok = static_cast<int32_t>(i); break; }
      before += w[i];
    }
    out.ptr<int32_t>()[r] = tok;
  }
}

void top_k(const Tensor& x, int32_t k, Tensor& vals, Tensor& ids) {
  const int64_t N = x.size(0), V = x.size(1);
  std::vector<float> row(static_cast<size_t>(V));
  std::vector<int32_t> order(static_cast<size_t>(V));
  for (int64_t r = 0; r < N; ++r) {
    load_row(x, r, V, row.data());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      uint32_t ka = sm::float_key(row[a]), kb = sm::float_key(row[b]);
      return ka != kb ? ka > kb : a < b;
    });
    for (int32_t j = 0; j < k; ++j) {
      vals.ptr<float>()[r * k + j] = row[order[j]];
      ids.ptr<int32_t>()[r * k + j] = order[j];
    }
  }
}

}  // namespace cpu
}  // namespace specdec

// CPU reference: logits processing, argmax, sampling, top-k. Semantics in cpp/core/spec_math.h.
// Rows are independent and processed in a fixed order (batch invariant).
#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "../core/ops_sampling.h"
#include "../core/spec_math.h"
#include "simd.h"
#include "thread_pool.h"
#include "verify_simd.h"

namespace specdec {
namespace cpu {

namespace {

// Row r of a float tensor [N, V] as f32.
void load_row(const Tensor& t, int64_t r, int64_t V, float* out) { simd::to_f32_row(t.dtype(), t.data(), r * V, V, out); }

// An element's place in the order top-k / top-p keep tokens (float key descending, then index
// ascending) as one u64, larger = earlier; distinct for distinct indices, so selection runs on
// plain integers and the index comes back out of the rank.
inline uint64_t rank_key(float v, int64_t i) {
  return (static_cast<uint64_t>(sm::float_key(v)) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
}
inline int64_t rank_index(uint64_t r) { return static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(r)); }

// Keeps the top-k, then the top-p prefix, of a row (p = out, keys from x); zeroes the rest of out.
// No full sort: ranks are selected in growing sorted chunks (a heap select for small chunks,
// nth_element + sort for large ones) only as far as top-k and top-p need: for real distributions a
// few hundred tokens of a 128k vocabulary. The kept set is exactly that of a full sort.
void keep_top(const float* x, int64_t V, const SamplingParams& sp, float* out, std::vector<uint64_t>& ranks) {
  const bool use_k = sp.top_k > 0 && sp.top_k < V;
  const bool use_p = sp.top_p < 1.0f;
  const int64_t limit = use_k ? sp.top_k : V;  // the candidates are the first `limit` ranks
  ranks.resize(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) ranks[i] = rank_key(x[i], i);
  const auto earlier = std::greater<uint64_t>();
  int64_t sorted = 0;  // ranks[0, sorted) hold the first `sorted` ranks, in order
  // ranks[sorted, end) := the next ranks among ranks[sorted, within), in order.
  auto extend = [&](int64_t end, int64_t within) {
    if (end <= sorted) return;
    if (end - sorted <= 1024) {
      std::partial_sort(ranks.begin() + sorted, ranks.begin() + end, ranks.begin() + within, earlier);
    } else {
      if (end < within) std::nth_element(ranks.begin() + sorted, ranks.begin() + end, ranks.begin() + within, earlier);
      std::sort(ranks.begin() + sorted, ranks.begin() + end, earlier);
    }
    sorted = end;
  };
  if (use_k) {
    if (use_p || limit <= 1024) extend(limit, V);
    else std::nth_element(ranks.begin(), ranks.begin() + (limit - 1), ranks.end(), earlier);  // only the k-th is needed
  }
  int64_t keep = limit;
  if (use_p) {
    // The candidates' mass: every element's without top-k (an integer sum: any order, vectorized).
    uint64_t total = 0;
    if (!use_k) total = simd::quantize_row(out, V, nullptr);
    else
      for (int64_t j = 0; j < limit; ++j) total += sm::quantize_prob(out[rank_index(ranks[j])]);
    const uint64_t need = static_cast<uint64_t>(std::ceil(static_cast<double>(total) * static_cast<double>(sp.top_p)));
    uint64_t cum = 0;
    int64_t scanned = 0, end = std::min<int64_t>(limit, 256);
    keep = -1;
    while (keep < 0) {
      extend(end, limit);
      for (int64_t j = scanned; j < end; ++j) {
        cum += sm::quantize_prob(out[rank_index(ranks[j])]);
        if (cum >= need) {
          keep = j + 1;
          break;
        }
      }
      if (keep < 0 && end == limit) keep = limit;
      scanned = end;
      end = std::min<int64_t>(limit, end * 4);
    }
  }
  // ranks[0, keep) are the kept elements (top-k's nth_element or top-p's sorted prefix), the rest follow.
  for (int64_t j = keep; j < V; ++j) out[rank_index(ranks[static_cast<size_t>(j)])] = 0.0f;
}

void process_row(const float* logits, int64_t V, const SamplingParams& sp, float* out, std::vector<float>& x,
                 std::vector<uint64_t>& ranks) {
  if (sp.temperature == 0.0f) {
    int32_t a = simd::row_argmax(logits, V);
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
  if ((sp.top_k > 0 && sp.top_k < V) || sp.top_p < 1.0f) keep_top(x.data(), V, sp, out, ranks);
  if (sp.min_p > 0.0f) {
    const float thr = sp.min_p * pmax;
    for (int64_t i = 0; i < V; ++i)
      if (out[i] < thr) out[i] = 0.0f;
  }
  const uint64_t mass = simd::quantize_row(out, V, nullptr);
  const double scale = sm::kMassOne / static_cast<double>(mass);
  for (int64_t i = 0; i < V; ++i) out[i] = static_cast<float>(static_cast<double>(out[i]) * scale);
}

}  // namespace

void process_logits(const Tensor& logits, const SamplingParams& params, Tensor& probs) {
  const int64_t N = logits.size(0), V = logits.size(1);
  float* out = probs.ptr<float>();
  // Rows in parallel (a Medusa tree verifies 64 rows of 128k); each row alone on one thread.
  parallel_for(N, grain_for(static_cast<double>(V) * 16.0), [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(V)), x;
    std::vector<uint64_t> ranks;
    for (int64_t r = r0; r < r1; ++r) {
      load_row(logits, r, V, row.data());
      process_row(row.data(), V, params, out + r * V, x, ranks);
    }
  });
}

void argmax(const Tensor& logits, Tensor& out) {
  const int64_t N = logits.size(0), V = logits.size(1);
  std::vector<float> row;
  for (int64_t r = 0; r < N; ++r) out.ptr<int32_t>()[r] = simd::row_argmax(logits.dtype(), logits.data(), r * V, V, row);
}

void sample(const Tensor& probs, const Tensor& seeds, const Tensor& offsets, Tensor& out) {
  const int64_t N = probs.size(0), V = probs.size(1);
  std::vector<uint64_t> w(static_cast<size_t>(V));
  for (int64_t r = 0; r < N; ++r) {
    const float* p = probs.ptr<float>() + r * V;
    const uint64_t mass = simd::quantize_row(p, V, w.data());
    const uint64_t bits = sm::random_u64(seeds.ptr<uint64_t>()[r], offsets.ptr<uint64_t>()[r], 0, sm::kDrawSampleOp);
    out.ptr<int32_t>()[r] = simd::sample_index(w.data(), V, sm::sample_threshold(bits, mass));
  }
}

void top_k(const Tensor& x, int32_t k, Tensor& vals, Tensor& ids) {
  const int64_t N = x.size(0), V = x.size(1);
  std::vector<float> row(static_cast<size_t>(V));
  std::vector<uint64_t> ranks(static_cast<size_t>(V));
  const auto earlier = std::greater<uint64_t>();
  for (int64_t r = 0; r < N; ++r) {
    load_row(x, r, V, row.data());
    for (int64_t i = 0; i < V; ++i) ranks[i] = rank_key(row[i], i);
    if (k <= 1024) {
      std::partial_sort(ranks.begin(), ranks.begin() + k, ranks.end(), earlier);
    } else {
      if (k < V) std::nth_element(ranks.begin(), ranks.begin() + k, ranks.end(), earlier);
      std::sort(ranks.begin(), ranks.begin() + k, earlier);
    }
    for (int32_t j = 0; j < k; ++j) {
      const int64_t i = rank_index(ranks[j]);
      vals.ptr<float>()[r * k + j] = row[i];
      ids.ptr<int32_t>()[r * k + j] = static_cast<int32_t>(i);
    }
  }
}

namespace {
// Row by row: the sequence's history tokens (their output counts plus the path's), then the path's
// tokens the history lacks, each distinct one once.
template <class Path>
void penalize_rows(float* x, int64_t N, int64_t V, const PenaltyArgs& a, const Path& whole) {
  for (int64_t r = 0; r < N; ++r) {
    float* row = x + r * V;
    const int32_t s = a.row_seq[static_cast<size_t>(r)];
    const int32_t h0 = a.hist_indptr[static_cast<size_t>(s)], hn = a.hist_indptr[static_cast<size_t>(s) + 1] - h0;
    const int32_t* hist = a.hist_tokens.data() + h0;
    const int32_t* counts = a.hist_counts.data() + h0;
    const int32_t p0 = a.path_indptr[static_cast<size_t>(r)], pn = a.path_indptr[static_cast<size_t>(r) + 1] - p0;
    const auto path = [&](int32_t j) { return whole(p0 + j); };
    for (int32_t j = 0; j < hn; ++j)
      row[hist[j]] = sm::penalized_logit(row[hist[j]], counts[j] + sm::path_count(path, pn, hist[j]), a.repetition, a.presence, a.frequency);
    for (int32_t j = 0; j < pn; ++j) {
      const int32_t t = path(j);
      if (t >= 0 && t < V && sm::first_in_path(path, j) && !sm::in_history(hist, hn, t))
        row[t] = sm::penalized_logit(row[t], sm::path_count(path, pn, t), a.repetition, a.presence, a.frequency);
    }
  }
}
}  // namespace

void penalize(Tensor& logits, const PenaltyArgs& a) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (a.path_source) penalize_rows(logits.ptr<float>(), N, V, a, sm::IndexedPath{a.path_source->ptr<int32_t>(), a.path_tokens.data()});
  else penalize_rows(logits.ptr<float>(), N, V, a, sm::DirectPath{a.path_tokens.data()});
}

}  // namespace cpu
}  // namespace specdec

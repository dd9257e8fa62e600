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

using sm::rank_index;
using sm::rank_key;

// Candidates above which top-p alone takes the histograms (top_p_boundary) rather than sorted chunks.
constexpr int64_t kHistogramCandidates = 8192;

#ifdef SPECDEC_CPU_X86_SIMD
// sm::float_key of 8 floats: the bits xor'd with the sign spread, or'd with the top bit; a NaN's key 0.
SPECDEC_AVX2 inline __m256i float_keys8_avx2(__m256 xv) {
  const __m256i u = _mm256_castps_si256(xv);
  const __m256i key = _mm256_xor_si256(u, _mm256_or_si256(_mm256_srai_epi32(u, 31), _mm256_set1_epi32(static_cast<int>(0x80000000u))));
  return _mm256_andnot_si256(_mm256_castps_si256(_mm256_cmp_ps(xv, xv, _CMP_UNORD_Q)), key);
}

SPECDEC_AVX2 int64_t float_keys_avx2(const float* x, int64_t V, uint32_t* keys) {
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) _mm256_storeu_si256(reinterpret_cast<__m256i*>(keys + i), float_keys8_avx2(_mm256_loadu_ps(x + i)));
  return i;
}
#endif

// keys[i] = sm::float_key(x[i]) for a whole row.
void float_keys(const float* x, int64_t V, uint32_t* keys) {
  int64_t i = 0;
#ifdef SPECDEC_CPU_X86_SIMD
  if (simd::use_avx2()) i = float_keys_avx2(x, V, keys);
#endif
  for (; i < V; ++i) keys[i] = sm::float_key(x[i]);
}

// Top-p alone over many candidates: the kept prefix found by mass histograms (a radix select) rather
// than sorted chunks. Keys are float_key(x) (the rank order's high half); histogram 1 sums the mass
// per top 12 bits, histogram 2 per the next 12 within the bucket where the cumulative mass (in
// descending key order) reaches `need`, and only the elements of that final bucket are sorted (by
// rank key: ties by index) and scanned. Returns the rank key of the last kept element, or false when
// the whole row's mass never reaches `need` (everything kept). Three passes over the row instead of
// ranking most of it (a flat 128k row at top-p 0.9 took ~4.5 ms).
bool top_p_boundary(const float* x, const float* out, int64_t V, uint64_t need, std::vector<uint64_t>& ranks, uint64_t& boundary) {
  constexpr int kBits = 12, kBuckets = 1 << kBits;
  if (need == 0) {
    // (A row without mass: the sorted scan keeps its first element alone.)
    boundary = 0;
    for (int64_t i = 0; i < V; ++i) boundary = std::max(boundary, rank_key(x[i], i));
    return true;
  }
  // The keys and quantised masses once, by the vector passes; the histograms then read them.
  thread_local std::vector<uint32_t> keys;
  thread_local std::vector<uint64_t> w;
  keys.resize(static_cast<size_t>(V));
  w.resize(static_cast<size_t>(V));
  float_keys(x, V, keys.data());
  simd::quantize_row(out, V, w.data());
  const uint32_t* const K = keys.data();
  const uint64_t* const W = w.data();
  std::vector<uint64_t> hist(kBuckets);
  // (Four interleaved histograms, summed after: a flat row's keys share a few buckets, and one
  // histogram's adds to them would wait on each other.)
  constexpr int kCopies = 4;
  std::vector<uint64_t> copies(static_cast<size_t>(kCopies * kBuckets));
  const auto accumulate = [&](auto bucket_of) {
    std::fill(copies.begin(), copies.end(), 0);
    uint64_t* const h = copies.data();
    for (int64_t i = 0; i < V; ++i) {
      const int k = bucket_of(K[i]);
      if (k >= 0) h[(i & (kCopies - 1)) * kBuckets + k] += W[i];
    }
    for (int k = 0; k < kBuckets; ++k) {
      uint64_t t = 0;
      for (int c = 0; c < kCopies; ++c) t += h[c * kBuckets + k];
      hist[static_cast<size_t>(k)] = t;
    }
  };
  const auto pick = [&](uint64_t before) -> std::pair<int, uint64_t> {  // the bucket where `need` is reached, and the mass above it
    for (int k = kBuckets - 1; k >= 0; --k) {
      if (before + hist[static_cast<size_t>(k)] >= need) return {k, before};
      before += hist[static_cast<size_t>(k)];
    }
    return {-1, before};
  };
  accumulate([](uint32_t k) { return static_cast<int>(k >> (32 - kBits)); });
  const auto [b1, above1] = pick(0);
  if (b1 < 0) return false;
  accumulate([b1](uint32_t k) { return static_cast<int>(k >> (32 - kBits)) == b1 ? static_cast<int>((k >> (32 - 2 * kBits)) & (kBuckets - 1)) : -1; });
  const auto [b2, above2] = pick(above1);
  const uint32_t prefix = (static_cast<uint32_t>(b1) << kBits) | static_cast<uint32_t>(b2);
  ranks.clear();
  for (int64_t i = 0; i < V; ++i)
    if ((K[i] >> (32 - 2 * kBits)) == prefix) ranks.push_back(rank_key(x[i], i));
  std::sort(ranks.begin(), ranks.end(), std::greater<uint64_t>());
  uint64_t cum = above2;
  for (const uint64_t r : ranks) {
    cum += W[rank_index(r)];
    if (cum >= need) {
      boundary = r;
      return true;
    }
  }
  return false;  // (unreachable: the bucket's mass reaches need)
}

// Zeroes out[i] for every element ranking below the kept one with rank key b (NaN ranks last).
void zero_below_plain(const float* x, int64_t V, uint64_t b, float* out, int64_t i) {
  for (; i < V; ++i)
    if (rank_key(x[i], i) < b) out[i] = 0.0f;
}

#ifdef SPECDEC_CPU_X86_SIMD
// rank_key(x, i) < b <=> float_key(x) < b's key, or the same key and i past b's index: the keys
// compared 8 at a time, the rare equal keys element by element.
SPECDEC_AVX2 int64_t zero_below_avx2(const float* x, int64_t V, uint64_t b, float* out) {
  const uint32_t kb = static_cast<uint32_t>(b >> 32);
  const __m256i top = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i kbs = _mm256_set1_epi32(static_cast<int>(kb ^ 0x80000000u));  // (signed compares of key ^ top)
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    const __m256i ks = _mm256_xor_si256(float_keys8_avx2(_mm256_loadu_ps(x + i)), top);
    const __m256i below = _mm256_cmpgt_epi32(kbs, ks);
    const __m256i same = _mm256_cmpeq_epi32(kbs, ks);
    _mm256_storeu_ps(out + i, _mm256_andnot_ps(_mm256_castsi256_ps(below), _mm256_loadu_ps(out + i)));
    if (_mm256_movemask_ps(_mm256_castsi256_ps(same)) != 0) zero_below_plain(x, i + 8, b, out, i);
  }
  return i;
}
#endif

void zero_below(const float* x, int64_t V, uint64_t b, float* out) {
  int64_t i = 0;
#ifdef SPECDEC_CPU_X86_SIMD
  if (simd::use_avx2()) i = zero_below_avx2(x, V, b, out);
#endif
  zero_below_plain(x, V, b, out, i);
}

// keep_top's candidate bands: thresholds t[c] = m - {8, 16, 32, 64}; n[c] = elements with x >= t[c]
// and, with `mass`, mass[c] = their quantised mass (out). One pass for the four (they were a pass
// each until one held enough); the counts and sums are exact in any order, so every path agrees.
constexpr int kBands = 4;
constexpr float kBandWidths[kBands] = {8.0f, 16.0f, 32.0f, 64.0f};

void band_counts_plain(const float* x, const float* out, int64_t V, const float* t, bool mass, int64_t i, int64_t* n, uint64_t* w) {
  for (; i < V; ++i)
    for (int c = 0; c < kBands; ++c)
      if (x[i] >= t[c]) {
        ++n[c];
        if (mass) w[c] += sm::quantize_prob(out[i]);
      }
}

// The indices i with x[i] >= floor_x, as rank keys, appended to ranks.
void gather_plain(const float* x, int64_t V, float floor_x, int64_t i, std::vector<uint64_t>& ranks) {
  for (; i < V; ++i)
    if (x[i] >= floor_x) ranks.push_back(rank_key(x[i], i));
}

#ifdef SPECDEC_CPU_X86_SIMD
SPECDEC_AVX2 int64_t band_counts_avx2(const float* x, const float* out, int64_t V, const float* t, bool mass, int64_t* n, uint64_t* w) {
  __m256 tv[kBands];
  __m256i acc[kBands];
  for (int c = 0; c < kBands; ++c) {
    tv[c] = _mm256_set1_ps(t[c]);
    acc[c] = _mm256_setzero_si256();
  }
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    __m256 in[kBands];
    for (int c = 0; c < kBands; ++c) {
      in[c] = _mm256_cmp_ps(xv, tv[c], _CMP_GE_OQ);  // (a NaN is in no band, as x >= t says)
      n[c] += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(in[c])));
    }
    // The widest band holds the others: nothing in it, no mass to add.
    if (!mass || _mm256_movemask_ps(in[kBands - 1]) == 0) continue;
    const __m256i lo = simd::u64_from_f64_avx2(simd::quantize4_avx2(_mm_loadu_ps(out + i)));
    const __m256i hi = simd::u64_from_f64_avx2(simd::quantize4_avx2(_mm_loadu_ps(out + i + 4)));
    for (int c = 0; c < kBands; ++c) {
      const __m256i k = _mm256_castps_si256(in[c]);
      acc[c] = _mm256_add_epi64(acc[c], _mm256_and_si256(lo, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(k))));
      acc[c] = _mm256_add_epi64(acc[c], _mm256_and_si256(hi, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(k, 1))));
    }
  }
  for (int c = 0; c < kBands; ++c) w[c] += simd::hsum_avx2(acc[c]);
  return i;
}

SPECDEC_AVX2 int64_t gather_avx2(const float* x, int64_t V, float floor_x, std::vector<uint64_t>& ranks) {
  const __m256 fv = _mm256_set1_ps(floor_x);
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    unsigned bits = static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), fv, _CMP_GE_OQ)));
    while (bits) {
      const int64_t j = i + __builtin_ctz(bits);
      ranks.push_back(rank_key(x[j], j));
      bits &= bits - 1;
    }
  }
  return i;
}
#endif

void band_counts(const float* x, const float* out, int64_t V, const float* t, bool mass, int64_t* n, uint64_t* w) {
  int64_t i = 0;
#ifdef SPECDEC_CPU_X86_SIMD
  if (simd::use_avx2()) i = band_counts_avx2(x, out, V, t, mass, n, w);
#endif
  band_counts_plain(x, out, V, t, mass, i, n, w);
}

// (In index order, whatever the path: the ranks are sorted after anyway.)
void gather(const float* x, int64_t V, float floor_x, std::vector<uint64_t>& ranks) {
  int64_t i = 0;
#ifdef SPECDEC_CPU_X86_SIMD
  if (simd::use_avx2()) i = gather_avx2(x, V, floor_x, ranks);
#endif
  gather_plain(x, V, floor_x, i, ranks);
}

// Keeps the top-k, then the top-p prefix, of a row (p = out, keys from x); zeroes the rest of out.
// No full sort: ranks are selected in growing sorted chunks (a heap select for small chunks,
// nth_element + sort for large ones) only as far as top-k and top-p need: for real distributions a
// few hundred tokens of a 128k vocabulary. The kept set is exactly that of a full sort.
// Candidates first: the elements within c of the row's max m (x >= m - c, for the smallest c of 8,
// 16, 32, 64 whose elements number at least k (top-k), or else hold top-p's mass). Every element
// outside ranks below every one inside, so the kept prefix lies inside and only the candidates are
// ranked; ranking all 128k elements cost ~0.8 ms a row. Without such a c, or with one that takes a
// quarter of the row or more, all elements. Top-p alone over more than kHistogramCandidates
// candidates finds its end by histograms instead (top_p_boundary).
void keep_top(const float* x, float m, int64_t V, const SamplingParams& sp, float* out, std::vector<uint64_t>& ranks) {
  const bool use_k = sp.top_k > 0 && sp.top_k < V;
  const bool use_p = sp.top_p < 1.0f;
  const int64_t limit = use_k ? sp.top_k : V;  // the candidates are the first `limit` ranks
  // top-p without top-k: the mass to reach, of the whole row (an integer sum: any order, vectorized).
  uint64_t need = 0;
  if (use_p && !use_k)
    need = static_cast<uint64_t>(std::ceil(static_cast<double>(simd::quantize_row(out, V, nullptr)) * static_cast<double>(sp.top_p)));
  float floor_x = -INFINITY;
  bool all = true;
  int64_t candidates = V;
  float t[kBands];
  int64_t n[kBands] = {0, 0, 0, 0};
  uint64_t mass[kBands] = {0, 0, 0, 0};
  for (int c = 0; c < kBands; ++c) t[c] = m - kBandWidths[c];
  band_counts(x, out, V, t, !use_k, n, mass);
  for (int c = 0; c < kBands; ++c) {
    if (n[c] > 0 && (use_k ? n[c] >= limit : mass[c] >= need)) {
      // (A quarter of the row or more: ranking it all is as quick; a flat tail under a few peaks.)
      floor_x = t[c];
      all = n[c] > V / 4;
      candidates = n[c];
      break;
    }
  }
  if (!use_k && candidates > kHistogramCandidates) {
    // Zero everything ranking below the boundary: the same set as the sorted prefix's.
    uint64_t b = 0;
    if (top_p_boundary(x, out, V, need, ranks, b)) zero_below(x, V, b, out);
    return;
  }
  ranks.clear();
  if (all) {
    thread_local std::vector<uint32_t> keys;
    keys.resize(static_cast<size_t>(V));
    float_keys(x, V, keys.data());
    ranks.resize(static_cast<size_t>(V));
    const uint32_t* const K = keys.data();
    uint64_t* const R = ranks.data();
    for (int64_t i = 0; i < V; ++i) R[i] = (static_cast<uint64_t>(K[i]) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
  } else {
    gather(x, V, floor_x, ranks);
  }
  const int64_t C = static_cast<int64_t>(ranks.size());  // >= limit when use_k
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
    if (use_p || limit <= 1024) extend(limit, C);
    else std::nth_element(ranks.begin(), ranks.begin() + (limit - 1), ranks.end(), earlier);  // only the k-th is needed
  }
  const int64_t top = use_k ? limit : C;  // the ranks top-p scans
  int64_t keep = top;
  if (use_p) {
    if (use_k)
      for (int64_t j = 0; j < limit; ++j) need += sm::quantize_prob(out[rank_index(ranks[j])]);
    if (use_k) need = static_cast<uint64_t>(std::ceil(static_cast<double>(need) * static_cast<double>(sp.top_p)));
    uint64_t cum = 0;
    int64_t scanned = 0, end = std::min<int64_t>(top, 256);
    keep = -1;
    while (keep < 0) {
      extend(end, top);
      for (int64_t j = scanned; j < end; ++j) {
        cum += sm::quantize_prob(out[rank_index(ranks[j])]);
        if (cum >= need) {
          keep = j + 1;
          break;
        }
      }
      if (keep < 0 && end == top) keep = top;
      scanned = end;
      end = std::min<int64_t>(top, end * 4);
    }
  }
  if (all) {
    // ranks[0, keep) are the kept elements (top-k's nth_element or top-p's sorted prefix), the rest follow.
    for (int64_t j = keep; j < V; ++j) out[rank_index(ranks[static_cast<size_t>(j)])] = 0.0f;
    return;
  }
  // The kept elements are those ranking at or above the last kept one, b (ranks[0, keep) hold them,
  // b the smallest; -0 ranks below +0, the index breaks ties, NaN ranks last).
  uint64_t b = ranks[0];
  for (int64_t j = 1; j < keep; ++j) b = std::min(b, ranks[static_cast<size_t>(j)]);
  zero_below(x, V, b, out);
}

// The softmax's numerators out[i] = exp(x[i] - m), x = logits / t (x <= m), and their sum, in one
// order on every instruction set: exp by simd::exp_nonpos's steps, summed in double into eight
// accumulators by index mod 8, then ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)). (std::exp
// and one running double sum took ~1 ms of a 128k row; the vector pass gives the same bits.)
double exp_sum_portable(const float* logits, float t, float m, int64_t V, float* out) {
  double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < V; ++i) {
    out[i] = simd::exp_nonpos_scalar(logits[i] / t - m);
    a[i & 7] += out[i];
  }
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

#ifdef SPECDEC_CPU_X86_SIMD
// (The vector forms of divide_max, scale_max and rescale below: whole vectors, from i = 0; they
// leave the tail to the scalar loop, i at its first element.)
SPECDEC_AVX2 float divide_max_avx2(const float* logits, float t, int64_t V, float* x, int64_t& i) {
  const __m256 tv = _mm256_set1_ps(t);
  __m256 mv = _mm256_set1_ps(-INFINITY);
  for (i = 0; i + 8 <= V; i += 8) {
    const __m256 v = _mm256_div_ps(_mm256_loadu_ps(logits + i), tv);
    if (x) _mm256_storeu_ps(x + i, v);
    mv = _mm256_max_ps(v, mv);  // a NaN v keeps mv
  }
  alignas(32) float l[8];
  _mm256_store_ps(l, mv);
  float m = -INFINITY;
  for (float v : l) m = v > m ? v : m;
  return m;
}

SPECDEC_AVX2 float scale_max_avx2(float* out, float s, int64_t V, int64_t& i) {
  const __m256 sv = _mm256_set1_ps(s);
  __m256 mv = _mm256_setzero_ps();
  for (i = 0; i + 8 <= V; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(out + i), sv);
    _mm256_storeu_ps(out + i, v);
    mv = _mm256_max_ps(v, mv);  // std::max(pm, v): a NaN v keeps pm
  }
  alignas(32) float l[8];
  _mm256_store_ps(l, mv);
  float m = 0.0f;
  for (float v : l) m = std::max(m, v);
  return m;
}

SPECDEC_AVX2 int64_t rescale_avx2(float* out, double s, int64_t V) {
  const __m256d sv = _mm256_set1_pd(s);
  int64_t i = 0;
  for (; i + 4 <= V; i += 4) _mm_storeu_ps(out + i, _mm256_cvtpd_ps(_mm256_mul_pd(_mm256_cvtps_pd(_mm_loadu_ps(out + i)), sv)));
  return i;
}

SPECDEC_AVX2 double exp_sum_avx2(const float* logits, float t, float m, int64_t V, float* out) {
  const __m256 mv = _mm256_set1_ps(m), tv = _mm256_set1_ps(t);
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();  // accumulators 0-3 and 4-7
  int64_t i = 0;
  for (; i + 8 <= V; i += 8) {
    const __m256 e = simd::exp_nonpos(_mm256_sub_ps(_mm256_div_ps(_mm256_loadu_ps(logits + i), tv), mv));
    _mm256_storeu_ps(out + i, e);
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
  }
  alignas(32) double a[8];
  _mm256_store_pd(a, lo);
  _mm256_store_pd(a + 4, hi);
  for (; i < V; ++i) {
    out[i] = simd::exp_nonpos_scalar(logits[i] / t - m);
    a[i & 7] += out[i];
  }
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}
#endif

double exp_sum(const float* logits, float t, float m, int64_t V, float* out) {
#ifdef SPECDEC_CPU_X86_SIMD
  if (simd::use_avx2()) return exp_sum_avx2(logits, t, m, V, out);
#endif
  return exp_sum_portable(logits, t, m, V, out);
}

// The element-wise passes of process_row (each element alone, so any instruction set gives the same
// bits; the vector forms keep a 128k row's passes at memory speed). The max of a row is exact in any
// order: a NaN never wins (`v > m` and max_ps(v, m) both keep m), and +0 / -0 ties do not matter
// (exp of either difference is the same).

// max of x = logits / t (-inf when every element is NaN or -inf); x stored unless null.
float divide_max(const float* logits, float t, int64_t V, float* x) {
  float m = -INFINITY;
  int64_t i = 0;
#ifdef SPECDEC_CPU_X86_SIMD
  if (simd::use_avx2()) m = divide_max_avx2(logits, t, V, x, i);
#endif
  for (; i < V; ++i) {
    const float v = logits[i] / t;
    if (x) x[i] = v;
    if (v > m) m = v;
  }
  return m;
}

// out *= s; returns max out (0 for an empty or all-NaN row).
float scale_max(float* out, float s, int64_t V) {
  float pm = 0.0f;
  int64_t i = 0;
#ifdef SPECDEC_CPU_X86_SIMD
  if (simd::use_avx2()) pm = scale_max_avx2(out, s, V, i);
#endif
  for (; i < V; ++i) {
    out[i] *= s;
    pm = std::max(pm, out[i]);
  }
  return pm;
}

// out = float(double(out) * s).
void rescale(float* out, double s, int64_t V) {
  int64_t i = 0;
#ifdef SPECDEC_CPU_X86_SIMD
  if (simd::use_avx2()) i = rescale_avx2(out, s, V);
#endif
  for (; i < V; ++i) out[i] = static_cast<float>(static_cast<double>(out[i]) * s);
}

void process_row(const float* logits, int64_t V, const SamplingParams& sp, float* out, std::vector<float>& x,
                 std::vector<uint64_t>& ranks) {
  if (sp.temperature == 0.0f) {
    int32_t a = simd::row_argmax(logits, V);
    std::fill(out, out + V, 0.0f);
    out[a] = 1.0f;
    return;
  }
  // (x = logits / t is kept only for top-k / top-p's ranks; the passes recompute it, exactly.)
  const bool top = (sp.top_k > 0 && sp.top_k < V) || sp.top_p < 1.0f;
  if (top) x.resize(static_cast<size_t>(V));
  const float m = divide_max(logits, sp.temperature, V, top ? x.data() : nullptr);
  const double z = exp_sum(logits, sp.temperature, m, V, out);
  const float pmax = scale_max(out, static_cast<float>(1.0 / z), V);
  if (top) keep_top(x.data(), m, V, sp, out, ranks);
  if (sp.min_p > 0.0f) {
    const float thr = sp.min_p * pmax;
    for (int64_t i = 0; i < V; ++i)
      if (out[i] < thr) out[i] = 0.0f;
  }
  const uint64_t mass = simd::quantize_row(out, V, nullptr);
  rescale(out, sm::kMassOne / static_cast<double>(mass), V);
}

}  // namespace

void process_logits(const Tensor& logits, const SamplingParams& params, Tensor& probs) {
  const int64_t N = logits.size(0), V = logits.size(1);
  float* out = probs.ptr<float>();
  // Rows in parallel (a Medusa tree verifies 64 rows of 128k); each row alone on one thread.
  parallel_for(N, grain_for(static_cast<double>(V) * 16.0), [&](int64_t r0, int64_t r1) {
    // (f32 rows are read in place; f16 / bf16 ones converted first.)
    const bool f32 = logits.dtype() == DType::f32;
    std::vector<float> row(f32 ? 0 : static_cast<size_t>(V)), x;
    std::vector<uint64_t> ranks;
    for (int64_t r = r0; r < r1; ++r) {
      const float* l = f32 ? logits.ptr<float>() + r * V : row.data();
      if (!f32) load_row(logits, r, V, row.data());
      process_row(l, V, params, out + r * V, x, ranks);
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
// One entry of token_logprobs / pick_logprobs: token's log p on `row` (NaN for a token outside the
// vocabulary: a draw without mass) and the row's k largest entries (ranks: V words of scratch).
void row_logprobs(const float* row, int64_t V, int32_t token, int32_t k, std::vector<uint64_t>& ranks, float* lp, float* top_lp,
                  int32_t* top_ids) {
  const double lse = sm::log_sum_exp_host(row, V);
  *lp = token >= 0 && token < V ? sm::logprob_of(row[token], lse) : NAN;
  if (k == 0) return;
  for (int64_t i = 0; i < V; ++i) ranks[static_cast<size_t>(i)] = rank_key(row[i], i);
  std::partial_sort(ranks.begin(), ranks.begin() + k, ranks.end(), std::greater<uint64_t>());
  for (int32_t j = 0; j < k; ++j) {
    const int64_t i = rank_index(ranks[static_cast<size_t>(j)]);
    top_ids[j] = static_cast<int32_t>(i);
    top_lp[j] = sm::logprob_of(row[i], lse);
  }
}
}  // namespace

void token_logprobs(const Tensor& logits, const std::vector<int32_t>& rows, const std::vector<int32_t>& tokens, int32_t k, Tensor& lp,
                    Tensor& top_lp, Tensor& top_ids) {
  const int64_t V = logits.size(1), M = static_cast<int64_t>(rows.size());
  std::vector<uint64_t> ranks(static_cast<size_t>(k > 0 ? V : 0));
  for (int64_t m = 0; m < M; ++m)
    row_logprobs(logits.ptr<float>() + rows[static_cast<size_t>(m)] * V, V, tokens[static_cast<size_t>(m)], k, ranks, lp.ptr<float>() + m,
                 top_lp.ptr<float>() + m * k, top_ids.ptr<int32_t>() + m * k);
}

void pick_logprobs(const Tensor& logits, const Tensor& picks, const std::vector<int32_t>& rows, int32_t k, Tensor& lp, Tensor& top_lp,
                   Tensor& top_ids) {
  const int64_t V = logits.size(1);
  std::vector<uint64_t> ranks(static_cast<size_t>(k > 0 ? V : 0));
  for (const int32_t r : rows)
    row_logprobs(logits.ptr<float>() + int64_t{r} * V, V, picks.ptr<int32_t>()[r], k, ranks, lp.ptr<float>() + r, top_lp.ptr<float>() + int64_t{r} * k,
                 top_ids.ptr<int32_t>() + int64_t{r} * k);
}

void mask_tokens(Tensor& logits, const std::vector<int32_t>& rows, const std::vector<uint32_t>& allowed) {
  const int64_t V = logits.size(1), W = (V + 31) / 32;
  for (size_t m = 0; m < rows.size(); ++m) {
    float* row = logits.ptr<float>() + int64_t{rows[m]} * V;
    const uint32_t* bits = allowed.data() + static_cast<int64_t>(m) * W;
    for (int64_t t = 0; t < V; ++t)
      if (((bits[t >> 5] >> (t & 31)) & 1u) == 0) row[t] = -INFINITY;
  }
}

namespace {
// Row by row: the logit bias, then the sequence's history tokens (their output counts plus the
// path's), then the path's tokens the history lacks, each distinct one once; last the bans.
template <class Path>
void penalize_rows(float* x, int64_t N, int64_t V, const PenaltyArgs& a, const Path& whole) {
  for (int64_t r = 0; r < N; ++r) {
    float* row = x + r * V;
    for (size_t i = 0; i < a.bias_tokens.size(); ++i) row[a.bias_tokens[i]] += a.bias_values[i];
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
    if (!a.ban_indptr.empty() && pn < a.ban_before[static_cast<size_t>(s)])
      for (int32_t j = a.ban_indptr[static_cast<size_t>(s)]; j < a.ban_indptr[static_cast<size_t>(s) + 1]; ++j) row[a.ban_tokens[static_cast<size_t>(j)]] = -INFINITY;
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

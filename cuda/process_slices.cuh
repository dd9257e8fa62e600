// processLogits by vocabulary slices. A few rows of a large vocabulary (a decode step, a draft
// model's chain) would leave all but a few SMs idle with one block per row, and that block makes a
// dozen passes over its row (max, exp-sum, probabilities, two radix selects of four passes each,
// the boundary ties, min-p, the mass). Here every pass is one launch over a block per
// kSliceCols-wide slice of every row, with partials per slice (or a per-row histogram) in between.
//
// A row's probabilities are the block kernel's (process_logits_kernel), bit for bit, so the
// launcher may choose by row count without breaking batch invariance: every reduction but the
// softmax denominator is exact (max; integer counts and masses), and the denominator is summed in
// the one order below, which the block kernel uses too.
#pragma once
#include "argmax_slices.cuh"

namespace specdec {
namespace cuda {
namespace sampling_kernels {

constexpr int kSliceWarps = kSliceThreads / 32;

// Columns [c0, c1) of slice s of a row of V (s < argmax_slices(V); no overflow near 2^31).
__host__ __device__ inline int slice_begin(int s) { return s * kSliceCols; }
__host__ __device__ inline int slice_end(int V, int s) { return V - s * kSliceCols < kSliceCols ? V : s * kSliceCols + kSliceCols; }

// The softmax denominator's order (both kernels): z = the row's slice sums added in slice order,
// from 0.0; a slice sum = its kSliceWarps warp sums added in warp order; a warp sum = the xor
// butterfly (16, 8, 4, 2, 1: the same value in every lane) of its lanes; lane t of a slice's
// kSliceThreads sums exp(x_i - m) in double over i = c0 + t, c0 + t + kSliceThreads, ... in order,
// from 0.0. Double, as the CPU's z (cpp/cpu/sampling.cc).
template <typename XT>
__device__ __forceinline__ double exp_sum_warp(XT xt, float m, int c0, int c1, int t) {
  double a = 0.0;
  for (int i = c0 + t; i < c1; i += kSliceThreads) a += static_cast<double>(expf(xt(i) - m));
  for (int o = 16; o > 0; o >>= 1) a += __shfl_xor_sync(blk::kFull, a, o);
  return a;
}
__device__ __forceinline__ double slice_sum_of_warps(const double* w) {
  double s = w[0];
  for (int k = 1; k < kSliceWarps; ++k) s += w[k];
  return s;
}

// Scratch of the sliced path ([N, S] partials, per-row radix state); hist, total and wt zeroed.
struct SliceScratch {
  float* part_max;                // [N, S] max of x / T
  float* part_pmax;               // [N, S] max of p (before any filter)
  double* part_z;                 // [N, S] slice sums of the denominator
  unsigned long long* part_mass;  // [N, S] quantised mass after the filters
  unsigned long long* ties;       // [N, S] boundary ties of the current select
  unsigned long long* hist;       // [N, 2, 4, 256] histograms: select (top-k, top-p), pass, digit
  unsigned long long* state;      // [N, 2, 5, 2] (prefix, weight above) after 0..4 passes
  unsigned long long* total;      // [N] top-p: quantised mass after top-k
  unsigned long long* wt;         // [N] top-p: the boundary key's largest weight
  int32_t* part_i;                // [N, S] temperature 0: each slice's argmax (part_max: its value)
  int32_t* am;                    // [N] temperature 0: the argmax

  // A row's histograms and radix states for one select.
  __device__ unsigned long long* select_hist(int64_t row, bool top_p) const { return hist + (row * 2 + (top_p ? 1 : 0)) * 4 * 256; }
  __device__ unsigned long long* select_state(int64_t row, bool top_p) const { return state + (row * 2 + (top_p ? 1 : 0)) * 5 * 2; }
};

namespace slices {

struct Smem {
  unsigned long long hist[256];
  unsigned long long stage[kSliceWarps][32];
  unsigned long long u64[kSliceWarps];
  double f64[kSliceWarps];
  float f32[kSliceWarps];
  uint32_t digit;
  unsigned long long above;
};

// One value per thread reduced over the block, every thread gets it (sync first: scratch reuse).
template <typename V, typename Op>
__device__ __forceinline__ V reduce(V v, Op op, V* scratch) {
  v = blk::warp_reduce(v, op);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  V r = scratch[0];
  for (int w = 1; w < kSliceWarps; ++w) r = op(r, scratch[w]);
  return r;
}

// Inclusive prefix sum in thread order over the block; *total = the block's sum.
__device__ __forceinline__ unsigned long long scan(unsigned long long v, Smem* s, unsigned long long* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long n = __shfl_up_sync(blk::kFull, v, o);
    if (lane >= o) v += n;
  }
  __syncthreads();
  if (lane == 31) s->u64[warp] = v;
  __syncthreads();
  unsigned long long before = 0, tot = 0;
  for (int w = 0; w < kSliceWarps; ++w) {
    if (w < warp) before += s->u64[w];
    tot += s->u64[w];
  }
  *total = tot;
  return v + before;
}

// blk::radix_select's digit choice from a whole row's histogram H: the largest d >= 1 with
// acc + (weight of digits >= d) >= need, else 0; *above = acc + weight of digits > d. Thread t holds
// digit 255 - t, so the inclusive scan gives each thread its digit's suffix sum; the condition holds
// for d <= some bound, and exactly one thread sees the bound (or, with none, digit 1's thread).
__device__ __forceinline__ void choose_digit(const unsigned long long* H, unsigned long long acc, unsigned long long need,
                                             Smem* s, uint32_t* digit, unsigned long long* above) {
  static_assert(kSliceThreads == 256, "one thread per digit");
  const int d = 255 - static_cast<int>(threadIdx.x);
  const unsigned long long h = H[d];
  unsigned long long tot;
  const unsigned long long suffix = scan(h, s, &tot);  // weight of digits >= d
  const bool holds = d >= 1 && acc + suffix >= need;
  const bool holds_next = d < 255 && acc + suffix - h >= need;  // digit d + 1's condition
  if (holds && !holds_next) s->digit = static_cast<uint32_t>(d), s->above = acc + suffix - h;
  if (d == 1 && !holds) s->digit = 0, s->above = acc + suffix;
  __syncthreads();
  *digit = s->digit;
  *above = s->above;
  __syncthreads();
}

}  // namespace slices

// 1. The max of x / T over each slice.
template <typename T>
__global__ void __launch_bounds__(kSliceThreads) logits_max_slices_kernel(const T* __restrict__ logits, int V, float temperature,
                                                                         SliceScratch sc) {
  __shared__ slices::Smem s;
  const int S = argmax_slices(V), sl = blockIdx.y;
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  float m = -INFINITY;
  for (int i = slice_begin(sl) + static_cast<int>(threadIdx.x); i < slice_end(V, sl); i += kSliceThreads)
    m = fmaxf(m, to_f32(x[i]) / temperature);
  m = slices::reduce(m, blk::MaxF32(), s.f32);
  if (threadIdx.x == 0) sc.part_max[row * S + sl] = m;
}

__device__ __forceinline__ float row_max(const float* part, int S) {
  float m = -INFINITY;
  for (int k = 0; k < S; ++k) m = fmaxf(m, part[k]);
  return m;
}

// 2. Each slice's sum of exp(x / T - m) (the order above).
template <typename T>
__global__ void __launch_bounds__(kSliceThreads) logits_expsum_slices_kernel(const T* __restrict__ logits, int V, float temperature,
                                                                            SliceScratch sc) {
  __shared__ double zw[kSliceWarps];
  const int S = argmax_slices(V), sl = blockIdx.y;
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  const float m = row_max(sc.part_max + row * S, S);
  const double w = exp_sum_warp([&](int i) { return to_f32(x[i]) / temperature; }, m, slice_begin(sl), slice_end(V, sl),
                                static_cast<int>(threadIdx.x));
  if ((threadIdx.x & 31) == 0) zw[threadIdx.x >> 5] = w;
  __syncthreads();
  if (threadIdx.x == 0) sc.part_z[row * S + sl] = slice_sum_of_warps(zw);
}

// 3. p = exp(x / T - m) / z, each slice's max of p, and (no filter to come) its quantised mass.
template <typename T>
__global__ void __launch_bounds__(kSliceThreads) logits_probs_slices_kernel(const T* __restrict__ logits, float* __restrict__ probs,
                                                                           int V, float temperature, bool mass_here,
                                                                           SliceScratch sc) {
  __shared__ slices::Smem s;
  const int S = argmax_slices(V), sl = blockIdx.y;
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  float* p = probs + row * V;
  const float m = row_max(sc.part_max + row * S, S);
  double z = 0.0;
  for (int k = 0; k < S; ++k) z += sc.part_z[row * S + k];
  const float inv_z = static_cast<float>(1.0 / z);
  float pmax = 0.0f;
  unsigned long long mass = 0;
  for (int i = slice_begin(sl) + static_cast<int>(threadIdx.x); i < slice_end(V, sl); i += kSliceThreads) {
    const float v = expf(to_f32(x[i]) / temperature - m) * inv_z;
    p[i] = v;
    pmax = fmaxf(pmax, v);
    if (mass_here) mass += sm::quantize_prob(v);
  }
  pmax = slices::reduce(pmax, blk::MaxF32(), s.f32);
  if (mass_here) mass = slices::reduce(mass, blk::SumU64(), s.u64);
  if (threadIdx.x == 0) {
    sc.part_pmax[row * S + sl] = pmax;
    if (mass_here) sc.part_mass[row * S + sl] = mass;
  }
}

// The top-k (kTopP false: every key weighs 1, need = k) or top-p (weights = quantised p after
// top-k, need = ceil(total * top_p)) select of a row. Returns false when top-p keeps everything
// (need outside [1, total]: the block kernel skips the select then).
template <bool kTopP>
__device__ __forceinline__ bool select_need(const SliceScratch& sc, int64_t row, int top_k, float top_p, unsigned long long* need) {
  if (!kTopP) {
    *need = static_cast<unsigned long long>(top_k);
    return true;
  }
  const unsigned long long total = sc.total[row];
  *need = static_cast<unsigned long long>(ceil(static_cast<double>(total) * static_cast<double>(top_p)));
  return *need > 0 && *need <= total;
}

// 4. Radix pass `pass` (0..3, most significant digit first): take the previous pass's digit from
// the row's histogram (every block of the row alike; slice 0 records the state), then add this
// slice's histogram of the next digit to the row's. Top-p's first pass also sums the row's weights.
template <typename T, bool kTopP>
__global__ void __launch_bounds__(kSliceThreads) logits_radix_slices_kernel(const T* __restrict__ logits, const float* __restrict__ probs,
                                                                           int V, float temperature, int top_k, float top_p,
                                                                           int pass, SliceScratch sc) {
  __shared__ slices::Smem s;
  const int sl = blockIdx.y;
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  const float* p = probs + row * V;
  unsigned long long* H = sc.select_hist(row, kTopP);
  unsigned long long* st = sc.select_state(row, kTopP);
  uint32_t prefix = 0, mask = 0;
  if (pass > 0) {
    unsigned long long need;
    if (!select_need<kTopP>(sc, row, top_k, top_p, &need)) return;
    const uint32_t prev_prefix = pass > 1 ? static_cast<uint32_t>(st[(pass - 1) * 2]) : 0u;
    const unsigned long long prev_above = pass > 1 ? st[(pass - 1) * 2 + 1] : 0ull;
    uint32_t digit;
    unsigned long long above;
    slices::choose_digit(H + (pass - 1) * 256, prev_above, need, &s, &digit, &above);
    prefix = prev_prefix | (digit << (24 - 8 * (pass - 1)));
    mask = 0xffffffffu << (32 - 8 * pass);
    if (sl == 0 && threadIdx.x == 0) st[pass * 2] = prefix, st[pass * 2 + 1] = above;
  }
  const int shift = 24 - 8 * pass;
  for (int b = threadIdx.x; b < 256; b += kSliceThreads) s.hist[b] = 0;
  __syncthreads();
  // As blk::radix_select: lanes with the same bin add as one (logits share a few exponents).
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned long long sum_w = 0;
  for (int base = slice_begin(sl); base < slice_end(V, sl); base += kSliceThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    uint32_t k = 0;
    unsigned long long w = 0;
    if (i < slice_end(V, sl)) {
      k = sm::float_key(to_f32(x[i]) / temperature);
      w = kTopP ? sm::quantize_prob(p[i]) : 1ull;
    }
    sum_w += w;
    const bool hit = w != 0 && (k & mask) == prefix;
    const uint32_t bin = hit ? (k >> shift) & 255u : 256u;
    const unsigned peers = __match_any_sync(blk::kFull, bin);
    s.stage[warp][lane] = w;
    __syncwarp();
    if (hit && (peers & ((1u << lane) - 1u)) == 0) {
      unsigned long long g = 0;
      for (unsigned q = peers; q != 0; q &= q - 1) g += s.stage[warp][__ffs(static_cast<int>(q)) - 1];
      atomicAdd(&s.hist[bin], g);
    }
    __syncwarp();
  }
  __syncthreads();
  for (int b = threadIdx.x; b < 256; b += kSliceThreads)
    if (s.hist[b] != 0) atomicAdd(&H[pass * 256 + b], s.hist[b]);
  if (kTopP && pass == 0) {
    sum_w = slices::reduce(sum_w, blk::SumU64(), s.u64);
    if (threadIdx.x == 0 && sum_w != 0) atomicAdd(&sc.total[row], sum_w);
  }
}

// 5. The select's last digit (the boundary key and the weight above it; slice 0 records them), and
// each slice's count of boundary ties (top-p: ties that still have mass, and their largest weight).
template <typename T, bool kTopP>
__global__ void __launch_bounds__(kSliceThreads) logits_ties_slices_kernel(const T* __restrict__ logits, const float* __restrict__ probs,
                                                                          int V, float temperature, int top_k, float top_p,
                                                                          SliceScratch sc) {
  __shared__ slices::Smem s;
  const int S = argmax_slices(V), sl = blockIdx.y;
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  const float* p = probs + row * V;
  unsigned long long* H = sc.select_hist(row, kTopP);
  unsigned long long* st = sc.select_state(row, kTopP);
  unsigned long long need;
  if (!select_need<kTopP>(sc, row, top_k, top_p, &need)) return;
  uint32_t digit;
  unsigned long long above;
  slices::choose_digit(H + 3 * 256, st[3 * 2 + 1], need, &s, &digit, &above);
  const uint32_t key = static_cast<uint32_t>(st[3 * 2]) | digit;
  if (sl == 0 && threadIdx.x == 0) st[4 * 2] = key, st[4 * 2 + 1] = above;
  unsigned long long ties = 0, wmax = 0;
  for (int i = slice_begin(sl) + static_cast<int>(threadIdx.x); i < slice_end(V, sl); i += kSliceThreads) {
    if (sm::float_key(to_f32(x[i]) / temperature) != key) continue;
    if (kTopP) {
      const unsigned long long w = sm::quantize_prob(p[i]);
      wmax = w > wmax ? w : wmax;
      if (p[i] > 0.0f) ++ties;
    } else {
      ++ties;
    }
  }
  ties = slices::reduce(ties, blk::SumU64(), s.u64);
  if (kTopP) wmax = slices::reduce(wmax, blk::MaxU64(), s.u64);
  if (threadIdx.x == 0) {
    sc.ties[row * S + sl] = ties;
    if (kTopP && wmax != 0) atomicMax(&sc.wt[row], wmax);
  }
}

// 6. Drop keys below the boundary, and boundary ties past the first `keep` in index order (the
// ties of earlier slices counted first).
template <typename T, bool kTopP>
__global__ void __launch_bounds__(kSliceThreads) logits_trim_slices_kernel(const T* __restrict__ logits, float* __restrict__ probs,
                                                                          int V, float temperature, int top_k, float top_p,
                                                                          SliceScratch sc) {
  __shared__ slices::Smem s;
  const int S = argmax_slices(V), sl = blockIdx.y;
  const int64_t row = blockIdx.x;
  const T* x = logits + row * V;
  float* p = probs + row * V;
  const unsigned long long* st = sc.select_state(row, kTopP);
  unsigned long long need;
  if (!select_need<kTopP>(sc, row, top_k, top_p, &need)) return;
  const uint32_t key = static_cast<uint32_t>(st[4 * 2]);
  const unsigned long long above = st[4 * 2 + 1];
  unsigned long long keep;
  if (kTopP) {
    const unsigned long long wt = sc.wt[row];  // >= 1: the boundary key holds weight
    keep = (need - above + wt - 1) / wt;
  } else {
    keep = need - above;
  }
  unsigned long long carry = 0;
  for (int k = 0; k < sl; ++k) carry += sc.ties[row * S + k];
  for (int base = slice_begin(sl); base < slice_end(V, sl); base += kSliceThreads) {
    const int i = base + static_cast<int>(threadIdx.x);
    bool tie = false;
    if (i < slice_end(V, sl)) {
      const uint32_t k = sm::float_key(to_f32(x[i]) / temperature);
      if (k < key) p[i] = 0.0f;
      tie = k == key && (!kTopP || p[i] > 0.0f);
    }
    unsigned long long tot;
    const unsigned long long rank = carry + slices::scan(tie ? 1 : 0, &s, &tot);
    if (tie && rank > keep) p[i] = 0.0f;
    carry += tot;
  }
}

// 7. min-p against the row's max p (taken before the filters, as the block kernel), and each
// slice's quantised mass.
__global__ void __launch_bounds__(kSliceThreads) logits_mass_slices_kernel(float* __restrict__ probs, int V, float min_p,
                                                                          SliceScratch sc) {
  __shared__ slices::Smem s;
  const int S = argmax_slices(V), sl = blockIdx.y;
  const int64_t row = blockIdx.x;
  float* p = probs + row * V;
  float thr = 0.0f;
  if (min_p > 0.0f) {
    float pmax = 0.0f;
    for (int k = 0; k < S; ++k) pmax = fmaxf(pmax, sc.part_pmax[row * S + k]);
    thr = min_p * pmax;
  }
  unsigned long long mass = 0;
  for (int i = slice_begin(sl) + static_cast<int>(threadIdx.x); i < slice_end(V, sl); i += kSliceThreads) {
    if (min_p > 0.0f && p[i] < thr) p[i] = 0.0f;
    mass += sm::quantize_prob(p[i]);
  }
  mass = slices::reduce(mass, blk::SumU64(), s.u64);
  if (threadIdx.x == 0) sc.part_mass[row * S + sl] = mass;
}

// 8. Scale to the row's quantised mass.
__global__ void __launch_bounds__(kSliceThreads) logits_scale_slices_kernel(float* __restrict__ probs, int V, SliceScratch sc) {
  const int S = argmax_slices(V), sl = blockIdx.y;
  const int64_t row = blockIdx.x;
  float* p = probs + row * V;
  unsigned long long mass = 0;
  for (int k = 0; k < S; ++k) mass += sc.part_mass[row * S + k];
  const double scale = sm::kMassOne / static_cast<double>(mass);
  for (int i = slice_begin(sl) + static_cast<int>(threadIdx.x); i < slice_end(V, sl); i += kSliceThreads)
    p[i] = static_cast<float>(static_cast<double>(p[i]) * scale);
}

// Temperature 0: one-hot at the row's argmax (argmax_slices_kernel + argmax_combine_kernel).
__global__ void __launch_bounds__(kSliceThreads) one_hot_slices_kernel(float* __restrict__ probs, int V, const int32_t* __restrict__ am) {
  const int sl = blockIdx.y;
  const int64_t row = blockIdx.x;
  float* p = probs + row * V;
  const int a = am[row];
  for (int i = slice_begin(sl) + static_cast<int>(threadIdx.x); i < slice_end(V, sl); i += kSliceThreads) p[i] = i == a ? 1.0f : 0.0f;
}

}  // namespace sampling_kernels
}  // namespace cuda
}  // namespace specdec

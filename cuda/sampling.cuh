// CUDA kernels of logits processing, argmax, sampling and top-k (one thread block per row; logits
// processing, argmax and sampling also by vocabulary slices); the launchers are in sampling.cu. A
// header so that test/emu/ can run them on the host.
#pragma once
#include "../cpp/core/ops_sampling.h"
#include "argmax_slices.cuh"
#include "process_slices.cuh"
#include "sampling_block.cuh"

namespace specdec {
namespace cuda {
namespace sampling_kernels {

using blk::kBlock;

template <typename T>
__global__ void __launch_bounds__(kBlock) process_logits_kernel(const T* __restrict__ logits, float* __restrict__ probs,
                                                                int V, SamplingParams sp) {
  __shared__ blk::Smem s;
  const T* x = logits + static_cast<int64_t>(blockIdx.x) * V;
  float* p = probs + static_cast<int64_t>(blockIdx.x) * V;
  if (sp.temperature == 0.0f) {
    const int a = blk::block_argmax(V, [&](int i) { return to_f32(x[i]); }, &s);
    for (int i = threadIdx.x; i < V; i += kBlock) p[i] = i == a ? 1.0f : 0.0f;
    return;
  }
  const float T_ = sp.temperature;
  auto xt = [&](int i) { return to_f32(x[i]) / T_; };  // a division, as on the CPU
  float m = -INFINITY;
  for (int i = threadIdx.x; i < V; i += kBlock) m = fmaxf(m, xt(i));
  m = blk::block_reduce(m, blk::MaxF32(), s.f32);
  // The denominator in the order process_slices.cuh defines (two slices at a time, one per half of
  // the block), so the sliced path gives these bits.
  static_assert(kBlock == 2 * kSliceThreads, "a half block per slice");
  __shared__ double zw[2 * kSliceWarps];
  double z = 0.0;
  for (int s0 = 0; s0 < argmax_slices(V); s0 += 2) {
    const int half = static_cast<int>(threadIdx.x) / kSliceThreads, sl = s0 + half;
    const bool in = sl < argmax_slices(V);
    const double w = exp_sum_warp(xt, m, in ? slice_begin(sl) : V, in ? slice_end(V, sl) : V, static_cast<int>(threadIdx.x) % kSliceThreads);
    if ((threadIdx.x & 31) == 0) zw[threadIdx.x >> 5] = w;
    __syncthreads();
    z += slice_sum_of_warps(zw);
    if (s0 + 1 < argmax_slices(V)) z += slice_sum_of_warps(zw + kSliceWarps);
    __syncthreads();
  }
  const float inv_z = static_cast<float>(1.0 / z);
  float pmax = 0.0f;
  for (int i = threadIdx.x; i < V; i += kBlock) {
    const float v = expf(xt(i) - m) * inv_z;
    p[i] = v;
    pmax = fmaxf(pmax, v);
  }
  pmax = blk::block_reduce(pmax, blk::MaxF32(), s.f32);

  // top-k: the k largest keys; ties at the k-th key keep the lowest indices.
  if (sp.top_k > 0 && sp.top_k < V) {
    uint64_t above;
    const uint32_t kk = blk::radix_select(
        V, static_cast<uint64_t>(sp.top_k),
        [&](int i, uint32_t& k, uint64_t& w) { k = sm::float_key(xt(i)); w = 1; }, &s, &above);
    for (int i = threadIdx.x; i < V; i += kBlock)
      if (sm::float_key(xt(i)) < kk) p[i] = 0.0f;
    blk::trim_ties(
        V, static_cast<uint64_t>(sp.top_k) - above, [&](int i) { return sm::float_key(xt(i)) == kk; },
        [&](int i) { p[i] = 0.0f; }, &s);
  }
  // top-p over what top-k kept: the smallest prefix (key desc, index asc) with quantised mass >= need.
  if (sp.top_p < 1.0f) {
    uint64_t total = 0;
    for (int i = threadIdx.x; i < V; i += kBlock) total += sm::quantize_prob(p[i]);
    total = blk::block_reduce(total, blk::SumU64(), s.u64);
    const uint64_t need = static_cast<uint64_t>(ceil(static_cast<double>(total) * static_cast<double>(sp.top_p)));
    if (need > 0 && need <= total) {
      uint64_t above;
      const uint32_t kp = blk::radix_select(
          V, need, [&](int i, uint32_t& k, uint64_t& w) { k = sm::float_key(xt(i)); w = sm::quantize_prob(p[i]); }, &s,
          &above);
      // Kept ties at the boundary all carry the same weight (same key, same p).
      uint64_t wt = 0;
      for (int i = threadIdx.x; i < V; i += kBlock)
        if (sm::float_key(xt(i)) == kp) wt = max(wt, sm::quantize_prob(p[i]));
      wt = blk::block_reduce(wt, blk::MaxU64(), s.u64);
      const uint64_t keep = (need - above + wt - 1) / wt;
      for (int i = threadIdx.x; i < V; i += kBlock)
        if (sm::float_key(xt(i)) < kp) p[i] = 0.0f;
      blk::trim_ties(
          V, keep, [&](int i) { return sm::float_key(xt(i)) == kp && p[i] > 0.0f; }, [&](int i) { p[i] = 0.0f; }, &s);
    }
  }
  if (sp.min_p > 0.0f) {
    const float thr = sp.min_p * pmax;
    for (int i = threadIdx.x; i < V; i += kBlock)
      if (p[i] < thr) p[i] = 0.0f;
  }
  uint64_t mass = 0;
  for (int i = threadIdx.x; i < V; i += kBlock) mass += sm::quantize_prob(p[i]);
  mass = blk::block_reduce(mass, blk::SumU64(), s.u64);
  const double scale = sm::kMassOne / static_cast<double>(mass);
  for (int i = threadIdx.x; i < V; i += kBlock) p[i] = static_cast<float>(static_cast<double>(p[i]) * scale);
}

template <typename T>
__global__ void __launch_bounds__(kBlock) argmax_kernel(const T* __restrict__ logits, int32_t* __restrict__ out, int V) {
  __shared__ blk::Smem s;
  const T* x = logits + static_cast<int64_t>(blockIdx.x) * V;
  const int a = blk::block_argmax(V, [&](int i) { return to_f32(x[i]); }, &s);
  if (threadIdx.x == 0) out[blockIdx.x] = a;
}

// The argmax of each row from its slices' partials: a warp per row (4 rows a block); all NaN: 0, as
// block_argmax and the CPU.
constexpr int kCombineWarps = 4;
__global__ void __launch_bounds__(kCombineWarps * 32) argmax_combine_kernel(const float* __restrict__ part_v,
                                                                             const int32_t* __restrict__ part_i, int S,
                                                                             int64_t rows, int32_t* __restrict__ out) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kCombineWarps + threadIdx.x / 32;
  if (row >= rows) return;  // whole warps
  float bv = NAN;
  int32_t bi = 0x7fffffff;
  for (int s = threadIdx.x & 31; s < S; s += 32)
    if (sm::argmax_better(part_v[row * S + s], part_i[row * S + s], bv, bi)) bv = part_v[row * S + s], bi = part_i[row * S + s];
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(blk::kFull, bv, o);
    const int32_t oi = __shfl_xor_sync(blk::kFull, bi, o);
    if (sm::argmax_better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  if ((threadIdx.x & 31) == 0) out[row] = bi == 0x7fffffff ? 0 : bi;
}

__global__ void __launch_bounds__(kBlock) sample_kernel(const float* __restrict__ probs, const uint64_t* __restrict__ seeds,
                                                        const uint64_t* __restrict__ offsets, int32_t* __restrict__ out,
                                                        int V) {
  __shared__ blk::Smem s;
  const float* p = probs + static_cast<int64_t>(blockIdx.x) * V;
  uint64_t mass = 0;
  for (int i = threadIdx.x; i < V; i += kBlock) mass += sm::quantize_prob(p[i]);
  mass = blk::block_reduce(mass, blk::SumU64(), s.u64);
  const uint64_t bits = sm::random_u64(seeds[blockIdx.x], offsets[blockIdx.x], 0, sm::kDrawSampleOp);
  const int tok = blk::sample_select(V, sm::sample_threshold(bits, mass), [&](int i) { return sm::quantize_prob(p[i]); }, &s);
  if (threadIdx.x == 0) out[blockIdx.x] = tok;
}

// sample by vocabulary slices (a few rows of a large vocabulary): the quantised mass of every
// 4096-column slice of every row (exact integer sums: any order), then a block per row picks the slice
// that holds the threshold from those sums and scans only that slice. The token is sample_kernel's:
// the threshold is taken on the same total mass and the selection test is the same.
__global__ void __launch_bounds__(kSliceThreads) slice_mass_kernel(const float* __restrict__ probs, int V,
                                                                   uint64_t* __restrict__ slice_mass) {
  __shared__ uint64_t sw[kSliceThreads / 32];
  const int S = argmax_slices(V), slice = blockIdx.y;
  const float* p = probs + static_cast<int64_t>(blockIdx.x) * V;
  const int end = min(V, (slice + 1) * kSliceCols);
  uint64_t m = 0;
  for (int i = slice * kSliceCols + static_cast<int>(threadIdx.x); i < end; i += kSliceThreads) m += sm::quantize_prob(p[i]);
  for (int o = 16; o > 0; o >>= 1) m += __shfl_xor_sync(blk::kFull, m, o);
  if ((threadIdx.x & 31) == 0) sw[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint64_t t = 0;
    for (int w = 0; w < kSliceThreads / 32; ++w) t += sw[w];
    slice_mass[static_cast<int64_t>(blockIdx.x) * S + slice] = t;
  }
}

__global__ void __launch_bounds__(kBlock) sample_slices_kernel(const float* __restrict__ probs, const uint64_t* __restrict__ slice_mass,
                                                               const uint64_t* __restrict__ seeds, const uint64_t* __restrict__ offsets,
                                                               int32_t* __restrict__ out, int V) {
  __shared__ blk::Smem s;
  const int64_t row = blockIdx.x;
  const int S = argmax_slices(V);
  const uint64_t* m = slice_mass + row * S;
  uint64_t total = 0;
  for (int k = 0; k < S; ++k) total += m[k];
  const uint64_t bits = sm::random_u64(seeds[row], offsets[row], 0, sm::kDrawSampleOp);
  const uint64_t threshold = sm::sample_threshold(bits, total);
  int hit = -1;  // the slice holding the threshold (block-uniform); none when the row has no mass
  uint64_t before = 0;
  for (int k = 0; k < S && hit < 0; ++k) {
    if (sm::sample_hit(before, m[k], threshold)) hit = k;
    else before += m[k];
  }
  int tok = sm::kNoMass;
  if (hit >= 0) {
    const int c0 = hit * kSliceCols;
    const float* p = probs + row * V + c0;
    const int local = blk::sample_select(min(kSliceCols, V - c0), threshold - before, [&](int i) { return sm::quantize_prob(p[i]); }, &s);
    tok = local < 0 ? local : c0 + local;
  }
  if (threadIdx.x == 0) out[row] = tok;
}

// top-k: radix select the k-th key, gather the k winners (index order) into scratch, then place
// each at its rank (key desc, index asc; keys are distinct pairs, so ranks are a permutation).
template <typename T>
__global__ void __launch_bounds__(kBlock) top_k_kernel(const T* __restrict__ x_all, int V, int k, float* __restrict__ cand_v,
                                                       int32_t* __restrict__ cand_i, float* __restrict__ vals,
                                                       int32_t* __restrict__ ids) {
  __shared__ blk::Smem s;
  const int64_t row = blockIdx.x;
  const T* x = x_all + row * V;
  float* cv = cand_v + row * k;
  int32_t* ci = cand_i + row * k;
  uint64_t above;
  const uint32_t kk = blk::radix_select(
      V, static_cast<uint64_t>(k), [&](int i, uint32_t& key, uint64_t& w) { key = sm::float_key(to_f32(x[i])); w = 1; }, &s,
      &above);
  const uint64_t ties = static_cast<uint64_t>(k) - above;
  uint64_t carry = 0, tie_carry = 0;
  for (int base = 0; base < V; base += kBlock) {
    const int i = base + threadIdx.x;
    const uint32_t key = i < V ? sm::float_key(to_f32(x[i])) : 0;
    const bool tie = i < V && key == kk;
    uint64_t tie_tot, tot;
    const uint64_t tie_rank = tie_carry + blk::block_inclusive_scan(tie ? 1 : 0, &s, &tie_tot);
    const bool take = i < V && (key > kk || (tie && tie_rank <= ties));
    const uint64_t pos = carry + blk::block_inclusive_scan(take ? 1 : 0, &s, &tot) - (take ? 1 : 0);
    if (take) {
      cv[pos] = to_f32(x[i]);
      ci[pos] = i;
    }
    carry += tot;
    tie_carry += tie_tot;
  }
  __syncthreads();
  for (int j = threadIdx.x; j < k; j += kBlock) {
    const uint32_t kj = sm::float_key(cv[j]);
    const int32_t ij = ci[j];
    int rank = 0;
    for (int l = 0; l < k; ++l) {
      const uint32_t kl = sm::float_key(cv[l]);
      rank += (kl > kj || (kl == kj && ci[l] < ij)) ? 1 : 0;
    }
    vals[row * k + rank] = cv[j];
    ids[row * k + rank] = ij;
  }
}

// The sliced path's launches, written once for the launcher (sampling.cu) and the emulation:
// go(kernel, grid_x, grid_y, threads, args...) launches kernel on a grid_x x grid_y grid. The
// scratch's hist, total and wt must be zero.
template <typename T, typename Go>
void process_logits_slices(Go&& go, const T* logits, float* probs, int N, int V, const SamplingParams& sp, const SliceScratch& sc) {
  const unsigned n = static_cast<unsigned>(N), S = static_cast<unsigned>(argmax_slices(V)), B = kSliceThreads;
  const float T_ = sp.temperature;
  if (T_ == 0.0f) {
    go(argmax_slices_kernel<T>, n, S, B, logits, V, sc.part_max, sc.part_i);
    go(argmax_combine_kernel, static_cast<unsigned>((N + kCombineWarps - 1) / kCombineWarps), 1u,
       static_cast<unsigned>(kCombineWarps * 32), static_cast<const float*>(sc.part_max), static_cast<const int32_t*>(sc.part_i),
       static_cast<int>(S), static_cast<int64_t>(N), sc.am);
    go(one_hot_slices_kernel, n, S, B, probs, V, static_cast<const int32_t*>(sc.am));
    return;
  }
  const bool top_k = sp.top_k > 0 && sp.top_k < V, top_p = sp.top_p < 1.0f, min_p = sp.min_p > 0.0f;
  const bool mass_here = !top_k && !top_p && !min_p;
  go(logits_max_slices_kernel<T>, n, S, B, logits, V, T_, sc);
  go(logits_expsum_slices_kernel<T>, n, S, B, logits, V, T_, sc);
  go(logits_probs_slices_kernel<T>, n, S, B, logits, probs, V, T_, mass_here, sc);
  if (top_k) {
    for (int pass = 0; pass < 4; ++pass)
      go(logits_radix_slices_kernel<T, false>, n, S, B, logits, static_cast<const float*>(probs), V, T_, sp.top_k, sp.top_p, pass, sc);
    go(logits_ties_slices_kernel<T, false>, n, S, B, logits, static_cast<const float*>(probs), V, T_, sp.top_k, sp.top_p, sc);
    go(logits_trim_slices_kernel<T, false>, n, S, B, logits, probs, V, T_, sp.top_k, sp.top_p, sc);
  }
  if (top_p) {
    for (int pass = 0; pass < 4; ++pass)
      go(logits_radix_slices_kernel<T, true>, n, S, B, logits, static_cast<const float*>(probs), V, T_, sp.top_k, sp.top_p, pass, sc);
    go(logits_ties_slices_kernel<T, true>, n, S, B, logits, static_cast<const float*>(probs), V, T_, sp.top_k, sp.top_p, sc);
    go(logits_trim_slices_kernel<T, true>, n, S, B, logits, probs, V, T_, sp.top_k, sp.top_p, sc);
  }
  if (!mass_here) go(logits_mass_slices_kernel, n, S, B, probs, V, sp.min_p, sc);
  go(logits_scale_slices_kernel, n, S, B, probs, V, sc);
}

// Penalties (ops::penalize): one block per row; its threads add the logit bias, then (after a
// barrier: a biased token may be in the history) take the history's entries, then the path's tokens
// the history lacks: each distinct token is written by one thread (the CPU's values: the same f32
// sum, then sm::penalized_logit with the same counts); last (after another barrier, with bans at
// all) the row's banned tokens at -inf when its path is shorter than its sequence's ban_before.
// path_source null: path_tokens are the tokens; else indices into path_source (a chain's picks), and
// a token read outside the vocabulary there is skipped.
__global__ void __launch_bounds__(kBlock) penalize_kernel(float* __restrict__ logits, int64_t V, const int32_t* __restrict__ row_seq,
                                                          const int32_t* __restrict__ hist_indptr, const int32_t* __restrict__ hist_tokens,
                                                          const int32_t* __restrict__ hist_counts, const int32_t* __restrict__ path_indptr,
                                                          const int32_t* __restrict__ path_tokens, const int32_t* __restrict__ path_source,
                                                          const int32_t* __restrict__ bias_tokens, const float* __restrict__ bias_values,
                                                          int32_t bias_n, const int32_t* __restrict__ ban_indptr, const int32_t* __restrict__ ban_tokens,
                                                          const int32_t* __restrict__ ban_before, float repetition, float presence, float frequency) {
  const int64_t r = blockIdx.x;
  float* row = logits + r * V;
  for (int32_t i = static_cast<int32_t>(threadIdx.x); i < bias_n; i += static_cast<int32_t>(blockDim.x)) row[bias_tokens[i]] += bias_values[i];
  if (bias_n > 0) __syncthreads();
  const int32_t s = row_seq[r];
  const int32_t h0 = hist_indptr[s], hn = hist_indptr[s + 1] - h0;
  const int32_t p0 = path_indptr[r], pn = path_indptr[r + 1] - p0;
  const int32_t* hist = hist_tokens + h0;
  const int32_t* counts = hist_counts + h0;
  const auto path = [=](int32_t j) { return path_source ? path_source[path_tokens[p0 + j]] : path_tokens[p0 + j]; };
  for (int32_t j = static_cast<int32_t>(threadIdx.x); j < hn; j += static_cast<int32_t>(blockDim.x)) {
    const int32_t t = hist[j];
    row[t] = sm::penalized_logit(row[t], counts[j] + sm::path_count(path, pn, t), repetition, presence, frequency);
  }
  for (int32_t j = static_cast<int32_t>(threadIdx.x); j < pn; j += static_cast<int32_t>(blockDim.x)) {
    const int32_t t = path(j);
    if (t >= 0 && t < V && sm::first_in_path(path, j) && !sm::in_history(hist, hn, t))
      row[t] = sm::penalized_logit(row[t], sm::path_count(path, pn, t), repetition, presence, frequency);
  }
  if (ban_indptr) {  // (null for every block of a launch alike: the barrier is uniform)
    __syncthreads();
    if (pn < ban_before[s])
      for (int32_t j = ban_indptr[s] + static_cast<int32_t>(threadIdx.x); j < ban_indptr[s + 1]; j += static_cast<int32_t>(blockDim.x)) row[ban_tokens[j]] = -INFINITY;
  }
}

// A constraint's mask (ops::mask_tokens): one block per entry m; row rows[m] keeps token t where bit
// t % 32 of allowed[m * W + t / 32] is set, -inf elsewhere (each thread a strided set of tokens).
__global__ void __launch_bounds__(kBlock) mask_tokens_kernel(float* __restrict__ logits, int64_t V, const int32_t* __restrict__ rows,
                                                             const uint32_t* __restrict__ allowed, int64_t W) {
  float* row = logits + int64_t{rows[blockIdx.x]} * V;
  const uint32_t* bits = allowed + int64_t{blockIdx.x} * W;
  for (int64_t t = threadIdx.x; t < V; t += blockDim.x)
    if (((bits[t >> 5] >> (t & 31)) & 1u) == 0) row[t] = -INFINITY;
}

// Log-probabilities (ops::token_logprobs): one block per entry m; the row's largest entry and its
// log-sum-exp (double lanes, sm::lse_add), the token's log p, then the k largest entries, one
// round each: the largest rank (sm::rank_key) below the previous round's. by_row (ops::pick_logprobs):
// entry m's token and outputs sit at index rows[m] rather than m; a token outside the vocabulary
// (a draw without mass) gets NaN.
__global__ void __launch_bounds__(kBlock) token_logprobs_kernel(const float* __restrict__ logits, int64_t V, const int32_t* __restrict__ rows,
                                                                const int32_t* __restrict__ tokens, int k, float* __restrict__ lp,
                                                                float* __restrict__ top_lp, int32_t* __restrict__ top_ids, bool by_row) {
  __shared__ blk::Smem s;
  const int64_t r = rows[blockIdx.x];
  const int64_t m = by_row ? r : static_cast<int64_t>(blockIdx.x);
  const float* row = logits + r * V;
  float mx = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += kBlock) mx = fmaxf(mx, row[i]);
  mx = blk::block_reduce(mx, blk::MaxF32(), s.f32);
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < V; i += kBlock) sum = sm::lse_add(sum, row[i], mx);
  const double lse = sm::lse_finish(blk::block_reduce(sum, blk::SumF64(), s.f64), mx);
  if (threadIdx.x == 0) lp[m] = tokens[m] >= 0 && tokens[m] < V ? sm::logprob_of(row[tokens[m]], lse) : NAN;
  uint64_t prev = ~0ull;
  for (int j = 0; j < k; ++j) {
    uint64_t best = 0;  // below every element's rank (the index part of a rank is never 0 for V < 2^32 - 1)
    for (int64_t i = threadIdx.x; i < V; i += kBlock) {
      const uint64_t r = sm::rank_key(row[i], i);
      if (r < prev && r > best) best = r;
    }
    prev = blk::block_reduce(best, blk::MaxU64(), s.u64);
    if (threadIdx.x == 0) {
      const int64_t i = sm::rank_index(prev);
      top_ids[m * k + j] = static_cast<int32_t>(i);
      top_lp[m * k + j] = sm::logprob_of(row[i], lse);
    }
  }
}

}  // namespace sampling_kernels
}  // namespace cuda
}  // namespace specdec

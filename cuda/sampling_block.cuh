// Block-cooperative row primitives for sampling and verification: one thread block owns one row
// (or one sequence) and its threads stride over the vocabulary. Reductions use a fixed tree per
// block size, so a row's result never depends on other rows (batch invariance); integer sums make
// masses exact. Every primitive starts with __syncthreads() so shared scratch can be reused and
// every thread returns the same (block-uniform) value.
#pragma once
#include <cmath>
#include <cstdint>

#include "../cpp/core/spec_math.h"
#include "device.cuh"

namespace specdec {
namespace cuda {
namespace blk {

constexpr int kBlock = 512;
constexpr int kWarps = kBlock / 32;
constexpr unsigned kFull = 0xffffffffu;

// Shared scratch used by the primitives below (one per block).
struct Smem {
  unsigned long long hist[256];
  uint64_t stage[kWarps][32];  // per-warp staging for histogram aggregation
  uint64_t u64[kWarps];
  double f64[kWarps];
  float f32[kWarps];
  int i32[kWarps];
  uint32_t digit;
  uint64_t above;
  int found;
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Reduction of one value per thread; every thread gets the result (same order for all: deterministic).
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r = op(r, scratch[w]);
  return r;
}

struct SumU64 {
  __device__ uint64_t operator()(uint64_t a, uint64_t b) const { return a + b; }
};
struct SumF32 {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct SumF64 {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct MaxF32 {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MaxU64 {
  __device__ uint64_t operator()(uint64_t a, uint64_t b) const { return a > b ? a : b; }
};

// Inclusive prefix sum over the block in thread order; *total = the block's sum.
__device__ __forceinline__ uint64_t block_inclusive_scan(uint64_t v, Smem* s, uint64_t* total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 1; o < 32; o <<= 1) {
    uint64_t n = __shfl_up_sync(kFull, v, o);
    if (lane >= o) v += n;
  }
  __syncthreads();
  if (lane == 31) s->u64[warp] = v;
  __syncthreads();
  uint64_t before = 0, tot = 0;
  for (int w = 0; w < kWarps; ++w) {
    uint64_t x = s->u64[w];
    if (w < warp) before += x;
    tot += x;
  }
  *total = tot;
  return v + before;
}

// Argmax (lowest index on ties, NaN never wins) of f(i) over [0, V).
template <typename F>
__device__ int block_argmax(int V, F f, Smem* s) {
  float bv = NAN;
  int bi = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += kBlock) {
    float v = f(i);
    if (sm::argmax_better(v, i, bv, bi)) { bv = v; bi = i; }
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(kFull, bv, o);
    int oi = __shfl_xor_sync(kFull, bi, o);
    if (sm::argmax_better(ov, oi, bv, bi)) { bv = ov; bi = oi; }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) {
    s->f32[warp] = bv;
    s->i32[warp] = bi;
  }
  __syncthreads();
  bv = s->f32[0];
  bi = s->i32[0];
  for (int w = 1; w < kWarps; ++w)
    if (sm::argmax_better(s->f32[w], s->i32[w], bv, bi)) { bv = s->f32[w]; bi = s->i32[w]; }
  return bi == 0x7fffffff ? 0 : bi;  // all NaN: index 0, as on the CPU
}

// Radix select (8-bit digits, most significant first): the largest key K such that the weight of
// the elements with key >= K is >= need (1 <= need <= total weight). kw(i, key&, w&) gives element
// i's ordered key and weight (0 = not a candidate). Returns K; *above = weight of keys > K.
template <typename KW>
__device__ uint32_t radix_select(int V, uint64_t need, KW kw, Smem* s, uint64_t* above) {
  uint32_t prefix = 0, mask = 0;
  uint64_t acc = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += kBlock) s->hist[b] = 0;
    __syncthreads();
    // Logits share a few exponents, so most keys fall into the same bins on the first pass: lanes
    // with the same bin are grouped (match_any) and only the group's lowest lane adds the group's sum,
    // which avoids 32-way same-address atomics. The loop bound is block-uniform, so every lane of a
    // warp takes part in each match.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int base = 0; base < V; base += kBlock) {
      const int i = base + threadIdx.x;
      uint32_t k = 0;
      uint64_t w = 0;
      if (i < V) kw(i, k, w);
      const bool hit = w != 0 && (k & mask) == prefix;
      const uint32_t bin = hit ? (k >> shift) & 255u : 256u;
      const unsigned peers = __match_any_sync(kFull, bin);
      s->stage[warp][lane] = w;
      __syncwarp();
      if (hit && (peers & ((1u << lane) - 1u)) == 0) {
        uint64_t sum = 0;
        for (unsigned m = peers; m != 0; m &= m - 1) sum += s->stage[warp][__ffs(static_cast<int>(m)) - 1];
        atomicAdd(&s->hist[bin], static_cast<unsigned long long>(sum));
      }
      __syncwarp();
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t cum = acc;
      int d = 255;
      for (; d > 0; --d) {
        if (cum + s->hist[d] >= need) break;
        cum += s->hist[d];
      }
      s->digit = static_cast<uint32_t>(d);
      s->above = cum;
    }
    __syncthreads();
    prefix |= s->digit << shift;
    mask |= 255u << shift;
    acc = s->above;
  }
  *above = acc;
  return prefix;
}

// Among the elements with tie(i), keeps the first `keep` by index and calls drop(i) on the rest.
template <typename Tie, typename Drop>
__device__ void trim_ties(int V, uint64_t keep, Tie tie, Drop drop, Smem* s) {
  uint64_t carry = 0;
  for (int base = 0; base < V; base += kBlock) {
    const int i = base + threadIdx.x;
    const bool t = i < V && tie(i);
    uint64_t tot;
    const uint64_t rank = carry + block_inclusive_scan(t ? 1 : 0, s, &tot);
    if (t && rank > keep) drop(i);
    carry += tot;
  }
}

// Inverse-CDF selection over integer weights: the first i whose inclusive prefix exceeds
// `threshold` (sm::kNoMass when the total is <= threshold, i.e. no mass). Each thread owns kItems
// consecutive elements of a tile, so a row of 128k takes 32 block scans.
constexpr int kItems = 8;
template <typename W>
__device__ int sample_select(int V, uint64_t threshold, W weight, Smem* s) {
  __syncthreads();
  if (threadIdx.x == 0) s->found = sm::kNoMass;
  uint64_t carry = 0;
  for (int base = 0; base < V; base += kBlock * kItems) {
    const int i0 = base + threadIdx.x * kItems;
    uint64_t w[kItems], local = 0;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      w[j] = i0 + j < V ? weight(i0 + j) : 0;
      local += w[j];
    }
    uint64_t tot;
    uint64_t before = carry + block_inclusive_scan(local, s, &tot) - local;
    if (local > 0 && before <= threshold && threshold - before < local) {
#pragma unroll
      for (int j = 0; j < kItems; ++j) {
        if (sm::sample_hit(before, w[j], threshold)) s->found = i0 + j;
        before += w[j];
      }
    }
    __syncthreads();
    const int f = s->found;
    if (f >= 0) return f;
    carry += tot;
  }
  return sm::kNoMass;
}

}  // namespace blk
}  // namespace cuda
}  // namespace specdec

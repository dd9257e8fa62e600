// CPU matmul: out[N, M] = x[N, K] w[M, K]^T (+ bias), x f32, w and bias f32|f16|bf16: the model
// runner's linear layers. Arguments were validated by the dispatcher (cpp/core/ops_layers.cc).
//
// One reduction order for every output, every row count and every vector instruction set, so a
// row's result never depends on the batch (batch invariance) and every x86 CPU gives the same bits
// (bf16 weights on AMX tiles excepted: they have their own order, matmul_amx.h, batch invariant too;
// so are weights packed for the k-serial kernel, matmul_serial.h, which tiny models use):
//   1. sixteen partial sums: lane j accumulates fma(x[k], w[k], .) over k = j, j + 16, ... below
//      K16 = K - K % 16, in increasing k, starting from +0;
//   2. s = tree8(lanes 0..7) + tree8(lanes 8..15), tree8(a) = ((a0+a1)+(a2+a3))+((a4+a5)+(a6+a7));
//   3. s = fma(x[k], w[k], s) for k = K16 .. K-1 in order; then s + bias[m].
// The portable kernel (std::fma), AVX2 (two 8-lane registers per output, lanes in "pair order":
// see tile_avx2) and AVX-512 (one 16-lane register) implement exactly this; weights are converted
// to f32 exactly. Tiles, blocks and threads only decide who computes an output and from which copy
// of the weights.
//
// Work split: threads take equal ranges of weight rows (split_rows), in blocks of kBlockM rows.
// Within a block, rows of x go in groups that share every weight load (a tile: R rows of x by WR
// weight rows, as many accumulators as the registers hold), converting bf16/f16 weights to f32 in
// registers as they are loaded. The first group streams the block from memory (prefetching a later
// tile's rows into L2); further groups (trees, prefill) read the same block again from L2. Measured
// on the 2-core EPYC (Zen 4, one thread, 300M shapes): converting in registers for every group
// reached 73-88% of the FMA peak at 8-16 rows where converting each block once into an f32 buffer
// reached 44-68%, and was no slower at 64-256 rows; L1 prefetches (T0) of the streamed rows evicted
// the tile being read and held a DRAM-resident matrix to 9.6 GB/s, L2 prefetches (T1) reach 14-16
// GB/s.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "../core/ops_layers.h"
#include "matmul_amx.h"
#include "matmul_serial.h"
#include "simd.h"
#include "thread_pool.h"

namespace specdec {
namespace cpu {

namespace {

constexpr int kLanes = 16;
constexpr int64_t kBlockM = 48;  // a multiple of every tile width WR below

inline float tree8(const float* a) { return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])); }

// A buffer per thread for a block's weights as f32 (grown once, never freed: no allocation per
// call in the steady state).
float* pack_buffer(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// ---- portable --------------------------------------------------------------------------------

float dot_portable(const float* x, const float* w, int64_t K) {
  float acc[kLanes] = {};
  const int64_t K16 = K - K % kLanes;
  for (int64_t k = 0; k < K16; k += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] = std::fma(x[k + j], w[k + j], acc[j]);
  float s = tree8(acc) + tree8(acc + 8);
  for (int64_t k = K16; k < K; ++k) s = std::fma(x[k], w[k], s);
  return s;
}

void block_portable(const float* x, int64_t N, int64_t K, DType wdt, const void* w, int64_t m0, int64_t m1,
                    float* out, int64_t M) {
  const float* wb = static_cast<const float*>(w) + m0 * K;
  if (wdt != DType::f32) {
    float* buf = pack_buffer(static_cast<size_t>((m1 - m0) * K));
    simd::to_f32_row(wdt, w, m0 * K, (m1 - m0) * K, buf);
    wb = buf;
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = m0; m < m1; ++m) out[n * M + m] = dot_portable(x + n * K, wb + (m - m0) * K, K);
}

#ifdef SPECDEC_CPU_X86_SIMD
using simd::load1;
using simd::load16;
using simd::load8;

// Step 3 of the order for the tile's outputs, and the store.
template <int R, int WR, DType WT>
inline void finish_tile(const float* x, const void* w, int64_t K, int64_t K16, const float* sums, float* out,
                        int64_t ldo) {
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < WR; ++j) {
      float s = sums[r * WR + j];
      for (int64_t t = K16; t < K; ++t) s = std::fma(x[r * K + t], load1<WT>(w, j * K + t), s);
      out[r * ldo + j] = s;
    }
}

// Weights that stream from memory are read only WR rows at a time: too few
// streams to keep DRAM busy. So the tile also prefetches, a cache line at a time, the rows
// kPrefetchRows further on (a later tile's), which doubled small-N throughput on a 56 MB bf16
// matrix (2-core EPYC, AVX2 kernel).
constexpr int64_t kPrefetchRows = 16;

template <DType WT>
inline void prefetch_rows(const void* w, int WR, int64_t K, int64_t k, int64_t pf) {
  constexpr int64_t esz = WT == DType::f32 ? 4 : 2, kLine = 64 / esz;
  const char* ahead = static_cast<const char*>(w) + pf * K * esz;
  // prefetcht1: L2, see the top. As an asm statement: GCC 12 dropped _mm_prefetch here as dead
  // code, once with an early return instead of the `if`, once inlined into k_span.
  if (k % kLine == 0)
    for (int j = 0; j < WR; ++j) asm volatile("prefetcht1 %0" : : "m"(*(ahead + (j * K + k) * esz)));
}

// AVX2 in "pair order". Each output's 16 lanes are two registers: E holds lanes 0, 2, .., 14 and O
// lanes 1, 3, .., 15 (register lane i is lane 2i, resp. 2i + 1). A 16-bit weight pair (k, k + 1)
// is one 32-bit word, so 16 bf16 weights convert to E and O order with one shift and one mask, in
// place, where widening 8 weights to 8 lanes in order (vpmovzxwd, then a shift) cost a
// lane-crossing shuffle and a shift per 8 weights. x is given in the same order: every 16
// elements below K16 as [x0 x2 .. x14 x1 x3 .. x15] (pair_order_x), the tail as it is. Each lane
// still sums exactly the products of the contract, in the same order, and E + O is the first
// level of both tree8s (lane 2i + lane 2i+1), so the bits are those of the portable kernel.
// Measured on a 2-vCPU AMD EPYC (Zen 3, AVX2 only), one thread, bf16: 10-30% faster than in-order
// lanes at 1-16 rows (bench/README.md, 2026-12-03).

// The even (kOdd: odd) elements of [a | b] in order: shuffle 0x88 / 0xdd gives
// [a0 a2 b0 b2 | a4 a6 b4 b6] (odd: a1 a3 ..), then 64-bit blocks 0 2 1 3.
template <bool kOdd>
SPECDEC_AVX2 inline __m256 pair_split(__m256 a, __m256 b) {
  const __m256 h = kOdd ? _mm256_shuffle_ps(a, b, 0xdd) : _mm256_shuffle_ps(a, b, 0x88);
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(h), 0xd8));
}

// Elements i, i+2, .., i+14 (kOdd: i+1, .., i+15) of a weight row as f32 lanes. The two halves are
// loaded separately (the second load hits L1): holding both would take two more registers.
template <DType WT, bool kOdd, bool kMask>
SPECDEC_AVX2 inline __m256 load_half(const void* w, int64_t i) {
  if constexpr (WT == DType::bf16) {
    __m256i v;
    asm volatile("vmovdqu %1, %0" : "=x"(v) : "m"(*reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + i)));
    if constexpr (!kOdd) return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
    if constexpr (kMask) return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(v, 16), 16));
  } else {
    // f32 and f16 weights (rare here): gather the even or odd elements.
    return pair_split<kOdd>(load8<WT>(w, i), load8<WT>(w, i + 8));
  }
}

// An x vector in a register. (Left to itself GCC folds the x loads into the FMAs, once per weight
// row: up to 16 loads per 12 FMAs, and the loads, not the FMAs, bound the tile.)
SPECDEC_AVX2 inline __m256 load_x(const float* p) {
  __m256 v = _mm256_loadu_ps(p);
  asm("" : "+x"(v));
  return v;
}

// x rows [0, N) (stride K) into pair order (stride K): see above.
SPECDEC_AVX2 void pair_order_x(const float* x, int64_t N, int64_t K, float* dst) {
  const int64_t K16 = K - K % kLanes;
  for (int64_t n = 0; n < N; ++n) {
    const float* s = x + n * K;
    float* d = dst + n * K;
    for (int64_t k = 0; k < K16; k += kLanes) {
      const __m256 a = _mm256_loadu_ps(s + k), b = _mm256_loadu_ps(s + k + 8);
      _mm256_storeu_ps(d + k, pair_split<false>(a, b));
      _mm256_storeu_ps(d + k + 8, pair_split<true>(a, b));
    }
    for (int64_t k = K16; k < K; ++k) d[k] = s[k];
  }
}

// sums[i] = tree8(lanes 0-7) + tree8(lanes 8-15) of output i from its E and O registers: P = E + O
// is [l0+l1, l2+l3, .., l14+l15], and hsum4 of four P registers forms ((P0+P1)+(P2+P3)) +
// ((P4+P5)+(P6+P7)) for each. Fewer than four are padded with zeros (their lanes are dropped).
template <int T>
SPECDEC_AVX2 inline void pair_sums(const __m256* e, const __m256* o, float* sums) {
  constexpr int kFull = T / 4 * 4, kRest = T - kFull;
#pragma GCC unroll 8
  for (int i = 0; i < kFull; i += 4)
    _mm_storeu_ps(sums + i, simd::hsum4(_mm256_add_ps(e[i], o[i]), _mm256_add_ps(e[i + 1], o[i + 1]),
                                        _mm256_add_ps(e[i + 2], o[i + 2]), _mm256_add_ps(e[i + 3], o[i + 3])));
  if constexpr (kRest > 0) {
    __m256 p[4];
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) p[q] = q < kRest ? _mm256_add_ps(e[kFull + q], o[kFull + q]) : _mm256_setzero_ps();
    alignas(16) float t[4];
    _mm_store_ps(t, simd::hsum4(p[0], p[1], p[2], p[3]));
#pragma GCC unroll 4
    for (int q = 0; q < kRest; ++q) sums[kFull + q] = t[q];
  }
}

// The K loop of an AVX2 tile over [k0, k1) (multiples of 16), on its E and O registers.
template <int R, int WR, DType WT, bool kStream>
SPECDEC_AVX2 inline __attribute__((always_inline)) void k_span(const float* x, const void* w, int64_t K, int64_t k0,
                                                               int64_t k1, __m256* e, __m256* o, int64_t pf) {
  if constexpr (R == 1 && WT == DType::bf16) {
    // One row of x: both halves of x stay in registers, and each weight word is loaded once;
    // the odd half's mask comes from memory (no register left for it).
    alignas(32) static const uint32_t kHigh[8] = {0xffff0000u, 0xffff0000u, 0xffff0000u, 0xffff0000u,
                                                 0xffff0000u, 0xffff0000u, 0xffff0000u, 0xffff0000u};
    for (int64_t k = k0; k < k1; k += kLanes) {
      if (kStream) prefetch_rows<WT>(w, WR, K, k, pf);
      const __m256 xe = load_x(x + k), xo = load_x(x + k + 8);
      for (int j = 0; j < WR; ++j) {
        __m256i v, odd;
        asm volatile("vmovdqu %1, %0" : "=x"(v) : "m"(*reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(w) + j * K + k)));
        asm("vpand %2, %1, %0" : "=x"(odd) : "x"(v), "m"(*reinterpret_cast<const __m256i*>(kHigh)));
        e[j] = _mm256_fmadd_ps(xe, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), e[j]);
        o[j] = _mm256_fmadd_ps(xo, _mm256_castsi256_ps(odd), o[j]);
      }
    }
    return;
  }
  // The odd half's mask takes a register where 16 are enough (else two shifts).
  constexpr bool kMask = 2 * R * WR + R + 2 <= 16;
  for (int64_t k = k0; k < k1; k += kLanes) {
    if (kStream) prefetch_rows<WT>(w, WR, K, k, pf);
    __m256 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = load_x(x + r * K + k);
    for (int j = 0; j < WR; ++j) {
      const __m256 wv = load_half<WT, false, kMask>(w, j * K + k);
      for (int r = 0; r < R; ++r) e[r * WR + j] = _mm256_fmadd_ps(xv[r], wv, e[r * WR + j]);
    }
    for (int r = 0; r < R; ++r) xv[r] = load_x(x + r * K + k + 8);
    for (int j = 0; j < WR; ++j) {
      const __m256 wv = load_half<WT, true, kMask>(w, j * K + k);
      for (int r = 0; r < R; ++r) o[r * WR + j] = _mm256_fmadd_ps(xv[r], wv, o[r * WR + j]);
    }
  }
}

// R rows of x (pair order, stride K) against WR weight rows (stride K): out[r * ldo + j] = x[r] . w[j].
template <int R, int WR, DType WT, bool kStream>
SPECDEC_AVX2 void tile_avx2(const float* x, const void* w, int64_t K, float* out, int64_t ldo, int64_t pf) {
  __m256 e[R * WR], o[R * WR];
#pragma GCC unroll 16
  for (int i = 0; i < R * WR; ++i) e[i] = o[i] = _mm256_setzero_ps();
  const int64_t K16 = K - K % kLanes;
  k_span<R, WR, WT, kStream>(x, w, K, 0, K16, e, o, pf);
  float sums[R * WR];
  pair_sums<R * WR>(e, o, sums);
  finish_tile<R, WR, WT>(x, w, K, K16, sums, out, ldo);
}

// The end of a tile whose E and O registers are in acc (see tile_avx2_part).
template <int R, int WR, DType WT>
SPECDEC_AVX2 void finish_part(const float* x, const void* w, int64_t K, int64_t K16, const float* acc, float* out,
                              int64_t ldo) {
  __m256 e[R * WR], o[R * WR];
#pragma GCC unroll 16
  for (int i = 0; i < R * WR; ++i) {
    e[i] = _mm256_loadu_ps(acc + 16 * i);
    o[i] = _mm256_loadu_ps(acc + 16 * i + 8);
  }
  float sums[R * WR];
  pair_sums<R * WR>(e, o, sums);
  finish_tile<R, WR, WT>(x, w, K, K16, sums, out, ldo);
}

// tile_avx2 over k in [k0, k1) only, for long rows (see group_rows): the tile's E and O registers
// come from acc (zeroed before the first span) and go back to it, or, when last, are summed into
// out. (Choosing zeros or acc per register here, or summing the registers in a branch after the
// loop, made GCC keep a copy of every accumulator on the stack inside the K loop.)
template <int R, int WR, DType WT, bool kStream>
SPECDEC_AVX2 void tile_avx2_part(const float* x, const void* w, int64_t K, int64_t k0, int64_t k1, float* acc,
                                 bool last, float* out, int64_t ldo, int64_t pf) {
  __m256 e[R * WR], o[R * WR];
#pragma GCC unroll 16
  for (int i = 0; i < R * WR; ++i) {
    e[i] = _mm256_loadu_ps(acc + 16 * i);
    o[i] = _mm256_loadu_ps(acc + 16 * i + 8);
  }
  k_span<R, WR, WT, kStream>(x, w, K, k0, k1, e, o, pf);
#pragma GCC unroll 16
  for (int i = 0; i < R * WR; ++i) {
    _mm256_storeu_ps(acc + 16 * i, e[i]);
    _mm256_storeu_ps(acc + 16 * i + 8, o[i]);
  }
  if (last) finish_part<R, WR, WT>(x, w, K, k1, acc, out, ldo);
}

// One round on N registers, in place: v[i] = pair (v[2i], v[2i+1]) for i < ceil(N / 2) (a last
// odd register is paired with zeros). Unrolled with constant indices so that the registers stay
// registers.
template <int N>
SPECDEC_AVX512 inline __attribute__((always_inline)) void pair_round512(__m512* v, __m512i even, __m512i odd) {
#pragma GCC unroll 32
  for (int i = 0; i < (N + 1) / 2; ++i) {
    const __m512 a = v[2 * i], b = 2 * i + 1 < N ? v[2 * i + 1] : _mm512_setzero_ps();
    v[i] = _mm512_add_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
  }
}

// Step 2 for T registers of 16 lanes at once, in registers: four rounds each add the even lanes to
// the odd lanes of a pair of registers (a, b) -> [a0+a1, a2+a3, .., a14+a15, b0+b1, .., b14+b15].
// Lane pairs are always neighbours, so the rounds form tree8(lanes 0..7) + tree8(lanes 8..15) of
// every register, and lane i of result register q is register 16 q + i's sum. (Storing 16 lanes
// per output and adding them one register at a time cost about as much as the K loop itself at
// K = 128: half of a small model's matmul time.) Always inlined: as a call, the tile's accumulators
// must live in memory, and GCC stopped inlining it once a second tile shape used it (a trial
// f32-weight tile made the bf16 tiles 2.2x slower).
template <int T>
SPECDEC_AVX512 inline __attribute__((always_inline)) void lane_sums512(__m512* acc, float* sums) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  pair_round512<T>(acc, even, odd);
  pair_round512<(T + 1) / 2>(acc, even, odd);
  pair_round512<(T + 3) / 4>(acc, even, odd);
  pair_round512<(T + 7) / 8>(acc, even, odd);
#pragma GCC unroll 4
  for (int q = 0; q < (T + 15) / 16; ++q) _mm512_store_ps(sums + 16 * q, acc[q]);
}

// AVX-512: one register per output.
template <int R, int WR, DType WT, bool kStream>
SPECDEC_AVX512 void tile_avx512(const float* x, const void* w, int64_t K, float* out, int64_t ldo, int64_t pf) {
  __m512 acc[R * WR];
#pragma GCC unroll 32  // (as a loop, GCC zeroes the array in memory with rep stos: ~20% of a small tile)
  for (int i = 0; i < R * WR; ++i) acc[i] = _mm512_setzero_ps();
  const int64_t K16 = K - K % kLanes;
  for (int64_t k = 0; k < K16; k += kLanes) {
    if (kStream) prefetch_rows<WT>(w, WR, K, k, pf);
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_ps(x + r * K + k);
    for (int j = 0; j < WR; ++j) {
      const __m512 wv = load16<WT>(w, j * K + k);
      for (int r = 0; r < R; ++r) acc[r * WR + j] = _mm512_fmadd_ps(xv[r], wv, acc[r * WR + j]);
    }
  }
  alignas(64) float sums[(R * WR + 15) / 16 * 16];
  lane_sums512<R * WR>(acc, sums);
  finish_tile<R, WR, WT>(x, w, K, K16, sums, out, ldo);
}

// tile_avx512 over k in [k0, k1) only, for long rows (see group_rows): as tile_avx2_part, the
// accumulators come from acc (zeroed before the first span) and go back to it, or, when last, are
// summed into out. Each lane still adds its products in increasing k from +0: the same bits.
template <int R, int WR, DType WT, bool kStream>
SPECDEC_AVX512 void tile_avx512_part(const float* x, const void* w, int64_t K, int64_t k0, int64_t k1, float* acc,
                                     bool last, float* out, int64_t ldo, int64_t pf) {
  __m512 a[R * WR];
#pragma GCC unroll 32
  for (int i = 0; i < R * WR; ++i) a[i] = _mm512_loadu_ps(acc + 16 * i);
  for (int64_t k = k0; k < k1; k += kLanes) {
    if (kStream) prefetch_rows<WT>(w, WR, K, k, pf);
    __m512 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_ps(x + r * K + k);
    for (int j = 0; j < WR; ++j) {
      const __m512 wv = load16<WT>(w, j * K + k);
      for (int r = 0; r < R; ++r) a[r * WR + j] = _mm512_fmadd_ps(xv[r], wv, a[r * WR + j]);
    }
  }
  if (!last) {
#pragma GCC unroll 32
    for (int i = 0; i < R * WR; ++i) _mm512_storeu_ps(acc + 16 * i, a[i]);
    return;
  }
  alignas(64) float sums[(R * WR + 15) / 16 * 16];
  lane_sums512<R * WR>(a, sums);
  finish_tile<R, WR, WT>(x, w, K, k1, sums, out, ldo);
}

// Tile widths: as many weight rows as the registers hold next to R x vectors and one weight
// vector (AVX2: 16 ymm, two per output; AVX-512: 32 zmm). All divide kBlockM.
template <int R, bool kAvx512>
constexpr int tile_width() {
  if (kAvx512) return R == 1 ? 16 : R == 2 ? 12 : R == 3 ? 8 : R == 4 ? 6 : 4;
  return R == 1 ? 6 : R == 2 ? 3 : 2;
}

// R rows of x against weight rows [0, rows) of w: full tiles, then the remaining weight rows one
// at a time. (The drivers carry no target attribute: they only call the tiles, so the AVX2 path
// holds no AVX-512 instruction.)
// Long rows (K > 1.5 kSpanK), AVX2 and AVX-512: the group's x rows and a tile's weight rows
// together outgrow L1, so each tile read its x rows from L2. A group that reads the block again
// (not the first, which streams it from memory) goes over k in spans of kSpanK instead, every tile
// of the block per span (the x span stays in L1), each tile's accumulators (AVX2: E and O
// registers) kept in a per-thread buffer between spans: each lane still accumulates its products in
// increasing k, so the bits do not change. (The first group keeps whole rows: in spans, 48 strided
// row streams from DRAM ran at half the speed, 2-8 rows of K = 5632 against 23 MB of weights.)
// Measured on the 2-vCPU Zen 3, one thread, 2-16 rows: K = 2816 and 5632 went from ~50 to 57-64
// GFLOP/s with spans of 512 or 1024 alike. On the 2-vCPU Zen 5 (AVX-512, 48 KB L1), one thread, K =
// 2816: 147-150 -> 174-179 GFLOP/s at 16-512 rows; spans of 512 lost 10%, spans for the first group
// too lost 10-30% at 4-16 rows, and prefetching in the spans halved the rate.
constexpr int64_t kSpanK = 1024;

template <int R, int WR, DType WT, bool kStream, bool kAvx512>
void group_rows_spans(const float* x, const char* wb, int64_t K, int64_t K16, int64_t rows, float* out, int64_t ldo) {
  constexpr size_t esz = WT == DType::f32 ? 4 : 2;
  const int64_t full = rows / WR, rest = rows - full * WR;
  thread_local std::vector<float> accbuf;
  const size_t need = static_cast<size_t>(full * 16 * R * WR + rest * 16 * R);
  if (accbuf.size() < need) accbuf.resize(need);
  float* acc = accbuf.data();
  std::fill(acc, acc + need, 0.0f);
  for (int64_t k0 = 0; k0 < K16; k0 += kSpanK) {
    const int64_t k1 = std::min(K16, k0 + kSpanK);
    const bool last = k1 == K16;
    float* a = acc;
    int64_t m = 0;
    for (; m + WR <= rows; m += WR, a += 16 * R * WR) {
      const char* wm = wb + static_cast<size_t>(m * K) * esz;
      if constexpr (kAvx512) tile_avx512_part<R, WR, WT, kStream>(x, wm, K, k0, k1, a, last, out + m, ldo, 0);
      else tile_avx2_part<R, WR, WT, kStream>(x, wm, K, k0, k1, a, last, out + m, ldo, 0);
    }
    for (; m < rows; ++m, a += 16 * R) {
      const char* wm = wb + static_cast<size_t>(m * K) * esz;
      if constexpr (kAvx512) tile_avx512_part<R, 1, WT, kStream>(x, wm, K, k0, k1, a, last, out + m, ldo, 0);
      else tile_avx2_part<R, 1, WT, kStream>(x, wm, K, k0, k1, a, last, out + m, ldo, 0);
    }
  }
}

// Row group `pass` over the block (0: the first, which streams it from memory). The first prefetches
// kPrefetchRows ahead within the block; the second, which reads the block from L2, prefetches the
// next block (`next` rows on) at the same pace, so that the stream of the weights goes on while the
// later groups compute instead of waiting for the next block's first group; the others prefetch
// nothing.
template <int R, DType WT, bool kStream, bool kAvx512>
void group_rows(const float* x, const void* w, int64_t K, int64_t rows, float* out, int64_t ldo, int pass,
                int64_t next) {
  constexpr int WR = tile_width<R, kAvx512>();
  constexpr size_t esz = WT == DType::f32 ? 4 : 2;
  const char* wb = static_cast<const char*>(w);
  if constexpr (R >= 2) {
    const int64_t K16 = K - K % kLanes;
    if (pass > 0 && K16 > kSpanK + kSpanK / 2)
      return group_rows_spans<R, WR, WT, false, kAvx512>(x, wb, K, K16, rows, out, ldo);
  }
  if constexpr (kStream) {
    if (pass > 1 || (pass == 1 && next <= 0)) return group_rows<R, WT, false, kAvx512>(x, w, K, rows, out, ldo, pass, next);
  }
  const int64_t pf = pass == 0 ? kPrefetchRows : next;
  int64_t m = 0;
  for (; m + WR <= rows; m += WR) {
    const char* wm = wb + static_cast<size_t>(m * K) * esz;
    if constexpr (kAvx512) tile_avx512<R, WR, WT, kStream>(x, wm, K, out + m, ldo, pf);
    else tile_avx2<R, WR, WT, kStream>(x, wm, K, out + m, ldo, pf);
  }
  for (; m < rows; ++m) {
    const char* wm = wb + static_cast<size_t>(m * K) * esz;
    if constexpr (kAvx512) tile_avx512<R, 1, WT, kStream>(x, wm, K, out + m, ldo, pf);
    else tile_avx2<R, 1, WT, kStream>(x, wm, K, out + m, ldo, pf);
  }
}

// Largest row group: all of N when N <= this (one pass over the weights), else groups of
// kGroupRows and a last group of the rest.
template <bool kAvx512>
constexpr int64_t max_group() { return kAvx512 ? 6 : 3; }
template <bool kAvx512>
constexpr int64_t group_rows_n() { return kAvx512 ? 4 : 2; }

// All N rows of x against `rows` weight rows; the next block starts `next` rows on (0: none).
template <DType WT, bool kStream, bool kAvx512>
void all_rows(const float* x, int64_t N, const void* w, int64_t K, int64_t rows, float* out, int64_t M, int64_t next) {
  constexpr int64_t G = group_rows_n<kAvx512>();
  int64_t n = 0;
  int pass = 0;
  for (; N - n > max_group<kAvx512>(); n += G, ++pass)
    group_rows<G, WT, kStream, kAvx512>(x + n * K, w, K, rows, out + n * M, M, pass, next);
  const float* xr = x + n * K;
  float* o = out + n * M;
  switch (N - n) {
    case 1: return group_rows<1, WT, kStream, kAvx512>(xr, w, K, rows, o, M, pass, next);
    case 2: return group_rows<2, WT, kStream, kAvx512>(xr, w, K, rows, o, M, pass, next);
    case 3: return group_rows<3, WT, kStream, kAvx512>(xr, w, K, rows, o, M, pass, next);
    default: break;
  }
  if constexpr (kAvx512) {
    switch (N - n) {
      case 4: return group_rows<4, WT, kStream, kAvx512>(xr, w, K, rows, o, M, pass, next);
      case 5: return group_rows<5, WT, kStream, kAvx512>(xr, w, K, rows, o, M, pass, next);
      case 6: return group_rows<6, WT, kStream, kAvx512>(xr, w, K, rows, o, M, pass, next);
      default: break;
    }
  }
}

// Weight rows [m0, m1) for all N rows of x. When several row groups pass over the block and a
// block of kBlockM rows would not stay in L2 (very long rows), it goes in halves (24 rows: a
// multiple of every multi-row tile width).
template <bool kAvx512>
void block_simd(const float* x, int64_t N, int64_t K, DType wdt, const void* w, int64_t m0, int64_t m1, float* out,
                int64_t M, bool more) {
  const int64_t esz = wdt == DType::f32 ? 4 : 2;
  const int64_t step = N > max_group<kAvx512>() && kBlockM * K * esz > (int64_t{512} << 10) ? kBlockM / 2 : kBlockM;
  for (int64_t a = m0; a < m1; a += step) {
    const int64_t b = std::min(m1, a + step), rows = b - a;
    // The next block of this thread's rows, if any (it starts `rows` on).
    const int64_t next = b < m1 || more ? rows : 0;
    float* o = out + a;
    if (wdt == DType::f32) all_rows<DType::f32, true, kAvx512>(x, N, static_cast<const float*>(w) + a * K, K, rows, o, M, next);
    else if (wdt == DType::f16) all_rows<DType::f16, true, kAvx512>(x, N, static_cast<const uint16_t*>(w) + a * K, K, rows, o, M, next);
    else all_rows<DType::bf16, true, kAvx512>(x, N, static_cast<const uint16_t*>(w) + a * K, K, rows, o, M, next);
  }
}
#endif  // SPECDEC_CPU_X86_SIMD

}  // namespace

namespace {

// The x rows the kernels read: on AVX2 a copy in pair order (see tile_avx2; made once per call by
// the calling thread, which waits for the workers), else x itself; and, when bf16 weights go to the
// AMX tiles (matmul_amx.h), x's pieces packed as their B operand. The buffers are kept per thread
// up to kKeepFloats (decode and tree steps reuse them); a larger one (a long prefill) is freed
// after the call, so it never holds a second copy of a big activation.
class KernelX {
 public:
  // lanes: some weight of the call takes the lane kernel (else no pair-order copy is made).
  KernelX(const Tensor& x, bool amx, bool lanes = true) : p_(x.ptr<float>()), orig_(p_) {
#ifdef SPECDEC_CPU_X86_SIMD
    if (lanes && simd::isa() == simd::Isa::avx2) {
      const size_t n = static_cast<size_t>(x.size(0) * x.size(1));
      if (buf().size() < n) buf().resize(n);
      pair_order_x(p_, x.size(0), x.size(1), buf().data());
      p_ = buf().data();
    }
#endif
    if (amx) {
      amx_ = amx::pack_x(x.ptr<float>(), x.size(0), x.size(1));
      has_amx_ = true;
    }
  }
  ~KernelX() {
    if (buf().size() > kKeepFloats) std::vector<float>().swap(buf());
    if (has_amx_) amx::trim_pack(kKeepPackBytes);
  }
  KernelX(const KernelX&) = delete;
  KernelX& operator=(const KernelX&) = delete;
  const float* get() const { return p_; }
  // x as given (row-major, natural order): what the k-serial kernel reads.
  const float* orig() const { return orig_; }
  // The packed pieces, or null when no weight of the call goes to the tiles.
  const amx::PackedX* tiles() const { return has_amx_ ? &amx_ : nullptr; }

 private:
  static constexpr size_t kKeepFloats = size_t{1} << 18;  // 1 MB
  // The packed pieces take 6 bytes an x value, twice over (pieces, then tiles): 8 MB keeps a 64-row
  // tree's at K = 8192 (a 1B model's down projection), so trees never allocate them per call.
  static constexpr size_t kKeepPackBytes = size_t{8} << 20;
  static std::vector<float>& buf() {
    thread_local std::vector<float> b;
    return b;
  }
  const float* p_;
  const float* orig_;
  amx::PackedX amx_;
  bool has_amx_ = false;
};

// bf16 weights go to the AMX tiles when they are on (hardware, or emulated on request).
inline bool uses_amx(const Tensor& w) { return w.dtype() == DType::bf16 && amx::active(); }

// Weight rows [m0, m1) of one matmul, bias included: the unit of work of matmul and matmul_group.
// `more`: the same thread goes on with the rows after m1.
void run_block(const KernelX& kx, int64_t N, int64_t K, const Tensor& w, const SerialWeight* serial, const Tensor& bias,
               float* op, int64_t M, int64_t m0, int64_t m1, bool more) {
  const DType wdt = w.dtype();
  const void* wp = w.data();
  const float* xp = kx.get();
  if (serial) {
    serial_block(kx.orig(), N, *serial, m0, m1, op, M);
  } else if (wdt == DType::bf16 && kx.tiles()) {
    amx::block(*kx.tiles(), static_cast<const uint16_t*>(wp), M, m0, m1, op, M);
  } else {
#ifdef SPECDEC_CPU_X86_SIMD
    const simd::Isa isa = simd::isa();
    if (isa == simd::Isa::avx512) block_simd<true>(xp, N, K, wdt, wp, m0, m1, op, M, more);
    else if (isa == simd::Isa::avx2) block_simd<false>(xp, N, K, wdt, wp, m0, m1, op, M, more);
    else
#endif
      block_portable(xp, N, K, wdt, wp, m0, m1, op, M);
  }
  if (bias.defined()) {
    const void* bp = bias.data();
    const DType bdt = bias.dtype();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t m = m0; m < m1; ++m) op[n * M + m] += simd::elem_f32(bdt, bp, m);
  }
}

// A task of >= 128k multiply-adds outweighs handing it to a worker (the pool's own default grain).
// Was 32k, measured on a Zen 3/Zen 4 (where smaller or larger was no better); on a Zen 5, whose
// AVX-512 FMAs do a 32k task in well under a wakeup, the default target's 5-token forward took
// 156 us on the pool against 116 us on one thread; at 128k, 121 us (256k: 119 us).
constexpr double kMinTaskMacs = 131072.0;
constexpr size_t kMaxParts = 8;  // of matmul_group

// Weight rows that N rows of x take as whole tiles: every tile width of the row groups all_rows
// makes for N divides it, so a range of weight rows that starts at a multiple of it needs no
// one-row tiles before its end.
int64_t tile_unit(int64_t N) {
#ifdef SPECDEC_CPU_X86_SIMD
  if (simd::isa() == simd::Isa::avx512) {
    // All N rows when N <= max_group, else groups of G and a last group of the rest.
    constexpr int64_t kMax = max_group<true>(), G = group_rows_n<true>();
    static_assert(kMax == 6, "kWidth lists one width per group size up to max_group");
    constexpr int64_t kWidth[kMax + 1] = {0, tile_width<1, true>(), tile_width<2, true>(), tile_width<3, true>(),
                                          tile_width<4, true>(), tile_width<5, true>(), tile_width<6, true>()};
    if (N <= kMax) return kWidth[N];
    return std::lcm(kWidth[G], kWidth[N - G * ((N - kMax + G - 1) / G)]);
  }
#endif
  return 6;  // AVX2 tiles are 6, 3 or 2 rows wide; the portable kernel has no tiles
}

// Weight rows per block. kBlockM when the weights make >= 8 such blocks; smaller weights (a small
// model's projections: 64-384 rows) go in blocks of ~16 rows, a multiple of tile_unit (rows past
// the last full tile take one-row tiles, which cost more per weight). (Measured when threads took
// whole blocks, which split such weights into 2-3 uneven blocks, e.g. 48 + 48 + 32 on two
// threads.) Blocks only decide which thread computes a row: the bits do not depend on them.
int64_t block_rows(int64_t N, int64_t M) {
  if (M >= 8 * kBlockM) return kBlockM;
#ifdef SPECDEC_CPU_X86_SIMD
  if (simd::isa() == simd::Isa::avx512) {
    const int64_t unit = tile_unit(N);
    return (16 + unit - 1) / unit * unit;
  }
#endif
  // AVX2 tiles (6/3/2 wide) and the portable kernel. (AVX2 in blocks of ~16 rows, measured on a
  // 2-vCPU Zen 3: 5 rows of K = M = 128 gained, 2-6 rows of K = 384, M = 128 lost as much.)
  return kBlockM;
}

}  // namespace

namespace {

// The work split of a matmul of P parts (weights stacked part after part, rows [0, total)): up
// to 4 contiguous ranges of rows per pool thread, of equal size as far as tile units allow (each
// boundary a multiple of tile_unit from its part's first row) and of >= kMinTaskMacs each; a
// thread claims a range and computes it in blocks of bm rows (run_block). (Ranges of whole blocks
// left a thread with up to a range's worth more than the other: M = 1024 is 22 blocks of 48, 8
// ranges of 3 blocks but the last of 1, so one thread took 12 blocks and the other 10.)
// The split decides only who computes a row: the bits do not depend on it.
void split_rows(const KernelX& kx, int64_t N, int64_t K, const ops::MatmulPart* ps, size_t P) {
  int64_t first[kMaxParts + 1] = {0};  // part i's rows are [first[i], first[i + 1])
  for (size_t i = 0; i < P; ++i) first[i + 1] = first[i] + ps[i].w->size(0);
  const int64_t total = first[P];
  // On the AMX tiles, rows go in pairs of 16-row weight tiles; packed weights in whole panels
  // (a call's parts are all packed or all not, in practice: one layer's projections share K).
  const bool tiles = kx.tiles() != nullptr;
  bool serial = false;
  for (size_t i = 0; i < P; ++i) serial = serial || ps[i].serial != nullptr;
  const int64_t unit = serial ? SerialWeight::kPanel : tiles ? 16 : tile_unit(N);
  const int64_t bm = serial ? SerialWeight::kPanel : tiles ? 64 : block_rows(N, total);
  const double macs = static_cast<double>(N) * static_cast<double>(K) * static_cast<double>(total);
  const int64_t ranges = std::max<int64_t>(
      1, std::min<int64_t>({int64_t{4} * pool_threads(), static_cast<int64_t>(macs / kMinTaskMacs), total / unit}));
  // Range r's first row: r / ranges of the way, rounded down to a unit of its part.
  auto boundary = [&](int64_t r) -> int64_t {
    if (r >= ranges) return total;
    const int64_t t = total * r / ranges;
    size_t i = 0;
    while (t >= first[i + 1]) ++i;
    return first[i] + (t - first[i]) / unit * unit;
  };
  const auto ranges_from = [&](int64_t r0, int64_t r1) {
    const int64_t a = boundary(r0), b = boundary(r1);
    for (size_t i = 0; i < P; ++i) {
      const int64_t m0 = std::max(a, first[i]) - first[i], m1 = std::min(b, first[i + 1]) - first[i];
      const ops::MatmulPart& p = ps[i];
      const int64_t M = p.w->size(0);
      for (int64_t m = m0; m < m1; m += bm)
        run_block(kx, N, K, *p.w, p.serial, *p.bias, p.out->ptr<float>(), M, m, std::min(m1, m + bm), m + bm < m1);
    }
  };
  parallel_for(ranges, 1, ranges_from, macs);
}

}  // namespace

void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out) {
  const int64_t N = x.size(0), M = w.size(0);
  if (N == 0 || M == 0) return;
  const KernelX kx(x, uses_amx(w));
  const ops::MatmulPart part{&w, &bias, &out};
  split_rows(kx, N, x.size(1), &part, 1);
}

void matmul_serial(const Tensor& x, const Tensor& w, const SerialWeight& serial, const Tensor& bias, Tensor& out) {
  const int64_t N = x.size(0), M = w.size(0);
  if (N == 0 || M == 0) return;
  const KernelX kx(x, false, false);
  const ops::MatmulPart part{&w, &bias, &out, &serial};
  split_rows(kx, N, x.size(1), &part, 1);
}

void matmul_group(const Tensor& x, std::initializer_list<ops::MatmulPart> parts) {
  const int64_t N = x.size(0);
  if (N == 0) return;
  SPECDEC_CHECK(parts.size() <= kMaxParts, "E_ARG", "matmul_group: at most ", kMaxParts, " parts, got ",
                parts.size());
  bool amx = false, lanes = false;
  for (const ops::MatmulPart& p : parts) {
    amx = amx || (uses_amx(*p.w) && !p.serial);
    lanes = lanes || !p.serial;
  }
  const KernelX kx(x, amx, lanes);
  split_rows(kx, N, x.size(1), parts.begin(), parts.size());
}

}  // namespace cpu
}  // namespace specdec

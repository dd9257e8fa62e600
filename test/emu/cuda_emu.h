// Host stand-ins for the CUDA pieces a kernel header uses (cuda/gemm_tc.cuh, cuda/attention_tc.cuh, ...), so that its indexing,
// staging, bounds and synchronisation can run and be checked on a machine without a GPU.
//
// A block's threads are std::threads running concurrently; blocks run one after another.
// __syncthreads / __syncwarp are barriers, so a missing one shows up as a data race or a wrong
// result. A wmma fragment holds a whole 16x16 tile and lane 0 of the warp does the work of the
// warp-wide operations (the other lanes' fragments are never read); loads and stores check the
// alignment and leading-dimension rules the real ones have. The arithmetic (bf16 rounding, f32
// accumulation of exact bf16 products) follows the hardware's contract, not its exact adder.
#pragma once
#include <math.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline thread_local Dim3 threadIdx, blockIdx;
inline Dim3 blockDim, gridDim;

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace emu {

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "emulation: %s\n", what);
  std::abort();
}

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::vector<std::array<uint64_t, 32>> warp_slots;  // shuffle exchange, one slot per lane
// ldmatrix / mma.sync exchange: a lane's fragments, in two sets used alternately (each lane counts its
// calls; a warp's lanes make the same calls), so one barrier per call keeps a set from being refilled
// before every lane has read it: refilling needs the next call's barrier, which every reader reaches
// only after reading.
inline std::vector<std::array<std::array<std::array<uint32_t, 10>, 32>, 2>> warp_regs;
inline thread_local unsigned warp_regs_calls = 0;
inline unsigned char* dyn_smem = nullptr;

template <typename T>
T* dynamic_smem() {
  return reinterpret_cast<T*>(dyn_smem);
}

// cp.async (cuda_pipeline.h's primitives): a thread's copies are queued and land only when
// __pipeline_wait_prior lets their group complete. Reading a buffer before its wait therefore reads
// what was there before (a wrong result), and reading another thread's copies without a barrier after
// its wait is a data race (ThreadSanitizer).
struct PendingCopy {
  void* dst;
  const void* src;
  size_t bytes;
};
inline thread_local std::vector<PendingCopy> copies_open;                  // since the last commit
inline thread_local std::vector<std::vector<PendingCopy>> copy_groups;    // committed, oldest first

// Runs kernel() once per thread of every block of the grid: one std::thread per thread of a block,
// which walks the blocks in order, with a barrier between blocks (shared memory is reused).
// Dynamic shared memory (smem_bytes) is filled with 0xff bytes (NaN as floats) before each block,
// so a read of a cell the block never wrote shows up in the results.
template <typename F>
void launch(Dim3 grid, unsigned threads, size_t smem_bytes, F kernel) {
  if (threads % 32 != 0) die("block size must be a multiple of 32");
  gridDim = grid;
  blockDim = Dim3{threads, 1, 1};
  std::vector<unsigned char> dyn(smem_bytes + 128);
  unsigned char* base = dyn.data() + (128 - reinterpret_cast<uintptr_t>(dyn.data()) % 128) % 128;
  dyn_smem = base;
  std::barrier<> block(threads);
  block_barrier = &block;
  warp_barriers.clear();
  for (unsigned w = 0; w < threads / 32; ++w) warp_barriers.push_back(std::make_unique<std::barrier<>>(32));
  warp_slots.assign(threads / 32, {});
  warp_regs.assign(threads / 32, {});
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      threadIdx = Dim3{t, 0, 0};
      for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            if (t == 0) std::memset(base, 0xff, smem_bytes);
            block.arrive_and_wait();
            blockIdx = Dim3{bx, by, bz};
            kernel();
            if (!copies_open.empty() || !copy_groups.empty()) die("a block ended with cp.async copies not waited for");
            block.arrive_and_wait();
          }
    });
  for (auto& th : pool) th.join();
  block_barrier = nullptr;
  dyn_smem = nullptr;
}
template <typename F>
void launch(Dim3 grid, unsigned threads, F kernel) {
  launch(grid, threads, 0, kernel);
}

inline unsigned lane() { return threadIdx.x % 32; }

}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

inline void __pipeline_memcpy_async(void* dst, const void* src, size_t bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) emu::die("cp.async copies 4, 8 or 16 bytes");
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || reinterpret_cast<uintptr_t>(src) % bytes != 0)
    emu::die("cp.async: a misaligned address");
  emu::copies_open.push_back({dst, src, bytes});
}
inline void __pipeline_commit() {
  emu::copy_groups.push_back(std::move(emu::copies_open));
  emu::copies_open.clear();
}
inline void __pipeline_wait_prior(size_t newest_left) {
  while (emu::copy_groups.size() > newest_left) {
    for (const auto& c : emu::copy_groups.front()) std::memcpy(c.dst, c.src, c.bytes);
    emu::copy_groups.erase(emu::copy_groups.begin());
  }
}
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }

// Warp shuffles, full warps only (every caller here passes 0xffffffff): each lane posts its value,
// the warp meets, each reads its source lane's slot, the warp meets again before slots are reused.
namespace emu {
template <typename T>
T shuffle_from(unsigned mask, T v, unsigned src) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes here");
  if (mask != 0xffffffffu) die("the emulation supports full-warp shuffles only");
  const unsigned w = threadIdx.x / 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  warp_slots[w][threadIdx.x % 32] = bits;
  __syncwarp();
  const uint64_t got = warp_slots[w][src % 32];
  __syncwarp();
  T r;
  std::memcpy(&r, &got, sizeof(T));
  return r;
}
}  // namespace emu
template <typename T>
T __shfl_sync(unsigned mask, T v, int src) {
  return emu::shuffle_from(mask, v, static_cast<unsigned>(src));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  return emu::shuffle_from(mask, v, (threadIdx.x % 32) ^ static_cast<unsigned>(lane_mask));
}

template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta) {
  const unsigned lane = threadIdx.x % 32;
  return emu::shuffle_from(mask, v, lane >= delta ? lane - delta : lane);  // lanes below delta keep their own
}
// The lanes whose value equals this lane's.
template <typename T>
unsigned __match_any_sync(unsigned mask, T v) {
  static_assert(sizeof(T) <= 8, "match moves at most 8 bytes here");
  if (mask != 0xffffffffu) emu::die("the emulation supports full-warp matches only");
  const unsigned w = threadIdx.x / 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  emu::warp_slots[w][threadIdx.x % 32] = bits;
  __syncwarp();
  unsigned peers = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (emu::warp_slots[w][l] == bits) peers |= 1u << l;
  __syncwarp();
  return peers;
}
// Whether any lane's predicate holds.
inline bool __any_sync(unsigned mask, bool pred) {
  if (mask != 0xffffffffu) emu::die("the emulation supports full-warp votes only");
  const unsigned w = threadIdx.x / 32;
  emu::warp_slots[w][threadIdx.x % 32] = pred ? 1 : 0;
  __syncwarp();
  bool any = false;
  for (unsigned l = 0; l < 32; ++l) any = any || emu::warp_slots[w][l] != 0;
  __syncwarp();
  return any;
}
inline int __ffs(int x) { return __builtin_ffs(x); }

// Atomics on shared or global memory (the emulated threads are real threads).
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  std::atomic_ref<unsigned long long> a(*p);
  unsigned long long cur = a.load();
  while (cur < v && !a.compare_exchange_weak(cur, v)) {
  }
  return cur;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// Explicitly rounded f32 arithmetic (the host compiler does not contract without -mfma).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
using std::max;
using std::min;

// bf16 and f16 as bit patterns, converted with round-to-nearest-even as the CUDA intrinsics do.
struct __nv_bfloat16;
struct __half;
__nv_bfloat16 __float2bfloat16_rn(float f);
__half __float2half_rn(float f);

struct __nv_bfloat16 {
  uint16_t bits = 0;
  __nv_bfloat16() = default;
  explicit __nv_bfloat16(float f) : bits(__float2bfloat16_rn(f).bits) {}
  static __nv_bfloat16 from_bits(uint16_t b) {
    __nv_bfloat16 v;
    v.bits = b;
    return v;
  }
};
struct __half {
  uint16_t bits = 0;
  __half() = default;
  explicit __half(float f) : bits(__float2half_rn(f).bits) {}
  static __half from_bits(uint16_t b) {
    __half v;
    v.bits = b;
    return v;
  }
};

inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.bits; }
inline float __bfloat162float(__nv_bfloat16 v) { return emu::bits_f32(static_cast<uint32_t>(v.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u = emu::f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16::from_bits(static_cast<uint16_t>((u >> 16) | 0x40u));
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16::from_bits(static_cast<uint16_t>(u >> 16));
}

inline float __half2float(__half v) {
  const uint32_t sign = (v.bits >> 15) & 1u, e = (v.bits >> 10) & 0x1fu, m = v.bits & 0x3ffu;
  float mag;
  if (e == 0) mag = std::ldexp(static_cast<float>(m), -24);
  else if (e == 31) mag = m ? NAN : INFINITY;
  else mag = std::ldexp(static_cast<float>(m | 0x400u), static_cast<int>(e) - 25);
  return sign ? -mag : mag;
}
inline __half __float2half_rn(float f) {
  uint32_t u = emu::f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u >= 0x7f800000u) return __half::from_bits(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (u >= 0x477ff000u) return __half::from_bits(sign | 0x7c00u);  // |f| >= 65520 rounds to inf
  if (u < 0x38800000u) {                                             // below 2^-14: a subnormal half
    const float units = std::nearbyint(emu::bits_f32(u) * 16777216.0f);  // exact scaling, then RNE
    return __half::from_bits(static_cast<uint16_t>(sign | static_cast<uint32_t>(units)));
  }
  u += 0xfffu + ((u >> 13) & 1u);
  u -= 112u << 23;  // exponent bias 127 -> 15
  return __half::from_bits(static_cast<uint16_t>(sign | (u >> 13)));
}

// ldmatrix and mma.sync (cuda/mma.cuh), as warp collectives over per-lane registers in the PTX
// fragment layouts, so a kernel's fragment indexing is checked as written. Lane L: g = L / 4, q = L % 4.
namespace emu {
inline uint16_t bits16(const void* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
// ldmatrix.sync.aligned.m8n8.x{n}[.trans].shared.b16: lanes 8i .. 8i+7 give the row addresses of
// matrix i (16-byte aligned rows of 8 elements); register i of lane L holds matrix i's elements
// (g, 2q) and (g, 2q + 1), or with .trans (2q, g) and (2q + 1, g); the first in the low half.
inline void ldmatrix(int n, bool trans, uint32_t* r, const void* addr) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  if (l < 8u * static_cast<unsigned>(n) && reinterpret_cast<uintptr_t>(addr) % 16 != 0) die("ldmatrix: a row address is not 16-byte aligned");
  auto& set = warp_regs[w][warp_regs_calls++ % 2];
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  set[l][0] = static_cast<uint32_t>(a), set[l][1] = static_cast<uint32_t>(static_cast<uint64_t>(a) >> 32);
  __syncwarp();
  const unsigned g = l / 4, q = l % 4;
  for (int i = 0; i < n; ++i) {
    auto row = [&](unsigned k) {
      const auto& s = set[8u * i + k];
      return reinterpret_cast<const unsigned char*>(static_cast<uintptr_t>(s[0] | static_cast<uint64_t>(s[1]) << 32));
    };
    const uint16_t lo = trans ? bits16(row(2 * q) + 2 * g) : bits16(row(g) + 4 * q);
    const uint16_t hi = trans ? bits16(row(2 * q + 1) + 2 * g) : bits16(row(g) + 4 * q + 2);
    r[i] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
  }
}
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, d = a b + c. Fragments: a0 (g, 2q..), a1
// (g + 8, 2q..), a2 (g, 8 + 2q..), a3 (g + 8, 8 + 2q..); b0 (k 2q.., n g), b1 (k 8 + 2q.., n g); c/d
// (g, 2q), (g, 2q + 1), (g + 8, 2q), (g + 8, 2q + 1). The sum is formed as the wmma stand-in forms it
// (c, then the 16 exact products in k order, in double, rounded once), so a kernel on mma.sync and one
// on wmma with the same chains give the same bits here.
inline void mma_bf16_16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1, const float* c) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  auto& set = warp_regs[w][warp_regs_calls++ % 2];
  auto& mine = set[l];
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b0, mine[5] = b1;
  for (int i = 0; i < 4; ++i) std::memcpy(&mine[6 + i], &c[i], 4);
  __syncwarp();
  auto half = [](uint32_t v, unsigned k) { return __bfloat162float(__nv_bfloat16::from_bits(static_cast<uint16_t>(k % 2 ? v >> 16 : v))); };
  auto A = [&](unsigned i, unsigned k) { return half(set[(i % 8) * 4 + (k % 8) / 2][(i >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k); };
  auto B = [&](unsigned k, unsigned j) { return half(set[j * 4 + (k % 8) / 2][4 + (k >= 8 ? 1 : 0)], k); };
  const unsigned g = l / 4, q = l % 4;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const unsigned i = g + (e >= 2 ? 8 : 0), j = 2 * q + e % 2;
    double s = c[e];
    for (unsigned k = 0; k < 16; ++k) s += static_cast<double>(A(i, k)) * B(k, j);
    out[e] = static_cast<float>(s);
  }
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}
}  // namespace emu

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation covers m16n16k16 only");
  static constexpr int num_elements = 256;  // the whole tile; only lane 0's copy is meaningful
  float x[256];
};

inline void check_ptr(const void* p, unsigned ldm, const char* op) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    std::fprintf(stderr, "emulation: %s: pointer %p is not 256-bit aligned\n", op, p);
    std::abort();
  }
  if (ldm % 8 != 0) {
    std::fprintf(stderr, "emulation: %s: ldm %u is not a multiple of 8 (16-bit) / 4 (32-bit) elements\n", op, ldm);
    std::abort();
  }
}

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float v) {
  for (float& e : f.x) e = v;
}

// A: element (i, k) at p[i * ldm + k] (row major).
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major>& f, const __nv_bfloat16* p,
                             unsigned ldm) {
  check_ptr(p, ldm, "load_matrix_sync(matrix_a)");
  if (emu::lane() != 0) return;
  for (int i = 0; i < 16; ++i)
    for (int k = 0; k < 16; ++k) f.x[i * 16 + k] = __bfloat162float(p[i * ldm + k]);
}
// B: element (k, j) at p[j * ldm + k] (column major).
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __nv_bfloat16, col_major>& f, const __nv_bfloat16* p,
                             unsigned ldm) {
  check_ptr(p, ldm, "load_matrix_sync(matrix_b)");
  if (emu::lane() != 0) return;
  for (int k = 0; k < 16; ++k)
    for (int j = 0; j < 16; ++j) f.x[k * 16 + j] = __bfloat162float(p[j * ldm + k]);
}

// B row major: element (k, j) at p[k * ldm + j].
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __nv_bfloat16, row_major>& f, const __nv_bfloat16* p,
                             unsigned ldm) {
  check_ptr(p, ldm, "load_matrix_sync(matrix_b, row_major)");
  if (emu::lane() != 0) return;
  for (int k = 0; k < 16; ++k)
    for (int j = 0; j < 16; ++j) f.x[k * 16 + j] = __bfloat162float(p[k * ldm + j]);
}

// d = a b + c. bf16 x bf16 products are exact in f32; the 16 products and c are summed exactly
// and rounded once (the hardware's internal order and truncation differ; this is the contract).
// (The fragment holds B as (k, j) whatever its memory layout.)
template <typename BLayout>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, BLayout>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  if (emu::lane() != 0) return;
  float tmp[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      double s = c.x[i * 16 + j];
      for (int k = 0; k < 16; ++k) s += static_cast<double>(a.x[i * 16 + k]) * b.x[k * 16 + j];
      tmp[i * 16 + j] = static_cast<float>(s);
    }
  std::memcpy(d.x, tmp, sizeof tmp);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  check_ptr(p, ldm, "store_matrix_sync");
  if (emu::lane() != 0) return;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j)
      (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.x[i * 16 + j];
}

}  // namespace wmma
}  // namespace nvcuda

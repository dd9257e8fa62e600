// Device-side helpers shared by the kernel headers: float dtype conversions, dynamic shared memory,
// the row-to-sequence lookup of ragged batches. Kernel headers include this, not common.cuh (which
// adds the runtime: stream, error checks, dispatch), so that test/emu/ can compile them on a host
// with stand-ins for CUDA's types.
#pragma once
#include <cstdint>
#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace specdec {
namespace cuda {

// Load/store any float dtype as f32.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
// f16 -> f32 keeping a NaN's sign and payload, as the CPU backend and the host do: the hardware
// conversion (and __half2float) gives every NaN as the canonical 0x7fffffff. For the copy-like ops
// (embedding), whose output must equal the table bit for bit; the arithmetic paths need no payloads.
__device__ __forceinline__ float to_f32_exact(float x) { return x; }
__device__ __forceinline__ float to_f32_exact(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32_exact(__half x) {
#ifdef __CUDACC__
  const unsigned h = __half_as_ushort(x);
#else
  const unsigned h = x.bits;
#endif
  if ((h & 0x7c00u) != 0x7c00u || (h & 0x3ffu) == 0) return __half2float(x);
  const unsigned u = ((h & 0x8000u) << 16) | 0x7f800000u | ((h & 0x3ffu) << 13);
#ifdef __CUDACC__
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, sizeof f);
  return f;
#endif
}
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Bit counting on 64-bit words (the host emulation has no CUDA intrinsics).
__device__ __forceinline__ int popc64(unsigned long long x) {
#ifdef __CUDACC__
  return __popcll(x);
#else
  return __builtin_popcountll(x);
#endif
}
__device__ __forceinline__ int ctz64(unsigned long long x) {  // x != 0
#ifdef __CUDACC__
  return __ffsll(static_cast<long long>(x)) - 1;
#else
  return __builtin_ctzll(x);
#endif
}

// Sequence b of a ragged batch holding flattened row n: indptr[b] <= n < indptr[b + 1].
__device__ __forceinline__ int find_seq(const int32_t* indptr, int B, int n) {
  int lo = 0, hi = B;
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (indptr[mid] <= n) lo = mid;
    else hi = mid;
  }
  return lo;
}

}  // namespace cuda
}  // namespace specdec

// The kernel's dynamic shared memory as T* (the host emulation hands out a per-block buffer).
#ifdef __CUDACC__
#define SPECDEC_DYNAMIC_SMEM(T, name) extern __shared__ T name[]
#else
#define SPECDEC_DYNAMIC_SMEM(T, name) T* name = ::emu::dynamic_smem<T>()
#endif

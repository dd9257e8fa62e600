// Warp-level tensor-core primitives in their PTX fragment layouts (sm_80+): ldmatrix from shared
// memory and mma.sync m16n8k16 with bf16 inputs and f32 accumulation. On the host (test/emu/) the
// same calls run cuda_emu.h's warp collectives, which rebuild each lane's registers from the layouts
// below, so a kernel's fragment indexing is checked as it is written.
//
// Lane L, g = L / 4, q = L % 4. mma A (16x16, row major): a0 (g, 2q..2q+1), a1 (g+8, 2q..), a2 (g, 8+2q..),
// a3 (g+8, 8+2q..). B (16x8, "col"): b0 (k 2q..2q+1, n g), b1 (k 8+2q.., n g). C/D: (g, 2q), (g, 2q+1),
// (g+8, 2q), (g+8, 2q+1). Pairs are packed low element first.
#pragma once
#include <cstdint>

namespace specdec {
namespace cuda {
namespace mma {

#ifdef __CUDACC__
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// Four 8x8 b16 matrices; lanes 8i .. 8i+7 give matrix i's row addresses (16-byte aligned).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}
// The same, each matrix transposed: register i holds matrix i's (2q, g) and (2q+1, g).
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}
// d += a b (bf16 x bf16 -> f32), one m16n8k16 tile.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#else
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ::emu::ldmatrix(4, false, r, row); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { ::emu::ldmatrix(4, true, r, row); }
inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) { ::emu::mma_bf16_16816(d, a, b0, b1, d); }
#endif

// Two bf16 values packed as an mma operand register (lo in the low half).
__device__ __forceinline__ uint32_t pack_bf16(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(lo)) | static_cast<uint32_t>(__bfloat16_as_ushort(hi)) << 16;
}

}  // namespace mma
}  // namespace cuda
}  // namespace specdec

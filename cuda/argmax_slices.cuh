// A row's argmax over vocabulary slices, several blocks per row: shared by argmax (sampling.cuh,
// with argmax_combine_kernel) and greedy verification (verify.cuh). Templates only, so that both
// translation units can include it.
#pragma once
#include "sampling_block.cuh"

namespace specdec {
namespace cuda {
namespace sampling_kernels {

// A row's argmax by several blocks at once, one per kSliceCols-wide slice of the vocabulary, each
// leaving a partial (value, index); a warp then folds a row's partials (argmax_combine_kernel, or
// greedy verification's walk). argmax_better is a strict total order on the partials (value, then
// lower index; NaN never wins, an all-NaN slice leaves (NaN, 0x7fffffff)), so any reduction order
// gives the CPU's token: the result is exact whatever the slicing.
constexpr int kSliceCols = 4096;
constexpr int kSliceThreads = 256;
__host__ __device__ inline int argmax_slices(int V) { return (V + kSliceCols - 1) / kSliceCols; }

template <typename T>
__global__ void __launch_bounds__(kSliceThreads) argmax_slices_kernel(const T* __restrict__ target, int V,
                                                                      float* __restrict__ part_v,
                                                                      int32_t* __restrict__ part_i) {
  __shared__ float sv[kSliceThreads / 32];
  __shared__ int32_t si[kSliceThreads / 32];
  const int S = argmax_slices(V), slice = blockIdx.y;
  const int64_t row = blockIdx.x;
  const T* x = target + row * V;
  const int end = min(V, (slice + 1) * kSliceCols);
  float bv = NAN;
  int32_t bi = 0x7fffffff;
  for (int i = slice * kSliceCols + static_cast<int>(threadIdx.x); i < end; i += kSliceThreads) {
    const float v = to_f32(x[i]);
    if (sm::argmax_better(v, i, bv, bi)) bv = v, bi = i;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(blk::kFull, bv, o);
    const int32_t oi = __shfl_xor_sync(blk::kFull, bi, o);
    if (sm::argmax_better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sv[warp] = bv, si[warp] = bi;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kSliceThreads / 32; ++w)
      if (sm::argmax_better(sv[w], si[w], bv, bi)) bv = sv[w], bi = si[w];
    part_v[row * S + slice] = bv;
    part_i[row * S + slice] = bi;
  }
}

}  // namespace sampling_kernels
}  // namespace cuda
}  // namespace specdec

// Shared by every CUDA translation unit: error checking that throws (never aborts),
// the library's stream, and small device helpers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <tuple>
#include <type_traits>

#include "../cpp/core/error.h"
#include "../cpp/core/tensor.h"
#include "device.cuh"
#include "graph_cache.h"

namespace specdec {
namespace cuda {

// All kernels run on one non-blocking stream owned by the library.
cudaStream_t stream();
// The current device's SM count (read once), for launch planners.
int sm_count();
// The most dynamic shared memory a block may opt in to on the current device (read once).
int max_optin_smem();
// The shared memory of one SM, all its resident blocks together (read once).
int smem_per_sm();
// Whether environment variable `name` is set to exactly `value` (the SPECDEC_CUDA_* switches; callers
// read it once, so a kernel choice never changes within a process).
bool env_is(const char* name, const char* value);

[[noreturn]] inline void throw_cuda(cudaError_t e, const char* call, const char* file, int line) {
  fail("E_CUDA", call, " failed: ", cudaGetErrorString(e), " (", cudaGetErrorName(e), ") at ", file, ":", line);
}

}  // namespace cuda
}  // namespace specdec

#define SPECDEC_CUDA_CHECK(call)                                                           \
  do {                                                                                     \
    cudaError_t specdec_err_ = (call);                                                     \
    if (specdec_err_ != cudaSuccess) ::specdec::cuda::throw_cuda(specdec_err_, #call, __FILE__, __LINE__); \
  } while (0)

// After a launch: reports configuration errors (bad grid, too much shared memory) at once.
#define SPECDEC_CUDA_LAUNCH_CHECK(kernel_name)                                             \
  do {                                                                                     \
    cudaError_t specdec_err_ = cudaGetLastError();                                         \
    if (specdec_err_ != cudaSuccess) ::specdec::cuda::throw_cuda(specdec_err_, "launch of " kernel_name, __FILE__, __LINE__); \
  } while (0)

namespace specdec {
namespace cuda {

inline unsigned ceil_div(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// go(T{}) with the CUDA element type of a float tensor's dtype (f32 / f16 / bf16); E_ARG naming
// `what` for any other dtype.
template <typename F>
void with_float_type(DType dt, const char* what, F&& go) {
  switch (dt) {
    case DType::f32: go(float{}); break;
    case DType::f16: go(__half{}); break;
    case DType::bf16: go(__nv_bfloat16{}); break;
    default: fail("E_ARG", what, ": unsupported dtype ", dtype_name(dt));
  }
}

// Kernel timing (cuda/profile.cu, SPECDEC_CUDA_PROFILE=1): a slot bracketing one eager launch, or -1.
bool profile_enabled();
int profile_begin(const void* fn);
int profile_begin_graph();
void profile_end(int slot);

// Every kernel launch goes through here: inside a CUDA graph body (cuda/graphs.cu) the launch is
// recorded (the arguments as the kernel receives them) and, while the body is traced, not made.
template <typename... P, typename... A>
void launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "launch_kernel: argument count differs from the kernel's");
  std::tuple<std::decay_t<P>...> conv(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
  if (graphs::Record* r = graphs::t_body.record) {
    const unsigned g[3] = {grid.x, grid.y, grid.z}, b[3] = {block.x, block.y, block.z};
    graphs::record_launch(*r, reinterpret_cast<const void*>(kernel), g, b, smem, conv);
    if (graphs::t_body.suppress) return;
  }
  const int slot = profile_enabled() ? profile_begin(reinterpret_cast<const void*>(kernel)) : -1;
  std::apply([&](auto&... a) { kernel<<<grid, block, smem, stream()>>>(a...); }, conv);
  profile_end(slot);
}

}  // namespace cuda
}  // namespace specdec

// Dispatch a float dtype to a C++ type alias `scalar_t`.
#define SPECDEC_DISPATCH_FLOAT(dtype, name, ...)                                            \
  [&] {                                                                                     \
    switch (dtype) {                                                                        \
      case ::specdec::DType::f32: { using scalar_t = float; return __VA_ARGS__(); }         \
      case ::specdec::DType::f16: { using scalar_t = __half; return __VA_ARGS__(); }        \
      case ::specdec::DType::bf16: { using scalar_t = __nv_bfloat16; return __VA_ARGS__(); } \
      default: ::specdec::fail("E_ARG", name, ": unsupported dtype ", ::specdec::dtype_name(dtype)); \
    }                                                                                       \
  }()

// CUDA runtime services for the rest of the library: device query, a caching allocator,
// copies on the library stream. Statically linked cudart: this file must behave on
// machines with no driver at all (query reports the reason, nothing else is called).
#include <map>
#include <mutex>

#include "../cpp/core/backend.h"
#include "common.cuh"
#include "cuda_backend.h"

namespace specdec {
namespace cuda {

namespace {
std::mutex g_mu;
std::multimap<size_t, void*> g_free;  // bytes -> block
size_t g_cached = 0;
cudaStream_t g_stream = nullptr;
}  // namespace

cudaStream_t stream() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_stream) SPECDEC_CUDA_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  return g_stream;
}

void query(BackendInfo& info) {
#ifdef SPECDEC_CUDA_ARCHS
  {
    std::string archs = SPECDEC_CUDA_ARCHS, cur;
    for (char c : archs + ";") {
      if (c == ';' || c == ',' || c == ' ') { if (!cur.empty()) info.cuda_archs.push_back(cur); cur.clear(); }
      else cur += c;
    }
  }
#endif
  cudaRuntimeGetVersion(&info.cuda_runtime_version);
  int drv = 0;
  cudaDriverGetVersion(&drv);
  info.cuda_driver_version = drv;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    info.cuda_available = false;
    if (e == cudaErrorInsufficientDriver && drv == 0)
      info.cuda_reason = str("no NVIDIA driver found (", cudaGetErrorName(e), ": ", cudaGetErrorString(e), ")");
    else if (e == cudaErrorNoDevice)
      info.cuda_reason = str("no CUDA-capable GPU found (", cudaGetErrorName(e), ")");
    else
      info.cuda_reason = str("cudaGetDeviceCount failed: ", cudaGetErrorName(e), ": ", cudaGetErrorString(e));
    return;
  }
  if (n == 0) {
    info.cuda_available = false;
    info.cuda_reason = "no CUDA-capable GPU found";
    return;
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    GpuInfo g;
    g.index = i;
    g.name = p.name;
    g.major = p.major;
    g.minor = p.minor;
    g.total_memory = p.totalGlobalMem;
    info.gpus.push_back(g);
  }
  // Make sure a kernel image exists for device 0 (a binary without a matching SASS/PTX fails here).
  e = cudaSetDevice(0);
  if (e != cudaSuccess) {
    info.cuda_available = false;
    info.cuda_reason = str("cudaSetDevice(0) failed: ", cudaGetErrorString(e));
    return;
  }
  void* probe = nullptr;
  e = cudaMalloc(&probe, 256);
  if (e != cudaSuccess) {
    info.cuda_available = false;
    info.cuda_reason = str("cudaMalloc on device 0 failed: ", cudaGetErrorString(e));
    return;
  }
  cudaFree(probe);
  info.cuda_available = true;
  info.cuda_reason.clear();
}

void* alloc(size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_free.lower_bound(bytes);
    // Reuse a cached block if it is not much larger than asked for.
    if (it != g_free.end() && it->first <= bytes + bytes / 4 + 4096) {
      void* p = it->second;
      g_cached -= it->first;
      g_free.erase(it);
      return p;
    }
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    empty_cache();
    e = cudaMalloc(&p, bytes);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    fail("E_CUDA", "cudaMalloc of ", bytes, " bytes failed: ", cudaGetErrorString(e), " (", cudaGetErrorName(e), ")");
  }
  return p;
}

void release(void* ptr, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mu);
  // Blocks may still be in use by queued kernels on our single stream; reuse is ordered on that
  // stream, so handing the block to the next allocation is safe.
  g_free.emplace(bytes, ptr);
  g_cached += bytes;
}

void empty_cache() {
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_stream) cudaStreamSynchronize(g_stream);
  for (auto& kv : g_free) cudaFree(kv.second);
  g_free.clear();
  g_cached = 0;
}

size_t cached_bytes() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_cached;
}

void memcpy_h2d(void* dst, const void* src, size_t bytes) {
  cudaStream_t s = stream();
  SPECDEC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
  // The host buffer may be a JS-owned array: do not return before it has been read.
  SPECDEC_CUDA_CHECK(cudaStreamSynchronize(s));
}

void memcpy_d2h(void* dst, const void* src, size_t bytes) {
  cudaStream_t s = stream();
  SPECDEC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
  SPECDEC_CUDA_CHECK(cudaStreamSynchronize(s));
}

void memcpy_d2d(void* dst, const void* src, size_t bytes) {
  SPECDEC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

void memset_zero(void* dst, size_t bytes) { SPECDEC_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream())); }

void synchronize() { SPECDEC_CUDA_CHECK(cudaStreamSynchronize(stream())); }

}  // namespace cuda
}  // namespace specdec

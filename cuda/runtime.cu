// CUDA runtime services for the rest of the library: device query, a caching allocator,
// copies on the library stream. Statically linked cudart: this file must behave on
// machines with no driver at all (query reports the reason, nothing else is called).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>

#include "../cpp/core/backend.h"
#include "../cpp/core/transfers.h"
#include "common.cuh"
#include "cuda_backend.h"
#include "graph_cache.h"

namespace specdec {
namespace cuda {

namespace {
std::mutex g_mu;
std::multimap<size_t, void*> g_free;  // bytes -> block
size_t g_cached = 0;
cudaStream_t g_stream = nullptr;
}  // namespace

extern thread_local cudaStream_t t_stream_override;  // cuda/graphs.cu: a capture in progress on this thread

cudaStream_t stream() {
  if (t_stream_override) return t_stream_override;
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_stream) SPECDEC_CUDA_CHECK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
  return g_stream;
}

bool env_is(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v && std::strcmp(v, value) == 0;
}

namespace {
// An attribute of the current device (callers keep it: one query per process).
int device_attribute(cudaDeviceAttr attr) {
  int dev = 0, value = 0;
  SPECDEC_CUDA_CHECK(cudaGetDevice(&dev));
  SPECDEC_CUDA_CHECK(cudaDeviceGetAttribute(&value, attr, dev));
  return value;
}
}  // namespace

int sm_count() {
  static const int n = std::max(device_attribute(cudaDevAttrMultiProcessorCount), 1);
  return n;
}

int max_optin_smem() {
  static const int n = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  return n;
}

int smem_per_sm() {
  static const int n = device_attribute(cudaDevAttrMaxSharedMemoryPerMultiprocessor);
  return n;
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
  if (void* p = graph_body_alloc(bytes)) return p;  // a graph body's memory: the same addresses every run
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
  return alloc_uncached(bytes);
}

void* alloc_uncached(size_t bytes) {
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
  if (graph_body_release(ptr)) return;
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

namespace {

// Pinned staging ring for uploads. A small upload is copied into the ring and sent with an async
// copy; an event marks when the device has read it. Space is reused only after its event has
// completed, so the host never waits unless the ring is full of copies still in flight (counted).
class StagingRing {
 public:
  static constexpr size_t kBytes = size_t(8) << 20;
  static constexpr size_t kMaxUpload = kBytes / 4;

  // Copies src into the ring and queues the upload; false if it cannot (too large, no pinned memory).
  bool upload(void* dst, const void* src, size_t bytes, cudaStream_t s) {
    std::lock_guard<std::mutex> lock(mu_);
    if (bytes > kMaxUpload || !ensure()) return false;
    size_t at = (head_ + 15) / 16 * 16;
    if (at + bytes > kBytes) at = 0;  // wrap: the tail of the ring stays unused this round
    reclaim(at, bytes);
    std::memcpy(base_ + at, src, bytes);
    SPECDEC_CUDA_CHECK(cudaMemcpyAsync(dst, base_ + at, bytes, cudaMemcpyHostToDevice, s));
    cudaEvent_t ev = take_event();
    SPECDEC_CUDA_CHECK(cudaEventRecord(ev, s));
    inflight_.push_back({at, at + bytes, ev});
    head_ = at + bytes;
    return true;
  }

 private:
  struct Span {
    size_t begin, end;
    cudaEvent_t ev;
  };
  std::mutex mu_;
  unsigned char* base_ = nullptr;
  bool failed_ = false;
  size_t head_ = 0;
  std::deque<Span> inflight_;  // oldest first
  std::vector<cudaEvent_t> spare_;

  bool ensure() {
    if (base_) return true;
    if (failed_) return false;
    void* p = nullptr;
    if (cudaHostAlloc(&p, kBytes, cudaHostAllocDefault) != cudaSuccess) {
      cudaGetLastError();
      failed_ = true;
      return false;
    }
    base_ = static_cast<unsigned char*>(p);
    return true;
  }

  cudaEvent_t take_event() {
    if (!spare_.empty()) {
      cudaEvent_t e = spare_.back();
      spare_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    SPECDEC_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return e;
  }

  // Frees finished spans (oldest first); waits for any span still overlapping [at, at + bytes).
  void reclaim(size_t at, size_t bytes) {
    while (!inflight_.empty()) {
      Span& sp = inflight_.front();
      const bool overlaps = sp.begin < at + bytes && at < sp.end;
      cudaError_t q = cudaEventQuery(sp.ev);
      if (q == cudaErrorNotReady) {
        if (!overlaps) break;
        SPECDEC_CUDA_CHECK(cudaEventSynchronize(sp.ev));
        note_wait();
      } else {
        SPECDEC_CUDA_CHECK(q);
      }
      spare_.push_back(sp.ev);
      inflight_.pop_front();
    }
    // Spans past the oldest unfinished one are younger and lie after it in ring order; only the
    // ones overlapping the new range matter, and those are waited for in order above.
    for (const Span& sp : inflight_)
      if (sp.begin < at + bytes && at < sp.end) {
        SPECDEC_CUDA_CHECK(cudaEventSynchronize(sp.ev));
        note_wait();
      }
  }
};

StagingRing g_staging;

// A graph body only enqueues work: a wait or an upload inside one (its source would be captured as
// it is now) makes the body unfit for graphs; graph_cache.h's Runner then runs it kernel by kernel.
void forbid_in_body(const char* what) {
  if (graphs::t_body.record) throw graphs::BodyForbidden(what);
}

// A copy or fill inside a graph body is part of its record; while tracing it is not made.
bool recorded_only(char tag, const void* dst, const void* src, size_t bytes) {
  graphs::Record* r = graphs::t_body.record;
  if (!r) return false;
  r->add_op(tag, dst, src, bytes);
  return graphs::t_body.suppress;
}

}  // namespace

bool memcpy_h2d(void* dst, const void* src, size_t bytes) {
  forbid_in_body("an upload");
  cudaStream_t s = stream();
  if (g_staging.upload(dst, src, bytes, s)) return false;
  SPECDEC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
  // The host buffer may be a JS-owned array: do not return before it has been read.
  SPECDEC_CUDA_CHECK(cudaStreamSynchronize(s));
  return true;
}

void memcpy_d2h(void* dst, const void* src, size_t bytes) {
  forbid_in_body("a read to the host");
  cudaStream_t s = stream();
  SPECDEC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
  SPECDEC_CUDA_CHECK(cudaStreamSynchronize(s));
}

void memcpy_d2d(void* dst, const void* src, size_t bytes) {
  if (recorded_only('C', dst, src, bytes)) return;
  SPECDEC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}

void memset_zero(void* dst, size_t bytes) {
  if (recorded_only('Z', dst, nullptr, bytes)) return;
  SPECDEC_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream()));
}

void synchronize() {
  forbid_in_body("a stream synchronization");
  note_wait();
  SPECDEC_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

}  // namespace cuda
}  // namespace specdec

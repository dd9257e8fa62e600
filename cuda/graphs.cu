// CUDA graphs of a forward's layer stack (issue 11): cuda/graph_cache.h's Runner on the CUDA runtime,
// and the one-launch copy that puts a step's inputs at the addresses its graphs read.
//
// Opt-in (SPECDEC_CUDA_GRAPHS=1) until it has run on a GPU: the bookkeeping is checked on the host
// (test/emu/graphs_emu.cc), the capture itself only on a device. Captures run on a stream of their
// own with cudaStreamCaptureModeThreadLocal, so launches of other threads on the library stream stay
// out of them; the captured graph then launches on the library stream, ordered with everything else.
#include <cstdio>

#include "../cpp/core/transfers.h"
#include "common.cuh"
#include "cuda_backend.h"
#include "graph_cache.h"

namespace specdec {
namespace cuda {

thread_local cudaStream_t t_stream_override = nullptr;

namespace {

struct CudaGraphDevice {
  using Exec = cudaGraphExec_t;
  cudaStream_t capture_stream = nullptr;

  void* raw_alloc(size_t bytes) { return alloc_uncached(bytes); }
  void begin_capture() {
    if (!capture_stream) SPECDEC_CUDA_CHECK(cudaStreamCreateWithFlags(&capture_stream, cudaStreamNonBlocking));
    SPECDEC_CUDA_CHECK(cudaStreamBeginCapture(capture_stream, cudaStreamCaptureModeThreadLocal));
    t_stream_override = capture_stream;
  }
  Exec end_capture(std::string* failure) {
    t_stream_override = nullptr;
    cudaGraph_t graph = nullptr;
    cudaError_t e = cudaStreamEndCapture(capture_stream, &graph);
    Exec exec = nullptr;
    if (e == cudaSuccess && graph) e = cudaGraphInstantiate(&exec, graph, 0);
    if (graph) cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
      cudaGetLastError();
      if (failure) *failure = str(cudaGetErrorName(e), ": ", cudaGetErrorString(e));
      if (exec) cudaGraphExecDestroy(exec);
      return nullptr;
    }
    return exec;
  }
  void launch(Exec exec) {
    const int slot = profile_enabled() ? profile_begin_graph() : -1;
    SPECDEC_CUDA_CHECK(cudaGraphLaunch(exec, stream()));
    profile_end(slot);
  }
  // An executable graph still in flight is freed when it completes (cudaGraphExecDestroy).
  void destroy(Exec exec) { cudaGraphExecDestroy(exec); }
  void quiet_ops(bool quiet) { set_ops_quiet(quiet); }
  void note_replay(bool captured) { note_graph_launch(captured); }
  void warn(const std::string& why) {
    std::fprintf(stderr, "specdec: CUDA graphs disabled for this process (launching kernel by kernel): %s\n", why.c_str());
  }
};

graphs::Runner<CudaGraphDevice>& runner() {
  static graphs::Runner<CudaGraphDevice> r{CudaGraphDevice{}};
  return r;
}

// Up to kMaxSegments copies in one launch: block i copies segment i, 4 bytes per thread and step.
constexpr int kMaxSegments = 8;
struct SegmentCopy {
  const uint32_t* src[kMaxSegments];
  uint64_t dst_word[kMaxSegments];
  uint64_t words[kMaxSegments];
  uint32_t* dst;
  int64_t n;
};

__global__ void copy_segments_kernel(SegmentCopy c) {
  const int s = blockIdx.x;
  const uint32_t* src = c.src[s];
  uint32_t* dst = c.dst + c.dst_word[s];
  for (uint64_t i = threadIdx.x; i < c.words[s]; i += blockDim.x) dst[i] = src[i];
}

}  // namespace

bool graphs_enabled() {
  static const bool on = env_is("SPECDEC_CUDA_GRAPHS", "1");
  return on;
}

void run_graphed(const std::function<void()>& body) {
  if (!graphs_enabled()) return body();
  runner().run(body);
}

void* graph_body_alloc(size_t bytes) { return graphs_enabled() ? runner().body_alloc(bytes) : nullptr; }
bool graph_body_release(const void* ptr) { return graphs_enabled() && runner().body_release(ptr); }

void copy_segments(void* dst, const std::vector<Segment>& segs) {
  SPECDEC_CHECK(segs.size() <= static_cast<size_t>(kMaxSegments), "E_ARG", "copy_segments: ", segs.size(),
                " segments, at most ", kMaxSegments);
  SegmentCopy c{};
  c.dst = static_cast<uint32_t*>(dst);
  int n = 0;
  for (const Segment& s : segs) {
    if (s.bytes == 0) continue;
    SPECDEC_CHECK(s.bytes % 4 == 0 && s.dst_offset % 4 == 0 && reinterpret_cast<uintptr_t>(s.src) % 4 == 0, "E_ARG",
                  "copy_segments: segments are whole, aligned 4-byte words");
    c.src[n] = static_cast<const uint32_t*>(s.src);
    c.dst_word[n] = s.dst_offset / 4;
    c.words[n] = s.bytes / 4;
    ++n;
  }
  c.n = n;
  if (n == 0) return;
  note_op();
  launch_kernel(copy_segments_kernel, dim3(static_cast<unsigned>(n)), dim3(256), 0, c);
  SPECDEC_CUDA_LAUNCH_CHECK("copy_segments_kernel");
}

}  // namespace cuda
}  // namespace specdec

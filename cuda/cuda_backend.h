// The CUDA runtime as seen from plain C++ (core, model, napi): implemented in cuda/runtime.cu,
// only linked when SPECDEC_WITH_CUDA is defined. Every failure throws specdec::Error("E_CUDA").
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace specdec {
struct BackendInfo;
namespace cuda {

// Fills the CUDA part of `info` (runtime/driver versions, devices, or the reason CUDA is not usable).
void query(BackendInfo& info);

void* alloc(size_t bytes);              // caching allocator
void* alloc_uncached(size_t bytes);     // cudaMalloc (after emptying the cache if memory is short)
void release(void* ptr, size_t bytes);  // back to the cache
void empty_cache();
size_t cached_bytes();

// Uploads go through a pinned staging ring and return at once (the host buffer may be reused as
// soon as the call returns); returns true when the upload had to wait instead (larger than the
// ring's share, or no pinned memory), so the caller can count it.
bool memcpy_h2d(void* dst, const void* src, size_t bytes);
void memcpy_d2h(void* dst, const void* src, size_t bytes);
void memcpy_d2d(void* dst, const void* src, size_t bytes);
void memset_zero(void* dst, size_t bytes);
void synchronize();  // waits for the library's stream; throws on a pending kernel error (counted)

// CUDA graphs (cuda/graphs.cu, cuda/graph_cache.h), opt-in with SPECDEC_CUDA_GRAPHS=1 (read once).
// run_graphed(body): `body` only enqueues work on the library stream (no waits, no reads to the
// host, no uploads) and keeps no device memory it allocates. It runs eagerly, or as one graph launch
// when a body with exactly the same launches (kernels, grids, argument bytes) ran before.
bool graphs_enabled();
void run_graphed(const std::function<void()>& body);
// A body's device memory comes from the graphs' arena (null / false: not a body's, use the cache).
void* graph_body_alloc(size_t bytes);
bool graph_body_release(const void* ptr);
// Copies whole 4-byte words from device memory to dst + dst_offset, all segments (at most 8) in one
// launch: a step's inputs, wherever they were uploaded, land at the addresses its graphs read.
struct Segment {
  const void* src;
  size_t dst_offset;
  size_t bytes;
};
void copy_segments(void* dst, const std::vector<Segment>& segs);

// Kernel timing (cuda/profile.cu), on with SPECDEC_CUDA_PROFILE=1 or profile_set_enabled: per kernel name, the
// launches and their summed GPU time since the last reset; span = first event to last, busy = the
// sum of the kernels' intervals. A diagnostic: the events cost host time per launch.
struct ProfileRow {
  std::string name;
  uint64_t calls = 0;
  double total_us = 0;
};
struct ProfileReport {
  bool enabled = false;
  std::vector<ProfileRow> rows;  // the most time first
  double span_us = 0, busy_us = 0;
  uint64_t launches = 0;
  bool truncated = false;  // more launches than the profiler keeps: timing stopped
};
ProfileReport profile_report(bool reset);
// Switches the timing of later launches on or off; returns the previous state.
bool profile_set_enabled(bool on);

}  // namespace cuda
}  // namespace specdec

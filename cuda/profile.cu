// Kernel timing for finding where a step's time goes (SPECDEC_CUDA_PROFILE=1 at start, or switched
// at run time by profile_set_enabled, as the kernel benches do around a timed pass): every
// eager launch on the library stream is bracketed by two CUDA events, and profile_report() adds the
// intervals up per kernel, beside the span from the first event to the last. span - busy is the
// time the GPU sat idle between kernels (launch latency, host work, waits). A graph replay counts as
// one entry ("cuda graph: layer stack"); launches inside a capture or a traced graph body are not
// timed. The events cost ~2 us of host time per launch, so profiled runs are for the breakdown, not
// for tokens/s.
#include <cxxabi.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "common.cuh"
#include "cuda_backend.h"

namespace specdec {
namespace cuda {

extern thread_local cudaStream_t t_stream_override;  // cuda/graphs.cu: a capture in progress on this thread

namespace {

constexpr size_t kMaxEntries = 1 << 18;  // then the report says "truncated" and timing stops

struct Entry {
  const void* fn;
  cudaEvent_t start, stop;
};

std::mutex g_mu;
std::vector<Entry> g_entries;
std::vector<cudaEvent_t> g_free_events;
bool g_truncated = false;
const char kGraphTag = 0;

cudaEvent_t take_event() {
  if (!g_free_events.empty()) {
    cudaEvent_t e = g_free_events.back();
    g_free_events.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  SPECDEC_CUDA_CHECK(cudaEventCreate(&e));
  return e;
}

// "void specdec::cuda::gemm_tc::matmul_tc_kernel<__nv_bfloat16, float, 1>(...)" ->
// "gemm_tc::matmul_tc_kernel<__nv_bfloat16, float, 1>".
std::string kernel_name(const void* fn) {
  if (fn == &kGraphTag) return "cuda graph: layer stack";
  const char* mangled = nullptr;
  if (cudaFuncGetName(&mangled, fn) != cudaSuccess || !mangled) {
    cudaGetLastError();
    return "(unnamed kernel)";
  }
  int status = 0;
  char* d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : mangled;
  std::free(d);
  const size_t paren = s.find('(');
  if (paren != std::string::npos) s.resize(paren);
  if (s.rfind("void ", 0) == 0) s.erase(0, 5);
  const std::string ns = "specdec::cuda::";
  for (size_t at; (at = s.find(ns)) != std::string::npos;) s.erase(at, ns.size());
  return s;
}

}  // namespace

namespace {
std::atomic<bool> g_on{env_is("SPECDEC_CUDA_PROFILE", "1")};
}  // namespace

bool profile_enabled() { return g_on.load(std::memory_order_relaxed); }

bool profile_set_enabled(bool on) { return g_on.exchange(on); }

int profile_begin(const void* fn) {
  if (!profile_enabled() || t_stream_override || graphs::t_body.record) return -1;
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_entries.size() >= kMaxEntries) {
    g_truncated = true;
    return -1;
  }
  Entry e{fn, take_event(), take_event()};
  SPECDEC_CUDA_CHECK(cudaEventRecord(e.start, stream()));
  g_entries.push_back(e);
  return static_cast<int>(g_entries.size() - 1);
}

void profile_end(int slot) {
  if (slot < 0) return;
  std::lock_guard<std::mutex> lock(g_mu);
  SPECDEC_CUDA_CHECK(cudaEventRecord(g_entries[static_cast<size_t>(slot)].stop, stream()));
}

int profile_begin_graph() { return profile_begin(&kGraphTag); }

ProfileReport profile_report(bool reset) {
  ProfileReport r;
  r.enabled = profile_enabled();
  std::lock_guard<std::mutex> lock(g_mu);
  if (!r.enabled && g_entries.empty()) return r;  // launches timed before a switch-off still report
  SPECDEC_CUDA_CHECK(cudaStreamSynchronize(stream()));  // a diagnostic: not counted as a step's wait
  std::map<const void*, ProfileRow> by_fn;
  for (const Entry& e : g_entries) {
    float ms = 0.f;
    SPECDEC_CUDA_CHECK(cudaEventElapsedTime(&ms, e.start, e.stop));
    ProfileRow& row = by_fn[e.fn];
    row.calls += 1;
    row.total_us += 1000.0 * ms;
    r.busy_us += 1000.0 * ms;
  }
  if (!g_entries.empty()) {
    float ms = 0.f;
    SPECDEC_CUDA_CHECK(cudaEventElapsedTime(&ms, g_entries.front().start, g_entries.back().stop));
    r.span_us = 1000.0 * ms;
  }
  r.launches = g_entries.size();
  r.truncated = g_truncated;
  for (auto& [fn, row] : by_fn) {
    row.name = kernel_name(fn);
    r.rows.push_back(row);
  }
  std::sort(r.rows.begin(), r.rows.end(), [](const ProfileRow& a, const ProfileRow& b) { return a.total_us > b.total_us; });
  if (reset) {
    for (const Entry& e : g_entries) {
      g_free_events.push_back(e.start);
      g_free_events.push_back(e.stop);
    }
    g_entries.clear();
    g_truncated = false;
  }
  return r;
}

}  // namespace cuda
}  // namespace specdec

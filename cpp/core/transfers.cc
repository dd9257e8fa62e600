#include "transfers.h"

#include <atomic>

namespace specdec {

namespace {
std::atomic<uint64_t> g_uploads{0}, g_upload_bytes{0}, g_readbacks{0}, g_readback_bytes{0}, g_waits{0}, g_ops{0};
std::atomic<uint64_t> g_graph_launches{0}, g_graph_captures{0};
thread_local bool t_ops_quiet = false;
}  // namespace

void note_upload(size_t bytes, bool blocking) {
  g_uploads.fetch_add(1, std::memory_order_relaxed);
  g_upload_bytes.fetch_add(bytes, std::memory_order_relaxed);
  if (blocking) g_waits.fetch_add(1, std::memory_order_relaxed);
}

void note_readback(size_t bytes) {
  g_readbacks.fetch_add(1, std::memory_order_relaxed);
  g_readback_bytes.fetch_add(bytes, std::memory_order_relaxed);
  g_waits.fetch_add(1, std::memory_order_relaxed);
}

void note_wait() { g_waits.fetch_add(1, std::memory_order_relaxed); }

void note_op() {
  if (!t_ops_quiet) g_ops.fetch_add(1, std::memory_order_relaxed);
}

void note_graph_launch(bool captured) {
  g_ops.fetch_add(1, std::memory_order_relaxed);
  g_graph_launches.fetch_add(1, std::memory_order_relaxed);
  if (captured) g_graph_captures.fetch_add(1, std::memory_order_relaxed);
}

void set_ops_quiet(bool quiet) { t_ops_quiet = quiet; }

TransferCounters transfer_counters() {
  TransferCounters c;
  c.uploads = g_uploads.load(std::memory_order_relaxed);
  c.upload_bytes = g_upload_bytes.load(std::memory_order_relaxed);
  c.readbacks = g_readbacks.load(std::memory_order_relaxed);
  c.readback_bytes = g_readback_bytes.load(std::memory_order_relaxed);
  c.blocking_waits = g_waits.load(std::memory_order_relaxed);
  c.device_ops = g_ops.load(std::memory_order_relaxed);
  c.graph_launches = g_graph_launches.load(std::memory_order_relaxed);
  c.graph_captures = g_graph_captures.load(std::memory_order_relaxed);
  return c;
}

}  // namespace specdec

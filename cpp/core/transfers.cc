#include "transfers.h"

#include <atomic>

namespace specdec {

namespace {
std::atomic<uint64_t> g_uploads{0}, g_upload_bytes{0}, g_readbacks{0}, g_readback_bytes{0}, g_waits{0}, g_ops{0};
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

void note_op() { g_ops.fetch_add(1, std::memory_order_relaxed); }

TransferCounters transfer_counters() {
  TransferCounters c;
  c.uploads = g_uploads.load(std::memory_order_relaxed);
  c.upload_bytes = g_upload_bytes.load(std::memory_order_relaxed);
  c.readbacks = g_readbacks.load(std::memory_order_relaxed);
  c.readback_bytes = g_readback_bytes.load(std::memory_order_relaxed);
  c.blocking_waits = g_waits.load(std::memory_order_relaxed);
  c.device_ops = g_ops.load(std::memory_order_relaxed);
  return c;
}

}  // namespace specdec

// Host <-> device traffic and blocking waits, counted process-wide.
//
// A CUDA step is judged by how often it makes the host wait for the device. The counting points
// are the ones both backends share (Tensor's host copies, the dispatchers' validation), so the CPU
// backend counts exactly where the CUDA backend would copy or wait: a read to the host is always a
// blocking wait; an upload is one only when it could not go through the pinned staging ring
// (cuda/runtime.cu). Tests on any machine assert the structure of a step with these numbers.
#pragma once
#include <cstddef>
#include <cstdint>

namespace specdec {

struct TransferCounters {
  uint64_t uploads = 0;         // host -> device copies
  uint64_t upload_bytes = 0;
  uint64_t readbacks = 0;       // device -> host copies (each one waits for the device)
  uint64_t readback_bytes = 0;
  uint64_t blocking_waits = 0;  // readbacks + synchronous uploads + explicit stream syncs
  uint64_t device_ops = 0;      // ops dispatched to a backend: on CUDA one kernel launch each (a
                                // split-KV attention adds its merge), on the CPU one parallel loop;
                                // a CUDA graph launch counts as one
  uint64_t graph_launches = 0;  // CUDA graphs launched (each replays a forward's layer stack)
  uint64_t graph_captures = 0;  // CUDA graphs captured
};

void note_upload(size_t bytes, bool blocking);
void note_readback(size_t bytes);
void note_wait();
void note_op();
void note_graph_launch(bool captured);
// While a graph body is traced or captured its ops launch nothing by themselves: this thread's
// note_op() calls are not counted (the graph's launch is, once).
void set_ops_quiet(bool quiet);
TransferCounters transfer_counters();

}  // namespace specdec

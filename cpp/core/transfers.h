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
                                // split-KV attention adds its merge), on the CPU one parallel loop
};

void note_upload(size_t bytes, bool blocking);
void note_readback(size_t bytes);
void note_wait();
void note_op();
TransferCounters transfer_counters();

}  // namespace specdec

// Process-wide persistent thread pool for the CPU backend.
//
// Workers are started once (on first use) and sleep between jobs, so a parallel op costs a wakeup,
// not a thread spawn. parallel_for splits [0, n) into contiguous chunks that the workers and the
// calling thread claim in turn; every item runs exactly once, on one thread, so as long as an
// item's arithmetic depends only on its own inputs the results do not depend on the thread count.
//
// Size: hardware_concurrency() threads in all (the caller + that minus one workers), or
// SPECDEC_CPU_THREADS (>= 1; 1 means everything runs inline) when set.
//
// Concurrency: one job at a time. A caller that finds the pool busy (another libuv worker running
// a model forward, or a nested parallel_for from inside a chunk) runs its job inline instead of
// waiting, so it can neither deadlock nor stall behind someone else's job.
#pragma once
#include <cstdint>
#include <type_traits>

namespace specdec {
namespace cpu {

// Threads a parallel_for may use (workers + the caller), >= 1.
int pool_threads();

// Jobs since the pool started: handed to the workers, and run inline because they were smaller
// than kWakeWork while every worker slept.
struct PoolStats {
  uint64_t dispatched = 0, small_inline = 0;
};
PoolStats pool_stats();

// A word that lends one core to the calling thread's other work while it is nonzero: parallel_for
// calls that other threads start meanwhile use one thread fewer (on a 2-thread pool: they run
// inline on their caller); the lending thread's own calls use every thread. JavaScript writes it
// through an Int32Array (cpuLendFlag), so lending costs no call into the addon. The engine lends
// while its JavaScript thread hands out a step's tokens: otherwise that thread preempts a compute
// thread and every fork-join barrier of the forward waits for it.
int32_t* lend_flag();

// Whether a core is lent now.
bool core_lent();

// A reference to a callable fn(begin, end) that parallel_for calls: it does not own or copy the
// callable (a std::function made from a lambda with more than two captures allocates, and every
// op of a forward makes one), so the callable must outlive the call, as a lambda argument does.
class RangeFn {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, RangeFn>>>
  RangeFn(const F& f)  // NOLINT: implicit, so call sites pass a lambda
      : obj_(&f), call_([](const void* o, int64_t b, int64_t e) { (*static_cast<const F*>(o))(b, e); }) {}
  void operator()(int64_t b, int64_t e) const { call_(obj_, b, e); }

 private:
  const void* obj_;
  void (*call_)(const void*, int64_t, int64_t);
};

// Runs fn(begin, end) over contiguous chunks covering [0, n) and returns when all are done.
// grain = fewest items worth a task of their own: when n < 2 * grain (or the pool has one thread,
// or is busy) everything runs inline as fn(0, n). `work`: the whole job's work in grain_for's
// units (multiply-adds), when the caller knows it; a job of less than kWakeWork runs inline too
// when every worker sleeps (it would wait for a wakeup longer than it runs), and on the workers
// when one is still spinning after the previous job. An exception thrown by fn is rethrown here
// (the first one; the remaining chunks are skipped).
void parallel_for(int64_t n, int64_t grain, RangeFn fn, double work = -1.0);

// Work below which a job does not wake sleeping workers: ~10-20 us on one core. Waking a worker
// is a futex call and, on a VM, an interrupt to an idle virtual CPU: measured on a 2-vCPU Zen 5,
// the embedded draft model's k = 4 steps took 9.9-10.2 ms a run with the worker woken for its
// 0.1-0.5M multiply-add matmuls, 9.1-9.2 ms with one thread (bench/README.md, 2026-12-04).
constexpr double kWakeWork = 1048576.0;

// grain for items of `work_per_item` units (e.g. multiply-adds) so that a task gets at least
// min_work_per_task units: below that the wakeup costs more than the work.
inline int64_t grain_for(double work_per_item, double min_work_per_task = 131072.0) {
  if (!(work_per_item > 0)) return INT64_MAX / 4;
  const double g = min_work_per_task / work_per_item;
  return g < 1.0 ? 1 : (g > 1e15 ? INT64_MAX / 4 : static_cast<int64_t>(g + 0.999999));
}

}  // namespace cpu
}  // namespace specdec

// Persistent thread pool of the CPU backend (see thread_pool.h for the contract).
//
// One job at a time lives on the dispatching caller's stack. Workers join it under the pool mutex
// (so a job is never joined after the caller took it down), claim chunks with an atomic counter,
// and leave; the caller runs chunks too, then unpublishes the job and spins until every worker
// that joined has left. After a job, workers spin briefly before sleeping: a model forward issues
// many small ops back to back, and a futex wakeup per op would cost more than the op.
#include "thread_pool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SPECDEC_CPU_RELAX() _mm_pause()
#else
#define SPECDEC_CPU_RELAX() std::this_thread::yield()
#endif

namespace specdec {
namespace cpu {

namespace {

using Fn = RangeFn;

struct Job {
  const Fn* fn = nullptr;
  int64_t n = 0, chunk = 0, chunks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::atomic<int> active{0};  // workers inside this job (they join under Pool::mu)
  int max_workers = 0;         // workers that may join (fewer while a core is lent)
  std::exception_ptr error;    // first failure; guarded by Pool::mu
};

// True while this thread runs chunks of a job: a nested parallel_for then runs inline (the pool
// is taken by the outer job, and locking `dispatch` again from its owner would be undefined).
thread_local bool t_in_job = false;

class Pool {
 public:
  Pool() {
    unsigned hw = std::max(1u, std::thread::hardware_concurrency());
    int64_t n = hw;
    if (const char* env = std::getenv("SPECDEC_CPU_THREADS")) {
      char* end = nullptr;
      long v = std::strtol(env, &end, 10);
      if (end != env && v >= 1) n = v;
    }
    threads_ = static_cast<int>(std::min<int64_t>(n, 256));
    // Workers are detached and the pool is never destroyed: tearing threads down in static
    // destructors at process exit could hang behind a job another thread is still running.
    for (int i = 1; i < threads_; ++i) std::thread([this] { worker(); }).detach();
  }

  int threads() const { return threads_; }
  PoolStats stats() const {
    return {stats_.dispatched.load(std::memory_order_relaxed), stats_.small_inline.load(std::memory_order_relaxed)};
  }

  // The lend word: JavaScript adds and removes lends through an Int32Array over it (no call into
  // the addon); the thread that asked for it last is the lender.
  int32_t* lend_flag() {
    lender_.store(std::this_thread::get_id(), std::memory_order_relaxed);
    return &lend_flag_;
  }
  bool lent() const { return __atomic_load_n(&lend_flag_, __ATOMIC_RELAXED) != 0; }

  void run(int64_t n, int64_t grain, const Fn& fn, double job_work) {
    grain = std::max<int64_t>(grain, 1);
    if (threads_ <= 1 || t_in_job || n < 2 * grain) return fn(0, n);
    // A small job does not wake sleeping workers (see kWakeWork); a spinning one takes it.
    if (job_work >= 0.0 && job_work < kWakeWork && sleeping_.load(std::memory_order_relaxed) >= threads_ - 1) {
      stats_.small_inline.fetch_add(1, std::memory_order_relaxed);
      return fn(0, n);
    }
    std::unique_lock<std::mutex> dispatch(dispatch_, std::try_to_lock);
    if (!dispatch.owns_lock()) return fn(0, n);  // another caller's job is running: don't wait

    // A lent core serves the lending thread's other work; a job that thread runs itself (a small
    // model's forward on the JavaScript thread) has it back.
    const bool lent_away = lent() && lender_.load(std::memory_order_relaxed) != std::this_thread::get_id();
    const int workers = threads_ - 1 - (lent_away ? 1 : 0);
    if (workers <= 0) return fn(0, n);
    // A few chunks per thread so a thread slowed by the rest of the machine does not hold
    // everyone up; contiguous so each thread streams its own slice of the weights.
    constexpr int64_t kChunksPerThread = 4;
    const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(n / grain, (workers + 1) * kChunksPerThread));
    stats_.dispatched.fetch_add(1, std::memory_order_relaxed);
    Job job;
    job.max_workers = workers;
    job.fn = &fn;
    job.n = n;
    job.chunk = (n + tasks - 1) / tasks;
    job.chunks = (n + job.chunk - 1) / job.chunk;
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &job;
      gen_.store(gen_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    }
    work_cv_.notify_all();
    work(job);
    {
      std::lock_guard<std::mutex> lk(mu_);  // no worker can join after this
      job_ = nullptr;
    }
    // Workers still inside are finishing their last chunk: spin (sleeping would cost a futex
    // wakeup, more than a small op), yielding in case one of them was preempted.
    for (int i = 0; job.active.load(std::memory_order_acquire) != 0; ++i) {
      if (i < 4096) SPECDEC_CPU_RELAX(); else std::this_thread::yield();
    }
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  // Claims and runs chunks until none are left (also called by the dispatching thread).
  void work(Job& job) {
    t_in_job = true;
    for (int64_t c; (c = job.next.fetch_add(1, std::memory_order_relaxed)) < job.chunks;) {
      if (job.failed.load(std::memory_order_relaxed)) continue;
      const int64_t b = c * job.chunk, e = std::min(job.n, b + job.chunk);
      try {
        (*job.fn)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!job.error) job.error = std::current_exception();
        job.failed.store(true, std::memory_order_relaxed);
      }
    }
    t_in_job = false;
  }

  void worker() {
    uint64_t seen = 0;
    for (;;) {
      // Spin ~100 us for the next job before sleeping on the condition variable.
      const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(100);
      for (int i = 0; gen_.load(std::memory_order_acquire) == seen; ++i) {
        SPECDEC_CPU_RELAX();
        if ((i & 63) == 63 && std::chrono::steady_clock::now() > spin_until) break;
      }
      Job* job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        sleeping_.fetch_add(1, std::memory_order_relaxed);
        work_cv_.wait(lk, [&] { return gen_.load(std::memory_order_relaxed) != seen; });
        sleeping_.fetch_sub(1, std::memory_order_relaxed);
        seen = gen_.load(std::memory_order_relaxed);
        job = job_;
        if (!job) continue;  // woke after that job was already finished
        if (job->active.load(std::memory_order_relaxed) >= job->max_workers) continue;
        job->active.fetch_add(1, std::memory_order_relaxed);
      }
      work(*job);
      job->active.fetch_sub(1, std::memory_order_release);  // the last touch of *job
    }
  }

  int threads_ = 1;
  alignas(64) int32_t lend_flag_ = 0;  // nonzero: a core is lent to lender_
  std::atomic<std::thread::id> lender_{};
  std::mutex dispatch_;  // held by the one caller whose job is running
  std::mutex mu_;        // guards job_, joining a job, Job::error and generation changes
  std::condition_variable work_cv_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> sleeping_{0};  // workers past their spin, waiting on work_cv_ (or about to)
  struct {
    std::atomic<uint64_t> dispatched{0}, small_inline{0};
  } stats_;
  Job* job_ = nullptr;
};

Pool& pool() {
  static Pool* p = new Pool();  // intentionally leaked, see the constructor
  return *p;
}

}  // namespace

int pool_threads() { return pool().threads(); }

PoolStats pool_stats() { return pool().stats(); }

int32_t* lend_flag() { return pool().lend_flag(); }

bool core_lent() { return pool().lent(); }

void parallel_for(int64_t n, int64_t grain, RangeFn fn, double work) {
  if (n <= 0) return;
  pool().run(n, grain, fn, work);
}

}  // namespace cpu
}  // namespace specdec

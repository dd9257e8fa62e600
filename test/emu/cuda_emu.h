// Host stand-ins for the CUDA pieces a kernel header uses (cuda/gemm_tc.cuh, cuda/attention_tc.cuh, ...), so that its indexing,
// staging, bounds and synchronisation can run and be checked on a machine without a GPU.
//
// A block's threads are fibers on the calling thread, resumed at barriers in an order shuffled per
// sweep; blocks run one after another. __syncthreads / __syncwarp are barriers, so a missing one shows
// up as a wrong result, or as a data race under ThreadSanitizer: fiber switches carry no
// happens-before edge, only a barrier does (annotated). One OS thread per emulated thread cost 3x
// the run time in context switches on a 2-core machine (hundreds of threads per block).
// A wmma fragment holds a whole 16x16 tile and lane 0 of the warp does the work of the warp-wide
// operations (the other lanes' fragments are never read); loads and stores check the
// alignment and leading-dimension rules the real ones have. The arithmetic (bf16 rounding, f32
// accumulation of exact bf16 products) follows the hardware's contract, not its exact adder.
#pragma once
#include <math.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};
inline Dim3 blockDim, gridDim;

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

namespace emu {

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "emulation: %s\n", what);
  std::abort();
}

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline std::vector<std::array<uint64_t, 32>> warp_slots;  // shuffle exchange, one slot per lane
// ldmatrix / mma.sync exchange: a lane's fragments, in two sets used alternately (each lane counts its
// calls; a warp's lanes make the same calls), so one barrier per call keeps a set from being refilled
// before every lane has read it: refilling needs the next call's barrier, which every reader reaches
// only after reading.
inline std::vector<std::array<std::array<std::array<uint32_t, 10>, 32>, 2>> warp_regs;
inline unsigned char* dyn_smem = nullptr;

template <typename T>
T* dynamic_smem() {
  return reinterpret_cast<T*>(dyn_smem);
}

// cp.async (cuda_pipeline.h's primitives): a thread's copies are queued and land only when
// __pipeline_wait_prior lets their group complete. Reading a buffer before its wait therefore reads
// what was there before (a wrong result), and reading another thread's copies without a barrier after
// its wait is a data race (ThreadSanitizer).
struct PendingCopy {
  void* dst;
  const void* src;
  size_t bytes;
};

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define EMU_TSAN 1
#endif
#endif
}  // namespace emu
#ifdef EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef EMU_TSAN
#include <sanitizer/tsan_interface.h>
#endif
namespace emu {

// Happens-before edges for ThreadSanitizer (no-ops otherwise): a lane releases what it wrote at a
// barrier, and acquires the others' writes when it leaves.
inline void hb_release([[maybe_unused]] void* at) {
#ifdef EMU_TSAN
  __tsan_release(at);
#endif
}
inline void hb_acquire([[maybe_unused]] void* at) {
#ifdef EMU_TSAN
  __tsan_acquire(at);
#endif
}

// Fiber contexts. On x86-64 a switch saves the callee-saved registers and the FP control words on
// the stack and swaps stack pointers (AddressSanitizer intercepts swapcontext and clears the shadow of
// the whole target stack on every switch: slow, and it drops the redzones of the suspended frames);
// elsewhere ucontext.
#if defined(__x86_64__)
extern "C" void emu_switch_stack(void** save_sp, void* load_sp);
asm(R"(
.text
.globl emu_switch_stack
.type emu_switch_stack,@function
emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size emu_switch_stack, .-emu_switch_stack
.section .note.GNU-stack,"",@progbits
.text
)");
struct Context {
  void* sp = nullptr;
};
// A new context starts in entry() (which never returns) on the given stack.
inline void make_context(Context& c, unsigned char* stack, size_t size, void (*entry)()) {
  auto* top = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t{15});
  *--top = 0;                                   // entry's return address: none (keeps its frame aligned)
  *--top = reinterpret_cast<uint64_t>(entry);   // where the switch's ret goes
  for (int r = 0; r < 6; ++r) *--top = 0;       // rbp rbx r12 r13 r14 r15
  uint32_t mxcsr = 0;
  uint16_t fpcw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  *--top = static_cast<uint64_t>(mxcsr) | static_cast<uint64_t>(fpcw) << 32;
  c.sp = top;
}
// tsan_to: ThreadSanitizer's fiber for `to`, switched to after reading `to` (the read belongs to the
// fiber that saved it there: a fiber reused across launches does not share the creator's history).
inline void switch_context(Context& from, Context& to, [[maybe_unused]] void* tsan_to) {
  void* sp = to.sp;
#ifdef EMU_TSAN
  __tsan_switch_to_fiber(tsan_to, __tsan_switch_to_fiber_no_sync);
#endif
  emu_switch_stack(&from.sp, sp);
}
#else
struct Context {
  ucontext_t uc{};
};
inline void make_context(Context& c, unsigned char* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
inline void switch_context(Context& from, Context& to, [[maybe_unused]] void* tsan_to) {
#ifdef EMU_TSAN
  __tsan_switch_to_fiber(tsan_to, __tsan_switch_to_fiber_no_sync);
#endif
  swapcontext(&from.uc, &to.uc);
}
#endif

// One emulated thread: its indices and per-thread state, and its fiber. Scheduling flags are
// atomics (relaxed: one OS thread runs every fiber) so that ThreadSanitizer sees no race in the
// scheduler itself, only in the kernel's memory.
struct Lane {
  Dim3 tid, bid;
  unsigned regs_calls = 0;                           // ldmatrix / mma calls (see warp_regs)
  std::vector<PendingCopy> copies_open;              // cp.async since the last commit
  std::vector<std::vector<PendingCopy>> copy_groups; // committed, oldest first
  Context ctx;
  unsigned char* stack = nullptr;
  std::atomic<bool> done{false};
  // The barrier it waits at, and that barrier's generation then: runnable once the generation moved.
  std::atomic<class Barrier*> waiting_on{nullptr};
  std::atomic<unsigned> wait_gen{0};
  void* tsan_fiber = nullptr;
  void* fake_stack = nullptr;  // ASan's, while switched out
  const void* from_bottom = nullptr;  // the scheduler's stack, for switching back (ASan)
  size_t from_size = 0;
};

struct Scheduler {
  Context ctx;
  std::atomic<Lane*> current{nullptr};
  void* tsan_fiber = nullptr;
  std::vector<std::unique_ptr<Lane>> lanes;
  std::vector<unsigned char*> stacks;  // kept for the next launch
  std::vector<void*> tsan_fibers;      // likewise (ThreadSanitizer's cost grows with the fibers it ever saw)
  uint64_t order_state = 0x9e3779b97f4a7c15ull;
};
inline thread_local Scheduler sched;
constexpr size_t kLaneStack = 512 * 1024;

inline Lane* self() {
  Lane* l = sched.current.load(std::memory_order_relaxed);
  if (!l) die("a device function ran outside a launch");
  return l;
}

// Switches from lane l back to the scheduler; `last`: for good (l's fiber ends).
inline void to_scheduler(Lane& l, bool last = false) {
#ifdef EMU_ASAN
  __sanitizer_start_switch_fiber(last ? nullptr : &l.fake_stack, l.from_bottom, l.from_size);
#else
  (void)last;
#endif
  switch_context(l.ctx, sched.ctx, sched.tsan_fiber);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(l.fake_stack, &l.from_bottom, &l.from_size);
#endif
}

// A barrier of n lanes: the last to arrive moves the generation on; the others switch out until it
// has moved. Only relaxed atomics are shared between lanes here, so the barrier adds no happens-before
// edge of its own beyond the annotated one.
class Barrier {
 public:
  explicit Barrier(unsigned n) : n_(n) {}
  void arrive_and_wait() {
    Lane& l = *self();
    const unsigned gen = gen_.load(std::memory_order_relaxed);
    hb_release(&sync_[gen % 2]);
    if (count_.fetch_add(1, std::memory_order_relaxed) + 1 == n_) {
      count_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_relaxed);
    } else {
      l.wait_gen.store(gen, std::memory_order_relaxed);
      l.waiting_on.store(this, std::memory_order_relaxed);
      to_scheduler(l);
      l.waiting_on.store(nullptr, std::memory_order_relaxed);
    }
    hb_acquire(&sync_[gen % 2]);
  }
  unsigned generation() const { return gen_.load(std::memory_order_relaxed); }

 private:
  const unsigned n_;
  std::atomic<unsigned> count_{0}, gen_{0};
  char sync_[2] = {0, 0};  // happens-before addresses, one per generation parity
};

inline Barrier* block_barrier = nullptr;
inline std::vector<std::unique_ptr<Barrier>> warp_barriers;
inline void* launch_body = nullptr;  // the launch's per-lane function (type-erased)
inline void (*launch_run)(void*) = nullptr;
inline char launch_sync[2];           // start and end of a launch (happens-before)

inline void lane_entry() {
  Lane& l = *self();
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &l.from_bottom, &l.from_size);
#endif
  hb_acquire(&launch_sync[0]);
  launch_run(launch_body);
  l.done.store(true, std::memory_order_relaxed);
  hb_release(&launch_sync[1]);  // after the lane's last access to its Lane (freed by the scheduler)
  to_scheduler(l, true);
  die("a finished lane was resumed");
}

// Runs kernel() once per thread of every block of the grid: one fiber per thread of a block, which
// walks the blocks in order, with a barrier between blocks (shared memory is reused). Dynamic shared
// memory (smem_bytes) is filled with 0xff bytes (NaN as floats) before each block, so a read of a
// cell the block never wrote shows up in the results. Lanes that wait at a barrier no other lane can
// reach are a deadlock, reported (a GPU would hang).
template <typename F>
void launch(Dim3 grid, unsigned threads, size_t smem_bytes, F kernel) {
  if (threads % 32 != 0) die("block size must be a multiple of 32");
  if (sched.current.load(std::memory_order_relaxed)) die("a launch from inside a kernel");
  gridDim = grid;
  blockDim = Dim3{threads, 1, 1};
  std::vector<unsigned char> dyn(smem_bytes + 128);
  unsigned char* base = dyn.data() + (128 - reinterpret_cast<uintptr_t>(dyn.data()) % 128) % 128;
  dyn_smem = base;
  Barrier block(threads);
  block_barrier = &block;
  warp_barriers.clear();
  for (unsigned w = 0; w < threads / 32; ++w) warp_barriers.push_back(std::make_unique<Barrier>(32));
  warp_slots.assign(threads / 32, {});
  warp_regs.assign(threads / 32, {});
  auto body = [&] {
    Lane& l = *self();
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          if (l.tid.x == 0) std::memset(base, 0xff, smem_bytes);
          block.arrive_and_wait();
          l.bid = Dim3{bx, by, bz};
          kernel();
          if (!l.copies_open.empty() || !l.copy_groups.empty()) die("a block ended with cp.async copies not waited for");
          block.arrive_and_wait();
        }
  };
  launch_body = &body;
  launch_run = [](void* b) { (*static_cast<decltype(body)*>(b))(); };
#ifdef EMU_TSAN
  if (!sched.tsan_fiber) sched.tsan_fiber = __tsan_get_current_fiber();  // set once: finished lanes read it last
#endif
  auto& lanes = sched.lanes;
  lanes.clear();
  for (unsigned t = 0; t < threads; ++t) {
    auto l = std::make_unique<Lane>();
    l->tid = Dim3{t, 0, 0};
    if (sched.stacks.size() <= t) {
      void* m = mmap(nullptr, kLaneStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED) die("mmap of a lane stack failed");
      mprotect(m, 4096, PROT_NONE);  // a guard page: an overflowing lane faults
      sched.stacks.push_back(static_cast<unsigned char*>(m));
    }
    l->stack = sched.stacks[t];
    make_context(l->ctx, l->stack, kLaneStack, lane_entry);
#ifdef EMU_TSAN
    if (sched.tsan_fibers.size() <= t) sched.tsan_fibers.push_back(__tsan_create_fiber(0));
    l->tsan_fiber = sched.tsan_fibers[t];
#endif
    lanes.push_back(std::move(l));
  }
  hb_release(&launch_sync[0]);
  // Each sweep resumes every runnable lane once, in a shuffled order, so no kernel can rely on
  // which thread reaches a barrier first.
  std::vector<unsigned> order(threads);
  for (unsigned t = 0; t < threads; ++t) order[t] = t;
  for (unsigned finished = 0; finished < threads;) {
    for (unsigned t = threads - 1; t > 0; --t) {
      sched.order_state ^= sched.order_state << 13, sched.order_state ^= sched.order_state >> 7, sched.order_state ^= sched.order_state << 17;
      std::swap(order[t], order[sched.order_state % (t + 1)]);
    }
    bool ran = false;
    for (unsigned t : order) {
      Lane& l = *lanes[t];
      if (l.done.load(std::memory_order_relaxed)) continue;
      const Barrier* at = l.waiting_on.load(std::memory_order_relaxed);
      if (at && at->generation() == l.wait_gen.load(std::memory_order_relaxed)) continue;
      ran = true;
      sched.current.store(&l, std::memory_order_relaxed);
      void* fake = nullptr;
#ifdef EMU_ASAN
      __sanitizer_start_switch_fiber(&fake, l.stack, kLaneStack);
#endif
      switch_context(sched.ctx, l.ctx, l.tsan_fiber);
#ifdef EMU_ASAN
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
      sched.current.store(nullptr, std::memory_order_relaxed);
      if (l.done.load(std::memory_order_relaxed)) ++finished;
    }
    if (!ran) die("deadlock: every unfinished thread waits at a barrier the others never reach (a __syncthreads / __syncwarp in divergent code?)");
  }
  hb_acquire(&launch_sync[1]);
  lanes.clear();
  block_barrier = nullptr;
  dyn_smem = nullptr;
}
template <typename F>
void launch(Dim3 grid, unsigned threads, F kernel) {
  launch(grid, threads, 0, kernel);
}

}  // namespace emu

#define threadIdx (::emu::self()->tid)
#define blockIdx (::emu::self()->bid)

namespace emu {
inline unsigned lane() { return threadIdx.x % 32; }

}  // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

inline void __pipeline_memcpy_async(void* dst, const void* src, size_t bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) emu::die("cp.async copies 4, 8 or 16 bytes");
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || reinterpret_cast<uintptr_t>(src) % bytes != 0)
    emu::die("cp.async: a misaligned address");
  emu::self()->copies_open.push_back({dst, src, bytes});
}
inline void __pipeline_commit() {
  emu::self()->copy_groups.push_back(std::move(emu::self()->copies_open));
  emu::self()->copies_open.clear();
}
inline void __pipeline_wait_prior(size_t newest_left) {
  while (emu::self()->copy_groups.size() > newest_left) {
    for (const auto& c : emu::self()->copy_groups.front()) std::memcpy(c.dst, c.src, c.bytes);
    emu::self()->copy_groups.erase(emu::self()->copy_groups.begin());
  }
}
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_barriers[threadIdx.x / 32]->arrive_and_wait(); }

// Warp shuffles, full warps only (every caller here passes 0xffffffff): each lane posts its value,
// the warp meets, each reads its source lane's slot, the warp meets again before slots are reused.
namespace emu {
template <typename T>
T shuffle_from(unsigned mask, T v, unsigned src) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes here");
  if (mask != 0xffffffffu) die("the emulation supports full-warp shuffles only");
  const unsigned w = threadIdx.x / 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  warp_slots[w][threadIdx.x % 32] = bits;
  __syncwarp();
  const uint64_t got = warp_slots[w][src % 32];
  __syncwarp();
  T r;
  std::memcpy(&r, &got, sizeof(T));
  return r;
}
}  // namespace emu
template <typename T>
T __shfl_sync(unsigned mask, T v, int src) {
  return emu::shuffle_from(mask, v, static_cast<unsigned>(src));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  return emu::shuffle_from(mask, v, (threadIdx.x % 32) ^ static_cast<unsigned>(lane_mask));
}

template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta) {
  const unsigned lane = threadIdx.x % 32;
  return emu::shuffle_from(mask, v, lane >= delta ? lane - delta : lane);  // lanes below delta keep their own
}
// The lanes whose value equals this lane's.
template <typename T>
unsigned __match_any_sync(unsigned mask, T v) {
  static_assert(sizeof(T) <= 8, "match moves at most 8 bytes here");
  if (mask != 0xffffffffu) emu::die("the emulation supports full-warp matches only");
  const unsigned w = threadIdx.x / 32;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  emu::warp_slots[w][threadIdx.x % 32] = bits;
  __syncwarp();
  unsigned peers = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (emu::warp_slots[w][l] == bits) peers |= 1u << l;
  __syncwarp();
  return peers;
}
// Whether any lane's predicate holds.
inline bool __any_sync(unsigned mask, bool pred) {
  if (mask != 0xffffffffu) emu::die("the emulation supports full-warp votes only");
  const unsigned w = threadIdx.x / 32;
  emu::warp_slots[w][threadIdx.x % 32] = pred ? 1 : 0;
  __syncwarp();
  bool any = false;
  for (unsigned l = 0; l < 32; ++l) any = any || emu::warp_slots[w][l] != 0;
  __syncwarp();
  return any;
}
inline int __ffs(int x) { return __builtin_ffs(x); }

// Atomics on shared or global memory (atomic, so ThreadSanitizer sees them as such between lanes).
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) {
  std::atomic_ref<unsigned long long> a(*p);
  unsigned long long cur = a.load();
  while (cur < v && !a.compare_exchange_weak(cur, v)) {
  }
  return cur;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// Explicitly rounded f32 arithmetic (the host compiler does not contract without -mfma).
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
using std::max;
using std::min;

// bf16 and f16 as bit patterns, converted with round-to-nearest-even as the CUDA intrinsics do.
struct __nv_bfloat16;
struct __half;
__nv_bfloat16 __float2bfloat16_rn(float f);
__half __float2half_rn(float f);

struct __nv_bfloat16 {
  uint16_t bits = 0;
  __nv_bfloat16() = default;
  explicit __nv_bfloat16(float f) : bits(__float2bfloat16_rn(f).bits) {}
  static __nv_bfloat16 from_bits(uint16_t b) {
    __nv_bfloat16 v;
    v.bits = b;
    return v;
  }
};
struct __half {
  uint16_t bits = 0;
  __half() = default;
  explicit __half(float f) : bits(__float2half_rn(f).bits) {}
  static __half from_bits(uint16_t b) {
    __half v;
    v.bits = b;
    return v;
  }
};

inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 v) { return v.bits; }
inline float __bfloat162float(__nv_bfloat16 v) { return emu::bits_f32(static_cast<uint32_t>(v.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u = emu::f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16::from_bits(static_cast<uint16_t>((u >> 16) | 0x40u));
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16::from_bits(static_cast<uint16_t>(u >> 16));
}

inline float __half2float(__half v) {
  const uint32_t sign = (v.bits >> 15) & 1u, e = (v.bits >> 10) & 0x1fu, m = v.bits & 0x3ffu;
  float mag;
  if (e == 0) mag = std::ldexp(static_cast<float>(m), -24);
  else if (e == 31) mag = m ? NAN : INFINITY;
  else mag = std::ldexp(static_cast<float>(m | 0x400u), static_cast<int>(e) - 25);
  return sign ? -mag : mag;
}
inline __half __float2half_rn(float f) {
  uint32_t u = emu::f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u >= 0x7f800000u) return __half::from_bits(sign | (u > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (u >= 0x477ff000u) return __half::from_bits(sign | 0x7c00u);  // |f| >= 65520 rounds to inf
  if (u < 0x38800000u) {                                             // below 2^-14: a subnormal half
    const float units = std::nearbyint(emu::bits_f32(u) * 16777216.0f);  // exact scaling, then RNE
    return __half::from_bits(static_cast<uint16_t>(sign | static_cast<uint32_t>(units)));
  }
  u += 0xfffu + ((u >> 13) & 1u);
  u -= 112u << 23;  // exponent bias 127 -> 15
  return __half::from_bits(static_cast<uint16_t>(sign | (u >> 13)));
}

// ldmatrix and mma.sync (cuda/mma.cuh), as warp collectives over per-lane registers in the PTX
// fragment layouts, so a kernel's fragment indexing is checked as written. Lane L: g = L / 4, q = L % 4.
namespace emu {
inline uint16_t bits16(const void* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
// ldmatrix.sync.aligned.m8n8.x{n}[.trans].shared.b16: lanes 8i .. 8i+7 give the row addresses of
// matrix i (16-byte aligned rows of 8 elements); register i of lane L holds matrix i's elements
// (g, 2q) and (g, 2q + 1), or with .trans (2q, g) and (2q + 1, g); the first in the low half.
inline void ldmatrix(int n, bool trans, uint32_t* r, const void* addr) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  if (l < 8u * static_cast<unsigned>(n) && reinterpret_cast<uintptr_t>(addr) % 16 != 0) die("ldmatrix: a row address is not 16-byte aligned");
  auto& set = warp_regs[w][self()->regs_calls++ % 2];
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  set[l][0] = static_cast<uint32_t>(a), set[l][1] = static_cast<uint32_t>(static_cast<uint64_t>(a) >> 32);
  __syncwarp();
  const unsigned g = l / 4, q = l % 4;
  for (int i = 0; i < n; ++i) {
    auto row = [&](unsigned k) {
      const auto& s = set[8u * i + k];
      return reinterpret_cast<const unsigned char*>(static_cast<uintptr_t>(s[0] | static_cast<uint64_t>(s[1]) << 32));
    };
    const uint16_t lo = trans ? bits16(row(2 * q) + 2 * g) : bits16(row(g) + 4 * q);
    const uint16_t hi = trans ? bits16(row(2 * q + 1) + 2 * g) : bits16(row(g) + 4 * q + 2);
    r[i] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
  }
}
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, d = a b + c. Fragments: a0 (g, 2q..), a1
// (g + 8, 2q..), a2 (g, 8 + 2q..), a3 (g + 8, 8 + 2q..); b0 (k 2q.., n g), b1 (k 8 + 2q.., n g); c/d
// (g, 2q), (g, 2q + 1), (g + 8, 2q), (g + 8, 2q + 1). The sum is formed as the wmma stand-in forms it
// (c, then the 16 exact products in k order, in double, rounded once), so a kernel on mma.sync and one
// on wmma with the same chains give the same bits here.
inline void mma_bf16_16816(float* d, const uint32_t* a, uint32_t b0, uint32_t b1, const float* c) {
  const unsigned w = threadIdx.x / 32, l = threadIdx.x % 32;
  auto& set = warp_regs[w][self()->regs_calls++ % 2];
  auto& mine = set[l];
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b0, mine[5] = b1;
  for (int i = 0; i < 4; ++i) std::memcpy(&mine[6 + i], &c[i], 4);
  __syncwarp();
  auto half = [](uint32_t v, unsigned k) { return __bfloat162float(__nv_bfloat16::from_bits(static_cast<uint16_t>(k % 2 ? v >> 16 : v))); };
  auto A = [&](unsigned i, unsigned k) { return half(set[(i % 8) * 4 + (k % 8) / 2][(i >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k); };
  auto B = [&](unsigned k, unsigned j) { return half(set[j * 4 + (k % 8) / 2][4 + (k >= 8 ? 1 : 0)], k); };
  const unsigned g = l / 4, q = l % 4;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const unsigned i = g + (e >= 2 ? 8 : 0), j = 2 * q + e % 2;
    double s = c[e];
    for (unsigned k = 0; k < 16; ++k) s += static_cast<double>(A(i, k)) * B(k, j);
    out[e] = static_cast<float>(s);
  }
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}
}  // namespace emu

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation covers m16n16k16 only");
  static constexpr int num_elements = 256;  // the whole tile; only lane 0's copy is meaningful
  float x[256];
};

inline void check_ptr(const void* p, unsigned ldm, const char* op) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    std::fprintf(stderr, "emulation: %s: pointer %p is not 256-bit aligned\n", op, p);
    std::abort();
  }
  if (ldm % 8 != 0) {
    std::fprintf(stderr, "emulation: %s: ldm %u is not a multiple of 8 (16-bit) / 4 (32-bit) elements\n", op, ldm);
    std::abort();
  }
}

template <typename Use, typename T, typename Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float v) {
  for (float& e : f.x) e = v;
}

// A: element (i, k) at p[i * ldm + k] (row major).
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major>& f, const __nv_bfloat16* p,
                             unsigned ldm) {
  check_ptr(p, ldm, "load_matrix_sync(matrix_a)");
  if (emu::lane() != 0) return;
  for (int i = 0; i < 16; ++i)
    for (int k = 0; k < 16; ++k) f.x[i * 16 + k] = __bfloat162float(p[i * ldm + k]);
}
// B: element (k, j) at p[j * ldm + k] (column major).
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __nv_bfloat16, col_major>& f, const __nv_bfloat16* p,
                             unsigned ldm) {
  check_ptr(p, ldm, "load_matrix_sync(matrix_b)");
  if (emu::lane() != 0) return;
  for (int k = 0; k < 16; ++k)
    for (int j = 0; j < 16; ++j) f.x[k * 16 + j] = __bfloat162float(p[j * ldm + k]);
}

// B row major: element (k, j) at p[k * ldm + j].
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, __nv_bfloat16, row_major>& f, const __nv_bfloat16* p,
                             unsigned ldm) {
  check_ptr(p, ldm, "load_matrix_sync(matrix_b, row_major)");
  if (emu::lane() != 0) return;
  for (int k = 0; k < 16; ++k)
    for (int j = 0; j < 16; ++j) f.x[k * 16 + j] = __bfloat162float(p[k * ldm + j]);
}

// d = a b + c. bf16 x bf16 products are exact in f32; the 16 products and c are summed exactly
// and rounded once (the hardware's internal order and truncation differ; this is the contract).
// (The fragment holds B as (k, j) whatever its memory layout.)
template <typename BLayout>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                     const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, row_major>& a,
                     const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, BLayout>& b,
                     const fragment<accumulator, 16, 16, 16, float>& c) {
  if (emu::lane() != 0) return;
  float tmp[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      double s = c.x[i * 16 + j];
      for (int k = 0; k < 16; ++k) s += static_cast<double>(a.x[i * 16 + k]) * b.x[k * 16 + j];
      tmp[i * 16 + j] = static_cast<float>(s);
    }
  std::memcpy(d.x, tmp, sizeof tmp);
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  check_ptr(p, ldm, "store_matrix_sync");
  if (emu::lane() != 0) return;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j)
      (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.x[i * 16 + j];
}

}  // namespace wmma
}  // namespace nvcuda

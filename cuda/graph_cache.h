// CUDA graphs of repeated launch sequences, as plain C++: the launch record, the arena that serves a
// body's allocations, the cache of captured graphs, and the algorithm that chooses between replay,
// capture and eager launches. cuda/graphs.cu instantiates it with the CUDA runtime; the host tests
// (test/emu/graphs_emu.cc) instantiate it with a stand-in device that replays recorded closures.
//
// A body is host code that only enqueues work on the library stream (a forward's layer stack). It is
// first traced: its host code runs with every launch recorded (kernel, grid, block, shared memory,
// the bytes of every argument after conversion to the kernel's parameter types) and not made, and
// its allocations served by the arena. The record is the cache key: a graph captured from a body
// whose record was exactly this one enqueues exactly the work the body would, so a changed pointer,
// row count or host-side scalar (an attention plan) is another key, never a stale replay. A record
// seen `sightings` times is captured and replayed from then on; before that the body runs eagerly.
// Whatever goes wrong disables graphs for the process, with the reason, and the body runs eagerly.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace specdec {
namespace cuda {
namespace graphs {

// What a body enqueued, byte for byte. Equal records enqueue the same work.
class Record {
 public:
  void add_launch(const void* fn, const unsigned grid[3], const unsigned block[3], size_t smem, const void* const* args,
                  const size_t* sizes, size_t n) {
    put('K');
    put(fn);
    for (int i = 0; i < 3; ++i) put(grid[i]);
    for (int i = 0; i < 3; ++i) put(block[i]);
    put(static_cast<uint64_t>(smem));
    put(static_cast<uint32_t>(n));
    for (size_t i = 0; i < n; ++i) {
      put(static_cast<uint32_t>(sizes[i]));
      bytes_.append(static_cast<const char*>(args[i]), sizes[i]);
    }
    ++launches_;
  }
  // A copy ('C') or fill ('Z') on the stream.
  void add_op(char tag, const void* dst, const void* src, size_t n) {
    put(tag);
    put(dst);
    put(src);
    put(static_cast<uint64_t>(n));
    ++launches_;
  }
  const std::string& bytes() const { return bytes_; }
  size_t launches() const { return launches_; }

 private:
  template <typename T>
  void put(const T& v) {
    bytes_.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  std::string bytes_;
  size_t launches_ = 0;
};

// The arguments of a launch as the kernel receives them: converted to its parameter types, then
// recorded by their bytes. Struct parameters must have no padding (a padding byte would make equal
// launches look different: no wrong replay, but no replay either).
template <typename... P>
void record_launch(Record& r, const void* fn, const unsigned grid[3], const unsigned block[3], size_t smem,
                   const std::tuple<P...>& args) {
  const void* ptrs[sizeof...(P) + 1] = {};
  size_t sizes[sizeof...(P) + 1] = {};
  std::apply(
      [&](const auto&... a) {
        size_t i = 0;
        ((ptrs[i] = &a, sizes[i] = sizeof a, ++i), ...);
      },
      args);
  r.add_launch(fn, grid, block, smem, ptrs, sizes, sizeof...(P));
}

// A body's allocations: first fit over the blocks in the order they were made, a block serving
// requests from half its size up. Every body starts with all blocks free, so the same sequence of
// requests gets the same addresses every time (new blocks are only appended, which leaves earlier
// choices alone). Blocks are never given back: captured graphs keep pointing into them.
class Arena {
 public:
  using RawAlloc = std::function<void*(size_t)>;
  void* alloc(size_t bytes, const RawAlloc& raw) {
    std::lock_guard<std::mutex> lock(mu_);
    for (Block& b : blocks_)
      if (!b.used && b.bytes >= bytes && b.bytes / 2 <= bytes) {
        b.used = true;
        return b.ptr;
      }
    void* p = raw(bytes);
    blocks_.push_back({p, bytes, true});
    any_.store(true, std::memory_order_release);
    return p;
  }
  // True when p is one of the arena's blocks (now free again).
  bool release(const void* p) {
    if (!any_.load(std::memory_order_acquire)) return false;
    std::lock_guard<std::mutex> lock(mu_);
    for (Block& b : blocks_)
      if (b.ptr == p) {
        b.used = false;
        return true;
      }
    return false;
  }
  bool all_free() const {
    std::lock_guard<std::mutex> lock(mu_);
    for (const Block& b : blocks_)
      if (b.used) return false;
    return true;
  }

 private:
  struct Block {
    void* ptr;
    size_t bytes;
    bool used;
  };
  mutable std::mutex mu_;
  std::vector<Block> blocks_;
  std::atomic<bool> any_{false};
};

// What the thread is doing for a body: recording into `record`, launching nothing when `suppress`
// (tracing), allocating from `arena`.
struct BodyState {
  Record* record = nullptr;
  bool suppress = false;
  Arena* arena = nullptr;
};
inline thread_local BodyState t_body;

struct Counters {
  uint64_t replays = 0;   // bodies run as one graph launch (captures included)
  uint64_t captures = 0;  // graphs captured
  uint64_t eager = 0;     // bodies launched one by one (first sightings, graphs off or disabled)
};

// The algorithm. Dev provides:
//   using Exec;                                   an executable graph
//   void* raw_alloc(size_t);                      device memory for the arena
//   void begin_capture();                         this thread's launches from now on are captured
//   Exec end_capture(std::string* failure);       stops capturing; the graph, or failure set
//   void launch(Exec);  void destroy(Exec);
//   void quiet_ops(bool);                         pause the op counters (a traced body launches nothing)
//   void note_replay(bool captured);              a body ran as one graph launch
//   void warn(const std::string&);                graphs were disabled: say why, once
// and its body-forbidden calls (waits, reads to the host) throw BodyForbidden while t_body.record is set.
struct BodyForbidden : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class Dev>
class Runner {
 public:
  using Exec = typename Dev::Exec;
  static constexpr size_t kMaxGraphs = 64;  // least recently replayed go first
  static constexpr size_t kMaxSeen = 256;   // records waiting for their next sighting
  static constexpr int kSightings = 2;      // a record is captured when seen this often

  explicit Runner(Dev dev) : dev_(std::move(dev)) {}
  ~Runner() = default;  // graphs live as long as the process (the driver frees them at exit)

  void run(const std::function<void()>& body) {
    if (t_body.record) return body();  // nested: part of the enclosing body
    std::unique_lock<std::mutex> lock(mu_);
    if (!reason_.empty()) {
      ++counters_.eager;
      lock.unlock();
      return body();
    }
    Record traced;
    try {
      Scope scope(this, &traced, true);
      body();
    } catch (const BodyForbidden& e) {
      return fallback(lock, body, std::string("a graph body may only enqueue work: ") + e.what());
    }
    if (!arena_.all_free()) {
      return fallback(lock, body, "a graph body kept device memory it allocated beyond its end");
    }
    auto it = graphs_.find(traced.bytes());
    if (it != graphs_.end()) {
      it->second.last = ++clock_;
      dev_.launch(it->second.exec);
      dev_.note_replay(false);
      ++counters_.replays;
      return;
    }
    int& seen = seen_[traced.bytes()];
    if (++seen < kSightings) {
      if (seen_.size() > kMaxSeen) seen_.clear();
      ++counters_.eager;
      lock.unlock();
      return body();
    }
    seen_.erase(traced.bytes());
    Record captured;
    std::string failure;
    try {
      dev_.begin_capture();
    } catch (const std::exception& e) {
      return fallback(lock, body, std::string("capture failed to start: ") + e.what());
    }
    try {
      Scope scope(this, &captured, false);
      body();
    } catch (const std::exception& e) {
      failure = e.what();
    }
    Exec exec = dev_.end_capture(failure.empty() ? &failure : nullptr);
    if (failure.empty() && captured.bytes() != traced.bytes())
      failure = "a graph body enqueued different work when captured than when traced";
    if (!failure.empty()) {
      if (exec) dev_.destroy(exec);
      return fallback(lock, body, "capture failed: " + failure);
    }
    if (graphs_.size() >= kMaxGraphs) evict_oldest();
    graphs_.emplace(traced.bytes(), Entry{exec, ++clock_});
    dev_.launch(exec);
    dev_.note_replay(true);
    ++counters_.captures;
    ++counters_.replays;
  }

  // Device memory for the thread's body (null outside a body: the caller's normal allocator).
  void* body_alloc(size_t bytes) {
    if (!t_body.arena) return nullptr;
    return arena_.alloc(bytes, [this](size_t n) { return dev_.raw_alloc(n); });
  }
  bool body_release(const void* p) { return arena_.release(p); }

  Counters counters() const {
    std::lock_guard<std::mutex> lock(mu_);
    return counters_;
  }
  std::string disabled_reason() const {
    std::lock_guard<std::mutex> lock(mu_);
    return reason_;
  }
  size_t graphs() const {
    std::lock_guard<std::mutex> lock(mu_);
    return graphs_.size();
  }
  Dev& device() { return dev_; }

 private:
  struct Entry {
    Exec exec;
    uint64_t last;
  };
  class Scope {
   public:
    Scope(Runner* r, Record* rec, bool suppress) : r_(r), saved_(t_body) {
      t_body = BodyState{rec, suppress, &r->arena_};
      r_->dev_.quiet_ops(true);
    }
    ~Scope() {
      t_body = saved_;
      r_->dev_.quiet_ops(false);
    }

   private:
    Runner* r_;
    BodyState saved_;
  };

  // Graphs off for the process (the first reason is kept and said once); this body runs eagerly.
  void fallback(std::unique_lock<std::mutex>& lock, const std::function<void()>& body, const std::string& why) {
    disable(why);
    ++counters_.eager;
    lock.unlock();
    body();
  }
  void disable(const std::string& why) {
    if (!reason_.empty()) return;
    reason_ = why;
    dev_.warn(why);
  }
  void evict_oldest() {
    auto oldest = graphs_.begin();
    for (auto it = graphs_.begin(); it != graphs_.end(); ++it)
      if (it->second.last < oldest->second.last) oldest = it;
    dev_.destroy(oldest->second.exec);
    graphs_.erase(oldest);
  }

  Dev dev_;
  mutable std::mutex mu_;
  Arena arena_;
  std::unordered_map<std::string, Entry> graphs_;
  std::unordered_map<std::string, int> seen_;
  uint64_t clock_ = 0;
  Counters counters_;
  std::string reason_;
};

}  // namespace graphs
}  // namespace cuda
}  // namespace specdec

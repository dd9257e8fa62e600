// CUDA graphs' bookkeeping (cuda/graph_cache.h) on a stand-in device: a "kernel" is a host function,
// a launch made eagerly runs at once, a captured one is kept as a closure over its converted
// arguments, and a replay runs the closures again. That is what a CUDA graph does: it freezes the
// arguments and launch configurations it was captured with. So a replay that is not exactly what
// the body would launch now (a stale host-side value, a moved buffer) gives a wrong result here.
//
// The body mimics a forward's layer stack: inputs copied to a stable buffer, scratch rows, a host-
// side "plan" (like the attention's chunk count) passed as a kernel argument, temporaries from the
// arena. Checks: replay == eager bit for bit over many steps with new input values; a changed plan
// or row count is a new graph, never a stale replay; captures and replays counted as designed; the
// arena's addresses repeat; bodies that keep memory, wait for the device or fail to capture turn
// graphs off with a reason and still give the right result; eviction; nested bodies; two threads.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iterator>
#include <random>
#include <thread>

#include "../../cuda/graph_cache.h"
#include "emu_check.h"

namespace g = specdec::cuda::graphs;

namespace {

using Closure = std::function<void()>;
using Graph = std::vector<Closure>;

thread_local Graph* t_capturing = nullptr;  // this thread's capture in progress

struct FakeDevice {
  using Exec = Graph*;
  std::string fail_capture;  // non-empty: end_capture fails with it
  bool fail_begin = false;   // begin_capture throws
  int* live = nullptr;       // executable graphs alive
  int* quiet_depth = nullptr;
  std::vector<std::string>* warnings = nullptr;

  void* raw_alloc(size_t bytes) { return std::calloc(1, bytes); }  // never freed: graphs point into it
  void begin_capture() {
    if (fail_begin) throw std::runtime_error("cudaErrorIllegalState: stand-in for a capture that cannot start");
    t_capturing = new Graph;
  }
  Exec end_capture(std::string* failure) {
    Graph* gr = t_capturing;
    t_capturing = nullptr;
    if (!fail_capture.empty()) {
      if (failure) *failure = fail_capture;
      delete gr;
      return nullptr;
    }
    ++*live;
    return gr;
  }
  void launch(Exec e) {
    for (Closure& c : *e) c();
  }
  void destroy(Exec e) {
    --*live;
    delete e;
  }
  void quiet_ops(bool q) { *quiet_depth += q ? 1 : -1; }
  void note_replay(bool) {}
  void warn(const std::string& w) { warnings->push_back(w); }
};

// The stand-in for common.cuh's launch_kernel: recorded inside a body, not made while tracing,
// kept while capturing, made at once otherwise.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), unsigned grid, A&&... args) {
  std::tuple<std::decay_t<P>...> conv(static_cast<std::decay_t<P>>(std::forward<A>(args))...);
  if (g::Record* r = g::t_body.record) {
    const unsigned gr[3] = {grid, 1, 1}, bl[3] = {32, 1, 1};
    g::record_launch(*r, reinterpret_cast<const void*>(kernel), gr, bl, 0, conv);
    if (g::t_body.suppress) return;
  }
  Closure run = [kernel, conv] { std::apply(kernel, conv); };
  if (t_capturing) t_capturing->push_back(std::move(run));
  else run();
}

// runtime.cu's memcpy_d2d and memcpy_d2h stand-ins.
void copy_d2d(void* dst, const void* src, size_t bytes) {
  if (g::Record* r = g::t_body.record) {
    r->add_op('C', dst, src, bytes);
    if (g::t_body.suppress) return;
  }
  Closure run = [=] { std::memcpy(dst, src, bytes); };
  if (t_capturing) t_capturing->push_back(std::move(run));
  else run();
}
void read_to_host() {
  if (g::t_body.record) throw g::BodyForbidden("a read to the host");
}

// Kernels.
void k_embed(const int32_t* ids, float* x, int n, int h) {
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < h; ++j) x[i * h + j] = static_cast<float>(ids[i] % 97) * 0.25f + static_cast<float>(j);
}
void k_chunked_sum(const float* x, const int32_t* lens, float* part, int n, int h, int chunks) {
  // Like split-KV: `chunks` (a host-side plan) decides how many partials each row gets.
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < chunks; ++c) {
      float s = 0;
      for (int j = c; j < h; j += chunks) s += x[i * h + j] * static_cast<float>(lens[i] % 7 + 1);
      part[i * chunks + c] = s;
    }
}
void k_merge(const float* part, float* out, int n, int chunks) {
  for (int i = 0; i < n; ++i) {
    float s = 0;
    for (int c = 0; c < chunks; ++c) s = s * 0.5f + part[i * chunks + c];
    out[i] = s;
  }
}
void k_scale(float* out, int n, float by) {
  for (int i = 0; i < n; ++i) out[i] *= by;
}

template <class R>
void* body_alloc(R& runner, size_t bytes) {
  if (void* p = runner.body_alloc(bytes)) return p;
  return std::calloc(1, bytes);
}
template <class R>
void body_free(R& runner, void* p) {
  if (!runner.body_release(p)) std::free(p);
}

// One step's inputs (host side) and the model's device buffers.
struct Step {
  std::vector<int32_t> ids, lens;
  int chunks;     // the "plan"
  float scale;    // a host scalar passed by value
};
struct Model {
  int h = 24, max_rows = 16;
  std::vector<unsigned char> stable = std::vector<unsigned char>(4096);  // graph inputs
  std::vector<float> x = std::vector<float>(16 * 24), out = std::vector<float>(16);
};

// How a forward misbehaves (or nests), for the fallback checks.
struct Opts {
  bool keep_leak = false, wait_inside = false, nested = false;
  std::vector<void*>* leaked = nullptr;
};

// The forward: upload (outside the body), copy to the stable buffer, then the body.
template <class R>
void forward(R* runner, Model& m, const Step& s, const Opts& o = {}) {
  const bool keep_leak = o.keep_leak, wait_inside = o.wait_inside, nested = o.nested;
  std::vector<void*>* leaked = o.leaked;
  const int n = static_cast<int>(s.ids.size());
  // "Uploaded" inputs at a fresh address every step, as a staging upload would be.
  auto* up = static_cast<int32_t*>(std::malloc(sizeof(int32_t) * 2 * n));
  std::memcpy(up, s.ids.data(), sizeof(int32_t) * n);
  std::memcpy(up + n, s.lens.data(), sizeof(int32_t) * n);
  copy_d2d(m.stable.data(), up, sizeof(int32_t) * 2 * n);  // outside the body: made at once
  auto* ids = reinterpret_cast<const int32_t*>(m.stable.data());
  const int32_t* lens = ids + n;
  auto body = [&] {
    launch(k_embed, 1, ids, m.x.data(), n, m.h);
    // Temporaries of a size that depends on the plan, released in a fixed order.
    auto* part = static_cast<float*>(runner ? body_alloc(*runner, sizeof(float) * n * s.chunks) : std::calloc(1, sizeof(float) * n * s.chunks));
    auto* scratch = static_cast<float*>(runner ? body_alloc(*runner, 64) : std::calloc(1, 64));
    launch(k_chunked_sum, 1, m.x.data(), lens, part, n, m.h, s.chunks);
    launch(k_merge, 1, part, m.out.data(), n, s.chunks);
    launch(k_scale, 1, m.out.data(), n, s.scale);
    if (wait_inside) read_to_host();
    if (runner) {
      body_free(*runner, scratch);
      if (keep_leak && leaked) leaked->push_back(part);
      else body_free(*runner, part);
    } else {
      std::free(scratch);
      std::free(part);
    }
  };
  if (runner && nested) runner->run([&] { runner->run(body); });
  else if (runner) runner->run(body);
  else body();
  std::free(up);
}

Step random_step(std::mt19937_64& rng, int n, int chunks, float scale) {
  Step s;
  s.chunks = chunks;
  s.scale = scale;
  for (int i = 0; i < n; ++i) {
    s.ids.push_back(static_cast<int32_t>(rng() % 5000));
    s.lens.push_back(static_cast<int32_t>(rng() % 300));
  }
  return s;
}

struct Harness {
  int live = 0, quiet = 0;
  std::vector<std::string> warnings;
  FakeDevice dev() {
    FakeDevice d;
    d.live = &live;
    d.quiet_depth = &quiet;
    d.warnings = &warnings;
    return d;
  }
};

bool same(const std::vector<float>& a, const std::vector<float>& b, int n) {
  return std::memcmp(a.data(), b.data(), sizeof(float) * n) == 0;
}

// The step through the runner (model gm) and plainly (model em): the same bits?
template <class R>
bool both(R& runner, Model& gm, Model& em, const Step& s, const Opts& o = {}) {
  forward(&runner, gm, s, o);
  forward<R>(nullptr, em, s);
  return same(gm.out, em.out, static_cast<int>(s.ids.size()));
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  const int steps = argc > 2 ? std::atoi(argv[2]) : 40;
  std::mt19937_64 rng(seed);

  // 1. Steady state: same shape and plan, new values every step.
  {
    Harness hs;
    g::Runner<FakeDevice> runner(hs.dev());
    Model gm, em;
    bool all = true;
    for (int i = 0; i < steps; ++i) {
      const Step s = random_step(rng, 5, 3, 0.75f);
      all = both(runner, gm, em, s) && all;
    }
    const g::Counters c = runner.counters();
    emu::report(all, "steady state: " + std::to_string(steps) + " steps replayed == eager, bit for bit");
    emu::report(c.eager == 1 && c.captures == 1 && c.replays == static_cast<uint64_t>(steps - 1),
                "steady state: first sighting eager, second captured, the rest replayed (eager " + std::to_string(c.eager) +
                    ", captures " + std::to_string(c.captures) + ", replays " + std::to_string(c.replays) + ")");
    emu::report(runner.graphs() == 1 && hs.live == 1 && hs.warnings.empty() && hs.quiet == 0,
                "steady state: one graph, no warning, op counting resumed");
  }

  // 2. The plan (a host value passed to kernels), the row count and a scalar change under a graph:
  //    every change is a new record, and a replay never uses the old values.
  {
    Harness hs;
    g::Runner<FakeDevice> runner(hs.dev());
    Model gm, em;
    bool all = true;
    const int plans[] = {2, 2, 2, 3, 3, 2, 4, 4, 4, 2, 3};
    const int rows[] = {4, 4, 4, 4, 6, 6, 6, 4, 4, 4, 4};
    const float scales[] = {1.f, 1.f, 1.f, 1.f, 1.f, 1.f, 0.5f, 0.5f, 0.5f, 1.f, 1.f};
    for (int rep = 0; rep < 3; ++rep)
      for (size_t i = 0; i < std::size(plans); ++i) {
        const Step s = random_step(rng, rows[i], plans[i], scales[i]);
        all = both(runner, gm, em, s) && all;
      }
    const g::Counters c = runner.counters();
    emu::report(all, "changing plan, rows and scalars: every step == eager (no stale replay)");
    emu::report(c.captures >= 4 && runner.graphs() == c.captures && hs.warnings.empty(),
                "changing plan, rows and scalars: one graph per distinct launch record (" + std::to_string(c.captures) +
                    " captured, " + std::to_string(c.replays) + " replays)");
  }

  // 3. The arena serves the same addresses to the same sequence of requests.
  {
    g::Arena a;
    auto raw = [](size_t n) { return std::calloc(1, n); };
    std::vector<void*> first, second;
    for (int round = 0; round < 2; ++round) {
      std::vector<void*>& got = round ? second : first;
      void* p1 = a.alloc(1000, raw);
      void* p2 = a.alloc(300, raw);
      a.release(p1);
      void* p3 = a.alloc(900, raw);  // reuses p1's block (>= half its size)
      void* p4 = a.alloc(100, raw);  // too small for p1's block: a new one (first round)
      got = {p1, p2, p3, p4};
      for (void* p : got) a.release(p);
    }
    emu::report(first == second && first[0] == first[2] && first[3] != first[0] && a.all_free(),
                "arena: a repeated sequence of requests gets the same addresses; half-size rule");
  }

  // 4. A body that keeps memory turns graphs off (with a reason) and still computes right.
  {
    Harness hs;
    g::Runner<FakeDevice> runner(hs.dev());
    Model gm, em;
    std::vector<void*> leaked;
    bool all = true;
    for (int i = 0; i < 4; ++i) {
      const Step s = random_step(rng, 3, 2, 1.f);
      all = both(runner, gm, em, s, Opts{/*keep_leak=*/i == 0, false, false, &leaked}) && all;
    }
    emu::report(all && !runner.disabled_reason().empty() && hs.warnings.size() == 1 && runner.graphs() == 0,
                "a body keeping memory: graphs off with a reason (\"" + runner.disabled_reason() + "\"), results right");
  }

  // 5. A body that waits for the device: graphs off, results right.
  {
    Harness hs;
    g::Runner<FakeDevice> runner(hs.dev());
    Model gm, em;
    bool all = true;
    for (int i = 0; i < 3; ++i) {
      const Step s = random_step(rng, 3, 2, 1.f);
      all = both(runner, gm, em, s, Opts{false, /*wait_inside=*/true}) && all;
    }
    emu::report(all && runner.disabled_reason().find("read to the host") != std::string::npos && hs.quiet == 0,
                "a body that reads to the host: graphs off with a reason, results right, op counting resumed");
  }

  // 6. A failed capture: graphs off, the step still computed (eagerly).
  {
    Harness hs;
    FakeDevice d = hs.dev();
    d.fail_capture = "cudaErrorStreamCaptureUnsupported: stand-in";
    g::Runner<FakeDevice> runner(d);
    Model gm, em;
    bool all = true;
    for (int i = 0; i < 4; ++i) {
      const Step s = random_step(rng, 3, 2, 1.f);
      all = both(runner, gm, em, s) && all;
    }
    emu::report(all && runner.disabled_reason().find("stand-in") != std::string::npos && hs.live == 0,
                "a failed capture: graphs off with the reason, every step computed");
  }
  {
    Harness hs;
    FakeDevice d = hs.dev();
    d.fail_begin = true;
    g::Runner<FakeDevice> runner(d);
    Model gm, em;
    bool all = true;
    for (int i = 0; i < 4; ++i) all = both(runner, gm, em, random_step(rng, 3, 2, 1.f)) && all;
    emu::report(all && runner.disabled_reason().find("failed to start") != std::string::npos && hs.live == 0 &&
                    runner.counters().eager == 4,
                "a capture that cannot start: graphs off with the reason, every step computed eagerly");
  }

  // 7. Eviction: more distinct records than the cache holds.
  {
    Harness hs;
    g::Runner<FakeDevice> runner(hs.dev());
    Model gm, em;
    bool all = true;
    const int distinct = static_cast<int>(g::Runner<FakeDevice>::kMaxGraphs) + 6;
    for (int i = 0; i < distinct; ++i)
      for (int rep = 0; rep < 3; ++rep) {
        const Step s = random_step(rng, 2, 1 + i % 8, 1.0f + static_cast<float>(i / 8));
        all = both(runner, gm, em, s) && all;
      }
    emu::report(all && runner.graphs() == g::Runner<FakeDevice>::kMaxGraphs && hs.live == static_cast<int>(runner.graphs()),
                "eviction: at most kMaxGraphs graphs alive (" + std::to_string(hs.live) + "), results right");
  }

  // 8. A nested body runs as part of the enclosing one.
  {
    Harness hs;
    g::Runner<FakeDevice> runner(hs.dev());
    Model gm, em;
    bool all = true;
    for (int i = 0; i < 5; ++i) {
      const Step s = random_step(rng, 4, 3, 2.f);
      all = both(runner, gm, em, s, Opts{false, false, /*nested=*/true}) && all;
    }
    emu::report(all && runner.graphs() == 1 && hs.warnings.empty(), "nested body: part of the enclosing graph, results right");
  }

  // 9. Two threads, two models, one runner (ThreadSanitizer: the body state is per thread).
  {
    Harness hs;
    g::Runner<FakeDevice> runner(hs.dev());
    std::atomic<bool> ok{true};
    auto worker = [&](uint64_t s0, int rows, int chunks) {
      std::mt19937_64 r(s0);
      Model gm, em;
      for (int i = 0; i < steps / 2 + 3; ++i) {
        const Step s = random_step(r, rows, chunks, 1.5f);
        if (!both(runner, gm, em, s)) ok = false;
      }
    };
    std::thread t1(worker, seed * 3 + 1, 3, 2), t2(worker, seed * 3 + 2, 5, 4);
    t1.join();
    t2.join();
    emu::report(ok && hs.warnings.empty() && runner.graphs() == 2, "two threads: each thread's steps == eager, two graphs");
  }
  return emu::summary(seed);
}

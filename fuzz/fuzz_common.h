// Shared pieces of the fuzz targets (fuzz/*_fuzz.cc): the structured decoding of an input into
// op arguments, the in-memory files the loaders open, and the outcome rule every target enforces:
// an input either works or is rejected with a specdec::Error whose code the entry point documents.
// Anything else (another exception, a wrong code, a broken output invariant) aborts, and the
// sanitizers turn memory and UB errors into reports; libFuzzer and fuzz/replay_main.cc both count
// an abort as a finding.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "../cpp/core/error.h"

namespace fuzz {

[[noreturn]] inline void finding(const std::string& what) {
  std::fprintf(stderr, "FUZZ FINDING: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

#define FUZZ_ASSERT(cond, ...)                                                        \
  do {                                                                                \
    if (!(cond)) ::fuzz::finding(::specdec::str(#cond, ": ", __VA_ARGS__));           \
  } while (0)

// For the harness's own checking code (references, shadow models): libFuzzer's comparison tracing
// there would cost most of the run time and guide nothing.
#if defined(__clang__)
#define FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define FUZZ_NO_COVERAGE
#endif

// Runs fn; a specdec::Error with one of `codes` is a clean rejection (returns false), success
// returns true, and everything else is a finding.
template <class F>
bool expect_ok_or(std::initializer_list<const char*> codes, F&& fn) {
  try {
    fn();
    return true;
  } catch (const specdec::Error& e) {
    for (const char* c : codes)
      if (e.code() == c) {
        FUZZ_ASSERT(std::strlen(e.what()) > 0, "error ", e.code(), " without a message");
        return false;
      }
    finding(specdec::str("unexpected error code ", e.code(), ": ", e.what()));
  } catch (const std::exception& e) {
    finding(specdec::str("uncoded exception: ", e.what()));
  }
}

// Reads typed values off the input; past the end every read returns zeros, so any input decodes.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  bool empty() const { return p_ >= end_; }
  size_t left() const { return static_cast<size_t>(end_ - p_); }
  uint8_t u8() { return p_ < end_ ? *p_++ : 0; }
  uint16_t u16() { return static_cast<uint16_t>(u8() | (u8() << 8)); }
  uint32_t u32() { return static_cast<uint32_t>(u16()) | (static_cast<uint32_t>(u16()) << 16); }
  uint64_t u64() { return static_cast<uint64_t>(u32()) | (static_cast<uint64_t>(u32()) << 32); }
  bool flag() { return u8() & 1; }
  // An integer in [lo, hi] (inclusive).
  int64_t range(int64_t lo, int64_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
    const uint64_t v = span <= 256 ? u8() : span <= 65536 ? u16() : u32();
    return lo + static_cast<int64_t>(v % span);
  }
  // Mostly small values, sometimes a hostile one (negative, huge, an int32 edge).
  int32_t i32_hostile(int32_t small_hi) {
    const uint8_t k = u8();
    if (k < 200) return static_cast<int32_t>(range(0, small_hi));
    switch (k % 8) {
      case 0: return -1;
      case 1: return -2;
      case 2: return INT32_MAX;
      case 3: return INT32_MIN;
      case 4: return small_hi + 1;
      case 5: return static_cast<int32_t>(u32());
      case 6: return -static_cast<int32_t>(range(1, 1000));
      default: return small_hi + static_cast<int32_t>(range(1, 64));
    }
  }
  // A float that is usually a probability-like value and sometimes NaN, +-Inf, negative, huge or tiny.
  float f32_hostile() {
    const uint8_t k = u8();
    if (k < 192) return static_cast<float>(u8()) / 255.0f;
    switch (k % 10) {
      case 0: return __builtin_nanf("");
      case 1: return __builtin_inff();
      case 2: return -__builtin_inff();
      case 3: return -static_cast<float>(u8()) / 16.0f;
      case 4: return 0.0f;
      case 5: return 1e30f;
      case 6: return 1e-40f;  // subnormal
      case 7: return -0.0f;
      case 8: { uint32_t b = u32(); float f; std::memcpy(&f, &b, 4); return f; }
      default: return 1.0f;
    }
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

// a - b clamped to int32 (hostile values minus an offset must not overflow in the harness itself).
inline int32_t sat_sub(int32_t a, int32_t b) {
  const int64_t v = static_cast<int64_t>(a) - b;
  return static_cast<int32_t>(v < INT32_MIN ? INT32_MIN : v > INT32_MAX ? INT32_MAX : v);
}

// A file in memory (memfd) whose /proc/self/fd path the loaders open like any file: no disk I/O per
// execution, and the loaders' own open/fstat/mmap code runs unchanged.
class MemFile {
 public:
  MemFile(const void* data, size_t size) {
    fd_ = memfd_create("specdec-fuzz", MFD_CLOEXEC);
    if (fd_ < 0) finding("memfd_create failed");
    const char* p = static_cast<const char*>(data);
    for (size_t done = 0; done < size;) {
      const ssize_t w = write(fd_, p + done, size - done);
      if (w <= 0) finding("memfd write failed");
      done += static_cast<size_t>(w);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  explicit MemFile(const std::string& bytes) : MemFile(bytes.data(), bytes.size()) {}
  ~MemFile() { close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// The CPU backend's thread pool stays inline: the inputs are tiny and one thread keeps runs
// reproducible under the sanitizers.
inline void init_process() { setenv("SPECDEC_CPU_THREADS", "1", 1); }

}  // namespace fuzz

// Each target defines these; the replay driver and libFuzzer call them.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace fuzz {
// Valid (or deliberately edge-case) inputs a target starts from: `replay --write-seeds DIR` writes
// them into the committed seed corpus (fuzz/corpus/<target>/).
void seed_inputs(std::vector<std::string>& out);

// n reproducible pseudo-random bytes: the structured targets decode any bytes, so such blobs are
// valid programs that reach many operations.
inline std::string pattern_bytes(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  for (char& c : s) {
    seed = seed * 1664525u + 1013904223u;
    c = static_cast<char>(seed >> 24);
  }
  return s;
}
}  // namespace fuzz

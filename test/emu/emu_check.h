// What the emulation drivers share: the check report (a line per check, then the summary line
// the mocha suite reads, and the exit status) and the float types' names and conversions.
#pragma once
#include <cinttypes>
#include <cstdio>
#include <string>

#include "cuda_emu.h"

namespace emu {

inline int failures = 0, checks = 0;

inline void report(bool ok, const std::string& what) {
  ++checks;
  if (!ok) ++failures;
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
}

// Prints "N checks, F failed (seed S)"; returns the process exit status.
inline int summary(uint64_t seed) {
  std::printf("%d checks, %d failed (seed %" PRIu64 ")\n", checks, failures, seed);
  return failures ? 1 : 0;
}

inline float to_float(float v) { return v; }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float to_float(__half v) { return __half2float(v); }
template <typename T> T from_float(float v) { return T(v); }
template <> inline float from_float<float>(float v) { return v; }

template <typename T> const char* type_name();
template <> inline const char* type_name<float>() { return "f32"; }
template <> inline const char* type_name<__nv_bfloat16>() { return "bf16"; }
template <> inline const char* type_name<__half>() { return "f16"; }

}  // namespace emu

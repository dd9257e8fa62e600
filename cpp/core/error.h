// Errors that cross into JS as Error objects with a `code`. Never abort: every failure the
// native side can detect is thrown as specdec::Error and converted by the N-API glue.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace specdec {

// Codes used across the project (JS sees them as err.code):
//   E_ARG      bad argument (shape, dtype, device, range)      E_KV_FULL  KV cache out of pages
//   E_CUDA     a CUDA runtime call failed                        E_IO       file access
//   E_FORMAT   malformed checkpoint / safetensors / config       E_DISPOSED tensor used after dispose
//   E_UNSUPPORTED  valid but not implemented for this backend/dtype
class Error : public std::runtime_error {
 public:
  Error(std::string code, const std::string& message) : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

template <typename... Args>
std::string str(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(const char* code, Args&&... args) {
  throw Error(code, str(std::forward<Args>(args)...));
}

}  // namespace specdec

// SPECDEC_CHECK(cond, "E_ARG", "what went wrong: ", value)
#define SPECDEC_CHECK(cond, code, ...)               \
  do {                                               \
    if (!(cond)) ::specdec::fail(code, __VA_ARGS__); \
  } while (0)

// The CUDA runtime as seen from plain C++ (core, model, napi): implemented in cuda/runtime.cu,
// only linked when SPECDEC_WITH_CUDA is defined. Every failure throws specdec::Error("E_CUDA").
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace specdec {
struct BackendInfo;
namespace cuda {

// Fills the CUDA part of `info` (runtime/driver versions, devices, or the reason CUDA is not usable).
void query(BackendInfo& info);

void* alloc(size_t bytes);              // caching allocator
void release(void* ptr, size_t bytes);  // back to the cache
void empty_cache();
size_t cached_bytes();

// Uploads go through a pinned staging ring and return at once (the host buffer may be reused as
// soon as the call returns); returns true when the upload had to wait instead (larger than the
// ring's share, or no pinned memory), so the caller can count it.
bool memcpy_h2d(void* dst, const void* src, size_t bytes);
void memcpy_d2h(void* dst, const void* src, size_t bytes);
void memcpy_d2d(void* dst, const void* src, size_t bytes);
void memset_zero(void* dst, size_t bytes);
void synchronize();  // waits for the library's stream; throws on a pending kernel error (counted)

}  // namespace cuda
}  // namespace specdec

#include "tensor.h"

#include <sys/mman.h>

#include <mutex>

#include <cstdlib>
#include <cstring>

#include "backend.h"
#include "transfers.h"
#ifdef SPECDEC_WITH_CUDA
#include "../../cuda/cuda_backend.h"
#endif

namespace specdec {

namespace {
// CPU allocations from this size on are anonymous mappings: page aligned, and zero pages that
// take no memory until written, so a zeroed KV cache costs only the pages in use.
constexpr size_t kMapBytes = size_t(4) << 20;

// Small CPU blocks freed recently, per thread and power-of-two size class (64 B .. 256 KiB), at most
// kCachePerClass each: a small model's step allocates and frees the same few buffers every time
// (logits, index uploads, verification results), and aligned_alloc/free of them (with malloc's
// consolidation passes) was a visible part of its per-step cost. Cached blocks are reused only for
// their class's size, so a block is always large enough; contents are never assumed zero.
constexpr int kCacheClasses = 13;
constexpr size_t kCacheMaxBytes = size_t(64) << (kCacheClasses - 1);  // 256 KiB
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kCachePerClass = 0;  // sanitizer builds: every block really freed, so misuse is caught
#else
constexpr int kCachePerClass = 8;
#endif

struct BlockCache {
  void* blocks[kCacheClasses][kCachePerClass > 0 ? kCachePerClass : 1] = {};
  int count[kCacheClasses] = {};
  bool alive = true;  // false once this thread's cache is torn down (process or thread exit)
  ~BlockCache() {
    alive = false;
    for (int c = 0; c < kCacheClasses; ++c)
      for (int i = 0; i < count[c]; ++i) std::free(blocks[c][i]);
  }
};
thread_local BlockCache t_blocks;

// The class of a block of `bytes` (a multiple of 64, at most kCacheMaxBytes) and its size.
int block_class(size_t bytes, size_t* class_bytes) {
  int c = 0;
  size_t b = 64;
  while (b < bytes) b <<= 1, ++c;
  *class_bytes = b;
  return c;
}

void* cpu_alloc(size_t alloc_bytes) {
  if (alloc_bytes > kCacheMaxBytes) return std::aligned_alloc(64, alloc_bytes);
  size_t cb = 0;
  const int c = block_class(alloc_bytes, &cb);
  BlockCache& bc = t_blocks;
  if (bc.alive && bc.count[c] > 0) return bc.blocks[c][--bc.count[c]];
  return std::aligned_alloc(64, cb);
}

void cpu_free(void* p, size_t alloc_bytes) {
  if (alloc_bytes <= kCacheMaxBytes) {
    size_t cb = 0;
    const int c = block_class(alloc_bytes, &cb);
    BlockCache& bc = t_blocks;
    if (bc.alive && bc.count[c] < kCachePerClass) {
      bc.blocks[c][bc.count[c]++] = p;
      return;
    }
  }
  std::free(p);
}

// Large blocks (mappings) not asked zeroed, freed recently: up to kMapCacheBlocks, kMapCacheMaxBytes
// in all (none over half of it), reused for the same size. A step of a large-vocabulary model makes
// the same few multi-MB buffers every time (logits and probabilities of a tree: 64 rows x 128k
// floats are 32 MB), and a fresh mapping is written through page faults each time: about half of
// processLogits' time on 64 such rows. Process-wide (a tensor may be freed on another thread than
// the one that made it); sanitizer builds cache none (every block really freed).
constexpr int kMapCacheBlocks = 4;
constexpr size_t kMapCacheMaxBytes = size_t(128) << 20;
struct MapCache {
  std::mutex mu;
  void* ptr[kMapCacheBlocks] = {};
  size_t bytes[kMapCacheBlocks] = {};
  int n = 0;
  size_t total = 0;
};
MapCache& map_cache() {
  static MapCache* c = new MapCache();  // never destroyed: tensors may outlive static destructors
  return *c;
}
void* map_take(size_t bytes) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  (void)bytes;
  return nullptr;
#else
  MapCache& c = map_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (int i = c.n - 1; i >= 0; --i)
    if (c.bytes[i] == bytes) {
      void* p = c.ptr[i];
      c.total -= c.bytes[i];
      for (int j = i; j + 1 < c.n; ++j) c.ptr[j] = c.ptr[j + 1], c.bytes[j] = c.bytes[j + 1];
      --c.n;
      return p;
    }
  return nullptr;
#endif
}
void map_give(void* p, size_t bytes) {
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  if (bytes > kMapCacheMaxBytes / 2) {
    munmap(p, bytes);
    return;
  }
  MapCache& c = map_cache();
  std::unique_lock<std::mutex> lock(c.mu);
  // The oldest go until this one fits.
  std::vector<std::pair<void*, size_t>> drop;
  while (c.n > 0 && (c.n == kMapCacheBlocks || c.total + bytes > kMapCacheMaxBytes)) {
    drop.emplace_back(c.ptr[0], c.bytes[0]);
    c.total -= c.bytes[0];
    for (int j = 0; j + 1 < c.n; ++j) c.ptr[j] = c.ptr[j + 1], c.bytes[j] = c.bytes[j + 1];
    --c.n;
  }
  c.ptr[c.n] = p;
  c.bytes[c.n++] = bytes;
  c.total += bytes;
  lock.unlock();
  for (const auto& [q, b] : drop) munmap(q, b);
#else
  munmap(p, bytes);
#endif
}

[[noreturn]] void no_cuda(const char* what) {
  fail("E_UNSUPPORTED", what, ": the CUDA backend is not available (", backend_info().cuda_reason, ")");
}
}  // namespace

Storage::Storage(size_t n, Device d, bool zeroed) : bytes(n), device(d) {
  size_t alloc_bytes = n == 0 ? 64 : (n + 63) / 64 * 64;
  if (d == Device::cpu) {
    // Zeros of a few MB from the heap were a memset through freshly faulted pages: 3.3 MB took 8.5 ms
    // on the Zen 5 VM, a new EAGLE speculator's draft KV cache (a mapping: 0.02 ms).
    if (alloc_bytes >= kMapBytes || (zeroed && alloc_bytes > kCacheMaxBytes)) {
      void* p = zeroed ? nullptr : map_take(alloc_bytes);
      if (!p) p = mmap(nullptr, alloc_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      SPECDEC_CHECK(p != MAP_FAILED, "E_ARG", "out of host memory allocating ", n, " bytes");
      ptr = p;
      mapped = true;
      reusable = !zeroed;
      return;
    }
    ptr = cpu_alloc(alloc_bytes);
    SPECDEC_CHECK(ptr != nullptr, "E_ARG", "out of host memory allocating ", n, " bytes");
  } else {
#ifdef SPECDEC_WITH_CUDA
    if (!cuda_available()) no_cuda("allocating a CUDA tensor");
    ptr = cuda::alloc(alloc_bytes);
#else
    no_cuda("allocating a CUDA tensor");
#endif
  }
}

Storage::Storage(void* external, size_t n, std::shared_ptr<const void> keep)
    : ptr(external), bytes(n), device(Device::cpu), owner(std::move(keep)) {}

Storage::~Storage() {
  if (!ptr || owner) return;
  if (mapped) {
    // (A zeroed mapping is not cached: its untouched pages cost nothing, and reuse would not be zero.)
    if (reusable) map_give(ptr, bytes == 0 ? 64 : (bytes + 63) / 64 * 64);
    else munmap(ptr, bytes == 0 ? 64 : (bytes + 63) / 64 * 64);
  } else if (device == Device::cpu) {
    cpu_free(ptr, bytes == 0 ? 64 : (bytes + 63) / 64 * 64);
  } else {
#ifdef SPECDEC_WITH_CUDA
    size_t alloc_bytes = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
    cuda::release(ptr, alloc_bytes);
#endif
  }
}

static int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

Tensor Tensor::allocate(DType dtype, Shape shape, Device device, bool zeroed) {
  for (int64_t s : shape) SPECDEC_CHECK(s >= 0, "E_ARG", "negative dimension in shape");
  Tensor t;
  t.dtype_ = dtype;
  t.device_ = device;
  t.shape_ = std::move(shape);
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape_numel(t.shape_)) * dtype_size(dtype), device, zeroed);
  return t;
}

Tensor Tensor::empty(DType dtype, Shape shape, Device device) { return allocate(dtype, std::move(shape), device, false); }

Tensor Tensor::zeros(DType dtype, Shape shape, Device device) {
  Tensor t = allocate(dtype, std::move(shape), device, true);
  if (!t.storage_->mapped) t.fill_zero();  // fresh anonymous pages are zero already
  return t;
}

Tensor Tensor::from_host(DType dtype, Shape shape, const void* data, Device device) {
  Tensor t = empty(dtype, std::move(shape), device);
  t.copy_from_host(data, t.nbytes());
  return t;
}

Tensor Tensor::borrow_host(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner) {
  for (int64_t s : shape) SPECDEC_CHECK(s >= 0, "E_ARG", "negative dimension in shape");
  SPECDEC_CHECK(owner != nullptr, "E_ARG", "borrow_host: no owner keeps the memory alive");
  Tensor t;
  t.dtype_ = dtype;
  t.device_ = Device::cpu;
  t.shape_ = std::move(shape);
  t.storage_ = std::make_shared<Storage>(const_cast<void*>(data), static_cast<size_t>(shape_numel(t.shape_)) * dtype_size(dtype),
                                         std::move(owner));
  return t;
}

int64_t Tensor::size(int i) const {
  int d = dim();
  int j = i < 0 ? i + d : i;
  SPECDEC_CHECK(j >= 0 && j < d, "E_ARG", "dimension ", i, " out of range for ", describe());
  return shape_[static_cast<size_t>(j)];
}

int64_t Tensor::numel() const { return shape_numel(shape_); }

void* Tensor::data() const {
  SPECDEC_CHECK(storage_ != nullptr, "E_ARG", "use of an undefined tensor");
  return static_cast<char*>(storage_->ptr) + offset_;
}

Tensor Tensor::view(Shape shape) const {
  SPECDEC_CHECK(shape_numel(shape) == numel(), "E_ARG", "cannot view ", describe(), " with a different element count");
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  SPECDEC_CHECK(dim() >= 1 && begin >= 0 && begin <= end && end <= shape_[0], "E_ARG", "rows [", begin, ", ", end,
                ") out of range for ", describe());
  Tensor t = *this;
  int64_t row = numel() / (shape_[0] == 0 ? 1 : shape_[0]);
  t.offset_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  t.shape_[0] = end - begin;
  return t;
}

Tensor Tensor::reinterpret(size_t byte_offset, DType dtype, Shape shape) const {
  SPECDEC_CHECK(defined(), "E_ARG", "reinterpret of an undefined tensor");
  const size_t want = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  SPECDEC_CHECK(byte_offset % dtype_size(dtype) == 0 && byte_offset + want <= nbytes(), "E_ARG", "reinterpret: ",
                want, " bytes at offset ", byte_offset, " do not fit ", describe(), " (or are misaligned)");
  Tensor t = *this;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.offset_ += byte_offset;
  return t;
}

Tensor Tensor::to(Device device) const {
  Tensor t = empty(dtype_, shape_, device);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  SPECDEC_CHECK(src.dtype_ == dtype_ && src.numel() == numel(), "E_ARG", "copy from ", src.describe(), " into ",
                describe(), ": dtype and size must match");
  size_t n = nbytes();
  if (n == 0) return;
  if (device_ == Device::cpu && src.device_ == Device::cpu) {
    note_op();  // what a device-to-device copy is on CUDA
    std::memmove(data(), src.data(), n);
    return;
  }
#ifdef SPECDEC_WITH_CUDA
  if (device_ == Device::cuda && src.device_ == Device::cuda) {
    note_op();
    cuda::memcpy_d2d(data(), src.data(), n);
  } else if (device_ == Device::cuda) {
    note_upload(n, cuda::memcpy_h2d(data(), src.data(), n));
  } else {
    cuda::memcpy_d2h(data(), src.data(), n);
    note_readback(n);
  }
#else
  no_cuda("copying a CUDA tensor");
#endif
}

void Tensor::copy_from_host(const void* src, size_t bytes) {
  SPECDEC_CHECK(bytes == nbytes(), "E_ARG", "host buffer of ", bytes, " bytes does not fit ", describe());
  if (bytes == 0) return;
  if (device_ == Device::cpu) {
    std::memcpy(data(), src, bytes);
    note_upload(bytes, false);
    return;
  }
#ifdef SPECDEC_WITH_CUDA
  note_upload(bytes, cuda::memcpy_h2d(data(), src, bytes));
#else
  no_cuda("copying to a CUDA tensor");
#endif
}

void Tensor::copy_to_host(void* dst, size_t bytes) const {
  SPECDEC_CHECK(bytes == nbytes(), "E_ARG", "host buffer of ", bytes, " bytes does not fit ", describe());
  if (bytes == 0) return;
  note_readback(bytes);
  if (device_ == Device::cpu) {
    std::memcpy(dst, data(), bytes);
    return;
  }
#ifdef SPECDEC_WITH_CUDA
  cuda::memcpy_d2h(dst, data(), bytes);
#else
  no_cuda("copying from a CUDA tensor");
#endif
}

void Tensor::fill_zero() {
  size_t n = nbytes();
  if (n == 0) return;
  if (device_ == Device::cpu) {
    std::memset(data(), 0, n);
    return;
  }
#ifdef SPECDEC_WITH_CUDA
  cuda::memset_zero(data(), n);
#else
  no_cuda("zeroing a CUDA tensor");
#endif
}

Tensor gather_rows(const std::vector<Tensor>& srcs, const std::vector<int64_t>& rows, int64_t width) {
  SPECDEC_CHECK(!srcs.empty() && srcs.size() == rows.size(), "E_ARG", "gatherRows: ", srcs.size(), " tensors for ",
                rows.size(), " rows (expected as many, at least one)");
  const Tensor& first = srcs[0];
  for (size_t k = 0; k < srcs.size(); ++k) {
    const Tensor& t = srcs[k];
    SPECDEC_CHECK(t.defined() && t.dim() == 2, "E_ARG", "gatherRows: tensors[", k, "]: expected a 2-D tensor, got ",
                  t.describe());
    SPECDEC_CHECK(t.dtype() == first.dtype() && t.size(1) == first.size(1) && t.device() == first.device(), "E_ARG",
                  "gatherRows: tensors[", k, "] is ", t.describe(), " but tensors[0] is ", first.describe(),
                  " (same dtype, width and device needed)");
    SPECDEC_CHECK(rows[k] >= 0 && rows[k] < t.size(0), "E_ARG", "gatherRows: rows[", k, "] = ", rows[k],
                  " is outside the ", t.size(0), " rows of tensors[", k, "]");
  }
  const int64_t w = first.size(1);
  SPECDEC_CHECK(width < 0 || width >= w, "E_ARG", "gatherRows: rows of width ", w, " do not fit width ", width,
                " (rows are zero-padded to a larger width, never cut)");
  if (width > w) {
    // Zero-padded: one copy a row into the front of its padded row (views at byte offsets).
    const int64_t n = static_cast<int64_t>(rows.size());
    Tensor out = Tensor::zeros(first.dtype(), {n, width}, first.device());
    const size_t es = dtype_size(first.dtype());
    for (int64_t k = 0; k < n; ++k) {
      out.reinterpret(static_cast<size_t>(k * width) * es, first.dtype(), {w})
          .copy_from(srcs[static_cast<size_t>(k)].rows(rows[static_cast<size_t>(k)], rows[static_cast<size_t>(k)] + 1).view({w}));
    }
    return out;
  }
  Tensor out = Tensor::empty(first.dtype(), {static_cast<int64_t>(rows.size()), w}, first.device());
  // Runs of consecutive rows of one tensor go as one copy (on CUDA: one async copy, not one a row).
  for (size_t k = 0; k < srcs.size();) {
    size_t e = k + 1;
    while (e < srcs.size() && srcs[e].data() == srcs[k].data() && rows[e] == rows[e - 1] + 1) ++e;
    const int64_t i = static_cast<int64_t>(k), n = static_cast<int64_t>(e - k);
    out.rows(i, i + n).copy_from(srcs[k].rows(rows[k], rows[k] + n));
    k = e;
  }
  return out;
}

std::string Tensor::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape_.size(); ++i) s += (i ? ", " : "") + std::to_string(shape_[i]);
  return s + "]";
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined tensor";
  return str(dtype_name(dtype_), shape_str(), " (", device_name(device_), ")");
}

static std::string dtypes_str(std::initializer_list<DType> dtypes) {
  std::string s;
  for (DType d : dtypes) s += (s.empty() ? "" : "|") + std::string(dtype_name(d));
  return s;
}

void check_arg_dim(const Tensor& t, const char* name, std::initializer_list<DType> dtypes, int dims) {
  SPECDEC_CHECK(t.defined(), "E_ARG", name, ": tensor is missing");
  bool ok = dtypes.size() == 0;
  for (DType d : dtypes) ok = ok || d == t.dtype();
  SPECDEC_CHECK(ok, "E_ARG", name, ": expected dtype ", dtypes_str(dtypes), ", got ", t.describe());
  SPECDEC_CHECK(dims < 0 || t.dim() == dims, "E_ARG", name, ": expected ", dims, " dimensions, got ", t.describe());
}

void check_arg(const Tensor& t, const char* name, std::initializer_list<DType> dtypes, std::initializer_list<int64_t> shape) {
  check_arg_dim(t, name, dtypes, static_cast<int>(shape.size()));
  int i = 0;
  for (int64_t s : shape) {
    if (s >= 0 && t.shape()[static_cast<size_t>(i)] != s) {
      // The message is built only on failure: every op checks its arguments, on every call.
      std::string want = "[";
      int j = 0;
      for (int64_t w : shape) want += (j++ ? ", " : "") + (w < 0 ? std::string("*") : std::to_string(w));
      want += "]";
      SPECDEC_CHECK(false, "E_ARG", name, ": expected shape ", want, ", got ", t.describe());
    }
    ++i;
  }
}

void check_same_device(std::initializer_list<const Tensor*> ts, const char* op) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t || !t->defined()) continue;
    if (!first) first = t;
    SPECDEC_CHECK(t->device() == first->device(), "E_ARG", op, ": all tensors must be on one device (got ",
                  first->describe(), " and ", t->describe(), ")");
  }
}

}  // namespace specdec

// Tensor: dtype + shape + device + a shared, owned buffer (contiguous, row-major).
// Views (reshape, row slices) share the buffer; the buffer is freed when the last view goes.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "dtype.h"
#include "error.h"

namespace specdec {

enum class Device : int32_t { cpu = 0, cuda = 1 };
inline const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

// An owned allocation. CPU memory is 64-byte aligned; CUDA memory comes from the caching
// allocator in cuda/runtime.cu and goes back to it. Or host memory someone else owns (a
// memory-mapped checkpoint): `owner` keeps it alive and the storage frees nothing itself.
struct Storage {
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device = Device::cpu;
  std::shared_ptr<const void> owner;
  bool mapped = false;  // large CPU allocations: fresh anonymous pages, zero until written
  bool reusable = false;  // a mapping not asked zeroed: cached for the next of its size when freed
  // zeroed: the caller wants zeros; then CPU blocks past the small-block cache are mapped too (fresh
  // pages are zero, and untouched ones cost nothing: a KV cache's pages beyond those in use).
  Storage(size_t bytes, Device device, bool zeroed = false);
  Storage(void* external, size_t bytes, std::shared_ptr<const void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

// A tensor's shape: up to kMaxDims sizes held inline, so copying a Tensor (views, row slices,
// arguments passed by value: several per op) allocates nothing. Reads like a std::vector<int64_t>
// and converts to one where an API wants it.
class Shape {
 public:
  static constexpr int kMaxDims = 8;
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims) { assign(dims.begin(), dims.size()); }
  Shape(const std::vector<int64_t>& dims) { assign(dims.data(), dims.size()); }  // NOLINT: implicit on purpose
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  int64_t& operator[](size_t i) { return d_[i]; }
  int64_t operator[](size_t i) const { return d_[i]; }
  const int64_t* begin() const { return d_; }
  const int64_t* end() const { return d_ + n_; }
  const int64_t* data() const { return d_; }
  int64_t back() const { return d_[n_ - 1]; }
  operator std::vector<int64_t>() const { return std::vector<int64_t>(begin(), end()); }  // NOLINT
  friend bool operator==(const Shape& a, const Shape& b) {
    if (a.n_ != b.n_) return false;
    for (size_t i = 0; i < a.n_; ++i)
      if (a.d_[i] != b.d_[i]) return false;
    return true;
  }
  friend bool operator!=(const Shape& a, const Shape& b) { return !(a == b); }

 private:
  void assign(const int64_t* p, size_t n) {
    SPECDEC_CHECK(n <= static_cast<size_t>(kMaxDims), "E_ARG", "a tensor has at most ", kMaxDims, " dimensions, got ", n);
    for (size_t i = 0; i < n; ++i) d_[i] = p[i];
    n_ = n;
  }
  int64_t d_[kMaxDims] = {};
  size_t n_ = 0;
};

class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(DType dtype, Shape shape, Device device = Device::cpu);
  static Tensor zeros(DType dtype, Shape shape, Device device = Device::cpu);
  // A CPU tensor holding a copy of host data (bytes must equal numel * dtype_size).
  static Tensor from_host(DType dtype, Shape shape, const void* data, Device device = Device::cpu);
  // A CPU tensor over `data` without a copy, kept valid by `owner` (e.g. the file mapping it lies
  // in). The memory may be read-only: only for tensors nothing writes to, such as model weights.
  static Tensor borrow_host(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  const Shape& shape() const { return shape_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int i) const;  // negative i counts from the end
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }

  void* data() const;
  template <typename T>
  T* ptr() const { return static_cast<T*>(data()); }

  // Same buffer, new shape (numel must match).
  Tensor view(Shape shape) const;
  // Rows [begin, end) of dimension 0, sharing the buffer.
  Tensor rows(int64_t begin, int64_t end) const;
  // The same buffer read as another dtype/shape from a byte offset within this tensor (bounds and
  // alignment checked): views of one packed upload (HostPack).
  Tensor reinterpret(size_t byte_offset, DType dtype, Shape shape) const;

  // Copies across the host/device boundary are counted (cpp/core/transfers.h) on both backends.
  Tensor to(Device device) const;          // a copy on `device` (a copy even if already there)
  void copy_from(const Tensor& src);       // same dtype and numel, any devices
  void copy_from_host(const void* src, size_t bytes);
  void copy_to_host(void* dst, size_t bytes) const;
  void fill_zero();

  std::string describe() const;  // e.g. "f32[3, 4] (cuda)"
  std::string shape_str() const; // e.g. "[3, 4]"

 private:
  // empty() and zeros(): zeroed storage may be a fresh mapping (Storage).
  static Tensor allocate(DType dtype, Shape shape, Device device, bool zeroed);

  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
  Shape shape_;
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes
};

// Row k of the result = row rows[k] of srcs[k] (2-D tensors of one dtype, width and device), copied
// on that device: the draft distributions and hidden states a step hands between models never go
// through the host. width > the rows' width: each row is zero-padded to it (a draft whose vocabulary
// is a prefix of the target's gives distributions with zeros on the ids it lacks).
Tensor gather_rows(const std::vector<Tensor>& srcs, const std::vector<int64_t>& rows, int64_t width = -1);

// Argument validation shared by every op (so CPU and CUDA report the same errors).
// `shape` entries of -1 match any size. Throws E_ARG naming `name`.
void check_arg(const Tensor& t, const char* name, std::initializer_list<DType> dtypes, std::initializer_list<int64_t> shape);
void check_arg_dim(const Tensor& t, const char* name, std::initializer_list<DType> dtypes, int dims);
void check_same_device(std::initializer_list<const Tensor*> ts, const char* op);

}  // namespace specdec

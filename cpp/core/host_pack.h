// Several small host arrays sent to a device as ONE upload. Segments are 16-byte aligned in one
// host buffer; after upload(), view(id) is a tensor over segment id of the device copy. A step's
// index arrays (token ids, positions, masks, page tables) travel together this way, so the CUDA
// backend issues one async copy per step instead of one synchronous copy per array.
#pragma once
#include <cstring>
#include <vector>

#include "tensor.h"

namespace specdec {

class HostPack {
 public:
  // Appends n elements of `dtype` (sizeof(T) must be its size); returns the segment id.
  template <typename T>
  int add(DType dtype, const T* data, int64_t n) {
    SPECDEC_CHECK(sizeof(T) == dtype_size(dtype) && n >= 0, "E_ARG", "HostPack::add: bad segment");
    const size_t at = (bytes_.size() + 15) / 16 * 16, len = static_cast<size_t>(n) * sizeof(T);
    bytes_.resize(at + len);
    if (len) std::memcpy(bytes_.data() + at, data, len);
    segs_.push_back({at, dtype, n});
    return static_cast<int>(segs_.size()) - 1;
  }
  template <typename T>
  int add(DType dtype, const std::vector<T>& v) {
    return add(dtype, v.data(), static_cast<int64_t>(v.size()));
  }

  // One copy of every segment to `device` (one counted upload).
  void upload(Device device) {
    const size_t padded = (bytes_.size() + 15) / 16 * 16;
    bytes_.resize(padded == 0 ? 16 : padded, 0);
    buf_ = Tensor::from_host(DType::u32, {static_cast<int64_t>(bytes_.size() / 4)}, bytes_.data(), device);
  }

  Tensor view(int id) const {
    const Seg& s = segs_.at(static_cast<size_t>(id));
    return buf_.reinterpret(s.offset, s.dtype, {s.n});
  }

 private:
  struct Seg {
    size_t offset;
    DType dtype;
    int64_t n;
  };
  std::vector<unsigned char> bytes_;
  std::vector<Seg> segs_;
  Tensor buf_;
};

}  // namespace specdec

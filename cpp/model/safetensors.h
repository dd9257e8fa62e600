// Safetensors reader: memory-maps the file, validates everything (header length, JSON, dtypes,
// shapes, offsets inside the data section, no overlaps) and names the file and tensor on failure.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../core/tensor.h"

namespace specdec {

// The safetensors name of a core dtype ("F32", "BF16", ...).
const char* safetensors_dtype_name(DType d);

struct SafetensorInfo {
  std::string name;
  DType dtype = DType::f32;   // F32, F16, BF16, I32, F64, U32, U64
  std::vector<int64_t> shape;
  const void* data = nullptr;  // inside the mapping
  size_t nbytes = 0;
};

class SafetensorsFile : public std::enable_shared_from_this<SafetensorsFile> {
 public:
  // Throws E_IO (cannot open/map) or E_FORMAT (invalid), naming the path and, where relevant, the tensor.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0 || raw_.count(name) != 0; }
  // E_FORMAT if missing; E_UNSUPPORTED naming the dtype for a tensor of another valid dtype (raw()).
  const SafetensorInfo& get(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A tensor on `device` holding a copy of `name` (dtype kept).
  Tensor load(const std::string& name, Device device) const;
  // `name` as a CPU tensor over the mapping itself (no copy; the tensor keeps the file mapped).
  // Read-only. A copy instead when the data is not aligned to its element size (a header length
  // that is not a multiple of 8, which the format allows).
  Tensor view(const std::string& name) const;

  // Any tensor's bytes as stored, with its dtype's name (I64, BOOL, U8, ... included: a checkpoint
  // may carry such buffers, e.g. an EAGLE-3 head's d2t; they are validated like the others at open).
  struct Raw {
    std::string dtype;
    std::vector<int64_t> shape;
    const void* data = nullptr;
    size_t nbytes = 0;
  };
  Raw raw(const std::string& name) const;

  // The whole mapped file, for checks that every data pointer lies inside it (fuzz/).
  const void* mapping() const { return map_; }
  size_t mapping_size() const { return map_size_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, SafetensorInfo> tensors_;
  std::map<std::string, Raw> raw_;  // tensors of dtypes specdec does not load
  std::map<std::string, std::string> metadata_;
};

}  // namespace specdec

// Which backends are compiled in and usable at run time, and why CUDA is not when it is not.
#pragma once
#include <string>
#include <vector>

namespace specdec {

struct GpuInfo {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;
  size_t total_memory = 0;
};

struct BackendInfo {
  bool cuda_compiled = false;
  bool cuda_available = false;
  std::string cuda_reason;          // why CUDA is not available (empty when it is)
  int cuda_runtime_version = 0;     // e.g. 13000
  int cuda_driver_version = 0;      // 0 when no driver
  std::vector<std::string> cuda_archs;  // compiled architectures, e.g. sm_80, sm_90, compute_90
  std::vector<GpuInfo> gpus;
};

// Queried once, on first use.
const BackendInfo& backend_info();
bool cuda_available();

}  // namespace specdec

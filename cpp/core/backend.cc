#include "backend.h"

#ifdef SPECDEC_WITH_CUDA
#include "../../cuda/cuda_backend.h"
#endif

namespace specdec {

const BackendInfo& backend_info() {
  static const BackendInfo info = [] {
    BackendInfo b;
#ifdef SPECDEC_WITH_CUDA
    b.cuda_compiled = true;
    try {
      cuda::query(b);
    } catch (const std::exception& e) {
      b.cuda_available = false;
      b.cuda_reason = e.what();
    }
#else
    b.cuda_compiled = false;
    b.cuda_reason =
        "this binary was built without the CUDA backend (nvcc was not found at build time, or SPECDEC_CUDA=OFF); "
        "install the CUDA toolkit and run `npm run build:native`";
#endif
    return b;
  }();
  return info;
}

bool cuda_available() { return backend_info().cuda_available; }

}  // namespace specdec

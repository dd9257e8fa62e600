// cudaDriverProbe(): which CUDA version the installed driver supports, asked of libcuda through
// dlopen (no link-time dependency), so the CPU build can tell the loader (lib/native.ts) which CUDA
// prebuild this machine can run before any CUDA binary is loaded.
#include "napi_util.h"

#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#endif

namespace specdec {
namespace napi {
namespace {

struct DriverProbe {
  int version = 0;     // cuDriverGetVersion's value (1000 * major + 10 * minor); 0 when unknown
  std::string reason;  // why there is no version
};

DriverProbe probe_driver() {
  DriverProbe p;
#if defined(__linux__)
  // The driver installs libcuda.so.1 (the unversioned name is a development symlink).
  void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) lib = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* e = dlerror();
    p.reason = std::string("no NVIDIA driver: libcuda.so.1 not found (") + (e ? e : "dlopen failed") + ")";
    return p;
  }
  using GetVersion = int (*)(int*);
  auto get = reinterpret_cast<GetVersion>(dlsym(lib, "cuDriverGetVersion"));
  int v = 0;
  if (!get) {
    p.reason = "libcuda.so.1 has no cuDriverGetVersion";
  } else if (int rc = get(&v); rc != 0 || v <= 0) {
    p.reason = "cuDriverGetVersion failed (CUresult " + std::to_string(rc) + ")";
  } else {
    p.version = v;
  }
  // The handle stays open: a CUDA build loaded next uses the same library.
#else
  p.reason = "CUDA prebuilds are only provided for Linux";
#endif
  return p;
}

Napi::Value CudaDriverProbeJs(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    DriverProbe p = probe_driver();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("version", p.version);
    if (!p.reason.empty()) o.Set("reason", p.reason);
    return o;
  });
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("cudaDriverProbe", Napi::Function::New(env, CudaDriverProbeJs, "cudaDriverProbe"));
}

static Registrar reg(&Init);

}  // namespace
}  // namespace napi
}  // namespace specdec

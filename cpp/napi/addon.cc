// Module entry: every *_napi.cc file registers its exports through napi::Registrar.
#include "../core/backend.h"
#include "../core/transfers.h"
#include "napi_util.h"
#ifdef SPECDEC_WITH_CUDA
#include "../../cuda/cuda_backend.h"
#endif

namespace specdec {
namespace napi {
namespace {

Napi::Value BackendInfoJs(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    const BackendInfo& b = backend_info();
    Napi::Object o = Napi::Object::New(env);
    o.Set("cudaCompiled", b.cuda_compiled);
    o.Set("cudaAvailable", b.cuda_available);
    o.Set("cudaReason", b.cuda_reason);
    o.Set("cudaRuntimeVersion", b.cuda_runtime_version);
    o.Set("cudaDriverVersion", b.cuda_driver_version);
    Napi::Array archs = Napi::Array::New(env, b.cuda_archs.size());
    for (size_t i = 0; i < b.cuda_archs.size(); ++i) archs.Set(uint32_t(i), b.cuda_archs[i]);
    o.Set("cudaArchs", archs);
    Napi::Array gpus = Napi::Array::New(env, b.gpus.size());
    for (size_t i = 0; i < b.gpus.size(); ++i) {
      Napi::Object g = Napi::Object::New(env);
      g.Set("index", b.gpus[i].index);
      g.Set("name", b.gpus[i].name);
      g.Set("computeCapability", std::to_string(b.gpus[i].major) + "." + std::to_string(b.gpus[i].minor));
      g.Set("totalMemory", double(b.gpus[i].total_memory));
      gpus.Set(uint32_t(i), g);
    }
    o.Set("gpus", gpus);
    return o;
  });
}

// transferCounters() -> process-wide counts since load (cpp/core/transfers.h) and N-API calls.
Napi::Value TransferCountersJs(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    // A Float64Array, not an object: seven named properties cost more than the rest of the call
    // (the engine reads the counters at every request's start and end). The order is documented at
    // transferCounters in typings/native.d.ts and read by lib/transfers.ts.
    const TransferCounters c = transfer_counters();
    auto a = Napi::Float64Array::New(info.Env(), 9);
    double* d = a.Data();
    d[0] = double(c.uploads);
    d[1] = double(c.upload_bytes);
    d[2] = double(c.readbacks);
    d[3] = double(c.readback_bytes);
    d[4] = double(c.blocking_waits);
    d[5] = double(c.device_ops);
    d[6] = double(napi_call_count().load());
    d[7] = double(c.graph_launches);
    d[8] = double(c.graph_captures);
    return a;
  });
}

// cudaProfile(reset) -> kernel timing since the last reset (cuda/profile.cu; SPECDEC_CUDA_PROFILE=1).
Napi::Value CudaProfileJs(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    const bool reset = info.Length() > 0 && info[0].IsBoolean() && info[0].As<Napi::Boolean>().Value();
    Napi::Object o = Napi::Object::New(env);
#ifdef SPECDEC_WITH_CUDA
    const BackendInfo& b = backend_info();
    // Without a usable GPU there is nothing to time (and no stream to wait for).
    const cuda::ProfileReport r = b.cuda_available ? cuda::profile_report(reset) : cuda::ProfileReport{};
    o.Set("enabled", r.enabled);
    if (!b.cuda_available) o.Set("reason", "CUDA is not usable here: " + b.cuda_reason);
    else if (!r.enabled) o.Set("reason", "kernel timing is off (SPECDEC_CUDA_PROFILE=1 at start, or cudaProfileEnable(true))");
    Napi::Array rows = Napi::Array::New(env, r.rows.size());
    for (size_t i = 0; i < r.rows.size(); ++i) {
      Napi::Object row = Napi::Object::New(env);
      row.Set("name", r.rows[i].name);
      row.Set("calls", double(r.rows[i].calls));
      row.Set("totalUs", r.rows[i].total_us);
      rows.Set(uint32_t(i), row);
    }
    o.Set("rows", rows);
    o.Set("spanUs", r.span_us);
    o.Set("busyUs", r.busy_us);
    o.Set("launches", double(r.launches));
    o.Set("truncated", r.truncated);
#else
    (void)reset;
    o.Set("enabled", false);
    o.Set("reason", "this binary has no CUDA backend");
    o.Set("rows", Napi::Array::New(env, 0));
    o.Set("spanUs", 0.0);
    o.Set("busyUs", 0.0);
    o.Set("launches", 0.0);
    o.Set("truncated", false);
#endif
    return o;
  });
}

// cudaProfileEnable(on) -> the previous state: switches the kernel timing of later launches (a bench
// times one pass of a kernel this way, leaving its other passes untouched). False without CUDA.
Napi::Value CudaProfileEnableJs(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsBoolean()) fail("E_ARG", "cudaProfileEnable: expected a boolean");
#ifdef SPECDEC_WITH_CUDA
    if (!backend_info().cuda_available) return Napi::Boolean::New(env, false);
    return Napi::Boolean::New(env, cuda::profile_set_enabled(info[0].As<Napi::Boolean>().Value()));
#else
    return Napi::Boolean::New(env, false);
#endif
  });
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("backendInfo", Napi::Function::New(env, BackendInfoJs, "backendInfo"));
  exports.Set("transferCounters", Napi::Function::New(env, TransferCountersJs, "transferCounters"));
  exports.Set("cudaProfile", Napi::Function::New(env, CudaProfileJs, "cudaProfile"));
  exports.Set("cudaProfileEnable", Napi::Function::New(env, CudaProfileEnableJs, "cudaProfileEnable"));
  exports.Set("abiVersion", Napi::Number::New(env, 1));
  for (InitFn f : registry()) f(env, exports);
  return exports;
}

}  // namespace napi
}  // namespace specdec

static Napi::Object SpecdecInit(Napi::Env env, Napi::Object exports) { return specdec::napi::Init(env, exports); }
NODE_API_MODULE(specdec, SpecdecInit)

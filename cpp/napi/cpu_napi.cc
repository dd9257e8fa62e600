// N-API glue for what the CPU backend runs on (cpp/cpu/peak.h): cpuInfo() and cpuPeakGflops().
#include "../cpu/peak.h"
#include "../cpu/thread_pool.h"
#include "napi_util.h"

namespace specdec {
namespace napi {
namespace {

cpu::simd::Isa isa_arg(const Napi::Value& v) {
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string();
  if (s == "portable") return cpu::simd::Isa::portable;
  if (s == "avx2") return cpu::simd::Isa::avx2;
  if (s == "avx512") return cpu::simd::Isa::avx512;
  fail("E_ARG", "simd: expected 'portable', 'avx2' or 'avx512'");
}

// cpuInfo() -> { simd, best, threads, coreLent }
Napi::Value CpuInfo(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("simd", cpu::simd::isa_name(cpu::simd::isa()));
    o.Set("best", cpu::simd::isa_name(cpu::simd::detect_isa()));
    o.Set("threads", cpu::pool_threads());
    o.Set("coreLent", cpu::core_lent());
    return o;
  });
}

// cpuPeakGflops(simd, seconds) -> GFLOP/s
Napi::Value CpuPeakGflops(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const cpu::simd::Isa isa = isa_arg(info[0]);
    return Napi::Number::New(info.Env(), cpu::fma_peak_gflops(isa, get_number(info[1], "seconds")));
  });
}

// cpuLendCore(ms): see cpu::lend_core.
Napi::Value CpuLendCore(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const double ms = get_number(info[0], "ms");
    if (!(ms >= 0) || ms > 60000) fail("E_ARG", "ms: expected a number of milliseconds in [0, 60000], got ", ms);
    cpu::lend_core(ms);
    return info.Env().Undefined();
  });
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("cpuLendCore", Napi::Function::New(env, CpuLendCore, "cpuLendCore"));
  exports.Set("cpuInfo", Napi::Function::New(env, CpuInfo, "cpuInfo"));
  exports.Set("cpuPeakGflops", Napi::Function::New(env, CpuPeakGflops, "cpuPeakGflops"));
}

static Registrar reg(&Init);

}  // namespace
}  // namespace napi
}  // namespace specdec

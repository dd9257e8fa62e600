// N-API glue for what the CPU backend runs on (cpp/cpu/peak.h): cpuInfo() and cpuPeakGflops().
#include "../cpu/matmul_amx.h"
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
  fail("E_ARG", "simd: expected 'portable', 'avx2', 'avx512' or 'amx'");
}

// cpuInfo() -> { simd, best, matmul, amx: { mode, reason, selfTested, selfTestError, matchesEmulation },
//               threads, coreLent, poolJobs, poolSmallInline }
// matmul: what bf16 weights run on ('amx', 'amx-emulated' or the vector path's name).
Napi::Value CpuInfo(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("simd", cpu::simd::isa_name(cpu::simd::isa()));
    o.Set("best", cpu::simd::isa_name(cpu::simd::detect_isa()));
    const cpu::amx::Status& amx = cpu::amx::status();
    o.Set("matmul", amx.mode == cpu::amx::Mode::hardware   ? "amx"
                    : amx.mode == cpu::amx::Mode::emulated ? "amx-emulated"
                                                           : cpu::simd::isa_name(cpu::simd::isa()));
    Napi::Object a = Napi::Object::New(info.Env());
    a.Set("mode", cpu::amx::mode_name(amx.mode));
    a.Set("reason", amx.reason);
    a.Set("selfTested", amx.self_tested);
    a.Set("selfTestError", amx.self_test_error);
    a.Set("matchesEmulation", amx.matches_emulation);
    o.Set("amx", a);
    o.Set("threads", cpu::pool_threads());
    o.Set("coreLent", cpu::core_lent());
    const cpu::PoolStats st = cpu::pool_stats();
    o.Set("poolJobs", static_cast<double>(st.dispatched));
    o.Set("poolSmallInline", static_cast<double>(st.small_inline));
    return o;
  });
}

// cpuPeakGflops(simd | 'amx', seconds) -> GFLOP/s ('amx': TDPBF16PS's bf16 products)
Napi::Value CpuPeakGflops(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    if (info[0].IsString() && info[0].As<Napi::String>().Utf8Value() == "amx")
      return Napi::Number::New(info.Env(), cpu::amx::peak_gflops(get_number(info[1], "seconds")));
    const cpu::simd::Isa isa = isa_arg(info[0]);
    return Napi::Number::New(info.Env(), cpu::fma_peak_gflops(isa, get_number(info[1], "seconds")));
  });
}

// cpuLendFlag() -> Int32Array [1] over cpu::lend_flag(), a count of lends (nonzero: one core is
// lent to this thread's other work). The word lives as long as the pool, which is never freed,
// so the external buffer never dangles.
Napi::Value CpuLendFlag(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    auto buf = Napi::ArrayBuffer::New(info.Env(), cpu::lend_flag(), sizeof(int32_t));
    return Napi::Int32Array::New(info.Env(), 1, buf, 0);
  });
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("cpuLendFlag", Napi::Function::New(env, CpuLendFlag, "cpuLendFlag"));
  exports.Set("cpuInfo", Napi::Function::New(env, CpuInfo, "cpuInfo"));
  exports.Set("cpuPeakGflops", Napi::Function::New(env, CpuPeakGflops, "cpuPeakGflops"));
}

static Registrar reg(&Init);

}  // namespace
}  // namespace napi
}  // namespace specdec

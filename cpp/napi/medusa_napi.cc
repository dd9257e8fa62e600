// N-API glue for the fused Medusa heads (cpp/model/medusa.h).
#include <cstring>

#include "../model/medusa.h"
#include "napi_util.h"

namespace specdec {
namespace napi {
namespace {

// medusaTopK(x, heads: { w: Tensor[], b: Tensor[], lmHead: Tensor }[], k) -> Int32Array [heads * R * k]
Napi::Value MedusaTopK(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const Tensor x = tensor_arg(info[0], "x");
    const std::vector<MedusaHead> heads = medusa_heads_arg(info[1]);
    const int64_t k = get_int(info[2], "k");
    SPECDEC_CHECK(k >= 1 && k <= INT32_MAX, "E_ARG", "k: expected an integer >= 1, got ", k);
    const std::vector<int32_t> ids = medusa_top_k(heads, x, static_cast<int32_t>(k));
    auto out = Napi::Int32Array::New(info.Env(), ids.size());
    if (!ids.empty()) std::memcpy(out.Data(), ids.data(), ids.size() * 4);
    return out;
  });
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("medusaTopK", Napi::Function::New(env, MedusaTopK, "medusaTopK"));
}

static Registrar reg(&Init);

}  // namespace
}  // namespace napi
}  // namespace specdec

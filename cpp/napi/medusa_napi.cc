// N-API glue for the fused Medusa heads (cpp/model/medusa.h).
#include <cstring>

#include "../model/medusa.h"
#include "napi_util.h"

namespace specdec {
namespace napi {
namespace {

std::vector<Tensor> tensors(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsArray(), "E_ARG", name, ": expected an array of tensors");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<Tensor> out;
  for (uint32_t i = 0; i < a.Length(); ++i) out.push_back(tensor_arg(a.Get(i), name));
  return out;
}

// medusaTopK(x, heads: { w: Tensor[], b: Tensor[], lmHead: Tensor }[], k) -> Int32Array [heads * R * k]
Napi::Value MedusaTopK(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const Tensor x = tensor_arg(info[0], "x");
    SPECDEC_CHECK(info[1].IsArray(), "E_ARG", "heads: expected an array");
    Napi::Array hs = info[1].As<Napi::Array>();
    std::vector<MedusaHead> heads(hs.Length());
    for (uint32_t h = 0; h < hs.Length(); ++h) {
      SPECDEC_CHECK(hs.Get(h).IsObject(), "E_ARG", "heads[", h, "]: expected { w, b, lmHead }");
      Napi::Object o = hs.Get(h).As<Napi::Object>();
      heads[h].w = tensors(o.Get("w"), "heads[].w");
      heads[h].b = tensors(o.Get("b"), "heads[].b");
      heads[h].lm_head = tensor_arg(o.Get("lmHead"), "heads[].lmHead");
    }
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

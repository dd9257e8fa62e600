// N-API glue for the fused Medusa heads (cpp/model/medusa.h).
#include <cstring>
#include <optional>

#include "../core/ops_sampling.h"
#include "../model/medusa.h"
#include "napi_util.h"

namespace specdec {
namespace napi {
namespace {

// medusaTopK(x, heads: { w: Tensor[], b: Tensor[], lmHead: Tensor }[] | set, k, penalties?) -> Int32Array
// [heads * R * k]; penalties (samplingPenalize's argument, one row per row of x) on every head's logits
Napi::Value MedusaTopK(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const Tensor x = tensor_arg(info[0], "x");
    const std::vector<MedusaHead> heads = medusa_heads_arg(info[1]);
    const int64_t k = get_int(info[2], "k");
    SPECDEC_CHECK(k >= 1 && k <= INT32_MAX, "E_ARG", "k: expected an integer >= 1, got ", k);
    std::optional<PenaltyArgs> pen;
    if (info.Length() > 3 && !info[3].IsUndefined()) pen = penalty_args(info[3], true);
    const std::vector<int32_t> ids = medusa_top_k(heads, x, static_cast<int32_t>(k), pen ? &*pen : nullptr);
    auto out = Napi::Int32Array::New(info.Env(), ids.size());
    if (!ids.empty()) std::memcpy(out.Data(), ids.data(), ids.size() * 4);
    return out;
  });
}

// medusaHeadSet(heads: { w, b, lmHead }[] | set, count?) -> a handle over the heads, parsed once and
// their small CPU weights packed for the k-serial kernel (pack_medusa_heads); from a set, its first
// `count` heads (the same tensors and packs).
Napi::Value MedusaHeadSetCreate(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    auto set = std::make_shared<MedusaHeadSet>();
    set->heads = medusa_heads_arg(info[0]);
    if (info[0].IsExternal()) {
      const int64_t n = info.Length() > 1 && !info[1].IsUndefined() ? get_int(info[1], "count") : static_cast<int64_t>(set->heads.size());
      SPECDEC_CHECK(n >= 1 && n <= static_cast<int64_t>(set->heads.size()), "E_ARG", "count: expected 1 .. ", set->heads.size(), ", got ", n);
      set->heads.resize(static_cast<size_t>(n));
    } else {
      SPECDEC_CHECK(!set->heads.empty(), "E_ARG", "heads: expected at least one head");
      pack_medusa_heads(set->heads);
    }
    return wrap_handle(info.Env(), std::move(set));
  });
}

// medusaHeadSetPacks(set) -> { ws: (pack | null)[], lmHead: pack | null }[]: the packs a set's calls
// use, for the same matmuls one op at a time (layerMatmul's serial argument).
Napi::Value MedusaHeadSetPacks(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const std::vector<MedusaHead> heads = medusa_heads_arg(info[0]);
    Napi::Env env = info.Env();
    Napi::Array out = Napi::Array::New(env, heads.size());
    for (size_t h = 0; h < heads.size(); ++h) {
      Napi::Array ws = Napi::Array::New(env, heads[h].w.size());
      for (size_t l = 0; l < heads[h].w.size(); ++l)
        ws.Set(static_cast<uint32_t>(l), wrap_serial(env, l < heads[h].ws.size() ? heads[h].ws[l] : nullptr));
      Napi::Object o = Napi::Object::New(env);
      o.Set("ws", ws);
      o.Set("lmHead", wrap_serial(env, heads[h].lm_s));
      out.Set(static_cast<uint32_t>(h), o);
    }
    return out;
  });
}

// medusaHeadSetRelease(set): its tensors and packs go now rather than when the handle is collected.
Napi::Value MedusaHeadSetRelease(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const auto set = handle_arg<MedusaHeadSet>(info[0], "set", "Medusa heads (medusaHeadSet)");
    if (set) set->heads.clear();
    return info.Env().Undefined();
  });
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("medusaTopK", Napi::Function::New(env, MedusaTopK, "medusaTopK"));
  exports.Set("medusaHeadSet", Napi::Function::New(env, MedusaHeadSetCreate, "medusaHeadSet"));
  exports.Set("medusaHeadSetPacks", Napi::Function::New(env, MedusaHeadSetPacks, "medusaHeadSetPacks"));
  exports.Set("medusaHeadSetRelease", Napi::Function::New(env, MedusaHeadSetRelease, "medusaHeadSetRelease"));
}

static Registrar reg(&Init);

}  // namespace
}  // namespace napi
}  // namespace specdec

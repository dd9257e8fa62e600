// N-API glue for sampling and verification: converts JS values, calls specdec::ops, converts back.
#include <cstring>

#include "../core/ops_sampling.h"
#include "../core/spec_math.h"
#include "napi_util.h"

namespace specdec {
namespace napi {
namespace {

std::vector<uint64_t> get_u64_array(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_biguint64_array, "E_ARG", name,
                ": expected a BigUint64Array");
  auto a = v.As<Napi::TypedArrayOf<uint64_t>>();
  return std::vector<uint64_t>(a.Data(), a.Data() + a.ElementLength());
}

std::vector<uint32_t> get_u32_array(const Napi::Value& v, const char* name, size_t n) {
  SPECDEC_CHECK(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint32_array, "E_ARG", name,
                ": expected a Uint32Array");
  auto a = v.As<Napi::Uint32Array>();
  SPECDEC_CHECK(a.ElementLength() == n, "E_ARG", name, ": expected ", n, " elements, got ", a.ElementLength());
  return std::vector<uint32_t>(a.Data(), a.Data() + n);
}

Tensor u64_tensor(const std::vector<uint64_t>& v, Device dev) {
  return Tensor::from_host(DType::u64, {static_cast<int64_t>(v.size())}, v.data(), dev);
}
Tensor i32_tensor(const std::vector<int32_t>& v, Device dev) {
  return Tensor::from_host(DType::i32, {static_cast<int64_t>(v.size())}, v.data(), dev);
}

Napi::Int32Array to_js(Napi::Env env, const Tensor& t) {
  auto a = Napi::Int32Array::New(env, static_cast<size_t>(t.numel()));
  t.copy_to_host(a.Data(), static_cast<size_t>(t.numel()) * 4);
  return a;
}

float opt_float(const Napi::Object& o, const char* key, float fallback) {
  return has_field(o, key) ? static_cast<float>(get_number(o.Get(key), key)) : fallback;
}

// processLogits(logits, { temperature, topK, topP, minP }) -> probs
Napi::Value ProcessLogits(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor logits = tensor_arg(info[0], "logits");
    SamplingParams p;
    if (info.Length() > 1 && info[1].IsObject()) {
      Napi::Object o = info[1].As<Napi::Object>();
      p.temperature = opt_float(o, "temperature", p.temperature);
      if (has_field(o, "topK")) {
        int64_t k = get_int(o.Get("topK"), "topK");
        SPECDEC_CHECK(k >= 0 && k <= INT32_MAX, "E_ARG", "topK: expected an integer >= 0, got ", k);
        p.top_k = static_cast<int32_t>(k);
      }
      p.top_p = opt_float(o, "topP", p.top_p);
      p.min_p = opt_float(o, "minP", p.min_p);
    }
    SPECDEC_CHECK(logits.dim() == 2, "E_ARG", "logits: expected [N, V], got ", logits.describe());
    Tensor probs = Tensor::empty(DType::f32, logits.shape(), logits.device());
    ops::process_logits(logits, p, probs);
    return wrap_tensor(info.Env(), probs);
  });
}

Napi::Value Argmax(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor logits = tensor_arg(info[0], "logits");
    SPECDEC_CHECK(logits.dim() == 2, "E_ARG", "logits: expected [N, V], got ", logits.describe());
    Tensor out = Tensor::empty(DType::i32, {logits.size(0)}, logits.device());
    ops::argmax(logits, out);
    return wrap_tensor(info.Env(), out);
  });
}

// sample(probs, seeds, offsets) -> Int32Array (one token per row, -1 for a row without mass)
Napi::Value Sample(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor probs = tensor_arg(info[0], "probs");
    SPECDEC_CHECK(probs.dim() == 2, "E_ARG", "probs: expected [N, V], got ", probs.describe());
    auto seeds = get_u64_array(info[1], "seeds"), offsets = get_u64_array(info[2], "offsets");
    SPECDEC_CHECK(static_cast<int64_t>(seeds.size()) == probs.size(0), "E_ARG", "seeds: expected ", probs.size(0),
                  " entries (one per row), got ", seeds.size());
    SPECDEC_CHECK(static_cast<int64_t>(offsets.size()) == probs.size(0), "E_ARG", "offsets: expected ", probs.size(0),
                  " entries (one per row), got ", offsets.size());
    Tensor out = Tensor::empty(DType::i32, {probs.size(0)}, probs.device());
    ops::sample(probs, u64_tensor(seeds, probs.device()), u64_tensor(offsets, probs.device()), out);
    return to_js(info.Env(), out);
  });
}

Napi::Value TopK(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor x = tensor_arg(info[0], "x");
    int64_t k = get_int(info[1], "k");
    SPECDEC_CHECK(x.dim() == 2, "E_ARG", "x: expected [N, V], got ", x.describe());
    SPECDEC_CHECK(k >= 1 && k <= x.size(1), "E_ARG", "k: expected 1 <= k <= ", x.size(1), " (the row length), got ", k);
    Tensor vals = Tensor::empty(DType::f32, {x.size(0), k}, x.device());
    Tensor ids = Tensor::empty(DType::i32, {x.size(0), k}, x.device());
    ops::top_k(x, static_cast<int32_t>(k), vals, ids);
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("values", wrap_tensor(info.Env(), vals));
    o.Set("ids", wrap_tensor(info.Env(), ids));
    return o;
  });
}

// verify({ mode, nodeIndptr, parents, tokens, target, draft?, seeds?, offsets?, typicalThreshold?,
//          typicalAlpha?, maxDepth }) -> flat { acceptedNodes, emitted, acceptCount, depthAccepts }
Napi::Value Verify(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    SPECDEC_CHECK(info[0].IsObject(), "E_ARG", "input: expected an object");
    Napi::Object o = info[0].As<Napi::Object>();
    VerifyArgs a;
    const std::string mode = get_string(o.Get("mode"), "mode");
    if (mode == "greedy") a.mode = VerifyMode::greedy;
    else if (mode == "rejection") a.mode = VerifyMode::rejection;
    else if (mode == "typical") a.mode = VerifyMode::typical;
    else fail("E_ARG", "mode: expected 'greedy', 'rejection' or 'typical', got '", mode, "'");
    a.target = tensor_arg(o.Get("target"), "target");
    const Device dev = a.target.device();
    a.node_indptr = i32_tensor(get_i32_array(o.Get("nodeIndptr"), "nodeIndptr"), dev);
    a.parents = i32_tensor(get_i32_array(o.Get("parents"), "parents"), dev);
    a.tokens = i32_tensor(get_i32_array(o.Get("tokens"), "tokens"), dev);
    a.draft = optional_tensor_arg(o.Get("draft"), "draft");
    if (has_field(o, "seeds")) a.seeds = u64_tensor(get_u64_array(o.Get("seeds"), "seeds"), dev);
    if (has_field(o, "offsets")) a.offsets = u64_tensor(get_u64_array(o.Get("offsets"), "offsets"), dev);
    a.typical_threshold = opt_float(o, "typicalThreshold", a.typical_threshold);
    a.typical_alpha = opt_float(o, "typicalAlpha", a.typical_alpha);
    const int64_t depth = get_int(o.Get("maxDepth"), "maxDepth");
    SPECDEC_CHECK(depth >= 0 && depth <= (1 << 20), "E_ARG", "maxDepth: expected an integer in [0, 2^20], got ", depth);
    const int64_t B = a.node_indptr.numel() - 1, N = a.parents.numel();
    SPECDEC_CHECK(B >= 0, "E_ARG", "nodeIndptr: expected B + 1 >= 1 entries");
    VerifyResult r;
    r.accepted_nodes = Tensor::empty(DType::i32, {N}, dev);
    r.emitted = Tensor::empty(DType::i32, {N}, dev);
    r.accept_count = Tensor::empty(DType::i32, {B}, dev);
    r.depth_accepts = Tensor::zeros(DType::i32, {depth}, dev);
    ops::verify(a, r);
    Napi::Env env = info.Env();
    Napi::Object res = Napi::Object::New(env);
    res.Set("acceptedNodes", to_js(env, r.accepted_nodes));
    res.Set("emitted", to_js(env, r.emitted));
    res.Set("acceptCount", to_js(env, r.accept_count));
    res.Set("depthAccepts", to_js(env, r.depth_accepts));
    return res;
  });
}

// philox4x32(counter: Uint32Array(4), key: Uint32Array(2)) -> Uint32Array(4): for known-answer tests.
Napi::Value Philox(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    auto c = get_u32_array(info[0], "counter", 4), k = get_u32_array(info[1], "key", 2);
    sm::Philox4 r = sm::philox4x32_10(c.data(), k.data());
    auto a = Napi::Uint32Array::New(info.Env(), 4);
    std::memcpy(a.Data(), r.v, 16);
    return a;
  });
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("samplingProcessLogits", Napi::Function::New(env, ProcessLogits, "samplingProcessLogits"));
  exports.Set("samplingArgmax", Napi::Function::New(env, Argmax, "samplingArgmax"));
  exports.Set("samplingSample", Napi::Function::New(env, Sample, "samplingSample"));
  exports.Set("samplingTopK", Napi::Function::New(env, TopK, "samplingTopK"));
  exports.Set("verifyTree", Napi::Function::New(env, Verify, "verifyTree"));
  exports.Set("samplingPhilox4x32", Napi::Function::New(env, Philox, "samplingPhilox4x32"));
}

static Registrar reg(&Init);

}  // namespace
}  // namespace napi
}  // namespace specdec

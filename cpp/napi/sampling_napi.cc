// N-API glue for sampling and verification: converts JS values, calls specdec::ops, converts back.
#include <cstring>

#include "../core/ops_sampling.h"
#include "../core/spec_math.h"
#include "napi_util.h"

namespace specdec {
namespace napi {
namespace {

// A token the kernels could not draw (spec_math.h: no probability mass) is an error, not a token.
template <class... A>
void check_mass(int32_t token, const A&... where) {
  SPECDEC_CHECK(token != sm::kNoMass, "E_NUMERIC", where...,
                ": no probability mass to sample from (every probability is 0 or NaN: NaN or infinite logits?)");
}

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

// sample(probs, seeds, offsets) -> Int32Array (one token per row); a row without mass is E_NUMERIC
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
    Napi::Int32Array toks = to_js(info.Env(), out);
    for (size_t r = 0; r < toks.ElementLength(); ++r) check_mass(toks[r], "sample: probs row ", r);
    return toks;
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

// An Int32Array's elements in place, or a number[] converted into `tmp` (same errors as get_i32_array).
struct I32Span {
  const int32_t* data;
  int64_t n;
};
I32Span i32_span(const Napi::Value& v, const char* name, std::vector<int32_t>& tmp) {
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
    auto a = v.As<Napi::Int32Array>();
    return {a.Data(), static_cast<int64_t>(a.ElementLength())};
  }
  tmp = get_i32_array(v, name);
  return {tmp.data(), static_cast<int64_t>(tmp.size())};
}

// One device tensor holding the host arrays back to back (one allocation, one copy to a GPU);
// each array is then a view (rows) of it.
template <typename T>
Tensor packed(DType dt, std::initializer_list<std::pair<const T*, int64_t>> parts, Device dev) {
  int64_t total = 0;
  for (const auto& p : parts) total += p.second;
  Tensor t = Tensor::empty(dt, {total}, dev);
  T* dst = nullptr;
  thread_local std::vector<T> stage;  // GPU only: the host side of the one copy
  if (dev == Device::cpu) {
    dst = t.template ptr<T>();
  } else {
    stage.resize(static_cast<size_t>(total));
    dst = stage.data();
  }
  int64_t at = 0;
  for (const auto& p : parts) {
    if (p.second > 0) std::memcpy(dst + at, p.first, static_cast<size_t>(p.second) * sizeof(T));
    at += p.second;
  }
  if (dev != Device::cpu) t.copy_from_host(stage.data(), static_cast<size_t>(total) * sizeof(T));
  return t;
}

// verify({ mode, nodeIndptr, parents, tokens, target, draft?, seeds?, offsets?, typicalThreshold?,
//          typicalAlpha?, maxDepth }) -> flat { acceptedNodes, emitted, acceptCount, depthAccepts }
// Called once per decoding step, so the glue keeps allocations down: the three index arrays go
// to the device as one tensor (seeds + offsets as another), the four outputs are views of one
// tensor and come back as four Int32Arrays over one ArrayBuffer.
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
    std::vector<int32_t> t0, t1, t2;  // only for number[] inputs
    const I32Span indptr = i32_span(o.Get("nodeIndptr"), "nodeIndptr", t0);
    const I32Span parents = i32_span(o.Get("parents"), "parents", t1);
    const I32Span tokens = i32_span(o.Get("tokens"), "tokens", t2);
    a.draft = optional_tensor_arg(o.Get("draft"), "draft");
    const bool has_seeds = has_field(o, "seeds"), has_offsets = has_field(o, "offsets");
    std::vector<uint64_t> seeds, offsets;
    if (has_seeds) seeds = get_u64_array(o.Get("seeds"), "seeds");
    if (has_offsets) offsets = get_u64_array(o.Get("offsets"), "offsets");
    a.typical_threshold = opt_float(o, "typicalThreshold", a.typical_threshold);
    a.typical_alpha = opt_float(o, "typicalAlpha", a.typical_alpha);
    const int64_t depth = get_int(o.Get("maxDepth"), "maxDepth");
    SPECDEC_CHECK(depth >= 0 && depth <= (1 << 20), "E_ARG", "maxDepth: expected an integer in [0, 2^20], got ", depth);
    const int64_t B = indptr.n - 1, N = parents.n;
    SPECDEC_CHECK(B >= 0, "E_ARG", "nodeIndptr: expected B + 1 >= 1 entries");

    Tensor idx = packed<int32_t>(DType::i32, {{indptr.data, indptr.n}, {parents.data, parents.n}, {tokens.data, tokens.n}}, dev);
    a.node_indptr = idx.rows(0, indptr.n);
    a.parents = idx.rows(indptr.n, indptr.n + N);
    a.tokens = idx.rows(indptr.n + N, indptr.n + N + tokens.n);
    if (has_seeds || has_offsets) {
      const int64_t ns = static_cast<int64_t>(seeds.size()), no = static_cast<int64_t>(offsets.size());
      Tensor rng = packed<uint64_t>(DType::u64, {{seeds.data(), ns}, {offsets.data(), no}}, dev);
      if (has_seeds) a.seeds = rng.rows(0, ns);
      if (has_offsets) a.offsets = rng.rows(ns, ns + no);
    }
    // Outputs: acceptedNodes [N] | emitted [N] | acceptCount [B] | depthAccepts [depth] (zeroed).
    const int64_t total = 2 * N + B + depth;
    Tensor res_t = Tensor::zeros(DType::i32, {total}, dev);
    VerifyResult r;
    r.accepted_nodes = res_t.rows(0, N);
    r.emitted = res_t.rows(N, 2 * N);
    r.accept_count = res_t.rows(2 * N, 2 * N + B);
    r.depth_accepts = res_t.rows(2 * N + B, total);
    ops::verify(a, r);
    Napi::Env env = info.Env();
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, static_cast<size_t>(total) * 4);
    res_t.copy_to_host(buf.Data(), static_cast<size_t>(total) * 4);
    const int32_t* host = static_cast<const int32_t*>(buf.Data());
    for (int64_t b = 0; b < B; ++b)
      for (int32_t k = 0; k < host[2 * N + b]; ++k) check_mass(host[N + indptr.data[b] + k], "verify: sequence ", b, ", emitted token ", k);
    auto view = [&](int64_t begin, int64_t n) { return Napi::Int32Array::New(env, static_cast<size_t>(n), buf, static_cast<size_t>(begin) * 4); };
    Napi::Object res = Napi::Object::New(env);
    res.Set("acceptedNodes", view(0, N));
    res.Set("emitted", view(N, N));
    res.Set("acceptCount", view(2 * N, B));
    res.Set("depthAccepts", view(2 * N + B, depth));
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

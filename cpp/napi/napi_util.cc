#include "napi_util.h"

#include <map>
#include <mutex>

#include <cmath>
#include <new>

namespace specdec {
namespace napi {

std::atomic<uint64_t>& napi_call_count() {
  static std::atomic<uint64_t> n{0};  // worker threads may load the addon too
  return n;
}

std::vector<InitFn>& registry() {
  static std::vector<InitFn> r;
  return r;
}

Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Value().Set("code", Napi::String::New(env, code));
  return e;
}

namespace {
class Worker : public Napi::AsyncWorker {
 public:
  Worker(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> done,
         std::vector<Napi::Value> keep)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)),
        done_(std::move(done)) {
    for (auto& v : keep)
      if (v.IsObject()) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      work_();
    } catch (const Error& e) {
      code_ = e.code();
      msg_ = e.what();
    } catch (const std::exception& e) {
      code_ = "E_INTERNAL";
      msg_ = e.what();
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Value value, error;
    if (!code_.empty()) {
      error = make_error(env, code_, msg_).Value();
    } else {
      try {
        value = done_(env);
      } catch (const Napi::Error& e) {
        error = e.Value();
      } catch (const Error& e) {
        error = make_error(env, e.code(), e.what()).Value();
      } catch (const std::exception& e) {
        error = make_error(env, "E_INTERNAL", e.what()).Value();
      }
    }
    // Release what the closures hold (e.g. a handle's busy flag) here on the main thread, before
    // the promise settles: a caller never sees the work finished while its promise is pending.
    work_ = nullptr;
    done_ = nullptr;
    if (error.IsEmpty()) deferred_.Resolve(value);
    else deferred_.Reject(error);
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  std::function<void()> work_;
  std::function<Napi::Value(Napi::Env)> done_;
  std::vector<Napi::ObjectReference> refs_;
  std::string code_, msg_;
};
}  // namespace

Napi::Promise run_async(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> done,
                        std::vector<Napi::Value> keep) {
  auto* w = new Worker(env, std::move(work), std::move(done), std::move(keep));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Promise run_maybe_async(Napi::Env env, bool sync, std::function<void()> work,
                              std::function<Napi::Value(Napi::Env)> done, std::vector<Napi::Value> keep) {
  if (!sync) return run_async(env, std::move(work), std::move(done), std::move(keep));
  Napi::Promise::Deferred deferred = Napi::Promise::Deferred::New(env);
  try {
    work();
    deferred.Resolve(done(env));
  } catch (const Napi::Error& e) {
    deferred.Reject(e.Value());
  } catch (const Error& e) {
    deferred.Reject(make_error(env, e.code(), e.what()).Value());
  } catch (const std::bad_alloc&) {
    deferred.Reject(make_error(env, "E_OOM", "out of memory").Value());
  } catch (const std::exception& e) {
    deferred.Reject(make_error(env, "E_INTERNAL", e.what()).Value());
  }
  return deferred.Promise();
}

int64_t get_int(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsNumber(), "E_ARG", name, ": expected an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  SPECDEC_CHECK(std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9007199254740992.0, "E_ARG", name,
                ": expected an integer, got ", d);
  return static_cast<int64_t>(d);
}

double get_number(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsNumber(), "E_ARG", name, ": expected a number");
  double d = v.As<Napi::Number>().DoubleValue();
  SPECDEC_CHECK(!std::isnan(d), "E_ARG", name, ": expected a number, got NaN");
  return d;
}

bool get_bool(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsBoolean(), "E_ARG", name, ": expected a boolean");
  return v.As<Napi::Boolean>().Value();
}

std::string get_string(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsString(), "E_ARG", name, ": expected a string");
  return v.As<Napi::String>().Utf8Value();
}

std::vector<int64_t> get_int_array(const Napi::Value& v, const char* name) {
  std::vector<int64_t> out;
  if (v.IsTypedArray()) {
    auto ta = v.As<Napi::TypedArray>();
    if (ta.TypedArrayType() == napi_int32_array) {
      auto a = v.As<Napi::Int32Array>();
      for (size_t i = 0; i < a.ElementLength(); ++i) out.push_back(a[i]);
      return out;
    }
  }
  SPECDEC_CHECK(v.IsArray(), "E_ARG", name, ": expected an array of integers");
  auto a = v.As<Napi::Array>();
  for (uint32_t i = 0; i < a.Length(); ++i) out.push_back(get_int(a.Get(i), name));
  return out;
}

std::vector<int32_t> get_i32_array(const Napi::Value& v, const char* name) {
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
    auto a = v.As<Napi::Int32Array>();
    return std::vector<int32_t>(a.Data(), a.Data() + a.ElementLength());
  }
  std::vector<int32_t> out;
  for (int64_t x : get_int_array(v, name)) {
    SPECDEC_CHECK(x >= INT32_MIN && x <= INT32_MAX, "E_ARG", name, ": value ", x, " does not fit in int32");
    out.push_back(static_cast<int32_t>(x));
  }
  return out;
}

Device get_device(const Napi::Value& v, const char* name) {
  if (v.IsUndefined() || v.IsNull()) return Device::cpu;
  std::string s = get_string(v, name);
  if (s == "cpu") return Device::cpu;
  if (s == "cuda") return Device::cuda;
  fail("E_ARG", name, ": unknown device '", s, "' (expected 'cpu' or 'cuda')");
}

DType get_dtype(const Napi::Value& v, const char* name) {
  std::string s = get_string(v, name);
  DType t;
  SPECDEC_CHECK(dtype_from_name(s, &t), "E_ARG", name, ": unknown dtype '", s,
                "' (expected f32, f16, bf16, i32, u32, u64 or f64)");
  return t;
}

// Property keys as JS strings, made once per (env, literal) and kept for the process: looking a
// property up by C string makes and internalizes a new JS string on every call, which was a
// measurable part of a small model's per-step glue (a forward's inputs, a verification's fields).
// The strings live in an array held by a reference (Node-API 8 references only objects); an
// element read is cheap. Keyed by the literal's address (callers pass string literals).
static napi_value key(napi_env env, const char* name) {
  struct Keys {
    napi_ref array = nullptr;
    std::map<const char*, uint32_t> index;
  };
  static std::mutex mu;
  static auto* by_env = new std::map<napi_env, Keys>();  // never freed: a few dozen keys
  std::lock_guard<std::mutex> lk(mu);  // (one env per thread; different envs never share an entry)
  Keys& k = (*by_env)[env];
  napi_value arr = nullptr, v = nullptr;
  if (k.array == nullptr) {
    NAPI_THROW_IF_FAILED(env, napi_create_array(env, &arr), nullptr);
    NAPI_THROW_IF_FAILED(env, napi_create_reference(env, arr, 1, &k.array), nullptr);
  } else {
    NAPI_THROW_IF_FAILED(env, napi_get_reference_value(env, k.array, &arr), nullptr);
  }
  auto it = k.index.find(name);
  if (it != k.index.end()) {
    NAPI_THROW_IF_FAILED(env, napi_get_element(env, arr, it->second, &v), nullptr);
    return v;
  }
  const uint32_t i = static_cast<uint32_t>(k.index.size());
  NAPI_THROW_IF_FAILED(env, napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &v), nullptr);
  NAPI_THROW_IF_FAILED(env, napi_set_element(env, arr, i, v), nullptr);
  k.index.emplace(name, i);
  return v;
}

Napi::Value get_field(const Napi::Object& o, const char* name) { return o.Get(Napi::Value(o.Env(), key(o.Env(), name))); }

Napi::Object get_object(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsObject(), "E_ARG", name, ": expected an object");
  return v.As<Napi::Object>();
}

bool has_field(const Napi::Object& o, const char* name) {
  // One lookup: a missing property reads as undefined.
  Napi::Value v = get_field(o, name);
  return !v.IsUndefined() && !v.IsNull();
}

Tensor optional_tensor_arg(const Napi::Value& v, const char* name) {
  if (v.IsUndefined() || v.IsNull()) return Tensor();
  return tensor_arg(v, name);
}

std::vector<uint64_t> get_u64_array(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_biguint64_array, "E_ARG", name,
                ": expected a BigUint64Array");
  auto a = v.As<Napi::TypedArrayOf<uint64_t>>();
  return std::vector<uint64_t>(a.Data(), a.Data() + a.ElementLength());
}

SamplingParams sampling_params_arg(const Napi::Value& v) {
  SamplingParams p;
  if (!v.IsObject()) return p;
  Napi::Object o = v.As<Napi::Object>();
  if (has_field(o, "temperature")) p.temperature = static_cast<float>(get_number(get_field(o, "temperature"), "temperature"));
  if (has_field(o, "topK")) {
    int64_t k = get_int(get_field(o, "topK"), "topK");
    SPECDEC_CHECK(k >= 0 && k <= INT32_MAX, "E_ARG", "topK: expected an integer >= 0, got ", k);
    p.top_k = static_cast<int32_t>(k);
  }
  if (has_field(o, "topP")) p.top_p = static_cast<float>(get_number(get_field(o, "topP"), "topP"));
  if (has_field(o, "minP")) p.min_p = static_cast<float>(get_number(get_field(o, "minP"), "minP"));
  return p;
}

PenaltyArgs penalty_args(const Napi::Value& v, bool with_rows) {
  Napi::Object o = get_object(v, "penalties");
  PenaltyArgs a;
  const auto num = [&](const char* k, float dflt) {
    return has_field(o, k) ? static_cast<float>(get_number(get_field(o, k), k)) : dflt;
  };
  a.repetition = num("repetition", 1.0f);
  a.presence = num("presence", 0.0f);
  a.frequency = num("frequency", 0.0f);
  a.hist_indptr = get_i32_array(get_field(o, "histIndptr"), "histIndptr");
  a.hist_tokens = get_i32_array(get_field(o, "histTokens"), "histTokens");
  a.hist_counts = get_i32_array(get_field(o, "histCounts"), "histCounts");
  // The logit bias (optional): distinct ascending tokens and their f32 biases.
  if (has_field(o, "biasTokens") || has_field(o, "biasValues")) {
    a.bias_tokens = get_i32_array(get_field(o, "biasTokens"), "biasTokens");
    const Napi::Value bv = get_field(o, "biasValues");
    SPECDEC_CHECK(bv.IsTypedArray() && bv.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array, "E_ARG", "biasValues: expected a Float32Array");
    const auto f = bv.As<Napi::Float32Array>();
    a.bias_values.assign(f.Data(), f.Data() + f.ElementLength());
  }
  // Stop tokens banned before min_tokens (optional): per history, a list and how many positions.
  if (has_field(o, "banIndptr") || has_field(o, "banTokens") || has_field(o, "banBefore")) {
    a.ban_indptr = get_i32_array(get_field(o, "banIndptr"), "banIndptr");
    a.ban_tokens = get_i32_array(get_field(o, "banTokens"), "banTokens");
    a.ban_before = get_i32_array(get_field(o, "banBefore"), "banBefore");
  }
  if (with_rows) {
    a.row_seq = get_i32_array(get_field(o, "rowSeq"), "rowSeq");
    a.path_indptr = get_i32_array(get_field(o, "pathIndptr"), "pathIndptr");
    a.path_tokens = get_i32_array(get_field(o, "pathTokens"), "pathTokens");
  }
  return a;
}

std::vector<Tensor> tensor_list_arg(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsArray(), "E_ARG", name, ": expected an array of Tensors");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<Tensor> out;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    const std::string n = str(name, "[", i, "]");
    out.push_back(tensor_arg(a.Get(i), n.c_str()));
  }
  return out;
}

Napi::Value wrap_serial(Napi::Env env, SerialHandle s) {
  if (!s) return env.Null();
  auto ext = Napi::External<SerialHandle>::New(env, new SerialHandle(std::move(s)), [](Napi::Env, SerialHandle* h) { delete h; });
  ext.TypeTag(&kSerialTag);
  return ext;
}

const cpu::SerialWeight* serial_arg(const Napi::Value& v, const char* name) {
  if (v.IsUndefined() || v.IsNull()) return nullptr;
  SPECDEC_CHECK(v.IsExternal() && v.As<Napi::External<SerialHandle>>().CheckTypeTag(&kSerialTag), "E_ARG", name,
                ": expected a pack from packSerialWeight()");
  return v.As<Napi::External<SerialHandle>>().Data()->get();
}

std::vector<MedusaHead> medusa_heads_arg(const Napi::Value& v) {
  if (v.IsExternal()) {
    const auto set = handle_arg<MedusaHeadSet>(v, "heads", "Medusa heads (medusaHeadSet)");
    SPECDEC_CHECK(set && !set->heads.empty(), "E_DISPOSED", "heads: the Medusa heads were disposed");
    return set->heads;
  }
  SPECDEC_CHECK(v.IsArray(), "E_ARG", "heads: expected an array or a medusaHeadSet handle");
  Napi::Array hs = v.As<Napi::Array>();
  std::vector<MedusaHead> heads(hs.Length());
  for (uint32_t h = 0; h < hs.Length(); ++h) {
    SPECDEC_CHECK(hs.Get(h).IsObject(), "E_ARG", "heads[", h, "]: expected { w, b, lmHead }");
    Napi::Object o = hs.Get(h).As<Napi::Object>();
    heads[h].w = tensor_list_arg(get_field(o, "w"), "heads[].w");
    heads[h].b = tensor_list_arg(get_field(o, "b"), "heads[].b");
    heads[h].lm_head = tensor_arg(get_field(o, "lmHead"), "heads[].lmHead");
  }
  return heads;
}

}  // namespace napi
}  // namespace specdec

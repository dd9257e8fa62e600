// Helpers for the N-API glue: argument conversion, specdec::Error -> JS Error with `code`,
// Promise-returning async work, and a registry so each *_napi.cc file adds its own exports.
#pragma once
#include <atomic>
#include <napi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "../core/error.h"
#include "../core/kv_cache.h"
#include "../core/ops_sampling.h"
#include "../core/tensor.h"
#include "../model/medusa.h"

namespace specdec {
struct PagedBatch;
namespace napi {

// Each glue file registers an init function: static Registrar r(&InitFoo);
using InitFn = void (*)(Napi::Env, Napi::Object);
std::vector<InitFn>& registry();
struct Registrar {
  explicit Registrar(InitFn f) { registry().push_back(f); }
};

// A JS Error carrying `code` (E_ARG, E_CUDA, ...).
Napi::Error make_error(Napi::Env env, const std::string& code, const std::string& message);

// Calls from JS into the addon (counted in guard(), which every exported function goes through):
// the per-step budget of crossings is asserted by tests through transferCounters().
std::atomic<uint64_t>& napi_call_count();

// Runs f, turning C++ exceptions into JS exceptions. Use in every exported function:
//   return guard(info.Env(), [&] { ...; return value; });
template <typename F>
Napi::Value guard(Napi::Env env, F&& f) {
  napi_call_count().fetch_add(1, std::memory_order_relaxed);
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const Error& e) {
    throw make_error(env, e.code(), e.what());
  } catch (const std::bad_alloc&) {
    throw make_error(env, "E_OOM", "out of memory");
  } catch (const std::exception& e) {
    throw make_error(env, "E_INTERNAL", e.what());
  }
}

// Runs `work` on the libuv thread pool and resolves with `done(env)` on the main thread.
// Errors thrown by `work` reject the promise with a coded Error. Keep JS objects used by the
// work alive by holding references (the caller passes them in `keep`). Both closures are
// destroyed on the main thread just before the promise settles, so whatever they own (a busy
// flag's guard, say) is released exactly then.
Napi::Promise run_async(Napi::Env env, std::function<void()> work, std::function<Napi::Value(Napi::Env)> done,
                        std::vector<Napi::Value> keep = {});

// run_async, or, when `sync` is true, `work` and `done` right here on the calling thread, returning
// an already settled promise (errors reject it, as in run_async). For work so small that the
// round trip through the libuv pool and back through the event loop costs more than the work.
Napi::Promise run_maybe_async(Napi::Env env, bool sync, std::function<void()> work,
                              std::function<Napi::Value(Napi::Env)> done, std::vector<Napi::Value> keep = {});

// Argument helpers: each throws E_ARG naming the argument.
int64_t get_int(const Napi::Value& v, const char* name);
double get_number(const Napi::Value& v, const char* name);
bool get_bool(const Napi::Value& v, const char* name);
std::string get_string(const Napi::Value& v, const char* name);
std::vector<int64_t> get_int_array(const Napi::Value& v, const char* name);
std::vector<int32_t> get_i32_array(const Napi::Value& v, const char* name);  // Int32Array or number[]
std::vector<uint64_t> get_u64_array(const Napi::Value& v, const char* name);  // BigUint64Array
Device get_device(const Napi::Value& v, const char* name);
DType get_dtype(const Napi::Value& v, const char* name);
// Optional fields of an options object (returns fallback when absent/undefined).
Napi::Value get_field(const Napi::Object& o, const char* key);
Napi::Object get_object(const Napi::Value& v, const char* name);  // E_ARG unless an object
bool has_field(const Napi::Object& o, const char* key);

// Tensors: the JS Tensor object <-> specdec::Tensor. tensor_arg throws E_ARG (or E_DISPOSED).
Tensor tensor_arg(const Napi::Value& v, const char* name);
// { temperature, topK, topP, minP } (absent fields and undefined keep the defaults); checked by the ops.
SamplingParams sampling_params_arg(const Napi::Value& v);
// { repetition?, presence?, frequency?, histIndptr, histTokens, histCounts, biasTokens?, biasValues?,
// banIndptr?, banTokens?, banBefore? } and, with_rows, rowSeq, pathIndptr, pathTokens
// (ops::penalize; a chain makes its own rows).
PenaltyArgs penalty_args(const Napi::Value& v, bool with_rows);
// [{ w: Tensor[], b: Tensor[], lmHead }] (the fused Medusa heads, cpp/model/medusa.h).
// Medusa heads held natively (medusaHeadSet): parsed and packed once rather than on every call.
// Empty once released (medusaHeadSetRelease).
struct MedusaHeadSet {
  std::vector<MedusaHead> heads;
};
// heads: a MedusaHeadSet handle, or { w: Tensor[], b: Tensor[], lmHead: Tensor }[] (parsed per
// call, never packed).
std::vector<MedusaHead> medusa_heads_arg(const Napi::Value& v);

// A k-serial weight pack (cpu/matmul_serial.h) as JS sees it: an External tagged kSerialTag (any
// other external passed as a pack is an E_ARG, not a bad cast). wrap_serial: null for a null pack.
using SerialHandle = std::shared_ptr<const cpu::SerialWeight>;
inline constexpr napi_type_tag kSerialTag = {0x5e7a11b0c4d2e9f1ull, 0x8a61d3c0f25b47e9ull};
Napi::Value wrap_serial(Napi::Env env, SerialHandle s);
// The pack of an External made by wrap_serial; null for undefined / null.
const cpu::SerialWeight* serial_arg(const Napi::Value& v, const char* name);
Tensor optional_tensor_arg(const Napi::Value& v, const char* name);  // undefined/null -> undefined tensor
std::vector<Tensor> tensor_list_arg(const Napi::Value& v, const char* name);  // Tensor[]; E_ARG names name[i]
// A PagedBatch handle (KvCache.plan / pagedBatch; cpp/napi/kv_napi.cc). E_ARG / E_DISPOSED.
const PagedBatch& paged_batch_arg(const Napi::Value& v, const char* name);
// The native cache of a KvCache (lib/kv.ts: KvCache.nativeCache). E_ARG / E_DISPOSED.
KvCache& kv_cache_arg(const Napi::Value& v, const char* name);
Napi::Object wrap_tensor(Napi::Env env, Tensor t);
// i32 token ids made by the library, known to be in [0, ids_below) or kNoMass (a sampled draw from a
// row without mass): they may feed a forward or a verification on the device without being read
// back (trusted_ids_arg checks that provenance). The embedding skips kNoMass rows; verification
// reports them as E_NUMERIC (cpp/core/spec_math.h).
Napi::Object wrap_ids_tensor(Napi::Env env, Tensor t, int64_t ids_below);
Tensor trusted_ids_arg(const Napi::Value& v, const char* name, int64_t vocab);

// Opaque native state handed to JS and back (a forward's staged verification inputs, a
// verification's paths): an External over a box tagged with its type, so that a handle is only
// ever read as what it is. It lives until JS drops it.
template <class T>
struct HandleBox {
  static inline const char tag = 0;  // its address is T's tag
  const void* kind = &tag;
  std::shared_ptr<T> value;
};
template <class T>
Napi::Value wrap_handle(Napi::Env env, std::shared_ptr<T> value) {
  auto* box = new HandleBox<T>{&HandleBox<T>::tag, std::move(value)};
  return Napi::External<HandleBox<T>>::New(env, box, [](Napi::Env, HandleBox<T>* b) { delete b; });
}
// The handle's value, or null when v is undefined; E_ARG naming `name` for anything else.
template <class T>
std::shared_ptr<T> handle_arg(const Napi::Value& v, const char* name, const char* what) {
  if (v.IsUndefined() || v.IsNull()) return nullptr;
  SPECDEC_CHECK(v.IsExternal(), "E_ARG", name, ": expected ", what, " made by the library");
  auto* box = v.As<Napi::External<HandleBox<T>>>().Data();
  SPECDEC_CHECK(box != nullptr && box->kind == &HandleBox<T>::tag, "E_ARG", name, ": expected ", what,
                " made by the library, got another kind of handle");
  return box->value;
}

}  // namespace napi
}  // namespace specdec

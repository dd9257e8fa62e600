// The JS Tensor class: an ObjectWrap owning a specdec::Tensor. dispose() frees at once;
// the GC finalizer is only the fallback. Reading back to JS is explicit (toArray()).
#include <cstring>

#include "napi_util.h"

namespace specdec {
namespace napi {

namespace {

class TensorWrap : public Napi::ObjectWrap<TensorWrap> {
 public:
  static Napi::FunctionReference* ctor;

  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(
        env, "Tensor",
        {
            StaticMethod<&TensorWrap::Empty>("empty"),
            StaticMethod<&TensorWrap::Zeros>("zeros"),
            StaticMethod<&TensorWrap::FromArray>("fromArray"),
            StaticMethod<&TensorWrap::GatherRows>("gatherRows"),
            InstanceAccessor<&TensorWrap::GetDtype>("dtype"),
            InstanceAccessor<&TensorWrap::GetShape>("shape"),
            InstanceAccessor<&TensorWrap::GetDevice>("device"),
            InstanceAccessor<&TensorWrap::GetNumel>("numel"),
            InstanceAccessor<&TensorWrap::GetDisposed>("disposed"),
            InstanceMethod<&TensorWrap::ToArray>("toArray"),
            InstanceMethod<&TensorWrap::ToFloat32>("toFloat32"),
            InstanceMethod<&TensorWrap::ToInt32>("toInt32"),
            InstanceMethod<&TensorWrap::To>("to"),
            InstanceMethod<&TensorWrap::View>("view"),
            InstanceMethod<&TensorWrap::Rows>("rows"),
            InstanceMethod<&TensorWrap::Dispose>("dispose"),
            InstanceMethod<&TensorWrap::ToString>("toString"),
        });
    ctor = new Napi::FunctionReference(Napi::Persistent(f));
    exports.Set("Tensor", f);
  }

  explicit TensorWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorWrap>(info) {
    // Only constructed internally (wrap_tensor passes an External); JS uses the static factories.
    if (info.Length() != 1 || !info[0].IsExternal())
      throw make_error(info.Env(), "E_ARG", "use Tensor.empty, Tensor.zeros or Tensor.fromArray to create tensors");
    tensor_ = *info[0].As<Napi::External<Tensor>>().Data();
    track(info.Env(), true);
  }
  ~TensorWrap() override { release(); }

  const Tensor& tensor(const char* name) const {
    SPECDEC_CHECK(tensor_.defined(), "E_DISPOSED", name, ": tensor was disposed");
    return tensor_;
  }
  int64_t ids_below() const { return ids_below_; }
  void set_ids_below(int64_t v) { ids_below_ = v; }

 private:
  Tensor tensor_;
  // For i32 token ids made by the library (draft picks): every value is in [0, ids_below_) or
  // kNoMass (see napi_util.h); -1 for any other tensor. Set only natively, never inherited by views
  // or copies, and no op writes into an i32 tensor from JS: so the ids can feed a forward or a
  // verification without being read back.
  int64_t ids_below_ = -1;
  int64_t tracked_ = 0;
  napi_env env_ = nullptr;

  void track(Napi::Env env, bool on) {
    // Tell V8 about host memory so the GC fallback sees the real pressure.
    if (on && tensor_.device() == Device::cpu) {
      tracked_ = static_cast<int64_t>(tensor_.nbytes());
      env_ = env;
      Napi::MemoryManagement::AdjustExternalMemory(env, tracked_);
    }
  }
  void release() {
    if (tracked_ && env_) {
      Napi::MemoryManagement::AdjustExternalMemory(Napi::Env(env_), -tracked_);
      tracked_ = 0;
    }
    tensor_ = Tensor();
  }

  static Napi::Value Empty(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      DType dt = get_dtype(info[0], "dtype");
      auto shape = get_int_array(info[1], "shape");
      return wrap_tensor(info.Env(), Tensor::empty(dt, shape, get_device(info[2], "device")));
    });
  }
  static Napi::Value Zeros(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      DType dt = get_dtype(info[0], "dtype");
      auto shape = get_int_array(info[1], "shape");
      return wrap_tensor(info.Env(), Tensor::zeros(dt, shape, get_device(info[2], "device")));
    });
  }

  // gatherRows(tensors: Tensor[], rows: Int32Array | number[], width?, device?) -> [rows.length, width]
  // on their device, or moved to `device` in one copy; width, when given, is at least the tensors' (wider:
  // zero-padded).
  static Napi::Value GatherRows(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      SPECDEC_CHECK(info[0].IsArray(), "E_ARG", "tensors: expected an array of tensors");
      Napi::Array a = info[0].As<Napi::Array>();
      std::vector<Tensor> srcs;
      srcs.reserve(a.Length());
      for (uint32_t i = 0; i < a.Length(); ++i) srcs.push_back(tensor_arg(a.Get(i), "tensors[i]"));
      const std::vector<int32_t> r = get_i32_array(info[1], "rows");
      int64_t width = -1;
      if (info.Length() > 2 && !info[2].IsUndefined() && !srcs.empty()) {
        width = get_int(info[2], "width");
        SPECDEC_CHECK(srcs[0].dim() == 2 && srcs[0].size(1) <= width, "E_ARG", "gatherRows: the rows are ",
                      srcs[0].describe(), ", expected rows of width ", width, " or narrower (zero-padded)");
      }
      Tensor g = gather_rows(srcs, std::vector<int64_t>(r.begin(), r.end()), width);
      if (info.Length() > 3 && !info[3].IsUndefined()) {
        const Device d = get_device(info[3], "device");
        if (d != g.device()) g = g.to(d);
      }
      return wrap_tensor(info.Env(), g);
    });
  }

  // fromArray(data, dtype, shape?, device?)
  static Napi::Value FromArray(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      DType dt = get_dtype(info[1], "dtype");
      Napi::Value data = info[0];
      std::vector<double> nums;  // only for plain arrays
      size_t n = 0;
      bool typed = data.IsTypedArray();
      napi_typedarray_type tt = napi_int8_array;
      if (typed) {
        tt = data.As<Napi::TypedArray>().TypedArrayType();
        n = data.As<Napi::TypedArray>().ElementLength();
      } else {
        SPECDEC_CHECK(data.IsArray(), "E_ARG", "data: expected a typed array or an array of numbers");
        auto a = data.As<Napi::Array>();
        n = a.Length();
        nums.resize(n);
        for (uint32_t i = 0; i < n; ++i) {
          Napi::Value e = a.Get(i);
          SPECDEC_CHECK(e.IsNumber(), "E_ARG", "data[", i, "]: expected a number");
          nums[i] = e.As<Napi::Number>().DoubleValue();  // NaN/Inf allowed for float dtypes
        }
      }
      std::vector<int64_t> shape = (info.Length() > 2 && !info[2].IsUndefined())
                                       ? get_int_array(info[2], "shape")
                                       : std::vector<int64_t>{static_cast<int64_t>(n)};
      int64_t numel = 1;
      for (int64_t s : shape) numel *= s;
      SPECDEC_CHECK(numel == static_cast<int64_t>(n), "E_ARG", "shape: ", numel, " elements do not match data length ",
                    n);
      Tensor host = Tensor::empty(dt, shape, Device::cpu);
      auto at = [&](size_t i) -> double {
        if (!typed) return nums[i];
        switch (tt) {
          case napi_float32_array: return data.As<Napi::Float32Array>()[i];
          case napi_float64_array: return data.As<Napi::Float64Array>()[i];
          case napi_int32_array: return data.As<Napi::Int32Array>()[i];
          case napi_uint32_array: return data.As<Napi::Uint32Array>()[i];
          case napi_int16_array: return data.As<Napi::Int16Array>()[i];
          case napi_uint16_array: return data.As<Napi::Uint16Array>()[i];
          case napi_int8_array: return data.As<Napi::Int8Array>()[i];
          case napi_uint8_array: return data.As<Napi::Uint8Array>()[i];
          default: fail("E_ARG", "data: unsupported typed array for dtype ", dtype_name(dt));
        }
      };
      bool raw16 = typed && tt == napi_uint16_array && (dt == DType::f16 || dt == DType::bf16);
      if (dt == DType::u64) {
        SPECDEC_CHECK(typed && tt == napi_biguint64_array, "E_ARG", "data: u64 tensors take a BigUint64Array");
        auto a = data.As<Napi::TypedArrayOf<uint64_t>>();
        std::memcpy(host.data(), a.Data(), n * 8);
      } else if (raw16) {
        std::memcpy(host.data(), data.As<Napi::Uint16Array>().Data(), n * 2);
      } else {
        SPECDEC_CHECK(!(typed && (tt == napi_bigint64_array || tt == napi_biguint64_array)), "E_ARG",
                      "data: a BigInt array only fits a u64 tensor");
        for (size_t i = 0; i < n; ++i) {
          double v = at(i);
          switch (dt) {
            case DType::f32: host.ptr<float>()[i] = static_cast<float>(v); break;
            case DType::f64: host.ptr<double>()[i] = v; break;
            case DType::f16: host.ptr<uint16_t>()[i] = f32_to_f16(static_cast<float>(v)); break;
            case DType::bf16: host.ptr<uint16_t>()[i] = f32_to_bf16(static_cast<float>(v)); break;
            case DType::i32:
              SPECDEC_CHECK(v == static_cast<int32_t>(v), "E_ARG", "data[", i, "] = ", v, " is not an int32");
              host.ptr<int32_t>()[i] = static_cast<int32_t>(v);
              break;
            case DType::u32:
              SPECDEC_CHECK(v >= 0 && v == static_cast<uint32_t>(v), "E_ARG", "data[", i, "] = ", v, " is not a uint32");
              host.ptr<uint32_t>()[i] = static_cast<uint32_t>(v);
              break;
            case DType::u64: break;
          }
        }
      }
      Device dev = get_device(info[3], "device");
      return wrap_tensor(info.Env(), dev == Device::cpu ? host : host.to(dev));
    });
  }

  Napi::Value GetDtype(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return Napi::String::New(info.Env(), dtype_name(tensor("dtype").dtype()));
    });
  }
  Napi::Value GetShape(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      const auto& s = tensor("shape").shape();
      Napi::Array a = Napi::Array::New(info.Env(), s.size());
      for (size_t i = 0; i < s.size(); ++i) a.Set(static_cast<uint32_t>(i), Napi::Number::New(info.Env(), double(s[i])));
      return a;
    });
  }
  Napi::Value GetDevice(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return Napi::String::New(info.Env(), device_name(tensor("device").device()));
    });
  }
  Napi::Value GetNumel(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return Napi::Number::New(info.Env(), static_cast<double>(tensor("numel").numel()));
    });
  }
  Napi::Value GetDisposed(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), !tensor_.defined());
  }

  Napi::Value ToArray(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      const Tensor& t = tensor("toArray");
      Napi::Env env = info.Env();
      size_t n = static_cast<size_t>(t.numel());
      std::vector<uint8_t> bytes(t.nbytes());
      t.copy_to_host(bytes.data(), bytes.size());
      switch (t.dtype()) {
        case DType::f32: {
          auto a = Napi::Float32Array::New(env, n);
          std::memcpy(a.Data(), bytes.data(), n * 4);
          return a;
        }
        case DType::f16:
        case DType::bf16: {
          auto a = Napi::Float32Array::New(env, n);
          const uint16_t* h = reinterpret_cast<const uint16_t*>(bytes.data());
          for (size_t i = 0; i < n; ++i) a[i] = t.dtype() == DType::f16 ? f16_to_f32(h[i]) : bf16_to_f32(h[i]);
          return a;
        }
        case DType::f64: {
          auto a = Napi::Float64Array::New(env, n);
          std::memcpy(a.Data(), bytes.data(), n * 8);
          return a;
        }
        case DType::i32: {
          auto a = Napi::Int32Array::New(env, n);
          std::memcpy(a.Data(), bytes.data(), n * 4);
          return a;
        }
        case DType::u32: {
          auto a = Napi::Uint32Array::New(env, n);
          std::memcpy(a.Data(), bytes.data(), n * 4);
          return a;
        }
        case DType::u64: {
          auto a = Napi::TypedArrayOf<uint64_t>::New(env, n, napi_biguint64_array);
          std::memcpy(a.Data(), bytes.data(), n * 8);
          return a;
        }
      }
      return env.Undefined();
    });
  }

  Napi::Value ToFloat32(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      DType d = tensor("toFloat32").dtype();
      SPECDEC_CHECK(d == DType::f32 || d == DType::f16 || d == DType::bf16, "E_ARG", "toFloat32: tensor is ",
                    dtype_name(d), ", not a float type");
      return ToArray(info);
    });
  }
  Napi::Value ToInt32(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      DType d = tensor("toInt32").dtype();
      SPECDEC_CHECK(d == DType::i32, "E_ARG", "toInt32: tensor is ", dtype_name(d), ", not i32");
      return ToArray(info);
    });
  }

  Napi::Value To(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return wrap_tensor(info.Env(), tensor("to").to(get_device(info[0], "device")));
    });
  }
  Napi::Value View(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return wrap_tensor(info.Env(), tensor("view").view(get_int_array(info[0], "shape")));
    });
  }
  Napi::Value Rows(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return wrap_tensor(info.Env(), tensor("rows").rows(get_int(info[0], "begin"), get_int(info[1], "end")));
    });
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    release();
    return info.Env().Undefined();
  }
  Napi::Value ToString(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), tensor_.defined() ? "Tensor " + tensor_.describe() : "Tensor (disposed)");
  }

  friend Tensor specdec::napi::tensor_arg(const Napi::Value& v, const char* name);
};

Napi::FunctionReference* TensorWrap::ctor = nullptr;

void Init(Napi::Env env, Napi::Object exports) { TensorWrap::Init(env, exports); }
Registrar reg(&Init);

}  // namespace

Tensor tensor_arg(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsObject() && TensorWrap::ctor && v.As<Napi::Object>().InstanceOf(TensorWrap::ctor->Value()),
                "E_ARG", name, ": expected a Tensor");
  TensorWrap* w = TensorWrap::Unwrap(v.As<Napi::Object>());
  return w->tensor(name);
}

Napi::Object wrap_tensor(Napi::Env env, Tensor t) {
  return TensorWrap::ctor->New({Napi::External<Tensor>::New(env, &t)});
}

Napi::Object wrap_ids_tensor(Napi::Env env, Tensor t, int64_t ids_below) {
  Napi::Object o = wrap_tensor(env, std::move(t));
  TensorWrap::Unwrap(o)->set_ids_below(ids_below);
  return o;
}

Tensor trusted_ids_arg(const Napi::Value& v, const char* name, int64_t vocab) {
  const Tensor t = tensor_arg(v, name);
  const int64_t bound = TensorWrap::Unwrap(v.As<Napi::Object>())->ids_below();
  SPECDEC_CHECK(bound >= 0, "E_ARG", name, ": expected token ids made by the library (a device chain's picks), got another tensor");
  SPECDEC_CHECK(bound <= vocab, "E_ARG", name, ": ids below ", bound, " do not fit the vocabulary of ", vocab);
  return t;
}

}  // namespace napi
}  // namespace specdec

// N-API glue for the model layer ops (cpp/core/ops_layers.h) and the safetensors reader
// (cpp/model/safetensors.h). Conversion only: the ops validate their own arguments.
#include <cstring>

#include "../core/ops_layers.h"
#include "../cpu/matmul_serial.h"
#include "../model/safetensors.h"
#include "napi_util.h"

namespace specdec {
namespace napi {
namespace {

// The caller's `out` tensor, or a new f32 tensor of `shape` on `device` when none is given.
// Returns the JS value to hand back (the caller's object, so identity is kept).
Napi::Value out_or_new(Napi::Env env, const Napi::Value& v, std::vector<int64_t> shape, Device device, Tensor* out) {
  if (v.IsUndefined() || v.IsNull()) {
    *out = Tensor::empty(DType::f32, std::move(shape), device);
    return wrap_tensor(env, *out);
  }
  *out = tensor_arg(v, "out");
  return v;
}

// A sensible default output shape (the op still validates an explicit one).
int64_t dim_or0(const Tensor& t, int i) { return t.dim() > i ? t.size(i) : 0; }

// layerEmbedding(table, ids, out?) -> out
Napi::Value Embedding(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor table = tensor_arg(info[0], "table");
    Tensor ids = tensor_arg(info[1], "ids");
    Tensor out;
    Napi::Value r = out_or_new(info.Env(), info[2], {dim_or0(ids, 0), dim_or0(table, 1)}, table.device(), &out);
    ops::embedding(table, ids, out);
    return r;
  });
}

// layerRmsnorm(x, w, eps, out?) -> out
Napi::Value Rmsnorm(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor x = tensor_arg(info[0], "x");
    Tensor w = tensor_arg(info[1], "w");
    float eps = static_cast<float>(get_number(info[2], "eps"));
    Tensor out;
    Napi::Value r = out_or_new(info.Env(), info[3], x.shape(), x.device(), &out);
    ops::rmsnorm(x, w, eps, out);
    return r;
  });
}

// layerPackSerial(w) -> an opaque pack of w for the k-serial kernel (cpu/matmul_serial.h), or null
// when w does not qualify (not a small 2-D CPU float weight).
Napi::Value PackSerial(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor w = tensor_arg(info[0], "w");
    return wrap_serial(info.Env(), cpu::SerialWeight::pack_if_eligible(w));
  });
}

// layerMatmul(x, w, bias?, out?, serial?) -> out
Napi::Value Matmul(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor x = tensor_arg(info[0], "x");
    Tensor w = tensor_arg(info[1], "w");
    Tensor bias = optional_tensor_arg(info[2], "bias");
    const cpu::SerialWeight* serial = info.Length() > 4 ? serial_arg(info[4], "serial") : nullptr;
    Tensor out;
    Napi::Value r = out_or_new(info.Env(), info[3], {dim_or0(x, 0), dim_or0(w, 0)}, x.device(), &out);
    ops::matmul(x, w, bias, out, serial);
    return r;
  });
}

// layerMatmulGroup(x, ws: Tensor[], biases: (Tensor | null)[]) -> Tensor[] (new outs; up to 3 parts)
Napi::Value MatmulGroup(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor x = tensor_arg(info[0], "x");
    SPECDEC_CHECK(info[1].IsArray() && info[2].IsArray(), "E_ARG", "ws, biases: expected arrays");
    Napi::Array wa = info[1].As<Napi::Array>(), ba = info[2].As<Napi::Array>();
    const uint32_t P = wa.Length();
    SPECDEC_CHECK(P >= 1 && P <= 3 && ba.Length() == P, "E_ARG", "ws: 1 to 3 weights with as many biases, got ", P, " and ", ba.Length());
    Tensor w[3], b[3], out[3];
    for (uint32_t i = 0; i < P; ++i) {
      w[i] = tensor_arg(wa.Get(i), "ws[i]");
      b[i] = optional_tensor_arg(ba.Get(i), "biases[i]");
      out[i] = Tensor::empty(DType::f32, {dim_or0(x, 0), dim_or0(w[i], 0)}, x.device());
    }
    if (P == 1) ops::matmul_group(x, {{&w[0], &b[0], &out[0]}});
    else if (P == 2) ops::matmul_group(x, {{&w[0], &b[0], &out[0]}, {&w[1], &b[1], &out[1]}});
    else ops::matmul_group(x, {{&w[0], &b[0], &out[0]}, {&w[1], &b[1], &out[1]}, {&w[2], &b[2], &out[2]}});
    Napi::Array r = Napi::Array::New(info.Env(), P);
    for (uint32_t i = 0; i < P; ++i) r.Set(i, wrap_tensor(info.Env(), out[i]));
    return r;
  });
}

// layerRope(x, positions, invFreq): in place
Napi::Value Rope(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor x = tensor_arg(info[0], "x");
    ops::rope(x, tensor_arg(info[1], "positions"), tensor_arg(info[2], "inv_freq"));
    return info.Env().Undefined();
  });
}

// layerSiluMul(gate, up, out?) -> out
Napi::Value SiluMul(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor gate = tensor_arg(info[0], "gate");
    Tensor up = tensor_arg(info[1], "up");
    Tensor out;
    Napi::Value r = out_or_new(info.Env(), info[2], gate.shape(), gate.device(), &out);
    ops::silu_mul(gate, up, out);
    return r;
  });
}

// layerGeluTanhMul(gate, up, out?) -> out
Napi::Value GeluTanhMul(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor gate = tensor_arg(info[0], "gate");
    Tensor up = tensor_arg(info[1], "up");
    Tensor out;
    Napi::Value r = out_or_new(info.Env(), info[2], gate.shape(), gate.device(), &out);
    ops::gelu_tanh_mul(gate, up, out);
    return r;
  });
}

// layerAddInplace(x, y)
Napi::Value AddInplace(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor x = tensor_arg(info[0], "x");
    ops::add_inplace(x, tensor_arg(info[1], "y"));
    return info.Env().Undefined();
  });
}

// layerAddRmsnorm(x, y, w, eps, out?) -> out (x += y first)
Napi::Value AddRmsnorm(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor x = tensor_arg(info[0], "x");
    Tensor y = tensor_arg(info[1], "y");
    Tensor w = tensor_arg(info[2], "w");
    float eps = static_cast<float>(get_number(info[3], "eps"));
    Tensor out;
    Napi::Value r = out_or_new(info.Env(), info[4], x.shape(), x.device(), &out);
    ops::add_rmsnorm(x, y, w, eps, out);
    return r;
  });
}

// layerSiluInplace(x)
Napi::Value SiluInplace(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor x = tensor_arg(info[0], "x");
    ops::silu_inplace(x);
    return info.Env().Undefined();
  });
}

// An open safetensors file. close() unmaps at once; the GC finalizer is the fallback.
class SafetensorsWrap : public Napi::ObjectWrap<SafetensorsWrap> {
 public:
  static Napi::FunctionReference* ctor;

  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "SafetensorsFile",
                                   {
                                       InstanceMethod<&SafetensorsWrap::Names>("names"),
                                       InstanceMethod<&SafetensorsWrap::Info>("info"),
                                       InstanceMethod<&SafetensorsWrap::Load>("load"),
                                       InstanceMethod<&SafetensorsWrap::Raw>("raw"),
                                       InstanceMethod<&SafetensorsWrap::Metadata>("metadata"),
                                       InstanceMethod<&SafetensorsWrap::Path>("path"),
                                       InstanceMethod<&SafetensorsWrap::Close>("close"),
                                   });
    ctor = new Napi::FunctionReference(Napi::Persistent(f));
    exports.Set("safetensorsOpen", Napi::Function::New(env, Open, "safetensorsOpen"));
  }

  explicit SafetensorsWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SafetensorsWrap>(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw make_error(info.Env(), "E_ARG", "use safetensorsOpen(path) to open a safetensors file");
    file_ = *info[0].As<Napi::External<std::shared_ptr<SafetensorsFile>>>().Data();
  }

 private:
  std::shared_ptr<SafetensorsFile> file_;

  const SafetensorsFile& file(const char* what) const {
    SPECDEC_CHECK(file_ != nullptr, "E_DISPOSED", what, ": safetensors file was closed");
    return *file_;
  }

  // safetensorsOpen(path) -> SafetensorsFile
  static Napi::Value Open(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      std::shared_ptr<SafetensorsFile> f = SafetensorsFile::open(get_string(info[0], "path"));
      return ctor->New({Napi::External<std::shared_ptr<SafetensorsFile>>::New(info.Env(), &f)});
    });
  }

  Napi::Value Names(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      auto names = file("names").names();
      Napi::Array a = Napi::Array::New(info.Env(), names.size());
      for (size_t i = 0; i < names.size(); ++i) a.Set(static_cast<uint32_t>(i), names[i]);
      return a;
    });
  }

  // { dtype, shape } of a tensor.
  static Napi::Object describe(Napi::Env env, const SafetensorsFile::Raw& t) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("dtype", t.dtype);
    Napi::Array s = Napi::Array::New(env, t.shape.size());
    for (size_t i = 0; i < t.shape.size(); ++i) s.Set(static_cast<uint32_t>(i), Napi::Number::New(env, double(t.shape[i])));
    o.Set("shape", s);
    return o;
  }

  // info(name) -> { dtype: 'F32'|...|'I64'|..., shape: number[] }
  Napi::Value Info(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return describe(info.Env(), file("info").raw(get_string(info[0], "name"))); });
  }

  // raw(name) -> { dtype, shape, bytes: Uint8Array } (a copy of the stored bytes, any dtype)
  Napi::Value Raw(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      const SafetensorsFile::Raw t = file("raw").raw(get_string(info[0], "name"));
      Napi::Object o = describe(info.Env(), t);
      Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(info.Env(), t.nbytes);
      if (t.nbytes > 0) std::memcpy(buf.Data(), t.data, t.nbytes);
      o.Set("bytes", Napi::Uint8Array::New(info.Env(), t.nbytes, buf, 0));
      return o;
    });
  }

  // load(name, device?) -> Tensor (dtype kept)
  Napi::Value Load(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      std::string name = get_string(info[0], "name");
      return wrap_tensor(info.Env(), file("load").load(name, get_device(info[1], "device")));
    });
  }

  Napi::Value Metadata(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      Napi::Object o = Napi::Object::New(info.Env());
      for (const auto& kv : file("metadata").metadata()) o.Set(kv.first, kv.second);
      return o;
    });
  }

  Napi::Value Path(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), file("path").path()); });
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    file_.reset();  // loaded tensors are copies, so they stay valid
    return info.Env().Undefined();
  }
};

Napi::FunctionReference* SafetensorsWrap::ctor = nullptr;

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("layerEmbedding", Napi::Function::New(env, Embedding, "layerEmbedding"));
  exports.Set("layerRmsnorm", Napi::Function::New(env, Rmsnorm, "layerRmsnorm"));
  exports.Set("layerAddRmsnorm", Napi::Function::New(env, AddRmsnorm, "layerAddRmsnorm"));
  exports.Set("layerMatmul", Napi::Function::New(env, Matmul, "layerMatmul"));
  exports.Set("layerPackSerial", Napi::Function::New(env, PackSerial, "layerPackSerial"));
  exports.Set("layerMatmulGroup", Napi::Function::New(env, MatmulGroup, "layerMatmulGroup"));
  exports.Set("layerRope", Napi::Function::New(env, Rope, "layerRope"));
  exports.Set("layerSiluMul", Napi::Function::New(env, SiluMul, "layerSiluMul"));
  exports.Set("layerGeluTanhMul", Napi::Function::New(env, GeluTanhMul, "layerGeluTanhMul"));
  exports.Set("layerAddInplace", Napi::Function::New(env, AddInplace, "layerAddInplace"));
  exports.Set("layerSiluInplace", Napi::Function::New(env, SiluInplace, "layerSiluInplace"));
  SafetensorsWrap::Init(env, exports);
}

static Registrar reg(&Init);

}  // namespace
}  // namespace napi
}  // namespace specdec

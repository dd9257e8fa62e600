// JS glue of the trainer (cpp/train/): trainLlamaCreate(config, seed, precision, threads),
// trainMedusaCreate(...) and trainEagleCreate(...) return handles whose trainStep()/evalLoss() run
// on the libuv pool.
// Conversions only; the math is in cpp/train/.
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>

#include "../train/train.h"
#include "napi_util.h"

namespace specdec {
namespace napi {

namespace {

using train::AdamWOptions;
using train::Eagle3LossOptions;
using train::Eagle3Shape;
using train::Eagle3Stats;
using train::Eagle3Trainer;
using train::EagleLossOptions;
using train::EagleShape;
using train::EagleStats;
using train::EagleTrainer;
using train::LlamaShape;
using train::LlamaTrainer;
using train::MedusaShape;
using train::MedusaTrainer;
using train::ParamSet;

int int_arg(const Napi::Value& v, const char* name, int64_t lo, int64_t hi) {
  const int64_t x = get_int(v, name);
  SPECDEC_CHECK(x >= lo && x <= hi, "E_ARG", name, ": expected an integer in [", lo, ", ", hi, "], got ", x);
  return static_cast<int>(x);
}

bool f64_precision(const Napi::Value& v) {
  if (v.IsUndefined()) return false;
  const std::string p = get_string(v, "precision");
  SPECDEC_CHECK(p == "f32" || p == "f64", "E_ARG", "precision: expected 'f32' or 'f64', got '", p, "'");
  return p == "f64";
}

// A Float32Array or Float64Array as doubles.
std::vector<double> float_values(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsTypedArray(), "E_ARG", name, ": expected a Float32Array or Float64Array");
  auto ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() == napi_float32_array) {
    auto a = v.As<Napi::Float32Array>();
    return std::vector<double>(a.Data(), a.Data() + a.ElementLength());
  }
  if (ta.TypedArrayType() == napi_float64_array) {
    auto a = v.As<Napi::Float64Array>();
    return std::vector<double>(a.Data(), a.Data() + a.ElementLength());
  }
  fail("E_ARG", name, ": expected a Float32Array or Float64Array");
}

// F values -> Float32Array (f32 models) or Float64Array (f64 models).
template <typename F>
Napi::Value float_array(Napi::Env env, const F* data, size_t n) {
  if constexpr (std::is_same_v<F, float>) {
    auto a = Napi::Float32Array::New(env, n);
    std::memcpy(a.Data(), data, n * sizeof(float));
    return a;
  } else {
    auto a = Napi::Float64Array::New(env, n);
    std::memcpy(a.Data(), data, n * sizeof(double));
    return a;
  }
}

Napi::Array number_array(Napi::Env env, const std::vector<double>& v) {
  Napi::Array a = Napi::Array::New(env, v.size());
  for (size_t i = 0; i < v.size(); ++i) a.Set(uint32_t(i), Napi::Number::New(env, v[i]));
  return a;
}

AdamWOptions adamw_arg(const Napi::Value& v) {
  Napi::Object o = get_object(v, "options");
  AdamWOptions a;
  a.lr = get_number(get_field(o, "lr"), "options.lr");
  SPECDEC_CHECK(a.lr >= 0 && std::isfinite(a.lr), "E_ARG", "options.lr: expected a finite number >= 0");
  if (has_field(o, "beta1")) a.beta1 = get_number(get_field(o, "beta1"), "options.beta1");
  if (has_field(o, "beta2")) a.beta2 = get_number(get_field(o, "beta2"), "options.beta2");
  if (has_field(o, "eps")) a.eps = get_number(get_field(o, "eps"), "options.eps");
  if (has_field(o, "weightDecay")) a.weight_decay = get_number(get_field(o, "weightDecay"), "options.weightDecay");
  if (has_field(o, "clip")) a.clip = get_number(get_field(o, "clip"), "options.clip");
  SPECDEC_CHECK(a.beta1 >= 0 && a.beta1 < 1 && a.beta2 >= 0 && a.beta2 < 1, "E_ARG",
                "options.beta1/beta2: expected numbers in [0, 1)");
  SPECDEC_CHECK(a.eps > 0 && a.weight_decay >= 0, "E_ARG", "options.eps must be > 0 and options.weightDecay >= 0");
  return a;
}

// The Llama layer sizes of a trainer config (vocabSize ... ropeTheta; headDim defaults to
// hiddenSize / numHeads), E_ARG naming the field.
void layer_shape_arg(const Napi::Object& c, int max_layers, LlamaShape* s) {
  s->vocab = int_arg(get_field(c, "vocabSize"), "config.vocabSize", 1, 1 << 20);
  s->hidden = int_arg(get_field(c, "hiddenSize"), "config.hiddenSize", 1, 1 << 14);
  s->intermediate = int_arg(get_field(c, "intermediateSize"), "config.intermediateSize", 1, 1 << 16);
  s->layers = int_arg(get_field(c, "numLayers"), "config.numLayers", 1, max_layers);
  s->heads = int_arg(get_field(c, "numHeads"), "config.numHeads", 1, 256);
  s->kv_heads = int_arg(get_field(c, "numKvHeads"), "config.numKvHeads", 1, 256);
  s->head_dim = has_field(c, "headDim") ? int_arg(get_field(c, "headDim"), "config.headDim", 2, 1024) : s->hidden / s->heads;
  SPECDEC_CHECK(has_field(c, "headDim") || s->hidden % s->heads == 0, "E_ARG",
                "config.hiddenSize is not a multiple of config.numHeads and headDim is not given");
  if (has_field(c, "rmsNormEps")) s->rms_eps = get_number(get_field(c, "rmsNormEps"), "config.rmsNormEps");
  if (has_field(c, "ropeTheta")) s->rope_theta = get_number(get_field(c, "ropeTheta"), "config.ropeTheta");
}

// Parameter access shared by the trainer handles.
template <typename F>
Napi::Value param_info(Napi::Env env, const ParamSet<F>& p) {
  Napi::Array a = Napi::Array::New(env, p.info.size());
  for (size_t i = 0; i < p.info.size(); ++i) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("name", p.info[i].name);
    Napi::Array shape = Napi::Array::New(env, p.info[i].shape.size());
    for (size_t d = 0; d < p.info[i].shape.size(); ++d) shape.Set(uint32_t(d), Napi::Number::New(env, double(p.info[i].shape[d])));
    o.Set("shape", shape);
    a.Set(uint32_t(i), o);
  }
  return a;
}

template <typename F>
void set_values(std::vector<F>& dst, size_t offset, size_t n, const std::vector<double>& src, const char* name) {
  SPECDEC_CHECK(src.size() == n, "E_ARG", name, ": expected ", n, " values, got ", src.size());
  for (size_t i = 0; i < n; ++i) {
    SPECDEC_CHECK(std::isfinite(src[i]), "E_ARG", name, "[", i, "] is not finite");
    dst[offset + i] = F(src[i]);
  }
}

// Marks a handle busy from the call until its promise settles: made on the main thread when the
// work is queued and owned by the work's closure, which run_async destroys on the main thread just
// before settling (also when the work threw). So a caller that has not seen the promise settle
// always finds the handle busy, however quickly the work itself finished.
struct BusyGuard {
  explicit BusyGuard(std::shared_ptr<std::atomic<bool>> f) : flag(std::move(f)) { flag->store(true); }
  ~BusyGuard() { flag->store(false); }
  BusyGuard(const BusyGuard&) = delete;
  BusyGuard& operator=(const BusyGuard&) = delete;
  std::shared_ptr<std::atomic<bool>> flag;
};

// ---- parameter access, shared by both trainers ----------------------------------------------------

// paramInfo / getParam / setParam / getParams / setParams / getGrads, written once for both trainer
// handles. Derived provides visit(fn): fn applied to its trainer (f32 or f64) after the disposed /
// busy checks. The methods are registered with the runtime InstanceMethod overload (a pointer to a
// base-class member converts to Derived's there, not as a template argument).
template <class Derived>
class ParamAccess {
 public:
  static std::vector<Napi::ClassPropertyDescriptor<Derived>> param_methods() {
    using W = Napi::ObjectWrap<Derived>;
    using M = typename W::InstanceMethodCallback;
    return {W::InstanceMethod("paramInfo", static_cast<M>(&ParamAccess::ParamInfo)),
            W::InstanceMethod("getParam", static_cast<M>(&ParamAccess::GetParam)),
            W::InstanceMethod("setParam", static_cast<M>(&ParamAccess::SetParam)),
            W::InstanceMethod("getParams", static_cast<M>(&ParamAccess::GetParams)),
            W::InstanceMethod("setParams", static_cast<M>(&ParamAccess::SetParams)),
            W::InstanceMethod("getGrads", static_cast<M>(&ParamAccess::GetGrads))};
  }

  Napi::Value ParamInfo(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] { return self().visit([&](auto& m) { return param_info(info.Env(), m->params()); }); });
  }
  Napi::Value GetParam(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return self().visit([&](auto& m) {
        const auto& p = m->params().find(get_string(info[0], "name"));
        return float_array(info.Env(), m->params().w.data() + p.offset, p.numel);
      });
    });
  }
  Napi::Value SetParam(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return self().visit([&](auto& m) {
        const auto& p = m->params().find(get_string(info[0], "name"));
        set_values(m->params().w, p.offset, p.numel, float_values(info[1], "values"), "values");
        return info.Env().Undefined();
      });
    });
  }
  Napi::Value GetParams(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return self().visit([&](auto& m) { return float_array(info.Env(), m->params().w.data(), m->params().w.size()); });
    });
  }
  Napi::Value SetParams(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return self().visit([&](auto& m) {
        set_values(m->params().w, 0, m->params().w.size(), float_values(info[0], "values"), "values");
        return info.Env().Undefined();
      });
    });
  }
  Napi::Value GetGrads(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return self().visit([&](auto& m) { return float_array(info.Env(), m->params().g.data(), m->params().g.size()); });
    });
  }

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
};

// ---- The state of every trainer handle ------------------------------------------------------

// A trainer T<float> or T<double> (f64: gradient checks), the threads its steps use, and a flag
// that is set while a step runs on the pool. Handles are made by make() (their JS create function)
// and built from the External it passes.
template <template <typename> class T>
class TrainerHandle {
 public:
  struct Init {
    std::shared_ptr<T<float>> f32;
    std::shared_ptr<T<double>> f64;
    int threads = 1;
  };

  std::shared_ptr<T<float>> f32_;
  std::shared_ptr<T<double>> f64_;
  int threads_ = 1;
  std::shared_ptr<std::atomic<bool>> busy_ = std::make_shared<std::atomic<bool>>(false);

  // Runs fn on whichever precision this handle has (checks disposed / busy first).
  template <typename Fn>
  Napi::Value visit(Fn&& fn) {
    SPECDEC_CHECK(f32_ || f64_, "E_DISPOSED", "trainer was disposed");
    SPECDEC_CHECK(!busy_->load(), "E_BUSY", "a training step of ", what_, " is still running");
    if (f32_) return fn(f32_);
    return fn(f64_);
  }

 protected:
  TrainerHandle(const Napi::CallbackInfo& info, const char* create, const char* what) : what_(what) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw make_error(info.Env(), "E_ARG", std::string("use ") + create + "() to create a trainer");
    auto* src = info[0].As<Napi::External<Init>>().Data();
    f32_ = std::move(src->f32);
    f64_ = std::move(src->f64);
    threads_ = src->threads;
  }

  // create(config, seed, precision?, threads?): a new handle of `ctor` with a trainer of `shape`.
  template <typename Shape>
  static Napi::Value make(Napi::FunctionReference* ctor, const Napi::CallbackInfo& info, const Shape& shape) {
    const uint64_t seed = uint64_t(get_int(info[1], "seed"));
    Init init;
    init.threads = info.Length() > 3 && !info[3].IsUndefined() ? int_arg(info[3], "threads", 1, 64) : 1;
    if (f64_precision(info[2]))
      init.f64 = std::make_shared<T<double>>(shape, seed);
    else
      init.f32 = std::make_shared<T<float>>(shape, seed);
    return ctor->New({Napi::External<Init>::New(info.Env(), &init)});
  }

  // Running work holds its own reference to the trainer.
  void release() {
    f32_.reset();
    f64_.reset();
  }

 private:
  const char* what_;
};

// ---- TrainLlama -----------------------------------------------------------------------------

class TrainLlamaWrap : public Napi::ObjectWrap<TrainLlamaWrap>, public ParamAccess<TrainLlamaWrap>, public TrainerHandle<LlamaTrainer> {
 public:
  static Napi::FunctionReference* ctor;

  static void Init(Napi::Env env, Napi::Object exports) {
    std::vector<PropertyDescriptor> methods = param_methods();
    methods.insert(methods.end(), {
        InstanceMethod<&TrainLlamaWrap::LossAndGrad>("lossAndGrad"),
        InstanceMethod<&TrainLlamaWrap::Forward>("forward"),
        InstanceMethod<&TrainLlamaWrap::TrainStep>("trainStep"),
        InstanceMethod<&TrainLlamaWrap::EvalLoss>("evalLoss"),
        InstanceMethod<&TrainLlamaWrap::Dispose>("dispose"),
    });
    Napi::Function f = DefineClass(env, "TrainLlama", methods);
    ctor = new Napi::FunctionReference(Napi::Persistent(f));
    exports.Set("trainLlamaCreate", Napi::Function::New(env, Create, "trainLlamaCreate"));
  }

  explicit TrainLlamaWrap(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<TrainLlamaWrap>(info), TrainerHandle<LlamaTrainer>(info, "trainLlamaCreate", "this model") {}

  // The target for Medusa training (E_ARG unless `v` is an f32 TrainLlama handle).
  static TrainLlamaWrap* f32_of(const Napi::Value& v, const char* name) {
    SPECDEC_CHECK(v.IsObject() && v.As<Napi::Object>().InstanceOf(ctor->Value()), "E_ARG", name,
                  ": expected a TrainLlama handle");
    TrainLlamaWrap* w = Unwrap(v.As<Napi::Object>());
    SPECDEC_CHECK(w->f32_ || w->f64_, "E_DISPOSED", name, ": trainer was disposed");
    SPECDEC_CHECK(w->f32_ != nullptr, "E_ARG", name, ": the target must be an f32 trainer");
    SPECDEC_CHECK(!w->busy_->load(), "E_BUSY", name, ": a step of the target is still running");
    return w;
  }

 private:
  friend class ParamAccess<TrainLlamaWrap>;

  static Napi::Value Create(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      Napi::Object c = get_object(info[0], "config");
      LlamaShape s;
      layer_shape_arg(c, 256, &s);
      if (has_field(c, "tieWordEmbeddings")) s.tie = get_bool(get_field(c, "tieWordEmbeddings"), "config.tieWordEmbeddings");
      return make(ctor, info, s);
    });
  }

  // tokens [batch, seqLen + 1]
  std::vector<int32_t> tokens_arg(const Napi::CallbackInfo& info, int* B, int* T, int extra) {
    std::vector<int32_t> t = get_i32_array(info[0], "tokens");
    *B = int_arg(info[1], "batch", 1, 1 << 20);
    *T = int_arg(info[2], "seqLen", 1, 1 << 16);
    if (f32_) f32_->check_tokens(t.data(), t.size(), *B, *T + extra, "tokens");
    if (f64_) f64_->check_tokens(t.data(), t.size(), *B, *T + extra, "tokens");
    return t;
  }

  // lossAndGrad(tokens [B, T+1], B, T) -> loss; gradients via getGrads().
  Napi::Value LossAndGrad(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return visit([&](auto& m) {
        int B, T;
        auto t = tokens_arg(info, &B, &T, 1);
        return Napi::Number::New(info.Env(), m->forward_backward(t.data(), B, T, threads_));
      });
    });
  }

  // forward(tokens [B, T], B, T) -> { logits [B*T, V], hidden [B*T, H] } (hidden after the final norm)
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return visit([&](auto& m) {
        int B, T;
        auto t = tokens_arg(info, &B, &T, 0);
        using F = typename std::decay_t<decltype(*m)>::Scalar;
        const size_t N = size_t(B) * T;
        std::vector<F> logits(N * m->shape().vocab), hidden(N * m->shape().hidden);
        // auxLayers (optional Int32Array): also the residual streams entering those layers.
        std::vector<int> aux;
        if (info.Length() > 3 && !info[3].IsUndefined()) {
          const std::vector<int32_t> a = get_i32_array(info[3], "auxLayers");
          aux.assign(a.begin(), a.end());
        }
        std::vector<F> auxv(aux.empty() ? 0 : N * aux.size() * m->shape().hidden);
        m->forward(t.data(), B, T, logits.data(), hidden.data(), threads_, aux, aux.empty() ? nullptr : auxv.data());
        Napi::Object o = Napi::Object::New(info.Env());
        o.Set("logits", float_array(info.Env(), logits.data(), logits.size()));
        o.Set("hidden", float_array(info.Env(), hidden.data(), hidden.size()));
        if (!aux.empty()) o.Set("aux", float_array(info.Env(), auxv.data(), auxv.size()));
        return o;
      });
    });
  }

  // trainStep(tokens [B, T+1], B, T, adamw) -> Promise<{ loss, gradNorm }>
  Napi::Value TrainStep(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return visit([&](auto m) -> Napi::Value {
        int B, T;
        auto t = std::make_shared<std::vector<int32_t>>(tokens_arg(info, &B, &T, 1));
        const AdamWOptions opts = adamw_arg(info[3]);
        auto out = std::make_shared<std::pair<double, double>>();
        const int threads = threads_;
        auto guard = std::make_shared<BusyGuard>(busy_);
        return run_async(
            info.Env(),
            [=, guard = std::move(guard)] {
              (void)guard;  // released with this closure, on the main thread
              out->first = m->forward_backward(t->data(), B, T, threads);
              out->second = m->params().adamw_step(opts);
            },
            [=](Napi::Env env) -> Napi::Value {
              Napi::Object o = Napi::Object::New(env);
              o.Set("loss", out->first);
              o.Set("gradNorm", out->second);
              return o;
            },
            {Value()});
      });
    });
  }

  // evalLoss(tokens [B, T+1], B, T) -> Promise<number>
  Napi::Value EvalLoss(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return visit([&](auto m) -> Napi::Value {
        int B, T;
        auto t = std::make_shared<std::vector<int32_t>>(tokens_arg(info, &B, &T, 1));
        auto out = std::make_shared<double>(0);
        const int threads = threads_;
        auto guard = std::make_shared<BusyGuard>(busy_);
        return run_async(
            info.Env(),
            [=, guard = std::move(guard)] {
              (void)guard;  // released with this closure, on the main thread
              *out = m->eval_loss(t->data(), B, T, threads);
            },
            [=](Napi::Env env) -> Napi::Value { return Napi::Number::New(env, *out); }, {Value()});
      });
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    release();
    return info.Env().Undefined();
  }
};
Napi::FunctionReference* TrainLlamaWrap::ctor = nullptr;

// trainStep of heads trained on a frozen target (Medusa, EAGLE, EAGLE-3): the checks, tokens
// [batch, seqLen + extra] of the target's vocabulary (info[1..3]), both handles busy until the
// promise settles, and `work(target, head, tokens, B, T, threads, out)` on the libuv pool (the
// target's forward, the head's gradient, its AdamW step) with `to_js(env, out)` as the result.
template <template <typename> class Head, typename Out, typename Work, typename ToJs>
Napi::Value head_train_step(const Napi::CallbackInfo& info, TrainerHandle<Head>& h, Napi::Value self, const char* what,
                            int extra, Work work, ToJs to_js) {
  SPECDEC_CHECK(h.f32_ || h.f64_, "E_DISPOSED", "trainer was disposed");
  SPECDEC_CHECK(!h.busy_->load(), "E_BUSY", "a training step of ", what, " is still running");
  SPECDEC_CHECK(h.f32_ != nullptr, "E_ARG", "trainStep needs f32 ", what);
  TrainLlamaWrap* tw = TrainLlamaWrap::f32_of(info[0], "target");
  std::shared_ptr<LlamaTrainer<float>> target = tw->f32_;
  auto m = h.f32_;
  SPECDEC_CHECK(target->shape().hidden == m->shape().hidden && target->shape().vocab == m->shape().vocab, "E_ARG",
                "target: hidden/vocab sizes (", target->shape().hidden, ", ", target->shape().vocab, ") do not match ", what,
                " (", m->shape().hidden, ", ", m->shape().vocab, ")");
  auto t = std::make_shared<std::vector<int32_t>>(get_i32_array(info[1], "tokens"));
  const int B = int_arg(info[2], "batch", 1, 1 << 20), T = int_arg(info[3], "seqLen", 1, 1 << 16);
  target->check_tokens(t->data(), t->size(), B, T + extra, "tokens");
  auto out = std::make_shared<Out>();
  const int threads = h.threads_;
  // The target is busy too: it must not train while it computes the head's inputs.
  auto guard = std::make_shared<BusyGuard>(h.busy_), target_guard = std::make_shared<BusyGuard>(tw->busy_);
  return run_async(
      info.Env(),
      [=, guard = std::move(guard), target_guard = std::move(target_guard)] {
        (void)guard, (void)target_guard;  // released with this closure, on the main thread
        work(*target, *m, *t, B, T, threads, *out);
      },
      [=](Napi::Env env) -> Napi::Value { return to_js(env, *out); }, {self, info[0]});
}

// ---- TrainMedusa ----------------------------------------------------------------------------

class TrainMedusaWrap : public Napi::ObjectWrap<TrainMedusaWrap>, public ParamAccess<TrainMedusaWrap>, public TrainerHandle<MedusaTrainer> {
 public:
  static Napi::FunctionReference* ctor;

  static void Init(Napi::Env env, Napi::Object exports) {
    std::vector<PropertyDescriptor> methods = param_methods();
    methods.insert(methods.end(), {
        InstanceMethod<&TrainMedusaWrap::LossAndGrad>("lossAndGrad"),
        InstanceMethod<&TrainMedusaWrap::Forward>("forward"),
        InstanceMethod<&TrainMedusaWrap::TrainStep>("trainStep"),
        InstanceMethod<&TrainMedusaWrap::Dispose>("dispose"),
    });
    Napi::Function f = DefineClass(env, "TrainMedusa", methods);
    ctor = new Napi::FunctionReference(Napi::Persistent(f));
    exports.Set("trainMedusaCreate", Napi::Function::New(env, Create, "trainMedusaCreate"));
  }

  explicit TrainMedusaWrap(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<TrainMedusaWrap>(info), TrainerHandle<MedusaTrainer>(info, "trainMedusaCreate", "these heads") {}

 private:
  friend class ParamAccess<TrainMedusaWrap>;
  static Napi::Value Create(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      Napi::Object c = get_object(info[0], "config");
      MedusaShape s;
      s.heads = int_arg(get_field(c, "numHeads"), "config.numHeads", 1, 64);
      s.layers = int_arg(get_field(c, "numLayers"), "config.numLayers", 0, 64);
      s.hidden = int_arg(get_field(c, "hiddenSize"), "config.hiddenSize", 1, 1 << 14);
      s.vocab = int_arg(get_field(c, "vocabSize"), "config.vocabSize", 1, 1 << 20);
      return make(ctor, info, s);
    });
  }

  static Napi::Object result(Napi::Env env, double loss, const std::vector<double>& hl, const std::vector<double>& ha) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("loss", loss);
    o.Set("headLoss", number_array(env, hl));
    o.Set("headAccuracy", number_array(env, ha));
    return o;
  }

  // lossAndGrad(hidden [B*T, H], tokens [B, T], B, T) -> { loss, headLoss, headAccuracy }
  Napi::Value LossAndGrad(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return visit([&](auto& m) -> Napi::Value {
        using F = typename std::decay_t<decltype(*m)>::Scalar;
        std::vector<double> h = float_values(info[0], "hidden");
        std::vector<int32_t> t = get_i32_array(info[1], "tokens");
        const int B = int_arg(info[2], "batch", 1, 1 << 20), T = int_arg(info[3], "seqLen", 1, 1 << 16);
        SPECDEC_CHECK(t.size() == size_t(B) * T, "E_ARG", "tokens: expected ", size_t(B) * T, " ids, got ", t.size());
        SPECDEC_CHECK(h.size() == size_t(B) * T * m->shape().hidden, "E_ARG", "hidden: expected ",
                      size_t(B) * T * m->shape().hidden, " values (", B * T, " x ", m->shape().hidden, "), got ", h.size());
        std::vector<F> hf(h.begin(), h.end());
        std::vector<double> hl, ha;
        const double loss = m->forward_backward(hf.data(), t.data(), B, T, threads_, &hl, &ha);
        return result(info.Env(), loss, hl, ha);
      });
    });
  }

  // forward(hidden [N, H]) -> logits [numHeads, N, V]
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return visit([&](auto& m) -> Napi::Value {
        using F = typename std::decay_t<decltype(*m)>::Scalar;
        std::vector<double> h = float_values(info[0], "hidden");
        const size_t H = size_t(m->shape().hidden);
        SPECDEC_CHECK(h.size() % H == 0, "E_ARG", "hidden: length ", h.size(), " is not a multiple of hiddenSize ", H);
        const int64_t N = int64_t(h.size() / H);
        std::vector<F> hf(h.begin(), h.end());
        std::vector<F> logits(size_t(m->shape().heads) * N * m->shape().vocab);
        m->forward(hf.data(), N, logits.data(), threads_);
        return float_array(info.Env(), logits.data(), logits.size());
      });
    });
  }

  // trainStep(target: TrainLlama, tokens [B, T], B, T, adamw) -> Promise<{ loss, headLoss, headAccuracy, gradNorm }>
  // The target (frozen) computes the hidden states of the batch; the heads take one AdamW step.
  Napi::Value TrainStep(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      const AdamWOptions opts = adamw_arg(info[4]);
      struct Out {
        double loss = 0, norm = 0;
        std::vector<double> hl, ha;
      };
      return head_train_step<MedusaTrainer, Out>(
          info, *this, Value(), "these heads", 0,
          [opts](LlamaTrainer<float>& target, MedusaTrainer<float>& m, const std::vector<int32_t>& t, int B, int T, int threads, Out& out) {
            std::vector<float> hidden(size_t(B) * T * m.shape().hidden);
            target.forward(t.data(), B, T, nullptr, hidden.data(), threads);
            out.loss = m.forward_backward(hidden.data(), t.data(), B, T, threads, &out.hl, &out.ha);
            out.norm = m.params().adamw_step(opts);
          },
          [](Napi::Env env, const Out& out) -> Napi::Value {
            Napi::Object o = result(env, out.loss, out.hl, out.ha);
            o.Set("gradNorm", out.norm);
            return o;
          });
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    release();
    return info.Env().Undefined();
  }
};
Napi::FunctionReference* TrainMedusaWrap::ctor = nullptr;

// ---- TrainEagle -----------------------------------------------------------------------------

class TrainEagleWrap : public Napi::ObjectWrap<TrainEagleWrap>, public ParamAccess<TrainEagleWrap>, public TrainerHandle<EagleTrainer> {
 public:
  static Napi::FunctionReference* ctor;

  static void Init(Napi::Env env, Napi::Object exports) {
    std::vector<PropertyDescriptor> methods = param_methods();
    methods.insert(methods.end(), {
        InstanceMethod<&TrainEagleWrap::LossAndGrad>("lossAndGrad"),
        InstanceMethod<&TrainEagleWrap::Forward>("forward"),
        InstanceMethod<&TrainEagleWrap::TrainStep>("trainStep"),
        InstanceMethod<&TrainEagleWrap::Dispose>("dispose"),
    });
    Napi::Function f = DefineClass(env, "TrainEagle", methods);
    ctor = new Napi::FunctionReference(Napi::Persistent(f));
    exports.Set("trainEagleCreate", Napi::Function::New(env, Create, "trainEagleCreate"));
  }

  explicit TrainEagleWrap(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<TrainEagleWrap>(info), TrainerHandle<EagleTrainer>(info, "trainEagleCreate", "this head") {}

 private:
  friend class ParamAccess<TrainEagleWrap>;
  static Napi::Value Create(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      Napi::Object c = get_object(info[0], "config");
      EagleShape s;
      layer_shape_arg(c, 64, &s);
      if (has_field(c, "fcBias")) s.fc_bias = get_bool(get_field(c, "fcBias"), "config.fcBias");
      return make(ctor, info, s);
    });
  }

  // The loss options in `o` (fields absent: SafeAILab's defaults, no noise).
  static EagleLossOptions loss_options(const Napi::Value& v) {
    EagleLossOptions e;
    if (v.IsUndefined()) return e;
    Napi::Object o = get_object(v, "options");
    if (has_field(o, "vWeight")) e.v_weight = get_number(get_field(o, "vWeight"), "options.vWeight");
    if (has_field(o, "pWeight")) e.p_weight = get_number(get_field(o, "pWeight"), "options.pWeight");
    if (has_field(o, "noise")) e.noise = get_number(get_field(o, "noise"), "options.noise");
    if (has_field(o, "noiseSeed")) e.noise_seed = uint64_t(get_int(get_field(o, "noiseSeed"), "options.noiseSeed"));
    SPECDEC_CHECK(e.v_weight >= 0 && e.p_weight >= 0 && e.noise >= 0 && std::isfinite(e.v_weight + e.p_weight + e.noise),
                  "E_ARG", "options.vWeight, pWeight and noise must be finite numbers >= 0");
    return e;
  }

  static Napi::Object stats(Napi::Env env, const EagleStats& s) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("loss", s.loss);
    o.Set("vLoss", s.v_loss);
    o.Set("pLoss", s.p_loss);
    o.Set("accuracy", s.accuracy);
    return o;
  }

  // The arrays of lossAndGrad / forward, checked against the shape.
  template <typename F>
  struct Inputs {
    std::vector<int32_t> tokens;
    std::vector<F> features, logits, embed, lm;
    int B = 0, T = 0;
  };
  template <typename F>
  static Inputs<F> inputs(const Napi::CallbackInfo& info, const EagleShape& s, bool with_logits) {
    Inputs<F> in;
    const int at = with_logits ? 5 : 4;
    in.B = int_arg(info[size_t(at)], "batch", 1, 1 << 20);
    in.T = int_arg(info[size_t(at + 1)], "seqLen", 1, 1 << 16);
    const size_t R = size_t(in.B) * (size_t(in.T) + 1), H = size_t(s.hidden), V = size_t(s.vocab);
    in.tokens = get_i32_array(info[0], "tokens");
    SPECDEC_CHECK(in.tokens.size() == R, "E_ARG", "tokens: expected ", R, " ids (", in.B, " x ", in.T + 1, "), got ", in.tokens.size());
    auto take = [&](const Napi::Value& v, const char* name, size_t n, const char* what) {
      std::vector<double> d = float_values(v, name);
      SPECDEC_CHECK(d.size() == n, "E_ARG", name, ": expected ", n, " values (", what, "), got ", d.size());
      return std::vector<F>(d.begin(), d.end());
    };
    in.features = take(info[1], "features", R * H, "batch x (seqLen + 1) x hiddenSize");
    if (with_logits) in.logits = take(info[2], "targetLogits", R * V, "batch x (seqLen + 1) x vocabSize");
    in.embed = take(info[with_logits ? 3 : 2], "embed", V * H, "vocabSize x hiddenSize");
    in.lm = take(info[with_logits ? 4 : 3], "lmHead", V * H, "vocabSize x hiddenSize");
    return in;
  }

  // lossAndGrad(tokens [B, T+1], features [B, T+1, H], targetLogits [B, T+1, V], embed [V, H],
  //             lmHead [V, H], B, T, options?) -> { loss, vLoss, pLoss, accuracy }
  Napi::Value LossAndGrad(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return visit([&](auto& m) -> Napi::Value {
        using F = typename std::decay_t<decltype(*m)>::Scalar;
        Inputs<F> in = inputs<F>(info, m->shape(), true);
        const EagleLossOptions opts = loss_options(info[7]);
        return stats(info.Env(), m->forward_backward(in.tokens.data(), in.features.data(), in.logits.data(), in.embed.data(),
                                                     in.lm.data(), in.B, in.T, opts, threads_));
      });
    });
  }

  // forward(tokens [B, T+1], features [B, T+1, H], embed, lmHead, B, T) -> { h [B*T, H], logits [B*T, V] }
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return visit([&](auto& m) -> Napi::Value {
        using F = typename std::decay_t<decltype(*m)>::Scalar;
        Inputs<F> in = inputs<F>(info, m->shape(), false);
        const size_t N = size_t(in.B) * in.T;
        std::vector<F> h(N * m->shape().hidden), logits(N * m->shape().vocab);
        m->forward(in.tokens.data(), in.features.data(), in.embed.data(), in.lm.data(), in.B, in.T, h.data(), logits.data(),
                   threads_);
        Napi::Object o = Napi::Object::New(info.Env());
        o.Set("h", float_array(info.Env(), h.data(), h.size()));
        o.Set("logits", float_array(info.Env(), logits.data(), logits.size()));
        return o;
      });
    });
  }

  // trainStep(target: TrainLlama, tokens [B, T+1], B, T, adamw & loss options) -> Promise<stats & { gradNorm }>
  // The frozen target computes the features and logits of the batch; the head takes one AdamW step.
  Napi::Value TrainStep(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      const AdamWOptions opts = adamw_arg(info[4]);
      const EagleLossOptions lopts = loss_options(info[4]);
      struct Out {
        EagleStats s;
        double norm = 0;
      };
      return head_train_step<EagleTrainer, Out>(
          info, *this, Value(), "this head", 1,
          [opts, lopts](LlamaTrainer<float>& target, EagleTrainer<float>& m, const std::vector<int32_t>& t, int B, int T, int threads, Out& out) {
            const size_t R = size_t(B) * (size_t(T) + 1);
            std::vector<float> features(R * target.shape().hidden), logits(R * target.shape().vocab);
            target.forward(t.data(), B, T + 1, logits.data(), features.data(), threads);
            const auto& tp = target.params();
            const float* embed = tp.w.data() + tp.find("model.embed_tokens.weight").offset;
            const float* lm = target.shape().tie ? embed : tp.w.data() + tp.find("lm_head.weight").offset;
            out.s = m.forward_backward(t.data(), features.data(), logits.data(), embed, lm, B, T, lopts, threads);
            out.norm = m.params().adamw_step(opts);
          },
          [](Napi::Env env, const Out& out) -> Napi::Value {
            Napi::Object o = stats(env, out.s);
            o.Set("gradNorm", out.norm);
            return o;
          });
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    release();
    return info.Env().Undefined();
  }
};
Napi::FunctionReference* TrainEagleWrap::ctor = nullptr;

// ---- TrainEagle3 ----------------------------------------------------------------------------

class TrainEagle3Wrap : public Napi::ObjectWrap<TrainEagle3Wrap>, public ParamAccess<TrainEagle3Wrap>, public TrainerHandle<Eagle3Trainer> {
 public:
  static Napi::FunctionReference* ctor;

  static void Init(Napi::Env env, Napi::Object exports) {
    std::vector<PropertyDescriptor> methods = param_methods();
    methods.insert(methods.end(), {
        InstanceMethod<&TrainEagle3Wrap::LossAndGrad>("lossAndGrad"),
        InstanceMethod<&TrainEagle3Wrap::Forward>("forward"),
        InstanceMethod<&TrainEagle3Wrap::TrainStep>("trainStep"),
        InstanceMethod<&TrainEagle3Wrap::Dispose>("dispose"),
    });
    Napi::Function f = DefineClass(env, "TrainEagle3", methods);
    ctor = new Napi::FunctionReference(Napi::Persistent(f));
    exports.Set("trainEagle3Create", Napi::Function::New(env, Create, "trainEagle3Create"));
  }

  explicit TrainEagle3Wrap(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<TrainEagle3Wrap>(info), TrainerHandle<Eagle3Trainer>(info, "trainEagle3Create", "this head") {}

 private:
  friend class ParamAccess<TrainEagle3Wrap>;
  static Napi::Value Create(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      Napi::Object c = get_object(info[0], "config");
      Eagle3Shape s;
      layer_shape_arg(c, 1, &s);
      s.draft_vocab = int_arg(get_field(c, "draftVocabSize"), "config.draftVocabSize", 1, s.vocab);
      return make(ctor, info, s);
    });
  }

  // { steps?, decay? } (absent: SafeAILab's 7 steps, 0.8).
  static Eagle3LossOptions loss_options(const Napi::Value& v) {
    Eagle3LossOptions e;
    if (v.IsUndefined()) return e;
    Napi::Object o = get_object(v, "options");
    if (has_field(o, "steps")) e.steps = int_arg(get_field(o, "steps"), "options.steps", 1, 64);
    if (has_field(o, "decay")) e.decay = get_number(get_field(o, "decay"), "options.decay");
    SPECDEC_CHECK(e.decay > 0 && std::isfinite(e.decay), "E_ARG", "options.decay: expected a finite number > 0");
    return e;
  }

  static Napi::Object stats(Napi::Env env, const Eagle3Stats& s) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("loss", s.loss);
    o.Set("stepLoss", number_array(env, s.step_loss));
    o.Set("stepAccuracy", number_array(env, s.step_acc));
    return o;
  }

  template <typename F>
  static std::vector<F> take(const Napi::Value& v, const char* name, size_t n, const char* what) {
    std::vector<double> d = float_values(v, name);
    SPECDEC_CHECK(d.size() == n, "E_ARG", name, ": expected ", n, " values (", what, "), got ", d.size());
    return std::vector<F>(d.begin(), d.end());
  }

  static std::vector<int32_t> tokens_arg(const Napi::Value& v, int B, int T) {
    std::vector<int32_t> t = get_i32_array(v, "tokens");
    SPECDEC_CHECK(t.size() == size_t(B) * (size_t(T) + 1), "E_ARG", "tokens: expected ", size_t(B) * (size_t(T) + 1), " ids (", B,
                  " x ", T + 1, "), got ", t.size());
    return t;
  }

  // lossAndGrad(tokens [B, T+1], features [B, T+1, 3H], targetLogits [B, T+1, V], embed [V, H],
  //             draftIds [Vd], B, T, options?) -> { loss, stepLoss, stepAccuracy }
  Napi::Value LossAndGrad(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return visit([&](auto& m) -> Napi::Value {
        using F = typename std::decay_t<decltype(*m)>::Scalar;
        const Eagle3Shape& s = m->shape();
        const int B = int_arg(info[5], "batch", 1, 1 << 20), T = int_arg(info[6], "seqLen", 1, 1 << 16);
        const size_t R = size_t(B) * (size_t(T) + 1), H = size_t(s.hidden), V = size_t(s.vocab);
        const std::vector<int32_t> tokens = tokens_arg(info[0], B, T);
        const std::vector<F> feats = take<F>(info[1], "features", R * 3 * H, "batch x (seqLen + 1) x 3 hiddenSize");
        const std::vector<F> logits = take<F>(info[2], "targetLogits", R * V, "batch x (seqLen + 1) x vocabSize");
        const std::vector<F> embed = take<F>(info[3], "embed", V * H, "vocabSize x hiddenSize");
        const std::vector<int32_t> ids = get_i32_array(info[4], "draftIds");
        return stats(info.Env(), m->forward_backward(tokens.data(), feats.data(), logits.data(), embed.data(), ids.data(), B, T,
                                                     loss_options(info[7]), threads_));
      });
    });
  }

  // forward(tokens [B, T+1], features [B, T+1, 3H], embed [V, H], B, T, steps) ->
  //   { h [B, steps, T, H], logits [B, steps, T, Vd] } (rows j >= T - s of step s: zeros)
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&] {
      return visit([&](auto& m) -> Napi::Value {
        using F = typename std::decay_t<decltype(*m)>::Scalar;
        const Eagle3Shape& s = m->shape();
        const int B = int_arg(info[3], "batch", 1, 1 << 20), T = int_arg(info[4], "seqLen", 1, 1 << 16);
        const int steps = int_arg(info[5], "steps", 1, 64);
        const size_t R = size_t(B) * (size_t(T) + 1), H = size_t(s.hidden), V = size_t(s.vocab);
        const std::vector<int32_t> tokens = tokens_arg(info[0], B, T);
        const std::vector<F> feats = take<F>(info[1], "features", R * 3 * H, "batch x (seqLen + 1) x 3 hiddenSize");
        const std::vector<F> embed = take<F>(info[2], "embed", V * H, "vocabSize x hiddenSize");
        const size_t N = size_t(B) * steps * T;
        std::vector<F> h(N * H), logits(N * size_t(s.draft_vocab));
        m->forward(tokens.data(), feats.data(), embed.data(), B, T, steps, h.data(), logits.data(), threads_);
        Napi::Object o = Napi::Object::New(info.Env());
        o.Set("h", float_array(info.Env(), h.data(), h.size()));
        o.Set("logits", float_array(info.Env(), logits.data(), logits.size()));
        return o;
      });
    });
  }

  // trainStep(target: TrainLlama, tokens [B, T+1], B, T, auxLayers: Int32Array(3), draftIds: Int32Array,
  //           adamw & loss options) -> Promise<stats & { gradNorm }>. The frozen target computes the
  // three residual streams and the logits of the batch; the head takes one AdamW step.
  Napi::Value TrainStep(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      const std::vector<int32_t> aux32 = get_i32_array(info[4], "auxLayers");
      SPECDEC_CHECK(aux32.size() == 3, "E_ARG", "auxLayers: expected three layer indices, got ", aux32.size());
      const std::vector<int> aux(aux32.begin(), aux32.end());
      TrainLlamaWrap* tw = TrainLlamaWrap::f32_of(info[0], "target");
      for (int l : aux)
        SPECDEC_CHECK(l >= 0 && l < tw->f32_->shape().layers, "E_ARG", "auxLayers: layer ", l, " is outside the target's [0, ",
                      tw->f32_->shape().layers, ")");
      const std::vector<int32_t> ids = get_i32_array(info[5], "draftIds");
      if (f32_) f32_->check_draft_ids(ids.data(), ids.size());  // (disposed or f64: head_train_step says so)
      const AdamWOptions opts = adamw_arg(info[6]);
      const Eagle3LossOptions lopts = loss_options(info[6]);
      struct Out {
        Eagle3Stats s;
        double norm = 0;
      };
      return head_train_step<Eagle3Trainer, Out>(
          info, *this, Value(), "this head", 1,
          [opts, lopts, aux, ids](LlamaTrainer<float>& target, Eagle3Trainer<float>& m, const std::vector<int32_t>& t, int B, int T,
                                  int threads, Out& out) {
            const size_t R = size_t(B) * (size_t(T) + 1);
            std::vector<float> features(R * 3 * target.shape().hidden), logits(R * target.shape().vocab);
            target.forward(t.data(), B, T + 1, logits.data(), nullptr, threads, aux, features.data());
            const auto& tp = target.params();
            const float* embed = tp.w.data() + tp.find("model.embed_tokens.weight").offset;
            out.s = m.forward_backward(t.data(), features.data(), logits.data(), embed, ids.data(), B, T, lopts, threads);
            out.norm = m.params().adamw_step(opts);
          },
          [](Napi::Env env, const Out& out) -> Napi::Value {
            Napi::Object o = stats(env, out.s);
            o.Set("gradNorm", out.norm);
            return o;
          });
    });
  }

  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    release();
    return info.Env().Undefined();
  }
};
Napi::FunctionReference* TrainEagle3Wrap::ctor = nullptr;

void Init(Napi::Env env, Napi::Object exports) {
  TrainLlamaWrap::Init(env, exports);
  TrainMedusaWrap::Init(env, exports);
  TrainEagleWrap::Init(env, exports);
  TrainEagle3Wrap::Init(env, exports);
}

static Registrar reg(&Init);

}  // namespace
}  // namespace napi
}  // namespace specdec

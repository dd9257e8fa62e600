// JS glue of the Llama runner: llamaLoad(config, source, options) -> Promise<LlamaModel handle>.
// Loading runs on the libuv pool (run_async). forward and greedyChain run there too, except work
// estimated at no more than the caller's syncMaxMacs multiply-adds (LlamaModel::estimate_macs),
// which runs on the calling thread (run_maybe_async): for a tiny model the round trip through the
// pool and back through the event loop costs as much as the forward itself. The rest is quick
// host bookkeeping.
#include <algorithm>
#include <chrono>
#include <cstring>

#include "../model/llama.h"
#include "../model/spec_chain.h"
#include "napi_util.h"

namespace specdec {
namespace napi {
namespace {

std::vector<uint64_t> get_u64_array(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_biguint64_array, "E_ARG",
                name, ": expected a BigUint64Array");
  auto a = v.As<Napi::TypedArrayOf<uint64_t>>();
  return std::vector<uint64_t>(a.Data(), a.Data() + a.ElementLength());
}

uint64_t get_u64(const Napi::Value& v, const char* name) {
  SPECDEC_CHECK(v.IsBigInt(), "E_ARG", name, ": expected a bigint");
  bool lossless = false;
  const uint64_t x = v.As<Napi::BigInt>().Uint64Value(&lossless);
  SPECDEC_CHECK(lossless, "E_ARG", name, ": expected a bigint in [0, 2^64)");
  return x;
}

int get_int32(const Napi::Value& v, const char* name) {
  int64_t x = get_int(v, name);
  SPECDEC_CHECK(x >= INT32_MIN && x <= INT32_MAX, "E_ARG", name, ": ", x, " does not fit in int32");
  return static_cast<int>(x);
}

LlamaConfig config_arg(const Napi::Value& v) {
  Napi::Object o = get_object(v, "config");
  LlamaConfig c;
  c.architecture = get_string(get_field(o, "architecture"), "config.architecture");
  c.vocab_size = get_int32(get_field(o, "vocabSize"), "config.vocabSize");
  c.hidden_size = get_int32(get_field(o, "hiddenSize"), "config.hiddenSize");
  c.intermediate_size = get_int32(get_field(o, "intermediateSize"), "config.intermediateSize");
  c.num_layers = get_int32(get_field(o, "numLayers"), "config.numLayers");
  c.num_heads = get_int32(get_field(o, "numHeads"), "config.numHeads");
  c.num_kv_heads = get_int32(get_field(o, "numKvHeads"), "config.numKvHeads");
  c.head_dim = get_int32(get_field(o, "headDim"), "config.headDim");
  c.max_positions = get_int32(get_field(o, "maxPositions"), "config.maxPositions");
  c.rms_norm_eps = static_cast<float>(get_number(get_field(o, "rmsNormEps"), "config.rmsNormEps"));
  c.rope_theta = get_number(get_field(o, "ropeTheta"), "config.ropeTheta");
  c.rope_dim = has_field(o, "ropeDim") ? get_int32(get_field(o, "ropeDim"), "config.ropeDim") : c.head_dim;
  // Per-layer flags (an optional array of booleans) as 0 / 1.
  auto flags = [&](const char* key, std::vector<uint8_t>& out) {
    if (!has_field(o, key)) return;
    const Napi::Value f = get_field(o, key);
    SPECDEC_CHECK(f.IsArray(), "E_ARG", "config.", key, ": expected an array of booleans");
    const Napi::Array a = f.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) out.push_back(get_bool(a.Get(i), "config flag") ? 1 : 0);
  };
  flags("ropeLayers", c.rope_layers);
  flags("ropeLocalLayers", c.rope_local_layers);
  if (has_field(o, "ropeLocalTheta")) c.rope_local_theta = get_number(get_field(o, "ropeLocalTheta"), "config.ropeLocalTheta");
  if (has_field(o, "attnScale")) c.attn_scale = get_number(get_field(o, "attnScale"), "config.attnScale");
  if (has_field(o, "attnSoftcap")) c.attn_softcap = get_number(get_field(o, "attnSoftcap"), "config.attnSoftcap");
  if (has_field(o, "finalSoftcap")) c.final_softcap = get_number(get_field(o, "finalSoftcap"), "config.finalSoftcap");
  if (has_field(o, "embeddingMultiplier")) c.embedding_multiplier = get_number(get_field(o, "embeddingMultiplier"), "config.embeddingMultiplier");
  if (has_field(o, "residualMultiplier")) c.residual_multiplier = get_number(get_field(o, "residualMultiplier"), "config.residualMultiplier");
  if (has_field(o, "logitsScaling")) c.logits_scaling = get_number(get_field(o, "logitsScaling"), "config.logitsScaling");
  if (has_field(o, "normOffset")) c.norm_offset = static_cast<float>(get_number(get_field(o, "normOffset"), "config.normOffset"));
  c.gelu_mlp = has_field(o, "geluMlp") && get_bool(get_field(o, "geluMlp"), "config.geluMlp");
  c.sandwich_norms = has_field(o, "sandwichNorms") && get_bool(get_field(o, "sandwichNorms"), "config.sandwichNorms");
  c.post_norms = has_field(o, "postNorms") && get_bool(get_field(o, "postNorms"), "config.postNorms");
  c.scale_embeddings = has_field(o, "scaleEmbeddings") && get_bool(get_field(o, "scaleEmbeddings"), "config.scaleEmbeddings");
  if (has_field(o, "attentionWindows")) {
    const Napi::Value f = get_field(o, "attentionWindows");
    SPECDEC_CHECK(f.IsArray(), "E_ARG", "config.attentionWindows: expected an array of integers");
    const Napi::Array a = f.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) c.attention_windows.push_back(get_int32(a.Get(i), "config.attentionWindows[i]"));
  }
  if (has_field(o, "ropeScaling")) {
    Napi::Object s = get_object(get_field(o, "ropeScaling"), "config.ropeScaling");
    c.rope_type = get_string(get_field(s, "type"), "config.ropeScaling.type");
    if (c.rope_type == "longrope") {
      const Napi::Value f = get_field(s, "shortFactor");
      SPECDEC_CHECK(f.IsArray(), "E_ARG", "config.ropeScaling.shortFactor: expected an array of numbers");
      const Napi::Array a = f.As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); ++i)
        c.rope_ext_factors.push_back(get_number(a.Get(i), "config.ropeScaling.shortFactor[i]"));
      c.rope_attention_factor = get_number(get_field(s, "attentionFactor"), "config.ropeScaling.attentionFactor");
    } else {
      c.rope_factor = get_number(get_field(s, "factor"), "config.ropeScaling.factor");
    }
    if (c.rope_type == "yarn") {
      c.rope_original_max_positions =
          get_number(get_field(s, "originalMaxPositions"), "config.ropeScaling.originalMaxPositions");
      c.rope_attention_factor = get_number(get_field(s, "attentionFactor"), "config.ropeScaling.attentionFactor");
      c.rope_beta_fast = get_number(get_field(s, "betaFast"), "config.ropeScaling.betaFast");
      c.rope_beta_slow = get_number(get_field(s, "betaSlow"), "config.ropeScaling.betaSlow");
      c.rope_yarn_truncate = get_bool(get_field(s, "truncate"), "config.ropeScaling.truncate");
    }
    if (c.rope_type == "llama3") {
      c.rope_low_freq_factor = get_number(get_field(s, "lowFreqFactor"), "config.ropeScaling.lowFreqFactor");
      c.rope_high_freq_factor = get_number(get_field(s, "highFreqFactor"), "config.ropeScaling.highFreqFactor");
      c.rope_original_max_positions =
          get_number(get_field(s, "originalMaxPositions"), "config.ropeScaling.originalMaxPositions");
    }
  }
  c.qkv_bias = get_bool(get_field(o, "qkvBias"), "config.qkvBias");
  c.o_bias = get_bool(get_field(o, "oBias"), "config.oBias");
  c.qk_norm = has_field(o, "qkNorm") && get_bool(get_field(o, "qkNorm"), "config.qkNorm");
  c.fused_projections = has_field(o, "fusedProjections") && get_bool(get_field(o, "fusedProjections"), "config.fusedProjections");
  c.tie_word_embeddings = get_bool(get_field(o, "tieWordEmbeddings"), "config.tieWordEmbeddings");
  return c;
}

LlamaWeightSource source_arg(const Napi::Value& v) {
  Napi::Object o = get_object(v, "source");
  LlamaWeightSource s;
  s.dir = get_string(get_field(o, "dir"), "source.dir");
  if (has_field(o, "weightMap")) {
    Napi::Object m = get_object(get_field(o, "weightMap"), "source.weightMap");
    Napi::Array keys = m.GetPropertyNames();
    for (uint32_t i = 0; i < keys.Length(); ++i) {
      std::string k = keys.Get(i).As<Napi::String>().Utf8Value();
      s.weight_map[k] = get_string(m.Get(k), "source.weightMap[name]");
    }
    SPECDEC_CHECK(!s.weight_map.empty(), "E_FORMAT", "model.safetensors.index.json: empty weight_map");
  } else {
    s.file = get_string(get_field(o, "file"), "source.file");
  }
  if (has_field(o, "layouts")) {
    // [[prefix, lmHead], ...]
    Napi::Value lv = get_field(o, "layouts");
    SPECDEC_CHECK(lv.IsArray(), "E_ARG", "source.layouts: expected an array of [prefix, lmHead] pairs");
    Napi::Array a = lv.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Value e = a.Get(i);
      SPECDEC_CHECK(e.IsArray() && e.As<Napi::Array>().Length() == 2, "E_ARG", "source.layouts[", i, "]: expected [prefix, lmHead]");
      Napi::Array pr = e.As<Napi::Array>();
      s.layouts.emplace_back(get_string(pr.Get(0u), "source.layouts[i][0]"), get_string(pr.Get(1u), "source.layouts[i][1]"));
    }
  }
  return s;
}

LlamaLoadOptions options_arg(const Napi::Value& v) {
  Napi::Object o = get_object(v, "options");
  LlamaLoadOptions opt;
  opt.device = get_device(get_field(o, "device"), "options.device");
  opt.page_size = get_int32(get_field(o, "pageSize"), "options.pageSize");
  opt.num_pages = get_int32(get_field(o, "kvPages"), "options.kvPages");
  opt.kv_dtype = get_dtype(get_field(o, "kvDtype"), "options.kvDtype");
  return opt;
}

// vocab: the model's, for checking a device tail's ids (inputs[b].tail = { ids, offset }).
std::vector<LlamaSeqInput> inputs_arg(const Napi::Value& v, int64_t vocab) {
  SPECDEC_CHECK(v.IsArray(), "E_ARG", "inputs: expected an array");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<LlamaSeqInput> out(a.Length());
  for (uint32_t b = 0; b < a.Length(); ++b) {
    Napi::Object o = get_object(a.Get(b), "inputs[b]");
    LlamaSeqInput& in = out[b];
    in.seq = get_int32(get_field(o, "seq"), "inputs[b].seq");
    in.tokens = get_i32_array(get_field(o, "tokens"), "inputs[b].tokens");
    if (has_field(o, "parents")) in.parents = get_i32_array(get_field(o, "parents"), "inputs[b].parents");
    if (has_field(o, "positions")) in.positions = get_i32_array(get_field(o, "positions"), "inputs[b].positions");
    if (has_field(o, "mask")) {
      Napi::Object m = get_object(get_field(o, "mask"), "inputs[b].mask");
      in.mask = get_u64_array(get_field(m, "bits"), "inputs[b].mask.bits");
      in.mask_words = get_int32(get_field(m, "words"), "inputs[b].mask.words");
    }
    if (has_field(o, "tail")) {
      Napi::Object t = get_object(get_field(o, "tail"), "inputs[b].tail");
      in.tail = trusted_ids_arg(get_field(t, "ids"), "inputs[b].tail.ids", vocab);
      in.tail_offset = get_int(get_field(t, "offset"), "inputs[b].tail.offset");
    }
  }
  return out;
}

// Copies of host vectors as typed arrays (the chain calls' results).
Napi::Int32Array int32_array(Napi::Env env, const std::vector<int32_t>& v) {
  auto a = Napi::Int32Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * 4);
  return a;
}
Napi::Float64Array float64_array(Napi::Env env, const std::vector<double>& v) {
  auto a = Napi::Float64Array::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * 8);
  return a;
}

// One Int32Array per vector (the chain drafting calls' picks).
Napi::Array int32_arrays(Napi::Env env, const std::vector<std::vector<int32_t>>& v) {
  Napi::Array out = Napi::Array::New(env, v.size());
  for (size_t b = 0; b < v.size(); ++b) out.Set(static_cast<uint32_t>(b), int32_array(env, v[b]));
  return out;
}

// One Float32Array per vector (a chain's log-probabilities).
Napi::Array float32_arrays(Napi::Env env, const std::vector<std::vector<float>>& v) {
  Napi::Array out = Napi::Array::New(env, v.size());
  for (size_t b = 0; b < v.size(); ++b) {
    auto a = Napi::Float32Array::New(env, v[b].size());
    if (!v[b].empty()) std::memcpy(a.Data(), v[b].data(), v[b].size() * 4);
    out.Set(static_cast<uint32_t>(b), a);
  }
  return out;
}

// A chain's logprobs argument (info[at]: undefined, or { k, want: Int32Array (0/1 per input) }), or null.
std::shared_ptr<LlamaModel::ChainLogprobs> chain_logprobs_arg(const Napi::CallbackInfo& info, size_t at, size_t inputs) {
  if (info.Length() <= at || info[at].IsUndefined() || info[at].IsNull()) return nullptr;
  SPECDEC_CHECK(info[at].IsObject(), "E_ARG", "logprobs: expected { k, want }");
  Napi::Object o = info[at].As<Napi::Object>();
  auto lp = std::make_shared<LlamaModel::ChainLogprobs>();
  const int64_t k = get_int(o.Get("k"), "logprobs.k");
  SPECDEC_CHECK(k >= 0 && k <= 1024, "E_ARG", "logprobs.k: expected 0 <= k <= 1024, got ", k);
  lp->k = static_cast<int32_t>(k);
  const std::vector<int32_t> want = get_i32_array(o.Get("want"), "logprobs.want");
  SPECDEC_CHECK(want.size() == inputs, "E_ARG", "logprobs.want: ", want.size(), " entries for ", inputs, " inputs");
  lp->want.assign(want.begin(), want.end());
  return lp;
}

// { lp, topLp, topIds } of a chain's log-probabilities: per input (empty where not wanted).
void set_chain_logprobs(Napi::Env env, Napi::Object o, const std::vector<std::vector<float>>& lp, const std::vector<std::vector<float>>& top_lp,
                        const std::vector<std::vector<int32_t>>& top_ids) {
  o.Set("lp", float32_arrays(env, lp));
  o.Set("topLp", float32_arrays(env, top_lp));
  o.Set("topIds", int32_arrays(env, top_ids));
}

// steps: one integer >= 1 per input (the chain drafting calls).
std::vector<int> steps_arg(const Napi::Value& v, size_t inputs) {
  const std::vector<int32_t> st = get_i32_array(v, "steps");
  SPECDEC_CHECK(st.size() == inputs, "E_ARG", "steps: ", st.size(), " entries for ", inputs, " inputs");
  for (size_t b = 0; b < st.size(); ++b)
    SPECDEC_CHECK(st[b] >= 1, "E_ARG", "steps[", b, "]: expected an integer >= 1, got ", st[b]);
  return std::vector<int>(st.begin(), st.end());
}

class LlamaWrap : public Napi::ObjectWrap<LlamaWrap> {
 public:
  static Napi::FunctionReference* ctor;

  static void Init(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "LlamaModel",
                                   {
                                       InstanceMethod<&LlamaWrap::Forward>("forward"),
                                       InstanceMethod<&LlamaWrap::GreedyChain>("greedyChain"),
                                       InstanceMethod<&LlamaWrap::SampledChain>("sampledChain"),
                                       InstanceMethod<&LlamaWrap::GreedyChainOnDevice>("greedyChainOnDevice"),
                                       InstanceMethod<&LlamaWrap::SampledChainOnDevice>("sampledChainOnDevice"),
                                       InstanceMethod<&LlamaWrap::SpeculativeChain>("speculativeChain"),
                                       InstanceMethod<&LlamaWrap::MedusaChain>("medusaChain"),
                                       InstanceMethod<&LlamaWrap::Commit>("commit"),
                                       InstanceMethod<&LlamaWrap::CreateSequence>("createSequence"),
                                       InstanceMethod<&LlamaWrap::ForkSequence>("forkSequence"),
                                       InstanceMethod<&LlamaWrap::FreeSequence>("freeSequence"),
                                       InstanceMethod<&LlamaWrap::Truncate>("truncate"),
                                       InstanceMethod<&LlamaWrap::SequenceLength>("sequenceLength"),
                                       InstanceMethod<&LlamaWrap::KvInfo>("kvInfo"),
                                       InstanceMethod<&LlamaWrap::WeightDtype>("weightDtype"),
                                       InstanceMethod<&LlamaWrap::SharedWeights>("sharedWeights"),
                                       InstanceMethod<&LlamaWrap::Dispose>("dispose"),
                                   });
    ctor = new Napi::FunctionReference(Napi::Persistent(f));
    exports.Set("llamaLoad", Napi::Function::New(env, Load, "llamaLoad"));
    exports.Set("llamaRopeInvFreq", Napi::Function::New(env, RopeInvFreq, "llamaRopeInvFreq"));
  }

  explicit LlamaWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LlamaWrap>(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw make_error(info.Env(), "E_ARG", "use llamaLoad() to create a model");
    model_ = *info[0].As<Napi::External<std::shared_ptr<LlamaModel>>>().Data();
  }

 private:
  // Shared with in-flight async work, so dispose() during a forward is safe.
  std::shared_ptr<LlamaModel> model_;

  LlamaModel& model() {
    SPECDEC_CHECK(model_ != nullptr, "E_DISPOSED", "model was disposed");
    return *model_;
  }

  static Napi::Value Load(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      LlamaConfig config = config_arg(info[0]);
      LlamaWeightSource source = source_arg(info[1]);
      LlamaLoadOptions options = options_arg(info[2]);
      auto result = std::make_shared<std::shared_ptr<LlamaModel>>();
      return run_async(
          info.Env(), [=] { *result = std::shared_ptr<LlamaModel>(LlamaModel::load(config, source, options)); },
          [=](Napi::Env env) -> Napi::Value {
            std::shared_ptr<LlamaModel> m = *result;
            return ctor->New({Napi::External<std::shared_ptr<LlamaModel>>::New(env, &m)});
          });
    });
  }

  // Whether work of `inputs` (times `steps` forwards) stays under the syncMaxMacs argument
  // (absent: always async).
  static bool run_here(LlamaModel& m, const std::vector<LlamaSeqInput>& inputs, const Napi::Value& limit,
                       double steps = 1) {
    if (limit.IsUndefined()) return false;
    const double max_macs = get_number(limit, "syncMaxMacs");
    return max_macs > 0 && m.estimate_macs(inputs) * steps <= max_macs;
  }

  // forward(inputs, hidden, syncMaxMacs?, stage?: { parents, seeds?, offsets? }, lastOnly?) ->
  // Promise<{ logits, hidden?, indptr, staged? }> (staged: the verification's inputs, sent with the
  // forward's upload; lastOnly: logits of each input's last row only)
  Napi::Value Forward(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      std::shared_ptr<LlamaModel> m = model_;
      SPECDEC_CHECK(m != nullptr, "E_DISPOSED", "model was disposed");
      auto inputs = std::make_shared<std::vector<LlamaSeqInput>>(inputs_arg(info[0], m->config().vocab_size));
      bool hidden = info.Length() > 1 && !info[1].IsUndefined() && get_bool(info[1], "hidden");
      const bool sync = run_here(*m, *inputs, info[2]);
      std::shared_ptr<VerifyStaging> stage;
      if (info.Length() > 3 && !info[3].IsUndefined()) {
        SPECDEC_CHECK(info[3].IsObject(), "E_ARG", "stage: expected an object");
        Napi::Object s = info[3].As<Napi::Object>();
        stage = std::make_shared<VerifyStaging>();
        stage->parents = get_i32_array(get_field(s, "parents"), "stage.parents");
        if (has_field(s, "seeds")) stage->seeds = get_u64_array(get_field(s, "seeds"), "stage.seeds");
        if (has_field(s, "offsets")) stage->offsets = get_u64_array(get_field(s, "offsets"), "stage.offsets");
        if (has_field(s, "parts")) stage->parts = get_i32_array(get_field(s, "parts"), "stage.parts");
      }
      const bool last_only = info.Length() > 4 && !info[4].IsUndefined() && get_bool(info[4], "lastOnly");
      std::vector<int> aux;
      if (info.Length() > 5 && !info[5].IsUndefined()) {
        const std::vector<int32_t> a = get_i32_array(info[5], "auxLayers");
        aux.assign(a.begin(), a.end());
      }
      auto result = std::make_shared<LlamaForwardResult>();
      auto seconds = std::make_shared<double>(0);
      return run_maybe_async(
          info.Env(), sync,
          [=] {
            const auto t0 = std::chrono::steady_clock::now();
            *result = m->forward(*inputs, hidden, stage.get(), last_only, aux);
            *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          },
          [=](Napi::Env env) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            o.Set("logits", wrap_tensor(env, result->logits));
            if (result->hidden.defined()) o.Set("hidden", wrap_tensor(env, result->hidden));
            if (result->aux.defined()) o.Set("aux", wrap_tensor(env, result->aux));
            if (result->staged) o.Set("staged", wrap_handle(env, result->staged));
            auto ip = Napi::Int32Array::New(env, result->indptr.size());
            std::memcpy(ip.Data(), result->indptr.data(), result->indptr.size() * 4);
            o.Set("indptr", ip);
            o.Set("seconds", *seconds);
            return o;
          },
          {Value()});
    });
  }

  // The model, inputs and steps of the chain drafting calls (info[0], info[1]), and whether to run
  // on the calling thread (syncMaxMacs at info[limit]). Bound on the work: the first forward (the fed
  // tokens) plus max_steps - 1 one-token forwards, each costed like the first (an over-estimate).
  struct ChainArgs {
    std::shared_ptr<LlamaModel> m;
    std::shared_ptr<std::vector<LlamaSeqInput>> inputs;
    std::shared_ptr<std::vector<int>> steps;
    bool sync;
  };
  ChainArgs chain_args(const Napi::CallbackInfo& info, size_t limit) {
    SPECDEC_CHECK(model_ != nullptr, "E_DISPOSED", "model was disposed");
    auto inputs = std::make_shared<std::vector<LlamaSeqInput>>(inputs_arg(info[0], model_->config().vocab_size));
    auto steps = std::make_shared<std::vector<int>>(steps_arg(info[1], inputs->size()));
    const int max_steps = steps->empty() ? 0 : *std::max_element(steps->begin(), steps->end());
    return {model_, inputs, steps, run_here(*model_, *inputs, info[limit], max_steps)};
  }

  // A chain's penalties (info[at]: undefined, or { repetition, presence, frequency, histIndptr,
  // histTokens, histCounts } with one history per input), or null.
  static std::shared_ptr<PenaltyArgs> chain_penalties(const Napi::CallbackInfo& info, size_t at) {
    if (info.Length() <= at || info[at].IsUndefined() || info[at].IsNull()) return nullptr;
    return std::make_shared<PenaltyArgs>(penalty_args(info[at], false));
  }

  // greedyChain(inputs, steps: Int32Array, syncMaxMacs?, penalties?, logprobs?: { k, want }) ->
  //   Promise<Int32Array[]> (LlamaModel::greedy_chain); with logprobs, Promise<{ picks, lp, topLp, topIds }>
  Napi::Value GreedyChain(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      const ChainArgs a = chain_args(info, 2);
      const std::shared_ptr<PenaltyArgs> pen = chain_penalties(info, 3);
      const std::shared_ptr<LlamaModel::ChainLogprobs> lp = chain_logprobs_arg(info, 4, a.inputs->size());
      auto result = std::make_shared<std::vector<std::vector<int32_t>>>();
      return run_maybe_async(
          info.Env(), a.sync, [=] { *result = a.m->greedy_chain(*a.inputs, *a.steps, pen.get(), lp.get()); },
          [=](Napi::Env env) -> Napi::Value {
            if (!lp) return int32_arrays(env, *result);
            Napi::Object o = Napi::Object::New(env);
            o.Set("picks", int32_arrays(env, *result));
            set_chain_logprobs(env, o, lp->lp, lp->top_lp, lp->top_ids);
            return o;
          },
          {Value()});
    });
  }

  // greedyChainOnDevice(inputs, steps: Int32Array, syncMaxMacs?, penalties?) -> Promise<Tensor> (i32
  // [sum steps], input by input, on the model's device; trusted ids: LlamaModel::greedy_chain_on_device)
  Napi::Value GreedyChainOnDevice(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      const ChainArgs a = chain_args(info, 2);
      const std::shared_ptr<PenaltyArgs> pen = chain_penalties(info, 3);
      auto result = std::make_shared<Tensor>();
      return run_maybe_async(
          info.Env(), a.sync, [=] { *result = a.m->greedy_chain_on_device(*a.inputs, *a.steps, pen.get()); },
          [=](Napi::Env env) -> Napi::Value { return wrap_ids_tensor(env, *result, a.m->config().vocab_size); },
          {Value()});
    });
  }

  // sampledChain(inputs, steps: Int32Array, sampling, seeds: BigUint64Array [B], offsets: BigUint64Array
  //   [sum steps, input by input], syncMaxMacs?, penalties?, logprobs?: { k, want }) -> Promise<{ picks:
  //   Int32Array[], q: Tensor }> (LlamaModel::sampled_chain), with logprobs also { lp, topLp, topIds }
  Napi::Value SampledChain(const Napi::CallbackInfo& info) { return sampled_chain(info, false); }

  // sampledChainOnDevice(the same arguments) -> Promise<{ ids: Tensor, q: Tensor }>: the picks stay on
  // the device (i32 [sum steps], input by input; library-made ids, kNoMass for a draw without mass)
  Napi::Value SampledChainOnDevice(const Napi::CallbackInfo& info) { return sampled_chain(info, true); }

  Napi::Value sampled_chain(const Napi::CallbackInfo& info, bool on_device) {
    return guard(info.Env(), [&]() -> Napi::Value {
      const ChainArgs a = chain_args(info, 5);
      const SamplingParams params = sampling_params_arg(info[2]);
      const std::vector<uint64_t> seeds = get_u64_array(info[3], "seeds"), flat = get_u64_array(info[4], "offsets");
      auto offsets = std::make_shared<std::vector<std::vector<uint64_t>>>();
      size_t at = 0;
      for (int n : *a.steps) {
        SPECDEC_CHECK(at + size_t(n) <= flat.size(), "E_ARG", "offsets: ", flat.size(), " counters, fewer than the steps' total");
        offsets->emplace_back(flat.begin() + long(at), flat.begin() + long(at + size_t(n)));
        at += size_t(n);
      }
      SPECDEC_CHECK(at == flat.size(), "E_ARG", "offsets: ", flat.size(), " counters for ", at, " steps in all");
      auto sd = std::make_shared<std::vector<uint64_t>>(seeds);
      const std::shared_ptr<PenaltyArgs> pen = chain_penalties(info, 6);
      const std::shared_ptr<LlamaModel::ChainLogprobs> lp = on_device ? nullptr : chain_logprobs_arg(info, 7, a.inputs->size());
      auto result = std::make_shared<LlamaModel::SampledChain>();
      return run_maybe_async(
          info.Env(), a.sync, [=] { *result = a.m->sampled_chain(*a.inputs, *a.steps, params, *sd, *offsets, on_device, pen.get(), lp.get()); },
          [=](Napi::Env env) -> Napi::Value {
            Napi::Object o = Napi::Object::New(env);
            if (on_device) o.Set("ids", wrap_ids_tensor(env, result->picks_on_device, a.m->config().vocab_size));
            else o.Set("picks", int32_arrays(env, result->picks));
            if (lp) set_chain_logprobs(env, o, lp->lp, lp->top_lp, lp->top_ids);
            o.Set("q", wrap_tensor(env, result->q));
            return o;
          },
          {Value()});
    });
  }

  // speculativeChain(draft: LlamaModel, seqs: { seq, draftSeq, draftFeed: Int32Array, k, budget, stop?,
  //   seed?: bigint, firstOffset?: bigint }[], maxSteps, maxSeconds, syncMaxMacs?, sampling?, penalties?,
  //   draftPenalties?: boolean, logprobs?: { k, want }) ->
  //   Promise<{ steps, drafted: Int32Array, accepted: Int32Array, emitted: Int32Array[], draftCached:
  //   Int32Array, draws: Int32Array, draftSeconds, targetSeconds, stepSeconds: Float64Array }>
  //   (speculative_chain: draft-model steps in one call, sampled with `sampling`; drafted / accepted
  //   step-major [steps * B]; with logprobs, also { lp, topLp, topIds } of the emitted tokens)
  Napi::Value SpeculativeChain(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      std::shared_ptr<LlamaModel> m = model_;
      SPECDEC_CHECK(m != nullptr, "E_DISPOSED", "model was disposed");
      SPECDEC_CHECK(info[0].IsObject() && info[0].As<Napi::Object>().InstanceOf(ctor->Value()), "E_ARG",
                    "draft: expected a Llama model handle");
      std::shared_ptr<LlamaModel> d = Unwrap(info[0].As<Napi::Object>())->model_;
      SPECDEC_CHECK(d != nullptr, "E_DISPOSED", "draft: model was disposed");
      SPECDEC_CHECK(d != m, "E_ARG", "draft: the target itself");
      SPECDEC_CHECK(info[1].IsArray(), "E_ARG", "seqs: expected an array");
      Napi::Array arr = info[1].As<Napi::Array>();
      auto args = std::make_shared<SpecChainArgs>();
      std::vector<LlamaSeqInput> est(arr.Length());
      for (uint32_t b = 0; b < arr.Length(); ++b) {
        Napi::Object o = get_object(arr.Get(b), "seqs[b]");
        SpecChainSeq s;
        s.target_seq = get_int32(get_field(o, "seq"), "seqs[b].seq");
        s.draft_seq = get_int32(get_field(o, "draftSeq"), "seqs[b].draftSeq");
        s.draft_feed = get_i32_array(get_field(o, "draftFeed"), "seqs[b].draftFeed");
        s.k = get_int32(get_field(o, "k"), "seqs[b].k");
        s.budget = get_int32(get_field(o, "budget"), "seqs[b].budget");
        if (has_field(o, "stop")) s.stop = get_i32_array(get_field(o, "stop"), "seqs[b].stop");
        if (has_field(o, "seed")) s.seed = get_u64(get_field(o, "seed"), "seqs[b].seed");
        if (has_field(o, "firstOffset")) s.first_offset = get_u64(get_field(o, "firstOffset"), "seqs[b].firstOffset");
        est[b].seq = s.target_seq;
        est[b].tokens.assign(static_cast<size_t>(std::max(0, std::min(s.k, 1 << 16))) + 1, 0);
        args->seqs.push_back(std::move(s));
      }
      args->max_steps = get_int32(info[2], "maxSteps");
      args->max_seconds = get_number(info[3], "maxSeconds");
      SPECDEC_CHECK(args->max_seconds >= 0, "E_ARG", "maxSeconds: expected a number >= 0, got ", args->max_seconds);
      if (info.Length() > 5 && !info[5].IsUndefined()) {
        args->sampled = true;
        args->params = sampling_params_arg(info[5]);
        for (size_t b = 0; b < args->seqs.size(); ++b)
          SPECDEC_CHECK(has_field(arr.Get(static_cast<uint32_t>(b)).As<Napi::Object>(), "seed") &&
                            has_field(arr.Get(static_cast<uint32_t>(b)).As<Napi::Object>(), "firstOffset"),
                        "E_ARG", "seqs[", b, "]: a sampled chain needs each sequence's seed and firstOffset");
      }
      args->penalties = chain_penalties(info, 6);
      if (const auto lp = chain_logprobs_arg(info, 8, args->seqs.size())) {
        args->logprobs_k = lp->k;
        args->logprobs_want = lp->want;
      }
      if (info.Length() > 7 && !info[7].IsUndefined()) {
        SPECDEC_CHECK(info[7].IsBoolean(), "E_ARG", "draftPenalties: expected a boolean");
        args->draft_penalties = info[7].As<Napi::Boolean>().Value();
      }
      // On the calling thread when one step's target forward is small enough (the chain's time is
      // bounded by maxSeconds).
      const bool sync = run_here(*m, est, info[4]);
      auto result = std::make_shared<SpecChainResult>();
      return run_maybe_async(
          info.Env(), sync, [=] { *result = speculative_chain(*m, *d, *args); },
          [=](Napi::Env env) -> Napi::Value {
            const SpecChainResult& r = *result;
            Napi::Object o = Napi::Object::New(env);
            o.Set("steps", r.steps);
            o.Set("drafted", int32_array(env, r.drafted));
            o.Set("accepted", int32_array(env, r.accepted));
            o.Set("emitted", int32_arrays(env, r.emitted));
            o.Set("draftCached", int32_array(env, r.draft_cached));
            o.Set("draws", int32_array(env, r.draws));
            o.Set("draftSeconds", float64_array(env, r.draft_seconds));
            o.Set("targetSeconds", float64_array(env, r.target_seconds));
            o.Set("stepSeconds", float64_array(env, r.step_seconds));
            if (args->logprobs_k >= 0) set_chain_logprobs(env, o, r.lp, r.top_lp, r.top_ids);
            return o;
          },
          {Value(), info[0]});
    });
  }

  // medusaChain(heads: a head set, seqs: { seq, root, cands: Int32Array, headsKnown, budget, stop?,
  //   seed?, firstOffset? }[], template: { parents, head, rank: Int32Array }, topK, maxSteps, maxSeconds,
  //   syncMaxMacs?, sampling?, penalties?, logprobs?: { k, want }) -> Promise<{ steps, depth, nodes,
  //   accepted, ranks, draws: Int32Array, emitted, cands: Int32Array[], targetSeconds, stepSeconds:
  //   Float64Array }> (medusa_chain: Medusa steps in one call, sampled with `sampling`; with logprobs,
  //   also { lp, topLp, topIds } of the emitted tokens)
  Napi::Value MedusaChain(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      std::shared_ptr<LlamaModel> m = model_;
      SPECDEC_CHECK(m != nullptr, "E_DISPOSED", "model was disposed");
      auto args = std::make_shared<MedusaChainArgs>();
      args->heads = medusa_heads_arg(info[0]);
      SPECDEC_CHECK(info[1].IsArray(), "E_ARG", "seqs: expected an array");
      Napi::Array arr = info[1].As<Napi::Array>();
      Napi::Object tpl = get_object(info[2], "template");
      args->parents = get_i32_array(get_field(tpl, "parents"), "template.parents");
      args->head = get_i32_array(get_field(tpl, "head"), "template.head");
      args->rank = get_i32_array(get_field(tpl, "rank"), "template.rank");
      args->top_k = get_int32(info[3], "topK");
      args->max_steps = get_int32(info[4], "maxSteps");
      args->max_seconds = get_number(info[5], "maxSeconds");
      SPECDEC_CHECK(args->max_seconds >= 0, "E_ARG", "maxSeconds: expected a number >= 0, got ", args->max_seconds);
      std::vector<LlamaSeqInput> est(arr.Length());
      for (uint32_t b = 0; b < arr.Length(); ++b) {
        Napi::Object o = get_object(arr.Get(b), "seqs[b]");
        MedusaChainSeq s;
        s.target_seq = get_int32(get_field(o, "seq"), "seqs[b].seq");
        s.root = get_int32(get_field(o, "root"), "seqs[b].root");
        s.cands = get_i32_array(get_field(o, "cands"), "seqs[b].cands");
        s.heads_known = get_int32(get_field(o, "headsKnown"), "seqs[b].headsKnown");
        s.budget = get_int32(get_field(o, "budget"), "seqs[b].budget");
        if (has_field(o, "stop")) s.stop = get_i32_array(get_field(o, "stop"), "seqs[b].stop");
        if (has_field(o, "seed")) s.seed = get_u64(get_field(o, "seed"), "seqs[b].seed");
        if (has_field(o, "firstOffset")) s.first_offset = get_u64(get_field(o, "firstOffset"), "seqs[b].firstOffset");
        est[b].seq = s.target_seq;
        est[b].tokens.assign(std::min<size_t>(args->parents.size(), 1 << 16), 0);
        args->seqs.push_back(std::move(s));
      }
      args->penalties = chain_penalties(info, 8);
      if (const auto lp = chain_logprobs_arg(info, 9, args->seqs.size())) {
        args->logprobs_k = lp->k;
        args->logprobs_want = lp->want;
      }
      if (info.Length() > 7 && !info[7].IsUndefined()) {
        args->sampled = true;
        args->params = sampling_params_arg(info[7]);
        for (uint32_t b = 0; b < arr.Length(); ++b)
          SPECDEC_CHECK(has_field(arr.Get(b).As<Napi::Object>(), "seed") && has_field(arr.Get(b).As<Napi::Object>(), "firstOffset"),
                        "E_ARG", "seqs[", b, "]: a sampled chain needs each sequence's seed and firstOffset");
      }
      const bool sync = run_here(*m, est, info[6]);
      auto result = std::make_shared<MedusaChainResult>();
      return run_maybe_async(
          info.Env(), sync, [=] { *result = medusa_chain(*m, *args); },
          [=](Napi::Env env) -> Napi::Value {
            const MedusaChainResult& r = *result;
            Napi::Object o = Napi::Object::New(env);
            o.Set("steps", r.steps);
            o.Set("depth", r.depth);
            o.Set("nodes", int32_array(env, r.nodes));
            o.Set("depths", int32_array(env, r.depths));
            o.Set("accepted", int32_array(env, r.accepted));
            o.Set("ranks", int32_array(env, r.ranks));
            o.Set("emitted", int32_arrays(env, r.emitted));
            o.Set("cands", int32_arrays(env, r.cands));
            o.Set("draws", int32_array(env, r.draws));
            o.Set("targetSeconds", float64_array(env, r.target_seconds));
            o.Set("stepSeconds", float64_array(env, r.step_seconds));
            if (args->logprobs_k >= 0) set_chain_logprobs(env, o, r.lp, r.top_lp, r.top_ids);
            return o;
          },
          {Value(), info[0]});
    });
  }

  // commit(seqs, accepted: Int32Array[], paths?) -- paths: a verification's handle (verifyTree), or an
  // array of them (parts verified separately)
  Napi::Value Commit(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      std::vector<int32_t> s = get_i32_array(info[0], "seqs");
      SPECDEC_CHECK(info[1].IsArray(), "E_ARG", "accepted: expected an array of Int32Array");
      Napi::Array a = info[1].As<Napi::Array>();
      std::vector<std::vector<int32_t>> acc(a.Length());
      for (uint32_t i = 0; i < a.Length(); ++i) acc[i] = get_i32_array(a.Get(i), "accepted[i]");
      std::vector<std::shared_ptr<VerifiedPaths>> held;
      if (info.Length() > 2 && info[2].IsArray()) {
        Napi::Array ps = info[2].As<Napi::Array>();
        for (uint32_t i = 0; i < ps.Length(); ++i) held.push_back(handle_arg<VerifiedPaths>(ps.Get(i), "paths[i]", "a verification's paths"));
      } else {
        held.push_back(handle_arg<VerifiedPaths>(info[2], "paths", "a verification's paths"));
      }
      std::vector<const VerifiedPaths*> paths;
      for (const auto& h : held)
        if (h) paths.push_back(h.get());
      model().commit(std::vector<int>(s.begin(), s.end()), acc, paths);
      return info.Env().Undefined();
    });
  }

  Napi::Value CreateSequence(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return Napi::Number::New(info.Env(), model().create_sequence()); });
  }
  Napi::Value ForkSequence(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return Napi::Number::New(info.Env(), model().fork_sequence(get_int32(info[0], "seq")));
    });
  }
  Napi::Value FreeSequence(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      model().free_sequence(get_int32(info[0], "seq"));
      return info.Env().Undefined();
    });
  }
  Napi::Value Truncate(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      model().truncate(get_int32(info[0], "seq"), get_int32(info[1], "length"));
      return info.Env().Undefined();
    });
  }
  Napi::Value SequenceLength(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      return Napi::Number::New(info.Env(), model().sequence_length(get_int32(info[0], "seq")));
    });
  }
  // kvInfo() -> { pageSize, totalPages, freePages, dtype, bytes }
  Napi::Value KvInfo(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      LlamaModel& m = model();
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("pageSize", m.kv().config().page_size);
      o.Set("totalPages", m.kv().total_pages());
      o.Set("freePages", m.free_pages());
      o.Set("dtype", dtype_name(m.kv().config().dtype));
      o.Set("bytes", static_cast<double>(m.kv().bytes()));
      return o;
    });
  }
  Napi::Value WeightDtype(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value { return Napi::String::New(info.Env(), dtype_name(model().weight_dtype())); });
  }
  // { embedTokens, lmHead }: tensors sharing the model's storage (EAGLE heads read them).
  Napi::Value SharedWeights(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      Napi::Object o = Napi::Object::New(info.Env());
      o.Set("embedTokens", wrap_tensor(info.Env(), model().embed_tokens()));
      o.Set("lmHead", wrap_tensor(info.Env(), model().lm_head()));
      return o;
    });
  }
  // llamaRopeInvFreq(config) -> Float32Array: the rotary inverse frequencies the runner uses for this
  // config (rope_theta and any rope_scaling), for layers built outside it (EAGLE heads).
  static Napi::Value RopeInvFreq(const Napi::CallbackInfo& info) {
    return guard(info.Env(), [&]() -> Napi::Value {
      const LlamaConfig c = config_arg(info[0]);
      SPECDEC_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0, "E_ARG", "llamaRopeInvFreq: head_dim ", c.head_dim, " must be even");
      const std::vector<float> inv = rope_inv_freq(c);
      Napi::Float32Array a = Napi::Float32Array::New(info.Env(), inv.size());
      std::copy(inv.begin(), inv.end(), a.Data());
      return a;
    });
  }
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    model_.reset();
    return info.Env().Undefined();
  }
};

Napi::FunctionReference* LlamaWrap::ctor = nullptr;

void Init(Napi::Env env, Napi::Object exports) { LlamaWrap::Init(env, exports); }
static Registrar reg(&Init);

}  // namespace
}  // namespace napi
}  // namespace specdec

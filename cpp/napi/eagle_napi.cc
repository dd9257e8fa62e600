// N-API glue for the EAGLE draft layers as one call (cpp/model/eagle.h): eagleWeights(spec) makes a
// handle of the head's tensors once; eagleForward(handle, ...) runs the layers over a planned batch;
// eagleCatchUp and eagleExpand(handle, ...) run a step's catch-up and its whole tree expansion.
#include <algorithm>
#include <cstring>
#include <optional>

#include "../core/host_pack.h"
#include "../core/kv_cache.h"
#include "../model/eagle.h"
#include "napi_util.h"

namespace specdec {
namespace napi {
namespace {

// The weights of a live head (E_ARG for anything else, E_DISPOSED once released).
std::shared_ptr<EagleWeights> weights_arg(const Napi::Value& v) {
  auto w = handle_arg<EagleWeights>(v, "weights", "EAGLE weights (eagleWeights)");
  SPECDEC_CHECK(w != nullptr, "E_ARG", "weights: expected EAGLE weights (eagleWeights)");
  SPECDEC_CHECK(w->inv_freq.defined(), "E_DISPOSED", "weights: the EAGLE head was disposed");
  return w;
}

Tensor opt(const Napi::Object& o, const char* key) {
  return has_field(o, key) ? optional_tensor_arg(get_field(o, key), key) : Tensor();
}

// eagleWeights({ version, heads, kvHeads, headDim, eps, embed?, fcEmbed?, fcFeature: Tensor[], fcBias?,
//   invFreq, layers: { inNorm?, hiddenNorm?, q, k, v, qH?, kH?, vH?, qb?, kb?, vb?, o, postNorm, gate, up, down }[],
//   norm?, lmHead?, draftToTarget?: Int32Array })
Napi::Value EagleWeightsCreate(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    SPECDEC_CHECK(info[0].IsObject(), "E_ARG", "spec: expected an object");
    Napi::Object o = info[0].As<Napi::Object>();
    auto w = std::make_shared<EagleWeights>();
    w->version = static_cast<int>(get_int(get_field(o, "version"), "version"));
    SPECDEC_CHECK(w->version == 1 || w->version == 3, "E_ARG", "version: expected 1 or 3, got ", w->version);
    w->heads = static_cast<int>(get_int(get_field(o, "heads"), "heads"));
    w->kv_heads = static_cast<int>(get_int(get_field(o, "kvHeads"), "kvHeads"));
    w->head_dim = static_cast<int>(get_int(get_field(o, "headDim"), "headDim"));
    SPECDEC_CHECK(w->heads > 0 && w->kv_heads > 0 && w->head_dim > 0, "E_ARG", "heads, kvHeads, headDim: expected positive integers");
    w->eps = static_cast<float>(get_number(get_field(o, "eps"), "eps"));
    w->embed = opt(o, "embed");
    w->fc_embed = opt(o, "fcEmbed");
    w->fc_feature = tensor_list_arg(get_field(o, "fcFeature"), "fcFeature");
    w->fc_bias = opt(o, "fcBias");
    w->inv_freq = tensor_arg(get_field(o, "invFreq"), "invFreq");
    SPECDEC_CHECK(w->version == 3 ? w->fc_feature.size() == 3 : w->fc_feature.size() == 1 && w->fc_embed.defined(), "E_ARG",
                  "fcFeature / fcEmbed: an EAGLE-1/2 head has fcEmbed and one feature block, an EAGLE-3 head three blocks");
    Napi::Value lv = get_field(o, "layers");
    SPECDEC_CHECK(lv.IsArray(), "E_ARG", "layers: expected an array");
    Napi::Array la = lv.As<Napi::Array>();
    for (uint32_t i = 0; i < la.Length(); ++i) {
      SPECDEC_CHECK(la.Get(i).IsObject(), "E_ARG", "layers[", i, "]: expected an object");
      Napi::Object L = la.Get(i).As<Napi::Object>();
      EagleLayer l;
      l.in_norm = opt(L, "inNorm");
      l.hidden_norm = opt(L, "hiddenNorm");
      l.q = tensor_arg(get_field(L, "q"), "q");
      l.k = tensor_arg(get_field(L, "k"), "k");
      l.v = tensor_arg(get_field(L, "v"), "v");
      l.q_h = opt(L, "qH");
      l.k_h = opt(L, "kH");
      l.v_h = opt(L, "vH");
      l.qb = opt(L, "qb");
      l.kb = opt(L, "kb");
      l.vb = opt(L, "vb");
      l.o = tensor_arg(get_field(L, "o"), "o");
      l.post_norm = tensor_arg(get_field(L, "postNorm"), "postNorm");
      l.gate = tensor_arg(get_field(L, "gate"), "gate");
      l.up = tensor_arg(get_field(L, "up"), "up");
      l.down = tensor_arg(get_field(L, "down"), "down");
      SPECDEC_CHECK(w->version != 3 || (l.in_norm.defined() && l.hidden_norm.defined() && l.q_h.defined() && l.k_h.defined() && l.v_h.defined()),
                    "E_ARG", "layers[", i, "]: an EAGLE-3 layer has inNorm, hiddenNorm and the hidden-state halves qH, kH, vH");
      w->layers.push_back(std::move(l));
    }
    // The head's logits for eagleExpand: EAGLE-3's norm, LM head and d2t (EAGLE-1/2: the target's head).
    w->norm = opt(o, "norm");
    w->lm_head = opt(o, "lmHead");
    if (has_field(o, "draftToTarget")) {
      w->draft_to_target = get_i32_array(get_field(o, "draftToTarget"), "draftToTarget");
      for (size_t i = 0; i < w->draft_to_target.size(); ++i) {
        SPECDEC_CHECK(w->draft_to_target[i] >= 0, "E_ARG", "draftToTarget[", i, "]: target id ", w->draft_to_target[i], " < 0");
        w->d2t_max = std::max(w->d2t_max, w->draft_to_target[i]);
      }
    }
    return wrap_handle(info.Env(), std::move(w));
  });
}

// eagleForward(weights, embed, kvLayers: Tensor[], batch, ids: Int32Array, positions: Int32Array,
//              features: Tensor[], fromTarget: boolean) -> h f32 [N, H]
Napi::Value EagleForward(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const auto w = weights_arg(info[0]);
    const Tensor embed = tensor_arg(info[1], "embed");
    const std::vector<Tensor> layers = tensor_list_arg(info[2], "kvLayers");
    const PagedBatch& batch = paged_batch_arg(info[3], "batch");
    const std::vector<int32_t> ids = get_i32_array(info[4], "ids");
    const std::vector<int32_t> pos = get_i32_array(info[5], "positions");
    SPECDEC_CHECK(ids.size() == pos.size(), "E_ARG", "ids and positions: ", ids.size(), " and ", pos.size(), " entries");
    const std::vector<Tensor> features = tensor_list_arg(info[6], "features");
    const bool from_target = get_bool(info[7], "fromTarget");
    const Device dev = w->inv_freq.device();
    const int64_t N = static_cast<int64_t>(ids.size());
    // Ids and positions travel as one upload (issue 11: one copy per array was two waits on CUDA).
    HostPack pack;
    const int seg_ids = pack.add(DType::i32, ids.data(), N), seg_pos = pack.add(DType::i32, pos.data(), N);
    pack.upload(dev);
    return wrap_tensor(info.Env(), eagle_forward(*w, embed, layers, batch, pack.view(seg_ids), ids.data(), pack.view(seg_pos), features, from_target));
  });
}

// eagleCatchUp(weights, embed, cache: KvCache (native), seqs: Int32Array, counts: Int32Array, tokens: Int32Array,
//              positions: Int32Array, features: Tensor[][] (per block, a tensor per row), rows: Int32Array,
//              width) -> hRoot f32 [B, H]
Napi::Value EagleCatchUp(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const auto w = weights_arg(info[0]);
    const Tensor embed = tensor_arg(info[1], "embed");
    KvCache& cache = kv_cache_arg(info[2], "cache");
    const std::vector<int32_t> seqs = get_i32_array(info[3], "seqs"), counts = get_i32_array(info[4], "counts"),
                               tokens = get_i32_array(info[5], "tokens"), pos = get_i32_array(info[6], "positions"),
                               rows = get_i32_array(info[8], "rows");
    SPECDEC_CHECK(info[7].IsArray(), "E_ARG", "features: expected an array of Tensor[] (one per feature block)");
    Napi::Array blocks = info[7].As<Napi::Array>();
    std::vector<std::vector<Tensor>> feats;
    for (uint32_t k = 0; k < blocks.Length(); ++k) feats.push_back(tensor_list_arg(blocks.Get(k), "features[k]"));
    const int64_t width = get_int(info[9], "width");
    return wrap_tensor(info.Env(), eagle_catch_up(*w, embed, cache, std::vector<int>(seqs.begin(), seqs.end()),
                                                  std::vector<int>(counts.begin(), counts.end()), tokens, pos, feats,
                                                  std::vector<int64_t>(rows.begin(), rows.end()), width));
  });
}

// eagleExpand(weights, embed, lmHead | null, cache: KvCache (native), hRoot, draftSeqs: Int32Array,
//             positions: Int32Array, maxLevels: Int32Array, levels, width, topK,
//             penalties?: NativeChainPenalties (one history per sequence, in the draft's vocabulary))
//   -> { firstSeconds, levelRows: Int32Array, levelSeconds: Float64Array,
//        pools: { tokens: Int32Array, parents: Int32Array, levels: Int32Array, logProbs: Float64Array }[] }
Napi::Value EagleExpand(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    const auto w = weights_arg(info[0]);
    const Tensor embed = tensor_arg(info[1], "embed");
    const Tensor lm_head = optional_tensor_arg(info[2], "lmHead");
    KvCache& cache = kv_cache_arg(info[3], "cache");
    const Tensor h_root = tensor_arg(info[4], "hRoot");
    const std::vector<int32_t> seq_ids = get_i32_array(info[5], "draftSeqs"), pos = get_i32_array(info[6], "positions"),
                               max_levels = get_i32_array(info[7], "maxLevels");
    SPECDEC_CHECK(pos.size() == seq_ids.size() && max_levels.size() == seq_ids.size(), "E_ARG",
                  "draftSeqs, positions, maxLevels: ", seq_ids.size(), ", ", pos.size(), " and ", max_levels.size(),
                  " entries (one per sequence)");
    std::vector<EagleExpandSeq> seqs(seq_ids.size());
    for (size_t b = 0; b < seqs.size(); ++b) seqs[b] = {seq_ids[b], pos[b], max_levels[b]};
    const int levels = static_cast<int>(get_int(info[8], "levels")), width = static_cast<int>(get_int(info[9], "width")),
              top_k = static_cast<int>(get_int(info[10], "topK"));
    std::optional<PenaltyArgs> pen;
    if (info.Length() > 11 && !info[11].IsUndefined() && !info[11].IsNull()) pen = penalty_args(info[11], false);
    // d2t and its inverse on the head's device, once, with the first expansion (its children are
    // mapped there; penalized rows map their paths back).
    if (!w->draft_to_target.empty() && !w->d2t.defined()) {
      std::vector<int32_t> t2d(static_cast<size_t>(w->d2t_max) + 1, -1);
      for (size_t d = w->draft_to_target.size(); d-- > 0;) t2d[static_cast<size_t>(w->draft_to_target[d])] = static_cast<int32_t>(d);
      w->t2d = Tensor::from_host(DType::i32, {static_cast<int64_t>(t2d.size())}, t2d.data(), w->inv_freq.device());
      w->d2t = Tensor::from_host(DType::i32, {static_cast<int64_t>(w->draft_to_target.size())}, w->draft_to_target.data(),
                                 w->inv_freq.device());
    }
    const EagleExpandResult r = eagle_expand(*w, embed, lm_head, cache, h_root, seqs, levels, width, top_k, pen ? &*pen : nullptr);
    Napi::Object o = Napi::Object::New(env);
    o.Set("firstSeconds", Napi::Number::New(env, r.first_seconds));
    auto rows = Napi::Int32Array::New(env, r.level_rows.size());
    auto secs = Napi::Float64Array::New(env, r.level_seconds.size());
    for (size_t i = 0; i < r.level_rows.size(); ++i) rows[i] = r.level_rows[i], secs[i] = r.level_seconds[i];
    o.Set("levelRows", rows);
    o.Set("levelSeconds", secs);
    Napi::Array pools = Napi::Array::New(env, r.pools.size());
    for (size_t b = 0; b < r.pools.size(); ++b) {
      const auto& pool = r.pools[b];
      auto tokens = Napi::Int32Array::New(env, pool.size()), parents = Napi::Int32Array::New(env, pool.size()),
           lv = Napi::Int32Array::New(env, pool.size());
      auto lp = Napi::Float64Array::New(env, pool.size());
      for (size_t i = 0; i < pool.size(); ++i) tokens[i] = pool[i].token, parents[i] = pool[i].parent, lv[i] = pool[i].level, lp[i] = pool[i].log_prob;
      Napi::Object p = Napi::Object::New(env);
      p.Set("tokens", tokens);
      p.Set("parents", parents);
      p.Set("levels", lv);
      p.Set("logProbs", lp);
      pools.Set(static_cast<uint32_t>(b), p);
    }
    o.Set("pools", pools);
    return o;
  });
}

// eagleWeightsRelease(weights): the tensors go now rather than when the handle is collected.
Napi::Value EagleWeightsRelease(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const auto w = handle_arg<EagleWeights>(info[0], "weights", "EAGLE weights (eagleWeights)");
    if (w) *w = EagleWeights();
    return info.Env().Undefined();
  });
}

void Init(Napi::Env env, Napi::Object exports) {
  exports.Set("eagleWeights", Napi::Function::New(env, EagleWeightsCreate, "eagleWeights"));
  exports.Set("eagleWeightsRelease", Napi::Function::New(env, EagleWeightsRelease, "eagleWeightsRelease"));
  exports.Set("eagleForward", Napi::Function::New(env, EagleForward, "eagleForward"));
  exports.Set("eagleExpand", Napi::Function::New(env, EagleExpand, "eagleExpand"));
  exports.Set("eagleCatchUp", Napi::Function::New(env, EagleCatchUp, "eagleCatchUp"));
}

static Registrar reg(&Init);

}  // namespace
}  // namespace napi
}  // namespace specdec

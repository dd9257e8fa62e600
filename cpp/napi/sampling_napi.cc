// N-API glue for sampling and verification: converts JS values, calls specdec::ops, converts back.
#include <algorithm>
#include <cstring>

#include "../core/host_pack.h"
#include "../core/ops_sampling.h"
#include "../core/spec_math.h"
#include "napi_util.h"

namespace specdec {
namespace napi {
namespace {

// A Uint32Array of n elements (any length: n = SIZE_MAX).
std::vector<uint32_t> get_u32_array(const Napi::Value& v, const char* name, size_t n) {
  SPECDEC_CHECK(v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_uint32_array, "E_ARG", name,
                ": expected a Uint32Array");
  auto a = v.As<Napi::Uint32Array>();
  if (n == SIZE_MAX) n = a.ElementLength();
  SPECDEC_CHECK(a.ElementLength() == n, "E_ARG", name, ": expected ", n, " elements, got ", a.ElementLength());
  return std::vector<uint32_t>(a.Data(), a.Data() + n);
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
    const SamplingParams p = sampling_params_arg(info.Length() > 1 ? info[1] : info.Env().Undefined());
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

// argmaxIds(logits) -> Int32Array: the same ids read back at once (one call where argmax, toInt32
// and dispose made three: greedy decoding's per-step path).
Napi::Value ArgmaxIds(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor logits = tensor_arg(info[0], "logits");
    SPECDEC_CHECK(logits.dim() == 2, "E_ARG", "logits: expected [N, V], got ", logits.describe());
    Tensor out = Tensor::empty(DType::i32, {logits.size(0)}, logits.device());
    ops::argmax(logits, out);
    return to_js(info.Env(), out);
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
    HostPack pk;  // seeds + offsets in one upload
    const int a = pk.add(DType::u64, seeds), b = pk.add(DType::u64, offsets);
    pk.upload(probs.device());
    ops::sample(probs, pk.view(a), pk.view(b), out);
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

// verify({ mode, nodeIndptr, parents, tokens, target, draft?, seeds?, offsets?, typicalThreshold?,
//          typicalAlpha?, maxDepth, argmaxOf?, tails?, medusa?, staged?, stagedPart? }) -> flat
//          { acceptedNodes, emitted, acceptCount, depthAccepts, argmax?, medusa?, paths }, or an array
//          of such inputs -> an array of results, read back together (one wait for several parts).
// argmaxOf (logits [R, V]): its row argmaxes come back in the same read (lookahead's window update
// needs them every step: one wait instead of two).
// Called once per decoding step, so the glue keeps allocations down: the index arrays go to the
// device as one tensor (seeds + offsets with them) unless the forward staged them, the outputs are
// views of one tensor and come back as Int32Arrays over one ArrayBuffer.
struct VerifyCall {
  VerifyArgs a;
  std::vector<int32_t> t0, t1, t2;  // only for number[] inputs
  I32Span indptr{nullptr, 0}, parents{nullptr, 0}, tokens{nullptr, 0};
  int64_t B = 0, N = 0, depth = 0, R = 0, M = 0, mk = 0, seq0 = 0;
  int64_t base = 0, total = 0;  // this call's outputs in the shared result tensor
  Tensor argmax_of, hidden;
  std::vector<MedusaHead> heads;
  std::shared_ptr<PenaltyArgs> head_penalties;  // medusa.penalties, or null
};

// Parses one input and sets up its device arrays (staged, or one upload of its own).
void parse_verify(const Napi::Object& o, VerifyCall& c) {
  VerifyArgs& a = c.a;
  const std::string mode = get_string(get_field(o, "mode"), "mode");
  if (mode == "greedy") a.mode = VerifyMode::greedy;
  else if (mode == "rejection") a.mode = VerifyMode::rejection;
  else if (mode == "typical") a.mode = VerifyMode::typical;
  else fail("E_ARG", "mode: expected 'greedy', 'rejection' or 'typical', got '", mode, "'");
  a.target = tensor_arg(get_field(o, "target"), "target");
  const Device dev = a.target.device();
  c.indptr = i32_span(get_field(o, "nodeIndptr"), "nodeIndptr", c.t0);
  c.parents = i32_span(get_field(o, "parents"), "parents", c.t1);
  c.tokens = i32_span(get_field(o, "tokens"), "tokens", c.t2);
  const I32Span& indptr = c.indptr;
  const I32Span& parents = c.parents;
  const I32Span& tokens = c.tokens;
  a.draft = optional_tensor_arg(get_field(o, "draft"), "draft");
  const bool has_seeds = has_field(o, "seeds"), has_offsets = has_field(o, "offsets");
  std::vector<uint64_t> seeds, offsets;
  if (has_seeds) seeds = get_u64_array(get_field(o, "seeds"), "seeds");
  if (has_offsets) offsets = get_u64_array(get_field(o, "offsets"), "offsets");
  a.typical_threshold = opt_float(o, "typicalThreshold", a.typical_threshold);
  a.typical_alpha = opt_float(o, "typicalAlpha", a.typical_alpha);
  c.depth = get_int(get_field(o, "maxDepth"), "maxDepth");
  SPECDEC_CHECK(c.depth >= 0 && c.depth <= (1 << 20), "E_ARG", "maxDepth: expected an integer in [0, 2^20], got ", c.depth);
  const int64_t B = c.B = indptr.n - 1, N = c.N = parents.n;
  SPECDEC_CHECK(B >= 0, "E_ARG", "nodeIndptr: expected B + 1 >= 1 entries");
  // staged: the same arrays already sent with the forward's upload (LlamaModel::forward's stage).
  // They must be what the caller describes; then nothing goes up again.
  const auto staged = handle_arg<StagedTree>(get_field(o, "staged"), "staged", "a forward's staged verification inputs");
  if (staged) {
    // stagedPart: one of the parts the forward staged separately (sequences s0 .. s1-1, nodes n0 .. n1-1).
    const int64_t part = has_field(o, "stagedPart") ? get_int(get_field(o, "stagedPart"), "stagedPart") : -1;
    SPECDEC_CHECK(part == -1 ? staged->parts.empty() : part >= 0 && part < static_cast<int64_t>(staged->parts.size()),
                  "E_ARG", "stagedPart: ", part, " for a forward that staged ", staged->parts.size(),
                  " parts (give one exactly when it staged parts)");
    const StagedTree::Part* pt = part >= 0 ? &staged->parts[static_cast<size_t>(part)] : nullptr;
    if (pt) c.seq0 = pt->s0;
    const int64_t s0 = pt ? pt->s0 : 0, s1 = pt ? pt->s1 : static_cast<int64_t>(staged->h_node_indptr.size()) - 1;
    const int64_t n0 = staged->h_node_indptr[s0], n1 = staged->h_node_indptr[s1];
    auto same = [](const auto* a, int64_t na, const auto* b, int64_t nb) { return na == nb && std::equal(a, a + na, b); };
    const std::vector<int32_t>& ip = pt ? pt->h_node_indptr : staged->h_node_indptr;
    SPECDEC_CHECK(same(ip.data(), static_cast<int64_t>(ip.size()), indptr.data, indptr.n) &&
                      same(staged->h_parents.data() + n0, n1 - n0, parents.data, N) &&
                      same(staged->h_tokens.data() + n0, n1 - n0, tokens.data, tokens.n),
                  "E_ARG", "staged: the forward staged other trees than nodeIndptr/parents/tokens describe");
    const bool st_rng = !staged->h_seeds.empty();
    SPECDEC_CHECK((!has_seeds || (st_rng && same(staged->h_seeds.data() + s0, s1 - s0, seeds.data(), static_cast<int64_t>(seeds.size())))) &&
                      (!has_offsets || (st_rng && same(staged->h_offsets.data() + s0, s1 - s0, offsets.data(), static_cast<int64_t>(offsets.size())))),
                  "E_ARG", "staged: the forward staged other seeds or offsets than given");
    SPECDEC_CHECK(!has_field(o, "tails"), "E_ARG",
                  "tails: not with staged (the forward that staged the trees applied its own tails)");
    SPECDEC_CHECK(staged->node_indptr.device() == dev, "E_ARG", "staged: the forward ran on ",
                  device_name(staged->node_indptr.device()), ", the target is on ", device_name(dev));
    a.node_indptr = pt ? pt->node_indptr : staged->node_indptr;
    a.parents = staged->parents.rows(n0, n1);
    a.tokens = staged->tokens.rows(n0, n1);
    if (st_rng) {
      a.seeds = staged->seeds.rows(s0, s1);
      a.offsets = staged->offsets.rows(s0, s1);
    }
  } else {
    // Index arrays, seeds and offsets travel to the target's device as one upload.
    HostPack pk;
    const int s_ip = pk.add(DType::i32, indptr.data, indptr.n), s_par = pk.add(DType::i32, parents.data, N);
    const int s_tok = pk.add(DType::i32, tokens.data, tokens.n);
    const int s_seed = has_seeds ? pk.add(DType::u64, seeds) : -1, s_off = has_offsets ? pk.add(DType::u64, offsets) : -1;
    pk.upload(dev);
    a.node_indptr = pk.view(s_ip);
    a.parents = pk.view(s_par);
    a.tokens = pk.view(s_tok);
    if (has_seeds) a.seeds = pk.view(s_seed);
    if (has_offsets) a.offsets = pk.view(s_off);
  }
  // tails[b] = { ids, offset }: nodes 1.. of sequence b take their tokens from a device chain's
  // picks (library-made ids, below the vocabulary); the JS tokens there are placeholders.
  if (!staged && has_field(o, "tails") && tokens.n == N && indptr.n == B + 1) {
    SPECDEC_CHECK(get_field(o, "tails").IsArray(), "E_ARG", "tails: expected an array (one entry per sequence)");
    Napi::Array tails = get_field(o, "tails").As<Napi::Array>();
    SPECDEC_CHECK(tails.Length() == static_cast<uint32_t>(B), "E_ARG", "tails: ", tails.Length(), " entries for ", B, " sequences");
    for (uint32_t b = 0; b < tails.Length(); ++b) {
      if (tails.Get(b).IsUndefined() || tails.Get(b).IsNull()) continue;
      Napi::Object t = tails.Get(b).As<Napi::Object>();
      const Tensor ids = trusted_ids_arg(get_field(t, "ids"), "tails[b].ids", a.target.size(1));
      const int64_t off = get_int(get_field(t, "offset"), "tails[b].offset");
      const int64_t s0 = indptr.data[b] + 1, s1 = indptr.data[b + 1];
      SPECDEC_CHECK(s0 <= s1 && s1 <= N && ids.device() == dev && off >= 0 && off + (s1 - s0) <= ids.numel(), "E_ARG",
                    "tails[", b, "]: ", s1 - s0, " ids from offset ", off, " do not fit ", ids.describe(), " (target on ",
                    device_name(dev), ")");
      if (s1 > s0) a.tokens.rows(s0, s1).copy_from(ids.rows(off, off + (s1 - s0)));
    }
  }
  // Validation reads the JS arrays themselves (the device copies are the same values, placeholders
  // aside, which stand for in-range ids): no wait.
  if (tokens.n == N) {
    a.h_node_indptr = indptr.data;
    a.h_parents = parents.data;
    a.h_tokens = tokens.data;
  }
  c.argmax_of = optional_tensor_arg(get_field(o, "argmaxOf"), "argmaxOf");
  c.R = c.argmax_of.defined() ? c.argmax_of.size(0) : 0;
  // medusa: { hidden [N, H], heads, k }: the heads' top-k at each sequence's last accepted node,
  // computed on the device from the verification's outputs and read with them (Medusa's next tree).
  if (has_field(o, "medusa")) {
    Napi::Object m = get_field(o, "medusa").As<Napi::Object>();
    c.hidden = tensor_arg(get_field(m, "hidden"), "medusa.hidden");
    c.heads = medusa_heads_arg(get_field(m, "heads"));
    c.mk = get_int(get_field(m, "k"), "medusa.k");
    SPECDEC_CHECK(c.mk >= 1 && c.mk <= INT32_MAX && !c.heads.empty(), "E_ARG", "medusa: expected k >= 1 and at least one head");
    // penalties: samplingPenalize's argument with one row per sequence, on every head's logits.
    if (has_field(m, "penalties")) {
      c.head_penalties = std::make_shared<PenaltyArgs>(penalty_args(get_field(m, "penalties"), true));
      SPECDEC_CHECK(static_cast<int64_t>(c.head_penalties->row_seq.size()) == B, "E_ARG", "medusa.penalties.rowSeq: ",
                    c.head_penalties->row_seq.size(), " entries for ", B, " sequences");
      ops::check_penalty_histories(*c.head_penalties, c.heads[0].lm_head.size(0));
    }
  }
  c.M = static_cast<int64_t>(c.heads.size()) * B * c.mk;
  // Outputs: acceptedNodes [N] | emitted [N] | acceptCount [B] | depthAccepts [depth] (zeroed) | argmax [R] | medusa [M].
  c.total = 2 * N + B + c.depth + c.R + c.M;
}

// Runs one call into its slice of the shared result tensor.
void run_verify(VerifyCall& c, const Tensor& res_all) {
  const int64_t N = c.N, B = c.B, total = c.total, R = c.R, M = c.M;
  Tensor res_t = res_all.rows(c.base, c.base + total);
  VerifyResult r;
  r.accepted_nodes = res_t.rows(0, N);
  r.emitted = res_t.rows(N, 2 * N);
  r.accept_count = res_t.rows(2 * N, 2 * N + B);
  r.depth_accepts = res_t.rows(2 * N + B, total - R - M);
  ops::verify(c.a, r);
  if (c.argmax_of.defined()) {
    Tensor am = res_t.rows(total - R - M, total - M);
    ops::argmax(c.argmax_of, am);
  }
  if (M > 0) {
    Tensor ids = res_t.rows(total - M, total).view({static_cast<int64_t>(c.heads.size()) * B, c.mk});
    medusa_top_k_after_verify(c.heads, c.hidden, c.a.node_indptr, r.accepted_nodes, r.accept_count, static_cast<int32_t>(c.mk), ids,
                              c.head_penalties.get());
  }
}

// The JS result of one call, over its slice of the read-back buffer.
Napi::Object verify_result(Napi::Env env, const VerifyCall& c, const Tensor& res_all, Napi::ArrayBuffer buf) {
  const int64_t N = c.N, B = c.B, total = c.total, R = c.R, M = c.M, depth = c.depth;
  const int32_t* host = static_cast<const int32_t*>(buf.Data()) + c.base;
  for (int64_t b = 0; b < B; ++b)
    for (int32_t k = 0; k < host[2 * N + b]; ++k) check_mass(host[N + c.indptr.data[b] + k], "verify: sequence ", b, ", emitted token ", k);
  auto view = [&](int64_t begin, int64_t n) {
    return Napi::Int32Array::New(env, static_cast<size_t>(n), buf, static_cast<size_t>(c.base + begin) * 4);
  };
  // The paths where they lie on the device, for the KV commit (LlamaModel::commit), with their
  // host copies: the values just read.
  auto paths = std::make_shared<VerifiedPaths>();
  const Tensor res_t = res_all.rows(c.base, c.base + total);
  paths->node_indptr = c.a.node_indptr;
  paths->accepted_nodes = res_t.rows(0, N);
  paths->accept_count = res_t.rows(2 * N, 2 * N + B);
  paths->h_node_indptr.assign(c.indptr.data, c.indptr.data + c.indptr.n);
  paths->h_accepted_nodes.assign(host, host + N);
  paths->h_accept_count.assign(host + 2 * N, host + 2 * N + B);
  paths->seq0 = static_cast<int32_t>(c.seq0);
  Napi::Object res = Napi::Object::New(env);
  res.Set("acceptedNodes", view(0, N));
  res.Set("emitted", view(N, N));
  res.Set("acceptCount", view(2 * N, B));
  res.Set("depthAccepts", view(2 * N + B, depth));
  if (c.argmax_of.defined()) res.Set("argmax", view(total - R - M, R));
  if (M > 0) res.Set("medusa", view(total - M, M));
  res.Set("paths", wrap_handle(env, std::move(paths)));
  return res;
}

Napi::Value Verify(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const bool many = info[0].IsArray();
    SPECDEC_CHECK(many || info[0].IsObject(), "E_ARG", "input: expected an object or an array of them");
    std::vector<Napi::Object> objs;
    if (many) {
      Napi::Array arr = info[0].As<Napi::Array>();
      SPECDEC_CHECK(arr.Length() >= 1, "E_ARG", "input: an empty array");
      for (uint32_t i = 0; i < arr.Length(); ++i) {
        SPECDEC_CHECK(arr.Get(i).IsObject(), "E_ARG", "input[", i, "]: expected an object");
        objs.push_back(arr.Get(i).As<Napi::Object>());
      }
    } else {
      objs.push_back(info[0].As<Napi::Object>());
    }
    // (Constructed in place: a call's spans may point into its own vectors.)
    std::vector<VerifyCall> calls(objs.size());
    int64_t total = 0;
    for (size_t i = 0; i < objs.size(); ++i) {
      parse_verify(objs[i], calls[i]);
      SPECDEC_CHECK(calls[i].a.target.device() == calls[0].a.target.device(), "E_ARG", "input[", i,
                    "].target: on another device than input[0].target");
      calls[i].base = total;
      total += calls[i].total;
    }
    Tensor res_all = Tensor::zeros(DType::i32, {std::max<int64_t>(total, 1)}, calls[0].a.target.device());
    for (VerifyCall& c : calls) run_verify(c, res_all);
    Napi::Env env = info.Env();
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, static_cast<size_t>(std::max<int64_t>(total, 1)) * 4);
    res_all.copy_to_host(buf.Data(), static_cast<size_t>(std::max<int64_t>(total, 1)) * 4);  // the one wait
    if (!many) return verify_result(env, calls[0], res_all, buf);
    Napi::Array out = Napi::Array::New(env, calls.size());
    for (size_t i = 0; i < calls.size(); ++i) out.Set(static_cast<uint32_t>(i), verify_result(env, calls[i], res_all, buf));
    return out;
  });
}

// penalize(logits f32 [N, V], { repetition, presence, frequency, rowSeq, histIndptr, histTokens,
// histCounts, pathIndptr, pathTokens, biasTokens?, biasValues?, banIndptr?, banTokens?, banBefore? }):
// the logit bias, penalties and stop bans in place (ops::penalize).
Napi::Value Penalize(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor logits = tensor_arg(info[0], "logits");
    SPECDEC_CHECK(logits.dim() == 2, "E_ARG", "logits: expected [N, V], got ", logits.describe());
    ops::penalize(logits, penalty_args(info.Length() > 1 ? info[1] : info.Env().Undefined(), true));
    return info.Env().Undefined();
  });
}

// maskTokens(logits f32 [N, V], rows: Int32Array(M), allowed: Uint32Array(M * ceil(V / 32))): a
// constraint's allowed tokens on those rows, -inf elsewhere, in place (ops::mask_tokens).
Napi::Value MaskTokens(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor logits = tensor_arg(info[0], "logits");
    SPECDEC_CHECK(logits.dim() == 2, "E_ARG", "logits: expected [N, V], got ", logits.describe());
    const std::vector<int32_t> rows = get_i32_array(info[1], "rows");
    const std::vector<uint32_t> allowed = get_u32_array(info[2], "allowed", SIZE_MAX);
    ops::mask_tokens(logits, rows, allowed);
    return info.Env().Undefined();
  });
}

// tokenLogprobs(logits f32 [N, V], rows, tokens, k) -> { token: Float32Array(M), topIds:
// Int32Array(M * k), topLogprobs: Float32Array(M * k) } (ops::token_logprobs), read back at once.
Napi::Value TokenLogprobs(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    Tensor logits = tensor_arg(info[0], "logits");
    const std::vector<int32_t> rows = get_i32_array(info[1], "rows"), tokens = get_i32_array(info[2], "tokens");
    const int64_t k = get_int(info[3], "k");
    SPECDEC_CHECK(k >= 0 && k <= 1024, "E_ARG", "k: expected 0 <= k <= 1024, got ", k);
    const int64_t M = static_cast<int64_t>(rows.size()), K = k;
    // One device buffer (4-byte words: [lp M | top logprobs M k | top ids M k]), one copy back.
    const int64_t words = M * (1 + 2 * K);
    Tensor all = Tensor::empty(DType::u32, {std::max<int64_t>(words, 1)}, logits.device());
    Tensor lp = all.reinterpret(0, DType::f32, {M}), top_lp = all.reinterpret(static_cast<size_t>(M) * 4, DType::f32, {M, K}),
           top_ids = all.reinterpret(static_cast<size_t>(M * (1 + K)) * 4, DType::i32, {M, K});
    ops::token_logprobs(logits, rows, tokens, static_cast<int32_t>(k), lp, top_lp, top_ids);
    Napi::Env env = info.Env();
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, static_cast<size_t>(std::max<int64_t>(words, 1)) * 4);
    if (words > 0) all.copy_to_host(buf.Data(), static_cast<size_t>(words) * 4);
    Napi::Object res = Napi::Object::New(env);
    res.Set("token", Napi::Float32Array::New(env, static_cast<size_t>(M), buf, 0));
    res.Set("topLogprobs", Napi::Float32Array::New(env, static_cast<size_t>(M * K), buf, static_cast<size_t>(M) * 4));
    res.Set("topIds", Napi::Int32Array::New(env, static_cast<size_t>(M * K), buf, static_cast<size_t>(M * (1 + K)) * 4));
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
  exports.Set("samplingArgmaxIds", Napi::Function::New(env, ArgmaxIds, "samplingArgmaxIds"));
  exports.Set("samplingSample", Napi::Function::New(env, Sample, "samplingSample"));
  exports.Set("samplingTopK", Napi::Function::New(env, TopK, "samplingTopK"));
  exports.Set("verifyTree", Napi::Function::New(env, Verify, "verifyTree"));
  exports.Set("samplingPhilox4x32", Napi::Function::New(env, Philox, "samplingPhilox4x32"));
  exports.Set("samplingPenalize", Napi::Function::New(env, Penalize, "samplingPenalize"));
  exports.Set("samplingMaskTokens", Napi::Function::New(env, MaskTokens, "samplingMaskTokens"));
  exports.Set("samplingTokenLogprobs", Napi::Function::New(env, TokenLogprobs, "samplingTokenLogprobs"));
}

static Registrar reg(&Init);

}  // namespace
}  // namespace napi
}  // namespace specdec

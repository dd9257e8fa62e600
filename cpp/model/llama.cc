// Llama-family forward on the op contracts. Reading order: rope_inv_freq, load (weights checked
// against the config), forward (input validation -> masks/positions -> the layer stack), commit.
#include "llama.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "../core/host_pack.h"
#include "../core/ops_attention.h"
#include "../core/ops_layers.h"
#include "../core/ops_sampling.h"
#include "safetensors.h"

#ifdef SPECDEC_WITH_CUDA
#include "../../cuda/cuda_backend.h"
#endif

namespace specdec {

namespace {

std::string shape_string(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// A host weight (f32, f16 or bf16) as an f32 tensor on `device`, plus `offset` (Gemma's 1 + w, added in f32).
Tensor f32_copy(const Tensor& host, Device device, float offset = 0.f) {
  std::vector<float> v(static_cast<size_t>(host.numel()));
  for (size_t i = 0; i < v.size(); ++i) {
    switch (host.dtype()) {
      case DType::f32: v[i] = host.ptr<float>()[i]; break;
      case DType::f16: v[i] = f16_to_f32(host.ptr<uint16_t>()[i]); break;
      default: v[i] = bf16_to_f32(host.ptr<uint16_t>()[i]); break;  // the loader admits f32, f16, bf16
    }
    if (offset != 0.f) v[i] += offset;
  }
  return Tensor::from_host(DType::f32, host.shape(), v.data(), device);
}

int popcount64(uint64_t x) {
  int n = 0;
  for (; x; x &= x - 1) ++n;
  return n;
}

}  // namespace

std::vector<float> rope_inv_freq(const LlamaConfig& c) {
  // A partial rotation's frequencies are spread over its own width (HF: dim = head_dim x factor).
  const int dim = c.rope_dim > 0 ? c.rope_dim : c.head_dim, half = dim / 2;
  std::vector<float> out(half);
  const double pi = 3.14159265358979323846;
  for (int i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(c.rope_theta, (2.0 * i) / dim);
    if (c.rope_type == "longrope") {
      f /= c.rope_ext_factors[static_cast<size_t>(i)];  // HF: 1 / (ext_factors * base^(2i/d))
    } else if (c.rope_type == "linear") {
      f /= c.rope_factor;
    } else if (c.rope_type == "yarn") {
      // HF _compute_yarn_parameters: the dimension that turns `rot` times over the original context.
      const auto corr = [&](double rot) { return dim * std::log(c.rope_original_max_positions / (rot * 2.0 * pi)) / (2.0 * std::log(c.rope_theta)); };
      double lo = corr(c.rope_beta_fast), hi = corr(c.rope_beta_slow);
      if (c.rope_yarn_truncate) {
        lo = std::floor(lo);
        hi = std::ceil(hi);
      }
      lo = std::max(lo, 0.0);
      hi = std::min(hi, dim - 1.0);
      if (lo == hi) hi += 0.001;
      const double ramp = std::min(1.0, std::max(0.0, (i - lo) / (hi - lo)));
      // ramp 0: the unscaled frequency (extrapolation), 1: divided by the factor (interpolation).
      f = (f / c.rope_factor) * ramp + f * (1.0 - ramp);
    } else if (c.rope_type == "llama3") {
      // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, the band between
      // them interpolated (HF _compute_llama3_parameters).
      const double low_wavelen = c.rope_original_max_positions / c.rope_low_freq_factor;
      const double high_wavelen = c.rope_original_max_positions / c.rope_high_freq_factor;
      const double wavelen = 2.0 * pi / f;
      if (wavelen > low_wavelen) {
        f /= c.rope_factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (c.rope_original_max_positions / wavelen - c.rope_low_freq_factor) /
                              (c.rope_high_freq_factor - c.rope_low_freq_factor);
        f = (1.0 - smooth) * f / c.rope_factor + smooth * f;
      }
    }
    out[i] = static_cast<float>(f);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Loading

std::unique_ptr<LlamaModel> LlamaModel::load(const LlamaConfig& config, const LlamaWeightSource& source,
                                             const LlamaLoadOptions& options) {
  const LlamaConfig& c = config;
  // The TS layer validates config.json; these checks keep the native entry point safe on its own.
  SPECDEC_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_layers > 0 &&
                    c.num_heads > 0 && c.num_kv_heads > 0 && c.head_dim > 0 && c.max_positions > 0,
                "E_FORMAT", "config: sizes must be positive");
  SPECDEC_CHECK(c.num_heads % c.num_kv_heads == 0, "E_FORMAT", "config: num_attention_heads (", c.num_heads,
                ") is not a multiple of num_key_value_heads (", c.num_kv_heads, ")");
  SPECDEC_CHECK(c.head_dim % 2 == 0, "E_FORMAT", "config: head_dim (", c.head_dim, ") must be even for RoPE");
  SPECDEC_CHECK(c.rope_type.empty() || c.rope_type == "linear" || c.rope_type == "llama3" || c.rope_type == "longrope" || c.rope_type == "yarn",
                "E_FORMAT", "config: unsupported rope_scaling type '", c.rope_type, "'");
  SPECDEC_CHECK(c.rope_layers.empty() || c.rope_layers.size() == static_cast<size_t>(c.num_layers), "E_FORMAT",
                "config: ", c.rope_layers.size(), " per-layer RoPE flags for ", c.num_layers, " layers");
  SPECDEC_CHECK(c.attention_windows.empty() || c.attention_windows.size() == static_cast<size_t>(c.num_layers), "E_FORMAT",
                "config: ", c.attention_windows.size(), " per-layer attention windows for ", c.num_layers, " layers");
  for (int32_t w : c.attention_windows)
    SPECDEC_CHECK(w >= 0, "E_FORMAT", "config: an attention window of ", w, " positions (0 = full attention, else >= 1)");
  SPECDEC_CHECK(c.rope_local_layers.empty() || c.rope_local_layers.size() == static_cast<size_t>(c.num_layers), "E_FORMAT",
                "config: ", c.rope_local_layers.size(), " per-layer local-RoPE flags for ", c.num_layers, " layers");
  SPECDEC_CHECK(c.rope_local_layers.empty() || (std::isfinite(c.rope_local_theta) && c.rope_local_theta > 0), "E_FORMAT",
                "config: rope_local_base_freq must be a positive number, got ", c.rope_local_theta);
  SPECDEC_CHECK(std::isfinite(c.attn_scale) && c.attn_scale >= 0, "E_FORMAT", "config: attention scale must be a finite number >= 0, got ",
                c.attn_scale);
  for (double v : {c.embedding_multiplier, c.residual_multiplier, c.logits_scaling})
    SPECDEC_CHECK(std::isfinite(v) && v > 0 && std::isfinite(1.0 / v), "E_FORMAT",
                  "config: embedding_multiplier, residual_multiplier and logits_scaling must be positive numbers, got ", v);
  SPECDEC_CHECK(!(c.scale_embeddings && c.embedding_multiplier != 1.0), "E_FORMAT",
                "config: scaled embeddings (Gemma) and an embedding_multiplier (Granite) exclude each other");
  SPECDEC_CHECK(!c.post_norms || !c.sandwich_norms, "E_FORMAT",
                "config: post-norms only (OLMo 2, EXAONE 4) and sandwich norms (Gemma) exclude each other");
  SPECDEC_CHECK(std::isfinite(c.attn_softcap) && c.attn_softcap >= 0 && std::isfinite(c.final_softcap) && c.final_softcap >= 0,
                "E_FORMAT", "config: soft-capping values must be finite numbers >= 0 (0 = none), got ", c.attn_softcap, " and ",
                c.final_softcap);
  const int rope_dim = c.rope_dim > 0 ? c.rope_dim : c.head_dim;
  SPECDEC_CHECK(rope_dim % 2 == 0 && rope_dim <= c.head_dim, "E_FORMAT", "config: rotary dims (", rope_dim,
                ") must be even and at most head_dim (", c.head_dim, ")");
  if (c.rope_type == "longrope") {
    SPECDEC_CHECK(c.rope_ext_factors.size() == static_cast<size_t>(rope_dim / 2), "E_FORMAT", "config: longrope needs ",
                  rope_dim / 2, " factors (rotary dims / 2), got ", c.rope_ext_factors.size());
    for (double f : c.rope_ext_factors)
      SPECDEC_CHECK(std::isfinite(f) && f > 0, "E_FORMAT", "config: longrope factors must be positive numbers, got ", f);
    SPECDEC_CHECK(std::isfinite(c.rope_attention_factor) && c.rope_attention_factor > 0, "E_FORMAT",
                  "config: longrope attention factor must be a positive number, got ", c.rope_attention_factor);
  }
  if (c.rope_type == "yarn")
    SPECDEC_CHECK(std::isfinite(c.rope_original_max_positions) && c.rope_original_max_positions > 0 &&
                      std::isfinite(c.rope_beta_fast) && c.rope_beta_fast > 0 && std::isfinite(c.rope_beta_slow) &&
                      c.rope_beta_slow > 0 && std::isfinite(c.rope_attention_factor) && c.rope_attention_factor > 0,
                  "E_FORMAT", "config: yarn rope_scaling needs original_max_position_embeddings, beta_fast, beta_slow and ",
                  "attention_factor > 0, got ", c.rope_original_max_positions, ", ", c.rope_beta_fast, ", ", c.rope_beta_slow,
                  ", ", c.rope_attention_factor);
  SPECDEC_CHECK(std::isfinite(c.rms_norm_eps) && c.rms_norm_eps >= 0, "E_FORMAT",
                "config: rms_norm_eps must be a finite number >= 0, got ", c.rms_norm_eps);
  SPECDEC_CHECK(std::isfinite(c.rope_theta) && c.rope_theta > 0, "E_FORMAT", "config: rope_theta must be a positive number, got ",
                c.rope_theta);
  SPECDEC_CHECK(c.rope_type.empty() || (std::isfinite(c.rope_factor) && c.rope_factor > 0), "E_FORMAT",
                "config: rope_scaling.factor must be a positive number, got ", c.rope_factor);
  if (c.rope_type == "llama3")
    SPECDEC_CHECK(std::isfinite(c.rope_original_max_positions) && c.rope_original_max_positions > 0 &&
                      c.rope_low_freq_factor > 0 && std::isfinite(c.rope_high_freq_factor) &&
                      c.rope_high_freq_factor > c.rope_low_freq_factor,
                  "E_FORMAT", "config: llama3 rope_scaling needs original_max_position_embeddings > 0 and ",
                  "0 < low_freq_factor < high_freq_factor, got ", c.rope_original_max_positions, ", ",
                  c.rope_low_freq_factor, ", ", c.rope_high_freq_factor);
  SPECDEC_CHECK(options.page_size > 0 && options.num_pages > 0, "E_ARG", "kv: pageSize (", options.page_size,
                ") and kvPages (", options.num_pages, ") must be positive");
  SPECDEC_CHECK(dtype_is_float(options.kv_dtype) && options.kv_dtype != DType::f64, "E_ARG",
                "kvDtype: expected f32, f16 or bf16, got ", dtype_name(options.kv_dtype));

  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->config_ = config;
  m->options_ = options;

  // Files are opened (memory-mapped) once each; on the CPU the weights are views of the mappings
  // (which they keep alive), on CUDA copies, and the mappings go when loading ends.
  std::map<std::string, std::shared_ptr<SafetensorsFile>> files;
  auto file_of = [&](const std::string& name) -> std::string {
    if (source.weight_map.empty()) return source.file;
    auto it = source.weight_map.find(name);
    return it == source.weight_map.end() ? std::string() : it->second;
  };
  // A weight of the expected shape, or an undefined tensor when optional and absent.
  // host: a view of the mapping on any device (for weights converted at load).
  auto weight = [&](const std::string& name, std::vector<int64_t> shape, const char* why, bool required = true,
                    bool host = false) {
    std::string fname = file_of(name);
    if (fname.empty()) {
      if (!required) return Tensor();
      fail("E_FORMAT", "model.safetensors.index.json: weight_map has no entry for tensor '", name, "'");
    }
    auto& f = files[fname];
    if (!f) f = SafetensorsFile::open(source.dir.empty() ? fname : source.dir + "/" + fname);
    if (!f->has(name)) {
      if (!required) return Tensor();
      fail("E_FORMAT", fname, ": missing tensor '", name, "'");
    }
    const SafetensorInfo& info = f->get(name);
    SPECDEC_CHECK(info.dtype == DType::f32 || info.dtype == DType::f16 || info.dtype == DType::bf16, "E_FORMAT",
                  fname, ": tensor '", name, "' has dtype ", dtype_name(info.dtype), ", expected F32, F16 or BF16");
    SPECDEC_CHECK(info.shape == shape, "E_FORMAT", fname, ": tensor '", name, "' has shape ", shape_string(info.shape),
                  ", expected ", shape_string(shape), " (", why, ")");
    // On the CPU the kernels read every float dtype as stored: the weights stay in the mapping.
    return options.device == Device::cpu || host ? f->view(name) : f->load(name, options.device);
  };

  // The layout: the first whose embedding is in the checkpoint (one error naming every one tried).
  std::string prefix = "model.", lm_head_name = "lm_head.weight";
  if (!source.layouts.empty()) {
    auto has_tensor = [&](const std::string& name) {
      const std::string fname = file_of(name);
      if (fname.empty()) return false;
      auto& f = files[fname];
      if (!f) f = SafetensorsFile::open(source.dir.empty() ? fname : source.dir + "/" + fname);
      return f->has(name);
    };
    std::string tried;
    bool found = false;
    for (const auto& [p, head] : source.layouts) {
      if (has_tensor(p + "embed_tokens.weight")) {
        prefix = p;
        lm_head_name = head;
        found = true;
        break;
      }
      tried += (tried.empty() ? "'" : ", '") + p + "embed_tokens.weight'";
    }
    SPECDEC_CHECK(found, "E_FORMAT", source.weight_map.empty() ? source.file : std::string("model.safetensors.index.json"),
                  ": the text model's embedding is not there (tried ", tried, ")");
  }
  const int64_t V = c.vocab_size, H = c.hidden_size, I = c.intermediate_size;
  const int64_t QD = int64_t(c.num_heads) * c.head_dim, KD = int64_t(c.num_kv_heads) * c.head_dim;
  m->embed_ = weight(prefix + "embed_tokens.weight", {V, H}, "vocab_size x hidden_size");
  if (c.scale_embeddings) {
    // transformers: hidden_states * torch.tensor(hidden_size ** 0.5, dtype=hidden_states.dtype).
    const float s = static_cast<float>(std::sqrt(static_cast<double>(H)));
    m->embed_scale_ = m->embed_.dtype() == DType::bf16 ? bf16_to_f32(f32_to_bf16(s))
                      : m->embed_.dtype() == DType::f16 ? f16_to_f32(f32_to_f16(s))
                                                        : s;
  }
  // Granite: the product in f32 (transformers rounds it to the weights' dtype).
  if (c.embedding_multiplier != 1.0) m->embed_scale_ = static_cast<float>(c.embedding_multiplier);
  // An RMSNorm weight: as stored, or (Gemma) an f32 copy of norm_offset + w.
  auto norm = [&](const std::string& name, int64_t n, const char* why) {
    if (c.norm_offset == 0.f) return weight(name, {n}, why);
    return f32_copy(weight(name, {n}, why, true, true), options.device, c.norm_offset);
  };
  // Layers grow as their weights are found: a config with absurd num_hidden_layers fails on the
  // first missing layer instead of allocating them all up front.
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = prefix + "layers." + std::to_string(l) + ".";
    Layer& L = m->layers_.emplace_back();
    if (!c.post_norms) L.attn_norm = norm(p + "input_layernorm.weight", H, "hidden_size");
    if (c.fused_projections) {
      // Row ranges of the fused weights (views: no copy, and the matmuls read them in place).
      const Tensor qkv = weight(p + "self_attn.qkv_proj.weight", {QD + 2 * KD, H},
                                "(num_attention_heads + 2*num_key_value_heads)*head_dim x hidden_size");
      L.q = qkv.rows(0, QD);
      L.k = qkv.rows(QD, QD + KD);
      L.v = qkv.rows(QD + KD, QD + 2 * KD);
    } else {
      L.q = weight(p + "self_attn.q_proj.weight", {QD, H}, "num_attention_heads*head_dim x hidden_size");
      L.k = weight(p + "self_attn.k_proj.weight", {KD, H}, "num_key_value_heads*head_dim x hidden_size");
      L.v = weight(p + "self_attn.v_proj.weight", {KD, H}, "num_key_value_heads*head_dim x hidden_size");
    }
    if (c.qkv_bias) {
      L.q_bias = weight(p + "self_attn.q_proj.bias", {QD}, "num_attention_heads*head_dim");
      L.k_bias = weight(p + "self_attn.k_proj.bias", {KD}, "num_key_value_heads*head_dim");
      L.v_bias = weight(p + "self_attn.v_proj.bias", {KD}, "num_key_value_heads*head_dim");
    }
    if (c.post_norms && !c.qk_norm) {
      // OLMo 2: one RMSNorm over each whole projection (all heads together), before RoPE.
      L.q_norm_full = norm(p + "self_attn.q_norm.weight", QD, "num_attention_heads*head_dim");
      L.k_norm_full = norm(p + "self_attn.k_norm.weight", KD, "num_key_value_heads*head_dim");
    } else if (c.qk_norm) {
      // f32 copies (2 x head_dim floats a layer), so the fused kernel reads one type.
      L.qk_norm.q_w = f32_copy(weight(p + "self_attn.q_norm.weight", {c.head_dim}, "head_dim", true, true), options.device, c.norm_offset);
      L.qk_norm.k_w = f32_copy(weight(p + "self_attn.k_norm.weight", {c.head_dim}, "head_dim", true, true), options.device, c.norm_offset);
      L.qk_norm.eps = c.rms_norm_eps;
    }
    L.o = weight(p + "self_attn.o_proj.weight", {H, QD}, "hidden_size x num_attention_heads*head_dim");
    if (c.o_bias) L.o_bias = weight(p + "self_attn.o_proj.bias", {H}, "hidden_size");
    if (c.sandwich_norms) {
      // Gemma: post_attention_layernorm normalizes the attention output; the MLP sits between
      // pre_feedforward_layernorm and post_feedforward_layernorm.
      L.post_attn_norm = norm(p + "post_attention_layernorm.weight", H, "hidden_size");
      L.mlp_norm = norm(p + "pre_feedforward_layernorm.weight", H, "hidden_size");
      L.post_mlp_norm = norm(p + "post_feedforward_layernorm.weight", H, "hidden_size");
    } else if (c.post_norms) {
      L.post_attn_norm = norm(p + "post_attention_layernorm.weight", H, "hidden_size");
      L.post_mlp_norm = norm(p + "post_feedforward_layernorm.weight", H, "hidden_size");
    } else {
      L.mlp_norm = norm(p + "post_attention_layernorm.weight", H, "hidden_size");
    }
    if (c.fused_projections) {
      const Tensor gate_up = weight(p + "mlp.gate_up_proj.weight", {2 * I, H}, "2*intermediate_size x hidden_size");
      L.gate = gate_up.rows(0, I);
      L.up = gate_up.rows(I, 2 * I);
    } else {
      L.gate = weight(p + "mlp.gate_proj.weight", {I, H}, "intermediate_size x hidden_size");
      L.up = weight(p + "mlp.up_proj.weight", {I, H}, "intermediate_size x hidden_size");
    }
    L.down = weight(p + "mlp.down_proj.weight", {H, I}, "hidden_size x intermediate_size");
  }
  m->final_norm_ = norm(prefix + "norm.weight", H, "hidden_size");
  // Tied embeddings: configured, or no lm_head in the checkpoint (HF ties when it is absent).
  if (!c.tie_word_embeddings) m->lm_head_ = weight(lm_head_name, {V, H}, "vocab_size x hidden_size", false);
  if (!m->lm_head_.defined()) m->lm_head_ = m->embed_;
  // A tiny model's projections in the k-serial kernel's panels (cpu/matmul_serial.h), used by every
  // forward: ~2x the lane kernel's rate at a few rows of K = 128. The packs are copies, so only a
  // model whose packable weights come to at most kMaxModelBytes packs them (bigger models keep
  // their weights in place: the resident set stays ~1x the checkpoint).
  if (options.device == Device::cpu && cpu::SerialWeight::enabled()) {
    std::vector<std::pair<const Tensor*, std::shared_ptr<const cpu::SerialWeight>*>> packs;
    for (Layer& L : m->layers_)
      for (auto [w, s] : {std::pair{&L.q, &L.q_s}, {&L.k, &L.k_s}, {&L.v, &L.v_s}, {&L.o, &L.o_s}, {&L.gate, &L.gate_s},
                          {&L.up, &L.up_s}, {&L.down, &L.down_s}})
        if (cpu::SerialWeight::eligible(*w)) packs.emplace_back(w, s);
    if (cpu::SerialWeight::eligible(m->lm_head_)) packs.emplace_back(&m->lm_head_, &m->lm_head_s_);
    size_t packable = 0;
    for (const auto& p : packs) packable += p.first->nbytes();
    if (packable <= cpu::SerialWeight::kMaxModelBytes)
      for (const auto& [w, s] : packs) *s = cpu::SerialWeight::pack(*w);
  }

  std::vector<float> inv = rope_inv_freq(c);
  for (float f : inv)  // e.g. a tiny rope_theta overflows f32
    SPECDEC_CHECK(std::isfinite(f) && f > 0, "E_FORMAT", "config: rope_theta ", c.rope_theta,
                  " and rope_scaling give a rotary frequency of ", f, " (not a finite positive number)");
  m->inv_freq_ = Tensor::from_host(DType::f32, {int64_t(inv.size())}, inv.data(), options.device);
  if (!c.rope_local_layers.empty()) {
    // Gemma 3's sliding layers: their own base, no scaling (transformers' local rotary embedding).
    LlamaConfig local = c;
    local.rope_theta = c.rope_local_theta;
    local.rope_type.clear();
    const std::vector<float> li = rope_inv_freq(local);
    m->inv_freq_local_ = Tensor::from_host(DType::f32, {int64_t(li.size())}, li.data(), options.device);
  }

  KvCacheConfig kc;
  kc.num_layers = c.num_layers;
  kc.num_kv_heads = c.num_kv_heads;
  kc.head_dim = c.head_dim;
  kc.page_size = options.page_size;
  kc.num_pages = options.num_pages;
  kc.dtype = options.kv_dtype;
  kc.device = options.device;
  m->kv_.reset(new KvCache(kc));
  m->macs_per_token_ = double(c.num_layers) * double(H) * double(2 * QD + 2 * KD + 3 * I) + double(V) * double(H);
  return m;
}

double LlamaModel::estimate_macs(const std::vector<LlamaSeqInput>& inputs) {
  const LlamaConfig& c = config_;
  // Attention: each new token attends to the prefix and the new tokens (QK^T and PV per head).
  const double attn_per_kv = 2.0 * c.num_layers * c.num_heads * c.head_dim;
  std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
  double macs = 0;
  for (const LlamaSeqInput& in : inputs) {
    const double n = static_cast<double>(in.tokens.size());
    double prefix = c.max_positions;
    if (lock.owns_lock() && in.seq >= 0 && kv_->alive(in.seq)) prefix = kv_->length(in.seq);
    macs += n * macs_per_token_ + n * (prefix + n) * attn_per_kv;
  }
  return macs;
}

// ---------------------------------------------------------------------------------------------
// Forward

LlamaForwardResult LlamaModel::forward(const std::vector<LlamaSeqInput>& inputs, bool want_hidden,
                                       const VerifyStaging* stage, bool last_only, const std::vector<int>& aux_layers) {
  for (size_t k = 0; k < aux_layers.size(); ++k)
    SPECDEC_CHECK(aux_layers[k] >= 0 && aux_layers[k] < config_.num_layers, "E_ARG", "auxLayers[", k, "] = ", aux_layers[k],
                  " is not a layer of this model (0 .. ", config_.num_layers - 1, ")");
  std::lock_guard<std::mutex> lock(mu_);
  return forward_locked(inputs, want_hidden, nullptr, stage, nullptr, last_only, aux_layers);
}

LlamaForwardResult LlamaModel::forward_locked(const std::vector<LlamaSeqInput>& inputs, bool want_hidden,
                                              const Tensor* dev_ids, const VerifyStaging* stage,
                                              const PlannedStep* planned, bool last_only, const std::vector<int>& aux_layers) {
  const LlamaConfig& c = config_;
  const Device dev = options_.device;
  pending_ = false;  // a new forward replaces whatever the last one left uncommitted
  SPECDEC_CHECK(!inputs.empty(), "E_ARG", "inputs: empty batch");
  const size_t B = inputs.size();

  // 1. Validate every input before touching the cache, and derive depths (for default positions)
  //    and whether a sequence needs an explicit mask (trees, given masks) or is a plain chain.
  std::vector<int> seqs(B), counts(B);
  std::vector<int32_t> indptr(B + 1, 0);
  std::vector<std::vector<int32_t>> parents(B);  // non-empty: a tree that is not a chain
  std::vector<bool> masked(B, false);
  std::set<int> seen;
  bool need_mask = false;
  int max_n = 0;
  for (size_t b = 0; b < B; ++b) {
    const LlamaSeqInput& in = inputs[b];
    SPECDEC_CHECK(in.seq >= 0 && kv_->alive(in.seq), "E_ARG", "inputs[", b, "].seq: sequence ", in.seq,
                  " does not exist (never created or freed)");
    SPECDEC_CHECK(seen.insert(in.seq).second, "E_ARG", "inputs[", b, "].seq: sequence ", in.seq,
                  " appears twice in one forward");
    const int n = static_cast<int>(in.tokens.size());
    SPECDEC_CHECK(n > 0, "E_ARG", "inputs[", b, "].tokens: empty");
    // Placeholders stand for the ids that come from a device tensor (dev_ids, or the input's tail).
    for (int i = 0; !dev_ids && i < (in.tail.defined() ? 1 : n); ++i)
      SPECDEC_CHECK(in.tokens[i] >= 0 && in.tokens[i] < c.vocab_size, "E_ARG", "inputs[", b, "].tokens[", i,
                    "]: token id ", in.tokens[i], " is outside the vocabulary [0, ", c.vocab_size, ")");
    if (in.tail.defined()) {
      SPECDEC_CHECK(!dev_ids && in.tail.dtype() == DType::i32 && in.tail.dim() == 1 && in.tail.device() == dev, "E_ARG",
                    "inputs[", b, "].tail: expected i32 ids on ", device_name(dev), ", got ", in.tail.describe());
      SPECDEC_CHECK(in.tail_offset >= 0 && in.tail_offset + n - 1 <= in.tail.size(0), "E_ARG", "inputs[", b,
                    "].tail: ", n - 1, " ids from offset ", in.tail_offset, " do not fit ", in.tail.describe());
    }
    seqs[b] = in.seq;
    counts[b] = n;
    indptr[b + 1] = indptr[b] + n;
    max_n = std::max(max_n, n);
    if (!in.mask.empty() || in.mask_words != 0) {
      SPECDEC_CHECK(in.mask_words > 0 && int64_t(in.mask_words) * 64 >= n, "E_ARG", "inputs[", b,
                    "].mask.words: ", in.mask_words, " words cannot hold ", n, " tokens");
      SPECDEC_CHECK(in.mask.size() == size_t(n) * in.mask_words, "E_ARG", "inputs[", b, "].mask.bits: ",
                    in.mask.size(), " words, expected ", n, " tokens x ", in.mask_words, " words");
      for (int i = 0; i < n; ++i) {
        const uint64_t* row = &in.mask[size_t(i) * in.mask_words];
        SPECDEC_CHECK((row[i / 64] >> (i % 64)) & 1u, "E_ARG", "inputs[", b, "].mask: row ", i,
                      " does not see token ", i, " itself");
        for (int w = 0; w < in.mask_words; ++w) {
          uint64_t beyond = 0;  // bits of tokens >= n
          if ((w + 1) * 64 > n) beyond = (w * 64 >= n) ? ~uint64_t(0) : (~uint64_t(0) << (n - w * 64));
          SPECDEC_CHECK((row[w] & beyond) == 0, "E_ARG", "inputs[", b, "].mask: row ", i,
                        " sees tokens past the last one (", n, ")");
        }
      }
      masked[b] = true;
      need_mask = true;
    } else if (!in.parents.empty()) {
      SPECDEC_CHECK(in.parents.size() == size_t(n), "E_ARG", "inputs[", b, "].parents: length ", in.parents.size(),
                    " != tokens length ", n);
      bool chain = true;
      for (int i = 0; i < n; ++i) {
        SPECDEC_CHECK(in.parents[i] >= -1 && in.parents[i] < i, "E_ARG", "inputs[", b, "].parents[", i, "] = ",
                      in.parents[i], ": must be -1 or an earlier token's index");
        chain = chain && in.parents[i] == i - 1;
      }
      if (!chain) {
        parents[b] = in.parents;
        need_mask = true;
      }
    }
    if (!in.positions.empty()) {
      SPECDEC_CHECK(in.positions.size() == size_t(n), "E_ARG", "inputs[", b, "].positions: length ",
                    in.positions.size(), " != tokens length ", n);
    }
  }
  SPECDEC_CHECK(!planned || !need_mask, "E_ARG", "inputs: a planned chain step takes plain chains");
  if (need_mask)
    SPECDEC_CHECK(max_n <= kMaxTreeTokens, "E_ARG", "inputs: a tree or masked input has at most ", kMaxTreeTokens,
                  " tokens per sequence, got ", max_n, " (send long chains without parents/mask, or split them)");

  // 2. Positions (default: committed length + depth) and the packed mask.
  const int64_t N = indptr[B];
  const int W = need_mask ? (max_n + 63) / 64 : 0;
  std::vector<int32_t> positions(N);
  std::vector<uint64_t> mask(size_t(N) * W, 0);
  for (size_t b = 0; !planned && b < B; ++b) {
    const LlamaSeqInput& in = inputs[b];
    const int n = counts[b];
    const int64_t len = kv_->length(in.seq);
    std::vector<int32_t> depth(n);
    for (int i = 0; i < n; ++i) {
      uint64_t* row = need_mask ? &mask[size_t(indptr[b] + i) * W] : nullptr;
      if (masked[b]) {
        // A given mask: depth = number of other new tokens the row sees (the depth, for a tree mask).
        const uint64_t* src = &in.mask[size_t(i) * in.mask_words];
        int seen_count = 0;
        for (int w = 0; w < in.mask_words; ++w) {
          seen_count += popcount64(src[w]);
          if (w < W) row[w] = src[w];
        }
        depth[i] = seen_count - 1;
      } else if (!parents[b].empty()) {
        // A tree: a node sees its ancestors and itself (ancestor closure, parents come first).
        const int p = parents[b][i];
        depth[i] = p < 0 ? 0 : depth[p] + 1;
        if (p >= 0)
          for (int w = 0; w < W; ++w) row[w] = mask[size_t(indptr[b] + p) * W + w];
        row[i / 64] |= uint64_t(1) << (i % 64);
      } else {
        // A chain: token i sees tokens 0..i.
        depth[i] = i;
        if (row)
          for (int j = 0; j <= i; ++j) row[j / 64] |= uint64_t(1) << (j % 64);
      }
      const int64_t pos = in.positions.empty() ? len + depth[i] : in.positions[i];
      SPECDEC_CHECK(pos >= 0 && pos < c.max_positions, "E_ARG", "inputs[", b, "]: position ", pos,
                    " of token ", i, " is outside the context of ", c.max_positions,
                    " positions (max_position_embeddings; sequence ", in.seq, " has ", len, " committed tokens)");
      positions[indptr[b] + i] = static_cast<int32_t>(pos);
    }
  }

  // 3. Room in the KV cache (E_KV_FULL changes nothing), then the layer stack. Token ids,
  //    positions, the mask and the batch's page tables go to the device as one upload.
  //    A planned chain step brings all of that, uploaded with its chain (draft_chain).
  std::vector<int32_t> tokens;
  HostPack pack;
  int seg_ids = -1;
  if (!dev_ids) {
    tokens.reserve(N);
    for (const auto& in : inputs) tokens.insert(tokens.end(), in.tokens.begin(), in.tokens.end());
    if (!planned) seg_ids = pack.add(DType::i32, tokens);
  }
  const int seg_pos = planned ? -1 : pack.add(DType::i32, positions);
  const int seg_mask = need_mask ? pack.add(DType::u64, mask) : -1;
  int seg_vpar = -1, seg_seed = -1, seg_off = -1;
  std::vector<StagedTree::Part> staged_parts;  // with their node offsets' segments
  std::vector<int> seg_part;
  if (stage) {
    SPECDEC_CHECK(!dev_ids && !planned, "E_ARG", "stage: a chain's forward stages nothing");
    SPECDEC_CHECK(static_cast<int64_t>(stage->parents.size()) == N, "E_ARG", "stage.parents: ", stage->parents.size(),
                  " entries for the forward's ", N, " tokens");
    SPECDEC_CHECK(stage->seeds.size() == stage->offsets.size() && (stage->seeds.empty() || stage->seeds.size() == B),
                  "E_ARG", "stage: expected seeds and offsets with one entry per sequence (", B, ") or neither, got ",
                  stage->seeds.size(), " and ", stage->offsets.size());
    seg_vpar = pack.add(DType::i32, stage->parents);
    if (!stage->seeds.empty()) {
      seg_seed = pack.add(DType::u64, stage->seeds);
      seg_off = pack.add(DType::u64, stage->offsets);
    }
    const std::vector<int32_t>& pp = stage->parts;
    if (!pp.empty()) {
      SPECDEC_CHECK(pp.size() >= 2 && pp.front() == 0 && pp.back() == static_cast<int32_t>(B), "E_ARG",
                    "stage.parts: expected sequence offsets from 0 to ", B, ", got ", pp.size(), " entries");
      for (size_t i = 0; i + 1 < pp.size(); ++i)
        SPECDEC_CHECK(pp[i] < pp[i + 1], "E_ARG", "stage.parts: part ", i, " is empty or the offsets decrease");
    }
    for (size_t i = 0; i + 1 < pp.size(); ++i) {
      StagedTree::Part part;
      part.s0 = pp[i];
      part.s1 = pp[i + 1];
      for (int32_t s = part.s0; s <= part.s1; ++s) part.h_node_indptr.push_back(indptr[s] - indptr[part.s0]);
      seg_part.push_back(pack.add(DType::i32, part.h_node_indptr));
      staged_parts.push_back(std::move(part));
    }
  }
  PagedBatch batch = planned ? planned->batch : kv_->plan(seqs, counts, &pack);
  Tensor ids = dev_ids ? *dev_ids : planned ? planned->ids : pack.view(seg_ids);
  for (size_t b = 0; b < B; ++b) {
    const LlamaSeqInput& in = inputs[b];
    if (in.tail.defined() && counts[b] > 1)
      ids.rows(indptr[b] + 1, indptr[b] + counts[b]).copy_from(in.tail.rows(in.tail_offset, in.tail_offset + counts[b] - 1));
  }
  Tensor pos = planned ? planned->positions : pack.view(seg_pos);
  Tensor mask_t = need_mask ? pack.view(seg_mask).view({N, W}) : Tensor();

  const int64_t H = c.hidden_size, I = c.intermediate_size, D = c.head_dim;
  const int64_t NH = c.num_heads, NKV = c.num_kv_heads;
  const float sm_scale = c.attn_scale > 0 ? static_cast<float>(c.attn_scale) : 1.0f / std::sqrt(static_cast<float>(D));
  // LongRoPE scales the rotated values of q and k (HF: cos and sin times the attention factor); with a
  // partial rotation the rest of the head is not scaled, so it cannot move to the scores' scale.
  const float rope_scale = static_cast<float>(c.rope_attention_factor);
  // Activation buffers: rows [0, N) of the reusable scratch when N fits it, else temporaries.
  // Every buffer is fully written before it is read, so stale scratch contents never leak in.
  Scratch tmp;
  Scratch* ws = &tmp;
  int64_t ws_rows = N;
  if (N <= kMaxScratchRows) {
    ws = &scratch_;
    ws_rows = scratch_.rows;
    if (ws_rows < N) ws_rows = std::min<int64_t>(kMaxScratchRows, std::max<int64_t>({N, 2 * scratch_.rows, 8}));
  }
  if (ws->rows < ws_rows) {
    ws->rows = 0;  // stays 0 if an allocation below throws
    ws->x = Tensor::empty(DType::f32, {ws_rows, H}, dev);     // residual stream
    ws->h = Tensor::empty(DType::f32, {ws_rows, H}, dev);     // normed input of a block
    ws->q = Tensor::empty(DType::f32, {ws_rows, NH, D}, dev);
    ws->k = Tensor::empty(DType::f32, {ws_rows, NKV, D}, dev);
    ws->v = Tensor::empty(DType::f32, {ws_rows, NKV, D}, dev);
    ws->att = Tensor::empty(DType::f32, {ws_rows, NH, D}, dev);
    ws->o = Tensor::empty(DType::f32, {ws_rows, H}, dev);     // a block's output before the residual add
    ws->gate = Tensor::empty(DType::f32, {ws_rows, I}, dev);
    ws->up = Tensor::empty(DType::f32, {ws_rows, I}, dev);
    ws->rows = ws_rows;
  }
  // The layer stack reads its inputs through these: on CUDA with graphs on (SPECDEC_CUDA_GRAPHS=1)
  // they are first copied, in one launch, to addresses that stay the same from step to step, and the
  // stack runs as a graph body (cuda/graphs.cu): steps of the same shape and attention plan replay
  // one captured graph instead of launching ~12 kernels per layer.
  Tensor g_ids = ids, g_pos = pos, g_mask = mask_t;
  const PagedBatch* g_batch = &batch;
  bool graphed = false;
#ifdef SPECDEC_WITH_CUDA
  PagedBatch stable_batch;
  if (dev == Device::cuda && cuda::graphs_enabled() && N <= kMaxScratchRows) {
    graphed = true;
    stable_batch = batch;
    // Fixed-size arrays first and the page list last, so every offset depends on N, B and the mask
    // width only.
    Tensor* in[] = {&g_ids, &g_pos, &g_mask, &stable_batch.qo_indptr, &stable_batch.page_indptr,
                    &stable_batch.prefix_len, &stable_batch.page_indices};
    std::vector<cuda::Segment> segs;
    size_t at = 0;
    for (Tensor* t : in) {
      if (!t->defined()) continue;
      segs.push_back({t->data(), at, t->nbytes()});
      at += (t->nbytes() + 15) / 16 * 16;
    }
    if (!graph_in_.defined() || graph_in_.nbytes() < at)
      graph_in_ = Tensor::empty(DType::u32, {static_cast<int64_t>(std::max<size_t>(2 * at, 4096) / 4)}, dev);
    cuda::copy_segments(graph_in_.data(), segs);
    size_t k = 0;
    for (Tensor* t : in)
      if (t->defined()) *t = graph_in_.reinterpret(segs[k++].dst_offset, t->dtype(), t->shape());
    g_batch = &stable_batch;
  }
#endif
  // The hidden states go back to the caller: then the residual stream gets its own buffer (a graph
  // body keeps the scratch one, copied out after).
  Tensor x = want_hidden && !graphed ? Tensor::empty(DType::f32, {N, H}, dev) : ws->x.rows(0, N);
  Tensor h = ws->h.rows(0, N), q = ws->q.rows(0, N), k = ws->k.rows(0, N), v = ws->v.rows(0, N);
  Tensor att = ws->att.rows(0, N), o = ws->o.rows(0, N), gate = ws->gate.rows(0, N), up = ws->up.rows(0, N);
  // 2-D views for the matmuls (same buffers).
  Tensor q2 = q.view({N, NH * D}), k2 = k.view({N, NKV * D}), v2 = v.view({N, NKV * D}), att2 = att.view({N, NH * D});

  const Tensor no_bias;
  const int64_t A = static_cast<int64_t>(aux_layers.size());
  // EAGLE-3's features. A graph body writes them where they were last time (graph_aux_, copied out
  // after the body, as the hidden states are): a fresh buffer would be a new address, so a new record
  // at every step and never a replay.
  Tensor aux;
  if (A > 0 && graphed) {
    // Sized for the largest graphed forward at once (a grown buffer is another address: new captures).
    if (!graph_aux_.defined() || graph_aux_.numel() < A * kMaxScratchRows * H)
      graph_aux_ = Tensor::empty(DType::f32, {A * kMaxScratchRows * H}, dev);
    aux = graph_aux_.reinterpret(0, DType::f32, {A * N, H});
  } else if (A > 0) {
    aux = Tensor::empty(DType::f32, {A * N, H}, dev);
  }
  // The residual stream entering layer l, into each aux block that asks for it.
  auto capture = [&](int l) {
    for (int64_t k = 0; k < A; ++k)
      if (aux_layers[static_cast<size_t>(k)] == l) aux.rows(k * N, (k + 1) * N).copy_from(x);
  };
  auto layer_stack = [&] {
    ops::embedding(embed_, g_ids, x, dev_ids ? nullptr : tokens.data(), dev_ids != nullptr, embed_scale_);
    // Each block's residual add runs with the next norm as one op (add_rmsnorm: the same bits).
    // OLMo 2 normalizes block outputs only: its blocks read the residual stream itself.
    const bool post = c.post_norms;
    Tensor& in = post ? x : h;
    if (!post) ops::rmsnorm(x, layers_[0].attn_norm, c.rms_norm_eps, h);
    for (int l = 0; l < c.num_layers; ++l) {
      const Layer& L = layers_[l];
      if (A > 0) capture(l);
      // Attention block (in: its normed input, or OLMo 2's residual stream).
      ops::matmul_group(in, {{&L.q, &L.q_bias, &q2, L.q_s.get()}, {&L.k, &L.k_bias, &k2, L.k_s.get()}, {&L.v, &L.v_bias, &v2, L.v_s.get()}});
      if (post && !c.qk_norm) {
        ops::rmsnorm(q2, L.q_norm_full, c.rms_norm_eps, q2);
        ops::rmsnorm(k2, L.k_norm_full, c.rms_norm_eps, k2);
      }
      // (Qwen3: each head's q and k RMS-normalized first, in the same op.) SmolLM3's NoPE layers
      // store K and V as they are.
      if (c.rope_layers.empty() || c.rope_layers[static_cast<size_t>(l)])
        ops::rope_qk_append(q, k, v, g_pos, c.rope_local_layers.empty() || !c.rope_local_layers[static_cast<size_t>(l)] ? inv_freq_ : inv_freq_local_,
                            kv_->layer(l), *g_batch, c.qk_norm ? &L.qk_norm : nullptr, rope_scale);
      else {
        // NoPE layers: SmolLM3's store K and V as they are; EXAONE 4's global layers normalize each
        // head of q and k first.
        if (c.qk_norm) {
          Tensor qh = q.view({N * NH, D}), kh = k.view({N * NKV, D});
          ops::rmsnorm(qh, L.qk_norm.q_w, L.qk_norm.eps, qh);
          ops::rmsnorm(kh, L.qk_norm.k_w, L.qk_norm.eps, kh);
        }
        ops::kv_append(kv_->layer(l), k, v, *g_batch);
      }
      ops::tree_attention(q, kv_->layer(l), *g_batch, g_mask, sm_scale, att,
                          c.attention_windows.empty() ? 0 : c.attention_windows[static_cast<size_t>(l)],
                          static_cast<float>(c.attn_softcap));
      ops::matmul(att2, L.o, L.o_bias, o, L.o_s.get());
      if (c.residual_multiplier != 1.0) ops::scale(o, static_cast<float>(c.residual_multiplier));
      // MLP block (SwiGLU; Gemma: GeGLU between its own norms).
      if (c.sandwich_norms || post) ops::rmsnorm(o, L.post_attn_norm, c.rms_norm_eps, o);
      if (post) ops::add_inplace(x, o);
      else ops::add_rmsnorm(x, o, L.mlp_norm, c.rms_norm_eps, h);
      ops::matmul_group(in, {{&L.gate, &no_bias, &gate, L.gate_s.get()}, {&L.up, &no_bias, &up, L.up_s.get()}});
      if (c.gelu_mlp) ops::gelu_tanh_mul(gate, up, gate);
      else ops::silu_mul(gate, up, gate);
      ops::matmul(gate, L.down, Tensor(), o, L.down_s.get());
      if (c.residual_multiplier != 1.0) ops::scale(o, static_cast<float>(c.residual_multiplier));
      if (c.sandwich_norms || post) ops::rmsnorm(o, L.post_mlp_norm, c.rms_norm_eps, o);
      // The next layer's normed input, or (after the last) the final norm in place.
      if (post && l + 1 < c.num_layers) ops::add_inplace(x, o);
      else if (l + 1 < c.num_layers) ops::add_rmsnorm(x, o, layers_[l + 1].attn_norm, c.rms_norm_eps, h);
      else ops::add_rmsnorm(x, o, final_norm_, c.rms_norm_eps, x);
    }
  };
#ifdef SPECDEC_WITH_CUDA
  if (graphed) cuda::run_graphed(layer_stack);
  else layer_stack();
#else
  layer_stack();
#endif

  LlamaForwardResult r;
  // The LM head over every row, or (last_only) over each sequence's last row: rows are independent
  // in the matmul, so a row's logits have the same bits either way.
  Tensor head_in = x;
  if (last_only && N > static_cast<int64_t>(B)) {
    std::vector<int64_t> last(B);
    for (size_t b = 0; b < B; ++b) last[b] = indptr[b + 1] - 1;
    head_in = gather_rows(std::vector<Tensor>(B, x), last);
  }
  r.logits = Tensor::empty(DType::f32, {head_in.size(0), int64_t(c.vocab_size)}, dev);
  ops::matmul(head_in, lm_head_, Tensor(), r.logits, lm_head_s_.get());
  if (c.final_softcap > 0) ops::softcap(r.logits, static_cast<float>(c.final_softcap));
  // Granite: logits / logits_scaling, as a product with the f32 reciprocal (at most an ulp apart).
  if (c.logits_scaling != 1.0) ops::scale(r.logits, static_cast<float>(1.0 / c.logits_scaling));
  if (want_hidden) {
    if (graphed) {
      r.hidden = Tensor::empty(DType::f32, {N, H}, dev);
      r.hidden.copy_from(x);
    } else {
      r.hidden = x;
    }
  }
  if (A > 0 && graphed) {
    r.aux = Tensor::empty(DType::f32, {A, N, H}, dev);
    r.aux.copy_from(aux.view({A, N, H}));
  } else if (A > 0) {
    r.aux = aux.view({A, N, H});
  }
  r.indptr = indptr;
  if (stage) {
    // The verification reads the ids as the layers did (device tails included).
    auto st = std::make_shared<StagedTree>();
    st->node_indptr = batch.qo_indptr;
    st->parents = pack.view(seg_vpar);
    st->tokens = ids;
    if (seg_seed >= 0) {
      st->seeds = pack.view(seg_seed);
      st->offsets = pack.view(seg_off);
      st->h_seeds = stage->seeds;
      st->h_offsets = stage->offsets;
    }
    st->h_node_indptr = indptr;
    st->h_parents = stage->parents;
    st->h_tokens = std::move(tokens);
    for (size_t i = 0; i < staged_parts.size(); ++i) staged_parts[i].node_indptr = pack.view(seg_part[i]);
    st->parts = std::move(staged_parts);
    r.staged = std::move(st);
  }

  pending_ = true;
  pending_batch_ = std::move(batch);
  pending_seqs_ = seqs;
  pending_parents_.assign(B, {});
  for (size_t b = 0; b < B; ++b)
    if (!masked[b]) {
      // Chains get their implicit parents so commit() can check a path for every input.
      if (!parents[b].empty()) {
        pending_parents_[b] = parents[b];
      } else {
        pending_parents_[b].resize(counts[b]);
        for (int i = 0; i < counts[b]; ++i) pending_parents_[b][i] = i - 1;
      }
    }
  pending_masked_ = masked;
  return r;
}

// ---------------------------------------------------------------------------------------------
// Commit and sequence management

void LlamaModel::commit(const std::vector<int>& seqs, const std::vector<std::vector<int32_t>>& accepted,
                        const std::vector<const VerifiedPaths*>& verified) {
  std::lock_guard<std::mutex> lock(mu_);
  commit_locked(seqs, accepted, verified);
}

void LlamaModel::commit_locked(const std::vector<int>& seqs, const std::vector<std::vector<int32_t>>& accepted,
                               const std::vector<const VerifiedPaths*>& verified) {
  SPECDEC_CHECK(pending_, "E_ARG", "commit: no uncommitted forward (commit once, after each forward)");
  SPECDEC_CHECK(seqs.size() == accepted.size(), "E_ARG", "commit: ", seqs.size(), " sequences but ",
                accepted.size(), " accepted lists");
  const size_t B = pending_seqs_.size();
  std::vector<const std::vector<int32_t>*> per_seq(B, nullptr);
  for (size_t i = 0; i < seqs.size(); ++i) {
    size_t b = 0;
    while (b < B && pending_seqs_[b] != seqs[i]) ++b;
    SPECDEC_CHECK(b < B, "E_ARG", "seqs[", i, "]: sequence ", seqs[i], " was not in the last forward");
    SPECDEC_CHECK(per_seq[b] == nullptr, "E_ARG", "seqs[", i, "]: sequence ", seqs[i], " listed twice");
    const std::vector<int32_t>& acc = accepted[i];
    const int n = pending_batch_.h_qo_indptr[b + 1] - pending_batch_.h_qo_indptr[b];
    for (size_t j = 0; j < acc.size(); ++j) {
      SPECDEC_CHECK(acc[j] >= 0 && acc[j] < n, "E_ARG", "accepted[", i, "][", j, "] = ", acc[j],
                    ": outside the ", n, " tokens of that forward");
      SPECDEC_CHECK(j == 0 || acc[j] > acc[j - 1], "E_ARG", "accepted[", i, "]: indices must be strictly increasing");
      if (!pending_masked_[b]) {
        // Committed K/V must form one root-to-node path: each node the parent of the next.
        const int32_t want = j == 0 ? -1 : acc[j - 1];
        SPECDEC_CHECK(pending_parents_[b][acc[j]] == want, "E_ARG", "accepted[", i, "][", j, "] = ", acc[j],
                      ": its parent is ", pending_parents_[b][acc[j]], ", not ", want, " (not a path from the root)");
      }
    }
    per_seq[b] = &acc;
  }
  std::vector<int32_t> acc_indptr(B + 1, 0), acc_nodes;
  for (size_t b = 0; b < B; ++b) {
    if (per_seq[b]) acc_nodes.insert(acc_nodes.end(), per_seq[b]->begin(), per_seq[b]->end());
    acc_indptr[b + 1] = static_cast<int32_t>(acc_nodes.size());
  }
  pending_ = false;
  kv_->commit(pending_batch_, pending_seqs_, acc_indptr, acc_nodes, verified);
}

std::vector<std::vector<int32_t>> LlamaModel::greedy_chain(const std::vector<LlamaSeqInput>& inputs,
                                                           const std::vector<int>& steps, const PenaltyArgs* penalties,
                                                           ChainLogprobs* logprobs) {
  std::lock_guard<std::mutex> lock(mu_);
  return draft_chain(inputs, steps, nullptr, nullptr, nullptr, false, penalties, logprobs).picks;
}

Tensor LlamaModel::greedy_chain_on_device(const std::vector<LlamaSeqInput>& inputs, const std::vector<int>& steps,
                                          const PenaltyArgs* penalties) {
  std::lock_guard<std::mutex> lock(mu_);
  return draft_chain(inputs, steps, nullptr, nullptr, nullptr, true, penalties).picks_on_device;
}

LlamaModel::SampledChain LlamaModel::sampled_chain(const std::vector<LlamaSeqInput>& inputs, const std::vector<int>& steps,
                                                   const SamplingParams& params, const std::vector<uint64_t>& seeds,
                                                   const std::vector<std::vector<uint64_t>>& offsets, bool keep_on_device,
                                                   const PenaltyArgs* penalties, ChainLogprobs* logprobs) {
  std::lock_guard<std::mutex> lock(mu_);
  return draft_chain(inputs, steps, &params, &seeds, &offsets, keep_on_device, penalties, logprobs);
}

LlamaModel::SampledChain LlamaModel::draft_chain(const std::vector<LlamaSeqInput>& inputs, const std::vector<int>& steps,
                                                 const SamplingParams* params, const std::vector<uint64_t>* seeds,
                                                 const std::vector<std::vector<uint64_t>>* offsets, bool keep_on_device,
                                                 const PenaltyArgs* penalties, ChainLogprobs* logprobs) {
  const size_t B = inputs.size();
  SPECDEC_CHECK(!logprobs || !keep_on_device, "E_ARG", "a chain's log-probabilities are read back with its picks (not with picks kept on the device)");
  SPECDEC_CHECK(!logprobs || logprobs->want.size() == B, "E_ARG", "logprobs: ", logprobs ? logprobs->want.size() : 0, " wants for ", B, " inputs");
  SPECDEC_CHECK(!logprobs || (logprobs->k >= 0 && logprobs->k <= 1024 && logprobs->k <= config_.vocab_size), "E_ARG", "logprobs: k = ",
                logprobs ? logprobs->k : 0, " outside [0, min(1024, vocabulary)]");
  SPECDEC_CHECK(!penalties || penalties->hist_indptr.size() == B + 1, "E_ARG", "penalties: histories for ",
                penalties ? penalties->hist_indptr.size() - 1 : 0, " inputs, expected ", B);
  if (penalties) ops::check_penalty_histories(*penalties, config_.vocab_size);
  SPECDEC_CHECK(B > 0, "E_ARG", "inputs: empty batch");
  SPECDEC_CHECK(steps.size() == B, "E_ARG", "steps: ", steps.size(), " entries for ", B, " inputs");
  std::vector<int32_t> start(B);
  int max_steps = 0;
  for (size_t b = 0; b < B; ++b) {
    const LlamaSeqInput& in = inputs[b];
    SPECDEC_CHECK(steps[b] >= 1, "E_ARG", "steps[", b, "]: expected an integer >= 1, got ", steps[b]);
    SPECDEC_CHECK(in.parents.empty() && in.positions.empty() && in.mask.empty() && in.mask_words == 0 && !in.tail.defined(),
                  "E_ARG", "inputs[", b, "]: chain drafting takes plain chains (no parents, positions, mask or tail)");
    SPECDEC_CHECK(in.seq >= 0 && kv_->alive(in.seq), "E_ARG", "inputs[", b, "].seq: sequence ", in.seq,
                  " does not exist (never created or freed)");
    start[b] = kv_->length(in.seq);
    // The chain's last pick feeds no forward, so the positions used are start + tokens + steps - 1.
    // Checked before anything is sized by `steps` (a huge count must be an error, not an allocation).
    const int64_t last = int64_t{start[b]} + static_cast<int64_t>(in.tokens.size()) + steps[b] - 2;
    SPECDEC_CHECK(last < config_.max_positions, "E_ARG", "steps[", b, "] = ", steps[b], ": the chain would reach position ",
                  last, ", outside the context of ", config_.max_positions, " positions (sequence at ", start[b], " + ",
                  in.tokens.size(), " tokens)");
    max_steps = std::max(max_steps, steps[b]);
  }
  const Device dev = options_.device;
  const int64_t V = config_.vocab_size;
  int64_t total = 0;
  for (int st : steps) total += st;
  // Everything the chain's steps read from the host goes to the device in ONE upload: every step's
  // batch, positions and first ids, and (sampling) the Philox keys and counters of every pick in
  // the loop's (step-major) pick order.
  HostPack pk;
  Tensor rng_seeds, rng_offsets, q;
  int seg_keys = -1, seg_ctrs = -1;
  if (params) {
    SPECDEC_CHECK(seeds->size() == B && offsets->size() == B, "E_ARG", "seeds/offsets: expected one entry per input (", B,
                  "), got ", seeds->size(), " and ", offsets->size());
    std::vector<uint64_t> sk, so;
    for (int s = 0; s < max_steps; ++s)
      for (size_t b = 0; b < B; ++b)
        if (s < steps[b]) {
          SPECDEC_CHECK((*offsets)[b].size() == static_cast<size_t>(steps[b]), "E_ARG", "offsets[", b, "]: expected ",
                        steps[b], " counters (one per step), got ", (*offsets)[b].size());
          sk.push_back((*seeds)[b]);
          so.push_back((*offsets)[b][static_cast<size_t>(s)]);
        }
    seg_keys = pk.add(DType::u64, sk);
    seg_ctrs = pk.add(DType::u64, so);
    q = Tensor::empty(DType::f32, {total, V}, dev);
  }
  SampledChain result;
  result.picks.resize(B);
  std::vector<int> chain_seqs(B), fed(B);
  for (size_t b = 0; b < B; ++b) {
    chain_seqs[b] = inputs[b].seq;
    fed[b] = static_cast<int>(inputs[b].tokens.size()) + steps[b] - 1;
  }
  try {
    // Pages for every token the chain feeds, reserved at once (E_KV_FULL here changes nothing). The
    // steps commit nothing as they go: step s sees the tokens of steps < s as its prefix, on the
    // first pages of the reservation; the chain commits them all at the end.
    const KvCache::HostBatch whole = kv_->plan_host(chain_seqs, fed);
    const int S = kv_->config().page_size, P = kv_->config().num_pages;
    std::vector<PlannedStep> plan(static_cast<size_t>(max_steps));
    int seg_first_ids = -1;
    std::vector<int> seg_pos(static_cast<size_t>(max_steps));
    for (int s = 0; s < max_steps; ++s) {
      std::vector<int32_t> qo{0}, pind{0}, pidx, prefix, pos;
      for (size_t b = 0; b < B; ++b) {
        if (s >= steps[b]) continue;
        const int n = s == 0 ? static_cast<int>(inputs[b].tokens.size()) : 1;
        const int32_t at = s == 0 ? whole.prefix_len[b] : whole.prefix_len[b] + static_cast<int32_t>(inputs[b].tokens.size()) + s - 1;
        const int32_t p0 = whole.page_indptr[b];
        pidx.insert(pidx.end(), whole.page_indices.begin() + p0, whole.page_indices.begin() + p0 + (at + n + S - 1) / S);
        pind.push_back(static_cast<int32_t>(pidx.size()));
        qo.push_back(qo.back() + n);
        prefix.push_back(at);
        for (int i = 0; i < n; ++i) pos.push_back(at + i);
      }
      plan[s].batch = PagedBatch::stage(qo, pind, pidx, prefix, S, P, pk);
      seg_pos[s] = pk.add(DType::i32, pos);
    }
    {
      std::vector<int32_t> first;
      for (const auto& in : inputs) first.insert(first.end(), in.tokens.begin(), in.tokens.end());
      seg_first_ids = pk.add(DType::i32, first);
    }
    // The batch that commits the whole chain: its host arrays only (nothing moves, so its commit
    // reads no device array), staged into a pack that is never uploaded.
    HostPack host_only;
    const PagedBatch all = PagedBatch::stage(whole.qo_indptr, whole.page_indptr, whole.page_indices, whole.prefix_len, S, P, host_only);
    pk.upload(dev);
    for (int s = 0; s < max_steps; ++s) {
      plan[s].batch.bind(pk);
      plan[s].positions = pk.view(seg_pos[s]);
    }
    plan[0].ids = pk.view(seg_first_ids);
    if (params) {
      rng_seeds = pk.view(seg_keys);
      rng_offsets = pk.view(seg_ctrs);
    }
    // The picks stay on the device: step s's picks feed step s+1's embedding, and all picks are
    // read back once at the end (on CUDA: no wait per drafted token). picks (and q's rows) hold them
    // in step order; owner[k] is the input whose pick sits at row k.
    Tensor picks = Tensor::empty(DType::i32, {total}, dev);
    // With logprobs: each pick's entry at its row of `picks` (written for the inputs that want them).
    const int64_t LK = logprobs ? logprobs->k : 0;
    Tensor lp_all = logprobs ? Tensor::empty(DType::u32, {total * (1 + 2 * LK)}, dev) : Tensor();
    Tensor lp = logprobs ? lp_all.reinterpret(0, DType::f32, {total}) : Tensor();
    Tensor top_lp = logprobs ? lp_all.reinterpret(static_cast<size_t>(total) * 4, DType::f32, {total, LK}) : Tensor();
    Tensor top_ids = logprobs ? lp_all.reinterpret(static_cast<size_t>(total * (1 + LK)) * 4, DType::i32, {total, LK}) : Tensor();
    std::vector<size_t> owner;
    owner.reserve(static_cast<size_t>(total));
    std::vector<int> made(B, 0);
    // With penalties: where each input's picks so far sit in `picks` (its rows' paths).
    std::vector<std::vector<int32_t>> pick_pos(penalties ? B : 0);
    PenaltyArgs pa;
    std::vector<size_t> active(B);
    for (size_t b = 0; b < B; ++b) active[b] = b;
    Tensor next_ids;  // one id per active input, on the device; undefined before the first step
    for (int step = 0; !active.empty(); ++step) {
      std::vector<LlamaSeqInput> batch;
      batch.reserve(active.size());
      for (size_t b : active) {
        if (!next_ids.defined()) {
          batch.push_back(inputs[b]);
        } else {
          LlamaSeqInput one;
          one.seq = inputs[b].seq;
          one.tokens.assign(1, 0);  // a count only: the id comes from next_ids
          batch.push_back(std::move(one));
        }
      }
      // Only each input's last row is used: the first step's prompts skip the LM head elsewhere.
      LlamaForwardResult r = forward_locked(batch, false, next_ids.defined() ? &next_ids : nullptr, nullptr, &plan[step], true);
      // Each input's pick comes from its last logits row, the only one computed (last_only).
      const int64_t A = static_cast<int64_t>(active.size());
      const int64_t at = static_cast<int64_t>(owner.size());
      SPECDEC_CHECK(r.logits.size(0) == A, "E_INTERNAL", "chain step: ", r.logits.size(0), " logits rows for ", A, " inputs");
      Tensor out_picks = picks.rows(at, at + A);
      if (penalties) {
        // (The histories stay; each step's rows and paths are its own.)
        if (pa.hist_indptr.empty()) pa = *penalties;
        pa.row_seq.clear();
        pa.path_indptr.assign(1, 0);
        pa.path_tokens.clear();
        for (size_t b : active) {
          pa.row_seq.push_back(static_cast<int32_t>(b));
          pa.path_tokens.insert(pa.path_tokens.end(), pick_pos[b].begin(), pick_pos[b].end());
          pa.path_indptr.push_back(static_cast<int32_t>(pa.path_tokens.size()));
        }
        pa.path_source = &picks;
        ops::penalize(r.logits, pa);
        for (int64_t i = 0; i < A; ++i) pick_pos[active[static_cast<size_t>(i)]].push_back(static_cast<int32_t>(at + i));
      }
      if (params) {
        Tensor probs = q.rows(at, at + A);
        ops::process_logits(r.logits, *params, probs);
        ops::sample(probs, rng_seeds.rows(at, at + A), rng_offsets.rows(at, at + A), out_picks);
      } else {
        ops::argmax(r.logits, out_picks);
      }
      if (logprobs) {
        std::vector<int32_t> rows;
        for (int64_t i = 0; i < A; ++i)
          if (logprobs->want[active[static_cast<size_t>(i)]]) rows.push_back(static_cast<int32_t>(i));
        Tensor l = lp.rows(at, at + A), tl = top_lp.rows(at, at + A), ti = top_ids.rows(at, at + A);
        ops::pick_logprobs(r.logits, out_picks, rows, static_cast<int32_t>(LK), l, tl, ti);
      }
      std::vector<size_t> next;
      for (size_t b : active) {
        owner.push_back(b);
        if (++made[b] < steps[b]) next.push_back(b);
      }
      if (next.size() == active.size()) {
        next_ids = out_picks;  // every input goes on: its pick is its next id
      } else if (!next.empty()) {
        next_ids = Tensor::empty(DType::i32, {static_cast<int64_t>(next.size())}, dev);
        for (size_t k = 0, i = 0; i < active.size(); ++i)
          if (made[active[i]] < steps[active[i]]) {
            const int64_t src = static_cast<int64_t>(i), dst = static_cast<int64_t>(k++);
            next_ids.rows(dst, dst + 1).copy_from(out_picks.rows(src, src + 1));
          }
      }
      active.swap(next);
    }
    // Every fed token already sits at its slot: committing them only moves the committed lengths.
    pending_ = false;
    std::vector<int32_t> acc_ip(B + 1, 0), acc_nodes;
    for (size_t b = 0; b < B; ++b) {
      for (int j = 0; j < fed[b]; ++j) acc_nodes.push_back(j);
      acc_ip[b + 1] = static_cast<int32_t>(acc_nodes.size());
    }
    kv_->commit(all, chain_seqs, acc_ip, acc_nodes);
    // Picks and q rows from step order to input order.
    std::vector<int64_t> order;
    {
      std::vector<std::vector<int64_t>> by_input(B);
      for (size_t k = 0; k < owner.size(); ++k) by_input[owner[k]].push_back(static_cast<int64_t>(k));
      for (const auto& v : by_input) order.insert(order.end(), v.begin(), v.end());
    }
    if (keep_on_device) {
      result.picks_on_device = gather_rows(std::vector<Tensor>(order.size(), picks.view({total, 1})), order).view({total});
      if (params) result.q = gather_rows(std::vector<Tensor>(order.size(), q), order);
      return result;
    }
    std::vector<int32_t> host(static_cast<size_t>(total));
    picks.copy_to_host(host.data(), host.size() * sizeof(int32_t));
    // A sampled pick of -1 means its row had no probability mass left (e.g. NaN logits).
    for (size_t k = 0; k < owner.size(); ++k) {
      SPECDEC_CHECK(host[k] >= 0 && host[k] < V, "E_NUMERIC", "chain drafting: step ", result.picks[owner[k]].size(),
                    " of input ", owner[k], " drew no token (its distribution has no mass: NaN or -inf logits?)");
      result.picks[owner[k]].push_back(host[k]);
    }
    if (logprobs) {
      // One read of every entry (step order), then input by input for those that want them.
      std::vector<uint32_t> words(static_cast<size_t>(total * (1 + 2 * LK)));
      lp_all.copy_to_host(words.data(), words.size() * 4);
      const float* hl = reinterpret_cast<const float*>(words.data());
      const float* htl = hl + total;
      const int32_t* hti = reinterpret_cast<const int32_t*>(htl + total * LK);
      logprobs->lp.assign(B, {});
      logprobs->top_lp.assign(B, {});
      logprobs->top_ids.assign(B, {});
      for (size_t k = 0; k < owner.size(); ++k) {
        const size_t b = owner[k];
        if (!logprobs->want[b]) continue;
        logprobs->lp[b].push_back(hl[k]);
        logprobs->top_lp[b].insert(logprobs->top_lp[b].end(), htl + k * LK, htl + (k + 1) * LK);
        logprobs->top_ids[b].insert(logprobs->top_ids[b].end(), hti + k * LK, hti + (k + 1) * LK);
      }
    }
    if (params) result.q = gather_rows(std::vector<Tensor>(order.size(), q), order);
  } catch (...) {
    // Nothing of this call stays: the caller's view of the committed lengths remains true.
    pending_ = false;
    // (Truncating to the same length also returns the pages the chain reserved.)
    for (size_t b = 0; b < B; ++b)
      if (kv_->alive(inputs[b].seq) && kv_->length(inputs[b].seq) >= start[b]) kv_->truncate(inputs[b].seq, start[b]);
    throw;
  }
  return result;
}

namespace {
bool contains(const std::vector<int>& v, int x) {
  for (int y : v)
    if (y == x) return true;
  return false;
}
}  // namespace

int LlamaModel::create_sequence() {
  std::lock_guard<std::mutex> lock(mu_);
  return kv_->add_sequence();
}

int LlamaModel::fork_sequence(int seq) {
  std::lock_guard<std::mutex> lock(mu_);
  // Forking re-shares pages that a pending commit may write into: the pending forward is dropped.
  if (pending_ && contains(pending_seqs_, seq)) pending_ = false;
  return kv_->fork(seq);
}

void LlamaModel::free_sequence(int seq) {
  std::lock_guard<std::mutex> lock(mu_);
  if (pending_ && contains(pending_seqs_, seq)) pending_ = false;
  kv_->free(seq);
}

void LlamaModel::truncate(int seq, int length) {
  std::lock_guard<std::mutex> lock(mu_);
  if (pending_ && contains(pending_seqs_, seq)) pending_ = false;
  kv_->truncate(seq, length);
}

int LlamaModel::sequence_length(int seq) {
  std::lock_guard<std::mutex> lock(mu_);
  return kv_->length(seq);
}

int LlamaModel::free_pages() {
  std::lock_guard<std::mutex> lock(mu_);
  return kv_->free_pages();
}

}  // namespace specdec

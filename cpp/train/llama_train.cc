// Llama-family trainer: parameters (HF names), forward, hand-written backward, AdamW.
// Reading order: ParamSet (flat parameters + AdamW), LlamaTrainer constructor (the parameter
// table and its initialisation), run_sequence (forward then backward of one sequence),
// forward_backward (threads over the batch, gradient reduction).
#include <cmath>
#include <cstring>
#include <memory>

#include "../core/error.h"
#include "decoder_layer.h"
#include "kernels.h"
#include "train.h"

namespace specdec {
namespace train {

// ---- ParamSet -------------------------------------------------------------------------------

template <typename F>
size_t ParamSet<F>::add(const std::string& name, std::vector<int64_t> shape, bool decay) {
  ParamInfo p;
  p.name = name;
  p.numel = 1;
  for (int64_t d : shape) p.numel *= size_t(d);
  p.shape = std::move(shape);
  p.offset = w.size();
  p.decay = decay;
  w.resize(w.size() + p.numel, F(0));
  g.resize(w.size(), F(0));
  info.push_back(std::move(p));
  return info.back().offset;
}

template <typename F>
const ParamInfo& ParamSet<F>::find(const std::string& name) const {
  for (const ParamInfo& p : info)
    if (p.name == name) return p;
  fail("E_ARG", "name: no parameter named '", name, "'");
}

template <typename F>
double ParamSet<F>::adamw_step(const AdamWOptions& o) {
  double ss = 0;
  for (F x : g) ss += double(x) * double(x);
  const double norm = std::sqrt(ss);
  SPECDEC_CHECK(std::isfinite(norm), "E_NUMERIC", "training diverged: the gradient norm is ", norm,
                " (lower the learning rate)");
  if (m.size() != w.size()) {
    m.assign(w.size(), F(0));
    v.assign(w.size(), F(0));
  }
  ++step;
  const double scale = o.clip > 0 && norm > o.clip ? o.clip / norm : 1.0;
  const double c1 = 1.0 - std::pow(o.beta1, double(step));
  const double c2 = 1.0 - std::pow(o.beta2, double(step));
  const F b1 = F(o.beta1), b2 = F(o.beta2), lr = F(o.lr), eps = F(o.eps);
  const F sc = F(scale), rc1 = F(1.0 / c1), rc2 = F(1.0 / c2);
  for (const ParamInfo& p : info) {
    // Decoupled weight decay (AdamW), on matrices only.
    const F wd = p.decay ? F(o.weight_decay) : F(0);
    for (size_t i = p.offset; i < p.offset + p.numel; ++i) {
      const F gi = g[i] * sc;
      m[i] = b1 * m[i] + (F(1) - b1) * gi;
      v[i] = b2 * v[i] + (F(1) - b2) * gi * gi;
      w[i] -= lr * ((m[i] * rc1) / (std::sqrt(v[i] * rc2) + eps) + wd * w[i]);
    }
  }
  return norm;
}

// ---- Layer tables --------------------------------------------------------------------------

void check_layer_shape(const LlamaShape& s) {
  SPECDEC_CHECK(s.vocab > 0 && s.hidden > 0 && s.intermediate > 0 && s.layers > 0 && s.heads > 0 && s.kv_heads > 0 &&
                    s.head_dim > 0,
                "E_ARG", "config: sizes must be positive");
  SPECDEC_CHECK(s.heads % s.kv_heads == 0, "E_ARG", "config: numHeads (", s.heads, ") is not a multiple of numKvHeads (",
                s.kv_heads, ")");
  SPECDEC_CHECK(s.head_dim % 2 == 0, "E_ARG", "config: headDim (", s.head_dim, ") must be even");
  SPECDEC_CHECK(s.rms_eps > 0 && s.rope_theta > 0, "E_ARG", "config: rmsNormEps and ropeTheta must be positive");
}

template <typename F>
LayerOff add_layer(ParamSet<F>& p, const std::string& pre, const LlamaShape& s, bool attn_norm) {
  const int64_t H = s.hidden, I = s.intermediate, QD = int64_t(s.heads) * s.head_dim, KD = int64_t(s.kv_heads) * s.head_dim;
  LayerOff o;
  o.attn_norm = attn_norm ? p.add(pre + "input_layernorm.weight", {H}, false) : kNoParam;
  o.q = p.add(pre + "self_attn.q_proj.weight", {QD, H}, true);
  o.k = p.add(pre + "self_attn.k_proj.weight", {KD, H}, true);
  o.v = p.add(pre + "self_attn.v_proj.weight", {KD, H}, true);
  o.o = p.add(pre + "self_attn.o_proj.weight", {H, QD}, true);
  o.mlp_norm = p.add(pre + "post_attention_layernorm.weight", {H}, false);
  o.gate = p.add(pre + "mlp.gate_proj.weight", {I, H}, true);
  o.up = p.add(pre + "mlp.up_proj.weight", {I, H}, true);
  o.down = p.add(pre + "mlp.down_proj.weight", {H, I}, true);
  return o;
}

template LayerOff add_layer(ParamSet<float>&, const std::string&, const LlamaShape&, bool);
template LayerOff add_layer(ParamSet<double>&, const std::string&, const LlamaShape&, bool);

// ---- LlamaTrainer ---------------------------------------------------------------------------

// One sequence's activations (what the backward pass needs) and gradient scratch.
template <typename F>
struct LlamaTrainer<F>::Acts {
  int T = 0;
  LayerStack<F> layers;
  std::vector<F> hn, invf, logits, dlogits;  // final norm output, its scales, LM head
  // Gradient scratch: the residual stream's gradient, the final norm's, one layer's.
  std::vector<F> dx, dhn;
  LayerScratch<F> scratch;

  static LayerDims dims(const LlamaShape& s, int T) {
    return {T, s.hidden, s.intermediate, s.heads, s.kv_heads, s.head_dim, s.rms_eps};
  }

  void resize(const LlamaShape& s, int T_) {
    if (T_ == T) return;
    T = T_;
    const size_t t = size_t(T), H = size_t(s.hidden), V = size_t(s.vocab);
    layers.resize(dims(s, T), s.layers);
    hn.assign(t * H, 0);
    invf.assign(t, 0);
    logits.assign(t * V, 0);
    dlogits.assign(t * V, 0);
    dx.assign(t * H, 0);
    dhn.assign(t * H, 0);
    scratch.resize(dims(s, T));
  }
};

template <typename F>
LlamaTrainer<F>::LlamaTrainer(const LlamaShape& s, uint64_t seed) : s_(s) {
  check_layer_shape(s);
  const int64_t H = s.hidden, V = s.vocab;
  // Parameter table in HF names (the order a checkpoint is written in).
  embed_ = p_.add("model.embed_tokens.weight", {V, H}, true);
  for (int l = 0; l < s.layers; ++l) lo_.push_back(add_layer(p_, "model.layers." + std::to_string(l) + ".", s, true));
  norm_ = p_.add("model.norm.weight", {H}, false);
  lm_head_ = s.tie ? embed_ : p_.add("lm_head.weight", {V, H}, true);

  // GPT-2 style init: N(0, 0.02), projections into the residual stream scaled by 1/sqrt(2L)
  // so the stream's variance does not grow with depth; norms start at 1.
  Rng rng(seed);
  const double std_base = 0.02, std_res = 0.02 / std::sqrt(2.0 * s.layers);
  for (const ParamInfo& p : p_.info) {
    const bool is_norm = p.shape.size() == 1;
    const bool residual = p.name.find("o_proj") != std::string::npos || p.name.find("down_proj") != std::string::npos;
    for (size_t i = 0; i < p.numel; ++i)
      p_.w[p.offset + i] = is_norm ? F(1) : F(rng.normal() * (residual ? std_res : std_base));
  }
}

template <typename F>
void LlamaTrainer<F>::check_tokens(const int32_t* tokens, size_t count, int B, int T, const char* name) const {
  SPECDEC_CHECK(B > 0 && T > 0, "E_ARG", "batch and seqLen must be positive, got ", B, " and ", T);
  SPECDEC_CHECK(count == size_t(B) * size_t(T), "E_ARG", name, ": expected ", size_t(B) * size_t(T), " ids (", B, " x ",
                T, "), got ", count);
  for (size_t i = 0; i < count; ++i)
    SPECDEC_CHECK(tokens[i] >= 0 && tokens[i] < s_.vocab, "E_ARG", name, "[", i, "] = ", tokens[i],
                  " is outside the vocabulary [0, ", s_.vocab, ")");
}

template <typename F>
double LlamaTrainer<F>::run_sequence(Acts& a, const int32_t* ids, const int32_t* targets, int T, F* G, F dscale,
                                     F* logits_out, F* hidden_out) {
  const int H = s_.hidden, V = s_.vocab, L = s_.layers;
  const size_t TH = size_t(T) * H;
  const F* W = p_.w.data();
  a.resize(s_, T);
  const LayerDims dims = Acts::dims(s_, T);

  // ---- Forward.
  for (int t = 0; t < T; ++t) std::memcpy(&a.layers.xs[size_t(t) * H], W + embed_ + size_t(ids[t]) * H, sizeof(F) * H);
  for (int l = 0; l < L; ++l) layer_forward(a.layers.layer(dims, l), W, lo_[size_t(l)], rope_, dims);
  const F* xf = &a.layers.xs[L * TH];
  rmsnorm_forward(a.hn.data(), a.invf.data(), xf, W + norm_, T, H, s_.rms_eps);
  if (hidden_out) std::memcpy(hidden_out, a.hn.data(), sizeof(F) * TH);
  if (!logits_out && !targets) return 0;
  linear_forward(a.logits.data(), a.hn.data(), W + lm_head_, (const F*)nullptr, T, H, V);
  if (logits_out) std::memcpy(logits_out, a.logits.data(), sizeof(F) * size_t(T) * V);
  if (!targets) return 0;
  const double loss = cross_entropy(G ? a.dlogits.data() : (F*)nullptr, a.logits.data(), targets, T, V, dscale, nullptr);
  if (!G) return loss;

  // ---- Backward. a.dx holds d(loss)/d(residual stream) as it flows down the layers.
  std::fill(a.dhn.begin(), a.dhn.end(), F(0));
  linear_backward(a.dhn.data(), G + lm_head_, (F*)nullptr, a.dlogits.data(), a.hn.data(), W + lm_head_, T, H, V);
  std::fill(a.dx.begin(), a.dx.end(), F(0));
  rmsnorm_backward(a.dx.data(), G + norm_, a.dhn.data(), xf, W + norm_, a.invf.data(), T, H);
  for (int l = L - 1; l >= 0; --l) layer_backward(a.dx.data(), a.layers.layer(dims, l), W, G, lo_[size_t(l)], rope_, dims, a.scratch);
  for (int t = 0; t < T; ++t) axpy(G + embed_ + size_t(ids[t]) * H, &a.dx[size_t(t) * H], F(1), H);
  return loss;
}

template <typename F>
double LlamaTrainer<F>::forward_backward(const int32_t* tokens, int B, int T, int threads) {
  rope_.ensure(T, s_.head_dim, s_.rope_theta);
  threads = std::max(1, std::min(threads, B));
  // Per-thread activations and gradients; the gradients are summed in thread order afterwards.
  std::vector<Acts> acts(static_cast<size_t>(threads));
  std::vector<std::vector<F>> grads(static_cast<size_t>(threads - 1), std::vector<F>(p_.w.size(), F(0)));
  std::fill(p_.g.begin(), p_.g.end(), F(0));
  std::vector<double> losses(size_t(B), 0.0);
  const F dscale = F(1.0 / (double(B) * T));
  parallel_chunks(B, threads, [&](int tid, int b0, int b1) {
    F* G = tid == 0 ? p_.g.data() : grads[size_t(tid - 1)].data();
    for (int b = b0; b < b1; ++b) {
      const int32_t* row = tokens + size_t(b) * (T + 1);
      losses[size_t(b)] = run_sequence(acts[size_t(tid)], row, row + 1, T, G, dscale, nullptr, nullptr);
    }
  });
  for (const auto& g : grads)
    for (size_t i = 0; i < g.size(); ++i) p_.g[i] += g[i];
  double loss = 0;
  for (double x : losses) loss += x;
  return loss / (double(B) * T);
}

template <typename F>
double LlamaTrainer<F>::eval_loss(const int32_t* tokens, int B, int T, int threads) {
  rope_.ensure(T, s_.head_dim, s_.rope_theta);
  threads = std::max(1, std::min(threads, B));
  std::vector<Acts> acts(static_cast<size_t>(threads));
  std::vector<double> losses(size_t(B), 0.0);
  parallel_chunks(B, threads, [&](int tid, int b0, int b1) {
    for (int b = b0; b < b1; ++b) {
      const int32_t* row = tokens + size_t(b) * (T + 1);
      losses[size_t(b)] = run_sequence(acts[size_t(tid)], row, row + 1, T, nullptr, F(0), nullptr, nullptr);
    }
  });
  double loss = 0;
  for (double x : losses) loss += x;
  return loss / (double(B) * T);
}

template <typename F>
void LlamaTrainer<F>::forward(const int32_t* tokens, int B, int T, F* logits, F* hidden, int threads,
                              const std::vector<int>& aux_layers, F* aux) {
  for (int l : aux_layers)
    SPECDEC_CHECK(l >= 0 && l < s_.layers, "E_ARG", "auxLayers: layer ", l, " is outside [0, ", s_.layers, ")");
  rope_.ensure(T, s_.head_dim, s_.rope_theta);
  threads = std::max(1, std::min(threads, B));
  std::vector<Acts> acts(static_cast<size_t>(threads));
  const size_t H = size_t(s_.hidden), A = aux_layers.size();
  parallel_chunks(B, threads, [&](int tid, int b0, int b1) {
    for (int b = b0; b < b1; ++b) {
      Acts& a = acts[size_t(tid)];
      run_sequence(a, tokens + size_t(b) * T, nullptr, T, nullptr, F(0),
                   logits ? logits + size_t(b) * T * s_.vocab : nullptr, hidden ? hidden + size_t(b) * T * s_.hidden : nullptr);
      if (!aux) continue;
      for (int t = 0; t < T; ++t)
        for (size_t k = 0; k < A; ++k)
          std::memcpy(aux + ((size_t(b) * T + t) * A + k) * H, &a.layers.xs[(size_t(aux_layers[k]) * T + t) * H], sizeof(F) * H);
    }
  });
}

template struct ParamSet<float>;
template struct ParamSet<double>;
template class LlamaTrainer<float>;
template class LlamaTrainer<double>;

}  // namespace train
}  // namespace specdec

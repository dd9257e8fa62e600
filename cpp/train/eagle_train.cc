// EAGLE-1/2 head trainer on a frozen target (SafeAILab's eagle/train/main.py, read for its
// semantics): row j = fc([embed(t[j + 1]); f[j] + noise]) through Llama decoder layers (the first
// without its input norm) -> h[j]; loss = v_weight * SmoothL1(h[j], f[j + 1]) + p_weight *
// cross-entropy(softmax(target logits[j + 1]), log_softmax(lm_head h[j])). The embedding table and
// the LM head are the target's (inputs, frozen); the features and target logits come from the
// target's forward over the same tokens.
#include <cmath>
#include <cstring>

#include "../core/error.h"
#include "decoder_layer.h"
#include "kernels.h"
#include "train.h"

namespace specdec {
namespace train {

template <typename F>
struct EagleTrainer<F>::Acts {
  int T = 0;
  std::vector<F> cat;  // [T, 2H] the fc's input rows
  LayerStack<F> layers;  // layers.xs[0] is the fc's output
  std::vector<F> logits, dlogits, dx;
  LayerScratch<F> scratch;

  static LayerDims dims(const EagleShape& s, int T) {
    return {T, s.hidden, s.intermediate, s.heads, s.kv_heads, s.head_dim, s.rms_eps};
  }

  void resize(const EagleShape& s, int T_) {
    if (T_ == T) return;
    T = T_;
    const size_t t = size_t(T), H = size_t(s.hidden);
    cat.assign(t * 2 * H, 0);
    layers.resize(dims(s, T), s.layers);
    logits.assign(t * size_t(s.vocab), 0);
    dlogits.assign(t * size_t(s.vocab), 0);
    dx.assign(t * H, 0);
    scratch.resize(dims(s, T));
  }
};

template <typename F>
EagleTrainer<F>::EagleTrainer(const EagleShape& s, uint64_t seed) : s_(s) {
  check_layer_shape(s);
  const int64_t H = s.hidden;
  // SafeAILab's key names (cnets1.py), the order a checkpoint is written in.
  fc_ = p_.add("fc.weight", {H, 2 * H}, true);
  if (s.fc_bias) fc_bias_ = p_.add("fc.bias", {H}, false);
  for (int l = 0; l < s.layers; ++l) lo_.push_back(add_layer(p_, "layers." + std::to_string(l) + ".", s, l > 0));
  // fc as nn.Linear's default (uniform, bound 1 / sqrt(fan_in)); the layers as LlamaTrainer's.
  Rng rng(seed);
  const double fc_bound = 1.0 / std::sqrt(2.0 * H);
  const double std_base = 0.02, std_res = 0.02 / std::sqrt(2.0 * s.layers);
  for (const ParamInfo& p : p_.info) {
    const bool is_fc = p.name.rfind("fc.", 0) == 0;
    const bool is_norm = !is_fc && p.shape.size() == 1;
    const bool residual = p.name.find("o_proj") != std::string::npos || p.name.find("down_proj") != std::string::npos;
    for (size_t i = 0; i < p.numel; ++i)
      p_.w[p.offset + i] = is_fc      ? F((2.0 * rng.uniform() - 1.0) * fc_bound)
                           : is_norm  ? F(1)
                                      : F(rng.normal() * (residual ? std_res : std_base));
  }
}

template <typename F>
void EagleTrainer<F>::run_sequence(Acts& a, const int32_t* tokens, const F* features, const F* target_logits,
                                   const F* embed, const F* lm_head, int T, F* G, double scale,
                                   const EagleLossOptions& opts, uint64_t noise_stream, EagleStats* stats, F* h_out,
                                   F* logits_out) {
  const int H = s_.hidden, V = s_.vocab, L = s_.layers;
  const size_t TH = size_t(T) * H;
  const F* W = p_.w.data();
  a.resize(s_, T);
  const LayerDims dims = Acts::dims(s_, T);

  // ---- Forward.
  Rng noise(noise_stream);
  for (int j = 0; j < T; ++j) {
    F* row = &a.cat[size_t(j) * 2 * H];
    std::memcpy(row, embed + size_t(tokens[j + 1]) * H, sizeof(F) * H);
    const F* f = features + size_t(j) * H;
    for (int i = 0; i < H; ++i) row[H + i] = opts.noise > 0 ? f[i] + F((noise.uniform() - 0.5) * opts.noise) : f[i];
  }
  linear_forward(a.layers.xs.data(), a.cat.data(), W + fc_, fc_bias_ == kNoParam ? (const F*)nullptr : W + fc_bias_, T, 2 * H, H);
  for (int l = 0; l < L; ++l) layer_forward(a.layers.layer(dims, l), W, lo_[size_t(l)], rope_, dims);
  const F* h = &a.layers.xs[size_t(L) * TH];
  if (h_out) std::memcpy(h_out, h, sizeof(F) * TH);
  if (!logits_out && !target_logits) return;
  linear_forward(a.logits.data(), h, lm_head, (const F*)nullptr, T, H, V);
  if (logits_out) std::memcpy(logits_out, a.logits.data(), sizeof(F) * size_t(T) * V);
  if (!target_logits) return;

  // ---- Losses (double accumulation) and their gradients with respect to h.
  std::fill(a.dx.begin(), a.dx.end(), F(0));
  for (int j = 0; j < T; ++j) {
    const F* z = &a.logits[size_t(j) * V];
    const F* tz = target_logits + size_t(j + 1) * V;
    int am = 0, tam = 0;
    for (int i = 1; i < V; ++i) {
      if (z[i] > z[am]) am = i;
      if (tz[i] > tz[tam]) tam = i;
    }
    stats->accuracy += am == tam ? 1.0 : 0.0;
    double zs = 0, ts = 0;
    for (int i = 0; i < V; ++i) {
      zs += std::exp(double(z[i] - z[am]));
      ts += std::exp(double(tz[i] - tz[tam]));
    }
    const double zlse = std::log(zs);
    double ce = 0;
    F* dz = &a.dlogits[size_t(j) * V];
    for (int i = 0; i < V; ++i) {
      const double p = std::exp(double(tz[i] - tz[tam])) / ts;
      const double logq = double(z[i] - z[am]) - zlse;
      ce -= p * logq;
      if (G) dz[i] = F((std::exp(logq) - p) * opts.p_weight * scale);
    }
    stats->p_loss += ce;
    // SmoothL1 (beta 1) against the next position's feature, averaged over the H features.
    const F* hj = h + size_t(j) * H;
    const F* next = features + size_t(j + 1) * H;
    double sl = 0;
    F* dxj = &a.dx[size_t(j) * H];
    for (int i = 0; i < H; ++i) {
      const double d = double(hj[i]) - double(next[i]);
      const double ad = std::fabs(d);
      sl += ad < 1.0 ? 0.5 * d * d : ad - 0.5;
      if (G) dxj[i] = F((ad < 1.0 ? d : (d > 0 ? 1.0 : -1.0)) * opts.v_weight * scale / H);
    }
    stats->v_loss += sl / H;
  }
  if (!G) return;

  // ---- Backward: h -> layers -> fc (the embedding, features and LM head are frozen).
  linear_backward(a.dx.data(), (F*)nullptr, (F*)nullptr, a.dlogits.data(), h, lm_head, T, H, V);
  for (int l = L - 1; l >= 0; --l) layer_backward(a.dx.data(), a.layers.layer(dims, l), W, G, lo_[size_t(l)], rope_, dims, a.scratch);
  linear_backward((F*)nullptr, G + fc_, fc_bias_ == kNoParam ? (F*)nullptr : G + fc_bias_, a.dx.data(), a.cat.data(),
                  W + fc_, T, 2 * H, H);
}

template <typename F>
void EagleTrainer<F>::prepare(const int32_t* tokens, int B, int T) {
  SPECDEC_CHECK(B > 0 && T > 0, "E_ARG", "batch and seqLen must be positive, got ", B, " and ", T);
  for (size_t i = 0; i < size_t(B) * (T + 1); ++i)
    SPECDEC_CHECK(tokens[i] >= 0 && tokens[i] < s_.vocab, "E_ARG", "tokens[", i, "] = ", tokens[i],
                  " is outside the vocabulary [0, ", s_.vocab, ")");
  rope_.ensure(T, s_.head_dim, s_.rope_theta);
}

template <typename F>
EagleStats EagleTrainer<F>::forward_backward(const int32_t* tokens, const F* features, const F* target_logits,
                                             const F* embed, const F* lm_head, int B, int T, const EagleLossOptions& opts,
                                             int threads) {
  prepare(tokens, B, T);
  threads = std::max(1, std::min(threads, B));
  std::vector<Acts> acts(static_cast<size_t>(threads));
  std::vector<std::vector<F>> grads(static_cast<size_t>(threads - 1), std::vector<F>(p_.w.size(), F(0)));
  std::fill(p_.g.begin(), p_.g.end(), F(0));
  std::vector<EagleStats> per(static_cast<size_t>(B));
  const double scale = 1.0 / (double(B) * T);
  const size_t H = size_t(s_.hidden), V = size_t(s_.vocab), R = size_t(T) + 1;
  parallel_chunks(B, threads, [&](int tid, int b0, int b1) {
    F* G = tid == 0 ? p_.g.data() : grads[size_t(tid - 1)].data();
    for (int b = b0; b < b1; ++b)
      run_sequence(acts[size_t(tid)], tokens + size_t(b) * R, features + size_t(b) * R * H, target_logits + size_t(b) * R * V,
                   embed, lm_head, T, G, scale, opts, opts.noise_seed * 0x9E3779B97F4A7C15ull + uint64_t(b) + 1,
                   &per[size_t(b)], nullptr, nullptr);
  });
  for (const auto& g : grads)
    for (size_t i = 0; i < g.size(); ++i) p_.g[i] += g[i];
  EagleStats out;
  for (const EagleStats& s : per) {
    out.v_loss += s.v_loss;
    out.p_loss += s.p_loss;
    out.accuracy += s.accuracy;
  }
  out.v_loss *= scale;
  out.p_loss *= scale;
  out.accuracy *= scale;
  out.loss = opts.v_weight * out.v_loss + opts.p_weight * out.p_loss;
  return out;
}

template <typename F>
void EagleTrainer<F>::forward(const int32_t* tokens, const F* features, const F* embed, const F* lm_head, int B, int T,
                              F* h, F* logits, int threads) {
  prepare(tokens, B, T);
  threads = std::max(1, std::min(threads, B));
  std::vector<Acts> acts(static_cast<size_t>(threads));
  const size_t H = size_t(s_.hidden), V = size_t(s_.vocab), R = size_t(T) + 1;
  const EagleLossOptions none;
  parallel_chunks(B, threads, [&](int tid, int b0, int b1) {
    for (int b = b0; b < b1; ++b)
      run_sequence(acts[size_t(tid)], tokens + size_t(b) * R, features + size_t(b) * R * H, (const F*)nullptr, embed,
                   lm_head, T, (F*)nullptr, 0.0, none, 0, nullptr, h ? h + size_t(b) * T * H : nullptr,
                   logits ? logits + size_t(b) * T * V : nullptr);
  });
}

template class EagleTrainer<float>;
template class EagleTrainer<double>;

}  // namespace train
}  // namespace specdec

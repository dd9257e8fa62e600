// EAGLE-3 head trainer on a frozen target (SafeAILab's eagle/traineagle3/cnets.py, read for its
// semantics; train.h says what it computes). One sequence's steps run forward in order and backward in
// reverse: a later step reads step 0's keys and values of earlier rows and its own row's of earlier
// steps, so by the time step s runs backward every gradient into its keys and values is in.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../core/error.h"
#include "kernels.h"
#include "train.h"

namespace specdec {
namespace train {

template <typename F>
struct Eagle3Trainer<F>::Acts {
  int T = 0, K = 0;
  // Per step s, rows 0..T-1 (rows j >= T - s unused): [K][T * width].
  std::vector<F> feat_x;  // [T, H] fc's output (step 0's x)
  std::vector<F> x, e, en, hn, inv_e, inv_h, c, q, k, v, att, probs, xm, h2, inv2, gate, up, act, out, fn, invf, logits;
  // Backward.
  std::vector<F> dk, dv, carry, dlogits, dfn, dout, dxm, datt, dq, dc, dx_half, dact, dgate, dup, dh2, dp, scratch;

  size_t keys() const { return size_t(T) + size_t(K); }

  void resize(const Eagle3Shape& s, int T_, int K_) {
    if (T_ == T && K_ == K) return;
    T = T_;
    K = K_;
    const size_t t = size_t(T) * K, H = size_t(s.hidden), I = size_t(s.intermediate);
    const size_t QD = size_t(s.heads) * s.head_dim, KD = size_t(s.kv_heads) * s.head_dim, Vd = size_t(s.draft_vocab);
    feat_x.assign(size_t(T) * H, 0);
    for (auto* b : {&x, &e, &en, &hn, &xm, &h2, &out, &fn, &carry, &dout, &dxm, &dx_half, &dfn, &dh2, &scratch}) b->assign(t * H, 0);
    for (auto* b : {&inv_e, &inv_h, &inv2, &invf}) b->assign(t, 0);
    c.assign(t * 2 * H, 0);
    dc.assign(t * 2 * H, 0);
    for (auto* b : {&q, &att, &datt, &dq}) b->assign(t * QD, 0);
    for (auto* b : {&k, &v, &dk, &dv}) b->assign(t * KD, 0);
    for (auto* b : {&gate, &up, &act, &dact, &dgate, &dup}) b->assign(t * I, 0);
    probs.assign(t * size_t(s.heads) * keys(), 0);
    logits.assign(t * Vd, 0);
    dlogits.assign(t * Vd, 0);
    dp.assign(keys(), 0);
  }
};

template <typename F>
Eagle3Trainer<F>::Eagle3Trainer(const Eagle3Shape& s, uint64_t seed) : s_(s) {
  check_layer_shape(s);
  SPECDEC_CHECK(s.layers == 1, "E_ARG", "an EAGLE-3 head has one layer (midlayer), got ", s.layers);
  SPECDEC_CHECK(s.draft_vocab >= 1 && s.draft_vocab <= s.vocab, "E_ARG", "draftVocabSize must be in [1, vocabSize = ",
                s.vocab, "], got ", s.draft_vocab);
  const int64_t H = s.hidden, I = s.intermediate, QD = int64_t(s.heads) * s.head_dim, KD = int64_t(s.kv_heads) * s.head_dim;
  // SafeAILab's key names (traineagle3/cnets.py), in the order a checkpoint is written.
  fc_ = p_.add("fc.weight", {H, 3 * H}, true);
  in_norm_ = p_.add("midlayer.input_layernorm.weight", {H}, false);
  hid_norm_ = p_.add("midlayer.hidden_norm.weight", {H}, false);
  q_ = p_.add("midlayer.self_attn.q_proj.weight", {QD, 2 * H}, true);
  k_ = p_.add("midlayer.self_attn.k_proj.weight", {KD, 2 * H}, true);
  v_ = p_.add("midlayer.self_attn.v_proj.weight", {KD, 2 * H}, true);
  o_ = p_.add("midlayer.self_attn.o_proj.weight", {H, QD}, true);
  post_norm_ = p_.add("midlayer.post_attention_layernorm.weight", {H}, false);
  gate_ = p_.add("midlayer.mlp.gate_proj.weight", {I, H}, true);
  up_ = p_.add("midlayer.mlp.up_proj.weight", {I, H}, true);
  down_ = p_.add("midlayer.mlp.down_proj.weight", {H, I}, true);
  norm_ = p_.add("norm.weight", {H}, false);
  lm_ = p_.add("lm_head.weight", {int64_t(s.draft_vocab), H}, true);
  // fc as nn.Linear's default (uniform, bound 1 / sqrt(fan_in)); the rest as the EAGLE-1/2 trainer's.
  Rng rng(seed);
  const double fc_bound = 1.0 / std::sqrt(3.0 * H);
  for (const ParamInfo& p : p_.info) {
    const bool is_fc = p.name == "fc.weight";
    const bool is_norm = p.shape.size() == 1;
    const bool residual = p.name.find("o_proj") != std::string::npos || p.name.find("down_proj") != std::string::npos;
    for (size_t i = 0; i < p.numel; ++i)
      p_.w[p.offset + i] = is_fc ? F((2.0 * rng.uniform() - 1.0) * fc_bound)
                           : is_norm ? F(1)
                                     : F(rng.normal() * (residual ? 0.02 / std::sqrt(2.0) : 0.02));
  }
}

template <typename F>
void Eagle3Trainer<F>::check_draft_ids(const int32_t* ids, size_t n) const {
  SPECDEC_CHECK(n == size_t(s_.draft_vocab), "E_ARG", "draftIds: expected ", s_.draft_vocab, " ids, got ", n);
  for (size_t d = 0; d < n; ++d)
    SPECDEC_CHECK(ids[d] >= 0 && ids[d] < s_.vocab && (d == 0 || ids[d] > ids[d - 1]), "E_ARG", "draftIds[", d, "] = ", ids[d],
                  ": expected ascending ids in [0, ", s_.vocab, ")");
}

template <typename F>
void Eagle3Trainer<F>::prepare(const int32_t* tokens, int B, int T, int steps) {
  SPECDEC_CHECK(B > 0 && T > 0, "E_ARG", "batch and seqLen must be positive, got ", B, " and ", T);
  SPECDEC_CHECK(steps >= 1 && steps <= 64, "E_ARG", "steps: expected an integer in [1, 64], got ", steps);
  for (size_t i = 0; i < size_t(B) * (T + 1); ++i)
    SPECDEC_CHECK(tokens[i] >= 0 && tokens[i] < s_.vocab, "E_ARG", "tokens[", i, "] = ", tokens[i],
                  " is outside the vocabulary [0, ", s_.vocab, ")");
  rope_.ensure(T + steps, s_.head_dim, s_.rope_theta);
}

template <typename F>
void Eagle3Trainer<F>::run_sequence(Acts& a, const int32_t* tokens, const F* features, const F* target_logits,
                                    const F* embed, const int32_t* draft_ids, const std::vector<uint8_t>* in_draft, int T,
                                    int steps, F* G, double scale, const Eagle3LossOptions& opts, Eagle3Stats* stats,
                                    F* h_out, F* logits_out) {
  const int H = s_.hidden, I = s_.intermediate, V = s_.vocab, Vd = s_.draft_vocab;
  const int NH = s_.heads, NKV = s_.kv_heads, D = s_.head_dim, QD = NH * D, KD = NKV * D, group = NH / NKV;
  const int K = std::min(steps, T);  // step s has T - s rows
  const F* W = p_.w.data();
  a.resize(s_, T, K);
  const size_t NK = a.keys(), half = size_t(D) / 2;
  const F sm = F(1) / std::sqrt(F(D));
  auto at = [&](std::vector<F>& b, int s, size_t width) { return b.data() + size_t(s) * T * width; };
  // Row j of step s, head h: its visible keys are step 0's rows 0..j, then (for s >= 1) row j of
  // steps 1..s; key index i < j + 1 is step 0's row i, i = j + u (u >= 1) step u's row j.
  auto key_row = [&](std::vector<F>& b, int j, int i, int kh) -> F* {
    const int step = i <= j ? 0 : i - j, row = i <= j ? i : j;
    return b.data() + (size_t(step) * T + row) * KD + size_t(kh) * D;
  };

  // ---- Forward.
  linear_forward(a.feat_x.data(), features, W + fc_, (const F*)nullptr, T, 3 * H, H);
  for (int s = 0; s < K; ++s) {
    const int n = T - s;
    F* x = at(a.x, s, H);
    std::memcpy(x, s == 0 ? a.feat_x.data() : at(a.out, s - 1, H), sizeof(F) * size_t(n) * H);
    F* e = at(a.e, s, H);
    for (int j = 0; j < n; ++j) std::memcpy(e + size_t(j) * H, embed + size_t(tokens[j + s + 1]) * H, sizeof(F) * H);
    rmsnorm_forward(at(a.en, s, H), at(a.inv_e, s, 1), e, W + in_norm_, n, H, s_.rms_eps);
    rmsnorm_forward(at(a.hn, s, H), at(a.inv_h, s, 1), x, W + hid_norm_, n, H, s_.rms_eps);
    F* c = at(a.c, s, 2 * H);
    for (int j = 0; j < n; ++j) {
      std::memcpy(c + size_t(j) * 2 * H, at(a.en, s, H) + size_t(j) * H, sizeof(F) * H);
      std::memcpy(c + size_t(j) * 2 * H + H, at(a.hn, s, H) + size_t(j) * H, sizeof(F) * H);
    }
    F *q = at(a.q, s, QD), *k = at(a.k, s, KD), *v = at(a.v, s, KD);
    linear_forward(q, c, W + q_, (const F*)nullptr, n, 2 * H, QD);
    linear_forward(k, c, W + k_, (const F*)nullptr, n, 2 * H, KD);
    linear_forward(v, c, W + v_, (const F*)nullptr, n, 2 * H, KD);
    // Positions j + s: the tables from row s on.
    rope_forward(q, rope_.cos.data() + size_t(s) * half, rope_.sin.data() + size_t(s) * half, n, NH, D);
    rope_forward(k, rope_.cos.data() + size_t(s) * half, rope_.sin.data() + size_t(s) * half, n, NKV, D);
    F* att = at(a.att, s, QD);
    for (int j = 0; j < n; ++j) {
      const int nk = j + 1 + s;
      for (int h = 0; h < NH; ++h) {
        const int kh = h / group;
        const F* qi = q + size_t(j) * QD + size_t(h) * D;
        F* p = a.probs.data() + ((size_t(s) * T + j) * NH + h) * NK;
        F mx = -INFINITY;
        for (int i = 0; i < nk; ++i) {
          p[i] = dot(qi, key_row(a.k, j, i, kh), D) * sm;
          mx = std::max(mx, p[i]);
        }
        F sum = 0;
        for (int i = 0; i < nk; ++i) {
          p[i] = std::exp(p[i] - mx);
          sum += p[i];
        }
        const F rs = F(1) / sum;
        F* o = att + size_t(j) * QD + size_t(h) * D;
        std::fill(o, o + D, F(0));
        for (int i = 0; i < nk; ++i) {
          p[i] *= rs;
          axpy(o, key_row(a.v, j, i, kh), p[i], D);
        }
      }
    }
    F* xm = at(a.xm, s, H);
    linear_forward(xm, att, W + o_, (const F*)nullptr, n, QD, H);
    for (size_t i = 0; i < size_t(n) * H; ++i) xm[i] += x[i];
    rmsnorm_forward(at(a.h2, s, H), at(a.inv2, s, 1), xm, W + post_norm_, n, H, s_.rms_eps);
    linear_forward(at(a.gate, s, I), at(a.h2, s, H), W + gate_, (const F*)nullptr, n, H, I);
    linear_forward(at(a.up, s, I), at(a.h2, s, H), W + up_, (const F*)nullptr, n, H, I);
    swiglu_forward(at(a.act, s, I), at(a.gate, s, I), at(a.up, s, I), int64_t(n) * I);
    F* out = at(a.out, s, H);
    linear_forward(out, at(a.act, s, I), W + down_, (const F*)nullptr, n, I, H);
    for (size_t i = 0; i < size_t(n) * H; ++i) out[i] += xm[i];
    if (h_out) std::memcpy(h_out + size_t(s) * T * H, out, sizeof(F) * size_t(n) * H);
    if (!logits_out && !target_logits) continue;
    rmsnorm_forward(at(a.fn, s, H), at(a.invf, s, 1), out, W + norm_, n, H, s_.rms_eps);
    linear_forward(at(a.logits, s, Vd), at(a.fn, s, H), W + lm_, (const F*)nullptr, n, H, Vd);
    if (logits_out) std::memcpy(logits_out + size_t(s) * T * Vd, at(a.logits, s, Vd), sizeof(F) * size_t(n) * Vd);
  }
  if (!target_logits) return;

  // ---- Losses (double accumulation) and d loss / d logits.
  for (int s = 0; s < K; ++s) {
    const int n = T - s;
    const double w = std::pow(opts.decay, s) * scale;
    double loss = 0, hits = 0;
    for (int j = 0; j < n; ++j) {
      const F* z = at(a.logits, s, Vd) + size_t(j) * Vd;
      const F* tz = target_logits + size_t(j + s + 1) * V;
      F* dz = at(a.dlogits, s, Vd) + size_t(j) * Vd;
      std::fill(dz, dz + Vd, F(0));
      int tam = 0;
      for (int i = 1; i < V; ++i)
        if (tz[i] > tz[tam]) tam = i;
      if (!(*in_draft)[size_t(tam)]) continue;  // SafeAILab's position mask: the target's choice is not draftable
      int am = 0, dam = 0;
      for (int d = 1; d < Vd; ++d) {
        if (z[d] > z[am]) am = d;
        if (tz[draft_ids[d]] > tz[draft_ids[dam]]) dam = d;
      }
      hits += am == dam ? 1.0 : 0.0;
      double zs = 0, ts = 0;
      const double tmax = double(tz[draft_ids[dam]]);
      for (int d = 0; d < Vd; ++d) {
        zs += std::exp(double(z[d] - z[am]));
        ts += std::exp(double(tz[draft_ids[d]]) - tmax);
      }
      const double zlse = std::log(zs);
      for (int d = 0; d < Vd; ++d) {
        const double p = std::exp(double(tz[draft_ids[d]]) - tmax) / ts;
        const double logq = double(z[d] - z[am]) - zlse;
        loss -= p * logq;
        if (G) dz[d] = F((std::exp(logq) - p) * w);
      }
    }
    stats->step_loss[size_t(s)] += loss;
    stats->step_acc[size_t(s)] += hits;
  }
  if (!G) return;

  // ---- Backward, steps in reverse. carry[s]: d loss / d out[s] from step s + 1 (its x).
  std::fill(a.carry.begin(), a.carry.end(), F(0));
  std::fill(a.dk.begin(), a.dk.end(), F(0));
  std::fill(a.dv.begin(), a.dv.end(), F(0));
  for (int s = K - 1; s >= 0; --s) {
    const int n = T - s;
    const size_t nH = size_t(n) * H, nI = size_t(n) * I;
    // Through the LM head and the final norm into d out.
    F* dout = at(a.dout, s, H);
    std::memcpy(dout, at(a.carry, s, H), sizeof(F) * nH);
    F* dfn = at(a.dfn, s, H);
    std::fill(dfn, dfn + nH, F(0));
    linear_backward(dfn, G + lm_, (F*)nullptr, at(a.dlogits, s, Vd), at(a.fn, s, H), W + lm_, n, H, Vd);
    rmsnorm_backward(dout, G + norm_, dfn, at(a.out, s, H), W + norm_, at(a.invf, s, 1), n, H);
    // MLP block: d xm = d out + the MLP branch's.
    F* dxm = at(a.dxm, s, H);
    std::memcpy(dxm, dout, sizeof(F) * nH);
    F *dact = at(a.dact, s, I), *dgate = at(a.dgate, s, I), *dup = at(a.dup, s, I), *dh2 = at(a.dh2, s, H);
    std::fill(dact, dact + nI, F(0));
    linear_backward(dact, G + down_, (F*)nullptr, dout, at(a.act, s, I), W + down_, n, I, H);
    swiglu_backward(dgate, dup, dact, at(a.gate, s, I), at(a.up, s, I), int64_t(nI));
    std::fill(dh2, dh2 + nH, F(0));
    linear_backward(dh2, G + gate_, (F*)nullptr, dgate, at(a.h2, s, H), W + gate_, n, H, I);
    linear_backward(dh2, G + up_, (F*)nullptr, dup, at(a.h2, s, H), W + up_, n, H, I);
    rmsnorm_backward(dxm, G + post_norm_, dh2, at(a.xm, s, H), W + post_norm_, at(a.inv2, s, 1), n, H);
    // Attention: d att, then d q of this step and d k / d v of every key it read.
    F* datt = at(a.datt, s, QD);
    std::fill(datt, datt + size_t(n) * QD, F(0));
    linear_backward(datt, G + o_, (F*)nullptr, dxm, at(a.att, s, QD), W + o_, n, QD, H);
    F* dq = at(a.dq, s, QD);
    std::fill(dq, dq + size_t(n) * QD, F(0));
    for (int j = 0; j < n; ++j) {
      const int nk = j + 1 + s;
      for (int h = 0; h < NH; ++h) {
        const int kh = h / group;
        const F* g = datt + size_t(j) * QD + size_t(h) * D;
        const F* p = a.probs.data() + ((size_t(s) * T + j) * NH + h) * NK;
        F pdp = 0;
        for (int i = 0; i < nk; ++i) {
          a.dp[size_t(i)] = dot(g, key_row(a.v, j, i, kh), D);
          pdp += p[i] * a.dp[size_t(i)];
          axpy(key_row(a.dv, j, i, kh), g, p[i], D);
        }
        const F* qi = at(a.q, s, QD) + size_t(j) * QD + size_t(h) * D;
        F* dqi = dq + size_t(j) * QD + size_t(h) * D;
        for (int i = 0; i < nk; ++i) {
          const F ds = p[i] * (a.dp[size_t(i)] - pdp) * sm;
          axpy(dqi, key_row(a.k, j, i, kh), ds, D);
          axpy(key_row(a.dk, j, i, kh), qi, ds, D);
        }
      }
    }
    // Every later step has run: d k / d v of this step are complete.
    F *dk = at(a.dk, s, KD), *dv = at(a.dv, s, KD);
    rope_backward(dq, rope_.cos.data() + size_t(s) * half, rope_.sin.data() + size_t(s) * half, n, NH, D);
    rope_backward(dk, rope_.cos.data() + size_t(s) * half, rope_.sin.data() + size_t(s) * half, n, NKV, D);
    F* dc = at(a.dc, s, 2 * H);
    std::fill(dc, dc + nH * 2, F(0));
    const F* c = at(a.c, s, 2 * H);
    linear_backward(dc, G + q_, (F*)nullptr, dq, c, W + q_, n, 2 * H, QD);
    linear_backward(dc, G + k_, (F*)nullptr, dk, c, W + k_, n, 2 * H, KD);
    linear_backward(dc, G + v_, (F*)nullptr, dv, c, W + v_, n, 2 * H, KD);
    // The two halves of the attention input: the embedding's norm (frozen table: its weight only)
    // and the hidden state's norm (into d x, beside the residual).
    F* dhalf = at(a.dx_half, s, H);
    F* sink = at(a.scratch, s, H);
    for (int j = 0; j < n; ++j) std::memcpy(dhalf + size_t(j) * H, dc + size_t(j) * 2 * H, sizeof(F) * H);
    std::fill(sink, sink + nH, F(0));
    rmsnorm_backward(sink, G + in_norm_, dhalf, at(a.e, s, H), W + in_norm_, at(a.inv_e, s, 1), n, H);
    for (int j = 0; j < n; ++j) std::memcpy(dhalf + size_t(j) * H, dc + size_t(j) * 2 * H + H, sizeof(F) * H);
    rmsnorm_backward(dxm, G + hid_norm_, dhalf, at(a.x, s, H), W + hid_norm_, at(a.inv_h, s, 1), n, H);
    // d x: into the previous step's output, or at step 0 into fc (features frozen).
    if (s > 0)
      axpy(at(a.carry, s - 1, H), dxm, F(1), int(nH));
    else
      linear_backward((F*)nullptr, G + fc_, (F*)nullptr, dxm, features, W + fc_, T, 3 * H, H);
  }
}

template <typename F>
Eagle3Stats Eagle3Trainer<F>::forward_backward(const int32_t* tokens, const F* features, const F* target_logits,
                                               const F* embed, const int32_t* draft_ids, int B, int T,
                                               const Eagle3LossOptions& opts, int threads) {
  prepare(tokens, B, T, opts.steps);
  check_draft_ids(draft_ids, size_t(s_.draft_vocab));
  SPECDEC_CHECK(opts.decay > 0 && std::isfinite(opts.decay), "E_ARG", "decay: expected a finite number > 0, got ", opts.decay);
  std::vector<uint8_t> in_draft(size_t(s_.vocab), 0);
  for (int d = 0; d < s_.draft_vocab; ++d) in_draft[size_t(draft_ids[d])] = 1;
  const int K = std::min(opts.steps, T);
  threads = std::max(1, std::min(threads, B));
  std::vector<Acts> acts(static_cast<size_t>(threads));
  std::vector<std::vector<F>> grads(static_cast<size_t>(threads - 1), std::vector<F>(p_.w.size(), F(0)));
  std::fill(p_.g.begin(), p_.g.end(), F(0));
  std::vector<Eagle3Stats> per(static_cast<size_t>(B));
  for (auto& st : per) {
    st.step_loss.assign(size_t(K), 0);
    st.step_acc.assign(size_t(K), 0);
  }
  const double scale = 1.0 / (double(B) * T);
  const size_t H = size_t(s_.hidden), V = size_t(s_.vocab), R = size_t(T) + 1;
  parallel_chunks(B, threads, [&](int tid, int b0, int b1) {
    F* G = tid == 0 ? p_.g.data() : grads[size_t(tid - 1)].data();
    for (int b = b0; b < b1; ++b)
      run_sequence(acts[size_t(tid)], tokens + size_t(b) * R, features + size_t(b) * R * 3 * H,
                   target_logits + size_t(b) * R * V, embed, draft_ids, &in_draft, T, K, G, scale, opts, &per[size_t(b)],
                   nullptr, nullptr);
  });
  for (const auto& g : grads)
    for (size_t i = 0; i < g.size(); ++i) p_.g[i] += g[i];
  Eagle3Stats out;
  out.step_loss.assign(size_t(K), 0);
  out.step_acc.assign(size_t(K), 0);
  for (const Eagle3Stats& st : per)
    for (int s = 0; s < K; ++s) {
      out.step_loss[size_t(s)] += st.step_loss[size_t(s)];
      out.step_acc[size_t(s)] += st.step_acc[size_t(s)];
    }
  for (int s = 0; s < K; ++s) {
    out.step_loss[size_t(s)] *= scale;
    out.step_acc[size_t(s)] /= double(B) * (T - s);
    out.loss += std::pow(opts.decay, s) * out.step_loss[size_t(s)];
  }
  return out;
}

template <typename F>
void Eagle3Trainer<F>::forward(const int32_t* tokens, const F* features, const F* embed, int B, int T, int steps, F* h,
                               F* logits, int threads) {
  prepare(tokens, B, T, steps);
  threads = std::max(1, std::min(threads, B));
  std::vector<Acts> acts(static_cast<size_t>(threads));
  const size_t H = size_t(s_.hidden), Vd = size_t(s_.draft_vocab), R = size_t(T) + 1, S = size_t(steps) * T;
  if (h) std::fill(h, h + size_t(B) * S * H, F(0));
  if (logits) std::fill(logits, logits + size_t(B) * S * Vd, F(0));
  const Eagle3LossOptions none;
  parallel_chunks(B, threads, [&](int tid, int b0, int b1) {
    for (int b = b0; b < b1; ++b)
      run_sequence(acts[size_t(tid)], tokens + size_t(b) * R, features + size_t(b) * R * 3 * H, (const F*)nullptr, embed,
                   nullptr, nullptr, T, std::min(steps, T), (F*)nullptr, 0.0, none, nullptr,
                   h ? h + size_t(b) * S * H : nullptr, logits ? logits + size_t(b) * S * Vd : nullptr);
  });
}

template class Eagle3Trainer<float>;
template class Eagle3Trainer<double>;

}  // namespace train
}  // namespace specdec

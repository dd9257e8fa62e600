// One Llama decoder layer of one sequence, forward and backward, shared by the causal-LM trainer
// (llama_train.cc) and the EAGLE-head trainer (eagle_train.cc):
//   xm = x + o_proj(attention(rope(q), rope(k), v)) of h1,  h1 = rmsnorm(x) (or x itself: EAGLE's
//   first layer has no input norm),
//   xn = xm + down(silu(gate(h2)) * up(h2)),  h2 = rmsnorm(xm).
// Activations live in the caller's storage (LayerActs points into it); the backward accumulates
// into the parameter gradients G and turns dx (d loss / d xn on entry) into d loss / d x.
#pragma once
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels.h"

namespace specdec {
namespace train {

// Offsets of one layer's tensors in a ParamSet's flat buffer; attn_norm may be kNoParam.
constexpr size_t kNoParam = static_cast<size_t>(-1);
struct LayerOff {
  size_t attn_norm, q, k, v, o, mlp_norm, gate, up, down;
};

struct LayerDims {
  int T, H, I, NH, NKV, D;
  double eps;
};

// One layer's activations of one sequence (pointers into the caller's storage).
template <typename F>
struct LayerActs {
  const F* x;  // [T, H] input
  F *xm, *xn;  // [T, H] after the attention block / the layer's output
  F *h1, *h2;  // [T, H] inputs of the attention / MLP projections
  F *inv1, *inv2;  // [T] rmsnorm scales
  F *q, *k, *v, *att;  // [T, NH*D] / [T, NKV*D] (q, k after RoPE)
  F* probs;  // [NH, T, T]
  F *gate, *up, *act;  // [T, I]
};

// Backward scratch of one layer (reused layer after layer).
template <typename F>
struct LayerScratch {
  std::vector<F> dh, dq, dk, dv, datt, dact, dgate, dup, dp;
  void resize(const LayerDims& d) {
    const size_t t = size_t(d.T), QD = size_t(d.NH) * d.D, KD = size_t(d.NKV) * d.D;
    dh.assign(t * d.H, 0);
    dq.assign(t * QD, 0);
    datt.assign(t * QD, 0);
    dk.assign(t * KD, 0);
    dv.assign(t * KD, 0);
    dact.assign(t * d.I, 0);
    dgate.assign(t * d.I, 0);
    dup.assign(t * d.I, 0);
    dp.assign(t, 0);
  }
};

// Every layer's activations of one sequence of T positions, in one block per kind ([L][...]), and
// its slices per layer: the storage both trainers keep for the backward pass.
template <typename F>
struct LayerStack {
  std::vector<F> xs;  // [L+1][T, H] residual stream entering each layer (xs[L]: after the last)
  std::vector<F> xmid, h1, h2, inv1, inv2, q, k, v, att, probs, gate, up, act;

  void resize(const LayerDims& d, int L) {
    const size_t l = size_t(L), t = size_t(d.T), H = size_t(d.H), I = size_t(d.I);
    const size_t QD = size_t(d.NH) * d.D, KD = size_t(d.NKV) * d.D;
    xs.assign((l + 1) * t * H, 0);
    xmid.assign(l * t * H, 0);
    h1.assign(l * t * H, 0);
    h2.assign(l * t * H, 0);
    inv1.assign(l * t, 0);
    inv2.assign(l * t, 0);
    q.assign(l * t * QD, 0);
    att.assign(l * t * QD, 0);
    k.assign(l * t * KD, 0);
    v.assign(l * t * KD, 0);
    probs.assign(l * size_t(d.NH) * t * t, 0);
    gate.assign(l * t * I, 0);
    up.assign(l * t * I, 0);
    act.assign(l * t * I, 0);
  }

  // Layer l's slices (input xs[l], output xs[l + 1]).
  LayerActs<F> layer(const LayerDims& d, int l) {
    const size_t L = size_t(l), t = size_t(d.T), TH = t * d.H, TQ = t * d.NH * d.D, TK = t * d.NKV * d.D, TI = t * d.I;
    return {&xs[L * TH], &xmid[L * TH], &xs[(L + 1) * TH], &h1[L * TH], &h2[L * TH], &inv1[L * t], &inv2[L * t],
            &q[L * TQ], &k[L * TK], &v[L * TK], &att[L * TQ], &probs[L * d.NH * t * t], &gate[L * TI], &up[L * TI],
            &act[L * TI]};
  }
};

// RoPE tables [T, D/2] (HF rotate_half), position = row; grown on demand.
template <typename F>
struct RopeTable {
  std::vector<F> cos, sin;
  int T = 0;
  void ensure(int T_, int D, double theta) {
    if (T_ <= T) return;
    const int half = D / 2;
    cos.assign(size_t(T_) * half, 0);
    sin.assign(size_t(T_) * half, 0);
    for (int i = 0; i < half; ++i) {
      // As the runner: inverse frequency computed in double, stored in F; angle = pos * f in F.
      const F f = F(1.0 / std::pow(theta, (2.0 * i) / D));
      for (int t = 0; t < T_; ++t) {
        const F angle = F(t) * f;
        cos[size_t(t) * half + i] = std::cos(angle);
        sin[size_t(t) * half + i] = std::sin(angle);
      }
    }
    T = T_;
  }
};

template <typename F>
void layer_forward(const LayerActs<F>& a, const F* W, const LayerOff& o, const RopeTable<F>& rope, const LayerDims& d) {
  const int T = d.T, H = d.H, QD = d.NH * d.D, KD = d.NKV * d.D;
  const size_t TH = size_t(T) * H, TI = size_t(T) * d.I;
  if (o.attn_norm == kNoParam)
    std::memcpy(a.h1, a.x, sizeof(F) * TH);
  else
    rmsnorm_forward(a.h1, a.inv1, a.x, W + o.attn_norm, T, H, d.eps);
  linear_forward(a.q, a.h1, W + o.q, (const F*)nullptr, T, H, QD);
  linear_forward(a.k, a.h1, W + o.k, (const F*)nullptr, T, H, KD);
  linear_forward(a.v, a.h1, W + o.v, (const F*)nullptr, T, H, KD);
  rope_forward(a.q, rope.cos.data(), rope.sin.data(), T, d.NH, d.D);
  rope_forward(a.k, rope.cos.data(), rope.sin.data(), T, d.NKV, d.D);
  attention_forward(a.att, a.probs, a.q, a.k, a.v, T, d.NH, d.NKV, d.D);
  linear_forward(a.xm, a.att, W + o.o, (const F*)nullptr, T, QD, H);
  for (size_t i = 0; i < TH; ++i) a.xm[i] += a.x[i];
  rmsnorm_forward(a.h2, a.inv2, a.xm, W + o.mlp_norm, T, H, d.eps);
  linear_forward(a.gate, a.h2, W + o.gate, (const F*)nullptr, T, H, d.I);
  linear_forward(a.up, a.h2, W + o.up, (const F*)nullptr, T, H, d.I);
  swiglu_forward(a.act, a.gate, a.up, int64_t(TI));
  linear_forward(a.xn, a.act, W + o.down, (const F*)nullptr, T, d.I, H);
  for (size_t i = 0; i < TH; ++i) a.xn[i] += a.xm[i];
}

// dx: d loss / d xn on entry, d loss / d x on return (the residuals pass it through; the branches add).
template <typename F>
void layer_backward(F* dx, const LayerActs<F>& a, const F* W, F* G, const LayerOff& o, const RopeTable<F>& rope,
                    const LayerDims& d, LayerScratch<F>& s) {
  const int T = d.T, H = d.H, QD = d.NH * d.D, KD = d.NKV * d.D;
  const int64_t TI = int64_t(T) * d.I;
  // MLP block.
  std::fill(s.dact.begin(), s.dact.end(), F(0));
  linear_backward(s.dact.data(), G + o.down, (F*)nullptr, dx, a.act, W + o.down, T, d.I, H);
  swiglu_backward(s.dgate.data(), s.dup.data(), s.dact.data(), a.gate, a.up, TI);
  std::fill(s.dh.begin(), s.dh.end(), F(0));
  linear_backward(s.dh.data(), G + o.gate, (F*)nullptr, s.dgate.data(), a.h2, W + o.gate, T, H, d.I);
  linear_backward(s.dh.data(), G + o.up, (F*)nullptr, s.dup.data(), a.h2, W + o.up, T, H, d.I);
  rmsnorm_backward(dx, G + o.mlp_norm, s.dh.data(), a.xm, W + o.mlp_norm, a.inv2, T, H);
  // Attention block.
  std::fill(s.datt.begin(), s.datt.end(), F(0));
  linear_backward(s.datt.data(), G + o.o, (F*)nullptr, dx, a.att, W + o.o, T, QD, H);
  std::fill(s.dq.begin(), s.dq.end(), F(0));
  std::fill(s.dk.begin(), s.dk.end(), F(0));
  std::fill(s.dv.begin(), s.dv.end(), F(0));
  attention_backward(s.dq.data(), s.dk.data(), s.dv.data(), s.dp.data(), s.datt.data(), a.probs, a.q, a.k, a.v, T, d.NH,
                     d.NKV, d.D);
  rope_backward(s.dq.data(), rope.cos.data(), rope.sin.data(), T, d.NH, d.D);
  rope_backward(s.dk.data(), rope.cos.data(), rope.sin.data(), T, d.NKV, d.D);
  std::fill(s.dh.begin(), s.dh.end(), F(0));
  linear_backward(s.dh.data(), G + o.q, (F*)nullptr, s.dq.data(), a.h1, W + o.q, T, H, QD);
  linear_backward(s.dh.data(), G + o.k, (F*)nullptr, s.dk.data(), a.h1, W + o.k, T, H, KD);
  linear_backward(s.dh.data(), G + o.v, (F*)nullptr, s.dv.data(), a.h1, W + o.v, T, H, KD);
  if (o.attn_norm == kNoParam)
    axpy(dx, s.dh.data(), F(1), T * H);
  else
    rmsnorm_backward(dx, G + o.attn_norm, s.dh.data(), a.x, W + o.attn_norm, a.inv1, T, H);
}

}  // namespace train
}  // namespace specdec

// Medusa-head trainer on frozen target hidden states (FasterDecoding layout and semantics):
// head h: cur_0 = hidden, cur_{l+1} = cur_l + SiLU(W_{h,l} cur_l + b_{h,l}), logits = LM_h cur_L,
// trained with cross-entropy against the token h + 2 positions ahead.
#include <cmath>
#include <cstring>

#include "../core/error.h"
#include "kernels.h"
#include "train.h"

namespace specdec {
namespace train {

template <typename F>
MedusaTrainer<F>::MedusaTrainer(const MedusaShape& s, uint64_t seed) : s_(s) {
  SPECDEC_CHECK(s.heads > 0 && s.layers >= 0 && s.hidden > 0 && s.vocab > 0, "E_ARG",
                "config: numHeads, hiddenSize and vocabSize must be positive and numLayers >= 0");
  const int64_t H = s.hidden, V = s.vocab;
  w_.resize(size_t(s.heads));
  b_.resize(size_t(s.heads));
  for (int h = 0; h < s.heads; ++h) {
    for (int l = 0; l < s.layers; ++l) {
      const std::string pre = std::to_string(h) + "." + std::to_string(l) + ".linear.";
      w_[size_t(h)].push_back(p_.add(pre + "weight", {H, H}, true));
      b_[size_t(h)].push_back(p_.add(pre + "bias", {H}, false));
    }
    lm_.push_back(p_.add(std::to_string(h) + "." + std::to_string(s.layers) + ".weight", {V, H}, true));
  }
  // Random init (the training driver usually overwrites it: LM heads copied from the target,
  // ResBlocks zero, as FasterDecoding does).
  Rng rng(seed);
  for (const ParamInfo& p : p_.info) {
    const double sd = p.shape.size() == 1 ? 0.1 : 1.0 / std::sqrt(double(H));
    for (size_t i = 0; i < p.numel; ++i) p_.w[p.offset + i] = F(rng.normal() * sd);
  }
}

namespace {
// One head's activations over the rows of one sequence.
template <typename F>
struct HeadActs {
  std::vector<F> cur;  // [L+1][T, H] (cur[0] is a copy of the hidden states)
  std::vector<F> pre;  // [L][T, H] pre-activations W cur + b
  std::vector<F> logits, dlogits, dcur, dpre;
  std::vector<int32_t> targets;
};
}  // namespace

template <typename F>
double MedusaTrainer<F>::forward_backward(const F* hidden, const int32_t* tokens, int B, int T, int threads,
                                          std::vector<double>* head_loss, std::vector<double>* head_acc) {
  SPECDEC_CHECK(B > 0 && T > 0, "E_ARG", "batch and seqLen must be positive, got ", B, " and ", T);
  const int NHd = s_.heads, L = s_.layers, H = s_.hidden, V = s_.vocab;
  for (size_t i = 0; i < size_t(B) * T; ++i)
    SPECDEC_CHECK(tokens[i] >= 0 && tokens[i] < V, "E_ARG", "tokens[", i, "] = ", tokens[i],
                  " is outside the vocabulary [0, ", V, ")");
  threads = std::max(1, std::min(threads, B));
  std::vector<std::vector<F>> grads(size_t(threads - 1), std::vector<F>(p_.w.size(), F(0)));
  std::fill(p_.g.begin(), p_.g.end(), F(0));
  // Per (thread, head) summed loss and hits.
  std::vector<double> loss_sum(size_t(threads) * NHd, 0.0);
  std::vector<int> hits(size_t(threads) * NHd, 0);
  // Head h has a target at positions t < T - h - 2 of every sequence.
  std::vector<int64_t> count(static_cast<size_t>(NHd), 0);
  for (int h = 0; h < NHd; ++h) count[size_t(h)] = int64_t(B) * std::max(0, T - h - 2);
  const F* W = p_.w.data();
  const size_t TH = size_t(T) * H;

  parallel_chunks(B, threads, [&](int tid, int b0, int b1) {
    F* G = tid == 0 ? p_.g.data() : grads[size_t(tid - 1)].data();
    HeadActs<F> a;
    a.cur.resize((size_t(L) + 1) * TH);
    a.pre.resize(size_t(L) * TH);
    a.logits.resize(size_t(T) * V);
    a.dlogits.resize(size_t(T) * V);
    a.dcur.resize(TH);
    a.dpre.resize(TH);
    a.targets.resize(size_t(T));
    for (int b = b0; b < b1; ++b) {
      for (int h = 0; h < NHd; ++h) {
        if (count[size_t(h)] == 0) continue;
        for (int t = 0; t < T; ++t) a.targets[size_t(t)] = t + h + 2 < T ? tokens[size_t(b) * T + t + h + 2] : -1;
        // Forward through the ResBlocks and the head's LM head.
        std::memcpy(a.cur.data(), hidden + size_t(b) * TH, sizeof(F) * TH);
        for (int l = 0; l < L; ++l) {
          const F* c = &a.cur[size_t(l) * TH];
          F* p = &a.pre[size_t(l) * TH];
          F* n = &a.cur[size_t(l + 1) * TH];
          linear_forward(p, c, W + w_[size_t(h)][size_t(l)], W + b_[size_t(h)][size_t(l)], T, H, H);
          for (size_t i = 0; i < TH; ++i) n[i] = c[i] + p[i] * sigmoid(p[i]);
        }
        const F* last = &a.cur[size_t(L) * TH];
        linear_forward(a.logits.data(), last, W + lm_[size_t(h)], (const F*)nullptr, T, H, V);
        const F dscale = F(1.0 / double(count[size_t(h)]));
        int hit = 0;
        loss_sum[size_t(tid) * NHd + h] +=
            cross_entropy(a.dlogits.data(), a.logits.data(), a.targets.data(), T, V, dscale, &hit);
        hits[size_t(tid) * NHd + h] += hit;
        // Backward (the target is frozen: no gradient into the hidden states).
        std::fill(a.dcur.begin(), a.dcur.end(), F(0));
        linear_backward(L > 0 ? a.dcur.data() : (F*)nullptr, G + lm_[size_t(h)], (F*)nullptr, a.dlogits.data(), last,
                        W + lm_[size_t(h)], T, H, V);
        for (int l = L - 1; l >= 0; --l) {
          const F* p = &a.pre[size_t(l) * TH];
          // d pre = d cur_{l+1} * silu'(pre); the residual passes d cur_{l+1} to cur_l unchanged.
          for (size_t i = 0; i < TH; ++i) {
            const F sg = sigmoid(p[i]);
            a.dpre[i] = a.dcur[i] * sg * (F(1) + p[i] * (F(1) - sg));
          }
          linear_backward(l > 0 ? a.dcur.data() : (F*)nullptr, G + w_[size_t(h)][size_t(l)], G + b_[size_t(h)][size_t(l)],
                          a.dpre.data(), &a.cur[size_t(l) * TH], W + w_[size_t(h)][size_t(l)], T, H, H);
        }
      }
    }
  });
  for (const auto& g : grads)
    for (size_t i = 0; i < g.size(); ++i) p_.g[i] += g[i];
  double total = 0;
  if (head_loss) head_loss->assign(size_t(NHd), 0.0);
  if (head_acc) head_acc->assign(size_t(NHd), 0.0);
  for (int h = 0; h < NHd; ++h) {
    double l = 0;
    int hit = 0;
    for (int t = 0; t < threads; ++t) {
      l += loss_sum[size_t(t) * NHd + h];
      hit += hits[size_t(t) * NHd + h];
    }
    const double n = double(std::max<int64_t>(1, count[size_t(h)]));
    total += l / n;
    if (head_loss) (*head_loss)[size_t(h)] = l / n;
    if (head_acc) (*head_acc)[size_t(h)] = hit / n;
  }
  return total;
}

template <typename F>
void MedusaTrainer<F>::forward(const F* hidden, int64_t N, F* logits, int threads) {
  const int NHd = s_.heads, L = s_.layers, H = s_.hidden, V = s_.vocab;
  const F* W = p_.w.data();
  // Rows are independent: split them over the threads.
  parallel_chunks(int(N), threads, [&](int, int r0, int r1) {
    const int n = r1 - r0;
    std::vector<F> cur(size_t(n) * H), pre(size_t(n) * H);
    for (int h = 0; h < NHd; ++h) {
      std::memcpy(cur.data(), hidden + size_t(r0) * H, sizeof(F) * size_t(n) * H);
      for (int l = 0; l < L; ++l) {
        linear_forward(pre.data(), cur.data(), W + w_[size_t(h)][size_t(l)], W + b_[size_t(h)][size_t(l)], n, H, H);
        for (size_t i = 0; i < pre.size(); ++i) cur[i] += pre[i] * sigmoid(pre[i]);
      }
      linear_forward(logits + (size_t(h) * N + r0) * V, cur.data(), W + lm_[size_t(h)], (const F*)nullptr, n, H, V);
    }
  });
}

template class MedusaTrainer<float>;
template class MedusaTrainer<double>;

}  // namespace train
}  // namespace specdec

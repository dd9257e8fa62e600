// The project's own trainer: a Llama-family causal LM (the architecture cpp/model/llama.cc runs)
// and Medusa heads on its final hidden states, with hand-written backward passes, cross-entropy,
// AdamW with global-norm gradient clipping, and std::thread parallelism over the batch.
//
// Everything is templated on the scalar type F: float for training, double for the
// finite-difference gradient checks of the tests. Parameters live in one flat buffer per model
// (ParamSet), listed under their Hugging Face / FasterDecoding tensor names, so saving a
// checkpoint is a walk over the list.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "decoder_layer.h"

namespace specdec {
namespace train {

// One named tensor inside a ParamSet's flat buffer.
struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;
  size_t numel = 0;
  bool decay = false;  // AdamW weight decay applies (matrices; not norms or biases)
};

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double clip = 1.0;  // max global gradient norm; <= 0 disables clipping
};

// Parameters, their gradients and the AdamW moments, all flat.
template <typename F>
struct ParamSet {
  std::vector<ParamInfo> info;
  std::vector<F> w, g;
  std::vector<F> m, v;  // AdamW moments (allocated on the first step)
  int64_t step = 0;

  size_t add(const std::string& name, std::vector<int64_t> shape, bool decay);
  const ParamInfo& find(const std::string& name) const;  // E_ARG naming the tensor if absent
  // Clips g to opts.clip (global L2 norm), then one AdamW step on w. Returns the norm before clipping.
  double adamw_step(const AdamWOptions& opts);
};

struct LlamaShape {
  int vocab = 0, hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  double rms_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie = false;  // lm_head shares model.embed_tokens.weight
};

template <typename F>
class LlamaTrainer {
 public:
  using Scalar = F;
  LlamaTrainer(const LlamaShape& shape, uint64_t seed);

  const LlamaShape& shape() const { return s_; }
  ParamSet<F>& params() { return p_; }
  const ParamSet<F>& params() const { return p_; }

  // tokens [B, T + 1]: inputs are columns 0..T-1, targets columns 1..T. Sets params().g to the
  // gradient of the mean cross-entropy over the B*T predictions and returns that mean.
  double forward_backward(const int32_t* tokens, int B, int T, int threads);
  // Mean cross-entropy only (no gradient).
  double eval_loss(const int32_t* tokens, int B, int T, int threads);
  // tokens [B, T]: logits [B*T, V] and/or final hidden states after the last norm [B*T, H]
  // (either may be null). With aux_layers (A of them, each in [0, layers)): aux [B*T, A*H], row t the
  // residual streams entering those layers (layer 0: the embeddings), side by side (EAGLE-3's features).
  void forward(const int32_t* tokens, int B, int T, F* logits, F* hidden, int threads,
               const std::vector<int>& aux_layers = {}, F* aux = nullptr);

  // Validates token ids and sizes (E_ARG naming the argument).
  void check_tokens(const int32_t* tokens, size_t count, int B, int T, const char* name) const;

 private:
  struct Acts;  // one sequence's activations, reused per thread
  LlamaShape s_;
  ParamSet<F> p_;
  std::vector<LayerOff> lo_;  // each layer's tensors in p_.w (and p_.g)
  size_t embed_ = 0, norm_ = 0, lm_head_ = 0;
  RopeTable<F> rope_;
  // One sequence: forward into `a`; if targets != null also the loss and (if grad != null) backward.
  double run_sequence(Acts& a, const int32_t* ids, const int32_t* targets, int T, F* grad, F dscale, F* logits_out,
                      F* hidden_out);
};

struct MedusaShape {
  int heads = 0, layers = 0, hidden = 0, vocab = 0;
};

// Medusa heads (FasterDecoding layout): head h = `layers` ResBlocks x + SiLU(W x + b), then its own
// LM head; head h predicts the token h + 2 positions after the hidden state's position.
template <typename F>
class MedusaTrainer {
 public:
  using Scalar = F;
  MedusaTrainer(const MedusaShape& shape, uint64_t seed);

  const MedusaShape& shape() const { return s_; }
  ParamSet<F>& params() { return p_; }

  // hidden [N, H] rows of B sequences of T positions (N = B*T), tokens [B, T] the same positions'
  // ids. Loss = sum over heads of that head's mean cross-entropy over the positions that have a
  // target (t + h + 2 < T). Sets params().g; returns the loss, per-head losses and top-1 accuracies.
  double forward_backward(const F* hidden, const int32_t* tokens, int B, int T, int threads, std::vector<double>* head_loss,
                          std::vector<double>* head_acc);
  // Logits [heads, N, V] of rows hidden [N, H].
  void forward(const F* hidden, int64_t N, F* logits, int threads);

 private:
  MedusaShape s_;
  ParamSet<F> p_;
  std::vector<std::vector<size_t>> w_, b_;  // [head][layer] offsets
  std::vector<size_t> lm_;                  // [head] offsets
};

// An EAGLE head's layers have a Llama layer's sizes (`tie` unused: the LM head is the target's).
struct EagleShape : LlamaShape {
  bool fc_bias = true;
};

// The checks both trainers make of their layer sizes (E_ARG naming the bad one).
void check_layer_shape(const LlamaShape& s);
// Adds one decoder layer's tensors (HF names under `prefix`; without input_layernorm when
// attn_norm is false) to p and returns their offsets.
template <typename F>
LayerOff add_layer(ParamSet<F>& p, const std::string& prefix, const LlamaShape& s, bool attn_norm);

// EAGLE-1/2 losses (SafeAILab's eagle/train/main.py): v_weight * SmoothL1(h_j, f_{j+1}) averaged
// over rows and features + p_weight * cross-entropy of the head's logits against the target's
// softmax at the next position, averaged over rows.
struct EagleLossOptions {
  double v_weight = 1.0;
  double p_weight = 0.1;
  double noise = 0.0;      // uniform noise on the input features: + (u - 1/2) * noise
  uint64_t noise_seed = 0;
};

struct EagleStats {
  double loss = 0, v_loss = 0, p_loss = 0;
  double accuracy = 0;  // argmax of the head's logits == argmax of the target's, over rows
};

// An EAGLE-1/2 head (SafeAILab's layout: fc [H, 2H] (+ bias) over [embed(token); feature], Llama
// decoder layers, the first without its input norm) trained on a frozen target: row j reads token
// t[j + 1] and the target's final hidden state f[j] (after its norm) at position j, and learns
// f[j + 1]; its logits are the target's LM head applied to the layers' output (no norm). The
// target's embedding table and LM head are inputs, never trained.
template <typename F>
class EagleTrainer {
 public:
  using Scalar = F;
  EagleTrainer(const EagleShape& shape, uint64_t seed);

  const EagleShape& shape() const { return s_; }
  ParamSet<F>& params() { return p_; }

  // tokens [B, T + 1], features [B, T + 1, H] and target logits [B, T + 1, V] of the same
  // positions; embed and lm_head [V, H]. Sets params().g to the gradient of the loss over the
  // B * T rows and returns it with its parts.
  EagleStats forward_backward(const int32_t* tokens, const F* features, const F* target_logits, const F* embed,
                              const F* lm_head, int B, int T, const EagleLossOptions& opts, int threads);
  // The layers' output h [B * T, H] and/or its logits [B * T, V] (either may be null); no noise.
  void forward(const int32_t* tokens, const F* features, const F* embed, const F* lm_head, int B, int T, F* h, F* logits,
               int threads);

 private:
  struct Acts;
  EagleShape s_;
  ParamSet<F> p_;
  size_t fc_ = 0, fc_bias_ = kNoParam;
  std::vector<LayerOff> lo_;
  RopeTable<F> rope_;

  // Checks tokens [B, T + 1] (E_ARG naming the bad id) and grows the RoPE table.
  void prepare(const int32_t* tokens, int B, int T);
  // One sequence (T rows); targets != null: losses into *stats and (if G) the backward.
  void run_sequence(Acts& a, const int32_t* tokens, const F* features, const F* target_logits, const F* embed,
                    const F* lm_head, int T, F* G, double scale, const EagleLossOptions& opts, uint64_t noise_stream,
                    EagleStats* stats, F* h_out, F* logits_out);
};

// An EAGLE-3 head (SafeAILab's eagle/traineagle3 layout): fc [H, 3H] (no bias) over three of the
// target's residual streams, one "midlayer" -- attention and MLP of a Llama layer whose q/k/v read
// [input_layernorm(embed(token)); hidden_norm(x)] (2H wide) and whose residual is x -- then norm and
// its own LM head over a draft vocabulary (the target ids draft_ids[d], ascending). layers == 1.
struct Eagle3Shape : LlamaShape {
  int draft_vocab = 0;
};

// Training-time test: `steps` unrolled steps; step s feeds row j token t[j + s + 1] at position
// j + s, with x = fc(features[j]) at step 0 and step s - 1's output of row j after it; row j of step
// s attends to step 0's rows 0..j and to its own row of steps 1..s. Its loss is the soft
// cross-entropy against the target's softmax over the draft vocabulary at position j + s + 1, kept
// where the target's argmax is in the draft vocabulary, summed over rows / (B * T) and weighted
// decay^s (SafeAILab: 7 steps, 0.8).
struct Eagle3LossOptions {
  int steps = 7;
  double decay = 0.8;
};

struct Eagle3Stats {
  double loss = 0;
  std::vector<double> step_loss;  // per step, unweighted
  std::vector<double> step_acc;   // per step: rows whose head argmax is the target's argmax / rows with a target
};

template <typename F>
class Eagle3Trainer {
 public:
  using Scalar = F;
  Eagle3Trainer(const Eagle3Shape& shape, uint64_t seed);

  const Eagle3Shape& shape() const { return s_; }
  ParamSet<F>& params() { return p_; }

  // tokens [B, T + 1], features [B, T + 1, 3H] (the three residual streams of each position, in
  // layer order), target logits [B, T + 1, V], embed [V, H] (frozen), draft_ids [Vd] (ascending
  // target ids). Sets params().g; returns the loss with its parts.
  Eagle3Stats forward_backward(const int32_t* tokens, const F* features, const F* target_logits, const F* embed,
                               const int32_t* draft_ids, int B, int T, const Eagle3LossOptions& opts, int threads);
  // Each step's output h [B, steps, T, H] (before the norm) and logits [B, steps, T, Vd] (either may
  // be null); rows past the window (j + s >= T) are zero.
  void forward(const int32_t* tokens, const F* features, const F* embed, int B, int T, int steps, F* h, F* logits,
               int threads);
  // Checks draft ids (E_ARG naming the bad one): Vd ascending ids in [0, V).
  void check_draft_ids(const int32_t* ids, size_t n) const;

 private:
  struct Acts;
  Eagle3Shape s_;
  ParamSet<F> p_;
  size_t fc_ = 0, in_norm_ = 0, hid_norm_ = 0, q_ = 0, k_ = 0, v_ = 0, o_ = 0, post_norm_ = 0, gate_ = 0, up_ = 0,
         down_ = 0, norm_ = 0, lm_ = 0;
  RopeTable<F> rope_;

  void prepare(const int32_t* tokens, int B, int T, int steps);
  void run_sequence(Acts& a, const int32_t* tokens, const F* features, const F* target_logits, const F* embed,
                    const int32_t* draft_ids, const std::vector<uint8_t>* in_draft, int T, int steps, F* G, double scale,
                    const Eagle3LossOptions& opts, Eagle3Stats* stats, F* h_out, F* logits_out);
};

}  // namespace train
}  // namespace specdec

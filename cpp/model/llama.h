// Llama-family model runner (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM,
// Phi3ForCausalLM, SmolLM3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM) on the op
// contracts of ops_layers.h / ops_attention.h and the paged KvCache. Device agnostic: the same code
// runs on the CPU and CUDA backends, the ops dispatch on the tensors' device.
//
// The config arrives already parsed and validated (lib/models/config.ts); the runner validates
// every weight against it (presence, shape, float dtype) and names the file and tensor on failure.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "../core/kv_cache.h"
#include "../core/ops_sampling.h"
#include "../core/tensor.h"
#include "../cpu/matmul_serial.h"

namespace specdec {

struct LlamaConfig {
  std::string architecture;  // LlamaForCausalLM | MistralForCausalLM | Qwen2ForCausalLM | Qwen3ForCausalLM | Phi3ForCausalLM | ... (lib/models/config.ts)
  int vocab_size = 0;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_positions = 0;
  float rms_norm_eps = 1e-6f;
  double rope_theta = 10000.0;
  int rope_dim = 0;  // values of each head that rotate (head_dim; fewer: partial_rotary_factor); 0 = head_dim
  std::vector<uint8_t> rope_layers;  // per layer 1 = rotate q and k, 0 = no position encoding (SmolLM3); empty = all
  // Per layer, its sliding attention window (ops::tree_attention's window: the last N positions), 0 =
  // full attention; empty = full everywhere (Mistral v0.1 / Phi-3: every layer; Qwen: layer_types).
  std::vector<int32_t> attention_windows;
  // Gemma 3: layers flagged 1 here rotate with base rope_local_theta and no scaling (its sliding
  // layers' rope_local_base_freq), the others with rope_theta and rope_scaling; empty = all global.
  double rope_local_theta = 0.0;
  std::vector<uint8_t> rope_local_layers;
  double attn_scale = 0.0;         // softmax scale of q.k; 0 = 1/sqrt(head_dim) (Gemma: query_pre_attn_scalar^-1/2)
  bool gelu_mlp = false;           // GeGLU with gelu_pytorch_tanh (Gemma) instead of SwiGLU
  float norm_offset = 0.f;         // every RMSNorm multiplies by offset + w, in f32 (Gemma: 1)
  bool sandwich_norms = false;     // Gemma: post_attention_layernorm on the attention output, pre_ / post_feedforward_layernorm around the MLP
  // OLMo 2 / EXAONE 4: no norm before a block; post_attention_layernorm / post_feedforward_layernorm
  // on the block outputs before their residual adds. q_norm / k_norm over the whole q / k projections
  // (OLMo 2), or per head with qk_norm (EXAONE 4).
  bool post_norms = false;
  bool scale_embeddings = false;   // Gemma: embeddings times sqrt(hidden_size), rounded to the table's dtype
  double attn_softcap = 0.0;       // Gemma 2: attention scores softcap tanh(s / softcap); 0 = none
  double final_softcap = 0.0;      // Gemma 2: logits softcap tanh(z / softcap); 0 = none
  // Granite: embeddings times embedding_multiplier, each block's output times residual_multiplier
  // before its residual add, the logits divided by logits_scaling (1 = none).
  double embedding_multiplier = 1.0;
  double residual_multiplier = 1.0;
  double logits_scaling = 1.0;
  // rope_scaling: "" (none), "linear" (factor), "llama3" (all four fields) or "longrope" (below).
  std::string rope_type;
  double rope_factor = 1.0;
  double rope_low_freq_factor = 1.0;
  double rope_high_freq_factor = 4.0;
  double rope_original_max_positions = 8192.0;
  // "longrope" (Phi-3): frequency i divided by rope_ext_factors[i] (head_dim / 2 of them), and the
  // rotated values of q and k scaled by rope_attention_factor (cos and sin times it, as HF).
  std::vector<double> rope_ext_factors;
  double rope_attention_factor = 1.0;
  // "yarn": frequencies between the factor-interpolated and the unscaled ones by a linear ramp over
  // the dimensions from beta_fast to beta_slow rotations in rope_original_max_positions (HF
  // _compute_yarn_parameters; truncate: the ramp's ends rounded out), cos and sin times
  // rope_attention_factor.
  double rope_beta_fast = 32.0;
  double rope_beta_slow = 1.0;
  bool rope_yarn_truncate = true;
  bool qkv_bias = false;             // q/k/v projections carry biases (Qwen2; Llama / Qwen3 attention_bias)
  bool o_bias = false;               // o_proj carries a bias (Llama / Qwen3 attention_bias)
  bool qk_norm = false;              // q, k RMS-normalized per head before RoPE (Qwen3 q_norm, k_norm)
  bool fused_projections = false;    // qkv_proj = [q; k; v] and gate_up_proj = [gate; up] rows (Phi-3)
  bool tie_word_embeddings = false;  // lm_head = embed_tokens (also when lm_head.weight is absent)
};

// Where the weights are: a directory plus either one file or a weight map (sharded checkpoints,
// model.safetensors.index.json) from tensor name to file name (relative to dir).
struct LlamaWeightSource {
  std::string dir;
  std::string file;                               // single-file checkpoint (when weight_map is empty)
  std::map<std::string, std::string> weight_map;  // sharded checkpoint
  // Names of the decoder's tensors: {prefix of embed_tokens / layers / norm, the LM head's name},
  // tried in order (the first whose embed_tokens exists). Empty: {"model.", "lm_head.weight"}. A
  // multimodal checkpoint's text model: "language_model.model." or "model.language_model.".
  std::vector<std::pair<std::string, std::string>> layouts;
};

struct LlamaLoadOptions {
  Device device = Device::cpu;
  int page_size = 16;
  int num_pages = 0;      // KV pages (each page_size tokens, all layers)
  DType kv_dtype = DType::f32;
};

// One sequence's new tokens in a forward: a chain (parents and mask empty), a tree (parents), or
// any visibility pattern (mask, `mask_words` u64 words per row).
struct LlamaSeqInput {
  int seq = -1;
  std::vector<int32_t> tokens;
  std::vector<int32_t> parents;    // empty: chain; else parents[i] in [-1, i)
  std::vector<int32_t> positions;  // empty: committed length + depth
  std::vector<uint64_t> mask;      // empty, or tokens.size() * mask_words words
  int mask_words = 0;
  // Optional: tokens[1..] are tail[tail_offset ..] on the model's device (i32 ids known to be below
  // the vocabulary size: a draft chain's picks), and tokens[1..] here are placeholders. The draft's
  // tokens then go from the draft to the target without a round trip through the host.
  Tensor tail;
  int64_t tail_offset = 0;
};

// What the verification of a forward's own trees needs beyond the forward's inputs: the trees'
// parents as verification reads them (-2 for non-candidates), and per-sequence Philox keys and
// counters when it samples. They travel in the forward's one upload (LlamaForwardResult::staged).
struct VerifyStaging {
  std::vector<int32_t> parents;           // [N], inputs concatenated; local indices
  std::vector<uint64_t> seeds, offsets;   // [B] each, or both empty
  std::vector<int32_t> parts;             // sequence offsets of parts verified separately (0 .. B), or empty
};

struct LlamaForwardResult {
  Tensor logits;  // f32 [N, V]; with last_only, [B, V]: row b is sequence b's last row
  Tensor hidden;  // f32 [N, H] after the final norm (only when asked)
  // With aux_layers (A of them): f32 [A, N, H], block k = the residual stream entering layer
  // aux_layers[k] (layer 0: the embeddings), e.g. EAGLE-3's features.
  Tensor aux;
  std::vector<int32_t> indptr;  // B + 1 row offsets
  std::shared_ptr<StagedTree> staged;  // with a VerifyStaging: the verification's inputs on the device
};

class LlamaModel {
 public:
  // Loads and validates the weights (E_FORMAT naming the file and tensor; E_IO when a file cannot
  // be opened) and allocates the KV cache.
  static std::unique_ptr<LlamaModel> load(const LlamaConfig& config, const LlamaWeightSource& source,
                                          const LlamaLoadOptions& options);

  const LlamaConfig& config() const { return config_; }
  Device device() const { return options_.device; }
  DType weight_dtype() const { return embed_.dtype(); }
  const KvCache& kv() const { return *kv_; }
  // The input embedding table [V, H] and the LM head [V, H] (the same tensor when tied), as stored:
  // EAGLE drafts read both (shared storage, not copies).
  const Tensor& embed_tokens() const { return embed_; }
  const Tensor& lm_head() const { return lm_head_; }

  // Runs the ragged batch of token trees; K/V of the new tokens are written speculatively after
  // each sequence's committed prefix. Validation errors (E_ARG) and E_KV_FULL leave the committed
  // state unchanged. Thread-safe with respect to the other methods (one model-wide lock).
  // With `stage`, the verification's inputs go in the same upload (result.staged).
  // last_only: logits of each sequence's last row only ([B, V], the same bits as those rows of the
  // full logits): a prompt's other rows would cost the LM head's work and N x V floats for nothing.
  // aux_layers: layer indices whose input rows are returned (result.aux).
  LlamaForwardResult forward(const std::vector<LlamaSeqInput>& inputs, bool want_hidden,
                             const VerifyStaging* stage = nullptr, bool last_only = false,
                             const std::vector<int>& aux_layers = {});

  // Estimated multiply-adds of forward(inputs): the weights' per-token work times the new tokens,
  // plus attention over each sequence's committed prefix and new tokens. The N-API glue uses it to
  // run tiny forwards on the calling thread (an event-loop round trip costs more than the work).
  // Never blocks: when another thread holds the model, prefix lengths count as max_positions.
  double estimate_macs(const std::vector<LlamaSeqInput>& inputs);

  // Greedy chain drafting in one call. For each inputs[b] (a chain: no parents, mask or positions)
  // with steps[b] >= 1: feed its tokens and commit them; then steps[b] times: t = argmax of the
  // sequence's last logits row (lowest index on ties); if steps remain, feed [t] and commit it.
  // Returns the picked tokens per input (the last one is not fed). Sequences run as one ragged
  // batch that shrinks as their steps run out, so (batch invariance) the tokens are exactly those
  // of the same forward/argmax/commit calls made one by one. On an error every sequence is
  // truncated back to its committed length at entry, and the error is rethrown.
  // penalties: the inputs' histories (hist_* over B inputs: each input's whole history, its fed
  // tokens included; row_seq and paths are the chain's own); each step's rows are penalized with
  // the input's history and its picks so far, read on the device (ops::penalize, path_source).
  // logprobs (not null, k >= 0): also each pick's log-probability and the k most probable tokens
  // of its row (ops::pick_logprobs on the row as penalized, before any sampling transform: what a
  // step's ops::token_logprobs reads), for the inputs with want[b]; read back with the picks.
  struct ChainLogprobs {
    int32_t k = 0;
    std::vector<uint8_t> want;  // per input
    // Per input (empty where not wanted): one entry per pick, and k per pick.
    std::vector<std::vector<float>> lp, top_lp;
    std::vector<std::vector<int32_t>> top_ids;
  };
  std::vector<std::vector<int32_t>> greedy_chain(const std::vector<LlamaSeqInput>& inputs,
                                                 const std::vector<int>& steps, const PenaltyArgs* penalties = nullptr,
                                                 ChainLogprobs* logprobs = nullptr);
  // The same picks left on the device (i32 [sum(steps)], input by input), with no read-back at all.
  Tensor greedy_chain_on_device(const std::vector<LlamaSeqInput>& inputs, const std::vector<int>& steps,
                                const PenaltyArgs* penalties = nullptr);

  // greedy_chain's twin for sampling: at each step, each input's last logits row is processed
  // (`params`) into probs and one token is drawn with Philox key seeds[b], counter offsets[b][j] for
  // its j-th pick (the same draws as process_logits + sample called step by step). The picks feed
  // the next step on the device and are read back once; q holds the probs row each pick was drawn
  // from, f32 [sum(steps), V] on the model's device, input by input (rows of input b start at the
  // sum of steps before b). Same error behaviour as greedy_chain.
  // keep_on_device: the picks are not read back (picks_on_device instead of picks); a draw from a
  // row without mass is kNoMass there, which the target's embedding skips and verification reports
  // as E_NUMERIC (cpp/core/spec_math.h), instead of this call's own check.
  struct SampledChain {
    std::vector<std::vector<int32_t>> picks;
    Tensor q;
    Tensor picks_on_device;  // keep_on_device: i32 [sum(steps)], input by input; picks stays empty
  };
  SampledChain sampled_chain(const std::vector<LlamaSeqInput>& inputs, const std::vector<int>& steps,
                             const SamplingParams& params, const std::vector<uint64_t>& seeds,
                             const std::vector<std::vector<uint64_t>>& offsets, bool keep_on_device = false,
                             const PenaltyArgs* penalties = nullptr, ChainLogprobs* logprobs = nullptr);

  // After forward(): accepted[i] (indices into that forward's input of seqs[i], strictly increasing,
  // a path from a root when the input was a tree) become committed. seqs must be a subset of the last
  // forward's sequences; the others keep nothing. One commit per forward. `verified`: the
  // verifications of that forward's trees (the whole batch, or parts of it); where their paths are
  // exactly `accepted`, K/V move from their device results (no upload).
  void commit(const std::vector<int>& seqs, const std::vector<std::vector<int32_t>>& accepted,
              const std::vector<const VerifiedPaths*>& verified = {});

  int create_sequence();
  int fork_sequence(int seq);
  void free_sequence(int seq);
  void truncate(int seq, int length);
  int sequence_length(int seq);
  int free_pages();

 private:
  LlamaModel() = default;

  // The loop of greedy_chain and sampled_chain (sampled when params is not null).
  SampledChain draft_chain(const std::vector<LlamaSeqInput>& inputs, const std::vector<int>& steps,
                           const SamplingParams* params, const std::vector<uint64_t>* seeds,
                           const std::vector<std::vector<uint64_t>>* offsets, bool keep_on_device = false,
                           const PenaltyArgs* penalties = nullptr, ChainLogprobs* logprobs = nullptr);

  // forward() and commit() with mu_ held by the caller. With dev_ids (i32 [N] on the model's
  // device, in range by construction), the token ids come from there and inputs' tokens only
  // give the counts (greedy_chain feeds its argmax without a round trip).
  // A chain step planned and uploaded ahead with the rest of its chain (draft_chain): the batch over
  // pages the chain has reserved, the positions, and (the first step) the ids. The inputs are
  // chains without positions; the forward then neither plans nor uploads.
  struct PlannedStep {
    PagedBatch batch;
    Tensor positions;  // i32 [N]
    Tensor ids;        // i32 [N] unless the step is fed from device ids
  };
  LlamaForwardResult forward_locked(const std::vector<LlamaSeqInput>& inputs, bool want_hidden,
                                    const Tensor* dev_ids = nullptr, const VerifyStaging* stage = nullptr,
                                    const PlannedStep* planned = nullptr, bool last_only = false,
                                    const std::vector<int>& aux_layers = {});
  void commit_locked(const std::vector<int>& seqs, const std::vector<std::vector<int32_t>>& accepted,
                     const std::vector<const VerifiedPaths*>& verified = {});

  struct Layer {
    Tensor attn_norm, q, k, v, q_bias, k_bias, v_bias, o, o_bias, mlp_norm, gate, up, down;
    Tensor post_attn_norm, post_mlp_norm;  // sandwich_norms (Gemma), post_norms (OLMo 2)
    Tensor q_norm_full, k_norm_full;       // post_norms without qk_norm (OLMo 2): RMSNorm weights over q ([heads*head_dim]) and k
    ops::QkNorm qk_norm;  // Qwen3, Gemma 3 (config.qk_norm): f32 copies of q_norm / k_norm (+ norm_offset)
    // CPU: the small projections packed for the k-serial kernel (null: the lane kernel).
    std::shared_ptr<const cpu::SerialWeight> q_s, k_s, v_s, o_s, gate_s, up_s, down_s;
  };

  LlamaConfig config_;
  LlamaLoadOptions options_;
  Tensor embed_, final_norm_, lm_head_, inv_freq_, inv_freq_local_;
  std::shared_ptr<const cpu::SerialWeight> lm_head_s_;
  float embed_scale_ = 1.f;
  std::vector<Layer> layers_;
  std::unique_ptr<KvCache> kv_;
  std::mutex mu_;
  double macs_per_token_ = 0;  // weights' multiply-adds per token (estimate_macs)

  // Activations reused across forwards (guarded by mu_): speculative steps run many small
  // forwards, and allocating ~10 buffers each time is a visible share of a tiny model's forward.
  // Rows [0, N) of each buffer serve a forward of N tokens; forwards of more than
  // kMaxScratchRows tokens (prefills) use temporaries, so a long prompt does not pin its memory.
  static constexpr int64_t kMaxScratchRows = 256;
  struct Scratch {
    int64_t rows = 0;
    Tensor x, h, q, k, v, att, o, gate, up;
  } scratch_;
  // CUDA graphs: where a forward's inputs are copied so that its graph body reads the same addresses
  // at every step (forward_locked), and where a graphed forward's aux rows are written.
  Tensor graph_in_, graph_aux_;

  // The last forward, for commit(): its plan and, per sequence, the parents (empty when its
  // input was a chain or a mask).
  bool pending_ = false;
  PagedBatch pending_batch_;
  std::vector<int> pending_seqs_;
  std::vector<std::vector<int32_t>> pending_parents_;
  std::vector<bool> pending_masked_;
};

// inv_freq [head_dim / 2] of rotary embeddings for a config (rope_theta and any scaling), computed
// in double and rounded once to f32.
std::vector<float> rope_inv_freq(const LlamaConfig& config);

}  // namespace specdec

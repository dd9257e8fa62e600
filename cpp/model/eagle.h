// An EAGLE head's draft layers as one native call (lib/strategies/eagle.ts): the same ops in the same
// order as composing them from JavaScript (embedding, fc as column blocks, Llama layers over the
// draft's paged KV cache), without a return to JavaScript between them -- some thirty op calls a
// level, which on a CPU cost more than a small head's arithmetic.
#pragma once
#include <vector>

#include "../core/ops_attention.h"
#include "../core/tensor.h"

namespace specdec {

struct EagleLayer {
  Tensor in_norm;      // undefined: EAGLE-1/2's first layer (no input norm)
  Tensor hidden_norm;  // EAGLE-3's midlayer: the norm of its hidden-state half
  Tensor q, k, v;      // [heads * D | kv_heads * D, H] (EAGLE-3: the embedding half)
  Tensor q_h, k_h, v_h;  // EAGLE-3: the hidden-state half (undefined otherwise)
  Tensor qb, kb, vb;   // optional biases
  Tensor o, post_norm, gate, up, down;
};

struct EagleWeights {
  int version = 1;  // 1: EAGLE-1/2, 3: EAGLE-3
  int heads = 0, kv_heads = 0, head_dim = 0;
  float eps = 1e-6f;
  Tensor embed;     // the head's own embedding table (EAGLE-3 heads that store one), else undefined
  Tensor fc_embed;  // EAGLE-1/2: fc's token-embedding block [H, H]
  std::vector<Tensor> fc_feature;  // fc's feature blocks [H, Ht]: one (EAGLE-1/2) or three (EAGLE-3)
  Tensor fc_bias;   // optional
  std::vector<EagleLayer> layers;
  Tensor inv_freq;  // RoPE inverse frequencies f32 [D/2]
};

// h f32 [N, H] for the rows ids i32 [N] at positions i32 [N] of a planned batch of the draft's
// cache (kv_layers: one tensor per layer); each row's K/V is written at its slot. features: the
// rows' target features (one block, or three for EAGLE-3), or with from_target false (EAGLE-3's
// deeper rows) the draft's own h [N, H]. embed: the target's table, used when w.embed is undefined.
Tensor eagle_forward(const EagleWeights& w, const Tensor& embed, const std::vector<Tensor>& kv_layers,
                     const PagedBatch& batch, const Tensor& ids, const int32_t* host_ids, const Tensor& positions,
                     const std::vector<Tensor>& features, bool from_target);

}  // namespace specdec

// An EAGLE head's draft layers as one native call (lib/strategies/eagle.ts): the same ops in the same
// order as composing them from JavaScript (embedding, fc as column blocks, Llama layers over the
// draft's paged KV cache), without a return to JavaScript between them -- some thirty op calls a
// level, which on a CPU cost more than a small head's arithmetic.
#pragma once
#include <vector>

#include "../core/kv_cache.h"
#include "../core/ops_attention.h"
#include "../core/ops_sampling.h"
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
  // The head's logits (eagle_expand): EAGLE-3's final norm and LM head over its draft vocabulary and
  // d2t (draft id -> target id; empty: the identity); EAGLE-1/2 (both undefined) use the target's LM head.
  Tensor norm, lm_head;
  std::vector<int32_t> draft_to_target;
  Tensor d2t;           // draft_to_target on the head's device (undefined: the identity)
  Tensor t2d;           // its inverse (target id -> the lowest draft id mapped to it, -1: none), [d2t_max + 1]
  int32_t d2t_max = -1;  // its largest target id
};

// h f32 [N, H] for the rows ids i32 [N] at positions i32 [N] of a planned batch of the draft's
// cache (kv_layers: one tensor per layer); each row's K/V is written at its slot. features: the
// rows' target features (one block, or three for EAGLE-3), or with from_target false (EAGLE-3's
// deeper rows) the draft's own h [N, H]. embed: the target's table, used when w.embed is undefined.
Tensor eagle_forward(const EagleWeights& w, const Tensor& embed, const std::vector<Tensor>& kv_layers,
                     const PagedBatch& batch, const Tensor& ids, const int32_t* host_ids, const Tensor& positions,
                     const std::vector<Tensor>& features, bool from_target);

// The draft's catch-up (lib/strategies/eagle.ts, catchUp) as one call: the rows of the target's
// features the draft has not read (tokens i32, positions, counts per sequence in seqs' order; row i's
// feature block k is row feat_rows[i] of feat_srcs[k][i]) through the draft layers over the draft's
// cache, every row committed; returns each sequence's last row of h f32 [B, H] (its root's state).
Tensor eagle_catch_up(const EagleWeights& w, const Tensor& embed, KvCache& cache, const std::vector<int>& seqs,
                      const std::vector<int>& counts, const std::vector<int32_t>& tokens,
                      const std::vector<int32_t>& positions, const std::vector<std::vector<Tensor>>& feat_srcs,
                      const std::vector<int64_t>& feat_rows, int64_t feat_width);

// EAGLE-2's tree expansion (lib/strategies/eagle.ts, draftTrees) as one call: the root's children from
// h_root, then `levels` times the `width` most probable newest nodes of each sequence expanded by one
// draft-layer call over forks of the sequence's draft cache (rows committed, forks freed at the end),
// each row's children its top_k under the head's logits at temperature 1. The same ops, in the same
// order, with the same arguments as the JavaScript loop, so the pools are the same; per level one
// read of the top-k (values and ids in one buffer) instead of a dozen N-API calls and two reads.
struct EagleExpandSeq {
  int draft_seq = -1;     // the draft cache's sequence the root's children extend
  int32_t position = 0;   // the root's position: a level-l row sits at position + l
  int max_level = 0;      // levels this sequence expands at most (its maxDepth - 1)
};

struct EagleNode {
  int32_t token = 0;
  int32_t parent = -1;    // pool index of the parent; -1: a child of the root
  int32_t level = 1;
  double log_prob = 0;    // the path's log probability under the draft
};

struct EagleExpandResult {
  std::vector<std::vector<EagleNode>> pools;  // per sequence, in the order the nodes were made
  double first_seconds = 0;                   // the root's children (logits, top-k, read)
  std::vector<int32_t> level_rows;            // per level expanded: rows computed
  std::vector<double> level_seconds;          // and its seconds (forks to the children's read)
};

// h_root f32 [B, H] (row b: seqs[b]'s root); lm_head: the target's (EAGLE-1/2). top_k <= the draft
// vocabulary; width >= 1; levels >= 0. penalties (optional): the run's, with one history per
// sequence in the DRAFT's vocabulary (rows and paths are made here): each row's logits are
// penalized by its sequence's history and its path (the node it expands and those above it) before
// its children are chosen, as the target would penalize that node's row.
EagleExpandResult eagle_expand(const EagleWeights& w, const Tensor& embed, const Tensor& lm_head, KvCache& cache,
                               const Tensor& h_root, const std::vector<EagleExpandSeq>& seqs, int levels, int width,
                               int top_k, const PenaltyArgs* penalties = nullptr);

}  // namespace specdec

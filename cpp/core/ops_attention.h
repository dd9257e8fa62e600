// Op contract: paged KV cache data movement and fused tree attention.
// One declaration per op in specdec::ops (validates, then dispatches on device) and the two
// implementations with the same signature in specdec::cpu and specdec::cuda.
#pragma once
#include <cstdint>
#include <vector>

#include "ops_sampling.h"
#include "tensor.h"

namespace specdec {

class HostPack;

// Where each sequence of a ragged batch lives, for one launch (FlashInfer-style indptr arrays).
// Device tensors are on the KV cache's device; host copies are kept for validation and sizing.
struct PagedBatch {
  Tensor qo_indptr;     // i32 [B+1]: new tokens of sequence b are rows qo_indptr[b] .. qo_indptr[b+1]
  Tensor page_indptr;   // i32 [B+1]: pages of b are page_indices[page_indptr[b] .. page_indptr[b+1]]
  Tensor page_indices;  // i32 [nnz]: physical page ids in token order
  Tensor prefix_len;    // i32 [B]: committed tokens of b, visible to all of its new tokens
  // New token i of sequence b sits at logical slot prefix_len[b] + i, i.e. page
  // page_indices[page_indptr[b] + slot / page_size], row slot % page_size.
  std::vector<int32_t> h_qo_indptr, h_page_indptr, h_page_indices, h_prefix_len;
  int32_t max_qo_len = 0;   // max new tokens of a sequence
  int32_t max_kv_len = 0;   // max prefix_len + new tokens
  int64_t batch_size() const { return static_cast<int64_t>(h_prefix_len.size()); }
  int64_t total_new() const { return h_qo_indptr.empty() ? 0 : h_qo_indptr.back(); }

  // Builds a batch from host arrays (validated: monotone indptr, page ids < num_pages,
  // enough pages for prefix_len + new tokens) and uploads it to `device` in one copy. With `pack`,
  // the four arrays join the caller's segments and travel in that one upload (the caller takes
  // its own views from the pack afterwards).
  static PagedBatch make(const std::vector<int32_t>& qo_indptr, const std::vector<int32_t>& page_indptr,
                         const std::vector<int32_t>& page_indices, const std::vector<int32_t>& prefix_len,
                         int page_size, int num_pages, Device device, HostPack* pack = nullptr);
  // make() in two halves, for several batches in one upload (a chain's steps): stage() validates
  // and adds the arrays to `pack` without uploading; bind() takes the views once `pack` is uploaded.
  static PagedBatch stage(const std::vector<int32_t>& qo_indptr, const std::vector<int32_t>& page_indptr,
                          const std::vector<int32_t>& page_indices, const std::vector<int32_t>& prefix_len,
                          int page_size, int num_pages, HostPack& pack);
  void bind(const HostPack& pack);
  // Sequences s0 .. s1-1 of this batch, for a commit of part of it: views of the same arrays (the
  // indptr entries keep their values, so qo_indptr need not start at 0; commits read only its
  // differences).
  PagedBatch sequences(int64_t s0, int64_t s1) const;

 private:
  int segs_[4] = {-1, -1, -1, -1};  // stage(): the arrays' segments in the pack
};

// Largest number of new tokens of one sequence that a packed mask may describe.
constexpr int kMaxTreeTokens = 1024;

namespace ops {

// Store new tokens' keys/values (RoPE already applied) at their slots.
// kv_layer: [numPages, 2, pageSize, numKvHeads, headDim] (f32|f16|bf16); k, v: [N, numKvHeads, headDim] f32|f16|bf16.
void kv_append(Tensor& kv_layer, const Tensor& k, const Tensor& v, const PagedBatch& batch);

// Per-head RMS norms of q and k before their rotation (Qwen3's q_norm / k_norm): each head's
// headDim values x become x * rsqrt(mean(x^2) + eps) * w, w f32 [headDim].
struct QkNorm {
  Tensor q_w, k_w;
  float eps = 1e-6f;
};

// A layer's q and k rotations (as ops::rope: positions i32 [N], inv_freq f32 [rotary dims / 2]) and then
// kv_append of the rotated k and of v, as one op with the same bits: one launch on CUDA instead of
// two. q [N, numQoHeads, headDim] and k [N, numKvHeads, headDim] f32, rotated in place. With `norm`,
// each head is first RMS-normalized in place (same launch on CUDA; on the CPU ops::rmsnorm's bits).
// rope_scale multiplies cos and sin (LongRoPE's attention factor: the rotated values only).
void rope_qk_append(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                    Tensor& kv_layer, const PagedBatch& batch, const QkNorm* norm = nullptr, float rope_scale = 1.f);

// Fused tree attention over a paged prefix plus the new tokens.
// q: [N, numQoHeads, headDim] (N = batch.total_new(); numQoHeads % numKvHeads == 0: GQA/MQA).
// mask: u64 [N, W] packed, or undefined for causal among the new tokens. Bit j of row i
//   (word j / 64, bit j % 64) set <=> new token i sees new token j of the same sequence.
//   The committed prefix is always visible. W * 64 >= max new tokens of a sequence.
// out: [N, numQoHeads, headDim], dtype of q. Accumulation in f32.
// window > 0 (sliding-window attention): a row sees only the last `window` entries of its ordered
//   list of visible slots (the prefix, then its visible new tokens in index order). Under a tree mask
//   (ancestors and self) list position = token position, so this is key position > query position -
//   window, transformers' rule; the reduction order stays a function of the row's list (tree = path).
// softcap > 0 (Gemma 2's attn_logit_softcapping): each score s = q.k sm_scale becomes
//   softcap tanh(s / softcap) before the softmax; 0 = none.
void tree_attention(const Tensor& q, const Tensor& kv_layer, const PagedBatch& batch, const Tensor& mask,
                    float sm_scale, Tensor& out, int window = 0, float softcap = 0.f);

// Commit accepted tree nodes: for each sequence b and j < acc_indptr[b+1] - acc_indptr[b], the
// K/V of new token acc_nodes[acc_indptr[b] + j] moves to slot prefix_len[b] + j, in every layer,
// one launch for the batch. acc_nodes of a sequence are strictly increasing (topological order).
// acc_indptr, acc_nodes: i32 on the cache device. h_acc_indptr / h_acc_nodes: the same values on
// the host when the caller has them: validation reads those, not the device (no wait); without
// them the indices are read back (a counted wait) so that a bad one is an error, never a stray write.
void kv_commit(const std::vector<Tensor>& layers, const PagedBatch& batch, const Tensor& acc_indptr,
               const Tensor& acc_nodes, const std::vector<int32_t>* h_acc_indptr = nullptr,
               const std::vector<int32_t>* h_acc_nodes = nullptr);

// kv_commit of a verification's accepted paths where they lie on the device (no upload): sequence
// b keeps v.accepted_nodes[v.node_indptr[b] + j] for j < v.accept_count[b]. The trees verified must
// be the batch's new tokens (v.node_indptr = the batch's qo_indptr); validation reads v's host copies.
void kv_commit_verified(const std::vector<Tensor>& layers, const PagedBatch& batch, const VerifiedPaths& v);

// The host-side checks of kv_commit (E_ARG naming the index). True when the commit moves nothing:
// every sequence keeps new tokens 0..k-1, which already sit at their committed slots.
bool check_commit(const PagedBatch& batch, const std::vector<int32_t>& acc_indptr, const std::vector<int32_t>& acc_nodes);

// Copy whole pages src_pages[i] -> dst_pages[i] in every layer (copy-on-write after fork).
// h_src / h_dst: the same ids on the host, when the caller has them (as for kv_commit).
void kv_copy_pages(const std::vector<Tensor>& layers, const Tensor& src_pages, const Tensor& dst_pages,
                   const std::vector<int32_t>* h_src = nullptr, const std::vector<int32_t>* h_dst = nullptr);

// kv_copy_pages whose sources were chosen on the device (an EAGLE level's parents, ops::tree_select):
// each src_pages[i] is one of h_src_set, which is validated (in range, disjoint from the
// destinations) instead of reading src_pages back; h_dst: dst_pages' host copy, distinct pages
// (a repeated destination is E_ARG: two copies would race for it).
void kv_copy_pages_among(const std::vector<Tensor>& layers, const Tensor& src_pages, const Tensor& dst_pages,
                         const std::vector<int32_t>& h_src_set, const std::vector<int32_t>& h_dst);

}  // namespace ops

#define SPECDEC_ATTENTION_OPS(NS)                                                                          \
  namespace NS {                                                                                           \
  void kv_append(Tensor& kv_layer, const Tensor& k, const Tensor& v, const PagedBatch& batch);             \
  void tree_attention(const Tensor& q, const Tensor& kv_layer, const PagedBatch& batch, const Tensor& mask, \
                      float sm_scale, Tensor& out, int window, float softcap);                             \
  /* acc_count undefined: sequence b keeps acc_nodes[acc_indptr[b] .. acc_indptr[b + 1]); defined: */      \
  /* acc_nodes[acc_indptr[b] ..][0 .. acc_count[b]) (a verification's ragged layout).            */      \
  void kv_commit(const std::vector<Tensor>& layers, const PagedBatch& batch, const Tensor& acc_indptr,     \
                 const Tensor& acc_nodes, const Tensor& acc_count);                                        \
  void kv_copy_pages(const std::vector<Tensor>& layers, const Tensor& src_pages, const Tensor& dst_pages);  \
  }
SPECDEC_ATTENTION_OPS(cpu)
SPECDEC_ATTENTION_OPS(cuda)
#undef SPECDEC_ATTENTION_OPS

namespace cuda {
void rope_qk_append(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                    Tensor& kv_layer, const PagedBatch& batch, const ops::QkNorm* norm, float rope_scale);
}  // namespace cuda

}  // namespace specdec

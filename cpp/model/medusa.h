// Medusa heads on the device, fused into one call: for hidden rows x [R, H], every head's ResBlocks
// (x + SiLU(W x + b), medusa_num_layers of them), its LM head and the top-k of its logits. Only the
// candidate ids leave the device (one read), instead of R x heads logits rows crossing into JS.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "../core/tensor.h"
#include "../cpu/matmul_serial.h"

namespace specdec {

struct PenaltyArgs;  // core/ops_sampling.h

struct MedusaHead {
  std::vector<Tensor> w, b;  // ResBlock l: w[l] [H, H], b[l] [H]
  Tensor lm_head;            // [V, H]
  // k-serial packs (cpu/matmul_serial.h) of w[l] and lm_head, or empty / null: pack_medusa_heads.
  std::vector<std::shared_ptr<const cpu::SerialWeight>> ws;
  std::shared_ptr<const cpu::SerialWeight> lm_s;
};

// Packs the heads' small CPU weights for the k-serial kernel, by the model runner's rule (each
// eligible weight, when together they come to at most SerialWeight::kMaxModelBytes and
// SPECDEC_CPU_SERIAL is not 0); the others keep the lane kernel. Every later call uses the packs
// (another order than the lane kernel: a head set is packed once, when it is made).
void pack_medusa_heads(std::vector<MedusaHead>& heads);

// ids[(h * R + r) * k + j] = the j-th most likely token of head h for row r (ties: lower index),
// for heads h < heads.size(). x: f32 [R, H] on the heads' device.
std::vector<int32_t> medusa_top_k(const std::vector<MedusaHead>& heads, const Tensor& x, int32_t k, const PenaltyArgs* penalties = nullptr);
// The same into ids (i32 [heads * R, k] on the device), without reading anything back.
// penalties (optional): each row's logits penalized before its top-k (row r continues history
// row_seq[r]; the same for every head), so the candidates leave out what the penalized target avoids.
void medusa_top_k_into(const std::vector<MedusaHead>& heads, const Tensor& x, int32_t k, Tensor& ids,
                       const PenaltyArgs* penalties = nullptr);
// The heads' top-k at each sequence's last accepted node, from a verification's outputs still on
// the device (node_indptr [B+1], accepted_nodes [N], accept_count [B]) and the forward's hidden
// states [N, H]: ids i32 [heads * B, k]. Medusa's next candidates without a round trip.
void medusa_top_k_after_verify(const std::vector<MedusaHead>& heads, const Tensor& hidden, const Tensor& node_indptr,
                               const Tensor& accepted_nodes, const Tensor& accept_count, int32_t k, Tensor& ids,
                               const PenaltyArgs* penalties = nullptr);

}  // namespace specdec

// Medusa heads on the device, fused into one call: for hidden rows x [R, H], every head's ResBlocks
// (x + SiLU(W x + b), medusa_num_layers of them), its LM head and the top-k of its logits. Only the
// candidate ids leave the device (one read), instead of R x heads logits rows crossing into JS.
#pragma once
#include <cstdint>
#include <vector>

#include "../core/tensor.h"

namespace specdec {

struct MedusaHead {
  std::vector<Tensor> w, b;  // ResBlock l: w[l] [H, H], b[l] [H]
  Tensor lm_head;            // [V, H]
};

// ids[(h * R + r) * k + j] = the j-th most likely token of head h for row r (ties: lower index),
// for heads h < heads.size(). x: f32 [R, H] on the heads' device.
std::vector<int32_t> medusa_top_k(const std::vector<MedusaHead>& heads, const Tensor& x, int32_t k);

}  // namespace specdec

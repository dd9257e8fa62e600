// Op contract: model layers for the reference Llama-family runner. Activations are f32; weights
// may be f32, f16 or bf16 (converted on load into registers, accumulated in f32).
// Batch invariance: every output row is computed in a fixed order that does not depend on how
// many rows share the launch (so verifying 16 tokens at once equals feeding them one by one).
#pragma once
#include <initializer_list>
#include <cstdint>

#include "tensor.h"

namespace specdec {
namespace cpu {
class SerialWeight;
}
namespace ops {

// out[n, :] = table[ids[n], :]. table [V, H] f32|f16|bf16, ids i32 [N], out f32 [N, H].
// An id outside [0, V) is an E_ARG naming the id and the vocabulary size.
void embedding(const Tensor& table, const Tensor& ids, Tensor& out);
// The same with the ids' host copy (validated from it: no wait on CUDA), or, with host_ids null
// and ids_in_range, ids the caller knows are in range by construction (an argmax over rows of
// table.size(0) logits, still on the device); the kernels never read outside the table anyway.
// scale != 1 multiplies each value (Gemma's sqrt(hidden_size), in f32).
void embedding(const Tensor& table, const Tensor& ids, Tensor& out, const int32_t* host_ids, bool ids_in_range,
               float scale = 1.f);

// out = x / sqrt(mean(x^2) + eps) * w. x f32 [N, H], w [H] f32|f16|bf16, out f32 [N, H] (may alias x).
void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& out);

// out = x @ w^T (+ bias). x f32 [N, K], w [M, K] f32|f16|bf16, bias [M] (optional, undefined = none),
// out f32 [N, M]. Hand-written (tensor cores on CUDA); per-row results independent of N.
// `serial`: w packed for the CPU's k-serial kernel (cpu/matmul_serial.h: another order, for small
// weights), packed from this w (else E_ARG); ignored on CUDA.
void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out, const cpu::SerialWeight* serial = nullptr);

// Several matmuls of one x: outs[i] = x @ ws[i]^T (+ biases[i]), each exactly as matmul computes
// it (same bits). The CPU runs all their weight blocks in one parallel region: a layer's q/k/v or
// gate/up projections over a few rows are too small to split well across threads one by one, and
// each split is a fork-join. CUDA runs up to 3 parts as one launch (the streaming kernel,
// cuda/gemm_tc_stream.cuh, where it applies), else one launch each.
struct MatmulPart {
  const Tensor* w;
  const Tensor* bias;  // may be undefined
  Tensor* out;
  const cpu::SerialWeight* serial = nullptr;  // as matmul's
};
void matmul_group(const Tensor& x, std::initializer_list<MatmulPart> parts);

// Rotary embedding in place, HF "rotate_half" layout: with R / 2 = inv_freq's length (R = D, or less
// for a partial rotation), for i < R/2, (x[i], x[i + R/2]) rotated by angle positions[n] * inv_freq[i]
// (angle computed in f32); x[R ..] unchanged. x f32 [N, heads, D], positions i32 [N], inv_freq f32
// [R/2], 1 <= R/2 <= D/2 (the model computes it once from rope_theta and any rope scaling).
void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq);
// The argument checks of a layer's q and k rotations (rope_qk_append in ops_attention.h; E_ARG
// naming the argument): q [N, *, D] and k [N, *, D] f32, D even, positions i32 [N], inv_freq f32 [R/2]
// (1 <= R/2 <= D/2, as rope).
void check_rope_qk(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq);

// out = silu(gate) * up. gate, up, out f32 [N, I] (out may alias gate).
void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out);

// out = gelu_tanh(gate) * up (GeGLU with transformers' gelu_pytorch_tanh: 0.5 g (1 + tanh(sqrt(2/pi)
// (g + 0.044715 g^3))), Gemma). gate, up, out f32 [N, I] (out may alias gate).
void gelu_tanh_mul(const Tensor& gate, const Tensor& up, Tensor& out);

// x = cap * tanh(x / cap) in place, f32 (Gemma 2's final_logit_softcapping on the logits); cap > 0.
void softcap(Tensor& x, float cap);

// x *= s in place, f32 (Granite: residual_multiplier on block outputs, 1 / logits_scaling on the logits).
void scale(Tensor& x, float s);

// x += y (f32, same shape).
void add_inplace(Tensor& x, const Tensor& y);

// x += y, then out = rmsnorm(x, w, eps): a block's residual add and the next block's norm as one op
// (one launch on CUDA), with the bits of add_inplace then rmsnorm. x, y, out f32 [N, H], w [H]; out
// may be x itself (not y).
void add_rmsnorm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out);

// x = silu(x) in place (f32). Medusa ResBlock: h + silu(W h + b).
void silu_inplace(Tensor& x);

// out[b] = x[row of sequence b's last accepted node] (sm::last_accepted_row; zeros if verification's
// outputs are not its own). x f32 [N, H] ragged by indptr i32 [B+1]; acc_nodes i32 [N], acc_count i32
// [B]: verify's outputs, left on the device; out f32 [B, H]. The hidden state Medusa's heads read
// next, chosen without a round trip.
void gather_last_accepted(const Tensor& x, const Tensor& indptr, const Tensor& acc_nodes, const Tensor& acc_count, Tensor& out);

}  // namespace ops

#define SPECDEC_LAYER_OPS(NS)                                                        \
  namespace NS {                                                                     \
  void embedding(const Tensor& table, const Tensor& ids, Tensor& out, float scale);  \
  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& out);            \
  void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out);    \
  /* scale: cos and sin multiplied by it (LongRoPE's attention factor; 1 is exact) */  \
  void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scale = 1.f);             \
  void rope_qk(Tensor& q, Tensor& k, const Tensor& positions, const Tensor& inv_freq, float scale = 1.f); \
  void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out);                  \
  void gelu_tanh_mul(const Tensor& gate, const Tensor& up, Tensor& out);             \
  void softcap(Tensor& x, float cap);                                                \
  void scale(Tensor& x, float s);                                                    \
  void add_inplace(Tensor& x, const Tensor& y);                                      \
  void add_rmsnorm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out); \
  void silu_inplace(Tensor& x);                                                      \
  void gather_last_accepted(const Tensor& x, const Tensor& indptr, const Tensor& acc_nodes, \
                            const Tensor& acc_count, Tensor& out);                   \
  }
SPECDEC_LAYER_OPS(cpu)
SPECDEC_LAYER_OPS(cuda)
#undef SPECDEC_LAYER_OPS

namespace cpu {
void matmul_group(const Tensor& x, std::initializer_list<ops::MatmulPart> parts);
// matmul with w's k-serial pack (cpu/matmul_serial.h).
void matmul_serial(const Tensor& x, const Tensor& w, const SerialWeight& serial, const Tensor& bias, Tensor& out);
}
namespace cuda {
// One launch for all parts when the streaming tensor-core kernel applies, else one
// matmul each; returns the launches made.
int matmul_group(const Tensor& x, const ops::MatmulPart* parts, size_t n);
}

}  // namespace specdec

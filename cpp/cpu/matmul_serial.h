// The CPU matmul for small weights, "k-serial": out[n, m] = x[n, :] . w[m, :] with each output one
// chain of multiply-adds in increasing k,
//   s = +0;  s = fma(x[k], w[m, k], s) for k = 0 .. K-1;  then s + bias[m],
// on a copy of the weight packed in panels of kPanel outputs ([K][kPanel] per panel: the kPanel
// weights of one k are contiguous), so a register holds 16 (AVX-512) or 8 (AVX2) outputs and one
// broadcast x value feeds them all: no per-output lane sums at the end of a tile. At the small K of
// small models those sums cost about as much as the multiply-adds themselves (the lane kernel,
// matmul.cc, reached ~105 GFLOP/s at 5 rows of K = 128 on a Zen 5 core where this reaches ~200).
//
// One order per weight for every row count (batch invariance) and, being one fma chain per output,
// the same bits on the portable, AVX2 and AVX-512 paths (and with or without AMX: packed weights do
// not go to the tiles). It is not the lane kernel's order, so a packed weight gives other bits than
// the same weight unpacked: a model packs its weights at load and uses the packs for every call.
//
// Packs hold their own copy, so only small weights are packed (eligible(): K <= kMaxK and at most
// kMaxElems elements), and the model runner packs a model's weights only when they come to at most
// kMaxModelBytes: bigger models keep their weights as views of the checkpoint (weights in place).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "../core/tensor.h"

namespace specdec {
namespace cpu {

class SerialWeight {
 public:
  static constexpr int64_t kPanel = 64;
  static constexpr int64_t kMaxK = 512;
  static constexpr int64_t kMaxElems = int64_t{4} << 20;
  static constexpr size_t kMaxModelBytes = size_t{16} << 20;

  // Whether w can be packed: a 2-D CPU tensor of f32, f16 or bf16 within the limits above.
  static bool eligible(const Tensor& w);
  // Whether the model runner packs tiny models' weights: SPECDEC_CPU_SERIAL is not 0 (read once per
  // process; 0 keeps them on the lane kernel, for A/B runs).
  static bool enabled();
  // w packed (bf16 weights as bf16, f16 and f32 as f32: exact either way). E_ARG unless eligible.
  static std::shared_ptr<const SerialWeight> pack(const Tensor& w);
  // pack(w) when eligible, else null.
  static std::shared_ptr<const SerialWeight> pack_if_eligible(const Tensor& w);

  int64_t rows() const { return M_; }
  int64_t cols() const { return K_; }
  // The weight's element type as packed: bf16 or f32.
  bool packed_f32() const { return f32_; }
  // The tensor it was packed from, to check that a call pairs it with the same weight.
  bool packed_from(const Tensor& w) const;
  // Panel p: K x kPanel elements (bf16 bits or f32), zero past the last row.
  const void* panel(int64_t p) const;
  size_t bytes() const { return f32_ ? f32s_.size() * 4 : bf16s_.size() * 2; }

 private:
  int64_t M_ = 0, K_ = 0;
  bool f32_ = false;
  Tensor source_;  // kept: its address cannot be another weight's while the pack lives
  std::vector<uint16_t> bf16s_;
  std::vector<float> f32s_;
};

// Rows [m0, m1) of out (row stride ldo) for N rows of x (f32, row stride K): the k-serial order
// above, without bias. m0 is a multiple of kPanel. On the calling thread.
void serial_block(const float* x, int64_t N, const SerialWeight& w, int64_t m0, int64_t m1, float* out, int64_t ldo);

}  // namespace cpu
}  // namespace specdec

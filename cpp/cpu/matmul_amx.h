// The CPU matmul on AMX-BF16 tiles, for bf16 weights: out[N, M] = x[N, K] w[M, K]^T, x f32.
//
// f32 accuracy with bf16 multipliers: each x value is cut into three bf16 pieces by truncation,
// x = hi + mid + lo exactly (8 + 8 + 8 significant bits of f32's 24), and every piece is
// multiplied by the bf16 weights on the tiles (each product exact in f32), in its own column of
// the tile. The weights are the tiles' A operand straight from memory (rows of w are rows of the
// tile: no repacking, weights used in place); x's pieces are packed once per call as the B
// operand. The order, fixed for every output, every row count and every thread split (batch
// invariance), on a given engine:
//   1. for each 32-value chunk of k below K32 = K - K % 32, in increasing k, one TDPBF16PS step
//      per piece: two sums from +0 over the chunk's 16 even and 16 odd products (fused, RNE,
//      denormals flushed), then acc += even + odd (acc from +0);
//   2. y = acc_hi + (acc_mid + acc_lo);
//   3. t = fma(x[k], w[k], t) from t = +0 for k = K32 .. K-1 in order; y = y + t.
// Step 1 is the Intel SDM's pseudo-code for TDPBF16PS. The emulated engine computes exactly that
// in C++ (so this order runs, and is tested, on any CPU: SPECDEC_CPU_AMX=emulate); the hardware
// is only required to be deterministic and per-output (batch invariance and accuracy are what the
// tests assert there; whether it matches the SDM's rounding bit for bit is reported, not assumed).
// These bits differ from the AVX-512/AVX2/portable order (cpp/cpu/matmul.cc): a machine that uses
// AMX gives other bits than one that does not, as the issue allows (one order per machine).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace specdec {
namespace cpu {
namespace amx {

enum class Mode { off, hardware, emulated };

struct Status {
  Mode mode = Mode::off;
  // Why the hardware tiles are not used ("" when they are, or when emulated on request).
  std::string reason;
  // The hardware self-test at first use: max error against float64 in units of its bound (< 1
  // passes), and whether the hardware gave the emulated engine's bits.
  bool self_tested = false;
  double self_test_error = 0.0;
  bool matches_emulation = false;
};

// Decided once per process (first call): SPECDEC_CPU_AMX = 0|off (never), emulate (the emulated
// engine, on any CPU: slow, for tests), unset|1|on (the hardware when the CPU, the OS and
// SPECDEC_CPU_SIMD allow it and the self-test passes). Another value is E_ARG.
const Status& status();
inline bool active() { return status().mode != Mode::off; }
const char* mode_name(Mode m);

// x's pieces as the tiles' B operand, made once per matmul call by the calling thread (kept per
// thread, grown once).
struct PackedX {
  const float* x = nullptr;  // the f32 rows (stride K): step 3 reads them
  int64_t N = 0, K = 0;
  int64_t col_tiles = 0;     // ceil(3N / 16)
  int64_t colsb = 0;         // bytes per B row: 4 * min(16, 3N)
  const uint16_t* tiles = nullptr;
};
PackedX pack_x(const float* x, int64_t N, int64_t K);
// Frees this thread's packing buffer when it holds more than keep_bytes (after a long prefill).
void trim_pack(size_t keep_bytes);

// Peak TDPBF16PS rate (GFLOP/s of bf16 products, 2 per multiply-add) over the pool's threads, each
// running four independent chains on registers for about `seconds`; the f32-accurate matmul does
// three of those products per multiply-add. E_UNSUPPORTED unless the hardware tiles are in use.
double peak_gflops(double seconds);

// Weight rows [m0, m1) of a bf16 matrix w [M, K]: out[n * ldo + m] for every row n of px.
void block(const PackedX& px, const uint16_t* w, int64_t M, int64_t m0, int64_t m1, float* out, int64_t ldo);

}  // namespace amx
}  // namespace cpu
}  // namespace specdec

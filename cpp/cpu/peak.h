// What the CPU kernels run on, for `specdec info` and the benches: the instruction set in use and
// the peak multiply-add rate of an instruction set on this machine, measured.
#pragma once

#include "simd.h"

namespace specdec {
namespace cpu {

// Peak f32 rate (GFLOP/s, 2 per multiply-add) of `isa` over all the pool's threads: each thread
// runs independent FMA chains on registers only (no memory traffic) for about `seconds`. The
// bound a compute-bound kernel on that instruction set can reach here. E_UNSUPPORTED when the CPU
// lacks `isa`.
double fma_peak_gflops(simd::Isa isa, double seconds);

}  // namespace cpu
}  // namespace specdec

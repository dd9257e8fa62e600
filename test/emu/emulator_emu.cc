// The emulator itself (cuda_emu.h): what every other emulation program relies on. Plain mode checks
// barriers, warp collectives, cp.async, multi-block walks and per-lane state; the two named modes are
// kernels with a bug the suite must see:
//   race      a block reads its neighbour's shared-memory cell without __syncthreads: a data race
//             under ThreadSanitizer, wrong values under the other builds (the lanes run in a
//             shuffled order, so a neighbour's cell is often not written yet);
//   deadlock  __syncthreads in divergent code: reported and aborted (a GPU would hang).
#include <random>
#include <string>

#include "emu_check.h"

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  const std::string mode = argc > 2 ? argv[2] : "";
  std::mt19937_64 rng(seed);

  if (mode == "race" || mode == "deadlock") {
    constexpr unsigned T = 256, B = 4;
    static float out[B][T];
    emu::launch(Dim3{B, 1, 1}, T, [&] {
      __shared__ float s[T];
      const unsigned t = threadIdx.x;
      s[t] = static_cast<float>(t + blockIdx.x);
      if (mode != "race") __syncthreads();
      if (mode == "deadlock" && t < T / 2) __syncthreads();
      out[blockIdx.x][t] = s[(t + 1) % T];
      __syncthreads();
    });
    int wrong = 0;
    for (unsigned b = 0; b < B; ++b)
      for (unsigned t = 0; t < T; ++t) wrong += out[b][t] != static_cast<float>((t + 1) % T + b);
    emu::report(wrong == 0, mode + ": " + std::to_string(wrong) + " cells wrong");
    return emu::summary(seed);
  }

  // Barriers: each of 8 phases reads what the other lanes wrote in the phase before.
  for (unsigned threads : {32u, 96u, 256u}) {
    const unsigned blocks = 1 + static_cast<unsigned>(rng() % 3);
    std::vector<int> out(static_cast<size_t>(blocks) * threads);
    emu::launch(Dim3{blocks, 1, 1}, threads, [&] {
      __shared__ int s[2][256];
      const unsigned t = threadIdx.x;
      s[0][t] = static_cast<int>(t + 1000 * blockIdx.x);
      __syncthreads();
      for (int p = 0; p < 8; ++p) {
        s[(p + 1) % 2][t] = s[p % 2][(t + 1) % blockDim.x] + 1;
        __syncthreads();
      }
      out[blockIdx.x * blockDim.x + t] = s[0][t];
    });
    bool ok = true;
    for (unsigned b = 0; b < blocks; ++b)
      for (unsigned t = 0; t < threads; ++t) ok = ok && out[b * threads + t] == static_cast<int>((t + 8) % threads + 1000 * b + 8);
    emu::report(ok, "barriers: 8 phases over " + std::to_string(blocks) + " block(s) of " + std::to_string(threads) + " threads");
  }

  // Warp collectives: shuffles, votes, matches, and __syncwarp between a warp's shared writes and reads.
  {
    constexpr unsigned T = 128;
    std::vector<int> xs(T);
    for (auto& x : xs) x = static_cast<int>(rng() % 7);
    std::vector<int> sum(T), up(T), any(T), peers(T), ring(T);
    emu::launch(Dim3{1, 1, 1}, T, [&] {
      __shared__ int w[T];
      const unsigned t = threadIdx.x, lane = t % 32;
      int v = xs[t];
      for (int m = 16; m > 0; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
      sum[t] = v;
      up[t] = __shfl_up_sync(0xffffffffu, xs[t], 3);
      any[t] = __any_sync(0xffffffffu, xs[t] == 6 && lane == 5);
      peers[t] = static_cast<int>(__match_any_sync(0xffffffffu, xs[t]));
      w[t] = xs[t] * 10;
      __syncwarp();
      ring[t] = w[(t & ~31u) | ((lane + 1) % 32)];
    });
    bool ok = true;
    for (unsigned t = 0; t < T; ++t) {
      const unsigned base = t & ~31u, lane = t % 32;
      int s = 0;
      unsigned pm = 0;
      for (unsigned l = 0; l < 32; ++l) {
        s += xs[base + l];
        if (xs[base + l] == xs[t]) pm |= 1u << l;
      }
      ok = ok && sum[t] == s && up[t] == xs[lane >= 3 ? t - 3 : t] && any[t] == (xs[base + 5] == 6) &&
           peers[t] == static_cast<int>(pm) && ring[t] == 10 * xs[base + (lane + 1) % 32];
    }
    emu::report(ok, "warp collectives: xor-reduction, shuffle up, any, match, __syncwarp");
  }

  // cp.async: a copy lands only at its group's wait; each lane's groups are its own.
  {
    constexpr unsigned T = 64;
    std::vector<float> src(2 * T);
    for (unsigned i = 0; i < 2 * T; ++i) src[i] = static_cast<float>(i) + 0.5f;
    std::vector<float> before(T), after1(T), after2(T);
    emu::launch(Dim3{1, 1, 1}, T, [&] {
      __shared__ __align__(16) float dst[2 * T];
      const unsigned t = threadIdx.x;
      dst[t] = -1.f, dst[T + t] = -1.f;
      __pipeline_memcpy_async(&dst[t], &src[t], 4);
      __pipeline_commit();
      __pipeline_memcpy_async(&dst[T + t], &src[T + t], 4);
      __pipeline_commit();
      before[t] = dst[t];
      __pipeline_wait_prior(1);
      after1[t] = dst[t] + dst[T + t];  // the first group landed, the second not yet
      __pipeline_wait_prior(0);
      after2[t] = dst[T + t];
    });
    bool ok = true;
    for (unsigned t = 0; t < T; ++t) ok = ok && before[t] == -1.f && after1[t] == src[t] - 1.f && after2[t] == src[T + t];
    emu::report(ok, "cp.async: copies land at their group's wait, per lane");
  }

  // Atomics and a grid walk: every (block, thread) once, blocks in order.
  {
    const Dim3 grid{3, 2, 2};
    constexpr unsigned T = 64;
    static int hits[3 * 2 * 2][T];
    int total = 0;
    std::vector<unsigned> block_order;
    emu::launch(grid, T, [&] {
      ++hits[(blockIdx.z * 2 + blockIdx.y) * 3 + blockIdx.x][threadIdx.x];
      atomicAdd(&total, 1);
      if (threadIdx.x == 0) block_order.push_back((blockIdx.z * 2 + blockIdx.y) * 3 + blockIdx.x);
    });
    bool ok = total == 12 * static_cast<int>(T) && block_order.size() == 12;
    for (unsigned b = 0; b < 12; ++b) {
      ok = ok && block_order[b] == b;
      for (unsigned t = 0; t < T; ++t) ok = ok && hits[b][t] == 1;
    }
    emu::report(ok, "grid walk: every (block, thread) once, blocks in order; atomicAdd");
  }
  return emu::summary(seed);
}

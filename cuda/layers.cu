// CUDA backend for the model layer ops (cpp/core/ops_layers.h): launchers only (kernels in
// layers.cuh and gemm_tc.cuh). Arguments were validated by the dispatcher (cpp/core/ops_layers.cc);
// these functions only launch kernels on cuda::stream().
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "../cpp/core/ops_layers.h"
#include "common.cuh"
#include "gemm_tc.cuh"
#include "layers.cuh"

namespace specdec {
namespace cuda {

namespace {

using namespace layer_kernels;

unsigned elementwise_grid(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 65535 * 8)); }

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

void embedding(const Tensor& table, const Tensor& ids, Tensor& out) {
  const int64_t N = ids.size(0), V = table.size(0), H = table.size(1);
  SPECDEC_CHECK(N <= INT32_MAX, "E_ARG", "ids: too many tokens for one launch (", N, ")");
  SPECDEC_DISPATCH_FLOAT(table.dtype(), "table", [&] {
    launch_kernel(embedding_kernel<scalar_t>, static_cast<unsigned>(N), 256, 0, table.ptr<scalar_t>(), ids.ptr<int32_t>(),
                                                                            out.ptr<float>(), V, H);
  });
  SPECDEC_CUDA_LAUNCH_CHECK("embedding_kernel");
}

void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  const int64_t N = x.size(0), H = x.size(1);
  SPECDEC_CHECK(N <= INT32_MAX, "E_ARG", "x: too many rows for one launch (", N, ")");
  SPECDEC_DISPATCH_FLOAT(w.dtype(), "w", [&] {
    launch_kernel(rmsnorm_kernel<scalar_t>, static_cast<unsigned>(N), 256, 0, x.ptr<float>(), w.ptr<scalar_t>(), eps,
                                                                          out.ptr<float>(), H);
  });
  SPECDEC_CUDA_LAUNCH_CHECK("rmsnorm_kernel");
}

namespace {

// SPECDEC_CUDA_MATMUL=simt keeps bf16/f16 weights on the CUDA-core kernel (to compare the two, or to
// rule tensor cores out). Read once: the path must not change within a process (batch invariance).
bool tensor_cores_enabled() {
  static const bool enabled = !env_is("SPECDEC_CUDA_MATMUL", "simt");
  return enabled;
}

template <typename W, typename B, int NT>
void launch_tc(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out, bool vec_w, bool vec_x) {
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  const dim3 grid(ceil_div(M, gemm_tc::kTileM), ceil_div(N, 16 * NT));
  SPECDEC_CHECK(grid.x < (1u << 31) && grid.y <= 65535u, "E_ARG", "matmul: problem too large for one launch (N=", N,
                ", M=", M, ")");
  launch_kernel(gemm_tc::matmul_tc_kernel<W, B, NT>, grid, gemm_tc::kThreads, 0,
      x.ptr<float>(), w.ptr<W>(), bias.defined() ? bias.ptr<B>() : nullptr, out.ptr<float>(), N, K, M, vec_w, vec_x);
  SPECDEC_CUDA_LAUNCH_CHECK("matmul_tc_kernel");
}

}  // namespace

void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out) {
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  if (N == 0 || M == 0) return;
  // Without a bias the B type is irrelevant (null pointer): reuse w's type.
  const DType bdt = bias.defined() ? bias.dtype() : w.dtype();
  if (w.dtype() != DType::f32 && tensor_cores_enabled()) {
    const bool vec_w = K % 8 == 0 && aligned16(w.data());
    const bool vec_x = K % 4 == 0 && aligned16(x.data());
    // Which rows share a block (NT) changes nothing in a row's arithmetic.
    const bool wide = N > 16;
    auto go = [&](auto w_tag) {
      using w_t = decltype(w_tag);
      SPECDEC_DISPATCH_FLOAT(bdt, "bias", [&] {
        if (wide) launch_tc<w_t, scalar_t, 2>(x, w, bias, out, vec_w, vec_x);
        else launch_tc<w_t, scalar_t, 1>(x, w, bias, out, vec_w, vec_x);
      });
    };
    if (w.dtype() == DType::bf16) go(__nv_bfloat16{});
    else go(__half{});
    return;
  }
  const dim3 grid(ceil_div(M, kWarpsPerBlock), ceil_div(N, kRows));
  SPECDEC_CHECK(grid.x < (1u << 31) && grid.y <= 65535u, "E_ARG", "matmul: problem too large for one launch (N=", N,
                ", M=", M, ")");
  const bool vec_ok = K % kVec == 0 && aligned16(x.data()) && aligned16(w.data());
  SPECDEC_DISPATCH_FLOAT(w.dtype(), "w", [&] {
    using w_t = scalar_t;
    SPECDEC_DISPATCH_FLOAT(bdt, "bias", [&] {
      launch_kernel(matmul_kernel<w_t, scalar_t>, grid, kWarpsPerBlock * kWarp, 0,
          x.ptr<float>(), w.ptr<w_t>(), bias.defined() ? bias.ptr<scalar_t>() : nullptr, out.ptr<float>(), N, K, M,
          vec_ok);
    });
  });
  SPECDEC_CUDA_LAUNCH_CHECK("matmul_kernel");
}

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  const int64_t N = x.size(0), heads = x.size(1), D = x.size(2);
  SPECDEC_CHECK(N * heads <= INT32_MAX, "E_ARG", "x: too many rows for one launch (", x.describe(), ")");
  const int threads = static_cast<int>(std::min<int64_t>(256, ((D / 2 + 31) / 32) * 32));
  launch_kernel(rope_kernel, static_cast<unsigned>(N * heads), threads, 0, x.ptr<float>(), positions.ptr<int32_t>(),
                                                                         inv_freq.ptr<float>(), heads, D);
  SPECDEC_CUDA_LAUNCH_CHECK("rope_kernel");
}

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  const int64_t n = gate.numel();
  launch_kernel(silu_mul_kernel, elementwise_grid(n), 256, 0, gate.ptr<float>(), up.ptr<float>(), out.ptr<float>(), n);
  SPECDEC_CUDA_LAUNCH_CHECK("silu_mul_kernel");
}

void add_inplace(Tensor& x, const Tensor& y) {
  const int64_t n = x.numel();
  launch_kernel(add_kernel, elementwise_grid(n), 256, 0, x.ptr<float>(), y.ptr<float>(), n);
  SPECDEC_CUDA_LAUNCH_CHECK("add_kernel");
}

void silu_inplace(Tensor& x) {
  const int64_t n = x.numel();
  launch_kernel(silu_kernel, elementwise_grid(n), 256, 0, x.ptr<float>(), n);
  SPECDEC_CUDA_LAUNCH_CHECK("silu_kernel");
}

void gather_last_accepted(const Tensor& x, const Tensor& indptr, const Tensor& acc_nodes, const Tensor& acc_count, Tensor& out) {
  const int64_t B = out.size(0);
  SPECDEC_CHECK(B <= INT32_MAX, "E_ARG", "gather_last_accepted: too many sequences for one launch (", B, ")");
  launch_kernel(gather_last_accepted_kernel, static_cast<unsigned>(B), 256, 0,
      x.ptr<float>(), indptr.ptr<int32_t>(), acc_nodes.ptr<int32_t>(), acc_count.ptr<int32_t>(), out.ptr<float>(), out.size(1));
  SPECDEC_CUDA_LAUNCH_CHECK("gather_last_accepted_kernel");
}

}  // namespace cuda
}  // namespace specdec

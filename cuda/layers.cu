// CUDA backend for the model layer ops (cpp/core/ops_layers.h): launchers only (kernels in
// layers.cuh, gemm_tc.cuh and gemm_tc_stream.cuh). Arguments were validated by the dispatcher
// (cpp/core/ops_layers.cc); these functions only launch kernels on cuda::stream().
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "../cpp/core/ops_attention.h"
#include "../cpp/core/ops_layers.h"
#include "common.cuh"
#include "gemm_tc.cuh"
#include "gemm_tc_stream.cuh"
#include "layers.cuh"

namespace specdec {
namespace cuda {

namespace {

using namespace layer_kernels;
using ops::MatmulPart;

unsigned elementwise_grid(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(ceil_div(n, 256), 65535 * 8)); }

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

void embedding(const Tensor& table, const Tensor& ids, Tensor& out, float scale) {
  const int64_t N = ids.size(0), V = table.size(0), H = table.size(1);
  SPECDEC_CHECK(N <= INT32_MAX, "E_ARG", "ids: too many tokens for one launch (", N, ")");
  SPECDEC_DISPATCH_FLOAT(table.dtype(), "table", [&] {
    launch_kernel(embedding_kernel<scalar_t>, static_cast<unsigned>(N), 256, 0, table.ptr<scalar_t>(), ids.ptr<int32_t>(),
                                                                            out.ptr<float>(), V, H, scale);
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
// SPECDEC_CUDA_MATMUL=tc-warp keeps every row count on matmul_tc_kernel, whose warps load their own
// weights, instead of the streaming kernel (the same bits either way; for comparing their speed).
bool streaming_enabled() {
  static const bool enabled = tensor_cores_enabled() && !env_is("SPECDEC_CUDA_MATMUL", "tc-warp");
  return enabled;
}

// The streaming kernel over every part, when it applies (bf16/f16 weights of one dtype, biases of one
// dtype, K % 8 == 0, 16-byte aligned x and w, enough shared memory): one launch, true.
template <typename W, typename B>
bool launch_stream(const Tensor& x, const MatmulPart* parts, size_t n, bool aligned) {
  using namespace gemm_tc;
  const int64_t N = x.size(0), K = x.size(1);
  const int stages = stream_stages<W>(N, K, max_optin_smem(), aligned);
  if (stages == 0) return false;
  const StreamShape shape(N);
  StreamParams<W, B> p{};
  p.x = x.ptr<float>();
  p.N = N;
  p.K = K;
  p.stages = stages;
  int64_t tiles = 0;
  for (size_t i = 0; i < n; ++i) {
    const int64_t M = parts[i].w->size(0);
    if (M == 0) continue;  // no blocks (a later part's tile0 would coincide)
    StreamPart<W, B>& q = p.part[p.parts++];
    q.w = parts[i].w->ptr<W>();
    q.bias = parts[i].bias->defined() ? parts[i].bias->ptr<B>() : nullptr;
    q.out = parts[i].out->ptr<float>();
    q.M = M;
    q.tile0 = tiles;
    tiles += ceil_div(M, kTileM * shape.mt);
  }
  if (p.parts == 0) return true;
  const int64_t row_groups = (N + kStreamMaxRows - 1) / kStreamMaxRows;
  SPECDEC_CHECK(tiles < (int64_t{1} << 31) && row_groups <= 65535, "E_ARG", "matmul: problem too large for one launch (N=", N,
                ", ", tiles, " column blocks)");
  using Kernel = void (*)(StreamParams<W, B>);
  const Kernel kernels[4] = {matmul_tc_stream_kernel<W, B, 1, 1>, matmul_tc_stream_kernel<W, B, 2, 1>,
                             matmul_tc_stream_kernel<W, B, 4, 1>, matmul_tc_stream_kernel<W, B, 4, 2>};
  static const bool opted_in = [&] {  // once per instantiation: the device's whole opt-in, every shape
    for (Kernel k : kernels)
      SPECDEC_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, max_optin_smem()));
    return true;
  }();
  (void)opted_in;
  const Kernel kernel = shape.mt == 2 ? kernels[3] : shape.nt == 4 ? kernels[2] : shape.nt == 2 ? kernels[1] : kernels[0];
  launch_kernel(kernel, dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(row_groups)), kThreads,
                static_cast<size_t>(stream_smem_bytes<W>(N, stages)), p);
  SPECDEC_CUDA_LAUNCH_CHECK("matmul_tc_stream_kernel");
  return true;
}

bool try_stream(const Tensor& x, const MatmulPart* parts, size_t n) {
  if (n == 0 || n > static_cast<size_t>(gemm_tc::kStreamMaxParts) || !streaming_enabled()) return false;
  const DType wdt = parts[0].w->dtype();
  if (wdt != DType::bf16 && wdt != DType::f16) return false;
  bool aligned = aligned16(x.data()), any_bias = false;
  DType bdt = wdt;  // without biases the B type is irrelevant (null pointers): reuse w's
  for (size_t i = 0; i < n; ++i) {
    if (parts[i].w->dtype() != wdt) return false;
    aligned = aligned && aligned16(parts[i].w->data());
    if (!parts[i].bias->defined()) continue;
    if (any_bias && parts[i].bias->dtype() != bdt) return false;
    bdt = parts[i].bias->dtype();
    any_bias = true;
  }
  auto go = [&](auto w_tag) {
    using w_t = decltype(w_tag);
    return SPECDEC_DISPATCH_FLOAT(bdt, "bias", [&] { return launch_stream<w_t, scalar_t>(x, parts, n, aligned); });
  };
  return wdt == DType::bf16 ? go(__nv_bfloat16{}) : go(__half{});
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
  const MatmulPart part{&w, &bias, &out};
  if (try_stream(x, &part, 1)) return;
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

int matmul_group(const Tensor& x, const MatmulPart* parts, size_t n) {
  if (try_stream(x, parts, n)) return 1;
  for (size_t i = 0; i < n; ++i) matmul(x, *parts[i].w, *parts[i].bias, *parts[i].out);
  return static_cast<int>(n);
}

void add_rmsnorm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out) {
  const int64_t N = x.size(0), H = x.size(1);
  SPECDEC_CHECK(N <= INT32_MAX, "E_ARG", "x: too many rows for one launch (", N, ")");
  SPECDEC_DISPATCH_FLOAT(w.dtype(), "w", [&] {
    launch_kernel(add_rmsnorm_kernel<scalar_t>, static_cast<unsigned>(N), 256, 0, x.ptr<float>(), y.ptr<float>(),
                  w.ptr<scalar_t>(), eps, out.ptr<float>(), H);
  });
  SPECDEC_CUDA_LAUNCH_CHECK("add_rmsnorm_kernel");
}

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq, float scale) {
  const int64_t N = x.size(0), heads = x.size(1), D = x.size(2);
  SPECDEC_CHECK(N * heads <= INT32_MAX, "E_ARG", "x: too many rows for one launch (", x.describe(), ")");
  const int64_t half = inv_freq.size(0);  // rotary dims / 2 (<= D / 2)
  const int threads = static_cast<int>(std::min<int64_t>(256, ((half + 31) / 32) * 32));
  launch_kernel(rope_kernel, static_cast<unsigned>(N * heads), threads, 0, x.ptr<float>(), positions.ptr<int32_t>(),
                inv_freq.ptr<float>(), heads, D, half, scale);
  SPECDEC_CUDA_LAUNCH_CHECK("rope_kernel");
}

void rope_qk_append(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                    Tensor& kv_layer, const PagedBatch& batch, const ops::QkNorm* norm, float rope_scale) {
  const int64_t N = q.size(0), hq = q.size(1), hk = k.size(1), D = q.size(2);
  SPECDEC_CHECK(N * (hq + 1) <= INT32_MAX, "E_ARG", "q: too many rows for one launch (", q.describe(), ")");
  // 128 threads: q's blocks rotate D / 2 pairs (a warp or two), k's blocks hk x D / 2 pairs and then
  // append hk x D elements of K and of V.
  constexpr int kRopeAppendThreads = 128;
  auto go = [&](auto tag) {
    using KVT = decltype(tag);
    launch_kernel(rope_qk_append_kernel<KVT>, static_cast<unsigned>(N * (hq + 1)), kRopeAppendThreads, 0,
                  q.ptr<float>(), k.ptr<float>(), v.data(), static_cast<int>(v.dtype()), positions.ptr<int32_t>(),
                  inv_freq.ptr<float>(), norm ? norm->q_w.ptr<float>() : nullptr, norm ? norm->k_w.ptr<float>() : nullptr,
                  norm ? norm->eps : 0.f, N, hq, hk, D, inv_freq.size(0), rope_scale, kv_layer.ptr<KVT>(), batch.qo_indptr.ptr<int32_t>(),
                  batch.page_indptr.ptr<int32_t>(), batch.page_indices.ptr<int32_t>(), batch.prefix_len.ptr<int32_t>(),
                  static_cast<int>(batch.batch_size()), static_cast<int>(kv_layer.size(2)));
    SPECDEC_CUDA_LAUNCH_CHECK("rope_qk_append_kernel");
  };
  with_float_type(kv_layer.dtype(), "kv_layer", go);
}

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  const int64_t n = gate.numel();
  launch_kernel(silu_mul_kernel, elementwise_grid(n), 256, 0, gate.ptr<float>(), up.ptr<float>(), out.ptr<float>(), n);
  SPECDEC_CUDA_LAUNCH_CHECK("silu_mul_kernel");
}

void softcap(Tensor& x, float cap) {
  const int64_t n = x.numel();
  launch_kernel(softcap_kernel, elementwise_grid(n), 256, 0, x.ptr<float>(), cap, n);
  SPECDEC_CUDA_LAUNCH_CHECK("softcap_kernel");
}

void scale(Tensor& x, float s) {
  const int64_t n = x.numel();
  launch_kernel(scale_kernel, elementwise_grid(n), 256, 0, x.ptr<float>(), s, n);
  SPECDEC_CUDA_LAUNCH_CHECK("scale_kernel");
}

void gelu_tanh_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  const int64_t n = gate.numel();
  launch_kernel(gelu_tanh_mul_kernel, elementwise_grid(n), 256, 0, gate.ptr<float>(), up.ptr<float>(), out.ptr<float>(), n);
  SPECDEC_CUDA_LAUNCH_CHECK("gelu_tanh_mul_kernel");
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

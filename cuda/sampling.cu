// CUDA: logits processing, argmax, sampling and top-k, one thread block per row (logits processing,
// argmax and sampling of a few rows: by vocabulary slices). No sort: top-k and top-p thresholds come
// from a radix select over order-preserving float keys, ties are resolved by index with a block
// scan, sampling is a block prefix scan over exact integer weights.
// Semantics (identical to the CPU reference) in cpp/core/spec_math.h.
#include "../cpp/core/host_pack.h"
#include "../cpp/core/ops_sampling.h"
#include "common.cuh"
#include "cuda_backend.h"
#include "sampling.cuh"

namespace specdec {
namespace cuda {

using blk::kBlock;
using namespace sampling_kernels;

// processLogits, argmax and sample run one block per row, or -- when the rows alone would leave most
// SMs idle (decode: a few rows of a large vocabulary) -- blocks per 4096-column slice of each row, with
// passes per row over the slices' results. Both give the same bits (argmax and sample: the CPU's
// token). Returns the slice count for the sliced path, 0 for a block per row.
// SPECDEC_CUDA_SLICES=0 keeps one block per row (to compare the two paths on a GPU). Read once: the
// path must not change within a process.
namespace {
bool slices_enabled() {
  static const bool enabled = !env_is("SPECDEC_CUDA_SLICES", "0");
  return enabled;
}

int sliced_launch(int64_t N, int64_t V, const char* what) {
  SPECDEC_CHECK(V <= INT32_MAX, "E_ARG", what, ": rows longer than 2^31 are not supported");
  const int S = argmax_slices(static_cast<int>(V));
  return slices_enabled() && S >= 2 && S <= 65535 && N < sm_count() ? S : 0;
}

// The sliced processLogits' scratch in one block: hist, total and wt first (zeroed together).
struct SliceScratchBlock {
  Tensor mem;
  SliceScratch sc{};
  SliceScratchBlock(int64_t N, int64_t S) {
    const int64_t zeroed = N * 2 * 4 * 256 + 2 * N;  // u64 words
    const int64_t words = zeroed + N * 2 * 5 * 2 + 3 * N * S + 2 * ((N * S + 1) / 2) + (N * S + 1) / 2 + (N + 1) / 2;
    mem = Tensor::empty(DType::u64, {words}, Device::cuda);
    auto* w = mem.ptr<uint64_t>();
    auto take = [&](int64_t n) { uint64_t* p = w; w += n; return p; };
    sc.hist = reinterpret_cast<unsigned long long*>(take(N * 2 * 4 * 256));
    sc.total = reinterpret_cast<unsigned long long*>(take(N));
    sc.wt = reinterpret_cast<unsigned long long*>(take(N));
    sc.state = reinterpret_cast<unsigned long long*>(take(N * 2 * 5 * 2));
    sc.part_z = reinterpret_cast<double*>(take(N * S));
    sc.part_mass = reinterpret_cast<unsigned long long*>(take(N * S));
    sc.ties = reinterpret_cast<unsigned long long*>(take(N * S));
    sc.part_max = reinterpret_cast<float*>(take((N * S + 1) / 2));
    sc.part_pmax = reinterpret_cast<float*>(take((N * S + 1) / 2));
    sc.part_i = reinterpret_cast<int32_t*>(take((N * S + 1) / 2));
    sc.am = reinterpret_cast<int32_t*>(take((N + 1) / 2));
    memset_zero(mem.data(), static_cast<size_t>(zeroed) * sizeof(uint64_t));
  }
};
}  // namespace

void process_logits(const Tensor& logits, const SamplingParams& params, Tensor& probs) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0) return;
  if (const int S = sliced_launch(N, V, "logits")) {
    const SliceScratchBlock scratch(N, S);  // back to the caching allocator on return; the stream orders its reuse
    SPECDEC_DISPATCH_FLOAT(logits.dtype(), "logits", [&] {
      auto go = [&](auto kernel, unsigned gx, unsigned gy, unsigned threads, auto... args) {
        launch_kernel(kernel, dim3(gx, gy), threads, 0, args...);
        SPECDEC_CUDA_LAUNCH_CHECK("process_logits (vocabulary slices)");
      };
      process_logits_slices<scalar_t>(go, logits.ptr<scalar_t>(), probs.ptr<float>(), static_cast<int>(N), static_cast<int>(V), params,
                                      scratch.sc);
    });
    return;
  }
  SPECDEC_DISPATCH_FLOAT(logits.dtype(), "logits", [&] {
    launch_kernel(process_logits_kernel<scalar_t>, static_cast<unsigned>(N), kBlock, 0,
        logits.ptr<scalar_t>(), probs.ptr<float>(), static_cast<int>(V), params);
    SPECDEC_CUDA_LAUNCH_CHECK("process_logits_kernel");
  });
}

void argmax(const Tensor& logits, Tensor& out) {
  const int64_t N = logits.size(0), V = logits.size(1);
  if (N == 0) return;
  if (const int S = sliced_launch(N, V, "logits")) {
    Tensor part_v = Tensor::empty(DType::f32, {N, S}, Device::cuda);
    Tensor part_i = Tensor::empty(DType::i32, {N, S}, Device::cuda);
    SPECDEC_DISPATCH_FLOAT(logits.dtype(), "logits", [&] {
      launch_kernel(argmax_slices_kernel<scalar_t>, dim3(static_cast<unsigned>(N), S), kSliceThreads, 0,
          logits.ptr<scalar_t>(), static_cast<int>(V), part_v.ptr<float>(), part_i.ptr<int32_t>());
      SPECDEC_CUDA_LAUNCH_CHECK("argmax_slices_kernel");
    });
    launch_kernel(argmax_combine_kernel, ceil_div(N, kCombineWarps), kCombineWarps * 32, 0, part_v.ptr<float>(), part_i.ptr<int32_t>(),
                                                                                         S, N, out.ptr<int32_t>());
    SPECDEC_CUDA_LAUNCH_CHECK("argmax_combine_kernel");
    return;  // the partials go back to the caching allocator; the stream orders their reuse
  }
  SPECDEC_DISPATCH_FLOAT(logits.dtype(), "logits", [&] {
    launch_kernel(argmax_kernel<scalar_t>, static_cast<unsigned>(N), kBlock, 0, logits.ptr<scalar_t>(), out.ptr<int32_t>(),
                                                                               static_cast<int>(V));
    SPECDEC_CUDA_LAUNCH_CHECK("argmax_kernel");
  });
}

void sample(const Tensor& probs, const Tensor& seeds, const Tensor& offsets, Tensor& out) {
  const int64_t N = probs.size(0), V = probs.size(1);
  if (N == 0) return;
  if (const int S = sliced_launch(N, V, "probs")) {
    Tensor mass = Tensor::empty(DType::u64, {N, S}, Device::cuda);
    launch_kernel(slice_mass_kernel, dim3(static_cast<unsigned>(N), S), kSliceThreads, 0, probs.ptr<float>(), static_cast<int>(V),
                                                                                        mass.ptr<uint64_t>());
    SPECDEC_CUDA_LAUNCH_CHECK("slice_mass_kernel");
    launch_kernel(sample_slices_kernel, static_cast<unsigned>(N), kBlock, 0, probs.ptr<float>(), mass.ptr<uint64_t>(), seeds.ptr<uint64_t>(),
                                                                           offsets.ptr<uint64_t>(), out.ptr<int32_t>(), static_cast<int>(V));
    SPECDEC_CUDA_LAUNCH_CHECK("sample_slices_kernel");
    return;
  }
  launch_kernel(sample_kernel, static_cast<unsigned>(N), kBlock, 0, probs.ptr<float>(), seeds.ptr<uint64_t>(),
                                                                   offsets.ptr<uint64_t>(), out.ptr<int32_t>(),
                                                                   static_cast<int>(V));
  SPECDEC_CUDA_LAUNCH_CHECK("sample_kernel");
}

void top_k(const Tensor& x, int32_t k, Tensor& vals, Tensor& ids) {
  const int64_t N = x.size(0), V = x.size(1);
  if (N == 0) return;
  Tensor cand_v = Tensor::empty(DType::f32, {N, k}, Device::cuda);
  Tensor cand_i = Tensor::empty(DType::i32, {N, k}, Device::cuda);
  SPECDEC_DISPATCH_FLOAT(x.dtype(), "x", [&] {
    launch_kernel(top_k_kernel<scalar_t>, static_cast<unsigned>(N), kBlock, 0,
        x.ptr<scalar_t>(), static_cast<int>(V), k, cand_v.ptr<float>(), cand_i.ptr<int32_t>(), vals.ptr<float>(),
        ids.ptr<int32_t>());
    SPECDEC_CUDA_LAUNCH_CHECK("top_k_kernel");
  });
  // The scratch goes back to the caching allocator when this returns; the stream orders its reuse.
}

void penalize(Tensor& logits, const PenaltyArgs& a) {
  const int64_t N = logits.size(0), V = logits.size(1);
  // The index arrays in one upload (the host built them; ops::penalize validated them).
  // (Or the caller's: staged with its own upload, and validated by ops::penalize.)
  HostPack pack;
  PenaltyArgs::Staged own;
  const PenaltyArgs::Staged* d = a.staged;
  if (!d) {
    const int rs = pack.add(DType::i32, a.row_seq), hi = pack.add(DType::i32, a.hist_indptr), ht = pack.add(DType::i32, a.hist_tokens),
              hc = pack.add(DType::i32, a.hist_counts), pi = pack.add(DType::i32, a.path_indptr), pt = pack.add(DType::i32, a.path_tokens),
              bt = pack.add(DType::i32, a.bias_tokens), bv = pack.add(DType::f32, a.bias_values), ni = pack.add(DType::i32, a.ban_indptr),
              nt = pack.add(DType::i32, a.ban_tokens), nb = pack.add(DType::i32, a.ban_before);
    pack.upload(Device::cuda);
    own = {pack.view(rs), pack.view(hi), pack.view(ht), pack.view(hc), pack.view(pi), pack.view(pt), pack.view(bt), pack.view(bv), pack.view(ni), pack.view(nt), pack.view(nb)};
    d = &own;
  }
  launch_kernel(penalize_kernel, static_cast<unsigned>(N), kBlock, 0, logits.ptr<float>(), V, d->row_seq.ptr<int32_t>(),
                d->hist_indptr.ptr<int32_t>(), d->hist_tokens.ptr<int32_t>(), d->hist_counts.ptr<int32_t>(), d->path_indptr.ptr<int32_t>(),
                d->path_tokens.ptr<int32_t>(), a.path_source ? a.path_source->ptr<int32_t>() : nullptr, d->bias_tokens.ptr<int32_t>(),
                d->bias_values.ptr<float>(), static_cast<int32_t>(a.bias_tokens.size()), a.ban_indptr.empty() ? nullptr : d->ban_indptr.ptr<int32_t>(),
                d->ban_tokens.ptr<int32_t>(), d->ban_before.ptr<int32_t>(), a.repetition, a.presence, a.frequency);
  SPECDEC_CUDA_LAUNCH_CHECK("penalize_kernel");
}

void mask_tokens(Tensor& logits, const std::vector<int32_t>& rows, const std::vector<uint32_t>& allowed) {
  // rows and the bit words in one upload (ops::mask_tokens checked them).
  const int64_t V = logits.size(1), W = (V + 31) / 32;
  HostPack pack;
  const int r = pack.add(DType::i32, rows), a = pack.add(DType::u32, allowed);
  pack.upload(Device::cuda);
  launch_kernel(mask_tokens_kernel, static_cast<unsigned>(rows.size()), kBlock, 0, logits.ptr<float>(), V, pack.view(r).ptr<int32_t>(),
                pack.view(a).ptr<uint32_t>(), W);
  SPECDEC_CUDA_LAUNCH_CHECK("mask_tokens_kernel");
}

void token_logprobs(const Tensor& logits, const std::vector<int32_t>& rows, const std::vector<int32_t>& tokens, int32_t k, Tensor& lp,
                    Tensor& top_lp, Tensor& top_ids) {
  // rows and tokens in one upload (ops::token_logprobs checked them).
  HostPack pack;
  const int r = pack.add(DType::i32, rows), t = pack.add(DType::i32, tokens);
  pack.upload(Device::cuda);
  launch_kernel(token_logprobs_kernel, static_cast<unsigned>(rows.size()), kBlock, 0, logits.ptr<float>(), logits.size(1), pack.view(r).ptr<int32_t>(),
                pack.view(t).ptr<int32_t>(), k, lp.ptr<float>(), top_lp.ptr<float>(), top_ids.ptr<int32_t>(), false);
  SPECDEC_CUDA_LAUNCH_CHECK("token_logprobs_kernel");
}

void pick_logprobs(const Tensor& logits, const Tensor& picks, const std::vector<int32_t>& rows, int32_t k, Tensor& lp, Tensor& top_lp,
                   Tensor& top_ids) {
  // The rows in one upload; the picks stay where the chain drew them.
  HostPack pack;
  const int r = pack.add(DType::i32, rows);
  pack.upload(Device::cuda);
  launch_kernel(token_logprobs_kernel, static_cast<unsigned>(rows.size()), kBlock, 0, logits.ptr<float>(), logits.size(1), pack.view(r).ptr<int32_t>(),
                picks.ptr<int32_t>(), k, lp.ptr<float>(), top_lp.ptr<float>(), top_ids.ptr<int32_t>(), true);
  SPECDEC_CUDA_LAUNCH_CHECK("token_logprobs_kernel");
}

}  // namespace cuda
}  // namespace specdec

// Runs the tensor-core tree attention kernel (cuda/attention_tc.cuh, with its host launch plan) on
// the host emulation (cuda_emu.h: wmma tiles with exact bf16 products and f32 accumulation) and checks
//   (1) values against a float64 reference: paged prefix, causal and tree-masked new tokens (one and two
//       mask words), GQA/MQA/MHA, head dims 64, 80 and 128, bf16 and f16 caches, f32/f16/bf16 queries
//       and outputs, prefixes across the 64-key tiles, several query-row tiles, a row that sees nothing;
//   (2) tree = path: a random tree's rows are bit-identical to its nodes decoded one token at a time
//       after their paths are committed (decode rows go through the same kernel) and to each leaf's path
//       as a causal chain of new tokens, bf16 and f16 caches;
//   (3) batch invariance: each sequence's rows are bit-identical alone and in the batch;
//   and that nothing is written outside `out` (AddressSanitizer: nothing read out of bounds).
//   (4) split-KV (per-chunk partials + attention.cuh's merge kernel, the planner's grouping) == the
//       in-CTA fold, bit for bit, and tree = path under both.
//   (5) bf16 caches: two K/V buffers (the next pass's tile loads by cp.async while this one computes;
//       the emulated cp.async lands only at its wait) == one buffer, bit for bit.
//   (6) the mma.sync kernel (cuda/attention_mma.cuh: bf16 caches, head dims 64 and 128; per-lane
//       fragments through the emulated ldmatrix / mma.sync) == the wmma kernel, bit for bit, with one
//       and four warps per CTA, folded and split, on the trees and their paths.
// Usage: attention_tc_emu SEED [CONFIGS [TREES]] (limits for the slower ThreadSanitizer build).
#include "cuda_emu.h"
#include "emu_check.h"
// clang-format off: the stand-ins must come first
#include "../../cuda/attention_tc.cuh"
#include "../../cuda/attention_mma.cuh"

#include <cinttypes>
#include <random>
#include <string>

namespace attn = specdec::cuda::attn;
namespace tc = specdec::cuda::attn_tc;
namespace mk = specdec::cuda::attn_mma;
using bf16 = __nv_bfloat16;

namespace {

using emu::from_float;
using emu::report;
using emu::to_float;

#include "attention_problem.h"

constexpr int kGuard = 64;

// f64-reference bound per output type: f32 outputs carry the split-q / split-P error (2^-17 relative
// per piece pair) and f32 accumulation; f16/bf16 outputs are dominated by their own rounding.
template <typename QT> double tolerance() {
  return std::is_same<QT, float>::value ? 1e-5 : std::is_same<QT, __half>::value ? 1e-3 : 8e-3;
}

// Runs the kernels as attention.cu launches them (the plan with this SM count: 0 never splits, a huge
// one splits whenever there are 2+ chunks); returns out as f32; *guard_ok: nothing written outside out.
// mma_warps: 0 runs the wmma kernel (attention_tc.cuh); 1, 2 or 4 the mma.sync kernel
// (attention_mma.cuh, bf16 caches, head dims 64 and 128) with that many warps per CTA; -1 the mma.sync
// kernel with the warps attention.cu picks.
template <typename QT, typename KVT>
std::vector<float> run(const Problem<QT, KVT>& pr, bool* guard_ok, int64_t sm_count = 0, bool* split_used = nullptr,
                       int* chunks_per_cta = nullptr, int stages = 0, int mma_warps = 0) {
  const int64_t N = pr.N();
  const int B = static_cast<int>(pr.seqs.size());
  std::vector<QT> out(static_cast<size_t>(N) * pr.Hq * pr.D + 2 * kGuard, from_float<QT>(-777.f));
  attn::Params p{};
  p.q = pr.q.data();
  p.kv = pr.kv.data();
  p.out = out.data() + kGuard;
  p.qo_indptr = pr.qo_indptr.data();
  p.page_indptr = pr.page_indptr.data();
  p.page_indices = pr.page_indices.data();
  p.prefix_len = pr.prefix.data();
  p.mask = pr.mask.empty() ? nullptr : pr.mask.data();
  p.mask_words = pr.mask.empty() ? 0 : pr.mask_words;
  p.Hq = pr.Hq, p.Hkv = pr.Hkv, p.G = pr.Hq / pr.Hkv, p.D = pr.D, p.page_size = pr.page_size;
  p.scale_log2 = pr.sm_scale * 1.4426950408889634f;
  int64_t max_qo = 0, max_kv = 0;
  for (const auto& s : pr.seqs) max_qo = std::max<int64_t>(max_qo, s.qo), max_kv = std::max<int64_t>(max_kv, s.prefix + s.qo);
  const int pieces = tc::KvPieces<KVT>::value;
  if (!tc::supported(pr.D, pieces, 227 * 1024)) emu::die("unsupported shape");
  // K/V buffers: as attention.cu picks them on an H100 (227 KiB), unless the caller says.
  if (stages == 0) stages = tc::stages_for(pr.D, pieces, 227 * 1024);
  if (mma_warps < 0) mma_warps = mk::warps_for(max_qo, p.G);
  if (mma_warps > 0 && (pieces != 1 || !mk::supported(pr.D, mma_warps, 227 * 1024))) emu::die("unsupported shape (mma)");
  const tc::Plan plan = mma_warps > 0
      ? mk::plan_launch(p, B, pr.qo_indptr.data(), pr.prefix.data(), max_qo, max_kv, sm_count, mma_warps)
      : tc::plan_launch(p, B, pr.qo_indptr.data(), pr.prefix.data(), max_qo, max_kv, sm_count, pieces, stages);
  if (split_used) *split_used = p.split;
  if (chunks_per_cta) *chunks_per_cta = p.chunks_per_cta;
  std::vector<float> part_acc, part_ml;
  if (p.split) {
    part_acc.assign(static_cast<size_t>(N) * pr.Hq * p.max_chunks * pr.D, NAN);
    part_ml.assign(static_cast<size_t>(N) * pr.Hq * p.max_chunks * 2, NAN);
    p.part_acc = part_acc.data();
    p.part_ml = part_ml.data();
  }
  const Dim3 grid{static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y), static_cast<unsigned>(plan.grid_z)};
  if constexpr (tc::KvPieces<KVT>::value == 1) {
    if (mma_warps > 0) {
      emu::launch(grid, 32 * mma_warps, plan.smem, [&] {
        auto go = [&](auto dt) {
          constexpr int DT = decltype(dt)::value;
          if (mma_warps == 1) mk::tree_attention_mma_kernel<QT, DT, 1>(p);
          else if (mma_warps == 2) mk::tree_attention_mma_kernel<QT, DT, 2>(p);
          else mk::tree_attention_mma_kernel<QT, DT, 4>(p);
        };
        if (pr.D == 64) go(std::integral_constant<int, 64>{});
        else go(std::integral_constant<int, 128>{});
      });
    }
  }
  if (mma_warps == 0)
    emu::launch(grid, tc::kThreads, plan.smem, [&] {
      if constexpr (tc::KvPieces<KVT>::value == 1) {
        if (stages == 2) return tc::tree_attention_tc_kernel<QT, KVT, 2>(p);
      }
      tc::tree_attention_tc_kernel<QT, KVT, 1>(p);
    });
  if (p.split) {
    const int64_t rows = N * pr.Hq;
    const Dim3 mgrid{static_cast<unsigned>((rows + attn::kMergeWarps - 1) / attn::kMergeWarps), 1, 1};
    emu::launch(mgrid, attn::kMergeWarps * 32, 0, [&] {
      attn::tree_attention_merge_kernel<QT>(part_acc.data(), part_ml.data(), p.out, rows, p.max_chunks, p.D);
    });
  }
  bool ok = true;
  const float poison = to_float(from_float<QT>(-777.f));
  for (int i = 0; i < kGuard; ++i)
    ok = ok && to_float(out[static_cast<size_t>(i)]) == poison && to_float(out[out.size() - 1 - static_cast<size_t>(i)]) == poison;
  *guard_ok = ok;
  std::vector<float> res(static_cast<size_t>(N) * pr.Hq * pr.D);
  for (size_t i = 0; i < res.size(); ++i) res[i] = to_float(out[kGuard + i]);
  return res;
}

// float64 attention on the stored (rounded) values.
template <typename QT, typename KVT>
std::vector<double> reference(const Problem<QT, KVT>& pr) {
  const int G = pr.Hq / pr.Hkv, D = pr.D;
  std::vector<double> out(static_cast<size_t>(pr.N()) * pr.Hq * D, 0.0);
  for (size_t b = 0; b < pr.seqs.size(); ++b) {
    const auto& s = pr.seqs[b];
    for (int i = 0; i < s.qo; ++i) {
      const int64_t n = pr.qo_indptr[b] + i;
      for (int h = 0; h < pr.Hq; ++h) {
        const int hk = h / G;
        std::vector<double> score;
        std::vector<int> slot;
        for (int t = 0; t < s.prefix + s.qo; ++t) {
          bool vis = t < s.prefix;
          if (!vis) {
            const int j = t - s.prefix;
            vis = pr.mask.empty() ? j <= i : ((pr.mask[static_cast<size_t>(n) * pr.mask_words + (j >> 6)] >> (j & 63)) & 1ull);
          }
          if (!vis) continue;
          double dot = 0;
          for (int d = 0; d < D; ++d)
            dot += static_cast<double>(to_float(pr.q[(static_cast<size_t>(n) * pr.Hq + h) * D + d])) *
                   to_float(pr.kv[pr.kv_index(pr.slot_page(static_cast<int>(b), t), 0, t % pr.page_size, hk, d)]);
          score.push_back(dot * pr.sm_scale);
          slot.push_back(t);
        }
        if (score.empty()) continue;  // sees nothing: zeros
        const double mx = *std::max_element(score.begin(), score.end());
        double z = 0;
        for (double& v : score) z += (v = std::exp(v - mx));
        for (int d = 0; d < D; ++d) {
          double acc = 0;
          for (size_t e = 0; e < score.size(); ++e)
            acc += score[e] * to_float(pr.kv[pr.kv_index(pr.slot_page(static_cast<int>(b), slot[e]), 1, slot[e] % pr.page_size, hk, d)]);
          out[(static_cast<size_t>(n) * pr.Hq + h) * D + d] = acc / z;
        }
      }
    }
  }
  return out;
}

template <typename QT, typename KVT>
void check(std::mt19937_64& rng, const char* label, int Hq, int Hkv, int D, const std::vector<SeqSpec>& seqs) {
  const auto pr = make_problem<QT, KVT>(rng, Hq, Hkv, D, seqs);
  const std::string what = std::string(label) + " (q " + emu::type_name<QT>() + ", kv " + emu::type_name<KVT>() + ", D=" + std::to_string(D) +
                           ", Hq=" + std::to_string(Hq) + ", Hkv=" + std::to_string(Hkv) + ")";
  bool guard = false;
  const auto got = run(pr, &guard);
  const auto ref = reference(pr);
  const double tol = tolerance<QT>();
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(got[i] - ref[i]));
  char buf[96];
  std::snprintf(buf, sizeof buf, ": max abs error %.2e (tolerance %.0e)", worst, tol);
  report(worst <= tol, what + buf);
  report(guard, what + ": writes exactly out");
  // (5) A bf16 cache's two K/V buffers (cp.async into one while the other computes) == one buffer.
  if (tc::KvPieces<KVT>::value == 1) {
    bool g1 = false;
    const auto single = run(pr, &g1, 0, nullptr, nullptr, 1);
    report(g1 && std::memcmp(single.data(), got.data(), got.size() * sizeof(float)) == 0,
           what + ": one K/V buffer == two (cp.async overlapped), bit for bit");
  }
  // (6) The mma.sync kernel (bf16 caches, head dims 64 / 128) == the wmma kernel, bit for bit: with
  // 1 and 4 warps per CTA (the two attention.cu launches), folded, and split with the planned warps.
  if (tc::KvPieces<KVT>::value == 1 && (D == 64 || D == 128)) {
    for (int w : {1, 4}) {
      bool gm = false;
      const auto fast = run(pr, &gm, 0, nullptr, nullptr, 0, w);
      report(gm && std::memcmp(fast.data(), got.data(), got.size() * sizeof(float)) == 0,
             what + ": mma.sync kernel (" + std::to_string(w) + " warps per CTA) == wmma kernel, bit for bit");
    }
    bool gm = false, sp = false;
    const auto fast = run(pr, &gm, int64_t(1) << 40, &sp, nullptr, 0, -1);
    report(gm && std::memcmp(fast.data(), got.data(), got.size() * sizeof(float)) == 0,
           what + ": mma.sync kernel, split-KV" + (sp ? "" : " (one chunk: not split)") + " == wmma kernel, bit for bit");
  }
  // (4) split-KV == in-CTA fold: split whenever there are 2+ chunks, and a planner grouping of 2+
  // chunks per CTA when there are 3+ chunks.
  int64_t max_kv = 0;
  for (const auto& s : seqs) max_kv = std::max<int64_t>(max_kv, s.prefix + s.qo);
  if (max_kv > attn::kChunk) {
    bool sp = false, g = false;
    const auto split = run(pr, &g, int64_t(1) << 40, &sp);
    report(sp && g && std::memcmp(got.data(), split.data(), got.size() * sizeof(float)) == 0,
           what + ": split-KV merge == in-CTA fold, bit for bit");
    for (int64_t sms = 1; sms <= 256; ++sms) {
      attn::Params probe{};
      probe.G = Hq / Hkv, probe.Hkv = Hkv, probe.Hq = Hq, probe.D = D;
      int64_t max_qo = 0;
      for (const auto& sq : seqs) max_qo = std::max<int64_t>(max_qo, sq.qo);
      attn::plan_launch(probe, static_cast<int64_t>(seqs.size()), pr.qo_indptr.data(), pr.prefix.data(), max_qo, max_kv, sms, 2);
      if (!probe.split || probe.chunks_per_cta < 2) continue;
      int cpc = 0;
      const auto grouped = run(pr, &g, sms, &sp, &cpc);
      report(sp && g && std::memcmp(got.data(), grouped.data(), got.size() * sizeof(float)) == 0,
             what + ": split-KV with " + std::to_string(cpc) + " chunks per CTA (" + std::to_string(sms) + " SMs) == in-CTA fold, bit for bit");
      break;
    }
  }
  bool inv = true;
  for (size_t b = 0; b < seqs.size(); ++b) {
    bool g = false;
    const auto one = run(pr.alone(static_cast<int>(b)), &g, 132);
    const size_t off = static_cast<size_t>(pr.qo_indptr[b]) * Hq * D;
    inv = inv && g && std::memcmp(one.data(), got.data() + off, one.size() * sizeof(float)) == 0;
  }
  report(inv, what + ": each sequence alone == in the batch, bit for bit");
}

// Tree = path, bitwise. A random tree of new tokens over a paged prefix is attended in one masked
// launch; then every node's path is laid out as it would be after commit: the prefix, its ancestors'
// K/V copied to the slots right after it, and the node itself decoded as one new token (a batch of
// such decode sequences), and each leaf's whole path as a causal chain of new tokens over the prefix.
// Every row must carry the same bits as the node's tree row, split or not, in either batch.
template <typename QT, typename KVT>
void check_tree_vs_path(std::mt19937_64& rng, int Hq, int Hkv, int D, int prefix, int nodes) {
  const auto tree = make_problem<QT, KVT>(rng, Hq, Hkv, D, {{prefix, nodes, true, -1}});
  const auto pb = make_path_batch(tree, prefix, nodes);
  const auto& path = pb.path;
  const auto& rows_node = pb.rows_node;
  const std::string what = std::string("tensor-core tree = path (q ") + emu::type_name<QT>() + ", kv " + emu::type_name<KVT>() +
                           ", prefix " + std::to_string(prefix) + ", " + std::to_string(nodes) + " nodes, " +
                           std::to_string(path.seqs.size()) + " path sequences)";
  const size_t rl = static_cast<size_t>(Hq) * D;
  std::vector<float> t_out;
  for (int split = 0; split < 2; ++split) {
    const int64_t sms = split ? int64_t(1) << 40 : 0;
    bool g1 = false, g2 = false;
    t_out = run(tree, &g1, sms);
    const auto p_out = run(path, &g2, sms);
    int bad = 0;
    for (size_t r = 0; r < rows_node.size(); ++r)
      bad += std::memcmp(&p_out[r * rl], &t_out[static_cast<size_t>(rows_node[r]) * rl], rl * sizeof(float)) != 0;
    report(g1 && g2 && bad == 0, what + (split ? ", split-KV" : ", in-CTA fold") + ": " + std::to_string(bad) + " of " +
                                     std::to_string(rows_node.size()) + " path rows (decode rows and causal chains) differ from their tree row");
    // The mma.sync kernel gives the wmma kernel's bits for the tree and for the paths (so tree = path
    // holds for it too), each with the warps attention.cu picks.
    if (tc::KvPieces<KVT>::value == 1 && (D == 64 || D == 128) && (!split || prefix + nodes > attn::kChunk)) {
      bool g3 = false, g4 = false;
      const auto tm = run(tree, &g3, sms, nullptr, nullptr, 0, -1);
      const auto pm = run(path, &g4, sms, nullptr, nullptr, 0, -1);
      report(g3 && g4 && std::memcmp(tm.data(), t_out.data(), tm.size() * sizeof(float)) == 0 &&
                 std::memcmp(pm.data(), p_out.data(), pm.size() * sizeof(float)) == 0,
             what + (split ? ", split-KV" : ", in-CTA fold") + ": mma.sync kernel == wmma kernel on the tree and the paths, bit for bit");
    }
  }
  // The tree's rows also within the f64 bound (the tree batch has masked rows below branches).
  const auto ref = reference(tree);
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(t_out[i] - ref[i]));
  char buf[96];
  std::snprintf(buf, sizeof buf, ": tree rows max abs error %.2e (tolerance %.0e)", worst, tolerance<QT>());
  report(worst <= tolerance<QT>(), what + buf);
}
}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  const int configs = argc > 2 ? std::atoi(argv[2]) : 1000;
  std::mt19937_64 rng(seed);
  auto jitter = [&](int n) { return static_cast<int>(rng() % static_cast<uint64_t>(n)); };
  // prefix, new tokens, tree mask?, empty row
  if (configs > 0)
    check<float, bf16>(rng, "GQA, causal + tree + empty row + decode row, prefixes across tiles", 4, 2, 64,
                       {{0, 5, false, -1}, {130 + jitter(20), 1, false, -1}, {60 + jitter(10), 6, true, -1}, {0, 4, true, 2}});
  if (configs > 1) check<float, __half>(rng, "MQA, tree, 2 chunks", 2, 1, 128, {{280 + jitter(30), 9, true, -1}, {5, 2, false, -1}});
  if (configs > 2)
    check<__half, __half>(rng, "MHA, head dim 80, causal", 3, 3, 80, {{70 + jitter(40), 4, false, -1}, {0, 1, false, -1}});
  if (configs > 3)
    // 504 + 9 > 2 * kChunk: always 3 chunks, so a planner grouping of 2 per CTA exists (500 gave 2
    // chunks for 3 of 30 jitters, one check fewer, and minChecks failed).
    check<bf16, bf16>(rng, "GQA 4, 3 query tiles, tree, 3 chunks", 8, 2, 64, {{504 + jitter(30), 9, true, -1}, {200, 2, false, -1}});
  if (configs > 4)
    check<float, bf16>(rng, "causal prefill without a mask, 70 new tokens", 2, 2, 64, {{40 + jitter(30), 70, false, -1}, {0, 3, false, -1}});
  if (configs > 5)
    check<float, __half>(rng, "wide tree, 2 mask words", 2, 1, 64, {{20 + jitter(60), 70, true, -1}});
  if (configs > 6)
    check<bf16, bf16>(rng, "head dim 128, GQA 4, tree of 20 over 2 chunks + decode rows", 8, 2, 128,
                      {{250 + jitter(20), 20, true, -1}, {64 + jitter(64), 1, false, -1}, {0, 1, false, -1}});
  if (configs > 7)
    // 70 masked tokens: the mma.sync kernel's per-token passes (more than 64 new tokens), beside a
    // 40-token tree that gathers, and an empty mask row.
    check<float, bf16>(rng, "MHA, a 70-token tree (per-token passes) and a 40-token one (gathered)", 2, 2, 64,
                       {{30 + jitter(40), 70, true, -1}, {60 + jitter(10), 40, true, 3}});
  // Tree = path for both cache dtypes (f32 queries and outputs: no output rounding hides a
  // difference), prefixes placed so that paths cross the 64-key tile boundaries.
  const int tree_configs = argc > 3 ? std::atoi(argv[3]) : 5;
  if (tree_configs > 0) check_tree_vs_path<float, bf16>(rng, 4, 2, 64, 56 + jitter(8), 16);
  if (tree_configs > 1) check_tree_vs_path<float, __half>(rng, 2, 1, 128, 120 + jitter(8), 16);
  if (tree_configs > 2) check_tree_vs_path<float, bf16>(rng, 2, 1, 64, 500 + jitter(30), 24);
  if (tree_configs > 3) check_tree_vs_path<float, __half>(rng, 4, 1, 64, 245 + jitter(10), 16);
  if (tree_configs > 4) check_tree_vs_path<float, bf16>(rng, 2, 2, 64, jitter(64), 24);
  return emu::summary(seed);
}

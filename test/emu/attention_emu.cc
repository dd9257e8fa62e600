// Runs the CUDA tree attention kernels (cuda/attention.cuh: the fused kernel, its split-KV merge and
// the host launch plan that attention.cu uses) on the host emulation (cuda_emu.h) and checks
//   - values against a float64 reference: paged prefix, causal and tree-masked new tokens, GQA/MQA,
//     head dims 64 and 128 (specialised) and 80 (generic), f32/f16/bf16 queries and KV, several
//     256-key chunks, a masked row that sees nothing (zeros);
//   - that the split-KV path (partials + merge) gives the same bits as the in-CTA fold, and so do one
//     or two K/V buffers and element-by-element staging instead of 16-byte cp.async copies;
//   - the split-KV planner's choices (balanced groups, no split when the batch fills the GPU);
//   - batch invariance: a sequence's rows are bit-identical alone and in the batch;
//   - tree = path: a random tree's rows are bit-identical to its paths committed and decoded (one
//     token, or the whole path as a causal chain), f32/bf16/f16 caches, split and unsplit;
//   - sliding windows (a row sees the last W positions of its list): values against the reference,
//     split == fold, alone == in the batch, tree = path, windows shorter than a tile and longer than a
//     chunk; the planner skips the chunks below every window; soft-capped scores (Gemma 2) likewise;
//   - that nothing is written outside `out`, and (under AddressSanitizer) nothing read out of bounds.
// Usage: attention_emu SEED [CONFIGS [TREES]]: CONFIGS and TREES limit how many of the problem
// configurations and tree = path checks run (the ThreadSanitizer build runs 2 and 0, whose tree-masked
// rows already take the gather path: it is ~3x slower). Exit status 1 if a check failed.
#include "cuda_emu.h"
#include "emu_check.h"
// clang-format off: the stand-ins must come first
#include "../../cuda/attention.cuh"

#include <cinttypes>
#include <random>
#include <string>

namespace attn = specdec::cuda::attn;
using bf16 = __nv_bfloat16;

namespace {

using emu::from_float;
using emu::report;
using emu::to_float;



#include "attention_problem.h"

constexpr int kGuard = 64;

// Runs the kernels as attention.cu launches them (plan_launch with this SM count); returns out as f32.
// *chunks_per_cta (optional) gets the plan's grouping.
// Staging as attention.cu does it (kAsLaunched: its K/V buffer count for the head dim, 16-byte copies
// from an aligned cache), or varied: one or two buffers, element-by-element staging.
struct Staging {
  int stages = 0;  // 0: as attention.cu chooses on an H100 (attn::stages_for: 228 KB an SM, 227 KB opt-in)
  bool elementwise = false;
};
constexpr size_t kH100SmemPerSm = 233472, kH100Optin = 232448;
inline int launched_stages(int DT, int D, int kv_bytes) { return attn::stages_for(DT, D, kv_bytes, kH100SmemPerSm, kH100Optin); }
constexpr Staging kAsLaunched{};

template <typename QT, typename KVT>
std::vector<float> run(const Problem<QT, KVT>& pr, int64_t sm_count, bool* split_used, bool* guard_ok, int* chunks_per_cta = nullptr,
                       Staging staging = kAsLaunched) {
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
  p.window = pr.window;
  p.softcap = pr.softcap;
  p.kv_aligned16 = !staging.elementwise && reinterpret_cast<uintptr_t>(pr.kv.data()) % 16 == 0;
  int64_t max_qo = 0, max_kv = 0;
  for (const auto& s : pr.seqs) max_qo = std::max<int64_t>(max_qo, s.qo), max_kv = std::max<int64_t>(max_kv, s.prefix + s.qo);
  const attn::Plan plan = attn::plan_launch(p, B, pr.qo_indptr.data(), pr.prefix.data(), max_qo, max_kv, sm_count, static_cast<int>(sizeof(KVT)));
  if (chunks_per_cta) *chunks_per_cta = p.chunks_per_cta;
  std::vector<float> part_acc, part_ml;
  if (p.split) {
    part_acc.assign(static_cast<size_t>(N) * pr.Hq * p.max_chunks * pr.D, NAN);
    part_ml.assign(static_cast<size_t>(N) * pr.Hq * p.max_chunks * 2, NAN);
    p.part_acc = part_acc.data();
    p.part_ml = part_ml.data();
  }
  *split_used = p.split;
  const Dim3 grid{static_cast<unsigned>(plan.grid_x), static_cast<unsigned>(plan.grid_y), static_cast<unsigned>(plan.grid_z)};
  auto go = [&](auto dt) {
    constexpr int DT = decltype(dt)::value;
    const int stages = staging.stages ? staging.stages : launched_stages(DT, pr.D, static_cast<int>(sizeof(KVT)));
    const size_t smem = attn::smem_bytes(pr.D, static_cast<int>(sizeof(KVT)), stages);
    if (stages == 4) emu::launch(grid, attn::kWarps * 32, smem, [&] { attn::tree_attention_kernel<QT, KVT, DT, 4>(p); });
    else if (stages == 3) emu::launch(grid, attn::kWarps * 32, smem, [&] { attn::tree_attention_kernel<QT, KVT, DT, 3>(p); });
    else if (stages == 2) emu::launch(grid, attn::kWarps * 32, smem, [&] { attn::tree_attention_kernel<QT, KVT, DT, 2>(p); });
    else emu::launch(grid, attn::kWarps * 32, smem, [&] { attn::tree_attention_kernel<QT, KVT, DT, 1>(p); });
  };
  if (pr.D == 64) go(std::integral_constant<int, 64>{});
  else if (pr.D == 128) go(std::integral_constant<int, 128>{});
  else go(std::integral_constant<int, 0>{});
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
          slot.push_back(t);
        }
        // The window: the last `window` slots of the row's list.
        if (pr.window > 0 && slot.size() > static_cast<size_t>(pr.window)) slot.erase(slot.begin(), slot.end() - pr.window);
        for (const int t : slot) {
          double dot = 0;
          for (int d = 0; d < D; ++d)
            dot += static_cast<double>(to_float(pr.q[(static_cast<size_t>(n) * pr.Hq + h) * D + d])) *
                   to_float(pr.kv[pr.kv_index(pr.slot_page(static_cast<int>(b), t), 0, t % pr.page_size, hk, d)]);
          const double s = dot * pr.sm_scale;
          score.push_back(pr.softcap > 0 ? pr.softcap * std::tanh(s / pr.softcap) : s);
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
void check(std::mt19937_64& rng, const char* label, int Hq, int Hkv, int D, const std::vector<SeqSpec>& seqs, bool staging_variants,
           int window = 0, float softcap = 0.f) {
  auto pr = make_problem<QT, KVT>(rng, Hq, Hkv, D, seqs);
  pr.window = window;
  pr.softcap = softcap;
  const std::string what = std::string(label) + (window ? ", window " + std::to_string(window) : std::string()) +
                           (softcap > 0 ? ", softcap " + std::to_string(softcap).substr(0, 4) : std::string()) + " (q " + emu::type_name<QT>() + ", kv " + emu::type_name<KVT>() + ", D=" + std::to_string(D) +
                           ", Hq=" + std::to_string(Hq) + ", Hkv=" + std::to_string(Hkv) + ")";
  bool split_a = false, split_b = false, guard_a = false, guard_b = false;
  const auto fold = run(pr, 0, &split_a, &guard_a);               // never split
  const auto split = run(pr, int64_t(1) << 40, &split_b, &guard_b);  // split whenever there are 2+ chunks
  const auto ref = reference(pr);
  // Output rounding dominates for f16/bf16 outputs; f32 accumulation error otherwise.
  const double tol = std::is_same<QT, float>::value ? 2e-6 : std::is_same<QT, __half>::value ? 1e-3 : 8e-3;
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i) worst = std::max(worst, std::fabs(fold[i] - ref[i]));
  char buf[96];
  std::snprintf(buf, sizeof buf, ": max abs error %.2e (tolerance %.0e)", worst, tol);
  report(worst <= tol, what + buf);
  report(guard_a && guard_b, what + ": writes exactly out");
  // Chunks a sequence's rows see (with a window: from the chunk of its shortest row's first position).
  int64_t span = 0;
  for (const auto& s : seqs) {
    const int64_t chunks = std::max(1, (s.prefix + s.qo + attn::kChunk - 1) / attn::kChunk);
    const int64_t first = window > 0 ? std::min<int64_t>(chunks - 1, std::max(0, s.prefix + 1 - window) / attn::kChunk) : 0;
    span = std::max(span, chunks - first);
  }
  report(!split_a && split_b == (span > 1), what + ": the plan splits only when asked to (and 2+ chunks in a window)");
  report(std::memcmp(fold.data(), split.data(), fold.size() * sizeof(float)) == 0, what + ": split-KV merge == in-CTA fold, bit for bit");
  // K/V staging changes no bit: every other buffer count (1 to 4: no tile ahead, or up to three in
  // flight), and rows copied element by element (an unaligned cache) instead of 16 bytes at a time.
  // (Run on the first three configurations: f32, bf16 and f16 caches, specialised and generic.)
  if (staging_variants) {
    bool sp = false, g1 = true, g2 = false;
    const int DT = D == 64 || D == 128 ? D : 0;
    const int launched = launched_stages(DT, D, static_cast<int>(sizeof(KVT)));
    std::string others;
    bool same = true;
    for (int st = 1; st <= (DT ? 4 : 2); ++st) {
      if (st == launched) continue;
      bool g = false;
      const auto staged = run(pr, st % 2 ? 0 : int64_t(1) << 40, &sp, &g, nullptr, Staging{st, false});
      g1 = g1 && g;
      same = same && std::memcmp(fold.data(), staged.data(), fold.size() * sizeof(float)) == 0;
      others += (others.empty() ? "" : ", ") + std::to_string(st);
    }
    const auto scalar = run(pr, int64_t(1) << 40, &sp, &g2, nullptr, Staging{0, true});
    report(g1 && same, what + ": " + others + " K/V buffer(s) == " + std::to_string(launched) + " (as launched), bit for bit");
    report(g2 && std::memcmp(fold.data(), scalar.data(), fold.size() * sizeof(float)) == 0,
           what + ": element-by-element staging (split) == 16-byte copies, bit for bit");
  }
  // The planner's grouping: an SM count for which CTAs take 2+ chunks each (when there are 3+ chunks).
  for (int64_t sms = 1; sms <= 256; ++sms) {
    bool sp = false, g = false;
    int cpc = 0;
    attn::Params probe{};
    probe.G = Hq / Hkv, probe.Hkv = Hkv, probe.Hq = Hq, probe.D = D, probe.window = window;
    int64_t max_qo = 0, mkv = 0;
    for (const auto& sq : seqs) max_qo = std::max<int64_t>(max_qo, sq.qo), mkv = std::max<int64_t>(mkv, sq.prefix + sq.qo);
    attn::plan_launch(probe, static_cast<int64_t>(seqs.size()), pr.qo_indptr.data(), pr.prefix.data(), max_qo, mkv, sms, static_cast<int>(sizeof(KVT)));
    if (!probe.split || probe.chunks_per_cta < 2) continue;
    const auto grouped = run(pr, sms, &sp, &g, &cpc);
    report(sp && g && std::memcmp(fold.data(), grouped.data(), fold.size() * sizeof(float)) == 0,
           what + ": split-KV with " + std::to_string(cpc) + " chunks per CTA (" + std::to_string(sms) + " SMs) == in-CTA fold, bit for bit");
    break;
  }
  bool inv = true;
  for (size_t b = 0; b < seqs.size(); ++b) {
    bool sp = false, g = false;
    const auto one = run(pr.alone(static_cast<int>(b)), 132, &sp, &g);
    const size_t off = static_cast<size_t>(pr.qo_indptr[b]) * Hq * D;
    inv = inv && g && std::memcmp(one.data(), fold.data() + off, one.size() * sizeof(float)) == 0;
  }
  report(inv, what + ": each sequence alone == in the batch, bit for bit");
}


// Tree = path, bitwise. A random tree of new tokens over a paged prefix is attended in one masked
// launch; then every node's path is laid out as it would be after commit: the prefix, its ancestors'
// K/V copied to the slots right after it, and the node itself decoded as one new token (a batch of
// such decode sequences), and each leaf's whole path as a causal chain of new tokens over the prefix.
// Every row must carry the same bits as the node's tree row, split or not, in either batch.
template <typename QT, typename KVT>
void check_tree_vs_path(std::mt19937_64& rng, int Hq, int Hkv, int D, int prefix, int nodes, int window = 0, float softcap = 0.f) {
  auto tree = make_problem<QT, KVT>(rng, Hq, Hkv, D, {{prefix, nodes, true, -1}});
  tree.window = window;
  tree.softcap = softcap;
  const auto pb = make_path_batch(tree, prefix, nodes);
  const auto& path = pb.path;
  const auto& rows_node = pb.rows_node;
  const std::string what = std::string("tree = path (q ") + emu::type_name<QT>() + ", kv " + emu::type_name<KVT>() +
                           ", prefix " + std::to_string(prefix) + ", " + std::to_string(nodes) + " nodes, " +
                           std::to_string(path.seqs.size()) + " path sequences" +
                           (window ? ", window " + std::to_string(window) : std::string()) +
                           (softcap > 0 ? ", softcap " + std::to_string(softcap).substr(0, 4) : std::string()) + ")";
  const size_t rl = static_cast<size_t>(Hq) * D;
  for (int split = 0; split < 2; ++split) {
    const int64_t sms = split ? int64_t(1) << 40 : 0;
    bool s1 = false, s2 = false, g1 = false, g2 = false;
    const auto t_out = run(tree, sms, &s1, &g1);
    const auto p_out = run(path, sms, &s2, &g2);
    int bad = 0;
    for (size_t r = 0; r < rows_node.size(); ++r)
      bad += std::memcmp(&p_out[r * rl], &t_out[static_cast<size_t>(rows_node[r]) * rl], rl * sizeof(float)) != 0;
    report(g1 && g2 && bad == 0, what + (split ? ", split-KV" : ", in-CTA fold") + ": " + std::to_string(bad) + " of " +
                                   std::to_string(rows_node.size()) + " path rows differ from their tree row");
  }
}
// The split-KV planner's choices (host only): a batch that fills the GPU is not split; a lone long
// sequence is spread one chunk per CTA; a long sequence among short ones is split into equal groups
// no longer than the average work per resident CTA; and, for random ragged batches and SM counts,
// every split is balanced (cpc = ceil(max_chunks / groups): no shorter longest CTA for as many groups).
void check_planner(std::mt19937_64& rng) {
  auto plan = [](const std::vector<int32_t>& prefix, const std::vector<int32_t>& qo, int64_t sms, attn::Params& p,
                 int64_t* work) {
    p = attn::Params{};
    p.Hq = 32, p.Hkv = 8, p.G = 4, p.D = 128;
    std::vector<int32_t> indptr{0};
    int64_t max_qo = 0, max_kv = 0;
    *work = 0;
    for (size_t b = 0; b < qo.size(); ++b) {
      indptr.push_back(indptr.back() + qo[b]);
      max_qo = std::max<int64_t>(max_qo, qo[b]), max_kv = std::max<int64_t>(max_kv, prefix[b] + qo[b]);
      *work += int64_t(p.Hkv) * ((qo[b] * p.G + attn::kRowsPerCta - 1) / attn::kRowsPerCta) *
               std::max<int64_t>(1, (prefix[b] + qo[b] + attn::kChunk - 1) / attn::kChunk);
    }
    return attn::plan_launch(p, static_cast<int64_t>(qo.size()), indptr.data(), prefix.data(), max_qo, max_kv, sms, 2);
  };
  attn::Params p{};
  int64_t work = 0;
  plan(std::vector<int32_t>(32, 4095), std::vector<int32_t>(32, 1), 132, p, &work);
  report(!p.split, "planner: 32 decode rows over 4k on 132 SMs (256 CTAs of 16 chunks fill the GPU): not split");
  plan({4095}, {1}, 132, p, &work);
  report(p.split && p.chunks_per_cta == 1, "planner: one decode row over 4k on 132 SMs: split, one chunk per CTA (got " +
                                               std::to_string(p.chunks_per_cta) + ")");
  std::vector<int32_t> pre(31, 511), q(31, 1);
  pre.push_back(32767), q.push_back(1);
  plan(pre, q, 132, p, &work);
  const int64_t per_slot = std::max<int64_t>(1, work / 264);
  report(p.split && p.chunks_per_cta <= per_slot,
         "planner: one 32k sequence among 31 of 512 on 132 SMs: split, " + std::to_string(p.chunks_per_cta) +
             " chunks per CTA <= " + std::to_string(per_slot) + " (the average work per resident CTA)");
  int unbalanced = 0, splits = 0;
  for (int t = 0; t < 400; ++t) {
    const int B = 1 + static_cast<int>(rng() % 40);
    std::vector<int32_t> pr(B), qq(B);
    for (int b = 0; b < B; ++b) pr[b] = static_cast<int32_t>(rng() % (rng() % 4 == 0 ? 40000 : 3000)), qq[b] = 1 + static_cast<int32_t>(rng() % 64);
    const int64_t sms = 1 + static_cast<int64_t>(rng() % 200);
    plan(pr, qq, sms, p, &work);
    if (!p.split) continue;
    ++splits;
    const int64_t mc = p.max_chunks, cpc = p.chunks_per_cta, groups = (mc + cpc - 1) / cpc;
    unbalanced += cpc != (mc + groups - 1) / groups || cpc > std::max<int64_t>(1, work / (2 * sms));
  }
  report(splits >= 20 && unbalanced == 0, "planner: " + std::to_string(splits) + " random ragged splits, " +
                                             std::to_string(unbalanced) + " unbalanced or longer than the average work per resident CTA");
}
}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  const int configs = argc > 2 ? std::atoi(argv[2]) : 1000;
  std::mt19937_64 rng(seed);
  check_planner(rng);
  // prefix, new tokens, tree mask?, empty row
  if (configs > 0)
    check<float, float>(rng, "GQA, causal + tree + empty row, 2 chunks", 4, 2, 64,
                        {{0, 5, false, -1}, {270, 1, false, -1}, {290, 6, true, -1}, {0, 4, true, 2}}, true);
  if (configs > 1) check<float, bf16>(rng, "MQA, tree, 2 chunks", 2, 1, 128, {{300, 3, true, -1}, {5, 2, false, -1}}, true);
  if (configs > 2)
    check<__half, __half>(rng, "MHA, generic head dim, causal", 3, 3, 80, {{258, 4, false, -1}, {0, 1, false, -1}}, true);
  if (configs > 3)
    check<bf16, bf16>(rng, "GQA 4, 3 query tiles, 3 chunks", 8, 2, 64, {{100, 9, true, -1}, {513, 2, false, -1}}, false);
  if (configs > 4)
    check<float, __half>(rng, "causal batch without a mask, 70 new tokens, 1 chunk", 2, 2, 64,
                         {{40, 70, false, -1}, {0, 3, false, -1}}, false);
  // Tree = path for every cache dtype (f32 queries and outputs, so no output rounding hides a
  // difference), with prefixes across the 32-key tiles and the 256-key chunks.
  // Sliding windows: shorter than a lane tile, across tiles, longer than a chunk (split), in new tokens only.
  // (The emulation runs under ASan in CI on 2 loaded cores: these stay small.)
  if (configs > 5)
    check<float, float>(rng, "GQA, causal + tree + prefill", 4, 2, 64, {{0, 5, false, -1}, {270, 1, false, -1}, {290, 6, true, -1}, {3, 24, false, -1}}, false, 5);
  if (configs > 6) check<float, bf16>(rng, "MQA, tree + decode, 3 chunks", 2, 1, 64, {{700, 9, true, -1}, {517, 1, false, -1}}, false, 300);
  if (configs > 7) check<__half, __half>(rng, "MHA, generic head dim", 3, 3, 80, {{262, 4, true, -1}, {0, 12, false, -1}}, false, 37);
  // Soft-capped scores (Gemma 2: a cap that bends the random scores).
  if (configs > 8) check<float, bf16>(rng, "GQA, tree + causal, 2 chunks", 4, 2, 64, {{300, 7, true, -1}, {20, 9, false, -1}}, false, 0, 0.75f);
  const int tree_configs = argc > 3 ? std::atoi(argv[3]) : 6;
  if (tree_configs > 0) check_tree_vs_path<float, float>(rng, 4, 2, 64, 262 + static_cast<int>(rng() % 20), 16);
  if (tree_configs > 1) check_tree_vs_path<float, bf16>(rng, 2, 1, 64, 230 + static_cast<int>(rng() % 20), 16);
  if (tree_configs > 2) check_tree_vs_path<float, __half>(rng, 2, 1, 128, 40 + static_cast<int>(rng() % 30), 16);
  // ... under sliding windows: shorter than the tree's depth, and across a chunk boundary (split).
  if (tree_configs > 3) check_tree_vs_path<float, bf16>(rng, 2, 1, 64, 262 + static_cast<int>(rng() % 20), 16, 3 + static_cast<int>(rng() % 5));
  if (tree_configs > 4) check_tree_vs_path<float, float>(rng, 2, 1, 64, 290 + static_cast<int>(rng() % 20), 16, 200 + static_cast<int>(rng() % 20));
  if (tree_configs > 5) check_tree_vs_path<float, bf16>(rng, 2, 1, 64, 262 + static_cast<int>(rng() % 20), 16, 0, 0.75f);
  return emu::summary(seed);
}

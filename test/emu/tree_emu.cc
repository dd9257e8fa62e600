// Runs the tree-expansion kernels (cuda/tree.cuh: a level's choice of nodes with its page gather,
// the children's append, the rows' paths, the row gather) on the host emulation with the launch shapes of tree.cu,
// and checks them bit for bit against a plain reference (a full sort; the f64 sums written out)
// and against the CPU backend (cpp/cpu/tree.cc) on random pools with ties, -inf and NaN log
// probabilities, empty and full choices, and out-of-range device indices (clamped).
// Usage: tree_emu SEED [quick]. One line per check; exit status 1 if any failed.
#include "cuda_emu.h"
#include "emu_check.h"
// clang-format off: the stand-ins must come first
#include "../../cuda/tree.cuh"
#include "../../cpp/core/ops_tree.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>

namespace tk = specdec::cuda::tree_kernels;
using emu::report;
using specdec::DType;
using specdec::Tensor;

namespace {

template <typename T>
Tensor tensor(const std::vector<T>& v, DType dt) {
  return Tensor::from_host(dt, {static_cast<int64_t>(v.size())}, v.data());
}
template <typename T>
std::vector<T> host(const Tensor& t) {
  std::vector<T> v(static_cast<size_t>(t.numel()));
  t.copy_to_host(v.data(), v.size() * sizeof(T));
  return v;
}

// A log probability drawn so that ties, -inf and NaN all occur.
double draw_lp(std::mt19937_64& rng) {
  const int kind = static_cast<int>(rng() % 10);
  if (kind == 0) return -HUGE_VAL;
  if (kind == 1) return NAN;
  if (kind < 5) return -static_cast<double>(rng() % 4);  // few values: many ties
  return -std::ldexp(static_cast<double>(rng() % 100000), -10);
}

void check_select(std::mt19937_64& rng, int B, int max_open, bool pages) {
  // Pool: each sequence's open entries in a random window, with other entries around them.
  std::vector<int32_t> open_start, open_count, row_indptr{0};
  int64_t P = 0;
  for (int b = 0; b < B; ++b) {
    P += static_cast<int64_t>(rng() % 3);  // entries before, not open
    const int n = static_cast<int>(rng() % (max_open + 1));
    open_start.push_back(static_cast<int32_t>(P));
    open_count.push_back(n);
    P += n;
    const int take = n == 0 ? 0 : static_cast<int>(rng() % 4 == 0 ? n : rng() % (n + 1));
    row_indptr.push_back(row_indptr.back() + take);
  }
  P = std::max<int64_t>(P, 1);
  const int R = row_indptr.back();
  std::vector<double> lp(static_cast<size_t>(P));
  std::vector<int32_t> tok(static_cast<size_t>(P)), prow(static_cast<size_t>(P)), par(static_cast<size_t>(P), -1);
  const int prev_rows = 1 + static_cast<int>(rng() % 9);
  for (int64_t e = 0; e < P; ++e) {
    lp[static_cast<size_t>(e)] = draw_lp(rng);
    tok[static_cast<size_t>(e)] = static_cast<int32_t>(rng() % 50000);
    // Mostly valid rows; a few outside the previous level (the page gather clamps them).
    prow[static_cast<size_t>(e)] = static_cast<int32_t>(rng() % 16 == 0 ? prev_rows + static_cast<int>(rng() % 3) : rng() % prev_rows);
  }
  // Previous rows' tails (1-3 pages each) and this level's tail counts (1-3 per row).
  std::vector<int32_t> prev_tail, prev_tail_indptr{0}, tail_indptr{0};
  for (int r = 0; r < prev_rows; ++r) {
    const int n = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < n; ++k) prev_tail.push_back(static_cast<int32_t>(rng() % 1000));
    prev_tail_indptr.push_back(static_cast<int32_t>(prev_tail.size()));
  }
  for (int r = 0; r < R; ++r) tail_indptr.push_back(tail_indptr.back() + 1 + static_cast<int>(rng() % 3));

  // Reference: sort each window by (log probability descending, NaN as -inf; index ascending).
  std::vector<int32_t> ref_node(static_cast<size_t>(R)), ref_tok(static_cast<size_t>(R)), ref_src(static_cast<size_t>(R));
  for (int b = 0; b < B; ++b) {
    std::vector<int32_t> idx(static_cast<size_t>(open_count[b]));
    std::iota(idx.begin(), idx.end(), open_start[b]);
    auto key = [&](int32_t e) { const double v = lp[static_cast<size_t>(e)]; return std::isnan(v) ? -HUGE_VAL : v; };
    std::stable_sort(idx.begin(), idx.end(), [&](int32_t x, int32_t y) { return key(x) > key(y); });
    for (int k = 0; k < row_indptr[b + 1] - row_indptr[b]; ++k) {
      const int32_t e = idx[static_cast<size_t>(k)];
      ref_node[static_cast<size_t>(row_indptr[b] + k)] = e;
      ref_tok[static_cast<size_t>(row_indptr[b] + k)] = tok[static_cast<size_t>(e)];
      ref_src[static_cast<size_t>(row_indptr[b] + k)] = prow[static_cast<size_t>(e)];
    }
  }
  std::vector<int32_t> ref_pages(static_cast<size_t>(tail_indptr.back()));
  for (int r = 0; r < R; ++r) {
    const int32_t s = std::clamp(ref_src[static_cast<size_t>(r)], 0, prev_rows - 1);
    const int32_t at = prev_tail_indptr[static_cast<size_t>(s)], have = prev_tail_indptr[static_cast<size_t>(s) + 1] - at;
    for (int32_t k = 0; k < tail_indptr[static_cast<size_t>(r) + 1] - tail_indptr[static_cast<size_t>(r)]; ++k)
      ref_pages[static_cast<size_t>(tail_indptr[static_cast<size_t>(r)] + k)] = prev_tail[static_cast<size_t>(at + std::min(k, have - 1))];
  }

  // The kernel, launched as tree.cu launches it.
  std::vector<int32_t> node(static_cast<size_t>(R), -7), token(static_cast<size_t>(R), -7), src(static_cast<size_t>(R), -7),
      out_pages(static_cast<size_t>(tail_indptr.back()), -7);
  emu::launch(Dim3{static_cast<unsigned>(B), 1, 1}, tk::kThreads, [&] {
    tk::tree_select_kernel(lp.data(), tok.data(), prow.data(), open_start.data(), open_count.data(), row_indptr.data(),
                           node.data(), token.data(), src.data(), pages ? prev_tail.data() : nullptr,
                           pages ? prev_tail_indptr.data() : nullptr, pages ? prev_rows : 0,
                           pages ? tail_indptr.data() : nullptr, pages ? out_pages.data() : nullptr);
  });
  // The CPU backend.
  specdec::TreePool pool{tensor(tok, DType::i32), tensor(par, DType::i32), tensor(lp, DType::f64), tensor(prow, DType::i32)};
  specdec::TreeLevel level;
  level.open_start = open_start;
  level.open_count = open_count;
  level.row_indptr = row_indptr;
  Tensor cn = Tensor::empty(DType::i32, {R}), ct = Tensor::empty(DType::i32, {R}), cs = Tensor::empty(DType::i32, {R});
  specdec::TailGather g;
  g.prev_tail_indptr = prev_tail_indptr;
  g.tail_indptr = tail_indptr;
  g.d_prev_tail = tensor(prev_tail, DType::i32);
  g.src_pages = Tensor::empty(DType::i32, {tail_indptr.back()});
  specdec::cpu::tree_select(pool, level, cn, ct, cs, pages ? &g : nullptr);

  const std::string what = "tree_select B=" + std::to_string(B) + " max_open=" + std::to_string(max_open) + " R=" + std::to_string(R) +
                           (pages ? " with pages" : "");
  report(node == ref_node && token == ref_tok && src == ref_src, what + ": kernel == sorted reference");
  report(host<int32_t>(cn) == ref_node && host<int32_t>(ct) == ref_tok && host<int32_t>(cs) == ref_src,
         what + ": CPU backend == sorted reference");
  if (pages) {
    report(out_pages == ref_pages, what + ": kernel's page gather == reference");
    report(host<int32_t>(g.src_pages) == ref_pages, what + ": CPU backend's page gather == reference");
  }
}

void check_grow(std::mt19937_64& rng, int R, int K, bool with_map) {
  const int64_t before = static_cast<int64_t>(rng() % 20);  // existing entries (the rows' nodes)
  const int64_t P = before + static_cast<int64_t>(R) * K + static_cast<int64_t>(rng() % 5);
  std::vector<double> lp(static_cast<size_t>(P));
  std::vector<int32_t> tok(static_cast<size_t>(P), -3), par(static_cast<size_t>(P), -3), row(static_cast<size_t>(P), -3);
  for (auto& v : lp) v = draw_lp(rng);
  std::vector<float> vals(static_cast<size_t>(R * K));
  for (auto& v : vals) {
    const int kind = static_cast<int>(rng() % 8);
    v = kind == 0 ? 0.f : kind == 1 ? 1.f : static_cast<float>(std::ldexp(static_cast<double>(rng() % 1000000 + 1), -20));
  }
  const int32_t V = 37;
  std::vector<int32_t> ids(static_cast<size_t>(R * K)), node(static_cast<size_t>(R)), out_start(static_cast<size_t>(R)), map;
  // Draft ids inside the map, a few outside (clamped); nodes among the existing entries, or the root.
  for (auto& i : ids) i = static_cast<int32_t>(rng() % 20 == 0 ? V + static_cast<int>(rng() % 4) : rng() % V);
  for (auto& n : node) n = before == 0 || rng() % 5 == 0 ? -1 : static_cast<int32_t>(rng() % before);
  int64_t at = before;
  for (int r = 0; r < R; ++r, at += K) out_start[static_cast<size_t>(r)] = static_cast<int32_t>(at);
  if (with_map)
    for (int32_t i = 0; i < V; ++i) map.push_back(static_cast<int32_t>(1000 + 7 * i));
  // Reference: the f64 sums written out.
  std::vector<double> rlp = lp;
  std::vector<int32_t> rtok = tok, rpar = par, rrow = row;
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < K; ++j) {
      const size_t i = static_cast<size_t>(r * K + j), e = static_cast<size_t>(out_start[static_cast<size_t>(r)] + j);
      const int32_t n = node[static_cast<size_t>(r)];
      const double base = n < 0 ? 0.0 : lp[static_cast<size_t>(n)];
      rlp[e] = base + static_cast<double>(static_cast<float>(std::log(static_cast<double>(vals[i]))));
      rtok[e] = with_map ? map[static_cast<size_t>(std::clamp(ids[i], 0, V - 1))] : ids[i];
      rpar[e] = n;
      rrow[e] = r;
    }
  std::vector<double> klp = lp;
  std::vector<int32_t> ktok = tok, kpar = par, krow = row;
  const int64_t n = static_cast<int64_t>(R) * K;
  emu::launch(Dim3{static_cast<unsigned>((n + tk::kThreads - 1) / tk::kThreads), 1, 1}, tk::kThreads, [&] {
    tk::tree_grow_kernel(vals.data(), ids.data(), node.data(), out_start.data(), with_map ? map.data() : nullptr,
                         with_map ? V : 0, ktok.data(), kpar.data(), klp.data(), krow.data(), R, K, P);
  });
  specdec::TreePool pool{tensor(tok, DType::i32), tensor(par, DType::i32), tensor(lp, DType::f64), tensor(row, DType::i32)};
  specdec::cpu::tree_grow(pool, Tensor::from_host(DType::f32, {R, K}, vals.data()), Tensor::from_host(DType::i32, {R, K}, ids.data()),
                          tensor(node, DType::i32), tensor(out_start, DType::i32), with_map ? tensor(map, DType::i32) : Tensor());
  auto same_bits = [](const std::vector<double>& a, const std::vector<double>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
  };
  const std::string what = "tree_grow R=" + std::to_string(R) + " K=" + std::to_string(K) + (with_map ? " with d2t" : "");
  report(same_bits(klp, rlp) && ktok == rtok && kpar == rpar && krow == rrow, what + ": kernel == reference (bits)");
  report(same_bits(host<double>(pool.log_prob), rlp) && host<int32_t>(pool.token) == rtok && host<int32_t>(pool.parent) == rpar &&
             host<int32_t>(pool.row) == rrow,
         what + ": CPU backend == reference (bits)");
}

// Pools whose parents mostly point earlier (trees), some at themselves or later (cycles), some out
// of range (clamped); nodes among the entries, -1 (no path), or out of range.
void check_paths(std::mt19937_64& rng, int64_t P, int64_t R, int64_t L, bool with_map) {
  std::vector<int32_t> tok(static_cast<size_t>(P)), par(static_cast<size_t>(P)), row(static_cast<size_t>(P), 0), node(static_cast<size_t>(R));
  std::vector<double> lp(static_cast<size_t>(P), 0.0);
  const int32_t V = 50;
  for (int64_t e = 0; e < P; ++e) {
    tok[static_cast<size_t>(e)] = static_cast<int32_t>(rng() % 12 == 0 ? static_cast<int64_t>(rng() % 8) - 4 + (rng() % 2 ? V : 0) : rng() % V);
    const int kind = static_cast<int>(rng() % 10);
    par[static_cast<size_t>(e)] = kind == 0 ? -1 : kind == 1 ? static_cast<int32_t>(e) : kind == 2 ? static_cast<int32_t>(P + rng() % 3)
                                : kind == 3 ? -static_cast<int32_t>(2 + rng() % 3) : e == 0 ? -1 : static_cast<int32_t>(rng() % e);
  }
  for (auto& n : node) n = rng() % 8 == 0 ? -1 : rng() % 9 == 0 ? static_cast<int32_t>(P + rng() % 4) : static_cast<int32_t>(rng() % P);
  std::vector<int32_t> map;
  if (with_map)
    for (int32_t t = 0; t < V - 7; ++t) map.push_back(rng() % 4 == 0 ? -1 : static_cast<int32_t>(rng() % 30));
  // Reference: the walk written out (negative parents end it, others clamp into the pool).
  std::vector<int32_t> ref(static_cast<size_t>(R * L)), out(static_cast<size_t>(R * L), 77);
  for (int64_t r = 0; r < R; ++r) {
    int64_t e = node[static_cast<size_t>(r)];
    if (e >= P) e = P - 1;
    for (int64_t j = 0; j < L; ++j) {
      int32_t t = -1;
      if (e >= 0) {
        t = tok[static_cast<size_t>(e)];
        if (with_map) t = t >= 0 && t < static_cast<int32_t>(map.size()) ? map[static_cast<size_t>(t)] : -1;
      }
      ref[static_cast<size_t>(r * L + j)] = t;
      if (e >= 0) e = par[static_cast<size_t>(e)] < 0 ? -1 : std::min<int64_t>(par[static_cast<size_t>(e)], P - 1);
    }
  }
  emu::launch(Dim3{static_cast<unsigned>((R + tk::kThreads - 1) / tk::kThreads), 1, 1}, tk::kThreads, [&] {
    tk::tree_paths_kernel(tok.data(), par.data(), P, node.data(), with_map ? map.data() : nullptr,
                          with_map ? static_cast<int32_t>(map.size()) : 0, out.data(), R, L);
  });
  specdec::TreePool pool{tensor(tok, DType::i32), tensor(par, DType::i32), tensor(lp, DType::f64), tensor(row, DType::i32)};
  Tensor co = Tensor::empty(DType::i32, {R, L});
  specdec::ops::tree_paths(pool, tensor(node, DType::i32), with_map ? tensor(map, DType::i32) : Tensor(), co);
  const std::string what = "tree_paths P=" + std::to_string(P) + " R=" + std::to_string(R) + " L=" + std::to_string(L) + (with_map ? " with t2d" : "");
  report(out == ref, what + ": kernel == reference");
  report(host<int32_t>(co) == ref, what + ": CPU backend (validated dispatcher) == reference");
}

void check_rows_at(std::mt19937_64& rng, int64_t n, int64_t w, int64_t m) {
  std::vector<float> x(static_cast<size_t>(n * w));
  for (auto& v : x) v = static_cast<float>(rng() % 100000) * 0.01f - 500.f;
  std::vector<int32_t> idx(static_cast<size_t>(m));
  for (auto& i : idx) i = static_cast<int32_t>(rng() % 10 == 0 ? static_cast<int64_t>(rng() % 5) - 2 + (rng() % 2 ? n : 0) : rng() % n);
  std::vector<float> ref(static_cast<size_t>(m * w)), out(static_cast<size_t>(m * w), -1.f);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t r = std::clamp<int64_t>(idx[static_cast<size_t>(i)], 0, n - 1);
    std::copy(x.begin() + r * w, x.begin() + (r + 1) * w, ref.begin() + i * w);
  }
  emu::launch(Dim3{static_cast<unsigned>(m), 1, 1}, tk::kThreads, [&] {
    tk::rows_at_kernel(reinterpret_cast<const uint32_t*>(x.data()), idx.data(), reinterpret_cast<uint32_t*>(out.data()), n, w);
  });
  Tensor co = Tensor::empty(DType::f32, {m, w});
  specdec::cpu::rows_at(Tensor::from_host(DType::f32, {n, w}, x.data()), tensor(idx, DType::i32), co);
  const std::string what = "rows_at n=" + std::to_string(n) + " w=" + std::to_string(w) + " m=" + std::to_string(m);
  report(out == ref, what + ": kernel == reference (clamped indices)");
  report(host<float>(co) == ref, what + ": CPU backend == reference (clamped indices)");
}

}  // namespace

int main(int argc, char** argv) {
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  const bool quick = argc > 2 && std::string(argv[2]) == "quick";
  std::mt19937_64 rng(seed);
  for (auto [B, open] : quick ? std::vector<std::pair<int, int>>{{3, 40}} : std::vector<std::pair<int, int>>{{1, 1}, {1, 8}, {4, 64}, {3, 300}, {9, 700}}) {
    check_select(rng, B, open, false);
    check_select(rng, B, open, true);
  }
  for (auto [R, K] : quick ? std::vector<std::pair<int, int>>{{5, 4}} : std::vector<std::pair<int, int>>{{1, 1}, {3, 8}, {17, 10}, {40, 33}}) {
    check_grow(rng, R, K, false);
    check_grow(rng, R, K, true);
  }
  for (auto [P, R, L] : quick ? std::vector<std::tuple<int64_t, int64_t, int64_t>>{{30, 7, 4}}
                              : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 1}, {1, 3, 5}, {40, 300, 6}, {500, 97, 12}}) {
    check_paths(rng, P, R, L, false);
    check_paths(rng, P, R, L, true);
  }
  for (auto [n, w, m] : quick ? std::vector<std::tuple<int64_t, int64_t, int64_t>>{{4, 70, 6}}
                              : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{1, 1, 3}, {5, 300, 9}, {33, 64, 40}}) {
    check_rows_at(rng, n, w, m);
  }
  return emu::summary(seed);
}

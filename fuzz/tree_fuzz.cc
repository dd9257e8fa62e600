// Fuzz target: the device side of EAGLE's dynamic tree expansion (cpp/core/ops_tree.h: tree_select
// with and without a TailGather, tree_grow with and without a d2t map, tree_paths with and without a
// target -> draft map, rows_at; CPU backend in
// cpp/cpu/tree.cc) and the page copy that follows a level's selection (ops::kv_copy_pages_among,
// cpp/core/ops_attention.cc) on a small KvCache. The bytes decode to a candidate pool (up to 64
// entries; path log probabilities with ties, -0, +-inf, NaN and raw bit patterns; hostile tokens
// and rows), then a program of levels: open ranges, take counts and row_indptr, tail gathers,
// children (vals, ids, node, out_start, map), row gathers and page copies; the outputs of one call
// feed the next now and then, as in cpp/model/eagle.cc. Now and then one argument is damaged: a
// host argument out of range (open ranges past the pool, take > open_count, non-monotone indptr,
// overlapping or out-of-pool out_start, sources out of range or among the destinations), a wrong
// shape or dtype. Indices only the device knows (node, ids, idx, the pool's rows) are often out
// of their tables: the contract clamps them.
// Every call either fails with E_ARG (exactly when the contract's host checks fail) and changes
// nothing, or its outputs equal a plain reference of the header's contract, bit for bit: the
// `take` best open entries in sm::expand_better's order, the gathered tail pages, the children
// (token = map[clamped id] or id, parent = clamped node, log_prob = sm::child_log_prob(parent's or
// 0, val), row = r) with every other pool entry unchanged, the clamped rows, the copied pages.
// The pool, the map and rows_at's x lie inside larger buffers whose guard entries must never be
// written or read (a read would show in the outputs).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <tuple>

#include "../cpp/core/kv_cache.h"
#include "../cpp/core/ops_attention.h"
#include "../cpp/core/ops_tree.h"
#include "../cpp/core/spec_math.h"
#include "fuzz_common.h"

using namespace specdec;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_process();
  return 0;
}

namespace {

constexpr int64_t kGuard = 3;               // guard entries (rows) either side of a guarded tensor
constexpr int32_t kGuardI32 = 0x47474747;   // their value (i32 / raw 4-byte words)
constexpr double kGuardF64 = 4747.4747;     // the pool's log_prob guards
constexpr int32_t kSentinel = -0x2A2A2A2B;  // outputs before a call

Tensor i32_tensor(const std::vector<int32_t>& v) { return Tensor::from_host(DType::i32, {static_cast<int64_t>(v.size())}, v.data()); }

Tensor filled_i32(int64_t n, int32_t value) {
  std::vector<int32_t> v(static_cast<size_t>(std::max<int64_t>(n, 0)), value);
  return i32_tensor(v);
}

std::vector<int32_t> host_i32(const Tensor& t) {
  const int32_t* p = t.ptr<int32_t>();
  return std::vector<int32_t>(p, p + t.numel());
}

// A log probability's bits, every NaN as one: a NaN's sign and payload follow the compiler's operand
// order (clang's libFuzzer build and gcc's differ: -nan vs nan), and the contract reads every NaN as
// -inf (sm::expand_better). Everything else compares bit for bit.
uint64_t bits_of(double d) {
  if (std::isnan(d)) return 0x7ff8000000000000ull;
  uint64_t b;
  std::memcpy(&b, &d, 8);
  return b;
}

// n 1-D values inside a buffer of n + 2 * kGuard, guards set to `guard`: {buffer, view of the n}.
template <class T>
std::pair<Tensor, Tensor> guarded(DType dt, const std::vector<T>& v, T guard) {
  const int64_t n = static_cast<int64_t>(v.size());
  std::vector<T> all(static_cast<size_t>(n + 2 * kGuard), guard);
  std::copy(v.begin(), v.end(), all.begin() + kGuard);
  Tensor buf = Tensor::from_host(dt, {n + 2 * kGuard}, all.data());
  return {buf, buf.rows(kGuard, kGuard + n)};
}

// The host side of the pool: what the pool's P entries must hold.
struct HostPool {
  std::vector<int32_t> token, parent, row;
  std::vector<double> lp;
};

// The pool on the "device" (CPU tensors), each field inside a guarded buffer.
struct Pool {
  Tensor tok_buf, par_buf, lp_buf, row_buf;
  TreePool view;
  int64_t P = 0;

  explicit Pool(const HostPool& h) : P(static_cast<int64_t>(h.token.size())) {
    std::tie(tok_buf, view.token) = guarded(DType::i32, h.token, kGuardI32);
    std::tie(par_buf, view.parent) = guarded(DType::i32, h.parent, kGuardI32);
    std::tie(lp_buf, view.log_prob) = guarded(DType::f64, h.lp, kGuardF64);
    std::tie(row_buf, view.row) = guarded(DType::i32, h.row, kGuardI32);
  }
};

// The pool (guards included) against the host copy, bit for bit.
FUZZ_NO_COVERAGE void check_pool(const Pool& pool, const HostPool& h, const char* after) {
  const int64_t P = pool.P, n = P + 2 * kGuard;
  const int32_t *tok = pool.tok_buf.ptr<int32_t>(), *par = pool.par_buf.ptr<int32_t>(), *row = pool.row_buf.ptr<int32_t>();
  const double* lp = pool.lp_buf.ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    const bool guard = i < kGuard || i >= kGuard + P;
    const int64_t e = i - kGuard;
    const int32_t want_tok = guard ? kGuardI32 : h.token[e], want_par = guard ? kGuardI32 : h.parent[e],
                  want_row = guard ? kGuardI32 : h.row[e];
    const double want_lp = guard ? kGuardF64 : h.lp[e];
    FUZZ_ASSERT(tok[i] == want_tok, after, ": pool.token[", e, "] = ", tok[i], ", expected ", want_tok, guard ? " (a guard)" : "");
    FUZZ_ASSERT(par[i] == want_par, after, ": pool.parent[", e, "] = ", par[i], ", expected ", want_par, guard ? " (a guard)" : "");
    FUZZ_ASSERT(row[i] == want_row, after, ": pool.row[", e, "] = ", row[i], ", expected ", want_row, guard ? " (a guard)" : "");
    FUZZ_ASSERT(bits_of(lp[i]) == bits_of(want_lp), after, ": pool.log_prob[", e, "] = ", lp[i], ", expected ", want_lp,
                guard ? " (a guard)" : "");
  }
}

// A path log probability: mostly a few values (ties), sometimes a child's, sometimes an edge value.
double lp_value(fuzz::Reader& r) {
  const uint8_t k = r.u8();
  if (k < 112) return -0.25 * static_cast<double>(r.range(0, 7));
  if (k < 200) {
    // One read per statement: function arguments are evaluated in an unspecified order (gcc right to
    // left, clang left to right), so an input would decode differently in the two builds.
    const double parent = -0.25 * static_cast<double>(r.range(0, 3));
    return sm::child_log_prob(parent, r.f32_hostile());
  }
  switch (k % 8) {
    case 0: return std::nan("");
    case 1: return -HUGE_VAL;
    case 2: return HUGE_VAL;
    case 3: return -0.0;
    case 4: return 0.0;
    case 5: return -1e300;
    case 6: { const uint64_t b = r.u64(); double d; std::memcpy(&d, &b, 8); return d; }
    default: return -std::nan("");
  }
}

// A damaged pool for one call (the real one is not touched): a field missing, of another dtype or length.
TreePool damaged_pool(const Pool& pool, fuzz::Reader& r) {
  TreePool p = pool.view;
  const int64_t P = pool.P;
  switch (r.range(0, 4)) {
    case 0: p.token = Tensor(); break;
    case 1: p.parent = filled_i32(P + 1, 0); break;
    case 2: p.log_prob = Tensor::zeros(DType::f32, {P}); break;
    case 3: p.row = Tensor::zeros(DType::u32, {P}); break;
    default: p.log_prob = Tensor::zeros(DType::f64, {P, 1}); break;
  }
  return p;
}

// What the contract says of a call: accepted, refused (E_ARG), or either (a case it leaves open).
enum class Expect { accept, refuse, either };

bool is_i32(const Tensor& t, std::initializer_list<int64_t> shape) {
  return t.defined() && t.dtype() == DType::i32 && t.shape() == Shape(shape);
}

// ---------------- tree_select ----------------

// The host checks of tree_select (ops_tree.h: open ranges inside the pool, take <= open_count,
// row_indptr monotone from 0; TailGather's layout), evaluated on the call's arguments.
FUZZ_NO_COVERAGE Expect select_expect(bool pool_ok, int64_t P, const TreeLevel& lv, const Tensor& node, const Tensor& token,
                                      const Tensor& src_row, const TailGather* g) {
  if (!pool_ok) return Expect::refuse;
  const size_t B = lv.open_start.size();
  if (lv.open_count.size() != B || lv.row_indptr.size() != B + 1 || lv.row_indptr[0] != 0) return Expect::refuse;
  auto copy_ok = [](const Tensor& t, const std::vector<int32_t>& h) { return is_i32(t, {static_cast<int64_t>(h.size())}); };
  if (!copy_ok(lv.d_open_start, lv.open_start) || !copy_ok(lv.d_open_count, lv.open_count) || !copy_ok(lv.d_row_indptr, lv.row_indptr))
    return Expect::refuse;
  for (size_t b = 0; b < B; ++b) {
    const int64_t s = lv.open_start[b], n = lv.open_count[b], take = int64_t{lv.row_indptr[b + 1]} - lv.row_indptr[b];
    if (s < 0 || n < 0 || s + n > P || take < 0 || take > n) return Expect::refuse;
  }
  const int64_t R = lv.row_indptr[B];
  if (!is_i32(node, {R}) || !is_i32(token, {R}) || !is_i32(src_row, {R})) return Expect::refuse;
  if (!g) return Expect::accept;
  const auto &pi = g->prev_tail_indptr, &ti = g->tail_indptr;
  if (pi.empty() || pi[0] != 0 || static_cast<int64_t>(ti.size()) != R + 1 || ti[0] != 0) return Expect::refuse;
  for (size_t i = 1; i < pi.size(); ++i)
    if (pi[i] <= pi[i - 1]) return Expect::refuse;  // every previous row has >= 1 tail page
  for (size_t i = 1; i < ti.size(); ++i)
    if (ti[i] < ti[i - 1]) return Expect::refuse;
  if (!is_i32(g->d_prev_tail, {pi.back()}) || !copy_ok(g->d_prev_tail_indptr, pi) || !copy_ok(g->d_tail_indptr, ti) ||
      !is_i32(g->src_pages, {ti.back()}))
    return Expect::refuse;
  // No previous rows: a row's source row (clamped to the previous level's rows) does not exist, so
  // rows are refused (a finding: {0} was accepted and read past prev_tail_indptr); with no rows to
  // fill, either outcome keeps the contract.
  if (pi.size() < 2) return R > 0 ? Expect::refuse : Expect::either;
  return Expect::accept;
}

// tree_select's outputs against the contract: sequence b's take best open entries, ranked by
// sm::expand_better (a stable sort over the indices, independent of the op's partial sort), and
// their tail pages.
FUZZ_NO_COVERAGE void check_select(const HostPool& h, const TreeLevel& lv, const Tensor& node, const Tensor& token,
                                   const Tensor& src_row, const TailGather* g) {
  const int32_t *nd = node.ptr<int32_t>(), *tk = token.ptr<int32_t>(), *sr = src_row.ptr<int32_t>();
  auto key = [&](int32_t e) { return std::isnan(h.lp[e]) ? -HUGE_VAL : h.lp[e]; };  // NaN counts as -inf
  for (size_t b = 0; b < lv.open_start.size(); ++b) {
    const int32_t s = lv.open_start[b], n = lv.open_count[b], r0 = lv.row_indptr[b], take = lv.row_indptr[b + 1] - r0;
    std::vector<int32_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), s);
    std::stable_sort(order.begin(), order.end(), [&](int32_t x, int32_t y) { return sm::expand_better(h.lp[x], x, h.lp[y], y); });
    for (int32_t k = 0; k < take; ++k) {
      const int32_t e = order[static_cast<size_t>(k)], row = r0 + k;
      FUZZ_ASSERT(nd[row] == e, "tree_select: sequence ", b, " rank ", k, ": node ", nd[row], ", expected ", e, " (log_prob ",
                  (nd[row] >= 0 && nd[row] < static_cast<int32_t>(h.lp.size()) ? h.lp[nd[row]] : NAN), " vs ", h.lp[e], ")");
      FUZZ_ASSERT(tk[row] == h.token[e], "tree_select: row ", row, ": token ", tk[row], ", expected ", h.token[e]);
      FUZZ_ASSERT(sr[row] == h.row[e], "tree_select: row ", row, ": src_row ", sr[row], ", expected ", h.row[e]);
      // The documented rule itself, spelt out: larger log probability first (NaN as -inf), then the lower index.
      if (k > 0) {
        const int32_t prev = nd[row - 1];
        FUZZ_ASSERT(key(prev) > key(e) || (key(prev) == key(e) && prev < e), "tree_select: sequence ", b, ": node ", prev,
                    " (", h.lp[prev], ") ranked before node ", e, " (", h.lp[e], ")");
      }
    }
  }
  if (!g) return;
  const auto &pi = g->prev_tail_indptr, &ti = g->tail_indptr;
  const int64_t R_prev = static_cast<int64_t>(pi.size()) - 1;
  const std::vector<int32_t> prev = host_i32(g->d_prev_tail);
  const int32_t* out = g->src_pages.ptr<int32_t>();
  for (size_t r = 0; r + 1 < ti.size(); ++r) {
    const int64_t s = std::min<int64_t>(std::max<int64_t>(sr[r], 0), R_prev - 1);
    const int64_t have = pi[s + 1] - pi[s];
    for (int64_t k = 0; k < ti[r + 1] - ti[r]; ++k) {
      const int32_t want = prev[static_cast<size_t>(pi[s] + std::min(k, have - 1))];
      FUZZ_ASSERT(out[ti[r] + k] == want, "tree_select: pages: row ", r, " (source row ", sr[r], " -> ", s, ") page ", k, " = ",
                  out[ti[r] + k], ", expected ", want);
    }
  }
}

// ---------------- tree_grow ----------------

FUZZ_NO_COVERAGE Expect grow_expect(bool pool_ok, int64_t P, const Tensor& vals, const Tensor& ids, const Tensor& node,
                                    const Tensor& out_start, const std::vector<int32_t>& h_out_start, const Tensor& map) {
  if (!pool_ok || !vals.defined() || vals.dtype() != DType::f32 || vals.dim() != 2) return Expect::refuse;
  const int64_t R = vals.size(0), K = vals.size(1);
  if (!is_i32(ids, {R, K}) || !is_i32(node, {R}) || !is_i32(out_start, {R}) || static_cast<int64_t>(h_out_start.size()) != R)
    return Expect::refuse;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t s = h_out_start[r];
    if (s < 0 || s + K > P || (r > 0 && s < int64_t{h_out_start[r - 1]} + K)) return Expect::refuse;
  }
  if (map.defined() && (map.dtype() != DType::i32 || map.dim() != 1 || map.size(0) < 1)) return Expect::refuse;
  return Expect::accept;
}

// The children the contract makes, into `h` (the pool's host copy, before the call); `lib` is the
// pool after the call. A row whose (clamped) node is among the entries this call writes reads it
// before or after its write (the contract leaves the order open: the CUDA kernel writes all entries
// at once): either value is accepted there.
FUZZ_NO_COVERAGE void check_grow(HostPool& h, const Pool& lib, const Tensor& vals, const Tensor& ids, const Tensor& node,
                                 const std::vector<int32_t>& h_out_start, const Tensor& map) {
  const int64_t R = vals.size(0), K = vals.size(1), P = static_cast<int64_t>(h.token.size());
  const float* v = vals.ptr<float>();
  const int32_t *id = ids.ptr<int32_t>(), *nd = node.ptr<int32_t>();
  const int64_t V = map.defined() ? map.size(0) : 0;
  const int32_t* m = map.defined() ? map.ptr<int32_t>() : nullptr;
  const double* lib_lp = lib.view.log_prob.ptr<double>();
  const HostPool before = h;
  std::vector<char> written(static_cast<size_t>(P), 0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < K; ++j) written[static_cast<size_t>(h_out_start[r] + j)] = 1;
  for (int64_t r = 0; r < R; ++r) {
    const int32_t parent = nd[r] < 0 ? -1 : static_cast<int32_t>(std::min<int64_t>(nd[r], P - 1));
    for (int64_t j = 0; j < K; ++j) {
      const int64_t e = h_out_start[r] + j, i = r * K + j;
      const int32_t tok = m ? m[std::min<int64_t>(std::max<int64_t>(id[i], 0), V - 1)] : id[i];
      const double lp = sm::child_log_prob(parent < 0 ? 0.0 : before.lp[parent], v[i]);
      h.token[e] = tok;
      h.parent[e] = parent;
      h.row[e] = static_cast<int32_t>(r);
      h.lp[e] = lp;
      if (parent >= 0 && written[parent] && bits_of(lib_lp[e]) != bits_of(lp)) {
        const double after = sm::child_log_prob(lib_lp[parent], v[i]);
        FUZZ_ASSERT(bits_of(lib_lp[e]) == bits_of(after), "tree_grow: entry ", e, " (row ", r, ", parent ", parent,
                    ", written by this call too): log_prob ", lib_lp[e], ", expected ", lp, " or ", after);
        h.lp[e] = after;
      }
    }
  }
}

// ---------------- rows_at ----------------

FUZZ_NO_COVERAGE Expect rows_expect(const Tensor& x, const Tensor& idx, const Tensor& out) {
  if (!x.defined() || (x.dtype() != DType::f32 && x.dtype() != DType::i32) || x.dim() != 2 || x.size(0) < 1) return Expect::refuse;
  if (!idx.defined() || idx.dtype() != DType::i32 || idx.dim() != 1) return Expect::refuse;
  if (!out.defined() || out.dtype() != x.dtype() || out.shape() != Shape({idx.size(0), x.size(1)})) return Expect::refuse;
  // Not in the header: the dispatcher refuses out == x (a gather in place would depend on the order).
  if (out.data() == x.data()) return Expect::refuse;
  return Expect::accept;
}

// ---------------- kv_copy_pages_among ----------------

FUZZ_NO_COVERAGE Expect copy_expect(bool layers_ok, int64_t NP, const Tensor& src_pages, const Tensor& dst_pages,
                                    const std::vector<int32_t>& set, const std::vector<int32_t>& h_dst) {
  if (!layers_ok || !src_pages.defined() || src_pages.dtype() != DType::i32 || src_pages.dim() != 1) return Expect::refuse;
  if (!is_i32(dst_pages, {src_pages.size(0)}) || static_cast<int64_t>(h_dst.size()) != dst_pages.numel()) return Expect::refuse;
  if (!h_dst.empty() && set.empty()) return Expect::refuse;
  std::vector<char> role(static_cast<size_t>(NP), 0);
  for (int32_t s : set) {
    if (s < 0 || s >= NP) return Expect::refuse;
    role[s] = 1;
  }
  // Destinations in range, disjoint from the sources; also distinct (the header does not say so:
  // a page written twice would depend on the order, and the dispatcher refuses it).
  for (int32_t d : h_dst) {
    if (d < 0 || d >= NP || role[d]) return Expect::refuse;
    role[d] = 2;
  }
  return Expect::accept;
}

FUZZ_NO_COVERAGE void check_cache(const KvCache& kv, const std::vector<std::vector<float>>& shadow, const char* after) {
  for (size_t l = 0; l < shadow.size(); ++l) {
    const float* p = kv.layers()[l].ptr<float>();
    for (size_t i = 0; i < shadow[l].size(); ++i)
      FUZZ_ASSERT(std::memcmp(&p[i], &shadow[l][i], 4) == 0, after, ": layer ", l, " element ", i, " = ", p[i], ", expected ",
                  shadow[l][i]);
  }
}

void expect_outcome(Expect want, bool ok, const char* op, int damage) {
  FUZZ_ASSERT(want != Expect::accept || ok, op, ": a valid call was refused (damage kind ", damage, ")");
  FUZZ_ASSERT(want != Expect::refuse || !ok, op, ": an invalid call was accepted (damage kind ", damage, ")");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader r(data, size);
  // The pool.
  const int64_t P = r.range(0, 64);
  HostPool h;
  for (int64_t e = 0; e < P; ++e) {
    h.lp.push_back(lp_value(r));
    h.token.push_back(r.u8() < 224 ? static_cast<int32_t>(r.range(0, 99)) : r.i32_hostile(99));
    h.parent.push_back(static_cast<int32_t>(r.range(-1, P - 1)));
    h.row.push_back(r.u8() < 216 ? static_cast<int32_t>(r.range(0, 5)) : r.i32_hostile(5));
  }
  Pool pool(h);

  // The draft KV cache the page copies work on: every element tagged.
  KvCacheConfig c;
  c.num_layers = static_cast<int>(r.range(1, 2));
  c.num_kv_heads = static_cast<int>(r.range(1, 2));
  c.head_dim = static_cast<int>(r.range(1, 3));
  c.page_size = static_cast<int>(r.range(1, 3));
  c.num_pages = static_cast<int>(r.range(1, 12));
  const int64_t NP = c.num_pages;
  KvCache kv(c);
  std::vector<std::vector<float>> shadow;
  for (int l = 0; l < c.num_layers; ++l) {
    float* p = kv.layers()[l].ptr<float>();
    shadow.emplace_back(static_cast<size_t>(kv.layers()[l].numel()));
    for (size_t i = 0; i < shadow.back().size(); ++i) shadow.back()[i] = p[i] = static_cast<float>(1 + l * 100000 + i);
  }

  // What the last accepted tree_select gave, for the next calls (as cpp/model/eagle.cc chains them).
  Tensor last_node, last_src_row, last_src_pages;
  std::vector<int32_t> last_prev_tail;

  for (int step = 0; step < 24 && !r.empty(); ++step) {
    // One byte: u8 % 8 in 0..3 and 4..6 name the same ops as u8 % 4 did before tree_paths (the corpus
    // and the regression inputs keep their programs, but for that byte's 7s).
    const int op8 = static_cast<int>(r.range(0, 7));
    switch (op8 == 7 ? 4 : op8 % 4) {
      case 0: {  // tree_select
        TreeLevel lv;
        lv.row_indptr.push_back(0);
        const int B = static_cast<int>(r.range(0, 4));
        for (int b = 0; b < B; ++b) {
          const int64_t s = r.range(0, P), n = r.range(0, P - s);
          lv.open_start.push_back(static_cast<int32_t>(s));
          lv.open_count.push_back(static_cast<int32_t>(n));
          lv.row_indptr.push_back(lv.row_indptr.back() + static_cast<int32_t>(r.range(0, std::min<int64_t>(n, 6))));
        }
        const uint8_t damage = r.u8();
        const int dk = damage >= 208 ? damage % 10 : -1;
        auto hit = [&](std::vector<int32_t>& v, int32_t hi) {
          if (!v.empty()) v[static_cast<size_t>(r.range(0, static_cast<int64_t>(v.size()) - 1))] = r.i32_hostile(hi);
        };
        switch (dk) {
          case 0: hit(lv.open_start, static_cast<int32_t>(P)); break;
          case 1: hit(lv.open_count, static_cast<int32_t>(P)); break;
          case 2: hit(lv.row_indptr, 8); break;
          case 3: {
            std::vector<int32_t>& v = r.flag() ? lv.open_count : (r.flag() ? lv.open_start : lv.row_indptr);
            if (r.flag() && !v.empty()) v.pop_back();
            else v.push_back(v.empty() ? 0 : v.back());
            break;
          }
          default: break;
        }
        lv.d_open_start = i32_tensor(lv.open_start);
        lv.d_open_count = i32_tensor(lv.open_count);
        lv.d_row_indptr = i32_tensor(lv.row_indptr);
        if (dk == 4) {  // a device copy of another length or dtype
          Tensor& t = r.flag() ? lv.d_open_start : (r.flag() ? lv.d_open_count : lv.d_row_indptr);
          t = r.flag() ? filled_i32(t.numel() + 1, 0) : Tensor::zeros(DType::f32, {t.numel()});
        }
        const int64_t R = lv.row_indptr.empty() ? 0 : std::min<int64_t>(std::max<int32_t>(lv.row_indptr.back(), 0), 64);
        Tensor node = filled_i32(R, kSentinel), token = filled_i32(R, kSentinel), src_row = filled_i32(R, kSentinel);
        if (dk == 5) {
          Tensor& t = r.flag() ? node : (r.flag() ? token : src_row);
          switch (r.range(0, 2)) {
            case 0: t = filled_i32(R + 1, kSentinel); break;
            case 1: t = Tensor::zeros(DType::f32, {R}); break;
            default: t = filled_i32(R, kSentinel).view({R, 1}); break;
          }
        }
        const bool pool_ok = dk != 6;
        const TreePool call_pool = pool_ok ? pool.view : damaged_pool(pool, r);
        TailGather g;
        const bool with_pages = dk >= 7 || r.flag();
        if (with_pages) {
          const int64_t R_prev = r.range(1, 5);
          g.prev_tail_indptr.push_back(0);
          for (int64_t i = 0; i < R_prev; ++i) g.prev_tail_indptr.push_back(g.prev_tail_indptr.back() + static_cast<int32_t>(r.range(1, 3)));
          g.tail_indptr.push_back(0);
          for (int64_t i = 0; i < R; ++i) g.tail_indptr.push_back(g.tail_indptr.back() + static_cast<int32_t>(r.range(0, 3)));
          auto& pi = g.prev_tail_indptr;
          auto& ti = g.tail_indptr;
          if (dk == 7) {
            switch (r.range(0, 4)) {
              case 0: pi.assign(1, 0); break;  // no previous rows
              case 1: pi.clear(); break;
              case 2: pi[0] = 1; break;
              case 3: { const size_t i = static_cast<size_t>(r.range(1, static_cast<int64_t>(pi.size()) - 1)); pi[i] = pi[i - 1]; break; }
              default: hit(pi, 12); break;
            }
          } else if (dk == 8) {
            switch (r.range(0, 3)) {
              case 0: ti.push_back(ti.back()); break;
              case 1: ti.pop_back(); break;
              case 2: ti[0] = 1; break;
              default: hit(ti, 8); break;
            }
          }
          std::vector<int32_t> prev(static_cast<size_t>(pi.empty() ? 0 : std::min<int32_t>(std::max<int32_t>(pi.back(), 0), 64)));
          for (int32_t& p : prev) p = r.u8() < 232 ? static_cast<int32_t>(r.range(0, NP - 1)) : r.i32_hostile(static_cast<int32_t>(NP));
          g.d_prev_tail = i32_tensor(prev);
          g.d_prev_tail_indptr = i32_tensor(pi);
          g.d_tail_indptr = i32_tensor(ti);
          g.src_pages = filled_i32(ti.empty() ? 0 : std::min<int32_t>(std::max<int32_t>(ti.back(), 0), 256), kSentinel);
          if (dk == 9) {
            Tensor* ts[] = {&g.d_prev_tail, &g.d_prev_tail_indptr, &g.d_tail_indptr, &g.src_pages};
            Tensor& t = *ts[r.range(0, 3)];
            t = r.flag() ? filled_i32(t.numel() + 1, kSentinel) : Tensor::zeros(DType::u32, {t.numel()});
          }
        }
        const Expect want = select_expect(pool_ok, P, lv, node, token, src_row, with_pages ? &g : nullptr);
        const bool ok = fuzz::expect_ok_or({"E_ARG"}, [&] { ops::tree_select(call_pool, lv, node, token, src_row, with_pages ? &g : nullptr); });
        expect_outcome(want, ok, "tree_select", dk);
        check_pool(pool, h, "tree_select");
        if (!ok) {  // nothing written
          for (const Tensor* t : {&node, &token, &src_row, &g.src_pages})
            if (t->defined() && t->dtype() == DType::i32)
              for (int32_t x : host_i32(*t)) FUZZ_ASSERT(x == kSentinel, "tree_select: a refused call wrote its outputs");
          break;
        }
        check_select(h, lv, node, token, src_row, with_pages ? &g : nullptr);
        last_node = node;
        last_src_row = src_row;
        last_src_pages = with_pages ? g.src_pages : Tensor();
        last_prev_tail = with_pages ? host_i32(g.d_prev_tail) : std::vector<int32_t>();
        break;
      }
      case 1: {  // tree_grow
        bool chain = last_node.defined() && r.flag();  // the last selection's nodes
        int64_t R = chain ? last_node.size(0) : r.range(0, 4);
        const int64_t K = r.range(0, 3);
        std::vector<int32_t> hs;
        for (int64_t row = 0, at = r.range(0, 2); row < R && at + K <= P; ++row, at += K + r.range(0, 1)) hs.push_back(static_cast<int32_t>(at));
        if (static_cast<int64_t>(hs.size()) < R) R = static_cast<int64_t>(hs.size()), chain = false;
        Tensor node;
        if (chain) {
          node = last_node;
        } else {
          std::vector<int32_t> nv(static_cast<size_t>(R));
          for (int32_t& x : nv) {
            const uint8_t k = r.u8();
            x = k < 64 || P == 0 ? -1 : k < 216 ? static_cast<int32_t>(r.range(0, P - 1)) : r.i32_hostile(static_cast<int32_t>(P));
          }
          node = i32_tensor(nv);
        }
        const bool with_map = r.flag();
        const int64_t V = r.range(1, 8);
        std::vector<int32_t> mv(static_cast<size_t>(V));
        for (int32_t& x : mv) x = static_cast<int32_t>(r.range(0, 199));
        Tensor map_buf, map;
        if (with_map) std::tie(map_buf, map) = guarded(DType::i32, mv, kGuardI32);
        std::vector<float> vv(static_cast<size_t>(R * K));
        std::vector<int32_t> iv(static_cast<size_t>(R * K));
        for (size_t i = 0; i < vv.size(); ++i) {
          vv[i] = r.f32_hostile();
          iv[i] = with_map ? (r.u8() < 216 ? static_cast<int32_t>(r.range(0, V - 1)) : r.i32_hostile(static_cast<int32_t>(V - 1)))
                           : r.i32_hostile(199);
        }
        Tensor vals = Tensor::from_host(DType::f32, {R, K}, vv.data());
        Tensor ids = Tensor::from_host(DType::i32, {R, K}, iv.data());
        Tensor out_start = i32_tensor(hs);  // the device copy of h_out_start, as the contract has it
        const uint8_t damage = r.u8();
        const int dk = damage >= 208 ? damage % 9 : -1;
        switch (dk) {
          case 0: if (!hs.empty()) hs[static_cast<size_t>(r.range(0, R - 1))] = r.i32_hostile(static_cast<int32_t>(P)); out_start = i32_tensor(hs); break;
          case 1:  // overlapping the previous row's entries by one
            if (R >= 2) { const size_t i = static_cast<size_t>(r.range(1, R - 1)); hs[i] = hs[i - 1] + static_cast<int32_t>(K) - 1; }
            out_start = i32_tensor(hs);
            break;
          case 2: if (r.flag() && !hs.empty()) hs.pop_back(); else hs.push_back(hs.empty() ? 0 : hs.back() + static_cast<int32_t>(K)); break;
          case 3:
            switch (r.range(0, 2)) {
              case 0: vals = Tensor::zeros(DType::f64, {R, K}); break;
              case 1: vals = vals.view({R * K}); break;
              default: vals = vals.view({R, K, 1}); break;
            }
            break;
          case 4: ids = r.flag() ? Tensor::zeros(DType::i32, {R, K + 1}) : Tensor::zeros(DType::u32, {R, K}); break;
          case 5: if (r.flag()) node = filled_i32(R + 1, -1); else out_start = filled_i32(R + 1, 0); break;
          case 6:
            switch (r.range(0, 2)) {
              case 0: map = Tensor::zeros(DType::i32, {0}); break;
              case 1: map = Tensor::zeros(DType::f32, {V}); break;
              default: map = Tensor::zeros(DType::i32, {V, 1}); break;
            }
            break;
          case 8:  // the last row's entries run past the pool
            if (!hs.empty()) hs.back() = static_cast<int32_t>(P - K + 1);
            out_start = i32_tensor(hs);
            break;
          default: break;
        }
        const bool pool_ok = dk != 7;
        TreePool call_pool = pool_ok ? pool.view : damaged_pool(pool, r);
        const Expect want = grow_expect(pool_ok, P, vals, ids, node, out_start, hs, map);
        const bool ok = fuzz::expect_ok_or({"E_ARG"}, [&] { ops::tree_grow(call_pool, vals, ids, node, out_start, hs, map); });
        expect_outcome(want, ok, "tree_grow", dk);
        if (ok) check_grow(h, pool, vals, ids, node, hs, map);
        check_pool(pool, h, "tree_grow");
        if (map_buf.defined()) {
          const int32_t* mb = map_buf.ptr<int32_t>();
          for (int64_t i = 0; i < V + 2 * kGuard; ++i)
            FUZZ_ASSERT(mb[i] == (i < kGuard || i >= kGuard + V ? kGuardI32 : mv[static_cast<size_t>(i - kGuard)]), "tree_grow changed map");
        }
        break;
      }
      case 2: {  // rows_at
        const int64_t n = r.range(1, 6), w = r.range(0, 4);
        const DType dt = r.flag() ? DType::f32 : DType::i32;
        const uint32_t fill = r.u32();
        std::vector<uint32_t> xb(static_cast<size_t>((n + 2 * kGuard) * w), static_cast<uint32_t>(kGuardI32));
        for (int64_t i = kGuard * w; i < (kGuard + n) * w; ++i) xb[static_cast<size_t>(i)] = fill * 2654435761u + static_cast<uint32_t>(i) * 40503u;
        Tensor x_buf = Tensor::from_host(dt, {n + 2 * kGuard, w}, xb.data());
        Tensor x = x_buf.rows(kGuard, kGuard + n);
        Tensor idx;
        if (last_src_row.defined() && r.flag()) {
          idx = last_src_row;  // tree_select's rows, as eagle.cc gathers the hidden states
        } else {
          std::vector<int32_t> iv(static_cast<size_t>(r.range(0, 6)));
          for (int32_t& i : iv) i = r.u8() < 200 ? static_cast<int32_t>(r.range(0, n - 1)) : r.i32_hostile(static_cast<int32_t>(n - 1));
          idx = i32_tensor(iv);
        }
        const int64_t m = idx.size(0);
        Tensor out = Tensor::from_host(dt, {m, w}, std::vector<int32_t>(static_cast<size_t>(m * w), kSentinel).data());
        const uint8_t damage = r.u8();
        const int dk = damage >= 216 ? damage % 8 : -1;
        switch (dk) {
          case 0: x = Tensor(); break;
          case 1: x = r.flag() ? x.view({n * w}) : x.view({n, w, 1}); break;
          case 2: x = Tensor::zeros(r.flag() ? DType::f16 : (r.flag() ? DType::u32 : DType::f64), {n, w}); break;
          case 3: x = x_buf.rows(kGuard, kGuard); break;  // no rows
          case 4: idx = r.flag() ? Tensor::zeros(DType::f32, {m}) : idx.view({m, 1}); break;
          case 5:
            switch (r.range(0, 2)) {
              case 0: out = Tensor::zeros(dt, {m + 1, w}); break;
              case 1: out = Tensor::zeros(dt, {m, w + 1}); break;
              default: out = Tensor::zeros(dt == DType::f32 ? DType::i32 : DType::f32, {m, w}); break;
            }
            break;
          case 6: {  // out is x (as many indices as rows)
            std::vector<int32_t> iv(static_cast<size_t>(n));
            for (int32_t& i : iv) i = static_cast<int32_t>(r.range(0, n - 1));
            idx = i32_tensor(iv);
            out = x;
            break;
          }
          case 7: if (r.flag()) idx = Tensor(); else out = Tensor(); break;
          default: break;
        }
        const std::vector<int32_t> out_before = out.defined() ? host_i32(out) : std::vector<int32_t>();  // 4-byte words
        const Expect want = rows_expect(x, idx, out);
        const bool ok = fuzz::expect_ok_or({"E_ARG"}, [&] { ops::rows_at(x, idx, out); });
        expect_outcome(want, ok, "rows_at", dk);
        // x (guard rows included) never changes.
        const uint32_t* xp = x_buf.ptr<uint32_t>();
        for (size_t i = 0; i < xb.size(); ++i) FUZZ_ASSERT(xp[i] == xb[i], "rows_at: x word ", i, " changed");
        if (!ok) {
          if (out.defined()) FUZZ_ASSERT(host_i32(out) == out_before, "rows_at: a refused call wrote out");
          break;
        }
        const int32_t* ix = idx.ptr<int32_t>();
        const uint32_t* o = out.ptr<uint32_t>();
        for (int64_t i = 0; i < m; ++i) {
          const int64_t src = std::min<int64_t>(std::max<int64_t>(ix[i], 0), n - 1);
          for (int64_t k = 0; k < w; ++k)
            FUZZ_ASSERT(o[i * w + k] == xb[static_cast<size_t>((kGuard + src) * w + k)], "rows_at: out[", i, ", ", k, "] = ", o[i * w + k],
                        ", expected x[", src, ", ", k, "] = ", xb[static_cast<size_t>((kGuard + src) * w + k)], " (idx ", ix[i], ")");
        }
        break;
      }
      case 4: {  // tree_paths
        Tensor node;
        if (last_node.defined() && r.flag()) {
          node = last_node;  // tree_select's nodes, as eagle.cc reads a penalized level's paths
        } else {
          std::vector<int32_t> nv(static_cast<size_t>(r.range(0, 6)));
          for (int32_t& x : nv) {
            const uint8_t k = r.u8();
            x = k < 48 || P == 0 ? -1 : k < 216 ? static_cast<int32_t>(r.range(0, P - 1)) : r.i32_hostile(static_cast<int32_t>(P));
          }
          node = i32_tensor(nv);
        }
        const int64_t R = node.size(0), L = r.range(0, 6);
        const bool with_map = r.flag();
        const int64_t V = r.range(0, 8);
        std::vector<int32_t> mv(static_cast<size_t>(V));
        for (int32_t& x : mv) x = r.u8() < 200 ? static_cast<int32_t>(r.range(-1, 40)) : r.i32_hostile(40);
        Tensor map_buf, map;
        if (with_map) std::tie(map_buf, map) = guarded(DType::i32, mv, kGuardI32);
        // out: R rows of L inside guard rows.
        std::vector<int32_t> ob(static_cast<size_t>((R + 2 * kGuard) * L), kGuardI32);
        Tensor out_buf = Tensor::from_host(DType::i32, {R + 2 * kGuard, L}, ob.data());
        Tensor out = out_buf.rows(kGuard, kGuard + R);
        const uint8_t damage = r.u8();
        const int dk = damage >= 208 ? damage % 6 : -1;
        switch (dk) {
          case 0: node = r.flag() ? Tensor::zeros(DType::f32, {R}) : node.view({R, 1}); break;
          case 1: out = r.flag() ? Tensor::zeros(DType::i32, {R + 1, L}) : Tensor::zeros(DType::f32, {R, L}); break;
          case 2: out = out_buf.view({(R + 2 * kGuard) * L}); break;
          case 3: if (with_map) map = r.flag() ? Tensor::zeros(DType::f32, {V}) : Tensor::zeros(DType::i32, {V, 1}); break;
          default: break;
        }
        const bool pool_ok = dk != 4;
        TreePool call_pool = pool_ok ? pool.view : damaged_pool(pool, r);
        // The contract's host checks: a whole, non-empty pool; node i32 [R]; out i32 [R, L]; map i32 [V'].
        const bool map_ok = !with_map || (map.dtype() == DType::i32 && map.dim() == 1);
        const Expect want = pool_ok && P >= 1 && is_i32(node, {R}) && out.defined() && out.dtype() == DType::i32 && out.dim() == 2 &&
                                    out.size(0) == R && map_ok
                                ? Expect::accept
                                : Expect::refuse;
        const bool ok = fuzz::expect_ok_or({"E_ARG"}, [&] { ops::tree_paths(call_pool, node, map, out); });
        expect_outcome(want, ok, "tree_paths", dk);
        check_pool(pool, h, "tree_paths");
        if (map_buf.defined()) {
          const int32_t* mb = map_buf.ptr<int32_t>();
          for (int64_t i = 0; i < V + 2 * kGuard; ++i)
            FUZZ_ASSERT(mb[i] == (i < kGuard || i >= kGuard + V ? kGuardI32 : mv[static_cast<size_t>(i - kGuard)]), "tree_paths changed map");
        }
        // out's guard rows never change; a refused call writes nothing; an accepted one, the walk.
        const int32_t* o = out_buf.ptr<int32_t>();
        const std::vector<int32_t> nh = is_i32(node, {R}) ? host_i32(node) : std::vector<int32_t>();
        for (int64_t i = 0; i < (R + 2 * kGuard) * L; ++i) {
          const int64_t row = i / std::max<int64_t>(L, 1) - kGuard, j = i % std::max<int64_t>(L, 1);
          int32_t want_v = kGuardI32;
          if (ok && row >= 0 && row < R) {
            int64_t e = nh[static_cast<size_t>(row)] < 0 ? -1 : std::min<int64_t>(nh[static_cast<size_t>(row)], P - 1);
            for (int64_t k = 0; k < j && e >= 0; ++k) e = h.parent[static_cast<size_t>(e)] < 0 ? -1 : std::min<int64_t>(h.parent[static_cast<size_t>(e)], P - 1);
            if (e >= 0) {
              const int32_t t = h.token[static_cast<size_t>(e)];
              want_v = !with_map ? t : (t >= 0 && t < V ? mv[static_cast<size_t>(t)] : -1);
            } else {
              want_v = -1;
            }
          }
          FUZZ_ASSERT(o[i] == want_v, "tree_paths: out word ", i, " (row ", row, ", j ", j, ") = ", o[i], ", expected ", want_v,
                      " (", ok ? "accepted" : "refused", ", damage ", dk, ")");
        }
        break;
      }
      default: {  // kv_copy_pages_among
        std::vector<int32_t> set;
        Tensor src_pages;
        // Pages outside the set: the destinations to choose from.
        auto outside = [&] {
          std::vector<int32_t> v;
          for (int32_t p = 0; p < NP; ++p)
            if (std::find(set.begin(), set.end(), p) == set.end()) v.push_back(p);
          return v;
        };
        std::vector<int32_t> free_pages;
        if (last_src_pages.defined() && r.flag()) {  // the last gather's pages, chosen among its previous tails
          set = last_prev_tail;
          src_pages = last_src_pages;
          free_pages = outside();
        }
        if (!src_pages.defined() || src_pages.numel() > static_cast<int64_t>(free_pages.size())) {  // else a new set
          set.assign(static_cast<size_t>(r.range(1, std::max<int64_t>(1, std::min<int64_t>(3, NP - 1)))), 0);
          for (int32_t& s : set) s = static_cast<int32_t>(r.range(0, NP - 1));
          free_pages = outside();
          std::vector<int32_t> sv(static_cast<size_t>(r.range(0, std::min<int64_t>(4, static_cast<int64_t>(free_pages.size())))));
          for (int32_t& s : sv) s = set[static_cast<size_t>(r.range(0, static_cast<int64_t>(set.size()) - 1))];
          src_pages = i32_tensor(sv);
        }
        const std::vector<int32_t> src_host = host_i32(src_pages);
        for (int32_t s : src_host) FUZZ_ASSERT(std::find(set.begin(), set.end(), s) != set.end(), "harness: source page ", s, " not in the set");
        // Destinations: distinct pages outside the set (a one-page cache has none: then a page of the set).
        std::vector<int32_t> dst;
        for (size_t i = 0; i < src_host.size(); ++i) {
          if (free_pages.empty()) {
            dst.push_back(static_cast<int32_t>(r.range(0, NP - 1)));
          } else {
            const size_t k = static_cast<size_t>(r.range(0, static_cast<int64_t>(free_pages.size()) - 1));
            dst.push_back(free_pages[k]);
            free_pages.erase(free_pages.begin() + static_cast<std::ptrdiff_t>(k));
          }
        }
        std::vector<Tensor> layers = kv.layers();
        bool layers_ok = true;
        const uint8_t damage = r.u8();
        const int dk = damage >= 208 ? damage % 8 : -1;
        auto any = [&](const std::vector<int32_t>& v) { return static_cast<size_t>(r.range(0, static_cast<int64_t>(v.size()) - 1)); };
        switch (dk) {
          case 0: if (!set.empty()) set[any(set)] = r.i32_hostile(static_cast<int32_t>(NP)); break;
          case 1: if (!dst.empty() && !set.empty()) dst[any(dst)] = set[any(set)]; break;
          case 2: if (dst.size() >= 2) dst[any(dst)] = dst[any(dst)]; break;
          case 3: if (!dst.empty()) dst[any(dst)] = r.i32_hostile(static_cast<int32_t>(NP)); break;
          case 6:
            layers_ok = false;
            switch (r.range(0, 2)) {
              case 0: layers.clear(); break;
              case 1: layers.push_back(Tensor::zeros(DType::f32, {NP + 1, 2, c.page_size, c.num_kv_heads, c.head_dim})); break;
              default: layers.push_back(Tensor::zeros(DType::f16, {NP, 2, c.page_size, c.num_kv_heads, c.head_dim})); break;
            }
            break;
          case 7: set.clear(); break;
          default: break;
        }
        Tensor dst_pages = i32_tensor(dst);  // the device copy of h_dst
        if (dk == 4) dst.push_back(0);  // a host copy of another length
        if (dk == 5) {
          switch (r.range(0, 2)) {
            case 0: src_pages = Tensor::zeros(DType::f32, {src_pages.numel()}); break;
            case 1: src_pages = filled_i32(src_pages.numel() + 1, set.empty() ? 0 : set[0]); break;
            default: src_pages = src_pages.view({src_pages.numel(), 1}); break;
          }
        }
        const Expect want = copy_expect(layers_ok, NP, src_pages, dst_pages, set, dst);
        const bool ok = fuzz::expect_ok_or({"E_ARG"}, [&] { ops::kv_copy_pages_among(layers, src_pages, dst_pages, set, dst); });
        expect_outcome(want, ok, "kv_copy_pages_among", dk);
        if (ok) {
          const size_t page = static_cast<size_t>(2 * c.page_size * c.num_kv_heads * c.head_dim);
          const std::vector<std::vector<float>> before = shadow;
          for (size_t l = 0; l < shadow.size(); ++l)
            for (size_t i = 0; i < dst.size(); ++i)
              std::copy_n(before[l].begin() + static_cast<std::ptrdiff_t>(src_host[i] * page), page,
                          shadow[l].begin() + static_cast<std::ptrdiff_t>(dst[i] * page));
        }
        check_cache(kv, shadow, "kv_copy_pages_among");
        break;
      }
    }
  }
  check_pool(pool, h, "the end");
  return 0;
}

void fuzz::seed_inputs(std::vector<std::string>& out) {
  // Byte patterns: any bytes decode to a program. The first six mix valid and damaged calls; in the
  // last four every byte is below 128, under every threshold of damage or hostile device indices,
  // so every call is valid.
  for (uint32_t seed = 1; seed <= 6; ++seed) out.push_back(fuzz::pattern_bytes(300 + 150 * seed, seed));
  for (uint32_t seed = 7; seed <= 10; ++seed) {
    std::string s = fuzz::pattern_bytes(400 + 200 * (seed - 6), seed);
    for (char& ch : s) ch = static_cast<char>(ch & 0x7f);
    out.push_back(s);
  }
}

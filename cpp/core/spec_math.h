// Scalar cores of sampling and verification, compiled by both backends (host C++ and nvcc), so
// the CPU reference and the CUDA kernels make the same decisions from the same inputs.
//
// ---------------------------------------------------------------------------------------------
// Semantics (the contract of ops_sampling.h, spelled out)
//
// process_logits(row): x = logits / T; p = softmax(x); then
//   top-k   (k > 0):    keep the k largest (ordered by x; ties -> lower index);
//   top-p   (p < 1):    among the kept, keep the smallest prefix in that order whose mass is
//                       >= top_p * (kept mass); always at least one token;
//   min-p   (m > 0):    drop p < min_p * max(p);
//   renormalise.        T == 0: one-hot at the argmax (lowest index on ties; NaN never wins).
//   Masses for top-p and the final renormalisation are exact integer sums of quantised probs
//   (quantize_prob below), so the set kept and the sums never depend on summation order.
//
// Quantised mass: every probability p in [0, 1] becomes W = ceil(p * 2^40) (an exact operation
//   in f32; p > 1 counts as 1, p <= 0 or NaN as 0), summed in uint64. ceil keeps the support
//   exact: p > 0 <=> W > 0. All random choices (sampling, acceptance tests) are made on these
//   integers (acceptance: a 53-bit uniform u compared in double against ratios of them), so CPU
//   and CUDA pick the same tokens from the same f32 probabilities, whatever the reduction order.
//
// RNG: Philox4x32-10 (Salmon et al. 2011), key = seed (u64), counter =
//   (offset lo, offset hi, node, purpose). `node` is the node index local to the sequence (0 for
//   the sample op), `purpose` says which draw at that node: kDrawAccept (the acceptance test of
//   the candidate node `node`), kDrawSample (the token sampled at node `node`), kDrawSampleOp
//   (the sample op, and each token a walk over deterministic drafts emits). A sequence's draws
//   depend only on (seed, offset, node): batch invariant.
//   Callers advance offsets by 1 per call (per verify call, per sample call): every draw of one
//   call has a different (node, purpose), so one offset step never reuses a counter -- except
//   rejection with deterministic drafts, whose draws take offsets offset .. offset + count - 1:
//   its callers advance the offset by the emitted count.
//
// sample(weights, r): r is a uniform 64-bit integer; T = floor(r * M / 2^64) with M = sum(W);
//   the token is the first i with W[0] + ... + W[i] > T. T < M, so such an i exists, and a token
//   with W = 0 can never be the first to pass T: a zero-probability token is never returned,
//   however close u = r / 2^64 is to 1.
//
// verify (one sequence: nodes 0..n-1, node 0 = the root = last emitted token, parents local,
//   parents[i] < i, -2 = not a candidate; a node's children are visited in node-index order):
//   greedy:    at node v, t = argmax(target[v]); move to the first child whose token is t;
//              stop when none. Emitted: the accepted children's tokens, then t at the last node.
//   rejection, draft undefined (deterministic drafts, q one-hot per child): at the node v of
//              depth d (the root: 0), t = sample(target[v]) with the sample op's draw at offset
//              + d (node 0, kDrawSampleOp); move to the first child whose token is t; stop when
//              none. Emitted: the accepted children's tokens, then t at the last node -- greedy's
//              walk with the argmax replaced by a draw. Exact (each emitted token is drawn from its
//              row), as likely to accept as recursive one-hot rejection (a child x is taken with
//              p(x)), and the emitted tokens do not depend on the tree: they are what the sample op
//              draws from the same rows at offsets offset, offset + 1, ..., so a caller that
//              advances the offset by the emitted count (not by 1) gets the tokens of plain
//              sampling whatever it proposes (the engine does: sampled Medusa, lookahead, prompt
//              lookup and EAGLE emit plainGenerate's sampled tokens).
//   rejection, draft defined, root without children: as without a draft (a lone root draws
//              plain sampling's token, whatever else the call verifies).
//   rejection, draft defined (q = draft[v], the distribution v's children were drawn from,
//              in order, without replacement): for child c with token x: p(x) = 0 -> reject;
//              else q(x) = 0 -> accept; else accept iff u * q(x) < p(x). On reject:
//              p <- norm(max(0, p - q)) (if that has zero mass, p is kept unchanged), then
//              q <- norm(q with q(x) = 0). For a chain this is Leviathan/Chen: accept with
//              min(1, p/q), else sample norm(max(0, p - q)); the bonus comes from p at the end.
//   typical (Medusa, LOSSY: the output is not distributed as the target): at node v,
//              thr(v) = min(eps, alpha * exp(-H(p_v))), H the entropy (natural log, 0 log 0 = 0;
//              Medusa adds 1e-5 inside the log, we do not). A node is accepted iff its parent is
//              and p_parent(x) > thr(parent). The deepest accepted node wins (ties -> lowest
//              index); the bonus is sampled from its target row with U(node, kDrawSample) (the
//              argmax when the row is one-hot, e.g. T = 0).
//   depth_accepts[d] += 1 for each sequence whose accepted path reaches depth d + 1.
//
// No mass: a row whose every probability is 0 or NaN (process_logits of a row with a NaN or of
//   a row of -inf / +inf logits, or such a probs row passed in) cannot be sampled. sample and the
//   walks then return kNoMass for that token on both backends, and the binding turns it into an
//   E_NUMERIC error naming the row (cpp/napi/sampling_napi.cc): never a token outside the vocabulary.
//   A draft token outside [0, V) (a device chain's kNoMass draw, never read back) is no mass too:
//   the sampled walks stop there with kNoMass and read no row at it.
//
// Entropy (typical acceptance): H = sum of -p ln p over the row, in ONE order on both backends:
//   lane t (of kEntropyLanes) sums i = t, t + 512, ... ascending with an explicit fma; then the
//   lanes combine as the CUDA block reduction does (a butterfly within each 32-lane warp, then the
//   warps in order). ln is log_det below (fma and IEEE division only), not the platform's log, so
//   the thresholds -- and the accepted nodes -- agree exactly.
// ---------------------------------------------------------------------------------------------
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#ifdef __CUDACC__
#define SPECDEC_HD __host__ __device__
#else
#define SPECDEC_HD
#endif

namespace specdec {
namespace sm {

// ---------------- Philox4x32-10 ----------------
struct Philox4 {
  uint32_t v[4];
};

SPECDEC_HD inline void philox_round(uint32_t c[4], const uint32_t k[2]) {
  const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c[0];
  const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c[2];
  const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
  const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
  const uint32_t n0 = hi1 ^ c[1] ^ k[0], n2 = hi0 ^ c[3] ^ k[1];
  c[0] = n0;
  c[1] = lo1;
  c[2] = n2;
  c[3] = lo0;
}

SPECDEC_HD inline Philox4 philox4x32_10(const uint32_t ctr[4], const uint32_t key[2]) {
  uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
  uint32_t k[2] = {key[0], key[1]};
  for (int r = 0; r < 10; ++r) {
    if (r > 0) {  // the key is bumped between rounds (Weyl sequence)
      k[0] += 0x9E3779B9u;
      k[1] += 0xBB67AE85u;
    }
    philox_round(c, k);
  }
  return Philox4{{c[0], c[1], c[2], c[3]}};
}

// Purposes of a draw (the 4th counter word).
constexpr uint32_t kDrawAccept = 0;
constexpr uint32_t kDrawSample = 1;
constexpr uint32_t kDrawSampleOp = 2;

// 64 random bits for (seed, offset, node, purpose).
SPECDEC_HD inline uint64_t random_u64(uint64_t seed, uint64_t offset, uint32_t node, uint32_t purpose) {
  const uint32_t ctr[4] = {static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32), node, purpose};
  const uint32_t key[2] = {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
  Philox4 r = philox4x32_10(ctr, key);
  return (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
}

// Uniform double in [0, 1) with 53 random bits (strictly < 1).
SPECDEC_HD inline double uniform_f64(uint64_t bits) { return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0); }
// Uniform float in [0, 1) with 24 random bits (strictly < 1).
SPECDEC_HD inline float uniform_f32(uint64_t bits) { return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f); }

// High 64 bits of a 64x64 product: floor(a * b / 2^64).
SPECDEC_HD inline uint64_t mulhi64(uint64_t a, uint64_t b) {
#ifdef __CUDA_ARCH__
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

// ---------------- quantised probabilities ----------------
constexpr int kMassBits = 40;
constexpr double kMassOne = 1099511627776.0;  // 2^40

// W = ceil(p * 2^40) for p in [0, 1]; p <= 0 or NaN -> 0, p > 1 (or inf) -> 2^40.
SPECDEC_HD inline uint64_t quantize_prob(float p) {
  if (!(p > 0.0f)) return 0;
  if (p >= 1.0f) return static_cast<uint64_t>(1) << kMassBits;
  return static_cast<uint64_t>(ceilf(p * 1099511627776.0f));  // exact scaling by a power of two
}

// The draw threshold of sample(): the token is the first i with prefix sum of W > T.
SPECDEC_HD inline uint64_t sample_threshold(uint64_t random_bits, uint64_t mass) { return mulhi64(random_bits, mass); }

// A token's selection test given its exclusive prefix `before` and weight w (exactly one token passes).
SPECDEC_HD inline bool sample_hit(uint64_t before, uint64_t w, uint64_t threshold) {
  return w > 0 && before <= threshold && threshold - before < w;
}

// ---------------- acceptance tests ----------------
// Real draft: accept iff u < (px / mp) / (qx / mq); p(x) = 0 -> reject; q(x) = 0 < p(x) -> accept.
// With p == q both products are the same doubles, so p = q always accepts (u < 1).
SPECDEC_HD inline bool accept_draft(double u, uint64_t px, uint64_t mp, uint64_t qx, uint64_t mq) {
  if (px == 0) return false;
  if (qx == 0 || mq == 0) return true;
  return u * (static_cast<double>(qx) * static_cast<double>(mp)) < static_cast<double>(px) * static_cast<double>(mq);
}
// a * b rounded on its own: compilers may fuse `p - q * ratio` into an FMA (nvcc always may, GCC
// on FMA hosts such as aarch64), and then the backends would round differently.
SPECDEC_HD inline double mul_rn(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  volatile double prod = a * b;  // a store forces the rounding of the product
  return prod;
#endif
}

// One entry of max(0, p/mp - q/mq), in units of p's scale: ratio = mp / mq.
SPECDEC_HD inline uint64_t residual_entry(uint64_t p, uint64_t q, double ratio) {
  double r = static_cast<double>(p) - mul_rn(static_cast<double>(q), ratio);
  return r > 0.0 ? static_cast<uint64_t>(ceil(r)) : 0;
}

// ---------------- entropy ----------------
constexpr int32_t kNoMass = -1;  // the token of a row without probability mass (see above)
constexpr int kEntropyLanes = 512;
constexpr int kEntropyWarp = 32;

// ln x for finite x > 0, from frexp, fma and IEEE division only: the same bits on host and device.
// x = m 2^e with m in [sqrt(1/2), sqrt(2)); ln m = 2 atanh(f), f = (m - 1) / (m + 1), |f| < 0.172.
SPECDEC_HD inline double log_det(double x) {
  int e = 0;
  double m = frexp(x, &e);
  if (m < 0.70710678118654752) {
    m *= 2.0;
    --e;
  }
  const double f = (m - 1.0) / (m + 1.0), s = f * f;
  // 2 atanh(f) = 2f (1 + s/3 + s^2/5 + ... + s^11/23); the dropped terms are < 2^-60 relative.
  double t = 1.0 / 23.0;
  for (int k = 21; k >= 3; k -= 2) t = fma(t, s, 1.0 / k);
  const double ln_m = fma(2.0 * f, s * t, 2.0 * f);
  const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;  // hi has 21 zero low bits
  return fma(static_cast<double>(e), ln2_hi, fma(static_cast<double>(e), ln2_lo, ln_m));
}

// One lane's running sum: h - p ln p (p <= 0 or NaN adds nothing).
SPECDEC_HD inline double entropy_add(double h, float p) {
  if (!(p > 0.0f)) return h;
  const double pd = static_cast<double>(p);
  return fma(-pd, log_det(pd), h);
}

#ifndef __CUDACC__
// The lanes' sums (kEntropyLanes of them, overwritten) combined as the CUDA block reduction does:
// a butterfly within each 32-lane warp, then the warps in order.
inline double entropy_combine(double* lane) {
  double h = 0.0;
  for (int w = 0; w < kEntropyLanes / kEntropyWarp; ++w) {
    double* v = lane + w * kEntropyWarp;
    for (int o = kEntropyWarp / 2; o > 0; o >>= 1) {
      double n[kEntropyWarp];
      for (int l = 0; l < kEntropyWarp; ++l) n[l] = v[l] + v[l ^ o];
      for (int l = 0; l < kEntropyWarp; ++l) v[l] = n[l];
    }
    h = w == 0 ? v[0] : h + v[0];
  }
  return h;
}
// The host's side of the order, plainly (cpp/cpu/verify_simd.h has the same on AVX2 / AVX-512).
inline double entropy_host(const float* p, int64_t V) {
  double lane[kEntropyLanes] = {};
  for (int64_t i = 0; i < V; ++i) lane[i % kEntropyLanes] = entropy_add(lane[i % kEntropyLanes], p[i]);
  return entropy_combine(lane);
}
#endif

// ---------------- log-probabilities (ops::token_logprobs) ----------------
// log p of an entry x of a row whose log-sum-exp is lse, rounded once to f32; -inf when the row's
// largest entry is -inf (lse -inf: nothing has probability).
SPECDEC_HD inline float logprob_of(float x, double lse) {
  if (lse == -INFINITY) return -INFINITY;
  return static_cast<float>(static_cast<double>(x) - lse);
}
// One lane's share of the log-sum-exp: sum of exp(x - max) in double (a -inf entry adds 0).
SPECDEC_HD inline double lse_add(double s, float x, float max) { return s + exp(static_cast<double>(x) - static_cast<double>(max)); }
SPECDEC_HD inline double lse_finish(double s, float max) { return max == -INFINITY ? -INFINITY : static_cast<double>(max) + log(s); }
#ifndef __CUDACC__
// The log-sum-exp of a row in double (the largest entry first; NaN entries propagate).
inline double log_sum_exp_host(const float* x, int64_t V) {
  float m = -INFINITY;
  for (int64_t i = 0; i < V; ++i) m = std::fmax(m, x[i]);
  double s = 0.0;
  for (int64_t i = 0; i < V; ++i) s = lse_add(s, x[i], m);
  return lse_finish(s, m);
}
#endif

// Medusa typical-acceptance threshold from the entropy (nats) of the node's target row.
SPECDEC_HD inline float typical_threshold(double entropy, float eps, float alpha) {
  float t = alpha * static_cast<float>(exp(-entropy));
  return t < eps ? t : eps;
}

// ---------------- ordering helpers ----------------
// A float's bits mapped to an unsigned key with the same order (NaN -> 0, the smallest).
SPECDEC_HD inline uint32_t float_key(float x) {
  if (x != x) return 0;
  uint32_t u;
#ifdef __CUDA_ARCH__
  u = __float_as_uint(x);
#else
  __builtin_memcpy(&u, &x, 4);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// An element's place in the order top-k / top-p keep tokens (float key descending, then index
// ascending) as one u64, larger = earlier; distinct for distinct indices, so selection runs on
// plain integers and the index comes back out of the rank.
SPECDEC_HD inline uint64_t rank_key(float v, int64_t i) {
  return (static_cast<uint64_t>(float_key(v)) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
}
SPECDEC_HD inline int64_t rank_index(uint64_t r) { return static_cast<int64_t>(0xffffffffu - static_cast<uint32_t>(r)); }

// argmax order: larger value wins, ties -> lower index; NaN never beats a number.
SPECDEC_HD inline bool argmax_better(float v, int32_t i, float bv, int32_t bi) {
  if (v != v) return false;
  if (bv != bv) return true;
  return v > bv || (v == bv && i < bi);
}

// Next child of `node` after node index `after` (exclusive); -1 when none. Children have larger
// indices than their parent, so the scan starts past both.
SPECDEC_HD inline int next_child(const int32_t* parents, int n, int node, int after) {
  for (int c = (after > node ? after : node) + 1; c < n; ++c)
    if (parents[c] == node) return c;
  return -1;
}

// The largest number of candidate children of one node of the tree (parents [n], local; -2 = not a
// candidate). At most 1: rejection with draft rows computes at most one residual per walk, always of
// a fresh row. More: a node's k-th rejected child takes a residual of the residual its earlier
// siblings left. CUDA's vocabulary-parallel path precomputes those residuals, one launch per sibling
// rank (cuda/verify.cuh), so the count is found on the host.
inline int max_candidate_children(const int32_t* parents, int n) {
  std::vector<int> count(static_cast<size_t>(n > 0 ? n : 0), 0);
  int most = 0;
  for (int c = 1; c < n; ++c) {
    const int32_t p = parents[c];
    if (p < 0 || p >= n) continue;
    most = std::max(most, ++count[static_cast<size_t>(p)]);
  }
  return most;
}
inline bool one_child_each(const int32_t* parents, int n) { return max_candidate_children(parents, n) <= 1; }

// ---------------- the tree walks ----------------
// `Ops` gives the row-wise work over the vocabulary (loops on CPU, block-cooperative on CUDA,
// where every thread runs the walk in lockstep and each op returns block-uniform values):
//   int      argmax(int node)            target row argmax (greedy)
//   float    prob(int node, int tok)     target row entry (typical)
//   double   entropy(int node)           H of the target row (typical)
//   uint64_t load_p(int node)            P <- quantised target row, returns its mass
//   uint64_t load_q(int node)            Q <- quantised draft row, returns its mass
//   uint64_t p_at(int tok), q_at(int tok); void set_p(int tok, uint64_t), set_q(int tok, uint64_t)
//   uint64_t residual_mass(mp, mq)       sum of residual_entry(P, Q, mp / mq)
//   void     apply_residual(mp, mq)      P <- residual_entry(P, Q, mp / mq)
//   int      sample_p(uint64_t threshold) first token whose inclusive prefix of P exceeds it
//   void     put(int k, int node, int token): node >= 0: accepted_nodes[k] = node;
//            node < 0: emitted[k] = token
//   float/int scratch per node: set_thr/get_thr, set_depth/get_depth (typical)
struct WalkParams {
  uint64_t seed = 0, offset = 0;
  bool has_draft = false;
  float eps = 0.09f, alpha = 0.3f;
};

#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class Ops>
SPECDEC_HD int walk_greedy(Ops& ops, const int32_t* parents, const int32_t* tokens, int n) {
  int cur = 0, count = 1;
  ops.put(0, 0, -1);
  for (;;) {
    const int t = ops.argmax(cur);
    int next = -1;
    for (int c = next_child(parents, n, cur, cur); c >= 0; c = next_child(parents, n, cur, c))
      if (tokens[c] == t) { next = c; break; }
    ops.put(count - 1, -1, t);  // accepted child's token, or the correction at the last node
    if (next < 0) return count;
    ops.put(count, next, -1);
    ++count;
    cur = next;
  }
}

#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class Ops>
SPECDEC_HD int walk_onehot(Ops& ops, const int32_t* parents, const int32_t* tokens, int n, const WalkParams& w) {
  int cur = 0, count = 1;
  ops.put(0, 0, -1);
  for (;;) {
    // The draw of emitted token `count - 1` of this call: the sample op's draw (node 0) at one
    // offset per depth, so a plain sampled chain drawing at the same offsets picks the same tokens.
    const uint64_t bits = random_u64(w.seed, w.offset + static_cast<uint64_t>(count - 1), 0u, kDrawSampleOp);
    const int t = ops.sample_p(sample_threshold(bits, ops.load_p(cur)));
    int next = -1;
    for (int c = next_child(parents, n, cur, cur); c >= 0; c = next_child(parents, n, cur, c)) {
      const int x = tokens[c];
      if (x < 0 || x >= ops.V) {  // no token: no mass (see walk_rejection)
        ops.put(count - 1, -1, kNoMass);
        return count;
      }
      if (x == t) { next = c; break; }
    }
    ops.put(count - 1, -1, t);  // accepted child's token, or the draw at the last node (kNoMass: none)
    if (next < 0) return count;
    ops.put(count, next, -1);
    ++count;
    cur = next;
  }
}

#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class Ops>
SPECDEC_HD int walk_rejection(Ops& ops, const int32_t* parents, const int32_t* tokens, int n, const WalkParams& w) {
  // A root without candidates draws as a lone root does whatever the call carries (a sequence that
  // drafted nothing beside others that did): plain sampling's draw.
  if (!w.has_draft || next_child(parents, n, 0, 0) < 0) return walk_onehot(ops, parents, tokens, n, w);
  int cur = 0, count = 1;
  ops.put(0, 0, -1);
  uint64_t mp = ops.load_p(0);
  uint64_t mq = ops.load_q(0);
  for (;;) {
    int next = -1;
    for (int c = next_child(parents, n, cur, cur); c >= 0; c = next_child(parents, n, cur, c)) {
      const int x = tokens[c];
      // A draft pick that is no token (kNoMass: a device chain drew it from a row without mass)
      // ends the walk with no mass: E_NUMERIC in the binding, never a read outside the rows.
      if (x < 0 || x >= ops.V) {
        ops.put(count - 1, -1, kNoMass);
        return count;
      }
      const double u = uniform_f64(random_u64(w.seed, w.offset, static_cast<uint32_t>(c), kDrawAccept));
      const uint64_t px = ops.p_at(x);
      const uint64_t qx = ops.q_at(x);
      if (accept_draft(u, px, mp, qx, mq)) { next = c; break; }
      if (mq > 0) {  // p <- norm(max(0, p - q)); kept unchanged when that has no mass
        const uint64_t r = ops.residual_mass(mp, mq);
        if (r > 0) {
          ops.apply_residual(mp, mq);
          mp = r;
        }
      }
      ops.set_q(x, 0);  // q <- q without x (drawn without replacement)
      mq -= qx;
    }
    if (next < 0) break;
    ops.put(count - 1, -1, tokens[next]);
    ops.put(count, next, -1);
    ++count;
    cur = next;
    mp = ops.load_p(cur);
    mq = ops.load_q(cur);
  }
  const uint64_t bits = random_u64(w.seed, w.offset, static_cast<uint32_t>(cur), kDrawSample);
  ops.put(count - 1, -1, ops.sample_p(sample_threshold(bits, mp)));
  return count;
}

#ifdef __CUDACC__
#pragma nv_exec_check_disable
#endif
template <class Ops>
SPECDEC_HD int walk_typical(Ops& ops, const int32_t* parents, const int32_t* tokens, int n, const WalkParams& w) {
  // depth >= 0: accepted at that depth; -1: not accepted. thr < 0: not computed yet.
  ops.set_depth(0, 0);
  for (int v = 0; v < n; ++v) ops.set_thr(v, -1.0f);
  int best = 0, best_depth = 0;
  for (int c = 1; c < n; ++c) {
    ops.set_depth(c, -1);
    const int par = parents[c];
    if (par < 0 || ops.get_depth(par) < 0) continue;
    if (tokens[c] < 0 || tokens[c] >= ops.V) {  // no token (see walk_rejection): no mass
      ops.put(0, 0, -1);
      ops.put(0, -1, kNoMass);
      return 1;
    }
    float thr = ops.get_thr(par);
    if (thr < 0.0f) {
      thr = typical_threshold(ops.entropy(par), w.eps, w.alpha);
      ops.set_thr(par, thr);
    }
    if (ops.prob(par, tokens[c]) > thr) {
      const int d = ops.get_depth(par) + 1;
      ops.set_depth(c, d);
      if (d > best_depth) { best = c; best_depth = d; }  // strict: ties keep the lower index
    }
  }
  const int count = best_depth + 1;
  for (int v = best, k = best_depth; k >= 0; v = parents[v], --k) {
    ops.put(k, v, -1);
    if (k > 0) ops.put(k - 1, -1, tokens[v]);
  }
  const uint64_t mp = ops.load_p(best);
  const uint64_t bits = random_u64(w.seed, w.offset, static_cast<uint32_t>(best), kDrawSample);
  ops.put(count - 1, -1, ops.sample_p(sample_threshold(bits, mp)));
  return count;
}

// The row (in a ragged batch of trees, indptr [B+1]) of sequence b's last accepted node, from
// verification's outputs: acc_nodes ragged by indptr, acc_count[b] of them. -1 for a count or node
// verification never makes (so a reader never goes out of bounds).
SPECDEC_HD inline int64_t last_accepted_row(const int32_t* indptr, const int32_t* acc_nodes, const int32_t* acc_count, int64_t b) {
  const int32_t s = indptr[b], n = indptr[b + 1] - s, c = acc_count[b];
  if (n < 1 || c < 1 || c > n) return -1;
  const int32_t node = acc_nodes[s + c - 1];
  return node >= 0 && node < n ? int64_t{s} + node : -1;
}

// ---------------- dynamic tree expansion (EAGLE-2: ops_tree.h) ----------------
// The order in which a level chooses the nodes it expands: the larger path log probability first,
// then the lower pool index; NaN counts as -inf, so a corrupt row cannot break the order.
SPECDEC_HD inline bool expand_better(double v, int32_t i, double bv, int32_t bi) {
  const double a = v != v ? -HUGE_VAL : v, b = bv != bv ? -HUGE_VAL : bv;
  return a > b || (a == b && i < bi);
}

// A child's path log probability: its parent's plus the log of its probability, rounded to f32 as
// EagleSpeculator.children stores it (JavaScript's Math.log of the f32 value, kept in a Float32Array).
SPECDEC_HD inline double child_log_prob(double parent, float p) {
  return parent + static_cast<double>(static_cast<float>(log(static_cast<double>(p))));
}

// ---------------- penalties (ops::penalize) ----------------
// The logit of a token in a row's history: the repetition penalty r (transformers'
// RepetitionPenaltyLogitsProcessor: l / r where l > 0, else l * r; 1 = off), then, for a token the
// output holds `count` > 0 times, OpenAI's frequency * count + presence subtracted. Each operation
// is rounded as written on both backends: the f32 product or quotient is one rounding, and the
// penalty is summed in double, where frequency * count is exact (a 24-bit by 29-bit product), so a
// fused multiply-add cannot change it; one subtraction in double, one rounding to f32.
SPECDEC_HD inline float penalized_logit(float l, int32_t count, float repetition, float presence, float frequency) {
  if (repetition != 1.0f) l = l > 0.0f ? l / repetition : l * repetition;
  if (count > 0) {
    const double pen = static_cast<double>(frequency) * static_cast<double>(count) + static_cast<double>(presence);
    l = static_cast<float>(static_cast<double>(l) - pen);
  }
  return l;
}

// A row's path tokens: given (path[j]), or read through indices from a buffer of picks
// (source[index[j]]: a native chain's own picks, on the device).
struct DirectPath {
  const int32_t* path;
  SPECDEC_HD int32_t operator()(int32_t j) const { return path[j]; }
};
struct IndexedPath {
  const int32_t* source;
  const int32_t* index;
  SPECDEC_HD int32_t operator()(int32_t j) const { return source[index[j]]; }
};

// How often t occurs among the n tokens of a row's path.
template <class Path>
SPECDEC_HD inline int32_t path_count(const Path& path, int32_t n, int32_t t) {
  int32_t c = 0;
  for (int32_t j = 0; j < n; ++j) c += path(j) == t ? 1 : 0;
  return c;
}

// Whether path token j occurs first at j (each distinct path token is penalized once).
template <class Path>
SPECDEC_HD inline bool first_in_path(const Path& path, int32_t j) {
  const int32_t t = path(j);
  for (int32_t i = 0; i < j; ++i)
    if (path(i) == t) return false;
  return true;
}

// A token as a row's path reads it (ops::tree_paths): through map (target -> draft ids, -1 where the
// draft lacks one) where there is one, -1 outside it; itself otherwise.
SPECDEC_HD inline int32_t path_token(const int32_t* map, int32_t map_size, int32_t t) {
  return map == nullptr ? t : (t >= 0 && t < map_size ? map[t] : -1);
}

// Whether t is among the n ascending tokens of a sequence's history.
SPECDEC_HD inline bool in_history(const int32_t* hist, int32_t n, int32_t t) {
  int32_t lo = 0, hi = n;
  while (lo < hi) {
    const int32_t mid = lo + (hi - lo) / 2;
    if (hist[mid] < t) lo = mid + 1;
    else hi = mid;
  }
  return lo < n && hist[lo] == t;
}

}  // namespace sm
}  // namespace specdec

// CPU reference of batched tree verification: the walks of spec_math.h over plain loops.
// Arguments were validated by ops::verify.
#include <cmath>
#include <vector>

#include "../core/ops_sampling.h"
#include "../core/spec_math.h"
#include "verify_simd.h"
#include "simd.h"

namespace specdec {
namespace cpu {

namespace {

// Row-wise work for one sequence (see the Ops contract in spec_math.h).
struct CpuOps {
  const Tensor* target;
  const float* draft;  // null: deterministic drafts
  int64_t V;
  int64_t row0;  // global row of local node 0
  int32_t* acc_nodes;
  int32_t* emitted;
  std::vector<uint64_t> P, Q;
  std::vector<float> thr, row;
  std::vector<int> depth;

  const float* target_f32(int node) const { return target->ptr<float>() + (row0 + node) * V; }

  int argmax(int node) {
    return simd::row_argmax(target->dtype(), target->data(), (row0 + node) * V, V, row);
  }
  float prob(int node, int tok) const { return target_f32(node)[tok]; }
  double entropy(int node) const { return simd::entropy(target_f32(node), V); }  // CUDA's order (verify_simd.h)
  static uint64_t load(const float* src, int64_t V, std::vector<uint64_t>& dst) {
    dst.resize(static_cast<size_t>(V));
    return simd::quantize_row(src, V, dst.data());
  }
  uint64_t load_p(int node) { return load(target_f32(node), V, P); }
  uint64_t load_q(int node) { return load(draft + (row0 + node) * V, V, Q); }
  uint64_t p_at(int tok) const { return P[tok]; }
  uint64_t q_at(int tok) const { return Q[tok]; }
  void set_p(int tok, uint64_t v) { P[tok] = v; }
  void set_q(int tok, uint64_t v) { Q[tok] = v; }
  uint64_t residual_mass(uint64_t mp, uint64_t mq) const {
    return simd::residual_mass(P.data(), Q.data(), V, static_cast<double>(mp) / static_cast<double>(mq));
  }
  void apply_residual(uint64_t mp, uint64_t mq) {
    simd::apply_residual(P.data(), Q.data(), V, static_cast<double>(mp) / static_cast<double>(mq));
  }
  int sample_p(uint64_t t) const { return simd::sample_index(P.data(), V, t); }
  void put(int k, int node, int token) {
    if (node >= 0) acc_nodes[k] = node;
    else emitted[k] = token;
  }
  void set_thr(int v, float t) { thr[v] = t; }
  float get_thr(int v) const { return thr[v]; }
  void set_depth(int v, int d) { depth[v] = d; }
  int get_depth(int v) const { return depth[v]; }
};

}  // namespace

void verify(const VerifyArgs& args, VerifyResult& out) {
  const int64_t B = args.node_indptr.size(0) - 1, V = args.target.size(1);
  const int32_t* indptr = args.node_indptr.ptr<int32_t>();
  const int32_t* parents = args.parents.ptr<int32_t>();
  const int32_t* tokens = args.tokens.ptr<int32_t>();
  int32_t* counts = out.accept_count.ptr<int32_t>();
  int32_t* depth_acc = out.depth_accepts.ptr<int32_t>();
  const int64_t D = out.depth_accepts.numel();
  CpuOps ops{};
  ops.target = &args.target;
  ops.draft = args.draft.defined() ? args.draft.ptr<float>() : nullptr;
  ops.V = V;
  for (int64_t b = 0; b < B; ++b) {
    const int s = indptr[b], n = indptr[b + 1] - s;
    ops.row0 = s;
    ops.acc_nodes = out.accepted_nodes.ptr<int32_t>() + s;
    ops.emitted = out.emitted.ptr<int32_t>() + s;
    for (int i = 0; i < n; ++i) ops.acc_nodes[i] = ops.emitted[i] = -1;
    sm::WalkParams w;
    if (args.seeds.defined()) {
      w.seed = args.seeds.ptr<uint64_t>()[b];
      w.offset = args.offsets.ptr<uint64_t>()[b];
    }
    w.has_draft = ops.draft != nullptr;
    w.eps = args.typical_threshold;
    w.alpha = args.typical_alpha;
    int count = 0;
    switch (args.mode) {
      case VerifyMode::greedy: count = sm::walk_greedy(ops, parents + s, tokens + s, n); break;
      case VerifyMode::rejection: count = sm::walk_rejection(ops, parents + s, tokens + s, n, w); break;
      case VerifyMode::typical:
        ops.thr.assign(static_cast<size_t>(n), -1.0f);
        ops.depth.assign(static_cast<size_t>(n), -1);
        count = sm::walk_typical(ops, parents + s, tokens + s, n, w);
        break;
    }
    counts[b] = count;
    for (int64_t d = 0; d < D && d < count - 1; ++d) depth_acc[d] += 1;
  }
}

}  // namespace cpu
}  // namespace specdec

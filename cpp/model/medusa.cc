#include "medusa.h"

#include "../core/ops_layers.h"
#include "../core/ops_sampling.h"

namespace specdec {

std::vector<int32_t> medusa_top_k(const std::vector<MedusaHead>& heads, const Tensor& x, int32_t k, const PenaltyArgs* penalties) {
  check_arg_dim(x, "x", {DType::f32}, 2);
  Tensor ids = Tensor::empty(DType::i32, {static_cast<int64_t>(heads.size()) * x.size(0), k}, x.device());
  medusa_top_k_into(heads, x, k, ids, penalties);
  std::vector<int32_t> host(static_cast<size_t>(ids.numel()));
  ids.copy_to_host(host.data(), host.size() * sizeof(int32_t));
  return host;
}

void medusa_top_k_into(const std::vector<MedusaHead>& heads, const Tensor& x, int32_t k, Tensor& ids, const PenaltyArgs* penalties) {
  SPECDEC_CHECK(!heads.empty(), "E_ARG", "medusa: no heads");
  check_arg_dim(x, "x", {DType::f32}, 2);
  const int64_t R = x.size(0), H = x.size(1), NH = static_cast<int64_t>(heads.size());
  const int64_t V = heads[0].lm_head.size(0);
  SPECDEC_CHECK(k >= 1 && k <= V, "E_ARG", "k: expected 1 <= k <= ", V, " (the vocabulary), got ", k);
  for (size_t h = 0; h < heads.size(); ++h)
    SPECDEC_CHECK(heads[h].w.size() == heads[h].b.size() && heads[h].lm_head.defined() && heads[h].lm_head.size(0) == V,
                  "E_ARG", "medusa: head ", h, " is malformed (ResBlock weights/biases or LM head)");
  const Device dev = x.device();
  check_arg(ids, "ids", {DType::i32}, {NH * R, k});
  // (Checked before the heads run: penalize would find a bad argument only after the first head.)
  if (penalties) {
    SPECDEC_CHECK(static_cast<int64_t>(penalties->row_seq.size()) == R, "E_ARG", "penalties.rowSeq: ", penalties->row_seq.size(), " entries for ", R, " rows");
    ops::check_penalty_histories(*penalties, V);
    for (int64_t r = 0; r < R; ++r)
      SPECDEC_CHECK(penalties->row_seq[r] >= 0 && penalties->row_seq[r] + 1 < static_cast<int64_t>(penalties->hist_indptr.size()), "E_ARG",
                    "penalties.rowSeq: row ", r, " names sequence ", penalties->row_seq[r], " of ", penalties->hist_indptr.size() - 1);
  }
  Tensor vals = Tensor::empty(DType::f32, {R, k}, dev);
  Tensor logits = Tensor::empty(DType::f32, {R, V}, dev);
  Tensor a = Tensor::empty(DType::f32, {R, H}, dev), t = Tensor::empty(DType::f32, {R, H}, dev);
  for (int64_t h = 0; h < NH; ++h) {
    const MedusaHead& head = heads[static_cast<size_t>(h)];
    const Tensor* cur = &x;
    for (size_t l = 0; l < head.w.size(); ++l) {
      // ResBlock: y = cur + SiLU(W cur + b), ping-ponging between a and t (x is shared by all heads).
      Tensor& y = (cur == &a) ? t : a;
      ops::matmul(*cur, head.w[l], head.b[l], y, l < head.ws.size() ? head.ws[l].get() : nullptr);
      ops::silu_inplace(y);
      ops::add_inplace(y, *cur);
      cur = &y;
    }
    ops::matmul(*cur, head.lm_head, Tensor(), logits, head.lm_s.get());
    if (penalties) ops::penalize(logits, *penalties);
    Tensor out = ids.rows(h * R, (h + 1) * R);
    ops::top_k(logits, k, vals, out);
  }
}

void pack_medusa_heads(std::vector<MedusaHead>& heads) {
  if (!cpu::SerialWeight::enabled()) return;
  size_t packable = 0;
  for (const MedusaHead& h : heads) {
    for (const Tensor& w : h.w)
      if (cpu::SerialWeight::eligible(w)) packable += w.nbytes();
    if (cpu::SerialWeight::eligible(h.lm_head)) packable += h.lm_head.nbytes();
  }
  if (packable == 0 || packable > cpu::SerialWeight::kMaxModelBytes) return;
  for (MedusaHead& h : heads) {
    h.ws.assign(h.w.size(), nullptr);
    for (size_t l = 0; l < h.w.size(); ++l) h.ws[l] = cpu::SerialWeight::pack_if_eligible(h.w[l]);
    h.lm_s = cpu::SerialWeight::pack_if_eligible(h.lm_head);
  }
}

void medusa_top_k_after_verify(const std::vector<MedusaHead>& heads, const Tensor& hidden, const Tensor& node_indptr,
                               const Tensor& accepted_nodes, const Tensor& accept_count, int32_t k, Tensor& ids,
                               const PenaltyArgs* penalties) {
  check_arg_dim(hidden, "hidden", {DType::f32}, 2);
  Tensor x = Tensor::empty(DType::f32, {accept_count.numel(), hidden.size(1)}, hidden.device());
  ops::gather_last_accepted(hidden, node_indptr, accepted_nodes, accept_count, x);
  medusa_top_k_into(heads, x, k, ids, penalties);
}

}  // namespace specdec

// EAGLE draft layers as one call (cpp/model/eagle.h): the composition lib/strategies/eagle.ts
// made of op calls, op for op.
#include "eagle.h"

#include <cmath>

#include "../core/error.h"
#include "../core/ops_layers.h"

namespace specdec {

namespace {

Tensor mm(const Tensor& x, const Tensor& w, const Tensor& bias = Tensor()) {
  Tensor out = Tensor::empty(DType::f32, {x.size(0), w.size(0)}, x.device());
  ops::matmul(x, w, bias, out);
  return out;
}

Tensor norm(const Tensor& x, const Tensor& w, float eps) {
  Tensor out = Tensor::empty(DType::f32, x.shape(), x.device());
  ops::rmsnorm(x, w, eps, out);
  return out;
}

}  // namespace

Tensor eagle_forward(const EagleWeights& w, const Tensor& embed, const std::vector<Tensor>& kv_layers,
                     const PagedBatch& batch, const Tensor& ids, const int32_t* host_ids, const Tensor& positions,
                     const std::vector<Tensor>& features, bool from_target) {
  SPECDEC_CHECK(kv_layers.size() == w.layers.size(), "E_ARG", "eagle: ", kv_layers.size(), " cache layers for ",
                w.layers.size(), " draft layers");
  const bool v3 = w.version == 3;
  SPECDEC_CHECK(!features.empty() && (!v3 || !from_target || features.size() == 3), "E_ARG", "EAGLE", v3 ? "-3" : "-1/2",
                " head: ", features.size(), " feature blocks, expected ", v3 && from_target ? 3 : 1);
  const int64_t N = ids.size(0);
  const Tensor& table = w.embed.defined() ? w.embed : embed;
  Tensor e = Tensor::empty(DType::f32, {N, table.size(1)}, table.device());
  ops::embedding(table, ids, e, host_ids, false);
  Tensor x;
  if (!v3) {
    // x = fc([e; f]) as its two column blocks.
    x = mm(e, w.fc_embed);
    ops::add_inplace(x, mm(features[0], w.fc_feature[0], w.fc_bias));
  } else if (from_target) {
    x = mm(features[0], w.fc_feature[0]);
    for (size_t k = 1; k < 3; ++k) ops::add_inplace(x, mm(features[k], w.fc_feature[k]));
  } else {
    x = Tensor::empty(DType::f32, features[0].shape(), features[0].device());
    x.copy_from(features[0]);
  }
  const int64_t D = w.head_dim;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));  // as the JS composition passed it
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const EagleLayer& L = w.layers[l];
    Tensor q, k, v;
    if (v3) {
      // EAGLE-3's midlayer: attention over [input_layernorm(e); hidden_norm(x)], as column blocks.
      const Tensor en = norm(e, L.in_norm, w.eps), hn = norm(x, L.hidden_norm, w.eps);
      q = mm(en, L.q, L.qb);
      ops::add_inplace(q, mm(hn, L.q_h));
      k = mm(en, L.k, L.kb);
      ops::add_inplace(k, mm(hn, L.k_h));
      v = mm(en, L.v, L.vb);
      ops::add_inplace(v, mm(hn, L.v_h));
    } else {
      const Tensor h = L.in_norm.defined() ? norm(x, L.in_norm, w.eps) : x;
      q = mm(h, L.q, L.qb);
      k = mm(h, L.k, L.kb);
      v = mm(h, L.v, L.vb);
    }
    Tensor q3 = q.view({N, w.heads, D}), k3 = k.view({N, w.kv_heads, D}), v3t = v.view({N, w.kv_heads, D});
    ops::rope(q3, positions, w.inv_freq);
    ops::rope(k3, positions, w.inv_freq);
    Tensor layer = kv_layers[l];
    ops::kv_append(layer, k3, v3t, batch);
    Tensor att = Tensor::empty(q3.dtype(), q3.shape(), q3.device());
    ops::tree_attention(q3, layer, batch, Tensor(), scale, att, 0, 0.f);
    ops::add_inplace(x, mm(att.view({N, w.heads * D}), L.o));
    const Tensor h2 = norm(x, L.post_norm, w.eps);
    Tensor g = mm(h2, L.gate);
    ops::silu_mul(g, mm(h2, L.up), g);
    ops::add_inplace(x, mm(g, L.down));
  }
  return x;
}

}  // namespace specdec

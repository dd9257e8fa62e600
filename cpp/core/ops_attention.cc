// PagedBatch construction and the validating dispatchers of the attention / KV ops.
// Every check lives here so that the CPU and CUDA backends report identical E_ARG errors.
#include "ops_attention.h"

#include <algorithm>
#include <cmath>

#include "backend.h"
#include "ops_layers.h"
#include "host_pack.h"
#include "transfers.h"

namespace specdec {

namespace {

// indptr must have `want` entries, start at 0 and never decrease.
void check_indptr(const std::vector<int32_t>& p, size_t want, const char* name) {
  SPECDEC_CHECK(p.size() == want, "E_ARG", name, ": expected ", want, " entries (batch size + 1), got ", p.size());
  SPECDEC_CHECK(p.empty() || p[0] == 0, "E_ARG", name, ": must start at 0, got ", p.empty() ? 0 : p[0]);
  for (size_t i = 1; i < p.size(); ++i)
    SPECDEC_CHECK(p[i] >= p[i - 1], "E_ARG", name, ": not monotone (", name, "[", i, "] = ", p[i], " < ", name, "[",
                  i - 1, "] = ", p[i - 1], ")");
}

std::vector<int32_t> host_i32(const Tensor& t) {
  std::vector<int32_t> h(static_cast<size_t>(t.numel()));
  t.copy_to_host(h.data(), h.size() * sizeof(int32_t));
  return h;
}

// The batch must describe this layer: same device, same page size, page ids inside it.
void check_batch_vs_layer(const PagedBatch& batch, const Tensor& kv_layer, const char* op) {
  SPECDEC_CHECK(batch.qo_indptr.defined(), "E_ARG", op, ": batch: empty PagedBatch (use PagedBatch::make)");
  SPECDEC_CHECK(batch.qo_indptr.device() == kv_layer.device(), "E_ARG", op, ": batch is on ",
                device_name(batch.qo_indptr.device()), " but kv_layer is ", kv_layer.describe());
  const int64_t num_pages = kv_layer.size(0), page_size = kv_layer.size(2);
  for (int32_t p : batch.h_page_indices)
    SPECDEC_CHECK(p >= 0 && p < num_pages, "E_ARG", op, ": batch.page_indices: page id ", p, " out of range for kv_layer with ",
                  num_pages, " pages");
  for (int64_t b = 0; b < batch.batch_size(); ++b) {
    int64_t pages = batch.h_page_indptr[b + 1] - batch.h_page_indptr[b];
    int64_t need = batch.h_prefix_len[b] + batch.h_qo_indptr[b + 1] - batch.h_qo_indptr[b];
    SPECDEC_CHECK(pages * page_size >= need, "E_ARG", op, ": batch.page_indptr: sequence ", b, " has ", pages,
                  " pages of ", page_size, " tokens for ", need, " tokens (kv_layer page size ", page_size, ")");
  }
}

void check_layer(const Tensor& kv_layer, const char* name) {
  check_arg_dim(kv_layer, name, {DType::f32, DType::f16, DType::bf16}, 5);
  SPECDEC_CHECK(kv_layer.size(1) == 2, "E_ARG", name, ": expected shape [numPages, 2, pageSize, numKvHeads, headDim], got ",
                kv_layer.describe());
  SPECDEC_CHECK(kv_layer.size(2) > 0 && kv_layer.size(3) > 0 && kv_layer.size(4) > 0, "E_ARG", name,
                ": page size, heads and head dim must be positive, got ", kv_layer.describe());
}

void check_layers(const std::vector<Tensor>& layers, const char* op) {
  SPECDEC_CHECK(!layers.empty(), "E_ARG", op, ": layers: no layers given");
  for (size_t l = 0; l < layers.size(); ++l) {
    std::string name = str("layers[", l, "]");
    check_layer(layers[l], name.c_str());
    SPECDEC_CHECK(layers[l].dtype() == layers[0].dtype() && layers[l].shape() == layers[0].shape() &&
                      layers[l].device() == layers[0].device(),
                  "E_ARG", op, ": ", name, " is ", layers[l].describe(), " but layers[0] is ", layers[0].describe());
  }
}

#ifndef SPECDEC_WITH_CUDA
[[noreturn]] void no_cuda(const char* op) {
  fail("E_UNSUPPORTED", op, ": the CUDA backend is not available (", backend_info().cuda_reason, ")");
}
#endif

}  // namespace

PagedBatch PagedBatch::make(const std::vector<int32_t>& qo_indptr, const std::vector<int32_t>& page_indptr,
                            const std::vector<int32_t>& page_indices, const std::vector<int32_t>& prefix_len,
                            int page_size, int num_pages, Device device, HostPack* pack) {
  HostPack own;
  HostPack& pk = pack ? *pack : own;
  PagedBatch b = stage(qo_indptr, page_indptr, page_indices, prefix_len, page_size, num_pages, pk);
  pk.upload(device);
  b.bind(pk);
  return b;
}

PagedBatch PagedBatch::sequences(int64_t s0, int64_t s1) const {
  SPECDEC_CHECK(0 <= s0 && s0 <= s1 && s1 <= batch_size(), "E_ARG", "PagedBatch::sequences: [", s0, ", ", s1,
                ") outside the batch of ", batch_size());
  PagedBatch b = *this;
  b.qo_indptr = qo_indptr.rows(s0, s1 + 1);
  b.page_indptr = page_indptr.rows(s0, s1 + 1);
  b.prefix_len = prefix_len.rows(s0, s1);
  b.h_qo_indptr.assign(h_qo_indptr.begin() + s0, h_qo_indptr.begin() + s1 + 1);
  b.h_page_indptr.assign(h_page_indptr.begin() + s0, h_page_indptr.begin() + s1 + 1);
  b.h_prefix_len.assign(h_prefix_len.begin() + s0, h_prefix_len.begin() + s1);
  return b;
}

void PagedBatch::bind(const HostPack& pack) {
  SPECDEC_CHECK(segs_[0] >= 0, "E_ARG", "PagedBatch::bind: the batch was not staged");
  qo_indptr = pack.view(segs_[0]);
  page_indptr = pack.view(segs_[1]);
  page_indices = pack.view(segs_[2]);
  prefix_len = pack.view(segs_[3]);
}

PagedBatch PagedBatch::stage(const std::vector<int32_t>& qo_indptr, const std::vector<int32_t>& page_indptr,
                             const std::vector<int32_t>& page_indices, const std::vector<int32_t>& prefix_len,
                             int page_size, int num_pages, HostPack& pk) {
  SPECDEC_CHECK(page_size > 0, "E_ARG", "page_size: must be positive, got ", page_size);
  SPECDEC_CHECK(num_pages >= 0, "E_ARG", "num_pages: must be >= 0, got ", num_pages);
  const size_t B = prefix_len.size();
  check_indptr(qo_indptr, B + 1, "qo_indptr");
  check_indptr(page_indptr, B + 1, "page_indptr");
  SPECDEC_CHECK(static_cast<size_t>(page_indptr.back()) == page_indices.size(), "E_ARG",
                "page_indptr: last entry ", page_indptr.back(), " != page_indices length ", page_indices.size());
  for (size_t i = 0; i < page_indices.size(); ++i)
    SPECDEC_CHECK(page_indices[i] >= 0 && page_indices[i] < num_pages, "E_ARG", "page_indices[", i, "]: page id ",
                  page_indices[i], " out of range [0, ", num_pages, ")");
  PagedBatch b;
  for (size_t s = 0; s < B; ++s) {
    SPECDEC_CHECK(prefix_len[s] >= 0, "E_ARG", "prefix_len[", s, "]: must be >= 0, got ", prefix_len[s]);
    int64_t qo = qo_indptr[s + 1] - qo_indptr[s];
    int64_t kv = static_cast<int64_t>(prefix_len[s]) + qo;
    int64_t pages = page_indptr[s + 1] - page_indptr[s];
    SPECDEC_CHECK(kv <= INT32_MAX, "E_ARG", "prefix_len[", s, "]: ", kv, " tokens do not fit int32");
    SPECDEC_CHECK(pages * page_size >= kv, "E_ARG", "page_indptr: sequence ", s, " has ", pages, " pages of ", page_size,
                  " tokens, too few for prefix_len ", prefix_len[s], " + ", qo, " new tokens");
    b.max_qo_len = std::max<int32_t>(b.max_qo_len, static_cast<int32_t>(qo));
    b.max_kv_len = std::max<int32_t>(b.max_kv_len, static_cast<int32_t>(kv));
  }
  b.h_qo_indptr = qo_indptr;
  b.h_page_indptr = page_indptr;
  b.h_page_indices = page_indices;
  b.h_prefix_len = prefix_len;
  b.segs_[0] = pk.add(DType::i32, qo_indptr);
  b.segs_[1] = pk.add(DType::i32, page_indptr);
  b.segs_[2] = pk.add(DType::i32, page_indices);
  b.segs_[3] = pk.add(DType::i32, prefix_len);
  return b;
}

namespace ops {

namespace {
void check_kv_append(const Tensor& kv_layer, const Tensor& k, const Tensor& v, const PagedBatch& batch, const char* op) {
  check_layer(kv_layer, "kv_layer");
  const int64_t H = kv_layer.size(3), D = kv_layer.size(4), N = batch.total_new();
  check_arg(k, "k", {DType::f32, DType::f16, DType::bf16}, {N, H, D});
  check_arg(v, "v", {DType::f32, DType::f16, DType::bf16}, {N, H, D});
  check_same_device({&kv_layer, &k, &v}, op);
  check_batch_vs_layer(batch, kv_layer, op);
}
}  // namespace

void kv_append(Tensor& kv_layer, const Tensor& k, const Tensor& v, const PagedBatch& batch) {
  check_kv_append(kv_layer, k, v, batch, "kv_append");
  const int64_t N = batch.total_new();
  if (N == 0) return;
  note_op();  // one launch on CUDA
  if (kv_layer.device() == Device::cpu) return cpu::kv_append(kv_layer, k, v, batch);
#ifdef SPECDEC_WITH_CUDA
  cuda::kv_append(kv_layer, k, v, batch);
#else
  no_cuda("kv_append");
#endif
}

void rope_qk_append(Tensor& q, Tensor& k, const Tensor& v, const Tensor& positions, const Tensor& inv_freq,
                    Tensor& kv_layer, const PagedBatch& batch, const QkNorm* norm, float rope_scale) {
  check_rope_qk(q, k, positions, inv_freq);
  check_kv_append(kv_layer, k, v, batch, "rope_qk_append");
  check_same_device({&q, &k, &kv_layer}, "rope_qk_append");
  if (norm) {
    const int64_t D = q.size(2);
    check_arg(norm->q_w, "q_norm", {DType::f32}, {D});
    check_arg(norm->k_w, "k_norm", {DType::f32}, {D});
    SPECDEC_CHECK(std::isfinite(norm->eps) && norm->eps >= 0.f, "E_ARG", "qk norm eps: expected a finite number >= 0, got ",
                  norm->eps);
    check_same_device({&q, &norm->q_w, &norm->k_w}, "rope_qk_append");
  }
  SPECDEC_CHECK(std::isfinite(rope_scale) && rope_scale > 0.f, "E_ARG", "rope_scale: expected a positive number, got ", rope_scale);
  if (batch.total_new() == 0) return;
  note_op();  // one launch on CUDA
  if (q.device() == Device::cpu) {
    if (norm) {
      const int64_t N = q.size(0), D = q.size(2);
      Tensor qh = q.view({N * q.size(1), D}), kh = k.view({N * k.size(1), D});
      cpu::rmsnorm(qh, norm->q_w, norm->eps, qh);
      cpu::rmsnorm(kh, norm->k_w, norm->eps, kh);
    }
    cpu::rope_qk(q, k, positions, inv_freq, rope_scale);
    return cpu::kv_append(kv_layer, k, v, batch);
  }
#ifdef SPECDEC_WITH_CUDA
  cuda::rope_qk_append(q, k, v, positions, inv_freq, kv_layer, batch, norm, rope_scale);
#else
  no_cuda("rope_qk_append");
#endif
}

void tree_attention(const Tensor& q, const Tensor& kv_layer, const PagedBatch& batch, const Tensor& mask, float sm_scale,
                    Tensor& out, int window, float softcap) {
  check_layer(kv_layer, "kv_layer");
  const int64_t Hkv = kv_layer.size(3), D = kv_layer.size(4), N = batch.total_new();
  check_arg(q, "q", {DType::f32, DType::f16, DType::bf16}, {N, -1, D});
  const int64_t Hq = q.size(1);
  SPECDEC_CHECK(Hq > 0 && Hq % Hkv == 0, "E_ARG", "q: ", Hq, " query heads is not a multiple of ", Hkv,
                " KV heads (GQA/MQA need numQoHeads % numKvHeads == 0)");
  check_arg(out, "out", {q.dtype()}, {N, Hq, D});
  SPECDEC_CHECK(std::isfinite(sm_scale), "E_ARG", "sm_scale: must be finite, got ", sm_scale);
  SPECDEC_CHECK(window >= 0, "E_ARG", "window: expected 0 (none) or a sliding window of >= 1 positions, got ", window);
  SPECDEC_CHECK(std::isfinite(softcap) && softcap >= 0, "E_ARG", "softcap: expected 0 (none) or a positive number, got ", softcap);
  if (mask.defined()) {
    check_arg(mask, "mask", {DType::u64}, {N, -1});
    const int64_t W = mask.size(1);
    SPECDEC_CHECK(W * 64 >= batch.max_qo_len, "E_ARG", "mask: ", W, " words per row (", W * 64,
                  " bits) cannot cover a sequence with ", batch.max_qo_len, " new tokens");
    SPECDEC_CHECK(batch.max_qo_len <= kMaxTreeTokens, "E_ARG", "mask: a sequence has ", batch.max_qo_len,
                  " new tokens, more than kMaxTreeTokens = ", kMaxTreeTokens, " under a mask");
  }
  check_same_device({&q, &kv_layer, &mask, &out}, "tree_attention");
  check_batch_vs_layer(batch, kv_layer, "tree_attention");
  if (N == 0) return;
  note_op();  // one launch on CUDA
  if (q.device() == Device::cpu) return cpu::tree_attention(q, kv_layer, batch, mask, sm_scale, out, window, softcap);
#ifdef SPECDEC_WITH_CUDA
  cuda::tree_attention(q, kv_layer, batch, mask, sm_scale, out, window, softcap);
#else
  no_cuda("tree_attention");
#endif
}

bool check_commit(const PagedBatch& batch, const std::vector<int32_t>& ip, const std::vector<int32_t>& nodes) {
  const int64_t B = batch.batch_size();
  check_indptr(ip, static_cast<size_t>(B + 1), "acc_indptr");
  SPECDEC_CHECK(ip.back() == static_cast<int32_t>(nodes.size()), "E_ARG", "acc_indptr: last entry ", ip.back(),
                " != acc_nodes length ", nodes.size());
  bool identity = true;
  for (int64_t b = 0; b < B; ++b) {
    const int32_t qo = batch.h_qo_indptr[b + 1] - batch.h_qo_indptr[b];
    SPECDEC_CHECK(ip[b + 1] - ip[b] <= qo, "E_ARG", "acc_indptr: sequence ", b, " accepts ", ip[b + 1] - ip[b],
                  " nodes but has only ", qo, " new tokens");
    for (int32_t j = ip[b]; j < ip[b + 1]; ++j) {
      SPECDEC_CHECK(nodes[j] >= 0 && nodes[j] < qo, "E_ARG", "acc_nodes[", j, "]: node ", nodes[j],
                    " out of range [0, ", qo, ") for sequence ", b);
      SPECDEC_CHECK(j == ip[b] || nodes[j] > nodes[j - 1], "E_ARG", "acc_nodes[", j,
                    "]: accepted nodes of a sequence must be strictly increasing (sequence ", b, ")");
      identity = identity && nodes[j] == j - ip[b];
    }
  }
  return identity;
}

void kv_commit(const std::vector<Tensor>& layers, const PagedBatch& batch, const Tensor& acc_indptr,
               const Tensor& acc_nodes, const std::vector<int32_t>* h_acc_indptr, const std::vector<int32_t>* h_acc_nodes) {
  check_layers(layers, "kv_commit");
  const int64_t B = batch.batch_size();
  check_arg(acc_indptr, "acc_indptr", {DType::i32}, {B + 1});
  check_arg_dim(acc_nodes, "acc_nodes", {DType::i32}, 1);
  check_same_device({&layers[0], &acc_indptr, &acc_nodes}, "kv_commit");
  check_batch_vs_layer(batch, layers[0], "kv_commit");
  SPECDEC_CHECK((h_acc_indptr == nullptr) == (h_acc_nodes == nullptr), "E_ARG",
                "kv_commit: give both host copies of the accepted indices or neither");
  std::vector<int32_t> read_ip, read_nodes;
  if (!h_acc_indptr) {
    read_ip = host_i32(acc_indptr);
    read_nodes = host_i32(acc_nodes);
    h_acc_indptr = &read_ip;
    h_acc_nodes = &read_nodes;
  }
  SPECDEC_CHECK(static_cast<int64_t>(h_acc_indptr->size()) == acc_indptr.numel() &&
                    static_cast<int64_t>(h_acc_nodes->size()) == acc_nodes.numel(),
                "E_ARG", "kv_commit: the host copies of the accepted indices differ in length from the tensors");
  if (check_commit(batch, *h_acc_indptr, *h_acc_nodes)) return;  // nothing moves
  note_op();  // one launch on CUDA
  if (layers[0].device() == Device::cpu) return cpu::kv_commit(layers, batch, acc_indptr, acc_nodes, Tensor());
#ifdef SPECDEC_WITH_CUDA
  cuda::kv_commit(layers, batch, acc_indptr, acc_nodes, Tensor());
#else
  no_cuda("kv_commit");
#endif
}

void kv_commit_verified(const std::vector<Tensor>& layers, const PagedBatch& batch, const VerifiedPaths& v) {
  check_layers(layers, "kv_commit");
  const int64_t B = batch.batch_size();
  check_arg(v.node_indptr, "paths.nodeIndptr", {DType::i32}, {B + 1});  // from 0 (a part's own offsets)
  check_arg_dim(v.accepted_nodes, "paths.acceptedNodes", {DType::i32}, 1);
  check_arg(v.accept_count, "paths.acceptCount", {DType::i32}, {B});
  check_same_device({&layers[0], &v.node_indptr, &v.accepted_nodes, &v.accept_count}, "kv_commit");
  check_batch_vs_layer(batch, layers[0], "kv_commit");
  const int64_t N = v.accepted_nodes.numel();
  bool same_nodes = static_cast<int64_t>(v.h_node_indptr.size()) == B + 1;
  for (int64_t b = 0; same_nodes && b <= B; ++b) same_nodes = v.h_node_indptr[b] == batch.h_qo_indptr[b] - batch.h_qo_indptr[0];
  SPECDEC_CHECK(same_nodes && static_cast<int64_t>(v.h_accepted_nodes.size()) == N && static_cast<int64_t>(v.h_accept_count.size()) == B,
                "E_ARG", "kv_commit: the verified trees are not this batch's new tokens (their node offsets differ)");
  // The compact form of the same paths, for the shared checks.
  std::vector<int32_t> ip(static_cast<size_t>(B) + 1, 0), nodes;
  for (int64_t b = 0; b < B; ++b) {
    const int32_t s = v.h_node_indptr[b], n = v.h_accept_count[b];
    SPECDEC_CHECK(n >= 0 && n <= v.h_node_indptr[b + 1] - s, "E_ARG", "paths.acceptCount[", b, "] = ", n,
                  ": more than the sequence's ", v.h_node_indptr[b + 1] - s, " nodes");
    nodes.insert(nodes.end(), v.h_accepted_nodes.begin() + s, v.h_accepted_nodes.begin() + s + n);
    ip[b + 1] = static_cast<int32_t>(nodes.size());
  }
  if (check_commit(batch, ip, nodes)) return;  // nothing moves
  note_op();  // one launch on CUDA
  if (layers[0].device() == Device::cpu) return cpu::kv_commit(layers, batch, v.node_indptr, v.accepted_nodes, v.accept_count);
#ifdef SPECDEC_WITH_CUDA
  cuda::kv_commit(layers, batch, v.node_indptr, v.accepted_nodes, v.accept_count);
#else
  no_cuda("kv_commit");
#endif
}

namespace {

// kv_copy_pages' checks from host copies and its launch: `sources` holds every page a copy may read
// (src_pages' own values, or the set they were chosen from on the device), named `src_name`.
void copy_pages_checked(const std::vector<Tensor>& layers, const Tensor& src_pages, const Tensor& dst_pages,
                        const std::vector<int32_t>& sources, const char* src_name, const std::vector<int32_t>& dst,
                        const char* op) {
  const int64_t P = layers[0].size(0);
  SPECDEC_CHECK(static_cast<int64_t>(dst.size()) == dst_pages.numel(), "E_ARG", op,
                ": the host copies differ in length from the tensors");
  SPECDEC_CHECK(dst.empty() || !sources.empty(), "E_ARG", op, ": no source pages to copy from");
  // A destination that is also a source (or written twice) would make the result order-dependent.
  std::vector<char> role(static_cast<size_t>(P), 0);
  for (size_t i = 0; i < sources.size(); ++i) {
    SPECDEC_CHECK(sources[i] >= 0 && sources[i] < P, "E_ARG", src_name, "[", i, "]: page id ", sources[i],
                  " out of range [0, ", P, ")");
    role[static_cast<size_t>(sources[i])] |= 1;
  }
  for (size_t i = 0; i < dst.size(); ++i) {
    SPECDEC_CHECK(dst[i] >= 0 && dst[i] < P, "E_ARG", "dst_pages[", i, "]: page id ", dst[i], " out of range [0, ", P, ")");
    SPECDEC_CHECK(!(role[static_cast<size_t>(dst[i])] & 3), "E_ARG", "dst_pages[", i, "]: page ", dst[i],
                  " is also a source or another destination");
    role[static_cast<size_t>(dst[i])] |= 2;
  }
  if (dst.empty()) return;
  note_op();  // one launch on CUDA
  if (layers[0].device() == Device::cpu) return cpu::kv_copy_pages(layers, src_pages, dst_pages);
#ifdef SPECDEC_WITH_CUDA
  cuda::kv_copy_pages(layers, src_pages, dst_pages);
#else
  no_cuda(op);
#endif
}

void check_copy_args(const std::vector<Tensor>& layers, const Tensor& src_pages, const Tensor& dst_pages, const char* op) {
  check_layers(layers, op);
  check_arg_dim(src_pages, "src_pages", {DType::i32}, 1);
  check_arg(dst_pages, "dst_pages", {DType::i32}, {src_pages.size(0)});
  check_same_device({&layers[0], &src_pages, &dst_pages}, op);
}

}  // namespace

void kv_copy_pages(const std::vector<Tensor>& layers, const Tensor& src_pages, const Tensor& dst_pages,
                   const std::vector<int32_t>* h_src, const std::vector<int32_t>* h_dst) {
  check_copy_args(layers, src_pages, dst_pages, "kv_copy_pages");
  SPECDEC_CHECK((h_src == nullptr) == (h_dst == nullptr), "E_ARG", "kv_copy_pages: give both host copies or neither");
  const std::vector<int32_t> src = h_src ? *h_src : host_i32(src_pages), dst = h_dst ? *h_dst : host_i32(dst_pages);
  SPECDEC_CHECK(static_cast<int64_t>(src.size()) == src_pages.numel(), "E_ARG",
                "kv_copy_pages: the host copies differ in length from the tensors");
  copy_pages_checked(layers, src_pages, dst_pages, src, "src_pages", dst, "kv_copy_pages");
}

void kv_copy_pages_among(const std::vector<Tensor>& layers, const Tensor& src_pages, const Tensor& dst_pages,
                         const std::vector<int32_t>& h_src_set, const std::vector<int32_t>& h_dst) {
  check_copy_args(layers, src_pages, dst_pages, "kv_copy_pages_among");
  copy_pages_checked(layers, src_pages, dst_pages, h_src_set, "src set", h_dst, "kv_copy_pages_among");
}

}  // namespace ops
}  // namespace specdec

// Paged KV cache bookkeeping: page tables, committed lengths, refcounted (copy-on-write) pages.
// All K/V data movement goes through the ops (kv_copy_pages, kv_commit) on the cache's device.
#include "kv_cache.h"

#include <algorithm>

#include "host_pack.h"

namespace specdec {

namespace {
int32_t pages_for(int64_t tokens, int page_size) { return static_cast<int32_t>((tokens + page_size - 1) / page_size); }
}  // namespace

KvCache::KvCache(const KvCacheConfig& c) : config_(c) {
  SPECDEC_CHECK(c.num_layers > 0, "E_ARG", "numLayers: must be positive, got ", c.num_layers);
  SPECDEC_CHECK(c.num_kv_heads > 0, "E_ARG", "numKvHeads: must be positive, got ", c.num_kv_heads);
  SPECDEC_CHECK(c.head_dim > 0, "E_ARG", "headDim: must be positive, got ", c.head_dim);
  SPECDEC_CHECK(c.page_size > 0, "E_ARG", "pageSize: must be positive, got ", c.page_size);
  SPECDEC_CHECK(c.num_pages > 0, "E_ARG", "numPages: must be positive, got ", c.num_pages);
  SPECDEC_CHECK(c.dtype == DType::f32 || c.dtype == DType::f16 || c.dtype == DType::bf16, "E_ARG",
                "dtype: a KV cache holds f32, f16 or bf16, got ", dtype_name(c.dtype));
  // One allocation for all layers; each layer is a view. Zeroed so that no slot ever holds NaN garbage.
  Tensor all = Tensor::zeros(c.dtype, {c.num_layers, c.num_pages, 2, c.page_size, c.num_kv_heads, c.head_dim}, c.device);
  for (int l = 0; l < c.num_layers; ++l)
    layers_.push_back(all.rows(l, l + 1).view({c.num_pages, 2, c.page_size, c.num_kv_heads, c.head_dim}));
  refcount_.assign(static_cast<size_t>(c.num_pages), 0);
  // Popped from the back: pages are handed out in ascending order at first.
  for (int p = c.num_pages - 1; p >= 0; --p) free_list_.push_back(p);
}

Tensor& KvCache::layer(int l) {
  SPECDEC_CHECK(l >= 0 && l < config_.num_layers, "E_ARG", "layer: index ", l, " out of range [0, ", config_.num_layers,
                ")");
  return layers_[static_cast<size_t>(l)];
}

KvCache::Seq& KvCache::seq_ref(int seq, const char* what) {
  SPECDEC_CHECK(seq >= 0 && static_cast<size_t>(seq) < seqs_.size() && seqs_[seq].alive, "E_ARG", what,
                ": no live sequence with id ", seq);
  return seqs_[static_cast<size_t>(seq)];
}
const KvCache::Seq& KvCache::seq_ref(int seq, const char* what) const {
  SPECDEC_CHECK(seq >= 0 && static_cast<size_t>(seq) < seqs_.size() && seqs_[seq].alive, "E_ARG", what,
                ": no live sequence with id ", seq);
  return seqs_[static_cast<size_t>(seq)];
}

bool KvCache::alive(int seq) const { return seq >= 0 && static_cast<size_t>(seq) < seqs_.size() && seqs_[seq].alive; }

int KvCache::add_sequence() {
  Seq s;
  s.alive = true;
  seqs_.push_back(s);
  return static_cast<int>(seqs_.size() - 1);
}

int KvCache::fork(int seq) {
  const Seq& parent = seq_ref(seq, "seq");
  Seq child;
  child.alive = true;
  child.length = parent.length;
  // Only the pages holding committed tokens are shared; the parent's speculative pages stay its own.
  child.pages.assign(parent.pages.begin(), parent.pages.begin() + pages_for(parent.length, config_.page_size));
  for (int32_t p : child.pages) refcount_[p]++;
  seqs_.push_back(std::move(child));
  return static_cast<int>(seqs_.size() - 1);
}

void KvCache::free(int seq) {
  Seq& s = seq_ref(seq, "seq");
  for (int32_t p : s.pages)
    if (--refcount_[p] == 0) free_list_.push_back(p);
  s.pages.clear();
  s.length = 0;
  s.alive = false;
}

void KvCache::truncate(int seq, int len) {
  Seq& s = seq_ref(seq, "seq");
  SPECDEC_CHECK(len >= 0 && len <= s.length, "E_ARG", "len: ", len, " is outside [0, ", s.length,
                "] (the committed length of sequence ", seq, ")");
  s.length = len;
  const size_t keep = static_cast<size_t>(pages_for(len, config_.page_size));
  for (size_t i = keep; i < s.pages.size(); ++i)
    if (--refcount_[s.pages[i]] == 0) free_list_.push_back(s.pages[i]);
  if (s.pages.size() > keep) s.pages.resize(keep);
}

int KvCache::length(int seq) const { return seq_ref(seq, "seq").length; }

int KvCache::free_pages() const { return static_cast<int>(free_list_.size()); }

size_t KvCache::bytes() const { return layers_.size() * layers_[0].nbytes(); }

PagedBatch KvCache::plan(const std::vector<int>& seqs, const std::vector<int>& new_tokens, HostPack* pack) {
  const HostBatch h = plan_host(seqs, new_tokens);
  return PagedBatch::make(h.qo_indptr, h.page_indptr, h.page_indices, h.prefix_len, config_.page_size, config_.num_pages,
                          config_.device, pack);
}

KvCache::HostBatch KvCache::plan_host(const std::vector<int>& seqs, const std::vector<int>& new_tokens, PageCopies* copies) {
  const int S = config_.page_size;
  SPECDEC_CHECK(seqs.size() == new_tokens.size(), "E_ARG", "newTokens: ", new_tokens.size(), " entries for ", seqs.size(),
                " sequences");
  // Dry run: count the pages needed (fresh ones + copies of shared pages that would be written).
  int64_t need_total = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Seq& s = seq_ref(seqs[i], "seqs");
    for (size_t j = 0; j < i; ++j)
      SPECDEC_CHECK(seqs[j] != seqs[i], "E_ARG", "seqs: sequence ", seqs[i], " appears twice in one batch");
    const int n = new_tokens[i];
    SPECDEC_CHECK(n >= 0, "E_ARG", "newTokens[", i, "]: must be >= 0, got ", n);
    const int64_t total_tokens = static_cast<int64_t>(s.length) + n;
    SPECDEC_CHECK(total_tokens <= INT32_MAX / 2, "E_ARG", "newTokens[", i, "]: ", total_tokens, " tokens is too long");
    const int32_t need = pages_for(total_tokens, S);
    int64_t extra = std::max<int64_t>(0, need - static_cast<int64_t>(s.pages.size()));
    if (n > 0)
      for (int32_t pi = s.length / S; pi < std::min<int32_t>(need, static_cast<int32_t>(s.pages.size())); ++pi)
        if (refcount_[s.pages[pi]] > 1) extra++;
    need_total += extra;
    if (need_total > static_cast<int64_t>(free_list_.size()))
      fail("E_KV_FULL", "KV cache full: sequence ", seqs[i], " needs ", extra, " more pages for ", s.length, " + ", n,
           " tokens (", need_total, " pages needed by this batch so far), but only ", free_list_.size(), " of ",
           config_.num_pages, " pages of ", S, " tokens are free");
  }
  // Commit the plan: un-share written pages (copy-on-write), then append fresh pages.
  std::vector<int32_t> copy_src, copy_dst;
  HostBatch h;
  std::vector<int32_t>&qo_indptr = h.qo_indptr, &page_indptr = h.page_indptr, &page_indices = h.page_indices,
  &prefix_len = h.prefix_len;
  qo_indptr.push_back(0);
  page_indptr.push_back(0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    Seq& s = seqs_[static_cast<size_t>(seqs[i])];
    const int n = new_tokens[i];
    const int32_t need = pages_for(static_cast<int64_t>(s.length) + n, S);
    if (n > 0)
      for (int32_t pi = s.length / S; pi < std::min<int32_t>(need, static_cast<int32_t>(s.pages.size())); ++pi) {
        int32_t old = s.pages[pi];
        if (refcount_[old] <= 1) continue;
        int32_t fresh = free_list_.back();
        free_list_.pop_back();
        refcount_[fresh] = 1;
        refcount_[old]--;
        copy_src.push_back(old);
        copy_dst.push_back(fresh);
        s.pages[pi] = fresh;
      }
    while (static_cast<int32_t>(s.pages.size()) < need) {
      int32_t fresh = free_list_.back();
      free_list_.pop_back();
      refcount_[fresh] = 1;
      s.pages.push_back(fresh);
    }
    qo_indptr.push_back(qo_indptr.back() + n);
    page_indices.insert(page_indices.end(), s.pages.begin(), s.pages.begin() + need);
    page_indptr.push_back(static_cast<int32_t>(page_indices.size()));
    prefix_len.push_back(s.length);
  }
  if (copies) {
    copies->src.insert(copies->src.end(), copy_src.begin(), copy_src.end());
    copies->dst.insert(copies->dst.end(), copy_dst.begin(), copy_dst.end());
  } else if (!copy_src.empty()) {
    HostPack pk;
    const int a = pk.add(DType::i32, copy_src), b = pk.add(DType::i32, copy_dst);
    pk.upload(config_.device);
    ops::kv_copy_pages(layers_, pk.view(a), pk.view(b), &copy_src, &copy_dst);
  }
  return h;
}

namespace {
// Whether a verification's ragged paths are the compact acc_indptr / acc_nodes of sequences
// v.seq0 .. v.seq0 + (its count) - 1.
bool same_paths(const VerifiedPaths& v, const std::vector<int32_t>& ip, const std::vector<int32_t>& nodes) {
  const size_t B = v.h_accept_count.size(), b0 = static_cast<size_t>(v.seq0);
  if (v.seq0 < 0 || v.h_node_indptr.size() != B + 1 || b0 + B + 1 > ip.size()) return false;
  for (size_t b = 0; b < B; ++b) {
    const int32_t s = v.h_node_indptr[b], n = v.h_accept_count[b], at = ip[b0 + b];
    if (n != ip[b0 + b + 1] - at || s < 0 || n < 0 || static_cast<size_t>(s) + n > v.h_accepted_nodes.size()) return false;
    for (int32_t j = 0; j < n; ++j)
      if (v.h_accepted_nodes[s + j] != nodes[at + j]) return false;
  }
  return true;
}
}  // namespace

void KvCache::commit(const PagedBatch& batch, const std::vector<int>& seqs, const std::vector<int32_t>& acc_indptr,
                     const std::vector<int32_t>& acc_nodes, const std::vector<const VerifiedPaths*>& verified) {
  const int S = config_.page_size;
  SPECDEC_CHECK(static_cast<int64_t>(seqs.size()) == batch.batch_size(), "E_ARG", "seqs: ", seqs.size(),
                " sequences for a batch of ", batch.batch_size());
  SPECDEC_CHECK(acc_indptr.size() == seqs.size() + 1, "E_ARG", "acc_indptr: expected ", seqs.size() + 1,
                " entries (batch size + 1), got ", acc_indptr.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Seq& s = seq_ref(seqs[i], "seqs");
    for (size_t j = 0; j < i; ++j)
      SPECDEC_CHECK(seqs[j] != seqs[i], "E_ARG", "seqs: sequence ", seqs[i], " appears twice in one batch");
    // The batch must be the last plan of these sequences: same committed length, same pages.
    SPECDEC_CHECK(batch.h_prefix_len[i] == s.length, "E_ARG", "batch: planned for sequence ", seqs[i], " at length ",
                  batch.h_prefix_len[i], " but it now has ", s.length, " tokens (re-plan after truncate/commit)");
    const int32_t b0 = batch.h_page_indptr[i], b1 = batch.h_page_indptr[i + 1];
    bool same = static_cast<size_t>(b1 - b0) <= s.pages.size();
    for (int32_t k = b0; same && k < b1; ++k) same = batch.h_page_indices[k] == s.pages[k - b0];
    SPECDEC_CHECK(same, "E_ARG", "batch: its pages for sequence ", seqs[i],
                  " are not the sequence's pages (the batch is not from this cache's last plan)");
  }
  // Checked on the host; the indices go to the device (one upload, no wait) only when K/V must move,
  // and not for the sequences whose verification left them there.
  if (!ops::check_commit(batch, acc_indptr, acc_nodes)) {
    const size_t B = seqs.size();
    std::vector<char> done(B, 0);
    for (const VerifiedPaths* v : verified) {
      if (!v || !same_paths(*v, acc_indptr, acc_nodes)) continue;
      const size_t s0 = static_cast<size_t>(v->seq0), s1 = s0 + v->h_accept_count.size();
      bool fresh = true;
      for (size_t b = s0; b < s1; ++b) fresh = fresh && !done[b];
      if (!fresh) continue;
      ops::kv_commit_verified(layers_, s0 == 0 && s1 == B ? batch : batch.sequences(s0, s1), *v);
      for (size_t b = s0; b < s1; ++b) done[b] = 1;
    }
    // The rest (a sequence covered above keeps nothing here: nothing of it moves twice).
    std::vector<int32_t> rest_ip(B + 1, 0), rest_nodes;
    for (size_t b = 0; b < B; ++b) {
      if (!done[b]) rest_nodes.insert(rest_nodes.end(), acc_nodes.begin() + acc_indptr[b], acc_nodes.begin() + acc_indptr[b + 1]);
      rest_ip[b + 1] = static_cast<int32_t>(rest_nodes.size());
    }
    if (!ops::check_commit(batch, rest_ip, rest_nodes)) {
      HostPack pk;
      const int a = pk.add(DType::i32, rest_ip), b = pk.add(DType::i32, rest_nodes);
      pk.upload(config_.device);
      ops::kv_commit(layers_, batch, pk.view(a), pk.view(b), &rest_ip, &rest_nodes);
    }
  }
  for (size_t i = 0; i < seqs.size(); ++i) {
    Seq& s = seqs_[static_cast<size_t>(seqs[i])];
    s.length += acc_indptr[i + 1] - acc_indptr[i];
    const size_t keep = static_cast<size_t>(pages_for(s.length, S));
    for (size_t k = keep; k < s.pages.size(); ++k)
      if (--refcount_[s.pages[k]] == 0) free_list_.push_back(s.pages[k]);
    if (s.pages.size() > keep) s.pages.resize(keep);
  }
}

}  // namespace specdec

// Paged KV cache: storage per layer [numPages, 2, pageSize, numKvHeads, headDim] and the host-side
// bookkeeping (page tables, committed lengths, refcounts for copy-on-write forks).
#pragma once
#include <cstdint>
#include <vector>

#include "ops_attention.h"

namespace specdec {

struct KvCacheConfig {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 16;
  int num_pages = 0;
  DType dtype = DType::f32;
  Device device = Device::cpu;
};

class KvCache {
 public:
  explicit KvCache(const KvCacheConfig& config);

  const KvCacheConfig& config() const { return config_; }
  const std::vector<Tensor>& layers() const { return layers_; }
  Tensor& layer(int l);

  int add_sequence();             // a new empty sequence; returns its id
  int fork(int seq);              // a new sequence sharing seq's committed pages (copy-on-write)
  void free(int seq);             // releases the sequence and its pages
  void truncate(int seq, int len);  // committed length back to len (<= current)
  int length(int seq) const;      // committed tokens
  bool alive(int seq) const;

  // Prepare one launch: room for new_tokens[i] tokens after the committed prefix of seqs[i]
  // (allocates pages, un-shares a shared page that would be written). Throws E_KV_FULL naming
  // the numbers when pages run out (nothing is changed then). Builds the PagedBatch.
  // With `pack`, the batch's arrays join the caller's segments in one upload (PagedBatch::make).
  PagedBatch plan(const std::vector<int>& seqs, const std::vector<int>& new_tokens, HostPack* pack = nullptr);

  // plan() without the upload: the batch's arrays on the host (pages allocated, shared pages
  // un-shared, E_KV_FULL as plan()). A chain plans all its tokens at once this way and gives each
  // step a prefix of these pages; pages past the committed length go back at commit()/truncate().
  struct HostBatch {
    std::vector<int32_t> qo_indptr, page_indptr, page_indices, prefix_len;
  };
  // With `copies`, the un-sharing page copies are not made but handed to the caller (src[i] ->
  // dst[i]), who makes them (or fills those pages otherwise) before the batch's first write.
  struct PageCopies {
    std::vector<int32_t> src, dst;
  };
  HostBatch plan_host(const std::vector<int>& seqs, const std::vector<int>& new_tokens, PageCopies* copies = nullptr);

  // Keep accepted new tokens of the last plan(): for seqs[i], acc_nodes[acc_indptr[i]..acc_indptr[i+1])
  // (indices among its new tokens, strictly increasing) move right after the committed prefix,
  // the committed length grows by their count, pages past the new length are released.
  // `verified`: verifications' paths on the device, each of the sequences from its seq0 on; where
  // they are exactly these (same layout, same nodes), K/V that must move move from there, and only
  // the other sequences' indices are uploaded (if any of theirs move).
  void commit(const PagedBatch& batch, const std::vector<int>& seqs, const std::vector<int32_t>& acc_indptr,
              const std::vector<int32_t>& acc_nodes, const std::vector<const VerifiedPaths*>& verified = {});

  int free_pages() const;
  int total_pages() const { return config_.num_pages; }
  size_t bytes() const;

 private:
  struct Seq {
    std::vector<int32_t> pages;
    int32_t length = 0;
    bool alive = false;
  };
  KvCacheConfig config_;
  std::vector<Tensor> layers_;
  std::vector<Seq> seqs_;
  std::vector<int32_t> free_list_;
  std::vector<int32_t> refcount_;
  Seq& seq_ref(int seq, const char* what);
  const Seq& seq_ref(int seq, const char* what) const;
};

}  // namespace specdec

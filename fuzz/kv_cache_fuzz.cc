// Fuzz target: the paged KV cache (cpp/core/kv_cache.cc) and the KV ops under it (kv_append,
// kv_commit, kv_copy_pages in cpp/core/ops_attention.cc and cpp/cpu/kv.cc), driven by a program
// decoded from the bytes: add / fork / free / truncate sequences, plan a batch (new tokens per
// sequence), write tagged K/V into the planned slots, commit accepted nodes (valid strictly
// increasing subsets or hostile lists: out of range, repeated, unsorted, wrong counts, a batch
// from an older plan). Every call either fails with E_ARG / E_KV_FULL or keeps the cache exact:
// a shadow copy of each sequence's committed tags must match what its pages hold (copy-on-write
// forks included), and when every sequence is freed all pages are free again.
#include <algorithm>
#include <map>

#include "../cpp/core/kv_cache.h"
#include "fuzz_common.h"

using namespace specdec;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_process();
  return 0;
}

namespace {

struct Planned {
  PagedBatch batch;
  std::vector<int> seqs;
  std::vector<std::vector<float>> tags;  // per sequence, the tag written at each new token
};

// The tag at logical slot `slot` of sequence b in `batch` (K, head 0, dim 0 of layer `l`).
FUZZ_NO_COVERAGE float slot_tag(const KvCache& kv, int l, const PagedBatch& batch, int64_t b, int64_t slot) {
  const KvCacheConfig& c = kv.config();
  const int32_t page = batch.h_page_indices[batch.h_page_indptr[b] + slot / c.page_size];
  const int64_t row = slot % c.page_size;
  const float* p = kv.layers()[l].ptr<float>();
  return p[(((static_cast<int64_t>(page) * 2 + 0) * c.page_size + row) * c.num_kv_heads) * c.head_dim];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader r(data, size);
  KvCacheConfig c;
  c.num_layers = static_cast<int>(r.range(1, 2));
  c.num_kv_heads = static_cast<int>(r.range(1, 2));
  c.head_dim = static_cast<int>(r.range(1, 4));
  c.page_size = static_cast<int>(r.range(1, 5));
  c.num_pages = static_cast<int>(r.range(1, 24));
  if (r.u8() >= 248) {  // a hostile configuration must be refused
    c.num_pages = fuzz::sat_sub(r.i32_hostile(4), 4);
    c.page_size = fuzz::sat_sub(r.i32_hostile(4), 4);
    c.dtype = static_cast<DType>(r.range(0, 7));
  }
  // A valid but huge cache is an allocation, not bad input: E_ARG when it fails, or out of memory
  // before that (the harness keeps to 64 MiB).
  if (c.num_pages > 0 && c.page_size > 0 &&
      8.0 * c.num_layers * c.num_pages * c.page_size * c.num_kv_heads * c.head_dim > double(1 << 26))
    return 0;
  std::unique_ptr<KvCache> kv;
  if (!fuzz::expect_ok_or({"E_ARG"}, [&] { kv.reset(new KvCache(c)); })) return 0;
  FUZZ_ASSERT(c.num_pages > 0 && c.page_size > 0 && (c.dtype == DType::f32 || c.dtype == DType::f16 || c.dtype == DType::bf16),
              "a bad config was accepted");
  if (c.dtype != DType::f32) return 0;  // the shadow model compares f32 tags

  std::map<int, std::vector<float>> shadow;  // live sequence -> committed tags
  Planned last;
  bool have_plan = false;
  float next_tag = 1.0f;
  auto pick_seq = [&]() -> int {
    if (shadow.empty() || r.u8() >= 232) return r.i32_hostile(8);
    auto it = shadow.begin();
    std::advance(it, r.range(0, static_cast<int64_t>(shadow.size()) - 1));
    return it->first;
  };

  for (int step = 0; step < 48 && !r.empty(); ++step) {
    switch (r.range(0, 6)) {
      case 0: shadow[kv->add_sequence()] = {}; break;
      case 1: {
        const int s = pick_seq();
        int child = -1;
        if (fuzz::expect_ok_or({"E_ARG"}, [&] { child = kv->fork(s); })) shadow[child] = shadow.at(s);
        break;
      }
      case 2: {
        const int s = pick_seq();
        if (fuzz::expect_ok_or({"E_ARG"}, [&] { kv->free(s); })) shadow.erase(s);
        break;
      }
      case 3: {
        const int s = pick_seq();
        const int len = r.i32_hostile(12);
        if (fuzz::expect_ok_or({"E_ARG"}, [&] { kv->truncate(s, len); })) shadow.at(s).resize(static_cast<size_t>(len));
        break;
      }
      case 4: {  // plan + write tagged K/V into the new slots
        Planned p;
        const int n = static_cast<int>(r.range(0, 3));
        std::vector<int> counts;
        for (int i = 0; i < n; ++i) {
          p.seqs.push_back(pick_seq());
          counts.push_back(r.u8() >= 240 ? r.i32_hostile(8) : static_cast<int>(r.range(0, 8)));
        }
        if (r.u8() >= 248) counts.push_back(1);  // one count too many
        if (!fuzz::expect_ok_or({"E_ARG", "E_KV_FULL"}, [&] { p.batch = kv->plan(p.seqs, counts); })) break;
        const int64_t N = p.batch.total_new();
        std::vector<float> k(static_cast<size_t>(N * c.num_kv_heads * c.head_dim)), v(k.size());
        for (size_t b = 0; b < p.seqs.size(); ++b) {
          FUZZ_ASSERT(p.batch.h_prefix_len[b] == static_cast<int32_t>(shadow.at(p.seqs[b]).size()), "plan: prefix ",
                      p.batch.h_prefix_len[b], " for a sequence of ", shadow.at(p.seqs[b]).size());
          // The committed prefix is intact (fork copies, truncation, earlier commits).
          for (size_t t = 0; t < shadow.at(p.seqs[b]).size(); ++t)
            for (int l = 0; l < c.num_layers; ++l)
              FUZZ_ASSERT(slot_tag(*kv, l, p.batch, b, t) == shadow.at(p.seqs[b])[t], "sequence ", p.seqs[b], " slot ", t,
                          " layer ", l, " holds ", slot_tag(*kv, l, p.batch, b, t), ", expected ", shadow.at(p.seqs[b])[t]);
          std::vector<float> tags;
          for (int32_t i = p.batch.h_qo_indptr[b]; i < p.batch.h_qo_indptr[b + 1]; ++i) {
            tags.push_back(next_tag);
            for (int64_t e = 0; e < c.num_kv_heads * c.head_dim; ++e) {
              k[i * c.num_kv_heads * c.head_dim + e] = next_tag;
              v[i * c.num_kv_heads * c.head_dim + e] = -next_tag;
            }
            next_tag += 1.0f;
          }
          p.tags.push_back(tags);
        }
        Tensor kt = Tensor::from_host(DType::f32, {N, c.num_kv_heads, c.head_dim}, k.data());
        Tensor vt = Tensor::from_host(DType::f32, {N, c.num_kv_heads, c.head_dim}, v.data());
        for (int l = 0; l < c.num_layers; ++l) ops::kv_append(kv->layer(l), kt, vt, p.batch);
        last = p;
        have_plan = true;
        break;
      }
      default: {  // commit accepted nodes of the last plan (valid subsets, or hostile lists)
        if (!have_plan) break;
        std::vector<int32_t> indptr{0}, nodes;
        for (size_t b = 0; b < last.seqs.size(); ++b) {
          const int n = last.batch.h_qo_indptr[b + 1] - last.batch.h_qo_indptr[b];
          for (int i = 0; i < n; ++i)
            if (r.flag()) nodes.push_back(i);
          if (r.u8() >= 244) nodes.push_back(r.i32_hostile(n));  // out of range or unsorted
          indptr.push_back(static_cast<int32_t>(nodes.size()));
        }
        if (r.u8() >= 248 && !indptr.empty()) indptr[r.range(0, static_cast<int64_t>(indptr.size()) - 1)] = r.i32_hostile(8);
        std::vector<int> seqs = last.seqs;
        if (r.u8() >= 248 && !seqs.empty()) seqs[r.range(0, static_cast<int64_t>(seqs.size()) - 1)] = pick_seq();
        if (!fuzz::expect_ok_or({"E_ARG"}, [&] { kv->commit(last.batch, seqs, indptr, nodes); })) break;
        for (size_t b = 0; b < seqs.size(); ++b)
          for (int32_t j = indptr[b]; j < indptr[b + 1]; ++j) shadow.at(seqs[b]).push_back(last.tags[b].at(nodes[j]));
        have_plan = false;  // a plan is committed once
        break;
      }
    }
    FUZZ_ASSERT(kv->free_pages() >= 0 && kv->free_pages() <= c.num_pages, "free pages ", kv->free_pages());
    for (const auto& s : shadow) FUZZ_ASSERT(kv->length(s.first) == static_cast<int>(s.second.size()), "length of ", s.first);
  }
  for (const auto& s : shadow) kv->free(s.first);
  FUZZ_ASSERT(kv->free_pages() == c.num_pages, "pages leaked: ", kv->free_pages(), " of ", c.num_pages, " free");
  return 0;
}

void fuzz::seed_inputs(std::vector<std::string>& out) {
  for (uint32_t seed = 1; seed <= 6; ++seed) out.push_back(fuzz::pattern_bytes(100 + 40 * seed, seed));
}

// Fuzz target: what an engine passes to the model runner (cpp/model/llama.cc): forward inputs
// (tokens, parents of token trees, packed masks, explicit positions), commit of accepted paths,
// greedy chain drafting, and sequence management (create / fork / free / truncate), on a tiny
// checkpoint with a small paged KV cache so that E_KV_FULL is reachable. Inputs are valid trees
// and masks with one field damaged now and then (a parent pointing forward, a mask row that does
// not see itself or sees past the end, a position outside the context, a token outside the
// vocabulary, a non-path commit). Every call must either fail with E_ARG / E_KV_FULL and leave
// the committed lengths as they were, or succeed with [N, V] finite logits and the lengths the
// contract says; freeing every sequence must free every page.
#include <cmath>
#include <map>

#include "fuzz_common.h"
#include "llama_fixture.h"

using namespace specdec;

namespace {
fuzz::MemFile* checkpoint = nullptr;
}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_process();
  checkpoint = new fuzz::MemFile(fuzz::encode_safetensors(fuzz::tiny_weights(fuzz::tiny_config())));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader r(data, size);
  const LlamaConfig cfg = fuzz::tiny_config();
  const int V = cfg.vocab_size;
  LlamaWeightSource src;
  src.file = checkpoint->path();
  LlamaLoadOptions opt;
  opt.page_size = static_cast<int>(r.range(1, 8));
  opt.num_pages = static_cast<int>(r.range(1, 16));
  std::unique_ptr<LlamaModel> m = LlamaModel::load(cfg, src, opt);

  std::map<int, int> len;  // live sequence -> committed length
  std::vector<int> last_seqs;
  std::vector<std::vector<int32_t>> last_parents;  // per sequence of the last forward ({} = chain)
  auto pick_seq = [&]() -> int {
    if (len.empty() || r.u8() >= 240) return r.i32_hostile(6);
    auto it = len.begin();
    std::advance(it, r.range(0, static_cast<int64_t>(len.size()) - 1));
    return it->first;
  };
  auto lengths_unchanged = [&](const char* what) {
    for (const auto& s : len) FUZZ_ASSERT(m->sequence_length(s.first) == s.second, what, " changed sequence ", s.first);
  };

  for (int step = 0; step < 24 && !r.empty(); ++step) {
    switch (r.range(0, 7)) {
      case 0: len[m->create_sequence()] = 0; break;
      case 1: {
        const int s = pick_seq();
        int child = -1;
        if (fuzz::expect_ok_or({"E_ARG"}, [&] { child = m->fork_sequence(s); })) len[child] = len.at(s);
        break;
      }
      case 2: {
        const int s = pick_seq();
        if (fuzz::expect_ok_or({"E_ARG"}, [&] { m->free_sequence(s); })) len.erase(s);
        break;
      }
      case 3: {
        const int s = pick_seq(), l = r.i32_hostile(12);
        if (fuzz::expect_ok_or({"E_ARG"}, [&] { m->truncate(s, l); })) len.at(s) = l;
        break;
      }
      case 4:
      case 5: {  // forward over chains, trees or masks
        const int B = static_cast<int>(r.range(1, 3));
        std::vector<LlamaSeqInput> in(B);
        std::vector<std::vector<int32_t>> parents(B);
        for (LlamaSeqInput& x : in) {
          x.seq = pick_seq();
          const int n = static_cast<int>(r.range(1, 10));
          for (int i = 0; i < n; ++i) x.tokens.push_back(static_cast<int32_t>(r.range(0, V - 1)));
          const int kind = static_cast<int>(r.range(0, 3));  // chain, tree, mask, explicit positions
          std::vector<int32_t> tree(n);
          for (int i = 0; i < n; ++i) tree[i] = i == 0 ? -1 : static_cast<int32_t>(r.range(-1, i - 1));
          if (kind == 1) x.parents = tree;
          if (kind == 2) {  // the tree's ancestor mask
            x.mask_words = (n + 63) / 64 + static_cast<int>(r.range(0, 1));
            x.mask.assign(static_cast<size_t>(n) * x.mask_words, 0);
            for (int i = 0; i < n; ++i)
              for (int a = i; a >= 0; a = tree[a]) x.mask[static_cast<size_t>(i) * x.mask_words + a / 64] |= uint64_t{1} << (a % 64);
          }
          if (kind == 3)
            for (int i = 0; i < n; ++i) x.positions.push_back(static_cast<int32_t>(r.range(0, cfg.max_positions - 1)));
          if (r.u8() >= 232) {  // one damaged field
            switch (r.range(0, 6)) {
              case 0: x.tokens[r.range(0, n - 1)] = r.i32_hostile(V); break;
              case 1: x.parents = tree; x.parents[r.range(0, n - 1)] = r.i32_hostile(n); break;
              case 2: if (!x.mask.empty()) x.mask[r.range(0, static_cast<int64_t>(x.mask.size()) - 1)] ^= uint64_t{1} << r.range(0, 63); break;
              case 3: x.positions.assign(n, 0); x.positions[r.range(0, n - 1)] = r.i32_hostile(cfg.max_positions); break;
              case 4: x.mask_words = r.i32_hostile(2); break;
              case 5: x.tokens.clear(); break;
              default: x.parents.push_back(0); break;
            }
          }
          parents[&x - in.data()] = x.mask.empty() && !x.parents.empty() ? x.parents : (x.mask.empty() ? std::vector<int32_t>{} : tree);
        }
        LlamaForwardResult res;
        if (!fuzz::expect_ok_or({"E_ARG", "E_KV_FULL"}, [&] { res = m->forward(in, r.flag()); })) {
          lengths_unchanged("a rejected forward");
          last_seqs.clear();
          break;
        }
        int64_t N = 0;
        for (const LlamaSeqInput& x : in) N += static_cast<int64_t>(x.tokens.size());
        FUZZ_ASSERT(res.logits.dim() == 2 && res.logits.size(0) == N && res.logits.size(1) == V, "logits ", res.logits.describe());
        for (int64_t i = 0; i < N * V; ++i) FUZZ_ASSERT(std::isfinite(res.logits.ptr<float>()[i]), "logit ", i, " is not finite");
        lengths_unchanged("a forward");
        last_seqs.clear();
        for (const LlamaSeqInput& x : in) last_seqs.push_back(x.seq);
        last_parents = parents;
        break;
      }
      case 6: {  // commit: a root path of each tree (or a chain prefix), sometimes damaged
        if (last_seqs.empty()) break;
        std::vector<int> seqs;
        std::vector<std::vector<int32_t>> acc;
        std::vector<int> grow;
        for (size_t b = 0; b < last_seqs.size(); ++b) {
          if (r.u8() >= 224) continue;  // this sequence keeps nothing
          std::vector<int32_t> path;
          const std::vector<int32_t>& p = last_parents[b];
          const int n = static_cast<int>(p.size());
          const int want = static_cast<int>(r.range(0, 10));
          if (p.empty()) {
            for (int i = 0; i < want; ++i) path.push_back(i);  // a chain prefix (may run past the end)
          } else {
            int32_t at = -1;
            for (int i = 0; i < n && static_cast<int>(path.size()) < want; ++i)
              if (p[i] == at) path.push_back(at = i);
          }
          if (r.u8() >= 240) path.push_back(r.i32_hostile(10));
          seqs.push_back(last_seqs[b]);
          grow.push_back(static_cast<int>(path.size()));
          acc.push_back(path);
        }
        if (fuzz::expect_ok_or({"E_ARG"}, [&] { m->commit(seqs, acc); })) {
          for (size_t i = 0; i < seqs.size(); ++i) len.at(seqs[i]) += grow[i];
        } else {
          lengths_unchanged("a rejected commit");
        }
        last_seqs.clear();
        break;
      }
      default: {  // greedy chain drafting
        const int B = static_cast<int>(r.range(1, 2));
        std::vector<LlamaSeqInput> in(B);
        std::vector<int> steps(B);
        for (int b = 0; b < B; ++b) {
          in[b].seq = pick_seq();
          const int n = static_cast<int>(r.range(1, 4));
          for (int i = 0; i < n; ++i) in[b].tokens.push_back(static_cast<int32_t>(r.range(0, V - 1)));
          steps[b] = r.u8() >= 240 ? r.i32_hostile(4) : static_cast<int>(r.range(1, 4));
        }
        std::vector<std::vector<int32_t>> picked;
        if (!fuzz::expect_ok_or({"E_ARG", "E_KV_FULL"}, [&] { picked = m->greedy_chain(in, steps); })) {
          lengths_unchanged("a rejected greedy_chain");
        } else {
          for (int b = 0; b < B; ++b) {
            FUZZ_ASSERT(static_cast<int>(picked[b].size()) == steps[b], "greedy_chain returned ", picked[b].size(), " of ", steps[b]);
            for (int32_t t : picked[b]) FUZZ_ASSERT(t >= 0 && t < V, "greedy_chain picked token ", t);
            len.at(in[b].seq) += static_cast<int>(in[b].tokens.size()) + steps[b] - 1;
          }
          lengths_unchanged("greedy_chain");
        }
        last_seqs.clear();
        break;
      }
    }
  }
  for (const auto& s : len) m->free_sequence(s.first);
  FUZZ_ASSERT(m->free_pages() == opt.num_pages, "pages leaked: ", m->free_pages(), " of ", opt.num_pages, " free");
  return 0;
}

void fuzz::seed_inputs(std::vector<std::string>& out) {
  for (uint32_t seed = 1; seed <= 6; ++seed) out.push_back(fuzz::pattern_bytes(200 + 50 * seed, seed));
}

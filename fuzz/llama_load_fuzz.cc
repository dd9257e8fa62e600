// Fuzz target: the native model loader (LlamaModel::load in cpp/model/llama.cc): the config as
// the N-API glue hands it over (sizes, GQA, head_dim, rope scaling, rms_norm_eps, biases, tied
// embeddings), single-file and sharded checkpoints (the weight map of
// model.safetensors.index.json: shard names, missing entries, tensors in the wrong shard, files
// that do not exist) and the weights themselves (missing, renamed, reshaped, non-float dtypes),
// plus the KV options. Each input starts from a valid tiny checkpoint and damages a few things.
// Either E_FORMAT / E_ARG / E_IO naming the problem, or a model whose rotary frequencies are
// finite and positive and whose forward gives finite logits.
#include <algorithm>
#include <cmath>

#include "fuzz_common.h"
#include "llama_fixture.h"

using namespace specdec;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_process();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader r(data, size);
  LlamaConfig truth = fuzz::tiny_config();
  truth.num_layers = static_cast<int>(r.range(1, 2));
  truth.qkv_bias = r.flag();
  truth.o_bias = r.flag();
  truth.tie_word_embeddings = r.flag();
  const char* dtypes[] = {"F32", "F16", "BF16"};
  std::vector<fuzz::StEntry> weights = fuzz::tiny_weights(truth, dtypes[r.range(0, 2)]);

  // The config handed to load(): the checkpoint's, with some fields damaged.
  LlamaConfig c = truth;
  const int rope = static_cast<int>(r.range(0, 3));
  const char* rope_types[] = {"", "linear", "llama3", "yarn"};
  c.rope_type = rope_types[rope];
  if (r.flag()) {
    c.rope_factor = r.flag() ? r.f32_hostile() * 8 : 2.0;
    c.rope_low_freq_factor = r.flag() ? r.f32_hostile() * 4 : 1.0;
    c.rope_high_freq_factor = r.flag() ? r.f32_hostile() * 8 : 4.0;
    c.rope_original_max_positions = r.flag() ? r.f32_hostile() * 64 : 32.0;
  }
  for (int k = static_cast<int>(r.range(0, 2)); k > 0; --k) {
    if (r.u8() < 160) continue;
    switch (r.range(0, 11)) {
      case 0: c.vocab_size = r.i32_hostile(20); break;
      case 1: c.hidden_size = r.i32_hostile(10); break;
      case 2: c.intermediate_size = r.i32_hostile(14); break;
      case 3: c.num_layers = r.i32_hostile(3); break;
      case 4: c.num_heads = r.i32_hostile(4); break;
      case 5: c.num_kv_heads = r.i32_hostile(3); break;
      case 6: c.head_dim = r.i32_hostile(6); break;
      case 7: c.max_positions = r.i32_hostile(64); break;
      case 8: c.rope_theta = r.flag() ? r.f32_hostile() : -c.rope_theta; break;
      case 9: c.rms_norm_eps = r.f32_hostile() - 0.5f; break;
      case 10: c.qkv_bias = !c.qkv_bias; break;
      default: c.tie_word_embeddings = !c.tie_word_embeddings; break;
    }
  }

  // Damaged weights: dropped, renamed, reshaped (bytes kept consistent), given another dtype.
  for (int k = static_cast<int>(r.range(0, 2)); k > 0; --k) {
    if (r.u8() < 128 || weights.empty()) continue;
    fuzz::StEntry& e = weights[r.range(0, static_cast<int64_t>(weights.size()) - 1)];
    const size_t esz = e.dtype == "F32" ? 4 : 2;
    switch (r.range(0, 4)) {
      case 0: weights.erase(weights.begin() + (&e - weights.data())); break;
      case 1: e.name += r.flag() ? "x" : ".weight"; break;
      case 2: {
        const size_t d = r.range(0, static_cast<int64_t>(e.shape.size()));
        if (d == e.shape.size()) e.shape.push_back(1);
        else e.shape[d] = r.range(0, 20);
        int64_t n = 1;
        for (int64_t x : e.shape) n *= x;
        e.bytes.resize(static_cast<size_t>(n) * esz, '\0');
        break;
      }
      case 3: e.dtype = esz == 4 ? (r.flag() ? "I32" : "U32") : "F16"; break;
      default: {  // F64: twice the bytes per element
        e.dtype = "F64";
        e.bytes.resize(e.bytes.size() / esz * 8, '\0');
      }
    }
  }

  // One file, or 1-3 shards with a weight map (then sometimes a damaged map).
  std::vector<std::unique_ptr<fuzz::MemFile>> files;
  LlamaWeightSource src;
  if (!r.flag()) {
    files.emplace_back(new fuzz::MemFile(fuzz::encode_safetensors(weights)));
    src.file = files[0]->path();
  } else {
    const int shards = static_cast<int>(r.range(1, 3));
    std::vector<std::vector<fuzz::StEntry>> parts(shards);
    std::vector<int> where;
    for (const fuzz::StEntry& e : weights) {
      where.push_back(static_cast<int>(r.range(0, shards - 1)));
      parts[where.back()].push_back(e);
    }
    for (const auto& p : parts) files.emplace_back(new fuzz::MemFile(fuzz::encode_safetensors(p)));
    src.dir = "/proc/self/fd";
    auto fd_name = [&](int s) { return files[s]->path().substr(src.dir.size() + 1); };
    for (size_t i = 0; i < weights.size(); ++i) src.weight_map[weights[i].name] = fd_name(where[i]);
    if (r.u8() >= 192 && !weights.empty()) {
      const std::string& name = weights[r.range(0, static_cast<int64_t>(weights.size()) - 1)].name;
      switch (r.range(0, 3)) {
        case 0: src.weight_map.erase(name); break;
        case 1: src.weight_map[name] = fd_name(static_cast<int>(r.range(0, shards - 1))); break;
        case 2: src.weight_map[name] = "999999"; break;  // no such file
        default: src.weight_map[name] = ""; break;
      }
    }
  }

  LlamaLoadOptions opt;
  opt.page_size = r.u8() >= 248 ? fuzz::sat_sub(r.i32_hostile(4), 1) : static_cast<int>(r.range(1, 16));
  opt.num_pages = r.u8() >= 248 ? fuzz::sat_sub(r.i32_hostile(4), 1) : static_cast<int>(r.range(1, 8));
  if (r.u8() >= 240) opt.kv_dtype = static_cast<DType>(r.range(0, 6));
  // Hostile values test the checks; a valid but huge cache would only test the allocator.
  opt.page_size = std::min(opt.page_size, 64);
  opt.num_pages = std::min(opt.num_pages, 64);

  std::unique_ptr<LlamaModel> m;
  if (!fuzz::expect_ok_or({"E_FORMAT", "E_ARG", "E_IO"}, [&] { m = LlamaModel::load(c, src, opt); })) return 0;
  for (float f : rope_inv_freq(c))
    FUZZ_ASSERT(std::isfinite(f) && f > 0, "loaded with a rotary frequency of ", f, " (rope_theta ", c.rope_theta,
                ", type '", c.rope_type, "', factor ", c.rope_factor, ")");
  LlamaSeqInput in;
  in.seq = m->create_sequence();
  in.tokens = {1, 2, 3};
  in.tokens.resize(static_cast<size_t>(std::min(3, c.max_positions)));  // within a (damaged) small context
  LlamaForwardResult res;
  if (!fuzz::expect_ok_or({"E_KV_FULL"}, [&] { res = m->forward({in}, false); })) return 0;
  for (int64_t i = 0; i < res.logits.numel(); ++i)
    FUZZ_ASSERT(std::isfinite(res.logits.ptr<float>()[i]), "logit ", i, " is ", res.logits.ptr<float>()[i],
                " (rms_norm_eps ", c.rms_norm_eps, ", rope_theta ", c.rope_theta, ")");
  return 0;
}

void fuzz::seed_inputs(std::vector<std::string>& out) {
  out.push_back(std::string(64, '\0'));  // the untouched single-file checkpoint
  for (uint32_t seed = 1; seed <= 7; ++seed) out.push_back(fuzz::pattern_bytes(96, seed));
}

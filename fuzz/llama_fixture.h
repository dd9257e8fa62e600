// A tiny Llama checkpoint for the model fuzz targets: the tensors LlamaModel::load expects for a
// config (names and shapes as in HF LlamaForCausalLM), filled with small deterministic values.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "../cpp/core/dtype.h"
#include "../cpp/model/llama.h"
#include "safetensors_writer.h"

namespace fuzz {

inline specdec::LlamaConfig tiny_config() {
  specdec::LlamaConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 16;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 1;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 4;
  c.max_positions = 48;
  return c;
}

// One entry per weight of `c` (lm_head only when the embeddings are not tied), dtype F32/F16/BF16.
inline std::vector<StEntry> tiny_weights(const specdec::LlamaConfig& c, const std::string& dtype = "F32") {
  const int64_t V = c.vocab_size, H = c.hidden_size, I = c.intermediate_size;
  const int64_t QD = int64_t{c.num_heads} * c.head_dim, KD = int64_t{c.num_kv_heads} * c.head_dim;
  std::vector<StEntry> out;
  int salt = 0;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, bool norm = false) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    ++salt;
    auto value = [&](int64_t i) { return norm ? 1.0f : 0.3f * std::sin(0.7f * static_cast<float>(i) + static_cast<float>(salt)); };
    std::string bytes;
    if (dtype == "F32") {
      bytes = f32_bytes(n, value);
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = dtype == "F16" ? specdec::f32_to_f16(value(i)) : specdec::f32_to_bf16(value(i));
        bytes += static_cast<char>(h & 0xff);
        bytes += static_cast<char>(h >> 8);
      }
    }
    out.push_back({name, dtype, std::move(shape), std::move(bytes)});
  };
  add("model.embed_tokens.weight", {V, H});
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {H}, true);
    add(p + "self_attn.q_proj.weight", {QD, H});
    add(p + "self_attn.k_proj.weight", {KD, H});
    add(p + "self_attn.v_proj.weight", {KD, H});
    if (c.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {QD});
      add(p + "self_attn.k_proj.bias", {KD});
      add(p + "self_attn.v_proj.bias", {KD});
    }
    add(p + "self_attn.o_proj.weight", {H, QD});
    if (c.o_bias) add(p + "self_attn.o_proj.bias", {H});
    add(p + "post_attention_layernorm.weight", {H}, true);
    add(p + "mlp.gate_proj.weight", {I, H});
    add(p + "mlp.up_proj.weight", {I, H});
    add(p + "mlp.down_proj.weight", {H, I});
  }
  add("model.norm.weight", {H}, true);
  if (!c.tie_word_embeddings) add("lm_head.weight", {V, H});
  return out;
}

}  // namespace fuzz

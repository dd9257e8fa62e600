// A minimal safetensors encoder for the fuzz targets' valid starting points (seed files, the
// checkpoints that fuzz/llama_load_fuzz.cc then damages). Writes exactly what the format says:
// 8-byte little-endian header length, the JSON header, the data section.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fuzz {

struct StEntry {
  std::string name;
  std::string dtype;  // "F32", "F16", ... (written as given, so invalid names can be written too)
  std::vector<int64_t> shape;
  std::string bytes;  // the data; its length decides data_offsets
};

inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

inline std::string encode_safetensors(const std::vector<StEntry>& entries, const std::string& metadata_json = "") {
  std::string header = "{", data;
  if (!metadata_json.empty()) header += "\"__metadata__\":" + metadata_json;
  for (const StEntry& e : entries) {
    if (header.size() > 1) header += ",";
    header += json_string(e.name) + ":{\"dtype\":" + json_string(e.dtype) + ",\"shape\":[";
    for (size_t k = 0; k < e.shape.size(); ++k) header += (k ? "," : "") + std::to_string(e.shape[k]);
    header += "],\"data_offsets\":[" + std::to_string(data.size()) + "," + std::to_string(data.size() + e.bytes.size()) + "]}";
    data += e.bytes;
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::string out(8, '\0');
  for (int k = 0; k < 8; ++k) out[k] = static_cast<char>((static_cast<uint64_t>(header.size()) >> (8 * k)) & 0xff);
  return out + header + data;
}

// n little-endian f32 values v(i).
template <class F>
std::string f32_bytes(int64_t n, F&& v) {
  std::string out(static_cast<size_t>(n) * 4, '\0');
  for (int64_t i = 0; i < n; ++i) {
    const float f = v(i);
    __builtin_memcpy(&out[static_cast<size_t>(i) * 4], &f, 4);
  }
  return out;
}

}  // namespace fuzz

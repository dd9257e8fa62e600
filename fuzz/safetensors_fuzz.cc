// Fuzz target: the safetensors reader (cpp/model/safetensors.cc) on whole files: the 8-byte header
// length, the header JSON (parser, escapes, nesting, duplicate keys), dtypes, shapes, data_offsets
// and overlaps. An input is the file itself. Accepted files must keep every promise of the reader:
// each tensor's bytes lie in the data section of the mapping, match its dtype and shape, and load
// to exactly those bytes; no two non-empty tensors share a byte.
// Under libFuzzer a custom mutator edits the header as text (numbers, dtype names, the length
// prefix, structure) so that most mutants still reach the checks past the JSON parser.
#include <algorithm>
#include <cstring>

#include "../cpp/model/safetensors.h"
#include "fuzz_common.h"
#include "safetensors_writer.h"

using specdec::SafetensorsFile;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_process();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::MemFile file(data, size);
  std::shared_ptr<SafetensorsFile> f;
  if (!fuzz::expect_ok_or({"E_FORMAT"}, [&] { f = SafetensorsFile::open(file.path()); })) return 0;

  FUZZ_ASSERT(f->mapping_size() == size, "mapped ", f->mapping_size(), " of ", size, " bytes");
  FUZZ_ASSERT(std::memcmp(f->mapping(), data, size) == 0, "the mapping differs from the file");
  uint64_t header_len = 0;
  for (int k = 7; k >= 0; --k) header_len = (header_len << 8) | data[k];
  const uint8_t* base = static_cast<const uint8_t*>(f->mapping());
  const uint8_t* section = base + 8 + header_len;
  std::vector<std::pair<size_t, size_t>> spans;
  for (const std::string& name : f->names()) {
    const SafetensorsFile::Raw r = f->raw(name);
    uint64_t numel = 1;
    for (int64_t d : r.shape) {
      FUZZ_ASSERT(d >= 0, "tensor ", name, " has a negative dimension");
      numel *= static_cast<uint64_t>(d);
    }
    // Loadable dtypes have a SafetensorInfo; the others (I64, BOOL, F8, ...) only bytes, and load() names them.
    const bool loadable = r.dtype == "F32" || r.dtype == "F16" || r.dtype == "BF16" || r.dtype == "I32" || r.dtype == "F64" ||
                          r.dtype == "U32" || r.dtype == "U64";
    if (loadable) {
      const specdec::SafetensorInfo& info = f->get(name);
      FUZZ_ASSERT(info.nbytes == numel * specdec::dtype_size(info.dtype) && info.nbytes == r.nbytes && info.data == r.data,
                  "tensor ", name, ": ", info.nbytes, " bytes for ", numel, " elements");
    } else {
      FUZZ_ASSERT(numel == 0 || r.nbytes % numel == 0, "raw tensor ", name, ": ", r.nbytes, " bytes for ", numel, " elements");
      fuzz::expect_ok_or({"E_UNSUPPORTED"}, [&] { f->load(name, specdec::Device::cpu); fuzz::finding("load() of a raw-only dtype returned"); });
    }
    const uint8_t* p = static_cast<const uint8_t*>(r.data);
    FUZZ_ASSERT(p >= section && p + r.nbytes <= base + size, "tensor ", name, " points outside the data section");
    if (r.nbytes) spans.emplace_back(p - base, p - base + r.nbytes);
    if (loadable && r.nbytes <= (1u << 20)) {
      specdec::Tensor t = f->load(name, specdec::Device::cpu);
      FUZZ_ASSERT(t.nbytes() == r.nbytes && std::memcmp(t.data(), p, r.nbytes) == 0, "tensor ", name,
                  " loads different bytes");
    }
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    FUZZ_ASSERT(spans[i].first >= spans[i - 1].second, "two tensors share bytes at offset ", spans[i].first);
  // A name that is not there is a coded error, not a crash.
  fuzz::expect_ok_or({"E_FORMAT"}, [&] { f->get("\x01 no such tensor"); fuzz::finding("get() of a missing name returned"); });
  return 0;
}

void fuzz::seed_inputs(std::vector<std::string>& out) {
  using fuzz::StEntry;
  auto ramp = [](int64_t n) { return fuzz::f32_bytes(n, [](int64_t i) { return 0.25f * static_cast<float>(i); }); };
  out.push_back(fuzz::encode_safetensors({{"w", "F32", {2, 3}, ramp(6)}}));
  out.push_back(fuzz::encode_safetensors({{"a", "F16", {4}, std::string(8, '\x3c')},
                                          {"b", "BF16", {2, 2}, std::string(8, '\x3f')},
                                          {"c", "I32", {3}, std::string(12, '\x01')}},
                                         "{\"format\":\"pt\"}"));
  out.push_back(fuzz::encode_safetensors({{"empty", "F32", {0, 5}, ""}, {"scalar", "F64", {}, std::string(8, '\0')},
                                          {"u", "U32", {1}, std::string(4, '\x7f')}, {"v", "U64", {1}, std::string(8, '\x02')}}));
  out.push_back(fuzz::encode_safetensors({{"esc\\\"aped \\u00e9\\ud83d\\ude00", "F32", {1}, ramp(1)}}));
  out.push_back(fuzz::encode_safetensors({{"i8", "I8", {2}, "ab"}}));  // valid format, unsupported dtype
}

#if defined(SPECDEC_LIBFUZZER)
// ---- Structure-aware mutation (libFuzzer only) -------------------------------------------------
extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace {

uint64_t rnd(unsigned& state) {
  state = state * 1103515245u + 12345u;
  return state >> 8;
}

// Edits one token of the header text; returns false when the header has no such token.
bool mutate_header(std::string& h, uint64_t data_size, unsigned& seed) {
  switch (rnd(seed) % 6) {
    case 0: {  // a number becomes an edge value
      std::vector<size_t> starts;
      for (size_t i = 0; i < h.size(); ++i)
        if ((h[i] >= '0' && h[i] <= '9') && (i == 0 || !(h[i - 1] >= '0' && h[i - 1] <= '9') )) starts.push_back(i);
      if (starts.empty()) return false;
      const size_t s = starts[rnd(seed) % starts.size()];
      size_t e = s;
      while (e < h.size() && h[e] >= '0' && h[e] <= '9') ++e;
      const std::string vals[] = {"0", "1", "-1", std::to_string(data_size), std::to_string(data_size + 1),
                                  std::to_string(data_size ? data_size - 1 : 0), "2147483648", "4294967296",
                                  "9223372036854775807", "9223372036854775808", "18446744073709551616", "4611686018427387904",
                                  std::to_string(rnd(seed) % 4096), "1e3", "2.5", "00"};
      h.replace(s, e - s, vals[rnd(seed) % (sizeof(vals) / sizeof(vals[0]))]);
      return true;
    }
    case 1: {  // a dtype name becomes another (valid, unsupported or unknown)
      const size_t at = h.find("\"dtype\":\"");
      if (at == std::string::npos) return false;
      size_t s = at + 9, pick = rnd(seed) % 3;
      for (size_t k = 0; k < pick; ++k) {
        const size_t nx = h.find("\"dtype\":\"", s);
        if (nx == std::string::npos) break;
        s = nx + 9;
      }
      const size_t e = h.find('"', s);
      if (e == std::string::npos) return false;
      const char* names[] = {"F32", "F16", "BF16", "I32", "F64", "U32", "U64", "I64", "BOOL", "F8_E4M3", "f32", "", "C64"};
      h.replace(s, e - s, names[rnd(seed) % (sizeof(names) / sizeof(names[0]))]);
      return true;
    }
    case 2: {  // structural text inserted at a random place
      const char* bits[] = {"{", "}", "[", "]", ",", ":", "\"", "\\", "\\u", "\\ud800", "[[[[[[[[[[[[[[[[", "null", "true",
                            "\"__metadata__\":{\"a\":1},", "\"shape\":[],", "\"data_offsets\":[0,0],", "-", "\x01", "\xff"};
      const size_t at = rnd(seed) % (h.size() + 1);
      h.insert(at, bits[rnd(seed) % (sizeof(bits) / sizeof(bits[0]))]);
      return true;
    }
    case 3: {  // duplicate a "name":{...} entry (duplicate key or overlapping tensor after a rename)
      const size_t s = h.find("\":{\"dtype\"");
      if (s == std::string::npos) return false;
      const size_t q = h.rfind('"', s - 1);
      const size_t e = h.find('}', s);
      if (q == std::string::npos || e == std::string::npos) return false;
      std::string entry = h.substr(q, e + 1 - q);
      if (rnd(seed) & 1) entry.insert(1, "x");
      const size_t close = h.rfind('}');
      h.insert(close, "," + entry);
      return true;
    }
    case 4: {  // a shape loses or gains a dimension
      const size_t s = h.find("\"shape\":[");
      if (s == std::string::npos) return false;
      h.insert(s + 9, (rnd(seed) & 1) ? "1," : "0,");
      return true;
    }
    default: {  // delete a span
      if (h.empty()) return false;
      const size_t s = rnd(seed) % h.size();
      h.erase(s, 1 + rnd(seed) % 8);
      return true;
    }
  }
}

}  // namespace

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  uint64_t hl = 0;
  if (size >= 8)
    for (int k = 7; k >= 0; --k) hl = (hl << 8) | data[k];
  if (size < 8 || hl > size - 8 || rnd(seed) % 5 == 0) return LLVMFuzzerMutate(data, size, max_size);
  std::string header(reinterpret_cast<const char*>(data) + 8, hl);
  std::string rest(reinterpret_cast<const char*>(data) + 8 + hl, size - 8 - hl);
  const unsigned what = rnd(seed) % 10;
  uint64_t new_len;
  if (what < 7) {
    if (!mutate_header(header, rest.size(), seed)) return LLVMFuzzerMutate(data, size, max_size);
    new_len = header.size();
  } else if (what == 7) {  // the data section shrinks or grows
    if (rnd(seed) & 1 && !rest.empty()) rest.resize(rnd(seed) % rest.size());
    else rest.append(1 + rnd(seed) % 16, '\0');
    new_len = header.size();
  } else {  // the length prefix lies
    const uint64_t lies[] = {hl + 1, hl ? hl - 1 : 0, size, size - 7, UINT64_MAX, (100ull << 20) + 1, 0};
    new_len = lies[rnd(seed) % (sizeof(lies) / sizeof(lies[0]))];
  }
  std::string out(8, '\0');
  for (int k = 0; k < 8; ++k) out[k] = static_cast<char>((new_len >> (8 * k)) & 0xff);
  out += header + rest;
  if (out.size() > max_size) return LLVMFuzzerMutate(data, size, max_size);
  std::memcpy(data, out.data(), out.size());
  return out.size();
}
#endif

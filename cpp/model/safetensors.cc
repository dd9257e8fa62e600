// Safetensors reader (cpp/model/safetensors.h). The file is untrusted: every field of the header
// is validated before any data pointer is handed out, and every failure is a coded error that
// names the file (and the tensor, where there is one).
#include "safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <utility>

namespace specdec {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // real headers are KBs; more is corruption
constexpr int kMaxDepth = 64;                       // JSON nesting limit (no stack exhaustion)

// ---- A small strict JSON parser: objects, arrays, strings (with escapes), integers. ----------

struct Json {
  enum Kind { kObject, kArray, kString, kInt } kind = kInt;
  int64_t i = 0;
  std::string s;
  std::vector<Json> items;                           // array elements
  std::vector<std::pair<std::string, Json>> fields;  // object members, in file order
};

class JsonParser {
 public:
  JsonParser(const char* p, size_t n, const std::string& path) : begin_(p), p_(p), end_(p + n), path_(path) {}

  Json parse_document() {
    skip_ws();
    Json v = parse_value(0);
    skip_ws();
    if (p_ != end_) error("unexpected trailing data");
    return v;
  }

 private:
  const char* begin_;
  const char* p_;
  const char* end_;
  const std::string& path_;

  [[noreturn]] void error(const std::string& what) {
    fail("E_FORMAT", path_, ": invalid safetensors header JSON at byte ", (p_ - begin_), ": ", what);
  }
  void skip_ws() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }
  void expect(char c) {
    if (p_ >= end_ || *p_ != c) error(std::string("expected '") + c + "'");
    ++p_;
  }

  Json parse_value(int depth) {
    if (depth > kMaxDepth) error("nesting too deep");
    if (p_ >= end_) error("unexpected end of header");
    char c = *p_;
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    if (c == '"') {
      Json v;
      v.kind = Json::kString;
      v.s = parse_string();
      return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_int();
    error(std::string("unsupported value starting with '") + c + "' (only objects, arrays, strings, integers)");
  }

  Json parse_object(int depth) {
    Json v;
    v.kind = Json::kObject;
    expect('{');
    skip_ws();
    if (p_ < end_ && *p_ == '}') { ++p_; return v; }
    std::set<std::string> seen;
    for (;;) {
      skip_ws();
      if (p_ >= end_ || *p_ != '"') error("expected a string key");
      std::string key = parse_string();
      if (!seen.insert(key).second) error("duplicate key '" + key + "'");
      skip_ws();
      expect(':');
      skip_ws();
      v.fields.emplace_back(std::move(key), parse_value(depth + 1));
      skip_ws();
      if (p_ < end_ && *p_ == ',') { ++p_; continue; }
      expect('}');
      return v;
    }
  }

  Json parse_array(int depth) {
    Json v;
    v.kind = Json::kArray;
    expect('[');
    skip_ws();
    if (p_ < end_ && *p_ == ']') { ++p_; return v; }
    for (;;) {
      skip_ws();
      v.items.push_back(parse_value(depth + 1));
      skip_ws();
      if (p_ < end_ && *p_ == ',') { ++p_; continue; }
      expect(']');
      return v;
    }
  }

  Json parse_int() {
    Json v;
    v.kind = Json::kInt;
    bool neg = false;
    if (*p_ == '-') { neg = true; ++p_; }
    if (p_ >= end_ || *p_ < '0' || *p_ > '9') error("expected a digit");
    if (*p_ == '0' && p_ + 1 < end_ && p_[1] >= '0' && p_[1] <= '9') error("leading zeros are not allowed");
    uint64_t mag = 0;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
      uint64_t d = static_cast<uint64_t>(*p_ - '0');
      if (mag > (static_cast<uint64_t>(INT64_MAX) - d) / 10) error("integer out of range");
      mag = mag * 10 + d;
      ++p_;
    }
    if (p_ < end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E')) error("only integers are allowed");
    v.i = neg ? -static_cast<int64_t>(mag) : static_cast<int64_t>(mag);
    return v;
  }

  static void put_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  uint32_t hex4() {
    if (end_ - p_ < 4) error("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = *p_++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<uint32_t>(c - 'A' + 10);
      else error("bad hex digit in \\u escape");
    }
    return v;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    for (;;) {
      if (p_ >= end_) error("unterminated string");
      unsigned char c = static_cast<unsigned char>(*p_++);
      if (c == '"') return out;
      if (c < 0x20) error("control character in string");
      if (c != '\\') { out += static_cast<char>(c); continue; }
      if (p_ >= end_) error("unterminated escape");
      char e = *p_++;
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xd800 && cp < 0xdc00) {  // high surrogate: a low one must follow
            if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') error("unpaired surrogate in \\u escape");
            p_ += 2;
            uint32_t lo = hex4();
            if (lo < 0xdc00 || lo >= 0xe000) error("unpaired surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
          } else if (cp >= 0xdc00 && cp < 0xe000) {
            error("unpaired surrogate in \\u escape");
          }
          put_utf8(out, cp);
          break;
        }
        default: error(std::string("bad escape '\\") + e + "'");
      }
    }
  }
};

// ---- Header interpretation --------------------------------------------------------------------

}  // namespace

const char* safetensors_dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "F32";
    case DType::f16: return "F16";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::u32: return "U32";
    case DType::u64: return "U64";
    case DType::f64: return "F64";
  }
  return "?";
}

namespace {

// Safetensors dtype names we load, and their core dtypes.
bool parse_dtype(const std::string& s, DType* out) {
  if (s == "F32") *out = DType::f32;
  else if (s == "F16") *out = DType::f16;
  else if (s == "BF16") *out = DType::bf16;
  else if (s == "I32") *out = DType::i32;
  else if (s == "F64") *out = DType::f64;
  else if (s == "U32") *out = DType::u32;
  else if (s == "U64") *out = DType::u64;
  else return false;
  return true;
}

// Valid safetensors dtypes that have no core dtype, with their element sizes in bytes: such
// tensors are validated and kept as raw bytes (SafetensorsFile::raw); loading one names its dtype.
// The sub-byte ones (F6_*, F4) are packed, so their byte counts are not checked element-wise: refused.
size_t raw_dtype_size(const std::string& s) {
  static const std::pair<const char*, size_t> sizes[] = {{"I64", 8}, {"I16", 2}, {"I8", 1}, {"U16", 2}, {"U8", 1}, {"BOOL", 1},
                                                         {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"F8_E8M0", 1}, {"C64", 8}};
  for (const auto& p : sizes)
    if (s == p.first) return p.second;
  return 0;
}

bool known_unsupported(const std::string& s) { return s == "F6_E2M3" || s == "F6_E3M2" || s == "F4"; }

const Json* field(const Json& obj, const char* key) {
  for (const auto& kv : obj.fields)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

struct Mapping {  // closes the fd / unmaps on early exit during open()
  int fd = -1;
  void* ptr = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (ptr) munmap(ptr, size);
    if (fd >= 0) close(fd);
  }
};

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  Mapping m;
  m.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (m.fd < 0) fail("E_IO", "cannot open safetensors file '", path, "': ", std::strerror(errno));
  struct stat st;
  if (fstat(m.fd, &st) != 0) fail("E_IO", "cannot stat '", path, "': ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail("E_IO", "'", path, "' is not a regular file");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8)
    fail("E_FORMAT", path, ": file is ", size, " bytes, shorter than the 8-byte header length of a safetensors file");

  m.size = static_cast<size_t>(size);
  m.ptr = mmap(nullptr, m.size, PROT_READ, MAP_PRIVATE, m.fd, 0);
  if (m.ptr == MAP_FAILED) {
    // Fallback for file systems without mmap: read into anonymous memory (munmap frees both).
    m.ptr = mmap(nullptr, m.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m.ptr == MAP_FAILED) { m.ptr = nullptr; fail("E_IO", "cannot map '", path, "': ", std::strerror(errno)); }
    size_t got = 0;
    while (got < m.size) {
      ssize_t r = ::pread(m.fd, static_cast<char*>(m.ptr) + got, m.size - got, static_cast<off_t>(got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) fail("E_IO", "cannot read '", path, "': ", r < 0 ? std::strerror(errno) : "unexpected end of file");
      got += static_cast<size_t>(r);
    }
  }
  const unsigned char* bytes = static_cast<const unsigned char*>(m.ptr);

  uint64_t header_len = 0;
  for (int k = 7; k >= 0; --k) header_len = (header_len << 8) | bytes[k];  // little-endian
  if (header_len > kMaxHeaderBytes)
    fail("E_FORMAT", path, ": header length ", header_len, " is absurd (more than ", kMaxHeaderBytes, " bytes)");
  if (header_len > size - 8)
    fail("E_FORMAT", path, ": header length ", header_len, " runs past the end of the file (", size, " bytes)");
  const uint64_t data_size = size - 8 - header_len;
  const unsigned char* data = bytes + 8 + header_len;

  Json root = JsonParser(reinterpret_cast<const char*>(bytes + 8), static_cast<size_t>(header_len), path).parse_document();
  if (root.kind != Json::kObject) fail("E_FORMAT", path, ": header JSON must be an object");

  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  struct Span { uint64_t begin, end; const std::string* name; };
  std::vector<Span> spans;

  for (const auto& kv : root.fields) {
    const std::string& name = kv.first;
    const Json& v = kv.second;
    if (name == "__metadata__") {
      if (v.kind != Json::kObject) fail("E_FORMAT", path, ": __metadata__ must be an object of strings");
      for (const auto& mkv : v.fields) {
        if (mkv.second.kind != Json::kString)
          fail("E_FORMAT", path, ": __metadata__ entry '", mkv.first, "' must be a string");
        f->metadata_[mkv.first] = mkv.second.s;
      }
      continue;
    }
    auto bad = [&](const std::string& what) -> void { fail("E_FORMAT", path, ": tensor '", name, "': ", what); };
    if (v.kind != Json::kObject) bad("entry must be an object");

    const Json* jd = field(v, "dtype");
    if (!jd || jd->kind != Json::kString) bad("missing or non-string \"dtype\"");
    SafetensorInfo info;
    info.name = name;
    const size_t raw_size = raw_dtype_size(jd->s);
    if (raw_size == 0 && !parse_dtype(jd->s, &info.dtype)) {
      if (known_unsupported(jd->s))
        bad("dtype " + jd->s + " is not supported (supported: F32, F16, BF16, I32, F64, U32, U64; I64, I16, I8, U16, U8, BOOL, F8, C64 as raw bytes)");
      bad("unknown dtype '" + jd->s + "'");
    }

    const Json* js = field(v, "shape");
    if (!js || js->kind != Json::kArray) bad("missing or non-array \"shape\"");
    uint64_t numel = 1;
    for (const Json& d : js->items) {
      if (d.kind != Json::kInt || d.i < 0) bad("shape entries must be non-negative integers");
      if (d.i != 0 && numel > (UINT64_MAX / 16) / static_cast<uint64_t>(d.i)) bad("shape is too large (element count overflows)");
      numel *= static_cast<uint64_t>(d.i);
      info.shape.push_back(d.i);
    }

    const Json* jo = field(v, "data_offsets");
    if (!jo || jo->kind != Json::kArray || jo->items.size() != 2 || jo->items[0].kind != Json::kInt ||
        jo->items[1].kind != Json::kInt)
      bad("\"data_offsets\" must be [begin, end] integers");
    int64_t b = jo->items[0].i, e = jo->items[1].i;
    if (b < 0 || e < b) bad(str("data_offsets [", b, ", ", e, "] are not 0 <= begin <= end"));
    const uint64_t nbytes = numel * (raw_size ? raw_size : dtype_size(info.dtype));
    if (static_cast<uint64_t>(e - b) != nbytes)
      bad(str("data_offsets [", b, ", ", e, "] hold ", e - b, " bytes but ", jd->s, " shape [",
              [&] { std::string s; for (size_t k = 0; k < info.shape.size(); ++k) s += (k ? ", " : "") + std::to_string(info.shape[k]); return s; }(),
              "] needs ", nbytes));
    if (static_cast<uint64_t>(e) > data_size)
      bad(str("data_offsets [", b, ", ", e, "] lie outside the data section (", data_size, " bytes)"));
    info.data = data + b;
    info.nbytes = static_cast<size_t>(nbytes);
    spans.push_back({static_cast<uint64_t>(b), static_cast<uint64_t>(e), &kv.first});
    // Names are unique: the parser rejects duplicate keys.
    if (raw_size) f->raw_.emplace(name, Raw{jd->s, info.shape, info.data, info.nbytes});
    else f->tensors_.emplace(name, std::move(info));
  }

  // No two tensors may share bytes (empty tensors occupy nothing).
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin || (a.begin == b.begin && a.end < b.end); });
  const Span* prev = nullptr;
  for (const Span& s : spans) {
    if (s.begin == s.end) continue;
    if (prev && s.begin < prev->end)
      fail("E_FORMAT", path, ": tensor '", *s.name, "' (bytes [", s.begin, ", ", s.end, ")) overlaps tensor '",
           *prev->name, "' (bytes [", prev->begin, ", ", prev->end, "))");
    prev = &s;
  }

  f->map_ = m.ptr;
  f->map_size_ = m.size;
  m.ptr = nullptr;  // owned by f now; the fd is not needed once mapped
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) munmap(map_, map_size_);
}

const SafetensorInfo& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    auto r = raw_.find(name);
    if (r != raw_.end())
      fail("E_UNSUPPORTED", path_, ": tensor '", name, "' has dtype ", r->second.dtype,
           ", which specdec does not load (supported: F32, F16, BF16, I32, F64, U32, U64)");
    fail("E_FORMAT", path_, ": no tensor named '", name, "'");
  }
  return it->second;
}

SafetensorsFile::Raw SafetensorsFile::raw(const std::string& name) const {
  auto r = raw_.find(name);
  if (r != raw_.end()) return r->second;
  const SafetensorInfo& t = get(name);
  return Raw{safetensors_dtype_name(t.dtype), t.shape, t.data, t.nbytes};
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size() + raw_.size());
  for (const auto& kv : tensors_) out.push_back(kv.first);
  for (const auto& kv : raw_) out.push_back(kv.first);
  std::sort(out.begin(), out.end());
  return out;
}

Tensor SafetensorsFile::load(const std::string& name, Device device) const {
  const SafetensorInfo& info = get(name);
  return Tensor::from_host(info.dtype, info.shape, info.data, device);
}

Tensor SafetensorsFile::view(const std::string& name) const {
  const SafetensorInfo& info = get(name);
  if (reinterpret_cast<uintptr_t>(info.data) % dtype_size(info.dtype) != 0) return load(name, Device::cpu);
  return Tensor::borrow_host(info.dtype, info.shape, info.data, shared_from_this());
}

}  // namespace specdec

// Fuzz target: repetition / presence / frequency penalties and the logit bias (ops::penalize,
// cpp/core/ops_sampling.cc, and the CPU kernel's walk of cpp/core/spec_math.h) on structured inputs
// decoded from the bytes: logits with NaN / Inf / negatives, histories (distinct ascending tokens
// with output counts) and row paths, direct or read through indices from a source tensor (a native
// chain's picks), penalty values, a logit bias (-inf, finite and hostile values; tokens past the
// vocabulary, out of order, repeated, a value too many), stop bans by path length (min_tokens; a
// list per history, hostile lengths and offsets), and now and then damage (unsorted or
// repeated tokens, counts out of range, offsets past the end that a later one undercuts, rows naming
// no sequence, path tokens or indices outside their range, non-finite penalties), and arrays staged
// on the device beside the host ones (a wrong length or dtype among them). The harness decides on
// its own whether the arguments are valid: the op must reject exactly the invalid ones with E_ARG,
// and on the valid ones give a plain reference's logits bit for bit (the bias added in f32, then
// sm::penalized_logit of each token with its history count plus its path count; a path token read
// outside the vocabulary is skipped; then the bans' -inf), changing nothing else.
#include <cmath>
#include <cstring>

#include "../cpp/core/ops_sampling.h"
#include "../cpp/core/spec_math.h"
#include "fuzz_common.h"

using namespace specdec;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_process();
  return 0;
}

namespace {

// The op's contract on the host arrays, checked here independently of ops_sampling.cc.
FUZZ_NO_COVERAGE bool valid(const PenaltyArgs& a, int64_t N, int64_t V, int64_t source_len) {
  if (!(std::isfinite(a.repetition) && a.repetition > 0.0f && std::isfinite(a.presence) && std::isfinite(a.frequency))) return false;
  if (static_cast<int64_t>(a.row_seq.size()) != N) return false;
  if (a.hist_indptr.empty() || a.hist_indptr[0] != 0) return false;
  const int64_t S = static_cast<int64_t>(a.hist_indptr.size()) - 1, H = static_cast<int64_t>(a.hist_tokens.size());
  if (static_cast<int64_t>(a.hist_counts.size()) != H || a.hist_indptr[S] != H) return false;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t b = a.hist_indptr[s], e = a.hist_indptr[s + 1];
    if (b > e || e > H) return false;
    for (int64_t j = b; j < e; ++j) {
      const int32_t t = a.hist_tokens[j];
      if (t < 0 || t >= V || (j > b && t <= a.hist_tokens[j - 1])) return false;
      if (a.hist_counts[j] < 0 || a.hist_counts[j] >= (1 << 28)) return false;
    }
  }
  for (int32_t s : a.row_seq)
    if (s < 0 || s >= S) return false;
  if (static_cast<int64_t>(a.path_indptr.size()) != N + 1 || a.path_indptr[0] != 0) return false;
  const int64_t P = static_cast<int64_t>(a.path_tokens.size());
  if (a.path_indptr[N] != P) return false;
  for (int64_t r = 0; r < N; ++r)
    if (a.path_indptr[r] > a.path_indptr[r + 1] || a.path_indptr[r + 1] - a.path_indptr[r] > (1 << 20)) return false;
  for (int32_t t : a.path_tokens)
    if (t < 0 || t >= (a.path_source ? source_len : V)) return false;
  if (a.bias_values.size() != a.bias_tokens.size()) return false;
  for (size_t i = 0; i < a.bias_tokens.size(); ++i) {
    const int32_t t = a.bias_tokens[i];
    const float b = a.bias_values[i];
    if (t < 0 || t >= V || (i > 0 && t <= a.bias_tokens[i - 1])) return false;
    if (!(std::isfinite(b) || b == -INFINITY)) return false;
  }
  if (a.ban_indptr.empty()) return a.ban_tokens.empty() && a.ban_before.empty();
  const int64_t B = static_cast<int64_t>(a.ban_tokens.size());
  if (static_cast<int64_t>(a.ban_indptr.size()) != S + 1 || a.ban_indptr[0] != 0 || a.ban_indptr[S] != B) return false;
  if (static_cast<int64_t>(a.ban_before.size()) != S) return false;
  for (int64_t s = 0; s < S; ++s) {
    const int64_t b = a.ban_indptr[s], e = a.ban_indptr[s + 1];
    if (b > e || e > B || a.ban_before[s] < 0) return false;
    for (int64_t j = b; j < e; ++j)
      if (a.ban_tokens[j] < 0 || a.ban_tokens[j] >= V || (j > b && a.ban_tokens[j] <= a.ban_tokens[j - 1])) return false;
  }
  return true;
}

FUZZ_NO_COVERAGE bool same_bits(float a, float b) {
  if (a != a && b != b) return true;  // NaNs: their payloads are not the contract
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader r(data, size);
  const int64_t N = r.range(0, 6), V = r.range(1, 40), S = r.range(1, 4);
  std::vector<float> logits(static_cast<size_t>(N * V));
  for (float& v : logits) v = r.flag() ? r.f32_hostile() : static_cast<float>(r.range(0, 255)) / 16.0f - 8.0f;
  PenaltyArgs a;
  a.repetition = r.flag() ? 1.0f + static_cast<float>(r.range(0, 40)) / 10.0f : r.f32_hostile();
  a.presence = r.flag() ? static_cast<float>(r.range(0, 40)) / 8.0f - 1.0f : r.f32_hostile();
  a.frequency = r.flag() ? static_cast<float>(r.range(0, 40)) / 8.0f - 1.0f : r.f32_hostile();
  // Histories: distinct ascending tokens (a random subset of the vocabulary), counts mostly small.
  a.hist_indptr.push_back(0);
  for (int64_t s = 0; s < S; ++s) {
    for (int32_t t = 0; t < V; ++t) {
      const uint8_t k = r.u8();
      if (k < 180) continue;
      a.hist_tokens.push_back(t);
      a.hist_counts.push_back(k < 200 ? 0 : static_cast<int32_t>(r.range(0, 5)));
    }
    a.hist_indptr.push_back(static_cast<int32_t>(a.hist_tokens.size()));
  }
  // Rows: a sequence each, and a path of up to 6 tokens (direct), or of indices into a source.
  const bool indexed = r.flag();
  std::vector<int32_t> source;
  if (indexed) {
    const int64_t n = r.range(1, 12);
    for (int64_t i = 0; i < n; ++i) source.push_back(r.u8() < 230 ? static_cast<int32_t>(r.range(0, V - 1)) : r.i32_hostile(static_cast<int32_t>(V)));
  }
  a.path_indptr.push_back(0);
  for (int64_t row = 0; row < N; ++row) {
    a.row_seq.push_back(static_cast<int32_t>(r.range(0, S - 1)));
    const int64_t len = r.range(0, 6);
    for (int64_t j = 0; j < len; ++j)
      a.path_tokens.push_back(static_cast<int32_t>(r.range(0, (indexed ? static_cast<int64_t>(source.size()) : V) - 1)));
    a.path_indptr.push_back(static_cast<int32_t>(a.path_tokens.size()));
  }

  // Now and then one argument is damaged; whether that makes it invalid is the harness's call.
  const uint8_t damage = r.u8();
  if (damage >= 176) {
    auto pick = [&](std::vector<int32_t>& v) -> int32_t* { return v.empty() ? nullptr : &v[static_cast<size_t>(r.range(0, static_cast<int64_t>(v.size()) - 1))]; };
    switch (damage % 10) {
      case 0: if (int32_t* p = pick(a.hist_tokens)) *p = r.i32_hostile(static_cast<int32_t>(V)); break;
      case 1: if (int32_t* p = pick(a.hist_counts)) *p = r.i32_hostile(1 << 29); break;
      case 2: if (int32_t* p = pick(a.hist_indptr)) *p = r.i32_hostile(static_cast<int32_t>(a.hist_tokens.size()) + 4); break;
      case 3: if (int32_t* p = pick(a.row_seq)) *p = r.i32_hostile(static_cast<int32_t>(S)); break;
      case 4: if (int32_t* p = pick(a.path_indptr)) *p = r.i32_hostile(static_cast<int32_t>(a.path_tokens.size()) + 4); break;
      case 5: if (int32_t* p = pick(a.path_tokens)) *p = r.i32_hostile(static_cast<int32_t>(V)); break;
      case 6: a.hist_indptr.insert(a.hist_indptr.begin() + 1, static_cast<int32_t>(a.hist_tokens.size()) + static_cast<int32_t>(r.range(1, 50))); break;
      case 7: a.row_seq.push_back(0); break;
      case 8: a.repetition = r.f32_hostile(); break;
      default: if (a.hist_tokens.size() >= 2) std::swap(a.hist_tokens.front(), a.hist_tokens.back()); break;
    }
  }

  Tensor t = Tensor::from_host(DType::f32, {N, V}, logits.data());
  Tensor src;
  if (indexed) {
    src = Tensor::from_host(DType::i32, {static_cast<int64_t>(source.size())}, source.data());
    a.path_source = &src;
  }
  const uint8_t stage = r.u8();
  // A logit bias (read after the rest: the bytes of earlier inputs keep their meaning): ascending
  // tokens by construction, some past the vocabulary, and now and then damaged.
  const uint8_t bias = r.u8();
  if (bias >= 112) {
    int32_t tok = -1;
    const int64_t n = r.range(1, 6);
    for (int64_t i = 0; i < n; ++i) {
      tok += static_cast<int32_t>(r.range(1, 8));
      a.bias_tokens.push_back(tok);
      a.bias_values.push_back(r.flag() ? static_cast<float>(r.range(0, 255)) / 8.0f - 16.0f : r.u8() < 128 ? -INFINITY : r.f32_hostile());
    }
    if (bias >= 240) {
      switch (bias % 4) {
        case 0: a.bias_tokens[static_cast<size_t>(r.range(0, n - 1))] = r.i32_hostile(static_cast<int32_t>(V)); break;
        case 1: std::swap(a.bias_tokens.front(), a.bias_tokens.back()); break;
        case 2: a.bias_values.push_back(1.0f); break;
        default: a.bias_tokens.back() = a.bias_tokens.front(); break;
      }
    }
  }
  // Stop bans (read after the bias, for the same reason): per history a short ascending list and a
  // number of positions; now and then damaged.
  const uint8_t ban = r.u8();
  if (ban >= 128) {
    a.ban_indptr.push_back(0);
    for (int64_t s = 0; s < S; ++s) {
      int32_t tok = -1;
      for (int64_t n = r.range(0, 3); n > 0; --n) a.ban_tokens.push_back(tok += static_cast<int32_t>(r.range(1, 12)));
      a.ban_indptr.push_back(static_cast<int32_t>(a.ban_tokens.size()));
      a.ban_before.push_back(static_cast<int32_t>(r.range(0, 4)));
    }
    if (ban >= 244) {
      switch (ban % 4) {
        case 0: a.ban_before[static_cast<size_t>(r.range(0, S - 1))] = r.i32_hostile(4); break;
        case 1: a.ban_indptr.pop_back(); break;
        case 2: a.ban_indptr[static_cast<size_t>(r.range(0, S))] = r.i32_hostile(static_cast<int32_t>(a.ban_tokens.size()) + 2); break;
        default: a.ban_before.push_back(0); break;
      }
    }
  }
  bool ok = valid(a, N, V, static_cast<int64_t>(source.size()));
  // Now and then the arrays come staged (a caller's own upload, as eagle_expand's): each must be
  // i32 (the bias values f32) and as long as its host array, or the call is E_ARG (the CPU reads
  // the host arrays).
  PenaltyArgs::Staged staged;
  if (stage >= 160) {
    auto dev = [](const std::vector<int32_t>& v) { return Tensor::from_host(DType::i32, {static_cast<int64_t>(v.size())}, v.data()); };
    staged = {dev(a.row_seq),     dev(a.hist_indptr), dev(a.hist_tokens),
              dev(a.hist_counts), dev(a.path_indptr), dev(a.path_tokens),
              dev(a.bias_tokens), Tensor::from_host(DType::f32, {static_cast<int64_t>(a.bias_values.size())}, a.bias_values.data()),
              dev(a.ban_indptr),  dev(a.ban_tokens),  dev(a.ban_before)};
    if (stage >= 232) {
      Tensor* fields[] = {&staged.row_seq,    &staged.hist_indptr, &staged.hist_tokens, &staged.hist_counts, &staged.path_indptr, &staged.path_tokens,
                          &staged.bias_tokens, &staged.bias_values, &staged.ban_indptr, &staged.ban_tokens, &staged.ban_before};
      Tensor& f = *fields[stage % 11];
      const bool f32 = &f == &staged.bias_values;
      f = (stage & 8) ? Tensor::zeros(f32 ? DType::f32 : DType::i32, {f.numel() + 1}) : Tensor::zeros(f32 ? DType::i32 : DType::f32, {f.numel()});
      ok = false;
    }
    a.staged = &staged;
  }
  const bool ran = fuzz::expect_ok_or({"E_ARG"}, [&] { ops::penalize(t, a); });
  FUZZ_ASSERT(ran == ok, ok ? "valid arguments were rejected" : "invalid arguments were accepted");
  if (!ran) return 0;

  // The reference: each token of the row's history or path, penalized once with its whole count.
  const float* got = t.ptr<float>();
  for (int64_t row = 0; row < N; ++row) {
    const int32_t s = a.row_seq[static_cast<size_t>(row)];
    for (int64_t v = 0; v < V; ++v) {
      int64_t c = 0;
      bool seen = false;
      for (int32_t j = a.hist_indptr[s]; j < a.hist_indptr[s + 1]; ++j)
        if (a.hist_tokens[j] == v) seen = true, c += a.hist_counts[j];
      for (int32_t j = a.path_indptr[row]; j < a.path_indptr[row + 1]; ++j) {
        const int32_t tok = indexed ? source[static_cast<size_t>(a.path_tokens[j])] : a.path_tokens[j];
        if (tok == v) seen = true, ++c;
      }
      float x = logits[static_cast<size_t>(row * V + v)];
      for (size_t i = 0; i < a.bias_tokens.size(); ++i)
        if (a.bias_tokens[i] == v) x = x + a.bias_values[i];
      float want = seen ? sm::penalized_logit(x, static_cast<int32_t>(c), a.repetition, a.presence, a.frequency) : x;
      if (!a.ban_indptr.empty() && a.path_indptr[row + 1] - a.path_indptr[row] < a.ban_before[s])
        for (int32_t j = a.ban_indptr[s]; j < a.ban_indptr[s + 1]; ++j)
          if (a.ban_tokens[j] == v) want = -INFINITY;
      FUZZ_ASSERT(same_bits(got[row * V + v], want), "row ", row, " token ", v, ": ", got[row * V + v], ", expected ", want);
    }
  }
  return 0;
}

void fuzz::seed_inputs(std::vector<std::string>& out) {
  // Deterministic byte patterns: rows, a vocabulary and histories; direct and indexed paths.
  for (int variant = 0; variant < 6; ++variant) {
    std::string s;
    s += static_cast<char>(1 + variant % 6);   // N
    s += static_cast<char>(8 + 5 * variant);   // V
    s += static_cast<char>(variant % 4);       // S - 1
    for (int i = 0; i < 600; ++i) s += static_cast<char>((i * 53 + variant * 29 + 7) & 0xff);
    out.push_back(s);
  }
}

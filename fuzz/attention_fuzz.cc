// Fuzz target: the argument validation of paged tree attention (PagedBatch::make and
// ops::tree_attention / ops::kv_append in cpp/core/ops_attention.cc) with the CPU kernel behind it.
// The bytes decode to a layer (heads, GQA groups, head dim, page size, pages), a ragged batch
// (prefix lengths, new tokens, page tables; pages may be shared between sequences), an optional
// packed mask with random bits, q and the cache contents, and sometimes one hostile argument
// (indptr entries, page ids, prefix lengths, page size, mask width, shapes, dtypes, sm_scale).
// Either E_ARG, or the output equals a float64 reference of the contract (prefix always
// visible; new token j visible to row i when mask bit (i, j) is set, else when j <= i; a row that
// sees nothing is zeros).
#include <algorithm>
#include <cmath>

#include "../cpp/core/ops_attention.h"
#include "fuzz_common.h"

using namespace specdec;

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init_process();
  return 0;
}

void check_reference(const PagedBatch& batch, const std::vector<float>& kvh, const std::vector<float>& qh,
                     const std::vector<uint64_t>& bits, bool masked, int W, int Hkv, int G, int D, int Sl, float sm_scale,
                     int window, float softcap, const Tensor& out);

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Reader r(data, size);
  // Mostly small batches of short trees; sometimes one sequence of up to 70 new tokens (two mask
  // words per row) on a narrow layer, so that each run stays cheap.
  const bool wide = r.u8() >= 240;
  const int Hkv = wide ? 1 : static_cast<int>(r.range(1, 2)), G = wide ? 1 : static_cast<int>(r.range(1, 3)), Hq = Hkv * G;
  const int D = static_cast<int>(r.range(1, wide ? 2 : 8)), S = static_cast<int>(r.range(1, 4)), P = static_cast<int>(r.range(1, wide ? 24 : 12));
  const int B = wide ? 1 : static_cast<int>(r.range(0, 3));
  std::vector<int32_t> qo_indptr{0}, page_indptr{0}, pages, prefix;
  for (int b = 0; b < B; ++b) {
    const int pre = static_cast<int>(r.range(0, 9)), qo = static_cast<int>(r.range(0, wide ? 70 : 12));
    const int need = (pre + qo + S - 1) / S + static_cast<int>(r.range(0, 1));  // sometimes a spare page
    for (int k = 0; k < need; ++k) pages.push_back(static_cast<int32_t>(r.range(0, P - 1)));
    prefix.push_back(pre);
    qo_indptr.push_back(qo_indptr.back() + qo);
    page_indptr.push_back(static_cast<int32_t>(pages.size()));
  }
  int page_size = S, num_pages = P;
  const uint8_t damage = r.u8();
  const bool damaged = damage >= 176;
  float sm_scale = 1.0f / std::sqrt(static_cast<float>(D));
  if (damaged) {
    auto hit = [&](std::vector<int32_t>& v, int32_t hi) {
      if (!v.empty()) v[r.range(0, static_cast<int64_t>(v.size()) - 1)] = r.i32_hostile(hi);
    };
    switch (damage % 8) {
      case 0: hit(qo_indptr, 8); break;
      case 1: hit(page_indptr, 8); break;
      case 2: hit(pages, P); break;
      case 3: hit(prefix, 8); break;
      case 4: page_size = fuzz::sat_sub(r.i32_hostile(4), 2); break;
      case 5: num_pages = fuzz::sat_sub(r.i32_hostile(P), 1); break;
      case 6: sm_scale = r.flag() ? __builtin_nanf("") : __builtin_inff(); break;
      default: prefix.push_back(0); break;
    }
  }
  PagedBatch batch;
  if (!fuzz::expect_ok_or({"E_ARG"}, [&] {
        batch = PagedBatch::make(qo_indptr, page_indptr, pages, prefix, page_size, num_pages, Device::cpu);
      }))
    return 0;
  if (page_size > 64) return 0;  // make() accepted a huge page size (no tokens to place); no layer that big here
  const int64_t N = batch.total_new();
  // A layer the batch fits: its page size, and enough pages for every id (page ids are < 24 here).
  const int Sl = page_size, Pl = std::max(1, std::min(num_pages, 32));
  std::vector<float> kvh(static_cast<size_t>(Pl) * 2 * Sl * Hkv * D), qh(static_cast<size_t>(N) * Hq * D);
  for (float& x : kvh) x = static_cast<float>(static_cast<int8_t>(r.u8())) / 32.0f;
  for (float& x : qh) x = static_cast<float>(static_cast<int8_t>(r.u8())) / 32.0f;
  Tensor kv = Tensor::from_host(DType::f32, {Pl, 2, Sl, Hkv, D}, kvh.data());
  Tensor q = Tensor::from_host(DType::f32, {N, Hq, D}, qh.data());
  Tensor out = Tensor::zeros(DType::f32, {N, Hq, D});
  Tensor mask;
  int W = 0;
  std::vector<uint64_t> bits;
  if (r.flag()) {
    W = (batch.max_qo_len + 63) / 64 + static_cast<int>(r.range(0, 1));
    if (r.u8() == 255) W = 0;  // too narrow unless no sequence has new tokens
    bits.resize(static_cast<size_t>(N) * W);
    for (uint64_t& w : bits) w = r.u64();
    mask = Tensor::from_host(DType::u64, {N, W}, bits.data());
  }
  const uint8_t shape_damage = r.u8();
  if (shape_damage >= 246) {
    switch (shape_damage % 4) {
      case 0: q = Tensor::zeros(DType::f32, {N, Hq + 1, D}); break;
      case 1: out = Tensor::zeros(DType::f16, {N, Hq, D}); break;
      case 2: mask = Tensor::zeros(DType::u32, {N, 1}); break;
      default: kv = Tensor::zeros(DType::f32, {Pl, 3, Sl, Hkv, D}); break;
    }
  }
  // A sliding window now and then (read last, so older inputs keep their meaning): 1 .. 16, or -1.
  const uint8_t wb = r.u8();
  const int window = wb < 192 ? 0 : wb == 255 ? -1 : 1 + wb % 16;
  // Soft-capping now and then: 0.25 .. 4, or a bad value (negative, NaN).
  const uint8_t cb = r.u8();
  const float softcap = cb < 192 ? 0.f : cb == 255 ? -1.f : cb == 254 ? NAN : 0.25f * static_cast<float>(1 + cb % 16);
  if (!fuzz::expect_ok_or({"E_ARG"}, [&] { ops::tree_attention(q, kv, batch, mask, sm_scale, out, window, softcap); })) return 0;
  FUZZ_ASSERT(shape_damage < 246, "shape damage ", shape_damage % 4, " was accepted");
  FUZZ_ASSERT(std::isfinite(sm_scale), "sm_scale ", sm_scale, " was accepted");
  FUZZ_ASSERT(window >= 0, "window ", window, " was accepted");
  FUZZ_ASSERT(softcap >= 0, "softcap ", softcap, " was accepted");

  check_reference(batch, kvh, qh, bits, mask.defined(), W, Hkv, G, D, Sl, sm_scale, window, softcap, out);
  return 0;
}

// Index into the layer of (sequence b, logical slot t, K or V, KV head h, dim d).
FUZZ_NO_COVERAGE inline size_t slot_index(const PagedBatch& batch, int64_t b, int64_t t, int kvsel, int h, int d, int Sl,
                                          int Hkv, int D) {
  const int32_t page = batch.h_page_indices[batch.h_page_indptr[b] + t / Sl];
  return (((static_cast<size_t>(page) * 2 + kvsel) * Sl + t % Sl) * Hkv + h) * D + d;
}

// The output against a float64 evaluation of the contract.
FUZZ_NO_COVERAGE void check_reference(const PagedBatch& batch, const std::vector<float>& kvh, const std::vector<float>& qh,
                                      const std::vector<uint64_t>& bits, bool masked, int W, int Hkv, int G, int D, int Sl,
                                      float sm_scale, int window, float softcap, const Tensor& out) {
  const int Hq = Hkv * G;
  for (int64_t b = 0; b < batch.batch_size(); ++b) {
    const int64_t q0 = batch.h_qo_indptr[b], qo = batch.h_qo_indptr[b + 1] - q0, pre = batch.h_prefix_len[b];
    for (int64_t i = 0; i < qo; ++i)
      for (int h = 0; h < Hq; ++h) {
        const int hk = h / G;
        std::vector<int64_t> seen;
        for (int64_t t = 0; t < pre; ++t) seen.push_back(t);
        for (int64_t j = 0; j < qo; ++j)
          if (masked ? (bits[static_cast<size_t>(q0 + i) * W + j / 64] >> (j % 64)) & 1u : j <= i) seen.push_back(pre + j);
        // A window keeps the last `window` of them.
        if (window > 0 && seen.size() > static_cast<size_t>(window)) seen.erase(seen.begin(), seen.end() - window);
        std::vector<double> s(seen.size());
        double m = -INFINITY, z = 0;
        for (size_t k = 0; k < seen.size(); ++k) {
          double dot = 0;
          for (int d = 0; d < D; ++d) dot += qh[((q0 + i) * Hq + h) * D + d] * kvh[slot_index(batch, b, seen[k], 0, hk, d, Sl, Hkv, D)];
          s[k] = dot * sm_scale;
          if (softcap > 0) s[k] = softcap * std::tanh(s[k] / softcap);
          m = std::max(m, s[k]);
        }
        for (double& x : s) z += (x = std::exp(x - m));
        for (int d = 0; d < D; ++d) {
          double want = 0;
          for (size_t k = 0; k < seen.size(); ++k) want += s[k] / z * kvh[slot_index(batch, b, seen[k], 1, hk, d, Sl, Hkv, D)];
          const double got = out.ptr<float>()[((q0 + i) * Hq + h) * D + d];
          FUZZ_ASSERT(std::fabs(got - want) <= 1e-4 * (1 + std::fabs(want)), "sequence ", b, " token ", i, " head ", h,
                      " dim ", d, ": got ", got, ", reference ", want);
        }
      }
  }
}

void fuzz::seed_inputs(std::vector<std::string>& out) {
  for (int variant = 0; variant < 6; ++variant) {
    std::string s;
    s += static_cast<char>(variant % 2);      // Hkv
    s += static_cast<char>(variant % 3);      // G
    s += static_cast<char>(3 + variant);      // D
    s += static_cast<char>(variant % 4);      // S
    s += static_cast<char>(8 + variant);      // P
    s += static_cast<char>(1 + variant % 3);  // B
    for (int i = 0; i < 600; ++i) s += static_cast<char>((i * 53 + variant * 29 + 128) & 0xff);
    out.push_back(s);
  }
}

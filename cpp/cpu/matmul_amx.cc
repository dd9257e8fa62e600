// The AMX-BF16 matmul (see matmul_amx.h for the order it computes): the tile program, written once
// over an engine, the hardware engine (tile intrinsics), the emulated engine (the SDM's pseudo-code
// in C++), the packing of x, and the run-time choice with its self-test.
#include "matmul_amx.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "../core/dtype.h"
#include "../core/error.h"
#include "simd.h"
#include "thread_pool.h"

#if defined(SPECDEC_CPU_X86_SIMD) && defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define SPECDEC_AMX_HW 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
// The tile program's functions carry the AMX target for both engines: the emulated one uses no AMX
// instruction (only the intrinsics emit them), and the target enables no vector extension, so its
// code runs on any x86-64.
#define SPECDEC_AMX __attribute__((target("amx-tile,amx-bf16")))
#else
#define SPECDEC_AMX
#endif

namespace specdec {
namespace cpu {
namespace amx {

namespace {

// LDTILECFG's 64-byte operand, palette 1.
struct TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads 64 bytes");

// Tiles 0-3 accumulate C (rows: 16 weight rows; columns: colsb / 4 piece columns), 4-5 hold two
// weight tiles (16 rows x 32 bf16), 6-7 two tiles of x's pieces (16 rows of 32-value chunks' pairs x
// colsb / 4 columns). C tile 2i + j = A tile i times B tile j.
TileConfig make_config(int64_t colsb) {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = static_cast<uint16_t>(t == 4 || t == 5 ? 64 : colsb);
  }
  return c;
}

// ---- the emulated engine: the Intel SDM's TDPBF16PS, value by value ----------------------------
struct Emu {
  struct State {
    TileConfig cfg;
    bool configured = false;
    alignas(64) uint8_t t[8][16 * 64];
  };
  static State& st() {
    thread_local State s;
    return s;
  }
  static void require(bool ok, const char* what) {
    if (!ok) fail("E_INTERNAL", "AMX emulation: ", what);
  }
  static void config(const TileConfig* c) {
    require(c->palette == 1, "palette 1 only");
    for (int i = 0; i < 8; ++i) require(c->rows[i] <= 16 && c->colsb[i] <= 64 && c->colsb[i] % 4 == 0, "tile shape out of range");
    State& s = st();
    s.cfg = *c;
    s.configured = true;
    std::memset(s.t, 0, sizeof s.t);
  }
  static void release() { st().configured = false; }
  static void zero(int i) {
    require(st().configured, "tile use before LDTILECFG");
    std::memset(st().t[i], 0, sizeof st().t[i]);
  }
  static void load(int i, const void* p, size_t stride) {
    State& s = st();
    require(s.configured, "tile load before LDTILECFG");
    std::memset(s.t[i], 0, sizeof s.t[i]);
    for (int r = 0; r < s.cfg.rows[i]; ++r)
      std::memcpy(s.t[i] + r * 64, static_cast<const uint8_t*>(p) + r * stride, s.cfg.colsb[i]);
  }
  static void store(int i, void* p, size_t stride) {
    State& s = st();
    require(s.configured, "tile store before LDTILECFG");
    for (int r = 0; r < s.cfg.rows[i]; ++r) std::memcpy(static_cast<uint8_t*>(p) + r * stride, s.t[i] + r * 64, s.cfg.colsb[i]);
  }
  static float daz_bf16(const uint8_t* row, int e) {
    uint16_t h;
    std::memcpy(&h, row + 2 * e, 2);
    if ((h & 0x7f80u) == 0) h &= 0x8000u;  // input denormals are zero
    return bf16_to_f32(h);
  }
  static float ftz(float v) { return std::fpclassify(v) == FP_SUBNORMAL ? std::copysign(0.0f, v) : v; }
  static void dp(int ci, int ai, int bi) {
    State& s = st();
    const TileConfig& g = s.cfg;
    require(s.configured, "TDPBF16PS before LDTILECFG");
    // The shape checks for which the instruction raises #UD.
    require(g.colsb[ai] / 4 == g.rows[bi] && g.colsb[ci] == g.colsb[bi] && g.rows[ci] == g.rows[ai], "TDPBF16PS tile shapes disagree");
    const int kpairs = g.colsb[ai] / 4, ncols = g.colsb[ci] / 4;
    for (int m = 0; m < g.rows[ci]; ++m) {
      float temp[32] = {};
      const uint8_t* arow = s.t[ai] + m * 64;
      for (int k = 0; k < kpairs; ++k) {
        const uint8_t* brow = s.t[bi] + k * 64;
        for (int n = 0; n < ncols; ++n)
          for (int e = 0; e < 2; ++e)
            temp[2 * n + e] = ftz(std::fma(daz_bf16(arow, 2 * k + e), daz_bf16(brow, 2 * n + e), temp[2 * n + e]));
      }
      float* crow = reinterpret_cast<float*>(s.t[ci] + m * 64);
      for (int n = 0; n < ncols; ++n) {
        float c = crow[n];
        if (std::fpclassify(c) == FP_SUBNORMAL) c = std::copysign(0.0f, c);
        crow[n] = ftz(c + ftz(temp[2 * n] + temp[2 * n + 1]));
      }
    }
  }
  static void zero_c(int i) { zero(i); }
  static void load_a(int i, const void* p, size_t stride) { load(4 + i, p, stride); }
  static void load_b(int j, const void* p, size_t stride) { load(6 + j, p, stride); }
  static void mul(int i, int j) { dp(2 * i + j, 4 + i, 6 + j); }
  static void store_c(int i, void* p, size_t stride) { store(i, p, stride); }
};

#ifdef SPECDEC_AMX_HW
// ---- the hardware engine: tile numbers are immediates, hence the switches ---------------------
struct Hw {
  SPECDEC_AMX static inline void config(const TileConfig* c) { _tile_loadconfig(c); }
  SPECDEC_AMX static inline void release() { _tile_release(); }
  SPECDEC_AMX static inline void zero_c(int i) {
    switch (i) {
      case 0: _tile_zero(0); break;
      case 1: _tile_zero(1); break;
      case 2: _tile_zero(2); break;
      default: _tile_zero(3); break;
    }
  }
  SPECDEC_AMX static inline void load_a(int i, const void* p, size_t stride) {
    if (i == 0) _tile_loadd(4, p, stride);
    else _tile_loadd(5, p, stride);
  }
  SPECDEC_AMX static inline void load_b(int j, const void* p, size_t stride) {
    if (j == 0) _tile_loadd(6, p, stride);
    else _tile_loadd(7, p, stride);
  }
  SPECDEC_AMX static inline void mul(int i, int j) {
    if (i == 0) {
      if (j == 0) _tile_dpbf16ps(0, 4, 6);
      else _tile_dpbf16ps(1, 4, 7);
    } else {
      if (j == 0) _tile_dpbf16ps(2, 5, 6);
      else _tile_dpbf16ps(3, 5, 7);
    }
  }
  SPECDEC_AMX static inline void store_c(int i, void* p, size_t stride) {
    switch (i) {
      case 0: _tile_stored(0, p, stride); break;
      case 1: _tile_stored(1, p, stride); break;
      case 2: _tile_stored(2, p, stride); break;
      default: _tile_stored(3, p, stride); break;
    }
  }
};
#endif

// Grown once per thread, never freed (no allocation per call in the steady state).
template <typename T, int kTag>
T* thread_buffer(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// Weight rows read this many 32-value chunks ahead are prefetched (to L2) on the first pass over a
// pair of weight tiles: the tile loads read 16 or 32 rows at once, more streams than the hardware
// prefetchers follow.
constexpr int64_t kPrefetchChunks = 8;

// The tile program over weight rows [m0, m1): two weight tiles (32 rows) at a time against two
// column tiles of x's pieces at a time; each C tile's sums go to S (per weight row, per piece
// column) and the outputs are formed from S (steps 2 and 3 of the order).
template <class E>
SPECDEC_AMX void tile_program(const PackedX& px, const uint16_t* w, int64_t M, int64_t m0, int64_t m1, float* out,
                              int64_t ldo) {
  const int64_t K = px.K, N = px.N, KC = K / 32, P = 3 * N, CT = px.col_tiles, cb = px.colsb;
  const size_t tile_bytes = static_cast<size_t>(16 * cb), ldw = static_cast<size_t>(K) * 2;
  const uint8_t* tiles = reinterpret_cast<const uint8_t*>(px.tiles);
  float* S = thread_buffer<float, 0>(static_cast<size_t>(32 * P));
  uint16_t* pad = nullptr;
  alignas(64) float cbuf[16 * 16];
  const TileConfig cfg = make_config(cb);
  E::config(&cfg);
  for (int64_t a = m0; a < m1; a += 32) {
    const int64_t rows = std::min<int64_t>(32, m1 - a);
    const int nrt = rows > 16 ? 2 : 1;
    const uint16_t* wt[2] = {nullptr, nullptr};
    for (int t = 0; t < nrt; ++t) {
      const int64_t r0 = a + 16 * t;
      if (r0 + 16 <= M) {
        wt[t] = w + r0 * K;
      } else {
        // The matrix's last, partial tile: its rows, then zeros (a tile load reads 16 rows).
        if (!pad) pad = thread_buffer<uint16_t, 1>(static_cast<size_t>(16 * K));
        std::memset(pad, 0, static_cast<size_t>(16 * K) * 2);
        std::memcpy(pad, w + r0 * K, static_cast<size_t>((M - r0) * K) * 2);
        wt[t] = pad;
      }
    }
    for (int64_t ct = 0; ct < CT; ct += 2) {
      const int nct = CT - ct >= 2 ? 2 : 1;
      for (int i = 0; i < nrt; ++i)
        for (int j = 0; j < nct; ++j) E::zero_c(2 * i + j);
      const uint8_t* b0 = tiles + static_cast<size_t>(ct * KC) * tile_bytes;
      const uint8_t* b1 = b0 + static_cast<size_t>(KC) * tile_bytes;
      for (int64_t kc = 0; kc < KC; ++kc) {
        E::load_b(0, b0 + kc * tile_bytes, static_cast<size_t>(cb));
        if (nct == 2) E::load_b(1, b1 + kc * tile_bytes, static_cast<size_t>(cb));
        for (int i = 0; i < nrt; ++i) {
          E::load_a(i, wt[i] + kc * 32, ldw);
          E::mul(i, 0);
          if (nct == 2) E::mul(i, 1);
        }
        if (ct == 0 && kc + kPrefetchChunks < KC)
          for (int i = 0; i < nrt; ++i)
            for (int r = 0; r < 16; ++r) __builtin_prefetch(wt[i] + r * K + (kc + kPrefetchChunks) * 32, 0, 2);
      }
      for (int i = 0; i < nrt; ++i)
        for (int j = 0; j < nct; ++j) {
          E::store_c(2 * i + j, cbuf, 64);
          const int64_t c0 = 16 * (ct + j), cols = std::min<int64_t>(16, P - c0);
          for (int64_t r = 0; r < 16 && 16 * i + r < rows; ++r)
            std::memcpy(S + (16 * i + r) * P + c0, cbuf + r * 16, static_cast<size_t>(cols) * 4);
        }
    }
    const int64_t K32 = KC * 32;
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t m = a + i;
      const uint16_t* wr = w + m * K;
      for (int64_t n = 0; n < N; ++n) {
        const float* s = S + i * P + 3 * n;
        float y = s[0] + (s[1] + s[2]);
        if (K32 < K) {
          const float* xr = px.x + n * K;
          float t = 0.0f;
          for (int64_t k = K32; k < K; ++k) t = std::fma(xr[k], bf16_to_f32(wr[k]), t);
          y = y + t;
        }
        out[n * ldo + m] = y;
      }
    }
  }
  E::release();
}

void run(Mode mode, const PackedX& px, const uint16_t* w, int64_t M, int64_t m0, int64_t m1, float* out, int64_t ldo) {
#ifdef SPECDEC_AMX_HW
  if (mode == Mode::hardware) return tile_program<Hw>(px, w, M, m0, m1, out, ldo);
#endif
  (void)mode;
  tile_program<Emu>(px, w, M, m0, m1, out, ldo);
}

// x's pieces: first each row's three pieces as rows of their own (column col = 3r + q of the tiles
// is pieces[col]: one vectorizable pass over x), then every B tile row from them, written in
// order: 16 columns of one (32-bit) pair each. Both passes split over the pool for wide x (a
// prefill's). Measured on the 2-vCPU Zen 5 (x of 1-512 rows, K 1024-2816, one thread): 2.4 ns an
// element packing straight into the tiles' scattered pairs, 0.7-1.2 ns this way element by element,
// 0.2-0.55 ns with AVX-512 (where the vector path is AVX-512, as it is wherever AMX runs).
// Pairs of bf16 read and written as one 32-bit word (may_alias: the buffers hold uint16_t).
using pair_t = uint32_t __attribute__((may_alias));

// One row's pieces, K32 values (a multiple of 32).
void pieces_row(const float* xr, int64_t K32, uint16_t* hi, uint16_t* mid, uint16_t* lo) {
  for (int64_t k = 0; k < K32; ++k) {
    // x = hi + mid + lo exactly: each piece is the top 16 bits of what the previous left.
    const uint32_t u0 = f32_bits(xr[k]);
    const float r1 = xr[k] - bits_f32(u0 & 0xffff0000u);
    const uint32_t u1 = f32_bits(r1);
    const float r2 = r1 - bits_f32(u1 & 0xffff0000u);
    hi[k] = static_cast<uint16_t>(u0 >> 16);
    mid[k] = static_cast<uint16_t>(u1 >> 16);
    lo[k] = static_cast<uint16_t>(f32_bits(r2) >> 16);
  }
}

// One B tile: row kk holds the kk-th pair of each column's 16 (src[c]: 64 contiguous bytes).
void transpose_tile(const pair_t* const* src, int64_t cols, pair_t* tile) {
  for (int64_t kk = 0; kk < 16; ++kk)
    for (int64_t c = 0; c < cols; ++c) tile[kk * cols + c] = src[c][kk];
}

#ifdef SPECDEC_CPU_X86_SIMD
// The same bits with AVX-512: the same operations on 16 values at a time.
SPECDEC_AVX512 void pieces_row_avx512(const float* xr, int64_t K32, uint16_t* hi, uint16_t* mid, uint16_t* lo) {
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  for (int64_t k = 0; k < K32; k += 16) {
    const __m512 x = _mm512_loadu_ps(xr + k);
    const __m512i u0 = _mm512_castps_si512(x);
    const __m512 r1 = _mm512_sub_ps(x, _mm512_castsi512_ps(_mm512_and_si512(u0, top)));
    const __m512i u1 = _mm512_castps_si512(r1);
    const __m512 r2 = _mm512_sub_ps(r1, _mm512_castsi512_ps(_mm512_and_si512(u1, top)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + k), _mm512_cvtepi32_epi16(_mm512_srli_epi32(u0, 16)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(mid + k), _mm512_cvtepi32_epi16(_mm512_srli_epi32(u1, 16)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + k),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(r2), 16)));
  }
}

// A full-width (16-column) tile as a 16 x 16 transpose of 32-bit words in registers.
SPECDEC_AVX512 void transpose_tile16_avx512(const pair_t* const* src, pair_t* tile) {
  __m512i r[16], t[16];
  for (int c = 0; c < 16; ++c) r[c] = _mm512_loadu_si512(src[c]);
  // Pairs of rows interleaved by 32 bits, then by 64 bits: 4 x 4 blocks of 128-bit lanes.
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Then the 128-bit lanes: lane j of group g goes to output rows 4j .. 4j + 3.
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
  for (int kk = 0; kk < 16; ++kk) _mm512_storeu_si512(tile + 16 * kk, r[kk]);
}
#endif

PackedX pack_into(const float* x, int64_t N, int64_t K, std::vector<uint16_t>& buf, std::vector<uint16_t>& pieces) {
  PackedX p;
  p.x = x;
  p.N = N;
  p.K = K;
  const int64_t P = 3 * N, KC = K / 32, K32 = KC * 32;
  p.col_tiles = (P + 15) / 16;
  p.colsb = 4 * std::min<int64_t>(16, P);
  const int64_t row_elems = p.colsb / 2;  // bf16 values per B tile row
  const size_t n = static_cast<size_t>(p.col_tiles * KC * 16 * row_elems);
  if (buf.size() < n) buf.resize(n);
  const size_t np = static_cast<size_t>(P * K32);
  if (pieces.size() < np) pieces.resize(np);
  uint16_t* pc = pieces.data();
  uint16_t* out = buf.data();
#ifdef SPECDEC_CPU_X86_SIMD
  const bool avx512 = simd::isa() == simd::Isa::avx512;
#endif
  // Work in grain_for's units (roughly one multiply-add an element and piece).
  const double work = 3.0 * static_cast<double>(N) * static_cast<double>(K32);
  parallel_for(N, grain_for(3.0 * static_cast<double>(K32)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      uint16_t* hi = pc + (3 * r) * K32;
#ifdef SPECDEC_CPU_X86_SIMD
      if (avx512) {
        pieces_row_avx512(x + r * K, K32, hi, hi + K32, hi + 2 * K32);
        continue;
      }
#endif
      pieces_row(x + r * K, K32, hi, hi + K32, hi + 2 * K32);
    }
  }, work);
  const int64_t cols_per_row = row_elems / 2;
  parallel_for(p.col_tiles, grain_for(16.0 * static_cast<double>(K32)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t ncols = std::min<int64_t>(cols_per_row, P - 16 * t);
      // A tile is a 16 x cols transpose of 32-bit pairs: column c's 16 pairs are 64 contiguous bytes
      // of pieces[16t + c] (zeros past the last column).
      static const pair_t zeros[16] = {};
      for (int64_t kc = 0; kc < KC; ++kc) {
        pair_t* tile = reinterpret_cast<pair_t*>(out + static_cast<size_t>((t * KC + kc) * 16 * row_elems));
        const pair_t* src[16];
        for (int64_t c = 0; c < cols_per_row; ++c)
          src[c] = c < ncols ? reinterpret_cast<const pair_t*>(pc + (16 * t + c) * K32 + 32 * kc) : zeros;
#ifdef SPECDEC_CPU_X86_SIMD
        if (avx512 && cols_per_row == 16) {
          transpose_tile16_avx512(src, tile);
          continue;
        }
#endif
        transpose_tile(src, cols_per_row, tile);
      }
    }
  }, work);
  p.tiles = buf.data();
  return p;
}

// ---- the run-time choice ----------------------------------------------------------------------

#ifdef SPECDEC_AMX_HW
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

// "" when the tiles can be used by this process, else why not.
std::string hardware_reason() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1u) || !((d >> 22) & 1u))
    return "this CPU has no AMX-BF16 (CPUID.7.0:EDX bits 24 and 22)";
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return "the OS has not enabled XSAVE (OSXSAVE)";
  if ((xgetbv0() & (3u << 17)) != (3u << 17)) return "the OS has not enabled the AMX state (XCR0 bits 17 and 18)";
  constexpr int kGetPerm = 0x1022, kReqPerm = 0x1023, kXtileData = 18;
  if (syscall(SYS_arch_prctl, kReqPerm, kXtileData) != 0)
    return std::string("the OS refused AMX tile data to this process (arch_prctl ARCH_REQ_XCOMP_PERM: ") +
           std::strerror(errno) + ")";
  uint64_t perm = 0;
  if (syscall(SYS_arch_prctl, kGetPerm, &perm) != 0 || !((perm >> kXtileData) & 1u))
    return "the OS did not grant AMX tile data (ARCH_GET_XCOMP_PERM)";
  return "";
}

// Runs the hardware and the emulated engine on shapes that take every path of the tile program
// (two weight tiles and a partial one, one and two column tiles, a k tail, K < 32) against a
// float64 reference. Returns the worst error in units of the order's error bound.
double self_test(bool* same_bits) {
  struct Shape {
    int64_t N, K, M;
  };
  const Shape shapes[] = {{1, 80, 40}, {7, 96, 33}, {3, 24, 16}};
  uint64_t s = 0x9e3779b97f4a7c15ull;
  auto next = [&s] {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<int64_t>(s >> 40) - (int64_t{1} << 23)) / static_cast<float>(int64_t{1} << 23);
  };
  double worst = 0.0;
  *same_bits = true;
  std::vector<uint16_t> buf, pieces;
  for (const Shape& sh : shapes) {
    std::vector<float> x(static_cast<size_t>(sh.N * sh.K));
    std::vector<uint16_t> w(static_cast<size_t>(sh.M * sh.K));
    for (float& v : x) v = next() * 3.0f;
    for (uint16_t& v : w) v = f32_to_bf16(next());
    const PackedX px = pack_into(x.data(), sh.N, sh.K, buf, pieces);
    std::vector<float> hw(static_cast<size_t>(sh.N * sh.M)), em(hw.size());
    run(Mode::hardware, px, w.data(), sh.M, 0, sh.M, hw.data(), sh.M);
    run(Mode::emulated, px, w.data(), sh.M, 0, sh.M, em.data(), sh.M);
    const double u = std::ldexp(1.0, -24);
    for (int64_t n = 0; n < sh.N; ++n)
      for (int64_t m = 0; m < sh.M; ++m) {
        double ref = 0.0, mag = 0.0;
        for (int64_t k = 0; k < sh.K; ++k) {
          const double p = static_cast<double>(x[n * sh.K + k]) * bf16_to_f32(w[m * sh.K + k]);
          ref += p;
          mag += std::fabs(p);
        }
        // The bound of a sequential sum of K products: the hardware may follow the SDM's pairs of
        // even and odd sums (a tighter bound) or the intrinsics guide's single running sum.
        const double bound = (sh.K + 24) * u * mag + 1e-30;
        const size_t i = static_cast<size_t>(n * sh.M + m);
        worst = std::max(worst, std::isfinite(hw[i]) ? std::fabs(hw[i] - ref) / bound : 1e30);
        if (f32_bits(hw[i]) != f32_bits(em[i])) *same_bits = false;
      }
  }
  return worst;
}
#endif

Status decide() {
  Status st;
  const char* env = std::getenv("SPECDEC_CPU_AMX");
  const std::string v = env ? env : "";
  if (v == "0" || v == "off") {
    st.reason = "SPECDEC_CPU_AMX=" + v;
    return st;
  }
  if (v == "emulate") {
    st.mode = Mode::emulated;
    return st;
  }
  if (!v.empty() && v != "1" && v != "on")
    fail("E_ARG", "SPECDEC_CPU_AMX='", v, "': expected 0, off, 1, on or emulate");
#ifdef SPECDEC_AMX_HW
  const char* simd_env = std::getenv("SPECDEC_CPU_SIMD");
  if (simd_env && *simd_env && std::strcmp(simd_env, "amx") != 0) {
    st.reason = std::string("SPECDEC_CPU_SIMD=") + simd_env + " caps the matmul below AMX";
    return st;
  }
  if (simd::isa() != simd::Isa::avx512) {
    st.reason = "this CPU has no AVX-512";
    return st;
  }
  st.reason = hardware_reason();
  if (!st.reason.empty()) return st;
  st.self_tested = true;
  st.self_test_error = self_test(&st.matches_emulation);
  if (!(st.self_test_error < 1.0)) {
    st.reason = "the AMX self-test failed: an output off the float64 reference by " + std::to_string(st.self_test_error) +
                " times its error bound";
    return st;
  }
  st.mode = Mode::hardware;
  return st;
#else
  st.reason = "this build has no AMX path (x86-64 Linux with GCC >= 11 or Clang >= 12 only)";
  return st;
#endif
}

}  // namespace

const char* mode_name(Mode m) { return m == Mode::hardware ? "hardware" : m == Mode::emulated ? "emulated" : "off"; }

const Status& status() {
  static const Status s = decide();
  return s;
}

namespace {
std::vector<uint16_t>& pack_buffer(int i) {
  thread_local std::vector<uint16_t> buf[2];
  return buf[i];
}
}  // namespace

PackedX pack_x(const float* x, int64_t N, int64_t K) { return pack_into(x, N, K, pack_buffer(0), pack_buffer(1)); }

void trim_pack(size_t keep_bytes) {
  for (int i = 0; i < 2; ++i)
    if (pack_buffer(i).size() * 2 > keep_bytes) std::vector<uint16_t>().swap(pack_buffer(i));
}

void block(const PackedX& px, const uint16_t* w, int64_t M, int64_t m0, int64_t m1, float* out, int64_t ldo) {
  run(status().mode, px, w, M, m0, m1, out, ldo);
}

#ifdef SPECDEC_AMX_HW
namespace {
// Four independent TDPBF16PS chains on registers (zero tiles: the rate does not depend on values).
SPECDEC_AMX double dp_chains(int64_t iters) {
  static const uint8_t zeros[16 * 64] = {};
  const TileConfig cfg = make_config(64);
  _tile_loadconfig(&cfg);
  for (int i = 0; i < 4; ++i) Hw::zero_c(i);
  _tile_loadd(4, zeros, 64);
  _tile_loadd(5, zeros, 64);
  _tile_loadd(6, zeros, 64);
  _tile_loadd(7, zeros, 64);
  for (int64_t t = 0; t < iters; ++t) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float out[256];
  _tile_stored(0, out, 64);
  _tile_release();
  return 4.0 * 2.0 * 16 * 16 * 32 * static_cast<double>(iters) + out[0];  // out[0] is 0: keeps the chain live
}
}  // namespace
#endif

double peak_gflops(double seconds) {
  SPECDEC_CHECK(status().mode == Mode::hardware, "E_UNSUPPORTED", "no AMX tiles in use here: ",
                status().reason.empty() ? std::string("SPECDEC_CPU_AMX=emulate") : status().reason);
  SPECDEC_CHECK(seconds > 0 && seconds <= 10, "E_ARG", "seconds: expected (0, 10], got ", seconds);
#ifdef SPECDEC_AMX_HW
  using clock = std::chrono::steady_clock;
  const int threads = pool_threads();
  auto round = [&] {
    const auto t0 = clock::now();
    std::atomic<int64_t> flops_x{0};
    parallel_for(threads, 1, [&](int64_t b, int64_t e) {
      double f = 0;
      for (int64_t i = b; i < e; ++i) f += dp_chains(int64_t{1} << 12);
      flops_x.fetch_add(static_cast<int64_t>(f));
    });
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    return static_cast<double>(flops_x.load()) / dt;
  };
  round();
  double best = 0;
  const auto end = clock::now() + std::chrono::duration<double>(seconds);
  do best = std::max(best, round());
  while (clock::now() < end);
  return best / 1e9;
#else
  return 0.0;
#endif
}

}  // namespace amx
}  // namespace cpu
}  // namespace specdec

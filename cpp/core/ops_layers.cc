// Validating dispatchers for the model layer ops: every argument is checked here, once, so the
// CPU and CUDA backends report identical E_ARG errors; then the tensors' device picks the backend.
#include <cmath>
#include <cstring>
#include <vector>

#include "ops_layers.h"
#include "transfers.h"
#include "../cpu/matmul_serial.h"

namespace specdec {
namespace ops {

namespace {

#define SPECDEC_FLOATS \
  { DType::f32, DType::f16, DType::bf16 }

// True if the byte ranges of a and b overlap (both defined, same device).
bool overlaps(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined() || a.device() != b.device()) return false;
  const char* pa = static_cast<const char*>(a.data());
  const char* pb = static_cast<const char*>(b.data());
  return pa < pb + b.nbytes() && pb < pa + a.nbytes() && a.nbytes() > 0 && b.nbytes() > 0;
}

bool same_region(const Tensor& a, const Tensor& b) { return a.data() == b.data() && a.nbytes() == b.nbytes(); }

// `out` may be the very same buffer as `in` (elementwise ops) but not a partial overlap.
void check_alias(const Tensor& out, const char* out_name, const Tensor& in, const char* in_name, bool exact_ok) {
  if (!overlaps(out, in)) return;
  SPECDEC_CHECK(exact_ok && same_region(out, in), "E_ARG", out_name, ": must not overlap ", in_name,
                exact_ok ? " (except as the very same tensor)" : "");
}

}  // namespace

void embedding(const Tensor& table, const Tensor& ids, Tensor& out) { embedding(table, ids, out, nullptr, false); }

void embedding(const Tensor& table, const Tensor& ids, Tensor& out, const int32_t* host_ids, bool ids_in_range, float scale) {
  check_arg_dim(table, "table", SPECDEC_FLOATS, 2);
  check_arg_dim(ids, "ids", {DType::i32}, 1);
  const int64_t N = ids.size(0), V = table.size(0), H = table.size(1);
  check_arg(out, "out", {DType::f32}, {N, H});
  check_same_device({&table, &ids, &out}, "embedding");
  check_alias(out, "out", table, "table", false);
  if (N == 0) return;
  // Ids are validated on the host for both backends so a bad id is a coded error naming the id,
  // never an out-of-bounds read: from the caller's host copy, else read back (a counted wait).
  std::vector<int32_t> host;
  if (!host_ids && !ids_in_range) {
    host.resize(static_cast<size_t>(N));
    ids.copy_to_host(host.data(), host.size() * sizeof(int32_t));
    host_ids = host.data();
  }
  for (int64_t n = 0; host_ids && n < N; ++n) {
    int32_t id = host_ids[n];
    SPECDEC_CHECK(id >= 0 && id < V, "E_ARG", "ids[", n, "] = ", id, " is outside the vocabulary [0, ", V,
                  ") (vocabulary size ", V, ")");
  }
  SPECDEC_CHECK(std::isfinite(scale), "E_ARG", "embedding: scale must be finite, got ", scale);
  note_op();  // one launch on CUDA
  if (table.device() == Device::cpu) return cpu::embedding(table, ids, out, scale);
#ifdef SPECDEC_WITH_CUDA
  return cuda::embedding(table, ids, out, scale);
#else
  fail("E_UNSUPPORTED", "embedding: CUDA backend not compiled");
#endif
}

void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) {
  check_arg_dim(x, "x", {DType::f32}, 2);
  const int64_t N = x.size(0), H = x.size(1);
  check_arg(w, "w", SPECDEC_FLOATS, {H});
  check_arg(out, "out", {DType::f32}, {N, H});
  check_same_device({&x, &w, &out}, "rmsnorm");
  SPECDEC_CHECK(std::isfinite(eps) && eps >= 0.f, "E_ARG", "eps: expected a finite number >= 0, got ", eps);
  SPECDEC_CHECK(H > 0 || N == 0, "E_ARG", "x: hidden size must be > 0, got ", x.describe());
  check_alias(out, "out", x, "x", true);
  check_alias(out, "out", w, "w", false);
  if (N == 0) return;
  note_op();  // one launch on CUDA
  if (x.device() == Device::cpu) return cpu::rmsnorm(x, w, eps, out);
#ifdef SPECDEC_WITH_CUDA
  return cuda::rmsnorm(x, w, eps, out);
#else
  fail("E_UNSUPPORTED", "rmsnorm: CUDA backend not compiled");
#endif
}

namespace {
// matmul's argument checks (shared with matmul_group).
void check_matmul(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& out) {
  check_arg_dim(x, "x", {DType::f32}, 2);
  const int64_t N = x.size(0), K = x.size(1);
  check_arg_dim(w, "w", SPECDEC_FLOATS, 2);
  const int64_t M = w.size(0);
  SPECDEC_CHECK(w.size(1) == K, "E_ARG", "w: expected shape [*, ", K, "] (K from x ", x.describe(), "), got ",
                w.describe());
  if (bias.defined()) check_arg(bias, "bias", SPECDEC_FLOATS, {M});
  check_arg(out, "out", {DType::f32}, {N, M});
  check_same_device({&x, &w, &bias, &out}, "matmul");
  check_alias(out, "out", x, "x", false);
  check_alias(out, "out", w, "w", false);
  check_alias(out, "out", bias, "bias", false);
}
}  // namespace

// A k-serial pack must come from the weight it is used with (CPU only; CUDA ignores packs).
static void check_serial(const Tensor& w, const cpu::SerialWeight* serial) {
  if (!serial || w.device() != Device::cpu) return;
  SPECDEC_CHECK(serial->packed_from(w), "E_ARG", "serial: packed from another weight than w ", w.describe(), " (a ",
                serial->rows(), " x ", serial->cols(), " pack)");
}

void matmul_group(const Tensor& x, std::initializer_list<MatmulPart> parts) {
  const bool whole = x.defined() && x.dim() == 2 && x.size(0) > 0 && x.size(1) > 0;
  if (!whole) {
    // Empty shapes: one matmul each (their checks and early returns).
    for (const MatmulPart& p : parts) matmul(x, *p.w, *p.bias, *p.out, p.serial);
    return;
  }
  for (const MatmulPart& p : parts) {
    check_matmul(x, *p.w, *p.bias, *p.out);
    check_serial(*p.w, p.serial);
  }
  // Every output is written while the others are read by no one, but they must not overlap.
  for (const MatmulPart* a = parts.begin(); a != parts.end(); ++a)
    for (const MatmulPart* b = a + 1; b != parts.end(); ++b) check_alias(*a->out, "out", *b->out, "another out", false);
  if (x.device() == Device::cpu) {
    note_op();
    return cpu::matmul_group(x, parts);
  }
#ifdef SPECDEC_WITH_CUDA
  const int launches = cuda::matmul_group(x, parts.begin(), parts.size());
  for (int i = 0; i < launches; ++i) note_op();
#else
  fail("E_UNSUPPORTED", "matmul: CUDA backend not compiled");
#endif
}

void matmul(const Tensor& x, const Tensor& w, const Tensor& bias, Tensor& out, const cpu::SerialWeight* serial) {
  check_arg_dim(x, "x", {DType::f32}, 2);
  const int64_t N = x.size(0), K = x.size(1);
  check_arg_dim(w, "w", SPECDEC_FLOATS, 2);
  const int64_t M = w.size(0);
  SPECDEC_CHECK(w.size(1) == K, "E_ARG", "w: expected shape [*, ", K, "] (K from x ", x.describe(), "), got ",
                w.describe());
  if (bias.defined()) check_arg(bias, "bias", SPECDEC_FLOATS, {M});  // any float dtype, independent of w's
  check_arg(out, "out", {DType::f32}, {N, M});
  check_same_device({&x, &w, &bias, &out}, "matmul");
  // out is written while x and w are still being read: no aliasing at all.
  check_alias(out, "out", x, "x", false);
  check_alias(out, "out", w, "w", false);
  check_alias(out, "out", bias, "bias", false);
  if (N == 0 || M == 0) return;
  if (K == 0) {  // empty sum: out = bias (or 0); not worth a kernel path of its own
    if (!bias.defined()) return out.fill_zero();
    Tensor b32 = Tensor::empty(DType::f32, {M}, Device::cpu);
    Tensor bh = bias.to(Device::cpu);
    for (int64_t m = 0; m < M; ++m) {
      const void* p = bh.data();
      float v = bias.dtype() == DType::f32    ? static_cast<const float*>(p)[m]
                : bias.dtype() == DType::f16 ? f16_to_f32(static_cast<const uint16_t*>(p)[m])
                                             : bf16_to_f32(static_cast<const uint16_t*>(p)[m]);
      b32.ptr<float>()[m] = v;
    }
    for (int64_t n = 0; n < N; ++n) out.rows(n, n + 1).copy_from(b32.view({1, M}));
    return;
  }
  check_serial(w, serial);
  note_op();  // one launch on CUDA
  if (x.device() == Device::cpu) return serial ? cpu::matmul_serial(x, w, *serial, bias, out) : cpu::matmul(x, w, bias, out);
#ifdef SPECDEC_WITH_CUDA
  return cuda::matmul(x, w, bias, out);
#else
  fail("E_UNSUPPORTED", "matmul: CUDA backend not compiled");
#endif
}

// inv_freq: f32 [R / 2] for a rotation of each head's first R values (R <= head dim; the rest pass
// through): pairs (i, i + R / 2).
static void check_inv_freq(const Tensor& inv_freq, int64_t D) {
  check_arg_dim(inv_freq, "inv_freq", {DType::f32}, 1);
  SPECDEC_CHECK(inv_freq.size(0) >= 1 && inv_freq.size(0) <= D / 2, "E_ARG", "inv_freq: expected 1 .. ", D / 2,
                " frequencies (head dim ", D, ": rotary dims / 2), got ", inv_freq.describe());
}

void rope(Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  check_arg_dim(x, "x", {DType::f32}, 3);
  const int64_t N = x.size(0), D = x.size(2);
  SPECDEC_CHECK(D % 2 == 0 && D > 0, "E_ARG", "x: head dim must be even and > 0, got ", x.describe());
  check_arg(positions, "positions", {DType::i32}, {N});
  check_inv_freq(inv_freq, D);
  check_same_device({&x, &positions, &inv_freq}, "rope");
  check_alias(x, "x", positions, "positions", false);
  check_alias(x, "x", inv_freq, "inv_freq", false);
  if (x.numel() == 0) return;
  note_op();  // one launch on CUDA
  if (x.device() == Device::cpu) return cpu::rope(x, positions, inv_freq);
#ifdef SPECDEC_WITH_CUDA
  return cuda::rope(x, positions, inv_freq);
#else
  fail("E_UNSUPPORTED", "rope: CUDA backend not compiled");
#endif
}

void check_rope_qk(const Tensor& q, const Tensor& k, const Tensor& positions, const Tensor& inv_freq) {
  check_arg_dim(q, "q", {DType::f32}, 3);
  const int64_t N = q.size(0), D = q.size(2);
  check_arg_dim(k, "k", {DType::f32}, 3);
  SPECDEC_CHECK(k.size(0) == N && k.size(2) == D, "E_ARG", "k: expected shape [", N, ", *, ", D, "] (as q ", q.describe(),
                "), got ", k.describe());
  SPECDEC_CHECK(D % 2 == 0 && D > 0, "E_ARG", "q: head dim must be even and > 0, got ", q.describe());
  check_arg(positions, "positions", {DType::i32}, {N});
  check_inv_freq(inv_freq, D);
  check_same_device({&q, &k, &positions, &inv_freq}, "rope_qk");
  check_alias(q, "q", k, "k", false);
  for (const Tensor* t : {&q, &k}) {
    check_alias(*t, "q/k", positions, "positions", false);
    check_alias(*t, "q/k", inv_freq, "inv_freq", false);
  }
}

namespace {
// The checks of a gated activation (silu_mul, gelu_tanh_mul): gate, up, out f32 [N, I], out may be
// gate or up. False when there is nothing to do.
bool check_gated(const Tensor& gate, const Tensor& up, const Tensor& out, const char* op) {
  check_arg_dim(gate, "gate", {DType::f32}, 2);
  const int64_t N = gate.size(0), I = gate.size(1);
  check_arg(up, "up", {DType::f32}, {N, I});
  check_arg(out, "out", {DType::f32}, {N, I});
  check_same_device({&gate, &up, &out}, op);
  check_alias(out, "out", gate, "gate", true);
  check_alias(out, "out", up, "up", true);
  if (gate.numel() == 0) return false;
  note_op();  // one launch on CUDA
  return true;
}
}  // namespace

void silu_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  if (!check_gated(gate, up, out, "silu_mul")) return;
  if (gate.device() == Device::cpu) return cpu::silu_mul(gate, up, out);
#ifdef SPECDEC_WITH_CUDA
  return cuda::silu_mul(gate, up, out);
#else
  fail("E_UNSUPPORTED", "silu_mul: CUDA backend not compiled");
#endif
}

void gelu_tanh_mul(const Tensor& gate, const Tensor& up, Tensor& out) {
  if (!check_gated(gate, up, out, "gelu_tanh_mul")) return;
  if (gate.device() == Device::cpu) return cpu::gelu_tanh_mul(gate, up, out);
#ifdef SPECDEC_WITH_CUDA
  return cuda::gelu_tanh_mul(gate, up, out);
#else
  fail("E_UNSUPPORTED", "gelu_tanh_mul: CUDA backend not compiled");
#endif
}

void softcap(Tensor& x, float cap) {
  check_arg_dim(x, "x", {DType::f32}, 2);
  SPECDEC_CHECK(std::isfinite(cap) && cap > 0, "E_ARG", "softcap: cap must be a positive number, got ", cap);
  if (x.numel() == 0) return;
  note_op();  // one launch on CUDA
  if (x.device() == Device::cpu) return cpu::softcap(x, cap);
#ifdef SPECDEC_WITH_CUDA
  return cuda::softcap(x, cap);
#else
  fail("E_UNSUPPORTED", "softcap: CUDA backend not compiled");
#endif
}

void scale(Tensor& x, float s) {
  check_arg_dim(x, "x", {DType::f32}, -1);
  SPECDEC_CHECK(std::isfinite(s), "E_ARG", "scale: s must be a finite number, got ", s);
  if (x.numel() == 0) return;
  note_op();  // one launch on CUDA
  if (x.device() == Device::cpu) return cpu::scale(x, s);
#ifdef SPECDEC_WITH_CUDA
  return cuda::scale(x, s);
#else
  fail("E_UNSUPPORTED", "scale: CUDA backend not compiled");
#endif
}

void add_inplace(Tensor& x, const Tensor& y) {
  check_arg_dim(x, "x", {DType::f32}, -1);
  check_arg_dim(y, "y", {DType::f32}, -1);
  SPECDEC_CHECK(x.shape() == y.shape(), "E_ARG", "y: expected shape ", x.shape_str(), " (same as x), got ",
                y.describe());
  check_same_device({&x, &y}, "add_inplace");
  check_alias(x, "x", y, "y", true);
  if (x.numel() == 0) return;
  note_op();  // one launch on CUDA
  if (x.device() == Device::cpu) return cpu::add_inplace(x, y);
#ifdef SPECDEC_WITH_CUDA
  return cuda::add_inplace(x, y);
#else
  fail("E_UNSUPPORTED", "add_inplace: CUDA backend not compiled");
#endif
}

void add_rmsnorm(Tensor& x, const Tensor& y, const Tensor& w, float eps, Tensor& out) {
  check_arg_dim(x, "x", {DType::f32}, 2);
  const int64_t N = x.size(0), H = x.size(1);
  check_arg(y, "y", {DType::f32}, {N, H});
  check_arg(w, "w", SPECDEC_FLOATS, {H});
  check_arg(out, "out", {DType::f32}, {N, H});
  check_same_device({&x, &y, &w, &out}, "add_rmsnorm");
  SPECDEC_CHECK(std::isfinite(eps) && eps >= 0.f, "E_ARG", "eps: expected a finite number >= 0, got ", eps);
  SPECDEC_CHECK(H > 0 || N == 0, "E_ARG", "x: hidden size must be > 0, got ", x.describe());
  check_alias(x, "x", y, "y", true);
  check_alias(out, "out", x, "x", true);
  check_alias(out, "out", y, "y", false);
  check_alias(out, "out", w, "w", false);
  check_alias(x, "x", w, "w", false);
  if (N == 0) return;
  note_op();  // one launch on CUDA
  if (x.device() == Device::cpu) return cpu::add_rmsnorm(x, y, w, eps, out);
#ifdef SPECDEC_WITH_CUDA
  return cuda::add_rmsnorm(x, y, w, eps, out);
#else
  fail("E_UNSUPPORTED", "add_rmsnorm: CUDA backend not compiled");
#endif
}

void silu_inplace(Tensor& x) {
  check_arg_dim(x, "x", {DType::f32}, -1);
  if (x.numel() == 0) return;
  note_op();  // one launch on CUDA
  if (x.device() == Device::cpu) return cpu::silu_inplace(x);
#ifdef SPECDEC_WITH_CUDA
  return cuda::silu_inplace(x);
#else
  fail("E_UNSUPPORTED", "silu_inplace: CUDA backend not compiled");
#endif
}

void gather_last_accepted(const Tensor& x, const Tensor& indptr, const Tensor& acc_nodes, const Tensor& acc_count, Tensor& out) {
  check_arg_dim(x, "x", {DType::f32}, 2);
  const int64_t N = x.size(0), H = x.size(1);
  check_arg_dim(indptr, "indptr", {DType::i32}, 1);
  const int64_t B = indptr.size(0) - 1;
  SPECDEC_CHECK(B >= 0, "E_ARG", "indptr: expected B + 1 >= 1 entries");
  check_arg(acc_nodes, "acc_nodes", {DType::i32}, {N});
  check_arg(acc_count, "acc_count", {DType::i32}, {B});
  check_arg(out, "out", {DType::f32}, {B, H});
  check_same_device({&x, &indptr, &acc_nodes, &acc_count, &out}, "gather_last_accepted");
  check_alias(out, "out", x, "x", false);
  if (B == 0 || H == 0) return;
  note_op();  // one launch on CUDA
  if (x.device() == Device::cpu) return cpu::gather_last_accepted(x, indptr, acc_nodes, acc_count, out);
#ifdef SPECDEC_WITH_CUDA
  return cuda::gather_last_accepted(x, indptr, acc_nodes, acc_count, out);
#else
  fail("E_UNSUPPORTED", "gather_last_accepted: CUDA backend not compiled");
#endif
}

}  // namespace ops
}  // namespace specdec

// The trainer's layer kernels: one forward and one backward function per layer, on plain
// row-major arrays of one sequence (llm.c style). Backward functions ACCUMULATE (+=) into the
// gradients of their inputs and parameters, so callers zero them once per step.
//
// Conventions: x [N, K] rows, weights [M, K] as in PyTorch's nn.Linear (out = x W^T + b).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace specdec {
namespace train {

// Dot product with 8 independent partial sums, so the compiler vectorizes it without -ffast-math.
template <typename F>
inline F dot(const F* a, const F* b, int n) {
  F acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  F s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += alpha * x
template <typename F>
inline void axpy(F* y, const F* x, F alpha, int n) {
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// ---- Linear: out[N, M] = x[N, K] W[M, K]^T (+ b[M]) ------------------------------------------

template <typename F>
void linear_forward(F* out, const F* x, const F* W, const F* b, int N, int K, int M) {
  // Four rows of x per pass over W: each weight row is loaded once for four dot products.
  int n = 0;
  for (; n + 4 <= N; n += 4) {
    const F* x0 = x + int64_t(n) * K;
    const F* x1 = x0 + K;
    const F* x2 = x1 + K;
    const F* x3 = x2 + K;
    for (int m = 0; m < M; ++m) {
      const F* w = W + int64_t(m) * K;
      const F bias = b ? b[m] : F(0);
      out[int64_t(n) * M + m] = dot(x0, w, K) + bias;
      out[int64_t(n + 1) * M + m] = dot(x1, w, K) + bias;
      out[int64_t(n + 2) * M + m] = dot(x2, w, K) + bias;
      out[int64_t(n + 3) * M + m] = dot(x3, w, K) + bias;
    }
  }
  for (; n < N; ++n)
    for (int m = 0; m < M; ++m) out[int64_t(n) * M + m] = dot(x + int64_t(n) * K, W + int64_t(m) * K, K) + (b ? b[m] : F(0));
}

// dx += dout W, dW += dout^T x, db += colsum(dout). Any of dx, dW, db may be null (a frozen W).
template <typename F>
void linear_backward(F* dx, F* dW, F* db, const F* dout, const F* x, const F* W, int N, int K, int M) {
  if (dx)
    for (int n = 0; n < N; ++n) {
      F* dxr = dx + int64_t(n) * K;
      const F* g = dout + int64_t(n) * M;
      for (int m = 0; m < M; ++m)
        if (g[m] != F(0)) axpy(dxr, W + int64_t(m) * K, g[m], K);
    }
  if (!dW && !db) return;
  for (int m = 0; m < M; ++m) {
    F* dw = dW ? dW + int64_t(m) * K : nullptr;
    F bsum = 0;
    for (int n = 0; n < N; ++n) {
      const F g = dout[int64_t(n) * M + m];
      bsum += g;
      if (dw && g != F(0)) axpy(dw, x + int64_t(n) * K, g, K);
    }
    if (db) db[m] += bsum;
  }
}

// ---- RMSNorm: y = x * inv * w, inv = 1 / sqrt(mean(x^2) + eps) -------------------------------

template <typename F>
void rmsnorm_forward(F* y, F* inv, const F* x, const F* w, int N, int H, double eps) {
  for (int n = 0; n < N; ++n) {
    const F* xr = x + int64_t(n) * H;
    // Mean of squares in double, as the runner's CPU rmsnorm does.
    double ss = 0;
    for (int i = 0; i < H; ++i) ss += double(xr[i]) * xr[i];
    const F r = F(1.0 / std::sqrt(ss / H + eps));
    inv[n] = r;
    F* yr = y + int64_t(n) * H;
    for (int i = 0; i < H; ++i) yr[i] = xr[i] * r * w[i];
  }
}

// dx_i += inv * w_i dy_i - inv^3 / H * x_i * sum_j(w_j dy_j x_j);  dw_i += dy_i x_i inv
template <typename F>
void rmsnorm_backward(F* dx, F* dw, const F* dy, const F* x, const F* w, const F* inv, int N, int H) {
  for (int n = 0; n < N; ++n) {
    const F* xr = x + int64_t(n) * H;
    const F* g = dy + int64_t(n) * H;
    const F r = inv[n];
    F s = 0;
    for (int i = 0; i < H; ++i) s += w[i] * g[i] * xr[i];
    const F c = r * r * r * s / F(H);
    F* dxr = dx + int64_t(n) * H;
    for (int i = 0; i < H; ++i) {
      dxr[i] += r * w[i] * g[i] - c * xr[i];
      dw[i] += g[i] * xr[i] * r;
    }
  }
}

// ---- RoPE (HF rotate_half layout: pairs (i, i + D/2)) on x [T, heads, D], position = row -------

template <typename F>
void rope_forward(F* x, const F* cos_t, const F* sin_t, int T, int heads, int D) {
  const int half = D / 2;
  for (int t = 0; t < T; ++t) {
    const F* c = cos_t + int64_t(t) * half;
    const F* s = sin_t + int64_t(t) * half;
    for (int h = 0; h < heads; ++h) {
      F* v = x + (int64_t(t) * heads + h) * D;
      for (int i = 0; i < half; ++i) {
        const F a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
    }
  }
}

// The rotation is orthogonal: its backward is the rotation by -angle, in place on the gradient.
template <typename F>
void rope_backward(F* dx, const F* cos_t, const F* sin_t, int T, int heads, int D) {
  const int half = D / 2;
  for (int t = 0; t < T; ++t) {
    const F* c = cos_t + int64_t(t) * half;
    const F* s = sin_t + int64_t(t) * half;
    for (int h = 0; h < heads; ++h) {
      F* v = dx + (int64_t(t) * heads + h) * D;
      for (int i = 0; i < half; ++i) {
        const F a = v[i], b = v[i + half];
        v[i] = a * c[i] + b * s[i];
        v[i + half] = b * c[i] - a * s[i];
      }
    }
  }
}

// ---- Causal multi-head attention with GQA ---------------------------------------------------
// q [T, NH, D], k/v [T, NKV, D] -> out [T, NH, D]; probs [NH, T, T] (row i: weights over j <= i).

template <typename F>
void attention_forward(F* out, F* probs, const F* q, const F* k, const F* v, int T, int NH, int NKV, int D) {
  const F scale = F(1) / std::sqrt(F(D));
  const int group = NH / NKV;
  for (int h = 0; h < NH; ++h) {
    const int kh = h / group;
    for (int i = 0; i < T; ++i) {
      const F* qi = q + (int64_t(i) * NH + h) * D;
      F* p = probs + (int64_t(h) * T + i) * T;
      F mx = -INFINITY;
      for (int j = 0; j <= i; ++j) {
        p[j] = dot(qi, k + (int64_t(j) * NKV + kh) * D, D) * scale;
        mx = std::max(mx, p[j]);
      }
      F sum = 0;
      for (int j = 0; j <= i; ++j) {
        p[j] = std::exp(p[j] - mx);
        sum += p[j];
      }
      const F rs = F(1) / sum;
      for (int j = 0; j <= i; ++j) p[j] *= rs;
      for (int j = i + 1; j < T; ++j) p[j] = 0;
      F* o = out + (int64_t(i) * NH + h) * D;
      for (int d = 0; d < D; ++d) o[d] = 0;
      for (int j = 0; j <= i; ++j) axpy(o, v + (int64_t(j) * NKV + kh) * D, p[j], D);
    }
  }
}

// dq += ..., dk += ..., dv += ...; dp is scratch of T entries.
template <typename F>
void attention_backward(F* dq, F* dk, F* dv, F* dp, const F* dout, const F* probs, const F* q, const F* k, const F* v,
                        int T, int NH, int NKV, int D) {
  const F scale = F(1) / std::sqrt(F(D));
  const int group = NH / NKV;
  for (int h = 0; h < NH; ++h) {
    const int kh = h / group;
    for (int i = 0; i < T; ++i) {
      const F* g = dout + (int64_t(i) * NH + h) * D;
      const F* p = probs + (int64_t(h) * T + i) * T;
      // Through out = sum_j p_j v_j, then through the softmax: ds_j = p_j (dp_j - sum_k p_k dp_k).
      F pdp = 0;
      for (int j = 0; j <= i; ++j) {
        dp[j] = dot(g, v + (int64_t(j) * NKV + kh) * D, D);
        pdp += p[j] * dp[j];
        axpy(dv + (int64_t(j) * NKV + kh) * D, g, p[j], D);
      }
      const F* qi = q + (int64_t(i) * NH + h) * D;
      F* dqi = dq + (int64_t(i) * NH + h) * D;
      for (int j = 0; j <= i; ++j) {
        const F ds = p[j] * (dp[j] - pdp) * scale;
        axpy(dqi, k + (int64_t(j) * NKV + kh) * D, ds, D);
        axpy(dk + (int64_t(j) * NKV + kh) * D, qi, ds, D);
      }
    }
  }
}

// ---- SwiGLU: act = silu(gate) * up ----------------------------------------------------------

template <typename F>
inline F sigmoid(F x) {
  return F(1) / (F(1) + std::exp(-x));
}

template <typename F>
void swiglu_forward(F* act, const F* gate, const F* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) act[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

// silu'(g) = s (1 + g (1 - s)), s = sigmoid(g). Writes (not accumulates) dgate and dup.
template <typename F>
void swiglu_backward(F* dgate, F* dup, const F* dact, const F* gate, const F* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const F s = sigmoid(gate[i]);
    dgate[i] = dact[i] * up[i] * s * (F(1) + gate[i] * (F(1) - s));
    dup[i] = dact[i] * gate[i] * s;
  }
}

// ---- Softmax cross-entropy over rows of logits [N, V] ---------------------------------------
// Rows with target < 0 are skipped. Returns the summed loss; if dlogits != null writes
// dlogits = (softmax - onehot) * dscale (zero for skipped rows). correct counts argmax hits.

template <typename F>
double cross_entropy(F* dlogits, const F* logits, const int32_t* targets, int N, int V, F dscale, int* correct) {
  double loss = 0;
  for (int n = 0; n < N; ++n) {
    const F* l = logits + int64_t(n) * V;
    F* d = dlogits ? dlogits + int64_t(n) * V : nullptr;
    if (targets[n] < 0) {
      if (d)
        for (int i = 0; i < V; ++i) d[i] = 0;
      continue;
    }
    int am = 0;
    for (int i = 1; i < V; ++i)
      if (l[i] > l[am]) am = i;
    if (correct && am == targets[n]) ++*correct;
    const F mx = l[am];
    double sum = 0;
    for (int i = 0; i < V; ++i) sum += std::exp(double(l[i] - mx));
    loss += std::log(sum) - double(l[targets[n]] - mx);
    if (d) {
      const double rs = 1.0 / sum;
      for (int i = 0; i < V; ++i) d[i] = F(std::exp(double(l[i] - mx)) * rs) * dscale;
      d[targets[n]] -= dscale;
    }
  }
  return loss;
}

// ---- Threads --------------------------------------------------------------------------------

// Runs fn(tid, begin, end) over [0, n) in `threads` contiguous chunks (chunk boundaries depend
// only on n and threads, so results are reproducible for a given thread count).
template <typename Fn>
void parallel_chunks(int n, int threads, Fn&& fn) {
  threads = std::max(1, std::min(threads, n));
  if (threads == 1) {
    fn(0, 0, n);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errs(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    const int b = int(int64_t(n) * t / threads), e = int(int64_t(n) * (t + 1) / threads);
    pool.emplace_back([&, t, b, e] {
      try {
        fn(t, b, e);
      } catch (...) {
        errs[size_t(t)] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  for (auto& e : errs)
    if (e) std::rethrow_exception(e);
}

// Deterministic normal samples (splitmix64 + Box-Muller): the same on every platform and
// standard library, so trained checkpoints are reproducible.
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed * 0x9E3779B97F4A7C15ull + 0x1234567ull) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (double(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0); }  // (0, 1)
  double normal() {
    const double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

}  // namespace train
}  // namespace specdec

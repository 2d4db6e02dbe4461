"""One chunk of a group of fast-weight memories (`memory_chunk.ChunkUpdateRead`: forward and backward) and the chunk
coefficients (`fast_weight_memory.chunk_coefficients`) as C++ calls, for float32 silu memories on the CPU.

In PyTorch a chunk's forward is about sixty small operations and its backward about a hundred and fifty (products of 64
x 48 matrices, elementwise passes of a few thousand entries): their dispatch costs as much as their work. Here the same
math walks a head's memories one by one, each memory's tensors in cache and the elementwise terms fused into loops. The
products go through oneDNN's block GEMM (`at::native::cpublas::brgemm`, which inductor's CPU GEMM templates call; it
falls back to the BLAS gemm where oneDNN's micro-kernels do not run): on AMD processors MKL takes its AVX2 path, and at
these sizes oneDNN's AVX-512 kernels run 2.5x faster (about 260 against 100 GFLOP/s on the benchmark machine). The
equations are those of `memory_chunk.py` (its docstrings and the comments of its backward):

    Z = X W2e^T (X = [k; v] or k),  H = act(Z),  Y = H W1e^T,  err = k - v + y (- yv),  e1 = err W1e
    b1 = (err + dgd y) s1,  b2 = (e1 * act'(z) + dgd z) s2,  a1 = act(z),  a2 = k
    W' = A_C W + c_C S - sum_i g_i b_i a_i^T,  S' = beta_C S - sum_i s_i b_i a_i^T
    out_j = q_j + W1_j act(W2_j q_j),  W_j = A_j W + c_j S - sum_{i<=j} G_ji b_i a_i^T

The extension is compiled on first use (about 25 s, `torch.utils.cpp_extension`, cached on disk for later processes)
with the machine's own instruction set; without a C++ compiler, or where the build fails, a warning says so once and
the chunks run in PyTorch. A chunk whose forward ran here takes its backward here too. Not under CPU autocast: there
PyTorch's products run in bfloat16, and this path would not give the same values. Off with the config's
`memory_kernel="torch"` (per model call, `disabled()`) or `HOPE_CPU_KERNEL=0` in the environment (everywhere)."""

import contextlib
import hashlib
import os
import shutil
import sys
import threading
import warnings

import torch

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// C (M x N, ldc) (+)= A (M x K, lda) B (K x N, ldb), row-major
inline void mm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
               int64_t ldc, bool add) {
  at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add, A, B, C, false);
}

// out (cols x rows, ld_out) = in (rows x cols, ld_in)^T
inline void transpose(const float* in, int64_t rows, int64_t cols, int64_t ld_in, float* out, int64_t ld_out) {
  for (int64_t j = 0; j < cols; j++)
    for (int64_t i = 0; i < rows; i++) out[j * ld_out + i] = in[i * ld_in + j];
}

// exp(x) within about 2 ulp (Cephes' expf: x = n ln2 + r, a degree-7 polynomial in r, 2^n from the exponent bits),
// without branches so that the loops calling it vectorise; NaN stays NaN
inline float exp_approx(float x) {
  x = x < -87.f ? -87.f : x;
  x = x > 88.f ? 88.f : x;
  const float n = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // nearest integer (1.5 * 2^23 trick)
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return (p * r * r + r + 1.f) * scale;
}

// out (rows x cols) = sign * x with column t scaled by f_t
inline void scale_columns(const float* x, int64_t rows, int64_t cols, const float* f, float sign, float* out) {
  for (int64_t i = 0; i < rows; i++)
    for (int64_t t = 0; t < cols; t++) out[i * cols + t] = sign * x[i * cols + t] * f[t];
}

// out (rows x cols) = sign * x with row t scaled by f_t
inline void scale_rows(const float* x, int64_t rows, int64_t cols, const float* f, float sign, float* out) {
  for (int64_t t = 0; t < rows; t++)
    for (int64_t i = 0; i < cols; i++) out[t * cols + i] = sign * f[t] * x[t * cols + i];
}

inline float sigmoid(float z) { return 1.f / (1.f + exp_approx(-z)); }

}  // namespace

// A chunk's inputs (see `chunk_forward`) as sizes and float pointers, for the forward and the backward.
struct ChunkInputs {
  int64_t N, d, R, C, M, dR, rows, P, H;
  float dgd;
  bool self_generated, momentum, read;
  const float *W1e, *W2e, *W1, *W2, *S1, *S2, *k, *v, *A, *c, *G, *q, *beta, *s;

  ChunkInputs(const std::vector<at::Tensor>& t, double dgd_, bool self_generated_, bool momentum_, int64_t P_,
              int64_t H_)
      : N(t[2].size(0)), d(t[2].size(1)), R(t[2].size(2)), C(t[6].size(1)), M(N / P_), dR(d * R),
        rows(self_generated_ ? 2 * C : C), P(P_), H(H_), dgd(static_cast<float>(dgd_)),
        self_generated(self_generated_), momentum(momentum_), read(t[13].numel() > 0) {
    const float** fields[] = {&W1e, &W2e, &W1, &W2, &S1, &S2, &k, &v, &A, &c, &G};
    for (int i = 0; i < 11; i++) *fields[i] = t[i].data_ptr<float>();
    q = read ? t[13].data_ptr<float>() : nullptr;
    beta = momentum ? t[11].data_ptr<float>() : nullptr;
    s = momentum ? t[12].data_ptr<float>() : nullptr;
  }

  // the memory row of head row m's p-th memory: rows are (batch, memory, head), heads (batch, head)
  int64_t memory(int64_t m, int64_t p) const { return ((m / H) * P + p) * H + m % H; }
};

// See the module's docstring. W* (N, d, R) / (N, R, d) contiguous float32; k, v, q (M, C, d) with M = N / P; A, c, s
// (M, C); G (M, C, C); beta (M). Memory n = (b P + p) H + h reads its head's row m = b H + h; the reading memory is
// p = P - 1. Everything runs transposed (tokens along the columns: X^T = [k; v]^T is (d, 2C)), so that each product's
// operands are at hand in row-major order and only W1e and a memory's a1 need a transpose; silu (act = silu only).
std::vector<at::Tensor> chunk_forward(at::Tensor W1e, at::Tensor W2e, at::Tensor W1, at::Tensor W2, at::Tensor S1,
                                      at::Tensor S2, at::Tensor k, at::Tensor v, at::Tensor A, at::Tensor c,
                                      at::Tensor G, at::Tensor beta, at::Tensor s, at::Tensor q, double dgd_,
                                      bool self_generated, bool momentum, int64_t P, int64_t H) {
  const ChunkInputs x({W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta, s, q}, dgd_, self_generated, momentum, P, H);
  const int64_t d = x.d, R = x.R, C = x.C, M = x.M, dR = x.dR, rows = x.rows;
  const float dgd = x.dgd;
  const bool read = x.read;
  auto W1n = at::empty_like(W1), W2n = at::empty_like(W2);
  auto S1n = momentum ? at::empty_like(S1) : S1.clone(), S2n = momentum ? at::empty_like(S2) : S2.clone();
  auto out = read ? at::empty_like(q) : q;
  float *pW1n = W1n.data_ptr<float>(), *pW2n = W2n.data_ptr<float>(), *pS1n = S1n.data_ptr<float>(),
        *pS2n = S2n.data_ptr<float>(), *pout = read ? out.data_ptr<float>() : nullptr;

  at::parallel_for(0, M, 1, [&](int64_t lo, int64_t hi) {
    const int64_t D = d > R ? d : R;
    std::vector<float> XT(d * 2 * C), ZT(R * rows), HT(R * rows), dhT(R * C), YT(d * rows), errT(d * C),
        W1eT(R * d), e1T(R * C), norm(R), b1T(d * C), b2T(R * C), a1(C * R), T(D * C), s1(C), s2(C), qT(d * C),
        xT(D * C), zT(R * C), hT(R * C), PT(C * C), oT(d * C);
    for (int64_t m = lo; m < hi; m++) {
      const float *kk = x.k + m * C * d, *Am = x.A + m * C, *cm = x.c + m * C, *Gm = x.G + m * C * C;
      const float* g = Gm + (C - 1) * C;  // G's last row: the end state's weights
      transpose(kk, C, d, d, XT.data(), 2 * C);
      transpose(x.v + m * C * d, C, d, d, XT.data() + C, 2 * C);
      for (int64_t p = 0; p < P; p++) {
        const int64_t n = x.memory(m, p);
        const float *w1e = x.W1e + n * dR, *w2e = x.W2e + n * dR;
        // Z^T = W2e X^T; H^T = silu(Z^T), and silu'(z) = sg + h (1 - sg) over the keys' columns
        mm(R, rows, d, w2e, d, XT.data(), 2 * C, ZT.data(), rows, false);
        for (int64_t j = 0; j < R; j++) {
          const float* z = ZT.data() + j * rows;
          float *h = HT.data() + j * rows, *dh = dhT.data() + j * C;
          for (int64_t t = 0; t < C; t++) {
            const float sg = sigmoid(z[t]), hv = z[t] * sg;
            h[t] = hv;
            dh[t] = sg + hv * (1.f - sg);
          }
          for (int64_t t = C; t < rows; t++) h[t] = z[t] * sigmoid(z[t]);
        }
        // Y^T = W1e H^T; err^T = k^T - v^T + y^T (- yv^T); e1^T = W1e^T err^T
        mm(d, rows, R, w1e, R, HT.data(), rows, YT.data(), rows, false);
        for (int64_t i = 0; i < d; i++) {
          const float *x = XT.data() + i * 2 * C, *y = YT.data() + i * rows;
          float* e = errT.data() + i * C;
          if (self_generated)
            for (int64_t t = 0; t < C; t++) e[t] = (x[t] - x[C + t]) + (y[t] - y[C + t]);
          else
            for (int64_t t = 0; t < C; t++) e[t] = (x[t] - x[C + t]) + y[t];
        }
        transpose(w1e, d, R, R, W1eT.data(), d);
        mm(R, C, d, W1eT.data(), d, errT.data(), C, e1T.data(), C, false);
        // s1 = 1 / (1 + |h|^2), s2 = 1 / (sum_j dh_j^2 |W1e[:, j]|^2 + 1)
        for (int64_t j = 0; j < R; j++) norm[j] = 0.f;
        for (int64_t i = 0; i < d; i++)
          for (int64_t j = 0; j < R; j++) norm[j] += w1e[i * R + j] * w1e[i * R + j];
        for (int64_t t = 0; t < C; t++) s1[t] = s2[t] = 0.f;
        for (int64_t j = 0; j < R; j++) {
          const float *h = HT.data() + j * rows, *dh = dhT.data() + j * C;
          for (int64_t t = 0; t < C; t++) {
            s1[t] += h[t] * h[t];
            s2[t] += dh[t] * norm[j] * dh[t];
          }
        }
        for (int64_t t = 0; t < C; t++) {
          s1[t] = 1.f / (1.f + s1[t]);
          s2[t] = 1.f / (s2[t] + 1.f);
        }
        // b1^T = (err + dgd y)^T s1, b2^T = (e1 * dh + dgd z)^T s2
        for (int64_t i = 0; i < d; i++) {
          const float *e = errT.data() + i * C, *y = YT.data() + i * rows;
          float* b = b1T.data() + i * C;
          for (int64_t t = 0; t < C; t++) b[t] = (e[t] + dgd * y[t]) * s1[t];
        }
        for (int64_t j = 0; j < R; j++) {
          const float *e = e1T.data() + j * C, *dh = dhT.data() + j * C, *z = ZT.data() + j * rows;
          float* b = b2T.data() + j * C;
          for (int64_t t = 0; t < C; t++) b[t] = (e[t] * dh[t] + dgd * z[t]) * s2[t];
        }
        // W' = A_C W + c_C S + T a with T = -(b * g)^T (a1 = h's key rows, a2 = k); S' = beta_C S - (b * s)^T a
        transpose(HT.data(), R, C, rows, a1.data(), R);
        const float Ae = Am[C - 1], ce = momentum ? cm[C - 1] : 0.f;
        const float *w1 = x.W1 + n * dR, *w2 = x.W2 + n * dR, *S1p = x.S1 + n * dR, *S2p = x.S2 + n * dR;
        float *w1n = pW1n + n * dR, *w2n = pW2n + n * dR;
        for (int64_t i = 0; i < dR; i++) {
          w1n[i] = Ae * w1[i] + ce * S1p[i];
          w2n[i] = Ae * w2[i] + ce * S2p[i];
        }
        auto outer = [&](const float* coef, float* W1out, float* W2out) {
          scale_columns(b1T.data(), d, C, coef, -1.f, T.data());
          mm(d, R, C, T.data(), C, a1.data(), R, W1out, R, true);
          scale_columns(b2T.data(), R, C, coef, -1.f, T.data());
          mm(R, d, C, T.data(), C, kk, d, W2out, d, true);
        };
        outer(g, w1n, w2n);
        if (momentum) {
          const float be = x.beta[m];
          float *s1n = pS1n + n * dR, *s2n = pS2n + n * dR;
          for (int64_t i = 0; i < dR; i++) {
            s1n[i] = be * S1p[i];
            s2n[i] = be * S2p[i];
          }
          outer(x.s + m * C, s1n, s2n);
        }
        if (!read || p != P - 1) continue;

        // the read: z^T = W2 (A q)^T + S2 (c q)^T - b2^T (G * q k^T)^T, h = silu(z),
        // out^T = q^T + W1 (A h)^T + S1 (c h)^T - b1^T (G * h a1^T)^T
        const float* qm = x.q + m * C * d;
        transpose(qm, C, d, d, qT.data(), C);
        auto masked = [&]() {  // PT[i][j] *= -G[j][i]
          for (int64_t i = 0; i < C; i++)
            for (int64_t j = 0; j < C; j++) PT[i * C + j] *= -Gm[j * C + i];
        };
        scale_columns(qT.data(), d, C, Am, 1.f, xT.data());
        mm(R, C, d, w2, d, xT.data(), C, zT.data(), C, false);
        if (momentum) {
          scale_columns(qT.data(), d, C, cm, 1.f, xT.data());
          mm(R, C, d, S2p, d, xT.data(), C, zT.data(), C, true);
        }
        mm(C, C, d, kk, d, qT.data(), C, PT.data(), C, false);  // (q k^T)^T = k q^T
        masked();
        mm(R, C, C, b2T.data(), C, PT.data(), C, zT.data(), C, true);
        for (int64_t i = 0; i < R * C; i++) hT[i] = zT[i] * sigmoid(zT[i]);
        std::memcpy(oT.data(), qT.data(), d * C * sizeof(float));
        scale_columns(hT.data(), R, C, Am, 1.f, xT.data());
        mm(d, C, R, w1, R, xT.data(), C, oT.data(), C, true);
        if (momentum) {
          scale_columns(hT.data(), R, C, cm, 1.f, xT.data());
          mm(d, C, R, S1p, R, xT.data(), C, oT.data(), C, true);
        }
        mm(C, C, R, a1.data(), R, hT.data(), C, PT.data(), C, false);  // (h a1^T)^T = a1 h^T
        masked();
        mm(d, C, C, b1T.data(), C, PT.data(), C, oT.data(), C, true);
        transpose(oT.data(), d, C, C, pout + m * C * d, d);
      }
    }
  });
  return {W1n, W2n, S1n, S2n, out};
}

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
  for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
  return acc;
}

// out = -(G * X) (C x C), or its transpose
inline void neg_masked(const float* G, const float* X, int64_t C, bool transposed, float* out) {
  for (int64_t i = 0; i < C; i++)
    for (int64_t j = 0; j < C; j++) {
      const int64_t a = transposed ? j * C + i : i * C + j;
      out[i * C + j] = -G[a] * X[a];
    }
}

}  // namespace

// `ChunkUpdateRead.backward` (memory_chunk.py, whose comments derive it), for the inputs of `chunk_forward` and the
// output gradients gW1n, gW2n, gS1n, gS2n (N, ...; zeros where autograd had none) and gout (M, C, d) (empty without a
// read). The chunk's factors are recomputed; each head's P memories in turn, so that the head's sums (keys, values,
// coefficients) need no atomics. Returns gW1e, gW2e, gW1, gW2, gS1, gS2, gk, gv, gA, gc, gG, g_beta (M), g_s, gq
// (gc, g_beta and g_s zero without momentum, where c and s are constants).
std::vector<at::Tensor> chunk_backward(at::Tensor W1e, at::Tensor W2e, at::Tensor W1, at::Tensor W2, at::Tensor S1,
                                       at::Tensor S2, at::Tensor k, at::Tensor v, at::Tensor A, at::Tensor c,
                                       at::Tensor G, at::Tensor beta, at::Tensor s, at::Tensor q, at::Tensor gW1n,
                                       at::Tensor gW2n, at::Tensor gS1n, at::Tensor gS2n, at::Tensor gout, double dgd_,
                                       bool self_generated, bool momentum, int64_t P, int64_t H) {
  const ChunkInputs x({W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta, s, q}, dgd_, self_generated, momentum, P, H);
  const int64_t d = x.d, R = x.R, C = x.C, M = x.M, dR = x.dR, rows = x.rows;
  const float dgd = x.dgd;
  const bool read = x.read;
  const float *pgW1n = gW1n.data_ptr<float>(), *pgW2n = gW2n.data_ptr<float>(), *pgS1n = gS1n.data_ptr<float>(),
              *pgS2n = gS2n.data_ptr<float>(), *pgo = read ? gout.data_ptr<float>() : nullptr;
  auto opts = W1.options();
  auto gW1e = at::empty_like(W1e), gW2e = at::empty_like(W2e), gW1 = at::empty_like(W1), gW2 = at::empty_like(W2),
       gS1 = at::empty_like(S1), gS2 = at::empty_like(S2);
  auto gk = at::zeros_like(k), gv = at::zeros_like(k), gA = at::zeros({M, C}, opts), gc = at::zeros({M, C}, opts),
       gG = at::zeros({M, C, C}, opts), g_beta = at::zeros({M}, opts), g_s = at::zeros({M, C}, opts);
  auto gq = read ? at::empty_like(q) : at::empty({0}, opts);
  float *pgW1e = gW1e.data_ptr<float>(), *pgW2e = gW2e.data_ptr<float>(), *pgW1 = gW1.data_ptr<float>(),
        *pgW2 = gW2.data_ptr<float>(), *pgS1 = gS1.data_ptr<float>(), *pgS2 = gS2.data_ptr<float>(),
        *pgk = gk.data_ptr<float>(), *pgv = gv.data_ptr<float>(), *pgA = gA.data_ptr<float>(),
        *pgc = gc.data_ptr<float>(), *pgG = gG.data_ptr<float>(), *pgbeta = g_beta.data_ptr<float>(),
        *pgs = g_s.data_ptr<float>(), *pgq = read ? gq.data_ptr<float>() : nullptr;

  at::parallel_for(0, M, 1, [&](int64_t lo, int64_t hi) {
    const int64_t D = d > R ? d : R, D2 = rows > D ? rows : D;
    std::vector<float> T1(D * D2), T2(D * D2), Z(rows * R), sg(rows * R), Hh(rows * R), dZ(rows * R), Y(rows * d),
        err(C * d), e1(C * R), norm(R), s1(C), s2(C), gden(C), b1(C * d), b2(C * R), pW(C * (d + R)),
        pS(C * (d + R)), W1eT(R * d), ga1(C * R),
        gb1(C * d), ga2(C * d), gb2(C * R), qa2(C * C), ha1(C * C), CC2(C * C), CC3(C * C), rz(C * R), rh(C * R),
        rdz(C * R),
        qW2(C * R), qS2(C * R), gz(C * R), xs(C * D), gh(C * R), gerr0(C * d), gb2s(C * R), ge1(C * R), gzz(C * R),
        colw(R), gerr(C * d), gY(rows * d), gZ(rows * R), gX(rows * d);
    for (int64_t m = lo; m < hi; m++) {
      const float *kk = x.k + m * C * d, *vv = x.v + m * C * d, *Am = x.A + m * C, *cm = x.c + m * C,
                  *Gm = x.G + m * C * C;
      const float* g = Gm + (C - 1) * C;
      const float* sm = momentum ? x.s + m * C : nullptr;
      float *gAm = pgA + m * C, *gcm = pgc + m * C, *gGm = pgG + m * C * C;
      for (int64_t p = 0; p < P; p++) {
        const int64_t n = x.memory(m, p);
        const float *w1e = x.W1e + n * dR, *w2e = x.W2e + n * dR, *w1 = x.W1 + n * dR, *w2 = x.W2 + n * dR,
                    *S1p = x.S1 + n * dR, *S2p = x.S2 + n * dR, *g1 = pgW1n + n * dR, *g2 = pgW2n + n * dR,
                    *h1 = pgS1n + n * dR, *h2 = pgS2n + n * dR;
        float *oW1 = pgW1 + n * dR, *oW2 = pgW2 + n * dR, *oS1 = pgS1 + n * dR, *oS2 = pgS2 + n * dR;

        // the factors, as in the forward (Z over all rows, act' over all rows)
        transpose(w2e, R, d, d, T1.data(), R);  // W2e^T (d x R)
        mm(C, R, d, kk, d, T1.data(), R, Z.data(), R, false);
        if (self_generated) mm(C, R, d, vv, d, T1.data(), R, Z.data() + C * R, R, false);
        for (int64_t i = 0; i < rows * R; i++) {
          const float sv = sigmoid(Z[i]), hv = Z[i] * sv;
          sg[i] = sv;
          Hh[i] = hv;
          dZ[i] = sv + hv * (1.f - sv);
        }
        transpose(w1e, d, R, R, W1eT.data(), d);
        mm(rows, d, R, Hh.data(), R, W1eT.data(), d, Y.data(), d, false);
        for (int64_t t = 0; t < C; t++)
          for (int64_t i = 0; i < d; i++) {
            const float kv = kk[t * d + i] - vv[t * d + i];
            err[t * d + i] = self_generated ? kv + (Y[t * d + i] - Y[(C + t) * d + i]) : kv + Y[t * d + i];
          }
        mm(C, R, d, err.data(), d, w1e, R, e1.data(), R, false);
        for (int64_t j = 0; j < R; j++) norm[j] = 0.f;
        for (int64_t i = 0; i < d; i++)
          for (int64_t j = 0; j < R; j++) norm[j] += w1e[i * R + j] * w1e[i * R + j];
        for (int64_t t = 0; t < C; t++) {
          const float *h = Hh.data() + t * R, *dh = dZ.data() + t * R;
          float hh = 0.f, den = 0.f;
          for (int64_t j = 0; j < R; j++) {
            hh += h[j] * h[j];
            den += dh[j] * norm[j] * dh[j];
          }
          s1[t] = 1.f / (1.f + hh);
          s2[t] = 1.f / (den + 1.f);
          for (int64_t i = 0; i < d; i++) b1[t * d + i] = (err[t * d + i] + dgd * Y[t * d + i]) * s1[t];
          for (int64_t j = 0; j < R; j++)
            b2[t * R + j] = (e1[t * R + j] * dh[j] + dgd * Z[t * R + j]) * s2[t];
        }
        const float* a1 = Hh.data();  // the keys' rows

        // end state: W' = A_C W + c_C S - sum_i g_i b_i a_i^T, S' = beta_C S - sum_i s_i b_i a_i^T (or S' = S)
        const float Ae = Am[C - 1], ce = momentum ? cm[C - 1] : 0.f, be = momentum ? x.beta[m] : 0.f;
        for (int64_t i = 0; i < dR; i++) {
          oW1[i] = Ae * g1[i];
          oW2[i] = Ae * g2[i];
          oS1[i] = momentum ? ce * g1[i] + be * h1[i] : h1[i];
          oS2[i] = momentum ? ce * g2[i] + be * h2[i] : h2[i];
        }
        gAm[C - 1] += dot(g1, w1, dR) + dot(g2, w2, dR);
        if (momentum) {
          gcm[C - 1] += dot(g1, S1p, dR) + dot(g2, S2p, dR);
          pgbeta[m] += dot(h1, S1p, dR) + dot(h2, S2p, dR);
        }
        // p1 = a1 gW1'^T (C x d), p2 = a2 gW2'^T (C x R), and the same with gS'
        transpose(g1, d, R, R, T1.data(), d);
        mm(C, d, R, a1, R, T1.data(), d, pW.data(), d, false);
        transpose(g2, R, d, d, T2.data(), R);
        mm(C, R, d, kk, d, T2.data(), R, pW.data() + C * d, R, false);
        if (momentum) {
          transpose(h1, d, R, R, T1.data(), d);
          mm(C, d, R, a1, R, T1.data(), d, pS.data(), d, false);
          transpose(h2, R, d, d, T2.data(), R);
          mm(C, R, d, kk, d, T2.data(), R, pS.data() + C * d, R, false);
        }
        const float *p1 = pW.data(), *p2 = pW.data() + C * d, *q1 = pS.data(), *q2 = pS.data() + C * d;
        for (int64_t t = 0; t < C; t++) {
          float gg = 0.f, gs = 0.f;
          for (int64_t i = 0; i < d; i++) {
            gb1[t * d + i] = -g[t] * p1[t * d + i] - (momentum ? sm[t] * q1[t * d + i] : 0.f);
            gg += p1[t * d + i] * b1[t * d + i];
            if (momentum) gs += q1[t * d + i] * b1[t * d + i];
          }
          for (int64_t j = 0; j < R; j++) {
            gb2[t * R + j] = -g[t] * p2[t * R + j] - (momentum ? sm[t] * q2[t * R + j] : 0.f);
            gg += p2[t * R + j] * b2[t * R + j];
            if (momentum) gs += q2[t * R + j] * b2[t * R + j];
          }
          gGm[(C - 1) * C + t] -= gg;
          if (momentum) pgs[m * C + t] -= gs;
        }
        // ga1 = -(g b1) gW1' - (s b1) gS1', ga2 = -(g b2) gW2' - (s b2) gS2'
        scale_rows(b1.data(), C, d, g, -1.f, xs.data());
        mm(C, R, d, xs.data(), d, g1, R, ga1.data(), R, false);
        if (momentum) {
          scale_rows(b1.data(), C, d, sm, -1.f, xs.data());
          mm(C, R, d, xs.data(), d, h1, R, ga1.data(), R, true);
        }
        scale_rows(b2.data(), C, R, g, -1.f, xs.data());
        mm(C, d, R, xs.data(), R, g2, d, ga2.data(), d, false);
        if (momentum) {
          scale_rows(b2.data(), C, R, sm, -1.f, xs.data());
          mm(C, d, R, xs.data(), R, h2, d, ga2.data(), d, true);
        }

        if (read && p == P - 1) {
          // z = A (q W2^T) + c (q S2^T) - (G * q k^T) b2, h = silu(z); out = q + A (h W1^T) + c (h S1^T)
          // - (G * h a1^T) b1
          const float *qm = x.q + m * C * d, *go = pgo + m * C * d;
          transpose(w2, R, d, d, T1.data(), R);
          mm(C, R, d, qm, d, T1.data(), R, qW2.data(), R, false);
          if (momentum) {
            transpose(S2p, R, d, d, T1.data(), R);
            mm(C, R, d, qm, d, T1.data(), R, qS2.data(), R, false);
          }
          transpose(kk, C, d, d, T1.data(), C);
          mm(C, C, d, qm, d, T1.data(), C, qa2.data(), C, false);  // q k^T
          neg_masked(Gm, qa2.data(), C, false, CC2.data());
          for (int64_t t = 0; t < C; t++)
            for (int64_t j = 0; j < R; j++)
              rz[t * R + j] = Am[t] * qW2[t * R + j] + (momentum ? cm[t] * qS2[t * R + j] : 0.f);
          mm(C, R, C, CC2.data(), C, b2.data(), R, rz.data(), R, true);
          for (int64_t i = 0; i < C * R; i++) {
            const float sv = sigmoid(rz[i]), hv = rz[i] * sv;
            rh[i] = hv;
            rdz[i] = sv + hv * (1.f - sv);
          }
          // gA_j = <h_j W1^T, go_j>, gc_j = <h_j S1^T, go_j>: as <h_j, go_j W1>
          mm(C, R, d, go, d, w1, R, gz.data(), R, false);  // go W1 (C x R)
          if (momentum) mm(C, R, d, go, d, S1p, R, xs.data(), R, false);  // go S1
          for (int64_t t = 0; t < C; t++) {
            gAm[t] += dot(rh.data() + t * R, gz.data() + t * R, R);
            if (momentum) gcm[t] += dot(rh.data() + t * R, xs.data() + t * R, R);
          }
          // Q1 = go b1^T, gG -= Q1 * (h a1^T)
          transpose(b1.data(), C, d, d, T1.data(), C);
          mm(C, C, d, go, d, T1.data(), C, CC3.data(), C, false);  // Q1
          transpose(a1, C, R, R, T2.data(), C);
          mm(C, C, R, rh.data(), R, T2.data(), C, ha1.data(), C, false);  // h a1^T
          for (int64_t i = 0; i < C * C; i++) gGm[i] -= CC3[i] * ha1[i];
          // gW1 += (A go)^T h, gS1 += (c go)^T h
          transpose(go, C, d, d, T1.data(), C);
          scale_columns(T1.data(), d, C, Am, 1.f, T2.data());
          mm(d, R, C, T2.data(), C, rh.data(), R, oW1, R, true);
          if (momentum) {
            scale_columns(T1.data(), d, C, cm, 1.f, T2.data());
            mm(d, R, C, T2.data(), C, rh.data(), R, oS1, R, true);
          }
          // ga1 -= (G Q1)^T h, gb1 -= (G ha1)^T go
          neg_masked(Gm, CC3.data(), C, true, CC2.data());
          mm(C, R, C, CC2.data(), C, rh.data(), R, ga1.data(), R, true);
          neg_masked(Gm, ha1.data(), C, true, CC2.data());
          mm(C, d, C, CC2.data(), C, go, d, gb1.data(), d, true);
          // gz = (A go W1 + c go S1 - (G Q1) a1) * silu'(z)
          for (int64_t t = 0; t < C; t++)
            for (int64_t j = 0; j < R; j++)
              gz[t * R + j] = Am[t] * gz[t * R + j] + (momentum ? cm[t] * xs[t * R + j] : 0.f);
          neg_masked(Gm, CC3.data(), C, false, CC2.data());
          mm(C, R, C, CC2.data(), C, a1, R, gz.data(), R, true);
          for (int64_t i = 0; i < C * R; i++) gz[i] *= rdz[i];
          for (int64_t t = 0; t < C; t++) {
            gAm[t] += dot(qW2.data() + t * R, gz.data() + t * R, R);
            if (momentum) gcm[t] += dot(qS2.data() + t * R, gz.data() + t * R, R);
          }
          // Q2 = gz b2^T, gG -= Q2 * (q k^T)
          transpose(b2.data(), C, R, R, T1.data(), C);
          mm(C, C, R, gz.data(), R, T1.data(), C, CC3.data(), C, false);  // Q2
          for (int64_t i = 0; i < C * C; i++) gGm[i] -= CC3[i] * qa2[i];
          // gW2 += (A gz)^T q, gS2 += (c gz)^T q
          for (int64_t j = 0; j < R; j++)
            for (int64_t t = 0; t < C; t++) T2[j * C + t] = gz[t * R + j] * Am[t];
          mm(R, d, C, T2.data(), C, qm, d, oW2, d, true);
          if (momentum) {
            for (int64_t j = 0; j < R; j++)
              for (int64_t t = 0; t < C; t++) T2[j * C + t] = gz[t * R + j] * cm[t];
            mm(R, d, C, T2.data(), C, qm, d, oS2, d, true);
          }
          // ga2 -= (G Q2)^T q, gb2 -= (G qa2)^T gz
          neg_masked(Gm, CC3.data(), C, true, CC2.data());
          mm(C, d, C, CC2.data(), C, qm, d, ga2.data(), d, true);
          neg_masked(Gm, qa2.data(), C, true, CC2.data());
          mm(C, R, C, CC2.data(), C, gz.data(), R, gb2.data(), R, true);
          // gq = go + A gz W2 + c gz S2 - (G Q2) k
          float* gqm = pgq + m * C * d;
          std::memcpy(gqm, go, C * d * sizeof(float));
          scale_rows(gz.data(), C, R, Am, 1.f, xs.data());
          mm(C, d, R, xs.data(), R, w2, d, gqm, d, true);
          if (momentum) {
            scale_rows(gz.data(), C, R, cm, 1.f, xs.data());
            mm(C, d, R, xs.data(), R, S2p, d, gqm, d, true);
          }
          neg_masked(Gm, CC3.data(), C, false, CC2.data());
          mm(C, d, C, CC2.data(), C, kk, d, gqm, d, true);
        }

        // the factors' backward (`_factor_backward`): to W1e, W2e and X = [k; v]
        for (int64_t t = 0; t < C; t++) {
          const float *h = Hh.data() + t * R, *dh = dZ.data() + t * R, *sgt = sg.data() + t * R;
          const float kap = dot(gb1.data() + t * d, b1.data() + t * d, d) * s1[t];
          const float g_den = -dot(gb2.data() + t * R, b2.data() + t * R, R) * s2[t];
          for (int64_t i = 0; i < d; i++) gerr0[t * d + i] = gb1[t * d + i] * s1[t];
          for (int64_t j = 0; j < R; j++) {
            gh[t * R + j] = ga1[t * R + j] - 2.f * kap * h[j];
            const float gs2 = gb2[t * R + j] * s2[t];
            ge1[t * R + j] = gs2 * dh[j];
            const float act2 = sgt[j] + dh[j] * (1.f - 2.f * sgt[j]);  // silu''
            gzz[t * R + j] = (gs2 * e1[t * R + j] + 2.f * dh[j] * norm[j] * g_den) * act2 + dgd * gs2;
          }
          gden[t] = g_den;
        }
        for (int64_t j = 0; j < R; j++) colw[j] = 0.f;
        for (int64_t t = 0; t < C; t++)
          for (int64_t j = 0; j < R; j++) colw[j] += gden[t] * dZ[t * R + j] * dZ[t * R + j];
        float* oW1e = pgW1e + n * dR;
        for (int64_t i = 0; i < d; i++)
          for (int64_t j = 0; j < R; j++) oW1e[i * R + j] = 2.f * colw[j] * w1e[i * R + j];
        transpose(err.data(), C, d, d, T1.data(), C);  // err^T (d x C)
        mm(d, R, C, T1.data(), C, ge1.data(), R, oW1e, R, true);
        std::memcpy(gerr.data(), gerr0.data(), C * d * sizeof(float));
        mm(C, d, R, ge1.data(), R, W1eT.data(), d, gerr.data(), d, true);
        for (int64_t t = 0; t < C; t++)
          for (int64_t i = 0; i < d; i++) {
            gY[t * d + i] = gerr[t * d + i] + dgd * gerr0[t * d + i];
            if (self_generated) gY[(C + t) * d + i] = -gerr[t * d + i];
          }
        transpose(gY.data(), rows, d, d, T1.data(), rows);  // gY^T (d x rows)
        mm(d, R, rows, T1.data(), rows, Hh.data(), R, oW1e, R, true);
        mm(rows, R, d, gY.data(), d, w1e, R, gZ.data(), R, false);
        for (int64_t i = 0; i < rows * R; i++) gZ[i] *= dZ[i];
        for (int64_t t = 0; t < C; t++)
          for (int64_t j = 0; j < R; j++) gZ[t * R + j] += gh[t * R + j] * dZ[t * R + j] + gzz[t * R + j];
        transpose(gZ.data(), rows, R, R, T1.data(), rows);  // gZ^T (R x rows)
        float* oW2e = pgW2e + n * dR;
        mm(R, d, C, T1.data(), rows, kk, d, oW2e, d, false);
        if (self_generated) mm(R, d, C, T1.data() + C, rows, vv, d, oW2e, d, true);
        mm(rows, d, R, gZ.data(), R, w2e, d, gX.data(), d, false);
        float *gkm = pgk + m * C * d, *gvm = pgv + m * C * d;
        for (int64_t t = 0; t < C; t++)
          for (int64_t i = 0; i < d; i++) {
            const int64_t x = t * d + i;
            gkm[x] += gX[x] + ga2[x] + gerr[x];
            gvm[x] += self_generated ? gX[C * d + x] - gerr[x] : -gerr[x];
          }
      }
    }
  });
  return {gW1e, gW2e, gW1, gW2, gS1, gS2, gk, gv, gA, gc, gG, g_beta, g_s, gq};
}

// `chunk_coefficients` per row (eta, log_alpha, active (rows, C), log_beta (rows) or empty), by the recurrences the
// closed form sums, O(C^2) per row and no C x C exp: with alpha_j = exp(log alpha_j), b_j = beta^{m_j},
//   gamma_ji = alpha_j gamma_{j-1,i} + m_j mom_ji,  mom_ji = b_j mom_{j-1,i} (mom_ii = 1),
//   c_j = alpha_j c_{j-1} + m_j B_j  (B_j = beta^{n_j});
// without momentum gamma_ji = alpha_j gamma_{j-1,i}, gamma_ii = m_i. G = gamma eta_i, s_i = mom_Ci eta_i.
std::vector<at::Tensor> coefficients(at::Tensor eta, at::Tensor log_alpha, at::Tensor log_beta, at::Tensor active) {
  const int64_t rows = eta.size(0), C = eta.size(1);
  const bool momentum = log_beta.numel() > 0;
  auto opts = eta.options();
  auto A = at::empty({rows, C}, opts), G = at::empty({rows, C, C}, opts);
  auto c = at::zeros({rows, C}, opts), beta_end = at::empty({rows}, opts), s = at::empty({rows, C}, opts);
  const float *pe = eta.data_ptr<float>(), *pl = log_alpha.data_ptr<float>(), *pm = active.data_ptr<float>();
  const float* pb = momentum ? log_beta.data_ptr<float>() : nullptr;
  float *pA = A.data_ptr<float>(), *pG = G.data_ptr<float>(), *pc = c.data_ptr<float>(),
        *pbe = beta_end.data_ptr<float>(), *ps = s.data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> gam(C), mom(C);
    for (int64_t r = lo; r < hi; r++) {
      const float *e = pe + r * C, *la = pl + r * C, *m = pm + r * C;
      float* Gr = pG + r * C * C;
      const float beta = momentum ? std::exp(pb[r]) : 0.f;
      float logA = 0.f, logB = 0.f, cj = 0.f;
      for (int64_t j = 0; j < C; j++) {
        logA += la[j];
        pA[r * C + j] = std::exp(logA);
        const float alpha = std::exp(la[j]);
        if (momentum) {
          const float b = m[j] != 0.f ? beta : 1.f;
          logB += m[j] * pb[r];
          cj = alpha * cj + m[j] * std::exp(logB);
          pc[r * C + j] = cj;
          for (int64_t i = 0; i < j; i++) {
            mom[i] *= b;
            gam[i] = alpha * gam[i] + m[j] * mom[i];
          }
          mom[j] = 1.f;
          gam[j] = m[j];
        } else {
          for (int64_t i = 0; i < j; i++) gam[i] *= alpha;
          gam[j] = m[j];
        }
        for (int64_t i = 0; i <= j; i++) Gr[j * C + i] = gam[i] * e[i];
        for (int64_t i = j + 1; i < C; i++) Gr[j * C + i] = 0.f;
      }
      if (momentum) {
        pbe[r] = std::exp(logB);
        for (int64_t i = 0; i < C; i++) ps[r * C + i] = mom[i] * e[i];
      }
    }
  });
  return {A, c, G, beta_end, s};
}
"""

_MODULE = None  # the built extension, or False once its build failed
_SWITCH = threading.local()  # `disabled()` turns it off in this thread (the config's memory_kernel="torch")
CALLS = 0  # chunks it ran (the tests make sure it ran)


def _name() -> str:
    """The build is for this machine's instruction set (-march=native): the name carries the source's and the CPU
    flags' hash, so a cache shared between machines never loads another CPU's build."""
    flags = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    return "hope_memory_cpu_" + hashlib.sha1((_SOURCE + flags).encode()).hexdigest()[:12]


def _load():
    global _MODULE
    if _MODULE is None:
        # torch's JIT build runs `ninja` from PATH: a virtualenv's own (the `ninja` wheel) is there only once the
        # environment is activated
        here = os.path.dirname(sys.executable)
        if shutil.which("ninja") is None and shutil.which("ninja", path=here):
            os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")
        try:
            from torch.utils.cpp_extension import load_inline

            _MODULE = load_inline(_name(), cpp_sources=_SOURCE,
                                  functions=["chunk_forward", "chunk_backward", "coefficients"],
                                  extra_cflags=["-O3", "-march=native"], verbose=False)
        except Exception as error:  # no compiler, no headers: the PyTorch path
            detail = str(error).strip()[-400:]  # the end of the build log says what failed
            warnings.warn(f"HOPE's CPU chunk kernel did not build ({type(error).__name__}: ...{detail}); the memories "
                          "run in PyTorch (same results, slower)", stacklevel=3)
            _MODULE = False
    return _MODULE


def available() -> bool:
    """Whether the extension is built (building it now if it has not been tried)."""
    return bool(_load())


@contextlib.contextmanager
def disabled(flag: bool = True):
    """Within the block (when `flag`), chunks run in PyTorch."""
    before = enabled()
    _SWITCH.on = before and not flag
    try:
        yield
    finally:
        _SWITCH.on = before


def enabled() -> bool:
    """Whether `disabled()` is off here (checkpointed segments take it along to their recomputation)."""
    return getattr(_SWITCH, "on", True)


def applies(*tensors) -> bool:
    """A float32 CPU chunk outside autocast, the kernel enabled and built."""
    if not enabled() or torch.compiler.is_compiling() or os.environ.get("HOPE_CPU_KERNEL", "1") == "0":
        return False
    if torch.is_autocast_enabled("cpu") or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return available()


def _kernel_inputs(W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta_end, s_end, q, momentum):
    """The node's saved tensors as the C++ functions take them: contiguous, values as large as the keys, beta_C flat
    (beta and s are unused placeholders without momentum)."""
    flat = [t.contiguous() for t in (W1e, W2e, W1, W2, S1, S2, k, torch.broadcast_to(v, k.shape), A, c, G)]
    beta, s = (beta_end.reshape(-1).contiguous(), s_end.contiguous()) if momentum else (A, A)
    return (*flat, beta, s, q.contiguous())


def chunk_forward(W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta_end, s_end, q, act, dgd, self_generated, momentum,
                  read_groups):
    """`ChunkUpdateRead.forward`'s values, (W1', W2', S1', S2', out) (out is q, empty, without a read)."""
    global CALLS
    CALLS += 1
    inputs = _kernel_inputs(W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta_end, s_end, q, momentum)
    return _MODULE.chunk_forward(*inputs, float(dgd), bool(self_generated), bool(momentum), *read_groups)


def chunk_backward(saved, grads, dgd, self_generated, momentum, read_groups):
    """`ChunkUpdateRead.backward`'s gradients from its saved tensors and the output gradients (None: zero)."""
    global CALLS
    CALLS += 1
    W1, W2, S1, S2, k, v, beta_end, q = (saved[i] for i in (2, 3, 4, 5, 6, 7, 11, 13))
    g_new = [torch.zeros_like(t) if g is None else g.contiguous() for g, t in zip(grads[:4], (W1, W2, S1, S2))]
    g_out = grads[4] if q.numel() and grads[4] is not None else torch.zeros_like(q)
    out = _MODULE.chunk_backward(*_kernel_inputs(*saved, momentum), *g_new, g_out.contiguous(), float(dgd),
                                 bool(self_generated), bool(momentum), *read_groups)
    gk, gv = out[6], out[7]
    if v.shape != k.shape:  # values broadcast against the keys
        gv = gv.sum_to_size(v.shape)
    g_beta, g_s = (out[11].view(beta_end.shape), out[12]) if momentum else (None, None)
    return (*out[:6], gk, gv, out[8], out[9], out[10], g_beta, g_s, out[13] if q.numel() else None)


def coefficients(eta, log_alpha, log_beta, active):
    """`fast_weight_memory.chunk_coefficients`' values (A, c, G, beta_C, s; the last two None without momentum) for
    eta, log_alpha (B, G, [n,] C), active (B, 1, [n,] C), log_beta (G,) or None."""
    global CALLS
    CALLS += 1
    shape, C = eta.shape[:-1], eta.shape[-1]
    flat = lambda t: t.expand(*shape, C).reshape(-1, C).contiguous()  # noqa: E731
    lb = eta.new_empty(0)
    if log_beta is not None:
        lb = log_beta.view(1, -1, *([1] * (eta.dim() - 3))).expand(shape).reshape(-1).contiguous()
    A, c, G, beta_end, s = _MODULE.coefficients(flat(eta), flat(log_alpha), lb, flat(active))
    A, c, G = A.view(*shape, C), c.view(*shape, C), G.view(*shape, C, C)
    if log_beta is None:
        return A, c, G, None, None
    return A, c, G, beta_end.view(*shape, 1, 1), s.view(*shape, C)

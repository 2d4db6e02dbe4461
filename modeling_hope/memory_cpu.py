"""The forward of one chunk of a group of fast-weight memories (`memory_chunk.ChunkUpdateRead.forward`) as one C++
call, for float32 on the CPU.

In PyTorch a chunk's forward is about sixty small operations (products of 64 x 48 matrices, elementwise passes of a few
thousand entries), and their Python dispatch costs as much as their work. Here the same math walks the memories one by
one with each memory's tensors in cache, the elementwise terms fused into loops. The products go through oneDNN's
block GEMM (`at::native::cpublas::brgemm`, what inductor's CPU GEMM templates call; it falls back to the BLAS gemm where
oneDNN's micro-kernels do not run): on AMD processors MKL takes its AVX2 path, and at these sizes oneDNN's AVX-512
kernels run 2.5x faster (about 260 against 100 GFLOP/s on the benchmark machine). Same equations, in the same order
(`memory_chunk.py` has them in its docstrings):

    Z = X W2e^T (X = [k; v] or k),  H = act(Z),  Y = H W1e^T,  err = k - v + y (- yv),  e1 = err W1e
    b1 = (err + dgd y) s1,  b2 = (e1 * act'(z) + dgd z) s2,  a1 = act(z),  a2 = k
    W' = A_C W + c_C S - sum_i g_i b_i a_i^T,  S' = beta_C S - sum_i s_i b_i a_i^T
    out_j = q_j + W1_j act(W2_j q_j),  W_j = A_j W + c_j S - sum_{i<=j} G_ji b_i a_i^T

The extension is compiled on first use (about 25 s, `torch.utils.cpp_extension`, cached on disk for later processes)
with the machine's own instruction set; without a C++ compiler, or where the build fails, a warning says so once and
the chunk runs in PyTorch. The node's backward stays in PyTorch (its inputs are the same either way). Not under CPU
autocast: there PyTorch's products run in bfloat16, and this path would not give the same values."""

import contextlib
import hashlib
import os
import shutil
import sys
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

inline float sigmoid(float z) { return 1.f / (1.f + exp_approx(-z)); }

}  // namespace

// See the module's docstring. W* (N, d, R) / (N, R, d) contiguous float32; k, v, q (M, C, d) with M = N / P; A, c, s
// (M, C); G (M, C, C); beta (M). Memory n = (b P + p) H + h reads its head's row m = b H + h; the reading memory is
// p = P - 1. Everything runs transposed (tokens along the columns: X^T = [k; v]^T is (d, 2C)), so that each product's
// operands are at hand in row-major order and only W1e and a memory's a1 need a transpose; silu (act = silu only).
std::vector<at::Tensor> chunk_forward(at::Tensor W1e, at::Tensor W2e, at::Tensor W1, at::Tensor W2, at::Tensor S1,
                                      at::Tensor S2, at::Tensor k, at::Tensor v, at::Tensor A, at::Tensor c,
                                      at::Tensor G, at::Tensor beta, at::Tensor s, at::Tensor q, double dgd_,
                                      bool self_generated, bool momentum, int64_t P, int64_t H) {
  const int64_t N = W1.size(0), d = W1.size(1), R = W1.size(2), C = k.size(1), M = N / P, dR = d * R;
  const int64_t rows = self_generated ? 2 * C : C;
  const float dgd = static_cast<float>(dgd_);
  const bool read = q.numel() > 0;
  const float *pW1e = W1e.data_ptr<float>(), *pW2e = W2e.data_ptr<float>(), *pW1 = W1.data_ptr<float>(),
              *pW2 = W2.data_ptr<float>(), *pS1 = S1.data_ptr<float>(), *pS2 = S2.data_ptr<float>(),
              *pk = k.data_ptr<float>(), *pv = v.data_ptr<float>(), *pA = A.data_ptr<float>(),
              *pc = c.data_ptr<float>(), *pG = G.data_ptr<float>(), *pq = read ? q.data_ptr<float>() : nullptr;
  const float *pbeta = momentum ? beta.data_ptr<float>() : nullptr, *ps = momentum ? s.data_ptr<float>() : nullptr;
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
      const float *kk = pk + m * C * d, *Am = pA + m * C, *cm = pc + m * C, *Gm = pG + m * C * C;
      const float* g = Gm + (C - 1) * C;  // G's last row: the end state's weights
      transpose(kk, C, d, d, XT.data(), 2 * C);
      transpose(pv + m * C * d, C, d, d, XT.data() + C, 2 * C);
      for (int64_t p = 0; p < P; p++) {
        const int64_t n = ((m / H) * P + p) * H + m % H;
        const float *w1e = pW1e + n * dR, *w2e = pW2e + n * dR;
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
        const float *w1 = pW1 + n * dR, *w2 = pW2 + n * dR, *S1p = pS1 + n * dR, *S2p = pS2 + n * dR;
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
          const float be = pbeta[m];
          float *s1n = pS1n + n * dR, *s2n = pS2n + n * dR;
          for (int64_t i = 0; i < dR; i++) {
            s1n[i] = be * S1p[i];
            s2n[i] = be * S2p[i];
          }
          outer(ps + m * C, s1n, s2n);
        }
        if (!read || p != P - 1) continue;

        // the read: z^T = W2 (A q)^T + S2 (c q)^T - b2^T (G * q k^T)^T, h = silu(z),
        // out^T = q^T + W1 (A h)^T + S1 (c h)^T - b1^T (G * h a1^T)^T
        const float* qm = pq + m * C * d;
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
ENABLED = True  # `disabled()` turns it off (the config's memory_kernel="torch")
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

            _MODULE = load_inline(_name(), cpp_sources=_SOURCE, functions=["chunk_forward", "coefficients"],
                                  extra_cflags=["-O3", "-march=native"], verbose=False)
        except Exception as error:  # no compiler, no headers: the PyTorch path
            warnings.warn(f"HOPE's CPU chunk kernel did not build ({type(error).__name__}: {error}); the memories run "
                          "in PyTorch (same results, slower)", stacklevel=3)
            _MODULE = False
    return _MODULE


def available() -> bool:
    """Whether the extension is built (building it now if it has not been tried)."""
    return bool(_load())


@contextlib.contextmanager
def disabled(flag: bool = True):
    """Within the block (when `flag`), chunks run in PyTorch."""
    global ENABLED
    before, ENABLED = ENABLED, ENABLED and not flag
    try:
        yield
    finally:
        ENABLED = before


def applies(*tensors) -> bool:
    """A float32 CPU chunk outside autocast, the kernel enabled and built."""
    if not ENABLED or torch.compiler.is_compiling() or os.environ.get("HOPE_CPU_KERNEL", "1") == "0":
        return False
    if torch.is_autocast_enabled("cpu") or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return available()


def chunk_forward(W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta_end, s_end, q, act, dgd, self_generated, momentum,
                  read_groups):
    """`ChunkUpdateRead.forward`'s values, (W1', W2', S1', S2', out) (out is q, empty, without a read)."""
    global CALLS
    CALLS += 1
    P, H = read_groups
    flat = [t.contiguous() for t in (W1e, W2e, W1, W2, S1, S2, k, v, A, c, G)]
    beta, s = (beta_end.reshape(-1).contiguous(), s_end.contiguous()) if momentum else (A, A)
    if not self_generated:
        flat[7] = torch.broadcast_to(v, k.shape).contiguous()
    return _MODULE.chunk_forward(*flat, beta, s, q.contiguous(), float(dgd), bool(self_generated), bool(momentum), P,
                                 H)


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

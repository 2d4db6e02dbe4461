"""The fused chunk loop of self-modifying Titans as one Triton kernel, for forwards without autograd (prefill, decoding,
evaluation) on a GPU.

`chunked_fused_scan` runs the chunk loop in Python: per chunk of a layer, the projection memories' reads, `produce`, the
closed-form coefficients, the five memories' rank-one updates and the output memory's dual-form read, about a hundred
small kernels. On a GPU each of them is a launch of microseconds, so a layer costs its launches, not its FLOPs. Here one
program per (batch row, head) walks all the chunks of the call, with the same math as `memory_chunk.py` (the equations
are in its docstrings):

    boxes:   out_box = u_box + W1e act(W2e u_box)  (adaptive boxes, at the chunk-start weights W_e)
    produce: k = l2norm(out_k), v = out_v (l2norm if value_norm), eta = eta_max sigmoid(w_eta . out_eta + b_eta),
             log alpha = logsigmoid(w_alpha . out_alpha + b_alpha)
    coefficients A, c, G, beta_C, s (`fast_weight_memory.chunk_coefficients`), per head, shared by the memories
    factors: a1 = act(W2e k), b1 = (e + dgd y) s1, a2 = k, b2 = ((W1e^T e) * act'(W2e k) + dgd W2e k) s2
    update:  W' = A_C W + c_C S - sum_i G_Ci b_i a_i^T,  S' = beta_C S - sum_i s_i b_i a_i^T
    read:    o_j = q_j + W1_j act(W2_j q_j), W_j = A_j W + c_j S - sum_{i<=j} G_ji b_i a_i^T (never formed)

It covers every no-grad call of the fused scan (`applies`): a prompt, a decoded token, padded batches and rows at
different counts (each program walks its own row's pieces); the model takes the PyTorch path whenever autograd records
(training needs that path's backward). Sizes that are not powers of two (hope-5m's heads of 48) are padded to the next
one inside the kernel, with zeros that stay zero. Triton is optional: without it (or without a GPU) this module is never
called. With `TRITON_INTERPRET=1` (set before torch and Triton are imported) and `ON_CPU`, Triton's interpreter runs the
kernel on CPU tensors: that is how the tests check it against the PyTorch path without a GPU."""

import contextlib
import os

import torch

from .memory_chunk import FastWeights

try:
    import triton
    import triton.language as tl
except ImportError:  # the kernel is optional
    triton = tl = None


CALLS = 0  # calls that ran the kernel (the tests and the GPU check make sure it ran)
ON_CPU = False  # run it on CPU tensors too, under Triton's interpreter (the tests turn this on)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> bool:
    return triton is not None


def applies(inputs, chunk: int, projection_chunk: int) -> bool:
    """Whether the kernel can run this call: Triton present, a CUDA tensor (or the interpreter), no autograd, equal
    chunk sizes. (Rows may be padded and at different counts: the model's inputs are compacted, each row's real
    tokens first.)"""
    if triton is None or torch.is_grad_enabled() or chunk != projection_chunk:
        return False
    return inputs.is_cuda or (ON_CPU and interpreting())


def _dot_precision(dtype) -> str:
    """The products' precision, as torch's own matmuls would take it: TensorFloat-32 for half-precision states and
    for float32 where `torch.set_float32_matmul_precision` allows it; IEEE float32 (or float64) otherwise. (The
    first call compiles the kernel, Triton caches it on disk: under 30 s for a bf16 model on an H100, about 100 s for
    the IEEE float32 one.)"""
    if dtype == torch.float64 or (dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"):
        return "ieee"
    return "tf32"


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


@torch.compiler.disable
def fused_scan(state: FastWeights, queries, inputs, adaptive, eta_weight, eta_bias, alpha_weight, alpha_bias,
               log_beta, mask, counts, chunk: int, eta_max: float, value_norm: bool, act: str, dgd: float,
               self_generated: bool, lr_scale: float):
    """Same results as `chunked_fused_scan` with the mixer's `produce`, for a call that `applies`. state: (B, P, H,
    ...) tensors, the output memory last; queries (B, H, T, d); inputs (B, 4, H, T, d); mask (B, T), each row's
    real tokens first; counts (B,) tokens each row had seen. Returns (outputs (B, H, T, d),
    the new state)."""
    global CALLS
    CALLS += 1
    B, P, H, d, R = state.W1.shape
    T = queries.shape[2]
    offsets = (counts.expand(B) % chunk).to(torch.int32).contiguous()
    lengths = mask.sum(-1, dtype=torch.int32).contiguous()
    new = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in state]
    old = [t.contiguous() for t in state]
    out = torch.clone(queries, memory_format=torch.contiguous_format)  # padded positions read M(q) as q
    has_alpha = alpha_weight is not None
    compute = tl.float64 if state.W1.dtype == torch.float64 else tl.float32
    from .fused_scan_kernel import fused_scan_kernel

    # on the tensors' GPU (a device map may spread the layers over several)
    with torch.cuda.device(queries.device) if queries.is_cuda else contextlib.nullcontext():
        fused_scan_kernel[(B * H,)](
            *old, *new, inputs.contiguous(), queries.contiguous(), out, eta_weight.contiguous(), eta_bias.contiguous(),
            alpha_weight.contiguous() if has_alpha else eta_weight, alpha_bias if has_alpha else eta_bias,
            log_beta if log_beta is not None else eta_bias,
            offsets, lengths, T, H, float(eta_max), float(lr_scale), float(dgd),
            # CB: a piece holds at most min(chunk, T) tokens (a decoded token's call needs a block of 16 slots)
            C=chunk, CB=_pow2(min(chunk, T)), D=d, DB=_pow2(d), R=R, RB=_pow2(R), P=P,
            AK=adaptive[0], AV=adaptive[1], AE=adaptive[2], AA=adaptive[3], HAS_ALPHA=has_alpha,
            MOMENTUM=log_beta is not None, SELF_GEN=bool(self_generated), VALUE_NORM=bool(value_norm),
            GELU=act == "gelu", DTYPE=compute, PREC=_dot_precision(state.W1.dtype),
            num_warps=8)
    return out, FastWeights(*new)

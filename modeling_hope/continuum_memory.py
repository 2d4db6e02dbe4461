"""Continuum Memory System levels (HOPE spec section 3): SwiGLU MLPs, static or updated in context.

An in-context level keeps per-row weights `theta`; after every `period` tokens it steps
`theta <- theta - lr * sum_t g_t` (paper Eq. 71), with `g_t` the gradient of the next-token loss at position t
through the teach signal `delta_t` (the loss gradient at the residual stream entering the final norm).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def _swiglu(z, gate, up, down):
    g, v = z @ gate.mT, z @ up.mT
    return (F.silu(g) * v) @ down.mT, g, v


class SwiGLUFunction(torch.autograd.Function):
    """out = (silu(g) * v) W_down^T with g = z W_gate^T, v = z W_up^T; weights (I, d) / (d, I), or per row (B, I, d) /
    (B, d, I) with z (B, T, d). Autograd would keep silu(g) and the product besides g and v (two more (T, I) tensors
    per level); this backward recomputes them, and with `recompute` g and v too (two products of z, against two
    (T, I) activations: a wide static level's). Returns (out, g, v); g and v carry no gradient."""

    @staticmethod
    def forward(ctx, z, gate, up, down, recompute=False):
        out, g, v = _swiglu(z, gate, up, down)
        device = z.device.type  # backward runs under the forward's autocast (as torch.amp.custom_bwd does)
        ctx.autocast = device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        ctx.save_for_backward(z, gate, up, down, *(() if recompute else (g, v)))
        ctx.mark_non_differentiable(g, v)
        ctx.set_materialize_grads(False)  # no zero gradients for g and v
        return out, g, v

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out, _g, _v):
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            z, gate, up, down, *gv = ctx.saved_tensors
            if not gv:
                gv = z @ gate.mT, z @ up.mT
            return (*SwiGLUFunction._backward(g_out, z, gate, up, down, *gv), None)

    @staticmethod
    def _backward(g_out, z, gate, up, down, g, v):
        silu_g = F.silu(g)
        d_m = g_out @ down
        d_v = d_m * silu_g
        d_g = torch.ops.aten.silu_backward(d_m.mul_(v), g)  # (d_m v) silu'(g) in one pass
        d_z = d_g @ gate + d_v @ up
        if gate.dim() == 2:  # shared weights: sum over every row and position
            z, g_out, d_g, d_v, silu_g, v = (t.reshape(-1, t.shape[-1]) for t in (z, g_out, d_g, d_v, silu_g, v))
        return d_z, d_g.mT @ z, d_v.mT @ z, g_out.mT @ (silu_g * v)


def eager_autograd() -> bool:
    """Autograd records and no torch.compile traces: where the hand-written nodes that keep less for backward (and
    recompute the rest) replace plain expressions. Under torch.compile, inductor fuses the plain expressions and its
    partitioner chooses what to keep."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


def plain_linears(*modules) -> bool:
    """Exactly nn.Linear without bias (not an adapter or quantised layer that wraps one: those keep their forward)."""
    return all(type(m) is nn.Linear and m.bias is None for m in modules)


class SwiGLU(nn.Module):
    """down(silu(gate z) * up z); the parameters are the level's weights (static) or initial weights (in context)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, z):
        if torch.is_grad_enabled() and plain_linears(self.gate_proj, self.up_proj, self.down_proj):
            return SwiGLUFunction.apply(z, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight,
                                        eager_autograd())[0]
        return self.down_proj(F.silu(self.gate_proj(z)) * self.up_proj(z))


WEIGHT_NAMES = ("gate", "up", "down")


def swiglu_per_row(z, gate, up, down):
    """SwiGLU with per-row weights: z (B, T, d), gate/up (B, I, d), down (B, d, I). Returns (out, g, v)."""
    return (SwiGLUFunction.apply if torch.is_grad_enabled() else _swiglu)(z, gate, up, down)


def teach_gradients(z, g, v, down, delta):
    """Sum over positions of the teach-signal gradients of one level (spec appendix), all (B, ...):
    grad W_down = delta m^T, p = W_down^T delta, grad W_up = (p * silu(g)) z^T, grad W_gate = (p * v * silu'(g)) z^T.
    z (B,T,d), g/v (B,T,I), down (B,d,I), delta (B,T,d) (zero where a position has no contribution)."""
    s = torch.sigmoid(g)
    m = g * s * v
    p = delta @ down
    grad_down = delta.mT @ m
    grad_up = (p * g * s).mT @ z
    grad_gate = (p * v * s * (1 + g * (1 - s))).mT @ z
    return grad_gate, grad_up, grad_down

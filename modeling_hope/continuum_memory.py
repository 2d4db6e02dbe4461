"""Continuum Memory System levels (HOPE spec section 3): SwiGLU MLPs, static or updated in context.

An in-context level keeps per-row weights `theta`; after every `period` tokens it steps
`theta <- theta - lr * sum_t g_t` (paper Eq. 71), with `g_t` the gradient of the next-token loss at position t
through the teach signal `delta_t` (the loss gradient at the residual stream entering the final norm).
"""

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """down(silu(gate z) * up z); the parameters are the level's weights (static) or initial weights (in context)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, z):
        return self.down_proj(F.silu(self.gate_proj(z)) * self.up_proj(z))


WEIGHT_NAMES = ("gate", "up", "down")


def swiglu_per_row(z, gate, up, down):
    """SwiGLU with per-row weights: z (B, T, d), gate/up (B, I, d), down (B, d, I). Returns (out, g, v)."""
    g, v = z @ gate.mT, z @ up.mT
    return (F.silu(g) * v) @ down.mT, g, v


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

"""Helpers shared by the deep optimizers: argument checks, matrix views, Newton-Schulz."""

import math

import torch

# Quintic Newton-Schulz coefficients of Muon (Jordan et al. 2024), the same defaults as torch.optim.Muon.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def check(ok: bool, name: str, value, requirement: str) -> None:
    """Raise ``ValueError`` naming the bad argument unless ``ok``."""
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} ({name} must be {requirement})")


def check_number(name: str, value, low: float = 0.0, high: float = math.inf, *, high_open: bool = False) -> None:
    """``low <= value <= high`` (or ``< high`` with ``high_open``) for a finite real number."""
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    in_range = is_num and low <= value and (value < high if high_open else value <= high)
    bound = f"< {high}" if high_open else f"<= {high}"
    check(in_range, name, value, f"a finite number >= {low}" + ("" if high == math.inf else f" and {bound}"))


def check_int(name: str, value, low: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    check(ok, name, value, f"an integer >= {low}")


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """View a tensor as a matrix: 0-/1-D as one row ``(1, n)``, N-D (N > 2) as ``(shape[0], -1)``."""
    if t.ndim < 2:
        return t.reshape(1, -1)
    return t.reshape(t.shape[0], -1)


def newton_schulz(g: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = 1e-7) -> torch.Tensor:
    """Approximate the orthogonal polar factor ``U V^T`` of a matrix ``g = U S V^T`` (Muon's quintic iteration).

    Runs in float32 (torch.optim.Muon uses bfloat16) and returns ``g``'s dtype. As in Muon, the singular
    values of the result are only pushed into roughly [0.7, 1.2], not exactly to 1.
    """
    a, b, c = coefficients
    x = g.float()
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.mT
    x = x / x.norm().clamp_min(eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    if not wide:
        x = x.mT
    return x.to(g.dtype)


def orthogonalize(t: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS, eps: float = 1e-7) -> torch.Tensor:
    """Orthogonalise any tensor: Newton-Schulz on its matrix view (see ``as_matrix``).

    A 0-/1-D tensor is a 1 x n matrix, whose exact polar factor is ``v / ||v||``; that is returned directly.
    """
    if t.ndim < 2:
        return t / t.norm().clamp_min(eps)
    return newton_schulz(as_matrix(t), steps, coefficients, eps).reshape(t.shape)


def grad_of(p: torch.Tensor, name: str) -> torch.Tensor:
    if p.grad.is_sparse:
        raise RuntimeError(f"{name} does not support sparse gradients")
    return p.grad


class ParamwiseOptimizer(torch.optim.Optimizer):
    """The torch.optim plumbing the deep optimizers share: the closure and the loop over the parameters that have a
    gradient. Subclasses implement `_update(p, grad, state, group, index)` (`index` counts parameters from 1)."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                index += 1
                if p.grad is not None:
                    self._update(p, grad_of(p, type(self).__name__), self.state[p], group, index)
        return loss

    def _update(self, p, grad, state, group, index):
        raise NotImplementedError

"""M3, Multi-scale Momentum Muon (Adam + Muon + CMS): [NL-arXiv] section 7.2, Algorithm 1."""

import torch

from ._common import NS_COEFFICIENTS, check, check_int, check_number, orthogonalize, ParamwiseOptimizer


class M3(ParamwiseOptimizer):
    r"""Multi-scale Momentum Muon, exactly as Algorithm 1 of [NL-arXiv] (PAPER_NOTES section 2):

        for k = 0, 1, 2, ...                                   (low-frequency loop, every f steps)
            M2 = M2 + beta3 * sum_{i=(k-1)f+1}^{kf} g_i ;  O2 = NewtonSchulz_T(M2)
            for t = kf+1, ..., (k+1)f                          (every step)
                g_t = grad L(Theta_{t-1})
                M1  = M1 + beta1 g_t ;   V = V + beta2 g_t^2 ;   O1 = NewtonSchulz_T(M1)
                Theta_t = Theta_{t-1} - lr (O1 + alpha O2) / (sqrt(V) + eps)

    ``M1`` is the fast momentum, ``M2`` the slow one (a CMS level updated once per chunk of ``f`` steps from the
    gradients accumulated over the chunk), ``V`` Adam's second moment. The printed algorithm has no decay on
    ``M1``, ``M2`` or ``V``: they are running sums. Newton-Schulz is scale-invariant, so ``beta1`` and ``beta3``
    only matter against NS's ``eps``, and ``beta2`` rescales the step like ``1/sqrt(beta2)``; they are kept for
    fidelity. ``O2`` is 0 during the first chunk (``M2 = 0``). The slow update is applied at the end of step
    ``t`` when ``t % f == 0`` (the same as at the start of step ``t + 1`` in the algorithm), so a checkpoint
    taken then has an empty accumulator. ``weight_decay`` is decoupled (``Theta *= 1 - lr * wd``) and is not
    part of Algorithm 1; the default 0 leaves the algorithm unchanged.

    Newton-Schulz is Muon's quintic iteration (``ns_steps`` = T, ``ns_coefficients``) in float32 on the matrix
    view (N-D parameters as ``(shape[0], -1)``). For 1-D (and 0-D) parameters, a ``1 x n`` matrix, the exact
    polar factor ``M / ||M||`` is used instead.
    State per parameter: ``fast_momentum`` (M1), ``slow_momentum`` (M2), ``second_moment`` (V),
    ``grad_accum`` (gradients of the current chunk), ``slow_orth`` (O2), ``step``.
    """

    def __init__(self, params, lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.999, beta3: float = 0.9,
                 alpha: float = 0.5, f: int = 10, eps: float = 1e-8, ns_steps: int = 5,
                 ns_coefficients=NS_COEFFICIENTS, weight_decay: float = 0.0):
        check_number("lr", lr)
        for name, beta in (("beta1", beta1), ("beta2", beta2), ("beta3", beta3)):
            check_number(name, beta, 0.0, 1.0, high_open=True)
        check_number("alpha", alpha)
        check_int("f", f, 1)
        check_number("eps", eps)
        check_int("ns_steps", ns_steps, 1)
        check(isinstance(ns_coefficients, (tuple, list)) and len(ns_coefficients) == 3,
              "ns_coefficients", ns_coefficients, "a tuple of 3 numbers")
        check_number("weight_decay", weight_decay)
        defaults = dict(lr=lr, beta1=beta1, beta2=beta2, beta3=beta3, alpha=alpha, f=f, eps=eps,
                        ns_steps=ns_steps, ns_coefficients=tuple(ns_coefficients), weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _update(self, p, grad, state, group, index):
        lr, wd = group["lr"], group["weight_decay"]
        ns = dict(steps=group["ns_steps"], coefficients=group["ns_coefficients"])
        g = grad
        if "fast_momentum" not in state:
            state["step"] = 0
            for key in ("fast_momentum", "slow_momentum", "second_moment", "grad_accum", "slow_orth"):
                state[key] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        state["step"] += 1
        m1, v = state["fast_momentum"], state["second_moment"]
        m1.add_(g, alpha=group["beta1"])
        v.addcmul_(g, g, value=group["beta2"])
        state["grad_accum"].add_(g)
        direction = orthogonalize(m1, **ns).add_(state["slow_orth"], alpha=group["alpha"])
        if wd:
            p.mul_(1 - lr * wd)
        p.addcdiv_(direction, v.sqrt().add_(group["eps"]), value=-lr)
        if state["step"] % group["f"] == 0:  # end of chunk k: slow memory update (CMS level)
            state["slow_momentum"].add_(state["grad_accum"], alpha=group["beta3"])
            state["grad_accum"].zero_()
            state["slow_orth"].copy_(orthogonalize(state["slow_momentum"], **ns))

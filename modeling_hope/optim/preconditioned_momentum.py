"""Preconditioned Momentum: momentum whose value is a diagonally preconditioned gradient."""

import torch

from ._common import check_number, ParamwiseOptimizer


class PreconditionedMomentum(ParamwiseOptimizer):
    r"""Momentum with a more expressive value: the gradient times an Adam-style diagonal preconditioner.

    Paper ([NL-arXiv] Eq. 46-47; PAPER_NOTES section 3), values ``v_i = P_i``:

        m_{i+1} = alpha m_i - eta P_i grad L(W_i; x_i),        W_{i+1} = W_i + m_{i+1}.

    Implemented with ``P_i = diag(1 / (sqrt(v_hat_i) + eps))`` from Adam's second moment:

        v   = beta2 v + (1 - beta2) g^2,      v_hat = v / (1 - beta2^t)
        b   = momentum * b + g / (sqrt(v_hat) + eps)         (b = -m / lr)
        W  <- W (1 - lr * weight_decay) - lr * b

    Unlike Adam, the momentum accumulates already-preconditioned gradients (and has no ``1 - beta1``
    dampening, as in the paper), so the step is about ``1 / (1 - momentum)`` times Adam's: use a smaller lr.
    The preconditioner is element-wise, so 1-D, 2-D and N-D parameters are treated identically.
    State per parameter: ``momentum_buffer``, ``exp_avg_sq``, ``step``.
    """

    def __init__(self, params, lr: float = 1e-4, momentum: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.0):
        check_number("lr", lr)
        check_number("momentum", momentum, 0.0, 1.0, high_open=True)
        check_number("beta2", beta2, 0.0, 1.0, high_open=True)
        check_number("eps", eps)
        check_number("weight_decay", weight_decay)
        defaults = dict(lr=lr, momentum=momentum, beta2=beta2, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _update(self, p, grad, state, group, index):
        lr, wd, beta2 = group["lr"], group["weight_decay"], group["beta2"]
        g = grad
        if "momentum_buffer" not in state:
            state["step"] = 0
            state["momentum_buffer"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        v, b = state["exp_avg_sq"], state["momentum_buffer"]
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v / (1 - beta2 ** state["step"])).sqrt_().add_(group["eps"])
        b.mul_(group["momentum"]).addcdiv_(g, denom)
        if wd:
            p.mul_(1 - lr * wd)
        p.sub_(b, alpha=lr)

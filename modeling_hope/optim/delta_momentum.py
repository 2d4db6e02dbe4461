"""Delta Momentum: momentum as an associative memory trained with the L2 (delta-rule) objective."""

import torch

from ._common import as_matrix, check_number, ParamwiseOptimizer


class DeltaMomentum(ParamwiseOptimizer):
    r"""Momentum whose memory is updated by the delta rule instead of the Hebbian (dot-product) rule.

    Paper ([NL-arXiv] Eq. 48-49, NeurIPS Eq. 21-22; PAPER_NOTES section 3): the momentum ``m`` is a memory
    mapping gradients (keys) to values ``P_i``; the L2 objective ``||m grad^T - P_i||^2`` gives

        m_{i+1} = m_i (alpha I - grad grad^T) - eta P_i grad,        W_{i+1} = W_i + m_{i+1}.

    Implemented, for a parameter with gradient ``G`` seen as an ``r x c`` matrix, with ``P_i = I``:

        K   = G / ||G||_F                                  (normalised key, so the erase term is stable)
        b   = b (momentum * I - delta * K^T K) + G          (b = -m / lr: the buffer in gradient units)
        W  <- W (1 - lr * weight_decay) - lr * b

    ``K^T K`` (c x c) erases from the buffer what it already stores along the current gradient's row space
    before the new gradient is written; ``delta = 0`` gives heavy-ball momentum (torch SGD, no dampening).
    With ``0 <= delta <= 1`` the factor's eigenvalues lie in ``[momentum - delta, momentum]``.

    1-D (and 0-D) parameters are ``1 x n`` matrices, for which ``K^T K = k k^T`` is exactly the paper's
    outer product: ``b = momentum * b - delta * (b . k) k + g``. N-D parameters use ``(shape[0], -1)``.
    The learning rate sits outside the buffer so ``LambdaLR`` schedules scale the whole step.
    State per parameter: ``momentum_buffer``, ``step``.
    """

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9, delta: float = 0.5,
                 weight_decay: float = 0.0, eps: float = 1e-12):
        check_number("lr", lr)
        check_number("momentum", momentum, 0.0, 1.0, high_open=True)
        check_number("delta", delta, 0.0, 1.0)
        check_number("weight_decay", weight_decay)
        check_number("eps", eps)
        defaults = dict(lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay, eps=eps)
        super().__init__(params, defaults)

    def _update(self, p, grad, state, group, index):
        lr, wd = group["lr"], group["weight_decay"]
        g = as_matrix(grad)
        if "momentum_buffer" not in state:
            state["step"] = 0
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        state["step"] += 1
        b = as_matrix(state["momentum_buffer"])
        k = g / g.norm().clamp_min(group["eps"])
        # b K^T K, associated in whichever order is cheaper.
        erase = (b @ k.mT) @ k if b.shape[0] <= b.shape[1] else b @ (k.mT @ k)
        b.mul_(group["momentum"]).sub_(erase, alpha=group["delta"]).add_(g)
        if wd:
            p.mul_(1 - lr * wd)
        p.sub_(state["momentum_buffer"], alpha=lr)

"""Deep Momentum Gradient Descent (DMGD): the momentum is a small MLP trained online on its own loss."""

import torch

from ._common import as_matrix, check_int, check_number, ParamwiseOptimizer


class DeepMomentumGD(ParamwiseOptimizer):
    r"""DMGD: momentum as a deep associative memory, one small residual MLP per parameter tensor.

    Paper ([NL-arXiv] Eq. 50; PAPER_NOTES section 3), with ``u_i = grad L(W_i; x_i)``:

        W_{i+1} = W_i + m_{i+1}(u_i),        m_{i+1} = alpha m_i - eta grad L^(2)(m_i; u_i, 1),

    where ``m`` is an MLP instead of a matrix and ``L^(2)`` is the momentum's internal (dot-product) objective.

    Implemented per parameter (gradient ``G`` seen as an ``r x c`` matrix; its rows are the memory's keys):

        K       = G / rms(G)                                        (scale-free keys, rms(K) = 1)
        m(K)    = K + tanh(K A) B                                   (A: c x h, B: h x c; the residual
                                                                      2-layer MLP form of HOPE's memories)
        L2(A,B) = -<m(K), K> / r                                    (dot-product objective: the memory's
                                                                      output should align with the gradient)
        (A, B) <- momentum * (A, B) - inner_lr * grad_{A,B} L2      (one GD step with retention alpha)
        W      <- W (1 - lr * weight_decay) - lr * m(K)             (read the updated memory at K)

    With a constant key and a linear memory the MLP part would be heavy-ball momentum on ``K``. Here ``B``
    accumulates gradient rows under the learned features ``tanh(K A)`` (for fixed ``A``,
    ``B = inner_lr * sum_s momentum^(t-s) tanh(K_s A)^T K_s / r``), so ``tanh(K A) B`` recalls past gradients
    whose features match the current ones, and the identity path keeps the current (normalised) gradient.
    ``A`` is initialised ``N(0, 1/c)`` from a generator seeded by ``seed`` and the parameter's position, ``B``
    at zero. The update's RMS is of order 1 (like Adam's), so Adam-like learning rates apply. The gradients
    of ``L2`` are written out in closed form.

    1-D (and 0-D) parameters are one key: a ``1 x n`` matrix (``A`` is ``n x hidden``); N-D use ``(shape[0], -1)``.
    State per parameter: ``mlp_in`` (A), ``mlp_out`` (B), ``step``.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, inner_lr: float = 0.05,
                 hidden: int = 16, weight_decay: float = 0.0, eps: float = 1e-8, seed: int = 0):
        check_number("lr", lr)
        check_number("momentum", momentum, 0.0, 1.0)
        check_number("inner_lr", inner_lr)
        check_int("hidden", hidden, 1)
        check_number("weight_decay", weight_decay)
        check_number("eps", eps)
        check_int("seed", seed, 0)
        defaults = dict(lr=lr, momentum=momentum, inner_lr=inner_lr, hidden=hidden,
                        weight_decay=weight_decay, eps=eps, seed=seed)
        super().__init__(params, defaults)

    def _update(self, p, grad, state, group, index):
        lr, wd, alpha, eta = group["lr"], group["weight_decay"], group["momentum"], group["inner_lr"]
        g = as_matrix(grad).float()
        rows, cols = g.shape
        if "mlp_in" not in state:
            gen = torch.Generator().manual_seed(group["seed"] * 1_000_003 + index)
            a0 = torch.randn(cols, group["hidden"], generator=gen) / cols**0.5
            state["step"] = 0
            state["mlp_in"] = a0.to(device=p.device, dtype=p.dtype)
            state["mlp_out"] = torch.zeros(group["hidden"], cols, device=p.device, dtype=p.dtype)
        state["step"] += 1
        a, b = state["mlp_in"], state["mlp_out"]
        k = g / g.pow(2).mean().sqrt().clamp_min(group["eps"])
        # Inner step on L2 = -<K + tanh(K A) B, K> / rows.
        h = torch.tanh(k @ a.float())
        grad_b = -(h.mT @ k) / rows
        grad_a = -(k.mT @ ((k @ b.float().mT) * (1 - h * h))) / rows
        a.mul_(alpha).sub_(grad_a.to(a.dtype), alpha=eta)
        b.mul_(alpha).sub_(grad_b.to(b.dtype), alpha=eta)
        update = k + torch.tanh(k @ a.float()) @ b.float()
        if wd:
            p.mul_(1 - lr * wd)
        p.sub_(update.reshape(p.shape).to(p.dtype), alpha=lr)

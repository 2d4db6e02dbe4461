"""``build_optimizer(model, name, lr, ...)``: the optimizer selected by name, Muon-style parameter routing."""

import inspect

import torch
from torch import nn

from ._common import check, check_number
from .combined import CombinedOptimizer
from .deep_momentum import DeepMomentumGD
from .delta_momentum import DeltaMomentum
from .m3 import M3
from .preconditioned_momentum import PreconditionedMomentum

# Optimizers for the hidden weight matrices; "adamw" trains everything with AdamW.
MATRIX_OPTIMIZERS = {
    "muon": torch.optim.Muon,
    "m3": M3,
    "dmgd": DeepMomentumGD,
    "delta_momentum": DeltaMomentum,
    "preconditioned_momentum": PreconditionedMomentum,
}
OPTIMIZER_NAMES = ("adamw", *MATRIX_OPTIMIZERS)
# Parameter names that always go to AdamW even when they are nn.Linear weights (input/output embeddings).
ADAMW_NAME_PARTS = ("embed", "lm_head", "wte", "wpe")


def _split_parameters(model: nn.Module):
    """(hidden matrices, AdamW params with decay, AdamW params without decay), each a list of (name, p).

    Hidden matrices are the weights of ``nn.Linear`` layers other than the embeddings and the LM head: maps
    between hidden spaces, what orthogonalisation is meant for. Other 2-D parameters (e.g. HOPE's depthwise
    convolution kernels stored as ``(channels, width)`` and its per-head gate vectors) go to AdamW.
    """
    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    if hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None:
        embeddings.add(id(model.get_output_embeddings().weight))
    matrices, decay, no_decay = [], [], []
    for name, p in model.named_parameters():  # shared (tied) parameters are listed once
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            no_decay.append((name, p))  # norms, biases, scalars
        elif id(p) in linear and id(p) not in embeddings and not any(s in name for s in ADAMW_NAME_PARTS):
            matrices.append((name, p))
        else:
            decay.append((name, p))  # embeddings, LM head, other 2-D and N-D parameters
    return matrices, decay, no_decay


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0,
                    betas=(0.9, 0.999), *, adamw_lr: float | None = None, **kw) -> torch.optim.Optimizer:
    """Build the optimizer ``name`` (one of ``OPTIMIZER_NAMES``) for ``model``.

    ``adamw``: one ``torch.optim.AdamW`` (2-D+ parameters with ``weight_decay``, 1-D without; ``**kw`` go
    to AdamW and ``adamw_lr`` is not used).
    Any other name: the hidden layers' weight matrices (``nn.Linear`` weights) go to that optimizer (with
    ``lr``, ``weight_decay`` and ``**kw``, e.g. ``f=4`` for M3 or ``momentum=0.95`` for Muon); embeddings and
    the LM head (``embed_tokens``, ``lm_head``, any ``nn.Embedding``, the output embeddings), other 2-D and
    N-D parameters, norms and biases go to AdamW with ``betas`` and ``adamw_lr`` (default ``lr``), 1-D ones
    without weight decay.
    The result is then one ``CombinedOptimizer`` (accepted by ``LambdaLR`` and ``Accelerator.prepare``).
    Muon defaults to ``adjust_lr_fn="match_rms_adamw"`` so that it can share AdamW's learning rate.
    Invalid names or hyper-parameters raise ``ValueError`` naming the argument.
    """
    check(name in OPTIMIZER_NAMES, "name", name, f"one of {', '.join(OPTIMIZER_NAMES)}")
    check_number("lr", lr)
    adamw_lr = lr if adamw_lr is None else adamw_lr
    check_number("adamw_lr", adamw_lr)
    check_number("weight_decay", weight_decay)
    check(isinstance(betas, (tuple, list)) and len(betas) == 2, "betas", betas, "a pair (beta1, beta2)")
    for i, beta in enumerate(betas):
        check_number(f"betas[{i}]", beta, 0.0, 1.0, high_open=True)

    cls = torch.optim.AdamW if name == "adamw" else MATRIX_OPTIMIZERS[name]
    accepted = set(inspect.signature(cls).parameters) - {"params", "lr", "weight_decay", "betas"}
    for key in kw:
        check(key in accepted, "keyword", key, f"a hyper-parameter of {cls.__name__}: {', '.join(sorted(accepted))}")
    matrices, decay, no_decay = _split_parameters(model)
    if name == "adamw":
        matrices, decay = [], matrices + decay
        adamw_lr, adamw_kw = lr, kw
    else:
        adamw_kw = {}
        if name == "muon":
            kw = {"adjust_lr_fn": "match_rms_adamw", **kw}
    groups = [{"params": [p for _, p in decay], "weight_decay": weight_decay},
              {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    adamw = torch.optim.AdamW(groups, lr=adamw_lr, betas=tuple(betas), **adamw_kw) if groups else None
    if name == "adamw":
        if adamw is None:
            raise ValueError("Invalid model: it has no trainable parameters")
        return adamw
    inner = cls([p for _, p in matrices], lr=lr, weight_decay=weight_decay, **kw) if matrices else None
    return CombinedOptimizer([o for o in (inner, adamw) if o is not None])

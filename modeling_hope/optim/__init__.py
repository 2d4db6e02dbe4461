"""The paper's deep optimizers ([NL-arXiv] sections 4 and 7.2) as ``torch.optim`` optimizers.

Muon itself is ``torch.optim.Muon``; ``build_optimizer`` routes hidden weight matrices to the named
optimizer and everything else to AdamW, returning one optimizer.
"""

from ._common import newton_schulz, orthogonalize
from .build import OPTIMIZER_NAMES, build_optimizer
from .combined import CombinedOptimizer
from .deep_momentum import DeepMomentumGD
from .delta_momentum import DeltaMomentum
from .m3 import M3
from .preconditioned_momentum import PreconditionedMomentum

__all__ = [
    "CombinedOptimizer",
    "DeepMomentumGD",
    "DeltaMomentum",
    "M3",
    "OPTIMIZER_NAMES",
    "PreconditionedMomentum",
    "build_optimizer",
    "newton_schulz",
    "orthogonalize",
]

"""The paper's deep optimizers ([NL-arXiv] sections 4 and 7.2) as ``torch.optim`` optimizers."""

from ._common import newton_schulz, orthogonalize
from .deep_momentum import DeepMomentumGD
from .delta_momentum import DeltaMomentum
from .m3 import M3
from .preconditioned_momentum import PreconditionedMomentum

__all__ = ["DeepMomentumGD", "DeltaMomentum", "M3", "PreconditionedMomentum", "newton_schulz", "orthogonalize"]

"""One torch Optimizer over several: what Accelerate, LR schedulers and checkpoints see."""

from collections.abc import Mapping

import torch
from torch.optim import Optimizer


class _MergedState(Mapping):
    """Read-only view of the inner optimizers' ``state`` (looking a parameter up never creates an entry)."""

    def __init__(self, optimizers):
        self._optimizers = optimizers

    def __getitem__(self, p):
        for opt in self._optimizers:
            if p in opt.state:
                return opt.state[p]
        raise KeyError(p)

    def __iter__(self):
        return (p for opt in self._optimizers for p in opt.state)

    def __len__(self):
        return sum(len(opt.state) for opt in self._optimizers)


class CombinedOptimizer(Optimizer):
    """Several optimizers over disjoint parameters, behaving as one ``torch.optim.Optimizer``.

    ``param_groups`` is the concatenation of the inner optimizers' group lists and holds the *same* dict
    objects, so whatever writes a group's ``lr`` (``LambdaLR`` and the other schedulers, Accelerate's
    wrapper) changes the inner optimizer that uses it. ``step`` evaluates the closure once and steps every
    inner optimizer; ``zero_grad`` delegates. ``state_dict`` has the standard torch layout (``state`` and
    ``param_groups`` with parameters numbered over all inner optimizers in order); ``load_state_dict`` splits
    it back by group counts and delegates, then re-links ``param_groups`` (torch's loader replaces group
    dicts). ``state`` is a read-only merged view of the inner states.
    """

    def __init__(self, optimizers):
        optimizers = list(optimizers)
        if not optimizers or not all(isinstance(o, Optimizer) for o in optimizers):
            raise ValueError(f"Invalid optimizers: {optimizers!r} "
                             "(optimizers must be a non-empty list of torch optimizers)")
        # The base constructor sets up the hook registries and rejects a parameter given to two optimizers.
        super().__init__([p for o in optimizers for g in o.param_groups for p in g["params"]], {})
        self.optimizers = optimizers
        self._relink()

    def _relink(self):
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
        self.state = _MergedState(self.optimizers)

    def __getstate__(self):  # pickling / deepcopy keep the inner optimizers, the rest is rebuilt
        return {"defaults": self.defaults, "optimizers": self.optimizers}

    def __setstate__(self, state):
        super().__setstate__(state)
        self._relink()

    def __repr__(self):
        inner = ",\n".join("  " + repr(o).replace("\n", "\n  ") for o in self.optimizers)
        return f"{type(self).__name__}(\n{inner}\n)"

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        state, groups, offset = {}, [], 0
        for opt in self.optimizers:
            sd = opt.state_dict()
            state.update({i + offset: s for i, s in sd["state"].items()})
            for g in sd["param_groups"]:
                groups.append({**g, "params": [i + offset for i in g["params"]]})
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        expected = [len(o.param_groups) for o in self.optimizers]
        if len(groups) != sum(expected):
            raise ValueError(f"Invalid state_dict: it has {len(groups)} parameter groups, this optimizer has "
                             f"{sum(expected)} ({' + '.join(map(str, expected))} over its inner optimizers)")
        start = 0
        for opt, n in zip(self.optimizers, expected):
            own = groups[start:start + n]
            start += n
            # torch's loader matches saved ids to parameters by position, so the global ids can stay.
            ids = {i for g in own for i in g["params"]}
            opt.load_state_dict({"state": {i: s for i, s in state_dict["state"].items() if i in ids},
                                 "param_groups": own})
        self._relink()

"""CMS levels of a converted model: which MLP weights each level starts from.

Level 1 is the pretrained MLP itself (paper section 7.3: with its learning rate at zero the model is the original
one). Extra levels start either as a copy of the same MLP (`init="mlp"`, the paper's level stacking: a second
pass through the MLP, so no longer the original function) or with a zero down-projection (`init="zero"`: the
level adds nothing until it learns, so the converted model still computes the original logits).
"""

from dataclasses import dataclass

INITS = ("mlp", "zero")
SPEC_KEYS = ("period", "lr", "init", "size", "outer_period")


@dataclass
class LevelSpec:
    period: int = 0           # tokens between in-context updates (0: static)
    lr: float = 0.0           # in-context step size
    init: str = "zero"        # "mlp" (copy of the pretrained MLP) or "zero" (zero output)
    size: int | None = None   # intermediate width: the first `size` units of the MLP (None: all of them)
    outer_period: int = 1

    def check(self, mlp_width: int | None = None) -> "LevelSpec":
        if self.init not in INITS:
            raise ValueError(f"level init must be one of {INITS}, got {self.init!r}")
        if not isinstance(self.period, int) or self.period < 0:
            raise ValueError(f"level period must be an integer >= 0 (0 = static), got {self.period!r}")
        if not isinstance(self.lr, (int, float)) or self.lr < 0:
            raise ValueError(f"level lr must be a number >= 0, got {self.lr!r}")
        if not isinstance(self.outer_period, int) or self.outer_period < 1:
            raise ValueError(f"level outer_period must be an integer >= 1, got {self.outer_period!r}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"level size must be a positive integer, got {self.size!r}")
        if mlp_width is not None and self.size is not None and self.size > mlp_width:
            raise ValueError(f"level size {self.size} is wider than the pretrained MLP ({mlp_width}): a level is "
                             f"initialised from the MLP's first `size` units, so size must be at most {mlp_width}")
        return self

    def config(self, mlp_width: int) -> dict:
        """The level's entry of HopeConfig.cms_levels."""
        return {"intermediate_size": self.size or mlp_width, "period": self.period, "lr": float(self.lr),
                "outer_period": self.outer_period}


def parse_level(text: str, allowed=SPEC_KEYS) -> LevelSpec:
    """`"period=512,lr=1e-3,init=zero,size=1024"` -> LevelSpec (every key optional)."""
    values = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in allowed:
            raise ValueError(f"bad level {text!r}: expected comma-separated KEY=VALUE with KEY in {', '.join(allowed)}")
        try:
            values[key] = value.strip() if key == "init" else (float(value) if key == "lr" else int(value))
        except ValueError:
            raise ValueError(f"bad level {text!r}: {key}={value!r} is not a number") from None
    return LevelSpec(**values).check()


def level_weights(spec: LevelSpec, gate, up, down, share: bool) -> tuple:
    """(gate, up, down) of one level from the pretrained MLP's weights. `share`: take the MLP's own tensors (for the
    one full-width copy, so that conversion holds one model in memory); otherwise every level gets its own."""
    n = spec.size or gate.shape[0]
    if share:
        return gate, up, down
    down = down[:, :n].clone() if spec.init == "mlp" else down.new_zeros(down.shape[0], n)
    return gate[:n].clone(), up[:n].clone(), down


def is_logit_preserving(levels: list[LevelSpec], mlp_width: int) -> bool:
    """True when, with learning rates at zero, the levels compute exactly the pretrained MLP: one full-width copy
    of it and only zero-output levels besides."""
    copies = [lvl for lvl in levels if lvl.init == "mlp"]
    return len(copies) == 1 and (copies[0].size or mlp_width) == mlp_width

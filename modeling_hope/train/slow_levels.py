"""CMS slow levels: a level with `outer_period = N` gets an optimizer update only every N steps.

Spec section 3: "the trainer applies the optimizer to that level's parameters only every N steps, with gradients
accumulated in between". After each step's backward (and gradient clipping, which sees the step's own gradients
like any other step), every slow parameter's gradient is added to its accumulator; on steps N, 2N, ... the
accumulated sum becomes its `.grad` and the accumulator is cleared, on the other steps its `.grad` is set to None,
which every torch optimizer (and each in `modeling_hope.optim`) skips: no update, no weight decay, no moment
change. The accumulators are registered for checkpointing, so a resume mid-period continues exactly.
Levels with `outer_period = 1` (the default) are ordinary parameters. The sum (not the mean) follows the CMS rule
`theta <- theta - lr * sum_t g_t` (paper Eq. 71); Adam-style optimizers are insensitive to the difference.
"""

import torch


def slow_parameters(model) -> list[tuple[str, torch.nn.Parameter, int]]:
    """(name, parameter, outer_period) of every CMS level with outer_period > 1 (HOPE models only)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) != "hope":
        return []
    periods = [level["outer_period"] for level in config.cms_levels]
    out = []
    for i, layer in enumerate(model.model.layers):
        for level, period in enumerate(periods):
            if period > 1:
                for name, p in layer.cms[level].named_parameters():
                    out.append((f"model.layers.{i}.cms.{level}.{name}", p, period))
    return out


class SlowLevels:
    def __init__(self, model):
        self.params = slow_parameters(model)
        self.accumulators = {name: torch.zeros_like(p, dtype=torch.float32) for name, p, _ in self.params}

    def __bool__(self):
        return bool(self.params)

    def periods(self) -> dict:
        return {name: period for name, _, period in self.params}

    @torch.no_grad()
    def before_step(self, step: int) -> None:
        """Call between gradient clipping and `optimizer.step()` of optimizer step `step` (1, 2, ...)."""
        for name, p, period in self.params:
            acc = self.accumulators[name]
            if p.grad is not None:
                acc.add_(p.grad.float())
            if step % period == 0:
                p.grad = acc.to(p.dtype).clone()
                acc.zero_()
            else:
                p.grad = None

    def state_dict(self) -> dict:
        return {"accumulators": {k: v.cpu() for k, v in self.accumulators.items()}}

    def load_state_dict(self, state: dict) -> None:
        saved = state["accumulators"]
        if set(saved) != set(self.accumulators):
            raise ValueError(f"the checkpoint's slow CMS levels {sorted(saved)} differ from this model's "
                             f"{sorted(self.accumulators)}")
        for name, value in saved.items():
            self.accumulators[name].copy_(value)

"""A model built straight from a state dict: no random init of what is loaded, fresh parameters initialised."""

import re

import torch


def model_from_state_dict(model_cls, config, state: dict, fresh=(), dtype=None):
    """`model_cls(config)` holding the tensors of `state` (assigned, not copied: peak memory stays at one model).
    Parameters whose names match a regex in `fresh` are not expected in `state` and get the model's own init;
    anything else missing, unexpected or of another shape is refused (ValueError naming it). `dtype` casts the
    parameters (buffers such as RoPE frequencies keep theirs)."""
    from transformers.initialization import no_init_weights

    with no_init_weights():  # parameters start as torch.empty: no time or memory spent on an init we overwrite
        model = model_cls(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:  # size mismatch
        raise ValueError(f"mismatched shapes between the weights and the {type(config).__name__}: {err}") from None
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if config.tie_word_embeddings else set()
    new = {name for name in missing if any(re.search(p, name) for p in fresh)}
    missing = [name for name in missing if name not in new and name not in tied]
    if missing or unexpected:
        raise ValueError(f"the weights do not match {model_cls.__name__}: missing {missing[:6]}"
                         f"{' ...' if len(missing) > 6 else ''}, unexpected {unexpected[:6]}"
                         f"{' ...' if len(unexpected) > 6 else ''}")
    if config.tie_word_embeddings:
        model.tie_weights()
    if new:
        _initialise(model, new)
    if dtype is not None:
        for p in model.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    return model


@torch.no_grad()
def _initialise(model, names: set) -> None:
    """The model's own `_init_weights` on every module that owns one of `names`; NaN first, so that a parameter
    the init does not cover is caught instead of left as uninitialised memory."""
    params = dict(model.named_parameters())
    for name in names:
        params[name].fill_(float("nan"))
    for module_name, module in model.named_modules():
        own = {f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters(recurse=False)}
        if own & names:
            model._init_weights(module)
    bad = sorted(name for name in names if not torch.isfinite(params[name]).all())
    if bad:
        raise RuntimeError(f"{type(model).__name__}._init_weights left {bad[:4]} uninitialised")

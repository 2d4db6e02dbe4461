"""Llama-family model -> HOPE (paper section 7.3): attention, norms, embeddings and head copied, the MLP as CMS level 1.

With `mixer_type="attention"`, one copy of the MLP and only zero-output extra levels, the converted model computes
exactly what the original computes while the levels' learning rates are zero. With
`mixer_type="self_modifying_titans"` the attention weights are dropped and the memories start fresh (for continued
pre-training): that model is not the original one.
"""

import re

from ..configuration_hope import HopeConfig
from .levels import LevelSpec, level_weights
from .weights import model_from_state_dict

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
MIXERS = ("attention", "self_modifying_titans")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(self_attn|mlp|post_attention_layernorm)\.(.*)$")


def unsupported(cfg, mixer_type: str = "attention") -> list[str]:
    """What in a Llama-family config HOPE cannot reproduce exactly (empty when it can)."""
    problems = []
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = ", ".join(getattr(cfg, "architectures", None) or []) or type(cfg).__name__
        return [f"unknown architecture: model_type={model_type!r} ({archs}); supported: "
                f"{', '.join(SUPPORTED_MODEL_TYPES)} (LlamaForCausalLM-compatible)"]
    if getattr(cfg, "mlp_bias", False):
        problems.append("biases in the MLP projections")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={cfg.hidden_act!r} (only SwiGLU with silu)")
    if cfg.hidden_size % cfg.num_attention_heads:
        problems.append(f"hidden_size={cfg.hidden_size} is not divisible by num_attention_heads="
                        f"{cfg.num_attention_heads}")
    if mixer_type != "attention":  # the attention weights are not kept: nothing else about them matters
        return problems
    if getattr(cfg, "sliding_window", None):
        problems.append(f"sliding-window attention (sliding_window={cfg.sliding_window})")
    if getattr(cfg, "attention_bias", False):
        problems.append("biases in the attention projections")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if head_dim * cfg.num_attention_heads != cfg.hidden_size:
        problems.append(f"mismatched shapes: head_dim={head_dim} x {cfg.num_attention_heads} heads != hidden_size="
                        f"{cfg.hidden_size} (HOPE's attention has head_dim = hidden_size / heads)")
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type={rope.get('rope_type')!r} (only the default RoPE)")
    return problems


def hope_config_from_llama(llama_config, levels=None, mixer_type: str = "attention", **overrides) -> HopeConfig:
    """HopeConfig of the same shape as a Llama-family config. `levels` (LevelSpecs, default: the MLP as one static
    level) become `cms_levels`. Refuses, naming every problem, what cannot be converted."""
    cfg = llama_config
    if mixer_type not in MIXERS:
        raise ValueError(f"mixer_type must be one of {MIXERS}, got {mixer_type!r}")
    problems = unsupported(cfg, mixer_type)
    if problems:
        raise ValueError(f"cannot convert {type(cfg).__name__} exactly: " + "; ".join(problems))
    levels = [lvl.check(cfg.intermediate_size) for lvl in (levels or [LevelSpec(init="mlp")])]
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    kwargs = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)),
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        initializer_range=cfg.initializer_range, mixer_type=mixer_type,
        cms_levels=[lvl.config(cfg.intermediate_size) for lvl in levels])
    kwargs.update(overrides)
    return HopeConfig(**kwargs)


def llama_state_dict_to_hope(state_dict: dict, levels=None, mixer_type: str = "attention") -> dict:
    """A LlamaForCausalLM state dict under HopeForCausalLM's names: attention -> mixer (dropped for a memory mixer),
    each layer's MLP (and its norm) -> every CMS level, as `levels` say (default: one level, the MLP itself)."""
    levels = levels or [LevelSpec(init="mlp")]
    # the one full-width copy of the MLP keeps the original tensors; every other level gets its own
    shared = next((i for i, lvl in enumerate(levels) if lvl.init == "mlp" and lvl.size is None), None)
    out, mlps = {}, {}
    for name, tensor in state_dict.items():
        match = _LAYER.match(name)
        if match is None:
            out[name] = tensor
            continue
        layer, part, rest = match.groups()
        if part == "self_attn":
            if mixer_type == "attention":
                out[f"model.layers.{layer}.mixer.{rest}"] = tensor
        elif part == "post_attention_layernorm":
            for i in range(len(levels)):  # every level sees the residual stream through the MLP's own norm
                out[f"model.layers.{layer}.cms.{i}.norm.{rest}"] = tensor if i == shared else tensor.clone()
        else:
            mlps.setdefault(layer, {})[rest] = tensor
    for layer, mlp in mlps.items():
        if set(mlp) != {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}:
            raise ValueError(f"layer {layer}: the MLP has {sorted(mlp)}; expected gate_proj, up_proj and down_proj "
                             f"weights (a SwiGLU without biases)")
        for i, lvl in enumerate(levels):
            weights = level_weights(lvl, mlp["gate_proj.weight"], mlp["up_proj.weight"], mlp["down_proj.weight"],
                                    share=i == shared)
            for proj, w in zip(("gate_proj", "up_proj", "down_proj"), weights):
                out[f"model.layers.{layer}.cms.{i}.mlp.{proj}.weight"] = w
    return out


def llama_to_hope(llama_model, levels=None, mixer_type: str = "attention", **config_overrides):
    """A HopeForCausalLM from an in-memory LlamaForCausalLM-compatible model. The converted model shares the
    original's tensors where it can (no second copy in memory); fresh memories (memory mixers) are initialised."""
    from ..modeling_hope import HopeForCausalLM

    config = hope_config_from_llama(llama_model.config, levels, mixer_type, **config_overrides)
    state = llama_state_dict_to_hope(llama_model.state_dict(), levels, mixer_type)
    fresh = () if mixer_type == "attention" else (r"^model\.layers\.\d+\.mixer\.",)
    model = model_from_state_dict(HopeForCausalLM, config, state, fresh=fresh, dtype=llama_model.dtype)
    model.generation_config = llama_model.generation_config
    return model.eval()

"""Llama-family model -> HOPE with the attention mixer and the MLP as CMS level 1 (paper section 7.3).

With every added level's learning rate at zero the converted model computes exactly what the original computes."""

import re

from ..configuration_hope import HopeConfig

_RENAMES = [
    (r"^model\.layers\.(\d+)\.self_attn\.", r"model.layers.\1.mixer."),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.", r"model.layers.\1.cms.0.norm."),
    (r"^model\.layers\.(\d+)\.mlp\.", r"model.layers.\1.cms.0.mlp."),
]


def hope_config_from_llama(llama_config, **overrides) -> HopeConfig:
    """HopeConfig (mixer_type="attention", one static CMS level) of the same shape as a LlamaConfig. Refuses what
    HOPE's attention mixer cannot reproduce exactly."""
    cfg = llama_config
    problems = []
    if getattr(cfg, "sliding_window", None):
        problems.append(f"sliding-window attention (sliding_window={cfg.sliding_window})")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        problems.append("biases in attention or MLP projections")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={cfg.hidden_act!r} (only SwiGLU with silu)")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if head_dim * cfg.num_attention_heads != cfg.hidden_size:
        problems.append(f"head_dim={head_dim} with {cfg.num_attention_heads} heads != hidden_size={cfg.hidden_size}")
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type={rope.get('rope_type')!r} (only the default RoPE)")
    if problems:
        raise ValueError(f"cannot convert {type(cfg).__name__} exactly: " + "; ".join(problems))
    kwargs = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)),
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        initializer_range=cfg.initializer_range, mixer_type="attention",
        cms_levels=[{"intermediate_size": cfg.intermediate_size, "period": 0, "lr": 0.0, "outer_period": 1}])
    kwargs.update(overrides)
    return HopeConfig(**kwargs)


def llama_state_dict_to_hope(state_dict: dict) -> dict:
    """Rename a LlamaForCausalLM state dict to HopeForCausalLM's names (attention -> mixer, MLP -> CMS level 0)."""
    out = {}
    for name, tensor in state_dict.items():
        for pattern, repl in _RENAMES:
            name = re.sub(pattern, repl, name)
        out[name] = tensor
    return out


def llama_to_hope(llama_model, **config_overrides):
    """A HopeForCausalLM holding the weights of an in-memory LlamaForCausalLM-compatible model."""
    from ..modeling_hope import HopeForCausalLM

    config = hope_config_from_llama(llama_model.config, **config_overrides)
    model = HopeForCausalLM(config).to(llama_model.dtype)
    state = llama_state_dict_to_hope(llama_model.state_dict())
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"weights do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()

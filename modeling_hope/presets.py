"""Named model sizes, each with a size-matched Llama (Transformer++) twin for like-for-like comparisons.

The paper's shapes (24 layers, 16 heads, 32K vocabulary; hidden 1024 / 1536 / 2048) and two CPU presets. The CMS
of every preset has a wide static level and a narrow in-context level; the Llama twin has the same vocabulary,
hidden size, depth and heads, with its MLP width chosen so that the parameter counts agree within 5%.
"""

import torch
from transformers import LlamaConfig

from .configuration_hope import HopeConfig


def _levels(static: int, in_context: int, period: int = 256, lr: float = 1e-3):
    return [{"intermediate_size": static, "period": 0, "lr": 0.0, "outer_period": 1},
            {"intermediate_size": in_context, "period": period, "lr": lr, "outer_period": 1}]


PRESETS = {
    "hope-5m": dict(vocab_size=8192, hidden_size=192, num_hidden_layers=4, num_attention_heads=4,
                    tie_word_embeddings=True, cms_levels=_levels(576, 192), max_position_embeddings=8192),
    "hope-20m": dict(vocab_size=8192, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
                     tie_word_embeddings=True, cms_levels=_levels(960, 384), max_position_embeddings=8192),
    "hope-340m": dict(vocab_size=32000, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                      cms_levels=_levels(864, 256, period=512)),
    "hope-760m": dict(vocab_size=32000, hidden_size=1536, num_hidden_layers=24, num_attention_heads=16,
                      cms_levels=_levels(1568, 512, period=512)),
    "hope-1.3b": dict(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
                      cms_levels=_levels(2208, 512, period=512)),
}


def hope_config(name: str, **overrides) -> HopeConfig:
    """The preset's HopeConfig; keyword arguments override its fields (e.g. mixer_type="titans")."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return HopeConfig(**{**PRESETS[name], **overrides})


def count_parameters(config) -> int:
    """Parameters of the causal LM built from `config` (HopeConfig or LlamaConfig), counted without allocating."""
    from transformers import AutoModelForCausalLM

    from .modeling_hope import HopeForCausalLM

    with torch.device("meta"):
        model = HopeForCausalLM(config) if isinstance(config, HopeConfig) else AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def llama_twin_config(config: HopeConfig, multiple_of: int = 32) -> LlamaConfig:
    """The LlamaConfig of equal vocabulary, hidden size, depth and heads whose parameter count is closest to
    `config`'s (its MLP width is the free variable)."""
    target = count_parameters(config)
    d, n = config.hidden_size, config.num_hidden_layers
    base = LlamaConfig(vocab_size=config.vocab_size, hidden_size=d, num_hidden_layers=n,
                       num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_attention_heads,
                       intermediate_size=multiple_of, tie_word_embeddings=config.tie_word_embeddings,
                       max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
                       rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
                       pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
                       eos_token_id=config.eos_token_id)
    per_unit = 3 * d * n  # parameters added per unit of MLP width
    width = max(multiple_of, round((target - count_parameters(base)) / per_unit / multiple_of) * multiple_of + multiple_of)
    base.intermediate_size = width
    return base

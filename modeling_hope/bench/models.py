"""The two models compared: a HOPE preset and its size-matched LlamaForCausalLM twin (SDPA attention)."""

import torch
from transformers import LlamaForCausalLM

from ..modeling_hope import HopeForCausalLM
from ..presets import count_parameters, hope_config, llama_twin_config

MODELS = ("hope", "llama")


def twin_config(config, max_context: int = 0):
    """The Llama twin's config with SDPA attention; its RoPE table covers `max_context` (no parameters change)."""
    llama = llama_twin_config(config)
    llama.max_position_embeddings = max(llama.max_position_embeddings, max_context)
    llama._attn_implementation = "sdpa"
    return llama


def build(name: str, preset: str, seed: int = 0, max_context: int = 0, device="cpu", dtype=torch.float32,
          **overrides):
    """One model of the pair, weights drawn from `seed` (on `device`, then cast to `dtype`); `overrides` are
    HopeConfig fields."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    config = hope_config(preset, **overrides)
    torch.manual_seed(seed)
    with torch.device(device):
        model = HopeForCausalLM(config) if name == "hope" else LlamaForCausalLM(twin_config(config, max_context))
    return model.to(dtype)


def describe(models: dict) -> dict:
    out = {}
    for name, model in models.items():
        cfg = model.config
        out[name] = {"class": type(model).__name__, "parameters": count_parameters(cfg),
                     "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_hidden_layers,
                     "num_attention_heads": cfg.num_attention_heads, "vocab_size": cfg.vocab_size,
                     "dtype": str(next(model.parameters()).dtype)}
        if name == "llama":
            out[name].update(intermediate_size=cfg.intermediate_size,
                             num_key_value_heads=cfg.num_key_value_heads,
                             attn_implementation=cfg._attn_implementation)
        else:
            out[name].update(mixer_type=cfg.mixer_type, memory_chunk_size=cfg.memory_chunk_size,
                             projection_chunk_size=cfg.projection_chunk_size, cms_levels=cfg.cms_levels,
                             memory_kernel=cfg.memory_kernel)
    return out


def random_ids(vocab_size: int, batch: int, length: int, seed: int, device="cpu"):
    """The same tokens on every device (drawn on the CPU)."""
    ids = torch.randint(0, vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
    return ids.to(device)

"""`hope convert llama-to-hope`: a Llama-family checkpoint (folder or Hub name) -> a HOPE Hub folder."""

import time
from pathlib import Path

from .levels import LevelSpec, is_logit_preserving
from .llama import hope_config_from_llama, llama_to_hope

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def load_source_config(src: str, mixer_type: str, levels):
    """The source's config, checked (cheaply, before any weight is read) for what cannot be converted."""
    from transformers import AutoConfig

    path = Path(src).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"{src}: no config.json (not a saved transformers model)")
    elif src.startswith((".", "/", "~")) or src.count("/") > 1:
        raise ValueError(f"{src}: no such folder")
    try:
        config = AutoConfig.from_pretrained(str(path) if path.exists() else src)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"could not read the config of {src!r}: {type(err).__name__}: {err}") from None
    hope_config_from_llama(config, levels, mixer_type)  # raises ValueError naming every problem
    return config


def load_tokenizer(src: str):
    """The source's tokenizer, or None when it has none. A local folder with tokenizer files must load."""
    from transformers import AutoTokenizer

    path = Path(src).expanduser()
    if path.exists() and not any((path / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else src)
    except (OSError, ValueError) as err:
        if path.exists():
            raise ValueError(f"the tokenizer in {src} does not load: {type(err).__name__}: {err}") from None
        return None


def conversion_section(src: str, levels, mixer_type: str, exact: bool) -> str:
    from .card import md_table

    rows = [(i + 1, "pretrained MLP" if lvl.init == "mlp" else "zero output (down_proj = 0)",
             lvl.size or "full", lvl.period or "static", lvl.lr) for i, lvl in enumerate(levels)]
    note = ("With every level's learning rate at zero this model computes exactly the logits of the original. "
            "An in-context level (period > 0, lr > 0) learns from the context's next-token loss, so the model "
            "departs from the original after its first update." if exact else
            "**This model is not logit-preserving**: " + ("the attention was replaced by fresh self-modifying Titans "
            "memories" if mixer_type != "attention" else "extra levels copied from the MLP change the function")
            + "; continue pre-training before use.")
    return (f"## Conversion\n\nConverted from `{src}` with `hope convert llama-to-hope` (paper section 7.3: the MLP "
            f"blocks initialise the CMS levels). Mixer: `{mixer_type}`. {note}\n\n"
            + md_table(("level", "initialised from", "width", "period", "lr"), rows))


def convert_llama(src: str, dst, levels=None, mixer_type: str = "attention", dtype=None, max_shard_size=None,
                  overwrite: bool = False) -> dict:
    """Load `src` with `from_pretrained`, convert, write `dst` atomically. Returns a summary."""
    import torch
    from transformers import AutoModelForCausalLM

    from .card import model_card
    from .hub import DEFAULT_MAX_SHARD_SIZE, save_hub_folder

    dst = Path(dst).expanduser()
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists (pass --overwrite to replace it)")
    if Path(src).expanduser().resolve() == dst.resolve():
        raise ValueError("SRC and DST are the same folder")
    levels = levels or [LevelSpec(init="mlp")]
    t0 = time.perf_counter()
    config = load_source_config(src, mixer_type, levels)
    tokenizer = load_tokenizer(src)
    try:
        source = AutoModelForCausalLM.from_pretrained(src, dtype=getattr(torch, dtype) if dtype else "auto")
    except (OSError, RuntimeError, ValueError) as err:  # e.g. weights whose shapes do not match the config
        raise ValueError(f"the weights of {src} do not load (mismatched shapes? see the report above): "
                         f"{type(err).__name__}: {err}") from None
    t_load = time.perf_counter()
    model = llama_to_hope(source, levels, mixer_type)
    del source
    t_convert = time.perf_counter()
    exact = mixer_type == "attention" and is_logit_preserving(levels, config.intermediate_size)
    card = model_card(model, f"{Path(str(src).rstrip('/')).name} as HOPE",
                      "A pretrained Llama-family model turned into HOPE (Nested Learning, Behrouz et al., "
                      "NeurIPS 2025) with the `hope` package.",
                      [conversion_section(src, levels, mixer_type, exact)],
                      base_model=None if Path(src).expanduser().exists() else src)
    save_hub_folder(model, dst, tokenizer=tokenizer, card=card, replace=overwrite,
                    max_shard_size=max_shard_size or DEFAULT_MAX_SHARD_SIZE)
    t_save = time.perf_counter()
    files = sorted(p.name for p in dst.iterdir())
    return {"src": src, "dst": str(dst), "source_model_type": config.model_type, "mixer_type": mixer_type,
            "dtype": str(model.dtype).removeprefix("torch."), "levels": model.config.cms_levels,
            "logit_preserving": exact, "tokenizer": tokenizer is not None,
            "parameters": sum(p.numel() for p in model.parameters()), "files": files,
            "seconds": {"load": round(t_load - t0, 3), "convert": round(t_convert - t_load, 3),
                        "save": round(t_save - t_convert, 3), "total": round(t_save - t0, 3)}}

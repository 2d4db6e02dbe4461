"""`hope convert checkpoint`: a `hope train` checkpoint (Accelerate state) -> Hub-ready folder with a model card."""

from pathlib import Path

MODEL_FILES = ("model.safetensors", "pytorch_model.bin")


def find_checkpoint(src) -> Path:
    """The checkpoint folder of `src`: a `step-N` folder itself, or the newest complete one of a run folder (or of
    its `checkpoints/` folder)."""
    from ..train.checkpoint import STATE_FILE, list_checkpoints

    path = Path(src).expanduser()
    if not path.is_dir():
        raise ValueError(f"{src}: no such folder")
    if (path / STATE_FILE).is_file():
        return path
    found = list_checkpoints(path.parent if path.name == "checkpoints" else path)
    if not found:
        raise ValueError(f"{src} is not a hope train checkpoint (no {STATE_FILE}) and holds no complete checkpoint "
                         f"under checkpoints/")
    return found[-1]


def model_classes(model_type: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..configuration_hope import HopeConfig
    from ..modeling_hope import HopeForCausalLM

    classes = {"hope": (HopeConfig, HopeForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}
    if model_type not in classes:
        raise ValueError(f"the checkpoint's model_type is {model_type!r}; hope train checkpoints hold 'hope' or "
                         f"'llama' models")
    return classes[model_type]


def load_weights(ckpt: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    if (ckpt / MODEL_FILES[0]).is_file():
        return load_file(str(ckpt / MODEL_FILES[0]))
    if (ckpt / MODEL_FILES[1]).is_file():
        return torch.load(ckpt / MODEL_FILES[1], map_location="cpu", weights_only=True)
    sharded = sorted(p.name for p in ckpt.iterdir() if p.name.startswith("pytorch_model_fsdp"))
    hint = (f" (sharded FSDP state {sharded}: merge it first with `accelerate merge-weights`)" if sharded else "")
    raise ValueError(f"{ckpt} has no model weights ({' or '.join(MODEL_FILES)}){hint}")


def load_checkpoint(src, dtype=None):
    """(model, tokenizer or None, checkpoint folder, trained steps) of a `hope train` checkpoint."""
    from transformers import AutoTokenizer

    from ..train.checkpoint import read_state
    from .weights import model_from_state_dict

    ckpt = find_checkpoint(src)
    state = read_state(ckpt)
    fields = dict(state.get("model_config") or {})
    if not fields:
        raise ValueError(f"{ckpt}/trainer_state.json has no model_config")
    config_cls, model_cls = model_classes(fields.pop("model_type", None))
    config = config_cls.from_dict(fields)
    model = model_from_state_dict(model_cls, config, load_weights(ckpt), dtype=dtype).eval()
    tokenizer = None
    for folder in (ckpt / "tokenizer", ckpt.parent.parent / "tokenizer"):
        if folder.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
            break
    return model, tokenizer, ckpt, int(state["step"])


def convert_checkpoint(src, dst, dtype=None, max_shard_size=None, overwrite: bool = False) -> dict:
    from ..train.export import generation_config
    from .card import training_card
    from .hub import DEFAULT_MAX_SHARD_SIZE, save_hub_folder

    model, tokenizer, ckpt, step = load_checkpoint(src, dtype)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt
    card = training_card(model, run_dir, step)
    save_hub_folder(model, dst, tokenizer=tokenizer, card=card, replace=overwrite,
                    generation_config=generation_config(tokenizer) if tokenizer is not None else None,
                    max_shard_size=max_shard_size or DEFAULT_MAX_SHARD_SIZE)
    return {"checkpoint": str(ckpt), "step": step, "model_type": model.config.model_type,
            "tokenizer": tokenizer is not None, "dst": str(dst)}

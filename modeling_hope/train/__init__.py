"""`hope train`: training HOPE (or its Llama twin) with Accelerate, from a laptop CPU to many GPUs.

Modules, one job each: `config` (options, YAML, command line), `model` (presets, model files, overrides),
`corpora` (the built-in Shakespeare, Gutenberg text), `data` (documents from files, folders or `datasets`, the
held-out split), `tokenizer` (AutoTokenizer or a byte-level BPE trained here), `batches` (packing into blocks,
deterministic micro-batches), `slow_levels` (CMS levels with outer_period > 1), `checkpoint` (atomic save_state,
resume), `signals` (Ctrl-C), `evaluate` (validation loss), `metrics` (JSONL, loss curve, trackers), `export`
(Hub-ready folder), `setup` (builds a run), `loop` (the training loop), `cli` (`hope train`).

Python use: `from modeling_hope.train import parse_args, train; train(parse_args(["--max-steps", "100"]))`.
"""

from .config import TrainConfig, parse_args
from .errors import TrainError


def train(cfg, callback=None) -> dict:
    from .loop import train as _train

    return _train(cfg, callback)


__all__ = ["TrainConfig", "TrainError", "parse_args", "train"]

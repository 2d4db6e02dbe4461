"""Checkpoints: `accelerator.save_state` into a temporary folder, renamed into place only once complete.

Layout: `<output>/checkpoints/step-00000120/` holds Accelerate's state (model, optimizer, scheduler, RNG of every
process, the registered slow-level accumulators), `tokenizer/`, and `trainer_state.json`, written last. A crash or
kill mid-write leaves only a `.tmp-*` folder, which is ignored and cleaned later; the previous checkpoint is never
touched before the new one is in place. The newest `keep` checkpoints are kept.
"""

import json
import logging
import shutil
import time
from pathlib import Path

from .errors import TrainError

PREFIX = "step-"
STATE_FILE = "trainer_state.json"


class _TiedWeightsNote(logging.Filter):
    """Accelerate warns at every save that it dropped the tied LM head from the safetensors file; loading ties it
    again (the resume test checks this), so the note is only noise."""

    def filter(self, record):
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())


def checkpoints_root(output_dir) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def read_state(path) -> dict:
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise TrainError(f"{path} is not a complete hope train checkpoint (no {STATE_FILE})")
    return json.loads((path / STATE_FILE).read_text())


def find_resume(output_dir, resume: str | None) -> Path | None:
    """The checkpoint to resume from: None (fresh start), the latest of output_dir, or the given folder."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise TrainError(f"--resume {resume}: no such checkpoint folder")
    if path.name == "checkpoints" or (path / "checkpoints").is_dir():  # a run folder or its checkpoints folder
        found = list_checkpoints(path if path.name != "checkpoints" else path.parent)
        if not found:
            raise TrainError(f"--resume {resume}: no complete checkpoint in it")
        return found[-1]
    read_state(path)
    return path


def check_compatible(saved: dict, current: dict) -> None:
    """Refuse a checkpoint of another model or optimizer, naming the fields that differ."""
    problems = []
    a, b = saved.get("model_config", {}), current["model_config"]
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        problems.append("model config differs in " + ", ".join(f"{k} (checkpoint {a.get(k)!r}, now {b.get(k)!r})"
                                                             for k in diff[:8]) + (" ..." if len(diff) > 8 else ""))
    for key in ("optimizer", "optimizer_kwargs"):
        if saved["train_config"].get(key) != current["train_config"].get(key):
            problems.append(f"{key} differs (checkpoint {saved['train_config'].get(key)!r}, "
                            f"now {current['train_config'].get(key)!r})")
    if problems:
        raise TrainError("cannot resume from a checkpoint of another configuration: " + "; ".join(problems)
                         + ". Use the checkpoint's own options (its config is in trainer_state.json) or start afresh "
                         "with another --output-dir")


def save_checkpoint(accelerator, output_dir, step: int, state: dict, tokenizer, keep: int) -> Path:
    """Collective: every process calls it (each writes its own RNG state)."""
    root = checkpoints_root(output_dir)
    final, tmp = root / f"{PREFIX}{step:08d}", root / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        tokenizer.save_pretrained(tmp / "tokenizer")
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "saved_at": time.time()}, indent=1,
                                                 default=str))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = root / f".old-{PREFIX}{step:08d}"
        if final.exists():  # re-saving a step (e.g. resumed at it): move the old one aside, then swap
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        for stale in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
        for junk in root.glob(".tmp-*"):
            if junk != tmp:
                shutil.rmtree(junk, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final

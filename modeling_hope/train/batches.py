"""Packing: documents -> one token stream with EOS separators -> fixed-length blocks -> micro-batches.

In-memory data: micro-batch `k` of a run is a pure function of `k` and the seed (a fresh permutation of the blocks
each epoch); process `r` of `W` takes rows `r*B:(r+1)*B` of the global micro-batch of `W*B` blocks. So resuming at
step `s` needs nothing but `s`, and one process with batch `W*B` sees the same data as `W` processes with `B`.
Streamed data: each process packs its shard in order; resuming re-reads (and skips) what was consumed.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .errors import TrainError
from .tokenizer import encode_documents


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha1(f"{text}|{tokenizer.eos_token_id}".encode()).hexdigest()


def tokenize_cached(texts: list[str], tokenizer, cache_dir: Path | None) -> np.ndarray:
    """encode_documents, cached in `cache_dir` under a hash of the texts and the tokenizer (resumes and reruns
    of a large corpus skip the tokenization)."""
    if cache_dir is None:
        return encode_documents(tokenizer, texts)
    digest = hashlib.sha1(tokenizer_fingerprint(tokenizer).encode())
    for text in texts:
        digest.update(hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest())
    path = Path(cache_dir) / f"tokens-{digest.hexdigest()[:20]}.npy"
    if path.is_file():
        return np.load(path)
    tokens = encode_documents(tokenizer, texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, tokens)
    tmp.replace(path)
    return tokens


def to_blocks(tokens: np.ndarray, seq_len: int, limit: int | None = None) -> torch.Tensor:
    n = len(tokens) // seq_len
    if limit is not None:
        n = min(n, limit)
    return torch.from_numpy(np.ascontiguousarray(tokens[:n * seq_len])).view(n, seq_len)


class BlockBatches:
    """Micro-batches of this process from the blocks of an in-memory token stream."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0):
        self.blocks = to_blocks(tokens, seq_len)
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.global_batch = batch_size * world
        n = len(self.blocks)
        if n < self.global_batch:
            raise TrainError(f"the training data has {len(tokens)} tokens: {n} block(s) of --seq-len {seq_len}, fewer "
                             f"than one batch of {self.global_batch} (--batch-size {batch_size} x {world} "
                             f"process(es)); use more data, a shorter --seq-len or a smaller --batch-size")
        self.per_epoch = n // self.global_batch
        self._epoch, self._perm = None, None
        self.seen = None  # set to a list to record the block indices of every micro-batch (tests)

    def indices(self, k: int) -> torch.Tensor:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(len(self.blocks), generator=gen)
        rows = self._perm[j * self.global_batch:(j + 1) * self.global_batch]
        return rows[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]

    def iterate(self, start: int = 0):
        k = start
        while True:
            rows = self.indices(k)
            if self.seen is not None:
                self.seen.append(rows.tolist())
            yield self.blocks[rows].long()
            k += 1

    def describe(self) -> dict:
        return {"blocks": len(self.blocks), "micro_batches_per_epoch": self.per_epoch}


class StreamBatches:
    """Micro-batches of this process from a streamed shard, packed in order; epochs repeat the stream."""

    def __init__(self, stream, tokenizer, seq_len: int, batch_size: int, rank: int = 0, world: int = 1):
        self.stream, self.tokenizer = stream, tokenizer
        self.seq_len, self.batch_size, self.rank, self.world = seq_len, batch_size, rank, world

    def _blocks(self):
        buf, epoch = [], 0
        while True:
            docs = 0
            for text in self.stream(self.rank, self.world, epoch):
                docs += 1
                buf.extend(encode_documents(self.tokenizer, [text]).tolist())
                while len(buf) >= self.seq_len:
                    yield buf[:self.seq_len]
                    buf = buf[self.seq_len:]
            if docs == 0:
                raise TrainError(f"the dataset is empty: process {self.rank} of {self.world} got no documents")
            epoch += 1

    def iterate(self, start: int = 0):
        blocks = self._blocks()
        k = 0
        while True:
            batch = torch.tensor([next(blocks) for _ in range(self.batch_size)], dtype=torch.long)
            if k >= start:
                yield batch
            k += 1

    def describe(self) -> dict:
        return {"streamed": True}

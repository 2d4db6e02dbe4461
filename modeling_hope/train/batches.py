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


class TokenStreamDigest:
    """sha256 chained over the micro-batches exactly as the loop reads them: `h_k = sha256(h_{k-1} || batch_k as
    int64 bytes)`. The state is a hex string kept in each checkpoint's trainer_state.json, so a resumed run ends with
    the same digest as an uninterrupted one; two runs with equal digests trained on the same tokens in the same order
    (of this process; with several processes, each hashes its own slice)."""

    SEED = hashlib.sha256(b"hope-train token stream v1").hexdigest()

    def __init__(self, state: str | None = None, batches: int = 0, tokens: int = 0):
        self.state, self.batches, self.tokens = state or self.SEED, batches, tokens

    def update(self, batch: torch.Tensor) -> None:
        digest = hashlib.sha256(bytes.fromhex(self.state))
        digest.update(str(tuple(batch.shape)).encode())
        digest.update(batch.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
        self.state, self.batches, self.tokens = digest.hexdigest(), self.batches + 1, self.tokens + batch.numel()

    def to_dict(self) -> dict:
        return {"token_stream_sha256": self.state, "token_stream_batches": self.batches,
                "token_stream_tokens": self.tokens}

    @classmethod
    def from_state(cls, saved: dict | None):
        """From a checkpoint's trainer state (a fresh digest without one); None when the checkpoint predates the
        digest (the stream before it is unknown, so no digest is reported)."""
        if saved is None:
            return cls()
        if "token_stream_sha256" not in saved:
            return None
        return cls(saved["token_stream_sha256"], saved.get("token_stream_batches", 0),
                   saved.get("token_stream_tokens", 0))


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

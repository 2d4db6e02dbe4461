"""Tokenizers: any `AutoTokenizer` name or folder, or a byte-level BPE trained here on the training text.

The trained tokenizer has `<|endoftext|>` (the document separator; also BOS and EOS, as GPT-2's) and `<|pad|>`, and
is returned as a `PreTrainedTokenizerFast`, so `save_pretrained` / `AutoTokenizer.from_pretrained` work on it.
"""

import os

import numpy as np

from .errors import TrainError

EOT, PAD = "<|endoftext|>", "<|pad|>"
MIN_BPE_VOCAB = 256 + 2  # the byte alphabet and the two special tokens


def load_tokenizer(name: str):
    """AutoTokenizer from a Hub name or a folder, with a pad token (EOS when it has none)."""
    from transformers import AutoTokenizer

    path = os.path.expanduser(name)
    if not os.path.exists(path) and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise TrainError(f"tokenizer folder {name!r} does not exist")
    try:
        tok = AutoTokenizer.from_pretrained(path if os.path.isdir(path) else name)
    except Exception as err:  # noqa: BLE001 - one clear message for every failure (offline, typo, no files)
        raise TrainError(f"could not load tokenizer {name!r}: {type(err).__name__}: {err}") from err
    if tok.eos_token_id is None:
        raise TrainError(f"tokenizer {name!r} has no EOS token; packing needs one between documents")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def train_bpe(texts, vocab_size: int, max_chars: int | None = None):
    """Train a byte-level BPE of at most `vocab_size` tokens on an iterable of strings (stops after `max_chars`
    characters). Small corpora can give fewer tokens than asked; the model's vocab_size follows len(tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(vocab_size, int) or vocab_size < MIN_BPE_VOCAB:
        raise TrainError(f"--train-tokenizer must be at least {MIN_BPE_VOCAB} (256 bytes + 2 special tokens), "
                         f"got {vocab_size!r}")

    def capped():
        seen = 0
        for text in texts:
            if max_chars is not None and seen >= max_chars:
                return
            piece = text if max_chars is None else text[:max_chars - seen]
            seen += len(piece)
            yield piece

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(capped(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOT, eos_token=EOT, pad_token=PAD,
                                   clean_up_tokenization_spaces=False)


def encode_documents(tokenizer, texts, eos: bool = True) -> np.ndarray:
    """All documents as one int32 token stream, each followed by EOS (the packing separator)."""
    eos_id = tokenizer.eos_token_id
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts, batch = [], []

    def flush():
        if not batch:
            return
        if backend is not None:
            ids = [enc.ids for enc in backend.encode_batch(batch, add_special_tokens=False)]
        else:
            ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for row in ids:
            parts.append(np.asarray(row + ([eos_id] if eos else []), dtype=np.int32))
        batch.clear()

    for text in texts:
        batch.append(text)
        if len(batch) >= 64:
            flush()
    flush()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

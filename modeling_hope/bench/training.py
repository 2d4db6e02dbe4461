"""Forward+backward training throughput: the loss on (batch, length) random tokens and its backward (no optimizer
step), HOPE and Llama interleaved, best of N."""

from .models import build, random_ids
from .timing import now, throughput_sweep


def train_step_seconds(model, ids) -> float:
    start = now()
    model(ids, labels=ids).loss.backward()
    seconds = now() - start
    model.zero_grad(set_to_none=True)
    return seconds


def run(models: dict, batches, lengths, repeats: int, seed: int = 0, log=print) -> dict:
    for model in models.values():
        model.train()
        train_step_seconds(model, random_ids(model.config.vocab_size, 1, 64, seed, model.device))  # warm-up
    results = throughput_sweep(models, batches, lengths, repeats, seed, train_step_seconds, "train", log)
    return {"method": "one forward of the causal-LM loss on random tokens plus its backward, gradients dropped "
                      "after each step; the models alternate within each repeat (order swapped every repeat); "
                      "tokens/s = batch * length / best time",
            "repeats": repeats, "by_batch": results}


def run_naive_model(hope, preset: str, length: int, repeats: int, seed: int = 0, log=print) -> dict:
    """The whole model with `memory_impl="naive"` (token-by-token memories, same weights) against the chunked model
    on the same (1, length) tokens, forward+backward; the naive model runs once (its cost per token does not depend
    on the length)."""
    naive = build("hope", preset, device=hope.device, dtype=hope.dtype, memory_impl="naive").train()
    naive.load_state_dict(hope.state_dict())
    hope.train()
    ids = random_ids(hope.config.vocab_size, 1, length, seed, hope.device)
    naive_seconds = train_step_seconds(naive, ids)
    chunked_seconds = min(train_step_seconds(hope, ids) for _ in range(repeats))
    out = {"method": run_naive_model.__doc__.replace("\n   ", ""), "length": length, "batch": 1,
           "naive_tokens_per_second": length / naive_seconds, "chunked_tokens_per_second": length / chunked_seconds,
           "chunked_over_naive": naive_seconds / chunked_seconds}
    log(f"naive model at length {length}: {out['naive_tokens_per_second']:.2f} tok/s, chunked "
        f"{out['chunked_tokens_per_second']:.0f} tok/s ({out['chunked_over_naive']:.0f}x)")
    return out

"""Prefill throughput: one no-grad forward over (batch, length) tokens that builds a fresh cache (HopeCache for
HOPE, DynamicCache for Llama) and computes the logits of the last position only, as generate() does."""

import time

import torch

from .models import random_ids
from .timing import interleaved, summary


@torch.no_grad()
def prefill(model, ids, cache=None):
    """Runs the prompt through `model` with a cache; returns the cache."""
    return model(ids, cache=cache, use_cache=True, logits_to_keep=1).cache


def prefill_seconds(model, ids) -> float:
    start = time.perf_counter()
    cache = prefill(model, ids)
    seconds = time.perf_counter() - start
    del cache
    return seconds


def run(models: dict, batches, lengths, repeats: int, seed: int = 0, log=print) -> dict:
    for model in models.values():
        model.eval()
        prefill_seconds(model, random_ids(model.config.vocab_size, 1, 64, seed))
    results = {}
    for batch in batches:
        for length in lengths:
            ids = random_ids(next(iter(models.values())).config.vocab_size, batch, length, seed + length)
            times = interleaved({name: (lambda m=m: prefill_seconds(m, ids)) for name, m in models.items()}, repeats)
            entry = {name: summary(t, batch * length) for name, t in times.items()}
            for e in entry.values():
                e["tokens_per_second"] = e.pop("per_second")
            entry["hope_over_llama"] = entry["hope"]["tokens_per_second"] / entry["llama"]["tokens_per_second"]
            results.setdefault(str(batch), {})[str(length)] = entry
            log(f"prefill batch {batch} length {length}: hope {entry['hope']['tokens_per_second']:.0f} tok/s, "
                f"llama {entry['llama']['tokens_per_second']:.0f} tok/s, ratio {entry['hope_over_llama']:.3f}")
    return {"method": "torch.no_grad forward with use_cache=True into a fresh cache (HopeCache / DynamicCache), "
                      "logits_to_keep=1; interleaved, best of N; tokens/s = batch * length / best time",
            "repeats": repeats, "by_batch": results}

"""Prefill throughput: one no-grad forward over (batch, length) tokens that builds a fresh cache (HopeCache for
HOPE, DynamicCache for Llama) and computes the logits of the last position only, as generate() does."""

import torch

from .models import random_ids
from .timing import now, throughput_sweep


@torch.no_grad()
def prefill(model, ids, cache=None):
    """Runs the prompt through `model` with a cache; returns the cache."""
    return model(ids, cache=cache, use_cache=True, logits_to_keep=1).cache


def prefill_seconds(model, ids) -> float:
    start = now()
    cache = prefill(model, ids)
    seconds = now() - start
    del cache
    return seconds


def run(models: dict, batches, lengths, repeats: int, seed: int = 0, log=print) -> dict:
    for model in models.values():
        model.eval()
        prefill_seconds(model, random_ids(model.config.vocab_size, 1, 64, seed, model.device))
    results = throughput_sweep(models, batches, lengths, repeats, seed, prefill_seconds, "prefill", log)
    return {"method": "torch.no_grad forward with use_cache=True into a fresh cache (HopeCache / DynamicCache), "
                      "logits_to_keep=1; interleaved, best of N; tokens/s = batch * length / best time",
            "repeats": repeats, "by_batch": results}

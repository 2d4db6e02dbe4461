"""Interleaved timing: the models alternate within each repeat (and swap order every repeat), so that a slow
moment of a shared machine hits both, and the best of N repeats is reported."""

import time

import torch

from .models import random_ids


def now() -> float:
    """A host clock reading after the GPU's queued work is done (its kernels run asynchronously)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def free_memory(models=()):
    """Drops gradients and returns the GPU allocator's cached blocks (after an out-of-memory error)."""
    import gc

    for model in dict(models).values():
        model.zero_grad(set_to_none=True)
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def interleaved(steps: dict, repeats: int) -> dict:
    """`steps` maps a name to a function that runs one measured step and returns its seconds (so each step can
    leave its own setup out of the clock). Returns {name: [seconds per repeat]}."""
    names = list(steps)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(steps[name]())
    return times


def summary(seconds: list, work: float) -> dict:
    """Best (the figure) and median of `work` units per second, with the raw seconds."""
    ordered = sorted(seconds)
    return {"best_seconds": ordered[0], "median_seconds": ordered[len(ordered) // 2], "seconds": seconds,
            "per_second": work / ordered[0]}


def throughput_sweep(models: dict, batches, lengths, repeats: int, seed: int, step_seconds, label: str, log) -> dict:
    """tokens/s of `step_seconds(model, ids)` for every (batch, length), the models interleaved, best of N; plus the
    HOPE / Llama ratio. Returns {batch: {length: entry}}."""
    results = {}
    for batch in batches:
        for length in lengths:
            first = next(iter(models.values()))
            ids = random_ids(first.config.vocab_size, batch, length, seed + length, first.device)
            try:
                times = interleaved({name: (lambda m=m: step_seconds(m, ids)) for name, m in models.items()}, repeats)
            except torch.OutOfMemoryError as e:  # a GPU too small for this length: recorded, the sweep goes on
                times = f"out of memory: {str(e)[:300]}"
            if isinstance(times, str):  # freed outside the except block, whose traceback holds the step's tensors
                free_memory(models)
                results.setdefault(str(batch), {})[str(length)] = {"error": times}
                log(f"{label} batch {batch} length {length}: {times[:13]}")
                continue
            entry = {name: summary(t, batch * length) for name, t in times.items()}
            for e in entry.values():
                e["tokens_per_second"] = e.pop("per_second")
            entry["hope_over_llama"] = entry["hope"]["tokens_per_second"] / entry["llama"]["tokens_per_second"]
            results.setdefault(str(batch), {})[str(length)] = entry
            log(f"{label} batch {batch} length {length}: hope {entry['hope']['tokens_per_second']:.0f} tok/s, "
                f"llama {entry['llama']['tokens_per_second']:.0f} tok/s, ratio {entry['hope_over_llama']:.3f}")
    return results

"""Interleaved timing: the models alternate within each repeat (and swap order every repeat), so that a slow
moment of a shared machine hits both, and the best of N repeats is reported."""

import time


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


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

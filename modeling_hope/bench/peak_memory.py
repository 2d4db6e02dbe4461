"""Peak memory of one step, each measurement in a fresh child process (`python -m modeling_hope.bench.peak_memory`).

The child builds the one model and its input, collects garbage and returns freed heap to the system
(`malloc_trim`), resets the kernel's resident-set high-water mark (`echo 5 > /proc/self/clear_refs`, Linux), reads
its resident set (VmRSS), runs one step and reads the high-water mark (VmHWM). The figure is VmHWM - VmRSS: the
peak resident memory the step added on top of the model, its input and the libraries (activations, gradients,
temporaries, the cache). Where clear_refs is unavailable, the high-water mark is `getrusage(RUSAGE_SELF).ru_maxrss`
and the figure is a lower bound (the method field says which was used).

On a GPU the measurement runs in this process: the step's peak of `torch.cuda.max_memory_allocated` less the
memory allocated before it (the model and its input), the model freed after each measurement."""

import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

MODES = ("train", "prefill")


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def variants(recompute: int) -> dict:
    """The training-memory variants besides the two defaults: HOPE with chunk recomputation (`memory_recompute`),
    and each model with transformers' activation checkpointing (layer inputs kept, layers recomputed)."""
    if not recompute:
        return {}
    return {"hope_recompute": ("hope", {"memory_recompute": recompute}, False),
            "hope_recompute_checkpointing": ("hope", {"memory_recompute": recompute}, True),
            "llama_checkpointing": ("llama", {}, True)}


def _model_and_input(model_name, preset, mode, batch, length, seed, overrides, checkpointing, device, dtype):
    """The measured model (in train mode for a training step, with activation checkpointing if asked) and its
    random input."""
    import torch

    from .models import build, random_ids

    model = build(model_name, preset, seed, max_context=length, device=device, dtype=getattr(torch, dtype),
                  **(overrides or {}))
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train(mode == "train")
    return model, random_ids(model.config.vocab_size, batch, length, seed, device)


def _step(model, ids, mode):
    from .prefill import prefill

    if mode == "train":
        model(ids, labels=ids).loss.backward()
    else:
        prefill(model, ids)


def measure_cuda(model_name: str, preset: str, mode: str, batch: int, length: int, seed: int,
                 overrides: dict | None = None, checkpointing: bool = False, device="cuda", dtype="float32") -> dict:
    import torch

    from .timing import free_memory

    free_memory()
    model, ids = _model_and_input(model_name, preset, mode, batch, length, seed, overrides, checkpointing, device,
                                  dtype)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = {"model": model_name, "overrides": overrides or {}, "activation_checkpointing": checkpointing,
           "mode": mode, "batch": batch, "length": length, "dtype": dtype,
           "high_water_mark": "torch.cuda.max_memory_allocated"}
    try:
        _step(model, ids, mode)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        out.update(baseline_mib=base / 2**20, peak_mib=peak / 2**20, peak_delta_mib=(peak - base) / 2**20)
    except torch.OutOfMemoryError as e:
        out["error"] = f"out of memory: {str(e)[:300]}"
    del model, ids
    free_memory()
    return out


def measure_here(model_name: str, preset: str, mode: str, batch: int, length: int, seed: int,
                 overrides: dict | None = None, checkpointing: bool = False, dtype: str = "float32") -> dict:
    import torch

    model, ids = _model_and_input(model_name, preset, mode, batch, length, seed, overrides, checkpointing, "cpu",
                                  dtype)
    gc.collect()
    _malloc_trim()
    exact = _reset_high_water_mark()
    base = _status_kib("VmRSS")
    ru_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _step(model, ids, mode)
    peak = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if not exact:
        base = max(base or 0, ru_before)
    return {"model": model_name, "overrides": overrides or {}, "activation_checkpointing": checkpointing,
            "mode": mode, "dtype": dtype, "batch": batch, "length": length, "threads": torch.get_num_threads(),
            "baseline_rss_mib": base / 1024, "peak_rss_mib": peak / 1024, "peak_delta_mib": (peak - base) / 1024,
            "high_water_mark": "VmHWM after clear_refs" if exact else "ru_maxrss (lower bound)"}


def child_env(threads: int | None = None) -> dict:
    """This process's environment for a child interpreter: the repository root first on PYTHONPATH, and
    OMP_NUM_THREADS when `threads` is given."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def measure(model_name: str, preset: str, mode: str, batch: int, length: int, seed: int = 0,
            threads: int | None = None, timeout: float | None = None, overrides: dict | None = None,
            checkpointing: bool = False, dtype: str = "float32") -> dict:
    """Runs one measurement in a fresh interpreter and returns its figures (or {'error': ...})."""
    env = child_env(threads)
    args = [sys.executable, "-m", "modeling_hope.bench.peak_memory", json.dumps(
        {"model_name": model_name, "preset": preset, "mode": mode, "batch": batch, "length": length, "seed": seed,
         "overrides": overrides, "checkpointing": checkpointing, "dtype": dtype})]
    try:
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if proc.returncode != 0:
        return {"error": f"child exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(preset: str, modes, batches, lengths, seed: int = 0, threads: int | None = None, log=print,
        deadline: float | None = None, recompute: int = 0, device="cpu", dtype: str = "float32") -> dict:
    """Both models at every (mode, batch, length), and in training the `variants`; measurements that would start
    after `deadline` (time.perf_counter()) are skipped and listed."""
    import time

    results, errors, skipped = {}, [], []
    for mode in modes:
        for batch in batches:
            for length in lengths:
                entry = {}
                if deadline is not None and time.perf_counter() > deadline:
                    skipped.append({"section": "memory", "mode": mode, "batch": batch, "length": length,
                                    "reason": "--budget spent"})
                    continue
                runs = {"hope": ("hope", {}, False), "llama": ("llama", {}, False)}
                if mode == "train":
                    runs.update(variants(recompute))
                for name, (model_name, overrides, checkpointing) in runs.items():
                    if str(device).startswith("cuda"):
                        r = measure_cuda(model_name, preset, mode, batch, length, seed, overrides, checkpointing,
                                         device, dtype)
                    else:
                        r = measure(model_name, preset, mode, batch, length, seed, threads, overrides=overrides,
                                    checkpointing=checkpointing, dtype=dtype)
                    entry[name] = r
                    if "error" in r:
                        errors.append({"mode": mode, "batch": batch, "length": length, "model": name, **r})
                if all("peak_delta_mib" in entry[n] for n in ("hope", "llama")):
                    entry["hope_over_llama"] = entry["hope"]["peak_delta_mib"] / entry["llama"]["peak_delta_mib"]
                    log(f"peak memory {mode} batch {batch} length {length}: " + ", ".join(
                        f"{n} +{entry[n]['peak_delta_mib']:.0f} MiB" for n in runs if "peak_delta_mib" in entry[n]))
                results.setdefault(mode, {}).setdefault(str(batch), {})[str(length)] = entry
    return {"method": __doc__.split("\n\n", 1)[1].replace("\n", " "), "by_mode": results, "errors": errors,
            "skipped": skipped}


if __name__ == "__main__":
    print(json.dumps(measure_here(**json.loads(sys.argv[1]))))

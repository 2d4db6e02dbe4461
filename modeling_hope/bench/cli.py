"""`hope bench`: HOPE against its size-matched Llama twin (SDPA attention), measured in one run on this machine.

    hope bench                      # the full run (hope-5m): JSON + PNG under bench/results/
    hope bench --quick --out x.json # a seconds-long smoke run on tiny lengths

Sections: train (forward+backward tokens/s), prefill (tokens/s), decode (ms/token at several contexts), memory (peak
RSS of one step, fresh child process each), cache_size (state bytes per sequence, paper presets), operators (chunked
memory scans against their naive references), naive_model (the whole model with naive memories, forward+backward,
at a short length), compile (torch.compile with the compiled chunk step against eager: training and decoding).
Each timed section runs in a fresh child process (`--no-isolate`: all in this one). A section left out, or a length
skipped, is recorded under "skipped" with the reason."""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import cache_size, compiled, decode, flops, machine, operators, peak_memory, prefill, targets, training
from .models import MODELS, build, describe
from .timing import free_memory

SECTIONS = ("train", "prefill", "decode", "cache_size", "memory", "operators", "naive_model", "compile")  # in order
# timed in a child process each: a section's figures then do not depend on what ran before it in the process (after
# the training section's 8192-token steps, the same decoding and operator code measured up to 1.6x slower: the heap
# and its page faults, not the code). cache_size times nothing; memory starts a child per measurement itself.
ISOLATED = ("train", "prefill", "decode", "operators", "naive_model", "compile")
QUICK = dict(train_lengths=[32, 64], decode_contexts=[32, 96], decode_steps=3, prefill_chunk=64, repeats=2,
             operator_len=64, naive_len=16, memory_lengths=[64], memory_modes=["train"], naive_model_len=4,
             compile_length=32, compile_context=32, compile_backend="aot_eager")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="hope bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--preset", default="hope-5m", help="HOPE preset benchmarked against its Llama twin")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes for train, prefill and memory")
    p.add_argument("--train-lengths", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--prefill-lengths", type=int, nargs="+", default=None, help="default: the train lengths")
    p.add_argument("--decode-contexts", type=int, nargs="+", default=[512, 2048, 8192, 32768])
    p.add_argument("--decode-steps", type=int, default=16, help="timed decode steps per model and context")
    p.add_argument("--decode-block", type=int, default=8,
                   help="consecutive decode steps per model before the other model's turn (1: alternate every token)")
    p.add_argument("--prefill-chunk", type=int, default=8192, help="HOPE's prefill chunk on the way to a context")
    p.add_argument("--llama-max-context", type=int, default=None,
                   help="skip (and record) Llama decoding at larger contexts, whose one-call prefill is slow on CPU")
    p.add_argument("--repeats", type=int, default=3, help="best of N for train and prefill")
    p.add_argument("--memory-lengths", type=int, nargs="+", default=None, help="default: the train lengths")
    p.add_argument("--memory-modes", nargs="+", default=["train", "prefill"], choices=peak_memory.MODES)
    p.add_argument("--memory-recompute", type=int, default=4,
                   help="also measure training memory with this memory_recompute (chunks per segment), with and "
                        "without activation checkpointing, and Llama with it (0: only the two defaults)")
    p.add_argument("--cache-presets", nargs="+", default=["hope-340m", "hope-760m", "hope-1.3b"])
    p.add_argument("--cache-contexts", type=int, nargs="+", default=[4096, 32768, 131072])
    p.add_argument("--operator-len", type=int, default=2048)
    p.add_argument("--naive-len", type=int, default=2048, help="length at which the naive operators are timed")
    p.add_argument("--naive-model-len", type=int, default=64,
                   help="length of the naive_model section (the whole model with naive memories); 0 skips it")
    p.add_argument("--compile-length", type=int, default=2048, help="training length of the compile section")
    p.add_argument("--compile-context", type=int, default=2048, help="decoding context of the compile section")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compile section and the compiled operators (--quick: "
                        "aot_eager, which runs the same code path without inductor's minutes of cold compiling)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    p.add_argument("--budget", type=float, default=1140.0,
                   help="seconds: a section (or memory measurement) that would start later is skipped and recorded")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of this process and of the memory children (default 1; 0: torch's own "
                        "choice). On the 2-core machine shared with other jobs, two OpenMP threads per process made "
                        "a training step at 512 68x slower for HOPE and 14x for Llama (each of HOPE's many small ops "
                        "waits at a barrier for a descheduled thread); HOPE gains little from a second thread even "
                        "on an idle machine")
    p.add_argument("--device", default="cpu", help="cpu or cuda (a GPU: timings synchronise with it, peak memory is "
                                                     "torch.cuda.max_memory_allocated, the train section adds MFU)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="both models' weights (default float32 on the CPU, bfloat16 on a GPU)")
    p.add_argument("--flops", action=argparse.BooleanOptionalAction, default=None,
                   help="count each training step's FLOPs (torch's FlopCounterMode) for MFU (default: on a GPU)")
    p.add_argument("--flops-max-length", type=int, default=2048,
                   help="count FLOPs at train lengths up to this (0: all)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the accelerator's peak for MFU (default: the datasheet's dense bf16 figure of a known GPU)")
    p.add_argument("--memory-kernel", default="auto", choices=["auto", "torch"],
                   help="HOPE's memory_kernel: auto runs no-grad calls (prefill, decoding) through the fused Triton "
                        "kernel where it applies (a GPU with Triton), torch always the PyTorch chunk loop")
    p.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=True,
                   help="run each timed section (%s) in a fresh child process that builds the models again from "
                        "--seed (default); --no-isolate runs every section in this process" % ", ".join(ISOLATED))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # a section's child: no summary lines
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny lengths: a smoke run of every section in seconds")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/hope_bench_cpu.json, or "
                                               "hope_bench_quick.json in the working directory with --quick)")
    p.add_argument("--plot", default=None, help="PNG path (default: the JSON path with .png)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if p.get_default(key) == getattr(args, key) or getattr(args, key) is None:
                setattr(args, key, value)
    on_gpu = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    args.flops = on_gpu if args.flops is None else args.flops
    args.prefill_lengths = args.prefill_lengths or args.train_lengths
    args.memory_lengths = args.memory_lengths or args.train_lengths
    if args.out is None:
        kind = "gpu" if on_gpu else "cpu"
        args.out = "hope_bench_quick.json" if args.quick else f"bench/results/hope_bench_{kind}.json"
    if args.plot is None and not args.no_plot:
        args.plot = str(Path(args.out).with_suffix(".png"))
    return args


def check_finite(obj, path="") -> list:
    """Paths of the non-finite numbers in a result tree."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in check_finite(v, f"{path}/{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in check_finite(v, f"{path}[{i}]")]
    return []


def _write(results, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def child_command(argv, name: str, out: str) -> list:
    """The command line that runs section `name` alone in a child process (the parent's options, later ones
    overriding), writing its results to `out`. The parent has decided that the section starts: no budget of its own."""
    return [sys.executable, "-m", "modeling_hope.bench.cli", *argv, "--sections", name, "--no-isolate", "--child",
            "--no-plot", "--out", out, "--budget", "1e9"]


def run_child(argv, name: str) -> dict:
    """Section `name`'s results from a fresh process, or the child's failure as the section's error."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, f"{name}.json")
        proc = subprocess.run(child_command(argv, name, out))
        child = json.loads(Path(out).read_text()) if os.path.exists(out) else {}
    if name in child.get("sections", {}):
        return child["sections"][name]
    return {"error": f"the child process running section {name!r} exited with code {proc.returncode} without its "
                     "results"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    started = time.perf_counter()
    results = {"schema": "hope-bench/1", "command": "hope bench " + " ".join(argv),
               "settings": {k: v for k, v in vars(args).items() if k not in ("out", "plot", "no_plot", "child")},
               "machine": machine.describe(args.device), "code": machine.code_version(),
               "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "sections": {}, "skipped": [], "errors": [], "section_seconds": {}}
    for s in SECTIONS:
        if s not in args.sections:
            results["skipped"].append({"section": s, "reason": "not in --sections"})
    if "naive_model" in args.sections and args.naive_model_len <= 0:
        args.sections.remove("naive_model")
        results["skipped"].append({"section": "naive_model", "reason": "--naive-model-len 0"})
    from .. import fast_weight_memory

    fast_weight_memory.COMPILE_BACKEND = args.compile_backend
    max_context = max([*args.decode_contexts, *args.train_lengths, *args.prefill_lengths])
    dtype = getattr(torch, args.dtype)
    # isolated, this process only describes the models (on the meta device: no memory) and runs the untimed sections
    models = {name: build(name, args.preset, args.seed, max_context, "meta" if args.isolate else args.device, dtype,
                          memory_kernel=args.memory_kernel) for name in MODELS}
    results["models"] = describe(models)
    sections = results["sections"]
    say = (lambda msg: None) if args.child else log
    say(f"hope bench: {args.preset} ({results['models']['hope']['parameters'] / 1e6:.2f}M) vs Llama twin "
        f"({results['models']['llama']['parameters'] / 1e6:.2f}M), {torch.get_num_threads()} threads")

    deadline = started + args.budget

    def section(name, fn):
        if name not in args.sections:
            return
        if time.perf_counter() > deadline:
            results["skipped"].append({"section": name, "reason": f"--budget {args.budget:.0f} s spent"})
            return
        t0 = time.perf_counter()
        if args.isolate and name in ISOLATED:
            fn = lambda: run_child(argv, name)  # noqa: E731
        try:
            sections[name] = fn()
        except Exception as e:  # one broken section (a GPU out of memory, say) is recorded; the others still run
            sections[name] = {"error": f"{type(e).__name__}: {str(e)[:1000]}"}
        if "error" in sections[name]:
            free_memory(models)
            results["errors"].append({"section": name, **sections[name]})
            log(f"section {name} failed: {sections[name]['error']}")
        results["section_seconds"][name] = time.perf_counter() - t0
        results["skipped"] += sections[name].get("skipped", []) if isinstance(sections[name], dict) else []
        _write(results, args.out)

    def train():
        out = training.run(models, args.batch, args.train_lengths, args.repeats, args.seed, log)
        if args.flops:
            flops.add_utilisation(out, models, args.seed, args.peak_tflops or flops.peak_tflops(args.device),
                                  args.flops_max_length)
        return out

    section("train", train)
    section("prefill", lambda: prefill.run(models, args.batch, args.prefill_lengths, args.repeats, args.seed, log))
    section("decode", lambda: decode.run(models, args.decode_contexts, args.decode_steps, args.prefill_chunk,
                                         args.llama_max_context, args.seed, log=log, block=args.decode_block))
    section("cache_size", lambda: cache_size.run(args.cache_presets, args.cache_contexts, args.preset,
                                                 (sections.get("decode") or {}).get("by_context")))
    section("memory", lambda: peak_memory.run(args.preset, args.memory_modes, args.batch, args.memory_lengths,
                                              args.seed, args.threads, log, deadline, args.memory_recompute,
                                              args.device, args.dtype))
    section("operators", lambda: operators.run(args.preset, args.operator_len, args.naive_len, args.repeats,
                                               seed=args.seed, log=log, device=args.device, dtype=dtype))
    section("naive_model", lambda: training.run_naive_model(models["hope"], args.preset, args.naive_model_len,
                                                            args.repeats, args.seed, log))
    section("compile", lambda: compiled.run(models["hope"], args.preset, args.compile_length, args.compile_context,
                                            args.decode_steps, args.repeats, args.seed, log, args.compile_backend,
                                            llama=models["llama"]))
    results["targets"] = targets.evaluate(sections)
    results["elapsed_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    bad = check_finite(results)
    results["non_finite"] = bad
    bad = bad + results["errors"]
    _write(results, args.out)
    if args.plot:
        from .plot import draw

        draw(results, args.plot)
    say(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else "") + f" in {results['elapsed_seconds']:.0f} s")
    for name, t in results["targets"].items():
        say(f"  target {name}: {t}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

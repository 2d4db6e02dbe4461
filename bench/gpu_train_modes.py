"""HOPE's training step on a GPU with the memories' chunk step eager, compiled (inductor, `compile_memory=True`) and
compiled into CUDA graphs (the same with torch.compile's mode="reduce-overhead"), beside the Llama twin; the same
weights and tokens for all, steps interleaved, best of --repeats. The eager step is bound by kernel launches (about
30 per chunk and memory group, 32 chunks x 24 layers at 2048 tokens); a CUDA graph replays a compiled chunk step's
kernels in one launch.

    python bench/gpu_train_modes.py --out results.json            # on a GPU: hope-340m, bf16, length 2048
    python bench/gpu_train_modes.py --device cpu --preset hope-5m --length 64 --modes eager compiled  # plumbing"""

import argparse
import functools
import json
import time

import torch

from modeling_hope import fast_weight_memory
from modeling_hope.bench.machine import describe
from modeling_hope.bench.models import build, random_ids

MODES = ("llama", "eager", "compiled", "cudagraphs")  # in this order: the riskiest last


@functools.cache
def graphed(fn):
    """`fast_weight_memory.compiled` with CUDA graphs: one graph per chunk shape, replayed."""
    return torch.compile(fn, dynamic=False, mode="reduce-overhead")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="hope-340m")
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, help="default bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype or ("bfloat16" if gpu else "float32"))
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    default_compiled = fast_weight_memory.compiled
    models, chunk_compile = {}, {}
    for mode in args.modes:
        name = "llama" if mode == "llama" else "hope"
        models[mode] = build(name, args.preset, 0, args.length, args.device, dtype,
                             **({} if name == "llama" else {"compile_memory": mode != "eager"})).train()
        chunk_compile[mode] = graphed if mode == "cudagraphs" else default_compiled
    ids = random_ids(models[args.modes[0]].config.vocab_size, 1, args.length, 0, args.device)

    def step(mode):
        fast_weight_memory.compiled = chunk_compile[mode]
        if mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        sync()
        start = time.perf_counter()
        loss = models[mode](ids, labels=ids).loss
        loss.backward()
        sync()
        seconds = time.perf_counter() - start
        models[mode].zero_grad(set_to_none=True)
        return seconds, loss.item()

    out = {"command": "python bench/gpu_train_modes.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
           "machine": describe(args.device), "preset": args.preset, "length": args.length, "dtype": str(dtype),
           "modes": {}}

    def write():
        if args.out:
            with open(args.out, "w") as f:
                json.dump(out, f, indent=1)

    for mode in args.modes:
        try:
            first = [step(mode) for _ in range(2)]  # compiles (and records the graphs)
            out["modes"][mode] = {"first_two_steps_seconds": [s for s, _ in first], "loss": first[-1][1],
                                  "seconds": []}
            print(f"{mode}: first steps {[round(s, 2) for s, _ in first]} s, loss {first[-1][1]:.6f}", flush=True)
        except Exception as e:  # recorded; the other modes still run
            out["modes"][mode] = {"error": f"{type(e).__name__}: {str(e)[:2000]}"}
            print(f"{mode} failed: {out['modes'][mode]['error']}", flush=True)
        write()
    modes = [m for m in args.modes if "error" not in out["modes"][m]]
    for r in range(args.repeats):
        for mode in list(modes if r % 2 == 0 else modes[::-1]):
            try:
                out["modes"][mode]["seconds"].append(step(mode)[0])
            except Exception as e:
                out["modes"][mode]["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
                print(f"{mode} failed: {out['modes'][mode]['error']}", flush=True)
                modes.remove(mode)
    for mode in modes:
        entry = out["modes"][mode]
        entry["tokens_per_second"] = args.length / min(entry["seconds"])
        print(f"{mode}: {entry['tokens_per_second']:.0f} tokens/s (best of {entry['seconds']})", flush=True)
    if "eager" in modes:
        base = out["modes"]["eager"]
        for mode in modes:
            entry = out["modes"][mode]
            entry["over_eager_hope"] = entry["tokens_per_second"] / base["tokens_per_second"]
            if mode != "llama":
                entry["loss_abs_difference_from_eager"] = abs(entry["loss"] - base["loss"])
    fast_weight_memory.compiled = default_compiled
    write()


if __name__ == "__main__":
    main()

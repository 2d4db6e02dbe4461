"""Peak bytes of live tensors in one training step on the CPU, HOPE against its Llama twin: the CPU counterpart of
`torch.cuda.max_memory_allocated`, beside `hope bench`'s resident-set figure (which also counts heap memory that
glibc keeps after tensors are freed).

The step runs under `torch.profiler` with `profile_memory=True`; every allocation and free of a CPU tensor is an
event, and their running sum in time order peaks at the figure. Each model runs in its own process (the same
child-process method as `hope bench`'s memory section), so one model's allocations cannot shape the other's.

    PYTHONPATH=. python bench/live_memory.py --length 8192 --out bench/results/live_memory_cpu.json
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {"hope": ("hope", {}), "hope_recompute": ("hope", {"memory_recompute": 4}), "llama": ("llama", {})}


def live_peak(model_name: str, preset: str, length: int, seed: int, overrides: dict) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from modeling_hope.bench.models import build, random_ids

    model = build(model_name, preset, seed, max_context=length, **overrides).train()
    ids = random_ids(model.config.vocab_size, 1, length, seed, "cpu")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(ids, labels=ids).loss.backward()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()  # negative for a free
        peak = max(peak, live)
    return {"model": model_name, "overrides": overrides, "length": length, "peak_live_mib": peak / 2**20,
            "allocation_events": len(events)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="hope-5m")
    p.add_argument("--length", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        model_name, overrides = RUNS[args.child]
        print(json.dumps(live_peak(model_name, args.preset, args.length, args.seed, overrides)))
        return
    from modeling_hope.bench.machine import code_version, describe
    from modeling_hope.bench.peak_memory import child_env

    results = {}
    for name in RUNS:
        proc = subprocess.run([sys.executable, __file__, "--child", name, "--preset", args.preset, "--length",
                               str(args.length), "--seed", str(args.seed)], text=True, capture_output=True,
                              check=True, env=child_env(threads=1))
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{name}: peak live tensors {results[name]['peak_live_mib']:.0f} MiB", flush=True)
    out = {"method": __doc__.split("\n\n")[1].replace("\n", " "), "preset": args.preset, "length": args.length,
           "machine": describe(), "code": code_version(), "results": results,
           "hope_over_llama": results["hope"]["peak_live_mib"] / results["llama"]["peak_live_mib"],
           "hope_recompute_over_llama": results["hope_recompute"]["peak_live_mib"] / results["llama"]["peak_live_mib"]}
    if args.out:
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

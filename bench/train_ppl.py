"""Validation perplexity at step 0 and after training on the built-in data; training speed and peak memory.

    PYTHONPATH=. python bench/train_ppl.py                     # hope-5m, 200 steps: ppl at step 0 and step 200
    PYTHONPATH=. python bench/train_ppl.py --models hope-5m llama-5m --steps 20 --seq-len 512 --no-eval \\
        --out bench/results/train_speed.json                  # tokens/s and peak memory, HOPE against its twin

Each model trains in its own `hope train` process (so peak memory is its own), on the same data with the same
tokenizer (the first run trains the byte-level BPE; the others reuse it). Extra `hope train` options go after --.
Results: a table on stdout and JSON (--out, default bench/results/train_ppl.json).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_model(model: str, args, workdir: Path, tokenizer: str | None) -> dict:
    out_dir = workdir / model
    argv = ["--model", model, "--output-dir", str(out_dir), "--overwrite", "--seq-len", str(args.seq_len),
            "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--lr", str(args.lr),
            "--warmup-steps", str(max(1, args.steps // 10)), "--log-every", str(max(1, min(10, args.steps // 10))),
            "--eval-every", str(args.steps), "--save-every", str(args.steps), "--val-blocks", str(args.val_blocks),
            "--seed", str(args.seed), "--no-progress", *(["--no-eval-at-start", "--val-fraction", "0"]
                                                          if not args.eval else []),
            *(["--tokenizer", tokenizer] if tokenizer else []), *args.train_args]
    cmd = [sys.executable, "-m", "modeling_hope.cli", "train", *argv]
    print(f"$ {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{model}: hope train failed with exit code {proc.returncode}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["wall_s"] = time.perf_counter() - t0
    resolved = json.loads((out_dir / "config.json").read_text())
    summary["parameters"] = resolved["parameters"]
    summary["threads"] = resolved["environment"]["threads"]
    summary["tokenizer_dir"] = str(out_dir / "tokenizer") if (out_dir / "tokenizer").is_dir() else tokenizer
    return summary


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["hope-5m"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--val-blocks", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                   help="validation at step 0 and at the end (--no-eval for speed runs)")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the runs (default: torch's)")
    p.add_argument("--workdir", default=None, help="where the runs go (default: a temporary folder)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_ppl.json"))
    p.add_argument("train_args", nargs="*", help="extra hope train options (after --)")
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hope-train-bench-"))
    results, tokenizer = {}, None
    for model in args.models:
        results[model] = run_model(model, args, workdir, tokenizer)
        tokenizer = tokenizer or results[model]["tokenizer_dir"]
    print(f"\n{'model':<12} {'params':>9} {'steps':>6} {'ppl@0':>9} {'ppl@end':>9} {'tokens/s':>9} {'peak RSS':>10}")
    for model, r in results.items():
        ppl0 = f"{r['val_ppl_start']:.1f}" if r.get("val_ppl_start") else "-"
        ppl1 = f"{r['val_ppl']:.1f}" if r.get("val_ppl") else "-"
        print(f"{model:<12} {r['parameters'] / 1e6:>8.2f}M {r['step']:>6} {ppl0:>9} {ppl1:>9} "
              f"{r['tokens_per_s'] or 0:>9.0f} {r['peak_rss_mib']:>7.0f} MiB")
    import torch

    report = {"settings": {k: v for k, v in vars(args).items() if k != "out"},
              "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                          "cpus": os.cpu_count(), "torch": torch.__version__,
                          "load_average_at_end": os.getloadavg()},
              "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()

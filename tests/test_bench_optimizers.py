"""bench/optimizers.py (issue 8's measurement) runs end to end on its cheapest setting and writes its report."""

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "optimizers.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_optimizers", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_optimizer_benchmark_runs_two_steps(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "r.json"
    threads = torch.get_num_threads()
    assert bench.main(["--model", "llama-tiny", "--steps", "2", "--seq", "16", "--batch", "2", "--val-batches", "1",
                       "--optimizers", "muon", "m3", "--threads", str(threads), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"adamw", "muon", "m3"}
    for r in report["results"].values():
        assert len(r["train_loss"]) >= 1 and r["step_ms"] > 0 and "step_overhead_vs_adamw" in r
    assert report["results"]["adamw"]["steps_at_time"] == 2
    assert report["data"]["vocab"] == report["model"]["vocab"] == 128
    assert report["environment"]["threads"] == threads


def test_optimizer_step_times_mode(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert load_bench().main(["--model", "llama-tiny", "--step-times", "2", "--optimizers", "m3",
                              "--threads", str(torch.get_num_threads()), "--out", str(out)]) == 0
    steps = json.loads(out.read_text())["optimizer_step"]
    assert set(steps) == {"adamw", "m3"} and len(steps["m3"]["all_ms"]) == 2
    assert steps["adamw"]["median_vs_adamw"] == 1.0

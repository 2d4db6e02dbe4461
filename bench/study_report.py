"""The study section of docs/RESULTS.md (issue 7), generated only from the per-arm JSON files of bench/study.py.

    PYTHONPATH=. python bench/study.py report            # rewrite the section (and its figures) in docs/RESULTS.md
    PYTHONPATH=. python bench/study.py report --check    # exit 1 when the section differs from the JSON files

The section sits between `<!-- study:begin -->` and `<!-- study:end -->`; the rest of the file is left alone (the
file is created when missing). The markdown is a pure function of the JSON files; the PNG figures are written next
to it (docs/figures/study_*.png) but are not part of the comparison.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"
RUN_COMMAND = "PYTHONPATH=. python bench/study.py run"

# The arms in table order (bench/study.py's ARMS, repeated here so the report needs no torch import).
ORDER = ["hope", "titans", "hope_attention", "transformer_pp", "no_dgd", "no_momentum", "no_weight_decay", "no_cms",
         "static_k", "static_v", "hope_seed1", "transformer_pp_seed1"]
LABELS = {"hope": "HOPE", "titans": "Titans", "hope_attention": "Hope-Attention",
          "transformer_pp": "Transformer++ (Llama twin)", "no_dgd": "w/o DGD", "no_momentum": "w/o momentum",
          "no_weight_decay": "w/o weight decay", "no_cms": "w/o CMS (one static level)", "static_k": "static k",
          "static_v": "static v", "hope_seed1": "HOPE, second seed",
          "transformer_pp_seed1": "Transformer++, second seed"}
MAIN = ["hope", "titans", "hope_attention", "transformer_pp", "hope_seed1", "transformer_pp_seed1"]
ABLATIONS = ["hope", "no_dgd", "no_momentum", "no_weight_decay", "no_cms", "static_k", "static_v"]

# The paper's direction of effect per row. Table 2: [NL-arXiv] Table 2 at 1.3B/100B (Wiki ppl, LMB ppl);
# Table 6: its ablation (ppl = mean of Wiki and LMB ppl, acc = mean commonsense accuracy; the 1.3B model).
PAPER_MAIN = {
    "hope": "best of the three (Wiki 14.39, LMB 10.08)",
    "titans": "worse than HOPE, better than Transformer++ (Wiki 15.60, LMB 11.41)",
    "hope_attention": "no language-modeling row (NIAH only: passkey 100% at 4K-16K)",
    "transformer_pp": "worst of the three (Wiki 17.92, LMB 17.73)",
    "hope_seed1": "(noise estimate)",
    "transformer_pp_seed1": "(noise estimate)",
}
PAPER_ABLATION = {  # (ppl, acc)
    "hope": (12.24, 58.1), "no_dgd": (13.41, 56.5), "no_momentum": (13.58, 56.9), "no_weight_decay": (13.71, 57.2),
    "no_cms": (13.04, 57.3), "static_k": (13.77, 56.9), "static_v": (13.90, 55.1),
}
ACC_COLUMNS = [("lmb_acc", "lambada_openai", "acc", "LMB acc"), ("piqa", "piqa", "acc", "PIQA"),
               ("hella", "hellaswag", "acc_norm", "Hella"), ("wino", "winogrande", "acc", "Wino"),
               ("arc_e", "arc_easy", "acc", "ARC-e"), ("arc_c", "arc_challenge", "acc_norm", "ARC-c"),
               ("siqa", "social_iqa", "acc", "SIQA"), ("boolq", "boolq", "acc", "BoolQ")]


# ---------------------------------------------------------------------------------------------------------------
# Reading.


def load(results_dir) -> dict:
    """{arm: record} for the JSON files in `results_dir`, in table order."""
    results_dir = Path(results_dir)
    found = {}
    for path in sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []:
        record = json.loads(path.read_text())
        if isinstance(record, dict) and record.get("arm") and "study" in record:
            found[record["arm"]] = record
    return {a: found[a] for a in ORDER if a in found} | {a: r for a, r in found.items() if a not in ORDER}


def _f(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if abs(value) >= 1e5:
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def _acc(record, task, metric) -> tuple[float | None, float | None]:
    res = (record.get("lm_eval") or {}).get("tasks", {}).get(task)
    if not res or metric not in res:
        return None, None
    return 100 * res[metric], (100 * res[f"{metric}_stderr"] if isinstance(res.get(f"{metric}_stderr"), (int, float))
                               else None)


def _acc_cell(record, task, metric) -> str:
    value, se = _acc(record, task, metric)
    if value is None:
        return "—"
    return f"{value:.1f}" + (f" ± {se:.1f}" if se is not None else "")


def _ppl(record, task, metric):
    res = (record.get("lm_eval") or {}).get("tasks", {}).get(task) or {}
    return res.get(metric)


def _avg_acc(record) -> tuple[float | None, float | None, int]:
    """Mean of the accuracy columns that ran, its standard error (independent tasks), and how many ran."""
    pairs = [_acc(record, task, metric) for _, task, metric, _ in ACC_COLUMNS]
    pairs = [(v, se) for v, se in pairs if v is not None]
    if not pairs:
        return None, None, 0
    mean = sum(v for v, _ in pairs) / len(pairs)
    se = math.sqrt(sum((se or 0.0) ** 2 for _, se in pairs)) / len(pairs)
    return mean, se, len(pairs)


def _table6_ppl(record):
    wiki, lmb = _ppl(record, "wikitext", "word_perplexity"), _ppl(record, "lambada_openai", "perplexity")
    return None if wiki is None or lmb is None else (wiki + lmb) / 2


def _noise(records) -> float | None:
    gaps = [abs(records[a]["final_val_loss"] - records[b]["final_val_loss"])
            for a, b in (("hope", "hope_seed1"), ("transformer_pp", "transformer_pp_seed1"))
            if a in records and b in records and records[a].get("final_val_loss") is not None
            and records[b].get("final_val_loss") is not None]
    return max(gaps) if gaps else None


# ---------------------------------------------------------------------------------------------------------------
# Claims.


def _better(records, winner, loser, noise) -> tuple[str, str]:
    """(verdict, numbers) for "`winner` has the lower final validation loss than `loser`"."""
    if winner not in records or loser not in records:
        missing = [a for a in (winner, loser) if a not in records]
        return "not yet run", f"missing: {', '.join(missing)}"
    a, b = records[winner]["final_val_loss"], records[loser]["final_val_loss"]
    gap = b - a
    numbers = f"val loss {a:.4f} vs {b:.4f} (difference {gap:+.4f}; seed noise " + \
        (f"{noise:.4f})" if noise is not None else "not measured yet)")
    if noise is None:
        return ("held" if gap > 0 else "did not hold") + " (no seed-noise estimate yet)", numbers
    if gap > noise:
        return "held", numbers
    if gap < -noise:
        return "did not hold", numbers
    return "not resolved (the difference is within the seed noise)", numbers


def claims(records: dict, seq_len: int | None) -> list[tuple[str, str, str]]:
    noise = _noise(records)
    out = [("HOPE has a lower perplexity than Titans (Table 2)", *_better(records, "hope", "titans", noise)),
           ("Titans has a lower perplexity than Transformer++ (Table 2)",
            *_better(records, "titans", "transformer_pp", noise)),
           ("HOPE has a lower perplexity than Transformer++ (Table 2)",
            *_better(records, "hope", "transformer_pp", noise))]
    for arm, what in (("no_dgd", "DGD"), ("no_momentum", "momentum"), ("no_weight_decay", "weight decay"),
                      ("no_cms", "the CMS"), ("static_k", "the adaptive k memory"),
                      ("static_v", "the adaptive v memory")):
        out.append((f"Removing {what} hurts (Table 6)", *_better(records, "hope", arm, noise)))
    hope = records.get("hope")
    if hope is None or not hope.get("ppl_by_position"):
        out.append(("HOPE's loss keeps falling as it sees more context (Figure 10)", "not yet run", ""))
    else:
        buckets = hope["ppl_by_position"]["buckets"]
        at_train = next((b for b in buckets if b["start"] <= seq_len <= b["end"]), buckets[0])
        last = buckets[-1]
        verdict = "held" if last["loss"] < at_train["loss"] else "did not hold"
        out.append(("HOPE's loss keeps falling as it sees more context (Figure 10)", verdict,
                    f"loss {at_train['loss']:.3f} at positions {at_train['start']}-{at_train['end']} (the training "
                    f"length {seq_len}) -> {last['loss']:.3f} at {last['start']}-{last['end']}"))
    if hope is None or not hope.get("passkey"):
        out.append(("HOPE retrieves the passkey beyond the training length (arXiv Table 1: 100% at 4K-16K)",
                    "not yet run", ""))
    else:
        beyond = {k: v for k, v in hope["passkey"]["accuracy"].items() if int(k) > seq_len}
        verdict = "held" if beyond and min(beyond.values()) >= 0.9 else "did not hold"
        out.append(("HOPE retrieves the passkey beyond the training length (arXiv Table 1: 100% at 4K-16K)", verdict,
                    ", ".join(f"{int(k)}: {100 * v:.0f}%" for k, v in beyond.items()) or "no length beyond training"))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Figures (written beside the document; not compared).


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, ax, path, xlabel, ylabel, title):
    """Label, grid, legend and save one study figure; returns its path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def figures(records: dict, figures_dir: Path) -> dict:
    plt = _plt()
    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    fig, ax = plt.subplots(figsize=(8, 5))
    for arm, r in records.items():
        tps = r["study"]["tokens_per_step"]
        curve = [c for c in r.get("val_curve", []) if c["step"] > 0]
        if curve:
            ax.plot([c["step"] * tps / 1e6 for c in curve], [c["val_loss"] for c in curve], marker=".",
                    label=LABELS.get(arm, arm), ls="--" if arm.endswith("seed1") else "-")
    paths["val"] = _finish(fig, ax, figures_dir / "study_val_loss.png",
                           "training tokens (millions)",
                           "held-out validation loss (nats/token)",
                           "validation loss (held-out Gutenberg books)")

    fig, ax = plt.subplots(figsize=(8, 5))
    for arm, r in records.items():
        pos = r.get("ppl_by_position")
        if pos:
            ax.plot([(b["start"] + b["end"]) / 2 for b in pos["buckets"]], [b["loss"] for b in pos["buckets"]],
                    marker=".", label=LABELS.get(arm, arm), ls="--" if arm.endswith("seed1") else "-")
    seq_len = next(iter(records.values()))["study"]["seq_len"]
    ax.axvline(seq_len, color="gray", lw=1, ls=":")
    paths["position"] = _finish(fig, ax, figures_dir / "study_position.png",
                           "position (tokens of context seen); dotted: training length",
                           "mean loss (nats/token)",
                           "loss by position (held-out books)")

    fig, ax = plt.subplots(figsize=(8, 5))
    for arm, r in records.items():
        pk = r.get("passkey")
        if pk:
            lengths = sorted(int(k) for k in pk["accuracy"])
            ax.plot(lengths, [100 * pk["accuracy"][str(L)] for L in lengths], marker="o", label=LABELS.get(arm, arm))
    ax.set_xscale("log", base=2)
    ax.axvline(seq_len, color="gray", lw=1, ls=":")
    ax.set_ylim(-5, 105)
    paths["passkey"] = _finish(fig, ax, figures_dir / "study_passkey.png",
                           "prompt length (tokens); dotted: training length",
                           "passkey accuracy (%)",
                           "S-NIAH-1 (passkey), greedy")
    return paths


# ---------------------------------------------------------------------------------------------------------------
# The section.


def _not_run() -> str:
    return "\n".join([
        "## Small-scale study: HOPE vs Titans vs Transformer++, and the ablations (issue 7)", "",
        "**Not yet run at the issue's scale.** No arm's JSON is committed under `bench/results/study/`. The whole "
        "study (12 arms: HOPE, Titans, Hope-Attention, the Llama twin, six ablations, a second seed of HOPE and of "
        "the twin; hope-5m, 3M Gutenberg tokens each, then the evaluations) is one command, resumable at any point:",
        "", "```bash", RUN_COMMAND, "```", "",
        "It writes one JSON per arm to `bench/results/study/` and regenerates this section from them "
        "(`PYTHONPATH=. python bench/study.py report`). For a larger rerun (e.g. on a GPU) change only `--preset` "
        "and `--tokens`, e.g. `" + RUN_COMMAND + " --preset hope-20m --tokens 20000000`.", "",
        "Expected cost on the project's 2-core CPU (measured with other jobs on the cores, one thread, hope-5m, "
        "8 x 512 tokens per step, forward + backward + AdamW): HOPE and its ablations about 380 tokens/s, Titans "
        "480, Hope-Attention 800, the Llama twin 1160; 3M tokens per arm is then about 22 hours of training for "
        "the 12 arms, and the full lm-eval suite about 3 hours more per HOPE-type arm (extrapolated from 20-item "
        "runs; HellaSwag is about half of it), some 40-50 hours in all. A single GPU does it in a small fraction "
        "of that; `--tasks` restricts the suite.", ""]).rstrip("\n") + "\n"


def render(results_dir, figures_dir=None) -> str:
    """The section's markdown (between the markers, markers excluded). Writes the figures when `figures_dir`."""
    records = load(results_dir)
    if not records:
        return _not_run()
    first = next(iter(records.values()))
    s = first["study"]
    hashes = {r.get("token_stream_sha256") for r in records.values()}
    tokenizers = {r.get("tokenizer_fingerprint") for r in records.values()}
    studies = {json.dumps(r["study"], sort_keys=True) for r in records.values()}
    missing = [a for a in ORDER if a not in records]
    if figures_dir is not None:
        figures(records, Path(figures_dir))
    lines = ["## Small-scale study: HOPE vs Titans vs Transformer++, and the ablations (issue 7)", ""]
    if missing:
        lines += [f"**Partial: {len(records)} of {len(ORDER)} arms done** (not yet run: {', '.join(missing)}). "
                  f"Continue with `{first.get('driver_command') or RUN_COMMAND}`.", ""]
    if s["tokens_trained"] < 3_000_000:
        lines += [f"**Below the issue's scale**: {s['tokens_trained']:,d} training tokens per arm (the issue asks "
                  f"for at least 3,000,000). These numbers only show that the pipeline runs.", ""]
    lines += ["### Setup", "",
              f"- Preset `{s['preset']}`; every arm within "
              f"{max(abs(r['parameters_vs_hope']) for r in records.values()) * 100:.1f}% "
              f"of HOPE's {first['parameters_hope']:,d} parameters (table below; widened static CMS levels are noted).",
              f"- Data: `{Path(s['data']).name}` ({s['data']}), {100 * s['val_fraction']:.0f}% of the books held out "
              f"by the trainer's split (validation: {s['val_blocks']} blocks of {s['seq_len']} tokens)"
              + (f", first {s['max_docs']} documents only" if s.get("max_docs") else "") + ".",
              f"- One byte-level BPE tokenizer for all arms (fingerprint "
              f"{'equal for all arms' if len(tokenizers) == 1 else 'DIFFERS between arms'}).",
              f"- {s['max_steps']} steps x {s['batch_size']} x {s['seq_len']} tokens = {s['tokens_trained']:,d} tokens "
              f"per arm; AdamW lr {s['lr']}, warmup {s['warmup_steps']}, cosine to {s['min_lr_ratio']} x lr, weight "
              f"decay {s['weight_decay']}; seed {s['seed']} (second-seed arms: {s['seed'] + 1}, initial weights only), "
              f"data order seed {s['data_seed']}.",
              "- Token stream: " + ("every arm's sha256 over the micro-batches as `hope train` read them is "
                                    f"`{next(iter(hashes))}`." if len(hashes) == 1 and None not in hashes else
                                    "**the arms' token-stream hashes differ** (see the table)."),
              "- Settings: " + ("identical in every JSON." if len(studies) == 1 else
                                "**the JSON files hold different study settings**."),
              ("- lm-eval: not run (`--tasks none`)." if s["lm_eval_tasks"] in (None, "none") else
               f"- lm-eval (`hope eval`, zero-shot, offline sets): tasks `{s['lm_eval_tasks']}`"
               + (f", **--limit {s['lm_eval_limit']}** (not comparable to the paper)" if s.get("lm_eval_limit")
                  else ", full sets") + "; accuracies in %, ± one standard error; Wiki ppl is lm-eval's word "
               "perplexity, LMB ppl its token perplexity of the last word."), ""]

    # Table 2 layout
    head = ["Model", "Params", "Val loss", "Val ppl", "Wiki ppl↓", "LMB ppl↓"] + [c[3] for c in ACC_COLUMNS] + \
        ["Avg", "paper (arXiv Table 2, 1.3B)"]
    lines += ["### Language modeling and common sense (the paper's Table 2 layout)", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in MAIN:
        r = records.get(arm)
        if r is None:
            lines.append(f"| {LABELS[arm]} | " + " | ".join(["not yet run"] + ["—"] * (len(head) - 3))
                         + f" | {PAPER_MAIN[arm]} |")
            continue
        avg, se, n = _avg_acc(r)
        cells = [LABELS[arm], f"{r['parameters'] / 1e6:.2f}M", _f(r["final_val_loss"], 4), _f(r["final_val_ppl"], 2),
                 _f(_ppl(r, "wikitext", "word_perplexity"), 2), _f(_ppl(r, "lambada_openai", "perplexity"), 2)]
        cells += [_acc_cell(r, task, metric) for _, task, metric, _ in ACC_COLUMNS]
        cells += ["—" if avg is None else f"{avg:.1f} ± {se:.1f}" + ("" if n == 8 else f" ({n} tasks)"),
                  PAPER_MAIN[arm]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")

    # Table 6 layout
    hope_loss = records.get("hope", {}).get("final_val_loss")
    head = ["Variant", "ppl↓ (mean Wiki, LMB)", "acc↑ (avg)", "Val loss", "Δ val loss vs HOPE", "paper ppl",
            "paper acc", "paper direction"]
    lines += ["### Ablations (the paper's Table 6 layout)", "", "| " + " | ".join(head) + " |",
              "|" + "---|" * len(head)]
    for arm in ABLATIONS:
        r = records.get(arm)
        pp, pa = PAPER_ABLATION[arm]
        direction = "reference" if arm == "hope" else f"hurts (ppl +{pp - PAPER_ABLATION['hope'][0]:.2f})"
        if r is None:
            lines.append(f"| {LABELS[arm]} | not yet run | — | — | — | {pp:.2f} | {pa:.1f} | {direction} |")
            continue
        avg, se, _ = _avg_acc(r)
        delta = None if hope_loss is None or arm == "hope" else r["final_val_loss"] - hope_loss
        lines.append(f"| {LABELS[arm]} | {_f(_table6_ppl(r), 2)} | "
                     f"{'—' if avg is None else f'{avg:.1f} ± {se:.1f}'} | {_f(r['final_val_loss'], 4)} | "
                     f"{'—' if delta is None else f'{delta:+.4f}'} | {pp:.2f} | {pa:.1f} | {direction} |")
    noise = _noise(records)
    lines += ["", "Seed noise (largest |Δ val loss| between the two seeds of HOPE and of the twin): "
              + ("not measured yet." if noise is None else f"{noise:.4f}."), ""]

    # Out of domain
    head = ["Model", "WikiText-2 test (token ppl)", "LAMBADA passages (token ppl)", "held-out books (val ppl)"]
    lines += ["### Out-of-domain perplexity (token level, blocks of the training length)", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, r in records.items():
        ood = r.get("ood") or {}
        lines.append(f"| {LABELS.get(arm, arm)} | {_f(ood.get('wikitext2_test', {}).get('ppl'), 2)} | "
                     f"{_f(ood.get('lambada_text', {}).get('ppl'), 2)} | {_f(r['final_val_ppl'], 2)} |")
    lines.append("")

    # Position and passkey
    lines += ["### Loss by position and passkey beyond the training length", "",
              f"Trained at {s['seq_len']} tokens. Loss by position over {s['position_windows']} windows of "
              f"{s['position_length']} tokens of the held-out books; passkey (S-NIAH-1, greedy, "
              f"{s['niah_samples']} prompts per length).", ""]
    pos_arms = [a for a, r in records.items() if r.get("ppl_by_position")]
    if pos_arms:
        buckets = records[pos_arms[0]]["ppl_by_position"]["buckets"]
        picks = sorted({0, len(buckets) - 1, next((i for i, b in enumerate(buckets)
                                                   if b["start"] <= s["seq_len"] <= b["end"]), 0),
                        len(buckets) // 2})
        head = ["Model"] + [f"loss @ {buckets[i]['start']}-{buckets[i]['end']}" for i in picks]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in pos_arms:
            b = records[arm]["ppl_by_position"]["buckets"]
            lines.append(f"| {LABELS.get(arm, arm)} | " + " | ".join(_f(b[i]["loss"], 3) if i < len(b) else "—"
                                                                    for i in picks) + " |")
        lines.append("")
    pk_arms = [a for a, r in records.items() if r.get("passkey")]
    if pk_arms:
        lengths = sorted({int(k) for a in pk_arms for k in records[a]["passkey"]["accuracy"]})
        head = ["Model"] + [f"passkey @ {L}" for L in lengths]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in pk_arms:
            acc = records[arm]["passkey"]["accuracy"]
            lines.append(f"| {LABELS.get(arm, arm)} | " + " | ".join(
                f"{100 * acc[str(L)]:.0f}%" if str(L) in acc else "—" for L in lengths) + " |")
        lines.append("")
    lines += ["![validation loss](figures/study_val_loss.png)", "", "![loss by position](figures/study_position.png)",
              "", "![passkey](figures/study_passkey.png)", ""]

    # Cost
    head = ["Arm", "Params", "vs HOPE", "Tokens", "Token-stream sha256", "Training wall time", "Tokens/s", "Device",
            "Model settings"]
    lines += ["### Parameters, data and cost per arm", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, r in records.items():
        adj = r.get("width_adjustment")
        settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in r["model_kwargs"].items()) or \
            ("Llama twin" if r["arch"] == "llama" else "preset")
        if adj:
            settings += f" (static CMS width {adj['intermediate_size_from']} -> {adj['intermediate_size_to']}: " \
                        f"{adj['reason']})"
        if r.get("seed") != s["seed"]:
            settings += f"; seed {r['seed']}"
        lines.append(f"| {arm} | {r['parameters']:,d} | {100 * r['parameters_vs_hope']:+.2f}% | {r['tokens']:,d} | "
                     f"`{(r.get('token_stream_sha256') or '—')[:16]}` | {r['wall_time_s'] / 60:.1f} min | "
                     f"{_f(r.get('tokens_per_s'), 0)} | {r['device']} | {settings.replace('|', '/')} |")
    lines.append("")

    # Claims
    lines += ["### The paper's claims at this scale", "",
              "A ppl claim holds when the final held-out validation loss differs in the paper's direction by more "
              "than the seed noise; within the noise it is not resolved.", ""]
    for claim, verdict, numbers in claims(records, s["seq_len"]):
        lines.append(f"- {claim}: **{verdict}**" + (f" ({numbers})" if numbers else "") + ".")
    return "\n".join(lines).rstrip("\n") + "\n"


def read_section(doc) -> str | None:
    doc = Path(doc)
    if not doc.is_file():
        return None
    text = doc.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write_section(doc, section: str) -> None:
    """Replace the text between the markers (append the markers when absent; create the file when missing)."""
    doc = Path(doc)
    block = f"{BEGIN}\n{section.rstrip(chr(10))}\n{END}"
    if not doc.is_file():
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(f"# Results\n\n{block}\n", encoding="utf-8")
        return
    text = doc.read_text(encoding="utf-8")
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")

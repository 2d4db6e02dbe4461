"""The paper's benchmark suite as lm-eval tasks, its published rows, and the paper-style table.

Columns and metrics follow the HOPE paper's language-modeling / common-sense table ([NL-arXiv] Table 2,
[NL-NeurIPS] Table 1): Wiki ppl, LAMBADA ppl and acc, PIQA, HellaSwag (acc_norm), WinoGrande, ARC-e,
ARC-c (acc_norm), SIQA, BoolQ, and the average of the eight accuracy columns. Published numbers are copied
from the project's PAPER_NOTES.md section 5 (no number here is recomputed or invented; a missing cell is
None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# lm-eval task names, in the paper's column order.
TASKS: tuple[str, ...] = (
    "wikitext",
    "lambada_openai",
    "piqa",
    "hellaswag",
    "winogrande",
    "arc_easy",
    "arc_challenge",
    "social_iqa",
    "boolq",
)

# Items in the split each task evaluates (the official sizes; wikitext counts documents).
OFFICIAL_SIZES: dict[str, int] = {
    "wikitext": 62,
    "lambada_openai": 5153,
    "piqa": 1838,
    "hellaswag": 10042,
    "winogrande": 1267,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "social_iqa": 1954,
    "boolq": 3270,
}


@dataclass(frozen=True)
class Column:
    key: str          # short name used in dicts and JSON
    header: str       # table header
    task: str         # lm-eval task
    metric: str       # lm-eval metric (the key in results is f"{metric},none")
    is_accuracy: bool  # accuracies are shown in percent and enter the average

    def lm_eval_key(self, filter_name: str = "none") -> str:
        return f"{self.metric},{filter_name}"


COLUMNS: tuple[Column, ...] = (
    Column("wiki_ppl", "Wiki ppl↓", "wikitext", "word_perplexity", False),
    Column("lmb_ppl", "LMB ppl↓", "lambada_openai", "perplexity", False),
    Column("lmb_acc", "LMB acc", "lambada_openai", "acc", True),
    Column("piqa", "PIQA", "piqa", "acc", True),
    Column("hella", "Hella", "hellaswag", "acc_norm", True),
    Column("wino", "Wino", "winogrande", "acc", True),
    Column("arc_e", "ARC-e", "arc_easy", "acc", True),
    Column("arc_c", "ARC-c", "arc_challenge", "acc_norm", True),
    Column("siqa", "SIQA", "social_iqa", "acc", True),
    Column("boolq", "BoolQ", "boolq", "acc", True),
)
ACCURACY_KEYS: tuple[str, ...] = tuple(c.key for c in COLUMNS if c.is_accuracy)


class UnknownTaskError(ValueError):
    pass


def resolve_tasks(names) -> list[str]:
    """Parse a task selection (names or comma lists; "all" for the suite) into suite task names, in suite
    order. Raises UnknownTaskError naming the bad entries and the valid ones."""
    if names is None:
        return list(TASKS)
    if isinstance(names, str):
        names = [names]
    wanted: list[str] = []
    for item in names:
        wanted += [n.strip() for n in str(item).split(",") if n.strip()]
    if not wanted or wanted == ["all"]:
        return list(TASKS)
    if wanted == ["none"]:
        return []
    unknown = [n for n in wanted if n not in TASKS]
    if unknown:
        raise UnknownTaskError(
            f"unknown task(s): {', '.join(unknown)}. The suite's tasks are: {', '.join(TASKS)} "
            f"(or 'all', or 'none' to skip the suite)")
    return [t for t in TASKS if t in wanted]


# ---------------------------------------------------------------------------------------------------------
# Published rows.


@dataclass(frozen=True)
class PaperRow:
    model: str
    size: str          # "340M", "760M", "1.3B"
    source: str        # "NL-arXiv T2", "NL-NeurIPS T1", "Titans T1"
    values: dict       # column key -> float or None (accuracies in percent)
    avg: float | None  # the average as published (None if not published)
    note: str = ""

    def value(self, key: str):
        return self.values.get(key)


def _row(model, size, source, numbers, avg, note=""):
    keys = [c.key for c in COLUMNS]
    if len(numbers) != len(keys):
        raise ValueError(f"{model} {size}: {len(numbers)} numbers for {len(keys)} columns")
    return PaperRow(model, size, source, dict(zip(keys, numbers)), avg, note)


_ = None
# [NL-arXiv] Table 2 (arXiv 2512.24695v1): 760M/30B and 1.3B/100B. Avg = mean of the 8 accuracy columns.
ARXIV_ROWS: tuple[PaperRow, ...] = (
    _row("Transformer++", "760M", "NL-arXiv T2", [24.18, 24.27, 37.1, 67.2, 43.8, 53.0, 65.6, 33.4, 39.1, 61.7], 50.11),
    _row("Samba*", "760M", "NL-arXiv T2", [21.07, 22.85, 39.2, 68.9, 47.8, 53.1, 65.8, 34.9, 38.9, 63.1], 51.46),
    _row("RetNet", "760M", "NL-arXiv T2", [25.77, 24.19, 34.5, 66.8, 41.2, 51.9, 63.6, 32.5, 38.8, 56.2], 48.19),
    _row("DeltaNet", "760M", "NL-arXiv T2", [24.52, 24.38, 36.8, 67.3, 44.5, 51.8, 64.2, 32.7, 39.6, 60.1], 49.63),
    _row("RWKV-7", "760M", "NL-arXiv T2", [23.75, 23.08, 37.1, 67.3, 47.6, 52.2, 64.7, 34.2, 39.4, 61.9], 50.55),
    _row("Comba", "760M", "NL-arXiv T2", [22.41, 22.19, 37.5, 66.9, 48.2, 52.4, 65.1, 34.1, 40.1, 62.8], 50.89),
    _row("TTT", "760M", "NL-arXiv T2", [24.17, 23.51, 34.7, 67.3, 43.9, 51.0, 64.5, 33.8, 40.2, 59.6], 47.32,
         "published Avg 47.32 != mean of its columns (49.38)"),
    _row("Miras (Memora)", "760M", "NL-arXiv T2", [22.28, 22.31, 38.2, 67.8, 49.3, 53.3, 63.6, 36.1, 40.9, 63.0], 51.53),
    _row("DLA", "760M", "NL-arXiv T2", [23.12, 22.09, 36.1, 68.0, 47.9, 52.7, 65.8, 34.6, 39.1, 59.6], 50.48),
    _row("Titans", "760M", "NL-arXiv T2", [20.08, 21.52, 38.1, 69.1, 48.5, 52.7, 66.2, 35.7, 40.3, 62.8], 51.68),
    _row("Hope", "760M", "NL-arXiv T2", [18.68, 20.07, 38.8, 69.2, 49.1, 53.6, 66.8, 36.1, 41.2, 63.4], 52.28),
    _row("Transformer++", "1.3B", "NL-arXiv T2", [17.92, 17.73, 42.6, 71.4, 52.3, 54.1, 69.9, 36.5, 41.8, 58.4], 53.38),
    _row("Samba*", "1.3B", "NL-arXiv T2", [16.15, 13.21, 45.2, 71.5, 53.8, 55.8, 69.1, 36.7, 40.6, 63.0], 54.46),
    _row("RetNet", "1.3B", "NL-arXiv T2", [18.91, 17.04, 41.2, 71.3, 49.1, 55.2, 67.5, 34.1, 41.4, 61.0], 52.60),
    _row("DeltaNet", "1.3B", "NL-arXiv T2", [18.62, 17.10, 41.6, 70.1, 49.4, 52.7, 67.6, 35.2, 39.7, 54.8], 51.39),
    _row("RWKV-7", "1.3B", "NL-arXiv T2", [18.44, 15.96, 46.7, 72.4, 54.9, 57.5, 71.6, 38.2, 40.7, 60.4], 55.30),
    _row("Comba", "1.3B", "NL-arXiv T2", [18.16, 14.87, 46.9, 73.1, 54.5, 57.7, 72.0, 39.1, 40.2, 60.6], 55.39,
         "published Avg 55.39 != mean of its columns (55.51)"),
    _row("TTT", "1.3B", "NL-arXiv T2", [18.42, 14.51, 46.8, 72.9, 55.2, 59.0, 71.8, 39.5, 39.8, 59.6], 55.58),
    _row("Miras (Memora)", "1.3B", "NL-arXiv T2", [15.90, 12.04, 48.7, 73.1, 56.0, 57.4, 71.5, 37.9, 40.2, 61.3], 55.76),
    _row("DLA", "1.3B", "NL-arXiv T2", [16.31, 12.29, 44.5, 70.6, 53.9, 54.2, 69.6, 36.0, 40.8, 60.2], 53.72),
    _row("Titans", "1.3B", "NL-arXiv T2", [15.60, 11.41, 49.1, 73.1, 56.3, 59.8, 72.4, 40.8, 42.1, 61.0], 56.82),
    _row("Hope", "1.3B", "NL-arXiv T2", [14.39, 10.08, 51.0, 73.9, 57.5, 61.2, 73.8, 42.7, 42.8, 61.4], 58.04),
)

# [NL-NeurIPS] Table 1 (camera-ready). Its averages are truncated in the source; PAPER_NOTES recomputed them.
NEURIPS_ROWS: tuple[PaperRow, ...] = (
    _row("Hope", "340M", "NL-NeurIPS T1", [26.05, 29.38, 35.40, 64.62, 40.11, 51.19, 56.92, 28.49, 38.33, 60.12], 46.90,
         "Avg recomputed"),
    _row("Transformer++", "760M", "NL-NeurIPS T1", [25.21, 27.64, 35.78, 66.92, 42.19, 51.95, 60.38, 32.46, 39.51, 60.37], 48.69),
    _row("RetNet", "760M", "NL-NeurIPS T1", [26.08, 24.45, 34.51, 67.19, 41.63, 52.09, 63.17, 32.78, 38.36, 57.92], 48.46),
    _row("DeltaNet", "760M", "NL-NeurIPS T1", [24.37, 24.60, 37.06, 66.93, 41.98, 50.65, 64.87, 31.39, 39.88, 59.02], 48.97),
    _row("TTT", "760M", "NL-NeurIPS T1", [24.17, 23.51, 34.74, 67.25, 43.92, 50.99, 64.53, 33.81, 40.16, 59.58], 49.37),
    _row("Samba*", "760M", "NL-NeurIPS T1", [20.63, 22.71, 39.72, 69.19, 47.35, 52.01, 66.92, 33.20, 38.98, 61.24], 51.08),
    _row("Titans", "760M", "NL-NeurIPS T1", [20.04, 21.96, 37.40, 69.28, 48.46, 52.27, 66.31, 35.84, 40.13, 62.76], 51.56,
         "Titans (LMM)"),
    _row("Hope", "760M", "NL-NeurIPS T1", [20.53, 20.47, 39.02, 70.13, 49.21, 52.70, 66.89, 36.05, 40.71, 63.29], 52.25),
    _row("Transformer++", "1.3B", "NL-NeurIPS T1", [18.53, 18.32, 42.60, 70.02, 50.23, 53.51, 68.83, 35.10, 40.66, 57.09], 52.26),
    _row("RetNet", "1.3B", "NL-NeurIPS T1", [19.08, 17.27, 40.52, 70.07, 49.16, 54.14, 67.34, 33.78, 40.78, 60.39], 52.02),
    _row("DeltaNet", "1.3B", "NL-NeurIPS T1", [17.71, 16.88, 42.46, 70.72, 50.93, 53.35, 68.47, 35.66, 40.22, 55.29], 52.14),
    _row("Samba*", "1.3B", "NL-NeurIPS T1", [16.13, 13.29, 44.94, 70.94, 53.42, 55.56, 68.81, 36.17, 39.96, 62.11], 53.99),
    _row("Titans", "1.3B", "NL-NeurIPS T1", [15.60, 11.41, 49.14, 73.09, 56.31, 59.81, 72.43, 40.82, 42.05, 60.97], 56.83,
         "Titans (LMM)"),
    _row("Hope", "1.3B", "NL-NeurIPS T1", [15.11, 11.63, 50.01, 73.29, 56.84, 60.19, 72.30, 41.24, 42.52, 61.46], 57.23),
)

# [Titans] Table 1, 340M/15B: only Wiki ppl, LMB ppl and the average survived in PAPER_NOTES.
TITANS_340M_ROWS: tuple[PaperRow, ...] = (
    _row("Transformer++", "340M", "Titans T1", [31.52, 41.08, _, _, _, _, _, _, _, _], 42.92, "only ppl and Avg known"),
    _row("Titans", "340M", "Titans T1", [26.18, 29.97, _, _, _, _, _, _, _, _], 46.17, "Titans (LMM); only ppl and Avg known"),
)

PAPER_SIZES: dict[str, float] = {"340M": 340e6, "760M": 760e6, "1.3B": 1.3e9}
DEFAULT_MODELS: tuple[str, ...] = ("Transformer++", "Titans", "Hope")
PAPER_TABLES = ("arxiv", "neurips")


def paper_rows(size: str, table: str = "arxiv", models=DEFAULT_MODELS) -> list[PaperRow]:
    """Published rows of one size. `table` picks the paper version ("arxiv": [NL-arXiv] Table 2, the default;
    "neurips": the camera-ready). 340M exists only in the NeurIPS table (HOPE) and in Titans' Table 1
    (Transformer++ and Titans, partial), so 340M always draws from those. `models=None` keeps every row."""
    if size not in PAPER_SIZES:
        raise ValueError(f"unknown paper size {size!r}; choose from {', '.join(PAPER_SIZES)}")
    if table not in PAPER_TABLES:
        raise ValueError(f"unknown paper table {table!r}; choose from {', '.join(PAPER_TABLES)}")
    if size == "340M":
        pool = list(TITANS_340M_ROWS) + [r for r in NEURIPS_ROWS if r.size == "340M"]
    else:
        pool = [r for r in (ARXIV_ROWS if table == "arxiv" else NEURIPS_ROWS) if r.size == size]
    if models is not None:
        order = {m: i for i, m in enumerate(models)}
        pool = sorted((r for r in pool if r.model in order), key=lambda r: order[r.model])
    return pool


def match_paper_size(n_params: int | None, tolerance: float = 1.5) -> str | None:
    """The paper size nearest to `n_params` (in log space), or None when it is more than `tolerance` times
    away from every size (a tiny model has no matching row)."""
    if not n_params:
        return None
    best = min(PAPER_SIZES, key=lambda s: abs(math.log(n_params / PAPER_SIZES[s])))
    return best if abs(math.log(n_params / PAPER_SIZES[best])) <= math.log(tolerance) else None


# ---------------------------------------------------------------------------------------------------------
# Our row.


@dataclass
class OurRow:
    model: str
    values: dict = field(default_factory=dict)   # column key -> float (accuracies in percent)

    @property
    def avg(self):
        present = [self.values[k] for k in ACCURACY_KEYS if self.values.get(k) is not None]
        return sum(present) / len(present) if present else None

    @property
    def n_acc(self) -> int:
        return sum(1 for k in ACCURACY_KEYS if self.values.get(k) is not None)


def row_from_results(results: dict, model: str) -> OurRow:
    """Pick the paper's metric per column out of lm-eval's `results["results"]` (or that dict itself)."""
    per_task = results.get("results", results)
    row = OurRow(model)
    for col in COLUMNS:
        task_res = per_task.get(col.task)
        if not task_res:
            continue
        value = task_res.get(col.lm_eval_key())
        if value is None or isinstance(value, str):
            continue
        value = float(value)
        row.values[col.key] = 100.0 * value if col.is_accuracy else value
    return row


def _fmt(value, is_accuracy: bool, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "nan"
    if abs(value) >= 1e5:   # an untrained model's perplexity
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def format_table(ours: list[OurRow] | OurRow, size: str | None = None, table: str = "arxiv",
                 models=DEFAULT_MODELS, wall_times: dict | None = None, markdown: bool = True) -> str:
    """The paper-style table: our row(s), then the published rows of `size` (none if size is None), then a
    line of per-task wall times when given. Accuracies in percent; Avg is the mean of the 8 accuracy columns
    (ours: of those that ran, marked with * when fewer than 8)."""
    if isinstance(ours, OurRow):
        ours = [ours]
    headers = ["Model"] + [c.header for c in COLUMNS] + ["Avg"]
    lines: list[list[str]] = []
    for row in ours:
        avg = row.avg
        avg_s = _fmt(avg, True) + ("" if row.n_acc in (0, len(ACCURACY_KEYS)) else f"* ({row.n_acc}/8)")
        lines.append([f"{row.model} (ours)"] + [_fmt(row.values.get(c.key), c.is_accuracy) for c in COLUMNS]
                     + [avg_s])
    prows = paper_rows(size, table, models) if size else []
    for prow in prows:
        lines.append([f"{prow.model} {prow.size} [{prow.source}]"]
                     + [_fmt(prow.value(c.key), c.is_accuracy) for c in COLUMNS] + [_fmt(prow.avg, True)])
    if wall_times:
        tasks_time = {c.task: wall_times.get(c.task) for c in COLUMNS}
        seen = set()
        cells = []
        for c in COLUMNS:
            t = tasks_time.get(c.task)
            cells.append("" if t is None or c.task in seen else f"{t:.1f}s")
            seen.add(c.task)
        lines.append(["wall time"] + cells + [f"{sum(v for v in wall_times.values() if v):.1f}s"])
    widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(headers)]
    out = []
    if markdown:
        out.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in lines]
    else:
        out.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]
    notes = []
    if any(r.n_acc not in (0, len(ACCURACY_KEYS)) for r in ours):
        notes.append("* mean over the accuracy columns that ran, not comparable with the paper's Avg")
    if size is None:
        notes.append("no paper rows: no published size matches this model (pass --paper-size to force one)")
    for prow in prows:
        if prow.note:
            notes.append(f"{prow.model} {prow.size} [{prow.source}]: {prow.note}")
    notes.append("metrics: Wiki word_perplexity, LMB perplexity/acc, Hella and ARC-c acc_norm, others acc "
                 "(lm-eval, 0-shot); accuracies in %")
    return "\n".join(out + [""] + notes)


def print_table(*args, **kwargs) -> str:
    text = format_table(*args, **kwargs)
    print(text)
    return text

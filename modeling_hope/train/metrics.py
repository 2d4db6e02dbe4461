"""Metrics: one JSON object per line in `<output>/metrics.jsonl`, the loss curve as PNG, optional trackers."""

import importlib.util
import json
import sys
import warnings
from pathlib import Path


class MetricsLog:
    """Append-only JSONL. On resume at step s the records of later steps (written after the checkpoint by the
    interrupted run) are dropped, so the file reads as one uninterrupted run."""

    def __init__(self, path, resume_step: int | None = None, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step] if resume_step is not None \
            else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
            continue
    return out


def plot_loss_curve(metrics_path, png_path, title: str = "") -> Path | None:
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    lr = [(r["step"], r["lr"]) for r in records if "lr" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if lr:
        ax_lr.plot(*zip(*lr), color="tab:gray")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png_path)
    return png_path


def available_trackers(report_to: str) -> list[str]:
    """The trackers asked for that are installed (a missing one is a warning, not an error)."""
    wanted = {"none": [], "all": ["tensorboard", "wandb"]}.get(report_to, [report_to])
    found = []
    for name in wanted:
        module = "tensorboard" if name == "tensorboard" else name
        if importlib.util.find_spec(module) is None and not (name == "tensorboard" and importlib.util.find_spec(
                "tensorboardX")):
            if report_to != "all":
                warnings.warn(f"--report-to {name}: {name} is not installed; not logging to it", stacklevel=2)
                print(f"[hope train] {name} is not installed; --report-to {name} ignored", file=sys.stderr)
            continue
        found.append(name)
    return found

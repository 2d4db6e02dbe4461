"""The figure of a `hope bench` run: one panel per measurement, HOPE against its Llama twin."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"hope": "tab:blue", "llama": "tab:orange", "hope_recompute": "tab:cyan",
          "hope_recompute_checkpointing": "tab:purple", "llama_checkpointing": "tab:red"}
LABELS = {"llama": "llama twin"}


def _lines(ax, by_x: dict, key: str, scale: float = 1.0):
    xs = sorted(by_x, key=int)
    for name in COLORS:
        pts = [(int(x), by_x[x][name][key] * scale) for x in xs if key in by_x[x].get(name, {})]
        if pts:
            ax.plot(*zip(*pts), "o-" if name in ("hope", "llama") else "o--", color=COLORS[name],
                    label=LABELS.get(name, name))
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _first_batch(section: dict) -> tuple[str, dict]:
    batch = sorted(section["by_batch"], key=int)[0]
    return batch, section["by_batch"][batch]


def draw(results: dict, path: str):
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    preset = results["settings"]["preset"]
    m = results["machine"]
    where = (f"{m['gpu']}, {results['settings'].get('dtype')}" if m.get("gpu")
             else f"{m['cpu']}, {m['torch_threads']} threads")
    fig.suptitle(f"hope bench: {preset} vs its Llama twin, {where}, torch {m['torch']}", fontsize=10)
    sections = {name: s for name, s in results["sections"].items() if "error" not in s}  # failed sections: no panel
    for ax, name, title, xlabel in ((axes[0, 0], "train", "training (fwd+bwd)", "sequence length"),
                                    (axes[0, 1], "prefill", "prefill (no grad, with cache)", "prompt length")):
        if name in sections:
            batch, by_len = _first_batch(sections[name])
            _lines(ax, by_len, "tokens_per_second")
            ax.set_title(f"{title}, batch {batch}")
        ax.set_xlabel(xlabel), ax.set_ylabel("tokens/s")
    ax = axes[0, 2]
    if "decode" in sections:
        _lines(ax, sections["decode"]["by_context"], "ms_per_token")
        ax.set_title("decode, batch 1")
    ax.set_xlabel("context (tokens)"), ax.set_ylabel("ms / token")
    ax = axes[1, 0]
    if "train" in sections.get("memory", {}).get("by_mode", {}):
        by_batch = sections["memory"]["by_mode"]["train"]
        batch = sorted(by_batch, key=int)[0]
        _lines(ax, by_batch[batch], "peak_delta_mib")
        ax.set_title(f"peak {'GPU memory' if m.get('gpu') else 'RSS'} added by one training step, batch {batch}")
    ax.set_xlabel("sequence length"), ax.set_ylabel("MiB")
    ax = axes[1, 1]
    if "cache_size" in sections:
        for i, (p, table) in enumerate(sections["cache_size"]["per_sequence"].items()):
            rows = table["float32"]
            xs = sorted(rows, key=int)
            style = ["-", "--", ":", "-."][i % 4]
            ax.plot([int(x) for x in xs], [rows[x]["llama_kv_bytes"] / 2**20 for x in xs], "o" + style,
                    color=COLORS["llama"], label=f"{p} Llama KV")
            ax.plot([int(x) for x in xs], [rows[x]["hope_bytes"] / 2**20 for x in xs], "s" + style,
                    color=COLORS["hope"], label=f"{p} HOPE state")
        ax.set_xscale("log", base=2), ax.set_yscale("log")
        ax.legend(fontsize=7), ax.grid(alpha=0.3)
        ax.set_title("decoding state per sequence (float32)")
    ax.set_xlabel("context (tokens)"), ax.set_ylabel("MiB")
    ax = axes[1, 2]
    if "operators" in sections:
        ops = sections["operators"]["by_operator"]
        names = list(ops)
        ax.bar(names, [ops[n]["speedup_at_length"] for n in names], color=COLORS["hope"])
        ax.axhline(50, color="gray", ls="--", lw=1, label="target 50x")
        ax.set_title(f"chunked / naive operator, length {sections['operators']['length']}")
        ax.legend(fontsize=8)
    ax.set_ylabel("speed-up (x)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Cost of `hope convert llama-to-hope` on a random Llama of a paper shape, and the figures of the in-context test.

    python bench/convert.py --preset hope-340m --out bench/results/convert_340m_cpu.json

Builds the preset's size-matched Llama twin with random weights, saves it (float32 safetensors), then runs the real
command in a child process per variant and reads the child's wall time and peak resident memory (`os.wait4`; the
same for a child that only imports the libraries, as the baseline). The converted folder is reloaded and its logits compared with the source Llama's. The in-context figures are those of
`tests/test_convert.py::test_in_context_level_learns_a_repeated_passage` (same setting, same code)."""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "static": [],
    "in-context levels": ["--mlp-level", "period=512,lr=1e-4", "--levels", "period=2048,lr=1e-5,init=zero"],
    "bfloat16": ["--dtype", "bfloat16"],
}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def run_child(cmd: list) -> tuple:
    """(wall seconds, peak RSS in MiB, stdout) of a child process; its own rusage via os.wait4."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not all children's
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({child.returncode}): {err.read()[-2000:]}")
        return round(wall, 2), round(usage.ru_maxrss / 1024, 1), out.read()


def run_convert(src: Path, dst: Path, extra: list) -> dict:
    """One `hope convert llama-to-hope` in a child process: wall time, peak RSS, the command's own summary."""
    cmd = [sys.executable, "-m", "modeling_hope.cli", "convert", "llama-to-hope", str(src), str(dst), *extra]
    wall, rss, out = run_child(cmd)
    summary = json.loads(out.strip().splitlines()[-1])
    return {"command": " ".join(["hope", *cmd[3:]]).replace(str(src), "SRC").replace(str(dst), "DST"),
            "wall_s": wall, "peak_rss_mib": rss, "command_seconds": summary["seconds"], "dtype": summary["dtype"],
            "files": summary["files"], "output_mib": round(folder_bytes(dst) / 2**20, 1),
            "parameters": summary["parameters"]}


def logit_check(source, dst: Path) -> float:
    from transformers import AutoModelForCausalLM

    import modeling_hope  # noqa: F401 - registers HOPE with the Auto classes

    hope = AutoModelForCausalLM.from_pretrained(dst).eval()
    ids = torch.randint(0, source.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return (hope(ids).logits - source(ids).logits).abs().max().item()


def in_context_figures() -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_convert import ICL, repetition_losses
    from test_llama_equivalence import random_llama

    from modeling_hope.convert import LevelSpec, llama_to_hope

    original = random_llama(initializer_range=ICL["initializer_range"])
    converted = llama_to_hope(original, [LevelSpec(init="mlp", period=ICL["period"], lr=ICL["lr"])])
    rows = []
    for seed in ICL["seeds"]:
        passage = torch.randint(3, original.config.vocab_size, (ICL["passage"],),
                                generator=torch.Generator().manual_seed(seed))
        (o1, o2), (c1, c2) = repetition_losses(original, passage), repetition_losses(converted, passage)
        rows.append({"seed": seed, "original_rep1": round(o1, 4), "original_rep2": round(o2, 4),
                     "converted_rep1": round(c1, 4), "converted_rep2": round(c2, 4),
                     "drop_original": round(o1 - o2, 4), "drop_converted": round(c1 - c2, 4)})
    setting = {k: (list(v) if isinstance(v, range) else v) for k, v in ICL.items()}
    return {"setting": {**setting, "model": "random Llama: vocab 97, hidden 32, 2 layers, 4 heads (2 kv), MLP 48; "
                                            "level 1 = the MLP, in context"}, "passages": rows}


def build_source(preset: str, folder: str) -> None:
    """Child process: the preset's Llama twin with random weights, saved as float32 safetensors."""
    from transformers import LlamaForCausalLM

    from modeling_hope.presets import hope_config, llama_twin_config

    torch.manual_seed(0)
    LlamaForCausalLM(llama_twin_config(hope_config(preset))).save_pretrained(folder)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hope-340m", help="HOPE preset whose Llama twin is converted")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--workdir", default=None, help="where the models are written (default: a temp folder)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--build-source", nargs=2, metavar=("PRESET", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_source:
        return build_source(*args.build_source)
    # Every model is built, converted and checked in child processes or after them: a child's peak RSS counts
    # the parent's memory at fork, so the parent holds no model while children are measured.
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hope-convert-bench-"))
    src = work / "llama"
    shutil.rmtree(src, ignore_errors=True)
    build_s, build_rss, _ = run_child([sys.executable, __file__, "--build-source", args.preset, str(src)])
    wall, rss, _ = run_child([sys.executable, "-c", "import modeling_hope.convert.from_llama, transformers; "
                              "transformers.AutoModelForCausalLM, transformers.LlamaForCausalLM"])
    results = {"preset": args.preset, "baseline_imports": {"wall_s": wall, "peak_rss_mib": rss},
               "build_source": {"wall_s": build_s, "peak_rss_mib": build_rss,
                                "folder_mib": round(folder_bytes(src) / 2**20, 1)}, "conversions": {}}
    folders = {}
    for name in args.variants:
        dst = work / f"hope-{name.replace(' ', '-')}"
        shutil.rmtree(dst, ignore_errors=True)
        results["conversions"][name] = run_convert(src, dst, VARIANTS[name])
        folders[name] = dst
        row = results["conversions"][name]
        print(f"{name}: {row['wall_s']} s wall ({row['command_seconds']}), peak RSS {row['peak_rss_mib']} MiB",
              flush=True)
    from transformers import LlamaForCausalLM

    source = LlamaForCausalLM.from_pretrained(src).eval()
    config = source.config
    results["source"] = {"class": "LlamaForCausalLM", "parameters": sum(p.numel() for p in source.parameters()),
                         **{k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                            "intermediate_size", "vocab_size")}, "dtype": "float32"}
    for name, dst in folders.items():
        if name != "bfloat16":
            results["conversions"][name]["max_abs_logit_diff_vs_llama"] = logit_check(source, dst)
        shutil.rmtree(dst, ignore_errors=True)
    results["in_context_test"] = in_context_figures()
    results["environment"] = {"torch": torch.__version__, "threads_in_child": 1, "cpus": os.cpu_count(),
                              "platform": platform.platform(), "python": sys.version.split()[0]}
    text = json.dumps(results, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

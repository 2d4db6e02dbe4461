"""Other public implementations on the same shapes as ours: `nested-learning==0.2.0` (its HOPE self-modifying
block) and `titans-pytorch==0.5.5` (its NeuralMemory). They are never dependencies of this project: they live in a
virtual environment of their own (--venv), made with

    python -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch==2.13.0          # the same torch as ours
    /tmp/benchvenv/bin/pip install -c <(echo torch==2.13.0) nested-learning==0.2.0 titans-pytorch==0.5.5

and this script, run with the project's own Python, times our side here and theirs in a child process of that
environment (`--child`), one after the other on the same machine and thread count:

    python bench/external.py --venv /tmp/benchvenv --out bench/results/external_cpu.json

Shapes: batch 1, width 192 (hope-5m's hidden size), 4 heads of 48 where the implementation has heads.
- nested-learning: `SelfModifyingTitans.forward_with_updates` (the self-modifying Titans with in-context updates,
  its default config: one token per update) and `HOPESelfModBlock.forward` with a fast state and a teach signal (the
  block's in-context path: self-modifying Titans then CMS levels of periods 1 and 256), under torch.no_grad as the
  package runs them (its updates are not differentiable). Its per-token loop makes tokens/s independent of the
  length, so it is timed at --short-len. Ours on the same (1, T, 192): one HopeMemoryMixer (self-modifying Titans,
  hope-5m's config) forward with in-context updates, and the whole hope-5m model (4 layers, CMS, LM head).
- titans-pytorch: `NeuralMemory(dim=192, heads=4, dim_head=48, chunk_size=64, depth-2 MLP memory with expansion 1)`,
  forward and forward+backward. Ours: HopeMemoryMixer with mixer_type="titans" (the Titans LMM: static projections,
  one memory per head, same chunk size), forward and forward+backward.
Each figure is the best of --repeats after one warm-up call; a failure is recorded with its error text."""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

DIM, HEADS, CHUNK = 192, 4, 64


def best_tokens_per_second(fn, tokens: int, repeats: int) -> dict:
    import torch

    fn()  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / min(seconds),
            "threads": torch.get_num_threads()}


def _guard(results: dict, name: str, fn):
    try:
        results[name] = fn()
    except Exception as err:  # recorded, not raised: the point is to say precisely what did not work
        results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}


# ----------------------------------------------------------------------------------------------------------------
# Theirs (child process, in the benchmark's own virtual environment)
# ----------------------------------------------------------------------------------------------------------------


def theirs(short_len: int, lengths, repeats: int) -> dict:
    import importlib.metadata as md

    import torch

    torch.manual_seed(0)
    results = {"versions": {}}
    for pkg in ("torch", "nested-learning", "titans-pytorch"):
        try:
            results["versions"][pkg] = md.version(pkg)
        except md.PackageNotFoundError as err:
            results["versions"][pkg] = f"not installed: {err}"

    def selfmod():
        from nested_learning.titan.self_modifying import SelfModifyingTitans, SelfModifyingTitansConfig

        module = SelfModifyingTitans(SelfModifyingTitansConfig(dim=DIM)).eval()
        x = torch.randn(1, short_len, DIM)

        @torch.no_grad()
        def run():
            module.forward_with_updates(x, module.init_fast_state())

        return {"config": "SelfModifyingTitansConfig(dim=192) defaults (chunk_size_other=1)", "length": short_len,
                **best_tokens_per_second(run, short_len, repeats)}

    def block():
        from nested_learning.fast_state import build_block_fast_state
        from nested_learning.hope.block import HOPESelfModBlock, HOPESelfModBlockConfig
        from nested_learning.levels import LevelSpec

        cfg = HOPESelfModBlockConfig(dim=DIM, cms_levels=[LevelSpec("cms_fast", 1), LevelSpec("cms_slow", 256)])
        module = HOPESelfModBlock(cfg).eval()
        x = torch.randn(1, short_len, DIM)
        teach = 1e-3 * torch.randn(1, short_len, DIM)

        @torch.no_grad()
        def run():
            state = build_block_fast_state(titan_module=None, cms_blocks=dict(module.cms.blocks.items()),
                                           selfmod_module=module.selfmod, specs=list(cfg.cms_levels),
                                           optimizer_configs=cfg.optimizer_configs, default_lr=cfg.self_mod_lr)
            module(x, teach_signal=teach, fast_state=state)

        return {"config": "HOPESelfModBlockConfig(dim=192, cms_levels=[period 1, period 256]) defaults",
                "length": short_len, **best_tokens_per_second(run, short_len, repeats)}

    def neural_memory(length, backward):
        from titans_pytorch import NeuralMemory

        module = NeuralMemory(dim=DIM, heads=HEADS, dim_head=DIM // HEADS, chunk_size=CHUNK,
                              default_model_kwargs=dict(depth=2, expansion_factor=1.0))
        x = torch.randn(1, length, DIM, requires_grad=backward)

        def run():
            if backward:
                out, _ = module(x)
                out.sum().backward()
            else:
                with torch.no_grad():
                    module(x)

        return {"config": "NeuralMemory(dim=192, heads=4, dim_head=48, chunk_size=64, depth=2, expansion_factor=1)",
                "length": length, **best_tokens_per_second(run, length, repeats)}

    _guard(results, "nested_learning_selfmod_titans", selfmod)
    _guard(results, "nested_learning_hope_selfmod_block", block)
    for length in lengths:
        _guard(results, f"titans_neural_memory_forward_{length}", lambda: neural_memory(length, False))
        _guard(results, f"titans_neural_memory_train_{length}", lambda: neural_memory(length, True))
    return results


# ----------------------------------------------------------------------------------------------------------------
# Ours (the project's environment)
# ----------------------------------------------------------------------------------------------------------------


def ours(short_len: int, lengths, repeats: int) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from modeling_hope import HopeForCausalLM
    from modeling_hope.modeling_hope import HopeMemoryMixer
    from modeling_hope.presets import hope_config

    results = {}

    def mixer_fn(mixer_type, length, backward):
        config = hope_config("hope-5m", mixer_type=mixer_type)
        torch.manual_seed(0)
        model = HopeForCausalLM(config)  # initialises the mixer's weights as the model does
        mixer = model.model.layers[0].mixer
        x = torch.randn(1, length, DIM, requires_grad=backward)
        mask = torch.ones(1, length, dtype=torch.bool)
        counts = torch.zeros(1, dtype=torch.long)

        def run():
            if backward:
                out, _ = mixer(x, mask, counts, mixer.init_state(1))
                out.sum().backward()
            else:
                with torch.no_grad():
                    mixer(x, mask, counts, mixer.init_state(1))

        return {"config": f"HopeMemoryMixer of hope-5m, mixer_type={mixer_type}, chunk {config.memory_chunk_size}",
                "length": length, **best_tokens_per_second(run, length, repeats)}

    def model_fn(length):
        torch.manual_seed(0)
        model = HopeForCausalLM(hope_config("hope-5m")).eval()
        ids = torch.randint(0, model.config.vocab_size, (1, length))

        @torch.no_grad()
        def run():
            model(ids, logits_to_keep=1)

        return {"config": "HopeForCausalLM hope-5m (4 layers, in-context CMS level), no grad", "length": length,
                **best_tokens_per_second(run, length, repeats)}

    for length in sorted({short_len, *lengths}):
        _guard(results, f"hope_selfmod_mixer_forward_{length}", lambda: mixer_fn("self_modifying_titans", length, False))
        _guard(results, f"hope_model_forward_{length}", lambda: model_fn(length))
    for length in lengths:
        _guard(results, f"hope_titans_mixer_forward_{length}", lambda: mixer_fn("titans", length, False))
        _guard(results, f"hope_titans_mixer_train_{length}", lambda: mixer_fn("titans", length, True))
    return results


def ratios(ours_: dict, theirs_: dict, short_len: int, lengths) -> dict:
    def tps(d, k):
        return (d.get(k) or {}).get("tokens_per_second")

    out = {}
    pairs = [(f"hope_selfmod_mixer_over_nested_learning_selfmod_at_{short_len}",
              f"hope_selfmod_mixer_forward_{short_len}", "nested_learning_selfmod_titans"),
             (f"hope_model_over_nested_learning_block_at_{short_len}",
              f"hope_model_forward_{short_len}", "nested_learning_hope_selfmod_block")]
    for length in lengths:
        pairs += [(f"hope_titans_mixer_over_titans_pytorch_forward_{length}", f"hope_titans_mixer_forward_{length}",
                   f"titans_neural_memory_forward_{length}"),
                  (f"hope_titans_mixer_over_titans_pytorch_train_{length}", f"hope_titans_mixer_train_{length}",
                   f"titans_neural_memory_train_{length}")]
        pairs += [(f"hope_selfmod_mixer_at_{length}_over_nested_learning_selfmod",
                   f"hope_selfmod_mixer_forward_{length}", "nested_learning_selfmod_titans")]
    for name, a, b in pairs:
        x, y = tps(ours_, a), tps(theirs_, b)
        out[name] = x / y if x and y else None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--venv", default="/tmp/benchvenv", help="virtual environment holding the other packages")
    p.add_argument("--short-len", type=int, default=64, help="length for the per-token nested-learning loop")
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default="bench/results/external_cpu.json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(theirs(args.short_len, args.lengths, args.repeats)))
        return 0
    started = time.perf_counter()
    results = {"method": __doc__, "machine": {"platform": platform.platform(), "processor": platform.processor()
                                              or platform.machine(), "logical_cpus": os.cpu_count(),
                                              "torch": torch.__version__, "threads": torch.get_num_threads(),
                                              "load_average_at_start": list(os.getloadavg())},
               "settings": {k: v for k, v in vars(args).items() if k != "child"}}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from modeling_hope.bench.machine import code_version

    results["code"] = code_version()
    results["ours"] = ours(args.short_len, args.lengths, args.repeats)
    python = Path(args.venv) / "bin" / "python"
    if not python.exists():
        results["theirs"] = {"error": f"no virtual environment at {args.venv}: create it as the docstring says"}
    else:
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
        env.pop("PYTHONPATH", None)
        cmd = [str(python), str(Path(__file__).resolve()), "--child", "--short-len", str(args.short_len),
               "--repeats", str(args.repeats), "--threads", str(torch.get_num_threads()),
               "--lengths", *map(str, args.lengths)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd="/")
        if proc.returncode == 0:
            results["theirs"] = json.loads(proc.stdout.strip().splitlines()[-1])
        else:
            results["theirs"] = {"error": f"child exited with {proc.returncode}", "stderr": proc.stderr[-3000:]}
    results["ratios"] = ratios(results["ours"], results["theirs"], args.short_len, args.lengths)
    results["elapsed_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    for name, value in results["ratios"].items():
        print(f"{name}: {value if value is None else round(value, 1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

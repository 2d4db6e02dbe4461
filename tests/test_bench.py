"""`hope bench --quick` end to end: every section present, every figure finite, HOPE's state independent of context."""

import json
import math

import pytest
import torch

from modeling_hope import memory_cpu
from modeling_hope.cli import main as hope_main

SECTIONS = ("train", "prefill", "decode", "cache_size", "memory", "operators", "naive_model", "compile")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    assert hope_main(["bench", "--quick", "--threads", "1", "--out", str(out)]) == 0
    return json.loads(out.read_text()), out


def numbers(obj):
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from numbers(v)


def test_every_section_with_finite_figures(quick_run):
    results, out = quick_run
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert results["settings"]["isolate"]  # the timed sections' figures came back from their child processes
    assert results["non_finite"] == []
    for key in ("platform", "cpu", "torch", "torch_threads"):
        assert results["machine"][key]
    for name in SECTIONS:
        section = results["sections"][name]
        values = list(numbers(section))
        assert values and all(math.isfinite(v) for v in values), name
    for name in ("train", "prefill"):
        for entry in results["sections"][name]["by_batch"]["1"].values():
            assert entry["hope"]["tokens_per_second"] > 0 and entry["llama"]["tokens_per_second"] > 0
    for entry in results["sections"]["decode"]["by_context"].values():
        assert entry["hope"]["ms_per_token"] > 0 and entry["llama"]["ms_per_token"] > 0
    memory = results["sections"]["memory"]
    assert memory["errors"] == []
    for entry in memory["by_mode"]["train"]["1"].values():
        assert entry["hope"]["peak_delta_mib"] > 0 and entry["llama"]["peak_delta_mib"] > 0
    for op in results["sections"]["operators"]["by_operator"].values():
        assert op["speedup_at_length"] > 1 and op["speedup_torch_at_length"] > 1
        assert op["cpu_kernel"] == memory_cpu.available()  # the model's path on the CPU where the kernel builds
    train = results["sections"]["compile"]["train"]
    for name in ("eager", "compiled", "llama_eager", "llama_compiled"):
        assert train[name]["tokens_per_second"] > 0, name
    assert train["hope_over_llama_compiled"] == pytest.approx(
        train["compiled"]["tokens_per_second"] / train["llama_compiled"]["tokens_per_second"])
    assert train["hope_compiled_over_llama_best"] == pytest.approx(train["compiled"]["tokens_per_second"] / max(
        train["llama_eager"]["tokens_per_second"], train["llama_compiled"]["tokens_per_second"]))
    assert results["skipped"] == []


def test_hope_cache_bytes_do_not_depend_on_context(quick_run):
    results, _ = quick_run
    decode = results["sections"]["decode"]["by_context"]
    assert len(decode) >= 2
    hope = [entry["hope"]["cache_bytes"] for entry in decode.values()]
    after = [entry["hope"]["cache_bytes_after"] for entry in decode.values()]
    contexts = [entry["hope"]["context_tokens"] for entry in decode.values()]
    assert len(set(contexts)) == len(contexts)
    assert len(set(hope + after)) == 1 and hope[0] > 0
    llama = [entry["llama"]["cache_bytes"] for entry in decode.values()]
    assert llama == sorted(llama) and llama[0] < llama[-1]  # the KV cache grows with the context
    measured = results["sections"]["cache_size"]["measured"]
    assert measured["hope_bytes_independent_of_context"] and measured["hope_meta_init_matches_measured"]
    assert measured["llama_formula_matches_measured"]
    for preset in ("hope-340m", "hope-760m", "hope-1.3b"):
        rows = results["sections"]["cache_size"]["per_sequence"][preset]["float32"]
        assert set(rows) == {"4096", "32768", "131072"}
        assert len({r["hope_bytes"] for r in rows.values()}) == 1


def matmul_parameters(model) -> int:
    """Weights of the model's linear layers (the LM head included, tied or not)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_flop_count_covers_forward_and_backward():
    from modeling_hope.bench.flops import train_step_flops
    from modeling_hope.bench.models import build, random_ids

    T = 48
    llama, hope = build("llama", "hope-5m"), build("hope", "hope-5m")
    ids = random_ids(llama.config.vocab_size, 1, T, 0)
    cfg = llama.config
    dense = 6 * matmul_parameters(llama)  # 2 per weight forward, 4 backward
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * T  # causal attention charged as the full square
    per_token = train_step_flops(llama, ids) / T
    assert dense <= per_token <= dense + attention
    assert all(p.grad is None for p in llama.parameters())
    # HOPE's count adds the memories' in-context updates to its own dense layers
    assert train_step_flops(hope, ids) / T > 6 * matmul_parameters(hope)


def test_out_of_memory_at_one_length_is_recorded_and_the_sweep_goes_on():
    from modeling_hope.bench.models import build
    from modeling_hope.bench.timing import throughput_sweep

    models = {"hope": build("hope", "hope-5m"), "llama": build("llama", "hope-5m")}

    def step(model, ids):
        if ids.shape[1] == 64:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB.")
        return 0.5

    results = throughput_sweep(models, [1], [32, 64, 96], 2, 0, step, "train", lambda msg: None)["1"]
    assert results["64"]["error"].startswith("out of memory: CUDA out of memory")
    for length in ("32", "96"):
        assert results[length]["hope"]["tokens_per_second"] == int(length) / 0.5
        assert results[length]["hope_over_llama"] == 1.0


def test_a_failing_section_is_recorded_and_the_run_fails(tmp_path, monkeypatch, one_thread):
    from modeling_hope.bench import training

    def broken(*args, **kwargs):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(training, "run", broken)
    out = tmp_path / "run.json"
    argv = ["bench", "--quick", "--no-isolate", "--sections", "train", "cache_size", "--no-plot", "--out", str(out)]
    assert hope_main(argv) == 1
    results = json.loads(out.read_text())
    assert results["sections"]["train"] == {"error": "RuntimeError: planted failure"}
    assert results["errors"] == [{"section": "train", "error": "RuntimeError: planted failure"}]
    assert results["sections"]["cache_size"]["per_sequence"]  # the sections after it still ran


def test_a_child_process_that_dies_is_recorded_and_the_run_fails(tmp_path, monkeypatch):
    import sys

    from modeling_hope.bench import cli

    commands, real_command = [], cli.child_command

    def dying_child(argv, name, out):
        commands.append((name, real_command(argv, name, out)))
        return [sys.executable, "-c", "import sys; sys.exit(3)"]

    monkeypatch.setattr(cli, "child_command", dying_child)
    out = tmp_path / "run.json"
    assert hope_main(["bench", "--quick", "--sections", "prefill", "cache_size", "--no-plot", "--out", str(out)]) == 1
    results = json.loads(out.read_text())
    error = "the child process running section 'prefill' exited with code 3 without its results"
    assert results["sections"]["prefill"] == {"error": error}
    assert results["errors"] == [{"section": "prefill", "error": error}]
    assert results["sections"]["cache_size"]["per_sequence"]  # untimed: run in the parent
    # only the timed section went to a child, which would run it alone in this process
    [(name, command)] = commands
    assert name == "prefill" and command[1:3] == ["-m", "modeling_hope.bench.cli"]
    last = len(command) - 1 - command[::-1].index("--sections")  # argparse keeps an option's last value
    assert command[last + 1:last + 3] == ["prefill", "--no-isolate"]


def test_models_are_built_in_the_requested_dtype():
    from modeling_hope.bench.models import build

    for name in ("hope", "llama"):
        model = build(name, "hope-5m", dtype=torch.bfloat16)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_live_memory_script_counts_allocations(tmp_path):
    """`bench/live_memory.py` at a short length: each model's peak of live tensors is positive, and chunk
    recomputation (which keeps less of the chunk loop for backward) lowers HOPE's."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "live.json"
    subprocess.run([sys.executable, str(root / "bench" / "live_memory.py"), "--length", "256", "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    figures = json.loads(out.read_text())
    peaks = {name: r["peak_live_mib"] for name, r in figures["results"].items()}
    assert all(p > 0 for p in peaks.values()) and peaks["hope_recompute"] < peaks["hope"]
    assert figures["hope_over_llama"] == peaks["hope"] / peaks["llama"]


def test_decode_section_warms_each_model_with_a_prefill_before_timing(one_thread):
    from modeling_hope.bench import decode
    from modeling_hope.bench.models import build

    models = {"hope": build("hope", "hope-5m", max_context=64), "llama": build("llama", "hope-5m", max_context=64)}
    calls = {name: [] for name in models}
    for name, model in models.items():
        model.register_forward_pre_hook(lambda m, args, kwargs, n=name: calls[n].append(
            (kwargs.get("input_ids", args[0] if args else None)).shape[1]), with_kwargs=True)
    result = decode.run(models, [16, 32], 2, 8192, None, log=lambda msg: None, block=1, warm_prefill=24)
    for name in models:
        assert calls[name][0] == 24  # the untimed prefill, before any context
        assert 1 in calls[name][1:]  # then the decoding
    assert sorted(set(calls["llama"][1:])) == [1, 16, 32]  # each context prefilled in one call, then tokens
    # every context is reached before any token is timed, so that the contexts' decoding interleaves
    assert calls["llama"][1:3] == [16, 32] and set(calls["llama"][3:]) == {1}
    assert max(calls["hope"][1:]) > 1 and set(calls["hope"][1 + calls["hope"][1:].index(1):]) == {1}
    hope = [result["by_context"][str(c)]["hope"] for c in (16, 32)]
    assert [e["context_tokens"] for e in hope] == [16, 32] and all(e["steps"] == 2 for e in hope)
    assert result["method"].startswith("an untimed prefill of 24 tokens per model")

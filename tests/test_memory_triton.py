"""The fused Triton kernel of the self-modifying mixer's chunk loop (`memory_triton.py`) against the PyTorch chunk
loop, run by Triton's interpreter on the CPU (`TRITON_INTERPRET=1`, which conftest.py sets; the same kernel compiles
for a GPU, where `bench/gpu_check.py` checks it). The kernel's tests skip where Triton is not installed (it is an
optional dependency)."""

import pytest
import torch

from conftest import tiny_config
from modeling_hope import HopeForCausalLM, memory_triton



@pytest.fixture
def interpreter(monkeypatch):
    if not memory_triton.available():
        pytest.skip("Triton is not installed (optional: pip install -e '.[kernels]')")
    if not memory_triton.interpreting():
        pytest.skip("TRITON_INTERPRET=1 was not set before Triton was imported (conftest sets it without a GPU)")
    monkeypatch.setattr(memory_triton, "ON_CPU", True)


def _mixer_pair(seed=0, dtype=torch.float32, **overrides):
    torch.manual_seed(seed)
    kw = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, memory_chunk_size=8,
              projection_chunk_size=8)
    kw.update(overrides)
    model = HopeForCausalLM(tiny_config(**kw)).to(dtype).eval()
    return model, model.model.layers[0].mixer


def _perturbed_state(mixer, batch, seed=1):
    """A state whose W_eval differs from W and whose momenta are nonzero, as in the middle of a sequence."""
    g = torch.Generator().manual_seed(seed)
    state = mixer.init_state(batch)
    return {k: (t + 0.1 * torch.randn(t.shape, generator=g, dtype=t.dtype) if k.startswith("memory.") else t)
            for k, t in state.items()}


def _compare(model, mixer, T, offset, batch=2, tol=2e-6, lengths=None):
    """The mixer with the kernel against the PyTorch loop: outputs at the real positions, and the new state.
    `offset` (an int or one per row) is the count each row has seen; `lengths` the real tokens of each row (a
    prefix; default all T)."""
    x = torch.randn(batch, T, model.config.hidden_size, dtype=next(model.parameters()).dtype)
    lengths = torch.tensor(lengths if lengths is not None else [T] * batch)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    counts = torch.tensor(offset if isinstance(offset, list) else [offset] * batch)
    state = _perturbed_state(mixer, batch)
    with torch.no_grad():
        model.config.memory_kernel = "torch"
        want, want_state = mixer(x, mask, counts, state)
        model.config.memory_kernel = "auto"
        calls = memory_triton.CALLS
        got, got_state = mixer(x, mask, counts, state)
    assert memory_triton.CALLS == calls + 1, "the kernel did not run"
    real = mask[..., None]
    assert ((got - want) * real).abs().max() <= tol * (want * real).abs().max()
    for name, t in want_state.items():
        assert (got_state[name] - t).abs().max() <= tol * t.abs().max().clamp_min(1e-12), name


# (T, offset): whole chunks, a partial last chunk, a first piece inside a chunk, one decoded token inside a chunk,
# one token that completes a chunk
@pytest.mark.parametrize("T,offset", [(16, 0), (21, 0), (21, 3), (1, 5), (1, 7)])
def test_kernel_equals_torch_loop(interpreter, T, offset):
    model, mixer = _mixer_pair()
    _compare(model, mixer, T, offset)


@pytest.mark.parametrize("overrides", [
    dict(use_momentum=False),
    dict(use_dgd=False, memory_activation="gelu"),
    dict(self_generated_values=False, value_norm=False),
    dict(use_weight_decay=False, adaptive_projections=["k", "v", "eta"]),
    dict(adaptive_projections=["k", "eta"], memory_expansion=2),
    dict(mixer_type="titans"),
    dict(hidden_size=48, memory_chunk_size=6, projection_chunk_size=6),  # sizes padded to powers of two
], ids=["no_momentum", "gelu_no_dgd", "plain_targets", "no_decay", "two_adaptive_r2", "titans", "padded_sizes"])
def test_kernel_equals_torch_loop_variants(interpreter, overrides):
    model, mixer = _mixer_pair(**overrides)
    _compare(model, mixer, 19, 2)


@pytest.mark.parametrize("T,offset,lengths", [
    (13, [0, 5], None),  # rows at different counts
    (13, [3, 3, 0], [13, 7, 0]),  # padded rows, one without tokens (its state passes through)
    (1, [5, 8, 63], [1, 1, 0]),  # decoding a batch, one row finished
], ids=["counts_differ", "padded", "decode_batch"])
def test_kernel_rows_padded_and_out_of_step(interpreter, T, offset, lengths):
    model, mixer = _mixer_pair()
    _compare(model, mixer, T, offset, batch=len(offset), lengths=lengths)


def test_kernel_float64(interpreter):
    model, mixer = _mixer_pair(dtype=torch.float64)
    _compare(model, mixer, 21, 3, tol=1e-13)


def test_generate_with_kernel(interpreter):
    """Prefill and greedy decoding through generate(), one row left-padded: the same tokens and scores as the
    PyTorch loop."""
    torch.manual_seed(0)
    model = HopeForCausalLM(tiny_config(hidden_size=32, num_attention_heads=2, memory_chunk_size=4,
                                        projection_chunk_size=4)).eval()
    prompt = torch.randint(2, model.config.vocab_size, (2, 9))
    attention_mask = torch.ones_like(prompt)
    prompt[1, :3], attention_mask[1, :3] = model.config.pad_token_id, 0
    out = {}
    for kernel in ("torch", "auto"):
        model.config.memory_kernel = kernel
        calls = memory_triton.CALLS
        out[kernel] = model.generate(prompt, attention_mask=attention_mask, max_new_tokens=6, do_sample=False,
                                     return_dict_in_generate=True, output_scores=True)
        ran = memory_triton.CALLS - calls
        assert ran == (0 if kernel == "torch" else 2 * 6)  # 2 layers x (prefill + 5 decoded tokens)
    assert torch.equal(out["auto"].sequences, out["torch"].sequences)
    for a, b in zip(out["auto"].scores, out["torch"].scores):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_applies_only_where_it_should(interpreter):
    x = torch.zeros(2, 4, 4, 8)
    with torch.no_grad():
        assert memory_triton.applies(x, 8, 8)
        assert not memory_triton.applies(x, 8, 4)  # different chunk sizes: the separate scans
    assert not memory_triton.applies(x, 8, 8)  # autograd records: the PyTorch loop (it has a backward)


def test_cpu_tensors_use_torch_by_default():
    with torch.no_grad():
        assert not memory_triton.applies(torch.zeros(1, 4, 1, 8, 4), 8, 8)


def test_training_is_unchanged_by_the_kernel(interpreter):
    """With autograd on, the kernel never runs: the loss and its gradients come from the PyTorch loop."""
    model, _ = _mixer_pair()
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    calls = memory_triton.CALLS
    model.train()
    model(ids, labels=ids).loss.backward()
    assert memory_triton.CALLS == calls


def test_bench_operators_time_the_kernel(interpreter):
    """`hope bench`'s operators section times the kernel beside the PyTorch loop where the kernel runs."""
    from modeling_hope.bench import operators

    out = operators.run("hope-5m", 32, 8, repeats=1, operators=("fused",), log=lambda msg: None)
    entry = out["by_operator"]["fused"]
    assert set(entry) >= {"chunked", "compiled", "kernel", "naive"} and entry["speedup_kernel_at_length"] > 0


def test_products_follow_torch_matmul_precision():
    """IEEE float32 products unless torch's float32 matmul precision allows TensorFloat-32, as torch's matmuls."""
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert memory_triton._dot_precision(torch.float32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert memory_triton._dot_precision(torch.float32) == "tf32"
        assert memory_triton._dot_precision(torch.float64) == "ieee"
        assert memory_triton._dot_precision(torch.bfloat16) == "tf32"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_hub_code_loads_without_triton():
    """transformers checks a remote-code folder's imports before loading it: Triton must not be among them (it is
    optional), while the kernel's files are copied with the folder (relative imports)."""
    from pathlib import Path

    from transformers.dynamic_module_utils import get_imports, get_relative_imports

    package = Path(memory_triton.__file__).parent
    for name in ("modeling_hope.py", "memory_triton.py", "fused_scan_kernel.py"):
        assert not any(m.startswith("triton") for m in get_imports(str(package / name))), name
    assert "memory_triton" in get_relative_imports(str(package / "modeling_hope.py"))
    assert "fused_scan_kernel" in get_relative_imports(str(package / "memory_triton.py"))

"""The C++ chunk forward, backward and coefficients (`memory_cpu.py`) against the PyTorch path they replace, both in
float32, and against that path in float64 (the C++ path's error no larger than PyTorch's own); against the naive
token-by-token scans; and where they must not run (gelu, autocast, `memory_kernel="torch"`)."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from modeling_hope import memory_cpu
from modeling_hope.fast_weight_memory import (_coefficients, chunk_coefficients as _chunk_coefficients,
                                              chunked_fused_scan, chunked_memory_scan, naive_memory_scan)
from modeling_hope.memory_chunk import FastWeights, chunk_update_read

from conftest import build, tiny_config

pytestmark = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                                reason="no C++ compiler: the kernel cannot be built (the model runs in PyTorch)")


@pytest.fixture(scope="module", autouse=True)
def kernel():
    assert memory_cpu.available(), "the CPU kernel did not build (see the warning)"


def _chunk_inputs(gen, B, P, H, C, d, R, momentum, masked):
    """State (B P H, ...), per-(batch, head) keys, values, queries (B H, C, d) and the chunk's coefficients."""
    N, M = B * P * H, B * H
    W1, W2 = torch.randn(N, d, R, generator=gen) * 0.4, torch.randn(N, R, d, generator=gen) * 0.4
    W1e, W2e = W1 + 0.1 * torch.randn(N, d, R, generator=gen), W2 + 0.1 * torch.randn(N, R, d, generator=gen)
    S1, S2 = torch.randn(N, d, R, generator=gen) * 0.1, torch.randn(N, R, d, generator=gen) * 0.1
    k = F.normalize(torch.randn(M, C, d, generator=gen), dim=-1)
    v, q = torch.randn(M, C, d, generator=gen), F.normalize(torch.randn(M, C, d, generator=gen), dim=-1)
    active = torch.ones(B, 1, C)
    if masked:
        active[-1, :, C // 2:] = 0
    eta = torch.rand(B, H, C, generator=gen) * 0.5 * active
    log_alpha = torch.log(0.8 + 0.2 * torch.rand(B, H, C, generator=gen)) * active
    log_beta = torch.log(0.9 * torch.rand(H, generator=gen)) if momentum else None
    return FastWeights(W1e, W2e, W1, W2, S1, S2), k, v, q, (eta, log_alpha, log_beta, active)


def _chunk(state, k, v, q, coefficient_inputs, dgd, self_generated, P, H, kernel: bool, dtype=torch.float32):
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    with memory_cpu.disabled(not kernel):
        coefficients = [None if t is None else t.flatten(0, 1)
                        for t in _coefficients(*map(cast, coefficient_inputs))[0]]
        new, out = chunk_update_read(FastWeights(*map(cast, state)), cast(k), cast(v), cast(q), coefficients, "silu",
                                     dgd, self_generated, (P, H))
    return [*new] + ([] if out is None else [out])


@pytest.mark.parametrize("dgd,self_generated,momentum,read,masked", [
    (1.0, True, True, True, False), (0.0, False, True, True, True), (1.0, False, False, True, False),
    (0.5, True, False, False, True), (1.0, True, True, False, False)])
@pytest.mark.parametrize("B,P,H,C,d,R", [(2, 3, 2, 7, 4, 6), (1, 5, 4, 64, 48, 48), (1, 1, 2, 33, 16, 32)])
def test_chunk_forward_matches_pytorch(B, P, H, C, d, R, dgd, self_generated, momentum, read, masked):
    gen = torch.Generator().manual_seed(C * 7 + P)
    state, k, v, q, coefficient_inputs = _chunk_inputs(gen, B, P, H, C, d, R, momentum, masked)
    q = q if read else None
    calls = memory_cpu.CALLS
    fast = _chunk(state, k, v, q, coefficient_inputs, dgd, self_generated, P, H, kernel=True)
    assert memory_cpu.CALLS == calls + 2  # the coefficients and the chunk
    slow = _chunk(state, k, v, q, coefficient_inputs, dgd, self_generated, P, H, kernel=False)
    exact = _chunk(state, k, v, q, coefficient_inputs, dgd, self_generated, P, H, kernel=False, dtype=torch.float64)
    assert memory_cpu.CALLS == calls + 2
    for name, a, b, ref in zip(["W1", "W2", "S1", "S2", "out"], fast, slow, exact):
        assert a.dtype == torch.float32 and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6, msg=lambda m: f"{name}: {m}")
        # float32 rounding alone: no further from the float64 values than PyTorch's float32 path is
        err_fast, err_slow = (a.double() - ref).abs().max(), (b.double() - ref).abs().max()
        assert err_fast <= 4 * err_slow + 1e-6, (name, float(err_fast), float(err_slow))


def _gradients(state, k, v, q, coefficient_inputs, dgd, self_generated, P, H, kernel: bool, dtype=torch.float32):
    """Gradients of a random weighting of the chunk's outputs at the state, keys, values, queries and coefficient
    inputs (through `ChunkCoefficients`' own backward, and the chunk node's)."""
    leaves = [t.to(dtype).requires_grad_() for t in (*state, k, v, *([] if q is None else [q]))]
    coef = [None if t is None else (t.to(dtype).requires_grad_() if t is not coefficient_inputs[3] else t.to(dtype))
            for t in coefficient_inputs]
    with memory_cpu.disabled(not kernel):
        coefficients = [None if t is None else t.flatten(0, 1) for t in _chunk_coefficients(*coef)]
        new, out = chunk_update_read(FastWeights(*leaves[:6]), *leaves[6:8], leaves[8] if q is not None else None,
                                     coefficients, "silu", dgd, self_generated, (P, H))
        outputs = [*new] + ([] if out is None else [out])
        gen = torch.Generator().manual_seed(5)
        loss = sum((t * torch.randn(t.shape, generator=gen).to(t.dtype)).sum() for t in outputs)
        inputs = leaves + [t for t in coef[:3] if t is not None]
        return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("dgd,self_generated,momentum,read,masked", [
    (1.0, True, True, True, False), (0.0, False, True, True, True), (1.0, False, False, True, False),
    (0.5, True, False, False, True), (1.0, True, True, False, False)])
@pytest.mark.parametrize("B,P,H,C,d,R", [(2, 3, 2, 7, 4, 6), (1, 5, 4, 64, 48, 48)])
def test_chunk_backward_matches_pytorch(B, P, H, C, d, R, dgd, self_generated, momentum, read, masked):
    """The C++ backward's gradients (at the state, keys, values, queries, eta, log alpha, log beta) against the
    PyTorch backward's in float32, and no further from the float64 gradients than those."""
    gen = torch.Generator().manual_seed(C * 11 + P)
    state, k, v, q, coefficient_inputs = _chunk_inputs(gen, B, P, H, C, d, R, momentum, masked)
    q = q if read else None
    calls = memory_cpu.CALLS
    fast = _gradients(state, k, v, q, coefficient_inputs, dgd, self_generated, P, H, kernel=True)
    assert memory_cpu.CALLS == calls + 3  # coefficients, the chunk's forward and its backward
    slow = _gradients(state, k, v, q, coefficient_inputs, dgd, self_generated, P, H, kernel=False)
    exact = _gradients(state, k, v, q, coefficient_inputs, dgd, self_generated, P, H, kernel=False,
                       dtype=torch.float64)
    names = "W1e W2e W1 W2 S1 S2 k v".split() + (["q"] if read else []) + ["eta", "log_alpha", "log_beta"]
    assert len(fast) == len(slow) == len(exact)
    for name, a, b, ref in zip(names, fast, slow, exact):
        scale = float(ref.abs().max())  # sums over the chunk: their rounding grows with their size
        torch.testing.assert_close(a, b, rtol=1e-4, atol=4e-6 * scale + 1e-6,
                                   msg=lambda m: f"gradient of {name}: {m}")
        err_fast, err_slow = (a.double() - ref).abs().max(), (b.double() - ref).abs().max()
        assert err_fast <= 4 * err_slow + 2e-6 * scale, (name, float(err_fast), float(err_slow))


@pytest.mark.parametrize("momentum", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 64), (1, 4, 5, 16), (3, 2, 9)])
def test_coefficients_match_closed_form(shape, momentum):
    """The recurrences give the closed form's A, c, G, beta_C and s (batched chunks, no-op slots)."""
    gen = torch.Generator().manual_seed(len(shape) + shape[-1])
    active = (torch.rand(shape[0], 1, *shape[2:], generator=gen) > 0.25).float()
    eta = torch.rand(*shape, generator=gen) * active
    log_alpha = torch.log(0.5 + 0.5 * torch.rand(*shape, generator=gen)) * active
    log_beta = torch.log(0.95 * torch.rand(shape[1], generator=gen)) if momentum else None
    calls = memory_cpu.CALLS
    fast, _ = _coefficients(eta, log_alpha, log_beta, active)
    assert memory_cpu.CALLS == calls + 1
    exact, _ = _coefficients(*(None if t is None else t.double() for t in (eta, log_alpha, log_beta, active)))
    for a, ref in zip(fast, exact):
        if ref is None:
            assert a is None
            continue
        assert a.dtype == torch.float32 and a.shape == ref.shape
        torch.testing.assert_close(a.double(), ref, rtol=1e-5, atol=1e-6)


def test_scans_match_naive_with_the_kernel():
    """The output memory's chunked scan, through the C++ chunks, against the token-by-token reference in float64:
    padded rows at different counts, chunks cut short."""
    gen = torch.Generator().manual_seed(0)
    B, H, T, d, R, chunk = 3, 2, 21, 8, 16, 8
    counts, lengths = torch.tensor([0, 5, 3]), torch.tensor([21, 14, 9])
    mask = torch.arange(T)[None] < lengths[:, None]
    W1, W2 = torch.randn(B, H, d, R, generator=gen) * 0.4, torch.randn(B, H, R, d, generator=gen) * 0.4
    state = FastWeights(W1 + 0.05, W2 - 0.05, W1, W2, 0.1 * torch.randn(B, H, d, R, generator=gen),
                        0.1 * torch.randn(B, H, R, d, generator=gen))
    q, v = torch.randn(B, H, T, d, generator=gen), torch.randn(B, H, T, d, generator=gen)
    k = F.normalize(torch.randn(B, H, T, d, generator=gen), dim=-1)
    eta, log_alpha = torch.rand(B, H, T, generator=gen) * 0.5, torch.log(0.8 + 0.2 * torch.rand(B, H, T, generator=gen))
    log_beta = torch.log(0.9 * torch.rand(H, generator=gen))
    args = (q, k, v, eta, log_alpha, log_beta, mask, counts, chunk)
    options = dict(act="silu", dgd=1.0, self_generated=True, lr_scale=1.0 / chunk)
    calls = memory_cpu.CALLS
    with torch.no_grad():
        out, new = chunked_memory_scan(state, *args, **options)
        assert memory_cpu.CALLS > calls
        ref_out, ref_new = naive_memory_scan(FastWeights(*(t.double() for t in state)),
                                             *(t.double() if t.is_floating_point() else t for t in args[:-1]), chunk,
                                             **options)
    real = mask[:, None].expand(B, H, T)  # outputs at padded slots are left unspecified
    torch.testing.assert_close(out.double()[real], ref_out[real], rtol=1e-4, atol=1e-5)
    for a, b in zip(new, ref_new):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_nan_propagates():
    """A NaN in a key reaches the state and the read (the kernel's exp keeps NaN, it does not clamp it away)."""
    gen = torch.Generator().manual_seed(1)
    state, k, v, q, coefficient_inputs = _chunk_inputs(gen, 1, 2, 2, 8, 4, 4, True, False)
    k = k.clone()
    k[0, 3, 1] = float("nan")
    fast = _chunk(state, k, v, q, coefficient_inputs, 1.0, True, 2, 2, kernel=True)
    assert all(t.isnan().any() for t in fast)


def test_kernel_runs_only_where_it_applies():
    """Not for gelu memories, not under autocast, not with memory_kernel="torch"; the model's results are the same
    with and without it."""
    gen = torch.Generator().manual_seed(2)
    state, k, v, q, coefficient_inputs = _chunk_inputs(gen, 1, 2, 2, 8, 4, 4, True, False)
    coefficients = [t.flatten(0, 1) for t in _coefficients(*coefficient_inputs)[0]]
    calls = memory_cpu.CALLS
    chunk_update_read(state, k, v, q, coefficients, "gelu", 1.0, True, (2, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunk_update_read(state, k, v, q, coefficients, "silu", 1.0, True, (2, 2))
    assert memory_cpu.CALLS == calls

    ids = torch.randint(2, 61, (2, 19), generator=gen)
    logits = {}
    for kernel in ("auto", "torch"):
        model = build(tiny_config(mixer_type="self_modifying_titans", memory_chunk_size=4, projection_chunk_size=4,
                                  memory_kernel=kernel), seed=3)
        calls = memory_cpu.CALLS
        with torch.no_grad():
            logits[kernel] = model(ids).logits
        assert (memory_cpu.CALLS > calls) == (kernel == "auto"), kernel
    torch.testing.assert_close(logits["auto"], logits["torch"], rtol=1e-4, atol=1e-5)


def test_fused_scan_with_the_kernel_matches_pytorch():
    """The model's fused scan (projection memories and output memory in one pass), kernel against PyTorch."""
    from modeling_hope.modeling_hope import HopeMemoryMixer

    config = tiny_config(mixer_type="self_modifying_titans", memory_chunk_size=4, projection_chunk_size=4,
                         hidden_size=32, num_attention_heads=2)
    torch.manual_seed(0)
    mixer = HopeMemoryMixer(config, 0)
    for p in mixer.parameters():  # the model's init range, without building a model
        torch.nn.init.normal_(p, std=0.02)
    state = mixer.init_state(2)
    memory = FastWeights(*(state[f"memory.{f}"] for f in FastWeights._fields))
    gen = torch.Generator().manual_seed(4)
    q = F.normalize(torch.randn(2, 2, 13, 16, generator=gen), dim=-1)
    boxes = torch.randn(2, 4, 2, 13, 16, generator=gen)
    mask, counts = torch.ones(2, 13, dtype=torch.bool), torch.tensor([0, 2])
    log_beta = F.logsigmoid(torch.ones(2))
    results = []
    for kernel in (True, False):
        with torch.no_grad(), memory_cpu.disabled(not kernel):
            results.append(chunked_fused_scan(memory, q, boxes, mixer.adaptive, mixer._produce, log_beta, mask, counts,
                                              4, "silu", 1.0, True, lr_scale=0.25))
    (out, new), (ref_out, ref_new) = results
    assert out.isfinite().all()
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    for a, b in zip(new, ref_new):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_failed_build_warns_and_falls_back(monkeypatch):
    """Where the extension cannot be built, one warning names the failure and the chunks run in PyTorch."""
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension: /bin/sh: 1: c++: not found")

    monkeypatch.setattr(memory_cpu, "_MODULE", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load_inline", no_compiler)
    with pytest.warns(UserWarning, match="did not build .*c\\+\\+: not found.*run in PyTorch"):
        assert not memory_cpu.available()
    gen = torch.Generator().manual_seed(6)
    state, k, v, q, coefficient_inputs = _chunk_inputs(gen, 1, 2, 2, 8, 4, 4, True, False)
    calls = memory_cpu.CALLS
    fallback = _chunk(state, k, v, q, coefficient_inputs, 1.0, True, 2, 2, kernel=True)
    assert memory_cpu.CALLS == calls
    monkeypatch.undo()
    built = _chunk(state, k, v, q, coefficient_inputs, 1.0, True, 2, 2, kernel=True)
    assert memory_cpu.CALLS == calls + 2
    for a, b in zip(fallback, built):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("chunks", [(4, 4), (4, 3)], ids=["fused-scan", "separate-scans"])
def test_training_gradients_with_the_kernel(chunks):
    """A float32 training step of a padded batch through the C++ chunks (forward and backward), with and without
    `memory_recompute` (whose checkpoint segments run the chunks again in backward), against the PyTorch chunks; with
    `memory_kernel="torch"` the recomputation in backward stays in PyTorch too."""
    ids = torch.randint(2, 61, (2, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    grads = {}
    for kernel, recompute in (("torch", 0), ("torch", 3), ("auto", 0), ("auto", 3)):
        model = build(tiny_config(mixer_type="self_modifying_titans", memory_chunk_size=chunks[0],
                                  projection_chunk_size=chunks[1], memory_kernel=kernel,
                                  memory_recompute=recompute), seed=5).train()
        calls = memory_cpu.CALLS
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        assert (memory_cpu.CALLS > calls) == (kernel == "auto")
        grads[kernel, recompute] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    reference = grads["torch", 0]
    for key in (("torch", 3), ("auto", 0), ("auto", 3)):
        assert grads[key].keys() == reference.keys()
        for name, g in grads[key].items():
            scale = float(reference[name].abs().max())
            torch.testing.assert_close(g, reference[name], rtol=1e-3, atol=1e-5 * scale + 1e-7,
                                       msg=lambda m: f"{key}, {name}: {m}")


def test_switch_is_per_thread():
    """`disabled()` (a model's memory_kernel="torch") holds in its own thread only: another thread's chunks still
    run in C++ meanwhile."""
    import threading

    seen = {}

    def other():
        seen["other"] = memory_cpu.enabled()

    with memory_cpu.disabled():
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        seen["here"] = memory_cpu.enabled()
    assert seen == {"other": True, "here": False} and memory_cpu.enabled()

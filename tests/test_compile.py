"""torch.compile: the compiled per-chunk step (`compile_memory`) and `torch.compile(model)` compute what eager does,
in training (loss and gradients) and in decoding (generate). Inductor's cold compile costs minutes per graph on the
CI machine, so the whole-model checks run through the `aot_eager` backend (dynamo's tracing, graph breaks and AOT
autograd: the plumbing), and one check compiles the chunk step with inductor (the kernels)."""

import pytest
import torch

import modeling_hope.fast_weight_memory as fwm
from conftest import build, tiny_config

IN_CONTEXT = [{"intermediate_size": 16}, {"intermediate_size": 8, "period": 6, "lr": 0.1}]


@pytest.fixture
def backend(monkeypatch):
    """Fresh dynamo caches; the chunk step compiled with the backend the test names."""
    torch._dynamo.reset()

    def use(name):
        monkeypatch.setattr(fwm, "COMPILE_BACKEND", name)
        return name

    yield use
    torch._dynamo.reset()


def left_padded(length: int, row: int, pads: int, seed: int):
    ids = torch.randint(2, 61, (2, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[row, :pads] = 0
    return ids, mask


@pytest.mark.parametrize("chunks", [(4, 4), (4, 3)], ids=["fused-scan", "separate-scans"])
def test_compiled_training_matches_eager(chunks, backend):
    name = backend("aot_eager")
    ids, mask = left_padded(24, 0, 5, seed=0)
    results = []
    for compiled in (False, True):
        config = tiny_config(memory_chunk_size=chunks[0], projection_chunk_size=chunks[1], cms_levels=IN_CONTEXT,
                             compile_memory=compiled)
        model = build(config, seed=7).train()
        run = torch.compile(model, backend=name) if compiled else model
        out = run(ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        results.append((out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (logits_e, grads_e), (logits_c, grads_c) = results
    assert torch.allclose(logits_e, logits_c, atol=1e-5), float((logits_e - logits_c).abs().max())
    for n, g in grads_e.items():
        assert torch.allclose(g, grads_c[n], atol=1e-5), n


def test_compiled_decoding_matches_eager(backend):
    name = backend("aot_eager")
    prompt, mask = left_padded(9, 1, 3, seed=1)
    outputs = []
    for compiled in (False, True):
        model = build(tiny_config(memory_chunk_size=4, projection_chunk_size=4, cms_levels=IN_CONTEXT,
                                  compile_memory=compiled), seed=8)
        if compiled:
            model.forward = torch.compile(model.forward, backend=name)
        outputs.append(model.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                      pad_token_id=0))
    assert torch.equal(outputs[0], outputs[1])


def test_inductor_chunk_step_matches_eager(backend):
    """The fused chunk step through inductor's CPU kernels (forward; one graph: full chunks, no padding)."""
    backend("inductor")
    ids = torch.randint(2, 61, (2, 16), generator=torch.Generator().manual_seed(2))
    logits = []
    for compiled in (False, True):
        model = build(tiny_config(memory_chunk_size=4, projection_chunk_size=4, compile_memory=compiled), seed=9)
        with torch.no_grad():
            logits.append(model(ids).logits)
    assert torch.allclose(logits[0], logits[1], atol=1e-5), float((logits[0] - logits[1]).abs().max())


def test_compiled_step_with_recomputation_matches_eager(backend):
    """`compile_memory` inside `memory_recompute`'s checkpoint segments: the same gradients as the plain model."""
    backend("aot_eager")
    ids, mask = left_padded(40, 1, 6, seed=3)
    grads = []
    for recompute, compiled in ((0, False), (3, True)):
        model = build(tiny_config(memory_chunk_size=4, projection_chunk_size=4, memory_recompute=recompute,
                                  compile_memory=compiled), seed=1).train()
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n, g in grads[0].items():
        assert torch.allclose(g, grads[1][n], atol=1e-5), n


def test_inductor_model_trains_then_decodes_like_eager(backend):
    """`torch.compile(model)` through inductor: a training step, then greedy decoding from a cache, whose new
    lengths make dynamo recompile with symbolic shapes (a conv-tail slice starting at the call's length once made
    inductor emit code naming a shape symbol it never bound)."""
    backend("inductor")
    ids = torch.randint(2, 61, (1, 12), generator=torch.Generator().manual_seed(4))
    tokens = []
    for compiled in (False, True):
        model = build(tiny_config(), seed=10)
        run = torch.compile(model) if compiled else model
        run(ids, labels=ids).loss.backward()
        model.eval()
        with torch.no_grad():
            out = run(ids[:, :8], use_cache=True)
            cache, token, seen = out.cache, out.logits[:, -1:].argmax(-1), []
            for _ in range(4):
                out = run(token, cache=cache, use_cache=True)
                token = out.logits[:, -1:].argmax(-1)
                seen.append(out.logits[0, -1])
        tokens.append(torch.stack(seen))
    assert torch.allclose(tokens[0], tokens[1], atol=1e-5), float((tokens[0] - tokens[1]).abs().max())

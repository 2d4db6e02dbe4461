"""Spec 4.4: every ablation switch runs forward and backward, and every parameter learns."""

import pytest
import torch

from conftest import build, tiny_config

IN_CONTEXT = [{"intermediate_size": 16}, {"intermediate_size": 8, "period": 5, "lr": 0.1}]
ABLATIONS = {
    "hope": {},
    "hope-in-context-cms": {"cms_levels": IN_CONTEXT},
    "no-dgd": {"use_dgd": False},
    "no-momentum": {"use_momentum": False},
    "no-weight-decay": {"use_weight_decay": False},
    "no-cms": {"cms_levels": [{"intermediate_size": 24}]},
    "static-k": {"adaptive_projections": ["v", "eta", "alpha"]},
    "static-v": {"adaptive_projections": ["k", "eta", "alpha"]},
    "no-conv": {"conv_size": 0},
    "chunks-1": {"memory_chunk_size": 1, "projection_chunk_size": 1},
    "chunks-7-2": {"memory_chunk_size": 7, "projection_chunk_size": 2},
    "gelu-memory": {"memory_activation": "gelu", "memory_expansion": 3},
    "titans": {"mixer_type": "titans"},
    "titans-dgd": {"mixer_type": "titans", "use_dgd": True},
    "attention": {"mixer_type": "attention", "num_key_value_heads": 1},
    "tied": {"tie_word_embeddings": True},
    "naive-impl": {"memory_impl": "naive", "num_hidden_layers": 1},
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_trains_every_parameter(name):
    config = tiny_config(**{"cms_levels": IN_CONTEXT, **ABLATIONS[name]})
    model = build(config, seed=1).train()
    ids = torch.randint(2, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got a zero gradient"


def test_one_step_lowers_the_loss():
    config = tiny_config(cms_levels=IN_CONTEXT)
    model = build(config, seed=2).train()
    ids = torch.randint(2, config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(ids, labels=ids).loss
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.05


def test_gradient_checkpointing_gives_the_same_gradients():
    config = tiny_config(cms_levels=IN_CONTEXT)
    ids = torch.randint(2, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        model = build(config, seed=3, dtype=torch.float64).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-12), name


@pytest.mark.parametrize("chunks", [(4, 3), (4, 4)], ids=["separate-scans", "fused-scan"])
def test_naive_and_chunked_models_agree(chunks):
    ids = torch.randint(2, 61, (2, 10), generator=torch.Generator().manual_seed(0))
    outs = []
    for impl in ("chunked", "naive"):
        model = build(tiny_config(memory_impl=impl, num_hidden_layers=1, cms_levels=IN_CONTEXT,
                                  memory_chunk_size=chunks[0], projection_chunk_size=chunks[1]), seed=4,
                      dtype=torch.float64).train()
        out = model(ids, labels=ids)
        out.loss.backward()
        outs.append((out.logits, {n: p.grad for n, p in model.named_parameters()}))
    assert torch.allclose(outs[0][0], outs[1][0], atol=1e-10)
    for name, g in outs[0][1].items():
        assert torch.allclose(g, outs[1][1][name], atol=1e-9), name


@pytest.mark.parametrize("eta_bias", [-2.0, 10.0])
def test_memories_stay_finite_on_a_repeated_token(eta_bias):
    """The worst case for chunked updates: every key of a chunk is the same. Normalised steps, the eta / C rate and
    eta_max = 0.5 keep the memories bounded even at the largest inner learning rate (at eta_max = 1 the output
    memory's self-generated target ran away on this input)."""
    config = tiny_config(hidden_size=32, memory_chunk_size=16, projection_chunk_size=8)
    model = build(config, seed=0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mixer.eta_bias.fill_(eta_bias)
        out = model(torch.full((1, 1024), 5), use_cache=True)
    assert torch.isfinite(out.logits).all()
    weights = [t for layer in out.cache.layers for name, t in layer.tensors.items() if name.endswith(("W1", "W2"))]
    assert max(float(w.abs().max()) for w in weights) < 10


@pytest.mark.parametrize("value_norm,scale,bounded", [(True, 1.0, True), (True, 10.0, True), (False, 10.0, False)])
def test_large_values_do_not_run_away(value_norm, scale, bounded):
    """The self-generated target M(v) grows with the memory; with |v| > |k| = 1 the inner step amplifies the weights.
    This is the divergence seen training hope-5m at length 512 (|v| reached 6, then 1e14 within one sequence).
    l2-normalised values (`value_norm`, the default) keep the memories bounded however large the v projection."""
    config = tiny_config(hidden_size=32, memory_chunk_size=16, projection_chunk_size=16, value_norm=value_norm)
    model = build(config, seed=0)
    d = config.hidden_size
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mixer.eta_bias.fill_(10.0)  # eta at eta_max
            layer.mixer.in_proj.weight[2 * d:3 * d] *= scale  # the v box's input projection (q, k, v, eta, alpha)
        ids = torch.randint(2, config.vocab_size, (2, 1024), generator=torch.Generator().manual_seed(0))
        out = model(ids, use_cache=True)
    weights = [t for layer in out.cache.layers for name, t in layer.tensors.items() if name.endswith(("W1", "W2"))]
    largest = max(float(w.abs().max()) for w in weights)
    assert (torch.isfinite(out.logits).all() and largest < 10) == bounded, largest


def _saved_bytes(model, ids, mask):
    """Bytes autograd keeps for backward after one forward (each storage counted once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, attention_mask=mask, labels=ids).loss
    return loss, sum(storages.values())


@pytest.mark.parametrize("chunks", [(4, 3), (4, 4)], ids=["separate-scans", "fused-scan"])
def test_memory_recompute_gives_the_same_gradients_with_less_saved(chunks):
    """`memory_recompute`: the same gradients (left padding included), and autograd keeps fewer bytes."""
    ids = torch.randint(2, 61, (2, 64), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    grads, saved = [], []
    for recompute in (0, 3):
        model = build(tiny_config(memory_recompute=recompute, memory_chunk_size=chunks[0],
                                  projection_chunk_size=chunks[1], cms_levels=IN_CONTEXT), seed=5,
                      dtype=torch.float64).train()
        loss, nbytes = _saved_bytes(model, ids, mask)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        saved.append(nbytes)
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-12, rtol=0), name
    assert saved[1] < 0.6 * saved[0], saved

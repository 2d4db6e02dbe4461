"""In-context CMS levels against an independent reference built from autograd (spec section 3)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import build, tiny_config
from modeling_hope.continuum_memory import SwiGLU, SwiGLUFunction

PERIOD, LR = 4, 0.3


def level_params(model):
    mlp = model.model.layers[-1].cms[-1].mlp
    return [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]


def position_grads(model, ids, positions):
    """Autograd gradient of sum_{t in positions} CE(logits_t, ids_{t+1}) w.r.t. the last level's weights, with
    the level frozen (lr = 0). For the last level of the last layer the teach signal is the exact gradient."""
    logits = model(ids).logits[0].float()
    loss = sum(F.cross_entropy(logits[t], ids[0, t + 1]) for t in positions)
    return torch.autograd.grad(loss, level_params(model))


def test_in_context_level_follows_the_worked_example():
    levels = [{"intermediate_size": 16}, {"intermediate_size": 8, "period": PERIOD, "lr": LR}]
    config = tiny_config(num_hidden_layers=1, cms_levels=levels)
    model = build(config, seed=5, dtype=torch.float64)
    ids = torch.randint(2, config.vocab_size, (1, 3 * PERIOD), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits

    def frozen_with(weights):
        frozen = build(tiny_config(num_hidden_layers=1, cms_levels=[levels[0], dict(levels[1], lr=0.0)]),
                       dtype=torch.float64)
        frozen.load_state_dict(model.state_dict())
        with torch.no_grad():
            for p, w in zip(level_params(frozen), weights):
                p.copy_(w)
        return frozen

    theta0 = [p.detach().clone() for p in level_params(model)]
    # tokens 0-3 use theta0; after token 3 the level steps with positions 0, 1, 2 (3's target is not seen yet)
    g_a = position_grads(frozen_with(theta0), ids, range(PERIOD - 1))
    theta1 = [w - LR * g for w, g in zip(theta0, g_a)]
    # tokens 4-7 use theta1; the next step takes position 3 (at theta0) and positions 4, 5, 6 (at theta1)
    g_b = position_grads(frozen_with(theta0), ids, [PERIOD - 1])
    g_c = position_grads(frozen_with(theta1), ids, range(PERIOD, 2 * PERIOD - 1))
    theta2 = [w - LR * (gb + gc) for w, gb, gc in zip(theta1, g_b, g_c)]
    with torch.no_grad():
        ref = [frozen_with(theta)(ids).logits for theta in (theta0, theta1, theta2)]
    for k in range(3):
        span = slice(k * PERIOD, (k + 1) * PERIOD)
        assert torch.allclose(logits[:, span], ref[k][:, span], atol=1e-10, rtol=0)
    assert (ref[1][:, PERIOD:2 * PERIOD] - ref[0][:, PERIOD:2 * PERIOD]).abs().max() > 1e-6  # the steps matter


def test_teach_signal_equals_autograd():
    """The closed-form teach signal against autograd through the final norm, the LM head and the summed CE."""
    config = tiny_config(cms_levels=[{"intermediate_size": 16}, {"intermediate_size": 8, "period": 3, "lr": 0.1}])
    model = build(config, seed=6, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(2, 5, config.hidden_size, dtype=torch.float64, generator=gen) * 3
    with torch.no_grad():
        model.model.norm.weight.copy_(1 + 0.3 * torch.randn(config.hidden_size, generator=gen))
    targets = torch.randint(0, config.vocab_size, (2, 5), generator=gen)
    targets[0, 1] = targets[1, 4] = -100
    leaf = h.clone().requires_grad_(True)
    loss = F.cross_entropy(model.lm_head(model.model.norm(leaf)).flatten(0, 1), targets.flatten(), ignore_index=-100,
                           reduction="sum")
    (expected,) = torch.autograd.grad(loss, leaf)
    got = model._teach_signal(h, targets)
    # 1e-8, not 1e-12: the norm computes in float32 (as Llama's does) even in a float64 model
    assert torch.allclose(got, expected, atol=1e-8, rtol=0), float((got - expected).abs().max())
    assert got[0, 1].abs().max() == 0 and got[1, 4].abs().max() == 0


def _swiglu_reference(z, gate, up, down):
    return (F.silu(z @ gate.mT) * (z @ up.mT)) @ down.mT


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_swiglu_function_gradients_equal_autograd(per_row, recompute):
    """`SwiGLUFunction` (saves g and v only, or with `recompute` neither) against autograd through the plain
    expression, float64: shared weights (a static level) and per-row weights expanded from shared ones (an in-context
    level's first round)."""
    gen = torch.Generator().manual_seed(0)
    B, T, d, I = 3, 7, 5, 6
    z0 = torch.randn(B, T, d, generator=gen, dtype=torch.float64)
    w0 = [torch.randn(*shape, generator=gen, dtype=torch.float64) for shape in ((I, d), (I, d), (d, I))]
    g_out = torch.randn(B, T, d, generator=gen, dtype=torch.float64)
    results = []
    for fn in (lambda *a: SwiGLUFunction.apply(*a, recompute)[0], _swiglu_reference):
        z, *ws = (t.clone().requires_grad_() for t in (z0, *w0))
        args = [w.expand(B, *w.shape) for w in ws] if per_row else ws
        out = fn(z, *args)
        out.backward(g_out)
        results.append([out.detach(), z.grad, *(w.grad for w in ws)])
    for got, ref in zip(*results):
        assert torch.allclose(got, ref, atol=1e-12, rtol=0)


def test_swiglu_module_keeps_a_wrapped_linear():
    """A projection replaced by another module (an adapter, a quantised layer) keeps its own forward."""
    mlp = SwiGLU(4, 6)
    calls = []
    wrapped = torch.nn.Sequential(mlp.up_proj)
    wrapped.register_forward_hook(lambda *a: calls.append(1))
    mlp.up_proj = wrapped
    mlp(torch.randn(2, 3, 4)).sum().backward()
    assert calls == [1]


def test_swiglu_under_autocast_matches_autograd():
    """Under bf16 autocast (Accelerate's mixed precision) the backward runs with the forward's autocast state: the
    gradients have the parameters' dtype and agree with autograd through the plain module."""
    torch.manual_seed(0)
    mlp = SwiGLU(8, 12)
    z0 = torch.randn(2, 5, 8)
    grads = []
    for fused in (True, False):
        z = z0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mlp(z) if fused else mlp.down_proj(F.silu(mlp.gate_proj(z)) * mlp.up_proj(z))
        out.float().square().sum().backward()
        grads.append([z.grad] + [p.grad for p in mlp.parameters()])
        mlp.zero_grad(set_to_none=True)
    for got, ref in zip(*grads):
        assert got.dtype == ref.dtype == torch.float32
        assert torch.allclose(got, ref, rtol=2e-2, atol=2e-2 * ref.abs().max().item())

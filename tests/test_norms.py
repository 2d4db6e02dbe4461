"""The norms' hand-written backward passes (`RMSNormFunction`, `L2NormFunction`) against autograd through
PyTorch's own `F.rms_norm` and `F.normalize`: the same values, the same gradients."""

import pytest
import torch
import torch.nn.functional as F

from modeling_hope.modeling_hope import HopeRMSNorm, NormGateFunction, RMSNormFunction, l2norm


@pytest.mark.parametrize("shape", [(3, 7, 16), (2, 4, 5, 8)])
def test_rms_norm_matches_f_rms_norm(shape):
    torch.manual_seed(0)
    weight = torch.randn(shape[-1], dtype=torch.float64, requires_grad=True)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    out = RMSNormFunction.apply(x, weight, 1e-6)
    ref = F.rms_norm(x, shape[-1:], weight, eps=1e-6)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, weight), g)
    want = torch.autograd.grad(ref, (x, weight), g)
    assert torch.equal(out, ref)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_rms_norm_float32_node_and_values():
    """float32 on the CPU (the model's training path) goes through the node; no-grad calls give the same values."""
    torch.manual_seed(1)
    norm = HopeRMSNorm(12)
    x = torch.randn(5, 12, requires_grad=True)
    out = norm(x)
    assert type(out.grad_fn).__name__ == "RMSNormFunctionBackward"
    with torch.no_grad():
        assert torch.equal(norm(x), out)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, norm.weight), g)
    want = torch.autograd.grad(F.rms_norm(x, (12,), norm.weight, eps=norm.variance_epsilon), (x, norm.weight), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_l2norm_matches_f_normalize_including_tiny_rows():
    torch.manual_seed(2)
    x = torch.randn(4, 6, 9, dtype=torch.float64)
    x[0, 0] = 1e-9  # below eps: F.normalize divides by eps and passes no gradient through the norm
    x = x.requires_grad_()
    out = l2norm(x)
    ref = F.normalize(x, dim=-1, eps=1e-6)
    assert type(out.grad_fn).__name__ == "L2NormFunctionBackward"
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                               rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(l2norm, (x.detach()[1:].clone().requires_grad_(),))


def test_norm_gate_matches_autograd_through_its_parts():
    """The mixer's output gate as one node (`NormGateFunction`) against autograd through F.rms_norm, the merge of
    the heads and silu: the same values and gradients at o, the norm weight and the gate."""
    torch.manual_seed(4)
    B, H, L, dh = 2, 3, 5, 4
    o = torch.randn(B, H, L, dh, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(dh, dtype=torch.float64, requires_grad=True)
    gate = torch.randn(B, L, H * dh, dtype=torch.float64, requires_grad=True)
    out = NormGateFunction.apply(o, weight, gate, 1e-6)
    ref = F.rms_norm(o, (dh,), weight, eps=1e-6).transpose(1, 2).reshape(B, L, H * dh) * F.silu(gate)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (o, weight, gate), g), torch.autograd.grad(ref, (o, weight, gate), g)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_mixer_output_gate_node_in_float32_training():
    """A small model in float32 on the CPU: training goes through the node, and its loss equals that of the no-grad
    forward (which takes the plain path)."""
    from modeling_hope.modeling_hope import HopeForCausalLM
    from modeling_hope.presets import hope_config

    torch.manual_seed(5)
    model = HopeForCausalLM(hope_config("hope-5m", num_hidden_layers=1, vocab_size=64, hidden_size=32,
                                        num_attention_heads=2))
    ids = torch.randint(0, 64, (1, 40))
    loss = model(input_ids=ids, labels=ids).loss
    nodes, stack = set(), [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is not None and fn not in nodes:
            nodes.add(fn)
            stack.extend(f for f, _ in fn.next_functions)
    assert "NormGateFunctionBackward" in {type(f).__name__ for f in nodes}
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, labels=ids).loss, loss.detach(), rtol=1e-6, atol=1e-6)

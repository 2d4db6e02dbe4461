"""The norms' hand-written backward passes (`RMSNormFunction`, `L2NormFunction`) against autograd through
PyTorch's own `F.rms_norm` and `F.normalize`: the same values, the same gradients."""

import pytest
import torch
import torch.nn.functional as F

from modeling_hope.modeling_hope import HopeRMSNorm, RMSNormFunction, l2norm


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

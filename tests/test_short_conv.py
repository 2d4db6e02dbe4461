"""The mixer's short causal convolution (`ShortConv`, with its hand-written backward) against PyTorch's depthwise
`conv1d` differentiated by autograd, continuing from a cached tail."""

import pytest
import torch
import torch.nn.functional as F

from modeling_hope.modeling_hope import ShortConv


def reference(x, state, weight):
    xs = torch.cat([state, x], 1).transpose(1, 2)  # (B, C, size - 1 + L)
    return F.conv1d(xs, weight[:, None, :], groups=weight.shape[0]).transpose(1, 2)


@pytest.mark.parametrize("size", [2, 4])
def test_short_conv_matches_depthwise_conv1d_with_gradients(size):
    torch.manual_seed(0)
    B, L, C = 3, 9, 5
    conv = ShortConv(C, size).double()
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(B, L, C, dtype=torch.float64, requires_grad=True)
    state = torch.randn(B, size - 1, C, dtype=torch.float64, requires_grad=True)
    out, tail = conv(x, torch.full((B,), L), state)
    ref = reference(x, state, conv.weight)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tail, torch.cat([state, x], 1)[:, -(size - 1):])
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, state, conv.weight), g)
    want = torch.autograd.grad(ref, (x, state, conv.weight), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, s, w: ShortConv.forward(_with(conv, w), x, torch.full((B,), L), s)[0],
                                    (x, state, conv.weight.detach().clone().requires_grad_()))


def _with(conv, weight):
    """A ShortConv whose weight is `weight` (for gradcheck, which passes the weight as an input)."""
    clone = ShortConv(*conv.weight.shape)
    del clone.weight
    clone.weight = weight
    return clone


def test_short_conv_bfloat16_inputs_with_float32_weight():
    """Mixed precision as under autocast: bf16 activations, an fp32 weight; the output is promoted to fp32 and the
    gradients come back in each input's dtype."""
    torch.manual_seed(1)
    B, L, C, size = 2, 6, 4, 4
    conv = ShortConv(C, size)
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(B, L, C).bfloat16().requires_grad_()
    state = torch.randn(B, size - 1, C).bfloat16().requires_grad_()
    out, _ = conv(x, torch.full((B,), L), state)
    assert out.dtype == torch.float32
    x32, s32 = x.detach().float().requires_grad_(), state.detach().float().requires_grad_()
    ref = reference(x32, s32, conv.weight)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(out)
    gx, gs, gw = torch.autograd.grad(out, (x, state, conv.weight), g)
    rx, rs, rw = torch.autograd.grad(ref, (x32, s32, conv.weight), g)
    assert gx.dtype == gs.dtype == torch.bfloat16 and gw.dtype == torch.float32
    torch.testing.assert_close(gx.float(), rx, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gs.float(), rs, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gw, rw, rtol=1e-6, atol=1e-6)


def test_short_conv_recomputing_its_projection_equals_keeping_it():
    """Given the projection that made its inputs (x = z W^T), the conv keeps z and W instead of x and recomputes x
    in backward: the same output and the same gradients at z, W, the cached tail and the conv weight."""
    torch.manual_seed(3)
    B, L, D, C, size = 2, 8, 5, 7, 4
    conv = ShortConv(C, size).double()
    with torch.no_grad():
        conv.weight.normal_()
    z = torch.randn(B, L, D, dtype=torch.float64, requires_grad=True)
    W = torch.randn(C, D, dtype=torch.float64, requires_grad=True)
    state = torch.randn(B, size - 1, C, dtype=torch.float64, requires_grad=True)
    lengths = torch.full((B,), L)
    results = []
    for source in (None, (z, W)):
        out, tail = conv(F.linear(z, W), lengths, state, source)
        kept = out.grad_fn.saved_tensors
        assert len(kept) == (2 if source is None else 4)  # (weight, xs) or (weight, z, W, tail)
        g = torch.ones_like(out).cumsum(1)
        loss = (out * g).sum() + tail.pow(2).sum()
        results.append((out, torch.autograd.grad(loss, (z, W, state, conv.weight))))
    (out, grads), (want, want_grads) = results
    assert torch.equal(out, want)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and against depthwise conv1d, autograd through the projection and the tail
    x = F.linear(z, W)
    ref = reference(x, state, conv.weight)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    loss = (ref * torch.ones_like(ref).cumsum(1)).sum() + torch.cat([state, x], 1)[:, -(size - 1):].pow(2).sum()
    for a, b in zip(grads, torch.autograd.grad(loss, (z, W, state, conv.weight))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

"""`ChunkUpdateRead` (one chunk with a hand-written backward) against autograd through the same chunk's functions."""

import pytest
import torch
import torch.nn.functional as F

from modeling_hope.fast_weight_memory import chunk_coefficients
from modeling_hope.memory_chunk import (ACTIVATIONS, FastWeights, MemoryRead, chunk_update_read, dual_read,
                                        inner_update_factors, memory_read, updated_weights)

B, P, H, C, d, R = 2, 3, 2, 5, 4, 6


def _reference(state, k, v, q, coefficients, act, dgd, self_generated, read_groups):
    """Autograd through the chunk's functions on the (B, P, H) layout."""
    unflat = lambda t: t.unflatten(0, (-1, *read_groups))  # noqa: E731
    factors = inner_update_factors(k, v, state.W1_eval, state.W2_eval, act, dgd, self_generated)
    new = updated_weights(state, factors, coefficients)
    if q is None:
        return new, None
    last = lambda t: unflat(t)[:, -1].flatten(0, 1)  # noqa: E731
    out = dual_read(FastWeights(*(last(t) for t in state)), q, [last(f) for f in factors],
                    [last(t) for t in coefficients[:3]], act)
    return new, out


def _inputs(gen, momentum, masked):
    N = B * P * H
    W1, W2 = torch.randn(N, d, R, generator=gen) * 0.5, torch.randn(N, R, d, generator=gen) * 0.5
    W1e, W2e = W1 + 0.2 * torch.randn(N, d, R, generator=gen), W2 + 0.2 * torch.randn(N, R, d, generator=gen)
    S1, S2 = torch.randn(N, d, R, generator=gen) * 0.2, torch.randn(N, R, d, generator=gen) * 0.2
    k = F.normalize(torch.randn(B, 1, H, C, d, generator=gen), dim=-1)
    v, q = torch.randn(B, 1, H, C, d, generator=gen), torch.randn(B, H, C, d, generator=gen)
    eta = torch.rand(B, H, C, generator=gen) * 0.5
    log_alpha = torch.log(0.8 + 0.2 * torch.rand(B, H, C, generator=gen))
    active = torch.ones(B, 1, C)
    if masked:  # the last two slots of row 1 are no-ops (padding)
        active[1, :, -2:] = 0
    eta, log_alpha = eta * active, log_alpha * active
    log_beta = torch.log(0.9 * torch.rand(H, generator=gen)) if momentum else None
    leaves = [t.double().requires_grad_() for t in (W1e, W2e, W1, W2, S1, S2, k, v, q, eta, log_alpha)]
    if momentum:
        leaves.append(log_beta.double().requires_grad_())
    return leaves, active.double()


def _flat(leaves, active, momentum):
    """The state (B P H, ...) and the per-(batch, head) tensors (B H, ...) that the fused scan passes: keys, values,
    queries and coefficients, shared by the P memories."""
    W1e, W2e, W1, W2, S1, S2, k, v, q, eta, log_alpha, *rest = leaves
    coefficients = chunk_coefficients(eta, log_alpha, rest[0] if momentum else None, active)
    shared = [None if t is None else t.flatten(0, 1) for t in (k[:, 0], v[:, 0], q, *coefficients)]
    return FastWeights(W1e, W2e, W1, W2, S1, S2), *shared[:3], shared[3:]


def _expand(t):
    return t if t is None else t.unflatten(0, (B, 1, H)).expand(B, P, H, *t.shape[1:]).flatten(0, 2)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dgd,self_generated,momentum,read,masked", [
    (1.0, True, True, True, False), (0.0, False, True, True, True), (1.0, False, False, True, False),
    (0.0, True, False, False, True), (1.0, True, True, False, False)])
def test_chunk_function_matches_autograd(act, dgd, self_generated, momentum, read, masked):
    gen = torch.Generator().manual_seed(hash((act, dgd, self_generated, momentum, read, masked)) % 1000)
    leaves, active = _inputs(gen, momentum, masked)
    results = []
    for fast in (True, False):
        state, k, v, q, coefficients = _flat(leaves, active, momentum)
        q = q if read else None
        if fast:
            new, out = chunk_update_read(state, k, v, q, coefficients, act, dgd, self_generated, (P, H))
        else:  # keys, values and coefficients repeated for the P memories
            new, out = _reference(state, _expand(k), _expand(v), q, [_expand(t) for t in coefficients], act, dgd,
                                  self_generated, (P, H))
        weights = torch.Generator().manual_seed(7)
        outputs = [*new] + ([out] if read else [])
        loss = sum((t * torch.randn(t.shape, generator=weights, dtype=t.dtype)).sum() for t in outputs)
        results.append((outputs, torch.autograd.grad(loss, leaves, allow_unused=True)))
    (out_fast, g_fast), (out_ref, g_ref) = results
    for a, b in zip(out_fast, out_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for name, a, b in zip("W1e W2e W1 W2 S1 S2 k v q eta log_alpha log_beta".split(), g_fast, g_ref):
        if b is None:
            assert a is None or not a.abs().any(), name
            continue
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"gradient of {name}: {m}")


def test_chunk_function_keeps_only_its_inputs():
    """The saved tensors are the inputs (no intermediates): what backward keeps per chunk is the state it starts
    from, keys, values, queries and coefficients."""
    gen = torch.Generator().manual_seed(0)
    leaves, active = _inputs(gen, True, False)
    state, k, v, q, coefficients = _flat(leaves, active, True)
    new, out = chunk_update_read(state, k, v, q, coefficients, "silu", 1.0, True, (P, H))
    node = out.grad_fn
    assert type(node).__name__ == "ChunkUpdateReadBackward"
    inputs = {t.data_ptr() for t in (*state, k, v, q, *coefficients)}
    assert {t.data_ptr() for t in node.saved_tensors} <= inputs


def test_chunk_function_keeps_float32_state_under_autocast():
    """Under bfloat16 autocast the products run in bfloat16, but the state after the chunk and the read stay float32,
    as through the plain functions (a state rounded to bfloat16 every chunk would drift; baddbmm, for one, casts its
    float32 input under autocast), and the values agree to bfloat16's precision."""
    gen = torch.Generator().manual_seed(0)
    leaves, active = _inputs(gen, True, False)
    leaves = [t.detach().float() for t in leaves]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state, k, v, q, coefficients = _flat(leaves, active.float(), True)
        new, out = chunk_update_read(state, k, v, q, coefficients, "silu", 1.0, True, (P, H))
        ref_new, ref_out = _reference(state, _expand(k), _expand(v), q, [_expand(t) for t in coefficients], "silu",
                                      1.0, True, (P, H))
    assert [t.dtype for t in (*new, out)] == [t.dtype for t in (*ref_new, ref_out)] == [torch.float32] * 5
    for a, b in zip((*new, out), (*ref_new, ref_out)):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_memory_read_function_matches_autograd(act):
    """MemoryRead (recomputing act's input in backward) against autograd through memory_read, on weights that are a
    non-contiguous slice of a larger state, as the adaptive projections read them."""
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(2, 3, H, C, d, generator=gen, dtype=torch.double, requires_grad=True)
    W1 = (torch.randn(2, 4, H, d, R, generator=gen, dtype=torch.double) * 0.5).requires_grad_()
    W2 = (torch.randn(2, 4, H, R, d, generator=gen, dtype=torch.double) * 0.5).requires_grad_()
    weights = torch.randn(u.shape, generator=gen, dtype=torch.double)
    results = []
    for read in (MemoryRead.apply, memory_read):
        out = read(u, W1[:, :3], W2[:, :3], act)
        results.append((out, torch.autograd.grad((out * weights).sum(), (u, W1, W2))))
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o1, o2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not g1[1][:, 3].any()  # the slice's last memory is not read

"""`ChunkUpdateRead` (one chunk with a hand-written backward) against autograd through the same chunk's functions."""

import pytest
import torch
import torch.nn.functional as F

from modeling_hope.fast_weight_memory import chunk_coefficients
from modeling_hope.memory_chunk import (ACTIVATIONS, FastWeights, chunk_update_read, dual_read,
                                        inner_update_factors, updated_weights)

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


def _expanded(leaves, active, momentum):
    """The flat (B P H, ...) tensors the scans pass: keys, values and coefficients shared by the P memories."""
    W1e, W2e, W1, W2, S1, S2, k, v, q, eta, log_alpha, *rest = leaves
    coefficients = chunk_coefficients(eta, log_alpha, rest[0] if momentum else None, active)
    flat = lambda t: t.unsqueeze(1).expand(B, P, *t.shape[1:]).flatten(0, 2)  # noqa: E731
    coefficients = tuple(None if t is None else flat(t) for t in coefficients)
    k, v = (t.expand(B, P, H, C, d).flatten(0, 2) for t in (k, v))
    return FastWeights(W1e, W2e, W1, W2, S1, S2), k, v, q.flatten(0, 1), coefficients


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dgd,self_generated,momentum,read,masked", [
    (1.0, True, True, True, False), (0.0, False, True, True, True), (1.0, False, False, True, False),
    (0.0, True, False, False, True), (1.0, True, True, False, False)])
def test_chunk_function_matches_autograd(act, dgd, self_generated, momentum, read, masked):
    gen = torch.Generator().manual_seed(hash((act, dgd, self_generated, momentum, read, masked)) % 1000)
    leaves, active = _inputs(gen, momentum, masked)
    results = []
    for fast in (True, False):
        state, k, v, q, coefficients = _expanded(leaves, active, momentum)
        q = q if read else None
        if fast:
            new, out = chunk_update_read(state, k, v, q, coefficients, act, dgd, self_generated, (P, H))
        else:
            new, out = _reference(state, k, v, q, coefficients, act, dgd, self_generated, (P, H))
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
    state, k, v, q, coefficients = _expanded(leaves, active, True)
    new, out = chunk_update_read(state, k, v, q, coefficients, "silu", 1.0, True, (P, H))
    node = out.grad_fn
    assert type(node).__name__ == "ChunkUpdateReadBackward"
    inputs = {t.data_ptr() for t in (*state, k, v, q, *coefficients)}
    assert {t.data_ptr() for t in node.saved_tensors} <= inputs

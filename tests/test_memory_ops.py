"""The chunked operators against their naive token-by-token references: values, final states and gradients."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from modeling_hope.continuum_memory import swiglu_per_row, teach_gradients
from modeling_hope.fast_weight_memory import (FastWeights, _causal_exp, _coefficients, chunk_coefficients,
                                              chunked_fused_scan, chunked_memory_scan,
                                              chunked_projection_scan, coefficients_for, naive_memory_scan,
                                              naive_projection_scan, piece_coefficients)

B, H, d, R, T = 3, 2, 4, 6, 11
COUNTS = torch.tensor([0, 5, 2])
LENGTHS = torch.tensor([11, 7, 0])


def random_state(G, chunk, gen):
    W1, W2 = torch.randn(B, G, d, R, generator=gen) * 0.4, torch.randn(B, G, R, d, generator=gen) * 0.4
    S1, S2 = torch.randn(B, G, d, R, generator=gen) * 0.1, torch.randn(B, G, R, d, generator=gen) * 0.1
    # rows in the middle of a chunk have evaluation weights of their own; rows at a boundary evaluate at W
    at_boundary = (COUNTS % chunk == 0)[:, None, None, None]
    W1e = torch.where(at_boundary, W1, W1 + 0.1 * torch.randn(W1.shape, generator=gen))
    W2e = torch.where(at_boundary, W2, W2 + 0.1 * torch.randn(W2.shape, generator=gen))
    return FastWeights(W1e, W2e, W1, W2, S1, S2)


def leaves(*tensors):
    return [t.detach().clone().double().requires_grad_(True) for t in tensors]


def check_close(a, b, tol=1e-10):
    assert torch.allclose(a, b, atol=tol, rtol=1e-9), float((a - b).abs().max())


def check_gradients(g1, g2):
    """Gradients equal; None (an input the computation did not use, e.g. the chunk-start weights of rows that
    all start a chunk) counts as zero."""
    for a, b in zip(g1, g2):
        if a is None or b is None:
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0
        else:
            check_close(a, b, 1e-9)


@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
@pytest.mark.parametrize("momentum", [True, False])
@pytest.mark.parametrize("act,dgd,self_generated,recompute", [("silu", 1.0, True, 0), ("gelu", 0.0, False, 0),
                                                              ("silu", 1.0, True, 2)])
def test_memory_scan_matches_naive(chunk, momentum, act, dgd, self_generated, recompute):
    gen = torch.Generator().manual_seed(chunk)
    mask = torch.arange(T)[None] < LENGTHS[:, None]
    state = leaves(*random_state(H, chunk, gen))
    q, k, v = leaves(torch.randn(B, H, T, d, generator=gen), F.normalize(torch.randn(B, H, T, d, generator=gen), dim=-1),
                     torch.randn(B, H, T, d, generator=gen))
    eta, log_alpha = leaves(torch.rand(B, H, T, generator=gen) * 0.5, torch.log(0.8 + 0.2 * torch.rand(B, H, T, generator=gen)))
    log_beta = leaves(torch.log(0.9 * torch.rand(H, generator=gen)))[0] if momentum else None
    inputs = [*state, q, k, v, eta, log_alpha] + ([log_beta] if momentum else [])
    results = []
    chunked = partial(chunked_memory_scan, recompute=recompute)
    for scan in (chunked, naive_memory_scan):
        out, new = scan(FastWeights(*state), q, k, v, eta, log_alpha, log_beta, mask, COUNTS, chunk, act, dgd, self_generated)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        loss = (out * weights * mask[:, None, :, None]).sum() + sum((t * t).sum() * 0.1 for t in new)
        results.append((out, new, torch.autograd.grad(loss, inputs, allow_unused=True)))
    (o1, s1, g1), (o2, s2, g2) = results
    check_close(o1[mask[:, None].expand(B, H, T)], o2[mask[:, None].expand(B, H, T)])
    for a, b in zip(s1, s2):
        check_close(a, b)
    check_gradients(g1, g2)


def produce(outs):
    keys = F.normalize(outs[:, 0], dim=-1)
    return keys, outs[:, 1], torch.sigmoid(outs[:, 2].sum(-1)) * 0.2, F.logsigmoid(outs[:, 3].sum(-1) + 3)


@pytest.mark.parametrize("adaptive", [(True, True, True, True), (False, True, False, True), (True, False, False, False)])
@pytest.mark.parametrize("chunk,recompute", [(1, 0), (3, 0), (5, 0), (1, 3), (3, 2)])
def test_projection_scan_matches_naive(adaptive, chunk, recompute):
    gen = torch.Generator().manual_seed(10 + chunk)
    mask = torch.arange(T)[None] < LENGTHS[:, None]
    G = sum(adaptive) * H
    state = leaves(*random_state(G, chunk, gen))
    inputs, = leaves(0.5 * torch.randn(B, 4, H, T, d, generator=gen))
    log_beta, = leaves(torch.log(0.9 * torch.rand(H, generator=gen)))  # per head, shared by its memories
    results = []
    for scan in (partial(chunked_projection_scan, recompute=recompute), naive_projection_scan):
        *produced, new = scan(FastWeights(*state), inputs, adaptive, produce, log_beta, mask, COUNTS, chunk, "silu", 1.0, True)
        loss = sum((p * mask.view(B, 1, T, *([1] * (p.dim() - 3))) * (i + 1)).sum() for i, p in enumerate(produced))
        loss = loss + sum((t * t).sum() * 0.1 for t in new)
        results.append((produced, new, torch.autograd.grad(loss, [*state, inputs, log_beta], allow_unused=True)))
    (p1, s1, g1), (p2, s2, g2) = results
    for a, b in zip(p1, p2):
        m = mask.view(B, 1, T, *([1] * (a.dim() - 3))).expand_as(a)
        check_close(a[m], b[m])
    for a, b in zip(s1, s2):
        check_close(a, b)
    check_gradients(g1, g2)


@pytest.mark.parametrize("adaptive", [(True, True, True, True), (False, True, True, False), (False,) * 4])
@pytest.mark.parametrize("momentum,recompute", [(True, 0), (False, 0), (True, 2)])
def test_fused_scan_matches_naive_projection_then_memory(adaptive, momentum, recompute):
    """The fused pass (all memories of a head in one batched computation per chunk) equals the naive projection
    scan followed by the naive output-memory scan; so does it with recomputation segments (`recompute`)."""
    chunk, P = 3, sum(adaptive) + 1
    gen = torch.Generator().manual_seed(20)
    mask = torch.arange(T)[None] < LENGTHS[:, None]
    state = [t.unflatten(1, (P, H)) for t in leaves(*random_state(P * H, chunk, gen))]
    inputs, q = leaves(0.5 * torch.randn(B, 4, H, T, d, generator=gen), F.normalize(torch.randn(B, H, T, d, generator=gen), dim=-1))
    log_beta = leaves(torch.log(0.9 * torch.rand(H, generator=gen)))[0] if momentum else None
    params = [*state, inputs, q] + ([log_beta] if momentum else [])
    out, new = chunked_fused_scan(FastWeights(*state), q, inputs, adaptive, produce, log_beta, mask, COUNTS, chunk,
                                  "silu", 1.0, True, lr_scale=0.5, recompute=recompute)
    n = P - 1
    if n:
        proj = FastWeights(*(t[:, :n].flatten(1, 2) for t in state))
        keys, values, eta, log_alpha, proj_new = naive_projection_scan(
            proj, inputs, adaptive, produce, log_beta, mask, COUNTS, chunk, "silu", 1.0, True, lr_scale=0.5)
    else:
        keys, values, eta, log_alpha = produce(inputs)
    ref, mem_new = naive_memory_scan(FastWeights(*(t[:, -1] for t in state)), q, keys, values, eta, log_alpha, log_beta,
                                     mask, COUNTS, chunk, "silu", 1.0, True, lr_scale=0.5)
    m = mask[:, None, :, None].expand_as(out)
    check_close(out[m], ref[m])
    for i, t in enumerate(new):
        check_close(t[:, -1], mem_new[i])
        if n:
            check_close(t[:, :n].flatten(1, 2), proj_new[i])
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    g1 = torch.autograd.grad((out * weights * m).sum() + sum((t * t).sum() for t in new), params, allow_unused=True)
    ref_new = [torch.cat([p.unflatten(1, (n, H)), mm[:, None]], 1) if n else mm[:, None]
               for p, mm in zip(proj_new if n else [None] * 6, mem_new)]
    g2 = torch.autograd.grad((ref * weights * m).sum() + sum((t * t).sum() for t in ref_new), params,
                             allow_unused=True)
    check_gradients(g1, g2)


def test_teach_gradients_match_autograd():
    """The closed-form CMS level gradients equal autograd's gradient of sum_t <delta_t, level(z_t)>."""
    gen = torch.Generator().manual_seed(3)
    Bc, Tc, dc, I = 2, 5, 6, 7
    weights = [torch.randn(Bc, I, dc, generator=gen, dtype=torch.float64, requires_grad=True),
               torch.randn(Bc, I, dc, generator=gen, dtype=torch.float64, requires_grad=True),
               torch.randn(Bc, dc, I, generator=gen, dtype=torch.float64, requires_grad=True)]
    z = torch.randn(Bc, Tc, dc, generator=gen, dtype=torch.float64)
    delta = torch.randn(Bc, Tc, dc, generator=gen, dtype=torch.float64)
    out, g, v = swiglu_per_row(z, *weights)
    expected = torch.autograd.grad((out * delta).sum(), weights)
    got = teach_gradients(z, g.detach(), v.detach(), weights[2].detach(), delta)
    for a, b in zip(got, expected):
        check_close(a, b, 1e-12)


@pytest.mark.parametrize("momentum", [True, False])
def test_piece_coefficients_equal_each_piece_alone(momentum):
    """The output memory's scan computes its coefficients before the loop, runs of equal pieces in one batched call:
    the same values and gradients as one `coefficients_for` per piece (partial first piece, one-slot pieces, no-op
    slots)."""
    gen = torch.Generator().manual_seed(1)
    sizes = [3, 4, 4, 4, 1, 1, 2]
    S = sum(sizes)
    active = torch.ones(2, 1, S, dtype=torch.float64)
    active[1, :, -4:] = 0
    active[0, :, 9:11] = 0  # inside the batched run
    eta = (torch.rand(2, 3, S, generator=gen, dtype=torch.float64) * active).requires_grad_()
    log_alpha = (torch.log(0.8 + 0.2 * torch.rand(2, 3, S, generator=gen, dtype=torch.float64)) * active)
    log_alpha.requires_grad_()
    log_beta = torch.log(0.9 * torch.rand(3, generator=gen, dtype=torch.float64)).requires_grad_() if momentum \
        else None
    leaves = [t for t in (eta, log_alpha, log_beta) if t is not None]
    batched = piece_coefficients(eta, log_alpha, log_beta, active, sizes)
    pieces = [t.split(sizes, -1) for t in (eta, log_alpha, active)]
    single = [coefficients_for(e, la, log_beta, a) for e, la, a in zip(*pieces)]
    assert len(batched) == len(single) == len(sizes)
    weights = torch.Generator().manual_seed(2)
    grads = []
    for result in (batched, single):
        terms = [t for piece in result for t in piece if t is not None]
        loss = sum((t * torch.randn(t.shape, generator=weights, dtype=t.dtype)).sum() for t in terms)
        grads.append(torch.autograd.grad(loss, leaves))
        weights.manual_seed(2)
    for got, want in zip(batched, single):
        for a, b in zip(got, want):
            assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, atol=1e-14, rtol=0))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("decay", ["random", "none", "strong"])
def test_causal_exp_equals_masked_exp(dtype, decay):
    """The decay matrices' exp (clamp, exp, lower triangle) against exp with -inf above the diagonal: the same
    values and gradients, bit for bit, for differences of cumulative log-decays (no decay: all zeros; strong: values
    that underflow), with no-op slots."""
    gen = torch.Generator().manual_seed(3)
    C = 16
    log_alpha = {"random": torch.log(0.5 + 0.5 * torch.rand(2, 3, C, generator=gen)),
                 "none": torch.zeros(2, 3, C), "strong": -60 * torch.rand(2, 3, C, generator=gen)}[decay].to(dtype)
    log_alpha[1, :, -3:] = 0  # no-op slots
    weights = torch.randn(2, 3, C, C, generator=gen, dtype=dtype)
    causal = torch.ones(C, C, dtype=torch.bool).tril()
    results = []
    for fast in (True, False):
        leaf = log_alpha.clone().requires_grad_()
        log_A = leaf.cumsum(-1)
        x = log_A[..., :, None] - log_A[..., None, :]
        out = _causal_exp(x) if fast else torch.exp(x.masked_fill(~causal, float("-inf")))
        results.append((out, torch.autograd.grad((out * weights).sum(), leaf)[0]))
    (out, grad), (want, want_grad) = results
    assert torch.equal(out, want) and torch.equal(grad, want_grad)


@pytest.mark.parametrize("momentum", [True, False])
@pytest.mark.parametrize("chunks", [None, 3])
def test_chunk_coefficients_node_against_autograd(momentum, chunks):
    """`ChunkCoefficients` (one node, the C x C matrices recomputed in backward) against autograd through the same
    products: values bit for bit (also outside autograd, in place), gradients at eta, log alpha and log beta, with
    no-op slots and, batched, n chunks."""
    gen = torch.Generator().manual_seed(5)
    Bc, G, C = 2, 3, 8
    shape = (Bc, G, C) if chunks is None else (Bc, G, chunks, C)
    active = (torch.rand(Bc, 1, *shape[2:], generator=gen) > 0.25).double()
    eta = torch.rand(shape, generator=gen, dtype=torch.float64) * active
    log_alpha = F.logsigmoid(2 + torch.randn(shape, generator=gen, dtype=torch.float64)) * active
    log_beta = F.logsigmoid(torch.randn(G, generator=gen, dtype=torch.float64)) if momentum else None
    inputs = [t for t in (eta, log_alpha, log_beta) if t is not None]
    weights = None
    results = []
    for node in (True, False):
        leaves_ = [t.clone().requires_grad_() for t in inputs]
        args = (*leaves_[:2], leaves_[2] if momentum else None, active)
        out = chunk_coefficients(*args) if node else _coefficients(*args)[0]
        out = [t for t in out if t is not None]
        assert len(out) == (5 if momentum else 3)
        if weights is None:
            weights = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in out]
        loss = sum((t * w).sum() for t, w in zip(out, weights))
        results.append((out, torch.autograd.grad(loss, leaves_)))
    (out, grads), (want, want_grads) = results
    assert all(torch.equal(a, b) for a, b in zip(out, want))
    with torch.no_grad():  # outside autograd the matrices are transformed in place: the same values
        plain = [t for t in chunk_coefficients(eta, log_alpha, log_beta, active) if t is not None]
    assert all(torch.equal(a, b) for a, b in zip(plain, want))
    for a, b in zip(grads, want_grads):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10), float((a - b).abs().max())
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0

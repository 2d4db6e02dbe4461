"""One chunk of a group of fast-weight memories (HOPE spec section 2): the rank-one inner updates taken at the
chunk-start weights, the state after the chunk, and the dual-form read of the weights inside it; then the same
chunk as one `torch.autograd.Function` with a hand-written backward.

A memory is `M(u) = u + W1 act(W2 u)`; W1 (N, d, R), W2 (N, R, d) for N independent memories (batch rows x
memories x heads, flattened), tokens (N, C, d). The weights after token j of the chunk are, in closed form
(`fast_weight_memory.chunk_coefficients`),

    W_j = A_j W_0 + c_j S_0 - sum_{i<=j} G_ji u_i,        S_C = beta_C S_0 - sum_i s_i u_i,

with u_i = b_i a_i^T rank one. Autograd through these products records a node per operation and keeps every
intermediate of every chunk; `ChunkUpdateRead` keeps only its inputs (the chunk-start state, keys, values, queries
and coefficients) and recomputes the cheap intermediates in its backward.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


class FastWeights(NamedTuple):
    """State of a group of memories. `*_eval` are the weights at the start of the current chunk (where the inner
    gradients and the self-generated targets are taken); `W1, W2, S1, S2` already include the chunk's updates."""

    W1_eval: torch.Tensor
    W2_eval: torch.Tensor
    W1: torch.Tensor
    W2: torch.Tensor
    S1: torch.Tensor
    S2: torch.Tensor


def _silu_grad(z):
    s = torch.sigmoid(z)
    return s * (1 + z * (1 - s))


def _silu_value_and_grad(z):
    """(silu(z), silu'(z)) from one sigmoid: silu' = s + silu (1 - s)."""
    s = torch.sigmoid(z)
    f = z * s
    return f, s + f * (1 - s)


def _silu_grad2(z):
    s = torch.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


def _normal_pdf(z):
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _gelu_grad(z):
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * _normal_pdf(z)


def _gelu_grad2(z):
    return _normal_pdf(z) * (2 - z * z)


def _gelu_value_and_grad(z):
    return F.gelu(z), _gelu_grad(z)


# activation, its derivative (in the inner gradient), its second derivative (in that gradient's backward), and
# (value, derivative) together
ACTIVATIONS = {"silu": (F.silu, _silu_grad, _silu_grad2, _silu_value_and_grad),
               "gelu": (F.gelu, _gelu_grad, _gelu_grad2, _gelu_value_and_grad)}


def memory_read(u, W1, W2, act: str):
    """M(u) = u + W1 act(W2 u), batched over leading dims; u (..., T, d)."""
    if u.dim() > 3 and u.shape[:-2] == W2.shape[:-2] == W1.shape[:-2]:  # bmm on flattened views: matmul's
        # broadcasting path costs several more ops per call (it matters when decoding, one token per call)
        flat = u.reshape(-1, *u.shape[-2:])
        h = ACTIVATIONS[act][0](torch.bmm(flat, W2.reshape(-1, *W2.shape[-2:]).mT))
        return u + torch.bmm(h, W1.reshape(-1, *W1.shape[-2:]).mT).view(u.shape)
    return u + ACTIVATIONS[act][0](u @ W2.mT) @ W1.mT


class MemoryRead(torch.autograd.Function):
    """`memory_read` whose backward keeps only u, W1, W2 (not act's input and output) and recomputes z = W2 u:
    for the adaptive projections, whose reads are saved for every chunk. Leading dims of u and W must match."""

    @staticmethod
    def forward(ctx, u, W1, W2, act):
        ctx.save_for_backward(u, W1, W2)
        ctx.act = act
        return memory_read(u, W1, W2, act)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out):
        saved = ctx.saved_tensors  # unpacked once (checkpointing allows no second unpack)
        u, W1, W2 = (t.reshape(-1, *t.shape[-2:]) for t in saved)
        g = g_out.reshape(u.shape)
        h, dh = ACTIVATIONS[ctx.act][3](torch.bmm(u, W2.mT))
        g_W1 = torch.bmm(g.mT, h)
        g_z = torch.bmm(g, W1) * dh
        g_u = g + torch.bmm(g_z, W2)
        g_W2 = torch.bmm(g_z.mT, u)
        return g_u.view(g_out.shape), g_W1.view(saved[1].shape), g_W2.view(saved[2].shape), None


class FactorTerms(NamedTuple):
    """`inner_update_factors` with its intermediates (the backward needs them). X = [k; v] (with self-generated
    targets) or k; Z = X W2^T, Hh = act(Z), Y = Hh W1^T; the first C rows are the keys'."""

    X: torch.Tensor
    Z: torch.Tensor
    Hh: torch.Tensor
    Y: torch.Tensor
    dZ: torch.Tensor  # act'(Z)
    err: torch.Tensor
    col_norms: torch.Tensor  # n_j = ||W1[:, j]||^2
    e1: torch.Tensor  # err W1
    s1: torch.Tensor
    s2: torch.Tensor
    b1: torch.Tensor
    b2: torch.Tensor


def factor_terms(keys, values, W1, W2, act: str, dgd: float, self_generated: bool) -> FactorTerms:
    C = keys.shape[-2]
    X = torch.cat(torch.broadcast_tensors(keys, values), -2) if self_generated else keys
    Z = X @ W2.mT
    Hh, dZ = ACTIVATIONS[act][3](Z)
    Y = Hh @ W1.mT
    if self_generated:  # split, not slices: a slice's backward writes into zeros of the full size
        (z, _), (h, _), (y, yv), (dh, _) = (t.split(C, -2) for t in (Z, Hh, Y, dZ))
        err = keys + y - (values + yv)
    else:
        z, h, y, dh, err = Z, Hh, Y, dZ, keys + Y - values
    col_norms = (W1 * W1).sum(-2)
    e1 = err @ W1
    s1 = step_scale_w1(h)
    s2 = 1.0 / (1.0 + (dh * dh * col_norms[..., None, :]).sum(-1, keepdim=True))
    return FactorTerms(X, Z, Hh, Y, dZ, err, col_norms, e1, s1, s2, (err + dgd * y) * s1, (e1 * dh + dgd * z) * s2)


def inner_update_factors(keys, values, W1, W2, act: str, dgd: float, self_generated: bool):
    """The inner updates are rank one: u1_t = b1_t a1_t^T (for W1), u2_t = b2_t a2_t^T (for W2). With z = W2 k,
    h = act(z), e = M(k) - vhat: grad W1 = e h^T and grad W2 = ((W1^T e) * act'(z)) k^T; DGD adds (W1 h) h^T and
    (W2 k) k^T. Returns (a1, b1, a2, b2). The target vhat is v, or with `self_generated` M(v), computed in the same
    products as M(k). Each u_t is scaled to unit curvature (`step_scale_w1`, `step_scale_w2`)."""
    t = factor_terms(keys, values, W1, W2, act, dgd, self_generated)
    return t.Hh[..., :keys.shape[-2], :], t.b1, keys, t.b2


def step_scale_w1(h):
    """Normalised steps (as in normalised LMS): W1's update has curvature ~ ||h||^2 with h = act(W2 k), so its step
    is scaled by 1 / (1 + ||h||^2); this keeps eta in (0, 1] stable whatever the size of h."""
    return 1.0 / (1.0 + (h * h).sum(-1, keepdim=True))


def step_scale_w2(dh, W1):
    """W2's gradient part has curvature <= ||W1 diag(act'(z))||^2 <= sum_j act'(z_j)^2 ||W1[:, j]||^2 (k is unit)."""
    return 1.0 / (1.0 + (dh * dh * (W1 * W1).sum(-2)[..., None, :]).sum(-1, keepdim=True))


def row_flags(flag, like):
    """(B,) flag -> broadcastable against a (B, ...) state tensor."""
    return flag.view(-1, *([1] * (like.dim() - 1)))


def read_terms(W1, W2, S1, S2, factors, queries, coefficients, act: str):
    """The products of the dual-form read (see `dual_read`), which its backward reuses: q W2^T, q S2^T, q a2^T,
    z = W2_j q_j, act(z), act(z) W1^T, act(z) S1^T, act(z) a1^T."""
    a1, _, a2, b2 = factors
    A, c, G = coefficients[0][..., None], coefficients[1][..., None], coefficients[2]
    qW2, qS2, qa2 = queries @ W2.mT, queries @ S2.mT, queries @ a2.mT
    z = A * qW2 + c * qS2 - (G * qa2) @ b2
    h = ACTIVATIONS[act][0](z)
    return qW2, qS2, qa2, z, h, h @ W1.mT, h @ S1.mT, h @ a1.mT


def dual_read(state: FastWeights, queries, factors, coefficients, act):
    """o_j = q_j + W1_j act(W2_j q_j) with W_j = A_j W_0 + c_j S_0 - sum_{i<=j} G_ji b_i a_i^T, never materialised:
    (G * (Q A^T)) B terms are (C x C) products."""
    *_, hW1, hS1, ha1 = read_terms(state.W1, state.W2, state.S1, state.S2, factors, queries, coefficients, act)
    A, c, G = coefficients[0][..., None], coefficients[1][..., None], coefficients[2]
    return queries + A * hW1 + c * hS1 - (G * ha1) @ factors[1]


def updated_weights(state: FastWeights, factors, coefficients):
    """(W1, W2, S1, S2) after the chunk."""
    a1, b1, a2, b2 = factors
    A, c, G, beta_end, s_end = coefficients
    g = G[..., -1, :, None]
    A_end, c_end = A[..., -1, None, None], c[..., -1, None, None]
    if s_end is None:
        W1 = A_end * state.W1 + c_end * state.S1 - (b1 * g).mT @ a1
        W2 = A_end * state.W2 + c_end * state.S2 - (b2 * g).mT @ a2
        return W1, W2, state.S1, state.S2
    if b1.shape[-2] == 1:  # one slot (a decoded token): W and S take the same term -eta b a^T
        minus_u1, minus_u2 = (b1 * -g).mT @ a1, (b2 * -g).mT @ a2
        # addcmul: one pass over the state per term, where a multiply and an add take two
        W1 = torch.addcmul(torch.addcmul(minus_u1, c_end, state.S1), A_end, state.W1)
        W2 = torch.addcmul(torch.addcmul(minus_u2, c_end, state.S2), A_end, state.W2)
        return W1, W2, torch.addcmul(minus_u1, beta_end, state.S1), torch.addcmul(minus_u2, beta_end, state.S2)
    # W and S take the same rank-one terms with other weights: one product each for both
    s = s_end[..., None]
    u1w, u1s = (torch.cat([b1 * g, b1 * s], -1).mT @ a1).split(b1.shape[-1], -2)
    u2w, u2s = (torch.cat([b2 * g, b2 * s], -1).mT @ a2).split(b2.shape[-1], -2)
    W1 = A_end * state.W1 + c_end * state.S1 - u1w
    W2 = A_end * state.W2 + c_end * state.S2 - u2w
    return W1, W2, beta_end * state.S1 - u1s, beta_end * state.S2 - u2s


def with_eval(state: FastWeights, W1, W2, S1, S2, complete) -> FastWeights:
    """The state after the chunk; rows whose chunk is `complete` evaluate their next chunk at the new weights."""
    if isinstance(complete, bool):  # the same for every row (see `fast_weight_memory._chunk_complete`)
        return FastWeights(*((W1, W2) if complete else (state.W1_eval, state.W2_eval)), W1, W2, S1, S2)
    done = row_flags(complete, W1)
    return FastWeights(torch.where(done, W1, state.W1_eval), torch.where(done, W2, state.W2_eval), W1, W2, S1, S2)


def end_state(state: FastWeights, factors, coefficients, complete) -> FastWeights:
    return with_eval(state, *updated_weights(state, factors, coefficients), complete)


# --------------------------------------------------------------------------------------------------------------
# The chunk as one autograd node
# --------------------------------------------------------------------------------------------------------------


def chunk_update_read(state: FastWeights, keys, values, queries, coefficients, act: str, dgd: float,
                      self_generated: bool, read_groups: tuple):
    """Updates and read of one chunk (C > 1 slots) through `ChunkUpdateRead`: the same values as
    `inner_update_factors` -> `updated_weights` -> `dual_read`. The state has leading dims N = (batch, memory,
    head) flattened, with P memories per row (the reading one last) and H heads: `read_groups` = (P, H). Keys,
    values, queries and coefficients are per (batch, head), N / P rows, shared by a row's P memories (they are
    expanded inside, not saved expanded). Returns (W1, W2, S1, S2) after the chunk and the read outputs (None
    without queries)."""
    A, c, G, beta_end, s_end = coefficients
    momentum = s_end is not None
    if not momentum:
        beta_end = s_end = torch.zeros((), dtype=A.dtype, device=A.device)  # placeholders: unused
    if queries is None:
        queries = keys.new_empty(0)
    *new, out = ChunkUpdateRead.apply(*state, keys, values, A, c, G, beta_end, s_end, queries, act, dgd,
                                      self_generated, momentum, read_groups)
    return new, (out if out.numel() else None)


def _last_memory(t, read_groups: tuple):
    """Rows of the reading memory: (N, ...) -> (N / (P H), P, H, ...)[:, -1] -> (N / P, ...)."""
    P, H = read_groups
    return t.unflatten(0, (-1, P, H))[:, -1].flatten(0, 1)


def _add_last(total, part, read_groups: tuple):
    """total[rows of the reading memory] += part, in place."""
    P, H = read_groups
    total.unflatten(0, (-1, P, H))[:, -1].add_(part.unflatten(0, (-1, H)))


def _expand_memories(t, read_groups: tuple):
    """A per-(batch, head) tensor (N / P, ...) repeated for the P memories: (N, ...)."""
    P, H = read_groups
    if P == 1:
        return t
    return t.unflatten(0, (-1, 1, H)).expand(-1, P, H, *t.shape[1:]).flatten(0, 2)


def _sum_memories(t, read_groups: tuple):
    """Gradient of `_expand_memories`: (N, ...) summed over the P memories."""
    P, H = read_groups
    return t if P == 1 else t.unflatten(0, (-1, P, H)).sum(1).flatten(0, 1)


class ChunkUpdateRead(torch.autograd.Function):
    """Forward: `updated_weights` and `dual_read` of one chunk. Backward by hand (derivation in the comments),
    from the saved inputs only."""

    @staticmethod
    def forward(ctx, W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta_end, s_end, q, act, dgd, self_generated,
                momentum, read_groups):
        ctx.save_for_backward(W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta_end, s_end, q)
        coefficients = (A, c, G, beta_end if momentum else None, s_end if momentum else None)
        state = FastWeights(W1e, W2e, W1, W2, S1, S2)
        k_all, v_all = _expand_memories(k, read_groups), _expand_memories(v, read_groups)
        factors = inner_update_factors(k_all, v_all, W1e, W2e, act, dgd, self_generated)
        new = updated_weights(state, factors, [t if t is None else _expand_memories(t, read_groups)
                                               for t in coefficients])
        if q.numel():
            last = FastWeights(*(_last_memory(t, read_groups) for t in state))
            a1, b1, _, b2 = (_last_memory(f, read_groups) for f in factors)
            out = dual_read(last, q, (a1, b1, k, b2), (A, c, G), act)
        else:
            out = q
        ctx.options = act, dgd, self_generated, momentum, read_groups
        if not momentum:  # S is passed through: an output must not be one of the inputs
            new = (*new[:2], S1.clone(), S2.clone())
        return (*new, out)

    @staticmethod
    @once_differentiable
    def backward(ctx, gW1n, gW2n, gS1n, gS2n, gout):
        W1e, W2e, W1, W2, S1, S2, k_read, v, A_read, c_read, G_read, beta_end, s_end, q = ctx.saved_tensors
        act, dgd, self_generated, momentum, read_groups = ctx.options
        k, v, A, c, G = (_expand_memories(t, read_groups) for t in (k_read, v, A_read, c_read, G_read))
        if momentum:
            beta_end, s_end = _expand_memories(beta_end, read_groups), _expand_memories(s_end, read_groups)
        _, grad, grad2, _ = ACTIVATIONS[act]
        C = k.shape[-2]
        gW1n, gW2n, gS1n, gS2n = (torch.zeros_like(t) if g is None else g
                                  for g, t in zip((gW1n, gW2n, gS1n, gS2n), (W1, W2, S1, S2)))
        t = factor_terms(k, v, W1e, W2e, act, dgd, self_generated)
        a1, b1, a2, b2 = t.Hh[:, :C], t.b1, k, t.b2

        # End state: W' = A_C W + c_C S - sum_i g_i b_i a_i^T, S' = beta_C S - sum_i s_i b_i a_i^T (or S' = S).
        A_end, c_end = A[:, -1, None, None], c[:, -1, None, None]
        gW1, gW2 = A_end * gW1n, A_end * gW2n
        gS1, gS2 = c_end * gW1n, c_end * gW2n
        gA, gc, gG = torch.zeros_like(A), torch.zeros_like(c), torch.zeros_like(G)
        gA[:, -1] = _dot(gW1n, W1) + _dot(gW2n, W2)
        gc[:, -1] = _dot(gW1n, S1) + _dot(gW2n, S2)
        g = G[:, -1, :, None]  # (N, C, 1)
        if momentum:
            gS1, gS2 = torch.addcmul(gS1, beta_end, gS1n), torch.addcmul(gS2, beta_end, gS2n)
            g_beta = (_dot(gS1n, S1) + _dot(gS2n, S2))[:, None, None]
            neg_g, neg_s = -g, -s_end[..., None]
            # one product for W's and S's terms: a (gW'; gS')^T, and (g b, s b) (gW'; gS')
            gWS1, gWS2 = torch.cat([gW1n, gS1n], -2), torch.cat([gW2n, gS2n], -2)
            p1w, p1s = (a1 @ gWS1.mT).split(b1.shape[-1], -1)  # (N, C, d) each
            p2w, p2s = (a2 @ gWS2.mT).split(b2.shape[-1], -1)  # (N, C, R) each
            gb1, gb2 = torch.addcmul(neg_g * p1w, neg_s, p1s), torch.addcmul(neg_g * p2w, neg_s, p2s)
            ga1 = torch.cat([b1 * neg_g, b1 * neg_s], -1) @ gWS1
            ga2 = torch.cat([b2 * neg_g, b2 * neg_s], -1) @ gWS2
            gG[:, -1] = -((b1 * p1w).sum(-1) + (b2 * p2w).sum(-1))
            g_s = -((b1 * p1s).sum(-1) + (b2 * p2s).sum(-1))
        else:
            gS1, gS2 = gS1 + gS1n, gS2 + gS2n
            g_beta = g_s = None
            p1w, p2w = a1 @ gW1n.mT, a2 @ gW2n.mT
            gb1, gb2 = -(g * p1w), -(g * p2w)
            ga1, ga2 = -((g * b1) @ gW1n), -((g * b2) @ gW2n)
            gG[:, -1] = -((b1 * p1w).sum(-1) + (b2 * p2w).sum(-1))

        # Read of the last memory: z = A (q W2^T) + c (q S2^T) - (G * q a2^T) b2, h = act(z),
        # out = q + A (h W1^T) + c (h S1^T) - (G * h a1^T) b1.
        gq = None
        if q.numel():
            Wr1, Wr2, Sr1, Sr2, ar1, br1, ar2, br2, Ar, cr, Gr = (
                _last_memory(x, read_groups) for x in (W1, W2, S1, S2, a1, b1, a2, b2, A, c, G))
            qW2, qS2, qa2, z, h, hW1, hS1, ha1 = read_terms(Wr1, Wr2, Sr1, Sr2, (ar1, br1, ar2, br2), q, (Ar, cr, Gr),
                                                             act)
            go = gout
            Ae, ce = Ar[..., None], cr[..., None]
            gAr, gcr = (go * hW1).sum(-1), (go * hS1).sum(-1)
            Q1 = go @ br1.mT  # Q1_ji = gout_j . b1_i
            GQ1 = Gr * Q1
            gGr = -(Q1 * ha1)
            gWr1, gSr1 = (Ae * go).mT @ h, (ce * go).mT @ h
            gar1, gbr1 = -(GQ1.mT @ h), -((Gr * ha1).mT @ go)
            gz = (Ae * (go @ Wr1) + ce * (go @ Sr1) - GQ1 @ ar1) * grad(z)
            gAr, gcr = gAr + (gz * qW2).sum(-1), gcr + (gz * qS2).sum(-1)
            Q2 = gz @ br2.mT
            GQ2 = Gr * Q2
            gGr = gGr - Q2 * qa2
            gWr2, gSr2 = (Ae * gz).mT @ q, (ce * gz).mT @ q
            gar2, gbr2 = -(GQ2.mT @ q), -((Gr * qa2).mT @ gz)
            gq = go + Ae * (gz @ Wr2) + ce * (gz @ Sr2) - GQ2 @ ar2
            for total, part in zip((gW1, gW2, gS1, gS2, ga1, gb1, ga2, gb2, gA, gc, gG),
                                   (gWr1, gWr2, gSr1, gSr2, gar1, gbr1, gar2, gbr2, gAr, gcr, gGr)):
                _add_last(total, part, read_groups)

        # Factors: b1 = (err + dgd y) s1, b2 = (e1 * dh + dgd z) s2 with e1 = err W1e, a1 = h, a2 = k.
        gW1e, gW2e, gk, gv = _factor_backward(t, k, W1e, W2e, ga1, gb1, ga2, gb2, dgd, self_generated, grad2)
        shared = [None if t is None else _sum_memories(t, read_groups) for t in (gk, gv, gA, gc, gG, g_beta, g_s)]
        return (gW1e, gW2e, gW1, gW2, gS1, gS2, *shared, gq, None, None, None, None, None)


def _dot(x, y):
    """<x, y> per memory: (N, a, b) -> (N,)."""
    return (x * y).sum((-2, -1))


def _factor_backward(t: FactorTerms, k, W1e, W2e, ga1, gb1, ga2, gb2, dgd, self_generated, grad2):
    C = k.shape[-2]
    key_rows = slice(0, C)
    h, z, dh, y = t.Hh[:, key_rows], t.Z[:, key_rows], t.dZ[:, key_rows], t.Y[:, key_rows]
    # b1 = (err + dgd y) s1, s1 = 1 / (1 + |h|^2)
    g_s1 = (gb1 * (t.err + dgd * y)).sum(-1, keepdim=True)
    g_err = gb1 * t.s1
    g_y = dgd * g_err
    g_h = ga1 - 2 * g_s1 * t.s1 * t.s1 * h
    # b2 = (e1 * dh + dgd z) s2, s2 = 1 / (1 + sum_j dh_j^2 n_j), n_j = |W1e[:, j]|^2
    g_s2 = (gb2 * (t.e1 * dh + dgd * z)).sum(-1, keepdim=True)
    gb2s = gb2 * t.s2
    g_e1 = gb2s * dh
    g_den = -g_s2 * t.s2 * t.s2  # gradient at the denominator 1 + sum_j dh_j^2 n_j
    g_dh = gb2s * t.e1 + 2 * g_den * dh * t.col_norms[:, None, :]
    g_z = dgd * gb2s + g_dh * grad2(z)
    gW1e = torch.baddbmm(2 * W1e * (g_den * dh * dh).sum(-2)[:, None, :], t.err.mT, g_e1)
    g_err = torch.baddbmm(g_err, g_e1, W1e.mT)
    # err = k + y - v - yv (yv = the values' rows of Y with self-generated targets)
    g_y = g_y + g_err
    g_Y = torch.cat([g_y, -g_err], -2) if self_generated else g_y
    # Y = Hh W1e^T, Hh = act(Z), Z = X W2e^T, X = [k; v] or k
    g_Hh = g_Y @ W1e
    gW1e = torch.baddbmm(gW1e, g_Y.mT, t.Hh)
    g_Z = g_Hh.mul_(t.dZ)  # g_Hh is not used again
    g_Z[:, key_rows].addcmul_(g_h, dh).add_(g_z)
    gW2e = g_Z.mT @ t.X
    g_X = g_Z @ W2e
    gk = ga2 + g_err + g_X[:, key_rows]
    gv = (g_X[:, C:] if self_generated else 0) - g_err
    return gW1e, gW2e, gk, gv

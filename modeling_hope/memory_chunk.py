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

from .memory_cpu import applies as cpu_kernel_applies
from .memory_cpu import chunk_backward as cpu_chunk_backward
from .memory_cpu import chunk_forward as cpu_chunk_forward


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


def _normal_pdf(z):
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _gelu_grad(z):
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * _normal_pdf(z)


def _gelu_grad2(z):
    return _normal_pdf(z) * (2 - z * z)


# activation and its derivative (in the inner gradient); `activation_terms` takes both at once and
# `activation_grad2` the second derivative (in that gradient's backward)
ACTIVATIONS = {"silu": (F.silu, _silu_grad), "gelu": (F.gelu, _gelu_grad)}


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
        h, dh, _ = activation_terms(ctx.act, torch.bmm(u, W2.mT))
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
    dZ: torch.Tensor  # act'(Z): all rows with `all_rows`, else the keys' rows
    sig: torch.Tensor | None  # sigmoid(Z) for silu (its second derivative reuses it), else None
    err: torch.Tensor
    dhn: torch.Tensor  # dh_j n_j, with n_j = ||W1[:, j]||^2
    e1: torch.Tensor  # err W1
    s1: torch.Tensor
    s2: torch.Tensor
    b1: torch.Tensor
    b2: torch.Tensor


def activation_terms(act: str, Z, rows=None):
    """(act(Z), act'(Z), sigmoid(Z) or None): the derivative over the first `rows` rows only when given; for silu
    all from one sigmoid, silu' = s + silu (1 - s)."""
    if act == "silu":
        s = torch.sigmoid(Z)
        f = Z * s
        sk, fk = (s, f) if rows is None else (s[..., :rows, :], f[..., :rows, :])
        return f, torch.addcmul(sk, fk, 1 - sk), s
    fn, grad = ACTIVATIONS[act]
    return fn(Z), grad(Z if rows is None else Z[..., :rows, :]), None


def activation_grad2(act: str, z, dz, s):
    """act''(z) given dz = act'(z) and s = sigmoid(z) (silu: s (1 - s) (2 + z (1 - 2 s)) = s + dz (1 - 2 s)); gelu's
    from z."""
    if act == "silu":
        return torch.addcmul(s, dz, torch.rsub(s, 1, alpha=2))
    return _gelu_grad2(z)


def factor_terms(keys, values, W1, W2, act: str, dgd: float, self_generated: bool, all_rows: bool = False,
                 X=None) -> FactorTerms:
    """The terms of `inner_update_factors`: act' over all 2C rows of Z with `all_rows` (the backward's), else over
    the keys' rows. `X` = [k; v] (or k) when the caller has it (keys and values are then views of it)."""
    C = keys.shape[-2]
    if X is None:
        X = torch.cat(torch.broadcast_tensors(keys, values), -2) if self_generated else keys
    Z = X @ W2.mT
    Hh, dZ, sig = activation_terms(act, Z, None if all_rows else C)
    Y = Hh @ W1.mT
    if self_generated:  # split, not slices: a slice's backward writes into zeros of the full size
        (z, _), (h, _), (y, yv) = (t.split(C, -2) for t in (Z, Hh, Y))
        err = (keys - values) + (y - yv)
    else:
        z, h, y = Z, Hh, Y
        err = (keys - values) + Y
    dh = dZ[..., :C, :]
    dhn = dh * (W1 * W1).sum(-2)[..., None, :]
    e1 = err @ W1
    s1 = step_scale_w1(h)
    s2 = torch.reciprocal((dhn * dh).sum(-1, keepdim=True) + 1)  # step_scale_w2
    b1 = (torch.add(err, y, alpha=dgd) if dgd else err) * s1
    b2 = (torch.addcmul(z if dgd == 1 else z * dgd, e1, dh) if dgd else e1 * dh) * s2
    return FactorTerms(X, Z, Hh, Y, dZ, sig, err, dhn, e1, s1, s2, b1, b2)


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


class ReadTerms(NamedTuple):
    """The products of the dual-form read (`dual_read`), which its backward reuses. W and S of a layer are stacked
    (WS1 = [W1; S1] (2d, R), WS2 = [W2; S2] (2R, d)) so that each read through them is one product."""

    WS1: torch.Tensor
    WS2: torch.Tensor
    qWS2: torch.Tensor  # [q W2^T | q S2^T]
    qa2: torch.Tensor  # q a2^T
    z: torch.Tensor  # W2_j q_j
    h: torch.Tensor  # act(z)
    hWS1: torch.Tensor  # [h W1^T | h S1^T]
    ha1: torch.Tensor  # h a1^T


def read_terms(W1, W2, S1, S2, factors, queries, coefficients, act: str) -> ReadTerms:
    a1, _, a2, b2 = factors
    A, c, G = coefficients[0][..., None], coefficients[1][..., None], coefficients[2]
    R = W2.shape[-2]
    WS1, WS2 = torch.cat([W1, S1], -2), torch.cat([W2, S2], -2)
    qWS2, qa2 = torch.bmm(queries, WS2.mT), torch.bmm(queries, a2.mT)
    z = torch.addcmul(A * qWS2[..., :R], c, qWS2[..., R:]) - torch.bmm(G * qa2, b2)
    h = ACTIVATIONS[act][0](z)
    return ReadTerms(WS1, WS2, qWS2, qa2, z, h, torch.bmm(h, WS1.mT), torch.bmm(h, a1.mT))


def dual_read(state: FastWeights, queries, factors, coefficients, act):
    """o_j = q_j + W1_j act(W2_j q_j) with W_j = A_j W_0 + c_j S_0 - sum_{i<=j} G_ji b_i a_i^T, never materialised:
    (G * (Q A^T)) B terms are (C x C) products. Leading dims: one (N, C, d)."""
    t = read_terms(state.W1, state.W2, state.S1, state.S2, factors, queries, coefficients, act)
    A, c, G = coefficients[0][..., None], coefficients[1][..., None], coefficients[2]
    d = queries.shape[-1]
    # no baddbmm on this path (nor in `updated_weights`): under autocast it would cast its float32 input to bfloat16
    return torch.addcmul(torch.addcmul(queries, A, t.hWS1[..., :d]), c, t.hWS1[..., d:]) - torch.bmm(G * t.ha1,
                                                                                                    factors[1])


def updated_weights(state: FastWeights, factors, coefficients):
    """(W1, W2, S1, S2) after the chunk: W' = A_C W + c_C S - sum_i g_i b_i a_i^T, S' = beta_C S - sum_i s_i b_i a_i^T
    (S' = S without momentum), g the last row of G. Only A's and c's last entries and G's last row are read, so a
    caller may pass just those (A, c (..., 1), G (..., 1, C)). The products are subtracted, not fused into baddbmm:
    under autocast that would cast the float32 state to bfloat16."""
    a1, b1, a2, b2 = factors
    A, c, G, beta_end, s_end = coefficients
    g = G[..., -1, :, None]
    A_end, c_end = A[..., -1, None, None], c[..., -1, None, None]
    if s_end is not None and b1.shape[-2] == 1:  # one slot (a decoded token): W and S take the same term -eta b a^T
        minus_u1, minus_u2 = (b1 * -g).mT @ a1, (b2 * -g).mT @ a2
        # addcmul: one pass over the state per term, where a multiply and an add take two
        W1 = torch.addcmul(torch.addcmul(minus_u1, c_end, state.S1), A_end, state.W1)
        W2 = torch.addcmul(torch.addcmul(minus_u2, c_end, state.S2), A_end, state.W2)
        return W1, W2, torch.addcmul(minus_u1, beta_end, state.S1), torch.addcmul(minus_u2, beta_end, state.S2)
    W1 = torch.addcmul(A_end * state.W1, c_end, state.S1) - (b1 * g).mT @ a1
    W2 = torch.addcmul(A_end * state.W2, c_end, state.S2) - (b2 * g).mT @ a2
    if s_end is None:
        return W1, W2, state.S1, state.S2
    s = s_end[..., None]
    return W1, W2, beta_end * state.S1 - (b1 * s).mT @ a1, beta_end * state.S2 - (b2 * s).mT @ a2


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


# Rows are (batch, memory, head) flattened, memory-major within a batch row. These helpers run a few dozen times per
# chunk, so each is one or two operations: with one batch row (N = P H) a slice along the rows; views, not unflatten
# (a Python-level wrapper), otherwise.


def _last_memory(t, read_groups: tuple):
    """Rows of the reading memory: (N, ...) -> (N / (P H), P, H, ...)[:, -1] -> (N / P, ...)."""
    P, H = read_groups
    if t.shape[0] == P * H:
        return t[-H:]
    return t.view(-1, P * H, *t.shape[1:])[:, -H:].flatten(0, 1)


def _add_last(total, part, read_groups: tuple):
    """total[rows of the reading memory] += part, in place."""
    P, H = read_groups
    if total.shape[0] == P * H:
        total[-H:].add_(part)
    else:
        total.view(-1, P * H, *total.shape[1:])[:, -H:].add_(part.view(-1, H, *part.shape[1:]))


def _expand_memories(t, read_groups: tuple):
    """A per-(batch, head) tensor (N / P, ...) repeated for the P memories: (N, ...)."""
    P, H = read_groups
    if P == 1:
        return t
    rest = t.shape[1:]  # expand and copy: 1.4-1.7x faster than repeat here
    return t.view(-1, 1, H, *rest).expand(-1, P, H, *rest).reshape(-1, *rest)


def _sum_memories(t, read_groups: tuple):
    """Gradient of `_expand_memories`: (N, ...) summed over the P memories."""
    P, H = read_groups
    if P == 1:
        return t
    rest = t.shape[1:]
    return t.reshape(-1, P, H, *rest).sum(1).view(-1, *rest)


def _chunk_factors(k, v, W1e, W2e, act, dgd, self_generated, read_groups, all_rows=False) -> FactorTerms:
    """`factor_terms` of every memory from the per-(batch, head) keys and values: [k; v] is built once per head and
    repeated for the P memories."""
    C = k.shape[-2]
    if self_generated:
        X = _expand_memories(torch.cat([k, v], -2), read_groups)
        return factor_terms(X[:, :C], X[:, C:], W1e, W2e, act, dgd, True, all_rows, X)
    X = _expand_memories(k, read_groups)
    return factor_terms(X, _expand_memories(v, read_groups), W1e, W2e, act, dgd, False, all_rows, X)


def _end_coefficients(A, c, G, beta_end, s_end, momentum, read_groups):
    """What the end state takes of the chunk's coefficients (`updated_weights`), per memory: A's and c's last entries
    (N, 1), G's last row (N, 1, C) and, with momentum, beta_C (N, 1, 1) and s (N, C) (else None, None)."""
    rows = [A[:, -1:], c[:, -1:], G[:, -1:]] + ([beta_end, s_end] if momentum else [])
    rows = [_expand_memories(t, read_groups) for t in rows]
    return rows if momentum else rows + [None, None]


def _dots(gWS, W, S):
    """(N, K, 2): the inner products of each of gWS's K blocks (gW', then gS') with W and with S, as products over
    their entries (no elementwise temporaries)."""
    N = W.shape[0]
    blocks = gWS.reshape(N, -1, W[0].numel())
    # W as a (1 x dR) row transposed: MKL takes that layout 8x faster than a (dR x 1) column
    return torch.cat([torch.bmm(blocks, W.reshape(N, 1, -1).mT), torch.bmm(blocks, S.reshape(N, 1, -1).mT)], -1)


class ChunkUpdateRead(torch.autograd.Function):
    """Forward: `updated_weights` (given the shared coefficients per memory only where the end state takes them) and
    `dual_read` of one chunk. Backward by hand (derivation in the comments), from the saved inputs only."""

    @staticmethod
    def forward(ctx, W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta_end, s_end, q, act, dgd, self_generated,
                momentum, read_groups):
        ctx.save_for_backward(W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta_end, s_end, q)
        ctx.options = act, dgd, self_generated, momentum, read_groups
        ctx.cpu_kernel = act == "silu" and cpu_kernel_applies(W1e, W1, k, v, G, q)
        if ctx.cpu_kernel:  # the same values (and, in backward, gradients) in one C++ call
            return tuple(cpu_chunk_forward(W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta_end, s_end, q, act,
                                           dgd, self_generated, momentum, read_groups))
        C = k.shape[-2]
        t = _chunk_factors(k, v, W1e, W2e, act, dgd, self_generated, read_groups)
        a1, b1, a2, b2 = t.Hh[:, :C], t.b1, t.X[:, :C], t.b2
        ends = _end_coefficients(A, c, G, beta_end, s_end, momentum, read_groups)
        W1n, W2n, S1n, S2n = updated_weights(FastWeights(W1e, W2e, W1, W2, S1, S2), (a1, b1, a2, b2), ends)
        if not momentum:  # S is passed through: an output must not be one of the inputs
            S1n, S2n = S1.clone(), S2.clone()
        out = q
        if q.numel():
            last = lambda x: _last_memory(x, read_groups)  # noqa: E731
            out = dual_read(FastWeights(None, None, last(W1), last(W2), last(S1), last(S2)), q,
                            (last(a1), last(b1), k, last(b2)), (A, c, G), act)
        return W1n, W2n, S1n, S2n, out

    @staticmethod
    @once_differentiable
    def backward(ctx, gW1n, gW2n, gS1n, gS2n, gout):
        saved = ctx.saved_tensors  # unpacked once (checkpointing allows no second unpack)
        W1e, W2e, W1, W2, S1, S2, k, v, A, c, G, beta_end, s_end, q = saved
        act, dgd, self_generated, momentum, read_groups = ctx.options
        if ctx.cpu_kernel:
            return (*cpu_chunk_backward(saved, (gW1n, gW2n, gS1n, gS2n, gout), dgd, self_generated, momentum,
                                        read_groups), None, None, None, None, None)
        grad = ACTIVATIONS[act][1]
        C = k.shape[-2]
        gW1n, gW2n, gS1n, gS2n = (torch.zeros_like(t) if g is None else g
                                  for g, t in zip((gW1n, gW2n, gS1n, gS2n), (W1, W2, S1, S2)))
        t = _chunk_factors(k, v, W1e, W2e, act, dgd, self_generated, read_groups, all_rows=True)
        a1, b1, a2, b2 = t.Hh[:, :C], t.b1, t.X[:, :C], t.b2
        A_last, c_last, G_last, beta, s = _end_coefficients(A, c, G, beta_end, s_end, momentum, read_groups)
        A_end, c_end, g = A_last[..., None], c_last[..., None], G_last[:, 0]

        # End state: W' = A_C W + c_C S - sum_i g_i b_i a_i^T, S' = beta_C S - sum_i s_i b_i a_i^T (or S' = S). The
        # K = 2 blocks (W's and S's terms, with weights coef = (g, s)) in one product each: a (gW'; gS')^T, and
        # (g b, s b) (gW'; gS').
        gW1, gW2 = A_end * gW1n, A_end * gW2n
        if momentum:
            gS1, gS2 = torch.addcmul(c_end * gW1n, beta, gS1n), torch.addcmul(c_end * gW2n, beta, gS2n)
            gWS1, gWS2 = torch.cat([gW1n, gS1n], -2), torch.cat([gW2n, gS2n], -2)  # (N, 2d, R), (N, 2R, d)
            coef = torch.stack([g, s], -1)
        else:
            gS1, gS2 = torch.addcmul(gS1n, c_end, gW1n), torch.addcmul(gS2n, c_end, gW2n)
            gWS1, gWS2, coef = gW1n, gW2n, g[..., None]
        K, d, R = coef.shape[-1], b1.shape[-1], b2.shape[-1]
        dots = _dots(gWS1, W1, S1) + _dots(gWS2, W2, S2)  # [k, 0]: <block k, W>, [k, 1]: <block k, S>
        neg = coef.neg()
        p1, p2 = torch.bmm(a1, gWS1.mT), torch.bmm(a2, gWS2.mT)  # (N, C, K d), (N, C, K R)
        gb1, gb2 = p1[..., :d] * neg[..., :1], p2[..., :R] * neg[..., :1]
        if momentum:
            gb1.addcmul_(p1[..., d:], neg[..., 1:])
            gb2.addcmul_(p2[..., R:], neg[..., 1:])
        ga1 = torch.bmm((b1.unsqueeze(-2) * neg.unsqueeze(-1)).flatten(-2), gWS1)
        ga2 = torch.bmm((b2.unsqueeze(-2) * neg.unsqueeze(-1)).flatten(-2), gWS2)
        g_coef = (p1.unflatten(-1, (K, d)) * b1.unsqueeze(-2)).sum(-1)
        g_coef = g_coef.add_((p2.unflatten(-1, (K, R)) * b2.unsqueeze(-2)).sum(-1)).neg_()  # (N, C, K)

        # Read of the last memory: z = A (q W2^T) + c (q S2^T) - (G * q a2^T) b2, h = act(z),
        # out = q + A (h W1^T) + c (h S1^T) - (G * h a1^T) b1. A, c, G, k are the reading memory's already; W and S
        # stacked: L = [A g | c g] for a row gradient g, so (A g)^T h and (c g)^T h are one product L^T h, and
        # A (g W1) + c (g S1) is L [W1; S1].
        gq = None
        if q.numel():
            Wr1, Wr2, Sr1, Sr2, ar1, br1, br2 = (_last_memory(x, read_groups) for x in (W1, W2, S1, S2, a1, b1, b2))
            ar2 = k
            rt = read_terms(Wr1, Wr2, Sr1, Sr2, (ar1, br1, ar2, br2), q, (A, c, G), act)
            go = gout
            Ac = torch.stack([A, c], -1).unsqueeze(-1)  # (N', C, 2, 1)
            g_Ac = (rt.hWS1.unflatten(-1, (2, d)) * go.unsqueeze(-2)).sum(-1)  # (N', C, 2): at A and at c
            L1 = (go.unsqueeze(-2) * Ac).flatten(-2)  # (N', C, 2d)
            Q1 = torch.bmm(go, br1.mT)  # Q1_ji = gout_j . b1_i
            GQ1 = G * Q1
            gG = -(Q1 * rt.ha1)
            gWS1 = torch.bmm(L1.mT, rt.h)  # [gW1; gS1]
            gar1, gbr1 = torch.bmm(GQ1.mT, rt.h).neg_(), torch.bmm((G * rt.ha1).mT, go).neg_()
            gz = torch.baddbmm(torch.bmm(L1, rt.WS1), GQ1, ar1, alpha=-1).mul_(grad(rt.z))
            g_Ac += (rt.qWS2.unflatten(-1, (2, R)) * gz.unsqueeze(-2)).sum(-1)
            Q2 = torch.bmm(gz, br2.mT)
            GQ2 = G * Q2
            gG -= Q2 * rt.qa2
            L2 = (gz.unsqueeze(-2) * Ac).flatten(-2)  # (N', C, 2R)
            gWS2 = torch.bmm(L2.mT, q)  # [gW2; gS2]
            gar2, gbr2 = torch.bmm(GQ2.mT, q).neg_(), torch.bmm((G * rt.qa2).mT, gz).neg_()
            gq = torch.baddbmm(torch.baddbmm(go, L2, rt.WS2), GQ2, ar2, alpha=-1)
            gA, gc = g_Ac[..., 0], g_Ac[..., 1]
            for total, part in zip((gW1, gS1, gW2, gS2, ga1, gb1, ga2, gb2),
                                   (gWS1[:, :d], gWS1[:, d:], gWS2[:, :R], gWS2[:, R:], gar1, gbr1, gar2, gbr2)):
                _add_last(total, part, read_groups)
        else:
            gA, gc, gG = torch.zeros_like(A), torch.zeros_like(c), torch.zeros_like(G)
        dots, g_coef = _sum_memories(dots, read_groups), _sum_memories(g_coef, read_groups)
        gA[:, -1] += dots[:, 0, 0]
        gc[:, -1] += dots[:, 0, 1]
        gG[:, -1] += g_coef[..., 0]
        g_beta, g_s = (dots[:, 1, 1].view(beta_end.shape), g_coef[..., 1]) if momentum else (None, None)

        # Factors: b1 = (err + dgd y) s1, b2 = (e1 * dh + dgd z) s2 with e1 = err W1e, a1 = h, a2 = k.
        gW1e, gW2e, gX, gv = _factor_backward(t, W1e, W2e, ga1, gb1, ga2, gb2, dgd, self_generated, act)
        gX = _sum_memories(gX, read_groups)
        gk, gv = (gX[:, :C], gX[:, C:]) if self_generated else (gX, _sum_memories(gv, read_groups))
        return (gW1e, gW2e, gW1, gW2, gS1, gS2, gk, gv, gA, gc, gG, g_beta, g_s, gq, None, None, None, None, None)


def _factor_backward(t: FactorTerms, W1e, W2e, ga1, gb1, ga2, gb2, dgd, self_generated, act):
    """From the gradients at the factors (a1 = h, b1, a2 = k, b2) to those at W1e, W2e and X = [k; v] (or k, and
    then at v apart). No autograd here: buffers not used again are updated in place."""
    C = gb1.shape[-2]
    h, z, dh = t.Hh[:, :C], t.Z[:, :C], t.dZ[:, :C]
    # b1 = (err + dgd y) s1, s1 = 1 / (1 + |h|^2): err + dgd y = b1 / s1 and d s1 / dh = -2 s1^2 h
    g_h = torch.addcmul(ga1, h, (gb1 * t.b1).sum(-1, keepdim=True).mul_(t.s1), value=-2)
    g_err0 = gb1 * t.s1  # at err, and dgd times it at y
    # b2 = (e1 * dh + dgd z) s2, s2 = 1 / (1 + sum_j dh_j^2 n_j), n_j = |W1e[:, j]|^2: likewise at the denominator
    g_den = (gb2 * t.b2).sum(-1, keepdim=True).mul_(t.s2).neg_()
    gb2s = gb2 * t.s2
    g_e1 = gb2s * dh
    g_z = torch.addcmul(gb2s * t.e1, t.dhn, g_den, value=2)  # at dh, then at z through dh = act'(z)
    g_z.mul_(activation_grad2(act, z, dh, None if t.sig is None else t.sig[:, :C]))
    if dgd:
        g_z.add_(gb2s, alpha=dgd)
    gW1e = torch.baddbmm(W1e * torch.bmm(g_den.mT, dh * dh).mul_(2), t.err.mT, g_e1)  # through n_j and e1
    g_err = torch.baddbmm(g_err0, g_e1, W1e.mT)
    # err = k + y - v (- yv, the values' rows of Y with self-generated targets)
    g_y = torch.add(g_err, g_err0, alpha=dgd) if dgd else g_err
    g_Y = torch.cat([g_y, g_err.neg()], -2) if self_generated else g_y
    # Y = Hh W1e^T, Hh = act(Z), Z = X W2e^T, X = [k; v] or k
    gW1e.baddbmm_(g_Y.mT, t.Hh)
    g_Z = torch.bmm(g_Y, W1e).mul_(t.dZ)
    g_Z[:, :C].addcmul_(g_h, dh).add_(g_z)
    gW2e = torch.bmm(g_Z.mT, t.X)
    g_X = torch.bmm(g_Z, W2e)
    g_X[:, :C].add_(ga2).add_(g_err)
    if self_generated:
        g_X[:, C:].sub_(g_err)
        return gW1e, gW2e, g_X, None
    return gW1e, gW2e, g_X, g_err.neg()

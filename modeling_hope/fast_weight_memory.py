"""Fast-weight memories of self-modifying Titans (HOPE spec section 2 and its appendix).

A memory is a residual two-layer MLP with fast weights, `M(u) = u + W1 act(W2 u)`, that learns in context on
`l_t(W) = 0.5 ||M(k_t) - vhat_t||^2` with delta gradient descent, momentum and decay:

    u_t = grad_W l_t(W_s) + dgd * (W_s a_t) a_t^T          (W_s: the weights at the start of t's chunk;
                                                             each u_t scaled to unit curvature, see step_scale_*)
    S_t = beta S_{t-1} - eta_t u_t
    W_t = alpha_t W_{t-1} + S_t

Each operator comes twice, with one signature: a naive reference that walks the tokens one by one and takes the
inner gradient with autograd, and the chunked dual form used by the model (one chunk's math, and its hand-written
backward, are in `memory_chunk.py`). Shapes: B rows, G independent memories
(memories x heads), T tokens, d head size, R = r * d hidden width; W1 (B, G, d, R), W2 (B, G, R, d).

Inputs are "compacted": each row's real tokens come first (`mask` is a prefix), and `counts` holds how many real
tokens each row had already seen, so chunk boundaries fall at multiples of the chunk size in every row's own count.
"""

from typing import NamedTuple

import torch
import torch.utils.checkpoint
from torch.autograd.function import once_differentiable

from .continuum_memory import eager_autograd
from .memory_cpu import applies as cpu_kernel_applies
from .memory_cpu import coefficients as cpu_coefficients
from .memory_cpu import disabled as cpu_kernel_disabled
from .memory_cpu import enabled as cpu_kernel_enabled
from .memory_chunk import (ACTIVATIONS, FastWeights, MemoryRead, chunk_update_read, end_state, inner_update_factors,
                           memory_read, row_flags, step_scale_w1, step_scale_w2, with_eval)


# --------------------------------------------------------------------------------------------------------------
# Slot layout: shift each row so that its chunk boundaries line up with a shared grid.
# --------------------------------------------------------------------------------------------------------------


class SlotGrid(NamedTuple):
    """Row b's compacted token j sits at slot `offset_b + j` (offset_b = counts_b % chunk), so that chunk boundaries,
    multiples of `chunk` in every row's own count, fall on shared slots. Only the slots `start..stop` that hold some
    row's token are kept (a decoded token costs one slot, not a chunk); `sizes` cuts them at the chunk boundaries and
    `ends[i]` says whether piece i ends on one."""

    offset: torch.Tensor
    lengths: torch.Tensor
    start: int
    stop: int
    sizes: list
    ends: list
    dense: bool  # every row holds all T tokens at the same offset: the slots are the tokens themselves


def slot_grid(counts, lengths, chunk: int, T: int) -> SlotGrid:
    offset = counts % chunk
    start = int(offset.min())
    stop = max(int((offset + lengths).max()), start + 1)
    dense = T > 0 and int(offset.max()) == start and int(lengths.min()) == T
    edges = [start, *range(chunk, stop, chunk), stop]  # start < chunk: every multiple of chunk below stop is inside
    return SlotGrid(offset, lengths, start, stop, [b - a for a, b in zip(edges, edges[1:])],
                    [b % chunk == 0 for b in edges[1:]], dense)


def to_slots(x, grid: SlotGrid, dim: int = 2):
    """Place compacted tokens (along `dim`) at their slots. Returns (slots, active (B, S))."""
    if grid.dense:  # no gathers (a decoded token, an unpadded batch)
        return x, torch.ones(x.shape[0], x.shape[dim], dtype=torch.bool, device=x.device)
    j = torch.arange(grid.start, grid.stop, device=x.device)[None, :] - grid.offset[:, None]  # (B, S)
    active = (j >= 0) & (j < grid.lengths[:, None])
    return _gather(x, j.clamp(0, x.shape[dim] - 1), dim), active


def from_slots(y, grid: SlotGrid, length: int, dim: int = 2):
    """Inverse of `to_slots` for the first `length` compacted positions."""
    if grid.dense:
        return y.narrow(dim, 0, length)
    j = torch.arange(length, device=y.device)[None, :] + (grid.offset - grid.start)[:, None]
    return _gather(y, j.clamp(0, y.shape[dim] - 1), dim)


def _gather(x, idx, dim):
    """x[b, ..., idx[b, j], ...] along `dim`; idx (B, J)."""
    shape = [1] * x.dim()
    shape[0], shape[dim] = idx.shape
    return x.gather(dim, idx.view(shape).expand(*x.shape[:dim], idx.shape[1], *x.shape[dim + 1:]))


# --------------------------------------------------------------------------------------------------------------
# Chunked dual form
# --------------------------------------------------------------------------------------------------------------


def chunk_coefficients(eta, log_alpha, log_beta, active):
    """Closed form of the masked recurrence over one chunk (m_j = 1 for real slots, 0 for no-op slots):

        S_j = beta^{m_j} S_{j-1} - m_j eta_j u_j,   W_j = alpha_j W_{j-1} + m_j S_j
        =>  W_j = A_j W_0 + c_j S_0 - sum_i G_ji u_i,   S_C = beta_C S_0 - sum_i s_i u_i

    with A_j = prod alpha, gamma_ji = sum_{m=i..j} m_m (A_j/A_m) beta^(n_m - n_i) (n: real-token count) and
    G = gamma * eta. eta, log_alpha: (B, G, C), zero at no-op slots; log_beta: (G,) or None (no momentum);
    active: (B, 1, C) float. Returns A (B,G,C), c (B,G,C), G (B,G,C,C), beta_C (B,G,1,1) or None, s (B,G,C) or None.
    A dim of n chunks may follow G (eta (B, G, n, C), active (B, 1, n, C)): n chunks' coefficients at once.
    Under autograd it is one node, `ChunkCoefficients`, that keeps its inputs only (eager; a compiled chunk step
    traces the plain products, which inductor fuses).
    """
    inputs = (eta, log_alpha) if log_beta is None else (eta, log_alpha, log_beta)
    if eager_autograd() and any(t.requires_grad for t in inputs):
        out = ChunkCoefficients.apply(eta, log_alpha, log_beta, active)
        return out if log_beta is not None else (*out, None, None)
    return _coefficients(eta, log_alpha, log_beta, active)[0]


def _coefficients(eta, log_alpha, log_beta, active, keep: bool = False):
    """`chunk_coefficients`' outputs, and with `keep` the intermediates that its backward takes. Without `keep` and
    outside autograd, the C x C matrices are transformed in place: a fresh buffer for each elementwise pass costs more
    than the pass (batched over a scan's chunks they are megabytes, and every new one is faulted in page by page)."""
    if not keep and cpu_kernel_applies(eta, log_alpha, active):  # the same values by recurrences, in C++
        return cpu_coefficients(eta, log_alpha, log_beta, active), None
    inplace = not keep and not torch.is_grad_enabled()
    log_A = log_alpha.cumsum(-1)
    decay = _causal_exp(log_A[..., :, None] - log_A[..., None, :], inplace)
    if log_beta is None:
        gamma = decay.mul_(active[..., None, :]) if inplace else decay * active[..., None, :]
        G = gamma.mul_(eta[..., None, :]) if inplace else gamma * eta[..., None, :]
        return (log_A.exp(), torch.zeros_like(log_A), G, None, None), (decay, gamma)
    n = active.cumsum(-1)  # real tokens so far
    log_B = n * log_beta.view(-1, *([1] * (eta.dim() - 2)))  # (B, G, C): log beta^{n_m}
    mom = _causal_exp(log_B[..., :, None] - log_B[..., None, :], inplace)
    s_end = mom[..., -1, :] * eta
    M = mom.mul_(active[..., :, None]) if inplace else mom * active[..., :, None]
    gamma = decay @ M
    w = active * log_B.exp()
    c = (w.unsqueeze(-2) @ decay.mT).squeeze(-2)  # a row times the matrix: MKL's column form is 2-6x slower here
    beta_end = log_B[..., -1, None, None].exp()
    G = gamma.mul_(eta[..., None, :]) if inplace else gamma * eta[..., None, :]
    return (log_A.exp(), c, G, beta_end, s_end), (decay, gamma, n, mom, M, w)


class ChunkCoefficients(torch.autograd.Function):
    """`chunk_coefficients` as one autograd node that saves only its (B, G, C) inputs and recomputes the C x C decay
    matrices in backward: autograd through the products kept four or five of them per chunk (a quarter GiB for a
    training step of hope-5m at 8192 tokens). Backward, with D_jm = log A_j - log A_m (decay = exp(D) on and below
    the diagonal) and E_mi = log B_m - log B_i (mom = exp(E)), both <= 0 there: dD = d decay * decay, and a log-sum
    x_j receives the row sum minus the column sum of its difference matrix's gradient."""

    @staticmethod
    def forward(ctx, eta, log_alpha, log_beta, active):
        ctx.save_for_backward(eta, log_alpha, log_beta, active)
        device = eta.device.type  # backward recomputes under the forward's autocast (as torch.amp.custom_bwd does)
        ctx.autocast = device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        outputs, _ = _coefficients(eta, log_alpha, log_beta, active)
        if log_beta is None:
            ctx.mark_non_differentiable(outputs[1])  # c = 0
            return outputs[:3]
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return ChunkCoefficients._backward(*ctx.saved_tensors, *grads)

    @staticmethod
    def _backward(eta, log_alpha, log_beta, active, gA, gc, gG, *g_momentum):
        (A, *_, beta_end, _), terms = _coefficients(eta, log_alpha, log_beta, active, keep=True)
        decay, gamma = terms[:2]
        g_eta = (gG * gamma).sum(-2)
        g_gamma = gG * eta[..., None, :]
        g_log_beta = None
        if log_beta is None:  # G = decay * m_i * eta_i
            g_decay = g_gamma * active[..., None, :]
        else:  # G = (decay @ M) * eta, M = mom * m_m; c = decay @ w, w = m B; s = mom[-1] * eta; beta_C = B_C
            g_beta, g_s = g_momentum
            n, mom, M, w = terms[2:]
            g_eta = g_eta + g_s * mom[..., -1, :]
            g_decay = torch.addcmul(g_gamma @ M.mT, gc[..., :, None], w[..., None, :])
            g_mom = (decay.mT @ g_gamma) * active[..., :, None]
            g_mom[..., -1, :] += g_s * eta
            g_log_B = (gc.unsqueeze(-2) @ decay).squeeze(-2) * w
            g_log_B[..., -1] += (g_beta * beta_end)[..., 0, 0]
            g_E = g_mom * mom
            g_log_B = g_log_B + g_E.sum(-1) - g_E.sum(-2)
            g_log_beta = (g_log_B * n).transpose(0, 1).reshape(log_beta.numel(), -1).sum(1).view(log_beta.shape)
        g_D = g_decay * decay
        g_log_A = gA * A + g_D.sum(-1) - g_D.sum(-2)
        g_log_alpha = g_log_A.flip(-1).cumsum(-1).flip(-1)  # log A = cumsum(log alpha)
        return g_eta, g_log_alpha, g_log_beta, None


def _causal_exp(x, inplace: bool = False):
    """exp(x) on and below the diagonal, 0 above, for x <= 0 there (differences of non-increasing log-decay sums, in
    float as in exact arithmetic): the triangle taken after the exp of min(x, 0). The usual mask, exp of -inf above
    the diagonal, takes a slower path of exp on the CPU (about 3x an ordinary exp at these shapes); the values and
    the gradients are the same. `inplace` overwrites x (outside autograd)."""
    if inplace:
        return x.clamp_(max=0).exp_().tril_()
    return x.clamp_max(0).exp().tril()


def slot_coefficients(eta, log_alpha, log_beta, active):
    """`chunk_coefficients` for a one-slot piece (a decoded token), in closed form: with m the slot's flag,
    S_1 = beta^m S_0 - eta u, W_1 = alpha W_0 + m S_1, so A = alpha, c = m beta^m, G = eta, beta_C = beta^m,
    s = eta (eta and log alpha are already zero at a no-op slot)."""
    if log_beta is None:
        return log_alpha.exp(), torch.zeros_like(eta), eta[..., None], None, None
    beta_m = (active * log_beta[:, None]).exp()
    return log_alpha.exp(), active * beta_m, eta[..., None], beta_m[..., None], eta


def coefficients_for(eta, log_alpha, log_beta, active):
    one_slot = eta.shape[-1] == 1
    return (slot_coefficients if one_slot else chunk_coefficients)(eta, log_alpha, log_beta, active)


def piece_coefficients(eta, log_alpha, log_beta, active, sizes):
    """`coefficients_for` of every piece of the slots (eta, log_alpha (B, G, S), active (B, 1, S)), when all pieces'
    inputs are known before the loop (the output memory's scan): each run of equal pieces in one batched call, not a
    dozen small operations per chunk. Returns one coefficient tuple per piece."""
    out, start, i = [], 0, 0
    while i < len(sizes):
        size, n = sizes[i], 1
        while i + n < len(sizes) and sizes[i + n] == size:
            n += 1
        run = [t.narrow(-1, start, size * n).unflatten(-1, (n, size)) for t in (eta, log_alpha, active)]
        if size == 1:  # one-slot pieces (a decoded token's) take the closed form one by one
            out += [slot_coefficients(*(t.select(-2, j) for t in run[:2]), log_beta, run[2].select(-2, j))
                    for j in range(n)]
        else:
            batched = chunk_coefficients(run[0], run[1], log_beta, run[2])
            out += zip(*((None,) * n if t is None else t.unbind(2) for t in batched))
        start, i = start + size * n, i + n
    return out


def _chunk_complete(active, grid: SlotGrid):
    """`complete(i, active_i)` for the scans: which rows' chunk ends with piece i. When every slot holds a token
    (no padding, rows in step: training, single-sequence decoding) it is a Python bool, so `end_state` skips its
    selects (one check per call, not one per chunk)."""
    if grid.dense or bool(active.all()):
        return lambda i, active_c: grid.ends[i]
    return lambda i, active_c: active_c[:, -1] & grid.ends[i]


def chunk_step(state: FastWeights, keys, values, coefficients, complete, act, dgd, self_generated, queries=None):
    """One chunk for a group of memories (B, G, ...): rank-one inner updates at the chunk-start weights, the
    dual-form read `o_j = q_j + W1_j act(W2_j q_j)` (W_j including tokens up to j) when `queries` is given, and the
    end state. `coefficients`: the chunk's `coefficients_for`. `complete` (B,) (or one bool for all rows) marks rows
    whose chunk ends here, so their next chunk is evaluated at the new weights. Keys, values and coefficients may be
    per head (B, H, ...), shared by the G / H memories of each head (groups ordered memory-major, as
    `_expand_groups` repeats them); queries (one reading memory per group) only with G = H."""
    B, G = state.W1.shape[:2]
    H = keys.shape[1]
    if keys.shape[-2] == 1:  # one slot: its weights W_1 are the end state's, cheaper to read than the dual form
        keys, values, *coefficients = (None if t is None else _expand_groups(t, G)
                                       for t in (keys, values, *coefficients))
        new = end_state(state, inner_update_factors(keys, values, state.W1_eval, state.W2_eval, act, dgd,
                                                    self_generated), coefficients, complete)
        return (None if queries is None else memory_read(queries, new.W1, new.W2, act)), new
    flat = [None if t is None else t.flatten(0, 1) for t in (keys, values, queries, *coefficients)]
    new, out = chunk_update_read(FastWeights(*(t.flatten(0, 1) for t in state)), *flat[:3], flat[3:], act, dgd,
                                 self_generated, (G // H, H))
    new = with_eval(state, *(t.unflatten(0, (B, G)) for t in new), complete)
    return (None if out is None else out.unflatten(0, (B, G))), new


def _restart_at_boundary(state: FastWeights, counts, chunk: int) -> FastWeights:
    """Rows whose count sits on a chunk boundary evaluate their next chunk at their current weights."""
    start = counts % chunk == 0
    starting = int(start.sum())  # all or no rows (training, one sequence decoding): no selects over the state
    if starting == start.numel():
        return state._replace(W1_eval=state.W1, W2_eval=state.W2)
    if starting == 0:
        return state
    start = row_flags(start, state.W1)
    return state._replace(W1_eval=torch.where(start, state.W1, state.W1_eval),
                          W2_eval=torch.where(start, state.W2, state.W2_eval))


def _masked_chunk_inputs(active, eta, log_alpha):
    act_f = active.to(eta.dtype)[:, None, :]
    return act_f, eta * act_f, log_alpha * act_f


def _expand_groups(x, groups: int):
    """(B, H, ...) per-head quantity -> (B, P*H, ...) for P = groups // H memories sharing it."""
    return x if x.shape[1] == groups else x.repeat(1, groups // x.shape[1], *([1] * (x.dim() - 2)))


@torch.compiler.disable
def chunked_memory_scan(state, queries, keys, values, eta, log_alpha, log_beta, mask, counts, chunk, act, dgd,
                        self_generated, lr_scale=1.0, recompute=0, compile=False):
    """Output memory: reads o_t = M_{W_t}(q_t) while learning on (k_t, vhat_t). queries/keys/values (B,G,T,d),
    eta/log_alpha (B,G,T), mask (B,T) prefix of real tokens. Returns outputs (B,G,T,d) and the new state.
    `recompute` and `compile`: see `scan_chunks` (the same in the other chunked scans)."""
    T = queries.shape[2]
    state = _restart_at_boundary(state, counts, chunk)
    grid = slot_grid(counts, mask.sum(-1), chunk, mask.shape[1])
    (q, k, v), active = _slots((queries, keys, values), grid, 2)
    (eta_s, la_s), _ = _slots((eta * lr_scale, log_alpha), grid, 2)
    act_f, eta_m, la_m = _masked_chunk_inputs(active, eta_s, la_s)
    coefficients = piece_coefficients(eta_m, la_m, log_beta, act_f, grid.sizes)
    step_fn = compiled(memory_chunk_step) if compile else memory_chunk_step
    complete = _chunk_complete(active, grid)

    def step(state, i, q_c, k_c, v_c, active_c, *coefficients_c):
        out, state = step_fn(state, q_c, k_c, v_c, coefficients_c, complete(i, active_c), act, dgd, self_generated)
        return (out,), state

    pieces = [(*chunk, *coeffs) for chunk, coeffs in zip(zip(*_chunks((q, k, v, active), grid.sizes)), coefficients)]
    (outs,), state = scan_chunks(step, state, pieces, recompute)
    return from_slots(outs, grid, T, 2), state


@torch.compiler.disable
def chunked_projection_scan(state, inputs, adaptive, produce, log_beta, mask, counts, chunk, act, dgd,
                            self_generated, lr_scale=1.0, recompute=0, compile=False):
    """Projection memories: inputs (B, P, H, T, d) for the boxes k, v, eta, alpha; the boxes flagged in `adaptive`
    pass through their memory (at chunk-start weights), the others are read as they are. `produce(outputs)` maps the
    boxes' outputs to (keys, values (B,H,T,d), eta, log_alpha (B,H,T)). The adaptive memories then learn on
    (k_t, M(v_t)). The state's groups are (memory, head) flattened; log_beta (H,) is per head, as eta and alpha are.
    Returns produce's four tensors for all T tokens and the new state."""
    T = inputs.shape[3]
    state = _restart_at_boundary(state, counts, chunk)
    grid = slot_grid(counts, mask.sum(-1), chunk, mask.shape[1])
    x, active = to_slots(inputs, grid, 3)
    step_fn = compiled(projection_chunk_step) if compile else projection_chunk_step
    complete = _chunk_complete(active, grid)

    def step(state, i, u, active_c):
        return step_fn(state, u, active_c, complete(i, active_c), adaptive, produce, log_beta, act, dgd,
                       self_generated, lr_scale)

    produced, state = scan_chunks(step, state, list(zip(x.split(grid.sizes, 3), active.split(grid.sizes, 1))),
                                  recompute)
    return (*(from_slots(t, grid, T, 2) for t in produced), state)


@torch.compiler.disable
def chunked_fused_scan(state, queries, inputs, adaptive, produce, log_beta, mask, counts, chunk, act, dgd,
                       self_generated, lr_scale=1.0, recompute=0, compile=False):
    """Projection memories and output memory in one pass when they share the chunk size: per chunk, the projection
    memories produce k, v, eta, alpha at their chunk-start weights, then all P memories (stacked: state tensors
    (B, P, H, ...), the output memory last) take their updates in one batched computation, sharing the per-head
    decay/momentum coefficients; the output memory also reads. Same results as `chunked_projection_scan` followed
    by `chunked_memory_scan`. Returns (outputs (B,H,T,d), the new state)."""
    T = inputs.shape[3]
    state = _restart_at_boundary(state, counts, chunk)
    grid = slot_grid(counts, mask.sum(-1), chunk, mask.shape[1])
    (x, q), active = _slots((inputs, queries[:, None]), grid, 3)
    step_fn = compiled(fused_chunk_step) if compile else fused_chunk_step
    complete = _chunk_complete(active, grid)

    def step(state, i, u, q_c, active_c):
        out, state = step_fn(state, u, q_c, active_c, complete(i, active_c), adaptive, produce, log_beta, act, dgd,
                             self_generated, lr_scale)
        return (out,), state

    pieces = list(zip(x.split(grid.sizes, 3), q[:, 0].split(grid.sizes, 2), active.split(grid.sizes, 1)))
    (outs,), state = scan_chunks(step, state, pieces, recompute)
    return from_slots(outs, grid, T, 2), state


def scan_chunks(step, state, pieces, recompute: int = 0):
    """Runs `outs_i, state = step(state, i, *pieces[i])` over the pieces (outs_i a tuple of (B, G, n_i, ...)
    tensors) and returns the outputs concatenated along the slot axis, and the final state.

    `recompute` = k > 0, while autograd records: every k pieces form one `torch.utils.checkpoint` segment, so
    backward keeps only the state at segment boundaries (with the segments' inputs and outputs) and recomputes a
    segment's chunks when it reaches them: activation memory stops growing with the number of chunks times their
    C x C intermediates, for about one more forward of the loop.
    The chunked scans stay outside `torch.compile(model)`: unrolled, the loop would make one graph per length
    (minutes each), and the slot grid's Python ints, new at every decoded token, one recompile per token.
    `compile` in the scans compiles the per-chunk step instead, a graph per chunk shape."""

    def run(first, state, *flat):
        n = len(flat) // len(pieces[0])
        outs = []
        for j in range(n):
            out, state = step(state, first + j, *flat[j::n])
            outs.append(out)
        return tuple(torch.cat(parts, 2) for parts in zip(*outs)), state

    if not (recompute and torch.is_grad_enabled()):
        return run(0, state, *(t for part in zip(*pieces) for t in part))
    kernel = cpu_kernel_enabled()  # backward recomputes outside the model's `memory_kernel` switch: take it along

    def segment(*args):
        with cpu_kernel_disabled(not kernel):
            return run(*args)

    outs = []
    for first in range(0, len(pieces), recompute):
        flat = [t for part in zip(*pieces[first:first + recompute]) for t in part]  # grouped by field
        out, state = torch.utils.checkpoint.checkpoint(segment, first, state, *flat, use_reentrant=False)
        outs.append(out)
    return tuple(torch.cat(parts, 2) for parts in zip(*outs)), state


_COMPILED = {}
COMPILE_BACKEND = "inductor"  # the tests switch to "aot_eager" where they check the plumbing, not the kernels


def compiled(fn):
    """`torch.compile(fn)`, made once per step function and backend (its graphs are then cached per chunk shape)."""
    key = (fn, COMPILE_BACKEND)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=False, backend=COMPILE_BACKEND)
    return _COMPILED[key]


def memory_chunk_step(state, q_c, k_c, v_c, coefficients, complete, act, dgd, self_generated):
    """One chunk of `chunked_memory_scan` (its coefficients computed before the loop)."""
    return chunk_step(state, k_c, v_c, coefficients, complete, act, dgd, self_generated, queries=q_c)


def read_boxes(u, W1, W2, adaptive, act):
    """The box inputs u (B, 4, H, n, d) with the adaptive ones passed through their memories (W (B, n_adaptive*H
    or (B, n_adaptive, H, ...)); static boxes pass through as they are (a stack, not an index_put: its backward
    is a scatter)."""
    n_adaptive = sum(adaptive)
    if not n_adaptive:
        return u
    B, _, H, n, d = u.shape
    which = [i for i, a in enumerate(adaptive) if a]
    selected = u if n_adaptive == len(adaptive) else u[:, which]
    read = (MemoryRead.apply if torch.is_grad_enabled() else memory_read)(
        selected.reshape(B, *W1.shape[1:-2], n, d), W1, W2, act).view(B, n_adaptive, H, n, d)
    if n_adaptive == len(adaptive):
        return read
    read = iter(read.unbind(1))
    return torch.stack([next(read) if a else box for a, box in zip(adaptive, u.unbind(1))], 1)


def projection_chunk_step(state, u, active_c, complete, adaptive, produce, log_beta, act, dgd, self_generated,
                          lr_scale):
    """One chunk of `chunked_projection_scan`: the boxes' outputs at the chunk-start weights, then the updates. The
    memories of a head share its keys, values and coefficients (computed once per head, repeated inside the chunk)."""
    keys, values, eta, log_alpha = produced = produce(read_boxes(u, state.W1_eval, state.W2_eval, adaptive, act))
    act_f, eta_c, la_c = _masked_chunk_inputs(active_c, eta * lr_scale, log_alpha)
    coefficients = coefficients_for(eta_c, la_c, log_beta, act_f)
    _, state = chunk_step(state, keys, values, coefficients, complete, act, dgd, self_generated)
    return produced, state


def fused_chunk_step(state, u, q_c, active_c, complete, adaptive, produce, log_beta, act, dgd, self_generated,
                     lr_scale):
    """One chunk of `chunked_fused_scan`: u (B, 4, H, C, d) box inputs, q_c (B, H, C, d) queries."""
    n_adaptive = sum(adaptive)
    keys, values, eta, log_alpha = produce(read_boxes(u, state.W1_eval[:, :n_adaptive],
                                                      state.W2_eval[:, :n_adaptive], adaptive, act))
    act_f, eta_c, la_c = _masked_chunk_inputs(active_c, eta * lr_scale, log_alpha)
    coefficients = coefficients_for(eta_c, la_c, log_beta, act_f)
    if q_c.shape[-2] == 1:  # one slot (see chunk_step)
        factors = inner_update_factors(keys[:, None], values[:, None], state.W1_eval, state.W2_eval, act, dgd,
                                       self_generated)
        new = end_state(state, factors, [t if t is None else t[:, None] for t in coefficients], complete)
        return memory_read(q_c, new.W1[:, -1], new.W2[:, -1], act), new
    B, P, H = state.W1.shape[:3]
    shared = [None if t is None else t.flatten(0, 1) for t in (keys, values, q_c, *coefficients)]  # (B H, ...)
    new, out = chunk_update_read(FastWeights(*(t.flatten(0, 2) for t in state)), *shared[:3], shared[3:], act, dgd,
                                 self_generated, (P, H))
    return out.view(B, H, *out.shape[1:]), with_eval(state, *(t.view(B, P, H, *t.shape[1:]) for t in new), complete)


def _chunks(tensors, sizes):
    """Each (B, ..., S) or (B, ..., S, d) slot tensor cut into its pieces along the slot axis. One split instead of a
    slice per piece: the backward of a slice writes into a zero tensor of the full length, once per piece."""
    return [t.split(sizes, t.dim() - (2 if t.dim() == 4 else 1)) for t in tensors]


def _slots(tensors, grid, dim):
    out = [to_slots(t, grid, dim) for t in tensors]
    return [o[0] for o in out], out[0][1]


# --------------------------------------------------------------------------------------------------------------
# Naive references: one token at a time, the inner gradient by autograd.
# --------------------------------------------------------------------------------------------------------------


def _inner_gradient(W1, W2, key, target, act, dgd):
    """u = grad_W 0.5 ||M_W(k) - vhat||^2 + dgd * (W a) a^T at W (target held constant), via autograd at W + 0."""
    outer = torch.is_grad_enabled()
    with torch.enable_grad():
        d1 = torch.zeros_like(W1, requires_grad=True)
        d2 = torch.zeros_like(W2, requires_grad=True)
        loss = 0.5 * (memory_read(key, W1 + d1, W2 + d2, act) - target).pow(2).sum()
        g1, g2 = torch.autograd.grad(loss, (d1, d2), create_graph=outer)
    fn, grad = ACTIVATIONS[act]
    a1, dh = fn(key @ W2.mT), grad(key @ W2.mT)
    u1 = (g1 + dgd * (a1 @ W1.mT).mT @ a1) * step_scale_w1(a1)
    u2 = (g2 + dgd * (key @ W2.mT).mT @ key) * step_scale_w2(dh, W1)
    return u1, u2


def _naive_update(state: FastWeights, row, start, end, key, target, eta, alpha, beta, act, dgd):
    """Apply one token's update to row `row` of the state (in a functional way). key/target (G, 1, d)."""
    W1e, W2e, W1, W2, S1, S2 = (t[row] for t in state)
    if start:
        W1e, W2e = W1, W2
    u1, u2 = _inner_gradient(W1e, W2e, key, target, act, dgd)
    e, a = eta[:, None, None], alpha[:, None, None]
    if beta is None:  # no momentum: W <- alpha W - eta u (S stays zero)
        W1, W2 = a * W1 - e * u1, a * W2 - e * u2
    else:
        b = beta[:, None, None]
        S1, S2 = b * S1 - e * u1, b * S2 - e * u2
        W1, W2 = a * W1 + S1, a * W2 + S2
    if end:  # the chunk is complete: the next one is evaluated at the new weights
        W1e, W2e = W1, W2
    return W1e, W2e, W1, W2, S1, S2


def _stack_rows(rows):
    return FastWeights(*(torch.stack(parts) for parts in zip(*rows)))


def naive_memory_scan(state, queries, keys, values, eta, log_alpha, log_beta, mask, counts, chunk, act, dgd,
                      self_generated, lr_scale=1.0):
    """Reference for `chunked_memory_scan`: W_eval <- W at each chunk start, then per token
    u = inner gradient at W_eval, S <- beta S - eta u, W <- alpha W + S, and read o_t = M_W(q_t)."""
    B, G, T, d = queries.shape
    beta = None if log_beta is None else log_beta.exp()
    state = _restart_at_boundary(state, counts, chunk)
    outputs, rows = [], []
    for b in range(B):
        row = FastWeights(*(t[b:b + 1] for t in state))
        outs = []
        for t in range(T):
            if not mask[b, t]:
                outs.append(queries[b, :, t])
                continue
            start = int(counts[b] + t) % chunk == 0
            W1e, W2e = (row.W1, row.W2) if start else (row.W1_eval, row.W2_eval)
            v = values[b, :, t:t + 1]
            target = memory_read(v, W1e[0], W2e[0], act) if self_generated else v
            end = int(counts[b] + t + 1) % chunk == 0
            new = _naive_update(row, 0, start, end, keys[b, :, t:t + 1], target, eta[b, :, t] * lr_scale, log_alpha[b, :, t].exp(),
                                beta, act, dgd)
            row = FastWeights(*(x[None] for x in new))
            outs.append(memory_read(queries[b, :, t:t + 1], row.W1[0], row.W2[0], act)[:, 0])
        outputs.append(torch.stack(outs, 1))
        rows.append(tuple(x[0] for x in row))
    return torch.stack(outputs), _stack_rows(rows)


def naive_projection_scan(state, inputs, adaptive, produce, log_beta, mask, counts, chunk, act, dgd,
                          self_generated, lr_scale=1.0):
    """Reference for `chunked_projection_scan`, one token at a time."""
    B, P, H, T, d = inputs.shape
    sel = torch.tensor(adaptive, device=inputs.device)
    beta = None if log_beta is None else log_beta.repeat(state.W1.shape[1] // H).exp()  # per head -> per group
    state = _restart_at_boundary(state, counts, chunk)
    results, rows = [], []
    for b in range(B):
        row = FastWeights(*(t[b:b + 1] for t in state))
        per_token = []
        for t in range(T):
            u = inputs[b:b + 1, :, :, t:t + 1]
            start = int(counts[b] + t) % chunk == 0
            W1e, W2e = (row.W1, row.W2) if start else (row.W1_eval, row.W2_eval)
            outs = u.clone()
            if sel.any():
                outs[:, sel] = memory_read(u[:, sel].reshape(1, -1, 1, d), W1e, W2e, act).view(1, -1, H, 1, d)
            keys, values, eta, log_alpha = produce(outs)
            per_token.append((keys, values, eta, log_alpha))
            if mask[b, t] and sel.any():
                G = row.W1.shape[1]
                k, v = _expand_groups(keys, G)[0], _expand_groups(values, G)[0]
                target = memory_read(v, W1e[0], W2e[0], act) if self_generated else v
                end = int(counts[b] + t + 1) % chunk == 0
                new = _naive_update(row, 0, start, end, k, target, _expand_groups(eta, G)[0, :, 0] * lr_scale,
                                    _expand_groups(log_alpha, G)[0, :, 0].exp(), beta, act, dgd)
                row = FastWeights(*(x[None] for x in new))
        results.append([torch.cat(parts, 2) for parts in zip(*per_token)])
        rows.append(tuple(x[0] for x in row))
    produced = [torch.cat(parts, 0) for parts in zip(*results)]
    return (*produced, _stack_rows(rows))


MEMORY_SCANS = {"chunked": chunked_memory_scan, "naive": naive_memory_scan}
PROJECTION_SCANS = {"chunked": chunked_projection_scan, "naive": naive_projection_scan}

"""Triton kernel of `memory_triton.fused_scan` (the math is in that module's docstring). Imported only where Triton
is installed; `TRITON_INTERPRET=1`, set before the first import, makes Triton interpret it on the CPU."""

try:
    import triton
    import triton.language as tl
except ImportError as error:  # memory_triton imports this module only when Triton is there
    raise ImportError("modeling_hope's fused scan kernel needs Triton (pip install triton)") from error


@triton.jit
def act_and_grad(z, GELU: tl.constexpr):
    if GELU:
        cdf = 0.5 * (1 + tl.erf(z * 0.7071067811865476))
        pdf = tl.exp(-0.5 * z * z) * 0.3989422804014327
        return z * cdf, cdf + z * pdf
    s = tl.sigmoid(z)
    f = z * s
    return f, s + f * (1 - s)


@triton.jit
def load_mat(p, offs, mask, DTYPE: tl.constexpr):
    return tl.load(p + offs, mask=mask, other=0.0).to(DTYPE)


@triton.jit
def mm(a, b, PREC: tl.constexpr):
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def read_box(x, W1, W2, GELU: tl.constexpr, PREC: tl.constexpr):
    """M(x) = x + W1 act(W2 x) for rows x (CB, DB); W1 (DB, RB), W2 (RB, DB)."""
    h, _ = act_and_grad(mm(x, tl.trans(W2), PREC), GELU)
    return x + mm(h, tl.trans(W1), PREC)


@triton.jit
def last(x, idx, n):
    """x[n - 1] along the first axis: idx is arange (a vector x) or arange[:, None] (a matrix x)."""
    return tl.sum(tl.where(idx == n - 1, x, 0.0), 0)

@triton.jit
def load_state(p_in, p_out, m, offs, mask, first, DTYPE: tl.constexpr):
    """A state matrix as the piece starts: from the input state in the first piece, from the output after."""
    if first:
        x = load_mat(p_in + m, offs, mask, DTYPE)
    else:
        x = load_mat(p_out + m, offs, mask, DTYPE)
    return x


@triton.jit
def load_eval(We_in, W_in, W_out, m, offs, mask, first, pos, DTYPE: tl.constexpr):
    """The chunk-start weights: the stored ones when the first piece starts inside a chunk, else W itself."""
    if first:
        if pos != 0:
            x = load_mat(We_in + m, offs, mask, DTYPE)
        else:
            x = load_mat(W_in + m, offs, mask, DTYPE)
    else:
        x = load_mat(W_out + m, offs, mask, DTYPE)
    return x


@triton.jit
def inner_factors(keys, values, W1e, W2e, dgd, SELF_GEN: tl.constexpr, GELU: tl.constexpr, PREC: tl.constexpr):
    """a1 = act(W2e k), b1 and b2 of the rank-one inner updates (`memory_chunk.factor_terms`)."""
    Z = mm(keys, tl.trans(W2e), PREC)  # (CB, RB)
    Hk, dH = act_and_grad(Z, GELU)
    Y = mm(Hk, tl.trans(W1e), PREC)  # (CB, DB)
    if SELF_GEN:
        Hv, _ = act_and_grad(mm(values, tl.trans(W2e), PREC), GELU)
        err = keys + Y - (values + mm(Hv, tl.trans(W1e), PREC))
    else:
        err = keys + Y - values
    col_norms = tl.sum(W1e * W1e, 0)  # (RB,)
    e1 = mm(err, W1e, PREC)  # (CB, RB)
    s1 = 1.0 / (1.0 + tl.sum(Hk * Hk, 1))
    s2 = 1.0 / (1.0 + tl.sum(dH * dH * col_norms[None, :], 1))
    return Hk, (err + dgd * Y) * s1[:, None], (e1 * dH + dgd * Z) * s2[:, None]


@triton.jit
def update_pair(W_in, W_out, S_in, S_out, We_out, m, offs, mask, first, complete, b, a, A_end, c_end, beta_end, g_end,
                s_end, MOMENTUM: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr):
    """W' = A_C W + c_C S - sum_i G_Ci b_i a_i^T and S' = beta_C S - sum_i s_i b_i a_i^T for one of a memory's two
    matrices, stored once every thread has read it; W' is also the next chunk-start weights if the chunk completes."""
    W = load_state(W_in, W_out, m, offs, mask, first, DTYPE)
    S = load_state(S_in, S_out, m, offs, mask, first, DTYPE)
    Wn = A_end * W + c_end * S - mm(tl.trans(b * g_end[:, None]), a, PREC)
    if MOMENTUM:
        S = beta_end * S - mm(tl.trans(b * s_end[:, None]), a, PREC)
    tl.debug_barrier()
    ty = W_out.dtype.element_ty
    tl.store(W_out + m + offs, Wn.to(ty), mask=mask)
    tl.store(S_out + m + offs, S.to(ty), mask=mask)
    if complete:
        tl.store(We_out + m + offs, Wn.to(ty), mask=mask)


@triton.jit
def memory_step(W1e_in, W2e_in, W1_in, W2_in, S1_in, S2_in, W1e_out, W2e_out, W1_out, W2_out, S1_out, S2_out, m,
                w1_offs, w1_mask, w2_offs, w2_mask, first, pos, complete, keys, values, dgd, A, c, G, A_end, c_end,
                beta_end, g_end, s_end, q_ptr, o_ptr, q_base, x_offs, x_mask, READ: tl.constexpr,
                MOMENTUM: tl.constexpr, SELF_GEN: tl.constexpr, GELU: tl.constexpr, DTYPE: tl.constexpr,
                PREC: tl.constexpr):
    """One memory's piece: its inner factors at the chunk-start weights, the dual-form read (READ: the output memory)
    at the piece-start state, then its updates. The chunk-start weights are stored here when the chunk goes on, and
    as W' by `update_pair` when it completes; no thread of the program reads the `*e_out` tensors."""
    W1e = load_eval(W1e_in, W1_in, W1_out, m, w1_offs, w1_mask, first, pos, DTYPE)
    W2e = load_eval(W2e_in, W2_in, W2_out, m, w2_offs, w2_mask, first, pos, DTYPE)
    Hk, b1, b2 = inner_factors(keys, values, W1e, W2e, dgd, SELF_GEN, GELU, PREC)
    if complete:
        pass
    else:
        ty = W1e_out.dtype.element_ty
        tl.store(W1e_out + m + w1_offs, W1e.to(ty), mask=w1_mask)
        tl.store(W2e_out + m + w2_offs, W2e.to(ty), mask=w2_mask)
    if READ:
        q = tl.load(q_ptr + q_base + x_offs, mask=x_mask, other=0.0).to(DTYPE)
        W2 = load_state(W2_in, W2_out, m, w2_offs, w2_mask, first, DTYPE)
        S2 = load_state(S2_in, S2_out, m, w2_offs, w2_mask, first, DTYPE)
        z = A[:, None] * mm(q, tl.trans(W2), PREC) + c[:, None] * mm(q, tl.trans(S2), PREC) \
            - mm(G * mm(q, tl.trans(keys), PREC), b2, PREC)
        hq, _ = act_and_grad(z, GELU)
        W1 = load_state(W1_in, W1_out, m, w1_offs, w1_mask, first, DTYPE)
        S1 = load_state(S1_in, S1_out, m, w1_offs, w1_mask, first, DTYPE)
        o = q + A[:, None] * mm(hq, tl.trans(W1), PREC) + c[:, None] * mm(hq, tl.trans(S1), PREC) \
            - mm(G * mm(hq, tl.trans(Hk), PREC), b1, PREC)
        tl.store(o_ptr + q_base + x_offs, o.to(o_ptr.dtype.element_ty), mask=x_mask)
    update_pair(W1_in, W1_out, S1_in, S1_out, W1e_out, m, w1_offs, w1_mask, first, complete, b1, Hk, A_end, c_end,
                beta_end, g_end, s_end, MOMENTUM, DTYPE, PREC)
    update_pair(W2_in, W2_out, S2_in, S2_out, W2e_out, m, w2_offs, w2_mask, first, complete, b2, keys, A_end, c_end,
                beta_end, g_end, s_end, MOMENTUM, DTYPE, PREC)


@triton.jit(do_not_specialize=["T"])  # one compile for every length
def fused_scan_kernel(
        W1e_in, W2e_in, W1_in, W2_in, S1_in, S2_in, W1e_out, W2e_out, W1_out, W2_out, S1_out, S2_out,
        u_ptr, q_ptr, o_ptr, ew_ptr, eb_ptr, aw_ptr, ab_ptr, lb_ptr,
        offsets_ptr, lengths_ptr, T, H, eta_max, lr_scale, dgd,
        C: tl.constexpr, CB: tl.constexpr, D: tl.constexpr, DB: tl.constexpr, R: tl.constexpr,
        RB: tl.constexpr, P: tl.constexpr, AK: tl.constexpr, AV: tl.constexpr, AE: tl.constexpr,
        AA: tl.constexpr, HAS_ALPHA: tl.constexpr, MOMENTUM: tl.constexpr, SELF_GEN: tl.constexpr,
        VALUE_NORM: tl.constexpr, GELU: tl.constexpr, DTYPE: tl.constexpr, PREC: tl.constexpr):
    """Program (b, h) walks row b's pieces for head h's P memories (the output memory last). The state is read from
    the `_in` tensors in the first piece and from the `_out` ones after; the boxes u (B, 4, H, T, d), queries and
    outputs (B, H, T, d) and the memories (B, P, H, ...) are contiguous. *B sizes are the padded block sizes."""
    pid = tl.program_id(0).to(tl.int64)
    b, h = pid // H, pid % H
    rc, rd, rr = tl.arange(0, CB), tl.arange(0, DB), tl.arange(0, RB)
    w1_offs, w1_mask = rd[:, None] * R + rr[None, :], (rd[:, None] < D) & (rr[None, :] < R)  # W1 (d, R)
    w2_offs, w2_mask = rr[:, None] * D + rd[None, :], (rr[:, None] < R) & (rd[None, :] < D)  # W2 (R, d)
    causal = rc[:, None] >= rc[None, :]
    box_stride = H * T * D
    u_base = u_ptr + b * 4 * box_stride + h * T * D
    q_base = (b * H + h) * T * D
    ew = tl.load(ew_ptr + h * D + rd, mask=rd < D, other=0.0).to(DTYPE)
    eb = tl.load(eb_ptr + h).to(DTYPE)
    if HAS_ALPHA:
        aw = tl.load(aw_ptr + h * D + rd, mask=rd < D, other=0.0).to(DTYPE)
        ab = tl.load(ab_ptr + h).to(DTYPE)
    if MOMENTUM:
        lb = tl.load(lb_ptr + h).to(DTYPE)
    PK: tl.constexpr = 0
    PV: tl.constexpr = AK
    PE: tl.constexpr = AK + AV
    PA: tl.constexpr = AK + AV + AE
    # row b's real tokens are its first `length` (a prefix), the first at slot `off` of its chunk
    off = tl.load(offsets_ptr + b)
    length = tl.load(lengths_ptr + b)
    first_size = C - off
    pieces = tl.where(length > 0, 1 + tl.maximum(length - first_size + C - 1, 0) // C, 0)
    for i in range(pieces):
        # piece i: tokens t0 .. t0 + n - 1, at slot pos of their chunk (only the first piece starts inside one)
        pos = tl.where(i == 0, off, 0)
        t0 = tl.where(i == 0, 0, C - off + (i - 1) * C)
        n = tl.minimum(C - pos, length - t0)
        valid = rc < n
        x_offs = (t0 + rc)[:, None] * D + rd[None, :]
        x_mask = valid[:, None] & (rd[None, :] < D)
        first = i == 0
        # the memories' weights are read from the input state in the first piece, from the output after
        # (the program's own earlier stores: the barrier at the end of the piece orders them)
        # ---- boxes and produce
        outs_k = tl.load(u_base + x_offs, mask=x_mask, other=0.0).to(DTYPE)
        outs_v = tl.load(u_base + box_stride + x_offs, mask=x_mask, other=0.0).to(DTYPE)
        outs_e = tl.load(u_base + 2 * box_stride + x_offs, mask=x_mask, other=0.0).to(DTYPE)
        outs_a = tl.load(u_base + 3 * box_stride + x_offs, mask=x_mask, other=0.0).to(DTYPE)
        for p in tl.static_range(P - 1):
            m = ((b * P + p) * H + h) * (D * R)
            W1e = load_eval(W1e_in, W1_in, W1_out, m, w1_offs, w1_mask, first, pos, DTYPE)
            W2e = load_eval(W2e_in, W2_in, W2_out, m, w2_offs, w2_mask, first, pos, DTYPE)
            if AK and p == PK:
                outs_k = read_box(outs_k, W1e, W2e, GELU, PREC)
            if AV and p == PV:
                outs_v = read_box(outs_v, W1e, W2e, GELU, PREC)
            if AE and p == PE:
                outs_e = read_box(outs_e, W1e, W2e, GELU, PREC)
            if AA and p == PA:
                outs_a = read_box(outs_a, W1e, W2e, GELU, PREC)
        keys = outs_k / tl.maximum(tl.sqrt(tl.sum(outs_k * outs_k, 1)), 1e-6)[:, None]
        values = outs_v
        if VALUE_NORM:
            values = outs_v / tl.maximum(tl.sqrt(tl.sum(outs_v * outs_v, 1)), 1e-6)[:, None]
        active = valid.to(DTYPE)
        eta = eta_max * tl.sigmoid(tl.sum(outs_e * ew[None, :], 1) + eb) * lr_scale * active
        log_alpha = tl.zeros([CB], dtype=DTYPE)
        if HAS_ALPHA:
            x = tl.sum(outs_a * aw[None, :], 1) + ab
            log_alpha = (tl.minimum(x, 0.0) - tl.log(1 + tl.exp(-tl.abs(x)))) * active
        # ---- coefficients (fast_weight_memory.chunk_coefficients)
        log_A = tl.cumsum(log_alpha, 0)
        decay = tl.exp(tl.where(causal, log_A[:, None] - log_A[None, :], float("-inf")))
        if MOMENTUM:
            log_B = tl.cumsum(active, 0) * lb
            mom = tl.exp(tl.where(causal, log_B[:, None] - log_B[None, :], float("-inf")))
            gamma = mm(decay, mom * active[:, None], PREC)
            c = tl.sum(decay * (active * tl.exp(log_B))[None, :], 1)
            beta_end = tl.exp(last(log_B, rc, CB))
            s_end = last(mom, rc[:, None], CB) * eta
        else:
            gamma = decay * active[None, :]
            c = tl.zeros([CB], dtype=DTYPE)
            beta_end, s_end = 1.0, c  # unused without momentum
        A = tl.exp(log_A)
        G = gamma * eta[None, :]
        g_end = last(G, rc[:, None], CB)
        A_end, c_end = last(A, rc, CB), last(c, rc, CB)
        complete = pos + n == C
        # ---- every memory's update; the output memory (the last) also reads. The adaptive memories in a loop, not
        # unrolled, and each matrix loaded where it is used: fewer tiles alive at once, less spilling
        for p in range(P - 1):
            memory_step(W1e_in, W2e_in, W1_in, W2_in, S1_in, S2_in, W1e_out, W2e_out, W1_out, W2_out, S1_out, S2_out,
                        ((b * P + p) * H + h) * (D * R), w1_offs, w1_mask, w2_offs, w2_mask, first, pos, complete,
                        keys, values, dgd, A, c, G, A_end, c_end, beta_end, g_end, s_end, q_ptr, o_ptr, q_base, x_offs,
                        x_mask, False, MOMENTUM, SELF_GEN, GELU, DTYPE, PREC)
        memory_step(W1e_in, W2e_in, W1_in, W2_in, S1_in, S2_in, W1e_out, W2e_out, W1_out, W2_out, S1_out, S2_out,
                    ((b * P + P - 1) * H + h) * (D * R), w1_offs, w1_mask, w2_offs, w2_mask, first, pos, complete,
                    keys, values, dgd, A, c, G, A_end, c_end, beta_end, g_end, s_end, q_ptr, o_ptr, q_base, x_offs,
                    x_mask, True, MOMENTUM, SELF_GEN, GELU, DTYPE, PREC)
        tl.debug_barrier()
    if pieces == 0:  # a row without tokens in this call keeps its state (its chunk restarts at a boundary)
        for p in tl.static_range(P):
            m = ((b * P + p) * H + h) * (D * R)
            ty = W1e_out.dtype.element_ty
            W1e = load_eval(W1e_in, W1_in, W1_out, m, w1_offs, w1_mask, True, off, ty)
            W2e = load_eval(W2e_in, W2_in, W2_out, m, w2_offs, w2_mask, True, off, ty)
            tl.store(W1e_out + m + w1_offs, W1e, mask=w1_mask)
            tl.store(W2e_out + m + w2_offs, W2e, mask=w2_mask)
            tl.store(W1_out + m + w1_offs, tl.load(W1_in + m + w1_offs, mask=w1_mask), mask=w1_mask)
            tl.store(W2_out + m + w2_offs, tl.load(W2_in + m + w2_offs, mask=w2_mask), mask=w2_mask)
            tl.store(S1_out + m + w1_offs, tl.load(S1_in + m + w1_offs, mask=w1_mask), mask=w1_mask)
            tl.store(S2_out + m + w2_offs, tl.load(S2_in + m + w2_offs, mask=w2_mask), mask=w2_mask)

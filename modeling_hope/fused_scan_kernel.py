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
            if first:
                if pos == 0:
                    W1e = load_mat(W1_in + m, w1_offs, w1_mask, DTYPE)
                    W2e = load_mat(W2_in + m, w2_offs, w2_mask, DTYPE)
                else:
                    W1e = load_mat(W1e_in + m, w1_offs, w1_mask, DTYPE)
                    W2e = load_mat(W2e_in + m, w2_offs, w2_mask, DTYPE)
            else:
                W1e = load_mat(W1_out + m, w1_offs, w1_mask, DTYPE)
                W2e = load_mat(W2_out + m, w2_offs, w2_mask, DTYPE)
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
        A = tl.exp(log_A)
        G = gamma * eta[None, :]
        g_end = last(G, rc[:, None], CB)
        A_end, c_end = last(A, rc, CB), last(c, rc, CB)
        complete = pos + n == C
        # ---- every memory's update; the output memory (the last) also reads
        for p in tl.static_range(P):
            m = ((b * P + p) * H + h) * (D * R)
            if first:
                W1 = load_mat(W1_in + m, w1_offs, w1_mask, DTYPE)
                W2 = load_mat(W2_in + m, w2_offs, w2_mask, DTYPE)
                S1 = load_mat(S1_in + m, w1_offs, w1_mask, DTYPE)
                S2 = load_mat(S2_in + m, w2_offs, w2_mask, DTYPE)
                if pos == 0:
                    W1e, W2e = W1, W2
                else:
                    W1e = load_mat(W1e_in + m, w1_offs, w1_mask, DTYPE)
                    W2e = load_mat(W2e_in + m, w2_offs, w2_mask, DTYPE)
            else:
                W1 = load_mat(W1_out + m, w1_offs, w1_mask, DTYPE)
                W2 = load_mat(W2_out + m, w2_offs, w2_mask, DTYPE)
                S1 = load_mat(S1_out + m, w1_offs, w1_mask, DTYPE)
                S2 = load_mat(S2_out + m, w2_offs, w2_mask, DTYPE)
                W1e, W2e = W1, W2
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
            b1 = (err + dgd * Y) * s1[:, None]
            b2 = (e1 * dH + dgd * Z) * s2[:, None]
            if p == P - 1:
                q = tl.load(q_ptr + q_base + x_offs, mask=x_mask, other=0.0).to(DTYPE)
                z = A[:, None] * mm(q, tl.trans(W2), PREC) + c[:, None] * mm(q, tl.trans(S2), PREC) \
                    - mm(G * mm(q, tl.trans(keys), PREC), b2, PREC)
                hq, _ = act_and_grad(z, GELU)
                o = q + A[:, None] * mm(hq, tl.trans(W1), PREC) + c[:, None] * mm(hq, tl.trans(S1), PREC) \
                    - mm(G * mm(hq, tl.trans(Hk), PREC), b1, PREC)
                tl.store(o_ptr + q_base + x_offs, o.to(o_ptr.dtype.element_ty), mask=x_mask)
            W1n = A_end * W1 + c_end * S1 - mm(tl.trans(b1 * g_end[:, None]), Hk, PREC)
            W2n = A_end * W2 + c_end * S2 - mm(tl.trans(b2 * g_end[:, None]), keys, PREC)
            if MOMENTUM:
                S1 = beta_end * S1 - mm(tl.trans(b1 * s_end[:, None]), Hk, PREC)
                S2 = beta_end * S2 - mm(tl.trans(b2 * s_end[:, None]), keys, PREC)
            if complete:
                W1e, W2e = W1n, W2n
            tl.debug_barrier()  # every thread has read this memory's tiles before any overwrites them
            ty = W1_out.dtype.element_ty
            tl.store(W1_out + m + w1_offs, W1n.to(ty), mask=w1_mask)
            tl.store(W2_out + m + w2_offs, W2n.to(ty), mask=w2_mask)
            tl.store(S1_out + m + w1_offs, S1.to(ty), mask=w1_mask)
            tl.store(S2_out + m + w2_offs, S2.to(ty), mask=w2_mask)
            tl.store(W1e_out + m + w1_offs, W1e.to(ty), mask=w1_mask)
            tl.store(W2e_out + m + w2_offs, W2e.to(ty), mask=w2_mask)
        tl.debug_barrier()
    if pieces == 0:  # a row without tokens in this call keeps its state (its chunk restarts at a boundary)
        for p in tl.static_range(P):
            m = ((b * P + p) * H + h) * (D * R)
            if off == 0:
                W1e = tl.load(W1_in + m + w1_offs, mask=w1_mask)
                W2e = tl.load(W2_in + m + w2_offs, mask=w2_mask)
            else:
                W1e = tl.load(W1e_in + m + w1_offs, mask=w1_mask)
                W2e = tl.load(W2e_in + m + w2_offs, mask=w2_mask)
            tl.store(W1e_out + m + w1_offs, W1e, mask=w1_mask)
            tl.store(W2e_out + m + w2_offs, W2e, mask=w2_mask)
            tl.store(W1_out + m + w1_offs, tl.load(W1_in + m + w1_offs, mask=w1_mask), mask=w1_mask)
            tl.store(W2_out + m + w2_offs, tl.load(W2_in + m + w2_offs, mask=w2_mask), mask=w2_mask)
            tl.store(S1_out + m + w1_offs, tl.load(S1_in + m + w1_offs, mask=w1_mask), mask=w1_mask)
            tl.store(S2_out + m + w2_offs, tl.load(S2_in + m + w2_offs, mask=w2_mask), mask=w2_mask)

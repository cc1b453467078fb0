"""Triton flash-attention kernels with forward-mode AD (JVP) and the primal backward.

Imported lazily by `jvp_attention` (never at package import): `triton.jit` decides at decoration
time whether kernels run compiled or in the CPU interpreter (TRITON_INTERPRET=1), so tests can set
the variable before the first launch. Layout (B, H, N, D); any last-dim-contiguous strides.

Per query row, with S = scale·QKᵀ + bias, P = softmax(S), tS = scale·(tQ Kᵀ + Q tKᵀ):
    O = P V,  tO = P tV + (P ⊙ tS) V − rowsum(P ⊙ tS) O,  LSE = logsumexp(S),  tLSE = rowsum(P ⊙ tS).
The online-softmax loop keeps the running max m, row sum l, P·V, [P·tV + (P⊙tS)·V] and rowsum(P⊙tS)
in registers, all rescaled by the same factor when m grows; N×N is never stored. tS is one
accumulator fed by two dots (the doubled-depth [Q|tQ]·[tK|K]ᵀ) and P·tV + (P⊙tS)·V share one
accumulator too, so the fused kernel keeps only two D-wide fp32 accumulators. Logits are in base 2
(exp2 is the fast path); LSE is stored in natural log.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Literal constants in the kernels: log2(e) = 1.4426950408889634, ln(2) = 0.6931471805599453.


@triton.jit
def _tile(ptr, rows, cols, stride_row, n_rows, n_cols):
    """Load a (rows × cols) tile of a row-major matrix, zero outside (n_rows, n_cols)."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * stride_row + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store_tile(ptr, tile, rows, cols, stride_row, n_rows, n_cols):
    """Store a tile (cast to the destination dtype) inside (n_rows, n_cols) only."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    tl.store(ptr + rows[:, None] * stride_row + cols[None, :], tile.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _logits2(q, k, bias_ptr, stride_bm, stride_bn, offs_m, offs_n, N_Q, N_K, qk_scale,
             HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    """Base-2 logits log2(e)·(scale·q kᵀ + bias) for one (BLOCK_M, BLOCK_N) tile; -inf past N_K."""
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if HAS_BIAS:
        in_range = (offs_m[:, None] < N_Q) & (offs_n[None, :] < N_K)
        b = tl.load(bias_ptr + offs_m[:, None] * stride_bm + offs_n[None, :] * stride_bn, mask=in_range, other=0.0)
        s += b.to(tl.float32) * 1.4426950408889634
    return tl.where(offs_n[None, :] < N_K, s, float("-inf"))


@triton.jit
def _saved_row_stats(LSE, DELTA, pid_bh, offs_m, N_Q):
    """These query rows' saved log-sum-exp in base 2 (+inf for padded / fully masked rows, so their P is 0)
    and their softmax-backward delta."""
    lse = tl.load(LSE + pid_bh * N_Q + offs_m, mask=offs_m < N_Q, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    delta = tl.load(DELTA + pid_bh * N_Q + offs_m, mask=offs_m < N_Q, other=0.0)
    return lse2, delta


@triton.jit
def _probs_and_dlogits(q, k, v, do, lse2, delta, bias_ptr, stride_bm, stride_bn, offs_m, offs_n, N_Q, N_K, qk_scale,
                       HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr):
    """One tile's P (recomputed from the saved LSE) and dS = P ⊙ (dO Vᵀ − delta)."""
    s = _logits2(q, k, bias_ptr, stride_bm, stride_bn, offs_m, offs_n, N_Q, N_K, qk_scale, HAS_BIAS, PRECISION)
    p = tl.exp2(s - lse2[:, None])
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
    return p, p * (dp - delta[:, None])


_LENGTHS = ["N_Q", "N_K", "N_Q_BUCKET", "N_K_BUCKET"]  # runtime ints: a new length never recompiles


@triton.jit(do_not_specialize=_LENGTHS)
def _fwd_kernel(
    Q, K, V, TQ, TK, TV, BIAS, O, TO, LSE, TLSE,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
    stqb, stqh, stqn, stkb, stkh, stkn, stvb, stvh, stvn,
    sbb, sbh, sbm, sbn, sob, soh, son, stob, stoh, ston,
    H, N_Q, N_K, D, scale, N_Q_BUCKET, N_K_BUCKET,
    HAS_BIAS: tl.constexpr, WITH_TANGENT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program = BLOCK_M query rows of one (batch, head): O, LSE and, if WITH_TANGENT, tO, tLSE."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)  # 64-bit offsets: B·H·N·D may pass 2³¹
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqn, N_Q, D)
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if WITH_TANGENT:
        tq = _tile(TQ + b * stqb + h * stqh, offs_m, offs_d, stqn, N_Q, D)
        acc_t = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        r_i = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _tile(K + b * skb + h * skh, offs_n, offs_d, skn, N_K, D)
        v = _tile(V + b * svb + h * svh, offs_n, offs_d, svn, N_K, D)
        s = _logits2(q, k, BIAS + b * sbb + h * sbh, sbm, sbn, offs_m, offs_n, N_Q, N_K, qk_scale,
                     HAS_BIAS, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows masked so far: keep p = 0, not NaN
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
        if WITH_TANGENT:
            tk = _tile(TK + b * stkb + h * stkh, offs_n, offs_d, stkn, N_K, D)
            tv = _tile(TV + b * stvb + h * stvh, offs_n, offs_d, stvn, N_K, D)
            ts = tl.dot(q, tl.trans(tk), input_precision=PRECISION)
            ts = tl.dot(tq, tl.trans(k), ts, input_precision=PRECISION)  # [Q|tQ]·[tK|K]ᵀ in one accumulator
            pts = p * (ts * scale)
            r_i = r_i * alpha + tl.sum(pts, 1)
            acc_t = tl.dot(p.to(v.dtype), tv, acc_t * alpha[:, None], input_precision=PRECISION)
            acc_t = tl.dot(pts.to(v.dtype), v, acc_t, input_precision=PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse = tl.where(l_i == 0.0, float("-inf"), (m_i + tl.log2(l_safe)) * 0.6931471805599453)
    _store_tile(O + b * sob + h * soh, o, offs_m, offs_d, son, N_Q, D)
    tl.store(LSE + pid_bh * N_Q + offs_m, lse, mask=offs_m < N_Q)
    if WITH_TANGENT:
        tlse = r_i / l_safe
        to = acc_t / l_safe[:, None] - tlse[:, None] * o
        _store_tile(TO + b * stob + h * stoh, to, offs_m, offs_d, ston, N_Q, D)
        tl.store(TLSE + pid_bh * N_Q + offs_m, tlse, mask=offs_m < N_Q)


@triton.jit(do_not_specialize=_LENGTHS)
def _tangent_kernel(
    Q, K, V, TQ, TK, TV, BIAS, O, LSE, TO, TLSE,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
    stqb, stqh, stqn, stkb, stkh, stkn, stvb, stvh, stvn,
    sbb, sbh, sbm, sbn, sob, soh, son, stob, stoh, ston,
    H, N_Q, N_K, D, scale, N_Q_BUCKET, N_K_BUCKET,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """tO and tLSE given the forward's O and LSE (autograd's jvp after forward): P is exact from LSE,
    so there is no running max and no rescaling, and O·Vᵀ is not recomputed (5 matmuls, not 6)."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)  # 64-bit offsets: B·H·N·D may pass 2³¹
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < N_Q
    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqn, N_Q, D)
    tq = _tile(TQ + b * stqb + h * stqh, offs_m, offs_d, stqn, N_Q, D)
    lse = tl.load(LSE + pid_bh * N_Q + offs_m, mask=row_ok, other=float("-inf"))
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)  # empty rows: P = 0
    qk_scale = scale * 1.4426950408889634
    acc_t = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    r_i = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(0, N_K, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _tile(K + b * skb + h * skh, offs_n, offs_d, skn, N_K, D)
        v = _tile(V + b * svb + h * svh, offs_n, offs_d, svn, N_K, D)
        tk = _tile(TK + b * stkb + h * stkh, offs_n, offs_d, stkn, N_K, D)
        tv = _tile(TV + b * stvb + h * stvh, offs_n, offs_d, stvn, N_K, D)
        s = _logits2(q, k, BIAS + b * sbb + h * sbh, sbm, sbn, offs_m, offs_n, N_Q, N_K, qk_scale,
                     HAS_BIAS, PRECISION)
        p = tl.exp2(s - lse2[:, None])
        ts = tl.dot(q, tl.trans(tk), input_precision=PRECISION)
        ts = tl.dot(tq, tl.trans(k), ts, input_precision=PRECISION)
        pts = p * (ts * scale)
        r_i += tl.sum(pts, 1)
        acc_t = tl.dot(p.to(v.dtype), tv, acc_t, input_precision=PRECISION)
        acc_t = tl.dot(pts.to(v.dtype), v, acc_t, input_precision=PRECISION)
    o = _tile(O + b * sob + h * soh, offs_m, offs_d, son, N_Q, D).to(tl.float32)
    _store_tile(TO + b * stob + h * stoh, acc_t - r_i[:, None] * o, offs_m, offs_d, ston, N_Q, D)
    tl.store(TLSE + pid_bh * N_Q + offs_m, r_i, mask=row_ok)


@triton.jit(do_not_specialize=["N_Q"])
def _bwd_delta_kernel(O, DO, DLSE, DELTA, sob, soh, son, sdob, sdoh, sdon, H, N_Q, D,
                      HAS_DLSE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta = rowsum(dO ⊙ O) − dLSE: the softmax-backward row term (dS = P ⊙ (dP − delta))."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)  # 64-bit offsets: B·H·N·D may pass 2³¹
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _tile(O + b * sob + h * soh, offs_m, offs_d, son, N_Q, D).to(tl.float32)
    do = _tile(DO + b * sdob + h * sdoh, offs_m, offs_d, sdon, N_Q, D).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + pid_bh * N_Q + offs_m, mask=offs_m < N_Q, other=0.0)
    tl.store(DELTA + pid_bh * N_Q + offs_m, delta, mask=offs_m < N_Q)


@triton.jit(do_not_specialize=_LENGTHS)
def _bwd_dkdv_kernel(
    Q, K, V, BIAS, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn, sdob, sdoh, sdon,
    H, N_Q, N_K, D, scale, N_Q_BUCKET, N_K_BUCKET,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program = BLOCK_N keys: dV = Pᵀ dO, dK = scale · dSᵀ Q, looping over all query blocks."""
    pid_n, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)  # 64-bit offsets: B·H·N·D may pass 2³¹
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _tile(K + b * skb + h * skh, offs_n, offs_d, skn, N_K, D)
    v = _tile(V + b * svb + h * svh, offs_n, offs_d, svn, N_K, D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    qk_scale = scale * 1.4426950408889634
    for start_m in range(0, N_Q, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqn, N_Q, D)
        do = _tile(DO + b * sdob + h * sdoh, offs_m, offs_d, sdon, N_Q, D)
        lse2, delta = _saved_row_stats(LSE, DELTA, pid_bh, offs_m, N_Q)
        p, ds = _probs_and_dlogits(q, k, v, do, lse2, delta, BIAS + b * sbb + h * sbh, sbm, sbn, offs_m, offs_n,
                                   N_Q, N_K, qk_scale, HAS_BIAS, PRECISION)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv, input_precision=PRECISION)
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk, input_precision=PRECISION)
    base = pid_bh.to(tl.int64) * N_K * D  # dk, dv are allocated contiguous
    _store_tile(DK + base, dk * scale, offs_n, offs_d, D, N_K, D)
    _store_tile(DV + base, dv, offs_n, offs_d, D, N_K, D)


@triton.jit(do_not_specialize=_LENGTHS)
def _bwd_dq_kernel(
    Q, K, V, BIAS, DO, LSE, DELTA, DQ,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sbb, sbh, sbm, sbn, sdob, sdoh, sdon,
    H, N_Q, N_K, D, scale, N_Q_BUCKET, N_K_BUCKET,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program = BLOCK_M queries: dQ = scale · dS K, looping over all key blocks (no atomics)."""
    pid_m, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)  # 64-bit offsets: B·H·N·D may pass 2³¹
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqn, N_Q, D)
    do = _tile(DO + b * sdob + h * sdoh, offs_m, offs_d, sdon, N_Q, D)
    lse2, delta = _saved_row_stats(LSE, DELTA, pid_bh, offs_m, N_Q)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qk_scale = scale * 1.4426950408889634
    for start_n in range(0, N_K, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _tile(K + b * skb + h * skh, offs_n, offs_d, skn, N_K, D)
        v = _tile(V + b * svb + h * svh, offs_n, offs_d, svn, N_K, D)
        _, ds = _probs_and_dlogits(q, k, v, do, lse2, delta, BIAS + b * sbb + h * sbh, sbm, sbn, offs_m, offs_n,
                                   N_Q, N_K, qk_scale, HAS_BIAS, PRECISION)
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    _store_tile(DQ + pid_bh.to(tl.int64) * N_Q * D, dq * scale, offs_m, offs_d, D, N_Q, D)

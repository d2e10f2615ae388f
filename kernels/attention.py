"""Triton flash-attention kernels: forward, and a deterministic backward (dK/dV, then dQ).

Math: fastgen/reference/attention.py. Calling convention: fastgen/ops/attention.py (q [B, Hq, Lq,
D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv] as strided views; packed varlen batches are B = 1 plus
cu_seqlens; every stride is passed, so no input is ever copied).

Forward (FlashAttention-2): one program per (query block, batch * query head). It walks the key
blocks a causal/window bound leaves visible, with the online softmax in the log2 domain
(exp2 is the native instruction; scale * log2(e) is folded into one multiply), accumulating in
fp32. The optional mask is read tile by tile through its strides (a broadcast dimension has
stride 0), so a [1, 1, Lq, Lk] mask is never expanded. Rows that see no key store out = 0 and
lse = +inf.

Backward, without atomics (so bit-for-bit deterministic):
  _attention_bwd_dkdv_kernel  one program per (key block, batch * kv head): loops over the GQA
                              group's query heads and the query blocks that can see its keys,
                              recomputing p = exp2(s - lse), accumulating dK and dV in registers;
  _attention_bwd_dq_kernel    one program per (query block, batch * query head): walks the key
                              blocks as the forward does and accumulates dQ.
delta = rowsum(dO * O) is computed once beforehand. Softcap's derivative is 1 - tanh^2.

fp32 inputs use IEEE fp32 dot products (not TF32), so fp32 means fp32. Only core tl ops are used
(tanh is built from exp), so the interpreter runs exactly what the GPU runs.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .bias_act import _on_device, _tanh

_LOG2E = 1.4426950408889634


@triton.jit
def _dot(a, b, PREC: tl.constexpr, UPCAST: tl.constexpr):
    # The interpreter (numpy) has no bfloat16 matmul: there both operands are widened to fp32,
    # which is exact (a product of two bf16 values fits fp32), so the result matches fp32
    # tensor-core accumulation up to summation order.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _scores(q, k, offs_m, cols, lk, off, scale2, softcap, left, right, mask_ptrs, valid,
            SOFTCAP: tl.constexpr, MASK_KIND: tl.constexpr, HAS_LEFT: tl.constexpr,
            HAS_RIGHT: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
    """Scores of one tile in the log2 domain, and tanh(raw / softcap) for the backward."""
    s = _dot(q, k, PREC, UPCAST)
    t = s
    if SOFTCAP:
        t = _tanh(s * (scale2 / (softcap * 1.4426950408889634)))
        s = t * (softcap * 1.4426950408889634)
    else:
        s = s * scale2
    if MASK_KIND == 1:
        keep_m = tl.load(mask_ptrs, mask=valid, other=0)
        s = tl.where(keep_m != 0, s, float("-inf"))
    if MASK_KIND == 2:
        s = s + tl.load(mask_ptrs, mask=valid, other=0.0).to(tl.float32) * 1.4426950408889634
    keep = cols[None, :] < lk
    if HAS_RIGHT:
        keep = keep & (cols[None, :] <= offs_m[:, None] + off + right)
    if HAS_LEFT:
        keep = keep & (cols[None, :] >= offs_m[:, None] + off - left)
    return tl.where(keep, s, float("-inf")), t


@triton.jit
def _program(CuQ, CuK, NBLK, H, LQ, LK, BOTTOM_RIGHT: tl.constexpr, VARLEN: tl.constexpr):
    """This program's (block, batch b, head h, batch index into the tensors bt, first query row
    q0, query length lq, first key row k0, key length lk, diagonal offset off). The grid is 1-D
    (no 65535 cap on batch * heads), block-major within each (batch, head)."""
    blk = tl.program_id(0) % NBLK
    pid_bh = tl.program_id(0) // NBLK
    b = pid_bh // H
    h = pid_bh % H
    if VARLEN:  # one packed batch (bt = 0); each sequence starts at its cu_seqlens offset
        q0 = tl.load(CuQ + b)
        k0 = tl.load(CuK + b)
        lq = tl.load(CuQ + b + 1) - q0
        lk = tl.load(CuK + b + 1) - k0
        bt = 0
    else:
        q0 = 0
        k0 = 0
        lq = LQ
        lk = LK
        bt = b
    off = 0
    if BOTTOM_RIGHT:
        off = lk - lq
    return blk, b, h, bt, q0, lq, k0, lk, off


@triton.jit
def _key_bounds(start_m, lk, off, left, right, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Keys [lo, hi) any query of the block [start_m, start_m + BLOCK_M) can see; lo is
    BLOCK_N-aligned."""
    lo = 0
    hi = lk
    if HAS_LEFT:
        lo = tl.maximum(start_m + off - left, 0)
        lo = (lo // BLOCK_N) * BLOCK_N
    if HAS_RIGHT:
        hi = tl.minimum(start_m + BLOCK_M + off + right, lk)
    return lo, hi


@triton.jit
def _attention_fwd_kernel(
        Q, K, V, Out, Lse, Mask, CuQ, CuK,
        sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
        sob, soh, som, sod, slb, slh, slm, smb, smh, smm, smn,
        H, GROUP, LQ, LK, D, DV, scale2, softcap, left, right, NBLK,
        BOTTOM_RIGHT: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
        SOFTCAP: tl.constexpr, MASK_KIND: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DV: tl.constexpr):
    pid_m, b, h, bt, q0, lq, k0, lk, off = _program(CuQ, CuK, NBLK, H, LQ, LK, BOTTOM_RIGHT,
                                                     VARLEN)
    hk = h // GROUP
    start_m = pid_m * BLOCK_M
    if start_m >= lq:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < lq
    q = tl.load(Q + bt * sqb + h * sqh + (q0 + offs_m)[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    k_base = K + bt * skb + hk * skh
    v_base = V + bt * svb + hk * svh
    m_base = Mask + b * smb + h * smh + offs_m[:, None] * smm

    lo, hi = _key_bounds(start_m, lk, off, left, right, HAS_LEFT, HAS_RIGHT, BLOCK_M, BLOCK_N)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < lk
        k = tl.load(k_base + (k0 + cols)[None, :] * skn + offs_d[:, None] * skd,
                    mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)
        s, _t = _scores(q, k, offs_m, cols, lk, off, scale2, softcap, left, right,
                        m_base + cols[None, :] * smn, row_ok[:, None] & col_ok[None, :],
                        SOFTCAP, MASK_KIND, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + (k0 + cols)[:, None] * svn + offs_dv[None, :] * svd,
                    mask=col_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PREC, UPCAST)
        m_i = m_new
    seen = l_i > 0
    denom = tl.where(seen, l_i, 1.0)
    out = acc / denom[:, None]
    lse = tl.where(seen, (m_i + tl.log2(denom)) * 0.6931471805599453, float("inf"))
    tl.store(Out + bt * sob + h * soh + (q0 + offs_m)[:, None] * som + offs_dv[None, :] * sod,
             out.to(Out.dtype.element_ty), mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    tl.store(Lse + bt * slb + h * slh + (q0 + offs_m) * slm, lse, mask=row_ok)


@triton.jit
def _attention_bwd_dkdv_kernel(
        Q, K, V, DO, Lse, Delta, DK, DV_, Mask, CuQ, CuK,
        sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
        sdob, sdoh, sdom, sdod, slb, slh, slm, sdkb, sdkh, sdkn, sdkd,
        sdvb, sdvh, sdvn, sdvd, smb, smh, smm, smn,
        HKV, GROUP, LQ, LK, D, DV, scale2, softcap, left, right, NBLK,
        BOTTOM_RIGHT: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
        SOFTCAP: tl.constexpr, MASK_KIND: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DV: tl.constexpr):
    pid_n, b, hk, bt, q0, lq, k0, lk, off = _program(CuQ, CuK, NBLK, HKV, LQ, LK, BOTTOM_RIGHT,
                                                      VARLEN)
    start_n = pid_n * BLOCK_N
    if start_n >= lk:
        return
    cols = start_n + tl.arange(0, BLOCK_N)
    col_ok = cols < lk
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k = tl.load(K + bt * skb + hk * skh + (k0 + cols)[None, :] * skn + offs_d[:, None] * skd,
                mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)  # [D, N]: K^T
    v = tl.load(V + bt * svb + hk * svh + (k0 + cols)[None, :] * svn + offs_dv[:, None] * svd,
                mask=col_ok[None, :] & (offs_dv[:, None] < DV), other=0.0)  # [DV, N]: V^T
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    # Query rows that can see any of these keys.
    lo = 0
    hi = lq
    if HAS_RIGHT:
        lo = tl.maximum(start_n - off - right, 0)
        lo = (lo // BLOCK_M) * BLOCK_M
    if HAS_LEFT:
        hi = tl.minimum(start_n + BLOCK_N - off + left, lq)
    for g in range(0, GROUP):
        h = hk * GROUP + g
        for start_m in range(lo, hi, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_ok = offs_m < lq
            q = tl.load(Q + bt * sqb + h * sqh + (q0 + offs_m)[:, None] * sqm
                        + offs_d[None, :] * sqd,
                        mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
            s, t = _scores(q, k, offs_m, cols, lk, off, scale2, softcap, left, right,
                           Mask + b * smb + h * smh + offs_m[:, None] * smm
                           + cols[None, :] * smn, row_ok[:, None] & col_ok[None, :],
                           SOFTCAP, MASK_KIND, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)
            lse = tl.load(Lse + bt * slb + h * slh + (q0 + offs_m) * slm, mask=row_ok,
                          other=float("inf"))
            p = tl.exp2(s - lse[:, None] * 1.4426950408889634)
            do = tl.load(DO + bt * sdob + h * sdoh + (q0 + offs_m)[:, None] * sdom
                         + offs_dv[None, :] * sdod,
                         mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
            dv += _dot(tl.trans(p).to(do.dtype), do, PREC, UPCAST)
            dp = _dot(do, v, PREC, UPCAST)
            delta = tl.load(Delta + bt * slb + h * slh + (q0 + offs_m) * slm, mask=row_ok,
                            other=0.0)
            ds = p * (dp - delta[:, None])
            if SOFTCAP:
                ds = ds * (1.0 - t * t)
            dk += _dot(tl.trans(ds).to(q.dtype), q, PREC, UPCAST)
    tl.store(DK + bt * sdkb + hk * sdkh + (k0 + cols)[:, None] * sdkn + offs_d[None, :] * sdkd,
             (dk * (scale2 * 0.6931471805599453)).to(DK.dtype.element_ty),
             mask=col_ok[:, None] & (offs_d[None, :] < D))
    tl.store(DV_ + bt * sdvb + hk * sdvh + (k0 + cols)[:, None] * sdvn
             + offs_dv[None, :] * sdvd, dv.to(DV_.dtype.element_ty),
             mask=col_ok[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def _attention_bwd_dq_kernel(
        Q, K, V, DO, Lse, Delta, DQ, Mask, CuQ, CuK,
        sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
        sdob, sdoh, sdom, sdod, slb, slh, slm, sdqb, sdqh, sdqm, sdqd, smb, smh, smm, smn,
        H, GROUP, LQ, LK, D, DV, scale2, softcap, left, right, NBLK,
        BOTTOM_RIGHT: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
        SOFTCAP: tl.constexpr, MASK_KIND: tl.constexpr, VARLEN: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DV: tl.constexpr):
    pid_m, b, h, bt, q0, lq, k0, lk, off = _program(CuQ, CuK, NBLK, H, LQ, LK, BOTTOM_RIGHT,
                                                     VARLEN)
    hk = h // GROUP
    start_m = pid_m * BLOCK_M
    if start_m >= lq:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row_ok = offs_m < lq
    q = tl.load(Q + bt * sqb + h * sqh + (q0 + offs_m)[:, None] * sqm + offs_d[None, :] * sqd,
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    do = tl.load(DO + bt * sdob + h * sdoh + (q0 + offs_m)[:, None] * sdom
                 + offs_dv[None, :] * sdod,
                 mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)
    lse = tl.load(Lse + bt * slb + h * slh + (q0 + offs_m) * slm, mask=row_ok,
                  other=float("inf")) * 1.4426950408889634
    delta = tl.load(Delta + bt * slb + h * slh + (q0 + offs_m) * slm, mask=row_ok, other=0.0)
    k_base = K + bt * skb + hk * skh
    v_base = V + bt * svb + hk * svh
    m_base = Mask + b * smb + h * smh + offs_m[:, None] * smm
    lo, hi = _key_bounds(start_m, lk, off, left, right, HAS_LEFT, HAS_RIGHT, BLOCK_M, BLOCK_N)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < lk
        k = tl.load(k_base + (k0 + cols)[None, :] * skn + offs_d[:, None] * skd,
                    mask=col_ok[None, :] & (offs_d[:, None] < D), other=0.0)
        s, t = _scores(q, k, offs_m, cols, lk, off, scale2, softcap, left, right,
                       m_base + cols[None, :] * smn, row_ok[:, None] & col_ok[None, :],
                       SOFTCAP, MASK_KIND, HAS_LEFT, HAS_RIGHT, PREC, UPCAST)
        p = tl.exp2(s - lse[:, None])
        v = tl.load(v_base + (k0 + cols)[None, :] * svn + offs_dv[:, None] * svd,
                    mask=col_ok[None, :] & (offs_dv[:, None] < DV), other=0.0)
        dp = _dot(do, v, PREC, UPCAST)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq += _dot(ds.to(k.dtype), tl.trans(k), PREC, UPCAST)
    tl.store(DQ + bt * sdqb + h * sdqh + (q0 + offs_m)[:, None] * sdqm + offs_d[None, :] * sdqd,
             (dq * (scale2 * 0.6931471805599453)).to(DQ.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))


# --- launchers -----------------------------------------------------------------------------------

def _blocks(q: torch.Tensor, d: int, dv: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV, num_warps): tiles sized so q, k and v tiles of the
    widest head dim (256) fit an SM's shared memory; small tiles under the interpreter."""
    bd = max(16, triton.next_power_of_2(d))
    bdv = max(16, triton.next_power_of_2(dv))
    if not q.is_cuda:
        return 32, 32, bd, bdv, 4
    # fp32 tiles take twice the shared memory of fp16/bf16 ones: half the rows.
    shrink = 2 if q.dtype == torch.float32 else 1
    widest = max(bd, bdv)
    if widest <= 64:
        return 128 // shrink, 64, bd, bdv, 4
    if widest <= 128:
        return 128 // shrink, 64, bd, bdv, 8
    return 64 // shrink, 32, bd, bdv, 8


def _common(q, k, v, mask, cu_q, max_q, max_k, scale, left, right, bottom_right, softcap):
    """Kernel arguments shared by the three kernels."""
    mask_kind = 0 if mask is None else (1 if mask.dtype == torch.bool else 2)
    if mask is not None:  # broadcast dims get stride 0: the kernel reads the mask as stored
        mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    m = mask if mask is not None else q  # a dummy pointer the kernel never reads
    if mask is not None and mask.dtype == torch.bool:
        m = mask.view(torch.uint8)
    mstrides = m.stride() if mask is not None else (0, 0, 0, 0)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    scale2 = scale * _LOG2E  # scores come out in the log2 domain; gradients use scale2 * ln 2
    meta = dict(BOTTOM_RIGHT=bool(bottom_right), HAS_LEFT=left >= 0, HAS_RIGHT=right >= 0,
                SOFTCAP=softcap > 0, MASK_KIND=mask_kind, VARLEN=cu_q is not None, PREC=prec,
                UPCAST=q.dtype == torch.bfloat16 and not q.is_cuda)
    lq = max_q if cu_q is not None else q.shape[2]
    lk = max_k if cu_q is not None else k.shape[2]
    return m, mstrides, meta, lq, lk, scale2


def forward(q, k, v, out, lse, mask, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right,
            softcap):
    """Fills out [B, Hq, Lq, Dv] and lse [B, Hq, Lq] (strided, as allocated by the op)."""
    b, h, _, d = q.shape
    m, ms, meta, lq, lk, scale2 = _common(q, k, v, mask, cu_q, max_q, max_k, scale, left, right,
                                          bottom_right, softcap)
    nb = cu_q.numel() - 1 if cu_q is not None else b
    if q.numel() == 0 or out.numel() == 0 or nb == 0:
        out.zero_()
        lse.fill_(math.inf)
        return
    bm, bn, bd, bdv, warps = _blocks(q, d, v.shape[-1])
    cu_q_ = cu_q if cu_q is not None else q
    cu_k_ = cu_k if cu_k is not None else q
    grid = (triton.cdiv(lq, bm) * nb * h,)
    with _on_device(q):
        _attention_fwd_kernel[grid](
            q, k, v, out, lse, m, cu_q_, cu_k_, *q.stride(), *k.stride(), *v.stride(),
            *out.stride(), *lse.stride(), *ms, h, h // k.shape[1], q.shape[2], k.shape[2], d,
            v.shape[-1], scale2, float(softcap), int(left), int(right), triton.cdiv(lq, bm),
            **meta, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DV=bdv, num_warps=warps)


def backward(dout, q, k, v, out, lse, mask, cu_q, cu_k, max_q, max_k, scale, left, right,
             bottom_right, softcap, dq, dk, dv):
    """Fills dq, dk, dv (strided, as allocated by the op)."""
    b, h, _, d = q.shape
    hkv = k.shape[1]
    m, ms, meta, lq, lk, scale2 = _common(q, k, v, mask, cu_q, max_q, max_k, scale, left, right,
                                          bottom_right, softcap)
    nb = cu_q.numel() - 1 if cu_q is not None else b
    if q.numel() == 0 or k.numel() == 0 or nb == 0 or dout.numel() == 0:
        dq.zero_()
        dk.zero_()
        dv.zero_()
        return  # every element is written below otherwise: each row and key has a program
    # Each backward step streams two operand tiles (q and dO, or k and v): two pipeline stages
    # keep them within shared memory for head dims up to 256 (unmeasured on a GPU so far).
    stages = 2 if q.is_cuda else 1
    lse = lse.contiguous()
    delta = (dout.float() * out.float()).sum(-1).contiguous()  # [B, Hq, Lq], lse's strides
    bm, bn, bd, bdv, warps = _blocks(q, d, v.shape[-1])
    cu_q_ = cu_q if cu_q is not None else q
    cu_k_ = cu_k if cu_k is not None else q
    common = (*lse.stride(),)
    with _on_device(q):
        _attention_bwd_dkdv_kernel[(triton.cdiv(lk, bn) * nb * hkv,)](
            q, k, v, dout, lse, delta, dk, dv, m, cu_q_, cu_k_, *q.stride(), *k.stride(),
            *v.stride(), *dout.stride(), *common, *dk.stride(), *dv.stride(), *ms, hkv,
            h // hkv, q.shape[2], k.shape[2], d, v.shape[-1], scale2, float(softcap), int(left),
            int(right), triton.cdiv(lk, bn), **meta, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
            BLOCK_DV=bdv, num_warps=warps, num_stages=stages)
        _attention_bwd_dq_kernel[(triton.cdiv(lq, bm) * nb * h,)](
            q, k, v, dout, lse, delta, dq, m, cu_q_, cu_k_, *q.stride(), *k.stride(),
            *v.stride(), *dout.stride(), *common, *dq.stride(), *ms, h, h // hkv, q.shape[2],
            k.shape[2], d, v.shape[-1], scale2, float(softcap), int(left), int(right),
            triton.cdiv(lq, bm), **meta, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DV=bdv,
            num_warps=warps, num_stages=stages)

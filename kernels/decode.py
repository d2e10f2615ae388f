"""Triton kernels for KV-cache decode attention (GPU; CPU tensors under TRITON_INTERPRET=1).

Math: fastgen/reference/decode.py. Flash-decoding (../shared/reference/attention.md §5): the
grid is (batch row · kv head, split). One program takes the G = Hq / Hkv query heads of its kv
head and their Lq queries as the M tile of ``tl.dot`` (GQA packed like FA3's pack_gqa, so each
key and value tile is loaded once for the group), walks its split of the keys with an online
softmax and writes a normalised partial output and its logsumexp; ``_decode_combine_kernel``
merges the splits. Paged caches are read through the block table (one page id per key tile
row), a contiguous cache being the one-page-per-row case. The split count depends only on the
shapes, so no host synchronisation is needed and a decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl

from .attention import _dot

_BLOCK_N = 64


@triton.jit
def _decode_fwd_kernel(q_ptr, k_ptr, v_ptr, seqlens_ptr, table_ptr, o_ptr, lse_ptr,
                       sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2,
                       Hq, Lq, G, D, DV, page, max_pages, chunk, n_splits, scale, softcap,
                       left, right,
                       PAGED: tl.constexpr, SOFTCAP: tl.constexpr, PREC: tl.constexpr,
                       UPCAST: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                       BLOCK_DV: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    hkv_n = Hq // G
    b = bh // hkv_n
    h = bh % hkv_n
    n = tl.minimum(tl.load(seqlens_ptr + b), page * max_pages)  # never past the cache
    r = tl.arange(0, BLOCK_R)
    head = h * G + r // Lq
    i = r % Lq
    row_ok = r < G * Lq
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + b.to(tl.int64) * sq0 + head.to(tl.int64)[:, None] * sq1
                + i.to(tl.int64)[:, None] * sq2
                + d[None, :], mask=row_ok[:, None] & (d[None, :] < D), other=0.0)
    pos = n - Lq + i
    lo = split * chunk
    hi = tl.minimum(lo + chunk, n)
    m = tl.full([BLOCK_R], -float("inf"), tl.float32)
    l_sum = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_DV], tl.float32)
    for j0 in range(lo, hi, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        j_ok = j < hi
        if PAGED:
            pg = tl.load(table_ptr + b.to(tl.int64) * max_pages + j // page, mask=j_ok, other=0)
        else:
            pg = tl.zeros([BLOCK_N], tl.int32) + b
        slot = j % page
        k = tl.load(k_ptr + pg.to(tl.int64)[:, None] * sk0 + h.to(tl.int64) * sk1
                    + slot.to(tl.int64)[:, None] * sk2
                    + d[None, :], mask=j_ok[:, None] & (d[None, :] < D), other=0.0)
        s = _dot(q, tl.trans(k), PREC, UPCAST) * scale
        if SOFTCAP:
            s = softcap * (1.0 - 2.0 / (tl.exp(2.0 * s / softcap) + 1.0))  # c · tanh(s / c)
        vis = j_ok[None, :] & row_ok[:, None]
        vis = vis & ((left < 0) | (j[None, :] >= pos[:, None] - left))
        vis = vis & ((right < 0) | (j[None, :] <= pos[:, None] + right))
        s = tl.where(vis, s, -float("inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        p = tl.exp(s - m_safe[:, None])
        l_sum = l_sum * alpha + tl.sum(p, 1)
        v = tl.load(v_ptr + pg.to(tl.int64)[:, None] * sv0 + h.to(tl.int64) * sv1
                    + slot.to(tl.int64)[:, None] * sv2
                    + dv[None, :], mask=j_ok[:, None] & (dv[None, :] < DV), other=0.0)
        pv = _dot(p.to(v.dtype), v, PREC, UPCAST)
        acc = acc * alpha[:, None] + pv
        m = m_new
    empty = l_sum == 0.0
    out = acc / tl.where(empty, 1.0, l_sum)[:, None]
    lse = tl.where(empty, -float("inf"), m + tl.log(tl.where(empty, 1.0, l_sum)))
    row = ((b * Hq + head) * Lq + i) * n_splits + split
    tl.store(o_ptr + row.to(tl.int64)[:, None] * DV + dv[None, :], out,
             mask=row_ok[:, None] & (dv[None, :] < DV))
    tl.store(lse_ptr + row, lse, mask=row_ok)


@triton.jit
def _decode_combine_kernel(o_part_ptr, lse_part_ptr, out_ptr, lse_ptr, n_splits, DV,
                           BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    dv = tl.arange(0, BLOCK_DV)
    lse_s = tl.load(lse_part_ptr + row * n_splits + s, mask=s < n_splits, other=-float("inf"))
    mx = tl.max(lse_s, 0)
    mx_safe = tl.where(mx == -float("inf"), 0.0, mx)
    w = tl.exp(lse_s - mx_safe)
    total = tl.sum(w, 0)
    o = tl.load(o_part_ptr + (row * n_splits + s)[:, None] * DV + dv[None, :],
                mask=(s[:, None] < n_splits) & (dv[None, :] < DV), other=0.0)
    out = tl.sum(o * (w / tl.where(total == 0.0, 1.0, total))[:, None], 0)
    tl.store(out_ptr + row * DV + dv, out.to(out_ptr.dtype.element_ty), mask=dv < DV)
    tl.store(lse_ptr + row, tl.where(total == 0.0, float("inf"), mx_safe + tl.log(total)))


def num_splits(batch_heads: int, capacity: int, device: torch.device) -> int:
    """Splits so that about two waves of programs fill the GPU (FA2's rule of thumb), at least
    _BLOCK_N·4 keys each; from shapes only (no synchronisation)."""
    sms = (torch.cuda.get_device_properties(device).multi_processor_count
           if device.type == "cuda" else 4)
    want = max(1, -(-2 * sms // max(batch_heads, 1)))
    return max(1, min(want, -(-capacity // (4 * _BLOCK_N)), 64))


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seqlens: torch.Tensor,
                     table: Optional[torch.Tensor], scale: float, softcap: float, left: int,
                     right: int, splits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layouts as fastgen::decode_attention (csrc/registration.cpp); head dims contiguous."""
    b, hq, lq, d = q.shape
    hkv, page, dv = k.shape[1], k.shape[2], v.shape[3]
    g = hq // hkv
    max_pages = table.shape[1] if table is not None else 1
    capacity = page * max_pages
    chunk = -(-capacity // splits)
    chunk = -(-chunk // _BLOCK_N) * _BLOCK_N
    splits = -(-capacity // chunk) if capacity else 1
    o_part = torch.empty(b, hq, lq, splits, dv, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(b, hq, lq, splits, dtype=torch.float32, device=q.device)
    out = torch.empty(b, hq, lq, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(b, hq, lq, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("inf"))
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _decode_fwd_kernel[(b * hkv, splits)](
            q, k, v, seqlens, table if table is not None else seqlens, o_part, lse_part,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            hq, lq, g, d, dv, page, max_pages, chunk, splits, scale, softcap, left, right,
            PAGED=table is not None, SOFTCAP=softcap > 0,
            PREC="ieee" if q.dtype == torch.float32 else "tf32",
            UPCAST=q.dtype == torch.bfloat16 and not q.is_cuda,
            BLOCK_R=max(16, triton.next_power_of_2(g * lq)), BLOCK_N=_BLOCK_N,
            BLOCK_D=max(16, triton.next_power_of_2(d)),
            BLOCK_DV=max(16, triton.next_power_of_2(dv)))
        _decode_combine_kernel[(b * hq * lq,)](
            o_part, lse_part, out, lse, splits, dv,
            BLOCK_S=max(2, triton.next_power_of_2(splits)),
            BLOCK_DV=max(16, triton.next_power_of_2(dv)))
    return out, lse

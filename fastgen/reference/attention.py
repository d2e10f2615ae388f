"""Reference attention: the dense softmax(QK^T) V that every fastgen attention backend must match.

For one (batch, query head) and one sequence of Lq queries and Lk keys:

    s[i, j] = scale * q[i] . k[j]                               scores
    s[i, j] = softcap * tanh(s[i, j] / softcap)                 if softcap > 0 (Gemma 2, Grok)
    s[i, j] = s[i, j] + mask[i, j]          (float mask)        or -inf where a bool mask is False
    s[i, j] = -inf  unless  i + off - left <= j <= i + off + right      (causal: right = 0)
    lse[i]  = log sum_j exp(s[i, j]);   p = exp(s - lse);   out = p @ v

``off`` aligns the diagonal: 0 is top-left (``torch.nn.functional.scaled_dot_product_attention``
with ``is_causal=True``: key j is visible to query i when j <= i); ``Lk - Lq`` is bottom-right
(FlashAttention >= 2.1: the last query sees the last key). A negative ``left`` or ``right`` means
unbounded on that side. Key/value head ``h // (Hq // Hkv)`` serves query head h (GQA / MQA).

Rows that see no key at all (every score -inf) get ``out = 0`` and ``lse = +inf``, as
FlashAttention writes them (its ``csrc/flash_attn/src/flash_fwd_kernel.h``); the +inf makes the
backward's recomputed probabilities exp(s - lse) exactly 0 there. Sources: FlashAttention's
``flash_attn_interface.py`` docstrings (alignment, window), ../shared/reference/attention.md §4.

Everything is computed in the input dtype (use float64 inputs for a ground truth; low-precision
inputs give "what PyTorch itself gets" in that dtype, for the error-ratio tests).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["attention", "visible", "sdpa", "flash_attention", "lse_dtype"]


def visible(lq: int, lk: int, window_left: int = -1, window_right: int = -1,
            bottom_right: bool = False, device=None) -> torch.Tensor:
    """keep: [lq, lk] bool; True where query i may attend key j (window and causal only)."""
    i = torch.arange(lq, device=device).unsqueeze(1)
    j = torch.arange(lk, device=device).unsqueeze(0)
    diag = i + (lk - lq if bottom_right else 0)
    keep = torch.ones(lq, lk, dtype=torch.bool, device=device)
    if window_right >= 0:
        keep &= j <= diag + window_right
    if window_left >= 0:
        keep &= j >= diag - window_left
    return keep


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of lse (and of fastgen's CPU accumulation): float32, or float64 for float64 inputs
    (so float64 gradients stay float64-exact)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _dense(q, k, v, mask, scale, window_left, window_right, bottom_right, softcap, dropout_p,
           generator):
    """One packed-free call: q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv]."""
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap > 0:
        s = torch.tanh(s / softcap) * softcap
    neg_inf = torch.tensor(float("-inf"), dtype=s.dtype, device=s.device)
    if mask is not None:
        s = torch.where(mask, s, neg_inf) if mask.dtype == torch.bool else s + mask.to(s.dtype)
    keep = visible(q.shape[2], k.shape[2], window_left, window_right, bottom_right, q.device)
    s = torch.where(keep, s, neg_inf)
    # Empty rows: softmax over zeros, then zeroed, so neither the values nor the gradients are NaN.
    empty = torch.isneginf(s).all(dim=-1, keepdim=True)
    s = torch.where(empty, torch.zeros((), dtype=s.dtype, device=s.device), s)
    p = torch.softmax(s, dim=-1).masked_fill(empty, 0)
    lse = torch.logsumexp(s, dim=-1).masked_fill(empty.squeeze(-1), float("inf"))
    if dropout_p > 0:
        keep_p = torch.rand(p.shape, generator=generator, device=p.device) >= dropout_p
        p = p * keep_p / (1 - dropout_p)
    return torch.matmul(p.to(v.dtype), v), lse.to(lse_dtype(q.dtype))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
              cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
              scale: float, window_left: int = -1, window_right: int = -1,
              bottom_right: bool = False, softcap: float = 0.0, dropout_p: float = 0.0,
              generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention with every fastgen feature; the signature of fastgen's internal op.

    Args:
        q: [B, Hq, Lq, D]; k: [B, Hkv, Lk, D]; v: [B, Hkv, Lk, Dv] (any strides); Hq % Hkv == 0.
        mask: None, or bool (True = attend) / additive float, broadcastable to [B, Hq, Lq, Lk].
        cu_seqlens_q, cu_seqlens_k: None, or int32 [S + 1] offsets of S sequences packed along
            the L dimension (then B == 1 and mask is None); each sequence is attended alone.
        scale: score scale (usually 1 / sqrt(D)).
        window_left, window_right: visible keys per query (negative: unbounded); causal is
            window_right = 0.
        bottom_right: align the causal/window diagonal bottom-right (FlashAttention) instead of
            top-left (SDPA).
        softcap: > 0 caps scores to (-softcap, softcap) with tanh; 0 disables.
        dropout_p: dropout on the probabilities (random stream: ``generator``).

    Returns:
        out: [B, Hq, Lq, Dv] in q's dtype; lse: [B, Hq, Lq] float32 (float64 for float64 q),
        +inf on empty rows.
    """
    args = (scale, window_left, window_right, bottom_right, softcap, dropout_p, generator)
    if cu_seqlens_q is None:
        return _dense(q, k, v, mask, *args)
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for s in range(len(cq) - 1):
        o, lse = _dense(q[:, :, cq[s]:cq[s + 1]], k[:, :, ck[s]:ck[s + 1]],
                        v[:, :, ck[s]:ck[s + 1]], None, *args)
        outs.append(o)
        lses.append(lse)
    out = torch.cat(outs, dim=2) if outs else q.new_empty(*q.shape[:3], v.shape[-1])
    lse = torch.cat(lses, dim=2) if lses else q.new_empty(q.shape[:3], dtype=lse_dtype(q.dtype))
    return out, lse


def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
         enable_gqa=False):
    """``torch.nn.functional.scaled_dot_product_attention`` semantics, from :func:`attention`.

    query [..., Hq, L, E], key [..., Hkv, S, E], value [..., Hkv, S, Ev]; causal is top-left.
    """
    scale = 1 / math.sqrt(query.shape[-1]) if scale is None else scale
    q, k, v = (t.reshape(math.prod(t.shape[:-3]), *t.shape[-3:]) if t.ndim >= 3
               else t.reshape(1, 1, *t.shape) for t in (query, key, value))
    if attn_mask is not None:
        attn_mask = attn_mask.expand(*query.shape[:-1], key.shape[-2])
        attn_mask = attn_mask.reshape(q.shape[:2] + attn_mask.shape[-2:])
    out, _ = attention(q, k, v, attn_mask, None, None, scale, -1, 0 if is_causal else -1,
                       False, 0.0, dropout_p)
    return out.reshape(*query.shape[:-1], value.shape[-1])


def flash_attention(q, k, v, causal=False, window=(-1, -1), softcap=0.0, scale=None,
                    cu_seqlens_q=None, cu_seqlens_k=None):
    """FlashAttention semantics: q [B, Lq, Hq, D] (or packed [total, Hq, D] with cu_seqlens);
    causal and window aligned bottom-right. Returns (out like q with v's head dim, lse)."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    left, right = window
    if causal:
        right = 0
    if cu_seqlens_q is None:
        out, lse = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, None,
                             None, scale, left, right, True, softcap)
        return out.transpose(1, 2), lse
    out, lse = attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                         v.transpose(0, 1)[None], None, cu_seqlens_q, cu_seqlens_k, scale, left,
                         right, True, softcap)
    return out[0].transpose(0, 1), lse[0]

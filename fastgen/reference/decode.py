"""Reference KV-cache decode attention: dense PyTorch over the gathered cache.

Row b of the batch holds n_b = cache_seqlens[b] keys; its Lq queries are the last Lq of those
positions (the new tokens, already appended to the cache). Query i sits at pos = n_b − Lq + i and
sees key j iff

    j < n_b   and   pos − left <= j <= pos + right          (a negative bound is unbounded;
                                                             causal is right = 0)

    out = softmax(s) · V,   s_j = scale · q·k_j   (softcap c > 0: s_j = c · tanh(s_j / c))
    lse = log Σ_j exp(s_j)

GQA: query head h reads kv head h // (Hq / Hkv). A query that sees no key gets out = 0 and
lse = +inf (FlashAttention's convention). Paged caches: k_cache [P, Hkv, page, D] and block_table
[B, max_pages]; key j of row b is k_cache[block_table[b, j // page], :, j % page].

Computed in float32 (float64 for float64 inputs). Source of the split-KV identity the fast
backends use: ../shared/reference/attention.md §5.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["decode_attention", "gather_cache"]


def gather_cache(cache: torch.Tensor, block_table: Optional[torch.Tensor]) -> torch.Tensor:
    """Paged [P, H, page, D] + block_table [B, max_pages] -> dense [B, H, max_pages·page, D]; a
    contiguous [B, H, L, D] cache is returned as is."""
    if block_table is None:
        return cache
    pages = cache[block_table.long().clamp(min=0)]  # [B, max_pages, H, page, D]; -1: unused
    b, n, h, p, d = pages.shape
    return pages.permute(0, 2, 1, 3, 4).reshape(b, h, n * p, d)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_seqlens: torch.Tensor, block_table: Optional[torch.Tensor],
                     scale: float, softcap: float, left: int, right: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, Hq, Lq, D]; caches as in the module docstring. Returns (out [B, Hq, Lq, Dv] in q's
    dtype, lse [B, Hq, Lq] float32, float64 for float64)."""
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    k = gather_cache(k_cache, block_table).to(work)
    v = gather_cache(v_cache, block_table).to(work)
    b, hq, lq, _ = q.shape
    g = hq // k.shape[1]
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    s = torch.matmul(q.to(work), k.transpose(-1, -2)) * scale  # [B, Hq, Lq, L]
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    n = cache_seqlens.to(torch.int64)[:, None, None, None]
    j = torch.arange(k.shape[2], device=q.device)
    pos = n - lq + torch.arange(lq, device=q.device)[:, None]
    visible = j < n
    if left >= 0:
        visible = visible & (j >= pos - left)
    if right >= 0:
        visible = visible & (j <= pos + right)
    s = s.masked_fill(~visible, -math.inf)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse[..., None]).nan_to_num(0.0)  # rows that see no key: 0
    out = torch.matmul(p, v)
    return out.to(q.dtype), lse.masked_fill(lse == -math.inf, math.inf)

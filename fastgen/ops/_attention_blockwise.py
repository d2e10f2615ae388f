"""Backend ``cpu`` of attention: FlashAttention's blockwise algorithm in PyTorch tensor ops.

For the calls torch's SDPA cannot run (sliding window, softcap, packed varlen, bottom-right causal
with Lq != Lk, a mask together with causal, or when lse is wanted). It is memory-bounded — the
scores exist one [B, Hq, bq, bk] tile at a time, tile size capped by _TILE_ELEMENTS — and it
skips key blocks a window or causal mask hides entirely, which is where it beats dense masked
SDPA. Low-precision inputs are computed in float32 tile by tile (float64 stays float64).

The backward recomputes each tile's probabilities from the saved lse, p = exp(s - lse), so it too
never holds more than a tile; dK and dV are summed over a GQA group in a fixed order (no
nondeterminism). Both directions run each sequence of a packed batch on its own, so padding is
never computed at all.

Lives beside ops/attention.py rather than in csrc/cpu: a PyTorch composition on large tiles
already runs at matmul speed on CPU; a C++ copy would need its own GEMM to match it.
"""

from __future__ import annotations

import torch

__all__ = ["forward", "backward"]

# Scores per tile (B * Hq * bq * bk): 4M floats = 16 MB, comfortably inside a CPU's L2+L3 share
# while keeping each matmul large enough that Python overhead stays well under 5%.
_TILE_ELEMENTS = 1 << 22
_MAX_BK = 1024


def _segments(q, k, cu_q, cu_k):
    """(q_start, q_end, k_start, k_end) of each sequence: the whole batch, or each packed one."""
    if cu_q is None:
        return [(0, q.shape[2], 0, k.shape[2])]
    cq, ck = cu_q.tolist(), cu_k.tolist()
    return [(cq[s], cq[s + 1], ck[s], ck[s + 1]) for s in range(len(cq) - 1)]


def _work_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _plan(b, hq, lq, lk):
    bk = max(1, min(lk, _MAX_BK))
    bq = max(16, _TILE_ELEMENTS // max(1, b * hq * bk))
    return min(bq, max(lq, 1)), bk


def _key_range(i0, i1, lk, off, left, right):
    """Keys [lo, hi) that any query in [i0, i1) can see."""
    lo = max(0, i0 + off - left) if left >= 0 else 0
    hi = min(lk, i1 - 1 + off + right + 1) if right >= 0 else lk
    return lo, hi


class _Tile:
    """Scores of one (query block, key block) tile with softcap, mask and window applied."""

    def __init__(self, q5, k5, mask, scale, softcap, off, left, right, groups):
        self.q5, self.k5 = q5, k5
        self.mask = None if mask is None else mask.expand(
            q5.shape[0], q5.shape[1] * q5.shape[2], mask.shape[-2], mask.shape[-1])
        self.scale, self.softcap, self.off = scale, softcap, off
        self.left, self.right, self.groups = left, right, groups

    def scores(self, i0, i1, j0, j1, qrow0, krow0):
        """Returns (s [B, Hkv, G, bq, bk], tanh(raw / softcap) or None)."""
        s = torch.matmul(self.q5[:, :, :, i0:i1], self.k5[:, :, :, j0:j1].transpose(-1, -2))
        s.mul_(self.scale)
        t = None
        if self.softcap > 0:
            t = torch.tanh(s.div_(self.softcap))
            s = t * self.softcap
        if self.mask is not None:
            m = self.mask[:, :, qrow0 + i0:qrow0 + i1, krow0 + j0:krow0 + j1]
            m = m.unflatten(1, (-1, self.groups))
            if m.dtype == torch.bool:
                s = s.masked_fill(~m, float("-inf"))
            else:
                s = s + m.to(s.dtype)
        i = torch.arange(i0, i1).unsqueeze(1) + self.off
        j = torch.arange(j0, j1).unsqueeze(0)
        hide = None
        if self.right >= 0 and j1 - 1 > i0 + self.off + self.right:
            hide = j > i + self.right
        if self.left >= 0 and j0 < i1 - 1 + self.off - self.left:
            low = j < i - self.left
            hide = low if hide is None else hide | low
        if hide is not None:
            s = s.masked_fill(hide, float("-inf"))
        return s, t


def _views(q, k, v, qs, qe, ks, ke, work):
    """q5 [B, Hkv, G, lq, D], k5/v5 [B, Hkv, 1, lk, D] in the work dtype."""
    b, hq = q.shape[:2]
    hkv = k.shape[1]
    q5 = q[:, :, qs:qe].to(work).unflatten(1, (hkv, hq // hkv))
    return q5, k[:, :, ks:ke].to(work).unsqueeze(2), v[:, :, ks:ke].to(work).unsqueeze(2)


def forward(q, k, v, out, lse, mask, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right,
            softcap):
    """Fills out [B, Hq, Lq, Dv] and lse [B, Hq, Lq] (see fastgen.reference.attention)."""
    work = _work_dtype(q)
    b, hq = q.shape[:2]
    hkv = k.shape[1]
    g = hq // hkv
    for qs, qe, ks, ke in _segments(q, k, cu_q, cu_k):
        lq, lk = qe - qs, ke - ks
        if lq == 0:
            continue
        off = lk - lq if bottom_right else 0
        q5, k5, v5 = _views(q, k, v, qs, qe, ks, ke, work)
        tile = _Tile(q5, k5, mask, scale, softcap, off, left, right, g)
        bq, bk = _plan(b, hq, lq, lk)
        for i0 in range(0, lq, bq):
            i1 = min(lq, i0 + bq)
            lo, hi = _key_range(i0, i1, lk, off, left, right)
            m = torch.full((b, hkv, g, i1 - i0), float("-inf"), dtype=work)
            denom = torch.zeros_like(m)
            acc = torch.zeros(b, hkv, g, i1 - i0, v.shape[-1], dtype=work)
            for j0 in range(lo, hi, bk):
                j1 = min(hi, j0 + bk)
                s, _ = tile.scores(i0, i1, j0, j1, qs, ks)
                m_new = torch.maximum(m, s.amax(dim=-1))
                m_safe = m_new.nan_to_num(neginf=0.0)  # a row with nothing visible yet
                p = torch.exp(s - m_safe.unsqueeze(-1))
                alpha = torch.exp(m - m_safe)
                denom = denom * alpha + p.sum(dim=-1)
                acc = acc * alpha.unsqueeze(-1) + torch.matmul(p, v5[:, :, :, j0:j1])
                m = m_new
            seen = denom > 0
            o = acc / torch.where(seen, denom, 1.0).unsqueeze(-1)
            row_lse = torch.where(seen, m + torch.log(torch.where(seen, denom, 1.0)),
                                  float("inf"))
            out[:, :, qs + i0:qs + i1] = o.flatten(1, 2).to(out.dtype)
            lse[:, :, qs + i0:qs + i1] = row_lse.flatten(1, 2).to(lse.dtype)


def backward(dout, q, k, v, out, lse, mask, cu_q, cu_k, max_q, max_k, scale, left, right,
             bottom_right, softcap, dq, dk, dv):
    """Fills dq, dk, dv (laid out like q, k, v) from the saved out and lse."""
    work = _work_dtype(q)
    b, hq = q.shape[:2]
    hkv = k.shape[1]
    g = hq // hkv
    dq.zero_()
    dk.zero_()
    dv.zero_()
    for qs, qe, ks, ke in _segments(q, k, cu_q, cu_k):
        lq, lk = qe - qs, ke - ks
        if lq == 0 or lk == 0:
            continue
        off = lk - lq if bottom_right else 0
        q5, k5, v5 = _views(q, k, v, qs, qe, ks, ke, work)
        do5 = dout[:, :, qs:qe].to(work).unflatten(1, (hkv, g))
        delta = (do5 * out[:, :, qs:qe].to(work).unflatten(1, (hkv, g))).sum(-1)
        lse5 = lse[:, :, qs:qe].to(work).unflatten(1, (hkv, g))
        tile = _Tile(q5, k5, mask, scale, softcap, off, left, right, g)
        dk_acc = torch.zeros(b, hkv, lk, k.shape[-1], dtype=work)
        dv_acc = torch.zeros(b, hkv, lk, v.shape[-1], dtype=work)
        bq, bk = _plan(b, hq, lq, lk)
        for i0 in range(0, lq, bq):
            i1 = min(lq, i0 + bq)
            lo, hi = _key_range(i0, i1, lk, off, left, right)
            dq_acc = torch.zeros(b, hkv, g, i1 - i0, q.shape[-1], dtype=work)
            do_b = do5[:, :, :, i0:i1]
            for j0 in range(lo, hi, bk):
                j1 = min(hi, j0 + bk)
                s, t = tile.scores(i0, i1, j0, j1, qs, ks)
                p = torch.exp(s - lse5[:, :, :, i0:i1].unsqueeze(-1))
                dv_acc[:, :, j0:j1] += torch.matmul(p.transpose(-1, -2), do_b).sum(2)
                dp = torch.matmul(do_b, v5[:, :, :, j0:j1].transpose(-1, -2))
                ds = p * (dp - delta[:, :, :, i0:i1].unsqueeze(-1))
                if t is not None:
                    ds = ds * (1 - t * t)
                dq_acc += torch.matmul(ds, k5[:, :, :, j0:j1])
                dk_acc[:, :, j0:j1] += torch.matmul(ds.transpose(-1, -2),
                                                    q5[:, :, :, i0:i1]).sum(2)
            dq[:, :, qs + i0:qs + i1] = (dq_acc * scale).flatten(1, 2).to(dq.dtype)
        dk[:, :, ks:ke] = (dk_acc * scale).to(dk.dtype)
        dv[:, :, ks:ke] = dv_acc.to(dv.dtype)

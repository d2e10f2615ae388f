"""Backend ``cpu`` of attention: the calls torch's SDPA cannot run, computed block by block.

Those are: sliding windows, softcap, packed varlen batches, bottom-right causal with Lq != Lk, a
mask together with causal, and any call that wants lse. Two strategies, both memory-bounded,
both skipping whatever a window or causal bound hides, both running each sequence of a packed
batch on its own (padding is never computed):

* fused (no softcap): each piece — a sequence, or a block of query rows with the keys a window
  leaves visible — goes to torch's own fused CPU flash-attention kernel
  (``aten::_scaled_dot_product_flash_attention_for_cpu`` and its backward, which return and take
  lse) with is_causal where the piece's diagonal is top-left aligned, else an additive mask
  tile for the window's edges. So the inner loop is PyTorch's vectorised kernel, and the work is
  the visible band instead of the dense Lq x Lk of masked SDPA.
* tiled (softcap, or a torch without that kernel): FlashAttention's online softmax in PyTorch
  tensor ops over [B, Hq, bq, bk] score tiles of ~1 MB (cache-resident), low precision computed
  in float32 (float64 stays float64). The backward recomputes p = exp(s - lse) tile by tile.

dK and dV of a GQA group and of overlapping window pieces are summed in a fixed order, so both
directions are deterministic. Lives beside ops/attention.py rather than in csrc/cpu: on CPU a
composition of large fused calls runs at the speed of PyTorch's own kernels; a C++ copy would
need its own GEMM to match them.
"""

from __future__ import annotations

import torch

from .. import _ext
from ..reference.attention import lse_dtype

__all__ = ["forward", "backward"]

# Tiled strategy: scores per tile (B * Hq * bq * bk) ~ 256K floats = 1 MB, inside L2, with the
# matmuls still large enough that Python overhead stays small (measured: 4 MB+ tiles were ~2x
# slower on a 2-core AVX-512 machine, 0.5 MB tiles no faster).
_TILE_ELEMENTS = 1 << 18
_MAX_BK = 256
# Tiled strategy, softcap without a mask: scores are within (-softcap, softcap), so float32
# exp(score) cannot overflow below 88; 40 leaves room for sums over millions of keys.
_CAPPED_MAX_SOFTCAP = 40.0
# Fused strategy: largest additive mask tile (elements) built per piece.
_MASK_ELEMENTS = 1 << 22


def _segments(q, k, cu_q, cu_k):
    """(q_start, q_end, k_start, k_end) of each sequence: the whole batch, or each packed one."""
    if cu_q is None:
        return [(0, q.shape[2], 0, k.shape[2])]
    cq, ck = cu_q.tolist(), cu_k.tolist()
    return [(cq[s], cq[s + 1], ck[s], ck[s + 1]) for s in range(len(cq) - 1)]


def _key_range(i0, i1, lk, off, left, right):
    """Keys [lo, hi) that any query in [i0, i1) can see."""
    lo = max(0, i0 + off - left) if left >= 0 else 0
    hi = min(lk, i1 - 1 + off + right + 1) if right >= 0 else lk
    return lo, hi


def _hidden(i0, i1, j0, j1, off, left, right):
    """Bool [i1 - i0, j1 - j0], True where the window/causal bound hides a key; None if none."""
    cut_right = right >= 0 and j1 - 1 > i0 + off + right
    cut_left = left >= 0 and j0 < i1 - 1 + off - left
    if not (cut_right or cut_left):
        return None
    diag = torch.arange(i0, i1).unsqueeze(1) + off
    j = torch.arange(j0, j1).unsqueeze(0)
    hide = torch.zeros(i1 - i0, j1 - j0, dtype=torch.bool)
    if cut_right:
        hide |= j > diag + right
    if cut_left:
        hide |= j < diag - left
    return hide


def _fused_available(q, v, softcap) -> bool:
    """torch's kernel has no softcap and needs one head dim for q, k and v."""
    return (softcap == 0 and q.shape[-1] == v.shape[-1]
            and hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"))


def forward(q, k, v, out, lse, mask, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right,
            softcap):
    """Fills out [B, Hq, Lq, Dv] and lse [B, Hq, Lq] (see fastgen.reference.attention)."""
    if mask is not None:
        mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    run = _fused_forward if _fused_available(q, v, softcap) else _tiled_forward
    out.zero_()
    lse.fill_(float("inf"))
    for qs, qe, ks, ke in _segments(q, k, cu_q, cu_k):
        if qe > qs and ke > ks:
            off = (ke - ks) - (qe - qs) if bottom_right else 0
            run(q, k, v, out, lse, mask, qs, qe, ks, ke, off, scale, left, right, softcap)


def backward(dout, q, k, v, out, lse, mask, cu_q, cu_k, max_q, max_k, scale, left, right,
             bottom_right, softcap, dq, dk, dv):
    """Fills dq, dk, dv (laid out like q, k, v) from the saved out and lse."""
    if mask is not None:
        mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    run = _fused_backward if _fused_available(q, v, softcap) else _tiled_backward
    dq.zero_()
    dk.zero_()
    dv.zero_()
    for qs, qe, ks, ke in _segments(q, k, cu_q, cu_k):
        if qe > qs and ke > ks:
            off = (ke - ks) - (qe - qs) if bottom_right else 0
            run(dout, q, k, v, out, lse, mask, qs, qe, ks, ke, off, scale, left, right, softcap,
                dq, dk, dv)


# --- fused: torch's CPU flash-attention kernel per piece ----------------------------------------

def _pieces(lq, lk, off, left, right, has_mask, heads):
    """(i0, i1, lo, hi, is_causal, hide) per piece of one sequence; hide: bool tile or None."""
    if left < 0:
        # One piece, unless a mask tile is needed: then row blocks keep that tile bounded.
        lo, hi = _key_range(0, lq, lk, off, left, right)
        tile_rows = lq * (heads if has_mask else 1)
        needs_tile = has_mask or (right >= 0 and off != 0)
        bq = max(16, lq * _MASK_ELEMENTS // max(1, tile_rows * (hi - lo))) if needs_tile else lq
    else:
        width = left + 1 + (right if right >= 0 else lk)
        bq = max(32, min(256, width // 2))
    for i0 in range(0, lq, bq):
        i1 = min(lq, i0 + bq)
        lo, hi = _key_range(i0, i1, lk, off, left, right)
        if hi <= lo:
            continue
        # A tile whose diagonal starts at its corner is exactly the kernel's top-left causal.
        if right == 0 and left < 0 and i0 + off == lo and not has_mask:
            yield i0, i1, lo, hi, True, None
        else:
            yield i0, i1, lo, hi, False, _hidden(i0, i1, lo, hi, off, left, right)


def _piece_inputs(q, k, v, mask, qs, ks, i0, i1, lo, hi, hide):
    """q block, the visible keys/values (GQA heads expanded) and the additive mask tile."""
    g = q.shape[1] // k.shape[1]
    qb = q[:, :, qs + i0:qs + i1]
    kb, vb = k[:, :, ks + lo:ks + hi], v[:, :, ks + lo:ks + hi]
    if g > 1:
        kb, vb = kb.repeat_interleave(g, dim=1), vb.repeat_interleave(g, dim=1)
    tile = None
    if mask is not None:
        m = mask[:, :, qs + i0:qs + i1, ks + lo:ks + hi]
        tile = (torch.zeros(m.shape, dtype=q.dtype).masked_fill_(~m, float("-inf"))
                if m.dtype == torch.bool else m.to(q.dtype))
    if hide is not None:
        h = torch.zeros(hide.shape, dtype=q.dtype).masked_fill_(hide, float("-inf"))
        tile = h if tile is None else tile + h
    return qb, kb, vb, tile


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    """t with a unit stride on its last (head) dim: the aten CPU flash kernels assume one and
    read a strided or expanded head dim wrongly (torch's public SDPA copies first too)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _fused_forward(q, k, v, out, lse, mask, qs, qe, ks, ke, off, scale, left, right, softcap):
    for i0, i1, lo, hi, causal, hide in _pieces(qe - qs, ke - ks, off, left, right,
                                                mask is not None, q.shape[0] * q.shape[1]):
        qb, kb, vb, tile = _piece_inputs(q, k, v, mask, qs, ks, i0, i1, lo, hi, hide)
        o, l_ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            _unit_last(qb), _unit_last(kb), _unit_last(vb), 0.0, causal, attn_mask=tile,
            scale=scale)
        if tile is not None:  # rows that see no key: the kernel writes lse 0, we write +inf
            l_ = l_.masked_fill(torch.isneginf(tile).all(-1).expand(l_.shape), float("inf"))
        out[:, :, qs + i0:qs + i1] = o
        lse[:, :, qs + i0:qs + i1] = l_


def _fused_backward(dout, q, k, v, out, lse, mask, qs, qe, ks, ke, off, scale, left, right,
                    softcap, dq, dk, dv):
    g = q.shape[1] // k.shape[1]
    work = lse_dtype(q.dtype)
    dk_acc = torch.zeros(k.shape[0], k.shape[1], ke - ks, k.shape[3], dtype=work)
    dv_acc = torch.zeros(v.shape[0], v.shape[1], ke - ks, v.shape[3], dtype=work)
    for i0, i1, lo, hi, causal, hide in _pieces(qe - qs, ke - ks, off, left, right,
                                                mask is not None, q.shape[0] * q.shape[1]):
        qb, kb, vb, tile = _piece_inputs(q, k, v, mask, qs, ks, i0, i1, lo, hi, hide)
        rows = slice(qs + i0, qs + i1)
        dqb, dkb, dvb = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            _unit_last(dout[:, :, rows]), _unit_last(qb), _unit_last(kb), _unit_last(vb),
            _unit_last(out[:, :, rows]), lse[:, :, rows], 0.0, causal, attn_mask=tile,
            scale=scale)
        dq[:, :, rows] = dqb
        if g > 1:
            dkb, dvb = dkb.unflatten(1, (-1, g)).sum(2), dvb.unflatten(1, (-1, g)).sum(2)
        dk_acc[:, :, lo:hi] += dkb
        dv_acc[:, :, lo:hi] += dvb
    dk[:, :, ks:ke] = dk_acc
    dv[:, :, ks:ke] = dv_acc


# --- tiled: online softmax in tensor ops ---------------------------------------------------------

def _fused_softcap() -> bool:
    """csrc/cpu/attention.cpp's one-pass softcap tile kernels are built (else tensor ops)."""
    return _ext.has_op("softcap_probs_")


def _plan(b, hq, lq, lk):
    bk = max(1, min(lk, _MAX_BK))
    bq = max(16, _TILE_ELEMENTS // max(1, b * hq * bk))
    return min(bq, max(lq, 1)), bk


class _Tile:
    """Scores of one (query block, key block) tile with softcap, mask and window applied.

    With softcap and no mask the scores are bounded, |s| < softcap, so exp(s) cannot overflow
    (for softcap <= _CAPPED_MAX_SOFTCAP in float32): the softmax then needs no running maximum,
    and p = exp(softcap * tanh(raw / softcap)) takes three passes over a tile instead of seven.
    """

    def __init__(self, q, k, mask, qs, ks, qe, ke, scale, softcap, off, left, right, work):
        hkv = k.shape[1]
        # Scale folded into q once: softcap needs raw / softcap, the rest raw * scale.
        pre = scale / softcap if softcap > 0 else scale
        self.q5 = (q[:, :, qs:qe].to(work) * pre).unflatten(1, (hkv, -1))
        self.k5 = k[:, :, ks:ke].to(work).unsqueeze(2)
        self.mask = None if mask is None else mask[:, :, qs:qe, ks:ke].unflatten(1, (hkv, -1))
        self.softcap, self.off, self.left, self.right = softcap, off, left, right
        limit = _CAPPED_MAX_SOFTCAP * (8 if work == torch.float64 else 1)
        self.capped = mask is None and 0 < softcap <= limit
        self.fused = self.capped and _fused_softcap()  # one C++ pass per tile

    def raw(self, i0, i1, j0, j1):
        return torch.matmul(self.q5[:, :, :, i0:i1], self.k5[:, :, :, j0:j1].transpose(-1, -2))

    def scores(self, i0, i1, j0, j1, need_t=False):
        """Returns (s [B, Hkv, G, bq, bk], tanh(raw / softcap) if need_t else None)."""
        s = self.raw(i0, i1, j0, j1)
        t = None
        if self.softcap > 0:
            s.tanh_()
            t = s.clone() if need_t else None
            s.mul_(self.softcap)
        if self.mask is not None:
            m = self.mask[:, :, :, i0:i1, j0:j1]
            s = s.masked_fill_(~m, float("-inf")) if m.dtype == torch.bool else s.add_(m)
        hide = _hidden(i0, i1, j0, j1, self.off, self.left, self.right)
        if hide is not None:
            s.masked_fill_(hide, float("-inf"))
        return s, t

    def capped_probs(self, i0, i1, j0, j1, lse=None):
        """exp(s - lse) (lse None: exp(s)) for bounded softcap scores, and tanh(raw / softcap)
        when lse is given (the backward needs it)."""
        t = self.raw(i0, i1, j0, j1).tanh_()
        p = torch.mul(t, self.softcap) if lse is not None else t.mul_(self.softcap)
        if lse is not None:
            p.sub_(lse.unsqueeze(-1))
        p.exp_()
        hide = _hidden(i0, i1, j0, j1, self.off, self.left, self.right)
        if hide is not None:
            p.masked_fill_(hide, 0.0)
        return p, (t if lse is not None else None)


def _tiled_forward(q, k, v, out, lse, mask, qs, qe, ks, ke, off, scale, left, right, softcap):
    work = lse_dtype(q.dtype)
    b, hq, hkv = q.shape[0], q.shape[1], k.shape[1]
    lq, lk = qe - qs, ke - ks
    tile = _Tile(q, k, mask, qs, ks, qe, ke, scale, softcap, off, left, right, work)
    v5 = v[:, :, ks:ke].to(work).unsqueeze(2)
    bq, bk = _plan(b, hq, lq, lk)
    for i0 in range(0, lq, bq):
        i1 = min(lq, i0 + bq)
        lo, hi = _key_range(i0, i1, lk, off, left, right)
        # m stays 0 on the capped path (no running maximum needed there).
        m = torch.full((b, hkv, hq // hkv, i1 - i0), 0.0 if tile.capped else float("-inf"),
                       dtype=work)
        denom = torch.zeros_like(m)
        acc = torch.zeros(b, hkv, hq // hkv, i1 - i0, v.shape[-1], dtype=work)
        for j0 in range(lo, hi, bk):
            j1 = min(hi, j0 + bk)
            if tile.fused:
                p = tile.raw(i0, i1, j0, j1)
                torch.ops.fastgen.softcap_probs_(p.view(-1, j1 - j0), denom.view(-1),
                                                 softcap, i0, j0, i1 - i0, off, left, right)
                acc.add_(torch.matmul(p, v5[:, :, :, j0:j1]))
                continue
            if tile.capped:
                p, _ = tile.capped_probs(i0, i1, j0, j1)
                denom.add_(p.sum(dim=-1))
                acc.add_(torch.matmul(p, v5[:, :, :, j0:j1]))
                continue
            s, _ = tile.scores(i0, i1, j0, j1)
            m_new = torch.maximum(m, s.amax(dim=-1))
            m_safe = m_new.nan_to_num(neginf=0.0)  # a row with nothing visible yet
            p = s.sub_(m_safe.unsqueeze(-1)).exp_()
            alpha = torch.exp(m - m_safe)
            denom = denom.mul_(alpha).add_(p.sum(dim=-1))
            acc = acc.mul_(alpha.unsqueeze(-1)).add_(torch.matmul(p, v5[:, :, :, j0:j1]))
            m = m_new
        seen = denom > 0
        safe = torch.where(seen, denom, 1.0)
        out[:, :, qs + i0:qs + i1] = (acc / safe.unsqueeze(-1)).flatten(1, 2)
        lse[:, :, qs + i0:qs + i1] = torch.where(seen, m + torch.log(safe),
                                                 float("inf")).flatten(1, 2)


def _tiled_backward(dout, q, k, v, out, lse, mask, qs, qe, ks, ke, off, scale, left, right,
                    softcap, dq, dk, dv):
    work = lse_dtype(q.dtype)
    b, hq, hkv = q.shape[0], q.shape[1], k.shape[1]
    lq, lk = qe - qs, ke - ks
    tile = _Tile(q, k, mask, qs, ks, qe, ke, scale, softcap, off, left, right, work)
    q5 = q[:, :, qs:qe].to(work).unflatten(1, (hkv, -1))
    k5 = tile.k5
    v5 = v[:, :, ks:ke].to(work).unsqueeze(2)
    do5 = dout[:, :, qs:qe].to(work).unflatten(1, (hkv, -1))
    delta = (do5 * out[:, :, qs:qe].to(work).unflatten(1, (hkv, -1))).sum(-1)
    lse5 = lse[:, :, qs:qe].to(work).unflatten(1, (hkv, -1))
    dk_acc = torch.zeros(b, hkv, lk, k.shape[-1], dtype=work)
    dv_acc = torch.zeros(b, hkv, lk, v.shape[-1], dtype=work)
    one = torch.ones((), dtype=work)
    bq, bk = _plan(b, hq, lq, lk)
    for i0 in range(0, lq, bq):
        i1 = min(lq, i0 + bq)
        lo, hi = _key_range(i0, i1, lk, off, left, right)
        dq_acc = torch.zeros(b, hkv, hq // hkv, i1 - i0, q.shape[-1], dtype=work)
        do_b = do5[:, :, :, i0:i1]
        lse_b = lse5[:, :, :, i0:i1].contiguous()
        delta_b = delta[:, :, :, i0:i1].contiguous()
        for j0 in range(lo, hi, bk):
            j1 = min(hi, j0 + bk)
            dp = torch.matmul(do_b, v5[:, :, :, j0:j1].transpose(-1, -2))
            if tile.fused:
                p, ds = tile.raw(i0, i1, j0, j1), dp
                torch.ops.fastgen.softcap_probs_bwd_(
                    p.view(-1, j1 - j0), ds.view(-1, j1 - j0), lse_b.view(-1), delta_b.view(-1),
                    softcap, i0, j0, i1 - i0, off, left, right)
            else:
                if tile.capped:
                    p, t = tile.capped_probs(i0, i1, j0, j1, lse_b)
                else:
                    s, t = tile.scores(i0, i1, j0, j1, need_t=True)
                    p = s.sub_(lse_b.unsqueeze(-1)).exp_()
                ds = dp.sub_(delta_b.unsqueeze(-1)).mul_(p)
                if t is not None:
                    ds.mul_(torch.addcmul(one, t, t, value=-1))  # softcap': 1 - tanh^2
            dv_acc[:, :, j0:j1] += torch.matmul(p.transpose(-1, -2), do_b).sum(2)
            dq_acc += torch.matmul(ds, k5[:, :, :, j0:j1])
            dk_acc[:, :, j0:j1] += torch.matmul(ds.transpose(-1, -2),
                                                q5[:, :, :, i0:i1]).sum(2)
        dq[:, :, qs + i0:qs + i1] = (dq_acc * scale).flatten(1, 2)
    dk[:, :, ks:ke] = dk_acc * scale
    dv[:, :, ks:ke] = dv_acc

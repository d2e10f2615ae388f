"""Fused attention: an SDPA drop-in and a FlashAttention-style API over one set of kernels.

    fastgen/ops/attention.py                this file: the two public functions, argument checks,
                                            backend table, op registration (fakes, autograd)
    fastgen/ops/_attention_blockwise.py     backend ``cpu``: memory-bounded blockwise PyTorch
    fastgen/reference/attention.py          the dense math, every feature, float64-able
    kernels/attention.py                    backend ``triton``: flash-attention forward/backward
    tests/ops/test_attention.py             tests; fastgen/bench/attention.py benchmark cases

Both public functions reduce a call to one internal form, q [B, Hq, Lq, D], k [B, Hkv, Lk, D],
v [B, Hkv, Lk, Dv] as strided views (no copies: FlashAttention's [B, L, H, D] is a transpose, a
packed varlen [total, H, D] batch is [1, H, total, D] plus cu_seqlens), and a visibility rule

    key j is visible to query i  iff  i + off - left <= j <= i + off + right

with off = 0 (top-left, ``scaled_dot_product_attention``) or Lk - Lq per sequence (bottom-right,
``flash_attention``); causal is right = 0, a negative bound is unbounded.

Causal alignment when Lq != Lk (x = visible), Lq = 2, Lk = 5:

    scaled_dot_product_attention(is_causal=True)     flash_attention(causal=True)
    top-left: j <= i                                 bottom-right: j <= i + Lk - Lq
        x . . . .                                        x x x x .
        x x . . .                                        x x x x x

They agree when Lq = Lk. For decoding (Lq = 1 against a cache) only bottom-right is right.

Ops in ``torch.ops.fastgen``: ``attention_fwd_triton`` / ``attention_bwd_triton`` and
``attention_fwd_cpu`` / ``attention_bwd_cpu``, all ``custom_op`` (see ops/bias_act.py for why not
``triton_op``), returning (out, lse) and (dq, dk, dv). The backward recomputes the probabilities
from lse (no N x N matrix is ever stored) and is deterministic: no atomics, fixed reduction order.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from .. import _ext, registry
from ..reference.attention import attention as _reference
from ..reference.attention import lse_dtype
from . import _attention_blockwise as _blockwise

__all__ = ["scaled_dot_product_attention", "flash_attention", "MAX_HEAD_DIM"]

MAX_HEAD_DIM = 256
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False, *, backend: Optional[str] = None
                                 ) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention``, same semantics.

    Args:
        query: [..., Hq, L, E]; key: [..., Hkv, S, E]; value: [..., Hkv, S, Ev]; one float dtype
            and device. Hkv must equal Hq unless enable_gqa (then Hq % Hkv == 0).
        attn_mask: bool (True = take part) or additive float (query's dtype), broadcastable to
            [..., Hq, L, S]; not together with is_causal.
        dropout_p: probability of dropping an attention weight (the Triton backend has no
            dropout; the CPU backend uses torch's SDPA for it).
        is_causal: causal mask aligned top-left (query i sees keys j <= i), as torch's SDPA.
        scale: score scale, default 1 / sqrt(E).
        enable_gqa: allow fewer key/value heads than query heads (grouped-query attention).
        backend: "triton", "cpu" or "reference"; default: FASTGEN_BACKEND, else the best one.

    Returns:
        [..., Hq, L, Ev] in query's dtype. Rows that can see no key are 0 (as torch's SDPA).
    """
    name = "scaled_dot_product_attention"
    for arg, t in (("query", query), ("key", key), ("value", value)):
        _check_tensor(name, arg, t, query, min_ndim=2)
    try:  # batch dims broadcast, as in torch's SDPA (e.g. learned queries with batch 1)
        lead = torch.broadcast_shapes(query.shape[:-3], key.shape[:-3], value.shape[:-3])
    except RuntimeError:
        raise ValueError(f"{name}: the batch dims of query, key and value must broadcast, got "
                         f"{list(query.shape[:-3])}, {list(key.shape[:-3])}, "
                         f"{list(value.shape[:-3])}") from None
    if min(query.ndim, key.ndim, value.ndim) >= 3:
        query, key, value = (t.expand(*lead, *t.shape[-3:]) for t in (query, key, value))
    q, k, v = (_as_bhld(t) for t in (query, key, value))
    _check_heads(name, q, k, v, "query", "key", "value", enable_gqa)
    if not isinstance(dropout_p, numbers.Real) or not 0 <= dropout_p < 1:
        raise ValueError(f"{name}: dropout_p must be in [0, 1), got {dropout_p!r}")
    scale = _check_scale(name, scale, q.shape[-1])
    mask = None
    if attn_mask is not None:
        if is_causal:
            raise ValueError(f"{name}: pass attn_mask or is_causal=True, not both (as torch's "
                             "SDPA); fold the causal mask into attn_mask")
        mask = _check_mask(name, attn_mask, query, (*lead, q.shape[1], q.shape[2], k.shape[2]))
    out, _ = _dispatch(q, k, v, mask, None, None, q.shape[2], k.shape[2], scale, -1,
                       0 if is_causal else -1, False, 0.0, float(dropout_p), False, backend)
    return out if query.ndim == 4 else out.reshape(*query.shape[:-1], value.shape[-1])


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    window: tuple[int, int] = (-1, -1), softcap: float = 0.0,
                    scale: Optional[float] = None, cu_seqlens_q: Optional[torch.Tensor] = None,
                    cu_seqlens_k: Optional[torch.Tensor] = None,
                    max_seqlen_q: Optional[int] = None, max_seqlen_k: Optional[int] = None,
                    return_lse: bool = False, backend: Optional[str] = None):
    """FlashAttention-style attention (``flash_attn_func`` / ``flash_attn_varlen_func``).

    Args:
        q: [B, Lq, Hq, D], k: [B, Lk, Hkv, D], v: [B, Lk, Hkv, Dv]; or, with cu_seqlens, packed
            [total_q, Hq, D], [total_k, Hkv, D], [total_k, Hkv, Dv]. Hq % Hkv == 0 (GQA/MQA);
            D, Dv <= 256 (any value, not only powers of two).
        causal: causal mask aligned bottom-right (query i sees keys j <= i + Lk - Lq).
        window: (left, right) sliding window, aligned like causal: query i sees keys
            [i + Lk - Lq - left, i + Lk - Lq + right]; -1 = unbounded. causal sets right = 0.
        softcap: > 0 applies softcap * tanh(score / softcap) (Gemma 2); 0 disables.
        scale: score scale, default 1 / sqrt(D).
        cu_seqlens_q, cu_seqlens_k: int32 [S + 1] cumulative sequence lengths (0 first,
            non-decreasing, last = total) of S packed sequences; both or neither.
        max_seqlen_q, max_seqlen_k: the longest sequence of each (computed when None).
        return_lse: also return the log-sum-exp of the scores, [B, Hq, Lq] (varlen: [Hq,
            total_q]), float32 (float64 for float64 inputs); rows that see no key get out = 0
            and lse = +inf. lse carries no gradient.
        backend: "triton", "cpu" or "reference"; default: FASTGEN_BACKEND, else the best one.

    Returns:
        out like q with head dim Dv (and lse if return_lse).
    """
    name = "flash_attention"
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    for arg, t in (("q", q), ("k", k), ("v", v)):
        _check_tensor(name, arg, t, q, exact_ndim=3 if varlen else 4)
    if varlen:
        if cu_seqlens_q is None or cu_seqlens_k is None:
            raise ValueError(f"{name}: pass both cu_seqlens_q and cu_seqlens_k, or neither")
        if k.shape[0] != v.shape[0]:
            raise ValueError(f"{name}: k and v must have the same total length, got "
                             f"{k.shape[0]} and {v.shape[0]}")
        q4, k4, v4 = (t.transpose(0, 1)[None] for t in (q, k, v))
        max_q = _check_cu_seqlens(name, "cu_seqlens_q", cu_seqlens_q, q, max_seqlen_q, None)
        max_k = _check_cu_seqlens(name, "cu_seqlens_k", cu_seqlens_k, k, max_seqlen_k,
                                  cu_seqlens_q.shape)
    else:
        if not (q.shape[0] == k.shape[0] == v.shape[0]):
            raise ValueError(f"{name}: q, k and v must have the same batch size, got "
                             f"{q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
        q4, k4, v4 = (t.transpose(1, 2) for t in (q, k, v))
        max_q, max_k = q4.shape[2], k4.shape[2]
    _check_heads(name, q4, k4, v4, "q", "k", "v", True)
    for arg, d in (("q", q4.shape[-1]), ("v", v4.shape[-1])):
        if d > MAX_HEAD_DIM:
            raise ValueError(f"{name}: head dim of {arg} must be <= {MAX_HEAD_DIM} (as "
                             f"FlashAttention), got {d}; use scaled_dot_product_attention")
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(w, numbers.Integral) and w >= -1 for w in window)):
        raise ValueError(f"{name}: window must be (left, right) ints >= -1, got {window!r}")
    if (not isinstance(softcap, numbers.Real) or not math.isfinite(softcap) or softcap < 0):
        raise ValueError(f"{name}: softcap must be a finite number >= 0, got {softcap!r}")
    scale = _check_scale(name, scale, q4.shape[-1])
    # A bound past every key is no bound (and must not overflow the kernels' index arithmetic).
    reach = max_q + max_k
    left, right = (int(w) if w <= reach else -1 for w in window)
    right = 0 if causal else right
    out, lse = _dispatch(q4, k4, v4, None, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale, left,
                         right, True, float(softcap), 0.0, return_lse, backend)
    # [B, L, H, Dv] memory (the layout FlashAttention returns) also where torch's SDPA ran.
    out = (out[0].transpose(0, 1) if varlen else out.transpose(1, 2)).contiguous()
    if not return_lse:
        return out
    return out, (lse[0] if varlen else lse)


def _as_bhld(t):
    """[..., H, L, E] -> [B, H, L, E] (a view when the batch dims merge); [L, E] -> [1, 1, L, E].
    The batch size is spelled out: reshape(-1, ...) is ambiguous when a dimension is 0."""
    if t.ndim == 4:
        return t
    if t.ndim < 3:
        return t[None, None]
    return t.reshape(math.prod(t.shape[:-3]), *t.shape[-3:])


# --- argument checks ---------------------------------------------------------------------------

def _check_tensor(fn, arg, t, ref, min_ndim=None, exact_ndim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {arg} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{fn}: {arg} must be float16, bfloat16, float32 or float64, got "
                        f"{t.dtype}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{fn}: q, k and v must share one dtype; {arg} is {t.dtype}, the query "
                        f"is {ref.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{fn}: {arg} is on {t.device} but the query is on {ref.device}")
    if exact_ndim is not None and t.ndim != exact_ndim:
        layout = "[total, H, D] (varlen)" if exact_ndim == 3 else "[B, L, H, D]"
        raise ValueError(f"{fn}: {arg} must be {layout}, got shape {list(t.shape)}")
    if min_ndim is not None and t.ndim < min_ndim:
        raise ValueError(f"{fn}: {arg} must be [..., L, E], got shape {list(t.shape)}")


def _check_heads(fn, q, k, v, nq, nk, nv, gqa):
    """q [B, Hq, Lq, D], k [B, Hkv, Lk, D], v [B, Hkv, Lk, Dv] in internal form."""
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{fn}: {nq} and {nk} must have the same head dim, got {q.shape[-1]} "
                         f"and {k.shape[-1]}")
    if k.shape[1:3] != v.shape[1:3]:
        raise ValueError(f"{fn}: {nk} and {nv} must have the same heads and length, got "
                         f"{list(k.shape)} and {list(v.shape)} (as [B, H, L, D])")
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        if not gqa:
            raise ValueError(f"{fn}: {nq} has {hq} heads and {nk} has {hkv}; pass "
                             "enable_gqa=True for grouped-query attention")
        if hkv == 0 or hq % hkv:
            raise ValueError(f"{fn}: the number of query heads ({hq}) must be divisible by the "
                             f"number of key/value heads ({hkv})")
    if min(q.shape[-1], v.shape[-1]) < 1:
        raise ValueError(f"{fn}: head dims must be >= 1, got {q.shape[-1]} and {v.shape[-1]}")


def _check_scale(fn, scale, d):
    if scale is None:
        return 1.0 / math.sqrt(d)
    if not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"{fn}: scale must be a finite number or None, got {scale!r}")
    return float(scale)


def _check_mask(fn, mask, query, full_shape):
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{fn}: attn_mask must be a torch.Tensor or None, got "
                        f"{type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{fn}: attn_mask must be bool or floating point, got {mask.dtype}")
    if mask.dtype != torch.bool and mask.dtype != query.dtype:
        mask = mask.to(query.dtype)  # torch's SDPA adds it in the query's dtype too
    if mask.device != query.device:
        raise ValueError(f"{fn}: attn_mask is on {mask.device} but the query is on "
                         f"{query.device}")
    try:
        if torch.broadcast_shapes(mask.shape, full_shape) != torch.Size(full_shape):
            raise RuntimeError
    except RuntimeError:
        raise ValueError(f"{fn}: attn_mask of shape {list(mask.shape)} does not broadcast to "
                         f"[..., Hq, L, S] = {list(full_shape)}") from None
    m = mask.expand(full_shape)
    return m.reshape(math.prod(full_shape[:-3]), *full_shape[-3:])


def _check_cu_seqlens(fn, arg, cu, x, max_seqlen, other_shape):
    if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.ndim != 1:
        got = f"{cu.dtype} {list(cu.shape)}" if isinstance(cu, torch.Tensor) else type(cu).__name__
        raise TypeError(f"{fn}: {arg} must be a 1-D int32 tensor [S + 1], got {got}")
    if cu.device != x.device:
        raise ValueError(f"{fn}: {arg} is on {cu.device} but q is on {x.device}")
    if cu.numel() < 1:
        raise ValueError(f"{fn}: {arg} must hold at least one offset (0)")
    if other_shape is not None and cu.shape != other_shape:
        raise ValueError(f"{fn}: cu_seqlens_q and cu_seqlens_k must have the same length, got "
                         f"{other_shape[0]} and {cu.shape[0]}")
    if torch.compiler.is_compiling():
        return int(max_seqlen) if max_seqlen is not None else int(x.shape[0])
    lengths = cu.diff()
    if int(cu[0]) != 0 or bool((lengths < 0).any()) or int(cu[-1]) != x.shape[0]:
        raise ValueError(f"{fn}: {arg} must start at 0, never decrease and end at the packed "
                         f"length {x.shape[0]}; got {cu.tolist()[:8]}"
                         f"{'...' if cu.numel() > 8 else ''}")
    longest = int(lengths.max()) if lengths.numel() else 0
    if max_seqlen is None:
        return longest
    if not isinstance(max_seqlen, numbers.Integral) or max_seqlen < longest:
        name = "max_seqlen_" + arg[-1]
        raise ValueError(f"{fn}: {name} must be an int >= the longest sequence ({longest}), "
                         f"got {max_seqlen!r}")
    return int(max_seqlen)


# --- dispatch ----------------------------------------------------------------------------------

def _dispatch(q, k, v, mask, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right, softcap,
              dropout_p, need_lse, backend):
    args = (q, k, v, mask, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right, softcap,
            dropout_p, need_lse)
    return _OP.select(q.device.type, args, backend).fn(*args)


def _sdpa_covers(q, k, mask, cu_q, left, right, bottom_right, softcap) -> bool:
    """Whether torch's own SDPA computes exactly this call (top-left causal or none, no window,
    softcap or packed sequences, and not a mask together with causal)."""
    causal = right == 0
    return (cu_q is None and softcap == 0 and left < 0 and (right < 0 or causal)
            and not (causal and mask is not None)
            and not (causal and bottom_right and q.shape[2] != k.shape[2]))


def _run_cpu(q, k, v, mask, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right, softcap,
             dropout_p, need_lse):
    if not need_lse and _sdpa_covers(q, k, mask, cu_q, left, right, bottom_right, softcap):
        out = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=right == 0, scale=scale,
            enable_gqa=q.shape[1] != k.shape[1])
        return out, None
    return torch.ops.fastgen.attention_fwd_cpu(q, k, v, mask, cu_q, cu_k, max_q, max_k, scale,
                                               left, right, bottom_right, softcap)


def _run_triton(q, k, v, mask, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right,
                softcap, dropout_p, need_lse):
    return torch.ops.fastgen.attention_fwd_triton(q, k, v, mask, cu_q, cu_k, max_q, max_k, scale,
                                                  left, right, bottom_right, softcap)


def _run_reference(q, k, v, mask, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right,
                   softcap, dropout_p, need_lse):
    return _reference(q, k, v, mask, cu_q, cu_k, scale, left, right, bottom_right, softcap,
                      dropout_p)


def _mask_grad_reason(mask):
    if mask is not None and mask.requires_grad:
        return "no gradient for attn_mask (use backend='reference')"
    return None


def _check_triton(q, k, v, mask, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right,
                  softcap, dropout_p, need_lse):
    if q.dtype == torch.float64:
        return "float64 is not supported (float16, bfloat16, float32)"
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_DIM:
        return f"head dims above {MAX_HEAD_DIM} are not supported"
    if dropout_p > 0:
        return "no dropout (pass dropout_p=0, or backend='reference')"
    if any(_max_offset(t) >= 2**31 for t in (q, k, v, mask) if t is not None):
        return "tensors spanning 2**31 elements or more (the kernels index with int32)"
    return _mask_grad_reason(mask)


def _max_offset(t: torch.Tensor) -> int:
    return sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride())) if t.numel() else 0


def _check_cpu(q, k, v, mask, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right,
               softcap, dropout_p, need_lse):
    if scale <= 0:  # (torch's own SDPA included: NaN rows under a causal mask)
        return "scale <= 0: aten's CPU flash kernels return NaN rows for it"
    if _sdpa_covers(q, k, mask, cu_q, left, right, bottom_right, softcap) and not need_lse:
        return None  # torch's SDPA runs it, dropout and mask gradients included
    if dropout_p > 0:
        return "dropout only where torch's SDPA covers the call (no window, softcap or varlen)"
    return _mask_grad_reason(mask)


# --- ops: fakes and autograd -------------------------------------------------------------------

def out_like(q: torch.Tensor, dv: int) -> torch.Tensor:
    """Empty output [B, Hq, Lq, Dv] laid out like q: [B, L, H, D] memory when q is a transpose
    of that (FlashAttention layout, packed varlen), else [B, H, L, D]."""
    b, h, lq, _ = q.shape
    if q.stride(1) < q.stride(2):
        return q.new_empty(b, lq, h, dv).transpose(1, 2)
    return q.new_empty(b, h, lq, dv)


def _fake_fwd(q, k, v, mask, cu_q, cu_k, max_q, max_k, scale, left, right, bottom_right, softcap):
    return out_like(q, v.shape[-1]), q.new_empty(q.shape[:3], dtype=lse_dtype(q.dtype))


def _fake_bwd(dout, q, k, v, out, lse, mask, cu_q, cu_k, max_q, max_k, scale, left, right,
              bottom_right, softcap):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _register_pair(fwd, bwd) -> None:
    def setup(ctx, inputs, output):
        q, k, v, mask, cu_q, cu_k, *cfg = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, mask, cu_q, cu_k)
        ctx.cfg = cfg
        ctx.mark_non_differentiable(lse)

    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, mask, cu_q, cu_k = ctx.saved_tensors
        dq, dk, dv = bwd(dout, q, k, v, out, lse, mask, cu_q, cu_k, *ctx.cfg)
        return (dq, dk, dv) + (None,) * 10

    torch.library.register_fake(fwd)(_fake_fwd)
    torch.library.register_fake(bwd)(_fake_bwd)
    torch.library.register_autograd(fwd, backward, setup_context=setup)


def _declare(backend: str, impl) -> tuple:
    @torch.library.custom_op(f"fastgen::attention_fwd_{backend}", mutates_args=())
    def fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
            cu_q: Optional[torch.Tensor], cu_k: Optional[torch.Tensor], max_q: int, max_k: int,
            scale: float, left: int, right: int, bottom_right: bool, softcap: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = _fake_fwd(q, k, v, mask, cu_q, cu_k, max_q, max_k, scale, left, right,
                             bottom_right, softcap)
        impl().forward(q, k, v, out, lse, mask, cu_q, cu_k, max_q, max_k, scale, left, right,
                       bottom_right, softcap)
        return out, lse

    @torch.library.custom_op(f"fastgen::attention_bwd_{backend}", mutates_args=())
    def bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            out: torch.Tensor, lse: torch.Tensor, mask: Optional[torch.Tensor],
            cu_q: Optional[torch.Tensor], cu_k: Optional[torch.Tensor], max_q: int, max_k: int,
            scale: float, left: int, right: int, bottom_right: bool, softcap: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dq, dk, dv = _fake_bwd(dout, q, k, v, out, lse, mask, cu_q, cu_k, max_q, max_k, scale,
                               left, right, bottom_right, softcap)
        impl().backward(dout, q, k, v, out, lse, mask, cu_q, cu_k, max_q, max_k, scale, left,
                        right, bottom_right, softcap, dq, dk, dv)
        return dq, dk, dv

    _register_pair(fwd, bwd)
    return fwd, bwd


def _triton_impl():
    from ..kernels import attention  # imports triton: only when this backend runs

    return attention


def _fake_softcap_probs(s, rowsum, softcap, i0, j0, rows, off, left, right):
    return None


def _fake_softcap_probs_bwd(s, dp, lse, delta, softcap, i0, j0, rows, off, left, right):
    return None


if _ext.has_op("softcap_probs_"):  # csrc/cpu/attention.cpp: in-place, so no autograd
    torch.library.register_fake("fastgen::softcap_probs_")(_fake_softcap_probs)
    torch.library.register_fake("fastgen::softcap_probs_bwd_")(_fake_softcap_probs_bwd)

_declare("triton", _triton_impl)
_declare("cpu", lambda: _blockwise)


# --- backends ----------------------------------------------------------------------------------


_OP = registry.register("attention", [
    registry.Backend("triton", _run_triton, devices=("cuda", "cpu"),
                     available=registry.triton_available, check=_check_triton,
                     explicit_only_on=("cpu",),
                     summary="kernels/attention.py"),
    registry.Backend("cpu", _run_cpu, devices=("cpu",), check=_check_cpu,
                     summary="torch SDPA where it covers the call, else "
                             "fastgen/ops/_attention_blockwise.py"),
    registry.Backend("reference", _run_reference, summary="fastgen/reference/attention.py"),
])

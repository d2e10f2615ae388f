"""decode_attention: attention of a few new queries against a KV cache (flash-decoding).

    fastgen/ops/decode.py          this file: public function, checks, backends, op registration
    fastgen/reference/decode.py    the dense math (gathered cache, masks, float32/float64)
    csrc/cpu/decode.cpp            backend ``cpu``: one task per (row, kv head[, split]) reading
                                   each cache row once for the kv head's whole query group
    kernels/decode.py              backend ``triton``: split-KV programs + a logsumexp combine
    tests/ops/test_decode.py       tests; fastgen/bench/decode.py benchmark cases

Decoding reads the whole cache per generated token and does little arithmetic on it, so the
kernels aim at reading each key and value once: the G = Hq / Hkv query heads that share a kv head
go over its keys together (GQA), and splitting the keys (each split a partial softmax with its
logsumexp, merged afterwards) keeps every core busy when batch · kv heads is small.

Inference only: a call whose tensors require grad (with grad mode on) runs the reference, which
is differentiable.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional

import torch

from .. import _ext, registry
from ..reference import decode as _ref

__all__ = ["decode_attention"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_HEAD_DIM = 256


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_seqlens: torch.Tensor, *, block_table: Optional[torch.Tensor] = None,
                     scale: Optional[float] = None, softcap: float = 0.0,
                     window: tuple[int, int] = (-1, -1), causal: bool = True,
                     return_lse: bool = False, validate: bool = True,
                     backend: Optional[str] = None):
    """Attention of the last Lq tokens of each cached sequence (decode: Lq = 1; speculative or
    chunked decoding: a few) against the KV cache that already holds them.

    Args:
        q: [B, Hq, Lq, D] (or [B, Hq, D] for Lq = 1), float16/bfloat16/float32/float64.
        k_cache, v_cache: contiguous caches [B, Hkv, capacity, D] / [B, Hkv, capacity, Dv]
            (:class:`fastgen.nn.KVCache` layout), or with ``block_table`` paged caches
            [num_pages, Hkv, page_size, D] / [..., Dv] (:class:`fastgen.nn.PagedKVCache`).
            Hq % Hkv == 0 (GQA, MQA); the head dim must be contiguous; D, Dv <= 256.
        cache_seqlens: [B] int32/int64, keys held by each row, counting the Lq new ones:
            Lq <= cache_seqlens[b] <= capacity (page_size · pages per row when paged).
        block_table: [B, max_pages] int32/int64 page ids in [0, num_pages): key j of row b is
            slot j % page_size of page block_table[b, j // page_size].
        scale: score scale, default 1 / sqrt(D).
        softcap: > 0 applies softcap · tanh(score / softcap); 0 disables.
        window: (left, right) sliding window around each query's position; -1 = unbounded.
        causal: a query sees no key after its own position (right = 0); the default.
        return_lse: also return the log-sum-exp of the scores [B, Hq, Lq] (float32; +inf for
            a query that sees no key, whose output is 0).
        validate: check cache_seqlens and block_table values (host synchronisations on GPU;
            pass False inside a CUDA graph; skipped under torch.compile). Without it, lengths
            past the capacity are read as the capacity, and page ids must be valid.
        backend: "triton", "cpu" or "reference"; default: FASTGEN_BACKEND, else the best one.

    Returns:
        out like q with head dim Dv (and lse if return_lse).
    """
    name = "decode_attention"
    for arg, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: {arg} must be float16, bfloat16, float32 or float64, got "
                            f"{t.dtype}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: q, k_cache and v_cache must share one dtype; {arg} is "
                            f"{t.dtype}, q is {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: {arg} is on {t.device} but q is on {q.device}")
    squeeze = q.ndim == 3
    q4 = q[:, :, None] if squeeze else q
    if q4.ndim != 4:
        raise ValueError(f"{name}: q must be [B, Hq, Lq, D] or [B, Hq, D], got {list(q.shape)}")
    for arg, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.ndim != 4:
            layout = "[num_pages, Hkv, page_size, D]" if block_table is not None else \
                "[B, Hkv, capacity, D]"
            raise ValueError(f"{name}: {arg} must be {layout}, got {list(t.shape)}")
    b, hq, lq, d = q4.shape
    if k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(f"{name}: k_cache and v_cache must agree in all but the head dim, got "
                         f"{list(k_cache.shape)} and {list(v_cache.shape)}")
    hkv, page, dv = k_cache.shape[1], k_cache.shape[2], v_cache.shape[3]
    if k_cache.shape[3] != d:
        raise ValueError(f"{name}: q and k_cache must have the same head dim, got {d} and "
                         f"{k_cache.shape[3]}")
    if max(d, dv) > _MAX_HEAD_DIM or min(d, dv) < 1:
        raise ValueError(f"{name}: head dims must be in [1, {_MAX_HEAD_DIM}], got {d} and {dv}")
    if hkv == 0 or hq % hkv:
        raise ValueError(f"{name}: the number of query heads ({hq}) must be a multiple of the "
                         f"number of kv heads ({hkv})")
    q4, k_cache, v_cache = (t if t.stride(-1) == 1 else t.contiguous()
                            for t in (q4, k_cache, v_cache))
    seqlens = _check_index(name, "cache_seqlens", cache_seqlens, q.device, 1)
    if seqlens.shape[0] != b:
        raise ValueError(f"{name}: cache_seqlens must be [B] = [{b}], got "
                         f"{list(cache_seqlens.shape)}")
    table = None
    capacity = page
    if block_table is not None:
        table = _check_index(name, "block_table", block_table, q.device, 2)
        if table.shape[0] != b:
            raise ValueError(f"{name}: block_table must be [B, max_pages] with B = {b}, got "
                             f"{list(block_table.shape)}")
        capacity = page * table.shape[1]
    elif k_cache.shape[0] != b:
        raise ValueError(f"{name}: k_cache must be [B, Hkv, capacity, D] with B = {b} (or pass "
                         f"block_table for a paged cache), got {list(k_cache.shape)}")
    if validate and not torch.compiler.is_compiling():
        _check_values(name, seqlens, table, lq, capacity, k_cache.shape[0])
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(w, numbers.Integral) and w >= -1 for w in window)):
        raise ValueError(f"{name}: window must be (left, right) ints >= -1, got {window!r}")
    if not isinstance(softcap, numbers.Real) or not math.isfinite(softcap) or softcap < 0:
        raise ValueError(f"{name}: softcap must be a finite number >= 0, got {softcap!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    elif not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise ValueError(f"{name}: scale must be a finite number or None, got {scale!r}")
    left, right = (int(w) if w <= capacity else -1 for w in window)
    if causal:
        right = 0 if right < 0 else min(right, 0)
    args = (q4, k_cache, v_cache, seqlens, table, float(scale), float(softcap), left, right)
    out, lse = _OP.select(q.device.type, args, backend).fn(*args)
    if squeeze:
        out, lse = out[:, :, 0], lse[:, :, 0]
    return (out, lse) if return_lse else out


def _check_index(fn, arg, t, device, ndim):
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64):
        got = t.dtype if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{fn}: {arg} must be an int32 or int64 tensor, got {got}")
    if t.ndim != ndim:
        raise ValueError(f"{fn}: {arg} must be {ndim}-D, got shape {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{fn}: {arg} is on {t.device} but q is on {device}")
    if t.dtype == torch.int64 and t.numel() and not torch.compiler.is_compiling():
        out_of_range = (t < -2**31) | (t >= 2**31)
        if bool(out_of_range.any()):
            raise ValueError(f"{fn}: {arg} values must fit int32, got "
                             f"{t[out_of_range][0].item()}")
    return t.to(torch.int32).contiguous()


def _check_values(fn, seqlens, table, lq, capacity, n_pages):
    if seqlens.numel() and bool(((seqlens < lq) | (seqlens > capacity)).any()):
        bad = seqlens[(seqlens < lq) | (seqlens > capacity)][0].item()
        raise ValueError(f"{fn}: cache_seqlens must be in [q_len, capacity] = [{lq}, "
                         f"{capacity}] (the queries are the last q_len cached keys), got {bad}")
    if table is not None and table.numel():
        used = torch.arange(table.shape[1], device=table.device) * (capacity // table.shape[1])
        live = used[None, :] < seqlens[:, None]  # pages holding at least one key
        bad = live & ((table < 0) | (table >= n_pages))
        if bool(bad.any()):
            raise ValueError(f"{fn}: block_table holds a page id outside [0, {n_pages}) "
                             f"({table[bad][0].item()}) for a page in use")


# --- backends ----------------------------------------------------------------------------------

def _run_reference(q, k, v, seqlens, table, scale, softcap, left, right):
    out, lse = _ref.decode_attention(q, k, v, seqlens, table, scale, softcap, left, right)
    return out, lse.float()


def _run_cpu(q, k, v, seqlens, table, scale, softcap, left, right):
    # splits = 0: the kernel splits the keys when (row, kv head) tasks are fewer than threads
    return torch.ops.fastgen.decode_attention(q, k, v, seqlens, table, scale, softcap, left,
                                              right, 0)


def _run_triton(q, k, v, seqlens, table, scale, softcap, left, right):
    from ..kernels import decode as kernels

    capacity = k.shape[2] * (table.shape[1] if table is not None else 1)
    splits = kernels.num_splits(q.shape[0] * k.shape[1], capacity, q.device)
    return torch.ops.fastgen.decode_attention_triton(q, k, v, seqlens, table, scale, softcap,
                                                     left, right, splits)


def _fake(q, k, v, seqlens, table, scale, softcap, left, right, splits):
    b, hq, lq, _ = q.shape
    return q.new_empty(b, hq, lq, v.shape[3]), q.new_empty(b, hq, lq, dtype=torch.float32)


@torch.library.custom_op("fastgen::decode_attention_triton", mutates_args=())
def _decode_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             seqlens: torch.Tensor, table: Optional[torch.Tensor], scale: float,
                             softcap: float, left: int, right: int, splits: int
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    from ..kernels import decode as kernels  # imports triton: only when this backend runs

    return kernels.decode_attention(q, k, v, seqlens, table, scale, softcap, left, right, splits)


torch.library.register_fake("fastgen::decode_attention_triton")(_fake)
if _ext.has_op("decode_attention"):
    torch.library.register_fake("fastgen::decode_attention")(_fake)


def _no_grad(q, k, v, *rest) -> Optional[str]:
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return "inputs require grad (decode kernels are inference-only; the reference is not)"
    return None


def _check_triton(q, k, v, *rest) -> Optional[str]:
    if q.dtype == torch.float64:
        return "float64 is not supported (float16, bfloat16, float32)"
    return _no_grad(q, k, v)




_available = functools.partial(_ext.native_available, "decode_attention")
_OP = registry.register("decode_attention", [
    registry.Backend("triton", _run_triton, devices=("cuda", "cpu"),
                     available=registry.triton_available, check=_check_triton,
                     explicit_only_on=("cpu",), summary="kernels/decode.py"),
    registry.Backend("cpu", _run_cpu, devices=("cpu",), available=_available,
                     check=_no_grad, summary="csrc/cpu/decode.cpp"),
    registry.Backend("reference", _run_reference, summary="fastgen/reference/decode.py"),
])

"""Fused transformer-block ops for decode steps: RMSNorm and rotate-half rotary embedding.

    rms_norm(x, weight, eps)        = weight · (x / sqrt(mean(x²) + eps))   over the last dim
    apply_rotary(q, k, cos, sin)    = (q·cos + rotate_half(q)·sin, the same for k)

A token-at-a-time decode step runs each of these on a few rows, where PyTorch's eager versions are
bound by per-op overhead (LlamaRMSNorm is seven ops, apply_rotary_pos_emb ten): one call each here.
Numerics follow transformers' Llama modules (LlamaRMSNorm, apply_rotary_pos_emb): float32 math
(float64 for float64), the normalised row rounded to x's dtype before the weight multiplies it;
float32 rotary results equal transformers' bit for bit, RMSNorm's differ by the order of the
mean's sum (~1e-7 relative). For float16/bfloat16 the kernels round once, at the end, where
eager PyTorch (and the reference) rounds every product and sum to the storage dtype: results
then differ from transformers' by an ulp or so of that dtype (the kernels' are the closer to the
exact value).

    fastgen/ops/transformer.py        this file: checks, backends
    csrc/cpu/transformer.cpp          backend ``cpu``
    kernels/transformer.py            backend ``triton`` (GPU; CPU under TRITON_INTERPRET=1)
    fastgen/reference/transformer.py  backend ``reference`` (PyTorch; differentiable: used
                                      whenever an input requires grad)
    tests/ops/test_transformer.py
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional

import torch

from .. import _ext, registry
from ..reference import transformer as _ref

__all__ = ["rms_norm", "apply_rotary"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TRITON_MAX_ROW = 65536  # rms_norm's Triton kernel holds a row in one tile


def _check_tensors(name, **tensors):
    first = None
    for arg, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: {arg} must be float16, bfloat16, float32 or float64, got "
                            f"{t.dtype}")
        if first is None:
            first = (arg, t)
        elif t.dtype != first[1].dtype or t.device != first[1].device:
            raise TypeError(f"{name}: {arg} is {t.dtype} on {t.device}; {first[0]} is "
                            f"{first[1].dtype} on {first[1].device} (one dtype and device)")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *,
             backend: Optional[str] = None) -> torch.Tensor:
    """RMSNorm over the last dim, as transformers' LlamaRMSNorm computes it.

    Args:
        x: [..., N] float16/bfloat16/float32/float64.
        weight: [N], x's dtype and device.
        eps: added to the mean square; a finite number >= 0.
        backend: "triton", "cpu" or "reference"; default: FASTGEN_BACKEND, else the best
            available (the reference when an input requires grad).

    Returns:
        [..., N] in x's dtype: ``weight * (x.float() * rsqrt(mean(x.float()²) + eps)).to(x.dtype)``.
    """
    name = "rms_norm"
    _check_tensors(name, x=x, weight=weight)
    if x.ndim < 1 or weight.ndim != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"{name}: x [..., N] and weight [N] expected, got {list(x.shape)} and "
                         f"{list(weight.shape)}")
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not math.isfinite(eps) \
            or eps < 0:
        raise ValueError(f"{name}: eps must be a finite number >= 0, got {eps!r}")
    x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])  # (an empty last dim reshapes too)
    args = (x2, weight, float(eps))
    return _NORM.select(x.device.type, args, backend).fn(*args).view(x.shape)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                 backend: Optional[str] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half rotary embedding (Llama, Mistral, Qwen2, GPT-NeoX) of q and k in one call.

    Args:
        q: [B, T, Hq, D] (tokens before heads: a projection's output viewed as heads).
        k: [B, T, Hk, D].
        cos, sin: [B, T, D] (as a transformers rotary module returns them) or [T, D] (every
            row alike); q's dtype and device. D even.
        backend: "triton", "cpu" or "reference"; default: FASTGEN_BACKEND, else the best
            available (the reference when an input requires grad).

    Returns:
        (q·cos + rotate_half(q)·sin, k·cos + rotate_half(k)·sin), contiguous, shapes of q and k;
        rotate_half(x) = cat(−x[..., D/2:], x[..., :D/2]).
    """
    name = "apply_rotary"
    _check_tensors(name, q=q, k=k, cos=cos, sin=sin)
    if q.ndim != 4 or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3] \
            or q.shape[3] % 2 or q.shape[3] == 0:
        raise ValueError(f"{name}: q [B, T, Hq, D] and k [B, T, Hk, D] with one B, T and an even "
                         f"D >= 2 expected, got {list(q.shape)} and {list(k.shape)}")
    b, t, _, d = q.shape
    if cos.shape != sin.shape or cos.shape not in ((b, t, d), (t, d)):
        raise ValueError(f"{name}: cos and sin must both be [B, T, D] = {[b, t, d]} or [T, D] = "
                         f"{[t, d]}, got {list(cos.shape)} and {list(sin.shape)}")
    args = (q, k, cos.expand(b, t, d), sin.expand(b, t, d))
    out_q, out_k = _ROPE.select(q.device.type, args, backend).fn(*args)
    return out_q, out_k


# --- backends ----------------------------------------------------------------------------------

def _grad(*tensors) -> Optional[str]:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "inputs require grad (the fused kernels are not differentiable; the reference is)"
    return None


def _norm_check_triton(x, w, eps):
    if x.shape[1] > _TRITON_MAX_ROW:
        return f"rows of {x.shape[1]} elements (the kernel holds <= {_TRITON_MAX_ROW})"
    return _grad(x, w)


def _norm_fake(x, w, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)  # as the kernels return


def _rope_fake(q, k, cos, sin):
    return torch.empty_like(q, memory_format=torch.contiguous_format), \
        torch.empty_like(k, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastgen::rms_norm_triton", mutates_args=())
def _rms_norm_triton(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    from ..kernels import transformer as kernels  # imports triton: only when this backend runs

    return kernels.rms_norm(x.contiguous(), w.contiguous(), eps)


@torch.library.custom_op("fastgen::rotary_triton", mutates_args=())
def _rotary_triton(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from ..kernels import transformer as kernels

    return kernels.rotary(q.contiguous(), k.contiguous(), cos.contiguous(), sin.contiguous())


torch.library.register_fake("fastgen::rms_norm_triton")(_norm_fake)
torch.library.register_fake("fastgen::rotary_triton")(_rope_fake)
if _ext.has_op("rms_norm"):
    torch.library.register_fake("fastgen::rms_norm")(_norm_fake)
    torch.library.register_fake("fastgen::rotary")(_rope_fake)


_NORM = registry.register("rms_norm", [
    registry.Backend("triton", lambda x, w, eps: torch.ops.fastgen.rms_norm_triton(x, w, eps),
                     devices=("cuda", "cpu"), available=registry.triton_available,
                     check=_norm_check_triton, explicit_only_on=("cpu",),
                     summary="kernels/transformer.py"),
    registry.Backend("cpu", lambda x, w, eps: torch.ops.fastgen.rms_norm(x, w, eps),
                     devices=("cpu",), available=functools.partial(_ext.native_available,
                                                                   "rms_norm"),
                     check=lambda x, w, eps: _grad(x, w), summary="csrc/cpu/transformer.cpp"),
    registry.Backend("reference", _ref.rms_norm, summary="fastgen/reference/transformer.py"),
])

_ROPE = registry.register("apply_rotary", [
    registry.Backend("triton", lambda *a: torch.ops.fastgen.rotary_triton(*a),
                     devices=("cuda", "cpu"), available=registry.triton_available,
                     check=_grad, explicit_only_on=("cpu",), summary="kernels/transformer.py"),
    registry.Backend("cpu", lambda *a: torch.ops.fastgen.rotary(*a), devices=("cpu",),
                     available=functools.partial(_ext.native_available, "rotary"),
                     check=_grad, summary="csrc/cpu/transformer.cpp"),
    registry.Backend("reference", _ref.rotary, summary="fastgen/reference/transformer.py"),
])

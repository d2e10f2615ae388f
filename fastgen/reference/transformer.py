"""Reference transformer-block ops: RMSNorm and rotate-half rotary embedding, written as
transformers' Llama modules compute them (LlamaRMSNorm, apply_rotary_pos_emb)."""

from __future__ import annotations

import torch

__all__ = ["rms_norm", "rotary", "rotate_half"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight · (x / sqrt(mean(x²) + eps)) over the last dim, in float32 (float64 for float64
    x); the normalised x is rounded to x's dtype before the weight multiplies it."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = x.to(dtype)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (−x2, x1) over the last dim's halves."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q [B, T, Hq, D], k [B, T, Hk, D], cos/sin [B, T, D] -> (q·cos + rotate_half(q)·sin, same
    for k), contiguous, in the inputs' dtype, each product and sum rounded as PyTorch's eager
    ops round."""
    c, s = cos[:, :, None], sin[:, :, None]
    return ((q * c + rotate_half(q) * s).contiguous(),
            (k * c + rotate_half(k) * s).contiguous())

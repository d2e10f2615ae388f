"""Reference noise: what ``torch.randn`` draws on a CPU generator, and how.

:func:`randn` is ``torch.randn`` itself: the numbers every fastgen noise draw must reproduce bit
for bit (diffusers' samplers, seeded, are reproducible only if the noise is).

:func:`normal_from_uniforms` spells out, in float64, how torch turns a CPU generator's stream into
float32 normals (ATen's ``normal_fill``, used for contiguous tensors of at least 16 elements):

1. ``n`` uniform draws ``u = (word & (2^24 − 1)) · 2^-24`` from the MT19937 stream (what
   ``torch.rand`` returns for the same generator state);
2. blocks of 16: for ``j < 8``, ``r = sqrt(−2 log(1 − u[j]))``, ``θ = 2π·u[j + 8]``,
   ``out[j] = r cos θ``, ``out[j + 8] = r sin θ``;
3. when 16 does not divide ``n``: 16 more draws, transformed the same way, replace the last 16.

float16 / bfloat16 tensors get the float32 normals rounded, but their step 1 draws only the
``n − n % 16`` words of the whole blocks, so step 3's 16 draws follow those directly.

torch evaluates step 2 in float32 (8-lane Cephes polynomials on AVX2 builds, the C library's
functions otherwise), so this float64 version agrees with it to a few float32 ulps; the fast
kernel (csrc/cpu/randn.cpp) reproduces the float32 evaluation exactly.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

__all__ = ["randn", "normal_from_uniforms"]


def randn(size: Union[int, Sequence[int]], generator: Optional[torch.Generator] = None,
          dtype: Optional[torch.dtype] = None,
          device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """``torch.randn(size, generator=generator, dtype=dtype, device=device)``."""
    return torch.randn(size, generator=generator, dtype=dtype, device=device)


def normal_from_uniforms(u: torch.Tensor, tail: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Float64 normals from the ``n`` uniforms ``u`` (1-D, n >= 16) by torch's block Box–Muller;
    ``tail`` holds the 16 extra draws torch makes when 16 does not divide n."""
    n = u.numel()
    if n < 16:
        raise ValueError(f"normal_from_uniforms: u needs at least 16 values, got {n}")
    if (n % 16 != 0) != (tail is not None and tail.numel() == 16):
        raise ValueError("normal_from_uniforms: tail must hold 16 values exactly when 16 does "
                         f"not divide n = {n}")

    def blocks(v: torch.Tensor) -> torch.Tensor:
        v = v.double().view(-1, 2, 8)
        radius = torch.sqrt(-2.0 * torch.log1p(-v[:, 0]))
        theta = (2.0 * math.pi) * v[:, 1]
        return torch.stack((radius * torch.cos(theta), radius * torch.sin(theta)), 1).view(-1)

    out = torch.empty(n, dtype=torch.float64)
    full = n - n % 16
    out[:full] = blocks(u[:full])
    if full != n:
        out[n - 16:] = blocks(tail)
    return out

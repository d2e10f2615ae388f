"""Triton kernel for the fused sampler step (GPU; CPU tensors under TRITON_INTERPRET=1).

Math and operation order: fastgen/reference/sampler.py. Every tensor is contiguous and of the
sample's shape and dtype (fastgen/ops/sampler.py checks), so the step is a flat 1-D map: each
program loads one tile of each present input once, computes in float32 (float64 for float64
inputs) and stores the tile of each output once. Absent inputs are compile-time flags, so a step
without history or noise reads nothing for them. Coefficients are float32 kernel arguments
(float64 inputs see them rounded to float32; the CPU kernel keeps float64).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

_TILE = 2048


@triton.jit
def _step_kernel(x_ptr, m_ptr, u_ptr, h1_ptr, h2_ptr, z_ptr, out_ptr, x0_ptr, n,
                 s, p_x, p_m, p_z, c_x, c_0, c_m, c_1, c_2, c_z, clip,
                 HAS_U: tl.constexpr, HAS_H1: tl.constexpr, HAS_H2: tl.constexpr,
                 HAS_Z: tl.constexpr, HAS_CLIP: tl.constexpr, WANT_X0: tl.constexpr,
                 WIDE: tl.constexpr, TILE: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * TILE + tl.arange(0, TILE)
    mask = offs < n
    work = tl.float64 if WIDE else tl.float32
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(work)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(work)
    if HAS_U:
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(work)
        m = u + s * (m - u)
    x0 = p_x * x + p_m * m
    if HAS_Z:
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(work)
        x0 = x0 + p_z * z
    if HAS_CLIP:
        nan = tl.PropagateNan.ALL  # clamp keeps NaN, as torch.clamp does
        x0 = tl.minimum(tl.maximum(x0, -clip, propagate_nan=nan), clip, propagate_nan=nan)
    out = c_x * x + c_0 * x0 + c_m * m
    if HAS_H1:
        out = out + c_1 * tl.load(h1_ptr + offs, mask=mask, other=0.0).to(work)
    if HAS_H2:
        out = out + c_2 * tl.load(h2_ptr + offs, mask=mask, other=0.0).to(work)
    if HAS_Z:
        out = out + c_z * z
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    if WANT_X0:
        tl.store(x0_ptr + offs, x0.to(x0_ptr.dtype.element_ty), mask=mask)


def sampler_step(x: torch.Tensor, m: torch.Tensor, u: Optional[torch.Tensor],
                 h1: Optional[torch.Tensor], h2: Optional[torch.Tensor],
                 z: Optional[torch.Tensor], coeffs: list[float], clip: Optional[float],
                 want_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, x̂0 or an empty tensor) for contiguous same-shape inputs; see the module docstring."""
    out = torch.empty_like(x)
    x0 = torch.empty_like(x) if want_x0 else x.new_empty((0,))
    n = x.numel()
    if n == 0:
        return out, x0
    dummy = x  # never read: its flag is off
    grid = (triton.cdiv(n, _TILE),)
    _step_kernel[grid](x, m, u if u is not None else dummy, h1 if h1 is not None else dummy,
                       h2 if h2 is not None else dummy, z if z is not None else dummy, out,
                       x0 if want_x0 else out, n, *coeffs, clip if clip is not None else 0.0,
                       HAS_U=u is not None, HAS_H1=h1 is not None, HAS_H2=h2 is not None,
                       HAS_Z=z is not None, HAS_CLIP=clip is not None, WANT_X0=want_x0,
                       WIDE=x.dtype == torch.float64, TILE=_TILE)
    return out, x0

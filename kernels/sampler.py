"""Triton kernel for the fused sampler step (GPU; CPU tensors under TRITON_INTERPRET=1).

Math and operation order: fastgen/reference/sampler.py. Every tensor is contiguous and of the
sample's shape and dtype (fastgen/ops/sampler.py checks), so the step is a flat 1-D map: each
program loads one tile of each present input once, computes in float32 (float64 for float64
inputs) and stores the tile of each output once. Absent inputs are compile-time flags, so a step
without history or noise reads nothing for them. Coefficients are float32 kernel arguments; a
float64 step passes each as two float32 halves (hi + lo, 48 significant bits) and adds them in
float64.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl

_TILE = 2048


@triton.jit
def _coef(hi, lo, WIDE: tl.constexpr):
    # A float64 coefficient arrives as two float32 halves (hi + lo: 48 significant bits).
    if WIDE:
        return tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)
    return hi


@triton.jit
def _step_kernel(x_ptr, m_ptr, u_ptr, h1_ptr, h2_ptr, z_ptr, out_ptr, x0_ptr, n,
                 s_, p_x_, p_m_, p_z_, c_x_, c_0_, c_m_, c_1_, c_2_, c_z_, clip_,
                 s_lo, p_x_lo, p_m_lo, p_z_lo, c_x_lo, c_0_lo, c_m_lo, c_1_lo, c_2_lo, c_z_lo,
                 clip_lo,
                 HAS_U: tl.constexpr, HAS_H1: tl.constexpr, HAS_H2: tl.constexpr,
                 HAS_Z: tl.constexpr, Z_IN_X0: tl.constexpr, HAS_CLIP: tl.constexpr,
                 WANT_X0: tl.constexpr, WIDE: tl.constexpr, TILE: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * TILE + tl.arange(0, TILE)
    mask = offs < n
    work = tl.float64 if WIDE else tl.float32
    s = _coef(s_, s_lo, WIDE)
    p_x = _coef(p_x_, p_x_lo, WIDE)
    p_m = _coef(p_m_, p_m_lo, WIDE)
    p_z = _coef(p_z_, p_z_lo, WIDE)
    c_x = _coef(c_x_, c_x_lo, WIDE)
    c_0 = _coef(c_0_, c_0_lo, WIDE)
    c_m = _coef(c_m_, c_m_lo, WIDE)
    c_1 = _coef(c_1_, c_1_lo, WIDE)
    c_2 = _coef(c_2_, c_2_lo, WIDE)
    c_z = _coef(c_z_, c_z_lo, WIDE)
    clip = _coef(clip_, clip_lo, WIDE)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(work)
    m = tl.load(m_ptr + offs, mask=mask, other=0.0).to(work)
    if HAS_U:
        u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(work)
        m = u + s * (m - u)
    x0 = p_x * x + p_m * m
    if HAS_Z:
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(work)
        if Z_IN_X0:
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
    for name, t in (("sample", x), ("model_output", m), ("uncond", u), ("history[0]", h1),
                    ("history[1]", h2), ("noise", z)):
        if t is not None and not (t.is_contiguous() and t.shape == x.shape
                                  and t.dtype == x.dtype and t.device == x.device):
            raise ValueError(f"sampler_step (triton): {name} must be contiguous, of sample's "
                             f"shape, dtype and device")
    out = torch.empty_like(x)
    x0 = torch.empty_like(x) if want_x0 else x.new_empty((0,))
    n = x.numel()
    if n == 0:
        return out, x0
    values = list(coeffs) + [clip if clip is not None else 0.0]
    wide = x.dtype == torch.float64
    # Kernel scalars are float32: a float64 step gets each coefficient as hi + lo halves.
    hi = [float(torch.tensor(v, dtype=torch.float32)) for v in values] if wide else values
    lo = [float(torch.tensor(v - h, dtype=torch.float32)) for v, h in zip(values, hi)] \
        if wide else [0.0] * len(values)
    dummy = x  # never read: its flag is off
    grid = (triton.cdiv(n, _TILE),)
    with _on_device(x):
        _step_kernel[grid](x, m, u if u is not None else dummy,
                           h1 if h1 is not None else dummy, h2 if h2 is not None else dummy,
                           z if z is not None else dummy, out, x0 if want_x0 else out, n,
                           *hi, *lo, HAS_U=u is not None, HAS_H1=h1 is not None,
                           HAS_H2=h2 is not None, HAS_Z=z is not None,
                           Z_IN_X0=z is not None and coeffs[3] != 0.0,
                           HAS_CLIP=clip is not None, WANT_X0=want_x0, WIDE=wide, TILE=_TILE)
    return out, x0


def _on_device(x: torch.Tensor):
    """Launch on x's GPU, not on whichever is current."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()

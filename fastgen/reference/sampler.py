"""Reference sampler step: the fused diffusion-sampler step in plain PyTorch.

Every common scheduler's step (DDPM, DDIM, Euler, Euler ancestral, Heun, DPM-Solver++ 2M and its
SDE variant, flow-matching Euler; ../shared/reference/diffusion.md §5) is, once the scheduler has
turned its tables into scalars on the host, one elementwise map:

    m    = u + s·(c − u)                 classifier-free guidance, when an uncond u is given
                                          (c: the conditional model output)
    x̂0   = clip(p_x·x + p_m·m + p_z·z)   prediction-type conversion; clip to ±r when asked
    out  = c_x·x + c_0·x̂0 + c_m·m + c_1·h1 + c_2·h2 + c_z·z

x: sample; m: model output; h1, h2: history tensors (previous x̂0, a saved sample); z: noise.
Missing tensors count as zero. Computed in float32 (float64 for float64 inputs) whatever the
storage dtype; outputs are stored in the sample's dtype.

The order of operations below is the one every backend follows (products, then sums left to
right), so backends differ from this reference only by fma contraction.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

__all__ = ["StepCoeffs", "sampler_step", "cfg_combine", "compute_dtype"]


class StepCoeffs(NamedTuple):
    """The scalars of one step (host floats; see the module docstring for the formula)."""

    guidance: float = 1.0   # s in m = u + s·(c − u); unused without an uncond
    p_x: float = 0.0
    p_m: float = 1.0
    p_z: float = 0.0
    c_x: float = 0.0
    c_0: float = 0.0
    c_m: float = 0.0
    c_1: float = 0.0
    c_2: float = 0.0
    c_z: float = 0.0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cfg_combine(uncond: torch.Tensor, cond: torch.Tensor, scale: float,
                work: Optional[torch.dtype] = None) -> torch.Tensor:
    """u + scale·(c − u) in ``work`` precision (default: compute_dtype of cond)."""
    work = work or compute_dtype(cond.dtype)
    u, c = uncond.to(work), cond.to(work)
    return u + scale * (c - u)


def sampler_step(sample: torch.Tensor, model_output: torch.Tensor, k: StepCoeffs, *,
                 uncond: Optional[torch.Tensor] = None,
                 history: Sequence[Optional[torch.Tensor]] = (),
                 noise: Optional[torch.Tensor] = None, clip: Optional[float] = None,
                 work: Optional[torch.dtype] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, x̂0) of one step, both in sample's dtype. ``work`` overrides the compute dtype
    (tests use float64 as the ground truth)."""
    work = work or compute_dtype(sample.dtype)
    x = sample.to(work)
    if uncond is not None:
        m = cfg_combine(uncond, model_output, k.guidance, work)
    else:
        m = model_output.to(work)
    z = noise.to(work) if noise is not None else None
    x0 = k.p_x * x + k.p_m * m
    if z is not None and k.p_z != 0.0:
        x0 = x0 + k.p_z * z
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    out = k.c_x * x + k.c_0 * x0 + k.c_m * m
    hs = list(history) + [None] * (2 - len(history))
    for c, h in ((k.c_1, hs[0]), (k.c_2, hs[1])):
        if h is not None:
            out = out + c * h.to(work)
    if z is not None:
        out = out + k.c_z * z
    return out.to(sample.dtype), x0.to(sample.dtype)

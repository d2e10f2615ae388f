"""Reference volume rendering over packed samples, in plain PyTorch (float64-able).

Samples of ray r are the contiguous range [starts[r], starts[r] + counts[r]) of the flat sample
tensors (nerfacc's packed layout; a batched [n_rays, n_samples] layout is the case counts = S).
For the samples i of one ray (../shared/reference/nerf.md §4, nerfacc's exclusive sum-scan):

    δ_i = t_end_i − t_start_i
    T_i = exp(−Σ_{j<i} σ_j δ_j)          transmittance before sample i
    α_i = 1 − exp(−σ_i δ_i)              opacity of sample i
    w_i = T_i α_i                        weight
    color = Σ_i w_i c_i,   opacity = Σ_i w_i,   depth = Σ_i w_i (t_start_i + t_end_i) / 2

Early termination (eps > 0): a ray stops at its first sample with T_i < eps; that sample and the
rest get w = 0 and T = 0. Gradients come from autograd through these formulas.
"""

from __future__ import annotations

import torch

__all__ = ["segment_exclusive_sum", "volrend"]


def segment_exclusive_sum(x: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor
                          ) -> torch.Tensor:
    """Per-ray exclusive prefix sum of x [n] (rays as starts/counts, contiguous and in order).
    One float64 (int64 for integers) scan over all samples minus each ray's base: a large total
    in one ray cannot wipe out the small values of the next."""
    if x.numel() == 0:
        return x.clone()
    wide = x.double() if x.is_floating_point() else x.long()
    ray = torch.repeat_interleave(torch.arange(starts.numel(), device=x.device), counts)
    excl = wide.cumsum(0) - wide
    base = excl[starts.clamp(max=x.numel() - 1)]
    return (excl - base[ray]).to(x.dtype)


def volrend(sigmas, rgbs, t_starts, t_ends, starts, counts, eps: float = 0.0):
    """sigmas, t_starts, t_ends [n]; rgbs [n, C]; starts, counts [R] int64 ->
    (color [R, C], opacity [R], depth [R], weights [n], trans [n])."""
    n_rays = starts.numel()
    ray = torch.repeat_interleave(torch.arange(n_rays, device=sigmas.device), counts)
    tau = sigmas * (t_ends - t_starts)
    trans = torch.exp(-segment_exclusive_sum(tau, starts, counts))
    alphas = -torch.expm1(-tau)
    if eps > 0:
        # live: every sample of the ray up to this one has T >= eps
        dead = (trans < eps).to(torch.int64)
        live = segment_exclusive_sum(dead, starts, counts) + dead == 0
        trans = torch.where(live, trans, torch.zeros_like(trans))
    w = trans * alphas
    color = torch.zeros(n_rays, rgbs.shape[1], dtype=rgbs.dtype, device=rgbs.device)
    color = color.index_add(0, ray, w[:, None] * rgbs)
    opacity = torch.zeros(n_rays, dtype=w.dtype, device=w.device).index_add(0, ray, w)
    depth = torch.zeros(n_rays, dtype=w.dtype, device=w.device).index_add(
        0, ray, w * (t_starts + t_ends) * 0.5)
    return color, opacity, depth, w, trans

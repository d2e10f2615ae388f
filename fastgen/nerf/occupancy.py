"""OccupancyGrid: multi-level occupancy grid for empty-space skipping (nerfacc's OccGridEstimator,
instant-ngp's density grid; rules in ../shared/reference/nerf.md §2).

Level i covers the region of interest scaled by 2^i about its centre, with resolution³ cells
each. Every cell stores a decayed maximum of the field's occupancy and a bit; marching
(:meth:`OccupancyGrid.sampling`) keeps only samples whose midpoint lies in an occupied cell of
the finest level containing it, and skips empty cells in one DDA jump. Cameras follow the OpenCV
convention (x right, y down, z forward) in :meth:`mark_invisible_cells`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..ops.raymarch import march, ray_aabb_intersect
from ..ops.volrend import render_transmittance_from_alpha

__all__ = ["OccupancyGrid"]


class OccupancyGrid(nn.Module):
    """Occupancy grid with nerfacc's update rule and a packed sampler.

    Args:
        roi_aabb: (min xyz, max xyz) of the region of interest (level 0).
        resolution: cells per side of every level.
        levels: cascades; level i covers roi_aabb scaled by 2^i about its centre.

    Buffers (saved with the module's state_dict): ``aabbs`` [L, 6], ``occs`` [L·res³] (decayed
    max occupancy; -1 marks a cell no camera sees), ``binaries`` [L, res, res, res] bool.
    """

    def __init__(self, roi_aabb: Sequence[float] | torch.Tensor, resolution: int = 128,
                 levels: int = 1):
        super().__init__()
        roi = torch.as_tensor(roi_aabb, dtype=torch.float32).flatten()
        if roi.numel() != 6 or not bool(torch.isfinite(roi).all()) \
                or bool((roi[:3] >= roi[3:]).any()):
            raise ValueError(f"OccupancyGrid: roi_aabb must be 6 finite numbers (min xyz, max "
                             f"xyz) with min < max, got {roi.tolist()}")
        for name, v in (("resolution", resolution), ("levels", levels)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"OccupancyGrid: {name} must be an int >= 1, got {v!r}")
        self.resolution, self.levels = resolution, levels
        self.cells_per_lvl = resolution ** 3
        center, half = (roi[:3] + roi[3:]) / 2, (roi[3:] - roi[:3]) / 2
        scale = 2.0 ** torch.arange(levels, dtype=torch.float32)[:, None]
        self.register_buffer("aabbs", torch.cat([center - half * scale, center + half * scale],
                                                -1))
        self.register_buffer("occs", torch.zeros(levels * self.cells_per_lvl))
        self.register_buffer("binaries", torch.zeros(levels, resolution, resolution, resolution,
                                                     dtype=torch.bool))

    @property
    def roi_aabb(self) -> torch.Tensor:
        return self.aabbs[0]

    def cell_points(self, level: int, indices: torch.Tensor, jitter: bool = True) -> torch.Tensor:
        """World positions [n, 3] in cells ``indices`` (flat, [n]) of ``level``: uniformly
        random inside each cell, or the cell centres."""
        r = self.resolution
        ijk = torch.stack([indices // (r * r), (indices // r) % r, indices % r], -1).float()
        u = torch.rand_like(ijk) if jitter else torch.full_like(ijk, 0.5)
        box = self.aabbs[level]
        return box[:3] + (ijk + u) / r * (box[3:] - box[:3])

    def _cells_to_update(self, level: int, step: int, warmup_steps: int) -> torch.Tensor:
        valid = self.occs[level * self.cells_per_lvl:(level + 1) * self.cells_per_lvl] >= 0
        if step < warmup_steps:
            return valid.nonzero()[:, 0]
        n = self.cells_per_lvl // 4
        uniform = torch.randint(self.cells_per_lvl, (n,), device=self.occs.device)
        occupied = self.binaries[level].flatten().nonzero()[:, 0]
        if occupied.numel() > n:
            occupied = occupied[torch.randint(occupied.numel(), (n,), device=occupied.device)]
        cells = torch.cat([uniform, occupied])
        return cells[valid[cells]]

    @torch.no_grad()
    def update(self, step: int, occ_eval_fn: Callable[[torch.Tensor], torch.Tensor],
               occ_thre: float = 0.01, ema_decay: float = 0.95, warmup_steps: int = 256) -> None:
        """One update: sample cells (all before ``warmup_steps``, then a quarter of the cells
        uniformly and as many occupied ones), ``occs = max(occs · ema_decay, occ_eval_fn(x))``,
        then bits = occs > min(occ_thre, mean of the non-negative occs)."""
        for level in range(self.levels):
            cells = self._cells_to_update(level, step, warmup_steps)
            if cells.numel() == 0:
                continue
            x = self.cell_points(level, cells)
            occ = occ_eval_fn(x)
            if not isinstance(occ, torch.Tensor) or occ.numel() != cells.numel():
                raise ValueError(f"OccupancyGrid.update: occ_eval_fn must return one value per "
                                 f"point ([{cells.numel()}] or [{cells.numel()}, 1]), got "
                                 f"{list(occ.shape) if isinstance(occ, torch.Tensor) else occ!r}")
            ids = level * self.cells_per_lvl + cells
            self.occs[ids] = torch.maximum(self.occs[ids] * ema_decay,
                                           occ.reshape(-1).to(self.occs.dtype))
        seen = self.occs[self.occs >= 0]
        thre = min(occ_thre, float(seen.mean())) if seen.numel() else occ_thre
        self.binaries.copy_((self.occs > thre).view(self.binaries.shape))

    def update_every_n_steps(self, step: int, occ_eval_fn: Callable[[torch.Tensor], torch.Tensor],
                             occ_thre: float = 0.01, ema_decay: float = 0.95,
                             warmup_steps: int = 256, n: int = 16) -> None:
        """nerfacc's training-time update: :meth:`update` when ``step % n == 0`` (training mode
        only; call :meth:`update` directly otherwise)."""
        if not self.training:
            raise RuntimeError("OccupancyGrid.update_every_n_steps is for training mode; call "
                               "update() directly to update in eval mode")
        if step % n == 0:
            self.update(step, occ_eval_fn, occ_thre, ema_decay, warmup_steps)

    @torch.no_grad()
    def mark_invisible_cells(self, K: torch.Tensor, c2w: torch.Tensor, width: int, height: int,
                             near_plane: float = 0.0, chunk: int = 32 ** 3) -> None:
        """Set occs = -1 (never occupied, never updated) for cells whose centre no camera sees
        (cells already marked stay marked; nerfacc tests the grid vertices instead of centres).
        K: [3, 3] or [C, 3, 3] intrinsics; c2w: [C, 3, 4] or [C, 4, 4] camera-to-world (OpenCV
        axes); width, height: image size in pixels."""
        c2w = c2w.to(self.aabbs)
        if c2w.ndim == 2:
            c2w = c2w[None]
        if c2w.ndim != 3 or c2w.shape[1] not in (3, 4) or c2w.shape[2] != 4:
            raise ValueError(f"OccupancyGrid.mark_invisible_cells: c2w must be [C, 3, 4] or "
                             f"[C, 4, 4], got {list(c2w.shape)}")
        if K.shape[-2:] != (3, 3):
            raise ValueError(f"OccupancyGrid.mark_invisible_cells: K must be [3, 3] or "
                             f"[C, 3, 3], got {list(K.shape)}")
        K = K.to(self.aabbs).expand(c2w.shape[0], 3, 3)
        rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
        all_cells = torch.arange(self.cells_per_lvl, device=self.aabbs.device)
        for level in range(self.levels):
            for start in range(0, self.cells_per_lvl, chunk):
                cells = all_cells[start:start + chunk]
                x = self.cell_points(level, cells, jitter=False)
                cam = torch.einsum("nd,cde->cne", x, rot) - torch.einsum("cd,cde->ce", pos,
                                                                          rot)[:, None]
                uvd = torch.einsum("cne,cfe->cnf", cam, K)
                z = uvd[..., 2]
                uv = uvd[..., :2] / z.clamp(min=1e-12)[..., None]
                seen = (z > near_plane) & (uv[..., 0] >= 0) & (uv[..., 0] < width) \
                    & (uv[..., 1] >= 0) & (uv[..., 1] < height)
                hidden = ~seen.any(0)
                self.occs[level * self.cells_per_lvl + cells[hidden]] = -1.0
        self.binaries &= (self.occs >= 0).view(self.binaries.shape)

    @torch.no_grad()
    def sampling(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
                 sigma_fn: Optional[Callable] = None, alpha_fn: Optional[Callable] = None,
                 near_plane: float = 0.0, far_plane: float = 1e10,
                 t_min: Optional[torch.Tensor] = None, t_max: Optional[torch.Tensor] = None,
                 render_step_size: float = 1e-3, early_stop_eps: float = 1e-4,
                 alpha_thre: float = 0.0, stratified: bool = False, cone_angle: float = 0.0):
        """Packed samples along rays in occupied space (nerfacc's ``OccGridEstimator.sampling``).

        Args:
            rays_o, rays_d: [N, 3] (finite; non-zero directions; t in units of |rays_d|).
            sigma_fn / alpha_fn: optional field (t_starts, t_ends, ray_indices) -> [n] densities
                / opacities, to drop samples behind early termination (transmittance <
                early_stop_eps) or below alpha_thre (capped at the mean occupancy, as nerfacc).
            near_plane, far_plane, t_min, t_max: limits of t (t_min / t_max per ray, [N]).
            render_step_size: the smallest step; cone_angle: steps grow as t · cone_angle.
            stratified: jitter each ray's first sample by U[0, 1) · render_step_size.

        Returns:
            ray_indices [n] int64 (sorted), t_starts [n], t_ends [n].
        """
        t0, t1, _ = ray_aabb_intersect(rays_o, rays_d, self.aabbs[-1:], near_plane, far_plane)
        t0, t1 = t0[:, 0], t1[:, 0]
        if t_min is not None:
            t0 = torch.maximum(t0, t_min.to(t0))
        if t_max is not None:
            t1 = torch.minimum(t1, t_max.to(t1))
        t0 = torch.where(torch.isfinite(t0), t0, t1)
        if stratified:
            t0 = t0 + torch.rand_like(t0) * render_step_size
        ray_indices, t_starts, t_ends = march(rays_o, rays_d, t0, t1, self.binaries, self.aabbs,
                                              render_step_size, cone_angle)
        if (sigma_fn is None and alpha_fn is None) or t_starts.numel() == 0 \
                or (early_stop_eps <= 0 and alpha_thre <= 0):  # nothing to prune by
            return ray_indices, t_starts, t_ends
        if sigma_fn is not None and alpha_fn is not None:
            raise ValueError("OccupancyGrid.sampling: pass sigma_fn or alpha_fn, not both")
        fn = sigma_fn or alpha_fn
        out = fn(t_starts, t_ends, ray_indices)
        if not isinstance(out, torch.Tensor) or out.shape != t_starts.shape:
            kind = "sigma_fn" if sigma_fn is not None else "alpha_fn"
            raise ValueError(f"OccupancyGrid.sampling: {kind} must return [n] = "
                             f"[{t_starts.numel()}] values (like t_starts), got "
                             f"{list(out.shape) if isinstance(out, torch.Tensor) else out!r}")
        alphas = -torch.expm1(-out * (t_ends - t_starts)) if sigma_fn is not None else out
        keep = torch.ones_like(alphas, dtype=torch.bool)
        if early_stop_eps > 0:
            trans = render_transmittance_from_alpha(alphas.clamp(0, 1), ray_indices=ray_indices,
                                                    n_rays=rays_o.shape[0])
            keep &= trans >= early_stop_eps
        if alpha_thre > 0:
            keep &= alphas >= min(alpha_thre, float(self.occs.mean()))
        return ray_indices[keep], t_starts[keep], t_ends[keep]

    def extra_repr(self) -> str:
        return (f"roi_aabb={[round(v, 4) for v in self.roi_aabb.tolist()]}, "
                f"resolution={self.resolution}, levels={self.levels}")


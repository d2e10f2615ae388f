"""Ray-box intersection and occupancy-grid ray marching (the samplers of fastgen.nerf).

    fastgen/ops/raymarch.py          this file: public functions, checks, backends
    fastgen/reference/raymarch.py    slab test in PyTorch; the marcher as a numba-compiled loop
    csrc/common/raymarch.h           per-ray slab test, grid lookup, DDA skip, marching
    csrc/cpu/raymarch.cpp            backend ``cpu`` (one pass, chunks of rays, at::parallel_for)
    csrc/cuda/raymarch.cu            backend ``cuda`` (count + fill launches; compiled, not yet run)
    fastgen/nerf/occupancy.py        OccupancyGrid: the grid, its update rule, ``sampling``
    tests/ops/test_raymarch.py

Marching rule (nerfacc's OccGridEstimator, ../shared/reference/nerf.md §3): step
dt = clamp(t · cone_angle, render_step_size, +inf); a sample [t, t + dt) is kept when its
midpoint lies in an occupied cell of the finest grid level containing it; empty cells are skipped
in one jump to where the ray leaves them (a DDA step), not by testing every step.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional

import torch

from .. import _ext, registry
from ..reference import raymarch as _ref

__all__ = ["ray_aabb_intersect", "march"]

_FLOATS = (torch.float32, torch.float64)


def _check_rays(fn, rays_o, rays_d):
    for arg, t in (("rays_o", rays_o), ("rays_d", rays_d)):
        if not isinstance(t, torch.Tensor) or t.dtype not in _FLOATS:
            raise TypeError(f"{fn}: {arg} must be a float32 or float64 tensor")
        if t.ndim != 2 or t.shape[1] != 3:
            raise ValueError(f"{fn}: {arg} must be [N, 3], got {list(t.shape)}")
    if rays_d.shape != rays_o.shape or rays_d.dtype != rays_o.dtype \
            or rays_d.device != rays_o.device:
        raise ValueError(f"{fn}: rays_o and rays_d must share shape, dtype and device")
    if rays_o.numel() and not torch.compiler.is_compiling():
        if not bool(torch.isfinite(rays_o).all()) or not bool(torch.isfinite(rays_d).all()):
            raise ValueError(f"{fn}: rays_o and rays_d must be finite (NaN or inf found)")
        if bool((rays_d.abs().amax(-1) == 0).any()):
            raise ValueError(f"{fn}: rays_d has a zero-length direction")


def ray_aabb_intersect(rays_o: torch.Tensor, rays_d: torch.Tensor, aabbs: torch.Tensor,
                       near_plane: float = -math.inf, far_plane: float = math.inf,
                       miss_value: float = math.inf, *, backend: Optional[str] = None):
    """Where each ray enters and leaves each box (nerfacc's ``ray_aabb_intersect``).

    Args:
        rays_o, rays_d: [N, 3] origins and directions (finite; directions non-zero, any length:
            t is in units of |rays_d|).
        aabbs: [M, 6] boxes (min xyz, max xyz) with min <= max.
        near_plane, far_plane: clamp t_mins from below and t_maxs from above.
        miss_value: written to both t of a ray that misses a box.

    Returns:
        t_mins, t_maxs [N, M] (rays' dtype) and hits [N, M] bool (the clamped span is
        non-empty).
    """
    name = "ray_aabb_intersect"
    _check_rays(name, rays_o, rays_d)
    if not isinstance(aabbs, torch.Tensor) or aabbs.ndim != 2 or aabbs.shape[1] != 6:
        got = list(aabbs.shape) if isinstance(aabbs, torch.Tensor) else type(aabbs).__name__
        raise ValueError(f"{name}: aabbs must be [M, 6] (min xyz, max xyz), got {got}")
    aabbs = aabbs.to(rays_o)
    if aabbs.numel() and bool((aabbs[:, :3] > aabbs[:, 3:]).any()):
        raise ValueError(f"{name}: every aabb needs min <= max on each axis")
    args = (rays_o, rays_d, aabbs)
    tn, tf, hit = _OP_BOX.select(rays_o.device.type, args, backend).fn(*args)
    t_mins, t_maxs = tn.clamp(min=near_plane), tf.clamp(max=far_plane)
    hits = hit & (t_maxs > t_mins)
    miss = torch.full_like(t_mins, miss_value)
    return torch.where(hits, t_mins, miss), torch.where(hits, t_maxs, miss), hits


def march(rays_o: torch.Tensor, rays_d: torch.Tensor, t_min: torch.Tensor, t_max: torch.Tensor,
          bits: torch.Tensor, boxes: torch.Tensor, render_step_size: float,
          cone_angle: float = 0.0, *, backend: Optional[str] = None):
    """March rays over [t_min, t_max) — clipped to the outermost level's box — through an
    occupancy grid (the rule in the module docstring). bits: [L, res, res, res] bool/uint8;
    boxes: [L, 6] level boxes (finest first, each inside the next).

    Returns:
        packed (ray_indices int64 [n], t_starts [n], t_ends [n]), sorted by ray.
    """
    name = "march"
    _check_rays(name, rays_o, rays_d)
    for arg, t in (("t_min", t_min), ("t_max", t_max)):
        if not isinstance(t, torch.Tensor) or t.shape != rays_o.shape[:1]:
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: {arg} must be [N] = [{rays_o.shape[0]}], got {got}")
    if not isinstance(render_step_size, numbers.Real) or not render_step_size > 0 \
            or not math.isfinite(render_step_size):
        raise ValueError(f"{name}: render_step_size must be a finite number > 0, got "
                         f"{render_step_size!r}")
    if not isinstance(cone_angle, numbers.Real) or not 0 <= cone_angle < math.inf:
        raise ValueError(f"{name}: cone_angle must be a finite number >= 0, got {cone_angle!r}")
    if bits.ndim != 4 or len(set(bits.shape[1:])) != 1 or boxes.shape != (bits.shape[0], 6):
        raise ValueError(f"{name}: bits must be [L, res, res, res] and boxes [L, 6], got "
                         f"{list(bits.shape)} and {list(boxes.shape)}")
    dev = rays_o.device
    args = (rays_o, rays_d, t_min.to(rays_o).contiguous(), t_max.to(rays_o).contiguous(),
            bits.to(dev, torch.uint8).contiguous(), boxes.to(dev, torch.float32).contiguous(),
            float(render_step_size), float(cone_angle))
    return _OP_MARCH.select(rays_o.device.type, args, backend).fn(*args)


def _fake_box(o, d, boxes):
    n, m = o.shape[0], boxes.shape[0]
    return o.new_empty(n, m), o.new_empty(n, m), o.new_empty(n, m, dtype=torch.bool)


def _fake_march(o, d, t0, t1, bits, boxes, step, cone):
    ctx = torch.library.get_ctx()
    n = ctx.new_dynamic_size()
    return (o.new_empty(n, dtype=torch.int64), o.new_empty(n), o.new_empty(n))


if _ext.has_op("occgrid_march"):
    torch.library.register_fake("fastgen::ray_aabb_intersect")(_fake_box)
    torch.library.register_fake("fastgen::occgrid_march")(_fake_march)




def _run_box(o, d, b):  # the CPU or CUDA kernel, by dispatch
    return torch.ops.fastgen.ray_aabb_intersect(o, d, b)


def _run_march(*args):
    return torch.ops.fastgen.occgrid_march(*args)


_available = functools.partial(_ext.native_available, "occgrid_march")
_OP_BOX = registry.register("ray_aabb_intersect", [
    registry.Backend("cuda", _run_box, devices=("cuda",), available=_available,
                     summary="csrc/cuda/raymarch.cu"),
    registry.Backend("cpu", _run_box, devices=("cpu",), available=_available,
                     summary="csrc/cpu/raymarch.cpp"),
    registry.Backend("reference", _ref.ray_aabb_intersect,
                     summary="fastgen/reference/raymarch.py"),
])
_OP_MARCH = registry.register("march", [
    registry.Backend("cuda", _run_march, devices=("cuda",), available=_available,
                     summary="csrc/cuda/raymarch.cu (count, then fill; one sync for the size)"),
    registry.Backend("cpu", _run_march, devices=("cpu",), available=_available,
                     summary="csrc/cpu/raymarch.cpp"),
    registry.Backend("reference", _ref.march,
                     summary="fastgen/reference/raymarch.py (numba loop)"),
])

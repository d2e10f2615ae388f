"""Reference ray-box intersection (PyTorch) and occupancy-grid marching (a plain Python loop,
compiled with numba), the rules of fastgen/ops/raymarch.py written out step by step.

Marching one ray over [t0, t1): dt = max(t · cone, step); a sample [t, min(t + dt, t1)) is kept
when its midpoint t + dt/2 (< t1) lies in an occupied cell of the finest level whose box contains
it; then t += dt. A midpoint in an empty cell moves t to where the ray leaves that cell (or by dt
if that is not ahead). A midpoint outside every box ends the ray.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["ray_aabb_intersect", "march"]


def ray_aabb_intersect(rays_o: torch.Tensor, rays_d: torch.Tensor, aabbs: torch.Tensor):
    """Slab test: rays [N, 3], aabbs [M, 6] -> (t_near [N, M], t_far [N, M], hit [N, M])."""
    o, d = rays_o[:, None, :], rays_d[:, None, :]
    lo, hi = aabbs[None, :, :3], aabbs[None, :, 3:]
    t1, t2 = (lo - o) / d, (hi - o) / d
    enter, leave = torch.minimum(t1, t2), torch.maximum(t1, t2)
    par = d == 0  # parallel axis: no bound inside the slab, a miss outside it
    inside = (o >= lo) & (o <= hi)
    enter = torch.where(par, torch.where(inside, -math.inf, math.inf), enter)
    leave = torch.where(par, torch.where(inside, math.inf, -math.inf), leave)
    tn, tf = enter.amax(-1), leave.amin(-1)
    return tn, tf, tf > tn


def _slab(o, d, b):
    tn, tf = -math.inf, math.inf
    for ax in range(3):
        if d[ax] == 0:
            if o[ax] < b[ax] or o[ax] > b[3 + ax]:
                return math.inf, -math.inf
            continue
        a1, a2 = (b[ax] - o[ax]) / d[ax], (b[3 + ax] - o[ax]) / d[ax]
        tn, tf = max(tn, min(a1, a2)), min(tf, max(a1, a2))
    return tn, tf


def _march_py(o, d, t0, t1, bits, boxes, step, cone, out, slab):
    levels, res = bits.shape[0], bits.shape[1]
    n = 0
    for r in range(o.shape[0]):
        tn, tf = slab(o[r], d[r], boxes[levels - 1].astype(o.dtype))
        if not tf > tn:
            continue
        t, end_t = max(t0[r], o.dtype.type(tn)), min(t1[r], o.dtype.type(tf))
        while t < end_t:
            dt = max(t * cone, step)
            if not t + dt > t:
                break
            mid = t + dt * 0.5
            if not mid < end_t:
                break
            x = o[r] + d[r] * mid
            level = -1
            for lv in range(levels):
                b = boxes[lv]
                if (b[0] <= x[0] <= b[3]) and (b[1] <= x[1] <= b[4]) and (b[2] <= x[2] <= b[5]):
                    level = lv
                    break
            if level < 0:
                break
            b = boxes[level]
            idx = np.empty(3, np.int64)
            lo = np.empty(3, o.dtype)
            size = np.empty(3, o.dtype)
            for ax in range(3):
                size[ax] = (o.dtype.type(b[3 + ax]) - o.dtype.type(b[ax])) / res
                i = int(math.floor((x[ax] - b[ax]) / size[ax]))
                idx[ax] = min(max(i, 0), res - 1)
                lo[ax] = o.dtype.type(b[ax]) + idx[ax] * size[ax]
            if bits[level, idx[0], idx[1], idx[2]]:
                if out is not None:
                    out[n, 0] = r
                    out[n, 1] = t
                    out[n, 2] = min(t + dt, end_t)
                n += 1
                t = t + dt
            else:
                ex = math.inf
                for ax in range(3):
                    if d[r, ax] > 0:
                        ex = min(ex, (lo[ax] + size[ax] - o[r, ax]) / d[r, ax])
                    elif d[r, ax] < 0:
                        ex = min(ex, (lo[ax] - o[r, ax]) / d[r, ax])
                if level > 0:  # stop at the finer level's box entry
                    tn2, tf2 = slab(o[r], d[r], boxes[level - 1].astype(o.dtype))
                    if tf2 > tn2 and t < tn2 < ex:
                        ex = tn2
                t = ex if ex > t else t + dt
    return n


_compiled = None


def _jit():
    global _compiled
    if _compiled is None:
        try:
            import numba

            slab = numba.njit(cache=False)(_slab)
            fn = numba.njit(cache=False)(_march_py)
            _compiled = lambda *a: fn(*a, slab)  # noqa: E731
        except ImportError:  # numba is a dependency; plain Python still gives the same samples
            _compiled = lambda *a: _march_py(*a, _slab)  # noqa: E731
    return _compiled


def march(rays_o, rays_d, t_min, t_max, bits, boxes, step: float, cone: float):
    """Packed (ray_indices, t_starts, t_ends) of every ray; shapes as fastgen::occgrid_march."""
    fn = _jit()
    o, d = rays_o.detach().cpu().numpy(), rays_d.detach().cpu().numpy()
    a, b = t_min.detach().cpu().numpy(), t_max.detach().cpu().numpy()
    bt = bits.cpu().numpy().astype(np.bool_)
    bx = boxes.cpu().numpy().astype(np.float32)
    step_, cone_ = o.dtype.type(step), o.dtype.type(cone)
    n = fn(o, d, a, b, bt, bx, step_, cone_, None)
    out = np.empty((n, 3), dtype=np.float64)
    fn(o, d, a, b, bt, bx, step_, cone_, out)
    dev = rays_o.device
    return (torch.from_numpy(out[:, 0].astype(np.int64)).to(dev),
            torch.from_numpy(out[:, 1]).to(dev, rays_o.dtype),
            torch.from_numpy(out[:, 2]).to(dev, rays_o.dtype))

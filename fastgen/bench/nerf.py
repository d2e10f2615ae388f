"""Benchmark cases for NeRF sampling and rendering on the embedded procedural scene
(fastgen.data.scene), forward and backward, 4096 rays.

    fastgen     OccupancyGrid.sampling (DDA marcher, empty cells skipped) + fastgen.nerf.rendering
                (fused compositing, closed-form backward)
    reference   vectorised PyTorch: uniform steps over [near, far] for every ray, the same
                occupancy grid as a mask, cumprod compositing, autograd backward

Both evaluate the same field: the scene's analytic density and colour scaled by two learnable
scalars, so that the backward runs through the renderer into parameters. The occupancy grid
(64³) is built from the analytic density before timing. Rate column: rays per second. The
error column compares the colours: the two sample the rays at different positions (per-ray
steps from the box entry vs one uniform lattice from near), so it measures discretisation.
"""

from __future__ import annotations

import math

import torch

from ..data.scene import camera_rays, look_at, scene_field
from ..nerf import OccupancyGrid, rendering
from .core import Case

__all__ = ["cases"]

_NEAR, _FAR = 0.7, 2.5


def _setup(n_rays: int, res: int):
    g = torch.Generator().manual_seed(0)
    size = 64
    f = 0.5 * size / math.tan(math.radians(25))
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]])
    os_, ds = [], []
    centre = torch.tensor([0.5, 0.5, 0.5])
    for i in range(8):
        a = 2 * math.pi * i / 8
        eye = centre + 1.6 * torch.tensor([math.cos(a) * 0.8, math.sin(a) * 0.8, 0.6])
        o, d = camera_rays(look_at(eye, centre), K, size, size)
        os_.append(o)
        ds.append(d)
    o, d = torch.cat(os_), torch.cat(ds)
    pick = torch.randint(o.shape[0], (n_rays,), generator=g)
    step = math.sqrt(3) / 256
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=res)
    grid.update(0, lambda x: scene_field(x)[0] * step)
    return {"o": o[pick].contiguous(), "d": d[pick].contiguous(), "grid": grid, "step": step,
            "a": torch.ones(1, requires_grad=True), "b": torch.ones(1, requires_grad=True),
            "bg": torch.ones(3)}


def _field(s, x):
    sigma, rgb = scene_field(x)
    return sigma * s["a"], rgb * s["b"]


def _fastgen(s):
    o, d = s["o"], s["d"]

    def rgb_sigma_fn(ts, te, ray):
        sigma, rgb = _field(s, o[ray] + d[ray] * ((ts + te) / 2)[:, None])
        return rgb, sigma

    ray, ts, te = s["grid"].sampling(o, d, near_plane=_NEAR, far_plane=_FAR,
                                     render_step_size=s["step"], early_stop_eps=1e-4)
    color = rendering(ts, te, ray, o.shape[0], rgb_sigma_fn=rgb_sigma_fn,
                      render_bkgd=s["bg"])[0]
    torch.autograd.grad(color.sum(), (s["a"], s["b"]))
    return (color,)


def _reference(s):
    o, d, grid = s["o"], s["d"], s["grid"]
    n = math.ceil((_FAR - _NEAR) / s["step"])
    t = _NEAR + torch.arange(n + 1) * s["step"]
    ts, te = t[:-1].expand(o.shape[0], n), t[1:].expand(o.shape[0], n)
    x = o[:, None] + d[:, None] * ((ts + te) / 2)[..., None]
    inside = ((x >= 0) & (x <= 1)).all(-1)
    ijk = (x * grid.resolution).floor().long().clamp(0, grid.resolution - 1)
    occupied = grid.binaries[0][ijk[..., 0], ijk[..., 1], ijk[..., 2]] & inside
    sigma, rgb = _field(s, x.reshape(-1, 3))
    sigma = sigma.reshape(ts.shape) * occupied
    alpha = 1 - torch.exp(-sigma * (te - ts))
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
    w = trans * alpha
    color = (w[..., None] * rgb.reshape(*ts.shape, 3)).sum(1) + s["bg"] * (1 - w.sum(1,
                                                                            keepdim=True))
    torch.autograd.grad(color.sum(), (s["a"], s["b"]))
    return (color,)


def cases(device: str) -> list[Case]:
    if device != "cpu":
        return []  # the marcher and renderer have CPU kernels only so far
    n = 4096
    return [Case(op="nerf", name=f"sampling + rendering fwd+bwd, {n} rays, procedural scene",
                 device=device, dtype=torch.float32, setup=lambda: _setup(n, 64),
                 fastgen=_fastgen, reference=_reference, tier="quick", backend="cpu",
                 items=n, item="rays")]

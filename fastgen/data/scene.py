"""An embedded procedural NeRF scene: a few coloured analytic shapes in the unit cube, rendered
to posed multi-view images by fastgen's reference volume renderer (no download).

    scene = make_scene(n_views=40, size=64)
    scene.images[i]          # [H, W, 3] in [0, 1], white background
    scene.c2w[i], scene.K    # OpenCV camera-to-world [3, 4], intrinsics [3, 3]
    o, d = scene.rays(i)     # [H·W, 3] origins and unit directions of view i

The shapes (``SHAPES``) have a constant density inside and a colour that varies smoothly with
position; the field is :func:`scene_field`. Cameras sit on a sphere around the cube's centre,
looking at it, with views spread by a Fibonacci lattice over the upper three quarters of the
sphere; ``test`` views lie between the training ones (held out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..reference.volrend import volrend

__all__ = ["Scene", "make_scene", "scene_field", "camera_rays", "look_at", "SHAPES",
           "SCENE_AABB"]

SCENE_AABB = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
# (kind, centre, size, colour, density): spheres (size = radius) and boxes (size = half extents)
SHAPES = (
    ("sphere", (0.35, 0.40, 0.45), 0.20, (0.85, 0.20, 0.15), 60.0),
    ("box", (0.66, 0.62, 0.40), (0.14, 0.10, 0.18), (0.15, 0.65, 0.25), 60.0),
    ("sphere", (0.55, 0.30, 0.72), 0.13, (0.20, 0.35, 0.90), 60.0),
    ("box", (0.50, 0.50, 0.12), (0.38, 0.38, 0.03), (0.85, 0.80, 0.55), 60.0),
)


def scene_field(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Density [n] and colour [n, 3] at points x [n, 3] (the last listed shape wins overlaps)."""
    sigma = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    rgb = torch.ones(x.shape[0], 3, dtype=x.dtype, device=x.device)
    for kind, c, size, colour, dens in SHAPES:
        c = torch.tensor(c, dtype=x.dtype, device=x.device)
        if kind == "sphere":
            inside = (x - c).norm(dim=-1) < size
        else:
            inside = ((x - c).abs() < torch.tensor(size, dtype=x.dtype, device=x.device)).all(-1)
        shade = 0.75 + 0.25 * torch.sin(6.0 * (x - c)).sum(-1, keepdim=True) / 3  # texture
        col = (torch.tensor(colour, dtype=x.dtype, device=x.device) * shade).clamp(0, 1)
        sigma = torch.where(inside, torch.as_tensor(dens, dtype=x.dtype), sigma)
        rgb = torch.where(inside[:, None], col, rgb)
    return sigma, rgb


def look_at(eye: torch.Tensor, target: torch.Tensor, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenCV camera-to-world [3, 4] (x right, y down, z forward) at eye looking at target."""
    z = torch.nn.functional.normalize(target - eye, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(z, torch.tensor(up, dtype=eye.dtype)),
                                      dim=0)
    y = torch.linalg.cross(z, x)
    return torch.stack([x, y, z, eye], 1)


def camera_rays(c2w: torch.Tensor, K: torch.Tensor, height: int, width: int):
    """Pixel-centre rays of one camera: origins and unit directions [H·W, 3]."""
    j, i = torch.meshgrid(torch.arange(height, dtype=c2w.dtype),
                          torch.arange(width, dtype=c2w.dtype), indexing="ij")
    dirs = torch.stack([(i + 0.5 - K[0, 2]) / K[0, 0], (j + 0.5 - K[1, 2]) / K[1, 1],
                        torch.ones_like(i)], -1).reshape(-1, 3)
    d = torch.nn.functional.normalize(dirs @ c2w[:, :3].T, dim=-1)
    return c2w[:, 3].expand(d.shape[0], 3).contiguous(), d


@dataclass
class Scene:
    images: torch.Tensor      # [N, H, W, 3]
    c2w: torch.Tensor         # [N, 3, 4]
    K: torch.Tensor           # [3, 3]
    train: list[int]
    test: list[int]
    near: float
    far: float

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    def rays(self, view: int):
        return camera_rays(self.c2w[view], self.K, self.height, self.width)


def _render_view(c2w, K, h, w, near, far, n_steps, bg):
    o, d = camera_rays(c2w, K, h, w)
    t = torch.linspace(near, far, n_steps + 1, dtype=o.dtype)
    ts, te = t[:-1].expand(o.shape[0], n_steps), t[1:].expand(o.shape[0], n_steps)
    x = o[:, None] + d[:, None] * ((ts + te) / 2)[..., None]
    sigma, rgb = scene_field(x.reshape(-1, 3))
    r = o.shape[0]
    starts = torch.arange(r) * n_steps
    counts = torch.full((r,), n_steps)
    color, opacity, _, _, _ = volrend(sigma, rgb, ts.reshape(-1), te.reshape(-1), starts, counts)
    return (color + bg.to(color) * (1 - opacity[:, None])).float().reshape(h, w, 3)


def make_scene(n_views: int = 40, size: int = 64, n_test: int = 6, radius: float = 1.6,
               fov_deg: float = 50.0, n_steps: int = 512) -> Scene:
    """Render the scene from ``n_views`` cameras (``n_test`` of them held out) at size × size
    pixels with ``n_steps`` uniform samples per ray over [near, far] (float32, white
    background)."""
    if n_views < 2 or not 0 < n_test < n_views or size < 4:
        raise ValueError(f"make_scene: n_views >= 2, 0 < n_test < n_views and size >= 4 "
                         f"expected, got n_views={n_views}, n_test={n_test}, size={size}")
    centre = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    K = torch.tensor([[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]], dtype=torch.float64)
    golden = math.pi * (3 - math.sqrt(5))
    c2ws = []
    for i in range(n_views):
        z = 1 - 1.5 * (i + 0.5) / n_views  # heights from near the top down to below the equator
        r = math.sqrt(max(0.0, 1 - z * z))
        eye = centre + radius * torch.tensor([r * math.cos(golden * i), r * math.sin(golden * i),
                                              z], dtype=torch.float64)
        c2ws.append(look_at(eye, centre))
    c2w = torch.stack(c2ws)
    near, far = radius - 0.9, radius + 0.9
    bg = torch.ones(3, dtype=torch.float64)
    images = torch.stack([_render_view(c2w[i].float(), K.float(), size, size, near, far,
                                       n_steps, bg)
                          for i in range(n_views)])
    step = n_views / n_test
    test = sorted({int(step * (k + 0.5)) for k in range(n_test)})
    train = [i for i in range(n_views) if i not in test]
    return Scene(images, c2w.float(), K.float(), train, test, near, far)

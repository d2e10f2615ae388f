"""InstantNGP: a hash-grid radiance field trained with the packed sampler and fused renderer.

    model = InstantNGP(aabb=(0, 0, 0, 1, 1, 1))
    result = train_ngp(model, scene, seconds=300)            # scene: fastgen.data.make_scene()
    image = model.render_image(scene.rays(view), scene.height, scene.width)

Network (Instant-NGP's recipe, smaller): position → :class:`fastgen.nn.HashGridEncoding` →
MLP (64) → density (truncated exp) and 15 geometry features; features + a degree-3 spherical
harmonics encoding of the view direction → MLP (64, 64) → colour (sigmoid). Samples come from a
:class:`fastgen.nerf.OccupancyGrid` (empty space skipped, early termination) and are composited
by :func:`fastgen.nerf.rendering` (fused kernel, closed-form backward).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from ..nerf import OccupancyGrid, rendering
from ..nn.hashgrid import HashGridEncoding

__all__ = ["InstantNGP", "NGPTrainResult", "train_ngp", "sh_encode"]


def sh_encode(d: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics up to degree 3 (16 values) of unit directions d [n, 3]."""
    x, y, z = d.unbind(-1)
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x,
        1.0925484305920792 * xy, -1.0925484305920792 * yz,
        0.94617469575755997 * zz - 0.31539156525251999, -1.0925484305920792 * xz,
        0.54627421529603959 * (xx - yy),
        0.59004358992664352 * y * (-3.0 * xx + yy), 2.8906114426405538 * xy * z,
        0.45704579946446572 * y * (1.0 - 5.0 * zz), 0.3731763325901154 * z * (5.0 * zz - 3.0),
        0.45704579946446572 * x * (1.0 - 5.0 * zz), 1.4453057213202769 * z * (xx - yy),
        0.59004358992664352 * x * (-xx + 3.0 * yy)], -1)


class _TruncExp(torch.autograd.Function):
    # exp with the gradient clamped at exp(15) (Instant-NGP's density activation)
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15, 15))


class InstantNGP(nn.Module):
    """Hash-grid radiance field with an occupancy grid (see the module docstring).

    Args:
        aabb: (min xyz, max xyz) of the scene; positions are normalised to [0, 1]^3 in it.
        n_levels, log2_hashmap_size, base_resolution, finest_resolution: the hash grid (2
            features per level; the per-level scale grows base to finest).
        hidden: MLP width. grid_resolution: occupancy grid cells per side.
        render_step_size: marching step (default: the aabb's diagonal / 256).
    """

    def __init__(self, aabb=(0.0, 0.0, 0.0, 1.0, 1.0, 1.0), *, n_levels: int = 12,
                 log2_hashmap_size: int = 17, base_resolution: int = 16,
                 finest_resolution: int = 512, hidden: int = 64, grid_resolution: int = 32,
                 render_step_size: Optional[float] = None):
        super().__init__()
        box = torch.as_tensor(aabb, dtype=torch.float32)
        self.register_buffer("aabb", box)
        scale = math.exp(math.log(finest_resolution / base_resolution) / max(n_levels - 1, 1))
        self.encoding = HashGridEncoding(3, n_levels, 2, log2_hashmap_size, base_resolution,
                                         scale)
        self.density_net = nn.Sequential(nn.Linear(2 * n_levels, hidden), nn.ReLU(),
                                         nn.Linear(hidden, 16))
        self.color_net = nn.Sequential(nn.Linear(15 + 16, hidden), nn.ReLU(),
                                       nn.Linear(hidden, hidden), nn.ReLU(),
                                       nn.Linear(hidden, 3))
        self.grid = OccupancyGrid(box, resolution=grid_resolution)
        diag = float((box[3:] - box[:3]).norm())
        self.render_step_size = render_step_size or diag / 256

    def _features(self, x: torch.Tensor):
        u = ((x - self.aabb[:3]) / (self.aabb[3:] - self.aabb[:3])).clamp(0, 1)
        h = self.density_net(self.encoding(u))
        return _TruncExp.apply(h[:, 0] - 1.0), h[:, 1:]

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """σ at points x [n, 3] -> [n]."""
        return self._features(x)[0]

    def forward(self, x: torch.Tensor, d: torch.Tensor):
        """Points x [n, 3], unit directions d [n, 3] -> (rgb [n, 3], sigma [n])."""
        sigma, geo = self._features(x)
        rgb = torch.sigmoid(self.color_net(torch.cat([geo, sh_encode(d)], -1)))
        return rgb, sigma

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
                    background: torch.Tensor, near: float = 0.0, far: float = 1e10,
                    stratified: bool = False):
        """Colour [n_rays, 3] and samples per ray (float) of rays through the occupancy grid."""
        def sigma_fn(ts, te, ray):
            return self.density(rays_o[ray] + rays_d[ray] * ((ts + te) / 2)[:, None])

        def rgb_sigma_fn(ts, te, ray):
            return self(rays_o[ray] + rays_d[ray] * ((ts + te) / 2)[:, None], rays_d[ray])

        n = rays_o.shape[0]
        ray, ts, te = self.grid.sampling(rays_o, rays_d, sigma_fn=sigma_fn, near_plane=near,
                                         far_plane=far, render_step_size=self.render_step_size,
                                         stratified=stratified, early_stop_eps=1e-4)
        color, _, _, _ = rendering(ts, te, ray, n, rgb_sigma_fn=rgb_sigma_fn,
                                   render_bkgd=background)
        return color, ts.numel() / max(n, 1)

    @torch.no_grad()
    def render_image(self, rays_o, rays_d, height: int, width: int, background=None,
                     near: float = 0.0, far: float = 1e10, chunk: int = 8192) -> torch.Tensor:
        """[H, W, 3] image of H·W rays (row-major), rendered in chunks."""
        bg = torch.ones(3, device=rays_o.device) if background is None else background
        out = [self.render_rays(rays_o[i:i + chunk], rays_d[i:i + chunk], bg, near, far)[0]
               for i in range(0, rays_o.shape[0], chunk)]
        return torch.cat(out).reshape(height, width, 3)

    def update_grid(self, step: int, warmup_steps: int = 256, n: int = 16) -> None:
        """The occupancy update for training step ``step`` (occupancy = σ · step size)."""
        self.grid.update_every_n_steps(step, lambda x: self.density(x) * self.render_step_size,
                                       warmup_steps=warmup_steps, n=n)


@dataclass
class NGPTrainResult:
    steps: int
    seconds: float
    loss: float
    samples_per_ray: float
    ms_per_step: float
    history: list = field(default_factory=list)  # (step, seconds, loss, psnr, samples/ray)


def train_ngp(model: InstantNGP, scene, *, seconds: Optional[float] = 300.0,
              steps: Optional[int] = None, batch_rays: int = 2048, lr: float = 1e-2,
              seed: int = 0, progress: Optional[Callable[[int, float, float, float, float], None]]
              = None, every: int = 50) -> NGPTrainResult:
    """Adam (Instant-NGP's betas and eps) on random training rays, white background, occupancy
    grid updated every 16 steps (all cells for the first 256), until ``seconds`` or ``steps``.
    progress(step, seconds, loss, psnr of the batch, samples per ray) every ``every`` steps."""
    if seconds is None and steps is None:
        raise ValueError("train_ngp: give seconds or steps")
    g = torch.Generator().manual_seed(seed)
    rays = [scene.rays(v) for v in scene.train]
    all_o = torch.cat([o for o, _ in rays])
    all_d = torch.cat([d for _, d in rays])
    colours = scene.images[scene.train].reshape(-1, 3)
    dev = model.aabb.device
    all_o, all_d, colours = all_o.to(dev), all_d.to(dev), colours.to(dev)
    bg = torch.ones(3, device=dev)
    nets = list(model.density_net.parameters()) + list(model.color_net.parameters())
    opt = torch.optim.Adam([{"params": model.encoding.parameters()},
                            {"params": nets, "weight_decay": 1e-6}], lr=lr, betas=(0.9, 0.99),
                           eps=1e-15)
    model.train()
    t0 = time.perf_counter()
    step, loss_avg, history, spr = 0, float("nan"), [], 0.0
    while True:
        elapsed = time.perf_counter() - t0
        if (steps is not None and step >= steps) or (steps is None and elapsed >= seconds):
            break
        model.update_grid(step)
        idx = torch.randint(all_o.shape[0], (batch_rays,), generator=g).to(dev)
        color, spr = model.render_rays(all_o[idx], all_d[idx], bg, scene.near, scene.far,
                                       stratified=True)
        loss = torch.nn.functional.mse_loss(color, colours[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        value = loss.item()
        loss_avg = value if step == 1 else 0.9 * loss_avg + 0.1 * value
        if step % every == 0:
            s = time.perf_counter() - t0
            entry = (step, s, loss_avg, -10 * math.log10(max(loss_avg, 1e-10)), spr)
            history.append(entry)
            if progress is not None:
                progress(*entry)
    model.eval()
    s = time.perf_counter() - t0
    return NGPTrainResult(step, s, loss_avg, spr, 1e3 * s / max(step, 1), history)

"""``fastgen demo nerf``: train an InstantNGP on the embedded procedural scene.

Renders :func:`fastgen.data.make_scene` (``--views`` cameras, ``--size`` pixels, some held out),
trains :class:`fastgen.models.InstantNGP` for ``--seconds`` (or ``--steps``) with progress (step,
loss, PSNR of the batch, samples per ray, seconds), evaluates PSNR on the held-out views, times a
few training steps with every fastgen op on its PyTorch reference (``--reference-steps``), and
writes a rendered novel view and a side-by-side PNG (ground truth | render) of each held-out
view to ``--out``.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

__all__ = ["add_arguments", "run"]


def add_arguments(p) -> None:
    p.add_argument("--seconds", type=float, default=300.0, help="training time budget (300)")
    p.add_argument("--steps", type=int, help="stop training after this many steps instead")
    p.add_argument("--views", type=int, default=40, help="rendered views (40)")
    p.add_argument("--test-views", type=int, default=5, help="held-out views (5)")
    p.add_argument("--size", type=int, default=64, help="image size in pixels (64)")
    p.add_argument("--batch-rays", type=int, default=2048, help="rays per step (2048)")
    p.add_argument("--reference-steps", type=int, default=3,
                   help="training steps timed on the reference kernels (3; 0 skips)")
    p.add_argument("--out", metavar="DIR", default="fastgen-demo-nerf",
                   help="output folder (fastgen-demo-nerf)")
    p.add_argument("--seed", type=int, default=0)


def _png(path, arr):
    from PIL import Image

    Image.fromarray((arr.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)).save(path)


def run(args) -> int:
    from ..data.scene import camera_rays, look_at, make_scene
    from ..models.image import psnr
    from ..models.ngp import InstantNGP, train_ngp
    from ..registry import use_backend

    if args.size < 8 or args.views < 3 or not 0 < args.test_views < args.views:
        raise SystemExit("fastgen demo nerf: --size >= 8, --views >= 3, 0 < --test-views < "
                         "--views")
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    scene = make_scene(args.views, args.size, args.test_views)
    print(f"rendered the procedural scene: {args.views} views of {args.size}x{args.size} "
          f"({len(scene.test)} held out) in {time.perf_counter() - t0:.1f} s", flush=True)
    model = InstantNGP()
    n_params = sum(p.numel() for p in model.parameters())
    budget = f"{args.steps} steps" if args.steps else f"{args.seconds:.0f} s"
    print(f"training InstantNGP ({n_params:,} parameters, occupancy grid "
          f"{model.grid.resolution}^3) for {budget}, {args.batch_rays} rays per step",
          flush=True)

    def progress(step, seconds, loss, batch_psnr, spr):
        print(f"  step {step:5d}  loss {loss:.5f}  psnr {batch_psnr:5.2f} dB  {spr:5.1f} "
              f"samples/ray  {seconds:6.1f} s", flush=True)

    res = train_ngp(model, scene, seconds=args.seconds, steps=args.steps,
                    batch_rays=args.batch_rays, seed=args.seed, progress=progress)
    print(f"trained {res.steps} steps in {res.seconds:.1f} s ({res.ms_per_step:.1f} ms/step, "
          f"{res.samples_per_ray:.1f} samples/ray)")
    os.makedirs(args.out, exist_ok=True)
    scores = []
    for v in scene.test:
        o, d = scene.rays(v)
        img = model.render_image(o, d, scene.height, scene.width, near=scene.near,
                                 far=scene.far)
        scores.append(psnr(img, scene.images[v]))
        _png(os.path.join(args.out, f"test_{v:02d}.png"),
             torch.cat([scene.images[v], img], 1))
    print(f"held-out PSNR: {sum(scores) / len(scores):.2f} dB (views "
          + ", ".join(f"{v}: {s:.2f}" for v, s in zip(scene.test, scores)) + ")")
    # a novel view from a camera no view used, at twice the resolution
    eye = torch.tensor([0.5 + 1.0, 0.5 - 0.5, 0.5 + 0.9])
    c2w = look_at(eye, torch.tensor([0.5, 0.5, 0.5])).float()
    K2 = scene.K.clone()
    K2[:2] *= 2  # twice the training resolution, same field of view
    o, d = camera_rays(c2w, K2, 2 * scene.height, 2 * scene.width)
    novel = model.render_image(o, d, 2 * scene.height, 2 * scene.width, near=0.0, far=4.0)
    _png(os.path.join(args.out, "novel_view.png"), novel)
    print(f"wrote {args.out}/novel_view.png and test_*.png (ground truth | render)")
    if args.reference_steps > 0:
        fast = train_ngp(InstantNGP(), scene, seconds=None, steps=args.reference_steps + 1,
                         batch_rays=args.batch_rays, seed=args.seed)
        with use_backend("reference", "hashgrid", "volrend", "march"):
            slow = train_ngp(InstantNGP(), scene, seconds=None, steps=args.reference_steps + 1,
                             batch_rays=args.batch_rays, seed=args.seed)
        print(f"per training step ({args.reference_steps + 1} steps from a fresh model): "
              f"fastgen {fast.ms_per_step:.0f} ms, reference kernels {slow.ms_per_step:.0f} ms "
              f"({slow.ms_per_step / fast.ms_per_step:.1f}x)")
    return 0

"""``fastgen demo image``: fit a photo with a hash-grid encoding + MLP (Instant-NGP's 2-D task).

Loads scikit-image's astronaut (512 x 512, bundled in the wheel, no download) or ``--image``,
trains :class:`fastgen.models.NeuralImage` for ``--seconds``, prints progress (step, PSNR,
seconds), writes the reconstruction beside the original and a side-by-side PNG, then times a few
steps of the same training with the reference kernels (hash grid and MLP) to show what the
kernels buy.
"""

from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np
import torch

__all__ = ["load_image", "run", "add_arguments"]


def load_image(path: Optional[str]) -> tuple[torch.Tensor, str]:
    """[H, W, 3] float32 in [0, 1] and a short name; astronaut when ``path`` is None."""
    if path is None:
        try:
            from skimage import data
        except ImportError as e:
            raise SystemExit("fastgen demo image: the default photo comes from scikit-image; "
                             "pip install scikit-image (or fastgen-kernels[demo]), or pass "
                             "--image PATH") from e
        return torch.from_numpy(data.astronaut()).float() / 255.0, "astronaut"
    from PIL import Image

    if not os.path.isfile(path):
        raise SystemExit(f"fastgen demo image: --image {path!r} is not a file")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()), os.path.splitext(os.path.basename(path))[0]


def _save_png(path: str, image: torch.Tensor) -> None:
    from PIL import Image

    arr = (image.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _time_steps(model, image, steps: int, batch_size: int) -> tuple[float, float]:
    """(ms per training step, ms per hash-grid forward+backward) over ``steps`` steps."""
    from ..models.image import fit_image

    xy = torch.rand(batch_size, 2, device=model.encoding.params.device)
    fit_image(model, image, steps=1, batch_size=batch_size, eval_every_s=1e9)  # warm-up
    step_ms = fit_image(model, image, steps=steps, batch_size=batch_size,
                        eval_every_s=1e9).ms_per_step   # training time only, not the render
    def sync():
        if xy.is_cuda:
            torch.cuda.synchronize(xy.device)

    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        model.encoding(xy).sum().backward()
    sync()
    return step_ms, (time.perf_counter() - t0) * 1e3 / steps


def add_arguments(p) -> None:
    p.add_argument("--image", metavar="PATH", help="a photo to fit (default: scikit-image's "
                   "astronaut, 512x512)")
    p.add_argument("--seconds", type=float, default=120.0, help="training time budget "
                   "(default 120)")
    p.add_argument("--steps", type=int, help="stop after this many steps instead")
    p.add_argument("--batch-size", type=int, default=1 << 16, help="pixels per step (65536)")
    p.add_argument("--log2-hashmap-size", type=int, default=15, help="entries per hashed "
                   "level = 2^this (default 15: the grid has fewer parameters than the photo "
                   "has values, so its finest levels hash)")
    p.add_argument("--reference-steps", type=int, default=5, help="steps timed afterwards with "
                   "the reference kernels, for the speed-up (0: skip)")
    p.add_argument("--out", metavar="DIR", default="fastgen-demo-image",
                   help="where the PNGs go (default ./fastgen-demo-image)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from ..models.image import NeuralImage, fit_image, psnr

    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    if args.steps is None and (args.seconds is None or args.seconds <= 0):
        raise SystemExit("fastgen demo image: --seconds must be > 0 (or give --steps)")
    image, name = load_image(args.image)
    H, W, _ = image.shape
    torch.manual_seed(args.seed)
    model = NeuralImage(H, W, log2_hashmap_size=args.log2_hashmap_size).to(device)
    enc = model.encoding
    n_weights = sum(p.numel() for p in model.parameters())
    print(f"fitting {name} ({W}x{H}, {H * W * 3} values) on {device} with a {enc.n_levels}-level "
          f"hash grid ({enc.n_params} parameters, {sum(lv.hashed for lv in enc.levels())} "
          f"hashed levels) + MLP: {n_weights} parameters in all")

    def progress(step, seconds, p):
        print(f"  step {step:6d}  {seconds:7.1f} s  PSNR {p:6.2f} dB", flush=True)

    budget = None if args.steps is not None else args.seconds
    result = fit_image(model, image.to(device), seconds=budget, steps=args.steps,
                       batch_size=args.batch_size, seed=args.seed, callback=progress)
    at = {}
    for mark in (60.0, 120.0):
        reached = [p for _, s, p in result.history if s <= mark + 0.5]
        if reached and result.seconds >= mark - 5.0:
            at[mark] = reached[-1]
    summary = ", ".join(f"{p:.2f} dB at {int(m)} s" for m, p in at.items())
    print(f"final PSNR {result.psnr:.2f} dB after {result.steps} steps, {result.seconds:.1f} s "
          f"({result.ms_per_step:.1f} ms/step){'; ' + summary if summary else ''}")

    os.makedirs(args.out, exist_ok=True)
    recon = model.render().cpu()
    paths = [os.path.join(args.out, f"{name}_original.png"),
             os.path.join(args.out, f"{name}_fit.png"),
             os.path.join(args.out, f"{name}_side_by_side.png")]
    _save_png(paths[0], image)
    _save_png(paths[1], recon)
    _save_png(paths[2], torch.cat([image, recon], dim=1))
    print(f"wrote {', '.join(paths)} (PSNR of the PNG: {psnr(recon, image):.2f} dB)")

    if args.reference_steps > 0:
        steps = args.reference_steps
        fast_step, fast_enc = _time_steps(model, image.to(device), steps, args.batch_size)
        model.encoding.backend = model.mlp.backend = "reference"
        ref_step, ref_enc = _time_steps(model, image.to(device), steps, args.batch_size)
        model.encoding.backend = model.mlp.backend = None
        print(f"per training step ({steps} steps each, batch {args.batch_size}): fastgen "
              f"{fast_step:.1f} ms, reference kernels (hash grid and MLP) {ref_step:.1f} ms "
              f"({ref_step / fast_step:.1f}x); hash grid forward+backward alone: "
              f"{fast_enc:.1f} ms vs {ref_enc:.1f} ms ({ref_enc / fast_enc:.1f}x). fastgen's step "
              f"runs the MLP and the L2 loss as one kernel (NeuralImage.loss); Adam is the same "
              f"PyTorch code in both.")
    return 0

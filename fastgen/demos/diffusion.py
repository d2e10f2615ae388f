"""``fastgen demo diffusion``: train a tiny denoiser, then sample with a fastgen scheduler.

Trains :class:`fastgen.models.Denoiser` (a small UNet on fastgen's bias_act and attention) on
16 x 16 procedural shapes (or scikit-learn's digits, ``--data digits``) for ``--seconds``,
printing progress (step, seconds, loss); samples a grid with a :mod:`fastgen.diffusion` scheduler
(``--scheduler``, ``--sampling-steps``); then times the sampling loop twice, once as is and once
with the fused step op forced onto its PyTorch reference (``FASTGEN_BACKEND=sampler_step=
reference``), and prints the time per ``scheduler.step`` call of each, with the model forward
per step for context. Writes the sample grid and a grid of training images beside it to ``--out``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import numpy as np
import torch

__all__ = ["add_arguments", "run", "image_grid", "reference_backend"]


def image_grid(images: torch.Tensor, cols: Optional[int] = None, scale: int = 4,
               pad: int = 1) -> np.ndarray:
    """[N, 1, H, W] (or [N, 3, H, W]) images in [-1, 1] -> a uint8 grid [rows * (H + pad) + pad,
    ...] (greyscale 2-D, or RGB 3-D), each pixel a ``scale`` x ``scale`` block, on grey padding.
    """
    n, c, h, w = images.shape
    cols = cols or max(1, int(np.ceil(np.sqrt(n))))
    rows = (n + cols - 1) // cols
    grid = torch.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 0.5)
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top:top + h, left:left + w] = x[i]
    grid = grid.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    arr = (grid.numpy() * 255.0 + 0.5).astype(np.uint8)
    return arr[0] if c == 1 else arr.transpose(1, 2, 0)


def _save_png(path: str, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(path)


def reference_backend(*ops: str):
    """Within the block, ``ops`` run their PyTorch reference (registry.use_backend): by default
    the step and its noise draw (``sampler_step``, ``randn``)."""
    from ..registry import use_backend

    return use_backend("reference", *(ops or ("sampler_step", "randn")))


def _step_backend(device: str) -> str:
    """The backend fastgen's sampler_step picks on ``device`` now (or why none can)."""
    from .. import ops  # noqa: F401  (registers the ops)
    from ..registry import BackendError, get

    try:
        return get("sampler_step").select(torch.device(device).type).name
    except (BackendError, KeyError) as e:
        return f"none ({str(e).splitlines()[0]})"


def add_arguments(p) -> None:
    """The demo's command-line options (on an argparse parser)."""
    from ..models.denoiser import SCHEDULERS

    p.add_argument("--data", choices=("shapes", "digits", "auto"), default="shapes",
                   help="training images: procedural circles, squares and crosses (default), "
                   "scikit-learn's 8x8 digits upscaled (needs scikit-learn), or auto (digits "
                   "when scikit-learn is installed)")
    p.add_argument("--n-train", type=int, default=4096, help="training images (default 4096; "
                   "the digits are 1797)")
    p.add_argument("--seconds", type=float, default=60.0, help="training time budget "
                   "(default 60)")
    p.add_argument("--steps", type=int, help="stop training after this many steps instead")
    p.add_argument("--batch-size", type=int, default=32, help="images per training step (32)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (2e-3)")
    p.add_argument("--channels", type=int, default=24, help="UNet width at full resolution "
                   "(24: 0.27M parameters; 32: 0.47M)")
    p.add_argument("--scheduler", choices=tuple(SCHEDULERS), default="ddim",
                   help="fastgen.diffusion scheduler to sample with (default ddim)")
    p.add_argument("--sampling-steps", type=int, default=25, help="sampling steps (25)")
    p.add_argument("--n", type=int, default=16, help="images to sample (16, a 4x4 grid)")
    p.add_argument("--timing-repeats", type=int, default=3, help="timed sampling runs per "
                   "backend, interleaved; the fastest run counts (default 3; 0: skip timing)")
    p.add_argument("--out", metavar="DIR", default="fastgen-demo-diffusion",
                   help="where the PNGs go (default ./fastgen-demo-diffusion)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)


def _time_sampling(model, make, args, device, repeats):
    """Sample ``repeats`` + 1 times with each backend, interleaved (the first round warms up):
    the fastest :class:`SamplingTiming` (by step time) of fastgen's and of the reference's, and
    the largest difference between their last samples (same seed)."""
    from ..models.denoiser import SamplingTiming, sample

    best = {"fastgen": None, "reference": None}
    outs = {}
    for i in range(repeats + 1):                  # the first round warms both paths up
        for name in ("fastgen", "reference"):
            timing = SamplingTiming()
            gen = torch.Generator().manual_seed(args.seed)
            ctx = reference_backend() if name == "reference" else contextlib.nullcontext()
            with ctx:
                outs[name] = sample(model, make(), args.n, args.sampling_steps, gen,
                                    device=device, timing=timing)
            if i > 0 and (best[name] is None or timing.step_ms < best[name].step_ms):
                best[name] = timing
    diff = (outs["fastgen"].double() - outs["reference"].double()).abs().max().item()
    return best["fastgen"], best["reference"], diff


def run(args) -> int:
    """Train, sample, time and write the PNGs; returns the exit status."""
    import time

    from ..data import load_images
    from ..models.denoiser import Denoiser, make_scheduler, sample, train_denoiser

    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    if args.steps is None and (args.seconds is None or args.seconds <= 0):
        raise SystemExit("fastgen demo diffusion: --seconds must be > 0 (or give --steps)")
    for name in ("sampling_steps", "n", "batch_size", "n_train"):
        if getattr(args, name) < 1:
            raise SystemExit(f"fastgen demo diffusion: --{name.replace('_', '-')} must be >= 1")
    if args.timing_repeats < 0:
        raise SystemExit("fastgen demo diffusion: --timing-repeats must be >= 0")
    torch.manual_seed(args.seed)
    try:
        model = Denoiser(channels=args.channels).to(device)
    except ValueError as e:
        raise SystemExit(f"fastgen demo diffusion: {e}") from e
    make = lambda: make_scheduler(args.scheduler, model)
    try:
        scheduler = make()                       # fail before training, not after
    except ImportError as e:
        raise SystemExit(f"fastgen demo diffusion: {e}") from e
    try:
        images, data_name = load_images(args.data, args.n_train, size=model.size,
                                        seed=args.seed)
    except ImportError as e:
        raise SystemExit(f"fastgen demo diffusion: {e}") from e
    n_weights = sum(p.numel() for p in model.parameters())
    print(f"training a {n_weights}-parameter UNet denoiser on {images.shape[0]} {data_name} "
          f"({model.size}x{model.size}) on {device}, batch {args.batch_size}, "
          f"{'%d steps' % args.steps if args.steps is not None else '%g s' % args.seconds}",
          flush=True)

    def progress(step, seconds, loss):
        print(f"  step {step:6d}  {seconds:7.1f} s  loss {loss:.4f}", flush=True)

    budget = None if args.steps is not None else args.seconds
    result = train_denoiser(model, images, seconds=budget, steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                            callback=progress)
    print(f"trained {result.steps} steps in {result.seconds:.1f} s ({result.ms_per_step:.1f} "
          f"ms/step), final loss {result.final_loss:.4f}")

    cls = type(scheduler)
    t0 = time.perf_counter()
    samples = sample(model, scheduler, args.n, args.sampling_steps,
                     torch.Generator().manual_seed(args.seed), device=device)
    wall = time.perf_counter() - t0
    n_calls = len(scheduler.timesteps)
    print(f"sampled {args.n} images with {cls.__module__}.{cls.__name__} "
          f"({args.scheduler}) in {args.sampling_steps} steps "
          f"({n_calls} model calls): {wall:.2f} s; value range [{samples.min().item():.2f}, "
          f"{samples.max().item():.2f}]")

    os.makedirs(args.out, exist_ok=True)
    cols = max(1, int(np.ceil(np.sqrt(args.n))))
    paths = [os.path.join(args.out, f"samples_{args.scheduler.replace('+', 'p')}.png"),
             os.path.join(args.out, f"training_{data_name}.png")]
    _save_png(paths[0], image_grid(samples, cols))
    _save_png(paths[1], image_grid(images[:args.n], cols))
    print(f"wrote {paths[0]} and {paths[1]} (training images, same layout)")

    if args.timing_repeats > 0:
        fast, ref, diff = _time_sampling(model, make, args, device, args.timing_repeats)
        print(f"per sampling step (batch {args.n}, {n_calls} scheduler.step calls, best of "
              f"{args.timing_repeats}): scheduler.step fastgen {fast.step_ms:.3f} ms "
              f"(sampler_step backend {_step_backend(device)}) vs reference "
              f"{ref.step_ms:.3f} ms ({ref.step_ms / max(fast.step_ms, 1e-9):.2f}x); model "
              f"forward {fast.model_ms:.2f} ms. Samples of the two differ by at most "
              f"{diff:.1e}.")
    return 0

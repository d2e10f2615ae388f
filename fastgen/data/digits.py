"""Small embedded image sets for the diffusion demo: procedural shapes, or scikit-learn's digits.

    images = load_images("shapes", n=2048, seed=0)        # [2048, 1, 16, 16] float32 in [-1, 1]
    images = make_shapes(64, size=32, generator=torch.Generator().manual_seed(1))
    images = load_digits()                                 # needs scikit-learn (data in its wheel)

Nothing is downloaded. The shapes need only torch: filled circles, squares and crosses at random
positions and sizes, anti-aliased (each pixel's coverage of the shape, from its signed distance),
white (+1) on black (-1). scikit-learn's digits are the 1797 8 x 8 handwritten digits bundled in
its wheel, upscaled bilinearly.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["SHAPES", "DATASETS", "make_shapes", "load_digits", "load_images", "have_digits"]

SHAPES = ("circle", "square", "cross")
DATASETS = ("shapes", "digits", "auto")


def make_shapes(n: int, size: int = 16, *, generator: Optional[torch.Generator] = None,
                seed: Optional[int] = None, kinds: tuple = SHAPES) -> torch.Tensor:
    """``n`` images [n, 1, size, size] float32 in [-1, 1], each one shape of ``kinds``.

    Shapes, positions and sizes are drawn from ``generator`` (or a fresh one seeded with ``seed``,
    default 0), so the same seed gives the same images on every machine. Circles have radius
    0.15-0.35 of the image size, squares half-sides 0.12-0.30, crosses arms 0.2-0.38 long and
    0.06-0.1 thick; every shape lies wholly inside the image.
    """
    if n < 0 or size < 4:
        raise ValueError(f"make_shapes: need n >= 0 and size >= 4, got n={n}, size={size}")
    unknown = [k for k in kinds if k not in SHAPES]
    if not kinds or unknown:
        raise ValueError(f"make_shapes: kinds must be a non-empty subset of {SHAPES}, got "
                         f"{kinds!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    elif seed is not None:
        raise ValueError("make_shapes: give generator or seed, not both")
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    kind = torch.randint(0, len(kinds), (n,), generator=generator)
    s = float(size)
    extent = torch.empty(n, dtype=torch.float64)       # half-extent, in pixels
    thick = (0.06 + 0.04 * u[:, 3]) * s                # crosses' half-thickness
    codes = torch.tensor([SHAPES.index(kinds[int(k)]) for k in kind], dtype=torch.long)
    extent[codes == 0] = ((0.15 + 0.20 * u[:, 0]) * s)[codes == 0]
    extent[codes == 1] = ((0.12 + 0.18 * u[:, 0]) * s)[codes == 1]
    extent[codes == 2] = ((0.20 + 0.18 * u[:, 0]) * s)[codes == 2]
    margin = extent + 0.5
    cx = margin + u[:, 1] * (s - 2 * margin)
    cy = margin + u[:, 2] * (s - 2 * margin)
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    dx = (centres.view(1, 1, -1) - cx.view(-1, 1, 1)).abs()      # [n, 1, size]
    dy = (centres.view(1, -1, 1) - cy.view(-1, 1, 1)).abs()      # [n, size, 1]
    e, t = extent.view(-1, 1, 1), thick.view(-1, 1, 1)
    circle = (dx.square() + dy.square()).sqrt() - e
    square = torch.maximum(dx, dy) - e
    cross = torch.minimum(torch.maximum(dx - e, dy - t), torch.maximum(dx - t, dy - e))
    dist = torch.where(codes.view(-1, 1, 1) == 0, circle,
                       torch.where(codes.view(-1, 1, 1) == 1, square, cross))
    coverage = (0.5 - dist).clamp(0.0, 1.0)            # anti-aliased edge one pixel wide
    return (2.0 * coverage - 1.0).to(torch.float32).unsqueeze(1)


def have_digits() -> bool:
    """Whether scikit-learn (and so :func:`load_digits`) is importable."""
    return importlib.util.find_spec("sklearn") is not None


def load_digits(size: int = 16) -> torch.Tensor:
    """scikit-learn's 1797 digits, [1797, 1, size, size] float32 in [-1, 1] (bilinear upscale).

    Raises ImportError when scikit-learn is missing (use :func:`make_shapes` instead).
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:
        raise ImportError("fastgen.data.load_digits needs scikit-learn (pip install "
                          "scikit-learn); the procedural 'shapes' set needs nothing") from e
    x = torch.from_numpy(_load().images).to(torch.float32).unsqueeze(1) / 16.0
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (2.0 * x - 1.0).clamp(-1.0, 1.0)


def load_images(name: str = "shapes", n: Optional[int] = None, size: int = 16,
                seed: int = 0) -> tuple[torch.Tensor, str]:
    """A training set and its name: ``(images [N, 1, size, size] in [-1, 1], name)``.

    name: "shapes" (procedural, ``n`` images, default 4096), "digits" (scikit-learn's, the
    first ``n`` of 1797 when given; needs scikit-learn), or "auto" (digits when scikit-learn is
    importable, else shapes).
    """
    if name not in DATASETS:
        raise ValueError(f"load_images: name must be one of {', '.join(DATASETS)}, got {name!r}")
    if name == "auto":
        name = "digits" if have_digits() else "shapes"
    if name == "digits":
        images = load_digits(size)
        return (images if n is None else images[:n]), "digits"
    return make_shapes(4096 if n is None else n, size, seed=seed), "shapes"

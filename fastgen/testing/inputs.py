"""Input generators: fresh random values, odd shapes and non-contiguous layouts.

Values come from a seed drawn fresh for every test (so repeated runs explore new inputs) unless
``FASTGEN_TEST_SEED`` pins it; :func:`fresh_seed` returns the seed so a failure can print it and be
replayed with ``FASTGEN_TEST_SEED=<seed> pytest ...``.
"""

from __future__ import annotations

import os
import random
from typing import Optional, Sequence

import torch

__all__ = ["LAYOUTS", "ODD_SIZES", "fresh_seed", "make_tensor", "odd_shapes"]

# Sizes that break power-of-two and vector-width assumptions: 1, a prime below a SIMD width,
# a prime above a tile, and one above 1000.
ODD_SIZES = (1, 7, 97, 1031)

# Memory layouts a kernel must accept:
#   contiguous      row-major
#   channels_last   NHWC memory for 4-D tensors (dense, not contiguous)
#   transposed      last two dims swapped (dense, not contiguous)
#   strided         every other element of a larger buffer (not dense: the kernel must copy)
#   permuted_strided  transposed and strided: not dense, and not in row-major dimension order
LAYOUTS = ("contiguous", "channels_last", "transposed", "strided", "permuted_strided")


def fresh_seed() -> int:
    """A new random seed, or FASTGEN_TEST_SEED when set."""
    pinned = os.environ.get("FASTGEN_TEST_SEED")
    return int(pinned) if pinned else random.SystemRandom().randrange(2**31)


def make_tensor(shape: Sequence[int], dtype: torch.dtype = torch.float32, device="cpu", *,
                layout: str = "contiguous", scale: float = 1.0, offset: float = 0.0,
                requires_grad: bool = False, generator: Optional[torch.Generator] = None
                ) -> torch.Tensor:
    """Normal(offset, scale) values of ``shape`` in the given memory layout.

    Values are drawn in float64 on the CPU and then cast, so a seed gives the same numbers on
    every device, dtype and layout.
    """
    shape = tuple(int(s) for s in shape)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout in ("transposed", "permuted_strided") and len(shape) < 2:
        layout = "strided" if layout == "permuted_strided" else "contiguous"
    if layout == "channels_last" and len(shape) != 4:
        layout = "transposed" if len(shape) >= 2 else "contiguous"

    v = (torch.randn(shape, dtype=torch.float64, generator=generator) * scale + offset).to(
        device=device, dtype=dtype)
    # The same logical values in every layout: only the strides differ.
    if layout == "channels_last":
        t = v.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        t = v.transpose(-1, -2).contiguous().transpose(-1, -2)
    elif layout == "strided":
        base = v.new_empty(tuple(shape[:-1]) + (2 * shape[-1],) if shape else (2,))
        t = base[..., ::2] if shape else base[0]
        t.copy_(v)
    elif layout == "permuted_strided":
        base = v.new_empty(tuple(shape[:-2]) + (shape[-1], 2 * shape[-2]))
        t = base[..., ::2].transpose(-1, -2)
        t.copy_(v)
    else:
        t = v
    return t.requires_grad_(requires_grad)


def odd_shapes(ndim: int, *, max_numel: int = 1 << 16, extra: Sequence[Sequence[int]] = ()
               ) -> list[tuple[int, ...]]:
    """Shapes of rank ``ndim`` mixing ODD_SIZES, capped at ``max_numel`` elements, plus extras."""
    shapes = set()
    for i, s in enumerate(ODD_SIZES):
        for j in range(ndim):
            shape = [ODD_SIZES[(i + k) % 2 + 1] if k != j else s for k in range(ndim)]
            while _numel(shape) > max_numel:
                shape[shape.index(max(shape))] //= 4
            shapes.add(tuple(max(1, d) for d in shape))
    shapes.update(tuple(e) for e in extra)
    return sorted(shapes)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n

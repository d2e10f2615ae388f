"""Benchmark case for fastgen.ops.randn: the noise of one stochastic sampler step (a 4×4×128×128
float32 latent) from a seeded CPU generator, against torch.randn drawing the same numbers.

Contenders, all reseeded to the same state before each call so that every call draws the same
values (the error column is then the difference between the two, which must be 0):

    fastgen     fastgen.ops.randn (cpu backend)
    reference   torch.randn

Traffic floor: one write of the output.
"""

from __future__ import annotations

import torch

from ..ops.randn import randn
from ..testing.check import available_backends
from .core import Case

SHAPE = (4, 4, 128, 128)


def cases(device: str) -> list[Case]:
    if device != "cpu" or "cpu" not in available_backends("randn", "cpu"):
        return []
    numel = 1
    for d in SHAPE:
        numel *= d

    def setup():
        return {"gen": torch.Generator()}

    def fast(s):
        return randn(SHAPE, generator=s["gen"].manual_seed(5), backend="cpu")

    def reference(s):
        return torch.randn(SHAPE, generator=s["gen"].manual_seed(5))

    return [Case(op="randn", name=f"sampler noise {'x'.join(map(str, SHAPE))}", device=device,
                 dtype=torch.float32, setup=setup, fastgen=fast, reference=reference,
                 bytes_moved=numel * 4, tier="quick", backend="cpu", items=numel, item="vals",
                 inner=5)]

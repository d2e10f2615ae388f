"""Benchmark cases for the hash-grid encoding: Instant-NGP's NeRF config and a 2-D image config.

Contenders: fastgen (C++ CPU / CUDA) and the reference (vectorised PyTorch: per level, corner
indices, a gather and a weighted sum; autograd scatters the gradient). Inputs are uniform random
points, the worst case for cache reuse (a NeRF batch walks along rays and reuses more).

bytes_moved is the least traffic the work needs: x read, the output written (and its gradient
read back), 2^D rows of F values gathered per point and level, the same rows read-modify-written
by the backward, and the parameter gradient zeroed once. Real traffic is higher: each row read
brings a 64-byte cache line.
"""

from __future__ import annotations

import torch

from ..ops.hashgrid import config, hashgrid_encode
from ..reference.hashgrid import hashgrid_encode as reference
from ..testing.check import available_backends
from .core import Case

NERF = dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16,
            per_level_scale=1.381912879967776)
IMAGE = dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16,
             per_level_scale=1.2599210498948732)   # 16 -> 512 vertices: a 512x512 photo

# (label, D, config, points, mode, tier); the figure is the 2^18-point NeRF row.
_SPECS = [
    ("nerf L16 F2 T2^19", 3, NERF, 1 << 16, "fwd+bwd", "quick"),
    ("nerf L16 F2 T2^19", 3, NERF, 1 << 18, "fwd+bwd", "full"),
    ("nerf L16 F2 T2^19", 3, NERF, 1 << 18, "fwd", "full"),
    ("image L16 F2 T2^19", 2, IMAGE, 1 << 18, "fwd+bwd", "full"),
]


def _runner(fn, mode):
    if mode == "fwd":
        return lambda s: (fn(s["x"], s["params"]),)

    def fwd_bwd(s):
        y = fn(s["x"], s["params"])
        return (y, *torch.autograd.grad(y, (s["params"],), s["gy"]))

    return fwd_bwd


def cases(device: str) -> list[Case]:
    backends = [b for b in available_backends("hashgrid", device) if b != "reference"]
    backend = backends[0] if backends else "reference"
    return [_case(device, backend, *spec) for spec in _SPECS]


def _case(device, backend, label, D, cfg, n, mode, tier) -> Case:
    c = config(D, cfg["n_levels"], cfg["n_features_per_level"], cfg["log2_hashmap_size"],
               cfg["base_resolution"], cfg["per_level_scale"])
    F, L = c.F, len(c.levels)

    def setup():
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.rand(n, D, generator=g, device=device)
        params = (torch.rand(c.n_params, generator=g, device=device) * 2 - 1) * 1e-2
        s = {"x": x, "params": params.requires_grad_(mode != "fwd")}
        if mode != "fwd":
            s["gy"] = torch.randn(n, L * F, generator=g, device=device)
        return s

    fast = lambda x, p: hashgrid_encode(x, p, backend=backend, **cfg)  # noqa: E731
    ref = lambda x, p: reference(x, p, **cfg)  # noqa: E731
    fwd_bytes = 4 * (n * D + n * L * F + n * L * (1 << D) * F)
    bwd_bytes = 4 * (n * D + n * L * F + 2 * n * L * (1 << D) * F + c.n_params)
    return Case(
        op="hashgrid", name=f"{label} {D}-D {mode} {n} pts", device=device, dtype=torch.float32,
        setup=setup, fastgen=_runner(fast, mode), reference=_runner(ref, mode),
        bytes_moved=fwd_bytes + (bwd_bytes if mode != "fwd" else 0), tier=tier, backend=backend,
        items=n, item="pts")

"""Reference multiresolution hash-grid encoding (Instant-NGP), in plain PyTorch.

Source of the math: tiny-cuda-nn's ``GridEncoding`` (BSD-3), distilled in
../shared/reference/nerf.md §1. For level l of L, with D input dims and F features per level:

    scale_l = exp2f(l * log2f(per_level_scale)) * base_resolution - 1     (float32, as tcnn's host)
    res_l   = ceil(scale_l) + 1                                           (vertices per side)
    entries_l = min(next_multiple(min(res_l^D, 2^31 - 1), 8), T)          (Hash; T = 2^log2_size)
    pos = scale_l * x + 0.5 (one fma);  cell = floor(pos);  frac = pos - cell
    index(p) = Σ_d p_d res_l^d   if the level is dense (res_l^D fits the table)
               XOR_d p_d PRIMES[d] (uint32)   otherwise;   then  index % entries_l
    y_l[f] = Σ_{corners c} Π_d (c_d ? w_d : 1 - w_d) · E_l[index(cell + c), f]
             w = frac (Linear), frac²(3 - 2 frac) (Smoothstep); Nearest: E_l[index(cell)]

The flat parameter vector holds the levels one after another, each ``[entries_l, F]`` row-major,
so a tcnn parameter vector loads unchanged. x is clamped to [0, 1] (tcnn does not check; see
fastgen/ops/hashgrid.py), and a NaN coordinate gives NaN outputs. Gradients come from autograd:
the weights carry d/dx = scale_l · dw/dfrac, and Nearest has none, as in tcnn.

Positions are float32 (float64 when params are float64, for gradcheck); the sum over corners is
in that dtype too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["HashGridLevel", "hashgrid_encode", "hashgrid_levels", "coherent_prime_hash",
           "encode_levels", "levels_from_table",
           "INTERPOLATIONS", "GRID_TYPES", "PRIMES"]

PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
INTERPOLATIONS = ("Nearest", "Linear", "Smoothstep")
GRID_TYPES = ("Hash", "Dense", "Tiled")
# Largest per-side resolution whose dense index res^D fits in uint32 (tcnn's MAX_BASES).
_MAX_DENSE_BASE = {1: 0xFFFFFFFF, 2: 0xFFFF, 3: 0x659, 4: 0xFF}
_U32 = 0xFFFFFFFF


class HashGridLevel(NamedTuple):
    """One level of a hash grid: tcnn's float32 ``scale``, ``resolution`` (vertices per side),
    whether the level is ``hashed``, its number of table ``entries`` (rows of F features) and the
    first entry ``offset`` in the flat table."""

    level: int
    scale: float
    resolution: int
    hashed: bool
    entries: int
    offset: int


def _f32(v) -> float:
    return float(np.float32(v))


def level_scale(level: int, per_level_scale: float, base_resolution: int) -> float:
    """tcnn's ``grid_scale`` in float32: exp2f(level * log2f(b)) * N_min - 1.

    Each float32 operation is done in float64 and rounded once, which is exactly the float32
    result for +, * of float32 values and matches a correctly rounded exp2f/log2f.
    """
    lg = _f32(math.log2(_f32(per_level_scale)))
    e = _f32(2.0 ** _f32(level * lg))
    return _f32(_f32(e * base_resolution) - 1.0)


_LEVELS: dict = {}


def hashgrid_levels(n_input_dims: int, n_levels: int, log2_hashmap_size: int,
                    base_resolution: int, per_level_scale: float,
                    grid_type: str = "Hash") -> tuple[HashGridLevel, ...]:
    """The level table tcnn builds in its GridEncoding constructor (sizes rounded up to 8)."""
    key = (n_input_dims, n_levels, log2_hashmap_size, base_resolution, per_level_scale, grid_type)
    if key not in _LEVELS:  # a plain dict rather than lru_cache: torch.compile traces through it
        _LEVELS[key] = _build_levels(*key)
    return _LEVELS[key]


def _build_levels(n_input_dims, n_levels, log2_hashmap_size, base_resolution, per_level_scale,
                  grid_type) -> tuple[HashGridLevel, ...]:
    out, offset = [], 0
    for lvl in range(n_levels):
        scale = level_scale(lvl, per_level_scale, base_resolution)
        res = math.ceil(scale) + 1
        entries = min(res ** n_input_dims, _U32 // 2)
        entries = (entries + 7) // 8 * 8
        if grid_type == "Hash":
            entries = min(entries, 1 << log2_hashmap_size)
        elif grid_type == "Tiled":
            entries = min(entries, base_resolution ** n_input_dims)
        stride = res ** n_input_dims if res <= _MAX_DENSE_BASE[n_input_dims] else _U32
        hashed = grid_type == "Hash" and entries < stride
        out.append(HashGridLevel(lvl, scale, res, hashed, entries, offset))
        offset += entries
    return tuple(out)


def coherent_prime_hash(p: torch.Tensor) -> torch.Tensor:
    """tcnn's ``coherent_prime_hash``: XOR_d p_d * PRIMES[d] mod 2^32. p: [..., D] int64 in
    [0, 2^32); returns int64 in [0, 2^32)."""
    h = torch.zeros(p.shape[:-1], dtype=torch.int64, device=p.device)
    for d in range(p.shape[-1]):
        h = h ^ ((p[..., d] * PRIMES[d]) & _U32)
    return h


def _indices(p: torch.Tensor, lvl: HashGridLevel, use_hash: bool) -> torch.Tensor:
    """Table entries of vertices p: [..., D] int64 (uint32 semantics) -> [...] int64."""
    D = p.shape[-1]
    idx = torch.zeros(p.shape[:-1], dtype=torch.int64, device=p.device)  # tcnn: 0 past MAX_BASES
    if lvl.resolution <= _MAX_DENSE_BASE[D]:
        stride = 1
        for d in range(D):
            idx = (idx + p[..., d] * stride) & _U32
            stride *= lvl.resolution
    else:
        stride = _U32
    if use_hash and lvl.entries < stride:
        idx = coherent_prime_hash(p)
    return idx % lvl.entries


def hashgrid_encode(x: torch.Tensor, params: torch.Tensor, *, n_levels: int,
                    n_features_per_level: int, log2_hashmap_size: int, base_resolution: int,
                    per_level_scale: float, interpolation: str = "Linear",
                    grid_type: str = "Hash") -> torch.Tensor:
    """x: [N, D] in [0, 1] (clamped); params: [n_params] flat tcnn table -> [N, n_levels * F].

    Differentiable (autograd) with respect to x and params.
    """
    levels = hashgrid_levels(x.shape[1], n_levels, log2_hashmap_size, base_resolution,
                             float(per_level_scale), grid_type)
    return encode_levels(x, params, levels, n_features_per_level, interpolation,
                         grid_type == "Hash")


def levels_from_table(offsets, scales) -> tuple[HashGridLevel, ...]:
    """Rebuild the level table from the running entry offsets and float32 scales."""
    return tuple(HashGridLevel(i, s, math.ceil(s) + 1, False, offsets[i + 1] - offsets[i],
                               offsets[i]) for i, s in enumerate(scales))


def encode_levels(x: torch.Tensor, params: torch.Tensor, levels, F: int, interpolation: str,
                  use_hash: bool) -> torch.Tensor:
    """hashgrid_encode on an explicit level table (see :func:`hashgrid_levels`)."""
    N, D = x.shape
    work = torch.float64 if params.dtype == torch.float64 else torch.float32
    nan = torch.isnan(x).any(-1, keepdim=True)
    xc = torch.where(nan, torch.zeros_like(x), x).to(work).clamp(0.0, 1.0)
    table = params.to(work).reshape(-1, F)
    corners = [(k >> d) & 1 for k in range(1 << D) for d in range(D)]
    corners = torch.tensor(corners, device=x.device).reshape(1 << D, D)
    outs = []
    for lvl in levels:
        # fma(scale, x, 0.5) in float32: the float64 product of two float32 values is exact.
        pos = (xc.double() * lvl.scale + 0.5).to(work) if work == torch.float32 else \
            xc * lvl.scale + 0.5
        cell = torch.floor(pos.detach())
        frac = pos - cell
        base = cell.to(torch.int64) & _U32
        emb = table[lvl.offset:lvl.offset + lvl.entries]
        if interpolation == "Nearest":
            y = emb[_indices(base, lvl, use_hash)]
        else:
            w = frac * frac * (3 - 2 * frac) if interpolation == "Smoothstep" else frac
            p = base[:, None, :] + corners[None]                       # [N, 2^D, D]
            wk = torch.where(corners[None].bool(), w[:, None, :], 1 - w[:, None, :])
            weight = wk[..., 0]
            for d in range(1, D):
                weight = weight * wk[..., d]
            vals = emb[_indices(p, lvl, use_hash)]          # [N, 2^D, F]
            y = (weight[..., None] * vals).sum(1)
        outs.append(y)
    out = torch.cat(outs, dim=1) if outs else x.new_zeros((N, 0))
    out = torch.where(nan, torch.full_like(out, float("nan")), out)
    return out.to(params.dtype)

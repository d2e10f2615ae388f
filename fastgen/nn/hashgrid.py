"""``HashGridEncoding``: tiny-cuda-nn's HashGrid encoding as a ``torch.nn.Module``.

    enc = fastgen.nn.HashGridEncoding(3, n_levels=16, log2_hashmap_size=19, per_level_scale=1.3819)
    y = enc(x)                      # x [..., 3] in [0, 1] -> y [..., 32]

    enc = fastgen.nn.HashGridEncoding.from_tcnn_config(3, {"otype": "HashGrid", "n_levels": 16,
                                                           "per_level_scale": 1.3819})
    enc.params.data.copy_(tcnn_module.params)   # same flat layout: same encoding
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy
import torch
from torch import nn

from ..ops._names import check_tcnn_config
from ..ops.hashgrid import GRID_TYPES, INTERPOLATIONS, HashGridLevel, config, hashgrid_encode

__all__ = ["HashGridEncoding"]

# tcnn's encoding "otype" names for grids and the grid type each implies ("Grid": from "type").
_OTYPES = {"grid": None, "hashgrid": "Hash", "densegrid": "Dense", "tiledgrid": "Tiled"}
_TCNN_KEYS = {"otype", "type", "n_levels", "n_features", "n_features_per_level",
              "log2_hashmap_size", "base_resolution", "per_level_scale", "interpolation",
              "stochastic_interpolation", "hash"}


class HashGridEncoding(nn.Module):
    """Multiresolution hash-grid encoding with tiny-cuda-nn's numerics and parameter layout.

    Args:
        n_input_dims: D in {2, 3, 4}.
        n_levels: L in [1, 32].
        n_features_per_level: F in {1, 2, 4, 8}.
        log2_hashmap_size: entries per hashed level = 2^log2_hashmap_size.
        base_resolution: vertices per side of the coarsest level.
        per_level_scale: growth factor b between levels.
        interpolation: "Linear", "Smoothstep" or "Nearest".
        dtype: parameter dtype: float32 (CPU, CUDA), float16 (CUDA), float64 (checks).
        grid_type: "Hash", "Dense" or "Tiled".
        backend: force a backend ("cuda", "cpu", "reference"); None picks the fastest.

    The table ``params`` ([n_params], tcnn's flat order) starts uniform in [-1e-4, 1e-4], as in
    tcnn. Input x: [..., D] in [0, 1] (clamped; see fastgen.ops.hashgrid_encode); output
    [..., n_output_dims] in the parameter dtype.
    """

    def __init__(self, n_input_dims: int = 3, n_levels: int = 16, n_features_per_level: int = 2,
                 log2_hashmap_size: int = 19, base_resolution: int = 16,
                 per_level_scale: float = 2.0, interpolation: str = "Linear",
                 dtype: torch.dtype = torch.float32, *, grid_type: str = "Hash",
                 backend: Optional[str] = None, device=None):
        super().__init__()
        if dtype not in (torch.float16, torch.float32, torch.float64):
            raise TypeError(f"HashGridEncoding: dtype must be float32, float16 or float64, "
                            f"got {dtype}")
        self._cfg = config(n_input_dims, n_levels, n_features_per_level, log2_hashmap_size,
                           base_resolution, per_level_scale, interpolation, grid_type)
        self.n_input_dims = int(n_input_dims)
        self._kwargs = dict(self._cfg.kwargs)
        self.backend = backend
        self.params = nn.Parameter(torch.empty(self._cfg.n_params, dtype=dtype, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """tcnn's initialisation: uniform in [-1e-4, 1e-4]."""
        with torch.no_grad():
            self.params.uniform_(-1e-4, 1e-4)

    @property
    def n_params(self) -> int:
        return self._cfg.n_params

    @property
    def n_output_dims(self) -> int:
        return len(self._cfg.levels) * self._cfg.F

    @property
    def n_levels(self) -> int:
        return len(self._cfg.levels)

    @property
    def n_features_per_level(self) -> int:
        return self._cfg.F

    @property
    def interpolation(self) -> str:
        return INTERPOLATIONS[self._cfg.interpolation]

    @property
    def grid_type(self) -> str:
        return self._kwargs["grid_type"]

    def levels(self) -> list[HashGridLevel]:
        """Per level: scale, resolution, hashed or dense, table entries, first entry."""
        return list(self._cfg.levels)

    def forward(self, x: torch.Tensor, planar: bool = False) -> torch.Tensor:
        """x [..., n_input_dims] -> [..., n_output_dims] (level-major columns), or with planar
        [n_levels, ..., n_features_per_level] (see :func:`fastgen.ops.hashgrid_encode`)."""
        if x.shape[-1:] != (self.n_input_dims,):
            raise ValueError(f"HashGridEncoding: x must be [..., {self.n_input_dims}], got "
                             f"{list(x.shape)}")
        return hashgrid_encode(x, self.params, backend=self.backend, planar=planar,
                               **self._kwargs)

    def extra_repr(self) -> str:
        kw = self._kwargs
        dense = sum(not lv.hashed for lv in self._cfg.levels)
        return (f"n_input_dims={self.n_input_dims}, n_levels={kw['n_levels']}, "
                f"n_features_per_level={kw['n_features_per_level']}, "
                f"log2_hashmap_size={kw['log2_hashmap_size']}, "
                f"base_resolution={kw['base_resolution']}, "
                f"per_level_scale={kw['per_level_scale']:.6g}, "
                f"interpolation={kw['interpolation']!r}, grid_type={kw['grid_type']!r}, "
                f"n_params={self.n_params}, dense_levels={dense}, dtype={self.params.dtype}")

    @classmethod
    def from_tcnn_config(cls, n_input_dims: int, config: Mapping[str, Any],
                         dtype: torch.dtype = torch.float32, **kwargs) -> "HashGridEncoding":
        """Build from a tiny-cuda-nn encoding config dict (``{"otype": "HashGrid", ...}``).

        Accepts tcnn's keys and defaults: otype (HashGrid, DenseGrid, TiledGrid, Grid), type,
        n_levels or n_features, n_features_per_level, log2_hashmap_size, base_resolution,
        per_level_scale, interpolation, stochastic_interpolation (false only) and hash
        (CoherentPrime only). Any other key, or a value fastgen does not implement, raises a
        ValueError naming the key: a config never silently means something else.
        """
        check_tcnn_config(config, _TCNN_KEYS, "grid encodings")
        otype = str(config.get("otype", "Grid"))
        if otype.lower() not in _OTYPES:
            raise ValueError(f"from_tcnn_config: otype must be HashGrid, DenseGrid, TiledGrid "
                             f"or Grid, got {otype!r}")
        grid_type = _OTYPES[otype.lower()] or "Hash"
        if "type" in config:
            t = str(config["type"])
            t = "Tiled" if t.lower() == "tile" else t
            if t.lower() not in [g.lower() for g in GRID_TYPES]:
                raise ValueError(f"from_tcnn_config: type must be Hash, Dense or Tiled, got "
                                 f"{config['type']!r}")
            grid_type = t
        F = config.get("n_features_per_level", 2)
        if "n_features" in config:
            if "n_levels" in config:
                raise ValueError("from_tcnn_config: give n_features or n_levels, not both "
                                 "(one determines the other)")
            n_features = config["n_features"]
            if not isinstance(n_features, int) or n_features < 1 or n_features % F:
                raise ValueError(f"from_tcnn_config: n_features must be a positive multiple of "
                                 f"n_features_per_level={F}, got {n_features!r}")
            n_levels = n_features // F
        else:
            n_levels = config.get("n_levels", 16)
        if config.get("stochastic_interpolation", False):
            raise ValueError("from_tcnn_config: stochastic_interpolation=true is not "
                             "implemented (its backward sends the gradient to one random corner)")
        if str(config.get("hash", "CoherentPrime")).lower() != "coherentprime":
            raise ValueError(f"from_tcnn_config: hash must be CoherentPrime (tcnn's default), "
                             f"got {config['hash']!r}")
        if "per_level_scale" in config:
            per_level_scale = config["per_level_scale"]
        elif grid_type.lower() == "dense" and isinstance(n_levels, int) and n_levels > 1:
            # tcnn's Dense default spans 256 vertices: exp(log(256 / base) / (L - 1)) in float32
            base = config.get("base_resolution", 16)
            f32 = numpy.float32
            per_level_scale = float(numpy.exp(numpy.log(f32(256.0) / f32(base))
                                              / f32(n_levels - 1)))
        else:
            per_level_scale = 2.0
        if isinstance(per_level_scale, float) and not math.isfinite(per_level_scale):
            raise ValueError(f"from_tcnn_config: per_level_scale must be finite, got "
                             f"{per_level_scale}")
        return cls(n_input_dims, n_levels=n_levels, n_features_per_level=F,
                   log2_hashmap_size=config.get("log2_hashmap_size", 19),
                   base_resolution=config.get("base_resolution", 16),
                   per_level_scale=per_level_scale,
                   interpolation=config.get("interpolation", "Linear"), dtype=dtype,
                   grid_type=grid_type, **kwargs)

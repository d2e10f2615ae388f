"""hashgrid_encode: multiresolution hash-grid encoding (Instant-NGP), tiny-cuda-nn's numerics.

    y[n, l*F + f] = Σ_corners w · E_l[index_l(corner), f]    (math: fastgen/reference/hashgrid.py)

Files of this op family:

    fastgen/ops/hashgrid.py        this file: public function, checks, backends, fake kernels,
                                   autograd
    fastgen/reference/hashgrid.py  the math in plain PyTorch; the level table (hashgrid_levels)
    csrc/common/hashgrid.h         per point, per level logic shared by the C++ launchers
    csrc/cpu/hashgrid.cpp          backend ``cpu``  (at::parallel_for; level-parallel backward)
    csrc/cuda/hashgrid.cu          backend ``cuda`` (one level per blockIdx.y; float atomics)
    fastgen/nn/hashgrid.py         HashGridEncoding module, tcnn config dicts
    tests/ops/test_hashgrid.py     tests; fastgen/bench/hashgrid.py benchmark cases

Parameter layout and numerics match tiny-cuda-nn's ``HashGrid``: float32 per-level scale
computed on the host as tcnn does, the 0.5 offset, dense levels while the 8-rounded vertex count
fits in 2^log2_hashmap_size entries and the coherent-prime hash beyond, one flat parameter vector
level after level. So a tcnn parameter vector loads unchanged and gives the same encoding.

Behaviour outside the spec, chosen and documented:

* x outside [0, 1] is **clamped** to [0, 1] (tcnn does not check and reads wrapped-around
  entries; clamping keeps the result defined for any finite x). The gradient to a clamped
  coordinate is 0, like ``torch.clamp``'s.
* A NaN coordinate makes that point's outputs NaN; its parameter gradient is 0 and its input
  gradient NaN. Nothing else is affected.
* The parameter gradient is deterministic on CPU (one writer per level). On CUDA it uses float
  atomics, like tcnn; under ``torch.use_deterministic_algorithms(True)`` it switches to a
  corner list reduced by ``index_add_``, which PyTorch then runs deterministically.
* Second-order gradients (for example an eikonal loss on ``dy/dx``) are computed through the
  reference's autograd graph when the backward itself is differentiated (``create_graph=True``):
  correct, and as fast as the reference.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple, Optional

import torch

from .. import _ext, registry
from ._names import tcnn_choice
from ..reference import hashgrid as _ref
from ..reference.hashgrid import GRID_TYPES, INTERPOLATIONS, HashGridLevel, hashgrid_levels

__all__ = ["hashgrid_encode", "hashgrid_levels", "hashgrid_n_params", "HashGridLevel",
           "INTERPOLATIONS", "GRID_TYPES"]


class _Config(NamedTuple):
    levels: tuple[HashGridLevel, ...]
    F: int
    interpolation: int              # index into INTERPOLATIONS (the C++ enum)
    use_hash: bool
    offsets: tuple[int, ...]
    scales: tuple[float, ...]
    kwargs: tuple                   # the reference's keyword arguments, as items

    @property
    def n_params(self) -> int:
        return self.offsets[-1] * self.F


def _int_arg(name: str, value, lo: int, hi: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"hashgrid_encode: {name} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"hashgrid_encode: {name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _named(name: str, value, choices: tuple[str, ...]) -> str:
    return tcnn_choice("hashgrid_encode", name, value, choices)


def config(n_input_dims: int, n_levels: int, n_features_per_level: int, log2_hashmap_size: int,
           base_resolution: int, per_level_scale: float, interpolation: str = "Linear",
           grid_type: str = "Hash") -> _Config:
    """Validate a grid configuration and build its level table (cached)."""
    D = _int_arg("n_input_dims (x.shape[-1])", n_input_dims, 2, 4)
    L = _int_arg("n_levels", n_levels, 1, 32)
    F = n_features_per_level
    if F not in (1, 2, 4, 8) or isinstance(F, bool):
        raise ValueError(f"hashgrid_encode: n_features_per_level must be 1, 2, 4 or 8, got {F!r}")
    log2 = _int_arg("log2_hashmap_size", log2_hashmap_size, 1, 31)
    base = _int_arg("base_resolution", base_resolution, 1, 1 << 24)
    if (not isinstance(per_level_scale, numbers.Real) or isinstance(per_level_scale, bool)
            or not math.isfinite(per_level_scale) or per_level_scale <= 0):
        raise ValueError("hashgrid_encode: per_level_scale must be a finite number > 0, got "
                         f"{per_level_scale!r}")
    interp = _named("interpolation", interpolation, INTERPOLATIONS)
    gtype = _named("grid_type", grid_type, GRID_TYPES)
    # The finest scale is about base * b^(L-1); refuse it before building levels (ceil(inf)).
    if L > 1 and (L - 1) * math.log2(per_level_scale) + math.log2(base) >= 32:
        raise ValueError(f"hashgrid_encode: the finest level's scale (base_resolution {base} x "
                         f"per_level_scale {per_level_scale}^{L - 1}) exceeds 2^31")
    levels = hashgrid_levels(D, L, log2, base, float(per_level_scale), gtype)
    if any(lv.scale < 0 for lv in levels):
        raise ValueError(f"hashgrid_encode: per_level_scale {per_level_scale} and base_resolution "
                         f"{base} give a negative level scale (base_resolution * "
                         f"per_level_scale^l - 1 < 0); raise base_resolution or per_level_scale")
    top = levels[-1]
    if not math.isfinite(top.scale) or top.scale >= 2.0 ** 31:
        raise ValueError(f"hashgrid_encode: the finest level's scale {top.scale} (base_resolution "
                         f"{base} x per_level_scale {per_level_scale}^{L - 1}) exceeds 2^31")
    total = top.offset + top.entries
    if total > 0xFFFFFFFF:
        raise ValueError(f"hashgrid_encode: the table needs {total} entries, more than tcnn's "
                         "uint32 offsets allow; lower log2_hashmap_size or n_levels (or use Hash)")
    return _Config(levels, int(F), INTERPOLATIONS.index(interp), gtype == "Hash",
                   tuple(lv.offset for lv in levels) + (total,),
                   tuple(lv.scale for lv in levels),
                   (("n_levels", L), ("n_features_per_level", int(F)),
                    ("log2_hashmap_size", log2), ("base_resolution", base),
                    ("per_level_scale", float(per_level_scale)), ("interpolation", interp),
                    ("grid_type", gtype)))


def hashgrid_n_params(n_input_dims: int = 3, n_levels: int = 16, n_features_per_level: int = 2,
                      log2_hashmap_size: int = 19, base_resolution: int = 16,
                      per_level_scale: float = 2.0, grid_type: str = "Hash") -> int:
    """Length of the flat parameter vector (tcnn's ``n_params``)."""
    return config(n_input_dims, n_levels, n_features_per_level, log2_hashmap_size,
                  base_resolution, per_level_scale, "Linear", grid_type).n_params


def hashgrid_encode(x: torch.Tensor, params: torch.Tensor, *, n_levels: int = 16,
                    n_features_per_level: int = 2, log2_hashmap_size: int = 19,
                    base_resolution: int = 16, per_level_scale: float = 2.0,
                    interpolation: str = "Linear", grid_type: str = "Hash",
                    backend: Optional[str] = None, planar: bool = False) -> torch.Tensor:
    """Encode points with a multiresolution hash grid, exactly as tiny-cuda-nn's HashGrid.

    Args:
        x: [..., D] floating tensor, D in {2, 3, 4}, coordinates in [0, 1] (clamped; NaN
            propagates to the point's outputs). Computed in float32 (float64 with float64
            params); gradients flow back to x in its dtype.
        params: [n_params] flat table (``hashgrid_n_params``), float32 (CPU and CUDA), float16
            (CUDA) or float64 (both, for verification), on x's device.
        n_levels: L in [1, 32].
        n_features_per_level: F in {1, 2, 4, 8}.
        log2_hashmap_size: entries per hashed level = 2^log2_hashmap_size, in [1, 31].
        base_resolution: vertices per side of the coarsest level.
        per_level_scale: resolution growth factor b between levels (Instant-NGP:
            exp(log(N_max / N_min) / (L - 1))).
        interpolation: "Linear", "Smoothstep" or "Nearest" (no gradient to x).
        grid_type: "Hash" (default), "Dense" or "Tiled" (tcnn's grid types).
        backend: "cuda", "cpu" or "reference"; default: FASTGEN_BACKEND, else the fastest
            available (see fastgen.registry).
        planar: return the encoding as [L, ..., F] (``out[l, ..., f]`` = column l * F + f of
            the default layout): the layout the cpu kernels compute, returned without the
            transposed copy; :func:`fastgen.ops.fused_mlp_mse` reads it as is (``planar=True``).
            Other backends permute their [..., L * F] output (a view for 1-D leading dims,
            else a copy).

    Returns:
        [..., L * F] in params' dtype, level-major (column l * F + f); [L, ..., F] if planar.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"hashgrid_encode: x must be a floating-point torch.Tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.ndim < 1:
        raise ValueError("hashgrid_encode: x must be [..., D] with D in {2, 3, 4}, got a scalar")
    cfg = config(x.shape[-1], n_levels, n_features_per_level, log2_hashmap_size,
                 base_resolution, per_level_scale, interpolation, grid_type)
    _check_params(params, x, cfg)
    work = torch.float64 if params.dtype == torch.float64 else torch.float32
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(work).contiguous()
    args = (x2, params.contiguous(), cfg)
    chosen = _OP.select(x.device.type, args, backend)
    L, F = len(cfg.levels), cfg.F
    if not planar:
        return chosen.fn(*args).reshape(*lead, L * F)
    if chosen.name == "cpu":
        out = torch.ops.fastgen.hashgrid_fwd_planar(x2, params.contiguous(), *_op_args(cfg))
    else:
        out = chosen.fn(*args).reshape(-1, L, F).transpose(0, 1)
    return out.reshape(L, *lead, F)


def _check_params(params, x, cfg: _Config) -> None:
    if not isinstance(params, torch.Tensor):
        raise TypeError(f"hashgrid_encode: params must be a torch.Tensor, got "
                        f"{type(params).__name__}")
    if params.ndim != 1 or params.numel() != cfg.n_params:
        raise ValueError(f"hashgrid_encode: params must be 1-D with {cfg.n_params} elements for "
                         f"this configuration (table entries x n_features_per_level), got shape "
                         f"{list(params.shape)}")
    if params.dtype not in (torch.float16, torch.float32, torch.float64):
        raise TypeError(f"hashgrid_encode: params must be float32, float16 (CUDA) or float64, "
                        f"got {params.dtype}")
    if params.device != x.device:
        raise ValueError(f"hashgrid_encode: params are on {params.device} but x is on "
                         f"{x.device}; both must be on one device")


# --- C++ ops: fake kernels and autograd ----------------------------------------------------------

def _op_args(cfg: _Config) -> tuple:
    return (list(cfg.offsets), list(cfg.scales), cfg.F, cfg.interpolation, cfg.use_hash)


def _fake_fwd(x, params, offsets, scales, F, interpolation, use_hash):
    return params.new_empty((x.shape[0], len(scales) * F))


def _fake_fwd_planar(x, params, offsets, scales, F, interpolation, use_hash):
    return params.new_empty((len(scales), x.shape[0], F))


def _fake_bwd(grad_out, x, params, offsets, scales, F, interpolation, use_hash, need_params,
              need_x):
    return (params.new_empty(params.shape if need_params else (0,)),
            x.new_empty(x.shape if need_x else (0,)))


def _fake_corners(x, offsets, scales, level, interpolation, use_hash):
    c = 1 if interpolation == 0 else 1 << x.shape[1]
    return x.new_empty((x.shape[0], c), dtype=torch.int64), x.new_empty((x.shape[0], c))


def _setup_fwd(ctx, inputs, output):
    x, params, *rest = inputs
    ctx.save_for_backward(x, params)
    ctx.rest = rest


def _backward_fwd(ctx, grad_out):
    x, params = ctx.saved_tensors
    offsets, scales, F, interpolation, use_hash = ctx.rest
    need_x, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if grad_out.dim() == 3 and (torch.is_grad_enabled() or x.is_cuda):
        # hashgrid_fwd_planar's [L, N, F]: only the CPU kernel reads it as is
        grad_out = grad_out.transpose(0, 1).reshape(x.shape[0], -1)
    if torch.is_grad_enabled():  # create_graph=True: differentiate through the reference
        return _reference_grads(grad_out, x, params, ctx.rest, need_x, need_p) + (None,) * 5
    grad_out = grad_out.to(params.dtype).contiguous()
    deterministic_scatter = need_p and x.is_cuda and torch.are_deterministic_algorithms_enabled()
    gp, gx = torch.ops.fastgen.hashgrid_bwd(grad_out, x, params, offsets, scales, F,
                                            interpolation, use_hash,
                                            need_p and not deterministic_scatter, need_x)
    if deterministic_scatter:
        gp = params_grad_by_corners(grad_out, x, params, offsets, scales, F, interpolation,
                                    use_hash)
    return (gx if need_x else None, gp if need_p else None) + (None,) * 5


def params_grad_by_corners(grad_out, x, params, offsets, scales, F, interpolation, use_hash):
    """Parameter gradient as an explicit corner list reduced with ``index_add_`` (level by
    level, to bound memory): deterministic wherever PyTorch's index_add_ is (CPU always, CUDA
    under ``torch.use_deterministic_algorithms(True)``)."""
    acc = torch.float64 if params.dtype == torch.float64 else torch.float32
    grad = torch.zeros(params.numel() // F, F, dtype=acc, device=params.device)
    g = grad_out.to(acc)
    # A NaN point has weight 0 on its corners, but 0 * NaN gradient would still be NaN.
    g = torch.where(torch.isnan(x).any(-1, keepdim=True), torch.zeros_like(g), g)
    for level in range(len(scales)):
        index, weight = torch.ops.fastgen.hashgrid_corners(x, offsets, scales, level,
                                                           interpolation, use_hash)
        contrib = weight.to(acc)[:, :, None] * g[:, None, level * F:(level + 1) * F]
        grad.index_add_(0, index.reshape(-1), contrib.reshape(-1, F))
    return grad.reshape(-1).to(params.dtype)


def _reference_grads(grad_out, x, params, rest, need_x, need_p):
    offsets, scales, F, interpolation, use_hash = rest
    levels = _ref.levels_from_table(offsets, scales)
    inputs = [t for t, need in ((x, need_x), (params, need_p)) if need]
    with torch.enable_grad():
        y = _ref.encode_levels(x, params, levels, F, INTERPOLATIONS[interpolation], use_hash)
        grads = list(torch.autograd.grad(y, inputs, grad_out, create_graph=True,
                                         allow_unused=True))
    gx = grads.pop(0) if need_x else None
    gp = grads.pop(0) if need_p else None
    # Unused inputs (x under Nearest interpolation) get zeros, as the kernels give.
    if need_x and gx is None:
        gx = torch.zeros_like(x)
    if need_p and gp is None:
        gp = torch.zeros_like(params)
    if gx is not None:  # the reference's NaN points carry no gradient; the kernels' carry NaN
        gx = torch.where(torch.isnan(x).any(-1, keepdim=True), torch.full_like(gx, math.nan), gx)
    return gx, gp


if _ext.has_op("hashgrid_fwd"):
    torch.library.register_fake("fastgen::hashgrid_fwd")(_fake_fwd)
    torch.library.register_fake("fastgen::hashgrid_bwd")(_fake_bwd)
    torch.library.register_fake("fastgen::hashgrid_corners")(_fake_corners)
    torch.library.register_autograd("fastgen::hashgrid_fwd", _backward_fwd,
                                    setup_context=_setup_fwd)
if _ext.has_op("hashgrid_fwd_planar"):
    torch.library.register_fake("fastgen::hashgrid_fwd_planar")(_fake_fwd_planar)
    torch.library.register_autograd("fastgen::hashgrid_fwd_planar", _backward_fwd,
                                    setup_context=_setup_fwd)


# --- backends ----------------------------------------------------------------------------------

def _run_native(x, params, cfg: _Config):
    return torch.ops.fastgen.hashgrid_fwd(x, params, *_op_args(cfg))


def _run_reference(x, params, cfg: _Config):
    return _ref.hashgrid_encode(x, params, **dict(cfg.kwargs))




def _check_cpu(x, params, cfg) -> Optional[str]:
    if params.dtype == torch.float16:
        return "float16 params run on CUDA only (CPU: float32 or float64)"
    return None


_available = functools.partial(_ext.native_available, "hashgrid_fwd")
_OP = registry.register("hashgrid", [
    registry.Backend("cuda", _run_native, devices=("cuda",), available=_available,
                     summary="csrc/cuda/hashgrid.cu"),
    registry.Backend("cpu", _run_native, devices=("cpu",), available=_available,
                     check=_check_cpu, summary="csrc/cpu/hashgrid.cpp"),
    registry.Backend("reference", _run_reference, summary="fastgen/reference/hashgrid.py"),
])

"""Volume rendering over packed or batched samples: fused compositing with a closed-form backward.

    fastgen/ops/volrend.py         this file: public functions (nerfacc's names and layouts),
                                   checks, packing, backends, autograd
    fastgen/reference/volrend.py   the math in PyTorch (exclusive sum-scan, index_add)
    csrc/common/volrend.h          per-ray forward and backward shared by the C++ launchers
    csrc/cpu/volrend.cpp           backend ``cpu`` (one ray per loop iteration, at::parallel_for)
    csrc/cuda/volrend.cu           backend ``cuda`` (one thread per ray; compiled, not yet run)
    tests/ops/test_volrend.py

Layouts, as nerfacc 0.5: **packed** flat [n_samples] tensors with either ``ray_indices``
([n_samples] int, sorted, plus ``n_rays``) or ``packed_info`` ([n_rays, 2] = (start, count));
or **batched** [n_rays, n_samples] tensors (no indices). One fused pass per ray computes weights,
transmittance, color, opacity and depth; the backward is one reverse pass per ray using the
closed form of ../shared/reference/nerf.md §4 (no autograd graph over the samples). t_starts and
t_ends receive no gradient (they come from the sampler).
"""

from __future__ import annotations

import functools
import numbers
from typing import Callable, Optional

import torch

from .. import _ext, registry
from ..reference import volrend as _ref

__all__ = ["volume_render", "rendering", "render_weight_from_density",
           "render_weight_from_alpha", "render_transmittance_from_density",
           "render_transmittance_from_alpha", "accumulate_along_rays", "pack_info"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def pack_info(ray_indices: torch.Tensor, n_rays: Optional[int] = None) -> torch.Tensor:
    """Sorted ray_indices [n] -> packed_info [n_rays, 2] int64 (start, count) per ray."""
    _check_indices("pack_info", ray_indices)
    if n_rays is None:
        n_rays = int(ray_indices.max()) + 1 if ray_indices.numel() else 0
    counts = torch.bincount(ray_indices.long(), minlength=n_rays)
    if counts.numel() > n_rays:
        raise ValueError(f"pack_info: ray_indices hold a ray >= n_rays ({n_rays})")
    return torch.stack([counts.cumsum(0) - counts, counts], -1)


def volume_render(sigmas: torch.Tensor, rgbs: torch.Tensor, t_starts: torch.Tensor,
                  t_ends: torch.Tensor, *, ray_indices: Optional[torch.Tensor] = None,
                  n_rays: Optional[int] = None, packed_info: Optional[torch.Tensor] = None,
                  early_stop_eps: float = 0.0, backend: Optional[str] = None):
    """Fused compositing: (color, opacity, depth, weights, transmittance).

    Args:
        sigmas, t_starts, t_ends: [n] packed or [n_rays, S] batched; densities >= 0.
        rgbs: [n, C] or [n_rays, S, C] per-sample values to composite (C >= 0).
        ray_indices + n_rays, or packed_info: the packing (packed layout only).
        early_stop_eps: > 0 stops a ray at its first sample with transmittance < eps (that
            sample and the rest: weight 0, transmittance 0, no gradient).
        backend: "cpu" or "reference"; default: FASTGEN_BACKEND, else the best available.

    Returns:
        color [n_rays, C], opacity [n_rays], depth [n_rays], weights and transmittance like
        sigmas. Gradients flow to sigmas and rgbs.
    """
    name = "volume_render"
    sig, rgb, ts, te, starts, counts, shape = _prepare(name, sigmas, rgbs, t_starts, t_ends,
                                                       ray_indices, n_rays, packed_info)
    if not isinstance(early_stop_eps, numbers.Real) or not 0 <= early_stop_eps < 1:
        raise ValueError(f"{name}: early_stop_eps must be in [0, 1), got {early_stop_eps!r}")
    args = (sig, rgb, ts, te, starts, counts, float(early_stop_eps))
    color, opacity, depth, w, trans = _OP.select(sig.device.type, args, backend).fn(*args)
    return color, opacity, depth, w.reshape(shape), trans.reshape(shape)


def render_weight_from_density(t_starts: torch.Tensor, t_ends: torch.Tensor,
                               sigmas: torch.Tensor, packed_info: Optional[torch.Tensor] = None,
                               ray_indices: Optional[torch.Tensor] = None,
                               n_rays: Optional[int] = None):
    """nerfacc's ``render_weight_from_density``: (weights, transmittance, alphas), each like
    sigmas ([n] packed or [n_rays, S] batched)."""
    rgbs = sigmas.new_zeros(*sigmas.shape, 0)
    _, _, _, w, trans = volume_render(sigmas, rgbs, t_starts, t_ends, ray_indices=ray_indices,
                                      n_rays=n_rays, packed_info=packed_info)
    return w, trans, -torch.expm1(-sigmas * (t_ends - t_starts))


def render_transmittance_from_density(t_starts, t_ends, sigmas, packed_info=None,
                                      ray_indices=None, n_rays=None) -> torch.Tensor:
    """Transmittance T_i = exp(−Σ_{j<i} σ_j δ_j), like sigmas."""
    return render_weight_from_density(t_starts, t_ends, sigmas, packed_info, ray_indices,
                                      n_rays)[1]


def _alpha_as_density(alphas):
    # α = 1 − exp(−σ·1): σ = −log(1 − α); α is kept below 1 so that σ stays finite
    if alphas.numel() and not torch.compiler.is_compiling() \
            and bool(((alphas < 0) | (alphas > 1) | alphas.isnan()).any()):
        raise ValueError("render_weight_from_alpha: alphas must be in [0, 1]")
    a = alphas.clamp(max=1 - torch.finfo(alphas.dtype).eps)
    return -torch.log1p(-a), torch.zeros_like(a), torch.ones_like(a)


def render_weight_from_alpha(alphas: torch.Tensor, packed_info: Optional[torch.Tensor] = None,
                             ray_indices: Optional[torch.Tensor] = None,
                             n_rays: Optional[int] = None):
    """nerfacc's ``render_weight_from_alpha``: (weights, transmittance) with T_i = Π_{j<i}
    (1 − α_j), w_i = T_i α_i (α = 1 is taken as 1 − float eps)."""
    sig, ts, te = _alpha_as_density(alphas)
    rgbs = alphas.new_zeros(*alphas.shape, 0)
    _, _, _, w, trans = volume_render(sig, rgbs, ts, te, ray_indices=ray_indices, n_rays=n_rays,
                                      packed_info=packed_info)
    return w, trans


def render_transmittance_from_alpha(alphas, packed_info=None, ray_indices=None, n_rays=None):
    """Transmittance T_i = Π_{j<i} (1 − α_j), like alphas."""
    return render_weight_from_alpha(alphas, packed_info, ray_indices, n_rays)[1]


def accumulate_along_rays(weights: torch.Tensor, values: Optional[torch.Tensor] = None,
                          ray_indices: Optional[torch.Tensor] = None,
                          n_rays: Optional[int] = None) -> torch.Tensor:
    """Σ_i w_i v_i per ray: packed weights [n] (with ray_indices, n_rays) or batched
    [n_rays, S]; values [n, D] / [n_rays, S, D], or None for Σ w_i. Returns [n_rays, D]
    ([n_rays, 1] without values)."""
    src = weights[..., None] if values is None else weights[..., None] * values
    if weights.ndim == 2 and ray_indices is None:
        return src.sum(-2)
    if ray_indices is None or n_rays is None:
        raise ValueError("accumulate_along_rays: packed weights need ray_indices and n_rays")
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices.long(), src)


def rendering(t_starts: torch.Tensor, t_ends: torch.Tensor,
              ray_indices: Optional[torch.Tensor] = None, n_rays: Optional[int] = None,
              rgb_sigma_fn: Optional[Callable] = None, rgb_alpha_fn: Optional[Callable] = None,
              render_bkgd: Optional[torch.Tensor] = None, early_stop_eps: float = 0.0):
    """nerfacc's ``rendering``: evaluate the fields on the samples and composite.

    Args:
        t_starts, t_ends: [n] packed (with ray_indices, n_rays) or [n_rays, S] batched.
        rgb_sigma_fn: (t_starts, t_ends, ray_indices) -> (rgbs [n, 3], sigmas [n]) (batched:
            [n_rays, S, 3], [n_rays, S]); or rgb_alpha_fn returning alphas instead of sigmas.
        render_bkgd: [3] or [n_rays, 3] background, added as (1 − opacity) · bkgd.
        early_stop_eps: as :func:`volume_render` (density fields only).

    Returns:
        colors [n_rays, 3], opacities [n_rays, 1], depths [n_rays, 1], extras (weights,
        alphas, trans, sigmas or alphas, rgbs).
    """
    if (rgb_sigma_fn is None) == (rgb_alpha_fn is None):
        raise ValueError("rendering: pass exactly one of rgb_sigma_fn and rgb_alpha_fn")
    batched = t_starts.ndim == 2 and ray_indices is None
    if not batched and (ray_indices is None or n_rays is None):
        raise ValueError("rendering: packed samples need ray_indices and n_rays")
    if batched:
        n_rays = t_starts.shape[0]
    fn = rgb_sigma_fn or rgb_alpha_fn
    rgbs, field = fn(t_starts, t_ends, ray_indices)
    kind = "sigmas" if rgb_sigma_fn is not None else "alphas"
    if not isinstance(rgbs, torch.Tensor) or rgbs.shape[:-1] != t_starts.shape \
            or rgbs.ndim != t_starts.ndim + 1:
        raise ValueError(f"rendering: the field's rgbs must be {[*t_starts.shape, 'C']}, got "
                         f"{list(rgbs.shape) if isinstance(rgbs, torch.Tensor) else rgbs!r}")
    if not isinstance(field, torch.Tensor) or field.shape != t_starts.shape:
        raise ValueError(f"rendering: the field's {kind} must be {list(t_starts.shape)} (like "
                         f"t_starts), got "
                         f"{list(field.shape) if isinstance(field, torch.Tensor) else field!r}")
    if kind == "sigmas":
        sig, ts, te = field, t_starts, t_ends
        alphas = None
    else:
        sig, ts, te = _alpha_as_density(field)
        alphas = field
    kw = dict(ray_indices=None if batched else ray_indices, n_rays=None if batched else n_rays)
    color, opacity, depth, w, trans = volume_render(sig, rgbs, ts, te,
                                                    early_stop_eps=early_stop_eps, **kw)
    if kind == "alphas":  # depth from the real sample positions
        depth = accumulate_along_rays(w, ((t_starts + t_ends) * 0.5)[..., None],
                                      None if batched else ray_indices, n_rays)[:, 0]
    if alphas is None:
        alphas = -torch.expm1(-sig * (t_ends - t_starts))
    if render_bkgd is not None:
        color = color + render_bkgd * (1.0 - opacity[:, None])
    extras = {"weights": w, "alphas": alphas, "trans": trans, kind: field, "rgbs": rgbs}
    return color, opacity[:, None], depth[:, None], extras


# --- checks and packing ------------------------------------------------------------------------

def _check_indices(fn, ray_indices):
    if not isinstance(ray_indices, torch.Tensor) or ray_indices.ndim != 1 \
            or ray_indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{fn}: ray_indices must be a 1-D int32/int64 tensor")
    if ray_indices.numel() and not torch.compiler.is_compiling():
        if bool((ray_indices[1:] < ray_indices[:-1]).any()) or int(ray_indices.min()) < 0:
            raise ValueError(f"{fn}: ray_indices must be sorted and >= 0 (each ray's samples "
                             "contiguous, as nerfacc's packed layout)")


def _prepare(fn, sigmas, rgbs, ts, te, ray_indices, n_rays, packed_info):
    for arg, t in (("sigmas", sigmas), ("rgbs", rgbs), ("t_starts", ts), ("t_ends", te)):
        if not isinstance(t, torch.Tensor) or t.dtype not in _FLOATS:
            raise TypeError(f"{fn}: {arg} must be a floating-point tensor")
        if t.dtype != sigmas.dtype or t.device != sigmas.device:
            raise TypeError(f"{fn}: {arg} is {t.dtype} on {t.device}; sigmas is {sigmas.dtype} "
                            f"on {sigmas.device} (one dtype and device expected)")
    if ts.shape != sigmas.shape or te.shape != sigmas.shape:
        raise ValueError(f"{fn}: t_starts, t_ends and sigmas must have one shape, got "
                         f"{list(ts.shape)}, {list(te.shape)}, {list(sigmas.shape)}")
    if rgbs.shape[:-1] != sigmas.shape or rgbs.ndim != sigmas.ndim + 1:
        raise ValueError(f"{fn}: rgbs must be sigmas' shape + [C], got {list(rgbs.shape)} for "
                         f"sigmas {list(sigmas.shape)}")
    shape = sigmas.shape
    packed = ray_indices is not None or packed_info is not None
    if sigmas.ndim == 2 and not packed:  # batched [n_rays, S]
        r, s = shape
        starts = torch.arange(r, device=sigmas.device) * s
        counts = torch.full((r,), s, dtype=torch.int64, device=sigmas.device)
    elif sigmas.ndim == 1:
        if packed_info is not None:
            if not isinstance(packed_info, torch.Tensor) or packed_info.ndim != 2 \
                    or packed_info.shape[1] != 2 or packed_info.is_floating_point():
                raise TypeError(f"{fn}: packed_info must be an int tensor [n_rays, 2]")
            info = packed_info.to(sigmas.device)
            starts, counts = info[:, 0].long(), info[:, 1].long()
            # the kernels give each sample to exactly one ray: the ranges must tile [0, n)
            if not torch.compiler.is_compiling() and (
                    int(counts.sum()) != shape[0] or bool((counts < 0).any())
                    or not torch.equal(starts, counts.cumsum(0) - counts)):
                raise ValueError(f"{fn}: packed_info ranges (start, count) must tile [0, "
                                 f"{shape[0]}) in order: each ray starting where the previous "
                                 "ends, counts >= 0, summing to n_samples")
        elif ray_indices is not None:
            if ray_indices.shape != shape:
                raise ValueError(f"{fn}: ray_indices must be like sigmas [{shape[0]}]")
            if n_rays is None:
                raise ValueError(f"{fn}: packed samples with ray_indices need n_rays")
            info = pack_info(ray_indices.to(sigmas.device), n_rays)
            starts, counts = info[:, 0], info[:, 1]
        else:
            raise ValueError(f"{fn}: packed [n] samples need ray_indices (+ n_rays) or "
                             "packed_info; batched samples are [n_rays, n_samples]")
    else:
        raise ValueError(f"{fn}: sigmas must be [n] (packed) or [n_rays, S] (batched), got "
                         f"{list(shape)}")
    c = rgbs.shape[-1]
    flat = [t.reshape(-1) for t in (sigmas, ts, te)]
    return flat[0], rgbs.reshape(flat[0].numel(), c), flat[1], flat[2], starts, counts, shape


# --- backends and autograd ---------------------------------------------------------------------

def _run_reference(sig, rgb, ts, te, starts, counts, eps):
    return _ref.volrend(sig, rgb, ts, te, starts, counts, eps)


def _run_cpu(sig, rgb, ts, te, starts, counts, eps):  # the CPU or CUDA kernel, by dispatch
    return torch.ops.fastgen.volrend_fwd(sig, rgb, ts, te, starts, counts, eps)


def _fake_fwd(sig, rgb, ts, te, starts, counts, eps):
    r, c = starts.shape[0], rgb.shape[1]
    return (rgb.new_empty(r, c), sig.new_empty(r), sig.new_empty(r), torch.empty_like(sig),
            torch.empty_like(sig))


def _fake_bwd(g_color, g_opacity, g_depth, g_w, g_trans, rgb, ts, te, starts, counts, w, trans,
              eps):
    return torch.empty_like(w), torch.empty_like(rgb)


def _setup(ctx, inputs, output):
    sig, rgb, ts, te, starts, counts, eps = inputs
    _, _, _, w, trans = output
    ctx.save_for_backward(rgb, ts, te, starts, counts, w, trans)
    ctx.eps = eps


def _backward(ctx, g_color, g_opacity, g_depth, g_w, g_trans):
    rgb, ts, te, starts, counts, w, trans = ctx.saved_tensors
    r = starts.shape[0]
    g_color = g_color if g_color is not None else rgb.new_zeros(r, rgb.shape[1])
    g_opacity = g_opacity if g_opacity is not None else w.new_zeros(r)
    g_depth = g_depth if g_depth is not None else w.new_zeros(r)
    g_sig, g_rgb = torch.ops.fastgen.volrend_bwd(g_color, g_opacity, g_depth, g_w, g_trans, rgb,
                                                 ts, te, starts, counts, w, trans, ctx.eps)
    return g_sig, g_rgb, None, None, None, None, None




def _check_native(sig, rgb, ts, te, starts, counts, eps) -> Optional[str]:
    if sig.dtype not in (torch.float32, torch.float64):
        return f"{sig.dtype} (float32 and float64)"
    if ts.requires_grad or te.requires_grad:
        return "t_starts / t_ends require grad (the fused kernel gives them none)"
    return None


if _ext.has_op("volrend_fwd"):
    torch.library.register_fake("fastgen::volrend_fwd")(_fake_fwd)
    torch.library.register_fake("fastgen::volrend_bwd")(_fake_bwd)
    torch.library.register_autograd("fastgen::volrend_fwd", _backward, setup_context=_setup)

_available = functools.partial(_ext.native_available, "volrend_fwd")
_OP = registry.register("volrend", [
    registry.Backend("cuda", _run_cpu, devices=("cuda",), available=_available,
                     check=_check_native, summary="csrc/cuda/volrend.cu (one thread per ray)"),
    registry.Backend("cpu", _run_cpu, devices=("cpu",), available=_available,
                     check=_check_native, summary="csrc/cpu/volrend.cpp"),
    registry.Backend("reference", _run_reference, summary="fastgen/reference/volrend.py"),
])

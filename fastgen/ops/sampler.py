"""sampler_step / cfg_combine: the fused diffusion-sampler step.

    m    = u + s·(c − u)                 classifier-free guidance (when guidance_scale is given)
    x̂0   = clip(p_x·x + p_m·m + p_z·z)   prediction-type conversion (math: reference/sampler.py)
    out  = c_x·x + c_0·x̂0 + c_m·m + c_1·h1 + c_2·h2 + c_z·z

One read of each input and one write of each output, in float32 whatever the storage dtype, no
host synchronisation (the coefficients are host floats the scheduler computes from its tables):
the schedulers in :mod:`fastgen.diffusion` are thin layers that compute the coefficients and
call this op once per step.

Files of this op family:

    fastgen/ops/sampler.py         this file: public functions, checks, backends, fake kernel
    fastgen/reference/sampler.py   the math in plain PyTorch (StepCoeffs)
    csrc/cpu/sampler.{h,cpp}       backend ``cpu``    (at::parallel_for, at::vec); plain eager
                                   calls reach it through fastgen._C (csrc/module.cpp)
    kernels/sampler.py             backend ``triton`` (GPU; CPU under TRITON_INTERPRET=1)
    fastgen/diffusion/             diffusers-compatible schedulers built on it
    tests/ops/test_sampler.py      tests; fastgen/bench/sampler.py benchmark cases

The fused kernels are not differentiable; a call whose tensors require grad (with grad mode on)
runs the reference, which is.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Optional, Sequence, Union

import torch

from .. import _ext, registry
from ..reference import sampler as _ref
from ..reference.sampler import StepCoeffs
from ._eager import plain_eager

__all__ = ["sampler_step", "cfg_combine", "StepCoeffs"]

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def sampler_step(sample: torch.Tensor, model_output: torch.Tensor, *,
                 c_sample: float = 0.0, c_x0: float = 0.0, c_model: float = 0.0,
                 history: Sequence[torch.Tensor] = (), c_history: Sequence[float] = (),
                 noise: Optional[torch.Tensor] = None, c_noise: float = 0.0,
                 x0_sample: float = 0.0, x0_model: float = 1.0, x0_noise: float = 0.0,
                 clip_x0: Optional[float] = None,
                 uncond: Optional[torch.Tensor] = None, guidance_scale: Optional[float] = None,
                 return_x0: bool = False, backend: Optional[str] = None
                 ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One fused sampler step: ``out = c_sample·x + c_x0·x̂0 + c_model·m + Σ c_history[i]·h_i
    + c_noise·z`` with ``x̂0 = clip(x0_sample·x + x0_model·m + x0_noise·z, ±clip_x0)``.

    Args:
        sample: x, any shape, float16/bfloat16/float32/float64.
        model_output: m, like sample; with ``guidance_scale`` and no ``uncond``, the batched
            classifier-free-guidance output [2·B, ...] ordered (uncond, cond) as diffusers'
            ``noise_pred.chunk(2)``.
        c_sample, c_x0, c_model, c_noise: output coefficients (host floats, finite).
        history: up to two tensors like sample (previous x̂0, a saved sample, ...).
        c_history: their coefficients, one per tensor.
        noise: z, like sample (needed when c_noise or x0_noise is non-zero).
        x0_sample, x0_model, x0_noise: the x̂0 prologue (prediction-type conversion).
        clip_x0: clamp x̂0 to [-clip_x0, clip_x0] (diffusers' clip_sample_range), or None.
        uncond: the unconditional model output for classifier-free guidance, like sample.
        guidance_scale: s in ``m = u + s·(c − u)``; None: no guidance.
        return_x0: also return x̂0 (diffusers' pred_original_sample).
        backend: "triton", "cpu" or "reference"; default: FASTGEN_BACKEND, else the fastest
            available.

    Returns:
        out in sample's dtype and layout (contiguous), or (out, x̂0) with ``return_x0``.
    """
    k, clip, tensors = _check(sample, model_output, c_sample, c_x0, c_model, history, c_history,
                              noise, c_noise, x0_sample, x0_model, x0_noise, clip_x0, uncond,
                              guidance_scale)
    x, m, u, h1, h2, z = tensors
    args = (x, m, u, h1, h2, z, k, clip, bool(return_x0))
    out, x0 = _OP.select(x.device.type, args, backend).fn(*args)
    return (out, x0) if return_x0 else out


def sampler_step_unchecked(x: torch.Tensor, m: torch.Tensor, u: Optional[torch.Tensor],
                           h1: Optional[torch.Tensor], h2: Optional[torch.Tensor],
                           z: Optional[torch.Tensor], coeffs: Sequence[float],
                           clip: Optional[float], want_x0: bool
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """sampler_step for callers that already validated their tensors (the schedulers of
    fastgen.diffusion): all of sample's shape, dtype and device, the ten coefficients (a
    :class:`StepCoeffs` or a list in its order) finite floats. Skips the Python argument checks
    (the C++ op still checks) and caches the backend choice per device type and FASTGEN_BACKEND
    value; returns (out, x̂0 or an empty tensor)."""
    if _grad_on() and (x.requires_grad or m.requires_grad or (
            (u is not None or h1 is not None or h2 is not None or z is not None)
            and _any_grad(u, h1, h2, z))):
        fn = _run_reference  # differentiable
    else:
        key = ("cpu" if x.is_cpu else x.device.type, registry.env_token())
        fn = _CHOICE.get(key)
        if fn is None:
            fn = _CHOICE[key] = _OP.select(x.device.type, (x, m, u, h1, h2, z, coeffs, clip,
                                                           want_x0)).fn
    return fn(x, m, u, h1, h2, z, coeffs, clip, want_x0)


_CHOICE: dict = {}
_grad_on = torch.is_grad_enabled


def _any_grad(*ts) -> bool:
    for t in ts:
        if t is not None and t.requires_grad:
            return True
    return False


def cfg_combine(uncond: torch.Tensor, cond: Optional[torch.Tensor] = None, *,
                guidance_scale: float, backend: Optional[str] = None) -> torch.Tensor:
    """Classifier-free guidance ``u + s·(c − u)`` in one pass, computed in float32.

    ``cfg_combine(u, c, guidance_scale=s)``, or ``cfg_combine(batched, guidance_scale=s)`` with
    the [2·B, ...] output of a batched model call ordered (uncond, cond).
    """
    if cond is None:
        return sampler_step(_half(uncond, "uncond")[1], uncond, c_model=1.0,
                            guidance_scale=guidance_scale, backend=backend)
    return sampler_step(cond, cond, c_model=1.0, uncond=uncond, guidance_scale=guidance_scale,
                        backend=backend)


def _half(t, name):
    if not isinstance(t, torch.Tensor) or t.ndim == 0 or t.shape[0] % 2:
        raise ValueError(f"cfg_combine: {name} must be a batched [2·B, ...] tensor (uncond, cond) "
                         f"when cond is not given, got "
                         f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    return t.chunk(2)


def _scalar(name: str, v, index: Optional[int] = None) -> float:
    if type(v) is float and v - v == 0.0:  # fast path (finite float): a step checks ten of these
        return v
    if index is not None:
        name = f"{name}[{index}]"
    if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(f"sampler_step: {name} must be a finite number, got {v!r}")
    return float(v)


def _tensor_like(name: str, t, x: torch.Tensor, index: Optional[int] = None) -> torch.Tensor:
    if (type(t) is torch.Tensor and t.shape == x.shape and t.dtype == x.dtype
            and t.device == x.device):
        return t.contiguous()
    if index is not None:
        name = f"{name}[{index}]"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"sampler_step: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != x.shape:
        raise ValueError(f"sampler_step: {name} has shape {list(t.shape)} but sample has "
                         f"{list(x.shape)}; they must match")
    if t.dtype != x.dtype:
        raise TypeError(f"sampler_step: {name} is {t.dtype} but sample is {x.dtype}; they must "
                        f"match")
    if t.device != x.device:
        raise ValueError(f"sampler_step: {name} is on {t.device} but sample on {x.device}")
    return t.contiguous()


def _check(x, m, c_sample, c_x0, c_model, history, c_history, noise, c_noise, x0_sample,
           x0_model, x0_noise, clip_x0, uncond, guidance_scale):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"sampler_step: sample must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"sampler_step: sample must be float16, bfloat16, float32 or float64, got "
                        f"{x.dtype}")
    history = list(history) if history is not None else []
    c_history = list(c_history) if c_history is not None else []
    if len(history) > 2:
        raise ValueError(f"sampler_step: at most 2 history tensors, got {len(history)}")
    if len(c_history) != len(history):
        raise ValueError(f"sampler_step: c_history needs one coefficient per history tensor "
                         f"({len(history)}), got {len(c_history)}")
    u = None
    if guidance_scale is not None:
        s = _scalar("guidance_scale", guidance_scale)
        if uncond is None:
            batched = (isinstance(m, torch.Tensor) and m.ndim >= 1 and x.ndim >= 1
                       and m.shape[0] == 2 * x.shape[0])
            if not batched:
                raise ValueError(f"sampler_step: with guidance_scale and no uncond, "
                                 f"model_output must be the batched [2·B, ...] output (uncond, "
                                 f"cond) for sample [B, ...] = {list(x.shape)}, got "
                                 f"{list(m.shape) if isinstance(m, torch.Tensor) else m!r}")
            u, m = m.chunk(2)
            u = _tensor_like("model_output", u, x)  # the halves of a strided output: contiguous
        else:
            u = _tensor_like("uncond", uncond, x)
    elif uncond is not None:
        raise ValueError("sampler_step: uncond given without guidance_scale")
    else:
        s = 1.0
    m = _tensor_like("model_output", m, x)
    ch = [0.0, 0.0]
    for i, c in enumerate(c_history):
        ch[i] = _scalar("c_history", c, i)
    k = StepCoeffs(s, _scalar("x0_sample", x0_sample), _scalar("x0_model", x0_model),
                   _scalar("x0_noise", x0_noise), _scalar("c_sample", c_sample),
                   _scalar("c_x0", c_x0), _scalar("c_model", c_model), ch[0], ch[1],
                   _scalar("c_noise", c_noise))
    if noise is None and (k.c_z != 0.0 or k.p_z != 0.0):
        raise ValueError("sampler_step: c_noise / x0_noise are non-zero but noise is None")
    z = _tensor_like("noise", noise, x) if noise is not None else None
    hs = [_tensor_like("history", h, x, i) for i, h in enumerate(history)] + [None] * 2
    clip = None
    if clip_x0 is not None:
        clip = _scalar("clip_x0", clip_x0)
        if clip < 0:
            raise ValueError(f"sampler_step: clip_x0 must be >= 0 (or None), got {clip}")
    return k, clip, (x.contiguous(), m, u, hs[0], hs[1], z)


# --- backends ----------------------------------------------------------------------------------

def _run_reference(x, m, u, h1, h2, z, k, clip, want_x0):
    if not isinstance(k, StepCoeffs):
        k = StepCoeffs(*k)
    # contiguous x: contiguous outputs, as the kernels give
    return _ref.sampler_step(x.contiguous(), m.contiguous(), k, uncond=u, history=(h1, h2),
                             noise=z, clip=clip)


def _run_cpu(x, m, u, h1, h2, z, k, clip, want_x0):
    k = k if type(k) is list else list(k)
    direct = _direct_cpu()
    if direct is not None and _plain_call(x, m, u, h1, h2, z):
        return direct(x, m, u, h1, h2, z, k, clip, want_x0)  # makes x, m contiguous itself
    return _cpu_op()(x.contiguous(), m.contiguous(), u, h1, h2, z, k, clip, want_x0)


_Tensor = torch.Tensor
_function_mode_on = torch._C._is_torch_function_mode_enabled


def _plain_call(x, m, u, h1, h2, z) -> bool:
    """A plain eager call (``plain_eager``: no torch.compile or torch.jit trace, no dispatch
    mode, no functorch transform), with plain tensors (no subclass) and no torch-function mode.
    Such a call can skip the dispatcher (tensors with a negative / conjugate / zero-tensor bit
    are sent back to it by the C++ side)."""
    return (type(x) is _Tensor and type(m) is _Tensor
            and (u is None or type(u) is _Tensor) and (h1 is None or type(h1) is _Tensor)
            and (h2 is None or type(h2) is _Tensor) and (z is None or type(z) is _Tensor)
            and not _function_mode_on() and plain_eager())


@functools.lru_cache(maxsize=None)
def _cpu_op():
    return torch.ops.fastgen.sampler_step  # looked up once (the namespace lookup costs ~0.5 µs)


@functools.lru_cache(maxsize=None)
def _direct_cpu():
    """The CPU kernel without the dispatcher (fastgen._C.sampler_step_eager), or None when the
    extension lacks it. ~1 µs of argument handling where torch.ops takes ~4 µs; callers check
    :func:`_plain_call` first."""
    module = _ext.load()
    return getattr(module, "sampler_step_eager", None) if module is not None else None


def _run_triton(x, m, u, h1, h2, z, k, clip, want_x0):
    return torch.ops.fastgen.sampler_step_triton(x.contiguous(), m.contiguous(), u, h1, h2, z,
                                                 list(k), clip, want_x0)


def _fake(x, m, u, h1, h2, z, coeffs, clip, want_x0):
    return torch.empty_like(x), (torch.empty_like(x) if want_x0 else x.new_empty((0,)))


@torch.library.custom_op("fastgen::sampler_step_triton", mutates_args=())
def _sampler_step_triton(x: torch.Tensor, m: torch.Tensor, u: Optional[torch.Tensor],
                         h1: Optional[torch.Tensor], h2: Optional[torch.Tensor],
                         z: Optional[torch.Tensor], coeffs: list[float], clip: Optional[float],
                         want_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from ..kernels import sampler as kernels  # imports triton: only when this backend runs

    return kernels.sampler_step(x, m, u, h1, h2, z, coeffs, clip, want_x0)


torch.library.register_fake("fastgen::sampler_step_triton")(_fake)
if _ext.has_op("sampler_step"):
    torch.library.register_fake("fastgen::sampler_step")(_fake)


def _no_grad(x, m, u, h1, h2, z, k, clip, want_x0) -> Optional[str]:
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (x, m, u, h1, h2, z)):
        return "inputs require grad (the fused kernels are not differentiable; the reference is)"
    return None




_available = functools.partial(_ext.native_available, "sampler_step")
_OP = registry.register("sampler_step", [
    registry.Backend("triton", _run_triton, devices=("cuda", "cpu"),
                     available=registry.triton_available, check=_no_grad,
                     explicit_only_on=("cpu",), summary="kernels/sampler.py"),
    registry.Backend("cpu", _run_cpu, devices=("cpu",), available=_available,
                     check=_no_grad, summary="csrc/cpu/sampler.cpp"),
    registry.Backend("reference", _run_reference, summary="fastgen/reference/sampler.py"),
])

"""bias_act: fused bias + activation + gain + clamp (StyleGAN2's ``bias_act``).

    y = clamp(act(x + b[c]) * gain, -clamp, +clamp)       c = index along ``dim``

This is fastgen's pattern op: every later op copies its layout.

    fastgen/ops/bias_act.py        this file: public function, argument checks, backend table,
                                   fake kernels, autograd (first and second order)
    fastgen/reference/bias_act.py  the math in plain PyTorch, activation table, derivatives
    csrc/cpu/bias_act.cpp          backend ``cpu``: C++ (one pass, at::vec, at::parallel_for)
    kernels/bias_act.py            backend ``triton``: GPU (and CPU under TRITON_INTERPRET=1)
    tests/ops/test_bias_act.py     tests; fastgen/bench/bias_act.py benchmark cases

Ops in ``torch.ops.fastgen``: ``bias_act`` / ``bias_act_bwd`` (C++, schemas in
csrc/registration.cpp) and ``bias_act_triton`` / ``bias_act_bwd_triton`` (declared here with
``torch.library.custom_op`` rather than ``triton_op``: a ``triton_op``'s fake implementation runs
the Python body on fake tensors, and the Triton interpreter, which CI uses on CPU, then tries to
read their storage; with ``custom_op`` + ``register_fake`` the same op works on GPU, under the
interpreter, in opcheck and under torch.compile, at the cost of Inductor not seeing inside). The
backward recomputes ``x + b`` instead of saving the activation: one extra read of x, and the
derivative and the clamp gate are evaluated at exactly the forward's point (the gate is inclusive,
``|y| <= clamp``, like torch.clamp's derivative). Second-order gradients (R1 and path-length
regularisation) are composed from the same backward op plus ``act''`` in PyTorch.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

from .. import _ext, registry
from ..reference.bias_act import ACTIVATIONS as _SPECS
from ..reference.bias_act import act_second_derivative, bias_shape, resolve_params
from ..reference.bias_act import bias_act as _reference

__all__ = ["bias_act", "ACTIVATIONS"]

ACTIVATIONS = tuple(_SPECS)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1,
             act: str = "linear", alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None, *, backend: Optional[str] = None) -> torch.Tensor:
    """Fused ``clamp(act(x + b) * gain, -clamp, clamp)`` with first- and second-order gradients.

    Args:
        x: [..., C, ...] float16/bfloat16/float32/float64 tensor, C at ``dim``; any layout
            (the output keeps x's memory format when x is dense).
        b: [C] bias with x's dtype and device, or None.
        dim: the dimension of x that b runs along (negative counts from the end).
        act: one of linear, relu, lrelu, tanh, sigmoid, elu, selu, softplus, swish, gelu.
        alpha: lrelu's negative slope (default 0.2); other activations take no alpha.
        gain: output scale (default per activation: sqrt(2) for relu, lrelu, swish; else 1).
        clamp: clamp the output to [-clamp, clamp] (finite, >= 0), or None.
        backend: "triton", "cpu" or "reference"; default: FASTGEN_BACKEND, else the fastest
            available (see fastgen.registry).

    Returns:
        y: tensor like x.
    """
    dim, alpha, gain, clamp = check_args(x, b, dim, act, alpha, gain, clamp)
    args = (x, b, dim, act, alpha, gain, clamp)
    return _OP.select(x.device.type, args, backend).fn(*args)


def check_args(x, b, dim, act, alpha, gain, clamp):
    """Validate bias_act's arguments; returns (dim, alpha, gain, clamp) normalised.

    Errors name the argument and what was expected. ``dim`` is checked only when b is given (it
    says where b goes; without b it is unused, as in StyleGAN2's op).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"bias_act: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"bias_act: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if not isinstance(act, str) or act not in _SPECS:
        raise ValueError(f"bias_act: act must be one of {', '.join(ACTIVATIONS)}; got {act!r}")
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool):
        raise TypeError(f"bias_act: dim must be an int, got {type(dim).__name__}")
    if b is not None:
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"bias_act: b must be a torch.Tensor or None, got {type(b).__name__}")
        if not -x.ndim <= dim < x.ndim:
            raise ValueError(f"bias_act: dim={dim} is out of range for x with {x.ndim} dims")
        dim = dim % x.ndim
        if b.ndim != 1 or b.shape[0] != x.shape[dim]:
            raise ValueError(f"bias_act: b must have shape [{x.shape[dim]}] (x.shape[{dim}]), "
                             f"got {list(b.shape)}")
        if b.dtype != x.dtype:
            raise TypeError(f"bias_act: b must have x's dtype {x.dtype}, got {b.dtype}")
        if b.device != x.device:
            raise ValueError(f"bias_act: b is on {b.device} but x is on {x.device}; "
                             "both must be on one device")
    if alpha is not None and act != "lrelu":
        raise ValueError(f"bias_act: alpha applies only to act='lrelu', not {act!r}")
    for name, value in (("alpha", alpha), ("gain", gain), ("clamp", clamp)):
        if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool)
                                  or not math.isfinite(value)):
            raise ValueError(f"bias_act: {name} must be a finite number or None, got {value!r}")
    if clamp is not None and clamp < 0:
        raise ValueError(f"bias_act: clamp must be >= 0 (or None for no clamp), got {clamp}")
    return (int(dim), *resolve_params(act, alpha, gain, clamp))


# --- Triton ops (Python-side schemas) --------------------------------------------------------

@torch.library.custom_op("fastgen::bias_act_triton", mutates_args=())
def _bias_act_triton(x: torch.Tensor, b: Optional[torch.Tensor], dim: int, act: str,
                     alpha: float, gain: float, clamp: Optional[float]) -> torch.Tensor:
    from ..kernels import bias_act as kernels  # imports triton: only when this backend runs

    return kernels.bias_act_fwd(x, b, dim, act, alpha, gain, clamp)


@torch.library.custom_op("fastgen::bias_act_bwd_triton", mutates_args=())
def _bias_act_bwd_triton(grad_y: torch.Tensor, x: torch.Tensor, b: Optional[torch.Tensor],
                         dim: int, act: str, alpha: float, gain: float, clamp: Optional[float]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    from ..kernels import bias_act as kernels

    return kernels.bias_act_bwd(grad_y, x, b, dim, act, alpha, gain, clamp)


# --- fake kernels and autograd, shared by the C++ and Triton pairs ---------------------------

def _fake_fwd(x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x)  # the kernels allocate exactly this (dense, x's memory format)


def _fake_bwd(grad_y, x, b, dim, act, alpha, gain, clamp):
    return torch.empty_like(x), (b.new_empty(b.shape) if b is not None else x.new_empty((0,)))


def _register_pair(fwd, bwd) -> None:
    """Fake kernels for both ops; autograd fwd -> bwd -> (bwd + act'') for the pair."""

    def setup_fwd(ctx, inputs, output):
        x, b, *cfg = inputs
        ctx.save_for_backward(x, b)
        ctx.cfg = cfg

    def backward_fwd(ctx, grad_y):
        x, b = ctx.saved_tensors
        grad_x, grad_b = bwd(grad_y, x, b, *ctx.cfg)
        return (grad_x, grad_b if b is not None else None, None, None, None, None, None)

    def setup_bwd(ctx, inputs, output):
        grad_y, x, b, *cfg = inputs
        ctx.save_for_backward(grad_y, x, b)
        ctx.cfg = cfg

    def backward_bwd(ctx, gg_x, gg_b):
        # grad_x = grad_y * gain * act'(u) * gate(u) and grad_b = sum(grad_x), so with
        # G = gg_x + gg_b[c]:  d/dgrad_y = bwd(G),  d/dx = G * grad_y * gain * act''(u) * gate(u).
        grad_y, x, b = ctx.saved_tensors
        dim, act, alpha, gain, clamp = ctx.cfg
        g = gg_x
        if b is not None and gg_b is not None:
            g = g + gg_b.reshape(bias_shape(x, dim))
        d_grad_y = bwd(g.to(x.dtype), x, b, *ctx.cfg)[0]
        d_x = d_b = None
        if _SPECS[act].curved:
            work = torch.float64 if x.dtype == torch.float64 else torch.float32
            u = x.to(work) if b is None else x.to(work) + b.to(work).reshape(bias_shape(x, dim))
            d = g.to(work) * grad_y.to(work) * (gain * act_second_derivative(u, act, alpha))
            if clamp is not None:
                y = _SPECS[act].fn(u, alpha) * gain
                d = torch.where(y.abs() <= clamp, d, torch.zeros_like(d))
            d_x = d.to(x.dtype)
            if b is not None:
                others = [i for i in range(x.ndim) if i != dim]
                d_b = (d.sum(others) if others else d).to(b.dtype)  # ([] would sum all)
        return (d_grad_y, d_x, d_b, None, None, None, None, None)

    torch.library.register_fake(fwd)(_fake_fwd)
    torch.library.register_fake(bwd)(_fake_bwd)
    torch.library.register_autograd(fwd, backward_fwd, setup_context=setup_fwd)
    torch.library.register_autograd(bwd, backward_bwd, setup_context=setup_bwd)


_register_pair(_bias_act_triton, _bias_act_bwd_triton)
if _ext.has_op("bias_act"):
    _register_pair(torch.ops.fastgen.bias_act.default, torch.ops.fastgen.bias_act_bwd.default)


# --- backends ----------------------------------------------------------------------------------


def _cpu_available(device_type: str) -> Optional[str]:
    if _ext.has_op("bias_act"):
        return None
    return _ext.unavailable_reason() or "fastgen._C has no bias_act (rebuild the extension)"


_OP = registry.register("bias_act", [
    registry.Backend("triton", lambda *a: torch.ops.fastgen.bias_act_triton(*a),
                     devices=("cuda", "cpu"), available=registry.triton_available,
                     explicit_only_on=("cpu",), summary="kernels/bias_act.py"),
    registry.Backend("cpu", lambda *a: torch.ops.fastgen.bias_act(*a), devices=("cpu",),
                     available=_cpu_available, summary="csrc/cpu/bias_act.cpp"),
    registry.Backend("reference", _reference, summary="fastgen/reference/bias_act.py"),
])

"""Run an op against its reference: forward and backward, on every backend that runs here.

The helper every op test calls. For one set of arguments it runs

    kernel     fn(*args, backend=name)      under :func:`poisoned` (unwritten outputs are NaN)
    truth      ref(*args in float64)
    baseline   ref(*args in their own dtype)   PyTorch's own rounding error

and checks the kernel against the truth, for the outputs and, given ``grad_argnums``, for the
gradients under a fresh random upstream gradient:

* float16 / bfloat16: error within k x the baseline's error (plus a floor of a few ulps), the
  FlashAttention criterion — low-precision error is systematic, so the ratio is meaningful;
* float32 / float64: within the dtype's (atol, rtol) from the tolerance table, with the atol raised
  to rtol x max|truth| (a norm-wise relative error). Here both errors are a few random roundings,
  so their ratio would make tests flaky; and a reduction that happens to land near zero (a bias
  gradient summing thousands of terms) must be judged at the scale of its tensor, not of itself.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence

import torch

from .. import registry
from .compare import assert_close, check_error_ratio, max_abs_error, poisoned
from .tolerances import ERROR_RATIO_K, tolerance

__all__ = ["available_backends", "check_against_reference", "devices", "recorded_ops"]


def devices() -> list[str]:
    """Device types to test on: cpu, plus cuda when a CUDA device is present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def available_backends(op: str, device_type: str) -> list[str]:
    """Backends of ``op`` that run on ``device_type`` here when asked for by name."""
    o = registry.get(op)
    return [b.name for b in o.backends if o.reason(b, device_type, explicit=True) is None]


def _compare(actual, truth, baseline, *, k, op, backend, name) -> tuple[float, float]:
    if actual.dtype in (torch.float16, torch.bfloat16):
        return check_error_ratio(actual, truth, baseline, k=k, op=op, backend=backend, name=name)
    tol = tolerance(actual.dtype, op, backend)
    scale = float(truth.detach().abs().nan_to_num(0.0, 0.0, 0.0).max()) if truth.numel() else 0.0
    assert_close(actual, truth, atol=tol.atol + tol.rtol * scale, rtol=tol.rtol, name=name)
    return max_abs_error(actual, truth), max_abs_error(baseline, truth)


def _as_tuple(y):
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _prepare(args, grad_argnums, cast):
    out = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            a = cast(a.detach())
            if i in grad_argnums:
                a.requires_grad_(True)
        out.append(a)
    return out


def check_against_reference(fn: Callable, ref: Callable, args: Sequence, kwargs: Optional[dict]
                            = None, *, op: str, backend: str, grad_argnums: Sequence[int] = (),
                            k: float = ERROR_RATIO_K, generator: Optional[torch.Generator] = None,
                            grad_offset: float = 0.0) -> dict:
    """Compare ``fn(*args, **kwargs, backend=backend)`` with ``ref``; returns the errors.

    The upstream gradient is Normal(grad_offset, 1). Ops whose backward reduces (a bias gradient
    sums every element of its channel) pass grad_offset=1: the sums then do not cancel to near
    zero, so a norm-wise tolerance measures the kernel rather than the luck of the draw.

    Raises AssertionError (with a report) on a wrong shape, dtype or value. Returns
    ``{name: (error, pytorch_error)}`` for each output and gradient.
    """
    kwargs = dict(kwargs or {})
    grad_argnums = tuple(grad_argnums)
    a_kernel = _prepare(args, grad_argnums, lambda t: t)
    a_truth = _prepare(args, grad_argnums, lambda t: t.to(torch.float64)
                       if t.is_floating_point() else t.clone())
    a_base = _prepare(args, grad_argnums, lambda t: t.clone())

    with poisoned():
        y = _as_tuple(fn(*a_kernel, **kwargs, backend=backend))
    y_truth = _as_tuple(ref(*a_truth, **kwargs))
    y_base = _as_tuple(ref(*a_base, **kwargs))
    errors = {}
    for i, (yk, yt, yb) in enumerate(zip(y, y_truth, y_base)):
        name = f"{op}[{backend}] output {i}"
        if yk.shape != yb.shape or yk.dtype != yb.dtype or yk.device != yb.device:
            raise AssertionError(f"{name}: got {tuple(yk.shape)} {yk.dtype} on {yk.device}, "
                                 f"expected {tuple(yb.shape)} {yb.dtype} on {yb.device}")
        errors[name] = _compare(yk, yt, yb, k=k, op=op, backend=backend, name=name)

    if grad_argnums:
        ups = [(torch.randn(t.shape, generator=generator, dtype=torch.float64) + grad_offset).to(t)
               for t in y_base]
        inputs = lambda a: [a[i] for i in grad_argnums]  # noqa: E731
        with poisoned():
            g_kernel = torch.autograd.grad(y, inputs(a_kernel), ups)
        g_truth = torch.autograd.grad(y_truth, inputs(a_truth), [u.double() for u in ups])
        g_base = torch.autograd.grad(y_base, inputs(a_base), ups)
        for i, gk, gt, gb in zip(grad_argnums, g_kernel, g_truth, g_base):
            name = f"{op}[{backend}] grad of argument {i}"
            if gk.shape != gb.shape or gk.dtype != gb.dtype:
                raise AssertionError(f"{name}: got {tuple(gk.shape)} {gk.dtype}, expected "
                                     f"{tuple(gb.shape)} {gb.dtype}")
            errors[name] = _compare(gk, gt, gb, k=k, op=op, backend=backend, name=name)
    return errors


@contextlib.contextmanager
def recorded_ops() -> Iterator[list[str]]:
    """Inside the block, the name of every operator that reaches the dispatcher is appended to
    the yielded list (a TorchDispatchMode; the operators still run): to test that a call goes
    through ``torch.ops`` or that it does not."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names: list[str] = []

    class _Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.append(str(func))
            return func(*args, **(kwargs or {}))

    with _Record():
        yield names

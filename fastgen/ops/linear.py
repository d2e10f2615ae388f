"""decode_linear: ``F.linear`` for the few rows of a decode step, at memory bandwidth on CPU.

A decode step multiplies one token per sequence (M = batch rows) by every weight matrix of the
model, so the step is bound by reading the weights. csrc/cpu/linear.cpp streams each weight once:
register tiles of 4 weight rows x up to 4 rows of x (2 x 8 for 5-16 rows), the next tile
prefetched while this one's FMAs run. Measured (BENCHMARKS.md, `fastgen bench --full --filter
decode_linear`): on a 2-core Xeon, where ATen reaches the memory bandwidth for one row,
parity there (0.87-1.14x ``F.linear``) and 1.1-2.5x for eight rows (1.61-1.68x over a whole
Llama step's 85 projections); the earlier one-row-at-a-time version ran 2.2-2.7x ``F.linear``
for one row on a 2-core AMD EPYC whose ATen GEMM read small-M weights at half the bandwidth. Calls
whose rows of x exceed 48 KiB go to ``F.linear``.

    fastgen/ops/linear.py        this file: checks, backends
    csrc/cpu/linear.cpp          backend ``cpu`` (float32 / float64, M <= 16, M·K·4 <= 48 KiB)
    fastgen/reference/linear.py  ``torch.nn.functional.linear`` (every other call: GPUs, large M,
                                 half precision, gradients)
    tests/ops/test_linear.py

Each output is one fixed-order dot product, so results do not depend on the thread count; they
differ from ATen's by summation order (relative 1e-6 in float32).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from .. import _ext, registry
from ..reference import linear as _ref

__all__ = ["decode_linear", "MAX_ROWS", "suits_kernel"]

MAX_ROWS = 16  # beyond this the product is no longer bound by the weight read
_X_BYTES = 48 * 1024  # the rows of x must stay in L1/L2 beside the streamed weight


def suits_kernel(rows: int, k: int, itemsize: int = 4) -> bool:
    """Whether the CPU kernel is the right tool for ``rows`` rows of length ``k``: at most
    MAX_ROWS rows whose bytes stay in L1/L2 beside the weight stream (eight rows of 1536
    floats, 48 KiB: 1.08-1.19x F.linear on the 2-core Xeon; 16 rows of 576: 1.10x)."""
    return rows <= MAX_ROWS and rows * k * itemsize <= _X_BYTES


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *,
                  backend: Optional[str] = None) -> torch.Tensor:
    """``torch.nn.functional.linear(x, weight, bias)``, fast for few rows on CPU.

    Args:
        x: [..., K]; weight: [N, K]; bias: [N] or None; one dtype and device.
        backend: "cpu" or "reference"; default: ``F.linear`` for calls :func:`suits_kernel`
            rejects (it is faster there), else FASTGEN_BACKEND, else "cpu" where it can run
            (CPU, float32/float64, at most MAX_ROWS rows, no gradient), else the reference.

    Returns:
        [..., N] in x's dtype.
    """
    name = "decode_linear"
    for arg, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != x.dtype or t.device != x.device:
            raise TypeError(f"{name}: {arg} is {t.dtype} on {t.device}; x is {x.dtype} on "
                            f"{x.device} (one dtype and device expected)")
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{name}: x [..., K] and weight [N, K] expected, got {list(x.shape)} "
                         f"and {list(weight.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"{name}: bias must be [N] = [{weight.shape[0]}], got "
                         f"{list(bias.shape)}")
    rows = 1
    for n in x.shape[:-1]:
        rows *= n
    x2 = x.reshape(rows, x.shape[-1])  # (-1 is ambiguous when K = 0)
    if x2.shape[1] == 0 or (backend is None
                            and not suits_kernel(x2.shape[0], x2.shape[1], x2.element_size())):
        return _ref.linear(x2, weight, bias).reshape(*x.shape[:-1], weight.shape[0])
    args = (x2, weight, bias)
    out = _OP.select(x.device.type, args, backend).fn(*args)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _run_cpu(x, w, b):
    return torch.ops.fastgen.decode_linear(x, w, b)


def _fake(x, w, b):
    return x.new_empty(x.shape[0], w.shape[0])


if _ext.has_op("decode_linear"):
    torch.library.register_fake("fastgen::decode_linear")(_fake)


def _check_cpu(x, w, b) -> Optional[str]:
    if x.dtype not in (torch.float32, torch.float64):
        return f"{x.dtype} (float32 and float64 only)"
    if x.shape[0] > MAX_ROWS:
        return f"{x.shape[0]} rows (at most {MAX_ROWS}: beyond, ATen's GEMM is the right tool)"
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w, b)):
        return "inputs require grad (inference kernel)"
    return None




_available = functools.partial(_ext.native_available, "decode_linear")
_OP = registry.register("decode_linear", [
    registry.Backend("cpu", _run_cpu, devices=("cpu",), available=_available,
                     check=_check_cpu, summary="csrc/cpu/linear.cpp"),
    registry.Backend("reference", _ref.linear, summary="torch.nn.functional.linear"),
])

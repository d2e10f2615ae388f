"""Tolerances for comparing kernels with references, each with the reason it is what it is.

Two criteria, used together:

* :func:`tolerance` — an (atol, rtol) pair per dtype, with per-op and per-backend overrides. Used
  for float32/float64 results and for exact-ish paths.
* the error ratio (:func:`fastgen.testing.check_error_ratio`) — a low-precision kernel's error
  against a float64 reference must be within ``k`` times PyTorch's own error in the same dtype
  (FlashAttention's criterion). This scales with the op instead of hiding bugs in a loose atol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["Tolerance", "tolerance", "DEFAULT_TOLERANCES", "OVERRIDES", "ERROR_RATIO_K",
           "ULP_FLOOR"]


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    reason: str


DEFAULT_TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: Tolerance(1e-12, 1e-10, "float64 kernels differ from the reference only in "
                             "operation order and libm vs SLEEF rounding (a few ulp of 2.2e-16)"),
    torch.float32: Tolerance(1e-6, 1e-5, "one fp32 rounding is 6e-8 relative; transcendental "
                             "functions (SLEEF, Triton exp/log builds) add a few ulp"),
    torch.float16: Tolerance(1e-3, 2e-3, "fp16 keeps 11 significant bits: one rounding is "
                             "4.9e-4 relative; the reference rounds after every op"),
    torch.bfloat16: Tolerance(1e-2, 1.6e-2, "bf16 keeps 8 significant bits: one rounding is "
                              "3.9e-3 relative; the reference rounds after every op"),
}

# (op, backend or None, dtype) -> Tolerance. Every entry says why it differs from the default.
OVERRIDES: dict[tuple[str, Optional[str], torch.dtype], Tolerance] = {
    ("bias_act", "triton", torch.float64): Tolerance(
        1e-7, 1e-6, "alpha, gain and clamp reach the Triton kernel as fp32 scalars, so float64 "
        "inputs see those constants rounded to 6e-8 relative"),
}

# Low-precision results must be within ERROR_RATIO_K x PyTorch's own error (see module doc).
# 2 is FlashAttention's choice: a kernel that computes in fp32 and rounds once is usually below 1.
ERROR_RATIO_K = 2.0

# The error-ratio floor also allows this many ulps (eps x max|reference|): a kernel that rounds
# once is then never failed for PyTorch happening to round an element exactly (a short sum, an
# exactly representable product). One ulp still rejects a kernel that computes in a lower dtype.
ULP_FLOOR = 1.0


def tolerance(dtype: torch.dtype, op: Optional[str] = None,
              backend: Optional[str] = None) -> Tolerance:
    """The tolerance for ``op`` on ``backend`` at ``dtype``: most specific entry wins."""
    for key in ((op, backend, dtype), (op, None, dtype)):
        if key in OVERRIDES:
            return OVERRIDES[key]
    try:
        return DEFAULT_TOLERANCES[dtype]
    except KeyError:
        raise ValueError(f"no tolerance for dtype {dtype}; add one to DEFAULT_TOLERANCES") from None

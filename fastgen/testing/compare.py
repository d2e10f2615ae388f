"""Comparisons with failure reports that say what went wrong, and where.

A failure names the tensor, counts the mismatches, lists the first few (index, actual, expected)
and classifies non-finite values (NaN where a number was expected is an unwritten or poisoned
output; a number where NaN was expected is a dropped NaN), so a red test can be read without a
debugger.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from .tolerances import ERROR_RATIO_K, ULP_FLOOR, tolerance

__all__ = ["assert_close", "check_error_ratio", "max_abs_error", "poisoned", "poison_"]


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| in float64; inf when NaN/Inf patterns differ."""
    a, e = actual.detach().double(), expected.detach().double()
    if not torch.equal(torch.isnan(a), torch.isnan(e)):
        return float("inf")
    finite = torch.isfinite(a) & torch.isfinite(e)
    if not torch.equal(a[~finite].nan_to_num(0.0), e[~finite].nan_to_num(0.0)):
        return float("inf")  # infinities of different sign or position
    diff = (a - e)[finite].abs()
    return float(diff.max()) if diff.numel() else 0.0


def _report(name: str, actual: torch.Tensor, expected: torch.Tensor, bad: torch.Tensor,
            header: str, dtype: torch.dtype, limit: int = 5) -> str:
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    lines = [f"{name}: {header}",
             f"  shape {tuple(actual.shape)}, dtype {dtype}; {int(bad.sum())} of "
             f"{bad.numel()} elements differ"]
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    classes = {
        "NaN where a number was expected (unwritten/poisoned output?)": nan_a & ~nan_e,
        "a number where NaN was expected (NaN dropped)": ~nan_a & nan_e,
        "Inf mismatch": (torch.isinf(a) | torch.isinf(e)) & (a != e) & ~nan_a & ~nan_e,
    }
    for label, mask in classes.items():
        if mask.any():
            lines.append(f"  {int(mask.sum())} x {label}")
    for idx in bad.nonzero()[:limit].tolist():
        lines.append(f"  at {tuple(idx)}: actual {a[tuple(idx)].item():.8g}, "
                     f"expected {e[tuple(idx)].item():.8g}")
    return "\n".join(lines)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: Optional[float] = None,
                 rtol: Optional[float] = None, op: Optional[str] = None,
                 backend: Optional[str] = None, name: str = "output") -> None:
    """|actual - expected| <= atol + rtol |expected| elementwise, NaN matching NaN.

    atol/rtol default to :func:`fastgen.testing.tolerance` for ``actual.dtype`` (and op/backend).
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected "
                             f"{tuple(expected.shape)}")
    tol = tolerance(actual.dtype, op, backend)
    atol = tol.atol if atol is None else atol
    rtol = tol.rtol if rtol is None else rtol
    a, e = actual.detach().double(), expected.detach().double().to(actual.device)
    both_nan = torch.isnan(a) & torch.isnan(e)
    close = (a == e) | ((a - e).abs() <= atol + rtol * e.abs()) | both_nan
    if not bool(close.all()):
        raise AssertionError(_report(name, a, e, ~close, f"not close (atol={atol:g}, "
                                     f"rtol={rtol:g})", actual.dtype))


def check_error_ratio(actual: torch.Tensor, reference64: torch.Tensor, baseline: torch.Tensor, *,
                      k: float = ERROR_RATIO_K, op: Optional[str] = None,
                      backend: Optional[str] = None, name: str = "output") -> tuple[float, float]:
    """Assert err(actual) <= k * err(baseline) + floor, both measured against a float64 reference.

    ``baseline`` is what PyTorch itself computes in ``actual.dtype`` (the reference run in that
    dtype). The floor, ``atol + ULP_FLOOR * eps(dtype) * max|reference|``, keeps the check
    meaningful when PyTorch happens to be (nearly) exact, e.g. on a short sum. Returns
    (err, baseline_err).
    """
    err = max_abs_error(actual, reference64)
    base = max_abs_error(baseline, reference64)
    scale = float(reference64.detach().abs().nan_to_num(0.0, 0.0, 0.0).max()) \
        if reference64.numel() else 0.0
    floor = tolerance(actual.dtype, op, backend).atol + ULP_FLOOR * torch.finfo(actual.dtype).eps \
        * scale
    allowed = k * base + floor
    if not err <= allowed:
        a, e = actual.detach().double(), reference64.detach().double().to(actual.device)
        bad = ~((a - e).abs() <= allowed) & ~(torch.isnan(a) & torch.isnan(e))
        raise AssertionError(_report(
            name, a, e, bad, f"max error {err:.3g} exceeds {k:g} x PyTorch's own {base:.3g} "
            f"+ floor ({allowed:.3g})", actual.dtype))
    return err, base


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill t in place with NaN (floating) or the dtype's max (integer); returns t."""
    if t.is_floating_point() or t.is_complex():
        return t.fill_(float("nan"))
    if t.dtype == torch.bool:
        return t.fill_(True)
    return t.fill_(torch.iinfo(t.dtype).max)


@contextlib.contextmanager
def poisoned() -> Iterator[None]:
    """Every torch.empty* inside (C++ kernels included) returns NaN-filled memory.

    An element a kernel forgets to write then shows up as NaN instead of stale, plausible data.
    Uses PyTorch's own switch (fill_uninitialized_memory under deterministic mode, warn-only so
    ops without a deterministic implementation still run).
    """
    import torch.utils.deterministic as det

    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        det.fill_uninitialized_memory = prev_fill
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)

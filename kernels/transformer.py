"""Triton kernels for the fused transformer-block ops (GPU; CPU tensors under TRITON_INTERPRET=1).

Math and operation order: fastgen/reference/transformer.py. Inputs arrive contiguous and checked
(fastgen/ops/transformer.py). rms_norm: one program per row, the whole row in one tile (rows up to
64K elements), float32 math (float64 for float64 rows). rotary: one program per (token, head)
row of q or k, the two halves of D as two tiles.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, n, eps_hi, eps_lo, BLOCK: tl.constexpr,
                     WIDE: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    work = tl.float64 if WIDE else tl.float32
    # float scalars arrive as float32: a float64 eps comes as hi + lo halves
    eps = tl.cast(eps_hi, work) + tl.cast(eps_lo, work) if WIDE else eps_hi
    x = tl.load(x_ptr + row * n + offs, mask=mask, other=0.0).to(work)
    ms = tl.sum(x * x, axis=0) / n + eps
    if WIDE:
        r = 1.0 / tl.sqrt(ms)  # float64 sqrt is correctly rounded
    else:
        r = 1.0 / tl.sqrt_rn(ms)  # not the approximate float32 sqrt: as torch.rsqrt on CPU
    h = (x * r).to(y_ptr.dtype.element_ty).to(work)  # rounded to the storage dtype first
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(work)
    tl.store(y_ptr + row * n + offs, (w * h).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(x_ptr, c_ptr, s_ptr, y_ptr, heads, half, BLOCK: tl.constexpr,
                   WIDE: tl.constexpr):
    i = tl.program_id(0).to(tl.int64)  # (token, head) row of x
    tok = i // heads
    offs = tl.arange(0, BLOCK)
    mask = offs < half
    work = tl.float64 if WIDE else tl.float32
    d = 2 * half
    a = tl.load(x_ptr + i * d + offs, mask=mask, other=0.0).to(work)
    b = tl.load(x_ptr + i * d + half + offs, mask=mask, other=0.0).to(work)
    c_lo = tl.load(c_ptr + tok * d + offs, mask=mask, other=0.0).to(work)
    c_hi = tl.load(c_ptr + tok * d + half + offs, mask=mask, other=0.0).to(work)
    s_lo = tl.load(s_ptr + tok * d + offs, mask=mask, other=0.0).to(work)
    s_hi = tl.load(s_ptr + tok * d + half + offs, mask=mask, other=0.0).to(work)
    tl.store(y_ptr + i * d + offs, (a * c_lo - b * s_lo).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(y_ptr + i * d + half + offs, (b * c_hi + a * s_hi).to(y_ptr.dtype.element_ty),
             mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [R, N], weight [N], contiguous, one dtype -> y [R, N]."""
    y = torch.empty_like(x)
    rows, n = x.shape
    if rows and n:
        wide = x.dtype == torch.float64
        hi = float(torch.tensor(eps, dtype=torch.float32)) if wide else eps
        with _on_device(x):
            _rms_norm_kernel[(rows,)](x, weight, y, n, hi, eps - hi if wide else 0.0,
                                      BLOCK=triton.next_power_of_2(n), WIDE=wide)
    return y


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q [B, T, Hq, D], k [B, T, Hk, D], cos/sin [B, T, D], contiguous -> (q', k')."""
    outs = []
    for x in (q, k):
        y = torch.empty_like(x)
        b, t, h, d = x.shape
        if y.numel():
            with _on_device(x):
                # no fma contraction: products and sums rounded one by one, as eager PyTorch
                # (float32 results bit-exact with transformers' on GPUs too)
                _rotary_kernel[(b * t * h,)](x, cos, sin, y, h, d // 2,
                                             BLOCK=triton.next_power_of_2(max(d // 2, 1)),
                                             WIDE=x.dtype == torch.float64,
                                             enable_fp_fusion=False)
        outs.append(y)
    return outs[0], outs[1]


def _on_device(x: torch.Tensor):
    """Launch on x's GPU, not on whichever is current."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()

"""Triton kernels for bias_act (GPU; on CPU tensors under TRITON_INTERPRET=1 for testing).

Math: fastgen/reference/bias_act.py. Memory plan and tiling mirror csrc/cpu/bias_act.cpp: a dense
x is [outer, C, inner] in memory, processed as a [rows, cols] matrix in 2-D tiles,
    row mode    (inner > 1):  rows = outer*C of length inner, one bias value per row;
    column mode (inner == 1): rows = outer of length C, the bias vector across columns.
Programs form a 1-D grid (row tile major): CUDA caps the second grid axis at 65535, which a
single long row (no bias) would exceed. The forward reads x once and writes y once. The
backward reads grad_y and x once, writes grad_x, and writes one partial sum of grad_x per
(row, column tile) or (row tile, column); the launcher adds the partials up, so grad_b needs no
atomics and is deterministic.

Only core tl ops are used (no libdevice), so the interpreter runs the very code the GPU runs:
expm1, log1p and tanh are built from exp/log with Kahan's cancellation trick (a few ulp in fp32).
Scalars (alpha, gain, clamp) arrive as fp32 kernel arguments: float64 inputs therefore see these
constants rounded to fp32.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl

# Activation ids, shared with the launcher. Order is fixed: it is part of the compiled kernels.
ACT_IDS = {name: i for i, name in enumerate(
    ("linear", "relu", "lrelu", "tanh", "sigmoid", "elu", "selu", "softplus", "swish", "gelu"))}

_SELU_LAMBDA = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717
# Elements per program: enough bytes in flight per SM, and few programs under the interpreter.
_TILE = 4096


@triton.jit
def _expm1(u):
    # e^u - 1 without cancellation near 0: (e - 1) * u / log(e) (Kahan).
    e = tl.exp(u)
    r = (e - 1.0) * (u / tl.log(e))
    r = tl.where(e == 1.0, u, r)
    r = tl.where(e == 0.0, -1.0, r)
    return tl.where(u > 80.0, e - 1.0, r)


@triton.jit
def _log1p(z):
    w = 1.0 + z
    return tl.where(w == 1.0, z, tl.log(w) * (z / (w - 1.0)))


@triton.jit
def _tanh(u):
    t = _expm1(-2.0 * tl.abs(u))
    r = -t / (t + 2.0)
    return tl.where(u < 0.0, -r, r)


@triton.jit
def _sigmoid(u):
    return 1.0 / (1.0 + tl.exp(-u))


@triton.jit
def _nonpositive(u):
    # min(u, 0) that keeps NaN (tl.minimum may drop it): the unused branch of a where must not
    # overflow, and NaN must reach the output as it does in torch.
    return tl.where(u > 0.0, 0.0, u)


@triton.jit
def _act_fwd(u, alpha, ACT: tl.constexpr):
    if ACT == 0:
        a = u
    elif ACT == 1:
        a = tl.where(u > 0.0, u, 0.0)
        a = tl.where(u != u, u, a)  # relu keeps NaN, as torch.relu does
    elif ACT == 2:
        a = tl.where(u > 0.0, u, u * alpha)
    elif ACT == 3:
        a = _tanh(u)
    elif ACT == 4:
        a = _sigmoid(u)
    elif ACT == 5:
        a = tl.where(u > 0.0, u, _expm1(_nonpositive(u)))
    elif ACT == 6:
        a = _SELU_LAMBDA * tl.where(u > 0.0, u, _SELU_ALPHA * _expm1(_nonpositive(u)))
    elif ACT == 7:
        a = tl.maximum(u, 0.0) + _log1p(tl.exp(-tl.abs(u)))
    elif ACT == 8:
        a = u * _sigmoid(u)
    else:
        a = 0.5 * u * (1.0 + tl.erf(u * 0.7071067811865476))
    return a


@triton.jit
def _act_deriv(u, alpha, ACT: tl.constexpr):
    if ACT == 0:
        d = tl.full(u.shape, 1.0, u.dtype)
    elif ACT == 1:
        d = tl.where(u > 0.0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where(u > 0.0, 1.0, alpha)
    elif ACT == 3:
        t = _tanh(u)
        d = 1.0 - t * t
    elif ACT == 4:
        s = _sigmoid(u)
        d = s * (1.0 - s)
    elif ACT == 5:
        d = tl.where(u > 0.0, 1.0, tl.exp(_nonpositive(u)))
    elif ACT == 6:
        d = _SELU_LAMBDA * tl.where(u > 0.0, 1.0, _SELU_ALPHA * tl.exp(_nonpositive(u)))
    elif ACT == 7:
        d = _sigmoid(u)
    elif ACT == 8:
        s = _sigmoid(u)
        d = s * (1.0 + u * (1.0 - s))
    else:
        cdf = 0.5 * (1.0 + tl.erf(u * 0.7071067811865476))
        d = cdf + u * 0.3989422804014327 * tl.exp(-0.5 * u * u)
    return d


@triton.jit
def _load_u(x_ptr, b_ptr, offs, mask, r, c, rows, cols, channels,
            HAS_BIAS: tl.constexpr, COLUMN_MODE: tl.constexpr, COMPUTE: tl.constexpr):
    u = tl.load(x_ptr + offs, mask=mask, other=0.0).to(COMPUTE)
    if HAS_BIAS:
        if COLUMN_MODE:
            u += tl.load(b_ptr + c, mask=c < cols, other=0.0).to(COMPUTE)
        else:
            u += tl.load(b_ptr + r % channels, mask=r < rows, other=0.0).to(COMPUTE)
    return u


@triton.jit
def _bias_act_fwd_kernel(
    x_ptr, b_ptr, y_ptr,          # x, y: [rows, cols] dense memory; b: [channels] or dummy
    rows, cols, channels,         # matrix view and bias length
    col_tiles,                    # programs per row tile: pid = row_tile * col_tiles + col_tile
    alpha, gain, clamp,           # fp32 scalars; clamp used only when HAS_CLAMP
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, COLUMN_MODE: tl.constexpr,
    HAS_CLAMP: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # read rows*cols elements of x (+ channels of b); write rows*cols elements of y
    pid = tl.program_id(0)
    r = (pid // col_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = (pid % col_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    mask = (r < rows) & (c < cols)
    offs = r.to(tl.int64) * cols + c
    u = _load_u(x_ptr, b_ptr, offs, mask, r, c, rows, cols, channels,
                HAS_BIAS, COLUMN_MODE, COMPUTE)
    v = _act_fwd(u, alpha, ACT) * gain
    if HAS_CLAMP:
        v = tl.where(v > clamp, clamp, v)
        v = tl.where(v < -clamp, -clamp, v)
    tl.store(y_ptr + offs, v.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_act_bwd_kernel(
    gy_ptr, x_ptr, b_ptr, gx_ptr,  # [rows, cols] dense memory; b: [channels] or dummy
    partial_ptr,                   # row mode [rows, col_tiles]; column mode [row_tiles, cols]
    rows, cols, channels, col_tiles,
    alpha, gain, clamp,
    ACT: tl.constexpr, HAS_BIAS: tl.constexpr, COLUMN_MODE: tl.constexpr,
    HAS_CLAMP: tl.constexpr, NEED_U: tl.constexpr, COMPUTE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # read grad_y and x (rows*cols each); write grad_x and one partial sum per row or column
    pid_r = tl.program_id(0) // col_tiles
    pid_c = tl.program_id(0) % col_tiles
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    mask = (r < rows) & (c < cols)
    offs = r.to(tl.int64) * cols + c
    g = tl.load(gy_ptr + offs, mask=mask, other=0.0).to(COMPUTE) * gain
    if NEED_U:
        u = _load_u(x_ptr, b_ptr, offs, mask, r, c, rows, cols, channels,
                    HAS_BIAS, COLUMN_MODE, COMPUTE)
        g = g * _act_deriv(u, alpha, ACT)
        if HAS_CLAMP:
            v = _act_fwd(u, alpha, ACT) * gain
            g = tl.where(tl.abs(v) <= clamp, g, 0.0)
    tl.store(gx_ptr + offs, g.to(gx_ptr.dtype.element_ty), mask=mask)
    if HAS_BIAS:
        g = tl.where(mask, g, 0.0)
        if COLUMN_MODE:
            cc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
            tl.store(partial_ptr + pid_r.to(tl.int64) * cols + cc, tl.sum(g, axis=0),
                     mask=cc < cols)
        else:
            rr = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
            tl.store(partial_ptr + rr.to(tl.int64) * col_tiles + pid_c, tl.sum(g, axis=1),
                     mask=rr < rows)


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x itself when dense, else a copy in the layout torch.empty_like(x) would pick."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last) or \
            x.is_contiguous(memory_format=torch.channels_last_3d):
        return x
    y = torch.empty_like(x)
    return y.copy_(x) if y.stride() != x.stride() else x


def _plan(x: torch.Tensor, dim: int, has_bias: bool):
    """(rows, cols, channels, column_mode, BLOCK_R, BLOCK_C) for dense x; see the module doc."""
    n = x.numel()
    if not has_bias or x.shape[dim] == 1:
        outer, channels, inner = 1, 1, n
    else:
        channels, inner = x.shape[dim], x.stride(dim)
        outer = n // (channels * inner)
    column_mode = inner == 1 and channels > 1
    rows, cols = (outer, channels) if column_mode else (outer * channels, inner)
    block_c = min(triton.next_power_of_2(cols), _TILE)
    block_r = max(1, _TILE // block_c)
    return rows, cols, channels, column_mode, block_r, block_c


def _on_device(x: torch.Tensor):
    """Launch on x's GPU, not on whichever is current."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _compute_dtype(x: torch.Tensor):
    return tl.float64 if x.dtype == torch.float64 else tl.float32


def bias_act_fwd(x: torch.Tensor, b: Optional[torch.Tensor], dim: int, act: str, alpha: float,
                 gain: float, clamp: Optional[float]) -> torch.Tensor:
    """Launch the forward. Arguments already checked by fastgen.ops.bias_act."""
    xd = _dense(x)
    y = torch.empty_like(xd)
    if xd.numel() == 0:
        return y
    rows, cols, channels, column_mode, block_r, block_c = _plan(xd, dim, b is not None)
    row_tiles, col_tiles = triton.cdiv(rows, block_r), triton.cdiv(cols, block_c)
    with _on_device(x):
        _bias_act_fwd_kernel[(row_tiles * col_tiles,)](
            xd, b.contiguous() if b is not None else xd, y, rows, cols, channels, col_tiles,
            alpha, gain, 0.0 if clamp is None else clamp,
            ACT=ACT_IDS[act], HAS_BIAS=b is not None, COLUMN_MODE=column_mode,
            HAS_CLAMP=clamp is not None, COMPUTE=_compute_dtype(xd),
            BLOCK_R=block_r, BLOCK_C=block_c,
        )
    return y


def bias_act_bwd(grad_y: torch.Tensor, x: torch.Tensor, b: Optional[torch.Tensor], dim: int,
                 act: str, alpha: float, gain: float, clamp: Optional[float]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward: (grad_x, grad_b); grad_b is empty when b is None."""
    xd = _dense(x)
    gyd = grad_y if grad_y.stride() == xd.stride() else torch.empty_like(xd).copy_(grad_y)
    gx = torch.empty_like(xd)
    if xd.numel() == 0:
        return gx, (torch.zeros_like(b) if b is not None else x.new_empty((0,)))
    rows, cols, channels, column_mode, block_r, block_c = _plan(xd, dim, b is not None)
    row_tiles, col_tiles = triton.cdiv(rows, block_r), triton.cdiv(cols, block_c)
    acc_dtype = torch.float64 if xd.dtype == torch.float64 else torch.float32
    partial_shape = ((row_tiles, cols) if column_mode else (rows, col_tiles)) if b is not None \
        else (1,)
    partial = torch.empty(partial_shape, device=x.device, dtype=acc_dtype)
    with _on_device(x):
        _bias_act_bwd_kernel[(row_tiles * col_tiles,)](
            gyd, xd, b.contiguous() if b is not None else xd, gx, partial,
            rows, cols, channels, col_tiles,
            alpha, gain, 0.0 if clamp is None else clamp,
            ACT=ACT_IDS[act], HAS_BIAS=b is not None, COLUMN_MODE=column_mode,
            HAS_CLAMP=clamp is not None, NEED_U=act != "linear" or clamp is not None,
            COMPUTE=_compute_dtype(xd), BLOCK_R=block_r, BLOCK_C=block_c,
        )
    if b is None:
        return gx, x.new_empty((0,))
    sums = partial.sum(0) if column_mode else partial.view(-1, channels, col_tiles).sum((0, 2))
    return gx, sums.to(b.dtype)

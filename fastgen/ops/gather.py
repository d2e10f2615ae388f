"""gather_rows: rows of a table at random indices, with the misses overlapped.

    out[i] = table[index[i]]        (``table.index_select(0, index)``)

A training batch drawn from a table of samples (a neural image's pixels, a NeRF's rays) is one
DRAM miss per row once the table has left the cache. The CPU kernel prefetches each row a few
rows ahead of copying it, so a thread keeps ~two dozen misses in flight; aten's index_select
waits on them one after another (2^16 rows of a 5 MiB table: 0.43 vs 1.1 ms, measured right
after other work on the 2-core AMD VM of BENCHMARKS.md).

    fastgen/ops/gather.py          this file: checks, backends
    fastgen/reference/gather.py    backend ``reference`` (index_select)
    csrc/cpu/gather.cpp            backend ``cpu`` (any dtype: rows are copied as bytes; its
                                   gradient, an index_add_, is registered here)
    tests/ops/test_gather.py
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from .. import _ext, registry
from ..reference import gather as _ref

__all__ = ["gather_rows"]


def gather_rows(table: torch.Tensor, index: torch.Tensor, *,
                backend: Optional[str] = None) -> torch.Tensor:
    """The rows ``table[index]`` of a 2-D table: ``table.index_select(0, index)``.

    Args:
        table: [R, C], any dtype.
        index: [N] int64 or int32 on table's device, every entry in [0, R) (anything else,
            negative indices included, raises IndexError, as index_select).
        backend: "cpu" or "reference"; default: FASTGEN_BACKEND, else the fastest available.

    Returns:
        [N, C] in table's dtype, row i = table[index[i]]; differentiable to table.
    """
    if not isinstance(table, torch.Tensor) or table.ndim != 2:
        raise ValueError(f"gather_rows: table must be a 2-D [R, C] tensor, got "
                         f"{list(table.shape) if isinstance(table, torch.Tensor) else type(table)}")
    if not isinstance(index, torch.Tensor) or index.ndim != 1 or \
            index.dtype not in (torch.int64, torch.int32):
        got = (f"{index.dtype} {list(index.shape)}" if isinstance(index, torch.Tensor)
               else type(index).__name__)
        raise TypeError(f"gather_rows: index must be a 1-D int64 or int32 tensor, got {got}")
    if index.device != table.device:
        raise ValueError(f"gather_rows: index is on {index.device} but table on {table.device}")
    args = (table, index)
    return _OP.select(table.device.type, args, backend).fn(*args)


def _run_cpu(table, index):
    return torch.ops.fastgen.gather_rows(table.contiguous(), index.contiguous())


def _fake(table, index):
    return table.new_empty((index.shape[0], table.shape[1]))


def _setup(ctx, inputs, output):
    table, index = inputs
    ctx.rows = table.shape[0]
    ctx.save_for_backward(index)


def _backward(ctx, grad):
    index, = ctx.saved_tensors
    # the scatter-add of index_select's backward (index_add_: deterministic on CPU)
    out = grad.new_zeros((ctx.rows, grad.shape[1]))
    return out.index_add_(0, index, grad), None


if _ext.has_op("gather_rows"):
    torch.library.register_fake("fastgen::gather_rows")(_fake)
    torch.library.register_autograd("fastgen::gather_rows", _backward, setup_context=_setup)

_OP = registry.register("gather_rows", [
    registry.Backend("cpu", _run_cpu, devices=("cpu",),
                     available=functools.partial(_ext.native_available, "gather_rows"),
                     summary="csrc/cpu/gather.cpp"),
    registry.Backend("reference", _ref.gather_rows, summary="fastgen/reference/gather.py"),
])

"""Reference row gather: ``table.index_select(0, index)`` (differentiable to table)."""

from __future__ import annotations

import torch

__all__ = ["gather_rows"]


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table [R, C], index [N] integer in [0, R) -> [N, C] with row i = table[index[i]]."""
    return table.index_select(0, index)

"""Reference linear layer: ``torch.nn.functional.linear`` (out = x · weightᵀ + bias)."""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["linear"]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """x [M, K], weight [N, K], bias [N] or None -> [M, N]."""
    return torch.nn.functional.linear(x, weight, bias)

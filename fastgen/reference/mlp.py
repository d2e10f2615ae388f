"""Reference fused MLP: the same bias-free layers as plain PyTorch ops (F.linear, relu, sigmoid).

    h_0 = x,  h_l = act(h_{l-1} · W_lᵀ)  for the hidden layers,  y = out_act(h_n · W_outᵀ)

Differentiable by autograd to x and every weight (and to any order). Backend ``reference`` of
``fastgen.ops.fused_mlp`` on every device; on CUDA it is PyTorch's cuBLAS path.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "fused_mlp", "fused_mlp_mse", "activate"]

# Index = the code the C++ kernels take (csrc/cpu/mlp.cpp); hidden layers: None or ReLU.
ACTIVATIONS = ("None", "ReLU", "Sigmoid")


def activate(h: torch.Tensor, activation: str) -> torch.Tensor:
    """Applies one of :data:`ACTIVATIONS` (by its exact name)."""
    if activation == "ReLU":
        return torch.relu(h)
    if activation == "Sigmoid":
        return torch.sigmoid(h)
    if activation == "None":
        return h
    raise ValueError(f"activate: activation must be one of {ACTIVATIONS}, got {activation!r}")


def fused_mlp(x: torch.Tensor, weights: Sequence[torch.Tensor], activation: str = "ReLU",
              output_activation: str = "None") -> torch.Tensor:
    """x [..., K], weights [H, K], [H, H] ..., [O, H] -> [..., O]."""
    h = x
    for w in weights[:-1]:
        h = activate(F.linear(h, w), activation)
    return activate(F.linear(h, weights[-1]), output_activation)


def fused_mlp_mse(x: torch.Tensor, weights: Sequence[torch.Tensor], target: torch.Tensor,
                  activation: str = "ReLU", output_activation: str = "None") -> torch.Tensor:
    """mean((fused_mlp(x, weights) - target)²) over every element: a scalar."""
    return (fused_mlp(x, weights, activation, output_activation) - target).square().mean()

"""``BiasAct``: a learnable bias followed by an activation, gain and clamp, as one fused op."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops.bias_act import ACTIVATIONS, bias_act, check_args

__all__ = ["BiasAct"]


class BiasAct(nn.Module):
    """``y = clamp(act(x + bias) * gain, -clamp, clamp)`` with the bias along ``dim``.

    Args:
        num_channels: C, the size of x along ``dim``; needed when ``bias=True``.
        act, alpha, gain, clamp: as :func:`fastgen.ops.bias_act` (defaults per activation).
        dim: the channel dimension of the input (1 for [N, C, ...], -1 for [..., C]).
        bias: learn a bias of shape [C] (initialised to ``bias_init``).
        backend: force one backend ("triton", "cpu", "reference"); None picks the fastest.

    Shape: x [..., C, ...] -> y of the same shape, dtype and memory format.
    """

    def __init__(self, num_channels: Optional[int] = None, act: str = "linear",
                 alpha: Optional[float] = None, gain: Optional[float] = None,
                 clamp: Optional[float] = None, dim: int = 1, bias: bool = True,
                 bias_init: float = 0.0, backend: Optional[str] = None,
                 device=None, dtype=None):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"BiasAct: act must be one of {', '.join(ACTIVATIONS)}; got {act!r}")
        if bias and (num_channels is None or int(num_channels) < 1):
            raise ValueError(f"BiasAct: bias=True needs num_channels >= 1, got {num_channels!r}")
        # Validate alpha/gain/clamp now, not at the first forward.
        check_args(torch.empty(0), None, dim, act, alpha, gain, clamp)
        self.num_channels = num_channels
        self.act, self.alpha, self.gain, self.clamp = act, alpha, gain, clamp
        self.dim, self.backend = dim, backend
        if bias:
            self.bias = nn.Parameter(torch.full((int(num_channels),), float(bias_init),
                                                device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Under autocast x arrives in half precision while the bias parameter stays float32;
        # the cast is differentiable, so the fp32 parameter still gets its gradient.
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return bias_act(x, b, self.dim, self.act, self.alpha, self.gain, self.clamp,
                        backend=self.backend)

    def extra_repr(self) -> str:
        parts = [f"num_channels={self.num_channels}", f"act={self.act!r}", f"dim={self.dim}"]
        parts += [f"{k}={getattr(self, k)}" for k in ("alpha", "gain", "clamp", "backend")
                  if getattr(self, k) is not None]
        if self.bias is None:
            parts.append("bias=False")
        return ", ".join(parts)

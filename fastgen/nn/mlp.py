"""FusedMLP: the bias-free MLP behind hash-grid encodings, as one fused op.

    net = FusedMLP(32, 3, n_neurons=64, n_hidden_layers=2)           # ReLU hidden, linear out
    net = FusedMLP.from_tcnn_config(32, 3, {"otype": "FullyFusedMLP", "activation": "ReLU",
                                            "output_activation": "None", "n_neurons": 64,
                                            "n_hidden_layers": 2})
    y = net(x)                                                        # [..., 32] -> [..., 3]

The network tiny-cuda-nn's FullyFusedMLP / CutlassMLP computes (no biases), over
:func:`fastgen.ops.fused_mlp`. Weights are ``nn.Linear``-layout matrices in ``weights`` (a
ParameterList), Xavier-uniform initialised like tcnn's networks. The parameter *layout* is not
tcnn's (which pads widths to multiples of 16 and stores one flat half-precision vector).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..ops._names import check_tcnn_config
from ..ops.mlp import ACTIVATIONS, HIDDEN_ACTIVATIONS, activation_name, fused_mlp

__all__ = ["FusedMLP"]

_TCNN_KEYS = {"otype", "activation", "output_activation", "n_neurons", "n_hidden_layers"}
_OTYPES = ("fullyfusedmlp", "cutlassmlp")


def _positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"FusedMLP: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"FusedMLP: {name} must be >= 1, got {value}")
    return value


class FusedMLP(nn.Module):
    """A bias-free MLP: ``n_hidden_layers`` layers of ``n_neurons``, then ``n_output_dims``.

    Args:
        n_input_dims, n_output_dims: input and output widths.
        n_neurons: width of every hidden layer.
        n_hidden_layers: number of hidden layers (>= 1).
        activation: hidden layers' activation, "ReLU" or "None".
        output_activation: "None", "ReLU" or "Sigmoid".
        dtype, device: of the weights.
        backend: force a backend of fastgen.ops.fused_mlp ("cpu", "reference"); None picks the
            fastest. A plain attribute: set it later to compare backends.
    """

    def __init__(self, n_input_dims: int, n_output_dims: int, n_neurons: int = 64,
                 n_hidden_layers: int = 2, activation: str = "ReLU",
                 output_activation: str = "None", *, dtype: torch.dtype = torch.float32,
                 device=None, backend: Optional[str] = None):
        super().__init__()
        self.n_input_dims = _positive_int("n_input_dims", n_input_dims)
        self.n_output_dims = _positive_int("n_output_dims", n_output_dims)
        self.n_neurons = _positive_int("n_neurons", n_neurons)
        self.n_hidden_layers = _positive_int("n_hidden_layers", n_hidden_layers)
        self.activation = activation_name("activation", activation, HIDDEN_ACTIVATIONS)
        self.output_activation = activation_name("output_activation", output_activation,
                                                 ACTIVATIONS)
        self.backend = backend
        widths = [n_input_dims] + [n_neurons] * n_hidden_layers + [n_output_dims]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n_out, n_in, dtype=dtype, device=device))
            for n_in, n_out in zip(widths[:-1], widths[1:]))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights: U(-s, s), s = sqrt(6 / (fan_in + fan_out))."""
        with torch.no_grad():
            for w in self.weights:
                s = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
                w.uniform_(-s, s)

    @property
    def n_params(self) -> int:
        """Number of weights."""
        return sum(w.numel() for w in self.weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., n_input_dims] -> [..., n_output_dims]."""
        return fused_mlp(x, list(self.weights), activation=self.activation,
                         output_activation=self.output_activation, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"{self.n_input_dims} -> {self.n_hidden_layers} x {self.n_neurons} -> "
                f"{self.n_output_dims}, activation={self.activation}, "
                f"output_activation={self.output_activation}")

    @classmethod
    def from_tcnn_config(cls, n_input_dims: int, n_output_dims: int, config: Mapping[str, Any],
                         **kwargs) -> "FusedMLP":
        """Build from a tiny-cuda-nn network config (``{"otype": "FullyFusedMLP", ...}``).

        Keys: otype (FullyFusedMLP or CutlassMLP), activation (ReLU, None), output_activation
        (None, ReLU, Sigmoid), n_neurons, n_hidden_layers; a missing key takes this class's
        default (64 neurons, 2 hidden layers, ReLU, None). Any other key or value raises a
        ValueError naming it. ``kwargs`` (dtype, device, backend) go to the constructor.
        """
        check_tcnn_config(config, _TCNN_KEYS, "networks")
        otype = config.get("otype", "FullyFusedMLP")
        if not isinstance(otype, str) or otype.lower() not in _OTYPES:
            raise ValueError(f"from_tcnn_config: otype must be FullyFusedMLP or CutlassMLP, got "
                             f"{otype!r}")
        extra = sorted(set(kwargs) - {"dtype", "device", "backend"})
        if extra:
            raise TypeError(f"from_tcnn_config: keyword arguments are dtype, device and backend; "
                            f"give {extra} in the config dict")
        args = {k: config[k] for k in _TCNN_KEYS - {"otype"} if k in config}
        return cls(n_input_dims, n_output_dims, **args, **kwargs)

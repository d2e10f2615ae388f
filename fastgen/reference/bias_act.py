"""Reference bias_act: StyleGAN2's fused bias + activation + gain + clamp, in plain PyTorch.

    u = x + b[c]                    (b broadcast along dimension ``dim``; skipped when b is None)
    y = clamp(act(u) * gain, -clamp, +clamp)

Activation table (default alpha, default gain, curved = non-zero second derivative). Defaults,
names and the clamp/gain order follow the behavioural spec of StyleGAN2/3's ``bias_act`` op
(``activation_funcs`` in NVlabs/stylegan3 ``torch_utils/ops/bias_act.py``; facts only, no code);
``gelu`` is added here (exact erf form, as ``torch.nn.functional.gelu``).

    name       alpha  gain  act(u)                             act'(u)
    linear     0      1     u                                  1
    relu       0      √2    max(u, 0)                          u > 0
    lrelu      0.2    √2    u > 0 ? u : αu                     u > 0 ? 1 : α
    tanh       0      1     tanh(u)                            1 - a²
    sigmoid    0      1     1 / (1 + e^-u)                     a (1 - a)
    elu        0      1     u > 0 ? u : e^u - 1                u > 0 ? 1 : e^u
    selu       0      1     λ (u > 0 ? u : α_s (e^u - 1))      λ (u > 0 ? 1 : α_s e^u)
    softplus   0      1     log(1 + e^u)                       sigmoid(u)
    swish      0      √2    u sigmoid(u)                       s (1 + u (1 - s)),  s = sigmoid(u)
    gelu       0      1     u Φ(u)                             Φ(u) + u φ(u)

At the kinks (u == 0) derivatives follow torch's own autograd, since the reference composes torch
ops: relu' = 0, lrelu' = α, elu' = 1, and selu' = λ·α_s (StyleGAN's table, written in terms of
a ≥ 0, would give λ there; a measure-zero difference, recorded here so it is not a surprise).

The reference computes in the input dtype, as an eager PyTorch model would; tests run it in
float64 to get the ground truth and in the input dtype to measure PyTorch's own rounding error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "ActivationSpec", "bias_act", "act_derivative", "act_second_derivative",
           "bias_shape", "resolve_params"]

SELU_LAMBDA = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717


@dataclass(frozen=True)
class ActivationSpec:
    """One row of the activation table."""

    name: str
    def_alpha: float      # used only by lrelu
    def_gain: float       # multiplies act(u) unless the caller passes gain
    curved: bool          # True when act'' is not zero almost everywhere (needs 2nd-order work)
    fn: Callable[[torch.Tensor, float], torch.Tensor]


ACTIVATIONS: dict[str, ActivationSpec] = {
    s.name: s
    for s in (
        ActivationSpec("linear", 0.0, 1.0, False, lambda u, a: u),
        ActivationSpec("relu", 0.0, math.sqrt(2), False, lambda u, a: F.relu(u)),
        ActivationSpec("lrelu", 0.2, math.sqrt(2), False, lambda u, a: F.leaky_relu(u, a)),
        ActivationSpec("tanh", 0.0, 1.0, True, lambda u, a: torch.tanh(u)),
        ActivationSpec("sigmoid", 0.0, 1.0, True, lambda u, a: torch.sigmoid(u)),
        ActivationSpec("elu", 0.0, 1.0, True, lambda u, a: F.elu(u)),
        ActivationSpec("selu", 0.0, 1.0, True, lambda u, a: F.selu(u)),
        ActivationSpec("softplus", 0.0, 1.0, True, lambda u, a: F.softplus(u)),
        ActivationSpec("swish", 0.0, math.sqrt(2), True, lambda u, a: F.silu(u)),
        ActivationSpec("gelu", 0.0, 1.0, True, lambda u, a: F.gelu(u)),
    )
}


def resolve_params(act: str, alpha: Optional[float], gain: Optional[float],
                   clamp: Optional[float]) -> tuple[float, float, Optional[float]]:
    """Fill in the table's defaults: returns (alpha, gain, clamp) as plain floats."""
    spec = ACTIVATIONS[act]
    return (float(spec.def_alpha if alpha is None else alpha),
            float(spec.def_gain if gain is None else gain),
            None if clamp is None else float(clamp))


def bias_shape(x: torch.Tensor, dim: int) -> list[int]:
    """The shape that broadcasts a [C] bias along dimension ``dim`` of x."""
    return [-1 if i == dim else 1 for i in range(x.ndim)]


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1,
             act: str = "linear", alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None) -> torch.Tensor:
    """y = clamp(act(x + b) * gain, -clamp, clamp), one eager PyTorch op per step.

    x: [..., C, ...] floating tensor, C at ``dim``; b: [C] same dtype and device, or None.
    Arguments are assumed valid; ``fastgen.ops.bias_act`` checks them.
    """
    alpha, gain, clamp = resolve_params(act, alpha, gain, clamp)
    if b is not None:
        x = x + b.reshape(bias_shape(x, dim % x.ndim))
    y = ACTIVATIONS[act].fn(x, alpha)
    if gain != 1:
        y = y * gain
    if clamp is not None:
        y = y.clamp(-clamp, clamp)
    return y


def act_derivative(u: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    """act'(u), elementwise (the table's last column). At u == 0 it matches torch's autograd."""
    one = torch.ones_like(u)
    if act == "linear":
        return one
    if act == "relu":
        return (u > 0).to(u.dtype)
    if act == "lrelu":
        return torch.where(u > 0, one, alpha * one)
    if act == "tanh":
        return 1 - torch.tanh(u) ** 2
    if act in ("sigmoid", "softplus"):
        s = torch.sigmoid(u)
        return s * (1 - s) if act == "sigmoid" else s
    if act == "elu":
        return torch.where(u > 0, one, torch.exp(u))
    if act == "selu":
        return SELU_LAMBDA * torch.where(u > 0, one, SELU_ALPHA * torch.exp(u))
    if act == "swish":
        s = torch.sigmoid(u)
        return s * (1 + u * (1 - s))
    if act == "gelu":
        return _normal_cdf(u) + u * _normal_pdf(u)
    raise ValueError(f"unknown activation {act!r}")


def act_second_derivative(u: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    """act''(u), elementwise; zero for the piecewise-linear activations."""
    if not ACTIVATIONS[act].curved:
        return torch.zeros_like(u)
    if act == "tanh":
        t = torch.tanh(u)
        return -2 * t * (1 - t * t)
    if act in ("sigmoid", "softplus"):
        s = torch.sigmoid(u)
        return s * (1 - s) * (1 - 2 * s) if act == "sigmoid" else s * (1 - s)
    if act == "elu":
        return torch.where(u > 0, torch.zeros_like(u), torch.exp(u))
    if act == "selu":
        return torch.where(u > 0, torch.zeros_like(u), SELU_LAMBDA * SELU_ALPHA * torch.exp(u))
    if act == "swish":
        s = torch.sigmoid(u)
        return s * (1 - s) * (2 + u * (1 - 2 * s))
    if act == "gelu":
        return _normal_pdf(u) * (2 - u * u)
    raise ValueError(f"unknown activation {act!r}")


def _normal_cdf(u: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(u * (1 / math.sqrt(2))))


def _normal_pdf(u: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * u * u) * (1 / math.sqrt(2 * math.pi))

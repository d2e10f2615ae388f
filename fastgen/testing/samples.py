"""Sample arguments for ``torch.library.opcheck``, for every op of the ``fastgen`` namespace.

tests/test_opcheck.py walks the namespace and fails for any op missing here, so a new op cannot
skip opcheck. Each entry: qualified op name -> (registry op, backend, sample factory). The factory
takes a device and returns a list of argument tuples; tensors that should get gradients have
requires_grad set (opcheck then also checks the autograd registration).
"""

from __future__ import annotations

from typing import Callable

import torch

from .inputs import make_tensor

__all__ = ["OPCHECK_SAMPLES"]


def _bias_act_fwd_samples(device) -> list[tuple]:
    def x(shape, layout="contiguous", dtype=torch.float32):
        return make_tensor(shape, dtype, device, layout=layout, requires_grad=True)

    def b(n, dtype=torch.float32):
        return make_tensor((n,), dtype, device, requires_grad=True)

    return [
        (x((2, 5, 3, 4)), b(5), 1, "lrelu", 0.2, 1.4142135623730951, 1.5),
        (x((2, 5, 3, 4), "channels_last"), b(5), 1, "swish", 0.0, 1.0, None),
        (x((7, 9), "strided"), None, 1, "tanh", 0.0, 2.0, None),
        (x((3, 7, 9), "permuted_strided"), b(7), 1, "relu", 0.0, 1.0, None),
        (x((6, 11)), b(11), 1, "gelu", 0.0, 1.0, 0.5),
        (x((3, 4), dtype=torch.float64), b(4, torch.float64), 1, "elu", 0.0, 1.0, None),
        (x((4, 6), dtype=torch.float16), b(6, torch.float16), 1, "sigmoid", 0.0, 1.0, None),
        (x((2, 6, 5), "transposed", torch.bfloat16), b(6, torch.bfloat16), 1, "softplus", 0.0,
         1.0, 2.0),
        (x((0, 3)), b(3), 1, "selu", 0.0, 1.0, None),
    ]


def _bias_act_bwd_samples(device) -> list[tuple]:
    out = []
    for x, b, dim, act, alpha, gain, clamp in _bias_act_fwd_samples(device):
        gy = make_tensor(x.shape, x.dtype, device, requires_grad=True)
        out.append((gy, x, b, dim, act, alpha, gain, clamp))
    return out


OPCHECK_SAMPLES: dict[str, tuple[str, str, Callable[[str], list[tuple]]]] = {
    "fastgen::bias_act": ("bias_act", "cpu", _bias_act_fwd_samples),
    "fastgen::bias_act_bwd": ("bias_act", "cpu", _bias_act_bwd_samples),
    "fastgen::bias_act_triton": ("bias_act", "triton", _bias_act_fwd_samples),
    "fastgen::bias_act_bwd_triton": ("bias_act", "triton", _bias_act_bwd_samples),
}

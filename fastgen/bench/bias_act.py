"""Benchmark cases for bias_act: StyleGAN2-sized activations, forward and forward+backward.

Peers: the reference is the eager PyTorch composition (x + b, activation, * gain, clamp: one
kernel and one memory pass each); ``torch.compile`` of that same composition is the peer that
fuses. Traffic floor: forward reads x and writes y; backward reads grad_y and x and writes grad_x
(5 tensor passes for forward+backward).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..ops.bias_act import bias_act
from ..reference.bias_act import bias_act as reference
from ..testing.check import available_backends
from .core import Case

# (label, shape, dim, act, params, dtype, mode, tier, layout)
_SPECS = [
    ("lrelu b gain clamp", (8, 256, 64, 64), 1, "lrelu", dict(gain=math.sqrt(2), clamp=256.0),
     torch.float32, "fwd+bwd", "quick", "contiguous"),
    ("lrelu b gain clamp", (8, 256, 64, 64), 1, "lrelu", dict(gain=math.sqrt(2), clamp=256.0),
     torch.float32, "fwd", "quick", "contiguous"),
    ("swish b fc", (4096, 512), 1, "swish", {}, torch.float32, "fwd+bwd", "quick", "contiguous"),
    ("lrelu b gain clamp", (64, 256, 64, 64), 1, "lrelu", dict(gain=math.sqrt(2), clamp=256.0),
     torch.float32, "fwd+bwd", "full", "contiguous"),
    ("lrelu b gain clamp", (16, 256, 64, 64), 1, "lrelu", dict(gain=math.sqrt(2), clamp=256.0),
     torch.float32, "fwd+bwd", "full", "channels_last"),
    ("gelu b", (8, 256, 64, 64), 1, "gelu", {}, torch.float32, "fwd+bwd", "full", "contiguous"),
    ("lrelu b gain clamp", (8, 256, 64, 64), 1, "lrelu", dict(gain=math.sqrt(2), clamp=256.0),
     torch.bfloat16, "fwd+bwd", "full", "contiguous"),
]

# Above this many elements the float64 truth would need tens of GB: errors are then measured
# against the reference in the input dtype.
_TRUTH_MAX_NUMEL = 1 << 25


def _runner(fn: Callable, mode: str) -> Callable[[dict], tuple]:
    if mode == "fwd":
        return lambda s: (fn(s["x"], s["b"]),)

    def fwd_bwd(s):
        y = fn(s["x"], s["b"])
        return (y, *torch.autograd.grad(y, (s["x"], s["b"]), s["gy"]))

    return fwd_bwd


def cases(device: str) -> list[Case]:
    backends = [b for b in available_backends("bias_act", device) if b != "reference"]
    if device == "cpu":
        backends = [b for b in backends if b != "triton"]  # the interpreter is not a fast path
    backend = backends[0] if backends else "reference"
    out = []
    for label, shape, dim, act, params, dtype, mode, tier, layout in _SPECS:
        numel = math.prod(shape)
        kw = dict(dim=dim, act=act, **params)

        def setup(shape=shape, dim=dim, dtype=dtype, layout=layout, mode=mode):
            g = torch.Generator(device=device).manual_seed(0)
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(shape, generator=g, device=device, dtype=dtype).contiguous(
                memory_format=fmt)
            b = torch.randn(shape[dim], generator=g, device=device, dtype=dtype)
            need_grad = mode != "fwd"
            s = {"x": x.requires_grad_(need_grad), "b": b.requires_grad_(need_grad)}
            if need_grad:
                s["gy"] = torch.randn(shape, generator=g, device=device, dtype=dtype).contiguous(
                    memory_format=fmt)
            return s

        ref = lambda x, b, kw=kw: reference(x, b, **kw)  # noqa: E731
        fast = lambda x, b, kw=kw: bias_act(x, b, **kw, backend=backend)  # noqa: E731
        compiled = torch.compile(ref, dynamic=False)

        def truth(s, ref=ref, mode=mode):
            s64 = {k: v.detach().double().requires_grad_(v.requires_grad) for k, v in s.items()}
            return _runner(ref, mode)(s64)

        passes = 2 if mode == "fwd" else 5
        fmt_name = "" if layout == "contiguous" else f" {layout}"
        out.append(Case(
            op="bias_act", name=f"{label} {mode} {'x'.join(map(str, shape))}{fmt_name}",
            device=device, dtype=dtype, setup=setup, fastgen=_runner(fast, mode),
            reference=_runner(ref, mode), peers={"torch.compile": _runner(compiled, mode)},
            truth=truth if numel <= _TRUTH_MAX_NUMEL else None,
            bytes_moved=passes * numel * torch.empty((), dtype=dtype).element_size(),
            tier=tier, backend=backend))
    return out

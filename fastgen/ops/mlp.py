"""fused_mlp: a small bias-free MLP run layer after layer on tiles of rows that stay in cache.

    h_0 = x,  h_l = act(h_{l-1} · W_lᵀ)  (hidden layers, one width),  y = out_act(h_n · W_outᵀ)

The network tiny-cuda-nn's FullyFusedMLP computes (no biases; ReLU or linear hidden layers; an
output activation), for the narrow MLPs behind hash-grid encodings: 16-128 neurons, a few layers,
10^4-10^6 rows. PyTorch runs such an MLP as separate GEMMs with each activation a round trip
through memory, and its ReLU and ReLU backward as passes of their own; the CPU kernel keeps each
tile of rows in L1/L2 through every layer, forward and backward (csrc/cpu/mlp.cpp).

    fastgen/ops/mlp.py         this file: checks, backends, fake kernels, autograd
    fastgen/reference/mlp.py   backend ``reference`` (PyTorch ops; every device)
    csrc/cpu/mlp.cpp           backend ``cpu`` (float32 / float64)
    fastgen/nn/mlp.py          FusedMLP module, tcnn network config dicts
    tests/ops/test_mlp.py      tests; fastgen/bench/mlp.py benchmark cases

On CUDA the reference (cuBLAS GEMMs) runs; there is no fused GPU kernel yet.

Numerics: float32 sums of products in a fixed order per output (the order differs from a BLAS
GEMM's: results agree to float32 rounding, ~1e-6 relative). The weight gradient sums rows in
chunks fixed by the row count alone, so it is bitwise the same for any number of threads.
Second-order gradients (``create_graph=True``) go through the reference's autograd graph.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch

from .. import _ext, registry
from ..reference import mlp as _ref
from ..reference.mlp import ACTIVATIONS
from ._names import tcnn_choice

__all__ = ["fused_mlp", "ACTIVATIONS", "HIDDEN_ACTIVATIONS"]

HIDDEN_ACTIVATIONS = ("None", "ReLU")   # the output layer takes any of ACTIVATIONS
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def activation_name(arg: str, value, choices: Sequence[str]) -> str:
    """The canonical spelling of an activation name (matched case-insensitively, as tcnn)."""
    return tcnn_choice("fused_mlp", arg, value, choices)


def fused_mlp(x: torch.Tensor, weights: Sequence[torch.Tensor], *, activation: str = "ReLU",
              output_activation: str = "None", backend: Optional[str] = None) -> torch.Tensor:
    """A bias-free MLP: ``out_act(... act(act(x W_0ᵀ) W_1ᵀ) ... W_nᵀ)``.

    Args:
        x: [..., K] floating point.
        weights: the layers' matrices in ``nn.Linear`` layout: [H, K], then [H, H] for each
            further hidden layer, then [O, H] (at least two: one hidden layer). Same dtype and
            device as x.
        activation: of the hidden layers, "ReLU" or "None" (case-insensitive).
        output_activation: "None", "ReLU" or "Sigmoid".
        backend: "cpu" or "reference"; default: FASTGEN_BACKEND, else the fastest available.

    Returns:
        [..., O] in x's dtype; differentiable to x and every weight.
    """
    name = "fused_mlp"
    if not isinstance(x, torch.Tensor) or x.dtype not in _DTYPES:
        raise TypeError(f"{name}: x must be a float16, bfloat16, float32 or float64 tensor, got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.ndim < 1:
        raise ValueError(f"{name}: x must be [..., K], got a scalar")
    act = activation_name("activation", activation, HIDDEN_ACTIVATIONS)
    out_act = activation_name("output_activation", output_activation, ACTIVATIONS)
    if isinstance(weights, torch.Tensor) or not hasattr(weights, "__iter__"):
        raise TypeError(f"{name}: weights must be a sequence of matrices (a list, tuple or "
                        f"ParameterList), got {type(weights).__name__}")
    weights = list(weights)
    if len(weights) < 2:
        raise ValueError(f"{name}: weights must hold at least 2 matrices (one hidden layer), "
                         f"got {len(weights)}")
    k = x.shape[-1]
    for i, w in enumerate(weights):
        if not isinstance(w, torch.Tensor):
            raise TypeError(f"{name}: weights[{i}] must be a torch.Tensor, got "
                            f"{type(w).__name__}")
        if w.dtype != x.dtype or w.device != x.device:
            raise TypeError(f"{name}: weights[{i}] is {w.dtype} on {w.device}; x is {x.dtype} on "
                            f"{x.device} (one dtype and device expected)")
        if w.ndim != 2 or w.shape[1] != k or w.shape[0] < 1:
            raise ValueError(f"{name}: weights[{i}] must be [N, {k}] with N >= 1 (its input is "
                             f"{'x' if i == 0 else f'weights[{i - 1}]'}'s output), got "
                             f"{list(w.shape)}")
        if 0 < i < len(weights) - 1 and w.shape[0] != weights[0].shape[0]:
            raise ValueError(f"{name}: every hidden layer must have one width "
                             f"{weights[0].shape[0]}, weights[{i}] has {w.shape[0]}")
        k = w.shape[0]
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), x.shape[-1])
    args = (x2, weights, act, out_act)
    out = _OP.select(x.device.type, args, backend).fn(*args)
    return out.reshape(*lead, weights[-1].shape[0])


# --- C++ ops: fake kernels and autograd ----------------------------------------------------------

def _codes(act: str, out_act: str) -> tuple[int, int]:
    return ACTIVATIONS.index(act), ACTIVATIONS.index(out_act)


def _fake_fwd(x, weights, activation, output_activation, save_hidden):
    rows = x.shape[0] if save_hidden else 0
    hidden = [x.new_empty(rows, weights[0].shape[0]) for _ in weights[:-1]]
    return x.new_empty(x.shape[0], weights[-1].shape[0]), hidden


def _fake_bwd(grad_y, x, weights, y, hidden, activation, output_activation, need_x):
    return x.new_empty(x.shape if need_x else (0,)), [torch.empty_like(w) for w in weights]


def _setup_fwd(ctx, inputs, output):
    x, weights, activation, output_activation, save_hidden = inputs
    y, hidden = output
    # hidden is an internal output (the wrapper never returns it): no gradient flows through it,
    # and no zero gradients are built for it
    ctx.mark_non_differentiable(*hidden)
    ctx.set_materialize_grads(False)
    ctx.saved = save_hidden
    ctx.n = len(weights)
    ctx.codes = (activation, output_activation)
    ctx.save_for_backward(x, y, *weights, *hidden)


def _backward_fwd(ctx, grad_y, grad_hidden):
    x, y, *rest = ctx.saved_tensors
    weights, hidden = rest[:ctx.n], rest[ctx.n:]
    act, out_act = ctx.codes
    if grad_y is None:
        grad_y = torch.zeros_like(y)
    if torch.is_grad_enabled():   # create_graph=True: differentiate through the reference
        inputs = [t for t in (x, *weights) if t.requires_grad]
        with torch.enable_grad():
            out = _ref.fused_mlp(x, weights, ACTIVATIONS[act], ACTIVATIONS[out_act])
            found = iter(torch.autograd.grad(out, inputs, grad_y, create_graph=True,
                                             allow_unused=True))
        gx, *gw = [next(found) if t.requires_grad else None for t in (x, *weights)]
        gw = [g if g is not None else torch.zeros_like(w) for g, w in zip(gw, weights)]
        return gx, gw, None, None, None
    if not ctx.saved:
        raise RuntimeError("fused_mlp: mlp_fwd ran with save_hidden=False; its backward needs "
                           "the hidden activations (call it with save_hidden=True)")
    need_x = ctx.needs_input_grad[0]
    gx, gw = torch.ops.fastgen.mlp_bwd(grad_y.contiguous(), x, weights, y, hidden, act, out_act,
                                       need_x)
    return (gx if need_x else None), list(gw), None, None, None


if _ext.has_op("mlp_fwd"):
    torch.library.register_fake("fastgen::mlp_fwd")(_fake_fwd)
    torch.library.register_fake("fastgen::mlp_bwd")(_fake_bwd)
    torch.library.register_autograd("fastgen::mlp_fwd", _backward_fwd, setup_context=_setup_fwd)


# --- backends ----------------------------------------------------------------------------------

def _run_cpu(x, weights, act, out_act):
    # The hidden activations are kept only when a backward can follow.
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *weights))
    y, _ = torch.ops.fastgen.mlp_fwd(x.contiguous(), [w.contiguous() for w in weights],
                                     *_codes(act, out_act), save)
    return y


def _check_cpu(x, weights, act, out_act) -> Optional[str]:
    if x.dtype not in (torch.float32, torch.float64):
        return f"{x.dtype} (float32 and float64 only)"
    return None


_OP = registry.register("fused_mlp", [
    registry.Backend("cpu", _run_cpu, devices=("cpu",),
                     available=functools.partial(_ext.native_available, "mlp_fwd"),
                     check=_check_cpu, summary="csrc/cpu/mlp.cpp"),
    registry.Backend("reference", _ref.fused_mlp, summary="fastgen/reference/mlp.py"),
])

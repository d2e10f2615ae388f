"""fused_mlp: a small bias-free MLP run layer after layer on tiles of rows that stay in cache.

    h_0 = x,  h_l = act(h_{l-1} · W_lᵀ)  (hidden layers, one width),  y = out_act(h_n · W_outᵀ)

The network tiny-cuda-nn's FullyFusedMLP computes (no biases; ReLU or linear hidden layers; an
output activation), for the narrow MLPs behind hash-grid encodings: 16-128 neurons, a few layers,
10^4-10^6 rows. PyTorch runs such an MLP as separate GEMMs with each activation a round trip
through memory, and its ReLU and ReLU backward as passes of their own; the CPU kernel keeps each
tile of rows in L1/L2 through every layer, forward and backward (csrc/cpu/mlp.cpp).
``fused_mlp_mse`` adds an L2 loss on the output and runs forward, loss and backward of each tile
in one pass (no hidden activation stored; the gradients are formed in the call).

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

__all__ = ["fused_mlp", "fused_mlp_mse", "ACTIVATIONS", "HIDDEN_ACTIVATIONS"]

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
    act, out_act, weights = _check_args("fused_mlp", x, weights, activation, output_activation)
    lead = x.shape[:-1]
    x2 = x.reshape(math.prod(lead), x.shape[-1])
    args = (x2, weights, act, out_act)
    out = _OP.select(x.device.type, args, backend).fn(*args)
    return out.reshape(*lead, weights[-1].shape[0])


def fused_mlp_mse(x: torch.Tensor, weights: Sequence[torch.Tensor], target: torch.Tensor, *,
                  activation: str = "ReLU", output_activation: str = "None",
                  backend: Optional[str] = None, planar: bool = False) -> torch.Tensor:
    """The mean squared error of :func:`fused_mlp`'s output against ``target``, in one pass:
    ``((fused_mlp(x, weights, ...) - target) ** 2).mean()``.

    For training loops whose loss is an L2 loss straight on the MLP's output (a neural image, a
    NeRF's colour fit). On the ``cpu`` backend each tile of rows runs forward, loss and backward
    while its activations are in cache, so no hidden activation is stored: the gradients to x and
    the weights are computed during this call whenever autograd will need them (grad mode on and
    an input requires grad), and ``loss.backward()`` only scales them by the incoming gradient.
    (Liger-Kernel's fused linear cross-entropy computes its gradients in the forward the same
    way.) Without autograd it costs a forward.

    Args:
        x, weights, activation, output_activation, backend: as :func:`fused_mlp`.
        target: [..., O] like the output (x's leading dims, the last weight's rows), x's dtype
            and device; it may require grad.
        planar: x is given planar, [G, M, F] for the input matrix [M, G * F] (column g * F + f
            = ``x[g, m, f]``): :func:`fastgen.ops.hashgrid_encode`'s ``planar=True`` output, read
            without a transposed copy (the cpu backend; the reference transposes). target is
            then [M, O].

    Returns:
        A scalar of x's dtype (the squared errors are summed in float64 on the ``cpu`` backend);
        NaN when there are no rows (as ``torch.mean`` of nothing).
    """
    if planar:
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"fused_mlp_mse: planar x must be [G, M, F], got {got}")
        act, out_act, weights = _check_args("fused_mlp_mse", x, weights, activation,
                                            output_activation, k=x.shape[0] * x.shape[2])
        _check_target(target, (x.shape[1], weights[-1].shape[0]), x)
        args = (x, weights, target, act, out_act)
        chosen = _MSE.select(x.device.type, args, backend)
        if chosen.name != "cpu":   # the [M, G * F] matrix x stands for
            args = (_unplanar(x), weights, target, act, out_act)
        return chosen.fn(*args)
    act, out_act, weights = _check_args("fused_mlp_mse", x, weights, activation,
                                        output_activation)
    out_shape = (*x.shape[:-1], weights[-1].shape[0])
    _check_target(target, out_shape, x)
    rows = math.prod(x.shape[:-1])
    args = (x.reshape(rows, x.shape[-1]), weights, target.reshape(rows, out_shape[-1]), act,
            out_act)
    return _MSE.select(x.device.type, args, backend).fn(*args)


def _check_target(target, out_shape, x) -> None:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"fused_mlp_mse: target must be a torch.Tensor, got "
                        f"{type(target).__name__}")
    if tuple(target.shape) != tuple(out_shape):
        raise ValueError(f"fused_mlp_mse: target must be {list(out_shape)} (the MLP's output for "
                         f"x), got {list(target.shape)}")
    if target.dtype != x.dtype or target.device != x.device:
        raise TypeError(f"fused_mlp_mse: target is {target.dtype} on {target.device}; x is "
                        f"{x.dtype} on {x.device} (one dtype and device expected)")


def _unplanar(x: torch.Tensor) -> torch.Tensor:
    """Planar [G, M, F] -> the [M, G * F] matrix it stores (a copy)."""
    return x.transpose(0, 1).reshape(x.shape[1], x.shape[0] * x.shape[2])


def _check_args(name: str, x, weights, activation, output_activation, k=None):
    """Checks fused_mlp's arguments (k: x's width, default x.shape[-1]); returns (activation,
    output_activation, weights as a list)."""
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
    k = x.shape[-1] if k is None else k
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
    return act, out_act, weights


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


def _reference_grads(fn, inputs, grad) -> list:
    """Gradients of fn(*inputs) (a reference, differentiable to any order) to every input that
    requires grad, None for the others, with create_graph=True (for double backward)."""
    wanted = [t for t in inputs if t.requires_grad]
    with torch.enable_grad():
        found = iter(torch.autograd.grad(fn(*inputs), wanted, grad, create_graph=True,
                                         allow_unused=True))
    return [next(found) if t.requires_grad else None for t in inputs]


def _backward_fwd(ctx, grad_y, grad_hidden):
    x, y, *rest = ctx.saved_tensors
    weights, hidden = rest[:ctx.n], rest[ctx.n:]
    act, out_act = ctx.codes
    if grad_y is None:
        grad_y = torch.zeros_like(y)
    if torch.is_grad_enabled():   # create_graph=True: differentiate through the reference
        gx, *gw = _reference_grads(
            lambda x, *w: _ref.fused_mlp(x, w, ACTIVATIONS[act], ACTIVATIONS[out_act]),
            (x, *weights), grad_y)
        gw = [g if g is not None else torch.zeros_like(w) for g, w in zip(gw, weights)]
        return gx, gw, None, None, None
    if not ctx.saved:
        raise RuntimeError("fused_mlp: mlp_fwd ran with save_hidden=False; its backward needs "
                           "the hidden activations (call it with save_hidden=True)")
    need_x = ctx.needs_input_grad[0]
    gx, gw = torch.ops.fastgen.mlp_bwd(grad_y.contiguous(), x, weights, y, hidden, act, out_act,
                                       need_x)
    return (gx if need_x else None), list(gw), None, None, None


def _fake_mse(x, weights, target, activation, output_activation, need_grad, need_x):
    gx = x.new_empty(x.shape if need_grad and need_x else (0,))
    gw = [torch.empty_like(w) if need_grad else w.new_empty(0) for w in weights]
    return x.new_empty(()), x.new_empty(target.shape), gx, gw


def _is_one(grad: torch.Tensor) -> bool:
    """Whether a real CPU scalar gradient is exactly 1 (read eagerly; False while tracing)."""
    from torch._subclasses.fake_tensor import is_fake
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    return (grad.device.type == "cpu" and grad.numel() == 1 and not is_fake(grad) and
            not torch.compiler.is_compiling() and get_proxy_mode() is None and
            grad.item() == 1.0)


def _setup_mse(ctx, inputs, output):
    x, weights, target, activation, output_activation, need_grad, need_x = inputs
    _, y, gx, gw = output
    ctx.mark_non_differentiable(y, gx, *gw)
    ctx.set_materialize_grads(False)
    ctx.codes = (activation, output_activation)
    ctx.save_for_backward(x, target, y, *weights)
    # The gradients are handed over (not saved) to the first backward: as they are when its
    # incoming gradient is 1 (the caller then owns them: x.grad may be accumulated into in
    # place), else scaled; either way they are dropped here, and a later backward through a
    # retained graph computes them again.
    ctx.grads = (gx if need_x else None, list(gw)) if need_grad else None


def _backward_mse(ctx, grad_loss, *_):
    x, target, y, *weights = ctx.saved_tensors
    need_x, need_w, need_t = ctx.needs_input_grad[:3]
    need_w = any(need_w) if isinstance(need_w, (list, tuple)) else bool(need_w)
    if grad_loss is None:
        grad_loss = y.new_zeros(())
    if torch.is_grad_enabled():   # create_graph=True: differentiate through the reference
        act, out_act = (ACTIVATIONS[c] for c in ctx.codes)
        gx, gt, *gw = _reference_grads(
            lambda x, t, *w: _ref.fused_mlp_mse(_unplanar(x) if x.dim() == 3 else x, w, t, act,
                                                out_act), (x, target, *weights), grad_loss)
        gw = [g if g is not None else torch.zeros_like(w) for g, w in zip(gw, weights)]
        return gx, gw, gt, None, None, None, None
    gx, gw = None, [None] * len(weights)
    if need_x or need_w:
        grads, ctx.grads = ctx.grads, None
        if grads is None or (need_x and grads[0] is None):   # handed over before (or never made)
            _, _, gx, gw = torch.ops.fastgen.mlp_mse(x, weights, target, *ctx.codes, True,
                                                     need_x)
        else:
            gx, gw = grads
        gx = gx if need_x else None
        if not _is_one(grad_loss):   # else handed over as they are: no pass over gx
            gx = None if gx is None else gx * grad_loss
            gw = [g * grad_loss for g in gw]
    # d loss / d target = -2 (y - target) / numel
    gt = (target - y) * (2.0 / max(y.numel(), 1)) * grad_loss if need_t else None
    return gx, gw, gt, None, None, None, None


if _ext.has_op("mlp_fwd"):
    torch.library.register_fake("fastgen::mlp_fwd")(_fake_fwd)
    torch.library.register_fake("fastgen::mlp_bwd")(_fake_bwd)
    torch.library.register_autograd("fastgen::mlp_fwd", _backward_fwd, setup_context=_setup_fwd)
if _ext.has_op("mlp_mse"):
    torch.library.register_fake("fastgen::mlp_mse")(_fake_mse)
    torch.library.register_autograd("fastgen::mlp_mse", _backward_mse, setup_context=_setup_mse)


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


def _run_cpu_mse(x, weights, target, act, out_act):
    # the gradients to x and the weights are made in the forward when autograd will want them
    # (a target that alone requires grad needs only y)
    need = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *weights))
    loss, *_ = torch.ops.fastgen.mlp_mse(x.contiguous(), [w.contiguous() for w in weights],
                                         target.contiguous(), *_codes(act, out_act), need,
                                         need and x.requires_grad)
    return loss


_MSE = registry.register("fused_mlp_mse", [
    registry.Backend("cpu", _run_cpu_mse, devices=("cpu",),
                     available=functools.partial(_ext.native_available, "mlp_mse"),
                     check=lambda x, ws, t, act, out_act: _check_cpu(x, ws, act, out_act),
                     summary="csrc/cpu/mlp.cpp (forward, loss and "
                     "backward in one pass)"),
    registry.Backend("reference", _ref.fused_mlp_mse, summary="fastgen/reference/mlp.py"),
])

"""When an op may skip PyTorch's machinery: shared by the ops with an eager fast path
(fastgen.ops.randn, fastgen.ops.sampler_step's direct CPU call)."""

from __future__ import annotations

import torch

__all__ = ["plain_eager"]

_compiling = torch.compiler.is_compiling
_functorch_active = torch._C._are_functorch_transforms_active
_dispatch_modes = torch._C._len_torch_dispatch_stack
_jit_tracing = torch._C._get_tracing_state


def plain_eager() -> bool:
    """False while torch.compile or torch.jit traces, a functorch transform (vmap, grad)
    runs or a Python dispatch mode (fake tensors, RNG-tracking or op-recording modes) is
    active: those must see torch's own ops, not a kernel called around the dispatcher."""
    return not (_compiling() or _functorch_active() or _dispatch_modes() != 0
                or _jit_tracing() is not None)

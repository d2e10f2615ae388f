"""randn: ``torch.randn`` on a CPU generator, bit for bit, several times faster.

A seeded diffusers sampler is reproducible only if every noise draw is exactly ``torch.randn``'s,
so the stochastic sampler steps (DDPM, Euler ancestral, DPM-Solver++ SDE) cannot use another
generator. On the CPU that draw dominated the step: torch makes the MT19937 words one at a time,
then the normals. This op makes the same words a 624-word block at a time with vector
instructions, converts them in parallel with the same float32 Box–Muller arithmetic torch uses,
and leaves the generator exactly where ``torch.randn`` would (same state, same later draws).

Which float32 log / sin / cos torch uses depends on its CPU dispatch (8-lane Cephes polynomials in
its AVX2 kernels, the C library's functions in the others), so the ``cpu`` backend first checks on
a probe which of its two variants reproduces this torch bit for bit, and is unavailable when
neither does. Calls it cannot serve run ``torch.randn`` itself (the same numbers, only not
faster): CUDA tensors, float64 and complex dtypes, fewer than 16 elements, and traced or
transformed calls (torch.compile or torch.jit traces, functorch transforms such as vmap, dispatch
modes such as fake tensors), which must see torch's own random op.

Files of this op family:

    fastgen/ops/randn.py         this file: randn, backends, fake kernel
    fastgen/reference/randn.py   torch.randn, and the algorithm spelled out in float64
    csrc/cpu/randn.cpp           backend ``cpu``
    tests/ops/test_randn.py      tests; fastgen/bench/randn.py benchmark case
"""

from __future__ import annotations

import functools
import numbers
from typing import Optional, Sequence, Union

import torch
from torch.utils import _python_dispatch

from .. import _ext, registry
from ..reference import randn as _ref
from ._eager import plain_eager

__all__ = ["randn"]

_FAST_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def randn(size: Union[int, Sequence[int]], *, generator: Optional[torch.Generator] = None,
          dtype: Optional[torch.dtype] = None, device: Optional[Union[str, torch.device]] = None,
          backend: Optional[str] = None) -> torch.Tensor:
    """``torch.randn(size, generator=generator, dtype=dtype, device=device)``, bit for bit.

    Args:
        size: the shape (an int or a sequence of ints).
        generator: a ``torch.Generator`` (the default one of the device when None); advanced
            exactly as ``torch.randn`` advances it.
        dtype: floating or complex dtype (torch's default dtype when None).
        device: where the tensor is made (torch's default device when None).
        backend: ``"cpu"`` (CPU tensors and generators; the fast kernel draws float32 /
            float16 / bfloat16 tensors of at least 16 elements, ``torch.randn`` the rest) or
            ``"reference"`` (``torch.randn``); None picks ``cpu`` when it can serve the call and
            ``torch.randn`` otherwise, without a warning (the numbers are the same). Traced or
            transformed calls (torch.compile, vmap and other functorch transforms, fake tensors
            and other dispatch modes) always run ``torch.randn``, which those systems know.
    """
    shape = _shape(size)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"randn: generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    if dtype is not None and (not isinstance(dtype, torch.dtype)
                              or not (dtype.is_floating_point or dtype.is_complex)):
        raise TypeError(f"randn: dtype must be a floating or complex torch.dtype, got {dtype!r}")
    if not plain_eager():
        if backend is not None:
            _OP.backend(backend)  # an unknown name is still an error
        return _run_reference(shape, generator, dtype, device)
    if dtype is None:
        dtype = torch.get_default_dtype()
    dev = torch.device(device) if device is not None else _default_device()
    args = (shape, generator, dtype, dev)
    if backend is None and registry._env_choice(_OP) is None:
        # No choice made: cpu when it can, else torch.randn without the registry's fall-back
        # warning (it gives the same numbers).
        fast = _OP.reason(_CPU, dev.type, args) is None
        return (_run_cpu if fast else _run_reference)(*args)
    return _OP.select(dev.type, args, backend).fn(*args)


_CPU_DEVICE = torch.device("cpu")


def _default_device() -> torch.device:
    """torch.get_default_device(), without its cost in the common case: a default device other
    than the CPU is always a torch-function mode (set_default_device, ``with torch.device``)."""
    if not torch._C._is_torch_function_mode_enabled():
        return _CPU_DEVICE
    return torch.get_default_device()


def _shape(size) -> tuple[int, ...]:
    if type(size) in (tuple, torch.Size) and all(type(d) is int and d >= 0 for d in size):
        return tuple(size)  # the common case, without the numbers ABC checks below
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        size = (size,)
    if isinstance(size, torch.Size):
        return tuple(size)
    try:
        shape = tuple(size)
    except TypeError:
        shape = None
    if shape is None or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool)
                                and d >= 0 for d in shape):
        raise ValueError(f"randn: size must be an int or a sequence of non-negative ints, got "
                         f"{size!r}")
    return tuple(int(d) for d in shape)


# --- backends ----------------------------------------------------------------------------------

def _run_reference(shape, generator, dtype, device):
    return _ref.randn(shape, generator=generator, dtype=dtype, device=device)


def _run_cpu(shape, generator, dtype, device):
    numel = 1
    for d in shape:
        numel *= d
    # torch draws fewer than 16 values (and float64 / complex ones) another way; randn() already
    # sent traced and transformed calls to torch.randn
    if dtype not in _FAST_DTYPES or numel < 16:
        return _run_reference(shape, generator, dtype, device)
    out = torch.empty(shape, dtype=dtype, device=device)
    torch.ops.fastgen.randn_(out, generator, _variant())
    return out


def _cpu_reason(shape, generator, dtype, device) -> Optional[str]:
    """Why the cpu backend cannot serve this call (None: it can)."""
    if device.type != "cpu":
        return f"draws CPU tensors, not {device.type}"
    if generator is not None and generator.device.type != "cpu":
        return f"draws from CPU generators, not {generator.device.type}"
    return None


def _fake(out, generator, variant):
    return None


if _ext.has_op("randn_"):
    torch.library.register_fake("fastgen::randn_")(_fake)


@functools.lru_cache(maxsize=None)
def _probe() -> tuple[Optional[int], Optional[str]]:
    """(variant, None) for the kernel variant that reproduces this torch's randn on a probe, or
    (None, why) when none does."""
    why = _ext.native_available("randn_", "cpu")
    if why:
        return None, why
    # Plain CPU tensors whatever the caller's context (a default device, an active mode).
    with _python_dispatch._disable_current_modes(), torch._C.DisableTorchFunction():
        return _probe_variants()


def _probe_variants() -> tuple[Optional[int], Optional[str]]:
    n = 3 * 624 + 9  # crosses MT19937 blocks, ends with a partial block of 16
    for variant in (0, 1):
        ok = True
        for dtype, seed in ((torch.float32, 1234), (torch.bfloat16, 99), (torch.float16, 7)):
            g_ref = torch.Generator().manual_seed(seed)
            g_fast = torch.Generator().manual_seed(seed)
            want = torch.randn(n, generator=g_ref, dtype=dtype, device="cpu")
            got = torch.empty(n, dtype=dtype, device="cpu")
            try:  # variant 0 needs an AVX2 build
                torch.ops.fastgen.randn_(got, g_fast, variant)
            except RuntimeError:
                ok = False
                break
            bits = torch.int32 if dtype == torch.float32 else torch.int16
            if not (torch.equal(want.view(bits), got.view(bits))
                    and torch.equal(g_ref.get_state(), g_fast.get_state())):
                ok = False
                break
        if ok:
            return variant, None
    return None, ("this torch's randn uses a float32 Box–Muller evaluation the kernel does not "
                  "reproduce (checked on a probe)")


def _variant() -> int:
    variant, why = _probe()
    if variant is None:
        raise registry.BackendError(f"fastgen.ops.randn: backend 'cpu' cannot run: {why}")
    return variant


def _cpu_available(device_type: str) -> Optional[str]:
    return _probe()[1]


_CPU = registry.Backend("cpu", _run_cpu, devices=("cpu",), available=_cpu_available,
                        check=_cpu_reason, summary="csrc/cpu/randn.cpp")
_OP = registry.register("randn", [
    _CPU, registry.Backend("reference", _run_reference, summary="fastgen/reference/randn.py")])

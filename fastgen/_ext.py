"""Loading the compiled extension ``fastgen._C`` safely, and what it was built with.

Loading registers the C++ ops of ``torch.ops.fastgen``. It never compiles anything and never
initialises CUDA. ``FASTGEN_NO_EXT=1`` skips it (to compare against, or to rule it out). A
build for another torch version or for an instruction set this CPU lacks is refused up front.
When the extension is missing or unusable, the reason is recorded (and shown by ``fastgen info``
and by backend-selection errors) instead of raising at ``import fastgen``.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Optional

_BUILD_INFO_PATH = os.path.join(os.path.dirname(__file__), "_build_info.json")
_state: dict = {"tried": False, "module": None, "reason": None}


def build_info() -> dict:
    """Build choices recorded by setup.py (ext, cuda, cpu_isa, torch, cuda_version, ...)."""
    try:
        with open(_BUILD_INFO_PATH) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _cpu_lacks(isa: Optional[str]) -> Optional[str]:
    import torch

    checks = {"avx2": "_is_avx2_supported", "avx512": "_is_avx512_supported"}
    probe = getattr(torch.cpu, checks.get(isa or "", ""), None)
    if probe is not None and not probe():
        return (f"fastgen._C was built for {isa} but this CPU lacks it; rebuild with "
                "FASTGEN_CPU_ISA=none (or avx2)")
    return None


def _torch_differs(built_against: Optional[str]) -> Optional[str]:
    """A binary built against another torch may load and then crash (C++ ABI): refuse it."""
    import torch

    if built_against and built_against != torch.__version__:
        return (f"fastgen._C was built against torch {built_against} but torch "
                f"{torch.__version__} is running; rebuild: pip install --no-build-isolation -e .")
    return None


def load() -> Optional[object]:
    """Import fastgen._C once; returns the module or None (see :func:`unavailable_reason`)."""
    if _state["tried"]:
        return _state["module"]
    _state["tried"] = True
    if os.environ.get("FASTGEN_NO_EXT") == "1":
        _state["reason"] = "disabled by FASTGEN_NO_EXT=1"
        return None
    info = build_info()
    if info and not info.get("ext", False):
        _state["reason"] = "the extension was not built (FASTGEN_BUILD_EXT=0 at install time)"
        return None
    reason = _cpu_lacks(info.get("cpu_isa")) or _torch_differs(info.get("torch"))
    if reason:
        _state["reason"] = reason
        return None
    try:
        _state["module"] = importlib.import_module("fastgen._C")
    except ImportError as e:
        _state["reason"] = (f"fastgen._C failed to import ({e}); reinstall with "
                            "`pip install --no-build-isolation -e .` against this torch")
    return _state["module"]


def available() -> bool:
    return load() is not None


def unavailable_reason() -> Optional[str]:
    load()
    return _state["reason"]


def compiled_info() -> dict:
    """What the loaded binary reports about itself (empty when it is not loaded)."""
    mod = load()
    return dict(mod.build_info()) if mod is not None else {}


def has_op(name: str) -> bool:
    """True when the loaded extension registered ``torch.ops.fastgen.<name>``."""
    import torch

    return available() and hasattr(torch.ops.fastgen, name)


def native_available(op: str, device_type: str) -> "str | None":
    """Why the compiled ``fastgen::<op>`` cannot run on ``device_type`` here, or None when it
    can (a registry ``available`` check for ops with C++ / CUDA kernels)."""
    import torch

    if not has_op(op):
        return unavailable_reason() or f"fastgen._C has no {op} (rebuild the extension)"
    key = "CUDA" if device_type == "cuda" else "CPU"
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastgen::{op}", key):
        return f"fastgen._C was built without {device_type} kernels for {op}"
    if device_type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    return None


def registered_ops() -> list[str]:
    """Every op of the ``fastgen`` namespace known to the dispatcher, C++ and Python alike."""
    import torch

    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastgen::"))


def cpu_buffer_cache() -> dict:
    """State of fastgen's cache of large CPU buffers (its ops' outputs and scratch of 1 MiB or
    more are reused across calls instead of being faulted in fresh every time).

    Keys: ``cached_bytes`` and ``cached_blocks`` (free, held for reuse), ``hits`` and ``misses``
    (requests served from the cache / newly allocated), ``capacity_bytes`` (the most the cache
    holds: the environment variable ``FASTGEN_CPU_POOL_MB``, read once when the cache is first
    used; 0 turns it off; default 512). Empty when the extension is not loaded. A malformed
    ``FASTGEN_CPU_POOL_MB`` raises RuntimeError naming it (here and from the first op that
    allocates a large CPU buffer).
    """
    mod = load()
    return dict(mod.cpu_pool_stats()) if mod is not None else {}


def empty_cpu_cache() -> None:
    """Return every cached CPU buffer to the system (buffers in use are unaffected); the CPU
    counterpart of ``torch.cuda.empty_cache``. A no-op without the extension."""
    mod = load()
    if mod is not None:
        mod.cpu_pool_release()

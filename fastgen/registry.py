"""Which implementation runs an op: one registry for every fastgen op.

The PyTorch dispatcher picks the device (plain eager CPU calls of sampler_step skip it and call
the kernel directly: fastgen/ops/sampler.py); this registry picks the implementation for that
device.
Each op declares its backends in order of preference (``cuda``, ``triton``, ``cpu``, ``reference``),
and each backend says on which device types it runs and, for a given call, why it cannot. The
choice, made at call time:

1. ``backend=`` passed to the op: that backend, or an error;
2. the ``FASTGEN_BACKEND`` environment variable: ``triton`` (every op that has a triton backend),
   ``bias_act=reference`` (one op), or both comma-separated (``reference,bias_act=cpu``). A
   backend named for an op must run the call, or it is an error (so ``FASTGEN_BACKEND=cpu`` makes
   calls on CUDA tensors fail loudly instead of quietly running elsewhere);
3. otherwise the first backend, in preference order, that can run the call.

When nothing can run, :class:`BackendError` lists every backend and why it was rejected. A fall
back to ``reference`` is never silent: ``fastgen info`` and :func:`describe` show the backend each
op uses on each device, and the first automatic fall back warns once.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

__all__ = ["Backend", "Op", "BackendError", "register", "get", "ops", "describe", "BACKEND_NAMES",
           "ENV_VAR", "triton_available", "use_backend"]

ENV_VAR = "FASTGEN_BACKEND"
BACKEND_NAMES = ("cuda", "triton", "cpu", "reference")


class BackendError(RuntimeError):
    """No backend can run the call (or the requested one cannot)."""


@dataclass(frozen=True)
class Backend:
    """One implementation of an op.

    fn:        the implementation, called with the op's checked, normalised arguments.
    devices:   device types it runs on (``()`` = any).
    available: check for one device type, e.g. "is the extension built"; returns why not, or
               None. Evaluated once per device type, on first use (never at import).
    check:     per-call check on the arguments (dtype, feature flags); returns why not, or None.
    explicit_only_on: device types where it runs only when asked for by name (Triton on CPU
               runs under the interpreter, which is for debugging, not speed).
    """

    name: str
    fn: Callable
    devices: tuple[str, ...] = ()
    available: Callable[[str], Optional[str]] = lambda device_type: None
    check: Optional[Callable[..., Optional[str]]] = None
    explicit_only_on: tuple[str, ...] = ()
    summary: str = ""


@dataclass
class Op:
    name: str
    backends: Sequence[Backend]
    _availability: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        names = [b.name for b in self.backends]
        unknown = set(names) - set(BACKEND_NAMES)
        if unknown or len(set(names)) != len(names):
            raise ValueError(f"{self.name}: backends must be distinct names from {BACKEND_NAMES}, "
                             f"got {names}")

    def backend(self, name: str) -> Backend:
        for b in self.backends:
            if b.name == name:
                return b
        raise BackendError(f"{self.name}: unknown backend {name!r}; this op has "
                           f"{', '.join(b.name for b in self.backends)}")

    def _available(self, b: Backend, device_type: str) -> Optional[str]:
        key = (b.name, device_type)
        if key not in self._availability:
            self._availability[key] = b.available(device_type)
        return self._availability[key]

    def reason(self, b: Backend, device_type: str, args: tuple = (), explicit: bool = False
               ) -> Optional[str]:
        """Why backend ``b`` cannot run this call on ``device_type`` (None: it can)."""
        if b.devices and device_type not in b.devices:
            return f"runs on {'/'.join(b.devices)} tensors, not {device_type}"
        why = self._available(b, device_type)
        if why:
            return why
        if not explicit and device_type in b.explicit_only_on:
            return f"on {device_type} only when requested (backend='{b.name}')"
        if b.check is not None and args:
            return b.check(*args)
        return None

    def reasons(self, device_type: str, args: tuple = (), explicit: bool = False) -> dict:
        return {b.name: self.reason(b, device_type, args, explicit) for b in self.backends}

    def select(self, device_type: str, args: tuple = (), backend: Optional[str] = None
               ) -> Backend:
        """The backend that runs this call; see the module docstring for the order."""
        requested, source = backend, "backend="
        if requested is None:
            requested, source = _env_choice(self), ENV_VAR
        if requested is not None:
            b = self.backend(requested)
            why = self.reason(b, device_type, args, explicit=True)
            if why is None:
                return b
            raise BackendError(self._failure(device_type, args, f"{source}{requested!r} cannot "
                                             f"run this call: {why}", explicit=True))
        for b in self.backends:
            if self.reason(b, device_type, args) is None:
                if b.name == "reference" and len(self.backends) > 1:
                    _warn_fallback(self, device_type, args)
                return b
        raise BackendError(self._failure(device_type, args, "no backend can run this call"))

    def _failure(self, device_type, args, headline, explicit=False) -> str:
        lines = [f"fastgen.ops.{self.name} on {device_type}: {headline}. Backends:"]
        for name, why in self.reasons(device_type, args, explicit).items():
            lines.append(f"  {name:<10} {'can run' if why is None else why}")
        return "\n".join(lines)


_OPS: dict[str, Op] = {}
_warned: set = set()


def register(name: str, backends: Sequence[Backend]) -> Op:
    """Declare op ``name`` with its backends, most preferred first."""
    op = Op(name, list(backends))
    _OPS[name] = op
    return op


def get(name: str) -> Op:
    return _OPS[name]


def ops() -> dict[str, Op]:
    return dict(_OPS)


_ENV_CACHE: dict = {}
# os.environ keeps its values in a dict keyed by the encoded name; reading that dict costs 0.1 µs
# where os.environ.get costs ~1 µs (Mapping.get -> __getitem__ -> encode), on ops' hot paths.
# (Read through os.environ on every call, so a replaced os.environ is followed too.)
_ENV_KEY = os.environ.encodekey(ENV_VAR) if hasattr(os.environ, "encodekey") else None


def env_token() -> object:
    """FASTGEN_BACKEND's stored value as it is (no decoding; None when unset): cheap, and it
    changes whenever the variable does, for caches keyed on the variable."""
    data = getattr(os.environ, "_data", None)
    if type(data) is dict and _ENV_KEY is not None:
        return data.get(_ENV_KEY)
    return os.environ.get(ENV_VAR)


def env_rule() -> str:
    """The current value of FASTGEN_BACKEND ("" when unset), read cheaply."""
    raw = env_token()
    if raw is None:
        return ""
    return os.environ.decodevalue(raw) if type(raw) is bytes else str(raw)


def _env_choice(op: Op) -> Optional[str]:
    raw = env_rule()
    if not raw:
        return None
    key = (raw, op.name)
    if key not in _ENV_CACHE:  # parsed once per value: ops on hot paths read it every call
        _ENV_CACHE[key] = _parse_env_choice(op, raw.strip())
    return _ENV_CACHE[key]


def _parse_env_choice(op: Op, raw: str) -> Optional[str]:
    if not raw:
        return None
    default = None
    for item in (p.strip() for p in raw.split(",") if p.strip()):
        key, sep, value = item.partition("=")
        if sep and key.strip() == op.name:
            return value.strip()
        if not sep:
            if item not in BACKEND_NAMES:
                raise BackendError(f"{ENV_VAR}={raw!r}: {item!r} is not a backend name "
                                   f"({', '.join(BACKEND_NAMES)})")
            default = item
    if default is not None and any(b.name == default for b in op.backends):
        return default
    return None


def _warn_fallback(op: Op, device_type: str, args: tuple) -> None:
    key = (op.name, device_type)
    if key in _warned:
        return
    _warned.add(key)
    why = "; ".join(f"{n}: {r}" for n, r in op.reasons(device_type, args).items()
                    if r is not None and n != "reference")
    warnings.warn(f"fastgen.ops.{op.name} on {device_type} falls back to the PyTorch reference "
                  f"({why})", RuntimeWarning, stacklevel=4)


def triton_available(device_type: str) -> Optional[str]:
    """``available`` check shared by every Triton backend: why it cannot run, or None."""
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if device_type == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter)"
    return None


def describe(device_types: Sequence[str] = ("cpu", "cuda")) -> list[dict]:
    """For each op and device type: the backend chosen without arguments, and every reason."""
    rows = []
    for op in _OPS.values():
        for dev in device_types:
            reasons = op.reasons(dev)
            chosen = next((n for n, r in reasons.items() if r is None), None)
            rows.append({"op": op.name, "device": dev, "backend": chosen, "reasons": reasons})
    return rows


@contextlib.contextmanager
def use_backend(backend: str, *op_names: str):
    """Within the block, the named ops (every op when none is named) run ``backend``: the rule
    is put ahead of whatever ``FASTGEN_BACKEND`` already says (the variable is read at call
    time), and the variable is restored afterwards.

    Example: ``with use_backend("reference", "hashgrid", "volrend"): ...``
    """
    rule = ",".join(f"{op}={backend}" for op in op_names) if op_names else backend
    old = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = rule + (f",{old}" if old else "")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = old

"""tiny-cuda-nn-style arguments: names matched case-insensitively, config dicts checked by key."""

from __future__ import annotations

from typing import Any, Collection, Mapping, Sequence

__all__ = ["tcnn_choice", "check_tcnn_config"]


def tcnn_choice(op: str, arg: str, value, choices: Sequence[str]) -> str:
    """The canonical spelling of ``value`` among ``choices``; a ValueError naming ``arg`` else."""
    if isinstance(value, str):
        for c in choices:
            if c.lower() == value.lower():
                return c
    raise ValueError(f"{op}: {arg} must be one of {', '.join(choices)}; got {value!r}")


def check_tcnn_config(config: Mapping[str, Any], allowed: Collection[str], kind: str) -> None:
    """Raises unless ``config`` is a dict whose keys are all in ``allowed`` (naming the others):
    a tcnn config never silently means something else. ``kind``: "grid encodings", ..."""
    if not isinstance(config, Mapping):
        raise TypeError(f"from_tcnn_config: config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(f"from_tcnn_config: unsupported key(s) {unknown}; {kind} take "
                         f"{sorted(allowed)}")

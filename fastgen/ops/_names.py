"""Name arguments matched the way tiny-cuda-nn matches its config strings: case-insensitively."""

from __future__ import annotations

from typing import Sequence

__all__ = ["tcnn_choice"]


def tcnn_choice(op: str, arg: str, value, choices: Sequence[str]) -> str:
    """The canonical spelling of ``value`` among ``choices``; a ValueError naming ``arg`` else."""
    if isinstance(value, str):
        for c in choices:
            if c.lower() == value.lower():
                return c
    raise ValueError(f"{op}: {arg} must be one of {', '.join(choices)}; got {value!r}")

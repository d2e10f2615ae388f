"""An embedded text corpus: the Python standard library's own source files, read from the
installed Python (no download), as byte-level tokens (vocabulary 256)."""

from __future__ import annotations

import os
import sysconfig

import torch

__all__ = ["stdlib_corpus", "encode", "decode"]


def stdlib_corpus(max_bytes: int = 4_000_000) -> torch.Tensor:
    """The first ``max_bytes`` bytes of the standard library's top-level ``*.py`` files (sorted by
    name, so the corpus is the same on every run of one Python), as int64 token ids [N]."""
    root = sysconfig.get_paths()["stdlib"]
    names = sorted(n for n in os.listdir(root) if n.endswith(".py"))
    if not names:
        raise FileNotFoundError(f"stdlib_corpus: no .py files in {root}")
    chunks, total = [], 0
    for name in names:
        with open(os.path.join(root, name), "rb") as f:
            data = f.read(max_bytes - total)
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    return encode(b"".join(chunks))


def encode(text) -> torch.Tensor:
    """str or bytes -> int64 byte ids [N]."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def decode(tokens: torch.Tensor) -> str:
    """Byte ids -> str (invalid UTF-8 replaced)."""
    return bytes(tokens.to(torch.uint8).tolist()).decode("utf-8", errors="replace")

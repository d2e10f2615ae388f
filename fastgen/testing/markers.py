"""pytest markers shared by the test suite (imports pytest: test-only module)."""

from __future__ import annotations

import pytest
import torch

__all__ = ["requires_cuda", "requires_triton"]

# Called, not referenced: `skipif(not torch.cuda.is_available, ...)` (no call) never skips.
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def requires_triton(device_type: str):
    """Skip unless the Triton backend of bias_act can run on ``device_type`` here."""
    from .check import available_backends

    return pytest.mark.skipif("triton" not in available_backends("bias_act", device_type),
                              reason=f"Triton cannot run on {device_type} here")

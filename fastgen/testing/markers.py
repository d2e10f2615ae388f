"""pytest markers shared by the test suite (imports pytest: test-only module)."""

from __future__ import annotations

import pytest
import torch

__all__ = ["requires_cuda"]

# Called, not referenced: `skipif(not torch.cuda.is_available, ...)` (no call) never skips.
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

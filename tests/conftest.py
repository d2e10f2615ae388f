"""Test-session setup. Triton kernels run on CPU tensors through the Triton interpreter, which must
be selected before triton is imported; CUDA tests run only where CUDA exists."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastgen.testing import fresh_seed  # noqa: E402


@pytest.fixture
def seed():
    """A fresh seed per test, printed so that a failure can be replayed with FASTGEN_TEST_SEED."""
    s = fresh_seed()
    print(f"replay with FASTGEN_TEST_SEED={s}")
    return s


@pytest.fixture
def gen(seed):
    return torch.Generator().manual_seed(seed)

"""Every op in torch.ops.fastgen passes torch.library.opcheck: the test walks the namespace, so an
op without samples in fastgen.testing.samples fails here instead of going unchecked."""

import pytest
import torch

import fastgen  # noqa: F401  (registers the ops)
from fastgen import _ext
from fastgen.testing import OPCHECK_SAMPLES, available_backends, devices

OPS = _ext.registered_ops()


def test_namespace_is_not_empty():
    assert "fastgen::bias_act_triton" in OPS


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("qualname", OPS)
def test_opcheck(qualname, device):
    assert qualname in OPCHECK_SAMPLES, f"{qualname} has no opcheck samples in fastgen.testing"
    op_name, backend, make_samples = OPCHECK_SAMPLES[qualname]
    if backend not in available_backends(op_name, device):
        pytest.skip(f"{qualname}: backend {backend} cannot run on {device} here")
    packet = getattr(torch.ops.fastgen, qualname.split("::")[1])
    for args in make_samples(device):
        torch.library.opcheck(packet, args)

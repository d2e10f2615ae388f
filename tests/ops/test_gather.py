"""fastgen.ops.gather_rows on every backend that runs here: equal to index_select bit for bit
(dtypes, row widths that straddle cache lines, int32 / int64 indices, repeats, empty), its
gradient, and bad input (out-of-range and negative indices, wrong ranks and dtypes)."""

import pytest
import torch

from fastgen.ops import gather_rows
from fastgen.testing import available_backends, devices

CASES = [(d, b) for d in devices() for b in available_backends("gather_rows", d)]
NATIVE = [b for b in available_backends("gather_rows", "cpu") if b != "reference"]


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64,
                                   torch.uint8])
@pytest.mark.parametrize("R,C,N", [(1, 1, 3), (7, 5, 20000), (5000, 13, 9000), (300, 0, 4),
                                   (10, 3, 0)])
def test_equals_index_select(device, backend, dtype, R, C, N, gen):
    table = (torch.rand(R, C, generator=gen) * 100).to(dtype).to(device)
    for idx_dtype in (torch.int64, torch.int32):
        index = torch.randint(0, R, (N,), generator=gen, dtype=idx_dtype).to(device)
        out = gather_rows(table, index, backend=backend)
        assert out.dtype == dtype and out.shape == (N, C)
        assert torch.equal(out, table.index_select(0, index))


@pytest.mark.parametrize("device,backend", CASES)
def test_strided_table_and_gradient(device, backend, gen):
    table = torch.randn(40, 12, generator=gen).to(device)[:, ::3]     # non-contiguous [40, 4]
    index = torch.randint(0, 40, (100,), generator=gen).to(device)
    assert torch.equal(gather_rows(table, index, backend=backend), table[index])
    leaf = table.clone().requires_grad_()
    g = torch.randn(100, 4, generator=gen).to(device)
    got, = torch.autograd.grad(gather_rows(leaf, index, backend=backend), leaf, g)
    want, = torch.autograd.grad(leaf.index_select(0, index), leaf, g)
    torch.testing.assert_close(got, want)
    if backend != "reference":
        leaf64 = leaf.detach().double().requires_grad_()
        assert torch.autograd.gradcheck(lambda t: gather_rows(t, index[:9] % 12, backend=backend),
                                        (leaf64[:12],))


def test_bad_input(gen):
    table = torch.rand(10, 3, generator=gen)
    with pytest.raises(ValueError, match="table must be a 2-D"):
        gather_rows(table[0], torch.tensor([0]))
    with pytest.raises(TypeError, match="index must be a 1-D int64 or int32 tensor, got "
                                        "torch.float32"):
        gather_rows(table, torch.tensor([0.0]))
    with pytest.raises(TypeError, match="index must be a 1-D"):
        gather_rows(table, torch.tensor([[0]]))
    for backend in ["reference", *NATIVE]:
        for bad in (10, -1):
            with pytest.raises(IndexError):
                gather_rows(table, torch.tensor([1, bad, 2]), backend=backend)
    if NATIVE:
        with pytest.raises(IndexError, match="index\\[1\\] = -1 is out of range for a table of "
                                             "10 rows"):
            gather_rows(table, torch.tensor([1, -1, 2, 99]), backend="cpu")
        with pytest.raises(IndexError, match="table of 0 rows"):
            gather_rows(table[:0], torch.tensor([0]), backend="cpu")
        with pytest.raises(RuntimeError, match="contiguous"):
            torch.ops.fastgen.gather_rows(table, torch.tensor([0, 1, 2, 3])[::2])

"""fastgen.ops.decode_linear against torch.nn.functional.linear (float64 truth), on the shapes of
decode steps: 1-16 rows, odd K and N, bias or not; and the fallback for what the kernel does not
take."""

import pytest
import torch

from fastgen.ops import decode_linear
from fastgen.testing import available_backends

BACKENDS = available_backends("decode_linear", "cpu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("k,n", [(1, 1), (17, 5), (576, 97), (1000, 33)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_linear(backend, m, k, n, bias, gen):
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    out = decode_linear(x, w, b, backend=backend)
    want = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    assert out.dtype == torch.float32 and out.shape == (m, n)
    torch.testing.assert_close(out.double(), want, rtol=2e-6, atol=2e-6 * k ** 0.5)


@pytest.mark.parametrize("m", [1, 4, 5, 8, 13])
def test_output_independent_of_tile_and_threads(m, gen):
    # an output is one fixed-order dot product wherever its row falls (4x4 or 2x8 tile, the
    # one-row tail, a thread's first tile) and however many threads run
    x = torch.randn(m, 203, generator=gen)
    w = torch.randn(39, 203, generator=gen)
    out = decode_linear(x, w, backend="cpu")
    for j in (0, 3, 37, 38):
        assert torch.equal(out[:, j], decode_linear(x, w[j:j + 1], backend="cpu")[:, 0])
    assert torch.equal(out[m - 1], decode_linear(x[m - 1:], w, backend="cpu")[0])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(out, decode_linear(x, w, backend="cpu"))
    finally:
        torch.set_num_threads(threads)


def test_float64_leading_dims_and_views(gen):
    x = torch.randn(3, 40, 2, generator=gen, dtype=torch.float64).permute(2, 0, 1)  # a view
    w = torch.randn(40, 7, generator=gen, dtype=torch.float64).T  # [7, 40], not contiguous
    out = decode_linear(x, w, backend="cpu")
    assert out.shape == (2, 3, 7)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, w))


def test_fallbacks_are_exact_linear(gen):
    # more rows than MAX_ROWS, rows of x beyond L1, half precision, gradients: torch's linear runs
    from fastgen.ops.linear import suits_kernel

    assert suits_kernel(8, 576) and suits_kernel(8, 1536) and not suits_kernel(8, 2048)
    xl, wl = torch.randn(8, 2048, generator=gen), torch.randn(3, 2048, generator=gen)
    assert torch.equal(decode_linear(xl, wl), torch.nn.functional.linear(xl, wl))
    x = torch.randn(40, 8, generator=gen)
    w = torch.randn(5, 8, generator=gen)
    assert torch.equal(decode_linear(x, w), torch.nn.functional.linear(x, w))
    xh, wh = x.half(), w.half()
    assert torch.equal(decode_linear(xh, wh), torch.nn.functional.linear(xh, wh))
    xg = x[:2].clone().requires_grad_()
    decode_linear(xg, w).sum().backward()
    torch.testing.assert_close(xg.grad, w.sum(0).expand(2, 8))


def test_bad_input(gen):
    x, w = torch.randn(2, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match="x \\[..., K\\] and weight \\[N, K\\]"):
        decode_linear(x, torch.randn(5, 9))
    with pytest.raises(ValueError, match="bias must be \\[N\\] = \\[5\\]"):
        decode_linear(x, w, torch.randn(4))
    with pytest.raises(TypeError, match="one dtype and device"):
        decode_linear(x, w.double())


def test_compiles_fullgraph(gen):
    x, w, b = torch.randn(3, 16), torch.randn(9, 16), torch.randn(9)
    fn = torch.compile(lambda x: decode_linear(x, w, b), fullgraph=True)
    torch.testing.assert_close(fn(x), decode_linear(x, w, b))


def test_zero_input_features(gen):
    """K = 0: the output is the bias (or zeros), as F.linear, for any leading shape."""
    w, b = torch.randn(4, 0), torch.randn(4, generator=gen)
    for lead in ((3,), (2, 3), ()):
        x = torch.randn(*lead, 0)
        torch.testing.assert_close(decode_linear(x, w, b),
                                   torch.nn.functional.linear(x, w, b), rtol=0, atol=0)
        assert decode_linear(x, w).abs().sum() == 0

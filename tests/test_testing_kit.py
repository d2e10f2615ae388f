"""The testing kit itself: every check in it must be able to fail."""

import pytest
import torch

from fastgen.testing import (DEFAULT_TOLERANCES, LAYOUTS, ODD_SIZES, assert_close,
                             check_against_reference, check_error_ratio, make_tensor, odd_shapes,
                             poison_, poisoned, recorded_ops, tolerance)
from fastgen.testing.tolerances import OVERRIDES


def test_every_tolerance_has_a_reason():
    for tol in list(DEFAULT_TOLERANCES.values()) + list(OVERRIDES.values()):
        assert len(tol.reason) > 20
    assert tolerance(torch.float64, "bias_act", "triton").atol > tolerance(torch.float64).atol
    with pytest.raises(ValueError, match="no tolerance for dtype"):
        tolerance(torch.int32)


def test_assert_close_reports_what_and_where():
    expected = torch.arange(6.0).reshape(2, 3)
    actual = expected.clone()
    actual[1, 2] = float("nan")
    actual[0, 1] += 1
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, name="y")
    msg = str(info.value)
    assert "2 of 6 elements differ" in msg and "NaN where a number was expected" in msg
    assert "at (0, 1): actual 2, expected 1" in msg
    assert_close(torch.tensor([float("nan")]), torch.tensor([float("nan")]))  # NaN == NaN
    with pytest.raises(AssertionError, match="shape"):
        assert_close(torch.zeros(2), torch.zeros(3))


def test_error_ratio_accepts_fp32_compute_and_rejects_sloppy_kernels(gen):
    x = torch.randn(4096, generator=gen, dtype=torch.float64)
    truth = torch.tanh(x) * 3
    baseline = torch.tanh(x.half()) * 3               # PyTorch in fp16: two roundings
    good = (torch.tanh(x.float()) * 3).half()         # compute in fp32, round once
    sloppy = (torch.tanh(x.bfloat16()) * 3).half()    # silently computes in bf16
    err, base = check_error_ratio(good, truth, baseline)
    assert err <= base
    with pytest.raises(AssertionError, match="exceeds 2 x PyTorch's own"):
        check_error_ratio(sloppy, truth, baseline)


def test_poisoned_allocations_expose_unwritten_outputs():
    def half_written(x, backend=None):
        y = torch.empty_like(x)
        y[: x.shape[0] // 2] = x[: x.shape[0] // 2] * 2
        return y

    with poisoned():
        assert torch.isnan(torch.empty(5)).all()
        assert torch.isnan(torch.empty_like(torch.ones(3))).all()
    x = torch.randn(8)
    with pytest.raises(AssertionError, match="NaN where a number was expected"):
        check_against_reference(half_written, lambda x: x * 2, (x,), op="toy", backend="x")
    assert torch.isnan(poison_(torch.zeros(3))).all()
    assert (poison_(torch.zeros(3, dtype=torch.int32)) == 2**31 - 1).all()


def test_check_against_reference_catches_a_wrong_gradient(gen):
    class Scaled(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2.01  # 0.5% off

    x = torch.randn(64, generator=gen)
    check_against_reference(lambda x, backend: x * 2, lambda x: x * 2, (x,), op="toy",
                            backend="x", grad_argnums=(0,), generator=gen)
    with pytest.raises(AssertionError, match="grad of argument 0"):
        check_against_reference(lambda x, backend: Scaled.apply(x), lambda x: x * 2, (x,),
                                op="toy", backend="x", grad_argnums=(0,), generator=gen)
    with pytest.raises(AssertionError, match="expected .*float32"):
        check_against_reference(lambda x, backend: (x * 2).double(), lambda x: x * 2, (x,),
                                op="toy", backend="x")


def test_layouts_are_what_they_claim():
    shape = (2, 3, 5, 7)
    for layout in LAYOUTS:
        t = make_tensor(shape, torch.float16, layout=layout)
        assert t.shape == shape and t.dtype == torch.float16
        assert t.is_contiguous() == (layout == "contiguous"), layout
    assert make_tensor(shape, layout="channels_last").is_contiguous(
        memory_format=torch.channels_last)
    strided = make_tensor(shape, layout="strided")
    assert strided.stride()[-1] == 2
    with pytest.raises(ValueError, match="layout must be one of"):
        make_tensor(shape, layout="diagonal")


def test_same_seed_same_values_in_every_dtype():
    a = make_tensor((5, 5), torch.float64, generator=torch.Generator().manual_seed(3))
    b = make_tensor((5, 5), torch.float32, generator=torch.Generator().manual_seed(3),
                    layout="transposed")
    assert_close(b, a.float(), atol=0, rtol=0)


def test_odd_shapes_mix_odd_sizes_under_the_cap():
    shapes = odd_shapes(3, max_numel=5000, extra=[(2, 2, 2)])
    assert (2, 2, 2) in shapes and all(len(s) == 3 for s in shapes)
    assert all(s[0] * s[1] * s[2] <= 5000 for s in shapes)
    assert {1, 7, 97} <= {d for s in shapes for d in s}
    assert max(ODD_SIZES) > 1000


def test_recorded_ops_lists_what_reaches_the_dispatcher(gen):
    x = torch.randn(4, generator=gen)
    with recorded_ops() as seen:
        y = torch.add(x, x)
    torch.mul(x, x)  # outside the block: not recorded
    assert torch.equal(y, 2 * x)
    assert any("aten.add" in op for op in seen) and not any("aten.mul" in op for op in seen)

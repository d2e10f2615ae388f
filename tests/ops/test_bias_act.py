"""Tests of fastgen.ops.bias_act on every backend that runs here (cpu, triton under the interpreter,
cuda devices when present), against fastgen.reference.bias_act."""

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgen
from fastgen.ops import ACTIVATIONS, bias_act
from fastgen.reference.bias_act import ACTIVATIONS as SPECS
from fastgen.reference.bias_act import bias_act as reference
from fastgen.registry import BackendError
from fastgen.testing import (LAYOUTS, assert_close, available_backends, check_against_reference,
                             devices, make_tensor, odd_shapes)
from fastgen.testing.markers import requires_cuda

# (device, backend) pairs that run here; the reference is what they are checked against.
CASES = [(dev, be) for dev in devices() for be in available_backends("bias_act", dev)
         if be != "reference"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _away_from_clamp(x, b, dim, act, alpha, gain, clamp):
    """Move x off the clamp boundary, in place.

    The gradient jumps to 0 where |act(x + b) * gain| crosses the clamp. An element within rounding
    of that boundary may be gated differently in float64 and in x's dtype, by every correct
    implementation alike; the boundary itself is tested exactly in test_clamp_gate_is_inclusive.
    """
    if clamp is None:
        return
    window = 64 * torch.finfo(x.dtype).eps * max(clamp, 1.0)
    for _ in range(8):
        xb = x.double() if b is None else x.double() + b.double().reshape(
            [-1 if i == dim % x.ndim else 1 for i in range(x.ndim)])
        v = reference(xb, None, dim, act, alpha, gain, None)
        near = (v.abs() - clamp).abs() < window
        if not near.any():
            return
        x.masked_fill_(near, 0.1)  # u = 0.1 + b: a fresh point, re-checked on the next pass


def _check(device, backend, x_shape, dim, act, dtype, gen, *, layout="contiguous", bias=True,
           clamp=None, gain=None, alpha=None, scale=2.0):
    x = make_tensor(x_shape, dtype, device, layout=layout, scale=scale, generator=gen)
    b = make_tensor((x_shape[dim],), dtype, device, generator=gen) if bias else None
    _away_from_clamp(x, b, dim, act, alpha, gain, clamp)
    return check_against_reference(
        bias_act, reference, (x, b, dim, act, alpha, gain, clamp), op="bias_act",
        backend=backend, grad_argnums=(0, 1) if bias else (0,), generator=gen, grad_offset=1.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("device,backend", CASES)
def test_every_activation_and_dtype(device, backend, act, dtype, gen):
    clamp = random.Random(gen.initial_seed()).choice([None, 0.7, 3.0])
    _check(device, backend, (3, 7, 5, 9), 1, act, dtype, gen, clamp=clamp)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,dim,layout", [((2, 24, 7, 9), 1, "channels_last"),
                                              ((97, 40), 1, "contiguous"),
                                              ((5, 33, 6), 1, "permuted_strided")], ids=str)
@pytest.mark.parametrize("device,backend", CASES)
def test_half_precision_layouts(device, backend, shape, dim, layout, dtype, gen):
    """fp16/bf16 through column mode (channels-last, [N, C]) and through the dense copy."""
    _check(device, backend, shape, dim, "swish", dtype, gen, layout=layout, clamp=2.0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", odd_shapes(4, max_numel=1 << 14), ids=str)
@pytest.mark.parametrize("device,backend", CASES)
def test_odd_shapes_and_layouts(device, backend, shape, layout, gen):
    dim = random.Random(gen.initial_seed()).randrange(4)
    _check(device, backend, shape, dim, "lrelu", torch.float32, gen, layout=layout, clamp=2.5)


@pytest.mark.parametrize("shape,dim", [((1031,), 0), ((97, 1031), 1), ((97, 1031), 0),
                                       ((2, 3, 4, 5, 6), 2), ((4, 1, 9), 1), ((5, 300), -1)],
                         ids=str)
@pytest.mark.parametrize("device,backend", CASES)
def test_other_ranks_and_dims(device, backend, shape, dim, gen):
    """Rank 1-5, size-1 channel dims, and [N, C] fully connected activations (column mode)."""
    _check(device, backend, shape, dim, "swish", torch.float32, gen, clamp=1.0)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_random_configurations(data):
    """Hypothesis draws rank, sizes, dim, activation, clamp, bias, layout, dtype and backend."""
    ndim = data.draw(st.integers(1, 4), label="ndim")
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim),
                            label="shape"))
    device, backend = data.draw(st.sampled_from(CASES), label="device, backend")
    _check(device, backend, shape, data.draw(st.integers(-ndim, ndim - 1), label="dim"),
           data.draw(st.sampled_from(ACTIVATIONS), label="act"),
           data.draw(st.sampled_from([torch.float64, torch.float32]), label="dtype"),
           torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed")),
           layout=data.draw(st.sampled_from(LAYOUTS), label="layout"),
           bias=data.draw(st.booleans(), label="bias"),
           clamp=data.draw(st.one_of(st.none(), st.floats(0.1, 5.0)), label="clamp"),
           gain=data.draw(st.one_of(st.none(), st.floats(-3.0, 3.0)), label="gain"))


@pytest.mark.parametrize("device,backend", CASES)
def test_without_bias_and_custom_params(device, backend, gen):
    _check(device, backend, (4, 6, 7), 1, "lrelu", torch.float32, gen, bias=False, alpha=0.05,
           gain=0.5, clamp=0.3)
    _check(device, backend, (4, 6, 7), 1, "tanh", torch.float32, gen, bias=False, gain=3.0)


@pytest.mark.parametrize("device,backend", CASES)
def test_large_tensor_multi_task(device, backend, gen):
    """Enough elements for several tasks/programs per row and per channel (partial-sum paths)."""
    _check(device, backend, (3, 5, 131, 257), 1, "lrelu", torch.float32, gen, clamp=2.0)
    _check(device, backend, (9000, 13), 1, "relu", torch.float32, gen)


@pytest.mark.parametrize("device,backend", CASES)
def test_empty_and_scalar_inputs(device, backend):
    x = torch.empty(0, 4, 3, device=device, requires_grad=True)
    b = torch.zeros(4, device=device, requires_grad=True)
    y = bias_act(x, b, act="lrelu", backend=backend)
    assert y.shape == x.shape
    gx, gb = torch.autograd.grad(y.sum(), (x, b))
    assert gx.shape == x.shape and torch.equal(gb, torch.zeros_like(b))
    s = torch.tensor(-2.0, device=device)
    assert_close(bias_act(s, act="lrelu", backend=backend), torch.tensor(-0.4 * math.sqrt(2)))


@pytest.mark.parametrize("device,backend", CASES)
def test_clamp_gate_is_inclusive(device, backend):
    """At |y| == clamp exactly the gradient passes, as torch.clamp's derivative does."""
    x = torch.tensor([[-3.0, -1.0, 0.5, 1.0, 2.0, 5.0]], device=device, requires_grad=True)
    y = bias_act(x, act="linear", clamp=1.0, backend=backend)
    assert_close(y, torch.tensor([[-1.0, -1.0, 0.5, 1.0, 1.0, 1.0]], device=device), atol=0, rtol=0)
    (gx,) = torch.autograd.grad(y.sum(), x)
    assert_close(gx, torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0, 0.0]], device=device), atol=0, rtol=0)


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("device,backend", CASES)
def test_nan_and_inf_inputs(device, backend, act):
    x = torch.tensor([[float("nan"), 1.0, -1.0], [0.0, float("inf"), -float("inf")]],
                     device=device)
    got = bias_act(x, act=act, clamp=4.0, backend=backend)
    want = reference(x.double(), act=act, clamp=4.0).float()
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (got, want)
    assert_close(got, want)


def test_defaults_follow_the_activation_table():
    x = torch.linspace(-3, 3, 61)
    for act, spec in SPECS.items():
        want = spec.fn(x.double(), 0.2 if act == "lrelu" else 0.0) * spec.def_gain
        assert_close(bias_act(x, act=act), want.float(), name=act)
    assert SPECS["lrelu"].def_alpha == 0.2 and SPECS["lrelu"].def_gain == math.sqrt(2)


@pytest.mark.parametrize("device,backend", CASES)
def test_gradcheck_and_gradgradcheck_float64(device, backend, gen):
    x = make_tensor((2, 3, 4), torch.float64, device, generator=gen, requires_grad=True)
    b = make_tensor((3,), torch.float64, device, generator=gen, requires_grad=True)
    for act in ACTIVATIONS:
        f = lambda x, b, act=act: bias_act(x, b, 1, act, clamp=1.3, backend=backend)  # noqa: E731
        # Triton receives alpha/gain/clamp as fp32 scalars: still one consistent function.
        assert torch.autograd.gradcheck(f, (x, b), atol=1e-6), act
        assert torch.autograd.gradgradcheck(f, (x, b), atol=1e-6), act


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("device,backend", CASES)
def test_grad_b_is_deterministic_across_thread_counts(device, backend, layout, gen):
    """Row mode (NCHW) and column mode (NHWC): partial sums are cut by shape, not by threads."""
    x = make_tensor((4, 64, 33, 35), torch.float32, device, layout=layout, generator=gen,
                    requires_grad=True)
    b = make_tensor((64,), torch.float32, device, generator=gen, requires_grad=True)
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            y = bias_act(x, b, act="swish", backend=backend)
            grads.append(torch.autograd.grad(y, (x, b), torch.ones_like(y)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("device,backend", CASES)
def test_output_keeps_memory_format(device, backend):
    x = torch.randn(2, 8, 5, 5, device=device).contiguous(memory_format=torch.channels_last)
    y = bias_act(x, torch.randn(8, device=device), act="relu", backend=backend)
    assert y.is_contiguous(memory_format=torch.channels_last)
    t = torch.randn(6, 5, device=device).t()
    assert bias_act(t, act="relu", backend=backend).stride() == t.stride()


@pytest.mark.parametrize("device,backend", CASES)
def test_compile_fullgraph(device, backend, gen):
    x = make_tensor((2, 6, 5, 3), torch.float32, device, generator=gen, requires_grad=True)
    b = make_tensor((6,), torch.float32, device, generator=gen, requires_grad=True)

    def f(x, b):
        return bias_act(x, b, act="lrelu", clamp=1.5, backend=backend) * 2

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    y_c, y_e = compiled(x, b), f(x, b)
    assert_close(y_c, y_e, atol=0, rtol=0)
    g_c = torch.autograd.grad(y_c.sum(), (x, b))
    g_e = torch.autograd.grad(y_e.sum(), (x, b))
    for a, e in zip(g_c, g_e):
        assert_close(a, e, atol=0, rtol=0)


def test_default_backend_on_cpu_is_the_extension():
    if "cpu" not in available_backends("bias_act", "cpu"):
        pytest.skip("extension not built")
    x = torch.randn(3, 4)
    assert fastgen.registry.get("bias_act").select("cpu", (x, None, 1, "relu", 0.0, 1.0, None)
                                                   ).name == "cpu"


@requires_cuda
def test_default_backend_on_cuda_is_triton():
    x = torch.randn(3, 4, device="cuda")
    assert fastgen.registry.get("bias_act").select("cuda", (x, None, 1, "relu", 0.0, 1.0, None)
                                                   ).name == "triton"


def test_env_var_and_argument_choose_the_backend(monkeypatch):
    op = fastgen.registry.get("bias_act")
    args = (torch.randn(3, 4), None, 1, "relu", 0.0, 1.0, None)
    monkeypatch.setenv("FASTGEN_BACKEND", "reference")
    assert op.select("cpu", args).name == "reference"
    monkeypatch.setenv("FASTGEN_BACKEND", "cpu,bias_act=reference")
    assert op.select("cpu", args).name == "reference"
    assert op.select("cpu", args, backend="cpu" if "cpu" in available_backends("bias_act", "cpu")
                     else "reference").name in ("cpu", "reference")
    with pytest.raises(BackendError) as info:
        op.select("meta", args, backend="triton")
    message = str(info.value)
    assert "backend='triton' cannot run this call" in message
    for name in ("triton", "cpu", "reference"):
        assert f"\n  {name}" in message, message


@pytest.mark.parametrize("bad,kwargs,exc,match", [
    ("int x", dict(x=torch.ones(2, 3, dtype=torch.int64)), TypeError, "x must be float16"),
    ("b dtype", dict(b=torch.zeros(3, dtype=torch.float64)), TypeError, "b must have x's dtype"),
    ("b length", dict(b=torch.zeros(4)), ValueError, r"b must have shape \[3\]"),
    ("b rank", dict(b=torch.zeros(1, 3)), ValueError, r"b must have shape \[3\]"),
    ("b device", dict(b=torch.zeros(3, device="meta")), ValueError, "b is on meta but x is on cpu"),
    ("act", dict(act="leaky"), ValueError, "act must be one of linear, relu"),
    ("clamp<0", dict(clamp=-1.0), ValueError, "clamp must be >= 0"),
    ("clamp nan", dict(clamp=float("nan")), ValueError, "clamp must be a finite number"),
    ("gain inf", dict(gain=float("inf")), ValueError, "gain must be a finite number"),
    ("alpha non-lrelu", dict(act="tanh", alpha=0.1), ValueError, "alpha applies only to"),
    ("dim", dict(dim=2), ValueError, "dim=2 is out of range"),
    ("dim type", dict(dim=1.0), TypeError, "dim must be an int"),
    ("x type", dict(x=[1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
    ("act type", dict(act=["relu"]), ValueError, "act must be one of"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input_is_a_clear_error(bad, kwargs, exc, match):
    args = dict(x=torch.randn(2, 3), b=torch.zeros(3), dim=1, act="lrelu")
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        bias_act(**args)


def test_cpp_op_checks_its_own_arguments():
    """Direct torch.ops calls bypass the Python checks; the C++ op still refuses bad input."""
    if "cpu" not in available_backends("bias_act", "cpu"):
        pytest.skip("extension not built")
    with pytest.raises(RuntimeError, match="act must be one of"):
        torch.ops.fastgen.bias_act(torch.randn(2, 3), None, 1, "nope", 0.0, 1.0, None)
    with pytest.raises(RuntimeError, match=r"b must have shape \[3\]"):
        torch.ops.fastgen.bias_act(torch.randn(2, 3), torch.zeros(2), 1, "relu", 0.0, 1.0, None)
    with pytest.raises(RuntimeError, match="clamp must be None or a finite number >= 0"):
        torch.ops.fastgen.bias_act(torch.randn(2, 3), None, 1, "relu", 0.0, 1.0, -2.0)


def test_extension_loads_when_it_was_built():
    """A build that fails to load would otherwise only show up as skipped cpu-backend tests."""
    if not fastgen._ext.build_info().get("ext"):
        pytest.skip("installed with FASTGEN_BUILD_EXT=0")
    assert fastgen._ext.available(), fastgen._ext.unavailable_reason()
    assert "cpu" in available_backends("bias_act", "cpu")


@requires_cuda
def test_more_programs_than_a_grid_axis_allows():
    """No bias: one row of 2^28 + 1 elements, 65,537 tiles (over CUDA's 65,535 per grid axis)."""
    x = torch.randn(2**28 + 1, device="cuda", dtype=torch.float16)
    y = bias_act(x, act="relu", backend="triton")
    assert torch.equal(y[-100:], (torch.relu(x[-100:].float()) * 2**0.5).half())


def test_module_matches_functional_and_state_dict():
    m = fastgen.nn.BiasAct(6, act="lrelu", clamp=2.0, bias_init=0.5)
    assert list(m.state_dict()) == ["bias"] and torch.equal(m.bias, torch.full((6,), 0.5))
    x = torch.randn(2, 6, 3)
    assert_close(m(x), reference(x, m.bias.detach(), 1, "lrelu", clamp=2.0))
    m2 = fastgen.nn.BiasAct(act="tanh", bias=False, dim=-1)
    assert m2.bias is None and "bias=False" in repr(m2)
    assert_close(m2(x), torch.tanh(x))
    with pytest.raises(ValueError, match="needs num_channels"):
        fastgen.nn.BiasAct(act="relu")
    # Autocast hands over half-precision activations; the fp32 bias still gets its gradient.
    x16 = x.bfloat16().requires_grad_()
    y16 = m(x16)
    assert y16.dtype == torch.bfloat16
    y16.sum().backward()
    assert m.bias.grad is not None and m.bias.grad.dtype == torch.float32
    with pytest.raises(ValueError, match="clamp must be >= 0"):
        fastgen.nn.BiasAct(4, act="relu", clamp=-1)


@pytest.mark.parametrize("act", ["tanh", "swish", "gelu"])
def test_double_backward_of_a_one_dimensional_x_with_bias(act, gen):
    """A 1-D x with a bias along dim 0: the bias gradient of the backward sums over no dim
    (it summed over all of them, a scalar autograd refused)."""
    x0 = torch.randn(5, generator=gen, dtype=torch.float64)
    b0 = torch.randn(5, generator=gen, dtype=torch.float64)
    grads = {}
    for backend in ("cpu", "reference"):
        x, b = x0.clone().requires_grad_(), b0.clone().requires_grad_()
        y = fastgen.ops.bias_act(x, b, dim=0, act=act, backend=backend)
        gx, = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
        grads[backend] = torch.autograd.grad(gx.square().sum(), [x, b])
    for a, e in zip(grads["cpu"], grads["reference"]):
        assert a.shape == (5,)
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)

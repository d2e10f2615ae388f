"""Tests of fastgen.ops.sampler_step / cfg_combine on every backend that runs here (cpu, triton
under the interpreter, cuda when present), against fastgen.reference.sampler in float64."""

import itertools
import math
import random
import warnings

import pytest
import torch

from fastgen.ops.sampler import StepCoeffs, cfg_combine, sampler_step
from fastgen.reference import sampler as ref
from fastgen.testing import available_backends, devices, recorded_ops

CASES = [(dev, be) for dev in devices() for be in available_backends("sampler_step", dev)
         if be != "reference"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Relative tolerance against the float64 truth: a few roundings of the compute dtype, then the
# storage rounding.
TOL = {torch.float32: 4e-6, torch.float64: 1e-13, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _random_call(shape, dtype, device, gen, flags=None):
    """Random coefficients and a random subset of the optional inputs."""
    def t():
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype)

    rnd = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
    flags = flags or [rnd.random() < 0.6 for _ in range(5)]
    use_u, use_h1, use_h2, use_z, use_clip = flags
    history = [t() for _ in range(int(use_h1) + int(use_h1 and use_h2))]
    kw = dict(c_sample=rnd.uniform(-2, 2), c_x0=rnd.uniform(-2, 2), c_model=rnd.uniform(-1, 1),
              history=history, c_history=[rnd.uniform(-1, 1) for _ in history],
              x0_sample=rnd.uniform(-2, 2), x0_model=rnd.uniform(-2, 2),
              clip_x0=rnd.uniform(0.5, 2) if use_clip else None, return_x0=True)
    if use_z:
        kw.update(noise=t(), c_noise=rnd.uniform(-1, 1), x0_noise=rnd.uniform(-0.5, 0.5))
    if use_u:
        kw.update(uncond=t(), guidance_scale=rnd.uniform(1, 9))
    return t(), t(), kw


def _truth(x, m, kw):
    """The reference in float64 on the same (storage-rounded) inputs."""
    k = StepCoeffs(kw.get("guidance_scale") or 1.0, kw["x0_sample"], kw["x0_model"],
                   kw.get("x0_noise", 0.0), kw["c_sample"], kw["c_x0"], kw["c_model"],
                   *(list(kw["c_history"]) + [0.0] * (2 - len(kw["c_history"]))),
                   kw.get("c_noise", 0.0))
    return ref.sampler_step(x.double(), m.double(), k,
                            uncond=None if kw.get("uncond") is None else kw["uncond"].double(),
                            history=[h.double() for h in kw["history"]],
                            noise=None if kw.get("noise") is None else kw["noise"].double(),
                            clip=kw["clip_x0"], work=torch.float64)


def _assert_rel(a, b, tol, what):
    scale = max(b.abs().max().item(), 1.0) if b.numel() else 1.0
    err = (a.double() - b.double()).abs().max().item() if b.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g}, tol {tol})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (3, 1029), (7,), (1, 3, 5, 7, 2)])
@pytest.mark.parametrize("device,backend", CASES)
def test_matches_float64_reference(device, backend, shape, dtype, gen):
    for _ in range(3):
        x, m, kw = _random_call(shape, dtype, device, gen)
        out, x0 = sampler_step(x, m, backend=backend, **kw)
        assert out.dtype == dtype and out.shape == x.shape and x0.shape == x.shape
        tout, tx0 = _truth(x, m, kw)
        _assert_rel(out, tout, TOL[dtype], "out")
        _assert_rel(x0, tx0, TOL[dtype], "x0")


@pytest.mark.parametrize("device,backend", CASES)
def test_every_term_reaches_the_output(device, backend, gen):
    """Each input and coefficient on its own: a kernel that drops a term fails here."""
    x, m, kw = _random_call((5, 67), torch.float32, device, gen, flags=[1, 1, 1, 1, 0])
    for key in ("c_sample", "c_x0", "c_model", "c_noise", "x0_sample", "x0_model", "x0_noise",
                "guidance_scale"):
        kw2 = dict(kw, **{key: kw[key] + 0.5})
        out, x0 = sampler_step(x, m, backend=backend, **kw2)
        tout, tx0 = _truth(x, m, kw2)
        _assert_rel(out, tout, 4e-6, key)
        _assert_rel(x0, tx0, 4e-6, key)
    for i in range(2):
        c = list(kw["c_history"])
        c[i] += 0.5
        kw2 = dict(kw, c_history=c)
        _assert_rel(sampler_step(x, m, backend=backend, **kw2)[0], _truth(x, m, kw2)[0], 4e-6,
                    f"c_history[{i}]")


@pytest.mark.parametrize("device,backend", CASES)
def test_every_input_combination(device, backend, gen):
    """Every combination of the optional inputs and of the x̂0 work (none; folded into out;
    returned; clipped; x̂0's noise term): the CPU kernel compiles one loop per combination."""
    shape = (3, 37)  # 111 values: full vectors and a partial tail at any vector width
    for use_u, n_h, use_z, x0_noise, c_x0, want_x0, clip in itertools.product(
            (False, True), (0, 1, 2), (False, True), (False, True), (0.0, 0.7), (False, True),
            (None, 0.8)):
        if x0_noise and not use_z:
            continue
        x, m, kw = _random_call(shape, torch.float32, device, gen, flags=[0, 0, 0, 0, 0])
        kw.update(c_x0=c_x0, return_x0=want_x0, clip_x0=clip,
                  history=[torch.randn(shape, generator=gen).to(device) for _ in range(n_h)],
                  c_history=[0.5 - i for i in range(n_h)])
        if use_z:
            kw.update(noise=torch.randn(shape, generator=gen).to(device), c_noise=0.3,
                      x0_noise=-0.4 if x0_noise else 0.0)
        if use_u:
            kw.update(uncond=torch.randn(shape, generator=gen).to(device), guidance_scale=4.5)
        got = sampler_step(x, m, backend=backend, **kw)
        out, x0 = got if want_x0 else (got, None)
        tout, tx0 = _truth(x, m, kw)
        what = f"u={use_u} h={n_h} z={use_z} x0_noise={x0_noise} c_x0={c_x0} clip={clip}"
        _assert_rel(out, tout, 4e-6, what)
        if want_x0:
            _assert_rel(x0, tx0, 4e-6, what + " (x0)")


def test_op_reads_a_lone_second_history():
    """The op's hist2 without hist1 (the kernel moves it to the first slot)."""
    if "cpu" not in available_backends("sampler_step", "cpu"):
        pytest.skip("the CPU extension is not built")
    x, m, h = (torch.randn(4, 33) for _ in range(3))
    k = StepCoeffs(1.0, 0.0, 1.0, 0.0, 0.5, 0.0, 0.25, 0.0, -0.75, 0.0)
    out, _ = torch.ops.fastgen.sampler_step(x, m, None, None, h, None, list(k), None, False)
    _assert_rel(out, 0.5 * x.double() + 0.25 * m.double() - 0.75 * h.double(), 4e-6, "hist2")


@pytest.mark.parametrize("device,backend", CASES)
def test_clip_and_nan(device, backend, gen):
    x = torch.randn(300, generator=gen).to(device) * 3
    m = torch.randn(300, generator=gen).to(device) * 3
    x[17] = math.nan
    out, x0 = sampler_step(x, m, c_x0=1.0, x0_sample=1.0, x0_model=0.0, clip_x0=1.0,
                           return_x0=True,
                           backend=backend)
    assert torch.isnan(out[17]) and torch.isnan(x0[17])  # NaN propagates, only there
    keep = torch.arange(300, device=device) != 17
    assert torch.isfinite(out[keep]).all() and x0[keep].abs().max() <= 1.0
    assert (x0[keep].abs() == 1.0).any()
    _assert_rel(x0[keep], x[keep].clamp(-1, 1), 0, "clip")


@pytest.mark.parametrize("device,backend", CASES)
def test_cfg_batched_equals_separate(device, backend, gen):
    u, c, x = (torch.randn(3, 4, 5, generator=gen).to(device) for _ in range(3))
    a = sampler_step(x, c, uncond=u, guidance_scale=7.5, c_sample=0.5, c_model=0.25,
                     backend=backend)
    b = sampler_step(x, torch.cat([u, c]), guidance_scale=7.5, c_sample=0.5, c_model=0.25,
                     backend=backend)
    assert torch.equal(a, b)
    want = (0.5 * x.double() + 0.25 * (u.double() + 7.5 * (c.double() - u.double())))
    _assert_rel(a, want, 4e-6, "cfg step")
    # A channels-last batched output: its halves are strided; both must still be read right.
    both = torch.cat([u, c]).reshape(6, 4, 5, 1).contiguous(memory_format=torch.channels_last)
    x4 = x.reshape(3, 4, 5, 1)
    d = sampler_step(x4, both, guidance_scale=7.5, c_sample=0.5, c_model=0.25, backend=backend)
    _assert_rel(d.reshape(3, 4, 5), want, 4e-6, "cfg step, channels-last batched output")
    g1 = cfg_combine(u, c, guidance_scale=3.0, backend=backend)
    g2 = cfg_combine(torch.cat([u, c]), guidance_scale=3.0, backend=backend)
    assert torch.equal(g1, g2)
    _assert_rel(g1, u.double() + 3.0 * (c.double() - u.double()), 4e-6, "cfg_combine")


@pytest.mark.parametrize("device,backend", CASES)
def test_strided_and_empty_inputs(device, backend, gen):
    x = torch.randn(6, 10, generator=gen).to(device).t()   # non-contiguous
    m = torch.randn(10, 6, generator=gen).to(device)
    out = sampler_step(x, m, c_sample=2.0, c_model=-1.0, backend=backend)
    _assert_rel(out, 2.0 * x.double() - m.double(), 1e-6, "strided")
    e = torch.empty(0, 3, device=device)
    assert sampler_step(e, e, c_sample=1.0, backend=backend).shape == (0, 3)


def test_requires_grad_runs_the_differentiable_reference(gen):
    x = torch.randn(4, 5, generator=gen, requires_grad=True)
    m = torch.randn(4, 5, generator=gen)
    with warnings.catch_warnings():  # the automatic fall back warns once per process
        warnings.simplefilter("ignore")
        out = sampler_step(x, m, c_sample=0.5, c_x0=2.0, x0_sample=1.0, clip_x0=10.0)
    assert out.grad_fn is not None
    out.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 2.5))
    with torch.no_grad():  # no grad needed: the kernels run (no warning)
        assert sampler_step(x, m, c_sample=0.5).grad_fn is None


def test_torch_compile_fullgraph(gen):
    x, m, h = (torch.randn(2, 3, 8, 8, generator=gen) for _ in range(3))

    def step(x, m, h):
        return sampler_step(x, m, c_sample=0.9, c_x0=0.1, x0_sample=1.0, x0_model=-0.5,
                            history=[h], c_history=[0.3])

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x, m, h), step(x, m, h))


def test_plain_calls_skip_the_dispatcher_others_do_not(gen):
    """Plain eager CPU calls run the kernel without the dispatcher (fastgen._C); a dispatch mode
    still sees the op, and the profiler names it either way."""
    if "cpu" not in available_backends("sampler_step", "cpu"):
        pytest.skip("the CPU extension is not built")
    import fastgen.ops.sampler as mod

    x, m = (torch.randn(3, 50, generator=gen) for _ in range(2))
    want = 0.5 * x.double() - 0.25 * m.double()
    assert mod._direct_cpu() is not None and mod._plain_call(x, m, None, None, None, None)
    with recorded_ops() as seen:
        assert not mod._plain_call(x, m, None, None, None, None)
        out = sampler_step(x, m, c_sample=0.5, c_model=-0.25, backend="cpu")
    assert any("fastgen.sampler_step" in op for op in seen), seen
    _assert_rel(out, want, 4e-6, "under a dispatch mode")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = sampler_step(x, m, c_sample=0.5, c_model=-0.25, backend="cpu")
    assert any(e.name == "fastgen::sampler_step" for e in prof.events())
    _assert_rel(out, want, 4e-6, "direct")
    # the plain call did take the direct path
    direct, calls = mod._direct_cpu(), []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(mod, "_direct_cpu", lambda: lambda *a: calls.append(1) or direct(*a))
    try:
        out = sampler_step(x, m, c_sample=0.5, c_model=-0.25, backend="cpu")
    finally:
        monkey.undo()
    assert calls == [1]
    _assert_rel(out, want, 4e-6, "direct, counted")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_traced_step_records_the_op(gen):
    """torch.jit.trace sees the op (the direct path is for untraced calls): the traced function
    computes the step on new inputs."""
    def step(x, m):
        return sampler_step(x, m, c_sample=0.5, c_model=-0.25)

    traced = torch.jit.trace(step, (torch.randn(3, 8, generator=gen),
                                    torch.randn(3, 8, generator=gen)))
    x, m = (torch.randn(3, 8, generator=gen) for _ in range(2))
    _assert_rel(traced(x, m), 0.5 * x.double() - 0.25 * m.double(), 4e-6, "traced")


def test_lazily_negated_inputs(gen):
    """A negative-bit view (torch._neg_view) is read as its negated values on every path."""
    t, m = (torch.randn(4, 9, generator=gen) for _ in range(2))
    x = torch._neg_view(t)
    assert x.is_neg()
    for backend in [b for b in available_backends("sampler_step", "cpu") if b != "triton"]:
        out = sampler_step(x, m, c_sample=0.5, c_model=-0.25, backend=backend)
        _assert_rel(out, -0.5 * t.double() - 0.25 * m.double(), 4e-6, backend)


# --- bad input -----------------------------------------------------------------------------------

def _call(**over):
    x = over.pop("x", torch.randn(2, 3))
    m = over.pop("m", torch.randn(2, 3))
    return sampler_step(x, m, **over)


@pytest.mark.parametrize("over,exc,match", [
    (dict(m=torch.randn(2, 4)), ValueError, "model_output has shape"),
    (dict(m=torch.randn(2, 3, dtype=torch.float64)), TypeError, "model_output is torch.float64"),
    (dict(x=torch.ones(2, 3, dtype=torch.int64)), TypeError, "sample must be float"),
    (dict(history=[torch.randn(2, 3)] * 3, c_history=[1.0] * 3), ValueError, "at most 2"),
    (dict(history=[torch.randn(2, 3)], c_history=[]), ValueError, "c_history"),
    (dict(history=[torch.randn(3, 2)], c_history=[1.0]), ValueError, r"history\[0\]"),
    (dict(c_noise=0.5), ValueError, "noise is None"),
    (dict(c_sample=math.inf), ValueError, "c_sample must be a finite"),
    (dict(x0_model=math.nan), ValueError, "x0_model must be a finite"),
    (dict(uncond=torch.randn(2, 3)), ValueError, "uncond given without guidance_scale"),
    (dict(guidance_scale=5.0), ValueError, "batched"),
    (dict(guidance_scale=5.0, uncond=torch.randn(2, 3, dtype=torch.float16)), TypeError,
     "uncond is torch.float16"),
    (dict(clip_x0=-1.0), ValueError, "clip_x0 must be >= 0"),
    (dict(noise=torch.randn(5)), ValueError, "noise has shape"),
])
def test_bad_input_is_named(over, exc, match):
    with pytest.raises(exc, match=match):
        _call(**over)


def test_cfg_combine_rejects_odd_batch():
    with pytest.raises(ValueError, match="batched"):
        cfg_combine(torch.randn(3, 4), guidance_scale=2.0)

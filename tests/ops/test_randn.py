"""Tests of fastgen.ops.randn: bit for bit torch.randn (values and the generator's state after),
on random shapes and generator positions, against the float64 algorithm in fastgen.reference."""

import random
import sys

import pytest
import torch

from fastgen import registry
from fastgen.ops import randn
from fastgen.reference import randn as ref
from fastgen.testing import available_backends, recorded_ops

R = sys.modules["fastgen.ops.randn"]
FAST = "cpu" in available_backends("randn", "cpu")
needs_fast = pytest.mark.skipif(not FAST, reason="the cpu randn backend does not run here")
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
        torch.float64: torch.int64}


def _same_bits(a, b):
    if a.dtype.is_complex:
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(BITS[a.dtype]),
                                                                     b.view(BITS[b.dtype]))


def _pair(seed, skip):
    """Two generators at the same position: seeded, then `skip` draws along."""
    gens = [torch.Generator().manual_seed(seed) for _ in range(2)]
    for g in gens:
        torch.rand(skip, generator=g)
    return gens


def _sizes(rnd):
    """Sizes around the 16-value blocks and the 624-word MT19937 blocks, and random ones."""
    fixed = [16, 17, 31, 32, 623, 624, 625, 1248, 1249]
    return fixed + [rnd.randint(16, 5000) for _ in range(6)]


@needs_fast
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_bitwise_torch_randn(dtype, seed):
    rnd = random.Random(seed)
    for n in _sizes(rnd):
        g_ref, g_fast = _pair(rnd.randrange(2**31), rnd.randrange(0, 1500))
        shape = (n,) if rnd.random() < 0.5 else (1, n, 1)
        want = torch.randn(shape, generator=g_ref, dtype=dtype)
        got = randn(shape, generator=g_fast, dtype=dtype, backend="cpu")
        assert _same_bits(got, want), f"n={n} {dtype}: {(got != want).sum()} values differ"
        assert torch.equal(g_fast.get_state(), g_ref.get_state()), f"n={n}: generator state"
        assert torch.equal(torch.rand(7, generator=g_fast), torch.rand(7, generator=g_ref))


@needs_fast
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_large_any_thread_count(threads, dtype, seed):
    """Sizes that take the pipelined path (thread 0 draws while the others transform): a
    diffusion latent, and one with a partial block; the same bits on any thread count."""
    old = torch.get_num_threads()
    for shape in ((4, 4, 128, 128), (1100 * 16 + 7,)):
        g_ref, g_fast = _pair(seed, seed % 997)
        torch.set_num_threads(threads)
        try:
            got = randn(shape, generator=g_fast, dtype=dtype)
        finally:
            torch.set_num_threads(old)
        want = torch.randn(shape, generator=g_ref, dtype=dtype)
        assert _same_bits(got, want), f"{shape} {dtype}: {(got != want).sum()} values differ"
        assert torch.equal(g_fast.get_state(), g_ref.get_state())


@needs_fast
def test_default_generator(seed):
    saved = torch.get_rng_state()
    try:
        torch.manual_seed(seed)
        got = randn((3, 5, 7))
        after = torch.rand(4)
        torch.manual_seed(seed)
        want = torch.randn((3, 5, 7))
        assert _same_bits(got, want)
        assert torch.equal(after, torch.rand(4))
    finally:
        torch.set_rng_state(saved)


@pytest.mark.parametrize("size,dtype", [((), torch.float32), ((0, 3), torch.float32),
                                        ((15,), torch.float32), ((5, 7), torch.float64),
                                        ((3,), torch.bfloat16), ((20,), torch.complex64)])
@pytest.mark.parametrize("backend", [None, "cpu", "reference"])
def test_calls_torch_draws_otherwise(size, dtype, backend, seed):
    """float64 and fewer than 16 values: torch.randn's own numbers on every backend."""
    if backend == "cpu" and not FAST:
        pytest.skip("the cpu randn backend does not run here")
    g_ref, g_fast = _pair(seed, seed % 31)
    got = randn(size, generator=g_fast, dtype=dtype, backend=backend)
    assert _same_bits(got, torch.randn(size, generator=g_ref, dtype=dtype))
    assert torch.equal(g_fast.get_state(), g_ref.get_state())


def test_default_dtype_and_int_size(seed):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        g_ref, g_fast = _pair(seed, 3)
        got = randn(40, generator=g_fast)
        assert _same_bits(got, torch.randn(40, generator=g_ref))
    finally:
        torch.set_default_dtype(old)


@needs_fast
def test_matches_the_float64_algorithm(seed):
    """The kernel's numbers are torch's block Box–Muller of the generator's uniforms (within
    float32 rounding of log, sin and cos), partial blocks included."""
    rnd = random.Random(seed)
    for n in (16, 37, 1000, rnd.randint(17, 3000)):
        for dtype in (torch.float32, torch.bfloat16):
            g_u, g_fast = _pair(seed + n, 5)
            if dtype == torch.float32:
                u = torch.rand(n, generator=g_u)
            else:  # whole blocks' draws, then the partial block's
                u = torch.rand(n - n % 16, generator=g_u)
                u = torch.cat([u, torch.zeros(n % 16)])
            tail = torch.rand(16, generator=g_u) if n % 16 else None
            want = ref.normal_from_uniforms(u, tail)
            got = randn(n, generator=g_fast, dtype=dtype).double()
            tol = 4e-6 if dtype == torch.float32 else 8e-3
            err = ((got - want).abs() / want.abs().clamp_min(1.0)).max().item()
            assert err <= tol, f"n={n} {dtype}: relative error {err:.3g}"


def test_reference_algorithm_checks_its_input():
    with pytest.raises(ValueError, match="at least 16"):
        ref.normal_from_uniforms(torch.rand(15))
    with pytest.raises(ValueError, match="tail"):
        ref.normal_from_uniforms(torch.rand(20))
    with pytest.raises(ValueError, match="tail"):
        ref.normal_from_uniforms(torch.rand(32), torch.rand(16))


def test_falls_back_to_torch_when_the_probe_fails(monkeypatch, seed):
    """A torch whose Box–Muller the kernel does not reproduce: the cpu backend is unavailable
    and randn gives torch.randn's numbers (quietly, when no backend was asked for)."""
    monkeypatch.setattr(R, "_probe", lambda: (None, "probe says no"))
    monkeypatch.setattr(R._OP, "_availability", {})
    assert "cpu" not in available_backends("randn", "cpu")
    g_ref, g_fast = _pair(seed, 0)
    assert _same_bits(randn((64,), generator=g_fast), torch.randn((64,), generator=g_ref))
    with pytest.raises(registry.BackendError, match="probe says no"):
        randn((64,), backend="cpu")


@needs_fast
def test_compile_traces_torch_randn():
    """Under torch.compile the draw is torch.randn's (the kernel is eager-only), so a compiled
    function with inductor's eager-RNG fallback gives eager's numbers."""
    import torch._inductor.config as inductor_config

    def f(x):
        return x + randn(x.shape)

    x = torch.randn(4, 40)
    saved = torch.get_rng_state()
    try:
        with inductor_config.patch(fallback_random=True):
            torch.manual_seed(7)
            got = torch.compile(f, fullgraph=True)(x)
        torch.manual_seed(7)
        want = x + torch.randn(x.shape)
    finally:
        torch.set_rng_state(saved)
    assert torch.equal(got, want)


def test_default_device_is_torchs():
    """device=None means torch's default device, as for torch.randn."""
    with torch.device("meta"):
        got = randn((4, 40))
    assert got.device.type == "meta" and got.shape == (4, 40)


def test_transforms_and_modes_see_torch_randn(seed):
    """vmap's randomness rules and dispatch modes apply: those calls run torch.randn."""
    x = torch.zeros(3, 40)

    def rows(make):
        with torch.random.fork_rng():  # the global generator is left as it was
            torch.manual_seed(seed)
            return torch.func.vmap(lambda r: r + make(r.shape), randomness="different")(x)

    got = rows(randn)
    assert torch.equal(got, rows(torch.randn)) and not torch.equal(got[0], got[1])
    with pytest.raises(RuntimeError, match="randomness"):
        torch.func.vmap(lambda r: r + randn(r.shape), randomness="error")(x)

    with recorded_ops() as seen:
        randn((64,), generator=torch.Generator().manual_seed(seed))
    assert seen and not any("fastgen" in op for op in seen), seen


_COLD_START = """
import torch, fastgen
from fastgen.ops import randn
from torch._subclasses.fake_tensor import FakeTensorMode
with FakeTensorMode():
    assert randn((64,)).shape == (64,)
if COMPILE:  # inductor's C++ does not build under ATEN_CPU_CAPABILITY=default (torch 2.13)
    a = torch.compile(lambda: randn((64,)), fullgraph=True)()
    assert a.shape == (64,) and a.isfinite().all()
g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
assert torch.equal(randn((4, 40), generator=g1), torch.randn((4, 40), generator=g2))
print("variant", __import__("sys").modules["fastgen.ops.randn"]._probe()[0])
"""


@pytest.mark.parametrize("capability", [None, "default"])
def test_cold_start_in_a_fresh_process(capability):
    """The first call of a process may come inside torch.compile or a fake-tensor mode; and with
    torch's non-AVX2 kernels (ATEN_CPU_CAPABILITY=default) the probe picks the C-library
    variant, which then matches torch bit for bit."""
    import os
    import subprocess

    env = dict(os.environ)
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    script = f"COMPILE = {capability is None}\n" + _COLD_START
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    if FAST and capability == "default":
        assert "variant 1" in run.stdout, run.stdout


@pytest.mark.parametrize("kw,exc,match", [
    (dict(size=-3), ValueError, "size"),
    (dict(size=(2, 2.5)), ValueError, "size"),
    (dict(size=True), ValueError, "size"),
    (dict(size="4"), ValueError, "size"),
    (dict(size=8, dtype=torch.int32), TypeError, "dtype"),
    (dict(size=8, generator=3), TypeError, "generator"),
    (dict(size=64, backend="cuda"), registry.BackendError, "unknown backend"),
    (dict(size=64, device="meta", backend="cpu"), registry.BackendError, "cpu tensors"),
])
def test_bad_input(kw, exc, match):
    size = kw.pop("size")
    with pytest.raises(exc, match=match):
        randn(size, **kw)


@needs_fast
@pytest.mark.parametrize("out,variant,match", [
    (lambda: torch.empty(40, 2).t(), 0, "contiguous"),
    (lambda: torch.empty(40, dtype=torch.float64), 0, "float32, float16 or bfloat16"),
    (lambda: torch.empty(15), 0, "at least 16"),
    (lambda: torch.empty(40), 7, "variant"),
])
def test_op_rejects(out, variant, match):
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastgen.randn_(out(), None, variant)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_jit_trace_records_torch_randn():
    """A torch.jit trace records torch's own random op (the kernel is for untraced calls)."""
    traced = torch.jit.trace(lambda x: x + randn((64,)), torch.zeros(64))
    assert "aten::randn" in str(traced.graph), traced.graph

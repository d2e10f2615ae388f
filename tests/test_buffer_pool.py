"""fastgen's cache of large CPU buffers (csrc/cpu/buffer_pool.h): reused blocks never leak a
previous call's values, tensors from it behave like any other, and its capacity is honoured."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastgen
from fastgen import _ext
from fastgen.ops import fused_mlp, hashgrid_encode
from fastgen.reference.hashgrid import hashgrid_encode as ref_hashgrid
from fastgen.reference.mlp import fused_mlp as ref_mlp

needs_ext = pytest.mark.skipif(not _ext.available(), reason="compiled extension not loaded")
needs_cache = pytest.mark.skipif(
    not _ext.available() or os.environ.get("FASTGEN_CPU_POOL_MB") == "0",
    reason="compiled extension not loaded, or the cache is off (FASTGEN_CPU_POOL_MB=0)")

# Big enough that outputs and scratch are pooled (>= 1 MiB): 2^14 points x 16 levels x 2 features.
GRID = dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4,
            per_level_scale=1.5)


def _grid_params(gen):
    from fastgen.nn import HashGridEncoding

    n = HashGridEncoding(3, **GRID).n_params
    return (torch.rand(n, generator=gen) * 2 - 1).requires_grad_()


@needs_cache
def test_reused_buffers_hold_each_calls_own_values(gen):
    """Back-to-back calls of different sizes and inputs reuse blocks; every output still matches
    the reference, so no kernel relies on a fresh (or zeroed) buffer."""
    params = _grid_params(gen)
    # float64 for the MLP: float32 sums in another order (and ReLUs flipping within rounding of
    # 0) would need loose tolerances that could hide a stale value
    weights = [torch.randn(64, 32, generator=gen, dtype=torch.float64) * 0.2,
               torch.randn(64, 64, generator=gen, dtype=torch.float64) * 0.2,
               torch.randn(3, 64, generator=gen, dtype=torch.float64) * 0.2]
    before = fastgen.cpu_buffer_cache()
    for n in (1 << 14, (1 << 14) - 37, 1 << 14, 20000):
        x = torch.rand(n, 3, generator=gen, dtype=torch.float32)
        enc = hashgrid_encode(x, params, **GRID)
        torch.testing.assert_close(enc, ref_hashgrid(x, params, **GRID), rtol=1e-5, atol=1e-6)
        w = [t.clone().requires_grad_() for t in weights]
        h = torch.randn(n, 32, generator=gen, dtype=torch.float64, requires_grad=True)
        y = fused_mlp(h, w)
        gy = torch.randn(y.shape, generator=gen)
        got = torch.autograd.grad(y, [h, *w], gy)
        wr = [t.clone().requires_grad_() for t in weights]
        hr = h.detach().clone().requires_grad_()
        yr = ref_mlp(hr, wr)
        want = torch.autograd.grad(yr, [hr, *wr], gy)
        torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-12)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        (ge,) = torch.autograd.grad(enc, params, torch.ones_like(enc))
        (gr,) = torch.autograd.grad(ref_hashgrid(x, params, **GRID), params, torch.ones_like(enc))
        torch.testing.assert_close(ge, gr, rtol=1e-4, atol=1e-4)
        for t in (enc, y, *got, ge):  # poison the blocks the next iteration will reuse
            t.detach().fill_(float("nan"))
        del enc, y, got, ge
    after = fastgen.cpu_buffer_cache()
    assert after["hits"] > before["hits"], (before, after)
    assert after["cached_bytes"] <= after["capacity_bytes"]


@needs_cache
def test_float32_mlp_from_reused_buffers_matches_a_fresh_run(gen):
    """The float32 forward keeps its hidden outputs with streaming stores into reused blocks: the
    backward through them must equal a run whose blocks were just poisoned and whose cache was
    emptied (fresh memory), bit for bit (same kernel, same order)."""
    n = (1 << 14) + 5
    x = torch.randn(n, 32, generator=gen)
    weights = [torch.randn(64, 32, generator=gen) * 0.2, torch.randn(64, 64, generator=gen) * 0.2,
               torch.randn(3, 64, generator=gen) * 0.2]
    gy = torch.randn(n, 3, generator=gen)

    def run():
        w = [t.clone().requires_grad_() for t in weights]
        h = x.clone().requires_grad_()
        y = fused_mlp(h, w)
        grads = torch.autograd.grad(y, [h, *w], gy)
        out = [y.detach().clone()] + [g.clone() for g in grads]
        for t in (y, *grads):
            t.detach().fill_(float("nan"))
        return out

    fastgen.empty_cpu_cache()
    fresh = run()
    reused = [run() for _ in range(2)]
    assert fastgen.cpu_buffer_cache()["hits"] > 0
    for again in reused:
        for a, b in zip(fresh, again):
            assert torch.equal(a, b)
        assert not any(t.isnan().any() for t in again)


@needs_ext
def test_pooled_tensors_are_ordinary_tensors(gen):
    params = _grid_params(gen)
    x = torch.rand(1 << 14, 3, generator=gen)
    enc = hashgrid_encode(x.detach(), params.detach(), **GRID)
    assert enc.is_contiguous() and enc.device.type == "cpu"
    keep = enc.clone()
    enc.resize_(enc.shape[0] * 2, enc.shape[1])  # storage can grow like any CPU tensor's
    torch.testing.assert_close(enc[: keep.shape[0]], keep, rtol=0, atol=0)
    shared = enc.numpy()  # views of its memory work
    shared[0, 0] = 7.0
    assert enc[0, 0].item() == 7.0


@needs_cache
def test_empty_cache_returns_the_cached_blocks(gen):
    params = _grid_params(gen)
    enc = hashgrid_encode(torch.rand(1 << 14, 3, generator=gen), params.detach(), **GRID)
    del enc
    assert fastgen.cpu_buffer_cache()["cached_bytes"] > 0
    fastgen.empty_cpu_cache()
    stats = fastgen.cpu_buffer_cache()
    assert stats["cached_bytes"] == 0 and stats["cached_blocks"] == 0


def _run(code: str, env_extra):
    env = dict(os.environ)
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


@needs_ext
@needs_cache
def test_the_most_recently_freed_block_is_reused_first(gen):
    """Among cached blocks of one size, a request takes the one freed last (the likeliest to be
    in cache): a sampling loop's new output reuses the buffer it has just let go."""
    from fastgen.ops import sampler_step

    x = torch.randn(1 << 18, generator=gen)  # 1 MiB outputs: pooled
    a = sampler_step(x, x, c_sample=1.0, backend="cpu")
    b = sampler_step(x, x, c_sample=2.0, backend="cpu")
    pa, pb = a.data_ptr(), b.data_ptr()
    assert pa != pb
    del a
    del b  # freed last
    c = sampler_step(x, x, c_sample=3.0, backend="cpu")
    assert c.data_ptr() == pb
    d = sampler_step(x, x, c_sample=4.0, backend="cpu")
    assert d.data_ptr() == pa
    assert torch.equal(c, 3.0 * x) and torch.equal(d, 4.0 * x)


def test_capacity_from_the_environment():
    code = """
        import torch, fastgen
        from fastgen.nn import HashGridEncoding
        from fastgen.ops import hashgrid_encode
        kw = dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4,
                  per_level_scale=1.5)
        x = torch.rand(1 << 15, 3)
        p = torch.rand(HashGridEncoding(3, **kw).n_params) - 0.5
        a = hashgrid_encode(x, p, **kw)
        del a
        b = hashgrid_encode(x, p, **kw)
        s = fastgen.cpu_buffer_cache()
        print(s["capacity_bytes"], s["hits"], s["misses"], s["cached_bytes"])
    """
    off = _run(code, {"FASTGEN_CPU_POOL_MB": "0"})
    assert off.returncode == 0, off.stderr
    assert off.stdout.split() == ["0", "0", "0", "0"]
    small = _run(code, {"FASTGEN_CPU_POOL_MB": "3"})  # every buffer here is 4 MiB: none kept
    assert small.returncode == 0, small.stderr
    cap, hits, misses, cached = map(int, small.stdout.split())
    assert cap == 3 << 20 and cached == 0 and hits == 0 and misses > 0
    default = _run(code, {"FASTGEN_CPU_POOL_MB": ""})
    assert default.returncode == 0, default.stderr
    cap, hits, misses, cached = map(int, default.stdout.split())
    assert cap == 512 << 20 and hits > 0
    for value in ("lots", "-1", "99999999999999999999"):
        bad = _run(code, {"FASTGEN_CPU_POOL_MB": value})
        assert bad.returncode != 0 and "FASTGEN_CPU_POOL_MB" in bad.stderr, value


@needs_cache
def test_ops_under_deterministic_mode():
    """Under torch.use_deterministic_algorithms the cache NaN-fills its blocks before handing
    them out (as at::empty does); the ops overwrite them and give the same values."""
    from fastgen.nn import HashGridEncoding

    x = torch.rand(1 << 14, 3)
    params = torch.rand(HashGridEncoding(3, **GRID).n_params)
    want = hashgrid_encode(x, params, **GRID)
    torch.use_deterministic_algorithms(True)
    try:
        got = hashgrid_encode(x, params, **GRID)
    finally:
        torch.use_deterministic_algorithms(False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)

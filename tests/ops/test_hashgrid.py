"""Tests of fastgen.ops.hashgrid_encode (C++ CPU, CUDA when present) against
fastgen.reference.hashgrid, and of tiny-cuda-nn's golden layouts and hash values (nerf.md §1)."""

import math
import warnings

import pytest
import torch

import fastgen
from fastgen.nn import HashGridEncoding
from fastgen.ops import hashgrid_encode, hashgrid_levels, hashgrid_n_params
from fastgen.ops.hashgrid import _op_args, config, params_grad_by_corners
from fastgen.reference.hashgrid import coherent_prime_hash
from fastgen.reference.hashgrid import hashgrid_encode as reference
from fastgen.registry import BackendError
from fastgen.testing import available_backends, devices
from fastgen.testing.markers import requires_cuda

CASES = [(dev, be) for dev in devices() for be in available_backends("hashgrid", dev)
         if be != "reference"]
NERF = dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16,
            per_level_scale=1.381912879967776)
SMALL = dict(n_levels=5, log2_hashmap_size=9, base_resolution=3, per_level_scale=1.9)


def _inputs(n, D, F, gen, device="cpu", dtype=torch.float32, cfg=SMALL, grid_type="Hash"):
    n_params = hashgrid_n_params(D, cfg["n_levels"], F, cfg["log2_hashmap_size"],
                                 cfg["base_resolution"], cfg["per_level_scale"], grid_type)
    x = torch.rand(n, D, generator=gen, dtype=dtype).to(device)
    params = (torch.rand(n_params, generator=gen, dtype=dtype) * 2 - 1).to(device)
    return x, params


def _fwd_bwd(fn, x, params, g, **kw):
    x = x.detach().requires_grad_()
    params = params.detach().requires_grad_()
    y = fn(x, params, **kw)
    gx, gp = torch.autograd.grad(y, (x, params), g, allow_unused=True, materialize_grads=True)
    return y, gx, gp


def _assert_matches(a, b, rtol=2e-6, atol=2e-6, what=""):
    scale = b.abs().max().item() if b.numel() else 0.0
    err = (a.double() - b.double()).abs().max().item() if b.numel() else 0.0
    assert err <= atol + rtol * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


# --- tcnn's golden values ------------------------------------------------------------------------

def test_golden_parameter_counts():
    assert hashgrid_n_params(3, **{k: v for k, v in NERF.items()}) == 12_196_240
    assert hashgrid_n_params(3, 20, 2, 16, 32, 1.5) == 2_555_904   # tcnn tests/test_grid.cu


def test_golden_level_table():
    levels = hashgrid_levels(3, 16, 19, 16, 1.381912879967776)
    assert [lv.resolution for lv in levels] == [16, 23, 31, 43, 59, 81, 112, 154, 213, 295, 407,
                                                562, 777, 1073, 1483, 2048]
    assert [lv.entries for lv in levels[:5]] == [4096, 12168, 29792, 79512, 205384]
    assert not any(lv.hashed for lv in levels[:5]) and all(lv.hashed for lv in levels[5:])
    assert all(lv.entries == 1 << 19 for lv in levels[5:])
    assert levels[15].scale == pytest.approx(2046.9987, abs=1e-4)   # right under a ceil boundary
    tcnn_test = hashgrid_levels(3, 20, 16, 32, 1.5)
    assert (tcnn_test[0].entries, tcnn_test[0].hashed) == (32 ** 3, False)
    assert (tcnn_test[1].entries, tcnn_test[1].hashed) == (65536, True)


GOLDEN_HASH = [((0, 0, 0), 0, 0), ((1, 0, 0), 1, 1), ((0, 1, 0), 2654435761, 489905),
               ((0, 0, 1), 805459861, 153493), ((1, 2, 3), 2892625372, 128476),
               ((17, 100, 1000), 1150129981, 366397), ((2047, 2047, 2047), 4281096667, 285147)]


def test_golden_hash_reference():
    p = torch.tensor([g[0] for g in GOLDEN_HASH])
    h = coherent_prime_hash(p)
    assert h.tolist() == [g[1] for g in GOLDEN_HASH]
    assert (h % (1 << 19)).tolist() == [g[2] for g in GOLDEN_HASH]


@pytest.mark.parametrize("device,backend", CASES)
def test_golden_hash_kernel(device, backend):
    # One hashed level of 2048 vertices per side (scale 2047); Nearest reads entry hash(p) of a
    # table holding its own entry numbers, so the output is the kernel's index.
    kw = dict(n_levels=1, n_features_per_level=1, log2_hashmap_size=19, base_resolution=2048,
              per_level_scale=2.0, interpolation="Nearest")
    params = torch.arange(1 << 19, dtype=torch.float32, device=device)
    x = torch.tensor([g[0] for g in GOLDEN_HASH], dtype=torch.float32, device=device) / 2047
    y = hashgrid_encode(x, params, backend=backend, **kw)
    assert y[:, 0].long().tolist() == [g[2] for g in GOLDEN_HASH]


# --- forward and backward against the reference --------------------------------------------------

@pytest.mark.parametrize("interpolation", ["Linear", "Smoothstep", "Nearest"])
@pytest.mark.parametrize("F", [1, 2, 4, 8])
@pytest.mark.parametrize("D", [2, 3, 4])
@pytest.mark.parametrize("device,backend", CASES)
def test_matches_reference(device, backend, D, F, interpolation, gen):
    x, params = _inputs(97, D, F, gen, device)
    kw = dict(SMALL, n_features_per_level=F, interpolation=interpolation)
    g = torch.randn(97, 5 * F, generator=gen).to(device)
    y, gx, gp = _fwd_bwd(hashgrid_encode, x, params, g, backend=backend, **kw)
    yr, gxr, gpr = _fwd_bwd(reference, x, params, g, **kw)
    assert y.shape == (97, 5 * F) and torch.isfinite(y).all()
    _assert_matches(y, yr, what="y")
    _assert_matches(gp, gpr, what="grad params")
    _assert_matches(gx, gxr, rtol=2e-5, what="grad x")  # summed over levels of scale up to ~40
    if interpolation == "Nearest":
        assert (gx == 0).all()


@pytest.mark.parametrize("grid_type", ["Dense", "Tiled", "Hash"])
@pytest.mark.parametrize("n", [1, 7, 1000])
@pytest.mark.parametrize("device,backend", CASES)
def test_grid_types_and_sizes(device, backend, grid_type, n, gen):
    x, params = _inputs(n, 3, 2, gen, device, grid_type=grid_type)
    kw = dict(SMALL, n_features_per_level=2, grid_type=grid_type)
    g = torch.randn(n, 10, generator=gen).to(device)
    y, gx, gp = _fwd_bwd(hashgrid_encode, x, params, g, backend=backend, **kw)
    yr, gxr, gpr = _fwd_bwd(reference, x, params, g, **kw)
    _assert_matches(y, yr, what="y")
    _assert_matches(gp, gpr, what="grad params")
    _assert_matches(gx, gxr, rtol=2e-5, what="grad x")


@pytest.mark.parametrize("device,backend", CASES)
def test_standard_nerf_config(device, backend, gen):
    """The 12M-parameter config: dense and hashed levels and the finest level's ceil boundary."""
    x, params = _inputs(3000, 3, 2, gen, device, cfg=NERF)
    g = torch.randn(3000, 32, generator=gen).to(device)
    y, gx, gp = _fwd_bwd(hashgrid_encode, x, params, g, backend=backend, **NERF)
    yr, gxr, gpr = _fwd_bwd(reference, x, params, g, **NERF)
    _assert_matches(y, yr, what="y")
    _assert_matches(gp, gpr, what="grad params")
    _assert_matches(gx, gxr, rtol=1e-4, what="grad x")


@pytest.mark.parametrize("device,backend", CASES)
def test_batch_dims_and_strided_x(device, backend, gen):
    _, params = _inputs(1, 3, 2, gen, device)
    kw = dict(SMALL, n_features_per_level=2)
    wide = torch.rand(2, 3, 5, 6, generator=gen).to(device)
    xv = wide[..., ::2].transpose(1, 2)            # [2, 5, 3, 3], a non-contiguous view
    y = hashgrid_encode(xv, params, backend=backend, **kw)
    assert y.shape == (2, 5, 3, 10)
    _assert_matches(y.reshape(-1, 10), reference(xv.reshape(-1, 3), params, **kw), what="y")


@pytest.mark.parametrize("device,backend", CASES)
def test_empty_batch(device, backend):
    x = torch.empty(0, 3, device=device, requires_grad=True)
    params = torch.zeros(hashgrid_n_params(3, **dict(SMALL, n_features_per_level=2)),
                         device=device, requires_grad=True)
    y = hashgrid_encode(x, params, backend=backend, **SMALL)
    assert y.shape == (0, 10)
    y.sum().backward()
    assert (params.grad == 0).all() and x.grad.shape == (0, 3)


def _away_from_cell_faces(x, scales, gen, margin=1e-3):
    """Resample coordinates within `margin` of a cell face at any level: the encoding is only
    piecewise smooth, and a finite difference across a face is not its derivative."""
    for _ in range(100):
        near = torch.zeros(x.shape[0], dtype=torch.bool)
        for s in scales:
            frac = torch.frac(x * s + 0.5)
            near |= ((frac < margin) | (frac > 1 - margin)).any(-1)
        if not near.any():
            return x
        x[near] = torch.rand(int(near.sum()), x.shape[1], generator=gen, dtype=x.dtype)
    raise AssertionError("could not draw points away from cell faces")


@pytest.mark.parametrize("interpolation", ["Linear", "Smoothstep", "Nearest"])
def test_gradcheck_float64(interpolation, gen):
    kw = dict(n_levels=3, n_features_per_level=2, log2_hashmap_size=6, base_resolution=3,
              per_level_scale=2.0, interpolation=interpolation)
    n = hashgrid_n_params(3, 3, 2, 6, 3, 2.0)
    params = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    x = torch.rand(9, 3, generator=gen, dtype=torch.float64)
    scales = [lv.scale for lv in hashgrid_levels(3, 3, 6, 3, 2.0)]
    x = _away_from_cell_faces(x, scales, gen).requires_grad_()
    fn = lambda x, p: hashgrid_encode(x, p, backend="cpu", **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, params))
    assert torch.autograd.gradgradcheck(fn, (x, params))   # second order via the reference


def test_second_order_eikonal_style():
    """d/dparams of a loss on dy/dx (SDF eikonal terms) matches the reference's autograd."""
    gen = torch.Generator().manual_seed(1)
    x, params = _inputs(50, 3, 2, gen)
    kw = dict(SMALL, n_features_per_level=2)
    w = torch.randn(10, generator=gen)
    out = []
    for fn in (lambda a, p: hashgrid_encode(a, p, backend="cpu", **kw),
               lambda a, p: reference(a, p, **kw)):
        xr, pr = x.clone().requires_grad_(), params.clone().requires_grad_()
        (dydx,) = torch.autograd.grad(fn(xr, pr) @ w, xr, torch.ones(50), create_graph=True)
        ((dydx.norm(dim=-1) - 1) ** 2).sum().backward()
        out.append(pr.grad)
    _assert_matches(out[0], out[1], rtol=1e-4, what="eikonal grad params")


# --- documented behaviour outside [0, 1] and for NaN ---------------------------------------------

@pytest.mark.parametrize("device,backend", CASES)
def test_out_of_range_x_is_clamped(device, backend, gen):
    x, params = _inputs(64, 3, 2, gen, device)
    kw = dict(SMALL, n_features_per_level=2)
    far = x * 6 - 3  # most coordinates outside [0, 1]
    far[0] = torch.tensor([1e30, -1e30, float("inf")])
    y = hashgrid_encode(far, params, backend=backend, **kw)
    torch.testing.assert_close(y, hashgrid_encode(far.clamp(0, 1), params, backend=backend, **kw),
                               rtol=0, atol=0)
    far.requires_grad_()
    hashgrid_encode(far, params, backend=backend, **kw).sum().backward()
    outside = (far < 0) | (far > 1)
    assert outside.any() and (far.grad[outside] == 0).all()
    assert (far.grad[~outside] != 0).any()


@pytest.mark.parametrize("device,backend", CASES)
def test_nan_point_is_isolated(device, backend, gen):
    x, params = _inputs(20, 3, 2, gen, device)
    kw = dict(SMALL, n_features_per_level=2)
    xn = x.clone()
    xn[3, 1] = float("nan")
    g = torch.randn(20, 10, generator=gen).to(device)
    y, gx, gp = _fwd_bwd(hashgrid_encode, xn, params, g, backend=backend, **kw)
    assert torch.isnan(y[3]).all() and torch.isfinite(y[torch.arange(20) != 3]).all()
    assert torch.isnan(gx[3]).all() and torch.isfinite(gp).all()
    keep = torch.arange(20) != 3
    _, _, gp_without = _fwd_bwd(hashgrid_encode, x[keep], params, g[keep], backend=backend, **kw)
    _assert_matches(gp, gp_without, what="grad params without the NaN point")


# --- determinism ---------------------------------------------------------------------------------

def test_cpu_param_gradient_is_bitwise_reproducible(gen):
    x, params = _inputs(5000, 3, 2, gen, cfg=NERF)
    g = torch.randn(5000, 32, generator=gen)
    grads = [_fwd_bwd(hashgrid_encode, x, params, g, backend="cpu", **NERF)[2] for _ in range(3)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        grads.append(_fwd_bwd(hashgrid_encode, x, params, g, backend="cpu", **NERF)[2])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], gr) for gr in grads[1:])


@pytest.mark.parametrize("interpolation", ["Linear", "Nearest", "Smoothstep"])
@pytest.mark.parametrize("device", devices())
def test_deterministic_corner_path_matches(device, interpolation, gen):
    """The corner-list gradient (used on CUDA under torch.use_deterministic_algorithms) equals
    the kernels' scatter gradient."""
    cfg = config(3, 5, 2, 9, 3, 1.9, interpolation)
    x, params = _inputs(300, 3, 2, gen, device)
    x[7, 0] = float("nan")
    g = torch.randn(300, 10, generator=gen).to(device)
    g[7] = float("nan")  # a NaN point's gradient may be NaN (its output was); params stay finite
    direct, _ = torch.ops.fastgen.hashgrid_bwd(g, x, params, *_op_args(cfg), True, False)
    by_corners = params_grad_by_corners(g, x, params, *_op_args(cfg))
    assert torch.isfinite(direct).all() and torch.isfinite(by_corners).all()
    _assert_matches(by_corners, direct, what="corner-list grad")


def _edge_points(D, n, gen):
    """Random points with coordinates replaced by the awkward ones: 0, 1, 1 - 2^-24, exact
    vertex and cell-centre positions of the SMALL levels."""
    special = [0.0, 1.0, 1.0 - 2.0 ** -24, 2.0 ** -24, 0.5]
    for lv in hashgrid_levels(D, **{k: v for k, v in SMALL.items()}):
        special += [(k + 0.5) / lv.scale for k in range(int(lv.scale))][:6]
        special += [k / lv.scale for k in range(int(lv.scale) + 1)][:6]
    x = torch.rand(n, D, generator=gen)
    pick = torch.randint(0, len(special), (n, D), generator=gen)
    use = torch.rand(n, D, generator=gen) < 0.6
    return torch.where(use, torch.tensor(special, dtype=torch.float32)[pick], x).clamp(0, 1)


@pytest.mark.parametrize("F", [1, 2])
@pytest.mark.parametrize("interpolation", ["Linear", "Smoothstep", "Nearest"])
@pytest.mark.parametrize("grid_type", ["Hash", "Dense"])
@pytest.mark.parametrize("D", [2, 3, 4])
def test_cpu_simd_forward_is_bitwise_the_scalar_core(D, grid_type, interpolation, F, gen):
    """The fp32 CPU forward (vectorised corner math; for F = 2 also the paired 64-bit gathers)
    equals, bit for bit, the fma sequence over the corners the scalar shared core lists
    (hashgrid_corners), at awkward coordinates, with NaN points and a ragged last block."""
    n = 203
    x = _edge_points(D, n, gen)
    x[[5, 200]] = float("nan")
    kw = dict(SMALL, n_features_per_level=F, interpolation=interpolation, grid_type=grid_type)
    cfg = config(D, **{k: v for k, v in kw.items()})
    params = torch.randn(cfg.n_params, generator=gen)
    y = torch.ops.fastgen.hashgrid_fwd(x, params, *_op_args(cfg)).view(n, -1, F)
    table = params.view(-1, F)
    for level in range(len(cfg.levels)):
        index, weight = torch.ops.fastgen.hashgrid_corners(x, cfg.offsets, cfg.scales, level,
                                                           cfg.interpolation, cfg.use_hash)
        acc = torch.zeros(n, F, dtype=torch.float32)
        for k in range(index.shape[1]):  # fma in float32: exact float64 product, one rounding
            acc = (weight[:, k, None].double() * table[index[:, k]].double()
                   + acc.double()).float()
        acc[[5, 200]] = float("nan")
        assert torch.equal(y[:, level].isnan(), acc.isnan()), f"level {level}"
        assert torch.equal(y[:, level].nan_to_num(), acc.nan_to_num()), f"level {level}"


# --- bad input -----------------------------------------------------------------------------------

def _bad(**over):
    kw = dict(SMALL, n_features_per_level=2)
    x = over.pop("x", torch.rand(4, 3))
    params = over.pop("params", None)
    kw.update(over)
    if params is None:
        params = torch.zeros(hashgrid_n_params(3, kw["n_levels"], kw["n_features_per_level"],
                                               kw["log2_hashmap_size"], kw["base_resolution"],
                                               kw["per_level_scale"]))
    return hashgrid_encode(x, params, **kw)


@pytest.mark.parametrize("over,exc,match", [
    (dict(x=torch.rand(4, 5)), ValueError, "n_input_dims"),
    (dict(x=torch.rand(4, 1)), ValueError, "n_input_dims"),
    (dict(x=torch.ones(4, 3, dtype=torch.int64)), TypeError, "floating-point"),
    (dict(n_features_per_level=3, params=torch.zeros(10)), ValueError, "n_features_per_level"),
    (dict(params=torch.zeros(11)), ValueError, "params must be 1-D with"),
    (dict(params=torch.zeros(2, 5)), ValueError, "params must be 1-D with"),
    (dict(log2_hashmap_size=0, params=torch.zeros(8)), ValueError, "log2_hashmap_size"),
    (dict(log2_hashmap_size=32, params=torch.zeros(8)), ValueError, "log2_hashmap_size"),
    (dict(n_levels=33, params=torch.zeros(8)), ValueError, "n_levels"),
    (dict(per_level_scale=float("nan"), params=torch.zeros(8)), ValueError, "per_level_scale"),
    (dict(per_level_scale=-1.0, params=torch.zeros(8)), ValueError, "per_level_scale"),
    (dict(base_resolution=0, params=torch.zeros(8)), ValueError, "base_resolution"),
    (dict(interpolation="Cubic", params=torch.zeros(8)), ValueError, "interpolation"),
    (dict(grid_type="Octree", params=torch.zeros(8)), ValueError, "grid_type"),
    (dict(per_level_scale=1e9, n_levels=3, params=torch.zeros(8)), ValueError, "exceeds 2"),
])
def test_bad_input_is_named(over, exc, match):
    with pytest.raises(exc, match=match):
        _bad(**over)


@pytest.mark.parametrize("kw,match", [
    (dict(base_resolution=1, per_level_scale=0.5), "negative level scale"),
    (dict(per_level_scale=1e30), "exceeds 2"),
    (dict(n_levels=32, per_level_scale=3.0), "exceeds 2"),
])
def test_config_rejects_scales(kw, match):
    with pytest.raises(ValueError, match=match):
        config(3, **dict(dict(SMALL, n_features_per_level=2), **kw))


@pytest.mark.parametrize("D,growth", [(3, 1000.0), (4, 200.0)])
@pytest.mark.parametrize("device,backend", CASES)
def test_tiled_level_past_max_dense_base_reads_entry_zero(device, backend, D, growth, gen):
    """A non-hashed level finer than tcnn's MAX_BASES has no dense index: tcnn reads entry 0
    for every vertex, so the level's output is that entry (weights sum to 1)."""
    kw = dict(n_levels=2, n_features_per_level=2, log2_hashmap_size=19, base_resolution=2,
              per_level_scale=growth, grid_type="Tiled")
    cfg = config(D, **kw)
    assert cfg.levels[1].resolution > {3: 0x659, 4: 0xFF}[D]
    x = torch.rand(50, D, generator=gen, dtype=torch.float64).to(device)
    params = torch.randn(cfg.n_params, generator=gen, dtype=torch.float64).to(device)
    y = hashgrid_encode(x, params, backend=backend, **kw)
    yr = reference(x, params, **kw)
    _assert_matches(y, yr, rtol=1e-12, atol=1e-12, what="y")
    entry0 = params[cfg.offsets[1] * 2:cfg.offsets[1] * 2 + 2]
    _assert_matches(y[:, 2:], entry0.expand(50, 2), rtol=1e-12, atol=1e-12, what="level 1")


def test_nearest_second_order_gives_zero_x_gradient(gen):
    x = torch.rand(20, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    kw = dict(SMALL, n_features_per_level=2, interpolation="Nearest")
    params = torch.randn(hashgrid_n_params(3, 5, 2, 9, 3, 1.9), generator=gen,
                         dtype=torch.float64, requires_grad=True)
    y = hashgrid_encode(x, params, **kw)
    gx, gp = torch.autograd.grad(y.square().sum(), (x, params), create_graph=True)
    assert gx.shape == x.shape and (gx == 0).all()
    (gp.square().sum()).backward()  # differentiable
    assert params.grad is not None and torch.isfinite(params.grad).all()


def test_bad_params_dtype():
    n = hashgrid_n_params(3, **dict(SMALL, n_features_per_level=2))
    with pytest.raises(TypeError, match="params must be float32"):
        _bad(params=torch.zeros(n, dtype=torch.int32))
    with pytest.raises(BackendError, match="float16 params run on CUDA only"):
        _bad(params=torch.zeros(n, dtype=torch.float16), backend="cpu")


def test_float16_params_on_cpu_fall_back_to_reference_with_a_warning():
    n = hashgrid_n_params(3, **dict(SMALL, n_features_per_level=2))
    params = torch.rand(n, dtype=torch.float16)
    x = torch.rand(6, 3)
    fastgen.registry._warned.discard(("hashgrid", "cpu"))
    with pytest.warns(RuntimeWarning, match="falls back to the PyTorch reference"):
        y = _bad(params=params, x=x)
    assert y.dtype == torch.float16
    _assert_matches(y, reference(x, params, **dict(SMALL, n_features_per_level=2)), what="y")


def test_op_level_checks_name_the_argument():
    cfg = config(3, 5, 2, 9, 3, 1.9)
    offsets, scales, F, interp, use_hash = _op_args(cfg)
    x, params = torch.rand(4, 3), torch.zeros(cfg.n_params)
    with pytest.raises(RuntimeError, match="x must be float32"):
        torch.ops.fastgen.hashgrid_fwd(x.double(), params, offsets, scales, F, interp, use_hash)
    with pytest.raises(RuntimeError, match="offsets must increase"):
        torch.ops.fastgen.hashgrid_fwd(x, params, [0, 5, 5, 9, 12, 20], scales, F, interp,
                                       use_hash)
    with pytest.raises(RuntimeError, match="interpolation must be"):
        torch.ops.fastgen.hashgrid_fwd(x, params, offsets, scales, F, 7, use_hash)
    with pytest.raises(RuntimeError, match="scales"):
        torch.ops.fastgen.hashgrid_fwd(x, params, offsets, [math.inf] * 5, F, interp, use_hash)


# --- torch.compile and the module ----------------------------------------------------------------

def test_torch_compile_fullgraph(gen):
    enc = HashGridEncoding(3, **SMALL)
    x = torch.rand(33, 3, generator=gen)
    compiled = torch.compile(enc, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.square().sum().backward()
    grad = enc.params.grad.clone()
    enc.params.grad = None
    y_eager = enc(x)
    y_eager.square().sum().backward()
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(grad, enc.params.grad)


def test_module_defaults_and_table():
    enc = HashGridEncoding()
    assert (enc.n_params, enc.n_output_dims, enc.n_levels) == (hashgrid_n_params(), 32, 16)
    assert enc.params.abs().max() <= 1e-4 and enc.params.std() > 1e-5
    nerf = HashGridEncoding(3, per_level_scale=1.381912879967776)
    assert nerf.n_params == 12_196_240
    table = nerf.levels()
    assert [lv.hashed for lv in table].count(False) == 5 and table[-1].resolution == 2048
    assert "n_params=12196240" in repr(nerf)


def test_module_matches_functional_and_state_dict(gen):
    enc = HashGridEncoding(2, n_levels=4, n_features_per_level=4, log2_hashmap_size=8,
                           base_resolution=4, per_level_scale=1.5, interpolation="Smoothstep")
    x = torch.rand(10, 2, generator=gen)
    y = enc(x)
    torch.testing.assert_close(y, hashgrid_encode(x, enc.params, n_levels=4,
                                                  n_features_per_level=4, log2_hashmap_size=8,
                                                  base_resolution=4, per_level_scale=1.5,
                                                  interpolation="Smoothstep"))
    other = HashGridEncoding(2, n_levels=4, n_features_per_level=4, log2_hashmap_size=8,
                             base_resolution=4, per_level_scale=1.5, interpolation="Smoothstep")
    other.load_state_dict(enc.state_dict())
    torch.testing.assert_close(other(x), y)
    with pytest.raises(ValueError, match=r"x must be \[..., 2\]"):
        enc(torch.rand(3, 3))


def test_from_tcnn_config():
    enc = HashGridEncoding.from_tcnn_config(3, {"otype": "HashGrid", "n_levels": 16,
                                                "n_features_per_level": 2,
                                                "log2_hashmap_size": 19, "base_resolution": 16,
                                                "per_level_scale": 1.381912879967776})
    assert enc.n_params == 12_196_240 and enc.grid_type == "Hash"
    dense = HashGridEncoding.from_tcnn_config(2, {"otype": "DenseGrid", "n_levels": 2,
                                                  "base_resolution": 8})
    assert dense.grid_type == "Dense" and not any(lv.hashed for lv in dense.levels())
    grid = HashGridEncoding.from_tcnn_config(3, {"otype": "Grid", "type": "Tiled",
                                                 "n_features": 8, "n_features_per_level": 4,
                                                 "interpolation": "smoothstep"})
    assert (grid.grid_type, grid.n_levels, grid.interpolation) == ("Tiled", 2, "Smoothstep")
    assert HashGridEncoding.from_tcnn_config(3, {"otype": "HashGrid"}).n_params == \
        hashgrid_n_params()


def test_from_tcnn_config_dense_default_scale():
    """tcnn's Dense default per_level_scale reaches 256 vertices: exp(log(256/base)/(L-1))."""
    enc = HashGridEncoding.from_tcnn_config(2, {"otype": "DenseGrid", "n_levels": 3,
                                                "base_resolution": 16})
    assert enc._kwargs["per_level_scale"] == pytest.approx(4.0, rel=1e-6)
    assert enc.levels()[-1].resolution in (256, 257)
    hashed = HashGridEncoding.from_tcnn_config(2, {"otype": "HashGrid", "n_levels": 3})
    assert hashed._kwargs["per_level_scale"] == 2.0


@pytest.mark.parametrize("cfg,match", [
    ({"otype": "Frequency"}, "otype"),
    ({"otype": "HashGrid", "n_levels": 4, "n_features": 8}, "not both"),
    ({"otype": "HashGrid", "stochastic_interpolation": True}, "stochastic_interpolation"),
    ({"otype": "HashGrid", "hash": "Prime"}, "hash must be CoherentPrime"),
    ({"otype": "HashGrid", "n_level": 4}, "unsupported key"),
    ({"otype": "Grid", "type": "Octree"}, "type must be"),
    ({"otype": "HashGrid", "n_features_per_level": 3}, "n_features_per_level"),
])
def test_from_tcnn_config_rejects(cfg, match):
    with pytest.raises(ValueError, match=match):
        HashGridEncoding.from_tcnn_config(3, cfg)


# --- CUDA ----------------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_matches_cpu(dtype, gen):
    x, params = _inputs(4096, 3, 2, gen, cfg=NERF)
    g = torch.randn(4096, 32, generator=gen)
    y, gx, gp = _fwd_bwd(hashgrid_encode, x.cuda(), params.to(dtype).cuda(), g.to(dtype).cuda(),
                         backend="cuda", **NERF)
    yc, gxc, gpc = _fwd_bwd(hashgrid_encode, x, params.to(dtype).float(), g.to(dtype).float(),
                            backend="cpu", **NERF)
    tol = 2e-6 if dtype == torch.float32 else 2e-3
    _assert_matches(y.cpu(), yc, rtol=tol, atol=tol, what="y")
    _assert_matches(gp.cpu(), gpc, rtol=tol, atol=tol, what="grad params")
    _assert_matches(gx.cpu(), gxc, rtol=100 * tol, atol=tol, what="grad x")


@requires_cuda
def test_cuda_deterministic_mode_is_bitwise_reproducible(gen):
    x, params = _inputs(20000, 3, 2, gen, "cuda", cfg=NERF)
    g = torch.randn(20000, 32, generator=gen).cuda()
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        grads = [_fwd_bwd(hashgrid_encode, x, params, g, backend="cuda", **NERF)[2]
                 for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(was)
    assert all(torch.equal(grads[0], gr) for gr in grads[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = _fwd_bwd(hashgrid_encode, x, params, g, backend="cuda", **NERF)[2]
    _assert_matches(grads[0], ref, what="deterministic vs atomic grad")


@pytest.mark.parametrize("F", [1, 2, 4])
@pytest.mark.parametrize("backend", [b for b in available_backends("hashgrid", "cpu")])
def test_planar_layout_is_the_same_encoding(backend, F, gen):
    """planar=True: [L, ..., F] with out[l, ..., f] = column l * F + f of the default output,
    and gradients through it (to x and params) equal to those through the default layout —
    bitwise on the cpu backend, whose planar gradient skips the level-major copy."""
    x, params = _inputs(301, 3, F, gen)
    x = x.reshape(7, 43, 3)
    kw = dict(SMALL, n_features_per_level=F)
    g = torch.randn(7, 43, 5 * F, generator=gen)
    y, gx, gp = _fwd_bwd(hashgrid_encode, x, params, g, backend=backend, **kw)
    gplanar = g.reshape(7, 43, 5, F).permute(2, 0, 1, 3)
    yp, gxp, gpp = _fwd_bwd(hashgrid_encode, x, params, gplanar, backend=backend, planar=True,
                            **kw)
    assert yp.shape == (5, 7, 43, F)
    assert torch.equal(yp.permute(1, 2, 0, 3).reshape(7, 43, 5 * F), y)
    if backend == "cpu":
        assert yp.is_contiguous()
    assert torch.equal(gp, gpp) and torch.equal(gx, gxp)
    # the params gradient alone (no x gradient: the cpu kernel reads the planar gradient as is)
    p = params.detach().requires_grad_()
    alone, = torch.autograd.grad(hashgrid_encode(x, p, backend=backend, planar=True, **kw), p,
                                 gplanar)
    assert torch.equal(alone, gp)

"""Ray-box intersection, occupancy-grid marching and OccupancyGrid (fastgen.nerf): the slab
oracle, the C++ marcher against the numba reference sample for sample, the sampler's guarantees
(midpoints in occupied cells, inside [near, far]), the grid's update rule on a known shape,
camera visibility, early termination, closed-form rendering through the sampler, bad input."""

import math

import pytest
import torch

from fastgen.nerf import OccupancyGrid, march, ray_aabb_intersect, rendering
from fastgen.testing import available_backends

BACKENDS = available_backends("march", "cpu")


def _rays(gen, n=300, origin=(-1.5, 0.5, 0.5), spread=0.3):
    o = torch.tensor(origin) + (torch.rand(n, 3, generator=gen) - 0.5) * spread
    d = torch.tensor([1.0, 0.1, -0.05]) + torch.randn(n, 3, generator=gen) * 0.2
    return o, torch.nn.functional.normalize(d, dim=-1)


@pytest.mark.parametrize("backend", available_backends("ray_aabb_intersect", "cpu"))
def test_ray_aabb_matches_the_slab_oracle(backend, gen):
    o, d = _rays(gen)
    d[:7, 1] = 0.0  # rays parallel to a slab: inside or outside it
    o[:3, 1] = 2.0
    boxes = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0], [-0.2, 0.3, 0.1, 0.4, 0.9, 0.5]])
    t0, t1, hit = ray_aabb_intersect(o, d, boxes, backend=backend)
    for m in range(2):
        lo, hi = boxes[m, :3], boxes[m, 3:]
        for r in range(o.shape[0]):  # brute force: is the point at a t inside the box?
            ts = torch.linspace(-5, 5, 2001)
            p = o[r] + ts[:, None] * d[r]
            inside = ((p >= lo) & (p <= hi)).all(-1)
            assert bool(inside.any()) == bool(hit[r, m]) or abs(
                float(t1[r, m] - t0[r, m])) < 0.01, (r, m)
            if hit[r, m] and inside.any():
                assert abs(float(ts[inside].min()) - float(t0[r, m])) < 0.006
                assert abs(float(ts[inside].max()) - float(t1[r, m])) < 0.006
    assert not hit[:3, 0].any()  # parallel to y, outside the y slab


def test_ray_aabb_near_far_and_miss_value(gen):
    o = torch.tensor([[-1.0, 0.5, 0.5], [-1.0, 5.0, 0.5]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    t0, t1, hit = ray_aabb_intersect(o, d, torch.tensor([[0.0, 0, 0, 1, 1, 1]]), near_plane=1.5,
                                     far_plane=1.8, miss_value=-7.0)
    assert hit.tolist() == [[True], [False]]
    assert t0[0, 0] == 1.5 and t1[0, 0] == 1.8 and t0[1, 0] == -7.0 and t1[1, 0] == -7.0


@pytest.mark.parametrize("cone", [0.0, 0.02])
def test_cpu_marcher_equals_reference(cone, gen):
    o, d = _rays(gen)
    bits = torch.rand(2, 16, 16, 16, generator=gen) < 0.3
    boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1], [-0.5, -0.5, -0.5, 1.5, 1.5, 1.5]])
    t0, t1, _ = ray_aabb_intersect(o, d, boxes[1:], near_plane=0.0)
    t0, t1 = t0[:, 0], t1[:, 0]
    t0 = torch.where(torch.isfinite(t0), t0, t1)
    got = march(o, d, t0, t1, bits, boxes, 0.01, cone, backend="cpu")
    want = march(o, d, t0, t1, bits, boxes, 0.01, cone, backend="reference")
    # Both compute t in float32 but round differently by an ulp here and there (seed 649599909:
    # a cone-stepped t 2.7063227 vs 2.7063229), which can move one midpoint across a cell
    # boundary and add or drop that one sample. Rays must agree sample for sample, except at most
    # one ray per batch differing by one sample.
    n = o.shape[0]
    counts_got = torch.bincount(got[0], minlength=n)
    counts_want = torch.bincount(want[0], minlength=n)
    off = (counts_got != counts_want).nonzero().flatten().tolist()
    assert len(off) <= 1 and all(abs(int(counts_got[r] - counts_want[r])) == 1 for r in off), off
    keep_got = ~torch.isin(got[0], torch.tensor(off, dtype=got[0].dtype))
    keep_want = ~torch.isin(want[0], torch.tensor(off, dtype=want[0].dtype))
    assert torch.equal(got[0][keep_got], want[0][keep_want])
    torch.testing.assert_close(got[1][keep_got], want[1][keep_want], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[2][keep_got], want[2][keep_want], rtol=0, atol=1e-5)
    assert keep_got.sum() > 0.9 * got[0].numel()


def _sphere_grid(res=16, levels=2, radius=0.3):
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=res, levels=levels)

    def occ(x):
        return ((x - 0.5).norm(dim=-1) < radius).float()

    grid.update(0, occ, occ_thre=0.5)
    return grid


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_lie_in_occupied_cells_and_inside_near_far(backend, gen):
    grid = _sphere_grid()
    o, d = _rays(gen, n=200)
    ray, ts, te = grid.sampling(o, d, near_plane=1.0, far_plane=2.2, render_step_size=0.005)
    assert ts.numel() > 0 and torch.equal(ray, ray.sort().values)
    assert (ts >= 1.0 - 1e-6).all() and (te <= 2.2 + 1e-6).all() and (te > ts).all()
    mid = o[ray] + d[ray] * ((ts + te) / 2)[:, None]
    lvl0 = ((mid >= 0) & (mid <= 1)).all(-1)
    ijk = (mid * 16).floor().long().clamp(0, 15)
    assert grid.binaries[0][ijk[lvl0, 0], ijk[lvl0, 1], ijk[lvl0, 2]].all()
    assert not lvl0.logical_not().any()  # nothing occupied outside the roi here


def test_update_marks_exactly_a_known_shape():
    # a cell-aligned box: every jittered point of a cell is inside it or outside it
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=8, levels=1)
    grid.update(0, lambda x: (((x >= 0.25) & (x < 0.75)).all(-1)).float() * 5.0)
    want = torch.zeros(8, 8, 8, dtype=torch.bool)
    want[2:6, 2:6, 2:6] = True
    assert torch.equal(grid.binaries[0], want)
    # decayed max: a field that turns off decays by 0.95 per update, bits follow the threshold
    grid.update(300, lambda x: torch.zeros(x.shape[0]), occ_thre=4.9)
    assert torch.allclose(grid.occs.max(), torch.tensor(4.75))


def test_dense_grid_gives_uniform_steps_and_cone_steps_grow(gen):
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=4)
    grid.binaries.fill_(True)
    o = torch.tensor([[-1.0, 0.5, 0.5]])
    d = torch.tensor([[1.0, 0.0, 0.0]])
    ray, ts, te = grid.sampling(o, d, render_step_size=0.1, early_stop_eps=0)
    torch.testing.assert_close(ts, torch.arange(10) * 0.1 + 1.0)
    ray, ts, te = grid.sampling(o, d, render_step_size=0.01, cone_angle=0.05, near_plane=0.0)
    dt = te - ts
    assert (dt[1:-1] >= dt[:-2] - 1e-6).all() and dt[0] == pytest.approx(0.05, rel=1e-4)


def test_skipping_matches_dense_marching_on_a_sphere():
    # constant-density sphere: the colour with empty-space skipping equals dense marching and
    # the closed form C = k(1 − e^{−σℓ}) + b e^{−σℓ} to O(step)
    sigma, k, bg, radius = 4.0, torch.tensor([0.9, 0.3, 0.2]), torch.tensor([0.0, 0.0, 1.0]), 0.3
    grid = _sphere_grid(res=32, levels=1, radius=radius + 0.05)
    dense = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=32)
    dense.binaries.fill_(True)
    py = torch.linspace(0.25, 0.75, 11)
    o = torch.stack([torch.full_like(py, -1.0), py, torch.full_like(py, 0.5)], -1)
    d = torch.tensor([1.0, 0.0, 0.0]).expand(11, 3).contiguous()

    def field(ts, te, ray):
        x = o[ray] + d[ray] * ((ts + te) / 2)[:, None]
        inside = ((x - 0.5).norm(dim=-1) < radius).float()
        return k.expand(ts.shape[0], 3), sigma * inside

    colours = []
    for g in (grid, dense):
        ray, ts, te = g.sampling(o, d, render_step_size=1e-3, early_stop_eps=0)
        colours.append(rendering(ts, te, ray, 11, rgb_sigma_fn=field, render_bkgd=bg)[0])
    assert (colours[0] - colours[1]).abs().max() < 1e-3
    p = (py - 0.5).abs()
    ell = 2 * torch.sqrt(torch.clamp(radius ** 2 - p ** 2, min=0))
    want = k * (1 - torch.exp(-sigma * ell))[:, None] + bg * torch.exp(-sigma * ell)[:, None]
    assert (colours[0] - want).abs().max() < 0.02


def test_early_termination_and_alpha_threshold():
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=4)
    grid.binaries.fill_(True)
    grid.occs.fill_(1.0)
    o = torch.tensor([[-1.0, 0.5, 0.5]])
    d = torch.tensor([[1.0, 0.0, 0.0]])

    def wall(ts, te, ray):  # opaque beyond x = 0.5 (t = 1.5), faint before
        return torch.where((ts + te) / 2 > 1.5, 200.0, 0.5)

    ray, ts, te = grid.sampling(o, d, sigma_fn=wall, render_step_size=0.01)
    assert ts.max() < 1.6  # stopped within a few steps of the wall
    ray2, ts2, _ = grid.sampling(o, d, sigma_fn=wall, render_step_size=0.01, alpha_thre=0.1)
    assert (ts2 > 1.49).all()  # the faint samples (alpha 0.005) dropped


def test_mark_invisible_cells():
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=4)
    grid.binaries.fill_(True)
    # one camera at z = -1 looking +z (OpenCV), narrow field of view: sees the centre column
    K = torch.tensor([[40.0, 0, 5], [0, 40.0, 5], [0, 0, 1]])
    c2w = torch.tensor([[[1.0, 0, 0, 0.5], [0, 1, 0, 0.5], [0, 0, 1, -1.0]]])
    grid.mark_invisible_cells(K, c2w, 10, 10)
    seen = grid.occs.view(4, 4, 4) >= 0
    assert seen[1:3, 1:3, :].all() and not seen[0, 0, :].any()
    assert not grid.binaries[0][~seen].any()
    # invisible cells are never updated back
    grid.update(0, lambda x: torch.ones(x.shape[0]))
    assert (grid.occs.view(4, 4, 4)[~seen] == -1).all()


def test_state_dict_round_trip_and_repr():
    grid = _sphere_grid()
    other = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=16, levels=2)
    other.load_state_dict(grid.state_dict())
    assert torch.equal(other.binaries, grid.binaries) and torch.equal(other.occs, grid.occs)
    assert "resolution=16, levels=2" in repr(grid)


def test_bad_input_and_empty_batches(gen):
    grid = _sphere_grid()
    o, d = _rays(gen, n=4)
    with pytest.raises(ValueError, match="zero-length direction"):
        grid.sampling(o, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="finite"):
        grid.sampling(torch.full((4, 3), math.nan), d)
    with pytest.raises(ValueError, match="min <= max"):
        ray_aabb_intersect(o, d, torch.tensor([[1.0, 0, 0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="min < max"):
        OccupancyGrid([0, 0, 0, 0, 1, 1])
    hit_o, hit_d = torch.tensor([[-1.0, 0.5, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="sigma_fn must return \\[n\\]"):
        grid.sampling(hit_o, hit_d, sigma_fn=lambda ts, te, r: ts[:, None],
                      render_step_size=0.01)
    with pytest.raises(ValueError, match="occ_eval_fn must return one value per point"):
        grid.update(0, lambda x: x)
    ray, ts, te = grid.sampling(o[:0], d[:0])
    assert ray.numel() == ts.numel() == te.numel() == 0
    with pytest.raises(RuntimeError, match="training mode"):
        grid.eval().update_every_n_steps(0, lambda x: x[:, 0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_marcher_matches_cpu(gen):
    o, d = _rays(gen)
    bits = torch.rand(2, 16, 16, 16, generator=gen) < 0.3
    boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1], [-0.5, -0.5, -0.5, 1.5, 1.5, 1.5]])
    t0, t1, hit = ray_aabb_intersect(o, d, boxes[1:], near_plane=0.0)
    t0c, t1c, hitc = ray_aabb_intersect(o.cuda(), d.cuda(), boxes[1:].cuda(), near_plane=0.0)
    assert torch.equal(hit, hitc.cpu())
    t0, t1 = t0[:, 0], t1[:, 0]
    t0 = torch.where(torch.isfinite(t0), t0, t1)
    cpu = march(o, d, t0, t1, bits, boxes, 0.01, 0.01)
    gpu = march(o.cuda(), d.cuda(), t0.cuda(), t1.cuda(), bits.cuda(), boxes.cuda(), 0.01, 0.01)
    assert torch.equal(cpu[0], gpu[0].cpu())
    torch.testing.assert_close(cpu[1], gpu[1].cpu(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_march_clips_to_the_grid_and_never_stalls(backend):
    bits = torch.ones(1, 4, 4, 4, dtype=torch.bool)
    boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1]])
    o, d = torch.tensor([[-1.0, 0.5, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]])
    ray, ts, te = march(o, d, torch.zeros(1), torch.full((1,), 3.0), bits, boxes, 0.1,
                        backend=backend)
    assert ts.numel() == 10 and float(ts[0]) == pytest.approx(1.0)  # starts at the box entry
    if backend == "reference":
        return  # the numba loop carries t in float64, where this step does not vanish
    # t ≈ 1e4 with a 1e-4 step: t + dt == t in float32; the march stops instead of stalling
    far_o = torch.tensor([[-1e4 + 0.5, 0.5, 0.5]])
    ray, ts, te = march(far_o, d, torch.zeros(1), torch.full((1,), 2e4), bits, boxes, 1e-4,
                        backend=backend)
    assert ts.numel() < 10


def test_coarse_cells_do_not_skip_the_finer_level():
    # res 6: a coarse (level 1) cell straddles level 0's box; an occupied fine cell right behind
    # the coarse cell's start must still be sampled
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=6, levels=2)
    grid.binaries[0, 0, 2, 2] = True  # x in [0, 1/6) at the box's near face
    o, d = torch.tensor([[-0.4, 0.45, 0.45]]), torch.tensor([[1.0, 0.0, 0.0]])
    for backend in BACKENDS:
        ray, ts, te = march(o, d, torch.zeros(1), torch.full((1,), 5.0), grid.binaries,
                            grid.aabbs, 0.01, backend=backend)
        mid = o[0, 0] + (ts + te) / 2
        assert ts.numel() > 0 and ((mid >= 0) & (mid < 1 / 6)).all(), backend

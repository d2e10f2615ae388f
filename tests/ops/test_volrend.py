"""Volume rendering (fastgen.nerf / fastgen.ops.volrend) on every backend here: nerfacc's golden
weights, closed-form scenes, fused vs reference in float64 (values and gradients), packed vs
batched, early termination, and bad input."""

import math

import pytest
import torch

from fastgen.nerf import (accumulate_along_rays, pack_info, render_transmittance_from_alpha,
                          render_weight_from_alpha, render_weight_from_density, rendering,
                          volume_render)
from fastgen.reference import volrend as ref
from fastgen.testing import available_backends

BACKENDS = available_backends("volrend", "cpu")


def _random_packed(gen, n_rays=13, dtype=torch.float64, c=3):
    counts = torch.randint(0, 9, (n_rays,), generator=gen)
    counts[3] = 0  # an empty ray
    n = int(counts.sum())
    ray = torch.repeat_interleave(torch.arange(n_rays), counts)
    dt = torch.rand(n, generator=gen, dtype=dtype) * 0.3 + 0.01
    ts = torch.zeros(n, dtype=dtype)
    for r in range(n_rays):  # consecutive intervals along each ray
        m = ray == r
        ts[m] = torch.cumsum(dt[m], 0) - dt[m] + torch.rand(1, generator=gen, dtype=dtype)
    sig = (torch.rand(n, generator=gen, dtype=dtype) * 6).requires_grad_()
    rgb = torch.rand(n, c, generator=gen, dtype=dtype).requires_grad_()
    return sig, rgb, ts, ts + dt, ray, n_rays


@pytest.mark.parametrize("backend", BACKENDS)
def test_nerfacc_golden_weights_and_gradient(backend):
    sig = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1], requires_grad=True)
    ts = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0])
    info = torch.tensor([[0, 1], [1, 0], [1, 4]])
    _, _, _, w, _ = volume_render(sig, sig.new_zeros(5, 0), ts, ts + 1, packed_info=info,
                                  backend=backend)
    torch.testing.assert_close(w, torch.tensor([0.3297, 0.5507, 0.0428, 0.2239, 0.0174]),
                               atol=1e-4, rtol=0)
    w.sum().backward()
    torch.testing.assert_close(sig.grad, torch.tensor([0.6703, 0.1653, 0.1653, 0.1653, 0.1653]),
                               atol=1e-4, rtol=0)


def test_nerfacc_golden_transmittance_from_alpha():
    alphas = torch.tensor([0.4, 0.3, 0.8, 0.8, 0.5])
    info = torch.tensor([[0, 1], [1, 0], [1, 4]])
    trans = render_transmittance_from_alpha(alphas, packed_info=info)
    torch.testing.assert_close(trans, torch.tensor([1.0, 1.0, 0.7, 0.14, 0.028]))
    w, _ = render_weight_from_alpha(alphas, packed_info=info)
    torch.testing.assert_close(w, trans * alphas)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_fused_matches_reference_values_and_gradients(backend, eps, gen):
    sig, rgb, ts, te, ray, n_rays = _random_packed(gen)
    info = pack_info(ray, n_rays)
    outs = volume_render(sig, rgb, ts, te, ray_indices=ray, n_rays=n_rays, early_stop_eps=eps,
                         backend=backend)
    want = ref.volrend(sig, rgb, ts, te, info[:, 0], info[:, 1], eps)
    for got, exp in zip(outs, want):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12)
    ups = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]
    g = torch.autograd.grad(outs, (sig, rgb), ups)
    g_ref = torch.autograd.grad(want, (sig, rgb), ups)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend, gen):
    sig, rgb, ts, te, ray, n_rays = _random_packed(gen, n_rays=4, c=2)
    torch.autograd.gradcheck(lambda s, c: volume_render(s, c, ts, te, ray_indices=ray,
                                                        n_rays=n_rays, backend=backend),
                             (sig, rgb))


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_equals_batched(backend, gen):
    r, s = 5, 7
    sig = (torch.rand(r, s, generator=gen) * 3).requires_grad_()
    rgb = torch.rand(r, s, 3, generator=gen).requires_grad_()
    ts = torch.linspace(0, 2, s + 1)[:-1].expand(r, s).contiguous()
    te = ts + 2 / s
    bat = volume_render(sig, rgb, ts, te, backend=backend)
    ray = torch.arange(r).repeat_interleave(s)
    pk = volume_render(sig.reshape(-1), rgb.reshape(-1, 3), ts.reshape(-1), te.reshape(-1),
                       ray_indices=ray, n_rays=r, backend=backend)
    for a, b in zip(bat[:3], pk[:3]):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(bat[3].reshape(-1), pk[3])
    g1 = torch.autograd.grad(bat[0].sum() + bat[2].sum(), (sig, rgb))
    g2 = torch.autograd.grad(pk[0].sum() + pk[2].sum(), (sig, rgb))
    torch.testing.assert_close(g1[0], g2[0])  # both with respect to the [r, s] leaves
    torch.testing.assert_close(g1[1], g2[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_density_sphere(backend):
    # rays along +z through a sphere of radius R at the origin; uniform steps over [-2, 2]
    R, sigma, k, bg = 1.0, 3.0, torch.tensor([0.9, 0.2, 0.4]), torch.tensor([0.1, 0.1, 0.8])
    px = torch.linspace(-1.2, 1.2, 9)
    n = 4000
    t = torch.linspace(-2.0, 2.0, n + 1, dtype=torch.float64)
    ts, te = t[:-1].expand(9, n), t[1:].expand(9, n)
    mid = (ts + te) / 2
    inside = mid ** 2 + px[:, None].double() ** 2 < R ** 2
    sig = sigma * inside.double()
    rgb = k.double().expand(9, n, 3)
    color, opacity, _, _, _ = volume_render(sig, rgb, ts.contiguous(), te.contiguous(),
                                            backend=backend)
    color = color + bg.double() * (1 - opacity[:, None])
    ell = 2 * torch.sqrt(torch.clamp(R ** 2 - px.double() ** 2, min=0))
    want = k.double() * (1 - torch.exp(-sigma * ell))[:, None] + bg.double() * torch.exp(
        -sigma * ell)[:, None]
    assert (color - want).abs().max() < 4 * sigma * (4.0 / n)  # O(step)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layered_slabs_and_sum_identity(backend):
    # layers of σ over lengths ℓ: T after each layer = exp(−Σ σ ℓ) exactly; ∂Σw/∂σ_k = δ_k T_end
    sig = torch.tensor([0.5, 2.0, 0.0, 1.5], dtype=torch.float64, requires_grad=True)
    ell = torch.tensor([0.4, 0.3, 1.0, 0.2], dtype=torch.float64)
    ts = torch.cat([torch.zeros(1, dtype=torch.float64), ell.cumsum(0)[:-1]])
    _, opacity, _, w, trans = volume_render(sig[None], sig.new_zeros(1, 4, 0), ts[None],
                                            (ts + ell)[None], backend=backend)
    tau = (sig * ell).detach()
    torch.testing.assert_close(trans[0], torch.exp(-(tau.cumsum(0) - tau)))
    t_end = math.exp(-float(tau.sum()))
    torch.testing.assert_close(opacity[0], torch.tensor(1 - t_end, dtype=torch.float64))
    opacity.sum().backward()
    torch.testing.assert_close(sig.grad, ell * t_end)


@pytest.mark.parametrize("backend", BACKENDS)
def test_early_termination_cuts_at_the_first_low_transmittance(backend):
    sig = torch.tensor([[5.0, 5.0, 5.0, 5.0]])
    ts = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    _, _, _, w, trans = volume_render(sig, sig.new_zeros(1, 4, 0), ts, ts + 1,
                                      early_stop_eps=1e-4, backend=backend)
    # T = 1, e^-5 = 6.7e-3, e^-10 = 4.5e-5 < 1e-4: samples 2 and 3 are cut
    assert trans[0, 2] == 0 and w[0, 2] == 0 and w[0, 3] == 0 and w[0, 1] > 0


def test_rendering_with_fields_and_background(gen):
    sig, rgb, ts, te, ray, n_rays = _random_packed(gen, dtype=torch.float32)
    sig, rgb = sig.detach(), rgb.detach()
    bg = torch.tensor([0.2, 0.5, 1.0])

    def field(t0, t1, idx):
        assert torch.equal(idx, ray)
        return rgb, sig

    colors, opac, depths, extras = rendering(ts, te, ray, n_rays, rgb_sigma_fn=field,
                                             render_bkgd=bg)
    info = pack_info(ray, n_rays)
    c, o, d, w, _ = ref.volrend(sig, rgb, ts, te, info[:, 0], info[:, 1])
    torch.testing.assert_close(colors, c + bg * (1 - o[:, None]))
    torch.testing.assert_close(opac, o[:, None])
    torch.testing.assert_close(depths, d[:, None])
    torch.testing.assert_close(accumulate_along_rays(extras["weights"], None, ray, n_rays),
                               o[:, None])
    alphas = extras["alphas"]
    c2, o2, _, _ = rendering(ts, te, ray, n_rays, rgb_alpha_fn=lambda *a: (rgb, alphas))
    torch.testing.assert_close(c2, c, rtol=1e-4, atol=1e-5)


def test_compiles_fullgraph(gen):
    sig = torch.rand(3, 5, generator=gen)
    rgb = torch.rand(3, 5, 3, generator=gen)
    ts = torch.arange(5.0).expand(3, 5).contiguous()
    fn = torch.compile(lambda s, c: volume_render(s, c, ts, ts + 1)[0], fullgraph=True)
    torch.testing.assert_close(fn(sig, rgb), volume_render(sig, rgb, ts, ts + 1)[0])


def test_bad_input():
    sig, ts = torch.rand(6), torch.arange(6.0)
    rgb = torch.rand(6, 3)
    with pytest.raises(ValueError, match="sorted"):
        volume_render(sig, rgb, ts, ts + 1, ray_indices=torch.tensor([0, 1, 0, 1, 2, 2]),
                      n_rays=3)
    with pytest.raises(ValueError, match="need ray_indices"):
        volume_render(sig, rgb, ts, ts + 1)
    with pytest.raises(ValueError, match="rgbs must be sigmas' shape"):
        volume_render(sig, rgb[:5], ts, ts + 1, packed_info=torch.tensor([[0, 6]]))
    with pytest.raises(ValueError, match="packed_info ranges"):
        volume_render(sig, rgb, ts, ts + 1, packed_info=torch.tensor([[3, 6]]))
    with pytest.raises(ValueError, match="early_stop_eps"):
        volume_render(sig[None], rgb[None], ts[None], ts[None] + 1, early_stop_eps=2.0)
    with pytest.raises(ValueError, match="the field's sigmas must be \\[6\\]"):
        rendering(ts, ts + 1, torch.zeros(6, dtype=torch.long), 1,
                  rgb_sigma_fn=lambda *a: (rgb, sig[:, None]))
    with pytest.raises(ValueError, match="alphas must be in \\[0, 1\\]"):
        render_weight_from_alpha(torch.tensor([[0.5, 1.5]]))
    empty = volume_render(sig[:0], rgb[:0], ts[:0], ts[:0], packed_info=torch.zeros(2, 2,
                                                                                   dtype=torch.long))
    assert empty[0].shape == (2, 3) and (empty[1] == 0).all()
    w, trans, alphas = render_weight_from_density(ts[None], ts[None] + 1, sig[None])
    assert w.shape == trans.shape == alphas.shape == (1, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(gen):
    sig, rgb, ts, te, ray, n_rays = _random_packed(gen, dtype=torch.float32)
    cpu = volume_render(sig, rgb, ts, te, ray_indices=ray, n_rays=n_rays, early_stop_eps=0.01)
    dev = [t.detach().cuda().requires_grad_(t.requires_grad) for t in (sig, rgb, ts, te)]
    gpu = volume_render(*dev, ray_indices=ray.cuda(), n_rays=n_rays, early_stop_eps=0.01)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-5, atol=1e-6)
    g_cpu = torch.autograd.grad(cpu[0].sum() + cpu[2].sum(), (sig, rgb))
    g_gpu = torch.autograd.grad(gpu[0].sum() + gpu[2].sum(), dev[:2])
    for a, b in zip(g_cpu, g_gpu):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-5, atol=1e-6)


def test_packed_info_must_tile_the_samples():
    sig, ts = torch.rand(6), torch.arange(6.0)
    with pytest.raises(ValueError, match="must tile"):  # a gap: samples 2-3 belong to no ray
        volume_render(sig, torch.rand(6, 3), ts, ts + 1, packed_info=torch.tensor([[0, 2],
                                                                                  [4, 2]]))
    with pytest.raises(ValueError, match="must tile"):  # overlapping rays
        volume_render(sig, torch.rand(6, 3), ts, ts + 1, packed_info=torch.tensor([[0, 4],
                                                                                  [2, 4]]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_a_dense_ray_does_not_spoil_the_next_one(dtype):
    # one scan over all samples would lose ray 1's small sums next to ray 0's huge one
    sig = torch.tensor([3000.0, 0.5, 0.5, 0.5, 0.5], dtype=dtype)
    ts = torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0], dtype=dtype)
    _, opacity, _, _, _ = volume_render(sig, sig.new_zeros(5, 0), ts, ts + 1,
                                        packed_info=torch.tensor([[0, 1], [1, 4]]))
    assert abs(float(opacity[1]) - (1 - math.exp(-2.0))) < 0.01

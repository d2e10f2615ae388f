"""fastgen.models.NeuralImage / fit_image: the 2-D image fit behind `fastgen demo image`."""

import math

import pytest
import torch

from fastgen.models import NeuralImage, fit_image, pixel_samples, psnr, train_step
from fastgen.models.image import adam


def _picture(h, w, gen):
    """A small synthetic photo: smooth gradients plus a few sharp discs and random noise."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([xs, ys, 0.5 + 0.5 * torch.sin(6 * xs * ys)], dim=-1)
    for _ in range(3):
        cx, cy, r = torch.rand(3, generator=gen).tolist()
        disc = ((xs - cx) ** 2 + (ys - cy) ** 2) < (0.1 + 0.2 * r) ** 2
        img[disc] = torch.rand(3, generator=gen)
    return (img + 0.02 * torch.rand(img.shape, generator=gen)).clamp(0, 1)


def test_fit_learns_the_picture(gen):
    img = _picture(48, 40, gen)
    torch.manual_seed(0)
    model = NeuralImage(48, 40, n_levels=8, log2_hashmap_size=10, hidden=32)
    before = psnr(model.render(), img)
    seen = []
    result = fit_image(model, img, steps=150, batch_size=1024, eval_every_s=1e9,
                       callback=lambda *a: seen.append(a))
    assert result.steps == 150 and len(seen) == 1 and seen[-1][0] == 150
    assert result.psnr > before + 10 and result.psnr > 25, (before, result.psnr)
    assert result.psnr == pytest.approx(psnr(model.render(), img))
    assert result.ms_per_step > 0 and model.render().shape == (48, 40, 3)


def test_train_step_is_the_l2_loss_on_the_chosen_pixels(gen):
    img = _picture(12, 10, gen)
    model = NeuralImage(12, 10, n_levels=4, log2_hashmap_size=8, hidden=16)
    samples = pixel_samples(model, img)
    assert samples.shape == (120, 5)
    torch.testing.assert_close(samples[:, :2], model.pixel_coords(), rtol=0, atol=0)
    torch.testing.assert_close(samples[:, 2:], img.reshape(-1, 3), rtol=0, atol=0)
    idx = torch.randint(0, 120, (37,), generator=gen)
    with torch.no_grad():
        want = (model(model.pixel_coords()[idx]) - img.reshape(-1, 3)[idx]).square().mean()
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_step(model, adam(model.parameters()), samples, idx)
    torch.testing.assert_close(loss, want)
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="image must be"):
        pixel_samples(model, img[:, :9])
    with pytest.raises(ValueError, match="samples must be"):
        train_step(model, adam(model.parameters()), samples[:, :4], idx)


def test_loss_is_the_plain_l2_loss_with_its_gradients(gen):
    """NeuralImage.loss (fused MLP + loss, planar encoding) against the unfused
    ``(model(xy) - target)²`` on the same weights: loss and every parameter gradient, with each
    backend combination (the planar path only when no backend is forced to the reference)."""
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
    model = NeuralImage(20, 24, n_levels=6, log2_hashmap_size=9, hidden=16)
    xy, target = torch.rand(333, 2, generator=gen), torch.rand(333, 3, generator=gen)
    want = (model(xy) - target).square().mean()
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    for enc, mlp in ((None, None), ("reference", None), (None, "reference")):
        model.encoding.backend, model.mlp.backend = enc, mlp
        loss = model.loss(xy, target)
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-8)
        for a, b in zip(torch.autograd.grad(loss, list(model.parameters())), want_grads,
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="xy must be \\[N, 2\\]"):
        model.loss(xy[None], target)
    with pytest.raises(ValueError, match="target must be \\[333, 3\\]"):
        model.loss(xy, target[:, :2])
    # a float64 model trains on float32 pixel samples (the target follows the model's dtype)
    model64 = NeuralImage(6, 5, n_levels=3, log2_hashmap_size=6, hidden=16).double()
    samples = pixel_samples(model64, torch.rand(6, 5, 3, generator=gen))
    idx = torch.randint(0, 30, (17,), generator=gen)
    loss = train_step(model64, adam(model64.parameters()), samples, idx)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="idx must be a 1-D int64 or int32"):
        train_step(model64, adam(model64.parameters()), samples, idx.float())


def test_model_defaults_reach_the_image_resolution():
    model = NeuralImage(512, 300)
    assert model.encoding.levels()[-1].resolution >= 512   # one vertex per pixel or more
    assert model(torch.rand(5, 2)).shape == (5, 3)


def test_psnr():
    a = torch.zeros(4, 4, 3)
    assert psnr(a, a) == math.inf
    assert psnr(a + 0.1, a) == pytest.approx(20.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "seconds, steps or both"),
    (dict(steps=1, image=torch.rand(8, 9, 3)), "image must be"),
    (dict(steps=1, image=torch.rand(8, 8, 3) * 2), "values in"),
])
def test_fit_rejects_bad_input(kwargs, match):
    image = kwargs.pop("image", torch.rand(8, 8, 3))
    with pytest.raises(ValueError, match=match):
        fit_image(NeuralImage(8, 8, n_levels=2, log2_hashmap_size=6), image, **kwargs)
    with pytest.raises(ValueError, match="height, width"):
        NeuralImage(0, 8)

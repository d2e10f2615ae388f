"""fastgen.models.Denoiser / train_denoiser / sample and fastgen.data: `fastgen demo diffusion`."""

import importlib
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from fastgen.data import load_digits, load_images, make_shapes
from fastgen.models import SCHEDULERS, Denoiser, SamplingTiming, make_scheduler, sample
from fastgen.models import denoiser as denoiser_module
from fastgen.models import train_denoiser
from fastgen.models.denoiser import alphas_cumprod


def _scheduler_modules():
    """diffusers (the API reference) and fastgen.diffusion, each skipped where missing."""
    return [pytest.param("diffusers", id="diffusers"),
            pytest.param("fastgen.diffusion", id="fastgen")]


def _module(name, scheduler):
    """The module, skipping the test where it (or its scheduler class) is missing."""
    mod = pytest.importorskip(name)
    if getattr(mod, SCHEDULERS[scheduler], None) is None:
        pytest.skip(f"{name} has no {SCHEDULERS[scheduler]} (yet)")
    return mod


class _Oracle(Denoiser):
    """The exact eps for data whose pixels are independent N(mean, std^2): with
    x = sqrt(a) x0 + sqrt(1 - a) eps, E[x0 | x] = mean + sqrt(a) std^2 (x - sqrt(a) mean) /
    (a std^2 + 1 - a), and eps = (x - sqrt(a) E[x0 | x]) / sqrt(1 - a). std = 0: one image."""

    def __init__(self, mean, std=0.0):
        super().__init__(size=mean.shape[-1], channels=8)
        self.mean, self.std = mean, std

    def forward(self, x, t):
        t = torch.as_tensor(t).reshape(-1).expand(x.shape[0])
        a = self.alpha_bar(t).view(-1, 1, 1, 1)
        v = self.std ** 2
        x0 = self.mean + a.sqrt() * v * (x - a.sqrt() * self.mean) / (a * v + 1 - a)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


@pytest.fixture(scope="module")
def trained():
    """A tiny denoiser after a few training steps (sample() leaves it unchanged)."""
    torch.manual_seed(0)
    model = Denoiser(channels=8)
    train_denoiser(model, make_shapes(32, seed=4), steps=3, batch_size=8)
    return model


def _eval_loss(model, images):
    g = torch.Generator().manual_seed(123)
    t = torch.randint(0, model.num_train_timesteps, (images.shape[0],), generator=g)
    eps = torch.randn(images.shape, generator=g)
    a = model.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        return F.mse_loss(model(a.sqrt() * images + (1 - a).sqrt() * eps, t), eps).item()


def test_denoiser_shapes_and_size():
    torch.manual_seed(0)
    model = Denoiser()
    assert sum(p.numel() for p in model.parameters()) <= 500_000
    x = torch.randn(3, 1, 16, 16)
    for t in (5, 999.5, torch.tensor(7), torch.tensor([1, 500, 999]), torch.tensor([3.25])):
        assert model(x, t).shape == x.shape
    assert Denoiser(size=32, channels=8)(torch.randn(2, 1, 32, 32), 10).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"x must be \[B, 1, 16, 16\]"):
        model(torch.randn(2, 1, 8, 8), 1)
    for kwargs in (dict(size=15), dict(channels=12), dict(parameterization="x0"),
                   dict(schedule="quadratic")):
        with pytest.raises(ValueError):
            Denoiser(**kwargs)


def test_v_parameterization_is_exact_eps_in_the_noise_limit():
    """At init the network's output is 0: eps = sqrt(1 - a_t) x_t ("v"), or 0 ("eps")."""
    x = torch.randn(2, 1, 16, 16)
    v = Denoiser(channels=8)
    a = v.alphas_cumprod
    torch.testing.assert_close(v(x, 999), (1 - a[999]).sqrt() * x)
    torch.testing.assert_close(v(x, 0), (1 - a[0]).sqrt() * x)
    assert Denoiser(channels=8, parameterization="eps")(x, 999).abs().max() == 0
    # fractional timesteps interpolate a_t in log space between the integer ones
    mid = v.alpha_bar(torch.tensor([10.5]))
    assert a[11] < mid < a[10] and mid == pytest.approx(math.sqrt(a[10] * a[11]), rel=1e-5)


def test_denoiser_runs_on_fastgen_ops(monkeypatch):
    calls = {"bias_act": 0, "sdpa": 0}

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(denoiser_module, "bias_act", counting("bias_act", denoiser_module.bias_act))
    monkeypatch.setattr(denoiser_module, "scaled_dot_product_attention",
                        counting("sdpa", denoiser_module.scaled_dot_product_attention))
    Denoiser(channels=8)(torch.randn(2, 1, 16, 16), 3)
    assert calls == {"bias_act": 14, "sdpa": 1}   # time MLP + 2 per ResBlock x 6 + output


def test_alphas_cumprod_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    for schedule in ("linear", "cosine"):
        model = Denoiser(channels=8, schedule=schedule)
        s = make_scheduler("ddim", model, module=diffusers)
        torch.testing.assert_close(s.alphas_cumprod, model.alphas_cumprod)
    torch.testing.assert_close(alphas_cumprod("linear", 1000),
                               diffusers.DDPMScheduler().alphas_cumprod)
    # the model's keys a class does not take are dropped, the caller's go through
    flow = make_scheduler("flow", model, module=diffusers, shift=2.0)
    assert flow.config.shift == 2.0 and "beta_schedule" not in flow.config
    assert make_scheduler("ddim", model, module=diffusers, clip_sample=False).config[
        "clip_sample"] is False


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    images = make_shapes(64, seed=1)
    model = Denoiser(channels=8)
    before = _eval_loss(model, images[:32])
    seen = []
    result = train_denoiser(model, images, steps=25, batch_size=16, lr=5e-3, ema_decay=None,
                            log_every_s=1e9, callback=lambda *a: seen.append(a))
    after = _eval_loss(model, images[:32])
    assert after < 0.85 * before, (before, after)      # measured: 0.67-0.72 over seeds
    assert result.steps == 25 and len(result.losses) == 25 and result.ms_per_step > 0
    assert len(seen) == 1 and seen[0][0] == 25 and seen[0][2] == pytest.approx(
        sum(result.losses) / 25)
    assert math.isfinite(result.final_loss) and model.training


def test_training_keeps_the_average_weights_with_ema():
    torch.manual_seed(0)
    images = make_shapes(16, seed=2)
    a, b = Denoiser(channels=8), Denoiser(channels=8)
    b.load_state_dict(a.state_dict())
    train_denoiser(a, images, steps=3, batch_size=4, ema_decay=None)
    train_denoiser(b, images, steps=3, batch_size=4, ema_decay=0.5)
    # the same steps were taken; b holds the average, which lags the last iterate
    pa, pb = a.time_out.weight, b.time_out.weight
    assert not torch.equal(pa, pb) and torch.isfinite(pb).all()


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "seconds, steps or both"),
    (dict(steps=0), "steps >= 1"),
    (dict(steps=1, images=torch.rand(4, 1, 8, 8)), "images must be"),
    (dict(steps=1, images=torch.rand(4, 1, 16, 16) * 3), r"values in \[-1, 1\]"),
    (dict(steps=1, ema_decay=1.0), "ema_decay"),
])
def test_training_rejects_bad_input(kwargs, match):
    images = kwargs.pop("images", torch.zeros(4, 1, 16, 16))
    with pytest.raises(ValueError, match=match):
        train_denoiser(Denoiser(channels=8), images, **kwargs)


@pytest.mark.parametrize("module", _scheduler_modules())
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_sampling_recovers_the_one_image_of_a_point_mass(module, name):
    """With the exact eps of a one-image data set every scheduler must land on that image:
    checks the loop (init_noise_sigma, scale_model_input, fractional timesteps, the generator,
    the flow-matching conversion) end to end."""
    mod = _module(module, name)
    target = make_shapes(1, seed=3)
    model = _Oracle(target)
    sched = make_scheduler(name, model, module=mod)
    timing = SamplingTiming()
    steps = []
    out = sample(model, sched, n=3, steps=12, generator=torch.Generator().manual_seed(0),
                 timing=timing, callback=lambda i, n: steps.append((i, n)))
    assert out.shape == (3, 1, 16, 16) and torch.isfinite(out).all()
    err = (out - target).abs().max().item()
    assert err < 0.05, (name, err)
    n_calls = len(sched.timesteps)
    assert timing.step_calls == timing.model_calls == n_calls == len(steps)
    assert steps[-1] == (n_calls, n_calls) and timing.step_ms > 0 and timing.model_ms > 0


@pytest.mark.parametrize("module", _scheduler_modules())
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_sampling_draws_from_the_data_distribution(module, name):
    """With the exact eps of Gaussian data N(0.1, 0.4^2) the samples' mean and std must match:
    catches a wrong initial noise scale, skipped step noise or a wrong flow conversion. 25 steps
    of the first-order samplers shrink the std by up to 25% (diffusers measured the same); the
    errors this is for shrink it 10x or more."""
    mod = _module(module, name)
    model = _Oracle(torch.full((1, 1, 16, 16), 0.1), std=0.4)
    out = sample(model, make_scheduler(name, model, module=mod), n=16, steps=25,
                 generator=torch.Generator().manual_seed(1))
    assert out.mean().item() == pytest.approx(0.1, abs=0.02), name
    assert 0.7 * 0.4 < out.std().item() < 1.1 * 0.4, name


@pytest.mark.parametrize("module", _scheduler_modules())
@pytest.mark.parametrize("name", ["ddim", "euler", "euler_a", "heun"])
def test_sampling_a_trained_model_is_finite_and_seeded(module, name, trained):
    mod = _module(module, name)
    model = trained
    make = lambda: make_scheduler(name, model, module=mod)
    a = sample(model, make(), n=2, steps=3, generator=torch.Generator().manual_seed(5))
    b = sample(model, make(), n=2, steps=3, generator=torch.Generator().manual_seed(5))
    c = sample(model, make(), n=2, steps=3, generator=torch.Generator().manual_seed(6))
    assert a.shape == (2, 1, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_make_scheduler_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("lms")
    monkeypatch.setitem(sys.modules, "fastgen.diffusion", None)   # as if not written yet
    with pytest.raises(ImportError, match="fastgen.diffusion"):
        make_scheduler("ddim")
    with pytest.raises(ImportError, match="has no DDIMScheduler"):
        make_scheduler("ddim", module=importlib.import_module("math"))


def test_shapes_are_deterministic_and_in_range():
    a, b, c = make_shapes(50, seed=7), make_shapes(50, seed=7), make_shapes(50, seed=8)
    assert a.shape == (50, 1, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() == -1 and a.max() == 1
    assert torch.equal(make_shapes(50, generator=torch.Generator().manual_seed(7)), a)
    assert make_shapes(3, size=32).shape == (3, 1, 32, 32)
    # every image has background at -1 and a fully covered interior at +1
    flat = a.flatten(1)
    assert (flat.min(1).values == -1).all() and (flat.max(1).values == 1).all()
    with pytest.raises(ValueError, match="not both"):
        make_shapes(1, generator=torch.Generator(), seed=1)
    with pytest.raises(ValueError, match="kinds"):
        make_shapes(1, kinds=("triangle",))


@pytest.mark.parametrize("kind,lo,hi", [("square", 0.99, 1.0), ("circle", 0.6, 0.92),
                                        ("cross", 0.3, 0.75)])
def test_shapes_have_their_kind(kind, lo, hi):
    """The fraction of a shape's bounding box it fills: 1 for squares, ~pi/4 for circles."""
    for img in make_shapes(20, seed=9, kinds=(kind,))[:, 0]:
        on = img > 0
        rows, cols = on.any(1).nonzero(), on.any(0).nonzero()
        box = on[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert lo <= box.float().mean().item() <= hi, (kind, box.float().mean().item())


def test_load_images():
    images, name = load_images("shapes", n=10, seed=1)
    assert name == "shapes" and torch.equal(images, make_shapes(10, seed=1))
    images, name = load_images("auto", n=10)
    assert name in ("shapes", "digits") and images.shape == (10, 1, 16, 16)
    assert images.min() >= -1 and images.max() <= 1
    with pytest.raises(ValueError, match="name must be"):
        load_images("mnist")


def test_digits_need_scikit_learn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="scikit-learn"):
            load_digits()
        return
    d = load_digits()
    assert d.shape == (1797, 1, 16, 16) and d.min() >= -1 and d.max() <= 1

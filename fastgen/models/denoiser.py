"""A small diffusion denoiser (UNet) for 16 x 16 images, its DDPM training loop and a sampler.

    model = Denoiser(size=16)                              # epsilon prediction, ~0.4M parameters
    result = train_denoiser(model, images, seconds=60)     # images: [N, 1, 16, 16] in [-1, 1]
    scheduler = make_scheduler("ddim", model)              # fastgen.diffusion.DDIMScheduler
    grid = sample(model, scheduler, n=16, steps=25, generator=torch.Generator().manual_seed(0))

The UNet has two resolutions (size and size / 2), residual blocks conditioned on a sinusoidal
timestep embedding, and self-attention at the lower resolution. Its normalisation + activation
pairs are GroupNorm (scale only) followed by :func:`fastgen.ops.bias_act` (the shift and SiLU in
one fused op; ``gain=1`` since bias_act's default swish gain is sqrt(2)), and its attention is
:func:`fastgen.ops.scaled_dot_product_attention`.

Training is DDPM's epsilon objective, ``|| eps - model(sqrt(a_t) x0 + sqrt(1 - a_t) eps, t) ||^2``
with t uniform in [0, T) and a_t the cumulative product of a linear or cosine beta schedule (the
schedule is the model's, so schedulers made by :func:`make_scheduler` match it). Sampling is the
diffusers loop and works with any scheduler that has the diffusers API; flow-matching schedulers
(which expect a velocity) get the model's output converted (see :func:`sample`).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.attention import scaled_dot_product_attention
from ..ops.bias_act import bias_act

__all__ = ["Denoiser", "TrainResult", "SamplingTiming", "train_denoiser", "sample",
           "make_scheduler", "scheduler_config", "SCHEDULERS", "BETA_SCHEDULES",
           "alphas_cumprod"]

# Short names (the demo's --scheduler) -> scheduler class names in fastgen.diffusion / diffusers.
SCHEDULERS = {
    "ddpm": "DDPMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "flow": "FlowMatchEulerDiscreteScheduler",
}

# Training noise schedules -> diffusers' beta_schedule names (the same tables).
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
_BETA_START, _BETA_END = 1e-4, 0.02     # DDPM's (and diffusers' default) linear schedule


def alphas_cumprod(schedule: str = "linear", num_train_timesteps: int = 1000) -> torch.Tensor:
    """The cumulative products a_t of ``1 - beta_t``, float32 [T], as diffusers computes them.

    schedule: "linear" (betas from 1e-4 to 0.02, DDPM) or "cosine" (Nichol & Dhariwal's, betas
    capped at 0.999; diffusers' ``squaredcos_cap_v2``).
    """
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"alphas_cumprod: schedule must be one of {', '.join(BETA_SCHEDULES)}, "
                         f"got {schedule!r}")
    if num_train_timesteps < 2:
        raise ValueError(f"alphas_cumprod: num_train_timesteps must be >= 2, got "
                         f"{num_train_timesteps}")
    T = int(num_train_timesteps)
    if schedule == "linear":
        betas = torch.linspace(_BETA_START, _BETA_END, T, dtype=torch.float32)
    else:
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)],
                             dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def scheduler_config(schedule: str = "linear", num_train_timesteps: int = 1000) -> dict:
    """The diffusers scheduler config (num_train_timesteps, beta_schedule, beta_start, beta_end)
    of a training noise schedule named as in :func:`alphas_cumprod`."""
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"scheduler_config: schedule must be one of "
                         f"{', '.join(BETA_SCHEDULES)}, got {schedule!r}")
    cfg = {"num_train_timesteps": int(num_train_timesteps),
           "beta_schedule": BETA_SCHEDULES[schedule]}
    if schedule == "linear":
        cfg.update(beta_start=_BETA_START, beta_end=_BETA_END)
    return cfg


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps t [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device,
                                                        dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _NormAct(nn.Module):
    """GroupNorm's scale, then its shift and SiLU fused in one ``bias_act`` call."""

    def __init__(self, channels: int, groups: int = 8):
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.groups, self.weight, None, eps=1e-5)
        return bias_act(x, self.bias.to(x.dtype), dim=1, act="swish", gain=1.0)


class _ResBlock(nn.Module):
    """norm-act -> conv -> + time embedding -> norm-act -> conv, plus a (1x1) skip."""

    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1 = _NormAct(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2 = _NormAct(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x)) + self.temb(temb)[:, :, None, None]
        return self.skip(x) + self.conv2(self.norm2(h))


class _Attention(nn.Module):
    """Pre-norm multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(8, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)                  # [B, heads, HW, C / heads]
        out = scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class Denoiser(nn.Module):
    """A small UNet that predicts the noise eps in a noised image x_t at timestep t.

    Layout (c = ``channels``): conv in -> ResBlock(c) at size -> stride-2 conv -> ResBlock(2c)
    at size / 2 -> ResBlock, attention, ResBlock in the middle -> ResBlock(4c -> 2c) with the
    skip -> nearest upsample -> ResBlock(3c -> c) with the skip -> norm-act -> conv out (zero
    initialised). 0.27M parameters with the defaults (0.47M with channels=32).

    With ``parameterization="v"`` (default) the network's raw output F is read as the velocity
    v = sqrt(a_t) eps - sqrt(1 - a_t) x0 and returned as the eps it implies,
    ``eps = sqrt(a_t) F + sqrt(1 - a_t) x_t``: still an eps predictor trained on the eps loss, but
    exact in the pure-noise limit, so the x0 it implies at the first (near pure noise) steps of a
    sampler stays bounded instead of amplifying the network's error by 1 / sqrt(a_t) (~160 at
    t = 999 of the linear schedule). Deterministic samplers without clipping (Euler, Heun,
    DPM-Solver++) need this after a short training; "eps" returns F itself.

    Args:
        size: image side in pixels (even; 16 by default, 32 works too).
        in_channels: image channels (1: greyscale).
        channels: c, the width at full resolution (2c at half resolution); a multiple of 8.
        heads: attention heads at half resolution.
        schedule: the training noise schedule, "linear" or "cosine" (see :func:`alphas_cumprod`).
        num_train_timesteps: T, the number of training timesteps.
        parameterization: "v" or "eps", how the network's output becomes eps (above).

    ``forward(x, t)``: x [B, in_channels, size, size], t a number or a tensor of B (or 1)
    timesteps in [0, T), fractional ones allowed (Euler-type schedulers pass those) -> the
    predicted eps, like x.
    """

    def __init__(self, size: int = 16, in_channels: int = 1, channels: int = 24, heads: int = 4,
                 schedule: str = "linear", num_train_timesteps: int = 1000,
                 parameterization: str = "v"):
        super().__init__()
        if parameterization not in ("v", "eps"):
            raise ValueError(f"Denoiser: parameterization must be 'v' or 'eps', got "
                             f"{parameterization!r}")
        self.parameterization = parameterization
        if size < 4 or size % 2:
            raise ValueError(f"Denoiser: size must be even and >= 4, got {size}")
        if channels < 8 or channels % 8 or (2 * channels) % heads:
            raise ValueError(f"Denoiser: channels must be a multiple of 8 (GroupNorm with 8 "
                             f"groups) and 2 * channels divisible by heads, got channels="
                             f"{channels}, heads={heads}")
        self.size, self.in_channels = int(size), int(in_channels)
        self.schedule, self.num_train_timesteps = schedule, int(num_train_timesteps)
        self.register_buffer("alphas_cumprod", alphas_cumprod(schedule, num_train_timesteps),
                             persistent=False)
        c, t_dim = channels, 4 * channels
        self.t_dim = t_dim
        self.time_in = nn.Linear(c, t_dim, bias=False)
        self.time_bias = nn.Parameter(torch.zeros(t_dim))
        self.time_out = nn.Linear(t_dim, t_dim)
        self.conv_in = nn.Conv2d(in_channels, c, 3, padding=1)
        self.down1 = _ResBlock(c, c, t_dim)
        self.downsample = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.down2 = _ResBlock(c, 2 * c, t_dim)
        self.mid1 = _ResBlock(2 * c, 2 * c, t_dim)
        self.attn = _Attention(2 * c, heads)
        self.mid2 = _ResBlock(2 * c, 2 * c, t_dim)
        self.up2 = _ResBlock(4 * c, 2 * c, t_dim)
        self.up1 = _ResBlock(3 * c, c, t_dim)
        self.norm_out = _NormAct(c)
        self.conv_out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def scheduler_config(self) -> dict:
        """A diffusers-style scheduler config matching this model's training noise schedule."""
        return scheduler_config(self.schedule, self.num_train_timesteps)

    def forward(self, x: torch.Tensor, t: Union[torch.Tensor, float, int]) -> torch.Tensor:
        """Predicted noise for x [B, C, size, size] at timesteps t (scalar, [1] or [B])."""
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, self.size, self.size):
            raise ValueError(f"Denoiser: x must be [B, {self.in_channels}, {self.size}, "
                             f"{self.size}], got {list(x.shape)}")
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        emb = _timestep_embedding(t, self.time_in.in_features).to(x.dtype)
        emb = bias_act(self.time_in(emb), self.time_bias.to(x.dtype), dim=1, act="swish",
                       gain=1.0)
        emb = self.time_out(emb)
        h1 = self.down1(self.conv_in(x), emb)                        # [B, c, S, S]
        h2 = self.down2(self.downsample(h1), emb)                    # [B, 2c, S/2, S/2]
        h = self.mid2(self.attn(self.mid1(h2, emb)), emb)
        h = self.up2(torch.cat([h, h2], dim=1), emb)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.up1(torch.cat([h, h1], dim=1), emb)
        out = self.conv_out(self.norm_out(h))
        if self.parameterization == "eps":
            return out
        a = self.alpha_bar(t).to(x.dtype).view(-1, 1, 1, 1)
        return a.sqrt() * out + (1 - a).sqrt() * x                  # out read as v

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """a_t at (possibly fractional) timesteps t, interpolated linearly in log a_t."""
        log_a = self.alphas_cumprod.to(t.device).log()
        t = t.float().clamp(0, self.num_train_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_train_timesteps - 2)
        w = t - lo
        return torch.exp(torch.lerp(log_a[lo], log_a[lo + 1], w))


@dataclass
class TrainResult:
    """What :func:`train_denoiser` did: the loss of every step, steps, training seconds, and the
    (step, seconds, mean loss since the previous entry) history passed to the callback."""

    losses: list
    steps: int
    seconds: float
    history: list = field(default_factory=list)

    @property
    def ms_per_step(self) -> float:
        """Milliseconds per training step (forward, backward and optimiser)."""
        return 1e3 * self.seconds / max(self.steps, 1)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of steps (at least one, at most 100)."""
        k = max(1, min(100, len(self.losses) // 10))
        return sum(self.losses[-k:]) / k if self.losses else float("nan")


def train_denoiser(model: Denoiser, images: torch.Tensor, *, seconds: Optional[float] = None,
                   steps: Optional[int] = None, batch_size: int = 32, lr: float = 2e-3,
                   ema_decay: Optional[float] = 0.995, log_every_s: float = 5.0, seed: int = 0,
                   callback: Optional[Callable[[int, float, float], None]] = None
                   ) -> TrainResult:
    """Train ``model`` on ``images`` ([N, C, size, size] in [-1, 1]) with DDPM's eps objective.

    Runs for ``seconds`` of training, or ``steps`` steps, or whichever comes first. Each step
    draws ``batch_size`` images, timesteps uniform in [0, T) and Gaussian noise (all from a
    generator seeded with ``seed``), and takes an AdamW step (weight decay 0) on the mean squared
    error of the predicted noise. The learning rate warms up linearly over the first 20 steps,
    then decays along a cosine to ``lr / 10`` over the budget (by time, or by steps when only
    ``steps`` is given).

    With ``ema_decay`` the weights are averaged along training (decay ``min(ema_decay,
    (1 + n) / (10 + n))`` at step n) and the average is copied into ``model`` at the end: it
    samples better than the last iterate. None: keep the last iterate.

    ``callback(step, seconds, mean_loss)`` is called every ``log_every_s`` seconds of training
    and after the last step, with the mean loss since the previous call.
    """
    if seconds is None and steps is None:
        raise ValueError("train_denoiser: give seconds, steps or both")
    if (seconds is not None and seconds <= 0) or (steps is not None and steps < 1):
        raise ValueError(f"train_denoiser: seconds must be > 0 and steps >= 1, got seconds="
                         f"{seconds}, steps={steps}")
    expected = (model.in_channels, model.size, model.size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected or images.shape[0] < 1:
        raise ValueError(f"train_denoiser: images must be [N, {', '.join(map(str, expected))}] "
                         f"like the model, got {list(images.shape)}")
    if not images.is_floating_point() or images.min() < -1 or images.max() > 1:
        raise ValueError("train_denoiser: images must be floating point with values in [-1, 1]")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"train_denoiser: ema_decay must be in [0, 1) or None, got {ema_decay}")
    device = next(model.parameters()).device
    data = images.to(device, torch.float32)
    a_bar = model.alphas_cumprod.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ema = copy.deepcopy(model).requires_grad_(False) if ema_decay is not None else None
    was_training = model.training
    model.train()
    losses, history, step, trained, next_log, since = [], [], 0, 0.0, log_every_s, 0
    while True:
        t0 = time.perf_counter()
        frac = trained / seconds if seconds is not None else step / steps
        if steps is not None and seconds is not None:
            frac = max(frac, step / steps)
        warm = min(1.0, (step + 1) / 20)
        for group in opt.param_groups:
            group["lr"] = lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(frac, 1.0))))
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen, device=device)
        x0 = data[idx]
        t = torch.randint(0, model.num_train_timesteps, (batch_size,), generator=gen,
                          device=device)
        eps = torch.randn(x0.shape, generator=gen, device=device)
        a = a_bar[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            d = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(p, 1.0 - d)
        losses.append(loss.item())                   # synchronises, so the timing is honest
        trained += time.perf_counter() - t0
        step += 1
        since += 1
        done = (steps is not None and step >= steps) or (seconds is not None and
                                                           trained >= seconds)
        if done or trained >= next_log:
            mean = sum(losses[-since:]) / since
            history.append((step, trained, mean))
            if callback is not None:
                callback(step, trained, mean)
            next_log, since = trained + log_every_s, 0
        if done:
            break
    if ema is not None:
        model.load_state_dict(ema.state_dict())
    model.train(was_training)
    return TrainResult(losses=losses, steps=step, seconds=trained, history=history)


def _scheduler_module(module=None):
    if module is not None:
        return importlib.import_module(module) if isinstance(module, str) else module
    try:
        return importlib.import_module("fastgen.diffusion")
    except ImportError as e:
        raise ImportError("fastgen.diffusion (the fastgen schedulers) is not available; pass "
                          "module='diffusers' to make_scheduler to use diffusers' schedulers "
                          "(sample() takes any diffusers-style scheduler)") from e


def make_scheduler(name: str, model: Optional[Denoiser] = None, *, module=None, **config):
    """A scheduler by short name (see ``SCHEDULERS``) configured for ``model``'s noise schedule.

    The class is looked up by name in ``module`` (default ``fastgen.diffusion``; "diffusers" or
    any module with the same class names works) and built with ``from_config`` from
    ``model.scheduler_config()`` (or a linear 1000-step schedule), less the keys the class does
    not take (beta_schedule for flow matching), updated with ``config`` (passed as given).
    """
    if name not in SCHEDULERS:
        raise ValueError(f"make_scheduler: unknown scheduler {name!r}; choose from "
                         f"{', '.join(SCHEDULERS)}")
    mod = _scheduler_module(module)
    cls = getattr(mod, SCHEDULERS[name], None)
    if cls is None:
        raise ImportError(f"make_scheduler: {getattr(mod, '__name__', mod)} has no "
                          f"{SCHEDULERS[name]}")
    cfg = model.scheduler_config() if model is not None else scheduler_config()
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        cfg = {k: v for k, v in cfg.items() if k in params}
    cfg.update(config)                       # the caller's keys go through as given
    return cls.from_config(cfg)


@dataclass
class SamplingTiming:
    """Wall time spent in a :func:`sample` loop: model forwards and ``scheduler.step`` calls.

    Times accumulate over calls of :func:`sample` given the same object (CUDA is synchronised
    around each timed call). ``scale_model_input`` and ``set_timesteps`` are not counted.
    """

    model_seconds: float = 0.0
    step_seconds: float = 0.0
    model_calls: int = 0
    step_calls: int = 0

    @property
    def model_ms(self) -> float:
        """Milliseconds per model forward."""
        return 1e3 * self.model_seconds / max(self.model_calls, 1)

    @property
    def step_ms(self) -> float:
        """Milliseconds per ``scheduler.step`` call."""
        return 1e3 * self.step_seconds / max(self.step_calls, 1)


def _is_flow(scheduler) -> bool:
    return "FlowMatch" in type(scheduler).__name__ or not hasattr(scheduler, "alphas_cumprod")


def _flow_velocity(model: Denoiser, x: torch.Tensor, t, num_train_timesteps: int
                   ) -> torch.Tensor:
    """An eps-prediction model as a flow-matching velocity model.

    Flow matching's ``x = (1 - s) x0 + s eps`` (s = t / T) is the variance-preserving sample
    ``x / r`` with r = sqrt((1 - s)^2 + s^2) at the training timestep whose a_t is
    ``(1 - s)^2 / r^2`` (clamped to the trained range, interpolated in log a_t). The model's eps
    gives x0 (clipped to [-1, 1] like DDIM's clip_sample) and the velocity ``(x - x0) / s``
    (= eps - x0).
    """
    s = float(t) / num_train_timesteps
    s = min(max(s, 1e-6), 1.0)
    r = math.sqrt((1 - s) ** 2 + s ** 2)
    a_bar = model.alphas_cumprod.double().cpu()
    target = min(max((1 - s) ** 2 / r ** 2, float(a_bar[-1])), float(a_bar[0]))
    neg_log = -a_bar.log()                                   # increasing in t
    i = int(torch.searchsorted(neg_log, torch.tensor([-math.log(target)], dtype=torch.float64)))
    i = min(max(i, 1), len(a_bar) - 1)
    lo, hi = float(neg_log[i - 1]), float(neg_log[i])
    t_vp = (i - 1) + ((-math.log(target)) - lo) / max(hi - lo, 1e-12)
    eps = model(x / r, torch.tensor([t_vp], device=x.device, dtype=torch.float32))
    x0 = ((x / r - math.sqrt(1 - target) * eps) / math.sqrt(target)).clamp(-1.0, 1.0)
    return (x - x0) / s


@torch.no_grad()
def sample(model: Denoiser, scheduler, n: int = 16, steps: int = 25,
           generator: Optional[torch.Generator] = None, *, device=None,
           timing: Optional[SamplingTiming] = None,
           callback: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Draw ``n`` images [n, C, size, size] with ``scheduler`` in ``steps`` steps (diffusers loop).

        scheduler.set_timesteps(steps, device)
        x = randn(...) * scheduler.init_noise_sigma      # 1 when it has none (flow matching)
        for t in scheduler.timesteps:
            x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample

    ``generator`` draws the initial noise and, when ``scheduler.step`` accepts one, the step's
    noise (ancestral and DDPM steps); None uses a generator seeded with 0. The initial noise is
    drawn on the generator's device and moved to the model's. Flow-matching schedulers get the
    model's eps converted to a velocity (:func:`_flow_velocity`). ``timing`` accumulates the time
    spent in model forwards and in ``scheduler.step``; ``callback(i, len(timesteps))`` runs after
    each step. The output is not clamped.
    """
    if n < 1 or steps < 1:
        raise ValueError(f"sample: n and steps must be >= 1, got n={n}, steps={steps}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    scheduler.set_timesteps(steps, device=device)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    flow = _is_flow(scheduler)
    T = int(scheduler.config.num_train_timesteps)
    shape = (n, model.in_channels, model.size, model.size)
    x = torch.randn(shape, generator=generator, device=generator.device).to(device)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)    # flow matching has none: 1
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    was_training = model.training
    model.eval()
    timesteps = scheduler.timesteps
    scale = getattr(scheduler, "scale_model_input", None)   # flow matching has none
    try:
        for i, t in enumerate(timesteps):
            inp = scale(x, t) if scale is not None else x
            sync()
            t0 = time.perf_counter()
            out = _flow_velocity(model, inp, t, T) if flow else model(inp, t)
            sync()
            t1 = time.perf_counter()
            kwargs = {"generator": generator} if takes_generator else {}
            x = scheduler.step(out, t, x, **kwargs).prev_sample
            sync()
            t2 = time.perf_counter()
            if timing is not None:
                timing.model_seconds += t1 - t0
                timing.step_seconds += t2 - t1
                timing.model_calls += 1
                timing.step_calls += 1
            if callback is not None:
                callback(i + 1, len(timesteps))
    finally:
        model.train(was_training)
    return x

"""Benchmark cases for the fused sampler step: one mid-schedule ``step()`` per scheduler on a
4×4×128×128 latent, and classifier-free guidance fused into the step.

Contenders, all on the same inputs in the same run:

    fastgen        fastgen.diffusion.<Scheduler>.step(): host coefficients + one fused kernel
    reference      the same scheduler with the op on its PyTorch reference (eager, one kernel
                   per term)
    diffusers      diffusers' own <Scheduler>.step() (when diffusers is installed)
    torch.compile  torch.compile of the reference step's math with this step's coefficients, plus
                   the step's noise draw where it has one (the scheduler's host work is not in
                   it: fastgen pays it, this peer does not)

Each call rewinds the schedulers to the same step index, so every round times the same step.
Traffic floor: each tensor the step reads once (sample, model output, history, noise) and each it
writes once (prev_sample, and pred_original_sample / the history update).
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Callable, Optional

import torch

from ..ops.sampler import cfg_combine, sampler_step
from ..reference import sampler as ref
from ..registry import use_backend
from ..testing.check import available_backends
from .core import Case

SHAPE = (4, 4, 128, 128)
N_STEPS = 25
SD = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
          beta_schedule="scaled_linear")

# (label, class name, config, tier): SD-style configs, diffusers' defaults otherwise.
_SPECS = [
    ("DDIM", "DDIMScheduler", dict(SD, clip_sample=False, set_alpha_to_one=False), "quick"),
    ("Euler", "EulerDiscreteScheduler", SD, "quick"),
    ("DPM++ 2M", "DPMSolverMultistepScheduler", SD, "quick"),
    ("DDPM", "DDPMScheduler", SD, "full"),
    ("Euler ancestral", "EulerAncestralDiscreteScheduler", SD, "full"),
    ("Heun", "HeunDiscreteScheduler", SD, "full"),  # stage 1, the Euler predictor
    ("Heun corrector", "HeunDiscreteScheduler", SD, "full"),  # stage 2
    ("DPM++ 2M SDE", "DPMSolverMultistepScheduler",
     dict(SD, algorithm_type="sde-dpmsolver++"), "full"),
    ("FlowMatch Euler", "FlowMatchEulerDiscreteScheduler", dict(shift=3.0), "full"),
]
_WARM_STEPS = 4  # steps taken before the timed one: multistep history is full, Heun at stage 1
_WARM = {"Heun corrector": 5}  # cases timed elsewhere in the schedule


def _rewind(s, index: int, state: Optional[dict]) -> None:
    s._step_index = index
    if state is not None:  # multistep / two-stage schedulers: restore their history attributes
        for k, v in state.items():
            setattr(s, k, list(v) if isinstance(v, list) else v)


_STATE_KEYS = ("model_outputs", "lower_order_nums", "_last_sample", "prev_derivative", "dt",
               "sample", "last_sample", "_first_x0")


def _snapshot(s) -> dict:
    return {k: (list(getattr(s, k)) if isinstance(getattr(s, k), list) else getattr(s, k))
            for k in _STATE_KEYS if hasattr(s, k)}


def _prepared(cls, cfg, x, g, warm=_WARM_STEPS):
    s = cls(**cfg)
    s.set_timesteps(N_STEPS)
    gen = torch.Generator(device=x.device).manual_seed(1)
    for i in range(warm):
        t = s.timesteps[i]
        m = torch.randn(x.shape, generator=g).to(x.device)
        scale = getattr(s, "scale_model_input", None)  # diffusers' FlowMatch has none
        x = s.step(m, t, scale(x, t) if scale else x, **_gen_kw(s, gen)).prev_sample
    return s, x


def _gen(s: dict) -> torch.Generator:
    """The state's generator, reseeded so that every call draws the same noise."""
    if "gen" not in s:
        s["gen"] = torch.Generator(device=s["x"].device)
    return s["gen"].manual_seed(3)


_TAKES_GENERATOR: dict = {}


def _gen_kw(s, gen) -> dict:
    """generator=gen where the scheduler's step() takes one (as diffusers' pipelines do)."""
    cls = type(s)
    if cls not in _TAKES_GENERATOR:
        _TAKES_GENERATOR[cls] = "generator" in inspect.signature(s.step).parameters
    return {"generator": gen} if _TAKES_GENERATOR[cls] else {}


def _capture_coeffs(step: Callable[[], object]) -> list:
    """The arguments of every reference sampler_step the call makes."""
    calls = []
    inner = ref.sampler_step

    def record(*args, **kw):
        calls.append((args, kw))
        return inner(*args, **kw)

    ref.sampler_step = record
    try:
        with use_backend("reference", "sampler_step"):
            step()
    finally:
        ref.sampler_step = inner
    return calls


def cases(device: str) -> list[Case]:
    if device != "cpu" and not torch.cuda.is_available():
        return []
    backends = [b for b in available_backends("sampler_step", device) if b != "reference"]
    if device == "cpu":
        backends = [b for b in backends if b != "triton"]
    backend = backends[0] if backends else "reference"
    out = [_scheduler_case(device, backend, *spec) for spec in _SPECS]
    out.append(_cfg_case(device, backend))
    return out


def _scheduler_case(device, backend, label, cls_name, cfg, tier) -> Case:
    numel = 1
    for d in SHAPE:
        numel *= d

    def setup():
        from .. import diffusion

        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(SHAPE, generator=g).to(device)
        warm = _WARM.get(label, _WARM_STEPS)
        fs, x = _prepared(getattr(diffusion, cls_name), cfg, x0, torch.Generator().manual_seed(2),
                          warm)
        st = {"fs": fs, "x": x, "index": fs._step_index, "fstate": _snapshot(fs)}
        st["t"] = fs.timesteps[st["index"]]
        st["m"] = torch.randn(SHAPE, generator=g).to(device)
        if importlib.util.find_spec("diffusers") is not None:
            import diffusers

            ds, _ = _prepared(getattr(diffusers, cls_name), cfg, x0,
                              torch.Generator().manual_seed(2), warm)
            st.update(ds=ds, dstate=_snapshot(ds))
        st["calls"] = _capture_coeffs(lambda: _fast(st))
        args, kw = st["calls"][-1]
        st["draws_noise"] = kw.get("noise") is not None
        rest = {k: v for k, v in kw.items() if k != "noise"}
        st["compiled"] = torch.compile(lambda *a, noise=None: ref.sampler_step(
            *a, noise=noise, **rest), dynamic=False)
        st["compiled_args"] = args
        return st

    def _fast(s):
        _rewind(s["fs"], s["index"], s["fstate"])
        return (s["fs"].step(s["m"], s["t"], s["x"], **_gen_kw(s["fs"], _gen(s))).prev_sample,)

    def _reference(s):
        with use_backend("reference", "sampler_step", "randn"):
            return _fast(s)

    def _diffusers(s):
        _rewind(s["ds"], s["index"], s["dstate"])
        return (s["ds"].step(s["m"], s["t"], s["x"], **_gen_kw(s["ds"], _gen(s))).prev_sample,)

    def _compiled(s):
        noise = None
        if s["draws_noise"]:  # the step's noise is part of the step: drawn as the others do
            noise = torch.randn(s["x"].shape, generator=_gen(s), device=s["x"].device)
        return (s["compiled"](*s["compiled_args"], noise=noise)[0],)

    peers = {"torch.compile": _compiled}
    if importlib.util.find_spec("diffusers") is not None:
        peers["diffusers"] = _diffusers
    # passes over memory besides the one write of prev_sample (Heun's predictor also writes x̂0)
    reads = {"DPM++ 2M": 3, "DPM++ 2M SDE": 4, "DDPM": 3, "Euler ancestral": 3, "Heun": 3,
             "Heun corrector": 3}
    passes = reads.get(label, 2) + 1
    return Case(op="sampler_step", name=f"{label} step {'x'.join(map(str, SHAPE))}",
                device=device, dtype=torch.float32, setup=setup, fastgen=_fast,
                reference=_reference, peers=peers, truth=None, bytes_moved=passes * numel * 4,
                tier=tier, backend=backend, inner=10)


def _cfg_case(device, backend) -> Case:
    """CFG + a DPM-style step (x, x̂0 history): fused vs cfg_combine then step (two passes)."""
    kw = dict(c_sample=0.93, c_x0=0.21, c_history=[-0.05], x0_sample=1.02, x0_model=-0.14,
              return_x0=True)
    numel = 1
    for d in SHAPE:
        numel *= d

    def setup():
        g = torch.Generator().manual_seed(0)
        x, h = (torch.randn(SHAPE, generator=g).to(device) for _ in range(2))
        both = torch.randn((2 * SHAPE[0],) + SHAPE[1:], generator=g).to(device)
        return {"x": x, "h": h, "both": both}

    def fused(s):
        return sampler_step(s["x"], s["both"], guidance_scale=7.5, history=[s["h"]],
                            backend=backend, **kw)

    def combine_then_step(s):
        m = cfg_combine(s["both"], guidance_scale=7.5, backend=backend)
        return sampler_step(s["x"], m, history=[s["h"]], backend=backend, **kw)

    def eager(s):
        u, c = s["both"].chunk(2)
        m = u + 7.5 * (c - u)
        return sampler_step(s["x"], m, history=[s["h"]], backend="reference", **kw)

    return Case(op="sampler_step", name=f"CFG fused into step {'x'.join(map(str, SHAPE))}",
                device=device, dtype=torch.float32, setup=setup, fastgen=fused, reference=eager,
                peers={"combine then step": combine_then_step},
                bytes_moved=(4 + 2) * numel * 4, tier="quick", backend=backend, inner=10)

"""DDPM (Ho et al., 2020): ancestral sampling of the discrete variance-preserving chain."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ._base import (SchedulerBase, SchedulerOutput, _bcast, fused_step, randn_tensor,
                    register_config)

__all__ = ["DDPMScheduler"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
SPACINGS = ("linspace", "leading", "trailing")


def vp_prologue(prediction_type: str, a: float, who: str) -> tuple[float, float]:
    """(x0_sample, x0_model): x̂0 = x0_sample·x + x0_model·m at cumulative alpha ``a``."""
    if prediction_type == "sample":
        return 0.0, 1.0
    b = 1.0 - a
    if prediction_type == "v_prediction":
        return math.sqrt(a), -math.sqrt(b)
    if a <= 0.0:
        raise ValueError(f"{who}: prediction_type='epsilon' cannot give x0 at a timestep where "
                         f"alphas_cumprod is 0 (rescale_betas_zero_snr); use v_prediction")
    return 1.0 / math.sqrt(a), -math.sqrt(b) / math.sqrt(a)


def spaced_int_timesteps(spacing: str, T: int, n: int, steps_offset: int) -> np.ndarray:
    """diffusers' integer timestep spacings (DDPM, DDIM), descending."""
    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        ratio = T // n
        ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64)
        return ts + steps_offset
    ratio = T / n
    return np.round(np.arange(T, 0, -ratio)).astype(np.int64) - 1


class DDPMScheduler(SchedulerBase):
    """DDPM sampling, a drop-in for ``diffusers.DDPMScheduler`` (0.42.1): same config keys and
    defaults, ``set_timesteps``, ``step``, ``add_noise``. Each step is one fused
    :func:`fastgen.ops.sampler_step` call: x̂0 from the model output (clipped when
    ``clip_sample``), the posterior mean ``c_0·x̂0 + c_x·x`` and, for t > 0, ``σ_t·z``.

    Supported: beta_schedule linear, scaled_linear, squaredcos_cap_v2, laplace, sigmoid (or
    trained_betas); prediction_type epsilon, sample, v_prediction; variance_type fixed_small,
    fixed_small_log, fixed_large (None reads as fixed_small, as in diffusers), learned and
    learned_range (a model output with twice the sample's channels, the second half the
    predicted variance: σ·z is then formed with torch ops before the step); timestep_spacing
    linspace, leading, trailing; steps_offset; clip_sample; rescale_betas_zero_snr; custom
    ``timesteps``; thresholding with dynamic_thresholding_ratio and sample_max_value (x̂0 is
    then written and thresholded with torch ops before the step). Not supported (ValueError):
    variance_type fixed_large_log (diffusers' takes the square root of a log).

    The noise of a step is drawn like diffusers (``model_output``'s shape, dtype and device, from
    ``generator``), so a seeded generator gives diffusers' samples.
    """

    order = 1

    @register_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                 beta_end: float = 0.02, beta_schedule: str = "linear",
                 trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
                 variance_type: str = "fixed_small", clip_sample: bool = True,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 steps_offset: int = 0, rescale_betas_zero_snr: bool = False):
        self._check_choice("prediction_type", PREDICTION_TYPES)
        self._check_choice("variance_type", ("fixed_small", "fixed_small_log", "fixed_large", None,
                                             "learned", "learned_range"),
                           "diffusers' fixed_large_log takes the square root of a log (NaN)")
        self._check_thresholding()
        self._check_spacing()
        self._check_clip_range()
        self._build_alphas_cumprod(("linear", "scaled_linear", "squaredcos_cap_v2", "laplace",
                                    "sigmoid"))
        self.one = torch.tensor(1.0)
        self.init_noise_sigma = 1.0
        self.custom_timesteps = False
        self.num_inference_steps = None
        self.variance_type = variance_type
        self._set_schedule(torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64))
        self._ready = False

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """DDPM does not scale the model input: returns ``sample``."""
        return sample

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None,
                      timesteps: Optional[Sequence[int]] = None) -> None:
        """Choose the sampling timesteps: ``num_inference_steps`` spaced by
        ``config.timestep_spacing``, or a descending list of custom ``timesteps``."""
        T = int(self.config.num_train_timesteps)
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("DDPMScheduler.set_timesteps: pass num_inference_steps or "
                             "timesteps, not both")
        if timesteps is not None:
            ts = [int(t) for t in timesteps]
            if not ts:
                raise ValueError("DDPMScheduler.set_timesteps: timesteps is empty")
            if any(b >= a for a, b in zip(ts, ts[1:])):
                raise ValueError("DDPMScheduler.set_timesteps: custom timesteps must be in "
                                 "descending order")
            if ts[0] >= T or ts[-1] < 0:
                raise ValueError(f"DDPMScheduler.set_timesteps: timesteps must lie in [0, {T})")
            arr = np.array(ts, dtype=np.int64)
            self.custom_timesteps = True
            self.num_inference_steps = None
        else:
            if num_inference_steps is None:
                raise ValueError("DDPMScheduler.set_timesteps: pass num_inference_steps or "
                                 "timesteps")
            n = self._check_num_steps(num_inference_steps, T)
            self.num_inference_steps = n
            self.custom_timesteps = False
            arr = spaced_int_timesteps(self.config.timestep_spacing, T, n,
                                       int(self.config.steps_offset))
        self._set_schedule(torch.from_numpy(arr), device)
        self._step_index = None
        self._ready = True

    def previous_timestep(self, timestep) -> int:
        """The timestep after ``timestep`` in the schedule (-1 after the last)."""
        self._sync_host_schedule()
        t = self._timestep_value(timestep)
        i = self._indices_of(t)[0]
        return int(self._ts_host[i + 1]) if i + 1 < len(self._ts_host) else -1

    def _t_int(self, timestep) -> int:
        self._sync_host_schedule()
        t = self._timestep_value(timestep)
        self._indices_of(t)
        return int(t)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True
             ) -> Union[SchedulerOutput, tuple]:
        """One reverse step from ``timestep``: returns ``prev_sample`` and
        ``pred_original_sample`` (an output object, or a tuple with ``return_dict=False``)."""
        self._require_ready()
        predicted_variance = None
        if self.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = self._split_learned_variance(model_output, sample)
        self._check_inputs(model_output, sample)
        c = self.config
        t = self._t_int(timestep)
        prev_t = self.previous_timestep(t)
        self._step_index = self._indices_of(t)[0] + 1   # bookkeeping only (benchmarks rewind it)
        a_t = self._ac[t]
        a_prev = self._ac[prev_t] if prev_t >= 0 else 1.0
        b_t, b_prev = 1.0 - a_t, 1.0 - a_prev
        alpha = a_t / a_prev
        beta = 1.0 - alpha
        px, pm = vp_prologue(c.prediction_type, a_t, "DDPMScheduler.step")
        c_x0 = math.sqrt(a_prev) * beta / b_t
        c_x = math.sqrt(alpha) * b_prev / b_t
        noise, c_z = None, 0.0
        if t > 0:
            noise = randn_tensor(model_output.shape, generator=generator,
                                 device=model_output.device, dtype=model_output.dtype)
            var = max(b_prev / b_t * beta, 1e-20)
            c_z = math.sqrt(beta) if self.variance_type == "fixed_large" else math.sqrt(var)
            if predicted_variance is not None:  # a per-element σ: σ·z formed first
                if self.variance_type == "learned":  # the model predicts the variance itself
                    sd = predicted_variance ** 0.5
                else:  # learned_range: log variance between log(var) and log(β_t)
                    frac = (predicted_variance + 1) / 2
                    sd = torch.exp(0.5 * (frac * math.log(beta) + (1 - frac) * math.log(var)))
                noise, c_z = sd * noise, 1.0
        if c.thresholding:  # (clip_sample is then ignored, as in diffusers)
            x0 = self._thresholded_x0(sample, model_output, px, pm)
            out, _ = fused_step(sample, x0, c_sample=c_x, c_x0=c_x0, noise=noise, c_noise=c_z,
                                want_x0="no")
            out = SchedulerOutput(out.prev_sample, x0)
        else:
            out, _ = fused_step(sample, model_output, c_sample=c_x, c_x0=c_x0, noise=noise,
                                c_noise=c_z, x0_sample=px, x0_model=pm,
                                clip_x0=self._clip_range(),
                                want_x0="lazy" if return_dict else "eager")
        return out if return_dict else out.to_tuple()

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion: ``sqrt(a_t)·x0 + sqrt(1 - a_t)·noise`` per sample's timestep."""
        return _vp_add_noise(self, original_samples, noise, timesteps)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
        """The v-prediction target ``sqrt(a_t)·noise - sqrt(1 - a_t)·sample``."""
        return _vp_velocity(self, sample, noise, timesteps)


def _vp_tables(s, x: torch.Tensor, timesteps):
    ac = s.alphas_cumprod.to(device=x.device, dtype=x.dtype)
    t = torch.as_tensor(timesteps).to(x.device)
    a = ac[t]
    return _bcast(a ** 0.5, x.ndim), _bcast((1 - a) ** 0.5, x.ndim)


def _vp_add_noise(s, x0: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
    sa, sb = _vp_tables(s, x0, timesteps)
    return sa * x0 + sb * noise


def _vp_velocity(s, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
    sa, sb = _vp_tables(s, sample, timesteps)
    return sa * noise - sb * sample

"""Heun's second-order sampler (Karras et al., 2022, Algorithm 1 without churn): two model
evaluations per noise level."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

from ._base import (SchedulerOutput, fused_step, lazy_x0, register_config,
                    sigma_to_t, spaced_sigmas)
from .euler import _SigmaScheduler, spaced_float_timesteps, ve_prologue

__all__ = ["HeunDiscreteScheduler"]


class HeunDiscreteScheduler(_SigmaScheduler):
    """Heun sampling, a drop-in for ``diffusers.HeunDiscreteScheduler`` (0.42.1): the schedule
    repeats every noise level but the first (``timesteps`` has 2n − 1 entries, ``order = 2``)
    and ``step`` alternates between an Euler predictor (stage 1) and the trapezoidal corrector
    (stage 2). Each stage is one fused :func:`fastgen.ops.sampler_step` call; stage 1 also
    writes x̂0₁, and stage 2 takes the stage-1 sample and x̂0₁ as history, since
    ``d1 = (x_saved − x̂0₁)/σ`` is linear in them:

        x_prev = x_saved + dt/2·(d1 + d2),   d2 = (x' − x̂0₂)/σ_next

    For epsilon prediction without clipping d2 = m₂, so the corrector reads x_saved, x̂0₁ and m₂
    only (three reads, one write; x̂0₂ is computed when ``pred_original_sample`` is read).

    Supported: beta_schedule linear, scaled_linear, squaredcos_cap_v2, exp (or trained_betas);
    prediction_type epsilon, v_prediction, sample; use_karras_sigmas, use_exponential_sigmas,
    use_beta_sigmas (needs scipy); clip_sample; timestep_spacing linspace, leading, trailing;
    custom ``timesteps``.
    """

    order = 2

    @register_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                 beta_end: float = 0.012, beta_schedule: str = "linear",
                 trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
                 prediction_type: str = "epsilon", use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 clip_sample: bool = False, clip_sample_range: float = 1.0,
                 timestep_spacing: str = "linspace", steps_offset: int = 0):
        self._check_choice("prediction_type", ("epsilon", "v_prediction", "sample"))
        self._check_sigma_spacing()
        self._check_clip_range()
        self._check_spacing()
        self._build_alphas_cumprod(("linear", "scaled_linear", "squaredcos_cap_v2", "exp"))
        self.use_karras_sigmas = use_karras_sigmas
        self._compute(num_train_timesteps, None, num_train_timesteps, None)
        self._ready = False

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is a stage-1 (predictor) step."""
        return self.dt is None

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None,
                      num_train_timesteps: Optional[int] = None,
                      timesteps: Optional[Sequence[float]] = None) -> None:
        """Choose ``num_inference_steps`` noise levels (each but the first used twice), or
        custom descending ``timesteps``; ``num_train_timesteps`` overrides the config's for
        the spacing, as in diffusers."""
        name = "HeunDiscreteScheduler.set_timesteps"
        if num_inference_steps is None and timesteps is None:
            raise ValueError(f"{name}: pass num_inference_steps or timesteps")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError(f"{name}: pass num_inference_steps or timesteps, not both")
        if timesteps is not None:
            self._spacing_refuses_timesteps(name)
        self._compute(num_inference_steps, device, num_train_timesteps, timesteps)
        self._ready = True

    def _compute(self, num_inference_steps, device, num_train_timesteps, timesteps) -> None:
        c = self.config
        n = self._check_num_steps(num_inference_steps or len(timesteps))
        self.num_inference_steps = n
        T = int(num_train_timesteps or c.num_train_timesteps)
        if timesteps is not None:
            ts = np.array(timesteps, dtype=np.float32)
        else:
            ts = spaced_float_timesteps(c.timestep_spacing, T, n, int(c.steps_offset))
        table = self._full_sigmas_f32()
        log_sigmas = np.log(table)
        sig = np.interp(ts, np.arange(0, len(table)), table)
        spaced = spaced_sigmas(c, sig, n)
        if spaced is not None:
            sig = spaced
            ts = np.array([sigma_to_t(s, log_sigmas) for s in sig])
        sig = torch.from_numpy(np.concatenate([sig, [0.0]]).astype(np.float32))
        self._set_sigmas(torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]]))
        ts = torch.from_numpy(ts)
        ts = torch.cat([ts[:1], ts[1:].repeat_interleave(2)]).to(torch.float32)
        self._set_schedule(ts, device)
        self.prev_derivative = None
        self.dt = None
        self.sample = None
        self._first_x0 = None
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             return_dict: bool = True) -> Union[SchedulerOutput, tuple]:
        """One Heun stage; returns ``prev_sample`` and ``pred_original_sample``. Stage 1 returns
        the Euler predictor (the next model call is at σ_next), stage 2 the corrected sample."""
        self._require_ready()
        self._check_inputs(model_output, sample)
        c = self.config
        i = self._advance_to(timestep)
        clip = self._clip_range()
        eps_exact = c.prediction_type == "epsilon" and clip is None
        if self.state_in_first_order:
            sigma, sigma_next = self._sig[i], self._sig[i + 1]
            px, pm = ve_prologue(c.prediction_type, sigma, sigma)
            dt = sigma_next - sigma
            if eps_exact:
                coeffs = dict(c_sample=1.0, c_model=dt)
            else:
                r = sigma_next / sigma
                coeffs = dict(c_sample=r, c_x0=1.0 - r)
            # x̂0₁ is written for stage 2 (a copy of its own: the caller may reuse the model
            # output's buffer, e.g. a CUDA graph's static output, before stage 2)
            out, x0 = fused_step(sample, model_output, x0_sample=px, x0_model=pm, clip_x0=clip,
                                 want_x0="eager", **coeffs)
            self.dt, self.sample, self._first_x0, self._first_sigma = dt, sample, x0, sigma
        else:
            sigma, sigma_next = self._sig[i - 1], self._sig[i]
            px, pm = ve_prologue(c.prediction_type, sigma_next, sigma_next)
            dt, saved, x0_first = self.dt, self.sample, self._first_x0
            if saved.shape != sample.shape or saved.dtype != sample.dtype:
                raise ValueError("HeunDiscreteScheduler.step: the second-stage sample does not "
                                 "match the first stage's (shape or dtype)")
            half = dt / 2.0
            # x_saved + dt/2·(x_saved − x̂0₁)/σ + dt/2·d2
            c_saved, c_x0_first = 1.0 + half / sigma, -half / sigma
            if eps_exact and return_dict:
                # d2 = m₂: the corrector reads x_saved, x̂0₁ and m₂ and writes once; stage 2's
                # own sample enters only x̂0₂, computed when read
                out, _ = fused_step(saved, model_output, c_sample=c_saved, c_model=half,
                                    history=[x0_first], c_history=[c_x0_first], want_x0="no")
                out = SchedulerOutput(out.prev_sample, x0_fn=lazy_x0(sample, model_output, px, pm))
            else:
                if eps_exact:  # d2 = m exactly
                    coeffs = dict(c_model=half)
                else:
                    coeffs = dict(c_sample=half / sigma_next, c_x0=-half / sigma_next)
                out, _ = fused_step(sample, model_output, x0_sample=px, x0_model=pm,
                                    clip_x0=clip, want_x0="lazy" if return_dict else "eager",
                                    history=[saved, x0_first], c_history=[c_saved, c_x0_first],
                                    **coeffs)
            self.prev_derivative = None
            self.dt = self.sample = self._first_x0 = None
        self._step_index += 1
        return out if return_dict else out.to_tuple()

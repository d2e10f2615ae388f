"""Euler and Euler-ancestral samplers of the variance-exploding probability-flow ODE / SDE
(Karras et al., 2022), on the noise levels σ = sqrt((1 - a)/a) of a discrete VP schedule."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ._base import (SchedulerBase, SchedulerOutput, StepIndexMixin, _bcast, fused_step,
                    randn_tensor, register_config, sigma_to_t, spaced_sigmas)

__all__ = ["EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"]

_BETAS = ("linear", "scaled_linear", "squaredcos_cap_v2")


def spaced_float_timesteps(spacing: str, T: int, n: int, steps_offset: int) -> np.ndarray:
    """diffusers' float32 timestep spacings (Euler family), descending."""
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = T // n
        ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.float32)
        ts += steps_offset
        return ts
    ratio = T / n
    ts = (np.arange(T, 0, -ratio)).round().copy().astype(np.float32)
    ts -= 1
    return ts


def ve_prologue(prediction_type: str, sigma: float, sigma_hat: float) -> tuple[float, float]:
    """(x0_sample, x0_model) of x̂0 in the VE parametrisation (sample x = x0 + σ·ε)."""
    if prediction_type == "epsilon":
        return 1.0, -sigma_hat
    if prediction_type == "v_prediction":
        return 1.0 / (sigma * sigma + 1.0), -sigma / math.sqrt(sigma * sigma + 1.0)
    return 0.0, 1.0  # sample / original_sample


class _SigmaScheduler(StepIndexMixin, SchedulerBase):
    """Shared by the σ-indexed schedulers: the host mirror of ``sigmas``, input scaling and
    ``init_noise_sigma``."""

    def _set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.sigmas = sigmas.to("cpu")
        self._sig = self.sigmas.double().tolist()

    @property
    def init_noise_sigma(self) -> float:
        """The standard deviation of the initial noise: σ_max (√(σ_max² + 1) with leading
        spacing), a float32 value."""
        m = self.sigmas.max()  # float32 CPU tensors: the same rounding as diffusers
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return float(m)
        return float((m ** 2 + 1) ** 0.5)

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """The model input ``sample / √(σ² + 1)`` at ``timestep`` (sets the step index on the
        first call)."""
        self._require_ready("scale_model_input")
        i = self._advance_to(timestep)
        sigma = self.sigmas[i]  # a float32 CPU scalar: reading it does not touch the device
        self.is_scale_input_called = True
        return sample / float((sigma ** 2 + 1) ** 0.5)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion in the VE parametrisation: ``x0 + σ_t·noise``."""
        sig = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        s = sig[self._step_indices(timesteps)]
        return original_samples + noise * _bcast(s, original_samples.ndim)


class EulerDiscreteScheduler(_SigmaScheduler):
    """Euler sampling (Karras et al. Algorithm 2, with optional churn), a drop-in for
    ``diffusers.EulerDiscreteScheduler`` (0.42.1): same config keys and defaults,
    ``set_timesteps(n, device, timesteps=, sigmas=)``, ``step(..., s_churn, s_tmin, s_tmax,
    s_noise, generator)``, ``scale_model_input``, ``add_noise``. Each step is one fused
    :func:`fastgen.ops.sampler_step` call (churn noise, x̂0 and the Euler update together).

    Supported: beta_schedule linear, scaled_linear, squaredcos_cap_v2 (or trained_betas);
    prediction_type epsilon, v_prediction, sample (= original_sample); interpolation_type
    linear, log_linear; use_karras_sigmas, use_exponential_sigmas or use_beta_sigmas (the
    last needs scipy; each with sigma_min / sigma_max); timestep_spacing linspace, leading,
    trailing; timestep_type discrete, continuous; final_sigmas_type zero, sigma_min;
    rescale_betas_zero_snr.
    """

    order = 1

    @register_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                 beta_end: float = 0.02, beta_schedule: str = "linear",
                 trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
                 prediction_type: str = "epsilon", interpolation_type: str = "linear",
                 use_karras_sigmas: Optional[bool] = False,
                 use_exponential_sigmas: Optional[bool] = False,
                 use_beta_sigmas: Optional[bool] = False, sigma_min: Optional[float] = None,
                 sigma_max: Optional[float] = None, timestep_spacing: str = "linspace",
                 timestep_type: str = "discrete", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, final_sigmas_type: str = "zero"):
        self._check_choice("prediction_type", ("epsilon", "v_prediction", "sample",
                                               "original_sample"))
        self._check_choice("interpolation_type", ("linear", "log_linear"))
        self._check_sigma_spacing()
        self._check_choice("timestep_type", ("discrete", "continuous"))
        self._check_choice("final_sigmas_type", ("zero", "sigma_min"))
        self._check_number("sigma_min", allow_none=True)
        self._check_number("sigma_max", allow_none=True)
        self._check_spacing()
        self._build_alphas_cumprod(_BETAS, zero_snr_euler=True)
        sig = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).flip(0)
        ts = torch.from_numpy(np.linspace(0, num_train_timesteps - 1, num_train_timesteps,
                                          dtype=float)[::-1].copy()).to(torch.float32)
        self.num_inference_steps = None
        if self._continuous_v:
            ts = torch.Tensor([0.25 * s.log() for s in sig])
        self._set_schedule(ts)
        self._set_sigmas(torch.cat([sig, torch.zeros(1)]))
        self.is_scale_input_called = False
        self.use_karras_sigmas = use_karras_sigmas
        self._step_index = None
        self._begin_index = None
        self._ready = False

    @property
    def _continuous_v(self) -> bool:
        c = self.config
        return c.timestep_type == "continuous" and c.prediction_type == "v_prediction"

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None,
                      timesteps: Optional[Sequence[float]] = None,
                      sigmas: Optional[Sequence[float]] = None) -> None:
        """Choose the sampling schedule: ``num_inference_steps`` (spacing, interpolation and
        Karras sigmas from the config), or custom descending ``timesteps``, or custom ``sigmas``
        (n + 1 values, the last one the final noise level)."""
        c = self.config
        name = "EulerDiscreteScheduler.set_timesteps"
        if timesteps is not None and sigmas is not None:
            raise ValueError(f"{name}: pass timesteps or sigmas, not both")
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError(f"{name}: pass num_inference_steps, timesteps or sigmas")
        if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
            raise ValueError(f"{name}: pass only one of num_inference_steps, timesteps, sigmas")
        if timesteps is not None:
            self._spacing_refuses_timesteps(name)
        if timesteps is not None and self._continuous_v:
            raise ValueError(f"{name}: custom timesteps cannot be used with continuous "
                             f"v_prediction timesteps")
        if num_inference_steps is None:
            num_inference_steps = len(timesteps) if timesteps is not None else len(sigmas) - 1
        n = self._check_num_steps(num_inference_steps)
        self.num_inference_steps = n
        T = int(c.num_train_timesteps)
        table = self._full_sigmas_f32()
        log_sigmas = np.log(table)
        if sigmas is not None:
            sig = np.array(sigmas).astype(np.float32)
            ts = np.array([sigma_to_t(s, log_sigmas) for s in sig[:-1]])
        else:
            if timesteps is not None:
                ts = np.array(timesteps).astype(np.float32)
            else:
                ts = spaced_float_timesteps(c.timestep_spacing, T, n, int(c.steps_offset))
            if c.interpolation_type == "linear":
                sig = np.interp(ts, np.arange(0, len(table)), table)
            else:
                sig = torch.linspace(np.log(table[-1]), np.log(table[0]), n + 1).exp().numpy()
            spaced = spaced_sigmas(c, sig, n)
            if spaced is not None:
                sig = spaced
                ts = np.array([sigma_to_t(s, log_sigmas) for s in sig])
            if c.final_sigmas_type == "sigma_min":
                last = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
            else:
                last = 0
            sig = np.concatenate([sig, [last]]).astype(np.float32)
        sig_t = torch.from_numpy(sig).to(dtype=torch.float32)
        if self._continuous_v:
            ts_t = torch.Tensor([0.25 * s.log() for s in sig_t[:-1]])
        else:
            ts_t = torch.from_numpy(np.asarray(ts).astype(np.float32))
        self._set_schedule(ts_t, device)
        self._set_sigmas(sig_t)
        self._step_index = None
        self._begin_index = None
        self._ready = True

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
             s_noise: float = 1.0, generator: Optional[torch.Generator] = None,
             return_dict: bool = True) -> Union[SchedulerOutput, tuple]:
        """One Euler step from the current σ to the next; returns ``prev_sample`` and
        ``pred_original_sample``. With ``s_churn > 0`` and σ in [s_tmin, s_tmax], noise
        (drawn like diffusers from ``generator``) first raises σ to σ̂ = σ·(1 + γ)."""
        self._require_ready()
        self._check_inputs(model_output, sample)
        c = self.config
        self._refuse_index(timestep)
        i = self._advance_to(timestep)
        sigma, sigma_next = self._sig[i], self._sig[i + 1]
        gamma = (min(s_churn / (len(self._sig) - 1), 2 ** 0.5 - 1)
                 if s_tmin <= sigma <= s_tmax else 0.0)
        sigma_hat = sigma * (gamma + 1)
        noise, k = None, 0.0
        if gamma > 0:
            noise = randn_tensor(model_output.shape, dtype=model_output.dtype,
                                 device=model_output.device, generator=generator)
            k = s_noise * math.sqrt(sigma_hat ** 2 - sigma ** 2)
        px, pm = ve_prologue(c.prediction_type, sigma, sigma_hat)
        dt = sigma_next - sigma_hat
        if c.prediction_type == "epsilon":  # d = (x - x̂0)/σ̂ = m exactly
            c_x, c_0, c_m, c_z = 1.0, 0.0, dt, k
        else:  # x + d·dt = (σ_next/σ̂)·x + (1 - σ_next/σ̂)·x̂0 on the churned x
            r = sigma_next / sigma_hat
            c_x, c_0, c_m, c_z = r, 1.0 - r, 0.0, r * k
        out, _ = fused_step(sample, model_output, c_sample=c_x, c_x0=c_0, c_model=c_m,
                            noise=noise, c_noise=c_z, x0_sample=px, x0_model=pm,
                            x0_noise=px * k, want_x0="lazy" if return_dict else "eager")
        self._step_index += 1
        return out if return_dict else out.to_tuple()


class EulerAncestralDiscreteScheduler(_SigmaScheduler):
    """Euler-ancestral sampling, a drop-in for ``diffusers.EulerAncestralDiscreteScheduler``
    (0.42.1): each step goes down to σ_down with an Euler step and adds σ_up·z, with
    σ_up = √(σ_next²(σ² − σ_next²)/σ²) and σ_down = √(σ_next² − σ_up²); one fused
    :func:`fastgen.ops.sampler_step` call. The noise is drawn every step like diffusers (from
    ``generator``, in ``model_output``'s shape, dtype and device).

    Supported: beta_schedule linear, scaled_linear, squaredcos_cap_v2 (or trained_betas);
    prediction_type epsilon, v_prediction; timestep_spacing linspace, leading, trailing;
    rescale_betas_zero_snr. Not supported (ValueError): prediction_type sample.
    """

    order = 1

    @register_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                 beta_end: float = 0.02, beta_schedule: str = "linear",
                 trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
                 prediction_type: str = "epsilon", timestep_spacing: str = "linspace",
                 steps_offset: int = 0, rescale_betas_zero_snr: bool = False):
        self._check_choice("prediction_type", ("epsilon", "v_prediction"),
                           "diffusers does not implement sample prediction here either")
        self._check_spacing()
        self._build_alphas_cumprod(_BETAS, zero_snr_euler=True)
        table = self._full_sigmas_f32()
        sig = np.concatenate([table[::-1], [0.0]]).astype(np.float32)
        self._set_sigmas(torch.from_numpy(sig))
        self.num_inference_steps = None
        self._set_schedule(torch.from_numpy(
            np.linspace(0, num_train_timesteps - 1, num_train_timesteps, dtype=float)[::-1]
            .copy()))
        self.is_scale_input_called = False
        self._step_index = None
        self._begin_index = None
        self._ready = False

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Choose ``num_inference_steps`` timesteps spaced by ``config.timestep_spacing``."""
        c = self.config
        n = self._check_num_steps(num_inference_steps)
        self.num_inference_steps = n
        ts = spaced_float_timesteps(c.timestep_spacing, int(c.num_train_timesteps), n,
                                    int(c.steps_offset))
        table = self._full_sigmas_f32()
        sig = np.interp(ts, np.arange(0, len(table)), table)
        sig = np.concatenate([sig, [0.0]]).astype(np.float32)
        self._set_sigmas(torch.from_numpy(sig))
        self._set_schedule(torch.from_numpy(ts), device)
        self._step_index = None
        self._begin_index = None
        self._ready = True

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None, return_dict: bool = True
             ) -> Union[SchedulerOutput, tuple]:
        """One ancestral step; returns ``prev_sample`` and ``pred_original_sample``."""
        self._require_ready()
        self._check_inputs(model_output, sample)
        c = self.config
        self._refuse_index(timestep)
        i = self._advance_to(timestep)
        sigma, sigma_to = self._sig[i], self._sig[i + 1]
        sigma_up = math.sqrt(sigma_to ** 2 * (sigma ** 2 - sigma_to ** 2) / sigma ** 2)
        sigma_down = math.sqrt(max(sigma_to ** 2 - sigma_up ** 2, 0.0))
        dt = sigma_down - sigma
        px, pm = ve_prologue(c.prediction_type, sigma, sigma)
        noise = randn_tensor(model_output.shape, dtype=model_output.dtype,
                             device=model_output.device, generator=generator)
        if c.prediction_type == "epsilon":
            c_x, c_0, c_m = 1.0, 0.0, dt
        else:
            r = sigma_down / sigma
            c_x, c_0, c_m = r, 1.0 - r, 0.0
        out, _ = fused_step(sample, model_output, c_sample=c_x, c_x0=c_0, c_model=c_m,
                            noise=noise, c_noise=sigma_up, x0_sample=px, x0_model=pm,
                            want_x0="lazy" if return_dict else "eager")
        self._step_index += 1
        return out if return_dict else out.to_tuple()


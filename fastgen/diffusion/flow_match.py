"""Euler sampling of rectified-flow / flow-matching models (SD3, Flux):
x_σ = (1 − σ)·x0 + σ·ε, the model predicts the velocity v = ε − x0."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ._base import (SchedulerBase, SchedulerOutput, StepIndexMixin, _bcast, fused_step,
                    randn_tensor, register_config, spaced_sigmas)

__all__ = ["FlowMatchEulerDiscreteScheduler"]


class FlowMatchEulerDiscreteScheduler(StepIndexMixin, SchedulerBase):
    """Flow-matching Euler sampling, a drop-in for ``diffusers.FlowMatchEulerDiscreteScheduler``
    (0.42.1): ``x_prev = x + (σ_next − σ)·v``, or with ``stochastic_sampling``
    ``x_prev = (1 − σ_next)·(x − σ·v) + σ_next·z``; one fused :func:`fastgen.ops.sampler_step`
    call per step. The stochastic variant's noise is drawn like diffusers (float32, in the
    sample's shape and device, from ``generator``).

    Supported: shift (and ``set_shift``), use_dynamic_shifting with ``set_timesteps(mu=...)``
    and time_shift_type exponential / linear, shift_terminal, invert_sigmas, use_karras_sigmas,
    use_exponential_sigmas, use_beta_sigmas (needs scipy), stochastic_sampling, custom
    ``sigmas`` / ``timesteps``. ``per_token_timesteps`` in ``step`` raises
    NotImplementedError. The churn arguments of ``step`` are accepted and ignored, as in
    diffusers.
    """

    order = 1

    @register_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0,
                 use_dynamic_shifting: bool = False, base_shift: Optional[float] = 0.5,
                 max_shift: Optional[float] = 1.15, base_image_seq_len: int = 256,
                 max_image_seq_len: int = 4096, invert_sigmas: bool = False,
                 shift_terminal: Optional[float] = None, use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 time_shift_type: str = "exponential", stochastic_sampling: bool = False):
        self._check_int("num_train_timesteps", 1)
        self._check_number("shift")
        self._check_number("shift_terminal", allow_none=True)
        self._check_sigma_spacing()
        self._check_choice("time_shift_type", ("exponential", "linear"))
        ts = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1]
        ts = torch.from_numpy(ts.copy()).to(dtype=torch.float32)
        sigmas = ts / num_train_timesteps
        if not use_dynamic_shifting:
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        self._set_schedule(sigmas * num_train_timesteps)
        self._step_index = None
        self._begin_index = None
        self._shift = shift
        self.sigmas = sigmas.to("cpu")
        self._sig = self.sigmas.double().tolist()
        self.sigma_min = self.sigmas[-1].item()
        self.sigma_max = self.sigmas[0].item()
        self.num_inference_steps = None
        self.init_noise_sigma = 1.0
        self._ready = False

    @property
    def shift(self) -> float:
        """The current time shift (``config.shift`` unless changed by :meth:`set_shift`)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        """Change the time shift used by the next :meth:`set_timesteps`."""
        self._shift = shift

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """Flow matching does not scale the model input: returns ``sample``."""
        return sample

    def time_shift(self, mu: float, sigma: float, t):
        """The dynamic time shift of ``t`` (exponential or linear, per the config)."""
        if self.config.time_shift_type == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** sigma)
        return mu / (mu + (1 / t - 1) ** sigma)

    def stretch_shift_to_terminal(self, t):
        """Stretch the shifted schedule so that it ends at ``config.shift_terminal``."""
        one_minus_z = 1 - t
        scale = one_minus_z[-1] / (1 - self.config.shift_terminal)
        return 1 - (one_minus_z / scale)

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None,
                      sigmas: Optional[Sequence[float]] = None, mu: Optional[float] = None,
                      timesteps: Optional[Sequence[float]] = None) -> None:
        """Choose ``num_inference_steps`` noise levels (shifted per the config), or custom
        ``sigmas`` and/or ``timesteps``; ``mu`` is required with use_dynamic_shifting."""
        c = self.config
        name = "FlowMatchEulerDiscreteScheduler.set_timesteps"
        if c.use_dynamic_shifting and mu is None:
            raise ValueError(f"{name}: mu must be passed when use_dynamic_shifting is True")
        if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
            raise ValueError(f"{name}: sigmas and timesteps must have the same length")
        if num_inference_steps is not None:
            if ((sigmas is not None and len(sigmas) != num_inference_steps)
                    or (timesteps is not None and len(timesteps) != num_inference_steps)):
                raise ValueError(f"{name}: sigmas / timesteps must have num_inference_steps "
                                 f"entries")
        elif sigmas is None and timesteps is None:
            raise ValueError(f"{name}: pass num_inference_steps, sigmas or timesteps")
        else:
            num_inference_steps = len(sigmas) if sigmas is not None else len(timesteps)
        n = self._check_num_steps(num_inference_steps)
        self.num_inference_steps = n
        T = int(c.num_train_timesteps)
        given_ts = timesteps is not None
        if given_ts:
            timesteps = np.array(timesteps).astype(np.float32)
        if sigmas is None:
            if timesteps is None:
                timesteps = np.linspace(self.sigma_max * T, self.sigma_min * T, n)
            sigmas = timesteps / T
        else:
            sigmas = np.array(sigmas).astype(np.float32)
            n = len(sigmas)
        if c.use_dynamic_shifting:
            sigmas = self.time_shift(mu, 1.0, sigmas)
        else:
            sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        if c.shift_terminal:
            sigmas = self.stretch_shift_to_terminal(sigmas)
        spaced = spaced_sigmas(c, sigmas, n)
        if spaced is not None:
            sigmas = spaced
        sig = torch.from_numpy(np.asarray(sigmas)).to(dtype=torch.float32)
        if given_ts:
            ts = torch.from_numpy(timesteps).to(dtype=torch.float32)
        else:
            ts = sig * T
        if c.invert_sigmas:
            sig = 1.0 - sig
            ts = sig * T
            sig = torch.cat([sig, torch.ones(1)])
        else:
            sig = torch.cat([sig, torch.zeros(1)])
        self._set_schedule(ts, device)
        self._sig = sig.double().tolist()
        self.sigmas = sig.to(device) if device is not None else sig
        self._step_index = None
        self._begin_index = None
        self._ready = True

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
             s_noise: float = 1.0, generator: Optional[torch.Generator] = None,
             per_token_timesteps: Optional[torch.Tensor] = None, return_dict: bool = True
             ) -> Union[SchedulerOutput, tuple]:
        """One Euler step of the flow ODE (or the stochastic re-noising variant); returns
        ``prev_sample`` (an output object, or ``(prev_sample,)`` with ``return_dict=False``)."""
        if per_token_timesteps is not None:
            raise NotImplementedError("FlowMatchEulerDiscreteScheduler.step: "
                                      "per_token_timesteps is not supported")
        self._require_ready()
        self._check_inputs(model_output, sample)
        self._refuse_index(timestep)
        i = self._advance_to(timestep)
        sigma, sigma_next = self._sig[i], self._sig[i + 1]
        if self.config.stochastic_sampling:
            noise = randn_tensor(sample.shape, generator=generator, device=sample.device,
                                 dtype=torch.float32).to(sample.dtype)
            out, _ = fused_step(sample, model_output, c_x0=1.0 - sigma_next, noise=noise,
                                c_noise=sigma_next, x0_sample=1.0, x0_model=-sigma,
                                want_x0="no", has_x0=False)
        else:
            out, _ = fused_step(sample, model_output, c_sample=1.0, c_model=sigma_next - sigma,
                                want_x0="no", has_x0=False)
        self._step_index += 1
        return out if return_dict else (out.prev_sample,)

    def scale_noise(self, sample: torch.Tensor, timestep, noise: torch.Tensor) -> torch.Tensor:
        """Forward process of flow matching: ``σ·noise + (1 − σ)·sample`` at ``timestep``."""
        sig = torch.tensor(self._sig, dtype=sample.dtype, device=sample.device)
        if isinstance(timestep, numbers.Real):
            timestep = torch.tensor([timestep])
        s = _bcast(sig[self._step_indices(timestep)], sample.ndim)
        return s * noise + (1.0 - s) * sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """:meth:`scale_noise` with the argument order of the other schedulers' add_noise."""
        return self.scale_noise(original_samples, timesteps, noise)

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)


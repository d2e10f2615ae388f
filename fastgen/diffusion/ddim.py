"""DDIM (Song et al., 2021): the deterministic (eta = 0) or partly stochastic implicit sampler."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ._base import SchedulerBase, SchedulerOutput, fused_step, randn_tensor, register_config
from .ddpm import PREDICTION_TYPES, _vp_add_noise, _vp_velocity, spaced_int_timesteps, vp_prologue

__all__ = ["DDIMScheduler"]


class DDIMScheduler(SchedulerBase):
    """DDIM sampling, a drop-in for ``diffusers.DDIMScheduler`` (0.42.1): same config keys and
    defaults, ``set_timesteps``, ``step(..., eta, use_clipped_model_output, generator,
    variance_noise)``, ``add_noise``. Each step is one fused :func:`fastgen.ops.sampler_step`
    call: ``√a_prev·x̂0 + √(1 − a_prev − σ²)·ε̂ (+ σ·z)`` with x̂0 and the re-derived ε̂ folded
    into coefficients of the sample, the model output and the (clipped) x̂0.

    Supported: beta_schedule linear, scaled_linear, squaredcos_cap_v2 (or trained_betas);
    prediction_type epsilon, sample, v_prediction; timestep_spacing linspace, leading, trailing;
    steps_offset; clip_sample; set_alpha_to_one; rescale_betas_zero_snr; thresholding with
    dynamic_thresholding_ratio and sample_max_value (x̂0 is then written, thresholded with
    torch ops, and enters the step as a history tensor).

    With ``eta > 0`` the noise is ``variance_noise`` when given, else drawn like diffusers
    (``model_output``'s shape, dtype and device, from ``generator``).
    """

    order = 1

    @register_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                 beta_end: float = 0.02, beta_schedule: str = "linear",
                 trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
                 clip_sample: bool = True, set_alpha_to_one: bool = True, steps_offset: int = 0,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 rescale_betas_zero_snr: bool = False):
        self._check_choice("prediction_type", PREDICTION_TYPES)
        self._check_thresholding()
        self._check_spacing()
        self._check_clip_range()
        self._build_alphas_cumprod(("linear", "scaled_linear", "squaredcos_cap_v2"))
        self.final_alpha_cumprod = (torch.tensor(1.0) if set_alpha_to_one
                                    else self.alphas_cumprod[0])
        self._final_ac = 1.0 if set_alpha_to_one else self._ac[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self._set_schedule(torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64))
        self._ready = False

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """DDIM does not scale the model input: returns ``sample``."""
        return sample

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        """Choose ``num_inference_steps`` timesteps spaced by ``config.timestep_spacing``."""
        T = int(self.config.num_train_timesteps)
        n = self._check_num_steps(num_inference_steps, T)
        self.num_inference_steps = n
        arr = spaced_int_timesteps(self.config.timestep_spacing, T, n,
                                   int(self.config.steps_offset))
        self._set_schedule(torch.from_numpy(arr), device)
        self._step_index = None
        self._ready = True

    def _variance(self, t: int, prev_t: int) -> float:
        a_t = self._ac[t]
        a_prev = self._ac[prev_t] if prev_t >= 0 else self._final_ac
        return (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             eta: float = 0.0, use_clipped_model_output: bool = False,
             generator: Optional[torch.Generator] = None,
             variance_noise: Optional[torch.Tensor] = None, return_dict: bool = True
             ) -> Union[SchedulerOutput, tuple]:
        """One DDIM step from ``timestep`` to ``timestep - T // num_inference_steps``; returns
        ``prev_sample`` and ``pred_original_sample`` (an output object, or a tuple with
        ``return_dict=False``). ``eta`` scales the injected noise (0: deterministic DDIM, 1:
        DDPM-like); ``use_clipped_model_output`` re-derives ε̂ from the clipped x̂0."""
        if self.num_inference_steps is None or not self._ready:
            raise ValueError("DDIMScheduler.step: call set_timesteps(...) first")
        self._check_inputs(model_output, sample)
        if not (type(eta) is float and eta - eta == 0.0) and (
                isinstance(eta, bool) or not isinstance(eta, numbers.Real)
                or not math.isfinite(eta)):
            raise ValueError(f"DDIMScheduler.step: eta must be a finite number, got {eta!r}")
        c = self.config
        self._sync_host_schedule()
        t = self._timestep_value(timestep)
        self._step_index = self._indices_of(t)[0] + 1   # bookkeeping only (benchmarks rewind it)
        t = int(t)
        prev_t = t - int(c.num_train_timesteps) // self.num_inference_steps
        a_t = self._ac[t]
        a_prev = self._ac[prev_t] if prev_t >= 0 else self._final_ac
        b_t = 1.0 - a_t
        px, pm = vp_prologue(c.prediction_type, a_t, "DDIMScheduler.step")
        sa, sb = math.sqrt(a_t), math.sqrt(b_t)
        # ε̂ = e_x·x + e_m·m + e_0·x̂0
        if use_clipped_model_output:
            e_x, e_m, e_0 = 1.0 / sb, 0.0, -sa / sb
        elif c.prediction_type == "epsilon":
            e_x, e_m, e_0 = 0.0, 1.0, 0.0
        elif c.prediction_type == "sample":
            e_x, e_m, e_0 = 1.0 / sb, -sa / sb, 0.0
        else:  # v_prediction
            e_x, e_m, e_0 = sb, sa, 0.0
        std = eta * math.sqrt(self._variance(t, prev_t)) if eta != 0.0 else 0.0
        d2 = 1.0 - a_prev - std * std
        if d2 < 0.0:
            if d2 < -1e-12:
                raise ValueError(f"DDIMScheduler.step: eta={eta} is too large for this step "
                                 f"(1 - alpha_prev - std² = {d2:.3g} < 0)")
            d2 = 0.0
        direction = math.sqrt(d2)
        noise = None
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("DDIMScheduler.step: pass generator or variance_noise, not "
                                 "both")
            if variance_noise is None:
                noise = randn_tensor(model_output.shape, generator=generator,
                                     device=model_output.device, dtype=model_output.dtype)
            else:
                noise = self._explicit_noise(variance_noise, sample, "variance_noise")
        c_noise = std if noise is not None else 0.0
        if c.thresholding:
            # the thresholded x̂0 enters as a history tensor; ε̂ still reads the model output
            x0 = self._thresholded_x0(sample, model_output, px, pm)
            out, _ = fused_step(sample, model_output, c_sample=direction * e_x,
                                c_model=direction * e_m, history=[x0],
                                c_history=[math.sqrt(a_prev) + direction * e_0], noise=noise,
                                c_noise=c_noise, want_x0="no")
            out = SchedulerOutput(out.prev_sample, x0)
        else:
            out, _ = fused_step(sample, model_output, c_sample=direction * e_x,
                                c_x0=math.sqrt(a_prev) + direction * e_0,
                                c_model=direction * e_m, noise=noise, c_noise=c_noise,
                                x0_sample=px, x0_model=pm, clip_x0=self._clip_range(),
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

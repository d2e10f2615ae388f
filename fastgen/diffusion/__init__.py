"""Diffusers-compatible schedulers whose step is one fused kernel.

    from fastgen.diffusion import DPMSolverMultistepScheduler
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

Each class mirrors the diffusers (0.42.1) scheduler of the same name: the same config keys and
defaults, ``from_config`` (a dict or any diffusers scheduler's ``.config``), ``set_timesteps``,
``timesteps`` / ``sigmas`` / ``init_noise_sigma`` / ``order``, ``scale_model_input``, ``step``
and ``add_noise``, with the same schedules and, for a seeded generator, the same noise. diffusers
is not needed at run time.

Differences from diffusers:

* the tables stay on the CPU and each step's coefficients are computed on the host in float64;
  the tensor math is one call of :func:`fastgen.ops.sampler_step` (computed in float32, float64
  for float64 samples, whatever the storage dtype; no half-precision products);
* no device synchronisation in ``step``: a timestep that is an element of
  ``scheduler.timesteps`` (how pipelines iterate) is identified without reading the device.
  Only a stray device tensor is copied to the host: by DDPM/DDIM (which index their tables by
  the timestep's value) and by the others on their first step unless ``set_begin_index`` was
  called (diffusers syncs there too);
* ``pred_original_sample`` is computed when first read (the step itself writes one tensor);
* stricter input checks: ``step`` before ``set_timesteps``, a timestep not in the schedule
  (diffusers' DPM-Solver silently takes the last step, its DDIM any table index), and
  model_output / sample shape or dtype mismatches raise; Python numbers name timesteps by value
  (diffusers' Euler and flow schedulers refuse ints);
* config values a class does not implement (the deprecated DPM-Solver variants, DDPM's
  fixed_large_log, whose diffusers step is NaN, unknown keys) raise ValueError instead of
  running differently; so does a step past the end of the schedule (diffusers: IndexError);
* DPM-Solver's zero-length steps (a last timestep of 0 with final_sigmas_type="sigma_min", as
  karras, lu, exponential or beta sigmas give) and steps after a repeated noise level take the
  lower-order update, whose limit is exact (the sample, for a zero-length step), where diffusers'
  heun and third-order updates give NaN or inf.
"""

from ._base import FrozenConfig, SchedulerOutput, UnknownConfigKeyError, randn_tensor
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpmsolver import DPMSolverMultistepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .flow_match import FlowMatchEulerDiscreteScheduler
from .heun import HeunDiscreteScheduler

__all__ = ["DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler",
           "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
           "DPMSolverMultistepScheduler", "FlowMatchEulerDiscreteScheduler", "SchedulerOutput",
           "FrozenConfig", "UnknownConfigKeyError", "randn_tensor", "SCHEDULERS"]

SCHEDULERS = (DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler,
              EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
              DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler)
"""Every scheduler class of this package."""

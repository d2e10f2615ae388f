"""DPM-Solver++ (Lu et al., 2022), multistep, first to third order, ODE or SDE variant."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ._base import (SchedulerBase, SchedulerOutput, StepIndexMixin, _bcast, fused_step,
                    randn_tensor, register_config, sigma_to_t, spaced_sigmas)

__all__ = ["DPMSolverMultistepScheduler"]


class DPMSolverMultistepScheduler(StepIndexMixin, SchedulerBase):
    """DPM-Solver++ multistep sampling, a drop-in for ``diffusers.DPMSolverMultistepScheduler``
    (0.42.1) with ``algorithm_type`` "dpmsolver++" (DPM++ 2M; "DPM++ 2M Karras" with
    ``use_karras_sigmas=True``) or "sde-dpmsolver++" (DPM++ 2M SDE), ``solver_order`` 1, 2
    or 3 (DPM++ 3M, 3M SDE).

    The sample stays in VP scale (``init_noise_sigma = 1``). Each step is one fused
    :func:`fastgen.ops.sampler_step` call: the model output becomes x̂0 = D0 in the prologue, the
    previous step's x̂0 is the history tensor, and the second-order term
    ``D1 = (D0 − D_prev)/r0`` is folded into the coefficients of x̂0 and the history (third
    order: D1 and D2 from the previous two x̂0s, two history tensors). The SDE
    variant's noise is ``variance_noise`` when given, else drawn like diffusers (float32, from
    ``generator``).

    Supported: beta_schedule linear, scaled_linear, squaredcos_cap_v2 (or trained_betas);
    prediction_type epsilon, sample, v_prediction, flow_prediction; solver_type midpoint, heun;
    lower_order_final; euler_at_final; use_karras_sigmas; use_exponential_sigmas;
    use_beta_sigmas (needs scipy); use_lu_lambdas; use_flow_sigmas with
    flow_shift; final_sigmas_type zero, sigma_min; lambda_min_clipped; timestep_spacing
    linspace, leading, trailing; rescale_betas_zero_snr; custom ``timesteps``. As in diffusers,
    algorithm_type "deis" reads as "dpmsolver++" and solver_type logrho / bh1 / bh2 as
    "midpoint"; thresholding (x̂0 thresholded with torch ops before the step); variance_type
    learned / learned_range (a model output with twice the sample's channels loses its second
    half). Not
    supported (ValueError): algorithm_type dpmsolver / sde-dpmsolver, use_dynamic_shifting.
    """

    order = 1

    @register_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001,
                 beta_end: float = 0.02, beta_schedule: str = "linear",
                 trained_betas: Optional[Union[np.ndarray, Sequence[float]]] = None,
                 solver_order: int = 2, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 sample_max_value: float = 1.0, algorithm_type: str = "dpmsolver++",
                 solver_type: str = "midpoint", lower_order_final: bool = True,
                 euler_at_final: bool = False, use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False,
                 use_lu_lambdas: bool = False, use_flow_sigmas: bool = False,
                 flow_shift: float = 1.0, final_sigmas_type: str = "zero",
                 lambda_min_clipped: float = -float("inf"), variance_type: Optional[str] = None,
                 timestep_spacing: str = "linspace", steps_offset: int = 0,
                 rescale_betas_zero_snr: bool = False, use_dynamic_shifting: bool = False,
                 time_shift_type: str = "exponential"):
        remap = {}
        if algorithm_type == "deis":
            remap["algorithm_type"] = "dpmsolver++"
        if solver_type in ("logrho", "bh1", "bh2"):
            remap["solver_type"] = "midpoint"
        if remap:
            from ._base import FrozenConfig
            object.__setattr__(self, "_internal_dict", FrozenConfig({**self.config, **remap}))
        self._check_choice("algorithm_type", ("dpmsolver++", "sde-dpmsolver++"),
                           "the noise-prediction variants are deprecated in diffusers")
        self._check_choice("solver_order", (1, 2, 3))
        self._check_choice("solver_type", ("midpoint", "heun"))
        self._check_choice("prediction_type", ("epsilon", "sample", "v_prediction",
                                               "flow_prediction"))
        self._check_thresholding()
        # diffusers reads only the learned variances (it drops the model output's extra channels)
        self._check_choice("variance_type", (None, "fixed_small", "fixed_small_log", "fixed_large",
                                             "fixed_large_log", "learned", "learned_range"))
        self._check_sigma_spacing()
        self._check_false("use_dynamic_shifting", "not implemented")
        self._check_choice("time_shift_type", ("exponential",))
        self._check_choice("final_sigmas_type", ("zero", "sigma_min"))
        c = self.config
        # one noise-level spacing (diffusers lets lu or flow sigmas combine with another and
        # silently uses one of them)
        spacings = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                    "use_lu_lambdas", "use_flow_sigmas")
        on = [k for k in spacings if c[k]]
        if len(on) > 1:
            raise ValueError(f"DPMSolverMultistepScheduler: use only one of "
                             f"{', '.join(spacings)}; got {', '.join(on)}")
        self._check_number("flow_shift")
        self._check_number("lambda_min_clipped")
        self._check_spacing()
        self._build_alphas_cumprod(("linear", "scaled_linear", "squaredcos_cap_v2"),
                                   zero_snr_euler=True)
        self.alpha_t = torch.sqrt(self.alphas_cumprod)
        self.sigma_t = torch.sqrt(1 - self.alphas_cumprod)
        self.lambda_t = torch.log(self.alpha_t) - torch.log(self.sigma_t)
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self._sig = self.sigmas.double().tolist()
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self._set_schedule(torch.from_numpy(np.linspace(0, num_train_timesteps - 1,
                                                        num_train_timesteps,
                                                        dtype=np.float32)[::-1].copy()))
        self.model_outputs = [None] * int(c.solver_order)
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self._ready = False

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device=None,
                      mu: Optional[float] = None,
                      timesteps: Optional[Sequence[int]] = None) -> None:
        """Choose ``num_inference_steps`` timesteps (spacing and noise levels from the config),
        or custom descending integer ``timesteps``; resets the solver history."""
        c = self.config
        name = "DPMSolverMultistepScheduler.set_timesteps"
        if mu is not None:
            raise NotImplementedError(f"{name}: mu (dynamic shifting) is not supported")
        if num_inference_steps is None and timesteps is None:
            raise ValueError(f"{name}: pass num_inference_steps or timesteps")
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError(f"{name}: pass num_inference_steps or timesteps, not both")
        if timesteps is not None:
            self._spacing_refuses_timesteps(name)
            if c.use_lu_lambdas:
                raise ValueError(f"{name}: custom timesteps cannot be used with use_lu_lambdas")
        T = int(c.num_train_timesteps)
        if timesteps is not None:
            ts = np.array(timesteps).astype(np.int64)
            if ts.size == 0:
                raise ValueError(f"{name}: timesteps is empty")
            n = len(ts)
        else:
            n = self._check_num_steps(num_inference_steps)
            clipped = torch.searchsorted(torch.flip(self.lambda_t, [0]), c.lambda_min_clipped)
            last = int((T - clipped).item())
            if c.timestep_spacing == "linspace":
                ts = (np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy()
                      .astype(np.int64))
            elif c.timestep_spacing == "leading":
                ratio = last // (n + 1)
                ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
                ts += int(c.steps_offset)
            else:
                ratio = T / n
                ts = np.arange(last, 0, -ratio).round().copy().astype(np.int64)
                ts -= 1
        table = self._full_sigmas_f32()
        log_sigmas = np.log(table)
        if c.use_karras_sigmas or c.use_exponential_sigmas or c.use_beta_sigmas:
            sig = spaced_sigmas(c, np.flip(table).copy(), n)
            ts = np.array([sigma_to_t(s, log_sigmas) for s in sig])
            # diffusers rounds the karras timesteps (not on squaredcos_cap_v2) and lets the
            # int64 cast truncate the others
            if c.use_karras_sigmas and c.beta_schedule != "squaredcos_cap_v2":
                ts = ts.round()
        elif c.use_lu_lambdas:
            lambdas = np.flip(log_sigmas.copy())
            lo, hi = lambdas[-1].item(), lambdas[0].item()
            lambdas = hi + np.linspace(0, 1, n) * (lo - hi)
            sig = np.exp(lambdas)
            ts = np.array([sigma_to_t(s, log_sigmas) for s in sig])
            if c.beta_schedule != "squaredcos_cap_v2":
                ts = ts.round()
        elif c.use_flow_sigmas:
            alphas = np.linspace(1, 1 / T, n + 1)
            sig = 1.0 - alphas
            sig = np.flip(c.flow_shift * sig / (1 + (c.flow_shift - 1) * sig))[:-1].copy()
            ts = (sig * T).copy()
        else:
            sig = np.interp(ts, np.arange(0, len(table)), table)
        if c.final_sigmas_type == "sigma_min":
            last_sigma = float(((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5)
        else:
            last_sigma = 0
        sig = np.concatenate([sig, [last_sigma]]).astype(np.float32)
        self.sigmas = torch.from_numpy(sig)
        self._sig = self.sigmas.double().tolist()
        self._set_schedule(torch.from_numpy(np.asarray(ts)).to(dtype=torch.int64), device)
        self.num_inference_steps = len(self._ts_host)
        self.model_outputs = [None] * int(c.solver_order)
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None
        self._ready = True

    def _alpha_sigma(self, sigma: float) -> tuple[float, float]:
        if self.config.use_flow_sigmas:
            return 1.0 - sigma, sigma
        a = 1.0 / (sigma * sigma + 1.0) ** 0.5
        return a, sigma * a

    @staticmethod
    def _lambda(alpha: float, sigma: float) -> float:
        return math.inf if sigma == 0.0 else math.log(alpha) - math.log(sigma)

    def scale_model_input(self, sample: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """DPM-Solver does not scale the model input: returns ``sample``."""
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: Optional[torch.Generator] = None,
             variance_noise: Optional[torch.Tensor] = None, return_dict: bool = True
             ) -> Union[SchedulerOutput, tuple]:
        """One multistep update; returns ``prev_sample`` (an output object, or ``(prev_sample,)``
        with ``return_dict=False``)."""
        if self.num_inference_steps is None or not self._ready:
            raise ValueError("DPMSolverMultistepScheduler.step: call set_timesteps(...) first")
        if (self.config.variance_type in ("learned", "learned_range")
                and self._has_variance_channels(model_output, sample)):
            # the predicted variance (the second half of the channels) is not used; diffusers
            # keeps the first 3 channels (RGB models) and only for epsilon prediction, we keep
            # the sample's channel count for every prediction type. An output with the sample's
            # own channels (the variance split off already) passes unchanged, as in diffusers.
            model_output = model_output[:, :sample.shape[1]]
        self._check_inputs(model_output, sample)
        c = self.config
        i = self._advance_to(timestep)
        n = len(self._ts_host)
        lower_final = (i == n - 1) and (c.euler_at_final or (c.lower_order_final and n < 15)
                                        or c.final_sigmas_type == "zero")
        lower_second = (i == n - 2) and c.lower_order_final and n < 15
        s0 = self._sig[i]
        a_s0, sig_s0 = self._alpha_sigma(s0)
        a_t, sig_t = self._alpha_sigma(self._sig[i + 1])
        # x̂0 = D0 from the model output at σ_s0
        pt = c.prediction_type
        if pt == "epsilon":
            px, pm = 1.0 / a_s0, -sig_s0 / a_s0
        elif pt == "v_prediction":
            px, pm = a_s0, -sig_s0
        elif pt == "flow_prediction":
            px, pm = 1.0, -s0
        else:
            px, pm = 0.0, 1.0
        sde = c.algorithm_type == "sde-dpmsolver++"
        noise = None
        if sde:
            if variance_noise is None:
                noise = randn_tensor(model_output.shape, generator=generator,
                                     device=model_output.device, dtype=torch.float32)
            else:
                noise = self._explicit_noise(variance_noise, sample, "variance_noise")
            noise = noise.to(sample.dtype)
        lam_t, lam_s0 = self._lambda(a_t, sig_t), self._lambda(a_s0, sig_s0)
        h = lam_t - lam_s0
        if math.isinf(h):
            em1, em2, e1 = -1.0, -1.0, 0.0    # e^{-h} - 1, e^{-2h} - 1, e^{-h}
        else:
            em1, em2, e1 = math.expm1(-h), math.expm1(-2.0 * h), math.exp(-h)
        ratio = sig_t / sig_s0
        if c.solver_order == 1 or self.lower_order_nums < 1 or lower_final:
            order = 1
        elif c.solver_order == 2 or self.lower_order_nums < 2 or lower_second:
            order = 2
        else:
            order = 3
        if order > 1:
            lam_s1 = self._lambda(*self._alpha_sigma(self._sig[i - 1]))
            # A zero-length step (σ_t = σ_s0: the last step of a schedule whose final sigma
            # repeats its last, e.g. karras + final_sigmas_type="sigma_min") or one after a
            # repeated noise level has no finite difference D1: the first-order update, which is
            # the higher-order one's limit (x_t = x_s0 when h = 0). diffusers divides by zero
            # there: NaN with solver_type="heun", x_s0 with "midpoint".
            if h == 0.0 or lam_s0 == lam_s1:
                order = 1
            elif order == 3:
                lam_s2 = self._lambda(*self._alpha_sigma(self._sig[i - 2]))
                if lam_s1 == lam_s2:
                    order = 2
        # x_t = c_x·x + k0·D0 + k1·D1 + k2·D2 (+ c_z·z), with D1, D2 finite differences of D0
        # and the previous x̂0s; each k is the coefficient in diffusers' update
        if not sde:
            c_x = ratio
            k0 = -a_t * em1
            c_z = 0.0
        else:
            c_x = ratio * e1
            k0 = -a_t * em2
            c_z = sig_t * math.sqrt(max(-em2, 0.0))
        # k1·D1 + k2·D2 = A·(D0 − m1) + B·(m1 − m2), m1 and m2 the previous two x̂0s
        A = B = 0.0
        if order == 2:
            r0 = (lam_s0 - lam_s1) / h  # D1 = (D0 − m1)/r0
            if not sde:
                k1 = (-0.5 * a_t * em1 if c.solver_type == "midpoint"
                      else a_t * (em1 / h + 1.0))
            else:
                k1 = (-0.5 * a_t * em2 if c.solver_type == "midpoint"
                      else a_t * (em2 / (2.0 * h) + 1.0))
            A = k1 / r0
        elif order == 3:
            # D1_0 = (D0 − m1)/r0, D1_1 = (m1 − m2)/r1, D1 = D1_0 + q·(D1_0 − D1_1),
            # D2 = w·(D1_0 − D1_1) with q = r0/(r0 + r1), w = 1/(r0 + r1)
            r0, r1 = (lam_s0 - lam_s1) / h, (lam_s1 - lam_s2) / h
            a0, a1, q, w = 1.0 / r0, 1.0 / r1, r0 / (r0 + r1), 1.0 / (r0 + r1)
            if not sde:
                k1, k2 = a_t * (em1 / h + 1.0), -a_t * ((em1 + h) / (h * h) - 0.5)
            else:
                k1 = a_t * (em2 / (2.0 * h) + 1.0)
                k2 = a_t * ((-em2 - 2.0 * h) / (4.0 * h * h) - 0.5)
            A = k1 * (1.0 + q) * a0 + k2 * w * a0
            B = -k1 * q * a1 - k2 * w * a1
        # one fused call: D0 (from the model output), m1 and m2 with the differences folded into
        # their coefficients k0 + A, B − A and −B
        prev = self.model_outputs[::-1][:order - 1]  # [], [m1] or [m1, m2]
        c_0, c_hist = k0 + A, [B - A, -B][:order - 1]
        if c.thresholding:  # D0 is the thresholded x̂0, written before the step
            x0 = self._thresholded_x0(sample, model_output, px, pm)
            out, _ = fused_step(sample, x0, c_sample=c_x, c_x0=c_0, history=prev,
                                c_history=c_hist, noise=noise, c_noise=c_z, want_x0="no")
        else:
            out, x0 = fused_step(sample, model_output, c_sample=c_x, c_x0=c_0, history=prev,
                                 c_history=c_hist, noise=noise, c_noise=c_z, x0_sample=px,
                                 x0_model=pm, want_x0="eager", has_x0=False)
        self.model_outputs = self.model_outputs[1:] + [x0]
        if self.lower_order_nums < c.solver_order:
            self.lower_order_nums += 1
        self._step_index += 1
        result = SchedulerOutput(out.prev_sample, has_x0=False)
        return result if return_dict else (result.prev_sample,)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                  timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion in VP scale: ``α_t·x0 + σ_t·noise`` at each timestep's σ."""
        sig = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        s = _bcast(sig[self._step_indices(timesteps)], original_samples.ndim)
        if self.config.use_flow_sigmas:
            a, st = 1 - s, s
        else:
            a = 1 / ((s ** 2 + 1) ** 0.5)
            st = s * a
        return a * original_samples + st * noise

"""Shared machinery of the fastgen schedulers: configuration, noise tables, timestep spacing and
lookup, noise drawing and the step output.

The schedulers keep their tables on the CPU (diffusers' float32 tables, mirrored as Python floats)
and compute each step's coefficients on the host in float64; the tensor math is one call of
:func:`fastgen.ops.sampler_step`. The tables are built with the same float32 operations as
diffusers 0.42.1, so ``timesteps`` and ``sigmas`` match diffusers' exactly.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import numbers
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..ops.randn import randn
from ..ops.sampler import StepCoeffs, sampler_step, sampler_step_unchecked

__all__ = ["FrozenConfig", "SchedulerOutput", "SchedulerBase", "UnknownConfigKeyError",
           "register_config", "randn_tensor"]

CONFIG_NAME = "scheduler_config.json"

# Config keys of diffusers' schedulers (0.42.1). ``from_config`` skips these when they are not
# keys of the target class (diffusers does the same when swapping schedulers, e.g.
# ``EulerDiscreteScheduler.from_config(pndm.config)``); any other unknown key is an error.
_DIFFUSERS_SCHEDULER_KEYS = frozenset("""
algorithm_type alpha_cum_end alpha_cum_start base_image_seq_len base_shift beta_end beta_schedule
beta_start block_length clip_denoised clip_sample clip_sample_range correct_steps corrector_k
corrector_order corrector_selection corrector_selection_tau corrector_steps disable_corrector
dynamic_thresholding_ratio editing_threshold entropy_bound eps eta euler_at_final
final_sigmas_type final_step_size_scale flow_shift gamma gamma_cum_end gamma_cum_start
interpolation_type invert_sigmas lambda_min_clipped lower_order_final mask_token_id
masking_schedule max_image_seq_len max_shift minimal_topk n_grid noise_mode num_inference_steps
num_policy_substeps num_train_timesteps num_vec_classes original_inference_steps predict_x0
prediction_type predictor_order rescale_betas_zero_snr rho s s_churn s_max s_min s_noise
sample_max_value sampling_eps scale_factors scaler schedule_mode scheduler_type set_alpha_to_one
shift shift_terminal sigma_data sigma_max sigma_min sigma_schedule skip_prk_steps snr
snr_shift_scale solver_order solver_p solver_type stage_range stages steps_offset
stochastic_sampling t_lim_ode t_lim_ode_below t_max t_min tail_step_multiplier tail_steps
tau_func threshold thresholding time_shift_type timestep_scaling timestep_spacing timestep_type
trained_betas tsr_k tsr_sigma upscale_mode use_beta_sigmas use_dynamic_shifting
use_exponential_sigmas use_flow_sigmas use_karras_sigmas use_lu_lambdas variance_type
""".split())


class UnknownConfigKeyError(ValueError, TypeError):
    """A config key the scheduler does not have (a ValueError; also a TypeError, as Python raises
    for an unexpected keyword argument)."""


class FrozenConfig(dict):
    """A scheduler's configuration: a read-only dict whose keys are also attributes
    (``config.num_train_timesteps``), like diffusers' ``FrozenDict``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The dict is also the attribute dict: ``config.key`` is then an ordinary attribute
        # lookup (0.05 µs) instead of a failed one followed by __getattr__ (0.5 µs), on the
        # schedulers' per-step paths. (A key named like a dict method would shadow the method
        # on attribute access, as in diffusers' FrozenDict; no scheduler has one. The config
        # refers to itself: it is freed by the cyclic garbage collector.)
        object.__setattr__(self, "__dict__", self)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"the scheduler config has no key {name!r}") from None

    def __setattr__(self, name, value):
        raise TypeError("a scheduler config is read-only; build a new scheduler with "
                        "Scheduler.from_config(config, key=value)")

    def _read_only(self, *args, **kwargs):
        """Refused: the config is read-only."""
        raise TypeError("a scheduler config is read-only; build a new scheduler with "
                        "Scheduler.from_config(config, key=value)")

    __setitem__ = __delitem__ = setdefault = pop = popitem = update = clear = _read_only
    __ior__ = _read_only

    def __reduce__(self):
        return (FrozenConfig, (dict(self),))

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return FrozenConfig(dict(self))


def register_config(init: Callable) -> Callable:
    """Decorator for a scheduler's ``__init__``: records every argument (defaults included) in
    ``self.config`` before the body runs, and the names left at their defaults in
    ``_use_default_values`` (as diffusers does, so that ``from_config`` across classes keeps the
    target's own defaults for them). An unknown keyword raises :class:`UnknownConfigKeyError`."""
    sig = inspect.signature(init)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    names = tuple(p.name for p in params)
    defaults = {p.name: p.default for p in params}

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        cls = type(self).__name__
        unknown = [k for k in kwargs if k not in defaults]
        if unknown:
            raise UnknownConfigKeyError(
                f"{cls}: unknown config key(s) {', '.join(map(repr, unknown))}; the keys are "
                f"{', '.join(names)}")
        if len(args) > len(names):
            raise TypeError(f"{cls}() takes at most {len(names)} positional arguments")
        given = dict(zip(names, args))
        both = set(given) & set(kwargs)
        if both:
            raise TypeError(f"{cls}() got multiple values for {', '.join(sorted(both))}")
        given.update(kwargs)
        values = {**defaults, **given}
        values["_use_default_values"] = [k for k in names if k not in given]
        object.__setattr__(self, "_internal_dict", FrozenConfig(values))
        init(self, *args, **kwargs)

    wrapper._config_names = names
    wrapper._config_defaults = defaults
    return wrapper


class SchedulerOutput:
    """What ``step()`` returns: ``prev_sample`` (the sample at the next, less noisy timestep)
    and, for the schedulers whose diffusers counterpart reports it, ``pred_original_sample``
    (the predicted clean sample x̂0).

    ``pred_original_sample`` is computed on first access, from the step's inputs, by one more
    fused call (the step itself writes only ``prev_sample``); read it before modifying the
    step's ``sample`` or ``model_output`` in place (reading it after raises a RuntimeError
    rather than returning a wrong value). Indexing and :meth:`to_tuple` follow
    diffusers' ``BaseOutput``: ``out[0]`` is ``prev_sample``.
    """

    __slots__ = ("prev_sample", "_x0", "_x0_fn", "_has_x0")

    def __init__(self, prev_sample: torch.Tensor,
                 pred_original_sample: Optional[torch.Tensor] = None, *,
                 x0_fn: Optional[Callable[[], torch.Tensor]] = None, has_x0: bool = True):
        self.prev_sample = prev_sample
        self._x0 = pred_original_sample
        self._x0_fn = x0_fn
        self._has_x0 = has_x0

    @property
    def pred_original_sample(self) -> Optional[torch.Tensor]:
        """The predicted clean sample x̂0 (after clipping), or None for schedulers that do not
        report it (DPM-Solver, flow matching)."""
        if self._x0 is None and self._x0_fn is not None:
            self._x0, self._x0_fn = self._x0_fn(), None
        return self._x0

    def keys(self) -> list[str]:
        """The field names, in order."""
        return ["prev_sample", "pred_original_sample"] if self._has_x0 else ["prev_sample"]

    def to_tuple(self) -> tuple:
        """(prev_sample, pred_original_sample), or (prev_sample,) without x̂0."""
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        shape = list(self.prev_sample.shape)
        return f"SchedulerOutput(prev_sample=<{shape} {self.prev_sample.dtype}>, ...)"


def randn_tensor(shape: Sequence[int], generator=None, device=None,
                 dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Standard normal noise drawn exactly as ``diffusers.utils.torch_utils.randn_tensor``: a CPU
    generator with a tensor on another device draws on the CPU and copies; a list of generators
    draws one batch row each (a one-element list counts as its generator); a CUDA generator for
    a tensor on another device is an error. CPU draws use :func:`fastgen.ops.randn` (the same
    numbers as ``torch.randn``, faster)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    rand_device = device
    if device.type == "neuron":
        rand_device = torch.device("cpu")
    if generator is not None:
        first = generator[0] if isinstance(generator, (list, tuple)) else generator
        gen_type = first.device.type
        if gen_type != device.type and gen_type == "cpu":
            rand_device = torch.device("cpu")
        elif gen_type != device.type and gen_type == "cuda":
            raise ValueError(f"cannot generate a {device} tensor from a generator on {gen_type}")
    if isinstance(generator, (list, tuple)) and len(generator) == 1:
        generator = generator[0]
    shape = tuple(shape)
    if isinstance(generator, (list, tuple)):
        if len(generator) < shape[0]:
            raise ValueError(f"a list of generators needs one per batch row: got "
                             f"{len(generator)} for batch {shape[0]}")
        row = (1,) + shape[1:]
        parts = [randn(row, generator=generator[i], device=rand_device, dtype=dtype)
                 for i in range(shape[0])]
        return torch.cat(parts, dim=0).to(device)
    return randn(shape, generator=generator, device=rand_device, dtype=dtype).to(device)


# --- noise tables ------------------------------------------------------------------------------

def _alpha_bar_betas(num_steps: int, kind: str = "cosine", max_beta: float = 0.999):
    """Betas that discretise a continuous alpha-bar curve (float32, as diffusers)."""
    if kind == "cosine":
        def f(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    elif kind == "exp":
        def f(t):
            return math.exp(t * -12.0)
    else:  # laplace
        def f(t):
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))
    betas = [min(1 - f((i + 1) / num_steps) / f(i / num_steps), max_beta)
             for i in range(num_steps)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float,
               trained_betas) -> torch.Tensor:
    """The float32 betas of a named schedule (or ``trained_betas`` when given)."""
    T = num_train_timesteps
    if trained_betas is not None:
        return torch.tensor(np.asarray(trained_betas, dtype=np.float64).tolist(),
                            dtype=torch.float32)
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T, dtype=torch.float32) ** 2
    if schedule == "squaredcos_cap_v2":
        return _alpha_bar_betas(T, "cosine")
    if schedule == "exp":
        return _alpha_bar_betas(T, "exp")
    if schedule == "laplace":
        return _alpha_bar_betas(T, "laplace")
    if schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"unknown beta_schedule {schedule!r}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas rescaled to zero terminal SNR (arXiv 2305.08891, Algorithm 1), in float32."""
    abar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = abar_sqrt[0].clone(), abar_sqrt[-1].clone()
    abar_sqrt = (abar_sqrt - last) * (first / (first - last))
    abar = abar_sqrt ** 2
    alphas = torch.cat([abar[0:1], abar[1:] / abar[:-1]])
    return 1 - alphas


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) noise levels: n values from sigma_max down to sigma_min."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


SIGMA_SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def spaced_sigmas(config, sig: np.ndarray, n: int) -> Optional[np.ndarray]:
    """n noise levels spaced as the config's use_karras_sigmas (Karras et al. 2022),
    use_exponential_sigmas (even in log σ) or use_beta_sigmas (the Beta(0.6, 0.6) inverse CDF of
    Lee et al. 2024, through scipy as in diffusers) say, from σ_max = sig[0] down to
    σ_min = sig[-1] (the config's sigma_max / sigma_min where it has them); None when none
    is set."""
    lo, hi = config.get("sigma_min"), config.get("sigma_max")
    lo = sig[-1].item() if lo is None else lo
    hi = sig[0].item() if hi is None else hi
    if config.get("use_karras_sigmas"):
        return karras_sigmas(lo, hi, n)
    if config.get("use_exponential_sigmas"):
        if not (lo > 0 and hi > 0):
            raise ValueError(f"use_exponential_sigmas needs sigma_min and sigma_max > 0, got "
                             f"{lo!r} and {hi!r}")
        return np.exp(np.linspace(math.log(hi), math.log(lo), n))
    if config.get("use_beta_sigmas"):
        from scipy.stats import beta

        ppf = [beta.ppf(q, 0.6, 0.6) for q in 1 - np.linspace(0, 1, n)]
        return np.array([lo + p * (hi - lo) for p in ppf])
    return None


def sigma_to_t(sigma, log_sigmas: np.ndarray) -> np.ndarray:
    """The (fractional) training timestep of a noise level, by interpolation in log sigma."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum((dists >= 0), axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    lo, hi = log_sigmas[low], log_sigmas[high]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return ((1 - w) * low + w * high).reshape(np.shape(sigma))


def f32(x: float) -> float:
    """x rounded to float32 (the precision of diffusers' tables)."""
    return float(np.float32(x))


def _choices(values) -> str:
    return ", ".join(repr(v) for v in values)


# --- the scheduler base ------------------------------------------------------------------------

class SchedulerBase:
    """Configuration, timestep lookup and input checks shared by the fastgen schedulers.

    Subclasses declare ``__init__`` with :func:`register_config` (diffusers' config keys and
    defaults), validate the config with the ``_check_*`` helpers and build their tables.
    """

    order = 1
    _compatibles: list = []
    _ready = False
    _step_index: Optional[int] = None
    timesteps: torch.Tensor

    # --- config --------------------------------------------------------------------------------
    @property
    def config(self) -> FrozenConfig:
        """Every config key with its value (read-only), plus ``_use_default_values``."""
        return self._internal_dict

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """The names of this class's config keys (its ``__init__`` arguments)."""
        return cls.__init__._config_names

    @classmethod
    def from_config(cls, config: Optional[Mapping] = None, return_unused_kwargs: bool = False,
                    **kwargs):
        """Build a scheduler from a config: a dict, a fastgen config, or a diffusers scheduler's
        ``.config`` (possibly of another scheduler class), with ``kwargs`` overriding keys.

        Keys starting with ``_`` are ignored, and so are the keys listed in the config's
        ``_use_default_values`` (they take this class's defaults, as in diffusers). Keys of other
        diffusers schedulers that this class lacks do not reach ``__init__`` but are kept in the
        new config (as diffusers does, so that converting back is lossless; returned as unused
        with ``return_unused_kwargs``); any other unknown key raises
        :class:`UnknownConfigKeyError`.
        """
        if config is None:
            config = {}
        if not isinstance(config, Mapping) and isinstance(getattr(config, "config", None),
                                                          Mapping):
            config = config.config
        if not isinstance(config, Mapping):
            raise TypeError(f"{cls.__name__}.from_config: config must be a dict (or a "
                            f"scheduler's .config), got {type(config).__name__}")
        own = set(cls.config_keys())
        defaulted = set(config.get("_use_default_values", None) or ())
        init, unused, unknown = {}, {}, []
        for k, v in config.items():
            if not isinstance(k, str) or k.startswith("_") or k in defaulted:
                continue
            if k in own:
                init[k] = v
            elif k in _DIFFUSERS_SCHEDULER_KEYS:
                unused[k] = v
            else:
                unknown.append(k)
        for k, v in kwargs.items():
            if k in own:
                init[k] = v
            else:
                unknown.append(k)
        if unknown:
            raise UnknownConfigKeyError(
                f"{cls.__name__}.from_config: unknown config key(s) "
                f"{', '.join(map(repr, unknown))}; the keys are {', '.join(cls.config_keys())}")
        obj = cls(**init)
        if unused:  # kept in the config (as diffusers does) so that it converts back losslessly
            object.__setattr__(obj, "_internal_dict", FrozenConfig({**obj.config, **unused}))
        return (obj, unused) if return_unused_kwargs else obj

    def save_config(self, save_directory: str, **kwargs) -> str:
        """Write the config as ``scheduler_config.json`` in save_directory (diffusers' layout,
        readable by diffusers' ``from_pretrained``); returns the file path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        with open(path, "w") as f:
            f.write(self.to_json_string())
        return path

    @classmethod
    def from_pretrained(cls, path: str, subfolder: Optional[str] = None, **kwargs):
        """Load a scheduler from a local ``scheduler_config.json`` (a file, or a folder holding
        one, optionally in ``subfolder``); ``kwargs`` override keys. Never downloads."""
        if os.path.isdir(path):
            path = os.path.join(path, subfolder or "", CONFIG_NAME)
        with open(path) as f:
            config = json.load(f)
        return cls.from_config(config, **kwargs)

    def to_json_string(self) -> str:
        """The config as diffusers writes it (with ``_class_name``)."""
        def plain(v):  # arrays as lists; ±inf is written as Infinity, as diffusers does
            return v.tolist() if isinstance(v, (np.ndarray, torch.Tensor)) else v
        d = {"_class_name": type(self).__name__}
        d.update({k: plain(v) for k, v in self.config.items() if k != "_use_default_values"})
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)

    # --- config checks -------------------------------------------------------------------------
    def _fail(self, key: str, value, supported, why: str = "") -> None:
        raise ValueError(f"{type(self).__name__}: {key}={value!r} is not supported"
                         f"{' (' + why + ')' if why else ''}; supported: {_choices(supported)}")

    def _check_choice(self, key: str, supported, why: str = "") -> None:
        value = self.config[key]
        if value not in supported:
            self._fail(key, value, supported, why)

    def _check_false(self, key: str, why: str = "") -> None:
        if self.config[key]:
            self._fail(key, self.config[key], [False], why)

    def _sigma_spacings_on(self) -> list[str]:
        return [k for k in SIGMA_SPACINGS if self.config.get(k)]

    def _check_sigma_spacing(self) -> None:
        """At most one of use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas, and
        scipy present for the beta spacing (as diffusers)."""
        on = self._sigma_spacings_on()
        if len(on) > 1:
            raise ValueError(f"{type(self).__name__}: use only one of "
                             f"{', '.join(SIGMA_SPACINGS)}; got {', '.join(on)}")
        if on == ["use_beta_sigmas"]:
            import importlib.util

            if importlib.util.find_spec("scipy") is None:
                raise ImportError(f"{type(self).__name__}: use_beta_sigmas needs scipy (its Beta "
                                  f"inverse CDF): pip install scipy")

    def _spacing_refuses_timesteps(self, name: str) -> None:
        """diffusers' rule: custom timesteps do not combine with a sigma spacing."""
        on = self._sigma_spacings_on()
        if on:
            raise ValueError(f"{name}: custom timesteps cannot be used with {on[0]}")

    def _check_int(self, key: str, minimum: int) -> int:
        v = self.config[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            raise ValueError(f"{type(self).__name__}: {key} must be an integer >= {minimum}, "
                             f"got {v!r}")
        return int(v)

    def _check_number(self, key: str, allow_none: bool = False) -> None:
        v = self.config[key]
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
            raise ValueError(f"{type(self).__name__}: {key} must be a number, got {v!r}")

    def _clip_range(self) -> Optional[float]:
        """The x̂0 clip for clip_sample / clip_sample_range (checked in __init__): None when
        clipping is off or the range is infinite (as a clamp to ±inf would be)."""
        c = self.config
        if not c.clip_sample or math.isinf(c.clip_sample_range):
            return None
        return float(c.clip_sample_range)

    def _check_thresholding(self) -> None:
        """With thresholding on: dynamic_thresholding_ratio in [0, 1] (torch.quantile's domain)
        and sample_max_value > 0 (diffusers checks neither)."""
        c = self.config
        if not c.thresholding:
            return
        self._check_number("dynamic_thresholding_ratio")
        self._check_number("sample_max_value")
        if not 0.0 <= c.dynamic_thresholding_ratio <= 1.0:
            raise ValueError(f"{type(self).__name__}: dynamic_thresholding_ratio must be in "
                             f"[0, 1], got {c.dynamic_thresholding_ratio!r}")
        if not c.sample_max_value > 0.0:
            raise ValueError(f"{type(self).__name__}: sample_max_value must be > 0, got "
                             f"{c.sample_max_value!r}")

    def _thresholded_x0(self, sample: torch.Tensor, model_output: torch.Tensor, px: float,
                        pm: float) -> torch.Tensor:
        """x̂0 = px·sample + pm·model_output after dynamic thresholding (Saharia et al., 2022,
        as diffusers' thresholding=True): per batch item, s is the dynamic_thresholding_ratio
        quantile of |x̂0| clamped to [1, sample_max_value], and x̂0 is clamped to [−s, s] and
        divided by s. The quantile needs the whole x̂0 first, so this path writes x̂0, thresholds
        it with torch ops (on the device, no host synchronisation) and then steps: several
        passes instead of one."""
        if sample.ndim < 2:
            raise ValueError(f"{type(self).__name__}.step: thresholding needs a batched sample "
                             f"(batch, channels, ...), got shape {tuple(sample.shape)}")
        c = self.config
        x0 = sampler_step(sample, model_output, c_x0=1.0, x0_sample=px, x0_model=pm)
        if x0.numel() == 0:  # an empty batch (reshape(0, -1) is ambiguous; nothing to scale)
            return x0
        dtype, shape = x0.dtype, x0.shape
        flat = x0.reshape(shape[0], -1)
        if dtype not in (torch.float32, torch.float64):
            flat = flat.float()  # as diffusers: the quantile in float32
        s = torch.quantile(flat.abs(), float(c.dynamic_thresholding_ratio), dim=1)
        s = s.clamp(min=1.0, max=float(c.sample_max_value)).unsqueeze(1)
        return (torch.clamp(flat, -s, s) / s).reshape(shape).to(dtype)

    def _check_clip_range(self) -> None:
        self._check_number("clip_sample_range")
        if self.config["clip_sample_range"] < 0:
            raise ValueError(f"{type(self).__name__}: clip_sample_range must be >= 0, got "
                             f"{self.config['clip_sample_range']!r}")

    def _build_alphas_cumprod(self, beta_schedules: Sequence[str],
                              zero_snr_euler: bool = False) -> None:
        """betas / alphas / alphas_cumprod (float32 CPU tensors, as diffusers) from the config,
        and ``_ac``, the cumulative products as Python floats."""
        c = self.config
        T = self._check_int("num_train_timesteps", 1)
        self._check_number("beta_start")
        self._check_number("beta_end")
        if c.trained_betas is None:
            self._check_choice("beta_schedule", beta_schedules)
        elif len(c.trained_betas) != T:
            raise ValueError(f"{type(self).__name__}: trained_betas has {len(c.trained_betas)} "
                             f"values but num_train_timesteps is {T}")
        self.betas = make_betas(c.beta_schedule, T, c.beta_start, c.beta_end, c.trained_betas)
        if c.get("rescale_betas_zero_snr", False):
            self.betas = rescale_zero_terminal_snr(self.betas)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if zero_snr_euler and c.get("rescale_betas_zero_snr", False):
            self.alphas_cumprod[-1] = 2 ** -24
        self._ac = self.alphas_cumprod.double().tolist()

    def _full_sigmas_f32(self) -> np.ndarray:
        """sqrt((1 - a) / a) over the training timesteps, float32, ascending in t."""
        return (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).numpy()

    def _check_spacing(self) -> None:
        self._check_choice("timestep_spacing", ("linspace", "leading", "trailing"))
        self._check_int("steps_offset", 0)

    def _check_num_steps(self, n, limit: Optional[int] = None) -> int:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"{type(self).__name__}.set_timesteps: num_inference_steps must be "
                             f"a positive integer, got {n!r}")
        if limit is not None and n > limit:
            raise ValueError(f"{type(self).__name__}.set_timesteps: num_inference_steps={n} "
                             f"cannot exceed num_train_timesteps={limit}")
        return int(n)

    # --- the schedule and timestep lookup ------------------------------------------------------
    def _set_schedule(self, timesteps: torch.Tensor, device=None) -> None:
        """Install ``timesteps`` (a CPU tensor) on ``device`` and its host mirror."""
        self._ts_host = [float(v) for v in timesteps.tolist()]
        index: dict[float, list[int]] = {}
        for i, v in enumerate(self._ts_host):
            index.setdefault(self._key(v), []).append(i)
        self._ts_index = index
        self.timesteps = timesteps.to(device) if device is not None else timesteps
        self._ts_ref = self.timesteps

    def _key(self, value: float) -> float:
        # torch compares a schedule with a scalar in the schedule's dtype (float32 for float
        # schedules, float32 too for an int schedule against a fractional value).
        return f32(value)

    def _sync_host_schedule(self) -> None:
        """Refresh the host mirror if ``self.timesteps`` was replaced from outside."""
        if self.timesteps is not self._ts_ref:
            ts = self.timesteps
            self._set_schedule(ts.detach().cpu(), None)
            self.timesteps = ts
            self._ts_ref = ts

    def _timestep_value(self, timestep, required: bool = True) -> Optional[float]:
        """The timestep's value on the host. A device tensor is read without synchronising when
        it is an element of ``self.timesteps`` (how pipelines iterate); otherwise it is copied to
        the host when ``required``, else None is returned."""
        if type(timestep) is torch.Tensor and timestep.device.type == "cpu":
            try:  # the common case, checked after the fact: 0.7 µs instead of 1.9
                v = timestep.item()
            except RuntimeError:  # not one element: reported below
                v = None
            if type(v) is float or type(v) is int:  # not bool, not complex
                return float(v)
        name = type(self).__name__
        if isinstance(timestep, torch.Tensor):
            if timestep.numel() != 1:
                raise ValueError(f"{name}: timestep must be a scalar (a number, a 0-dim or a "
                                 f"1-element tensor), got a tensor of shape "
                                 f"{list(timestep.shape)}")
            if timestep.is_complex() or timestep.dtype == torch.bool:
                raise TypeError(f"{name}: timestep must be real, got {timestep.dtype}")
            if timestep.device.type == "cpu":
                return float(timestep.item())
            ts = self.timesteps
            if (isinstance(ts, torch.Tensor) and ts is self._ts_ref and ts.ndim == 1
                    and ts.device == timestep.device and ts.dtype == timestep.dtype
                    and ts.numel() > 0 and ts.stride(0) > 0):
                same = timestep.untyped_storage().data_ptr() == ts.untyped_storage().data_ptr()
                off = timestep.storage_offset() - ts.storage_offset()
                if same and off % ts.stride(0) == 0 and 0 <= off // ts.stride(0) < ts.numel():
                    return self._ts_host[off // ts.stride(0)]
            if not required:
                return None
            return float(timestep.item())  # one device-to-host copy
        if isinstance(timestep, bool) or not isinstance(timestep, numbers.Real):
            raise TypeError(f"{name}: timestep must be a number or a tensor, got "
                            f"{type(timestep).__name__}")
        return float(timestep)

    def _indices_of(self, value: float) -> list[int]:
        # A value taken from the schedule is its own key (keys are float32 values): try it as
        # it is before rounding it.
        idx = self._ts_index.get(value) or self._ts_index.get(self._key(value))
        if not idx:
            shown = ", ".join(f"{v:g}" for v in self._ts_host[:6])
            more = ", ..." if len(self._ts_host) > 6 else ""
            raise ValueError(f"{type(self).__name__}: timestep {value:g} is not in the schedule "
                             f"[{shown}{more}]; pass one of scheduler.timesteps")
        return idx

    def _require_ready(self, what: str = "step") -> None:
        if not self._ready:
            raise ValueError(f"{type(self).__name__}.{what}: call set_timesteps(...) first")

    @staticmethod
    def _has_variance_channels(model_output, sample) -> bool:
        """The model output carries twice the sample's channels (dim 1): a predicted variance
        in the second half (variance_type learned / learned_range)."""
        return (isinstance(model_output, torch.Tensor) and isinstance(sample, torch.Tensor)
                and model_output.ndim >= 2 and model_output.ndim == sample.ndim
                and model_output.shape[1] == 2 * sample.shape[1])

    def _split_learned_variance(self, model_output, sample):
        """variance_type learned / learned_range: a model output with twice the sample's
        channels (dim 1) splits into the prediction and the predicted variance, as diffusers
        does; any other shape raises (diffusers fails later, on None)."""
        if self._has_variance_channels(model_output, sample):
            pred, var = torch.split(model_output, sample.shape[1], dim=1)
            return pred, var
        raise ValueError(f"{type(self).__name__}.step: variance_type="
                         f"{self.config.variance_type!r} needs a model_output with twice the "
                         f"sample's channels (the predicted variance in the second half), got "
                         f"model_output {tuple(getattr(model_output, 'shape', ()))} for sample "
                         f"{tuple(getattr(sample, 'shape', ()))}")

    def _check_inputs(self, model_output, sample) -> None:
        if (type(sample) is torch.Tensor and type(model_output) is torch.Tensor
                and sample.dtype in _STEP_DTYPES and model_output.dtype == sample.dtype
                and model_output.shape == sample.shape
                and (sample.is_cpu and model_output.is_cpu
                     or model_output.device == sample.device)):
            return  # the common case, in half the time of the checks below
        name = type(self).__name__
        for arg, t in (("model_output", model_output), ("sample", sample)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}.step: {arg} must be a torch.Tensor, got "
                                f"{type(t).__name__}")
        if sample.dtype not in _STEP_DTYPES:
            raise TypeError(f"{name}.step: sample must be float16, bfloat16, float32 or float64, "
                            f"got {sample.dtype}")
        if model_output.shape != sample.shape:
            raise ValueError(f"{name}.step: model_output has shape {list(model_output.shape)} "
                             f"but sample has {list(sample.shape)}; they must match")
        if model_output.dtype != sample.dtype:
            raise TypeError(f"{name}.step: model_output is {model_output.dtype} but sample is "
                            f"{sample.dtype}; they must match")
        if model_output.device != sample.device:
            raise ValueError(f"{name}.step: model_output is on {model_output.device} but sample "
                             f"on {sample.device}")

    def _explicit_noise(self, noise, sample: torch.Tensor, arg: str) -> torch.Tensor:
        name = type(self).__name__
        if not isinstance(noise, torch.Tensor):
            raise TypeError(f"{name}.step: {arg} must be a torch.Tensor, got "
                            f"{type(noise).__name__}")
        if noise.shape != sample.shape:
            raise ValueError(f"{name}.step: {arg} has shape {list(noise.shape)} but sample has "
                             f"{list(sample.shape)}; they must match")
        return noise.to(device=sample.device, dtype=sample.dtype)


class StepIndexMixin:
    """The step counter of the sigma-indexed schedulers (diffusers' ``step_index`` /
    ``begin_index``): the timestep is looked up once, on the first ``scale_model_input`` or
    ``step``, unless ``set_begin_index`` was called; the counter then advances by one per step.
    """

    _step_index: Optional[int] = None
    _begin_index: Optional[int] = None

    @property
    def step_index(self) -> Optional[int]:
        """The index of the current timestep (None until the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        """The first step's index when set with :meth:`set_begin_index` (img2img), else None."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at index ``begin_index`` without looking the first timestep up (this also saves
        the lookup's device-to-host copy when the timestep is a stray device tensor)."""
        if isinstance(begin_index, bool) or not isinstance(begin_index, numbers.Integral):
            raise TypeError(f"{type(self).__name__}.set_begin_index: begin_index must be an int, "
                            f"got {begin_index!r}")
        if begin_index < 0:
            raise ValueError(f"{type(self).__name__}.set_begin_index: begin_index must be >= 0, "
                             f"got {begin_index}")
        self._begin_index = int(begin_index)

    def index_for_timestep(self, timestep, schedule_timesteps=None) -> int:
        """The index of ``timestep`` in the schedule (the second one when it occurs more than
        once, as diffusers, so that a sampler started mid-schedule does not skip a noise level);
        raises ValueError when it does not occur."""
        if schedule_timesteps is not None:
            vals = [float(v) for v in torch.as_tensor(schedule_timesteps).flatten().tolist()]
            key = self._key(self._timestep_value(timestep))
            idx = [i for i, v in enumerate(vals) if self._key(v) == key]
            if not idx:
                raise ValueError(f"{type(self).__name__}: timestep not in schedule_timesteps")
            return idx[1] if len(idx) > 1 else idx[0]
        self._sync_host_schedule()
        idx = self._indices_of(self._timestep_value(timestep))
        return idx[1] if len(idx) > 1 else idx[0]

    def _init_step_index(self, timestep) -> None:
        if self._begin_index is None:
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index

    def _refuse_index(self, timestep) -> None:
        """diffusers' Euler-family rule: an integer (an index from ``enumerate``) is not a
        timestep of a sigma schedule; refuse it rather than look its value up."""
        if type(timestep) is float or (type(timestep) is torch.Tensor
                                       and timestep.is_floating_point()):
            return  # the common case, without the ABC checks below
        if (isinstance(timestep, numbers.Integral) and not isinstance(timestep, bool)) or (
                isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()
                and timestep.dtype != torch.bool):
            raise ValueError(f"{type(self).__name__}.step: integer timesteps (e.g. indices from "
                             f"enumerate(timesteps)) are not supported; pass one of "
                             f"scheduler.timesteps")

    def _advance_to(self, timestep) -> int:
        """The current step index, initialised from ``timestep`` on the first call. Later calls
        check that the timestep is in the schedule when that costs no device synchronisation."""
        if self._step_index is None:
            self._init_step_index(timestep)
        else:
            self._sync_host_schedule()
            v = self._timestep_value(timestep, required=False)
            if v is not None:
                self._indices_of(v)
        i = self._step_index
        if i >= len(self._ts_host):
            self._refuse_past_end(i)
        return i

    def _refuse_past_end(self, i: int) -> None:
        """Every step of the schedule has been taken: a clear error instead of an IndexError
        (diffusers') or a step off the end of the sigmas."""
        name, n = type(self).__name__, len(self._ts_host)
        msg = (f"{name}: the schedule has no step left (step index {i}, {n} timesteps); "
               f"call set_timesteps(...) to start a new loop")
        first = self._ts_host[0]
        if self._begin_index is None and n > 1 and self._key(self._ts_host[1]) == \
                self._key(first):
            msg += (f". The first step began at index 1, not 0, because timestep {first:g} "
                    f"occurs more than once in the schedule (diffusers' rule, so that a loop "
                    f"started mid-schedule skips no noise level); call set_begin_index(0) "
                    f"before a loop over every timestep")
        raise ValueError(msg)

    def _step_indices(self, timesteps) -> list[int]:
        """Indices for add_noise: per timestep, or the current/begin index once set."""
        ts = torch.as_tensor(timesteps).flatten()
        if self._begin_index is None:
            return [self.index_for_timestep(t) for t in ts.cpu()]
        if self._step_index is not None:
            return [self._step_index] * ts.shape[0]
        return [self._begin_index] * ts.shape[0]


_STEP_DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))


def _bcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    v = v.flatten()
    while v.ndim < ndim:
        v = v.unsqueeze(-1)
    return v


def fused_step(sample: torch.Tensor, model_output: torch.Tensor, *, c_sample: float = 0.0,
               c_x0: float = 0.0, c_model: float = 0.0, history=(), c_history=(),
               noise: Optional[torch.Tensor] = None, c_noise: float = 0.0,
               x0_sample: float = 0.0, x0_model: float = 1.0, x0_noise: float = 0.0,
               clip_x0: Optional[float] = None, want_x0: str = "lazy", has_x0: bool = True
               ) -> tuple[SchedulerOutput, Optional[torch.Tensor]]:
    """One fused sampler step. ``want_x0``: "no" (x̂0 not reported), "lazy" (computed when
    ``pred_original_sample`` is read), "eager" (returned by the same call). Returns the output
    object and x̂0 when eager."""
    if noise is not None and c_noise == 0.0 and x0_noise == 0.0:
        noise = None
    n_h = len(history)
    h1 = history[0] if n_h > 0 else None
    h2 = history[1] if n_h > 1 else None
    k = [1.0, x0_sample, x0_model, x0_noise, c_sample, c_x0, c_model,
         c_history[0] if n_h > 0 else 0.0, c_history[1] if n_h > 1 else 0.0, c_noise]
    total = sum(k)
    if type(total) is not float:  # a numpy scalar among them: the op takes Python floats
        k = [float(v) for v in k]
        total = sum(k)
    if total - total != 0.0:  # a NaN or an infinity (or finite ones summing past the range)
        for name, v in zip(StepCoeffs._fields, k):
            if not math.isfinite(v):
                raise ValueError(f"sampler step: coefficient {name} = {v} is not finite (a "
                                 f"degenerate schedule or step argument)")
    # The schedulers checked sample / model_output; history and noise are their own tensors.
    eager = want_x0 == "eager"
    out, x0 = sampler_step_unchecked(sample, model_output, None, h1, h2, noise, k, clip_x0,
                                     eager)
    if eager:
        return SchedulerOutput(out, x0, has_x0=has_x0), x0
    if want_x0 == "lazy":
        x0_fn = lazy_x0(sample, model_output, x0_sample, x0_model, clip_x0,
                        noise if x0_noise != 0.0 else None, x0_noise)
        return SchedulerOutput(out, x0_fn=x0_fn, has_x0=has_x0), None
    return SchedulerOutput(out, has_x0=False), None


def lazy_x0(sample: torch.Tensor, model_output: torch.Tensor, x0_sample: float, x0_model: float,
            clip_x0: Optional[float] = None, noise: Optional[torch.Tensor] = None,
            x0_noise: float = 0.0) -> Callable[[], torch.Tensor]:
    """A function computing ``clip(x0_sample·sample + x0_model·model_output + x0_noise·noise)``
    when first called (SchedulerOutput's lazy pred_original_sample); it raises if an input was
    modified in place in between, instead of returning x̂0 of other inputs. Inference tensors
    (torch.inference_mode) track no versions: x̂0 is then computed at once."""
    if sample.is_inference() or model_output.is_inference() or (
            noise is not None and noise.is_inference()):
        x0 = sampler_step(sample, model_output, c_x0=1.0, noise=noise, x0_sample=x0_sample,
                          x0_model=x0_model, x0_noise=x0_noise, clip_x0=clip_x0)
        return lambda: x0
    versions = (sample._version, model_output._version,
                noise._version if noise is not None else 0)

    def x0_fn():
        now = (sample._version, model_output._version, noise._version if noise is not None else 0)
        if now != versions:  # never a silently wrong x̂0
            raise RuntimeError("pred_original_sample is computed when first read, from the "
                               "step's sample and model_output, but one of them was modified "
                               "in place since the step; read pred_original_sample first "
                               "(or pass return_dict=False to get it from the step itself)")
        return sampler_step(sample, model_output, c_x0=1.0, noise=noise, x0_sample=x0_sample,
                            x0_model=x0_model, x0_noise=x0_noise, clip_x0=clip_x0)
    return x0_fn

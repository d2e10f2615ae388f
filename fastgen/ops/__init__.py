"""Functional API: one module per op family. Each function checks its arguments, picks a backend
through :mod:`fastgen.registry` and calls a ``torch.ops.fastgen`` op (or the reference)."""

from .attention import flash_attention, scaled_dot_product_attention
from .bias_act import ACTIVATIONS, bias_act
from .decode import decode_attention
from .linear import decode_linear
from .mlp import fused_mlp, fused_mlp_mse
from .hashgrid import hashgrid_encode, hashgrid_levels, hashgrid_n_params
from .raymarch import march, ray_aabb_intersect
from .randn import randn
from .sampler import StepCoeffs, cfg_combine, sampler_step
from .sampling import sample
from .transformer import apply_rotary, rms_norm
from .volrend import rendering, volume_render

__all__ = ["bias_act", "ACTIVATIONS", "scaled_dot_product_attention", "flash_attention",
           "hashgrid_encode", "hashgrid_levels", "hashgrid_n_params", "sampler_step", "cfg_combine",
           "StepCoeffs", "sample", "decode_attention", "decode_linear", "rms_norm",
           "apply_rotary", "fused_mlp", "fused_mlp_mse", "ray_aabb_intersect", "march",
           "volume_render", "rendering", "randn"]

"""sample: fused next-token sampling (temperature, top-k, top-p, min-p) without a full sort.

The rules and the draw are defined in fastgen/reference/sampling.py (which sorts the whole row).
Both fast backends keep its definitions exactly — each filter is a threshold on the scaled logit,
and a draw inverts the CDF of the kept tokens in index order with one uniform per row — so for the
same uniforms they return the same tokens as the reference, not only the same distribution.

    backend ``cpu``     (this file) the kept set always lies in the row's top C logits, so
                        ``torch.topk`` with C = 64 (or k + 1), grown ×4 while a row's C-th
                        candidate is still kept, replaces the V log V sort; weights, scans and
                        the draw then run on [B, C].
    backend ``triton``  (kernels/sampling.py) one program per row, one launch: thresholds found
                        by bisection over the float order (32 passes over the row, no sort,
                        FlashInfer's pivot idea), then one pass that draws.

Files: fastgen/ops/sampling.py, fastgen/reference/sampling.py, kernels/sampling.py,
tests/ops/test_sampling.py; benchmark cases in fastgen/bench/decode.py.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional, Union

import torch

from .. import registry
from ..reference import sampling as _ref

__all__ = ["sample"]

Param = Union[None, float, int, torch.Tensor]
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_FIRST_CANDIDATES = 64
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def sample(logits: torch.Tensor, *, temperature: Param = 1.0, top_k: Param = None,
           top_p: Param = None, min_p: Param = None,
           generator: Optional[torch.Generator] = None, validate: bool = True,
           backend: Optional[str] = None) -> torch.Tensor:
    """Draw one token per row of ``logits`` after temperature, top-k, top-p and min-p filtering.

    Each parameter is a number (every row) or a tensor [B] (one value per row).

    Args:
        logits: [B, V] (or [V]) float16/bfloat16/float32/float64; -inf marks a banned token.
        temperature: finite, >= 0; 0 is greedy (the first index of the row's largest logit).
        top_k: keep the k most likely tokens (ties with the k-th kept too), an int >= 1; None:
            no limit (a per-row tensor may hold values >= V for "no limit").
        top_p: keep the smallest most-likely set whose probability reaches p, in (0, 1]; None
            or 1: off.
        min_p: keep tokens with probability >= min_p · the largest, in [0, 1]; None or 0: off.
        generator: torch.Generator for the uniforms (one per row), on logits' device.
        validate: check that logits hold no NaN or +inf and every row has a finite logit (host
            synchronisations; pass False inside a CUDA graph; skipped under torch.compile).
        backend: "triton", "cpu" or "reference"; default: FASTGEN_BACKEND, else the best one.

    Returns:
        [B] (or a 0-d tensor for 1-D logits) int64 token ids.

    Order and rules as transformers' logits warpers (temperature, top-k, top-p, min-p); exact
    definitions in fastgen/reference/sampling.py.
    """
    name = "sample"
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name}: logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _DTYPES:
        raise TypeError(f"{name}: logits must be float16, bfloat16, float32 or float64, got "
                        f"{logits.dtype}")
    if logits.ndim not in (1, 2) or logits.shape[-1] == 0:
        raise ValueError(f"{name}: logits must be [B, V] or [V] with V >= 1, got shape "
                         f"{list(logits.shape)}")
    squeeze = logits.ndim == 1
    x = logits[None] if squeeze else logits
    b, v = x.shape
    temp = _per_row(name, "temperature", temperature, 1.0, b, x.device, torch.float32, 0.0,
                    _FLOAT32_MAX, lo_open=False)
    k = _per_row(name, "top_k", top_k, v, b, x.device, torch.int64, 1, math.inf, lo_open=False)
    p = _per_row(name, "top_p", top_p, 1.0, b, x.device, torch.float32, 0.0, 1.0, lo_open=True)
    mp = _per_row(name, "min_p", min_p, 0.0, b, x.device, torch.float32, 0.0, 1.0,
                  lo_open=False)
    # one pass over the logits: a row's max is NaN or +inf when the row holds either (max
    # propagates NaN), -inf when every token is banned
    if validate and b and not torch.compiler.is_compiling() \
            and not bool(torch.isfinite(x.amax(-1)).all()):
        bad = torch.isnan(x) | (x == math.inf)
        if bool(bad.any()):
            row = int(bad.any(-1).nonzero()[0, 0])
            raise ValueError(f"{name}: logits hold NaN or +inf (first in row {row})")
        raise ValueError(f"{name}: a row of logits is all -inf (no token can be drawn)")
    k = k.clamp(max=v)
    u = torch.rand(b, device=x.device, generator=generator)
    args = (x.contiguous(), u, temp, k, p, mp)
    tok = _OP.select(x.device.type, args, backend).fn(*args)
    return tok[0] if squeeze else tok


def _per_row(fn, arg, value, default, b, device, dtype, lo, hi, lo_open):
    """A number or a [B] tensor -> a [B] tensor on device, range-checked."""
    if value is None:
        return torch.full((b,), default, dtype=dtype, device=device)
    integral = dtype == torch.int64
    if isinstance(value, torch.Tensor):
        if value.shape != (b,) and value.ndim != 0:
            raise ValueError(f"{fn}: {arg} as a tensor must be [B] = [{b}] (or 0-d), got "
                             f"{list(value.shape)}")
        if integral and (value.is_floating_point() or value.is_complex()):
            raise TypeError(f"{fn}: {arg} must hold integers, got {value.dtype}")
        if value.device != device:
            raise ValueError(f"{fn}: {arg} is on {value.device} but logits are on {device}")
        t = value.to(dtype).expand(b).contiguous()
        checked = t.double()
    else:
        ok = isinstance(value, numbers.Integral if integral else numbers.Real)
        if not ok or isinstance(value, bool):
            kind = "an int" if integral else "a number"
            raise TypeError(f"{fn}: {arg} must be {kind} or a [B] tensor, got {value!r}")
        f = float(value)
        if math.isnan(f) or (f <= lo if lo_open else f < lo) or f > hi:
            _out_of_range(fn, arg, lo, hi, lo_open, f)
        return torch.full((b,), value, dtype=dtype, device=device)
    bad = checked.isnan() | (checked <= lo if lo_open else checked < lo) | (checked > hi)
    if bool(bad.any()):
        _out_of_range(fn, arg, lo, hi, lo_open, checked[bad][0].item())
    return t


def _out_of_range(fn, arg, lo, hi, lo_open, got):
    lo_s = f"({lo}" if lo_open else f"[{lo}"
    raise ValueError(f"{fn}: {arg} must be in {lo_s}, {hi}], got {got}")


# --- backends ----------------------------------------------------------------------------------

def _run_reference(x, u, temp, k, p, mp):
    return _ref.sample(x, u, temp, k, p, mp)


def _run_cpu(x, u, temp, k, p, mp):
    return torch.ops.fastgen.sample_tokens(x, u, temp, k, p, mp)


def _run_triton(x, u, temp, k, p, mp):
    return torch.ops.fastgen.sample_tokens_triton(x, u, temp, k, p, mp)


def _fake(x, u, temp, k, p, mp):
    return x.new_empty(x.shape[:1], dtype=torch.int64)


@torch.library.custom_op("fastgen::sample_tokens", mutates_args=(), device_types="cpu")
def _sample_tokens(x: torch.Tensor, u: torch.Tensor, temp: torch.Tensor, k: torch.Tensor,
                   p: torch.Tensor, mp: torch.Tensor) -> torch.Tensor:
    """CPU path: the kept set of every row lies in its top C logits (see the module docstring)."""
    b, v = x.shape
    if b == 0:
        return _fake(x, u, temp, k, p, mp)
    greedy = temp == 0
    if bool(greedy.all()):  # nothing to draw (a greedy decode loop): skip the exponentials
        return x.argmax(-1)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = torch.where(temp > 0, temp, 1).to(dtype)
    xf = x.to(dtype)
    xs = (xf - xf.amax(-1, keepdim=True)) / t[:, None]  # max 0: no overflow for tiny T
    row_filtered = ((k < v) | (p < 1) | (mp > 0)) & ~greedy
    tok = torch.zeros(b, dtype=torch.int64)
    if not bool(row_filtered.all()):  # unfiltered rows: the whole row, in index order
        tok = _draw(torch.exp(xs), u, torch.arange(v).expand(b, v))
    if bool(row_filtered.any()):
        use_k, use_p = k < v, p < 1
        total = torch.exp(xs).sum(-1, keepdim=True) if bool((~use_k & use_p).any()) else None
        c = min(v, max(_FIRST_CANDIDATES, int(k.masked_fill(~use_k, 0).max()) + 1))
        while True:
            vals, idx = xs.topk(c, dim=-1, sorted=True)
            w = torch.exp(vals)
            kth = vals.gather(-1, (k.clamp(max=c) - 1)[:, None])
            keep_k = (vals >= kth) | ~use_k[:, None]
            wk = w * keep_k
            z = wk.sum(-1, keepdim=True)
            if total is not None:
                z = torch.where(use_k[:, None], z, total)
            mass = torch.nn.functional.pad(wk.cumsum(-1), (1, 0))
            above = mass.gather(-1, torch.searchsorted(-vals, -vals, side="left"))
            keep = keep_k & (above < p.to(dtype)[:, None] * z) & (w >= mp.to(dtype)[:, None])
            # grow while a filtered row's last candidate is kept (its set may go on past C), or
            # is kept by top-k (then top-k's mass z may be missing tied tokens past C)
            grow = (keep[:, -1] | (use_k & keep_k[:, -1])) & row_filtered
            if c == v or not bool(grow.any()):
                break
            c = min(v, 4 * c)
        order = idx.argsort(-1)
        tok_f = _draw((w * keep).gather(-1, order), u, idx.gather(-1, order))
        tok = torch.where(row_filtered, tok_f, tok)
    return torch.where(greedy, x.argmax(-1), tok)


def _draw(w, u, ids):
    """Inverse CDF in index order: w [B, C] kept weights (ids ascending), u [B] -> [B] ids."""
    c = w.cumsum(-1)
    pos = torch.searchsorted(c, u.to(c.dtype)[:, None] * c[:, -1:], right=True)[:, 0]
    last = torch.arange(w.shape[-1]).mul(w > 0).amax(-1)
    return ids.gather(-1, torch.minimum(pos, last)[:, None])[:, 0]


@torch.library.custom_op("fastgen::sample_tokens_triton", mutates_args=())
def _sample_tokens_triton(x: torch.Tensor, u: torch.Tensor, temp: torch.Tensor, k: torch.Tensor,
                          p: torch.Tensor, mp: torch.Tensor) -> torch.Tensor:
    from ..kernels import sampling as kernels  # imports triton: only when this backend runs

    return kernels.sample_tokens(x, u, temp, k, p, mp)


torch.library.register_fake("fastgen::sample_tokens")(_fake)
torch.library.register_fake("fastgen::sample_tokens_triton")(_fake)


def _check_triton(x, u, temp, k, p, mp) -> Optional[str]:
    if x.dtype == torch.float64:
        return "float64 logits are not supported (float16, bfloat16, float32)"
    if x.shape[1] >= 2**31:
        return "vocabularies of 2**31 tokens or more"
    return None


_OP = registry.register("sample", [
    registry.Backend("triton", _run_triton, devices=("cuda", "cpu"),
                     available=registry.triton_available, check=_check_triton,
                     explicit_only_on=("cpu",), summary="kernels/sampling.py"),
    registry.Backend("cpu", _run_cpu, devices=("cpu",),
                     summary="fastgen/ops/sampling.py (top-C candidates, no full sort)"),
    registry.Backend("reference", _run_reference, summary="fastgen/reference/sampling.py"),
])

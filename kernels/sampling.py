"""Triton kernel for token sampling (GPU; CPU tensors under TRITON_INTERPRET=1).

Rules and the draw: fastgen/reference/sampling.py. One program per row, one launch, no sort:
every filter is a threshold on the scaled logit, and a float32 value maps to an int32 key with
the same order (bits, with the magnitude bits flipped for negatives), so each threshold is found
by bisection over the 2**32 keys — 32 passes over the row, each counting (top-k) or summing
weights (top-p) above the midpoint. FlashInfer's sorting-free samplers pivot the same way.

Passes over the row: max (and the greedy argmax), top-k bisection (only when k < V), top-k mass,
top-p bisection (only when p < 1), kept mass, and the draw: a running cumsum in index order that
stops at the first token whose cumulative weight exceeds u · kept mass. Greedy rows (temperature
0) skip everything after the first pass.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

_BLOCK = 1024
_KEY_LO = -(2**31)  # below every key
_KEY_HI = 2**31  # above every key


@triton.jit
def _key(xs):
    # monotone float32 -> int32 (+0.0 normalises -0.0, which would sort below +0.0)
    b = (xs + 0.0).to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF)


@triton.jit
def _scaled(base, idx, msk, mx, t):
    # (l − max l) / T: the row maximum is 0, so a tiny T cannot overflow to inf − inf
    return (tl.load(base + idx, mask=msk, other=-float("inf")).to(tl.float32) - mx) / t


@triton.jit
def _sample_fwd_kernel(x_ptr, u_ptr, t_ptr, k_ptr, p_ptr, mp_ptr, out_ptr, V, stride,
                       KEY_LO: tl.constexpr, KEY_HI: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = x_ptr + row.to(tl.int64) * stride
    t = tl.load(t_ptr + row)
    k = tl.load(k_ptr + row)
    p = tl.load(p_ptr + row)
    mp = tl.load(mp_ptr + row)
    u = tl.load(u_ptr + row)
    greedy = t == 0
    t = tl.where(greedy, 1.0, t)
    offs = tl.arange(0, BLOCK)

    # max of the raw row and its first index (the greedy token)
    mx = -float("inf")
    best = V
    for start in range(0, V, BLOCK):
        idx = start + offs
        xs = tl.load(base + idx, mask=idx < V, other=-float("inf")).to(tl.float32)
        cm = tl.max(xs, 0)
        first = tl.min(tl.where(xs == cm, idx, V), 0)
        best = tl.where(cm > mx, first, best)
        mx = tl.maximum(mx, cm)

    n_k = tl.where(~greedy & (k < V), 32, 0)
    n_p = tl.where(~greedy & (p < 1.0), 32, 0)
    v_draw = tl.where(greedy, 0, V)

    # top-k: the largest key with at least k keys >= it (the k-th largest scaled logit)
    lo = tl.zeros([], tl.int64) + KEY_LO
    hi = tl.zeros([], tl.int64) + KEY_HI
    for _ in range(0, n_k):
        mid = (lo + hi) >> 1
        cnt = tl.zeros([], tl.int64)
        for start in range(0, V, BLOCK):
            idx = start + offs
            key = _key(_scaled(base, idx, idx < V, mx, t))
            cnt += tl.sum((key >= mid).to(tl.int64), 0)
        ok = cnt >= k
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid)
    t_k = lo

    z = 0.0
    for start in range(0, v_draw, BLOCK):
        idx = start + offs
        xs = _scaled(base, idx, idx < V, mx, t)
        z += tl.sum(tl.where(_key(xs) >= t_k, tl.exp(xs), 0.0), 0)

    # top-p: the largest key whose mass at or above it (within top-k) still reaches p · z
    lo = t_k
    hi = tl.zeros([], tl.int64) + KEY_HI
    for _ in range(0, n_p):
        mid = (lo + hi) >> 1
        mass = 0.0
        for start in range(0, V, BLOCK):
            idx = start + offs
            xs = _scaled(base, idx, idx < V, mx, t)
            mass += tl.sum(tl.where(_key(xs) >= mid, tl.exp(xs), 0.0), 0)
        ok = mass >= p * z
        lo = tl.where(ok, mid, lo)
        hi = tl.where(ok, hi, mid)
    thr = lo

    total = 0.0
    for start in range(0, v_draw, BLOCK):
        idx = start + offs
        xs = _scaled(base, idx, idx < V, mx, t)
        w = tl.exp(xs)
        total += tl.sum(tl.where((_key(xs) >= thr) & (w >= mp), w, 0.0), 0)

    # the draw: first token whose running kept mass exceeds u · total, in index order
    target = u * total
    run = 0.0
    tok = V
    last = -1
    for start in range(0, v_draw, BLOCK):
        idx = start + offs
        xs = _scaled(base, idx, idx < V, mx, t)
        w = tl.exp(xs)
        wk = tl.where((_key(xs) >= thr) & (w >= mp), w, 0.0)
        cs = tl.cumsum(wk, 0) + run
        hit = tl.min(tl.where((cs > target) & (wk > 0), idx, V), 0)
        tok = tl.where(tok == V, hit, tok)
        last = tl.maximum(last, tl.max(tl.where(wk > 0, idx, -1), 0))
        run += tl.sum(wk, 0)
    tok = tl.where(tok == V, last, tok)
    tl.store(out_ptr + row, tl.where(greedy, best, tok).to(tl.int64))


def sample_tokens(x: torch.Tensor, u: torch.Tensor, temp: torch.Tensor, k: torch.Tensor,
                  p: torch.Tensor, mp: torch.Tensor) -> torch.Tensor:
    """x: [B, V] contiguous float16/bfloat16/float32; u, temp, p, mp: [B] float32; k: [B] int64
    (clamped to V). Returns [B] int64 tokens."""
    b, v = x.shape
    out = torch.empty(b, dtype=torch.int64, device=x.device)
    if b == 0:
        return out
    block = min(_BLOCK, triton.next_power_of_2(v))
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _sample_fwd_kernel[(b,)](x, u, temp, k, p, mp, out, v, x.stride(0), KEY_LO=_KEY_LO,
                                 KEY_HI=_KEY_HI, BLOCK=block)
    return out


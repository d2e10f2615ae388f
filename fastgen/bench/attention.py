"""Benchmark cases for attention: forward and forward+backward, against torch's SDPA in one run.

Peers, each given the same work and its favourite layout ([B, H, L, D] contiguous), with any
mask or padding built in setup (untimed, so the peers' numbers are, if anything, flattering):

* ``torch SDPA``: torch.nn.functional.scaled_dot_product_attention, where it computes the call
  (causal top-left or none);
* ``dense masked SDPA``: SDPA with the sliding window as a materialised [L, L] bool mask, and
  for packed sequences SDPA over the zero-padded batch with a per-sequence causal/padding mask —
  the fastest PyTorch composition that gives the same answer;
* ``torch.compile``: the compiled reference composition, for softcap (which SDPA lacks);
* the reference is fastgen.reference.attention (eager scores, softmax, P @ V).

TFLOP/s uses FlashAttention 3's count (hopper/benchmark_attn.py): forward = 2 * B * H * Lq *
avg_visible_keys * (D + Dv); forward+backward = 3.5 x forward.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..ops.attention import flash_attention, scaled_dot_product_attention
from ..reference import attention as ref
from ..testing.check import available_backends
from .core import Case

# (label, B, L, H, D, kind, kwargs, dtype, mode, tier). kind: sdpa | window | softcap | varlen
_CPU = [
    ("causal", 2, 1024, 8, 64, "sdpa", dict(causal=True), torch.float32, "fwd", "quick"),
    ("causal", 2, 1024, 8, 64, "sdpa", dict(causal=True), torch.float32, "fwd+bwd", "quick"),
    ("window 256", 1, 4096, 8, 64, "window", dict(causal=True, window=(256, 0)),
     torch.float32, "fwd", "quick"),
    ("softcap 30", 1, 2048, 8, 64, "softcap", dict(causal=True, softcap=30.0), torch.float32,
     "fwd", "quick"),
    ("varlen 16 seqs", 16, 1024, 8, 64, "varlen", dict(causal=True), torch.float32, "fwd",
     "quick"),
    ("non-causal", 2, 1024, 8, 64, "sdpa", {}, torch.float32, "fwd", "full"),
    ("non-causal", 2, 1024, 8, 64, "sdpa", {}, torch.float32, "fwd+bwd", "full"),
    ("causal", 2, 1024, 8, 128, "sdpa", dict(causal=True), torch.float32, "fwd", "full"),
    ("causal", 2, 1024, 8, 128, "sdpa", dict(causal=True), torch.float32, "fwd+bwd", "full"),
    ("non-causal", 2, 1024, 8, 128, "sdpa", {}, torch.float32, "fwd", "full"),
    ("causal", 2, 1024, 8, 64, "sdpa", dict(causal=True), torch.bfloat16, "fwd", "full"),
    ("window 256", 1, 4096, 8, 64, "window", dict(causal=True, window=(256, 0)),
     torch.float32, "fwd+bwd", "full"),
    ("softcap 30", 1, 2048, 8, 64, "softcap", dict(causal=True, softcap=30.0), torch.float32,
     "fwd+bwd", "full"),
    ("varlen 16 seqs", 16, 1024, 8, 64, "varlen", dict(causal=True), torch.float32, "fwd+bwd",
     "full"),
]

_GPU = [
    (label, b, n, 2048 // d, d, "sdpa", kw, torch.bfloat16, mode, tier)
    for d in (64, 128)
    for n, b in ((8192, 2), (2048, 8))
    for label, kw in (("causal", dict(causal=True)), ("non-causal", {}))
    for mode in ("fwd", "fwd+bwd")
    for tier in ["quick" if (n == 8192 and d == 128 and kw) else "full"]
] + [
    ("window 1024", 2, 8192, 16, 128, "window", dict(causal=True, window=(1024, 0)),
     torch.bfloat16, "fwd", "full"),
    ("softcap 30", 2, 8192, 16, 128, "softcap", dict(causal=True, softcap=30.0),
     torch.bfloat16, "fwd", "full"),
    ("varlen 16 seqs", 16, 4096, 16, 128, "varlen", dict(causal=True), torch.bfloat16, "fwd",
     "full"),
]

# Largest Lq * Lk * B * H for which the float64 truth is computed (8 bytes each, ~270 MB).
_TRUTH_MAX = 1 << 25


def _lengths(b: int, l_max: int) -> list[int]:
    """Deterministic, varied sequence lengths in [l_max / 8, l_max] (mean ~ l_max / 2)."""
    g = torch.Generator().manual_seed(1)
    lens = torch.randint(l_max // 8, l_max + 1, (b,), generator=g).tolist()
    lens[0] = l_max
    return lens


def _visible_mean(lq: int, lk: int, kw: dict) -> float:
    left, right = kw.get("window", (-1, -1))
    if kw.get("causal"):
        right = 0
    if left < 0 and right < 0:
        return float(lk)
    if left < 0 and right == 0:
        return (max(0, lk - lq) + lk) / 2
    return float(ref.visible(lq, lk, left, right, bottom_right=True).sum()) / lq


def _flops(lens: list[int], h: int, d: int, kw: dict, mode: str) -> int:
    fwd = sum(2 * h * n * _visible_mean(n, n, kw) * (d + d) for n in lens)
    return int(fwd * (3.5 if mode == "fwd+bwd" else 1.0))


def _runner(fn: Callable, mode: str, names: tuple[str, ...], grad: str
            ) -> Callable[[dict], tuple]:
    """fn(*state[names]) forward only, or forward then the gradients of those inputs under the
    upstream gradient state[grad]."""
    if mode == "fwd":
        return lambda s: (fn(*(s[n] for n in names)),)

    def fwd_bwd(s):
        y = fn(*(s[n] for n in names))
        return (y, *torch.autograd.grad(y, [s[n] for n in names], s[grad]))

    return fwd_bwd


def _case(device, backend, label, b, seq, h, d, kind, kw, dtype, mode, tier) -> Case:
    lens = _lengths(b, seq) if kind == "varlen" else [seq] * b
    need_grad = mode != "fwd"

    def setup():
        g = torch.Generator(device=device).manual_seed(0)
        total = sum(lens)
        s = {}
        # fastgen: [B, L, H, D] (packed [total, H, D] for varlen); peers: [B, H, L, D] copies.
        q, k, v = (torch.randn(total, h, d, generator=g, device=device, dtype=dtype)
                   for _ in range(3))
        if kind == "varlen":
            cu = torch.tensor([0] + lens, device=device).cumsum(0).to(torch.int32)
            s["cu"] = cu
            s.update(fq=q, fk=k, fv=v)
            pad = lambda t: torch.nn.utils.rnn.pad_sequence(  # noqa: E731
                list(t.split(lens)), batch_first=True).transpose(1, 2).contiguous()
            s.update(pq=pad(q), pk=pad(k), pv=pad(v))
            lm = max(lens)
            valid = (torch.arange(lm, device=device)[None]
                     < torch.tensor(lens, device=device)[:, None])
            mask = valid[:, None, None, :] & torch.ones(lm, lm, dtype=torch.bool,
                                                        device=device).tril()
            s["pmask"] = mask | ~valid[:, None, :, None]  # padded query rows: anything finite
        else:
            s.update(fq=q.view(b, seq, h, d), fk=k.view(b, seq, h, d), fv=v.view(b, seq, h, d))
            s.update(pq=s["fq"].transpose(1, 2).contiguous(),
                     pk=s["fk"].transpose(1, 2).contiguous(),
                     pv=s["fv"].transpose(1, 2).contiguous())
            if kind == "window":
                left, right = kw["window"]
                s["pmask"] = ref.visible(seq, seq, left, 0 if kw.get("causal") else right,
                                         bottom_right=True, device=device)
        for n in ("fq", "fk", "fv", "pq", "pk", "pv"):
            s[n].requires_grad_(need_grad)
        if need_grad:
            s["g_f"] = torch.randn(s["fq"].shape, generator=g, device=device, dtype=dtype)
            s["g_p"] = s["g_f"].view(b, seq, h, d).transpose(1, 2).contiguous() \
                if kind != "varlen" else torch.randn(s["pq"].shape, device=device, dtype=dtype)
        return s

    causal = bool(kw.get("causal"))
    f_names, p_names = ("fq", "fk", "fv"), ("pq", "pk", "pv")
    peers = {}
    if kind == "sdpa":  # the drop-in against torch's SDPA, both on [B, H, L, D]
        fastgen_fn = _runner(lambda q, k, v: scaled_dot_product_attention(
            q, k, v, is_causal=causal, backend=backend), mode, p_names, "g_p")
        reference = _runner(lambda q, k, v: ref.sdpa(q, k, v, is_causal=causal), mode, p_names,
                            "g_p")
        peers["torch SDPA"] = _runner(lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=causal), mode, p_names, "g_p")
    else:
        def varlen_kw(s):
            if kind != "varlen":
                return {}
            return dict(cu_seqlens_q=s["cu"], cu_seqlens_k=s["cu"])

        def fastgen_fn(s):
            return _runner(lambda q, k, v: flash_attention(
                q, k, v, backend=backend, **varlen_kw(s), **kw), mode, f_names, "g_f")(s)

        def reference(s):
            return _runner(lambda q, k, v: ref.flash_attention(q, k, v, **varlen_kw(s), **kw)[0],
                           mode, f_names, "g_f")(s)

        if kind in ("window", "varlen"):
            def masked_sdpa(s):
                return _runner(lambda q, k, v: F.scaled_dot_product_attention(
                    q, k, v, attn_mask=s["pmask"]), mode, p_names, "g_p")(s)
            peers["dense masked SDPA"] = masked_sdpa
        if kind == "softcap":
            compiled = torch.compile(lambda q, k, v: ref.flash_attention(q, k, v, **kw)[0],
                                     dynamic=False)
            peers["torch.compile"] = _runner(compiled, mode, f_names, "g_f")

    def truth(s):
        s64 = {n: t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point()
               else t for n, t in s.items()}
        return reference(s64)

    small = sum(n * n for n in lens) * h <= _TRUTH_MAX
    itemsize = torch.empty((), dtype=dtype).element_size()
    tensors = (4 if mode == "fwd" else 8) * sum(lens) * h * d  # q, k, v, out (+ do, dq, dk, dv)
    shape = f"{b}x{seq}x{h}x{d}" if kind != "varlen" else f"{b} seqs <= {seq}, {h}x{d}"
    return Case(op="attention", name=f"{label} {mode} {shape}", device=device, dtype=dtype,
                setup=setup, fastgen=fastgen_fn, reference=reference, peers=peers,
                truth=truth if small else None, bytes_moved=tensors * itemsize, tier=tier,
                backend=backend, flops=_flops(lens, h, d, kw, mode))


def cases(device: str) -> list[Case]:
    backends = [b for b in available_backends("attention", device) if b != "reference"]
    if device == "cpu":
        backends = [b for b in backends if b != "triton"]  # the interpreter is not a fast path
    backend = backends[0] if backends else "reference"
    specs = _GPU if device == "cuda" else _CPU
    return [_case(device, backend, *spec) for spec in specs]

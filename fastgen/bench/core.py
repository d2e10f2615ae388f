"""Benchmark cases and the timing loop shared by ``fastgen bench`` and the benchmarks/ suites.

A :class:`Case` is defined once: how to build its inputs, and the callables to time — fastgen, the
reference, and peers (``torch.compile`` of the reference, another library). :func:`measure` times
them in the same process, interleaved (each round runs every contender once, in a rotating order,
so drift and thermal state hit all alike), and reports medians after warm-up. CPU timings use
``time.perf_counter``; CUDA timings use CUDA events around each call.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

__all__ = ["Case", "Result", "copy_bandwidth", "measure", "time_call"]


@dataclass
class Case:
    """One benchmark row.

    setup:      builds the inputs once, returns a state dict passed to every callable.
    fastgen:    the fastgen call (returns its output tensors: forward outputs, then gradients).
    reference:  the same work through fastgen.reference (eager PyTorch).
    peers:      other implementations of the same work, by name (only those installed).
    truth:      the reference in float64, for the error column (None: compare to reference).
    bytes_moved: the least DRAM traffic the work needs (inputs read once, outputs written once):
                 GB/s = bytes_moved / time, and bytes_moved / peak bandwidth is the floor.
    tier:       "quick" (the default run) or "full".
    flops:      floating-point operations of the work (0: not meaningful): TFLOP/s column.
    items:      work items of one call, e.g. points encoded (0: not meaningful), named by
                ``item`` ("pts"): a rate column, items per second.
    inner:      calls per timed sample (their mean is the sample): sub-millisecond cases use
                several, so that one sample is not one timer read around a cold call.
    """

    op: str
    name: str
    device: str
    dtype: torch.dtype
    setup: Callable[[], dict]
    fastgen: Callable[[dict], Any]
    reference: Callable[[dict], Any]
    peers: dict[str, Callable[[dict], Any]] = field(default_factory=dict)
    truth: Optional[Callable[[dict], Any]] = None
    bytes_moved: int = 0
    tier: str = "quick"
    backend: str = ""
    flops: int = 0
    items: int = 0
    item: str = ""
    inner: int = 1

    @property
    def id(self) -> str:
        return f"{self.op}/{self.name}/{self.device}/{str(self.dtype).replace('torch.', '')}"


@dataclass
class Result:
    case: str
    op: str
    name: str
    device: str
    dtype: str
    backend: str
    ms: dict[str, float]            # median ms per contender ("fastgen", "reference", peers)
    spread: dict[str, tuple]        # (p20, p80) ms per contender
    warmup_s: dict[str, float]      # first-call seconds (includes torch.compile compilation)
    max_error: Optional[float]      # fastgen vs float64 truth (or vs reference)
    ref_error: Optional[float]      # reference vs float64 truth: PyTorch's own error
    bytes_moved: int
    repeats: int
    peak_mb: dict[str, float] = field(default_factory=dict)  # CUDA: extra memory per call
    copy_gbps: Optional[float] = None  # this device's measured copy bandwidth (the floor)
    flops: int = 0
    items: int = 0
    item: str = ""

    def rate(self, who: str = "fastgen") -> Optional[float]:
        """Work items per second (Case.items), or None."""
        ms = self.ms.get(who)
        return self.items / (ms * 1e-3) if self.items and ms else None

    def tflops(self, who: str = "fastgen") -> Optional[float]:
        ms = self.ms.get(who)
        return self.flops / (ms * 1e-3) / 1e12 if self.flops and ms else None

    @property
    def gbps(self) -> Optional[float]:
        ms = self.ms.get("fastgen")
        return self.bytes_moved / (ms * 1e-3) / 1e9 if self.bytes_moved and ms else None

    @property
    def floor_ms(self) -> Optional[float]:
        """bytes_moved at the device's measured copy bandwidth: no kernel can beat this."""
        if not (self.bytes_moved and self.copy_gbps):
            return None
        return self.bytes_moved / (self.copy_gbps * 1e9) * 1e3

    def speedup(self, other: str) -> Optional[float]:
        if other in self.ms and self.ms.get("fastgen"):
            return self.ms[other] / self.ms["fastgen"]
        return None

    @property
    def peer(self) -> Optional[str]:
        """The fastest peer (not fastgen, not the reference)."""
        peers = {k: v for k, v in self.ms.items() if k not in ("fastgen", "reference")}
        return min(peers, key=peers.get) if peers else None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: str) -> float:
    """Seconds for one call, synchronised (CUDA events on GPU, perf_counter on CPU)."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else []


def _max_error(out, truth) -> float:
    errs = [(a.detach().double() - b.detach().double()).abs().max().item()
            for a, b in zip(_flat(out), _flat(truth)) if a.numel()]
    return max(errs) if errs else 0.0


def copy_bandwidth(device: str, nbytes: int = 1 << 28, repeats: int = 5) -> float:
    """GB/s of a large tensor copy on ``device`` (bytes read + written): the practical ceiling
    for memory-bound kernels, measured rather than taken from a spec sheet."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    t = statistics.median(time_call(lambda: dst.copy_(src), device) for _ in range(repeats))
    return 2 * nbytes / t / 1e9


def measure(case: Case, repeats: int = 7, warmup: int = 2,
            progress: Optional[Callable[[str], None]] = None,
            copy_gbps: Optional[float] = None) -> Result:
    """Time every contender of ``case`` interleaved; errors against the float64 truth."""
    say = progress or (lambda msg: None)
    say("setup")
    state = case.setup()
    contenders = {"fastgen": case.fastgen, "reference": case.reference, **case.peers}

    say("errors")
    truth = case.truth(state) if case.truth is not None else None
    out_fastgen = case.fastgen(state)
    out_ref = case.reference(state)
    max_error = _max_error(out_fastgen, truth if truth is not None else out_ref)
    ref_error = _max_error(out_ref, truth) if truth is not None else None
    del truth, out_fastgen, out_ref

    warmup_s, peak_mb = {}, {}
    for name, fn in contenders.items():
        say(f"warm-up {name}")
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn(state)
        _sync(case.device)
        warmup_s[name] = time.perf_counter() - t0
        if case.device == "cuda":
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn(state)
            torch.cuda.synchronize()
            peak_mb[name] = (torch.cuda.max_memory_allocated() - before) / 2**20

    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(repeats):
        say(f"round {r + 1}/{repeats}")
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = contenders[name]
            if case.inner == 1:
                samples[name].append(time_call(lambda: fn(state), case.device))  # noqa: B023
            else:
                samples[name].append(time_call(
                    lambda: [fn(state) for _ in range(case.inner)], case.device)  # noqa: B023
                    / case.inner)

    def q(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1e3

    return Result(
        case=case.id, op=case.op, name=case.name, device=case.device,
        dtype=str(case.dtype).replace("torch.", ""), backend=case.backend,
        ms={k: statistics.median(v) * 1e3 for k, v in samples.items()},
        spread={k: (q(v, 0.2), q(v, 0.8)) for k, v in samples.items()},
        warmup_s=warmup_s, max_error=max_error, ref_error=ref_error,
        bytes_moved=case.bytes_moved, repeats=repeats, peak_mb=peak_mb, copy_gbps=copy_gbps,
        flops=case.flops, items=case.items, item=case.item)

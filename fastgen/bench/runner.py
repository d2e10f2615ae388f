"""``fastgen bench``: select cases, time them, print a table, write JSON and a plot."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from typing import Optional, Sequence

import torch

from .core import Case, Result, copy_bandwidth, measure

__all__ = ["all_cases", "select", "run", "format_table", "write_json", "plot", "metadata"]


def all_cases(device: str) -> list[Case]:
    """Every benchmark case on ``device``, op family by op family."""
    from . import attention, bias_act, decode, hashgrid, mlp, nerf, randn, sampler

    return (bias_act.cases(device) + attention.cases(device) + hashgrid.cases(device)
            + mlp.cases(device) + sampler.cases(device) + randn.cases(device) + decode.cases(device)
            + nerf.cases(device))


def select(cases: Sequence[Case], tier: str = "quick", pattern: Optional[str] = None
           ) -> list[Case]:
    """quick: the quick tier; full: every case. ``pattern`` is a regex searched in the case id."""
    chosen = [c for c in cases if tier == "full" or c.tier == "quick"]
    if pattern:
        rx = re.compile(pattern)
        chosen = [c for c in chosen if rx.search(c.id)]
    return chosen


class _Progress:
    """One status line on stderr, rewritten in place on a terminal, one line per case otherwise."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream, self.t0 = total, stream, time.perf_counter()
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.index, self.case = 0, ""

    def start(self, case: Case) -> None:
        self.index += 1
        self.case = case.id
        if not self.tty:
            self._write(f"[{self.index}/{self.total}] {case.id}\n")

    def update(self, step: str) -> None:
        if self.tty:
            done = int(20 * (self.index - 1) / max(1, self.total))
            line = (f"\r[{'#' * done}{'.' * (20 - done)}] {self.index}/{self.total} "
                    f"{time.perf_counter() - self.t0:5.0f}s {self.case}: {step}")
            self._write(line[:160].ljust(160))

    def finish(self) -> None:
        if self.tty:
            self._write("\r" + " " * 160 + "\r")
        self._write(f"{self.total} cases in {time.perf_counter() - self.t0:.0f} s\n")

    def _write(self, s: str) -> None:
        self.stream.write(s)
        self.stream.flush()


def run(cases: Sequence[Case], repeats: int = 7, warmup: int = 2, progress: bool = True
        ) -> list[Result]:
    bar = _Progress(len(cases)) if progress else None
    copy_gbps = {dev: copy_bandwidth(dev) for dev in sorted({c.device for c in cases})}
    results = []
    for case in cases:
        if bar:
            bar.start(case)
        results.append(measure(case, repeats=repeats, warmup=warmup,
                               progress=bar.update if bar else None,
                               copy_gbps=copy_gbps[case.device]))
    if bar:
        bar.finish()
    return results


def _fmt(v: Optional[float], spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _others(r: Result) -> str:
    """The peers the table's peer column does not show: 'name ms (×ratio)'."""
    shown = {"fastgen", "reference", r.peer}
    cells = [f"{k} {v:.2f} ms ({r.speedup(k):.2f}x)" for k, v in r.ms.items()
             if k not in shown and v is not None and r.speedup(k) is not None]
    return "; ".join(cells) or "-"


def _rate(per_s: float, item: str) -> str:
    """Items per second with a readable prefix: 8.3e4 -> '83 k tok/s'."""
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_s >= scale:
            return f"{per_s / scale:.3g} {prefix}{item}/s"
    return f"{per_s:.3g} {item}/s"


def format_table(results: Sequence[Result]) -> str:
    """Markdown table: one row per case, ratios > 1 mean fastgen is faster.

    max error is fastgen's, ref error the reference's own (same dtype), both against float64;
    floor ms is the case's minimum traffic at the device's measured copy bandwidth; peak MB (CUDA
    only) is the extra device memory one fastgen call needs; TFLOP/s (where a case counts its
    FLOPs) is fastgen's and the best peer's; rate (where a case counts its items) is fastgen's
    items per second.
    """
    head = ["op", "case", "device", "dtype", "backend", "fastgen ms", "reference ms", "peer",
            "peer ms", "x reference", "x peer", "max error", "ref error", "GB/s", "floor ms"]
    with_peak = any(r.peak_mb for r in results)
    if with_peak:
        head.append("peak MB")
    with_flops = any(r.flops for r in results)
    if with_flops:
        head += ["TFLOP/s", "peer TFLOP/s"]
    with_rate = any(r.items for r in results)
    if with_rate:
        head.append("rate")
    with_others = any(len(r.ms) > 3 for r in results)
    if with_others:
        head.append("other peers")
    rows = []
    for r in results:
        peer = r.peer
        rows.append([
            r.op, r.name, r.device, r.dtype, r.backend, _fmt(r.ms.get("fastgen"), ".2f"),
            _fmt(r.ms.get("reference"), ".2f"), peer or "-",
            _fmt(r.ms.get(peer) if peer else None, ".2f"), _fmt(r.speedup("reference"), ".2f"),
            _fmt(r.speedup(peer) if peer else None, ".2f"), _fmt(r.max_error, ".1e"),
            _fmt(r.ref_error, ".1e"), _fmt(r.gbps, ".1f"), _fmt(r.floor_ms, ".2f")]
            + ([_fmt(r.peak_mb.get("fastgen"), ".0f")] if with_peak else [])
            + ([_fmt(r.tflops(), ".3g"), _fmt(r.tflops(peer) if peer else None, ".3g")]
               if with_flops else [])
            + ([_rate(r.rate(), r.item) if r.rate() else "-"] if with_rate else [])
            + ([_others(r)] if with_others else []))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def _git_sha() -> Optional[str]:
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def metadata() -> dict:
    import fastgen

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fastgen": fastgen.__version__, "git": _git_sha(), "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    return meta


def write_json(path: str, results: Sequence[Result], meta: dict) -> None:
    rows = []
    for r in results:
        d = dict(vars(r))
        d.update(gbps=r.gbps, floor_ms=r.floor_ms, peer=r.peer, tflops=r.tflops(), rate=r.rate(),
                 speedup_vs_reference=r.speedup("reference"),
                 speedup_vs_peer=r.speedup(r.peer) if r.peer else None)
        rows.append(d)
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=2)


def plot(path: str, results: Sequence[Result]) -> None:
    """Horizontal bars: fastgen's speedup over the reference and over the best peer, per case."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install 'fastgen-kernels[bench]'") from None
    labels = [f"{r.op} {r.name} ({r.device}, {r.dtype})" for r in results]
    vs_ref = [r.speedup("reference") or 0 for r in results]
    vs_peer = [(r.speedup(r.peer) if r.peer else None) or 0 for r in results]
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(results) + 1.5))
    ys = range(len(results))
    ax.barh([y + 0.2 for y in ys], vs_ref, height=0.4, label="vs reference (eager PyTorch)")
    ax.barh([y - 0.2 for y in ys], vs_peer, height=0.4, label="vs best peer")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.set_xlabel("speedup (x, higher is better)")
    ax.legend(loc="lower right")
    ax.set_title("fastgen bench")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

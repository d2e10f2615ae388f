"""What this installation is: versions, build flags, devices, and the backend each op uses."""

from __future__ import annotations

import importlib.metadata
import platform

import torch

from . import _ext, registry

__all__ = ["collect", "format_info"]


def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect() -> dict:
    import fastgen

    devices = ["cpu"]
    cuda = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if cuda["available"]:
        devices.append("cuda")
        cuda["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "fastgen": fastgen.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numba": _version("numba"),
        "numpy": _version("numpy"),
        "build": _ext.build_info(),
        "extension": {"loaded": _ext.available(), "reason": _ext.unavailable_reason(),
                      "compiled": _ext.compiled_info()},
        "cpu_threads": torch.get_num_threads(),
        "cpu_buffer_cache": _cache_state(),
        "cuda": cuda,
        "backends": registry.describe(tuple(devices)),
    }


def _cache_state() -> dict:
    try:
        return _ext.cpu_buffer_cache()
    except RuntimeError as e:  # a malformed FASTGEN_CPU_POOL_MB
        return {"error": str(e).splitlines()[0]}


def _cache_line(c: dict) -> str:
    if "error" in c:
        return c["error"]
    if not c:
        return "none (extension not loaded)"
    if c["capacity_bytes"] == 0:
        return "off (FASTGEN_CPU_POOL_MB=0)"
    return (f"up to {c['capacity_bytes'] >> 20} MiB (FASTGEN_CPU_POOL_MB), "
            f"{c['cached_bytes'] / 2**20:.1f} MiB held, {c['hits']} reuses, "
            f"{c['misses']} allocations")


def format_info(info: dict) -> str:
    b, ext = info["build"], info["extension"]
    lines = [
        f"fastgen {info['fastgen']}  (python {info['python']})",
        f"torch   {info['torch']}  (CUDA {info['cuda']['torch_cuda'] or 'none'})",
        f"triton  {info['triton'] or 'not installed'}",
        f"numba   {info['numba'] or 'not installed'}",
        f"numpy   {info['numpy'] or 'not installed'}",
        "",
        "build:   " + (f"extension built (CPU ISA {b.get('cpu_isa')}, CUDA kernels "
                       f"{'yes, ' + str(b.get('cuda_arch_list')) if b.get('cuda') else 'no'}, "
                       f"against torch {b.get('torch')})" if b.get("ext") else
                       "no extension (FASTGEN_BUILD_EXT=0)" if b else "unknown (no build record)"),
        "loaded:  " + ("yes" if ext["loaded"] else f"no: {ext['reason']}"),
        f"devices: cpu ({info['cpu_threads']} threads)"
        + (", cuda: " + ", ".join(info["cuda"]["devices"]) if info["cuda"]["available"]
           else ", no CUDA device"),
        "cpu buffer cache: " + _cache_line(info.get("cpu_buffer_cache") or {}),
        "",
        "backend per op (chosen without arguments; FASTGEN_BACKEND or backend= override):",
    ]
    for row in info["backends"]:
        lines.append(f"  {row['op']:<12} {row['device']:<5} -> {row['backend'] or 'none'}")
        for name, why in row["reasons"].items():
            if why is not None:
                lines.append(f"  {'':<12} {'':<5}    {name}: {why}")
    return "\n".join(lines)

"""Build script for fastgen-kernels.

Builds the compiled extension ``fastgen._C`` from ``csrc/`` with ninja, against the torch that is
already installed (hence ``pip install --no-build-isolation``). Switches, all environment variables:

* ``FASTGEN_BUILD_EXT=0``  build no native code; references and Triton kernels still work.
* ``FORCE_CUDA=1``         compile the CUDA sources, or fail loudly if that is impossible (no CUDA
                           torch). Without it, CUDA is compiled whenever torch has CUDA and nvcc is
                           found. A visible GPU is never needed: without one the architectures
                           come from ``TORCH_CUDA_ARCH_LIST`` (default 8.0;8.6;8.9;9.0+PTX).
* ``FASTGEN_CPU_ISA``      ``avx512``, ``avx2`` or ``none``: the instruction set the CPU kernels
                           are vectorised for. Default: the widest the building CPU has (a source
                           build is for the machine it is built on); set ``avx2`` for a wheel
                           that other x86-64 machines will run. The loader refuses a build whose
                           ISA the running CPU lacks, instead of crashing on an illegal instruction.
* ``MAX_JOBS``             parallel compile jobs; when unset it is sized from cores and memory.

The choices made here are written to ``fastgen/_build_info.json`` so that ``fastgen info`` and the
loader can report them without importing the extension.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
BUILD_INFO = os.path.join(ROOT, "fastgen", "_build_info.json")


def _env_flag(name: str, default: str = "0") -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def _size_max_jobs(with_cuda: bool) -> None:
    """Pick MAX_JOBS from cores and memory unless the user set it (nvcc jobs need ~4 GB each)."""
    if os.environ.get("MAX_JOBS"):
        return
    jobs = os.cpu_count() or 1
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        jobs = max(1, min(jobs, int(mem_gb // (4 if with_cuda else 1))))
    except (ValueError, OSError, AttributeError):
        pass
    os.environ["MAX_JOBS"] = str(jobs)


def _best_isa() -> str:
    """The widest ISA this (building) CPU runs: a source build targets the machine it runs on."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "none"
    import torch

    if getattr(torch.cpu, "_is_avx512_supported", lambda: False)():
        return "avx512"
    return "avx2" if getattr(torch.cpu, "_is_avx2_supported", lambda: True)() else "none"


# Compiler flags per FASTGEN_CPU_ISA value (a literal: scripts/check_isa_compile.sh reads it).
CPU_ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
    "none": [],
}


def _cpu_isa_flags() -> tuple[str, list[str]]:
    isa = os.environ.get("FASTGEN_CPU_ISA", "").strip().lower()
    if not isa:
        isa = _best_isa()
    if isa not in CPU_ISA_FLAGS:
        raise SystemExit(f"FASTGEN_CPU_ISA must be one of avx2, avx512, none; got {isa!r}")
    return isa, list(CPU_ISA_FLAGS[isa])


def _guess_cuda_home() -> None:
    """Point CUDA_HOME at the toolkit that owns the nvcc on PATH, when the user has not.

    torch guesses dirname(dirname(nvcc)), which is wrong when nvcc is a symlink or a wrapper
    script (for example /usr/local/bin/nvcc running /usr/local/cuda-13.0/bin/nvcc): compiling
    works, then linking -lcudart fails. Must run before torch.utils.cpp_extension is imported,
    which reads CUDA_HOME once.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return
    for home in (os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "/usr/local/cuda"):
        if os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            os.environ["CUDA_HOME"] = home
            return


def _want_cuda(torch) -> bool:
    from torch.utils.cpp_extension import CUDA_HOME

    forced = _env_flag("FORCE_CUDA")
    if forced and torch.version.cuda is None:
        raise SystemExit(
            "FORCE_CUDA=1 but the installed torch has no CUDA support "
            f"(torch {torch.__version__}); install a CUDA build of torch or unset FORCE_CUDA."
        )
    if forced:
        return True
    has_nvcc = CUDA_HOME is not None or shutil.which("nvcc") is not None
    return torch.version.cuda is not None and has_nvcc


def _extensions():
    info = {"ext": False, "cuda": False, "cpu_isa": None, "torch": None, "cuda_version": None,
            "cuda_arch_list": None}
    if not _env_flag("FASTGEN_BUILD_EXT", "1"):
        return [], {}, info

    _guess_cuda_home()
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    with_cuda = _want_cuda(torch)
    _size_max_jobs(with_cuda)
    isa, isa_flags = _cpu_isa_flags()

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # -fopenmp: at::parallel_for is inline OpenMP in torch's headers; without it every CPU kernel
    # silently runs on one thread. The libgomp torch already loaded is reused at import.
    cxx = ["-O3", "-fopenmp", *isa_flags]  # the C++ standard is torch's choice (C++20 from 2.14)
    define_macros = []
    ext_cls = CppExtension
    nvcc = []
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # No GPU to ask: cover Ampere, Ada and Hopper, with PTX for newer parts.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;8.6;8.9;9.0+PTX"
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("FASTGEN_WITH_CUDA", None))
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        ext_cls = CUDAExtension
    ext = ext_cls(
        name="fastgen._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc} if with_cuda else {"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )
    info.update(ext=True, cuda=with_cuda, cpu_isa=isa, torch=torch.__version__,
                cuda_version=torch.version.cuda if with_cuda else None,
                cuda_arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None)
    class BuildExt(BuildExtension.with_options(use_ninja=True)):
        """Records the build choices only once the extension has been built."""

        def run(self):
            super().run()
            _write_build_info(info, os.path.join(self.build_lib, "fastgen"))
            _write_build_info(info, os.path.dirname(BUILD_INFO))

    return [ext], {"build_ext": BuildExt}, info


def _write_build_info(info: dict, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, os.path.basename(BUILD_INFO)), "w") as f:
        json.dump(info, f, indent=2)


ext_modules, cmdclass, build_info = _extensions()
if not ext_modules:
    _write_build_info(build_info, os.path.dirname(BUILD_INFO))

packages = find_packages(include=["fastgen", "fastgen.*"]) + ["fastgen.kernels"]

setup(
    packages=packages,
    package_dir={"fastgen.kernels": "kernels"},
    package_data={"fastgen": ["_build_info.json"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)

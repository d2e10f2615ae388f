// Python module `fastgen._C`. Loading it registers the `fastgen` ops with the PyTorch dispatcher
// (see registration.cpp); its Python-level functions report how the binary was built (so the
// loader can compare it with the running torch) and manage the CPU buffer cache.
#include <torch/extension.h>

#include <string>

#include "cpu/buffer_pool.h"

namespace fastgen {
#ifdef FASTGEN_WITH_CUDA
std::string cuda_build_summary();  // csrc/cuda/build_info.cu
#endif
}  // namespace fastgen

namespace {

pybind11::dict build_info() {
  pybind11::dict d;
  d["torch_version"] = TORCH_VERSION;
#if defined(CPU_CAPABILITY_AVX512)
  d["cpu_isa"] = "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  d["cpu_isa"] = "avx2";
#else
  d["cpu_isa"] = "none";
#endif
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
#ifdef FASTGEN_WITH_CUDA
  d["cuda"] = true;
  d["cuda_summary"] = fastgen::cuda_build_summary();
#else
  d["cuda"] = false;
#endif
  return d;
}

pybind11::dict cpu_pool_stats() {
  const fastgen::cpu_pool::Stats s = fastgen::cpu_pool::stats();
  pybind11::dict d;
  d["cached_bytes"] = s.cached_bytes;
  d["cached_blocks"] = s.cached_blocks;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["capacity_bytes"] = s.capacity;
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgen compiled kernels; ops are reached through torch.ops.fastgen";
  m.def("build_info", &build_info, "How this extension was built (torch version, CPU ISA, CUDA).");
  m.def("cpu_pool_stats", &cpu_pool_stats,
        "State of the cache of large CPU buffers (csrc/cpu/buffer_pool.h).");
  m.def("cpu_pool_release", &fastgen::cpu_pool::release,
        "Return every cached CPU buffer to the system.");
}

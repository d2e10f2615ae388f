// Python module `fastgen._C`. Loading it registers the `fastgen` ops with the PyTorch dispatcher
// (see registration.cpp); the only Python-level function reports how the binary was built, so
// the loader can compare it with the running torch.
#include <torch/extension.h>

#include <string>

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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgen compiled kernels; ops are reached through torch.ops.fastgen";
  m.def("build_info", &build_info, "How this extension was built (torch version, CPU ISA, CUDA).");
}

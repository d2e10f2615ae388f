// Python module `fastgen._C`. Loading it registers the `fastgen` ops with the PyTorch dispatcher
// (see registration.cpp); its Python-level functions report how the binary was built (so the
// loader can compare it with the running torch), manage the CPU buffer cache and call the sampler
// step kernel without the dispatcher.
#include <torch/extension.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/buffer_pool.h"
#include "cpu/sampler.h"

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

// The same kernel called without the dispatcher: ~1 µs of argument handling instead of ~4 µs
// (schema parsing, boxing). Only for plain eager calls on CPU tensors that need no autograd;
// fastgen/ops/sampler.py checks that (no torch.compile or torch.jit trace, no modes, no
// functorch, no subclass) and uses torch.ops.fastgen.sampler_step otherwise.
std::tuple<at::Tensor, at::Tensor> sampler_step_eager(
    const at::Tensor& x, const at::Tensor& m, const std::optional<at::Tensor>& u,
    const std::optional<at::Tensor>& h1, const std::optional<at::Tensor>& h2,
    const std::optional<at::Tensor>& z, const std::vector<double>& coeffs,
    std::optional<double> clip, bool want_x0) {
  auto odd = [](const at::Tensor& t) { return t.is_neg() || t.is_conj() || t._is_zerotensor(); };
  auto odd_opt = [&](const std::optional<at::Tensor>& t) { return t && odd(*t); };
  if (odd(x) || odd(m) || odd_opt(u) || odd_opt(h1) || odd_opt(h2) || odd_opt(z)) {
    // lazily negated or zero tensors: the dispatcher's fallbacks materialise them first
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastgen::sampler_step", "")
                               .typed<std::tuple<at::Tensor, at::Tensor>(
                                   const at::Tensor&, const at::Tensor&,
                                   const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, at::ArrayRef<double>,
                                   std::optional<double>, bool)>();
    return op.call(x.contiguous(), m.contiguous(), u, h1, h2, z, coeffs, clip, want_x0);
  }
  RECORD_FUNCTION("fastgen::sampler_step", std::vector<c10::IValue>());
  // sample and model_output of any layout, as fastgen/ops/sampler.py's other paths take them
  return fastgen::sampler_step_cpu(x.contiguous(), m.contiguous(), u, h1, h2, z, coeffs, clip,
                                   want_x0);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgen compiled kernels; ops are reached through torch.ops.fastgen";
  m.def("build_info", &build_info, "How this extension was built (torch version, CPU ISA, CUDA).");
  m.def("cpu_pool_stats", &cpu_pool_stats,
        "State of the cache of large CPU buffers (csrc/cpu/buffer_pool.h).");
  m.def("sampler_step_eager", &sampler_step_eager,
        "torch.ops.fastgen.sampler_step's CPU kernel without the dispatcher (plain eager calls "
        "only; see fastgen/ops/sampler.py).",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("cpu_pool_release", &fastgen::cpu_pool::release,
        "Return every cached CPU buffer to the system.");
}

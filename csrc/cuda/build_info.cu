// CUDA side of the build report: which toolkit compiled the device code and for which
// architectures, so `fastgen info` can show a mismatch with the running GPU before a launch fails.
#include <cuda_runtime_api.h>

#include <string>

#define FASTGEN_STR_(...) #__VA_ARGS__
#define FASTGEN_STR(...) FASTGEN_STR_(__VA_ARGS__)

namespace fastgen {

std::string cuda_build_summary() {
  const int v = CUDART_VERSION;
  std::string s = "CUDA runtime " + std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
#ifdef __CUDA_ARCH_LIST__
  // nvcc (11.5+) defines this in the host pass as e.g. 800,860,900.
  s += ", sm " FASTGEN_STR(__CUDA_ARCH_LIST__);
#endif
  return s;
}

}  // namespace fastgen

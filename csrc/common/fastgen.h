// Shared definitions for fastgen's native code: used by host (CPU) and device (CUDA) sources.
#pragma once

// Marks per-element / per-ray logic that CPU launchers and CUDA kernels both call, so the code
// a GPU runs is the code the CPU tests exercise.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTGEN_HD __host__ __device__ __forceinline__
#else
#define FASTGEN_HD inline
#endif

namespace fastgen {

// Work per task for at::parallel_for: large enough to amortise scheduling, small enough that a
// 2-core machine and a 100-core machine both get balanced chunks.
constexpr long kElementsPerTask = 1L << 15;

}  // namespace fastgen

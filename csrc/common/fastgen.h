// Shared definitions for fastgen's native code: used by host (CPU) and device (CUDA) sources.
#pragma once

// Marks per-element / per-ray logic that CPU launchers and CUDA kernels both call, so the code
// a GPU runs is the code the CPU tests exercise.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTGEN_HD __host__ __device__ __forceinline__
#else
#define FASTGEN_HD inline
#endif

// Unroll hint for loops with compile-time bounds: corner loops unrolled turn their bit tests
// into constants, which halves the instruction count of the hash-grid inner loops.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTGEN_UNROLL _Pragma("unroll")
#elif defined(__clang__)
#define FASTGEN_UNROLL _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__)
#define FASTGEN_UNROLL _Pragma("GCC unroll 16")
#else
#define FASTGEN_UNROLL
#endif

namespace fastgen {

// Work per task for at::parallel_for: large enough to amortise scheduling, small enough that a
// 2-core machine and a 100-core machine both get balanced chunks.
constexpr long kElementsPerTask = 1L << 15;

}  // namespace fastgen

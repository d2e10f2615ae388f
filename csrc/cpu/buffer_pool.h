// Large CPU buffers for fastgen's own outputs and scratch, reused across calls.
//
// A training step allocates the same few multi-megabyte tensors every iteration (the fused MLP's
// hidden activations, the hash grid's outputs and gradients). Fresh ones come from the C library
// as new pages whenever glibc's heuristics return the old ones to the system, and the kernel then
// zero-fills and maps each 4 KiB page on first touch: ~10 ms of a 65-80 ms image-fitting step on
// one 2-core VM (an A/B with glibc's mmap threshold), nothing on another. empty() hands out such
// buffers from a process-wide cache of freed blocks instead, like PyTorch's CUDA caching
// allocator does on GPU, so that cost does not depend on the C library.
//
// * Requests under kMinPooledBytes go to at::empty unchanged.
// * A freed block is kept for reuse while the cache holds at most capacity() bytes; beyond that the
//   oldest cached blocks are returned to the system. FASTGEN_CPU_POOL_MB sets the capacity
//   (default 512; 0 turns the pool off); fastgen.empty_cpu_cache() empties the cache.
// * A request takes the smallest cached block of at least its size and at most 1/8 larger (among
//   blocks of that size, the most recently freed: the likeliest to be in cache).
// * Tensors from the pool are ordinary resizable CPU tensors; their memory is uninitialised (NaN
//   filled under torch.use_deterministic_algorithms, as at::empty does).
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>

namespace fastgen {
namespace cpu_pool {

constexpr std::size_t kMinPooledBytes = std::size_t(1) << 20;

// at::empty(sizes, options) on CPU, contiguous, from the pool when the buffer is large.
at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options);

struct Stats {
  std::int64_t cached_bytes;  // held by the cache, free for reuse
  std::int64_t cached_blocks;
  std::int64_t hits;          // requests served from the cache
  std::int64_t misses;        // requests that allocated a new block
  std::int64_t capacity;      // bytes the cache may hold
};
Stats stats();

// Returns every cached block to the system; buffers in use are unaffected.
void release();

}  // namespace cpu_pool
}  // namespace fastgen

// The CPU buffer cache of buffer_pool.h.
#include "cpu/buffer_pool.h"

#include <ATen/Context.h>
#include <ATen/EmptyTensor.h>
#include <ATen/native/TensorFactories.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <limits>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastgen {
namespace cpu_pool {
namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kHugePage = std::size_t(2) << 20;

std::int64_t capacity_from_env() {
  const char* s = std::getenv("FASTGEN_CPU_POOL_MB");
  if (s == nullptr || *s == '\0') return std::int64_t(512) << 20;
  char* end = nullptr;
  long long mb = std::strtoll(s, &end, 10);
  TORCH_CHECK(end != s && *end == '\0' && mb >= 0 &&
                  mb <= (std::numeric_limits<std::int64_t>::max() >> 20),
              "FASTGEN_CPU_POOL_MB must be a whole number of megabytes >= 0 (0 turns fastgen's "
              "CPU buffer cache off), got '", s, "'");
  return std::int64_t(mb) << 20;
}

struct Block {
  void* ptr;
  std::size_t bytes;
};

class Pool final : public c10::Allocator {
 public:
  Pool() : capacity_(capacity_from_env()) {}

  std::int64_t capacity() const { return capacity_; }

  // The DataPtr's context is the data pointer itself (as for PyTorch's own CPU allocations, which
  // copy-on-write clones rely on); the block sizes of live buffers are kept in live_.
  c10::DataPtr allocate(std::size_t n) override {
    Block b = take(n);
    {
      std::lock_guard<std::mutex> lock(mu_);
      live_[b.ptr] = b.bytes;
    }
    return {b.ptr, b.ptr, &Pool::give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {cached_, std::int64_t(free_.size()), hits_, misses_, capacity_};
  }

  void release() {
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(free_);
      cached_ = 0;
    }
    for (const Block& b : drop) std::free(b.ptr);
  }

 private:
  Block take(std::size_t n) {
    const std::size_t want = (std::max<std::size_t>(n, 1) + kPage - 1) / kPage * kPage;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::size_t best = free_.size();
      for (std::size_t i = 0; i < free_.size(); ++i) {
        const std::size_t have = free_[i].bytes;
        // the smallest fit; among equal sizes the most recently freed (likeliest in cache)
        if (have >= want && have - want <= want / 8 &&
            (best == free_.size() || have <= free_[best].bytes)) {
          best = i;
        }
      }
      if (best != free_.size()) {
        Block b = free_[best];
        free_.erase(free_.begin() + std::ptrdiff_t(best));
        cached_ -= std::int64_t(b.bytes);
        ++hits_;
        return b;
      }
      ++misses_;
    }
    const std::size_t align = want >= kHugePage ? kHugePage : 64;
    void* p = nullptr;
    if (posix_memalign(&p, align, want) != 0 || p == nullptr) {
      // The cache may be holding what the system cannot give: drop it and try once more.
      release();
      if (posix_memalign(&p, align, want) != 0 || p == nullptr) {
        TORCH_CHECK_WITH(OutOfMemoryError, false, "fastgen CPU buffer: out of memory allocating ",
                         want, " bytes");
      }
    }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    // Fewer first-touch faults and TLB misses for multi-megabyte buffers; advice only.
    if (align == kHugePage) madvise(p, want, MADV_HUGEPAGE);
#endif
    return {p, want};
  }

  void keep(void* ptr) {
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto it = live_.find(ptr);
      TORCH_INTERNAL_ASSERT(it != live_.end(), "fastgen CPU buffer: freeing an unknown block");
      const Block b{ptr, it->second};
      live_.erase(it);
      if (std::int64_t(b.bytes) > capacity_) {
        drop.push_back(b);
      } else {
        free_.push_back(b);
        cached_ += std::int64_t(b.bytes);
        std::size_t oldest = 0;
        while (cached_ > capacity_) {
          cached_ -= std::int64_t(free_[oldest].bytes);
          drop.push_back(free_[oldest++]);
        }
        free_.erase(free_.begin(), free_.begin() + std::ptrdiff_t(oldest));
      }
    }
    for (const Block& d : drop) std::free(d.ptr);
  }

  static void give_back(void* ctx);

  const std::int64_t capacity_;
  std::mutex mu_;
  std::vector<Block> free_;  // oldest first
  std::unordered_map<void*, std::size_t> live_;  // handed out: data pointer -> block bytes
  std::int64_t cached_ = 0;
  std::int64_t hits_ = 0;
  std::int64_t misses_ = 0;
};

// Never destroyed: tensors freed during interpreter shutdown still return their blocks here.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

void Pool::give_back(void* ctx) { pool().keep(ctx); }

}  // namespace

at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const std::size_t bytes = std::size_t(numel) * options.dtype().itemsize();
  Pool& p = pool();
  if (bytes < kMinPooledBytes || p.capacity() == 0) return at::empty(sizes, options);
  at::Tensor t = at::detail::empty_generic(sizes, &p, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                           options.dtype().toScalarType(),
                                           c10::MemoryFormat::Contiguous);
  // as at::empty: deterministic mode fills uninitialised memory (NaN for floating types)
  if (at::globalContext().deterministicAlgorithms() &&
      at::globalContext().deterministicFillUninitializedMemory()) {
    at::native::fill_empty_deterministic_(t);
  }
  return t;
}

Stats stats() { return pool().stats(); }

void release() { pool().release(); }

}  // namespace cpu_pool
}  // namespace fastgen

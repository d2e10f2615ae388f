// CPU kernel for fastgen::gather_rows (fastgen/ops/gather.py; schema in csrc/registration.cpp):
// out[i] = table[index[i]], the rows of a contiguous [R, C] table at random indices — a training
// batch drawn from a table of samples (fastgen.models.image's pixels).
//
// Random rows of a table larger than the cache are DRAM misses, one per row; aten's index_select
// takes them one after another (~1.1 ms for 2^16 rows of a 5 MiB table right after other work on
// the 2-core AMD VM). Here each row is prefetched kAhead rows before it is copied, so ~kAhead
// misses are in flight per thread (0.43 ms on the same measurement).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

namespace fastgen {
namespace {

constexpr int64_t kAhead = 24;      // rows prefetched ahead of the copy
constexpr int64_t kGrain = 4096;    // rows per task

template <typename I>
void gather(const char* table, int64_t R, int64_t row_bytes, const I* index, int64_t N, char* out,
            std::atomic<int64_t>& bad) {
  at::parallel_for(0, N, kGrain, [&](int64_t a, int64_t b) {
    auto ahead = [&](int64_t i) {
      const int64_t r = static_cast<int64_t>(index[i]);
      if (r >= 0 && r < R) {
        const char* p = table + r * row_bytes;
        __builtin_prefetch(p);
        __builtin_prefetch(p + row_bytes - 1);   // a row may straddle two lines
      }
    };
    for (int64_t i = a; i < std::min(b, a + kAhead); ++i) ahead(i);
    for (int64_t i = a; i < b; ++i) {
      if (i + kAhead < b) ahead(i + kAhead);
      const int64_t r = static_cast<int64_t>(index[i]);
      if (r < 0 || r >= R) {   // reported after the loop (first bad position kept)
        int64_t seen = bad.load(std::memory_order_relaxed);
        while ((seen < 0 || i < seen) && !bad.compare_exchange_weak(seen, i)) {}
        continue;
      }
      std::memcpy(out + i * row_bytes, table + r * row_bytes, row_bytes);
    }
  });
}

at::Tensor gather_rows_cpu(const at::Tensor& table, const at::Tensor& index) {
  TORCH_CHECK(table.device().is_cpu() && index.device().is_cpu(),
              "fastgen::gather_rows: table and index must be CPU tensors");
  TORCH_CHECK(table.dim() == 2 && table.is_contiguous(),
              "fastgen::gather_rows: table must be a contiguous [R, C] tensor, got ",
              table.sizes());
  TORCH_CHECK(index.dim() == 1 && (index.scalar_type() == at::kLong ||
                                   index.scalar_type() == at::kInt) && index.is_contiguous(),
              "fastgen::gather_rows: index must be a contiguous 1-D int64 or int32 tensor, got ",
              index.sizes(), " ", index.scalar_type());
  const int64_t R = table.size(0), N = index.size(0);
  at::Tensor out = at::empty({N, table.size(1)}, table.options());
  const int64_t row_bytes = table.size(1) * int64_t(table.element_size());
  if (N == 0 || row_bytes == 0) {
    TORCH_CHECK(N == 0 || R > 0, "fastgen::gather_rows: index holds ", N,
                " entries but table has no rows");
    return out;
  }
  std::atomic<int64_t> bad{-1};
  const char* tp = static_cast<const char*>(table.data_ptr());
  char* op = static_cast<char*>(out.data_ptr());
  if (index.scalar_type() == at::kLong) {
    gather(tp, R, row_bytes, index.data_ptr<int64_t>(), N, op, bad);
  } else {
    gather(tp, R, row_bytes, index.data_ptr<int32_t>(), N, op, bad);
  }
  const int64_t i = bad.load();
  TORCH_CHECK_INDEX(i < 0, "fastgen::gather_rows: index[", i, "] = ",
              index.scalar_type() == at::kLong ? index.data_ptr<int64_t>()[i]
                                               : int64_t(index.data_ptr<int32_t>()[i]),
              " is out of range for a table of ", R, " rows");
  return out;
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) { m.impl("gather_rows", &fastgen::gather_rows_cpu); }

// CPU kernel for decode_linear: y = x Wᵀ + b for a few rows of x (a decode step's projections;
// fastgen/ops/linear.py, schema in csrc/registration.cpp).
//
// With one to sixteen rows the product is bound by reading W, which ATen's GEMM reads at about
// half the memory bandwidth on small M. Here each thread streams a contiguous range of W's rows
// once against up to eight rows of x per pass (dot_rows: each load of W feeds one FMA per row
// of x, accumulators in registers), and x, a few KB, stays in L1. Each output is one fixed-order vector dot product, so
// results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "cpu/vec_io.h"

namespace fastgen {
namespace {

at::Tensor decode_linear_cpu(const at::Tensor& x, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "fastgen::decode_linear: CPU tensors");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "fastgen::decode_linear: x [M, K] and weight [N, K] expected, got ", x.sizes(),
              " and ", w.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "fastgen::decode_linear: float32 or float64 x and weight of one dtype");
  const int64_t M = x.size(0), N = w.size(0), K = x.size(1);
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N && bias->scalar_type() == x.scalar_type(),
                "fastgen::decode_linear: bias must be [N] of x's dtype");
  }
  const at::Tensor xc = x.contiguous(), wc = w.contiguous();
  const at::Tensor bc = bias ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({M, N}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "decode_linear", [&] {
    using T = scalar_t;
    const T *xp = xc.data_ptr<T>(), *wp = wc.data_ptr<T>();
    const T* bp = bias ? bc.data_ptr<T>() : nullptr;
    T* op = out.data_ptr<T>();
    // a task of at least 16 KB of W, so that a thread streams long contiguous runs
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(K, 1));
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      T s8[kDotRows];
      for (int64_t n = begin; n < end; ++n) {
        const T* wr = wp + n * K;
        const T b = bp ? bp[n] : T(0);
        for (int64_t m0 = 0; m0 < M; m0 += kDotRows) {
          const int64_t nr = std::min<int64_t>(kDotRows, M - m0);
          dot_rows(xp + m0 * K, nr, wr, K, s8);
          for (int64_t m = m0; m < m0 + nr; ++m) op[m * N + n] = s8[m - m0] + b;
        }
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("decode_linear", &fastgen::decode_linear_cpu);
}

// CPU kernel for decode_linear: y = x Wᵀ + b for a few rows of x (a decode step's projections;
// fastgen/ops/linear.py, schema in csrc/registration.cpp).
//
// With one to sixteen rows the product is bound by reading W. Each thread streams a contiguous
// range of W's rows once, RW rows at a time against RX rows of x (tile_dot in vec_io.h: per
// vector of K, RW + RX loads feed RW·RX FMAs into independent accumulators, so neither the load
// ports nor one FMA chain's latency limits the stream), and x, a few KB, stays in L1/L2. Each
// output is one fixed-order vector dot product, so results do not depend on the tile an output
// falls in or on the thread count.
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

// how far ahead the prefetch runs, in rows of W (4 to 48 rows, into L1 or L2, measured alike;
// a 3 x 8 tile for 5-8 rows of x measured as fast as 2 x 8)
constexpr int64_t kPfRows = 4;

// Rows [n0, n1) of W against every row of x, RW rows of W by up to RX rows of x per tile (RW·RX
// accumulators: 4 x 4 or 2 x 8, which fit AVX-512's 32 vector registers; on an AVX2 build, with
// 16, the same tiles measured faster than 4 x 2 / 2 x 4 ones that fit: 18.2 vs 21.2 ms for a
// Llama step's projections at 8 rows, the compiler feeding x from memory operands); rows past
// the last whole tile one at a time. A tile's first pass prefetches the next tiles' rows when
// they lie in [n0, n1).
template <int RW, typename T>
void weight_rows(const T* x, int64_t M, const T* w, int64_t K, const T* b, T* out, int64_t N,
                 int64_t n0, int64_t n1) {
  constexpr int64_t RX = RW >= 4 ? 4 : 8;
  constexpr int64_t kPfTiles = (kPfRows + RW - 1) / RW;
  int64_t n = n0;
  for (; n + RW <= n1; n += RW) {
    for (int64_t m0 = 0; m0 < M; m0 += RX) {
      const T* pf = m0 == 0 && n + (kPfTiles + 1) * RW <= n1 ? w + (n + kPfTiles * RW) * K
                                                                : static_cast<const T*>(nullptr);
      tile_rows<RW>(x + m0 * K, std::min<int64_t>(RX, M - m0), w + n * K, K,
                    b ? b + n : nullptr, out + m0 * N + n, N, pf);
    }
  }
  for (; n < n1; ++n) {
    for (int64_t m0 = 0; m0 < M; m0 += kDotRows) {
      tile_rows<1>(x + m0 * K, std::min<int64_t>(kDotRows, M - m0), w + n * K, K,
                   b ? b + n : nullptr, out + m0 * N + n, N);
    }
  }
}

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
  if (M == 0 || N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "decode_linear", [&] {
    using T = scalar_t;
    const T *xp = xc.data_ptr<T>(), *wp = wc.data_ptr<T>();
    const T* bp = bias ? bc.data_ptr<T>() : nullptr;
    T* op = out.data_ptr<T>();
    // tasks of at least 16 KB of W, so a thread streams long contiguous runs; four rows of W
    // per tile for up to four rows of x, else two (x in one pass of up to eight rows)
    const int64_t grain = std::max<int64_t>(4, 4096 / std::max<int64_t>(K, 1));
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      if (M <= 4) {
        weight_rows<4>(xp, M, wp, K, bp, op, N, begin, end);
      } else {
        weight_rows<2>(xp, M, wp, K, bp, op, N, begin, end);
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

// CPU kernels for the softcap tiles of attention's blockwise CPU backend
// (fastgen/ops/_attention_blockwise.py; schemas and the math in csrc/registration.cpp).
//
// The tile's matmuls run in ATen; what is left per element — tanh, scale, exp, the window test,
// the row sum (forward) or the softmax-and-softcap chain rule (backward) — is one pass here
// instead of four (eight) separate PyTorch passes over a tile. Each row first finds the columns
// a window or causal bound leaves visible, writes 0 outside them and runs the vectorised loop
// (at::vec: SLEEF tanh/exp) inside. Rows are independent: results do not depend on threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace fastgen {
namespace {

struct Window {
  int64_t i0, j0, rows, off, left, right;

  // Visible columns [lo, hi) of tile row r, of n.
  void columns(int64_t r, int64_t n, int64_t* lo, int64_t* hi) const {
    const int64_t diag = i0 + r % rows + off - j0;  // query's diagonal, in tile columns
    *lo = left >= 0 ? std::clamp<int64_t>(diag - left, 0, n) : 0;
    *hi = right >= 0 ? std::clamp<int64_t>(diag + right + 1, 0, n) : n;
    if (*hi < *lo) *hi = *lo;
  }
};

void check_tile(const at::Tensor& s, const char* name) {
  TORCH_CHECK(s.device().is_cpu(), "fastgen::", name, ": expected CPU tensors");
  TORCH_CHECK(s.dim() == 2 && s.is_contiguous(), "fastgen::", name,
              ": s must be a contiguous [R, N] tile, got ", s.sizes());
  TORCH_CHECK(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble, "fastgen::", name,
              ": tiles are float32 or float64, got ", s.scalar_type());
}

void check_rows(const at::Tensor& t, const at::Tensor& s, const char* name, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == s.scalar_type() && t.dim() == 1 &&
                  t.size(0) == s.size(0) && t.is_contiguous(),
              "fastgen::", name, ": ", what, " must be a contiguous [", s.size(0), "] ",
              s.scalar_type(), " tensor, got ", t.sizes(), " ", t.scalar_type());
}

void softcap_probs_cpu(at::Tensor s, at::Tensor rowsum, double softcap, int64_t i0, int64_t j0,
                       int64_t rows, int64_t off, int64_t left, int64_t right) {
  check_tile(s, "softcap_probs_");
  check_rows(rowsum, s, "softcap_probs_", "rowsum");
  TORCH_CHECK(rows >= 1 && softcap > 0, "fastgen::softcap_probs_: expected rows >= 1 and "
              "softcap > 0, got rows=", rows, " softcap=", softcap);
  const Window w{i0, j0, rows, off, left, right};
  const int64_t nrows = s.size(0), n = s.size(1);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "softcap_probs_", [&] {
    using Vec = at::vec::Vectorized<scalar_t>;
    scalar_t* sp = s.data_ptr<scalar_t>();
    scalar_t* sum = rowsum.data_ptr<scalar_t>();
    const Vec cap(static_cast<scalar_t>(softcap));
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1));
    at::parallel_for(0, nrows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* row = sp + r * n;
        int64_t lo, hi;
        w.columns(r, n, &lo, &hi);
        std::fill(row, row + lo, scalar_t(0));
        std::fill(row + hi, row + n, scalar_t(0));
        Vec acc(scalar_t(0));
        int64_t c = lo;
        for (; c + Vec::size() <= hi; c += Vec::size()) {
          Vec p = (cap * Vec::loadu(row + c).tanh()).exp();
          p.store(row + c);
          acc = acc + p;
        }
        scalar_t lanes[Vec::size()];
        acc.store(lanes);
        scalar_t total = 0;
        for (int64_t t = 0; t < Vec::size(); ++t) total += lanes[t];
        if (c < hi) {
          Vec p = (cap * Vec::loadu(row + c, hi - c).tanh()).exp();
          p.store(row + c, hi - c);
          scalar_t tail[Vec::size()];
          p.store(tail, hi - c);
          for (int64_t t = 0; t < hi - c; ++t) total += tail[t];
        }
        sum[r] += total;
      }
    });
  });
}

void softcap_probs_bwd_cpu(at::Tensor s, at::Tensor dp, const at::Tensor& lse,
                           const at::Tensor& delta, double softcap, int64_t i0, int64_t j0,
                           int64_t rows, int64_t off, int64_t left, int64_t right) {
  check_tile(s, "softcap_probs_bwd_");
  check_tile(dp, "softcap_probs_bwd_");
  TORCH_CHECK(dp.sizes() == s.sizes() && dp.scalar_type() == s.scalar_type(),
              "fastgen::softcap_probs_bwd_: dp must have s's shape ", s.sizes(), " and dtype ",
              s.scalar_type(), ", got ", dp.sizes(), " ", dp.scalar_type());
  check_rows(lse, s, "softcap_probs_bwd_", "lse");
  check_rows(delta, s, "softcap_probs_bwd_", "delta");
  TORCH_CHECK(rows >= 1 && softcap > 0, "fastgen::softcap_probs_bwd_: expected rows >= 1 and "
              "softcap > 0, got rows=", rows, " softcap=", softcap);
  const Window w{i0, j0, rows, off, left, right};
  const int64_t nrows = s.size(0), n = s.size(1);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "softcap_probs_bwd_", [&] {
    using Vec = at::vec::Vectorized<scalar_t>;
    scalar_t* sp = s.data_ptr<scalar_t>();
    scalar_t* gp = dp.data_ptr<scalar_t>();
    const scalar_t* lp = lse.data_ptr<scalar_t>();
    const scalar_t* dl = delta.data_ptr<scalar_t>();
    const Vec cap(static_cast<scalar_t>(softcap)), one(scalar_t(1));
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1));
    at::parallel_for(0, nrows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* row = sp + r * n;
        scalar_t* grow = gp + r * n;
        int64_t lo, hi;
        w.columns(r, n, &lo, &hi);
        std::fill(row, row + lo, scalar_t(0));
        std::fill(row + hi, row + n, scalar_t(0));
        std::fill(grow, grow + lo, scalar_t(0));
        std::fill(grow + hi, grow + n, scalar_t(0));
        const Vec l(lp[r]), d(dl[r]);
        for (int64_t c = lo; c < hi; c += Vec::size()) {
          const int64_t m = std::min<int64_t>(Vec::size(), hi - c);
          Vec t = Vec::loadu(row + c, m).tanh();
          Vec p = (cap * t - l).exp();  // lse = +inf (a row that sees nothing): p = 0
          Vec g = p * (Vec::loadu(grow + c, m) - d) * (one - t * t);
          p.store(row + c, m);
          g.store(grow + c, m);
        }
      }
    });
  });
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("softcap_probs_", &fastgen::softcap_probs_cpu);
  m.impl("softcap_probs_bwd_", &fastgen::softcap_probs_bwd_cpu);
}

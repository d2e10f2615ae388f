// CPU kernels of the fused transformer-block ops in fastgen/ops/transformer.py (math and operation
// order: fastgen/reference/transformer.py; schemas in csrc/registration.cpp):
//
//   rms_norm:  y = w · S(x · 1/sqrt(mean(x²) + eps))          per row of x [R, N]
//   rotary:    y[i] = x[i]·cos[i] − x[i+D/2]·sin[i]            i <  D/2   (rotate-half RoPE)
//              y[i] = x[i]·cos[i] + x[i−D/2]·sin[i]            i >= D/2
//
// S() rounds to the storage dtype (transformers' LlamaRMSNorm multiplies by the weight after
// casting back). Computed in float32 (float64 for float64 storage), one pass over x. The rotary
// products and sums are rounded one by one as PyTorch's eager ``q*cos + rotate_half(q)*sin`` does
// (fp-contract off in this file), so float32 results equal transformers' bit for bit; float16 /
// bfloat16 storage is rounded once, at the end (eager rounds every product and sum to it).
#pragma GCC optimize("fp-contract=off")

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>

#include "cpu/vec_io.h"

namespace fastgen {
namespace {

template <typename S>
void rms_norm_row(const S* x, const S* w, S* y, int64_t n, double eps) {
  using T = at::opmath_type<S>;
  constexpr int64_t W = Vec<T>::size();
  Vec<T> acc(T(0));
  for_each_vector<W>(n, [&](int64_t i, int64_t len) {
    const Vec<T> v = Mem<S>::load(x + i, len);  // a partial load fills the rest with zeros
    acc = at::vec::fmadd(v, v, acc);
  });
  const T r = T(1) / std::sqrt(hsum(acc) / T(n) + T(eps));
  if constexpr (std::is_same_v<S, T>) {
    const Vec<T> rv(r);
    for_each_vector<W>(n, [&](int64_t i, int64_t len) {
      Mem<S>::store(Mem<S>::load(w + i, len) * (Mem<S>::load(x + i, len) * rv), y + i, len);
    });
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const T h = static_cast<T>(static_cast<S>(static_cast<T>(x[i]) * r));
      y[i] = static_cast<S>(static_cast<T>(w[i]) * h);
    }
  }
}

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(),
              "fastgen::rms_norm: x and weight must be CPU tensors, got ", x.device(), " and ",
              weight.device());
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 1 && weight.size(0) == x.size(1),
              "fastgen::rms_norm: x [R, N] and weight [N] expected, got ", x.sizes(), " and ",
              weight.sizes());
  TORCH_CHECK(x.scalar_type() == weight.scalar_type(),
              "fastgen::rms_norm: weight must have x's dtype ", x.scalar_type(), ", got ",
              weight.scalar_type());
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t rows = x.size(0), n = x.size(1);
  if (rows == 0 || n == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm", [&] {
    const scalar_t *xp = xc.data_ptr<scalar_t>(), *wp = wc.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    // small inputs (a decode step's few rows) stay on the calling thread
    at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / n), [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) rms_norm_row(xp + r * n, wp, yp + r * n, n, eps);
    });
  });
  return y;
}

// One head: y = x·c + rotate_half(x)·s over D = 2·half elements, c and s the row's tables.
template <typename S>
void rotary_head(const S* x, const S* c, const S* s, S* y, int64_t half) {
  using T = at::opmath_type<S>;
  constexpr int64_t W = Vec<T>::size();
  for_each_vector<W>(half, [&](int64_t i, int64_t len) {
    const Vec<T> a = Mem<S>::load(x + i, len), b = Mem<S>::load(x + half + i, len);
    const Vec<T> lo = a * Mem<S>::load(c + i, len) - b * Mem<S>::load(s + i, len);
    const Vec<T> hi = b * Mem<S>::load(c + half + i, len) + a * Mem<S>::load(s + half + i, len);
    Mem<S>::store(lo, y + i, len);
    Mem<S>::store(hi, y + half + i, len);
  });
}

// x [B, T, H, D] with cos, sin [B, T, D] -> y [B, T, H, D].
template <typename S>
void rotary_one(const at::Tensor& x, const at::Tensor& c, const at::Tensor& s, at::Tensor& y) {
  const int64_t bt = x.size(0) * x.size(1), h = x.size(2), d = x.size(3);
  if (bt * h == 0 || d == 0) return;
  const S *xp = x.data_ptr<S>(), *cp = c.data_ptr<S>(), *sp = s.data_ptr<S>();
  S* yp = y.data_ptr<S>();
  at::parallel_for(0, bt * h, std::max<int64_t>(1, 65536 / d), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const int64_t row = i / h;
      rotary_head(xp + i * d, cp + row * d, sp + row * d, yp + i * d, d / 2);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> rotary_cpu(const at::Tensor& q, const at::Tensor& k,
                                              const at::Tensor& cos, const at::Tensor& sin) {
  const std::pair<const char*, const at::Tensor*> args[] = {
      {"q", &q}, {"k", &k}, {"cos", &cos}, {"sin", &sin}};
  for (const auto& [name, t] : args) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == q.scalar_type(), "fastgen::rotary: ",
                name, " must be a CPU tensor of q's dtype ", q.scalar_type(), ", got ",
                t->scalar_type(), " on ", t->device());
  }
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && cos.dim() == 3 && sin.sizes() == cos.sizes(),
              "fastgen::rotary: q, k [B, T, H, D] and cos, sin [B, T, D] expected, got ",
              q.sizes(), ", ", k.sizes(), ", ", cos.sizes(), ", ", sin.sizes());
  const int64_t d = q.size(3);
  TORCH_CHECK(d % 2 == 0 && d >= 2 && k.size(3) == d && cos.size(2) == d &&
                  q.size(0) == k.size(0) &&
                  q.size(1) == k.size(1) && cos.size(0) == q.size(0) && cos.size(1) == q.size(1),
              "fastgen::rotary: shapes ", q.sizes(), ", ", k.sizes(), ", ", cos.sizes(),
              " do not match (one B, T and an even D >= 2 expected)");
  const at::Tensor qc = q.contiguous(), kc = k.contiguous();
  const at::Tensor cc = cos.contiguous(), sc = sin.contiguous();
  at::Tensor qo = at::empty_like(qc), ko = at::empty_like(kc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "rotary", [&] {
    rotary_one<scalar_t>(qc, cc, sc, qo);
    rotary_one<scalar_t>(kc, cc, sc, ko);
  });
  return {qo, ko};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("rms_norm", &fastgen::rms_norm_cpu);
  m.impl("rotary", &fastgen::rotary_cpu);
}

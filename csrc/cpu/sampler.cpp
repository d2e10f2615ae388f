// CPU kernel for fastgen::sampler_step, the fused diffusion-sampler step
// (math and operation order: fastgen/reference/sampler.py):
//
//   m   = u + s·(c − u)                 when an uncond u is given (c = model_output)
//   x̂0  = clip(p_x·x + p_m·m + p_z·z)
//   out = c_x·x + c_0·x̂0 + c_m·m + c_1·h1 + c_2·h2 + c_z·z
//
// One pass over memory: each present input is read once and each output written once, computed
// in float32 (float64 for float64 storage). Work is cut into spans of kSpan elements; within a
// span each term is a separate vectorised sweep over L1-resident float buffers, so absent inputs
// cost nothing and there is no per-element branching. The products and sums follow the
// reference's order; no fma is used (the reference, diffusers and torch.compile don't either).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "common/fastgen.h"
#include "cpu/vec_io.h"

namespace fastgen {
namespace {

constexpr int64_t kSpan = 1024;  // elements per sweep: 4 KiB per fp32 buffer, all L1-resident

struct Coeffs {
  double s, p_x, p_m, p_z, c_x, c_0, c_m, c_1, c_2, c_z;
};

// buf[0:n] = src[0:n] in compute precision (a copy for reduced types; a view otherwise).
template <typename S, typename T>
const T* as_compute(const S* src, T* buf, int64_t n) {
  if constexpr (std::is_same_v<S, T>) {
    return src;
  } else {
    for_each_vector<Vec<T>::size()>(n, [&](int64_t i, int64_t w) {
      Mem<S>::load(src + i, w).store(buf + i, w);
    });
    return buf;
  }
}

template <typename S>
void step_span(const S* x_s, const S* m_s, const S* u_s, const S* h1_s, const S* h2_s,
               const S* z_s, S* out_s, S* x0_s, int64_t n, const Coeffs& k,
               std::optional<double> clip) {
  using T = at::opmath_type<S>;
  using V = Vec<T>;
  constexpr int64_t W = V::size();
  alignas(64) T xb[kSpan], mb[kSpan], zb[kSpan], x0[kSpan], acc[kSpan], tmp[kSpan];
  const T* x = as_compute(x_s, xb, n);
  const T* m = as_compute(m_s, mb, n);
  if (u_s != nullptr) {  // m = u + s (c − u), into mb
    const T* u = as_compute(u_s, tmp, n);
    const V s(static_cast<T>(k.s));
    for_each_vector<W>(n, [&](int64_t i, int64_t w) {
      const V uv = V::loadu(u + i, w);
      (uv + s * (V::loadu(m + i, w) - uv)).store(mb + i, w);
    });
    m = mb;
  }
  const T* z = z_s != nullptr ? as_compute(z_s, zb, n) : nullptr;
  {  // x̂0
    const V px(static_cast<T>(k.p_x)), pm(static_cast<T>(k.p_m)), pz(static_cast<T>(k.p_z));
    const bool noisy = z != nullptr && k.p_z != 0.0;
    const T r = static_cast<T>(clip.value_or(0.0));
    for_each_vector<W>(n, [&](int64_t i, int64_t w) {
      V v = px * V::loadu(x + i, w) + pm * V::loadu(m + i, w);
      if (noisy) v = v + pz * V::loadu(z + i, w);
      if (clip) v = at::vec::clamp(v, V(-r), V(r));
      v.store(x0 + i, w);
    });
  }
  {  // out
    const V cx(static_cast<T>(k.c_x)), c0(static_cast<T>(k.c_0)), cm(static_cast<T>(k.c_m));
    for_each_vector<W>(n, [&](int64_t i, int64_t w) {
      (cx * V::loadu(x + i, w) + c0 * V::loadu(x0 + i, w) + cm * V::loadu(m + i, w))
          .store(acc + i, w);
    });
    const std::pair<const S*, double> terms[3] = {{h1_s, k.c_1}, {h2_s, k.c_2}, {nullptr, k.c_z}};
    for (int t = 0; t < 3; ++t) {
      const T* h = t < 2 ? (terms[t].first ? as_compute(terms[t].first, tmp, n) : nullptr) : z;
      if (h == nullptr) continue;
      const V c(static_cast<T>(terms[t].second));
      for_each_vector<W>(n, [&](int64_t i, int64_t w) {
        (V::loadu(acc + i, w) + c * V::loadu(h + i, w)).store(acc + i, w);
      });
    }
  }
  for_each_vector<W>(n, [&](int64_t i, int64_t w) {
    Mem<S>::store(V::loadu(acc + i, w), out_s + i, w);
    if (x0_s != nullptr) Mem<S>::store(V::loadu(x0 + i, w), x0_s + i, w);
  });
}

void check_like(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type() &&
                  t.device() == x.device() && t.is_contiguous(),
              "sampler_step: ", name, " must be a contiguous tensor of sample's shape ",
              x.sizes(), " and dtype ", x.scalar_type(), ", got ", t.sizes(), " ",
              t.scalar_type(), t.is_contiguous() ? "" : " (not contiguous)");
}

std::tuple<at::Tensor, at::Tensor> sampler_step_cpu(
    const at::Tensor& x, const at::Tensor& m, const std::optional<at::Tensor>& u,
    const std::optional<at::Tensor>& h1, const std::optional<at::Tensor>& h2,
    const std::optional<at::Tensor>& z, at::ArrayRef<double> coeffs, std::optional<double> clip,
    bool want_x0) {
  TORCH_CHECK(x.is_contiguous() && x.device().is_cpu(),
              "sampler_step: sample must be a contiguous CPU tensor");
  TORCH_CHECK(coeffs.size() == 10, "sampler_step: coeffs must hold 10 values (s, p_x, p_m, p_z, ",
              "c_x, c_0, c_m, c_1, c_2, c_z), got ", coeffs.size());
  for (size_t i = 0; i < coeffs.size(); ++i) {
    TORCH_CHECK(std::isfinite(coeffs[i]), "sampler_step: coeffs[", i, "] must be finite, got ",
                coeffs[i]);
  }
  TORCH_CHECK(!clip || (std::isfinite(*clip) && *clip >= 0), "sampler_step: clip must be finite "
              "and >= 0, got ", clip.value_or(0.0));
  check_like("model_output", m, x);
  if (u) check_like("uncond", *u, x);
  if (h1) check_like("history[0]", *h1, x);
  if (h2) check_like("history[1]", *h2, x);
  if (z) check_like("noise", *z, x);
  const Coeffs k{coeffs[0], coeffs[1], coeffs[2], coeffs[3], coeffs[4],
                 coeffs[5], coeffs[6], coeffs[7], coeffs[8], coeffs[9]};
  at::Tensor out = at::empty_like(x);
  at::Tensor x0 = want_x0 ? at::empty_like(x) : x.new_empty({0});
  const int64_t N = x.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sampler_step", [&] {
    using S = scalar_t;
    auto ptr = [](const std::optional<at::Tensor>& t) -> const S* {
      return t ? t->data_ptr<S>() : nullptr;
    };
    const S *xp = x.data_ptr<S>(), *mp = m.data_ptr<S>(), *up = ptr(u), *h1p = ptr(h1),
            *h2p = ptr(h2), *zp = ptr(z);
    S *op = out.data_ptr<S>(), *x0p = want_x0 ? x0.data_ptr<S>() : nullptr;
    at::parallel_for(0, N, kElementsPerTask, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; i += kSpan) {
        const int64_t n = std::min(kSpan, e - i);
        auto at_ = [&](const S* p) { return p ? p + i : nullptr; };
        step_span<S>(xp + i, mp + i, at_(up), at_(h1p), at_(h2p), at_(zp), op + i,
                     x0p ? x0p + i : nullptr, n, k, clip);
      }
    });
  });
  return {out, x0};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("sampler_step", &fastgen::sampler_step_cpu);
}

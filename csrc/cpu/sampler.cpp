// CPU kernel for fastgen::sampler_step, the fused diffusion-sampler step
// (math and operation order: fastgen/reference/sampler.py):
//
//   m   = u + s·(c − u)                 when an uncond u is given (c = model_output)
//   x̂0  = clip(p_x·x + p_m·m + p_z·z)
//   out = c_x·x + c_0·x̂0 + c_m·m + c_1·h1 + c_2·h2 + c_z·z
//
// One pass over memory: each present input is read once and each output written once, computed
// in float32 (float64 for float64 storage), one vector at a time with at::vec. The products and
// sums follow the reference's order, though the compiler may fuse a product into the following
// sum (an fma: the float32 tests allow for those roundings).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "common/fastgen.h"
#include "cpu/buffer_pool.h"
#include "cpu/vec_io.h"

namespace fastgen {
namespace {

struct Coeffs {
  double s, p_x, p_m, p_z, c_x, c_0, c_m, c_1, c_2, c_z;
};

// Which optional inputs and outputs a call has; constant over the call, so the branches on them
// in the vector loop are perfectly predicted (and GCC unswitches the simpler ones).
struct Flags {
  bool u, h1, h2, z, z_in_x0, clip, need_x0, want_x0;
};

// out[0:n] (and x0[0:n]) from the inputs' [0:n], one vector at a time: each input element is
// loaded once, each output element stored once, nothing else touches memory.
template <typename S>
void step_span(const S* x_s, const S* m_s, const S* u_s, const S* h1_s, const S* h2_s,
               const S* z_s, S* out_s, S* x0_s, int64_t n, const Coeffs& k, const Flags f,
               double clip) {
  using T = at::opmath_type<S>;
  using V = Vec<T>;
  const V s(static_cast<T>(k.s)), px(static_cast<T>(k.p_x)), pm(static_cast<T>(k.p_m)),
      pz(static_cast<T>(k.p_z)), cx(static_cast<T>(k.c_x)), c0(static_cast<T>(k.c_0)),
      cm(static_cast<T>(k.c_m)), c1(static_cast<T>(k.c_1)), c2(static_cast<T>(k.c_2)),
      cz(static_cast<T>(k.c_z)), lo(static_cast<T>(-clip)), hi(static_cast<T>(clip));
  for_each_vector<V::size()>(n, [&](int64_t i, int64_t w) {
    const V x = Mem<S>::load(x_s + i, w);
    V m = Mem<S>::load(m_s + i, w);
    if (f.u) {
      const V u = Mem<S>::load(u_s + i, w);
      m = u + s * (m - u);
    }
    V z;
    if (f.z) z = Mem<S>::load(z_s + i, w);
    V out = cx * x;
    if (f.need_x0) {
      V x0 = px * x + pm * m;
      if (f.z_in_x0) x0 = x0 + pz * z;
      if (f.clip) x0 = at::vec::clamp(x0, lo, hi);
      out = out + c0 * x0;
      if (f.want_x0) Mem<S>::store(x0, x0_s + i, w);
    }
    out = out + cm * m;
    if (f.h1) out = out + c1 * Mem<S>::load(h1_s + i, w);
    if (f.h2) out = out + c2 * Mem<S>::load(h2_s + i, w);
    if (f.z) out = out + cz * z;
    Mem<S>::store(out, out_s + i, w);
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
  Flags f{};
  f.u = u.has_value();
  f.h1 = h1.has_value();
  f.h2 = h2.has_value();
  f.z = z.has_value();
  f.z_in_x0 = f.z && k.p_z != 0.0;
  f.clip = clip.has_value();
  f.want_x0 = want_x0;
  // c_0 = 0 drops the x̂0 term: x̂0 is then computed only when returned. (A NaN x̂0 comes from
  // a NaN x, m or z, which reach the output through their own terms anyway.)
  f.need_x0 = want_x0 || k.c_0 != 0.0;
  // From fastgen's buffer cache: a sampling loop's fresh 1 MB outputs then reuse mapped memory
  // instead of faulting in new pages whenever glibc has returned the freed ones to the system.
  at::Tensor out = cpu_pool::empty(x.sizes(), x.options());
  at::Tensor x0 = want_x0 ? cpu_pool::empty(x.sizes(), x.options()) : x.new_empty({0});
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
      auto at_ = [&](const S* p) { return p ? p + b : nullptr; };
      step_span<S>(xp + b, mp + b, at_(up), at_(h1p), at_(h2p), at_(zp), op + b,
                   x0p ? x0p + b : nullptr, e - b, k, f, clip.value_or(0.0));
    });
  });
  return {out, x0};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("sampler_step", &fastgen::sampler_step_cpu);
}

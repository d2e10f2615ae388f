// CPU kernel for fastgen::sampler_step, the fused diffusion-sampler step
// (math and operation order: fastgen/reference/sampler.py):
//
//   m   = u + s·(c − u)                 when an uncond u is given (c = model_output)
//   x̂0  = clip(p_x·x + p_m·m + p_z·z)
//   out = c_x·x + c_0·x̂0 + c_m·m + c_1·h1 + c_2·h2 + c_z·z
//
// One pass over memory: each present input is read once and each output written once, computed
// in float32 (float64 for float64 storage) with at::vec, one compiled loop per combination of
// the optional inputs and outputs. The products and sums follow the reference's order, though
// the compiler may fuse a product into the following sum (an fma: the float32 tests allow for
// those roundings).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <utility>

#include "common/fastgen.h"
#include "cpu/buffer_pool.h"
#include "cpu/sampler.h"
#include "cpu/vec_io.h"

namespace fastgen {
namespace {

struct Coeffs {
  double s, p_x, p_m, p_z, c_x, c_0, c_m, c_1, c_2, c_z;
};

// Which optional inputs and outputs a call has; constant over the call.
struct Flags {
  bool u, h1, h2, z, z_in_x0, clip, need_x0, want_x0;
};

// The x̂0 work of a call, from none to all of it.
enum X0Mode : int { kNoX0, kX0, kX0Store, kX0Clip, kX0ClipStore, kX0Modes };

template <typename S>
struct Span {
  const S *x, *m, *u, *h1, *h2, *z;
  S *out, *x0;
};

// out[b:e] (and x0[b:e]) from the inputs' [b:e], two vectors per iteration: each input element
// is loaded once, each output element stored once, nothing else touches memory. Which inputs and
// outputs exist is a template argument, so each combination compiles to a loop without tests; a
// loop testing runtime flags per vector took 60 µs for an Euler step's x + c·m on 1 MB on one
// AVX-512 core (torch.add: 40), this one 38–45. Only x̂0's noise term (rare) is a runtime flag.
template <typename S, bool U, int NH, bool Z, int X0M>
void step_span(const Span<S>& p, int64_t b, int64_t e, const Coeffs& k, bool z_in_x0,
               double clip) {
  using T = at::opmath_type<S>;
  using V = Vec<T>;
  constexpr bool kX0 = X0M != kNoX0;
  constexpr bool kStore = X0M == kX0Store || X0M == kX0ClipStore;
  constexpr bool kClip = X0M == kX0Clip || X0M == kX0ClipStore;
  const V s(static_cast<T>(k.s)), px(static_cast<T>(k.p_x)), pm(static_cast<T>(k.p_m)),
      pz(static_cast<T>(k.p_z)), cx(static_cast<T>(k.c_x)), c0(static_cast<T>(k.c_0)),
      cm(static_cast<T>(k.c_m)), c1(static_cast<T>(k.c_1)), c2(static_cast<T>(k.c_2)),
      cz(static_cast<T>(k.c_z)), lo(static_cast<T>(-clip)), hi(static_cast<T>(clip));
  const S *xs = p.x + b, *ms = p.m + b, *us = U ? p.u + b : nullptr,
          *h1s = NH > 0 ? p.h1 + b : nullptr, *h2s = NH > 1 ? p.h2 + b : nullptr,
          *zs = Z ? p.z + b : nullptr;
  S *os = p.out + b, *x0s = kStore ? p.x0 + b : nullptr;
  auto body = [&](int64_t i, int64_t w) {
    const V x = Mem<S>::load(xs + i, w);
    V m = Mem<S>::load(ms + i, w);
    if constexpr (U) {
      const V u = Mem<S>::load(us + i, w);
      m = u + s * (m - u);
    }
    V z;
    if constexpr (Z) z = Mem<S>::load(zs + i, w);
    V out = cx * x;
    if constexpr (kX0) {
      V x0 = px * x + pm * m;
      if constexpr (Z) {
        if (z_in_x0) x0 = x0 + pz * z;
      }
      if constexpr (kClip) x0 = at::vec::clamp(x0, lo, hi);
      out = out + c0 * x0;
      if constexpr (kStore) Mem<S>::store(x0, x0s + i, w);
    }
    out = out + cm * m;
    if constexpr (NH > 0) out = out + c1 * Mem<S>::load(h1s + i, w);
    if constexpr (NH > 1) out = out + c2 * Mem<S>::load(h2s + i, w);
    if constexpr (Z) out = out + cz * z;
    Mem<S>::store(out, os + i, w);
  };
  constexpr int64_t W = V::size();
  const int64_t n = e - b;
  int64_t i = 0;
  for (; i + 2 * W <= n; i += 2 * W) {
    body(i, W);
    body(i + W, W);
  }
  for_each_vector<W>(n - i, [&](int64_t j, int64_t w) { body(i + j, w); });
}

template <typename S>
using SpanFn = void (*)(const Span<S>&, int64_t, int64_t, const Coeffs&, bool, double);

// Table entry I = ((U·3 + NH)·2 + Z)·kX0Modes + X0 mode.
template <typename S, size_t I>
constexpr SpanFn<S> span_entry() {
  constexpr int x0m = I % kX0Modes, z = (I / kX0Modes) % 2, nh = (I / kX0Modes / 2) % 3,
                u = I / kX0Modes / 6;
  return &step_span<S, u != 0, nh, z != 0, x0m>;
}

template <typename S, size_t... I>
constexpr std::array<SpanFn<S>, sizeof...(I)> span_table(std::index_sequence<I...>) {
  return {span_entry<S, I>()...};
}

template <typename S>
SpanFn<S> span_for(const Flags& f) {
  static constexpr auto table = span_table<S>(std::make_index_sequence<2 * 3 * 2 * kX0Modes>{});
  const int nh = f.h2 ? 2 : (f.h1 ? 1 : 0);
  const int x0m = !f.need_x0 ? kNoX0
                  : f.clip   ? (f.want_x0 ? kX0ClipStore : kX0Clip)
                             : (f.want_x0 ? kX0Store : kX0);
  return table[((int(f.u) * 3 + nh) * 2 + int(f.z)) * kX0Modes + x0m];
}

void check_like(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes() && t.scalar_type() == x.scalar_type() &&
                  t.device() == x.device() && t.is_contiguous(),
              "sampler_step: ", name, " must be a contiguous tensor of sample's shape ",
              x.sizes(), " and dtype ", x.scalar_type(), ", got ", t.sizes(), " ",
              t.scalar_type(), t.is_contiguous() ? "" : " (not contiguous)");
}

}  // namespace

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
  Coeffs k{coeffs[0], coeffs[1], coeffs[2], coeffs[3], coeffs[4],
           coeffs[5], coeffs[6], coeffs[7], coeffs[8], coeffs[9]};
  // A lone second history tensor takes the first slot (the kernels read h1 before h2).
  const bool lone_h2 = !h1 && h2;
  const std::optional<at::Tensor>& hist1 = lone_h2 ? h2 : h1;
  const std::optional<at::Tensor>& hist2 = lone_h2 ? h1 : h2;
  if (lone_h2) std::swap(k.c_1, k.c_2);
  Flags f{};
  f.u = u.has_value();
  f.h1 = hist1.has_value();
  f.h2 = hist2.has_value();
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
    const Span<S> p{x.data_ptr<S>(), m.data_ptr<S>(), ptr(u), ptr(hist1), ptr(hist2), ptr(z),
                    out.data_ptr<S>(), want_x0 ? x0.data_ptr<S>() : nullptr};
    const SpanFn<S> span = span_for<S>(f);
    const double lim = clip.value_or(0.0);
    at::parallel_for(0, N, kElementsPerTask, [&](int64_t b, int64_t e) {
      span(p, b, e, k, f.z_in_x0, lim);
    });
  });
  return {out, x0};
}

}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("sampler_step", &fastgen::sampler_step_cpu);
}

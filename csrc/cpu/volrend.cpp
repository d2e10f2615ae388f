// CPU launcher for fused volume rendering (fastgen/ops/volrend.py; per-ray logic in
// csrc/common/volrend.h; schemas in csrc/registration.cpp). One ray per iteration of
// at::parallel_for: rays own disjoint sample ranges, so results do not depend on threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "common/volrend.h"

namespace fastgen {
namespace {

void check_packed(const at::Tensor& sigmas, const at::Tensor& rgbs, const at::Tensor& ts,
                  const at::Tensor& te, const at::Tensor& starts, const at::Tensor& counts) {
  for (const at::Tensor* t : {&sigmas, &rgbs, &ts, &te, &starts, &counts}) {
    TORCH_CHECK(t->device().is_cpu(), "fastgen::volrend: expected CPU tensors");
  }
  TORCH_CHECK(sigmas.dim() == 1 && ts.sizes() == sigmas.sizes() && te.sizes() == sigmas.sizes(),
              "fastgen::volrend: sigmas, t_starts, t_ends must be [n_samples]");
  TORCH_CHECK(rgbs.dim() == 2 && rgbs.size(0) == sigmas.size(0),
              "fastgen::volrend: rgbs must be [n_samples, C]");
  TORCH_CHECK(starts.scalar_type() == at::kLong && counts.scalar_type() == at::kLong &&
                  starts.dim() == 1 && counts.sizes() == starts.sizes(),
              "fastgen::volrend: chunk starts and counts must be int64 [n_rays]");
  for (const at::Tensor* t : {&rgbs, &ts, &te}) {
    TORCH_CHECK(t->scalar_type() == sigmas.scalar_type(),
                "fastgen::volrend: one floating dtype for all sample tensors");
  }
}

constexpr int64_t kRaysPerTask = 64;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> volrend_fwd_cpu(
    const at::Tensor& sigmas_, const at::Tensor& rgbs_, const at::Tensor& ts_,
    const at::Tensor& te_, const at::Tensor& starts_, const at::Tensor& counts_, double eps) {
  check_packed(sigmas_, rgbs_, ts_, te_, starts_, counts_);
  const at::Tensor sigmas = sigmas_.contiguous(), rgbs = rgbs_.contiguous(),
                   ts = ts_.contiguous(), te = te_.contiguous(), starts = starts_.contiguous(),
                   counts = counts_.contiguous();
  const int64_t R = starts.size(0), C = rgbs.size(1);
  at::Tensor color = at::empty({R, C}, rgbs.options());
  at::Tensor opacity = at::empty({R}, sigmas.options());
  at::Tensor depth = at::empty({R}, sigmas.options());
  at::Tensor w = at::zeros_like(sigmas), trans = at::zeros_like(sigmas);
  const int64_t* sp = starts.data_ptr<int64_t>();
  const int64_t* cp = counts.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "volrend_fwd", [&] {
    using T = scalar_t;
    const T *sg = sigmas.data_ptr<T>(), *rg = rgbs.data_ptr<T>(), *a = ts.data_ptr<T>(),
            *b = te.data_ptr<T>();
    T *wp = w.data_ptr<T>(), *tp = trans.data_ptr<T>(), *col = color.data_ptr<T>(),
      *op = opacity.data_ptr<T>(), *dp = depth.data_ptr<T>();
    at::parallel_for(0, R, kRaysPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t s = sp[r];
        volrend::ray_fwd<T>(cp[r], C, sg + s, rg + s * C, a + s, b + s, static_cast<T>(eps),
                            wp + s, tp + s, col + r * C, op + r, dp + r);
      }
    });
  });
  return {color, opacity, depth, w, trans};
}

std::tuple<at::Tensor, at::Tensor> volrend_bwd_cpu(
    const at::Tensor& g_color_, const at::Tensor& g_opacity_, const at::Tensor& g_depth_,
    const std::optional<at::Tensor>& g_w_, const std::optional<at::Tensor>& g_trans_,
    const at::Tensor& rgbs_, const at::Tensor& ts_, const at::Tensor& te_,
    const at::Tensor& starts_, const at::Tensor& counts_, const at::Tensor& w_,
    const at::Tensor& trans_, double eps) {
  check_packed(w_, rgbs_, ts_, te_, starts_, counts_);
  auto c = [](const at::Tensor& t) { return t.contiguous(); };
  const at::Tensor g_color = c(g_color_), g_opacity = c(g_opacity_), g_depth = c(g_depth_),
                   rgbs = c(rgbs_), ts = c(ts_), te = c(te_), starts = c(starts_),
                   counts = c(counts_), w = c(w_), trans = c(trans_);
  const at::Tensor g_w = g_w_ ? c(*g_w_) : at::Tensor(), g_trans = g_trans_ ? c(*g_trans_) : at::Tensor();
  const int64_t R = starts.size(0), C = rgbs.size(1);
  TORCH_CHECK(g_color.sizes() == at::IntArrayRef({R, C}) && g_opacity.numel() == R &&
                  g_depth.numel() == R,
              "fastgen::volrend_bwd: upstream gradients must be [n_rays, C], [n_rays], [n_rays]");
  at::Tensor g_sigma = at::zeros_like(w), g_rgb = at::zeros_like(rgbs);
  const int64_t* sp = starts.data_ptr<int64_t>();
  const int64_t* cp = counts.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "volrend_bwd", [&] {
    using T = scalar_t;
    const T *gc = g_color.data_ptr<T>(), *go = g_opacity.data_ptr<T>(),
            *gd = g_depth.data_ptr<T>(), *rg = rgbs.data_ptr<T>(), *a = ts.data_ptr<T>(),
            *b = te.data_ptr<T>(), *wp = w.data_ptr<T>(), *tp = trans.data_ptr<T>();
    const T* gw = g_w.defined() ? g_w.data_ptr<T>() : nullptr;
    const T* gt = g_trans.defined() ? g_trans.data_ptr<T>() : nullptr;
    T *gs = g_sigma.data_ptr<T>(), *grg = g_rgb.data_ptr<T>();
    at::parallel_for(0, R, kRaysPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t s = sp[r];
        volrend::ray_bwd<T>(cp[r], C, rg + s * C, a + s, b + s, wp + s, tp + s,
                            static_cast<T>(eps), gc + r * C, go[r], gd[r],
                            gw ? gw + s : nullptr, gt ? gt + s : nullptr, gs + s, grg + s * C);
      }
    });
  });
  return {g_sigma, g_rgb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("volrend_fwd", &fastgen::volrend_fwd_cpu);
  m.impl("volrend_bwd", &fastgen::volrend_bwd_cpu);
}

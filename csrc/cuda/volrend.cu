// CUDA launchers for fused volume rendering: one thread per ray running the per-ray forward and
// backward of csrc/common/volrend.h, the code the CPU launcher (csrc/cpu/volrend.cpp) runs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "common/volrend.h"

namespace fastgen {
namespace {

constexpr int kThreads = 128;

template <typename T>
__global__ void volrend_fwd_kernel(int64_t R, int64_t C, const T* __restrict__ sg,
                                   const T* __restrict__ rg, const T* __restrict__ a,
                                   const T* __restrict__ b, const int64_t* __restrict__ sp,
                                   const int64_t* __restrict__ cp, T eps, T* w, T* tr, T* col,
                                   T* op, T* dp) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= R) return;
  const int64_t s = sp[r];
  volrend::ray_fwd<T>(cp[r], C, sg + s, rg + s * C, a + s, b + s, eps, w + s, tr + s,
                      col + r * C, op + r, dp + r);
}

template <typename T>
__global__ void volrend_bwd_kernel(int64_t R, int64_t C, const T* __restrict__ gc,
                                   const T* __restrict__ go, const T* __restrict__ gd,
                                   const T* gw, const T* gt, const T* __restrict__ rg,
                                   const T* __restrict__ a, const T* __restrict__ b,
                                   const int64_t* __restrict__ sp, const int64_t* __restrict__ cp,
                                   const T* __restrict__ w, const T* __restrict__ tr, T eps,
                                   T* gs, T* grg) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= R) return;
  const int64_t s = sp[r];
  volrend::ray_bwd<T>(cp[r], C, rg + s * C, a + s, b + s, w + s, tr + s, eps, gc + r * C,
                      go[r], gd[r], gw ? gw + s : nullptr, gt ? gt + s : nullptr, gs + s,
                      grg + s * C);
}

int64_t blocks(int64_t n) { return (n + kThreads - 1) / kThreads; }

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> volrend_fwd_cuda(
    const at::Tensor& sigmas_, const at::Tensor& rgbs_, const at::Tensor& ts_,
    const at::Tensor& te_, const at::Tensor& starts_, const at::Tensor& counts_, double eps) {
  TORCH_CHECK(sigmas_.is_cuda(), "fastgen::volrend_fwd: expected CUDA tensors");
  TORCH_CHECK(starts_.scalar_type() == at::kLong && counts_.scalar_type() == at::kLong,
              "fastgen::volrend_fwd: starts and counts must be int64");
  for (const at::Tensor* t : {&rgbs_, &ts_, &te_, &starts_, &counts_}) {
    TORCH_CHECK(t->device() == sigmas_.device(), "fastgen::volrend_fwd: all tensors on ",
                sigmas_.device());
  }
  const at::cuda::CUDAGuard guard(sigmas_.device());
  const at::Tensor sigmas = sigmas_.contiguous(), rgbs = rgbs_.contiguous(),
                   ts = ts_.contiguous(), te = te_.contiguous(), starts = starts_.contiguous(),
                   counts = counts_.contiguous();
  const int64_t R = starts.size(0), C = rgbs.size(1);
  at::Tensor color = at::empty({R, C}, rgbs.options());
  at::Tensor opacity = at::empty({R}, sigmas.options()), depth = at::empty({R}, sigmas.options());
  at::Tensor w = at::zeros_like(sigmas), trans = at::zeros_like(sigmas);
  if (R == 0) return {color, opacity, depth, w, trans};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sigmas.scalar_type(), "volrend_fwd_cuda", [&] {
    using T = scalar_t;
    volrend_fwd_kernel<T><<<blocks(R), kThreads, 0, stream>>>(
        R, C, sigmas.data_ptr<T>(), rgbs.data_ptr<T>(), ts.data_ptr<T>(), te.data_ptr<T>(),
        starts.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), static_cast<T>(eps),
        w.data_ptr<T>(), trans.data_ptr<T>(), color.data_ptr<T>(), opacity.data_ptr<T>(),
        depth.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {color, opacity, depth, w, trans};
}

std::tuple<at::Tensor, at::Tensor> volrend_bwd_cuda(
    const at::Tensor& g_color_, const at::Tensor& g_opacity_, const at::Tensor& g_depth_,
    const std::optional<at::Tensor>& g_w_, const std::optional<at::Tensor>& g_trans_,
    const at::Tensor& rgbs_, const at::Tensor& ts_, const at::Tensor& te_,
    const at::Tensor& starts_, const at::Tensor& counts_, const at::Tensor& w_,
    const at::Tensor& trans_, double eps) {
  TORCH_CHECK(w_.is_cuda(), "fastgen::volrend_bwd: expected CUDA tensors");
  for (const at::Tensor* t : {&g_color_, &g_opacity_, &g_depth_, &rgbs_, &starts_, &trans_}) {
    TORCH_CHECK(t->device() == w_.device(), "fastgen::volrend_bwd: all tensors on ", w_.device());
  }
  const at::cuda::CUDAGuard guard(w_.device());
  auto c = [](const at::Tensor& t) { return t.contiguous(); };
  const at::Tensor g_color = c(g_color_), g_opacity = c(g_opacity_), g_depth = c(g_depth_),
                   rgbs = c(rgbs_), ts = c(ts_), te = c(te_), starts = c(starts_),
                   counts = c(counts_), w = c(w_), trans = c(trans_);
  const at::Tensor g_w = g_w_ ? c(*g_w_) : at::Tensor();
  const at::Tensor g_trans = g_trans_ ? c(*g_trans_) : at::Tensor();
  const int64_t R = starts.size(0), C = rgbs.size(1);
  at::Tensor g_sigma = at::zeros_like(w), g_rgb = at::zeros_like(rgbs);
  if (R == 0) return {g_sigma.zero_(), g_rgb.zero_()};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "volrend_bwd_cuda", [&] {
    using T = scalar_t;
    volrend_bwd_kernel<T><<<blocks(R), kThreads, 0, stream>>>(
        R, C, g_color.data_ptr<T>(), g_opacity.data_ptr<T>(), g_depth.data_ptr<T>(),
        g_w.defined() ? g_w.data_ptr<T>() : nullptr,
        g_trans.defined() ? g_trans.data_ptr<T>() : nullptr, rgbs.data_ptr<T>(),
        ts.data_ptr<T>(), te.data_ptr<T>(), starts.data_ptr<int64_t>(),
        counts.data_ptr<int64_t>(), w.data_ptr<T>(), trans.data_ptr<T>(), static_cast<T>(eps),
        g_sigma.data_ptr<T>(), g_rgb.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {g_sigma, g_rgb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("volrend_fwd", &fastgen::volrend_fwd_cuda);
  m.impl("volrend_bwd", &fastgen::volrend_bwd_cuda);
}

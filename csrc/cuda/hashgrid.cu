// CUDA launchers for the hash-grid encoding ops (math: csrc/common/hashgrid.h, shared with the
// CPU launcher in csrc/cpu/hashgrid.cpp).
//
// Grids are {ceil(N / 256), L}: one level per blockIdx.y, so a block's threads read one level's
// table (tcnn's layout of the work). Parameters may be float32, float16 or float64; positions,
// interpolation and accumulation are float32 (float64 for float64 params). The parameter gradient
// is scatter-added with float atomics into a float32 buffer (float64 for float64 params) and cast
// to the parameters' dtype at the end, so float16 tables never accumulate in half precision.
// The deterministic variant sorts the corners instead (fastgen/ops/hashgrid.py).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <type_traits>

#include "common/hashgrid.h"
#include "common/hashgrid_dispatch.h"

namespace fastgen {
namespace hashgrid {
namespace {

constexpr int kThreads = 256;

template <typename T>
using acc_type = std::conditional_t<std::is_same<T, double>::value, double, float>;

template <typename T>
__device__ __forceinline__ T nan_of() {
  return static_cast<T>(std::numeric_limits<float>::quiet_NaN());
}

template <int D, int F, typename T>
__global__ void forward_kernel(const acc_type<T>* __restrict__ x, const T* __restrict__ params,
                               T* __restrict__ out, int64_t N, const Levels lv) {
  using A = acc_type<T>;
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int level = blockIdx.y;
  if (n >= N) return;
  T* y = out + n * (int64_t(lv.n_levels) * F) + int64_t(level) * F;
  A xs[D];
  bool inside[D];
  if (!load_point<D, A>(x, n, xs, inside)) {
    for (int f = 0; f < F; ++f) y[f] = nan_of<T>();
    return;
  }
  const Cell<D, A> c = locate<D, A>(xs, lv, level);
  A acc[F];
  level_forward<D, F, T, A>(c, lv, params + int64_t(lv.offset[level]) * F, acc);
  FASTGEN_UNROLL
  for (int f = 0; f < F; ++f) y[f] = static_cast<T>(acc[f]);
}

template <int D, int F, typename T>
__global__ void backward_params_kernel(const T* __restrict__ grad_out,
                                       const acc_type<T>* __restrict__ x,
                                       acc_type<T>* __restrict__ grad, int64_t N, const Levels lv) {
  using A = acc_type<T>;
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int level = blockIdx.y;
  if (n >= N) return;
  A g[F];
  bool any = false;
  FASTGEN_UNROLL
  for (int f = 0; f < F; ++f) {
    g[f] = static_cast<A>(grad_out[n * (int64_t(lv.n_levels) * F) + int64_t(level) * F + f]);
    any |= g[f] != A(0);
  }
  A xs[D];
  bool inside[D];
  if (!any || !load_point<D, A>(x, n, xs, inside)) return;
  const Cell<D, A> c = locate<D, A>(xs, lv, level);
  A* table_grad = grad + int64_t(lv.offset[level]) * F;
  for_each_corner<D, A>(c, lv, [&](uint32_t e, A w) {
    FASTGEN_UNROLL
    for (int f = 0; f < F; ++f) atomicAdd(table_grad + int64_t(e) * F + f, w * g[f]);
  });
}

template <int D, int F, typename T>
__global__ void backward_x_kernel(const T* __restrict__ grad_out, const acc_type<T>* __restrict__ x,
                                  const T* __restrict__ params, acc_type<T>* __restrict__ grad_x,
                                  int64_t N, const Levels lv) {
  using A = acc_type<T>;
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  A xs[D];
  bool inside[D];
  A gx[D] = {};
  if (!load_point<D, A>(x, n, xs, inside)) {
    for (int d = 0; d < D; ++d) grad_x[n * D + d] = nan_of<A>();
    return;
  }
  const int64_t width = int64_t(lv.n_levels) * F;
  for (int level = 0; level < lv.n_levels; ++level) {
    A g[F];
    FASTGEN_UNROLL
    for (int f = 0; f < F; ++f) g[f] = static_cast<A>(grad_out[n * width + int64_t(level) * F + f]);
    const Cell<D, A> c = locate<D, A>(xs, lv, level);
    level_backward_x<D, F, T, A>(c, lv, params + int64_t(lv.offset[level]) * F, g, gx);
  }
  FASTGEN_UNROLL
  for (int d = 0; d < D; ++d) grad_x[n * D + d] = inside[d] ? gx[d] : A(0);
}

template <int D, typename A>
__global__ void corners_kernel(const A* __restrict__ x, int64_t* __restrict__ index,
                               A* __restrict__ weight, int64_t N, const Levels lv, int level) {
  const int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int C = lv.interpolation == kNearest ? 1 : (1 << D);
  A xs[D];
  bool inside[D];
  int64_t* idx = index + n * C;
  A* w = weight + n * C;
  if (!load_point<D, A>(x, n, xs, inside)) {
    for (int k = 0; k < C; ++k) {
      idx[k] = lv.offset[level];
      w[k] = A(0);
    }
    return;
  }
  const Cell<D, A> c = locate<D, A>(xs, lv, level);
  int k = 0;
  for_each_corner<D, A>(c, lv, [&](uint32_t e, A wk) {
    idx[k] = int64_t(lv.offset[level]) + e;
    w[k] = wk;
    ++k;
  });
}

dim3 grid_for(int64_t N, int levels) {
  return dim3(static_cast<unsigned>((N + kThreads - 1) / kThreads), static_cast<unsigned>(levels));
}

void check_cuda(const char* op, const at::Tensor& x, const at::Tensor& params) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  TORCH_CHECK(params.scalar_type() == at::kFloat || params.scalar_type() == at::kHalf ||
                  params.scalar_type() == at::kDouble,
              op, ": params must be float32, float16 or float64 on CUDA, got ",
              params.scalar_type());
  TORCH_CHECK(x.size(0) < int64_t(1) << 31, op, ": at most 2^31 - 1 points per call, got ",
              x.size(0));
}

}  // namespace

at::Tensor hashgrid_fwd_cuda(const at::Tensor& x, const at::Tensor& params,
                             at::IntArrayRef offsets, at::ArrayRef<double> scales, int64_t F,
                             int64_t interpolation, bool use_hash) {
  const Levels lv = make_levels(offsets, scales, interpolation, use_hash);
  check_inputs("hashgrid_fwd", x, params, lv, F);
  check_cuda("hashgrid_fwd", x, params);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0);
  at::Tensor out = at::empty({N, int64_t(lv.n_levels) * F}, params.options());
  if (N == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(params.scalar_type(), "hashgrid_fwd_cuda", [&] {
    using A = acc_type<scalar_t>;
    dispatch_dims(x.size(1), F, [&](auto d, auto f) {
      forward_kernel<decltype(d)::value, decltype(f)::value, scalar_t>
          <<<grid_for(N, lv.n_levels), kThreads, 0, stream>>>(
              x.data_ptr<A>(), params.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N, lv);
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> hashgrid_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& params,
    at::IntArrayRef offsets, at::ArrayRef<double> scales, int64_t F, int64_t interpolation,
    bool use_hash, bool need_params_grad, bool need_x_grad) {
  const Levels lv = make_levels(offsets, scales, interpolation, use_hash);
  check_inputs("hashgrid_bwd", x, params, lv, F);
  check_cuda("hashgrid_bwd", x, params);
  const int64_t N = x.size(0);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({N, int64_t(lv.n_levels) * F}) &&
                  grad_out.scalar_type() == params.scalar_type() && grad_out.is_contiguous(),
              "hashgrid_bwd: grad_out must be a contiguous [", N, ", ", lv.n_levels * F,
              "] tensor of the params dtype, got ", grad_out.sizes(), " ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == x.device(), "hashgrid_bwd: grad_out is on ",
              grad_out.device(), " but x on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto acc = params.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_acc = need_params_grad ? at::zeros(params.sizes(), params.options().dtype(acc))
                                         : params.new_empty({0});
  at::Tensor grad_x = need_x_grad ? at::zeros_like(x) : x.new_empty({0});
  if (N > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND_HALF(params.scalar_type(), "hashgrid_bwd_cuda", [&] {
      using A = acc_type<scalar_t>;
      dispatch_dims(x.size(1), F, [&](auto d, auto f) {
        constexpr int DD = decltype(d)::value;
        constexpr int FF = decltype(f)::value;
        if (need_params_grad) {
          backward_params_kernel<DD, FF, scalar_t><<<grid_for(N, lv.n_levels), kThreads, 0, stream>>>(
              grad_out.data_ptr<scalar_t>(), x.data_ptr<A>(), grad_acc.data_ptr<A>(), N, lv);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (need_x_grad) {
          backward_x_kernel<DD, FF, scalar_t><<<grid_for(N, 1), kThreads, 0, stream>>>(
              grad_out.data_ptr<scalar_t>(), x.data_ptr<A>(), params.data_ptr<scalar_t>(),
              grad_x.data_ptr<A>(), N, lv);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      });
    });
  }
  at::Tensor grad_params = need_params_grad ? grad_acc.to(params.scalar_type()) : grad_acc;
  return {grad_params, grad_x};
}

std::tuple<at::Tensor, at::Tensor> hashgrid_corners_cuda(
    const at::Tensor& x, at::IntArrayRef offsets, at::ArrayRef<double> scales, int64_t level,
    int64_t interpolation, bool use_hash) {
  const Levels lv = make_levels(offsets, scales, interpolation, use_hash);
  TORCH_CHECK(level >= 0 && level < lv.n_levels, "hashgrid_corners: level must be in [0, ",
              lv.n_levels, "), got ", level);
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.size(1) >= 2 && x.size(1) <= 4 &&
                  x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "hashgrid_corners: x must be a contiguous float32/float64 CUDA [N, D] tensor with "
              "D in {2, 3, 4}, got ", x.sizes(), " ", x.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0);
  const int64_t C = interpolation == kNearest ? 1 : (int64_t(1) << x.size(1));
  at::Tensor index = at::empty({N, C}, x.options().dtype(at::kLong));
  at::Tensor weight = at::empty({N, C}, x.options());
  if (N == 0) return {index, weight};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hashgrid_corners_cuda", [&] {
    dispatch_dims(x.size(1), 1, [&](auto d, auto) {
      corners_kernel<decltype(d)::value, scalar_t><<<grid_for(N, 1), kThreads, 0, stream>>>(
          x.data_ptr<scalar_t>(), index.data_ptr<int64_t>(), weight.data_ptr<scalar_t>(), N, lv,
          static_cast<int>(level));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {index, weight};
}

}  // namespace hashgrid
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("hashgrid_fwd", &fastgen::hashgrid::hashgrid_fwd_cuda);
  m.impl("hashgrid_bwd", &fastgen::hashgrid::hashgrid_bwd_cuda);
  m.impl("hashgrid_corners", &fastgen::hashgrid::hashgrid_corners_cuda);
}

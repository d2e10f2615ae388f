// CUDA launchers for ray-box intersection and occupancy-grid marching: one thread per ray
// running csrc/common/raymarch.h, the code the CPU launcher runs. Marching counts each ray's
// samples first, then a second launch writes them at the rays' offsets (the same per-ray
// function emits the same samples on both launches).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "common/raymarch.h"

namespace fastgen {
namespace {

constexpr int kThreads = 128;

int64_t blocks(int64_t n) { return (n + kThreads - 1) / kThreads; }

template <typename T>
__global__ void aabb_kernel(int64_t N, int64_t M, const T* o, const T* d, const T* boxes, T* tn,
                            T* tf, bool* hit) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= N * M) return;
  const int64_t r = i / M, m = i % M;
  hit[i] = raymarch::ray_aabb<T>(o + 3 * r, d + 3 * r, boxes + 6 * m, tn + i, tf + i);
}

template <typename T>
__global__ void count_kernel(int64_t N, raymarch::Grid g, const T* o, const T* d, const T* t0,
                             const T* t1, T step, T cone, int64_t* counts) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= N) return;
  counts[r] = raymarch::march<T>(g, o + 3 * r, d + 3 * r, t0[r], t1[r], step, cone,
                                 [](T, T) {});
}

template <typename T>
__global__ void fill_kernel(int64_t N, raymarch::Grid g, const T* o, const T* d, const T* t0,
                            const T* t1, T step, T cone, const int64_t* offsets,
                            const int64_t* counts, int64_t* ri, T* ts, T* te) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= N) return;
  int64_t k = offsets[r];
  const int64_t end = k + counts[r];  // never past this ray's slots, whatever happens
  raymarch::march<T>(g, o + 3 * r, d + 3 * r, t0[r], t1[r], step, cone, [&](T a, T b) {
    if (k >= end) return;
    ri[k] = r;
    ts[k] = a;
    te[k] = b;
    ++k;
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ray_aabb_intersect_cuda(
    const at::Tensor& o_, const at::Tensor& d_, const at::Tensor& boxes_) {
  TORCH_CHECK(o_.is_cuda(), "fastgen::ray_aabb_intersect: expected CUDA tensors");
  const at::cuda::CUDAGuard guard(o_.device());
  const at::Tensor o = o_.contiguous(), d = d_.contiguous(), boxes = boxes_.contiguous();
  const int64_t N = o.size(0), M = boxes.size(0);
  at::Tensor tn = at::empty({N, M}, o.options()), tf = at::empty({N, M}, o.options());
  at::Tensor hit = at::empty({N, M}, o.options().dtype(at::kBool));
  if (N * M == 0) return {tn, tf, hit};
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "ray_aabb_intersect_cuda", [&] {
    using T = scalar_t;
    aabb_kernel<T><<<blocks(N * M), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        N, M, o.data_ptr<T>(), d.data_ptr<T>(), boxes.data_ptr<T>(), tn.data_ptr<T>(),
        tf.data_ptr<T>(), hit.data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {tn, tf, hit};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> occgrid_march_cuda(
    const at::Tensor& o_, const at::Tensor& d_, const at::Tensor& t0_, const at::Tensor& t1_,
    const at::Tensor& bits_, const at::Tensor& boxes_, double step, double cone) {
  TORCH_CHECK(o_.is_cuda(), "fastgen::occgrid_march: expected CUDA tensors");
  TORCH_CHECK(bits_.scalar_type() == at::kByte && bits_.dim() == 4 &&
                  bits_.size(1) == bits_.size(2) && bits_.size(2) == bits_.size(3) &&
                  boxes_.scalar_type() == at::kFloat && boxes_.dim() == 2 &&
                  boxes_.size(0) == bits_.size(0) && boxes_.size(1) == 6 && bits_.size(0) >= 1,
              "fastgen::occgrid_march: uint8 bits [L, res, res, res] and float32 boxes [L, 6]");
  for (const at::Tensor* t : {&d_, &t0_, &t1_, &bits_, &boxes_}) {
    TORCH_CHECK(t->device() == o_.device(), "fastgen::occgrid_march: all tensors on ",
                o_.device());
  }
  const at::cuda::CUDAGuard guard(o_.device());
  const at::Tensor o = o_.contiguous(), d = d_.contiguous(), t0 = t0_.contiguous(),
                   t1 = t1_.contiguous(), bits = bits_.contiguous(), boxes = boxes_.contiguous();
  const int64_t N = o.size(0);
  const raymarch::Grid g{bits.data_ptr<uint8_t>(), boxes.data_ptr<float>(), bits.size(0),
                         bits.size(1)};
  at::Tensor counts = at::zeros({N}, o.options().dtype(at::kLong));
  at::Tensor ray_indices, ts, te;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "occgrid_march_cuda", [&] {
    using T = scalar_t;
    const T st = static_cast<T>(step), cn = static_cast<T>(cone);
    if (N > 0) {
      count_kernel<T><<<blocks(N), kThreads, 0, stream>>>(
          N, g, o.data_ptr<T>(), d.data_ptr<T>(), t0.data_ptr<T>(), t1.data_ptr<T>(), st, cn,
          counts.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const at::Tensor offsets = counts.cumsum(0) - counts;
    const int64_t total = N ? counts.sum().item<int64_t>() : 0;  // sizes the output: one sync
    ray_indices = at::empty({total}, o.options().dtype(at::kLong));
    ts = at::empty({total}, o.options());
    te = at::empty({total}, o.options());
    if (total > 0) {
      fill_kernel<T><<<blocks(N), kThreads, 0, stream>>>(
          N, g, o.data_ptr<T>(), d.data_ptr<T>(), t0.data_ptr<T>(), t1.data_ptr<T>(), st, cn,
          offsets.data_ptr<int64_t>(), counts.data_ptr<int64_t>(),
          ray_indices.data_ptr<int64_t>(), ts.data_ptr<T>(),
          te.data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {ray_indices, ts, te};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("ray_aabb_intersect", &fastgen::ray_aabb_intersect_cuda);
  m.impl("occgrid_march", &fastgen::occgrid_march_cuda);
}

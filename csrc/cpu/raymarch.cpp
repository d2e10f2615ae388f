// CPU launchers for ray-box intersection and occupancy-grid marching (fastgen/ops/raymarch.py;
// per-ray logic in csrc/common/raymarch.h; schemas in csrc/registration.cpp). Marching runs once:
// contiguous chunks of rays collect their samples in growing buffers, concatenated in ray order
// (a CUDA launcher would count first, then fill: march() emits the same samples on every call).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "common/raymarch.h"

namespace fastgen {
namespace {

void check_rays(const at::Tensor& o, const at::Tensor& d, const char* name) {
  TORCH_CHECK(o.device().is_cpu() && d.device().is_cpu(), "fastgen::", name, ": CPU tensors");
  TORCH_CHECK(o.dim() == 2 && o.size(1) == 3 && d.sizes() == o.sizes(), "fastgen::", name,
              ": rays_o and rays_d must be [N, 3]");
  TORCH_CHECK(d.scalar_type() == o.scalar_type(), "fastgen::", name, ": one dtype for rays");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ray_aabb_intersect_cpu(
    const at::Tensor& o_, const at::Tensor& d_, const at::Tensor& boxes_) {
  check_rays(o_, d_, "ray_aabb_intersect");
  TORCH_CHECK(boxes_.dim() == 2 && boxes_.size(1) == 6 && boxes_.scalar_type() == o_.scalar_type(),
              "fastgen::ray_aabb_intersect: aabbs must be [M, 6] of the rays' dtype");
  const at::Tensor o = o_.contiguous(), d = d_.contiguous(), boxes = boxes_.contiguous();
  const int64_t N = o.size(0), M = boxes.size(0);
  at::Tensor tn = at::empty({N, M}, o.options()), tf = at::empty({N, M}, o.options());
  at::Tensor hit = at::empty({N, M}, o.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "ray_aabb_intersect", [&] {
    using T = scalar_t;
    const T *op = o.data_ptr<T>(), *dp = d.data_ptr<T>(), *bp = boxes.data_ptr<T>();
    T *a = tn.data_ptr<T>(), *b = tf.data_ptr<T>();
    bool* h = hit.data_ptr<bool>();
    at::parallel_for(0, N, 1024, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        for (int64_t m = 0; m < M; ++m)
          h[r * M + m] = raymarch::ray_aabb<T>(op + 3 * r, dp + 3 * r, bp + 6 * m, a + r * M + m,
                                               b + r * M + m);
    });
  });
  return {tn, tf, hit};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> occgrid_march_cpu(
    const at::Tensor& o_, const at::Tensor& d_, const at::Tensor& t0_, const at::Tensor& t1_,
    const at::Tensor& bits_, const at::Tensor& boxes_, double step, double cone) {
  check_rays(o_, d_, "occgrid_march");
  TORCH_CHECK(bits_.scalar_type() == at::kByte && bits_.dim() == 4 &&
                  bits_.size(1) == bits_.size(2) && bits_.size(2) == bits_.size(3),
              "fastgen::occgrid_march: the occupancy bits must be uint8 [L, res, res, res]");
  TORCH_CHECK(boxes_.scalar_type() == at::kFloat && boxes_.dim() == 2 && boxes_.size(1) == 6 &&
                  boxes_.size(0) == bits_.size(0) && bits_.size(0) >= 1,
              "fastgen::occgrid_march: level boxes must be float32 [L, 6], L >= 1");
  for (const at::Tensor* t : {&t0_, &t1_, &bits_, &boxes_}) {
    TORCH_CHECK(t->device().is_cpu(), "fastgen::occgrid_march: expected CPU tensors");
  }
  const at::Tensor o = o_.contiguous(), d = d_.contiguous(), t0 = t0_.contiguous(),
                   t1 = t1_.contiguous(), bits = bits_.contiguous(), boxes = boxes_.contiguous();
  TORCH_CHECK(t0.scalar_type() == o.scalar_type() && t1.scalar_type() == o.scalar_type() &&
                  t0.numel() == o.size(0) && t1.numel() == o.size(0),
              "fastgen::occgrid_march: t_min and t_max must be [N] of the rays' dtype");
  const int64_t N = o.size(0);
  const raymarch::Grid g{bits.data_ptr<uint8_t>(), boxes.data_ptr<float>(), bits.size(0),
                         bits.size(1)};
  at::Tensor ray_indices, ts, te;
  AT_DISPATCH_FLOATING_TYPES(o.scalar_type(), "occgrid_march", [&] {
    using T = scalar_t;
    const T *op = o.data_ptr<T>(), *dp = d.data_ptr<T>(), *ap = t0.data_ptr<T>(),
            *bp = t1.data_ptr<T>();
    const T st = static_cast<T>(step), cn = static_cast<T>(cone);
    // One pass: each chunk of rays (in ray order) collects its samples, then the chunks are
    // concatenated in order, so the output is sorted by ray whatever the threads did.
    const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(N, 8 * at::get_num_threads()));
    const int64_t per = (N + n_chunks - 1) / n_chunks;
    std::vector<std::vector<int64_t>> rays(n_chunks);
    std::vector<std::vector<T>> starts(n_chunks), ends(n_chunks);
    at::parallel_for(0, n_chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        for (int64_t r = c * per; r < std::min(N, (c + 1) * per); ++r) {
          raymarch::march<T>(g, op + 3 * r, dp + 3 * r, ap[r], bp[r], st, cn, [&](T a, T b) {
            rays[c].push_back(r);
            starts[c].push_back(a);
            ends[c].push_back(b);
          });
        }
      }
    });
    std::vector<int64_t> offset(n_chunks + 1, 0);
    for (int64_t c = 0; c < n_chunks; ++c) offset[c + 1] = offset[c] + rays[c].size();
    ray_indices = at::empty({offset[n_chunks]}, o.options().dtype(at::kLong));
    ts = at::empty({offset[n_chunks]}, o.options());
    te = at::empty({offset[n_chunks]}, o.options());
    int64_t* ri = ray_indices.data_ptr<int64_t>();
    T *tsp = ts.data_ptr<T>(), *tep = te.data_ptr<T>();
    at::parallel_for(0, n_chunks, 1, [&](int64_t cb, int64_t ce) {
      for (int64_t c = cb; c < ce; ++c) {
        std::copy(rays[c].begin(), rays[c].end(), ri + offset[c]);
        std::copy(starts[c].begin(), starts[c].end(), tsp + offset[c]);
        std::copy(ends[c].begin(), ends[c].end(), tep + offset[c]);
      }
    });
  });
  return {ray_indices, ts, te};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("ray_aabb_intersect", &fastgen::ray_aabb_intersect_cpu);
  m.impl("occgrid_march", &fastgen::occgrid_march_cpu);
}

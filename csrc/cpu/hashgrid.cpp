// CPU launchers for the hash-grid encoding ops (math: csrc/common/hashgrid.h).
//
//   fastgen::hashgrid_fwd      one group of points per thread, walked level by level
//   fastgen::hashgrid_bwd      parameter gradient: whole levels per thread, so every table entry
//                              has one writer and the scatter-add runs in point order — no
//                              atomics, bitwise reproducible for any thread count.
//                              input gradient: tasks = chunks of points, all levels per point.
//   fastgen::hashgrid_corners  one level's corner entries and weights (the deterministic
//                              scatter path in fastgen/ops/hashgrid.py sorts and reduces them)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>
#include <tuple>
#include <type_traits>

#include "common/hashgrid.h"
#include "common/hashgrid_dispatch.h"

namespace fastgen {
namespace hashgrid {
namespace {

constexpr int64_t kPointsPerTask = 2048;

void check_cpu(const char* op, const at::Tensor& x, const at::Tensor& params) {
  TORCH_CHECK(params.scalar_type() == at::kFloat || params.scalar_type() == at::kDouble, op,
              ": params must be float32 or float64 on CPU, got ", params.scalar_type());
  (void)x;
}

// Points go through in blocks: first every corner's entry and weight of the block is computed
// and its table row prefetched, then the rows are read (forward) or updated (backward). The
// table of a hashed level (4 MB in the standard config) misses L2 on almost every corner; issuing
// a block's misses together overlaps them instead of stalling on each in turn.
constexpr int kBlock = 32;

template <int D, typename T>
struct CornerBlock {
  static constexpr int kMaxCorners = 1 << D;
  uint32_t entry[kBlock][kMaxCorners];
  T weight[kBlock][kMaxCorners];
  bool valid[kBlock];
  int corners;

  // Corners of points n0 .. n0 + count of one level; prefetches row entry * F of `table` (for
  // writing when kWrite: the backward's read-modify-write then needs no ownership upgrade).
  template <int F, bool kWrite = false, typename P>
  void fill(const T* x, int64_t n0, int count, const Levels& lv, int level, const P* table) {
    corners = lv.interpolation == kNearest ? 1 : kMaxCorners;
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same<T, float>::value) {
      fill_simd(x, n0, count, lv, level);
    } else {
      fill_scalar(x, n0, count, lv, level);
    }
#else
    fill_scalar(x, n0, count, lv, level);
#endif
    for (int i = 0; i < count; ++i) {
      if (!valid[i]) continue;
      for (int k = 0; k < corners; ++k) {
        __builtin_prefetch(table + int64_t(entry[i][k]) * F, kWrite ? 1 : 0);
      }
    }
  }

  void fill_scalar(const T* x, int64_t n0, int count, const Levels& lv, int level) {
    for (int i = 0; i < count; ++i) {
      T xs[D];
      bool inside[D];
      valid[i] = load_point<D, T>(x, n0 + i, xs, inside);
      if (!valid[i]) continue;
      const Cell<D, T> c = locate<D, T>(xs, lv, level);
      int k = 0;
      for_each_corner<D, T>(c, lv, [&](uint32_t e, T w) {
        entry[i][k] = e;
        weight[i][k] = w;
        ++k;
      });
    }
  }

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  // fill_scalar's arithmetic, lane by lane, on Vectorized<float>: the same fma, floor, products
  // and uint32 index math in the same order, so the entries and weights are bitwise those of
  // the shared core (tests compare both paths). Only built where at::vec::fmadd is a true fma.
  void fill_simd(const float* x, int64_t n0, int count, const Levels& lv, int level) {
    using V = at::vec::Vectorized<float>;
    using VI = at::vec::Vectorized<int32_t>;
    constexpr int K = V::size();
    static_assert(kBlock % K == 0, "the block must hold whole vectors");
    const float scale = lv.scale[level];
    const uint32_t res = level_resolution(scale);
    const uint32_t entries = lv.offset[level + 1] - lv.offset[level];
    const bool hashed = level_is_hashed<D>(res, entries, lv.use_hash);
    const bool pow2 = (entries & (entries - 1u)) == 0u;
    const bool smooth = lv.interpolation == kSmoothstep;
    alignas(64) float xt[D][kBlock];
    for (int i = 0; i < kBlock; ++i) {
      bool ok = i < count;
      for (int d = 0; d < D; ++d) {
        const float v = ok ? x[(n0 + i) * D + d] : 0.0f;
        ok = ok && v == v;
        xt[d][i] = v;
      }
      valid[i] = ok;
      if (!ok) {
        for (int d = 0; d < D; ++d) xt[d][i] = 0.0f;
      }
    }
    alignas(64) int32_t idx[kBlock];
    alignas(64) float wt[kBlock];
    for (int i0 = 0; i0 < count; i0 += K) {
      V w[D];
      VI lo[D], hi[D];
      for (int d = 0; d < D; ++d) {
        const V v = at::vec::clamp(V::loadu(&xt[d][i0]), V(0.0f), V(1.0f));
        V pos = at::vec::fmadd(V(scale), v, V(0.5f));
        const V fl = pos.floor();
        const VI base = at::vec::convert_to_int_of_same_size(fl);
        pos = pos - fl;
        w[d] = smooth ? pos * pos * (V(3.0f) - V(2.0f) * pos) : pos;
        const VI m(static_cast<int32_t>(index_multiplier<D>(d, res, hashed)));
        lo[d] = base * m;
        hi[d] = lo[d] + m;
      }
      for (int k = 0; k < corners; ++k) {
        V wk(1.0f);
        VI ix = (corners > 1 && (k & 1)) ? hi[0] : lo[0];
        if (corners > 1) wk = wk * ((k & 1) ? w[0] : V(1.0f) - w[0]);
        for (int d = 1; d < D; ++d) {
          const bool up = corners > 1 && ((k >> d) & 1);
          ix = hashed ? (ix ^ (up ? hi[d] : lo[d])) : (ix + (up ? hi[d] : lo[d]));
          if (corners > 1) wk = wk * (up ? w[d] : V(1.0f) - w[d]);
        }
        if (pow2) ix = ix & VI(static_cast<int32_t>(entries - 1u));
        ix.store(idx);
        wk.store(wt);
        for (int j = 0; j < K; ++j) {
          uint32_t e = static_cast<uint32_t>(idx[j]);
          if (!pow2 && e >= entries) e %= entries;
          entry[i0 + j][k] = e;
          weight[i0 + j][k] = wt[j];
        }
      }
    }
  }
#endif

  // acc[f] = Σ_k w_k row_k[f] for point i, corners in order (C a constant: unrolled).
  template <int C, int F>
  void gather(int i, const T* table, T* acc) const {
    FASTGEN_UNROLL
    for (int k = 0; k < C; ++k) {
      const T* row = table + int64_t(entry[i][k]) * F;
      FASTGEN_UNROLL
      for (int f = 0; f < F; ++f) acc[f] = fused_mul_add(weight[i][k], row[f], acc[f]);
    }
  }

  // row_k[f] += w_k g[f] for point i.
  template <int C, int F>
  void scatter(int i, const T* g, T* table_grad) const {
    FASTGEN_UNROLL
    for (int k = 0; k < C; ++k) {
      T* row = table_grad + int64_t(entry[i][k]) * F;
      FASTGEN_UNROLL
      for (int f = 0; f < F; ++f) row[f] += weight[i][k] * g[f];
    }
  }
};

// [N, L, F] <-> [L, N, F] copies, parallel over points: each point's row of L * F values is
// read or written once, contiguously (torch's generic strided copy is ~3x slower for F = 2).
template <typename T>
void level_major_to_rows(const T* src, T* dst, int64_t N, int L, int F) {
  at::parallel_for(0, N, kPointsPerTask, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int l = 0; l < L; ++l) {
        for (int f = 0; f < F; ++f) dst[(n * L + l) * F + f] = src[(int64_t(l) * N + n) * F + f];
      }
    }
  });
}

template <typename T>
void rows_to_level_major(const T* src, T* dst, int64_t N, int L, int F) {
  at::parallel_for(0, N, kPointsPerTask, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int l = 0; l < L; ++l) {
        for (int f = 0; f < F; ++f) dst[(int64_t(l) * N + n) * F + f] = src[(n * L + l) * F + f];
      }
    }
  });
}

// Forward work is cut into one group of point chunks per thread; each thread walks its points
// level by level, so it has one level's table hot at a time, and every thread does the same
// mix of cheap dense and expensive hashed levels.
//
// out: [L, N, F], level-major: each level's pass writes one contiguous stream (a [N, L * F]
// output would be read for ownership and written back once per level: 16x the traffic).
template <int D, int F, typename T>
void forward_cpu(const T* x, const T* params, T* out, int64_t N, const Levels& levels) {
  const int64_t groups = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (N + kBlock - 1) / kBlock));
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    const Levels lv = levels;  // a private copy: stores to the outputs cannot alias it
    CornerBlock<D, T> blk;
    for (int64_t group = begin; group < end; ++group) {
      // Group boundaries on block multiples, so blocks never straddle two groups.
      const int64_t blocks = (N + kBlock - 1) / kBlock;
      const int64_t first = std::min(N, blocks * group / groups * kBlock);
      const int64_t last = std::min(N, blocks * (group + 1) / groups * kBlock);
      for (int level = 0; level < lv.n_levels; ++level) {
        const T* table = params + int64_t(lv.offset[level]) * F;
        for (int64_t n0 = first; n0 < last; n0 += kBlock) {
          const int count = static_cast<int>(std::min<int64_t>(kBlock, last - n0));
          blk.template fill<F>(x, n0, count, lv, level, table);
          for (int i = 0; i < count; ++i) {
            T* y = out + (int64_t(level) * N + n0 + i) * F;
            T acc[F] = {};
            if (!blk.valid[i]) {
              for (int f = 0; f < F; ++f) y[f] = std::numeric_limits<T>::quiet_NaN();
              continue;
            }
            // The corner order and the fma chain are level_forward's (csrc/common/hashgrid.h).
            if (blk.corners == 1) {
              blk.template gather<1, F>(i, table, acc);
            } else {
              blk.template gather<(1 << D), F>(i, table, acc);
            }
            for (int f = 0; f < F; ++f) y[f] = acc[f];
          }
        }
      }
    }
  });
}

// Levels dealt to `bins` threads, most expensive first onto the least loaded (a level whose
// table outgrows L2 costs about 2.5x a cache-resident one), so one thread does not get every
// hashed level while another gets the small dense ones.
inline std::vector<std::vector<int>> balance_levels(const Levels& lv, int F, int elem_size,
                                                    int bins) {
  std::vector<std::pair<double, int>> cost;
  for (int l = 0; l < lv.n_levels; ++l) {
    const double bytes = double(lv.offset[l + 1] - lv.offset[l]) * F * elem_size;
    cost.push_back({bytes > (512 << 10) ? 2.5 : 1.0, l});
  }
  std::stable_sort(cost.begin(), cost.end(), [](auto& a, auto& b) { return a.first > b.first; });
  std::vector<std::vector<int>> out(bins);
  std::vector<double> load(bins, 0.0);
  for (const auto& [c, l] : cost) {
    const int b = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    out[b].push_back(l);
    load[b] += c;
  }
  return out;
}

// One task per thread, each owning whole levels: every table entry has one writer and its
// updates run in point order — no atomics, and bitwise reproducible for any thread count. A
// level's gradient is zeroed by its owner just before its scatter, while it comes into cache.
// grad_out: [L, N, F], level-major, for the same reason as the forward's output.
template <int D, int F, typename T>
void backward_params_cpu(const T* grad_out, const T* x, T* grad, int64_t N, const Levels& levels) {
  const int bins = static_cast<int>(std::min<int64_t>(at::get_num_threads(), levels.n_levels));
  const auto owned = balance_levels(levels, F, sizeof(T), bins);
  at::parallel_for(0, bins, 1, [&](int64_t begin, int64_t end) {
    const Levels lv = levels;
    CornerBlock<D, T> blk;
    for (int64_t bin = begin; bin < end; ++bin) {
      for (const int level : owned[bin]) {
        T* table_grad = grad + int64_t(lv.offset[level]) * F;
        std::fill(table_grad, table_grad + int64_t(lv.offset[level + 1] - lv.offset[level]) * F,
                  T(0));
        for (int64_t n0 = 0; n0 < N; n0 += kBlock) {
          const int count = static_cast<int>(std::min<int64_t>(kBlock, N - n0));
          blk.template fill<F, true>(x, n0, count, lv, level, table_grad);
          for (int i = 0; i < count; ++i) {
            if (!blk.valid[i]) continue;
            const T* g = grad_out + (int64_t(level) * N + n0 + i) * F;
            if (blk.corners == 1) {
              blk.template scatter<1, F>(i, g, table_grad);
            } else {
              blk.template scatter<(1 << D), F>(i, g, table_grad);
            }
          }
        }
      }
    }
  });
}

template <int D, int F, typename T>
void backward_x_cpu(const T* grad_out, const T* x, const T* params, T* grad_x, int64_t N,
                    const Levels& levels) {
  const int64_t width = int64_t(levels.n_levels) * F;
  at::parallel_for(0, N, kPointsPerTask, [&](int64_t n0, int64_t n1) {
    const Levels lv = levels;
    for (int64_t n = n0; n < n1; ++n) {
      T xs[D];
      bool inside[D];
      T gx[D] = {};
      if (!load_point<D, T>(x, n, xs, inside)) {
        for (int d = 0; d < D; ++d) grad_x[n * D + d] = std::numeric_limits<T>::quiet_NaN();
        continue;
      }
      for (int level = 0; level < lv.n_levels; ++level) {
        const Cell<D, T> c = locate<D, T>(xs, lv, level);
        level_backward_x<D, F, T, T>(c, lv, params + int64_t(lv.offset[level]) * F,
                                     grad_out + n * width + int64_t(level) * F, gx);
      }
      // Clamped coordinates have zero derivative (torch.clamp's rule: the bounds pass).
      for (int d = 0; d < D; ++d) grad_x[n * D + d] = inside[d] ? gx[d] : T(0);
    }
  });
}

template <int D, typename T>
void corners_cpu(const T* x, int64_t* index, T* weight, int64_t N, const Levels& levels, int level) {
  const int C = levels.interpolation == kNearest ? 1 : (1 << D);
  at::parallel_for(0, N, kPointsPerTask, [&](int64_t n0, int64_t n1) {
    const Levels lv = levels;
    for (int64_t n = n0; n < n1; ++n) {
      T xs[D];
      bool inside[D];
      int64_t* idx = index + n * C;
      T* w = weight + n * C;
      if (!load_point<D, T>(x, n, xs, inside)) {
        for (int k = 0; k < C; ++k) {
          idx[k] = lv.offset[level];
          w[k] = T(0);
        }
        continue;
      }
      const Cell<D, T> c = locate<D, T>(xs, lv, level);
      int k = 0;
      for_each_corner<D, T>(c, lv, [&](uint32_t e, T wk) {
        idx[k] = int64_t(lv.offset[level]) + e;
        w[k] = wk;
        ++k;
      });
    }
  });
}

}  // namespace

at::Tensor hashgrid_fwd_cpu(const at::Tensor& x, const at::Tensor& params,
                            at::IntArrayRef offsets, at::ArrayRef<double> scales, int64_t F,
                            int64_t interpolation, bool use_hash) {
  const Levels lv = make_levels(offsets, scales, interpolation, use_hash);
  check_inputs("hashgrid_fwd", x, params, lv, F);
  check_cpu("hashgrid_fwd", x, params);
  const int64_t N = x.size(0);
  if (N == 0) return at::empty({N, int64_t(lv.n_levels) * F}, params.options());
  at::Tensor out = at::empty({int64_t(lv.n_levels), N, F}, params.options());
  at::Tensor rows = at::empty({N, int64_t(lv.n_levels) * F}, params.options());
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "hashgrid_fwd_cpu", [&] {
    dispatch_dims(x.size(1), F, [&](auto d, auto f) {
      forward_cpu<decltype(d)::value, decltype(f)::value, scalar_t>(
          x.data_ptr<scalar_t>(), params.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N, lv);
    });
    level_major_to_rows(out.data_ptr<scalar_t>(), rows.data_ptr<scalar_t>(), N, lv.n_levels,
                        static_cast<int>(F));
  });
  return rows;
}

std::tuple<at::Tensor, at::Tensor> hashgrid_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& params,
    at::IntArrayRef offsets, at::ArrayRef<double> scales, int64_t F, int64_t interpolation,
    bool use_hash, bool need_params_grad, bool need_x_grad) {
  const Levels lv = make_levels(offsets, scales, interpolation, use_hash);
  check_inputs("hashgrid_bwd", x, params, lv, F);
  check_cpu("hashgrid_bwd", x, params);
  const int64_t N = x.size(0);
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({N, int64_t(lv.n_levels) * F}) &&
                  grad_out.scalar_type() == params.scalar_type() && grad_out.is_contiguous(),
              "hashgrid_bwd: grad_out must be a contiguous [", N, ", ", lv.n_levels * F,
              "] tensor of the params dtype, got ", grad_out.sizes(), " ", grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == x.device(), "hashgrid_bwd: grad_out is on ",
              grad_out.device(), " but x on ", x.device());
  at::Tensor grad_params = need_params_grad ? at::empty_like(params) : params.new_empty({0});
  at::Tensor grad_x = need_x_grad ? at::empty_like(x) : x.new_empty({0});
  if (N == 0) {
    grad_params.zero_();
    grad_x.zero_();
    return {grad_params, grad_x};
  }
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "hashgrid_bwd_cpu", [&] {
    dispatch_dims(x.size(1), F, [&](auto d, auto f) {
      constexpr int D = decltype(d)::value;
      constexpr int FF = decltype(f)::value;
      if (need_params_grad) {
        at::Tensor g = at::empty({int64_t(lv.n_levels), N, FF}, grad_out.options());
        rows_to_level_major(grad_out.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), N,
                            lv.n_levels, FF);
        backward_params_cpu<D, FF, scalar_t>(g.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                             grad_params.data_ptr<scalar_t>(), N, lv);
      }
      if (need_x_grad) {
        backward_x_cpu<D, FF, scalar_t>(grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                        params.data_ptr<scalar_t>(), grad_x.data_ptr<scalar_t>(),
                                        N, lv);
      }
    });
  });
  return {grad_params, grad_x};
}

std::tuple<at::Tensor, at::Tensor> hashgrid_corners_cpu(
    const at::Tensor& x, at::IntArrayRef offsets, at::ArrayRef<double> scales, int64_t level,
    int64_t interpolation, bool use_hash) {
  const Levels lv = make_levels(offsets, scales, interpolation, use_hash);
  TORCH_CHECK(level >= 0 && level < lv.n_levels, "hashgrid_corners: level must be in [0, ",
              lv.n_levels, "), got ", level);
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 2 && x.size(1) <= 4 && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble),
              "hashgrid_corners: x must be a contiguous float32/float64 [N, D] tensor with D in "
              "{2, 3, 4}, got ", x.sizes(), " ", x.scalar_type());
  const int64_t N = x.size(0);
  const int64_t C = interpolation == kNearest ? 1 : (int64_t(1) << x.size(1));
  at::Tensor index = at::empty({N, C}, x.options().dtype(at::kLong));
  at::Tensor weight = at::empty({N, C}, x.options());
  if (N == 0) return {index, weight};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hashgrid_corners_cpu", [&] {
    dispatch_dims(x.size(1), 1, [&](auto d, auto) {
      corners_cpu<decltype(d)::value, scalar_t>(x.data_ptr<scalar_t>(),
                                                index.data_ptr<int64_t>(),
                                                weight.data_ptr<scalar_t>(), N, lv,
                                                static_cast<int>(level));
    });
  });
  return {index, weight};
}

}  // namespace hashgrid
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("hashgrid_fwd", &fastgen::hashgrid::hashgrid_fwd_cpu);
  m.impl("hashgrid_bwd", &fastgen::hashgrid::hashgrid_bwd_cpu);
  m.impl("hashgrid_corners", &fastgen::hashgrid::hashgrid_corners_cpu);
}

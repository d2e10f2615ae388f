// CPU launchers for the hash-grid encoding ops (math: csrc/common/hashgrid.h).
//
//   fastgen::hashgrid_fwd      one group of points per thread, walked level by level, into a
//                              planar [L, N, F] buffer, then copied point-major [N, L * F]
//   fastgen::hashgrid_fwd_planar  the planar buffer itself (for fastgen::mlp_mse)
//   fastgen::hashgrid_bwd      parameter gradient: whole levels per thread, so every table entry
//                              has one writer and the scatter-add runs in point order — no
//                              atomics, bitwise reproducible for any thread count.
//                              input gradient: tasks = chunks of points, all levels per point.
//                              grad_out point-major or planar (CPU only).
//   fastgen::hashgrid_corners  one level's corner entries and weights (the deterministic
//                              scatter path in fastgen/ops/hashgrid.py sorts and reduces them)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>
#include <tuple>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common/hashgrid.h"
#include "common/hashgrid_dispatch.h"
#include "cpu/buffer_pool.h"
#include "cpu/vec_io.h"

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
//
// float32 on an AVX2 build takes a vector path: the block's coordinates come from a transposed
// copy of x (Points::xt, made once per call), the cell and corner math runs 8 points per
// instruction, and with 2 features per level (every standard config) the forward loads each
// corner's pair of features as one 64-bit element, 4 points to a vector. It is the shared core's
// arithmetic lane by lane (the same fma, floor, products and uint32 index math in the same
// order), so its entries, weights and outputs are bitwise those of the scalar path (tested).
constexpr int kBlock = 32;
// Level tables up to this size are not prefetched (half the L2 of the smallest current cores).
constexpr int64_t kCacheResidentBytes = int64_t(256) << 10;
static_assert(kBlock == 32, "valid bits are one uint32 per block");

#if defined(__AVX2__) && defined(__FMA__)
constexpr bool kAvx2 = true;
#else
constexpr bool kAvx2 = false;
#endif

// The points of one call: x [N, D] row-major, and for the vector path x transposed to
// xt [D][stride] (stride = N rounded up to kBlock, padding NaN so tail lanes read as invalid).
template <typename T>
struct Points {
  const T* x;
  const float* xt = nullptr;
  int64_t stride = 0;
};

// Whether this build and dtype take the vector path.
template <typename T>
constexpr bool vector_path() {
  return kAvx2 && std::is_same<T, float>::value;
}

// xt for Points (see above); an empty tensor where the vector path does not apply.
template <typename T>
at::Tensor transpose_points(const at::Tensor& x) {
  if constexpr (!vector_path<T>()) {
    return at::Tensor();
  } else {
    const int64_t N = x.size(0), D = x.size(1);
    const int64_t stride = (N + kBlock - 1) / kBlock * kBlock;
    at::Tensor xt = cpu_pool::empty({D, stride}, x.options());
    const float* src = x.data_ptr<float>();
    float* dst = xt.data_ptr<float>();
    at::parallel_for(0, stride, 4096, [&](int64_t n0, int64_t n1) {
      for (int64_t d = 0; d < D; ++d) {
        for (int64_t n = n0; n < n1; ++n) {
          dst[d * stride + n] = n < N ? src[n * D + d] : std::numeric_limits<float>::quiet_NaN();
        }
      }
    });
    return xt;
  }
}

template <typename T>
Points<T> points(const at::Tensor& x, const at::Tensor& xt) {
  Points<T> p{x.data_ptr<T>()};
  if (xt.defined()) {
    p.xt = xt.data_ptr<float>();
    p.stride = xt.size(1);
  }
  return p;
}

template <int D, typename T>
struct CornerBlock {
  static constexpr int kMaxCorners = 1 << D;
  alignas(32) uint32_t entry[kMaxCorners][kBlock];  // [corner][point]
  alignas(32) T weight[kMaxCorners][kBlock];
  uint32_t valid;  // bit i: point n0 + i exists and its coordinates are not NaN
  int corners;

  // Corners of points n0 .. n0 + count of one level; prefetches row entry * F of `table` (for
  // writing when kWrite: the backward's read-modify-write then needs no ownership upgrade).
  template <int F, bool kWrite = false, typename P>
  void fill(const Points<T>& pts, int64_t n0, int count, const Levels& lv, int level,
            const P* table) {
    corners = lv.interpolation == kNearest ? 1 : kMaxCorners;
    if constexpr (vector_path<T>()) {
      fill_simd(pts, n0, count, lv, level);
    } else {
      fill_scalar(pts.x, n0, count, lv, level);
    }
    // A table that fits in L2 stays there while its level is worked on: prefetching its rows
    // would only add instructions (~15% of the 2-D image config's backward samples in a perf
    // profile).
    const int64_t bytes = int64_t(lv.offset[level + 1] - lv.offset[level]) * F * int64_t(sizeof(P));
    if (bytes <= kCacheResidentBytes) return;
    for (int k = 0; k < corners; ++k) {
      for (int i = 0; i < count; ++i) {
        if ((valid >> i) & 1u) {
          __builtin_prefetch(table + int64_t(entry[k][i]) * F, kWrite ? 1 : 0);
        }
      }
    }
  }

  void fill_scalar(const T* x, int64_t n0, int count, const Levels& lv, int level) {
    valid = 0;
    for (int i = 0; i < count; ++i) {
      T xs[D];
      bool inside[D];
      if (!load_point<D, T>(x, n0 + i, xs, inside)) continue;
      valid |= 1u << i;
      const Cell<D, T> c = locate<D, T>(xs, lv, level);
      int k = 0;
      for_each_corner<D, T>(c, lv, [&](uint32_t e, T w) {
        entry[k][i] = e;
        weight[k][i] = w;
        ++k;
      });
    }
  }

#if defined(__AVX2__) && defined(__FMA__)
  void fill_simd(const Points<float>& pts, int64_t n0, int count, const Levels& lv, int level) {
    const float scale = lv.scale[level];
    const uint32_t res = level_resolution(scale);
    const uint32_t entries = lv.offset[level + 1] - lv.offset[level];
    const bool hashed = level_is_hashed<D>(res, entries, lv.use_hash);
    const bool pow2 = (entries & (entries - 1u)) == 0u;
    // A dense index stays below (res + 1) * Σ_d m_d (every vertex coordinate <= res); when that
    // is below 2 * entries (and 2^31), index % entries is one conditional subtraction.
    uint64_t bound = 0;
    uint32_t mult[D];
    for (int d = 0; d < D; ++d) {
      mult[d] = index_multiplier<D>(d, res, hashed);
      bound += uint64_t(res + 1) * mult[d];
    }
    const bool wrap_once = !pow2 && !hashed && bound < 2 * uint64_t(entries) &&
                           bound < (uint64_t(1) << 31);
    const bool smooth = lv.interpolation == kSmoothstep;
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    valid = 0;
    for (int i0 = 0; i0 < count; i0 += 8) {
      __m256 w[D];
      __m256i lo[D], hi[D];
      __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
      for (int d = 0; d < D; ++d) {
        __m256 v = _mm256_loadu_ps(pts.xt + d * pts.stride + n0 + i0);
        const __m256 ordered = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
        ok = _mm256_and_ps(ok, ordered);
        v = _mm256_and_ps(v, ordered);  // NaN -> 0: the lane is computed, then ignored
        v = _mm256_min_ps(one, _mm256_max_ps(zero, v));
        __m256 pos = _mm256_fmadd_ps(_mm256_set1_ps(scale), v, _mm256_set1_ps(0.5f));
        const __m256 fl = _mm256_floor_ps(pos);
        const __m256i base = _mm256_cvttps_epi32(fl);
        pos = _mm256_sub_ps(pos, fl);
        w[d] = smooth ? _mm256_mul_ps(_mm256_mul_ps(pos, pos),
                                      _mm256_sub_ps(_mm256_set1_ps(3.0f),
                                                    _mm256_mul_ps(_mm256_set1_ps(2.0f), pos)))
                      : pos;
        const __m256i m = _mm256_set1_epi32(static_cast<int32_t>(mult[d]));
        lo[d] = _mm256_mullo_epi32(base, m);
        hi[d] = _mm256_add_epi32(lo[d], m);
      }
      const int lanes = std::min(8, count - i0);
      valid |= (uint32_t(_mm256_movemask_ps(ok)) & ((1u << lanes) - 1u)) << i0;
      for (int k = 0; k < corners; ++k) {
        const bool interp = corners > 1;
        __m256 wk = interp ? ((k & 1) ? w[0] : _mm256_sub_ps(one, w[0])) : one;
        __m256i ix = (interp && (k & 1)) ? hi[0] : lo[0];
        for (int d = 1; d < D; ++d) {
          const bool up = interp && ((k >> d) & 1);
          const __m256i t = up ? hi[d] : lo[d];
          ix = hashed ? _mm256_xor_si256(ix, t) : _mm256_add_epi32(ix, t);
          if (interp) wk = _mm256_mul_ps(wk, up ? w[d] : _mm256_sub_ps(one, w[d]));
        }
        if (pow2) {
          ix = _mm256_and_si256(ix, _mm256_set1_epi32(static_cast<int32_t>(entries - 1u)));
        } else if (wrap_once) {
          const __m256i e = _mm256_set1_epi32(static_cast<int32_t>(entries));
          const __m256i over = _mm256_cmpgt_epi32(ix, _mm256_sub_epi32(e, _mm256_set1_epi32(1)));
          ix = _mm256_sub_epi32(ix, _mm256_and_si256(over, e));
        }
        _mm256_store_si256(reinterpret_cast<__m256i*>(&entry[k][i0]), ix);
        _mm256_store_ps(&weight[k][i0], wk);
        if (!pow2 && !wrap_once) {
          for (int j = 0; j < 8; ++j) entry[k][i0 + j] %= entries;
        }
      }
    }
  }
#else
  void fill_simd(const Points<T>&, int64_t, int, const Levels&, int) {}
#endif

  // acc[f] = Σ_k w_k row_k[f] for point i, corners in order (C a constant: unrolled).
  template <int C, int F>
  void gather(int i, const T* table, T* acc) const {
    FASTGEN_UNROLL
    for (int k = 0; k < C; ++k) {
      const T* row = table + int64_t(entry[k][i]) * F;
      FASTGEN_UNROLL
      for (int f = 0; f < F; ++f) acc[f] = fused_mul_add(weight[k][i], row[f], acc[f]);
    }
  }

#if defined(__AVX2__) && defined(__FMA__)
  // The forward of the whole block for 2 features (float32): out[i * 2 + f] = Σ_k w_k row_k[f],
  // NaN for invalid points. Each corner's rows are loaded as 64-bit (f0, f1) pairs, 4 points to a
  // vector, and the weights duplicated to match, so one fma serves 4 points x 2 features. The
  // pairs are 4 scalar loads per vector rather than one vgatherdpd: 12-15% faster forwards on
  // the AMD EPYC (family 25) VM, measured A/B; and no int32 index limit.
  template <int C>
  void gather_pairs(int count, const float* table, float* out) const {
    // A row's 2 floats as one double, by memcpy (the table is float memory; compiles to a
    // plain 64-bit load)
    auto row = [table](uint32_t e) {
      double v;
      std::memcpy(&v, table + int64_t(e) * 2, sizeof(v));
      return v;
    };
    const __m256i dup_lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    const __m256i dup_hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
    const __m256i lane_bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 nan = _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN());
    for (int i0 = 0; i0 < count; i0 += 8) {
      __m256 acc_lo = _mm256_setzero_ps(), acc_hi = _mm256_setzero_ps();
      FASTGEN_UNROLL
      for (int k = 0; k < C; ++k) {
        const uint32_t* e = &entry[k][i0];  // every lane's entry is in range (tails included)
        const __m256 wk = _mm256_load_ps(&weight[k][i0]);
        auto pairs = [&](int j) {
          const __m128d a = _mm_set_pd(row(e[j + 1]), row(e[j]));
          const __m128d b = _mm_set_pd(row(e[j + 3]), row(e[j + 2]));
          return _mm256_castpd_ps(_mm256_insertf128_pd(_mm256_castpd128_pd256(a), b, 1));
        };
        const __m256 r_lo = pairs(0);
        const __m256 r_hi = pairs(4);
        acc_lo = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(wk, dup_lo), r_lo, acc_lo);
        acc_hi = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(wk, dup_hi), r_hi, acc_hi);
      }
      const __m256i bits = _mm256_set1_epi32(static_cast<int32_t>((valid >> i0) & 0xFFu));
      const __m256 ok = _mm256_castsi256_ps(
          _mm256_cmpeq_epi32(_mm256_and_si256(bits, lane_bit), lane_bit));
      acc_lo = _mm256_blendv_ps(nan, acc_lo, _mm256_permutevar8x32_ps(ok, dup_lo));
      acc_hi = _mm256_blendv_ps(nan, acc_hi, _mm256_permutevar8x32_ps(ok, dup_hi));
      if (count - i0 >= 8) {
        _mm256_storeu_ps(out + 2 * i0, acc_lo);
        _mm256_storeu_ps(out + 2 * i0 + 8, acc_hi);
      } else {
        alignas(32) float buf[16];
        _mm256_store_ps(buf, acc_lo);
        _mm256_store_ps(buf + 8, acc_hi);
        std::copy(buf, buf + 2 * (count - i0), out + 2 * i0);
      }
    }
  }
#endif

  // The forward of the whole block: out[i * F + f], NaN for invalid points.
  template <int F>
  void forward(int count, const T* table, T* out) const {
#if defined(__AVX2__) && defined(__FMA__)
    if constexpr (F == 2 && std::is_same<T, float>::value) {
      if (corners == 1) {
        gather_pairs<1>(count, table, out);
      } else {
        gather_pairs<(1 << D)>(count, table, out);
      }
      return;
    }
#endif
    for (int i = 0; i < count; ++i) {
      T* y = out + int64_t(i) * F;
      T acc[F] = {};
      if (!((valid >> i) & 1u)) {
        for (int f = 0; f < F; ++f) y[f] = std::numeric_limits<T>::quiet_NaN();
        continue;
      }
      // The corner order and the fma chain are level_forward's (csrc/common/hashgrid.h).
      if (corners == 1) {
        gather<1, F>(i, table, acc);
      } else {
        gather<(1 << D), F>(i, table, acc);
      }
      for (int f = 0; f < F; ++f) y[f] = acc[f];
    }
  }

  // row_k[f] += w_k g[f] for point i (one fma per feature; 2 float32 features as one pair).
  template <int C, int F>
  void scatter(int i, const T* g, T* table_grad) const {
#if defined(__AVX2__) && defined(__FMA__)
    if constexpr (F == 2 && std::is_same<T, float>::value) {
      // movq through __m128i (may_alias): the rows are float memory
      const __m128 gv = _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(g)));
      FASTGEN_UNROLL
      for (int k = 0; k < C; ++k) {
        auto* row = reinterpret_cast<__m128i*>(table_grad + int64_t(entry[k][i]) * 2);
        const __m128 r = _mm_fmadd_ps(_mm_set1_ps(weight[k][i]), gv,
                                      _mm_castsi128_ps(_mm_loadl_epi64(row)));
        _mm_storel_epi64(row, _mm_castps_si128(r));
      }
      return;
    }
#endif
    FASTGEN_UNROLL
    for (int k = 0; k < C; ++k) {
      T* row = table_grad + int64_t(entry[k][i]) * F;
      FASTGEN_UNROLL
      for (int f = 0; f < F; ++f) row[f] += weight[k][i] * g[f];
    }
  }
};

// Points first .. last of one level in blocks of kBlock, software-pipelined: block b + 1 is
// filled (its rows prefetched) before block b is used, so the prefetches have a whole block of
// work to land in instead of the few instructions between a fill and its own use (the loads
// stalled on them). use(block, n0, count) reads or updates the rows.
template <int F, bool kWrite, int D, typename T, typename P, typename Use>
void pipelined_blocks(CornerBlock<D, T> (&blk)[2], const Points<T>& x, int64_t first, int64_t last,
                      const Levels& lv, int level, const P* table, Use&& use) {
  auto count_at = [&](int64_t n0) {
    return static_cast<int>(std::min<int64_t>(kBlock, last - n0));
  };
  if (first >= last) return;
  blk[0].template fill<F, kWrite>(x, first, count_at(first), lv, level, table);
  int cur = 0;
  for (int64_t n0 = first; n0 < last; n0 += kBlock) {
    const int64_t next = n0 + kBlock;
    if (next < last) {
      blk[cur ^ 1].template fill<F, kWrite>(x, next, count_at(next), lv, level, table);
    }
    use(blk[cur], n0, count_at(n0));
    cur ^= 1;
  }
}

// dst[c][r] = src[r][c] for an R x C matrix of items of F values (a point's or a level's
// features): the [L, N, F] <-> [N, L, F] copies around the level-major kernels. Parallel over the
// longer side in 4 x 4 tiles (transpose_items_block, vec_io.h).
template <typename T>
void transpose_items(const T* src, T* dst, int64_t R, int64_t C, int F) {
  auto tile = [&](int64_t r0, int64_t c0) {
    transpose_items_block(src + (r0 * C + c0) * F, C * F, dst + (c0 * R + r0) * F, R * F,
                          std::min<int64_t>(4, R - r0), std::min<int64_t>(4, C - c0), F);
  };
  // The long side (points) in chunks of kChunk; within a chunk, 4 items of the short side
  // (levels) at a time across the whole chunk: 4 sequential streams on the level-major side,
  // while the chunk's point-major rows (kChunk x C x 8 bytes) stay in L2 for the 4 passes. (4 x 4
  // tiles walked point by point kept all 16 level streams open at once: slower.)
  constexpr int64_t kChunk = 512;
  const bool by_columns = C >= R;
  const int64_t longer = std::max(R, C), across = std::min(R, C);
  const int64_t chunks = (longer + kChunk - 1) / kChunk;
  at::parallel_for(0, chunks, kPointsPerTask / kChunk, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p1 = std::min(longer, (b + 1) * kChunk);
      for (int64_t s0 = 0; s0 < across; s0 += 4) {
        for (int64_t p0 = b * kChunk; p0 < p1; p0 += 4) {
          if (by_columns) {
            tile(s0, p0);
          } else {
            tile(p0, s0);
          }
        }
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
void forward_cpu(const Points<T>& x, const T* params, T* out, int64_t N, const Levels& levels) {
  const int64_t groups = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), (N + kBlock - 1) / kBlock));
  at::parallel_for(0, groups, 1, [&](int64_t begin, int64_t end) {
    const Levels lv = levels;  // a private copy: stores to the outputs cannot alias it
    CornerBlock<D, T> blk[2];
    for (int64_t group = begin; group < end; ++group) {
      // Group boundaries on block multiples, so blocks never straddle two groups.
      const int64_t blocks = (N + kBlock - 1) / kBlock;
      const int64_t first = std::min(N, blocks * group / groups * kBlock);
      const int64_t last = std::min(N, blocks * (group + 1) / groups * kBlock);
      for (int level = 0; level < lv.n_levels; ++level) {
        const T* table = params + int64_t(lv.offset[level]) * F;
        pipelined_blocks<F, false>(blk, x, first, last, lv, level, table,
                                   [&](const CornerBlock<D, T>& b, int64_t n0, int count) {
          b.template forward<F>(count, table, out + (int64_t(level) * N + n0) * F);
        });
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
void backward_params_cpu(const T* grad_out, const Points<T>& x, T* grad, int64_t N,
                         const Levels& levels) {
  const int bins = static_cast<int>(std::min<int64_t>(at::get_num_threads(), levels.n_levels));
  const auto owned = balance_levels(levels, F, sizeof(T), bins);
  at::parallel_for(0, bins, 1, [&](int64_t begin, int64_t end) {
    const Levels lv = levels;
    CornerBlock<D, T> blk[2];
    for (int64_t bin = begin; bin < end; ++bin) {
      for (const int level : owned[bin]) {
        T* table_grad = grad + int64_t(lv.offset[level]) * F;
        std::fill(table_grad, table_grad + int64_t(lv.offset[level + 1] - lv.offset[level]) * F,
                  T(0));
        pipelined_blocks<F, true>(blk, x, 0, N, lv, level, table_grad,
                                  [&](const CornerBlock<D, T>& b, int64_t n0, int count) {
          for (int i = 0; i < count; ++i) {
            if (!((b.valid >> i) & 1u)) continue;
            const T* g = grad_out + (int64_t(level) * N + n0 + i) * F;
            if (b.corners == 1) {
              b.template scatter<1, F>(i, g, table_grad);
            } else {
              b.template scatter<(1 << D), F>(i, g, table_grad);
            }
          }
        });
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

// The encoding as the kernels compute it: planar [L, N, F], one level after another; point-major
// [N, L * F] (hashgrid_fwd) is a transposed copy of it.
at::Tensor encode_planar(const char* op, const at::Tensor& x, const at::Tensor& params,
                         at::IntArrayRef offsets, at::ArrayRef<double> scales, int64_t F,
                         int64_t interpolation, bool use_hash) {
  const Levels lv = make_levels(offsets, scales, interpolation, use_hash);
  check_inputs(op, x, params, lv, F);
  check_cpu(op, x, params);
  const int64_t N = x.size(0);
  at::Tensor out = cpu_pool::empty({int64_t(lv.n_levels), N, F}, params.options());
  if (N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "hashgrid_fwd_cpu", [&] {
    const at::Tensor xt = transpose_points<scalar_t>(x);
    const Points<scalar_t> pts = points<scalar_t>(x, xt);
    dispatch_dims(x.size(1), F, [&](auto d, auto f) {
      forward_cpu<decltype(d)::value, decltype(f)::value, scalar_t>(
          pts, params.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), N, lv);
    });
  });
  return out;
}

at::Tensor hashgrid_fwd_cpu(const at::Tensor& x, const at::Tensor& params,
                            at::IntArrayRef offsets, at::ArrayRef<double> scales, int64_t F,
                            int64_t interpolation, bool use_hash) {
  const at::Tensor out =
      encode_planar("hashgrid_fwd", x, params, offsets, scales, F, interpolation, use_hash);
  const int64_t L = out.size(0), N = out.size(1);
  at::Tensor rows = cpu_pool::empty({N, L * F}, params.options());
  if (N == 0) return rows;
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "hashgrid_fwd_cpu", [&] {
    transpose_items(out.data_ptr<scalar_t>(), rows.data_ptr<scalar_t>(), L, N,
                    static_cast<int>(F));
  });
  return rows;
}

at::Tensor hashgrid_fwd_planar_cpu(const at::Tensor& x, const at::Tensor& params,
                                   at::IntArrayRef offsets, at::ArrayRef<double> scales,
                                   int64_t F, int64_t interpolation, bool use_hash) {
  return encode_planar("hashgrid_fwd_planar", x, params, offsets, scales, F, interpolation,
                       use_hash);
}

std::tuple<at::Tensor, at::Tensor> hashgrid_bwd_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& params,
    at::IntArrayRef offsets, at::ArrayRef<double> scales, int64_t F, int64_t interpolation,
    bool use_hash, bool need_params_grad, bool need_x_grad) {
  const Levels lv = make_levels(offsets, scales, interpolation, use_hash);
  check_inputs("hashgrid_bwd", x, params, lv, F);
  check_cpu("hashgrid_bwd", x, params);
  const int64_t N = x.size(0), L = lv.n_levels;
  // grad_out point-major [N, L * F] (hashgrid_fwd's) or planar [L, N, F] (hashgrid_fwd_planar's)
  const bool planar = grad_out.dim() == 3;
  TORCH_CHECK((grad_out.sizes() == at::IntArrayRef({N, L * F}) ||
               grad_out.sizes() == at::IntArrayRef({L, N, F})) &&
                  grad_out.scalar_type() == params.scalar_type() && grad_out.is_contiguous(),
              "hashgrid_bwd: grad_out must be a contiguous [", N, ", ", L * F, "] (or planar [",
              L, ", ", N, ", ", F, "]) tensor of the params dtype, got ", grad_out.sizes(), " ",
              grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == x.device(), "hashgrid_bwd: grad_out is on ",
              grad_out.device(), " but x on ", x.device());
  at::Tensor grad_params =
      need_params_grad ? cpu_pool::empty(params.sizes(), params.options()) : params.new_empty({0});
  at::Tensor grad_x = need_x_grad ? cpu_pool::empty(x.sizes(), x.options()) : x.new_empty({0});
  if (N == 0) {
    grad_params.zero_();
    grad_x.zero_();
    return {grad_params, grad_x};
  }
  AT_DISPATCH_FLOATING_TYPES(params.scalar_type(), "hashgrid_bwd_cpu", [&] {
    dispatch_dims(x.size(1), F, [&](auto d, auto f) {
      constexpr int D = decltype(d)::value;
      constexpr int FF = decltype(f)::value;
      // the parameter gradient reads grad_out planar, the input gradient point-major
      at::Tensor planes = grad_out, rows = grad_out;
      if (need_params_grad && !planar) {
        planes = cpu_pool::empty({L, N, FF}, grad_out.options());
        transpose_items(grad_out.data_ptr<scalar_t>(), planes.data_ptr<scalar_t>(), N, L, FF);
      }
      if (need_x_grad && planar) {
        rows = cpu_pool::empty({N, L * FF}, grad_out.options());
        transpose_items(grad_out.data_ptr<scalar_t>(), rows.data_ptr<scalar_t>(), L, N, FF);
      }
      if (need_params_grad) {
        const at::Tensor xt = transpose_points<scalar_t>(x);
        backward_params_cpu<D, FF, scalar_t>(planes.data_ptr<scalar_t>(), points<scalar_t>(x, xt),
                                             grad_params.data_ptr<scalar_t>(), N, lv);
      }
      if (need_x_grad) {
        backward_x_cpu<D, FF, scalar_t>(rows.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
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
  m.impl("hashgrid_fwd_planar", &fastgen::hashgrid::hashgrid_fwd_planar_cpu);
  m.impl("hashgrid_bwd", &fastgen::hashgrid::hashgrid_bwd_cpu);
  m.impl("hashgrid_corners", &fastgen::hashgrid::hashgrid_corners_cpu);
}

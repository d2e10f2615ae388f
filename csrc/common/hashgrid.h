// Multiresolution hash-grid encoding (Instant-NGP), per point and per level, written once for the
// CPU launcher (csrc/cpu/hashgrid.cpp) and the CUDA launcher (csrc/cuda/hashgrid.cu).
//
// Numerics follow tiny-cuda-nn's HashGrid (spec: ../shared/reference/nerf.md §1):
//   scale_l = exp2f(l * log2f(per_level_scale)) * base_resolution - 1      (host, float32)
//   res_l   = (uint32)ceilf(scale_l) + 1
//   pos     = fmaf(scale_l, x, 0.5);  cell = floor(pos);  frac = pos - cell
//   index   = dense Σ p_d res^d when the level's table holds every vertex, else the coherent-prime
//             hash XOR_d p_d * PRIMES[d]; then index % entries_in_level            (uint32 wraps)
//   y_l     = Σ_corners (Π_d c_d ? w_d : 1 - w_d) * E[index]   (fma, corner order 0 .. 2^D - 1)
// The one departure: x is clamped to [0, 1] first (tcnn reads out-of-range x through uint32
// wrap-around, and a float-to-int conversion of a huge x is undefined behaviour in C++). A NaN
// coordinate makes the point's outputs NaN and its parameter gradient zero.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/fastgen.h"

namespace fastgen {
namespace hashgrid {

constexpr int kMaxLevels = 32;
enum Interpolation : int { kNearest = 0, kLinear = 1, kSmoothstep = 2 };

// Everything a kernel needs about the levels, passed by value (fits in CUDA kernel parameters).
struct Levels {
  int n_levels;
  bool use_hash;                      // grid type Hash (else Dense or Tiled: index wraps)
  int interpolation;                  // Interpolation
  uint32_t offset[kMaxLevels + 1];    // first table entry of each level; offset[L] = entries
  float scale[kMaxLevels];            // scale_l in float32, computed on the host as tcnn does
};

FASTGEN_HD uint32_t level_resolution(float scale) {
  return static_cast<uint32_t>(ceilf(scale)) + 1u;
}

// Largest resolution whose dense index res^D still fits in uint32 (tcnn's MAX_BASES).
template <int D>
FASTGEN_HD uint32_t max_dense_base() {
  return D == 1 ? 0xFFFFFFFFu : D == 2 ? 0xFFFFu : D == 3 ? 0x659u : 0xFFu;
}

FASTGEN_HD float fused_mul_add(float a, float b, float c) { return fmaf(a, b, c); }
FASTGEN_HD double fused_mul_add(double a, double b, double c) { return fma(a, b, c); }

// One level's view of one point: the cell, interpolation weights w_d and their derivatives, and
// per-dimension index terms of the cell's lower and upper vertices, so that a corner's table
// entry is D - 1 XORs (hashed) or adds (dense) of precomputed terms instead of a fresh hash.
template <int D, typename acc_t>
struct Cell {
  uint32_t base[D];
  acc_t w[D];   // weight of the upper corner along d (smoothstepped when asked)
  acc_t dw[D];  // dw_d / dfrac_d
  uint32_t lo[D], hi[D];  // p_d * PRIMES[d] (hashed) or p_d * res^d (dense), p_d = base_d (+1)
  acc_t scale;
  uint32_t res;
  uint32_t entries;
  bool hashed;
};

// One coordinate: cell index, interpolation weight of the upper vertex, and its derivative.
template <typename acc_t>
FASTGEN_HD void pos_fract(acc_t scale, acc_t x, int interpolation, uint32_t* base, acc_t* w,
                          acc_t* dw) {
  acc_t pos = fused_mul_add(scale, x, acc_t(0.5));
  const acc_t fl = floor(pos);
  *base = static_cast<uint32_t>(static_cast<int>(fl));
  pos -= fl;
  const bool smooth = interpolation == kSmoothstep;
  *dw = smooth ? acc_t(6) * pos * (acc_t(1) - pos) : acc_t(1);
  *w = smooth ? pos * pos * (acc_t(3) - acc_t(2) * pos) : pos;
}

// tcnn's grid_index decides per level: hash when the table is smaller than the dense stride
// res^D (taken as "too large" past MAX_BASES).
template <int D>
FASTGEN_HD bool level_is_hashed(uint32_t res, uint32_t entries, bool use_hash) {
  uint64_t stride = 1;
  FASTGEN_UNROLL
  for (int d = 0; d < D; ++d) stride *= res;
  if (res > max_dense_base<D>()) stride = 0xFFFFFFFFull;
  return use_hash && entries < stride;
}

// Vertex coordinate p_d enters the index as p_d * m_d: PRIMES[d] (hashed, XOR-combined) or
// res^d (dense, summed), both in uint32 arithmetic. A dense (or tiled) level past MAX_BASES has
// no dense index in tcnn's grid_index (it stays 0), so every multiplier is 0 there.
template <int D>
FASTGEN_HD uint32_t index_multiplier(int d, uint32_t res, bool hashed) {
  constexpr uint32_t kPrimes[7] = {1u, 2654435761u, 805459861u, 3674653429u,
                                   2097192037u, 1434869437u, 2165219737u};
  if (hashed) return kPrimes[d];
  if (res > max_dense_base<D>()) return 0u;
  uint32_t m = 1;
  for (int j = 0; j < d; ++j) m *= res;
  return m;
}

// xs: D coordinates already clamped to [0, 1] and not NaN.
template <int D, typename acc_t>
FASTGEN_HD Cell<D, acc_t> locate(const acc_t* xs, const Levels& lv, int level) {
  Cell<D, acc_t> c;
  c.scale = static_cast<acc_t>(lv.scale[level]);
  c.res = level_resolution(lv.scale[level]);
  c.entries = lv.offset[level + 1] - lv.offset[level];
  c.hashed = level_is_hashed<D>(c.res, c.entries, lv.use_hash);
  FASTGEN_UNROLL
  for (int d = 0; d < D; ++d) {
    pos_fract<acc_t>(c.scale, xs[d], lv.interpolation, &c.base[d], &c.w[d], &c.dw[d]);
    const uint32_t m = index_multiplier<D>(d, c.res, c.hashed);
    c.lo[d] = c.base[d] * m;
    c.hi[d] = c.lo[d] + m;
  }
  return c;
}

// Entry of the vertex whose bit d of `up` selects base_d + 1: grid_index without recomputing.
template <int D, typename acc_t>
FASTGEN_HD uint32_t cell_entry(const Cell<D, acc_t>& c, uint32_t up) {
  uint32_t index = (up & 1u) ? c.hi[0] : c.lo[0];
  FASTGEN_UNROLL
  for (int d = 1; d < D; ++d) {
    const uint32_t t = ((up >> d) & 1u) ? c.hi[d] : c.lo[d];
    index = c.hashed ? (index ^ t) : (index + t);
  }
  // index % entries without a division where possible: hashed tables are powers of two, and a
  // dense index overshoots only at the upper face (x = 1 with the 0.5 offset).
  if ((c.entries & (c.entries - 1u)) == 0u) return index & (c.entries - 1u);
  return index < c.entries ? index : index % c.entries;
}

// Clamps one coordinate to [0, 1]; NaN stays NaN.
template <typename acc_t>
FASTGEN_HD acc_t clamp01(acc_t v) {
  return v < acc_t(0) ? acc_t(0) : (v > acc_t(1) ? acc_t(1) : v);
}

// Reads point n's coordinates, clamped to [0, 1]; false when one is NaN.
template <int D, typename acc_t>
FASTGEN_HD bool load_point(const acc_t* x, int64_t n, acc_t* xs, bool* inside) {
  bool finite = true;
  FASTGEN_UNROLL
  for (int d = 0; d < D; ++d) {
    const acc_t v = x[n * D + d];
    if (v != v) finite = false;
    inside[d] = v >= acc_t(0) && v <= acc_t(1);
    xs[d] = clamp01(v);
  }
  return finite;
}

// Table entry and weight of corner k (bit d of k: upper neighbour along d) — for Nearest the
// single corner is the cell's own vertex with weight 1.
template <int D, typename acc_t>
FASTGEN_HD uint32_t corner(const Cell<D, acc_t>& c, int k, acc_t* weight) {
  acc_t w = acc_t(1);
  FASTGEN_UNROLL
  for (int d = 0; d < D; ++d) w *= ((k >> d) & 1) ? c.w[d] : acc_t(1) - c.w[d];
  *weight = w;
  return cell_entry<D, acc_t>(c, static_cast<uint32_t>(k));
}

template <int D, typename acc_t>
FASTGEN_HD int n_corners(const Levels& lv) {
  return lv.interpolation == kNearest ? 1 : (1 << D);
}

// y[f] = Σ_k w_k E[index_k, f]. table points at the level's first entry.
template <int D, int F, typename scalar_t, typename acc_t>
FASTGEN_HD void level_forward(const Cell<D, acc_t>& c, const Levels& lv, const scalar_t* table,
                              acc_t* y) {
  FASTGEN_UNROLL
  for (int f = 0; f < F; ++f) y[f] = acc_t(0);
  if (lv.interpolation == kNearest) {
    const uint32_t e = cell_entry<D, acc_t>(c, 0u);
    FASTGEN_UNROLL
    for (int f = 0; f < F; ++f) y[f] = static_cast<acc_t>(table[int64_t(e) * F + f]);
    return;
  }
  FASTGEN_UNROLL
  for (int k = 0; k < (1 << D); ++k) {
    acc_t w;
    const uint32_t e = corner<D, acc_t>(c, k, &w);
    FASTGEN_UNROLL
    for (int f = 0; f < F; ++f) {
      y[f] = fused_mul_add(w, static_cast<acc_t>(table[int64_t(e) * F + f]), y[f]);
    }
  }
}

// Calls add(entry, weight) for every corner in order (the parameter gradient is
// grad[entry * F + f] += weight * g[f]).
template <int D, typename acc_t, typename Add>
FASTGEN_HD void for_each_corner(const Cell<D, acc_t>& c, const Levels& lv, Add&& add) {
  if (lv.interpolation == kNearest) {
    add(cell_entry<D, acc_t>(c, 0u), acc_t(1));
    return;
  }
  FASTGEN_UNROLL
  for (int k = 0; k < (1 << D); ++k) {
    acc_t w;
    const uint32_t e = corner<D, acc_t>(c, k, &w);
    add(e, w);
  }
}

// dL/dx_d += Σ_f g[f] dy_f/dx_d with dy_f/dx_d = scale Σ_{other corners} w_others (E[hi] - E[lo])
// dw_d/dfrac (tcnn's formula; the factor is scale, not res). Nearest has no x gradient.
template <int D, int F, typename scalar_t, typename acc_t>
FASTGEN_HD void level_backward_x(const Cell<D, acc_t>& c, const Levels& lv, const scalar_t* table,
                                 const acc_t* g, acc_t* gx) {
  if (lv.interpolation == kNearest) return;
  FASTGEN_UNROLL
  for (int gd = 0; gd < D; ++gd) {
    acc_t acc = acc_t(0);
    FASTGEN_UNROLL
    for (int k = 0; k < (1 << (D - 1)); ++k) {
      uint32_t up = 0;
      acc_t w = c.scale;
      FASTGEN_UNROLL
      for (int j = 0; j < D - 1; ++j) {
        const int d = j >= gd ? j + 1 : j;
        const bool bit = (k >> j) & 1;
        up |= uint32_t(bit) << d;
        w *= bit ? c.w[d] : acc_t(1) - c.w[d];
      }
      const uint32_t lo = cell_entry<D, acc_t>(c, up);
      const uint32_t hi = cell_entry<D, acc_t>(c, up | (1u << gd));
      FASTGEN_UNROLL
      for (int f = 0; f < F; ++f) {
        const acc_t diff = static_cast<acc_t>(table[int64_t(hi) * F + f]) -
                           static_cast<acc_t>(table[int64_t(lo) * F + f]);
        acc += g[f] * w * diff * c.dw[gd];
      }
    }
    gx[gd] += acc;
  }
}

}  // namespace hashgrid
}  // namespace fastgen

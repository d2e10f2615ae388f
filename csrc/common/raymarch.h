// Per-ray intersection and occupancy-grid marching shared by the C++ launchers
// (csrc/cpu/raymarch.cpp). Rules: fastgen/ops/raymarch.py and ../shared/reference/nerf.md §2-3.
//
// Grid: L levels of res³ cells; level l covers box l (the region of interest scaled by 2^l about
// its centre). A point belongs to the finest level whose box contains it; cell (i, j, k) of a
// level is bit (l·res + i)·res² + j·res + k of the occupancy field.
//
// Marching a ray over [t0, t1): step dt = clamp(t · cone, step, +inf); a sample [t, t + dt) is
// kept when its midpoint lies in an occupied cell (its end is clipped to t1). An empty cell is
// skipped at once: t jumps to where the ray leaves that cell (a DDA step), so the work grows with
// the occupied length, not with the ray length.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "common/fastgen.h"

namespace fastgen {
namespace raymarch {

template <typename T>
FASTGEN_HD T inf_() {
  return std::numeric_limits<T>::infinity();
}

// Slab test: [*tn, *tf] of the ray inside box lo..hi (3 + 3 values); returns tf > tn. An axis the
// ray is parallel to bounds nothing when the origin lies within the slab, else it misses.
template <typename T>
FASTGEN_HD bool ray_aabb(const T* o, const T* d, const T* box, T* tn, T* tf) {
  T a = -inf_<T>(), b = inf_<T>();
  for (int ax = 0; ax < 3; ++ax) {
    const T lo = box[ax], hi = box[3 + ax];
    if (d[ax] == T(0)) {
      if (o[ax] < lo || o[ax] > hi) {
        a = inf_<T>();
        b = -inf_<T>();
      }
      continue;
    }
    const T inv = T(1) / d[ax];
    T t1 = (lo - o[ax]) * inv, t2 = (hi - o[ax]) * inv;
    if (t1 > t2) {
      const T s = t1;
      t1 = t2;
      t2 = s;
    }
    a = t1 > a ? t1 : a;
    b = t2 < b ? t2 : b;
  }
  *tn = a;
  *tf = b;
  return b > a;
}

struct Grid {
  const uint8_t* bits;  // [L, res, res, res]
  const float* boxes;   // [L, 6] (lo xyz, hi xyz)
  int64_t levels, res;
};

// Level and flat cell of point x, or -1 when x is outside every level's box.
template <typename T>
FASTGEN_HD int64_t locate(const Grid& g, const T* x, int64_t* level, T* cell_lo, T* cell_size) {
  for (int64_t l = 0; l < g.levels; ++l) {
    const float* box = g.boxes + 6 * l;
    bool inside = true;
    for (int ax = 0; ax < 3; ++ax) inside = inside && x[ax] >= box[ax] && x[ax] <= box[3 + ax];
    if (!inside) continue;
    int64_t flat = l;
    for (int ax = 0; ax < 3; ++ax) {
      const T size = (T(box[3 + ax]) - T(box[ax])) / T(g.res);
      int64_t i = static_cast<int64_t>(std::floor((x[ax] - T(box[ax])) / size));
      i = i < 0 ? 0 : (i >= g.res ? g.res - 1 : i);
      flat = flat * g.res + i;
      cell_lo[ax] = T(box[ax]) + T(i) * size;
      cell_size[ax] = size;
    }
    *level = l;
    return flat;
  }
  *level = -1;
  return -1;
}

// Where the ray leaves the cell [lo, lo + size] (the smallest positive-direction exit over axes).
template <typename T>
FASTGEN_HD T cell_exit(const T* o, const T* d, const T* lo, const T* size) {
  T t = inf_<T>();
  for (int ax = 0; ax < 3; ++ax) {
    if (d[ax] > T(0)) {
      const T e = (lo[ax] + size[ax] - o[ax]) / d[ax];
      t = e < t ? e : t;
    } else if (d[ax] < T(0)) {
      const T e = (lo[ax] - o[ax]) / d[ax];
      t = e < t ? e : t;
    }
  }
  return t;
}

// Marches one ray over [t0, t1) clipped to the outermost level's box; calls emit(t_start,
// t_end) for each kept sample, in order; returns the count. The same call with the same inputs
// emits the same samples (a count pass and a fill pass agree).
template <typename T, typename Emit>
FASTGEN_HD int64_t march(const Grid& g, const T* o, const T* d, T t0, T t1, T step, T cone,
                         Emit emit) {
  T box[6];
  for (int i = 0; i < 6; ++i) box[i] = T(g.boxes[6 * (g.levels - 1) + i]);
  T tn, tf;
  if (!ray_aabb(o, d, box, &tn, &tf)) return 0;
  t0 = t0 > tn ? t0 : tn;
  t1 = t1 < tf ? t1 : tf;
  int64_t n = 0;
  T t = t0;
  while (t < t1) {
    T dt = t * cone;
    dt = dt > step ? dt : step;
    if (!(t + dt > t)) break;  // the step vanishes in this precision: stop, do not stall
    const T mid = t + dt * T(0.5);
    if (!(mid < t1)) break;
    T x[3], lo[3], size[3];
    for (int ax = 0; ax < 3; ++ax) x[ax] = o[ax] + d[ax] * mid;
    int64_t level;
    const int64_t flat = locate(g, x, &level, lo, size);
    if (flat < 0) break;  // outside the outermost box: the ray is done
    if (g.bits[flat]) {
      const T end = t + dt < t1 ? t + dt : t1;
      emit(t, end);
      ++n;
      t = t + dt;
    } else {
      T exit = cell_exit(o, d, lo, size);
      if (level > 0) {  // a coarse cell may straddle the finer level's box: stop at its entry
        for (int i = 0; i < 6; ++i) box[i] = T(g.boxes[6 * (level - 1) + i]);
        if (ray_aabb(o, d, box, &tn, &tf) && tn > t && tn < exit) exit = tn;
      }
      t = exit > t ? exit : t + dt;  // always progress
    }
  }
  return n;
}

}  // namespace raymarch
}  // namespace fastgen

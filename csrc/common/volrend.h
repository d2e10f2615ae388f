// Per-ray volume rendering (compositing) shared by the CPU launcher (csrc/cpu/volrend.cpp) and a
// CUDA launcher: the logic a GPU would run is the logic the CPU tests exercise. Math and sources:
// fastgen/reference/volrend.py, ../shared/reference/nerf.md §4.
//
//   δ_i = t_end_i − t_start_i,  T_i = exp(−Σ_{j<i} σ_j δ_j)  (exclusive sum, as nerfacc),
//   α_i = 1 − exp(−σ_i δ_i),    w_i = T_i α_i,
//   color = Σ w_i c_i,  opacity = Σ w_i,  depth = Σ w_i (t_start_i + t_end_i) / 2.
//
// Early termination: with eps > 0 a ray stops at the first sample whose T_i < eps; that sample
// and the rest get w = 0 and T = 0 and no gradient. Samples before the stop are "live": T_i >= eps
// (or eps = 0), so the backward finds the same prefix from the saved T alone.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/fastgen.h"

namespace fastgen {
namespace volrend {

template <typename T>
FASTGEN_HD T exp_(T x) {
  using std::exp;
  return exp(x);
}

template <typename T>
FASTGEN_HD T expm1_(T x) {
  using std::expm1;
  return expm1(x);
}

// One ray's n samples (pointers already offset to the ray's first sample). rgb: [n, C].
template <typename T>
FASTGEN_HD void ray_fwd(int64_t n, int64_t C, const T* sigma, const T* rgb, const T* ts,
                        const T* te, T eps, T* w, T* trans, T* color, T* opacity, T* depth) {
  T tau = 0, op = 0, dep = 0;
  for (int64_t c = 0; c < C; ++c) color[c] = 0;
  int64_t i = 0;
  for (; i < n; ++i) {
    const T Ti = exp_(-tau);
    if (eps > 0 && Ti < eps) break;
    const T st = sigma[i] * (te[i] - ts[i]);
    const T wi = Ti * -expm1_(-st);  // T_i α_i, α from expm1 (exact for small σδ)
    w[i] = wi;
    trans[i] = Ti;
    for (int64_t c = 0; c < C; ++c) color[c] += wi * rgb[i * C + c];
    op += wi;
    dep += wi * (ts[i] + te[i]) * T(0.5);
    tau += st;
  }
  for (; i < n; ++i) {
    w[i] = 0;
    trans[i] = 0;
  }
  *opacity = op;
  *depth = dep;
}

// Gradients of one ray. g_color [C], g_opacity, g_depth: upstream gradients of the ray's outputs;
// g_w, g_trans: of the per-sample outputs (nullptr: zero). With h_k = ∂L/∂w_k (all uses of w_k):
//   ∂L/∂σ_k = δ_k [h_k T_{k+1} − Σ_{i>k} (h_i w_i + g_trans_i T_i)],  T_{k+1} = T_k − w_k,
//   ∂L/∂c_k = g_color · w_k.
template <typename T>
FASTGEN_HD void ray_bwd(int64_t n, int64_t C, const T* rgb, const T* ts, const T* te,
                        const T* w, const T* trans, T eps, const T* g_color, T g_opacity,
                        T g_depth, const T* g_w, const T* g_trans, T* g_sigma, T* g_rgb) {
  int64_t live = n;
  if (eps > 0) {
    live = 0;
    while (live < n && trans[live] >= eps) ++live;
  }
  for (int64_t k = live; k < n; ++k) {
    g_sigma[k] = 0;
    for (int64_t c = 0; c < C; ++c) g_rgb[k * C + c] = 0;
  }
  T suffix = 0;
  for (int64_t k = live - 1; k >= 0; --k) {
    T h = g_opacity + g_depth * (ts[k] + te[k]) * T(0.5);
    for (int64_t c = 0; c < C; ++c) {
      h += g_color[c] * rgb[k * C + c];
      g_rgb[k * C + c] = g_color[c] * w[k];
    }
    if (g_w) h += g_w[k];
    g_sigma[k] = (te[k] - ts[k]) * (h * (trans[k] - w[k]) - suffix);
    suffix += h * w[k] + (g_trans ? g_trans[k] * trans[k] : T(0));
  }
}

}  // namespace volrend
}  // namespace fastgen

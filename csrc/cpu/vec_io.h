// Vectorised loads and stores shared by the elementwise CPU kernels (bias_act, sampler_step), and
// the small dot-product helpers of the decode kernels (decode, linear).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <type_traits>

namespace fastgen {

template <typename T>
using Vec = at::vec::Vectorized<T>;

// Loads and stores between storage type S and compute vectors of T = opmath(S). fp32/fp64 load
// directly; fp16/bf16 convert with ATen's vectorised converters (full vectors) and go through a
// small float buffer for the tail and for stores.
template <typename S>
struct Mem {
  using T = at::opmath_type<S>;
  static constexpr int64_t W = Vec<T>::size();

  static Vec<T> load(const S* p, int64_t n) {
    if constexpr (std::is_same_v<S, T>) {
      return n == W ? Vec<T>::loadu(p) : Vec<T>::loadu(p, n);
    } else {
      if (n == W) {
        Vec<T> out;
        at::vec::load_to_float<S>(p, out);
        return out;
      }
      T buf[W] = {};
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<T>(p[i]);
      return Vec<T>::loadu(buf);
    }
  }

  static void store(const Vec<T>& v, S* p, int64_t n) {
    if constexpr (std::is_same_v<S, T>) {
      if (n == W) v.store(p); else v.store(p, n);
    } else {
      // Packs the W floats into the low half of a 2W-wide reduced vector.
      at::vec::convert_from_float<S>(v, v).store(p, n);
    }
  }
};

// Calls body(i, n) over [0, len) in full vectors, then one partial tail, so the full-vector loop
// is compiled with a constant width.
template <int64_t W, typename F>
inline void for_each_vector(int64_t len, const F& body) {
  int64_t i = 0;
  for (; i + W <= len; i += W) body(i, W);
  if (i < len) body(i, len - i);
}

// The sum of a vector's lanes.
template <typename T>
T hsum(const Vec<T>& v) {
  // reduce_add of the generic (no-ISA) Vectorized does not compile with torch 2.13's headers
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  constexpr bool kReduce = std::is_same_v<T, float>;
#else
  constexpr bool kReduce = false;
#endif
  if constexpr (kReduce) {
    return v.reduce_add();
  } else {
    T lanes[Vec<T>::size()];
    v.store(lanes);
    T s = 0;
    for (int64_t i = 0; i < Vec<T>::size(); ++i) s += lanes[i];
    return s;
  }
}

// Register-tiled dot products: out[r * ldo + j] = x_r · w_j (+ b_j) for RX rows x_r = x + r·K
// and RW rows w_j = w + j·K. Per vector of K, RW + RX loads feed RW·RX FMAs into independent
// accumulators; each output is one fixed-order vector dot product (fma chain over the vectors,
// a masked tail, then the lane sum), whatever RW and RX are. pf, when not null, is the next
// tile's W: its lines are prefetched as this tile's are read, so a memory stream overlaps the
// FMAs (the hardware prefetcher alone leaves them serial; csrc/cpu/linear.cpp).
template <int RW, int RX, typename T>
void tile_dot(const T* x, const T* w, int64_t K, const T* b, T* out, int64_t ldo,
              const T* pf = nullptr) {
  constexpr int64_t W = Vec<T>::size();
  Vec<T> acc[RX][RW];
  for (int r = 0; r < RX; ++r)
    for (int j = 0; j < RW; ++j) acc[r][j] = Vec<T>(T(0));
  int64_t d = 0;
  for (; d + W <= K; d += W) {
    Vec<T> wv[RW];
    if (pf) {
      for (int j = 0; j < RW; ++j) __builtin_prefetch(pf + j * K + d, 0, 3);
    }
    for (int j = 0; j < RW; ++j) wv[j] = Vec<T>::loadu(w + j * K + d);
    for (int r = 0; r < RX; ++r) {
      const Vec<T> xv = Vec<T>::loadu(x + r * K + d);
      for (int j = 0; j < RW; ++j) acc[r][j] = at::vec::fmadd(xv, wv[j], acc[r][j]);
    }
  }
  if (d < K) {
    Vec<T> wv[RW];
    for (int j = 0; j < RW; ++j) wv[j] = Vec<T>::loadu(w + j * K + d, K - d);
    for (int r = 0; r < RX; ++r) {
      const Vec<T> xv = Vec<T>::loadu(x + r * K + d, K - d);
      for (int j = 0; j < RW; ++j) acc[r][j] = at::vec::fmadd(xv, wv[j], acc[r][j]);
    }
  }
  for (int r = 0; r < RX; ++r)
    for (int j = 0; j < RW; ++j) out[r * ldo + j] = hsum(acc[r][j]) + (b ? b[j] : T(0));
}

constexpr int64_t kDotRows = 8;  // most rows of x a tile takes

// tile_dot for 1 <= nx <= kDotRows rows of x.
template <int RW, typename T>
void tile_rows(const T* x, int64_t nx, const T* w, int64_t K, const T* b, T* out, int64_t ldo,
               const T* pf = nullptr) {
  switch (nx) {
    case 1: return tile_dot<RW, 1>(x, w, K, b, out, ldo, pf);
    case 2: return tile_dot<RW, 2>(x, w, K, b, out, ldo, pf);
    case 3: return tile_dot<RW, 3>(x, w, K, b, out, ldo, pf);
    case 4: return tile_dot<RW, 4>(x, w, K, b, out, ldo, pf);
    case 5: return tile_dot<RW, 5>(x, w, K, b, out, ldo, pf);
    case 6: return tile_dot<RW, 6>(x, w, K, b, out, ldo, pf);
    case 7: return tile_dot<RW, 7>(x, w, K, b, out, ldo, pf);
    default: return tile_dot<RW, 8>(x, w, K, b, out, ldo, pf);
  }
}

// out[r] = q_r · k for 1 <= nr <= kDotRows rows q_r = q + r·n (each load of k feeds nr FMAs).
template <typename T>
void dot_rows(const T* q, int64_t nr, const T* k, int64_t n, T* out) {
  tile_rows<1, T>(q, nr, k, n, nullptr, out, 1);
}

}  // namespace fastgen

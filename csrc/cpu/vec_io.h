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
  if constexpr (std::is_same_v<T, float>) {
    return v.reduce_add();
  } else {
    T lanes[Vec<T>::size()];
    v.store(lanes);
    T s = 0;
    for (int64_t i = 0; i < Vec<T>::size(); ++i) s += lanes[i];
    return s;
  }
}

// out[r] = q_r · k for R rows q_r = q + r·n: each load of k feeds R FMAs (R accumulators live
// in registers).
template <int R, typename T>
void dot_rows_fixed(const T* q, const T* k, int64_t n, T* out) {
  constexpr int64_t W = Vec<T>::size();
  Vec<T> acc[R];
  for (int r = 0; r < R; ++r) acc[r] = Vec<T>(T(0));
  int64_t d = 0;
  for (; d + W <= n; d += W) {
    const Vec<T> kv = Vec<T>::loadu(k + d);
    for (int r = 0; r < R; ++r) acc[r] = at::vec::fmadd(Vec<T>::loadu(q + r * n + d), kv, acc[r]);
  }
  if (d < n) {
    const Vec<T> kv = Vec<T>::loadu(k + d, n - d);
    for (int r = 0; r < R; ++r)
      acc[r] = at::vec::fmadd(Vec<T>::loadu(q + r * n + d, n - d), kv, acc[r]);
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(acc[r]);
}

constexpr int64_t kDotRows = 8;  // most rows dot_rows takes at once

// dot_rows_fixed for 1 <= nr <= kDotRows rows.
template <typename T>
void dot_rows(const T* q, int64_t nr, const T* k, int64_t n, T* out) {
  switch (nr) {
    case 1: return dot_rows_fixed<1>(q, k, n, out);
    case 2: return dot_rows_fixed<2>(q, k, n, out);
    case 3: return dot_rows_fixed<3>(q, k, n, out);
    case 4: return dot_rows_fixed<4>(q, k, n, out);
    case 5: return dot_rows_fixed<5>(q, k, n, out);
    case 6: return dot_rows_fixed<6>(q, k, n, out);
    case 7: return dot_rows_fixed<7>(q, k, n, out);
    default: return dot_rows_fixed<8>(q, k, n, out);
  }
}

}  // namespace fastgen

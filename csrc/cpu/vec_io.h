// Vectorised loads and stores shared by the elementwise CPU kernels (bias_act, sampler_step).
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

}  // namespace fastgen

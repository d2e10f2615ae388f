// Vectorised loads and stores shared by the elementwise CPU kernels (bias_act, sampler_step), the
// small dot-product helpers of the decode kernels (decode, linear), and the item transposes of
// the hash grid's planar layout (hashgrid, mlp).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

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

// dst item (c, r) = src item (r, c) for an R x C block of items of F values of T (a point's or a
// level's features): item (r, c) of src at src + r·sld + c·F, item (c, r) of dst at
// dst + c·dld + r·F (strides in values). 8-byte items (2 float32 features) go through AVX2
// register transposes in 4 x 4 blocks: 4 items of 4 rows in, 4 of 4 columns out (bit patterns
// copied, NaN included); the rest item by item.
template <typename T>
inline void transpose_items_block(const T* src, int64_t sld, T* dst, int64_t dld, int64_t R,
                                  int64_t C, int F) {
  int64_t r4 = 0, c4 = 0;
#if defined(__AVX2__)
  if (sizeof(T) * F == 8 && sld % F == 0 && dld % F == 0) {
    r4 = R / 4 * 4;
    c4 = C / 4 * 4;
    // items as doubles through the (may-alias) intrinsics; addresses in T, as the memory is
    const int64_t si = sld / F, di = dld / F;  // in items
    auto in = [&](int64_t r, int64_t c) {
      return _mm256_loadu_pd(reinterpret_cast<const double*>(src + (r * si + c) * F));
    };
    auto to = [&](int64_t c, int64_t r, __m256d v) {
      _mm256_storeu_pd(reinterpret_cast<double*>(dst + (c * di + r) * F), v);
    };
    for (int64_t r0 = 0; r0 < r4; r0 += 4) {
      for (int64_t c0 = 0; c0 < c4; c0 += 4) {
        const __m256d a0 = in(r0, c0), a1 = in(r0 + 1, c0), a2 = in(r0 + 2, c0);
        const __m256d a3 = in(r0 + 3, c0);
        const __m256d t0 = _mm256_unpacklo_pd(a0, a1);  // a00 a10 a02 a12
        const __m256d t1 = _mm256_unpackhi_pd(a0, a1);  // a01 a11 a03 a13
        const __m256d t2 = _mm256_unpacklo_pd(a2, a3);  // a20 a30 a22 a32
        const __m256d t3 = _mm256_unpackhi_pd(a2, a3);  // a21 a31 a23 a33
        to(c0, r0, _mm256_permute2f128_pd(t0, t2, 0x20));
        to(c0 + 1, r0, _mm256_permute2f128_pd(t1, t3, 0x20));
        to(c0 + 2, r0, _mm256_permute2f128_pd(t0, t2, 0x31));
        to(c0 + 3, r0, _mm256_permute2f128_pd(t1, t3, 0x31));
      }
    }
  }
#endif
  auto item = [&](int64_t r, int64_t c) {
    std::copy(src + r * sld + c * F, src + r * sld + c * F + F, dst + c * dld + r * F);
  };
  for (int64_t r = 0; r < r4; ++r)  // right of the 4 x 4 blocks
    for (int64_t c = c4; c < C; ++c) item(r, c);
  for (int64_t r = r4; r < R; ++r)  // below them
    for (int64_t c = 0; c < C; ++c) item(r, c);
}

}  // namespace fastgen

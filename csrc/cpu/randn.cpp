// CPU kernel for fastgen::randn_: standard normal noise bit-identical to torch.randn on a CPU
// generator, drawn several times faster (fastgen/ops/randn.py says when it is used).
//
// torch.randn on a contiguous float tensor of n >= 16 elements (ATen's normal_fill) does:
//   1. n draws of the generator's MT19937 stream, each u = (word & (2^24 - 1)) · 2^-24;
//   2. for each block of 16, the Box–Muller transform of (u[j], u[j + 8]), j < 8:
//        r = sqrt(-2 log(1 - u[j])),  θ = 2π · u[j + 8],
//        out[j] = r cos θ,  out[j + 8] = r sin θ;
//   3. when 16 does not divide n, 16 more draws, transformed the same way, overwrite the last 16.
// Half and bfloat16 tensors get the float result rounded, except that torch then draws the 16
// of step 3 right after the whole blocks' draws (step 1 draws n - n % 16 words for them).
// Two things are this file's own: torch draws the words one at a time, where this file makes a
// whole 624-word MT19937 block with vector instructions (and transforms in parallel while it
// draws); and the log / sin / cos are whichever torch's CPU dispatch uses: the
// Cephes single-precision polynomials evaluated 8 lanes wide (torch's AVX2 kernels), or the C
// library's logf / cosf / sinf one value at a time (its other kernels). `variant` picks one; the
// Python side checks on a probe which one reproduces this torch bit for bit before using either.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/MT19937RNGEngine.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <optional>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define FASTGEN_RANDN_AVX2 1
#endif

namespace fastgen {
namespace {

constexpr int kStateN = 624;  // MT19937 state words
constexpr int kShift = 397;   // MT19937 middle word offset
constexpr uint32_t kMatrixA = 0x9908b0dfu;
constexpr float kTwoPi = static_cast<float>(2.0 * 3.14159265358979323846);

inline uint32_t twist(uint32_t u, uint32_t v) {
  return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((v & 1u) ? kMatrixA : 0u);
}

inline uint32_t temper(uint32_t y) {
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  return y ^ (y >> 18);
}

inline float to_uniform(uint32_t word) {
  return static_cast<float>(word & 0xffffffu) * (1.0f / 16777216.0f);
}

#ifdef FASTGEN_RANDN_AVX2
inline __m256i twist8(__m256i u, __m256i v) {
  const __m256i mixed = _mm256_or_si256(_mm256_and_si256(u, _mm256_set1_epi32(INT32_MIN)),
                                        _mm256_and_si256(v, _mm256_set1_epi32(INT32_MAX)));
  const __m256i odd = _mm256_sub_epi32(_mm256_setzero_si256(),
                                       _mm256_and_si256(v, _mm256_set1_epi32(1)));
  return _mm256_xor_si256(_mm256_srli_epi32(mixed, 1),
                          _mm256_and_si256(odd, _mm256_set1_epi32(static_cast<int>(kMatrixA))));
}

// s[i] = s[i + off] ^ twist(s[i], s[i + 1]) for i in [begin, end), 8 at a time: every s[i + 1]
// read is still the old word and every s[i + off] is final before the chunk that reads it.
inline int64_t twist_run(uint32_t* s, int64_t begin, int64_t end, int64_t off) {
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i));
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + 1));
    const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + i + off));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(s + i), _mm256_xor_si256(w, twist8(u, v)));
  }
  return i;
}
#endif

// The next MT19937 block, in place: what the engine's next_state does one word at a time.
void regenerate(uint32_t* s) {
  int64_t i = 0;
#ifdef FASTGEN_RANDN_AVX2
  i = twist_run(s, 0, kStateN - kShift, kShift);
#endif
  for (; i < kStateN - kShift; ++i) s[i] = s[i + kShift] ^ twist(s[i], s[i + 1]);
#ifdef FASTGEN_RANDN_AVX2
  i = twist_run(s, i, kStateN - 1, kShift - kStateN);
#endif
  for (; i < kStateN - 1; ++i) s[i] = s[i + kShift - kStateN] ^ twist(s[i], s[i + 1]);
  s[kStateN - 1] = s[kShift - 1] ^ twist(s[kStateN - 1], s[0]);
}

// k uniforms from state words src[0:k].
void words_to_uniforms(const uint32_t* src, float* dst, int64_t k) {
  int64_t i = 0;
#ifdef FASTGEN_RANDN_AVX2
  const __m256i c1 = _mm256_set1_epi32(static_cast<int>(0x9d2c5680u));
  const __m256i c2 = _mm256_set1_epi32(static_cast<int>(0xefc60000u));
  const __m256i low24 = _mm256_set1_epi32(0xffffff);
  const __m256 scale = _mm256_set1_ps(1.0f / 16777216.0f);
  for (; i + 8 <= k; i += 8) {
    __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    y = _mm256_xor_si256(y, _mm256_srli_epi32(y, 11));
    y = _mm256_xor_si256(y, _mm256_and_si256(_mm256_slli_epi32(y, 7), c1));
    y = _mm256_xor_si256(y, _mm256_and_si256(_mm256_slli_epi32(y, 15), c2));
    y = _mm256_xor_si256(y, _mm256_srli_epi32(y, 18));
    const __m256 u = _mm256_cvtepi32_ps(_mm256_and_si256(y, low24));
    _mm256_storeu_ps(dst + i, _mm256_mul_ps(u, scale));
  }
#endif
  for (; i < k; ++i) dst[i] = to_uniform(temper(src[i]));
}

// n draws of the engine, as uniforms, advancing it exactly as n calls of its operator() would.
void draw_uniforms(at::mt19937_data_pod& d, float* dst, int64_t n) {
  uint32_t* s = d.state_.data();
  while (n > 0) {
    // The engine hands out left_ - 1 more words of this block before it makes the next one.
    int64_t avail = d.left_ - 1;
    if (avail <= 0) {
      regenerate(s);
      d.left_ = kStateN + 1;
      d.next_ = 0;
      avail = kStateN;
    }
    const int64_t k = std::min(avail, n);
    words_to_uniforms(s + d.next_, dst, k);
    d.next_ += static_cast<uint32_t>(k);
    d.left_ -= static_cast<int>(k);
    dst += k;
    n -= k;
  }
}

// Box–Muller on one block of 16 uniforms, in place, with the C library's float functions.
void box_muller16_libm(float* u) {
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1.0f - u[j];
    const float u2 = u[j + 8];
    const float radius = std::sqrt(-2 * std::log(u1));
    const float theta = static_cast<float>(2.0f * 3.14159265358979323846 * u2);
    u[j] = std::fma(radius * std::cos(theta), 1.0f, 0.0f);
    u[j + 8] = std::fma(radius * std::sin(theta), 1.0f, 0.0f);
  }
}

#ifdef FASTGEN_RANDN_AVX2
inline __m256 bits(int v) { return _mm256_castsi256_ps(_mm256_set1_epi32(v)); }
inline __m256 cst(float v) { return _mm256_set1_ps(v); }

// Natural log of 8 positive floats: the Cephes logf reduction and degree-9 polynomial, in the
// operation order of the 8-lane version torch's AVX2 kernels use (products and sums fused where
// that build's compiler fuses them).
inline __m256 log8(__m256 x) {
  x = _mm256_max_ps(x, bits(0x00800000));  // no denormals
  __m256i e_bits = _mm256_srli_epi32(_mm256_castps_si256(x), 23);
  x = _mm256_or_ps(_mm256_and_ps(x, bits(~0x7f800000)), cst(0.5f));  // mantissa in [0.5, 1)
  __m256 e = _mm256_add_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(e_bits, _mm256_set1_epi32(0x7f))),
                           cst(1.0f));
  const __m256 small = _mm256_cmp_ps(x, cst(0.707106781186547524f), _CMP_LT_OS);
  const __m256 extra = _mm256_and_ps(x, small);  // m < √½: use 2m - 1 and e - 1
  x = _mm256_sub_ps(x, cst(1.0f));
  e = _mm256_sub_ps(e, _mm256_and_ps(cst(1.0f), small));
  x = _mm256_add_ps(x, extra);
  const __m256 z = _mm256_mul_ps(x, x);
  static constexpr float kP[9] = {7.0376836292E-2f, -1.1514610310E-1f, 1.1676998740E-1f,
                                  -1.2420140846E-1f, 1.4249322787E-1f, -1.6668057665E-1f,
                                  2.0000714765E-1f, -2.4999993993E-1f, 3.3333331174E-1f};
  __m256 y = cst(kP[0]);
  for (int k = 1; k < 9; ++k) y = _mm256_fmadd_ps(y, x, cst(kP[k]));
  y = _mm256_fmadd_ps(_mm256_mul_ps(y, x), z, _mm256_mul_ps(e, cst(-2.12194440e-4f)));
  y = _mm256_fnmadd_ps(z, cst(0.5f), y);
  return _mm256_fmadd_ps(e, cst(0.693359375f), _mm256_add_ps(x, y));
}

// sin and cos of 8 non-negative floats (θ in [0, 2π) here): Cephes' octant reduction with π/4
// split in three parts, then its sine and cosine polynomials, in the same 8-lane order as log8.
inline void sincos8(__m256 x, __m256* s, __m256* c) {
  const __m256 sign_in = _mm256_and_ps(x, bits(INT32_MIN));
  x = _mm256_and_ps(x, bits(INT32_MAX));
  __m256i j = _mm256_cvttps_epi32(_mm256_mul_ps(x, cst(1.27323954473516f)));  // 4/π
  j = _mm256_and_si256(_mm256_add_epi32(j, _mm256_set1_epi32(1)), _mm256_set1_epi32(~1));
  const __m256 y = _mm256_cvtepi32_ps(j);
  const __m256 sin_flip =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(j, _mm256_set1_epi32(4)), 29));
  const __m256 use_cos_poly = _mm256_castsi256_ps(
      _mm256_cmpeq_epi32(_mm256_and_si256(j, _mm256_set1_epi32(2)), _mm256_setzero_si256()));
  x = _mm256_fmadd_ps(y, cst(-0.78515625f), x);
  x = _mm256_fmadd_ps(y, cst(-2.4187564849853515625e-4f), x);
  x = _mm256_fmadd_ps(y, cst(-3.77489497744594108e-8f), x);
  const __m256 cos_sign = _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_andnot_si256(_mm256_sub_epi32(j, _mm256_set1_epi32(2)), _mm256_set1_epi32(4)), 29));
  const __m256 sin_sign = _mm256_xor_ps(sign_in, sin_flip);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 pc = _mm256_fmadd_ps(cst(2.443315711809948E-005f), z, cst(-1.388731625493765E-003f));
  pc = _mm256_fmadd_ps(pc, z, cst(4.166664568298827E-002f));
  pc = _mm256_fmsub_ps(_mm256_mul_ps(pc, z), z, _mm256_mul_ps(z, cst(0.5f)));
  pc = _mm256_add_ps(pc, cst(1.0f));
  __m256 ps = _mm256_fmadd_ps(cst(-1.9515295891E-4f), z, cst(8.3321608736E-3f));
  ps = _mm256_fmadd_ps(ps, z, cst(-1.6666654611E-1f));
  ps = _mm256_fmadd_ps(_mm256_mul_ps(ps, z), x, x);
  const __m256 sin_from_sin = _mm256_and_ps(use_cos_poly, ps);
  const __m256 sin_from_cos = _mm256_andnot_ps(use_cos_poly, pc);
  *s = _mm256_xor_ps(_mm256_add_ps(sin_from_cos, sin_from_sin), sin_sign);
  // the other polynomial's value, kept as (p - selected) + (q - selected) like the 8-lane original
  const __m256 cos_val =
      _mm256_add_ps(_mm256_sub_ps(pc, sin_from_cos), _mm256_sub_ps(ps, sin_from_sin));
  *c = _mm256_xor_ps(cos_val, cos_sign);
}

__attribute__((always_inline)) inline void box_muller16_avx2_inl(float* u) {
  const __m256 u1 = _mm256_sub_ps(cst(1.0f), _mm256_loadu_ps(u));
  const __m256 u2 = _mm256_loadu_ps(u + 8);
  const __m256 radius = _mm256_sqrt_ps(_mm256_mul_ps(cst(-2.0f), log8(u1)));
  __m256 sin_t, cos_t;
  sincos8(_mm256_mul_ps(cst(kTwoPi), u2), &sin_t, &cos_t);
  const __m256 one = cst(1.0f), zero = _mm256_setzero_ps();
  _mm256_storeu_ps(u, _mm256_fmadd_ps(_mm256_mul_ps(radius, cos_t), one, zero));
  _mm256_storeu_ps(u + 8, _mm256_fmadd_ps(_mm256_mul_ps(radius, sin_t), one, zero));
}

void box_muller16_avx2(float* u) { box_muller16_avx2_inl(u); }

// Four blocks in one body: their independent polynomial chains interleave, which the
// out-of-order core does not manage across calls (1.4x the throughput of one block at a time).
void box_muller64_avx2(float* u) {
  for (int b = 0; b < 4; ++b) box_muller16_avx2_inl(u + 16 * b);
}
#endif

using BoxMuller16 = void (*)(float*);

BoxMuller16 pick_variant(int64_t variant) {
  TORCH_CHECK(variant == 0 || variant == 1, "randn_: variant must be 0 (8-lane Cephes) or 1 "
              "(C library), got ", variant);
#ifdef FASTGEN_RANDN_AVX2
  if (variant == 0) return &box_muller16_avx2;
#else
  TORCH_CHECK(variant != 0, "randn_: variant 0 needs an AVX2 build of fastgen");
#endif
  return &box_muller16_libm;
}

// Box–Muller on blocks [b, e) of u.
void transform_blocks(float* u, int64_t b, int64_t e, BoxMuller16 bm) {
  int64_t i = b;
#ifdef FASTGEN_RANDN_AVX2
  if (bm == &box_muller16_avx2)
    for (; i + 4 <= e; i += 4) box_muller64_avx2(u + 16 * i);
#endif
  for (; i < e; ++i) bm(u + 16 * i);
}

// One turn of a wait loop: a pause, and every 64th turn the core goes to another thread (so more
// threads than cores still finish).
inline void spin_pause(int64_t& turns) {
  if (++turns % 64 == 0) {
    std::this_thread::yield();
    return;
  }
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#endif
}

// Fills u[0:n] (n >= 16) with torch.randn's normals, drawing from the engine data d. For float
// storage torch draws all n uniforms before the 16 of the partial block; for half / bfloat16
// storage it draws 16 per whole block, so those 16 follow the whole blocks' draws directly.
//
// The draws are one serial stream (a fifth of the work here), the transform is parallel: with
// several threads, thread 0 draws chunk after chunk and publishes how many blocks are drawn,
// while every thread (thread 0 too, once it has drawn everything) transforms the drawn chunks.
// Thread 0 never waits, so this finishes on any number of threads the runtime grants.
void normal_fill(at::mt19937_data_pod& d, float* u, int64_t n, BoxMuller16 bm, bool float_out) {
  const int64_t drawn = float_out ? n : n - n % 16;
  const int64_t blocks = n / 16;
  constexpr int64_t kChunk = 256;  // blocks per hand-over: 16 KiB of uniforms
#ifdef _OPENMP
  const int64_t chunks = (blocks + kChunk - 1) / kChunk;
  // No more threads than cores: waiting threads would take turns from the one that draws.
  static const unsigned cores = std::thread::hardware_concurrency();  // a file read: once
  const int threads = static_cast<int>(std::min<int64_t>(
      {at::get_num_threads(), cores > 0 ? static_cast<int64_t>(cores) : 1, chunks}));
  if (threads > 1 && !at::in_parallel_region() && blocks >= 4 * kChunk) {
    std::atomic<int64_t> ready{0}, next{0};  // blocks drawn; next chunk to transform
#pragma omp parallel num_threads(threads)
    {
      if (omp_get_thread_num() == 0) {
        for (int64_t c = 0; c < chunks; ++c) {
          const int64_t lo = c * kChunk * 16;
          const int64_t hi = c + 1 == chunks ? drawn : (c + 1) * kChunk * 16;
          draw_uniforms(d, u + lo, hi - lo);
          ready.store(std::min((c + 1) * kChunk, blocks), std::memory_order_release);
        }
      }
      for (;;) {
        const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
        if (c >= chunks) break;
        const int64_t end = std::min((c + 1) * kChunk, blocks);
        int64_t turns = 0;
        while (ready.load(std::memory_order_acquire) < end) spin_pause(turns);
        transform_blocks(u, c * kChunk, end, bm);
      }
    }
  } else
#endif
  {
    draw_uniforms(d, u, drawn);
    at::parallel_for(0, blocks, 2048,
                     [&](int64_t b, int64_t e) { transform_blocks(u, b, e, bm); });
  }
  if (n % 16 != 0) {
    float tail[16];
    draw_uniforms(d, tail, 16);
    bm(tail);
    std::copy(tail, tail + 16, u + n - 16);
  }
}

void randn_cpu(at::Tensor& out, std::optional<at::Generator> generator, int64_t variant) {
  TORCH_CHECK(out.device().is_cpu() && out.is_contiguous(),
              "randn_: out must be a contiguous CPU tensor");
  const auto dtype = out.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "randn_: out must be float32, float16 or bfloat16, got ", dtype);
  const int64_t n = out.numel();
  TORCH_CHECK(n >= 16, "randn_: out must have at least 16 elements (torch draws fewer one "
              "value at a time), got ", n);
  const BoxMuller16 bm = pick_variant(variant);
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  at::mt19937 engine = gen->engine();
  at::mt19937_data_pod d = engine.data();
  if (dtype == at::kFloat) {
    normal_fill(d, out.data_ptr<float>(), n, bm, true);
  } else {
    at::Tensor scratch = at::empty({n}, out.options().dtype(at::kFloat));
    normal_fill(d, scratch.data_ptr<float>(), n, bm, false);
    out.copy_(scratch.view(out.sizes()));
  }
  engine.set_data(d);
  gen->set_engine(engine);
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("randn_", &fastgen::randn_cpu);
}

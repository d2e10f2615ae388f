// CPU kernel for KV-cache decode attention (fastgen/ops/decode.py; math in
// fastgen/reference/decode.py; schema in csrc/registration.cpp).
//
// One task is (batch row, kv head, key split): the G = Hq / Hkv query heads of the group and
// their Lq queries (R = G * Lq rows) go over the task's keys together, so each key and value
// row is read from memory once for the whole group (GQA-aware; the cache read is the cost). Keys
// run in blocks of kBlock with an online softmax in float32 (float64 for float64). Paged caches
// are read through the block table in place: a contiguous cache is the one-page-per-row case.
// With more than one split, each split writes its normalised partial output and logsumexp and a
// combine pass merges them (flash-decoding); splits are only used when there are fewer
// (batch, kv head) tasks than threads can use.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "cpu/vec_io.h"

namespace fastgen {
namespace {

constexpr int64_t kBlock = 32;

// y += p · x over n elements
template <typename T>
void axpy(T* y, T p, const T* x, int64_t n) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> pv(p);
  int64_t d = 0;
  for (; d + W <= n; d += W) at::vec::fmadd(pv, Vec<T>::loadu(x + d), Vec<T>::loadu(y + d)).store(y + d);
  for (; d < n; ++d) y[d] += p * x[d];
}

// A row of the cache in compute type: the storage itself when it already is, else converted.
template <typename S, typename T = at::opmath_type<S>>
const T* as_compute(const S* row, int64_t n, T* buf) {
  if constexpr (std::is_same_v<S, T>) {
    return row;
  } else {
    constexpr int64_t W = Vec<T>::size();
    int64_t d = 0;
    for (; d + W <= n; d += W) Mem<S>::load(row + d, W).store(buf + d);
    for (; d < n; ++d) buf[d] = static_cast<T>(row[d]);
    return buf;
  }
}

struct Geometry {
  int64_t B, Hq, Hkv, G, Lq, D, Dv, page, max_pages, splits, chunk;
  double scale, softcap;
  int64_t left, right;
};

// Keys visible to query i of a row holding n keys: [lo, hi).
inline void visible(const Geometry& g, int64_t n, int64_t i, int64_t* lo, int64_t* hi) {
  const int64_t pos = n - g.Lq + i;
  *lo = g.left >= 0 ? std::max<int64_t>(0, pos - g.left) : 0;
  *hi = g.right >= 0 ? std::min<int64_t>(n, pos + g.right + 1) : n;
  if (*hi < *lo) *hi = *lo;
}

template <typename S>
void decode_task(const Geometry& g, const S* q, const S* k, const S* v, const int32_t* seqlens,
                 const int32_t* table, at::IntArrayRef qs, at::IntArrayRef ks,
                 at::IntArrayRef vs, int64_t b, int64_t h, int64_t split,
                 at::opmath_type<S>* o_part, at::opmath_type<S>* lse_part) {
  using T = at::opmath_type<S>;
  const int64_t R = g.G * g.Lq,
                n = std::min<int64_t>(seqlens[b], g.page * (table ? g.max_pages : 1));
  std::vector<T> qf(R * g.D), acc(R * g.Dv, T(0)), m(R, -std::numeric_limits<T>::infinity()),
      l(R, T(0)), p(R * kBlock), kbuf(kBlock * g.D), vbuf(g.Dv);
  std::vector<int64_t> lo(R), hi(R);
  int64_t jlo = n, jhi = 0;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t gi = r / g.Lq, i = r % g.Lq;
    const S* qr = q + b * qs[0] + (h * g.G + gi) * qs[1] + i * qs[2];
    for (int64_t d = 0; d < g.D; ++d) qf[r * g.D + d] = static_cast<T>(qr[d]);
    visible(g, n, i, &lo[r], &hi[r]);
    lo[r] = std::max(lo[r], split * g.chunk);
    hi[r] = std::min(hi[r], (split + 1) * g.chunk);
    if (lo[r] < hi[r]) {
      jlo = std::min(jlo, lo[r]);
      jhi = std::max(jhi, hi[r]);
    }
  }
  auto row_of = [&](const S* base, at::IntArrayRef st, int64_t j) {
    const int64_t page = table ? table[b * g.max_pages + j / g.page] : b;
    return base + page * st[0] + h * st[1] + (j % g.page) * st[2];
  };
  const T scale = static_cast<T>(g.scale), cap = static_cast<T>(g.softcap);
  for (int64_t j0 = jlo; j0 < jhi; j0 += kBlock) {
    const int64_t nb = std::min(kBlock, jhi - j0);
    const T* krows[kBlock];
    for (int64_t jj = 0; jj < nb; ++jj)
      krows[jj] = as_compute<S>(row_of(k, ks, j0 + jj), g.D, kbuf.data() + jj * g.D);
    for (int64_t jj = 0; jj < nb; ++jj) {
      T s8[kDotRows];
      for (int64_t r0 = 0; r0 < R; r0 += kDotRows) {
        const int64_t nr = std::min<int64_t>(kDotRows, R - r0);
        dot_rows(qf.data() + r0 * g.D, nr, krows[jj], g.D, s8);
        for (int64_t r = r0; r < r0 + nr; ++r) p[r * kBlock + jj] = s8[r - r0];
      }
    }
    constexpr int64_t W = Vec<T>::size();
    for (int64_t r = 0; r < R; ++r) {
      T* pr = p.data() + r * kBlock;
      T mb = -std::numeric_limits<T>::infinity();
      for (int64_t jj = 0; jj < nb; ++jj) {
        const int64_t j = j0 + jj;
        T s = -std::numeric_limits<T>::infinity();
        if (j >= lo[r] && j < hi[r]) {
          s = pr[jj] * scale;
          if (cap > 0) s = cap * std::tanh(s / cap);
        }
        pr[jj] = s;
        mb = std::max(mb, s);
      }
      const T mnew = std::max(m[r], mb);
      if (mnew == -std::numeric_limits<T>::infinity()) {
        std::fill(pr, pr + nb, T(0));
        continue;
      }
      const T alpha = std::exp(m[r] - mnew);  // 0 on the first visible block
      if (alpha != T(1)) {
        for (int64_t d = 0; d < g.Dv; ++d) acc[r * g.Dv + d] *= alpha;
        l[r] *= alpha;
      }
      const Vec<T> mv(mnew);
      Vec<T> sum(T(0));
      for (int64_t jj = 0; jj < nb; jj += W) {
        const int64_t c = std::min(W, nb - jj);
        Vec<T> e = (Vec<T>::loadu(pr + jj, c) - mv).exp();
        if (c < W) e = Vec<T>::set(Vec<T>(T(0)), e, c);  // lanes past nb hold exp(0 - m)
        e.store(pr + jj, c);
        sum = sum + e;
      }
      l[r] += hsum(sum);
      m[r] = mnew;
    }
    for (int64_t jj = 0; jj < nb; ++jj) {
      const T* vr = as_compute<S>(row_of(v, vs, j0 + jj), g.Dv, vbuf.data());
      for (int64_t r = 0; r < R; ++r) {
        const T pj = p[r * kBlock + jj];
        if (pj != T(0)) axpy(acc.data() + r * g.Dv, pj, vr, g.Dv);
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    const int64_t row = ((b * g.Hq + h * g.G + r / g.Lq) * g.Lq + r % g.Lq) * g.splits + split;
    const bool empty = l[r] == T(0);
    const T inv = empty ? T(0) : T(1) / l[r];
    for (int64_t d = 0; d < g.Dv; ++d) o_part[row * g.Dv + d] = acc[r * g.Dv + d] * inv;
    lse_part[row] = empty ? -std::numeric_limits<T>::infinity() : m[r] + std::log(l[r]);
  }
}

std::tuple<at::Tensor, at::Tensor> decode_attention_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& seqlens,
    const std::optional<at::Tensor>& block_table, double scale, double softcap, int64_t left,
    int64_t right, int64_t splits) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
              "fastgen::decode_attention: expected CPU tensors");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
              "fastgen::decode_attention: q, k, v must be 4-D");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "fastgen::decode_attention: the head dim must be contiguous");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "fastgen::decode_attention: q, k and v must share a dtype");
  TORCH_CHECK(seqlens.scalar_type() == at::kInt && seqlens.is_contiguous(),
              "fastgen::decode_attention: cache_seqlens must be contiguous int32");
  Geometry g{};
  g.B = q.size(0);
  g.Hq = q.size(1);
  g.Lq = q.size(2);
  g.D = q.size(3);
  g.Hkv = k.size(1);
  g.G = g.Hq / g.Hkv;
  g.Dv = v.size(3);
  g.page = k.size(2);
  g.scale = scale;
  g.softcap = softcap;
  g.left = left;
  g.right = right;
  const int32_t* table = nullptr;
  int64_t capacity = g.page;
  if (block_table) {
    TORCH_CHECK(block_table->scalar_type() == at::kInt && block_table->is_contiguous(),
                "fastgen::decode_attention: block_table must be contiguous int32");
    g.max_pages = block_table->size(1);
    table = block_table->data_ptr<int32_t>();
    capacity = g.page * g.max_pages;
  }
  const int32_t* sl = seqlens.data_ptr<int32_t>();
  // keys at or past the longest row are never read: splits share [0, longest)
  const int64_t longest = g.B ? std::min<int64_t>(*std::max_element(sl, sl + g.B), capacity) : 0;
  if (splits <= 0) {  // auto: split the keys only when (row, kv head) tasks are too few
    const int64_t tasks = g.B * g.Hkv, threads = at::get_num_threads();
    splits = tasks == 0 || tasks >= 2 * threads
                 ? 1
                 : std::min((2 * threads + tasks - 1) / tasks, longest / 512);
  }
  g.splits = std::max<int64_t>(1, splits);
  g.chunk = std::max<int64_t>(1, (longest + g.splits - 1) / g.splits);
  const auto work = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor o_part = at::empty({g.B, g.Hq, g.Lq, g.splits, g.Dv}, q.options().dtype(work));
  at::Tensor lse_part = at::empty({g.B, g.Hq, g.Lq, g.splits}, q.options().dtype(work));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "decode_attention", [&] {
    using S = scalar_t;
    using T = at::opmath_type<S>;
    const S *qp = q.data_ptr<S>(), *kp = k.data_ptr<S>(), *vp = v.data_ptr<S>();
    T* op = o_part.data_ptr<T>();
    T* lp = lse_part.data_ptr<T>();
    at::parallel_for(0, g.B * g.Hkv * g.splits, 1, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t split = t % g.splits, h = (t / g.splits) % g.Hkv, b = t / (g.splits * g.Hkv);
        decode_task<S>(g, qp, kp, vp, sl, table, q.strides(), k.strides(), v.strides(), b, h,
                       split, op, lp);
      }
    });
  });
  if (g.splits == 1) {
    at::Tensor lse = lse_part.squeeze(-1).to(at::kFloat);
    at::Tensor out = o_part.squeeze(3).to(q.scalar_type());
    // a query that sees no key: out 0 (already), lse +inf (FlashAttention's convention)
    lse.masked_fill_(lse == -std::numeric_limits<float>::infinity(),
                     std::numeric_limits<float>::infinity());
    return {out, lse};
  }
  // combine: lse = M + log Σ exp(lse_s − M); out = Σ exp(lse_s − lse) · o_s
  at::Tensor mx = std::get<0>(lse_part.max(-1, true));
  at::Tensor safe = at::where(at::isinf(mx), at::zeros_like(mx), mx);
  at::Tensor w = (lse_part - safe).exp();
  at::Tensor total = w.sum(-1, true);
  at::Tensor out = ((o_part * (w / total.clamp_min(1e-38)).unsqueeze(-1)).sum(3))
                       .to(q.scalar_type());
  at::Tensor lse = (safe + total.log()).squeeze(-1).to(at::kFloat);
  lse.masked_fill_(lse == -std::numeric_limits<float>::infinity(),
                   std::numeric_limits<float>::infinity());
  return {out, lse};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("decode_attention", &fastgen::decode_attention_cpu);
}

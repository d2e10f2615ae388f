// CPU kernels for the fused MLP (fastgen/ops/mlp.py; schemas in csrc/registration.cpp):
//
//   h_0 = x,  h_l = act(h_{l-1} W_lᵀ)  (l = 1 .. n_hidden),  y = out_act(h_n W_outᵀ)
//
// with no biases (tiny-cuda-nn's MLP). A small MLP on many rows (a NeRF's or a neural image's
// 64-wide layers on 2^16 points) spends more time in PyTorch between its GEMMs than in them: each
// layer's output and gradient makes a round trip through memory, ReLU and its backward are passes
// of their own, and K = 3 or N = 3 GEMMs run far below peak. Here every layer of a tile of rows
// runs back to back on buffers that stay in L1/L2, activations fused into the stores.
//
//   fastgen::mlp_fwd / mlp_bwd   forward (keeping the hidden outputs) and backward, two passes
//   fastgen::mlp_mse             forward, L2 loss and backward of each tile in one pass (nothing
//                                of the forward is stored); x as rows or planar [G, M, F]
//
// The one inner kernel (micro) is an outer-product register tile: C[MR x 1 or 2 vectors] += A B, A
// read as broadcast scalars (any strides: A or Aᵀ), B as vectors of a row-major matrix with
// zero-padded columns. Forward: h_l = h_{l-1} · W_lᵀ (B = W_lᵀ packed). Backward: the input
// gradient of a layer is d_l · W_l (B = W_l packed), the weight gradient d_lᵀ · h_{l-1} (A = d_l
// transposed, B = the tile's h_{l-1}).
//
// Determinism: the backward splits the rows into chunks fixed by M alone (not by the thread
// count); each chunk sums its weight gradient tile after tile in row order, and the chunks are
// added in chunk order. So results are bitwise the same for any number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "cpu/buffer_pool.h"
#include "cpu/vec_io.h"

namespace fastgen {
namespace {

enum Act : int64_t { kNone = 0, kReLU = 1, kSigmoid = 2 };  // fastgen/ops/mlp.py ACTIVATIONS

constexpr int kMR = 6;          // rows of a register tile (6 x 2 vectors: 12 accumulators)
constexpr int64_t kTile = 96;   // rows of x a tile of the fused pass holds (a multiple of kMR)

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// C[r, 0:NV·W] (+)= Σ_k A[r·ar + k·ak] · B[k·ldb + 0:NV·W] for r < MR, k < K (NV = 1 or 2
// vectors). The accumulators are named variables, not an array: GCC kept an array of Vectorized
// in memory (a store per FMA).
#define FASTGEN_MLP_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
template <int MR, int NV, typename T>
inline void micro(const T* A, int64_t ar, int64_t ak, const T* B, int64_t ldb, int64_t K, T* C,
                  int64_t ldc, bool accumulate) {
  static_assert(MR >= 1 && MR <= 6, "micro: 1 to 6 rows");
  static_assert(NV == 1 || NV == 2, "micro: 1 or 2 vectors per row");
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> zero(T(0));
#define FASTGEN_DECL(r) \
  Vec<T> c##r##0 = zero, c##r##1 = zero;                                     \
  if constexpr (MR > r) {                                                    \
    if (accumulate) {                                                        \
      c##r##0 = Vec<T>::loadu(C + r * ldc);                                  \
      if constexpr (NV == 2) c##r##1 = Vec<T>::loadu(C + r * ldc + W);       \
    }                                                                        \
  }
  FASTGEN_MLP_ROWS(FASTGEN_DECL)
#undef FASTGEN_DECL
  for (int64_t k = 0; k < K; ++k) {
    const Vec<T> b0 = Vec<T>::loadu(B + k * ldb);
    const Vec<T> b1 = NV == 2 ? Vec<T>::loadu(B + k * ldb + W) : zero;
#define FASTGEN_FMA(r)                                                  \
  if constexpr (MR > r) {                                               \
    const Vec<T> a(A[r * ar + k * ak]);                                 \
    c##r##0 = at::vec::fmadd(a, b0, c##r##0);                           \
    if constexpr (NV == 2) c##r##1 = at::vec::fmadd(a, b1, c##r##1);    \
  }
    FASTGEN_MLP_ROWS(FASTGEN_FMA)
#undef FASTGEN_FMA
  }
#define FASTGEN_STORE(r)                                  \
  if constexpr (MR > r) {                                 \
    (c##r##0).store(C + r * ldc);                         \
    if constexpr (NV == 2) (c##r##1).store(C + r * ldc + W); \
  }
  FASTGEN_MLP_ROWS(FASTGEN_STORE)
#undef FASTGEN_STORE
}
#undef FASTGEN_MLP_ROWS

template <int NV, typename T>
inline void micro_rows(int64_t mr, const T* a, int64_t ar, int64_t ak, const T* B, int64_t ldb,
                       int64_t K, T* out, int64_t ldc, bool accumulate) {
  switch (mr) {
    case 1: micro<1, NV>(a, ar, ak, B, ldb, K, out, ldc, accumulate); break;
    case 2: micro<2, NV>(a, ar, ak, B, ldb, K, out, ldc, accumulate); break;
    case 3: micro<3, NV>(a, ar, ak, B, ldb, K, out, ldc, accumulate); break;
    case 4: micro<4, NV>(a, ar, ak, B, ldb, K, out, ldc, accumulate); break;
    case 5: micro<5, NV>(a, ar, ak, B, ldb, K, out, ldc, accumulate); break;
    default: micro<kMR, NV>(a, ar, ak, B, ldb, K, out, ldc, accumulate); break;
  }
}

// C[rows, 0:ncols] (+)= A[rows, K] · B[K, 0:ncols]; ncols a multiple of W (B and C zero-padded):
// blocks of 2 vectors, then one of 1 (a 3-wide output layer pads to 8 columns, not 16).
template <typename T>
void gemm(const T* A, int64_t ar, int64_t ak, int64_t rows, const T* B, int64_t ldb, int64_t K,
          int64_t ncols, T* C, int64_t ldc, bool accumulate) {
  constexpr int64_t W = Vec<T>::size();
  for (int64_t r0 = 0; r0 < rows; r0 += kMR) {
    const int64_t mr = std::min<int64_t>(kMR, rows - r0);
    const T* a = A + r0 * ar;
    int64_t c = 0;
    for (; c + 2 * W <= ncols; c += 2 * W)
      micro_rows<2>(mr, a, ar, ak, B + c, ldb, K, C + r0 * ldc + c, ldc, accumulate);
    if (c < ncols) micro_rows<1>(mr, a, ar, ak, B + c, ldb, K, C + r0 * ldc + c, ldc, accumulate);
  }
}

// ReLU keeps NaN (as torch.relu); its backward passes the gradient unless the output is <= 0
// (as torch's threshold_backward).
template <typename T>
inline T activate(T v, int64_t act) {
  if (act == kReLU) return v > T(0) || std::isnan(v) ? v : T(0);
  if (act == kSigmoid) return T(1) / (T(1) + std::exp(-v));
  return v;
}

// The derivative of act expressed through its output y, times g.
template <typename T>
inline T act_grad(T g, T y, int64_t act) {
  if (act == kReLU) return y <= T(0) ? T(0) : g;
  if (act == kSigmoid) return g * y * (T(1) - y);
  return g;
}

// row[0:n] := act(row[0:n]), copied to h[0:n] when h is not null (a hidden layer's output, kept
// for the backward). at::vec::maximum propagates NaN, as torch.relu.
template <typename T>
void activate_row(T* row, T* h, int64_t n, int64_t act) {
  constexpr int64_t W = Vec<T>::size();
#if defined(__AVX2__)
  // The kept copy goes straight to memory (streaming stores): it is read again only by the
  // backward, after the rest of the pass has evicted it, so writing it through the cache cost
  // a read of every line too.
  if constexpr (std::is_same<T, float>::value) {
    if (h != nullptr && n % W == 0 && reinterpret_cast<uintptr_t>(h) % 32 == 0) {
      for (int64_t i = 0; i < n; i += W) {
        Vec<T> v = Vec<T>::loadu(row + i);
        if (act == kReLU) v = at::vec::maximum(v, Vec<T>(T(0)));
        v.store(row + i);
        // 8 floats per streaming store whatever the vector width (AVX-512 builds: W = 16)
        for (int64_t j = i; j < i + W; j += 8) _mm256_stream_ps(h + j, _mm256_loadu_ps(row + j));
      }
      return;
    }
  }
#endif
  for_each_vector<W>(n, [&](int64_t i, int64_t len) {
    Vec<T> v = Vec<T>::loadu(row + i, len);
    if (act == kReLU) v = at::vec::maximum(v, Vec<T>(T(0)));
    v.store(row + i, len);
    if (h) v.store(h + i, len);
  });
}

// g := h <= 0 ? 0 : g over n entries (ReLU's backward through its output h).
template <typename T>
void relu_grad_rows(T* g, const T* h, int64_t n) {
  constexpr int64_t W = Vec<T>::size();
  const Vec<T> zero(T(0));
  for_each_vector<W>(n, [&](int64_t i, int64_t len) {
    const Vec<T> gv = Vec<T>::loadu(g + i, len), hv = Vec<T>::loadu(h + i, len);
    Vec<T>::blendv(gv, zero, hv <= zero).store(g + i, len);
  });
}

// The layers' shapes: widths[0] = input, widths[1 .. n_hidden] = hidden, widths.back() = output.
struct Net {
  std::vector<int64_t> widths, padded;  // padded: each width rounded up to W
  int64_t n_layers() const { return int64_t(widths.size()) - 1; }
  int64_t max_padded() const { return *std::max_element(padded.begin(), padded.end()); }
};

template <typename T>
Net net_of(const at::TensorList& weights, int64_t in_dim) {
  constexpr int64_t CB = Vec<T>::size();
  Net net;
  net.widths.push_back(in_dim);
  for (const auto& w : weights) net.widths.push_back(w.size(0));
  for (int64_t w : net.widths) net.padded.push_back(round_up(std::max<int64_t>(w, 1), CB));
  return net;
}

// Wᵀ [K, Np] (forward) or W [N, Kp] (input gradient) of each layer, zero-padded columns.
template <typename T>
std::vector<std::vector<T>> pack(const at::TensorList& weights, const Net& net, bool transpose) {
  std::vector<std::vector<T>> out;
  for (int64_t l = 0; l < net.n_layers(); ++l) {
    const int64_t N = net.widths[l + 1], K = net.widths[l];
    const T* w = weights[l].data_ptr<T>();
    if (transpose) {
      const int64_t ld = net.padded[l + 1];
      std::vector<T> p(K * ld, T(0));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) p[k * ld + n] = w[n * K + k];
      out.push_back(std::move(p));
    } else {
      const int64_t ld = net.padded[l];
      std::vector<T> p(N * ld, T(0));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) p[n * ld + k] = w[n * K + k];
      out.push_back(std::move(p));
    }
  }
  return out;
}

// weights against x's dtype and the input width k
void check_weights(const char* op, const at::Tensor& x, const at::TensorList& weights, int64_t k) {
  TORCH_CHECK(weights.size() >= 2, op, ": weights must hold at least 2 matrices (one hidden "
              "layer), got ", weights.size());
  for (size_t l = 0; l < weights.size(); ++l) {
    const auto& w = weights[l];
    TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == x.scalar_type(), op, ": weights[", l,
                "] must be a CPU tensor of x's dtype ", x.scalar_type(), ", got ",
                w.scalar_type(), " on ", w.device());
    TORCH_CHECK(w.dim() == 2 && w.size(1) == k && w.size(0) >= 1 && w.is_contiguous(), op,
                ": weights[", l, "] must be a contiguous [N, ", k, "] matrix, got ", w.sizes());
    if (l + 1 < weights.size())
      TORCH_CHECK(w.size(0) == weights[0].size(0), op, ": every hidden layer must have the "
                  "same width ", weights[0].size(0), ", weights[", l, "] has ", w.size(0));
    k = w.size(0);
  }
}

// x: a contiguous [M, K] CPU tensor (or, where planar is allowed, [G, M, F] standing for the
// [M, G·F] matrix), float32 or float64; then the weights against its width.
void check_inputs(const char* op, const at::Tensor& x, const at::TensorList& weights,
                  bool planar_ok = false) {
  TORCH_CHECK(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64 on CPU, got ", x.scalar_type());
  const bool planar = planar_ok && x.dim() == 3;
  TORCH_CHECK((x.dim() == 2 || planar) && x.is_contiguous(), op, ": x must be a contiguous [M, K]",
              planar_ok ? " or planar [G, M, F]" : "", " tensor, got ", x.sizes(),
              x.is_contiguous() ? "" : " (not contiguous)");
  check_weights(op, x, weights, planar ? x.size(0) * x.size(2) : x.size(1));
}

// t: a contiguous [M, O] CPU tensor of x's dtype (an output-sized argument).
void check_rows(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x,
                int64_t M, int64_t O) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == x.scalar_type() &&
                  t.sizes() == at::IntArrayRef({M, O}) && t.is_contiguous(),
              op, ": ", name, " must be a contiguous [", M, ", ", O, "] CPU tensor of x's dtype ",
              x.scalar_type(), ", got ", t.sizes(), " ", t.scalar_type(), " on ", t.device(),
              t.is_contiguous() ? "" : " (not contiguous)");
}

void check_act(const char* op, int64_t act, int64_t out_act) {
  TORCH_CHECK(act == kNone || act == kReLU, op, ": activation must be 0 (None) or 1 (ReLU), got ",
              act);
  TORCH_CHECK(out_act >= kNone && out_act <= kSigmoid, op, ": output_activation must be 0 "
              "(None), 1 (ReLU) or 2 (Sigmoid), got ", out_act);
}

// One tile's forward: layer l's pre-activation into out[l] ([rows, padded[l + 1]], padded
// columns zero), hidden layers activated in place (and copied to keep[l] + r·H when keep[l] is
// not null); the output layer's stays pre-activation for the caller.
template <typename T>
void forward_tile(const Net& net, const std::vector<std::vector<T>>& wt, const T* in,
                  int64_t in_ld, int64_t rows, int64_t act, T* const* out, T* const* keep) {
  const int64_t L = net.n_layers(), H = net.widths[1];
  for (int64_t l = 0; l < L; ++l) {
    const int64_t N = net.widths[l + 1], Np = net.padded[l + 1];
    gemm<T>(in, in_ld, 1, rows, wt[l].data(), Np, net.widths[l], Np, out[l], Np, false);
    if (l + 1 == L) break;
    T* h = keep == nullptr ? nullptr : keep[l];
    for (int64_t r = 0; r < rows; ++r)
      activate_row(out[l] + r * Np, h ? h + r * H : nullptr, N, act);
    in = out[l];
    in_ld = Np;
  }
}

template <typename T>
void forward(const at::Tensor& x, const at::TensorList& weights, int64_t act, int64_t out_act,
             at::Tensor& y, std::vector<at::Tensor>& hidden) {
  const Net net = net_of<T>(weights, x.size(1));
  const auto wt = pack<T>(weights, net, /*transpose=*/true);
  const int64_t M = x.size(0), L = net.n_layers(), H = net.widths[1], O = net.widths[L];
  const int64_t ld = net.max_padded(), Op = net.padded[L];
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  std::vector<T*> hp;  // empty when the hidden outputs are not kept
  for (auto& h : hidden) if (h.numel()) hp.push_back(h.data_ptr<T>());
  const int64_t tiles = (M + kTile - 1) / kTile;
  at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<T> buf_a(kTile * ld), buf_b(kTile * ld);
    std::vector<T*> out(L), keep(hp.size());
    for (int64_t l = 0; l < L; ++l) out[l] = l % 2 == 0 ? buf_a.data() : buf_b.data();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = t * kTile, rows = std::min(kTile, M - m0);
      for (size_t l = 0; l < hp.size(); ++l) keep[l] = hp[l] + m0 * H;
      forward_tile<T>(net, wt, xp + m0 * net.widths[0], net.widths[0], rows, act, out.data(),
                      hp.empty() ? nullptr : keep.data());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t n = 0; n < O; ++n)
          yp[(m0 + r) * O + n] = activate(out[L - 1][r * Op + n], out_act);
    }
#if defined(__AVX2__)
    _mm_sfence();  // the streaming stores of activate_row are visible before the task ends
#endif
  });
}

// The backward's row chunks, fixed by M alone (at most 256, at least kTile·8 rows each), and
// per-layer offsets into one chunk's weight-gradient block ([N_l, Kp_l] each).
struct Chunks {
  int64_t size, count;
  std::vector<int64_t> goff;
  Chunks(const Net& net, int64_t M) : goff(net.n_layers() + 1, 0) {
    size = round_up(std::max<int64_t>(kTile * 8, (M + 255) / 256), kTile);
    count = std::max<int64_t>(1, (M + size - 1) / size);
    for (int64_t l = 0; l < net.n_layers(); ++l)
      goff[l + 1] = goff[l] + net.widths[l + 1] * net.padded[l];
  }
};

// One tile's backward from d = the gradient at the output layer's pre-activation ([rows, Op]):
// adds the tile's weight gradients into gw (a chunk's block, Chunks::goff), and writes x's
// gradient to gx ([rows, K0]) when it is not null. act[l]: the tile's h_l as [rows, padded[l]]
// with zero-padded columns. d and d2 are [kTile, max_padded] scratch (swapped on the way).
template <typename T>
void backward_tile(const Net& net, const std::vector<std::vector<T>>& wp,
                   const std::vector<const T*>& act, int64_t rows, int64_t act_code,
                   const std::vector<int64_t>& goff, T* gw, T* gx, std::vector<T>& d,
                   std::vector<T>& d2) {
  const int64_t K0 = net.widths[0];
  for (int64_t l = net.n_layers() - 1; l >= 0; --l) {
    const int64_t N = net.widths[l + 1], Np = net.padded[l + 1];
    const int64_t K = net.widths[l], Kp = net.padded[l];
    // dW_l += d_lᵀ · h_l  (A = d transposed: row n, reduction over the tile's rows)
    gemm<T>(d.data(), 1, Np, N, act[l], Kp, rows, Kp, gw + goff[l], Kp, true);
    if (l == 0 && gx == nullptr) break;
    // gradient at the layer's input: d_l · W_l, then through the previous activation; x's
    // gradient straight into gx when its width needs no padding
    if (l == 0 && K == Kp) {
      gemm<T>(d.data(), Np, 1, rows, wp[l].data(), Kp, N, Kp, gx, K0, false);
      break;
    }
    gemm<T>(d.data(), Np, 1, rows, wp[l].data(), Kp, N, Kp, d2.data(), Kp, false);
    if (l == 0) {
      for (int64_t r = 0; r < rows; ++r)
        std::copy(d2.data() + r * Kp, d2.data() + r * Kp + K, gx + r * K0);
    } else {
      if (act_code == kReLU) relu_grad_rows(d2.data(), act[l], rows * Kp);
      std::swap(d, d2);
    }
  }
}

// h_l as [rows, padded[l]]: the rows themselves when the width needs no padding, else a
// zero-padded copy in buf.
template <typename T>
const T* padded_rows(const T* src, int64_t w, int64_t p, int64_t rows, std::vector<T>& buf) {
  if (w == p) return src;
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(src + r * w, src + r * w + w, buf.data() + r * p);
    std::fill(buf.data() + r * p + w, buf.data() + r * p + p, T(0));
  }
  return buf.data();
}

// grad_w[l] = Σ over chunks in chunk order of partial (in parallel over the entries).
template <typename T>
void reduce_chunks(const Net& net, const Chunks& ch, const std::vector<T>& partial,
                   std::vector<at::Tensor>& grad_w) {
  for (int64_t l = 0; l < net.n_layers(); ++l) {
    const int64_t N = net.widths[l + 1], K = net.widths[l], Kp = net.padded[l];
    T* g = grad_w[l].data_ptr<T>();
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t k = 0; k < K; ++k) {
          T s = T(0);
          for (int64_t c = 0; c < ch.count; ++c)
            s += partial[c * ch.goff.back() + ch.goff[l] + n * Kp + k];
          g[n * K + k] = s;
        }
    });
  }
}

template <typename T>
void backward(const at::Tensor& grad_y, const at::Tensor& x, const at::TensorList& weights,
              const at::Tensor& y, at::TensorList hidden, int64_t act_code, int64_t out_act,
              bool need_x, at::Tensor& grad_x, std::vector<at::Tensor>& grad_w) {
  const Net net = net_of<T>(weights, x.size(1));
  const auto wp = pack<T>(weights, net, /*transpose=*/false);
  const int64_t M = x.size(0), L = net.n_layers(), H = net.widths[1], O = net.widths[L];
  const int64_t K0 = net.widths[0], ld = net.max_padded(), Op = net.padded[L];
  const Chunks ch(net, M);
  std::vector<T> partial(ch.count * ch.goff[L], T(0));
  const T *gyp = grad_y.data_ptr<T>(), *xp = x.data_ptr<T>(), *yp = y.data_ptr<T>();
  std::vector<const T*> hp;
  for (const auto& h : hidden) hp.push_back(h.data_ptr<T>());
  T* gxp = need_x ? grad_x.data_ptr<T>() : nullptr;

  at::parallel_for(0, ch.count, 1, [&](int64_t c0, int64_t c1) {
    std::vector<std::vector<T>> acts(L);
    std::vector<const T*> act(L);
    for (auto& a : acts) a.assign(kTile * ld, T(0));
    std::vector<T> d(kTile * ld, T(0)), d2(kTile * ld, T(0));
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t end = std::min(M, (c + 1) * ch.size);
      for (int64_t m0 = c * ch.size; m0 < end; m0 += kTile) {
        const int64_t rows = std::min(kTile, end - m0);
        for (int64_t l = 0; l < L; ++l)  // h_0 = x, h_l = hidden[l - 1]
          act[l] = padded_rows<T>(l == 0 ? xp + m0 * K0 : hp[l - 1] + m0 * H, net.widths[l],
                                  net.padded[l], rows, acts[l]);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t n = 0; n < O; ++n)
            d[r * Op + n] = act_grad(gyp[(m0 + r) * O + n], yp[(m0 + r) * O + n], out_act);
        backward_tile<T>(net, wp, act, rows, act_code, ch.goff, partial.data() + c * ch.goff[L],
                         gxp ? gxp + m0 * K0 : nullptr, d, d2);
      }
    }
  });
  reduce_chunks<T>(net, ch, partial, grad_w);
}

// x ([M, K]) stored planar: [G, M, F] with K = G·F (column g·F + f of row m at (g·M + m)·F + f),
// the layout the hash-grid encoding computes its levels in. Rows m0 .. m0 + rows to / from a
// [rows, ld] tile.
template <typename T>
void planar_to_tile(const T* src, int64_t G, int64_t M, int64_t F, int64_t m0, int64_t rows,
                    T* dst, int64_t ld) {
  transpose_items_block(src + m0 * F, M * F, dst, ld, G, rows, static_cast<int>(F));
}

template <typename T>
void tile_to_planar(const T* src, int64_t ld, int64_t G, int64_t M, int64_t F, int64_t m0,
                    int64_t rows, T* dst) {
  transpose_items_block(src, ld, dst + m0 * F, M * F, rows, G, static_cast<int>(F));
}

// loss = mean((out_act(MLP(x)) − target)²) with y = out_act(MLP(x)), and, when need_grad, the
// gradients of loss (grad_x when need_x too): each tile runs forward, loss and backward while
// its activations are still in cache — nothing of the forward goes to memory but y.
template <typename T>
double mse(const at::Tensor& x, const at::TensorList& weights, const at::Tensor& target,
           int64_t act_code, int64_t out_act, bool need_grad, bool need_x, at::Tensor& y,
           at::Tensor& grad_x, std::vector<at::Tensor>& grad_w) {
  // x [M, K], or planar [G, M, F] (grad_x in x's layout)
  const bool planar = x.dim() == 3;
  const int64_t G = planar ? x.size(0) : 1, F = planar ? x.size(2) : x.size(1);
  const Net net = net_of<T>(weights, G * F);
  const auto wt = pack<T>(weights, net, /*transpose=*/true);
  const auto wp = need_grad ? pack<T>(weights, net, /*transpose=*/false)
                            : std::vector<std::vector<T>>();
  const int64_t M = planar ? x.size(1) : x.size(0), L = net.n_layers(), O = net.widths[L];
  const int64_t K0 = net.widths[0], ld = net.max_padded(), Op = net.padded[L];
  const Chunks ch(net, M);
  std::vector<T> partial(need_grad ? ch.count * ch.goff[L] : 0, T(0));
  std::vector<double> sq(ch.count, 0.0);
  const T *xp = x.data_ptr<T>(), *tp = target.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  T* gxp = need_grad && need_x ? grad_x.data_ptr<T>() : nullptr;
  // d loss / d y = 2 (y − target) / (M·O), as autograd forms it: (2·diff)·(1/(M·O))
  const T scale = T(1) / T(M * O);

  at::parallel_for(0, ch.count, 1, [&](int64_t c0, int64_t c1) {
    // acts[l]: the tile's h_l, padded (acts[0]: x's rows when they need padding); acts[L]: the
    // output layer's pre-activation
    std::vector<std::vector<T>> acts(L + 1);
    for (auto& a : acts) a.assign(kTile * ld, T(0));
    std::vector<const T*> act(L);
    std::vector<T*> out(L);
    for (int64_t l = 0; l < L; ++l) out[l] = acts[l + 1].data();
    std::vector<T> d(kTile * ld, T(0)), d2(kTile * ld, T(0));
    std::vector<T> gx_tile(planar && gxp ? kTile * K0 : 0);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t end = std::min(M, (c + 1) * ch.size);
      double s = 0.0;
      for (int64_t m0 = c * ch.size; m0 < end; m0 += kTile) {
        const int64_t rows = std::min(kTile, end - m0);
        if (planar) {  // padded columns of acts[0] stay zero: only the K0 columns are written
          // the next tile's G runs: more streams than the hardware prefetcher follows
          const int64_t next = std::min(kTile, end - m0 - kTile) * F;
          for (int64_t g = 0; g < G; ++g)
            for (int64_t i = 0; i < next; i += 64 / int64_t(sizeof(T)))
              __builtin_prefetch(xp + (g * M + m0 + kTile) * F + i);
          planar_to_tile<T>(xp, G, M, F, m0, rows, acts[0].data(), net.padded[0]);
          act[0] = acts[0].data();
        } else {
          act[0] = padded_rows<T>(xp + m0 * K0, K0, net.padded[0], rows, acts[0]);
        }
        for (int64_t l = 1; l < L; ++l) act[l] = acts[l].data();
        forward_tile<T>(net, wt, act[0], net.padded[0], rows, act_code, out.data(), nullptr);
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t n = 0; n < O; ++n) {
            const T v = activate(out[L - 1][r * Op + n], out_act);
            const T diff = v - tp[(m0 + r) * O + n];
            yp[(m0 + r) * O + n] = v;
            s += double(diff) * double(diff);
            d[r * Op + n] = act_grad((T(2) * diff) * scale, v, out_act);
          }
        if (!need_grad) continue;
        T* gx = gxp == nullptr ? nullptr : planar ? gx_tile.data() : gxp + m0 * K0;
        backward_tile<T>(net, wp, act, rows, act_code, ch.goff, partial.data() + c * ch.goff[L],
                         gx, d, d2);
        if (planar && gx) tile_to_planar<T>(gx, K0, G, M, F, m0, rows, gxp);
      }
      sq[c] = s;
    }
  });
  if (need_grad) reduce_chunks<T>(net, ch, partial, grad_w);
  double total = 0.0;
  for (double s : sq) total += s;
  return total / double(M * O);
}

std::tuple<at::Tensor, std::vector<at::Tensor>> mlp_fwd_cpu(
    const at::Tensor& x, at::TensorList weights, int64_t activation, int64_t output_activation,
    bool save_hidden) {
  check_inputs("fastgen::mlp_fwd", x, weights);
  check_act("fastgen::mlp_fwd", activation, output_activation);
  const int64_t M = x.size(0), L = weights.size(), H = weights[0].size(0);
  auto y = cpu_pool::empty({M, weights[L - 1].size(0)}, x.options());
  // One tensor per hidden layer ([n-1, M, H] in one piece came to exactly glibc's largest mmap
  // threshold, 32 MiB, at M = 2^16, H = 64), from the buffer cache: fresh ones can be
  // page-faulted in on every call.
  std::vector<at::Tensor> hidden;
  for (int64_t l = 0; l + 1 < L; ++l)
    hidden.push_back(cpu_pool::empty({save_hidden ? M : 0, H}, x.options()));
  if (M == 0) return {y, hidden};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_fwd", [&] {
    forward<scalar_t>(x, weights, activation, output_activation, y, hidden);
  });
  return {y, hidden};
}

std::tuple<at::Tensor, std::vector<at::Tensor>> mlp_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, at::TensorList weights, const at::Tensor& y,
    at::TensorList hidden, int64_t activation, int64_t output_activation, bool need_x) {
  check_inputs("fastgen::mlp_bwd", x, weights);
  check_act("fastgen::mlp_bwd", activation, output_activation);
  const int64_t M = x.size(0), L = weights.size(), H = weights[0].size(0);
  const auto O = weights[L - 1].size(0);
  check_rows("fastgen::mlp_bwd", "grad_y", grad_y, x, M, O);
  check_rows("fastgen::mlp_bwd", "y", y, x, M, O);
  TORCH_CHECK(int64_t(hidden.size()) == L - 1, "fastgen::mlp_bwd: hidden must hold the forward's ",
              L - 1, " hidden-layer outputs, got ", hidden.size());
  for (size_t l = 0; l < hidden.size(); ++l) {
    const auto& h = hidden[l];
    TORCH_CHECK(h.device().is_cpu() && h.scalar_type() == x.scalar_type() &&
                    h.sizes() == at::IntArrayRef({M, H}) && h.is_contiguous(),
                "fastgen::mlp_bwd: hidden[", l, "] must be the forward's contiguous [", M, ", ", H,
                "] CPU tensor of x's dtype (mlp_fwd with save_hidden=True), got ", h.sizes(), " ",
                h.scalar_type());
  }
  auto grad_x = need_x ? cpu_pool::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  std::vector<at::Tensor> grad_w;
  for (const auto& w : weights) grad_w.push_back(M == 0 ? at::zeros_like(w) : at::empty_like(w));
  if (M == 0) return {grad_x, grad_w};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_bwd", [&] {
    backward<scalar_t>(grad_y, x, weights, y, hidden, activation, output_activation, need_x,
                       grad_x, grad_w);
  });
  return {grad_x, grad_w};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<at::Tensor>> mlp_mse_cpu(
    const at::Tensor& x, at::TensorList weights, const at::Tensor& target, int64_t activation,
    int64_t output_activation, bool need_grad, bool need_x) {
  check_inputs("fastgen::mlp_mse", x, weights, /*planar_ok=*/true);
  const bool planar = x.dim() == 3;
  check_act("fastgen::mlp_mse", activation, output_activation);
  const int64_t M = planar ? x.size(1) : x.size(0), L = weights.size();
  const int64_t O = weights[L - 1].size(0);
  check_rows("fastgen::mlp_mse", "target", target, x, M, O);
  auto y = at::empty({M, O}, x.options());
  auto grad_x = need_grad && need_x ? cpu_pool::empty(x.sizes(), x.options())
                                    : at::empty({0}, x.options());
  std::vector<at::Tensor> grad_w;
  for (const auto& w : weights)
    grad_w.push_back(!need_grad ? at::empty({0}, w.options())
                     : M == 0   ? at::zeros_like(w)
                                : at::empty_like(w));
  if (M == 0) return {at::full({}, NAN, x.options()), y, grad_x, grad_w};
  double loss = 0.0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlp_mse", [&] {
    loss = mse<scalar_t>(x, weights, target, activation, output_activation, need_grad, need_x, y,
                         grad_x, grad_w);
  });
  return {at::full({}, loss, x.options()), y, grad_x, grad_w};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("mlp_fwd", &fastgen::mlp_fwd_cpu);
  m.impl("mlp_bwd", &fastgen::mlp_bwd_cpu);
  m.impl("mlp_mse", &fastgen::mlp_mse_cpu);
}

// CPU kernels for fastgen::bias_act and fastgen::bias_act_bwd.
//
//   y      = clamp(act(x + b[c]) * gain, -clamp, +clamp)
//   grad_x = grad_y * gain * act'(x + b[c]) * [|act(x + b[c]) * gain| <= clamp]
//   grad_b = sum of grad_x over every dim but `dim`
// (math and default alpha/gain: fastgen/reference/bias_act.py; the clamp gate is inclusive, as
// torch.clamp's own derivative is).
//
// Each direction is one pass over memory: the forward reads x and writes y; the backward reads
// grad_y and x, writes grad_x, and reduces grad_b from per-task partial sums. Tasks are cut from
// the shape alone, never from the thread count, so grad_b is bitwise reproducible.
//
// Layout. For a non-overlapping dense x (contiguous, channels-last or any permutation) the element
// at memory offset p lies in channel (p / inner) % C, with inner = x.stride(dim): memory is
// [outer, C, inner] whatever the logical order. Two tilings follow from it:
//   row mode    (inner > 1)  rows of `inner` elements share one bias value   (NCHW)
//   column mode (inner == 1) rows of C elements take the whole bias vector  (NHWC, [N, C])
// Other inputs are first copied into at::empty_like(x), so the output strides are always exactly
// those of at::empty_like(x), which the fake kernel reports.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/fastgen.h"
#include "cpu/vec_io.h"

namespace fastgen {
namespace {

enum class Act { Linear, Relu, Lrelu, Tanh, Sigmoid, Elu, Selu, Softplus, Swish, Gelu };
enum class Bias { None, Scalar, Vector };

// SELU constants, Klambauer et al. 2017 (as torch.nn.functional.selu uses them).
constexpr double kSeluLambda = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

Act parse_act(c10::string_view name) {
  static const std::pair<const char*, Act> table[] = {
      {"linear", Act::Linear}, {"relu", Act::Relu},       {"lrelu", Act::Lrelu},
      {"tanh", Act::Tanh},     {"sigmoid", Act::Sigmoid}, {"elu", Act::Elu},
      {"selu", Act::Selu},     {"softplus", Act::Softplus}, {"swish", Act::Swish},
      {"gelu", Act::Gelu}};
  for (const auto& [key, act] : table) {
    if (name == key) return act;
  }
  TORCH_CHECK(false, "bias_act: act must be one of linear, relu, lrelu, tanh, sigmoid, elu, selu, ",
              "softplus, swish, gelu; got '", std::string(name), "'");
}

template <typename T>
struct Params {
  T alpha;
  T gain;
  T clamp;
  bool has_clamp;
};

template <typename T>
inline Vec<T> sigmoid(Vec<T> u) {
  const Vec<T> one(T(1));
  return one / (one + u.neg().exp());
}

// act(u) on one vector. NaN inputs stay NaN (maximum and the u > 0 blends keep them).
template <Act A, typename T>
inline Vec<T> act_fwd(Vec<T> u, T alpha) {
  const Vec<T> zero(T(0)), one(T(1));
  if constexpr (A == Act::Linear) return u;
  if constexpr (A == Act::Relu) return at::vec::maximum(u, zero);
  if constexpr (A == Act::Lrelu) return Vec<T>::blendv(u * Vec<T>(alpha), u, u > zero);
  if constexpr (A == Act::Tanh) return u.tanh();
  if constexpr (A == Act::Sigmoid) return sigmoid(u);
  if constexpr (A == Act::Elu) return Vec<T>::blendv(u.expm1(), u, u > zero);
  if constexpr (A == Act::Selu)
    return Vec<T>(T(kSeluLambda)) * Vec<T>::blendv(Vec<T>(T(kSeluAlpha)) * u.expm1(), u, u > zero);
  // log(1 + e^u) = max(u, 0) + log1p(e^-|u|): no overflow for large |u|.
  if constexpr (A == Act::Softplus) return at::vec::maximum(u, zero) + u.abs().neg().exp().log1p();
  if constexpr (A == Act::Swish) return u * sigmoid(u);
  if constexpr (A == Act::Gelu) return Vec<T>(T(0.5)) * u * (one + (u * Vec<T>(T(kInvSqrt2))).erf());
}

// act'(u). At the kinks (u == 0) the choice matches torch's own backward for that activation.
template <Act A, typename T>
inline Vec<T> act_deriv(Vec<T> u, T alpha) {
  const Vec<T> zero(T(0)), one(T(1));
  if constexpr (A == Act::Linear) return one;
  if constexpr (A == Act::Relu) return Vec<T>::blendv(zero, one, u > zero);
  if constexpr (A == Act::Lrelu) return Vec<T>::blendv(Vec<T>(alpha), one, u > zero);
  if constexpr (A == Act::Tanh) {
    const Vec<T> t = u.tanh();
    return one - t * t;
  }
  if constexpr (A == Act::Sigmoid) {
    const Vec<T> s = sigmoid(u);
    return s * (one - s);
  }
  if constexpr (A == Act::Elu) return Vec<T>::blendv(u.exp(), one, u > zero);
  if constexpr (A == Act::Selu)
    return Vec<T>(T(kSeluLambda)) * Vec<T>::blendv(Vec<T>(T(kSeluAlpha)) * u.exp(), one, u > zero);
  if constexpr (A == Act::Softplus) return sigmoid(u);
  if constexpr (A == Act::Swish) {
    const Vec<T> s = sigmoid(u);
    return s * (one + u * (one - s));
  }
  if constexpr (A == Act::Gelu) {
    const Vec<T> cdf = Vec<T>(T(0.5)) * (one + (u * Vec<T>(T(kInvSqrt2))).erf());
    const Vec<T> pdf = Vec<T>(T(kInvSqrt2Pi)) * (Vec<T>(T(-0.5)) * u * u).exp();
    return cdf + u * pdf;
  }
}

template <typename T>
inline Vec<T> clamp_keep_nan(Vec<T> v, T c) {
  v = Vec<T>::blendv(v, Vec<T>(c), v > Vec<T>(c));
  return Vec<T>::blendv(v, Vec<T>(-c), v < Vec<T>(-c));
}

// y[0:len] from x[0:len]; bias is bias_s (Scalar) or bias_v[0:len] (Vector).
template <Act A, Bias B, typename S, typename T = at::opmath_type<S>>
void fwd_span(const S* x, S* y, int64_t len, std::common_type_t<T> bias_s,
              const std::common_type_t<T>* bias_v, const Params<std::common_type_t<T>>& p) {
  for_each_vector<Mem<S>::W>(len, [&](int64_t i, int64_t n) {
    Vec<T> u = Mem<S>::load(x + i, n);
    if constexpr (B == Bias::Scalar) u = u + Vec<T>(bias_s);
    if constexpr (B == Bias::Vector) u = u + Vec<T>::loadu(bias_v + i, n);
    Vec<T> v = act_fwd<A, T>(u, p.alpha) * Vec<T>(p.gain);
    if (p.has_clamp) v = clamp_keep_nan(v, p.clamp);
    Mem<S>::store(v, y + i, n);
  });
}

template <typename T>
inline double lane_sum(const Vec<T>& v) {
  T lanes[Vec<T>::size()];
  v.store(lanes);
  double s = 0.0;
  for (int64_t i = 0; i < Vec<T>::size(); ++i) s += lanes[i];
  return s;
}

// grad_x[0:len]; returns the span's sum (row mode) or adds the span into acc_v[0:len] (column
// mode, acc_v != nullptr). Lanes past the tail are zeroed before they are summed. The row sum is
// flushed to double every kFlush vectors, so long rows keep fp32 sums short.
template <Act A, Bias B, typename S, typename T = at::opmath_type<S>>
double bwd_span(const S* gy, const S* x, S* gx, int64_t len, std::common_type_t<T> bias_s,
                const std::common_type_t<T>* bias_v, std::common_type_t<T>* acc_v,
                const Params<std::common_type_t<T>>& p) {
  constexpr int kFlush = 64;
  // Without a clamp, linear needs no x at all: skip reading it.
  const bool need_u = A != Act::Linear || p.has_clamp;
  Vec<T> acc(T(0));
  double total = 0.0;
  int pending = 0;
  for_each_vector<Mem<S>::W>(len, [&](int64_t i, int64_t n) {
    Vec<T> g = Mem<S>::load(gy + i, n) * Vec<T>(p.gain);
    if (need_u) {
      Vec<T> u = Mem<S>::load(x + i, n);
      if constexpr (B == Bias::Scalar) u = u + Vec<T>(bias_s);
      if constexpr (B == Bias::Vector) u = u + Vec<T>::loadu(bias_v + i, n);
      g = g * act_deriv<A, T>(u, p.alpha);
      if (p.has_clamp) {
        const Vec<T> v = act_fwd<A, T>(u, p.alpha) * Vec<T>(p.gain);
        g = Vec<T>::blendv(Vec<T>(T(0)), g, v.abs() <= Vec<T>(p.clamp));
      }
    }
    Mem<S>::store(g, gx + i, n);
    if (n != Mem<S>::W) g = Vec<T>::set(Vec<T>(T(0)), g, n);
    if (acc_v != nullptr) {
      (Vec<T>::loadu(acc_v + i, n) + g).store(acc_v + i, n);
    } else {
      acc = acc + g;
      if (++pending == kFlush) {
        total += lane_sum(acc);
        acc = Vec<T>(T(0));
        pending = 0;
      }
    }
  });
  return total + lane_sum(acc);
}

// Memory of a dense tensor seen as [outer, C, inner] (see the header comment).
struct Layout {
  int64_t outer, channels, inner;
};

Layout layout_of(const at::Tensor& xd, int64_t dim, bool has_bias) {
  const int64_t numel = xd.numel();
  if (!has_bias || xd.size(dim) == 1) return {1, 1, numel};
  const int64_t c = xd.size(dim), inner = xd.stride(dim);
  return {numel / (c * inner), c, inner};
}

// Task grid over [rows, cols] memory: row mode has rows = outer * C of length inner, column mode
// rows = outer of length C. Each task covers rows_per_task x cols_per_task elements.
struct Tiling {
  bool column_mode;
  int64_t rows, cols, rows_per_task, cols_per_task, row_tasks, col_tasks;
  int64_t tasks() const { return row_tasks * col_tasks; }
};

Tiling tiling_of(const Layout& l) {
  Tiling t{};
  t.column_mode = l.inner == 1 && l.channels > 1;
  t.rows = t.column_mode ? l.outer : l.outer * l.channels;
  t.cols = t.column_mode ? l.channels : l.inner;
  t.cols_per_task = std::max<int64_t>(1, std::min<int64_t>(t.cols, kElementsPerTask));
  // Column mode sums each column over a task's rows in the compute type: at most 64 rows, so
  // those fp32 sums stay short (the per-task partials are then added in double).
  t.rows_per_task = t.column_mode
                        ? std::clamp<int64_t>(kElementsPerTask / t.cols_per_task, 1, 64)
                        : 1;
  t.row_tasks = (t.rows + t.rows_per_task - 1) / t.rows_per_task;
  t.col_tasks = (t.cols + t.cols_per_task - 1) / t.cols_per_task;
  return t;
}

void check_args(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim,
                double alpha, double gain, std::optional<double> clamp) {
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "bias_act: x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK(std::isfinite(alpha) && std::isfinite(gain),
              "bias_act: alpha and gain must be finite, got alpha=", alpha, ", gain=", gain);
  TORCH_CHECK(!clamp.has_value() || (std::isfinite(*clamp) && *clamp >= 0),
              "bias_act: clamp must be None or a finite number >= 0, got ", clamp.value_or(0));
  if (b.has_value()) {
    TORCH_CHECK(x.dim() > 0 && dim >= 0 && dim < x.dim(),
                "bias_act: dim must index a dimension of x (ndim ", x.dim(), "), got ", dim);
    TORCH_CHECK(b->dim() == 1 && b->size(0) == x.size(dim), "bias_act: b must have shape [",
                x.size(dim), "] (x.shape[dim]), got ", b->sizes());
    TORCH_CHECK(b->scalar_type() == x.scalar_type(), "bias_act: b must have dtype ",
                x.scalar_type(), " like x, got ", b->scalar_type());
    TORCH_CHECK(b->device() == x.device(), "bias_act: b must be on ", x.device(),
                " like x, got ", b->device());
  }
}

template <typename F>
void dispatch_act(Act act, const F& f) {
  switch (act) {
    case Act::Linear: return f(std::integral_constant<Act, Act::Linear>{});
    case Act::Relu: return f(std::integral_constant<Act, Act::Relu>{});
    case Act::Lrelu: return f(std::integral_constant<Act, Act::Lrelu>{});
    case Act::Tanh: return f(std::integral_constant<Act, Act::Tanh>{});
    case Act::Sigmoid: return f(std::integral_constant<Act, Act::Sigmoid>{});
    case Act::Elu: return f(std::integral_constant<Act, Act::Elu>{});
    case Act::Selu: return f(std::integral_constant<Act, Act::Selu>{});
    case Act::Softplus: return f(std::integral_constant<Act, Act::Softplus>{});
    case Act::Swish: return f(std::integral_constant<Act, Act::Swish>{});
    case Act::Gelu: return f(std::integral_constant<Act, Act::Gelu>{});
  }
}

template <typename T>
Params<T> params_of(double alpha, double gain, std::optional<double> clamp) {
  return {T(alpha), T(gain), T(clamp.value_or(0.0)), clamp.has_value()};
}

// x itself when dense; otherwise a dense copy laid out as at::empty_like(x) lays it out (which
// keeps x's dimension order), so outputs have exactly the strides the fake kernel reports.
at::Tensor dense(const at::Tensor& x) {
  return x.is_non_overlapping_and_dense() ? x : at::empty_like(x).copy_(x);
}

// b converted once to the compute type (empty when there is no bias).
template <typename T>
std::vector<T> bias_values(const std::optional<at::Tensor>& b) {
  if (!b.has_value()) return {};
  const at::Tensor bc = b->to(c10::CppTypeToScalarType<T>::value).contiguous();
  return std::vector<T>(bc.const_data_ptr<T>(), bc.const_data_ptr<T>() + bc.numel());
}

// Calls body(task, row_task, row, offset, col0, len) for every row segment of every task; tasks
// run in parallel, each segment is memory [offset, offset + len).
template <typename F>
void for_each_segment(const Tiling& t, const F& body) {
  at::parallel_for(0, t.tasks(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t rt = task / t.col_tasks;
      const int64_t r0 = rt * t.rows_per_task;
      const int64_t c0 = (task % t.col_tasks) * t.cols_per_task;
      const int64_t r1 = std::min(t.rows, r0 + t.rows_per_task);
      const int64_t len = std::min(t.cols, c0 + t.cols_per_task) - c0;
      for (int64_t r = r0; r < r1; ++r) body(task, rt, r, r * t.cols + c0, c0, len);
    }
  });
}

at::Tensor bias_act_cpu(const at::Tensor& x, const std::optional<at::Tensor>& b, int64_t dim,
                        c10::string_view act_name, double alpha, double gain,
                        std::optional<double> clamp) {
  check_args(x, b, dim, alpha, gain, clamp);
  const Act act = parse_act(act_name);
  const at::Tensor xd = dense(x);
  at::Tensor y = at::empty_like(xd);
  if (xd.numel() == 0) return y;
  const Tiling t = tiling_of(layout_of(xd, dim, b.has_value()));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_cpu", [&] {
    using S = scalar_t;
    using T = at::opmath_type<S>;
    const Params<T> p = params_of<T>(alpha, gain, clamp);
    const std::vector<T> bias = bias_values<T>(b);
    const S* xp = xd.const_data_ptr<S>();
    S* yp = y.data_ptr<S>();
    dispatch_act(act, [&](auto act_tag) {
      constexpr Act A = decltype(act_tag)::value;
      for_each_segment(t, [&](int64_t, int64_t, int64_t r, int64_t off, int64_t c0, int64_t len) {
        if (bias.empty()) {
          fwd_span<A, Bias::None>(xp + off, yp + off, len, T(0), nullptr, p);
        } else if (t.column_mode) {
          fwd_span<A, Bias::Vector>(xp + off, yp + off, len, T(0), bias.data() + c0, p);
        } else {
          fwd_span<A, Bias::Scalar>(xp + off, yp + off, len, bias[r % bias.size()], nullptr, p);
        }
      });
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> bias_act_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const std::optional<at::Tensor>& b,
    int64_t dim, c10::string_view act_name, double alpha, double gain,
    std::optional<double> clamp) {
  check_args(x, b, dim, alpha, gain, clamp);
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "bias_act_bwd: grad_y must have x's shape ",
              x.sizes(), ", got ", grad_y.sizes());
  TORCH_CHECK(grad_y.scalar_type() == x.scalar_type(), "bias_act_bwd: grad_y must have dtype ",
              x.scalar_type(), ", got ", grad_y.scalar_type());
  const Act act = parse_act(act_name);
  const at::Tensor xd = dense(x);
  // grad_y must walk memory in x's order; autograd often hands over another layout.
  const at::Tensor gyd = grad_y.strides() == xd.strides() ? grad_y : at::empty_like(xd).copy_(grad_y);
  at::Tensor gx = at::empty_like(xd);
  const int64_t channels = b.has_value() ? b->size(0) : 0;
  at::Tensor gb = b.has_value() ? at::empty({channels}, b->options()) : at::empty({0}, x.options());
  if (xd.numel() == 0) {
    gb.zero_();
    return {gx, gb};
  }
  const Tiling t = tiling_of(layout_of(xd, dim, b.has_value()));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bias_act_bwd_cpu", [&] {
    using S = scalar_t;
    using T = at::opmath_type<S>;
    const Params<T> p = params_of<T>(alpha, gain, clamp);
    const std::vector<T> bias = bias_values<T>(b);
    // Row mode: one partial per task. Column mode: one partial row of C per row-block.
    std::vector<double> row_partial(t.column_mode ? 0 : t.tasks(), 0.0);
    std::vector<T> col_partial(t.column_mode ? t.row_tasks * t.cols : 0, T(0));
    const S* gyp = gyd.const_data_ptr<S>();
    const S* xp = xd.const_data_ptr<S>();
    S* gxp = gx.data_ptr<S>();
    dispatch_act(act, [&](auto act_tag) {
      constexpr Act A = decltype(act_tag)::value;
      for_each_segment(t, [&](int64_t task, int64_t rt, int64_t r, int64_t off, int64_t c0,
                              int64_t len) {
        if (bias.empty()) {
          bwd_span<A, Bias::None>(gyp + off, xp + off, gxp + off, len, T(0), nullptr, nullptr, p);
        } else if (t.column_mode) {
          bwd_span<A, Bias::Vector>(gyp + off, xp + off, gxp + off, len, T(0), bias.data() + c0,
                                    col_partial.data() + rt * t.cols + c0, p);
        } else {
          row_partial[task] = bwd_span<A, Bias::Scalar>(gyp + off, xp + off, gxp + off, len,
                                                        bias[r % bias.size()], nullptr, nullptr, p);
        }
      });
    });
    if (b.has_value()) {
      // Fixed-order double sums of the partials: exact enough, and independent of threads.
      std::vector<double> sums(channels, 0.0);
      if (t.column_mode) {
        for (int64_t rt = 0; rt < t.row_tasks; ++rt)
          for (int64_t c = 0; c < channels; ++c) sums[c] += col_partial[rt * t.cols + c];
      } else {
        for (int64_t task = 0; task < t.tasks(); ++task)
          sums[(task / t.col_tasks) % channels] += row_partial[task];
      }
      auto gbp = gb.accessor<S, 1>();
      for (int64_t c = 0; c < channels; ++c) gbp[c] = static_cast<S>(sums[c]);
    }
  });
  return {gx, gb};
}

}  // namespace
}  // namespace fastgen

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("bias_act", &fastgen::bias_act_cpu);
  m.impl("bias_act_bwd", &fastgen::bias_act_bwd_cpu);
}

// Argument unpacking and compile-time dispatch shared by the hash-grid launchers (CPU and CUDA).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/hashgrid.h"

namespace fastgen {
namespace hashgrid {

// offsets: L + 1 running entry counts; scales: L float32 values carried in doubles (exact).
inline Levels make_levels(at::IntArrayRef offsets, at::ArrayRef<double> scales,
                          int64_t interpolation, bool use_hash) {
  const int64_t L = static_cast<int64_t>(scales.size());
  TORCH_CHECK(L >= 1 && L <= kMaxLevels, "hashgrid: n_levels must be in [1, ", kMaxLevels,
              "], got ", L);
  TORCH_CHECK(static_cast<int64_t>(offsets.size()) == L + 1, "hashgrid: offsets must have ",
              L + 1, " entries (n_levels + 1), got ", offsets.size());
  TORCH_CHECK(interpolation >= kNearest && interpolation <= kSmoothstep,
              "hashgrid: interpolation must be 0 (Nearest), 1 (Linear) or 2 (Smoothstep), got ",
              interpolation);
  Levels lv{};
  lv.n_levels = static_cast<int>(L);
  lv.use_hash = use_hash;
  lv.interpolation = static_cast<int>(interpolation);
  TORCH_CHECK(offsets[0] == 0, "hashgrid: offsets[0] must be 0, got ", offsets[0]);
  for (int64_t l = 0; l <= L; ++l) {
    TORCH_CHECK(offsets[l] >= 0 && offsets[l] <= int64_t(UINT32_MAX),
                "hashgrid: offsets[", l, "] = ", offsets[l], " is out of the uint32 range");
    if (l > 0) {
      TORCH_CHECK(offsets[l] > offsets[l - 1], "hashgrid: offsets must increase, but offsets[",
                  l, "] = ", offsets[l], " <= offsets[", l - 1, "] = ", offsets[l - 1]);
    }
    lv.offset[l] = static_cast<uint32_t>(offsets[l]);
  }
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK(std::isfinite(scales[l]) && scales[l] >= 0 && scales[l] < 2147483648.0,
                "hashgrid: scales[", l, "] must be finite and in [0, 2^31), got ", scales[l]);
    lv.scale[l] = static_cast<float>(scales[l]);
  }
  return lv;
}

// Checks shared by every hash-grid op: x [N, D] contiguous, params [entries * F] contiguous.
inline void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& params,
                         const Levels& lv, int64_t F) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 2 && x.size(1) <= 4, op,
              ": x must be [N, D] with D in {2, 3, 4}, got ", x.sizes());
  TORCH_CHECK(F == 1 || F == 2 || F == 4 || F == 8, op,
              ": n_features_per_level must be 1, 2, 4 or 8, got ", F);
  TORCH_CHECK(params.dim() == 1 && params.numel() == int64_t(lv.offset[lv.n_levels]) * F, op,
              ": params must be 1-D with ", int64_t(lv.offset[lv.n_levels]) * F,
              " elements (table entries x n_features_per_level), got ", params.sizes());
  TORCH_CHECK(x.is_contiguous() && params.is_contiguous(), op,
              ": x and params must be contiguous");
  TORCH_CHECK(x.device() == params.device(), op, ": x is on ", x.device(), " but params on ",
              params.device());
  const bool wide = params.scalar_type() == at::kDouble;
  TORCH_CHECK(x.scalar_type() == (wide ? at::kDouble : at::kFloat), op, ": x must be ",
              wide ? "float64 (params are float64)" : "float32", ", got ", x.scalar_type());
}

// Calls fn(std::integral_constant<int, D>{}, std::integral_constant<int, F>{}).
template <typename Fn>
void dispatch_dims(int64_t D, int64_t F, Fn&& fn) {
  auto with_f = [&](auto d) {
    switch (F) {
      case 1: fn(d, std::integral_constant<int, 1>{}); break;
      case 2: fn(d, std::integral_constant<int, 2>{}); break;
      case 4: fn(d, std::integral_constant<int, 4>{}); break;
      case 8: fn(d, std::integral_constant<int, 8>{}); break;
      default: TORCH_CHECK(false, "hashgrid: n_features_per_level must be 1, 2, 4 or 8, got ", F);
    }
  };
  switch (D) {
    case 2: with_f(std::integral_constant<int, 2>{}); break;
    case 3: with_f(std::integral_constant<int, 3>{}); break;
    case 4: with_f(std::integral_constant<int, 4>{}); break;
    default: TORCH_CHECK(false, "hashgrid: D must be 2, 3 or 4, got ", D);
  }
}

}  // namespace hashgrid
}  // namespace fastgen

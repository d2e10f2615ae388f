// The CPU kernel of fastgen::sampler_step (csrc/cpu/sampler.cpp), also called without the
// dispatcher by fastgen._C.sampler_step_eager (csrc/module.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace fastgen {

// (out, x̂0 or an empty tensor); arguments as in the op's schema (csrc/registration.cpp).
std::tuple<at::Tensor, at::Tensor> sampler_step_cpu(
    const at::Tensor& x, const at::Tensor& m, const std::optional<at::Tensor>& u,
    const std::optional<at::Tensor>& h1, const std::optional<at::Tensor>& h2,
    const std::optional<at::Tensor>& z, at::ArrayRef<double> coeffs, std::optional<double> clip,
    bool want_x0);

}  // namespace fastgen

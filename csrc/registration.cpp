// Every schema of the `fastgen` operator namespace, in one place.
//
// Device implementations register themselves next to their kernels (TORCH_LIBRARY_IMPL in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu); fake (meta) kernels and autograd formulas are
// registered from Python in fastgen/ops/<op>.py, so that one file documents each op's contract.
// Ops implemented only in Python (Triton kernels) are declared there with torch.library.custom_op.
#include <torch/library.h>

TORCH_LIBRARY(fastgen, m) {
  // y = clamp(act(x + b[dim]) * gain, -clamp, clamp); the output keeps x's memory format.
  // act is a name from fastgen/ops/bias_act.py::ACTIVATIONS; clamp=None disables clamping.
  m.def(
      "bias_act(Tensor x, Tensor? b, int dim, str act, float alpha, float gain, float? clamp)"
      " -> Tensor");
  // (grad_x, grad_b) for bias_act; recomputes x + b instead of saving the activation, so the
  // derivative is evaluated at exactly the forward's point. grad_b is empty when b is None.
  m.def(
      "bias_act_bwd(Tensor grad_y, Tensor x, Tensor? b, int dim, str act, float alpha,"
      " float gain, float? clamp) -> (Tensor, Tensor)");
}

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
  // Attention with softcap on CPU (fastgen/ops/_attention_blockwise.py), one fused pass per
  // score tile. s: [R, N] contiguous raw scores x = q.k * scale / softcap of query rows
  // i = i0 + r % rows against keys j = j0 + n; a key is hidden unless
  // i + off - left <= j <= i + off + right (negative bound: unbounded).
  // Forward: s := exp(softcap * tanh(x)) (0 where hidden); rowsum[r] += sum_n s[r, n].
  m.def(
      "softcap_probs_(Tensor(a!) s, Tensor(b!) rowsum, float softcap, int i0, int j0, int rows,"
      " int off, int left, int right) -> ()");
  // Backward: t = tanh(x), p = exp(softcap * t - lse[r]) (0 where hidden);
  // s := p and dp := p * (dp - delta[r]) * (1 - t^2), the gradient of the capped score.
  m.def(
      "softcap_probs_bwd_(Tensor(a!) s, Tensor(b!) dp, Tensor lse, Tensor delta, float softcap,"
      " int i0, int j0, int rows, int off, int left, int right) -> ()");
  // Multiresolution hash-grid encoding (fastgen/ops/hashgrid.py; math in csrc/common/hashgrid.h).
  // x: [N, D] float32 (float64 with float64 params), D in {2, 3, 4}, clamped to [0, 1];
  // params: [offsets[L] * F] table entries of F features, level after level (tcnn's layout);
  // offsets: L + 1 running entry counts; scales: per-level float32 scale; interpolation:
  // 0 Nearest, 1 Linear, 2 Smoothstep; use_hash: Hash grid type (else Dense/Tiled wrap).
  // Output [N, L * F] in params' dtype, level-major (column l * F + f).
  m.def(
      "hashgrid_fwd(Tensor x, Tensor params, int[] offsets, float[] scales, int F,"
      " int interpolation, bool use_hash) -> Tensor");
  // The same encoding planar, [L, N, F] (CPU): the layout the kernels compute, for a consumer
  // that reads it as is (mlp_mse) instead of the point-major copy.
  m.def(
      "hashgrid_fwd_planar(Tensor x, Tensor params, int[] offsets, float[] scales, int F,"
      " int interpolation, bool use_hash) -> Tensor");
  // (grad_params, grad_x) from grad_out [N, L * F] or planar [L, N, F] (CPU); each is empty
  // ([0]) unless asked for. grad_params accumulates in float32 (float64 for float64 params) and
  // is returned in params' dtype.
  m.def(
      "hashgrid_bwd(Tensor grad_out, Tensor x, Tensor params, int[] offsets, float[] scales,"
      " int F, int interpolation, bool use_hash, bool need_params_grad, bool need_x_grad)"
      " -> (Tensor, Tensor)");
  // One level's corners: (index [N, C] int64 global table entries, weight [N, C] x's dtype),
  // C = 2^D (1 for Nearest); NaN points get weight 0. Used by the deterministic backward.
  m.def(
      "hashgrid_corners(Tensor x, int[] offsets, float[] scales, int level, int interpolation,"
      " bool use_hash) -> (Tensor, Tensor)");
  // KV-cache decode attention (fastgen/ops/decode.py; math in fastgen/reference/decode.py):
  // q [B, Hq, Lq, D]; k [P, Hkv, page, D], v [P, Hkv, page, Dv] read through block_table
  // [B, max_pages] int32 (page ids), or without it as [B, Hkv, capacity, D] (page = row);
  // cache_seqlens [B] int32 counts each row's keys, the Lq queries being the last Lq of them.
  // Query i of row b sees keys j < n_b with pos - left <= j <= pos + right, pos = n_b - Lq + i
  // (negative bound = unbounded). Keys split into `splits` chunks merged by logsumexp (CPU:
  // splits <= 0 picks a count from the threads and lengths).
  // Returns (out [B, Hq, Lq, Dv] q's dtype, lse [B, Hq, Lq] float32; +inf for a query that
  // sees no key, whose out is 0).
  m.def(
      "decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens,"
      " Tensor? block_table, float scale, float softcap, int left, int right, int splits)"
      " -> (Tensor, Tensor)");
  // Linear layer for a decode step (fastgen/ops/linear.py): out [M, N] = x [M, K] · weight
  // [N, K]ᵀ + bias [N], for few rows M (the weight read once at memory bandwidth).
  m.def("decode_linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // RMSNorm (fastgen/ops/transformer.py): y [R, N] = weight · (x / sqrt(mean(x²) + eps)) per row,
  // the normalised row rounded to x's dtype before the weight multiplies it (as transformers).
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  // Rotate-half rotary embedding of q [B, T, Hq, D] and k [B, T, Hk, D] by cos, sin [B, T, D]:
  // x·cos + rotate_half(x)·sin, rotate_half(x) = (−x[D/2:], x[:D/2]). Returns (q', k').
  m.def("rotary(Tensor q, Tensor k, Tensor cos, Tensor sin) -> (Tensor, Tensor)");
  // Fused MLP without biases (fastgen/ops/mlp.py): h_0 = x [M, K], h_l = act(h_{l-1} W_lᵀ) for
  // the hidden layers (weights[0 .. n-2], one width H), y = out_act(h_{n-1} W_{n-1}ᵀ) [M, O];
  // act 0 None / 1 ReLU, out_act 0 None / 1 ReLU / 2 Sigmoid. Returns (y, hidden: the n-1
  // hidden layers' outputs [M, H] for the backward; [0, H] each unless save_hidden).
  m.def("mlp_fwd(Tensor x, Tensor[] weights, int activation, int output_activation,"
        " bool save_hidden) -> (Tensor, Tensor[])");
  // (grad_x (empty unless need_x), grad_weights) of mlp_fwd, from its y and hidden.
  m.def(
      "mlp_bwd(Tensor grad_y, Tensor x, Tensor[] weights, Tensor y, Tensor[] hidden,"
      " int activation,"
      " int output_activation, bool need_x) -> (Tensor, Tensor[])");
  // loss = mean((y − target)²) of y = mlp_fwd's output, target [M, O], with y and — when
  // need_grad — the gradients of loss to x (empty unless need_x) and the weights, computed tile
  // by tile in the same pass (nothing of the forward is kept). Loss accumulated in float64.
  // x may be planar, [G, M, F] for the [M, G * F] matrix (hashgrid_fwd_planar's output);
  // grad_x comes in x's layout.
  m.def(
      "mlp_mse(Tensor x, Tensor[] weights, Tensor target, int activation, int output_activation,"
      " bool need_grad, bool need_x) -> (Tensor, Tensor, Tensor, Tensor[])");
  // Ray-box slab test (fastgen/ops/raymarch.py): rays_o, rays_d [N, 3], aabbs [M, 6] (lo, hi)
  // -> (t_near [N, M], t_far [N, M], hit [N, M] bool: t_far > t_near).
  m.def("ray_aabb_intersect(Tensor rays_o, Tensor rays_d, Tensor aabbs) -> (Tensor, Tensor, Tensor)");
  // Occupancy-grid marching (csrc/common/raymarch.h): rays over [t_min, t_max) against uint8
  // bits [L, res, res, res] with level boxes float32 [L, 6]; steps clamp(t·cone, step, inf),
  // empty cells skipped. Returns packed (ray_indices int64, t_starts, t_ends), sorted by ray.
  m.def(
      "occgrid_march(Tensor rays_o, Tensor rays_d, Tensor t_min, Tensor t_max, Tensor bits,"
      " Tensor boxes, float step, float cone) -> (Tensor, Tensor, Tensor)");
  // Fused volume rendering over packed samples (fastgen/ops/volrend.py; math in
  // fastgen/reference/volrend.py): ray r owns samples [starts[r], starts[r] + counts[r]).
  // Returns (color [R, C], opacity [R], depth [R], weights [n], transmittance [n]); eps > 0 stops a
  // ray at the first T < eps (that sample on: weight 0, transmittance 0).
  m.def(
      "volrend_fwd(Tensor sigmas, Tensor rgbs, Tensor t_starts, Tensor t_ends, Tensor starts,"
      " Tensor counts, float eps) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Closed-form backward: (grad_sigmas [n], grad_rgbs [n, C]) from the upstream gradients of
  // color, opacity, depth and (optional) weights and transmittance.
  m.def(
      "volrend_bwd(Tensor grad_color, Tensor grad_opacity, Tensor grad_depth,"
      " Tensor? grad_weights, Tensor? grad_trans, Tensor rgbs, Tensor t_starts, Tensor t_ends,"
      " Tensor starts, Tensor counts, Tensor weights, Tensor trans, float eps)"
      " -> (Tensor, Tensor)");
  // Fused diffusion-sampler step (fastgen/ops/sampler.py; math in fastgen/reference/sampler.py):
  // m = u + s(c - u) when uncond u is given; x0 = clip(p_x x + p_m m + p_z z);
  // out = c_x x + c_0 x0 + c_m m + c_1 h1 + c_2 h2 + c_z z. coeffs: [s, p_x, p_m, p_z, c_x, c_0,
  // c_m, c_1, c_2, c_z]. All tensors contiguous, of sample's shape and dtype; computed in float32
  // (float64 for float64). Returns (out, x0), x0 empty ([0]) unless want_x0.
  m.def(
      "sampler_step(Tensor sample, Tensor model_output, Tensor? uncond, Tensor? hist1,"
      " Tensor? hist2, Tensor? noise, float[] coeffs, float? clip, bool want_x0)"
      " -> (Tensor, Tensor)");
  // torch.randn's normals, bit for bit, into a contiguous float32/float16/bfloat16 CPU tensor of
  // at least 16 elements, advancing the CPU generator (the default one when None) as torch.randn
  // would (fastgen/ops/randn.py). variant: 0 = 8-lane Cephes log/sincos (torch's AVX2 kernels),
  // 1 = the C library's logf/cosf/sinf (its other CPU kernels).
  m.def("randn_(Tensor(a!) out, Generator? generator, int variant) -> ()");
}

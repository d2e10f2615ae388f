"""Sample arguments for ``torch.library.opcheck``, for every op of the ``fastgen`` namespace.

tests/test_opcheck.py walks the namespace and fails for any op missing here, so a new op cannot
skip opcheck. Each entry: qualified op name -> (registry op, backend, sample factory). The factory
takes a device and returns a list of argument tuples; tensors that should get gradients have
requires_grad set (opcheck then also checks the autograd registration).
"""

from __future__ import annotations

from typing import Callable

import torch

from .inputs import make_tensor

__all__ = ["OPCHECK_SAMPLES"]


def _bias_act_fwd_samples(device) -> list[tuple]:
    def x(shape, layout="contiguous", dtype=torch.float32):
        return make_tensor(shape, dtype, device, layout=layout, requires_grad=True)

    def b(n, dtype=torch.float32):
        return make_tensor((n,), dtype, device, requires_grad=True)

    return [
        (x((2, 5, 3, 4)), b(5), 1, "lrelu", 0.2, 1.4142135623730951, 1.5),
        (x((2, 5, 3, 4), "channels_last"), b(5), 1, "swish", 0.0, 1.0, None),
        (x((7, 9), "strided"), None, 1, "tanh", 0.0, 2.0, None),
        (x((3, 7, 9), "permuted_strided"), b(7), 1, "relu", 0.0, 1.0, None),
        (x((6, 11)), b(11), 1, "gelu", 0.0, 1.0, 0.5),
        (x((3, 4), dtype=torch.float64), b(4, torch.float64), 1, "elu", 0.0, 1.0, None),
        (x((4, 6), dtype=torch.float16), b(6, torch.float16), 1, "sigmoid", 0.0, 1.0, None),
        (x((2, 6, 5), "transposed", torch.bfloat16), b(6, torch.bfloat16), 1, "softplus", 0.0,
         1.0, 2.0),
        (x((0, 3)), b(3), 1, "selu", 0.0, 1.0, None),
    ]


def _bias_act_bwd_samples(device) -> list[tuple]:
    out = []
    for x, b, dim, act, alpha, gain, clamp in _bias_act_fwd_samples(device):
        gy = make_tensor(x.shape, x.dtype, device, requires_grad=True)
        out.append((gy, x, b, dim, act, alpha, gain, clamp))
    return out


def _attention_fwd_samples(device) -> list[tuple]:
    def qkv(b, lq, lk, hq, hkv, d, dv, dtype=torch.float32, varlen=False):
        shapes = [(b, lq, hq, d), (b, lk, hkv, d), (b, lk, hkv, dv)]
        ts = [make_tensor(s, dtype, device) for s in shapes]
        # [B, H, L, D] views of [B, L, H, D] memory, as fastgen.ops.flash_attention passes them.
        return [t.transpose(1, 2).requires_grad_() for t in ts]

    def cu(*lens):
        return torch.tensor((0,) + lens, device=device).cumsum(0).to(torch.int32)

    q, k, v = qkv(2, 5, 7, 4, 2, 16, 16)
    mask_b = torch.rand(2, 1, 5, 7, device=device) > 0.3
    mask_f = make_tensor((1, 4, 5, 7), torch.float32, device)
    s = 0.25
    q16, k16, v16 = qkv(1, 6, 9, 2, 1, 40, 24, torch.float16)
    qv, kv, vv = qkv(1, 9, 11, 2, 2, 16, 16)
    return [
        (q, k, v, None, None, None, 5, 7, s, -1, -1, False, 0.0),
        (q, k, v, None, None, None, 5, 7, s, 2, 0, True, 3.0),
        (q, k, v, mask_b, None, None, 5, 7, s, -1, -1, False, 0.0),
        (q, k, v, mask_f, None, None, 5, 7, s, -1, 0, False, 0.0),
        (q16, k16, v16, None, None, None, 6, 9, 0.2, -1, 0, True, 0.0),
        (qv, kv, vv, None, cu(4, 0, 5), cu(3, 2, 6), 5, 6, s, -1, 0, True, 0.0),
    ]


def _attention_bwd_samples(device) -> list[tuple]:
    from ..reference.attention import attention

    out = []
    for q, k, v, mask, cu_q, cu_k, *cfg in _attention_fwd_samples(device):
        scale, left, right, bottom_right, softcap = cfg[2:]
        with torch.no_grad():
            o, lse = attention(q, k, v, mask, cu_q, cu_k, scale, left, right, bottom_right,
                               softcap)
        do = make_tensor(o.shape, o.dtype, device)
        out.append((do, q.detach(), k.detach(), v.detach(), o, lse, mask, cu_q, cu_k, *cfg))
    return out


def _softcap_probs_samples(device) -> list[tuple]:
    out = []
    for dtype, (r, n), window in ((torch.float32, (12, 37), (0, 5, 4, 3, -1, 0)),
                                  (torch.float64, (8, 16), (3, 0, 8, 0, 2, 2)),
                                  (torch.float32, (6, 9), (0, 0, 6, 0, -1, -1))):
        s = make_tensor((r, n), dtype, device)
        out.append((s, torch.zeros(r, dtype=dtype, device=device), 7.5, *window))
    return out


def _softcap_probs_bwd_samples(device) -> list[tuple]:
    out = []
    for s, _rowsum, cap, *window in _softcap_probs_samples(device):
        r = s.shape[0]
        out.append((s, make_tensor(s.shape, s.dtype, device),
                    make_tensor((r,), s.dtype, device, offset=8.0),
                    make_tensor((r,), s.dtype, device), cap, *window))
    return out


def _hashgrid_configs(device) -> list[tuple]:
    """(x, params, offsets, scales, F, interpolation, use_hash): dense + hashed levels, 2-4 dims,
    every interpolation, float32 and float64, an empty batch."""
    from ..ops.hashgrid import _op_args, config

    out = []
    for D, F, interp, gtype, dtype, n in ((3, 2, "Linear", "Hash", torch.float32, 37),
                                          (2, 1, "Smoothstep", "Hash", torch.float64, 9),
                                          (4, 4, "Nearest", "Dense", torch.float32, 5),
                                          (3, 8, "Linear", "Tiled", torch.float32, 0)):
        cfg = config(D, 3, F, 7, 3, 1.8, interp, gtype)
        x = torch.rand(n, D, dtype=dtype, device=device).requires_grad_()
        params = make_tensor((cfg.n_params,), dtype, device, requires_grad=True)
        out.append((x, params, *_op_args(cfg)))
    return out


def _hashgrid_bwd_samples(device) -> list[tuple]:
    """hashgrid_bwd on each config with each gradient asked for, grad_out point-major, and
    planar [L, N, F] (hashgrid_fwd_planar's) on the CPU."""
    out = []
    for x, params, offsets, scales, F, interp, use_hash in _hashgrid_configs(device):
        g = make_tensor((x.shape[0], len(scales) * F), params.dtype, device)
        planes = make_tensor((len(scales), x.shape[0], F), params.dtype, device)
        for need_p, need_x in ((True, True), (True, False), (False, True)):
            for grad in (g, planes) if device == "cpu" else (g,):
                out.append((grad, x.detach(), params.detach(), offsets, scales, F, interp,
                            use_hash, need_p, need_x))
    return out


def _hashgrid_corners_samples(device) -> list[tuple]:
    return [(x.detach(), offsets, scales, level, interp, use_hash)
            for x, _p, offsets, scales, _F, interp, use_hash in _hashgrid_configs(device)
            for level in (0, len(scales) - 1)]


def _sampler_step_samples(device) -> list[tuple]:
    """(x, m, u, h1, h2, z, coeffs, clip, want_x0): every optional input on and off, four dtypes,
    an odd size and an empty tensor."""
    def t(shape, dtype):
        return make_tensor(shape, dtype, device)

    k = [7.5, 1.2, -0.8, 0.1, 0.9, 0.3, -0.2, 0.5, -0.25, 0.05]
    out = []
    for shape, dtype, flags in (((2, 4, 5, 3), torch.float32, (1, 1, 1, 1)),
                                ((3, 7), torch.float16, (0, 1, 0, 1)),
                                ((1, 2, 9), torch.bfloat16, (1, 0, 0, 0)),
                                ((5,), torch.float64, (0, 1, 1, 1)),
                                ((0, 4), torch.float32, (1, 1, 1, 1))):
        x, m = t(shape, dtype), t(shape, dtype)
        opt = [t(shape, dtype) if f else None for f in flags]
        out.append((x, m, *opt, k, 1.0 if flags[0] else None, bool(flags[3])))
    return out


def _randn_samples(device) -> list[tuple]:
    """(out, generator, variant): float32 with a partial block, bfloat16, float16 past an MT19937
    block (the default generator is covered by tests/ops/test_randn.py: opcheck would advance
    it)."""
    import sys

    variant = sys.modules["fastgen.ops.randn"]._variant()
    out = []
    for shape, dtype, gen in (((3, 37), torch.float32, torch.Generator().manual_seed(3)),
                              ((2, 16), torch.bfloat16, torch.Generator().manual_seed(4)),
                              ((650,), torch.float16, torch.Generator().manual_seed(5))):
        out.append((torch.empty(shape, dtype=dtype, device=device), gen, variant))
    return out


def _sample_tokens_samples(device) -> list[tuple]:
    """(x, u, temperature, top_k, top_p, min_p): plain, filtered, per-row mixed, empty."""
    out = []
    for b, v, dtype, t, k, p, mp in ((3, 17, torch.float32, 1.0, 17, 1.0, 0.0),
                                     (4, 40, torch.float32, 0.7, 5, 0.9, 0.05),
                                     (2, 9, torch.float16, 0.0, 3, 0.5, 0.0),
                                     (0, 8, torch.float32, 1.0, 8, 1.0, 0.0)):
        def row(value, dt, b=b):
            return torch.full((b,), value, dtype=dt, device=device)

        out.append((make_tensor((b, v), dtype, device), torch.rand(b, device=device),
                    row(t, torch.float32), row(k, torch.int64), row(p, torch.float32),
                    row(mp, torch.float32)))
    return out


def _decode_samples(device) -> list[tuple]:
    """(q, k, v, seqlens, table, scale, softcap, left, right, splits): GQA contiguous, paged with
    a window and softcap, split keys, float16, an empty batch."""
    def t(*shape, dtype=torch.float32):
        return make_tensor(shape, dtype, device)

    def lens(*n):
        return torch.tensor(n, dtype=torch.int32, device=device)

    table = torch.tensor([[2, 0], [1, 3]], dtype=torch.int32, device=device)
    return [
        (t(2, 4, 1, 16), t(2, 2, 9, 16), t(2, 2, 9, 8), lens(9, 4), None, 0.25, 0.0, -1, 0, 1),
        (t(2, 2, 2, 16), t(4, 1, 4, 16), t(4, 1, 4, 16), lens(7, 3), table, 0.3, 4.0, 3, 0, 1),
        (t(1, 2, 1, 16), t(1, 2, 70, 16), t(1, 2, 70, 16), lens(70), None, 0.25, 0.0, -1, 0, 3),
        (t(1, 2, 1, 16, dtype=torch.float16), t(1, 1, 5, 16, dtype=torch.float16),
         t(1, 1, 5, 16, dtype=torch.float16), lens(5), None, 0.25, 0.0, -1, 0, 1),
        (t(0, 2, 1, 16), t(0, 2, 5, 16), t(0, 2, 5, 16), lens(), None, 0.25, 0.0, -1, 0, 1),
    ]


def _decode_linear_samples(device) -> list[tuple]:
    """(x, weight, bias): one and eight rows, bias or not, float64, an empty batch."""
    def t(*shape, dtype=torch.float32):
        return make_tensor(shape, dtype, device)

    return [(t(1, 33), t(7, 33), None), (t(8, 20), t(5, 20), t(5)),
            (t(3, 9, dtype=torch.float64), t(4, 9, dtype=torch.float64), None),
            (t(0, 6), t(3, 6), t(3))]


def _mlp_fwd_samples(device) -> list[tuple]:
    """(x, weights, activation, output_activation, save_hidden): one to three hidden layers, odd
    widths (padding), ReLU / None / Sigmoid, float64, rows past a tile, no rows, and an inference
    call that keeps no hidden activations."""
    def t(*shape, dtype=torch.float32):
        return make_tensor(shape, dtype, device, requires_grad=True)

    d = torch.float64
    plain = lambda *shape: make_tensor(shape, torch.float32, device)  # noqa: E731
    return [(t(20, 5), [t(8, 5), t(2, 8)], 1, 0, True),
            (t(131, 3), [t(16, 3), t(16, 16), t(16, 16), t(7, 16)], 1, 2, True),
            (t(9, 4, dtype=d), [t(6, 4, dtype=d), t(6, 6, dtype=d), t(1, 6, dtype=d)], 0, 1, True),
            (t(0, 4), [t(8, 4), t(3, 8)], 1, 0, True),
            (plain(17, 6), [plain(16, 6), plain(16, 16), plain(2, 16)], 1, 0, False)]


def _mlp_bwd_samples(device) -> list[tuple]:
    """mlp_bwd's arguments from mlp_fwd on its samples, with and without the input gradient."""
    out = []
    for i, (x, ws, act, out_act, _) in enumerate(_mlp_fwd_samples(device)):
        x, ws = x.detach(), [w.detach() for w in ws]
        y, hidden = torch.ops.fastgen.mlp_fwd(x, ws, act, out_act, True)
        out.append((torch.randn_like(y), x, ws, y, hidden, act, out_act, i % 2 == 0))
    return out


def _mlp_mse_samples(device) -> list[tuple]:
    """(x, weights, target, activation, output_activation, need_grad, need_x): mlp_fwd's samples
    with a target, gradients on and off, and x planar [G, M, F] (odd F, rows past a tile). Not
    the empty batch: its loss is NaN (a mean of nothing), which opcheck's comparisons reject;
    tests/ops/test_mlp.py covers it."""
    out = []
    for i, (x, ws, act, out_act, _) in enumerate(_mlp_fwd_samples(device)):
        if x.shape[0] == 0:
            continue
        target = make_tensor((x.shape[0], ws[-1].shape[0]), x.dtype, device)
        out.append((x.detach(), [w.detach() for w in ws], target, act, out_act, i != 4, i % 2 == 0))
    for G, M, F in ((3, 130, 2), (2, 7, 3)):
        x = make_tensor((G, M, F), torch.float32, device)
        ws = [make_tensor(s, torch.float32, device) for s in ((16, G * F), (16, 16), (3, 16))]
        out.append((x, ws, make_tensor((M, 3), torch.float32, device), 1, 0, True, True))
    # inputs that require grad: the autograd registration (gradients handed over, target's)
    x = make_tensor((3, 20, 2), torch.float32, device, requires_grad=True)
    ws = [make_tensor(s, torch.float32, device, requires_grad=True) for s in ((8, 6), (2, 8))]
    out.append((x, ws, make_tensor((20, 2), torch.float32, device, requires_grad=True), 1, 2,
                True, True))
    out.append((make_tensor((20, 6), torch.float32, device, requires_grad=True), ws,
                make_tensor((20, 2), torch.float32, device), 0, 0, True, True))
    return out


def _rms_norm_samples(device) -> list[tuple]:
    """(x, weight, eps): a decode row, odd widths, a transposed x, bfloat16, float64, no rows."""
    def t(*shape, dtype=torch.float32):
        return make_tensor(shape, dtype, device)

    return [(t(1, 64), t(64), 1e-6), (t(5, 33), t(33), 1e-5),
            (make_tensor((7, 16), torch.float32, device, layout="transposed"), t(16), 1e-6),
            (t(3, 16, dtype=torch.bfloat16), t(16, dtype=torch.bfloat16), 1e-6),
            (t(2, 9, dtype=torch.float64), t(9, dtype=torch.float64), 0.0), (t(0, 8), t(8), 1e-6)]


def _rotary_samples(device) -> list[tuple]:
    """(q, k, cos, sin): GQA decode, a prefill chunk, float16, no tokens."""
    def t(*shape, dtype=torch.float32):
        return make_tensor(shape, dtype, device)

    return [(t(2, 1, 4, 16), t(2, 1, 2, 16), t(2, 1, 16), t(2, 1, 16)),
            (t(1, 5, 3, 10), t(1, 5, 3, 10), t(1, 5, 10), t(1, 5, 10)),
            (t(1, 2, 2, 8, dtype=torch.float16), t(1, 2, 1, 8, dtype=torch.float16),
             t(1, 2, 8, dtype=torch.float16), t(1, 2, 8, dtype=torch.float16)),
            (t(2, 0, 2, 8), t(2, 0, 1, 8), t(2, 0, 8), t(2, 0, 8))]


def _volrend_fwd_samples(device) -> list[tuple]:
    """(sigmas, rgbs, t_starts, t_ends, starts, counts, eps): packed with an empty ray, early
    termination on, float64, no samples."""
    out = []
    for counts, c, dtype, eps in (([3, 0, 4], 3, torch.float32, 0.0),
                                  ([5, 2], 1, torch.float64, 0.05),
                                  ([0, 0], 3, torch.float32, 0.0)):
        n = sum(counts)
        cnt = torch.tensor(counts, dtype=torch.int64, device=device)
        ts = torch.arange(n, dtype=dtype, device=device) * 0.3
        sig = torch.rand(n, dtype=dtype, device=device).mul(4).requires_grad_()
        rgb = torch.rand(n, c, dtype=dtype, device=device).requires_grad_()
        out.append((sig, rgb, ts, ts + 0.3, cnt.cumsum(0) - cnt, cnt, eps))
    return out


def _volrend_bwd_samples(device) -> list[tuple]:
    out = []
    for sig, rgb, ts, te, starts, counts, eps in _volrend_fwd_samples(device):
        _, _, _, w, trans = torch.ops.fastgen.volrend_fwd(sig.detach(), rgb.detach(), ts, te,
                                                          starts, counts, eps)
        r = starts.shape[0]
        g = [torch.rand(r, rgb.shape[1], dtype=w.dtype, device=device),
             torch.rand(r, dtype=w.dtype, device=device),
             torch.rand(r, dtype=w.dtype, device=device)]
        out.append((*g, torch.rand_like(w), None, rgb.detach(), ts, te, starts, counts, w, trans,
                    eps))
    return out


def _ray_aabb_samples(device) -> list[tuple]:
    """(rays_o, rays_d, aabbs): rays through, beside and parallel to two boxes; float64; none."""
    o = torch.tensor([[-1.0, 0.5, 0.5], [-1.0, 3.0, 0.5], [0.5, 0.5, -2.0]], device=device)
    d = torch.tensor([[1.0, 0.1, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], device=device)
    boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1], [0.2, 0.2, 0.2, 0.6, 0.6, 0.6]], device=device)
    return [(o, d, boxes), (o.double(), d.double(), boxes.double()), (o[:0], d[:0], boxes)]


def _occgrid_march_samples(device) -> list[tuple]:
    """(rays_o, rays_d, t_min, t_max, bits, boxes, step, cone): two levels, a cone angle."""
    g = torch.Generator().manual_seed(0)
    o = torch.tensor([[-1.0, 0.5, 0.5], [-1.0, 0.3, 0.6], [0.5, -1.0, 0.5]], device=device)
    d = torch.tensor([[1.0, 0.05, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=device)
    bits = (torch.rand(2, 4, 4, 4, generator=g) < 0.5).to(torch.uint8).to(device)
    boxes = torch.tensor([[0.0, 0, 0, 1, 1, 1], [-0.5, -0.5, -0.5, 1.5, 1.5, 1.5]],
                         device=device)
    t0 = torch.full((3,), 0.5, device=device)
    t1 = torch.full((3,), 2.5, device=device)
    return [(o, d, t0, t1, bits, boxes, 0.05, 0.0), (o, d, t0, t1, bits, boxes, 0.02, 0.1)]


OPCHECK_SAMPLES: dict[str, tuple[str, str, Callable[[str], list[tuple]]]] = {
    "fastgen::bias_act": ("bias_act", "cpu", _bias_act_fwd_samples),
    "fastgen::bias_act_bwd": ("bias_act", "cpu", _bias_act_bwd_samples),
    "fastgen::bias_act_triton": ("bias_act", "triton", _bias_act_fwd_samples),
    "fastgen::bias_act_bwd_triton": ("bias_act", "triton", _bias_act_bwd_samples),
    "fastgen::attention_fwd_cpu": ("attention", "cpu", _attention_fwd_samples),
    "fastgen::softcap_probs_": ("attention", "cpu", _softcap_probs_samples),
    "fastgen::softcap_probs_bwd_": ("attention", "cpu", _softcap_probs_bwd_samples),
    "fastgen::attention_bwd_cpu": ("attention", "cpu", _attention_bwd_samples),
    "fastgen::attention_fwd_triton": ("attention", "triton", _attention_fwd_samples),
    "fastgen::attention_bwd_triton": ("attention", "triton", _attention_bwd_samples),
    "fastgen::hashgrid_fwd": ("hashgrid", "cpu", _hashgrid_configs),
    "fastgen::hashgrid_fwd_planar": ("hashgrid", "cpu", _hashgrid_configs),
    "fastgen::hashgrid_bwd": ("hashgrid", "cpu", _hashgrid_bwd_samples),
    "fastgen::hashgrid_corners": ("hashgrid", "cpu", _hashgrid_corners_samples),
    "fastgen::sampler_step": ("sampler_step", "cpu", _sampler_step_samples),
    "fastgen::sampler_step_triton": ("sampler_step", "triton", _sampler_step_samples),
    "fastgen::randn_": ("randn", "cpu", _randn_samples),
    "fastgen::decode_attention": ("decode_attention", "cpu", _decode_samples),
    "fastgen::decode_attention_triton": ("decode_attention", "triton", _decode_samples),
    "fastgen::decode_linear": ("decode_linear", "cpu", _decode_linear_samples),
    "fastgen::mlp_fwd": ("fused_mlp", "cpu", _mlp_fwd_samples),
    "fastgen::mlp_bwd": ("fused_mlp", "cpu", _mlp_bwd_samples),
    "fastgen::mlp_mse": ("fused_mlp_mse", "cpu", _mlp_mse_samples),
    "fastgen::rms_norm": ("rms_norm", "cpu", _rms_norm_samples),
    "fastgen::rms_norm_triton": ("rms_norm", "triton", _rms_norm_samples),
    "fastgen::rotary": ("apply_rotary", "cpu", _rotary_samples),
    "fastgen::rotary_triton": ("apply_rotary", "triton", _rotary_samples),
    "fastgen::volrend_fwd": ("volrend", "cpu", _volrend_fwd_samples),
    "fastgen::volrend_bwd": ("volrend", "cpu", _volrend_bwd_samples),
    "fastgen::ray_aabb_intersect": ("ray_aabb_intersect", "cpu", _ray_aabb_samples),
    "fastgen::occgrid_march": ("march", "cpu", _occgrid_march_samples),
    "fastgen::sample_tokens": ("sample", "cpu", _sample_tokens_samples),
    "fastgen::sample_tokens_triton": ("sample", "triton", _sample_tokens_samples),
}

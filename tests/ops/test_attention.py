"""Tests of fastgen.ops.flash_attention and fastgen.ops.scaled_dot_product_attention on every
backend that runs here (cpu; triton under the interpreter, so its shapes stay small; cuda when
present), against fastgen.reference.attention in float64 and against torch's own SDPA."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen.ops import flash_attention, scaled_dot_product_attention
from fastgen.reference import attention as R
from fastgen.registry import BackendError
from fastgen.testing import (assert_close, available_backends, check_against_reference, devices,
                             make_tensor)
from fastgen.testing.markers import requires_cuda

CASES = [(dev, be) for dev in devices() for be in available_backends("attention", dev)
         if be != "reference"]
LOW = [torch.float16, torch.bfloat16]


def _interpreted(device, backend):
    return backend == "triton" and device == "cpu"


def _qkv(b, lq, lk, hq, hkv, d, dv, dtype, device, gen, varlen=False, layout="contiguous"):
    if varlen:
        shapes = [(lq, hq, d), (lk, hkv, d), (lk, hkv, dv)]
    else:
        shapes = [(b, lq, hq, d), (b, lk, hkv, d), (b, lk, hkv, dv)]
    return [make_tensor(s, dtype, device, generator=gen, layout=layout) for s in shapes]


def _fa(q, k, v, *, backend, **kw):
    return flash_attention(q, k, v, backend=backend, **kw)


def _lowp_lse(out, lse, dtype):
    # lse of float16/bfloat16 inputs is judged like the outputs, by the error ratio against
    # PyTorch's own same-dtype lse: its error comes from the low-precision scores, not from fp32.
    return out, (lse.to(dtype) if dtype in LOW else lse)


def _fa_lse(q, k, v, *, backend, **kw):
    return _lowp_lse(*flash_attention(q, k, v, backend=backend, return_lse=True, **kw), q.dtype)


def _ref_lse(q, k, v, **kw):
    return _lowp_lse(*R.flash_attention(q, k, v, **kw), q.dtype)


def _ref_out(q, k, v, **kw):
    return R.flash_attention(q, k, v, **kw)[0]


def _check_fa(device, backend, q, k, v, gen, **kw):
    """Outputs and lse, then gradients of q, k, v, against the float64 reference."""
    check_against_reference(_fa_lse, _ref_lse, (q, k, v), kw, op="attention",
                            backend=backend, generator=gen)
    return check_against_reference(_fa, _ref_out, (q, k, v), kw, op="attention",
                                   backend=backend, grad_argnums=(0, 1, 2), generator=gen)


# (label, B, Lq, Lk, Hq, Hkv, D, Dv, kwargs)
FEATURES = [
    ("plain", 2, 17, 17, 2, 2, 64, 64, {}),
    ("causal", 1, 33, 33, 2, 2, 32, 32, dict(causal=True)),
    ("causal q<k", 1, 17, 40, 2, 2, 32, 32, dict(causal=True)),
    ("causal q>k", 1, 40, 17, 2, 2, 32, 32, dict(causal=True)),
    ("gqa 3", 1, 19, 23, 6, 2, 40, 40, dict(causal=True)),
    ("mqa 8", 1, 9, 37, 8, 1, 16, 16, {}),
    ("window", 2, 45, 45, 2, 1, 32, 32, dict(window=(5, 3))),
    ("window causal", 1, 50, 64, 2, 2, 32, 32, dict(window=(8, 0))),
    ("window right only", 1, 20, 30, 2, 2, 16, 16, dict(window=(-1, 2))),
    ("softcap", 1, 21, 34, 2, 2, 80, 80, dict(softcap=2.5, causal=True)),
    ("softcap above the no-max bound", 1, 19, 26, 2, 1, 32, 32,
     dict(softcap=60.0, window=(6, 6), scale=2.0)),
    ("scale", 1, 13, 15, 1, 1, 96, 96, dict(scale=0.3)),
    ("dv != d", 1, 12, 20, 2, 1, 48, 24, {}),
    ("L = 1", 2, 1, 1, 2, 2, 16, 16, dict(causal=True)),
    ("decode", 2, 1, 77, 4, 2, 64, 64, dict(causal=True)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("label,b,lq,lk,hq,hkv,d,dv,kw", FEATURES, ids=[f[0] for f in FEATURES])
@pytest.mark.parametrize("device,backend", CASES)
def test_features(device, backend, label, b, lq, lk, hq, hkv, d, dv, kw, dtype, gen):
    q, k, v = _qkv(b, lq, lk, hq, hkv, d, dv, dtype, device, gen)
    _check_fa(device, backend, q, k, v, gen, **kw)


@pytest.mark.parametrize("d", [16, 40, 64, 80, 128, 160, 192, 256])
@pytest.mark.parametrize("device,backend", CASES)
def test_head_dims(device, backend, d, gen):
    q, k, v = _qkv(1, 9, 14, 2, 1, d, d, torch.bfloat16, device, gen)
    _check_fa(device, backend, q, k, v, gen, causal=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kw", [dict(causal=True), dict(window=(100, 0)), dict(softcap=30.0),
                                {}], ids=["causal", "window", "softcap", "plain"])
@pytest.mark.parametrize("device,backend", CASES)
def test_long_sequences(device, backend, kw, dtype, gen):
    if _interpreted(device, backend):
        pytest.skip("long sequences are too slow for the Triton interpreter")
    q, k, v = _qkv(1, 1100, 1300, 4, 1, 64, 64, dtype, device, gen)
    _check_fa(device, backend, q, k, v, gen, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kw", [dict(causal=True), {}, dict(window=(4, 1), softcap=5.0)],
                         ids=["causal", "plain", "window softcap"])
@pytest.mark.parametrize("device,backend", CASES)
def test_varlen(device, backend, kw, dtype, gen):
    lens_q = [1, 5, 300, 0, 7]
    lens_k = [3, 5, 300, 4, 2]
    if _interpreted(device, backend):
        lens_q[2] = lens_k[2] = 70
    cu_q = torch.tensor([0] + lens_q, device=device).cumsum(0).to(torch.int32)
    cu_k = torch.tensor([0] + lens_k, device=device).cumsum(0).to(torch.int32)
    q, k, v = _qkv(1, sum(lens_q), sum(lens_k), 4, 2, 32, 32, dtype, device, gen, varlen=True)
    _check_fa(device, backend, q, k, v, gen, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, **kw)


def test_varlen_equals_separate_calls(gen):
    lens = [3, 9, 1]
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    q, k, v = _qkv(1, 13, 13, 2, 2, 16, 16, torch.float64, "cpu", gen, varlen=True)
    out = flash_attention(q, k, v, causal=True, cu_seqlens_q=cu, cu_seqlens_k=cu, backend="cpu")
    for s in range(3):
        a, e = cu[s], cu[s + 1]
        one = flash_attention(q[None, a:e], k[None, a:e], v[None, a:e], causal=True,
                              backend="cpu")[0]
        assert_close(out[a:e], one, atol=1e-12, rtol=1e-12)


# --- the SDPA drop-in: exactly torch's semantics ------------------------------------------------

SDPA_CASES = [
    ("4-d", (2, 3, 17, 16), (2, 3, 23, 16), 16, {}),
    ("causal L<S", (1, 2, 9, 32), (1, 2, 20, 32), 32, dict(is_causal=True)),
    ("causal L>S", (1, 2, 20, 32), (1, 2, 9, 32), 32, dict(is_causal=True)),
    ("extra batch dims", (2, 2, 3, 7, 16), (2, 2, 3, 11, 16), 24, {}),
    ("3-d", (3, 10, 16), (3, 12, 16), 16, dict(scale=0.5)),
    ("gqa", (2, 6, 11, 16), (2, 2, 11, 16), 16, dict(enable_gqa=True, is_causal=True)),
]


@pytest.mark.parametrize("label,qs,ks,dv,kw", SDPA_CASES, ids=[c[0] for c in SDPA_CASES])
@pytest.mark.parametrize("device,backend", CASES)
def test_sdpa_matches_torch(device, backend, label, qs, ks, dv, kw, gen):
    q = make_tensor(qs, torch.float32, device, generator=gen, requires_grad=True)
    k = make_tensor(ks, torch.float32, device, generator=gen, requires_grad=True)
    v = make_tensor((*ks[:-1], dv), torch.float32, device, generator=gen, requires_grad=True)
    out = scaled_dot_product_attention(q, k, v, backend=backend, **kw)
    want = F.scaled_dot_product_attention(q, k, v, **kw)
    assert_close(out, want, atol=2e-6, rtol=1e-5)
    g = torch.randn(out.shape, generator=gen).to(device)
    for a, e in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(want, (q, k, v),
                                                                                  g)):
        assert_close(a, e, atol=1e-5, rtol=1e-5)


MASKS = ["bool [L, S]", "bool [B, 1, L, S] with empty rows", "float [1, H, L, S]",
         "float [B, 1, 1, S] key padding", "float with -inf rows"]


def _mask(kind, b, h, lq, lk, dtype, device, gen):
    if kind == "bool [L, S]":
        return (torch.rand(lq, lk, generator=gen) > 0.3).to(device)
    if kind == "bool [B, 1, L, S] with empty rows":
        m = torch.rand(b, 1, lq, lk, generator=gen) > 0.5
        m[:, :, 1] = False
        return m.to(device)
    if kind == "float [1, H, L, S]":
        return make_tensor((1, h, lq, lk), dtype, device, generator=gen)
    if kind == "float [B, 1, 1, S] key padding":
        m = torch.zeros(b, 1, 1, lk)
        m[0, ..., lk // 2:] = torch.finfo(dtype).min  # HF's finite "minus infinity"
        return m.to(device, dtype)
    m = make_tensor((b, h, lq, lk), dtype, device, generator=gen)
    m[:, :, 2] = float("-inf")
    return m


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("device,backend", CASES)
def test_masks(device, backend, kind, dtype, gen):
    b, h, lq, lk = 2, 3, 19, 37
    q, k, v = (make_tensor((b, h, n, 32), dtype, device, generator=gen) for n in (lq, lk, lk))
    mask = _mask(kind, b, h, lq, lk, dtype, device, gen)

    def fn(q, k, v, mask, backend):
        return scaled_dot_product_attention(q, k, v, mask, backend=backend)

    check_against_reference(fn, R.sdpa, (q, k, v, mask), op="attention", backend=backend,
                            grad_argnums=(0, 1, 2), generator=gen)
    with torch.no_grad():
        want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                              mask if mask.dtype == torch.bool else mask.float())
        got = fn(q, k, v, mask, backend).float()
    assert_close(got, want, atol=3e-3 if dtype == torch.float16 else 2e-6, rtol=1e-3)


def test_mask_gradient_runs_on_cpu_and_is_refused_by_triton(gen):
    q, k, v = (torch.randn(1, 2, 5, 16, generator=gen) for _ in range(3))
    mask = torch.randn(1, 2, 5, 5, generator=gen, requires_grad=True)
    out = scaled_dot_product_attention(q, k, v, mask, backend="cpu")
    (g,) = torch.autograd.grad(out.sum(), mask)
    (want,) = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, mask).sum(), mask)
    assert_close(g, want, atol=1e-6, rtol=1e-5)
    if "triton" in available_backends("attention", "cpu"):
        with pytest.raises(BackendError, match="attn_mask"):
            scaled_dot_product_attention(q, k, v, mask, backend="triton")


def test_dropout(gen):
    q, k, v = (torch.randn(2, 2, 16, 8, generator=gen) for _ in range(3))
    torch.manual_seed(7)
    got = scaled_dot_product_attention(q, k, v, dropout_p=0.3, backend="cpu")
    torch.manual_seed(7)
    want = F.scaled_dot_product_attention(q, k, v, dropout_p=0.3)
    assert_close(got, want, atol=0, rtol=0)
    assert not torch.equal(got, F.scaled_dot_product_attention(q, k, v))
    # The reference's dropout is unbiased: the mean over draws approaches the dropout-free output,
    # within 5 standard errors per element (a fixed atol failed ~1 run in 100 on one element).
    draws = torch.stack([scaled_dot_product_attention(q, k, v, dropout_p=0.3,
                                                      backend="reference") for _ in range(400)])
    err = (draws.mean(0) - F.scaled_dot_product_attention(q, k, v)).abs()
    assert bool((err <= 5 * draws.std(0) / 400 ** 0.5 + 1e-6).all()), float(err.max())
    if "triton" in available_backends("attention", "cpu"):
        with pytest.raises(BackendError, match="dropout"):
            scaled_dot_product_attention(q, k, v, dropout_p=0.1, backend="triton")


# --- robustness ----------------------------------------------------------------------------------

@pytest.mark.parametrize("device,backend", CASES)
def test_nan_poisoned_padding_is_never_read(device, backend, gen):
    """q, k, v live inside larger NaN-filled buffers (sequence and head-dim padding): a kernel
    that reads out of bounds returns NaN. Two runs must also agree bit for bit."""
    b, lq, lk, hq, hkv, d = 2, 21, 27, 4, 2, 40

    def padded(shape):
        buf = torch.full((shape[0], shape[1] + 5, shape[2], 64), float("nan"), device=device)
        view = buf[:, :shape[1], :, :shape[3]]
        view.copy_(make_tensor(shape, torch.float32, device, generator=gen))
        return view.requires_grad_()

    q, k, v = padded((b, lq, hq, d)), padded((b, lk, hkv, d)), padded((b, lk, hkv, d))
    runs = []
    for _ in range(2):
        out, lse = flash_attention(q, k, v, causal=True, window=(9, -1), return_lse=True,
                                   backend=backend)
        grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
        runs.append((out, lse, *grads))
    for t in runs[0]:
        assert not torch.isnan(t).any()
    for a, e in zip(*runs):
        assert torch.equal(a, e)
    clean = [t.detach().contiguous() for t in (q, k, v)]
    assert_close(runs[0][0], flash_attention(*clean, causal=True, window=(9, -1),
                                             backend=backend), atol=0, rtol=0)


@pytest.mark.parametrize("device,backend", CASES)
def test_backward_is_deterministic(device, backend, gen):
    q, k, v = _qkv(1, 40, 40, 4, 1, 32, 32, torch.float16, device, gen)
    for t in (q, k, v):
        t.requires_grad_()
    g = make_tensor((1, 40, 4, 32), torch.float16, device, generator=gen)
    first = torch.autograd.grad(flash_attention(q, k, v, causal=True, backend=backend),
                                (q, k, v), g)
    for _ in range(3):
        again = torch.autograd.grad(flash_attention(q, k, v, causal=True, backend=backend),
                                    (q, k, v), g)
        assert all(torch.equal(a, e) for a, e in zip(first, again))


@pytest.mark.parametrize("device,backend", CASES)
def test_layouts_and_output_strides(device, backend, gen):
    q, k, v = _qkv(2, 11, 13, 2, 2, 16, 16, torch.float32, device, gen, layout="strided")
    want = R.flash_attention(q.double(), k.double(), v.double())[0]
    out = flash_attention(q, k, v, backend=backend)
    assert out.shape == (2, 11, 2, 16) and out.is_contiguous()  # [B, L, H, D] memory
    assert_close(out, want, atol=1e-6, rtol=1e-5)
    qs, ks, vs = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D] views
    out = scaled_dot_product_attention(qs, ks, vs, backend=backend)
    assert_close(out, want.transpose(1, 2), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(return_lse=True), dict(window=(2, 1)),
                                dict(causal=True, window=(3, 0))])
def test_head_dim_with_a_stride(kw, gen):
    """q, k, v whose head dim is not unit-stride (every other element; D-major) on the CPU
    paths that call aten's flash kernels piece by piece (window, return_lse): those kernels
    assume a unit stride. Forward and gradients against the float64 reference."""
    qb, kb = (torch.randn(2, 9, 2, 32, generator=gen).requires_grad_() for _ in range(2))
    vb = torch.randn(2, 9, 16, 2, generator=gen).requires_grad_()
    q, k, v = qb[..., ::2], kb[..., ::2], vb.transpose(-1, -2)  # [B, L, H, 16]
    assert all(t.stride(-1) != 1 for t in (q, k, v))
    got = flash_attention(q, k, v, backend="cpu", **kw)
    ref = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = R.flash_attention(*ref, **{k_: v_ for k_, v_ in kw.items() if k_ != "return_lse"})
    if kw.get("return_lse"):
        assert_close(got[1], want[1].float(), atol=2e-6, rtol=1e-5)
        got = got[0]
    want = want[0]
    assert_close(got, want.float(), atol=2e-6, rtol=1e-5)
    g = torch.randn(got.shape, generator=gen)
    ga = torch.autograd.grad(got, (q, k, v), g)
    ge = torch.autograd.grad(want, ref, g.double())
    for a, e in zip(ga, ge):
        assert_close(a, e.float(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("device,backend", CASES)
def test_empty_inputs_and_rows(device, backend):
    z = torch.zeros(0, 4, 2, 16, device=device)
    assert flash_attention(z, z, z, backend=backend).shape == (0, 4, 2, 16)
    q = torch.randn(2, 3, 2, 16, device=device)
    kv = torch.zeros(2, 0, 2, 16, device=device)
    out, lse = flash_attention(q, kv, kv, return_lse=True, backend=backend)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isposinf(lse).all()
    # FlashAttention's example: Sq = 5, Sk = 2, causal bottom-right: rows 0-2 see nothing.
    q, k = torch.randn(1, 5, 1, 16, device=device), torch.randn(1, 2, 1, 16, device=device)
    for softcap in (0.0, 5.0):
        out, lse = flash_attention(q, k, k, causal=True, softcap=softcap, return_lse=True,
                                   backend=backend)
        assert torch.equal(out[0, :3], torch.zeros_like(out[0, :3]))
        assert torch.isposinf(lse[0, 0, :3]).all() and torch.isfinite(lse[0, 0, 3:]).all()


@pytest.mark.parametrize("device,backend", CASES)
def test_sdpa_zero_length_sequences(device, backend):
    for lq, lk in ((0, 7), (5, 0)):
        q, k = torch.randn(2, 4, lq, 8, device=device), torch.randn(2, 4, lk, 8, device=device)
        out = scaled_dot_product_attention(q, k, k, backend=backend)
        assert out.shape == (2, 4, lq, 8) and torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("device,backend", CASES)
def test_sdpa_broadcasts_batch_dims_and_casts_float_masks(device, backend, gen):
    q = make_tensor((1, 2, 3, 8), torch.float32, device, generator=gen)
    k = make_tensor((4, 2, 5, 8), torch.float32, device, generator=gen)
    mask = make_tensor((3, 5), torch.float64, device, generator=gen)
    out = scaled_dot_product_attention(q, k, k, mask, backend=backend)
    want = F.scaled_dot_product_attention(q, k, k, mask.float())
    assert out.shape == (4, 2, 3, 8)
    assert_close(out, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("device,backend", CASES)
def test_window_beyond_every_key_is_unbounded(device, backend, gen):
    q, k, v = _qkv(1, 7, 9, 2, 2, 16, 16, torch.float32, device, gen)
    want = flash_attention(q, k, v, causal=True, backend=backend)
    for window in ((2**63 - 1, 2**63 - 1), (2**70, 5), (16, 16)):
        got = flash_attention(q, k, v, causal=True, window=window, backend=backend)
        assert_close(got, want, atol=0, rtol=0)


def test_alignment_examples_from_the_flashattention_docs():
    rows = lambda m: ["".join("1" if x else "0" for x in r) for r in m.tolist()]  # noqa: E731
    assert rows(R.visible(2, 5, -1, 0, bottom_right=True)) == ["11110", "11111"]
    assert rows(R.visible(5, 2, -1, 0, bottom_right=True)) == ["00", "00", "00", "10", "11"]
    assert rows(R.visible(2, 5, -1, 0, bottom_right=False)) == ["10000", "11000"]
    assert torch.equal(R.visible(7, 7, -1, 0, True), R.visible(7, 7, -1, 0, False))


def test_reference_sdpa_matches_torch_in_float64(gen):
    q = torch.randn(2, 4, 9, 16, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 2, 13, 16, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 2, 13, 8, generator=gen, dtype=torch.float64)
    m = torch.rand(2, 1, 9, 13, generator=gen) > 0.4
    for kw in (dict(attn_mask=m), dict(is_causal=True), dict(scale=0.2)):
        assert_close(R.sdpa(q, k, v, enable_gqa=True, **kw),
                     F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw),
                     atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kw", [dict(softcap=4.0, causal=True), dict(softcap=9.0, window=(5, 2))])
def test_softcap_tile_kernel_matches_tensor_ops(monkeypatch, kw, gen):
    """csrc/cpu/attention.cpp's one-pass softcap tiles against the same math in tensor ops."""
    from fastgen.ops import _attention_blockwise as blockwise

    if not blockwise._fused_softcap():
        pytest.skip("extension not built")
    q, k, v = _qkv(2, 37, 45, 4, 2, 24, 24, torch.float32, "cpu", gen)
    for t in (q, k, v):
        t.requires_grad_()

    def run():
        out, lse = flash_attention(q, k, v, return_lse=True, backend="cpu", **kw)
        return (out, lse, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out)))

    fused = run()
    monkeypatch.setattr(blockwise, "_fused_softcap", lambda: False)
    for a, e in zip(fused, run()):
        assert_close(a, e, atol=2e-6, rtol=1e-5)


def test_gradcheck_float64_cpu(gen):
    q, k, v = _qkv(1, 6, 7, 4, 2, 8, 8, torch.float64, "cpu", gen)
    for t in (q, k, v):
        t.requires_grad_()
    f = lambda q, k, v: flash_attention(q, k, v, window=(3, 1), softcap=2.0,  # noqa: E731
                                        backend="cpu")
    assert torch.autograd.gradcheck(f, (q, k, v))
    mask = torch.randn(1, 1, 6, 7, dtype=torch.float64, generator=gen)
    f = lambda q, k, v: scaled_dot_product_attention(  # noqa: E731
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, enable_gqa=True,
        backend="cpu")
    assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.parametrize("device,backend", CASES)
def test_compile_fullgraph(device, backend, gen):
    q, k, v = _qkv(1, 12, 12, 2, 1, 16, 16, torch.float32, device, gen)
    for t in (q, k, v):
        t.requires_grad_()

    def f(q, k, v):
        return flash_attention(q, k, v, window=(4, 0), softcap=3.0, backend=backend) * 2

    torch._dynamo.reset()
    y_c, y_e = torch.compile(f, fullgraph=True)(q, k, v), f(q, k, v)
    assert_close(y_c, y_e, atol=0, rtol=0)
    for a, e in zip(torch.autograd.grad(y_c.sum(), (q, k, v)),
                    torch.autograd.grad(y_e.sum(), (q, k, v))):
        assert_close(a, e, atol=0, rtol=0)


# --- backend choice and bad input ----------------------------------------------------------------

def test_default_backend_on_cpu_is_cpu():
    q = torch.randn(1, 4, 2, 16)
    assert fastgen.registry.get("attention").select(
        "cpu", (q, q, q, None, None, None, 4, 4, 0.25, -1, -1, True, 0.0, 0.0, False)
    ).name == "cpu"


@requires_cuda
def test_default_backend_on_cuda_is_triton():
    q = torch.randn(1, 4, 2, 16, device="cuda", dtype=torch.float16)
    assert fastgen.registry.get("attention").select(
        "cuda", (q, q, q, None, None, None, 4, 4, 0.25, -1, -1, True, 0.0, 0.0, False)
    ).name == "triton"


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


CU = torch.tensor([0, 3, 5], dtype=torch.int32)
BAD = [
    (lambda: flash_attention(_t(1, 4, 2, 16), _t(1, 4, 2, 32), _t(1, 4, 2, 16)),
     ValueError, "same head dim"),
    (lambda: flash_attention(_t(1, 4, 3, 16), _t(1, 4, 2, 16), _t(1, 4, 2, 16)),
     ValueError, "divisible"),
    (lambda: flash_attention(_t(1, 4, 2, 16), _t(1, 4, 2, 16, dtype=torch.float16),
                             _t(1, 4, 2, 16)), TypeError, "share one dtype"),
    (lambda: flash_attention(_t(1, 4, 2, 320), _t(1, 4, 2, 320), _t(1, 4, 2, 320)),
     ValueError, "<= 256"),
    (lambda: flash_attention(_t(5, 2, 16), _t(5, 2, 16), _t(5, 2, 16), cu_seqlens_q=CU.long(),
                             cu_seqlens_k=CU), TypeError, "int32"),
    (lambda: flash_attention(_t(5, 2, 16), _t(5, 2, 16), _t(5, 2, 16),
                             cu_seqlens_q=torch.tensor([0, 4, 3, 5], dtype=torch.int32),
                             cu_seqlens_k=torch.tensor([0, 2, 3, 5], dtype=torch.int32)),
     ValueError, "never decrease"),
    (lambda: flash_attention(_t(5, 2, 16), _t(5, 2, 16), _t(5, 2, 16), cu_seqlens_q=CU),
     ValueError, "both"),
    (lambda: flash_attention(_t(5, 2, 16), _t(5, 2, 16), _t(5, 2, 16), cu_seqlens_q=CU,
                             cu_seqlens_k=CU, max_seqlen_q=1), ValueError, "max_seqlen_q"),
    (lambda: flash_attention(_t(1, 4, 2, 16), _t(1, 4, 2, 16), _t(1, 4, 2, 16), window=(2,)),
     ValueError, "window"),
    (lambda: flash_attention(_t(1, 4, 2, 16), _t(1, 4, 2, 16), _t(1, 4, 2, 16),
                             softcap=math.inf), ValueError, "softcap"),
    (lambda: flash_attention(_t(4, 2, 16), _t(4, 2, 16), _t(4, 2, 16)), ValueError,
     r"\[B, L, H, D\]"),
    (lambda: flash_attention(_t(1, 4, 2, 16).int(), _t(1, 4, 2, 16), _t(1, 4, 2, 16)),
     TypeError, "float16"),
    (lambda: scaled_dot_product_attention(_t(1, 2, 4, 16), _t(1, 2, 5, 16), _t(1, 2, 5, 16),
                                          _t(3, 5) > 0), ValueError, "does not broadcast"),
    (lambda: scaled_dot_product_attention(_t(1, 4, 4, 16), _t(1, 2, 5, 16), _t(1, 2, 5, 16)),
     ValueError, "enable_gqa"),
    (lambda: scaled_dot_product_attention(_t(1, 2, 4, 16), _t(1, 2, 5, 16), _t(1, 2, 5, 16),
                                          _t(4, 5), is_causal=True), ValueError, "not both"),
    (lambda: scaled_dot_product_attention(_t(1, 2, 4, 16), _t(1, 2, 5, 16), _t(1, 2, 5, 16),
                                          _t(4, 5).int()), TypeError, "attn_mask"),
    (lambda: scaled_dot_product_attention(_t(1, 2, 4, 16), _t(1, 2, 5, 16), _t(1, 2, 5, 16),
                                          dropout_p=1.5), ValueError, "dropout_p"),
    (lambda: scaled_dot_product_attention(_t(1, 2, 4, 16), _t(1, 2, 5, 16), _t(1, 2, 5, 16),
                                          scale=float("nan")), ValueError, "scale"),
    (lambda: scaled_dot_product_attention(_t(2, 2, 4, 16), _t(3, 2, 5, 16), _t(3, 2, 5, 16)),
     ValueError, "batch dims"),
]


@pytest.mark.parametrize("fn,exc,match", BAD, ids=[b[2] for b in BAD])
def test_bad_input_is_a_clear_error(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def test_triton_refuses_what_it_cannot_run():
    if "triton" not in available_backends("attention", "cpu"):
        pytest.skip("triton backend not available here")
    q = _t(1, 4, 2, 16, dtype=torch.float64)
    with pytest.raises(BackendError, match="float64"):
        flash_attention(q, q, q, backend="triton")
    q = _t(1, 2, 4, 300)
    with pytest.raises(BackendError, match="head dims"):
        scaled_dot_product_attention(q, q, q, backend="triton")


@pytest.mark.parametrize("scale", [0.0, -0.5])
def test_non_positive_scale_is_left_to_the_reference_on_cpu(scale, gen):
    """aten's CPU flash kernels (torch's own SDPA too) return NaN rows under a causal mask for
    scale <= 0: the cpu backend refuses such calls by name, and the default falls back to the
    reference (with a warning, once), which computes them."""
    q, k, v = (torch.randn(1, 2, 6, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    want = scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                        backend="reference")
    with warnings.catch_warnings():  # the fallback warns once per process
        warnings.simplefilter("ignore")
        got = scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    assert torch.isfinite(got).all()
    assert_close(got, want, atol=1e-12, rtol=1e-12)
    with pytest.raises(BackendError, match="scale <= 0"):
        flash_attention(*(t.transpose(1, 2) for t in (q, k, v)), causal=True, scale=scale,
                        backend="cpu")

"""fastgen.ops.rms_norm and fastgen.ops.apply_rotary on every backend that runs here (cpu; triton
under the interpreter; cuda when present): against transformers' Llama modules (rotary bit for
bit in float32), a float64 truth, half precision, odd shapes, poisoned outputs, gradients through
the reference, opcheck-able fakes under torch.compile, and bad input."""

import pytest
import torch

from fastgen.ops import apply_rotary, rms_norm
from fastgen.reference import transformer as ref
from fastgen.testing import available_backends, devices
from fastgen.testing.compare import poisoned

NORM = [(d, b) for d in devices() for b in available_backends("rms_norm", d)]
ROPE = [(d, b) for d in devices() for b in available_backends("apply_rotary", d)]
TOL = {torch.float32: 2e-6, torch.float64: 1e-13, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _llama():
    return pytest.importorskip("transformers.models.llama.modeling_llama")


@pytest.mark.parametrize("device,backend", NORM)
@pytest.mark.parametrize("shape", [(1, 576), (8, 1, 576), (3, 5, 17), (2, 1000), (0, 8), (4, 1)])
def test_rms_norm_matches_llama_and_float64(device, backend, shape, gen):
    x = torch.randn(*shape, generator=gen) * 3
    w = torch.randn(shape[-1], generator=gen)
    eps = float(torch.rand((), generator=gen)) * 1e-3
    with poisoned():
        got = rms_norm(x.to(device), w.to(device), eps, backend=backend).cpu()
    truth = ref.rms_norm(x.double(), w.double(), eps)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got.double(), truth, rtol=TOL[torch.float32], atol=1e-6)
    m = _llama().LlamaRMSNorm(shape[-1], eps=eps)
    m.weight.data = w
    with torch.no_grad():
        torch.testing.assert_close(got, m(x), rtol=TOL[torch.float32], atol=1e-6)


@pytest.mark.parametrize("device,backend", NORM)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_rms_norm_dtypes(device, backend, dtype, gen):
    x = torch.randn(5, 3, 70, generator=gen).to(dtype)
    w = torch.randn(70, generator=gen).to(dtype)
    got = rms_norm(x.to(device), w.to(device), 1e-6, backend=backend).cpu()
    want = ref.rms_norm(x, w, 1e-6)  # the same roundings in the reference
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), want.double(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("device,backend", ROPE)
@pytest.mark.parametrize("b,t,hq,hk,d", [(1, 1, 9, 3, 64), (8, 1, 32, 8, 128), (2, 7, 4, 4, 10),
                                         (3, 2, 1, 1, 2), (2, 0, 2, 1, 8)])
def test_rotary_matches_llama_bitwise(device, backend, b, t, hq, hk, d, gen):
    q, k = torch.randn(b, t, hq, d, generator=gen), torch.randn(b, t, hk, d, generator=gen)
    cos, sin = torch.randn(b, t, d, generator=gen), torch.randn(b, t, d, generator=gen)
    with poisoned():
        got_q, got_k = apply_rotary(*(x.to(device) for x in (q, k, cos, sin)), backend=backend)
    want_q, want_k = _llama().apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos,
                                                   sin)
    assert got_q.is_contiguous() and got_k.is_contiguous()
    assert torch.equal(got_q.cpu(), want_q.transpose(1, 2))
    assert torch.equal(got_k.cpu(), want_k.transpose(1, 2))


@pytest.mark.parametrize("device,backend", ROPE)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_rotary_dtypes_views_and_shared_tables(device, backend, dtype, gen):
    # q, k as views of one projection output; cos, sin [T, D] shared by the batch
    qkv = torch.randn(3, 4, 6 * 16, generator=gen).to(dtype)
    q, k = qkv[..., :64].view(3, 4, 4, 16), qkv[..., 64:].view(3, 4, 2, 16)
    cos, sin = torch.randn(4, 16, generator=gen).to(dtype), torch.randn(4, 16, generator=gen)
    sin = sin.to(dtype)
    got = apply_rotary(q.to(device), k.to(device), cos.to(device), sin.to(device),
                       backend=backend)
    want = ref.rotary(q.double(), k.double(), cos.double().expand(3, 4, 16),
                      sin.double().expand(3, 4, 16))
    for g, w in zip(got, want):
        assert g.dtype == dtype and g.is_contiguous()
        torch.testing.assert_close(g.cpu().double(), w, rtol=TOL[dtype], atol=4 * TOL[dtype])


@pytest.mark.parametrize("device,backend", NORM)
def test_rms_norm_layouts_and_empty_rows(device, backend, gen):
    x = torch.randn(16, 8, generator=gen).t()  # [8, 16], not contiguous
    w = torch.randn(16, generator=gen)
    got = rms_norm(x.to(device), w.to(device), 1e-6, backend=backend).cpu()
    torch.testing.assert_close(got, ref.rms_norm(x, w, 1e-6), rtol=2e-6, atol=1e-6)
    assert rms_norm(torch.randn(3, 0).to(device), torch.randn(0).to(device),
                    backend=backend).shape == (3, 0)


def test_gradients_go_through_the_reference(gen):
    x = torch.randn(4, 12, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(12, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: rms_norm(x, w, 1e-5), (x, w))
    q = torch.randn(1, 2, 3, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 1, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    cs = torch.randn(2, 1, 2, 8, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q, k: apply_rotary(q, k, cs[0], cs[1]), (q, k))


@pytest.mark.parametrize("backend", available_backends("rms_norm", "cpu"))
def test_compiles_fullgraph(backend, gen):
    x, w = torch.randn(3, 32, generator=gen), torch.randn(32, generator=gen)
    q, k = torch.randn(2, 1, 4, 8, generator=gen), torch.randn(2, 1, 2, 8, generator=gen)
    cos, sin = torch.randn(2, 1, 8, generator=gen), torch.randn(2, 1, 8, generator=gen)

    def f(x, q, k):
        return rms_norm(x, w, 1e-6, backend=backend), apply_rotary(q, k, cos, sin,
                                                                   backend=backend)

    got, want = torch.compile(f, fullgraph=True)(x, q, k), f(x, q, k)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_bad_input():
    x, w = torch.randn(2, 8), torch.randn(8)
    with pytest.raises(ValueError, match=r"x \[..., N\] and weight \[N\]"):
        rms_norm(x, torch.randn(7))
    with pytest.raises(TypeError, match="one dtype and device"):
        rms_norm(x, w.double())
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        rms_norm(x.int(), w)
    for eps in (-1.0, float("nan"), float("inf"), "1e-6"):
        with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
            rms_norm(x, w, eps)
    q, k, c = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 1, 8), torch.randn(1, 2, 8)
    with pytest.raises(ValueError, match="even D"):
        apply_rotary(q[..., :7], k[..., :7], c[..., :7], c[..., :7])
    with pytest.raises(ValueError, match="even D >= 2"):  # (the kernel would divide by D)
        apply_rotary(q[..., :0], k[..., :0], c[..., :0], c[..., :0])
    with pytest.raises(ValueError, match="one B, T"):
        apply_rotary(q, k[:, :1], c, c)
    with pytest.raises(ValueError, match=r"cos and sin must both be \[B, T, D\]"):
        apply_rotary(q, k, c[:, :1], c[:, :1])
    with pytest.raises(TypeError, match="sin is torch.float64"):
        apply_rotary(q, k, c, c.double())

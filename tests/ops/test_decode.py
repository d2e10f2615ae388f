"""Tests of fastgen.ops.decode_attention on every backend that runs here (cpu; triton under the
interpreter; cuda when present) against fastgen.reference.decode in float64, and of the
reference itself against torch's SDPA on the unpadded cache."""

import math

import pytest
import torch

from fastgen.ops import decode_attention
from fastgen.reference import decode as ref
from fastgen.testing import available_backends, devices

CASES = [(dev, be) for dev in devices() for be in available_backends("decode_attention", dev)
         if be != "reference"]
TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _slow(device, backend):
    return backend == "triton" and device == "cpu"


def _cache(b, hkv, cap, d, dtype, gen, device):
    k = torch.randn(b, hkv, cap, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, hkv, cap, d, generator=gen, dtype=torch.float64)
    return k.to(device, dtype), v.to(device, dtype)


def _paged(k, v, page, gen):
    """The same caches as pages in a random order: ([P, H, page, D] x2, block_table [B, n])."""
    b, h, cap, d = k.shape
    n = cap // page
    perm = torch.randperm(b * n + 3, generator=gen)[: b * n]  # spare pages stay unused
    kp = torch.full((b * n + 3, h, page, d), math.nan, dtype=k.dtype, device=k.device)
    vp = kp.clone()
    table = perm.view(b, n).to(torch.int32).to(k.device)
    for i in range(b):
        for j in range(n):
            kp[table[i, j]] = k[i, :, j * page:(j + 1) * page]
            vp[table[i, j]] = v[i, :, j * page:(j + 1) * page]
    return kp, vp, table


def _truth(q, k, v, seqlens, table=None, scale=None, softcap=0.0, left=-1, right=0):
    scale = scale or 1 / math.sqrt(q.shape[-1])
    return ref.decode_attention(q.double().cpu(), k.double().cpu(), v.double().cpu(),
                                seqlens.cpu(), None if table is None else table.cpu(), scale,
                                softcap, left, right)


def _assert_close(got, want, dtype, what):
    err = (got.double().cpu() - want).abs().max().item() if want.numel() else 0.0
    assert err <= TOL[dtype] * max(1.0, want.abs().max().item()), f"{what}: error {err:.3g}"


def test_reference_matches_sdpa(gen):
    b, hq, hkv, d, n = 2, 6, 2, 16, 37
    q = torch.randn(b, hq, 3, d, generator=gen, dtype=torch.float64)
    k, v = _cache(b, hkv, 50, d, torch.float64, gen, "cpu")
    out, _ = ref.decode_attention(q, k, v, torch.full((b,), n), None, 0.3, 0.0, -1, 0)
    # bottom-right causal: query i sees keys j <= n - 3 + i
    mask = torch.arange(n)[None, :] <= (n - 3 + torch.arange(3))[:, None]
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k[:, :, :n], v[:, :, :n], attn_mask=mask, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(out, want)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("n", [1, 7, 100, 4097])
@pytest.mark.parametrize("group", [1, 3, 8])
def test_cache_lengths_and_gqa(device, backend, n, group, gen):
    if _slow(device, backend) and (n > 100 or group == 3):
        pytest.skip("interpreter: kept small")
    b, hkv, d = 2, 2, 64
    k, v = _cache(b, hkv, n + 5, d, torch.float32, gen, device)
    q = torch.randn(b, hkv * group, 1, d, generator=gen).to(device)
    seqlens = torch.tensor([n, max(1, n // 2)], dtype=torch.int32, device=device)
    out, lse = decode_attention(q, k, v, seqlens, return_lse=True, backend=backend)
    want, want_lse = _truth(q, k, v, seqlens)
    _assert_close(out, want, torch.float32, "out")
    _assert_close(lse, want_lse, torch.float32, "lse")


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_ragged_rows_odd_dims_dtypes(device, backend, dtype, gen):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("triton: no float64")
    b, hq, hkv, d, dv, cap = 5, 6, 2, 40, 24, 97
    q = torch.randn(b, hq, 2, d, generator=gen).to(device, dtype)
    k = torch.randn(b, hkv, cap, d, generator=gen).to(device, dtype)
    v = torch.randn(b, hkv, cap, dv, generator=gen).to(device, dtype)
    seqlens = torch.randint(2, cap + 1, (b,), generator=gen).to(device)
    out = decode_attention(q, k, v, seqlens, backend=backend)
    want, _ = _truth(q, k, v, seqlens)
    assert out.shape == (b, hq, 2, dv) and out.dtype == dtype
    _assert_close(out, want, dtype, f"{dtype}")


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("page", [1, 4, 16])
def test_paged_equals_contiguous(device, backend, page, gen):
    if _slow(device, backend) and page == 1:
        pytest.skip("interpreter: kept small")
    b, hq, hkv, d, cap = 3, 4, 2, 32, 48
    k, v = _cache(b, hkv, cap, d, torch.float32, gen, device)
    q = torch.randn(b, hq, 1, d, generator=gen).to(device)
    seqlens = torch.tensor([48, 1, 29], dtype=torch.int32, device=device)
    kp, vp, table = _paged(k, v, page, gen)
    paged = decode_attention(q, kp, vp, seqlens, block_table=table, backend=backend)
    dense = decode_attention(q, k, v, seqlens, backend=backend)
    torch.testing.assert_close(paged, dense, rtol=1e-5, atol=1e-6)
    assert not paged.isnan().any()  # unused (NaN) cache rows are never read


@pytest.mark.parametrize("device,backend", CASES)
def test_window_softcap_scale_and_split(device, backend, gen):
    b, hq, hkv, d = 1, 4, 1, 16
    n = 300 if not _slow(device, backend) else 140
    k, v = _cache(b, hkv, n, d, torch.float32, gen, device)
    q = torch.randn(b, hq, 3, d, generator=gen).to(device)
    seqlens = torch.tensor([n], dtype=torch.int32, device=device)
    for kw, tr in ((dict(window=(20, -1)), dict(left=20)),
                   (dict(softcap=5.0, scale=0.7), dict(softcap=5.0, scale=0.7)),
                   (dict(causal=False), dict(right=-1))):
        out, lse = decode_attention(q, k, v, seqlens, return_lse=True, backend=backend, **kw)
        want, want_lse = _truth(q, k, v, seqlens, **tr)
        _assert_close(out, want, torch.float32, str(kw))
        _assert_close(lse, want_lse, torch.float32, f"lse {kw}")


@pytest.mark.parametrize("device,backend", CASES)
def test_window_of_one_key(device, backend, gen):
    k, v = _cache(1, 1, 8, 16, torch.float32, gen, device)
    q = torch.randn(1, 2, 1, 16, generator=gen).to(device)
    seqlens = torch.tensor([8], dtype=torch.int32, device=device)
    out, lse = decode_attention(q, k, v, seqlens, window=(0, 0), return_lse=True,
                                backend=backend)
    torch.testing.assert_close(out[0, :, 0].cpu(), v[0, 0, 7].cpu().expand(2, 16))
    assert torch.isfinite(lse).all()


def test_3d_query_and_empty_batch(gen):
    k, v = _cache(2, 2, 10, 8, torch.float32, gen, "cpu")
    q = torch.randn(2, 4, 8, generator=gen)
    out = decode_attention(q, k, v, torch.tensor([10, 3]))
    assert out.shape == (2, 4, 8)
    want, _ = _truth(q[:, :, None], k, v, torch.tensor([10, 3]))
    _assert_close(out, want[:, :, 0], torch.float32, "3-D q")
    empty = decode_attention(q[:0], k[:0], v[:0], torch.zeros(0, dtype=torch.int32))
    assert empty.shape == (0, 4, 8)


def test_grad_runs_reference(gen):
    k, v = _cache(1, 1, 6, 8, torch.float64, gen, "cpu")
    q = torch.randn(1, 2, 1, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda q: decode_attention(q, k, v, torch.tensor([5])), (q,))


def test_compiles_fullgraph(gen):
    k, v = _cache(2, 2, 12, 16, torch.float32, gen, "cpu")
    q = torch.randn(2, 4, 1, 16, generator=gen)
    sl = torch.tensor([12, 4], dtype=torch.int32)
    fn = torch.compile(lambda q, k, v, sl: decode_attention(q, k, v, sl), fullgraph=True)
    torch.testing.assert_close(fn(q, k, v, sl), decode_attention(q, k, v, sl))


@pytest.mark.parametrize("kw,match", [
    (dict(cache_seqlens=torch.tensor([11, 3])), "cache_seqlens must be in \\[q_len, capacity\\]"),
    (dict(cache_seqlens=torch.tensor([0, 3])), "cache_seqlens must be in"),
    (dict(cache_seqlens=torch.tensor([1.0, 3.0])), "cache_seqlens must be an int32 or int64"),
    (dict(cache_seqlens=torch.tensor([1, 2, 3])), "cache_seqlens must be \\[B\\] = \\[2\\]"),
    (dict(block_table=torch.tensor([[0, 5], [1, 2]])), "block_table holds a page id outside"),
    (dict(q=torch.randn(2, 3, 1, 8)), "multiple of the number of kv heads"),
    (dict(q=torch.randn(2, 4, 1, 9)), "same head dim"),
    (dict(q=torch.randn(2, 4, 1, 8, dtype=torch.float64)), "share one dtype"),
    (dict(softcap=-1.0), "softcap"),
    (dict(window=(3,)), "window"),
])
def test_bad_input(kw, match, gen):
    k, v = _cache(2, 2, 10, 8, torch.float32, gen, "cpu")
    args = dict(q=torch.randn(2, 4, 1, 8), k_cache=k, v_cache=v,
                cache_seqlens=torch.tensor([10, 3]))
    if "block_table" in kw:
        args.update(k_cache=k.reshape(4, 2, 5, 8), v_cache=v.reshape(4, 2, 5, 8))
    args.update(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        decode_attention(args.pop("q"), args.pop("k_cache"), args.pop("v_cache"),
                         args.pop("cache_seqlens"), **args)


def test_float64_split_keys_keep_float64_precision(gen):
    # one (row, kv head) task: the CPU kernel splits the keys; the merge must stay float64
    k, v = _cache(1, 1, 4096, 32, torch.float64, gen, "cpu")
    q = torch.randn(1, 2, 1, 32, generator=gen, dtype=torch.float64)
    sl = torch.tensor([4096])
    out = decode_attention(q, k, v, sl, backend="cpu")
    want, _ = _truth(q, k, v, sl)
    assert (out - want).abs().max() < 1e-12


@pytest.mark.parametrize("device,backend", CASES)
def test_unvalidated_lengths_never_read_past_the_cache(device, backend, gen):
    k, v = _cache(2, 1, 40, 16, torch.float32, gen, device)
    q = torch.randn(2, 2, 1, 16, generator=gen).to(device)
    full = torch.tensor([40, 40], dtype=torch.int32, device=device)
    over = decode_attention(q, k, v, full + 25, validate=False, backend=backend)
    torch.testing.assert_close(over, decode_attention(q, k, v, full, backend=backend))
    with pytest.raises(ValueError, match="values must fit int32, got 2147483648"):
        decode_attention(q, k, v, torch.tensor([2**31, 3], device=device), backend=backend)

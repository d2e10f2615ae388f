"""Tests of fastgen.ops.sample on every backend that runs here (cpu; triton under the interpreter;
cuda when present): the reference's filters against transformers' logits warpers, the backends'
tokens against the reference's for the same uniforms, empirical distributions (chi-square), and
bad input."""

import math

import pytest
import torch

from fastgen.ops import sample
from fastgen.reference import sampling as ref
from fastgen.testing import available_backends, devices

CASES = [(dev, be) for dev in devices() for be in available_backends("sample", dev)
         if be != "reference"]


def _rows(b, **kw):
    """Per-row parameter tensors as the reference takes them."""
    full = {"temperature": 1.0, "top_k": 10**9, "top_p": 1.0, "min_p": 0.0}
    full.update({k: v for k, v in kw.items() if v is not None})
    out = []
    for name, v in full.items():
        dtype = torch.int64 if name == "top_k" else torch.float32
        out.append(v.to(dtype) if isinstance(v, torch.Tensor) else torch.full((b,), v, dtype=dtype))
    return out


def _same_draws(logits, backend, device, seed, **kw):
    """Tokens from one backend and from the reference for the same uniforms."""
    got = sample(logits.to(device), generator=torch.Generator(device).manual_seed(seed),
                 backend=backend, **{k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                                     for k, v in kw.items()})
    u = torch.rand(logits.shape[0], generator=torch.Generator(device).manual_seed(seed),
                   device=device).cpu()
    t, k, p, mp = _rows(logits.shape[0], **kw)
    want = ref.sample(logits, u, t, k.clamp(max=logits.shape[-1]), p, mp)
    return got.cpu(), want


def test_reference_matches_transformers_warpers(gen):
    tf = pytest.importorskip("transformers")
    logits = torch.randn(16, 300, generator=gen) * 3
    for top_k, top_p, min_p, temp in ((20, None, None, 0.7), (None, 0.9, None, 1.3),
                                      (None, None, 0.05, 1.0), (50, 0.8, 0.02, 0.9)):
        procs = [tf.TemperatureLogitsWarper(temp)]
        if top_k:
            procs.append(tf.TopKLogitsWarper(top_k))
        if top_p:
            procs.append(tf.TopPLogitsWarper(top_p))
        if min_p:
            procs.append(tf.MinPLogitsWarper(min_p))
        scores = logits.clone()
        for proc in procs:
            scores = proc(None, scores)
        w = ref.filtered_weights(logits, *_rows(16, temperature=temp, top_k=top_k, top_p=top_p,
                                                min_p=min_p))
        assert torch.equal(w > 0, scores > -math.inf), (top_k, top_p, min_p, temp)
        probs = w / w.sum(-1, keepdim=True)
        torch.testing.assert_close(probs, scores.softmax(-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("b,v", [(1, 1), (3, 7), (8, 97), (5, 1000), (2, 3000)])
def test_tokens_equal_reference(device, backend, b, v, gen, seed):
    logits = torch.randn(b, v, generator=gen) * 4
    cfgs = [dict(), dict(temperature=0.0), dict(top_k=5), dict(top_p=0.7),
            dict(min_p=0.1, temperature=1.5), dict(top_k=40, top_p=0.9, min_p=0.01),
            dict(top_k=1)]
    if backend == "triton" and device == "cpu" and v > 100:
        cfgs = cfgs[2:4] + cfgs[-2:]  # the interpreter is slow
    for i, kw in enumerate(cfgs):
        got, want = _same_draws(logits, backend, device, seed + i, **kw)
        assert torch.equal(got, want), (kw, got, want)


@pytest.mark.parametrize("device,backend", CASES)
def test_per_row_parameters_and_greedy_rows(device, backend, gen, seed):
    b, v = 6, 150
    logits = torch.randn(b, v, generator=gen) * 3
    kw = dict(temperature=torch.tensor([0.0, 1.0, 0.5, 2.0, 0.0, 1.0]),
              top_k=torch.tensor([1, 3, 10**6, 20, 5, 150]),
              top_p=torch.tensor([1.0, 0.5, 0.95, 1.0, 0.3, 0.8]),
              min_p=torch.tensor([0.0, 0.0, 0.2, 0.05, 0.0, 0.0]))
    for i in range(3):
        got, want = _same_draws(logits, backend, device, seed + i, **kw)
        assert torch.equal(got, want)
    assert got[0] == logits[0].argmax() and got[4] == logits[4].argmax()


@pytest.mark.parametrize("device,backend", CASES)
def test_ties_and_banned_tokens(device, backend, seed):
    # integer logits: many ties at the top-k / top-p boundaries; -inf tokens are never drawn
    g = torch.Generator().manual_seed(seed)
    logits = torch.randint(-3, 3, (8, 64), generator=g).float()
    logits[:, ::3] = -math.inf
    for i, kw in enumerate([dict(top_k=4), dict(top_p=0.5), dict(top_k=10, min_p=0.3), dict()]):
        got, want = _same_draws(logits, backend, device, seed + i, **kw)
        assert torch.equal(got, want), kw
        assert bool((logits.gather(1, got[:, None]) > -math.inf).all())
    greedy = sample(logits.to(device), temperature=0.0, backend=backend).cpu()
    assert torch.equal(greedy, logits.argmax(-1))  # first index of the maximum


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(device, backend, dtype, gen, seed):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("triton takes float16/bfloat16/float32 logits")
    logits = (torch.randn(4, 200, generator=gen) * 3).to(dtype)
    got, want = _same_draws(logits, backend, device, seed, top_k=30, top_p=0.9)
    assert torch.equal(got, want)


@pytest.mark.parametrize("device,backend", [c for c in CASES if c != ("cpu", "triton")]
                         + [("cpu", "reference")])  # the interpreter is too slow for 20000 rows
def test_empirical_distribution_chi_square(device, backend, gen, seed):
    v, n = 12, 20000
    row = torch.randn(v, generator=gen) * 1.5
    kw = dict(temperature=0.8, top_k=9, top_p=0.95, min_p=0.02)
    tok = sample(row.expand(n, v).to(device), generator=torch.Generator(device).manual_seed(seed),
                 backend=backend, **kw).cpu()
    w = ref.filtered_weights(row[None], *_rows(1, **kw))[0]
    prob = (w / w.sum()).double()
    counts = torch.bincount(tok, minlength=v).double()
    assert counts[prob == 0].sum() == 0, "a filtered-out token was drawn"
    kept = prob > 0
    expected = n * prob[kept]
    chi2 = float(((counts[kept] - expected) ** 2 / expected).sum())
    dof = int(kept.sum()) - 1
    # p < 1e-4 for dof <= 11 is above 40: a correct sampler fails about 1 run in 10,000
    assert chi2 < 40, f"chi-square {chi2:.1f} with {dof} degrees of freedom"


@pytest.mark.parametrize("device,backend", CASES)
def test_empty_batch_and_1d(device, backend):
    assert sample(torch.zeros(0, 5, device=device), backend=backend).shape == (0,)
    one = sample(torch.tensor([0.0, 5.0, -math.inf], device=device), temperature=0.0,
                 backend=backend)
    assert one.ndim == 0 and int(one) == 1


def test_generator_reproducible(gen, seed):
    logits = torch.randn(4, 500, generator=gen)
    a = sample(logits, top_p=0.9, generator=torch.Generator().manual_seed(seed))
    b = sample(logits, top_p=0.9, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw,match", [
    (dict(top_p=0.0), "top_p must be in \\(0.0, 1.0\\]"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k must be in \\[1"),
    (dict(top_k=2.5), "top_k must be an int"),
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(min_p=1.2), "min_p"),
    (dict(top_k=torch.tensor([1, 2, 3])), "top_k as a tensor must be \\[B\\] = \\[2\\]"),
    (dict(top_k=torch.tensor([1.0, 2.0])), "top_k must hold integers"),
    (dict(top_p=torch.tensor([0.5, 0.0])), "top_p"),
])
def test_bad_parameters(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sample(torch.randn(2, 10), **kw)


def test_bad_logits():
    with pytest.raises(ValueError, match="NaN or \\+inf \\(first in row 1\\)"):
        sample(torch.tensor([[0.0, 1.0], [math.nan, 0.0]]))
    with pytest.raises(ValueError, match="all -inf"):
        sample(torch.tensor([[0.0, 1.0], [-math.inf, -math.inf]]))
    with pytest.raises(TypeError, match="logits must be float"):
        sample(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="logits must be \\[B, V\\]"):
        sample(torch.randn(2, 3, 4))


def test_compiles_fullgraph(gen, seed):
    # aot_eager keeps eager torch.rand (inductor draws other uniforms), so tokens can be compared
    logits = torch.randn(3, 50, generator=gen)
    fn = torch.compile(lambda x: sample(x, top_k=5, top_p=0.9), fullgraph=True,
                       backend="aot_eager")
    torch.manual_seed(seed)
    got = fn(logits)
    torch.manual_seed(seed)
    assert torch.equal(got, sample(logits, top_k=5, top_p=0.9))


@pytest.mark.parametrize("device,backend", CASES + [("cpu", "reference")])
def test_tiny_temperature_does_not_overflow(device, backend):
    # (l - max l) / T keeps the row maximum at 0: T = 1e-39 is greedy-like, never a banned token
    x = torch.tensor([[-math.inf, 1.0, 2.0], [3.0, -math.inf, 2.999]], device=device)
    for kw in (dict(temperature=1e-39), dict(temperature=1e-39, top_k=1), dict(temperature=1e-30,
                                                                                top_p=0.5)):
        assert sample(x, backend=backend, **kw).tolist() == [2, 0]
    with pytest.raises(ValueError, match="temperature"):
        sample(x, temperature=math.inf, backend=backend)


def test_mixed_filtered_and_plain_rows(gen, seed):
    # a plain row and a greedy row next to filtered rows: the candidate set must not grow to V
    logits = torch.randn(4, 5000, generator=gen)
    kw = dict(top_k=torch.tensor([5, 5000, 5, 5000]), temperature=torch.tensor([1.0, 1.0, 0.0,
                                                                                0.7]))
    got, want = _same_draws(logits, "cpu", "cpu", seed, **kw)
    assert torch.equal(got, want)

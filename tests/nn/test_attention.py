"""fastgen.nn.MultiheadAttention against torch.nn.MultiheadAttention: parameters, init, outputs,
weights and gradients, under every mask form, layout and option torch's module has."""

import warnings

import pytest
import torch
from torch import nn

from fastgen.nn import MultiheadAttention
from fastgen.testing import assert_close, available_backends, poisoned

E, H = 16, 4  # head_dim 4
CONFIGS = {
    "default": {},
    "batch_first": dict(batch_first=True),
    "kdim_vdim": dict(kdim=6, vdim=10),
    "bias_kv": dict(add_bias_kv=True),
    "zero_attn": dict(add_zero_attn=True),
    "no_bias": dict(bias=False),
    "everything": dict(batch_first=True, kdim=6, vdim=10, add_bias_kv=True, add_zero_attn=True),
}
MASKS = ["none", "kpm_bool", "kpm_float", "attn2_bool", "attn2_float", "attn3_bool",
         "attn3_float", "both_bool", "both_float", "mixed"]
BACKENDS = available_backends("attention", "cpu")


def _close(actual, expected, tol=1e-5, name="output"):
    """fp32: 1e-5 relative to the tensor's scale (a few roundings in a different op order)."""
    scale = float(expected.detach().abs().nan_to_num(0.0, 0.0, 0.0).max()) if expected.numel() \
        else 0.0
    assert_close(actual, expected, atol=tol * max(1.0, scale), rtol=tol, name=name)


def _pair(cfg, gen, backend=None, dtype=torch.float32, dropout=0.0):
    """torch's module with random (non-zero) parameters, and ours loaded from its state_dict."""
    ref = nn.MultiheadAttention(E, H, dropout=dropout, dtype=dtype, **cfg)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)
    ours = MultiheadAttention(E, H, dropout=dropout, dtype=dtype, backend=backend, **cfg)
    ours.load_state_dict(ref.state_dict())  # strict: identical keys and shapes
    return ref, ours


def _inputs(cfg, gen, n=3, tgt=5, src=7, dtype=torch.float32, batched=True):
    kdim, vdim = cfg.get("kdim", E), cfg.get("vdim", E)

    def make(length, dim):
        if not batched:
            shape = (length, dim)
        else:
            shape = (n, length, dim) if cfg.get("batch_first") else (length, n, dim)
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    return make(tgt, E), make(src, kdim), make(src, vdim)


def _masks(kind, gen, n=3, tgt=5, src=7, dtype=torch.float32, batched=True):
    """(key_padding_mask, attn_mask) in torch MHA's convention (bool True = blocked). Key 0 is
    never blocked, so no query row is empty (torch's need_weights path gives NaN there)."""
    def blocked(*shape):
        b = torch.rand(shape, generator=gen) < 0.4
        b[..., 0] = False
        return b

    def additive(b):
        f = torch.randn(b.shape, generator=gen, dtype=torch.float64).to(dtype)
        return f.masked_fill(b, float("-inf"))

    kpm_shape = (n, src) if batched else (src,)
    kpm = am = None
    if kind in ("kpm_bool", "kpm_float", "both_bool", "both_float", "mixed"):
        kpm = blocked(*kpm_shape)
        kpm = additive(kpm) if kind in ("kpm_float", "both_float") else kpm
    if kind.startswith("attn2") or kind.startswith("both") or kind == "mixed":
        am = blocked(tgt, src)
    if kind.startswith("attn3"):
        am = blocked(n * H if batched else H, tgt, src)
    if am is not None and (kind.endswith("float") or kind == "mixed"):
        am = additive(am)
    return kpm, am


def _run(m, q, k, v, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation warning on mixed mask types
        return m(q, k, v, **kw)


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_parameters_and_init_are_torchs(cfg):
    """Same names, shapes and order; the same seed gives the same initial weights."""
    torch.manual_seed(123)
    ref = nn.MultiheadAttention(E, H, **cfg)
    torch.manual_seed(123)
    ours = MultiheadAttention(E, H, **cfg)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in ref.state_dict().items()]
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), name
    assert isinstance(ours.out_proj, nn.Linear)
    same = "kdim" not in cfg
    assert (ours.in_proj_weight is not None) == same and (ours.q_proj_weight is None) == same
    # And back: torch's module loads ours.
    ref.load_state_dict(ours.state_dict())


def test_constructor_errors():
    with pytest.raises(ValueError, match="divisible"):
        MultiheadAttention(10, 4)
    with pytest.raises(ValueError, match="> 0"):
        MultiheadAttention(8, 0)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_matches_torch(cfg, mask, need_weights, gen):
    ref, ours = _pair(cfg, gen)
    q, k, v = _inputs(cfg, gen)
    kpm, am = _masks(mask, gen)
    for average in (True, False):
        kw = dict(key_padding_mask=kpm, attn_mask=am, need_weights=need_weights,
                  average_attn_weights=average)
        out, w = _run(ours, q, k, v, **kw)
        out_ref, w_ref = _run(ref, q, k, v, **kw)
        _close(out, out_ref)
        if need_weights:
            _close(w, w_ref, name="weights")
        else:
            assert w is None and w_ref is None
            break  # average_attn_weights has no effect without weights


@pytest.mark.parametrize("mask", ["none", "kpm_bool", "attn3_float", "both_bool", "mixed"])
@pytest.mark.parametrize("cfg", ["default", "batch_first", "everything"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_path_on_every_backend(backend, cfg, mask, gen):
    cfg = CONFIGS[cfg]
    ref, ours = _pair(cfg, gen, backend=backend)
    q, k, v = _inputs(cfg, gen)
    kpm, am = _masks(mask, gen)
    with poisoned():
        out, _ = _run(ours, q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)
    _close(out, _run(ref, q, k, v, key_padding_mask=kpm, attn_mask=am)[0])


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("mask", ["none", "kpm_bool", "attn2_float", "attn3_bool", "both_float"])
@pytest.mark.parametrize("cfg", ["default", "batch_first", "kdim_vdim", "everything"])
def test_unbatched(cfg, mask, need_weights, gen):
    """[L, E] inputs (batch_first is ignored), key_padding_mask [S], attn_mask [H, L, S]."""
    cfg = CONFIGS[cfg]
    ref, ours = _pair(cfg, gen)
    q, k, v = _inputs(cfg, gen, batched=False)
    kpm, am = _masks(mask, gen, n=1, batched=False)
    out, w = ours(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights)
    out_ref, w_ref = ref(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights)
    assert out.shape == (5, E)
    _close(out, out_ref)
    if need_weights:
        _close(w, w_ref, name="weights")


@pytest.mark.parametrize("sharing", ["self", "kv"])
@pytest.mark.parametrize("cfg", ["default", "batch_first", "bias_kv", "no_bias"])
def test_shared_inputs(cfg, sharing, gen):
    """query is key is value (one packed projection) and key is value (encoder-decoder)."""
    cfg = CONFIGS[cfg]
    ref, ours = _pair(cfg, gen)
    q, k, _ = _inputs(cfg, gen, src=5)
    k = q if sharing == "self" else k
    kpm, am = _masks("both_bool", gen, src=5)
    for need_weights in (False, True):
        out = ours(q, k, k, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights)[0]
        _close(out, ref(q, k, k, key_padding_mask=kpm, attn_mask=am)[0])


@pytest.mark.parametrize("mask", ["kpm_float", "attn3_bool", "both_bool"])
@pytest.mark.parametrize("cfg", ["batch_first", "kdim_vdim", "everything"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_torch(backend, cfg, mask, gen):
    cfg = CONFIGS[cfg]
    ref, ours = _pair(cfg, gen, backend=backend)
    inputs = [t.requires_grad_() for t in _inputs(cfg, gen)]
    inputs_ref = [t.detach().clone().requires_grad_() for t in inputs]
    kpm, am = _masks(mask, gen)
    out = ours(*inputs, key_padding_mask=kpm, attn_mask=am, need_weights=False)[0]
    out_ref = ref(*inputs_ref, key_padding_mask=kpm, attn_mask=am, need_weights=False)[0]
    grad_out = torch.randn(out.shape, generator=gen)
    out.backward(grad_out)
    out_ref.backward(grad_out)
    for name, a, b in zip("qkv", inputs, inputs_ref):
        _close(a.grad, b.grad, name=f"grad {name}")
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters()):
        _close(p.grad, p_ref.grad, name=f"grad {name}")


def test_float64(gen):
    """float64 shows any difference in the math itself, not only in rounding."""
    cfg = CONFIGS["everything"]
    ref, ours = _pair(cfg, gen, dtype=torch.float64)
    q, k, v = _inputs(cfg, gen, dtype=torch.float64)
    kpm, am = _masks("both_float", gen, dtype=torch.float64)
    out = ours(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)[0]
    _close(out, ref(q, k, v, key_padding_mask=kpm, attn_mask=am)[0], tol=1e-12)


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("with_kpm", [False, True])
@pytest.mark.parametrize("cfg", ["default", "batch_first", "zero_attn"])
def test_is_causal_hint(cfg, with_kpm, need_weights, gen):
    """is_causal with the causal attn_mask: without a padding mask torch hands SDPA is_causal
    (top-left, also over the appended zero key) instead of the mask; ours does the same."""
    cfg = CONFIGS[cfg]
    ref, ours = _pair(cfg, gen)
    q, k, v = _inputs(cfg, gen, tgt=6, src=6)
    causal = nn.Transformer.generate_square_subsequent_mask(6)  # float: 0 / -inf
    kpm = None
    if with_kpm:
        kpm, causal = _masks("kpm_bool", gen, src=6)[0], causal.bool()  # bool True = blocked
    kw = dict(attn_mask=causal, is_causal=True, key_padding_mask=kpm, need_weights=need_weights)
    _close(ours(q, k, v, **kw)[0], ref(q, k, v, **kw)[0])
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ours(q, k, v, is_causal=True, need_weights=need_weights)


def test_fully_masked_rows_match_torch(gen):
    """A sequence whose keys are all padding: attention 0 on the fast path (output = out_proj
    bias, as torch's SDPA path), NaN with need_weights=True (as torch)."""
    cfg = CONFIGS["batch_first"]
    ref, ours = _pair(cfg, gen)
    q, k, v = _inputs(cfg, gen)
    kpm = _masks("kpm_bool", gen)[0]
    kpm[1] = True
    out = ours(q, k, v, key_padding_mask=kpm, need_weights=False)[0]
    _close(out, ref(q, k, v, key_padding_mask=kpm, need_weights=False)[0])
    _close(out[1], ours.out_proj.bias.expand(5, E))
    assert torch.isfinite(out).all()
    slow = ours(q, k, v, key_padding_mask=kpm)[0]
    assert torch.isnan(slow[1]).all() and torch.isfinite(slow[0]).all()


def test_train_without_dropout_equals_eval(gen):
    cfg = CONFIGS["everything"]
    ref, ours = _pair(cfg, gen)
    q, k, v = _inputs(cfg, gen)
    kpm, am = _masks("both_bool", gen)
    ours.train()
    train = ours(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)[0]
    ours.eval()
    ref.eval()
    evaluated = ours(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)[0]
    assert torch.equal(train, evaluated)
    with torch.no_grad():
        _close(evaluated, ref(q, k, v, key_padding_mask=kpm, attn_mask=am,
                              need_weights=False)[0])


@pytest.mark.parametrize("need_weights", [False, True])
def test_eval_no_grad_matches_torchs_native_path(need_weights, gen):
    """Eval, no grad, batch_first self-attention: torch runs _native_multi_head_attention."""
    ref, ours = _pair(CONFIGS["batch_first"], gen)
    ref.eval()
    ours.eval()
    x = _inputs(CONFIGS["batch_first"], gen, src=5)[0]
    kpm = _masks("kpm_bool", gen, src=5)[0]
    with torch.no_grad():
        out, w = ours(x, x, x, key_padding_mask=kpm, need_weights=need_weights)
        out_ref, w_ref = ref(x, x, x, key_padding_mask=kpm, need_weights=need_weights)
    _close(out, out_ref)
    if need_weights:
        _close(w, w_ref, name="weights")


def test_dropout_only_in_training_and_unbiased(gen):
    """Dropout p = 0.5 changes training outputs, never eval ones, and its mean over many draws
    is the eval output (the surviving weights are scaled by 1 / (1 - p))."""
    cfg = CONFIGS["batch_first"]
    ref, ours = _pair(cfg, gen, dropout=0.5)
    q, k, v = _inputs(cfg, gen, n=1)
    ours.eval()
    ref.eval()
    with torch.no_grad():
        expected = ref(q, k, v, need_weights=False)[0]
        _close(ours(q, k, v, need_weights=False)[0], expected)
        ours.train()
        draws = 4000
        rep = [t.expand(draws, -1, -1) for t in (q, k, v)]
        out = ours(*rep, need_weights=False)[0]
    assert not torch.allclose(out[0], expected[0], atol=1e-3)
    assert torch.isfinite(out).all()
    spread = float(out.std(0).max()) / draws ** 0.5
    assert_close(out.mean(0), expected[0], atol=6 * spread, rtol=0, name="mean over draws")


@pytest.mark.parametrize("lengths", [(0, 7), (5, 0)], ids=["empty_query", "empty_keys"])
def test_empty_sequences(lengths, gen):
    ref, ours = _pair(CONFIGS["batch_first"], gen)
    q, k, v = _inputs(CONFIGS["batch_first"], gen, tgt=lengths[0], src=lengths[1])
    out = ours(q, k, v, need_weights=False)[0]
    _close(out, ref(q, k, v, need_weights=False)[0])


def test_errors_name_the_problem(gen):
    _, ours = _pair(CONFIGS["default"], gen)
    q, k, v = _inputs({}, gen)
    with pytest.raises(AssertionError, match="query with 16 features"):
        ours(q[..., :8], k, v, need_weights=False)
    with pytest.raises(AssertionError, match="3-D too"):
        ours(q, k[0], v, need_weights=False)
    with pytest.raises(AssertionError, match="key_padding_mask of shape"):
        ours(q, k, v, key_padding_mask=torch.zeros(3, 6, dtype=torch.bool), need_weights=False)
    with pytest.raises(RuntimeError, match="2D attn_mask"):
        ours(q, k, v, attn_mask=torch.zeros(5, 6, dtype=torch.bool), need_weights=False)
    with pytest.raises(RuntimeError, match="3D attn_mask"):
        ours(q, k, v, attn_mask=torch.zeros(3, 5, 7, dtype=torch.bool), need_weights=False)
    with pytest.raises(AssertionError, match="only bool and floating"):
        ours(q, k, v, attn_mask=torch.zeros(5, 7, dtype=torch.int64), need_weights=False)
    with pytest.raises(AssertionError, match="3-D"):
        ours(q[None], k[None], v[None], need_weights=False)


def test_mixed_mask_types_warn_like_torch(gen):
    _, ours = _pair(CONFIGS["default"], gen)
    q, k, v = _inputs({}, gen)
    kpm, am = _masks("mixed", gen)
    with pytest.warns(UserWarning, match="mismatched key_padding_mask and attn_mask"):
        ours(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=False)


@pytest.mark.parametrize("grad", [True, False])
def test_drop_in_for_transformer_encoder_layer(grad, gen):
    """Replacing a TransformerEncoderLayer's self_attn changes nothing; without grad in eval
    torch's fused layer path reads our parameters and calls our merge_masks."""
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=32, dropout=0.0, batch_first=True)
    layer.eval()
    x = torch.randn(3, 7, E, generator=gen)
    kpm = _masks("kpm_bool", gen)[0]
    causal = nn.Transformer.generate_square_subsequent_mask(7).bool()
    with torch.set_grad_enabled(grad):
        expected = layer(x, src_mask=causal, src_key_padding_mask=kpm)
        layer_ref_mha = layer.self_attn
        ours = MultiheadAttention(E, H, batch_first=True)
        ours.load_state_dict(layer.self_attn.state_dict())
        layer.self_attn = ours
        out = layer(x, src_mask=causal, src_key_padding_mask=kpm)
    # The fused path returns padded positions as 0; compare the real tokens.
    _close(out[~kpm], expected[~kpm])
    additive = [torch.zeros(m.shape).masked_fill(m, float("-inf")) for m in (causal, kpm)]
    for masks in ((None, None), (None, additive[1]), additive):
        merged, kind = ours.merge_masks(*masks, x)
        merged_ref, kind_ref = layer_ref_mha.merge_masks(*masks, x)
        assert kind == kind_ref
        assert (merged is None and merged_ref is None) or torch.equal(merged, merged_ref)

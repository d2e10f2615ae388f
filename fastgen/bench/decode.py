"""Benchmark cases for autoregressive decoding: decode attention on a KV cache, token sampling,
and end-to-end generation with a random Llama built from a config (no download).

    decode_attention  batch 8, 32 q heads / 8 kv heads, head dim 128, cache 4096 (issue's shape)
                      fastgen.ops.decode_attention  vs  fastgen.reference.decode (dense, GQA by
                      repeat)  vs  torch SDPA with enable_gqa on the same cache
    sample            batch 8 × 32000-token vocabulary, temperature 0.8, top-k 50, top-p 0.9
                      fastgen.ops.sample  vs  the sort-based reference  vs  transformers'
                      logits warpers + torch.multinomial (what model.generate runs)
    decode_linear     1 and 8 rows against the projection shapes of that Llama (CPU): fastgen's
                      weight-streaming kernel vs F.linear (reference) on 200 MB of weights, and
                      a whole step's 85 projections in order (283 MB)
    rms_norm+apply_rotary  a decode step's 25 RMSNorms and 12 rotary embeddings (batch 1, 8):
                      the fused ops vs transformers' eager formulas
    generate          a ~100M-parameter Llama, 32-token prompts, 32 or 128 new tokens, greedy
                      fastgen.generate  vs  the same loop on reference kernels  vs
                      model.generate (sdpa attention, its default cache); identical tokens are
                      checked when the case is built. Rate column: generated tokens per second.

Traffic floor for decode attention: the cached keys and values read once (q and out are small).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from ..ops.decode import decode_attention
from ..ops.linear import decode_linear
from ..ops.sampling import sample
from ..reference import decode as ref_decode
from ..reference import sampling as ref_sampling
from ..registry import use_backend
from ..testing.check import available_backends
from .core import Case

__all__ = ["cases", "llama_100m_config"]


def _backend(op: str, device: str) -> str:
    fast = [b for b in available_backends(op, device) if b != "reference"]
    if device == "cpu":
        fast = [b for b in fast if b != "triton"]  # the interpreter is not a fast path
    return fast[0] if fast else "reference"


def _decode_case(device, dtype, b, hq, hkv, d, n, tier) -> Case:
    backend = _backend("decode_attention", device)

    def setup():
        g = torch.Generator(device=device).manual_seed(0)
        s = {n_: torch.randn(shape, generator=g, device=device, dtype=dtype)
             for n_, shape in (("q", (b, hq, 1, d)), ("k", (b, hkv, n, d)),
                               ("v", (b, hkv, n, d)))}
        s["lens"] = torch.full((b,), n, dtype=torch.int32, device=device)
        return s

    scale = d ** -0.5
    itemsize = torch.empty((), dtype=dtype).element_size()
    return Case(
        op="decode_attention", name=f"B{b} {hq}/{hkv} heads hd{d} cache {n}", device=device,
        dtype=dtype, setup=setup,
        fastgen=lambda s: (decode_attention(s["q"], s["k"], s["v"], s["lens"], backend=backend,
                                            validate=False),),
        reference=lambda s: (ref_decode.decode_attention(s["q"], s["k"], s["v"], s["lens"], None,
                                                         scale, 0.0, -1, 0)[0],),
        peers={"torch SDPA": lambda s: (F.scaled_dot_product_attention(
            s["q"], s["k"], s["v"], enable_gqa=True),)},
        bytes_moved=2 * b * hkv * n * d * itemsize, tier=tier, backend=backend,
        flops=4 * b * hq * n * d)


def _sample_case(device, b, v, tier) -> Case:
    backend = _backend("sample", device)
    kw = dict(temperature=0.8, top_k=50, top_p=0.9)

    def setup():
        g = torch.Generator(device=device).manual_seed(0)
        return {"logits": torch.randn(b, v, generator=g, device=device) * 4}

    def draws():  # the same uniforms every call: fastgen's and the reference's tokens compare
        return torch.Generator(device=device).manual_seed(1)

    def reference(s):
        u = torch.rand(b, device=device, generator=draws())
        rows = [torch.full((b,), x, device=device) for x in (0.8, 50, 0.9, 0.0)]
        rows[1] = rows[1].long()
        return (ref_sampling.sample(s["logits"], u, *rows),)

    peers = {}
    if importlib.util.find_spec("transformers") is not None:
        def warpers(s):
            import transformers as tf

            x = s["logits"]
            for proc in (tf.TemperatureLogitsWarper(0.8), tf.TopKLogitsWarper(50),
                         tf.TopPLogitsWarper(0.9)):
                x = proc(None, x)
            return (torch.multinomial(x.softmax(-1), 1, generator=draws())[:, 0],)
        peers["transformers warpers"] = warpers

    return Case(op="sample", name=f"B{b} V{v} top-k 50 top-p 0.9", device=device,
                dtype=torch.float32, setup=setup,
                fastgen=lambda s: (sample(s["logits"], generator=draws(), backend=backend,
                                          **kw),),
                reference=reference, peers=peers, bytes_moved=b * v * 4, tier=tier,
                backend=backend, inner=4)


def _linear_case(device, m, n, k, tier) -> Case:
    """A decode step's projection: m rows against an [n, k] weight; 200 MB of distinct weights
    per call so that they stream from memory, as in a real step (not from cache)."""
    copies = max(1, 200_000_000 // (n * k * 4))

    def setup():
        g = torch.Generator(device=device).manual_seed(0)
        return {"x": torch.randn(m, k, generator=g, device=device),
                "w": [torch.randn(n, k, generator=g, device=device) for _ in range(copies)]}

    return Case(op="decode_linear", name=f"M{m} weight [{n}, {k}] x{copies}", device=device,
                dtype=torch.float32, setup=setup,
                fastgen=lambda s: tuple(decode_linear(s["x"], w) for w in s["w"]),
                reference=lambda s: tuple(F.linear(s["x"], w) for w in s["w"]),
                bytes_moved=copies * n * k * 4, tier=tier,
                backend=_backend("decode_linear", device))


def _linear_model_case(device, m, tier) -> Case:
    """A whole decode step's projections, in order, for the ~100M Llama below: per layer q, k,
    v, o, gate, up, down, then the lm_head (283 MB of weights, m rows each)."""
    cfg = llama_100m_config()
    h, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * 64
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f)] \
        * cfg.num_hidden_layers + [(cfg.vocab_size, h)]

    def setup():
        g = torch.Generator(device=device).manual_seed(0)
        return {"x": {k: torch.randn(m, k, generator=g, device=device) for k in (h, f)},
                "w": [torch.randn(n, k, generator=g, device=device) for n, k in shapes]}

    return Case(op="decode_linear", name=f"M{m} Llama ~100M step ({len(shapes)} weights)",
                device=device, dtype=torch.float32, setup=setup,
                fastgen=lambda s: tuple(decode_linear(s["x"][w.shape[1]], w) for w in s["w"]),
                reference=lambda s: tuple(F.linear(s["x"][w.shape[1]], w) for w in s["w"]),
                bytes_moved=sum(n * k * 4 for n, k in shapes), tier=tier,
                backend=_backend("decode_linear", device))


def _norm_rope_case(device, b, tier) -> Case:
    """A decode step's RMSNorms (25 of [b, 576]) and rotary embeddings (12 of q [b, 1, 9, 64],
    k [b, 1, 3, 64]) for the ~100M Llama: fastgen's fused ops vs the eager formulas of
    transformers' LlamaRMSNorm and apply_rotary_pos_emb (the reference)."""
    from ..ops.transformer import apply_rotary, rms_norm
    from ..reference import transformer as ref

    def setup():
        g = torch.Generator(device=device).manual_seed(0)
        r = lambda *shape: torch.randn(*shape, generator=g, device=device)  # noqa: E731
        return {"x": r(b, 576), "w": [r(576) for _ in range(25)], "q": r(b, 1, 9, 64),
                "k": r(b, 1, 3, 64), "cos": r(b, 1, 64), "sin": r(b, 1, 64)}

    def run(s, norm, rope):
        out = tuple(norm(s["x"], w, 1e-5) for w in s["w"])
        return out + tuple(t for _ in range(12) for t in rope(s["q"], s["k"], s["cos"],
                                                                s["sin"]))

    return Case(op="rms_norm+apply_rotary", name=f"B{b} decode step: 25 norms, 12 rotary",
                device=device, dtype=torch.float32, setup=setup,
                fastgen=lambda s: run(s, rms_norm, apply_rotary),
                reference=lambda s: run(s, ref.rms_norm, ref.rotary), tier=tier,
                backend=_backend("rms_norm", device))


def llama_100m_config():
    """A Llama-architecture config of about 100M parameters (SmolLM-135M-like shapes, fewer
    layers): 12 layers, hidden 576, 9 q / 3 kv heads (head dim 64), MLP 1536, vocab 49152,
    tied embeddings."""
    import transformers as tf

    return tf.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                          num_hidden_layers=12, num_attention_heads=9, num_key_value_heads=3,
                          max_position_embeddings=2048, tie_word_embeddings=True,
                          rope_theta=10000.0)


def _generate_case(device, b, prompt, new, tier) -> Case:
    from ..generation import generate

    def setup():
        import transformers as tf

        torch.manual_seed(0)
        model = tf.LlamaForCausalLM(llama_100m_config()).to(device).eval()
        model.generation_config.pad_token_id = 0
        model.generation_config.eos_token_id = None  # random weights: never stop early
        ids = torch.randint(3, 49152, (b, prompt), device=device)
        s = {"model": model, "ids": ids}
        ours = run_fastgen(s)[0]
        theirs = run_hf(s)[0]
        if not torch.equal(ours, theirs):
            raise AssertionError("generate bench: fastgen.generate and model.generate differ "
                                 f"in {(ours != theirs).sum().item()} tokens")
        return s

    def run_fastgen(s):
        return (generate(s["model"], s["ids"], max_new_tokens=new),)

    def run_reference(s):
        with use_backend("reference"):
            return run_fastgen(s)

    def run_hf(s):
        with torch.inference_mode():
            return (s["model"].generate(s["ids"], max_new_tokens=new, do_sample=False),)

    return Case(op="generate", name=f"Llama ~100M B{b} prompt {prompt} +{new} greedy",
                device=device, dtype=torch.float32, setup=setup, fastgen=run_fastgen,
                reference=run_reference, peers={"transformers generate": run_hf}, tier=tier,
                backend="cpu" if device == "cpu" else "triton", items=b * new, item="tok")


def cases(device: str) -> list[Case]:
    out = [_decode_case(device, torch.float32, 8, 32, 8, 128, 4096, "quick"),
           _sample_case(device, 8, 32000, "quick"),
           _sample_case(device, 1, 128256, "full")]
    if device == "cpu":
        out += [_linear_case(device, m, n, k, "full") for m in (1, 8)
                for n, k in ((49152, 576), (1536, 576), (576, 1536))]
        out += [_linear_model_case(device, m, "full") for m in (1, 8)]
    out += [_norm_rope_case(device, b, "full") for b in (1, 8)]
    if device == "cuda":
        out.append(_decode_case(device, torch.bfloat16, 8, 32, 8, 128, 16384, "quick"))
    if importlib.util.find_spec("transformers") is not None:
        # prefill-heavy (as many new tokens as prompt tokens) and decode-heavy (4x as many)
        out += [_generate_case(device, b, 32, new, "full") for new in (32, 128) for b in (1, 8)]
    return out

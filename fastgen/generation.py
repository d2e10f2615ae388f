"""fastgen.generate: fast autoregressive generation for Llama-style transformers models.

    import fastgen
    out = fastgen.generate(model, input_ids, attention_mask=mask, max_new_tokens=64)

The model's own modules and weights run the network (embeddings, projections, RMSNorms, MLPs,
rotary tables, lm_head); fastgen replaces what is slow in a token-at-a-time loop:

- prefill packs the prompts' real tokens (no padding) and runs causal varlen
  :func:`fastgen.ops.flash_attention` once;
- decode keeps keys and values in a preallocated :class:`fastgen.nn.KVCache` (per-row lengths,
  written in place) and runs :func:`fastgen.ops.decode_attention` on it;
- the next token comes from :func:`fastgen.ops.sample` (greedy when not sampling);
- RMSNorms and the rotary embedding run :func:`fastgen.ops.rms_norm` and
  :func:`fastgen.ops.apply_rotary` (one fused call each);
- on CPU, a decode step's projections run :func:`fastgen.ops.decode_linear`, which reads each
  weight once at memory bandwidth (a step is bound by reading the weights).

Left-padded batches (transformers' convention for generation) are supported: each row's real
tokens get positions 0, 1, ... as transformers gives them. Greedy output equals
``model.generate(do_sample=False)`` token for token (tests/test_generation.py), returned the same
way: [B, prompt length + new tokens], finished rows padded with pad_token_id.

Supported: model types in :data:`SUPPORTED_MODEL_TYPES` (Llama, Mistral, Qwen2 and models built
on the Llama architecture such as SmolLM) — RoPE (any rope_type transformers implements, since
its rotary module is reused), GQA, RMSNorm, sliding windows (Mistral).
"""

from __future__ import annotations

import numbers
import warnings
from typing import Optional

import torch

from .nn.kv_cache import KVCache
from .ops.attention import flash_attention
from . import registry
from .ops.linear import suits_kernel
from .ops.sampling import sample

__all__ = ["generate", "SUPPORTED_MODEL_TYPES"]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def generate(model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
             max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None,
             min_p: Optional[float] = None, eos_token_id=None, pad_token_id: Optional[int] = None,
             generator: Optional[torch.Generator] = None, streamer=None) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens per row with a transformers causal LM.

    Args:
        model: a transformers ``*ForCausalLM`` of a type in SUPPORTED_MODEL_TYPES.
        input_ids: [B, L] int64 prompts, left-padded when their lengths differ.
        attention_mask: [B, L] 1 for real tokens, 0 for padding (left padding only); None: all
            real.
        max_new_tokens: tokens to generate per row (>= 1).
        do_sample: sample with temperature/top_k/top_p/min_p; False: greedy (as transformers).
        temperature, top_k, top_p, min_p: as :func:`fastgen.ops.sample` (used when do_sample).
        eos_token_id: an id or list of ids that finish a row; default: the model's
            generation_config.eos_token_id.
        pad_token_id: written after a row finished; default: generation_config.pad_token_id,
            else the first eos id.
        generator: torch.Generator for sampling.
        streamer: a transformers streamer (``put``/``end``), e.g. TextStreamer; batch 1.

    Returns:
        [B, L + n] int64: the prompts followed by the generated tokens; n <= max_new_tokens
        (generation stops when every row has finished).

    Only eos_token_id and pad_token_id are read from the model's generation_config; sampling is
    set by this function's arguments. Settings that change even greedy tokens in transformers
    (repetition_penalty, no_repeat_ngram_size, suppress_tokens, min_new_tokens, ...) are not
    applied, and a warning names them when the model's config turns them on.
    """
    runner = _LlamaRunner(model)
    gen_cfg = getattr(model, "generation_config", None)
    _warn_unapplied(gen_cfg)
    ids, mask = _check_inputs(input_ids, attention_mask, runner.device)
    if not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    eos = eos_token_id if eos_token_id is not None else getattr(gen_cfg, "eos_token_id", None)
    eos_ids = [] if eos is None else ([int(eos)] if isinstance(eos, numbers.Integral)
                                      else [int(e) for e in eos])
    if pad_token_id is None:
        pad_token_id = getattr(gen_cfg, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = eos_ids[0] if eos_ids else 0
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p) \
        if do_sample else dict(temperature=0.0)
    b = ids.shape[0]
    lengths = mask.sum(-1)
    with torch.inference_mode():
        cache = KVCache(runner.n_layers, b, runner.n_kv_heads, runner.head_dim,
                        int(lengths.max()) + max_new_tokens, dtype=runner.dtype,
                        device=runner.device)
        if streamer is not None:
            streamer.put(ids.cpu())
        logits = runner.prefill(ids[mask.bool()], lengths, cache)
        done = torch.zeros(b, dtype=torch.bool, device=runner.device)
        eos_t = torch.tensor(eos_ids, dtype=torch.int64, device=runner.device)
        new = []
        for step in range(max_new_tokens):
            tok = sample(logits, generator=generator, **sampling)
            tok = torch.where(done, pad_token_id, tok)
            new.append(tok)
            if streamer is not None:
                streamer.put(tok.cpu())
            if eos_ids:
                done |= torch.isin(tok, eos_t)
                if bool(done.all()):
                    break
            if step + 1 < max_new_tokens:
                logits = runner.step(tok, cache)
        if streamer is not None:
            streamer.end()
    return torch.cat([input_ids, torch.stack(new, 1).to(input_ids.device)], 1)


# generation_config settings that change transformers' tokens (even greedy ones) and that
# fastgen.generate does not apply: (key, value that means "off")
_UNAPPLIED = (("repetition_penalty", 1.0), ("no_repeat_ngram_size", 0), ("suppress_tokens", None),
              ("begin_suppress_tokens", None), ("bad_words_ids", None), ("min_new_tokens", None),
              ("min_length", 0), ("forced_bos_token_id", None), ("forced_eos_token_id", None),
              ("sequence_bias", None), ("encoder_repetition_penalty", 1.0))


def _warn_unapplied(gen_cfg) -> None:
    on = [f"{k}={getattr(gen_cfg, k)!r}" for k, off in _UNAPPLIED
          if gen_cfg is not None and getattr(gen_cfg, k, off) not in (off, None, [], {})]
    if on:
        warnings.warn("fastgen.generate does not apply the model's generation_config "
                      f"{', '.join(on)}; its tokens can differ from model.generate's",
                      stacklevel=3)


def _check_inputs(input_ids, attention_mask, device):
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 \
            or input_ids.dtype not in (torch.int64, torch.int32) or input_ids.shape[1] == 0:
        got = (f"{input_ids.dtype} {list(input_ids.shape)}" if isinstance(input_ids, torch.Tensor)
               else type(input_ids).__name__)
        raise ValueError(f"generate: input_ids must be a [B, L] integer tensor with L >= 1, got "
                         f"{got}")
    ids = input_ids.to(device, torch.int64)
    if attention_mask is None:
        return ids, torch.ones_like(ids)
    if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
        raise ValueError(f"generate: attention_mask must be a tensor of input_ids' shape "
                         f"{list(input_ids.shape)}")
    mask = attention_mask.to(device, torch.int64)
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("generate: attention_mask must hold 0 (padding) and 1 (token)")
    # left padding: once a row's tokens start, they go on to the end
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("generate: attention_mask must be left-padded (zeros before the "
                         "tokens, none after), as transformers' generate expects")
    if bool((mask.sum(-1) == 0).any()):
        raise ValueError("generate: every row of attention_mask needs at least one token")
    return ids, mask


class _LlamaRunner:
    """Runs a transformers Llama-style model's modules with fastgen attention and a KVCache."""

    def __init__(self, model):
        cfg = getattr(model, "config", None)
        kind = getattr(cfg, "model_type", None)
        if kind not in SUPPORTED_MODEL_TYPES:
            raise NotImplementedError(f"generate: model_type {kind!r} is not supported; "
                                      f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        body = getattr(model, "model", None)
        if body is None or not hasattr(model, "lm_head"):
            raise NotImplementedError("generate: expected a *ForCausalLM with .model and "
                                      ".lm_head")
        self.body, self.lm_head = body, model.lm_head
        self.layers = list(body.layers)
        attn = self.layers[0].self_attn
        for extra in ("q_norm", "k_norm"):
            if hasattr(attn, extra):
                raise NotImplementedError(f"generate: attention with {extra} is not supported")
        self.n_layers = len(self.layers)
        self.head_dim = attn.head_dim
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = cfg.num_key_value_heads
        self.scale = attn.scaling
        # per layer (Qwen2 slides only on its "sliding_attention" layers): a window W lets a
        # query see the W keys ending at its own position, left = W - 1 (transformers' masks)
        self.windows = []
        for layer in self.layers:
            w = getattr(layer.self_attn, "sliding_window", None) \
                if hasattr(layer.self_attn, "sliding_window") else getattr(cfg, "sliding_window",
                                                                            None)
            self.windows.append((int(w) - 1, -1) if w else (-1, -1))
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        # decode steps (few rows) stream each weight once through fastgen's CPU kernel, called
        # as the op itself (the public wrapper's checks cost ~10 us a call, 85 calls a step),
        # unless the registry (FASTGEN_BACKEND, registry.use_backend) picks another backend
        self.fast_linear = (self.device.type == "cpu"
                            and self.dtype in (torch.float32, torch.float64)
                            and registry.get("decode_linear").select("cpu").name == "cpu")
        # RMSNorm and rotary embedding run fastgen's fused ops (one call each instead of 7 and
        # 10 eager ops), and decode attention gets its arguments prepared once per step (the
        # public wrappers' checks were ~40 us of each layer's step): each op's backend is
        # chosen by the registry once per generate call, on its first call's arguments (so
        # FASTGEN_BACKEND, use_backend and each backend's dtype/shape checks still apply)
        self._fns = {}
        norms = [body.norm] + [n for layer in self.layers
                               for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        self.fused_norm = all(isinstance(getattr(n, "weight", None), torch.Tensor)
                              and isinstance(getattr(n, "variance_epsilon", None), float)
                              and n.weight.dtype == self.dtype for n in norms)
        mlp = self.layers[0].mlp
        if not all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            raise NotImplementedError("generate: expected a gated MLP (gate_proj, up_proj, "
                                      "down_proj, act_fn)")

    def _lin(self, module, x):
        k = x.shape[-1]
        rows = x.numel() // k
        if self.fast_linear and suits_kernel(rows, k, x.element_size()):
            out = torch.ops.fastgen.decode_linear(x.reshape(rows, k), module.weight, module.bias)
            return out.view(*x.shape[:-1], out.shape[-1])
        return module(x)

    def _op(self, name, *args):
        """Op ``name`` on prepared arguments, through the backend chosen on its first call."""
        fn = self._fns.get(name)
        if fn is None:
            fn = self._fns[name] = registry.get(name).select(self.device.type, args).fn
        return fn(*args)

    def _norm(self, module, x):
        if self.fused_norm:
            shape = x.shape
            return self._op("rms_norm", x.reshape(-1, shape[-1]), module.weight,
                            module.variance_epsilon).view(shape)
        return module(x)

    def _mlp(self, mlp, x):
        return self._lin(mlp.down_proj, mlp.act_fn(self._lin(mlp.gate_proj, x))
                         * self._lin(mlp.up_proj, x))

    def _qkv(self, attn, h):
        """h [N, T, hidden] -> q [N, T, Hq, D], k, v [N, T, Hkv, D] with rotary applied."""
        n, t, _ = h.shape
        q = self._lin(attn.q_proj, h).view(n, t, self.n_heads, self.head_dim)
        k = self._lin(attn.k_proj, h).view(n, t, self.n_kv_heads, self.head_dim)
        v = self._lin(attn.v_proj, h).view(n, t, self.n_kv_heads, self.head_dim)
        q, k = self._op("apply_rotary", q, k, *self._rotary)
        return q, k, v

    def _layer(self, i, h, attend):
        layer = self.layers[i]
        x = self._norm(layer.input_layernorm, h)
        out = attend(i, layer.self_attn, x)
        h = h + self._lin(layer.self_attn.o_proj, out)
        return h + self._mlp(layer.mlp, self._norm(layer.post_attention_layernorm, h))

    def _set_rotary(self, h, positions):
        # [N, T, D], the model's own tables (any rope_type), made contiguous once per forward
        self._rotary = tuple(t.contiguous() for t in self.body.rotary_emb(h, positions))

    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, cache: KVCache):
        """tokens [total] packed real prompt tokens, lengths [B] -> last-token logits [B, V]."""
        b = lengths.shape[0]
        cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        rows = torch.repeat_interleave(torch.arange(b, device=self.device), lengths)
        pos = torch.arange(tokens.shape[0], device=self.device) - cu[:-1].long()[rows]
        h = self.body.embed_tokens(tokens)[None]  # [1, total, hidden]
        self._set_rotary(h, pos[None])
        longest = int(lengths.max())

        def attend(i, attn, x):
            q, k, v = (t[0] for t in self._qkv(attn, x))  # [total, H, D]
            cache.write(i, rows, pos, k, v)
            out = flash_attention(q, k, v, causal=True, window=self.windows[i], scale=self.scale,
                                  cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=longest,
                                  max_seqlen_k=longest)
            return out.reshape(1, -1, self.n_heads * self.head_dim)

        for i in range(self.n_layers):
            h = self._layer(i, h, attend)
        cache.set_lengths(lengths.to(torch.int32))
        last = h[0, cu[1:].long() - 1]
        return self._lin(self.lm_head, self._norm(self.body.norm, last)).float()

    def step(self, tok: torch.Tensor, cache: KVCache):
        """tok [B] -> next logits [B, V]; appends one token per row to the cache."""
        h = self.body.embed_tokens(tok[:, None])  # [B, 1, hidden]
        pos = cache.seqlens.long()
        self._set_rotary(h, pos[:, None])
        rows = torch.arange(tok.shape[0], device=self.device)
        lens = cache.seqlens + 1  # int32: each row's keys once this token is written

        def attend(i, attn, x):
            q, k, v = self._qkv(attn, x)
            # the cache holds max prompt + max_new_tokens per row: no range checks needed
            cache.write(i, rows, pos, k[:, 0], v[:, 0], validate=False)
            # decode_attention's arguments as its wrapper passes them: causal (right = 0), the
            # window's left bound only when it is shorter than the cache
            left = self.windows[i][0] if self.windows[i][0] <= cache.capacity else -1
            out, _ = self._op("decode_attention", q.transpose(1, 2), cache.k[i], cache.v[i],
                              lens, None, float(self.scale), 0.0, left, 0)
            return out.transpose(1, 2).reshape(x.shape[0], 1, -1)

        for i in range(self.n_layers):
            h = self._layer(i, h, attend)
        cache.advance(1)
        return self._lin(self.lm_head, self._norm(self.body.norm, h[:, 0])).float()

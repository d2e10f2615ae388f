"""Hugging Face transformers: run a model's attention on fastgen kernels.

    import fastgen.integrations.transformers as fg_hf
    from transformers import AutoModelForCausalLM

    fg_hf.register()                                   # once; registers "fastgen"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="fastgen")
    model.set_attn_implementation("fastgen")           # or switch a loaded model

Two registrations are needed (../shared/reference/attention.md §7): the attention function in
``transformers.AttentionInterface`` and, under the same name, transformers' ``sdpa_mask`` in
``AttentionMaskInterface``. Without the second, an unknown implementation name is handed
``attention_mask=None`` and padding is silently ignored.

``sdpa_mask`` returns a bool mask [B, 1, Sq, Sk] (True = attend) or, when it can, None: for an
unpadded prefill and for every decode step. A None mask on a causal module with Sq > 1 still
means causal attention, and the function applies it itself (skipping it garbles generation).

transformers is imported only inside :func:`register`; importing this module does not import it.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..ops import attention as _ops_attention
from ..ops.attention import flash_attention, scaled_dot_product_attention

__all__ = ["register", "attention_forward"]


def register(name: str = "fastgen", *, backend: Optional[str] = None) -> str:
    """Make ``attn_implementation=name`` run fastgen attention in transformers models.

    Registers :func:`attention_forward` in ``transformers.AttentionInterface`` and
    ``transformers.masking_utils.sdpa_mask`` in ``AttentionMaskInterface`` under ``name``.
    Calling it again (same or another backend) replaces the earlier registration.

    Args:
        name: the implementation name to pass as ``attn_implementation``.
        backend: force one fastgen backend ("triton", "cpu", "reference") for this name; None
            picks as :func:`fastgen.ops.scaled_dot_product_attention` does (FASTGEN_BACKEND, else
            the best available).

    Returns:
        ``name``.

    Raises:
        ImportError: transformers (>= 5, with ``AttentionMaskInterface``) is not installed.

    Example::

        import torch, fastgen.integrations.transformers as fg_hf
        from transformers import LlamaConfig, LlamaForCausalLM

        fg_hf.register()
        cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        model = LlamaForCausalLM(cfg).eval()
        model.set_attn_implementation("fastgen")
        tokens = model.generate(torch.randint(0, 128, (1, 5)), max_new_tokens=8, do_sample=False)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register: name must be a non-empty string, got {name!r}")
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as e:
        raise ImportError("fastgen.integrations.transformers.register() needs Hugging Face "
                          "transformers >= 5 (AttentionInterface and AttentionMaskInterface): "
                          "pip install 'transformers>=5'") from e
    AttentionInterface.register(name, _forward_for(backend))
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                      scaling: Optional[float] = None, dropout: float = 0.0, **kwargs
                      ) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function on fastgen kernels.

    Args:
        module: the calling attention module; ``module.is_causal`` (default False) and
            ``module.training`` are read.
        query: [B, Hq, Sq, D]; key: [B, Hkv, Sk, D]; value: [B, Hkv, Sk, Dv]; Hq % Hkv == 0
            (grouped-query heads are not expanded).
        attention_mask: None, bool [B or 1, 1 or Hq, Sq, Sk] (True = attend) or an additive
            float mask of that shape.
        scaling: score scale, default 1 / sqrt(D).
        dropout: attention dropout, applied only when ``module.training``.
        **kwargs: ``is_causal`` (overrides ``module.is_causal``), ``sliding_window`` (keys
            within that many positions, self included), ``softcap`` (Gemma 2 score capping) and
            ``position_bias`` (additive [B or 1, Hq, Sq, Sk]) are honoured; ``s_aux``
            (attention sinks) is refused; anything else is ignored.

    Returns:
        (out [B, Sq, Hq, Dv] contiguous, None): attention weights are never materialised.
    """
    return _attention(module, query, key, value, attention_mask, scaling, dropout, None, kwargs)


_FORWARDS: dict[Optional[str], Callable] = {None: attention_forward}


def _forward_for(backend: Optional[str]) -> Callable:
    if backend not in _FORWARDS:
        def forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                    **kwargs):
            return _attention(module, query, key, value, attention_mask, scaling, dropout,
                              backend, kwargs)

        forward.__doc__ = f"{attention_forward.__doc__}\n    Backend: {backend!r}.\n"
        _FORWARDS[backend] = forward
    return _FORWARDS[backend]


def _attention(module, query, key, value, attention_mask, scaling, dropout, backend, kwargs):
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("fastgen attention has no attention sinks (s_aux); use "
                                  "attn_implementation='eager' for this model")
    sq = query.shape[2]
    is_causal = kwargs.get("is_causal")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", False)
    # A mask, when given, already holds the causal pattern; decode (Sq = 1) sees the whole cache.
    causal = bool(is_causal) and attention_mask is None and sq > 1
    if not getattr(module, "training", False):
        dropout = 0.0
    softcap = float(kwargs.get("softcap") or 0.0)
    window = kwargs.get("sliding_window")
    bias = kwargs.get("position_bias")
    mask = attention_mask

    if causal and key.shape[2] > sq:
        # Prefill into an empty static cache: the keys past Sq are unwritten future slots, which
        # top-left causal (sdpa_mask skipped the mask for it) would hide anyway. Cropping them
        # makes Sq == Sk, where every causal alignment agrees (as transformers' sdpa does).
        key, value = key[:, :, :sq], value[:, :, :sq]
        bias = bias[..., :sq] if bias is not None else None
    sk = key.shape[2]
    if mask is not None:
        if mask.shape[-1] > sk:
            mask = mask[..., :sk]  # as eager: a mask made for a longer (static) cache
        if mask.dtype != torch.bool and mask.dtype != query.dtype:
            mask = mask.to(query.dtype)
    if bias is not None:
        mask, causal = _with_position_bias(bias.to(query.dtype), mask, causal, sq, sk), False
    gqa = query.shape[1] != key.shape[1]
    windowed = window is not None and sk > window

    if mask is None and (softcap > 0 or windowed):
        if dropout > 0:
            raise NotImplementedError("fastgen attention: dropout together with softcap or a "
                                      "sliding window is not supported; call model.eval() or use "
                                      "attn_implementation='eager' for training")
        # FlashAttention semantics (bottom-right): a decode step's query is the last position.
        w = window - 1 if windowed else -1
        out = flash_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                              causal=causal, window=(w, w), softcap=softcap, scale=scaling,
                              backend=backend)
        return out.contiguous(), None
    if mask is not None and softcap > 0:
        # Neither public function takes a mask together with softcap; the op underneath both
        # does (internal form: q [B, Hq, Sq, D], mask expanded to [B, Hq, Sq, Sk]).
        scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
        full = mask.expand(query.shape[0], query.shape[1], sq, sk)
        out, _ = _ops_attention._dispatch(query, key, value, full, None, None, sq, sk, scale,
                                          -1, -1, False, softcap, float(dropout), False, backend)
        return out.transpose(1, 2).contiguous(), None
    out = scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout,
                                       is_causal=causal, scale=scaling, enable_gqa=gqa,
                                       backend=backend)
    return out.transpose(1, 2).contiguous(), None


def _with_position_bias(bias, mask, causal, sq, sk):
    """One additive mask from a position bias and the attention mask, as transformers' sdpa
    (masked scores get finfo.min, so a fully masked row averages instead of giving 0)."""
    low = torch.finfo(bias.dtype).min
    if mask is None:
        if not causal:
            return bias
        i = torch.arange(sq, device=bias.device)[:, None]
        mask = i >= torch.arange(sk, device=bias.device)[None, :]
    if mask.dtype == torch.bool:
        return torch.where(mask, bias, torch.tensor(low, dtype=bias.dtype, device=bias.device))
    return bias + mask

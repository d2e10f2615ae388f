"""``MultiheadAttention``: a drop-in for ``torch.nn.MultiheadAttention`` on fastgen's attention.

Same constructor, parameters (so the same ``state_dict`` keys and the same random init for the
same seed), forward signature and results as torch's module. With ``need_weights=False`` the
attention itself runs through :func:`fastgen.ops.scaled_dot_product_attention`; with
``need_weights=True`` (torch's default) the call goes to
``torch.nn.functional.multi_head_attention_forward`` with this module's parameters, since the
weights must be materialised anyway and torch's result is then reproduced bit for bit.

Mask conventions are torch MHA's, which are the opposite of SDPA's for booleans:

    key_padding_mask  [N, S] (unbatched: [S])       bool True = ignore this key, or additive float
    attn_mask         [L, S] or [N * num_heads, L, S]  bool True = NOT allowed, or additive float

Both are merged into one mask for SDPA: bool with bool stays bool (``allowed = ~(kpm | am)``),
anything else becomes additive float (bool True -> -inf), exactly as torch merges them.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ..ops.attention import scaled_dot_product_attention

__all__ = ["MultiheadAttention"]


class MultiheadAttention(nn.Module):
    """Multi-head attention (Attention Is All You Need), as ``torch.nn.MultiheadAttention``.

    ``out = out_proj(concat_h softmax(q_h k_h^T / sqrt(head_dim) + mask) v_h)`` with ``q, k, v``
    the input projections of query, key and value.

    Args:
        embed_dim: E, the model dimension (query features and output features).
        num_heads: heads; E must be divisible by it (head_dim = E // num_heads).
        dropout: dropout probability on the attention weights, applied in training only.
        bias: add biases to the input and output projections.
        add_bias_kv: append a learned key and value (``bias_k``, ``bias_v``) to every sequence.
        add_zero_attn: append a zero key and value (after projection) to every sequence.
        kdim, vdim: key / value feature sizes (default E); when either differs from E the
            projections are the separate ``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``
            instead of one packed ``in_proj_weight``.
        batch_first: inputs and outputs are [N, L, E] instead of [L, N, E].
        device, dtype: where and how to allocate the parameters.
        backend: fastgen only, keyword-only: force one attention backend ("triton", "cpu",
            "reference"); None picks the best available.

    Errors on malformed inputs are raised with torch's exception types (AssertionError for
    shapes, RuntimeError for mask sizes), so code written against torch's module sees the same.
    """

    __constants__ = ["batch_first"]
    bias_k: Optional[torch.Tensor]
    bias_v: Optional[torch.Tensor]

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False,
                 kdim: Optional[int] = None, vdim: Optional[int] = None,
                 batch_first: bool = False, device=None, dtype=None, *,
                 backend: Optional[str] = None) -> None:
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"MultiheadAttention: embed_dim and num_heads must be > 0, got "
                             f"embed_dim={embed_dim} and num_heads={num_heads}")
        if embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({embed_dim}) must be divisible by "
                             f"num_heads ({num_heads})")
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        self.backend = backend

        # Parameters are created in torch's order: out_proj's own init draws from the global RNG,
        # so the same seed gives the same weights as torch.nn.MultiheadAttention.
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **factory))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **factory))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **factory))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **factory))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **factory))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias, **factory)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **factory))
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """torch's init: Xavier-uniform projections, zero biases, Xavier-normal bias_k/bias_v."""
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
        if self.bias_v is not None:
            nn.init.xavier_normal_(self.bias_v)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor] = None, need_weights: bool = True,
                attn_mask: Optional[torch.Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Attention of query over key/value; arguments and results as torch's module.

        Args:
            query: [L, N, E] ([N, L, E] if batch_first), or unbatched [L, E].
            key: [S, N, kdim] ([N, S, kdim]), or [S, kdim]; value: the same with vdim.
            key_padding_mask: [N, S] (unbatched [S]); bool True = ignore that key, or float
                added to the scores.
            need_weights: also return the attention weights (runs torch's own implementation);
                pass False for the fastgen kernel.
            attn_mask: [L, S] or [N * num_heads, L, S]; bool True = not allowed, or float added
                to the scores.
            average_attn_weights: average the returned weights over heads.
            is_causal: hint that attn_mask is the causal mask; as in torch it requires
                attn_mask, and without key_padding_mask (and need_weights=False) the causal
                pattern (top-left) is applied instead of attn_mask.

        Returns:
            (attn_output like query, weights [N, L, S] / [N, num_heads, L, S] or None). Query
            rows that may attend no key give attention 0 (output = out_proj bias), as torch's
            SDPA path; with need_weights=True torch returns NaN there.
        """
        if query.is_nested or key.is_nested or value.is_nested:
            raise AssertionError("MultiheadAttention does not support NestedTensor inputs")
        if need_weights:
            return self._torch_forward(query, key, value, key_padding_mask, attn_mask,
                                       average_attn_weights, is_causal)
        return self._fast_forward(query, key, value, key_padding_mask, attn_mask, is_causal), None

    # --- need_weights=True: torch's implementation -------------------------------------------

    def _torch_forward(self, query, key, value, key_padding_mask, attn_mask, average_attn_weights,
                       is_causal):
        batched = query.dim() == 3
        if self.batch_first and batched:
            # Keep `is` identities: torch's in-projection takes a one-matmul path on them.
            if key is value:
                if query is key:
                    query = key = value = query.transpose(0, 1)
                else:
                    query, key = query.transpose(0, 1), key.transpose(0, 1)
                    value = key
            else:
                query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        separate = {}
        if not self._qkv_same_embed_dim:
            separate = dict(use_separate_proj_weight=True, q_proj_weight=self.q_proj_weight,
                            k_proj_weight=self.k_proj_weight, v_proj_weight=self.v_proj_weight)
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight,
            self.in_proj_bias, self.bias_k, self.bias_v, self.add_zero_attn, self.dropout,
            self.out_proj.weight, self.out_proj.bias, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=True, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal, **separate)
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        return out, weights

    # --- need_weights=False: fastgen SDPA --------------------------------------------------------

    def _fast_forward(self, query, key, value, key_padding_mask, attn_mask, is_causal):
        batched = _check_shapes(query, key, value, key_padding_mask, attn_mask)
        for name, x, d in (("query", query, self.embed_dim), ("key", key, self.kdim),
                           ("value", value, self.vdim)):
            if x.shape[-1] != d:
                raise AssertionError(f"MultiheadAttention: expected {name} with {d} features "
                                     f"(last dim), got shape {list(x.shape)}")
        if key.shape[:-1] != value.shape[:-1]:
            raise AssertionError(f"MultiheadAttention: key and value must have the same "
                                 f"sequence and batch dims, got {list(key.shape)} and "
                                 f"{list(value.shape)}")
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the "
                               "Transformer module method `generate_square_subsequent_mask` to "
                               "create this mask.")
        # As torch: the hint replaces attn_mask by SDPA's is_causal unless a padding mask must
        # be merged into it.
        causal = bool(is_causal) and key_padding_mask is None
        if causal:
            attn_mask = None

        q, k, v = self._project(query, key, value)
        # To [N, L, E] views: the projections ran in the input's own layout (no copies).
        if not batched:
            q, k, v = q[None], k[None], v[None]
        elif not self.batch_first:
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        n, tgt_len, src_len = q.shape[0], q.shape[1], k.shape[1]
        extra = 0
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.expand(n, 1, -1).to(k.dtype)], dim=1)
            v = torch.cat([v, self.bias_v.expand(n, 1, -1).to(v.dtype)], dim=1)
            extra += 1
        elif self.bias_k is not None or self.bias_v is not None:
            raise AssertionError("MultiheadAttention: bias_k and bias_v must both be set or "
                                 "both be None")
        h, d = self.num_heads, self.head_dim
        q, k, v = (t.unflatten(-1, (h, d)).transpose(1, 2) for t in (q, k, v))  # [N, H, *, D]
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(n, h, 1, d)], dim=2)
            v = torch.cat([v, v.new_zeros(n, h, 1, d)], dim=2)
            extra += 1

        mask = _merge(key_padding_mask, attn_mask, n, h, tgt_len, src_len, extra, q.dtype,
                      batched)
        dropout_p = self.dropout if self.training else 0.0
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                           is_causal=causal, backend=self.backend)
        if not batched:
            out = out[0].transpose(0, 1).reshape(tgt_len, self.embed_dim)
        elif self.batch_first:
            out = out.transpose(1, 2).reshape(n, tgt_len, self.embed_dim)
        else:
            out = out.permute(2, 0, 1, 3).reshape(tgt_len, n, self.embed_dim)
        return F.linear(out, self.out_proj.weight, self.out_proj.bias)

    def _project(self, query, key, value):
        """The three input projections; one matmul when query, key and value are one tensor
        (self-attention) and one for key and value when those are (encoder-decoder)."""
        e = self.embed_dim
        w, b = self.in_proj_weight, self.in_proj_bias
        bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
        if not self._qkv_same_embed_dim:
            return (F.linear(query, self.q_proj_weight, bq), F.linear(key, self.k_proj_weight, bk),
                    F.linear(value, self.v_proj_weight, bv))
        if key is value and query is key:
            return F.linear(query, w, b).unflatten(-1, (3, e)).unbind(-2)
        if key is value:
            kv = F.linear(key, w[e:], b[e:] if b is not None else None)
            k, v = kv.unflatten(-1, (2, e)).unbind(-2)
            return F.linear(query, w[:e], bq), k, v
        return (F.linear(query, w[:e], bq), F.linear(key, w[e:2 * e], bk),
                F.linear(value, w[2 * e:], bv))

    def merge_masks(self, attn_mask: Optional[torch.Tensor],
                    key_padding_mask: Optional[torch.Tensor], query: torch.Tensor
                    ) -> tuple[Optional[torch.Tensor], Optional[int]]:
        """torch's ``MultiheadAttention.merge_masks`` (used by ``TransformerEncoderLayer``'s
        inference fast path): masks of self-attention over query [N, L, E], already additive.

        Returns (mask, type): (None, None); (key_padding_mask, 1); or (attn_mask [+ padding
        mask] expanded to [N, num_heads, L, L], 2).
        """
        if attn_mask is None:
            return (key_padding_mask, 1) if key_padding_mask is not None else (None, None)
        n, seq_len, _ = query.shape
        if attn_mask.dim() == 3:
            merged = attn_mask.view(n, -1, seq_len, seq_len)
        else:
            merged = attn_mask.view(1, 1, seq_len, seq_len).expand(n, self.num_heads, -1, -1)
        if key_padding_mask is not None:
            merged = merged + key_padding_mask.view(n, 1, 1, seq_len).expand(
                -1, self.num_heads, -1, -1)
        return merged, 2

    def extra_repr(self) -> str:
        """The constructor arguments that differ from their defaults."""
        parts = [f"embed_dim={self.embed_dim}", f"num_heads={self.num_heads}"]
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        if not self._qkv_same_embed_dim:
            parts.append(f"kdim={self.kdim}, vdim={self.vdim}")
        if self.bias_k is not None:
            parts.append("add_bias_kv=True")
        if self.add_zero_attn:
            parts.append("add_zero_attn=True")
        if self.batch_first:
            parts.append("batch_first=True")
        if self.backend is not None:
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)


def _check_shapes(query, key, value, key_padding_mask, attn_mask) -> bool:
    """torch's MHA rank rules; returns whether the input is batched."""
    if query.dim() not in (2, 3):
        raise AssertionError(f"MultiheadAttention: query must be [L, E] (unbatched) or 3-D "
                             f"(batched), got a {query.dim()}-D tensor")
    batched = query.dim() == 3
    if key.dim() != query.dim() or value.dim() != query.dim():
        raise AssertionError(f"MultiheadAttention: for a {query.dim()}-D query, key and value "
                             f"must be {query.dim()}-D too, got {key.dim()}-D and "
                             f"{value.dim()}-D")
    if key_padding_mask is not None and key_padding_mask.dim() != query.dim() - 1:
        raise AssertionError(f"MultiheadAttention: for a {query.dim()}-D query, key_padding_mask "
                             f"must be {query.dim() - 1}-D, got {key_padding_mask.dim()}-D")
    if attn_mask is not None and attn_mask.dim() not in (2, 3):
        raise AssertionError(f"MultiheadAttention: attn_mask must be 2-D or 3-D, got "
                             f"{attn_mask.dim()}-D")
    for name, m in (("key_padding_mask", key_padding_mask), ("attn_mask", attn_mask)):
        if m is not None and m.dtype != torch.bool and not m.is_floating_point():
            raise AssertionError(f"MultiheadAttention: only bool and floating {name} are "
                                 f"supported, got {m.dtype}")
    return batched


def _merge(key_padding_mask, attn_mask, n, h, tgt_len, src_len, extra, dtype, batched):
    """One mask for SDPA, broadcastable to [N, H, L, S + extra]: bool (True = attend) when every
    given mask is bool, else additive float in ``dtype``. ``extra`` appended keys (bias_kv,
    zero_attn) are visible to every query, as torch pads its masks with zeros."""
    kpm = am = None
    if key_padding_mask is not None:
        kpm = key_padding_mask if batched else key_padding_mask[None]
        if kpm.shape != (n, src_len):
            raise AssertionError(f"MultiheadAttention: expected key_padding_mask of shape "
                                 f"{[n, src_len] if batched else [src_len]}, got "
                                 f"{list(key_padding_mask.shape)}")
        kpm = kpm.view(n, 1, 1, src_len)
    if attn_mask is not None:
        if attn_mask.dim() == 2:
            if attn_mask.shape != (tgt_len, src_len):
                raise RuntimeError(f"The shape of the 2D attn_mask is {tuple(attn_mask.shape)}, "
                                   f"but should be {(tgt_len, src_len)}.")
            am = attn_mask
        else:
            if attn_mask.shape != (n * h, tgt_len, src_len):
                raise RuntimeError(f"The shape of the 3D attn_mask is {tuple(attn_mask.shape)}, "
                                   f"but should be {(n * h, tgt_len, src_len)}.")
            am = attn_mask.view(n, h, tgt_len, src_len)
    given = [m for m in (kpm, am) if m is not None]
    if not given:
        return None
    if kpm is not None and am is not None and kpm.dtype != am.dtype:
        warnings.warn("Support for mismatched key_padding_mask and attn_mask is deprecated. Use "
                      "same type for both instead.", stacklevel=6)
    if all(m.dtype == torch.bool for m in given):
        blocked = given[0] if len(given) == 1 else given[0] | given[1]
        return F.pad(~blocked, (0, extra), value=True) if extra else ~blocked
    merged = None
    for m in given:
        m = (torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(m, -math.inf)
             if m.dtype == torch.bool else m.to(dtype))
        merged = m if merged is None else merged + m
    return F.pad(merged, (0, extra)) if extra else merged

"""A small decoder-only transformer (Llama-style) built on fastgen ops, and its training loop.

    model = GPT(GPTConfig(vocab_size=256))
    loss = model.loss(tokens)                                  # training: causal flash attention
    out = model.generate(prompt, max_new_tokens=200, top_k=40) # KVCache + decode attention + sample

Blocks: RMSNorm → attention (RoPE, grouped-query heads, :func:`fastgen.ops.flash_attention`,
causal) → residual → RMSNorm → SwiGLU MLP → residual; tied input/output embeddings. Generation
prefills the prompt with flash attention, then decodes one token at a time from a
:class:`fastgen.nn.KVCache` with :func:`fastgen.ops.decode_attention` and
:func:`fastgen.ops.sample`, its RMSNorms and rotary embedding as :func:`fastgen.ops.rms_norm`
and :func:`fastgen.ops.apply_rotary`; on CPU the decode step's projections run
:func:`fastgen.ops.decode_linear`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.kv_cache import KVCache
from ..ops.attention import flash_attention
from ..ops.linear import decode_linear, suits_kernel
from ..ops.sampling import sample
from ..ops.transformer import apply_rotary, rms_norm
from ..reference.transformer import rotate_half

__all__ = ["GPTConfig", "GPT", "GPTTrainResult", "train_gpt"]


@dataclass
class GPTConfig:
    """Shapes of :class:`GPT`. dim must be divisible by n_heads, n_heads by n_kv_heads."""

    vocab_size: int = 256
    dim: int = 192
    n_layers: int = 4
    n_heads: int = 6
    n_kv_heads: int = 2
    hidden: int = 512          # SwiGLU width
    max_len: int = 512         # longest sequence (RoPE table, cache default)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "hidden",
                     "max_len"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"GPTConfig: {name} must be an int >= 1, got "
                                 f"{getattr(self, name)!r}")
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"GPTConfig: dim ({self.dim}) must be divisible by n_heads "
                             f"({self.n_heads}), and n_heads by n_kv_heads ({self.n_kv_heads})")
        if (self.dim // self.n_heads) % 2:
            raise ValueError("GPTConfig: the head dim (dim / n_heads) must be even for RoPE")


def _rope_tables(cfg: GPTConfig):
    d = cfg.dim // cfg.n_heads
    inv = 1.0 / cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(cfg.max_len, dtype=torch.float64)[:, None] * inv[None]
    ang = torch.cat([ang, ang], -1)
    return ang.cos().float(), ang.sin().float()


def _rope(x, cos, sin):
    """x [..., T, D] with cos/sin [..., T, D] (rotate-half convention, as Llama; training and
    prefill, where autograd needs it differentiable)."""
    return x * cos + rotate_half(x) * sin


class _Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.dim // cfg.n_heads
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.qkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * hd, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.mlp_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.gate_up = nn.Linear(cfg.dim, 2 * cfg.hidden, bias=False)
        self.down = nn.Linear(cfg.hidden, cfg.dim, bias=False)

    def _split(self, qkv, b, t):
        cfg, hd = self.cfg, self.cfg.dim // self.cfg.n_heads
        q, k, v = qkv.split([cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.n_kv_heads * hd], -1)
        return (q.view(b, t, cfg.n_heads, hd), k.view(b, t, cfg.n_kv_heads, hd),
                v.view(b, t, cfg.n_kv_heads, hd))

    def _mlp(self, x, lin):
        g, u = lin(self.gate_up, x).chunk(2, -1)
        return lin(self.down, F.silu(g) * u)

    def forward(self, x, cos, sin):
        """Training / prefill: x [B, T, dim], cos/sin [T, hd] -> ([B, T, dim], k, v [B, T, Hkv,
        hd])."""
        b, t, _ = x.shape
        q, k, v = self._split(self.qkv(self.attn_norm(x)), b, t)
        q, k = _rope(q.transpose(1, 2), cos, sin), _rope(k.transpose(1, 2), cos, sin)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        a = flash_attention(q, k, v, causal=True)
        x = x + self.proj(a.reshape(b, t, -1))
        return x + self._mlp(self.mlp_norm(x), lambda m, h: m(h)), k, v

    def step(self, x, cos, sin, cache: KVCache, layer: int, lin):
        """Decode: x [B, 1, dim], cos/sin [B, hd] at each row's position (fused RMSNorm and
        rotary ops: one call each)."""
        b = x.shape[0]
        q, k, v = self._split(lin(self.qkv, _norm(self.attn_norm, x)), b, 1)
        q, k = apply_rotary(q, k, cos[:, None], sin[:, None])  # [B, 1, H, hd]
        cache.append(layer, k.transpose(1, 2), v.transpose(1, 2))
        a = cache.attend(layer, q.transpose(1, 2), validate=False)  # [B, H, 1, hd]
        x = x + lin(self.proj, a.transpose(1, 2).reshape(b, 1, -1))
        return x + self._mlp(_norm(self.mlp_norm, x), lin)


def _norm(module: nn.RMSNorm, x):
    """fastgen.ops.rms_norm with an nn.RMSNorm's weight and eps (None: the eps of the dtype
    computed in, float32 for half types, as torch's)."""
    eps = module.eps
    if eps is None:
        eps = torch.finfo(torch.float32 if x.dtype in (torch.float16, torch.bfloat16)
                          else x.dtype).eps
    return rms_norm(x, module.weight, eps)


class GPT(nn.Module):
    """Decoder-only transformer; see the module docstring. ``forward(tokens)`` -> logits."""

    def __init__(self, cfg: Optional[GPTConfig] = None):
        super().__init__()
        self.cfg = cfg = cfg or GPTConfig()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        cos, sin = _rope_tables(cfg)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.apply(self._init)
        for blk in self.blocks:  # scaled residual projections (GPT-2)
            for lin in (blk.proj, blk.down):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def _logits(self, h):
        return F.linear(self.norm(h), self.embed.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] int64 (T <= max_len) -> logits [B, T, vocab]."""
        b, t = self._check_tokens(tokens)
        h = self.embed(tokens)
        for blk in self.blocks:
            h, _, _ = blk(h, self.cos[:t], self.sin[:t])
        return self._logits(h)

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy of tokens [B, T + 1]."""
        logits = self(tokens[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    def _check_tokens(self, tokens):
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 \
                or tokens.dtype not in (torch.int64, torch.int32):
            got = (f"{tokens.dtype} {list(tokens.shape)}" if isinstance(tokens, torch.Tensor)
                   else type(tokens).__name__)
            raise ValueError(f"GPT: tokens must be a [B, T] integer tensor, got {got}")
        b, t = tokens.shape
        if not 1 <= t <= self.cfg.max_len:
            raise ValueError(f"GPT: sequence length must be in [1, {self.cfg.max_len}], got {t}")
        return b, t

    @torch.inference_mode()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Continue prompt [B, T] by max_new_tokens tokens (temperature 0: greedy) ->
        [B, T + max_new_tokens]."""
        b, t = self._check_tokens(prompt)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1 \
                or t + max_new_tokens > self.cfg.max_len:
            raise ValueError(f"GPT.generate: max_new_tokens must be >= 1 with prompt + new <= "
                             f"max_len ({self.cfg.max_len}), got {max_new_tokens!r} after {t}")
        cfg = self.cfg
        dev = prompt.device
        fast = dev.type == "cpu" and self.embed.weight.dtype == torch.float32
        lin = _fast if fast else _plain
        cache = KVCache(cfg.n_layers, b, cfg.n_kv_heads, cfg.dim // cfg.n_heads,
                        t + max_new_tokens, dtype=self.embed.weight.dtype, device=dev)
        h = self.embed(prompt)
        for i, blk in enumerate(self.blocks):
            h, k, v = blk(h, self.cos[:t], self.sin[:t])
            cache.append(i, k.transpose(1, 2), v.transpose(1, 2))
        cache.advance(t)
        logits = self._logits(h[:, -1])
        out = [prompt]
        for step in range(max_new_tokens):
            tok = sample(logits.float(), temperature=temperature, top_k=top_k, top_p=top_p,
                         generator=generator)
            out.append(tok[:, None])
            if step + 1 == max_new_tokens:
                break
            pos = cache.seqlens.long()
            h = self.embed(tok[:, None])
            for i, blk in enumerate(self.blocks):
                h = blk.step(h, self.cos[pos], self.sin[pos], cache, i, lin)
            cache.advance(1)
            logits = lin(_Tied(self.embed.weight), _norm(self.norm, h[:, 0]))
        return torch.cat(out, 1)


class _Tied:
    """The output projection's weight (the embedding) where a Linear is expected."""

    def __init__(self, weight):
        self.weight, self.bias = weight, None


def _fast(module, x):
    if suits_kernel(x.numel() // x.shape[-1], x.shape[-1], x.element_size()):
        return decode_linear(x, module.weight, module.bias)
    return F.linear(x, module.weight, module.bias)


def _plain(module, x):
    return F.linear(x, module.weight, module.bias)


@dataclass
class GPTTrainResult:
    steps: int
    seconds: float
    loss: float
    tokens_per_s: float


def train_gpt(model: GPT, data: torch.Tensor, *, seconds: float = 120.0,
              steps: Optional[int] = None, batch_size: int = 16, seq_len: int = 128,
              lr: float = 3e-3, generator: Optional[torch.Generator] = None,
              progress: Optional[Callable[[int, float, float, float], None]] = None,
              every: int = 25) -> GPTTrainResult:
    """AdamW on random windows of data [N] (token ids) until ``seconds`` or ``steps``; calls
    progress(step, seconds, loss, tokens/s) every ``every`` steps. Cosine learning-rate decay
    over the step budget when ``steps`` is given, else over the time budget."""
    if data.ndim != 1 or data.numel() <= seq_len + 1:
        raise ValueError(f"train_gpt: data must be 1-D with more than seq_len + 1 = "
                         f"{seq_len + 1} tokens, got {list(data.shape)}")
    if seq_len > model.cfg.max_len:
        raise ValueError(f"train_gpt: seq_len ({seq_len}) > the model's max_len "
                         f"({model.cfg.max_len})")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    model.train()
    t0 = time.perf_counter()
    step, loss_avg = 0, float("nan")
    offsets = torch.arange(seq_len + 1)
    while True:
        elapsed = time.perf_counter() - t0
        if (steps is not None and step >= steps) or (steps is None and elapsed >= seconds):
            break
        frac = step / steps if steps else min(1.0, elapsed / seconds)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * frac))
        start = torch.randint(0, data.numel() - seq_len - 1, (batch_size,), generator=generator)
        batch = data[start[:, None] + offsets].to(model.embed.weight.device)
        loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        value = loss.item()
        loss_avg = value if step == 1 else 0.9 * loss_avg + 0.1 * value
        if progress is not None and step % every == 0:
            s = time.perf_counter() - t0
            progress(step, s, loss_avg, step * batch_size * seq_len / s)
    model.eval()
    s = time.perf_counter() - t0
    return GPTTrainResult(step, s, loss_avg, step * batch_size * seq_len / max(s, 1e-9))

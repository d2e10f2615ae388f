"""Reference token sampling: temperature, top-k, top-p and min-p filtering by a full sort.

For one row of logits ``l`` [V] with temperature T > 0 (T = 0 means greedy: the first index of
the largest logit):

    x   = (l − max l) / T                     scaled logits, max 0 (float32; float64 for float64)
    w_i = exp(x_i)                            unnormalised probabilities, max w = 1
    top_k:  keep i  iff  x_i >= (k-th largest x)           ties with the k-th value are kept
    top_p:  keep i  iff  Σ_{j kept by top_k, x_j > x_i} w_j  <  p · Σ_{j kept by top_k} w_j
    min_p:  keep i  iff  w_i >= min_p                      (p_i >= min_p · max p)

These are transformers' TopK/TopP/MinP logits warpers applied in that order (temperature first):
top-p keeps the smallest prefix of the descending order whose mass reaches p (the token that
crosses p stays), min-p compares with the most likely token, which top-k and top-p never remove.
Every rule is a threshold on x, so ties are kept or dropped together and the result does not
depend on a sort order. The filtered distribution is ``w · keep`` normalised.

A draw takes one uniform u in [0, 1) per row and inverts the CDF in index order: the token is the
first i with ``cumsum(w · keep)_i > u · Σ w · keep``. Every backend draws this way, so the same u
gives the same token (up to the rounding of the sums) — and tests can compare tokens, not only
distributions.
"""

from __future__ import annotations

import torch

__all__ = ["filtered_weights", "sample"]


def filtered_weights(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                     top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Unnormalised filtered probabilities ``w · keep``.

    Args:
        logits: [B, V] float; temperature [B] (> 0; a 0 row is treated as 1 here), top_k [B]
            int64 in [1, V], top_p [B] in (0, 1], min_p [B] in [0, 1].

    Returns:
        [B, V] in float32 (float64 for float64 logits); row maxima are 1.
    """
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    t = torch.where(temperature > 0, temperature, 1).to(dtype)
    lf = logits.to(dtype)
    x = (lf - lf.amax(-1, keepdim=True)) / t[:, None]  # = l/T − max(l/T), without overflow
    w = torch.exp(x)
    s, _ = x.sort(-1, descending=True)
    kth = s.gather(-1, (top_k.clamp(1, x.shape[-1]) - 1)[:, None])
    keep = x >= kth
    wk = w * keep
    # mass strictly above each token: the exclusive cumsum of the sorted kept weights, read at
    # the count of strictly larger values (so tied tokens see the same mass)
    ws = torch.exp(s - s[:, :1]) * (s >= kth)
    mass = torch.nn.functional.pad(ws.cumsum(-1), (1, 0))
    n_greater = torch.searchsorted(-s.contiguous(), -x.contiguous(), side="left")
    above = mass.gather(-1, n_greater)
    keep &= above < top_p.to(dtype)[:, None] * wk.sum(-1, keepdim=True)
    keep &= w >= min_p.to(dtype)[:, None]
    return w * keep


def sample(logits: torch.Tensor, u: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
           top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Draw one token per row (see the module docstring); u: [B] uniforms in [0, 1).

    Returns:
        [B] int64 token ids.
    """
    w = filtered_weights(logits, temperature, top_k, top_p, min_p)
    c = w.cumsum(-1)
    target = u.to(c.dtype)[:, None] * c[:, -1:]
    tok = torch.searchsorted(c, target, right=True)[:, 0]
    last = torch.arange(w.shape[-1], device=w.device).mul((w > 0)).amax(-1)
    tok = torch.minimum(tok, last)  # u · total rounding up to the total
    greedy = logits.argmax(-1)
    return torch.where(temperature == 0, greedy, tok)

"""Static and paged KV caches for autoregressive decoding with :func:`fastgen.ops.decode_attention`.

Both preallocate every layer's keys and values once and write new tokens in place (no
``torch.cat``, no reallocation while generating). Each batch row keeps its own length, so rows
with prompts of different lengths share one cache. One decode step, per layer:

    cache.append(layer, k, v)            # k, v: [B, Hkv, T, D], written at each row's length
    out = cache.attend(layer, q)         # q: [B, Hq, T, D]; sees the cache and the T new keys
    ...
    cache.advance(T)                     # once, after the last layer

The layouts are the ones decode_attention reads: :class:`KVCache` holds [B, Hkv, max_len, D] per
layer; :class:`PagedKVCache` holds pages [num_pages, Hkv, page_size, D] per layer and a block
table [B, max_pages] mapping each row's logical pages to physical ones (pages are taken from a
free list as rows grow and returned by :meth:`PagedKVCache.release`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..ops.decode import decode_attention

__all__ = ["KVCache", "PagedKVCache"]


class _Cache:
    """Shared state and methods; subclasses say where a (row, position) lives."""

    def __init__(self, n_layers, batch_size, n_kv_heads, head_dim, v_head_dim, dtype, device):
        for name, value in (("n_layers", n_layers), ("batch_size", batch_size),
                            ("n_kv_heads", n_kv_heads), ("head_dim", head_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be an int >= 1, got "
                                 f"{value!r}")
        self.n_layers, self.batch_size, self.n_kv_heads = n_layers, batch_size, n_kv_heads
        self.head_dim = head_dim
        self.v_head_dim = v_head_dim or head_dim
        self.dtype, self.device = dtype, torch.device(device)
        self.seqlens = torch.zeros(batch_size, dtype=torch.int32, device=self.device)
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    capacity: int

    def _slots(self, rows: torch.Tensor, pos: torch.Tensor):
        raise NotImplementedError

    def _block_table(self) -> Optional[torch.Tensor]:
        return None

    def _check_layer(self, layer):
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise IndexError(f"{type(self).__name__}: layer must be in [0, {self.n_layers}), "
                             f"got {layer!r}")

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write k [B, Hkv, T, D], v [B, Hkv, T, Dv] at positions seqlens[b] .. + T - 1 of each
        row (the lengths move only with :meth:`advance`)."""
        self._check_layer(layer)
        b, _, t, _ = k.shape
        if b != self.batch_size or k.shape[1] != self.n_kv_heads or k.shape[3] != self.head_dim:
            raise ValueError(f"{type(self).__name__}.append: k must be [{self.batch_size}, "
                             f"{self.n_kv_heads}, T, {self.head_dim}], got {list(k.shape)}")
        if v.shape != (*k.shape[:3], self.v_head_dim):
            raise ValueError(f"{type(self).__name__}.append: v must be "
                             f"{[*k.shape[:3], self.v_head_dim]}, got {list(v.shape)}")
        pos = self.seqlens.long()[:, None] + torch.arange(t, device=self.device)
        rows = torch.arange(b, device=self.device)[:, None].expand(b, t)
        self._write(layer, rows.reshape(-1), pos.reshape(-1),
                    k.transpose(1, 2).reshape(-1, k.shape[1], k.shape[3]),
                    v.transpose(1, 2).reshape(-1, v.shape[1], v.shape[3]))

    def write(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor, *, validate: bool = True) -> None:
        """Write packed tokens: k [N, Hkv, D], v [N, Hkv, Dv] at (rows[i], positions[i]) — a
        ragged prefill, or a decode step's token per row, in one call. Lengths are set with
        :meth:`set_lengths` (or :meth:`advance`). validate=False skips the range checks of rows
        and positions (host synchronisations) for callers that sized the cache themselves."""
        self._check_layer(layer)
        self._write(layer, rows.long(), positions.long(), k, v, validate)

    def _write(self, layer, rows, pos, k, v, validate=True):
        if validate and pos.numel() and not torch.compiler.is_compiling():
            if int(pos.max()) >= self.capacity:
                raise ValueError(f"{type(self).__name__}: writing position {int(pos.max())} but "
                                 f"the capacity is {self.capacity} tokens per row")
            if int(pos.min()) < 0 or int(rows.min()) < 0 or int(rows.max()) >= self.batch_size:
                raise ValueError(f"{type(self).__name__}: rows must be in [0, {self.batch_size})"
                                 " and positions >= 0")
        i0, i2 = self._slots(rows, pos)
        self.k[layer][i0, :, i2] = k.to(self.dtype)
        self.v[layer][i0, :, i2] = v.to(self.dtype)

    def advance(self, n: int = 1) -> None:
        """Count n more tokens in every row (after all layers appended them)."""
        self.seqlens += n

    def set_lengths(self, lengths: torch.Tensor) -> None:
        """Set each row's length (after a ragged :meth:`write`)."""
        if lengths.shape != (self.batch_size,):
            raise ValueError(f"{type(self).__name__}.set_lengths: lengths must be "
                             f"[{self.batch_size}], got {list(lengths.shape)}")
        self.seqlens.copy_(lengths)

    def reset(self) -> None:
        """Empty every row (the storage is kept)."""
        self.seqlens.zero_()

    def attend(self, layer: int, q: torch.Tensor, **kwargs) -> torch.Tensor:
        """decode_attention of q [B, Hq, T, D] (the T tokens just appended) on this layer's
        cache; kwargs go to :func:`fastgen.ops.decode_attention` (window, softcap, scale, ...)."""
        self._check_layer(layer)
        return decode_attention(q, self.k[layer], self.v[layer], self.seqlens + q.shape[2],
                                block_table=self._block_table(), **kwargs)


class KVCache(_Cache):
    """Static cache: per layer k [B, Hkv, max_len, D] and v [B, Hkv, max_len, Dv], preallocated.

    Args:
        n_layers, batch_size, n_kv_heads, head_dim: the model's shapes.
        max_len: tokens per row (prompt + generated).
        v_head_dim: value head dim when it differs from head_dim.
        dtype, device: of the stored keys and values.

    Attributes:
        k, v: lists of per-layer tensors; seqlens: [B] int32 tokens held by each row.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int,
                 max_len: int, *, v_head_dim: Optional[int] = None,
                 dtype: torch.dtype = torch.float32, device="cpu"):
        super().__init__(n_layers, batch_size, n_kv_heads, head_dim, v_head_dim, dtype, device)
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"KVCache: max_len must be an int >= 1, got {max_len!r}")
        self.capacity = max_len
        for _ in range(n_layers):
            self.k.append(torch.zeros(batch_size, n_kv_heads, max_len, head_dim, dtype=dtype,
                                      device=self.device))
            self.v.append(torch.zeros(batch_size, n_kv_heads, max_len, self.v_head_dim,
                                      dtype=dtype, device=self.device))

    def _slots(self, rows, pos):
        return rows, pos


class PagedKVCache(_Cache):
    """Paged cache: per layer pages [num_pages, Hkv, page_size, D] and a shared block table.

    Rows take pages from a free list as they grow (:meth:`reserve`, called by :meth:`append`
    and :meth:`write`), so rows of very different lengths share the memory.

    Args:
        n_layers, batch_size, n_kv_heads, head_dim: the model's shapes.
        num_pages: pages per layer in the pool; page_size: tokens per page.
        max_len: most tokens a row may hold (block table width = ceil(max_len / page_size)).
        v_head_dim, dtype, device: as :class:`KVCache`.

    Attributes:
        block_table: [B, max_pages] int32 page ids (-1: not allocated); free_pages: count left.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, *,
                 num_pages: int, page_size: int = 16, max_len: int,
                 v_head_dim: Optional[int] = None, dtype: torch.dtype = torch.float32,
                 device="cpu"):
        super().__init__(n_layers, batch_size, n_kv_heads, head_dim, v_head_dim, dtype, device)
        for name, value in (("num_pages", num_pages), ("page_size", page_size),
                            ("max_len", max_len)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PagedKVCache: {name} must be an int >= 1, got {value!r}")
        self.page_size, self.num_pages = page_size, num_pages
        max_pages = math.ceil(max_len / page_size)
        self.capacity = max_pages * page_size
        self.block_table = torch.full((batch_size, max_pages), -1, dtype=torch.int32,
                                      device=self.device)
        self._free = list(range(num_pages - 1, -1, -1))
        self._held = [0] * batch_size  # pages allocated per row
        for _ in range(n_layers):
            self.k.append(torch.zeros(num_pages, n_kv_heads, page_size, head_dim, dtype=dtype,
                                      device=self.device))
            self.v.append(torch.zeros(num_pages, n_kv_heads, page_size, self.v_head_dim,
                                      dtype=dtype, device=self.device))

    @property
    def free_pages(self) -> int:
        return len(self._free)

    def reserve(self, row: int, n_tokens: int) -> None:
        """Make sure row holds pages for its first n_tokens positions."""
        need = math.ceil(n_tokens / self.page_size)
        if need > self.block_table.shape[1]:
            raise ValueError(f"PagedKVCache: row {row} needs {n_tokens} tokens, more than "
                             f"max_len ({self.capacity})")
        if need - self._held[row] > len(self._free):
            raise RuntimeError(f"PagedKVCache: out of pages (row {row} needs "
                               f"{need - self._held[row]} more, {len(self._free)} free of "
                               f"{self.num_pages}); release finished rows or add pages")
        while self._held[row] < need:
            self.block_table[row, self._held[row]] = self._free.pop()
            self._held[row] += 1

    def release(self, row: int) -> None:
        """Return a row's pages to the pool and empty it."""
        n = self._held[row]
        self._free.extend(int(p) for p in self.block_table[row, :n].flip(0))
        self.block_table[row, :n] = -1
        self._held[row] = 0
        self.seqlens[row] = 0

    def reset(self) -> None:
        for row in range(self.batch_size):
            self.release(row)

    def _slots(self, rows, pos):
        if pos.numel():
            ends = torch.zeros(self.batch_size, dtype=torch.long, device=self.device)
            ends.scatter_reduce_(0, rows, pos + 1, reduce="amax")
            ends = ends.tolist()
            more = sum(max(0, -(-end // self.page_size) - held)
                       for end, held in zip(ends, self._held))
            if more > len(self._free):  # fail before taking any page
                raise RuntimeError(f"PagedKVCache: out of pages ({more} more needed, "
                                   f"{len(self._free)} free of {self.num_pages}); release "
                                   "finished rows or add pages")
            for row, end in enumerate(ends):
                if end > self._held[row] * self.page_size:
                    self.reserve(row, end)
        page = self.block_table[rows, pos // self.page_size].long()
        return page, pos % self.page_size

    def _block_table(self):
        return self.block_table

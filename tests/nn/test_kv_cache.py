"""fastgen.nn.KVCache / PagedKVCache: appends land where decode_attention reads them, ragged rows,
paged equals static, and errors for capacity, pages and shapes."""

import pytest
import torch

from fastgen.nn import KVCache, PagedKVCache
from fastgen.reference import decode as ref


def _caches(b=3, max_len=40, page=8):
    static = KVCache(2, b, 2, 16, max_len)
    paged = PagedKVCache(2, b, 2, 16, num_pages=b * max_len // page + 2, page_size=page,
                         max_len=max_len)
    return static, paged


def test_append_write_and_attend_match_dense(gen):
    b, lengths = 3, torch.tensor([5, 1, 9])
    for cache in _caches(b):
        # ragged prefill as packed tokens, then three decode steps
        rows = torch.repeat_interleave(torch.arange(b), lengths)
        pos = torch.cat([torch.arange(n) for n in lengths.tolist()])
        keys = {layer: torch.randn(len(rows), 2, 16, generator=gen) for layer in (0, 1)}
        vals = {layer: torch.randn(len(rows), 2, 16, generator=gen) for layer in (0, 1)}
        for layer in (0, 1):
            cache.write(layer, rows, pos, keys[layer], vals[layer])
        cache.set_lengths(lengths.to(torch.int32))
        dense_k = [[keys[1][rows == i] for i in range(b)]]
        dense_v = [[vals[1][rows == i] for i in range(b)]]
        for _ in range(3):
            k = torch.randn(b, 2, 1, 16, generator=gen)
            v = torch.randn(b, 2, 1, 16, generator=gen)
            q = torch.randn(b, 4, 1, 16, generator=gen)
            cache.append(0, k, v)
            cache.append(1, k, v)
            out = cache.attend(1, q)
            for i in range(b):
                dense_k[0][i] = torch.cat([dense_k[0][i], k[i, :, 0][None]])
                dense_v[0][i] = torch.cat([dense_v[0][i], v[i, :, 0][None]])
                kk = dense_k[0][i].transpose(0, 1)[None]
                vv = dense_v[0][i].transpose(0, 1)[None]
                want, _ = ref.decode_attention(q[i:i + 1], kk, vv, torch.tensor([kk.shape[2]]),
                                               None, 0.25, 0.0, -1, 0)
                torch.testing.assert_close(out[i:i + 1], want, rtol=1e-5, atol=1e-6)
            cache.advance(1)
        assert cache.seqlens.tolist() == (lengths + 3).tolist()


def test_paged_allocates_pages_as_rows_grow_and_releases():
    cache = PagedKVCache(1, 2, 1, 8, num_pages=5, page_size=4, max_len=12)
    cache.append(0, torch.randn(2, 1, 6, 8), torch.randn(2, 1, 6, 8))
    assert cache.free_pages == 1 and (cache.block_table[:, :2] >= 0).all()
    cache.advance(6)
    with pytest.raises(RuntimeError, match="out of pages"):
        cache.append(0, torch.randn(2, 1, 3, 8), torch.randn(2, 1, 3, 8))
    cache.release(1)
    assert cache.free_pages == 3 and cache.seqlens[1] == 0
    cache.reset()
    assert cache.free_pages == 5


def test_errors():
    cache = KVCache(1, 2, 2, 8, max_len=4)
    with pytest.raises(ValueError, match="capacity is 4"):
        cache.append(0, torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8))
    with pytest.raises(ValueError, match="k must be \\[2, 2, T, 8\\]"):
        cache.append(0, torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8))
    with pytest.raises(IndexError, match="layer must be in \\[0, 1\\)"):
        cache.append(1, torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8))
    with pytest.raises(ValueError, match="max_len must be an int >= 1"):
        KVCache(1, 2, 2, 8, max_len=0)
    paged = PagedKVCache(1, 1, 1, 8, num_pages=4, page_size=2, max_len=4)
    with pytest.raises(ValueError, match="capacity is 4"):
        paged.append(0, torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8))


def test_write_refuses_negative_positions_and_bad_rows():
    for cache in _caches(2):
        with pytest.raises(ValueError, match="positions >= 0"):
            cache.write(0, torch.tensor([0]), torch.tensor([-1]), torch.randn(1, 2, 16),
                        torch.randn(1, 2, 16))
        with pytest.raises(ValueError, match="rows must be in \\[0, 2\\)"):
            cache.write(0, torch.tensor([2]), torch.tensor([0]), torch.randn(1, 2, 16),
                        torch.randn(1, 2, 16))

"""Drop-in ``torch.nn`` modules built on :mod:`fastgen.ops`."""

from .attention import MultiheadAttention
from .bias_act import BiasAct
from .hashgrid import HashGridEncoding
from .kv_cache import KVCache, PagedKVCache

__all__ = ["BiasAct", "HashGridEncoding", "MultiheadAttention", "KVCache", "PagedKVCache"]

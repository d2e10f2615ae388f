"""Drop-in ``torch.nn`` modules built on :mod:`fastgen.ops`."""

from .attention import MultiheadAttention
from .bias_act import BiasAct
from .hashgrid import HashGridEncoding
from .kv_cache import KVCache, PagedKVCache
from .mlp import FusedMLP

__all__ = ["BiasAct", "FusedMLP", "HashGridEncoding", "MultiheadAttention", "KVCache",
           "PagedKVCache"]

"""Drop-in ``torch.nn`` modules built on :mod:`fastgen.ops`."""

from .attention import MultiheadAttention
from .bias_act import BiasAct

__all__ = ["BiasAct", "MultiheadAttention"]

"""Drop-in ``torch.nn`` modules built on :mod:`fastgen.ops`."""

from .bias_act import BiasAct

__all__ = ["BiasAct"]

"""Plain-PyTorch references: same names and signatures as :mod:`fastgen.ops`, obviously correct
rather than fast. Tests and benchmarks import them from here; nothing else defines a reference."""

from . import attention, hashgrid
from .bias_act import bias_act

__all__ = ["bias_act", "attention", "hashgrid"]

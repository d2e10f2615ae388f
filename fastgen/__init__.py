"""fastgen: fused kernels for generative models, each checked against a PyTorch reference.

    import fastgen
    y = fastgen.ops.bias_act(x, b, act="lrelu", clamp=256)   # functional ops
    layer = fastgen.nn.BiasAct(512, act="lrelu")              # drop-in modules

Importing fastgen loads the compiled extension if it was built (registering ``torch.ops.fastgen``),
but never compiles anything, prints anything or initialises CUDA. ``fastgen info`` (or
:func:`fastgen.info.collect`) shows the build and the backend each op uses on this machine.
"""

from . import _ext

_ext.load()

from . import nn, ops, reference, registry  # noqa: E402  (ops register after the extension loads)
from . import nerf  # noqa: E402
from .generation import generate  # noqa: E402
from ._ext import cpu_buffer_cache, empty_cpu_cache  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "nn", "nerf", "reference", "registry", "generate", "cpu_buffer_cache",
           "empty_cpu_cache", "__version__"]

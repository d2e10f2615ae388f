"""Testing kit shared by fastgen's tests and benchmarks (and usable by anyone adding an op).

* :mod:`~fastgen.testing.tolerances` — (atol, rtol) per dtype with a reason each, op overrides
* :mod:`~fastgen.testing.compare` — ``assert_close`` with readable reports, the error-ratio
  check against PyTorch's own same-dtype error, NaN poisoning of every allocation
* :mod:`~fastgen.testing.inputs` — fresh seeds, odd shapes, non-contiguous layouts
* :mod:`~fastgen.testing.check` — forward + backward of an op against its reference per backend;
  ``recorded_ops``, the operators a block sends through the dispatcher
* :mod:`~fastgen.testing.samples` — opcheck samples for every op in ``torch.ops.fastgen``
"""

from .check import available_backends, check_against_reference, devices, recorded_ops
from .compare import assert_close, check_error_ratio, max_abs_error, poison_, poisoned
from .inputs import LAYOUTS, ODD_SIZES, fresh_seed, make_tensor, odd_shapes
from .samples import OPCHECK_SAMPLES
from .tolerances import DEFAULT_TOLERANCES, ERROR_RATIO_K, Tolerance, tolerance

__all__ = [
    "available_backends", "check_against_reference", "devices", "recorded_ops", "assert_close",
    "check_error_ratio", "max_abs_error", "poison_", "poisoned", "LAYOUTS", "ODD_SIZES",
    "fresh_seed", "make_tensor", "odd_shapes", "OPCHECK_SAMPLES",
    "DEFAULT_TOLERANCES", "ERROR_RATIO_K", "Tolerance", "tolerance",
]

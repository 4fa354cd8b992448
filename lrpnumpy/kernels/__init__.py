"""Private compute kernels behind one small interface.

The backend is chosen once, at import: the numba kernels (:mod:`.numba_kernels`) when numba
imports, else the plain NumPy reference (:mod:`.reference`), which is also the oracle the tests
compare every faster kernel with.  ``LRPNUMPY_KERNELS=numpy`` forces the reference.  Kernels
take arrays and ints only; layers validate their input first.  ``max_pool2d_grad_split`` (tied
maxima share equally) has only the reference version.
"""

import os

from . import reference
from .reference import max_pool2d_grad_split, output_size  # noqa: F401

NAMES = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "sum_pool2d", "sum_pool2d_grad", "max_pool2d",
         "max_pool2d_gather", "max_pool2d_grad")


def _choose():
    if os.environ.get("LRPNUMPY_KERNELS", "numba").lower() == "numpy":
        return "numpy"
    try:
        from . import numba_kernels  # noqa: F401
    except ImportError:
        return "numpy"
    return "numba"


def set_backend(name):
    """Switch every kernel to backend ``name`` ("numba" or "numpy"); return the previous name.

    For tests and benchmarks that compare backends; the layers look kernels up at call time.
    """
    global BACKEND
    if name == "numba":
        from . import numba_kernels as module
    elif name == "numpy":
        module = reference
    else:
        raise ValueError(f"unknown kernel backend {name!r}; use 'numba' or 'numpy'")
    previous, BACKEND = BACKEND, name
    globals().update({k: getattr(module, k) for k in NAMES})
    return previous


BACKEND = None
set_backend(_choose())

"""The numba backend: every kernel of :data:`lrpnumpy.kernels.NAMES` from its family's module.

* :mod:`.convolution`: ``conv2d``, its gradients and ``conv2d_add_pixels`` (pixel flipping's
  incremental forward pass); six lowerings to BLAS products, one per sample;
* :mod:`.pooling`: max and sum pooling and their gradients;
* :mod:`.step2`: step 2 of the four LRP steps with the ledger's sums;
* :mod:`.elementwise`: GELU's float32 ``erf`` as a series (called by the layer itself, by a sample's size);
* :mod:`._common`: lazy jitting, per-thread scratch buffers, and the threads that run a batch's
  samples side by side.

Each family chooses how a call runs in one function, ``lowering``, documented there.  numba itself
is imported on the first call of a jitted kernel, not when this module is (importing numba costs a
fresh process a noticeable fraction of a second), and small calls (one small input) run NumPy
code that gives the same numbers, so explaining one small input never imports numba.
"""

from ._common import THREADS, jit_all, release_workspace  # noqa: F401
from .convolution import conv2d, conv2d_add_pixels, conv2d_grad_input, conv2d_grad_weight  # noqa: F401
from .pooling import (max_pool2d, max_pool2d_gather, max_pool2d_grad, max_pool2d_values,  # noqa: F401
                      sum_pool2d, sum_pool2d_grad)
from .step2 import lrp_step2  # noqa: F401

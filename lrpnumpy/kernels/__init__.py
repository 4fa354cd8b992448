"""Private compute kernels behind one small interface.

The backend is chosen once, at import: :mod:`.reference` (plain NumPy) is the
only one so far and the oracle every faster backend is tested against.
Kernels take arrays and ints only; layers validate their input first.
"""

from .reference import (conv2d, conv2d_grad_input, conv2d_grad_weight, max_pool2d,  # noqa: F401
                        max_pool2d_gather, max_pool2d_grad, max_pool2d_grad_split, output_size, sum_pool2d,
                        sum_pool2d_grad)

BACKEND = "numpy"

"""Private compute kernels behind one small interface.

The backend is chosen once, at import: the numba kernels when numba imports (by family:
:mod:`.convolution`, :mod:`.pooling`, :mod:`.step2`, gathered in :mod:`.numba_kernels`), else the
plain NumPy reference (:mod:`.reference`), which is also the oracle the tests compare every faster
kernel with.  ``LRPNUMPY_KERNELS=numpy`` forces the reference.  Kernels
take arrays and ints only.  Every entry point here checks, in Python and before any jitted
code runs, that the shapes it will index agree (a mismatch is a ShapeError, never an
out-of-bounds read); the layers validate user input before that.  ``max_pool2d_grad_split``
(tied maxima share equally) has only the reference version.

Both backends are batch invariant: a sample's results are the same bit for bit whatever batch it
is in (see :mod:`.reference` for what was measured of BLAS, and :func:`matmul_rows`, which the
Linear layers use on both).
"""

import functools
import importlib.util
import os

import numpy as np

from ..errors import DTypeError, ShapeError
from . import reference
from .reference import matmul_rows, output_size  # noqa: F401  (matmul_rows: one for both backends)

NAMES = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "conv2d_add_pixels", "sum_pool2d", "sum_pool2d_grad",
         "max_pool2d", "max_pool2d_values", "max_pool2d_gather", "max_pool2d_grad", "lrp_step2")


def _fail(kernel, what):
    raise ShapeError(f"kernel {kernel}: {what}")


def _rank4(kernel, **arrays):
    for name, a in arrays.items():
        if a.ndim != 4:
            _fail(kernel, f"{name} must be 4-D, got shape {a.shape}")


def _out(kernel, h, w, kh, kw, sh, sw, padding, dh, dw):
    oh, ow = output_size(h, kh, sh, padding[0], padding[1], dh), output_size(w, kw, sw, padding[2], padding[3], dw)
    if oh < 1 or ow < 1:
        _fail(kernel, f"a {h} x {w} input with padding {padding} is smaller than the window")
    return oh, ow


def _same_dtype(kernel, a, b):
    if a.dtype != b.dtype:
        raise DTypeError(f"kernel {kernel}: arrays of dtypes {a.dtype} and {b.dtype}; they must agree")


def _winners(kernel, idx, shape, kh, kw):
    if idx.dtype != np.int64 or idx.shape != tuple(shape):
        _fail(kernel, f"winners must be int64 of shape {tuple(shape)}, got {idx.dtype} {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= kh * kw):
        _fail(kernel, f"winners must lie in [0, {kh * kw}), got [{idx.min()}, {idx.max()}]")


def _check_conv2d(x, w, sh, sw, padding, dh, dw, groups):
    _rank4("conv2d", x=x, weight=w)
    _same_dtype("conv2d", x, w)
    if w.shape[1] * groups != x.shape[1] or w.shape[0] % groups:
        _fail("conv2d", f"weight {w.shape} with groups={groups} does not fit an input of {x.shape[1]} channels")
    _out("conv2d", x.shape[2], x.shape[3], w.shape[2], w.shape[3], sh, sw, padding, dh, dw)


def _check_conv2d_grad_input(gy, w, h, wd, sh, sw, padding, dh, dw, groups):
    _rank4("conv2d_grad_input", grad=gy, weight=w)
    _same_dtype("conv2d_grad_input", gy, w)
    oh, ow = _out("conv2d_grad_input", h, wd, w.shape[2], w.shape[3], sh, sw, padding, dh, dw)
    if gy.shape[1:] != (w.shape[0], oh, ow) or w.shape[0] % groups:
        _fail("conv2d_grad_input", f"gradient {gy.shape} does not fit weight {w.shape} and a {h} x {wd} input")


def _check_conv2d_grad_weight(x, gy, kh, kw, sh, sw, padding, dh, dw, groups):
    _rank4("conv2d_grad_weight", x=x, grad=gy)
    _same_dtype("conv2d_grad_weight", x, gy)
    oh, ow = _out("conv2d_grad_weight", x.shape[2], x.shape[3], kh, kw, sh, sw, padding, dh, dw)
    if gy.shape[0] != x.shape[0] or gy.shape[2:] != (oh, ow) or x.shape[1] % groups or gy.shape[1] % groups:
        _fail("conv2d_grad_weight", f"gradient {gy.shape} does not fit input {x.shape} (groups={groups})")


def _check_conv2d_add_pixels(y, pixels, delta, w, sh, sw, padding, dh, dw):
    _rank4("conv2d_add_pixels", y=y, weight=w)
    if not (y.flags.writeable and y.flags.c_contiguous) or len({y.dtype, delta.dtype, w.dtype}) > 1:
        _fail("conv2d_add_pixels", f"y must be a writeable C-contiguous array and y, delta, weight of one dtype, "
                                   f"got {y.dtype}, {delta.dtype}, {w.dtype}")
    if pixels.dtype != np.int64 or pixels.ndim != 2 or pixels.shape[1] != 3 or delta.shape != (len(pixels), w.shape[1]):
        _fail("conv2d_add_pixels", f"pixels must be int64 rows (n, r, s) and delta (len(pixels), {w.shape[1]}), "
                                   f"got {pixels.dtype} {pixels.shape} and {delta.shape}")
    if y.shape[3] != w.shape[0] or (len(pixels) and (pixels.min(axis=0) < 0).any()) or (
            len(pixels) and pixels[:, 0].max() >= y.shape[0]):
        _fail("conv2d_add_pixels", f"output {y.shape} (channels last) does not fit weight {w.shape} and the "
                                   f"samples of the pixels")


def _check_sum_pool2d(x, kh, kw, sh, sw, padding, dh=1, dw=1):
    _rank4("sum_pool2d", x=x)
    _out("sum_pool2d", x.shape[2], x.shape[3], kh, kw, sh, sw, padding, dh, dw)


def _check_grad_of_pool(kernel, gy, h, wd, kh, kw, sh, sw, padding, dh, dw):
    _rank4(kernel, grad=gy)
    oh, ow = _out(kernel, h, wd, kh, kw, sh, sw, padding, dh, dw)
    if gy.shape[2:] != (oh, ow):
        _fail(kernel, f"gradient {gy.shape} does not fit a {h} x {wd} input (output {oh} x {ow})")


def _check_sum_pool2d_grad(gy, h, wd, kh, kw, sh, sw, padding, dh=1, dw=1):
    _check_grad_of_pool("sum_pool2d_grad", gy, h, wd, kh, kw, sh, sw, padding, dh, dw)


def _check_max_pool2d(x, kh, kw, sh, sw, padding, dh=1, dw=1):
    _rank4("max_pool2d", x=x)
    _out("max_pool2d", x.shape[2], x.shape[3], kh, kw, sh, sw, padding, dh, dw)


_check_max_pool2d_values = _check_max_pool2d


def _check_max_pool2d_gather(x, idx, kh, kw, sh, sw, padding, dh=1, dw=1):
    _rank4("max_pool2d_gather", x=x)
    oh, ow = _out("max_pool2d_gather", x.shape[2], x.shape[3], kh, kw, sh, sw, padding, dh, dw)
    _winners("max_pool2d_gather", idx, x.shape[:2] + (oh, ow), kh, kw)


def _check_max_pool2d_grad(gy, idx, h, wd, kh, kw, sh, sw, padding, dh=1, dw=1):
    _check_grad_of_pool("max_pool2d_grad", gy, h, wd, kh, kw, sh, sw, padding, dh, dw)
    _winners("max_pool2d_grad", idx, gy.shape, kh, kw)


def _check_max_pool2d_grad_split(gy, x, y, kh, kw, sh, sw, padding, dh=1, dw=1):
    _rank4("max_pool2d_grad_split", grad=gy, x=x, y=y)
    oh, ow = _out("max_pool2d_grad_split", x.shape[2], x.shape[3], kh, kw, sh, sw, padding, dh, dw)
    if gy.shape != y.shape or y.shape != x.shape[:2] + (oh, ow):
        _fail("max_pool2d_grad_split", f"gradient {gy.shape} and output {y.shape} do not fit input {x.shape}")


def _check_lrp_step2(z, R, mask, epsilon, channels):
    if z.ndim < 2 or R.shape != z.shape:
        _fail("lrp_step2", f"z and R must have one shape (N, ...), got {z.shape} and {R.shape}")
    _same_dtype("lrp_step2", z, R)
    try:
        fits = mask is None or (mask.dtype == bool and np.broadcast_shapes(mask.shape, z.shape) == z.shape)
    except ValueError:
        fits = False
    if not fits:
        _fail("lrp_step2", f"mask must be boolean and broadcast to {z.shape}, got {mask.dtype} {mask.shape}")
    if not (isinstance(channels, int) and channels >= 1 and (z.size // max(1, len(z))) % channels == 0):
        _fail("lrp_step2", f"channels must divide the {z.size // max(1, len(z))} values of a sample, got {channels!r}")
    if not (np.isfinite(epsilon) and epsilon >= 0):
        _fail("lrp_step2", f"epsilon must be a finite number >= 0, got {epsilon!r}")


def _empty_lrp_step2(z, R, mask, epsilon, channels):
    """``lrp_step2`` of no samples: ``s`` of z's shape, sums (0, 4) and per-channel sums (0, channels)."""
    return np.zeros_like(z), np.zeros((0, 4), z.dtype), np.zeros((0, channels), z.dtype)


def _checked(fn, check):
    """``fn`` behind its shape check (keeping fn's name and module, so the backend stays visible).

    An empty first or second array (a batch of 0 samples, or no pixels to add; every kernel's
    first argument is its batch) runs the NumPy reference, whose slicing and ``tensordot`` give
    the empty result of the right shape and dtype; the faster backends' lowerings (reshapes with
    -1, per-thread blocks) assume at least one sample.  (Two attribute reads: 0.5 us a call.)
    """
    empty_case = _empty_lrp_step2 if fn.__name__ == "lrp_step2" else getattr(reference, fn.__name__, fn)

    @functools.wraps(fn)
    def kernel(*args):
        check(*args)
        if args[0].size == 0 or (type(args[1]) is np.ndarray and args[1].size == 0):
            return empty_case(*args)
        return fn(*args)
    return kernel


max_pool2d_grad_split = _checked(reference.max_pool2d_grad_split, _check_max_pool2d_grad_split)


def _choose():
    if os.environ.get("LRPNUMPY_KERNELS", "numba").lower() == "numpy":
        return "numpy"
    try:  # without importing numba: the numba backend imports it when a jitted kernel first runs
        return "numba" if importlib.util.find_spec("numba") is not None else "numpy"
    except (ImportError, ValueError):  # ValueError: sys.modules["numba"] is None
        return "numpy"


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
    globals().update({k: _checked(getattr(module, k), globals()[f"_check_{k}"]) for k in NAMES})
    return previous


BACKEND = None
set_backend(_choose())

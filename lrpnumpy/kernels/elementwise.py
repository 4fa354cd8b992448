"""Elementwise kernels (numba backend): GELU's ``x/2 (1 + erf(x / sqrt 2))`` in float32.

SciPy's ``erf`` is a scalar loop per element (its float32 loop computes in float64 and rounds):
9-20 ns an element depending on the range, on a ViT-B/16's (N, 197, 3072) activations the largest
elementwise cost of a forward pass.  :func:`gelu_float32` writes the same operations in one jitted
loop, with ``erf`` of the float32 argument evaluated in float64 as ``d g(d^2)`` for ``|d| <`` :data:`ERF_CLAMP`,
``g`` a Chebyshev series (:data:`ERF_CHEB`: ``erf`` within 3.2e-14, relative and absolute, measured on
11 million points, a million times less than float32's rounding), and ``sign(d)`` beyond (where float32's
``erf`` is 1 already), then rounded to float32 as SciPy's is: the float32 result differs from SciPy's only
where the exact ``erf`` lies within 3.2e-14 (relative) of a rounding boundary (none of 9.7 million normal
values of standard deviation 3; tested against SciPy to one ulp).  2.1 ns an element, in one thread.
float64 keeps SciPy (a series to float64's precision is not this short).

The NumPy reference (SciPy's ``erf``) is what :class:`~lrpnumpy.layers.GELU` runs without numba, with
``LRPNUMPY_KERNELS=numpy``, in float64, and on samples of fewer than :data:`GELU_KERNEL_SIZE` values (the
choice looks at one sample's size, never the batch's).
"""

import math

import numpy as np

from ._common import each_sample, jitted

#: Samples (values per sample) from which a float32 GELU runs :func:`gelu_float32` under the numba backend.
#: The kernel is faster than SciPy's ``erf`` at every size (a call of 16 values: 1.3 us against 3.6; of
#: 2,176: 6 us against 26), but its first call imports numba and loads its cache (0.7 s), about what
#: 40,000 calls of 2,048 values save: smaller samples (a small model's, which may run no other jitted
#: kernel) keep SciPy.  The shipped ViT's (17 tokens x 128, whose patch convolution runs a jitted kernel
#: anyway) take the kernel.
GELU_KERNEL_SIZE = 1 << 11

#: ``|d|`` from which float32's ``erf(d)`` is ``sign(d)`` (``1 - erf(3.95) = 2.3e-8``, under half an ulp of 1, 3.0e-8).
ERF_CLAMP = 3.95

#: Chebyshev coefficients of ``g(u) = erf(sqrt u) / sqrt u`` in ``t = 2 u / ERF_CLAMP^2 - 1``, ``u`` in
#: ``[0, ERF_CLAMP^2]`` (a least-squares fit of degree 24 on 400,001 points, NumPy's ``chebfit``, to SciPy's
#: float64 ``erf``): ``erf(d) = d g(d^2)`` within 3.2e-14 for ``|d| <= ERF_CLAMP``.
ERF_CHEB = (
    0.49000169093722745, -0.3459266088253606, 0.16072903696939403, -0.07519160855977113,
    0.03367616464746697, -0.014190796359630269, 0.005588713823586993, -0.002052789450165629,
    0.0007034200605298357, -0.0002251952252671137, 6.749740253736325e-05, -1.8986225504357284e-05,
    5.024612852327112e-06, -1.254203627125303e-06, 2.960034325818986e-07, -6.620759714555183e-08,
    1.4065982103776436e-08, -2.8444520091865383e-09, 5.485996650313322e-10, -1.0109936971883259e-10,
    1.7833937543687844e-11, -3.0158624720793414e-12, 4.90219172340778e-13, -7.602584168256749e-14,
    1.25914094240942e-14)

#: Products of at least this many values share their samples among the kernels' threads
#: (:func:`multiply_into`); at least this many values per thread.
THREADED_SIZE = 1 << 16

_COEF = np.array(ERF_CHEB)  # a constant in the jitted code
_SQRT2 = math.sqrt(2.0)


#: Values in each of the four streams that :func:`gelu_float32` evaluates side by side.
_STREAM = 32


@jitted
def gelu_float32(x, out):
    """``out = x/2 (1 + erf(x / sqrt 2))`` for 1-D float32 ``x`` and ``out``, in the reference's float32
    operations (``(x * 0.5) * (erf(x / sqrt2) + 1)``), ``erf`` as the module docstring says.

    Each value's operations are those of :func:`gelu_float32_serial` (which does the last ``n % 128``
    values), in the same order, so every value gets the same bits.  The main loop runs four
    independent streams (values ``i``, ``i + 32``, ``i + 64``, ``i + 96`` of each block of 128) in
    lock-step: LLVM vectorises it (16 values an instruction pair) either way, but one stream's
    Clenshaw recurrence is a chain of 72 dependent operations, and with one stream the processor
    waits on it (3.7 ns a value; four streams: 2.1 ns, one thread).  The recurrence is written as
    two loops of 12 steps so that LLVM unrolls both fully; one loop of 24 steps over four streams
    is not unrolled, and the main loop then is not vectorised at all (17 ns a value)."""
    half, root2, one = np.float32(0.5), np.float32(_SQRT2), np.float32(1.0)
    clamp = ERF_CLAMP
    scale = 2.0 / (clamp * clamp)
    last, mid, s = len(_COEF) - 1, (len(_COEF) - 1) // 2, _STREAM
    n = x.size
    full = n - n % (4 * s)
    for lo in range(0, full, 4 * s):
        for i in range(lo, lo + s):
            v0, v1, v2, v3 = x[i], x[i + s], x[i + 2 * s], x[i + 3 * s]
            d0, d1 = np.float64(v0 / root2), np.float64(v1 / root2)
            d2, d3 = np.float64(v2 / root2), np.float64(v3 / root2)
            c0, c1 = min(max(d0, -clamp), clamp), min(max(d1, -clamp), clamp)
            c2, c3 = min(max(d2, -clamp), clamp), min(max(d3, -clamp), clamp)
            t0, t1 = c0 * c0 * scale - 1.0, c1 * c1 * scale - 1.0
            t2, t3 = c2 * c2 * scale - 1.0, c3 * c3 * scale - 1.0
            u0, u1, u2, u3 = 2.0 * t0, 2.0 * t1, 2.0 * t2, 2.0 * t3
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = 0.0
            for k in range(last, mid, -1):  # Clenshaw's recurrence, as below (a: b1, b: b2), in two halves
                c = _COEF[k]
                a0, b0 = c + u0 * a0 - b0, a0
                a1, b1 = c + u1 * a1 - b1, a1
                a2, b2 = c + u2 * a2 - b2, a2
                a3, b3 = c + u3 * a3 - b3, a3
            for k in range(mid, 0, -1):
                c = _COEF[k]
                a0, b0 = c + u0 * a0 - b0, a0
                a1, b1 = c + u1 * a1 - b1, a1
                a2, b2 = c + u2 * a2 - b2, a2
                a3, b3 = c + u3 * a3 - b3, a3
            e0, e1 = c0 * (_COEF[0] + t0 * a0 - b0), c1 * (_COEF[0] + t1 * a1 - b1)
            e2, e3 = c2 * (_COEF[0] + t2 * a2 - b2), c3 * (_COEF[0] + t3 * a3 - b3)
            if abs(d0) >= clamp:
                e0 = math.copysign(1.0, d0)
            if abs(d1) >= clamp:
                e1 = math.copysign(1.0, d1)
            if abs(d2) >= clamp:
                e2 = math.copysign(1.0, d2)
            if abs(d3) >= clamp:
                e3 = math.copysign(1.0, d3)
            out[i] = (v0 * half) * (np.float32(e0) + one)
            out[i + s] = (v1 * half) * (np.float32(e1) + one)
            out[i + 2 * s] = (v2 * half) * (np.float32(e2) + one)
            out[i + 3 * s] = (v3 * half) * (np.float32(e3) + one)
    gelu_float32_serial(x[full:], out[full:])
    return out


@jitted
def gelu_float32_serial(x, out):
    """:func:`gelu_float32`'s operations one value at a time (the kernel as first written: 3.7 ns a
    value); the kernel's last ``n % 128`` values."""
    half, root2, one = np.float32(0.5), np.float32(_SQRT2), np.float32(1.0)
    clamp = ERF_CLAMP
    scale = 2.0 / (clamp * clamp)
    last = len(_COEF) - 1
    for i in range(x.size):
        v = x[i]
        d = np.float64(v / root2)
        dc = min(max(d, -clamp), clamp)  # (NaN: any value; v * half makes the result NaN)
        t = dc * dc * scale - 1.0
        t2 = 2.0 * t
        b1 = 0.0
        b2 = 0.0
        for k in range(last, 0, -1):  # Clenshaw's recurrence
            b1, b2 = _COEF[k] + t2 * b1 - b2, b1
        e = dc * (_COEF[0] + t * b1 - b2)
        if abs(d) >= clamp:
            e = math.copysign(1.0, d)
        out[i] = (v * half) * (np.float32(e) + one)
    return out


def multiply_into(x, c):
    """``c *= x`` elementwise for ``x`` and ``c`` (N, ...) of one shape, ``c`` writeable; returns ``c``.  Arrays
    of at least :data:`THREADED_SIZE` values share their samples among the kernels' threads (NumPy's multiply,
    exact: the same bits however they are shared).  The rules' step 4 ``R = x * c`` into the backward pass's
    fresh ``c``."""
    if c.size < THREADED_SIZE or not c.ndim:
        return np.multiply(x, c, out=c)

    def run(lo, hi):
        np.multiply(x[lo:hi], c[lo:hi], out=c[lo:hi])
    by_samples(run, c)
    return c


def by_samples(run, a):
    """``run(lo, hi)`` over the samples of ``a`` (N, ...), shared among the kernels' threads
    (:func:`~lrpnumpy.kernels._common.each_sample`) with at least :data:`THREADED_SIZE` values per thread
    (on the calling thread alone below that)."""
    each_sample(len(a), run, least=max(1, THREADED_SIZE // max(1, a.size // max(1, len(a)))))

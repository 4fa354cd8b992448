"""GELU's float32 kernel (kernels.elementwise) against SciPy's erf: the series, the jitted pass, when the layer
takes it (a sample's size, never the batch's), and the package without numba."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from numpy.polynomial import chebyshev
from scipy.special import erf

import lrpnumpy as L
from lrpnumpy import kernels
from lrpnumpy.kernels import _common, elementwise

pytest.importorskip("numba", reason="numba is not installed")


def _scipy_gelu(a):
    t = a.dtype.type
    return t(0.5) * a * (1 + erf(a / t(math.sqrt(2.0))))


def _bitwise(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_series_is_erf_to_3e_14():
    d = np.concatenate([np.random.default_rng(0).uniform(0, elementwise.ERF_CLAMP, 10 ** 6),
                        np.linspace(1e-12, elementwise.ERF_CLAMP, 10 ** 5), [1e-300, 1e-20, 1e-8]])
    approx = d * chebyshev.chebval(2 * d * d / elementwise.ERF_CLAMP ** 2 - 1, np.array(elementwise.ERF_CHEB))
    assert np.abs(approx / erf(d) - 1).max() < 4e-14
    assert np.float32(erf(elementwise.ERF_CLAMP)) == 1  # beyond the clamp float32's erf is 1 already


def _values(dtype=np.float32):
    rng = np.random.default_rng(1)
    clamp = np.float32(elementwise.ERF_CLAMP * math.sqrt(2.0))
    edges = [0, -0.0, 1e-40, -1e-40, 1e-30, -1e-30, 40, -40, 3e38, -3e38, np.inf, -np.inf, np.nan,
             clamp, -clamp, np.nextafter(clamp, 0), np.nextafter(-clamp, 0), np.nextafter(clamp, 9)]
    return np.concatenate([edges, rng.standard_normal(300_000) * 3, rng.uniform(-8, 8, 300_000),
                           rng.standard_normal(50_000) * 1e-3]).astype(dtype)


def test_kernel_is_scipys_gelu_to_one_ulp_and_nearly_always_bitwise():
    a = _values()
    ours = elementwise.gelu_float32(a, np.empty_like(a))
    with np.errstate(invalid="ignore", over="ignore"):
        ref = _scipy_gelu(a)
    assert np.array_equal(np.isnan(ours), np.isnan(ref)) and np.array_equal(ours[np.isinf(ref)], ref[np.isinf(ref)])
    finite = np.isfinite(ref)
    # erf may differ by one float32 ulp (2^-24 below 1, 2^-23 above): the result by |x/2| times that
    ulp = np.abs(a[finite]).astype(np.float64) * 2.0 ** -23
    assert (np.abs(ours[finite].astype(np.float64) - ref[finite]) <= ulp).all()
    same = (ours == ref) & (np.signbit(ours) == np.signbit(ref)) | np.isnan(ref)
    assert same.mean() > 1 - 1e-5, same.size - same.sum()
    assert np.signbit(ours[1]) and ours[7] == 0  # -0.0 stays -0.0; GELU(-40) is 0


def _clenshaw_gelu(x, out):
    """The kernel as first written (one value at a time): the four-stream kernel must give its bits."""
    half, root2, one = np.float32(0.5), np.float32(math.sqrt(2.0)), np.float32(1.0)
    clamp, coef = elementwise.ERF_CLAMP, np.array(elementwise.ERF_CHEB)
    scale = 2.0 / (clamp * clamp)
    for i in range(x.size):
        v = x[i]
        d = np.float64(v / root2)
        dc = min(max(d, -clamp), clamp)
        t = dc * dc * scale - 1.0
        t2 = 2.0 * t
        b1 = 0.0
        b2 = 0.0
        for k in range(len(coef) - 1, 0, -1):
            b1, b2 = coef[k] + t2 * b1 - b2, b1
        e = dc * (coef[0] + t * b1 - b2)
        if abs(d) >= clamp:
            e = math.copysign(1.0, d)
        out[i] = (v * half) * (np.float32(e) + one)
    return out


#: The 40 float32 inputs of +-[0.125, 5.6] whose result changes when the float64 ``erf`` of the series moves
#: least (8 to 360 float64 ulps) across a float32 rounding boundary, found by a scan of every float32 there:
#: where a change in the kernel's arithmetic shows first.  (Elsewhere the float32 rounding of ``erf`` and
#: of ``1 + erf`` absorbs changes of thousands of ulps.)  ``benchmarks/gelu_speed.py --near-boundary`` lists them.
_NEAR_BOUNDARY = np.array([
    0xbf8b34c2, 0xbf3affc6, 0xbf3affc7, 0x3ed6d024, 0xbed6d024, 0xbe779717, 0xbf65c1d0, 0xbf65c1d1, 0x408c52c3,
    0xc08c52c3, 0x3eb43ef5, 0xbf9a3a1e, 0xc0317812, 0xbfa2a716, 0x3f8f327f, 0xbf8f327f, 0xbfa447a0, 0xc0a81ef0,
    0x3f3c5f21, 0xbf3c5f21, 0xc07498ab, 0xbf48109e, 0xc092b0d6, 0xbf1b04a3, 0xc0b15cee, 0xbf26770c, 0xc0a620b2,
    0xbe1bdefe, 0x409bea70, 0xc09bea70, 0xc071dd09, 0xc071dd0a, 0xc04d03fd, 0xbea19f51, 0x3f3ad071, 0xbf3ad071,
    0xbf3ad072, 0xc07be334, 0x40ab1ae8, 0xc0ab1ae8], np.uint32).view(np.float32)


def test_kernel_gives_the_one_value_loops_bits():
    """The same bits as the one-value loop (checked once on all 2^32 float32 inputs: none differs) on
    random values, every kind of special value, and the inputs nearest a rounding boundary, each of
    them in each of the four streams and in the rest."""
    import numba
    reference = numba.njit(error_model="numpy")(_clenshaw_gelu)
    rng = np.random.default_rng(4)
    clamp = np.float32(elementwise.ERF_CLAMP * math.sqrt(2.0))
    near_clamp = (np.float32(clamp).view(np.int32) + np.arange(-500, 500, dtype=np.int32)).view(np.float32)
    a = np.concatenate([_values(), near_clamp, -near_clamp, rng.uniform(-6, 6, 200_000).astype(np.float32),
                        rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    a = a[rng.permutation(a.size)]  # every kind of value in each of the four streams and in the rest
    hard = np.concatenate([np.resize(_NEAR_BOUNDARY, 4096), _NEAR_BOUNDARY])  # 40 values cycle through 128
    with np.errstate(invalid="ignore", over="ignore"):
        for x in (a, hard) + tuple(a[n:2 * n] for n in (0, 1, 3, 127, 128, 129, 255, 256, 1000, 4352)):
            assert _bitwise(elementwise.gelu_float32(x, np.empty_like(x)), reference(x, np.empty_like(x)))


@pytest.mark.parametrize("threads", [1, 2])
def test_layer_takes_the_kernel_by_a_samples_size(threads, monkeypatch):
    if kernels.BACKEND != "numba":
        pytest.skip("the numpy backend is forced")
    calls = []
    real = elementwise.gelu_float32
    monkeypatch.setattr(elementwise, "gelu_float32", lambda x, out: calls.append(x.size) or real(x, out))
    monkeypatch.setattr(_common, "threads", lambda: threads)  # (whatever the environment says)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((5, 40, 1000)) * 3).astype(np.float32)  # 40,000 values a sample
    y = L.GELU().forward(x)
    assert sum(calls) == x.size and len(calls) == threads
    np.testing.assert_allclose(y, _scipy_gelu(x), rtol=2.4e-7, atol=1e-30)
    for i in (0, 2, 4):  # a sample alone and in the batch: the same bits
        assert _bitwise(L.GELU().forward(x[i:i + 1])[0], y[i])
    calls.clear()
    vit = x[:, :17, :128]  # the shipped ViT's MLP: 2,176 values a sample take the kernel
    assert _bitwise(L.GELU().forward(vit), real(vit.ravel(), np.empty(vit.size, np.float32)).reshape(vit.shape))
    assert sum(calls) == vit.size
    calls.clear()
    small = (rng.standard_normal((80, 17, 120)) * 3).astype(np.float32)  # 2,040 a sample, 163,200 in all
    assert elementwise.GELU_KERNEL_SIZE == 2048  # SciPy's erf, whatever the batch
    assert _bitwise(L.GELU().forward(small), _scipy_gelu(small)) and calls == []
    assert _bitwise(L.GELU().forward(x.astype(np.float64)), _scipy_gelu(x.astype(np.float64))) and calls == []
    previous = kernels.set_backend("numpy")
    try:
        assert _bitwise(L.GELU().forward(x), _scipy_gelu(x)) and calls == []
    finally:
        kernels.set_backend(previous)
    assert L.GELU().forward(x[:0]).shape == (0, 40, 1000) and calls == []


def _python(code, **env):
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                          check=True).stdout.split()


def test_kernel_body_runs_as_python_and_layer_works_without_numba():
    code = ("import math, numpy as np\n"
            "from scipy.special import erf\n"
            "from lrpnumpy.kernels import elementwise as e\n"
            "a = (np.random.default_rng(3).standard_normal(2000) * 4).astype(np.float32)\n"
            "ref = np.float32(0.5) * a * (1 + erf(a / np.float32(math.sqrt(2.0))))\n"
            "print(np.array_equal(e.gelu_float32(a, np.empty_like(a)), ref))")
    assert _python(code, NUMBA_DISABLE_JIT="1") == ["True"]
    code = ("import sys; sys.modules['numba'] = None\n"
            "import math, numpy as np, lrpnumpy as L, lrpnumpy.kernels as k\n"
            "from scipy.special import erf\n"
            "a = np.random.default_rng(3).standard_normal((2, 40, 1000)).astype(np.float32)\n"
            "ref = np.float32(0.5) * a * (1 + erf(a / np.float32(math.sqrt(2.0))))\n"
            "print(k.BACKEND, np.array_equal(L.GELU().forward(a), ref))")
    assert _python(code) == ["numpy", "True"]

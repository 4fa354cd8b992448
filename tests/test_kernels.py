"""Every numba kernel against the NumPy reference (1e-12 relative in float64), on odd shapes."""

import os
import subprocess
import sys

import threading

import numpy as np
import pytest

from lrpnumpy import kernels
from lrpnumpy.errors import LRPError
from lrpnumpy.kernels import reference as ref

nb = pytest.importorskip("lrpnumpy.kernels.numba_kernels", reason="numba is not installed")
from lrpnumpy.kernels import convolution as conv, pooling as pool, step2  # noqa: E402  (numba is there)

# (N, C, H, W), O, (kh, kw), (sh, sw), padding, (dh, dw), groups
CONV_CASES = [
    ((1, 3, 7, 6), 4, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((2, 3, 9, 8), 5, (3, 2), (2, 3), (1, 1, 2, 2), (1, 1), 1),
    ((3, 4, 8, 8), 6, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 2),
    ((2, 6, 5, 7), 4, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    ((1, 2, 9, 9), 3, (3, 3), (2, 2), (0, 1, 2, 0), (2, 1), 1),
    ((2, 2, 6, 6), 2, (4, 4), (3, 3), (1, 1, 1, 1), (1, 1), 2),
    ((2, 5, 6, 5), 3, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    ((2, 1, 5, 4), 3, (2, 3), (1, 2), (3, 0, 1, 4), (1, 2), 1),  # padding wider than the kernel
    ((3, 1, 9, 8), 4, (3, 2), (1, 1), (2, 1, 0, 3), (2, 1), 1),  # one input channel: the direct kernel
    ((2, 1, 4, 5), 2, (2, 2), (1, 1), (3, 1, 0, 4), (1, 1), 1),  # ... with padding wider than the kernel
    ((2, 3, 8, 6), 5, (2, 3), (2, 3), (0, 0, 0, 0), (1, 1), 1),  # windows that tile the input: "patches"
    ((3, 2, 9, 7), 4, (4, 3), (4, 3), (0, 0, 0, 0), (1, 1), 1),  # ... but for a row and a column
]


def _force(monkeypatch, forced):
    """Make convolution.lowering choose ``forced`` ("direct", "rows", "channels last" or "im2col")
    wherever that lowering applies (the direct kernel: stride 1, one group; rows and channels last:
    one group; channels last: the forward pass only, its gradient by rows), else im2col."""
    def lowering(direction, c, o, h, w, kh, kw, sh, sw, padding, dh, dw, groups, same_dtype=True):
        if forced == "direct" and groups == 1 and sh == sw == 1:
            return "direct"
        if forced in ("rows", "channels last") and groups == 1:
            return forced if direction == "forward" else "rows"
        return "wide" if sh == sw == 1 else "strided"
    monkeypatch.setattr(conv, "lowering", lowering)


def _close(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(b).max()))


def _noncontiguous(a):
    """The same values in a non-contiguous layout."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("lowering", ["chosen", "im2col", "im2col by rows", "rows", "channels last",
                                      "channels last by rows", "direct"])
def test_conv_kernels_agree(case, contiguous, lowering, rng, monkeypatch):
    shape, o, (kh, kw), (sh, sw), pad, (dh, dw), groups = case
    if lowering != "chosen":  # every lowering on every case (rows and channels last take groups == 1 only,
        # the direct kernel stride 1 and groups == 1; it is written for any number of input channels)
        _force(monkeypatch, {"im2col by rows": "im2col", "channels last by rows": "channels last"}.get(lowering,
                                                                                                    lowering))
    if lowering == "im2col by rows":  # the column matrix one output row at a time
        monkeypatch.setattr(conv, "COLUMN_BYTES", 1)
    if lowering == "channels last by rows":  # the window matrix one output row at a time
        monkeypatch.setattr(conv, "WINDOW_BYTES", 1)
    x = rng.normal(size=shape)
    w = rng.normal(size=(o, shape[1] // groups, kh, kw))
    xin = x if contiguous else _noncontiguous(x)
    y = ref.conv2d(x, w, sh, sw, pad, dh, dw, groups)
    _close(nb.conv2d(xin, w, sh, sw, pad, dh, dw, groups), y)
    g = rng.normal(size=y.shape)
    gin = g if contiguous else _noncontiguous(g)
    _close(nb.conv2d_grad_input(gin, w, shape[2], shape[3], sh, sw, pad, dh, dw, groups),
           ref.conv2d_grad_input(g, w, shape[2], shape[3], sh, sw, pad, dh, dw, groups))
    _close(nb.conv2d_grad_weight(xin, gin, kh, kw, sh, sw, pad, dh, dw, groups),
           ref.conv2d_grad_weight(x, g, kh, kw, sh, sw, pad, dh, dw, groups))


# (N, C, H, W), kernel, stride, padding, dilation
POOL_CASES = [((1, 2, 6, 6), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1)),
              ((3, 3, 7, 8), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
              ((2, 1, 5, 7), (2, 3), (1, 2), (0, 1, 1, 0), (1, 1)),
              ((2, 2, 4, 4), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
              ((2, 2, 9, 8), (3, 2), (2, 1), (2, 1, 1, 0), (2, 3)),
              ((2, 3, 5, 7), (2, 3), (2, 3), (1, 0, 1, 1), (1, 1)),  # padded windows that tile the input
              ((2, 2, 7, 9), (2, 2), (1, 2), (0, 0, 0, 0), (1, 1)),  # 2 x 2, overlapping rows, unread edges
              ((2, 3, 7, 8), (2, 3), (2, 3), (0, 0, 0, 0), (1, 1)),  # tiles with a row and 2 columns unread
              ((2, 2, 7, 9), (2, 2), (2, 2), (0, 0, 0, 0), (1, 1))]  # 2 x 2 tiles, last row and column unread


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("jitted", [True, False], ids=["jitted", "small"])
def test_pool_kernels_agree(case, ties, jitted, rng, monkeypatch):
    shape, (kh, kw), (sh, sw), pad, (dh, dw) = case
    if jitted:  # the jitted loops even on these small inputs
        monkeypatch.setattr(pool, "SMALL_POOL", 0)
    geo = (kh, kw, sh, sw, pad, dh, dw)
    x = rng.integers(0, 3, size=shape).astype(float) if ties else rng.normal(size=shape)
    y, idx = ref.max_pool2d(x, *geo)
    y2, idx2 = nb.max_pool2d(_noncontiguous(x), *geo)
    _close(y2, y)
    np.testing.assert_array_equal(idx2, idx)
    np.testing.assert_array_equal(nb.max_pool2d_values(_noncontiguous(x), *geo), y)  # forward without winners
    np.testing.assert_array_equal(ref.max_pool2d_values(x, *geo), ref.max_pool2d(x, *geo)[0])
    g = rng.normal(size=y.shape)
    _close(nb.max_pool2d_grad(g, idx, shape[2], shape[3], *geo), ref.max_pool2d_grad(g, idx, shape[2], shape[3], *geo))
    z = rng.normal(size=shape)
    _close(nb.max_pool2d_gather(z, idx, *geo), ref.max_pool2d_gather(z, idx, *geo))
    _close(nb.sum_pool2d(x, *geo), ref.sum_pool2d(x, *geo))
    s = ref.sum_pool2d(x, *geo)
    gs = rng.normal(size=s.shape)
    _close(nb.sum_pool2d_grad(_noncontiguous(gs), shape[2], shape[3], *geo),
           ref.sum_pool2d_grad(gs, shape[2], shape[3], *geo))


@pytest.mark.parametrize("ties", [False, True])
def test_small_disjoint_max_pools_take_the_reference_bit_for_bit(ties, rng, monkeypatch):
    """Below SMALL_POOL, max pools with disjoint windows run the reference: the same numbers."""
    for shape, geo in [((2, 3, 8, 8), (2, 2, 2, 2, (0, 0, 0, 0), 1, 1)),
                       ((2, 3, 9, 7), (2, 3, 2, 3, (0, 0, 0, 0), 1, 1)),
                       ((1, 2, 7, 9), (2, 3, 3, 3, (1, 0, 2, 1), 1, 1))]:
        x = rng.integers(0, 3, size=shape).astype(np.float32) if ties else rng.normal(size=shape)
        x.flat[::7] = np.nan if not ties else x.flat[::7]
        small = nb.max_pool2d(x, *geo)
        g = rng.normal(size=small[0].shape).astype(x.dtype)
        small_grad = nb.max_pool2d_grad(g, small[1], shape[2], shape[3], *geo)
        monkeypatch.setattr(pool, "SMALL_POOL", 0)
        big = nb.max_pool2d(x, *geo)
        np.testing.assert_array_equal(small[0], big[0])
        np.testing.assert_array_equal(small[1], big[1])
        np.testing.assert_array_equal(small_grad, nb.max_pool2d_grad(g, big[1], shape[2], shape[3], *geo))
        monkeypatch.undo()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stride", [(2, 2), (1, 1), (1, 2)])
def test_two_by_two_max_pool_equals_the_general_loop(dtype, stride, rng):
    """The unrolled 2 x 2 kernel: the same maxima and winners as the general loop, bit for bit, on
    ties, signed zeros and infinities; an input with a NaN takes the general loop (its NaN rule)."""
    nb.jit_all()
    x = rng.choice(np.array([-np.inf, -1.0, -0.0, 0.0, 2.0, np.inf]), size=(3, 2, 9, 8)).astype(dtype)
    oh, ow = (9 - 2) // stride[0] + 1, (8 - 2) // stride[1] + 1
    general = pool._max_pool(x, 2, 2, *stride, 0, 0, 1, 1, oh, ow)
    unrolled = pool._max_pool_2x2(x, *stride, oh, ow)
    for a, b in zip(unrolled, general):
        np.testing.assert_array_equal(a, b)
    assert np.array_equal(np.signbit(unrolled[0]), np.signbit(general[0]))
    np.testing.assert_array_equal(nb.max_pool2d(x, 2, 2, *stride, (0, 0, 0, 0))[1], general[1])
    x[1, 1, 3, 4] = np.nan
    y, idx = nb.max_pool2d(x, 2, 2, *stride, (0, 0, 0, 0))
    np.testing.assert_array_equal(idx, pool._max_pool(x, 2, 2, *stride, 0, 0, 1, 1, oh, ow)[1])
    assert np.isnan(y).sum() == np.isnan(ref.max_pool2d(x, 2, 2, *stride, (0, 0, 0, 0))[0]).sum() > 0


def test_float32_stays_float32(rng):
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    y = nb.conv2d(x, w, 1, 1, (1, 1, 1, 1), 1, 1, 1)
    assert y.dtype == np.float32
    assert nb.conv2d_grad_input(y, w, 6, 6, 1, 1, (1, 1, 1, 1), 1, 1, 1).dtype == np.float32
    assert nb.conv2d_grad_weight(x, y, 3, 3, 1, 1, (1, 1, 1, 1), 1, 1, 1).dtype == np.float32
    m, idx = nb.max_pool2d(x, 2, 2, 2, 2, (0, 0, 0, 0))
    assert m.dtype == np.float32 and nb.sum_pool2d(x, 2, 2, 2, 2, (0, 0, 0, 0)).dtype == np.float32
    assert nb.max_pool2d_grad(m, idx, 6, 6, 2, 2, 2, 2, (0, 0, 0, 0)).dtype == np.float32


def test_explain_agrees_across_backends(rng):
    import lrpnumpy as L
    from lrpnumpy import zoo
    net = zoo.lenet5()
    x = rng.random((3, 1, 28, 28))
    results = {}
    for backend in ("numpy", "numba"):
        previous = kernels.set_backend(backend)
        try:
            results[backend] = [L.explain(net, x, composite=c).relevance
                                for c in (L.EpsilonPlus(), L.EpsilonGammaBox(0, 1), L.EpsilonAlpha2Beta1Flat())]
        finally:
            kernels.set_backend(previous)
    for a, b in zip(results["numba"], results["numpy"]):
        _close(a, b)


def _python(code, **env):
    """What a fresh interpreter running ``code`` (with ``env`` added to the environment) prints, split."""
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env), capture_output=True, text=True,
                          check=True).stdout.split()


def test_environment_forces_the_reference():
    code = "import lrpnumpy.kernels as k; print(k.BACKEND, k.conv2d.__module__)"
    assert _python(code, LRPNUMPY_KERNELS="numpy") == ["numpy", "lrpnumpy.kernels.reference"]
    assert kernels.BACKEND == ("numpy" if os.environ.get("LRPNUMPY_KERNELS", "").lower() == "numpy" else "numba")
    with pytest.raises(ValueError):
        kernels.set_backend("cuda")


def test_works_without_numba():
    code = ("import sys; sys.modules['numba'] = None\n"
            "import numpy as np, lrpnumpy as L\n"
            "from lrpnumpy import zoo\n"
            "e = L.explain(zoo.lenet5(), np.ones((1, 1, 28, 28)), composite=L.EpsilonPlus())\n"
            "print(L.kernels.BACKEND, np.isfinite(e.relevance).all())")
    assert _python(code) == ["numpy", "True"]


def test_one_small_explanation_never_imports_numba():
    """The cold start: explaining one lenet5 input runs no jitted kernel, so numba (0.2-0.3 s to
    import, ~0.5 s to load its cache) is never imported; every size threshold keeps it that way."""
    code = ("import sys, numpy as np, lrpnumpy as L\n"
            "from lrpnumpy import zoo\n"
            "for name in ('lenet5', 'toolbox_lenet'):\n"
            "    net = zoo.MODELS[name](seed=0, dtype=np.float32)\n"
            "    L.explain(net, np.ones((1,) + net.input_shape, np.float32), composite=L.EpsilonPlus())\n"
            "print(L.kernels.BACKEND, 'numba' in sys.modules)")
    assert _python(code) == ["numba", "False"]


@pytest.mark.parametrize("case", [c for c in CONV_CASES if c[-1] == 1], ids=str)
def test_conv_add_pixels_is_the_convolution_of_the_change(case, rng):
    """Changing a few pixels changes the output by the (bias-free) convolution of the change."""
    shape, o, (kh, kw), (sh, sw), pad, (dh, dw), _ = case
    x, w = rng.normal(size=shape), rng.normal(size=(o, shape[1], kh, kw))
    flat = rng.choice(shape[0] * shape[2] * shape[3], size=min(7, shape[2] * shape[3]), replace=False)
    n, rest = divmod(np.sort(flat), shape[2] * shape[3])
    pixels = np.stack([n, rest // shape[3], rest % shape[3]], axis=1).astype(np.int64)
    delta = rng.normal(size=(len(pixels), shape[1]))
    changed = x.copy()
    changed[pixels[:, 0], :, pixels[:, 1], pixels[:, 2]] += delta
    y = np.ascontiguousarray(ref.conv2d(x, w, sh, sw, pad, dh, dw, 1).transpose(0, 2, 3, 1))  # channels last
    expected = np.ascontiguousarray(ref.conv2d(changed, w, sh, sw, pad, dh, dw, 1).transpose(0, 2, 3, 1))
    for module in (ref, nb):
        got = kernels._checked(module.conv2d_add_pixels, kernels._check_conv2d_add_pixels)(
            y.copy(), pixels, delta, w, sh, sw, pad, dh, dw)
        _close(got, expected)
    with pytest.raises(kernels.ShapeError, match="pixels"):
        kernels.conv2d_add_pixels(y.copy(), pixels[:, :2], delta, w, sh, sw, pad, dh, dw)
    with pytest.raises(kernels.ShapeError, match="samples"):
        kernels.conv2d_add_pixels(y.copy(), pixels + np.array([shape[0], 0, 0]), delta, w, sh, sw, pad, dh, dw)


def test_banded_matrices_are_kept_only_for_weights_that_cannot_change(rng):
    import gc
    x = rng.normal(size=(2, 3, 9, 8))
    w = rng.normal(size=(4, 3, 3, 3))
    want = ref.conv2d(x, w, 1, 1, (1, 1, 0, 2), 1, 1, 1)
    base = w.copy()
    view = base[:]
    view.flags.writeable = False  # read-only, but its base can still change
    _close(conv._conv_rows(x, view, 1, 1, (1, 1, 0, 2), 1, 1), want)
    assert not any(k[0] == id(view) for k in conv._BANDED)
    frozen = w.copy()
    frozen.flags.writeable = False
    _close(conv._conv_rows(x, frozen, 1, 1, (1, 1, 0, 2), 1, 1), want)
    assert sum(k[0] == id(frozen) for k in conv._BANDED) == 1
    _close(conv._conv_rows(x, frozen, 1, 1, (1, 1, 0, 2), 1, 1), want)  # from the kept matrix
    g = rng.normal(size=want.shape)
    for _ in range(2):  # the gradient's contiguous transpose, kept too
        _close(conv._conv_rows_grad_input(g, frozen, 9, 8, 1, 1, (1, 1, 0, 2), 1, 1),
               ref.conv2d_grad_input(g, w, 9, 8, 1, 1, (1, 1, 0, 2), 1, 1, 1))
    assert sum(k[0] == id(frozen) for k in conv._BANDED) == 2
    key = id(frozen)
    del frozen
    gc.collect()
    assert not any(k[0] == key for k in conv._BANDED)  # dropped with the weight


def test_kernel_bodies_run_as_plain_python():
    """NUMBA_DISABLE_JIT=1 runs the kernel bodies as Python (as a coverage run would)."""
    code = ("import numpy as np\n"
            "from lrpnumpy.kernels import convolution as conv, numba_kernels as nb, reference as ref\n"
            "rng = np.random.default_rng(0)\n"
            "x, w = rng.normal(size=(1, 2, 5, 5)), rng.normal(size=(3, 2, 3, 3))\n"
            "y = nb.conv2d(x, w, 2, 1, (1, 0, 1, 1), 1, 1, 1)\n"
            "g = nb.conv2d_grad_input(y, w, 5, 5, 2, 1, (1, 0, 1, 1), 1, 1, 1)\n"
            "m, i = nb.max_pool2d(x, 2, 2, 1, 1, (0, 0, 0, 0))\n"
            "ok = np.array_equal(nb.max_pool2d_values(x, 3, 2, 2, 1, (1, 1, 0, 1)), "
            "ref.max_pool2d(x, 3, 2, 2, 1, (1, 1, 0, 1))[0])\n"
            "ok &= np.allclose(y, ref.conv2d(x, w, 2, 1, (1, 0, 1, 1), 1, 1, 1), rtol=1e-12)\n"
            "ok &= np.allclose(g, ref.conv2d_grad_input(y, w, 5, 5, 2, 1, (1, 0, 1, 1), 1, 1, 1), rtol=1e-12)\n"
            "ok &= np.array_equal(m, ref.max_pool2d(x, 2, 2, 1, 1, (0, 0, 0, 0))[0])\n"
            "conv.SMALL_DIRECT = 0\n"  # the direct kernel on one input channel
            "x1, w1 = x[:, :1], w[:, :1]\n"
            "yd = nb.conv2d(x1, w1, 1, 1, (1, 0, 2, 1), 2, 1, 1)\n"
            "ok &= np.allclose(yd, ref.conv2d(x1, w1, 1, 1, (1, 0, 2, 1), 2, 1, 1), rtol=1e-12)\n"
            "ok &= np.allclose(nb.conv2d_grad_input(yd, w1, 5, 5, 1, 1, (1, 0, 2, 1), 2, 1, 1), "
            "ref.conv2d_grad_input(yd, w1, 5, 5, 1, 1, (1, 0, 2, 1), 2, 1, 1), rtol=1e-12)\n"
            "print(ok)")
    assert _python(code, NUMBA_DISABLE_JIT="1") == ["True"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("epsilon", [0.0, 1e-3])
@pytest.mark.parametrize("mask", ["none", "full", "per channel"])
@pytest.mark.parametrize("threads", [1, 2])
def test_lrp_step2_agrees(dtype, epsilon, mask, threads, rng, monkeypatch):
    """The one-pass step 2 (stabilize, mask, divide, and the ledger's sums) against the reference,
    which is stabilize() and NumPy: s, the sums and the per-channel sums bit for bit (the call's size
    picks one or the other, so they must agree for a sample's sums not to depend on its batch), zero
    denominators (epsilon 0: s = 0, not counted as kept or as stabilizer); the samples on one thread or
    shared among two."""
    from lrpnumpy.kernels import _common
    monkeypatch.setattr(step2, "SMALL_STEP2", 0)  # the jitted pass even on this small input
    monkeypatch.setattr(_common, "threads", lambda: threads)  # (whatever the environment says)
    runs = []
    real = step2.each_sample
    monkeypatch.setattr(step2, "each_sample", lambda n, run, least=1: runs.append(
        real(n, lambda lo, hi: runs.append((lo, hi)) or run(lo, hi), least)))
    z = rng.normal(size=(3, 4, 5, 6)).astype(dtype)
    z[0, 1, 2] = 0
    R = rng.normal(size=z.shape).astype(dtype)
    m = {"none": None, "full": z > 0.3, "per channel": rng.random((3, 4, 1, 1)) > 0.5}[mask]
    s, sums, per_channel = nb.lrp_step2(z, R, m, epsilon, 4)
    s0, sums0, per_channel0 = ref.lrp_step2(z, R, m, epsilon, 4)
    assert sorted(r for r in runs if r is not None) == ([(0, 3)] if threads == 1 else [(0, 1), (1, 3)])
    np.testing.assert_array_equal(s, s0)
    assert sums.dtype == per_channel.dtype == s.dtype == np.dtype(dtype)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for a, b in ((sums, sums0), (per_channel, per_channel0)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max())
        assert a.tobytes() == b.tobytes()
    if epsilon == 0:
        assert (s[0, 1, 2] == 0).all()
        R_g = R if m is None else np.where(m, R, 0)
        np.testing.assert_allclose(sums[:, 0] - sums[:, 1], R_g[:, 1, 2].sum(axis=1) * [1, 0, 0], atol=tol * 10)


def test_lrp_step2_checks_its_arguments(rng):
    z = rng.normal(size=(2, 3, 4))
    with pytest.raises(LRPError, match="lrp_step2"):
        kernels.lrp_step2(z, z[:, :2], None, 0.0, 3)
    with pytest.raises(LRPError, match="channels"):
        kernels.lrp_step2(z, z, None, 0.0, 5)
    with pytest.raises(LRPError, match="mask"):
        kernels.lrp_step2(z, z, np.ones((3, 3), bool), 0.0, 3)


@pytest.mark.parametrize("lowering", ["rows", "channels last", "im2col", "direct"])
@pytest.mark.parametrize("o, h", [(1, 6), (3, 3)])
def test_lowerings_return_their_own_array(lowering, o, h, rng, monkeypatch):
    """The lowerings multiply into kept per-thread buffers; their result must be a new array even
    when the reordering is a no-op (one output channel, or one output row), or the next call would
    overwrite the first one's output."""
    _force(monkeypatch, lowering)
    x, w = rng.normal(size=(2, 2, h, 5)), rng.normal(size=(o, 2, 3, 3))
    g = rng.normal(size=(2, o, h - 2, 3))
    first, first_grad = nb.conv2d(x, w, 1, 1, (0, 0, 0, 0), 1, 1, 1), nb.conv2d_grad_input(g, w, h, 5, 1, 1,
                                                                                          (0, 0, 0, 0), 1, 1, 1)
    kept, kept_grad = first.copy(), first_grad.copy()
    nb.conv2d(rng.normal(size=x.shape), w, 1, 1, (0, 0, 0, 0), 1, 1, 1)
    nb.conv2d_grad_input(rng.normal(size=g.shape), w, h, 5, 1, 1, (0, 0, 0, 0), 1, 1, 1)
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(first_grad, kept_grad)
    _close(first, ref.conv2d(x, w, 1, 1, (0, 0, 0, 0), 1, 1, 1))
    _close(first_grad, ref.conv2d_grad_input(g, w, h, 5, 1, 1, (0, 0, 0, 0), 1, 1, 1))


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("lowering", ["chosen", "im2col", "im2col by rows", "rows", "channels last", "direct",
                                      "reference"])
def test_conv_kernels_are_batch_invariant(case, lowering, rng, monkeypatch):
    """A sample's convolution and input gradient are the same bit for bit alone and inside a batch of
    7 (first, middle, last), on every lowering: each runs one sample per GEMM, its shape a sample's."""
    shape, o, (kh, kw), (sh, sw), pad, (dh, dw), groups = case
    if lowering not in ("chosen", "reference"):
        _force(monkeypatch, "im2col" if lowering == "im2col by rows" else lowering)
    if lowering == "im2col by rows":
        monkeypatch.setattr(conv, "COLUMN_BYTES", 1)
    module = ref if lowering == "reference" else nb
    x = rng.normal(size=(7,) + shape[1:])
    x[:, :, ::2] = 0  # zeros, as in images after a ReLU
    w = rng.normal(size=(o, shape[1] // groups, kh, kw))
    y = module.conv2d(x, w, sh, sw, pad, dh, dw, groups)
    gy = rng.normal(size=y.shape)
    gx = module.conv2d_grad_input(gy, w, shape[2], shape[3], sh, sw, pad, dh, dw, groups)
    for b in (0, 3, 6):
        alone = module.conv2d(x[b:b + 1], w, sh, sw, pad, dh, dw, groups)
        assert alone.tobytes() == np.ascontiguousarray(y[b:b + 1]).tobytes()
        alone = module.conv2d_grad_input(gy[b:b + 1], w, shape[2], shape[3], sh, sw, pad, dh, dw, groups)
        assert alone.tobytes() == np.ascontiguousarray(gx[b:b + 1]).tobytes()


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("lowering", ["im2col", "rows", "channels last", "direct"])
def test_conv_kernels_in_blocks_of_samples_give_the_same_bits(case, lowering, rng, monkeypatch):
    """The lowerings run a thread's samples in blocks of at most BLOCK_BYTES of their arrays (at least
    one sample): blocks of one sample, of two, and the whole batch give the same convolution and
    input gradient bit for bit, and blocks are what each run sees."""
    from lrpnumpy.kernels import _common
    shape, o, (kh, kw), (sh, sw), pad, (dh, dw), groups = case
    _force(monkeypatch, lowering)
    x = rng.normal(size=(7,) + shape[1:])
    w = rng.normal(size=(o, shape[1] // groups, kh, kw))
    gy = rng.normal(size=nb.conv2d(x, w, sh, sw, pad, dh, dw, groups).shape)

    def both():
        return (nb.conv2d(x, w, sh, sw, pad, dh, dw, groups),
                nb.conv2d_grad_input(gy, w, shape[2], shape[3], sh, sw, pad, dh, dw, groups))
    whole = both()
    calls, each = [], _common.each_sample
    monkeypatch.setattr(conv, "each_sample", lambda n, run, least=1, sample_bytes=0: each(
        n, lambda lo, hi: (calls.append((hi - lo, sample_bytes)), run(lo, hi)), least, sample_bytes))
    for block_bytes in (1, 2 << 30):
        calls.clear()
        monkeypatch.setattr(_common, "BLOCK_BYTES", block_bytes)
        for got, want in zip(both(), whole):
            assert got.tobytes() == want.tobytes()
        blocked = [rows for rows, sample_bytes in calls if sample_bytes > 0]
        if block_bytes == 1:
            assert set(blocked) <= {1}  # one sample per run wherever the lowering gives its size
        else:
            assert not blocked or min(blocked) >= 3  # a thread's whole share of the 7 (one or two threads)


def test_each_sample_runs_blocks_sized_by_the_sample(monkeypatch):
    """``sample_bytes``: each run covers at most BLOCK_BYTES // sample_bytes samples (at least one), the
    same blocks whatever the batch around them, on one thread and on two."""
    from lrpnumpy.kernels import _common
    monkeypatch.setattr(_common, "BLOCK_BYTES", 1000)
    for threads in (1, 2):
        for n in (1, 7, 10):
            seen = []
            with _common.kernel_threads(threads):
                _common.each_sample(n, lambda lo, hi: seen.append((lo, hi)), sample_bytes=300)
            assert sorted(seen)[0][0] == 0 and sum(hi - lo for lo, hi in seen) == n
            assert all(1 <= hi - lo <= 3 for lo, hi in seen)
        seen.clear()
        _common.each_sample(5, lambda lo, hi: seen.append((lo, hi)), sample_bytes=5000)  # more than a block
        assert sorted(seen) == [(i, i + 1) for i in range(5)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, n", [(784, 300), (300, 100), (100, 10), (400, 120), (84, 10)])
def test_matmul_rows_is_batch_invariant(dtype, k, n, rng):
    """Linear layers' product: a row's result is the same bit for bit whatever the other rows and
    their number (numpy's matmul is not: a one-row product runs gemv, and OpenBLAS's small-matrix
    kernels differ from its blocked GEMM); and it is the product."""
    a = rng.normal(size=(70, k)).astype(dtype)
    a[:, ::3] = 0
    wt = rng.normal(size=(n, k)).astype(dtype).T
    alone = [kernels.matmul_rows(a[i:i + 1], wt) for i in range(70)]
    for m in (1, 2, 7, 31, 32, 33, 64, 70):
        out = kernels.matmul_rows(a[:m], wt)
        assert all(out[i].tobytes() == alone[i][0].tobytes() for i in range(m)), m
    np.testing.assert_allclose(out, a @ wt, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_paths_chosen_by_batch_size_give_the_same_bits(dtype, rng, monkeypatch):
    """Pools and step 2 still choose NumPy or jitted code by the batch's size (so that a small
    explanation never imports numba); both give the same numbers bit for bit, so a sample's result
    does not depend on which one its batch took: 2 x 2 sum pools and their gradient, max pools
    (values, winners, gathering, gradient) and step 2's quotients and sums."""
    x = rng.integers(-2, 3, size=(3, 4, 10, 12)).astype(dtype)  # ties, zeros
    x[0, 0, :2] = -0.0
    z, R = rng.normal(size=(3, 40)).astype(dtype), rng.normal(size=(3, 40)).astype(dtype)
    geo = (2, 2, 2, 2, (0, 0, 0, 0), 1, 1)

    def run():
        y, idx = nb.max_pool2d(x, *geo)
        g = (x[:, :, ::2, ::2] * dtype(0.5)).copy()
        return (nb.sum_pool2d(x, *geo), nb.sum_pool2d_grad(g, 10, 12, *geo), y, idx, nb.max_pool2d_gather(x * 3, idx, *geo),
                nb.max_pool2d_grad(g, idx, 10, 12, *geo)) + tuple(nb.lrp_step2(z, R, None, 0.25, 4))

    small = run()
    monkeypatch.setattr(pool, "SMALL_POOL", 0)
    monkeypatch.setattr(step2, "SMALL_STEP2", 0)
    for a, b in zip(small, run()):
        assert a.dtype == b.dtype and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


@pytest.mark.parametrize("lowering", ["rows", "channels last", "im2col"])
def test_split_products_agree_and_are_batch_invariant(lowering, rng, monkeypatch):
    """The small-image lowerings' products in blocks (SMALL_GEMM made tiny, so that every product is
    split, along rows or columns): the convolution's numbers, the same bits alone and in a batch."""
    _force(monkeypatch, lowering)
    monkeypatch.setattr(conv, "SMALL_GEMM", 200)
    for shape, o, (kh, kw), (sh, sw), pad, (dh, dw), groups in CONV_CASES:
        x = rng.normal(size=(5,) + shape[1:])
        w = rng.normal(size=(o, shape[1] // groups, kh, kw))
        y = nb.conv2d(x, w, sh, sw, pad, dh, dw, groups)
        _close(y, ref.conv2d(x, w, sh, sw, pad, dh, dw, groups))
        gx = nb.conv2d_grad_input(y, w, shape[2], shape[3], sh, sw, pad, dh, dw, groups)
        _close(gx, ref.conv2d_grad_input(y, w, shape[2], shape[3], sh, sw, pad, dh, dw, groups))
        for b in (0, 4):
            assert nb.conv2d(x[b:b + 1], w, sh, sw, pad, dh, dw, groups).tobytes() == y[b:b + 1].tobytes()
            assert nb.conv2d_grad_input(y[b:b + 1], w, shape[2], shape[3], sh, sw, pad, dh, dw,
                                        groups).tobytes() == gx[b:b + 1].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_image_products_do_not_depend_on_blas_threads(dtype, rng):
    """toolbox_lenet's second convolution (the row lowering, 1.75 M multiply-adds a sample): whole,
    OpenBLAS ran it on its blocked GEMM, whose bits changed with its thread count (and which handed
    off to a second thread for every sample); in blocks, the same bits on one BLAS thread and on two."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    assert conv.lowering("forward", 10, 25, 14, 14, 5, 5, 1, 1, (0, 0, 0, 0), 1, 1, 1) == "rows"
    x = rng.normal(size=(3, 10, 14, 14)).astype(dtype)
    x[:, :, ::2] = 0
    w = rng.normal(size=(25, 10, 5, 5)).astype(dtype)
    out = []
    for threads in (1, 2):
        with threadpoolctl.threadpool_limits(threads, "blas"):
            y = nb.conv2d(x, w, 1, 1, (0, 0, 0, 0), 1, 1, 1)
            out.append(y.tobytes() + nb.conv2d_grad_input(y, w, 14, 14, 1, 1, (0, 0, 0, 0), 1, 1, 1).tobytes())
    assert out[0] == out[1]


def test_each_sample_threads_follow_the_callers_errstate(monkeypatch):
    """np.errstate is thread-local: the kernels' other threads run under the caller's, so an overflow
    the caller chose to ignore (pixel flipping's fill of 1e10 on huge weights) is not a warning there."""
    from lrpnumpy.kernels import _common
    monkeypatch.setattr(_common, "THREADS", 2)
    big = np.full(4, 1e300)

    def run(lo, hi):
        big[lo:hi] * 1e300  # overflows in both threads
    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError):
            _common.each_sample(4, run)
    with np.errstate(over="ignore"):
        _common.each_sample(4, run)  # no warning (pytest turns warnings into errors) in either thread


PATCH_CASES = [((3, 3, 8, 6), 5, 2, 3), ((3, 2, 9, 7), 4, 4, 3), ((2, 1, 28, 28), 64, 7, 7), ((2, 3, 5, 4), 6, 5, 4),
               ((3, 2, 12, 12), 300, 6, 6)]  # (N, C, H, W), O, kh, kw: the last one's products in blocks


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("threads", [1, 2])
def test_patches_give_the_strided_lowerings_bits(dtype, threads, rng, monkeypatch):
    """Windows that tile the input (a patch embedding): the "patches" lowering copies the input into its
    column matrix with one transpose instead of the jitted per-pixel loop, around the same products: the
    same bits as "strided", forward and input gradient (rows and columns of no window: +0),
    alone and in a batch, on the calling thread and with the samples shared among two threads."""
    from lrpnumpy.kernels import _common
    monkeypatch.setattr(_common, "THREADS", threads)
    monkeypatch.setattr(conv, "THREAD_WORK", 1)  # every batch split among the threads
    for shape, o, kh, kw in PATCH_CASES:
        geometry = (kh, kw, (0, 0, 0, 0), 1, 1, 1)
        assert conv.lowering("forward", shape[1], o, shape[2], shape[3], kh, kw, *geometry) == "patches"
        assert conv.lowering("grad_input", shape[1], o, shape[2], shape[3], kh, kw, *geometry) == "patches"
        x = rng.normal(size=shape).astype(dtype)
        w = rng.normal(size=(o, shape[1], kh, kw)).astype(dtype)
        y = nb.conv2d(x, w, *geometry)
        assert y.tobytes() == conv._conv_strided(x, w, *geometry).tobytes()
        g = rng.normal(size=y.shape).astype(dtype)
        gx = nb.conv2d_grad_input(g, w, shape[2], shape[3], *geometry)
        assert gx.tobytes() == conv._conv_strided_grad_input(g, w, shape[2], shape[3], *geometry).tobytes()
        for b in (0, len(x) - 1):  # a sample alone: its bits in the batch
            assert nb.conv2d(x[b:b + 1], w, *geometry).tobytes() == y[b:b + 1].tobytes()
            assert nb.conv2d_grad_input(g[b:b + 1], w, shape[2], shape[3], *geometry).tobytes() == gx[b:b + 1].tobytes()


def test_patches_only_where_the_windows_tile_the_input():
    """Stride = kernel > 1 without padding, dilation or groups; a 1 x 1 kernel at stride 1 keeps its lowering."""
    args = dict(c=3, o=8, h=12, w=12, kh=4, kw=4, sh=4, sw=4, padding=(0, 0, 0, 0), dh=1, dw=1, groups=1)
    assert conv.choose_lowering("forward", **args) == "patches"
    for change in [dict(padding=(1, 1, 1, 1)), dict(dh=2), dict(groups=3, o=9), dict(sh=2), dict(sw=2),
                   dict(kh=1, kw=1, sh=1, sw=1)]:
        assert conv.choose_lowering("forward", **{**args, **change}) != "patches", change


def test_step2_takes_the_jitted_pass_from_fewer_values_once_numba_is_imported(monkeypatch):
    """Above LOADED_STEP2 (4096) values, step 2 takes its jitted pass once another kernel has imported numba
    (a shipped ViT's tokens at batch 16: 25 against 31 us); before, up to SMALL_STEP2 (a small explanation
    imports no numba); SMALL_STEP2 = 0 still forces the jitted pass (the tests' switch)."""
    from lrpnumpy.kernels import _common
    for loaded, elements, want in [(True, 4096, "numpy"), (True, 4097, "plain"), (True, 17408, "plain"),
                                   (False, 17408, "numpy"), (False, 1 << 15, "numpy"), (False, (1 << 15) + 1, "plain")]:
        monkeypatch.setattr(_common, "_JITTED", loaded)
        assert step2.lowering(False, 1e-6, elements) == want, (loaded, elements)
        assert step2.lowering(True, 1e-6, elements) == want.replace("plain", "masked")
    monkeypatch.setattr(step2, "SMALL_STEP2", 0)
    assert step2.lowering(False, 1e-6, 10) == "plain"


def test_the_lowering_is_remembered_with_the_constants_it_reads(monkeypatch):
    """conv.lowering remembers choose_lowering's answer for the same shape (no cost model on every call)
    and asks again when a constant the choice reads changes (SMALL_DIRECT, DIRECT_OUT)."""
    args = ("forward", 1, 6, 28, 28, 5, 5, 1, 1, (2, 2, 2, 2), 1, 1, 1, True)
    calls = []
    choose = conv.choose_lowering
    monkeypatch.setattr(conv, "choose_lowering", lambda *a: calls.append(a) or choose(*a))
    conv._CHOSEN.clear()
    first = conv.lowering(*args)
    assert conv.lowering(*args) == first == choose(*args) != "direct" and len(calls) == 1
    monkeypatch.setattr(conv, "SMALL_DIRECT", 0)
    assert conv.lowering(*args) == "direct" == choose(*args) and len(calls) == 2
    monkeypatch.setattr(conv, "DIRECT_OUT", {"forward": 4, "grad_input": 4})
    assert conv.lowering(*args) == choose(*args) != "direct" and len(calls) == 3
    for direction in ("forward", "grad_input"):  # every test shape: the remembered choice is the chosen one
        for shape, o, (kh, kw), (sh, sw), padding, (dh, dw), groups in CONV_CASES:
            a = (direction, shape[1], o, shape[2], shape[3], kh, kw, sh, sw, padding, dh, dw, groups)
            assert conv.lowering(*a) == conv.lowering(*a) == choose(*a)


def test_lrpnumpy_threads_set_after_import_counts(monkeypatch):
    """A Dask nanny sets its workers' environment after they have imported lrpnumpy: a worker started with
    ``LRPNUMPY_THREADS=1`` ran 2 kernel threads (THREADS is read at import), so "one worker of one core"
    in benchmarks/scale.py used two."""
    from lrpnumpy.kernels import _common
    monkeypatch.setattr(_common, "THREADS", 2)
    monkeypatch.delenv("LRPNUMPY_THREADS", raising=False)
    assert _common.threads() == 2
    monkeypatch.setenv("LRPNUMPY_THREADS", "1")
    assert _common.threads() == 1
    used = set()
    _common.each_sample(8, lambda lo, hi: used.add(threading.get_ident()))
    assert used == {threading.get_ident()}
    with _common.kernel_threads(2):  # an explicit share still wins
        assert _common.threads() == 2

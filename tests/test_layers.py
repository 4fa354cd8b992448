"""Layers: forward against explicit matrices, exact gradients by finite differences, adjoints, dtypes."""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy.errors import DTypeError, LayerParameterError, ShapeError
import oracles as O


def numeric_grad(f, arr, h=1e-6):
    """Central differences of the scalar f() with respect to every entry of ``arr`` (changed in place)."""
    out = np.empty_like(arr)
    for i in np.ndindex(arr.shape):
        old = arr[i]
        arr[i] = old + h
        fp = f()
        arr[i] = old - h
        fm = f()
        arr[i] = old
        out[i] = (fp - fm) / (2 * h)
    return out


def fd_check(layer, x, rng):
    """Central differences of <layer(x), g> w.r.t. x (and the weight and bias) against backward."""
    y, step = layer.forward_trace(x)
    g = rng.normal(size=y.shape)
    analytic = layer.backward(g, step)
    f = lambda: np.sum(layer.forward(x) * g)  # noqa: E731
    np.testing.assert_allclose(analytic, numeric_grad(f, x), rtol=1e-6, atol=1e-7)
    if isinstance(layer, L.Sequential):
        return
    grads = layer.param_grads(g, step)
    for name in ("weight", "bias"):
        p = getattr(layer, name, None)
        if p is None or name not in grads:
            continue
        np.testing.assert_allclose(grads[name], numeric_grad(f, p), rtol=1e-6, atol=1e-7)


def biased(layer, rng):
    layer.bias = rng.normal(size=layer.bias.shape)
    return layer


GRAD_CASES = {
    "linear": (lambda r: biased(L.Linear(5, 4, rng=r), r), (3, 5)),
    "conv": (lambda r: biased(L.Conv2d(2, 3, 3, rng=r), r), (2, 2, 5, 6)),
    "conv_stride_pad": (lambda r: biased(L.Conv2d(2, 3, (3, 2), stride=2, padding=(1, 2), rng=r), r), (2, 2, 7, 6)),
    "conv_asym_dil_groups": (lambda r: biased(L.Conv2d(4, 6, 2, padding=(1, 0, 0, 2), dilation=(2, 1), groups=2,
                                                       rng=r), r), (1, 4, 5, 5)),
    "conv_1x1": (lambda r: biased(L.Conv2d(3, 2, 1, rng=r), r), (2, 3, 3, 3)),
    "relu": (lambda r: L.ReLU(), (2, 3, 4, 4)),
    "tanh": (lambda r: L.Tanh(), (2, 7)),
    "softmax": (lambda r: L.Softmax(), (3, 6)),
    "sumpool": (lambda r: L.SumPool2d(2), (2, 2, 4, 6)),
    "avgpool_pad": (lambda r: L.AvgPool2d(3, stride=2, padding=1), (2, 2, 5, 5)),
    "maxpool": (lambda r: L.MaxPool2d(2), (2, 2, 4, 6)),
    "maxpool_overlap_pad": (lambda r: L.MaxPool2d(3, stride=2, padding=1), (2, 2, 7, 6)),
    "maxpool_overlap": (lambda r: L.MaxPool2d((2, 3), stride=1), (1, 2, 5, 5)),
    "maxpool_dilated_ceil": (lambda r: L.MaxPool2d(2, stride=2, padding=1, dilation=2, ceil_mode=True), (2, 2, 7, 6)),
    "avgpool_dilated_ceil": (lambda r: L.AvgPool2d(2, stride=2, padding=1, dilation=(2, 1), ceil_mode=True,
                                                   count_include_pad=False), (2, 2, 7, 6)),
    "flatten": (lambda r: L.Flatten(), (2, 3, 2, 2)),
    "dropout": (lambda r: L.Dropout(0.3), (2, 5)),
    "batchnorm": (lambda r: _bn(r), (2, 3, 4, 4)),
}


def _bn(rng):
    bn = L.BatchNorm2d(3)
    bn.weight, bn.bias = rng.normal(size=3), rng.normal(size=3)
    bn.running_mean, bn.running_var = rng.normal(size=3), rng.random(3) + 0.5
    return bn


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_backward_is_the_exact_gradient(name, rng):
    make, shape = GRAD_CASES[name]
    layer = make(rng)
    x = rng.normal(size=shape)
    fd_check(layer, x, rng)


def test_sequential_backward_is_the_gradient(rng):
    net = L.Sequential(L.Conv2d(1, 2, 3, padding=1, rng=rng), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                       L.Linear(8, 3, rng=rng), L.Softmax())
    fd_check(net, rng.normal(size=(2, 1, 4, 4)), rng)


LINEAR_OPS = ["linear", "conv", "conv_stride_pad", "conv_asym_dil_groups", "conv_1x1", "sumpool", "avgpool_pad",
              "maxpool_overlap_pad", "maxpool_dilated_ceil", "avgpool_dilated_ceil", "flatten", "dropout"]


@pytest.mark.parametrize("name", LINEAR_OPS)
def test_adjoint(name, rng):
    """<A x, y> == <x, A^T y> for the linear part of each layer (bias removed).

    Max pooling counts as the linear selection of the winners its forward pass picked.
    """
    make, shape = GRAD_CASES[name]
    layer = make(rng)
    x = rng.normal(size=shape)
    _, step = layer.forward_trace(x)
    if hasattr(layer, "forward_with"):
        x = rng.normal(size=shape)  # any vector: the map is linear in it
        Ax = layer.forward_with(x, layer.weight, None, step)
        y = rng.normal(size=Ax.shape)
        ATy = layer.backward_with(y, layer.weight, step)
    else:
        Ax, step = layer.forward_trace(x)
        y = rng.normal(size=Ax.shape)
        ATy = layer.backward(y, step)
    assert np.isclose(np.vdot(Ax, y), np.vdot(x, ATy), rtol=1e-12)


CONV_CASES = [dict(), dict(stride=2), dict(padding=1), dict(stride=(2, 1), padding=(0, 2)),
              dict(padding=(2, 0, 1, 1)), dict(dilation=2), dict(groups=2), dict(kernel_size=1)]


@pytest.mark.parametrize("kw", CONV_CASES, ids=str)
def test_conv_forward_matches_matrix(kw, rng):
    kw = dict(kw)
    k = kw.pop("kernel_size", 3)
    layer = L.Conv2d(4, 6, k, rng=rng, **kw)
    layer.bias = rng.normal(size=6)
    x = rng.normal(size=(2, 4, 7, 8))
    y = layer.forward(x)
    M, shape = O.conv_matrix(layer.weight, x.shape[1:], layer.stride, layer.padding, layer.dilation, layer.groups)
    for n in range(2):
        want = (M @ x[n].ravel()).reshape(shape) + layer.bias[:, None, None]
        np.testing.assert_allclose(y[n], want, rtol=1e-12, atol=1e-12)


def test_pools_forward_match_definition(rng):
    x = rng.normal(size=(2, 3, 6, 7))
    y = L.MaxPool2d(3, stride=2, padding=1).forward(x)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    for p in range(y.shape[2]):
        for q in range(y.shape[3]):
            np.testing.assert_array_equal(y[:, :, p, q], xp[:, :, 2 * p:2 * p + 3, 2 * q:2 * q + 3].max(axis=(2, 3)))
    a = L.AvgPool2d(2).forward(x)
    np.testing.assert_allclose(a, x[:, :, :6, :6].reshape(2, 3, 3, 2, 3, 2).mean(axis=(3, 5)), rtol=1e-12)
    s = L.SumPool2d(2).forward(x)
    np.testing.assert_allclose(s, 4 * a, rtol=1e-12)


def test_maxpool_ties_go_to_first_index():
    x = np.ones((1, 1, 2, 2))
    pool = L.MaxPool2d(2)
    _, step = pool.forward_trace(x)
    np.testing.assert_array_equal(pool.backward(np.ones((1, 1, 1, 1)), step)[0, 0], [[1, 0], [0, 0]])
    np.testing.assert_array_equal(pool.backward_split(np.ones((1, 1, 1, 1)), step)[0, 0], [[.25, .25], [.25, .25]])


def test_float32_stays_float32(rng):
    net = L.Sequential(L.Conv2d(1, 3, 3, padding=1, rng=0), L.ReLU(), L.MaxPool2d(2), L.Conv2d(3, 2, 2),
                       L.ReLU(), L.AvgPool2d(1), L.Flatten(), L.Linear(2, 4, rng=0), L.Softmax()).astype(np.float32)
    x = rng.random((2, 1, 4, 4)).astype(np.float32)
    y, trace = net.forward_trace(x)
    assert net.forward(x).dtype == np.float32 and y.dtype == np.float32
    assert net.backward(np.ones((2, 4), np.float32), trace).dtype == np.float32
    for composite in (L.EpsilonPlus(), L.EpsilonGammaBox(0, 1), L.EpsilonAlpha2Beta1Flat()):
        e = L.explain(net, x, composite=composite)
        assert all(R.dtype == np.float32 for R in e.layers)


def test_dtype_mismatch_and_bad_dtypes(rng):
    layer = L.Linear(3, 2)
    with pytest.raises(DTypeError, match="float32 but its parameters are float64"):
        layer.forward(np.ones((1, 3), np.float32))
    with pytest.raises(DTypeError, match="float16"):
        layer.forward(np.ones((1, 3), np.float16))
    with pytest.raises(DTypeError, match="int64"):
        layer.forward(np.ones((1, 3), np.int64))
    with pytest.raises(DTypeError):
        L.Linear(3, 2, dtype=np.float16)


def test_shape_errors(rng):
    with pytest.raises(ShapeError, match=r"expects 3 channels on axis 1, got shape \(1, 2, 5, 5\)"):
        L.Conv2d(3, 4, 3).forward(np.ones((1, 2, 5, 5)))
    with pytest.raises(ShapeError, match="4-D input"):
        L.Conv2d(3, 4, 3).forward(np.ones((3, 5, 5)))
    with pytest.raises(ShapeError, match="expects 6 features"):
        L.Linear(6, 2).forward(np.ones((1, 5)))
    with pytest.raises(ShapeError, match="smaller than"):
        L.Conv2d(1, 1, 5).forward(np.ones((1, 1, 3, 3)))
    with pytest.raises(ShapeError, match="smaller than the window"):
        L.MaxPool2d(4).forward(np.ones((1, 1, 3, 3)))


@pytest.mark.parametrize("make", [lambda: L.Conv2d(3, 4, 0), lambda: L.Conv2d(3, 4, 3, stride=0),
                                  lambda: L.Conv2d(3, 4, 3, padding=-1), lambda: L.Conv2d(3, 4, 3, groups=2),
                                  lambda: L.MaxPool2d(2, padding=2), lambda: L.MaxPool2d(3, padding=(0, 3, 0, 0)),
                                  lambda: L.Dropout(1.0),
                                  lambda: L.Linear(0, 3), lambda: L.BatchNorm2d(3, eps=0)])
def test_invalid_layer_parameters(make):
    with pytest.raises(LayerParameterError):
        make()


def test_repr_and_container():
    net = L.Sequential(L.Conv2d(1, 2, 3, stride=2, padding=1), L.ReLU(), L.Flatten(), L.Linear(8, 2))
    assert len(net) == 4 and isinstance(net[0], L.Conv2d) and isinstance(net[1:], L.Sequential)
    assert [type(layer).__name__ for layer in net] == ["Conv2d", "ReLU", "Flatten", "Linear"]
    assert "(0): Conv2d(1, 2, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=True)" in repr(net)
    assert repr(L.MaxPool2d(3, 2, 1)) == "MaxPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))"
    with pytest.raises(ShapeError):
        L.Sequential(L.ReLU(), "relu")


def test_init_is_seeded_he_normal():
    a, b = L.Conv2d(16, 32, 3, rng=7), L.Conv2d(16, 32, 3, rng=7)
    np.testing.assert_array_equal(a.weight, b.weight)
    big = L.Linear(1000, 1100, rng=0)
    assert abs(big.weight.std() - np.sqrt(2 / 1000)) < 1e-3
    # drawn in chunks: the same values as one draw, in float32 and float64 alike
    np.testing.assert_array_equal(big.weight, np.random.default_rng(0).standard_normal((1100, 1000))
                                  * np.sqrt(2 / 1000))
    np.testing.assert_array_equal(L.Linear(1000, 1100, rng=0, dtype=np.float32).weight, big.weight.astype(np.float32))


def test_backward_needs_the_step_of_its_own_forward(rng):
    layer = L.Linear(3, 2)
    y, step = layer.forward_trace(rng.random((1, 3)))
    with pytest.raises(ShapeError, match="Step that forward_trace returned"):
        layer.backward(np.ones((1, 2)), None)
    with pytest.raises(ShapeError, match="expected the output's shape"):
        layer.backward(np.ones((5, 2)), step)
    conv = L.Conv2d(1, 1, 3, stride=2)
    y, step = conv.forward_trace(rng.random((1, 1, 7, 7)))
    with pytest.raises(ShapeError, match="expected the output's shape"):
        conv.backward(np.ones((1, 1, 4, 4)), step)  # too large for a stride-2 output of 3 x 3


LAYER_KINDS = [L.Linear(5, 3), L.Conv2d(2, 4, 3, stride=2, padding=(1, 0, 2, 1), dilation=(1, 2), groups=2),
               L.ReLU(), L.Tanh(), L.Softmax(), L.Softmax(axis=-1, flatten=True), L.Flatten(), L.Dropout(0.3),
               L.SumPool2d(2, scale=0.5), L.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
               L.MaxPool2d(3, 2, 1, dilation=(1, 2)), L.GlobalAvgPool2d(), L.BatchNorm2d(2), L.LRN(3)]


@pytest.mark.parametrize("layer", LAYER_KINDS, ids=repr)
def test_output_shape_without_running(layer, rng):
    shape = (2, 5) if isinstance(layer, L.Linear) else (2, 2, 9, 8)
    assert layer.output_shape(shape) == layer.forward(rng.normal(size=shape)).shape


@pytest.mark.parametrize("layer", LAYER_KINDS, ids=repr)
def test_config_round_trip(layer):
    """Each layer describes itself: config() rebuilds an equal layer (same repr, same parameter shapes)."""
    import json
    config = json.loads(json.dumps(layer.config()))
    params = {p: getattr(layer, p) for p in layer.params if getattr(layer, p) is not None}
    back = type(layer).from_config(config, params if layer.params else None)
    assert repr(back) == repr(layer) and back.config() == layer.config()
    for p, v in params.items():
        np.testing.assert_array_equal(getattr(back, p), v)
    assert L.Layer.registry[type(layer).__name__] is type(layer)


def test_output_shape_errors():
    with pytest.raises(ShapeError, match="expects 3 channels"):
        L.Conv2d(3, 4, 3).output_shape((1, 2, 5, 5))
    with pytest.raises(ShapeError, match="smaller than the window"):
        L.MaxPool2d(4).output_shape((1, 1, 3, 3))
    net = L.Sequential(L.Conv2d(1, 2, 3), L.ReLU(), L.Flatten(), L.Linear(2 * 4 * 4, 3))
    assert net.output_shape((7, 1, 6, 6)) == (7, 3)
    with pytest.raises(ShapeError, match="expects 32 features"):
        net.output_shape((7, 1, 7, 7))


@pytest.mark.parametrize("pool", [L.MaxPool2d(2), L.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
                                  L.MaxPool2d(2, stride=1, dilation=2)])
def test_sequential_forward_pools_before_relu_with_the_same_values(pool, rng):
    """The untraced forward runs a max pool before the ReLU that precedes it; relu(max) = max(relu)
    exactly, so the output is bit for bit the layer-by-layer one (and the traced one), NaN included."""
    net = L.Sequential(L.Conv2d(2, 3, 3, rng=rng), L.ReLU(), pool, L.Flatten())
    x = rng.normal(size=(4, 2, 9, 10))
    x[0, 0, 0, 0] = np.nan
    expected = x
    for layer in net:
        expected = layer.forward(expected)
    np.testing.assert_array_equal(net.forward(x), expected)
    np.testing.assert_array_equal(net.forward_trace(x)[0], expected)

"""Gradient methods, the native format, pictures and the demo."""

import os

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import methods as M
from lrpnumpy.errors import ModelFormatError, RuleParameterError, ShapeError, UnsupportedLayerError


def mlp(rng):
    net = L.Sequential(L.Linear(6, 5, rng=rng), L.ReLU(), L.Linear(5, 3, rng=rng), L.Softmax())
    net[0].bias, net[2].bias = rng.normal(size=5), rng.normal(size=3)
    return net


def test_gradient_matches_finite_differences(rng):
    net, x = mlp(rng), rng.normal(size=(2, 6))
    g = M.gradient(net, x, target=1).relevance
    h = 1e-6
    for i in range(6):
        d = np.zeros_like(x)
        d[:, i] = h
        fd = (net[:-1].forward(x + d)[:, 1] - net[:-1].forward(x - d)[:, 1]) / (2 * h)
        np.testing.assert_allclose(g[:, i], fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(M.gradient_x_input(net, x, 1).relevance, g * x)


def test_integrated_gradients_is_exact_on_a_linear_model(rng):
    lin = L.Sequential(L.Linear(6, 3, rng=rng))
    x = rng.normal(size=(2, 6))
    ig = M.integrated_gradients(lin, x, target=2, n=7).relevance
    np.testing.assert_allclose(ig, x * lin[0].weight[2], rtol=1e-12)
    # completeness: the sum approaches f(x) - f(0) as the steps grow
    net = mlp(rng)
    ig = M.integrated_gradients(net, x, target=0, n=2000).relevance
    diff = net[:-1].forward(x)[:, 0] - net[:-1].forward(np.zeros_like(x))[:, 0]
    np.testing.assert_allclose(ig.sum(1), diff, rtol=1e-2, atol=1e-3)


def test_smoothgrad(rng):
    net, x = mlp(rng), rng.normal(size=(2, 6))
    np.testing.assert_allclose(M.smoothgrad(net, x, 0, n=1).relevance, M.gradient(net, x, 0).relevance)
    a = M.smoothgrad(net, x, 0, n=5, rng=3).relevance
    b = M.smoothgrad(net, x, 0, n=5, noise=np.random.default_rng(3).standard_normal((4, 2, 6))).relevance
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ShapeError):
        M.smoothgrad(net, x, 0, n=5, noise=np.zeros((5, 2, 6)))
    with pytest.raises(RuleParameterError):
        M.integrated_gradients(net, x, n=0)


def test_native_round_trip_is_exact(tmp_path, rng):
    bn = L.BatchNorm2d(3)
    bn.running_var = rng.random(3) + 0.5
    net = L.Sequential(L.Conv2d(2, 3, 3, stride=2, padding=(1, 0, 2, 1), groups=1, dilation=1, rng=rng), bn,
                       L.ReLU(), L.MaxPool2d(2), L.AvgPool2d(1), L.SumPool2d(1), L.Tanh(), L.Dropout(0.2),
                       L.Flatten(), L.Linear(3 * 2 * 2, 4, bias=False, rng=rng), L.Softmax(),
                       input_shape=(2, 9, 9))
    path = tmp_path / "m.npz"
    L.io.save(net, path)
    back = L.io.load(path)
    assert repr(back) == repr(net) and back.input_shape == (2, 9, 9)
    x = rng.normal(size=(2, 2, 9, 9))
    np.testing.assert_array_equal(back.forward(x), net.forward(x))
    f32 = net.astype(np.float32)
    L.io.save(f32, path)
    assert L.io.load(path)[0].weight.dtype == np.float32
    assert L.io.load(path, dtype=np.float64)[0].weight.dtype == np.float64
    assert not [f for f in os.listdir(tmp_path) if f != "m.npz"]  # no temporary file left behind


def test_native_bad_files(tmp_path, rng):
    good = tmp_path / "good.npz"
    L.io.save(mlp(rng), good)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.npz").write_text("hello")
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    for name in ("trunc.npz", "text.npz", "plain.npz", "missing.npz"):
        with pytest.raises(ModelFormatError, match=name):
            L.io.load(tmp_path / name)
    arrays = dict(np.load(good))
    arrays["layer0.weight"] = arrays["layer0.weight"][:, :2]
    np.savez(tmp_path / "shape.npz", **arrays)
    with pytest.raises(ModelFormatError, match=r"layer 0 \(Linear\): weight has shape"):
        L.io.load(tmp_path / "shape.npz")
    arrays = dict(np.load(good))
    arrays["layer2.bias"] = arrays["layer2.bias"] * np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(ModelFormatError, match="finite"):
        L.io.load(tmp_path / "nan.npz")
    arrays = dict(np.load(good))
    arrays["__architecture__"] = np.array(str(arrays["__architecture__"]).replace("ReLU", "Swish"))
    np.savez(tmp_path / "unknown.npz", **arrays)
    with pytest.raises(UnsupportedLayerError, match="Swish"):
        L.io.load(tmp_path / "unknown.npz")


def test_pictures(tmp_path, rng):
    from lrpnumpy import viz
    from lrpnumpy.demo import sample_input
    from lrpnumpy.zoo import lenet5
    e = L.explain(lenet5(), sample_input(), composite=L.EpsilonPlus())
    fig = viz.plot_conservation(e.conservation())
    fig.savefig(tmp_path / "c.png")
    viz.heatmap(e.relevance[0]).figure.savefig(tmp_path / "h.png")
    assert (tmp_path / "c.png").stat().st_size > 1000 and (tmp_path / "h.png").stat().st_size > 1000


def test_demo_prints_the_conservation_table(tmp_path):
    import matplotlib.image as mpimg
    lines = []
    e = __import__("lrpnumpy.demo", fromlist=["run"]).run(str(tmp_path / "demo.png"), out=lines.append)
    text = "\n".join(lines)
    assert "ZBox" in text and "R at output" in text and "predicted" in text
    assert np.abs(e.conservation().residual()).max() < 1e-12
    img = mpimg.imread(tmp_path / "demo.png")[..., :3]
    reddish = (img[..., 0] > 0.8) & (img[..., 1] < 0.4) & (img[..., 2] < 0.4)
    assert reddish.sum() > 50  # the heatmaps show positive relevance, not only white and grey


METHODS = {
    "lrp": lambda net, x: L.explain(net, x, target=[0, 2], composite=L.EpsilonPlus()),
    "gradient": lambda net, x: M.gradient(net, x, [0, 2]),
    "gradient_x_input": lambda net, x: M.gradient_x_input(net, x, [0, 2]),
    "integrated_gradients": lambda net, x: M.integrated_gradients(net, x, [0, 2], n=4),
    "smoothgrad": lambda net, x: M.smoothgrad(net, x, [0, 2], n=3, rng=0),
    "smoothgrad_of_lrp": lambda net, x: M.smoothgrad(net, x, [0, 2], n=3, rng=0, method=L.explain,
                                                     composite=L.EpsilonPlus()),
    "integrated_gradients_of_lrp": lambda net, x: M.integrated_gradients(net, x, [0, 2], n=3, method=L.explain,
                                                                         rule=L.Epsilon(0.1)),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_returns_an_explanation(name, rng):
    net, x = mlp(rng), rng.normal(size=(2, 6))
    e = METHODS[name](net, x)
    assert isinstance(e, L.Explanation)
    assert e.relevance.shape == x.shape and e.relevance.dtype == x.dtype
    np.testing.assert_array_equal(e.output, net[:-1].forward(x))
    np.testing.assert_array_equal(e.target, [0, 2])
    assert name.startswith(e.method) and e.method in repr(e)
    if name == "lrp":
        assert len(e.conservation()) == len(net) - 1
    else:
        with pytest.raises(L.errors.LRPError, match="conservation"):
            e.conservation()


def test_wrapped_methods_average_the_method(rng):
    """SmoothGrad / integrated gradients of LRP: the mean of explain over the same noisy points / path."""
    net, x = mlp(rng), rng.normal(size=(2, 6))
    noise = np.random.default_rng(5).standard_normal((2, 2, 6))
    got = M.smoothgrad(net, x, 1, n=3, noise=noise, method=L.explain, rule=L.Epsilon(0.1)).relevance
    std = 0.1 * (x.max(axis=1, keepdims=True) - x.min(axis=1, keepdims=True))
    points = [x + noise[0] * std, x + noise[1] * std, x]
    want = sum(L.explain(net, p, 1, rule=L.Epsilon(0.1)).relevance / 3 for p in points)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    got = M.integrated_gradients(net, x, 1, alphas=[0.5, 1.0], method=L.explain, rule=L.Epsilon(0.1)).relevance
    want = x * sum(L.explain(net, a * x, 1, rule=L.Epsilon(0.1)).relevance / 2 for a in (0.5, 1.0))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # target None: the class predicted for x, at every point
    pred = net[:-1].forward(x).argmax(1)
    np.testing.assert_array_equal(M.integrated_gradients(net, x, n=3).target, pred)

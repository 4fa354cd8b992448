"""lrpnumpy.methods: the gradient methods, every registered method returning an Explanation, wrapped methods;
then the other methods: identities, hand-computed values, batch
invariance, float32, bad arguments."""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import methods as M
from lrpnumpy.errors import LRPError, ParameterError, RuleParameterError, ShapeError, UnsupportedLayerError


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


# ----- the other methods -----
def cnn(rng, bias=True):
    """conv (stride, padding) - ReLU - max pool - conv - ReLU - avg pool - flatten - linear - ReLU - linear."""
    net = L.Sequential(L.Conv2d(2, 4, 3, stride=1, padding=1, rng=rng, bias=bias), L.ReLU(), L.MaxPool2d(2),
                       L.Conv2d(4, 5, 3, stride=2, padding=1, rng=rng, bias=bias), L.ReLU(), L.AvgPool2d(2),
                       L.Flatten(), L.Linear(5, 6, rng=rng, bias=bias), L.ReLU(), L.Linear(6, 3, rng=rng, bias=bias))
    if bias:
        for layer in net:
            if getattr(layer, "bias", None) is not None:
                layer.bias = rng.normal(scale=0.1, size=layer.bias.shape)
    return net


#: The z-rule on every affine layer (pooling included), with no stabilizer: conserves on bias-free nets.
Z_RULE = L.Composite([((L.Conv2d, L.Linear, L.AvgPool2d), L.LRP0())])


def logit(net, x, t):
    return net.forward(x)[np.arange(len(x)), t]


def test_sensitivity_sums_to_the_squared_gradient_norm(rng):
    net, x = cnn(rng), rng.random((3, 2, 8, 8))
    g = M.gradient(net, x).relevance
    s = M.sensitivity(net, x)
    np.testing.assert_allclose(s.relevance.sum(axis=(1, 2, 3)), (g.reshape(3, -1) ** 2).sum(axis=1), rtol=1e-12)
    assert (s.relevance >= 0).all()


def test_gradient_x_input_equals_lrp0_on_a_bias_free_relu_net(rng):
    net, x = cnn(rng, bias=False), rng.random((3, 2, 8, 8))
    gi = M.gradient_x_input(net, x).relevance
    lrp0 = L.explain(net, x, composite=Z_RULE).relevance
    np.testing.assert_allclose(gi, lrp0, rtol=1e-9, atol=1e-12 * np.abs(lrp0).max())


def test_interior_gradients_are_gradients_at_scaled_inputs(rng):
    net, x = cnn(rng), rng.random((2, 2, 8, 8))
    e = M.interior_gradients(net, x, alpha=[0.25, 1.0])
    assert e.relevance.shape == (2,) + x.shape
    t = M.gradient(net, x).target
    np.testing.assert_allclose(e.relevance[0], M.gradient(net, 0.25 * x, t).relevance, rtol=1e-12)
    np.testing.assert_allclose(e.relevance[1], M.gradient(net, x).relevance, rtol=1e-12)
    np.testing.assert_allclose(M.interior_gradients(net, x, alpha=0.25, target=t).relevance, e.relevance[0])


def test_simple_taylor_at_the_origin_of_a_bias_free_net_conserves(rng):
    net, x = cnn(rng, bias=False), rng.random((3, 2, 8, 8))
    e = M.simple_taylor(net, x, root="origin")
    f = logit(net, x, e.target)
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), f, rtol=1e-10)
    np.testing.assert_allclose(e.params["residual"], 0, atol=1e-10 * np.abs(f).max())
    np.testing.assert_array_equal(e.params["f_root"], 0)


def test_simple_taylor_search_finds_a_root(rng):
    net, x = cnn(rng), rng.random((3, 2, 8, 8))
    e = M.simple_taylor(net, x, root="search")
    f = logit(net, x, e.target)
    assert np.all(np.abs(e.params["f_root"]) <= 1e-9 * np.abs(f).max() + 1e-12)
    np.testing.assert_allclose(logit(net, e.params["root"], e.target), e.params["f_root"], rtol=1e-12)
    np.testing.assert_allclose(e.params["residual"], f - e.relevance.sum(axis=(1, 2, 3)), rtol=1e-12)
    # a linear model: the first-order terms are exact at any root
    lin = L.Sequential(L.Flatten(), L.Linear(128, 3, rng=rng))
    lin[1].bias = rng.normal(size=3)
    e = M.simple_taylor(lin, x, root="search")
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), logit(lin, x, e.target), rtol=1e-9)
    given = M.simple_taylor(lin, x, root=e.params["root"], target=e.target)
    np.testing.assert_allclose(given.relevance, e.relevance, rtol=1e-12)


def test_guided_backprop_equals_the_gradient_where_no_relu_gradient_is_negative(rng):
    net = L.Sequential(L.Linear(6, 5, rng=rng), L.ReLU(), L.Linear(5, 4, rng=rng), L.ReLU(), L.Linear(4, 3, rng=rng))
    net[2].weight, net[4].weight = np.abs(net[2].weight), np.abs(net[4].weight)  # gradients at ReLUs >= 0
    x = rng.normal(size=(4, 6))
    np.testing.assert_array_equal(M.guided_backprop(net, x).relevance, M.gradient(net, x).relevance)
    # in general it differs, and keeps only what passes positive gradients
    net2, x2 = cnn(rng), rng.random((3, 2, 8, 8))
    assert not np.allclose(M.guided_backprop(net2, x2).relevance, M.gradient(net2, x2).relevance)


def test_deconvnet_ignores_the_relu_input(rng):
    net = L.Sequential(L.Linear(4, 3, bias=False, rng=rng), L.ReLU(), L.Linear(3, 2, bias=False, rng=rng))
    x = rng.normal(size=(5, 4))
    t = np.zeros(5, int)
    expected = np.maximum(net[2].weight[0], 0) @ net[0].weight  # the same for every sample
    np.testing.assert_allclose(M.deconvnet(net, x, t).relevance, np.tile(expected, (5, 1)), rtol=1e-12)


@pytest.mark.parametrize("bias", [False, True])
def test_deeplift_is_complete_on_relu_networks(rng, bias):
    """sum R = f(x) - f(baseline) exactly (max pooling, average pooling, biases)."""
    net, x = cnn(rng, bias), rng.random((3, 2, 8, 8))
    for baseline in (None, rng.random((3, 2, 8, 8)) * 0.5):
        e = M.deeplift(net, x, baseline=baseline)
        b = np.zeros_like(x) if baseline is None else baseline
        diff = logit(net, x, e.target) - logit(net, b, e.target)
        np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), diff, rtol=1e-10, atol=1e-12)


def test_deeplift_is_gradient_x_input_on_a_linear_model(rng):
    lin = L.Sequential(L.Flatten(), L.Linear(12, 3, rng=rng))
    x = rng.normal(size=(2, 3, 2, 2))
    np.testing.assert_allclose(M.deeplift(lin, x).relevance, M.gradient_x_input(lin, x).relevance, rtol=1e-12)
    with pytest.raises(UnsupportedLayerError, match="LRN"):
        M.deeplift(L.Sequential(L.LRN(3), L.Flatten(), L.Linear(12, 2, rng=rng)), x)


def test_occlusion_by_hand(rng):
    """On f = w . x with windows of one pixel, the output drop is w x: gradient x input."""
    lin = L.Sequential(L.Flatten(), L.Linear(2 * 5 * 5, 3, rng=rng))
    x = rng.normal(size=(2, 2, 5, 5))
    e = M.occlusion(lin, x, window=1, stride=1)
    gi = M.gradient_x_input(lin, x, e.target).relevance
    np.testing.assert_allclose(e.relevance, np.broadcast_to(gi.sum(axis=1, keepdims=True), x.shape), rtol=1e-12)
    # 2x2 windows, stride 2 on 5 pixels: windows at 0, 2, 4 (the last clipped); each pixel in one window
    e = M.occlusion(lin, x, window=2, stride=2)
    contrib = gi.sum(axis=1)  # (N, H, W)
    for i in (0, 2, 4):
        for j in (0, 2, 4):
            drop = contrib[:, i:i + 2, j:j + 2].sum(axis=(1, 2))
            np.testing.assert_allclose(e.relevance[:, 0, i, j], drop, rtol=1e-12)
    # overlapping windows average: window 3, stride 1 -> the centre pixel (2, 2) is under 9 windows
    e = M.occlusion(lin, x, window=3, stride=1)
    drops = [contrib[:, i:i + 3, j:j + 3].sum(axis=(1, 2)) for i in range(3) for j in range(3)]
    np.testing.assert_allclose(e.relevance[:, 0, 2, 2], np.mean(drops, axis=0), rtol=1e-12)
    # the sum of the kept window (Zennit's convention), with wrap-around
    z = M.occlusion(lin, x, window=5, stride=5, occlude="outside", score="output", average=False, wrap=True)
    np.testing.assert_allclose(z.relevance[:, 0, 0, 0], logit(lin, x, e.target), rtol=1e-12)


def test_grad_cam_by_hand(rng):
    """After the chosen layer: global average pooling and a linear head, so alpha_k = W[t, k] / (h w)."""
    net = L.Sequential(L.Conv2d(2, 4, 3, padding=1, rng=rng), L.ReLU(), L.GlobalAvgPool2d(), L.Flatten(),
                       L.Linear(4, 3, rng=rng))
    x = rng.random((2, 2, 6, 6))
    e = M.grad_cam(net, x, layer=1, relu=False)
    A = net[:2].forward(x)
    w = net[4].weight[e.target]  # (N, 4)
    expected = (w[:, :, None, None] / 36 * A).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(e.relevance, expected, rtol=1e-12)
    np.testing.assert_allclose(M.grad_cam(net, x, layer=-4).relevance, np.maximum(expected, 0), rtol=1e-12)
    np.testing.assert_allclose(M.grad_cam(net, x).relevance, np.maximum(expected, 0), rtol=1e-12)  # the last maps
    up = M.grad_cam(net, x, layer=1, upsample="nearest")
    assert up.relevance.shape == (2, 1, 6, 6)


def test_interpolate():
    a = np.arange(4.0).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(M.interpolate(a, (4, 4))[0, 0], np.repeat(np.repeat(a[0, 0], 2, 0), 2, 1))
    b = M.interpolate(a, (4, 4), "bilinear")[0, 0]
    # align_corners=False: output row 1 sits at source 0.25 -> 0.75 * row 0 + 0.25 * row 1
    np.testing.assert_allclose(b[1, 0], 0.75 * 0 + 0.25 * 2)
    np.testing.assert_allclose(b[0], [0, 0.25, 0.75, 1])
    with pytest.raises(ParameterError):
        M.interpolate(a, (4, 4), "cubic")


def test_translation_trick_without_shift_is_the_method(rng):
    net, x = cnn(rng), rng.random((2, 2, 8, 8))
    t = M.gradient(net, x).target

    def lrp(v):
        return L.explain(net, v, target=t, composite=L.EpsilonPlus())
    plain = lrp(x).relevance
    np.testing.assert_array_equal(M.translation_trick(lrp, x, [(0, 0)]).relevance, plain)
    e = M.translation_trick(lrp, x, [(0, 0), (1, 0), (0, -1), (-1, 1)])
    shifted = lrp(M.shift(x, 1, 0)).relevance
    expected = (plain + M.shift(shifted, -1, 0) + M.shift(lrp(M.shift(x, 0, -1)).relevance, 0, 1)
                + M.shift(lrp(M.shift(x, -1, 1)).relevance, 1, -1)) / 4
    np.testing.assert_allclose(e.relevance, expected, rtol=1e-12)


def test_sliding_windows_over_a_tiling_are_the_per_tile_explanations(rng):
    net = cnn(rng)
    image = rng.random((2, 2, 16, 24))
    e = M.sliding_window(net, image, window=8, stride=8, method=L.explain, composite=L.EpsilonPlus())
    total = sum(net.forward(image[:, :, i:i + 8, j:j + 8]) for i in (0, 8) for j in (0, 8, 16))
    np.testing.assert_allclose(e.output, total, rtol=1e-12)
    for i in (0, 8):
        for j in (0, 8, 16):
            tile = L.explain(net, image[:, :, i:i + 8, j:j + 8], target=e.target, composite=L.EpsilonPlus())
            np.testing.assert_allclose(e.relevance[:, :, i:i + 8, j:j + 8], tile.relevance, rtol=1e-12)
    # overlapping windows: relevance adds up; z-rule on a bias-free net conserves g(X)
    free = cnn(rng, bias=False)
    e = M.sliding_window(free, image, window=8, stride=4, method=L.explain, composite=Z_RULE)
    np.testing.assert_allclose(e.relevance.sum(axis=(1, 2, 3)), e.output[np.arange(2), e.target], rtol=1e-9)


def test_filtering_masks(rng):
    net, x = cnn(rng), rng.random((3, 2, 8, 8))
    plain = L.explain(net, x, composite=L.EpsilonPlus())
    ones = L.explain(net, x, composite=L.EpsilonPlus(), mask={3: np.ones((1, 5, 1, 1))})
    np.testing.assert_array_equal(ones.relevance, plain.relevance)
    parts = [L.explain(net, x, target=plain.target, composite=L.EpsilonPlus(),
                       mask={"3": M.channel_mask((5, 4, 4), group)}).relevance for group in ([0, 1], [2], [3, 4])]
    np.testing.assert_allclose(sum(parts), plain.relevance, rtol=1e-10, atol=1e-14)
    only = L.explain(net, x, composite=L.EpsilonPlus(), mask={3: np.zeros((1, 5, 1, 1), bool)})
    np.testing.assert_array_equal(only.relevance, 0)
    with pytest.raises(ShapeError, match="does not broadcast"):
        L.explain(net, x, mask={3: np.ones((1, 4, 1, 1))})
    with pytest.raises(ShapeError, match="no layer named"):
        L.explain(net, x, mask={"conv": np.ones(1)})
    with pytest.raises(ParameterError):
        L.explain(net, x, mask={3: np.array([np.nan])})


def test_contrastive_and_internal_influence(rng):
    net, x = cnn(rng), rng.random((3, 2, 8, 8))
    c = M.contrastive(net, x, 0, 2, composite=L.EpsilonPlus())
    r0 = L.explain(net, x, 0, composite=L.EpsilonPlus()).relevance
    r2 = L.explain(net, x, 2, composite=L.EpsilonPlus()).relevance
    np.testing.assert_allclose(c.relevance, r0 - r2, rtol=1e-12)
    out = net.forward(x)
    R = np.zeros_like(out)
    R[:, 0], R[:, 2] = out[:, 0], -out[:, 2]
    np.testing.assert_allclose(L.explain(net, x, composite=L.EpsilonPlus(), relevance_out=R).relevance, c.relevance,
                               rtol=1e-10, atol=1e-14)
    # influence at the input of the head (a linear layer): its weights' difference, whatever the data
    influence = M.internal_influence(net, x, 8, target=0, against=2)
    np.testing.assert_allclose(influence, net[9].weight[0] - net[9].weight[2], rtol=1e-12)
    # at the first layer's output: the mean over the data of the gradient there (batches of 2 or all)
    through = M.internal_influence(net, x, 0, target=1, batch_size=2)
    np.testing.assert_allclose(through, M.internal_influence(net, x, 0, target=1), rtol=1e-12)
    _, trace = net.forward_trace(x)
    seed = np.zeros((3, 3))
    seed[:, 1] = 1
    grads = {}
    trace.reverse(seed, lambda step, g: (grads.setdefault(step.index, g), step.layer.backward(g, step))[1])
    np.testing.assert_allclose(through, grads[0].mean(axis=0), rtol=1e-12)
    assert list(M.top_units(np.array([[1.0], [3.0], [2.0]]), 2)) == [1, 2]


METHOD_OPTIONS = {
    "gradient": {}, "sensitivity": {}, "gradient_x_input": {}, "interior_gradients": {"alpha": [0.5, 1.0]},
    "integrated_gradients": {"n": 4}, "smoothgrad": {"n": 3, "rng": 0}, "simple_taylor": {"root": "search"},
    "deconvnet": {}, "guided_backprop": {}, "deeplift": {}, "occlusion": {"window": 3, "stride": 2},
    "grad_cam": {}, "lrp": {"composite": L.EpsilonPlus()},
}


@pytest.mark.parametrize("name", sorted(METHOD_OPTIONS))
def test_every_method_batch_invariant_float32_and_clear_errors(rng, name):
    net, x = cnn(rng), rng.random((3, 2, 8, 8))
    method, kw = M.get(name), METHOD_OPTIONS[name]
    if name == "smoothgrad":
        one = lambda v: method(net, v, 1, **kw)  # noqa: E731 - noise draws follow the batch
        np.testing.assert_allclose(one(x[:1]).relevance, method(net, x[:1], 1, **kw).relevance, rtol=1e-12)
    else:
        e = method(net, x, 1, **kw)
        assert isinstance(e, L.Explanation) and np.isfinite(e.relevance).all()
        axis = 1 if name == "interior_gradients" else 0
        for i in range(3):
            single = method(net, x[i:i + 1], 1, **kw).relevance
            np.testing.assert_allclose(np.take(e.relevance, [i], axis=axis), single, rtol=1e-9,
                                       atol=1e-12 * max(np.abs(single).max(), 1e-300))
    net32, x32 = net.astype(np.float32), x.astype(np.float32)
    e32 = method(net32, x32, 1, **kw)
    assert e32.relevance.dtype == np.float32 and np.isfinite(e32.relevance).all()
    with pytest.raises(LRPError):
        method(net, x.astype(np.float32), 1, **kw)  # a float32 input to a float64 network
    with pytest.raises(LRPError):
        method(net, np.full_like(x, np.nan), 1, **kw)
    with pytest.raises(LRPError):
        method(net, x, 7, **kw)  # no class 7
    with pytest.raises(LRPError):
        method(net, x[:, :1], 1, **kw)  # one channel for a two-channel network


@pytest.mark.parametrize("call", [
    lambda net, x: M.simple_taylor(net, x, root="nowhere"),
    lambda net, x: M.simple_taylor(net, x, root=np.zeros((1, 2, 8, 8))),
    lambda net, x: M.simple_taylor(net, x, steps=0),
    lambda net, x: M.deeplift(net, x, eps=-1.0),
    lambda net, x: M.deeplift(net, x, baseline=np.zeros((3, 2, 8, 8), np.float32)),
    lambda net, x: M.occlusion(net, x, window=0),
    lambda net, x: M.occlusion(net, x, fill=np.nan),
    lambda net, x: M.occlusion(net, x, occlude="around"),
    lambda net, x: M.occlusion(net, x[:, :, :, 0]),
    lambda net, x: M.grad_cam(net, x, layer=99),
    lambda net, x: M.grad_cam(net, x, layer="conv"),
    lambda net, x: M.interior_gradients(net, x, alpha=[]),
    lambda net, x: M.translation_trick(lambda v: M.gradient(net, v), x, [(1,)]),
    lambda net, x: M.sliding_window(net, x, window=9, stride=1, method=M.gradient),
    lambda net, x: M.get("lime"),
])
def test_bad_arguments_raise_lrpnumpy_errors(rng, call):
    with pytest.raises(LRPError):
        call(cnn(rng), rng.random((3, 2, 8, 8)))


def test_pattern_net_recovers_the_signal_direction(rng):
    """Data = signal along a_s + distractor along a_d through a filter w that extracts the signal
    (w.a_s = 1, w.a_d = 0): the pattern is a_s (cosine >= 0.99), the weights are not."""
    d = 10
    a_s, a_d = rng.normal(size=d), rng.normal(size=d)
    w = np.linalg.lstsq(np.stack([a_s, a_d]), np.array([1.0, 0.0]), rcond=None)[0]
    x = rng.normal(size=(5000, 1)) * a_s + 3 * rng.normal(size=(5000, 1)) * a_d
    net = L.Sequential(L.Linear(d, 2, bias=False))
    net[0].weight = np.stack([w, -w])

    def cos(u, v):
        return abs(float(u.ravel() @ v.ravel())) / np.linalg.norm(u) / np.linalg.norm(v)
    patterns = M.fit_patterns(net, x, kind="linear")
    assert cos(patterns[0][0], a_s) >= 0.99 and cos(w, a_s) < 0.95
    signal = M.pattern_net(net, x[:4], 0, patterns=patterns)
    assert all(cos(r, a_s) >= 0.99 for r in signal.relevance)
    assert all(cos(r, a_s) < 0.95 for r in M.gradient(net, x[:4], 0).relevance)
    # for one linear neuron PatternAttribution is w * a * y, which sums to y (w.a = 1 by construction)
    pa = M.pattern_attribution(net, x[:4], 0, patterns=patterns)
    np.testing.assert_allclose(pa.relevance.sum(axis=1), net.forward(x[:4])[:, 0], rtol=1e-10)


def test_fit_patterns_on_a_cnn_by_hand(rng):
    """Convolution statistics are over every patch: compare with patches written out; the
    positive-regime estimator for layers that feed a ReLU, the linear one for the logits."""
    net, x = cnn(rng), rng.random((6, 2, 8, 8))
    patterns = M.fit_patterns(net, x, batch_size=4)
    assert sorted(patterns) == [0, 3, 7, 9] and all(patterns[i].shape == net[i].weight.shape for i in patterns)
    # layer 0: 3x3 patches of the zero-padded input, y = w.patch, statistics where y > 0
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack([xp[:, :, i:i + 3, j:j + 3] for i in range(8) for j in range(8)], axis=1).reshape(-1, 18)
    W = net[0].weight.reshape(4, 18)
    y = patches @ W.T
    for o in range(4):
        on = y[:, o] > 0
        xy, ex, ey = (patches[on] * y[on, o:o + 1]).mean(0), patches[on].mean(0), y[on, o].mean()
        cov = xy - ex * ey
        np.testing.assert_allclose(patterns[0][o].ravel(), cov / (W[o] @ cov), rtol=1e-9)
    # the logits: all samples (linear estimator)
    h = net[:9].forward(x)
    z = h @ net[9].weight.T
    cov = (h[:, None, :] * z[:, :, None]).mean(0) - h.mean(0)[None] * z.mean(0)[:, None]
    np.testing.assert_allclose(patterns[9], cov / (net[9].weight * cov).sum(1, keepdims=True), rtol=1e-9)
    for method in (M.pattern_net, M.pattern_attribution):
        e = method(net, x[:3], 1, patterns=patterns)
        assert e.relevance.shape == (3, 2, 8, 8) and np.isfinite(e.relevance).all()
        single = method(net, x[1:2], 1, patterns=patterns).relevance
        np.testing.assert_allclose(e.relevance[1:2], single, rtol=1e-10, atol=1e-14)
    with pytest.raises(LRPError):
        M.pattern_net(net, x, patterns={1: np.ones(3)})
    with pytest.raises(LRPError):
        M.pattern_net(net, x, patterns={0: np.ones((2, 2))})
    with pytest.raises(LRPError):
        M.fit_patterns(net, x, kind="quadratic")


def test_integrated_gradients_completeness_error_shrinks_with_steps(rng):
    net, x = cnn(rng), rng.random((3, 2, 8, 8))
    t = M.gradient(net, x).target
    gap = logit(net, x, t) - logit(net, np.zeros_like(x), t)
    errors = [np.abs(M.integrated_gradients(net, x, t, n=n).relevance.sum(axis=(1, 2, 3)) - gap).max()
              for n in (4, 16, 64, 256)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05 * errors[0]


def test_token_occlusion_and_interior_gradients_on_a_recurrent_model_with_lengths():
    """Methods that run altered copies of the batch together give each copy its sample's length: occlusion
    of tokens and interior gradients on a ragged batch equal each sentence alone (the shipped LSTM)."""
    from lrpnumpy import text, zoo
    net = zoo.trained("fortunes_lstm", dtype=np.float64)
    x, _, lengths = text.text_model(net).inputs(text.fortunes().texts[:3])
    x, lengths = x[:, :20], np.minimum(lengths, 20)
    assert len(set(lengths.tolist())) > 1
    with L.sequence_lengths(lengths):
        occ = M.occlusion(net, x, target=2, window=2, stride=1, fill=0.0, batch_size=16)
        E = net[0].forward(x)
        inter = M.interior_gradients(net[1:], E, target=2, alpha=[0.5, 1.0]).relevance
    for n, T in enumerate(lengths):
        alone = M.occlusion(net, x[n:n + 1, :T], target=2, window=2, stride=1, fill=0.0)
        # (the last token: the padded batch has one more window over it, half past the end, than the sentence)
        np.testing.assert_allclose(occ.relevance[n, :T - 1], alone.relevance[0, :T - 1], rtol=1e-12, atol=1e-14)
        assert np.abs(occ.relevance[n, :T]).max() > 1e-6
        g = M.interior_gradients(net[1:], E[n:n + 1, :T], target=2, alpha=[0.5, 1.0]).relevance
        np.testing.assert_allclose(inter[:, n, :T], g[:, 0], rtol=1e-12, atol=1e-14)
        assert (inter[:, n, T:] == 0).all()

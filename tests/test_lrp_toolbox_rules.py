"""composites.get("lrp_toolbox", rule=..., param=...) against the Toolbox's rules written out from
their formulas, window by window (an independent computation: loops, no lrpnumpy rules)."""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites, zoo
from lrpnumpy.errors import RuleParameterError


def sgn(z):
    return np.where(z >= 0, 1.0, -1.0)


def weighted_windows(layer, x):
    """For a Conv2d (no padding) or Linear: yields (output index, input slice, W as (out, *window), b)."""
    if isinstance(layer, L.Linear):
        yield (slice(None),), (slice(None),), layer.weight, layer.bias
        return
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    oh, ow = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    for i in range(oh):
        for j in range(ow):
            yield (slice(None), i, j), (slice(None), slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)), \
                layer.weight, layer.bias


def oracle_weighted(layer, x, R, rule, param):
    """The Toolbox's formulas on one Conv2d/Linear layer: x (N, ...), R at its output."""
    Rx = np.zeros_like(x)
    for out_idx, in_idx, W, b in weighted_windows(layer, x):
        a = x[(slice(None),) + in_idx]                      # (N, *window)
        r = R[(slice(None),) + out_idx]                      # (N, out)
        Z = W[None] * a[:, None]                            # (N, out, *window): z_ij
        axes = tuple(range(2, Z.ndim))
        b = np.zeros(W.shape[0]) if b is None else b
        if rule in ("simple", "epsilon"):
            e = 1e-16 if rule == "simple" else param
            Zs = Z.sum(axis=axes) + b
            Zs = Zs + e * sgn(Zs)
            share = Z / Zs.reshape(Zs.shape + (1,) * (Z.ndim - 2))
        elif rule == "alphabeta":
            alpha, beta = param, 1 - param
            Zp, Zn = Z * (Z > 0), Z * (Z < 0)
            Zsp = Zp.sum(axis=axes) + b * (b > 0) + 1e-16
            Zsn = Zn.sum(axis=axes) + b * (b < 0) - 1e-16
            expand = (1,) * (Z.ndim - 2)
            share = alpha * Zp / Zsp.reshape(Zsp.shape + expand) + beta * Zn / Zsn.reshape(Zsn.shape + expand)
        elif rule == "flat":
            share = np.ones_like(Z) / np.prod(W.shape[1:])
        else:  # ww
            W2 = W ** 2
            share = np.broadcast_to((W2 / W2.reshape(len(W2), -1).sum(1).reshape((-1,) + (1,) * (W.ndim - 1)))[None],
                                    Z.shape)
        Rx[(slice(None),) + in_idx] += (share * r.reshape(r.shape + (1,) * (Z.ndim - 2))).sum(axis=1)
    return Rx


def oracle_pool(layer, x, R, rule, param):
    """Sum pooling (the Toolbox's 1/sqrt(h w) scaling) or max pooling, window by window."""
    k, s = layer.kernel_size[0], layer.stride[0]
    Rx = np.zeros_like(x)
    for i in range(R.shape[2]):
        for j in range(R.shape[3]):
            win = (slice(None), slice(None), slice(i * s, i * s + k), slice(j * s, j * s + k))
            a, r = x[win], R[:, :, i:i + 1, j:j + 1]
            if rule in ("flat", "ww"):
                share = np.ones_like(a) / (k * k)
            elif isinstance(layer, L.MaxPool2d):
                winners = (a == a.max(axis=(2, 3), keepdims=True)).astype(float)
                share = winners / winners.sum(axis=(2, 3), keepdims=True)
            elif rule == "alphabeta":
                ap, an = a * (a > 0), a * (a < 0)
                share = param * ap / (ap.sum(axis=(2, 3), keepdims=True) + 1e-16) \
                    + (1 - param) * an / (an.sum(axis=(2, 3), keepdims=True) - 1e-16)
            else:
                S = a.sum(axis=(2, 3), keepdims=True)  # the unscaled window sum
                share = a / (S + (1e-12 if rule == "simple" else param) * sgn(S))
            Rx[win] += share * r
    return Rx


def oracle(net, x, target, rule, param):
    out, trace = net.forward_trace(x)
    R = out * np.eye(out.shape[1])[target]
    for step in reversed(list(trace)):
        layer, a = step.layer, step.input
        if isinstance(layer, (L.Conv2d, L.Linear)):
            R = oracle_weighted(layer, a, R, rule, param)
        elif isinstance(layer, (L.SumPool2d, L.MaxPool2d)):
            R = oracle_pool(layer, a, R, rule, param)
        else:  # ReLU, Flatten: relevance passes on
            R = R.reshape(a.shape)
    return R


def maxpool_net(rng):
    net = L.Sequential(L.Conv2d(1, 4, 5, rng=rng), L.ReLU(), L.MaxPool2d(2), L.Conv2d(4, 6, 3, rng=rng), L.ReLU(),
                       L.Flatten(), L.Linear(6 * 3 * 3, 5, rng=rng))
    for layer in net:
        if getattr(layer, "bias", None) is not None:
            layer.bias = rng.normal(scale=0.1, size=layer.bias.shape)
    return net


@pytest.mark.parametrize("rule, param", [("simple", None), ("epsilon", 0.01), ("epsilon", 1.0), ("alphabeta", 2.0),
                                         ("alphabeta", 1.0), ("alphabeta", 0.5), ("flat", None), ("ww", None)])
@pytest.mark.parametrize("model", ["toolbox_lenet", "maxpool"])
def test_lrp_toolbox_composite_matches_the_toolbox_formulas(rng, rule, param, model):
    if model == "toolbox_lenet":
        net = zoo.toolbox_lenet(seed=1, bias_scale=0.1)
        x = rng.random((2, 1, 32, 32)) * 2 - 1  # the Toolbox's MNIST inputs lie in [-1, 1]
    else:
        net = maxpool_net(rng)
        x = rng.normal(size=(2, 1, 14, 14))
        x[0, 0, :2, :2] = 0.5  # a tied max-pool window: the tie is split
    target = np.array([1, 3])
    comp = composites.get("lrp_toolbox", rule=rule, **({} if param is None else {"param": param}))
    ours = L.explain(net, x, target, composite=comp).relevance
    expected = oracle(net, x, target, rule, param)
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


def test_lrp_toolbox_composite_arguments():
    with pytest.raises(RuleParameterError, match="one of simple"):
        composites.get("lrp_toolbox", rule="gamma")
    with pytest.raises(RuleParameterError, match="takes no parameter"):
        composites.get("lrp_toolbox", rule="flat", param=1.0)
    with pytest.raises(RuleParameterError):
        composites.get("lrp_toolbox", rule="epsilon", param=float("nan"))
    assert repr(composites.get("lrp_toolbox", rule="alphabeta")) == "LRPToolbox(rule='alphabeta', param=2.0)"

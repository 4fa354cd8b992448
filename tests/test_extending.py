"""Extending lrpnumpy from outside the package, with the documented contract only (docs/extending.rst).

This file plays a user: it defines a new layer (Softplus, an element-wise activation with its exact
gradient), a new rule (the epsilon rule on the positive weights, through the four steps) and a new
explanation method (the gradient's walk with a replaced backward pass at element-wise layers), and
shows that ``explain``, the gradient methods, a finite-difference check of the kind ``verify`` makes,
``save``/``load`` and pixel flipping work with them, without any change to the package.
"""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import evaluate, incremental, io, methods as M, rules
from lrpnumpy.errors import UnsupportedLayerError
from lrpnumpy.explanation import logit_network
from lrpnumpy.rules import AffineRule, Group, Term
from lrpnumpy.stabilize import stabilize


# ----- the new layer: the contract's required part (output_shape, _forward, _backward, config) -----

class Softplus(L.Layer):
    """``log(1 + exp(beta x)) / beta``, entry by entry; its gradient is ``sigmoid(beta x)``."""

    elementwise = True            # declared: the incremental engine and DeepLIFT read it
    config_keys = ("beta",)       # what save/load keep

    def __init__(self, beta=1.0):
        self.beta = float(beta)

    def __repr__(self):
        return f"Softplus(beta={self.beta!r})"

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def _forward(self, a):
        b = a.dtype.type(self.beta)
        return np.logaddexp(a.dtype.type(0), b * a) / b

    def _backward(self, grad, step):
        b = grad.dtype.type(self.beta)
        return grad / (1 + np.exp(-b * step.input))


# ----- the new rule: only its terms; the four steps, the fast path and the ledger are the package's -----

class PositiveEpsilon(AffineRule):
    r"""The epsilon rule on the positive weights: ``R_in = x * W+^T [R / stabilize(W+ x + b+)]``."""

    def __init__(self, epsilon=1e-6):
        self.epsilon = float(epsilon)

    def groups(self, layer, step):
        W, b = layer.weight, layer.bias
        return [Group([Term(step.input, np.maximum(W, 0), None if b is None else np.maximum(b, 0))])]


# ----- the new method: the gradient's walk with the element-wise layers' backward replaced -----

def rectified_gradient(model, x, target=None):
    """The gradient with every element-wise layer passing only the positive part of its gradient."""
    def visit(step, g):
        return np.maximum(step.layer.backward(g, step), 0) if step.layer.elementwise else None
    g, out, t, _ = M.walk(logit_network(model, x), x, target, visit)
    return L.Explanation(g, out, t, method="rectified_gradient")


@pytest.fixture(autouse=True)
def registered():
    """Register the three by name while a test of this file runs (the package's own tests list
    what the package registers, so the names are taken out again afterwards)."""
    rules.register("positive_epsilon")(PositiveEpsilon)     # as @rules.register(...) above the class
    M.register("rectified_gradient")(rectified_gradient)
    L.Layer.registry["Softplus"] = Softplus                 # done by defining the class (taken out below)
    yield
    del rules.REGISTRY["positive_epsilon"], M.REGISTRY["rectified_gradient"], L.Layer.registry["Softplus"]


# Defining a Layer subclass registers it by class name, which is how load finds it.
L.Layer.registry.pop("Softplus")


def network(rng, beta=1.0):
    return L.Sequential(L.Conv2d(1, 4, 3, padding=1, rng=rng), Softplus(beta), L.MaxPool2d(2), L.Flatten(),
                        L.Linear(4 * 8 * 8, 3, rng=rng), input_shape=(1, 16, 16))


def central_differences(f, x, h=1e-6):
    out = np.empty_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        up = f()
        x[i] = old - h
        down = f()
        x[i] = old
        out[i] = (up - down) / (2 * h)
    return out


def test_the_layer_gradient_is_exact_by_finite_differences(rng):
    layer, x = Softplus(0.7), rng.normal(size=(2, 3, 4))
    y, step = layer.forward_trace(x)
    w = rng.normal(size=y.shape)
    g = layer.backward(w, step)
    np.testing.assert_allclose(g, central_differences(lambda: float((layer.forward(x) * w).sum()), x),
                               rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(layer.forward(x), np.log1p(np.exp(0.7 * x)) / 0.7, rtol=1e-15)


def test_gradient_methods_walk_through_it_as_verify_would_check_them(rng):
    """The network's gradient (Trace.backward through the new layer) against central differences of
    the target logit, and gradient x input, integrated gradients' completeness, DeepLIFT's."""
    net, x = network(rng), rng.normal(size=(2, 1, 16, 16))
    e = M.gradient(net, x, target=1)
    v = x.copy()  # changed in place, entry by entry
    fd = central_differences(lambda: float(net.forward(v)[:, 1].sum()), v)  # the samples do not interact
    np.testing.assert_allclose(e.relevance, fd, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(M.gradient_x_input(net, x, target=1).relevance, fd * x, rtol=1e-6, atol=1e-9)
    ig = M.integrated_gradients(net, x, target=1, n=200)
    completeness = net.forward(x)[:, 1] - net.forward(np.zeros_like(x))[:, 1]
    np.testing.assert_allclose(ig.relevance.sum(axis=(1, 2, 3)), completeness, rtol=1e-2)  # 200 steps, max-pool kinks
    dl = M.deeplift(net, x, target=1)  # the Rescale rule at the layer (it declares elementwise)
    np.testing.assert_allclose(dl.relevance.sum(axis=(1, 2, 3)), completeness, rtol=1e-10)


def test_explain_passes_relevance_through_the_new_layer(rng):
    net, x = network(rng), np.abs(rng.normal(size=(2, 1, 16, 16)))
    e = L.explain(net, x, composite=L.EpsilonPlus())
    assert e.rules[1] == L.Pass()  # the default rule of a layer no composite names
    np.testing.assert_array_equal(e.layers[1], e.layers[2])  # Pass: R at its input is R at its output
    reference = L.explain(net, x, composite=L.EpsilonPlus(), reference=True)
    np.testing.assert_allclose(e.relevance, reference.relevance, rtol=0, atol=1e-12 * np.abs(e.relevance).max())
    assert np.abs(e.conservation().residual()).max() < 1e-10


def test_the_new_rule_is_the_four_steps_of_its_terms(rng):
    net, x = network(rng), rng.normal(size=(2, 1, 16, 16))
    rule = rules.get("positive_epsilon:epsilon=0.01")
    assert rule == PositiveEpsilon(0.01)
    e = L.explain(net, x, target=2, rule={4: rule})
    _, trace = net.forward_trace(x)
    a, lin = trace[4].input, net[4]
    R = e.layers[5]  # at the Linear layer's output: the target logit
    z = a @ np.maximum(lin.weight, 0).T + np.maximum(lin.bias, 0)   # the matrix form, by hand
    expected = a * ((R / stabilize(z, 0.01)) @ np.maximum(lin.weight, 0))
    np.testing.assert_allclose(e.layers[4], expected, rtol=1e-12, atol=1e-14)
    reference = L.explain(net, x, target=2, rule={4: rule}, reference=True)
    np.testing.assert_allclose(reference.layers[4], expected, rtol=1e-12, atol=1e-14)
    bias = (R / stabilize(z, 0.01) * np.maximum(lin.bias, 0)).sum(axis=1)
    np.testing.assert_allclose(e.conservation().rows[4]["bias"], bias, rtol=1e-10)  # the ledger, for free
    with pytest.raises(UnsupportedLayerError, match="affine"):  # Softplus does not declare affine
        L.explain(net, x, rule={1: rule})


def test_the_new_method_by_name(rng):
    net, x = network(rng), rng.normal(size=(2, 1, 16, 16))
    e = M.get("rectified_gradient")(net, x, target=0)
    assert e.method == "rectified_gradient"
    g = M.gradient(net, x, target=0).relevance
    # by hand: the Linear/pool/Flatten part's gradient at the Softplus output, then the rectified layer
    out, trace = net.forward_trace(x)
    seed = np.zeros_like(out)
    seed[:, 0] = 1
    at_softplus = seed
    for k in (4, 3, 2):
        at_softplus = net[k].backward(at_softplus, trace[k])
    expected = net[0].backward(np.maximum(net[1].backward(at_softplus, trace[1]), 0), trace[0])
    np.testing.assert_allclose(e.relevance, expected, rtol=1e-12)
    assert not np.allclose(e.relevance, g)  # the replaced backward pass changed something


def test_save_and_load_round_trip(rng, tmp_path):
    net, x = network(rng, beta=2.5), rng.normal(size=(3, 1, 16, 16))
    io.save(net, tmp_path / "softplus.npz")
    back = io.load(tmp_path / "softplus.npz")
    assert type(back[1]) is Softplus and back[1].beta == 2.5
    np.testing.assert_array_equal(back.forward(x), net.forward(x))
    np.testing.assert_array_equal(L.explain(back, x, composite=L.EpsilonPlus()).relevance,
                                  L.explain(net, x, composite=L.EpsilonPlus()).relevance)


def test_pixel_flipping_runs_the_new_layer_incrementally(rng):
    net, x = network(rng), rng.uniform(size=(2, 1, 16, 16))
    assert incremental.plan(net, (1, 16, 16), 1, 1) >= 2  # the conv and the Softplus run incrementally
    e = M.get("rectified_gradient")(net, x)
    fast = evaluate.pixel_flipping(net, x, e.relevance, features_per_step=1, steps=40, progress=False)
    full = evaluate.pixel_flipping(net, x, e.relevance, features_per_step=1, steps=40, progress=False,
                                   incremental=False)
    np.testing.assert_allclose(fast.curves, full.curves, rtol=1e-10, atol=1e-12)
    scores = [net.forward(x)[np.arange(2), e.target]]
    assert np.allclose(fast.curves[:, 0], scores[0]) and not np.allclose(fast.curves[:, -1], scores[0])

"""What every layer declares about itself (docs/extending.rst) holds for what it computes.

Rules, methods, graphs and the incremental engine trust these declarations instead of lists of
layer types, so a layer that declares what it is not would get wrong answers silently.
"""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy.errors import ShapeError
from test_reliability import EMPTY_LAYERS


def make(kind, rng, n=3):
    """A layer of ``kind`` and a batch of ``n`` random inputs for it (a list: one per input)."""
    factory, shape = EMPTY_LAYERS[kind]
    layer = factory()
    return layer, [rng.normal(size=(n,) + s) for s in (shape if isinstance(shape, list) else [shape])]


def declaring(attr, value=True):
    return [k for k in sorted(EMPTY_LAYERS) if getattr(L.Layer.registry[k], attr) == value]


def test_the_declarations_are_where_the_docs_say():
    assert declaring("elementwise") == ["GELU", "Hardtanh", "LeakyReLU", "ReLU", "ReLU6", "SiLU", "Sigmoid", "Tanh"]
    assert declaring("products") == ["MatMul", "Mul"] and declaring("recurrent") == ["GRU", "LSTM"]
    assert declaring("pool", "max") == ["MaxPool2d"] and declaring("pool", "sum") == ["SumPool2d"]
    assert set(declaring("normalises")) == {"LRN", "LayerNorm", "RMSNorm", "Softmax"}
    assert {"Linear", "Conv2d", "Conv1d", "Add", "MaxPool2d", "ChannelAffine"} <= set(declaring("affine"))


@pytest.mark.parametrize("kind", sorted(EMPTY_LAYERS))
def test_n_inputs_is_what_the_layer_takes_and_graph_checks_it(kind, rng):
    layer, xs = make(kind, rng)
    assert layer.n_inputs is None or layer.n_inputs == len(xs)
    wrong = ["input"] * (3 if layer.n_inputs in (None, 1) else 1)  # None: any number; give it 3 when 1 fits
    if layer.n_inputs is None:
        return
    with pytest.raises(ShapeError, match="takes"):
        L.Graph([("node", layer, wrong)])


@pytest.mark.parametrize("kind", declaring("elementwise"))
def test_elementwise_layers_compute_entry_by_entry(kind, rng):
    layer, (x,) = make(kind, rng)
    y = layer.forward(x)
    pick = rng.choice(x.size, size=7, replace=False)
    alone = layer.forward(x.reshape(-1)[pick][:, None])  # any shape: a column of the picked entries
    np.testing.assert_allclose(alone[:, 0], y.reshape(-1)[pick], rtol=1e-14, atol=0)


@pytest.mark.parametrize("kind", declaring("linear"))
def test_linear_layers_are_linear_given_their_step_and_backward_is_the_adjoint(kind, rng):
    layer, xs = make(kind, rng)
    y, step = layer.forward_trace(*xs)
    if step.state is not None:  # linear given the step's state (max pooling: its winners): not checkable here
        return
    vs = [rng.normal(size=x.shape) for x in xs]
    others = [rng.normal(size=x.shape) for x in xs]
    change = layer.forward(*[x + v for x, v in zip(xs, vs)]) - y
    np.testing.assert_allclose(change, layer.forward(*[o + v for o, v in zip(others, vs)]) - layer.forward(*others),
                               rtol=1e-9, atol=1e-12)  # the same change anywhere: linear plus a constant
    g = rng.normal(size=y.shape)
    back = layer.backward(g, step)
    back = back if isinstance(back, tuple) else (back,)
    np.testing.assert_allclose(float((change * g).sum()), sum(float((b * v).sum()) for b, v in zip(back, vs)),
                               rtol=1e-9)


@pytest.mark.parametrize("kind", declaring("affine"))
def test_affine_layers_run_their_map_with_their_own_parameters(kind, rng):
    layer, xs = make(kind, rng)
    y, step = layer.forward_trace(*xs)
    z = layer.forward_with(layer.joint_input(step), layer.weight, layer.bias, step)
    np.testing.assert_allclose(z, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", declaring("rearranges"))
def test_rearranging_layers_only_move_values(kind, rng):
    layer, xs = make(kind, rng)
    y = layer.forward(*xs)
    values = np.concatenate([x.ravel() for x in xs])
    if y.size == values.size:  # a reshape, permutation, split or join: every value, once
        np.testing.assert_array_equal(np.sort(y, axis=None), np.sort(values))
    else:  # a selection (SelectToken): each output is one input entry, none taken twice
        assert y.size < values.size
        kept, counts = np.unique(y, return_counts=True)
        assert np.isin(kept, values).all() and (counts <= np.array([(values == v).sum() for v in kept])).all()


@pytest.mark.parametrize("kind", declaring("products"))
def test_products_are_linear_in_each_input_but_not_jointly(kind, rng):
    layer, (a, b) = make(kind, rng)
    y = layer.forward(a, b)
    np.testing.assert_allclose(layer.forward(2 * a, b), 2 * y, rtol=1e-12)
    np.testing.assert_allclose(layer.forward(a, 3 * b), 3 * y, rtol=1e-12)
    np.testing.assert_allclose(layer.forward(2 * a, 3 * b), 6 * y, rtol=1e-12)


@pytest.mark.parametrize("kind", declaring("recurrent"))
def test_recurrent_layers_give_the_product_rules_their_walk_through_time(kind, rng):
    layer, (x,) = make(kind, rng)
    y, step = layer.forward_trace(x)
    R_in, ledger = L.SignalTakesAll(0.0).propagate(step, np.ones_like(y))  # through layer.lrp
    assert R_in.shape == x.shape and np.isfinite(R_in).all() and R_in.any()


@pytest.mark.parametrize("kind", declaring("pool", "max") + declaring("pool", "sum"))
def test_pools_are_their_windows_reduced(kind, rng):
    layer, (x,) = make(kind, rng)
    y = layer.forward(x)
    kh, kw, sh, sw, (top, bottom, left, right), dh, dw = layer.window(*x.shape[2:])
    fill = -np.inf if layer.pool == "max" else 0.0
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)
    expected = np.empty_like(y)
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            taps = padded[:, :, i * sh:i * sh + (kh - 1) * dh + 1:dh, j * sw:j * sw + (kw - 1) * dw + 1:dw]
            expected[:, :, i, j] = taps.max(axis=(2, 3)) if layer.pool == "max" else taps.sum(axis=(2, 3)) * layer.scale
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)


# ----- one backward walk, and names registered next to their definitions -----

def test_every_backward_walk_is_trace_reverse(rng, monkeypatch):
    """explain, Network.backward and the gradient methods all walk a trace through Trace.reverse."""
    from lrpnumpy import methods as M
    from lrpnumpy.trace import Trace
    net = L.Sequential(L.Linear(6, 5, rng=rng), L.ReLU(), L.Linear(5, 3, rng=rng))
    x = rng.normal(size=(2, 6))
    walks = []
    original = Trace.reverse
    monkeypatch.setattr(Trace, "reverse", lambda self, seed, visit: walks.append(1) or original(self, seed, visit))
    L.explain(net, x)
    _, trace = net.forward_trace(x)
    g = net.backward(np.ones((2, 3)), trace)
    grads = net.backward(np.ones((2, 3)), trace, param_grads=True)
    np.testing.assert_array_equal(grads[0], g)
    for method in (M.gradient, M.guided_backprop, M.deconvnet, M.deeplift):
        method(net, x)
    assert len(walks) == 7
    np.testing.assert_array_equal(trace.backward(np.ones((2, 3))), g)
    assert len(walks) == 8


def test_register_by_decorator_or_call(monkeypatch):
    from lrpnumpy import composites, methods as M, rules
    from lrpnumpy.errors import RuleParameterError
    monkeypatch.setattr(composites, "REGISTRY", composites.REGISTRY.__class__("composite"))

    @composites.register("mine")
    class Mine(composites.Composite):
        def __init__(self, epsilon=0.5):
            super().__init__([(L.Linear, L.Epsilon(epsilon))])
    assert composites.register("also_mine", Mine) is Mine
    assert isinstance(composites.get("mine"), Mine) and isinstance(composites.get("also_mine", epsilon=0.1), Mine)
    with pytest.raises(RuleParameterError, match="unknown composite 'other'; known: also_mine, mine"):
        composites.get("other")
    with pytest.raises(RuleParameterError, match="non-empty string"):
        M.register("")
    with pytest.raises(RuleParameterError, match="unknown rule 'nope'"):
        rules.get("nope")
    assert list(M.REGISTRY)[:2] == ["lrp", "gradient"] and M.REGISTRY["lrp"] is L.explain


def test_forward_many_is_the_old_name_of_forward_with_many(rng):
    """A subclass that overrides the old name is still what the fast path calls (and the other way round)."""
    calls = []

    class Counted(L.Linear):
        def forward_many(self, x, weights, step, biases=None):
            calls.append(len(weights))
            return super().forward_many(x, weights, step, biases)
    L.Layer.registry.pop("Counted")
    assert L.Conv1d.forward_with_many is L.Conv1d.__dict__["forward_many"]
    assert L.Linear.forward_many is L.Linear.forward_with_many
    layer, x = Counted(4, 3, rng=rng), rng.normal(size=(2, 4))
    e = L.explain(L.Sequential(layer), x, rule=L.ZPlus())
    assert calls  # the override ran
    plain = L.Linear.from_config(layer.config(), {"weight": layer.weight, "bias": layer.bias})
    np.testing.assert_array_equal(e.relevance, L.explain(L.Sequential(plain), x, rule=L.ZPlus()).relevance)

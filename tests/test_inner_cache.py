"""The Inner rule's cached resolution of a block's primitives (rules_transformer.Inner._rules)."""

import pickle
import threading

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites
from lrpnumpy.layers import Softmax
from lrpnumpy.rules import Pass
from lrpnumpy.rules_transformer import Inner
from oracles import stabilized_masked


def _net():
    net = L.zoo.trained("fashion_vit", dtype=np.float64)
    net.freeze()
    return net, L.datasets.sample(np.float64).images[:3]


def _inner(composite):
    return next(rule for _, rule in composite.layer_map if isinstance(rule, Inner))


def test_resolution_is_kept_per_type_sequence_and_matches_the_composite():
    net, x = _net()
    comp = composites.get("attnlrp", epsilon=1e-9)
    inner = _inner(comp)
    block = net[3]
    graph = block._graph()
    first = inner._rules(graph)
    assert inner._rules(graph) is first  # cached
    assert inner._rules(block.graph()) is first  # a rebuilt graph of the same types: the same entry
    expected = [r if r is not None else composites.default_rule(layer)
                for r, layer in zip(composites.Composite(comp.layer_map).rules(graph), graph)]
    assert list(first) == expected and all(a is b for a, b in zip(first, expected))
    assert not any("_resolved" in vars(layer) or "_rules" in vars(layer) for layer in graph)


def test_two_composites_with_different_epsilon_keep_their_own_results():
    net, x = _net()
    a, b = composites.get("attnlrp", epsilon=1e-9), composites.get("attnlrp", epsilon=0.5)
    ra, rb = (L.explain(net, x, composite=c).relevance for c in (a, b))
    rb2, ra2 = [L.explain(net, x, composite=c).relevance for c in (b, a)]
    assert not np.allclose(ra, rb)
    np.testing.assert_array_equal(ra, ra2)
    np.testing.assert_array_equal(rb, rb2)
    fresh = L.explain(net, x, composite=composites.get("attnlrp", epsilon=0.5)).relevance
    np.testing.assert_array_equal(rb, fresh)


def test_changed_layer_map_and_replaced_parameters_are_seen():
    net, x = _net()
    comp = composites.get("attnlrp", epsilon=1e-9)
    before = L.explain(net, x, composite=comp).relevance
    i = next(i for i, (types, _) in enumerate(comp.layer_map) if types is Softmax)
    comp.layer_map[i] = (Softmax, Pass())  # a new rule object for a primitive type
    changed = L.explain(net, x, composite=comp).relevance
    assert not np.allclose(before, changed)
    fresh = composites.get("attnlrp", epsilon=1e-9)
    fresh.layer_map[i] = (Softmax, Pass())
    np.testing.assert_array_equal(changed, L.explain(net, x, composite=fresh).relevance)

    comp = composites.get("attnlrp", epsilon=1e-9)
    L.explain(net, x, composite=comp)
    block = net[3]
    block.norm2.weight = np.asarray(block.norm2.weight * 1.5)  # a replaced (writeable) parameter
    after = L.explain(net, x, composite=comp).relevance
    copy = net.copy()
    np.testing.assert_array_equal(after, L.explain(copy, x, composite=composites.get("attnlrp", epsilon=1e-9)).relevance)
    assert not np.allclose(before, after)


def test_threads_share_a_composite_and_pickling_drops_the_cache():
    net, x = _net()
    comps = [composites.get("attnlrp", epsilon=e) for e in (1e-9, 0.1)]
    serial = [L.explain(net, x, composite=composites.get("attnlrp", epsilon=e)).relevance for e in (1e-9, 0.1)]
    results, errors = {}, []

    def work(t):
        try:
            for k in range(5):
                j = (t + k) % 2
                results.setdefault((t, j), []).append(L.explain(net, x, composite=comps[j]).relevance)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for (t, j), rs in results.items():
        for r in rs:
            np.testing.assert_array_equal(r, serial[j])
    clone = pickle.loads(pickle.dumps(comps[1]))
    assert "_resolved" not in vars(_inner(clone))
    np.testing.assert_array_equal(L.explain(net, x, composite=clone).relevance, serial[1])


def test_inner_trace_matches_the_checked_graph_trace_and_keeps_the_blocks_checks():
    from lrpnumpy.errors import NonFiniteError, ShapeError
    from lrpnumpy.layers.attention import inner_trace
    net, x = _net()
    tokens = net[:3].forward(x) if hasattr(net, "__getitem__") else None
    for layer in (net[3], net[3].self_attn):
        graph = layer._graph() if hasattr(layer, "_graph") else layer.graph()
        y1, t1 = graph.forward_trace(tokens)
        y2, t2 = inner_trace(graph, tokens)
        assert y1.tobytes() == y2.tobytes() and len(t1.steps) == len(t2.steps)
        for s1, s2 in zip(t1, t2):
            assert s1.layer is s2.layer and s1.index == s2.index and s1.parents == s2.parents
            assert s1.output.tobytes() == s2.output.tobytes()
    assert net[3].checked_graph and not L.layers.transformer.GraphLayer.checked_graph
    bad = tokens.copy()
    bad[0, 1, 2] = np.nan
    with pytest.raises(NonFiniteError):  # LayerNorm's own check still runs inside the block
        L.explain(net[3:], bad, composite=composites.get("attnlrp"))
    with pytest.raises(ShapeError):
        net[3].forward_trace(tokens[:, :, :5])


@pytest.mark.parametrize("large", [0, None])
def test_stabilized_in_place_form_agrees_with_the_masked_form_on_zero_inf_and_nan_denominators(large, monkeypatch):
    from lrpnumpy import rules_transformer
    from lrpnumpy.rules_transformer import _stabilized
    if large is not None:  # every array takes the in-place form
        monkeypatch.setattr(rules_transformer, "_LARGE", large)
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        for poison in (None, 0.0, np.inf, -np.inf, np.nan):
            for eps in (0.0, 1e-6):
                z = rng.standard_normal((3, 2, 5, 5)).astype(dt)
                R = rng.standard_normal(z.shape).astype(dt)
                if poison is not None:
                    z[1, 0, 2, 3] = poison
                z0 = z.copy()
                with np.errstate(invalid="ignore" if poison not in (None, 0.0) else "raise"):  # (a non-finite z)
                    s, ledger = _stabilized(z, R, eps)
                    s_ref, ref = stabilized_masked(z, R, eps)
                assert z.tobytes() == z0.tobytes()  # the forward output is not written into
                assert s.tobytes() == s_ref.tobytes() and sorted(ledger) == sorted(ref)
                for key in ref:
                    np.testing.assert_array_equal(ledger[key], ref[key])
                    if poison is None or (poison == 0.0 and eps):
                        assert ledger[key].tobytes() == ref[key].tobytes()


def test_rules_write_only_into_their_own_arrays():
    from lrpnumpy.rules_transformer import _times
    x = np.arange(6.0).reshape(2, 3)
    view = np.ones((2, 6))[:, :3]
    assert _times(x, view) is not view and np.all(view == 1)  # a view is not written into
    frozen = np.ones((2, 3))
    frozen.flags.writeable = False
    assert _times(x, frozen) is not frozen
    small = np.ones((1, 3))
    assert _times(x, small).shape == (2, 3) and np.all(small == 1)  # a broadcast one neither
    own = np.full((2, 3), 2.0)
    assert _times(x, own) is own and np.array_equal(own, 2 * x)

    net, x = _net()  # the traced inputs and outputs are unchanged by an explanation
    out, trace = net.forward_trace(x)
    before = [s.output.tobytes() for s in trace]
    inner = [s.output.tobytes() for st in trace if isinstance(st.state, tuple) for s in st.state[1]]
    L.explain(net, x, composite=composites.get("attnlrp"))
    out2, trace2 = net.forward_trace(x)
    assert before == [s.output.tobytes() for s in trace2]
    assert inner == [s.output.tobytes() for st in trace2 if isinstance(st.state, tuple) for s in st.state[1]]


def test_softmax_rule_masks_minus_inf_also_next_to_nan():
    from lrpnumpy.layers import Softmax
    from lrpnumpy.rules_transformer import SoftmaxRule
    x = np.array([[[0.5, -np.inf, 1.0, 2.0]], [[np.nan, -np.inf, 1.0, 0.0]]])
    layer = Softmax(axis=-1)
    y, step = layer.forward_trace(x)
    R = np.ones_like(y)
    R_in, _ = SoftmaxRule().propagate(step, R)
    assert R_in[0, 0, 1] == 0 and np.isfinite(R_in[0]).all()
    assert R_in[1, 0, 1] == 0 or np.isnan(R_in[1, 0, 1])
    x0 = np.where(np.isneginf(x), 0, x)
    expected = x0 * (R - y * R.sum(-1, keepdims=True))
    np.testing.assert_array_equal(R_in, expected)


def test_dotted_parameter_names_are_class_properties_that_follow_the_children():
    from lrpnumpy.layers.transformer import TransformerEncoderLayer
    block = TransformerEncoderLayer(8, 2, 16, rng=0)
    assert isinstance(vars(TransformerEncoderLayer)["norm1.weight"], property)
    new = np.full(8, 2.0)
    setattr(block, "norm1.weight", new)
    assert getattr(block, "norm1.weight") is block.norm1.weight and np.array_equal(block.norm1.weight, new)
    block.norm1 = L.LayerNorm(8)  # a replaced child is what the name reads
    assert getattr(block, "norm1.weight") is block.norm1.weight
    blank = object.__new__(TransformerEncoderLayer)
    assert not hasattr(blank, "norm1.weight")
    copy = block.copy()
    assert getattr(copy, "linear1.weight") is copy.linear1.weight is not block.linear1.weight

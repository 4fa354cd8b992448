"""explain(), composites, the conservation table, fold_batchnorm and input errors."""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites
from lrpnumpy.errors import DTypeError, LRPError, NonFiniteError, RuleParameterError, ShapeError, TargetError


def cnn(rng, bias=True):
    net = L.Sequential(
        L.Conv2d(1, 4, 3, padding=1, rng=rng), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(4, 6, 3, stride=1, rng=rng), L.ReLU(), L.AvgPool2d(2),
        L.Flatten(), L.Linear(6 * 2 * 2, 5, rng=rng), L.ReLU(), L.Linear(5, 3, rng=rng), L.Softmax())
    for layer in net:
        if bias and getattr(layer, "bias", None) is not None:
            layer.bias = rng.normal(size=layer.bias.shape) * 0.1
    return net


COMPOSITES = [L.EpsilonPlus(), L.EpsilonAlpha2Beta1(), L.EpsilonGammaBox(0, 1), L.EpsilonPlusFlat(),
              L.EpsilonAlpha2Beta1Flat(), L.DeepTaylor(0, 1)]


@pytest.mark.parametrize("composite", COMPOSITES, ids=lambda c: type(c).__name__)
def test_batch_equals_single_samples(composite, rng):
    net = cnn(rng)
    x = rng.random((4, 1, 12, 12))
    batch = L.explain(net, x, target=[0, 1, 2, 1], composite=composite)
    for n in range(4):
        one = L.explain(net, x[n:n + 1], target=[0, 1, 2, 1][n], composite=composite)
        np.testing.assert_allclose(batch.relevance[n:n + 1], one.relevance, rtol=1e-12, atol=1e-15)


def test_explanation_structure(rng):
    net = cnn(rng)
    x = rng.random((2, 1, 12, 12))
    e = L.explain(net, x, target=1, composite=L.EpsilonPlus())
    assert e.relevance.shape == x.shape
    assert e.output.shape == (2, 3)  # logits: the trailing softmax is skipped
    np.testing.assert_allclose(e.output, net[:-1].forward(x))
    assert len(e.layers) == len(net) and e.layers[0] is e.relevance  # 10 explained layers + output
    np.testing.assert_array_equal(e.layers[-1], np.eye(3)[[1, 1]] * e.output)
    assert [type(r).__name__ for r in e.rules] == ["ZPlus", "Pass", "WinnerTakesAll", "ZPlus", "Pass", "Norm",
                                                   "Pass", "Epsilon", "Pass", "Epsilon"]


def test_conservation_report(rng):
    net = cnn(rng)
    x = rng.random((3, 1, 12, 12))
    e = L.explain(net, x, composite=L.EpsilonGammaBox(0, 1))
    report = e.conservation()
    assert len(report) == len(e.network)
    for row, R_in, R_out in zip(report, e.layers[:-1], e.layers[1:]):
        np.testing.assert_allclose(row["relevance_in"], R_in.reshape(3, -1).sum(1), rtol=1e-12)
        np.testing.assert_allclose(row["relevance_out"], R_out.reshape(3, -1).sum(1), rtol=1e-12)
    assert np.abs(report.residual()).max() < 1e-12
    text = str(report)
    assert "ZBox" in text and "Gamma" in text and "stabilizer" in text
    assert report.to_dict(sample=0)[0]["layer"].startswith("Conv2d")


def test_targets_and_relevance_out(rng):
    net = cnn(rng)
    x = rng.random((2, 1, 12, 12))
    e = L.explain(net, x)
    pred = e.output.argmax(1)
    np.testing.assert_array_equal(e.layers[-1], np.eye(3)[pred] * e.output)
    R_out = rng.normal(size=(2, 3))
    e2 = L.explain(net, x, relevance_out=R_out, rule=L.Epsilon())
    np.testing.assert_array_equal(e2.layers[-1], R_out)
    # linearity: explaining two classes at once = the sum of explaining each
    a = L.explain(net, x, target=0, rule=L.Epsilon()).relevance
    b = L.explain(net, x, target=2, rule=L.Epsilon()).relevance
    both = np.eye(3)[0] + np.eye(3)[2]
    c = L.explain(net, x, relevance_out=both * e.output, rule=L.Epsilon()).relevance
    np.testing.assert_allclose(a + b, c, rtol=1e-10, atol=1e-14)


def test_rule_by_index_and_composite_precedence(rng):
    net = cnn(rng)
    x = rng.random((1, 1, 12, 12))
    e = L.explain(net, x, rule={0: L.Flat(), -1: L.Epsilon(0.5)})
    assert isinstance(e.rules[0], L.Flat) and e.rules[-1] == L.Epsilon(0.5)
    assert isinstance(e.rules[3], L.LRP0)  # default of other weighted layers
    c = L.Composite(layer_map={L.Conv2d: L.ZPlus()}, index_map={3: L.Gamma()}, first_map=[(L.Conv2d, L.Flat())])
    rules = c.rules(net)
    assert isinstance(rules[0], L.Flat) and isinstance(rules[3], L.Gamma) and rules[7] is None
    flat = composites.get("epsilon_plus_flat").rules(L.Sequential(L.Flatten(), L.Linear(4, 2), L.Linear(2, 2)))
    assert isinstance(flat[1], L.Flat) and isinstance(flat[2], L.Epsilon)
    egb = composites.get("epsilon_gamma_box", low=-1, high=2).rules(net)
    assert isinstance(egb[0], L.ZBox) and isinstance(egb[3], L.Gamma) and isinstance(egb[7], L.Epsilon)
    dt = L.DeepTaylor(0, 1).rules(net)
    assert isinstance(dt[0], L.ZBox) and isinstance(dt[3], L.ZPlus) and isinstance(dt[9], L.ZPlus)


def test_composite_registry_errors():
    with pytest.raises(RuleParameterError, match="unknown composite 'nope'"):
        composites.get("nope")
    with pytest.raises(RuleParameterError, match="epsilon_gamma_box"):
        composites.get("epsilon_gamma_box")  # low/high missing
    with pytest.raises(RuleParameterError):
        L.Composite(layer_map={L.Conv2d: "zplus"})


def test_no_nan_for_zero_input_dead_relus_and_empty_windows(rng):
    net = cnn(rng, bias=False)
    x = np.zeros((2, 1, 12, 12))
    for composite in COMPOSITES:
        for e in (L.explain(net, x, composite=composite), L.explain(net, x, rule=L.LRP0())):
            assert all(np.isfinite(R).all() for R in e.layers)
    # dead ReLUs: a large negative bias kills every unit of the first layer
    dead = cnn(rng)
    dead[0].bias[:] = -100.0
    x = rng.random((2, 1, 12, 12))
    for rule in (L.LRP0(), L.ZPlus(), L.Gamma(), L.AlphaBeta(), L.Epsilon(0)):
        e = L.explain(dead, x, rule=rule, relevance_out=np.ones((2, 3)))
        assert all(np.isfinite(R).all() for R in e.layers)
        assert e.conservation().residual().max() < 1e-12
    # all-zero pooling windows
    pool = L.Sequential(L.SumPool2d(2), L.Flatten(), L.Linear(4, 2))
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0] = 1.0
    e = L.explain(pool, x, relevance_out=np.ones((1, 2)), rule=L.Epsilon())
    assert np.isfinite(e.relevance).all()


def test_fold_batchnorm(rng):
    bn = L.BatchNorm2d(4)
    bn.weight, bn.bias = rng.normal(size=4), rng.normal(size=4)
    bn.running_mean, bn.running_var = rng.normal(size=4), rng.random(4) + 0.1
    net = L.Sequential(L.Conv2d(2, 4, 3, rng=rng, bias=False), bn, L.ReLU(), L.Flatten(), L.Linear(4 * 4 * 4, 3))
    folded = L.fold_batchnorm(net)
    assert len(folded) == 4 and not any(isinstance(layer, L.BatchNorm2d) for layer in folded)
    x = rng.normal(size=(2, 2, 6, 6))
    np.testing.assert_allclose(folded.forward(x), net.forward(x), rtol=1e-12, atol=1e-12)
    assert net[0].bias is None  # the original is untouched
    lone = L.Sequential(L.BatchNorm2d(2), L.Flatten())
    assert isinstance(L.fold_batchnorm(lone)[0], L.BatchNorm2d)


@pytest.mark.parametrize("bad, error, message", [
    (np.full((1, 1, 12, 12), np.nan), NonFiniteError, "NaN or infinity"),
    (np.ones((1, 1, 12, 12), np.float16), LRPError, "float16"),
    (np.ones((1, 1, 12, 12), np.int32), LRPError, "int32"),
    (np.ones((1, 2, 12, 12)), ShapeError, "expects 1 channels"),
    (np.ones((1, 12, 12)), ShapeError, "4-D input"),
    ([[1.0]], LRPError, "numpy ndarray"),
])
def test_bad_inputs(bad, error, message, rng):
    with pytest.raises(error, match=message):
        L.explain(cnn(rng), bad)


@pytest.mark.parametrize("kwargs, message", [
    (dict(target=3), "out of range"), (dict(target=-1), "out of range"), (dict(target=[0]), "one class per sample"),
    (dict(target=1.5), "int"), (dict(target=True), "int"),
])
def test_bad_targets(kwargs, message, rng):
    with pytest.raises(TargetError, match=message):
        L.explain(cnn(rng), rng.random((2, 1, 12, 12)), **kwargs)


def test_bad_rule_arguments(rng):
    net, x = cnn(rng), rng.random((1, 1, 12, 12))
    with pytest.raises(RuleParameterError, match="either rule or composite"):
        L.explain(net, x, rule=L.Epsilon(), composite=L.EpsilonPlus())
    with pytest.raises(RuleParameterError, match="Rule object"):
        L.explain(net, x, rule="epsilon")
    with pytest.raises(RuleParameterError, match="out of range"):
        L.explain(net, x, rule={20: L.Epsilon()})
    with pytest.raises(ShapeError, match="relevance_out"):
        L.explain(net, x, relevance_out=np.ones((1, 4)))
    with pytest.raises(NonFiniteError):
        L.explain(net, x, relevance_out=np.full((1, 3), np.inf))
    with pytest.raises(ShapeError, match="ZBox bound"):
        L.explain(net, x, composite=L.EpsilonGammaBox(np.zeros(3), np.ones(3)))


def test_relevance_out_must_have_the_output_dtype_and_excludes_target(rng):
    """The README says relevance_out has the output's dtype: a float32 one on a float64 network (and the
    reverse) is refused, not cast; with target too, target would be ignored: refused."""
    net, x = cnn(rng), rng.random((2, 1, 12, 12))
    with pytest.raises(DTypeError, match="relevance_out is float32 but the network's output is float64"):
        L.explain(net, x, relevance_out=np.ones((2, 3), np.float32))
    with pytest.raises(DTypeError, match="relevance_out is float64 but the network's output is float32"):
        L.explain(net.astype(np.float32), x.astype(np.float32), relevance_out=np.ones((2, 3)))
    with pytest.raises(TargetError, match="either target or relevance_out"):
        L.explain(net, x, target=1, relevance_out=np.ones((2, 3)))
    e = L.explain(net, x, relevance_out=np.eye(3)[[1, 1]])  # alone it still works, and means what it says
    assert e.target is None and e.relevance.dtype == np.float64


def test_masked_arrays_are_refused_everywhere(rng):
    """A numpy.ma array's mask would be silently ignored: explain, every method, the metrics and a plain
    forward pass refuse it (DTypeError naming the masked array)."""
    from lrpnumpy import evaluate as E, methods as M
    net = cnn(rng)
    x = rng.random((2, 1, 12, 12))
    masked = np.ma.masked_array(x, mask=x > 0.5)
    calls = {"explain": lambda: L.explain(net, masked), "forward": lambda: net.forward(masked),
             "relevance_out": lambda: L.explain(net, x, relevance_out=np.ma.masked_array(np.ones((2, 3)))),
             "pixel_flipping": lambda: E.pixel_flipping(net, masked, x),
             "pixel_flipping relevance": lambda: E.pixel_flipping(net, x, np.ma.masked_array(x)),
             "compare": lambda: E.compare(net, masked, {"gradient": M.gradient}),
             "continuity": lambda: E.continuity(net, M.gradient, masked, [(0, 1)])}
    options = {"occlusion": dict(window=4, stride=4), "pattern_net": dict(patterns=M.fit_patterns(net, x)),
               "pattern_attribution": dict(patterns=M.fit_patterns(net, x))}
    for name, method in M.REGISTRY.items():
        calls[name] = lambda method=method, name=name: method(net, masked, **options.get(name, {}))
    for name, call in calls.items():
        with pytest.raises(DTypeError, match="masked array"):
            call()


ALL_RULES = [L.Epsilon(), L.ZPlus(), L.AlphaBeta(2, 1), L.AlphaBeta(1, 0), L.Gamma(), L.ZBox(-1, 2), L.Flat(),
             L.WSquare(), L.Rho("gamma", bias="raw"), L.Rho("positive", bias="zero"), L.LRP0()]


@pytest.mark.parametrize("rule", ALL_RULES, ids=repr)
def test_frozen_networks_cache_derived_weights_without_changing_results(rule, rng):
    net = cnn(rng)
    x = rng.random((2, 1, 12, 12)) - 0.3  # negative inputs too: every term runs
    plain = L.explain(net, x, rule=rule).relevance
    frozen = net.copy().freeze()
    first = L.explain(frozen, x, rule=rule).relevance
    again = L.explain(frozen, x, rule=rule).relevance
    np.testing.assert_array_equal(first, plain)
    np.testing.assert_array_equal(again, plain)


def test_frozen_cache_follows_new_weights(rng):
    net = cnn(rng).freeze()
    x = rng.random((1, 1, 12, 12))
    L.explain(net, x, composite=L.EpsilonGammaBox(0, 1))
    cached = net[3].derived("positive-part", lambda: None)
    assert cached is not None and not cached[0].flags.writeable  # W+ (what gamma needs after a ReLU) was kept
    with pytest.raises(ValueError, match="read-only"):
        net[3].weight[0, 0, 0, 0] = 1.0
    new = net[3].weight * 2
    net[3].weight = new  # a new array: what was derived from the old one is not used
    got = L.explain(net, x, composite=L.EpsilonGammaBox(0, 1)).relevance
    fresh = net.copy()  # unfrozen copy, same weights
    np.testing.assert_array_equal(got, L.explain(fresh, x, composite=L.EpsilonGammaBox(0, 1)).relevance)
    net.clear()
    assert "_derived" not in vars(net[3])


# ----- explain(..., reference=True): the literal four steps end to end -----

def _residual_graph(rng):
    def conv(i, o):
        c = L.Conv2d(i, o, 3, padding=1, rng=rng)
        c.bias = rng.normal(size=o) * 0.1
        return c
    head = L.Linear(4 * 3 * 3, 3, rng=rng)
    head.bias = rng.normal(size=3) * 0.1
    return L.Graph([("c1", conv(1, 4), "input"), ("r1", L.ReLU(), "c1"), ("c2", conv(4, 4), "r1"),
                    ("add", L.Add(), ["c2", "r1"]), ("r2", L.ReLU(), "add"), ("pool", L.MaxPool2d(2), "r2"),
                    ("sum", L.SumPool2d(2), "pool"), ("flat", L.Flatten(), "sum"), ("fc", head, "flat")],
                   input_shape=(1, 12, 12))


def _same_explanation(fast, ref):
    assert ref.params.pop("reference") is True and ref.params == fast.params
    for got, want in zip(fast.layers, ref.layers):
        for g, w in zip(*[r if isinstance(r, tuple) else (r,) for r in (got, want)]):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12 * np.abs(w).max())
    a, b = fast.conservation().rows, ref.conservation().rows
    assert len(a) == len(b) == len(fast.network)
    for row_a, row_b in zip(a, b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            if isinstance(row_a[key], (str, int)) or key == "inputs":
                assert row_a[key] == row_b[key], key
            elif row_a[key] is None:
                assert row_b[key] is None, key
            else:  # per-sample sums (and an Add's parts)
                np.testing.assert_allclose(np.asarray(row_a[key]), np.asarray(row_b[key]), rtol=1e-10, atol=1e-12,
                                           err_msg=f"{key} of {row_a['layer']} ({row_a['rule']})")


REFERENCE_RULES = [L.LRP0(), L.Epsilon(0.25), L.ZPlus(), L.AlphaBeta(2, 1), L.AlphaBeta(1, 0), L.Gamma(0.25),
                   L.ZBox(-1.0, 2.0), L.Flat(), L.WSquare(), L.WSquare(bias=False), L.Rho("gamma", bias="raw"),
                   L.Rho("positive"), L.Rho("identity", bias="zero"), L.rules.ToolboxAlphaBeta(1.5),
                   L.Epsilon(0.25, bias_factor=0.5)]


@pytest.mark.parametrize("make", [cnn, _residual_graph], ids=["sequential", "graph"])
@pytest.mark.parametrize("how", [("composite", n) for n in sorted(composites.REGISTRY)]
                         + [("rule", r) for r in REFERENCE_RULES], ids=str)
def test_reference_explain_equals_the_fast_path(make, how, rng):
    """explain(..., reference=True) runs the literal four_steps on every layer: the same relevance at
    every layer (1e-12, float64) and the same conservation report as the fast path."""
    net = make(rng)
    x = rng.random((3, 1, 12, 12)) - 0.2  # signed input: the first layer's x- terms are live
    kind, what = how
    kwargs = {"composite": composites.get(what, bounds=(-1.0, 2.0))} if kind == "composite" else {"rule": what}
    fast = L.explain(net, x, target=[0, 1, 2], **kwargs)
    ref = L.explain(net, x, target=[0, 1, 2], reference=True, **kwargs)
    _same_explanation(fast, ref)


def test_reference_is_true_or_false(rng):
    with pytest.raises(RuleParameterError, match="reference must be True or False"):
        L.explain(cnn(rng), rng.random((1, 1, 12, 12)), reference="yes")


def test_reference_runs_no_fast_path(rng, monkeypatch):
    """With reference=True not one layer goes through rules_fast (it is made to fail here)."""
    import lrpnumpy.rules_fast as fast

    def refuse(*args, **kwargs):
        raise AssertionError("the fast path ran")
    net, x = _residual_graph(rng), rng.random((2, 1, 12, 12))
    want = L.explain(net, x, composite=L.EpsilonGammaBox(0, 1)).relevance
    monkeypatch.setattr(fast, "propagate", refuse)
    got = L.explain(net, x, composite=L.EpsilonGammaBox(0, 1), reference=True).relevance
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    with pytest.raises(AssertionError, match="the fast path ran"):
        L.explain(net, x, composite=L.EpsilonGammaBox(0, 1))


def test_the_vocabulary_is_its_own_module_below_the_rules():
    """Explanation, ConservationReport, targets, one-hot and the checked forward pass live in
    lrpnumpy.explanation, which imports no rule, composite, method or driver; lrpnumpy.explain
    re-exports the same objects (old imports keep working)."""
    import ast
    import inspect

    import importlib
    driver = importlib.import_module("lrpnumpy.explain")  # the module (lrpnumpy.explain is the function)
    vocab = importlib.import_module("lrpnumpy.explanation")
    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(vocab)))
                if isinstance(node, ast.ImportFrom)}
    assert imported <= {"errors", "layers", "layers.base"}, imported
    for name in ("Explanation", "ConservationReport", "target_classes", "onehot", "target_onehot", "sample_rows",
                 "forward_checked", "forward_finite", "logit_network", "without_softmax", "layer_index"):
        assert getattr(driver, name) is getattr(vocab, name), name
    assert L.Explanation is vocab.Explanation and L.ConservationReport is vocab.ConservationReport


@pytest.mark.parametrize("name", ["attnlrp", "cp_lrp", "epsilon_plus"])
def test_reference_explain_on_a_transformer_block(name, rng):
    """reference=True on tokens (N, T, E): attention, layer norm, token Linear layers with biases (their
    bias booked per output feature, the last axis) -- the same explanation as the fast path."""
    E, F = 8, 12

    def linear(i, o, seed):
        lin = L.Linear(i, o, rng=seed)
        lin.bias = rng.normal(size=o) * 0.3
        return lin
    mha = L.MultiheadAttention(E, 2, rng=1)
    mha.in_proj_bias = rng.normal(size=3 * E) * 0.3
    net = L.Graph([("ln1", L.LayerNorm(E), "input"), ("attn", mha, "ln1"), ("add1", L.Add(), ["attn", "input"]),
                   ("fc1", linear(E, F, 2), "add1"), ("gelu", L.GELU(), "fc1"), ("fc2", linear(F, E, 3), "gelu"),
                   ("add2", L.Add(), ["fc2", "add1"])])
    x = rng.normal(size=(2, 5, E))
    y = net.forward(x)
    comp = composites.get(name, epsilon=1e-3) if name != "epsilon_plus" else composites.get(name)
    fast = L.explain(net, x, relevance_out=y, composite=comp)
    ref = L.explain(net, x, relevance_out=y, composite=comp, reference=True)
    _same_explanation(fast, ref)
    assert np.abs(ref.conservation().residual()).max() < 1e-9

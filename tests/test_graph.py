"""Graphs: the container, Add / Concat / ChannelAffine / ChannelShuffle, LRP and conservation on graphs."""

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites as C
from lrpnumpy.errors import RuleParameterError, ShapeError, UnsupportedLayerError
from lrpnumpy.rules import LRP0, Norm, Pass


def conv(cin, cout, k=3, bias=True, seed=0):
    layer = L.Conv2d(cin, cout, k, padding=k // 2, bias=bias, rng=seed)
    if bias:
        layer.bias = np.random.default_rng(seed + 100).normal(0, 0.1, cout)
    return layer


def residual_block(projection, bias=True, c=4, seed=0):
    """conv-relu-conv + (identity or 1x1 conv) shortcut, then ReLU."""
    cout = 6 if projection else c
    nodes = [("conv1", conv(c, cout, bias=bias, seed=seed), "input"), ("relu1", L.ReLU(), "conv1"),
             ("conv2", conv(cout, cout, bias=bias, seed=seed + 1), "relu1")]
    if projection:
        nodes.append(("proj", conv(c, cout, 1, bias=bias, seed=seed + 2), "input"))
    nodes += [("add", L.Add(), ["conv2", "proj" if projection else "input"]), ("relu2", L.ReLU(), "add")]
    return nodes


def head(c, k=3, bias=True):
    fc = L.Linear(c, k, bias=bias, rng=5)
    return [("pool", L.GlobalAvgPool2d(), None), ("flat", L.Flatten(), "pool"), ("fc", fc, "flat")]


def with_head(nodes, c, bias=True):
    h = head(c, bias=bias)
    h[0] = ("pool", h[0][1], nodes[-1][0])
    return L.Graph(nodes + h, input_shape=(4, 6, 6))


def inception_block(bias=True):
    return [("b1", conv(4, 2, 1, bias, 1), "input"), ("b3", conv(4, 3, 3, bias, 2), "input"),
            ("mpool", L.MaxPool2d(3, 1, padding=1), "input"), ("bp", conv(4, 2, 1, bias, 3), "mpool"),
            ("cat", L.Concat(), ["b1", "b3", "bp"]), ("relu", L.ReLU(), "cat")]


def dense_block(bias=True):
    return [("c1", conv(4, 3, 3, bias, 1), "input"), ("r1", L.ReLU(), "c1"), ("cat1", L.Concat(), ["input", "r1"]),
            ("c2", conv(7, 3, 3, bias, 2), "cat1"), ("r2", L.ReLU(), "c2"), ("cat2", L.Concat(), ["cat1", "r2"]),
            ("aff", L.ChannelAffine(10, weight=np.linspace(0.5, 1.5, 10), bias=np.linspace(-0.1, 0.1, 10)),
             "cat2"), ("relu", L.ReLU(), "aff")]


def shuffle_block(bias=True):
    return [("c1", L.Conv2d(4, 6, 1, groups=2, bias=bias, rng=1), "input"), ("r1", L.ReLU(), "c1"),
            ("shuffle", L.ChannelShuffle(2), "r1"), ("c2", L.Conv2d(6, 4, 3, padding=1, groups=2, bias=bias, rng=2),
                                                     "shuffle"),
            ("add", L.Add(), ["c2", "input"]), ("relu", L.ReLU(), "add")]


BLOCKS = {"residual": (lambda b=True: residual_block(False, b), 4),
          "residual_projection": (lambda b=True: residual_block(True, b), 6),
          "inception": (inception_block, 7), "dense": (dense_block, 10), "shuffle": (shuffle_block, 4)}


def graph(name, bias=True):
    make, c = BLOCKS[name]
    return with_head(make(bias), c, bias)


# ----- forward: a plain NumPy recomputation -----

def np_conv(layer, x):
    return L.Conv2d.forward(layer, x)  # Conv2d itself is tested against torch elsewhere


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_forward_matches_numpy(name, rng):
    g = graph(name)
    x = rng.normal(size=(2, 4, 6, 6))
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    if name.startswith("residual"):
        h = np_conv(g["conv2"], relu(np_conv(g["conv1"], x)))
        y = relu(h + (np_conv(g["proj"], x) if name.endswith("projection") else x))
    elif name == "inception":
        pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        pooled = np.max([pad[:, :, i:i + 6, j:j + 6] for i in range(3) for j in range(3)], axis=0)
        y = relu(np.concatenate([np_conv(g["b1"], x), np_conv(g["b3"], x), np_conv(g["bp"], pooled)], axis=1))
    elif name == "dense":
        cat1 = np.concatenate([x, relu(np_conv(g["c1"], x))], axis=1)
        cat2 = np.concatenate([cat1, relu(np_conv(g["c2"], cat1))], axis=1)
        aff = g["aff"]
        y = relu(cat2 * aff.weight[None, :, None, None] + aff.bias[None, :, None, None])
    else:
        h = relu(np_conv(g["c1"], x))
        n, c, hh, ww = h.shape
        shuffled = h.reshape(n, 2, c // 2, hh, ww).transpose(0, 2, 1, 3, 4).reshape(h.shape)
        y = relu(np_conv(g["c2"], shuffled) + x)
    logits = y.mean(axis=(2, 3)) @ g["fc"].weight.T + g["fc"].bias
    np.testing.assert_allclose(g.forward(x), logits, rtol=1e-12, atol=1e-12)
    assert g.output_shape(x.shape) == logits.shape
    np.testing.assert_array_equal(g.forward(x), g.forward_trace(x)[0])  # the untraced run is the same run


# ----- exact gradients -----

@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_gradient_finite_differences(name, rng):
    g = graph(name)
    x = rng.normal(size=(1, 4, 6, 6))
    w = rng.normal(size=(1, 3))
    y, trace = g.forward_trace(x)
    grad = g.backward(w, trace)
    for _ in range(6):
        d = rng.normal(size=x.shape)
        h = 1e-6
        numeric = ((g.forward(x + h * d) - g.forward(x - h * d)) * w).sum() / (2 * h)
        assert abs(numeric - (grad * d).sum()) < 1e-6 * max(1.0, abs(numeric))


def test_channel_affine_param_grads(rng):
    layer = L.ChannelAffine(3, weight=rng.normal(size=3), bias=rng.normal(size=3))
    x, g = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4))
    _, step = layer.forward_trace(x)
    grads = layer.param_grads(g, step)
    np.testing.assert_allclose(grads["weight"], (g * x).sum(axis=(0, 2, 3)))
    np.testing.assert_allclose(grads["bias"], g.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("layer,shapes", [
    (L.Add(), [(2, 3, 4, 4)] * 3), (L.Add([0.5, -2.0]), [(2, 3, 4, 4)] * 2), (L.Concat(), [(2, 3, 4, 4), (2, 5, 4, 4)]),
    (L.ChannelShuffle(3), [(2, 6, 3, 3)]), (L.ChannelAffine(3, weight=np.array([0.5, -1.0, 2.0]), bias=None),
                                              [(2, 3, 4, 4)])])
def test_adjoint_of_linear_layers(layer, shapes, rng):
    xs = [rng.normal(size=s) for s in shapes]
    y, step = layer.forward_trace(*xs)
    v = rng.normal(size=y.shape)
    back = layer.backward(v, step)
    back = back if isinstance(back, tuple) else (back,)
    np.testing.assert_allclose((y * v).sum(), sum((x * b).sum() for x, b in zip(xs, back)), rtol=1e-12)


# ----- LRP on graphs -----

Z_RULE = C.Composite([((L.Conv2d, L.Linear), LRP0()), ((L.Add, L.GlobalAvgPool2d), Norm(0.0)),
                      (L.MaxPool2d, Norm(0.0))])


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_z_rule_conserves_on_bias_free_graphs(name, rng):
    g = graph(name, bias=False)
    x = rng.random((2, 4, 6, 6)) + 0.1
    e = L.explain(g, x, composite=Z_RULE)
    out = (e.output * L.explain.__globals__["onehot"](e.output, e.target)).sum(axis=1)
    np.testing.assert_allclose(e.relevance.reshape(2, -1).sum(axis=1), out, rtol=1e-10)
    report = e.conservation()
    assert np.abs(report.residual()).max() < 1e-10
    for row in report:
        if row["parts"] is not None:  # Add and Concat rows: the parts add up to what the node passed on
            np.testing.assert_allclose(sum(row["parts"]), row["relevance_in"], rtol=1e-12)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_batch_invariance(name, rng):
    g = graph(name)
    x = rng.normal(size=(3, 4, 6, 6))
    comp = C.get("epsilon_gamma_box", low=-3.0, high=3.0)
    batch = L.explain(g, x, composite=comp).relevance
    for i in range(3):
        np.testing.assert_allclose(L.explain(g, x[i:i + 1], composite=comp).relevance[0], batch[i], rtol=1e-12,
                                   atol=1e-15)


def test_fan_out_into_add_equals_the_chain(rng):
    a, b = conv(4, 5, seed=1, bias=False), conv(4, 5, seed=2, bias=False)
    g = L.Graph([("a", a, "input"), ("b", b, "input"), ("add", L.Add(), ["a", "b"]), ("relu", L.ReLU(), "add")]
                + [("pool", L.GlobalAvgPool2d(), "relu"), ("flat", L.Flatten(), "pool"),
                   ("fc", L.Linear(5, 3, bias=False, rng=3), "flat")])
    merged = L.Conv2d(4, 5, 3, padding=1, bias=False)
    merged.weight = a.weight + b.weight
    chain = L.Sequential(merged, L.ReLU(), L.GlobalAvgPool2d(), L.Flatten(), g["fc"])
    x = rng.random((2, 4, 6, 6))
    np.testing.assert_allclose(g.forward(x), chain.forward(x), rtol=1e-12)
    ours = L.explain(g, x, composite=Z_RULE).relevance
    np.testing.assert_allclose(ours, L.explain(chain, x, composite=Z_RULE).relevance, rtol=1e-10, atol=1e-14)


def test_fan_out_into_concat_equals_the_chain(rng):
    a, b = conv(4, 2, seed=1), conv(4, 3, seed=2)
    g = L.Graph([("a", a, "input"), ("b", b, "input"), ("cat", L.Concat(), ["a", "b"]), ("relu", L.ReLU(), "cat"),
                 ("pool", L.GlobalAvgPool2d(), "relu"), ("flat", L.Flatten(), "pool"), ("fc", L.Linear(5, 3, rng=3),
                                                                                        "flat")])
    merged = L.Conv2d(4, 5, 3, padding=1)
    merged.weight = np.concatenate([np.pad(a.weight, ((0, 0), (0, 0), (1, 1), (1, 1))) if a.weight.shape[-1] == 1
                                    else a.weight, b.weight])
    merged.bias = np.concatenate([a.bias, b.bias])
    chain = L.Sequential(merged, L.ReLU(), L.GlobalAvgPool2d(), L.Flatten(), g["fc"])
    x = rng.normal(size=(2, 4, 6, 6))
    # (not EpsilonGammaBox: its first-layer rule would cover only branch "a" of the graph)
    for comp in (C.get("epsilon_plus"), C.get("epsilon_alpha2_beta1"), Z_RULE):
        np.testing.assert_allclose(L.explain(g, x, composite=comp).relevance,
                                   L.explain(chain, x, composite=comp).relevance, rtol=1e-10, atol=1e-14)


def test_add_rule_is_zennits_norm_and_the_reference_agrees(rng):
    add = L.Add()
    xs = (rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 3, 4, 4)))
    y, step = add.forward_trace(*xs)
    R = rng.normal(size=y.shape)
    rule = C.default_rule(add)
    assert rule == Norm()
    R_in, ledger = rule.propagate(step, R)
    z = xs[0] + xs[1]
    s = R / (z + 1e-6 * np.where(z >= 0, 1, -1))
    for x, r in zip(xs, R_in):
        np.testing.assert_allclose(r, x * s, rtol=1e-12)
    for fast, ref in zip(R_in, rule.reference(step, R)):
        np.testing.assert_allclose(fast, ref, rtol=1e-12)
    total = sum(r.reshape(2, -1).sum(axis=1) for r in R_in)
    np.testing.assert_allclose(total + ledger["stabilizer"], R.reshape(2, -1).sum(axis=1), rtol=1e-10)


def test_report_shows_the_split_at_the_residual_sum(rng):
    g = graph("residual")
    e = L.explain(g, rng.random((1, 4, 6, 6)), composite=C.get("epsilon_plus"))
    report = e.conservation()
    split = report.split("add")
    assert set(split) == {"conv2", "input"}
    row = next(r for r in report.to_dict() if r["name"] == "add")
    assert abs(sum(split.values()) + row["stabilizer"] - row["relevance_out"]) < 1e-10
    text = report.to_text()
    assert "split to inputs:" in text and "add: Add()" in text
    assert [r["name"] for r in report.to_dict()] == g.names
    assert isinstance(e.layers[g.names.index("add")], tuple)


def test_composites_by_name_index_and_first_layer(rng):
    g = graph("inception")
    comp = C.Composite([(L.Conv2d, L.ZPlus())], first_map=[(L.Conv2d, L.Flat())], name_map={"bp": L.Epsilon(0.5)},
                       index_map={-1: L.Epsilon(0.25)})
    rules = dict(zip(g.names, comp.rules(g)))
    assert rules["b1"] == L.Flat() and rules["b3"] == L.ZPlus() and rules["bp"] == L.Epsilon(0.5)
    assert rules["fc"] == L.Epsilon(0.25)
    with pytest.raises(RuleParameterError, match="no such node"):
        C.Composite(name_map={"nope": L.Epsilon()}).rules(g)
    with pytest.raises(RuleParameterError):
        C.Composite(name_map={"b1": "epsilon"})


def test_batchnorm_folds_only_where_the_conv_feeds_nothing_else(rng):
    bn1, bn2 = L.BatchNorm2d(4), L.BatchNorm2d(4)
    for bn in (bn1, bn2):
        bn.weight, bn.bias = rng.random(4) + 0.5, rng.normal(size=4)
        bn.running_mean, bn.running_var = rng.normal(size=4), rng.random(4) + 0.5
    g = L.Graph([("c1", conv(4, 4, seed=1), "input"), ("bn1", bn1, "c1"), ("c2", conv(4, 4, seed=2), "bn1"),
                 ("bn2", bn2, "c2"), ("add", L.Add(), ["bn2", "c2"]), ("relu", L.ReLU(), "add")]
                + [("pool", L.GlobalAvgPool2d(), "relu"), ("flat", L.Flatten(), "pool"),
                   ("fc", L.Linear(4, 3, rng=3), "flat")])
    folded = L.fold_batchnorm(g)
    assert "bn1" not in folded.names and "bn2" in folded.names  # c2 also feeds the Add
    assert folded.inputs["c2"] == ("c1",)
    x = rng.normal(size=(2, 4, 6, 6))
    np.testing.assert_allclose(folded.forward(x), g.forward(x), rtol=1e-12)
    assert g["c1"].weight is not folded["c1"].weight and g["fc"] is folded["fc"]  # unchanged layers shared


def test_graph_checks_its_wiring():
    relu = L.ReLU()
    with pytest.raises(ShapeError, match="cycle"):
        L.Graph([("a", relu, "b"), ("b", L.ReLU(), "a")])
    with pytest.raises(ShapeError, match="neither nodes"):
        L.Graph([("a", relu, "nope")])
    with pytest.raises(ShapeError, match="do not contribute"):
        L.Graph([("a", relu, "input"), ("b", L.ReLU(), "input")], output="a")
    with pytest.raises(ShapeError, match="unique"):
        L.Graph([("a", relu, "input"), ("a", L.ReLU(), "a")])
    with pytest.raises(ShapeError, match="takes one input"):
        L.Graph([("a", relu, ["input", "input"])])
    with pytest.raises(ShapeError, match="one shape"):
        L.Graph([("a", L.Add(), ["input", "p"]), ("p", L.MaxPool2d(2), "input")]).forward(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ShapeError, match="node 'a'"):
        L.Graph([("p", L.MaxPool2d(2), "input"), ("a", L.Add(), ["input", "p"])]).output_shape((1, 1, 4, 4))


def test_graph_utilities(rng):
    g = graph("dense")
    assert L.Graph(list(reversed(g.nodes())), input_shape=g.input_shape).names == g.names  # any listed order
    sub = g.up_to("cat1")
    assert sub.names == ["c1", "r1", "cat1"] and sub.output_shape((1, 4, 6, 6)) == (1, 7, 6, 6)
    x = rng.normal(size=(2, 4, 6, 6))
    np.testing.assert_allclose(g.astype(np.float32).forward(x.astype(np.float32)), g.forward(x), rtol=1e-4,
                               atol=1e-5)
    copy = g.copy()
    assert copy["c1"] is not g["c1"] and copy.names == g.names
    frozen = g.copy().freeze()
    assert not frozen["c1"].weight.flags.writeable
    with_softmax = L.Graph(g.nodes() + [("prob", L.Softmax(), "fc")])
    e = L.explain(with_softmax, x, composite=C.get("epsilon_plus"))  # explains the logits
    assert e.network.output == "fc"
    with pytest.raises(UnsupportedLayerError):
        L.explain(g, x, rule={g.names.index("cat1"): L.Epsilon()})  # Epsilon needs weights


def test_threads_share_a_graph(rng):
    from concurrent.futures import ThreadPoolExecutor
    g = graph("residual_projection")
    xs = [rng.normal(size=(1, 4, 6, 6)) for _ in range(6)]
    alone = [L.explain(g, x, composite=C.get("epsilon_plus")).relevance for x in xs]
    with ThreadPoolExecutor(3) as pool:
        shared = list(pool.map(lambda x: L.explain(g, x, composite=C.get("epsilon_plus")).relevance, xs))
    for a, b in zip(alone, shared):
        np.testing.assert_array_equal(a, b)


def test_pass_permutes_relevance_back(rng):
    layer = L.ChannelShuffle(2)
    x = rng.normal(size=(1, 4, 2, 2))
    y, step = layer.forward_trace(x)
    R_in, _ = Pass().propagate(step, y)
    np.testing.assert_array_equal(R_in, x)  # relevance = value: permuted back to where it came from


def test_graphs_save_and_load_in_the_native_format(tmp_path, rng):
    from lrpnumpy.errors import ModelFormatError
    g = graph("dense")
    g.meta["classes"] = ["a", "b", "c"]
    L.io.save(g, str(tmp_path / "g.npz"))
    back = L.io.load(str(tmp_path / "g.npz"))
    assert isinstance(back, L.Graph) and back.names == g.names and back.inputs == g.inputs
    assert back.meta == g.meta and back.input_shape == g.input_shape
    x = rng.normal(size=(2, 4, 6, 6))
    np.testing.assert_array_equal(back.forward(x), g.forward(x))
    import json
    with np.load(str(tmp_path / "g.npz")) as data:
        arrays = {k: data[k] for k in data.files}
    arch = json.loads(str(arrays["__architecture__"]))
    arch["graph"]["inputs"][0] = ["c2"]  # a cycle
    arrays["__architecture__"] = np.array(json.dumps(arch))
    np.savez(str(tmp_path / "bad.npz"), **arrays)
    with pytest.raises(ModelFormatError, match="cycle"):
        L.io.load(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 4)])
def test_affine_rules_on_channel_affine_match_the_reference(shape, rng):
    layer = L.ChannelAffine(3, weight=rng.normal(size=3), bias=rng.normal(size=3))
    y, step = layer.forward_trace(rng.normal(size=shape))
    R = rng.normal(size=y.shape)
    for rule in (L.Epsilon(), L.ZPlus(), L.AlphaBeta(2, 1)):
        fast = rule.relevance(step, R)
        assert fast.shape == shape
        np.testing.assert_allclose(fast, rule.reference(step, R), rtol=1e-10, atol=1e-14)

"""Every rule against its matrix-form oracle, identities between rules, and conservation."""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import lrpnumpy as L
from lrpnumpy.rules import ToolboxAlphaBeta as TAB
from lrpnumpy.errors import DTypeError, RuleParameterError, ShapeError, UnsupportedLayerError
import oracles as O


def layer_matrix(layer, in_shape):
    """(M, b_full, out_shape) of an affine layer for one sample of shape ``in_shape``."""
    if isinstance(layer, L.Linear):
        b = layer.bias if layer.bias is not None else np.zeros(layer.out_features)
        return layer.weight, b, (layer.out_features,)
    if isinstance(layer, L.Conv2d):
        M, shape = O.conv_matrix(layer.weight, in_shape, layer.stride, layer.padding, layer.dilation, layer.groups)
        b = np.zeros(shape) if layer.bias is None else np.broadcast_to(layer.bias[:, None, None], shape)
        return M, b.ravel(), shape
    M, shape = O.sum_pool_matrix(in_shape, layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, L.AvgPool2d):  # divide each window by its size (here: kh * kw, padding included)
        M = M / (layer.kernel_size[0] * layer.kernel_size[1])
    return M, np.zeros(M.shape[0]), shape


def ones_matrix(layer, in_shape):
    if isinstance(layer, L.Linear):
        return np.ones_like(layer.weight)
    if isinstance(layer, L.Conv2d):
        return O.conv_matrix(np.ones_like(layer.weight), in_shape, layer.stride, layer.padding, layer.dilation,
                             layer.groups)[0]
    return layer_matrix(layer, in_shape)[0] != 0


def with_bias(layer, rng):
    if getattr(layer, "bias", None) is not None:
        layer.bias = rng.normal(size=layer.bias.shape)
    return layer


LAYERS = {
    "linear": lambda rng: (with_bias(L.Linear(7, 5, rng=rng), rng), (3, 7)),
    "linear_nobias": lambda rng: (L.Linear(7, 5, bias=False, rng=rng), (3, 7)),
    "conv": lambda rng: (with_bias(L.Conv2d(2, 3, 3, rng=rng), rng), (2, 2, 6, 5)),
    "conv_stride_pad": lambda rng: (with_bias(L.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 2), rng=rng), rng),
                                    (2, 2, 7, 5)),
    "conv_asym_dil_groups": lambda rng: (with_bias(L.Conv2d(4, 2, 2, padding=(0, 1, 2, 0), dilation=2, groups=2,
                                                            rng=rng), rng), (2, 4, 6, 6)),
    "conv_nobias": lambda rng: (L.Conv2d(2, 3, 3, stride=2, padding=1, bias=False, rng=rng), (2, 2, 6, 6)),
}


def make(name, rng, positive=False):
    layer, shape = LAYERS[name](rng)
    x = rng.normal(size=shape)
    if positive:
        x = np.abs(x)
    y = layer.forward(x)
    R = rng.normal(size=y.shape)
    return layer, x, R


def lrp(layer, x, R, rule):
    """Relevance at the input of ``layer`` for input ``x`` and output relevance ``R``."""
    _, step = layer.forward_trace(x)
    return rule.relevance(step, R)


def per_sample(oracle, layer, x, R):
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        M, b, _ = layer_matrix(layer, x.shape[1:])
        out[n] = oracle(x[n].ravel(), M, b, R[n].ravel()).reshape(x.shape[1:])
    return out


ORACLES = {
    "lrp0": (L.LRP0(), lambda x, M, b, R: O.epsilon(x, M, b, R, 0.0)),
    "epsilon": (L.Epsilon(0.3), lambda x, M, b, R: O.epsilon(x, M, b, R, 0.3)),
    "zplus": (L.ZPlus(), lambda x, M, b, R: O.zplus(x, M, b, R, 1e-6)),
    "alpha2beta1": (L.AlphaBeta(2, 1), lambda x, M, b, R: O.alpha_beta(x, M, b, R, 1e-6, 2, 1)),
    "alpha1beta0": (L.AlphaBeta(1, 0), lambda x, M, b, R: O.alpha_beta(x, M, b, R, 1e-6, 1, 0)),
    "gamma": (L.Gamma(0.25), lambda x, M, b, R: O.gamma(x, M, b, R, 1e-6, 0.25)),
    "wsquare": (L.WSquare(), lambda x, M, b, R: O.wsquare(M, b, R, 1e-6)),
}


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
@pytest.mark.parametrize("rule_name", sorted(ORACLES))
@pytest.mark.parametrize("positive", [False, True])
def test_rule_matches_matrix_oracle(layer_name, rule_name, positive, rng):
    layer, x, R = make(layer_name, rng, positive)
    rule, oracle = ORACLES[rule_name]
    np.testing.assert_allclose(lrp(layer, x, R, rule), per_sample(oracle, layer, x, R), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_zbox_matches_oracle(layer_name, rng):
    layer, x, R = make(layer_name, rng)
    low = -np.abs(rng.normal(size=x.shape[1:])) + np.minimum(x.min(axis=0), 0)
    high = np.abs(rng.normal(size=x.shape[1:])) + np.maximum(x.max(axis=0), 0)
    got = lrp(layer, x, R, L.ZBox(low, high))
    want = per_sample(lambda xs, M, b, Rs: O.zbox(xs, M, b, Rs, 1e-6, low.ravel(), high.ravel()), layer, x, R)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_flat_matches_oracle(layer_name, rng):
    layer, x, R = make(layer_name, rng)
    got = lrp(layer, x, R, L.Flat())
    M1 = ones_matrix(layer, x.shape[1:])
    want = np.stack([O.flat(M1, R[n].ravel(), 1e-6).reshape(x.shape[1:]) for n in range(len(x))])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


POOLS = [L.SumPool2d(2), L.AvgPool2d(3, stride=2, padding=1), L.SumPool2d((2, 3), stride=1, padding=(0, 1, 1, 0))]


@pytest.mark.parametrize("pool", POOLS, ids=repr)
@pytest.mark.parametrize("rule", [L.Norm(), L.Epsilon(0.01), L.LRP0()], ids=repr)
def test_pooling_rules_match_oracle(pool, rule, rng):
    x = np.abs(rng.normal(size=(2, 3, 6, 7)))
    R = rng.normal(size=pool.forward(x).shape)
    got = lrp(pool, x, R, rule)
    want = per_sample(lambda xs, M, b, Rs: O.epsilon(xs, M, b, Rs, rule.epsilon), pool, x, R)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


MAXPOOLS = [L.MaxPool2d(2), L.MaxPool2d(3, stride=1, padding=1), L.MaxPool2d((3, 2), stride=(2, 1)),
            L.MaxPool2d(2, stride=1, padding=(1, 0, 2, 1), dilation=(2, 3))]


@pytest.mark.parametrize("pool", MAXPOOLS, ids=repr)
def test_maxpool_rules_match_oracle(pool, rng):
    # small integers: many ties inside windows
    x = rng.integers(0, 3, size=(2, 2, 6, 6)).astype(np.float64)
    R = rng.normal(size=pool.forward(x).shape)
    first = lrp(pool, x, R, L.WinnerTakesAll())
    split = lrp(pool, x, R, L.WinnerTakesAll(ties="split"))
    norm = lrp(pool, x, R, L.Norm())
    for n in range(len(x)):
        S, T = O.max_pool_selection(x[n], pool.kernel_size, pool.stride, pool.padding, pool.dilation)
        M, _ = O.sum_pool_matrix(x.shape[1:], pool.kernel_size, pool.stride, pool.padding, dilation=pool.dilation)
        np.testing.assert_allclose(first[n].ravel(), S.T @ R[n].ravel(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(split[n].ravel(), T.T @ R[n].ravel(), rtol=1e-12, atol=1e-14)
        want = O.epsilon(x[n].ravel(), M, np.zeros(M.shape[0]), R[n].ravel(), 1e-6)
        np.testing.assert_allclose(norm[n].ravel(), want, rtol=1e-10, atol=1e-12)
    assert np.isclose(first.sum(), R.sum()) and np.isclose(split.sum(), R.sum())


# ----- identities -----

def relu_net(rng, bias):
    return L.Sequential(L.Conv2d(2, 4, 3, padding=1, bias=bias, rng=rng), L.ReLU(), L.MaxPool2d(2),
                        L.Conv2d(4, 5, 3, stride=2, bias=bias, rng=rng), L.ReLU(), L.Flatten(),
                        L.Linear(5, 3, bias=bias, rng=rng))


def test_lrp0_equals_gradient_times_input_without_bias(rng):
    net = relu_net(rng, bias=False)
    x = rng.normal(size=(3, 2, 6, 6))
    out, trace = net.forward_trace(x)
    onehot = np.zeros_like(out)
    onehot[np.arange(3), [0, 2, 1]] = 1
    grad = net.backward(onehot, trace)
    e = L.explain(net, x, target=[0, 2, 1], rule=L.LRP0())
    np.testing.assert_allclose(e.relevance, grad * x, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_alpha1_beta0_equals_zplus(layer_name, rng):
    layer, x, R = make(layer_name, rng)
    np.testing.assert_array_equal(lrp(layer, x, R, L.AlphaBeta(1, 0)), lrp(layer, x, R, L.ZPlus()))


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_epsilon_tends_to_lrp0(layer_name, rng):
    layer, x, R = make(layer_name, rng)
    R0 = lrp(layer, x, R, L.LRP0())
    errors = [np.abs(lrp(layer, x, R, L.Epsilon(eps)) - R0).max() for eps in (1e-2, 1e-4, 1e-6, 1e-8)]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-5 * np.abs(R0).max()


def test_gamma_zero_is_lrp0_on_positive_input(rng):
    layer, x, R = make("conv_nobias", rng, positive=True)
    np.testing.assert_allclose(lrp(layer, x, R, L.Gamma(0.0, epsilon=0)), lrp(layer, x, R, L.LRP0()), rtol=1e-12)


# ----- conservation (hypothesis) -----

@st.composite
def affine_cases(draw):
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        i, o, n = draw(st.integers(1, 9)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
        layer = L.Linear(i, o, bias=draw(st.booleans()), rng=rng)
        shape = (n, i)
    else:
        c, o = draw(st.integers(1, 3)), draw(st.integers(1, 4))
        k = draw(st.integers(1, 3))
        s = draw(st.integers(1, 3))
        p = draw(st.integers(0, k - 1))
        h, w = draw(st.integers(k, 7)), draw(st.integers(k, 7))
        layer = L.Conv2d(c, o, k, stride=s, padding=p, bias=draw(st.booleans()), rng=rng)
        shape = (draw(st.integers(1, 2)), c, h, w)
    if layer.bias is not None:
        layer.bias = rng.normal(size=layer.bias.shape)
    x = rng.normal(size=shape)
    if draw(st.booleans()):
        x = np.abs(x)
    return layer, x, rng


RULES_CONSERVING = [L.LRP0(), L.Epsilon(1e-12), L.ZPlus(1e-12), L.Gamma(0.25, 1e-12), L.AlphaBeta(2, 1, 1e-12),
                    L.Flat(1e-12), L.WSquare(1e-12)]


def _denominators_safe(layer, rule, x):
    """No denominator of the rule is near zero (so the stabilizer is negligible)."""
    _, step = layer.forward_trace(x)
    for g in rule.groups(layer, step):
        z = sum(layer.forward_with(t.x, t.weight, t.bias, step) for t in g.terms)
        if g.mask is not None:
            z = z[g.mask]
        if z.size and np.abs(z).min() < 0.05:  # eps / |z| <= 2e-11: the stabilizer is negligible
            return False
    return True


@settings(max_examples=60, deadline=None)
@given(affine_cases(), st.sampled_from(RULES_CONSERVING))
def test_conservation_bias_free(case, rule):
    layer, x, rng = case
    layer.bias = None
    y = layer.forward(x)
    R = rng.normal(size=y.shape)
    assume(_denominators_safe(layer, rule, x))
    R_in = lrp(layer, x, R, rule)
    if isinstance(rule, L.Gamma):
        R = np.where(layer.forward(x) != 0, R, 0)
    scale = np.abs(R).sum()
    assert abs(R_in.sum() - R.sum()) <= 1e-10 * scale


@settings(max_examples=60, deadline=None)
@given(affine_cases(), st.sampled_from(RULES_CONSERVING + [L.Epsilon(0.1), L.ZPlus(), L.Gamma()]),
       st.booleans())
def test_ledger_accounts_for_bias_and_stabilizer(case, rule, zbox):
    layer, x, rng = case
    if zbox:
        rule = L.ZBox(x.min() - 1, x.max() + 1, epsilon=rule.epsilon)
    y = layer.forward(x)
    R = rng.normal(size=y.shape)
    _, step = layer.forward_trace(x)
    R_in, led = rule.propagate(step, R)
    led = dict(led, relevance_in=R_in.reshape(len(x), -1).sum(1), relevance_out=R.reshape(len(x), -1).sum(1))
    led = {k: led.get(k, np.zeros(len(x))) for k in ("relevance_in", "relevance_out", "bias", "stabilizer",
                                                     "dropped")}
    scale = np.abs(R).sum() + np.abs(led["bias"]).sum() + np.abs(R_in).sum()
    np.testing.assert_allclose(led["relevance_in"], R_in.reshape(len(x), -1).sum(1), rtol=0, atol=1e-12 * scale)
    total = led["relevance_in"] + led["bias"] + led["stabilizer"] + led["dropped"]
    np.testing.assert_allclose(total, led["relevance_out"], rtol=0, atol=1e-10 * scale)


@settings(max_examples=40, deadline=None)
@given(affine_cases())
def test_zbox_conserves_with_or_without_bias(case):
    layer, x, rng = case
    rule = L.ZBox(x.min() - 1, x.max() + 1, epsilon=1e-12)
    y = layer.forward(x)
    R = rng.normal(size=y.shape)
    assume(_denominators_safe(layer, rule, x))
    assert abs(lrp(layer, x, R, rule).sum() - R.sum()) <= 1e-10 * np.abs(R).sum()


# ----- parameters -----

@pytest.mark.parametrize("make_rule", [
    lambda: L.Epsilon(-1), lambda: L.Epsilon(float("nan")), lambda: L.Epsilon("0.1"),
    lambda: L.AlphaBeta(2, 0), lambda: L.AlphaBeta(0.5, -0.5), lambda: L.Gamma(-0.1),
    lambda: L.ZBox(1, 0), lambda: L.ZBox(np.zeros(3), np.ones(2)), lambda: L.ZBox(0, np.inf),
    lambda: L.WinnerTakesAll("random"), lambda: L.ZPlus(epsilon=-1e-6)])
def test_invalid_rule_parameters(make_rule):
    with pytest.raises(RuleParameterError):
        make_rule()


def test_rule_layer_mismatch(rng):
    pool = L.SumPool2d(2)
    _, pool_step = pool.forward_trace(rng.random((1, 1, 4, 4)))
    with pytest.raises(UnsupportedLayerError, match="needs a layer with weights"):
        L.ZPlus().relevance(pool_step, np.ones((1, 1, 2, 2)))
    relu = L.ReLU()
    _, relu_step = relu.forward_trace(rng.random((1, 3)))
    with pytest.raises(UnsupportedLayerError):
        L.Epsilon().relevance(relu_step, np.ones((1, 3)))
    with pytest.raises(UnsupportedLayerError):
        L.WinnerTakesAll().relevance(pool_step, np.ones((1, 1, 2, 2)))
    _, lin_step = L.Linear(3, 2).forward_trace(rng.random((1, 3)))
    with pytest.raises(UnsupportedLayerError, match="as many entries"):
        L.Pass().relevance(lin_step, np.ones((1, 2)))


def test_relevance_must_match_the_step(rng):
    """R of the wrong shape or dtype, or a step of another layer, is an error (never broadcast)."""
    lin = L.Linear(3, 4)
    _, step = lin.forward_trace(rng.random((2, 3)))
    with pytest.raises(ShapeError, match="expected the output's shape"):
        L.Epsilon().relevance(step, np.ones((2, 1)))
    with pytest.raises(DTypeError):
        L.Epsilon().relevance(step, np.ones((2, 4), np.float32))
    _, other = L.Linear(3, 4).forward_trace(rng.random((2, 3)))
    with pytest.raises(ShapeError, match="Step that forward_trace returned"):
        lin.backward(np.ones((2, 4)), other)


# ----- the literal four steps and the fast path -----

REFERENCE_LAYERS = dict(LAYERS, **{
    "conv_groups": lambda rng: (with_bias(L.Conv2d(4, 6, 3, stride=2, padding=(1, 0, 2, 1), groups=2, rng=rng),
                                          rng), (2, 4, 7, 6)),
    "sumpool": lambda rng: (L.SumPool2d(2, padding=1), (2, 3, 5, 5)),
    "avgpool": lambda rng: (L.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
                            (2, 3, 6, 7)),
    "global_avgpool": lambda rng: (L.GlobalAvgPool2d(), (2, 3, 4, 5)),
    "maxpool": lambda rng: (L.MaxPool2d(3, stride=2, padding=1), (2, 3, 6, 7)),
})
WEIGHTED_RULES = [L.LRP0(), L.Epsilon(0.25), L.ZPlus(), L.AlphaBeta(2, 1), L.AlphaBeta(1, 0), L.Gamma(0.25),
                  L.ZBox(-3.0, 3.0), L.Flat(), L.WSquare(), L.Rho("gamma", bias="raw"), L.Rho("positive"),
                  L.Rho("identity", bias="zero")]
POOL_RULES = [L.Norm(), L.Epsilon(0.1), L.LRP0(), L.Flat()]


@pytest.mark.parametrize("layer_name", sorted(REFERENCE_LAYERS))
@pytest.mark.parametrize("positive", [False, True], ids=["signed", "positive"])
def test_fast_path_equals_the_literal_four_steps(layer_name, positive, rng):
    """explain's fast path (stacked passes, vanishing terms skipped, cached weights) == four_steps, every rule."""
    layer, shape = REFERENCE_LAYERS[layer_name](rng)
    x = rng.normal(size=shape)
    x = np.abs(x) if positive else x
    rules = WEIGHTED_RULES if getattr(layer, "weight", None) is not None else POOL_RULES
    for frozen in (False, True):
        target = layer.copy().freeze() if frozen else layer
        y, step = target.forward_trace(x)
        R = rng.normal(size=y.shape)
        for rule in rules:
            fast, want = rule.relevance(step, R), rule.reference(step, R)
            np.testing.assert_allclose(fast, want, rtol=1e-12, atol=1e-12 * np.abs(want).max(),
                                       err_msg=f"{rule!r} on {layer!r}")


@pytest.mark.parametrize("layer_name", sorted(REFERENCE_LAYERS))
@pytest.mark.parametrize("positive", [False, True], ids=["signed", "positive"])
@pytest.mark.parametrize("epsilon", [None, 0.0], ids=["rule_epsilon", "no_epsilon"])
def test_fast_ledger_equals_the_literal_ledger(layer_name, positive, epsilon, rng):
    """The ledger the fast path reads from step 2's sums == the one written out from four_steps' values
    (rules.accounts), every rule, with and without a stabilizer (zero denominators dropped)."""
    import copy
    layer, shape = REFERENCE_LAYERS[layer_name](rng)
    x = rng.normal(size=shape)
    x = np.abs(x) if positive else x
    y, step = layer.forward_trace(x)
    R = rng.normal(size=y.shape)
    for rule in WEIGHTED_RULES if getattr(layer, "weight", None) is not None else POOL_RULES:
        if epsilon is not None:
            rule = copy.copy(rule)
            rule.epsilon = epsilon
        (fast, fast_ledger), (want, want_ledger) = rule.propagate(step, R), rule.propagate_reference(step, R)
        np.testing.assert_allclose(fast, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
        assert fast_ledger.keys() == want_ledger.keys(), rule
        scale = np.abs(R).sum()
        for key in want_ledger:
            np.testing.assert_allclose(fast_ledger[key], want_ledger[key], rtol=1e-10, atol=1e-12 * scale,
                                       err_msg=f"{key} of {rule!r} on {layer!r}")


def _bits(*arrays):
    return [np.ascontiguousarray(a).tobytes() for a in arrays]


SPLIT_RULES = [L.ZPlus(), L.AlphaBeta(2, 1), L.AlphaBeta(1, 0), TAB(2.0), TAB(0.5),
               TAB(1.0)]


@pytest.mark.parametrize("layer_name,rule", [(name, rule) for name in sorted(REFERENCE_LAYERS) if name != "maxpool"
                                              for rule in SPLIT_RULES if LAYERS.get(name) or isinstance(rule, TAB)],
                         ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unsigned_input_skips_the_sign_split_bit_for_bit(layer_name, rule, dtype, rng):
    """On input without sign bits (as after a ReLU) the fast path uses the input itself for a+ and
    knows a- is +0 without computing it; relevance and ledger are the bits of the fast path on the
    rule's own groups (a+ = max(a, 0), a- = min(a, 0) computed and looked at), signs of zeros included,
    and each sample's bits are those it gets alone."""
    import lrpnumpy.rules_fast as F
    layer, shape = REFERENCE_LAYERS[layer_name](rng)
    layer = layer.astype(dtype)
    x = np.abs(rng.normal(size=(4,) + shape[1:])).astype(dtype)
    x[1] = 0.0                                             # a sample of +0 (all its terms on a+ vanish too)
    x[2].flat[::3] = 0.0
    y, step = layer.forward_trace(x)
    assert F._unsigned(step.input) and F.groups_for(rule, layer, step)[0].terms[0].x is step.input  # no copy
    R = rng.normal(size=y.shape).astype(dtype)
    R[0].flat[::4] = -0.0
    got, got_ledger = rule.propagate(step, R)
    with np.errstate(all="ignore"):  # the same rule through its own groups (the split computed)
        groups = rule.groups(layer, step)
        want, values = F.four_steps_fast(layer, step, groups, R, rule.epsilon)
        want_ledger = L.rules.ledger(groups, values, rule.epsilon)
    assert _bits(got) == _bits(layer.split(want))
    assert got_ledger.keys() == want_ledger.keys()
    for key in want_ledger:
        assert _bits(got_ledger[key]) == _bits(want_ledger[key]), key
    for i in range(len(x)):  # batch invariance, bit for bit
        _, alone = layer.forward_trace(x[i:i + 1])
        r, led = rule.propagate(alone, R[i:i + 1])
        assert _bits(r) == _bits(got[i:i + 1]), i
        for key in led:
            assert _bits(led[key]) == _bits(got_ledger[key][i:i + 1]), (i, key)


def test_unsigned_means_no_sign_bit_and_no_nan():
    """Only +0, positive numbers and +inf pass: -0.0 (max(-0.0, 0) is +0, other bits), negatives and
    NaN (max(nan, 0) is nan, min(nan, 0) is not +0) take the sign split; other dtypes too."""
    from lrpnumpy.rules_fast import _unsigned
    for dtype in (np.float32, np.float64):
        ok = np.array([[0.0, 1.5, np.inf, np.finfo(dtype).tiny / 4]], dtype)
        assert _unsigned(ok) and _unsigned(ok[:, ::2]) and _unsigned(np.maximum(-ok, 0))  # ReLU of -x: +0
        for bad in (-0.0, -1e-30, -np.inf, np.nan, -np.nan):
            v = ok.copy()
            v[0, 1] = bad
            assert not _unsigned(v), (dtype, bad)
        assert not _unsigned(np.zeros((0, 3), dtype))
    assert not _unsigned(np.ones(3, np.float16)) and not _unsigned(np.ones(3, np.int64))


def test_a_negative_zero_input_keeps_its_signs(rng):
    """An input whose only sign bits are -0.0 is not unsigned: a+ = max(a, 0) is +0 there, and the
    relevance there is +0 * c, as the rule's own groups give (the shortcut would give -0 * c)."""
    import lrpnumpy.rules_fast as F
    layer = with_bias(L.Linear(6, 4, rng=rng), rng)
    x = np.abs(rng.normal(size=(2, 6)))
    x[:, 2] = -0.0
    y, step = layer.forward_trace(x)
    R = rng.normal(size=y.shape)
    got = L.ZPlus().relevance(step, R)
    want = F.four_steps_fast(layer, step, L.ZPlus().groups(layer, step), R, 1e-6)[0]
    Wp, _, bp, _ = L.rules._sign_split(layer)
    unsplit = F.four_steps_fast(layer, step, [L.rules.Group([L.rules.Term(x, Wp, bp)])], R, 1e-6)[0]
    assert _bits(got) == _bits(want) and _bits(got[:, 2]) != _bits(unsplit[:, 2])


@pytest.mark.parametrize("layer_name", sorted(LAYERS) + ["tokens", "avgpool", "untraced"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_epsilon_without_groups_is_its_one_term_bit_for_bit(layer_name, dtype, rng, monkeypatch):
    """The epsilon rule's lean path (no Group, Term or pair objects: rules_fast._epsilon_term) gives the bits
    of _one_term on the rule's own group, relevance and every number of the ledger (a Linear on tokens with
    its per-channel sums, pooling without weights, and a step whose output is not the layer's own pass)."""
    import functools
    import lrpnumpy.rules_fast as F
    from lrpnumpy.layers import AffineLayer
    if layer_name == "tokens":
        layer, x = with_bias(L.Linear(7, 5, rng=rng), rng), rng.normal(size=(3, 4, 7))
    elif layer_name == "avgpool":
        layer, x = L.AvgPool2d(2), rng.normal(size=(2, 3, 6, 6))
    else:
        layer, shape = LAYERS["linear" if layer_name == "untraced" else layer_name](rng)
        x = rng.normal(size=shape)
    layer, x = layer.astype(dtype), x.astype(dtype)
    y, step = layer.forward_trace(x)
    if layer_name == "untraced":  # a subclass with its own forward pass: z computed again, not read from the trace
        class Own(type(layer)):
            def _forward(self, a):
                return AffineLayer._forward(self, a)
        own = Own.__new__(Own)
        own.__dict__.update(layer.__dict__)
        layer, (y, step) = own, own.forward_trace(x)
    R = rng.normal(size=y.shape).astype(dtype)
    one_term = F._one_term
    monkeypatch.setattr(F, "_one_term", None)  # (not called: the lean path)
    for rule in (L.Epsilon(0.25), L.Epsilon(1e-9), L.LRP0()):
        got, ledger = F.propagate(rule, layer, step, R, defer=True)
        g = rule.groups(layer, step)[0]
        want, accounts = one_term(layer, step, g, g.terms[0], R, rule.epsilon)
        assert _bits(got) == _bits(want)
        assert isinstance(ledger, functools.partial)
        assert {k: _bits(v) for k, v in ledger().items()} == {k: _bits(v) for k, v in
                                                             F._ledger([g], accounts, rule.epsilon).items()}
        undeferred = F.propagate(rule, layer, step, R)[1]
        assert {k: _bits(v) for k, v in undeferred.items()} == {k: _bits(v) for k, v in ledger().items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_ledger_has_the_bits_of_the_ledger(dtype, rng):
    """rules_fast's ledger for one group of coefficient 1 (fewer array operations) gives the bits of
    rules.ledger, -0 sums included (0 + -0 is +0 in both); other groups go to rules.ledger itself."""
    from lrpnumpy.rules import Account, Group, ledger
    from lrpnumpy.rules_fast import _ledger
    sums = rng.normal(size=(5, 4)).astype(dtype)
    sums[1] = -0.0
    sums[2, ::2] = 0.0
    per_channel = rng.normal(size=(5, 3)).astype(dtype)
    per_channel[3] = -0.0
    for bias in (None, rng.normal(size=3).astype(dtype), np.zeros(3, dtype)):
        for epsilon in (0.0, 1e-6):
            for coef in (1.0, 2.0, -1.0, np.float64(1.0)):
                groups, accounts = [Group([], coef)], [Account(sums, per_channel, bias)]
                got, want = _ledger(groups, accounts, epsilon), ledger(groups, accounts, epsilon)
                assert got.keys() == want.keys()
                for key in want:
                    assert got[key].dtype == want[key].dtype and _bits(got[key]) == _bits(want[key]), key
    two = [Group([], 2.0), Group([], -1.0)]
    accounts = [Account(sums, per_channel, None), Account(-sums, per_channel, None)]
    got, want = _ledger(two, accounts, 1e-6), ledger(two, accounts, 1e-6)
    assert all(_bits(got[k]) == _bits(want[k]) for k in want)


def test_rules_module_holds_no_speed_machinery():
    """The readable rules: no kernels, pairing, stacking or row blocks in rules.py itself (they are
    rules_fast's); the old names still resolve there."""
    import inspect
    import lrpnumpy.rules as rules
    import lrpnumpy.rules_fast as fast
    text = inspect.getsource(rules)
    for name in ("kernels", "_pairs", "_by_input", "_is_traced", "_one_term", "_times"):
        assert not hasattr(rules, name), name
    for name in ("forward_many", "backward_many", "Step("):
        assert name not in text, name
    assert rules.four_steps_fast is fast.four_steps_fast and rules.row_blocks is fast.row_blocks


@pytest.mark.parametrize("layer_name", [n for n in sorted(REFERENCE_LAYERS) if "pool" not in n])
@pytest.mark.parametrize("gamma", [0.0, 0.25, 3.0])
def test_gamma_through_z_equals_its_definition(layer_name, gamma, rng):
    """On input without a negative part the gamma rule is written through the traced z and
    u = W+ x + b+; the four steps on that form equal them on W + gamma W+ and W + gamma W- (1e-12)."""
    from lrpnumpy.rules import Group, Term, four_steps
    layer, shape = REFERENCE_LAYERS[layer_name](rng)
    x = np.abs(rng.normal(size=shape))
    y, step = layer.forward_trace(x)
    R = rng.normal(size=y.shape)
    W, b = layer.weight, layer.bias
    Wp, Wn = W + gamma * np.maximum(W, 0), W + gamma * np.minimum(W, 0)
    bp, bn = (None, None) if b is None else (b + gamma * np.maximum(b, 0), b + gamma * np.minimum(b, 0))
    literal = [Group([Term(x, Wp, bp)], mask=y > 0), Group([Term(x, Wn, bn)], mask=y < 0)]
    want = four_steps(layer, step, literal, R, 1e-6)[0]
    rule = L.Gamma(gamma)
    from lrpnumpy.rules_fast import groups_for
    assert len(groups_for(rule, layer, step)[1].terms) == 2  # the form through z and u is the one in use
    for got in (rule.relevance(step, R), rule.reference(step, R)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


def test_rule_repr_and_equality():
    assert repr(L.Epsilon(0.25)) == "Epsilon(epsilon=0.25)"
    assert repr(L.AlphaBeta()) == "AlphaBeta(alpha=2.0, beta=1.0, epsilon=1e-06)"
    assert L.Gamma(0.25) == L.Gamma(0.25) and L.Gamma(0.25) != L.Gamma(0.5)
    assert "ZBox(low=0.0, high=1.0" in repr(L.ZBox(0, 1))


def test_large_layers_run_their_terms_as_separate_passes(rng, monkeypatch):
    """Above STACK_LIMIT the terms are not stacked (no copy of the weights); the numbers stay the same."""
    import lrpnumpy.layers.base as base
    cases = [REFERENCE_LAYERS[name](rng) for name in ("linear", "conv_stride_pad")]
    for layer, shape in cases:
        x = rng.normal(size=shape)
        y, step = layer.forward_trace(x)
        R = rng.normal(size=y.shape)
        stacked = [rule.relevance(step, R) for rule in (L.Gamma(), L.ZPlus(), L.AlphaBeta())]
        monkeypatch.setattr(base, "STACK_LIMIT", 0)
        separate = [rule.relevance(step, R) for rule in (L.Gamma(), L.ZPlus(), L.AlphaBeta())]
        monkeypatch.undo()
        for a, b in zip(stacked, separate):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(a).max())


@pytest.mark.parametrize("rule", [L.Epsilon(0.1), L.LRP0(), L.ZPlus(), L.AlphaBeta(2, 1), L.Gamma(0.25), L.Flat(),
                                  L.WSquare(), L.ZBox(-1.0, 2.0), L.Rho("gamma", 0.5, bias="raw")],
                         ids=lambda r: type(r).__name__)
@pytest.mark.parametrize("frozen", [False, True])
def test_large_dense_layers_in_row_blocks_equal_the_whole_layer(monkeypatch, rng, rule, frozen):
    """A Linear above ROW_BLOCK_BYTES runs its rule one block of output neurons at a time: same
    relevance and the same ledger (1e-12) as the whole layer and as the four-step reference."""
    import lrpnumpy.rules_fast as R
    layer = L.Linear(7, 10, rng=rng)
    layer.bias = rng.normal(size=10)
    if frozen:
        layer.freeze()
    x = rng.normal(size=(3, 7))
    if isinstance(rule, (L.ZPlus, L.AlphaBeta, L.Gamma)):
        x = np.abs(x)  # as after a ReLU: the fast path's skipped terms too
    y, step = layer.forward_trace(x)
    Rout = rng.normal(size=y.shape)
    whole, whole_ledger = rule.propagate(step, Rout)
    monkeypatch.setattr(R, "ROW_BLOCK_BYTES", 3 * 7 * 8)  # blocks of 3, 3, 3 and 1 output neurons
    assert [b.out_features for _, b in R.row_blocks(layer)] == [3, 3, 3, 1]
    blocked, blocked_ledger = rule.propagate(step, Rout)
    np.testing.assert_allclose(blocked, whole, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(blocked, rule.reference(step, Rout), rtol=1e-12, atol=1e-14)
    assert blocked_ledger.keys() == whole_ledger.keys()
    for key in whole_ledger:
        np.testing.assert_allclose(blocked_ledger[key], whole_ledger[key], rtol=1e-12, atol=1e-14)
    assert R.row_blocks(layer) is R.row_blocks(layer) if frozen else R.row_blocks(layer) is not R.row_blocks(layer)

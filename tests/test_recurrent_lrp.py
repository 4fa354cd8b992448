"""LRP through LSTM and GRU layers: Arras et al.'s LRP_for_LSTM formulas as the oracle, product rules,
Epsilon's bias_factor, conservation, and the gradient methods on sequence models."""

import numpy as np
import pytest

import lrpnumpy as lp
from lrpnumpy import composites
from lrpnumpy.errors import RuleParameterError, UnsupportedLayerError
from oracles import _sigm, lrp_linear, lstm_forward, reference_lrp_all


# ----- the oracle: Arras et al.'s formulas (LRP_for_LSTM), one sentence at a time, plain NumPy (tests/oracles.py) -----

def arras_bilstm(x, lstm, W_out, target, eps, bias_factor):
    """Their bidirectional LSTM: score W_left h_left[T-1] + W_right h_right[T-1], explained from the raw score."""
    P = [(lstm.weight_ih[k], lstm.weight_hh[k], lstm.bias_ih[k], lstm.bias_hh[k]) for k in (0, 1)]
    return reference_lrp_all(x, P, W_out, target, eps, bias_factor)


def bilstm_net(e=5, d=4, classes=3, seed=0):
    lstm = lp.LSTM(e, d, bidirectional=True, output="last", rng=seed)
    return lp.Sequential(lstm, lp.Linear(2 * d, classes, bias=False, rng=seed + 1))


@pytest.mark.parametrize("bias_factor", [0.0, 1.0])
@pytest.mark.parametrize("eps", [0.001, 0.0])
def test_lrp_all_equals_arras_lrp_for_lstm(eps, bias_factor):
    net = bilstm_net()
    x = np.random.default_rng(1).normal(size=(3, 6, 5))
    target = np.array([0, 2, 1])
    ex = lp.explain(net, x, target=target, composite=composites.get("lrp_all", epsilon=eps, bias_factor=bias_factor))
    for n in range(len(x)):
        s, Rx = arras_bilstm(x[n], net[0], net[1].weight, target[n], eps, bias_factor)
        np.testing.assert_allclose(ex.output[n], s, rtol=0, atol=1e-12)
        np.testing.assert_allclose(ex.relevance[n], Rx, rtol=0, atol=1e-10)
    if bias_factor == 1.0 and eps > 0:  # bias and stabilizer shared out: what is not at the input reached
        row = ex.conservation().rows[0]  # the initial zero state (reported as dropped)
        np.testing.assert_allclose(row["bias"], 0, atol=1e-12)
        np.testing.assert_allclose(row["stabilizer"], 0, atol=1e-12)
        np.testing.assert_allclose(row["relevance_in"] + row["dropped"], row["relevance_out"], rtol=1e-10)
        assert np.abs(row["dropped"]).max() > 0
    assert np.abs(ex.relevance).max() > 1e-3  # not vacuous


def test_lrp_all_with_lengths_equals_each_alone():
    net = bilstm_net()
    x = np.random.default_rng(2).normal(size=(3, 7, 5))
    lengths = np.array([7, 3, 5])
    comp = composites.get("lrp_all")
    with lp.sequence_lengths(lengths):
        ex = lp.explain(net, x, target=1, composite=comp)
    for n, L in enumerate(lengths):
        alone = lp.explain(net, x[n:n + 1, :L], target=1, composite=comp)
        np.testing.assert_allclose(ex.output[n], alone.output[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ex.relevance[n, :L], alone.relevance[0], rtol=0, atol=1e-12)
        assert (ex.relevance[n, L:] == 0).all()
        s, Rx = arras_bilstm(x[n, :L], net[0], net[1].weight, 1, 0.001, 0.0)
        np.testing.assert_allclose(ex.relevance[n, :L], Rx, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["lrp_all", "lrp_half", "lrp_prop"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("output", ["sequence", "last"])
def test_conservation_report_covers_recurrent_layers(name, cell, output):
    rec = getattr(lp, cell)(5, 4, bidirectional=True, output=output, rng=3)
    layers = [lp.Embedding(11, 5, rng=4), rec]
    if output == "sequence":
        layers += [lp.Transpose((0, 2, 1)), lp.GlobalMaxPool1d()]
    net = lp.Sequential(*layers, lp.Linear(8, 3, rng=5))
    ids = np.random.default_rng(6).integers(0, 11, size=(4, 6)).astype(np.float64)
    ex = lp.explain(net, ids, target=2, composite=composites.get(name, epsilon=0.01, bias_factor=0.0))
    assert ex.relevance.shape == (4, 6)
    report = ex.conservation()
    np.testing.assert_allclose(report.residual(), 0, atol=1e-10)
    row = report.rows[1]
    assert row["layer"] == repr(rec)
    assert np.abs(row["relevance_out"]).sum() > 1e-6
    # with bias_factor = 1 (and no dropped state relevance in LRP-all) what the layer absorbs is shared out
    ex1 = lp.explain(net, ids, target=2, composite=composites.get(name, epsilon=0.01, bias_factor=1.0))
    report1 = ex1.conservation()
    np.testing.assert_allclose(report1.residual(), 0, atol=1e-10)
    keys = ("bias", "stabilizer") if name != "lrp_prop" else ("bias",)  # (prop's own split keeps a stabilizer)
    for key in keys:
        np.testing.assert_allclose(report1.rows[1][key], 0, atol=1e-12)
    assert np.abs(report.rows[1]["bias"]).max() > 1e-6  # with bias_factor 0 the biases do absorb


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_float32_is_kept_and_close_to_float64(cell):
    net = lp.Sequential(lp.Embedding(7, 4, rng=0), getattr(lp, cell)(4, 3, bidirectional=True, output="last", rng=1),
                        lp.Linear(6, 2, rng=2))
    ids = np.random.default_rng(3).integers(0, 7, size=(3, 5)).astype(np.float64)
    comp = composites.get("lrp_half")
    r64 = lp.explain(net, ids, target=0, composite=comp).relevance
    r32 = lp.explain(net.astype(np.float32), ids.astype(np.float32), target=0, composite=comp).relevance
    assert r32.dtype == np.float32
    np.testing.assert_allclose(r32, r64, rtol=1e-4, atol=1e-5)


def test_product_rules_split_as_documented():
    g, s, R = np.array([[0.2, 0.9]]), np.array([[0.5, -0.3]]), np.array([[1.0, 2.0]])
    gate_part, signal_part = lp.SignalTakesAll().split(g, s, R, {})
    assert gate_part is None and signal_part is R
    half = lp.HalfHalf().split(g, s, R, {})
    np.testing.assert_allclose(half[0], R / 2)
    np.testing.assert_allclose(half[1], R / 2)
    ledger = {}
    rg, rs = lp.Proportional(epsilon=0.0).split(g, s, R, ledger)
    np.testing.assert_allclose(rg, g / (g + s) * R)
    np.testing.assert_allclose(rs, s / (g + s) * R)
    np.testing.assert_allclose(rg + rs, R)


def test_half_and_prop_give_gates_relevance_and_differ_from_all():
    net = bilstm_net()
    x = np.random.default_rng(7).normal(size=(2, 5, 5))
    r = {n: lp.explain(net, x, target=0, composite=composites.get(n)).relevance
         for n in ("lrp_all", "lrp_half", "lrp_prop")}
    assert not np.allclose(r["lrp_all"], r["lrp_half"])
    assert not np.allclose(r["lrp_all"], r["lrp_prop"])


def test_product_rule_refused_on_a_layer_without_products():
    net = lp.Sequential(lp.Linear(3, 2, rng=0))
    with pytest.raises(UnsupportedLayerError, match="gate x signal"):
        lp.explain(net, np.ones((1, 3)), target=0, rule=lp.SignalTakesAll())
    with pytest.raises(RuleParameterError):
        lp.HalfHalf(bias_factor=2.0)
    with pytest.raises(RuleParameterError):
        composites.get("lrp_all", epsilon=-1.0)


# ----- Epsilon's bias_factor -----

def test_epsilon_bias_factor_zero_is_todays_rule():
    net = lp.Sequential(lp.Linear(6, 5, rng=0), lp.ReLU(), lp.Linear(5, 3, rng=1))
    for layer in net:
        if getattr(layer, "bias", None) is not None:
            layer.bias = np.random.default_rng(2).normal(size=layer.bias.shape)
    x = np.random.default_rng(3).normal(size=(4, 6))
    a = lp.explain(net, x, target=1, rule=lp.Epsilon(0.1)).relevance
    b = lp.explain(net, x, target=1, rule=lp.Epsilon(0.1, bias_factor=0.0)).relevance
    assert np.array_equal(a, b)
    assert repr(lp.Epsilon(0.1, bias_factor=0.0)) == repr(lp.Epsilon(0.1)) == "Epsilon(epsilon=0.1)"


@pytest.mark.parametrize("make", [lambda: lp.Linear(6, 5, rng=0),
                                  lambda: lp.Conv1d(2, 3, 3, padding=1, rng=0)])
def test_epsilon_bias_factor_one_conserves_and_matches_formula(make):
    layer = make()
    layer.bias = np.random.default_rng(1).normal(size=layer.bias.shape)
    x = np.random.default_rng(2).normal(size=(2, 6) if isinstance(layer, lp.Linear) else (2, 2, 3))
    y, step = layer.forward_trace(x)
    R = np.random.default_rng(3).normal(size=y.shape)
    rule = lp.Epsilon(0.05, bias_factor=1.0)
    R_in, absorbed = rule.propagate(step, R)
    np.testing.assert_allclose(R_in.reshape(2, -1).sum(1), R.reshape(2, -1).sum(1), rtol=1e-12)
    np.testing.assert_allclose(rule.reference(step, R), R_in, rtol=1e-12)
    assert all(np.allclose(v, 0) for k, v in absorbed.items() if k in ("bias", "stabilizer"))
    if isinstance(layer, lp.Linear):  # Arras et al.'s lrp_linear, sample by sample
        for n in range(2):
            ref = lrp_linear(x[n], layer.weight.T, layer.bias, y[n], R[n], 6, 0.05, 1.0)
            np.testing.assert_allclose(R_in[n], ref, rtol=1e-12)
    half = lp.Epsilon(0.05, bias_factor=0.5).propagate(step, R)
    np.testing.assert_allclose(half[0], (R_in + lp.Epsilon(0.05).propagate(step, R)[0]) / 2, rtol=1e-10, atol=1e-14)


def test_epsilon_bias_factor_refused_where_meaningless():
    with pytest.raises(RuleParameterError, match="bias_factor"):
        lp.Epsilon(0.1, bias_factor=-0.5)
    pool = lp.SumPool1d(2)
    y, step = pool.forward_trace(np.ones((1, 1, 4)))
    with pytest.raises(UnsupportedLayerError, match="bias_factor"):
        lp.Epsilon(0.1, bias_factor=1.0).propagate(step, y)


# ----- LRP-half and LRP-prop, and the GRU, against a per-sentence plain-NumPy statement of the rules -----

def eps_matrix(inputs, b, z, R, eps):
    """The epsilon rule as an explicit contribution matrix per input: x_i W_ji / (z_j + eps sign z_j) R_j."""
    zs = z + eps * np.where(z >= 0, 1.0, -1.0)
    out = []
    for x, W in inputs:
        W = np.identity(len(x)) if W is None else W
        out.append((x[None, :] * W / zs[:, None] * R[:, None]).sum(axis=0))
    return out


SPLITS = {"lrp_all": lambda g, s, R, eps: (np.zeros_like(R), R),
          "lrp_half": lambda g, s, R, eps: (R / 2, R / 2),
          "lrp_prop": lambda g, s, R, eps: (g * R / (g + s + eps * np.where(g + s >= 0, 1.0, -1.0)),
                                            s * R / (g + s + eps * np.where(g + s >= 0, 1.0, -1.0)))}


def lstm_sentence(x, P, R_last, split, eps):
    Wxh, Whh, bxh, bhh = P
    h, c, pre, gates = lstm_forward(x, *P)
    T, d = len(x), Whh.shape[1]
    Rx, Rh, Rc = np.zeros_like(x), R_last.copy(), np.zeros(d)
    for t in reversed(range(T)):
        i, f, g, o = np.split(gates[t], 4)
        R_o, R_tc = split(o, np.tanh(c[t]), Rh, eps)
        Rc = Rc + R_tc
        R_fc, R_ig = eps_matrix([(f * c[t - 1], None), (i * g, None)], 0, c[t], Rc, eps)
        R_f, Rc = split(f, c[t - 1], R_fc, eps)
        R_i, R_g = split(i, g, R_ig, eps)
        Rh = np.zeros(d)
        for q, R_q in enumerate((R_i, R_f, R_g, R_o)):
            rows = slice(q * d, (q + 1) * d)
            rx, rh = eps_matrix([(x[t], Wxh[rows]), (h[t - 1], Whh[rows])], bxh[rows] + bhh[rows], pre[t, rows],
                                R_q, eps)
            Rx[t] += rx
            Rh += rh
    return h[T - 1], Rx


def gru_sentence(x, P, R_last, split, eps):
    Wih, Whh, bih, bhh = P
    T, d = len(x), Whh.shape[1]
    h = np.zeros((T + 1, d))
    keep = []
    for t in range(T):
        r = _sigm(Wih[:d] @ x[t] + bih[:d] + Whh[:d] @ h[t - 1] + bhh[:d])
        z = _sigm(Wih[d:2 * d] @ x[t] + bih[d:2 * d] + Whh[d:2 * d] @ h[t - 1] + bhh[d:2 * d])
        q = Whh[2 * d:] @ h[t - 1] + bhh[2 * d:]
        a_n = Wih[2 * d:] @ x[t] + bih[2 * d:] + r * q
        n = np.tanh(a_n)
        h[t] = (1 - z) * n + z * h[t - 1]
        keep.append((r, z, q, a_n, n))
    Rx, Rh = np.zeros_like(x), R_last.copy()
    for t in reversed(range(T)):
        r, z, q, a_n, n = keep[t]
        R_a, R_b = eps_matrix([((1 - z) * n, None), (z * h[t - 1], None)], 0, h[t], Rh, eps)
        R_z1, R_n = split(1 - z, n, R_a, eps)
        R_z2, Rh = split(z, h[t - 1], R_b, eps)
        rx, R_rq = eps_matrix([(x[t], Wih[2 * d:]), (r * q, None)], bih[2 * d:], a_n, R_n, eps)
        Rx[t] += rx
        R_r, R_q = split(r, q, R_rq, eps)
        Rh = Rh + eps_matrix([(h[t - 1], Whh[2 * d:])], bhh[2 * d:], q, R_q, eps)[0]
        for gi, R_g in ((0, R_r), (1, R_z1 + R_z2)):
            rows = slice(gi * d, (gi + 1) * d)
            pre = Wih[rows] @ x[t] + bih[rows] + Whh[rows] @ h[t - 1] + bhh[rows]
            rx, rh = eps_matrix([(x[t], Wih[rows]), (h[t - 1], Whh[rows])], bih[rows] + bhh[rows], pre, R_g, eps)
            Rx[t] += rx
            Rh = Rh + rh
    return h[T - 1], Rx


@pytest.mark.parametrize("name", ["lrp_all", "lrp_half", "lrp_prop"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_lrp_equals_the_per_sentence_statement(name, cell):
    """Bidirectional, a ragged batch, and the output layer's epsilon rule, sentence by sentence."""
    e, d, eps = 3, 4, 0.01
    rec = getattr(lp, cell)(e, d, bidirectional=True, output="last", rng=11)
    net = lp.Sequential(rec, lp.Linear(2 * d, 2, rng=12))
    net[1].bias = np.array([0.3, -0.2])
    x = np.random.default_rng(13).normal(size=(3, 5, e))
    lengths = np.array([5, 3, 4])
    with lp.sequence_lengths(lengths):
        ex = lp.explain(net, x, target=1, composite=composites.get(name, epsilon=eps))
    sentence = lstm_sentence if cell == "LSTM" else gru_sentence
    W, b = net[1].weight, net[1].bias
    for n, L in enumerate(lengths):
        P = [(rec.weight_ih[k], rec.weight_hh[k], rec.bias_ih[k], rec.bias_hh[k]) for k in (0, 1)]
        # the final states first (the output layer's relevance needs them)
        h_left, _ = sentence(x[n, :L], P[0], np.zeros(d), SPLITS[name], eps)
        h_right, _ = sentence(x[n, :L][::-1], P[1], np.zeros(d), SPLITS[name], eps)
        hin = np.concatenate([h_left, h_right])
        s = W @ hin + b
        R_out = np.where(np.arange(2) == 1, s, 0)
        R_h = eps_matrix([(hin, W)], b, s, R_out, eps)[0]
        _, Rx_left = sentence(x[n, :L], P[0], R_h[:d], SPLITS[name], eps)
        _, Rx_right = sentence(x[n, :L][::-1], P[1], R_h[d:], SPLITS[name], eps)
        np.testing.assert_allclose(ex.relevance[n, :L], Rx_left + Rx_right[::-1], rtol=0, atol=1e-12)
        assert (ex.relevance[n, L:] == 0).all()

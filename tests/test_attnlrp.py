"""AttnLRP and CP-LRP: each rule against its formula in plain NumPy, conservation through an encoder
block, and (``reference``) lxt 2.1 on the same block in float64 to 1e-8."""

import importlib
import os
import sys
import types

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites, explain
from lrpnumpy.errors import RuleParameterError, UnsupportedLayerError
from lrpnumpy.layers import Graph
from lrpnumpy.rules import Epsilon
from lrpnumpy.rules_transformer import HoldConstant, Inner, LayerNormEpsilon, SoftmaxRule, Uniform

EPS = 1e-12  # moves relevance by < 1e-9 here: lxt's stabilizer sign convention (z + eps) does not matter


def stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


# ----- each rule against its formula -------------------------------------------------------------------------


def test_uniform_rule_on_matmul(rng):
    a, b = rng.normal(size=(2, 3, 4, 5)), rng.normal(size=(2, 3, 5, 6))
    layer = L.MatMul()
    y, step = layer.forward_trace(a, b)
    R = rng.normal(size=y.shape)
    (Ra, Rb), ledger = Uniform(0.1).propagate(step, R)
    zs = stab(np.einsum("...ik,...kj->...ij", a, b), 0.1)
    want_a = 0.5 * np.einsum("...ik,...kj,...ij->...ik", a, b, R / zs)
    want_b = 0.5 * np.einsum("...ik,...kj,...ij->...kj", a, b, R / zs)
    np.testing.assert_allclose(Ra, want_a, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(Rb, want_b, rtol=1e-12, atol=1e-14)
    # what the two inputs do not get is the stabilizer's
    np.testing.assert_allclose(R.sum(axis=(1, 2, 3)) - Ra.sum(axis=(1, 2, 3)) - Rb.sum(axis=(1, 2, 3)),
                               ledger["stabilizer"], rtol=1e-10, atol=1e-12)


def test_uniform_rule_on_broadcast_mul(rng):
    a, b = rng.normal(size=(2, 3, 4)), rng.normal(size=(1, 3, 1))
    layer = L.Mul()
    y, step = layer.forward_trace(a, b)
    R = rng.normal(size=y.shape)
    (Ra, Rb), _ = Uniform(1e-3).propagate(step, R)
    share = 0.5 * R * (a * b) / stab(a * b, 1e-3)  # each input half of each product's relevance
    np.testing.assert_allclose(Ra, share, rtol=1e-12)
    np.testing.assert_allclose(Rb, share.sum(axis=(0, 2), keepdims=True), rtol=1e-12)


def test_hold_constant_sends_everything_through_the_values(rng):
    A, v = rng.random(size=(2, 4, 4)), rng.normal(size=(2, 4, 3))
    step = L.MatMul().forward_trace(A, v)[1]
    R = rng.normal(size=(2, 4, 3))
    (RA, Rv), _ = HoldConstant(0, 1e-9).propagate(step, R)
    assert not RA.any()
    want = np.einsum("nik,nkj,nij->nkj", A, v, R / stab(A @ v, 1e-9))
    np.testing.assert_allclose(Rv, want, rtol=1e-12, atol=1e-14)
    g, u = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    (Rg, Ru), _ = HoldConstant(0, 0.0).propagate(L.Mul().forward_trace(g, u)[1], R[:, 0, :2].repeat(3, 1)[:, :5])
    np.testing.assert_allclose(Ru, R[:, 0, :2].repeat(3, 1)[:, :5], rtol=1e-12)
    assert not Rg.any()


def test_softmax_rule(rng):
    x = rng.normal(size=(2, 3, 5))
    x[0, 1, 4] = -np.inf  # a masked position gets nothing
    layer = L.Softmax(axis=-1)
    s, step = layer.forward_trace(x)
    R = rng.normal(size=s.shape)
    R[0, 1, 4] = 0.0
    R_in, ledger = SoftmaxRule().propagate(step, R)
    want = np.empty_like(x)
    for idx in np.ndindex(x.shape[:2]):
        xi, si, Ri = np.where(np.isinf(x[idx]), 0.0, x[idx]), s[idx], R[idx]
        for i in range(5):
            want[idx + (i,)] = xi[i] * Ri[i] - xi[i] * si[i] * Ri.sum()
    np.testing.assert_allclose(R_in, want, rtol=1e-12, atol=1e-14)
    # not conservative by design: sum R_in = sum_j (x_j - sum_i s_i x_i) R_j, the rest is the softmax's share
    xz = np.where(np.isinf(x), 0.0, x)
    sum_in = ((xz - (s * xz).sum(-1, keepdims=True)) * R).sum(axis=(1, 2))
    np.testing.assert_allclose(R_in.sum(axis=(1, 2)), sum_in, rtol=1e-12)
    np.testing.assert_allclose(ledger["softmax"], R.sum(axis=(1, 2)) - sum_in, rtol=1e-10, atol=1e-12)


def test_layernorm_rule_is_epsilon_with_the_std_held_constant(rng):
    D = 6
    ln = L.LayerNorm(D)
    ln.weight, ln.bias = rng.normal(size=D), rng.normal(size=D)
    x = rng.normal(size=(2, 3, D))
    y, step = ln.forward_trace(x)
    R = rng.normal(size=y.shape)
    R_in, ledger = LayerNormEpsilon(1e-3).propagate(step, R)
    want = np.empty_like(x)
    centring = np.eye(D) - 1.0 / D
    for idx in np.ndindex(x.shape[:2]):
        sigma = np.sqrt(x[idx].var() + ln.eps)
        J = ln.weight[:, None] * centring / sigma       # dy_i / dx_j with sigma constant
        want[idx] = x[idx] * (J.T @ (R[idx] / stab(y[idx], 1e-3)))
    np.testing.assert_allclose(R_in, want, rtol=1e-11, atol=1e-13)
    s = R / stab(y, 1e-3)
    np.testing.assert_allclose(ledger["bias"], (s * ln.bias).sum(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(R.sum(axis=(1, 2)) - R_in.sum(axis=(1, 2)), ledger["bias"] + ledger["stabilizer"],
                               rtol=1e-10, atol=1e-12)


def test_epsilon_on_a_token_linear_books_its_bias_per_output_feature(rng):
    """The bias ledger of a Linear on (N, T, D) sums s over the tokens for each output feature."""
    lin = L.Linear(4, 3, rng=0)
    lin.bias = rng.normal(size=3)
    x = rng.normal(size=(2, 5, 4))
    y, step = lin.forward_trace(x)
    R = rng.normal(size=y.shape)
    R_in, ledger = Epsilon(1e-2).propagate(step, R)
    s = R / stab(y, 1e-2)
    np.testing.assert_allclose(R_in, x * (s @ lin.weight), rtol=1e-12)
    np.testing.assert_allclose(ledger["bias"], (s * lin.bias).sum(axis=(1, 2)), rtol=1e-12)


def test_rules_refuse_other_layers(rng):
    step = L.ReLU().forward_trace(rng.normal(size=(2, 3)))[1]
    for rule in (Uniform(), HoldConstant(), SoftmaxRule(), LayerNormEpsilon(), Inner(composites.get("attnlrp"))):
        with pytest.raises(UnsupportedLayerError):
            rule.propagate(step, np.ones((2, 3)))
    with pytest.raises(RuleParameterError):
        HoldConstant(2)
    with pytest.raises(RuleParameterError):
        Uniform(-1.0)


# ----- an encoder block --------------------------------------------------------------------------------------


def encoder_block(rng, E=8, H=2, F=16, biases=True):
    """A pre-norm encoder block (torch's TransformerEncoderLayer with norm_first=True) as a Graph."""
    net = Graph([("ln1", L.LayerNorm(E), "input"), ("attn", L.MultiheadAttention(E, H, rng=1), "ln1"),
                 ("add1", L.Add(), ["attn", "input"]), ("ln2", L.LayerNorm(E), "add1"),
                 ("fc1", L.Linear(E, F, rng=2), "ln2"), ("gelu", L.GELU(), "fc1"),
                 ("fc2", L.Linear(F, E, rng=3), "gelu"), ("add2", L.Add(), ["fc2", "add1"])])
    for layer in net:
        for name in layer.params:
            p = getattr(layer, name)
            if p is not None:
                scale = 1.0 if "bias" not in name else (0.3 if biases else 0.0)
                base = 1.0 if name == "weight" and isinstance(layer, L.LayerNorm) else 0.0
                setattr(layer, name, base + scale * rng.normal(size=p.shape) * (0.2 if base else 1.0))
    return net


def test_names_and_inner_rules_match_the_expanded_attention(rng):
    assert isinstance(composites.get("attnlrp", epsilon=0.01), composites.AttnLRP)
    assert composites.get("attnlrp", epsilon=0.01, gamma=0.25).layer_map[0][1].gamma == 0.25
    assert isinstance(composites.get("cp_lrp", epsilon=0.01), composites.CPLRP)
    mha = L.MultiheadAttention(8, 2, rng=0)
    mha.in_proj_bias = rng.normal(size=24)
    x = rng.normal(size=(2, 4, 8))
    for name in ("attnlrp", "cp_lrp"):
        comp = composites.get(name, epsilon=1e-3)
        y = mha.forward(x)
        whole = explain(Graph([("attn", mha, "input")]), x, relevance_out=y, composite=comp)
        parts = explain(mha.graph(), x, relevance_out=y, composite=comp)
        np.testing.assert_allclose(whole.relevance, parts.relevance, rtol=1e-12, atol=1e-14)


def test_cp_lrp_conserves_without_biases_and_attnlrp_books_the_softmax(rng):
    net = encoder_block(rng, biases=False)
    x = rng.normal(size=(2, 5, 8))
    y = net.forward(x)
    cp = explain(net, x, relevance_out=y, composite=composites.get("cp_lrp", epsilon=EPS))
    np.testing.assert_allclose(cp.relevance.sum(axis=(1, 2)), y.sum(axis=(1, 2)), rtol=1e-9)
    assert np.abs(cp.conservation().residual()).max() < 1e-9
    attn = explain(net, x, relevance_out=y, composite=composites.get("attnlrp", epsilon=EPS))
    row = next(r for r in attn.conservation() if r["name"] == "attn")
    assert np.abs(row["softmax"]).min() > 1e-3  # the softmax rule does not conserve ...
    assert np.abs(attn.conservation().residual()).max() < 1e-9  # ... and its share keeps every row balanced


# ----- lxt 2.1 -----------------------------------------------------------------------------------------------


def _t(torch, a):
    return torch.tensor(np.asarray(a))


def _lxt_attnlrp_block(torch, lf, identity, net, xt, eps):
    """The same block written with lxt's explicit LRP functions (AttnLRP): relevance flows as the gradient."""
    E = net["ln1"].normalized_shape[0]
    mha = net["attn"]
    H, d = mha.num_heads, mha.head_dim
    W, b = _t(torch, mha.in_proj_weight), _t(torch, mha.in_proj_bias)

    def norm(x, layer):
        return lf.layer_norm_grad_fn.apply(x, _t(torch, layer.weight), _t(torch, layer.bias), layer.eps, eps)

    def heads(t):
        return t.view(t.shape[0], t.shape[1], H, d).transpose(1, 2)
    h = norm(xt, net["ln1"])
    scale = 1 / np.sqrt(d)  # folded into the query projection: a constant factor passes relevance on
    q = heads(lf.linear_epsilon(h, W[:E] * scale, b[:E] * scale, eps))
    k = heads(lf.linear_epsilon(h, W[E:2 * E], b[E:2 * E], eps))
    v = heads(lf.linear_epsilon(h, W[2 * E:], b[2 * E:], eps))
    A = lf.softmax(lf.matmul(q, k.transpose(-1, -2), epsilon=eps), -1)
    ctx = lf.matmul(A, v, epsilon=eps)
    merged = ctx.transpose(1, 2).reshape(xt.shape)
    o = lf.linear_epsilon(merged, _t(torch, mha.out_proj_weight), _t(torch, mha.out_proj_bias), eps)
    r = lf.add2(o, xt, epsilon=eps)
    f = lf.linear_epsilon(norm(r, net["ln2"]), _t(torch, net["fc1"].weight), _t(torch, net["fc1"].bias), eps)
    f = identity(torch.nn.functional.gelu, f)
    f = lf.linear_epsilon(f, _t(torch, net["fc2"].weight), _t(torch, net["fc2"].bias), eps)
    return lf.add2(f, r, epsilon=eps)


def _lxt_cp_block(torch, patches, rules, net, xt):
    """The same block as torch modules patched as lxt's efficient CP-LRP patches the torch ViT (queries and
    keys detached, the std detached, the identity on GELU); relevance is gradient x input."""
    E = net["ln1"].normalized_shape[0]
    mha = net["attn"]
    norms = []
    for name in ("ln1", "ln2"):
        m = torch.nn.LayerNorm(E, eps=net[name].eps).double()
        m.weight.data, m.bias.data = _t(torch, net[name].weight), _t(torch, net[name].bias)
        norms.append(m)
    att = torch.nn.MultiheadAttention(E, mha.num_heads, batch_first=True).double()
    att.in_proj_weight.data, att.in_proj_bias.data = _t(torch, mha.in_proj_weight), _t(torch, mha.in_proj_bias)
    att.out_proj.weight.data, att.out_proj.bias.data = _t(torch, mha.out_proj_weight), _t(torch, mha.out_proj_bias)
    att.original_forward = att.forward
    fcs = []
    for name in ("fc1", "fc2"):
        m = torch.nn.Linear(*reversed(net[name].weight.shape)).double()
        m.weight.data, m.bias.data = _t(torch, net[name].weight), _t(torch, net[name].bias)
        fcs.append(m)

    h = patches.layer_norm_forward(norms[0], xt)
    r = patches.cp_multi_head_attention_forward(att, h, h, h, need_weights=False)[0] + xt
    f = rules.identity_rule_implicit(torch.nn.functional.gelu, fcs[0](patches.layer_norm_forward(norms[1], r)))
    return fcs[1](f) + r


def _lxt_efficient(monkeypatch):
    """lxt.efficient's patches and rules (torch only), without the package's __init__, which imports
    Hugging Face transformers for its LLM patches (not a dependency here)."""
    lxt = pytest.importorskip("lxt")
    stub = types.ModuleType("lxt.efficient")
    stub.__path__ = [os.path.join(os.path.dirname(lxt.__file__), "efficient")]
    monkeypatch.setitem(sys.modules, "lxt.efficient", stub)
    loaded = []
    for name in ("rules", "patches"):
        monkeypatch.setitem(sys.modules, f"lxt.efficient.{name}", None)  # restored (removed) after the test
        del sys.modules[f"lxt.efficient.{name}"]
        loaded.append(importlib.import_module(f"lxt.efficient.{name}"))
    return loaded[1], loaded[0]


@pytest.mark.reference
@pytest.mark.parametrize("name", ["attnlrp", "cp_lrp"])
def test_matches_lxt_on_an_encoder_block(name, rng, monkeypatch):
    """AttnLRP against lxt's explicit functions (epsilon 1e-12 in both), CP-LRP against lxt's efficient
    patches (gradient x input, no epsilon; ours 1e-12), on one pre-norm encoder block with biases."""
    torch = pytest.importorskip("torch")
    net = encoder_block(rng)
    x = rng.normal(size=(2, 5, 8))
    y = net.forward(x)
    R_out = y * (rng.random(size=y.shape) < 0.5)
    ours = explain(net, x, relevance_out=R_out, composite=composites.get(name, epsilon=EPS)).relevance
    xt = torch.tensor(x, requires_grad=True)
    if name == "attnlrp":
        lf = pytest.importorskip("lxt.explicit.functional")
        yt = _lxt_attnlrp_block(torch, lf, pytest.importorskip("lxt.explicit.rules").identity, net, xt, EPS)
        yt.backward(torch.tensor(R_out))
        theirs = xt.grad.numpy()
    else:
        patches, rules = _lxt_efficient(monkeypatch)
        yt = _lxt_cp_block(torch, patches, rules, net, xt)
        yt.backward(torch.tensor(R_out / y))  # relevance = output x gradient
        theirs = (xt * xt.grad).detach().numpy()
    np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-12, atol=1e-12)
    assert np.abs(theirs).max() > 0.1
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-8)


def test_expanded_attention_reports_each_primitive(rng):
    """expand() gives the attention's primitives their own rows: same relevance, every row balanced,
    the softmax's share on the softmax's row and the projections' biases on theirs."""
    from lrpnumpy.layers.attention import expand
    net = encoder_block(rng)
    x = rng.normal(size=(2, 5, 8))
    y = net.forward(x)
    flat = expand(net)
    np.testing.assert_allclose(flat.forward(x), y, rtol=1e-13)
    assert "attn.attention" in flat.names and "attn" in flat.names
    for name in ("attnlrp", "cp_lrp"):
        comp = composites.get(name, epsilon=EPS)
        nested, expanded = (explain(n, x, relevance_out=y, composite=comp) for n in (net, flat))
        np.testing.assert_allclose(expanded.relevance, nested.relevance, rtol=1e-11, atol=1e-13)
        report = expanded.conservation()
        assert np.abs(report.residual()).max() < 1e-9
        rows = {r["name"]: r for r in report.to_dict()}
        nested_row = next(r for r in nested.conservation().to_dict() if r["name"] == "attn")
        inner = [r for n, r in rows.items() if n == "attn" or n.startswith("attn.")]
        for column in ("softmax", "bias"):
            assert abs(sum(r[column] for r in inner) - nested_row[column]) < 1e-9
        if name == "attnlrp":
            assert abs(rows["attn.attention"]["softmax"]) > 1e-3
            assert "softmax" in report.to_text()
        else:
            assert rows["attn.attention"]["relevance_out"] == 0.0  # CP-LRP: nothing flows through the softmax


def test_causal_attention_gives_finite_balanced_relevance(rng):
    """The mask's -inf scores get no relevance (as in lxt) and every row of the report still balances."""
    from lrpnumpy.layers.attention import expand
    mha = L.MultiheadAttention(8, 2, causal=True, rng=0)
    x = rng.normal(size=(2, 4, 8))
    y = mha.forward(x)
    net = expand(Graph([("attn", mha, "input")]))
    e = explain(net, x, relevance_out=y, composite=composites.get("attnlrp", epsilon=EPS))
    assert np.isfinite(e.relevance).all()
    assert np.abs(e.conservation().residual()).max() < 1e-9
    R_scores = e.layers[net.names.index("attn.masked")]
    assert not R_scores[:, :, np.triu_indices(4, 1)[0], np.triu_indices(4, 1)[1]].any()


@pytest.mark.parametrize("rule", [Epsilon(1e-3), composites.get("attnlrp", gamma=0.25).layer_map[0][1]])
def test_token_linear_rules_equal_the_rules_on_flattened_rows(rule, rng):
    """A rule on a Linear over (N, T, D) gives what it gives on the N*T rows (N*T, D), and books the same
    bias and stabilizer per sample (the several-term gamma rule runs the stacked passes on the last axis)."""
    lin = L.Linear(4, 3, rng=0)
    lin.bias = rng.normal(size=3)
    x = rng.normal(size=(2, 5, 4))
    y, step = lin.forward_trace(x)
    R = rng.normal(size=y.shape)
    R_in, ledger = rule.propagate(step, R)
    y2, step2 = lin.forward_trace(x.reshape(10, 4))
    R2, ledger2 = rule.propagate(step2, R.reshape(10, 3))
    np.testing.assert_allclose(R_in, R2.reshape(x.shape), rtol=1e-12, atol=1e-14)
    for key in ("bias", "stabilizer"):
        np.testing.assert_allclose(ledger[key], ledger2[key].reshape(2, 5).sum(axis=1), rtol=1e-10, atol=1e-14)


@pytest.mark.reference
@pytest.mark.parametrize("name", ["attnlrp", "cp_lrp"])
def test_gated_mlp_matches_lxt(name, rng, monkeypatch):
    """LLaMA's gated MLP ``down(silu(gate(x)) * up(x))`` as a Graph with Mul(gate, up): AttnLRP (identity on
    SiLU, uniform on the product) and CP-LRP (the gate held constant) against lxt's efficient patches."""
    torch = pytest.importorskip("torch")
    patches, rules = _lxt_efficient(monkeypatch)
    net = Graph([("gate", L.Linear(4, 6, rng=1), "input"), ("act", L.SiLU(), "gate"),
                 ("up", L.Linear(4, 6, rng=2), "input"), ("prod", L.Mul(), ["act", "up"]),
                 ("down", L.Linear(6, 4, rng=3), "prod")])
    for layer in (net["gate"], net["up"], net["down"]):
        layer.bias = 0.3 * rng.normal(size=layer.bias.shape)
    x = rng.normal(size=(2, 5, 4))
    y = net.forward(x)
    ours = explain(net, x, relevance_out=y, composite=composites.get(name, epsilon=EPS)).relevance

    mlp = torch.nn.Module()
    for attr in ("gate", "up", "down"):
        W = net[attr].weight
        m = torch.nn.Linear(W.shape[1], W.shape[0]).double()
        m.weight.data, m.bias.data = _t(torch, W), _t(torch, net[attr].bias)
        setattr(mlp, f"{attr}_proj", m)
    mlp.act_fn = torch.nn.functional.silu
    xt = torch.tensor(x, requires_grad=True)
    yt = (patches.gated_mlp_forward if name == "attnlrp" else patches.cp_gated_mlp_forward)(mlp, xt)
    np.testing.assert_allclose(yt.detach().numpy(), y, rtol=1e-12, atol=1e-12)
    yt.backward(torch.ones_like(yt))  # relevance = output x gradient, seeded with R_out = y
    theirs = (xt * xt.grad).detach().numpy()
    assert np.abs(theirs).max() > 0.1
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-8)

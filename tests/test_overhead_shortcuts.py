"""Shortcuts that cut explain's per-call cost on small transformers (issue 29), each checked against the
long way bit for bit: LayerNorm's std kept in its step, means without NumPy's wrapper, Norm on a residual
Add without stacking, and the conservation ledger's arithmetic left until the report is asked for."""

import functools

import numpy as np
import pytest

import lrpnumpy as L
from lrpnumpy import composites, rules_fast
from lrpnumpy.layers.transformer_norm import _mean
from lrpnumpy.rules import Group, Norm, Term, four_steps
from lrpnumpy.rules_transformer import Inner, LayerNormEpsilon
from lrpnumpy.trace import Step


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _same_bits(a, b):
    np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axes", [((3, 17, 64), (2,)), ((2, 5, 4, 6), (2, 3)), ((1, 7), (1,)), ((4, 0, 8), (2,))])
def test_mean_without_the_wrapper_is_numpys_mean_bit_for_bit(dtype, shape, axes):
    x = (np.random.default_rng(0).standard_normal(shape) * 1e3).astype(dtype)
    if x.size:
        x.reshape(-1)[::7] = -0.0
    _same_bits(_mean(x, axes), x.mean(axis=axes, keepdims=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_keeps_its_std_in_the_step_and_gives_the_textbook_numbers(dtype):
    ln = L.LayerNorm(8, eps=1e-5, dtype=dtype)
    r = np.random.default_rng(1)
    ln.weight, ln.bias = r.standard_normal(8).astype(dtype), r.standard_normal(8).astype(dtype)
    x = (r.standard_normal((3, 5, 8)) * 4 + 2).astype(dtype)
    y, step = ln.forward_trace(x)
    centred = x - x.mean(axis=-1, keepdims=True)
    std = np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + dtype(1e-5))
    _same_bits(step.state, std)                                   # the forward pass's own std, kept
    _same_bits(y, centred / std * ln.weight + ln.bias)            # the former formula, bit for bit
    _same_bits(ln.forward(x), y)
    assert ln.held_scale(step) is step.state                      # the rule reads it, not computed again
    _same_bits(ln.scale(x), std)


def test_layer_norm_rule_gives_the_same_bits_from_a_hand_made_step_without_the_std():
    net = L.zoo.trained("fashion_vit", dtype=np.float32).freeze()
    x = L.datasets.sample(np.float32).images[:3]
    _, trace = net.forward_trace(x)
    step = trace[5]
    assert isinstance(step.layer, L.LayerNorm) and isinstance(step.state, np.ndarray)
    bare = Step(step.layer, step.inputs, step.output)             # no state: the std is computed again
    R = np.random.default_rng(2).standard_normal(step.output.shape).astype(np.float32)
    rule = LayerNormEpsilon(1e-6)
    (a, la), (b, lb) = rule.propagate(step, R), rule.propagate(bare, R)
    _same_bits(a, b)
    assert la.keys() == lb.keys() and all(np.array_equal(_bits(la[k]), _bits(lb[k])) for k in la)
    wrong = Step(step.layer, step.inputs, step.output, state=np.ones((3, 1)))  # not a std of this input's shape
    _same_bits(rule.propagate(wrong, R)[0], a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("epsilon", [0.0, 1e-3])
def test_norm_on_a_residual_add_skips_the_stack_and_equals_the_literal_steps(dtype, epsilon, monkeypatch):
    r = np.random.default_rng(3)
    a, b = r.standard_normal((4, 3, 6)).astype(dtype), r.standard_normal((4, 3, 6)).astype(dtype)
    a[0], b[0] = -0.0, -0.0                     # -0 + -0: the traced sum is -0, the stacked sum +0
    a[1, 0], b[1, 0] = 1.0, -1.0                # a zero denominator (dropped with epsilon 0)
    add = L.Add()
    y, step = add.forward_trace(a, b)
    R = r.standard_normal(y.shape).astype(dtype)
    X = np.stack([a, b])
    groups = [Group([Term(X, None, None)])]
    expected, _ = four_steps(add, step, groups, R, epsilon)
    generic, values = rules_fast.four_steps_fast(add, step, groups, R, epsilon)
    ledger = rules_fast._ledger(groups, values, epsilon)

    def no_stack(step):
        raise AssertionError("the shortcut stacks no inputs")
    monkeypatch.setattr(L.Add, "joint_input", no_stack)
    (ra, rb), got = Norm(epsilon).propagate(step, R)
    for mine, theirs in zip((ra, rb), expected):  # the literal steps (which add to 0: +0 for -0)
        np.testing.assert_array_equal(mine, theirs)
    for mine, theirs in zip((ra, rb), generic):  # the fast path without the shortcut: bit for bit
        _same_bits(mine, theirs)
    assert got.keys() == ledger.keys() and all(np.array_equal(_bits(got[k]), _bits(ledger[k])) for k in got)
    assert not np.shares_memory(ra, rb)


def test_add_with_coefficients_or_three_inputs_keeps_the_general_path(monkeypatch):
    r = np.random.default_rng(4)
    xs = [r.standard_normal((2, 5)) for _ in range(3)]
    calls = []
    stack = L.Add.joint_input
    monkeypatch.setattr(L.Add, "joint_input", lambda self, step: calls.append(1) or stack(self, step))
    for add, inputs in ((L.Add(), xs), (L.Add([0.5, 2.0]), xs[:2])):
        y, step = add.forward_trace(*inputs)
        Norm(1e-6).propagate(step, np.ones_like(y))
    assert len(calls) == 2


def _network_and_input(dtype=np.float64):
    return L.zoo.trained("fashion_vit", dtype=dtype).freeze(), L.datasets.sample(dtype).images[:3]


def test_explain_defers_the_ledger_arithmetic_and_the_report_has_the_eager_numbers():
    net, x = _network_and_input()
    comp = composites.get("attnlrp", epsilon=1e-9)
    e = L.explain(net, x, composite=comp)
    deferred = [i for i, ledger in enumerate(e._ledgers) if callable(ledger)]
    assert 3 in deferred and 4 in deferred and 7 in deferred   # the blocks (Inner) and the head (Epsilon)
    report = e.conservation().rows
    kept = list(e._ledgers)
    assert not any(callable(ledger) for ledger in kept)
    e.conservation()                                           # asked again: the dicts made the first time
    assert all(a is b for a, b in zip(kept, e._ledgers))
    # the eager form: each rule's own propagate on the same steps, its ledger a dict at once
    _, trace = net.forward_trace(x)
    rules = [r if r is not None else composites.default_rule(layer) for r, layer in zip(comp.rules(net), net)]
    R = e.layers[-1]
    for step in reversed(list(trace)):
        R_in, ledger = rules[step.index].propagate(step, R)
        assert isinstance(ledger, dict)
        row = report[step.index]
        for key, value in ledger.items():
            np.testing.assert_array_equal(_bits(row[key]), _bits(value))
        _same_bits(R_in, e.layers[step.index])
        R = R_in


def test_deferred_ledgers_hold_no_activations():
    net, x = _network_and_input(np.float32)
    _, trace = net.forward_trace(x)
    step = trace[7]                                                # the classifier head (Epsilon)
    R = np.ones_like(step.output)
    R_in, ledger = L.Epsilon(1e-6)._propagate_deferred(step, R)
    assert isinstance(ledger, functools.partial)
    held = [v for a in ledger.args for v in (a if isinstance(a, tuple) else (a,)) if isinstance(v, np.ndarray)]
    assert held and not any(np.shares_memory(v, step.input) or np.shares_memory(v, step.output) for v in held)
    assert ledger().keys() == L.Epsilon(1e-6).propagate(step, R)[1].keys()


def test_rules_that_change_the_fast_path_keep_their_own_ledger():
    net, x = _network_and_input()
    _, trace = net.forward_trace(x)
    step = trace[7]
    R = np.ones_like(step.output)
    with_share = L.Epsilon(1e-6, bias_factor=0.5)
    R_in, ledger = with_share._propagate_deferred(step, R)
    assert isinstance(ledger, dict)
    eager = with_share.propagate(step, R)
    _same_bits(R_in, eager[0])

    class Halved(L.Epsilon):  # a user's rule overriding propagate: explain must run it
        def propagate(self, step, R):
            R_in, ledger = super().propagate(step, R)
            return R_in / 2, ledger
    _same_bits(Halved(1e-6)._propagate_deferred(step, R)[0], L.Epsilon(1e-6).propagate(step, R)[0] / 2)

    class Plain(Inner):
        def _propagate(self, step, R):
            R_in, ledger = super()._propagate(step, R)
            return R_in, dict(ledger, extra=np.zeros(len(R)))
    comp = composites.get("attnlrp", epsilon=1e-9)
    block = trace[3]
    _, led = Plain(comp)._propagate_deferred(block, np.ones_like(block.output))
    assert "extra" in led


def test_an_explanation_with_deferred_ledgers_pickles_and_reports_the_same():
    import pickle
    net, x = _network_and_input(np.float32)
    comp = composites.get("attnlrp", epsilon=1e-6)
    e = L.explain(net, x, composite=comp)
    assert any(callable(ledger) for ledger in e._ledgers)
    again = pickle.loads(pickle.dumps(e))
    assert again.conservation().to_text() == e.conservation().to_text()
    np.testing.assert_array_equal(again.conservation().residual(), e.conservation().residual())


@pytest.mark.parametrize("batch", [1, 16])
def test_step2_on_tokens_asks_the_kernel_for_no_block_sums_and_gives_the_same_bits(batch, monkeypatch):
    layer = L.Linear(64, 128, rng=5, dtype=np.float32)
    layer.bias = np.random.default_rng(6).standard_normal(128).astype(np.float32)
    x = np.random.default_rng(7).standard_normal((batch, 17, 64)).astype(np.float32)
    _, step = layer.forward_trace(x)
    R = np.random.default_rng(8).standard_normal(step.output.shape).astype(np.float32)
    seen, step2 = [], rules_fast.kernels.lrp_step2

    def spy(z, R, mask, epsilon, channels):
        seen.append(channels)
        return step2(z, R, mask, epsilon, channels)
    monkeypatch.setattr(rules_fast.kernels, "lrp_step2", spy)
    for rule in (L.Epsilon(1e-6), L.Gamma(0.25)):  # the one-term path and the general one
        R_in, ledger = rule.propagate(step, R)
        monkeypatch.setattr(rules_fast, "_step2_channels", lambda layer, bias, R: 1 if bias is None else bias.size)
        R_old, ledger_old = rule.propagate(step, R)  # the block sums as before: not used, the same numbers
        monkeypatch.undo()
        monkeypatch.setattr(rules_fast.kernels, "lrp_step2", spy)
        _same_bits(R_in, R_old)
        assert ledger.keys() == ledger_old.keys() and all(np.array_equal(_bits(ledger[k]), _bits(ledger_old[k]))
                                                          for k in ledger)
    assert 1 in seen and 128 in seen and seen[0] == 1

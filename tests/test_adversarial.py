"""The adversarial harness in CI: a few hundred random networks, hostile inputs and rules (see adversarial.py)."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import lrpnumpy as L

import adversarial as A

EXAMPLES = int(os.environ.get("LRPNUMPY_FUZZ_EXAMPLES", "300"))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_promises_hold_on_random_networks_inputs_and_rules(data):
    net, shape = data.draw(A.networks(), label="network")
    x, input_kind, moderate = data.draw(A.inputs(shape, net.dtype), label="input")
    name, run = data.draw(A.methods(x), label="method")
    moderate = moderate and net.fuzz_moderate and "e-320" not in name and "e-50" not in name and "e+39" not in name
    outcome, violations = A.check(net, x, run, moderate)
    assert not violations, (name, input_kind, outcome, violations, repr(net))


GARBAGE = [None, "a", "2", 2.0, 1.7, -1, 0, True, float("nan"), float("inf"), 10 ** 12, [], [1], (1, 2, 3),
           (2, 2), {"a": 1}, np.float64(2.0), np.int64(2), object()]

CONSTRUCTORS = {
    "Linear": (L.Linear, 2), "Conv2d": (L.Conv2d, 3), "MaxPool2d": (L.MaxPool2d, 1), "SumPool2d": (L.SumPool2d, 1),
    "AvgPool2d": (L.AvgPool2d, 1), "BatchNorm2d": (L.BatchNorm2d, 1), "LRN": (L.LRN, 1), "Dropout": (L.Dropout, 0),
    "Softmax": (L.Softmax, 0), "Epsilon": (L.Epsilon, 0), "ZPlus": (L.ZPlus, 0), "AlphaBeta": (L.AlphaBeta, 0),
    "Gamma": (L.Gamma, 0), "ZBox": (L.ZBox, 2), "Flat": (L.Flat, 0), "WSquare": (L.WSquare, 0),
    "Rho": (L.Rho, 0), "WinnerTakesAll": (L.WinnerTakesAll, 0), "Composite": (L.Composite, 0),
    "EpsilonGammaBox": (L.EpsilonGammaBox, 2), "DeepTaylor": (L.DeepTaylor, 2),
    "ToolboxAlphaBeta": (L.rules.ToolboxAlphaBeta, 0), "LRPToolbox": (L.LRPToolbox, 0),
    "GaussianExpert": (L.prototypes.GaussianExpert, 0), "GaussianMixtureExpert": (L.prototypes.GaussianMixtureExpert, 0),
    "PCADecoder": (L.prototypes.PCADecoder, 1), "Job": (L.parallel.Job, 0),
}
VALID = {"Linear": (3, 2), "Conv2d": (1, 2, 3), "ZBox": (0, 1), "EpsilonGammaBox": (0, 1), "DeepTaylor": (0, 1),
         "MaxPool2d": (2,), "SumPool2d": (2,), "AvgPool2d": (2,), "BatchNorm2d": (2,), "LRN": (3,), "PCADecoder": (2,)}


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_constructors_given_garbage_raise_only_lrpnumpy_errors(name):
    """Every argument position (by keyword) filled with every kind of garbage: built, or an LRPError."""
    import inspect
    cls, _ = CONSTRUCTORS[name]
    params = [p for p in inspect.signature(cls).parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
    foreign = []
    for param in params:
        for value in GARBAGE:
            args = dict(zip([p.name for p in params], VALID.get(name, ())))
            args[param.name] = value
            try:
                cls(**args)
            except A.LRPError:
                pass
            except Exception as exc:  # noqa: BLE001 - what the test looks for
                foreign.append((param.name, repr(value)[:30], f"{type(exc).__name__}: {exc}"[:120]))
    assert not foreign, foreign


@settings(max_examples=max(20, EXAMPLES // 3), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_networks_are_batch_invariant(data):
    """A sample's output and relevance, alone and inside a random batch, bit for bit (both backends)."""
    net, shape = data.draw(A.networks(), label="network")
    x, input_kind, _ = data.draw(A.inputs(shape, net.dtype), label="input")
    name, run = data.draw(A.methods(x), label="method")
    violations = A.batch_invariance(net, x, name, run, data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    assert not violations, (name, input_kind, violations, repr(net))

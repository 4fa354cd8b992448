"""The adversarial harness in CI: a few hundred random networks, hostile inputs and rules (see adversarial.py)."""

import os

from hypothesis import HealthCheck, given, settings, strategies as st

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

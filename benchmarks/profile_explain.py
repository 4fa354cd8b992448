"""Where an explanation's time goes: per layer and per LRP step.

    python benchmarks/profile_explain.py [--model lenet5] [--batch 64] [--composite epsilon_plus] [--repeat 20]

Runs ``explain`` (float32, frozen network) with timers around each layer's traced forward pass and,
in the backward sweep, around the rule's forward passes (step 1: z), its backward passes (step 3:
c), the conservation ledger, and the whole rule; what remains of the rule's time is the elementwise
work of steps 2 and 4 (stabilize, s = R / z, R = a * c) and Python.  Medians over ``--repeat`` runs,
in milliseconds; the last line compares the sum of the parts with an untimed explanation.
"""

import argparse
import collections
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import median_time  # noqa: E402

import lrpnumpy as L  # noqa: E402
from lrpnumpy import composites, rules, zoo  # noqa: E402
from lrpnumpy.layers import AffineLayer  # noqa: E402

PARTS = ("forward", "step 1 (z)", "step 3 (c)", "ledger", "steps 2, 4 + rest")


class Timers:
    """Accumulate seconds per (layer index, part) while ``current`` names the layer being explained."""

    def __init__(self):
        self.runs, self.now, self.current, self.inside = [], collections.defaultdict(float), None, set()

    def timed(self, part, fn):
        def wrapper(*args, **kwargs):
            if part in self.inside:  # a subclass calling its base: counted once, outermost
                return fn(*args, **kwargs)
            self.inside.add(part)
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.now[(self.current, part)] += time.perf_counter() - t
                self.inside.discard(part)
        return wrapper


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet5", choices=sorted(zoo.MODELS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--composite", default="epsilon_plus", choices=sorted(composites.REGISTRY))
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    net = zoo.MODELS[args.model](seed=0, dtype=np.float32).freeze()
    x = np.random.default_rng(0).random((args.batch,) + net.input_shape).astype(np.float32)
    comp = composites.get(args.composite, bounds=(0.0, 1.0))
    untimed = median_time(lambda: L.explain(net, x, composite=comp), args.repeat)

    timers = Timers()
    saved = [(AffineLayer, "forward_with_many"), (AffineLayer, "backward_with_many"), (rules, "ledger")]
    originals = [getattr(owner, name) for owner, name in saved]
    AffineLayer.forward_with_many = timers.timed("step 1 (z)", originals[0])
    AffineLayer.backward_with_many = timers.timed("step 3 (c)", originals[1])
    rules.ledger = timers.timed("ledger", originals[2])
    # subclasses that define their own forward_with_many/backward_with_many (Conv2d, Linear) are timed too
    patched = []
    for cls in {type(layer) for layer in net}:
        for name, part in (("forward_with_many", "step 1 (z)"), ("backward_with_many", "step 3 (c)")):
            if name in vars(cls):
                patched.append((cls, name, vars(cls)[name]))
                setattr(cls, name, timers.timed(part, vars(cls)[name]))
    rule_of = {}
    try:
        for _ in range(args.repeat):
            timers.now = collections.defaultdict(float)
            trace = net.forward_trace(x)[1]
            for i, step in enumerate(trace):  # each layer's traced forward pass on its own
                t = time.perf_counter()
                step.layer.apply(step.input)
                timers.now[(i, "forward")] += time.perf_counter() - t
            timers.current = None  # the explanation itself is not attributed to any layer
            exp = L.explain(net, x, composite=comp)
            R = exp.layers[-1]
            for i in reversed(range(len(trace))):
                timers.current = i
                rule = exp.rules[i]
                rule_of[i] = rule
                t = time.perf_counter()
                rule.propagate(trace[i], R)
                timers.now[(i, "rule")] += time.perf_counter() - t
                R = exp.layers[i]
            timers.runs.append(timers.now)
    finally:
        for (owner, name), fn in zip(saved, originals):
            setattr(owner, name, fn)
        for cls, name, fn in patched:
            setattr(cls, name, fn)

    def med(key):
        return 1e3 * float(np.median([run.get(key, 0.0) for run in timers.runs]))

    print(f"{args.model}, batch {args.batch}, {args.composite}, float32 (ms, medians of {args.repeat} runs)")
    print(f"{'layer':44s} {'rule':22s}" + "".join(f"{part:>18s}" for part in PARTS))
    total = collections.Counter()
    for i, layer in enumerate(net):
        rule_ms = med((i, "rule"))
        parts = {"forward": med((i, "forward")), "step 1 (z)": med((i, "step 1 (z)")),
                 "step 3 (c)": med((i, "step 3 (c)")), "ledger": med((i, "ledger"))}
        parts["steps 2, 4 + rest"] = max(0.0, rule_ms - parts["step 1 (z)"] - parts["step 3 (c)"] - parts["ledger"])
        total.update(parts)
        print(f"{repr(layer)[:44]:44s} {repr(rule_of.get(i))[:22]:22s}" +
              "".join(f"{parts[part]:18.3f}" for part in PARTS))
    print(f"{'all layers':67s}" + "".join(f"{total[part]:18.3f}" for part in PARTS))
    print(f"sum of the parts {sum(total.values()):.2f} ms; one explain call untimed {1e3 * untimed:.2f} ms "
          f"(the rest: output relevance, checks, the conservation report's sums)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The demo: explain a small built-in network and print the per-layer conservation table."""

import numpy as np

from . import composites
from .explain import explain
from .zoo import lenet5


def sample_input():
    """A 1x1x28x28 image in [0, 1]: a ring and a bar, drawn without any data file."""
    yy, xx = np.mgrid[:28, :28]
    ring = np.exp(-((np.hypot(yy - 14, xx - 11) - 6) ** 2) / 4)
    bar = np.exp(-((xx - 21) ** 2) / 3) * (np.abs(yy - 14) < 9)
    return np.clip(ring + bar, 0, 1)[None, None]


def run(composite="epsilon_gamma_box", out=print):
    net, x = lenet5(), sample_input()
    e = explain(net, x, composite=composites.get(composite, bounds=(0.0, 1.0)))  # pixels lie in [0, 1]
    out(f"network:\n{net}\n")
    out(f"predicted class {int(e.output.argmax())}, logit {e.output.max():.6f}; composite {composite}\n")
    out(str(e.conservation()))
    out(f"\nsum of input relevance {e.relevance.sum():.10f} of {e.layers[-1].sum():.10f} at the output")
    return e

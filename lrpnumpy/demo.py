"""The demo: explain a small built-in network and print the per-layer conservation table."""

import numpy as np

from . import composites
from .explain import explain
from .layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, Softmax


def small_cnn(seed=0, dtype=np.float64):
    """A seeded LeNet-like network for 1x28x28 input (random He-normal weights, small biases)."""
    rng = np.random.default_rng(seed)
    net = Sequential(
        Conv2d(1, 6, 5, padding=2, rng=rng), ReLU(), MaxPool2d(2),
        Conv2d(6, 16, 5, rng=rng), ReLU(), MaxPool2d(2), Flatten(),
        Linear(400, 120, rng=rng), ReLU(), Linear(120, 84, rng=rng), ReLU(), Linear(84, 10, rng=rng), Softmax(),
        input_shape=(1, 28, 28))
    for layer in net:
        if getattr(layer, "bias", None) is not None:
            layer.bias = rng.normal(scale=0.05, size=layer.bias.shape)
    return net.astype(dtype)


def sample_input():
    """A 1x1x28x28 image in [0, 1]: a ring and a bar, drawn without any data file."""
    yy, xx = np.mgrid[:28, :28]
    ring = np.exp(-((np.hypot(yy - 14, xx - 11) - 6) ** 2) / 4)
    bar = np.exp(-((xx - 21) ** 2) / 3) * (np.abs(yy - 14) < 9)
    return np.clip(ring + bar, 0, 1)[None, None]


def run(composite="epsilon_gamma_box", out=print):
    net, x = small_cnn(), sample_input()
    kwargs = dict(low=0.0, high=1.0) if composite in ("epsilon_gamma_box", "deep_taylor") else {}
    e = explain(net, x, composite=composites.get(composite, **kwargs))
    out(f"network:\n{net}\n")
    out(f"predicted class {int(e.output.argmax())}, logit {e.output.max():.6f}; composite {composite}\n")
    out(str(e.conservation()))
    out(f"\nsum of input relevance {e.relevance.sum():.10f} of {e.layers[-1].sum():.10f} at the output")
    return e

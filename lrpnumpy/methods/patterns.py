r"""PatternNet and PatternAttribution (Kindermans et al., 2018), with patterns fitted from data.

A linear layer ``y = w^T x`` extracts a signal; its weights ``w`` are a *filter*, tuned to cancel
distractors as much as to find the signal, which is why the gradient (``w``) looks noisy.  The
*pattern* ``a`` is the direction the signal takes in the input: with ``x = a y + d`` and the
distractor ``d`` uncorrelated with ``y``, ``a = Cov(x, y) / (w^T Cov(x, y))`` (the linear estimator
``S_a``).  For a layer followed by a ReLU only the positive regime passes on, and the
two-component estimator ``S_{a+-}``'s positive part uses the samples with ``y > 0``:
``a+ = (E+[x y] - E+[x] E+[y]) / w^T (E+[x y] - E+[x] E+[y])``.

PatternNet is the gradient's backward walk, started from the target output ``y``, with every ``w``
replaced by ``a`` (it estimates the signal, ``a y`` for one linear neuron); PatternAttribution
replaces it by ``w * a`` (element-wise), which attributes the output to the signal part of the
input (``w * a * y`` for one linear neuron).  The statistics of a convolution are over every position of every
sample (its patches), gathered with the layer's own weight gradient: ``sum_p y_p x_p`` is the
weight gradient with output gradient ``y``.
"""

import numbers

import numpy as np

from ..errors import RuleParameterError, ShapeError
from ..explain import Explanation, logit_network, onehot
from ..registry import register_method as register
from ..layers import WEIGHTED, ReLU
from ..layers.base import check_array, check_finite
from .gradient import walk


def _feeds_relu(net, i):
    """Whether the output of node ``i`` is read by ReLUs only."""
    readers = [j for j in range(len(net)) if net.names[i] in net.inputs_of(j)]
    return bool(readers) and all(isinstance(net[j], ReLU) for j in readers)


def fit_patterns(model, data, kind="relu", batch_size=256):
    """Fit the patterns of every Linear and Conv2d layer from ``data``.

    Parameters
    ----------
    model : Sequential or Graph
    data : ndarray
        Inputs (N, ...) of the model's dtype, typically the training set.
    kind : "relu" or "linear"
        "relu": the positive-regime estimator ``S_{a+}`` for layers whose output goes into a
        ReLU, the linear estimator ``S_a`` for the others (the logits); "linear": ``S_a`` for all.
    batch_size : int
        Samples per forward pass.

    Returns
    -------
    dict of int to ndarray
        Pattern of each layer (by index in execution order), shaped like its weight.
    """
    net = logit_network(model, data)
    if kind not in ("relu", "linear"):
        raise RuleParameterError(f"fit_patterns kind must be 'relu' or 'linear', got {kind!r}")
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise RuleParameterError(f"fit_patterns batch_size must be an int >= 1, got {batch_size!r}")
    layers = [i for i, layer in enumerate(net) if isinstance(layer, WEIGHTED)]
    if not layers:
        raise ShapeError("fit_patterns needs a network with Linear or Conv2d layers")
    positive = {i: kind == "relu" and _feeds_relu(net, i) for i in layers}
    sums = {i: None for i in layers}
    for start in range(0, len(data), batch_size):
        _, trace = net.forward_trace(data[start:start + batch_size])
        for i in layers:
            step, layer = trace[i], net[i]
            y = layer.forward_with(step.input, layer.weight)  # w^T x, without the bias
            mask = (y > 0).astype(y.dtype) if positive[i] else np.ones_like(y)
            axes = (0,) + tuple(range(2, y.ndim))
            part = (layer.param_grads(y * mask, step)["weight"], layer.param_grads(mask, step)["weight"],
                    (y * mask).sum(axis=axes), mask.sum(axis=axes))
            sums[i] = part if sums[i] is None else tuple(a + b for a, b in zip(sums[i], part))
    patterns = {}
    for i in layers:
        xy, x, y, n = sums[i]
        shape = (-1,) + (1,) * (xy.ndim - 1)
        count = np.maximum(n, 1).reshape(shape)
        cov = xy / count - (x / count) * (y.reshape(shape) / count)
        denom = (net[i].weight * cov).reshape(len(cov), -1).sum(axis=1).reshape(shape)
        ok = (np.abs(denom) > np.finfo(cov.dtype).tiny) & (n.reshape(shape) > 0)
        patterns[i] = np.where(ok, cov / np.where(ok, denom, 1), 0).astype(net[i].weight.dtype)
    return patterns


def _check_patterns(net, patterns):
    if not isinstance(patterns, dict) or not patterns:
        raise ShapeError("patterns must be the dict fit_patterns returns {layer index: array}")
    for i, a in patterns.items():
        layer = net[i] if isinstance(i, numbers.Integral) and 0 <= i < len(net) else None
        if layer is None or getattr(layer, "weight", None) is None:
            raise ShapeError(f"patterns has an entry for {i!r}, which is not a layer with weights")
        check_finite(check_array(a, f"pattern of layer {i}"), f"pattern of layer {i}")
        if a.shape != layer.weight.shape or a.dtype != layer.weight.dtype:
            raise ShapeError(f"the pattern of layer {i} is {a.shape} {a.dtype}, expected the weight's "
                             f"{layer.weight.shape} {layer.weight.dtype}")
    return patterns


def _pattern_walk(model, x, target, patterns, attribution):
    net = logit_network(model, x)
    _check_patterns(net, patterns)

    def visit(step, g):
        a = patterns.get(step.index)
        if a is None:
            return None
        return step.layer.backward_with(g, step.layer.weight * a if attribution else a, step)
    # from the target output y, as the paper writes both: r_out = y, r_in = a r (or (w * a) r)
    return walk(net, x, target, visit, seed=lambda out, t: out * onehot(out, t))[:3]


@register("pattern_net")
def pattern_net(model, x, target=None, patterns=None):
    """PatternNet: the signal in ``x`` that the target output detects; the gradient's backward walk
    with each layer's weights replaced by its pattern (see :func:`fit_patterns`)."""
    g, out, t = _pattern_walk(model, x, target, patterns, attribution=False)
    return Explanation(g, out, t, method="pattern_net")


@register("pattern_attribution")
def pattern_attribution(model, x, target=None, patterns=None):
    """PatternAttribution: the backward walk with each layer's weights replaced by ``w * a``
    (weights times patterns, element-wise): the output attributed to the signal in ``x``."""
    g, out, t = _pattern_walk(model, x, target, patterns, attribution=True)
    return Explanation(g, out, t, method="pattern_attribution")

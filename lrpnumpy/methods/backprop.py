"""Modified backward passes: DeconvNet, guided backpropagation and DeepLIFT.

Each is the gradient's backward walk over the trace with a different rule at the non-linear
layers; every linear layer keeps its own ``backward``.  DeepLIFT keeps two traces of the same
network side by side, one for the reference input and one for the actual input.
"""

import numpy as np

from ..errors import RuleParameterError, UnsupportedLayerError
from ..explain import Explanation, forward_checked, logit_network
from ..registry import register_method as register
from ..layers import MaxPool2d, ReLU
from .gradient import _finite, check_baseline, walk


@register("deconvnet")
def deconvnet(model, x, target=None):
    """DeconvNet (Zeiler & Fergus, 2014): the backward pass with each ReLU passing ``max(g, 0)``.

    The gradient ``g`` at a ReLU's output is rectified and passed on whatever the ReLU's input
    was (max pooling keeps its winners).  Zennit's ``DeconvNet`` composite and Captum's
    ``Deconvolution`` compute the same.
    """
    def visit(step, g):
        return np.maximum(g, 0) if isinstance(step.layer, ReLU) else None
    g, out, t, _ = walk(logit_network(model, x), x, target, visit)
    return Explanation(g, out, t, method="deconvnet")


@register("guided_backprop")
def guided_backprop(model, x, target=None):
    """Guided backpropagation (Springenberg et al., 2015): the gradient, with each ReLU passing
    only positive gradients: ``g * (g > 0) * (a > 0)`` at a ReLU with input ``a``.

    Equal to the gradient wherever no negative gradient reaches a ReLU.  Zennit's
    ``GuidedBackprop`` composite and Captum's ``GuidedBackprop`` compute the same.
    """
    def visit(step, g):
        if isinstance(step.layer, ReLU):
            return np.where((g > 0) & (step.input > 0), g, g.dtype.type(0))
        return None
    g, out, t, _ = walk(logit_network(model, x), x, target, visit)
    return Explanation(g, out, t, method="guided_backprop")


@register("deeplift")
def deeplift(model, x, target=None, baseline=None, eps=1e-10, maxpool="rescale"):
    r"""DeepLIFT with the Rescale rule (Shrikumar et al., 2017).

    ``R = m * (x - baseline)``, with multipliers ``m`` carried back from the target logit:
    through linear layers (``layer.linear``) and layers that only move values (``layer.rearranges``:
    Flatten, Transpose, ...) as the gradient; at an element-wise non-linearity (``layer.elementwise``:
    ReLU, Tanh, Sigmoid, ...) multiplied by ``(y - y_ref) / (a - a_ref)``, or by the derivative at ``a`` where
    ``|a - a_ref| < eps``.  The relevance sums to ``f(x) - f(baseline)`` (completeness) up to
    what those ``eps`` positions carry.

    Parameters
    ----------
    baseline : ndarray, optional
        The reference input; zeros by default.
    eps : float
        Below this difference of a non-linearity's inputs the derivative is used (Captum's 1e-10).
    maxpool : "rescale" or "gradient"
        The rule at max pooling (see Notes): "gradient" passes the multipliers to the actual
        input's winners, as the original DeepLIFT code and, in effect, Captum 0.9.0 do (complete
        when the reference is constant over each pooling window, e.g. a zero input through
        convolutions with biases); "rescale" keeps completeness for any baseline.

    Notes
    -----
    ``maxpool="rescale"`` is the max-pooling rule Captum's DeepLift source describes: with
    ``y = max_window(a)``, ``y_ref`` likewise and
    ``u = max(y, y_ref)``, ``u - y_ref`` goes back to the actual input's winner and ``y - u`` to
    the reference's winner (together ``y - y_ref``), divided by ``a - a_ref`` there.  Where
    windows overlap and two windows pick the same input, lrpnumpy adds their shares; Captum's
    ``max_unpool2d`` keeps one of them.  Measured with Captum 0.9.0 on networks with
    convolutions, ReLUs and max pooling, its DeepLift equals ``maxpool="gradient"`` (to 1e-15),
    not this rule: its hook on the max pool does not change the gradient that reaches the
    layers below (``lrpnumpy.verify`` compares with ``maxpool="gradient"``).
    The reference pass and the actual pass are two traces of the same network.
    """
    net = logit_network(model, x)
    b = check_baseline(x, baseline)
    if not (isinstance(eps, (int, float)) and np.isfinite(eps) and eps >= 0):
        raise RuleParameterError(f"deeplift eps must be a finite number >= 0, got {eps!r}")
    if maxpool not in ("rescale", "gradient"):
        raise RuleParameterError(f"deeplift maxpool must be 'rescale' or 'gradient', got {maxpool!r}")
    with np.errstate(over="ignore", invalid="ignore"):
        _, reference = forward_checked(net, b)

    def visit(step, m):
        layer, ref = step.layer, reference[step.index]
        if layer.elementwise:  # the Rescale rule
            da, dy = step.input - ref.input, step.output - ref.output
            rescale = np.abs(da) >= eps
            return np.where(rescale, m * dy / np.where(rescale, da, 1), layer.backward(m, step))
        if isinstance(layer, MaxPool2d) and maxpool == "rescale":
            top = np.maximum(step.output, ref.output)
            da = step.input - ref.input
            back = layer.backward(m * (top - ref.output), step) + layer.backward(m * (step.output - top), ref)
            rescale = np.abs(da) >= eps
            return np.where(rescale, back / np.where(rescale, da, 1), layer.backward(m, step))
        if layer.linear or layer.rearranges:  # a max pool with maxpool="gradient" too (its gradient, given its winners)
            return None
        raise UnsupportedLayerError(f"deeplift has no rule for {layer!r}; it supports linear layers (1-D and 2-D), "
                                    f"layers that only move values, element-wise activations and max pooling; a "
                                    f"text model is explained from its embedding's output")
    m, out, t, _ = walk(net, x, target, visit)
    with np.errstate(over="ignore", invalid="ignore"):
        relevance = _finite(m * (x - b), "deeplift")
    return Explanation(relevance, out, t, method="deeplift", params=dict(baseline=baseline, eps=eps))

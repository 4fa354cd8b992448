"""Gradient-based explanations: sensitivity, gradient x input, integrated gradients, SmoothGrad.

All explain the target logit (a trailing Softmax is skipped, as in :func:`lrpnumpy.explain`)
and return an array of the input's shape.  The options reproduce Zennit's attributors
exactly when given the same steps and noise.
"""

import numbers

import numpy as np

from .errors import RuleParameterError, ShapeError
from .explain import logit_network, target_onehot
from .layers.base import check_array, check_finite


def _grad(net, x, target):
    out = net.forward(x)
    return net.backward(target_onehot(out, target), param_grads=False)


def gradient(model, x, target=None):
    """Sensitivity: the gradient of the target logit with respect to ``x``."""
    return _grad(logit_network(model, x), x, target)


def gradient_x_input(model, x, target=None):
    """Gradient times input."""
    return gradient(model, x, target) * x


def integrated_gradients(model, x, target=None, n=20, baseline=None, alphas=None):
    r"""Integrated gradients, a Riemann sum along the straight path from ``baseline`` to ``x``.

    ``(x - b) * mean_k grad(b + alpha_k (x - b))`` with ``alpha_k = k / n``, ``k = 1..n``
    (Zennit's ``linspace(1/n, 1, n)``).

    Parameters
    ----------
    n : int
        Number of steps.
    baseline : ndarray, optional
        Zeros by default; shape of ``x``.
    alphas : sequence of float, optional
        The path positions, overriding ``n`` (e.g. to reproduce float32-rounded steps).
    """
    net = logit_network(model, x)
    b = np.zeros_like(x) if baseline is None else check_finite(check_array(baseline, "baseline"), "baseline")
    if b.shape != x.shape:
        raise ShapeError(f"baseline must have the shape of x {x.shape}, got {b.shape}")
    if alphas is None:
        if not (isinstance(n, numbers.Integral) and n >= 1):
            raise RuleParameterError(f"integrated_gradients n must be an int >= 1, got {n!r}")
        alphas = np.linspace(1.0 / n, 1.0, n)
    alphas = np.asarray(alphas, dtype=np.float64)
    total = np.zeros_like(x)
    for alpha in alphas:
        total += _grad(net, b + x.dtype.type(alpha) * (x - b), target) / x.dtype.type(len(alphas))
    return total * (x - b)


def smoothgrad(model, x, target=None, n=20, noise_level=0.1, noise=None, rng=None):
    r"""SmoothGrad: the gradient averaged over noisy copies of ``x``.

    As in Zennit: ``n - 1`` passes with Gaussian noise of standard deviation
    ``noise_level * (max - min)`` of each sample, plus one pass without noise.

    Parameters
    ----------
    noise : ndarray of shape (n - 1, *x.shape), optional
        Standard-normal draws (scaled here by the per-sample std) to use instead of ``rng``.
    rng : None, int or numpy.random.Generator
    """
    net = logit_network(model, x)
    if not (isinstance(n, numbers.Integral) and n >= 1):
        raise RuleParameterError(f"smoothgrad n must be an int >= 1, got {n!r}")
    if noise is None:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        noise = gen.standard_normal((n - 1,) + x.shape).astype(x.dtype)
    if noise.shape != (n - 1,) + x.shape:
        raise ShapeError(f"noise must have shape {(n - 1,) + x.shape}, got {noise.shape}")
    axes = tuple(range(1, x.ndim))
    std = noise_level * (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True))
    total = np.zeros_like(x)
    for k in range(n):
        eps = noise[k] * std if k < n - 1 else 0
        total += _grad(net, x + eps, target) / x.dtype.type(n)
    return total

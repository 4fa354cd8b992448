"""Gradient-based explanations: the gradient, sensitivity, gradient x input, interior and
integrated gradients, SmoothGrad.

All explain the target logit (a trailing Softmax is skipped, as in :func:`lrpnumpy.explain`)
and return an :class:`~lrpnumpy.explain.Explanation`.  Integrated gradients and SmoothGrad
average any explanation method (the gradient by default; ``method=lrpnumpy.explain`` with a
composite gives SmoothGrad of LRP), as Zennit's attributors do.  The options reproduce
Zennit's attributors exactly when given the same steps and noise.
"""

import numbers

import numpy as np

from ..errors import DTypeError, NonFiniteError, ResourceError, RuleParameterError, ShapeError
from ..explain import Explanation, forward_checked, logit_network, onehot, target_classes
from ..registry import register_method as register
from ..layers.base import check_array, check_finite, make_rng
from ..layers.recurrent import tiled_lengths


def walk(net, x, target, visit=None, seed=None):
    """One traced forward pass and one backward walk: ``(value at the input, output, classes, trace)``.

    ``visit(step, grad)`` may replace a layer's backward pass (return None to keep it): the
    modified backward passes (guided backprop, deconvnet, DeepLIFT) are such walks.  The walk
    starts from ``seed(output, classes)`` (default: the one-hot vector of the target classes).
    Overflow is reported as NonFiniteError, running out of memory as ResourceError.
    """
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):  # checked below
            out, trace = forward_checked(net, x)
            t = target_classes(out, target)
            g = trace.backward(onehot(out, t) if seed is None else seed(out, t), visit)
    except MemoryError:
        raise ResourceError(f"not enough memory for the backward pass of an input of shape {x.shape}") from None
    if not np.isfinite(g).all():
        raise NonFiniteError(f"the backward pass overflowed (NaN or infinity) for a finite input: the weights are "
                             f"too large for {x.dtype}")
    return g, out, t, trace


def _gradient(net, x, target):
    """``(gradient of the target logits, output, target classes)``; ``target`` None: the predicted class."""
    return walk(net, x, target)[:3]


@register("gradient")
def gradient(model, x, target=None):
    """Sensitivity: the gradient of the target logit with respect to ``x``."""
    g, out, t = _gradient(logit_network(model, x), x, target)
    return Explanation(g, out, t, method="gradient")


@register("sensitivity")
def sensitivity(model, x, target=None):
    r"""Sensitivity analysis: :math:`R_i = (\partial f / \partial x_i)^2` (Simonyan et al., 2014).

    Its sum over the features is the squared norm of the gradient, not ``f(x)``: it says which
    features make the output change, not what makes it up.
    """
    g, out, t = _gradient(logit_network(model, x), x, target)
    with np.errstate(over="ignore"):
        return Explanation(_finite(g * g, "sensitivity"), out, t, method="sensitivity")


@register("interior_gradients")
def interior_gradients(model, x, target=None, alpha=1.0):
    r"""Interior gradients (Sundararajan et al., 2016): the gradient at the scaled input ``alpha * x``.

    Parameters
    ----------
    alpha : float or sequence of float
        One scale, or several: with several the relevance has shape ``(len(alpha),) + x.shape``
        (all scaled copies go through the network as one batch).

    Notes
    -----
    ``target=None`` explains the class predicted for ``x`` at every scale.
    """
    net = logit_network(model, x)
    scalar = isinstance(alpha, numbers.Real)
    alphas = _alphas([alpha] if scalar else alpha, "interior_gradients alpha")
    with np.errstate(over="ignore", invalid="ignore"):
        out, _ = forward_checked(net, x)
        t = target_classes(out, target)
        scaled = np.concatenate([x * x.dtype.type(a) for a in alphas])
    with tiled_lengths(len(alphas)):  # a recurrent model's sequence lengths, one per copy
        g = _gradient(net, scaled, np.tile(t, len(alphas)))[0]
    g = g.reshape((len(alphas),) + x.shape)
    return Explanation(g[0] if scalar else g, out, t, method="interior_gradients", params=dict(alpha=alpha))


def _alphas(alphas, what):
    """``alphas`` as a non-empty 1-D float64 array of finite numbers (RuleParameterError otherwise)."""
    try:
        a = np.asarray(alphas, dtype=np.float64)
    except (TypeError, ValueError):
        raise RuleParameterError(f"{what} must be numbers, got {alphas!r}") from None
    if a.ndim != 1 or a.size == 0 or not np.isfinite(a).all():
        raise RuleParameterError(f"{what} must be a non-empty 1-D sequence of finite numbers, got {alphas!r}")
    return a


@register("gradient_x_input")
def gradient_x_input(model, x, target=None):
    """Gradient times input."""
    g, out, t = _gradient(logit_network(model, x), x, target)
    with np.errstate(over="ignore"):
        return Explanation(_finite(g * x, "gradient x input"), out, t, method="gradient_x_input")


def _averaged(model, x, target, points, method, kwargs):
    """The mean of ``method``'s relevance over ``points`` (inputs shaped like ``x``), for the class
    ``target`` resolves to at ``x``; returns ``(mean, output at x, classes)``."""
    net = logit_network(model, x)
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are checked, and reported
        out, _ = forward_checked(net, x)
        t = target_classes(out, target)
        total = np.zeros_like(x)
        for point in points:
            if method is None:
                total += _gradient(net, point, t)[0] / x.dtype.type(len(points))
            else:
                r = method(model, point, t, **kwargs)
                total += getattr(r, "relevance", r) / x.dtype.type(len(points))
    return total, out, t


@register("integrated_gradients")
def integrated_gradients(model, x, target=None, n=20, baseline=None, alphas=None, method=None, **kwargs):
    r"""Integrated gradients, a Riemann sum along the straight path from ``baseline`` to ``x``.

    ``(x - b) * mean_k grad(b + alpha_k (x - b))`` with ``alpha_k = k / n``, ``k = 1..n``
    (Zennit's ``linspace(1/n, 1, n)``).

    Parameters
    ----------
    n : int
        Number of steps.
    baseline : ndarray, optional
        Zeros by default; shape and dtype of ``x``.
    alphas : sequence of float, optional
        The path positions, overriding ``n`` (e.g. to reproduce float32-rounded steps).
    method : callable, optional
        ``method(model, x, target, **kwargs) -> Explanation`` averaged along the path instead of
        the gradient (as Zennit's IntegratedGradients attributor with a composite).
    **kwargs
        Passed to ``method``.

    Notes
    -----
    ``target=None`` explains the class predicted for ``x`` at every point of the path.
    """
    x_b = check_baseline(x, baseline)
    if alphas is None:
        if not (isinstance(n, numbers.Integral) and n >= 1):
            raise RuleParameterError(f"integrated_gradients n must be an int >= 1, got {n!r}")
        alphas = np.linspace(1.0 / n, 1.0, n)
    alphas = _alphas(alphas, "integrated_gradients alphas")
    with np.errstate(over="ignore", invalid="ignore"):
        points = [x_b + x.dtype.type(alpha) * (x - x_b) for alpha in alphas]
    mean, out, t = _averaged(model, x, target, points, method, kwargs)
    with np.errstate(over="ignore", invalid="ignore"):
        relevance = _finite(mean * (x - x_b), "integrated gradients")
    return Explanation(relevance, out, t, method="integrated_gradients",
                       params=dict(alphas=alphas, method=_name(method), **kwargs))


def check_baseline(x, baseline):
    check_finite(check_array(x, "x"), "x")
    b = np.zeros_like(x) if baseline is None else check_finite(check_array(baseline, "baseline"), "baseline")
    if b.shape != x.shape:
        raise ShapeError(f"baseline must have the shape of x {x.shape}, got {b.shape}")
    if b.dtype != x.dtype:
        raise DTypeError(f"baseline is {b.dtype} but x is {x.dtype}; convert one of them explicitly")
    return b


@register("smoothgrad")
def smoothgrad(model, x, target=None, n=20, noise_level=0.1, noise=None, rng=None, method=None, stdev=None,
               clean=True, **kwargs):
    r"""SmoothGrad: the gradient (or ``method``'s relevance) averaged over noisy copies of ``x``.

    By default as in Zennit: ``n - 1`` passes with Gaussian noise of standard deviation
    ``noise_level * (max - min)`` of each sample, plus one pass without noise.  Captum's
    ``NoiseTunnel(Saliency)`` with ``nt_type="smoothgrad"`` is ``stdev=s, clean=False``: ``n``
    noisy passes of standard deviation ``s``.

    Parameters
    ----------
    noise : ndarray of shape ``(n - 1, *x.shape)`` (``clean=False``: ``(n, *x.shape)``), optional
        Standard-normal draws (scaled here by the per-sample std) to use instead of ``rng``.
    stdev : float, optional
        The noise's standard deviation itself, instead of ``noise_level`` times each sample's range.
    clean : bool
        Whether one of the ``n`` passes is the input without noise.
    rng : None, int or numpy.random.Generator
    method : callable, optional
        ``method(model, x, target, **kwargs) -> Explanation`` averaged instead of the gradient
        (``method=lrpnumpy.explain, composite=...`` gives SmoothGrad of LRP).
    **kwargs
        Passed to ``method``.
    """
    check_finite(check_array(x, "x"), "x")
    if not (isinstance(n, numbers.Integral) and n >= 1):
        raise RuleParameterError(f"smoothgrad n must be an int >= 1, got {n!r}")
    if not (isinstance(noise_level, numbers.Real) and np.isfinite(noise_level) and noise_level >= 0):
        raise RuleParameterError(f"smoothgrad noise_level must be a finite number >= 0, got {noise_level!r}")
    if stdev is not None and not (isinstance(stdev, numbers.Real) and np.isfinite(stdev) and stdev >= 0):
        raise RuleParameterError(f"smoothgrad stdev must be a finite number >= 0, got {stdev!r}")
    noisy = n - 1 if clean else n
    if noise is None:
        noise = make_rng(rng).standard_normal((noisy,) + x.shape).astype(x.dtype)
    check_finite(check_array(noise, "noise"), "noise")
    if noise.shape != (noisy,) + x.shape:
        raise ShapeError(f"noise must have shape {(noisy,) + x.shape}, got {noise.shape}")
    if noise.dtype != x.dtype:
        raise DTypeError(f"noise is {noise.dtype} but x is {x.dtype}; convert one of them explicitly")
    axes = tuple(range(1, x.ndim))
    std = noise_level * (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True)) if stdev is None \
        else x.dtype.type(stdev)
    with np.errstate(over="ignore", invalid="ignore"):
        points = [x + (noise[k] * std if k < noisy else 0) for k in range(n)]
    mean, out, t = _averaged(model, x, target, points, method, kwargs)
    return Explanation(_finite(mean, "smoothgrad"), out, t, method="smoothgrad",
                       params=dict(n=n, noise_level=noise_level, stdev=stdev, clean=clean, method=_name(method),
                                   **kwargs))


def _finite(relevance, what):
    if not np.isfinite(relevance).all():
        raise NonFiniteError(f"{what} overflowed (NaN or infinity) for a finite input: the input or the weights are "
                             f"too large for {relevance.dtype}")
    return relevance


def _name(method):
    return "gradient" if method is None else getattr(method, "__name__", repr(method))

r"""Simple Taylor decomposition: the first-order expansion of ``f`` at a root point.

``f(x) = f(x~) + sum_i df/dx_i(x~) (x_i - x~_i) + higher order``; at a root ``f(x~) = 0`` the
first-order terms ``R_i = df/dx_i(x~) (x_i - x~_i)`` explain ``f(x)`` up to the higher-order
terms.  For a bias-free piecewise-linear network the origin is a root and, along the segment
to it, the function is linear, so the terms add up to ``f(x)`` exactly (Montavon et al., 2018,
Sec. 4.2).
"""

import numbers

import numpy as np

from ..errors import RuleParameterError, ShapeError
from ..explain import Explanation, forward_finite, logit_network, sample_rows, target_classes
from ..registry import register_method as register
from .gradient import check_baseline, walk


def _logit(net, points, t):
    """The target logits ``f_t`` of ``points`` (one class per sample)."""
    out = forward_finite(net, points)
    return sample_rows(out)[np.arange(len(out)), t]


def _along(start, end, s):
    """``start + s (end - start)`` with one ``s`` per sample."""
    return start + s.reshape((-1,) + (1,) * (start.ndim - 1)).astype(start.dtype) * (end - start)


def _bisect(net, t, start, end, f_start, steps):
    """Per sample, a point on [start, end] where ``f_t`` changes sign (it must differ at the two ends)."""
    lo, hi = np.zeros(len(start)), np.ones(len(start))
    for _ in range(steps):
        mid = (lo + hi) / 2
        f_mid = _logit(net, _along(start, end, mid), t)
        same = np.sign(f_mid) == np.sign(f_start)
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
        f_start = np.where(same, f_mid, f_start)
    return _along(start, end, (lo + hi) / 2)


def find_root(net, x, t, baseline=None, steps=60, max_doublings=20):
    """A point near ``x`` where the target logit is (close to) zero, per sample.

    First along the segment from ``x`` to ``baseline`` (zeros by default), when ``f`` changes
    sign there; otherwise along the gradient, ``x - k f(x) grad / |grad|^2`` with ``k = 1, 2,
    4, ...`` until ``f`` changes sign.  Then ``steps`` bisection steps.  A sample for which
    neither search finds a sign change gets the point with the smallest ``|f|`` it tried.
    """
    b = check_baseline(x, baseline)
    f_x, f_b = _logit(net, x, t), _logit(net, b, t)
    end = b.copy()
    on_segment = np.sign(f_b) != np.sign(f_x)
    if not on_segment.all():
        g = walk(net, x, t)[0]
        norm2 = (sample_rows(g) ** 2).sum(axis=1)
        step = np.where(norm2 > 0, f_x / np.where(norm2 > 0, norm2, 1), 0)
        best, best_f = x.copy(), np.abs(f_x)
        todo = ~on_segment
        for k in range(max_doublings):
            trial = x - (2.0 ** k * step).reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype) * g
            f_t = _logit(net, trial, t)
            found = todo & (np.sign(f_t) != np.sign(f_x))
            end[found] = trial[found]
            closer = todo & ~found & (np.abs(f_t) < best_f)
            best[closer], best_f[closer] = trial[closer], np.abs(f_t)[closer]
            todo &= ~found
            if not todo.any():
                break
        on_segment |= ~todo
        end[todo] = best[todo]
    root = end.copy()
    if on_segment.any():
        root[on_segment] = _bisect(net, t[on_segment], x[on_segment], end[on_segment], f_x[on_segment], steps)
    return root


@register("simple_taylor")
def simple_taylor(model, x, target=None, root="origin", baseline=None, steps=60, delta=1e-6):
    r"""Simple Taylor decomposition at a root point: ``R_i = df/dx_i(root) * (x_i - root_i)``.

    The derivative is the one along the segment from the root towards ``x``: the gradient at
    ``root + delta (x - root)``.  A root is often a kink (at the origin every ReLU of a bias-free
    network sits at 0, where the gradient is 0); just off it, on the segment, a bias-free
    piecewise-linear network has the gradient it has at ``x``, so the terms add up to ``f(x)``.

    Parameters
    ----------
    root : "origin", "search" or ndarray
        The expansion point: zeros; a root searched near ``x`` (see :func:`find_root`: along
        the segment to ``baseline``, else along the gradient); or a given array of ``x``'s
        shape.
    baseline : ndarray, optional
        Where the "search" segment ends (zeros by default).
    steps : int
        Bisection steps of the search.
    delta : float
        How far along the segment the gradient is taken (0: at the root itself).

    Returns
    -------
    Explanation
        ``params`` holds ``root`` (the point used), ``f_root`` (the target logit there, one per
        sample) and ``residual`` (``f(x) - sum R``: the root's value and the higher-order terms).
    """
    net = logit_network(model, x)
    if not (isinstance(steps, numbers.Integral) and steps >= 1):
        raise RuleParameterError(f"simple_taylor steps must be an int >= 1, got {steps!r}")
    if not (isinstance(delta, numbers.Real) and 0 <= delta < 1):
        raise RuleParameterError(f"simple_taylor delta must be a number in [0, 1), got {delta!r}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = forward_finite(net, x)
        t = target_classes(out, target)
        if isinstance(root, str):
            if root not in ("origin", "search"):
                raise RuleParameterError(f"simple_taylor root must be 'origin', 'search' or an array, got {root!r}")
            point = np.zeros_like(x) if root == "origin" else find_root(net, x, t, baseline, steps)
        elif isinstance(root, np.ndarray):
            point = check_baseline(x, root)
        else:
            raise ShapeError(f"simple_taylor root must be 'origin', 'search' or an array of x's shape, got "
                             f"{type(root).__name__}")
        g = walk(net, point + x.dtype.type(delta) * (x - point), t)[0]
        relevance = g * (x - point)
        f_root = _logit(net, point, t)
    f_x = sample_rows(out)[np.arange(len(out)), t]
    residual = f_x - sample_rows(relevance).sum(axis=1)
    return Explanation(relevance, out, t, method="simple_taylor",
                       params=dict(root=point, f_root=f_root, residual=residual, delta=delta,
                                   search=root if isinstance(root, str) else "given"))

"""The tricks the LRP tutorial recommends around any method: the translation trick, sliding
windows over inputs larger than the network's, contrastive explanations, and internal influence
(which neurons of a layer matter for a class, to filter an explanation through them with
``explain(..., mask=...)``)."""

import numbers

import numpy as np

from ..errors import RuleParameterError, ShapeError
from ..explain import Explanation, forward_finite, logit_network, onehot, sample_rows, target_classes
from ..layers.base import check_array, check_finite, pair
from .cam import layer_index
from .gradient import walk


def _relevance(result):
    return getattr(result, "relevance", result)


def shift(x, dy, dx, fill=0.0):
    """``x`` (N, C, H, W) moved down by ``dy`` and right by ``dx`` pixels; what comes in is ``fill``."""
    out = np.full_like(x, fill)
    h, w = x.shape[2:]
    if abs(dy) < h and abs(dx) < w:
        out[:, :, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            x[:, :, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def translation_trick(method, x, shifts, fill=0.0):
    """Explain shifted copies of ``x``, shift each explanation back, and average (Montavon et al., 2018).

    Parameters
    ----------
    method : callable
        ``method(x) -> Explanation`` (or an array), e.g.
        ``lambda v: lrpnumpy.explain(net, v, target=3, composite=...)``; give a fixed ``target``
        so that every copy explains the same class.
    x : ndarray of shape (N, C, H, W)
    shifts : sequence of (int, int)
        Pixel offsets ``(dy, dx)``; ``(0, 0)`` is the unshifted input.
    fill : float
        The value of pixels shifted in at the border.

    Returns
    -------
    Explanation
        The averaged relevance; the other fields from the unshifted explanation when ``(0, 0)``
        is among the shifts, else from the first.
    """
    check_finite(check_array(x, "x"), "x")
    if x.ndim != 4:
        raise ShapeError(f"the translation trick needs images (N, C, H, W), got shape {x.shape}")
    try:
        shifts = [tuple(int(v) for v in s) for s in shifts]
    except (TypeError, ValueError):
        raise RuleParameterError(f"shifts must be pairs of ints (dy, dx), got {shifts!r}") from None
    if not shifts or any(len(s) != 2 for s in shifts):
        raise RuleParameterError(f"shifts must be a non-empty list of pairs (dy, dx), got {shifts!r}")
    total, first = np.zeros_like(x), None
    for dy, dx in shifts:
        e = method(shift(x, dy, dx, fill))
        r = _relevance(e)
        if not isinstance(r, np.ndarray) or r.shape != x.shape:
            raise ShapeError(f"method must return relevance of x's shape {x.shape}, got {getattr(r, 'shape', r)}")
        total += shift(r, -dy, -dx, 0.0)
        if first is None or (dy, dx) == (0, 0):
            first = e
    relevance = total / x.dtype.type(len(shifts))
    if isinstance(first, Explanation):
        return Explanation(relevance, first.output, first.target, method=f"translation_trick({first.method})",
                           params=dict(first.params, shifts=shifts, fill=fill))
    return Explanation(relevance, None, None, method="translation_trick", params=dict(shifts=shifts, fill=fill))


def sliding_window(model, image, window, stride, method, target=None, **kwargs):
    r"""Explain an input larger than the network's by explaining every window of it.

    The windows' target logits add up to ``g(X) = sum_w f(X_w)``, which this explains: the
    relevance of every window is added to the pixels it covers, so a conserving method's
    relevance sums to ``g(X)``.

    Parameters
    ----------
    model : Sequential or Graph
    image : ndarray of shape (N, C, H, W)
    window, stride : int or (int, int)
        The network's input size and the step between windows (windows lie inside the image).
    method : callable
        ``method(model, x, target, **kwargs) -> Explanation`` on a batch of windows, e.g.
        ``lrpnumpy.explain`` (with ``composite=...`` in ``kwargs``) or a method of
        :mod:`lrpnumpy.methods`.
    target : None, int or sequence of int
        The class; None: the class with the largest ``g``.

    Returns
    -------
    Explanation
        ``relevance`` of the image's shape, ``output`` the summed logits ``g`` (N, classes).
    """
    net = logit_network(model, image)
    if image.ndim != 4:
        raise ShapeError(f"sliding_window needs images (N, C, H, W), got shape {image.shape}")
    (wh, ww), (sh, sw) = pair(window, "window"), pair(stride, "stride")
    n, c, h, w = image.shape
    if wh > h or ww > w:
        raise ShapeError(f"window {(wh, ww)} is larger than the image {(h, w)}")
    offsets = [(i, j) for i in range(0, h - wh + 1, sh) for j in range(0, w - ww + 1, sw)]
    windows = np.concatenate([image[:, :, i:i + wh, j:j + ww] for i, j in offsets])  # window-major
    out = forward_finite(net, windows)
    g = out.reshape(len(offsets), n, -1).sum(axis=0)
    t = target_classes(g, target)
    e = method(model, windows, np.tile(t, len(offsets)), **kwargs)
    r = _relevance(e).reshape((len(offsets), n, c, wh, ww))
    relevance = np.zeros_like(image)
    for (i, j), part in zip(offsets, r):
        relevance[:, :, i:i + wh, j:j + ww] += part
    return Explanation(relevance, g, t, method=f"sliding_window({getattr(e, 'method', 'relevance')})",
                       params=dict(kwargs, window=(wh, ww), stride=(sh, sw), windows=offsets))


def contrastive(model, x, target, against, method=None, **kwargs):
    """Relevance for class ``target`` against class ``against``: the difference of the two explanations.

    For LRP (``method=None``: :func:`lrpnumpy.explain` with ``kwargs``) this is the explanation
    of ``z_target - z_against`` (the rules are linear in the output relevance), and the relevance
    sums to that difference where the rules conserve.
    """
    from ..explain import explain
    method = explain if method is None else method
    e_t, e_a = method(model, x, target, **kwargs), method(model, x, against, **kwargs)
    return Explanation(_relevance(e_t) - _relevance(e_a), getattr(e_t, "output", None), getattr(e_t, "target", None),
                       method=f"contrastive({getattr(e_t, 'method', 'relevance')})",
                       params=dict(kwargs, against=against))


def internal_influence(model, data, layer, target, against=None, batch_size=256):
    r"""Internal influence (Leino et al., 2018): the average gradient of a quantity of interest with
    respect to the output of ``layer``, over ``data``.

    The quantity is the logit of class ``target``, or ``z_target - z_against`` (why this class
    rather than that one).

    Parameters
    ----------
    layer : int or str
        Index in execution order or node name.
    batch_size : int
        Samples per backward pass.

    Returns
    -------
    ndarray
        The influence of every neuron of the layer's output (its shape without the batch axis).
        :func:`top_units` picks the most influential channels or neurons, and
        ``explain(..., mask={layer: m})`` explains through them.
    """
    net = logit_network(model, data)
    k = layer_index(net, layer)
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise RuleParameterError(f"batch_size must be an int >= 1, got {batch_size!r}")
    total, seen = 0, {}

    def visit(step, g):
        if step.index == k:
            seen["g"] = g
        return None
    for start in range(0, len(data), batch_size):
        chunk = data[start:start + batch_size]

        def seed(out, t, n=len(chunk)):
            s = onehot(out, t)
            return s if against is None else s - onehot(out, target_classes(out, np.full(n, against)))
        walk(net, chunk, np.full(len(chunk), target) if np.isscalar(target) else target, visit, seed)
        total = total + seen["g"].sum(axis=0)
    return total / len(data)


def top_units(influence, k, by="channel"):
    """The ``k`` most influential channels (mean over positions) or single neurons (flat indices)."""
    influence = np.asarray(influence)
    if by == "channel":
        score = sample_rows(influence).mean(axis=1)
    elif by == "neuron":
        score = influence.ravel()
    else:
        raise RuleParameterError(f"by must be 'channel' or 'neuron', got {by!r}")
    return np.argsort(-score, kind="stable")[:k]


def channel_mask(shape, channels, dtype=np.float64):
    """A mask of shape (1, C, 1, ...) for a layer output of ``shape`` (C, ...) keeping ``channels``."""
    m = np.zeros((1, shape[0]) + (1,) * (len(shape) - 1), dtype)
    m[0, list(channels)] = 1
    return m

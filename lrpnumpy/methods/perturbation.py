"""Occlusion: how the target output changes when patches of the input are replaced."""

import itertools
import math
import numbers

import numpy as np

from ..errors import RuleParameterError, ShapeError
from ..explain import Explanation, forward_finite, logit_network, sample_rows, target_classes
from ..registry import register_method as register
from ..layers.base import pair
from ..layers.recurrent import tiled_lengths


def _positions(size, window, stride, wrap):
    """Window offsets along one axis: Captum's (the last window clipped at the edge) or, with
    ``wrap``, Zennit's (every ``stride`` up to the size, windows wrapping around)."""
    if wrap:
        return list(range(0, size, stride))
    return [k * stride for k in range(math.ceil(max(size - window, 0) / stride) + 1)]


def _mask(shape, offsets, window, wrap):
    """Boolean (H, W) mask of the window at ``offsets``."""
    rows, cols = ([(o + i) % n for i in range(min(w, n))] if wrap else list(range(o, min(o + w, n)))
                  for o, w, n in zip(offsets, window, shape))
    m = np.zeros(shape, bool)
    m[np.ix_(rows, cols)] = True
    return m


@register("occlusion")
def occlusion(model, x, target=None, window=8, stride=8, fill=0.0, occlude="inside", score="difference",
              average=True, wrap=False, batch_size=256):
    """Occlusion analysis: the target logit's change when windows of the input are replaced.

    With the defaults (Captum's ``Occlusion`` with a window spanning all channels): each window
    position's ``f(x) - f(x with the window replaced by fill)`` is given to every pixel under
    it, averaged over the windows that cover the pixel; windows start every ``stride`` pixels,
    and the last one along each axis is clipped at the edge.

    Parameters
    ----------
    window, stride : int or (int, int)
        Window size and step in pixels; a window covers every channel.
    fill : float or ndarray
        What replaces the occluded pixels: a number, or an array of ``x``'s shape (a blurred
        copy, the data mean, ...).
    occlude : "inside" or "outside"
        Replace the window, or everything but the window.
    score : "difference" or "output"
        Give each window ``f(x) - f(occluded)``, or ``f(occluded)`` itself.
    average : bool
        Divide each pixel's sum by the number of windows that cover it (else the plain sum).
    wrap : bool
        Windows at every ``stride`` up to the image size, wrapping around the edge.
    batch_size : int
        Occluded copies that go through the network together (bounds memory).

    Notes
    -----
    Zennit's ``Occlusion`` attributor (default ``occlusion_fn``) is
    ``occlude="outside", score="output", average=False, wrap=True``.
    """
    net = logit_network(model, x)
    if x.ndim == 2:  # token ids (N, T): windows of tokens, replaced by ``fill`` (e.g. a padding id)
        return _token_occlusion(net, x, target, window, stride, fill, occlude, score, average, wrap, batch_size)
    if x.ndim != 4:
        raise ShapeError(f"occlusion needs images (N, C, H, W) or token ids (N, T), got shape {x.shape}")
    (wh, ww), (sh, sw) = pair(window, "occlusion window"), pair(stride, "occlusion stride")
    if occlude not in ("inside", "outside") or score not in ("difference", "output"):
        raise RuleParameterError(f"occlude must be 'inside' or 'outside' and score 'difference' or 'output', got "
                                 f"{occlude!r}, {score!r}")
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise RuleParameterError(f"occlusion batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(fill, np.ndarray):
        if fill.shape != x.shape or fill.dtype != x.dtype or not np.isfinite(fill).all():
            raise ShapeError(f"fill must be a finite array of x's shape {x.shape} and dtype {x.dtype}, got "
                             f"{fill.shape} {fill.dtype}")
        replacement = fill
    elif isinstance(fill, numbers.Real) and np.isfinite(fill):
        replacement = np.full_like(x, fill)
    else:
        raise RuleParameterError(f"fill must be a finite number or an array of x's shape, got {fill!r}")
    n, _, h, w = x.shape
    out = forward_finite(net, x)
    t = target_classes(out, target)
    f_x = sample_rows(out)[np.arange(n), t]
    masks = [_mask((h, w), offsets, (wh, ww), wrap)
             for offsets in itertools.product(_positions(h, wh, sh, wrap), _positions(w, ww, sw, wrap))]
    total, count = np.zeros_like(x), np.zeros((h, w), x.dtype)
    per_chunk = max(1, batch_size // max(n, 1))  # an empty batch: no copies, an empty relevance
    for start in range(0, len(masks), per_chunk):
        chunk = masks[start:start + per_chunk]
        hide = np.stack([m if occlude == "inside" else ~m for m in chunk])[:, None, None]  # (k, 1, 1, H, W)
        copies = np.where(hide, replacement[None], x[None]).reshape((-1,) + x.shape[1:])
        with tiled_lengths(len(chunk)):  # a recurrent model's sequence lengths, one per copy
            scored = forward_finite(net, copies)
        scores = scored.reshape(len(chunk), n, sample_rows(out).shape[1])[:, np.arange(n), t]
        if score == "difference":
            scores = f_x[None] - scores
        for m, s in zip(chunk, scores):
            total += s.reshape(n, 1, 1, 1).astype(x.dtype) * m
            count += m
    relevance = total / np.where(count > 0, count, 1) if average else total
    return Explanation(relevance, out, t, method="occlusion",
                       params=dict(window=(wh, ww), stride=(sh, sw), fill=fill if np.isscalar(fill) else "array",
                                   occlude=occlude, score=score, average=average, wrap=wrap))


def _token_occlusion(net, x, target, window, stride, fill, occlude, score, average, wrap, batch_size):
    """Occlusion of token windows: the ids as a (N, 1, 1, T) image that a Flatten turns back into (N, T)."""
    from ..layers import Flatten, Sequential
    if not isinstance(net, Sequential):
        raise ShapeError(f"occlusion of token ids (N, T) needs a Sequential network, got {type(net).__name__}")
    for name, v in (("window", window), ("stride", stride)):
        if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1):
            raise RuleParameterError(f"occlusion {name} over tokens must be an int >= 1, got {v!r}")
    image = x[:, None, None, :]
    if isinstance(fill, np.ndarray) and fill.shape == x.shape:
        fill = fill[:, None, None, :]
    e = occlusion(Sequential(Flatten(), *net.layers), image, target, (1, window), (1, stride), fill, occlude,
                  score, average, wrap, batch_size)
    e.relevance = e.relevance[:, 0, 0, :]
    return e

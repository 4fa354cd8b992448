"""The metrics other than perturbation curves: continuity, class sensitivity, similarity, the
parameter-randomisation check, context, and the random baseline."""

import numpy as np

from ..errors import RuleParameterError, ShapeError
from ..explanation import forward_finite, logit_network, sample_rows, target_classes
from ..layers.base import make_rng
from .perturbation import _scores


def _relevance(result):
    return getattr(result, "relevance", result)


def continuity(model, method, x, shifts, target=None, **kwargs):
    r"""Explanation continuity (Montavon et al., 2018): ``max ||R(x) - R(x')||_1 / ||x - x'||_2`` over
    the inputs along a path of small translations.

    Parameters
    ----------
    method : callable
        ``method(model, x, target, **kwargs) -> Explanation`` (``lrpnumpy.explain`` with a composite,
        or a method of :mod:`lrpnumpy.methods`).
    shifts : sequence of (int, int)
        The path: translations ``(dy, dx)`` of ``x`` (pixels shifted in are 0), in order.
    target : None, int or sequence of int
        The class explained along the whole path (None: the class predicted for ``x``).

    Returns
    -------
    dict
        ``"continuity"`` (N,): the largest ratio over all pairs of points of the path (``x``
        itself first); ``"f"`` and ``"sum_relevance"`` (N, len(shifts) + 1): the target logit and
        the sum of relevance along the path.
    """
    from ..methods.tricks import shift as translate
    net = logit_network(model, x)
    if x.ndim != 4:
        raise ShapeError(f"continuity needs images (N, C, H, W), got shape {x.shape}")
    try:
        shifts = [(0, 0)] + [tuple(int(v) for v in s) for s in shifts]
    except (TypeError, ValueError):
        raise RuleParameterError(f"shifts must be pairs of ints (dy, dx), got {shifts!r}") from None
    if len(shifts) < 2 or any(len(s) != 2 for s in shifts):
        raise RuleParameterError(f"continuity needs at least one shift (dy, dx), got {shifts[1:]!r}")
    t = target_classes(forward_finite(net, x), target)
    points = [x if s == (0, 0) else translate(x, s[0], s[1]) for s in shifts]
    R = [_relevance(method(model, p, t, **kwargs)) for p in points]
    n = len(x)
    best = np.zeros(n)
    for i in range(len(points)):
        for j in range(i + 1, len(points)):
            dx = np.sqrt((sample_rows(points[i] - points[j]) ** 2).sum(axis=1))
            dr = sample_rows(np.abs(R[i] - R[j])).sum(axis=1)
            best = np.maximum(best, np.where(dx > 0, dr / np.where(dx > 0, dx, 1), 0))
    f = np.stack([_scores(net, p, t, "logit") for p in points], axis=1)
    sums = np.stack([sample_rows(r).sum(axis=1) for r in R], axis=1)
    return {"continuity": best, "f": f, "sum_relevance": sums, "shifts": shifts}


def _cosine(a, b):
    a, b = sample_rows(a), sample_rows(b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.where((na > 0) & (nb > 0), (a * b).sum(axis=1) / np.where(na * nb > 0, na * nb, 1), 0.0)


def class_sensitivity(model, method, x, classes=None, **kwargs):
    """How much explanations of different target classes differ.

    Every class in ``classes`` (default: all) is explained for every sample; the result holds the
    cosine similarity of each pair of explanations, ``similarity`` (N, K, K), and
    ``sensitivity`` (N,) = 1 - the mean similarity over pairs of different classes (0: the
    explanation ignores the class, as for an input-only saliency; near 1: class-specific).
    """
    net = logit_network(model, x)
    k = sample_rows(forward_finite(net, x)).shape[1]
    classes = list(range(k)) if classes is None else [int(c) for c in classes]
    if len(classes) < 2:
        raise RuleParameterError(f"class_sensitivity needs at least two classes, got {classes!r}")
    R = [_relevance(method(model, x, np.full(len(x), c), **kwargs)) for c in classes]
    sim = np.ones((len(x), len(classes), len(classes)))
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            sim[:, i, j] = sim[:, j, i] = _cosine(R[i], R[j])
    off = ~np.eye(len(classes), dtype=bool)
    return {"similarity": sim, "sensitivity": 1 - sim[:, off].mean(axis=1), "classes": classes}


def _ranks(v):
    """Average ranks along the last axis (ties share their mean rank), as Spearman's correlation needs."""
    order = np.argsort(v, axis=-1, kind="stable")
    ranks = np.empty(v.shape)
    np.put_along_axis(ranks, order, np.arange(v.shape[-1], dtype=float)[None].repeat(len(v), 0), axis=-1)
    out = np.empty(v.shape)
    for i in range(len(v)):  # average the ranks of ties
        values, inverse = np.unique(v[i], return_inverse=True)
        sums = np.bincount(inverse, weights=ranks[i])
        counts = np.bincount(inverse)
        out[i] = (sums / counts)[inverse]
    return out


def similarity(a, b, kind="spearman"):
    """Per-sample similarity of two batches of explanations: "spearman" (rank correlation, ties
    averaged), "spearman_abs" (of the absolute values, as Adebayo et al. also report), "pearson" or
    "cosine"."""
    a, b = sample_rows(a).astype(np.float64), sample_rows(b).astype(np.float64)
    if kind in ("spearman", "spearman_abs"):
        if kind == "spearman_abs":
            a, b = np.abs(a), np.abs(b)
        a, b = _ranks(a), _ranks(b)
    elif kind == "cosine":
        return _cosine(a, b)
    elif kind != "pearson":
        raise RuleParameterError(f"similarity must be 'spearman', 'spearman_abs', 'pearson' or 'cosine', got {kind!r}")
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    return _cosine(a, b)


def randomization_check(model, method, x, target=None, order="cascading", similarity_kind="spearman", seed=0,
                        **kwargs):
    """Model parameter randomisation (Adebayo et al., 2018).

    The layers with parameters are randomised from the output down: cascading (each step keeps
    the layers above randomised too) or independently (one layer at a time).  A layer's weights are
    redrawn from a normal distribution with the same mean and standard deviation, its biases
    likewise.  An explanation that depends on what the model learned changes: its similarity to
    the original falls.

    Returns
    -------
    dict
        ``"layers"``: the randomised layers' indices in the order randomised; ``"similarity"``
        (len(layers), N): the similarity (``similarity_kind``, see :func:`similarity`) of each
        explanation to the original one; ``"original"``: the original relevance.
    """
    net = logit_network(model, x)
    if order not in ("cascading", "independent"):
        raise RuleParameterError(f"order must be 'cascading' or 'independent', got {order!r}")
    t = target_classes(forward_finite(net, x), target)
    original = _relevance(method(net, x, t, **kwargs))
    rng = make_rng(seed)
    layers = [i for i in reversed(range(len(net))) if getattr(net[i], "weight", None) is not None]
    current = net
    rows = []
    for i in layers:
        base = current if order == "cascading" else net
        new = base.copy()
        layer = new[i]
        for name in ("weight", "bias"):  # not running statistics
            v = getattr(layer, name, None)
            if v is not None and v.size:
                setattr(layer, name, rng.normal(v.mean(), v.std() if v.size > 1 else abs(v).mean(),
                                                 v.shape).astype(v.dtype))
        rows.append(similarity(original, _relevance(method(new, x, t, **kwargs)), similarity_kind))
        current = new
    return {"layers": layers, "similarity": np.array(rows), "original": original, "order": order}


def context(relevance, region, kind="positive"):
    """The share of relevance outside ``region`` (the slides' "use of context").

    Parameters
    ----------
    relevance : ndarray of shape (N, C, H, W) (or (N, H, W))
    region : boolean ndarray of shape (N, H, W) or (H, W)
        The object's pixels.
    kind : "positive", "absolute" or "signed"
        Which relevance counts: its positive part (default), its magnitude, or as it is.

    Returns
    -------
    ndarray of shape (N,)
        Relevance outside the region over all relevance (0 where there is none).
    """
    r = np.asarray(relevance, dtype=np.float64)
    r = r.sum(axis=1) if r.ndim == 4 else r
    region = np.asarray(region, dtype=bool)
    try:
        region = np.broadcast_to(region, r.shape)
    except ValueError:
        raise ShapeError(f"region of shape {region.shape} does not fit relevance of shape {r.shape}") from None
    if kind == "positive":
        r = np.maximum(r, 0)
    elif kind == "absolute":
        r = np.abs(r)
    elif kind != "signed":
        raise RuleParameterError(f"kind must be 'positive', 'absolute' or 'signed', got {kind!r}")
    total = sample_rows(r).sum(axis=1)
    outside = sample_rows(np.where(region, 0, r)).sum(axis=1)
    return np.where(total != 0, outside / np.where(total != 0, total, 1), 0.0)



def random_relevance(model, x, target=None, rng=0):
    """The random baseline of the method comparisons: standard-normal "relevance" (seeded)."""
    return make_rng(rng).standard_normal(x.shape).astype(x.dtype)

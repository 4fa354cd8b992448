r"""How good is an explanation?  Perturbation curves, continuity, class sensitivity, the
parameter-randomisation check, and the use of context.

* :func:`pixel_flipping` (Bach et al., 2015), :func:`region_perturbation` (Samek et al., 2017) and
  :func:`selectivity` (Montavon et al., 2018) remove features in order of relevance and record the
  target score after each step: a :class:`PerturbationResult` with the curves, their area
  (:meth:`~PerturbationResult.auc`) and the average drop (:meth:`~PerturbationResult.aopc`),
  ``AOPC = 1/(L+1) sum_{k=0}^{L} f(x^(0)) - f(x^(k))``.
* :func:`continuity` (Montavon et al., 2018): ``max ||R(x) - R(x')||_1 / ||x - x'||_2`` over
  slightly translated inputs, with ``f`` and ``sum R`` along the path.
* :func:`class_sensitivity`: how much the explanations of different classes differ.
* :func:`randomization_check` (Adebayo et al., 2018): the similarity of the explanation to itself
  as the model's layers are randomised.
* :func:`context`: the share of relevance outside a region.

The perturbed copies of a batch go through the network together, in chunks of ``batch_size``
inputs, so memory stays bounded; a long run shows a progress bar and, interrupted with Ctrl-C,
returns the steps it finished.

When each step removes few pixels, the perturbation curves do not recompute the network's first,
local layers for every perturbed input: a step's change reaches only the receptive fields of the
pixels it changes, so a convolution adds the convolution of the change and activations and pools
are recomputed where it reaches (:mod:`lrpnumpy.incremental`; ``incremental=True``, the default; the
same scores up to rounding, tested against the full recomputation).
"""

import math
import numbers

import numpy as np

from .errors import NonFiniteError, RuleParameterError, ShapeError
from .explain import forward_finite, logit_network, sample_rows, target_classes
from .incremental import PerturbationPath, plan as incremental_plan
from .layers.base import check_array, check_finite, make_rng
from .progress import bar


class PerturbationResult:
    """The scores of a perturbation experiment.

    Attributes
    ----------
    curves : ndarray of shape (N, L + 1)
        Per sample, the target score of the unperturbed input first, then one per step.
    fractions : ndarray of shape (L + 1,)
        The fraction of features removed after each step (0 first).
    target : ndarray of int, shape (N,)
    params : dict
        The experiment's settings.
    interrupted : bool
        True when the run was stopped (Ctrl-C) before every step was done.
    """

    def __init__(self, curves, fractions, target, params, interrupted=False):
        self.curves, self.fractions, self.target = curves, fractions, target
        self.params, self.interrupted = dict(params), interrupted

    def __repr__(self):
        mean = f"AOPC {self.aopc().mean():.4g}" if len(self.curves) else "no AOPC"
        return (f"PerturbationResult({self.params.get('order')}, {len(self.curves)} samples, "
                f"{self.curves.shape[1] - 1} steps, {mean}{', interrupted' if self.interrupted else ''})")

    def auc(self):
        """Area under each sample's curve over the fraction removed (trapezoidal rule), shape (N,)."""
        c, f = self.curves, self.fractions
        return ((c[:, 1:] + c[:, :-1]) / 2 * np.diff(f)).sum(axis=1)

    def aopc(self):
        """Area over the perturbation curve, ``1/(L+1) sum_k f(x^(0)) - f(x^(k))``, shape (N,)."""
        return (self.curves[:, :1] - self.curves).mean(axis=1)


def _scores(net, x, t, output):
    out = sample_rows(forward_finite(net, x))
    if output == "probability":
        e = np.exp(out - out.max(axis=1, keepdims=True))
        out = e / e.sum(axis=1, keepdims=True)
    return out[np.arange(len(x)), t]


def _fill(x, fill, rng, images):
    """The values removed features are replaced with, for ``x`` in the layout (N, C, positions...)."""
    if isinstance(fill, numbers.Real) and not isinstance(fill, bool):
        if not np.isfinite(fill):
            raise RuleParameterError(f"fill must be finite, got {fill!r}")
        return np.full_like(x, fill)
    if isinstance(fill, np.ndarray):
        return fill  # checked (x's shape and dtype) and moved to x's layout by the caller
    if fill == "mean":  # each sample's per-channel mean
        axes = tuple(range(2, x.ndim))
        return np.broadcast_to(x.mean(axis=axes, keepdims=True), x.shape).copy()
    if fill == "uniform":  # uniform noise over each sample's value range
        axes = tuple(range(1, x.ndim))
        lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
        return (lo + (hi - lo) * make_rng(rng).random(x.shape)).astype(x.dtype)
    if fill == "blur":  # the mean over a 5 x 5 window (edges repeated)
        if not images:
            raise RuleParameterError(f"fill='blur' is a 5 x 5 box blur of images (N, C, H, W); the input has shape "
                                     f"{x.shape} in the layout (N, channels, positions...): choose another fill")
        p = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
        h, w = x.shape[2:]
        return sum(p[:, :, i:i + h, j:j + w] for i in range(5) for j in range(5)) / x.dtype.type(25)
    raise RuleParameterError(f"fill must be a number, an array, 'mean', 'uniform' or 'blur', got {fill!r}")


def _int(v, name, minimum=1, none=False):
    if none and v is None:
        return None
    if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum):
        raise RuleParameterError(f"{name} must be an int >= {minimum}, got {v!r}")
    return int(v)


def channel_axis_of(x, channel_axis="auto"):
    """The axis of ``x`` whose values make up one position (removed together), or None (every value is
    a feature of its own).  "auto": 1 for images (N, C, H, W) and sequences (N, C, L) (lrpnumpy's
    channels-first layout; pass 2 or -1 for (N, T, D)), None for vectors (N, F)."""
    if isinstance(channel_axis, str) and channel_axis == "auto":
        return 1 if x.ndim >= 3 else None
    if channel_axis is None:
        return None
    if isinstance(channel_axis, numbers.Integral) and not isinstance(channel_axis, bool) and \
            -x.ndim < channel_axis < x.ndim and channel_axis % x.ndim != 0:
        return int(channel_axis) % x.ndim
    raise RuleParameterError(f"channel_axis must be 'auto', None or an axis of x other than the batch axis "
                             f"(1..{x.ndim - 1} or -{x.ndim - 1}..-1), got {channel_axis!r} for shape {x.shape}")


class _Layout:
    """Where features sit in ``x``: (N, C, positions...) with the channel axis second (a size-1 axis
    when there is none); ``patch`` groups ``patch`` consecutive positions along every positional axis."""

    def __init__(self, shape, axis, patch):
        self.shape, self.axis = tuple(shape), axis
        if axis is None:
            self.channels, self.space = 1, self.shape[1:]
        else:
            self.channels, self.space = self.shape[axis], self.shape[1:axis] + self.shape[axis + 1:]
        self.grid = tuple(math.ceil(d / patch) for d in self.space)
        self.features = math.prod(self.grid)
        where = np.indices(self.space).reshape(len(self.space), -1) // patch  # () positions: one feature
        self.feature_of = np.ravel_multi_index(tuple(where), self.grid) if self.space else np.zeros(1, np.intp)

    def canonical(self, a):
        """``a`` (N, ...) of x's layout as (N, C, P): channels second, positions flattened."""
        a = a[:, None] if self.axis is None else np.moveaxis(a, self.axis, 1)
        return a.reshape(len(a), self.channels, math.prod(self.space))

    def restore(self, a):
        """(m, C, P) back to x's layout (m, ...)."""
        a = a.reshape((len(a), self.channels) + self.space)
        return a[:, 0] if self.axis is None else np.moveaxis(a, 1, self.axis)


def pixel_flipping(model, x, relevance, target=None, features_per_step=1, steps=None, patch=1, order="morf",
                   fill=0.0, output="logit", rng=None, batch_size=None, progress=None, incremental=True,
                   channel_axis="auto"):
    """Remove features in order of relevance and record the target score after each step.

    Parameters
    ----------
    model : Sequential or Graph
    x : ndarray of shape (N, C, H, W), (N, C, L), (N, T, D) or (N, F)
        Images (features: pixels or patches), sequences (features: positions or segments) or
        vectors (features: the values), or any rank: see ``channel_axis``.
    relevance : ndarray of x's shape
        What the order follows: a feature's relevance is its sum over channels (and patch).
    target : None, int or sequence of int
        The class scored (None: the class predicted for ``x``).
    features_per_step : int
        Features removed at each step.
    steps : int, optional
        Steps taken (default: until every feature is removed).
    patch : int
        Features are ``patch x patch`` squares of a grid over an image, ``patch`` consecutive
        positions of a sequence, ``patch`` consecutive values of a vector (1: each position);
        all channels of a feature are removed together.
    order : "morf", "lerf" or "random"
        Most relevant first, least relevant first, or a random order (``rng``).
    fill : float, ndarray, "mean", "uniform" or "blur"
        What replaces a removed feature: a number, an array of ``x``'s shape, each sample's
        per-channel mean (over the positions), uniform noise over the sample's range (drawn once,
        ``rng``), or (images only) a 5 x 5 box blur of the image.
    output : "logit" or "probability"
        Score the target logit or its softmax probability.
    rng : None, int or numpy.random.Generator
        For ``order="random"`` and ``fill="uniform"``.
    batch_size : int, optional
        Perturbed inputs per forward pass (default 256): bounds memory.
    progress : bool, optional
        A progress bar (default: on a terminal).
    incremental : bool
        Update the first, local layers' outputs where each step's change reaches instead of
        recomputing them (images only; see the module's notes; False recomputes every perturbed
        input).
    channel_axis : "auto", int or None
        The axis whose values make up one position and are removed together: "auto" is 1 for
        images and sequences (lrpnumpy's channels-first layout, (N, C, H, W) and (N, C, L); pass
        ``channel_axis=2`` for (N, T, D)) and None for vectors; None makes every value a feature
        (the other axes after the batch axis are positions).

    Returns
    -------
    PerturbationResult
        An empty batch (N = 0) gives empty curves, of shape (0, steps + 1).
    """
    net = logit_network(model, x)
    check_finite(check_array(relevance, "relevance"), "relevance")
    if relevance.shape != x.shape:
        raise ShapeError(f"relevance must have x's shape {x.shape}, got {relevance.shape}")
    fps, patch = _int(features_per_step, "features_per_step"), _int(patch, "patch")
    steps, batch_size = _int(steps, "steps", none=True), _int(256 if batch_size is None else batch_size, "batch_size")
    if order not in ("morf", "lerf", "random") or output not in ("logit", "probability"):
        raise RuleParameterError(f"order must be 'morf', 'lerf' or 'random' and output 'logit' or 'probability', "
                                 f"got {order!r}, {output!r}")
    if isinstance(fill, np.ndarray):
        check_finite(check_array(fill, "fill"), "fill")
        if fill.shape != x.shape or fill.dtype != x.dtype:
            raise ShapeError(f"fill must have x's shape {x.shape} and dtype {x.dtype}, got {fill.shape} {fill.dtype}")
    rng = make_rng(rng)
    axis = channel_axis_of(x, channel_axis)
    layout = _Layout(x.shape, axis, patch)
    images = x.ndim == 4 and axis == 1
    n, features, feature_of = len(x), layout.features, layout.feature_of
    score = np.zeros((n, features))
    np.add.at(score.T, feature_of, layout.canonical(relevance).sum(axis=1).T.astype(np.float64))
    if order == "random":
        ranking = np.argsort(rng.random(score.shape), axis=1, kind="stable")
    else:
        ranking = np.argsort(-score if order == "morf" else score, axis=1, kind="stable")
    position = np.empty_like(ranking)
    position[np.arange(n)[:, None], ranking] = np.arange(features)[None]
    removed_at = position[:, feature_of] // fps + 1  # (N, positions): the step that removes each position
    total = math.ceil(features / fps)
    steps = total if steps is None else min(steps, total)
    flat = layout.canonical(x)
    values = _fill_values(layout, x, fill, rng, images)
    out = forward_finite(net, x)
    t = target_classes(out, target)
    fractions_all = np.minimum(np.arange(steps + 1) * fps, features) / features
    params = dict(order=order, features_per_step=fps, patch=patch, fill=fill if isinstance(fill, (str, float, int))
                  else "array", output=output, features=features, channel_axis=axis)
    if n == 0:  # an empty batch: no sample, no score, curves of shape (0, steps + 1)
        return PerturbationResult(np.zeros((0, steps + 1)), fractions_all, t, params)
    curves = np.full((n, steps + 1), np.nan)
    curves[:, 0] = _scores(net, x, t, output)
    # a step that removes only pixels already at their fill value leaves a sample's score as it was
    # (a black background filled with black): only the samples a step changes are scored again
    sample, pixel = np.nonzero((values != flat).any(axis=1))
    changes = np.zeros((n, total + 1), bool)
    changes[sample, removed_at[sample, pixel]] = True
    count = incremental_plan(net, x.shape[1:], fps, patch) if incremental and images else 0
    full = net
    if count:  # the first layers follow the path step by step; the rest runs on many inputs at once
        path, net = PerturbationPath(net, x, values, removed_at, steps, count), net[count:]
    stored = np.empty((max(batch_size, n),) + (path.stored if count else x.shape[1:]), x.dtype)
    buffer = path.as_input(stored) if count else stored
    waiting, rows, done, interrupted = [], 0, 0, False  # the (step, samples) pairs whose inputs are in buffer

    def perturbed(k, who):
        """The inputs of samples ``who`` after step ``k``, in x's layout."""
        return layout.restore(np.where((removed_at[who] <= k)[:, None, :], values[who], flat[who]))

    def scored(inputs, classes, pairs):
        """The scores of the path's outputs (or perturbed inputs); an overflow is named by the layer of the
        whole network where it happened (the path's layers do not check, the rest's indices start at 0)."""
        try:
            return _scores(net, inputs, classes, output)
        except NonFiniteError:
            if not count:
                raise
            for k, who in pairs:
                forward_finite(full, perturbed(k, who))  # raises, naming the layer of the whole network
            raise

    def score_waiting():
        scores = scored(buffer[:rows], np.concatenate([t[who] for _, who in waiting]), waiting)
        start = 0
        for k, who in waiting:
            curves[who, k] = scores[start:start + len(who)]
            start += len(who)
        return waiting[-1][0]

    shown = bar(steps, progress, unit="step")

    def finished(k):
        if shown is not None:
            shown.update(k - shown.n)
        return k

    try:
        for k in range(1, steps + 1):
            who = np.flatnonzero(changes[:, k])
            if rows + len(who) > len(stored):
                done, waiting, rows = finished(score_waiting()), [], 0
            if count and rows == 0 and len(who) == n and len(stored) < 2 * n:
                # the step alone fills a batch and changed every sample: score the path's output in place
                curves[:, k] = scored(path.as_input(path.after(k)), t, [(k, who)])
                waiting, done = [], finished(k)
                continue
            if count:
                stored[rows:rows + len(who)] = path.after(k)[who]
            else:
                buffer[rows:rows + len(who)] = perturbed(k, who)
            waiting.append((k, who))
            rows += len(who)
        done = score_waiting() if rows else steps
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if shown is not None:
            finished(done)
            shown.close()
    scored_at = np.where(changes[:, :done + 1], np.arange(done + 1), 0)  # each step's score is that of the
    curves = curves[np.arange(n)[:, None], np.maximum.accumulate(scored_at, axis=1)]  # last step scored
    return PerturbationResult(curves, fractions_all[:done + 1], t, params, interrupted)


def _fill_values(layout, x, fill, rng, images):
    """What each removed value becomes, as (N, C, P) (see :class:`_Layout`)."""
    n, c = len(x), layout.channels
    shaped = layout.canonical(x).reshape((n, c) + layout.space)
    if isinstance(fill, np.ndarray):
        fill = layout.canonical(fill).reshape((n, c) + layout.space)
    return _fill(shaped, fill, rng, images).reshape(n, c, math.prod(layout.space))


def region_perturbation(model, x, relevance, target=None, patch=9, fill="uniform", **kwargs):
    """Region perturbation (Samek et al., 2017): :func:`pixel_flipping` of ``patch x patch`` regions
    (default 9 x 9) replaced by uniform noise, most relevant first."""
    return pixel_flipping(model, x, relevance, target, patch=patch, fill=fill, **kwargs)


def selectivity(model, x, relevance, target=None, patch=4, fill=0.0, **kwargs):
    """Selectivity (Montavon et al., 2018): the target score as patches are removed, most relevant
    first; a good explanation makes the score fall fast, so a small :meth:`~PerturbationResult.auc`
    is better (Quantus's Selectivity uses 8 x 8 patches)."""
    return pixel_flipping(model, x, relevance, target, patch=patch, fill=fill, order="morf", **kwargs)


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
    from .methods.tricks import shift as translate
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


def _perturbation_metric(function, **defaults):
    def run(model, x, R, t, method, options):
        r = function(model, x, R, t, **{**defaults, **options})
        return {"aopc": r.aopc(), "auc": r.auc()}, (r.fractions, r.curves.mean(axis=0))
    return run


def _continuity_metric(model, x, R, t, method, options):
    return {"continuity": continuity(model, method, x, options.get("shifts", [(0, 1), (1, 1), (1, 0)]), t)[
        "continuity"]}, None


def _sensitivity_metric(model, x, R, t, method, options):
    return {"class_sensitivity": class_sensitivity(model, method, x)["sensitivity"]}, None


def _randomization_metric(model, x, R, t, method, options):
    res = randomization_check(model, method, x, t, **options)
    return {"randomization": res["similarity"][-1]}, None  # similarity once every layer is random


#: Metric name -> function(model, x, relevance, target, method, options) -> (columns, curve or None).
METRICS = {
    "pixel_flipping": _perturbation_metric(pixel_flipping),
    "region_perturbation": _perturbation_metric(region_perturbation),
    "selectivity": _perturbation_metric(selectivity),
    "continuity": _continuity_metric,
    "class_sensitivity": _sensitivity_metric,
    "randomization": _randomization_metric,
}


class Comparison:
    """The table :func:`compare` returns: one row per method, one column per metric score (means over
    the samples; ``per_sample`` keeps every value), and the mean curve of each perturbation metric."""

    def __init__(self, rows, per_sample, curves):
        self.rows, self.per_sample, self.curves = rows, per_sample, curves

    def to_dict(self):
        return {"rows": self.rows}

    def to_json(self, path=None):
        import json
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def to_csv(self, path=None):
        columns = list(self.rows[0]) if self.rows else []
        lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in self.rows]
        text = "\n".join(lines) + "\n"
        if path is not None:
            with open(path, "w") as f:
                f.write(text)
        return text

    def __str__(self):
        if not self.rows:
            return "(no rows)"
        columns = list(self.rows[0])
        width = {c: max(len(c), *(len(_cell(r[c])) for r in self.rows)) for c in columns}
        head = "  ".join(f"{c:<{width[c]}}" if c == "method" else f"{c:>{width[c]}}" for c in columns)
        body = ["  ".join(f"{_cell(r[c]):<{width[c]}}" if c == "method" else f"{_cell(r[c]):>{width[c]}}"
                          for c in columns) for r in self.rows]
        return "\n".join([head, "-" * len(head)] + body)

    def plot(self, metric="pixel_flipping"):
        """The mean curve of ``metric`` for every method (a matplotlib figure)."""
        from .viz import _plt
        plt = _plt()
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, curves in self.curves.items():
            if metric in curves:
                fractions, curve = curves[metric]
                ax.plot(fractions, curve, label=name)
        ax.set_xlabel("fraction of features removed")
        ax.set_ylabel("target score")
        ax.set_title(metric.replace("_", " "))
        ax.legend(fontsize="small")
        fig.tight_layout()
        return fig


def _cell(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def compare(model, x, methods, metrics=("pixel_flipping",), target=None, options=None):
    """Score several explanation methods with several metrics on the same inputs: one table.

    Parameters
    ----------
    methods : dict of str to callable
        Name -> ``method(model, x, target) -> Explanation`` (or a relevance array); e.g.
        ``{"lrp": lambda m, v, t: lrpnumpy.explain(m, v, t, composite=...), "gradient":
        lrpnumpy.methods.gradient, "random": random_relevance}``.
    metrics : sequence of str
        Names of :data:`METRICS`: ``pixel_flipping`` and ``region_perturbation`` and ``selectivity``
        (columns ``<metric>_aopc`` and ``<metric>_auc``), ``continuity``, ``class_sensitivity``,
        ``randomization`` (the Spearman similarity once every layer is randomised).
    target : None, int or sequence of int
        The class explained and scored (None: the class predicted for ``x``).
    options : dict of str to dict, optional
        Keyword arguments per metric, e.g. ``{"pixel_flipping": {"features_per_step": 16}}``.

    Returns
    -------
    Comparison
        Printable; ``to_json()``, ``to_csv()``, ``plot(metric)``.
    """
    net = logit_network(model, x)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise RuleParameterError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    if not isinstance(methods, dict) or not methods or not all(callable(m) for m in methods.values()):
        raise RuleParameterError("methods must be a non-empty dict {name: method(model, x, target)}")
    options = dict(options or {})
    if len(x) == 0:
        raise ShapeError(f"x is an empty batch (shape {x.shape}): a comparison reports each metric's mean over "
                         f"the samples, and no samples have no mean; the metrics themselves (pixel_flipping, "
                         f"continuity, ...) return empty per-sample scores")
    t = target_classes(forward_finite(net, x), target)
    rows, per_sample, curves = [], {}, {}
    for name, method in methods.items():
        R = _relevance(method(model, x, t))
        row, values, curves[name] = {"method": name}, {}, {}
        for metric in metrics:
            columns, curve = METRICS[metric](model, x, R, t, method, options.get(metric, {}))
            for column, v in columns.items():
                key = column if metric in ("continuity", "class_sensitivity", "randomization") else \
                    f"{metric}_{column}"
                values[key] = v
                row[key] = float(np.mean(v))
            if curve is not None:
                curves[name][metric] = curve
        rows.append(row)
        per_sample[name] = values
    return Comparison(rows, per_sample, curves)


def roar(make_model, train, test, method, fractions=(0.1, 0.3, 0.5, 0.7, 0.9), explain_model=None, keep=False,
         epochs=5, seed=0, batch_size=256, progress=None, explain="predicted", **fit_options):
    """RemOve And Retrain (Hooker et al., 2019); with ``keep=True``, KeepAndRetrain.

    Every training and test image loses the top ``fraction`` of its pixels by ``method``'s
    ranking of ``explain_model`` (with ``keep``: everything but them), replaced by the training
    set's per-channel mean; a fresh model is trained on the modified training set and its accuracy
    on the modified test set is recorded.  If the removed pixels carried the evidence, accuracy
    falls faster than for a random ranking (``method=random_relevance``).

    Parameters
    ----------
    make_model : callable
        ``make_model(seed) -> network`` with fresh weights (the same architecture each time).
    train, test : (ndarray, ndarray)
        Images (N, C, H, W) and integer labels.
    method : callable
        ``method(model, x, target) -> Explanation`` (or relevance).
    explain : "predicted" or "label"
        The class each image is explained for: the explain model's prediction, or the label.  The
        ranking, and so the mask, depends on it: masks made for the label tell a retrained model
        the label (measured in ``benchmarks/evaluate_methods.py``), which is why the prediction
        is the default.
    fractions : sequence of float in [0, 1]
    explain_model : network, optional
        The trained model whose explanations rank the pixels (default: one trained by
        ``make_model(seed)`` on the unmodified training set).
    keep : bool
        KAR: keep the top fraction and replace the rest.
    epochs, seed, **fit_options
        Passed to :func:`lrpnumpy.train.fit` for every model trained.

    Returns
    -------
    dict
        ``fractions`` and ``accuracy`` (test accuracy of the model retrained at each fraction),
        ``original_accuracy`` (the explain model's on the unmodified test set).
    """
    from . import train as T
    (xtr, ytr), (xte, yte) = train, test
    for a, what in ((xtr, "training images"), (xte, "test images")):
        check_finite(check_array(a, what), what)
        if a.ndim != 4:
            raise ShapeError(f"{what} must be (N, C, H, W), got shape {a.shape}")
    try:
        fractions = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise RuleParameterError(f"fractions must be numbers in [0, 1], got {fractions!r}") from None
    if not fractions or not all(0 <= f <= 1 for f in fractions):
        raise RuleParameterError(f"fractions must be numbers in [0, 1], got {fractions!r}")
    if explain_model is None:
        explain_model = make_model(seed)
        T.fit(explain_model, xtr, ytr, epochs=epochs, seed=seed, progress=progress, **fit_options)
    mean = xtr.mean(axis=(0, 2, 3), keepdims=True)

    if explain not in ("predicted", "label"):
        raise RuleParameterError(f"explain must be 'predicted' or 'label', got {explain!r}")

    def ranks(x, y):  # per image, the rank of each pixel (0: most relevant)
        scores = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            tb = y[i:i + batch_size] if explain == "label" else T.predict(explain_model, xb)
            r = _relevance(method(explain_model, xb, tb))
            scores.append(sample_rows(r.sum(axis=1)))
        order = np.argsort(-np.concatenate(scores), axis=1, kind="stable")
        rank = np.empty_like(order)
        rank[np.arange(len(order))[:, None], order] = np.arange(order.shape[1])[None]
        return rank

    rank_tr, rank_te = ranks(xtr, ytr), ranks(xte, yte)
    n_pixels = xtr.shape[2] * xtr.shape[3]

    def modified(x, rank, fraction):
        top = (rank < round(fraction * n_pixels)).reshape(len(x), 1, *x.shape[2:])
        gone = ~top if keep else top
        return np.where(gone, mean.astype(x.dtype), x)

    accuracy = []
    for fraction in fractions:
        net = make_model(seed)
        T.fit(net, modified(xtr, rank_tr, fraction), ytr, epochs=epochs, seed=seed, progress=progress,
              **fit_options)
        accuracy.append(T.accuracy(net, modified(xte, rank_te, fraction), yte))
    return {"fractions": fractions, "accuracy": accuracy, "keep": keep,
            "original_accuracy": T.accuracy(explain_model, xte, yte)}


def kar(make_model, train, test, method, fractions=(0.1, 0.3, 0.5, 0.7, 0.9), **kwargs):
    """KeepAndRetrain (Hooker et al., 2019): :func:`roar` keeping the top fraction of pixels."""
    return roar(make_model, train, test, method, fractions, keep=True, **kwargs)

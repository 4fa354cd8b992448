"""Perturbation curves: :func:`pixel_flipping`, :func:`region_perturbation`, :func:`selectivity`.

:func:`pixel_flipping` is three parts: the ranking (:func:`removal_order`: which step removes each
feature), the scoring path (:func:`_score_steps`: the scores after each step, in batches, through
the incremental engine where it applies, with a progress bar and Ctrl-C) and the driver that
checks the arguments and puts the two together.
"""

import math
import numbers
from typing import NamedTuple

import numpy as np

from ..errors import NonFiniteError, RuleParameterError, ShapeError
from ..explanation import forward_finite, logit_network, sample_rows, target_classes
from ..incremental import PerturbationPath, plan as incremental_plan
from ..layers.base import check_array, check_finite, make_rng
from ..progress import bar


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
    removed_at, total = removal_order(layout, relevance, order, fps, rng)
    steps = total if steps is None else min(steps, total)
    values = _fill_values(layout, x, fill, rng, images)
    t = target_classes(forward_finite(net, x), target)
    fractions_all = np.minimum(np.arange(steps + 1) * fps, layout.features) / layout.features
    params = dict(order=order, features_per_step=fps, patch=patch, fill=fill if isinstance(fill, (str, float, int))
                  else "array", output=output, features=layout.features, channel_axis=axis)
    if len(x) == 0:  # an empty batch: no sample, no score, curves of shape (0, steps + 1)
        return PerturbationResult(np.zeros((0, steps + 1)), fractions_all, t, params)
    removal = _Removal(layout, layout.canonical(x), values, removed_at, steps, total, fps, patch)
    path_layers = incremental_plan(net, x.shape[1:], fps, patch) if incremental and images else 0
    curves, done, interrupted = _score_steps(net, x, t, output, removal, path_layers, batch_size, progress)
    return PerturbationResult(curves, fractions_all[:done + 1], t, params, interrupted)


def removal_order(layout, relevance, order, features_per_step, rng):
    """The ranking of a perturbation curve: ``(removed_at, total)``.

    A feature's score is its relevance summed over channels and patch; features are ranked by it
    (``"morf"``: highest first, ``"lerf"``: lowest first; ties in index order) or at random
    (``rng``).  ``removed_at`` (N, positions) is the step that removes each position (1 for the
    first ``features_per_step`` features), ``total`` the number of steps that remove them all.
    """
    n, features, feature_of = len(relevance), layout.features, layout.feature_of
    score = np.zeros((n, features))
    np.add.at(score.T, feature_of, layout.canonical(relevance).sum(axis=1).T.astype(np.float64))
    if order == "random":
        ranking = np.argsort(rng.random(score.shape), axis=1, kind="stable")
    else:
        ranking = np.argsort(-score if order == "morf" else score, axis=1, kind="stable")
    position = np.empty_like(ranking)
    position[np.arange(n)[:, None], ranking] = np.arange(features)[None]
    removed_at = position[:, feature_of] // features_per_step + 1  # (N, positions)
    return removed_at, math.ceil(features / features_per_step)


class _Removal(NamedTuple):
    """What a perturbation run removes: in the layout (N, C, P) of :class:`_Layout`."""

    layout: _Layout
    flat: np.ndarray        # x, (N, C, P)
    values: np.ndarray      # what each removed value becomes, (N, C, P)
    removed_at: np.ndarray  # the step that removes each position, (N, P)
    steps: int              # steps taken
    total: int              # steps that remove every feature
    fps: int                # features per step
    patch: int


def _score_steps(net, x, t, output, removal, path_layers, batch_size, progress):
    """The scoring path of a perturbation curve: ``(curves, done, interrupted)``.

    Scores the unperturbed input, then after each step only the samples the step changed (a step
    that removes only values already at their fill value leaves the score as it was), in batches of
    ``batch_size`` perturbed inputs.  With ``path_layers`` > 0 the network's first layers follow
    the removal step by step (:class:`~lrpnumpy.incremental.PerturbationPath`) and only the rest
    runs on the batches.  Ctrl-C stops the run: ``done`` is the last step scored.
    """
    layout, flat, values, removed_at = removal.layout, removal.flat, removal.values, removal.removed_at
    n, steps, count = len(x), removal.steps, path_layers
    curves = np.full((n, steps + 1), np.nan)
    curves[:, 0] = _scores(net, x, t, output)
    # a step that removes only pixels already at their fill value leaves a sample's score as it was
    # (a black background filled with black): only the samples a step changes are scored again
    sample, pixel = np.nonzero((values != flat).any(axis=1))
    changes = np.zeros((n, removal.total + 1), bool)
    changes[sample, removed_at[sample, pixel]] = True
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
    return curves, done, interrupted




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

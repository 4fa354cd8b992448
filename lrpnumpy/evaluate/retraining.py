"""ROAR and KAR (Hooker et al., 2019): retrain without (or with only) the most relevant pixels."""

import numpy as np

from ..errors import RuleParameterError, ShapeError
from ..explanation import sample_rows
from ..layers.base import check_array, check_finite
from .metrics import _relevance


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
    from .. import train as T
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

r"""Word deletion: pixel flipping for text (Arras et al., 2017).

The words of each text are deleted one at a time in order of their relevance, the most relevant
first (``order="most"``: a good explanation makes the score fall fast) or the least relevant first
(``order="least"``: it should stay up), and after every step the target score (the logit of the
class explained) and, with labels, the accuracy are recorded.  A deleted word is replaced by the
padding id (``replace="pad"``), by the unknown-word id (``"unk"``), or removed and the rest of the
text moved up (``"remove"``: the sequence gets shorter; for a bag of words all three are the
same but ``"unk"``, which adds a count of ``<unk>``).  A text of fewer words than the step has
all its words deleted and keeps its last score.

:func:`word_deletion` scores one ranking; :func:`word_deletion_curves` compares LRP, sensitivity
(the squared gradient at the token's embedding) and a random ranking on one model, as the LRP
tutorial's "pixel flipping = word deleting" slides do.

References
----------
.. [1] Arras, Horn, Montavon, Müller, Samek. "What is relevant in a text document?": An
   interpretable machine learning approach. PLoS ONE 12(8), 2017.
.. [2] Arras, Montavon, Müller, Samek. Explaining recurrent neural network predictions in
   sentiment analysis. WASSA workshop, EMNLP 2017.
"""

import numbers

import numpy as np

from ..errors import ParameterError, ShapeError


class WordDeletionResult:
    """The scores of a word-deletion experiment.

    Attributes
    ----------
    curves : ndarray of shape (N, K + 1)
        Per text, the target score before any deletion, then after each of the K steps.
    predicted : ndarray of int, shape (N, K + 1)
        The predicted class at each step.
    target : ndarray of int, shape (N,)
    labels : ndarray of int, shape (N,), or None
    params : dict
    """

    def __init__(self, curves, predicted, target, labels, params):
        self.curves, self.predicted, self.target, self.labels = curves, predicted, target, labels
        self.params = dict(params)

    def __repr__(self):
        return (f"WordDeletionResult({self.params.get('order')} relevant first, {len(self.curves)} texts, "
                f"{self.curves.shape[1] - 1} steps, AOPC {self.aopc().mean():.4g})")

    def score(self):
        """The mean target score at each step, shape (K + 1,)."""
        return self.curves.mean(axis=0)

    def accuracy(self):
        """The fraction of texts classified as their label at each step, shape (K + 1,) (needs labels)."""
        if self.labels is None:
            raise ParameterError("accuracy needs the texts' labels: word_deletion(..., labels=...)")
        return (self.predicted == self.labels[:, None]).mean(axis=0)

    def aopc(self):
        """Area over the curve per text, ``1/(K+1) sum_k f(x^(0)) - f(x^(k))``, shape (N,)."""
        return (self.curves[:, :1] - self.curves).mean(axis=1)


def _order(relevance, lengths, order):
    """Per text, its token positions ranked for deletion (ties: the earlier position first)."""
    t = relevance.shape[1]
    keys = -relevance if order == "most" else relevance.copy()
    keys = np.where(np.arange(t) < lengths[:, None], keys, np.inf)  # padding last, never deleted
    return np.argsort(keys, axis=1, kind="stable")


def _deleted(ids, lengths, ranked, k, replace, pad_id, unk_id):
    """The ids (and lengths) with each text's first ``min(k, length)`` ranked tokens deleted."""
    n, t = ids.shape
    out, new_lengths = ids.copy(), lengths.copy()
    rows = np.arange(n)[:, None]
    take = np.arange(t)[None, :] < np.minimum(k, lengths)[:, None]
    gone = np.zeros_like(ids, dtype=bool)
    gone[np.broadcast_to(rows, ranked.shape)[take], ranked[take]] = True
    if replace in ("pad", "unk"):
        out[gone] = pad_id if replace == "pad" else unk_id
        return out, new_lengths
    out = np.full_like(ids, pad_id)
    for i in range(n):  # "remove": the kept tokens moved up, the sequence shorter (at least one token kept)
        kept = ids[i, :lengths[i]][~gone[i, :lengths[i]]]
        if kept.size == 0:
            kept = np.array([pad_id])
        out[i, :kept.size] = kept
        new_lengths[i] = kept.size
    return out, new_lengths


def word_deletion(model, ids, relevance, lengths=None, target=None, labels=None, order="most", replace="pad",
                  steps=None):
    """Delete each text's words one by one in order of ``relevance`` and record the target score.

    Parameters
    ----------
    model : TextModel or network
        A :class:`~lrpnumpy.text.TextModel` (or a network with text metadata, or a built-in name).
    ids : ndarray of int, shape (N, T)
        The token ids (padded with the padding id 0 after ``lengths``).
    relevance : ndarray of shape (N, T)
        One number per token (e.g. :func:`lrpnumpy.text.token_relevance`); padding is ignored.
    lengths : ndarray of int, shape (N,), optional
        Default: each row up to its first padding id.
    target : None, int or ndarray of int
        The class scored (None: the class predicted before any deletion).
    labels : ndarray of int, shape (N,), optional
        For :meth:`WordDeletionResult.accuracy`.
    order : {"most", "least"}
        Delete the most relevant words first, or the least relevant.
    replace : {"pad", "unk", "zero", "remove"}
        What takes a deleted word's place (see the module docstring).
    steps : int, optional
        Number of deletions (default: the longest text's length).  Ties in relevance: the earlier
        word is deleted first.

    Returns
    -------
    WordDeletionResult
    """
    from ..text import PAD_ID, UNK_ID, _lengths, check_ids, text_model
    tm = model if hasattr(model, "logits") and hasattr(model, "vocabulary") else text_model(model)
    ids = check_ids(ids, len(tm.vocabulary))
    ids = ids[None] if ids.ndim == 1 else ids
    lengths = _lengths(lengths, ids)
    r = np.asarray(relevance, np.float64)
    if r.shape != ids.shape:
        raise ShapeError(f"relevance must hold one number per token, shape {ids.shape}, got {r.shape}")
    if np.isnan(r).any():
        raise ShapeError("relevance holds NaN: a ranking needs comparable numbers")
    if order not in ("most", "least"):
        raise ParameterError(f"order must be 'most' or 'least' (relevant words deleted first), got {order!r}")
    if replace not in ("pad", "unk", "zero", "remove"):
        raise ParameterError(f"replace must be 'pad', 'unk', 'zero' or 'remove', got {replace!r}")
    k_max = int(lengths.max())
    if steps is None:
        steps = k_max
    elif not (isinstance(steps, numbers.Integral) and not isinstance(steps, bool) and steps >= 0):
        raise ParameterError(f"steps must be an int >= 0 or None, got {steps!r}")
    out = tm.logits(ids, lengths)
    t = out.argmax(axis=1) if target is None else np.broadcast_to(np.asarray(target, np.int64), (len(ids),))
    if t.min() < 0 or t.max() >= out.shape[1]:
        raise ShapeError(f"target classes must be in [0, {out.shape[1]}), got {t}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(ids),) or not np.issubdtype(labels.dtype, np.integer):
            raise ShapeError(f"labels must be {len(ids)} ints, got {labels.dtype} of shape {labels.shape}")
    ranked = _order(r, lengths, order)
    rows = np.arange(len(ids))
    curves, predicted = [out[rows, t]], [out.argmax(axis=1)]
    for k in range(1, steps + 1):
        if replace == "zero":
            o = tm.logits(ids, lengths, zero=_deleted(ids, lengths, ranked, k, "pad", -1, -1)[0] == -1)
        else:
            deleted, new_lengths = _deleted(ids, lengths, ranked, k, replace, PAD_ID, UNK_ID)
            o = tm.logits(deleted, new_lengths)
        curves.append(o[rows, t])
        predicted.append(o.argmax(axis=1))
    return WordDeletionResult(np.stack(curves, axis=1).astype(np.float64), np.stack(predicted, axis=1), t,
                              None if labels is None else labels.astype(np.int64),
                              dict(order=order, replace=replace, steps=steps))


def word_deletion_curves(model, ids, lengths=None, labels=None, methods=("lrp", "sensitivity", "random"),
                         order="most", replace="pad", steps=None, target=None, seed=0, **explain_kwargs):
    """:func:`word_deletion` for several rankings of the same texts: ``{method: WordDeletionResult}``.

    ``methods``: ``"lrp"`` (:meth:`~lrpnumpy.text.TextModel.explain_ids`, its keyword arguments
    from ``explain_kwargs``), ``"sensitivity"`` (:meth:`~lrpnumpy.text.TextModel.sensitivity`) and
    ``"random"`` (uniform random numbers from ``seed``), or arrays of per-token relevance by name
    (a dict).  Every method explains and scores the same target.
    """
    from ..text import _lengths, check_ids, text_model
    tm = model if hasattr(model, "logits") and hasattr(model, "vocabulary") else text_model(model)
    ids = check_ids(ids, len(tm.vocabulary))
    ids = ids[None] if ids.ndim == 1 else ids
    lengths = _lengths(lengths, ids)
    if target is None:
        target = tm.logits(ids, lengths).argmax(axis=1)
    items = methods.items() if isinstance(methods, dict) else [(m, None) for m in methods]
    out = {}
    for name, given in items:
        if given is not None:
            r = given
        elif name == "lrp":
            r = tm.explain_ids(ids, lengths, target, **explain_kwargs)[1]
        elif name == "sensitivity":
            r = tm.sensitivity(ids, lengths, target)
        elif name == "random":
            r = np.random.default_rng(seed).random(ids.shape)
        else:
            raise ParameterError(f"unknown method {name!r}: 'lrp', 'sensitivity', 'random', or pass "
                                 f"{{name: relevance}}")
        out[name] = word_deletion(tm, ids, r, lengths, target, labels, order, replace, steps)
    return out


__all__ = ["word_deletion", "word_deletion_curves", "WordDeletionResult"]

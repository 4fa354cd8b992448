"""Text: a tokenizer, a vocabulary, encoding with padding, per-token relevance, and the shipped quotations.

A text model is an lrpnumpy network whose ``meta["text"]`` says how it reads text
(:func:`text_meta`): ``"input": "ids"`` (an :class:`~lrpnumpy.layers.Embedding` first, token ids
of shape (N, T) as floats of the network's dtype) or ``"input": "bag"`` (a bag of words: the count
of each vocabulary entry, shape (N, V)), the vocabulary's tokens, and the length ``T`` sequences
are cut to.  The shipped models (:data:`lrpnumpy.zoo.TEXT_TRAINED`) are such networks.

Per-token relevance: an Embedding model's LRP relevance is already one number per token (the
embedding output's relevance summed over D, :class:`~lrpnumpy.rules.TokenSum`); a bag-of-words
model's relevance of a word is shared equally among the word's occurrences
(:func:`token_relevance`).
"""

import collections
import numbers
import re
from typing import NamedTuple

import numpy as np

from .errors import DatasetError, DTypeError, ModelFormatError, ParameterError, ShapeError

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1

_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")


def tokenize(text):
    """The tokens of ``text``: lowercased words and single punctuation marks, in order.

    A word is a run of letters and digits (any script), with inner apostrophes kept (``don't``,
    ``o'clock``); every other visible character except ``_`` is a token of its own; white space
    and underscores separate tokens and are dropped.

    >>> tokenize("Don't panic -- it's only 42!")
    ["don't", 'panic', '-', '-', "it's", 'only', '42', '!']
    """
    if not isinstance(text, str):
        raise DTypeError(f"tokenize takes a str, got {type(text).__name__}")
    return _TOKEN.findall(text.lower())


class Vocabulary:
    """Tokens and their ids: ``<pad>`` is id 0, ``<unk>`` (every token not in the vocabulary) id 1.

    Build one from texts with :meth:`build`; ``tokens`` lists every entry by id.
    """

    def __init__(self, tokens):
        tokens = list(tokens)
        if tokens[:2] != [PAD, UNK]:
            tokens = [PAD, UNK] + [t for t in tokens if t not in (PAD, UNK)]
        if not all(isinstance(t, str) and t for t in tokens):
            raise ParameterError("a vocabulary's tokens must be non-empty strings")
        if len(set(tokens)) != len(tokens):
            dup = [t for t, c in collections.Counter(tokens).items() if c > 1][:5]
            raise ParameterError(f"a vocabulary's tokens must be distinct; repeated: {dup}")
        self.tokens = tuple(tokens)
        self._ids = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts, min_count=1, max_size=None):
        """The vocabulary of ``texts`` (strings, or lists of tokens): every token seen at least
        ``min_count`` times, the most frequent first (ties alphabetically), at most ``max_size``
        entries in all (the two special ones included)."""
        if not (isinstance(min_count, numbers.Integral) and min_count >= 1):
            raise ParameterError(f"min_count must be an int >= 1, got {min_count!r}")
        if max_size is not None and not (isinstance(max_size, numbers.Integral) and max_size >= 2):
            raise ParameterError(f"max_size must be an int >= 2 (<pad> and <unk> included) or None, got {max_size!r}")
        counts = collections.Counter()
        for text in texts:
            counts.update(tokenize(text) if isinstance(text, str) else text)
        kept = sorted((t for t, c in counts.items() if c >= min_count and t not in (PAD, UNK)),
                      key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max_size - 2]
        return cls(kept)

    def __len__(self):
        return len(self.tokens)

    def __contains__(self, token):
        return token in self._ids

    def __repr__(self):
        return f"Vocabulary({len(self)} tokens)"

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    def id(self, token):
        """The id of ``token`` (``UNK_ID`` when it is not in the vocabulary)."""
        return self._ids.get(token, UNK_ID)

    def ids(self, text):
        """The ids of a text (a string, tokenized) or of a list of tokens."""
        tokens = tokenize(text) if isinstance(text, str) else list(text)
        return [self._ids.get(t, UNK_ID) for t in tokens]

    def encode(self, texts, length=None):
        """``(ids, lengths)``: token ids (N, T) as int64, padded with ``PAD_ID`` after each text's
        tokens, and each text's number of tokens (at most ``length``, where it is cut).

        ``texts``: a string or a list of strings (or of token lists).  T is ``length``, or the
        longest text's number of tokens without it.  A text without any token is refused (an
        empty sequence has nothing to classify or explain).
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ShapeError("encode needs at least one text, got none")
        if length is not None and not (isinstance(length, numbers.Integral) and length >= 1):
            raise ParameterError(f"length must be an int >= 1 or None, got {length!r}")
        seqs = [self.ids(t) for t in texts]
        for i, s in enumerate(seqs):
            if not s:
                raise ShapeError(f"text {i} ({texts[i]!r:.60}) has no tokens: an empty sequence cannot be encoded")
        T = max(map(len, seqs)) if length is None else int(length)
        ids = np.full((len(seqs), T), PAD_ID, np.int64)
        lengths = np.array([min(len(s), T) for s in seqs], np.int64)
        for i, s in enumerate(seqs):
            ids[i, :lengths[i]] = s[:T]
        return ids, lengths

    def decode(self, ids, lengths=None):
        """The tokens of each row of ``ids`` (N, T) (or of one row (T,)): the first ``lengths[n]``
        tokens, or every token before the padding without ``lengths``."""
        a = check_ids(ids, len(self))
        one = a.ndim == 1
        a = a[None] if one else a
        lengths = _lengths(lengths, a)
        out = [[self.tokens[i] for i in row[:n]] for row, n in zip(a, lengths)]
        return out[0] if one else out


def check_ids(ids, size=None):
    """``ids`` as an int64 array of token ids, checked: a rectangular (T,) or (N, T) array of whole
    numbers in ``[0, size)``, with T >= 1."""
    if isinstance(ids, (list, tuple)):
        try:
            ids = np.array(ids)
        except ValueError:
            raise ShapeError("token ids must be a rectangular array (all rows of one length; pad shorter ones "
                             "with Vocabulary.encode), got a ragged list") from None
    if not isinstance(ids, np.ndarray):
        raise DTypeError(f"token ids must be an array or a list of ints, got {type(ids).__name__}")
    if ids.dtype == object:
        raise ShapeError("token ids must be a rectangular array (all rows of one length), got a ragged list")
    if ids.dtype == bool or not (np.issubdtype(ids.dtype, np.integer) or np.issubdtype(ids.dtype, np.floating)):
        raise DTypeError(f"token ids must be integers, got {ids.dtype}")
    if ids.ndim not in (1, 2) or ids.shape[-1] < 1:
        raise ShapeError(f"token ids must have shape (T,) or (N, T) with T >= 1, got shape {ids.shape}")
    if np.issubdtype(ids.dtype, np.floating):
        bad = ~np.isfinite(ids) | (ids != np.round(ids))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DTypeError(f"token ids must be whole numbers, got {ids[where]!r} at {where}")
    if ids.size and (ids.min() < 0 or (size is not None and ids.max() >= size)):
        where = tuple(int(i) for i in np.argwhere((ids < 0) | (ids >= (size or np.inf)))[0])
        raise ShapeError(f"token id {ids[where]!r} at {where} is out of range: ids must be in [0, {size}) "
                         f"(a vocabulary of {size} tokens)")
    return ids.astype(np.int64)


def _lengths(lengths, ids):
    """Each row's length: given (checked against T), or up to the first padding id."""
    n, t = ids.shape
    if lengths is None:
        pad = ids == PAD_ID
        return np.where(pad.any(axis=1), pad.argmax(axis=1), t)
    values = np.asarray(lengths)
    if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
        raise ShapeError(f"lengths must be {n} ints (one per sequence), got {values.dtype} of shape {values.shape}")
    if values.size and (values.min() < 1 or values.max() > t):
        raise ShapeError(f"lengths must be in [1, T = {t}] (no empty sequences, none longer than the ids), got "
                         f"{values.min()}..{values.max()}")
    return values.astype(np.int64)


def bag_of_words(ids, size, lengths=None, dtype=np.float64):
    """The counts (N, size) of every token id in each sequence of ``ids`` (N, T): its first
    ``lengths[n]`` ids (all without ``lengths``); the padding id is never counted (its column
    stays zero, so a word replaced by padding is a word deleted)."""
    ids = check_ids(ids, size)
    ids = ids[None] if ids.ndim == 1 else ids
    n, t = ids.shape
    keep = (np.arange(t) < _lengths(lengths, ids)[:, None]) & (ids != PAD_ID)
    out = np.zeros((n, size), dtype)
    np.add.at(out, (np.repeat(np.arange(n), t)[keep.ravel()], ids.ravel()[keep.ravel()]), 1)
    return out


def token_relevance(relevance, ids, lengths=None):
    """One relevance per token, (N, T), zero on the padding beyond each sequence's length.

    ``relevance``: an :class:`~lrpnumpy.Explanation` or its ``relevance`` array; either (N, T) (a
    model with an Embedding: already per token) or (N, V) (a bag-of-words model: each occurrence
    of a word gets the word's relevance divided by its count in the sequence).  ``ids``: the
    token ids (N, T) the model read (for a bag of words, the ids it was counted from).
    """
    r = np.asarray(getattr(relevance, "relevance", relevance))
    ids = check_ids(ids)
    ids = ids[None] if ids.ndim == 1 else ids
    r = r[None] if r.ndim == 1 else r
    n, t = ids.shape
    lengths = _lengths(lengths, ids)
    inside = np.arange(t) < lengths[:, None]
    if r.shape == ids.shape:
        return np.where(inside, r, 0)
    if r.ndim != 2 or r.shape[0] != n:
        raise ShapeError(f"relevance of shape {r.shape} is neither per token {ids.shape} nor a bag of words (N = {n}, "
                         f"V); expected one of those")
    check_ids(ids, r.shape[1])
    counts = bag_of_words(ids, r.shape[1], lengths)
    rows = np.arange(n)[:, None]
    per = r[rows, ids] / np.maximum(counts[rows, ids], 1)
    return np.where(inside, per, 0)


# ----- text models: how a network reads text -----

class TextModel(NamedTuple):
    """A network with what it needs to read text: its vocabulary, input kind, sequence length, classes."""

    net: object
    vocabulary: Vocabulary
    input: str
    length: int
    classes: tuple

    def inputs(self, texts):
        """``(x, ids, lengths)``: the network's input for ``texts`` (ids as floats of its dtype, or the
        bag of words), the token ids (N, T) and the lengths.  Texts are cut to :attr:`length`
        tokens and padded to the longest one."""
        ids, lengths = self.vocabulary.encode(texts, self.length)
        ids = ids[:, :int(lengths.max())]
        return self.network_input(ids, lengths), ids, lengths

    def network_input(self, ids, lengths=None):
        """The network's input for token ids (N, T): the ids as floats, or the bag of words."""
        ids = check_ids(ids, len(self.vocabulary))
        ids = ids[None] if ids.ndim == 1 else ids
        dtype = self.net.dtype or np.float64
        if self.input == "bag":
            return bag_of_words(ids, len(self.vocabulary), lengths, dtype)
        return ids.astype(dtype)

    def _lengths_context(self, ids, lengths):
        from .layers.recurrent import sequence_lengths
        return sequence_lengths(None if self.input == "bag" or lengths is None else _lengths(lengths, ids))

    def logits(self, ids, lengths=None, batch_size=256, zero=None):
        """The network's output for token ids (N, T) (each sequence read up to its length).

        ``zero``: optional boolean (N, T), tokens whose embedding vector is replaced by zeros (a bag
        of words: tokens not counted)."""
        ids = check_ids(ids, len(self.vocabulary))
        ids = ids[None] if ids.ndim == 1 else ids
        lengths = _lengths(lengths, ids)
        if zero is not None:
            zero = np.asarray(zero, bool)
            if zero.shape != ids.shape:
                raise ShapeError(f"zero must be a boolean mask of the ids' shape {ids.shape}, got {zero.shape}")
        out = []
        for i in range(0, len(ids), batch_size):
            part, n = ids[i:i + batch_size], lengths[i:i + batch_size]
            z = None if zero is None else zero[i:i + batch_size]
            with self._lengths_context(part, n):
                if z is None:
                    out.append(self.net.forward(self.network_input(part, n)))
                elif self.input == "bag":
                    out.append(self.net.forward(self.network_input(np.where(z, PAD_ID, part), n)))
                else:
                    embedded = self.net[0].forward(self.network_input(part, n))
                    embedded[z] = 0
                    out.append(self.net[1:].forward(embedded))
        return np.concatenate(out)

    def explain_ids(self, ids, lengths=None, target=None, **kwargs):
        """``(explanation, per-token relevance)`` of LRP for token ids (N, T); the keyword arguments
        go to :func:`lrpnumpy.explain` (default composite: ``lrp_all`` for a recurrent model,
        ``epsilon_plus`` otherwise)."""
        from . import composites
        from .explain import explain
        from .layers import GRU, LSTM
        ids = check_ids(ids, len(self.vocabulary))
        ids = ids[None] if ids.ndim == 1 else ids
        lengths = _lengths(lengths, ids)
        if "rule" not in kwargs and "composite" not in kwargs:
            recurrent = any(isinstance(layer, (LSTM, GRU)) for layer in self.net)
            kwargs["composite"] = composites.get("lrp_all" if recurrent else "epsilon_plus")
        with self._lengths_context(ids, lengths):
            e = explain(self.net, self.network_input(ids, lengths), target, **kwargs)
        return e, token_relevance(e, ids, lengths)

    def sensitivity(self, ids, lengths=None, target=None):
        """Sensitivity analysis per token, ``||d f_target / d e_t||^2``: the squared gradient of the
        target logit with respect to the token's embedding vector (a bag of words: with respect to
        the count of the token's word), zero on the padding."""
        from .methods import gradient
        ids = check_ids(ids, len(self.vocabulary))
        ids = ids[None] if ids.ndim == 1 else ids
        lengths = _lengths(lengths, ids)
        inside = np.arange(ids.shape[1]) < lengths[:, None]
        x = self.network_input(ids, lengths)
        with self._lengths_context(ids, lengths):
            if self.input == "bag":
                g = gradient(self.net, x, target).relevance
                per = g[np.arange(len(ids))[:, None], ids] ** 2
            else:
                embedded = self.net[0].forward(x)
                t = target if target is not None else self.net.forward(x).argmax(axis=1)
                g = gradient(self.net[1:], embedded, t).relevance
                per = (g ** 2).sum(axis=-1)
        return np.where(inside, per, 0)

    def attribute(self, ids, lengths, method, target=None, **kwargs):
        """``(explanation, per-token relevance)`` of another method (a function of :mod:`lrpnumpy.methods`,
        called ``method(model, x, target, **kwargs)``) on token ids (N, T).

        On a model with an Embedding the ids are piecewise constant (their gradient is zero), so a
        gradient method explains the embedded sequence, the network after its Embedding, and each
        token gets its vector's relevance summed over D (as LRP's :class:`~lrpnumpy.rules.TokenSum`);
        occlusion (``methods.occlusion``) replaces token ids directly.  On a bag of words the method
        explains the counts."""
        from .explain import Explanation
        from .layers import GRU, LSTM
        ids = check_ids(ids, len(self.vocabulary))
        ids = ids[None] if ids.ndim == 1 else ids
        lengths = _lengths(lengths, ids)
        x = self.network_input(ids, lengths)
        occlusion = getattr(method, "__name__", "") == "occlusion"
        if self.input == "bag" or not any(isinstance(layer, (LSTM, GRU)) for layer in self.net):
            model, v = (self.net, x) if self.input == "bag" or occlusion else (self.net[1:], self.net[0].forward(x))
            t = self.net.forward(x).argmax(axis=1) if target is None else target
            e = method(model, v, t, **kwargs)
            r = e.relevance if self.input == "bag" or occlusion else np.asarray(e.relevance).sum(axis=-1)
            return e, token_relevance(r, ids, lengths)
        # a recurrent model: methods batch copies of their input (integrated gradients' path, SmoothGrad's
        # noise), which one lengths per sample cannot follow; so each sequence runs alone, cut to its length
        targets = np.broadcast_to(self.logits(ids, lengths).argmax(axis=1) if target is None else
                                  np.asarray(target), (len(ids),))
        per, outputs = np.zeros(ids.shape), []
        for i, n in enumerate(lengths):
            xi = x[i:i + 1, :n]
            if occlusion:
                e = method(self.net, xi, int(targets[i]), **kwargs)
                per[i, :n] = e.relevance[0]
            else:
                e = method(self.net[1:], self.net[0].forward(xi), int(targets[i]), **kwargs)
                per[i, :n] = np.asarray(e.relevance)[0].sum(axis=-1)
            outputs.append(e.output)
        e = Explanation(per, np.concatenate(outputs), targets.astype(np.int64), method=getattr(method, "__name__", "?"))
        return e, per

    def explain(self, texts, target=None, **kwargs):
        """``(explanation, ids, lengths, per-token relevance)`` of LRP for texts (see :meth:`explain_ids`)."""
        _, ids, lengths = self.inputs(texts)
        e, per = self.explain_ids(ids, lengths, target, **kwargs)
        return e, ids, lengths, per

    def predict(self, texts, batch_size=256):
        """The predicted class of every text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids, lengths = self.vocabulary.encode(texts, self.length)
        return self.logits(ids, lengths, batch_size).argmax(axis=1)


def text_meta(vocabulary, input, length):
    """The ``meta["text"]`` entry that makes a network a text model (saved with it)."""
    if input not in ("ids", "bag"):
        raise ParameterError(f"a text model's input is 'ids' or 'bag', got {input!r}")
    return {"input": input, "vocabulary": list(vocabulary.tokens), "length": int(length)}


def text_model(net):
    """The :class:`TextModel` of a network (or built-in model name) whose metadata describes its text
    input; ModelFormatError for any other model."""
    if isinstance(net, str):
        from .zoo import trained
        net = trained(net)
    spec = (getattr(net, "meta", None) or {}).get("text")
    if not isinstance(spec, dict) or spec.get("input") not in ("ids", "bag") \
            or not isinstance(spec.get("vocabulary"), list) or not isinstance(spec.get("length"), int):
        raise ModelFormatError("not a text model: its metadata has no 'text' entry (input 'ids' or 'bag', a "
                               "vocabulary, a length); text input needs one of lrpnumpy.zoo.TEXT_TRAINED or a "
                               "network saved with meta['text'] = lrpnumpy.text.text_meta(...)")
    classes = tuple(net.meta.get("classes") or ())
    return TextModel(net, Vocabulary(spec["vocabulary"]), spec["input"], spec["length"], classes)


# ----- the shipped quotations -----

class TextDataset(NamedTuple):
    """Texts (a list of str), labels (N,) int64, and the name of each class."""

    texts: list
    labels: np.ndarray
    classes: tuple


def pack_texts(texts):
    """``(bytes, offsets)``: texts as one UTF-8 uint8 array and N + 1 offsets (a compact, pickle-free form)."""
    raw = [t.encode("utf-8") for t in texts]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in raw])]).astype(np.int64)
    return np.frombuffer(b"".join(raw), np.uint8).copy(), offsets


def unpack_texts(data, offsets):
    """The inverse of :func:`pack_texts`."""
    raw = np.asarray(data, np.uint8).tobytes()
    return [raw[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]


def fortunes(split="test"):
    """Quotations from Debian's ``fortunes`` package, labelled by their category (the shipped test split).

    Only the test split ships with lrpnumpy (``lrpnumpy/data/fortunes_test.npz``); the repository's
    ``data/make_text_dataset.py`` makes both splits from ``/usr/share/games/fortunes``.
    """
    from .datasets import shipped_file
    if split != "test":
        raise DatasetError(f"only the test split of the quotations ships with lrpnumpy, got split={split!r}; "
                           f"data/make_text_dataset.py reads both from Debian's fortunes package")
    resource = shipped_file("fortunes_test.npz")
    try:
        with resource.open("rb") as f, np.load(f, allow_pickle=False) as d:
            texts = unpack_texts(d["text"], d["offsets"])
            return TextDataset(texts, d["labels"].astype(np.int64), tuple(str(c) for c in d["classes"]))
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{resource}: the quotations shipped in lrpnumpy/data/ cannot be read ({exc}); "
                           f"reinstall lrpnumpy") from None


__all__ = ["tokenize", "Vocabulary", "check_ids", "bag_of_words", "token_relevance", "TextModel", "text_model",
           "text_meta", "TextDataset", "fortunes", "pack_texts", "unpack_texts", "PAD", "UNK", "PAD_ID", "UNK_ID"]

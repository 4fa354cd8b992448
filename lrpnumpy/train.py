"""Mini-batch training of lrpnumpy networks with their own exact-gradient ``backward``.

``fit(net, x, y, ...)`` minimises the softmax cross-entropy of the logits (a trailing Softmax
is skipped, as in :func:`lrpnumpy.explain`) with :class:`SGD` (momentum) or :class:`Adam`, weight
decay, a seeded shuffle, evaluation on held-out data after each epoch and a tqdm progress bar.
The parameters are updated in place.
"""

import math
import numbers
from typing import NamedTuple

import numpy as np

from .errors import RuleParameterError, ShapeError
from .explain import logit_network
from .layers.recurrent import sequence_lengths
from .progress import bar


def cross_entropy(logits, labels):
    """``(mean loss, gradient with respect to the logits)`` of softmax cross-entropy.

    ``loss = mean_n [logsumexp(z_n) - z_n[y_n]]``; its gradient is ``(softmax(z) - onehot(y)) / N``.
    """
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = float(np.mean(np.log(total[:, 0]) - z[np.arange(n), labels]))
    grad = e / total
    grad[np.arange(n), labels] -= 1
    return loss, grad / logits.dtype.type(n)


class SGD:
    """Stochastic gradient descent with momentum: ``v = m v + g; p -= lr v`` (g includes the weight decay)."""

    def __init__(self, lr=0.01, momentum=0.9, weight_decay=0.0):
        self.lr, self.momentum, self.weight_decay = _positive(lr, "lr"), _fraction(momentum, "momentum"), \
            _nonnegative(weight_decay, "weight_decay")
        self._velocity = {}

    def step(self, params):
        """Update every ``(array, gradient)`` pair in place."""
        for p, g in params:
            g = g + p * p.dtype.type(self.weight_decay) if self.weight_decay else g
            v = self._velocity.get(id(p))
            v = g if v is None else v * v.dtype.type(self.momentum) + g
            self._velocity[id(p)] = v
            p -= p.dtype.type(self.lr) * v


class Adam:
    """Adam (Kingma & Ba, 2015) with L2 weight decay added to the gradient."""

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr, self.eps = _positive(lr, "lr"), _positive(eps, "eps")
        self.betas = tuple(_fraction(b, "betas") for b in betas)
        self.weight_decay = _nonnegative(weight_decay, "weight_decay")
        self._moments, self._t = {}, 0

    def step(self, params):
        """Update every ``(array, gradient)`` pair in place."""
        self._t += 1
        b1, b2 = self.betas
        for p, g in params:
            t = p.dtype.type
            g = g + p * t(self.weight_decay) if self.weight_decay else g
            m, v = self._moments.get(id(p), (np.zeros_like(p), np.zeros_like(p)))
            m = m * t(b1) + g * t(1 - b1)
            v = v * t(b2) + g * g * t(1 - b2)
            self._moments[id(p)] = (m, v)
            m_hat, v_hat = m / t(1 - b1 ** self._t), v / t(1 - b2 ** self._t)
            p -= t(self.lr) * m_hat / (np.sqrt(v_hat) + t(self.eps))


class History(NamedTuple):
    """Per epoch: the mean training loss, and the accuracy on the validation data (None without it)."""

    loss: list
    accuracy: list


def fit(net, x, y, epochs=5, batch_size=64, optimizer=None, validation=None, seed=0, nonpositive_bias=False,
        progress=None, lr_decay=1.0, lengths=None):
    """Train ``net`` in place on ``x`` (inputs) and ``y`` (integer labels).

    Parameters
    ----------
    net : Sequential
        Its parameters must be writable (not frozen).
    x : ndarray
        Inputs, the network's dtype.
    y : ndarray of int, shape (N,)
    epochs, batch_size : int
    optimizer : SGD or Adam, optional
        Default ``Adam()``.
    validation : (x, y) or (x, y, lengths), optional
        Accuracy on it is recorded after every epoch.
    seed : int
        Seeds the shuffling: the same seed and initial weights give the same trained weights.
    nonpositive_bias : bool
        Clip every bias to ``<= 0`` after each step (the LRP tutorial's option: the relevance of a
        ReLU network is then conserved or absorbed, never created, by the biases).
    progress : bool, optional
        A tqdm progress bar; default: only when standard error is a terminal.
    lr_decay : float
        The optimizer's learning rate is multiplied by it after every epoch (1: constant).
    lengths : ndarray of int, shape (N,), optional
        Sequences of different lengths padded to one T: each batch runs inside
        :func:`~lrpnumpy.layers.sequence_lengths` with its samples' lengths, so recurrent layers
        read only each sequence's own tokens.

    Returns
    -------
    History
    """
    logits_net = logit_network(net, x)
    if len(x) == 0:
        raise ShapeError(f"x is an empty batch (shape {x.shape}): there is nothing to train on")
    y = _labels(y, len(x))
    lengths = _sequence_lengths(lengths, len(x))
    epochs, batch_size = _count(epochs, "epochs"), _count(batch_size, "batch_size")
    if not (isinstance(lr_decay, numbers.Real) and 0 < lr_decay <= 1):
        raise RuleParameterError(f"lr_decay must be in (0, 1], got {lr_decay!r}")
    optimizer = Adam() if optimizer is None else optimizer
    if not hasattr(optimizer, "step"):
        raise RuleParameterError(f"optimizer must be an SGD or Adam object, got {optimizer!r}")
    params = [(layer, name) for layer in _unique(logits_net) for name in layer.params
              if getattr(layer, name) is not None]
    for layer, name in params:
        if not getattr(layer, name).flags.writeable:
            raise RuleParameterError(f"{name} of {layer!r} is read-only (a frozen network); train a copy: "
                                     f"net.copy()")
    rng = np.random.default_rng(seed)
    steps = math.ceil(len(x) / batch_size)
    shown = bar(epochs * steps, progress)
    history = History([], [])
    for _ in range(epochs):
        order, total = rng.permutation(len(x)), 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            with sequence_lengths(None if lengths is None else lengths[idx]):
                out, trace = logits_net.forward_trace(x[idx])
                loss, grad = cross_entropy(out, y[idx])
                _, grads = logits_net.backward(grad, trace, param_grads=True)
            optimizer.step(_gathered(trace, grads))
            if nonpositive_bias:
                for layer, name in params:
                    if name == "bias":
                        np.minimum(layer.bias, 0, out=layer.bias)
            total += loss * len(idx)
            if shown is not None:
                shown.update(1)
                shown.set_postfix(loss=f"{loss:.4f}")
        optimizer.lr *= lr_decay
        history.loss.append(total / len(x))
        history.accuracy.append(None if validation is None else
                                accuracy(net, *validation[:2], lengths=(validation[2:] or (None,))[0]))
        if not np.isfinite(history.loss[-1]):
            raise RuleParameterError(f"training diverged (loss {history.loss[-1]}); lower the learning rate")
    if shown is not None:
        shown.close()
    return history


def predict(net, x, batch_size=512, lengths=None):
    """The predicted class of every input (in batches); ``lengths`` as in :func:`fit`."""
    logits_net = logit_network(net, x[:1] if len(x) else x)
    lengths = _sequence_lengths(lengths, len(x))
    out = []
    for i in range(0, len(x), batch_size):
        with sequence_lengths(None if lengths is None else lengths[i:i + batch_size]):
            out.append(logits_net.forward(x[i:i + batch_size]).argmax(axis=1))
    return np.concatenate(out or [np.zeros(0, np.int64)])


def accuracy(net, x, y, batch_size=512, lengths=None):
    """The fraction of inputs whose predicted class is the label."""
    if len(x) == 0:
        raise ShapeError(f"x is an empty batch (shape {x.shape}): no inputs have no accuracy")
    return float(np.mean(predict(net, x, batch_size, lengths) == _labels(y, len(x))))


def _sequence_lengths(lengths, n):
    if lengths is None:
        return None
    values = np.asarray(lengths)
    if values.shape != (n,) or not np.issubdtype(values.dtype, np.integer):
        raise ShapeError(f"lengths must be {n} ints (one per input), got {values.dtype} of shape {values.shape}")
    return values


def _gathered(trace, grads):
    """``(array, gradient)`` per parameter, gradients of a layer used several times added up."""
    out = {}
    for step, g in zip(trace, grads):
        for name, value in g.items():
            if value is None:
                continue
            key = (id(step.layer), name)
            out[key] = (getattr(step.layer, name), value if key not in out else out[key][1] + value)
    return list(out.values())


def _unique(net):
    seen, out = set(), []
    for layer in net:
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append(layer)
    return out


def _labels(y, n):
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ShapeError(f"labels must be {n} integers (one per input), got {y.dtype} of shape {y.shape}")
    return y.astype(np.int64)


def _count(v, name):
    if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1):
        raise RuleParameterError(f"{name} must be an int >= 1, got {v!r}")
    return int(v)


def _positive(v, name):
    if not (isinstance(v, numbers.Real) and np.isfinite(v) and v > 0):
        raise RuleParameterError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def _nonnegative(v, name):
    if not (isinstance(v, numbers.Real) and np.isfinite(v) and v >= 0):
        raise RuleParameterError(f"{name} must be a finite number >= 0, got {v!r}")
    return float(v)


def _fraction(v, name):
    if not (isinstance(v, numbers.Real) and 0 <= v < 1):
        raise RuleParameterError(f"{name} must be in [0, 1), got {v!r}")
    return float(v)


__all__ = ["fit", "SGD", "Adam", "History", "cross_entropy", "accuracy", "predict"]

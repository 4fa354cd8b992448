r"""LRP rules as objects, each written once through the same four steps.

A rule turns the relevance ``R`` at a layer's output into relevance at its
input ``a``.  For an affine layer (:class:`~lrpnumpy.layers.Linear`,
:class:`~lrpnumpy.layers.Conv2d`, sum/average pooling) every rule here is

1. ``z = forward(x_k; W_k, b_k)`` summed over the rule's terms: the forward
   pass of the layer with rule-modified inputs and parameters,
2. ``s = R / stabilize(z, epsilon)``,
3. ``c_k = backward(s; W_k)``: the gradient of the modified layer applied to s,
4. ``R_in = sum_k x_k * c_k``.

A rule only says which terms ``(x_k, W_k, b_k)`` make up ``z``: one for the
epsilon rule, two for ``z+`` (positive and negative inputs), three for
``z^B``.  Rules that mix two denominators (alpha-beta, gamma) do the four
steps once per *group* of terms, with a coefficient (``alpha``, ``-beta``) or
a mask on ``R``.  :func:`four_steps` is the one place where this happens.

Notation: ``x+ = max(x, 0)``, ``x- = min(x, 0)``, likewise ``W+``, ``b+``.
The conventions are Zennit's (Anders et al., 2021), checked numerically
against it by :mod:`lrpnumpy.verify`.

References
----------
.. [1] Montavon, Samek, Müller. "Methods for interpreting and understanding
   deep neural networks". Digital Signal Processing 73 (2018).
.. [2] Montavon, Binder, Lapuschkin, Samek, Müller. "Layer-wise relevance
   propagation: an overview". In: Explainable AI, LNCS 11700 (2019).
"""

import numbers
from typing import NamedTuple, Optional

import numpy as np

from .errors import RuleParameterError, ShapeError, UnsupportedLayerError
from .layers import AffineLayer, Conv2d, GlobalAvgPool2d, Layer, Linear, MaxPool2d, SumPool2d
from .stabilize import stabilize


class Term(NamedTuple):
    """One forward pass ``forward(x; weight, bias)`` of the modified layer."""

    x: np.ndarray
    weight: Optional[np.ndarray]
    bias: Optional[np.ndarray] = None


class Group(NamedTuple):
    """Terms that share one denominator ``z``; their relevance is scaled by ``coef``.

    ``mask`` (boolean, output-shaped) selects the output neurons whose
    relevance this group redistributes; None means all.
    """

    terms: list
    coef: float = 1.0
    mask: Optional[np.ndarray] = None


def four_steps(layer, groups, R, epsilon, ledger=None):
    """Run the four LRP steps for every group of terms and add up the input relevance.

    Terms that share an input array are run together: one forward pass with all their
    weights, one backward pass for all their gradients (the backward pass is linear in
    ``s``, so ``sum_k backward(s_k; W_k)`` is a single pass with the stacked weights).

    Parameters
    ----------
    layer : AffineLayer
        Provides ``forward_many`` / ``backward_many`` / ``bias_view``.
    groups : list of Group
    R : ndarray
        Relevance at the layer's output.
    epsilon : float
        Stabilizer, see :func:`lrpnumpy.stabilize.stabilize`.
    ledger : dict, optional
        Receives per-sample sums of the relevance absorbed by biases
        (``sum s * b``), by the stabilizer (``sum s * (stabilize(z) - z)``) and
        dropped at zero denominators or outside every group's mask.  It
        assumes, as every rule here ensures, that each output neuron's
        group coefficients add up to 1.

    Returns
    -------
    ndarray
        Relevance at the layer's input (shape of the cached input).
    """
    inputs = _terms_by_input(groups)
    biases = [sum(layer.bias_view(b) for _, _, b in g.terms if b is not None) for g in groups]

    # step 1: z = forward pass of the rule-modified layer (each group: the sum of its terms)
    z = list(biases)
    for x, uses in inputs:
        for (gi, _), out in zip(uses, layer.forward_many(x, [w for _, w in uses])):
            z[gi] = z[gi] + out
    zs = [stabilize(zg, epsilon) for zg in z]

    # step 2: s = R / z
    Rg = [R if g.mask is None else np.where(g.mask, R, R.dtype.type(0)) for g in groups]
    s = [Rgi / zsi for Rgi, zsi in zip(Rg, zs)]

    # step 3: c = backward pass of the modified layer applied to s (scaled by the group's coefficient)
    # step 4: R = a * c (summed over the inputs the terms use)
    R_in = sum(x * layer.backward_many([(_scaled(groups[gi].coef, s[gi]), w) for gi, w in uses], x.shape)
               for x, uses in inputs)

    if ledger is not None:
        kept = 0
        for g, zg, zsg, sg, Rgi in zip(groups, z, zs, s, Rg):
            bias = sum(b for _, _, b in g.terms if b is not None)
            if not np.isscalar(bias):  # sum s * b, reduced per output channel first
                _add(ledger, "bias", g.coef * (sg.reshape(len(sg), bias.size, -1).sum(axis=2) @ bias))
            if epsilon > 0:  # every denominator is finite, moved by +-epsilon
                _add(ledger, "stabilizer", g.coef * _sums(sg * (zsg - zg)))
                kept = kept + g.coef * _sums(Rgi)
            else:  # no stabilizer; zero denominators (inf after stabilize) pass nothing on
                kept = kept + g.coef * _sums(np.where(np.isfinite(zsg), Rgi, 0))
        _add(ledger, "dropped", _sums(R) - kept)
    return R_in


def _scaled(coef, s):
    return s if coef == 1 else s * s.dtype.type(coef)


def _terms_by_input(groups):
    """``[(x, [(group index, weight), ...]), ...]``: the terms grouped by their input array (identity)."""
    inputs = []
    for gi, g in enumerate(groups):
        for x, w, _ in g.terms:
            uses = next((u for xx, u in inputs if xx is x), None)
            if uses is None:
                inputs.append((x, [(gi, w)]))
            else:
                uses.append((gi, w))
    return inputs


def _sums(v):
    v = np.asarray(v)
    return v.reshape(v.shape[0], -1).sum(axis=1)


def _add(ledger, key, value):
    ledger[key] = ledger.get(key, 0) + value


def _check_epsilon(epsilon, name="epsilon"):
    if not (isinstance(epsilon, numbers.Real) and np.isfinite(epsilon) and epsilon >= 0):
        raise RuleParameterError(f"{name} must be a finite number >= 0, got {epsilon!r}")
    return float(epsilon)


def _pos(v):
    return None if v is None else np.maximum(v, 0)


def _neg(v):
    return None if v is None else np.minimum(v, 0)


def _sign_split(layer):
    """``(W+, W-, b+, b-)`` of the layer, cached while it is frozen."""
    W, b = layer.weight, layer.bias
    return layer.derived("sign-split", lambda: (_pos(W), _neg(W), _pos(b), _neg(b)))


def _split(a):
    """``(a+, a-)``, with ``a-`` None when it is all zero (as after a ReLU): its terms vanish."""
    if a.min() >= 0:
        return a, None  # a+ is a itself: no copy, and passes on a share one forward pass
    return np.maximum(a, 0), np.minimum(a, 0)


def _terms(*terms):
    """Drop terms whose input is None (known to be zero)."""
    return [Term(*t) for t in terms if t[0] is not None]


class Rule:
    """Base class.  ``relevance(layer, a, R, ledger)`` returns the input relevance."""

    def relevance(self, layer, a, R, ledger=None):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self):
        return hash(repr(self))


class AffineRule(Rule):
    """A rule given by groups of terms on an affine layer, run through :func:`four_steps`."""

    epsilon = 0.0
    needs_weight = True

    def groups(self, layer, a):
        raise NotImplementedError

    def relevance(self, layer, a, R, ledger=None):
        if not isinstance(layer, AffineLayer):
            raise UnsupportedLayerError(f"{self!r} applies to affine layers (Linear, Conv2d, pooling), "
                                        f"not to {layer!r}")
        if self.needs_weight and layer.weight is None:
            raise UnsupportedLayerError(f"{self!r} needs a layer with weights; {layer!r} has none "
                                        f"(use Norm() or Epsilon() on pooling layers)")
        return four_steps(layer, self.groups(layer, a), R, self.epsilon, ledger)


class Epsilon(AffineRule):
    r"""The epsilon rule: ``R_in = x * W^T [R / stabilize(W x + b)]``.

    Parameters
    ----------
    epsilon : float, optional
        Stabilizer, ``>= 0`` (Zennit's default 1e-6).
    """

    needs_weight = False

    def __init__(self, epsilon=1e-6):
        self.epsilon = _check_epsilon(epsilon)

    def groups(self, layer, a):
        return [Group(_terms((a, layer.weight, layer.bias)))]


class LRP0(Epsilon):
    """The plain z-rule (LRP-0): the epsilon rule with ``epsilon = 0``.

    Neurons with ``z = 0`` pass no relevance on (reported as dropped).
    """

    def __init__(self):
        self.epsilon = 0.0

    def __repr__(self):
        return "LRP0()"


class ZPlus(AffineRule):
    r"""The ``z+`` rule: ``z = W+ x+ + W- x- + b+``,
    ``R_in = x+ * W+^T [R/z] + x- * W-^T [R/z]``.
    """

    def __init__(self, epsilon=1e-6):
        self.epsilon = _check_epsilon(epsilon)

    def groups(self, layer, a):
        ap, an = _split(a)
        Wp, Wn, bp, _ = _sign_split(layer)
        return [Group(_terms((ap, Wp, bp), (an, Wn, None)))]


class AlphaBeta(AffineRule):
    r"""The alpha-beta rule: ``alpha`` times z+ relevance minus ``beta`` times z- relevance.

    ``zp = W+ x+ + W- x- + b+`` and ``zn = W- x+ + W+ x- + b-``;
    ``R_in = alpha (x+ W+^T[R/zp] + x- W-^T[R/zp]) - beta (x+ W-^T[R/zn] + x- W+^T[R/zn])``.

    Parameters
    ----------
    alpha, beta : float
        ``alpha - beta`` must be 1 and both ``>= 0``.

    Raises
    ------
    RuleParameterError
        Otherwise.
    """

    def __init__(self, alpha=2.0, beta=1.0, epsilon=1e-6):
        for name, v in (("alpha", alpha), ("beta", beta)):
            if not (isinstance(v, numbers.Real) and np.isfinite(v) and v >= 0):
                raise RuleParameterError(f"AlphaBeta {name} must be a finite number >= 0, got {v!r}")
        if abs(alpha - beta - 1) > 1e-12:
            raise RuleParameterError(f"AlphaBeta needs alpha - beta = 1 (conservation), got alpha={alpha!r}, "
                                     f"beta={beta!r}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.epsilon = _check_epsilon(epsilon)

    def groups(self, layer, a):
        ap, an = _split(a)
        Wp, Wn, bp, bn = _sign_split(layer)
        groups = [Group(_terms((ap, Wp, bp), (an, Wn, None)), self.alpha)]
        if self.beta:
            groups.append(Group(_terms((ap, Wn, bn), (an, Wp, None)), -self.beta))
        return groups


class Gamma(AffineRule):
    r"""The gamma rule: favour positive contributions by ``gamma``.

    ``Wp = W + gamma W+``, ``Wn = W + gamma W-`` (biases alike).  Where the
    original ``z = W x + b`` is positive, ``zpos = Wp x+ + Wn x- + bp`` is the
    denominator; where it is negative, ``zneg = Wn x+ + Wp x- + bn``; neurons
    with ``z = 0`` pass nothing on.
    """

    def __init__(self, gamma=0.25, epsilon=1e-6):
        if not (isinstance(gamma, numbers.Real) and np.isfinite(gamma) and gamma >= 0):
            raise RuleParameterError(f"Gamma gamma must be a finite number >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.epsilon = _check_epsilon(epsilon)

    def groups(self, layer, a):
        ap, an = _split(a)
        W, b = layer.weight, layer.bias
        g = W.dtype.type(self.gamma)

        def modified():
            bp, bn = (None, None) if b is None else (b + g * _pos(b), b + g * _neg(b))
            return W + g * _pos(W), W + g * _neg(W), bp, bn
        Wp, Wn, bp, bn = layer.derived(("gamma", self.gamma), modified)
        # the sign of the original z = W a + b picks the branch; forward() already computed it
        z = layer.output if (layer.input is a and layer.output is not None) else layer.forward_with(a, W, b)
        return [Group(_terms((ap, Wp, bp), (an, Wn, None)), mask=z > 0),
                Group(_terms((ap, Wn, bn), (an, Wp, None)), mask=z < 0)]


class ZBox(AffineRule):
    r"""The ``z^B`` rule for input bounded by ``low <= x <= high``.

    ``z = (W x + b) - (W+ l + b+) - (W- h + b-)``;
    ``R_in = x W^T g - l W+^T g - h W-^T g`` with ``g = R / z``.  Padding
    counts as 0 for ``l`` and ``h`` too.

    Parameters
    ----------
    low, high : float or ndarray
        Bounds, broadcastable to the layer's input; ``low <= high``.
    """

    def __init__(self, low, high, epsilon=1e-6):
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise RuleParameterError("ZBox bounds must be finite")
        try:
            bad = np.broadcast_arrays(low, high)
        except ValueError as exc:
            raise RuleParameterError(f"ZBox low {low.shape} and high {high.shape} do not broadcast") from exc
        if (bad[0] > bad[1]).any():
            raise RuleParameterError(f"ZBox needs low <= high everywhere, got low={_short(low)}, "
                                     f"high={_short(high)}")
        self.low, self.high = low, high
        self.epsilon = _check_epsilon(epsilon)

    def __repr__(self):
        return f"ZBox(low={_short(self.low)}, high={_short(self.high)}, epsilon={self.epsilon!r})"

    def _bound(self, v, a):
        try:
            return np.broadcast_to(v.astype(a.dtype), a.shape)
        except ValueError as exc:
            raise ShapeError(f"ZBox bound of shape {v.shape} does not broadcast to the input {a.shape}") from exc

    def groups(self, layer, a):
        W, b = layer.weight, layer.bias
        low, high = self._bound(self.low, a), self._bound(self.high, a)
        Wp, Wn, bp, bn = _sign_split(layer)
        # -(W+ l + b+) - (W- h + b-) as forward passes of the negated bounds.
        return [Group(_terms((a, W, b), (-low, Wp, None if b is None else -bp),
                             (-high, Wn, None if b is None else -bn)))]


def _short(v):
    v = np.asarray(v)
    return repr(float(v)) if v.ndim == 0 else f"array{v.shape}"


class Flat(AffineRule):
    r"""The flat rule: ``R_in = 1^T [R / z]`` with ``z = 1 . 1`` (all weights 1, no bias).

    Every input in a neuron's receptive field gets an equal share; at padded
    borders the share counts the in-bounds taps only.
    """

    needs_weight = False

    def __init__(self, epsilon=1e-6):
        self.epsilon = _check_epsilon(epsilon)

    def groups(self, layer, a):
        ones = None if layer.weight is None else layer.derived("ones", lambda: np.ones_like(layer.weight))
        return [Group(_terms((np.ones_like(a), ones, None)))]


class WSquare(AffineRule):
    r"""The ``w^2`` rule: ``z = W^2 1 + b^2``, ``R_in = (W^2)^T [R / z]``."""

    def __init__(self, epsilon=1e-6):
        self.epsilon = _check_epsilon(epsilon)

    def groups(self, layer, a):
        W, b = layer.weight, layer.bias
        W2, b2 = layer.derived("square", lambda: (W ** 2, None if b is None else b ** 2))
        return [Group(_terms((np.ones_like(a), W2, b2)))]


class Norm(AffineRule):
    r"""LRP-0 of a pooling layer seen as a linear map: ``R_in = x J^T [R / pool(x)]``.

    On a :class:`~lrpnumpy.layers.MaxPool2d` it redistributes like a sum pool
    over the same windows (in proportion to the inputs).
    """

    needs_weight = False

    def __init__(self, epsilon=1e-6):
        self.epsilon = _check_epsilon(epsilon)

    def relevance(self, layer, a, R, ledger=None):
        if isinstance(layer, MaxPool2d):
            layer = layer.sum_pool()
        return super().relevance(layer, a, R, ledger)

    def groups(self, layer, a):
        return [Group(_terms((a, layer.weight, layer.bias)))]


class Rho(AffineRule):
    r"""The LRP tutorial's generic rule: one modified copy of the layer, inputs not split by sign.

    ``z = rho(W) a + b'``, ``R_in = a * rho(W)^T [R / stabilize(z)]`` with

    * ``rho``: ``"identity"`` (``W``), ``"gamma"`` (``W + gamma W+``) or ``"positive"`` (``W+``);
    * ``bias``: ``"rho"`` (``b' = rho(b)``, as in the tutorial), ``"raw"`` (``b' = b``, as in
      Captum) or ``"zero"``.

    Captum's ``GammaRule`` is ``Rho("gamma", gamma, bias="raw", epsilon=1e-9)``, its
    ``Alpha1_Beta0_Rule`` is ``Rho("positive", bias="raw", epsilon=1e-9)``.  On inputs of both
    signs these differ from :class:`Gamma` and :class:`ZPlus`, which split ``a`` into ``a+`` and
    ``a-``.
    """

    def __init__(self, rho="identity", gamma=0.25, bias="rho", epsilon=1e-6):
        if rho not in ("identity", "gamma", "positive"):
            raise RuleParameterError(f"Rho rho must be 'identity', 'gamma' or 'positive', got {rho!r}")
        if bias not in ("rho", "raw", "zero"):
            raise RuleParameterError(f"Rho bias must be 'rho', 'raw' or 'zero', got {bias!r}")
        if not (isinstance(gamma, numbers.Real) and np.isfinite(gamma) and gamma >= 0):
            raise RuleParameterError(f"Rho gamma must be a finite number >= 0, got {gamma!r}")
        self.rho, self.gamma, self.bias = rho, float(gamma), bias
        self.epsilon = _check_epsilon(epsilon)

    def _rho(self, p):
        if self.rho == "gamma":
            return p + p.dtype.type(self.gamma) * _pos(p)
        return _pos(p) if self.rho == "positive" else p

    def groups(self, layer, a):
        W, b = layer.weight, layer.bias

        def modified():
            bias = None if b is None else {"rho": self._rho, "raw": lambda v: v, "zero": lambda v: None}[self.bias](b)
            return self._rho(W), bias
        rho_w, rho_b = layer.derived(("rho", self.rho, self.gamma, self.bias), modified)
        return [Group(_terms((a, rho_w, rho_b)))]


class Pass(Rule):
    """Relevance passes through unchanged (reshaped to the input's shape)."""

    def relevance(self, layer, a, R, ledger=None):
        return R.reshape(a.shape)


class WinnerTakesAll(Rule):
    """Max pooling: each window's relevance goes to its maximum (the gradient).

    Parameters
    ----------
    ties : {"first", "split"}
        ``"first"`` (default, as the gradient and Zennit): the first maximum
        in row-major window order takes it all; ``"split"``: tied maxima
        share equally.  For redistribution like an average pool use
        :class:`Norm` on the max pool.
    """

    def __init__(self, ties="first"):
        if ties not in ("first", "split"):
            raise RuleParameterError(f"WinnerTakesAll ties must be 'first' or 'split', got {ties!r}")
        self.ties = ties

    def relevance(self, layer, a, R, ledger=None):
        if not isinstance(layer, MaxPool2d):
            raise UnsupportedLayerError(f"{self!r} applies to MaxPool2d, not to {layer!r}")
        return layer.backward(R) if self.ties == "first" else layer.backward_split(R)


# Rules used when none is given: the plain z-rule on weighted layers, Norm on
# sum/average pooling, winner-takes-all on max pooling, Pass elsewhere.
Layer.default_rule = Pass()
Linear.default_rule = Conv2d.default_rule = LRP0()
SumPool2d.default_rule = GlobalAvgPool2d.default_rule = Norm()
MaxPool2d.default_rule = WinnerTakesAll()

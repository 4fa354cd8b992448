r"""LRP rules as objects, each written once through the same four steps.

A rule turns the relevance ``R`` at a layer's output into relevance at its
input ``a`` ([1]_, [2]_).  For an affine layer (:class:`~lrpnumpy.layers.Linear`,
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
a mask on ``R``.  :func:`four_steps` is the one place where this is written
out, literally, and :func:`ledger` reads from its values what biases and stabilizers
absorbed.  This module is the readable form; what exists only for speed (shared and stacked
passes, vanishing terms skipped, large layers in row blocks, the gamma rule through the traced
``z``) is :mod:`lrpnumpy.rules_fast`, which ``explain`` runs and which is tested equal to
:func:`four_steps` for every rule (``explain(..., reference=True)`` runs the literal steps).

Rules read what they need from the layer's :class:`~lrpnumpy.trace.Step` of
the traced forward pass (its input, its output, max-pool winners); they keep
nothing of a call.

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
from .layers import Embedding, MaxPool2d
from .registry import Registry
from .stabilize import stabilize

#: Rules by name, for the command line and benchmarks (code passes rule objects); a rule class
#: is named with ``@register("name")`` where it is defined.
REGISTRY = Registry("rule")
register = REGISTRY.register


class Term(NamedTuple):
    """One forward pass ``coef * forward(x; weight, bias)`` of the modified layer.

    ``coef`` scales the term (a modified weight written as a combination of others).  Which terms
    add nothing (an input that is all zero, as the negative part after a ReLU) is the fast path's
    business (:mod:`lrpnumpy.rules_fast`), not the rule's.
    """

    x: np.ndarray
    weight: Optional[np.ndarray]
    bias: Optional[np.ndarray] = None
    coef: float = 1.0


class Group(NamedTuple):
    """Terms that share one denominator ``z``; their relevance is scaled by ``coef``.

    ``mask`` (boolean, output-shaped) selects the output neurons whose
    relevance this group redistributes; None means all.
    """

    terms: list
    coef: float = 1.0
    mask: Optional[np.ndarray] = None


class Values(NamedTuple):
    """What the literal four steps computed for one group."""

    z: np.ndarray    # step 1, before stabilizing
    zs: np.ndarray   # step 1, stabilized
    s: np.ndarray    # step 2 (before the group's coefficient)
    R: np.ndarray    # the relevance the group redistributes (R, masked)


def four_steps(layer, step, groups, R, epsilon):
    """The four LRP steps, literally, as the LRP tutorial writes them.

    This is the reference: :func:`lrpnumpy.rules_fast.four_steps_fast`, which explain uses, is
    tested equal to it for every rule and layer.

    Parameters
    ----------
    layer : AffineLayer
        Provides ``forward_with`` / ``backward_with``: the layer's map and its adjoint
        (its gradient) with any parameters.
    step : Step
        The layer's step of the traced forward pass (input shape, max-pool winners).
    groups : list of Group
        The rule's terms ``(x_k, W_k, b_k)``.
    R : ndarray
        Relevance at the layer's output.
    epsilon : float
        Stabilizer, see :func:`lrpnumpy.stabilize.stabilize`.

    Returns
    -------
    R_in : ndarray
        Relevance at the layer's input.
    values : list of Values
        Each group's z, stabilized z, s and relevance (what the literal steps computed).
    """
    R_in, values = 0, []
    for g in groups:
        R_g = R if g.mask is None else np.where(g.mask, R, R.dtype.type(0))
        z = sum(_scaled(t.coef, layer.forward_with(t.x, t.weight, t.bias, step)) for t in g.terms)  # step 1: z
        zs = stabilize(z, epsilon)
        s = R_g / zs                                                                    # step 2: s = R / z
        c = [layer.backward_with(_scaled(g.coef * t.coef, s), t.weight, step) for t in g.terms]  # step 3: c
        R_in = R_in + sum(t.x * c_k for t, c_k in zip(g.terms, c))                     # step 4: R = a * c
        values.append(Values(z, zs, s, R_g))
    return R_in, values


class Account(NamedTuple):
    """One group's sums from step 2 (:func:`lrpnumpy.kernels.lrp_step2`), what its ledger reads."""

    sums: np.ndarray         # (N, 4): sum R_g, sum R_g at finite denominators, sum s (zs - z), sum R
    per_channel: np.ndarray  # (N, bias.size): sum s per output channel
    bias: Optional[np.ndarray]  # the group's bias, sum coef * b over its terms (None: none)


def _group_bias(g):
    """The bias of a group's ``z``: ``sum coef * b`` over its terms (None when no term has one)."""
    biases = [_scaled(t.coef, t.bias) for t in g.terms if t.bias is not None]
    return sum(biases[1:], biases[0]) if biases else None


def accounts(layer, groups, values, R, epsilon):
    """Each group's :class:`Account` from what :func:`four_steps` computed (its ``values``).

    The same sums step 2 of the fast path collects as it divides (``kernels.lrp_step2``), here
    written out: ``sum R_g``, ``sum R_g`` where the stabilized ``z`` is finite, ``sum s (zs - z)``
    there, ``sum R``, and ``sum s`` per output channel (the axis the layer's bias lies along).
    """
    out = []
    for g, v in zip(groups, values):
        n, bias = len(R), _group_bias(g)
        kept = v.R if epsilon > 0 else np.where(np.isfinite(v.zs), v.R, 0)  # zs = inf: nothing passed on
        absorbed = _sums(v.s * (v.zs - v.z)) if epsilon > 0 else np.zeros(n)  # zs = z when epsilon = 0
        sums = np.stack([_sums(v.R), _sums(kept), absorbed, _sums(R)], axis=1).astype(R.dtype)
        if bias is None:
            per_channel = _sums(v.s)[:, None]
        else:  # the bias broadcasts from the channel axis on
            axis = v.s.ndim - np.ndim(layer.bias_view(bias, v.s.ndim))
            per_channel = np.moveaxis(v.s, axis, 1).reshape(n, bias.size, -1).sum(axis=2)
        out.append(Account(sums, per_channel, bias))
    return out


def ledger(groups, accounts, epsilon):
    """Per-sample sums of the relevance the four steps did not pass on, by cause.

    Returns a dict with ``bias`` (``sum s * b``), ``stabilizer`` (``sum s * (stabilize(z) -
    z)``) and ``dropped`` (relevance at zero denominators or outside every group's mask); keys
    with nothing to report are left out.  ``accounts``: each group's :class:`Account`.  Assumes, as
    every rule here ensures, that each output neuron's group coefficients add up to 1.
    """
    out, kept = {}, 0
    for g, a in zip(groups, accounts):
        if a.bias is not None:  # sum s * b, reduced per output channel first, then per sample (a product
            # with the whole batch, per_channel @ bias, is a gemv whose sums change with the batch's length)
            _add(out, "bias", g.coef * (a.per_channel * a.bias).sum(axis=1))
        if epsilon > 0:  # every denominator is finite, moved by +-epsilon
            _add(out, "stabilizer", g.coef * a.sums[:, 2])
            kept = kept + g.coef * a.sums[:, 0]
        else:  # no stabilizer; zero denominators (inf after stabilize) pass nothing on
            kept = kept + g.coef * a.sums[:, 1]
    _add(out, "dropped", accounts[0].sums[:, 3] - kept)
    return out


def _scaled(coef, s):
    return s if coef == 1 else s * s.dtype.type(coef)


def _sums(v):
    v = np.asarray(v)
    return v.reshape(v.shape[0], -1).sum(axis=1)


def _add(values, key, value):
    values[key] = values.get(key, 0) + value


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


def _plus_gamma(W, g, part):
    """``W + g * part(W, 0)`` with one allocation (the same numbers: addition commutes), so a large
    layer's modified weights do not need two temporaries of its size."""
    out = part(W, 0)
    out *= g
    out += W
    return out


def _split(a):
    """``(a+, a-)``, elementwise (so each sample's parts depend on that sample alone)."""
    return np.maximum(a, 0), np.minimum(a, 0)


class Rule:
    """Base class: a rule turns the relevance at a layer's output into relevance at its input.

    :meth:`propagate` is what ``explain`` calls; subclasses implement ``_propagate``.
    """

    def propagate(self, step, R):
        """``(R_in, ledger)``: relevance at the input of ``step.layer`` and what was absorbed.

        Parameters
        ----------
        step : Step
            The layer's step of the traced forward pass.
        R : ndarray
            Relevance at the layer's output (its shape and dtype).

        Returns
        -------
        R_in : ndarray
            Relevance at the layer's input.
        ledger : dict of str to ndarray of shape (N,)
            Per-sample relevance absorbed by ``bias`` and ``stabilizer``, and ``dropped``
            (see :func:`ledger`); empty for rules that pass everything on.
        """
        step.layer.check_grad(R, step, "relevance")
        return self._propagate(step, R)

    def check_dtype(self, dtype):
        """Raise RuleParameterError if a parameter cannot be represented in ``dtype``.

        Every number must fit (``|v| <= finfo.max``), and a non-zero ``epsilon`` must be at least
        the smallest normal number: a smaller one becomes 0 or a denormal in the denominators,
        and dividing by it overflows.
        """
        info = np.finfo(dtype)
        largest = float(info.max)
        for name, v in vars(self).items():
            if isinstance(v, float):
                too_big = abs(v) > largest
            elif isinstance(v, np.ndarray):
                too_big = bool((np.abs(v) > largest).any())
            else:
                continue
            if too_big:
                raise RuleParameterError(f"{self!r}: {name} does not fit in {np.dtype(dtype)} (largest value "
                                         f"{info.max:.4g})")
        eps = getattr(self, "epsilon", 0.0)
        if 0 < eps < info.tiny:
            raise RuleParameterError(f"{self!r}: epsilon {eps!r} is below the smallest normal {np.dtype(dtype)} "
                                     f"number {info.tiny:.4g}, so the stabilizer would vanish; use 0 or at least "
                                     f"{info.tiny:.4g}")
        return self

    def _propagate_deferred(self, step, R):
        """:meth:`propagate` as ``explain`` calls it: the ledger may be a callable that gives the dict when
        the conservation report is asked for, the arithmetic on the per-sample sums left until then (the
        same operations on the same small arrays, so the same numbers).  Here the dict itself."""
        return self.propagate(step, R)

    def relevance(self, step, R):
        """Relevance at the input of ``step.layer`` (the first part of :meth:`propagate`)."""
        return self.propagate(step, R)[0]

    def propagate_reference(self, step, R):
        """:meth:`propagate` in its literal form; a rule without a separate fast path is its own."""
        return self.propagate(step, R)

    def _propagate(self, step, R):
        raise NotImplementedError

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self):
        return hash(repr(self))


class AffineRule(Rule):
    """A rule given by groups of terms on an affine layer, run through the four steps."""

    epsilon = 0.0
    needs_weight = True

    def groups(self, layer, step):
        """The rule's terms on ``layer`` for the input of ``step``: a list of :class:`Group`."""
        raise NotImplementedError

    def layer_for(self, step):
        """The affine layer the four steps run on (the step's own layer; checked)."""
        layer = step.layer
        if not layer.affine:
            raise UnsupportedLayerError(f"{self!r} applies to affine layers (Linear, Conv2d, pooling), "
                                        f"not to {layer!r}")
        if self.needs_weight and layer.weight is None:
            raise UnsupportedLayerError(f"{self!r} needs a layer with weights; {layer!r} has none "
                                        f"(use Norm() or Epsilon() on pooling layers)")
        return layer

    def _propagate(self, step, R):
        return rules_fast.propagate(self, self.layer_for(step), step, R)

    def _propagate_deferred(self, step, R):
        kind = type(self)
        if kind.propagate is not Rule.propagate or kind._propagate not in (AffineRule._propagate, Epsilon._propagate) \
                or getattr(self, "bias_factor", 0):  # a rule that changes the fast path's result: as it is
            return self.propagate(step, R)
        step.layer.check_grad(R, step, "relevance")
        return rules_fast.propagate(self, self.layer_for(step), step, R, defer=True)

    def reference(self, step, R):
        """The relevance by :func:`four_steps` itself: the literal form the fast path is tested against."""
        return self.propagate_reference(step, R)[0]

    def propagate_reference(self, step, R):
        """:meth:`propagate` by the literal :func:`four_steps` and its ledger (no fast path)."""
        step.layer.check_grad(R, step, "relevance")
        layer = self.layer_for(step)
        groups = self.groups(layer, step)
        R_in, values = four_steps(layer, step, groups, R, self.epsilon)
        return layer.split(R_in), ledger(groups, accounts(layer, groups, values, R, self.epsilon), self.epsilon)


@register("epsilon")
class Epsilon(AffineRule):
    r"""The epsilon rule: ``R_in = x * W^T [R / stabilize(W x + b)]``.

    Parameters
    ----------
    epsilon : float, optional
        Stabilizer, ``>= 0`` (Zennit's default 1e-6).
    """

    needs_weight = False
    bias_factor = 0.0

    def __init__(self, epsilon=1e-6, bias_factor=0.0):
        self.epsilon = _check_epsilon(epsilon)
        if not (isinstance(bias_factor, numbers.Real) and 0 <= bias_factor <= 1):
            raise RuleParameterError(f"Epsilon bias_factor must be a number in [0, 1], got {bias_factor!r}")
        if bias_factor:  # (0, the default, is left out of the repr: the rule as before)
            self.bias_factor = float(bias_factor)

    def groups(self, layer, step):
        return [Group([Term(step.input, layer.weight, layer.bias)])]

    def _propagate(self, step, R):
        R_in, absorbed = super()._propagate(step, R)
        if not self.bias_factor:
            return R_in, absorbed
        return R_in + self._bias_share(step, R), {k: v * (1 - self.bias_factor) if k in ("bias", "stabilizer") else v
                                                  for k, v in absorbed.items()}

    def propagate_reference(self, step, R):
        R_in, absorbed = super().propagate_reference(step, R)
        if not self.bias_factor:
            return R_in, absorbed
        return R_in + self._bias_share(step, R), {k: v * (1 - self.bias_factor) if k in ("bias", "stabilizer") else v
                                                  for k, v in absorbed.items()}

    def _bias_share(self, step, R):
        """``bias_factor`` times each neuron's bias and stabilizer, shared equally among its connected
        inputs (Arras et al.'s ``bias_nb_units``): ``R_i += sum_j bf (b_j + zs_j - z_j) s_j / n_j``."""
        layer = self.layer_for(step)
        if layer.weight is None:
            raise UnsupportedLayerError(f"{self!r}: bias_factor shares a neuron's bias among its weighted inputs; "
                                        f"{layer!r} has no weights (use bias_factor=0 there)")
        x, ones = step.input, layer.derived("ones", lambda: np.ones_like(layer.weight))
        z = layer.forward_with(x, layer.weight, layer.bias, step)                       # step 1: z
        zs = stabilize(z, self.epsilon)
        s = np.where(np.isfinite(zs), R / zs, 0)                                          # step 2: s = R / z
        bias = 0 if layer.bias is None else layer.bias_view(layer.bias, R.ndim)
        n = layer.forward_with(np.ones_like(x), ones, None, step)                        # inputs per neuron
        t = np.where(np.isfinite(zs), (bias + zs - z) * s, 0) * (self.bias_factor / np.maximum(n, 1))
        return layer.backward_with(t, ones, step)                                         # step 3 and 4: shared


@register("lrp0")
class LRP0(Epsilon):
    """The plain z-rule (LRP-0): the epsilon rule with ``epsilon = 0``.

    Neurons with ``z = 0`` pass no relevance on (reported as dropped).
    """

    def __init__(self):
        self.epsilon = 0.0

    def __repr__(self):
        return "LRP0()"


@register("zplus")
class ZPlus(AffineRule):
    r"""The ``z+`` rule: ``z = W+ x+ + W- x- + b+``,
    ``R_in = x+ * W+^T [R/z] + x- * W-^T [R/z]``.
    """

    def __init__(self, epsilon=1e-6):
        self.epsilon = _check_epsilon(epsilon)

    def groups(self, layer, step):
        ap, an = _split(step.input)
        Wp, Wn, bp, _ = _sign_split(layer)
        return [Group([Term(ap, Wp, bp), Term(an, Wn)])]


@register("alpha_beta")
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

    def groups(self, layer, step):
        ap, an = _split(step.input)
        Wp, Wn, bp, bn = _sign_split(layer)
        groups = [Group([Term(ap, Wp, bp), Term(an, Wn)], self.alpha)]
        if self.beta:
            groups.append(Group([Term(ap, Wn, bn), Term(an, Wp)], -self.beta))
        return groups


class ToolboxAlphaBeta(AffineRule):
    r"""The LRP Toolbox's alpha-beta rule: one parameter ``alpha``, ``beta = 1 - alpha`` *added*.

    ``R_in = alpha (x+ W+^T[R/zp] + x- W-^T[R/zp]) + (1 - alpha) (x+ W-^T[R/zn] + x- W+^T[R/zn])``,
    products and bias split by sign as in :class:`AlphaBeta` (which is this rule with
    ``beta = alpha - 1`` when ``alpha >= 1``); any ``alpha`` is allowed, and an empty side passes
    nothing on (its share is not given to the other side).  On a sum pool (weights all equal) the
    inputs are split by sign.
    """

    needs_weight = False

    def __init__(self, alpha=2.0, epsilon=1e-16):
        if not (isinstance(alpha, numbers.Real) and np.isfinite(alpha)):
            raise RuleParameterError(f"ToolboxAlphaBeta alpha must be a finite number, got {alpha!r}")
        self.alpha = float(alpha)
        self.epsilon = _check_epsilon(epsilon)

    def groups(self, layer, step):
        ap, an = _split(step.input)
        if layer.weight is None:  # pooling: positive and negative inputs
            pos, neg = [Term(ap, None)], [Term(an, None)]  # an empty side is computed, as zeros
        else:
            Wp, Wn, bp, bn = _sign_split(layer)
            pos = [Term(ap, Wp, bp), Term(an, Wn)]
            neg = [Term(ap, Wn, bn), Term(an, Wp)]
        return [g for g in (Group(pos, self.alpha), Group(neg, 1 - self.alpha)) if g.coef != 0]


@register("gamma")
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

    def groups(self, layer, step):
        ap, an = _split(step.input)
        W, b = layer.weight, layer.bias
        z = step.output  # the sign of the original z = W a + b picks the branch
        g = W.dtype.type(self.gamma)

        def modified():
            bp, bn = (None, None) if b is None else (b + g * _pos(b), b + g * _neg(b))
            return _plus_gamma(W, g, np.maximum), _plus_gamma(W, g, np.minimum), bp, bn
        Wp, Wn, bp, bn = layer.derived(("gamma", self.gamma), modified)
        return [Group([Term(ap, Wp, bp), Term(an, Wn)], mask=z > 0),
                Group([Term(ap, Wn, bn), Term(an, Wp)], mask=z < 0)]


@register("zbox")
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
        try:
            low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise RuleParameterError(f"ZBox bounds must be numbers or float arrays, got low={low!r}, "
                                     f"high={high!r}") from exc
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

    def groups(self, layer, step):
        a, W, b = step.input, layer.weight, layer.bias
        low, high = self._bound(self.low, a), self._bound(self.high, a)
        Wp, Wn, bp, bn = _sign_split(layer)
        # -(W+ l + b+) - (W- h + b-) as forward passes of the negated bounds.
        return [Group([Term(a, W, b), Term(-low, Wp, None if b is None else -bp),
                       Term(-high, Wn, None if b is None else -bn)])]


def _short(v):
    v = np.asarray(v)
    return repr(float(v)) if v.ndim == 0 else f"array{v.shape}"


@register("flat")
class Flat(AffineRule):
    r"""The flat rule: ``R_in = 1^T [R / z]`` with ``z = 1 . 1`` (all weights 1, no bias).

    Every input in a neuron's receptive field gets an equal share; at padded
    borders the share counts the in-bounds taps only.  On a max pool the receptive field is the
    whole window (as for the sum pool over the same windows), not only the maximum.
    """

    needs_weight = False

    def __init__(self, epsilon=1e-6):
        self.epsilon = _check_epsilon(epsilon)

    def layer_for(self, step):
        layer = super().layer_for(step)
        return layer.sum_pool() if isinstance(layer, MaxPool2d) else layer

    def groups(self, layer, step):
        ones = None if layer.weight is None else layer.derived("ones", lambda: np.ones_like(layer.weight))
        return [Group([Term(np.ones_like(step.input), ones, None)])]


@register("wsquare")
class WSquare(AffineRule):
    r"""The ``w^2`` rule: ``z = W^2 1 + b^2``, ``R_in = (W^2)^T [R / z]``.

    ``bias=False`` leaves ``b^2`` out of ``z`` (the LRP Toolbox's ``ww`` rule).
    """

    def __init__(self, epsilon=1e-6, bias=True):
        self.epsilon = _check_epsilon(epsilon)
        if not isinstance(bias, bool):
            raise RuleParameterError(f"WSquare bias must be True or False, got {bias!r}")
        self.bias = bias

    def __repr__(self):
        return f"WSquare(epsilon={self.epsilon!r}{'' if self.bias else ', bias=False'})"

    def groups(self, layer, step):
        W, b = layer.weight, layer.bias if self.bias else None
        W2, b2 = layer.derived(("square", self.bias), lambda: (W ** 2, None if b is None else b ** 2))
        return [Group([Term(np.ones_like(step.input), W2, b2)])]


class Norm(AffineRule):
    r"""LRP-0 of a pooling layer seen as a linear map: ``R_in = x J^T [R / pool(x)]``.

    On a :class:`~lrpnumpy.layers.MaxPool2d` it redistributes like a sum pool
    over the same windows (in proportion to the inputs).  On an
    :class:`~lrpnumpy.layers.Add` (the default there, as in Zennit) each input gets
    ``R_i = c_i x_i R / stabilize(sum_j c_j x_j)``: the skip path and the residual branch share
    the relevance in proportion to their contributions.
    """

    needs_weight = False

    def __init__(self, epsilon=1e-6):
        self.epsilon = _check_epsilon(epsilon)

    def layer_for(self, step):
        layer = super().layer_for(step)
        return layer.sum_pool() if isinstance(layer, MaxPool2d) else layer

    def groups(self, layer, step):
        return [Group([Term(layer.joint_input(step), layer.weight, layer.bias)])]


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

    def groups(self, layer, step):
        W, b = layer.weight, layer.bias

        def modified():
            bias = None if b is None else {"rho": self._rho, "raw": lambda v: v, "zero": lambda v: None}[self.bias](b)
            return self._rho(W), bias
        rho_w, rho_b = layer.derived(("rho", self.rho, self.gamma, self.bias), modified)
        return [Group([Term(step.input, rho_w, rho_b)])]


class Pass(Rule):
    """Relevance passes through unchanged (reshaped to the input's shape).

    On layers that only move values (``rearranges``: Flatten, Concat, ChannelShuffle) it is
    the layer's own backward pass: relevance is split or permuted back.
    """

    def _propagate(self, step, R):
        if step.layer.rearranges:
            return step.layer.backward(R, step), {}
        if R.size != step.input.size:
            raise UnsupportedLayerError(f"{self!r} passes relevance through unchanged, so it needs a layer whose "
                                        f"output has as many entries as its input; {step.layer!r} maps "
                                        f"{step.input.shape} to {step.output.shape}")
        return R.reshape(step.input.shape), {}


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

    def _propagate(self, step, R):
        layer = step.layer
        if not isinstance(layer, MaxPool2d):
            raise UnsupportedLayerError(f"{self!r} applies to MaxPool2d, not to {layer!r}")
        return (layer.backward(R, step) if self.ties == "first" else layer.backward_split(R, step)), {}


class TokenSum(Rule):
    """An :class:`~lrpnumpy.layers.Embedding`: each token gets its vector's relevance, summed over D."""

    def _propagate(self, step, R):
        if not isinstance(step.layer, Embedding):
            raise UnsupportedLayerError(f"{self!r} applies to Embedding, not to {step.layer!r}")
        return R.sum(axis=-1), {}


class ProductRule(Rule):
    r"""Base of the rules for products of two activations, gate x signal, in LSTM and GRU layers.

    On a recurrent layer the rule runs LRP through time (Arras et al. 2017, 2019): the epsilon rule
    (``epsilon``, ``bias_factor`` as in :class:`Epsilon`) on every linear map - each gate's
    pre-activation, the cell update ``c = f * c_prev + i * g`` - relevance passed unchanged through
    the tanh of a signal, and :meth:`split` on every product.  A layer without products is refused.

    References
    ----------
    .. [1] Arras, Montavon, Müller, Samek. "Explaining recurrent neural network predictions in
       sentiment analysis". WASSA workshop, EMNLP 2017.
    .. [2] Arras, Osman, Müller, Samek. "Evaluating recurrent neural network explanations".
       BlackboxNLP workshop, ACL 2019.
    """

    def __init__(self, epsilon=1e-3, bias_factor=0.0):
        self.epsilon = _check_epsilon(epsilon)
        if not (isinstance(bias_factor, numbers.Real) and 0 <= bias_factor <= 1):
            raise RuleParameterError(f"{type(self).__name__} bias_factor must be a number in [0, 1], "
                                     f"got {bias_factor!r}")
        self.bias_factor = float(bias_factor)

    def split(self, gate, signal, R, ledger):
        """``(R_gate, R_signal)`` for ``R`` at ``gate * signal`` (R_gate None: the gate gets nothing)."""
        raise NotImplementedError

    def _propagate(self, step, R):
        if not step.layer.recurrent:
            raise UnsupportedLayerError(f"{self!r} is a rule for gate x signal products, which {step.layer!r} "
                                        f"does not have; it applies to recurrent layers (LSTM, GRU)")
        return step.layer.lrp(step, R, self, self.epsilon, self.bias_factor)


class SignalTakesAll(ProductRule):
    """LRP-all: the signal takes all of a product's relevance, the gate none (Arras et al. 2017)."""

    def split(self, gate, signal, R, ledger):
        return None, R


class HalfHalf(ProductRule):
    """LRP-half: gate and signal get half each (Arras et al. 2019; AttnLRP's uniform rule).

    As published, the gate's half goes on to the gate's pre-activation ``z = x W^T + h U^T + b``
    (relevance passes the sigmoid unchanged) and is split there by the epsilon rule, whose
    denominator is ``z``, not the gate's value ``sigmoid(z)``: a half-open gate (``z`` near 0,
    ``sigmoid(z)`` near 1/2) multiplies its relevance by up to ``1 / epsilon``, and the bias takes
    back the excess.  This compounds over time steps, so word relevance can be far larger than the
    explained score.  Measured on the shipped ``fortunes_lstm`` (float64, epsilon 0.001, the 569
    test quotations, each explained for its predicted class): ``|sum of word relevance / logit|``
    has median 0.49, 90th percentile 6.2, maximum 5.7e6 (LRP-all: 0.95, 1.8, 21); every unit of it
    is in the conservation report (the LSTM row's ``bias`` and ``stabilizer``).  A larger epsilon
    tames it (0.01: maximum below 1 on 40 quotations).
    """

    def split(self, gate, signal, R, ledger):
        half = R * R.dtype.type(0.5)
        return half, half


class Proportional(ProductRule):
    """LRP-prop: in proportion to their values, ``R_gate = gate / (gate + signal) R`` (Arras et al. 2019).

    The denominator is stabilized with ``epsilon`` (what that keeps is reported as stabilizer).

    As published, the split uses the signed values: a gate is in (0, 1) but a signal (``tanh(c)``,
    ``g``, the previous cell state) can be negative, and wherever ``signal`` is close to
    ``-gate`` both parts are of size ``|R| / epsilon`` and of opposite signs.  Their sum is ``R``,
    but they go on along different paths (the gate's part to its pre-activation, where the bias
    takes its share), so they no longer cancel, and the amplification compounds over time steps:
    word relevance grows exponentially with the sentence's length.  Measured on the shipped
    ``fortunes_lstm`` (float64, epsilon 0.001, the 569 test quotations, predicted class):
    ``|sum of word relevance / logit|`` has median 2.6e28 and maximum 2e123 (about 1 % of its
    products have ``|gate + signal| < 0.01``); one quotation cut to 2, 8, 16, 32 tokens gives 0.12,
    2.9e6, 9.2e16, 1.1e47.  epsilon 0.1 still reaches 2e27 on 40 quotations; 1.0 stays below 0.2.
    The conservation report accounts for all of it (the LSTM row's ``bias`` cancels what reaches
    the words).  :class:`SignalTakesAll` (LRP-all, the rule of Arras et al.'s code) has no such split.
    """

    def split(self, gate, signal, R, ledger):
        z = gate + signal
        zs = stabilize(z, self.epsilon)
        s = np.where(np.isfinite(zs), R / zs, 0)
        R_gate, R_signal = gate * s, signal * s
        kept = R - R_gate - R_signal
        ledger["stabilizer"] = ledger.get("stabilizer", 0) + _sums(np.where(np.isfinite(zs), kept, 0))
        ledger["dropped"] = ledger.get("dropped", 0) + _sums(np.where(np.isfinite(zs), 0, kept))
        return R_gate, R_signal


def get(spec):
    """A rule from ``"name"`` or ``"name:key=value,key=value"``, e.g. ``"epsilon:epsilon=0.25"``,
    ``"alpha_beta:alpha=1,beta=0"``, ``"zbox:low=0,high=1"``."""
    name, _, args = str(spec).partition(":")
    cls = REGISTRY.lookup(name)
    kwargs = {}
    for part in filter(None, args.split(",")):
        key, eq, value = part.partition("=")
        try:
            kwargs[key.strip()] = float(value)
        except ValueError:
            raise RuleParameterError(f"rule {spec!r}: parameters are key=number, got {part!r}") from None
        if not eq:
            raise RuleParameterError(f"rule {spec!r}: parameters are key=number, got {part!r}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise RuleParameterError(f"rule {spec!r}: {exc}") from None


# The fast path runs these rules (imported last: it reads the classes above).
from . import rules_fast  # noqa: E402
from .rules_fast import ROW_BLOCK_BYTES, four_steps_fast, row_blocks  # noqa: E402,F401  (names kept from before)

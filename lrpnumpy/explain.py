"""``explain``: the traced forward pass, the initial relevance, and the one backward walk of the rules.

Every explanation method in lrpnumpy returns an :class:`Explanation`; it and the rest of the shared
vocabulary (targets, one-hot, the checked forward pass) are :mod:`lrpnumpy.explanation`'s.
"""

import functools

import numpy as np

from .composites import Composite, SingleRule, default_rule
from .errors import DTypeError, NonFiniteError, ResourceError, RuleParameterError, ShapeError, TargetError
from .layers.base import check_array, check_finite, per_sample_sum
from .rules import Rule

# the shared vocabulary lives in lrpnumpy.explanation; its names stay importable from here
from .explanation import (ConservationReport, Explanation, forward_checked, forward_finite,  # noqa: F401
                          layer_index, logit_network, onehot, sample_rows, target_classes, target_onehot,
                          without_softmax)
from .registry import register_method


@register_method("lrp")

def explain(model, x, target=None, rule=None, composite=None, relevance_out=None, mask=None, reference=False):
    """Explain ``model``'s prediction for ``x`` with LRP.

    Parameters
    ----------
    model : Sequential or Graph
        A trailing Softmax is skipped: the logits are explained.
    x : ndarray, float32 or float64
        Input batch, e.g. of shape (N, C, H, W); same dtype as the model.
    target : None, int or sequence of int, optional
        The class explained: the predicted class (None), one class for
        every sample (int), or one per sample.
    rule : Rule or dict of int to Rule, optional
        One rule for every Linear and Conv2d layer, or rules by layer index.
        Other layers keep their default rule.
    composite : Composite, optional
        Rules by layer type (see :mod:`lrpnumpy.composites`).  Not together
        with ``rule``.
    relevance_out : ndarray, optional
        Relevance at the output, of the output's shape and dtype; instead of ``target`` (giving
        both is an error).
    mask : dict of (int or str) to ndarray, optional
        Filtering: ``{k: m}`` multiplies the relevance at the output of layer ``k`` (index in
        execution order, or node name) by ``m`` (boolean or float, broadcastable to that
        output, e.g. shape (1, C, 1, 1) to keep chosen channels), so only the relevance through
        the chosen neurons reaches the input.  Masks over a partition of a layer's neurons add
        up to the unfiltered relevance.  Layer ``k``'s row of the conservation report starts
        from the masked relevance.
    reference : bool, optional
        Run every rule in its literal form (:func:`lrpnumpy.rules.four_steps` on every affine
        layer, no shared or stacked passes, no row blocks) instead of :mod:`lrpnumpy.rules_fast`:
        slower, the same numbers up to rounding (tested: 1e-12 in float64).

    Returns
    -------
    Explanation
        With the relevance at every layer and the conservation report.

    Notes
    -----
    The initial relevance is the target logit, zero elsewhere:
    ``R_out = output * onehot(target)``.  The forward pass returns a trace; the rules
    read each layer's input and output from it, walking it backward.  Nothing is
    written to the network, so one network can be explained by several threads at once.

    An empty batch (N = 0) gives an empty explanation: relevance of shape ``(0, ...)`` at
    every layer, the output's shape (0, classes), and a conservation report of empty columns.
    """
    if not isinstance(reference, (bool, np.bool_)):
        raise RuleParameterError(f"reference must be True or False, got {reference!r}")
    net = logit_network(model, x)
    masks = _masks(net, mask, x.dtype)
    chosen = _rules(net, rule, composite)
    rules = [r if r is not None else default_rule(layer) for r, layer in zip(chosen, net)]
    for r in {id(r): r for r in rules}.values():
        r.check_dtype(x.dtype)
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            # non-finite results are checked there
            return _explain(net, x, rules, target, rule, composite, relevance_out, masks, bool(reference))
    except MemoryError:
        raise ResourceError(f"not enough memory to explain an input of shape {x.shape}") from None


def _explain(net, x, rules, target, rule, composite, relevance_out, masks, reference=False):
    output, trace = forward_checked(net, x)
    R, t = _initial_relevance(output, target, relevance_out)
    if len(x) == 0:  # nothing to walk: every layer's relevance is empty, of its input's shape
        return _empty_explanation(net, x, trace, output, R, t, rules, rule, composite, relevance_out)
    relevances, ledgers = [None] * len(trace), [None] * len(trace)
    for k, m in masks.items():
        try:
            fits = np.broadcast_shapes(m.shape, trace[k].output.shape) == trace[k].output.shape
        except ValueError:
            fits = False
        if not fits:
            raise ShapeError(f"mask for layer {k} has shape {m.shape}, which does not broadcast to the layer's "
                             f"output shape {trace[k].output.shape}")

    summed = {}  # id -> (relevance, its per-sample sums): a layer's R_in is the next one's R_out

    def total(r):
        kept = summed.get(id(r))
        if kept is None or kept[0] is not r:
            kept = summed[id(r)] = (r, per_sample_sum(r))
        return kept[1]

    def visit(step, R_out):
        if step.index in masks:
            R_out = R_out * masks[step.index]
        rule_k = rules[step.index]
        R_in, absorbed = (rule_k.propagate_reference if reference else rule_k._propagate_deferred)(step, R_out)
        parts = [total(r) for r in R_in] if isinstance(R_in, tuple) else None
        sums = dict(relevance_in=total(R_in) if parts is None else sum(parts), relevance_out=total(R_out), parts=parts)
        # a rule's deferred ledger is made into its dict when the report is asked for (Explanation.conservation)
        ledgers[step.index] = functools.partial(_row, absorbed, sums) if callable(absorbed) else dict(absorbed, **sums)
        relevances[step.index] = R_in
        return R_in

    relevance = trace.reverse(R, visit)
    if not np.isfinite(relevance).all():
        bad = max(i for i, r in enumerate(relevances)
                  if not all(np.isfinite(p).all() for p in (r if isinstance(r, tuple) else (r,))))
        raise NonFiniteError(f"relevance overflowed at layer {bad} ({trace[bad].layer!r}, rule {rules[bad]!r}): "
                             f"the output relevance or the weights are too large for {x.dtype}")
    params = {"rule": rule, "composite": composite}
    params.update({} if relevance_out is None else {"relevance_out": "given"}, **({"mask": masks} if masks else {}))
    params.update({"reference": True} if reference else {})
    return Explanation(relevance, output, t, method="lrp", params=params,
                       layers=relevances + [R], network=net, rules=rules, ledgers=ledgers)


def _row(absorbed, sums):
    """A layer's ledger from its rule's deferred one and the relevance sums at its input and output."""
    return dict(absorbed(), **sums)


def _empty_explanation(net, x, trace, output, R, t, rules, rule, composite, relevance_out):
    """The explanation of an empty batch: empty relevance at every layer, empty ledger columns."""
    relevances = [tuple(np.zeros_like(a) for a in step.inputs) if len(step.inputs) > 1
                  else np.zeros_like(step.input) for step in trace]
    none = np.zeros(0, x.dtype)
    ledgers = [dict(relevance_in=none, relevance_out=none,
                    parts=[none] * len(step.inputs) if len(step.inputs) > 1 else None) for step in trace]
    params = {"rule": rule, "composite": composite}
    params.update({} if relevance_out is None else {"relevance_out": "given"})
    return Explanation(np.zeros_like(x), output, t, method="lrp", params=params,
                       layers=relevances + [R], network=net, rules=rules, ledgers=ledgers)


def _masks(net, mask, dtype):
    """``{layer index: mask array of dtype}`` from explain's ``mask`` argument."""
    if mask is None:
        return {}
    if not isinstance(mask, dict):
        raise RuleParameterError(f"mask must be a dict {{layer: array}}, got {type(mask).__name__}")
    out = {}
    for k, m in mask.items():
        m = np.asarray(m)
        if m.dtype != bool and not np.issubdtype(m.dtype, np.floating) or not np.isfinite(m).all():
            raise RuleParameterError(f"mask for layer {k!r} must be boolean or finite floats, got {m.dtype}")
        out[layer_index(net, k)] = m.astype(dtype)
    return out


def _rules(net, rule, composite):
    if rule is not None and composite is not None:
        raise RuleParameterError("give either rule or composite, not both")
    if composite is not None:
        if not isinstance(composite, Composite):
            raise RuleParameterError(f"composite must be a Composite, got {composite!r}")
        return composite.rules(net)
    if rule is None:
        return [None] * len(net)
    if isinstance(rule, Rule):
        return SingleRule(rule).rules(net)
    if isinstance(rule, dict):
        return Composite(index_map=rule).rules(net)
    raise RuleParameterError(f"rule must be a Rule object or a dict {{layer index: Rule}}, got {rule!r}")


def _initial_relevance(output, target, relevance_out):
    """``(R, target)``: the relevance at the output and the class of each sample (None when given R)."""
    if relevance_out is not None:
        if target is not None:
            raise TargetError("give either target or relevance_out, not both: relevance_out already says what "
                              "is explained (target would be ignored)")
        R = check_finite(check_array(np.asarray(relevance_out) if not isinstance(relevance_out, np.ndarray)
                                     else relevance_out, "relevance_out"), "relevance_out")
        if R.shape != output.shape:
            raise ShapeError(f"relevance_out must have the output's shape {output.shape}, got {R.shape}")
        if R.dtype != output.dtype:
            raise DTypeError(f"relevance_out is {R.dtype} but the network's output is {output.dtype}; convert it "
                             f"explicitly (relevance_out.astype({str(output.dtype)!r}))")
        return R, None
    t = target_classes(output, target)
    return output * onehot(output, t), t

"""The LRP rules of :mod:`lrpnumpy.rules`, fast: what ``explain`` runs.

Everything here exists only for speed; the numbers are those of the literal
:func:`lrpnumpy.rules.four_steps` (tested equal for every rule and layer, and end to end by
``explain(..., reference=True)``).  Compared with the literal steps, :func:`propagate`

* leaves out, sample by sample, the terms on an input that is all zero for that sample and that
  add no bias (the negative part after a ReLU): they add nothing but signed zeros, and a sample's
  relevance, the signs of its zeros included, must not depend on the other samples of its batch
  (:func:`_left_out`; the term is skipped outright where it vanishes for the whole batch),
* runs each distinct (input, weight) pair once, however many terms and groups use it, and pairs
  on one input as one pass over stacked weights; the layer's own weight and bias on its own input
  need no pass at all: that is the traced forward pass's output (:func:`_is_traced`),
* does step 2 in one pass with the sums the ledger reads (``kernels.lrp_step2``), and reads the
  ledger of one group of coefficient 1 in fewer array operations (:func:`_ledger`),
* runs a dense layer above :data:`ROW_BLOCK_BYTES` one block of output neurons at a time,
* writes the gamma rule on input without a negative part through the traced ``z`` and
  ``u = W+ a + b+`` (:func:`groups_for`): one forward pass instead of two (decided per sample:
  a batch of samples with and without a negative part runs both forms, each sample keeps its own),
* splits no input by sign whose values all lack a sign bit (as after a ReLU or a max pool over one):
  there ``a+`` is ``a`` itself and ``a-`` is +0 everywhere, known without looking (:func:`_unsigned`).

Modified weights are cached on frozen layers by the rules themselves (``layer.derived``).
"""

import functools
from typing import NamedTuple, Optional

import numpy as np

from . import kernels, rules
from .kernels import elementwise
from .layers import Add, AffineLayer, Linear
from .rules import (AlphaBeta, Account, Epsilon, Gamma, Group, Norm, Term, ToolboxAlphaBeta, ZPlus, _add, _group_bias,
                    _pos, _scaled, _sign_split)
from .trace import Step


def propagate(rule, layer, step, R, defer=False):
    """``(R_in, ledger)`` of an :class:`~lrpnumpy.rules.AffineRule` on its (checked) ``layer``.  ``defer``: the
    ledger of one group of one term may be a callable giving the dict (see ``Rule._propagate_deferred``)."""
    if type(layer) is Add and type(rule).groups is Norm.groups and layer.coefficients is None and len(step.inputs) == 2:
        return _sum_of_two(rule, step, R, defer)
    blocks = row_blocks(layer)
    if blocks is None:
        R_in, absorbed = _per_sample_form(rule, layer, step, R, defer)
        return layer.split(R_in), absorbed
    # a large dense layer, one block of output neurons at a time: every rule's denominators
    # belong to single output neurons, so the blocks' relevance adds up at the shared input
    R_in, absorbed = 0, {}
    for rows, part in blocks:
        sub = Step(part, step.inputs, step.output[..., rows], step.state, step.index, step.parents)
        r, ledger = _per_sample_form(rule, part, sub, R[..., rows])
        R_in = R_in + r
        for key, value in ledger.items():
            _add(absorbed, key, value)
    return layer.split(R_in), absorbed


def _per_sample_form(rule, layer, step, R, defer=False):
    """``(R_in, ledger)`` of the rule's groups in :func:`groups_for`'s form; a batch where that form
    differs between samples (the gamma rule, samples with and without a negative input part) runs
    both forms and each sample keeps the result of its own, bit for bit what it gets alone."""
    kind = type(rule).groups
    if kind is Epsilon.groups:  # the layer's own weight and bias on its input: no groups to build
        R_in, account = _epsilon_term(layer, step, R, rule.epsilon)
        return R_in, (functools.partial if defer else _call)(_one_group_ledger, account, rule.epsilon)
    if kind is Norm.groups:  # one group of one term, whatever the input: no forms to choose
        g = rule.groups(layer, step)[0]
        R_in, values = _one_term(layer, step, g, g.terms[0], R, rule.epsilon)
        if defer and type(g.coef) is float and g.coef == 1:  # (holding the account only, not the group's input)
            return R_in, functools.partial(_one_group_ledger, values[0], rule.epsilon)
        return R_in, _ledger([g], values, rule.epsilon)
    rewrite = _gamma_rewritable(rule, layer, step)
    if rewrite is None or rewrite.all() or not rewrite.any():
        groups, zero = _groups_and_zero(rule, layer, step, rewrite is not None and bool(rewrite.all()))
        R_in, values = four_steps_fast(layer, step, groups, R, rule.epsilon, zero)
        return R_in, _ledger(groups, values, rule.epsilon)
    out = []
    for form in (True, False):
        groups = groups_for(rule, layer, step, form)
        R_in, values = four_steps_fast(layer, step, groups, R, rule.epsilon)
        out.append((R_in, rules.ledger(groups, values, rule.epsilon)))
    (R_a, ledger_a), (R_b, ledger_b) = out
    return (np.where(_rows(rewrite, np.ndim(R_a)), R_a, R_b),
            {k: np.where(rewrite, ledger_a.get(k, 0), ledger_b.get(k, 0)) for k in {**ledger_a, **ledger_b}})


def _sum_of_two(rule, step, R, defer=False):
    """:class:`~lrpnumpy.rules.Norm` on an :class:`~lrpnumpy.layers.Add` of two inputs without coefficients (a
    residual connection): :func:`_one_term`'s numbers without stacking the inputs.  Its ``z``, the stacked
    inputs summed, is the traced output ``x0 + x1`` but for the sign of a zero (the sum over the stack
    starts from +0), which neither the stabilized ``z`` nor ``zs - z`` sees; ``c = s`` for both inputs."""
    a, b = step.inputs
    s, sums, per_channel = kernels.lrp_step2(step.output, R, None, rule.epsilon, 1)   # steps 1-2: z, s = R / z
    R_b = b * s                                                                         # steps 3-4: R = x * s
    ledger = functools.partial(_one_group_ledger, Account(sums, per_channel, None), rule.epsilon)
    return (_times(a, s), R_b), ledger if defer else ledger()  # (s reused last)


def _ledger(groups, accounts, epsilon):
    """:func:`lrpnumpy.rules.ledger`, the same bits, in fewer array operations for one group of
    coefficient 1 (the epsilon rule, z+ after a ReLU, ...: most layers), where multiplying by the
    coefficient changes no bit; what ``0 + v`` does (-0 to +0) is kept."""
    g = groups[0]
    if len(groups) != 1 or type(g.coef) is not float or g.coef != 1:
        return rules.ledger(groups, accounts, epsilon)
    return _one_group_ledger(accounts[0], epsilon)


def _one_group_ledger(a, epsilon):
    """:func:`_ledger` of one group of coefficient 1 and its :class:`~lrpnumpy.rules.Account` ``a``."""
    out = {}
    if a.bias is not None:
        out["bias"] = 0 + (a.per_channel * a.bias).sum(axis=1)
    if epsilon > 0:
        out["stabilizer"] = 0 + a.sums[:, 2]
        kept = 0 + a.sums[:, 0]
    else:
        kept = 0 + a.sums[:, 1]
    out["dropped"] = 0 + (a.sums[:, 3] - kept)
    return out


def _gamma_rewritable(rule, layer, step):
    """Per sample: may the gamma rule run through the traced ``z`` (input without a negative part)?
    None for other rules."""
    n = len(step.output)
    if type(rule).groups is not Gamma.groups:
        return None
    if step.input.shape[:1] != (n,):  # not one row per sample: decided for the whole batch
        return np.full(n, step.input.min() >= 0)
    if _unsigned(step.input):  # no negative part anywhere (one reduction, not one per sample)
        return np.ones(n, bool)
    return ~(step.input.reshape(n, -1) < 0).any(axis=1)


#: The bits of +inf, by item size: a float whose bits, read as an unsigned integer, are at most
#: these is +0, positive or +inf (no sign bit, not NaN).
_PLUS_INF = {4: (np.uint32, 0x7F800000), 8: (np.uint64, 0x7FF0000000000000)}


def _unsigned(a):
    """True when no value of ``a`` has its sign bit set and none is NaN (as after a ReLU: ``max(-0.0,
    0)`` is +0).  Then ``max(a, 0)`` is ``a`` and ``min(a, 0)`` is +0 everywhere, bit for bit; a
    -0.0 makes this False (``max(-0.0, 0)`` is +0: not ``a``'s bits).  One reduction over the bits."""
    bits = _PLUS_INF.get(a.dtype.itemsize) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else None
    return bits is not None and a.size > 0 and a.view(bits[0]).max() <= bits[1]


def _split_free_groups(rule, layer, step):
    """``(groups, zero)``: ``rule.groups(layer, step)`` for a rule whose terms are on the sign split
    ``(a+, a-)`` of an input :func:`_unsigned` says has no sign bits, without two copies of the input:
    ``a`` itself for ``a+``, and for ``a-`` one array of +0 (``zero``), or, on a layer with a bias,
    no terms at all: each group keeps a term with a bias, so :func:`_left_out` would leave out the
    terms on ``a-`` for every sample.  The same numbers, bit for bit.  ``(None, None)`` for other
    rules and inputs."""
    kind = type(rule).groups
    a, zero = step.input, None
    if (kind not in (ZPlus.groups, AlphaBeta.groups, ToolboxAlphaBeta.groups)
            or np.shape(a)[:1] != np.shape(step.output)[:1] or not _unsigned(a)):  # (one row per sample)
        return None, None
    if layer.weight is None:  # ToolboxAlphaBeta on a pooling layer: positive and negative inputs
        zero = np.zeros(a.shape, a.dtype)
        pos, neg = [Term(a, None)], [Term(zero, None)]
    else:
        Wp, Wn, bp, bn = _sign_split(layer)
        if bp is not None:
            pos, neg = [Term(a, Wp, bp)], [Term(a, Wn, bn)]
        else:
            zero = np.zeros(a.shape, a.dtype)
            pos, neg = [Term(a, Wp), Term(zero, Wn)], [Term(a, Wn), Term(zero, Wp)]
    if kind is ZPlus.groups:
        return [Group(pos)], zero
    if kind is AlphaBeta.groups:
        return [Group(pos, rule.alpha)] + ([Group(neg, -rule.beta)] if rule.beta else []), zero
    return [g for g in (Group(pos, rule.alpha), Group(neg, 1 - rule.alpha)) if g.coef != 0], zero


def _rows(rows, ndim):
    """A per-sample boolean ``(N,)`` shaped to broadcast against an array of ``ndim`` axes."""
    return rows.reshape((-1,) + (1,) * (ndim - 1))


def groups_for(rule, layer, step, rewrite=None):
    """The rule's groups in the form with the fewest passes: ``rule.groups``, except for the gamma
    rule on input without a negative part (as after a ReLU), written through the traced
    ``z = W a + b`` (no pass) and ``u = W+ a + b+`` (one pass): ``W + gamma W+`` is ``z + gamma u``
    and ``W + gamma W-`` is ``(1 + gamma) z - gamma u``.  ``rewrite``: use that form (True), or not
    (False); None: when no sample has a negative input part."""
    return _groups_and_zero(rule, layer, step, rewrite)[0]


def _groups_and_zero(rule, layer, step, rewrite=None):
    """``(groups, zero)``: :func:`groups_for`'s groups and the input among their terms known to be +0
    everywhere (None when there is none; :func:`_split_free_groups`)."""
    if rewrite is None:
        rewritable = _gamma_rewritable(rule, layer, step)
        rewrite = rewritable is not None and bool(rewritable.all())
    if rewrite and type(rule).groups is Gamma.groups:
        a, W, b, z, gamma = step.input, layer.weight, layer.bias, step.output, rule.gamma
        Wp, bp = layer.derived("positive-part", lambda: (_pos(W), _pos(b)))
        return [Group([Term(a, W, b), Term(a, Wp, bp, coef=gamma)], mask=z > 0),
                Group([Term(a, W, b, coef=1 + gamma), Term(a, Wp, bp, coef=-gamma)], mask=z < 0)], None
    groups, zero = _split_free_groups(rule, layer, step)
    return (groups, zero) if groups is not None else (rule.groups(layer, step), None)


def four_steps_fast(layer, step, groups, R, epsilon, zero=None):
    """:func:`four_steps` with fewer passes; same arguments, same results up to rounding.  ``zero``:
    an input among the terms' known to be +0 everywhere (not looked at to find that out).

    Terms on an input that is all zero and that add no bias are left out (:func:`_left_out`); each
    distinct (input, weight) pair runs one forward and
    one backward pass however many terms use it (the backward pass is linear in ``s``, so the
    terms' ``coef * s`` add up before it), and pairs on one input run together, with stacked
    weights.  The layer's own weight on its own input needs no forward pass at all: that is the
    traced forward pass's output.
    """
    if len(groups) == 1 and len(groups[0].terms) == 1:  # Epsilon, Norm, ZPlus after a ReLU, ...: fewer steps
        return _one_term(layer, step, groups[0], groups[0].terms[0], R, epsilon)
    left_out = _left_out(groups, len(R), zero)
    gone = {key for key, rows in left_out.items() if rows.all()}  # left out for every sample: no pass
    if gone:
        groups = [Group([t for t in g.terms if id(t.x) not in gone], g.coef, g.mask) for g in groups]
        left_out = {key: rows for key, rows in left_out.items() if key not in gone}
        if len(groups) == 1 and len(groups[0].terms) == 1:  # ZPlus after a ReLU: its term on x- left out
            return _one_term(layer, step, groups[0], groups[0].terms[0], R, epsilon)
    pairs = _pairs(groups)
    # step 1: z = forward pass of the rule-modified layer (each group: the sum of its terms)
    z = [[] for _ in groups]
    for x, uses in _by_input(pairs):
        fresh = [u for u in uses if not _is_traced(layer, step, u)]
        # a pair whose terms all add the same bias gets it in its forward pass (added in place there)
        added = [_shared_bias(u) for u in fresh]
        outs = dict(zip(map(id, fresh), zip(layer.forward_with_many(x, [u.weight for u in fresh], step, added), added))
                    if fresh else ())
        for u in uses:
            with_bias = {}  # one addition per bias, however many groups use it (gamma: both)
            for gi, coef, bias in u.terms:
                if id(u) not in outs:
                    out = step.output  # the traced forward pass's output, bias included
                elif bias is outs[id(u)][1]:
                    out = outs[id(u)][0]
                else:  # terms with different biases: each added to the pair's output without bias
                    if id(bias) not in with_bias:
                        with_bias[id(bias)] = outs[id(u)][0] + layer.bias_view(bias, R.ndim)
                    out = with_bias[id(bias)]
                z[gi].append(_leave_out(_scaled(coef, out), left_out.get(id(x))))
    # step 2: s = R / stabilize(z), each group's in one pass with the sums its ledger reads
    s, accounts = [], []
    for g, zg in zip(groups, z):
        bias = _group_bias(g)
        sg, sums, per_channel = kernels.lrp_step2(_total(zg), R, g.mask, epsilon, _step2_channels(layer, bias, R))
        per_channel = _last_axis_channels(layer, sg, bias, per_channel)
        s.append(sg)
        accounts.append(Account(sums, per_channel, bias))
    # step 3: c = backward pass of the modified layer applied to s (each weight once: the sum of its
    # terms' s scaled by their group's and their own coefficient)
    # step 4: R = a * c (summed over the inputs the terms use)
    def s_of(pair):  # the pair's terms' s, each scaled by its group's and its own coefficient
        return _total([_scaled(groups[gi].coef * coef, s[gi]) for gi, coef, _ in pair.terms])
    R_in = _total([_leave_out(_times(x, layer.backward_with_many([(s_of(u), u.weight) for u in uses], step)),
                              left_out.get(id(x))) for x, uses in _by_input(pairs)])
    return R_in, accounts


def _left_out(groups, n, zero=None):
    """``{id(x): rows}``: the samples (boolean ``(N,)``) for which the terms on input ``x`` are left out.

    That is where ``x`` is all zero, no term on ``x`` adds a bias (the terms add nothing but signed
    zeros there), and each group using ``x`` keeps a term on another input for that sample.  Decided
    from each sample's own numbers, so a sample's result does not depend on its batch; where terms
    are left out for some samples only, their values there become ``-0``, which leaves any sum it is
    added to unchanged bit for bit (:func:`_leave_out`): the same bits as without the terms.
    ``zero``: an input known to be zero everywhere (its samples are not looked at).
    """
    inputs = [[t.x for t in g.terms] for g in groups]
    biased = {id(t.x) for g in groups for t in g.terms if t.bias is not None}
    found = {}  # candidates: id(x) -> samples where x is all zero
    for xs in inputs:
        if any(x is not xs[0] for x in xs):  # a group with at least two inputs
            for x in xs:
                if id(x) not in biased and id(x) not in found and np.shape(x)[:1] == (n,):
                    found[id(x)] = np.ones(n, bool) if x is zero else ~np.asarray(x).reshape(n, -1).any(axis=1)
    out = {key: rows for key, rows in found.items() if rows.any()}
    if not out:
        return out
    for xs in inputs:  # an input alone in its group is never left out
        if all(x is xs[0] for x in xs):
            out.pop(id(xs[0]), None)
    for xs in inputs:  # a group that would be left with no term for a sample keeps them all there
        keys = {id(x) for x in xs}
        if keys <= out.keys():
            everything = np.logical_and.reduce([out[key] for key in keys])
            for key in keys:
                out[key] = out[key] & ~everything
    return {key: rows for key, rows in out.items() if rows.any()}


def _leave_out(v, rows):
    """``v`` with the samples ``rows`` set to ``-0`` (the identity of addition, signs of zeros included)."""
    if rows is None:
        return v
    return np.where(_rows(rows, np.ndim(v)), np.asarray(v).dtype.type(-0.0), v)


def _one_term(layer, step, g, t, R, epsilon):
    """:func:`four_steps_fast` for one group of one term (what most layers of most composites run)."""
    pair = _Pair(t.x, t.weight, [(0, t.coef, t.bias)])
    if _is_traced(layer, step, pair):
        z = step.output                                                                  # step 1: z
    else:
        z = layer.forward_with_many(t.x, [t.weight], step, [t.bias])[0]
    bias = _group_bias(g)
    s, sums, per_channel = kernels.lrp_step2(_scaled(t.coef, z), R, g.mask, epsilon,   # step 2: s
                                             _step2_channels(layer, bias, R))
    per_channel = _last_axis_channels(layer, s, bias, per_channel)
    c = layer.backward_with_many([(_scaled(g.coef * t.coef, s), t.weight)], step)            # step 3: c
    return _times(t.x, c), [Account(sums, per_channel, bias)]                           # step 4: R


def _epsilon_term(layer, step, R, epsilon):
    """``(R_in, account)``: :func:`_one_term` for the epsilon rule's one term, ``Term(step.input, layer.weight,
    layer.bias)`` of coefficient 1 in a group of coefficient 1 without mask, the same calls without the
    group, term and pair objects and the tests they answer (this is most layers of most composites)."""
    x, W, b = step.input, layer.weight, layer.bias
    kind = type(layer)
    if step.layer is layer and kind._forward is AffineLayer._forward and kind._apply is AffineLayer._apply:
        z = step.output                                                                  # step 1: z (traced)
    else:
        z = layer.forward_with_many(x, [W], step, [b])[0]
    s, sums, per_channel = kernels.lrp_step2(z, R, None, epsilon, _step2_channels(layer, b, R))  # step 2: s
    per_channel = _last_axis_channels(layer, s, b, per_channel)
    c = layer.backward_with_many([(s, W)], step)                                         # step 3: c
    return _times(x, c), Account(sums, per_channel, b)                                  # step 4: R


def _call(fn, *args):
    return fn(*args)


def _step2_channels(layer, bias, R):
    """The ``channels`` argument of ``kernels.lrp_step2``: the bias's size, or 1 where :func:`_last_axis_channels`
    sums ``s`` per channel itself (a Linear on tokens), so that the kernel's sums over blocks, which those would
    not use, are one sum per sample (at batch 16 on the shipped ViT's tokens, 7 us instead of 43)."""
    if bias is None or (R.ndim > 2 and isinstance(layer, Linear)):
        return 1
    return bias.size


def _last_axis_channels(layer, s, bias, per_channel):
    """The per-channel sums of ``s`` for a Linear layer on tokens (N, ..., out): its channels are
    on the last axis, not in the contiguous blocks ``kernels.lrp_step2`` sums over."""
    if bias is None or s.ndim <= 2 or not isinstance(layer, Linear):
        return per_channel
    return np.add.reduce(s.reshape(len(s), -1, s.shape[-1]), axis=1)  # (sum's bits, without its Python wrapper)


def _times(x, c):
    """``x * c``, into ``c`` when that is a new array of the product's shape and dtype (the backward
    pass's result, used nowhere else): one array fewer to allocate and fault in."""
    if (isinstance(c, np.ndarray) and c.base is None and c.flags.writeable and c is not x
            and c.shape == np.shape(x) and c.dtype == np.result_type(x, c)):
        return elementwise.multiply_into(x, c)  # (large ones: the samples on the kernels' threads)
    return x * c


def _total(parts):
    """The sum of a list of arrays; the array itself (no copy) when there is one, 0 when none."""
    if not parts:
        return 0
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


class _Pair(NamedTuple):
    x: np.ndarray
    weight: Optional[np.ndarray]
    terms: list  # [(group index, coef, bias), ...]


def _pairs(groups):
    """The distinct (input, weight) pairs of the groups' terms (by identity)."""
    pairs = []
    for gi, g in enumerate(groups):
        for t in g.terms:
            pair = next((p for p in pairs if p.x is t.x and p.weight is t.weight), None)
            if pair is None:
                pair = _Pair(t.x, t.weight, [])
                pairs.append(pair)
            pair.terms.append((gi, t.coef, t.bias))
    return pairs


def _by_input(pairs):
    """``[(x, [pair, ...]), ...]``: the pairs grouped by their input (identity), in order."""
    out = []
    for p in pairs:
        same = next((uses for x, uses in out if x is p.x), None)
        if same is None:
            out.append((p.x, [p]))
        else:
            same.append(p)
    return out


def _shared_bias(pair):
    """The bias every term of ``pair`` adds, when that is one array; None otherwise."""
    first = pair.terms[0][2]
    return first if all(bias is first for _, _, bias in pair.terms) else None


def _is_traced(layer, step, pair):
    """True when the pair's forward pass, with each of its terms' bias, is the traced output itself:
    the layer's own weight and bias on the layer's own input, for a layer whose forward pass is
    ``forward_with`` its own parameters (Linear, Conv2d, sum and average pooling, ...)."""
    kind = type(layer)
    return (step.layer is layer and kind._forward is AffineLayer._forward and kind._apply is AffineLayer._apply
            and pair.x is step.input and pair.weight is layer.weight
            and all(bias is layer.bias for _, _, bias in pair.terms))


#: Dense layers with more weight bytes than this run their rules one block of output neurons at a
#: time (blocks of at most this size), so that modified weights (W+, W + gamma W+, ...) are made
#: one block at a time: vgg16's first dense layer holds 822 MB of float64 weights.
ROW_BLOCK_BYTES = 64 << 20


def row_blocks(layer):
    """``[(slice of output neurons, Linear over those rows), ...]`` for a Linear layer above
    :data:`ROW_BLOCK_BYTES`, else None.  The blocks' parameters are views of the layer's (no copy);
    on a frozen layer they are kept, so each block caches its own modified weights."""
    if not isinstance(layer, Linear) or layer.weight.nbytes <= ROW_BLOCK_BYTES:
        return None
    W, b = layer.weight, layer.bias
    rows = max(1, ROW_BLOCK_BYTES // (W.shape[1] * W.itemsize))

    def block(a):
        part = Linear.__new__(Linear)
        part._configure(W.shape[1], min(a + rows, len(W)) - a, b is not None)
        object.__setattr__(part, "weight", W[a:a + rows])  # views of checked parameters: not checked again
        object.__setattr__(part, "bias", None if b is None else b[a:a + rows])
        return slice(a, a + part.out_features), part
    return layer.derived(("row-blocks", rows), lambda: tuple(block(a) for a in range(0, len(W), rows)))

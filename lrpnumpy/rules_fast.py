"""The LRP rules of :mod:`lrpnumpy.rules`, fast: what ``explain`` runs.

Everything here exists only for speed; the numbers are those of the literal
:func:`lrpnumpy.rules.four_steps` (tested equal for every rule and layer, and end to end by
``explain(..., reference=True)``).  Compared with the literal steps, :func:`propagate`

* skips terms whose input vanishes (``Term.vanishes``: the negative part after a ReLU),
* runs each distinct (input, weight) pair once, however many terms and groups use it, and pairs
  on one input as one pass over stacked weights; the layer's own weight and bias on its own input
  need no pass at all: that is the traced forward pass's output (:func:`_is_traced`),
* does step 2 in one pass with the sums the ledger reads (``kernels.lrp_step2``),
* runs a dense layer above :data:`ROW_BLOCK_BYTES` one block of output neurons at a time,
* writes the gamma rule on input without a negative part through the traced ``z`` and
  ``u = W+ a + b+`` (:func:`groups_for`): one forward pass instead of two.

Modified weights are cached on frozen layers by the rules themselves (``layer.derived``).
"""

from typing import NamedTuple, Optional

import numpy as np

from . import kernels, rules
from .layers import AffineLayer, Linear
from .rules import Account, Gamma, Group, Term, _add, _group_bias, _pos, _scaled
from .trace import Step


def propagate(rule, layer, step, R):
    """``(R_in, ledger)`` of an :class:`~lrpnumpy.rules.AffineRule` on its (checked) ``layer``."""
    negative = _samples_with_negative_input(layer, step)
    if negative is not None:  # both kinds of samples in the batch: each kind on its own (see below)
        return _by_kind(rule, layer, step, R, negative)
    blocks = row_blocks(layer)
    if blocks is None:
        groups = groups_for(rule, layer, step)
        R_in, values = four_steps_fast(layer, step, groups, R, rule.epsilon)
        return layer.split(_unsigned_zeros(R_in)), rules.ledger(groups, values, rule.epsilon)
    # a large dense layer, one block of output neurons at a time: every rule's denominators
    # belong to single output neurons, so the blocks' relevance adds up at the shared input
    R_in, absorbed = 0, {}
    for rows, part in blocks:
        sub = Step(part, step.inputs, step.output[..., rows], step.state, step.index, step.parents)
        groups = groups_for(rule, part, sub)
        r, values = four_steps_fast(part, sub, groups, R[..., rows], rule.epsilon)
        R_in = R_in + r
        for key, value in rules.ledger(groups, values, rule.epsilon).items():
            _add(absorbed, key, value)
    return layer.split(_unsigned_zeros(R_in)), absorbed


def _samples_with_negative_input(layer, step):
    """Which samples have a negative input, when some do and some do not (else None).

    Whether the x- terms vanish, and whether gamma is written through the traced ``z``, is decided
    on the whole input: a sample without negative inputs would take a path (and get rounding) that
    depends on the rest of its batch.  Such a batch is explained in two parts, each of one kind,
    so that every sample takes the path it takes alone.  (Layers with a backward state are not
    split; their rules here do not look at signs.)"""
    xs = step.inputs
    if (step.state is not None or not all(isinstance(x, np.ndarray) and x.ndim >= 2 for x in xs)
            or len({len(x) for x in xs}) != 1 or len(xs[0]) < 2):
        return None
    negative = np.zeros(len(xs[0]), bool)
    for x in xs:  # every input batch first (a several-input layer's joint input stacks them)
        negative |= (x < 0).reshape(len(x), -1).any(axis=1)
    return negative if negative.any() and not negative.all() else None


def _by_kind(rule, layer, step, R, negative):
    """:func:`propagate` on the samples with and those without a negative input, put back in order."""
    R_in, ledger = None, {}
    for idx in (np.flatnonzero(negative), np.flatnonzero(~negative)):
        sub = Step(step.layer, [x[idx] for x in step.inputs], step.output[idx], None, step.index, step.parents)
        r, values = propagate(rule, layer, sub, R[idx])
        parts = r if isinstance(r, tuple) else (r,)
        if R_in is None:
            R_in = tuple(np.empty((len(negative),) + p.shape[1:], p.dtype) for p in parts)
        for whole, part in zip(R_in, parts):
            whole[idx] = part
        for key, value in values.items():
            value = np.asarray(value)
            ledger.setdefault(key, np.zeros(len(negative), value.dtype))[idx] = value
    return (R_in if isinstance(r, tuple) else R_in[0]), ledger


def _unsigned_zeros(R):
    """``R`` with every -0 made +0 (in place when ``R`` is a new array): whether a term that vanishes
    (the x- of ZPlus on inputs >= 0) is skipped depends on the whole batch, and where it is not,
    its exact zeros, added, can turn a -0 into +0; so a sample's zeros would keep their sign only
    in some batches."""
    if isinstance(R, np.ndarray) and R.base is None and R.flags.writeable:
        return np.add(R, R.dtype.type(0), out=R)
    return R + np.zeros((), np.result_type(R))


def groups_for(rule, layer, step):
    """The rule's groups in the form with the fewest passes: ``rule.groups``, except for the gamma
    rule on input without a negative part (as after a ReLU), written through the traced
    ``z = W a + b`` (no pass) and ``u = W+ a + b+`` (one pass): ``W + gamma W+`` is ``z + gamma u``
    and ``W + gamma W-`` is ``(1 + gamma) z - gamma u``."""
    if type(rule).groups is Gamma.groups and step.input.min() >= 0:
        a, W, b, z, gamma = step.input, layer.weight, layer.bias, step.output, rule.gamma
        Wp, bp = layer.derived("positive-part", lambda: (_pos(W), _pos(b)))
        return [Group([Term(a, W, b), Term(a, Wp, bp, coef=gamma)], mask=z > 0),
                Group([Term(a, W, b, coef=1 + gamma), Term(a, Wp, bp, coef=-gamma)], mask=z < 0)]
    return rule.groups(layer, step)


def four_steps_fast(layer, step, groups, R, epsilon):
    """:func:`four_steps` with fewer passes; same arguments, same results up to rounding.

    Terms whose input vanishes are skipped; each distinct (input, weight) pair runs one forward and
    one backward pass however many terms use it (the backward pass is linear in ``s``, so the
    terms' ``coef * s`` add up before it), and pairs on one input run together, with stacked
    weights.  The layer's own weight on its own input needs no forward pass at all: that is the
    traced forward pass's output.
    """
    live = [t for g in groups for t in g.terms if not t.vanishes]
    if len(groups) == 1 and len(live) == 1:  # Epsilon, Norm, ZPlus after a ReLU, ...: fewer steps in Python
        return _one_term(layer, step, groups[0], live[0], R, epsilon)
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
                z[gi].append(_scaled(coef, out))
    # step 2: s = R / stabilize(z), each group's in one pass with the sums its ledger reads
    s, accounts = [], []
    for g, zg in zip(groups, z):
        bias = _group_bias(g)
        sg, sums, per_channel = kernels.lrp_step2(_total(zg), R, g.mask, epsilon, 1 if bias is None else bias.size)
        per_channel = _last_axis_channels(layer, sg, bias, per_channel)
        s.append(sg)
        accounts.append(Account(sums, per_channel, bias))
    # step 3: c = backward pass of the modified layer applied to s (each weight once: the sum of its
    # terms' s scaled by their group's and their own coefficient)
    # step 4: R = a * c (summed over the inputs the terms use)
    def s_of(pair):  # the pair's terms' s, each scaled by its group's and its own coefficient
        return _total([_scaled(groups[gi].coef * coef, s[gi]) for gi, coef, _ in pair.terms])
    R_in = _total([_times(x, layer.backward_with_many([(s_of(u), u.weight) for u in uses], step))
                   for x, uses in _by_input(pairs)])
    return R_in, accounts


def _one_term(layer, step, g, t, R, epsilon):
    """:func:`four_steps_fast` for one group of one term (what most layers of most composites run)."""
    pair = _Pair(t.x, t.weight, [(0, t.coef, t.bias)])
    if _is_traced(layer, step, pair):
        z = step.output                                                                  # step 1: z
    else:
        z = layer.forward_with_many(t.x, [t.weight], step, [t.bias])[0]
    bias = _group_bias(g)
    s, sums, per_channel = kernels.lrp_step2(_scaled(t.coef, z), R, g.mask, epsilon,   # step 2: s
                                             1 if bias is None else bias.size)
    per_channel = _last_axis_channels(layer, s, bias, per_channel)
    c = layer.backward_with_many([(_scaled(g.coef * t.coef, s), t.weight)], step)            # step 3: c
    return _times(t.x, c), [Account(sums, per_channel, bias)]                           # step 4: R


def _last_axis_channels(layer, s, bias, per_channel):
    """The per-channel sums of ``s`` for a Linear layer on tokens (N, ..., out): its channels are
    on the last axis, not in the contiguous blocks ``kernels.lrp_step2`` sums over."""
    if bias is None or s.ndim <= 2 or not isinstance(layer, Linear):
        return per_channel
    return s.reshape(len(s), -1, s.shape[-1]).sum(axis=1)


def _times(x, c):
    """``x * c``, into ``c`` when that is a new array of the product's shape and dtype (the backward
    pass's result, used nowhere else): one array fewer to allocate and fault in."""
    if (isinstance(c, np.ndarray) and c.base is None and c.flags.writeable and c is not x
            and c.shape == np.shape(x) and c.dtype == np.result_type(x, c)):
        return np.multiply(x, c, out=c)
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
    """The distinct (input, weight) pairs of the terms that do not vanish (by identity)."""
    pairs = []
    for gi, g in enumerate(groups):
        for t in g.terms:
            if t.vanishes:
                continue
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

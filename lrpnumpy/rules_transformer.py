r"""LRP rules for transformers: AttnLRP (Achtibat et al., 2024) and CP-LRP (Ali et al., 2022).

The papers: AttnLRP [1]_, CP-LRP [2]_.

AttnLRP's rules, each a :class:`~lrpnumpy.rules.Rule` object:

* linear maps (Linear, residual Add): the epsilon rule (:class:`~lrpnumpy.rules.Epsilon`,
  :class:`~lrpnumpy.rules.Norm`);
* elementwise activations (GELU, SiLU) and RMSNorm: the identity rule
  (:class:`~lrpnumpy.rules.Pass`), ``R_in = R``;
* LayerNorm: :class:`LayerNormEpsilon`, the std held constant, then the epsilon rule on the
  now affine layer;
* Softmax: :class:`SoftmaxRule`, ``R_in = x (R - s sum(R))`` (their Proposition 3.1);
* MatMul and Mul of two activations: :class:`Uniform`, the epsilon rule on the bilinear map
  with each input taking half (their Proposition 3.3);
* MultiheadAttention and the blocks of :mod:`lrpnumpy.layers.transformer`: :class:`Inner`, the
  composite's rules on each primitive of their ``graph()``;
* a parameter added in the graph (a ViT's position embedding and class token):
  :class:`AddedParameter`, the epsilon rule with the parameter as a bias.

CP-LRP differs in that the attention weights (and a gate) are held constant:
:class:`HoldConstant` on MatMul and Mul sends all relevance through the other input, so relevance
flows through the values only.

References
----------
.. [1] Achtibat, Hatefi, Dreyer, Jain, Wiegand, Lapuschkin, Samek. "AttnLRP: Attention-Aware
   Layer-wise Relevance Propagation for Transformers". ICML 2024.
.. [2] Ali, Schnake, Eberle, Montavon, Müller, Wolf. "XAI for Transformers: Better Explanations
   through Conservative Propagation". ICML 2022.
"""

import functools

import numpy as np

from . import kernels
from .errors import RuleParameterError, UnsupportedLayerError
from .kernels import elementwise, step2
from .layers import LayerNorm, MultiheadAttention, Softmax
from .layers.transformer import ClassToken, GraphLayer, PositionEmbedding
from .layers.transformer_norm import _mean
from .layers.base import per_sample_sum
from .rules import Rule, _check_epsilon
from .stabilize import stabilize


#: Arrays of at least this many elements are worked on in place (fewer passes, no temporaries); on smaller
#: ones the per-call cost of doing so outweighs it.  The numbers are the same either way.
_LARGE = 1 << 16


def _usual_ledger(stabilizer, R, epsilon):
    ledger = {"stabilizer": stabilizer}
    if epsilon == 0:
        ledger["dropped"] = np.zeros(len(R), R.dtype)
    return ledger


def _stabilized(z, R, epsilon, scale=None):
    """Step 2 with its ledger: ``s = R / stabilize(z)`` (times ``scale`` if given), and per sample what the
    stabilizer absorbed (``sum s (stabilize(z) - z)``, ``s`` unscaled) and what reached zero denominators
    (dropped, only when epsilon is 0).  Large arrays with epsilon > 0 take one jitted pass under the numba
    backend (:func:`lrpnumpy.kernels.step2.stabilized_quotient`, the same bits)."""
    if (epsilon > 0 and z.size >= _LARGE and kernels.BACKEND == "numba" and z.dtype == R.dtype
            and z.shape == R.shape and type(z) is np.ndarray and type(R) is np.ndarray):
        s, stabilizer = step2.stabilized_quotient(z, R, epsilon, 1.0 if scale is None else scale)
        if np.isfinite(stabilizer).all():  # a non-finite denominator makes its term NaN: all were finite
            return s, _usual_ledger(stabilizer, R, epsilon)
    s, ledger = _stabilized_numpy(z, R, epsilon)
    if scale is not None:
        s *= s.dtype.type(scale)
    return s, ledger


def _stabilized_numpy(z, R, epsilon):
    zs = stabilize(z, epsilon)
    s = R / zs
    if zs.size < _LARGE:  # small arrays: the finiteness pass is cheaper than the error-state switch below
        if np.isfinite(zs).all():
            absorbed = zs - z
            absorbed *= s
            return s, _usual_ledger(per_sample_sum(absorbed), R, epsilon)
    else:
        # large ones (attention's (N, H, T, T)): the usual case first, in zs's memory; a non-finite
        # denominator makes its term NaN (inf - z times 0, or NaN), so a finite sum proves every one finite
        with np.errstate(invalid="ignore"):
            np.subtract(zs, z, out=zs)
            zs *= s
        stabilizer = per_sample_sum(zs)
        del zs
        if np.isfinite(stabilizer).all() or np.isfinite(stabilize(z, epsilon)).all():
            return s, _usual_ledger(stabilizer, R, epsilon)
    zs = stabilize(z, epsilon)  # the same numbers again, for the masked form
    finite = np.isfinite(zs)
    ledger = {"stabilizer": per_sample_sum(np.where(finite, s * (np.where(finite, zs, 0) - z), 0))}
    if epsilon == 0:
        ledger["dropped"] = per_sample_sum(np.where(finite, 0, R))
    return s, ledger


def _times(x, c):
    """``x * c``, in ``c``'s memory when ``c`` is a fresh array of the product's shape (the rules' step 4)."""
    if (type(c) is np.ndarray and c.shape == x.shape and c.dtype == x.dtype and c.flags.owndata
            and c.flags.writeable):
        return elementwise.multiply_into(x, c)  # large ones: the samples on the kernels' threads
    return x * c


def _check_two(rule, step):
    if not step.layer.products or len(step.inputs) != 2:
        raise UnsupportedLayerError(f"{rule!r} applies to products of two inputs (MatMul, Mul), not to {step.layer!r}")


class Uniform(Rule):
    r"""AttnLRP's rule for a product of two activations (MatMul, Mul): epsilon, each input half.

    ``z = a @ b`` (or ``a * b``) is bilinear; the epsilon rule on it with the relevance split
    uniformly between the two inputs (Proposition 3.3 of [1]):

    .. math:: R_{a,ik} = \tfrac12\, a_{ik} \sum_j b_{kj} \frac{R_{ij}}{z_{ij} + \epsilon\,\mathrm{sign}(z_{ij})},
              \qquad R_{b,kj} = \tfrac12\, b_{kj} \sum_i a_{ik} \frac{R_{ij}}{z_{ij} + \epsilon\,\mathrm{sign}(z_{ij})}

    so ``sum R_a + sum R_b = sum R z / stabilize(z)``; the difference is the stabilizer's.
    ``explain`` gets one relevance per input, like :class:`~lrpnumpy.layers.Add`'s rules.

    Parameters
    ----------
    epsilon : float, optional
    """

    def __init__(self, epsilon=1e-6):
        self.epsilon = _check_epsilon(epsilon)

    def _propagate(self, step, R):
        _check_two(self, step)
        a, b = step.inputs
        z = step.output                                                  # step 1: z = a @ b (the forward pass)
        s, ledger = _stabilized(z, R, self.epsilon, 0.5)                 # step 2: s = R / stabilize(z), halved
        c_a, c_b = step.layer.backward(s, step)                          # step 3: c = backward(s / 2), per input
        if c_b is c_a:  # (one array for both inputs: not written into)
            return (a * c_a, b * c_b), ledger
        return (_times(a, c_a), _times(b, c_b)), ledger                  # step 4: R = a * c


def _free_grad(step, s, i):
    """``backward(s)[i]``: the layer's one product for input ``i`` when it has it (MatMul, Mul), not both."""
    one = getattr(step.layer, "input_grad", None)
    return one(s, step, i) if one is not None else step.layer.backward(s, step)[i]


class HoldConstant(Rule):
    r"""CP-LRP's rule for a product of two activations: input ``constant`` held fixed.

    With the attention weights ``A`` (``MatMul(A, v)``, input 0) or a gate ``g`` (``Mul(g, v)``,
    input 0) held constant the product is linear in the other input, which gets all relevance
    by the epsilon rule; the constant input gets none:

    .. math:: R_{v,kj} = v_{kj} \sum_i A_{ik} \frac{R_{ij}}{z_{ij} + \epsilon\,\mathrm{sign}(z_{ij})}, \qquad R_A = 0

    Parameters
    ----------
    constant : {0, 1}, optional
        Which input is held constant (default 0: the attention weights of ``MatMul(A, v)``).
    epsilon : float, optional
    """

    def __init__(self, constant=0, epsilon=1e-6):
        if constant not in (0, 1) or isinstance(constant, bool):
            raise RuleParameterError(f"HoldConstant constant must be the input index 0 or 1, got {constant!r}")
        self.constant, self.epsilon = int(constant), _check_epsilon(epsilon)

    def _propagate(self, step, R):
        _check_two(self, step)
        a, b = step.inputs
        z = step.output                                                  # step 1: z = a @ b
        s, ledger = _stabilized(z, R, self.epsilon)                      # step 2: s = R / stabilize(z)
        c = _free_grad(step, s, 1 - self.constant)                       # step 3: c, the free input's only
        free = step.inputs[1 - self.constant]
        R_free = free * c                                                # step 4: R = x * c
        zero = np.zeros(step.inputs[self.constant].shape, R.dtype)
        return ((zero, R_free) if self.constant == 0 else (R_free, zero)), ledger


class SoftmaxRule(Rule):
    r"""AttnLRP's softmax rule (Proposition 3.1 of [1]): ``R_in = x (R - s sum(R))`` along the softmax axis.

    The deep Taylor decomposition of ``s = softmax(x)`` at ``x`` itself (the rest is a bias term):

    .. math:: R_{\mathrm{in}, i} = x_i \Big(R_i - s_i \sum_j R_j\Big)

    It does not conserve relevance by design: ``sum R_in = sum_j (x_j - sum_i s_i x_i) R_j``
    (the ledger's ``softmax`` entry is ``sum R - sum R_in``).  Inputs of ``-inf`` (masked
    positions, where ``s = 0``) get no relevance, as in lxt.  No stabilizer.
    """

    def _propagate(self, step, R):
        layer = step.layer
        if not isinstance(layer, Softmax) or layer.flatten:
            raise UnsupportedLayerError(f"{self!r} applies to Softmax on one axis, not to {layer!r}")
        x, s = step.input, step.output
        if not x.size or not x.min() > -np.inf:  # one pass without a temporary in the usual case (NaN: checked too)
            masked = np.isneginf(x)
            if masked.any():
                x = np.where(masked, x.dtype.type(0), x)
        axis = layer.axis % x.ndim
        if axis == 0 or R.size < _LARGE or not (R.dtype == x.dtype == s.dtype and R.flags.c_contiguous
                                                and x.flags.c_contiguous and s.flags.c_contiguous):
            R_in = s * R.sum(axis=axis, keepdims=True)  # x (R - s sum(R)), in one array
            np.subtract(R, R_in, out=R_in)
            R_in *= x
            return R_in, {"softmax": per_sample_sum(R) - per_sample_sum(R_in)}
        # large (attention's (N, H, T, T)): the same operations, the samples on the kernels' threads
        R_in, total, total_in = np.empty(R.shape, R.dtype), np.empty(len(R), R.dtype), np.empty(len(R), R.dtype)

        def run(lo, hi):
            r, out = R[lo:hi], R_in[lo:hi]
            np.multiply(s[lo:hi], r.sum(axis=axis, keepdims=True), out=out)
            np.subtract(r, out, out=out)
            out *= x[lo:hi]
            total[lo:hi], total_in[lo:hi] = per_sample_sum(r), per_sample_sum(out)
        elementwise.by_samples(run, R)
        return R_in, {"softmax": total - total_in}


class LayerNormEpsilon(Rule):
    r"""LayerNorm with the standard deviation held constant, then the epsilon rule (lxt's convention).

    With ``sigma`` constant the layer is affine, ``y = (x - mean(x)) / sigma * w + b``; the four
    steps on it:

    .. math:: s = \frac{R}{y + \epsilon\,\mathrm{sign}(y)}, \qquad
              c = \frac{w s - \mathrm{mean}(w s)}{\sigma}, \qquad R_{\mathrm{in}} = x\, c

    The bias absorbs ``sum s b``.  With ``b = 0`` this is the epsilon rule on the mean-centring
    followed by the identity through the division and the scale (AttnLRP's Proposition 3.4).
    """

    def __init__(self, epsilon=1e-6):
        self.epsilon = _check_epsilon(epsilon)

    def _propagate(self, step, R):
        layer = step.layer
        if not isinstance(layer, LayerNorm):
            raise UnsupportedLayerError(f"{self!r} applies to LayerNorm, not to {layer!r}")
        x, y = step.input, step.output
        axes = layer._axes(x.ndim)
        sigma = layer.held_scale(step)                                   # held constant (the forward pass's)
        s, ledger = _stabilized(y, R, self.epsilon)                      # step 1: z = y; step 2: s = R / z
        if layer.bias is not None:
            ledger["bias"] = per_sample_sum(s * layer.bias)
        if ((layer.weight is None or layer.weight.dtype == s.dtype) and getattr(sigma, "dtype", None) == s.dtype
                and type(s) is np.ndarray):
            ws = s if layer.weight is None else np.multiply(s, layer.weight, out=s)  # s is this call's own array
            c = np.subtract(ws, _mean(ws, axes), out=ws)  # step 3: c = backward with sigma fixed
            c /= sigma
        else:
            ws = s if layer.weight is None else s * layer.weight
            c = (ws - _mean(ws, axes)) / sigma
        return _times(x, c), ledger                                      # step 4: R = x * c


class Inner(Rule):
    """A MultiheadAttention's (or a transformer block's) relevance through its primitives, each with the
    composite's rule (its layer-type map: index, name and first-layer maps address the outer network).

    The ledger adds up the primitives' ledgers (what the projections' biases, the stabilizers
    and the softmax rule absorbed); :func:`expand` gives each primitive its own row instead.

    Parameters
    ----------
    composite : Composite
        Gives the rule of each primitive of :meth:`~lrpnumpy.layers.MultiheadAttention.graph`.
    """

    def __init__(self, composite):
        self.composite = composite
        self._resolved = {}

    def __repr__(self):
        return f"Inner({type(self.composite).__name__})"

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_resolved", None)  # rebuilt on use (keys are classes, values rule objects)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def check_dtype(self, dtype):
        return self

    def _rules(self, graph):
        """The rule of each of ``graph``'s layers, resolved once per sequence of layer types.

        The composite's type map depends on a layer's type only, so the resolution is kept on this rule,
        keyed by the types, with the map it was resolved against (an entry whose map entries are no longer
        the same type and rule objects is resolved again).  Nothing is kept on the layers; the rules'
        parameters are read at each call.  Reading and replacing dict entries is atomic, so threads share
        it safely (two may resolve the same key; they get equal lists).
        """
        from .composites import default_rule
        layer_map = self.composite.layer_map
        key = tuple(map(type, graph))
        cache = self.__dict__.get("_resolved")
        if cache is None:
            cache = self.__dict__.setdefault("_resolved", {})
        hit = cache.get(key)
        if hit is not None:
            pairs, rules = hit
            if len(pairs) == len(layer_map) and all(
                    t is u and r is q for (t, r), (u, q) in zip(pairs, layer_map)):
                return rules
        pairs = tuple((types, rule) for types, rule in layer_map)
        rules = tuple(next((rule for types, rule in pairs if isinstance(layer, types)), None) or default_rule(layer)
                      for layer in graph)
        if len(cache) >= 64:  # a bound for programs that build many kinds of blocks
            cache.clear()
        cache[key] = (pairs, rules)
        return rules

    def _propagate(self, step, R):
        R_in, ledger = self._walk(step, R)
        return R_in, ledger()

    def _propagate_deferred(self, step, R):
        if type(self).propagate is not Rule.propagate or type(self)._propagate is not Inner._propagate:
            return self.propagate(step, R)
        step.layer.check_grad(R, step, "relevance")
        return self._walk(step, R)

    def _walk(self, step, R):
        """The relevance through the primitives, and a callable giving the ledger: the primitives' ledgers
        added up key by key in the walk's order (the sums kept until the report is asked for)."""
        if not isinstance(step.layer, (MultiheadAttention, GraphLayer)):
            raise UnsupportedLayerError(f"{self!r} applies to MultiheadAttention and transformer blocks (GraphLayer), "
                                        f"not to {step.layer!r}")
        graph, trace = step.state
        # the type map only: index, name and first-layer maps address the outer network's layers
        rules = self._rules(graph)
        ledgers = []

        def visit(s, R_out):
            R_in, ledger = rules[s.index]._propagate_deferred(s, R_out)
            ledgers.append(ledger)
            return R_in
        return trace.reverse(R, visit), functools.partial(_added_up, ledgers)


def _added_up(ledgers):
    """The ledgers (dicts, or callables giving them) added up key by key, in order."""
    absorbed = {}
    for ledger in ledgers:
        for key, value in (ledger() if callable(ledger) else ledger).items():
            absorbed[key] = absorbed.get(key, 0) + value
    return absorbed


class AddedParameter(Rule):
    r"""A learned array added in the graph, treated as a bias: the position embedding, the class token.

    :class:`~lrpnumpy.layers.PositionEmbedding` (``y = x + p``): the epsilon rule on that affine map,

    .. math:: R_{\mathrm{in}} = x \frac{R}{y + \epsilon\,\mathrm{sign}(y)}

    the embedding absorbs ``sum p R / stabilize(y)`` (the ledger's ``bias``).
    :class:`~lrpnumpy.layers.ClassToken` (the token put first): the tokens keep their relevance and
    the class token's position is absorbed (``bias``).  With epsilon 0 both are what the gradient
    times the input gives (lxt's treatment of an added parameter).

    Parameters
    ----------
    epsilon : float, optional
    """

    def __init__(self, epsilon=1e-6):
        self.epsilon = _check_epsilon(epsilon)

    def _propagate(self, step, R):
        layer = step.layer
        if isinstance(layer, ClassToken):
            return np.ascontiguousarray(R[:, 1:]), {"bias": per_sample_sum(R[:, :1])}
        if not isinstance(layer, PositionEmbedding):
            raise UnsupportedLayerError(f"{self!r} applies to PositionEmbedding and ClassToken, not to {layer!r}")
        s, ledger = _stabilized(step.output, R, self.epsilon)            # steps 1-2: z = x + p, s = R / stabilize(z)
        ledger["bias"] = per_sample_sum(s * layer.pos_embedding)
        return step.input * s, ledger                                    # steps 3-4: c = s (identity), R = x * c

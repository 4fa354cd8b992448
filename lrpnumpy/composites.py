"""Which rule each layer of a network gets: composites and a name registry.

A :class:`Composite` picks a layer's rule in this order: an explicit layer
index (in execution order), then a node name, then the *first-layer* map (for
the first layer in execution order matching one of its types), then the
layer-type map, then :data:`DEFAULT_RULES` (LRP-0 on Linear/Conv2d, Norm on
sum/average pooling and on Add, winner-takes-all on max pooling, Pass
elsewhere), as Zennit's base layer map does.  The named composites mirror
Zennit's; a composite that needs parameters says so in ``needs``, and
:func:`get` can take them from data.
"""

import numpy as np

from .errors import RuleParameterError
from .registry import Registry
from .layers import (GRU, LSTM, WEIGHTED, AdaptiveAvgPool2d, Add, Conv2d, Embedding, GlobalAvgPool2d, Layer, Linear,
                     MaxPool2d, SumPool2d)
from .rules import (LRP0, AlphaBeta, Epsilon, Flat, Gamma, HalfHalf, Norm, Pass, Proportional, Rule, SignalTakesAll,
                    TokenSum, ToolboxAlphaBeta, WinnerTakesAll, WSquare, ZBox, ZPlus)

#: Composites by name (for the command line, benchmarks and :func:`get`); a class is named with
#: ``@register("name")`` where it is defined.
REGISTRY = Registry("composite")


def register(name, cls=None):
    """Add a composite class (or factory) to :data:`REGISTRY` under ``name``.

    ``register(name, cls)``, or ``@register(name)`` above the class; returns ``cls``.
    """
    return REGISTRY.register(name, cls)


#: The rule of every layer that nothing else gives one: the first matching entry wins.
DEFAULT_RULES = [((Linear, Conv2d), LRP0()), ((SumPool2d, GlobalAvgPool2d, AdaptiveAvgPool2d, Add), Norm()),
                 (MaxPool2d, WinnerTakesAll()), ((LSTM, GRU), SignalTakesAll(0.0)), (Embedding, TokenSum()),
                 (Layer, Pass())]


def default_rule(layer):
    """The rule :data:`DEFAULT_RULES` gives ``layer``."""
    return next(rule for types, rule in DEFAULT_RULES if isinstance(layer, types))


def _pairs(mapping, what):
    if mapping is None:
        return []
    if isinstance(mapping, dict):
        items = list(mapping.items())
    elif isinstance(mapping, (list, tuple)):
        items = list(mapping)
    else:
        raise RuleParameterError(f"{what} must be a dict or a list of (layer type, Rule) pairs, got {mapping!r}")
    pairs = []
    for item in items:
        try:
            types, rule = item
        except (TypeError, ValueError):
            raise RuleParameterError(f"{what} needs (layer type, Rule) pairs, got {item!r}") from None
        kinds = types if isinstance(types, tuple) else (types,)
        if not kinds or not all(isinstance(t, type) and issubclass(t, Layer) for t in kinds):
            raise RuleParameterError(f"{what} maps {types!r}, which is not a layer class or a tuple of them "
                                     f"(e.g. lrpnumpy.Conv2d)")
        if not isinstance(rule, Rule):
            raise RuleParameterError(f"{what} maps {types!r} to {rule!r}, which is not a Rule object")
        pairs.append((types, rule))
    return pairs


class Composite:
    """Rules per layer type, per first matching layer, and per layer index.

    Layers no entry matches get :func:`default_rule`.

    Parameters
    ----------
    layer_map : dict or list of (type or tuple of types, Rule)
        The first entry whose types match a layer (``isinstance``) wins.
    index_map : dict of int to Rule
        Rules for given layer indices in execution order (negative indices count from the
        end); these win over everything else.
    name_map : dict of str to Rule
        Rules for given node names (a :class:`~lrpnumpy.layers.Graph`'s names; a Sequential's
        are its indices as strings); they win over the type maps.
    first_map : dict or list of (type or tuple of types, Rule)
        Applied to the first layer matching any of its types only.
    """

    def __init__(self, layer_map=None, index_map=None, first_map=None, name_map=None):
        self.layer_map = _pairs(layer_map, "layer_map")
        if not isinstance(name_map or {}, dict) or not all(
                isinstance(k, str) and isinstance(v, Rule) for k, v in (name_map or {}).items()):
            raise RuleParameterError(f"name_map must be a dict {{node name: Rule}}, got {name_map!r}")
        self.name_map = dict(name_map or {})
        self.first_map = _pairs(first_map, "first_map")
        if not isinstance(index_map or {}, dict):
            raise RuleParameterError(f"index_map must be a dict {{layer index: Rule}}, got {index_map!r}")
        self.index_map = dict(index_map or {})
        for i, rule in self.index_map.items():
            if not isinstance(i, int) or isinstance(i, bool) or not isinstance(rule, Rule):
                raise RuleParameterError(f"index_map needs int -> Rule, got {i!r} -> {rule!r}")

    def __repr__(self):
        return (f"{type(self).__name__}(layer_map={self.layer_map!r}, first_map={self.first_map!r}, "
                f"index_map={self.index_map!r}, name_map={self.name_map!r})")

    #: Constructor parameters without a default that :func:`get` can take from data ("low", "high").
    needs = ()

    def rules(self, net):
        """One rule per layer of ``net`` (None where :func:`default_rule` applies)."""
        rules = [None] * len(net)
        for i, layer in enumerate(net):
            rules[i] = next((rule for types, rule in self.layer_map if isinstance(layer, types)), None)
        for types, rule in self.first_map:
            first = next((i for i, layer in enumerate(net) if isinstance(layer, types)), None)
            if first is not None:
                rules[first] = rule
        names = list(net.names)
        for name, rule in self.name_map.items():
            if name not in names:
                raise RuleParameterError(f"rule for node {name!r}: the network has no such node (nodes: "
                                         f"{', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
            rules[names.index(name)] = rule
        for i, rule in self.index_map.items():
            if not -len(net) <= i < len(net):
                raise RuleParameterError(f"rule index {i} is out of range for a network of {len(net)} layers")
            rules[i] = rule
        return rules


_WEIGHTED = WEIGHTED  # (the name kept from before)


@register("epsilon_plus")
class EpsilonPlus(Composite):
    """Linear -> Epsilon, Conv2d -> ZPlus."""

    def __init__(self, epsilon=1e-6, **kw):
        super().__init__([(Linear, Epsilon(epsilon)), (Conv2d, ZPlus())], **kw)


@register("epsilon_alpha2_beta1")
class EpsilonAlpha2Beta1(Composite):
    """Linear -> Epsilon, Conv2d -> AlphaBeta(2, 1)."""

    def __init__(self, epsilon=1e-6, **kw):
        super().__init__([(Linear, Epsilon(epsilon)), (Conv2d, AlphaBeta(2, 1))], **kw)


@register("epsilon_gamma_box")
class EpsilonGammaBox(Composite):
    """First Conv2d -> ZBox(low, high), other Conv2d -> Gamma, Linear -> Epsilon."""

    needs = ("low", "high")

    def __init__(self, low, high, epsilon=1e-6, gamma=0.25, **kw):
        super().__init__([(Linear, Epsilon(epsilon)), (Conv2d, Gamma(gamma))],
                         first_map=[(Conv2d, ZBox(low, high))], **kw)


@register("epsilon_plus_flat")
class EpsilonPlusFlat(Composite):
    """The first Conv2d or Linear -> Flat, the rest as :class:`EpsilonPlus`."""

    def __init__(self, epsilon=1e-6, **kw):
        super().__init__([(Linear, Epsilon(epsilon)), (Conv2d, ZPlus())], first_map=[(_WEIGHTED, Flat())], **kw)


@register("epsilon_alpha2_beta1_flat")
class EpsilonAlpha2Beta1Flat(Composite):
    """The first Conv2d or Linear -> Flat, the rest as :class:`EpsilonAlpha2Beta1`."""

    def __init__(self, epsilon=1e-6, **kw):
        super().__init__([(Linear, Epsilon(epsilon)), (Conv2d, AlphaBeta(2, 1))],
                         first_map=[(_WEIGHTED, Flat())], **kw)


@register("deep_taylor")
class DeepTaylor(Composite):
    """The paper's deep Taylor LRP rules: ZBox on the first layer, ZPlus on other Conv2d and Linear."""

    needs = ("low", "high")

    def __init__(self, low, high, **kw):
        super().__init__([(_WEIGHTED, ZPlus())], first_map=[(_WEIGHTED, ZBox(low, high))], **kw)


class SingleRule(Composite):
    """One rule on every Conv2d and Linear layer."""

    def __init__(self, rule, **kw):
        super().__init__([(_WEIGHTED, rule)], **kw)


@register("lrp_toolbox")
class LRPToolbox(Composite):
    r"""The rules of the LRP Toolbox's Python code (Lapuschkin et al., 2016), one name for the network.

    Parameters
    ----------
    rule : {"simple", "epsilon", "alphabeta", "flat", "ww"}
    param : float, optional
        ``epsilon`` for "epsilon" (default 0.01), ``alpha`` for "alphabeta" (default 2;
        ``beta = 1 - alpha``).

    Notes
    -----
    What the Toolbox's code does, written with lrpnumpy's rules:

    * Linear and Conv2d: "simple" is the z-rule with ``1e-16 sign(z)`` added to ``z`` (``sign(0) =
      +1``): ``Epsilon(1e-16)``; "epsilon" is ``Epsilon(param)``; "alphabeta" is
      :class:`~lrpnumpy.rules.ToolboxAlphaBeta` (products and bias split by sign, ``1e-16`` added
      to both denominators, an empty side not renormalised); "flat" is ``Flat(0)`` (``1 / fan_in``);
      "ww" is ``WSquare(0, bias=False)`` (``w^2 / sum w^2``).
    * Sum pooling (whose forward pass scales the window sum ``S`` by ``1 / sqrt(h w)``): ``x_i /
      (S + e sign(S))`` on the *unscaled* sum with ``e = 1e-12`` ("simple") or ``epsilon``, which is
      ``Norm(e * scale)`` on the scaled layer; "alphabeta" splits the inputs by sign (1e-16 added);
      "flat" and "ww" share equally over the window.  The Toolbox's own sum-pool alpha-beta code
      multiplies its beta term by R twice when ``alpha (1 - alpha) != 0``; lrpnumpy applies the
      formula instead (the term vanishes after a ReLU, where sum pools usually sit).
    * Max pooling: winner-takes-all with ties split equally ("simple", "epsilon", "alphabeta");
      equal shares over the window ("flat", "ww").
    * ReLU, Tanh, SoftMax, Flatten pass relevance on.  The Toolbox's demos start from the softmax
      output of the target (``relevance_out=probabilities * onehot``); :func:`lrpnumpy.explain`
      starts from the logit unless given ``relevance_out``.
    """

    RULES = ("simple", "epsilon", "alphabeta", "flat", "ww")

    def __init__(self, rule="simple", param=None, **kw):
        if rule not in self.RULES:
            raise RuleParameterError(f"lrp_toolbox rule must be one of {', '.join(self.RULES)}, got {rule!r}")
        default = {"epsilon": 0.01, "alphabeta": 2.0}.get(rule)
        if param is not None and default is None:
            raise RuleParameterError(f"lrp_toolbox rule {rule!r} takes no parameter, got param={param!r}")
        param = default if param is None else param
        if param is not None and not (isinstance(param, (int, float)) and np.isfinite(param)):
            raise RuleParameterError(f"lrp_toolbox param must be a finite number, got {param!r}")
        if rule == "epsilon" and param < 0:
            raise RuleParameterError(f"lrp_toolbox epsilon must be >= 0, got {param!r}")
        self.rule, self.param = rule, None if param is None else float(param)
        weighted = {"simple": Epsilon(1e-16), "epsilon": Epsilon(self.param or 0.0),
                    "alphabeta": ToolboxAlphaBeta(self.param or 0.0, 1e-16), "flat": Flat(0.0),
                    "ww": WSquare(0.0, bias=False)}[rule]
        maxpool = Flat(0.0) if rule in ("flat", "ww") else WinnerTakesAll("split")
        super().__init__([(_WEIGHTED, weighted), (MaxPool2d, maxpool)], **kw)

    def __repr__(self):
        return f"LRPToolbox(rule={self.rule!r}, param={self.param!r})"

    def _sum_pool_rule(self, layer):
        if self.rule in ("flat", "ww"):
            return Flat(0.0)
        if self.rule == "alphabeta":
            return ToolboxAlphaBeta(self.param, 1e-16 * layer.scale)
        return Norm((1e-12 if self.rule == "simple" else self.param) * layer.scale)

    def rules(self, net):
        rules = super().rules(net)
        explicit = {i % len(net) for i in self.index_map} | {list(net.names).index(n) for n in self.name_map}
        return [self._sum_pool_rule(layer) if type(layer) is SumPool2d and i not in explicit else rule
                for i, (layer, rule) in enumerate(zip(net, rules))]


@register("attnlrp")
class AttnLRP(Composite):
    """AttnLRP (Achtibat et al., ICML 2024): see :mod:`lrpnumpy.rules_transformer`.

    Linear and Conv2d (a ViT's patch embedding) -> Epsilon (Gamma(gamma) when ``gamma`` is given, as
    lxt's ViT example), residual Add -> Norm(epsilon), LayerNorm -> LayerNormEpsilon, Softmax ->
    SoftmaxRule, MatMul and Mul -> Uniform, MultiheadAttention and the transformer blocks
    (:class:`~lrpnumpy.layers.transformer.GraphLayer`) -> Inner (these rules on their primitives),
    PositionEmbedding and ClassToken -> AddedParameter (a bias); GELU, SiLU, RMSNorm and the rest
    pass relevance on (the identity rule).
    """

    def __init__(self, epsilon=1e-6, gamma=None, **kw):
        from .layers import LayerNorm, MatMul, Mul, MultiheadAttention, Softmax
        from .layers.transformer import ClassToken, GraphLayer, PositionEmbedding
        from .rules_transformer import AddedParameter, Inner, LayerNormEpsilon, SoftmaxRule, Uniform
        self.epsilon, self.gamma = epsilon, gamma
        linear = Epsilon(epsilon) if gamma is None else Gamma(gamma, epsilon)
        super().__init__([((Linear, Conv2d), linear), (Add, Norm(epsilon)), (LayerNorm, LayerNormEpsilon(epsilon)),
                          (Softmax, SoftmaxRule()), ((MatMul, Mul), Uniform(epsilon)),
                          ((MultiheadAttention, GraphLayer), Inner(self)),
                          ((PositionEmbedding, ClassToken), AddedParameter(epsilon))], **kw)

    def __repr__(self):
        return f"{type(self).__name__}(epsilon={self.epsilon!r}, gamma={self.gamma!r})"


@register("cp_lrp")
class CPLRP(Composite):
    """CP-LRP (Ali et al., ICML 2022): the attention weights held constant, relevance through the values.

    As :class:`AttnLRP`, but MatMul and Mul -> HoldConstant(0) (the first input, the attention
    weights of ``MatMul(A, v)`` or a gate of ``Mul(g, v)``, gets no relevance) and Softmax ->
    Pass (it receives none).
    """

    def __init__(self, epsilon=1e-6, **kw):
        from .layers import LayerNorm, MatMul, Mul, MultiheadAttention
        from .layers.transformer import ClassToken, GraphLayer, PositionEmbedding
        from .rules_transformer import AddedParameter, HoldConstant, Inner, LayerNormEpsilon
        self.epsilon = epsilon
        super().__init__([((Linear, Conv2d), Epsilon(epsilon)), (Add, Norm(epsilon)),
                          (LayerNorm, LayerNormEpsilon(epsilon)), ((MatMul, Mul), HoldConstant(0, epsilon)), ((MultiheadAttention, GraphLayer), Inner(self)),
                          ((PositionEmbedding, ClassToken), AddedParameter(epsilon))], **kw)

    def __repr__(self):
        return f"{type(self).__name__}(epsilon={self.epsilon!r})"


class _Recurrent(Composite):
    """Epsilon on every Linear and convolution, a product rule in every LSTM and GRU (Arras et al.)."""

    product = None

    def __init__(self, epsilon=1e-3, bias_factor=0.0, **kw):
        super().__init__([(_WEIGHTED, Epsilon(epsilon, bias_factor)),
                          ((LSTM, GRU), self.product(epsilon, bias_factor))], **kw)
        self.epsilon, self.bias_factor = epsilon, bias_factor

    def __repr__(self):
        return f"{type(self).__name__}(epsilon={self.epsilon!r}, bias_factor={self.bias_factor!r})"


@register("lrp_all")
class LRPAll(_Recurrent):
    """LRP-all (Arras et al. 2017): a product's signal takes all its relevance."""

    product = SignalTakesAll


@register("lrp_half")
class LRPHalf(_Recurrent):
    """LRP-half (Arras et al. 2019): gate and signal take half each."""

    product = HalfHalf


@register("lrp_prop")
class LRPProp(_Recurrent):
    """LRP-prop (Arras et al. 2019): gate and signal in proportion to their values."""

    product = Proportional


def get(name, data=None, bounds=None, **kwargs):
    """Build a registered composite by name.

    Parameters
    ----------
    name : str
        A key of :data:`REGISTRY`, e.g. ``"epsilon_gamma_box"``.
    data : ndarray, optional
        Supplies ``low`` and ``high`` (its minimum and maximum) to composites that need them
        (their ``needs``) and were not given them; other composites ignore it.
    bounds : (float, float), optional
        ``(low, high)`` for composites that need them; others ignore it.
    **kwargs
        Passed to the composite's constructor.

    Examples
    --------
    >>> get("epsilon_gamma_box", low=0.0, high=1.0)    # doctest: +SKIP
    >>> get(name, data=x)   # any registered name: bounds from the data where needed  # doctest: +SKIP
    """
    cls = REGISTRY.lookup(name)
    needs = getattr(cls, "needs", ())
    if bounds is not None and "low" in needs:
        kwargs.setdefault("low", bounds[0])
        kwargs.setdefault("high", bounds[1])
    if data is not None and "low" in needs and ("low" not in kwargs or "high" not in kwargs):
        data = np.asarray(data)
        kwargs.setdefault("low", float(data.min()))
        kwargs.setdefault("high", float(data.max()))
    missing = [k for k in needs if k not in kwargs]
    if missing:
        raise RuleParameterError(f"composite {name!r} needs {', '.join(missing)} (give them, or data=... to take "
                                 f"them from the data's range)")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise RuleParameterError(f"composite {name!r}: {exc}") from None

"""Transformer blocks and vision-transformer pieces, each a Layer that runs as a Graph of primitives.

A :class:`GraphLayer` holds named sub-layers (its *children*) and wires them in :meth:`~GraphLayer.graph`;
its forward pass runs that graph, so a trace, a rule composite (``"attnlrp"``, ``"cp_lrp"``, through
:class:`~lrpnumpy.rules_transformer.Inner`) and :func:`~lrpnumpy.layers.expand` see every primitive.
Parameters are reachable by PyTorch's nested names: ``block.self_attn.in_proj_weight``,
``block.linear1.weight``, ``block.norm1.bias``; the same dotted strings are the layer's ``params``
(what :func:`lrpnumpy.train.fit`, saving and ``astype`` use), so ``getattr(block, "linear1.weight")``
works too.

* :class:`TransformerEncoderLayer`: PyTorch's ``torch.nn.TransformerEncoderLayer`` (batch first,
  no dropout), pre-norm (``norm_first=True``, as ViTs) or post-norm.
* :class:`SwiGLUBlock`: LLaMA's gated MLP ``down_proj(silu(gate_proj(h)) * up_proj(h))`` on
  ``h = RMSNorm(x)``, with the residual connection.
* Vision-transformer pieces: :class:`PatchEmbedding` (a strided Conv2d, its output read as tokens
  (N, T, E)), :class:`ClassToken` (a learned token put first), :class:`PositionEmbedding` (a learned
  (1, T, E) array added) and :class:`SelectToken` (one token's features, the class token's for the
  classifier head).
"""

import math
import numbers

import numpy as np

from ..errors import LayerParameterError, LRPError, ShapeError
from .activation import ReLU
from .attention import GELU, MultiheadAttention, Mul, SiLU, inner_trace
from .base import Layer, as_dtype, make_rng
from .conv import Conv2d
from .graph import Graph
from .linear import Linear
from .merge import Add
from .transformer_norm import LayerNorm, RMSNorm


def _positive_int(value, name):
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1):
        raise LayerParameterError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _dotted(children):
    """``(params, optional)`` of a block: ``child.param`` for every child's parameter, in order."""
    params, optional = [], []
    for name, cls in children:
        for p in cls.params:
            params.append(f"{name}.{p}")
            if p in cls.optional:
                optional.append(f"{name}.{p}")
    return tuple(params), tuple(optional)


def _uniform_linear(layer, rng, dtype):
    """PyTorch's default range for a Linear's weight, ``U(+-1 / sqrt(in_features))``, and zero bias."""
    bound = 1 / math.sqrt(layer.in_features)
    layer.weight = rng.uniform(-bound, bound, (layer.out_features, layer.in_features)).astype(dtype)
    if layer.bias is not None:
        layer.bias = np.zeros(layer.out_features, dtype)


def _blank(cls, *args, **kw):
    """A configured layer without parameters yet (``from_config`` or ``_init_params`` fills them)."""
    layer = cls.__new__(cls)
    layer._configure(*args, **kw)
    return layer


class _InnerState(tuple):
    """``(graph, trace)`` of a GraphLayer's call; ``memo`` keeps the input gradient that
    :meth:`GraphLayer.param_grads` computed on the way, for the ``backward`` call that follows."""

    memo = None


def _walk(graph, trace, grad):
    """``(input gradient, {dotted parameter name: gradient})`` of ``graph``'s pass, in one reverse walk."""
    grads = {}

    def visit(s, g):
        layer, name = s.layer, graph.names[s.index]
        if isinstance(layer, GraphLayer):
            layer.check_grad(g, s)
            g_in, sub = _walk(*s.state, g)
        elif isinstance(layer, MultiheadAttention):
            layer.check_grad(g, s)
            g_in, sub = _attention_grads(layer, s, g)
        elif layer.params:
            sub, g_in = layer.param_grads(g, s), layer.backward(g, s)
        else:
            return layer.backward(g, s)
        grads.update((f"{name}.{k}", v) for k, v in sub.items())
        return g_in
    return trace.reverse(grad, visit), grads


def _attention_grads(mha, step, grad):
    """A MultiheadAttention's input and parameter gradients from one walk of its inner graph."""
    g_in, g = _walk(*step.state, grad)
    bias = mha.in_proj_bias is not None
    return g_in, {"in_proj_weight": np.concatenate([g[f"{n}.weight"] for n in "qkv"]),
                  "in_proj_bias": np.concatenate([g[f"{n}.bias"] for n in "qkv"]) if bias else None,
                  "out_proj_weight": g["out_proj.weight"], "out_proj_bias": g["out_proj.bias"] if bias else None}


def _child_param(head, rest):
    def get(self):
        child = self.__dict__.get(head)
        if child is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {head + '.' + rest!r}")
        return getattr(child, rest)
    return get


class GraphLayer(Layer):
    """A layer made of named sub-layers wired as a Graph (:meth:`graph`).

    Subclasses set ``children`` (the attribute names of their parametric sub-layers, which are
    also their node names in the graph), ``params``/``optional`` (from :func:`_dotted`) and
    implement ``_configure`` (building the children without parameters), ``_init_params``,
    :meth:`graph` and :meth:`output_shape`.  Forward, backward, parameter gradients, copies,
    dtype changes and saving follow from the children.
    """

    abstract = True
    children = ()
    #: Whether :meth:`graph` is built from the checked children alone, so that the inner primitives need no
    #: input checks of their own once the block's input is checked (see :func:`~lrpnumpy.layers.attention.inner_trace`);
    #: the built-in blocks say so, a subclass elsewhere keeps every check unless it does.
    checked_graph = False

    # ----- nested parameter names -----

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # a read-only property per dotted parameter name ("norm1.weight"): getattr finds it in the class
        # without the failed lookup and __getattr__ call (layers read their parameters on every call)
        for name in cls.__dict__.get("params", ()):
            head, dot, rest = name.partition(".")
            if dot and not isinstance(getattr(cls, name, None), property):
                setattr(cls, name, property(_child_param(head, rest)))

    def __getattr__(self, name):
        head, dot, rest = name.partition(".")
        child = self.__dict__.get(head) if dot else None
        if child is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(child, rest)

    def __setattr__(self, name, value):
        head, dot, rest = name.partition(".")
        if dot:
            child = self.__dict__.get(head)
            if child is None:
                raise ShapeError(f"{self._label()} has no sub-layer {head!r}; it has {list(self.children)}")
            try:
                setattr(child, rest, value)  # the child checks shape, dtype and finiteness
            except LRPError as exc:
                raise type(exc)(f"{name} of {self._label()}: {exc}") from None
        else:
            object.__setattr__(self, name, value)

    def param_shapes(self):
        return {f"{c}.{k}": v for c in self.children for k, v in self.__dict__[c].param_shapes().items()}

    def copy(self):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        for c in self.children:
            new.__dict__[c] = self.__dict__[c].copy()
        new.clear()
        return new

    def clear(self):
        super().clear()
        for c in self.children:
            self.__dict__[c].clear()

    # ----- running -----

    def graph(self):
        """The block as a Graph whose nodes are this layer's children (the same objects) and primitives."""
        raise NotImplementedError

    def _graph(self):
        """:meth:`graph`, built once for a frozen layer (kept while its parameters are the same read-only
        arrays, as rules keep derived weights: :meth:`~lrpnumpy.layers.Layer.derived`), else every call."""
        return self.derived("graph", self.graph)

    def _apply(self, a):
        graph = self._graph()
        y, trace = inner_trace(graph, a) if self.checked_graph else graph.forward_trace(a)
        return y, _InnerState((graph, trace))

    def _forward(self, a):
        return self._graph().forward(a)

    def _backward(self, grad, step):
        memo = step.state.memo
        if memo is not None and memo[0] is grad:
            step.state.memo = None
            return memo[1]
        return step.state[1].reverse(grad, lambda s, g: s.layer.backward(g, s))

    def param_grads(self, grad, step):
        self.check_grad(grad, step)
        g_in, grads = _walk(*step.state, grad)
        step.state.memo = (grad, g_in)
        return {name: grads.get(name) for name in self.params}

    def inner_steps(self, step):
        """``[(node name, Step), ...]`` of the inner graph for this layer's ``step`` (what LRP walks)."""
        graph, trace = step.state
        return list(zip(graph.names, trace))


def _check_tokens(layer, input_shape, width):
    if len(input_shape) != 3 or input_shape[2] != width:
        raise ShapeError(f"{layer!r} expects tokens (N, T, {width}), got shape {tuple(input_shape)}")
    if input_shape[1] == 0:
        raise ShapeError(f"{layer!r} needs at least one token, got shape {tuple(input_shape)}")
    return tuple(input_shape)


class TransformerEncoderLayer(GraphLayer):
    r"""PyTorch's ``TransformerEncoderLayer`` (``batch_first=True``, no dropout) on tokens (N, T, d_model).

    Pre-norm (``norm_first=True``)::

        h = x + self_attn(norm1(x));  y = h + linear2(act(linear1(norm2(h))))

    post-norm: ``h = norm1(x + self_attn(x)); y = norm2(h + linear2(act(linear1(h))))``.
    Graph nodes: ``norm1``, ``self_attn`` (a :class:`~lrpnumpy.layers.MultiheadAttention`, itself a
    graph), ``add1``, ``norm2``, ``linear1``, ``act``, ``linear2``, ``add2``.

    Parameters
    ----------
    d_model, nhead, dim_feedforward : int
        ``nhead`` must divide ``d_model``.
    activation : {"gelu", "relu"}, optional
    norm_first : bool, optional
    layer_norm_eps : float, optional
    bias : bool, optional
        Whether the projections and the norms have biases.
    causal : bool, optional
        Causal self-attention.
    rng : None, int or Generator, optional
    dtype : float32 or float64, optional
    """

    checked_graph = True
    children = ("self_attn", "linear1", "linear2", "norm1", "norm2")
    params, optional = _dotted([("self_attn", MultiheadAttention), ("linear1", Linear), ("linear2", Linear),
                                ("norm1", LayerNorm), ("norm2", LayerNorm)])
    config_keys = ("d_model", "nhead", "dim_feedforward", "activation", "norm_first", "layer_norm_eps", "bias",
                   "causal")

    def __init__(self, d_model, nhead, dim_feedforward=2048, activation="gelu", norm_first=True,
                 layer_norm_eps=1e-5, bias=True, causal=False, rng=None, dtype=np.float64):
        self._configure(d_model, nhead, dim_feedforward, activation, norm_first, layer_norm_eps, bias, causal)
        self._initialise(rng, as_dtype(dtype))

    def _configure(self, d_model, nhead, dim_feedforward=2048, activation="gelu", norm_first=True,
                   layer_norm_eps=1e-5, bias=True, causal=False):
        self.d_model = _positive_int(d_model, "d_model")
        self.dim_feedforward = _positive_int(dim_feedforward, "dim_feedforward")
        if activation not in ("gelu", "relu"):
            raise LayerParameterError(f"activation must be 'gelu' or 'relu', got {activation!r}")
        self.activation, self.norm_first, self.bias = activation, bool(norm_first), bool(bias)
        self.self_attn = _blank(MultiheadAttention, d_model, nhead, bias=bias, causal=causal)
        self.nhead, self.causal = self.self_attn.num_heads, self.self_attn.causal
        self.linear1 = _blank(Linear, d_model, dim_feedforward, bias)
        self.linear2 = _blank(Linear, dim_feedforward, d_model, bias)
        self.norm1 = _blank(LayerNorm, d_model, layer_norm_eps)
        self.norm2 = _blank(LayerNorm, d_model, layer_norm_eps)
        self.layer_norm_eps = self.norm1.eps

    def _init_params(self, rng, dtype):
        gen = make_rng(rng)
        self.self_attn._init_params(gen, dtype)
        _uniform_linear(self.linear1, gen, dtype)
        _uniform_linear(self.linear2, gen, dtype)
        for norm in (self.norm1, self.norm2):
            norm.weight = np.ones(self.d_model, dtype)
            norm.bias = np.zeros(self.d_model, dtype) if self.bias else None

    def __repr__(self):
        extra = "" if self.activation == "gelu" else f", activation={self.activation!r}"
        extra += "" if self.norm_first else ", norm_first=False"
        extra += "" if self.bias else ", bias=False"
        extra += ", causal=True" if self.causal else ""
        return f"TransformerEncoderLayer({self.d_model}, {self.nhead}, {self.dim_feedforward}{extra})"

    def graph(self):
        act = GELU() if self.activation == "gelu" else ReLU()
        if self.norm_first:
            nodes = [("norm1", self.norm1, "input"), ("self_attn", self.self_attn, "norm1"),
                     ("add1", Add(), ["self_attn", "input"]), ("norm2", self.norm2, "add1"),
                     ("linear1", self.linear1, "norm2"), ("act", act, "linear1"), ("linear2", self.linear2, "act"),
                     ("add2", Add(), ["linear2", "add1"])]
        else:
            nodes = [("self_attn", self.self_attn, "input"), ("add1", Add(), ["self_attn", "input"]),
                     ("norm1", self.norm1, "add1"), ("linear1", self.linear1, "norm1"), ("act", act, "linear1"),
                     ("linear2", self.linear2, "act"), ("add2", Add(), ["linear2", "norm1"]),
                     ("norm2", self.norm2, "add2")]
        return Graph(nodes)

    def output_shape(self, input_shape):
        return _check_tokens(self, input_shape, self.d_model)


class SwiGLUBlock(GraphLayer):
    r"""LLaMA's gated MLP with its RMSNorm and residual: ``y = x + down_proj(silu(gate_proj(h)) * up_proj(h))``,
    ``h = norm(x)`` (no biases).

    Graph nodes: ``norm`` (:class:`~lrpnumpy.layers.RMSNorm`), ``gate_proj``, ``act``
    (:class:`~lrpnumpy.layers.SiLU`), ``up_proj``, ``gated`` (:class:`~lrpnumpy.layers.Mul`, the gate
    first, so CP-LRP holds it constant), ``down_proj``, ``add``.

    Parameters
    ----------
    dim, hidden_dim : int
    eps : float, optional
        RMSNorm's.
    rng : None, int or Generator, optional
    dtype : float32 or float64, optional
    """

    checked_graph = True
    children = ("norm", "gate_proj", "up_proj", "down_proj")
    params, optional = _dotted([("norm", RMSNorm), ("gate_proj", Linear), ("up_proj", Linear),
                                ("down_proj", Linear)])
    config_keys = ("dim", "hidden_dim", "eps")

    def __init__(self, dim, hidden_dim, eps=1e-6, rng=None, dtype=np.float64):
        self._configure(dim, hidden_dim, eps)
        self._initialise(rng, as_dtype(dtype))

    def _configure(self, dim, hidden_dim, eps=1e-6):
        self.dim, self.hidden_dim = _positive_int(dim, "dim"), _positive_int(hidden_dim, "hidden_dim")
        self.norm = _blank(RMSNorm, dim, eps)
        self.eps = self.norm.eps
        self.gate_proj = _blank(Linear, dim, hidden_dim, False)
        self.up_proj = _blank(Linear, dim, hidden_dim, False)
        self.down_proj = _blank(Linear, hidden_dim, dim, False)

    def _init_params(self, rng, dtype):
        gen = make_rng(rng)
        self.norm.weight = np.ones(self.dim, dtype)
        for layer in (self.gate_proj, self.up_proj, self.down_proj):
            _uniform_linear(layer, gen, dtype)

    def __repr__(self):
        return f"SwiGLUBlock({self.dim}, {self.hidden_dim})"

    def graph(self):
        return Graph([("norm", self.norm, "input"), ("gate_proj", self.gate_proj, "norm"),
                      ("act", SiLU(), "gate_proj"), ("up_proj", self.up_proj, "norm"),
                      ("gated", Mul(), ["act", "up_proj"]), ("down_proj", self.down_proj, "gated"),
                      ("add", Add(), ["down_proj", "input"])])

    def output_shape(self, input_shape):
        return _check_tokens(self, input_shape, self.dim)


class ToTokens(Layer):
    """Feature maps (N, C, H, W) read as tokens (N, H * W, C), row by row (as torchvision's ViT)."""

    rearranges = True

    def __repr__(self):
        return "ToTokens()"

    def output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ShapeError(f"{self!r} expects feature maps (N, C, H, W), got shape {tuple(input_shape)}")
        n, c, h, w = input_shape
        return (n, h * w, c)

    def _forward(self, a):
        n, c, h, w = a.shape
        return np.ascontiguousarray(a.reshape(n, c, h * w).transpose(0, 2, 1))

    def _backward(self, grad, step):
        return np.ascontiguousarray(grad.transpose(0, 2, 1)).reshape(step.input.shape)


class PatchEmbedding(GraphLayer):
    """Images (N, C, H, W) cut into ``patch_size`` patches, each projected to ``embed_dim``: tokens (N, T, E).

    A Conv2d with kernel and stride ``patch_size`` (``proj``, as timm's ``patch_embed.proj``; torchvision's
    ``conv_proj``), then :class:`ToTokens`; ``T = (H // p) * (W // p)``, patches numbered row by row.
    H and W must be multiples of the patch size.
    """

    checked_graph = True
    children = ("proj",)
    params, optional = _dotted([("proj", Conv2d)])
    config_keys = ("in_channels", "embed_dim", "patch_size")

    def __init__(self, in_channels, embed_dim, patch_size, rng=None, dtype=np.float64):
        self._configure(in_channels, embed_dim, patch_size)
        self._initialise(rng, as_dtype(dtype))

    def _configure(self, in_channels, embed_dim, patch_size):
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.embed_dim = _positive_int(embed_dim, "embed_dim")
        self.patch_size = _positive_int(patch_size, "patch_size")
        self.proj = _blank(Conv2d, in_channels, embed_dim, patch_size, stride=patch_size)

    def _init_params(self, rng, dtype):
        gen = make_rng(rng)
        fan_in = self.in_channels * self.patch_size ** 2
        bound = 1 / math.sqrt(fan_in)
        self.proj.weight = gen.uniform(-bound, bound, self.proj.param_shapes()["weight"]).astype(dtype)
        self.proj.bias = np.zeros(self.embed_dim, dtype)

    def __repr__(self):
        return f"PatchEmbedding({self.in_channels}, {self.embed_dim}, patch_size={self.patch_size})"

    def graph(self):
        return Graph([("proj", self.proj, "input"), ("tokens", ToTokens(), "proj")])

    def output_shape(self, input_shape):
        p = self.patch_size
        if len(input_shape) != 4 or input_shape[1] != self.in_channels or input_shape[2] % p or input_shape[3] % p \
                or input_shape[2] < p or input_shape[3] < p:
            raise ShapeError(f"{self!r} expects images (N, {self.in_channels}, H, W) with H and W multiples of "
                             f"{p}, got shape {tuple(input_shape)}")
        return (input_shape[0], (input_shape[2] // p) * (input_shape[3] // p), self.embed_dim)


class ClassToken(Layer):
    """A learned token ``cls_token`` (1, 1, E) put before the tokens: (N, T, E) -> (N, T + 1, E).

    For LRP it is a parameter added in the graph, like a bias: the relevance that reaches the class
    token's position (at the input of the first block) is what it absorbs
    (:class:`~lrpnumpy.rules_transformer.AddedParameter`).
    """

    params = ("cls_token",)
    optional = ()
    config_keys = ("embed_dim",)

    def __init__(self, embed_dim, rng=None, dtype=np.float64):
        self._configure(embed_dim)
        self._initialise(rng, as_dtype(dtype))

    def _configure(self, embed_dim):
        self.embed_dim = _positive_int(embed_dim, "embed_dim")

    def _init_params(self, rng, dtype):
        self.cls_token = (make_rng(rng).standard_normal((1, 1, self.embed_dim)) * 0.02).astype(dtype)

    def param_shapes(self):
        return {"cls_token": (1, 1, self.embed_dim)}

    def __repr__(self):
        return f"ClassToken({self.embed_dim})"

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[2] != self.embed_dim:
            raise ShapeError(f"{self!r} expects tokens (N, T, {self.embed_dim}), got shape {tuple(input_shape)}")
        n, t, e = input_shape
        return (n, t + 1, e)

    def _forward(self, a):
        out = np.empty((a.shape[0], a.shape[1] + 1, self.embed_dim), a.dtype)  # (two copies: a third of
        out[:, :1] = self.cls_token                                             # concatenate's time)
        out[:, 1:] = a
        return out

    def _backward(self, grad, step):
        return np.ascontiguousarray(grad[:, 1:])

    def param_grads(self, grad, step):
        self.check_grad(grad, step)
        return {"cls_token": grad[:, :1].sum(axis=0, keepdims=True)}


class PositionEmbedding(Layer):
    """A learned ``pos_embedding`` (1, num_tokens, E) added to tokens (N, num_tokens, E) (torchvision's name).

    For LRP it is a bias: the epsilon rule gives the tokens ``x R / (x + p)`` and the embedding absorbs
    the rest (:class:`~lrpnumpy.rules_transformer.AddedParameter`).
    """

    params = ("pos_embedding",)
    optional = ()
    config_keys = ("num_tokens", "embed_dim")

    def __init__(self, num_tokens, embed_dim, rng=None, dtype=np.float64):
        self._configure(num_tokens, embed_dim)
        self._initialise(rng, as_dtype(dtype))

    def _configure(self, num_tokens, embed_dim):
        self.num_tokens = _positive_int(num_tokens, "num_tokens")
        self.embed_dim = _positive_int(embed_dim, "embed_dim")

    def _init_params(self, rng, dtype):
        shape = (1, self.num_tokens, self.embed_dim)
        self.pos_embedding = (make_rng(rng).standard_normal(shape) * 0.02).astype(dtype)

    def param_shapes(self):
        return {"pos_embedding": (1, self.num_tokens, self.embed_dim)}

    def __repr__(self):
        return f"PositionEmbedding({self.num_tokens}, {self.embed_dim})"

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[2] != self.embed_dim:
            raise ShapeError(f"{self!r} expects tokens (N, T, {self.embed_dim}), got shape {tuple(input_shape)}")
        if input_shape[1] != self.num_tokens:
            raise ShapeError(f"{self!r}: the sequence has {input_shape[1]} tokens but there are position "
                             f"embeddings for {self.num_tokens}; the lengths must match")
        return tuple(input_shape)

    def _forward(self, a):
        return a + self.pos_embedding

    def _backward(self, grad, step):
        return grad

    def param_grads(self, grad, step):
        self.check_grad(grad, step)
        return {"pos_embedding": grad.sum(axis=0, keepdims=True)}


class SelectToken(Layer):
    """One token's features: (N, T, E) -> (N, E) (``index=0``: the class token, for the classifier head).

    A selection: gradients and relevance go back to that token, the others get none.
    """

    config_keys = ("index",)
    rearranges = True

    def __init__(self, index=0):
        if not (isinstance(index, numbers.Integral) and not isinstance(index, bool)):
            raise LayerParameterError(f"SelectToken index must be an int, got {index!r}")
        self.index = int(index)

    def __repr__(self):
        return f"SelectToken({self.index})"

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or not -input_shape[1] <= self.index < input_shape[1]:
            raise ShapeError(f"{self!r} expects tokens (N, T, E) with token {self.index} among them, got shape "
                             f"{tuple(input_shape)}")
        return (input_shape[0], input_shape[2])

    def _forward(self, a):
        return np.ascontiguousarray(a[:, self.index])

    def _backward(self, grad, step):
        out = np.zeros(step.input.shape, grad.dtype)
        out[:, self.index] = grad
        return out


__all__ = ["GraphLayer", "TransformerEncoderLayer", "SwiGLUBlock", "PatchEmbedding", "ToTokens", "ClassToken",
           "PositionEmbedding", "SelectToken"]

"""Transformer layers: smooth activations, products of two activations, and multi-head attention.

``MatMul`` and ``Mul`` take two inputs, like :class:`~lrpnumpy.layers.Add`: ``forward(a, b)``,
``forward_trace(a, b)`` and ``backward(grad, step)`` returning ``(grad_a, grad_b)``, each summed
back to its input's shape where it was broadcast.  :class:`MultiheadAttention` is a layer with
PyTorch's parameters that runs as a :class:`~lrpnumpy.layers.Graph` of those primitives
(:meth:`MultiheadAttention.graph`), so its backward pass and its LRP rules are the primitives'.
"""

import math
import numbers

import numpy as np
from scipy.special import erf

from .. import kernels
from ..errors import LayerParameterError, ParameterError, ResourceError, ShapeError
from ..kernels import elementwise
from ..kernels._common import each_sample
from ..kernels import convolution
from ..kernels.convolution import SPLIT_GEMM, _matmul_small
from .activation import Softmax
from .base import Layer, as_dtype, make_rng
from .graph import Graph
from .linear import Linear
from .merge import _MultiInput
from ..trace import Step, Trace


def _products(a, b):
    """``a @ b`` over the last two axes (leading axes broadcast), each matrix product made by the same BLAS
    calls wherever it is in the stack, so a sample's numbers are fixed by its shapes, never by the batch.

    The calls are chosen by one product's shape (``m * k * n`` multiply-adds), never by the stack's size:

    * up to ``SMALL_GEMM``: one call per matrix, the operands as they are (NumPy's loop; a stack of at least
      ``_STACK_GEMM`` in all shares its samples among the kernels' threads, each NumPy's loop over its own);
    * up to ``SPLIT_GEMM`` (ViT-B/16's heads: 197 x 64 x 197, 2.5e6): each product in blocks of at most
      ``SMALL_GEMM`` (:func:`~lrpnumpy.kernels.convolution._matmul_small`: OpenBLAS's small-matrix kernels,
      on the calling thread), the products shared among the kernels' threads (``each_sample``) when the
      stack reaches ``_STACK_GEMM``.  As one call, OpenBLAS would hand such a product to its second thread
      for microseconds of work (at batch 16 the stack took 5 times as long as with one BLAS thread).  A
      transposed operand (the backward pass's ``g @ b^T`` and ``a^T @ g``) is copied first, one head at a
      time: with ``b`` transposed OpenBLAS leaves its small kernels for the blocked ones; an ``a``
      transposed read in place was faster while in cache (ViT-B/16 at batch 1: 10-19 %) but slower from
      memory (the attention weights' ``A^T @ g`` at batch 16: 12 %), and other in its last bits;
    * above ``SPLIT_GEMM``: one call per matrix, on BLAS's threads.

    (The path was once chosen by the whole stack's size, and a sample's last bits could change with the
    batch: test_attention_products.)
    """
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    macs = m * k * n
    lead = a.shape[:-2] if a.shape[:-2] == b.shape[:-2] else np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    count = math.prod(lead)
    split = convolution.SMALL_GEMM < macs <= SPLIT_GEMM
    if not lead or not count or not macs or macs > SPLIT_GEMM or (count * macs < _STACK_GEMM and not split):
        return np.matmul(a, b)  # one call per matrix (NumPy's loop), whatever the batch
    out = np.empty(lead + (m, n), np.result_type(a, b))
    if not split:
        a, b = np.broadcast_to(a, lead + (m, k)), np.broadcast_to(b, lead + (k, n))

        def run(lo, hi):  # samples lo..hi: the calls NumPy's loop over the whole stack makes
            np.matmul(a[lo:hi], b[lo:hi], out=out[lo:hi])
        each_sample(lead[0], run)
        return out
    a3, b3, o3 = _matrices(a, lead), _matrices(b, lead), out.reshape(count, m, n)

    def run(lo, hi):
        for i in range(lo, hi):  # (copies: see above)
            _matmul_small(np.ascontiguousarray(a3[i]), np.ascontiguousarray(b3[i]), o3[i])
    if count * macs < _STACK_GEMM:
        run(0, count)
    else:
        each_sample(count, run)
    return out


def _matrices(x, lead):
    """The matrices of ``x`` broadcast to the leading axes ``lead``, indexable 0 .. prod(lead) - 1: a reshaped
    view for a stack of that shape (a copy if it must be: the same numbers), else views one by one."""
    if x.shape[:-2] == lead:
        return x.reshape((-1,) + x.shape[-2:])
    x = np.broadcast_to(x, lead + x.shape[-2:])
    return [x[at] for at in np.ndindex(*lead)]


#: Multiply-adds below which a stack of products stays on the calling thread (handing products to the
#: kernels' threads costs tens of microseconds).
_STACK_GEMM = 4 * 10 ** 6


def _reduce_to(g, shape):
    """``g`` summed over the axes along which an input of ``shape`` was broadcast."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


class _SameShape(Layer):
    abstract = True

    def __repr__(self):
        return f"{type(self).__name__}()"

    def output_shape(self, input_shape):
        return tuple(input_shape)


#: Elements of GELU's input per thread at least (below it, the calling thread alone).
_GELU_CHUNK = 1 << 16


class GELU(_SameShape):
    r"""``x Phi(x)`` with ``Phi`` the standard normal CDF; ``approximate="tanh"``:
    ``x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (PyTorch's GELU).

    For LRP, AttnLRP passes relevance through it unchanged (the identity rule).  In float32, samples
    of at least 2,048 values (:data:`~lrpnumpy.kernels.elementwise.GELU_KERNEL_SIZE`) take
    :func:`lrpnumpy.kernels.elementwise.gelu_float32` under the numba backend (SciPy's ``erf`` to
    float32's rounding, 5-8 times as fast); otherwise SciPy's ``erf``.
    """

    config_keys = ("approximate",)
    elementwise = True
    _K = math.sqrt(2.0 / math.pi)

    def __init__(self, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise LayerParameterError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def __repr__(self):
        return "GELU()" if self.approximate == "none" else "GELU(approximate='tanh')"

    def _forward(self, a):
        t = a.dtype.type
        if self.approximate == "tanh":
            return t(0.5) * a * (1 + np.tanh(t(self._K) * (a + t(0.044715) * a ** 3)))
        out = np.empty(a.shape, a.dtype)
        flat, flat_out = a.reshape(-1), out.reshape(-1)
        if (a.dtype == np.float32 and kernels.BACKEND == "numba" and a.size
                and a.size >= len(a) * elementwise.GELU_KERNEL_SIZE):
            def run(lo, hi):  # erf by a series in one jitted pass (kernels.elementwise), chosen by a sample's size
                elementwise.gelu_float32(flat[lo:hi], flat_out[lo:hi])
        else:
            def run(lo, hi):  # t(0.5) * a * (1 + erf(a / sqrt 2)): the same operations, in two arrays, not four
                o, e = flat_out[lo:hi], flat[lo:hi] / t(math.sqrt(2.0))
                np.multiply(flat[lo:hi], t(0.5), out=o)
                erf(e, out=e)
                e += 1
                o *= e
        # elementwise, so the same bits however it is cut: on the kernels' threads (SciPy's erf is not vectorised)
        each_sample(flat.size, run, least=_GELU_CHUNK)
        return out

    def _backward(self, grad, step):
        x, t = step.input, grad.dtype.type
        if self.approximate == "tanh":
            th = np.tanh(t(self._K) * (x + t(0.044715) * x ** 3))
            d = t(0.5) * (1 + th) + t(0.5) * x * (1 - th * th) * t(self._K) * (1 + t(3 * 0.044715) * x * x)
        else:
            d = t(0.5) * (1 + erf(x / t(math.sqrt(2.0)))) + x * np.exp(-x * x / 2) / t(math.sqrt(2 * math.pi))
        return grad * d


class SiLU(_SameShape):
    """``x sigmoid(x)`` (swish; the gate of LLaMA's SwiGLU)."""

    elementwise = True

    def _forward(self, a):
        return a / (1 + np.exp(-a))

    def _backward(self, grad, step):
        x = step.input
        sig = 1 / (1 + np.exp(-x))
        return grad * sig * (1 + x * (1 - sig))


class Scale(_SameShape):
    """``y = factor * x`` (attention's ``1 / sqrt(head_dim)``).  Linear and one-to-one: relevance passes."""

    config_keys = ("factor",)
    linear = True

    def __init__(self, factor):
        if not (isinstance(factor, numbers.Real) and not isinstance(factor, bool) and np.isfinite(factor)
                and factor != 0):
            raise LayerParameterError(f"Scale factor must be a finite non-zero number, got {factor!r}")
        self.factor = float(factor)

    def __repr__(self):
        return f"Scale({self.factor:.6g})"

    def _forward(self, a):
        return a * a.dtype.type(self.factor)

    def _backward(self, grad, step):
        return grad * grad.dtype.type(self.factor)


class CausalMask(_SameShape):
    """Scores ``(..., T, T)`` with the future (column > row) set to ``-inf``, so a softmax gives it 0."""

    def output_shape(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] != input_shape[-2]:
            raise ShapeError(f"{self!r} needs square attention scores (..., T, T), got shape {tuple(input_shape)}")
        return tuple(input_shape)

    @staticmethod
    def future(T):
        return np.triu(np.ones((T, T), bool), k=1)

    def _forward(self, a):
        return np.where(self.future(a.shape[-1]), a.dtype.type(-np.inf), a)

    def _backward(self, grad, step):
        return np.where(self.future(grad.shape[-1]), grad.dtype.type(0), grad)


class SplitHeads(Layer):
    """Tokens ``(N, T, H * d)`` to heads ``(N, H, T, d)``; ``transpose=True`` gives ``(N, H, d, T)``
    (keys ready for ``q @ k^T``).  A rearrangement: relevance and gradients move back."""

    config_keys = ("num_heads", "transpose")
    rearranges = True

    def __init__(self, num_heads, transpose=False):
        self.num_heads, self.transpose = _heads(num_heads), bool(transpose)

    def __repr__(self):
        return f"SplitHeads({self.num_heads}{', transpose=True' if self.transpose else ''})"

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[2] % self.num_heads:
            raise ShapeError(f"{self!r} needs tokens (N, T, E) with E divisible by {self.num_heads}, got shape "
                             f"{tuple(input_shape)}")
        n, t, e = input_shape
        d = e // self.num_heads
        return (n, self.num_heads, d, t) if self.transpose else (n, self.num_heads, t, d)

    def _forward(self, a):
        n, t, e = a.shape
        h = a.reshape(n, t, self.num_heads, e // self.num_heads)
        return np.ascontiguousarray(h.transpose(0, 2, 3, 1) if self.transpose else h.transpose(0, 2, 1, 3))

    def _backward(self, grad, step):
        n, t, e = step.input.shape
        back = grad.transpose(0, 3, 1, 2) if self.transpose else grad.transpose(0, 2, 1, 3)
        return np.ascontiguousarray(back).reshape(n, t, e)


class MergeHeads(Layer):
    """Heads ``(N, H, T, d)`` back to tokens ``(N, T, H * d)`` (the inverse of :class:`SplitHeads`)."""

    rearranges = True

    def __repr__(self):
        return "MergeHeads()"

    def output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ShapeError(f"{self!r} needs heads (N, H, T, d), got shape {tuple(input_shape)}")
        n, h, t, d = input_shape
        return (n, t, h * d)

    def _forward(self, a):
        n, h, t, d = a.shape
        return np.ascontiguousarray(a.transpose(0, 2, 1, 3)).reshape(n, t, h * d)

    def _backward(self, grad, step):
        n, h, t, d = step.input.shape
        return np.ascontiguousarray(grad.reshape(n, t, h, d).transpose(0, 2, 1, 3))


def inner_trace(graph, x):
    """``graph.forward_trace(x)`` for the graph of a block whose own input ``x`` was checked: the primitives
    whose check is :meth:`Layer.check_input` itself (a float array of the shape and dtype the layer takes) run
    without it, since the block's check already covers them (its parameters are theirs, one dtype; the
    graph's shapes follow from the input's).  Layers with their own checks (LayerNorm's finiteness) and
    several inputs keep them.  The steps are those Graph.forward_trace makes."""
    outputs, steps = [], []
    for i, (layer, parents) in enumerate(zip(graph.layers, graph._parents)):
        if len(parents) == 1:  # (most nodes: no generator for one argument)
            args = (x if parents[0] < 0 else outputs[parents[0]],)
        else:
            args = tuple(x if p < 0 else outputs[p] for p in parents)
        kind = type(layer)
        if kind.apply is Layer.apply and kind.check_input is Layer.check_input:
            y, state = layer._apply(args[0])
        else:
            y, state = layer.apply(*args)
        steps.append(Step(layer, args, y, state, index=i, parents=parents))
        outputs.append(y)
    trace = Trace(x, steps)
    return trace.output, trace


class MatMul(_MultiInput, Layer):
    """``a @ b`` over the last two axes, the leading axes broadcast (NumPy's and PyTorch's matmul).

    Both inputs are activations (attention scores ``q @ k^T``, the context ``softmax @ v``); both
    need at least two axes.  ``backward`` gives ``(grad @ b^T, a^T @ grad)``, each summed to its
    input's shape; ``input_grad(grad, step, i)`` gives one of them (one product).
    """

    n_inputs, products = 2, True

    def __repr__(self):
        return "MatMul()"

    def output_shape(self, *shapes):
        if len(shapes) != 2 or any(len(s) < 2 for s in shapes):
            raise ShapeError(f"{self!r} multiplies two inputs of at least 2 axes, got shapes {list(shapes)}")
        a, b = shapes
        if a[-1] != b[-2]:
            raise ShapeError(f"{self!r}: the last axis of a ({a[-1]}) must match the second-to-last of b ({b[-2]}); "
                             f"got shapes {tuple(a)} and {tuple(b)}")
        try:
            lead = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
        except ValueError:
            raise ShapeError(f"{self!r}: leading axes of {tuple(a)} and {tuple(b)} do not broadcast") from None
        return tuple(lead) + (a[-2], b[-1])

    def _forward_many(self, inputs):
        return _products(*inputs)

    def _backward(self, grad, step):
        return self._one_grad(grad, step, 0), self._one_grad(grad, step, 1)

    def input_grad(self, grad, step, i):
        """``backward(grad, step)[i]`` alone (one product, not two: CP-LRP's rule needs one input's)."""
        return _input_grad(self, grad, step, i)

    @staticmethod
    def _one_grad(grad, step, i):
        a, b = step.inputs
        if i == 0:
            return _reduce_to(_products(grad, np.swapaxes(b, -1, -2)), a.shape)
        return _reduce_to(_products(np.swapaxes(a, -1, -2), grad), b.shape)


class Mul(_MultiInput, Layer):
    """``a * b`` elementwise with broadcasting (a gate times a value: SwiGLU, LSTM gates).

    ``backward`` gives ``(grad * b, grad * a)``, each summed to its input's shape; ``input_grad(grad, step,
    i)`` gives one of them.
    """

    n_inputs, products = 2, True

    def __repr__(self):
        return "Mul()"

    def output_shape(self, *shapes):
        if len(shapes) != 2:
            raise ShapeError(f"{self!r} multiplies two inputs, got {len(shapes)}")
        try:
            return tuple(np.broadcast_shapes(*(tuple(s) for s in shapes)))
        except ValueError:
            raise ShapeError(f"{self!r}: shapes {[tuple(s) for s in shapes]} do not broadcast") from None

    def _forward_many(self, inputs):
        return inputs[0] * inputs[1]

    def _backward(self, grad, step):
        return self._one_grad(grad, step, 0), self._one_grad(grad, step, 1)

    def input_grad(self, grad, step, i):
        """``backward(grad, step)[i]`` alone."""
        return _input_grad(self, grad, step, i)

    @staticmethod
    def _one_grad(grad, step, i):
        a, b = step.inputs
        return _reduce_to(grad * b, a.shape) if i == 0 else _reduce_to(grad * a, b.shape)


def _input_grad(layer, grad, step, i):
    """A two-input product's gradient for input ``i`` only, checked as :meth:`Layer.backward` checks."""
    if i not in (0, 1) or isinstance(i, bool):
        raise ParameterError(f"{layer!r} has inputs 0 and 1, got input {i!r}")
    layer.check_grad(grad, step)
    try:
        return layer._one_grad(grad, step, i)
    except MemoryError:
        raise ResourceError(f"{layer!r}: not enough memory for the gradient of input {i} of shape "
                            f"{step.inputs[i].shape}") from None


def _heads(num_heads):
    if not (isinstance(num_heads, numbers.Integral) and not isinstance(num_heads, bool) and num_heads >= 1):
        raise LayerParameterError(f"num_heads must be an int >= 1, got {num_heads!r}")
    return int(num_heads)


def _view_linear(weight, bias):
    """A Linear whose parameters are the given arrays (views, not copies, of checked parameters)."""
    layer = Linear.__new__(Linear)
    layer._configure(weight.shape[1], weight.shape[0], bias is not None)
    object.__setattr__(layer, "weight", weight)
    object.__setattr__(layer, "bias", bias)
    return layer


class MultiheadAttention(Layer):
    r"""Multi-head self-attention on tokens ``(N, T, E)``, batch first, with PyTorch's parameters.

    ``q, k, v = x W_q^T + b_q, ...`` (the rows of ``in_proj_weight`` (3E, E) and ``in_proj_bias``
    (3E,)), per head ``softmax(q k^T / sqrt(E / H)) v``, heads merged, then ``out_proj_weight``
    (E, E) and ``out_proj_bias`` (E,).  It runs as :meth:`graph`, a Graph of the primitives
    (three Linear projections, :class:`SplitHeads`, :class:`MatMul`, :class:`Scale`, optionally
    :class:`CausalMask`, :class:`~lrpnumpy.layers.Softmax` on the last axis, :class:`MatMul`,
    :class:`MergeHeads`, Linear), whose parameters are views of this layer's.

    Parameters
    ----------
    embed_dim : int
    num_heads : int
        Must divide ``embed_dim``.
    bias : bool, optional
        Whether the projections have biases (zeros).
    causal : bool, optional
        Whether token ``t`` attends only to tokens ``<= t``.
    rng : None, int or Generator, optional
        Source of the Xavier-uniform initial weights (as PyTorch's).
    dtype : float32 or float64, optional
    """

    params = ("in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias")
    optional = ("in_proj_bias", "out_proj_bias")
    config_keys = ("embed_dim", "num_heads", "bias", "causal")

    def __init__(self, embed_dim, num_heads, bias=True, causal=False, rng=None, dtype=np.float64):
        self._configure(embed_dim, num_heads, bias, causal)
        self._initialise(rng, as_dtype(dtype))

    def _configure(self, embed_dim, num_heads, bias=True, causal=False):
        if not (isinstance(embed_dim, numbers.Integral) and not isinstance(embed_dim, bool) and embed_dim >= 1):
            raise LayerParameterError(f"embed_dim must be an int >= 1, got {embed_dim!r}")
        self.embed_dim, self.num_heads = int(embed_dim), _heads(num_heads)
        if self.embed_dim % self.num_heads:
            raise LayerParameterError(f"num_heads ({self.num_heads}) must divide embed_dim ({self.embed_dim}): "
                                      f"each head takes embed_dim / num_heads features")
        self.causal = bool(causal)
        object.__setattr__(self, "in_proj_bias", True if bias else None)
        object.__setattr__(self, "out_proj_bias", True if bias else None)

    def _init_params(self, rng, dtype):
        gen, e = make_rng(rng), self.embed_dim
        bias = self.in_proj_bias is not None
        limit = math.sqrt(6.0 / (e + 3 * e))  # xavier_uniform_ on (3E, E), as torch
        self.in_proj_weight = gen.uniform(-limit, limit, (3 * e, e)).astype(dtype)
        bound = 1 / math.sqrt(e)
        self.out_proj_weight = gen.uniform(-bound, bound, (e, e)).astype(dtype)
        self.in_proj_bias = np.zeros(3 * e, dtype) if bias else None
        self.out_proj_bias = np.zeros(e, dtype) if bias else None

    def param_shapes(self):
        e = self.embed_dim
        return {"in_proj_weight": (3 * e, e), "in_proj_bias": (3 * e,), "out_proj_weight": (e, e),
                "out_proj_bias": (e,)}

    def config(self):
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads, "bias": self.in_proj_bias is not None,
                "causal": self.causal}

    def __repr__(self):
        extra = ("" if self.in_proj_bias is not None else ", bias=False") + (", causal=True" if self.causal else "")
        return f"MultiheadAttention({self.embed_dim}, {self.num_heads}{extra})"

    @property
    def head_dim(self):
        return self.embed_dim // self.num_heads

    @property
    def out_proj(self):
        """The output projection as a Linear (views of ``out_proj_weight`` and ``out_proj_bias``)."""
        return _view_linear(self.out_proj_weight, self.out_proj_bias)

    def graph(self):
        """The attention as a Graph of primitives; its Linear layers' parameters are views of this layer's.

        Nodes: ``q``, ``k``, ``v`` (projections), ``q_heads``, ``k_heads`` (transposed), ``v_heads``,
        ``scores`` (MatMul), ``scaled``, [``masked``], ``attention`` (Softmax), ``context`` (MatMul),
        ``merged``, ``out_proj``.
        """
        e, h = self.embed_dim, self.num_heads
        W, b = self.in_proj_weight, self.in_proj_bias
        part = [(W[i * e:(i + 1) * e], None if b is None else b[i * e:(i + 1) * e]) for i in range(3)]
        nodes = [("q", _view_linear(*part[0]), "input"), ("k", _view_linear(*part[1]), "input"),
                 ("v", _view_linear(*part[2]), "input"),
                 ("q_heads", SplitHeads(h), "q"), ("k_heads", SplitHeads(h, transpose=True), "k"),
                 ("v_heads", SplitHeads(h), "v"),
                 ("scores", MatMul(), ["q_heads", "k_heads"]), ("scaled", Scale(1 / math.sqrt(self.head_dim)), "scores")]
        last = "scaled"
        if self.causal:
            nodes.append(("masked", CausalMask(), "scaled"))
            last = "masked"
        nodes += [("attention", Softmax(axis=-1), last), ("context", MatMul(), ["attention", "v_heads"]),
                  ("merged", MergeHeads(), "context"), ("out_proj", self.out_proj, "merged")]
        return Graph(nodes)

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[2] != self.embed_dim:
            raise ShapeError(f"{self!r} expects tokens (N, T, {self.embed_dim}), got shape {tuple(input_shape)}")
        if input_shape[1] == 0:
            raise ShapeError(f"{self!r} needs at least one token, got shape {tuple(input_shape)}")
        return tuple(input_shape)

    def _apply(self, a):
        """The output, and as state the inner graph with its trace (what backward and LRP walk)."""
        graph = self.derived("graph", self.graph)  # built once for a frozen layer (see Layer.derived)
        y, trace = inner_trace(graph, a)
        return y, (graph, trace)

    def _forward(self, a):
        return self.derived("graph", self.graph).forward(a)

    def _backward(self, grad, step):
        _, trace = step.state
        return trace.reverse(grad, lambda s, g: s.layer.backward(g, s))

    def param_grads(self, grad, step):
        self.check_grad(grad, step)
        graph, trace = step.state
        grads = {}

        def visit(s, g):
            if isinstance(s.layer, Linear):
                grads[graph.names[s.index]] = s.layer.param_grads(g, s)
            return s.layer.backward(g, s)
        trace.reverse(grad, visit)
        bias = self.in_proj_bias is not None
        return {"in_proj_weight": np.concatenate([grads[n]["weight"] for n in "qkv"]),
                "in_proj_bias": np.concatenate([grads[n]["bias"] for n in "qkv"]) if bias else None,
                "out_proj_weight": grads["out_proj"]["weight"],
                "out_proj_bias": grads["out_proj"]["bias"] if bias else None}

    def inner_steps(self, step):
        """``[(node name, Step), ...]`` of the inner graph for this layer's ``step`` (what LRP walks)."""
        graph, trace = step.state
        return list(zip(graph.names, trace))


__all__ = ["GELU", "SiLU", "Scale", "CausalMask", "SplitHeads", "MergeHeads", "MatMul", "Mul",
           "MultiheadAttention", "expand"]


def expand(net):
    """``net`` (a Graph or Sequential) with every MultiheadAttention node, and every block of
    :mod:`lrpnumpy.layers.transformer` (a layer with a ``graph()``), replaced by its primitives, recursively.

    A node ``"attn"`` becomes ``"attn.q"``, ``"attn.k"``, ..., ``"attn.attention"``, ...; its
    output projection (a block's output node) keeps the name ``"attn"``, so the nodes that read it
    are unchanged; a block ``"b"`` gives ``"b.norm1"``, ``"b.self_attn.q"``, ....  The
    primitives' parameters are views of the attention's, so the expanded network computes the
    same function and gets the same relevance; its conservation report has a row per primitive
    (the softmax's share, each projection's bias).
    """
    from .sequential import Sequential
    if isinstance(net, Sequential):
        names = [str(i) for i in range(len(net))]
        nodes = [(n, layer, ("input",) if i == 0 else (names[i - 1],)) for i, (n, layer) in enumerate(zip(names, net))]
        input_name, output = "input", names[-1]
    else:
        nodes, input_name, output = net.nodes(), net.input_name, net.output
    out, nested = [], False
    for name, layer, inputs in nodes:
        if not (isinstance(layer, MultiheadAttention) or callable(getattr(type(layer), "graph", None))):
            out.append((name, layer, inputs))
            continue
        inner = layer.graph()
        rename = {n: name if n == inner.output else f"{name}.{n}" for n in inner.names}
        rename[inner.input_name] = inputs[0]
        out += [(rename[n], sub, [rename[p] for p in inner.inputs[n]]) for n, sub in zip(inner.names, inner)]
        nested = nested or any(isinstance(sub, MultiheadAttention) or callable(getattr(type(sub), "graph", None))
                               for sub in inner)
    flat = Graph(out, output=output, input_name=input_name, input_shape=net.input_shape, meta=net.meta)
    return expand(flat) if nested else flat

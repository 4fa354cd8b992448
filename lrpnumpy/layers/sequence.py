"""Layers for sequences: Embedding, Transpose, Sigmoid, and 1-D convolution and pooling on (N, C, L).

The 1-D layers are their 2-D counterparts on a height-1 view ``(N, C, 1, L)`` of the input
(no copy): the same kernels, the same rules, the same numbers.  They are ``isinstance`` of
the 2-D classes, so composites that map ``Conv2d`` or ``MaxPool2d`` cover them too.
"""

import numbers

import numpy as np

from .. import kernels
from ..errors import DTypeError, LayerParameterError, ShapeError
from ..trace import Step
from .activation import _Elementwise
from .base import MAX_SIZE, Layer, as_dtype, make_rng
from .conv import Conv2d
from .pool import AvgPool2d, MaxPool2d, SumPool2d


def _int(value, name, minimum=1):
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and minimum <= value <= MAX_SIZE):
        raise LayerParameterError(f"{name} must be an int in [{minimum}, {MAX_SIZE}], got {value!r}")
    return int(value)


def _pad1(padding):
    """``(left, right)`` from an int or a pair."""
    if isinstance(padding, numbers.Integral) and not isinstance(padding, bool):
        padding = (padding, padding)
    try:
        left, right = padding
    except (TypeError, ValueError):
        raise LayerParameterError(f"padding must be an int or a pair (left, right), got {padding!r}") from None
    return _int(left, "padding", 0), _int(right, "padding", 0)


class Sigmoid(_Elementwise):
    """The logistic function ``1 / (1 + exp(-x))`` (computed without overflow)."""

    def _forward(self, a):
        e = np.exp(-np.abs(a))
        return np.where(a >= 0, 1 / (1 + e), e / (1 + e))

    def _backward(self, grad, step):
        return grad * step.output * (1 - step.output)


class Transpose(Layer):
    """Axes permuted as ONNX's Transpose: ``perm`` lists every axis, the batch axis included (it stays 0).

    ``Transpose((0, 2, 1))`` turns an embedding's (N, T, D) into (N, D, T) for :class:`Conv1d`.
    Relevance and the gradient are permuted back.
    """

    config_keys = ("perm",)
    rearranges = True

    def __init__(self, perm):
        try:
            perm = tuple(perm)
        except TypeError:
            perm = None
        if (not perm or not all(isinstance(p, numbers.Integral) and not isinstance(p, bool) for p in perm)
                or sorted(perm) != list(range(len(perm))) or perm[0] != 0):
            raise LayerParameterError(f"Transpose perm must be a permutation of 0..rank-1 that keeps the batch "
                                      f"axis 0 first, e.g. (0, 2, 1), got {perm!r}")
        self.perm = tuple(int(p) for p in perm)

    def __repr__(self):
        return f"Transpose(perm={self.perm})"

    def output_shape(self, input_shape):
        if len(input_shape) != len(self.perm):
            raise ShapeError(f"{self!r} expects a {len(self.perm)}-D input, got shape {tuple(input_shape)}")
        return tuple(input_shape[p] for p in self.perm)

    def _forward(self, a):
        return np.ascontiguousarray(a.transpose(self.perm))

    def _backward(self, grad, step):
        return np.ascontiguousarray(grad.transpose(np.argsort(self.perm)))


class Embedding(Layer):
    """A lookup table: integer ids (N, T) -> vectors (N, T, D), ``weight`` of shape (num_embeddings, D).

    Ids come as an integer array or, inside a network (whose input is float), as a float array of
    whole numbers; ids outside ``[0, num_embeddings)`` or with a fractional part are refused.  The
    output does not depend smoothly on the ids: the gradient at the ids is zero (gradient methods
    explain the embedded sequence, a network without its Embedding).  For LRP the default rule
    (:class:`~lrpnumpy.rules.TokenSum`) gives each token the relevance of its vector, summed
    over D.
    """

    params = ("weight",)
    optional = ()
    config_keys = ("num_embeddings", "embedding_dim")

    def __init__(self, num_embeddings, embedding_dim, rng=None, dtype=np.float64):
        self._configure(num_embeddings, embedding_dim)
        self._initialise(rng, as_dtype(dtype))

    def _configure(self, num_embeddings, embedding_dim):
        self.num_embeddings = _int(num_embeddings, "num_embeddings")
        self.embedding_dim = _int(embedding_dim, "embedding_dim")

    def _init_params(self, rng, dtype):  # N(0, 1), as torch.nn.Embedding
        self.weight = make_rng(rng).standard_normal((self.num_embeddings, self.embedding_dim)).astype(dtype)

    def param_shapes(self):
        return {"weight": (self.num_embeddings, self.embedding_dim)}

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.embedding_dim})"

    def output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ShapeError(f"{self!r} expects token ids of shape (N, T), got shape {tuple(input_shape)}")
        if input_shape[1] < 1:
            raise ShapeError(f"{self!r}: empty sequences (T = 0) cannot be embedded")
        return tuple(input_shape) + (self.embedding_dim,)

    def check_input(self, a):
        if not isinstance(a, np.ndarray):
            raise DTypeError(f"token ids of {self!r} must be a numpy ndarray, got {type(a).__name__}")
        if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise DTypeError(f"token ids of {self!r} must be integers (or whole floats), got {a.dtype}")
        self.output_shape(a.shape)
        if np.issubdtype(a.dtype, np.floating):
            bad = ~np.isfinite(a) | (a != np.round(a))
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                raise DTypeError(f"token ids of {self!r} must be whole numbers, got {a[where]!r} at {where}")
        if a.size and (a.min() < 0 or a.max() >= self.num_embeddings):
            bad = np.argwhere((a < 0) | (a >= self.num_embeddings))[0]
            where = tuple(int(i) for i in bad)
            raise ShapeError(f"token id {a[where]!r} at {where} is out of range for {self!r}: ids must be in "
                             f"[0, {self.num_embeddings - 1}]")
        return a

    def _forward(self, a):
        return self.weight[a.astype(np.intp)]

    def _backward(self, grad, step):
        """The ids are piecewise constant: their gradient is zero (in the output's float dtype)."""
        return np.zeros(step.input.shape, grad.dtype)

    def param_grads(self, grad, step):
        self.check_grad(grad, step)
        out = np.zeros_like(self.weight, dtype=grad.dtype)
        np.add.at(out, step.input.astype(np.intp).reshape(-1), grad.reshape(-1, self.embedding_dim))
        return {"weight": out}


def _step2d(step):
    """A 1-D layer's step seen by its 2-D code: input and output as height-1 views."""
    return Step(step.layer, (step.input[:, :, None],), step.output[:, :, None], step.state, step.index,
                step.parents)


class _As2d:
    """Mixin: a 2-D layer run on (N, C, L) as (N, C, 1, L)."""

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"{self!r} expects a 3-D input (N, C, L), got shape {tuple(input_shape)}")
        n, c, one, length = super().output_shape((input_shape[0], input_shape[1], 1, input_shape[2]))
        return (n, c, length)

    def forward_with(self, x, weight=None, bias=None, step=None):
        return super().forward_with(x[:, :, None], self._w2(weight), bias,
                                    None if step is None else _step2d(step))[:, :, 0]

    def backward_with(self, grad, weight, step):
        return super().backward_with(grad[:, :, None], self._w2(weight), _step2d(step))[:, :, 0]

    def bias_view(self, bias, ndim=None):
        return bias if bias is None or ndim == 2 else bias[:, None]

    def _w2(self, weight):
        return weight


class Conv1d(_As2d, Conv2d):
    """1-D convolution on (N, C, L) with weight of shape (out, in/groups, k), as ``torch.nn.Conv1d``.

    Parameters
    ----------
    in_channels, out_channels, kernel_size : int
    stride, dilation : int
    padding : int or (left, right)
        Zero padding.
    groups : int
    bias : bool
    rng : None, int or numpy.random.Generator
        Source of He-normal weights.
    dtype : float32 or float64
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, rng=None, dtype=np.float64):
        self._configure(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self._initialise(rng, as_dtype(dtype))

    def _configure(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                   bias=True):
        left, right = _pad1(padding)
        super()._configure(in_channels, out_channels, (1, _int(kernel_size, "kernel_size")),
                           (1, _int(stride, "stride")), (0, 0, left, right), bias, groups,
                           (1, _int(dilation, "dilation")))

    def param_shapes(self):
        return {"weight": (self.out_channels, self.in_channels // self.groups, self.kernel_size[1]),
                "bias": (self.out_channels,)}

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size[1], "stride": self.stride[1], "padding": list(self.padding[2:]),
                "dilation": self.dilation[1], "groups": self.groups, "bias": self.bias is not None}

    def __repr__(self):
        extra = "" if self.stride[1] == 1 else f", stride={self.stride[1]}"
        left, right = self.padding[2:]
        extra += "" if left == right == 0 else f", padding={left if left == right else (left, right)}"
        extra += "" if self.dilation[1] == 1 else f", dilation={self.dilation[1]}"
        extra += "" if self.groups == 1 else f", groups={self.groups}"
        return (f"Conv1d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size[1]}{extra}, "
                f"bias={self.bias is not None})")

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] != self.in_channels:
            raise ShapeError(f"{self!r} expects a 3-D input (N, {self.in_channels}, L), got shape "
                             f"{tuple(input_shape)}")
        return super().output_shape(input_shape)

    def _w2(self, weight):
        return None if weight is None else weight[:, :, None]

    def forward_many(self, x, weights, step, biases=None):
        return [self.forward_with(x, w, b, step) for w, b in zip(weights, biases or [None] * len(weights))]

    def backward_many(self, pairs, step):
        total = self.backward_with(*pairs[0], step)
        for s, w in pairs[1:]:
            total = total + self.backward_with(s, w, step)
        return total

    def param_grads(self, grad, step):
        self.check_grad(grad, step)
        kh, kw = self.kernel_size
        w = kernels.conv2d_grad_weight(step.input[:, :, None], grad[:, :, None], kh, kw, *self._geometry())
        return {"weight": w[:, :, 0], "bias": None if self.bias is None else grad.sum(axis=(0, 2))}


class _Pool1d(_As2d):
    pool = None  # windows over (N, C, L), not the 2-D windows the capability describes

    def _init_1d(self, kernel_size, stride, padding):
        left, right = _pad1(padding)
        k = _int(kernel_size, "kernel_size")
        s = k if stride is None else _int(stride, "stride")
        return (1, k), (1, s), (0, 0, left, right)

    def config(self):
        left, right = self.padding[2:]
        return {"kernel_size": self.kernel_size[1], "stride": self.stride[1],
                "padding": left if left == right else [left, right]}

    def __repr__(self):
        left, right = self.padding[2:]
        extra = "" if self.stride == self.kernel_size else f", stride={self.stride[1]}"
        extra += "" if left == right == 0 else f", padding={left if left == right else (left, right)}"
        return f"{type(self).__name__}(kernel_size={self.kernel_size[1]}{extra})"


class SumPool1d(_Pool1d, SumPool2d):
    """Sum over each window of ``kernel_size`` positions along L (zero padding): a linear map."""

    def __init__(self, kernel_size, stride=None, padding=0):
        SumPool2d.__init__(self, *self._init_1d(kernel_size, stride, padding))


class AvgPool1d(_Pool1d, AvgPool2d):
    """Mean over each window along L; padded positions count in the divisor (torch's default)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        AvgPool2d.__init__(self, *self._init_1d(kernel_size, stride, padding))

    def _divide(self, y, h, w):
        return y / self.divisor(h, w).astype(y.dtype)


class MaxPool1d(_Pool1d, MaxPool2d):
    """Maximum over each window along L; the gradient goes to each window's first maximum."""

    def __init__(self, kernel_size, stride=None, padding=0):
        MaxPool2d.__init__(self, *self._init_1d(kernel_size, stride, padding))

    def _apply(self, a):
        y, winners = MaxPool2d._apply(self, a[:, :, None])
        return y[:, :, 0], winners

    def _forward(self, a):
        return MaxPool2d._forward(self, a[:, :, None])[:, :, 0]

    def backward_split(self, grad, step):
        self.check_grad(grad, step)
        a = step.input[:, :, None]
        return kernels.max_pool2d_grad_split(grad[:, :, None], a, step.output[:, :, None],
                                             *self._geometry(*a.shape[2:]))[:, :, 0]

    def sum_pool(self):
        left, right = self.padding[2:]
        return SumPool1d(self.kernel_size[1], self.stride[1], (left, right))


class GlobalMaxPool1d(MaxPool1d):
    """Maximum over the whole length: (N, C, L) -> (N, C) (max pooling over time)."""

    config_keys = ()

    def __init__(self):
        MaxPool2d.__init__(self, 1)

    def config(self):
        return {}

    def __repr__(self):
        return "GlobalMaxPool1d()"

    def _geometry(self, h, w):
        return (1, w, 1, w, (0, 0, 0, 0), 1, 1)

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[2] < 1:
            raise ShapeError(f"{self!r} expects a 3-D input (N, C, L) with L >= 1, got shape {tuple(input_shape)}")
        return tuple(input_shape[:2])

    def _apply(self, a):
        y, state = MaxPool2d._apply(self, a[:, :, None])
        return y[:, :, 0, 0], state

    def _forward(self, a):
        return a.max(axis=2)

    def forward_with(self, x, weight=None, bias=None, step=None):
        return MaxPool2d.forward_with(self, x[:, :, None], None, None, None if step is None else _step2d(step))[:, :, 0, 0]

    def backward_with(self, grad, weight, step):
        return MaxPool2d.backward_with(self, grad[:, :, None, None], None, _step2d(step))[:, :, 0]

    def backward_split(self, grad, step):
        self.check_grad(grad, step)
        a = step.input[:, :, None]
        return kernels.max_pool2d_grad_split(grad[:, :, None, None], a, step.output[:, :, None, None],
                                             *self._geometry(*a.shape[2:]))[:, :, 0]

    def bias_view(self, bias, ndim=None):
        return bias

    def sum_pool(self):
        """The sum over the whole length (what Norm and Flat redistribute like)."""
        return _GlobalSumPool1d()


class _GlobalSumPool1d(SumPool1d):
    """Sum over the whole length, (N, C, L) -> (N, C): the linear map Norm and Flat see in a GlobalMaxPool1d."""

    def __init__(self):
        SumPool2d.__init__(self, 1)

    def __repr__(self):
        return "GlobalSumPool1d()"

    def _geometry(self, h, w):
        return (1, w, 1, w, (0, 0, 0, 0), 1, 1)

    def output_shape(self, input_shape):
        return GlobalMaxPool1d.output_shape(self, input_shape)

    def forward_with(self, x, weight=None, bias=None, step=None):
        return SumPool2d.forward_with(self, x[:, :, None], None, None, None)[:, :, 0, 0]

    def backward_with(self, grad, weight, step):
        return SumPool2d.backward_with(self, grad[:, :, None, None], None, _step2d(step))[:, :, 0]

    def bias_view(self, bias, ndim=None):
        return bias

"""Layers of branching networks: Add and Concat (several inputs), ChannelAffine, ChannelShuffle.

Several-input layers take their inputs as separate arguments (``layer.forward(a, b)``);
their ``backward`` returns one gradient per input, as a tuple, and so do their rules.
"""

import numbers

import numpy as np

from ..errors import DTypeError, LayerParameterError, ResourceError, ShapeError
from ..trace import Step
from .base import FLOAT_DTYPES, AffineLayer, Layer, as_dtype, check_array


class _MultiInput:
    """Mixin for layers with several inputs: ``apply(*inputs)``, ``output_shape(*shapes)``."""

    n_inputs = None  # one or more

    def apply(self, *inputs):
        if not inputs:
            raise ShapeError(f"{self!r} needs at least one input")
        for i, a in enumerate(inputs):
            if type(a) is not np.ndarray or a.dtype not in FLOAT_DTYPES:  # (the message formatted only then)
                check_array(a, f"input {i} of {self!r}")
        self.output_shape(*(a.shape for a in inputs))
        if len({a.dtype for a in inputs}) > 1:
            raise DTypeError(f"the inputs of {self!r} have different dtypes {[str(a.dtype) for a in inputs]}")
        try:
            return self._forward_many(inputs), None
        except MemoryError:
            raise ResourceError(f"{self!r}: not enough memory for inputs of shapes "
                                f"{[a.shape for a in inputs]}") from None

    def forward(self, *inputs):
        """The layer's output for the input batches ``inputs``."""
        return self.apply(*inputs)[0]

    def forward_trace(self, *inputs):
        y, state = self.apply(*inputs)
        return y, Step(self, inputs, y, state, parents=tuple(-1 for _ in inputs))


def _same_shapes(layer, shapes, minimum=1):
    if len(shapes) < minimum:
        raise ShapeError(f"{layer!r} needs at least {minimum} inputs, got {len(shapes)}")
    return [tuple(s) for s in shapes]


class Add(_MultiInput, AffineLayer):
    """The sum of same-shaped inputs, optionally weighted: ``y = sum_i c_i x_i`` (a residual connection).

    ``coefficients`` (one number per input; default all 1) are Caffe's Eltwise SUM
    coefficients.  For LRP the layer is a linear map of its stacked inputs; its default rule
    is :class:`~lrpnumpy.rules.Norm`, as in Zennit: ``R_i = c_i x_i R / stabilize(y)``, so
    relevance splits between the inputs (the skip path and the residual branch) in proportion
    to what each contributed, and the stabilizer's share is in the conservation report.
    """

    config_keys = ("coefficients",)

    def __init__(self, coefficients=None):
        if coefficients is not None:
            try:
                coefficients = tuple(float(c) for c in coefficients)
            except (TypeError, ValueError):
                raise LayerParameterError(f"Add coefficients must be numbers, got {coefficients!r}") from None
            if not coefficients or not all(np.isfinite(coefficients)):
                raise LayerParameterError(f"Add coefficients must be finite numbers, got {coefficients!r}")
            if all(c == 1 for c in coefficients):
                coefficients = None
        self.coefficients = coefficients

    def config(self):
        return {"coefficients": None if self.coefficients is None else list(self.coefficients)}

    def __repr__(self):
        return "Add()" if self.coefficients is None else f"Add(coefficients={list(self.coefficients)})"

    def output_shape(self, *shapes):
        shapes = _same_shapes(self, shapes, 1)
        if len(set(shapes)) > 1:
            raise ShapeError(f"{self!r} adds inputs of one shape, got shapes {shapes}")
        if self.coefficients is not None and len(self.coefficients) != len(shapes):
            raise ShapeError(f"{self!r} has {len(self.coefficients)} coefficients but got {len(shapes)} inputs")
        return shapes[0]

    def _coef(self, n, dtype):
        c = np.ones(n) if self.coefficients is None else np.asarray(self.coefficients)
        return c.astype(dtype)

    def _forward_many(self, inputs):
        if self.coefficients is None:
            out = inputs[0].copy()
            for a in inputs[1:]:
                out += a
            return out
        return self.forward_with(np.stack(inputs), None)

    # The affine map on the stacked inputs X (shape (n_inputs, N, ...)), for the rules.
    def joint_input(self, step):
        return np.stack(step.inputs)

    def split(self, R):
        return tuple(R)

    def forward_with(self, x, weight, bias=None, step=None):
        if self.coefficients is None:
            return x.sum(axis=0)
        # c_0 x_0 + c_1 x_1 + ... term by term, in input order (a tensordot is a gemv over the batch's
        # values, whose order of adds BLAS may choose by the batch's size)
        c = self._coef(len(x), x.dtype)
        out = c[0] * x[0]
        for ci, xi in zip(c[1:], x[1:]):
            out += ci * xi
        return out

    def backward_with(self, grad, weight, step):
        n = len(step.inputs)
        if self.coefficients is None:
            return np.broadcast_to(grad, (n,) + grad.shape)
        return self._coef(n, grad.dtype).reshape((n,) + (1,) * grad.ndim) * grad

    def _backward(self, grad, step):
        if self.coefficients is None:
            return tuple(grad.copy() for _ in step.inputs)
        return tuple(c * grad for c in self._coef(len(step.inputs), grad.dtype))


class Concat(_MultiInput, Layer):
    """Inputs joined along the channel axis (axis 1), as in Inception and DenseNet blocks.

    Relevance (and the gradient) is split back by channel.
    """

    rearranges = True
    linear = True

    def __repr__(self):
        return "Concat()"

    def output_shape(self, *shapes):
        shapes = _same_shapes(self, shapes, 1)
        if any(len(s) < 2 for s in shapes) or len({(s[0],) + s[2:] for s in shapes}) > 1 \
                or len({len(s) for s in shapes}) > 1:
            raise ShapeError(f"{self!r} joins inputs that differ only in axis 1, got shapes {shapes}")
        return (shapes[0][0], sum(s[1] for s in shapes)) + shapes[0][2:]

    def _forward_many(self, inputs):
        return np.concatenate(inputs, axis=1)

    def _backward(self, grad, step):
        edges = np.cumsum([a.shape[1] for a in step.inputs])[:-1]
        return tuple(np.ascontiguousarray(g) for g in np.split(grad, edges, axis=1))


class ChannelAffine(AffineLayer):
    """``y[:, c] = weight[c] * x[:, c] + bias[c]``: a per-channel scale and shift.

    ONNX's ``Mul`` and ``Add`` by per-channel constants and an unfolded batch normalisation
    (DenseNet, Inception-v2).  Like :class:`BatchNorm2d` it passes relevance through by
    default; affine rules (``Epsilon``, ...) also apply to it.  Either parameter may be None.
    """

    params = ("weight", "bias")
    optional = ("weight", "bias")
    config_keys = ("num_channels",)

    def __init__(self, num_channels, weight=True, bias=True, dtype=np.float64):
        self._configure(num_channels)
        dt = as_dtype(dtype)
        self.weight = np.ones(num_channels, dt) if weight is True else weight
        self.bias = np.zeros(num_channels, dt) if bias is True else bias

    def _configure(self, num_channels):
        if not (isinstance(num_channels, numbers.Integral) and not isinstance(num_channels, bool)
                and num_channels >= 1):
            raise LayerParameterError(f"num_channels must be an int >= 1, got {num_channels!r}")
        self.num_channels = int(num_channels)

    def _init_params(self, rng, dtype):
        self.weight, self.bias = np.ones(self.num_channels, dtype), np.zeros(self.num_channels, dtype)

    def param_shapes(self):
        return {"weight": (self.num_channels,), "bias": (self.num_channels,)}

    def __repr__(self):
        parts = [p for p in ("weight", "bias") if getattr(self, p, None) is None]
        return f"ChannelAffine({self.num_channels}" + "".join(f", {p}=None" for p in parts) + ")"

    def output_shape(self, input_shape):
        if len(input_shape) < 2 or input_shape[1] != self.num_channels:
            raise ShapeError(f"{self!r} expects {self.num_channels} channels on axis 1, got shape "
                             f"{tuple(input_shape)}")
        return tuple(input_shape)

    def _view(self, v, ndim):
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def bias_view(self, bias, ndim=None):
        return self._view(bias, 4 if ndim is None else ndim)

    def forward_with(self, x, weight, bias=None, step=None):
        y = x if weight is None else x * self._view(weight, x.ndim)
        return y if bias is None else y + self._view(bias, x.ndim)

    def backward_with(self, grad, weight, step):
        return grad.copy() if weight is None else grad * self._view(weight, grad.ndim)

    def param_grads(self, grad, step):
        self.check_grad(grad, step)
        axes = (0,) + tuple(range(2, grad.ndim))
        return {"weight": None if self.weight is None else (grad * step.input).sum(axis=axes),
                "bias": None if self.bias is None else grad.sum(axis=axes)}


class ChannelShuffle(Layer):
    """ShuffleNet's channel shuffle: channels ``(g, C/g)`` transposed to ``(C/g, g)``.

    ONNX writes it as Reshape (N, g, C/g, H, W) - Transpose (0, 2, 1, 3, 4) - Reshape
    (N, C, H, W).  A permutation: relevance and the gradient are permuted back.
    """

    config_keys = ("groups",)
    rearranges = True
    linear = True

    def __init__(self, groups):
        if not (isinstance(groups, numbers.Integral) and not isinstance(groups, bool) and groups >= 1):
            raise LayerParameterError(f"ChannelShuffle groups must be an int >= 1, got {groups!r}")
        self.groups = int(groups)

    def __repr__(self):
        return f"ChannelShuffle(groups={self.groups})"

    def output_shape(self, input_shape):
        if len(input_shape) < 2 or input_shape[1] % self.groups:
            raise ShapeError(f"{self!r} needs a channel axis (axis 1) divisible by {self.groups}, got shape "
                             f"{tuple(input_shape)}")
        return tuple(input_shape)

    @staticmethod
    def _swap(a, first, second):
        n, c = a.shape[:2]
        rest = a.shape[2:]
        return np.ascontiguousarray(a.reshape((n, first, second) + rest).swapaxes(1, 2)).reshape(a.shape)

    def _forward(self, a):
        return self._swap(a, self.groups, a.shape[1] // self.groups)

    def _backward(self, grad, step):
        return self._swap(grad, grad.shape[1] // self.groups, self.groups)

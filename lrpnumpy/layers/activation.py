"""Element-wise activations and softmax."""

import numbers

import numpy as np

from ..errors import LayerParameterError, ShapeError
from ..kernels.elementwise import THREADED_SIZE, by_samples
from .base import Layer


class _Elementwise(Layer):
    """A layer that keeps the shape of any input, computed entry by entry."""

    elementwise = True

    def __repr__(self):
        return f"{type(self).__name__}()"

    def output_shape(self, input_shape):
        return tuple(input_shape)


class ReLU(_Elementwise):
    """``max(0, x)``; the gradient at 0 is taken as 0."""

    def _forward(self, a):
        return np.maximum(a, 0)

    def _backward(self, grad, step):
        return np.where(step.input > 0, grad, grad.dtype.type(0))


class Tanh(_Elementwise):
    """Hyperbolic tangent."""

    def _forward(self, a):
        return np.tanh(a)

    def _backward(self, grad, step):
        return grad * (1 - step.output ** 2)


class Softmax(Layer):
    """``exp(x) / sum(exp(x))`` along ``axis``.

    With ``flatten=True`` (ONNX before opset 13) the input is seen as 2-D, the axes from
    ``axis`` on flattened into one, and normalised over that.  ``explain`` skips a trailing
    Softmax and explains the logits.
    """

    config_keys = ("axis", "flatten")
    normalises = True

    def __init__(self, axis=1, flatten=False):
        if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
            raise LayerParameterError(f"Softmax axis must be an int, got {axis!r}")
        self.axis, self.flatten = int(axis), bool(flatten)

    def __repr__(self):
        return f"Softmax(axis={self.axis}{', flatten=True' if self.flatten else ''})"

    def output_shape(self, input_shape):
        if not -len(input_shape) <= self.axis < len(input_shape):
            raise ShapeError(f"{self!r} got a {len(input_shape)}-D input of shape {tuple(input_shape)}")
        if input_shape[self.axis] == 0:
            raise ShapeError(f"{self!r} normalises over axis {self.axis}, which has length 0 in the input of shape "
                             f"{tuple(input_shape)}; a softmax needs at least one entry")
        return tuple(input_shape)

    def _rows(self, a):
        """``a`` as 2-D (leading axes, normalised axes) when flattening, else None."""
        if not self.flatten:
            return None
        axis = self.axis % a.ndim
        return a.reshape(int(np.prod(a.shape[:axis])), -1)

    def _forward(self, a):
        rows = self._rows(a)
        if rows is not None:
            return Softmax(axis=1)._forward(rows).reshape(a.shape)
        axis = self.axis % a.ndim
        if axis == 0 or a.size < THREADED_SIZE or not a.flags.c_contiguous:  # (else: on the kernels' threads)
            e = np.exp(a - a.max(axis=axis, keepdims=True))
            return e / e.sum(axis=axis, keepdims=True)
        out = np.empty(a.shape, a.dtype)

        def run(lo, hi):  # the same operations, in one array: exp(a - max) / sum, each sample's rows alone
            x = a[lo:hi]
            e = np.subtract(x, x.max(axis=axis, keepdims=True), out=out[lo:hi])
            np.exp(e, out=e)
            e /= e.sum(axis=axis, keepdims=True)
        # samples on the kernels' threads (attention's (N, H, T, T)); each row's numbers whatever the split
        by_samples(run, a)
        return out

    def _backward(self, grad, step):
        y = step.output
        if self.flatten:
            y2, g2 = self._rows(y), self._rows(grad)
            return (y2 * (g2 - (g2 * y2).sum(axis=1, keepdims=True))).reshape(y.shape)
        return y * (grad - (grad * y).sum(axis=self.axis, keepdims=True))


class Hardtanh(_Elementwise):
    """``min(max(x, min_val), max_val)`` (PyTorch's ``Hardtanh``, ONNX's ``Clip``).

    The gradient is 1 strictly inside ``(min_val, max_val)`` and 0 elsewhere, the bounds
    included, as in PyTorch.  For LRP the layer passes relevance through (its default rule is
    Pass), as for the other activations.
    """

    config_keys = ("min_val", "max_val")

    def __init__(self, min_val=-1.0, max_val=1.0):
        for name, v in (("min_val", min_val), ("max_val", max_val)):
            if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)):
                raise LayerParameterError(f"{type(self).__name__} {name} must be a finite number, got {v!r}")
        if not min_val < max_val:
            raise LayerParameterError(f"{type(self).__name__} needs min_val < max_val, got {min_val!r} and {max_val!r}")
        self.min_val, self.max_val = float(min_val), float(max_val)

    def __repr__(self):
        return f"Hardtanh(min_val={self.min_val}, max_val={self.max_val})"

    def _forward(self, a):
        t = a.dtype.type
        return np.clip(a, t(self.min_val), t(self.max_val))

    def _backward(self, grad, step):
        a, t = step.input, grad.dtype.type
        return np.where((a > t(self.min_val)) & (a < t(self.max_val)), grad, t(0))


class ReLU6(Hardtanh):
    """``min(max(x, 0), 6)`` (MobileNet's activation): :class:`Hardtanh` from 0 to 6."""

    config_keys = ()

    def __init__(self):
        super().__init__(0.0, 6.0)

    def __repr__(self):
        return "ReLU6()"


class LeakyReLU(_Elementwise):
    """``x`` where ``x > 0``, else ``negative_slope * x``; the gradient at 0 is ``negative_slope`` (as in PyTorch)."""

    config_keys = ("negative_slope",)

    def __init__(self, negative_slope=0.01):
        if not (isinstance(negative_slope, numbers.Real) and not isinstance(negative_slope, bool)
                and np.isfinite(negative_slope)):
            raise LayerParameterError(f"LeakyReLU negative_slope must be a finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def __repr__(self):
        return f"LeakyReLU(negative_slope={self.negative_slope})"

    def _forward(self, a):
        return np.where(a > 0, a, a * a.dtype.type(self.negative_slope))

    def _backward(self, grad, step):
        return np.where(step.input > 0, grad, grad * grad.dtype.type(self.negative_slope))

"""Element-wise activations and softmax."""

import numpy as np

from .base import Layer, check_array
from ..errors import ShapeError


class ReLU(Layer):
    """``max(0, x)``; the gradient at 0 is taken as 0."""

    def __repr__(self):
        return "ReLU()"

    def forward(self, a):
        self.input = check_array(a, f"input of {self!r}")
        return np.maximum(a, 0)

    def backward(self, grad):
        return np.where(self.input > 0, grad, grad.dtype.type(0))


class Tanh(Layer):
    """Hyperbolic tangent."""

    def __repr__(self):
        return "Tanh()"

    def forward(self, a):
        self.input = check_array(a, f"input of {self!r}")
        return np.tanh(a)

    def backward(self, grad):
        return grad * (1 - np.tanh(self.input) ** 2)


class Softmax(Layer):
    """``exp(x) / sum(exp(x))`` along ``axis``.

    ``explain`` skips a trailing Softmax and explains the logits.
    """

    def __init__(self, axis=1):
        self.axis = axis

    def __repr__(self):
        return f"Softmax(axis={self.axis})"

    def _softmax(self, a):
        e = np.exp(a - a.max(axis=self.axis, keepdims=True))
        return e / e.sum(axis=self.axis, keepdims=True)

    def forward(self, a):
        check_array(a, f"input of {self!r}")
        if not -a.ndim <= self.axis < a.ndim:
            raise ShapeError(f"{self!r} got a {a.ndim}-D input of shape {a.shape}")
        self.input = a
        return self._softmax(a)

    def backward(self, grad):
        y = self._softmax(self.input)
        return y * (grad - (grad * y).sum(axis=self.axis, keepdims=True))

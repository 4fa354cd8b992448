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

    def backward(self, grad, param_grads=True):
        return np.where(self.input > 0, grad, grad.dtype.type(0))


class Tanh(Layer):
    """Hyperbolic tangent."""

    def __repr__(self):
        return "Tanh()"

    def forward(self, a):
        self.input = check_array(a, f"input of {self!r}")
        return np.tanh(a)

    def backward(self, grad, param_grads=True):
        return grad * (1 - np.tanh(self.input) ** 2)


class Softmax(Layer):
    """``exp(x) / sum(exp(x))`` along ``axis``.

    With ``flatten=True`` (ONNX before opset 13) the input is seen as 2-D, the axes from
    ``axis`` on flattened into one, and normalised over that.  ``explain`` skips a trailing
    Softmax and explains the logits.
    """

    def __init__(self, axis=1, flatten=False):
        self.axis, self.flatten = int(axis), bool(flatten)

    def __repr__(self):
        return f"Softmax(axis={self.axis}{', flatten=True' if self.flatten else ''})"

    def _softmax(self, a):
        if self.flatten:
            axis = self.axis % a.ndim
            lead = int(np.prod(a.shape[:axis]))
            return Softmax(axis=1)._softmax(a.reshape(lead, -1)).reshape(a.shape)
        e = np.exp(a - a.max(axis=self.axis, keepdims=True))
        return e / e.sum(axis=self.axis, keepdims=True)

    def forward(self, a):
        check_array(a, f"input of {self!r}")
        if not -a.ndim <= self.axis < a.ndim:
            raise ShapeError(f"{self!r} got a {a.ndim}-D input of shape {a.shape}")
        self.input = a
        return self._softmax(a)

    def backward(self, grad, param_grads=True):
        y = self._softmax(self.input)
        if self.flatten:
            shape, axis = y.shape, self.axis % y.ndim
            lead = int(np.prod(shape[:axis]))
            y2, g2 = y.reshape(lead, -1), grad.reshape(lead, -1)
            return (y2 * (g2 - (g2 * y2).sum(axis=1, keepdims=True))).reshape(shape)
        return y * (grad - (grad * y).sum(axis=self.axis, keepdims=True))

"""Layers that only move or keep values: Flatten and Dropout."""

import numbers

from ..errors import RuleParameterError
from .base import Layer, check_array


class Flatten(Layer):
    """Reshape (N, C, H, W) (or any rank) to (N, C*H*W), C order as in PyTorch."""

    def __repr__(self):
        return "Flatten()"

    def forward(self, a):
        self.input = check_array(a, f"input of {self!r}")
        return a.reshape(a.shape[0], -1)

    def backward(self, grad, param_grads=True):
        return grad.reshape(self.input.shape)


class Dropout(Layer):
    """Dropout at inference: the identity.  ``p`` is kept for the record."""

    def __init__(self, p=0.5):
        if not (isinstance(p, numbers.Real) and 0 <= p < 1):
            raise RuleParameterError(f"Dropout p must be in [0, 1), got {p!r}")
        self.p = float(p)

    def __repr__(self):
        return f"Dropout(p={self.p})"

    def forward(self, a):
        self.input = check_array(a, f"input of {self!r}")
        return a

    def backward(self, grad, param_grads=True):
        return grad

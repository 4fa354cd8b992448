"""Layers that only move or keep values: Flatten and Dropout."""

import math
import numbers

from ..errors import LayerParameterError, ShapeError
from .base import Layer


class Flatten(Layer):
    """Reshape (N, C, H, W) (or any rank) to (N, C*H*W), C order as in PyTorch."""

    linear = True

    def __repr__(self):
        return "Flatten()"

    def output_shape(self, input_shape):
        if len(input_shape) < 1:
            raise ShapeError(f"{self!r} needs a batch axis, got shape {tuple(input_shape)}")
        return (input_shape[0], math.prod(input_shape[1:]))

    def _forward(self, a):
        return a.reshape(self.output_shape(a.shape))  # not -1: an empty batch has no size to divide

    def _backward(self, grad, step):
        return grad.reshape(step.input.shape)


class Dropout(Layer):
    """Dropout at inference: the identity.  ``p`` is kept for the record."""

    config_keys = ("p",)
    linear = True

    def __init__(self, p=0.5):
        if not (isinstance(p, numbers.Real) and 0 <= p < 1):
            raise LayerParameterError(f"Dropout p must be in [0, 1), got {p!r}")
        self.p = float(p)

    def __repr__(self):
        return f"Dropout(p={self.p})"

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def _forward(self, a):
        return a

    def _backward(self, grad, step):
        return grad

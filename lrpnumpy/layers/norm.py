"""Batch normalisation in its inference form."""

import numbers

import numpy as np

from ..errors import RuleParameterError
from .base import Layer, as_dtype


class BatchNorm2d(Layer):
    """``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel.

    Parameters start as the identity map (mean 0, var 1, weight 1, bias 0).
    For LRP, fold it into the preceding layer with
    :func:`lrpnumpy.canonize.fold_batchnorm`; left in place it passes
    relevance through unchanged.
    """

    params = ("weight", "bias", "running_mean", "running_var")

    def __init__(self, num_features, eps=1e-5, dtype=np.float64):
        if not (isinstance(num_features, numbers.Integral) and num_features >= 1):
            raise RuleParameterError(f"num_features must be an int >= 1, got {num_features!r}")
        if not (isinstance(eps, numbers.Real) and eps > 0):
            raise RuleParameterError(f"BatchNorm2d eps must be > 0, got {eps!r}")
        dt = as_dtype(dtype)
        self.num_features, self.eps = int(num_features), float(eps)
        self.weight = np.ones(num_features, dt)
        self.bias = np.zeros(num_features, dt)
        self.running_mean = np.zeros(num_features, dt)
        self.running_var = np.ones(num_features, dt)

    def __repr__(self):
        return f"BatchNorm2d({self.num_features}, eps={self.eps})"

    def scale_shift(self):
        """``(scale, shift)`` with ``forward(x) = x * scale + shift`` per channel."""
        scale = self.weight / np.sqrt(self.running_var + self.running_var.dtype.type(self.eps))
        return scale, self.bias - self.running_mean * scale

    def forward(self, a):
        self.input = self._check_input(a, 4, self.num_features)
        scale, shift = self.scale_shift()
        return a * scale[:, None, None] + shift[:, None, None]

    def backward(self, grad):
        return grad * self.scale_shift()[0][:, None, None]

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

    def backward(self, grad, param_grads=True):
        return grad * self.scale_shift()[0][:, None, None]


def _channel_window_sum(v, before, after):
    """``out[:, c] = sum(v[:, c - before : c + after + 1])``, the window clipped to the channels."""
    c = v.shape[1]
    csum = np.concatenate([np.zeros_like(v[:, :1]), np.cumsum(v, axis=1)], axis=1)
    hi = np.minimum(np.arange(c) + after + 1, c)
    lo = np.maximum(np.arange(c) - before, 0)
    return csum[:, hi] - csum[:, lo]


class LRN(Layer):
    """Local response normalisation across channels (AlexNet; ONNX ``LRN``, Caffe ``ACROSS_CHANNELS``).

    ``y_c = x_c / (bias + alpha / size * sum_{i in W(c)} x_i^2) ** beta`` with the window
    ``W(c) = [c - floor((size-1)/2), c + ceil((size-1)/2)]`` clipped to the channels.
    ``backward`` is the exact gradient; for LRP the layer passes relevance through (its
    default rule is Pass), as is usual for this normalisation.
    """

    def __init__(self, size, alpha=1e-4, beta=0.75, bias=1.0):
        if not (isinstance(size, numbers.Integral) and size >= 1):
            raise RuleParameterError(f"LRN size must be an int >= 1, got {size!r}")
        for name, v in (("alpha", alpha), ("beta", beta), ("bias", bias)):
            if not (isinstance(v, numbers.Real) and np.isfinite(v)):
                raise RuleParameterError(f"LRN {name} must be a finite number, got {v!r}")
        if bias <= 0:
            raise RuleParameterError(f"LRN bias must be > 0 (it keeps the denominator positive), got {bias!r}")
        self.size, self.alpha, self.beta, self.bias = int(size), float(alpha), float(beta), float(bias)
        self.before, self.after = (self.size - 1) // 2, self.size // 2

    def __repr__(self):
        return f"LRN(size={self.size}, alpha={self.alpha}, beta={self.beta}, bias={self.bias})"

    def _denominator(self, a):
        t = a.dtype.type
        return t(self.bias) + t(self.alpha / self.size) * _channel_window_sum(a * a, self.before, self.after)

    def forward(self, a):
        self.input = self._check_input(a, 4)
        return a * self._denominator(a) ** a.dtype.type(-self.beta)

    def backward(self, grad, param_grads=True):
        a = self.input
        t = a.dtype.type
        d = self._denominator(a)
        # channel c's denominator sums over W(c); input i enters the denominators of c in [i - after, i + before]
        inner = _channel_window_sum(grad * a * d ** t(-self.beta - 1), self.after, self.before)
        return grad * d ** t(-self.beta) - t(2 * self.alpha * self.beta / self.size) * a * inner

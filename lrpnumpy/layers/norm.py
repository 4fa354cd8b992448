"""Batch normalisation in its inference form."""

import numbers

import numpy as np

from ..errors import LayerParameterError, NonFiniteError
from .base import Layer, as_dtype


class BatchNorm2d(Layer):
    """``(x - running_mean) / sqrt(running_var + eps) * weight + bias`` per channel.

    Parameters start as the identity map (mean 0, var 1, weight 1, bias 0).
    For LRP, fold it into the preceding layer with
    :func:`lrpnumpy.canonize.fold_batchnorm`; left in place it passes
    relevance through unchanged.
    """

    params = ("weight", "bias", "running_mean", "running_var")
    config_keys = ("num_features", "eps")
    linear = True  # at inference: a per-channel scale and shift

    def __init__(self, num_features, eps=1e-5, dtype=np.float64):
        self._configure(num_features, eps)
        self._initialise(None, as_dtype(dtype))

    def _configure(self, num_features, eps=1e-5):
        if not (isinstance(num_features, numbers.Integral) and num_features >= 1):
            raise LayerParameterError(f"num_features must be an int >= 1, got {num_features!r}")
        if not (isinstance(eps, numbers.Real) and eps > 0):
            raise LayerParameterError(f"BatchNorm2d eps must be > 0, got {eps!r}")
        self.num_features, self.eps = int(num_features), float(eps)

    def _init_params(self, rng, dtype):
        c = self.num_features
        self.weight, self.bias = np.ones(c, dtype), np.zeros(c, dtype)
        self.running_mean, self.running_var = np.zeros(c, dtype), np.ones(c, dtype)

    def param_shapes(self):
        return {name: (self.num_features,) for name in self.params}

    optional = ()

    def _checked_param(self, name, value):
        value = super()._checked_param(name, value)
        if name == "running_var" and (value < 0).any():
            raise NonFiniteError(f"running_var of {self._label()} must be >= 0, got {value.min()!r} at index "
                                 f"{int(value.argmin())}")
        return value

    def __repr__(self):
        return f"BatchNorm2d({self.num_features}, eps={self.eps})"

    def output_shape(self, input_shape):
        self._check_rank(input_shape, 4, self.num_features)
        return tuple(input_shape)

    def scale_shift(self):
        """``(scale, shift)`` with ``forward(x) = x * scale + shift`` per channel."""
        scale = self.weight / np.sqrt(self.running_var + self.running_var.dtype.type(self.eps))
        return scale, self.bias - self.running_mean * scale

    def _forward(self, a):
        scale, shift = self.scale_shift()
        return a * scale[:, None, None] + shift[:, None, None]

    def _backward(self, grad, step):
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
            raise LayerParameterError(f"LRN size must be an int >= 1, got {size!r}")
        for name, v in (("alpha", alpha), ("beta", beta), ("bias", bias)):
            if not (isinstance(v, numbers.Real) and np.isfinite(v)):
                raise LayerParameterError(f"LRN {name} must be a finite number, got {v!r}")
        if bias <= 0:
            raise LayerParameterError(f"LRN bias must be > 0 (it keeps the denominator positive), got {bias!r}")
        self.size, self.alpha, self.beta, self.bias = int(size), float(alpha), float(beta), float(bias)
        self.before, self.after = (self.size - 1) // 2, self.size // 2

    config_keys = ("size", "alpha", "beta", "bias")
    normalises = True

    def __repr__(self):
        return f"LRN(size={self.size}, alpha={self.alpha}, beta={self.beta}, bias={self.bias})"

    def output_shape(self, input_shape):
        self._check_rank(input_shape, 4)
        return tuple(input_shape)

    def _denominator(self, a):
        t = a.dtype.type
        return t(self.bias) + t(self.alpha / self.size) * _channel_window_sum(a * a, self.before, self.after)

    def _forward(self, a):
        return a * self._denominator(a) ** a.dtype.type(-self.beta)

    def _backward(self, grad, step):
        a = step.input
        t = a.dtype.type
        d = self._denominator(a)
        # channel c's denominator sums over W(c); input i enters the denominators of c in [i - after, i + before]
        inner = _channel_window_sum(grad * a * d ** t(-self.beta - 1), self.after, self.before)
        return grad * d ** t(-self.beta) - t(2 * self.alpha * self.beta / self.size) * a * inner

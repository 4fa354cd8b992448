"""Transformer normalisations on the last axes: LayerNorm and RMSNorm (PyTorch's layouts).

Both divide by a statistic of the input (the standard deviation, the root mean square).
For LRP that division is what AttnLRP and CP-LRP hold constant (see
:mod:`lrpnumpy.rules_transformer`): the layer is then linear in its input.  The helpers
:meth:`LayerNorm.scale` and :meth:`RMSNorm.scale` give that constant per token.
"""

import numbers

import numpy as np

from ..errors import LayerParameterError, ShapeError
from .base import Layer, as_dtype, check_finite


def _normalized_shape(value, name):
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    try:
        shape = tuple(value)
    except TypeError:
        shape = ()
    if not shape or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in shape):
        raise LayerParameterError(f"{name} normalized_shape must be an int >= 1 or a tuple of them, got {value!r}")
    return tuple(int(v) for v in shape)


def _mean(v, axes):
    """``v.mean(axis=axes, keepdims=True)``, the same bits without NumPy's Python wrapper around it (on a
    small ViT's tokens the wrapper took half of the mean's time): the sum over ``axes``, then divided,
    as ``mean`` divides, by their count as an ``intp`` with unsafe casting."""
    out = np.add.reduce(v, axis=axes, keepdims=True)
    count = 1
    for ax in axes:
        count *= v.shape[ax]
    return np.true_divide(out, np.intp(count), out=out, casting="unsafe")


def _positive(value, name):
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value) and value > 0):
        raise LayerParameterError(f"{name} eps must be a finite number > 0, got {value!r}")
    return float(value)


class _LastAxesNorm(Layer):
    """Shared parts: the normalised axes are the last ``len(normalized_shape)`` ones."""

    abstract = True
    optional = ("weight", "bias")
    normalises = True

    def param_shapes(self):
        return {name: self.normalized_shape for name in self.params}

    def _axes(self, ndim):
        return tuple(range(ndim - len(self.normalized_shape), ndim))

    def output_shape(self, input_shape):
        k = len(self.normalized_shape)
        if len(input_shape) < k + 1 or tuple(input_shape[-k:]) != self.normalized_shape:
            raise ShapeError(f"{self!r} normalises the last axes {self.normalized_shape} of an input with a batch "
                             f"axis, got shape {tuple(input_shape)}")
        return tuple(input_shape)

    def check_input(self, a):
        a = super().check_input(a)
        if not np.isfinite(a).all():  # (the message, with the layer's repr, formatted only then)
            check_finite(a, f"input of {self!r}")
        return a

    def _reduce(self, v, ndim):
        """``v`` summed over the leading (not normalised) axes: a parameter's gradient."""
        return v.reshape((-1,) + self.normalized_shape).sum(axis=0)


class LayerNorm(_LastAxesNorm):
    r"""``y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias`` over the last axes (PyTorch's LayerNorm).

    Parameters
    ----------
    normalized_shape : int or tuple of int
        The trailing axes normalised together (``d_model`` for tokens (N, T, d_model)).
    eps : float, optional
        Added to the (biased) variance.
    elementwise_affine : bool, optional
        Whether the layer has ``weight`` (ones) and ``bias`` (zeros), each of ``normalized_shape``.
    dtype : float32 or float64, optional

    Raises
    ------
    NonFiniteError
        For an input holding NaN or infinity (the statistics would spread it over the token).
    """

    params = ("weight", "bias")
    config_keys = ("normalized_shape", "eps", "elementwise_affine")

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, dtype=np.float64):
        self._configure(normalized_shape, eps, elementwise_affine)
        self._initialise(None, as_dtype(dtype))

    def _configure(self, normalized_shape, eps=1e-5, elementwise_affine=True):
        self.normalized_shape = _normalized_shape(normalized_shape, "LayerNorm")
        self.eps = _positive(eps, "LayerNorm")
        self.elementwise_affine = bool(elementwise_affine)
        object.__setattr__(self, "weight", None)
        object.__setattr__(self, "bias", None)

    def _init_params(self, rng, dtype):
        if self.elementwise_affine:
            self.weight = np.ones(self.normalized_shape, dtype)
            self.bias = np.zeros(self.normalized_shape, dtype)

    def config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps,
                "elementwise_affine": self.elementwise_affine}

    def __repr__(self):
        shape = self.normalized_shape[0] if len(self.normalized_shape) == 1 else self.normalized_shape
        extra = "" if self.elementwise_affine else ", elementwise_affine=False"
        return f"LayerNorm({shape}, eps={self.eps:g}{extra})"

    def scale(self, x):
        """``sqrt(var(x) + eps)`` per token (keepdims): the divisor LRP holds constant."""
        return self._centred_scale(x)[1]

    def held_scale(self, step):
        """:meth:`scale` of ``step``'s input: the one the forward pass computed (the step's state), else
        computed again (a step made by hand); the same numbers either way."""
        x, std = step.input, step.state
        k = len(self.normalized_shape)
        if (type(std) is np.ndarray and std.dtype == x.dtype
                and std.shape == x.shape[:x.ndim - k] + (1,) * k):
            return std
        return self.scale(x)

    def _centred_scale(self, x):
        """``(x - mean(x), sqrt(var(x) + eps))`` over the normalised axes."""
        axes = self._axes(x.ndim)
        centred = x - _mean(x, axes)
        var = _mean(centred * centred, axes)
        var += x.dtype.type(self.eps)
        return centred, np.sqrt(var, out=var)

    def _normalised(self, x):
        centred, std = self._centred_scale(x)
        return np.divide(centred, std, out=centred), std

    def _apply(self, a):
        """The output, and as state the standard deviation per token (what AttnLRP and CP-LRP hold constant)."""
        xhat, std = self._normalised(a)
        if self.weight is not None:
            xhat *= self.weight
        if self.bias is not None:
            xhat += self.bias
        return xhat, std

    def _forward(self, a):
        return self._apply(a)[0]

    def _backward(self, grad, step):
        xhat, std = self._normalised(step.input)
        axes = self._axes(grad.ndim)
        g = grad if self.weight is None else grad * self.weight
        # d xhat_i / d x_j = (delta_ij - 1/D - xhat_i xhat_j / D) / std
        return (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True)) / std

    def param_grads(self, grad, step):
        self.check_grad(grad, step)
        xhat, _ = self._normalised(step.input)
        return {"weight": None if self.weight is None else self._reduce(grad * xhat, grad.ndim),
                "bias": None if self.bias is None else self._reduce(grad, grad.ndim)}


class RMSNorm(_LastAxesNorm):
    r"""``y = x / sqrt(mean(x^2) + eps) * weight`` over the last axes (PyTorch's RMSNorm, LLaMA's norm).

    Parameters
    ----------
    normalized_shape : int or tuple of int
    eps : float, optional
        Added to the mean square (default 1e-6, as LLaMA; PyTorch's default is the dtype's
        machine epsilon, so give it explicitly when comparing).
    dtype : float32 or float64, optional
    """

    params = ("weight",)
    optional = ()
    config_keys = ("normalized_shape", "eps")

    def __init__(self, normalized_shape, eps=1e-6, dtype=np.float64):
        self._configure(normalized_shape, eps)
        self._initialise(None, as_dtype(dtype))

    def _configure(self, normalized_shape, eps=1e-6):
        self.normalized_shape = _normalized_shape(normalized_shape, "RMSNorm")
        self.eps = _positive(eps, "RMSNorm")

    def _init_params(self, rng, dtype):
        self.weight = np.ones(self.normalized_shape, dtype)

    def config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps}

    def __repr__(self):
        shape = self.normalized_shape[0] if len(self.normalized_shape) == 1 else self.normalized_shape
        return f"RMSNorm({shape}, eps={self.eps:g})"

    def scale(self, x):
        """``sqrt(mean(x^2) + eps)`` per token (keepdims): the divisor LRP holds constant."""
        return np.sqrt((x * x).mean(axis=self._axes(x.ndim), keepdims=True) + x.dtype.type(self.eps))

    def _forward(self, a):
        return a / self.scale(a) * self.weight

    def _backward(self, grad, step):
        x = step.input
        rms = self.scale(x)
        g = grad * self.weight
        axes = self._axes(grad.ndim)
        return g / rms - x * (g * x).mean(axis=axes, keepdims=True) / rms ** 3

    def param_grads(self, grad, step):
        self.check_grad(grad, step)
        x = step.input
        return {"weight": self._reduce(grad * x / self.scale(x), grad.ndim)}

"""Sum, average and max pooling over NCHW input."""

import numpy as np

from .. import kernels
from ..errors import RuleParameterError, ShapeError
from .base import AffineLayer, Layer, padding4, pair, short_padding


class _Pool2d:
    """Window geometry shared by the pooling layers."""

    def _init_geometry(self, kernel_size, stride, padding):
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = padding4(padding)

    def __repr__(self):
        extra = f", stride={self.stride}" if self.stride != self.kernel_size else ""
        extra += f", padding={short_padding(self.padding)}" if any(self.padding) else ""
        return f"{type(self).__name__}(kernel_size={self.kernel_size}{extra})"

    def _geometry(self):
        return self.kernel_size + self.stride + (self.padding,)

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        (kh, kw), (sh, sw), p = self.kernel_size, self.stride, self.padding
        return (n, c, kernels.output_size(h, kh, sh, p[0], p[1]), kernels.output_size(w, kw, sw, p[2], p[3]))

    def _check_pool_input(self, a):
        self._check_input(a, 4)
        if min(self.output_shape(a.shape)[2:]) < 1:
            raise ShapeError(f"{self!r}: input of spatial size {a.shape[2:]} is smaller than the window")
        return a


class SumPool2d(_Pool2d, AffineLayer):
    """Sum over each ``kernel_size`` window (zero padding); a linear map without parameters.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int, (ph, pw) or (top, bottom, left, right)
    """

    #: Every window sum is multiplied by this (1 here; 1/k^2 for AvgPool2d).
    scale = 1.0

    def __init__(self, kernel_size, stride=None, padding=0):
        self._init_geometry(kernel_size, stride, padding)

    def forward_with(self, x, weight=None, bias=None):
        y = kernels.sum_pool2d(x, *self._geometry())
        return y if self.scale == 1.0 else y * x.dtype.type(self.scale)

    def backward_with(self, grad, weight, input_shape):
        g = kernels.sum_pool2d_grad(grad, input_shape[2], input_shape[3], *self._geometry())
        return g if self.scale == 1.0 else g * grad.dtype.type(self.scale)

    def bias_view(self, bias):
        return bias

    def forward(self, a):
        self.input = self._check_pool_input(a)
        return self.forward_with(a)

    def backward(self, grad):
        return self.backward_with(grad, None, self.input.shape)


class AvgPool2d(SumPool2d):
    """Mean over each window: a :class:`SumPool2d` scaled by ``1 / (kh * kw)``.

    Padded positions count in the divisor (PyTorch's ``count_include_pad=True``).
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__(kernel_size, stride, padding)
        self.scale = 1.0 / (self.kernel_size[0] * self.kernel_size[1])


class MaxPool2d(_Pool2d, AffineLayer):
    """Maximum over each window (padding counts as ``-inf``).

    The gradient goes to the first maximum of each window in row-major window
    order (as in PyTorch); gradients of overlapping windows add up.  Once
    :meth:`forward` has picked the winners, max pooling is a linear
    selection, which :meth:`forward_with` / :meth:`backward_with` apply to
    other inputs (so rules such as ``Epsilon`` run on it, as Captum does).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int, (ph, pw) or (top, bottom, left, right)
        At most half the kernel on each side, so no window is all padding.
    """

    def __init__(self, kernel_size, stride=None, padding=0):
        self._init_geometry(kernel_size, stride, padding)
        (kh, kw), p = self.kernel_size, self.padding
        if max(p[0], p[1]) > kh // 2 or max(p[2], p[3]) > kw // 2:
            raise RuleParameterError(f"MaxPool2d padding {p} must be at most half the kernel {self.kernel_size}")

    def forward(self, a):
        self.input = self._check_pool_input(a)
        y, self.argmax = kernels.max_pool2d(a, *self._geometry())
        return y

    def forward_with(self, x, weight=None, bias=None):
        """Select, in ``x``, the elements that won the last :meth:`forward`."""
        return kernels.max_pool2d_gather(x, self.argmax, *self._geometry())

    def backward_with(self, grad, weight, input_shape):
        return kernels.max_pool2d_grad(grad, self.argmax, input_shape[2], input_shape[3], *self._geometry())

    def bias_view(self, bias):
        return bias

    def backward(self, grad):
        return self.backward_with(grad, None, self.input.shape)

    def backward_split(self, grad):
        """Like :meth:`backward`, but each window's gradient is split equally among tied maxima."""
        y = self.forward(self.input)
        return kernels.max_pool2d_grad_split(grad, self.input, y, *self._geometry())

    def sum_pool(self):
        """The :class:`SumPool2d` with the same windows."""
        return SumPool2d(self.kernel_size, self.stride, self.padding)

    def clear(self):
        super().clear()
        self.argmax = None

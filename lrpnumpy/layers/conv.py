"""2-D convolution (cross-correlation, as in PyTorch, ONNX and Caffe)."""

import numbers

import numpy as np

from .. import kernels
from ..errors import LayerParameterError, ShapeError
from .base import AffineLayer, as_dtype, he_normal, padding4, pair, short_padding, stackable


class Conv2d(AffineLayer):
    """2-D convolution on NCHW input with weight of shape (out, in/groups, kh, kw).

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (ph, pw) or (top, bottom, left, right)
        Zero padding; the 4-tuple form allows asymmetric padding.
    groups : int
        ``in_channels`` and ``out_channels`` must both be divisible by it.
    bias : bool
    rng : None, int or numpy.random.Generator
        Source of He-normal weights, ``N(0, 2 / fan_in)``.
    dtype : float32 or float64
    """

    params = ("weight", "bias")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 groups=1, dilation=1, rng=None, dtype=np.float64):
        self._configure(in_channels, out_channels, kernel_size, stride, padding, bias, groups, dilation)
        self._initialise(rng, as_dtype(dtype))

    def _configure(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, groups=1,
                   dilation=1):
        self.in_channels, self.out_channels = pair((in_channels, out_channels), "(in_channels, out_channels)")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = padding4(padding)
        self.dilation = pair(dilation, "dilation")
        if not (isinstance(groups, numbers.Integral) and not isinstance(groups, bool) and groups >= 1
                and self.in_channels % groups == 0 and self.out_channels % groups == 0):
            raise LayerParameterError(f"groups must be an int >= 1 dividing in_channels={in_channels} and "
                                      f"out_channels={out_channels}, got {groups!r}")
        self.groups = int(groups)
        object.__setattr__(self, "bias", True if bias else None)  # the array replaces it in _init_params

    def _init_params(self, rng, dtype):
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        self.weight = he_normal(rng, self.param_shapes()["weight"], fan_in, dtype)
        self.bias = None if self.bias is None else np.zeros(self.out_channels, dtype=dtype)

    def param_shapes(self):
        return {"weight": (self.out_channels, self.in_channels // self.groups) + self.kernel_size,
                "bias": (self.out_channels,)}

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "bias": self.bias is not None, "groups": self.groups, "dilation": list(self.dilation)}

    def __repr__(self):
        extra = ""
        if self.stride != (1, 1):
            extra += f", stride={self.stride}"
        if any(self.padding):
            extra += f", padding={short_padding(self.padding)}"
        if self.dilation != (1, 1):
            extra += f", dilation={self.dilation}"
        if self.groups != 1:
            extra += f", groups={self.groups}"
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}{extra}, "
                f"bias={self.bias is not None})")

    def _geometry(self):
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return sh, sw, self.padding, dh, dw, self.groups

    def window(self, h, w):
        return self.kernel_size + self.stride + (self.padding,) + self.dilation

    def output_shape(self, input_shape):
        self._check_rank(input_shape, 4, self.in_channels)
        n, _, h, w = input_shape
        (kh, kw), (sh, sw), (dh, dw), p = self.kernel_size, self.stride, self.dilation, self.padding
        oh, ow = kernels.output_size(h, kh, sh, p[0], p[1], dh), kernels.output_size(w, kw, sw, p[2], p[3], dw)
        if oh < 1 or ow < 1:
            raise ShapeError(f"{self!r}: input of spatial size {tuple(input_shape[2:])} is smaller than the "
                             f"(dilated) kernel after padding")
        return (n, self.out_channels, oh, ow)

    def forward_with(self, x, weight, bias=None, step=None):
        y = kernels.conv2d(x, weight, *self._geometry())
        if bias is not None:  # in place: the kernel's output is a new array (no second one to fault in)
            y += bias[:, None, None]
        return y

    def backward_with(self, grad, weight, step):
        h, w = step.input.shape[2:]
        return kernels.conv2d_grad_input(grad, weight, h, w, *self._geometry())

    def bias_view(self, bias, ndim=None):
        return bias[:, None, None]

    def forward_with_many(self, x, weights, step, biases=None):
        # One convolution with the weights stacked along the output channels.
        if len(weights) == 1 or self.groups != 1 or not stackable(weights):
            return super().forward_with_many(x, weights, step, biases)
        stacked = self.derived(("stack", len(weights)), lambda: np.concatenate(weights), inputs=weights)
        ys = np.split(self.forward_with(x, stacked), len(weights), axis=1)
        for y, b in zip(ys, biases or ()):
            if b is not None:  # views of one new array: in place
                y += b[:, None, None]
        return ys

    def backward_with_many(self, pairs, step):
        # sum_k W_k^T s_k is one transposed convolution with stacked weights and gradients.
        if len(pairs) == 1 or self.groups != 1 or not stackable([w for _, w in pairs]):
            return super().backward_with_many(pairs, step)
        weights = [w for _, w in pairs]
        stacked = self.derived(("stack", len(weights)), lambda: np.concatenate(weights), inputs=weights)
        return self.backward_with(np.concatenate([s for s, _ in pairs], axis=1), stacked, step)

    def param_grads(self, grad, step):
        self.check_grad(grad, step)
        kh, kw = self.kernel_size
        return {"weight": kernels.conv2d_grad_weight(step.input, grad, kh, kw, *self._geometry()),
                "bias": None if self.bias is None else grad.sum(axis=(0, 2, 3))}

"""2-D convolution (cross-correlation, as in PyTorch, ONNX and Caffe)."""

import numpy as np

from .. import kernels
from ..errors import RuleParameterError, ShapeError
from .base import AffineLayer, as_dtype, he_normal, padding4, pair, short_padding


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
        self.in_channels, self.out_channels = pair((in_channels, out_channels), "(in_channels, out_channels)")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.padding = padding4(padding)
        self.dilation = pair(dilation, "dilation")
        if not (isinstance(groups, int) and groups >= 1 and in_channels % groups == 0
                and out_channels % groups == 0):
            raise RuleParameterError(f"groups must be an int >= 1 dividing in_channels={in_channels} and "
                                     f"out_channels={out_channels}, got {groups!r}")
        self.groups = groups
        dt = as_dtype(dtype)
        kh, kw = self.kernel_size
        fan_in = in_channels // groups * kh * kw
        shape = (out_channels, in_channels // groups, kh, kw)
        self.weight = he_normal(rng, shape, fan_in, dt)
        self.bias = np.zeros(out_channels, dtype=dt) if bias else None

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

    def output_shape(self, input_shape):
        n, _, h, w = input_shape
        (kh, kw), (sh, sw), (dh, dw), p = self.kernel_size, self.stride, self.dilation, self.padding
        return (n, self.out_channels, kernels.output_size(h, kh, sh, p[0], p[1], dh),
                kernels.output_size(w, kw, sw, p[2], p[3], dw))

    def forward_with(self, x, weight, bias=None):
        y = kernels.conv2d(x, weight, *self._geometry())
        return y if bias is None else y + bias[:, None, None]

    def backward_with(self, grad, weight, input_shape):
        return kernels.conv2d_grad_input(grad, weight, input_shape[2], input_shape[3], *self._geometry())

    def bias_view(self, bias):
        return bias[:, None, None]

    def forward_many(self, x, weights):
        # One convolution with the weights stacked along the output channels.
        if len(weights) == 1 or self.groups != 1:
            return super().forward_many(x, weights)
        stacked = self.derived(("stack", len(weights)), lambda: np.concatenate(weights), inputs=weights)
        return np.split(self.forward_with(x, stacked), len(weights), axis=1)

    def backward_many(self, pairs, input_shape):
        # sum_k W_k^T s_k is one transposed convolution with stacked weights and gradients.
        if len(pairs) == 1 or self.groups != 1:
            return super().backward_many(pairs, input_shape)
        weights = [w for _, w in pairs]
        stacked = self.derived(("stack", len(weights)), lambda: np.concatenate(weights), inputs=weights)
        return self.backward_with(np.concatenate([s for s, _ in pairs], axis=1), stacked, input_shape)

    def forward(self, a):
        self._check_input(a, 4, self.in_channels)
        n, c, oh, ow = self.output_shape(a.shape)
        if oh < 1 or ow < 1:
            raise ShapeError(f"{self!r}: input of spatial size {a.shape[2:]} is smaller than the "
                             f"(dilated) kernel after padding")
        self.input = a
        self.output = self.forward_with(a, self.weight, self.bias)
        return self.output

    def backward(self, grad, param_grads=True):
        if param_grads:
            kh, kw = self.kernel_size
            self.grad_weight = kernels.conv2d_grad_weight(self.input, grad, kh, kw, *self._geometry())
            self.grad_bias = None if self.bias is None else grad.sum(axis=(0, 2, 3))
        return self.backward_with(grad, self.weight, self.input.shape)

"""Sum, average and max pooling over NCHW input."""

import math
import numbers

import numpy as np

from .. import kernels
from ..errors import LayerParameterError, ShapeError
from .base import AffineLayer, padding4, pair, short_padding


def ceil_output_size(size, kernel, stride, pad_before, pad_after):
    """Output size with ceil rounding (PyTorch, ONNX and Caffe): a last window that would start in the
    bottom/right padding is dropped."""
    out = math.ceil((size + pad_before + pad_after - kernel) / stride) + 1
    if (out - 1) * stride >= size + pad_before:
        out -= 1
    return out


def _windows_touch(size, out, kernel, stride, pad, dilation):
    """Whether every window (taps ``p*stride - pad + i*dilation``, i < kernel) has a tap in [0, size)."""
    for p in range(out):
        start = p * stride - pad
        first = 0 if start >= 0 else (-start + dilation - 1) // dilation  # the first tap at 0 or after
        if first >= kernel or start + first * dilation >= size:
            return False
    return True


class _Pool2d:
    """Window geometry shared by the pooling layers.

    With ``ceil_mode`` the output size rounds up; the extra bottom/right rows the last windows
    need are padding (zero for sums, ``-inf`` for max), added per input size.
    """

    ceil_mode = False
    dilation = (1, 1)

    def _init_geometry(self, kernel_size, stride, padding, ceil_mode, dilation=1):
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = padding4(padding)
        self.ceil_mode = bool(ceil_mode)
        self.dilation = pair(dilation, "dilation")

    def _span(self):
        """The window's extent: ``dilation * (kernel - 1) + 1`` per axis."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))

    def _repr_extra(self):
        extra = f", stride={self.stride}" if self.stride != self.kernel_size else ""
        extra += f", padding={short_padding(self.padding)}" if any(self.padding) else ""
        extra += f", dilation={self.dilation}" if self.dilation != (1, 1) else ""
        return extra + (", ceil_mode=True" if self.ceil_mode else "")

    def __repr__(self):
        return f"{type(self).__name__}(kernel_size={self.kernel_size}{self._repr_extra()})"

    def effective_padding(self, h, w):
        """Padding (top, bottom, left, right) for an h x w input, ceil-mode rows included."""
        pt, pb, pl, pr = self.padding
        if not self.ceil_mode:
            return self.padding
        (kh, kw), (sh, sw) = self._span(), self.stride
        oh, ow = ceil_output_size(h, kh, sh, pt, pb), ceil_output_size(w, kw, sw, pl, pr)
        return (pt, pb + max(0, (oh - 1) * sh + kh - (h + pt + pb)),
                pl, pr + max(0, (ow - 1) * sw + kw - (w + pl + pr)))

    def _geometry(self, h, w):
        return self.kernel_size + self.stride + (self.effective_padding(h, w),) + self.dilation

    def window(self, h, w):
        return self._geometry(h, w)

    def output_shape(self, input_shape):
        self._check_rank(input_shape, 4)
        n, c, h, w = input_shape
        (kh, kw), (sh, sw), p = self._span(), self.stride, self.effective_padding(h, w)
        oh, ow = kernels.output_size(h, kh, sh, p[0], p[1]), kernels.output_size(w, kw, sw, p[2], p[3])
        if oh < 1 or ow < 1:
            raise ShapeError(f"{self!r}: input of spatial size {tuple(input_shape[2:])} is smaller than the window")
        return (n, c, oh, ow)

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
                "ceil_mode": self.ceil_mode, "dilation": list(self.dilation), **self._extra_config()}

    def _extra_config(self):
        return {}


class SumPool2d(_Pool2d, AffineLayer):
    """Sum over each ``kernel_size`` window (zero padding), times ``scale``: a linear map.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int, (ph, pw) or (top, bottom, left, right)
    ceil_mode : bool
        Round the output size up (see :func:`ceil_output_size`).
    scale : float
        Every window sum is multiplied by it (the LRP Toolbox's sum pooling uses
        ``1 / sqrt(kh * kw)``).
    dilation : int or (int, int)
        Spacing between the window's taps.
    """

    pool = "sum"

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, scale=1.0, dilation=1):
        self._init_geometry(kernel_size, stride, padding, ceil_mode, dilation)
        if not (isinstance(scale, numbers.Real) and np.isfinite(scale) and scale > 0):
            raise LayerParameterError(f"SumPool2d scale must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)

    def __repr__(self):
        extra = f", scale={self.scale!r}" if self.scale != 1.0 else ""
        return f"SumPool2d(kernel_size={self.kernel_size}{self._repr_extra()}{extra})"

    def _extra_config(self):
        return {"scale": self.scale}

    def _divide(self, y, h, w):
        return y if self.scale == 1.0 else y * y.dtype.type(self.scale)

    def forward_with(self, x, weight=None, bias=None, step=None):
        h, w = x.shape[2:]
        return self._divide(kernels.sum_pool2d(x, *self._geometry(h, w)), h, w)

    def backward_with(self, grad, weight, step):
        h, w = step.input.shape[2:]
        return kernels.sum_pool2d_grad(self._divide(grad, h, w), h, w, *self._geometry(h, w))

    def bias_view(self, bias, ndim=None):
        return bias


class AvgPool2d(SumPool2d):
    """Mean over each window: a :class:`SumPool2d` divided by the window's size.

    Parameters
    ----------
    kernel_size, stride, padding, ceil_mode
        As for :class:`SumPool2d`.
    count_include_pad : bool
        True (PyTorch's default): padded positions count in the divisor, which is the window
        clipped to the padded extent (so ceil-mode rows past it do not count; PyTorch and
        Caffe).  False (ONNX's default): only positions inside the input count.
    """

    pool = None  # a mean: the divisor depends on the window's position

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, dilation=1):
        super().__init__(kernel_size, stride, padding, ceil_mode, dilation=dilation)
        self.count_include_pad = bool(count_include_pad)

    def __repr__(self):
        extra = "" if self.count_include_pad else ", count_include_pad=False"
        return f"AvgPool2d(kernel_size={self.kernel_size}{self._repr_extra()}{extra})"

    def _extra_config(self):
        return {"count_include_pad": self.count_include_pad}

    def divisor(self, h, w):
        """(oh, ow) array: how many positions each window averages over, for an h x w input."""
        pt, pb, pl, pr = self.padding
        if self.count_include_pad:  # ones over the padded extent, extra ceil rows outside it
            ones = np.ones((1, 1, h + pt + pb, w + pl + pr))
            eff = self.effective_padding(h, w)
            pad = (0, eff[1] - pb, 0, eff[3] - pr)
        else:
            ones, pad = np.ones((1, 1, h, w)), self.effective_padding(h, w)
        counts = kernels.reference.sum_pool2d(ones, *self.kernel_size, *self.stride, pad, *self.dilation)[0, 0]
        # a window that lies entirely in the padding (count_include_pad=False) sums nothing: its mean is 0
        return np.maximum(counts, 1)

    def _divide(self, y, h, w):
        return y / self.divisor(h, w).astype(y.dtype)


class GlobalAvgPool2d(AffineLayer):
    """Mean over all spatial positions: (N, C, H, W) -> (N, C, 1, 1)."""

    def __repr__(self):
        return "GlobalAvgPool2d()"

    def output_shape(self, input_shape):
        self._check_rank(input_shape, 4)
        return tuple(input_shape[:2]) + (1, 1)

    def forward_with(self, x, weight=None, bias=None, step=None):
        return x.mean(axis=(2, 3), keepdims=True)

    def backward_with(self, grad, weight, step):
        shape = step.input.shape
        return np.broadcast_to(grad / grad.dtype.type(shape[2] * shape[3]), shape).copy()

    def bias_view(self, bias, ndim=None):
        return bias


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
        At most ``kernel - 1`` (of the dilated kernel) on each side, so every window overlaps the
        input.
    ceil_mode : bool
        Round the output size up (see :func:`ceil_output_size`).
    dilation : int or (int, int)
        Spacing between the window's taps.
    """

    pool = "max"

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, dilation=1):
        self._init_geometry(kernel_size, stride, padding, ceil_mode, dilation)
        (kh, kw), p = self._span(), self.padding
        if max(p[0], p[1]) > kh - 1 or max(p[2], p[3]) > kw - 1:
            raise LayerParameterError(f"MaxPool2d padding {p} must be at most (dilated) kernel - 1 on each side "
                                     f"(kernel {self.kernel_size}, dilation {self.dilation}), so that no window "
                                     f"lies entirely in the padding")

    def output_shape(self, input_shape):
        shape = super().output_shape(input_shape)
        if self.dilation != (1, 1):  # contiguous windows always overlap the input (padding <= kernel - 1)
            h, w = input_shape[2:]
            p = self.effective_padding(h, w)
            for axis, (size, out, pad) in enumerate(((h, shape[2], p[0]), (w, shape[3], p[2]))):
                if not _windows_touch(size, out, self.kernel_size[axis], self.stride[axis], pad,
                                      self.dilation[axis]):
                    raise ShapeError(f"{self!r}: on an input of spatial size {tuple(input_shape[2:])} some windows "
                                     f"have every tap in the padding (their maximum would be -inf)")
        return shape

    def _apply(self, a):
        y, winners = kernels.max_pool2d(a, *self._geometry(*a.shape[2:]))
        return y, winners

    def _forward(self, a):  # no trace: the maxima alone
        return kernels.max_pool2d_values(a, *self._geometry(*a.shape[2:]))

    def forward_with(self, x, weight=None, bias=None, step=None):
        """Select, in ``x``, the elements that won the forward pass ``step`` (a linear map of ``x``)."""
        return kernels.max_pool2d_gather(x, step.state, *self._geometry(*x.shape[2:]))

    def backward_with(self, grad, weight, step):
        h, w = step.input.shape[2:]
        return kernels.max_pool2d_grad(grad, step.state, h, w, *self._geometry(h, w))

    def bias_view(self, bias, ndim=None):
        return bias

    def backward_split(self, grad, step):
        """Like :meth:`backward`, but each window's gradient is split equally among tied maxima."""
        self.check_grad(grad, step)
        a = step.input
        return kernels.max_pool2d_grad_split(grad, a, step.output, *self._geometry(*a.shape[2:]))

    def sum_pool(self):
        """The :class:`SumPool2d` with the same windows."""
        return SumPool2d(self.kernel_size, self.stride, self.padding, self.ceil_mode, dilation=self.dilation)


def adaptive_windows(size, out):
    """PyTorch's adaptive pooling windows: output ``i`` averages ``[floor(i size / out), ceil((i + 1) size / out))``."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


class AdaptiveAvgPool2d(AffineLayer):
    """Mean over windows that divide the input into an ``output_size`` grid (PyTorch's ``AdaptiveAvgPool2d``).

    Output ``(i, j)`` averages rows ``[floor(i H / oh), ceil((i + 1) H / oh))`` and the same for
    columns, so windows may overlap, and an output larger than the input repeats values (VGG's
    7 x 7 pool on a small input).  The mean over a rectangle is a row average followed by a
    column average: ``y = P_h x P_w^T`` with ``P[i, h] = 1 / |window i|`` on window ``i``, and the
    gradient is ``P_h^T g P_w``.  A linear map: its default rule is Norm, as for average pooling.
    ``output_size`` (1, 1) is :class:`GlobalAvgPool2d`.
    """

    config_keys = ("output_size",)

    def __init__(self, output_size):
        self.output_size = pair(output_size, "output_size")

    def config(self):
        return {"output_size": list(self.output_size)}

    def __repr__(self):
        return f"AdaptiveAvgPool2d(output_size={self.output_size})"

    def output_shape(self, input_shape):
        self._check_rank(input_shape, 4)
        if input_shape[2] < 1 or input_shape[3] < 1:
            raise ShapeError(f"{self!r} needs a non-empty spatial input, got shape {tuple(input_shape)}")
        return tuple(input_shape[:2]) + self.output_size

    @staticmethod
    def averaging(size, out, dtype):
        """The (out, size) matrix whose row ``i`` averages window ``i`` (see :func:`adaptive_windows`)."""
        p = np.zeros((out, size), dtype)
        for i, (start, stop) in enumerate(adaptive_windows(size, out)):
            p[i, start:stop] = 1.0 / (stop - start)
        return p

    def forward_with(self, x, weight=None, bias=None, step=None):
        ph = self.averaging(x.shape[2], self.output_size[0], x.dtype)
        pw = self.averaging(x.shape[3], self.output_size[1], x.dtype)
        return np.ascontiguousarray(ph @ x @ pw.T)

    def backward_with(self, grad, weight, step):
        h, w = step.input.shape[2:]
        ph = self.averaging(h, self.output_size[0], grad.dtype)
        pw = self.averaging(w, self.output_size[1], grad.dtype)
        return np.ascontiguousarray(ph.T @ grad @ pw)

    def bias_view(self, bias, ndim=None):
        return bias

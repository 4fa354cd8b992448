"""The LRP Toolbox's plain-text model format (Lapuschkin et al., JMLR 2016), read and written.

One block per layer in forward order, ending at the first empty line::

    Linear m n              then W (m x n, input-major) on one line, then n biases
    Convolution h w d n s0 s1   then W (h, w, d, n) in C order on one line, then n biases
    SumPool h w s0 s1 | MaxPool h w s0 s1
    Rect | Tanh | SoftMax | Flatten

The Toolbox's data are NHWC, its convolutions are valid (no padding), and its sum pooling is the
window sum divided by ``sqrt(h * w)``.  The legacy form of ``Linear`` gives W as m lines of n
values.  Conversion to and from lrpnumpy's layouts happens here: Conv weights (h, w, d, n) <->
(n, d, h, w), Linear W (m, n) <-> weight (n, m), and a Linear after a Flatten of an h x w x c
feature map has its inputs reordered from (h, w, c) to (c, h, w).  Inputs in the Toolbox's NHWC
layout convert with :func:`from_nhwc`.
"""

import math

import numpy as np

from .. import layers as Lyr
from ..errors import ModelFormatError, ShapeError, UnsupportedLayerError
from ._common import atomic_write, converted, parse_errors


def from_nhwc(x):
    """A Toolbox input batch (N, H, W, C) in lrpnumpy's layout (N, C, H, W)."""
    return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


class _Reader:
    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as f:
                text = f.read().decode("ascii")
        except UnicodeDecodeError as exc:
            raise ModelFormatError(f"{path}: not an LRP Toolbox text model (byte {exc.start} is not ASCII)") \
                from None
        except OSError as exc:
            raise ModelFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        self.lines = text.split("\n")
        self.i = 0

    def error(self, what, line=None):
        return ModelFormatError(f"{self.path}, line {(self.i if line is None else line) + 1}: {what}")

    def next_line(self):
        line = self.lines[self.i] if self.i < len(self.lines) else ""
        self.i += 1
        return line

    def numbers(self, layer, what, count):
        line_no = self.i
        if line_no >= len(self.lines) or not self.lines[line_no].strip():
            raise self.error(f"{layer}: {what} ({count} values) missing", line_no)
        values = self._floats(self.next_line(), layer, what, line_no)
        if values.size != count:
            raise self.error(f"{layer}: {what} has {values.size} values, expected {count}", line_no)
        return values

    def _floats(self, line, layer, what, line_no):
        try:
            values = np.array([float(t) for t in line.split()], dtype=np.float64)
        except ValueError as exc:
            raise self.error(f"{layer}: {what}: {exc}", line_no) from None
        if not np.isfinite(values).all():
            raise self.error(f"{layer}: {what} holds NaN or infinity", line_no)
        return values

    def ints(self, header, count):
        parts = header.split()
        if len(parts) != count + 1:
            raise self.error(f"{parts[0]} needs {count} integers, got {header!r}", self.i - 1)
        try:
            values = [int(p) for p in parts[1:]]
        except ValueError:
            raise self.error(f"{parts[0]}: parameters must be integers, got {header!r}", self.i - 1) from None
        if min(values) < 1:
            raise self.error(f"{parts[0]}: parameters must be >= 1, got {header!r}", self.i - 1)
        return values

    def linear_weights(self, layer, m, n):
        """W of a Linear: one line of m*n values, or (legacy) m lines of n values."""
        line_no = self.i
        first = self._floats(self.lines[line_no] if line_no < len(self.lines) else "", layer, "W", line_no)
        if first.size == m * n:
            self.i += 1
            return first.reshape(m, n)
        if first.size == n and m > 1:  # legacy: one row of W per line
            return np.stack([self.numbers(layer, f"row {r} of W", n) for r in range(m)])
        raise self.error(f"{layer}: W has {first.size} values, expected {m * n} (or {n} per line)", line_no)


def load_lrp_toolbox(path, input_shape=None, dtype=None):
    """Read an LRP Toolbox text model into an equivalent :class:`~lrpnumpy.layers.Sequential`.

    Parameters
    ----------
    path : str
    input_shape : tuple, optional
        One sample's shape in lrpnumpy's layout, (C, H, W) or (features,).  Needed only when a
        Linear follows the Flatten of a feature map larger than 1 x 1 (to reorder its inputs).
    dtype : None, float32 or float64
        The parameters' dtype; None keeps the text's float64.

    Raises
    ------
    ModelFormatError
        Naming the file, the line and the layer, for anything malformed.
    UnsupportedLayerError
        For an unknown layer name.
    """
    with parse_errors(path, "LRP Toolbox model"):
        return converted(_load(path, input_shape), dtype)


def _load(path, input_shape):
    r = _Reader(path)
    layers, shape = [], None if input_shape is None else tuple(input_shape)
    flat_from = None  # (C, H, W) of the map the last Flatten flattened
    while True:
        header = r.next_line()
        if not header.strip():
            break
        name = header.split()[0]
        where = f"{name} (layer {len(layers)})"
        if name == "Linear":
            m, n = r.ints(header, 2)
            w = r.linear_weights(where, m, n)
            b = r.numbers(where, "bias", n)
            if flat_from is not None:
                w = _reorder_rows(w, flat_from, "hwc->chw", f"{path}: {where}")
            layer = Lyr.Linear(m, n)
            layer.weight, layer.bias = np.ascontiguousarray(w.T), b
        elif name == "Convolution":
            h, w_, d, n, s0, s1 = r.ints(header, 6)
            w = r.numbers(where, "W", h * w_ * d * n).reshape(h, w_, d, n)
            b = r.numbers(where, "bias", n)
            layer = Lyr.Conv2d(d, n, (h, w_), stride=(s0, s1))
            layer.weight, layer.bias = np.ascontiguousarray(w.transpose(3, 2, 0, 1)), b
        elif name in ("SumPool", "MaxPool"):
            h, w_, s0, s1 = r.ints(header, 4)
            layer = (Lyr.SumPool2d((h, w_), (s0, s1), scale=1 / math.sqrt(h * w_)) if name == "SumPool"
                     else Lyr.MaxPool2d((h, w_), (s0, s1)))
        elif name in _SIMPLE and len(header.split()) == 1:
            layer = _SIMPLE[name]()
        else:
            raise UnsupportedLayerError(f"{path}, line {r.i}: unknown layer {header.strip()[:40]!r}; known: "
                                        f"Linear, Convolution, SumPool, MaxPool, Rect, Tanh, SoftMax, Flatten")
        flat_from = _flattened(layer, layers, shape, flat_from)
        shape = _next_shape(layer, shape)
        layers.append(layer)
    if not layers:
        raise ModelFormatError(f"{path}: no layers (the model ends at the first empty line)")
    return Lyr.Sequential(*layers, input_shape=input_shape)


_SIMPLE = {"Rect": Lyr.ReLU, "Tanh": Lyr.Tanh, "SoftMax": lambda: Lyr.Softmax(axis=1), "Flatten": Lyr.Flatten}


def _next_shape(layer, shape):
    if shape is None:
        return None
    try:
        return layer.output_shape((1,) + shape)[1:]
    except ShapeError as exc:
        raise ShapeError(f"input_shape {shape} does not fit {layer!r}: {exc}") from None


def _flattened(layer, previous, shape, pending):
    """What a later Linear needs to know about the feature map the last Flatten flattened.

    Returns (C, H, W), ``("unknown", channels)`` when the shape is not known, or None (no
    feature map, or a Linear already consumed it).
    """
    if isinstance(layer, Lyr.Flatten):
        if shape is not None and len(shape) == 3:
            return shape
        convs = [p for p in previous if isinstance(p, Lyr.Conv2d)]
        return ("unknown", convs[-1].out_channels) if convs else None
    return None if isinstance(layer, Lyr.Linear) else pending


def _reorder_rows(w, flat_from, direction, where):
    """Reorder the input rows of W (m, n) between the Toolbox's (h, w, c) and lrpnumpy's (c, h, w)."""
    if flat_from[0] == "unknown":
        if w.shape[0] == flat_from[1]:  # a 1 x 1 feature map: both orders agree
            return w
        raise ShapeError(f"{where} follows the Flatten of a feature map larger than 1 x 1; pass "
                         f"input_shape=(C, H, W) so its inputs can be reordered between (h, w, c) and (c, h, w)")
    c, h, w_ = flat_from
    if w.shape[0] != c * h * w_:
        raise ModelFormatError(f"{where}: has {w.shape[0]} inputs, but the flattened map is {c} x {h} x {w_}")
    if direction == "hwc->chw":
        return w.reshape(h, w_, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w_, -1)
    return w.reshape(c, h, w_, -1).transpose(1, 2, 0, 3).reshape(c * h * w_, -1)


def _line(values):
    return " ".join(repr(float(v)) for v in np.asarray(values).ravel()) + "\n"


def _write_linear(layer, where, flat_from):
    w = layer.weight.T.astype(np.float64)  # (m, n), rows in lrpnumpy's (c, h, w) order
    if flat_from is not None:
        w = _reorder_rows(w, flat_from, "chw->hwc", where)
    b = np.zeros(layer.out_features) if layer.bias is None else layer.bias
    return [f"Linear {layer.in_features} {layer.out_features}\n", _line(w), _line(b)]


def _write_conv(layer, where, flat_from):
    if any(layer.padding) or layer.dilation != (1, 1) or layer.groups != 1:
        raise UnsupportedLayerError(f"{where}: the Toolbox format has no padding, dilation or groups")
    (kh, kw), (s0, s1) = layer.kernel_size, layer.stride
    b = np.zeros(layer.out_channels) if layer.bias is None else layer.bias
    return [f"Convolution {kh} {kw} {layer.in_channels} {layer.out_channels} {s0} {s1}\n",
            _line(layer.weight.transpose(2, 3, 1, 0)), _line(b)]


def _write_pool(name):
    def write(layer, where, flat_from):
        (kh, kw), (s0, s1) = layer.kernel_size, layer.stride
        scale_ok = name == "MaxPool" or math.isclose(layer.scale, 1 / math.sqrt(kh * kw), rel_tol=1e-12)
        if any(layer.padding) or layer.ceil_mode or layer.dilation != (1, 1) or not scale_ok:
            raise UnsupportedLayerError(f"{where}: the Toolbox format has unpadded pooling only, and sum "
                                        f"pooling scaled by 1/sqrt(h*w)")
        return [f"{name} {kh} {kw} {s0} {s1}\n"]
    return write


def _write_softmax(layer, where, flat_from):
    if layer.axis not in (1, -1) or layer.flatten:
        raise UnsupportedLayerError(f"{where}: the Toolbox's SoftMax normalises over axis 1 only")
    return ["SoftMax\n"]


#: lrpnumpy layer type -> the lines the Toolbox's text format has for it.
TOOLBOX_WRITERS = {
    Lyr.Linear: _write_linear, Lyr.Conv2d: _write_conv, Lyr.SumPool2d: _write_pool("SumPool"),
    Lyr.MaxPool2d: _write_pool("MaxPool"), Lyr.ReLU: lambda *a: ["Rect\n"], Lyr.Tanh: lambda *a: ["Tanh\n"],
    Lyr.Flatten: lambda *a: ["Flatten\n"], Lyr.Softmax: _write_softmax,
    Lyr.Dropout: lambda *a: [],  # the identity at inference
}


def save_lrp_toolbox(net, path, input_shape=None):
    """Write ``net`` in the Toolbox's text format (atomically), loadable by :func:`load_lrp_toolbox`.

    Only what the format can express is accepted (:data:`TOOLBOX_WRITERS`): unpadded, undilated,
    ungrouped convolutions, unpadded pooling (sum pooling with the Toolbox's ``1 / sqrt(h * w)``
    scale), Linear, ReLU, Tanh, Softmax over axis 1, Flatten; Dropout is left out (the identity
    at inference).
    """
    shape = tuple(input_shape or getattr(net, "input_shape", None) or ()) or None
    out, flat_from, previous = [], None, []
    for i, layer in enumerate(net):
        where = f"{path}: layer {i} ({layer!r})"
        write = TOOLBOX_WRITERS.get(type(layer))
        if write is None:
            raise UnsupportedLayerError(f"{where} has no LRP Toolbox equivalent")
        out += write(layer, where, flat_from)
        flat_from = _flattened(layer, previous, shape, flat_from)
        shape = _next_shape(layer, shape)
        previous.append(layer)
    out.append("\n")
    atomic_write(path, lambda f: f.writelines(out), ".txt", text=True)

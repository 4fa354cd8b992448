"""Convolutional classifiers: one handler per ONNX operator, each node to the layers it becomes.

``Conv``, ``Gemm``, ``MatMul`` by a constant, pools, ``BatchNormalization``, ``LRN``, ``Softmax``, ``Flatten`` and
``Reshape`` to (batch, features), ``Add``/``Mul`` by per-channel constants (folded into the layer before when
it is the only reader), sums and channel concatenations of activations, and ShuffleNet's channel shuffle
(:func:`_channel_shuffles` turns its Reshape-Transpose-Reshape into one pseudo-node first).  Each handler
takes ``(n, consts, prev, shape, opset, dtype, n_in)``: the node, the constants, the layer before (when this
node is its only reader), the input's shape without batch (None when not static), the opset, the
parameters' dtype and the number of data inputs.
"""

import math

import numpy as np

from ... import layers as Lyr
from ...errors import LRPError, ModelFormatError
from ...layers.pool import _windows_touch
from .._common import brief
from .reading import _finite_attr, _shape_values, _weight


def _channel_shuffles(nodes, consts, onnx):
    """Nodes with each Reshape (N, g, C/g, H, W) - Transpose (0, 2, 1, 3, 4) - Reshape (N, C, H, W) replaced
    by one ``ChannelShuffle`` pseudo-node (ShuffleNet's channel shuffle)."""
    readers = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    skip, out = set(), []
    for node in nodes:
        if id(node) in skip:
            continue
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in consts \
                and np.asarray(consts[node.input[1]]).size == 5:
            nxt = readers.get(node.output[0], [])
            if len(nxt) == 1 and nxt[0].op_type == "Transpose":
                perm = [a.ints for a in nxt[0].attribute if a.name == "perm"]
                last = readers.get(nxt[0].output[0], [])
                if perm and list(perm[0]) == [0, 2, 1, 3, 4] and len(last) == 1 and last[0].op_type == "Reshape":
                    groups = int(np.asarray(consts[node.input[1]]).ravel()[1])
                    skip.update((id(nxt[0]), id(last[0])))
                    out.append(onnx.helper.make_node("ChannelShuffle", [node.input[0]], [last[0].output[0]],
                                                     name=node.name or node.output[0], groups=groups))
                    continue
        out.append(node)
    return out


def _pads(n, shape, kernel, stride, dilation):
    """(top, bottom, left, right) from ``pads`` or ``auto_pad``."""
    auto = n.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        p = n.ints("pads", [0, 0, 0, 0], 4)
        return (p[0], p[2], p[1], p[3])
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise n.unsupported(f"attribute auto_pad={auto!r}")
    if shape is None:
        raise n.unsupported(f"auto_pad={auto} needs a static input shape")
    out = []
    for size, k, s, d in zip(shape[-2:], kernel, stride, dilation):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        out += [small, big] if auto == "SAME_UPPER" else [big, small]
    return tuple(out)


def _conv(n, consts, prev, shape, opset, dtype, n_in):
    w = _weight(n, consts, 1, dtype, "weight")
    if w is None or w.ndim != 4:
        raise n.unsupported("only 2-D convolutions with a constant 4-D weight are supported")
    b = _weight(n, consts, 2, dtype, "bias")
    kernel = n.ints("kernel_shape", w.shape[2:])
    if tuple(kernel) != w.shape[2:]:
        raise ModelFormatError(f"{n.label}: kernel_shape {brief(kernel)} does not match the weight {w.shape}")
    stride, dilation, group = n.ints("strides", [1, 1]), n.ints("dilations", [1, 1]), int(n.get("group", 1))
    pads = _pads(n, shape, kernel, stride, dilation)
    layer = Lyr.Conv2d(w.shape[1] * group, w.shape[0], kernel, stride=stride, padding=pads, groups=group,
                       dilation=dilation, bias=b is not None, dtype=dtype)
    layer.weight = w
    if b is not None:
        layer.bias = b.reshape(-1)
    return [layer]


def _pool_common(n, shape):
    kernel = n.ints("kernel_shape", None) if "kernel_shape" in n.attrs else None
    if kernel is None:
        raise n.unsupported("kernel_shape is required")
    stride, dilation = n.ints("strides", [1, 1]), n.ints("dilations", [1, 1])
    pads = _pads(n, shape, kernel, stride, dilation)
    if min(pads) < 0:
        raise ModelFormatError(f"{n.label}: negative pads {brief(list(pads))} (top, bottom, left, right)")
    # as ONNX's own shape inference: a window wholly in the padding pools nothing (and, in an average that
    # leaves the padding out, would lose its relevance)
    if max(pads[0], pads[1]) >= kernel[0] or max(pads[2], pads[3]) >= kernel[1]:
        raise n.unsupported(f"pads {brief(list(pads))} (top, bottom, left, right): each must be smaller than the "
                            f"kernel {brief(list(kernel))}, so that no window lies wholly in the padding")
    return kernel, stride, pads, bool(n.get("ceil_mode", 0)), dilation


def _maxpool(n, consts, prev, shape, opset, dtype, n_in):
    kernel, stride, pads, ceil, dilation = _pool_common(n, shape)
    try:
        return [Lyr.MaxPool2d(kernel, stride, pads, ceil_mode=ceil, dilation=dilation)]
    except LRPError as exc:
        raise n.unsupported(f"attribute pads={brief(list(n.get('pads', [])))}: {exc}") from None


def _avgpool(n, consts, prev, shape, opset, dtype, n_in):
    kernel, stride, pads, ceil, dilation = _pool_common(n, shape)
    layer = Lyr.AvgPool2d(kernel, stride, pads, ceil_mode=ceil, count_include_pad=bool(n.get("count_include_pad", 0)),
                          dilation=dilation)
    if not layer.count_include_pad and dilation != [1, 1] and shape is not None and len(shape) == 3:
        # dilated taps can skip the whole input even with pads < kernel
        h, w = shape[1:]
        try:
            out = layer.output_shape((1,) + tuple(shape))[2:]
        except LRPError:
            return [layer]  # _track names the mismatch
        p = layer.effective_padding(h, w)
        if not all(_windows_touch(size, o, k, s, pad, d) for size, o, k, s, pad, d in
                   zip((h, w), out, kernel, stride, (p[0], p[2]), dilation)):
            raise n.unsupported(f"on an input of spatial size {(h, w)} some windows have every tap in the padding; "
                                f"with count_include_pad=0 their average (and relevance) would be lost")
    return [layer]


def _gemm(n, consts, prev, shape, opset, dtype, n_in):
    if n.get("transA", 0):
        raise n.unsupported("attribute transA=1: the data input must not be transposed")
    b_mat = _weight(n, consts, 1, dtype, "B")
    if b_mat is None or b_mat.ndim != 2:
        raise n.unsupported("B must be a constant matrix")
    w = b_mat if n.get("transB", 0) else b_mat.T
    alpha, beta = (_finite_attr(n, k, dtype) for k in ("alpha", "beta"))
    w = w * alpha
    c = _weight(n, consts, 2, dtype, "C")
    layer = Lyr.Linear(w.shape[1], w.shape[0], bias=c is not None, dtype=dtype)
    layer.weight = np.ascontiguousarray(w)
    if c is not None:
        if c.size not in (1, w.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
            raise n.unsupported(f"bias C of shape {c.shape}: only a scalar or one value per output is supported")
        layer.bias = np.broadcast_to(c.reshape(-1) * beta, (w.shape[0],)).copy()
    return [layer]


def _matmul(n, consts, prev, shape, opset, dtype, n_in):
    w = _weight(n, consts, 1, dtype, "B")
    if w is None or w.ndim != 2 or n.node.input[0] in consts:
        raise n.unsupported("only x @ B with a constant matrix B is supported")
    layer = Lyr.Linear(w.shape[0], w.shape[1], bias=False, dtype=dtype)
    layer.weight = np.ascontiguousarray(w.T)
    return [layer]


def _add(n, consts, prev, shape, opset, dtype, n_in):
    """A sum of data inputs (a residual connection), or a constant added per output / channel."""
    if n_in > 1:
        return [Lyr.Add()]
    b = _weight(n, consts, 1 if n.node.input[0] not in consts else 0, dtype, "addend")
    if isinstance(prev, Lyr.WEIGHTED):
        out = prev.weight.shape[0]
        per_output = _per_channel(n, b, out, dtype, "addend", isinstance(prev, Lyr.Linear))
        prev.bias = per_output if prev.bias is None else prev.bias + per_output
        return []
    channels = _channels(n, shape)
    per_channel = _per_channel(n, b, channels, dtype, "addend", shape is not None and len(shape) == 1)
    if isinstance(prev, Lyr.ChannelAffine):
        prev.bias = per_channel if prev.bias is None else prev.bias + per_channel
        return []
    return [Lyr.ChannelAffine(channels, weight=None, bias=per_channel, dtype=dtype)]


def _mul(n, consts, prev, shape, opset, dtype, n_in):
    """A per-channel scale (ONNX's Mul by a constant)."""
    if n_in > 1:
        raise n.unsupported("Mul of two data tensors is not supported; only a scale by a constant")
    w = _weight(n, consts, 1 if n.node.input[0] not in consts else 0, dtype, "scale")
    channels = _channels(n, shape)
    return [Lyr.ChannelAffine(channels, weight=_per_channel(n, w, channels, dtype, "scale",
                                                            shape is not None and len(shape) == 1), bias=None,
                              dtype=dtype)]


def _channels(n, shape):
    if shape is None:
        raise n.unsupported("a per-channel constant needs the input's static shape")
    return shape[0]


def _per_channel(n, v, channels, dtype, what, flat):
    """A constant that broadcasts as one value per channel (axis 1), as a (channels,) array.

    For (N, C) data: shape (C,) or (1, C); for (N, C, H, W): (C, 1, 1) or (1, C, 1, 1); or a scalar.
    """
    if v.size == 1:
        n.limits.take(n.label, f"{what} repeated over {channels} channels", [channels])
        return np.full(channels, v.reshape(-1)[0], dtype)
    axis = v.ndim - 1 if flat else v.ndim - 3
    if v.size == channels and axis >= 0 and v.shape[axis] == channels:
        return v.reshape(-1).astype(dtype)
    raise n.unsupported(f"{what} of shape {v.shape} is not one value per channel ({channels} channels); only "
                        f"per-channel constants are supported")


def _concat(n, consts, prev, shape, opset, dtype, n_in):
    axis = int(n.get("axis", 1))
    rank = None if shape is None else len(shape) + 1
    if axis != 1 and not (rank is not None and axis == 1 - rank):
        raise n.unsupported(f"attribute axis={axis}: only joining along channels (axis 1) is supported")
    return [Lyr.Concat()]


def _sum(n, consts, prev, shape, opset, dtype, n_in):
    if len([i for i in n.node.input if i in consts]):
        raise n.unsupported("Sum of constants: only sums of data tensors are supported")
    return [Lyr.Add()] if n_in > 1 else []


def _flatten(n, consts, prev, shape, opset, dtype, n_in):
    axis = int(n.get("axis", 1))
    rank = None if shape is None else len(shape) + 1
    if axis < 0 and rank is not None:
        axis += rank
    if axis != 1:
        raise n.unsupported(f"attribute axis={n.get('axis')}: only flattening everything but the batch axis "
                            f"(axis=1) is supported")
    return [Lyr.Flatten()]


def _reshape(n, consts, prev, shape, opset, dtype, n_in):
    target = consts.get(n.node.input[1]) if len(n.node.input) > 1 else None
    if target is None:
        raise n.unsupported("the target shape must be a constant")
    target = _shape_values(n, target, "the target shape")
    if len(target) == 2 and target[0] in (0, -1, 1) and (target[1] == -1 or shape is None
                                                         or target[1] == int(np.prod(shape))):
        if target[0] == -1 and target[1] == -1:
            raise ModelFormatError(f"{n.label}: shape {brief(target)} has two -1 entries")
        return [Lyr.Flatten()]
    raise n.unsupported(f"target shape {brief(target)}: only reshaping to (batch, features) is supported")


def _softmax(n, consts, prev, shape, opset, dtype, n_in):
    if opset < 13:
        return [Lyr.Softmax(axis=int(n.get("axis", 1)), flatten=True)]
    return [Lyr.Softmax(axis=int(n.get("axis", -1)))]


def _batchnorm(n, consts, prev, shape, opset, dtype, n_in):
    if n.get("training_mode", 0):
        raise n.unsupported("attribute training_mode=1: only inference is supported")
    scale, bias, mean, var = (_weight(n, consts, i, dtype, what) for i, what in
                              ((1, "scale"), (2, "B"), (3, "mean"), (4, "var")))
    if shape is not None and len(shape) != 3:
        raise n.unsupported(f"input of rank {len(shape) + 1}: only 4-D (NCHW) batch normalisation is supported")
    layer = Lyr.BatchNorm2d(scale.size, eps=float(n.get("epsilon", 1e-5)), dtype=dtype)
    layer.weight, layer.bias, layer.running_mean, layer.running_var = scale, bias, mean, var
    return [layer]


def _lrn(n, consts, prev, shape, opset, dtype, n_in):
    return [Lyr.LRN(int(n.get("size")), n.get("alpha", 1e-4), n.get("beta", 0.75), n.get("bias", 1.0))]


#: ONNX operator -> the layers one node becomes (an empty list: the node is an identity, or was folded into the
#: layer before it).
HANDLERS = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "Add": _add, "MaxPool": _maxpool, "AveragePool": _avgpool,
    "GlobalAveragePool": lambda *a: [Lyr.GlobalAvgPool2d()], "Relu": lambda *a: [Lyr.ReLU()],
    "Tanh": lambda *a: [Lyr.Tanh()], "Flatten": _flatten, "Reshape": _reshape, "Softmax": _softmax,
    "BatchNormalization": _batchnorm, "Dropout": lambda *a: [], "Identity": lambda *a: [], "LRN": _lrn,
    "Mul": _mul, "Concat": _concat, "Sum": _sum,
    "ChannelShuffle": lambda n, *a: [Lyr.ChannelShuffle(int(n.get("groups")))],
}

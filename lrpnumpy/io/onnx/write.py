"""Writing a network as an ONNX graph (:func:`save_onnx`): one writer per lrpnumpy layer type."""

import numpy as np

from ... import layers as Lyr
from ...errors import UnsupportedLayerError
from .reading import _onnx


def _pads4(p):
    """lrpnumpy's (top, bottom, left, right) as ONNX's [top, left, bottom, right]."""
    return [p[0], p[2], p[1], p[3]]


def _w_linear(layer, name, x, shape, helper, add):
    inputs = [x, add(f"{name}.weight", layer.weight)] + ([add(f"{name}.bias", layer.bias)] if layer.bias is not None
                                                         else [])
    return [helper.make_node("Gemm", inputs, [name], transB=1)]


def _w_conv(layer, name, x, shape, helper, add):
    inputs = [x, add(f"{name}.weight", layer.weight)] + ([add(f"{name}.bias", layer.bias)] if layer.bias is not None
                                                         else [])
    return [helper.make_node("Conv", inputs, [name], kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                             pads=_pads4(layer.padding), dilations=list(layer.dilation), group=layer.groups)]


def _w_maxpool(layer, name, x, shape, helper, add):
    return [helper.make_node("MaxPool", [x], [name], kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                             pads=_pads4(layer.padding), dilations=list(layer.dilation), ceil_mode=int(layer.ceil_mode))]


def _w_avgpool(layer, name, x, shape, helper, add):
    if layer.dilation != (1, 1):
        raise UnsupportedLayerError(f"{layer!r}: dilated average pooling needs ONNX opset 19; it is not written")
    return [helper.make_node("AveragePool", [x], [name], kernel_shape=list(layer.kernel_size),
                             strides=list(layer.stride), pads=_pads4(layer.padding), ceil_mode=int(layer.ceil_mode),
                             count_include_pad=int(layer.count_include_pad))]


def _w_sumpool(layer, name, x, shape, helper, add):
    """Sum pooling as a depthwise convolution with constant weights (``scale`` each)."""
    if layer.ceil_mode:
        raise UnsupportedLayerError(f"{layer!r}: ceil-mode sum pooling has no ONNX operator; it is not written")
    c = shape[1]
    w = np.full((c, 1) + layer.kernel_size, layer.scale)  # add() converts it to the network's dtype
    return [helper.make_node("Conv", [x, add(f"{name}.weight", w)], [name], kernel_shape=list(layer.kernel_size),
                             strides=list(layer.stride), pads=_pads4(layer.padding), dilations=list(layer.dilation),
                             group=c)]


def _w_batchnorm(layer, name, x, shape, helper, add):
    params = [add(f"{name}.{p}", getattr(layer, p)) for p in ("weight", "bias", "running_mean", "running_var")]
    return [helper.make_node("BatchNormalization", [x] + params, [name], epsilon=layer.eps)]


def _w_softmax(layer, name, x, shape, helper, add):
    if layer.flatten:
        raise UnsupportedLayerError(f"{layer!r}: flattening softmax (before opset 13) is not written")
    return [helper.make_node("Softmax", [x], [name], axis=layer.axis)]


#: lrpnumpy layer type -> the ONNX nodes it becomes (opset 14: BatchNormalization in inference mode).
ONNX_WRITERS = {
    Lyr.Linear: _w_linear, Lyr.Conv2d: _w_conv, Lyr.MaxPool2d: _w_maxpool, Lyr.AvgPool2d: _w_avgpool,
    Lyr.SumPool2d: _w_sumpool, Lyr.BatchNorm2d: _w_batchnorm, Lyr.Softmax: _w_softmax,
    Lyr.GlobalAvgPool2d: lambda layer, name, x, shape, helper, add: [helper.make_node("GlobalAveragePool", [x], [name])],
    Lyr.ReLU: lambda layer, name, x, shape, helper, add: [helper.make_node("Relu", [x], [name])],
    Lyr.Tanh: lambda layer, name, x, shape, helper, add: [helper.make_node("Tanh", [x], [name])],
    Lyr.Flatten: lambda layer, name, x, shape, helper, add: [helper.make_node("Flatten", [x], [name], axis=1)],
    Lyr.Dropout: lambda layer, name, x, shape, helper, add: [helper.make_node("Identity", [x], [name])],
    Lyr.LRN: lambda layer, name, x, shape, helper, add: [helper.make_node(
        "LRN", [x], [name], size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.bias)],
}


def save_onnx(net, path, input_shape=None):
    """Write ``net`` as an ONNX graph (opset 14) that ONNX runtimes, and :func:`load_onnx`, run to the same outputs.

    The input is ``x`` of shape ``(N, *input_shape)`` (``input_shape`` defaults to the network's),
    the output ``y``; weights are initializers in the network's dtype.  Sum pooling is written as
    a depthwise convolution with constant weights.
    """
    from .._common import atomic_write
    onnx, numpy_helper = _onnx()
    helper = onnx.helper
    shape = tuple(input_shape or net.input_shape or ())
    if not shape:
        raise UnsupportedLayerError("save_onnx needs the input shape: give input_shape=(C, H, W) or set "
                                    "net.input_shape")
    dtype = net.dtype or np.dtype(np.float64)
    elem = 1 if dtype == np.float32 else 11
    inits = []

    def add(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=dtype), name))
        return name

    nodes, x, current = [], "x", (1,) + shape
    for i, layer in enumerate(net):
        write = ONNX_WRITERS.get(type(layer))
        if write is None:
            raise UnsupportedLayerError(f"layer {i} ({layer!r}) has no ONNX writer")
        name = f"layer{i}"
        nodes += write(layer, name, x, current, helper, add)
        x = name
        current = layer.output_shape(current)
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(nodes, "lrpnumpy", [helper.make_tensor_value_info("x", elem, ["N", *shape])],
                              [helper.make_tensor_value_info("y", elem, ["N", *current[1:]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], producer_name="lrpnumpy")
    atomic_write(path, lambda f: f.write(model.SerializeToString()), ".onnx")
    return model

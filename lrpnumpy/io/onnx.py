"""Load ONNX classifiers (chains of supported operators) into lrpnumpy networks.

ONNX already uses lrpnumpy's layouts (NCHW, Conv weights (out, in/groups, kh, kw)); what this
module converts is operator semantics: Gemm's alpha/beta/transB, ``auto_pad``, Softmax before and
after opset 13, MatMul + Add, BatchNormalization (folded into the layer before it when possible),
and weights given as initializers, ``Constant`` or ``ConstantOfShape`` nodes.

A file is only trusted as far as its size: every constant's declared element count is checked
against fixed caps (:data:`MAX_SHAPE_VALUES` for shape and axes tensors, ``max_elements`` for the
rest) before it is read, listed, copied or cast, so a 200-byte file cannot ask for gigabytes, and
error messages quote at most a few of a constant's values.  (A ``ConstantOfShape`` is a zero-copy
view until something copies it, so an unused one costs nothing whatever it declares.)
"""

import math
import numbers
import os

import numpy as np

from .. import layers as Lyr
from ..canonize import fold_batchnorm
from ..layers.base import MAX_SIZE
from ..layers.pool import _windows_touch
from ..errors import LRPError, MissingDependencyError, ModelFormatError, ParameterError, UnsupportedLayerError
from ._common import brief, converted, network, parse_errors, unique_name

#: Most values a shape tensor (a Reshape target, Unsqueeze axes, a ConstantOfShape shape) may hold.
MAX_SHAPE_VALUES = 64
#: Default cap on the values one constant may declare, and on all the weights a network takes from one
#: file (2**28: VGG-16's 138 million parameters fit; 1 GiB in float32, 2 GiB in float64).
MAX_ELEMENTS = 2 ** 28

SUPPORTED = ("Conv", "Gemm", "MatMul", "Add", "Sum", "Mul", "Concat", "Relu", "Tanh", "MaxPool", "AveragePool",
             "GlobalAveragePool", "Flatten", "Reshape", "Softmax", "BatchNormalization", "Dropout", "Identity", "LRN",
             "Constant", "ConstantOfShape", "ChannelShuffle")


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise MissingDependencyError("loading ONNX models needs the onnx package: pip install 'lrpnumpy[onnx]'") \
            from exc
    return onnx, numpy_helper


class _Node:
    """One node's attributes with defaults, and errors that name the node."""

    def __init__(self, node, where, limits=None):
        onnx, _ = _onnx()
        self.node, self.where, self.limits = node, where, limits
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        self.label = f"{where}: node {brief(node.name or (node.output[0] if node.output else ''))!r} " \
                     f"({brief(node.op_type)})"

    def get(self, name, default=None):
        v = self.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    def unsupported(self, what):
        return UnsupportedLayerError(f"{self.label}: {what}")

    def ints(self, name, default, length=2):
        v = list(self.get(name, default))
        if len(v) != length:
            raise self.unsupported(f"attribute {name}={brief(v)}: only 2-D (NCHW) operators are supported")
        return v


def load_onnx(path, dtype=None, max_elements=None):
    """Load an ONNX model (file path, bytes or ``ModelProto``) that is a chain of supported operators.

    Parameters
    ----------
    path : str, bytes or onnx.ModelProto
    dtype : None, float32 or float64
        The parameters' dtype; None keeps the model's (ONNX files usually hold float32;
        ``dtype=np.float64`` gives lrpnumpy's reference precision).
    max_elements : int, optional
        Most values one constant may declare, and most values all the network's weights together
        may hold (default :data:`MAX_ELEMENTS`, 2**28).  Checked on the declared sizes before
        anything is read or allocated, whatever the machine's memory.

    Returns
    -------
    Sequential
        With ``input_shape`` set when the graph input has a static shape.

    Raises
    ------
    ModelFormatError
        The file is not a readable ONNX model; its weights are missing, misshapen or not finite; a
        constant declares more values than the caps allow; a name is defined twice.
    UnsupportedLayerError
        An operator or attribute value outside the supported set (operators of a domain other
        than ONNX's own included), or a graph that is not a chain; the message names the node,
        the operator and the attribute.
    """
    onnx, numpy_helper = _onnx()
    where = path if isinstance(path, str) else "<onnx model>"
    limits = _Limits(MAX_ELEMENTS if max_elements is None else max_elements)
    try:
        if isinstance(path, onnx.ModelProto):
            model = path
        elif isinstance(path, bytes):
            model = onnx.load_model_from_string(path)
        else:  # external data is read only once every tensor's declared size has been checked
            model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds; all mean "not ONNX"
        raise ModelFormatError(f"{where}: not a readable ONNX model ({type(exc).__name__}: "
                               f"{brief(str(exc))})") from None
    with parse_errors(where, "ONNX graph"):
        external = _check_tensors(model.graph, where, limits, onnx)
        if external and not isinstance(path, str):
            raise ModelFormatError(f"{where}: its tensors keep their data in external files; give the model's file "
                                   f"path, so that they are read from its folder")
        if external:
            onnx.external_data_helper.load_external_data_for_model(model, os.path.dirname(os.path.abspath(path)))
        return converted(_convert(model, where, onnx, numpy_helper, limits), dtype)


class _Limits:
    """The caps on what a file's constants may declare, and the weights taken so far."""

    def __init__(self, max_elements):
        if not isinstance(max_elements, numbers.Integral) or isinstance(max_elements, bool) or max_elements < 1:
            raise ParameterError(f"max_elements must be a positive int, got {max_elements!r}")
        self.max_elements, self.taken = int(max_elements), 0

    def dims(self, label, what, shape):
        """The element count of ``shape`` (Python ints: no overflow), for a zero-copy view: ModelFormatError for a
        negative axis, an axis no array can have, or more values than any array can hold."""
        dims = [int(d) for d in shape]
        if any(d < 0 for d in dims):
            raise ModelFormatError(f"{label}: {what} has negative dimensions {brief(dims)}")
        if any(d > MAX_SIZE for d in dims):  # even with a zero elsewhere: no array has such an axis
            raise ModelFormatError(f"{label}: {what} has a dimension over {MAX_SIZE}: {brief(dims)}")
        size = math.prod(dims)
        if size >= 2 ** 60:  # numpy: size * itemsize (8 at most here) must fit an int64
            raise ModelFormatError(f"{label}: {what} declares {size} values (shape {brief(dims)}), more than any "
                                   f"array holds")
        return size

    def count(self, label, what, shape):
        """As :meth:`dims`, for a constant that is (or will be) materialised: at most ``max_elements`` values."""
        size = self.dims(label, what, shape)
        self.check(label, what, size, shape)
        return size

    def check(self, label, what, size, shape):
        if size > self.max_elements:
            raise ModelFormatError(f"{label}: {what} declares {size} values (shape {brief(list(shape))}), more than "
                                   f"the {self.max_elements} a constant may have (max_elements)")

    def take(self, label, what, shape):
        """Account for the weight values of ``shape`` the network keeps, before they are copied."""
        size = math.prod(int(d) for d in shape)
        self.check(label, what, size, shape)
        self.taken += size
        if self.taken > self.max_elements:
            raise ModelFormatError(f"{label}: {what} brings the network's weights to {self.taken} values, more than "
                                   f"the {self.max_elements} a model may have (max_elements)")


def _check_tensors(graph, where, limits, onnx):
    """Check every tensor's declared size (initializers and node attributes, in subgraphs too) and its name
    (no initializer defined twice); whether any keeps its data in an external file."""
    external, seen = False, set()
    for t in graph.initializer:
        if t.name in seen:
            raise ModelFormatError(f"{where}: initializer {brief(t.name)!r} is defined twice")
        seen.add(t.name)
    tensors = [(f"{where}: initializer {brief(t.name)!r}", t) for t in graph.initializer]
    for node in graph.node:
        label = f"{where}: node {brief(node.name or (node.output[0] if node.output else ''))!r} ({brief(node.op_type)})"
        for a in node.attribute:
            tensors += [(label, t) for t in ([a.t] if a.HasField("t") else []) + list(a.tensors)]
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                external |= _check_tensors(g, where, limits, onnx)
    for label, t in tensors:
        size = limits.count(label, "the tensor", t.dims)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            external = True
            _bound_external(t, size, label, onnx)
    return external


def _bound_external(t, size, label, onnx):
    """Make an external tensor's read exactly the bytes its declared shape needs (its ``length``, set when absent)."""
    try:
        need = size * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        raise ModelFormatError(f"{label}: external data of ONNX data type {t.data_type}; expected numbers") from None
    entries = {e.key: e for e in t.external_data}
    if "length" not in entries:
        t.external_data.add(key="length", value=str(need))
    elif not entries["length"].value.isdigit() or int(entries["length"].value) != need:
        raise ModelFormatError(f"{label}: external data length {brief(entries['length'].value)!r}; its shape "
                               f"{brief(list(t.dims))} needs {need} bytes")


def _convert(model, where, onnx, numpy_helper, limits):
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise _Node(node, where).unsupported(f"operator of domain {brief(node.domain)!r}; only ONNX's own "
                                                 f"operators (the default domain) are supported")
        if node.op_type == "ChannelShuffle":  # lrpnumpy's own pseudo-operator, made below
            raise _Node(node, where).unsupported("not an ONNX operator")
        for out in node.output:
            if out in defined:
                raise _Node(node, where).unsupported(f"its output {brief(out)!r} is already defined (by the graph "
                                                     f"input, an initializer or an earlier node); ONNX names each "
                                                     f"value once")
            if out:
                defined.add(out)
    consts = {}
    for init in graph.initializer:
        consts[init.name] = _array(numpy_helper, init, where)
    nodes = []
    for node in graph.node:  # fold constant-producing nodes
        if node.op_type == "Constant":
            consts[node.output[0]] = _constant_value(_Node(node, where), numpy_helper, limits)
        elif node.op_type == "ConstantOfShape" and node.input[0] in consts:
            n = _Node(node, where)
            value = n.get("value")
            fill = numpy_helper.to_array(value).ravel() if value is not None else np.zeros(1, np.float32)
            if fill.size != 1 or fill.dtype.kind not in "biuf" or (fill.dtype.kind == "f" and
                                                                    not np.isfinite(fill).all()):
                raise ModelFormatError(f"{n.label}: value must be one finite number, got {brief(fill)}")
            shape = _shape_values(n, consts[node.input[0]], "its shape input")
            limits.dims(n.label, "the constant", shape)
            # a read-only view that takes no memory; whatever copies it (a layer's weight, a folded Reshape) checks
            # its size against max_elements first
            consts[node.output[0]] = np.broadcast_to(fill[:1].reshape(()), tuple(shape))
        elif node.op_type in ("Transpose", "Identity", "Unsqueeze", "Reshape") and node.input \
                and all(i in consts for i in node.input if i):
            consts[node.output[0]] = _fold(_Node(node, where, limits), [consts[i] for i in node.input if i])
        else:
            nodes.append(node)
    data_inputs = [i for i in graph.input if i.name not in consts]
    if len(data_inputs) != 1:
        raise UnsupportedLayerError(f"{where}: expected one data input, found {brief([i.name for i in data_inputs])}")
    inp = data_inputs[0]
    if inp.type.tensor_type.elem_type not in (1, 11):
        raise UnsupportedLayerError(f"{where}: input {inp.name!r} must be float32 or float64 "
                                    f"(ONNX elem_type {inp.type.tensor_type.elem_type})")
    dtype = np.float32 if inp.type.tensor_type.elem_type == 1 else np.float64
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    shape = tuple(dims[1:]) if dims and all(d is not None for d in dims[1:]) else None  # tracked per layer

    nodes = _channel_shuffles(nodes, consts, onnx)
    uses = {}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for out in graph.output:
        uses[out.name] = uses.get(out.name, 0) + 1
    producer, shapes = {inp.name: Lyr.graph.INPUT}, {Lyr.graph.INPUT: shape}
    gnodes, layer_of, taken = [], {}, {Lyr.graph.INPUT}
    for node in nodes:
        n = _Node(node, where, limits)
        if node.op_type not in SUPPORTED:
            raise n.unsupported(f"operator not supported; supported: {', '.join(SUPPORTED)}")
        data = [i for i in node.input if i and i not in consts]
        unknown = [i for i in data if i not in producer]
        if unknown or not data:
            raise n.unsupported(f"its data inputs {brief(unknown or data)} are not produced by an earlier node or the "
                                f"graph input" if data else "it has no data input")
        for extra in node.output[1:]:
            if extra and uses.get(extra):
                raise n.unsupported(f"its second output {extra!r} is used; only the first output is supported")
        ins = [producer[i] for i in data]
        # the layer before, when this node is its only reader (so a bias may be folded into it)
        prev = layer_of.get(ins[0]) if len(ins) == 1 and uses.get(data[0]) == 1 else None
        in_shapes = [shapes[i] for i in ins]
        new = _HANDLERS[node.op_type](n, consts, prev, in_shapes[0], opset, dtype, len(ins))
        out_shape = None if any(sh is None for sh in in_shapes) else _track(new[0], in_shapes, n) if new else \
            in_shapes[0]
        current = ins
        for k, layer in enumerate(new):
            if k:
                out_shape = _track(layer, [out_shape], n) if out_shape is not None else None
            name = unique_name(node.name or node.output[0], taken, k)
            gnodes.append((name, layer, current))
            layer_of[name], shapes[name], current = layer, out_shape, [name]
        if not new and len(ins) != 1:
            raise n.unsupported("a node without a layer must have one data input")
        producer[node.output[0]] = current[0]
    outputs = [o.name for o in graph.output]
    if len(outputs) != 1 or outputs[0] not in producer:
        raise UnsupportedLayerError(f"{where}: expected one graph output computed by the nodes, got {brief(outputs)}")
    if not graph.node:
        raise ModelFormatError(f"{where}: the graph has no nodes")
    input_shape = tuple(dims[1:]) if dims and all(d is not None for d in dims[1:]) else None
    if producer[outputs[0]] == Lyr.graph.INPUT:  # only identities (Dropout, Identity)
        return Lyr.Sequential(input_shape=input_shape)
    return fold_batchnorm(network(gnodes, producer[outputs[0]], input_shape))


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


def _array(numpy_helper, tensor, where):
    try:
        a = numpy_helper.to_array(tensor)
    except Exception as exc:  # noqa: BLE001
        raise ModelFormatError(f"{where}: tensor {tensor.name!r} cannot be read ({exc})") from None
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ModelFormatError(f"{where}: tensor {tensor.name!r} holds NaN or infinity")
    return a


def _constant_value(n, numpy_helper, limits):
    value = _constant_attr(n, numpy_helper, limits)
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ModelFormatError(f"{n.label}: the constant holds NaN or infinity")
    return value


def _constant_attr(n, numpy_helper, limits):
    if "value" in n.attrs:  # its declared size was checked with every tensor of the file
        return numpy_helper.to_array(n.attrs["value"])
    for key in ("value_float", "value_int"):
        if key in n.attrs:
            return np.array(n.attrs[key])
    for key in ("value_floats", "value_ints"):
        if key in n.attrs:
            limits.count(n.label, f"attribute {key}", [len(n.attrs[key])])
            return np.array(list(n.attrs[key]))
    raise n.unsupported(f"Constant attributes {brief(sorted(n.attrs))} are not supported")


def _shape_values(n, value, what):
    """A shape or axes tensor's values as Python ints, its size checked before it is read."""
    value = np.asarray(value)  # a view: nothing is copied
    if value.size > MAX_SHAPE_VALUES:
        raise ModelFormatError(f"{n.label}: {what} holds {value.size} values; a shape or axes tensor holds at most "
                               f"{MAX_SHAPE_VALUES}")
    if value.dtype.kind not in "iu":
        raise ModelFormatError(f"{n.label}: {what} has dtype {value.dtype}, expected integers")
    return [int(v) for v in value.ravel()]


def _fold(n, values):
    """Evaluate a shape-only operator on constants (weights transposed or reshaped at export)."""
    x = values[0]
    if n.node.op_type == "Transpose":
        perm = n.get("perm")
        if perm is not None and sorted(perm) != list(range(x.ndim)):
            raise ModelFormatError(f"{n.label}: perm {brief(list(perm))} is not a permutation of the constant's "
                                   f"{x.ndim} axes")
        return np.transpose(x, perm)
    if n.node.op_type == "Unsqueeze":
        axes = list(n.get("axes", []))
        if len(axes) > MAX_SHAPE_VALUES:
            raise ModelFormatError(f"{n.label}: attribute axes holds {len(axes)} values; at most "
                                   f"{MAX_SHAPE_VALUES}")
        axes = axes or (_shape_values(n, values[1], "its axes input") if len(values) > 1 else [])
        rank = x.ndim + len(axes)
        if rank > MAX_SHAPE_VALUES or any(not -rank <= a < rank for a in axes) or \
                len({a % rank for a in axes}) != len(axes):
            raise ModelFormatError(f"{n.label}: axes {brief(axes)} are not distinct axes of a result of rank {rank}")
        for axis in sorted(a % rank for a in axes):
            x = np.expand_dims(x, axis)
        return x
    if n.node.op_type == "Reshape":
        shape = values[1] if len(values) > 1 else n.get("shape", None)
        if shape is None:
            raise ModelFormatError(f"{n.label}: Reshape without a target shape")
        target = _shape_values(n, shape, "the target shape")
        target = [x.shape[i] if t == 0 and i < x.ndim else t for i, t in enumerate(target)]
        n.limits.check(n.label, "the reshaped constant", x.size, x.shape)  # reshaping a view may copy it
        try:
            return np.reshape(x, target)
        except ValueError:
            raise ModelFormatError(f"{n.label}: cannot reshape a constant of shape {brief(x.shape)} to "
                                   f"{brief(target)}") from None
    return x


def _track(layer, shapes, n):
    """Output shape (without batch) of ``layer`` for inputs of ``shapes``."""
    try:
        return layer.output_shape(*((1,) + tuple(sh) for sh in shapes))[1:]
    except LRPError as exc:
        raise UnsupportedLayerError(f"{n.label}: does not fit its inputs of shapes {[tuple(sh) for sh in shapes]}: {exc}") from None


def _weight(n, consts, i, dtype, what):
    name = n.node.input[i] if len(n.node.input) > i else ""
    if not name:
        return None
    if name not in consts:
        raise n.unsupported(f"{what} {name!r} must be a constant (initializer or Constant node)")
    w = np.asarray(consts[name])
    if w.dtype.kind != "f":
        raise ModelFormatError(f"{n.label}: {what} {brief(name)!r} has dtype {w.dtype}, expected floats")
    n.limits.take(n.label, f"{what} {brief(name)!r} of shape {brief(w.shape)}", w.shape)  # before it is copied
    return np.array(w, dtype=dtype)  # a copy: constants may be read-only views


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


def _finite_attr(n, name, dtype):
    """A float attribute (default 1.0) that must be finite in ``dtype``."""
    v = n.get(name, 1.0)
    if not (isinstance(v, (int, float)) and np.isfinite(v) and abs(v) <= np.finfo(dtype).max):
        raise ModelFormatError(f"{n.label}: attribute {name}={v!r} must be a finite {np.dtype(dtype)} number")
    return dtype(v)


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


_HANDLERS = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "Add": _add, "MaxPool": _maxpool, "AveragePool": _avgpool,
    "GlobalAveragePool": lambda *a: [Lyr.GlobalAvgPool2d()], "Relu": lambda *a: [Lyr.ReLU()],
    "Tanh": lambda *a: [Lyr.Tanh()], "Flatten": _flatten, "Reshape": _reshape, "Softmax": _softmax,
    "BatchNormalization": _batchnorm, "Dropout": lambda *a: [], "Identity": lambda *a: [], "LRN": _lrn,
    "Mul": _mul, "Concat": _concat, "Sum": _sum,
    "ChannelShuffle": lambda n, *a: [Lyr.ChannelShuffle(int(n.get("groups")))],
}


# ----- writing -----

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
    from ._common import atomic_write
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

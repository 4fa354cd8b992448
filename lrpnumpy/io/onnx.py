"""Load ONNX classifiers (chains of supported operators) into lrpnumpy networks.

ONNX already uses lrpnumpy's layouts (NCHW, Conv weights (out, in/groups, kh, kw)); what this
module converts is operator semantics: Gemm's alpha/beta/transB, ``auto_pad``, Softmax before and
after opset 13, MatMul + Add, BatchNormalization (folded into the layer before it when possible),
and weights given as initializers, ``Constant`` or ``ConstantOfShape`` nodes.

Sequence models and transformers as torch's exporter writes them: token ids (an integer input) read by
an embedding (``Gather`` on an initializer), 1-D ``Conv``/pools and ``ReduceMax``/``ReduceMean`` over
time, ``LSTM`` and ``GRU`` nodes (ONNX's gate order and sequence-first layout followed through the
Transpose/Squeeze/Gather/Concat/Reshape nodes around them; see :func:`_sequence_node`), torch's
``nn.MultiheadAttention`` block taken whole into :class:`~lrpnumpy.layers.MultiheadAttention`
(:func:`_attention_block`, causal mask included), ``LayerNormalization`` and ``Gelu`` and their
decomposed forms (opset < 17 / < 20); around them torchvision's ViT: the patch Conv read as tokens
(:class:`~lrpnumpy.layers.PatchEmbedding`), the class token, the position embedding and the class token's
selection (:func:`_vision_node`).  Shape arithmetic (``Shape``, ``Gather``, ``Concat``, ``Expand``,
``Cast``, ``Mod``, ``Sqrt``...) on constants and static shapes is evaluated at load time
(:func:`_fold_node`), each result's size checked first.

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
    if inp.type.tensor_type.elem_type not in (1, 11) + _ID_TYPES:
        raise UnsupportedLayerError(f"{where}: input {inp.name!r} must be float32 or float64, or integer token ids "
                                    f"(ONNX elem_type {inp.type.tensor_type.elem_type})")
    dtype = np.float32 if inp.type.tensor_type.elem_type == 1 else np.float64
    if inp.type.tensor_type.elem_type in _ID_TYPES:  # token ids: the layers take the weights' float dtype
        dtype = next((c.dtype.type for c in consts.values() if c.dtype in (np.float32, np.float64)), np.float32)
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
    tags, batch = {}, dims[0] if dims and dims[0] else 1  # see _sequence_node; Shape's batch entry
    region = _Region(nodes, inp.name)  # nodes taken into a pattern (an attention block) are skipped
    region.env = (consts, producer, shapes, tags, batch, where, limits)
    for node in nodes:
        if id(node) in region.skip:
            continue
        n = _Node(node, where, limits)
        if _fold_node(n, consts, producer, shapes, tags, batch):  # shape arithmetic, folded into constants
            continue
        if node.op_type not in SUPPORTED:
            raise n.unsupported(f"operator not supported; supported: {', '.join(SUPPORTED)}")
        data = [i for i in node.input if i and i not in consts]
        unknown = [i for i in data if i not in producer]
        if unknown or not data:
            raise n.unsupported(f"its data inputs {brief(unknown or data)} are not produced by an earlier node or the "
                                f"graph input" if data else "it has no data input")
        for extra in node.output[1:] if node.op_type not in ("LSTM", "GRU") else ():
            if extra and uses.get(extra):
                raise n.unsupported(f"its second output {extra!r} is used; only the first output is supported")
        ins = [producer[i] for i in data]
        made = _sequence_node(n, consts, data, ins, [shapes[i] for i in ins], tags, dtype, uses, region)
        if made is not None:  # sequence layouts, recurrent nodes, embeddings, 1-D operators
            name = None
            for k, (out, layer, src, tag) in enumerate(made):
                src = name if src is None else src  # None: the layer before in this list
                name = src
                if layer is not None:
                    name = unique_name(node.name or out, taken, k)
                    gnodes.append((name, layer, [src]))
                    layer_of[name] = layer
                    shapes[name] = None if shapes[src] is None else _track(layer, [shapes[src]], n)
                producer[out] = name
                if tag:
                    tags[out] = tag
            continue
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
    if outputs and outputs[0] in tags:
        raise UnsupportedLayerError(f"{where}: the graph output {brief(outputs[0])!r} is in ONNX's sequence-first "
                                    f"layout ({tags[outputs[0]][0]}); lrpnumpy's networks output batch first")
    if not graph.node:
        raise ModelFormatError(f"{where}: the graph has no nodes")
    input_shape = tuple(dims[1:]) if dims and all(d is not None for d in dims[1:]) else None
    if producer[outputs[0]] == Lyr.graph.INPUT:  # only identities (Dropout, Identity)
        return Lyr.Sequential(input_shape=input_shape)
    return fold_batchnorm(network(_patch_embeddings(gnodes, producer[outputs[0]]), producer[outputs[0]],
                                  input_shape))


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
    if a.dtype.kind == "f" and not np.isfinite(a).all() and not _is_mask(a):
        raise ModelFormatError(f"{where}: tensor {tensor.name!r} holds NaN or infinity")
    return a


def _constant_value(n, numpy_helper, limits):
    value = _constant_attr(n, numpy_helper, limits)
    if value.dtype.kind == "f" and not np.isfinite(value).all() and not _is_mask(value):
        raise ModelFormatError(f"{n.label}: the constant holds NaN or infinity")
    return value


def _is_mask(value):
    """Whether ``value`` is an additive attention mask: (..., T, T) of zeros and -inf (a weight never is: see
    :func:`_weight`)."""
    if value.size == 1:  # the -inf a mask is made of
        return bool(np.isneginf(value).all())
    return value.ndim >= 2 and value.shape[-1] == value.shape[-2] and bool(np.all((value == 0) | np.isneginf(value)))


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
    if not np.isfinite(w).all():  # an attention mask (zeros and -inf) is no weight
        raise ModelFormatError(f"{n.label}: {what} {brief(name)!r} holds infinity")
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


# ----- sequence models: token ids, recurrent nodes, 1-D operators, shape arithmetic -----

#: ONNX elem_types of integer token ids (int32, int64), read by an embedding (a Gather on an initializer).
_ID_TYPES = (6, 7)
#: Operators evaluated at load time when every input is a constant (or, for Shape, has a static shape).
FOLDED = ("Shape", "Gather", "Concat", "Unsqueeze", "Squeeze", "Expand", "Slice", "Cast", "Add", "Sub", "Mul", "Div",
          "Mod", "Sqrt", "Neg", "Equal", "Where", "Range", "Reshape", "Transpose", "Identity", "ConstantOfShape",
          "Trilu")
#: Operators of sequence models that :func:`_sequence_node` maps.
SEQUENCE_OPS = ("LSTM", "GRU", "Gather", "Transpose", "Squeeze", "Slice", "Sigmoid", "ReduceMax", "ReduceMean")


def _fold_node(n, consts, producer, shapes, tags, batch):
    """Evaluate ``n`` into ``consts`` when its inputs are constants (``Shape``: a value whose static shape is
    known, the batch entry being ``batch``); False when it is not foldable.

    Every result's size is checked against ``max_elements`` before it is computed; broadcasts stay views."""
    node, op = n.node, n.node.op_type
    names = [i for i in node.input]
    if op not in FOLDED or not node.output or not node.output[0]:
        return False
    if op == "Shape" and len(names) == 1 and names[0] in consts:  # of a shape computed at load time
        full = list(np.shape(consts[names[0]]))
        start, end = int(n.get("start", 0)), n.get("end", None)
        consts[node.output[0]] = np.array(full[start:None if end is None else int(end)], np.int64)
        return True
    if op == "Shape":
        if len(names) != 1 or names[0] in consts or names[0] not in producer:
            return False
        static = shapes.get(producer[names[0]])
        if static is None:
            raise n.unsupported("Shape of a value whose shape is not static: give the graph input a fixed shape")
        full = _onnx_shape(n, (batch,) + tuple(static), tags.get(names[0]))
        start, end = int(n.get("start", 0)), n.get("end", None)
        consts[node.output[0]] = np.array(full[start:None if end is None else int(end)], np.int64)
        return True
    if not names or not all(i in consts for i in names if i) or not names[0]:
        return False
    vals = [consts[i] if i else None for i in names]
    for v in vals:
        if v is not None and np.asarray(v).dtype.kind not in "biuf":
            raise ModelFormatError(f"{n.label}: a constant input of dtype {np.asarray(v).dtype}; expected numbers")
    try:
        with np.errstate(all="ignore"):
            out = _evaluate(n, op, vals)
    except LRPError:
        raise
    except (ValueError, IndexError, TypeError, OverflowError) as exc:
        raise ModelFormatError(f"{n.label}: cannot evaluate it on its constant inputs of shapes "
                               f"{brief([None if v is None else np.shape(v) for v in vals])}: {brief(str(exc))}") from None
    # arithmetic makes new values (its result was counted); the rest rearrange finite constants, maybe as views
    if op in ("Add", "Sub", "Mul", "Div", "Mod", "Sqrt", "Neg", "Cast", "Range") and out.dtype.kind == "f" \
            and not np.isfinite(out).all():
        raise ModelFormatError(f"{n.label}: evaluating it on its constants gives NaN or infinity")
    consts[node.output[0]] = out
    return True


def _evaluate(n, op, vals):
    """One operator on constants (``vals``: its inputs, None for an empty name), sizes checked first."""
    x = np.asarray(vals[0])
    lim = n.limits

    def count(shape, what="the result"):
        lim.count(n.label, what, shape)
        return tuple(shape)

    if op in ("Transpose", "Identity", "Unsqueeze", "Reshape"):
        return np.asarray(_fold(n, [v for v in vals if v is not None]))
    if op == "ConstantOfShape":  # of a shape computed at load time (e.g. from the batch size)
        value = n.get("value")
        fill = _onnx()[1].to_array(value).ravel() if value is not None else np.zeros(1, np.float32)
        if fill.size != 1 or fill.dtype.kind not in "biuf" or (fill.dtype.kind == "f" and
                                                                not np.isfinite(fill).all()):
            raise ModelFormatError(f"{n.label}: value must be one finite number, got {brief(fill)}")
        shape = _shape_values(n, x, "its shape input")
        lim.dims(n.label, "the constant", shape)
        return np.broadcast_to(fill[:1].reshape(()), tuple(shape))  # a view, as in _convert
    if op == "Squeeze":
        axes = n.get("axes", None)
        axes = list(axes) if axes is not None else (_shape_values(n, vals[1], "its axes input")
                                                    if len(vals) > 1 and vals[1] is not None else None)
        return np.squeeze(x, axis=None if axes is None else tuple(a % max(x.ndim, 1) for a in axes))
    if op == "Gather":
        idx = np.asarray(vals[1])
        if idx.dtype.kind not in "iu":
            raise ModelFormatError(f"{n.label}: indices of dtype {idx.dtype}; expected integers")
        axis = int(n.get("axis", 0)) % max(x.ndim, 1)
        count(x.shape[:axis] + idx.shape + x.shape[axis + 1:])
        return np.take(x, idx.astype(np.int64), axis=axis, mode="raise")
    if op == "Concat":
        parts = [np.asarray(v) for v in vals if v is not None]
        axis = int(n.get("axis", 0)) % max(parts[0].ndim, 1)
        shape = list(parts[0].shape)
        shape[axis] = sum(p.shape[axis] for p in parts if p.ndim == parts[0].ndim)
        count(shape)
        return np.concatenate(parts, axis=axis)
    if op == "Expand":
        target = _shape_values(n, vals[1], "its shape input")
        shape = np.broadcast_shapes(x.shape, tuple(target))
        lim.dims(n.label, "the result", shape)
        return np.broadcast_to(x, shape)  # a view, as ConstantOfShape
    if op == "Slice":
        starts, ends = (_shape_values(n, v, w) for v, w in ((vals[1], "starts"), (vals[2], "ends")))
        axes = _shape_values(n, vals[3], "axes") if len(vals) > 3 and vals[3] is not None else \
            list(range(len(starts)))
        steps = _shape_values(n, vals[4], "steps") if len(vals) > 4 and vals[4] is not None else [1] * len(starts)
        if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
            raise ModelFormatError(f"{n.label}: starts, ends, axes and steps must be as long, steps non-zero")
        index = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            index[a % max(x.ndim, 1)] = slice(s, e, st)  # numpy clamps as ONNX does
        return x[tuple(index)]
    if op == "Cast":
        to = int(n.get("to", 1))
        target = {1: np.float32, 11: np.float64, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16}.get(to)
        if target is None:
            raise n.unsupported(f"Cast to ONNX type {to}")
        count(x.shape)
        return x.astype(target)
    if op == "Trilu":
        k = int(np.asarray(vals[1]).reshape(-1)[0]) if len(vals) > 1 and vals[1] is not None else 0
        if x.ndim < 2:
            raise ModelFormatError(f"{n.label}: Trilu of a constant of rank {x.ndim}")
        count(x.shape)
        return np.triu(x, k) if n.get("upper", 1) else np.tril(x, k)
    if op in ("Sqrt", "Neg"):
        count(x.shape)
        return np.sqrt(x) if op == "Sqrt" else -x
    if op == "Range":
        start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in vals[:3])
        if delta == 0:
            raise ModelFormatError(f"{n.label}: Range with delta 0")
        count([max(0, math.ceil((limit - start) / delta))])
        return np.arange(start, limit, delta, dtype=np.asarray(vals[0]).dtype)
    if op == "Where":
        c, a, b = (np.asarray(v) for v in vals[:3])
        count(np.broadcast_shapes(c.shape, a.shape, b.shape))
        return np.where(c, a, b)
    a, b = x, np.asarray(vals[1])
    count(np.broadcast_shapes(a.shape, b.shape))
    if op == "Equal":
        return np.equal(a, b)
    if op in ("Div", "Mod") and a.dtype.kind in "iu" and (b == 0).any():
        raise ModelFormatError(f"{n.label}: integer {op.lower()} by zero")
    if op == "Div" and a.dtype.kind in "iu":
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.result_type(a, b))
    if op == "Mod":
        return np.fmod(a, b) if n.get("fmod", 0) else np.mod(a, b)
    return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op](a, b)


def _onnx_shape(n, ours, tag):
    """The ONNX shape of a value whose layer output has shape ``ours`` (batch first) and layout ``tag``."""
    ours = list(ours)
    if tag is None:
        return ours
    kind = tag[0]
    if kind == "seq-first":
        return [ours[1], ours[0]] + ours[2:]
    if kind == "Y":
        return [ours[1], tag[1], ours[0], tag[2]]
    if kind == "Y_h":
        return [tag[1], ours[0], tag[2]]
    if kind == "Y batch-first":
        return [ours[0], ours[1], tag[1], tag[2]]
    if kind == "Y_h batch-first":
        return [ours[0], tag[1], tag[2]]
    raise n.unsupported(f"Shape of a value in layout {kind!r}")


def _sequence_node(n, consts, data, ins, in_shapes, tags, dtype, uses, region=None):
    """The layers for a node of a sequence model, as ``[(onnx output, layer or None, source node, tag), ...]``
    (a source None: the entry before's layer), or None when the general handlers apply.

    ONNX recurrent nodes are sequence-first ((T, N, D) in, Y (T, dirs, N, H), Y_h (dirs, N, H) out) while
    lrpnumpy's layers are batch first: values whose ONNX layout differs from their layer's output carry a
    tag, and only the operators torch's exporter puts around recurrent nodes are followed through them:

    * ``"seq-first"``: ONNX (T, N, ...) for a layer output (N, T, ...) (a Transpose (1, 0, 2));
    * ``"Y"`` / ``"Y perm"``: a recurrent node's sequence output (T, dirs, N, H) / (T, N, dirs, H), for
      ``LSTM(output="sequence")``'s (N, T, dirs * H);
    * ``"Y_h"``: its final states (dirs, N, H), for ``LSTM(output="last")``'s (N, dirs * H);
      ``"direction"``: one direction's final state ``Y_h[k]``, joined again by a Concat of all directions.
    """
    op = n.node.op_type
    tag = [tags.get(i) for i in data]
    if region is not None and not any(tag) and op in ("Reshape", "Concat", "Add", "Gather"):
        found = _vision_node(n, consts, data, ins, in_shapes, region, dtype)
        if found is not None:  # torchvision's ViT: patches to tokens, class token, position embedding, selection
            return found
    if not any(tag) and op not in SEQUENCE_OPS + ("Div",) and not (op in ("Conv", "MaxPool", "AveragePool")
                                                                    and _is_1d(n, consts)):
        if op not in _HANDLERS:
            raise n.unsupported("on activations (it is supported only on constants, evaluated at load time); "
                                f"supported on activations: {', '.join(sorted(set(_HANDLERS) | set(SEQUENCE_OPS)))}")
        return None
    if region is not None and not any(tag) and op in ("ReduceMean", "Div"):
        found = (_decomposed_layernorm if op == "ReduceMean" else _erf_gelu)(n, consts, data, src_of(ins), in_shapes,
                                                                              region, dtype)
        if found is not None:
            return found
    if op == "MatMul" and tag == [("seq-first",)] and region is not None:  # torch's MultiheadAttention export
        return _attention_block(n, consts, ins[0], in_shapes[0], region, dtype)
    if any(tag) and op not in ("Transpose", "Squeeze", "Gather", "Concat", "Reshape", "Slice", "LSTM", "GRU",
                               "Flatten"):
        kinds = sorted({t[0] for t in tag if t})
        raise n.unsupported(f"reads a value in ONNX's sequence layout {brief(kinds)} (a recurrent node's output or "
                            f"a sequence-first tensor); only the Transpose, Squeeze, Gather, Slice, Reshape and Concat "
                            f"nodes torch's exporter puts around recurrent nodes are supported on it")
    out = n.node.output[0]
    t0 = tag[0] if tag else None
    src = ins[0] if ins else None
    rank = None if not in_shapes or in_shapes[0] is None else len(in_shapes[0]) + 1
    if op in ("LSTM", "GRU"):
        return _recurrent_node(n, consts, data, ins, in_shapes, tags, dtype, uses)
    if op == "Sigmoid":
        return [(out, Lyr.Sigmoid(), src, None)]
    if op == "Gather":
        return _gather_node(n, consts, data, src, t0, dtype)
    if op == "Transpose":
        perm = n.get("perm")
        if perm is None:
            raise n.unsupported("Transpose without perm")
        perm = list(perm)
        if t0 is not None and t0[0] in ("seq-first", "Y", "Y_h"):
            if t0[0] == "seq-first":
                layout = [1, 0] + list(range(2, len(perm)))
                perm = [layout[p] for p in perm]
            elif t0[0] == "Y" and perm == [0, 2, 1, 3]:
                return [(out, None, src, ("Y perm",) + t0[1:])]
            elif t0[0] == "Y_h" and perm == [1, 0, 2]:
                return [(out, None, src, ("Y_h perm",) + t0[1:])]
            else:
                raise n.unsupported(f"perm {brief(perm)} on a recurrent node's {t0[0]} output; expected the "
                                    f"exporter's (0, 2, 1, 3) on Y or (1, 0, 2) on Y_h")
        elif t0 is not None:
            raise n.unsupported(f"perm {brief(perm)} on a value in layout {t0[0]!r}")
        if sorted(perm) != list(range(len(perm))) or (rank is not None and len(perm) != rank):
            raise ModelFormatError(f"{n.label}: perm {brief(perm)} is not a permutation of the input's axes")
        if perm == list(range(len(perm))):
            return [(out, None, src, None)]
        if perm[0] == 0:
            return [(out, Lyr.Transpose(perm), src, None)]
        if perm[:2] == [1, 0] and perm[2:] == list(range(2, len(perm))):
            return [(out, None, src, ("seq-first",))]
        raise n.unsupported(f"perm {brief(perm)} moves the batch axis; only (1, 0, ...) around a recurrent node is "
                            f"supported")
    if op == "Flatten" and t0 is not None:
        if t0[0] == "Y_h batch-first" and int(n.get("axis", 1)) == 1:
            return [(out, None, src, None)]
        raise n.unsupported(f"Flatten of a recurrent node's {t0[0]} output: only its final states (N, dirs, H) "
                            f"flattened at axis 1")
    if op == "Squeeze":
        axes = n.get("axes", None)
        if axes is None and len(n.node.input) > 1 and n.node.input[1]:
            axes = _shape_values(n, consts[n.node.input[1]], "its axes input") if n.node.input[1] in consts \
                else None
            if axes is None:
                raise n.unsupported("the axes must be a constant")
        axes = None if axes is None else list(axes)
        if t0 is not None:
            if t0[0] == "Y" and t0[1] == 1 and axes is not None and [a % 4 for a in axes] == [1]:
                return [(out, None, src, ("seq-first",))]
            if t0[0] == "Y_h" and t0[1] == 1 and axes is not None and [a % 3 for a in axes] == [0]:
                return [(out, None, src, None)]
            if t0[0] == "Y batch-first" and t0[1] == 1 and axes is not None and [a % 4 for a in axes] == [2]:
                return [(out, None, src, None)]
            if t0[0] == "Y_h batch-first" and t0[1] == 1 and axes is not None and [a % 3 for a in axes] == [1]:
                return [(out, None, src, None)]
            raise n.unsupported(f"axes {brief(axes)} on a recurrent node's {t0[0]} output: only the direction axis of "
                                f"a one-direction node is squeezed")
        if rank is not None and in_shapes[0] is not None:
            sizes = (None,) + tuple(in_shapes[0])
            drop = list(range(1, rank)) if axes is None else sorted({a % rank for a in axes})
            if 0 not in drop and all(sizes[a] == 1 for a in drop if a):
                left = [s for i, s in enumerate(sizes) if i and i not in drop]
                if not drop:
                    return [(out, None, src, None)]
                if len(left) == 1:
                    return [(out, Lyr.Flatten(), src, None)]
        raise n.unsupported(f"axes {brief(axes)}: only squeezing size-1 axes to (batch, features) is supported")
    if op == "Slice":
        if t0 is not None and t0[0] == "Y_h":
            starts, ends = (_shape_values(n, consts.get(i, np.zeros(0, np.int64)), w)
                            for i, w in zip(n.node.input[1:3], ("starts", "ends")))
            axes = _shape_values(n, consts[n.node.input[3]], "axes") if len(n.node.input) > 3 \
                and n.node.input[3] in consts else [0] * len(starts)
            if len(starts) == len(ends) == 1 and axes[0] % 3 == 0 and len(n.node.input) < 5 and \
                    range(t0[1])[slice(starts[0], ends[0])] == range(t0[1]):
                return [(out, None, src, t0)]
        raise n.unsupported("Slice of activations: only taking every direction of a recurrent node's final states "
                            "is supported")
    if op in ("ReduceMax", "ReduceMean"):
        return _reduce_time(n, consts, src, in_shapes[0], rank)
    if op == "Concat":
        return _concat_directions(n, data, ins, tag)
    if op == "Reshape":
        target = consts.get(n.node.input[1]) if len(n.node.input) > 1 else None
        target = None if target is None else _shape_values(n, target, "the target shape")
        if t0[0] == "Y perm" and target is not None and len(target) == 3 and target[2] in (-1, t0[1] * t0[2]):
            return [(out, None, src, ("seq-first",))]
        if t0[0] in ("Y_h perm", "Y_h batch-first") and target is not None and len(target) == 2 and \
                target[1] in (-1, t0[1] * t0[2]):
            return [(out, None, src, None)]
        steps = None if in_shapes[0] is None else in_shapes[0][0]
        if t0[0] == "Y batch-first" and target is not None and len(target) == 3 and target[1] in (0, steps) and \
                target[2] in (-1, t0[1] * t0[2]):
            return [(out, None, src, None)]
        raise n.unsupported(f"target shape {brief(target)} on a recurrent node's {t0[0]} output; expected the "
                            f"exporter's merge of the directions")
    return _conv_pool_1d(n, consts, src, in_shapes[0], dtype)


def _gather_node(n, consts, data, src, tag, dtype):
    out, axis = n.node.output[0], int(n.get("axis", 0))
    if n.node.input[0] in consts and len(data) == 1:  # an embedding: weight[ids]
        w = consts[n.node.input[0]]
        if w.ndim != 2 or axis != 0 or w.dtype.kind != "f":
            raise n.unsupported(f"Gather of data indices from a constant of shape {brief(w.shape)} on axis {axis}: "
                                f"only embeddings (a float matrix, axis 0) are supported")
        n.limits.take(n.label, "the embedding", w.shape)
        layer = Lyr.Embedding(w.shape[0], w.shape[1], dtype=dtype)
        layer.weight = w
        return [(out, layer, src, None)]
    index = consts.get(n.node.input[1]) if len(n.node.input) > 1 else None
    if tag is not None and tag[0] == "Y_h" and index is not None and np.ndim(index) == 0 and axis % 3 == 0:
        dirs, k = tag[1], int(index)
        if not -dirs <= k < dirs:
            raise ModelFormatError(f"{n.label}: index {k} out of range for {dirs} directions")
        return [(out, None, src, None if dirs == 1 else ("direction", k % dirs, dirs))]
    if tag is not None:
        raise n.unsupported(f"Gather on a recurrent node's {tag[0]} output; only Y_h[k] (one direction's final "
                            f"state) is supported")
    raise n.unsupported("Gather of activations (e.g. one time step of a sequence); supported: embeddings (a "
                        "constant matrix indexed by token ids) and a recurrent node's final state per direction")


def _concat_directions(n, data, ins, tags):
    """``Concat([Y_h[0], Y_h[1]], axis=1)``: both directions' final states of one recurrent node, in order."""
    if len(ins) == len(tags) and all(t is not None and t[0] == "direction" for t in tags) and len(set(ins)) == 1 \
            and [t[1] for t in tags] == list(range(tags[0][2])) and int(n.get("axis", 1)) in (1, -1) \
            and len(n.node.input) == len(data):
        return [(n.node.output[0], None, ins[0], None)]
    raise n.unsupported("Concat of recurrent outputs: only the final states of every direction of one node, in "
                        "order, joined on axis 1, are supported")


def _is_1d(n, consts):
    if "kernel_shape" in n.attrs:
        return len(n.attrs["kernel_shape"]) == 1
    w = consts.get(n.node.input[1]) if n.node.op_type == "Conv" and len(n.node.input) > 1 else None
    return w is not None and np.ndim(w) == 3


def _conv_pool_1d(n, consts, src, shape, dtype):
    """``Conv``, ``MaxPool`` and ``AveragePool`` with a 1-D kernel: Conv1d, MaxPool1d, AvgPool1d on (N, C, L)."""
    op, out = n.node.op_type, n.node.output[0]
    if n.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise n.unsupported(f"attribute auto_pad={n.get('auto_pad')!r}: give explicit pads")
    stride, dilation = n.ints("strides", [1], 1), n.ints("dilations", [1], 1)
    pads = n.ints("pads", [0, 0], 2) if n.get("auto_pad", "NOTSET") == "NOTSET" else [0, 0]
    if min(pads) < 0:
        raise ModelFormatError(f"{n.label}: negative pads {brief(pads)}")
    try:
        if op == "Conv":
            w = _weight(n, consts, 1, dtype, "weight")
            b = _weight(n, consts, 2, dtype, "bias")
            group = int(n.get("group", 1))
            if "kernel_shape" in n.attrs and list(n.attrs["kernel_shape"]) != [w.shape[2]]:
                raise ModelFormatError(f"{n.label}: kernel_shape {brief(list(n.attrs['kernel_shape']))} does not "
                                       f"match the weight {w.shape}")
            layer = Lyr.Conv1d(w.shape[1] * group, w.shape[0], w.shape[2], stride[0], tuple(pads), dilation[0], group,
                               bias=b is not None, dtype=dtype)
            layer.weight = w
            if b is not None:
                layer.bias = b.reshape(-1)
            return [(out, layer, src, None)]
        kernel = n.ints("kernel_shape", None, 1)[0]
        if dilation != [1] or n.get("ceil_mode", 0):
            raise n.unsupported("dilated or ceil-mode 1-D pooling is not supported")
        if max(pads) >= kernel:
            raise n.unsupported(f"pads {brief(pads)}: each must be smaller than the kernel {kernel}")
        if op == "MaxPool":
            return [(out, Lyr.MaxPool1d(kernel, stride[0], tuple(pads)), src, None)]
        if max(pads) and not n.get("count_include_pad", 0):
            raise n.unsupported("1-D average pooling over padding with count_include_pad=0 (lrpnumpy's AvgPool1d "
                                "counts the padding, as torch's default)")
        return [(out, Lyr.AvgPool1d(kernel, stride[0], tuple(pads)), src, None)]
    except LRPError as exc:
        if isinstance(exc, (UnsupportedLayerError, ModelFormatError)):
            raise
        raise n.unsupported(str(exc)) from None


def _reduce_time(n, consts, src, shape, rank):
    """``ReduceMax`` / ``ReduceMean`` over the last axis of (N, C, L): pooling over time."""
    axes = n.get("axes", None)
    if axes is None and len(n.node.input) > 1 and n.node.input[1]:
        if n.node.input[1] not in consts:
            raise n.unsupported("the axes must be a constant")
        axes = _shape_values(n, consts[n.node.input[1]], "its axes input")
    if rank != 3 or axes is None or [a % 3 for a in axes] != [2]:
        raise n.unsupported(f"axes {brief(None if axes is None else list(axes))} on an input of rank {rank}: only "
                            f"the last axis of (N, C, L) (pooling over time) is supported")
    out, keep, length = n.node.output[0], int(n.get("keepdims", 1)), shape[1]
    if n.node.op_type == "ReduceMax":
        return [(out, Lyr.MaxPool1d(length) if keep else Lyr.GlobalMaxPool1d(), src, None)]
    return [(out, Lyr.AvgPool1d(length), src, None)] + ([] if keep else [(out, Lyr.Flatten(), None, None)])


def _recurrent_node(n, consts, data, ins, in_shapes, tags, dtype, uses):
    """ONNX ``LSTM`` (gates i, o, f, c) and ``GRU`` (z, r, h; ``linear_before_reset=1``, torch's) as lrpnumpy's
    LSTM / GRU (torch's gate order), on the batch-first sequence the exporter transposed to (T, N, D)."""
    node, op = n.node, n.node.op_type
    inputs = list(node.input) + [""] * (8 - len(node.input))
    if not data or inputs[0] != data[0] or len(data) != 1:
        raise n.unsupported("its inputs other than X (weights, biases, lengths, initial states) must be constants")
    if tags.get(data[0]) != (None if int(n.get("layout", 0)) == 1 else ("seq-first",)):
        raise n.unsupported("X must be a batch-first sequence transposed to (T, N, D) (torch's export of "
                            "batch_first=True), or batch first with layout=1; a graph whose input is sequence-first "
                            "is not supported")
    direction = n.get("direction", "forward")
    if direction not in ("forward", "bidirectional"):
        raise n.unsupported(f"direction={direction!r}: only forward and bidirectional are supported")
    for attr in ("activations", "activation_alpha", "activation_beta", "clip"):
        if attr in n.attrs:
            raise n.unsupported(f"attribute {attr}: only the default activations without clipping are supported")
    if n.get("input_forget", 0):
        raise n.unsupported("attribute input_forget=1 is not supported")
    batch_first = int(n.get("layout", 0)) == 1  # X (N, T, D), Y (N, T, dirs, H), Y_h (N, dirs, H)
    if op == "GRU" and not n.get("linear_before_reset", 0):
        raise n.unsupported("linear_before_reset=0: only torch's GRU (the reset gate applied after the recurrent "
                            "matrix, linear_before_reset=1) is supported")
    G, H = (4, int(n.get("hidden_size", 0))) if op == "LSTM" else (3, int(n.get("hidden_size", 0)))
    W, R = (_weight(n, consts, i, dtype, what) for i, what in ((1, "W"), (2, "R")))
    B = _weight(n, consts, 3, dtype, "B")
    dirs = 2 if direction == "bidirectional" else 1
    if W is None or R is None or W.ndim != 3 or W.shape[:2] != (dirs, G * H) or R.shape != (dirs, G * H, H) or \
            (B is not None and B.shape != (dirs, 2 * G * H)):
        raise ModelFormatError(f"{n.label}: weights W {brief(None if W is None else W.shape)}, R "
                               f"{brief(None if R is None else R.shape)}, B {brief(None if B is None else B.shape)} "
                               f"do not fit hidden_size={H}, {dirs} direction(s) and {G} gates")
    T = in_shapes[0][0] if in_shapes[0] is not None else None
    for i, what in ((4, "sequence_lens"), (5, "initial_h"), (6, "initial_c"), (7, "P (peepholes)")):
        name = inputs[i]
        if not name:
            continue
        v = consts[name]
        if what == "sequence_lens":
            if T is None or not (np.asarray(v) == T).all():
                raise n.unsupported("sequence_lens other than the full length: give lrpnumpy's LSTM lengths= at "
                                    "run time instead")
        else:
            n.limits.count(n.label, what, np.shape(v))  # a broadcast view is read whole: bounded first
            if np.any(v):
                raise n.unsupported(f"a non-zero {what}: only zero initial states without peepholes are supported")
    order = [0, 2, 3, 1] if op == "LSTM" else [1, 0, 2]  # ONNX's gate blocks in torch's order

    def gates(a):
        return np.ascontiguousarray(a.reshape(a.shape[0], G, H, *a.shape[2:])[:, order].reshape(a.shape))
    n.limits.take(n.label, "the recurrent weights", [W.size + R.size + 2 * dirs * G * H])
    params = {"weight_ih": gates(W), "weight_hh": gates(R)}
    bias = np.zeros((dirs, 2 * G * H), dtype) if B is None else B
    params["bias_ih"], params["bias_hh"] = gates(bias[:, :G * H]), gates(bias[:, G * H:])
    made = []
    outs = list(node.output) + ["", "", ""]
    if outs[2] and uses.get(outs[2]):
        raise n.unsupported("its output Y_c (the final cell state) is used; only Y and Y_h are supported")
    for k, output in enumerate(("sequence", "last")):
        name = outs[k]
        if not name or not uses.get(name):
            continue
        layer = (Lyr.LSTM if op == "LSTM" else Lyr.GRU)(W.shape[2], H, bidirectional=dirs == 2, output=output,
                                                         dtype=dtype)
        for p, v in params.items():
            setattr(layer, p, v.astype(dtype, copy=False))
        made.append((name, layer, ins[0], ("Y" if k == 0 else "Y_h", dirs, H) if not batch_first else
                     ("Y batch-first" if k == 0 else "Y_h batch-first", dirs, H)))
    return made

SUPPORTED = SUPPORTED + tuple(op for op in SEQUENCE_OPS + FOLDED if op not in SUPPORTED)

# ----- transformers: layer normalisation, GELU, torch's attention block -----

class _Region:
    """The graph's nodes with their readers, and the nodes a pattern has taken (skipped by the main loop)."""

    def __init__(self, nodes, data_input):
        self.nodes, self.skip, self.readers, self.data = nodes, set(), {}, {data_input}
        for node in nodes:
            for name in node.input:
                if name:
                    self.readers.setdefault(name, []).append(node)
            if node.op_type != "Shape" and any(i in self.data for i in node.input):  # Shape gives static values
                self.data.update(o for o in node.output if o)
        self.made_by = {o: node for node in nodes for o in node.output if o}
        self.env = None

    def resolve(self, name, depth=0):
        """Fold now the constant computation of ``name`` (shape arithmetic after a pattern's start), if it is one."""
        consts, producer, shapes, tags, batch, where, limits = self.env
        node = self.made_by.get(name)
        if name in consts or name in self.data or node is None or depth > MAX_SHAPE_VALUES:
            return
        for i in node.input:
            if i:
                self.resolve(i, depth + 1)
        _fold_node(_Node(node, where, limits), consts, producer, shapes, tags, batch)

    def one_reader(self, name, op=None):
        r = self.readers.get(name, [])
        return r[0] if len(r) == 1 and (op is None or r[0].op_type == op) else None


#: Most nodes one attention block may span (torch's export of nn.MultiheadAttention has about 80).
MAX_BLOCK_NODES = 400


def _attention_block(n, consts, src, shape, region, dtype):
    """torch's export of ``nn.MultiheadAttention`` (self-attention, batch first) as lrpnumpy's MultiheadAttention.

    The block starts at the input projection ``MatMul`` (tokens transposed to (T, N, E), weight (E, 3E)) and ends
    at the ``Transpose (1, 0, 2)`` after the output projection (``Gemm``, weight (E, E), reshaped back to
    (T, N, E)); what lies between (the q/k/v split, the heads' reshapes and transposes, the scaling by
    ``head_dim ** -1/4`` on each side, the scores' MatMul, an optional causal mask, Softmax, the context's
    MatMul) must read nothing from outside but constants.  The number of heads is read from the constant
    target shape (N, H, T, head_dim) the exporter reshapes to."""
    w = _weight(n, consts, 1, dtype, "the input projection")
    if w is None or w.ndim != 2 or w.shape[1] != 3 * w.shape[0] or shape is None or shape[-1] != w.shape[0]:
        raise n.unsupported("a MatMul on tokens transposed to (T, N, E): only torch's attention block (an input "
                            "projection of shape (E, 3E)) is supported")
    e = w.shape[0]
    inside, end, todo = [], None, [n.node.output[0]]
    seen = set()
    while todo:
        name = todo.pop()
        for node in region.readers.get(name, []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            inside.append(node)
            if len(inside) > MAX_BLOCK_NODES:
                raise n.unsupported(f"the attention block spans more than {MAX_BLOCK_NODES} nodes")
            if node.op_type == "Transpose" and _perm(node) == [1, 0, 2]:
                prev = [m for m in inside if node.input[0] in m.output]
                if prev and prev[0].op_type == "Reshape" and \
                        any(m.op_type == "Gemm" and prev[0].input[0] in m.output for m in inside):
                    if end is not None:
                        raise n.unsupported("the attention block has two ends")
                    end = node
                    continue
            todo.extend(o for o in node.output if o)
    if end is None:
        raise n.unsupported("no end of the attention block (the output projection's Gemm, Reshape to (T, N, E) and "
                            "Transpose (1, 0, 2)) was found")
    made = {o for m in inside for o in m.output} | set(n.node.output)
    for node in inside:
        if node is end:
            continue
        outside = [i for i in node.input if i and i not in made and i not in consts and i in region.data]
        if outside:
            raise n.unsupported(f"node {brief(node.name)!r} ({node.op_type}) of the attention block reads "
                                f"{brief(outside)}, which is neither computed in the block nor a constant")
        for o in node.output:
            strangers = [r for r in region.readers.get(o, []) if r not in inside]
            if strangers:
                raise n.unsupported(f"a value of the attention block ({brief(o)!r}) is read outside it, by "
                                    f"{brief(strangers[0].name)!r} ({strangers[0].op_type})")
    ops = {m.op_type for m in inside}
    allowed = {"Add", "Reshape", "Unsqueeze", "Transpose", "Squeeze", "Gather", "Mul", "MatMul", "Softmax", "Shape",
               "Slice", "Cast", "Sqrt", "Div", "Gemm", "Concat", "Constant", "Mod", "Where", "Split", "Expand", "Trilu",
               "Equal", "ConstantOfShape"}
    if ops - allowed:
        raise n.unsupported(f"the attention block holds {brief(sorted(ops - allowed))}; torch's export of "
                            f"nn.MultiheadAttention holds only {', '.join(sorted(allowed))}")
    counts = {op: sum(m.op_type == op for m in inside) for op in ("MatMul", "Softmax", "Gemm")}
    if counts != {"MatMul": 2, "Softmax": 1, "Gemm": 1}:
        raise n.unsupported(f"the attention block holds {counts['MatMul']} MatMul, {counts['Softmax']} Softmax and "
                            f"{counts['Gemm']} Gemm nodes; torch's has 2 (scores, context), 1 and 1 (the output "
                            f"projection)")
    bias_node = region.one_reader(n.node.output[0], "Add")
    bias = None
    if bias_node is not None:
        other = [i for i in bias_node.input if i != n.node.output[0]]
        bias = consts.get(other[0]) if other else None
        if bias is None or bias.shape != (3 * e,):
            raise n.unsupported("the input projection's Add must add a constant bias of shape (3E,)")
    gemm = next(m for m in inside if m.op_type == "Gemm")
    g = _Node(gemm, n.where, n.limits)
    if g.get("transA", 0) or _finite_attr(g, "alpha", dtype) != 1 or _finite_attr(g, "beta", dtype) != 1:
        raise g.unsupported("the output projection must be a plain Gemm (alpha = beta = 1, transA = 0)")
    wo, bo = _weight(g, consts, 1, dtype, "B"), _weight(g, consts, 2, dtype, "C")
    wo = wo if g.get("transB", 0) else wo.T
    if wo.shape != (e, e) or (bo is not None and bo.size != e):
        raise g.unsupported(f"the output projection's weight {brief(wo.shape)} is not (E, E) = ({e}, {e})")
    for m in inside:  # targets computed from the input's shape (a dynamic batch axis): folded now
        if m.op_type == "Reshape" and len(m.input) > 1:
            region.resolve(m.input[1])
    heads = {int(np.asarray(consts[m.input[1]]).ravel()[1]) for m in inside if m.op_type == "Reshape"
             and m.input[1] in consts and np.asarray(consts[m.input[1]]).size == 4}
    heads = {h for h in heads if h >= 1 and e % h == 0}
    if len(heads) > 1:  # the default exporter also reshapes to (T, N, 3, E): keep targets (N, H, T, E / H)
        heads = {int(np.asarray(consts[m.input[1]]).ravel()[1]) for m in inside if m.op_type == "Reshape"
                 and m.input[1] in consts and np.asarray(consts[m.input[1]]).size == 4
                 and np.asarray(consts[m.input[1]]).ravel()[1] * np.asarray(consts[m.input[1]]).ravel()[3] == e}
    if len(heads) != 1:
        raise n.unsupported("the number of heads cannot be read: the block's reshape to (N, H, T, head_dim) must "
                            "have a target shape computed from constants and the input's static shape")
    causal = False
    softmax = [m for m in inside if m.op_type == "Softmax"]
    if len(softmax) != 1 or _Node(softmax[0], n.where).get("axis", -1) not in (-1, 3):
        raise n.unsupported("the attention block must hold one Softmax over the keys (axis -1)")
    for m in inside:  # is_causal=True: Where(Trilu(ones) == 0, -inf, 0) added to the scores
        if m.op_type == "Trilu":
            causal = _causal_trilu(n, m, inside, consts)
    for m in inside:  # a constant mask added to the scores: only the causal one
        masks = [consts[i] for i in m.input if i in consts and np.ndim(consts[i]) >= 2] if m.op_type in ("Add",
                                                                                                         "Where") else []
        for mask in masks:
            t = mask.shape[-1]
            n.limits.count(n.label, "the attention mask", mask.shape)
            if mask.shape[-2:] != (shape[0], shape[0]):
                raise n.unsupported(f"node {brief(m.name)!r} ({m.op_type}) adds an attention mask of shape "
                                    f"{brief(mask.shape)} to scores over {shape[0]} tokens; a mask must end in "
                                    f"(T, T) = ({shape[0]}, {shape[0]})")
            future = np.triu(np.ones((t, t), bool), 1)
            m2 = np.asarray(mask).reshape(-1, t, t)
            if mask.dtype == bool and m.op_type == "Where":
                ok = all((np.array_equal(k, future) or np.array_equal(k, ~future)) for k in m2)
            else:
                ok = all(np.all(np.isneginf(k) == future) and np.all(k[~future] == 0) for k in m2)
            if not ok or t != shape[0]:
                raise n.unsupported(f"node {brief(m.name)!r} ({m.op_type}) adds an attention mask other than the "
                                    f"causal one (the future at -inf)")
            causal = True
    layer = Lyr.MultiheadAttention(e, heads.pop(), bias=bias is not None or bo is not None, causal=causal,
                                   dtype=dtype)
    n.limits.take(n.label, "the attention weights", [4 * e * e + 4 * e])
    layer.in_proj_weight = np.ascontiguousarray(w.T)
    layer.out_proj_weight = np.ascontiguousarray(wo)
    if layer.in_proj_bias is not None:
        layer.in_proj_bias = np.zeros(3 * e, dtype) if bias is None else bias.astype(dtype)
        layer.out_proj_bias = np.zeros(e, dtype) if bo is None else bo.reshape(-1).astype(dtype)
    region.skip.update(id(m) for m in inside)
    return [(end.output[0], layer, src, None)]


def _causal_trilu(n, trilu, inside, consts):
    """True for torch's causal mask ``Where(Trilu(Expand(1), upper=0) == 0, -inf, 0)`` (the future at -inf)."""
    def producer(name):
        return next((m for m in inside if name in m.output), None)

    def value(name):
        v = consts.get(name)
        return None if v is None or np.size(v) != 1 else float(np.asarray(v).reshape(-1)[0])
    ones = producer(trilu.input[0])
    upper = [a.i for a in trilu.attribute if a.name == "upper"]
    equal = [m for m in inside if m.op_type == "Equal" and trilu.output[0] in m.input]
    where = [m for m in inside if equal and m.op_type == "Where" and equal[0].output[0] in m.input]
    ok = (ones is not None and ones.op_type == "Expand" and value(ones.input[0]) == 1 and upper in ([], [0])
          and (len(trilu.input) < 2 or not trilu.input[1]) and len(equal) == 1 and len(where) == 1
          and value([i for i in equal[0].input if i != trilu.output[0]][0]) == 0
          and list(where[0].input[:1]) == [equal[0].output[0]] and value(where[0].input[1]) == -np.inf
          and value(where[0].input[2]) == 0)
    if not ok:
        raise n.unsupported(f"node {brief(trilu.name)!r} (Trilu) builds an attention mask other than torch's causal "
                            f"one (Where(Trilu(ones) == 0, -inf, 0))")
    return True


def _perm(node):
    return [list(a.ints) for a in node.attribute if a.name == "perm"][0] if any(
        a.name == "perm" for a in node.attribute) else None


def _layer_normalization(n, consts, prev, shape, opset, dtype, n_in):
    """``LayerNormalization`` (opset 17) over the last axis, with constant scale and bias."""
    axis = int(n.get("axis", -1))
    if shape is None or axis not in (-1, len(shape)):
        raise n.unsupported(f"axis={axis}: only normalising the last axis (of a static shape) is supported")
    if n.get("stash_type", 1) != 1 and dtype == np.float32:
        raise n.unsupported("stash_type other than float32")
    scale, bias = _weight(n, consts, 1, dtype, "Scale"), _weight(n, consts, 2, dtype, "B")
    d = shape[-1]
    if scale is None or scale.size != d or (bias is not None and bias.size != d):
        raise n.unsupported(f"Scale and B must hold one value per feature ({d})")
    layer = Lyr.LayerNorm(d, eps=float(n.get("epsilon", 1e-5)), dtype=dtype)
    layer.weight = scale.reshape(d)
    layer.bias = np.zeros(d, dtype) if bias is None else bias.reshape(d)
    return [layer]


def _gelu(n, consts, prev, shape, opset, dtype, n_in):
    approximate = n.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise n.unsupported(f"approximate={approximate!r}")
    return [Lyr.GELU(approximate)]


_HANDLERS.update({"LayerNormalization": _layer_normalization, "Gelu": _gelu})
SUPPORTED = SUPPORTED + ("LayerNormalization", "Gelu")


def src_of(ins):
    return ins[0] if ins else None


def _const_of(node, consts, data_name):
    """The constant input of a two-input ``node`` whose other input is ``data_name`` (None if it has none)."""
    if node is None or len(node.input) != 2 or data_name not in node.input:
        return None
    other = node.input[1] if node.input[0] == data_name else node.input[0]
    return None if other not in consts else np.asarray(consts[other])


def _last_axis(n, consts, node, rank):
    axes = [list(a.ints) for a in node.attribute if a.name == "axes"]
    if not axes and len(node.input) > 1 and node.input[1] in consts:
        axes = [_shape_values(n, consts[node.input[1]], "its axes input")]
    keep = [a.i for a in node.attribute if a.name == "keepdims"]
    return bool(axes) and [a % rank for a in axes[0]] == [rank - 1] and (not keep or keep[0] == 1)


def _decomposed_layernorm(n, consts, data, src, in_shapes, region, dtype):
    """``ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div[, Mul weight][, Add bias]`` over the last axis (what
    torch exports a LayerNorm as before opset 17) as one LayerNorm; None when the nodes do not match."""
    x, shape = data[0], in_shapes[0]
    if shape is None or not _last_axis(n, consts, n.node, len(shape) + 1):
        return None
    rank, mean = len(shape) + 1, n.node.output[0]
    sub = region.one_reader(mean, "Sub")
    if sub is None or list(sub.input) != [x, mean]:
        return None
    readers = region.readers.get(sub.output[0], [])
    pow_ = next((r for r in readers if r.op_type == "Pow"), None)
    div = next((r for r in readers if r.op_type == "Div"), None)
    if len(readers) != 2 or pow_ is None or div is None or pow_.input[0] != sub.output[0] or \
            not np.array_equal(_const_of(pow_, consts, sub.output[0]), 2):
        return None
    var = region.one_reader(pow_.output[0], "ReduceMean")
    if var is None or not _last_axis(n, consts, var, rank):
        return None
    add = region.one_reader(var.output[0], "Add")
    eps = _const_of(add, consts, var.output[0])
    sqrt = add is not None and region.one_reader(add.output[0], "Sqrt")
    if eps is None or eps.size != 1 or not sqrt or region.one_reader(sqrt.output[0], "Div") is not div or \
            list(div.input) != [sub.output[0], sqrt.output[0]] or not 0 < float(eps.reshape(-1)[0]) < 1:
        return None
    taken, last, d = [n.node, sub, pow_, var, add, sqrt, div], div, shape[-1]
    weight = bias = None
    mul = region.one_reader(div.output[0], "Mul")
    w = _const_of(mul, consts, div.output[0])
    if w is not None and w.size == d and w.dtype.kind == "f":
        weight, last = w, mul
        taken.append(mul)
    plus = region.one_reader(last.output[0], "Add")
    b = _const_of(plus, consts, last.output[0])
    if b is not None and b.size == d and b.dtype.kind == "f":
        bias, last = b, plus
        taken.append(plus)
    for node in taken[1:]:  # nothing else reads the pattern's inner values
        if node is not last and any(r not in taken for o in node.output for r in region.readers.get(o, [])):
            return None
    layer = Lyr.LayerNorm(d, eps=float(eps.reshape(-1)[0]), dtype=dtype)
    n.limits.take(n.label, "the layer norm's weight and bias", [2 * d])
    layer.weight = np.ones(d, dtype) if weight is None else weight.reshape(d).astype(dtype)
    layer.bias = np.zeros(d, dtype) if bias is None else bias.reshape(d).astype(dtype)
    region.skip.update(id(node) for node in taken[1:])
    return [(last.output[0], layer, src, None)]


def _erf_gelu(n, consts, data, src, in_shapes, region, dtype):
    """``x * (erf(x / sqrt 2) + 1) * 0.5`` (the factors in any order; what torch exports a GELU as before opset 20)
    as one GELU; None when the nodes do not match."""
    x = data[0] if len(data) == 1 else None
    c = _const_of(n.node, consts, x) if x is not None and n.node.input[0] == x else None
    if c is None or c.size != 1 or not abs(float(c.reshape(-1)[0]) - math.sqrt(2)) < 1e-6:
        return None
    erf = region.one_reader(n.node.output[0], "Erf")
    add = erf is not None and region.one_reader(erf.output[0], "Add")
    one = _const_of(add, consts, erf.output[0]) if add else None
    if one is None or one.size != 1 or float(one.reshape(-1)[0]) != 1:
        return None
    m1 = region.one_reader(add.output[0], "Mul")
    if m1 is None:
        return None
    m2 = region.one_reader(m1.output[0], "Mul")
    if m2 is None:
        return None
    halves = [_const_of(m, consts, i) for m, i in ((m1, add.output[0]), (m2, m1.output[0]))]
    # x * (1 + erf) then * 0.5, or (1 + erf) * 0.5 then * x
    if set(m1.input) == {x, add.output[0]} and halves[1] is not None and halves[1].size == 1 and \
            float(halves[1].reshape(-1)[0]) == 0.5:
        pass
    elif halves[0] is not None and halves[0].size == 1 and float(halves[0].reshape(-1)[0]) == 0.5 and \
            set(m2.input) == {x, m1.output[0]}:
        pass
    else:
        return None
    if len(region.readers.get(x, [])) != 2:  # x feeds the Div and one Mul, nothing else of the pattern's
        return None
    region.skip.update(id(node) for node in (erf, add, m1, m2))
    return [(m2.output[0], Lyr.GELU(), src, None)]


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


# ----- vision transformers: torchvision's VisionTransformer -----

def _vision_node(n, consts, data, ins, in_shapes, region, dtype):
    """The pieces torchvision's ViT exports around its encoder, as ``[(onnx output, layer, source, None)]``, or None
    when ``n`` is not one of them (the general handlers then apply):

    * ``Reshape`` (N, C, h, w) -> (N, C, h * w) then ``Transpose (0, 2, 1)``: :class:`~lrpnumpy.layers.ToTokens`
      (after a patch Conv, the two become a :class:`~lrpnumpy.layers.PatchEmbedding`: :func:`_patch_embeddings`);
    * ``Concat([Expand(class token), tokens], axis=1)``: :class:`~lrpnumpy.layers.ClassToken`;
    * ``Add`` of a constant (1, T, E) to tokens (N, T, E): :class:`~lrpnumpy.layers.PositionEmbedding`;
    * ``Gather`` of token 0 on axis 1 of tokens: :class:`~lrpnumpy.layers.SelectToken` (the class token's).

    Each is checked (shapes, axes); a Concat of a constant with activations or a Reshape of feature maps
    that fits none is refused here, naming the node."""
    op, out, shape = n.node.op_type, n.node.output[0], in_shapes[0] if in_shapes else None
    src = ins[0] if ins else None
    consts_in = [i for i in n.node.input if i in consts]
    if op == "Reshape" and len(data) == 1 and shape is not None and len(shape) == 3 and len(n.node.input) > 1 \
            and n.node.input[1] in consts:
        target = _shape_values(n, consts[n.node.input[1]], "the target shape")
        c, h, w = shape
        batch = region.env[4]
        if len(target) != 3 or target[0] not in (0, -1, batch) or target[1] not in (0, c) or \
                target[2] not in (-1, h * w):
            return None  # _reshape names it
        readers = region.readers.get(out, [])
        if len(readers) != 1 or readers[0].op_type != "Transpose" or _perm(readers[0]) != [0, 2, 1]:
            raise n.unsupported(f"feature maps reshaped to (N, {c}, {h * w}) must be read as tokens by one Transpose "
                                f"(0, 2, 1) (torchvision's ViT), got "
                                f"{brief([(r.name, r.op_type) for r in readers])}")
        region.skip.add(id(readers[0]))
        return [(readers[0].output[0], Lyr.ToTokens(), src, None)]
    if op == "Concat" and consts_in and data:
        axis = int(n.get("axis", 1))
        cls = np.asarray(consts[consts_in[0]])
        if len(data) != 1 or len(n.node.input) != 2 or n.node.input[0] not in consts or shape is None or \
                len(shape) != 2 or axis not in (1, -2) or cls.ndim != 3 or cls.shape[1:] != (1, shape[1]) or \
                cls.shape[0] < 1 or cls.dtype.kind != "f":
            raise n.unsupported(f"Concat of constant {brief(consts_in[0])!r} of shape {brief(cls.shape)} with "
                                f"activations of shape {brief(None if shape is None else (None,) + tuple(shape))}: "
                                f"only a class token (a constant (1, 1, E) expanded over the batch, put first along "
                                f"the token axis 1 of tokens (N, T, E)) is supported")
        n.limits.count(n.label, "the class token", cls.shape)
        if not np.isfinite(cls).all() or not (cls == cls[:1]).all():
            raise n.unsupported(f"the class token {brief(consts_in[0])!r} differs between samples or is not finite")
        n.limits.take(n.label, "the class token", [shape[1]])
        layer = Lyr.ClassToken(shape[1], dtype=dtype)
        layer.cls_token = np.array(cls[:1], dtype=dtype)
        return [(out, layer, src, None)]
    if op == "Add" and len(data) == 1 and len(consts_in) == 1 and shape is not None and len(shape) == 2:
        pos = np.asarray(consts[consts_in[0]])
        if pos.ndim < 2 or pos.shape[-2:] != tuple(shape) or pos.size != shape[0] * shape[1]:
            return None  # a bias per feature: _add
        p = _weight(n, consts, list(n.node.input).index(consts_in[0]), dtype, "the position embedding")
        layer = Lyr.PositionEmbedding(shape[0], shape[1], dtype=dtype)
        layer.pos_embedding = p.reshape(1, shape[0], shape[1])
        return [(out, layer, src, None)]
    if op == "Gather" and len(data) == 1 and n.node.input[0] == data[0] and shape is not None and len(shape) == 2:
        index = consts.get(n.node.input[1]) if len(n.node.input) > 1 else None
        axis = int(n.get("axis", 0))
        if index is not None and np.ndim(index) == 0 and np.asarray(index).dtype.kind in "iu" and axis in (1, -2) \
                and int(index) not in (0, -shape[0]):
            if not -shape[0] <= int(index) < shape[0]:
                raise ModelFormatError(f"{n.label}: token index {int(index)} out of range for {shape[0]} tokens")
            return None  # not the class token (e.g. a sequence's last step): _gather_node names it
        if index is None or np.ndim(index) != 0 or np.asarray(index).dtype.kind not in "iu" or axis not in (1, -2):
            raise n.unsupported(f"Gather on tokens (N, {shape[0]}, {shape[1]}) with axis={axis} and index "
                                f"{brief(None if index is None else np.asarray(index).tolist())}: only one token "
                                f"(a constant scalar index on axis 1, as the class token's selection) is supported")
        return [(out, Lyr.SelectToken(0), src, None)]
    return None


def _patch_embeddings(gnodes, output):
    """``gnodes`` with each patch Conv2d (kernel = stride, no padding, dilation or groups) read only by a ToTokens
    merged with it into one :class:`~lrpnumpy.layers.PatchEmbedding` (what attention rollout maps back to pixels)."""
    readers = {}
    for name, _, inputs in gnodes:
        for i in inputs:
            readers.setdefault(i, []).append(name)
    merged, out = {}, []
    for name, layer, inputs in gnodes:
        conv = next((c for c in out if c[0] == inputs[0]), None) if len(inputs) == 1 else None
        if isinstance(layer, Lyr.ToTokens) and conv is not None and type(conv[1]) is Lyr.Conv2d and \
                readers.get(conv[0]) == [name] and conv[0] != output:
            c = conv[1]
            if c.kernel_size == c.stride and c.kernel_size[0] == c.kernel_size[1] and c.padding == (0, 0, 0, 0) \
                    and c.dilation == (1, 1) and c.groups == 1:
                pe = Lyr.PatchEmbedding(c.in_channels, c.out_channels, c.kernel_size[0], dtype=c.weight.dtype)
                setattr(pe, "proj.weight", c.weight)
                setattr(pe, "proj.bias", c.bias if c.bias is not None else np.zeros(c.out_channels, c.weight.dtype))
                out[out.index(conv)] = (conv[0], pe, conv[2])
                merged[name] = conv[0]
                continue
        out.append((name, layer, [merged.get(i, i) for i in inputs]))
    return out

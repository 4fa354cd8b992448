"""Caffe models (``.prototxt`` + ``.caffemodel``) without Caffe: the protobuf schema is declared here.

Only the subset of ``caffe.proto`` needed for classifiers is declared (same message names and
field numbers): NetParameter, LayerParameter and the legacy V1LayerParameter, BlobProto (legacy
num/channels/height/width, packed or unpacked data), BlobShape, and the Convolution,
InnerProduct, Pooling, Dropout, ReLU, Softmax, LRN, BatchNorm, Scale, Flatten and Input
parameters.  Unknown fields are skipped.

Semantics that differ from other frameworks and are reproduced here: pooling rounds the output
size up unless ``round_mode: FLOOR`` (a last window that would start in the padding is dropped);
average pooling divides by the window clipped to the padded extent; InnerProduct flattens C, H, W
in order and may store its weight transposed; BatchNorm blobs are mean, variance and a scale
factor (divided out), with the affine part in a following Scale layer; Dropout is the identity.
"""

import numpy as np

from .. import layers as Lyr
from ..canonize import fold_batchnorm
from ..errors import LRPError, MissingDependencyError, ModelFormatError, UnsupportedLayerError
from ..layers.graph import INPUT
from ._common import converted, network, parse_errors, unique_name

_PACKAGE = "lrpnumpy_caffe"
_LABEL = {"optional": 1, "repeated": 3}
_TYPES = {"double": 1, "float": 2, "int64": 3, "uint32": 13, "int32": 5, "bool": 8, "string": 9, "message": 11,
          "enum": 14}

# message name -> [(field name, number, label, type, type name or default, packed)]
_SCHEMA = {
    "BlobShape": [("dim", 1, "repeated", "int64", None, True)],
    "BlobProto": [("shape", 7, "optional", "message", "BlobShape", False),
                  ("data", 5, "repeated", "float", None, True), ("diff", 6, "repeated", "float", None, True),
                  ("double_data", 8, "repeated", "double", None, True),
                  ("double_diff", 9, "repeated", "double", None, True),
                  ("num", 1, "optional", "int32", None, False), ("channels", 2, "optional", "int32", None, False),
                  ("height", 3, "optional", "int32", None, False), ("width", 4, "optional", "int32", None, False)],
    "NetStateRule": [("phase", 1, "optional", "enum", "Phase", False), ("min_level", 2, "optional", "int32", None, False),
                     ("max_level", 3, "optional", "int32", None, False),
                     ("stage", 4, "repeated", "string", None, False),
                     ("not_stage", 5, "repeated", "string", None, False)],
    "NetState": [("phase", 1, "optional", "enum", "Phase", False), ("level", 2, "optional", "int32", 0, False),
                 ("stage", 3, "repeated", "string", None, False)],
    "NetParameter": [("name", 1, "optional", "string", None, False), ("input", 3, "repeated", "string", None, False),
                     ("input_shape", 8, "repeated", "message", "BlobShape", False),
                     ("input_dim", 4, "repeated", "int32", None, False),
                     ("state", 6, "optional", "message", "NetState", False),
                     ("layer", 100, "repeated", "message", "LayerParameter", False),
                     ("layers", 2, "repeated", "message", "V1LayerParameter", False)],
    "ConvolutionParameter": [("num_output", 1, "optional", "uint32", None, False),
                             ("bias_term", 2, "optional", "bool", True, False),
                             ("pad", 3, "repeated", "uint32", None, False),
                             ("kernel_size", 4, "repeated", "uint32", None, False),
                             ("stride", 6, "repeated", "uint32", None, False),
                             ("dilation", 18, "repeated", "uint32", None, False),
                             ("pad_h", 9, "optional", "uint32", None, False),
                             ("pad_w", 10, "optional", "uint32", None, False),
                             ("kernel_h", 11, "optional", "uint32", None, False),
                             ("kernel_w", 12, "optional", "uint32", None, False),
                             ("stride_h", 13, "optional", "uint32", None, False),
                             ("stride_w", 14, "optional", "uint32", None, False),
                             ("group", 5, "optional", "uint32", 1, False), ("axis", 16, "optional", "int32", 1, False)],
    "InnerProductParameter": [("num_output", 1, "optional", "uint32", None, False),
                              ("bias_term", 2, "optional", "bool", True, False),
                              ("axis", 5, "optional", "int32", 1, False),
                              ("transpose", 6, "optional", "bool", False, False)],
    "PoolingParameter": [("pool", 1, "optional", "enum", "PoolMethod", False),
                         ("pad", 4, "optional", "uint32", 0, False), ("pad_h", 9, "optional", "uint32", None, False),
                         ("pad_w", 10, "optional", "uint32", None, False),
                         ("kernel_size", 2, "optional", "uint32", None, False),
                         ("kernel_h", 5, "optional", "uint32", None, False),
                         ("kernel_w", 6, "optional", "uint32", None, False),
                         ("stride", 3, "optional", "uint32", 1, False),
                         ("stride_h", 7, "optional", "uint32", None, False),
                         ("stride_w", 8, "optional", "uint32", None, False),
                         ("global_pooling", 12, "optional", "bool", False, False),
                         ("round_mode", 13, "optional", "enum", "RoundMode", False)],
    "LRNParameter": [("local_size", 1, "optional", "uint32", 5, False), ("alpha", 2, "optional", "float", 1.0, False),
                     ("beta", 3, "optional", "float", 0.75, False),
                     ("norm_region", 4, "optional", "enum", "NormRegion", False),
                     ("k", 5, "optional", "float", 1.0, False)],
    "DropoutParameter": [("dropout_ratio", 1, "optional", "float", 0.5, False)],
    "ReLUParameter": [("negative_slope", 1, "optional", "float", 0.0, False)],
    "SoftmaxParameter": [("axis", 2, "optional", "int32", 1, False)],
    "BatchNormParameter": [("use_global_stats", 1, "optional", "bool", None, False),
                           ("eps", 3, "optional", "float", 1e-5, False)],
    "ScaleParameter": [("axis", 1, "optional", "int32", 1, False), ("num_axes", 2, "optional", "int32", 1, False),
                       ("bias_term", 4, "optional", "bool", False, False)],
    "FlattenParameter": [("axis", 1, "optional", "int32", 1, False), ("end_axis", 2, "optional", "int32", -1, False)],
    "InputParameter": [("shape", 1, "repeated", "message", "BlobShape", False)],
    "EltwiseParameter": [("operation", 1, "optional", "enum", "EltwiseParameter.EltwiseOp", False),
                         ("coeff", 2, "repeated", "float", None, False)],
    "ConcatParameter": [("concat_dim", 1, "optional", "uint32", 1, False), ("axis", 2, "optional", "int32", 1, False)],
}
_PARAMS = [("convolution_param", 106, 10, "ConvolutionParameter"),
           ("inner_product_param", 117, 17, "InnerProductParameter"), ("pooling_param", 121, 19, "PoolingParameter"),
           ("lrn_param", 118, 18, "LRNParameter"), ("dropout_param", 108, 12, "DropoutParameter"),
           ("relu_param", 123, 30, "ReLUParameter"), ("softmax_param", 125, 39, "SoftmaxParameter"),
           ("batch_norm_param", 139, None, "BatchNormParameter"), ("scale_param", 142, None, "ScaleParameter"),
           ("flatten_param", 135, None, "FlattenParameter"), ("input_param", 143, None, "InputParameter"),
           ("eltwise_param", 110, 24, "EltwiseParameter"), ("concat_param", 104, 9, "ConcatParameter")]
_SCHEMA["LayerParameter"] = [
    ("name", 1, "optional", "string", None, False), ("type", 2, "optional", "string", None, False),
    ("bottom", 3, "repeated", "string", None, False), ("top", 4, "repeated", "string", None, False),
    ("phase", 10, "optional", "enum", "Phase", False), ("blobs", 7, "repeated", "message", "BlobProto", False),
    ("include", 8, "repeated", "message", "NetStateRule", False),
    ("exclude", 9, "repeated", "message", "NetStateRule", False),
] + [(name, new, "optional", "message", msg, False) for name, new, _, msg in _PARAMS]
_SCHEMA["V1LayerParameter"] = [
    ("bottom", 2, "repeated", "string", None, False), ("top", 3, "repeated", "string", None, False),
    ("name", 4, "optional", "string", None, False), ("type", 5, "optional", "enum", "LayerType", False),
    ("blobs", 6, "repeated", "message", "BlobProto", False),
    ("include", 32, "repeated", "message", "NetStateRule", False),
    ("exclude", 33, "repeated", "message", "NetStateRule", False),
] + [(name, old, "optional", "message", msg, False) for name, _, old, msg in _PARAMS if old is not None]

_ENUMS = {
    "Phase": [("TRAIN", 0), ("TEST", 1)], "PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)],
    "RoundMode": [("CEIL", 0), ("FLOOR", 1)], "NormRegion": [("ACROSS_CHANNELS", 0), ("WITHIN_CHANNEL", 1)],
    # nested in its message, as in caffe.proto (enum value names are scoped by the enclosing message)
    "EltwiseParameter.EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)],
    "LayerType": [("NONE", 0), ("ABSVAL", 35), ("ACCURACY", 1), ("ARGMAX", 30), ("BNLL", 2), ("CONCAT", 3),
                  ("CONTRASTIVE_LOSS", 37), ("CONVOLUTION", 4), ("DATA", 5), ("DECONVOLUTION", 39), ("DROPOUT", 6),
                  ("DUMMY_DATA", 32), ("EUCLIDEAN_LOSS", 7), ("ELTWISE", 25), ("EXP", 38), ("FLATTEN", 8),
                  ("HDF5_DATA", 9), ("HDF5_OUTPUT", 10), ("HINGE_LOSS", 28), ("IM2COL", 11), ("IMAGE_DATA", 12),
                  ("INFOGAIN_LOSS", 13), ("INNER_PRODUCT", 14), ("LRN", 15), ("MEMORY_DATA", 29),
                  ("MULTINOMIAL_LOGISTIC_LOSS", 16), ("MVN", 34), ("POOLING", 17), ("POWER", 26), ("RELU", 18),
                  ("SIGMOID", 19), ("SIGMOID_CROSS_ENTROPY_LOSS", 27), ("SILENCE", 36), ("SOFTMAX", 20),
                  ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("SLICE", 33), ("TANH", 23), ("WINDOW_DATA", 24),
                  ("THRESHOLD", 31)],
}
# V1 layer types -> the type names of the current format
_V1_TYPES = {"CONVOLUTION": "Convolution", "INNER_PRODUCT": "InnerProduct", "POOLING": "Pooling", "RELU": "ReLU",
             "SOFTMAX": "Softmax", "DROPOUT": "Dropout", "LRN": "LRN", "FLATTEN": "Flatten", "TANH": "TanH",
             "DATA": "Data", "IMAGE_DATA": "ImageData", "MEMORY_DATA": "MemoryData", "DUMMY_DATA": "DummyData",
             "HDF5_DATA": "HDF5Data", "WINDOW_DATA": "WindowData", "ELTWISE": "Eltwise", "CONCAT": "Concat",
             "SPLIT": "Split"}

_CLASSES = None


def schema():
    """The message classes of the declared subset of caffe.proto, by message name."""
    global _CLASSES
    if _CLASSES is None:
        try:
            from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
        except ImportError as exc:
            raise MissingDependencyError("loading Caffe models needs the protobuf package: "
                                         "pip install 'lrpnumpy[caffe]'") from exc
        f = descriptor_pb2.FileDescriptorProto(name="lrpnumpy_caffe.proto", package=_PACKAGE, syntax="proto2")
        messages = {}
        for name, fields in _SCHEMA.items():
            m = messages[name] = f.message_type.add(name=name)
            for fname, number, label, ftype, extra, packed in fields:
                fd = m.field.add(name=fname, number=number, label=_LABEL[label], type=_TYPES[ftype])
                if ftype in ("message", "enum"):
                    fd.type_name = f".{_PACKAGE}.{extra}"
                elif extra is not None:
                    fd.default_value = str(extra).lower() if isinstance(extra, bool) else repr(extra)
                if packed:
                    fd.options.packed = True
        for name, values in _ENUMS.items():
            outer, _, inner = name.rpartition(".")
            e = (messages[outer].enum_type if outer else f.enum_type).add(name=inner)
            for value_name, number in values:
                e.value.add(name=value_name, number=number)
        pool = descriptor_pool.DescriptorPool()
        pool.Add(f)
        _CLASSES = {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
                    for name in _SCHEMA}
    return _CLASSES


def _read_prototxt(path):
    from google.protobuf import text_format
    net = schema()["NetParameter"]()
    try:
        with open(path, "r", encoding="utf-8") as f:
            text_format.Parse(f.read(), net, allow_unknown_field=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: cannot be read as text ({exc})") from None
    except text_format.ParseError as exc:
        raise ModelFormatError(f"{path}: not a valid Caffe prototxt ({exc})") from None
    except RecursionError:
        raise ModelFormatError(f"{path}: not a valid Caffe prototxt (nested too deeply)") from None
    return net


def _read_caffemodel(path):
    from google.protobuf.message import DecodeError
    net = schema()["NetParameter"]()
    try:
        with open(path, "rb") as f:
            net.ParseFromString(f.read())
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a valid binary Caffe model ({exc})") from None
    return net


def _layers(net):
    """(name, type, bottoms, tops, layer message) for the current and the legacy layer lists."""
    out = [(lay.name, lay.type, list(lay.bottom), list(lay.top), lay) for lay in net.layer]
    enum = schema()["V1LayerParameter"].DESCRIPTOR.fields_by_name["type"].enum_type
    for lay in net.layers:
        v1 = enum.values_by_number[lay.type].name if lay.type in enum.values_by_number else str(lay.type)
        out.append((lay.name, _V1_TYPES.get(v1, v1), list(lay.bottom), list(lay.top), lay))
    return out


def _blob(blob, where):
    """A BlobProto as an ndarray (float32 data or float64 double_data) in its declared shape."""
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = tuple(int(getattr(blob, k)) for k in ("num", "channels", "height", "width"))
    data = np.array(blob.double_data, dtype=np.float64) if len(blob.double_data) else np.array(blob.data,
                                                                                                 dtype=np.float32)
    if int(np.prod(shape)) != data.size:
        raise ModelFormatError(f"{where}: blob shape {shape} holds {int(np.prod(shape))} values, the data has "
                               f"{data.size}")
    if not np.isfinite(data).all():
        raise ModelFormatError(f"{where}: blob holds NaN or infinity")
    return data.reshape(shape)


def _pair(param, name, default):
    """A Caffe spatial parameter: ``<x>_h``/``<x>_w`` if given, else ``name`` (one value, or one per axis).

    ``name`` is ``kernel_size``, ``stride``, ``pad`` or ``dilation``; ``default`` applies when
    nothing is given.
    """
    short = {"kernel_size": "kernel"}.get(name, name)
    fields = param.DESCRIPTOR.fields_by_name
    if f"{short}_h" in fields and (param.HasField(f"{short}_h") or param.HasField(f"{short}_w")):
        return int(getattr(param, f"{short}_h")), int(getattr(param, f"{short}_w"))
    value = getattr(param, name)
    if isinstance(value, int):
        given = param.HasField(name) or fields[name].has_default_value
        return (value, value) if given else (default, default)
    values = [int(v) for v in value]
    if not values:
        return (default, default)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def load_caffe(prototxt, caffemodel, dtype=None):
    """Build the network the ``prototxt`` describes with the weights of ``caffemodel``.

    ``dtype`` (float32 or float64) converts the parameters; None keeps the blobs' dtype.

    Returns
    -------
    Sequential or Graph
        A Sequential for a chain, a Graph for a net that branches (Eltwise SUM, Concat, Split, a blob
        read by several layers); with the blobs' dtype (float32, or float64 for ``double_data``) and ``input_shape``
        when the prototxt declares one.

    Raises
    ------
    ModelFormatError
        Unreadable or truncated files, or a prototxt that does not match its caffemodel (missing
        blobs, shape mismatch, non-finite weights); the message names the file, the layer and
        the field.
    UnsupportedLayerError
        A layer type or setting outside the supported set, or a net with several inputs or outputs.
    """
    arch, weights = _read_prototxt(prototxt), _read_caffemodel(caffemodel)
    with parse_errors(prototxt, "Caffe model"):
        return converted(_build(arch, weights, str(prototxt), str(caffemodel)), dtype)


def _input_shape(arch):
    if len(arch.input_shape):
        return tuple(int(d) for d in arch.input_shape[0].dim)
    if len(arch.input_dim) >= 4:
        return tuple(int(d) for d in arch.input_dim[:4])
    for name, kind, _, _, lay in _layers(arch):
        if kind == "Input" and len(lay.input_param.shape) and (
                (len(lay.include) and len(lay.exclude)) or _at_test(lay, set(arch.state.stage), name)):
            return tuple(int(d) for d in lay.input_param.shape[0].dim)
    return None


#: Layers that compute nothing at test time: data layers name the input, the others pass their bottom on.
_DATA = {"Input", "Data", "ImageData", "MemoryData", "DummyData", "HDF5Data", "WindowData"}
_IDENTITY = {"Dropout", "Split"}


def _meets(rule, stages):
    """Whether Caffe's state at test time (phase TEST, level 0, the net's own ``state`` stages) meets ``rule``:
    every constraint the rule sets holds (a rule that sets none is met)."""
    return (not rule.HasField("phase") or rule.phase == 1) \
        and (not rule.HasField("min_level") or 0 >= rule.min_level) \
        and (not rule.HasField("max_level") or 0 <= rule.max_level) \
        and all(s in stages for s in rule.stage) and not any(s in stages for s in rule.not_stage)


def _at_test(lay, stages, where):
    """Whether Caffe keeps the layer at test time (its ``FilterNet``): with include rules, when any of them is met;
    otherwise unless an exclude rule is met."""
    if len(lay.include) and len(lay.exclude):
        raise ModelFormatError(f"{where}: both include and exclude rules; Caffe takes one or the other")
    if len(lay.include):
        return any(_meets(rule, stages) for rule in lay.include)
    return not any(_meets(rule, stages) for rule in lay.exclude)


def _build(arch, weights, prototxt, caffemodel):
    """The net as graph nodes: each blob name is read from the node that last wrote it (Caffe's in-place
    layers write their bottom again); the result is a Sequential when the nodes form a chain."""
    stored = {name: lay for name, _, _, _, lay in _layers(weights)}
    shape = _input_shape(arch)
    producer = {b: INPUT for b in list(arch.input)[:1]}  # blob -> node name
    shapes = {INPUT: shape[1:] if shape else None}          # node -> sample shape (None: unknown)
    nodes, layer_of, readers, taken, dtype = [], {}, {}, {INPUT}, None
    stages = set(arch.state.stage)  # Caffe at TEST: phase TEST, level 0, the stages the net's state names
    for name, kind, bottoms, tops, lay in _layers(arch):
        where = f"{prototxt}: layer {name!r} ({kind})"
        if not _at_test(lay, stages, where) or kind == "Silence":  # TRAIN-only layers (losses, data), ...
            continue
        if kind in _DATA:
            if INPUT in producer.values():
                raise UnsupportedLayerError(f"{where}: a second data input; lrpnumpy networks have one input")
            producer.update({t: INPUT for t in tops[:1]})
            continue
        if not producer:  # a net that declares no input: the first bottom is the input
            producer.update({b: INPUT for b in bottoms[:1]})
        unknown = [b for b in bottoms if b not in producer]
        if unknown or not bottoms:
            raise ModelFormatError(f"{where}: reads {unknown or 'nothing'}; expected blobs written by earlier "
                                   f"layers or the input")
        ins = [producer[b] for b in bottoms]
        if kind in _IDENTITY:
            if len(ins) != 1:
                raise UnsupportedLayerError(f"{where}: {kind} with bottoms {bottoms}; expected one")
            producer.update({t: ins[0] for t in tops})
            continue
        if len(tops) != 1:
            raise UnsupportedLayerError(f"{where}: tops {tops}; lrpnumpy layers have one output")
        if len(ins) > 1 and kind not in ("Eltwise", "Concat"):
            raise UnsupportedLayerError(f"{where}: bottoms {bottoms}; a {kind} layer takes one")
        blobs = [_blob(b, f"{caffemodel}: layer {name!r} blob {i}") for i, b in
                 enumerate(stored[name].blobs)] if name in stored else []
        for b in blobs:
            dtype = dtype or b.dtype
        prev = layer_of.get(ins[0])
        new = _make(kind, lay, blobs, where, caffemodel, shapes[ins[0]], prev, dtype or np.float32)
        if kind == "Scale" and isinstance(prev, Lyr.BatchNorm2d) and readers.get(ins[0], 0) == 0:
            prev.weight = new[0].weight.astype(prev.weight.dtype)  # Caffe's BatchNorm + Scale: one layer
            prev.bias = None if new[0].bias is None else new[0].bias.astype(prev.weight.dtype)
            producer[tops[0]] = ins[0]
            continue
        current = ins
        for k, layer in enumerate(new):
            node = unique_name(name or kind, taken, k)
            known = [shapes[c] for c in current]
            try:
                out = None if any(d is None for d in known) else \
                    layer.output_shape(*((1,) + tuple(d) for d in known))[1:]
            except LRPError as exc:
                raise ModelFormatError(f"{where}: does not fit its input of shape "
                                       f"{' and '.join(str(tuple(d)) for d in known)}: {exc}") from None
            for c in current:
                readers[c] = readers.get(c, 0) + 1
            nodes.append((node, layer, tuple(current)))
            layer_of[node], shapes[node], current = layer, out, [node]
        producer[tops[0]] = current[0]
    if not nodes:
        raise ModelFormatError(f"{prototxt}: no layers lrpnumpy can build")
    ends = [n for n, _, _ in nodes if not readers.get(n)]
    if len(ends) > 1:
        raise UnsupportedLayerError(f"{prototxt}: the net has several outputs (layers {ends} feed nothing); "
                                    f"lrpnumpy networks have one")
    dt = dtype or np.float32
    net = network([(n, layer.astype(dt), ins) for n, layer, ins in nodes], ends[0], shape[1:] if shape else None)
    return fold_batchnorm(net)


def _need(blobs, count, where, caffemodel):
    if len(blobs) < count:
        raise ModelFormatError(f"{where}: {caffemodel} holds {len(blobs)} blobs for this layer, expected {count}")


def _make(kind, lay, blobs, where, caffemodel, dims, prev, dtype):
    """The layers for one Caffe layer; ``dims`` is its input's sample shape (None: unknown), ``prev`` the
    layer that computed its input (None: the network input)."""
    if kind == "Convolution":
        p = lay.convolution_param
        if p.axis != 1:
            raise UnsupportedLayerError(f"{where}: convolution_param.axis={p.axis}; only axis 1 (NCHW) is supported")
        _need(blobs, 2 if p.bias_term else 1, where, caffemodel)
        kernel, stride = _pair(p, "kernel_size", None), _pair(p, "stride", 1)
        if kernel[0] is None:
            raise ModelFormatError(f"{where}: convolution_param needs kernel_size or kernel_h/kernel_w")
        pad, dilation, group = _pair(p, "pad", 0), _pair(p, "dilation", 1), int(p.group)
        w = blobs[0].reshape(blobs[0].shape[-4:]) if blobs[0].ndim >= 4 else blobs[0]
        if w.ndim != 4 or w.shape[0] != p.num_output or tuple(w.shape[2:]) != tuple(kernel):
            raise ModelFormatError(f"{where}: weight blob of shape {blobs[0].shape} does not match num_output="
                                   f"{p.num_output}, kernel {kernel}")
        layer = Lyr.Conv2d(w.shape[1] * group, w.shape[0], kernel, stride=stride, padding=pad, groups=group,
                           dilation=dilation, bias=bool(p.bias_term), dtype=dtype)
        layer.weight = w.astype(dtype)
        if p.bias_term:
            layer.bias = _vector(blobs[1], p.num_output, where, "bias").astype(dtype)
        return [layer]
    if kind == "InnerProduct":
        p = lay.inner_product_param
        if p.axis != 1:
            raise UnsupportedLayerError(f"{where}: inner_product_param.axis={p.axis}; only axis 1 is supported")
        _need(blobs, 2 if p.bias_term else 1, where, caffemodel)
        w = blobs[0].reshape(-1, blobs[0].shape[-1]) if blobs[0].ndim > 2 else blobs[0]
        w = w.T if p.transpose else w
        if w.ndim != 2 or w.shape[0] != p.num_output:
            raise ModelFormatError(f"{where}: weight blob of shape {blobs[0].shape} does not match num_output="
                                   f"{p.num_output}{' (transposed)' if p.transpose else ''}")
        out = [] if (dims is None or len(dims) == 1) else [Lyr.Flatten()]
        if dims is None and isinstance(prev, (Lyr.Conv2d, Lyr.MaxPool2d, Lyr.AvgPool2d, Lyr.SumPool2d, Lyr.ReLU,
                                              Lyr.LRN, Lyr.BatchNorm2d, Lyr.Concat, Lyr.ChannelAffine)):
            out = [Lyr.Flatten()]
        layer = Lyr.Linear(w.shape[1], w.shape[0], bias=bool(p.bias_term), dtype=dtype)
        layer.weight = np.ascontiguousarray(w).astype(dtype)
        if p.bias_term:
            layer.bias = _vector(blobs[1], p.num_output, where, "bias").astype(dtype)
        return out + [layer]
    if kind == "Pooling":
        p = lay.pooling_param
        if p.pool not in (0, 1):
            raise UnsupportedLayerError(f"{where}: pooling method {p.pool} (STOCHASTIC) is not supported")
        if p.global_pooling:
            if p.pool == 1:
                return [Lyr.GlobalAvgPool2d()]
            if dims is None:
                raise UnsupportedLayerError(f"{where}: global max pooling needs the input shape in the prototxt")
            return [Lyr.MaxPool2d(tuple(dims[1:]), 1)]
        kernel = _pair(p, "kernel_size", None)
        if kernel[0] is None or kernel[0] == 0:
            raise ModelFormatError(f"{where}: pooling_param needs kernel_size or kernel_h/kernel_w")
        stride, pad = _pair(p, "stride", 1), _pair(p, "pad", 0)
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:  # Caffe's own check: no window wholly in the padding
            raise ModelFormatError(f"{where}: pad {pad} must be smaller than the kernel {kernel}")
        ceil = p.round_mode == 0  # Caffe rounds the output size up by default
        if p.pool == 0:
            return [Lyr.MaxPool2d(kernel, stride, pad, ceil_mode=ceil)]
        return [Lyr.AvgPool2d(kernel, stride, pad, ceil_mode=ceil, count_include_pad=True)]
    if kind == "ReLU":
        if lay.relu_param.negative_slope != 0:
            raise UnsupportedLayerError(f"{where}: negative_slope={lay.relu_param.negative_slope} (leaky ReLU)")
        return [Lyr.ReLU()]
    if kind == "TanH":
        return [Lyr.Tanh()]
    if kind == "Softmax":
        return [Lyr.Softmax(axis=int(lay.softmax_param.axis))]
    if kind == "Flatten":
        p = lay.flatten_param
        if p.axis != 1 or p.end_axis != -1:
            raise UnsupportedLayerError(f"{where}: flatten_param axis={p.axis}, end_axis={p.end_axis}; only 1, -1")
        return [Lyr.Flatten()]
    if kind == "LRN":
        p = lay.lrn_param
        if p.norm_region != 0:
            raise UnsupportedLayerError(f"{where}: norm_region WITHIN_CHANNEL is not supported")
        return [Lyr.LRN(int(p.local_size), float(p.alpha), float(p.beta), float(p.k))]
    if kind == "BatchNorm":
        _need(blobs, 3, where, caffemodel)
        mean, var = blobs[0].reshape(-1), blobs[1].reshape(-1)
        sf = float(blobs[2].reshape(-1)[0])
        if sf < 0:
            raise ModelFormatError(f"{where}: the scale factor blob is {sf!r}; it must be >= 0")
        factor = 0.0 if sf == 0 else 1.0 / sf  # Caffe's convention: 0 means "no statistics yet"
        if mean.size != var.size:
            raise ModelFormatError(f"{where}: mean ({mean.size}) and variance ({var.size}) blobs differ in size")
        bn = Lyr.BatchNorm2d(mean.size, eps=float(lay.batch_norm_param.eps), dtype=dtype)
        bn.running_mean, bn.running_var = (mean * factor).astype(dtype), (var * factor).astype(dtype)
        return [bn]
    if kind == "Scale":
        p = lay.scale_param
        if p.axis != 1 or p.num_axes != 1:
            raise UnsupportedLayerError(f"{where}: scale_param axis={p.axis}, num_axes={p.num_axes}; only a "
                                        f"per-channel scale (axis 1, num_axes 1) is supported")
        _need(blobs, 2 if p.bias_term else 1, where, caffemodel)
        scale = blobs[0].reshape(-1).astype(dtype)
        bias = _vector(blobs[1], scale.size, where, "bias").astype(dtype) if p.bias_term else None
        return [Lyr.ChannelAffine(scale.size, weight=scale, bias=bias, dtype=dtype)]
    if kind == "Eltwise":
        p = lay.eltwise_param
        operation = p.operation if p.HasField("operation") else 1  # Caffe's default is SUM
        if operation != 1:
            raise UnsupportedLayerError(f"{where}: Eltwise operation {('PROD', 'SUM', 'MAX')[operation]}; only SUM "
                                        f"(with or without coefficients) is supported")
        coeff = [float(c) for c in p.coeff]
        if coeff and len(coeff) != len(lay.bottom):
            raise ModelFormatError(f"{where}: {len(coeff)} coefficients for {len(lay.bottom)} bottoms")
        return [Lyr.Add(coefficients=coeff or None)]
    if kind == "Concat":
        p = lay.concat_param
        axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
        if axis != 1:
            raise UnsupportedLayerError(f"{where}: Concat along axis {axis}; only the channel axis (1) is supported")
        return [Lyr.Concat()]
    raise UnsupportedLayerError(f"{where}: layer type {kind!r} is not supported; supported: Convolution, "
                                f"InnerProduct, Pooling, ReLU, TanH, Softmax, Flatten, LRN, BatchNorm, Scale, "
                                f"Eltwise (SUM), Concat, Split, Dropout, Input")


def _vector(blob, n, where, what):
    v = blob.reshape(-1)
    if v.size != n:
        raise ModelFormatError(f"{where}: {what} blob has {v.size} values, expected {n}")
    return v

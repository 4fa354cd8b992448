"""Reading an ONNX file safely: the caps on what a hostile file may declare, and each node's checked view.

Everything that reads the protobuf's tensors goes through here.  :class:`_Limits` checks declared sizes
against :data:`MAX_SHAPE_VALUES` and ``max_elements`` before anything is read, listed, copied or cast
(:func:`_check_tensors` runs it over the whole file first; external data is read only to the bytes its
shape needs).  :class:`_Node` is one node's attributes with defaults, and errors that name the node.  The
rest read constants: initializers and ``Constant`` nodes (NaN and infinity refused, an attention mask's
-inf excepted), shape and axes tensors, weights (:func:`_weight`: counted against the network's budget
before they are copied) and float attributes.
"""

import math
import numbers

import numpy as np

from ...errors import MissingDependencyError, ModelFormatError, ParameterError, UnsupportedLayerError
from ...layers.base import MAX_SIZE
from .._common import brief

#: Most values a shape tensor (a Reshape target, Unsqueeze axes, a ConstantOfShape shape) may hold.
MAX_SHAPE_VALUES = 64
#: Default cap on the values one constant may declare, and on all the weights a network takes from one
#: file (2**28: VGG-16's 138 million parameters fit; 1 GiB in float32, 2 GiB in float64).
MAX_ELEMENTS = 2 ** 28


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


def _finite_attr(n, name, dtype):
    """A float attribute (default 1.0) that must be finite in ``dtype``."""
    v = n.get(name, 1.0)
    if not (isinstance(v, (int, float)) and np.isfinite(v) and abs(v) <= np.finfo(dtype).max):
        raise ModelFormatError(f"{n.label}: attribute {name}={v!r} must be a finite {np.dtype(dtype)} number")
    return dtype(v)

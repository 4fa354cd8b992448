"""lrpnumpy's own format: one ``.npz`` with the architecture as JSON and every array, exact round trip.

Each layer is recorded as its type name, its :meth:`~lrpnumpy.layers.Layer.config` and the names of its
parameter arrays (stored as ``layer{i}.{name}``); loading rebuilds it with
:meth:`~lrpnumpy.layers.Layer.from_config`, which checks the arrays against the configuration.
"""

import collections
import json
import math
import zipfile

import numpy as np

from .. import layers as Lyr
from ..errors import LRPError, ModelFormatError, ShapeError, UnsupportedLayerError
from ..layers.base import MAX_SIZE, check_array, check_finite
from ._common import atomic_write, brief, converted, memory_budget, parse_errors

FORMAT, VERSION = "lrpnumpy", 1


def save(net, path):
    """Write ``net`` to ``path`` (``.npz``) atomically: a temporary file renamed into place.

    ``net.meta`` must pass the checks :func:`load` makes (ModelFormatError otherwise).
    """
    arch, arrays = {"format": FORMAT, "version": VERSION, "layers": [],
                    "input_shape": None if net.input_shape is None else list(net.input_shape),
                    "meta": getattr(net, "meta", {})}, {}
    for i, layer in enumerate(net):
        name = type(layer).__name__
        if Lyr.Layer.registry.get(name) is not type(layer):
            raise UnsupportedLayerError(f"layer {i} ({layer!r}) cannot be saved in the native format")
        params = [p for p in layer.params if getattr(layer, p) is not None]
        arch["layers"].append({"type": name, "args": layer.config(), "params": params})
        for p in params:  # checked again: arrays may have been changed in place since they were assigned
            arrays[f"layer{i}.{p}"] = check_finite(check_array(getattr(layer, p), f"layer {i} ({layer!r}) {p}"),
                                                   f"layer {i} ({layer!r}) {p}")
    _check_meta(path, arch["meta"] or {})  # never write a file that load() refuses
    _check_classes(path, net)
    if isinstance(net, Lyr.Graph):  # the wiring: node names in execution order and what each reads
        arch["graph"] = {"names": list(net.names), "inputs": [list(net.inputs[n]) for n in net.names],
                         "output": net.output, "input_name": net.input_name}
    atomic_write(path, lambda f: np.savez(f, __architecture__=np.array(json.dumps(arch)), **arrays), ".npz")


def load(path, dtype=None):
    """Read a network written by :func:`save`.

    Parameters
    ----------
    path : str or path-like
    dtype : None, float32 or float64
        Convert the parameters to this dtype (None: as stored).

    Raises
    ------
    ModelFormatError
        Not a readable npz, no or bad architecture record, a missing or misshapen array, or
        non-finite weights; the message names the file, the layer and the field.
    """
    with parse_errors(path, "lrpnumpy model"):
        return converted(_load(path), dtype)


def _load(path):
    try:
        with zipfile.ZipFile(path) as archive:  # what the arrays will take, before any is read
            declared = sum(info.file_size for info in archive.infolist())
            names = collections.Counter(archive.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        raise ModelFormatError(f"{path}: not a readable lrpnumpy .npz file ({exc})") from None
    twice = [(name, k) for name, k in names.items() if k > 1]
    if twice:  # numpy would read the last of them; which one the writer meant is unknown
        raise ModelFormatError(f"{path}: archive member {brief(twice[0][0])!r} appears {twice[0][1]} times; each array "
                               f"must be stored once")
    if declared > memory_budget():
        raise ModelFormatError(f"{path}: its arrays would take {declared / 2 ** 30:.1f} GiB, more than this machine "
                               f"has")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise ModelFormatError(f"{path}: not a readable lrpnumpy .npz file ({exc})") from None
    try:
        arch = json.loads(str(arrays.pop("__architecture__")))
    except (KeyError, ValueError) as exc:
        raise ModelFormatError(f"{path}: no valid '__architecture__' record ({exc})") from None
    if not isinstance(arch, dict) or arch.get("format") != FORMAT or not isinstance(arch.get("layers"), list):
        raise ModelFormatError(f"{path}: not an lrpnumpy model (format {FORMAT!r}, version {VERSION} expected)")
    if arch.get("version") != VERSION:
        raise ModelFormatError(f"{path}: lrpnumpy model format version {arch.get('version')!r}; this lrpnumpy reads "
                               f"version {VERSION}")
    shape = arch.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and 1 <= len(shape) <= 3 and all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_SIZE for d in shape)
            and math.prod(shape) <= MAX_SIZE):
        raise ModelFormatError(f"{path}: input_shape must be null or 1 to 3 positive ints (one sample), got "
                               f"{shape!r}")
    if not arch["layers"]:
        raise ModelFormatError(f"{path}: the model has no layers")
    layers = []
    for i, spec in enumerate(arch["layers"]):
        where = f"{path}: layer {i}"
        try:
            name, args, params = spec["type"], dict(spec["args"]), list(spec["params"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ModelFormatError(f"{where}: malformed record {spec!r} ({exc})") from None
        cls = Lyr.Layer.registry.get(name)
        if cls is None:
            raise UnsupportedLayerError(f"{where}: unknown layer type {name!r}")
        given = {}
        for p in params:
            key = f"layer{i}.{p}"
            if key not in arrays:
                raise ModelFormatError(f"{where} ({name}): array {key!r} is missing")
            given[p] = arrays[key]
        if cls.params and not given:
            raise ModelFormatError(f"{where} ({name}): the file holds none of its parameters {list(cls.params)}")
        try:
            layers.append(cls.from_config(args, given if cls.params else None))
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"{where} ({name}): {exc}") from None
    meta = arch.get("meta") or {}
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{path}: 'meta' must be a JSON object, got {type(meta).__name__}")
    _check_meta(path, meta)
    shape = tuple(shape) if shape else None
    wiring = arch.get("graph")
    if wiring is None:
        return _check_classes(path, Lyr.Sequential(*layers, input_shape=shape, meta=meta))
    try:
        names, inputs = list(wiring["names"]), [list(i) for i in wiring["inputs"]]
        output, input_name = str(wiring["output"]), str(wiring["input_name"])
        ok = len(names) == len(inputs) == len(layers) and all(isinstance(n, str) for n in names) \
            and all(isinstance(n, str) for i in inputs for n in i)
    except (TypeError, KeyError, ValueError) as exc:
        raise ModelFormatError(f"{path}: malformed 'graph' record ({exc})") from None
    if not ok:
        raise ModelFormatError(f"{path}: the 'graph' record needs one name (a string) and one list of input names "
                               f"per layer ({len(layers)} layers)")
    try:
        net = Lyr.Graph(list(zip(names, layers, inputs)), output=output, input_name=input_name, input_shape=shape,
                        meta=meta)
    except ShapeError as exc:
        raise ModelFormatError(f"{path}: bad 'graph' record: {exc}") from None
    return _check_classes(path, net)


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_meta(path, meta):
    """The ``meta`` fields lrpnumpy reads (the command line, the demo) have the kinds it expects."""
    checks = {"input_range": (lambda v: isinstance(v, list) and len(v) == 2 and all(map(_number, v)) and v[0] < v[1],
                              "a list [low, high] of two finite numbers with low < high"),
              "classes": (lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
                          "a list of class names (strings)"),
              "dataset": (lambda v: isinstance(v, str), "a string"),
              "test_accuracy": (_number, "a finite number")}
    for key, (ok, expected) in checks.items():
        if key in meta and not ok(meta[key]):
            raise ModelFormatError(f"{path}: meta {key!r} must be {expected}, got {brief(meta[key])!r}")


def _check_classes(path, net):
    """A ``classes`` list names every output of a network whose input shape is known."""
    classes = net.meta.get("classes")
    if classes is None or net.input_shape is None:
        return net
    try:
        out = net.output_shape((1,) + tuple(net.input_shape))
    except LRPError as exc:
        raise ModelFormatError(f"{path}: the layers do not fit the input shape {net.input_shape} ({exc})") from None
    if math.prod(out[1:]) != len(classes):
        raise ModelFormatError(f"{path}: meta 'classes' names {len(classes)} classes, but the network has "
                               f"{math.prod(out[1:])} outputs (shape {tuple(out[1:])}); expected one name per output")
    return net

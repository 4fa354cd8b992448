"""lrpnumpy's own format: one ``.npz`` with the architecture as JSON and every array, exact round trip."""

import json
import os
import tempfile
import zipfile

import numpy as np

from .. import layers as Lyr
from ..errors import LRPError, ModelFormatError, UnsupportedLayerError

FORMAT, VERSION = "lrpnumpy", 1

_POOL = ("kernel_size", "stride", "padding", "ceil_mode", "dilation")
#: Constructor arguments of each layer type, read from the attributes of the same name.
ARGS = {
    "Linear": ("in_features", "out_features"),
    "Conv2d": ("in_channels", "out_channels", "kernel_size", "stride", "padding", "groups", "dilation"),
    "SumPool2d": _POOL + ("scale",), "AvgPool2d": _POOL + ("count_include_pad",), "MaxPool2d": _POOL,
    "GlobalAvgPool2d": (), "LRN": ("size", "alpha", "beta", "bias"),
    "Softmax": ("axis", "flatten"), "Dropout": ("p",), "BatchNorm2d": ("num_features", "eps"),
    "ReLU": (), "Tanh": (), "Flatten": (),
}


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


def save(net, path):
    """Write ``net`` to ``path`` (``.npz``) atomically: a temporary file renamed into place."""
    arch, arrays = {"format": FORMAT, "version": VERSION, "layers": [],
                    "input_shape": _jsonable(getattr(net, "input_shape", None))}, {}
    for i, layer in enumerate(net):
        name = type(layer).__name__
        if name not in ARGS:
            raise UnsupportedLayerError(f"layer {i} ({layer!r}) cannot be saved in the native format")
        params = [p for p in layer.params if getattr(layer, p) is not None]
        args = {a: _jsonable(getattr(layer, a)) for a in ARGS[name]}
        if "bias" in layer.params and name != "BatchNorm2d":
            args["bias"] = layer.bias is not None
        arch["layers"].append({"type": name, "args": args, "params": params})
        for p in params:
            arrays[f"layer{i}.{p}"] = getattr(layer, p)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __architecture__=np.array(json.dumps(arch)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load(path):
    """Read a network written by :func:`save`; see :func:`_load`."""
    try:
        return _load(path)
    except LRPError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file must not escape as a raw traceback
        raise ModelFormatError(f"{path}: damaged lrpnumpy model ({type(exc).__name__}: {exc})") from None


def _load(path):
    """Read a network written by :func:`save`.

    Raises
    ------
    ModelFormatError
        Not a readable npz, no or bad architecture record, a missing or misshapen array, or
        non-finite weights; the message names the file, the layer and the field.
    """
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
    layers = []
    for i, spec in enumerate(arch["layers"]):
        where = f"{path}: layer {i}"
        try:
            name, args, params = spec["type"], dict(spec["args"]), list(spec["params"])
        except (TypeError, KeyError) as exc:
            raise ModelFormatError(f"{where}: malformed record {spec!r} ({exc})") from None
        if name not in ARGS:
            raise UnsupportedLayerError(f"{where}: unknown layer type {name!r}")
        try:
            layer = getattr(Lyr, name)(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"{where} ({name}): invalid arguments {args} ({exc})") from None
        for p in params:
            key = f"layer{i}.{p}"
            if key not in arrays:
                raise ModelFormatError(f"{where} ({name}): array {key!r} is missing")
            value, current = arrays[key], getattr(layer, p, None)
            if current is None or value.shape != current.shape:
                raise ModelFormatError(f"{where} ({name}): {p} has shape {value.shape}, expected "
                                       f"{None if current is None else current.shape}")
            if value.dtype not in (np.float32, np.float64) or not np.isfinite(value).all():
                raise ModelFormatError(f"{where} ({name}): {p} must be finite float32/float64, got {value.dtype}")
            setattr(layer, p, value)
        layers.append(layer)
    net = Lyr.Sequential(*layers)
    shape = arch.get("input_shape")
    net.input_shape = tuple(shape) if shape else None
    return net

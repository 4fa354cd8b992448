"""Read PyTorch checkpoints without PyTorch, and load them into lrpnumpy networks.

Two formats are read directly:

* ``.safetensors``: an 8-byte little-endian header length, a JSON header (each tensor's dtype,
  shape and byte range), then the raw little-endian data.  Every declared size is checked
  against the file before anything is read.
* ``.pt`` / ``.pth`` as ``torch.save`` writes them (PyTorch >= 1.6): a zip archive holding
  ``data.pkl`` (a pickle that describes the tensors) and ``data/<key>`` (each storage's raw
  bytes).  The pickle is read by a restricted unpickler: the only globals it may ask for are
  PyTorch's tensor rebuild functions, its storage types and ``collections.OrderedDict``, each
  mapped to NumPy code of this module; anything else (``os.system``, ``builtins.eval``, any
  class) is refused by name before it is looked up, so a malicious file runs nothing.
  What comes out is tensors (as arrays), dicts, lists and numbers.
"""

import collections
import json
import math
import numbers
import os
import pickle
import zipfile

import numpy as np

from ..canonize import _fold
from ..errors import LRPError, ModelFormatError, ShapeError
from ..layers import BatchNorm2d, ChannelAffine, Graph, Sequential
from ._common import memory_budget

#: The largest safetensors JSON header read (the safetensors library's own limit is 100 MB).
MAX_HEADER = 100 << 20

_SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bf16", "I64": "<i8", "I32": "<i4",
                       "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}

_TORCH_STORAGES = {"DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bf16",
                   "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                   "ByteStorage": "u1", "BoolStorage": "?"}


def _itemsize(kind):
    return 2 if kind == "bf16" else np.dtype(kind).itemsize


def _decode(buf, kind, count, byteorder="<"):
    """``count`` values of ``kind`` from bytes; bfloat16 widened to float32 (its high 16 bits)."""
    if kind == "bf16":
        bits = np.frombuffer(buf, dtype=np.dtype(np.uint16).newbyteorder(byteorder), count=count)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    dt = np.dtype(kind)
    if dt.itemsize > 1:
        dt = dt.newbyteorder(byteorder)
    return np.frombuffer(buf, dtype=dt, count=count).astype(dt.newbyteorder("="))


# ----- safetensors -----

def read_safetensors(path):
    """The tensors of a ``.safetensors`` file, as a dict of name -> ndarray (read without the safetensors package).

    Raises
    ------
    ModelFormatError
        The file is shorter than its header says, the header is not JSON of the expected form,
        a tensor's byte range lies outside the data or does not match its dtype and shape.
    """
    where = str(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFormatError(f"{where}: {size} bytes, shorter than the 8-byte safetensors header length")
            n = int.from_bytes(head, "little")
            if n > size - 8:
                raise ModelFormatError(f"{where}: the safetensors header declares {n} bytes, but the file holds "
                                       f"{size - 8} after the length (truncated, or not a safetensors file)")
            if n > MAX_HEADER:
                raise ModelFormatError(f"{where}: the safetensors header declares {n} bytes, more than the "
                                       f"{MAX_HEADER} accepted")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise ModelFormatError(f"{where}: the safetensors header is not JSON ({exc})") from None
            if not isinstance(header, dict):
                raise ModelFormatError(f"{where}: the safetensors header must be a JSON object, got "
                                       f"{type(header).__name__}")
            data_size, entries = size - 8 - n, []
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                entries.append((name,) + _safetensors_entry(where, name, entry, data_size))
            out = {}
            for name, kind, shape, start, stop in entries:
                f.seek(8 + n + start)
                buf = f.read(stop - start)
                if len(buf) != stop - start:
                    raise ModelFormatError(f"{where}: tensor {name!r} ends past the end of the file")
                out[name] = _decode(buf, kind, math.prod(shape)).reshape(shape)
            return out
    except OSError as exc:
        raise ModelFormatError(f"{where}: cannot be read ({exc.strerror or exc})") from None


def _safetensors_entry(where, name, entry, data_size):
    if not isinstance(entry, dict):
        raise ModelFormatError(f"{where}: header entry {name!r} must be an object, got {entry!r}")
    kind = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
    if kind is None:
        raise ModelFormatError(f"{where}: tensor {name!r} has dtype {entry.get('dtype')!r}; supported: "
                               f"{', '.join(_SAFETENSORS_DTYPES)}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(_count(s) for s in shape)):
        raise ModelFormatError(f"{where}: tensor {name!r} has shape {shape!r}; expected a list of ints >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(o) for o in offsets)
            and offsets[0] <= offsets[1] <= data_size):
        raise ModelFormatError(f"{where}: tensor {name!r} has data_offsets {offsets!r}; expected [begin, end] "
                               f"within the {data_size} data bytes the file holds")
    needed = math.prod(shape) * _itemsize(kind)
    if offsets[1] - offsets[0] != needed:
        raise ModelFormatError(f"{where}: tensor {name!r} of shape {shape} and dtype {entry['dtype']} needs {needed} "
                               f"bytes, its data_offsets span {offsets[1] - offsets[0]}")
    return kind, tuple(shape), offsets[0], offsets[1]


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


# ----- torch.save's zip format -----

class _StorageType:
    """Stands for a torch storage class in the pickle (``torch.FloatStorage``, ...)."""

    def __init__(self, name):
        self.name, self.kind = name, _TORCH_STORAGES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, *rest):
    """``torch._utils._rebuild_tensor_v2`` in NumPy: a strided view of the storage, copied."""
    if not isinstance(storage, np.ndarray):
        raise ModelFormatError(f"a tensor's storage must come from the archive, got {type(storage).__name__}")
    size, stride = tuple(size), tuple(stride)
    if not (_count(storage_offset) and all(_count(s) for s in size) and all(_count(s) for s in stride)
            and len(size) == len(stride)):
        raise ModelFormatError(f"a tensor has offset {storage_offset!r}, size {size!r}, stride {stride!r}; expected "
                               f"ints >= 0, as many strides as sizes")
    if math.prod(size) == 0:
        return np.zeros(size, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise ModelFormatError(f"a tensor of size {size} (offset {storage_offset}, stride {stride}) reads element "
                               f"{last} of a storage of {storage.size}")
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=tuple(s * storage.itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data, *rest):
    """``torch._utils._rebuild_parameter``: a parameter is its tensor."""
    return data


#: The only globals a checkpoint's pickle may name, and what each becomes.
_ALLOWED = {("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter}
_ALLOWED.update({("torch", name): _StorageType(name) for name in _TORCH_STORAGES})


class _Unpickler(pickle.Unpickler):
    """Unpickles ``data.pkl`` of a torch zip archive, allowing only :data:`_ALLOWED` globals."""

    def __init__(self, file, where, archive, prefix, byteorder):
        super().__init__(file)
        self.where, self.archive, self.prefix, self.byteorder = where, archive, prefix, byteorder
        self.storages = {}

    def find_class(self, module, name):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise ModelFormatError(f"{self.where}: the pickle asks for {module}.{name}, which a checkpoint of "
                                   f"tensors, dicts, lists and numbers does not need; refused (nothing was run)")
        # fresh objects for each request: a pickle's BUILD on what it was given changes nothing beyond this file
        if isinstance(found, _StorageType):
            return _StorageType(found.name)
        if found is collections.OrderedDict:
            return found  # a C type: its attributes cannot be set

        def rebuild(*args):
            return found(*args)
        return rebuild

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and _count(pid[4])):
            raise ModelFormatError(f"{self.where}: unexpected persistent id {pid!r} in the pickle; expected "
                                   f"('storage', type, key, location, size)")
        _, storage_type, key, _, numel = pid
        if key in self.storages:
            return self.storages[key]
        entry = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(entry)
        except KeyError:
            raise ModelFormatError(f"{self.where}: storage {key!r} is missing from the archive ({entry})") from None
        needed = numel * _itemsize(storage_type.kind)
        if needed > info.file_size:
            raise ModelFormatError(f"{self.where}: storage {key!r} declares {numel} {storage_type.name} elements "
                                   f"({needed} bytes), the archive holds {info.file_size}")
        if needed > memory_budget():
            raise ModelFormatError(f"{self.where}: storage {key!r} declares {needed} bytes, more than this machine has")
        with self.archive.open(info) as f:
            buf = f.read(needed)
        if len(buf) != needed:
            raise ModelFormatError(f"{self.where}: storage {key!r} is truncated ({len(buf)} of {needed} bytes)")
        self.storages[key] = _decode(buf, storage_type.kind, numel, "<" if self.byteorder == "little" else ">")
        return self.storages[key]


def read_torch_zip(path):
    """The object ``torch.save`` wrote to ``path`` (zip format), with tensors as arrays, read without torch.

    Raises
    ------
    ModelFormatError
        Not a torch zip archive, a truncated or inconsistent one, or a pickle that names any
        global other than tensor rebuilding and ``OrderedDict`` (named in the message).
    """
    where = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ModelFormatError(f"{where}: a zip archive without exactly one data.pkl; not written by "
                                       f"torch.save")
            prefix = pickles[0][:-len("data.pkl")]
            byteorder = "little"
            if prefix + "byteorder" in archive.namelist():
                byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
                if byteorder not in ("little", "big"):
                    raise ModelFormatError(f"{where}: byteorder {byteorder!r}; expected 'little' or 'big'")
            info = archive.getinfo(pickles[0])
            if info.file_size > memory_budget():
                raise ModelFormatError(f"{where}: data.pkl declares {info.file_size} bytes, more than this "
                                       f"machine has")
            with archive.open(info) as f:
                return _Unpickler(f, where, archive, prefix, byteorder).load()
    except LRPError:
        raise
    except FileNotFoundError as exc:
        raise ModelFormatError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - zipfile and pickle raise many kinds; all mean a damaged file
        raise ModelFormatError(f"{where}: damaged PyTorch checkpoint ({type(exc).__name__}: {exc})") from None


def read_state_dict(path):
    """A checkpoint's tensors as a dict of name -> ndarray, without PyTorch.

    ``.safetensors`` files and ``torch.save`` zip archives (``.pt``, ``.pth``, ``.bin``, ...; the
    format is recognised by the file's first bytes).  A checkpoint that wraps its state dict
    (``{"state_dict": {...}, "epoch": 3}``, ``"model"``, ``"model_state_dict"``) is unwrapped.
    """
    where = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelFormatError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    if head.startswith(b"PK"):
        obj = read_torch_zip(path)
    elif str(path).lower().endswith(".safetensors") or not head.startswith(b"\x80"):
        obj = read_safetensors(path)
    else:
        raise ModelFormatError(f"{where}: a bare pickle (PyTorch's legacy format, or not a checkpoint); re-save it "
                               f"with torch.save in PyTorch >= 1.6 (zip format) or as .safetensors")
    return _tensors(obj, where)


def _tensors(obj, where):
    if isinstance(obj, dict) and not any(isinstance(v, np.ndarray) for v in obj.values()):
        inner = [k for k in ("state_dict", "model_state_dict", "model") if isinstance(obj.get(k), dict)]
        if inner:
            obj = obj[inner[0]]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ModelFormatError(f"{where}: expected a state dict (names -> tensors), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, (np.ndarray, numbers.Number))]
    if bad:
        raise ModelFormatError(f"{where}: entries {bad[:5]} are not tensors (a state dict holds tensors only)")
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


# ----- loading into a network -----

_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def load_state_dict(net, source, mapping=None, strict=True):
    """Copy a PyTorch checkpoint's parameters into ``net`` (in place; returns ``net``), without PyTorch.

    Parameters
    ----------
    net : Sequential or Graph
    source : str, path-like or dict
        A ``.safetensors`` or ``torch.save`` file (see :func:`read_state_dict`), or a dict of
        name -> ndarray.
    mapping : dict, optional
        Layer (index in execution order, or node name) -> the torch module name its parameters
        have (``"features.0"``), or a pair ``(conv_name, batchnorm_name)`` for a layer with a
        batch norm folded into it.  Layers not in it use the default names: for a Graph made by
        :func:`~lrpnumpy.io.from_torch`, the module it came from (and the batch norm folded into
        it); for another Graph, the node name; for a Sequential, the layer's index, as in a
        ``torch.nn.Sequential`` with the same layers (``0.weight``, ``0.bias``, ``1.running_mean``).
    strict : bool
        Refuse a checkpoint with entries no layer reads (``num_batches_tracked`` excepted).

    Notes
    -----
    Conv2d and Linear read ``NAME.weight`` and ``NAME.bias``; BatchNorm2d reads ``NAME.weight``,
    ``NAME.bias`` (ones and zeros when both are absent: ``affine=False``), ``NAME.running_mean``
    and ``NAME.running_var``.  A layer with a folded batch norm gets the fold of the convolution
    and the batch norm read from the checkpoint, computed as :func:`~lrpnumpy.fold_batchnorm` does.
    Values are converted to each layer's dtype.  Nothing is changed unless every parameter loads.

    Raises
    ------
    ModelFormatError
        A missing entry, an entry of the wrong shape, non-finite values, or (``strict``) entries
        no layer reads; the message names them.
    """
    if not isinstance(net, (Sequential, Graph)):
        raise ShapeError(f"load_state_dict loads into a Sequential or Graph, got {type(net).__name__}")
    where = "<state dict>" if isinstance(source, dict) else str(source)
    sd = _tensors(source, where) if isinstance(source, dict) else read_state_dict(source)
    meta = (getattr(net, "meta", None) or {}).get("torch") or {}
    names = list(net.names)
    mapping = dict(mapping or {})
    bad = [k for k in mapping if not (k in names or (isinstance(k, int) and -len(net) <= k < len(net)))]
    if bad:
        raise ShapeError(f"mapping names layers {bad} that the network does not have (nodes: {names[:8]}"
                         f"{', ...' if len(names) > 8 else ''})")
    used, updates = set(), []
    for i, (name, layer) in enumerate(zip(names, net)):
        if not layer.params:
            continue
        target = mapping.get(name, mapping.get(i, mapping.get(i - len(net))))
        if target is None:
            prefix = meta.get("modules", {}).get(name, name) if isinstance(net, Graph) else str(i)
            bn = meta.get("folded", {}).get(name)
        elif isinstance(target, (tuple, list)) and len(target) == 2:
            prefix, bn = target
        else:
            prefix, bn = target, None
        new = _loaded(layer, sd, str(prefix), None if bn is None else bn, meta, name, where, used)
        updates.append((layer, new))
    if strict:
        extra = sorted(k for k in sd if k not in used and not k.endswith("num_batches_tracked"))
        if extra:
            raise ModelFormatError(f"{where}: entries no layer of the network reads: {extra[:8]}"
                                   f"{' ...' if len(extra) > 8 else ''} ({len(extra)}); pass mapping=... to name "
                                   f"the layers they belong to, or strict=False")
    for layer, new in updates:
        for p in layer.params:
            setattr(layer, p, getattr(new, p))
        layer.clear()
    return net


def _take(sd, key, where, used, name, required=True):
    if key not in sd:
        if required:
            raise ModelFormatError(f"{where}: no entry {key!r} for layer {name!r}")
        return None
    used.add(key)
    return sd[key]


def _loaded(layer, sd, prefix, bn, meta, name, where, used):
    """A copy of ``layer`` with the parameters read from ``sd``."""
    dt = layer.dtype or np.dtype(np.float64)
    new = layer.copy()

    def value(key, required=True):
        v = _take(sd, key, where, used, name, required)
        if v is None:
            return None
        if v.dtype.kind not in "fiu":
            raise ModelFormatError(f"{where}: entry {key!r} has dtype {v.dtype}, expected numbers")
        return np.array(v, dtype=np.float64)

    def bn_params(prefix):
        w, b = value(f"{prefix}.weight", False), value(f"{prefix}.bias", False)
        mean, var = value(f"{prefix}.running_mean"), value(f"{prefix}.running_var")
        c = mean.shape[0] if mean.ndim == 1 else -1
        return (np.ones(c) if w is None else w), (np.zeros(c) if b is None else b), mean, var

    try:
        if isinstance(layer, BatchNorm2d):
            params = dict(zip(_BN_KEYS, bn_params(prefix)))
        elif isinstance(layer, ChannelAffine) and f"{prefix}.running_mean" in sd:  # a BatchNorm1d
            w, b, mean, var = bn_params(prefix)
            scale = w / np.sqrt(var + float(meta.get("eps", {}).get(name, 1e-5)))
            params = {"weight": scale, "bias": b - mean * scale}
        elif bn is not None:
            if isinstance(bn, (list, tuple)):
                bn, eps = bn
            else:
                eps = 1e-5
            w = value(f"{prefix}.weight")
            b = value(f"{prefix}.bias", False)
            conv = layer.astype(np.float64)  # folded in float64, as from_torch does
            conv.weight = w
            conv.bias = np.zeros(w.shape[0]) if b is None else b
            norm = BatchNorm2d(w.shape[0], eps=float(eps))
            for k, v in zip(_BN_KEYS, bn_params(str(bn))):
                setattr(norm, k, v)
            folded = _fold(conv, norm)
            params = {"weight": folded.weight, "bias": folded.bias}
        else:
            params = {p: value(f"{prefix}.{p}", getattr(layer, p) is not None) for p in layer.params}
        for p, v in params.items():
            if getattr(layer, p) is None and v is not None:
                raise ModelFormatError(f"{where}: layer {name!r} ({layer!r}) has no {p}, but the checkpoint has "
                                       f"{prefix}.{p}")
            setattr(new, p, None if v is None else v.astype(dt))
    except ModelFormatError:
        raise
    except LRPError as exc:
        raise ModelFormatError(f"{where}: layer {name!r} ({layer!r}) from {prefix!r}: {exc}") from None
    return new

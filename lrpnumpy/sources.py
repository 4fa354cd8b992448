"""Data sets as users store them, read one chunk at a time wherever a task runs.

A *source* knows its length, a sample's shape and dtype, a fingerprint for a run's manifest, and
``read(start, stop)``: the inputs ``start:stop`` as one array.  A file source pickles as its path and
a few numbers (never its data), so a task of :mod:`lrpnumpy.parallel` carries ``(source, start,
stop)`` and the worker reads the chunk itself, from storage every worker sees:

* :class:`NpySource`: one ``.npy`` file, memory-mapped;
* :class:`NpyShards`: a folder of ``.npy`` files, one after the other (sorted by name);
* :class:`IDXSource`: an IDX file (MNIST, Fashion-MNIST; uncompressed), memory-mapped;
* :class:`ZarrSource`: a zarr array (the ``zarr`` package, the ``data`` extra);
* :class:`ImageFolder`: PNG/JPEG files, one class per subfolder (as torchvision's ``ImageFolder``),
  decoded and resized with Pillow (the ``data`` extra);
* :class:`ArraySource`: an array in memory (or anything with ``len()`` and slicing), which a Dask
  client sends to its workers once.

A file source's fingerprint is a SHA-256 of its files' names, sizes and modification times (and
the declared shape and dtype), not of their bytes: the client never reads the data set for it.  An
in-memory array's fingerprint is a SHA-256 of its values.

``dtype`` (file sources): the dtype the chunks are read as (``None``: the stored one).  Integer pixels
are not scaled; image folders give floats in [0, 1].
"""

import hashlib
import math
import os

import numpy as np

from .errors import DatasetError, MissingDependencyError, RuleParameterError, ShapeError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def _bytes(a):
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _stat_hash(h, root, paths):
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        h.update(f"{os.path.relpath(path, root)}:{st.st_size}:{st.st_mtime_ns};".encode())


class Source:
    """The interface: ``len(source)``, ``sample_shape``, ``dtype``, ``fingerprint(chunks)``,
    ``read(start, stop)`` and ``describe()`` (a JSON-able record for the manifest; None for arrays)."""

    sample_shape = ()
    dtype = np.dtype(np.float64)

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise RuleParameterError(f"a source reads contiguous ranges (source[a:b]), got {index!r}")
        start, stop, _ = index.indices(len(self))
        return self.read(start, max(start, stop))

    def read(self, start, stop):
        raise NotImplementedError

    def _convert(self, x):
        return np.asarray(x, dtype=self.dtype)

    def _check_range(self, start, stop):
        if not (0 <= start <= stop <= len(self)):
            raise ShapeError(f"{self.describe()}: inputs {start}:{stop} are outside 0:{len(self)}")

    def describe(self):
        return {"kind": type(self).__name__}

    def fingerprint(self, chunks=None):
        h = hashlib.sha256(repr(sorted(self.describe().items())).encode())
        self._hash_files(h)
        return h.hexdigest()

    def _hash_files(self, h):
        pass


class ArraySource(Source):
    """An array in memory, a ``numpy.memmap``, or any object with ``len()`` and slicing that gives arrays."""

    def __init__(self, data):
        self.data = data
        self.length = len(data)
        if self.length:
            first = np.asarray(data[:1])
            self.sample_shape, self.dtype = tuple(first.shape[1:]), first.dtype

    def read(self, start, stop):
        return np.asarray(self.data[start:stop])

    def describe(self):
        return None

    def fingerprint(self, chunks=None):
        """SHA-256 of every input (read chunk by chunk), with the data's dtype and sample shape."""
        h = hashlib.sha256()
        for a, b in chunks or [(0, self.length)]:
            x = np.ascontiguousarray(self.read(a, b))
            h.update(f"{x.dtype.str}:{x.shape[1:]};".encode())
            h.update(_bytes(x))
        return h.hexdigest()


def _open_npy(path):
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except (ValueError, EOFError, TypeError) as exc:
        raise DatasetError(f"{path}: not a .npy array of numbers ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf" or a.ndim < 2:
        raise DatasetError(f"{path}: holds {getattr(a, 'dtype', type(a).__name__)} of shape "
                           f"{getattr(a, 'shape', '?')}; expected a batch (N, ...) of real numbers")
    return a


class _Mapped(Source):
    """A source over memory maps opened lazily in the process that reads (never pickled)."""

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"] = None
        return state


class NpySource(_Mapped):
    """One ``.npy`` file of shape (N, ...), memory-mapped."""

    def __init__(self, path, dtype=None):
        self.path = os.path.abspath(os.fspath(path))
        a = _open_npy(self.path)
        self.length, self.sample_shape = len(a), tuple(a.shape[1:])
        self.stored, self.dtype = a.dtype.str, np.dtype(dtype or a.dtype)
        self._maps = None

    def read(self, start, stop):
        self._check_range(start, stop)
        if self._maps is None:
            self._maps = _open_npy(self.path)
        return self._convert(self._maps[start:stop])

    def describe(self):
        return {"kind": "npy", "path": self.path, "length": self.length, "stored": self.stored,
                "sample_shape": list(self.sample_shape)}

    def _hash_files(self, h):
        _stat_hash(h, os.path.dirname(self.path), [self.path])


class NpyShards(_Mapped):
    """A folder of ``.npy`` files (sorted by name), each (n_i, ...) with the same sample shape and dtype,
    read as one data set of ``sum(n_i)`` inputs."""

    def __init__(self, folder, dtype=None):
        self.folder = os.path.abspath(os.fspath(folder))
        try:
            names = sorted(n for n in os.listdir(self.folder) if n.lower().endswith(".npy"))
        except OSError as exc:
            raise DatasetError(f"{folder}: cannot be listed ({exc.strerror or exc})") from None
        if not names:
            raise DatasetError(f"{folder}: holds no .npy shards")
        self.names, self.offsets, first = names, [0], None
        for name in names:
            a = _open_npy(os.path.join(self.folder, name))
            if first is None:
                first = a
            elif a.shape[1:] != first.shape[1:] or a.dtype != first.dtype:
                raise DatasetError(f"{os.path.join(self.folder, name)}: shape {a.shape} ({a.dtype}), but "
                                   f"{names[0]} holds samples of shape {first.shape[1:]} ({first.dtype})")
            self.offsets.append(self.offsets[-1] + len(a))
        self.length, self.sample_shape = self.offsets[-1], tuple(first.shape[1:])
        self.stored, self.dtype = first.dtype.str, np.dtype(dtype or first.dtype)
        self._maps = None

    def read(self, start, stop):
        self._check_range(start, stop)
        if self._maps is None:
            self._maps = {}
        parts = []
        for k, name in enumerate(self.names):
            a, b = self.offsets[k], self.offsets[k + 1]
            if b <= start or a >= stop:
                continue
            if k not in self._maps:
                self._maps[k] = _open_npy(os.path.join(self.folder, name))
            parts.append(self._maps[k][max(start, a) - a:min(stop, b) - a])
        if not parts:
            return np.empty((0,) + self.sample_shape, self.dtype)
        return self._convert(np.concatenate(parts) if len(parts) > 1 else parts[0])

    def describe(self):
        return {"kind": "npy_shards", "folder": self.folder, "shards": len(self.names), "length": self.length,
                "stored": self.stored, "sample_shape": list(self.sample_shape)}

    def _hash_files(self, h):
        _stat_hash(h, self.folder, [os.path.join(self.folder, n) for n in self.names])


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IDXSource(_Mapped):
    """An uncompressed IDX file (MNIST's format), memory-mapped; (N, H, W) images get a channel axis
    (N, 1, H, W) unless ``channel_axis=False``."""

    def __init__(self, path, dtype=None, channel_axis=True):
        self.path = os.path.abspath(os.fspath(path))
        try:
            with open(self.path, "rb") as f:
                head = f.read(4)
                if head[:2] == b"\x1f\x8b":
                    raise DatasetError(f"{path}: a gzip-compressed IDX file cannot be read a chunk at a time; "
                                       f"decompress it (gunzip) first")
                if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in _IDX_TYPES or head[3] == 0:
                    raise DatasetError(f"{path}: not an IDX file (magic number {head.hex() or 'missing'})")
                dims = f.read(4 * head[3])
                size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        if len(dims) < 4 * head[3]:
            raise DatasetError(f"{path}: truncated IDX header")
        shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(head[3]))
        self.stored, self.offset = np.dtype(_IDX_TYPES[head[2]]), 4 + 4 * head[3]
        if self.offset + math.prod(shape) * self.stored.itemsize != size:
            raise DatasetError(f"{path}: holds {size} bytes, its header (shape {shape}, {self.stored}) declares "
                               f"{self.offset + math.prod(shape) * self.stored.itemsize}; truncated or damaged")
        if len(shape) < 2 and not (len(shape) == 1 and not channel_axis):
            raise DatasetError(f"{path}: holds shape {shape}; expected a batch (N, ...) of inputs")
        self.shape = shape
        self.length = shape[0]
        self.sample_shape = ((1,) if channel_axis and len(shape) == 3 else ()) + shape[1:]
        self.dtype = np.dtype(dtype or self.stored.newbyteorder("="))
        self._maps = None

    def read(self, start, stop):
        self._check_range(start, stop)
        if self._maps is None:
            self._maps = np.memmap(self.path, self.stored, "r", self.offset, self.shape)
        return self._convert(self._maps[start:stop]).reshape((stop - start,) + self.sample_shape)

    def describe(self):
        return {"kind": "idx", "path": self.path, "length": self.length, "stored": self.stored.str,
                "sample_shape": list(self.sample_shape)}

    def _hash_files(self, h):
        _stat_hash(h, os.path.dirname(self.path), [self.path])


def _zarr():
    try:
        import zarr
    except ImportError as exc:
        raise MissingDependencyError("zarr arrays need the zarr package: pip install 'lrpnumpy[data]'") from exc
    return zarr


class ZarrSource(_Mapped):
    """A zarr array (N, ...) on disk: ``path`` of the array (a zarr store folder)."""

    def __init__(self, path, dtype=None):
        self.path = os.path.abspath(os.fspath(path))
        a = self._open()
        if a.ndim < 2:
            raise DatasetError(f"{path}: holds shape {a.shape}; expected a batch (N, ...) of inputs")
        self.length, self.sample_shape = a.shape[0], tuple(a.shape[1:])
        self.stored, self.dtype = np.dtype(a.dtype).str, np.dtype(dtype or a.dtype)
        self._maps = None

    def _open(self):
        zarr = _zarr()
        try:
            return zarr.open_array(self.path, mode="r")
        except Exception as exc:  # (zarr raises its own errors, FileNotFoundError, ValueError, ...)
            raise DatasetError(f"{self.path}: not a zarr array ({type(exc).__name__}: {str(exc)[:200]})") from None

    def read(self, start, stop):
        self._check_range(start, stop)
        if self._maps is None:
            self._maps = self._open()
        return self._convert(self._maps[start:stop])

    def describe(self):
        return {"kind": "zarr", "path": self.path, "length": self.length, "stored": self.stored,
                "sample_shape": list(self.sample_shape)}

    def _hash_files(self, h):
        paths = sorted(os.path.join(d, n) for d, _, names in os.walk(self.path) for n in names)
        _stat_hash(h, self.path, paths)


def _pillow():
    try:
        from PIL import Image
    except ImportError as exc:
        raise MissingDependencyError("image folders need Pillow: pip install 'lrpnumpy[data]'") from exc
    return Image


class ImageFolder(Source):
    """PNG/JPEG files in ``root/<class>/``, one class per subfolder (sorted by name, as torchvision's
    ``ImageFolder``), each decoded, converted to ``mode`` ("RGB" or "L") and resized to ``size`` (height,
    width) with Pillow on the worker that reads it; inputs (C, H, W) in [0, 1] of ``dtype``.

    ``labels`` holds each input's class index, ``classes`` the class names, ``files`` the paths.

    on_error : "raise" or "skip"
        "raise": a file that cannot be decoded stops the run with a :class:`~lrpnumpy.errors.DatasetError`
        naming it.  "skip": every file is opened and checked (Pillow's ``verify``) here, once; those that
        fail are left out and listed in ``skipped`` (path, reason) and in the run's manifest.  A file
        that passes the check and still fails to decode on a worker is an error naming it.
    """

    def __init__(self, root, size, mode="RGB", dtype=np.float32, on_error="raise"):
        if on_error not in ("raise", "skip"):
            raise RuleParameterError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if mode not in ("RGB", "L"):
            raise RuleParameterError(f"mode must be 'RGB' or 'L', got {mode!r}")
        size = (size, size) if isinstance(size, int) else tuple(size)
        if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
            raise RuleParameterError(f"size must be (height, width) of positive ints, got {size!r}")
        _pillow()
        self.root = os.path.abspath(os.fspath(root))
        try:
            self.classes = sorted(d.name for d in os.scandir(self.root) if d.is_dir())
        except OSError as exc:
            raise DatasetError(f"{root}: cannot be listed ({exc.strerror or exc})") from None
        files, labels = [], []
        for k, name in enumerate(self.classes):
            folder = os.path.join(self.root, name)
            for d, subdirs, names in sorted(os.walk(folder)):
                subdirs.sort()
                for n in sorted(names):
                    if n.lower().endswith(IMAGE_EXTENSIONS):
                        files.append(os.path.join(d, n))
                        labels.append(k)
        self.skipped = []
        if on_error == "skip":
            keep = [self._check(p) for p in files]
            self.skipped = [(p, why) for p, why in zip(files, keep) if why is not None]
            labels = [k for k, why in zip(labels, keep) if why is None]
            files = [p for p, why in zip(files, keep) if why is None]
        if not files:
            raise DatasetError(f"{root}: holds no readable PNG/JPEG files in class subfolders")
        self.files, self.labels = files, np.asarray(labels, dtype=np.int64)
        self.size, self.mode, self.on_error = size, mode, on_error
        self.length = len(files)
        self.sample_shape = (3 if mode == "RGB" else 1,) + size
        self.dtype = np.dtype(dtype)

    @staticmethod
    def _check(path):
        Image = _pillow()
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as exc:  # (Pillow raises OSError, SyntaxError, ValueError, ...)
            return f"{type(exc).__name__}: {str(exc)[:160]}"
        return None

    def _decode(self, path):
        Image = _pillow()
        try:
            with Image.open(path) as im:
                im = im.convert(self.mode).resize(self.size[::-1], Image.BILINEAR)
                a = np.asarray(im, dtype=self.dtype)
        except Exception as exc:  # (Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...)
            raise DatasetError(f"{path}: cannot be decoded as an image ({type(exc).__name__}: {str(exc)[:160]}); "
                               f"remove or replace it, or pass on_error='skip'") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        return a / self.dtype.type(255)

    def read(self, start, stop):
        self._check_range(start, stop)
        out = np.empty((stop - start,) + self.sample_shape, self.dtype)
        for i in range(start, stop):
            out[i - start] = self._decode(self.files[i])
        return out

    def describe(self):
        return {"kind": "image_folder", "root": self.root, "length": self.length, "size": list(self.size),
                "mode": self.mode, "classes": len(self.classes),
                "skipped": [os.path.relpath(p, self.root) for p, _ in self.skipped]}

    def _hash_files(self, h):
        _stat_hash(h, self.root, self.files)


def as_source(data):
    """``data`` as a source: a :class:`Source` as it is, a path by its form (a ``.npy`` file, a folder of
    ``.npy`` shards, a zarr store, an IDX file), anything else as an :class:`ArraySource`."""
    if isinstance(data, Source):
        return data
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if os.path.isdir(path):
            if any(os.path.exists(os.path.join(path, n)) for n in ("zarr.json", ".zarray")):
                return ZarrSource(path)
            return NpyShards(path)
        if path.lower().endswith(".npy"):
            return NpySource(path)
        return IDXSource(path)
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise RuleParameterError(f"data must be an array, a source or a path, got {type(data).__name__}")
    return ArraySource(data)

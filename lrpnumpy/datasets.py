"""Data sets: the IDX format (MNIST, Fashion-MNIST), Debian's Fashion-MNIST, scikit-learn's digits, the shipped sample.

Every loader returns a :class:`Dataset`: images as an array of shape (N, 1, H, W) with values in
[0, 1], integer labels, and the class names.
"""

import gzip
import importlib.resources
import math
import os
from typing import NamedTuple

import numpy as np

from .errors import DatasetError, MissingDependencyError
from .layers.base import as_dtype

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
#: The runtime data shipped inside the package (trained models, the Fashion-MNIST sample, an example
#: input): ``lrpnumpy/data/``, package data, so a wheel has it too.  Read it with :func:`shipped_file`.
DATA_DIR = str(importlib.resources.files(__package__).joinpath("data"))


def shipped_file(name):
    """The runtime data file ``name`` of ``lrpnumpy/data/``, found with :mod:`importlib.resources`.

    Returns a :class:`~importlib.resources.abc.Traversable` (``.open("rb")``, ``.is_file()``); for a
    filesystem path use ``importlib.resources.as_file(shipped_file(name))`` as a context manager.
    """
    return importlib.resources.files(__package__).joinpath("data").joinpath(name)


_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Dataset(NamedTuple):
    """Images (N, 1, H, W) in [0, 1], labels (N,) as int64, and the name of each class."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple


def load_idx(path):
    """Read an IDX file (plain or gzip-compressed) as an ndarray of its declared type and shape.

    The header's declared size is checked (in exact integer arithmetic) against the file's size,
    or for a gzip file against the memory a loader may use, before the data are read: a header
    that only declares a huge array allocates nothing.

    Raises
    ------
    DatasetError
        The file cannot be read, its magic number is not IDX's, or it holds fewer or more bytes
        than its header declares (or declares more than memory allows).
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            packed = f.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if packed else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in _IDX_TYPES or head[3] == 0:
                raise DatasetError(f"{path}: not an IDX file (magic number {head.hex() or 'missing'}; expected "
                                   f"0000 followed by a type code in {sorted(_IDX_TYPES)} and the number of "
                                   f"dimensions)")
            dtype, ndim = np.dtype(_IDX_TYPES[head[2]]), head[3]
            header = 4 + 4 * ndim
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise DatasetError(f"{path}: truncated IDX header ({4 + len(dims)} bytes, {header} expected)")
            shape = tuple(int.from_bytes(dims[4 * i:4 * i + 4], "big") for i in range(ndim))
            expected = header + math.prod(shape) * dtype.itemsize  # Python ints: exact, never overflows
            limit = None if packed else os.fstat(f.fileno()).st_size
            if packed and expected > _memory_budget():
                raise DatasetError(f"{path}: its header declares {_short(shape)} {dtype} values ({_count(expected)} bytes), "
                                   f"more than this machine's memory allows")
            if limit is not None and expected != limit:
                raise DatasetError(f"{path}: holds {limit} bytes, its header (shape {_short(shape)}, {dtype}) "
                                   f"declares {_count(expected)}; the file is truncated or damaged")
            raw = f.read(expected - header + 1)  # one byte more than declared: a longer file is found
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: cannot be read as an IDX file ({exc})") from None
    except MemoryError:
        raise DatasetError(f"{path}: not enough memory for the {expected} bytes its header declares") from None
    if header + len(raw) != expected:
        raise DatasetError(f"{path}: holds {header + len(raw)}{'+' if len(raw) > expected - header else ''} bytes "
                           f"(uncompressed), its header (shape {_short(shape)}, {dtype}) declares {_count(expected)}; the file "
                           f"is truncated or damaged")
    return np.frombuffer(raw, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _short(shape):
    """A declared shape for a message: at most eight sizes."""
    return str(shape) if len(shape) <= 8 else f"({', '.join(map(str, shape[:8]))}, ... {len(shape)} dimensions)"


def _count(n):
    """A declared byte count for a message: exact up to 18 digits, its order of magnitude beyond."""
    return str(n) if n < 10 ** 18 else f"more than 10**{len(str(n)) - 1}"


def _memory_budget():
    from .io._common import memory_budget
    return memory_budget()


def _images(raw, dtype):
    scale = as_dtype(dtype).type(255)
    return (raw.astype(dtype) / scale)[:, None]


def fashion_mnist(split="test", path=None, dtype=np.float64):
    """Fashion-MNIST (Xiao et al., 2017; MIT licence): 28 x 28 grey images of 10 kinds of clothing.

    Parameters
    ----------
    split : {"train", "test"}
        60,000 training or 10,000 test images.
    path : str, optional
        Folder with the four IDX files (plain or gzip); default :data:`FASHION_MNIST_PATH`.
    dtype : float32 or float64
    """
    if split not in ("train", "test"):
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    folder = FASHION_MNIST_PATH if path is None else str(path)
    prefix = "train" if split == "train" else "t10k"
    files = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        found = [os.path.join(folder, f"{prefix}-{kind}{ext}") for ext in (".gz", "")]
        found = [f for f in found if os.path.exists(f)]
        if not found:
            raise DatasetError(f"Fashion-MNIST {split} files ({prefix}-{kind}[.gz]) are not in {folder}; install "
                               f"them with 'apt-get install dataset-fashion-mnist' or pass path=FOLDER")
        files.append(found[0])
    images, labels = load_idx(files[0]), load_idx(files[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DatasetError(f"{folder}: images {images.shape} and labels {labels.shape} do not belong together")
    return Dataset(_images(images, dtype), labels.astype(np.int64), FASHION_MNIST_CLASSES)


def digits(dtype=np.float64):
    """scikit-learn's bundled 8 x 8 handwritten digits (1,797 images, classes 0-9), scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise MissingDependencyError("digits() needs scikit-learn: pip install 'lrpnumpy[data]'") from exc
    d = load_digits()
    images = (d.images.astype(dtype) / as_dtype(dtype).type(16))[:, None]
    return Dataset(images, d.target.astype(np.int64), tuple(str(k) for k in range(10)))


def sample(dtype=np.float64):
    """The 1,000 Fashion-MNIST test images shipped with the package (the first 100 of each class)."""
    resource = shipped_file("fashion_mnist_sample.npz")
    try:
        with resource.open("rb") as f, np.load(f, allow_pickle=False) as data:
            images, labels = data["images"], data["labels"]
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{resource}: the sample shipped in lrpnumpy/data/ cannot be read ({exc}); the "
                           f"installation is incomplete: reinstall lrpnumpy") from None
    return Dataset(_images(images, dtype), labels.astype(np.int64), FASHION_MNIST_CLASSES)


def split(data, fraction, seed=0):
    """``(first, second)``: a seeded random split of a Dataset, ``fraction`` of it in the second part."""
    order = np.random.default_rng(seed).permutation(len(data.labels))
    cut = len(order) - int(round(fraction * len(order)))
    a, b = order[:cut], order[cut:]
    return (Dataset(data.images[a], data.labels[a], data.classes),
            Dataset(data.images[b], data.labels[b], data.classes))

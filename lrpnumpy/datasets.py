"""Data sets: the IDX format (MNIST, Fashion-MNIST), Debian's Fashion-MNIST, scikit-learn's digits, the shipped sample.

Every loader returns a :class:`Dataset`: images as an array of shape (N, 1, H, W) with values in
[0, 1], integer labels, and the class names.
"""

import gzip
import importlib.resources
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

    Raises
    ------
    DatasetError
        The file cannot be read, its magic number is not IDX's, or it holds fewer or more bytes
        than its header declares.
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path}: cannot be read as an IDX file ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DatasetError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'}; expected 0000 "
                           f"followed by a type code in {sorted(_IDX_TYPES)} and the number of dimensions)")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header ({len(raw)} bytes, {header} expected)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected = header + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetError(f"{path}: holds {len(raw)} bytes, its header (shape {shape}, {dtype}) declares "
                           f"{expected}; the file is truncated or damaged")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


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

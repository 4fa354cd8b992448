"""Loading and saving networks.  Layout conversion happens here and nowhere else."""

import os

from ..errors import ModelFormatError
from .caffe import load_caffe
from .native import load, save
from .onnx import load_onnx, save_onnx
from .state_dict import load_state_dict, read_state_dict
from .toolbox import from_nhwc, load_lrp_toolbox, save_lrp_toolbox
from .torch import from_torch

__all__ = ["load", "save", "load_caffe", "load_onnx", "save_onnx", "load_lrp_toolbox", "save_lrp_toolbox", "from_nhwc",
           "load_model", "from_torch", "load_state_dict", "read_state_dict"]


def load_model(path, weights=None, input_shape=None, dtype=None):
    """Load a model with the loader its file calls for.

    ``.npz``: lrpnumpy's own format; ``.onnx``: ONNX; ``.prototxt`` with ``weights`` (the
    ``.caffemodel``; the two may be given in either order): Caffe; ``.txt``: the LRP Toolbox's
    text format.  Other names are recognised by their first bytes (a zip archive is the native
    format, text starting with a Toolbox layer name is a Toolbox model, anything else is tried as
    ONNX).  ``input_shape`` (one sample, lrpnumpy layout) is passed to the Toolbox reader, which
    needs it only to reorder a Linear after the Flatten of a map larger than 1 x 1.  ``dtype``
    (float32 or float64) converts the parameters; None keeps the file's.
    """
    path, weights = str(path), None if weights is None else str(weights)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".caffemodel" and weights is not None:
        path, weights, ext = weights, path, os.path.splitext(weights)[1].lower()
    if ext == ".prototxt" or weights is not None:
        if weights is None:
            raise ModelFormatError(f"{path}: a Caffe prototxt needs its .caffemodel (weights=...)")
        return load_caffe(path, weights, dtype=dtype)
    if ext == ".npz":
        return load(path, dtype=dtype)
    if ext == ".onnx":
        return load_onnx(path, dtype=dtype)
    if ext == ".txt":
        return load_lrp_toolbox(path, input_shape, dtype=dtype)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise ModelFormatError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if head.startswith(b"PK"):
        return load(path, dtype=dtype)
    if head.split(b" ")[0].split(b"\n")[0] in (b"Linear", b"Convolution", b"SumPool", b"MaxPool", b"Rect", b"Tanh",
                                                 b"SoftMax", b"Flatten"):
        return load_lrp_toolbox(path, input_shape, dtype=dtype)
    return load_onnx(path, dtype=dtype)

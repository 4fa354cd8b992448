"""Loading and saving networks.  Layout conversion happens here and nowhere else."""

from .native import load, save
from .onnx import load_onnx
from .toolbox import from_nhwc, load_lrp_toolbox, save_lrp_toolbox

__all__ = ["load", "save", "load_onnx", "load_lrp_toolbox", "save_lrp_toolbox", "from_nhwc"]

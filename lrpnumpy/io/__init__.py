"""Loading and saving networks.  Layout conversion happens here and nowhere else."""

from .native import load, save
from .onnx import load_onnx

__all__ = ["load", "save", "load_onnx"]

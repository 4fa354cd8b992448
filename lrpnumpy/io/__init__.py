"""Loading and saving networks.  Layout conversion happens here and nowhere else."""

from .native import load, save

__all__ = ["load", "save"]

"""The exceptions lrpnumpy raises.

Every error the package raises on bad input derives from :class:`LRPError`, so
``except lrpnumpy.errors.LRPError`` catches all of them.  Each class also derives
from the built-in exception a Python user would expect (``ValueError`` for bad
values, ``TypeError`` for bad dtypes, ``ImportError`` for a missing package), so
generic handlers keep working.
"""


class LRPError(Exception):
    """Base class of every lrpnumpy error."""


class ShapeError(LRPError, ValueError):
    """An array has the wrong rank, shape or number of channels."""


class DTypeError(LRPError, TypeError):
    """An array has an unsupported dtype, or dtypes that do not match."""


class NonFiniteError(LRPError, ValueError):
    """An array holds NaN or infinity where finite numbers are required."""


class ParameterError(LRPError, ValueError):
    """An invalid argument to a constructor or function (base of the two kinds below)."""


class RuleParameterError(ParameterError):
    """A rule, composite or explanation method was given an invalid parameter."""


class LayerParameterError(ParameterError):
    """A layer was given an invalid configuration (sizes, stride, padding, ...)."""


class TargetError(LRPError, ValueError):
    """The target class is out of range or has the wrong shape."""


class ModelFormatError(LRPError, ValueError):
    """A model file is malformed, truncated or inconsistent."""


class UnsupportedLayerError(LRPError, NotImplementedError):
    """A layer, operator, attribute or rule/layer pairing is not supported."""


class MissingDependencyError(LRPError, ImportError):
    """An optional package that this feature needs is not installed."""


class ResourceError(LRPError, MemoryError):
    """An input or configuration needs more memory than the machine has."""


class SaveError(LRPError, OSError):
    """A model could not be written (missing folder, a folder in the way, a full disk, ...)."""


class DatasetError(LRPError, ValueError):
    """A data file is missing, truncated or not in the expected format."""


class ManifestError(DatasetError):
    """An output folder holds another run's results (its manifest differs from this run's), or its
    manifest or chunk files are damaged."""


class WorkerError(LRPError, RuntimeError):
    """A task failed outside lrpnumpy: a Dask worker died on it every time it was tried, or the
    scheduler went away; the message names the chunk."""

"""What every loader and writer shares: the atomic write, the conversion of parse failures into
:class:`~lrpnumpy.errors.ModelFormatError`, and the optional ``dtype`` conversion."""

import contextlib
import os
import stat
import tempfile

from ..errors import LRPError, ModelFormatError
from ..layers.base import as_dtype


def atomic_write(path, write, suffix, text=False):
    """Write a file through ``write(f)`` into a temporary file beside ``path``, then rename it into place.

    A reader never sees a half-written file, and a failed write leaves the old file (and no
    temporary file) behind.  A symbolic link is followed (its target is replaced), and the new
    file gets the old file's permissions, or the usual ones (0666 less the umask) for a new file.
    """
    target = os.path.realpath(path)
    folder = os.path.dirname(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=".lrpnumpy-", dir=folder)
    try:
        with os.fdopen(fd, "w" if text else "wb", **(dict(encoding="ascii", newline="\n") if text else {})) as f:
            write(f)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def parse_errors(where, kind):
    """Let lrpnumpy's own errors through; turn anything else a damaged file trips over into ModelFormatError."""
    try:
        yield
    except LRPError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file must not escape as a raw traceback
        raise ModelFormatError(f"{where}: damaged {kind} ({type(exc).__name__}: {exc})") from None


def converted(net, dtype):
    """``net`` with its parameters in ``dtype`` (None: as the file had them)."""
    if dtype is None:
        return net
    dt = as_dtype(dtype)
    return net if net.dtype is None or net.dtype == dt else net.astype(dt)

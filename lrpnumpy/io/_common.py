"""What every loader and writer shares: the atomic write, the conversion of parse failures into
:class:`~lrpnumpy.errors.ModelFormatError`, and the optional ``dtype`` conversion."""

import contextlib
import errno
import os
import stat

from ..errors import DTypeError, LRPError, ModelFormatError, NonFiniteError, ParameterError, SaveError
from ..layers import Graph, Sequential
from ..layers.graph import INPUT
from ..layers.base import as_dtype


def atomic_write(path, write, suffix, text=False):
    """Write a file through ``write(f)`` into a temporary file beside ``path``, then rename it into place.

    A reader never sees a half-written file, and a failed write leaves the old file behind.  The
    temporary file has a fixed name (``.NAME.lrpnumpy-partial``), so a save that is killed leaves
    at most one behind, which the next save of the same file replaces.  A symbolic link is
    followed (its target is replaced), and the new file gets the old file's permissions, or the
    usual ones (0666 less the umask) for a new file.

    Raises
    ------
    SaveError
        The folder does not exist, a folder is in the way, the disk is full, ... (wraps the OSError).
    """
    target = os.path.realpath(path)
    folder, name = os.path.split(target)
    tmp = os.path.join(folder, f".{name}.lrpnumpy-partial{suffix}")
    try:
        if os.path.isdir(target):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        if os.path.exists(target) and not os.path.isfile(target):
            raise OSError(errno.EINVAL, "exists and is not a regular file (a device, a socket, ...)", str(path))
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        with open(tmp, "w" if text else "wb", **(dict(encoding="ascii", newline="\n") if text else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SaveError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def parse_errors(where, kind):
    """Let lrpnumpy's own errors through; turn anything else a damaged file trips over into ModelFormatError."""
    try:
        yield
    except (DTypeError, NonFiniteError, ParameterError) as exc:
        # a value the file holds does not fit the layer it builds
        raise ModelFormatError(f"{where}: {exc}") from None
    except LRPError:
        raise
    except RecursionError:
        raise ModelFormatError(f"{where}: damaged {kind} (nested too deeply)") from None
    except MemoryError:
        raise ModelFormatError(f"{where}: damaged {kind} (it declares more data than fits in memory)") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file must not escape as a raw traceback
        raise ModelFormatError(f"{where}: damaged {kind} ({type(exc).__name__}: {brief(str(exc))})") from None


def brief(value, count=6, chars=200):
    """``value`` for an error message, never long: a string cut to ``chars`` characters, a sequence or
    array shown by its first ``count`` items and how many there are (a huge broadcast view is not copied)."""
    if isinstance(value, str):
        return value if len(value) <= chars else f"{value[:chars]}... ({len(value)} characters)"
    if hasattr(value, "flat") and hasattr(value, "size"):
        items, size, parens = [v.item() if hasattr(v, "item") else v for v in value.flat[:count]], value.size, "[]"
    elif isinstance(value, (list, tuple)):
        items, size, parens = list(value[:count]), len(value), "()" if isinstance(value, tuple) else "[]"
    else:
        return value
    text = ", ".join(repr(brief(v, count, 40)) if isinstance(v, str) else repr(v) for v in items)
    if size > count:
        text += f", ... ({size} values)"
    elif size == 1 and parens == "()":
        text += ","
    return f"{parens[0]}{text}{parens[1]}"


def converted(net, dtype):
    """``net`` with its parameters in ``dtype`` (None: as the file had them)."""
    if dtype is None:
        return net
    dt = as_dtype(dtype)
    return net if net.dtype is None or net.dtype == dt else net.astype(dt)


def network(nodes, output, input_shape):
    """The loaded network: a :class:`Sequential` when ``nodes`` form a chain, else a :class:`Graph`."""
    net = Graph(nodes, output=output, input_shape=input_shape)
    if all(net.inputs_of(i) == ((net.names[i - 1],) if i else (INPUT,)) for i in range(len(net))):
        return Sequential(*net.layers, input_shape=input_shape)
    return net


def unique_name(name, taken, k=0):
    """A node name not used yet (``name``, ``name:1`` for a loader node's k-th layer, ``name#1``, ...)."""
    base = name if not k else f"{name}:{k}"
    out, i = base, 1
    while out in taken:
        out, i = f"{base}#{i}", i + 1
    taken.add(out)
    return out


def memory_budget():
    """Bytes a loader may let a file's declared sizes allocate: physical memory, or less under an address-space limit."""
    try:
        budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        budget = 1 << 34
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            budget = min(budget, soft // 2)
    except (ImportError, ValueError, OSError):
        pass
    return budget

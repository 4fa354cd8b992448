"""What the numba kernels of every family share: lazy jitting, per-thread scratch buffers, and the
pool of threads that runs a batch's samples side by side.

numba itself is imported, and the jitted functions made, on the first call of one of them
(:func:`jitted`), so that importing lrpnumpy, or explaining one small input with the NumPy paths,
never pays numba's import and cache load.  All registered kernels are jitted together, so that
a kernel calling another kernel of its module sees the jitted one when numba compiles it (which
is why a jitted kernel only calls kernels of its own module).  No ``fastmath``: it would reorder
sums, and sums are what conservation measures.  NumPy's error model: with Python's, every
division checks for zero and raises, and that branch keeps LLVM from vectorising.
"""

import contextlib
import functools
import math
import os
import sys
import threading

import numpy as np

_JIT = dict(nopython=True, cache=True, nogil=True, error_model="numpy")
_PLAIN = {}  # (module name, function name) -> the Python function, jitted (all together) on first use
_JIT_LOCK = threading.Lock()
_JITTED = False


def jitted(fn):
    """Register ``fn`` as a kernel that numba compiles when any kernel is first called; the name
    in ``fn``'s module is then rebound to the jitted function."""
    _PLAIN[fn.__module__, fn.__name__] = fn

    @functools.wraps(fn)
    def first_call(*args):
        jit_all()
        return vars(sys.modules[fn.__module__])[fn.__name__](*args)
    return first_call


def jit_all():
    """Import numba and rebind every registered kernel to its jitted version (once; thread-safe)."""
    global _JITTED
    if _JITTED:
        return
    import numba
    with _JIT_LOCK:
        if not _JITTED:
            for (module, name), fn in _PLAIN.items():
                vars(sys.modules[module])[name] = numba.jit(**_JIT)(fn)
            _JITTED = True


def jit(fn):
    """``fn`` compiled now with the kernels' options (for kernels made at run time, one per size)."""
    jit_all()
    import numba
    return numba.jit(**_JIT)(fn)


# ----- scratch buffers: large temporaries reused, so their pages are not faulted in on every call -----
# One set per thread: threads explaining at the same time, and the threads that run one batch's
# samples side by side (see below), never share a buffer.  A kernel's result never aliases a
# scratch buffer (outputs are fresh arrays), so reuse across calls is safe.

_LOCAL = threading.local()


def scratch(name, shape, dtype):
    """A buffer of ``shape`` kept by this thread under ``name`` (contents undefined)."""
    size = math.prod(shape)
    try:
        workspace = _LOCAL.workspace
    except AttributeError:
        workspace = _LOCAL.workspace = {}
    key = (name, np.dtype(dtype))
    buf = workspace.get(key)
    if buf is None or buf.size < size:
        buf = workspace[key] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def release_workspace():
    """Free this thread's scratch buffers (they are reallocated on its next convolution)."""
    _LOCAL.__dict__.pop("workspace", None)  # the calling thread's own attribute


def immutable(a):
    """True when neither ``a`` nor any array it views can be written."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        a = a.base
    return a is None


# ----- samples side by side -----
#
# Batch invariance puts one sample in each BLAS call (see :mod:`.convolution`), and a sample's
# products are small: below about 2.6e5 multiply-adds OpenBLAS runs them on the calling thread
# alone, and above it pays a hand-off to its second thread for each one.  So a batch's samples are
# split into contiguous runs, one per thread, each thread making the same calls, with the same
# shapes, that it would make for the samples one by one: the numbers are those of the serial loop,
# bit for bit (OpenBLAS's thread count is not touched; it changes the last bits of some products).
# NumPy releases the GIL in its products and copies.

def cores():
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _env_threads():
    value = os.environ.get("LRPNUMPY_THREADS", "")
    return int(value) if value.isdigit() and int(value) >= 1 else None


#: Threads that share a batch's samples (``LRPNUMPY_THREADS``, default the cores this process may
#: use; 1 runs every sample on the calling thread).
THREADS = _env_threads() or cores()
_POOL = {}  # "executor": the worker threads, started on first use
_POOL_LOCK = threading.Lock()


def _default_threads():
    """``LRPNUMPY_THREADS`` as the environment says it now (a Dask nanny sets its workers' environment
    after they imported lrpnumpy), else :data:`THREADS`."""
    return _env_threads() or THREADS


def _pool():
    executor = _POOL.get("executor")
    if executor is None:
        with _POOL_LOCK:
            if "executor" not in _POOL:
                from concurrent.futures import ThreadPoolExecutor
                # threads start as tasks need them: room for kernel_threads() above THREADS
                _POOL["executor"] = ThreadPoolExecutor(max(THREADS, cores()) - 1 or 1,
                                                       thread_name_prefix="lrpnumpy-kernels")
            executor = _POOL["executor"]
    return executor


def threads():
    """The threads that share a batch's samples on the calling thread: ``kernel_threads``'s, else
    ``THREADS``."""
    return getattr(_LOCAL, "threads", None) or _default_threads()


@contextlib.contextmanager
def kernel_threads(n):
    """Inside the block, batches explained on the calling thread share their samples among ``n``
    threads (None: ``THREADS``); other threads are not affected.  Results are the same bit for bit
    at every thread count (each thread makes the calls it would make for its samples alone); the
    thread count only sets how many cores a batch uses (a Dask worker's share of its machine)."""
    before = getattr(_LOCAL, "threads", None)
    _LOCAL.threads = None if n is None else max(1, int(n))
    try:
        yield
    finally:
        _LOCAL.threads = before


#: Bytes of a kernel's per-sample arrays that one call of its ``run`` handles at a time (see
#: :func:`each_sample`): about what stays in a core's L2 cache.
BLOCK_BYTES = 1 << 20


def each_sample(n, run, least=1, sample_bytes=0):
    """``run(lo, hi)`` over samples [0, n) in contiguous runs, one per thread (:func:`threads`); the
    calling thread takes the first.  ``run`` must write only its own samples' part of any output
    and use only its thread's scratch buffers.  Batches of fewer than ``least`` samples per
    thread run on the calling thread.  ``sample_bytes``: the bytes of ``run``'s arrays per sample;
    each thread's run is then made in blocks of samples of at most :data:`BLOCK_BYTES` (at least one
    sample): a block's arrays stay in cache from one pass to the next, where a whole batch's would
    go to memory and back (lenet5's LRP over chunks of 1024 took 1.16x the CPU time without blocks).  A
    block's size is set by the sample's shape, never by the batch, so its calls are the same."""
    if sample_bytes > 0:
        block, whole = max(1, BLOCK_BYTES // sample_bytes), run

        def run(lo, hi):
            for a in range(lo, hi, block):
                whole(a, min(hi, a + block))
    parts = min(threads(), n // max(1, least))
    if parts <= 1 or getattr(_LOCAL, "in_pool", False):
        run(0, n)
        return
    bounds = [n * t // parts for t in range(parts + 1)]
    errstate = np.geterr()  # the caller's np.errstate is thread-local: the other threads take it over

    def task(lo, hi):
        _LOCAL.in_pool = True
        try:
            with np.errstate(**errstate):
                run(lo, hi)
        finally:
            _LOCAL.in_pool = False
    futures = [_pool().submit(task, bounds[t], bounds[t + 1]) for t in range(1, parts)]
    try:
        run(bounds[0], bounds[1])
    finally:
        errors = [f.exception() for f in futures]
    for error in errors:
        if error is not None:
            raise error

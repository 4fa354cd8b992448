"""Shared pieces of the benchmark scripts: timing, the matmul rate, multiply-add counting."""

import contextlib
import importlib
import json
import time

import numpy as np

from lrpnumpy import kernels, zoo
from lrpnumpy.layers import Linear


def reference_modules(script, *names):
    """The modules ``names`` (torch, quantus, ...) imported, or None after saying that the script
    has nothing to compare without them (the 'reference' extra installs them)."""
    try:
        return [importlib.import_module(name) for name in names]
    except ImportError:
        print(f"{script}: {'/'.join(names)} not installed (pip install -e '.[reference]'); nothing to compare")
        return None


def write_json(path, data):
    """``data`` as indented JSON to ``path`` (nothing when path is None)."""
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)


def load_model(model):
    """A zoo model (seed 0) or a shipped trained model (``zoo.trained``: ``lrpnumpy/data/NAME.npz``), float32."""
    if model in zoo.MODELS:
        return zoo.MODELS[model](seed=0, dtype=np.float32)
    return zoo.trained(model, dtype=np.float32)


def rss_mb():
    """This process's resident memory now, in MB (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0.0


def peak_rss_mb():
    """This process's peak resident memory in MB.

    Reads VmHWM from /proc (Linux): unlike ``getrusage``'s ru_maxrss, it is not inherited from
    the parent that started this process (a child's ru_maxrss starts at the parent's peak).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss():
    """Start measuring the peak resident memory anew (Linux: writing 5 to /proc/self/clear_refs resets
    VmHWM to the current RSS); returns False where that is not possible.

    Garbage is collected and freed heap memory handed back to the system first (glibc's
    ``malloc_trim``), so the new baseline is what the process really holds.
    """
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def median_time(fn, repeat, min_time=0.0):
    """Median wall time of ``fn()`` over ``repeat`` runs (more runs until ``min_time`` is spent)."""
    times = []
    while len(times) < repeat or sum(times) < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def interleaved_medians(fns, repeat, min_time=0.0, rounds=3, settle=0.2):
    """Median wall time of each of ``fns``, timed in blocks taken in turn: ``rounds`` times, each fn
    runs untimed for ``settle`` seconds (at least once) and then ``repeat`` timed times (more until
    ``min_time`` is spent); the median is over all its timed runs.

    In turns, a slow spell of a shared machine (runs of one comparison timed one side after the other
    moved by up to ~40 % here) lands on both sides; in blocks that settle first, not call by call,
    because each side's thread pools (OpenBLAS, torch's OpenMP) keep spinning for a while after it
    returns and would slow the other side's next call (call-by-call turns doubled both sides' times).
    """
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            while time.perf_counter() - start < settle:
                fn()
            block = []
            while len(block) < repeat or sum(block) < min_time:
                t = time.perf_counter()
                fn()
                block.append(time.perf_counter() - t)
            spent.extend(block)
    return [float(np.median(spent)) for spent in times]


def matmul_rate(dtype, n=2048, repeat=3):
    """GFLOP/s of numpy.matmul on n x n matrices."""
    a = np.random.default_rng(0).random((n, n)).astype(dtype)
    a @ a
    return 2 * n ** 3 / median_time(lambda: a @ a, repeat) / 1e9


@contextlib.contextmanager
def count_macs():
    """Count the multiply-adds of every convolution and linear pass run inside the block.

    Yields a dict with ``conv`` and ``linear`` counts and ``conv_seconds`` (time spent in the
    convolution kernels), filled in as the passes run.
    """
    counts = {"conv": 0, "linear": 0, "conv_seconds": 0.0}
    saved = {name: getattr(kernels, name) for name in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")}

    def timed(fn, macs):
        def wrapper(*args):
            t = time.perf_counter()
            out = fn(*args)
            counts["conv_seconds"] += time.perf_counter() - t
            counts["conv"] += macs(args, out)
            return out
        return wrapper

    def conv_macs(args, y):  # x, w, ...: every output takes (in/groups)*kh*kw multiply-adds
        return y.size * int(np.prod(args[1].shape[1:]))

    def grad_in_macs(args, gx):  # gy, w, ...: the transposed pass does the same work
        gy, w = args[0], args[1]
        return gy.size * int(np.prod(w.shape[1:]))

    def grad_w_macs(args, gw):  # x, gy, ...
        gy = args[1]
        return gy.size * int(np.prod(gw.shape[1:]))

    kernels.conv2d = timed(saved["conv2d"], conv_macs)
    kernels.conv2d_grad_input = timed(saved["conv2d_grad_input"], grad_in_macs)
    kernels.conv2d_grad_weight = timed(saved["conv2d_grad_weight"], grad_w_macs)
    # Linear does its own matmuls (forward_with_many does not call forward_with): count each entry point.
    originals = {name: getattr(Linear, name) for name in ("forward_with", "backward_with", "forward_with_many",
                                                          "backward_with_many")}
    Linear.forward_with = lambda self, x, w, b=None, step=None: _add(
        counts, x.shape[0] * w.size, originals["forward_with"](self, x, w, b, step))
    Linear.backward_with = lambda self, g, w, step: _add(counts, g.shape[0] * w.size,
                                                         originals["backward_with"](self, g, w, step))
    Linear.forward_with_many = lambda self, x, ws, step, biases=None: _add(
        counts, x.shape[0] * sum(w.size for w in ws), originals["forward_with_many"](self, x, ws, step, biases))
    Linear.backward_with_many = lambda self, pairs, step: _add(
        counts, sum(s.shape[0] * w.size for s, w in pairs), originals["backward_with_many"](self, pairs, step))
    try:
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(kernels, name, fn)
        for name, fn in originals.items():
            setattr(Linear, name, fn)


def _add(counts, macs, result):
    counts["linear"] += macs
    return result
